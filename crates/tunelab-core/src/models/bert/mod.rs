//! BERT and RoBERTa encoders (the same graph; RoBERTa offsets position ids past the padding
//! index and has no pooler in its classification head).
//!
//! Per layer, with hidden states `h (B, T, C)`:
//!
//! ```text
//! q, k, v = h Wq^T + bq, h Wk^T + bk, h Wv^T + bv        (B, T, C)
//! a       = attention(q, k, v, heads, mask)              (B, T, C)
//! h       = LN(a Wo^T + bo + h)                          (B, T, C)
//! h       = LN(gelu(h Wi^T + bi) Wo2^T + bo2 + h)        (B, T, C), inner (B, T, 4C)
//! ```
//!
//! Dropout is not applied (evaluation semantics; training dropout is a later addition).

mod config;

pub use config::{BertConfig, Flavor, uses_pooler};

use crate::backend::{Backend, Result};
use crate::models::EncoderInput;
use crate::models::rows::{FirstOnly, Rows};
use crate::nn::{Ctx, LayerNorm, Linear};
use crate::params::{ParamId, ParamStore};
use crate::safetensors_io::{HostTensor, LoadError, take_expected};
use crate::tape::Var;

impl crate::models::arch::Encoder for Bert {
    fn word_embeddings(&self) -> ParamId {
        self.word_embeddings
    }

    fn pooler(&self) -> Option<&Linear> {
        self.pooler.as_ref()
    }

    fn linear_names(&self) -> Vec<&str> {
        Bert::linear_names(self)
    }

    fn positions(
        &self,
        mask: &[f32],
        batch: usize,
        total: usize,
        virtual_tokens: usize,
    ) -> Vec<u32> {
        if virtual_tokens > 0 && self.flavor == Flavor::Roberta {
            // With inputs_embeds, transformers numbers RoBERTa positions sequentially from
            // pad + 1, padding included.
            let pad = self.config.pad_token_id;
            (0..batch)
                .flat_map(|_| (0..total as u32).map(move |t| pad + 1 + t))
                .collect()
        } else {
            self.position_ids(mask, batch, total)
        }
    }

    fn encode<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        Bert::encode(self, cx, input, prompt)
    }

    fn encode_first<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        Bert::encode_first(self, cx, input, prompt)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    inter: Linear,
    out: Linear,
    out_ln: LayerNorm,
}

/// A BERT/RoBERTa encoder whose weights live in a [`ParamStore`].
#[derive(Debug, Clone)]
pub struct Bert {
    pub config: BertConfig,
    pub flavor: Flavor,
    pub word_embeddings: ParamId,
    position_embeddings: ParamId,
    token_type_embeddings: ParamId,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    /// `pooler.dense` (BERT's `[CLS]` pooler), when the checkpoint has it.
    pub pooler: Option<Linear>,
}

fn linear(
    store_ids: &impl Fn(&str) -> std::result::Result<ParamId, LoadError>,
    name: &str,
    bias: bool,
) -> std::result::Result<Linear, LoadError> {
    Ok(Linear {
        name: name.to_string(),
        weight: store_ids(&format!("{name}.weight"))?,
        bias: if bias {
            Some(store_ids(&format!("{name}.bias"))?)
        } else {
            None
        },
    })
}

