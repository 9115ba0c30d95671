//! Tokenisation through Hugging Face `tokenizers` (`tokenizer.json`), with dynamic padding.
//!
//! Saved tokenizers may carry fixed padding and truncation (all-MiniLM-L6-v2's pads to 128);
//! both are switched off and done here per batch instead: truncation to `max_len`, padding to
//! the longest sequence of the batch.

use crate::backend::IGNORE_INDEX;

/// Problems with a tokenizer file or its use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizerError {
    #[error("{file}: not a valid tokenizer.json: {reason}")]
    Invalid { file: String, reason: String },
    #[error(
        "{file}: the tokenizer has {tokenizer} tokens but the model's vocab_size is {model}; they belong to different models"
    )]
    VocabMismatch {
        file: String,
        tokenizer: usize,
        model: usize,
    },
    #[error("tokenizing {what}: {reason}")]
    Encode { what: String, reason: String },
}

/// A batch of token ids, padded to its longest row.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `(B, T)` ids, row-major.
    pub ids: Vec<u32>,
    /// `(B, T)`: 1 for tokens, 0 for padding.
    pub mask: Vec<f32>,
    /// `(B, T)`: for each word-level label position, the index of the word a token starts,
    /// or [`IGNORE_INDEX`] (special tokens, padding, continuation sub-words).
    pub word_starts: Vec<u32>,
    pub batch: usize,
    pub len: usize,
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
}

impl Tokenizer {
    /// Parses `tokenizer.json`; `file` names it in errors. `model_vocab` is the model's
    /// `vocab_size`: a tokenizer with more tokens would produce ids the model cannot embed.
    pub fn from_json(file: &str, json: &[u8], model_vocab: usize) -> Result<Self, TokenizerError> {
        let mut inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| TokenizerError::Invalid {
                file: file.into(),
                reason: e.to_string(),
            })?;
        let n = inner.get_vocab_size(true);
        if n > model_vocab {
            return Err(TokenizerError::VocabMismatch {
                file: file.into(),
                tokenizer: n,
                model: model_vocab,
            });
        }
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Invalid {
                file: file.into(),
                reason: e.to_string(),
            })?;
        Ok(Self { inner, pad_id })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn pad(&self, rows: Vec<(Vec<u32>, Vec<u32>)>, max_len: usize) -> Batch {
        let len = rows
            .iter()
            .map(|(ids, _)| ids.len().min(max_len))
            .max()
            .unwrap_or(0);
        let batch = rows.len();
        let mut out = Batch {
            ids: Vec::with_capacity(batch * len),
            mask: Vec::with_capacity(batch * len),
            word_starts: Vec::with_capacity(batch * len),
            batch,
            len,
        };
        for (ids, starts) in rows {
            let n = ids.len().min(max_len);
            out.ids.extend_from_slice(&ids[..n]);
            out.word_starts.extend_from_slice(&starts[..n]);
            out.mask.extend(std::iter::repeat_n(1.0, n));
            out.ids.extend(std::iter::repeat_n(self.pad_id, len - n));
            out.word_starts
                .extend(std::iter::repeat_n(IGNORE_INDEX, len - n));
            out.mask.extend(std::iter::repeat_n(0.0, len - n));
        }
        out
    }

    /// Tokenises texts with special tokens, truncated to `max_len`, padded to the longest.
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<Batch, TokenizerError> {
        let mut rows = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let enc = self
                .inner
                .encode(*t, true)
                .map_err(|e| TokenizerError::Encode {
                    what: format!("text {i}"),
                    reason: e.to_string(),
                })?;
            let ids = enc.get_ids().to_vec();
            let starts = vec![IGNORE_INDEX; ids.len()];
            rows.push((ids, starts));
        }
        Ok(self.pad(rows, max_len))
    }

    /// Tokenises pre-split words (CoNLL), recording for each token the index of the word it
    /// starts (first sub-word) so word labels go to first sub-words and the rest are ignored.
    pub fn encode_words(
        &self,
        sentences: &[Vec<&str>],
        max_len: usize,
    ) -> Result<Batch, TokenizerError> {
        let mut rows = Vec::with_capacity(sentences.len());
        for (i, words) in sentences.iter().enumerate() {
            let enc = self
                .inner
                .encode(
                    tokenizers::InputSequence::PreTokenized(words.iter().copied().collect()),
                    true,
                )
                .map_err(|e| TokenizerError::Encode {
                    what: format!("sentence {i}"),
                    reason: e.to_string(),
                })?;
            let mut last = None;
            let starts = enc
                .get_word_ids()
                .iter()
                .map(|w| match *w {
                    Some(w) if last != Some(w) => {
                        last = Some(w);
                        w
                    }
                    _ => IGNORE_INDEX,
                })
                .collect();
            rows.push((enc.get_ids().to_vec(), starts));
        }
        Ok(self.pad(rows, max_len))
    }
}
