//! Predictions of a trained model on one text: class probabilities, a tag per word, or the
//! likeliest fillers of each mask token. The CLI (`tunelab predict`) and the web app's
//! playground share it.

use crate::backend::{Backend, IGNORE_INDEX};
use crate::data::Labels;
use crate::generate::sampling::argmax;
use crate::models::task_model::TaskModel;
use crate::params::ParamStore;
use crate::tokenizer::Tokenizer;
use crate::trainer::{TaskKind, TrainError};
use serde::{Deserialize, Serialize};

/// What the model says about one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prediction {
    /// The likeliest label, its probability, and every label's probability (label order).
    Class {
        label: String,
        score: f32,
        scores: Vec<(String, f32)>,
        logits: Vec<f32>,
    },
    /// One `(word, tag)` per whitespace-separated word.
    Tags { tags: Vec<(String, String)> },
    /// For each mask token, the five likeliest tokens with their probabilities.
    Masks { fills: Vec<Vec<(String, f32)>> },
    /// The five likeliest next tokens after the text (decoded: a leading space is a word
    /// start) with their probabilities, and their ids.
    Next {
        tokens: Vec<(String, f32)>,
        ids: Vec<u32>,
    },
}

/// The five likeliest token ids of a logits row (the tokenizer's vocabulary only) with their
/// probabilities.
fn top5(tokenizer: &Tokenizer, row: &[f32]) -> Vec<(u32, f32)> {
    let v = tokenizer.vocab_size().min(row.len());
    let p = softmax(row);
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
    order.iter().take(5).map(|&i| (i as u32, p[i])).collect()
}

/// A numerically stable softmax of one row.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Runs the model on `text` (truncated to `max_len` tokens).
#[allow(clippy::too_many_arguments)]
pub async fn predict<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    tokenizer: &Tokenizer,
    task: TaskKind,
    labels: &Labels,
    max_len: usize,
    text: &str,
) -> Result<Prediction, TrainError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let encode_err = |e: crate::tokenizer::TokenizerError| crate::data::DataError::File {
        file: "input".into(),
        reason: e.to_string(),
    };
    let (ids, starts) = match task {
        TaskKind::TokenClassification => tokenizer
            .encode_tagged(&words, max_len)
            .map_err(encode_err)?,
        _ => {
            let ids = tokenizer.encode_text(text, max_len).map_err(encode_err)?;
            let n = ids.len();
            (ids, vec![0; n])
        }
    };
    let len = ids.len();
    if len == 0 {
        return Err(crate::data::DataError::File {
            file: "input".into(),
            reason: "the text gives no tokens".into(),
        }
        .into());
    }
    let input = model.input(backend, store, &ids, &vec![1.0; len], 1, len)?;
    let f = model.forward(backend, store, &input, None, false)?;
    let value = f.tape.value(f.logits)?;
    let values = backend.download(value).await?;
    let names = &labels.names;
    Ok(match task {
        TaskKind::Classification => {
            let p = softmax(&values);
            let best = argmax(&p);
            Prediction::Class {
                label: names.get(best).cloned().unwrap_or_default(),
                score: p[best],
                scores: names.iter().cloned().zip(p.iter().copied()).collect(),
                logits: values,
            }
        }
        TaskKind::TokenClassification => {
            let k = names.len().max(1);
            let tags = starts
                .iter()
                .enumerate()
                .filter(|&(_, &w)| w != IGNORE_INDEX)
                .map(|(t, &w)| {
                    let best = argmax(&values[t * k..(t + 1) * k]);
                    (words[w as usize].to_string(), names[best].clone())
                })
                .collect();
            Prediction::Tags { tags }
        }
        TaskKind::MaskedLm => {
            let vocab = backend.shape(value).dims()[2];
            let mask = tokenizer.mask_id();
            let fills = ids
                .iter()
                .enumerate()
                .filter(|&(_, id)| Some(*id) == mask)
                .map(|(t, _)| {
                    top5(tokenizer, &values[t * vocab..(t + 1) * vocab])
                        .into_iter()
                        .map(|(i, p)| (tokenizer.id_to_token(i).unwrap_or_default(), p))
                        .collect()
                })
                .collect();
            Prediction::Masks { fills }
        }
        TaskKind::CausalLm => {
            // The logits of the last position (of the prompt's, for an empty text).
            let dims = backend.shape(value).dims().to_vec();
            let (t, vocab) = (dims[1], dims[2]);
            let last = t.saturating_sub(1);
            let top = top5(tokenizer, &values[last * vocab..(last + 1) * vocab]);
            Prediction::Next {
                tokens: top
                    .iter()
                    .map(|&(i, p)| (tokenizer.decode(&[i]).unwrap_or_default(), p))
                    .collect(),
                ids: top.iter().map(|&(i, _)| i).collect(),
            }
        }
    })
}