impl Bert {
    /// Loads the encoder (and, with `with_pooler`, the pooler when present — only BERT's
    /// sequence classification uses it) from a checkpoint's tensors (see
    /// [`crate::safetensors_io::read`] and [`crate::safetensors_io::read_sharded`]) into
    /// `store`; `file` names the checkpoint in errors. Weight prefixes `bert.` / `roberta.` are accepted. A missing or mis-shaped tensor
    /// is an error; tensors that belong to neither the encoder nor a known head are reported
    /// as extra. Returns the model and the unused tensors (a task head's, for the caller).
    pub fn load<B: Backend>(
        backend: &B,
        config: BertConfig,
        file: &str,
        mut tensors: std::collections::BTreeMap<String, HostTensor>,
        with_pooler: bool,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<(Self, std::collections::BTreeMap<String, HostTensor>), LoadError>
    {
        let flavor = config.flavor().map_err(|reason| LoadError::Config {
            file: file.into(),
            reason,
        })?;
        let prefixes = ["bert.", "roberta.", ""];
        let specs = config.param_specs();
        let values = take_expected(file, &mut tensors, &specs, &prefixes)?;
        let insert = |name: &str,
                      t: HostTensor,
                      store: &mut ParamStore<B>|
         -> std::result::Result<(), LoadError> {
            let dev = backend
                .upload(&t.data, &t.shape)
                .map_err(|e| LoadError::Config {
                    file: file.into(),
                    reason: e.to_string(),
                })?;
            store
                .insert(name, dev, true)
                .map_err(|e| LoadError::Config {
                    file: file.into(),
                    reason: e.to_string(),
                })?;
            Ok(())
        };
        for ((name, _), t) in specs.iter().zip(values) {
            insert(name, t, store)?;
        }
        let pooler_specs = config.pooler_specs();
        let has_pooler = with_pooler
            && prefixes
                .iter()
                .any(|p| tensors.contains_key(&format!("{p}pooler.dense.weight")));
        if has_pooler {
            let values = take_expected(file, &mut tensors, &pooler_specs, &prefixes)?;
            for ((name, _), t) in pooler_specs.iter().zip(values) {
                insert(name, t, store)?;
            }
        }
        let model =
            Self::bind_names(config, flavor, store, has_pooler).map_err(|e| LoadError::Config {
                file: file.into(),
                reason: e.to_string(),
            })?;
        Ok((model, tensors))
    }

    /// A randomly initialised encoder (for pretraining from scratch): normal(0, 0.02) weights,
    /// zero biases, unit layer-norm gains, as transformers initialises BERT.
    pub fn random<B: Backend>(
        backend: &B,
        config: BertConfig,
        seed: u64,
        store: &mut ParamStore<B>,
    ) -> Result<Self> {
        let flavor = config
            .flavor()
            .map_err(|msg| crate::BackendError::Shape { op: "bert", msg })?;
        let mut rng = crate::rng::Rng::new(seed);
        for (name, shape) in config
            .param_specs()
            .into_iter()
            .chain(config.pooler_specs())
        {
            let n = shape.numel();
            let data: Vec<f32> = if name.ends_with("LayerNorm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| 0.02 * rng.normal()).collect()
            };
            let t = backend.upload(&data, &shape)?;
            store
                .insert(name, t, true)
                .map_err(|e| crate::BackendError::Shape {
                    op: "bert",
                    msg: e.to_string(),
                })?;
        }
        Self::bind_names(config, flavor, store, true).map_err(|e| crate::BackendError::Shape {
            op: "bert",
            msg: e.to_string(),
        })
    }

    fn bind_names<B: Backend>(
        config: BertConfig,
        flavor: Flavor,
        store: &ParamStore<B>,
        pooler: bool,
    ) -> std::result::Result<Self, LoadError> {
        let id = |n: &str| {
            store.id(n).map_err(|e| LoadError::Config {
                file: String::new(),
                reason: e.to_string(),
            })
        };
        let eps = config.layer_norm_eps;
        let ln = |p: &str| -> std::result::Result<LayerNorm, LoadError> {
            Ok(LayerNorm {
                weight: id(&format!("{p}.weight"))?,
                bias: id(&format!("{p}.bias"))?,
                eps,
            })
        };
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                query: linear(&id, &format!("{p}.attention.self.query"), true)?,
                key: linear(&id, &format!("{p}.attention.self.key"), true)?,
                value: linear(&id, &format!("{p}.attention.self.value"), true)?,
                attn_out: linear(&id, &format!("{p}.attention.output.dense"), true)?,
                attn_ln: ln(&format!("{p}.attention.output.LayerNorm"))?,
                inter: linear(&id, &format!("{p}.intermediate.dense"), true)?,
                out: linear(&id, &format!("{p}.output.dense"), true)?,
                out_ln: ln(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            flavor,
            word_embeddings: id("embeddings.word_embeddings.weight")?,
            position_embeddings: id("embeddings.position_embeddings.weight")?,
            token_type_embeddings: id("embeddings.token_type_embeddings.weight")?,
            emb_ln: ln("embeddings.LayerNorm")?,
            layers,
            pooler: if pooler {
                Some(linear(&id, "pooler.dense", true)?)
            } else {
                None
            },
            config,
        })
    }

