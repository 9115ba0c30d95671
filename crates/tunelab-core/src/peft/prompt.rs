//! Prompt tuning (Lester et al., 2021): `n` learned virtual-token embeddings `(n, C)` are
//! prepended to the word embeddings of every input, the attention mask is extended with ones
//! and token-type ids with zeros; the model itself stays frozen. Initialised from a normal
//! distribution (PEFT's `RANDOM`, `nn.Embedding`'s N(0, 1)) or from the embeddings of a
//! text's tokens, repeated to `n`.

use super::{
    Applied, Count, ExportKind, ModelDims, Opt, OptKind, PeftError, PeftKeys, PeftMethod, Shapes,
    Target, add_param, object,
};
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

const OPTIONS: &[Opt] = &[Opt {
    key: "num_virtual_tokens",
    flag: "prompt-tokens",
    url: "vt",
    label: "virtual tokens",
    help: "Prompt tuning: number of virtual tokens. [default: 20]",
    kind: OptKind::Whole { min: 1, max: 512 },
}];

impl PeftMethod for PromptConfig {
    const NAME: &'static str = "prompt";
    const TITLE: &'static str = "Prompt tuning";
    const SUMMARY: &'static str =
        "learned virtual tokens prepended to the input; the model stays frozen";
    const HELP: &'static str = "Keeps the whole model frozen and learns a few 'virtual words' put in front of every input. Nothing inside the model changes.";
    const LR: f64 = 1e-2;
    const OPTIONS: &'static [Opt] = OPTIONS;
    const EXPORT: ExportKind = ExportKind::Peft {
        peft_type: "PROMPT_TUNING",
        keys: PeftKeys::Prompt,
    };

    fn validate(&self) -> Result<(), String> {
        if self.num_virtual_tokens == 0 {
            return Err("num_virtual_tokens must be at least 1".into());
        }
        Ok(())
    }

    fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
        let n = self.num_virtual_tokens;
        let table = t.store.get(t.word_embeddings).value.clone();
        let c = t.backend.shape(&table).dims()[1];
        let value = if self.init_token_ids.is_empty() {
            let data: Vec<f32> = (0..n * c).map(|_| t.rng.normal()).collect();
            t.backend.upload(&data, &Shape::new([n, c]))?
        } else {
            let ids: Vec<u32> = (0..n)
                .map(|i| self.init_token_ids[i % self.init_token_ids.len()])
                .collect();
            let ids = t.backend.upload_u32(&ids, &Shape::new([n]))?;
            t.backend.embedding(&table, &ids)?
        };
        let id = add_param(t, Self::NAME, "prompt_embeddings".into(), value)?;
        Ok(Applied { prompt: Some(id) })
    }

    fn count(&self, m: &Shapes) -> Result<Count, PeftError> {
        Ok(Count {
            unfrozen: 0,
            added: self.num_virtual_tokens * m.hidden_size,
        })
    }

    fn virtual_tokens(&self) -> usize {
        self.num_virtual_tokens
    }

    fn describe(&self) -> String {
        format!("prompt tuning ({} virtual tokens)", self.num_virtual_tokens)
    }

    fn peft_config(&self, d: &ModelDims) -> serde_json::Map<String, serde_json::Value> {
        object(serde_json::json!({
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": d.hidden_size,
            "num_transformer_submodules": 1,
            "num_attention_heads": d.num_attention_heads,
            "num_layers": d.num_hidden_layers,
            // The weights are saved, so loading must not re-initialise from text.
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": null,
            "tokenizer_name_or_path": null,
        }))
    }

    fn from_peft(cfg: &serde_json::Value) -> Result<Self, String> {
        Ok(Self {
            num_virtual_tokens: cfg
                .get("num_virtual_tokens")
                .and_then(|v| v.as_u64())
                .ok_or("missing `num_virtual_tokens`")? as usize,
            init_token_ids: Vec::new(),
        })
    }
}
