//! Prompt tuning (Lester et al., 2021): `n` learned virtual-token embeddings `(n, C)` are
//! prepended to the word embeddings of every input, the attention mask is extended with ones
//! and token-type ids with zeros; the model itself stays frozen. Initialised from a normal
//! distribution (PEFT's `RANDOM`, `nn.Embedding`'s N(0, 1)) or from the embeddings of a
//! text's tokens, repeated to `n`.

use super::{Applied, PeftError, Target};
use crate::Shape;
use crate::backend::Backend;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptConfig {
    pub num_virtual_tokens: usize,
    /// Token ids of an initialisation text (already tokenised); empty for random init.
    pub init_token_ids: Vec<u32>,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            init_token_ids: Vec::new(),
        }
    }
}

impl PromptConfig {
    /// The options' ranges (the reason names the option).
    pub fn validate(&self) -> Result<(), String> {
        if self.num_virtual_tokens == 0 {
            return Err("num_virtual_tokens must be at least 1".into());
        }
        Ok(())
    }
}

pub fn apply<B: Backend>(cfg: &PromptConfig, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
    cfg.validate().map_err(|reason| PeftError::Invalid {
        method: "prompt",
        reason,
    })?;
    let n = cfg.num_virtual_tokens;
    let table = t.store.get(t.word_embeddings).value.clone();
    let c = t.backend.shape(&table).dims()[1];
    let value = if cfg.init_token_ids.is_empty() {
        let data: Vec<f32> = (0..n * c).map(|_| t.rng.normal()).collect();
        t.backend.upload(&data, &Shape::new([n, c]))?
    } else {
        let ids: Vec<u32> = (0..n)
            .map(|i| cfg.init_token_ids[i % cfg.init_token_ids.len()])
            .collect();
        let ids = t.backend.upload_u32(&ids, &Shape::new([n]))?;
        t.backend.embedding(&table, &ids)?
    };
    let id = t
        .store
        .insert("prompt_embeddings", value, true)
        .map_err(|e| PeftError::Invalid {
            method: "prompt",
            reason: e.to_string(),
        })?;
    Ok(Applied { prompt: Some(id) })
}