    /// Position ids for a `(B, T)` attention mask: `0..T` for BERT; for RoBERTa
    /// `pad + 1 + (running count of tokens)` on tokens and `pad` on padding, as transformers
    /// computes them from the input ids.
    pub fn position_ids(&self, mask: &[f32], batch: usize, len: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(batch * len);
        for b in 0..batch {
            let mut count = 0u32;
            for t in 0..len {
                out.push(match self.flavor {
                    Flavor::Bert => t as u32,
                    Flavor::Roberta => {
                        if mask[b * len + t] > 0.0 {
                            count += 1;
                            self.config.pad_token_id + count
                        } else {
                            self.config.pad_token_id
                        }
                    }
                });
            }
        }
        out
    }

    /// Word embeddings of `ids` with `prompt (B, P, C)` prepended (prompt tuning), then
    /// position and token-type embeddings and layer norm over the whole length.
    pub fn embed<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        self.embed_rows(cx, input, prompt)?.join(cx)
    }

    /// [`Bert::embed`], with a prompt's rows and the token rows kept apart where they need
    /// no gradient ([`Rows::embed`]).
    fn embed_rows<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Rows> {
        let word = cx.p(self.word_embeddings);
        let tokens = cx.tape.embedding(word, &input.ids)?; // (B, T, C)
        let pos_table = cx.p(self.position_embeddings);
        let pos = cx.tape.embedding(pos_table, &input.positions)?; // (B, P+T, C)
        let tt_table = cx.p(self.token_type_embeddings);
        let tt = cx.tape.embedding(tt_table, &input.token_types)?;
        let frozen = [pos, tt, cx.p(self.emb_ln.weight), cx.p(self.emb_ln.bias)];
        // Position and token-type embeddings added, then layer norm: per position.
        Rows::embed(cx, tokens, prompt, &frozen, |cx, h, span| {
            let (pos, tt) = match span {
                Some((start, len)) => (
                    cx.tape.slice_seq(pos, start, len)?,
                    cx.tape.slice_seq(tt, start, len)?,
                ),
                None => (pos, tt),
            };
            let h = cx.tape.add(h, pos)?;
            let h = cx.tape.add(h, tt)?;
            self.emb_ln.forward(cx, h)
        })
    }

    /// The encoder: `(B, T', C)` hidden states of the last layer.
    pub fn encode<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        self.layers_forward(cx, input, prompt, false)
    }

    /// The last layer's hidden state at the first position only, `(B, 1, C)`: what a
    /// sequence-classification head reads (`[CLS]`/`<s>`, or the first virtual token with
    /// prompt tuning). Equal to `encode(..)` sliced to position 0, with less work: in the last
    /// layer, keys and values still cover every position, but the attention output is kept
    /// at position 0 only before the output projection, so that projection, both layer norms
    /// and the MLP run on one position per sequence instead of `T'` — in the forward pass
    /// and in the backward pass. Where the backend's attention takes fewer queries than keys
    /// ([`Backend::attention_query_subset`]), the query projection and the attention itself
    /// run for position 0 only too: ~1/7 of the MiniLM training step's products.
    pub fn encode_first<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        self.layers_forward(cx, input, prompt, true)
    }

    fn layers_forward<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
        first_only: bool,
    ) -> Result<Var> {
        let mut rows = self.embed_rows(cx, input, prompt)?;
        let heads = self.config.num_attention_heads;
        if first_only && self.layers.is_empty() {
            let h = rows.join(cx)?;
            return FirstOnly::first(cx, h);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let first = FirstOnly::at(cx, first_only, l, self.layers.len());
            let [q, k, v, h] =
                rows.attention_inputs(cx, first, [&layer.query, &layer.key, &layer.value])?;
            let a = cx
                .tape
                .attention(q, k, v, heads, Some(&input.mask), false)?;
            let (a, h) = first.after_attention(cx, a, h)?;
            let a = layer.attn_out.forward(cx, a)?;
            let a = cx.tape.add(a, h)?;
            let h = layer.attn_ln.forward(cx, a)?;
            let i = layer.inter.forward(cx, h)?;
            let i = cx.tape.gelu(i)?;
            let o = layer.out.forward(cx, i)?;
            let o = cx.tape.add(o, h)?;
            rows = Rows::Whole(layer.out_ln.forward(cx, o)?);
        }
        rows.join(cx)
    }

    /// Names of the linear layers (`encoder.layer.N.attention.self.query`, ...), for PEFT
    /// target matching.
    pub fn linear_names(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for l in &self.layers {
            for lin in [&l.query, &l.key, &l.value, &l.attn_out, &l.inter, &l.out] {
                out.push(lin.name.as_str());
            }
        }
        if let Some(p) = &self.pooler {
            out.push(p.name.as_str());
        }
        out
    }
}
