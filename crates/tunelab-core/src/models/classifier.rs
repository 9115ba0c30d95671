//! A sequence classifier: encoder + head + the PEFT method's additions.

use crate::Shape;
use crate::backend::{Backend, BackendError, Result};
use crate::models::bert::{Bert, BertConfig, EncoderInput, Flavor};
use crate::models::heads::SequenceClassifier;
use crate::nn::{Adapters, Ctx};
use crate::params::{ParamId, ParamStore};
use crate::peft::{Method, PeftError, Target};
use crate::rng::Rng;
use crate::safetensors_io::LoadError;
use crate::tape::Var;

/// Anything that stops a model from being built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Debug, Clone)]
pub struct SeqClassifier {
    pub encoder: Bert,
    pub head: SequenceClassifier,
    pub adapters: Adapters,
    pub prompt: Option<ParamId>,
    pub num_labels: usize,
}

impl SeqClassifier {
    /// Loads `config.json` + `model.safetensors` (text and bytes; `dir` names them in errors),
    /// adds the head (from the checkpoint or new) and applies `method`. Tensors in the
    /// checkpoint that neither the encoder nor the head uses are an error.
    #[allow(clippy::too_many_arguments)]
    pub fn load<B: Backend>(
        backend: &B,
        dir: &str,
        config_json: &str,
        weights: &[u8],
        num_labels: usize,
        method: &Method,
        seed: u64,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<Self, ModelError> {
        let cfg_file = format!("{dir}/config.json");
        let st_file = format!("{dir}/model.safetensors");
        let config = BertConfig::from_json(&cfg_file, config_json)?;
        let (encoder, mut rest) = Bert::load(backend, config, &st_file, weights, store)?;
        let head = SequenceClassifier::load_or_init(
            backend, &encoder, num_labels, &st_file, &mut rest, seed, store,
        )?;
        // Heads of other tasks (an MLM head, say) may sit in a checkpoint; anything else is extra.
        let extra: Vec<String> = rest
            .into_keys()
            .filter(|k| !(k.starts_with("cls.") || k.starts_with("lm_head.")))
            .collect();
        if !extra.is_empty() {
            return Err(LoadError::Extra {
                file: st_file,
                names: extra,
            }
            .into());
        }
        let mut adapters = Adapters::default();
        let mut rng = Rng::new(seed ^ 0x5045_4654);
        let applied = method.apply(&mut Target {
            backend,
            store,
            adapters: &mut adapters,
            linear_names: encoder
                .linear_names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            head: head.param_names(),
            word_embeddings: encoder.word_embeddings,
            rng: &mut rng,
        })?;
        Ok(Self {
            encoder,
            head,
            adapters,
            prompt: applied.prompt,
            num_labels,
        })
    }

    /// Virtual tokens prepended by prompt tuning (0 without it).
    pub fn prompt_len<B: Backend>(&self, backend: &B, store: &ParamStore<B>) -> usize {
        self.prompt
            .map(|p| backend.shape(&store.get(p).value).dims()[0])
            .unwrap_or(0)
    }

    /// Device inputs for `ids (B, T)` and its mask, with the prompt's prefix accounted for in
    /// positions, token types and mask.
    pub fn input<B: Backend>(
        &self,
        backend: &B,
        store: &ParamStore<B>,
        ids: &[u32],
        mask: &[f32],
        batch: usize,
        len: usize,
    ) -> Result<EncoderInput<B::Tensor>> {
        let p = self.prompt_len(backend, store);
        let total = p + len;
        let mut full_mask = Vec::with_capacity(batch * total);
        for b in 0..batch {
            full_mask.extend(std::iter::repeat_n(1.0, p));
            full_mask.extend_from_slice(&mask[b * len..(b + 1) * len]);
        }
        let positions = if p > 0 && self.encoder.flavor == Flavor::Roberta {
            // With inputs_embeds, transformers numbers RoBERTa positions sequentially from
            // pad + 1, padding included.
            let pad = self.encoder.config.pad_token_id;
            (0..batch)
                .flat_map(|_| (0..total as u32).map(move |t| pad + 1 + t))
                .collect()
        } else {
            self.encoder.position_ids(&full_mask, batch, total)
        };
        let sh = Shape::new([batch, total]);
        Ok(EncoderInput {
            ids: backend.upload_u32(ids, &Shape::new([batch, len]))?,
            token_types: backend.upload_u32(&vec![0; batch * total], &sh)?,
            positions: backend.upload_u32(&positions, &sh)?,
            mask: backend.upload(&full_mask, &sh)?,
        })
    }

    /// Logits `(B, K)`.
    pub fn logits<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
    ) -> Result<Var> {
        let prompt = match self.prompt {
            None => None,
            Some(id) => {
                // (P, C) -> (B, P, C) by gathering rows 0..P for every batch element; the
                // backward scatter-adds over the batch.
                let batch = cx.tape.backend().shape(&input.ids).dims()[0];
                let table = cx.p(id);
                let p = cx.tape.shape(table)?.dims()[0];
                let rows: Vec<u32> = (0..batch).flat_map(|_| 0..p as u32).collect();
                let rows = cx
                    .tape
                    .backend()
                    .upload_u32(&rows, &Shape::new([batch, p]))?;
                Some(cx.tape.embedding(table, &rows)?)
            }
        };
        let h = self.encoder.encode(cx, input, prompt)?;
        self.head.forward(cx, &self.encoder, h)
    }
}
