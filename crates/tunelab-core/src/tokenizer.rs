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

/// A `tokenizer.json` for GPT-2's byte-level BPE from its `vocab.json` (token → id) and
/// `merges.txt` (one merge per line, `#version` header optional), as transformers'
/// `GPT2TokenizerFast` builds it: byte-level pre-tokenizer without a prefix space, byte-level
/// decoder and post-processor. `*_file` name the files in errors.
pub fn byte_level_bpe_json(
    vocab_file: &str,
    vocab_json: &str,
    merges_file: &str,
    merges_txt: &str,
) -> Result<String, TokenizerError> {
    use tokenizers::models::bpe::{BPE, Vocab};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let invalid = |file: &str, reason: String| TokenizerError::Invalid {
        file: file.into(),
        reason,
    };
    let vocab: std::collections::BTreeMap<String, u32> =
        serde_json::from_str(vocab_json).map_err(|e| {
            invalid(
                vocab_file,
                format!("expected a JSON object of token ids: {e}"),
            )
        })?;
    let mut merges = Vec::new();
    for (i, line) in merges_txt.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            invalid(
                merges_file,
                format!("line {}: expected two tokens separated by a space", i + 1),
            )
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .build()
        .map_err(|e| invalid(merges_file, e.to_string()))?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevel::default()));
    t.with_post_processor(Some(ByteLevel::new(false, true, true)));
    t.to_string(false)
        .map_err(|e| invalid(vocab_file, e.to_string()))
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

    /// The text of token ids as the tokenizer's decoder writes it (GPT-2's byte-level `Ġ`
    /// becomes a space); specials kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Encode {
                what: "token ids".into(),
                reason: e.to_string(),
            })
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The mask token (`[MASK]` or `<mask>`), for masked-LM training.
    pub fn mask_id(&self) -> Option<u32> {
        self.token_to_id("[MASK]")
            .or_else(|| self.token_to_id("<mask>"))
    }

    /// The special tokens the post-processor puts before and after a single sequence
    /// (`[CLS]` and `[SEP]` for BERT, `<s>` and `</s>` for RoBERTa).
    pub fn special_wrap(&self) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
        let enc = self.encode_raw(tokenizers::InputSequence::from(""), true, "an empty text")?;
        let ids = enc.get_ids();
        let special = enc.get_special_tokens_mask();
        let lead = special.iter().take_while(|s| **s == 1).count();
        Ok((ids[..lead].to_vec(), ids[lead..].to_vec()))
    }

    fn encode_raw<'s>(
        &self,
        input: impl Into<tokenizers::InputSequence<'s>>,
        specials: bool,
        what: &str,
    ) -> Result<tokenizers::Encoding, TokenizerError> {
        self.inner
            .encode(tokenizers::EncodeInput::Single(input.into()), specials)
            .map_err(|e| TokenizerError::Encode {
                what: what.to_string(),
                reason: e.to_string(),
            })
    }

    /// Truncates to `max_len` keeping the trailing special tokens (`[SEP]`), as transformers'
    /// truncation does. `extra` is truncated alongside.
    fn truncate(enc: &tokenizers::Encoding, max_len: usize, extra: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let ids = enc.get_ids();
        if ids.len() <= max_len {
            return (ids.to_vec(), extra.to_vec());
        }
        let special = enc.get_special_tokens_mask();
        let tail = special
            .iter()
            .rev()
            .take_while(|s| **s == 1)
            .count()
            .min(max_len);
        let head = max_len - tail;
        let n = ids.len();
        let mut out_ids = ids[..head].to_vec();
        out_ids.extend_from_slice(&ids[n - tail..]);
        let mut out_extra = extra[..head].to_vec();
        out_extra.extend_from_slice(&extra[n - tail..]);
        (out_ids, out_extra)
    }

    /// Token ids of one text with special tokens, truncated to `max_len` (trailing specials
    /// kept).
    pub fn encode_text(&self, text: &str, max_len: usize) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.encode_raw(text, true, "a text")?;
        let none = vec![IGNORE_INDEX; enc.get_ids().len()];
        Ok(Self::truncate(&enc, max_len, &none).0)
    }

    /// Token ids of a text without special tokens (masked-LM corpora are concatenated and cut
    /// into blocks).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.encode_raw(text, false, "a text")?.get_ids().to_vec())
    }

    /// Token ids of pre-split words (CoNLL) with special tokens, and for each token the index
    /// of the word it starts (first sub-word) or [`IGNORE_INDEX`], truncated to `max_len`.
    pub fn encode_tagged(
        &self,
        words: &[&str],
        max_len: usize,
    ) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
        let enc = self.encode_raw(
            tokenizers::InputSequence::PreTokenized(words.iter().copied().collect()),
            true,
            "a sentence",
        )?;
        let mut last = None;
        let starts: Vec<u32> = enc
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
        Ok(Self::truncate(&enc, max_len, &starts))
    }

    /// Tokenises texts with special tokens, truncated to `max_len`, padded to the longest.
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<Batch, TokenizerError> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let ids = self.encode_text(t, max_len)?;
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
        for words in sentences {
            rows.push(self.encode_tagged(words, max_len)?);
        }
        Ok(self.pad(rows, max_len))
    }
}
