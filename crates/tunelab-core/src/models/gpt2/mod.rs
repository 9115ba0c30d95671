//! GPT-2: a decoder of pre-LN blocks with learned positions. Per block, with hidden states
//! `h (B, T, C)`:
//!
//! ```text
//! q | k | v = LN1(h) Wattn^T + battn                   (B, T, 3C), one fused projection
//! h       = h + attention(q, k, v, heads, mask, causal) Wproj^T + bproj
//! h       = h + act(LN2(h) Wfc^T + bfc) Wproj2^T + bproj2      inner (B, T, I)
//! ```
//!
//! then a final layer norm (`ln_f`). `act` is the config's (`gelu_new`, GELU's tanh form).
//! Positions are `0..T` (a prompt's virtual tokens count first), padding or not, as
//! transformers numbers them. The LM head is the word embeddings (tied).

mod config;

pub use config::Gpt2Config;

use crate::Shape;
use crate::backend::{Backend, BackendError, Result};
use crate::models::EncoderInput;
use crate::models::kv_cache::KvCache;
use crate::nn::{Ctx, LayerNorm, Linear};
use crate::params::{ParamId, ParamStore};
use crate::safetensors_io::{HostTensor, LoadError, take_expected};
use crate::tape::Var;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// A GPT-2 model whose weights live in a [`ParamStore`].
#[derive(Debug, Clone)]
pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: ParamId,
    wpe: ParamId,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// Loads the model's tensors (with or without the `transformer.` prefix) into `store`,
    /// `Conv1D` weights transposed to `(out, in)`; returns the tensors it did not use.
    pub fn load<B: Backend>(
        backend: &B,
        config: Gpt2Config,
        file: &str,
        mut tensors: BTreeMap<String, HostTensor>,
        store: &mut ParamStore<B>,
    ) -> std::result::Result<(Self, BTreeMap<String, HostTensor>), LoadError> {
        let cfg_err = |reason: String| LoadError::Config {
            file: file.into(),
            reason,
        };
        // What the checkpoint holds: `Conv1D` weights `(in, out)`.
        let specs = config.param_specs();
        let on_disk: Vec<(String, Shape)> = specs
            .iter()
            .map(|(n, s)| {
                let d = s.dims();
                if Gpt2Config::is_conv1d(n) {
                    (n.clone(), Shape::new([d[1], d[0]]))
                } else {
                    (n.clone(), s.clone())
                }
            })
            .collect();
        let values = take_expected(file, &mut tensors, &on_disk, &["transformer.", ""])?;
        for ((name, _), t) in specs.iter().zip(values) {
            let t = if Gpt2Config::is_conv1d(name) {
                config::transpose(t)
            } else {
                t
            };
            let dev = backend
                .upload(&t.data, &t.shape)
                .map_err(|e| cfg_err(e.to_string()))?;
            store
                .insert(name.clone(), dev, true)
                .map_err(|e| cfg_err(e.to_string()))?;
        }
        let model = Self::bind_names(config, store).map_err(cfg_err)?;
        Ok((model, tensors))
    }

    fn bind_names<B: Backend>(
        config: Gpt2Config,
        store: &ParamStore<B>,
    ) -> std::result::Result<Self, String> {
        let id = |n: &str| store.id(n).map_err(|e| e.to_string());
        let eps = config.layer_norm_epsilon;
        let ln = |p: &str| -> std::result::Result<LayerNorm, String> {
            Ok(LayerNorm {
                weight: id(&format!("{p}.weight"))?,
                bias: id(&format!("{p}.bias"))?,
                eps,
            })
        };
        let linear = |name: String| -> std::result::Result<Linear, String> {
            Ok(Linear {
                weight: id(&format!("{name}.weight"))?,
                bias: Some(id(&format!("{name}.bias"))?),
                name,
            })
        };
        let mut blocks = Vec::new();
        for l in 0..config.n_layer {
            let p = format!("h.{l}");
            blocks.push(Block {
                ln_1: ln(&format!("{p}.ln_1"))?,
                c_attn: linear(format!("{p}.attn.c_attn"))?,
                c_proj: linear(format!("{p}.attn.c_proj"))?,
                ln_2: ln(&format!("{p}.ln_2"))?,
                c_fc: linear(format!("{p}.mlp.c_fc"))?,
                mlp_proj: linear(format!("{p}.mlp.c_proj"))?,
            });
        }
        Ok(Self {
            wte: id("wte.weight")?,
            wpe: id("wpe.weight")?,
            ln_f: ln("ln_f")?,
            blocks,
            config,
        })
    }

    /// The last block's output after `ln_f`: `(B, T', C)`.
    pub fn encode<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        let h = self.embed(cx, &input.ids, &input.positions, prompt)?;
        self.blocks(cx, h, Some(&input.mask), None)
    }

    /// Token embeddings (after `prompt`) plus position embeddings.
    fn embed<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        ids: &B::Tensor,
        positions: &B::Tensor,
        prompt: Option<Var>,
    ) -> Result<Var> {
        let wte = cx.p(self.wte);
        let mut h = cx.tape.embedding(wte, ids)?;
        if let Some(p) = prompt {
            h = cx.tape.concat_seq(p, h)?;
        }
        let wpe = cx.p(self.wpe);
        let pos = cx.tape.embedding(wpe, positions)?;
        cx.tape.add(h, pos)
    }

    /// The blocks and `ln_f` over `h (B, T, C)`. With a cache, `h` holds the positions after
    /// the cached ones: their keys and values join the cache's, and attention reads all of
    /// them (see [`Gpt2::attend_cached`]).
    fn blocks<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        mut h: Var,
        mask: Option<&B::Tensor>,
        mut cache: Option<&mut KvCache<B::Tensor>>,
    ) -> Result<Var> {
        let c = self.config.n_embd;
        let act = self.config.activation();
        for (l, b) in self.blocks.iter().enumerate() {
            let x = b.ln_1.forward(cx, h)?;
            let qkv = b.c_attn.forward(cx, x)?; // (B, T, 3C)
            let s = cx.tape.shape(qkv)?;
            let (bsz, t) = (s.dims()[0], s.dims()[1]);
            // (B, T, 3C) as (B T, 3, C): the three projections are slices of dim 1.
            let parts = cx.tape.reshape(qkv, &Shape::new([bsz * t, 3, c]))?;
            let mut qkv = Vec::with_capacity(3);
            for k in 0..3 {
                let part = cx.tape.slice_seq(parts, k, 1)?;
                qkv.push(cx.tape.reshape(part, &Shape::new([bsz, t, c]))?);
            }
            let a = match cache.as_deref_mut() {
                None => {
                    cx.tape
                        .attention(qkv[0], qkv[1], qkv[2], self.config.n_head, mask, true)?
                }
                Some(cache) => self.attend_cached(cx, l, [qkv[0], qkv[1], qkv[2]], cache)?,
            };
            let a = b.c_proj.forward(cx, a)?;
            h = cx.tape.add(h, a)?;
            let x = b.ln_2.forward(cx, h)?;
            let m = b.c_fc.forward(cx, x)?;
            let m = cx.tape.activation(m, act)?;
            let m = b.mlp_proj.forward(cx, m)?;
            h = cx.tape.add(h, m)?;
        }
        if let Some(cache) = cache {
            let t = cx.tape.shape(h)?.dims()[1];
            cache.len += t;
        }
        self.ln_f.forward(cx, h)
    }

    /// Layer `l`'s attention of new positions `q, k, v (B, n, C)` over the cached ones and
    /// themselves; the cache keeps the joined keys and values. The first step (empty cache)
    /// is the usual causal attention; a later one takes one position, which sees every key,
    /// so it needs no mask — on a backend whose attention takes no fewer queries than keys,
    /// the query is padded in front and the last output row kept.
    fn attend_cached<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        l: usize,
        [q, k, v]: [Var; 3],
        cache: &mut KvCache<B::Tensor>,
    ) -> Result<Var> {
        let heads = self.config.n_head;
        let past = cache.len;
        if past == 0 {
            let a = cx.tape.attention(q, k, v, heads, None, true)?;
            let keep = (cx.tape.value(k)?.clone(), cx.tape.value(v)?.clone());
            cache.layers.truncate(l);
            cache.layers.push(keep);
            return Ok(a);
        }
        let s = cx.tape.shape(q)?;
        let (bsz, n, c) = (s.dims()[0], s.dims()[1], s.dims()[2]);
        let (ck, cv) = cache
            .layers
            .get(l)
            .cloned()
            .ok_or_else(|| BackendError::Shape {
                op: "decode",
                msg: format!(
                    "the cache holds {} layers, not layer {l}",
                    cache.layers.len()
                ),
            })?;
        if n != 1 {
            return Err(BackendError::Shape {
                op: "decode",
                msg: format!("after the first step tokens come one at a time, got {n}"),
            });
        }
        let ck = cx.tape.leaf(ck, false);
        let cv = cx.tape.leaf(cv, false);
        let k = cx.tape.concat_seq(ck, k)?;
        let v = cx.tape.concat_seq(cv, v)?;
        cache.layers[l] = (cx.tape.value(k)?.clone(), cx.tape.value(v)?.clone());
        if cx.tape.backend().attention_query_subset() {
            return cx.tape.attention(q, k, v, heads, None, false);
        }
        let zeros = cx.tape.backend().zeros(&Shape::new([bsz, past, c]))?;
        let zeros = cx.tape.leaf(zeros, false);
        let q = cx.tape.concat_seq(zeros, q)?;
        let a = cx.tape.attention(q, k, v, heads, None, false)?;
        cx.tape.slice_seq(a, past, 1)
    }

    /// Names of the linear layers (`h.0.attn.c_attn`, ...), for PEFT target matching.
    pub fn linear_names(&self) -> Vec<&str> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.c_proj, &b.c_fc, &b.mlp_proj])
            .map(|l| l.name.as_str())
            .collect()
    }
}

impl crate::models::arch::Encoder for Gpt2 {
    fn word_embeddings(&self) -> ParamId {
        self.wte
    }

    fn pooler(&self) -> Option<&Linear> {
        None
    }

    fn linear_names(&self) -> Vec<&str> {
        Gpt2::linear_names(self)
    }

    fn positions(
        &self,
        _mask: &[f32],
        batch: usize,
        total: usize,
        _virtual_tokens: usize,
    ) -> Vec<u32> {
        (0..batch).flat_map(|_| 0..total as u32).collect()
    }

    fn encode<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        input: &EncoderInput<B::Tensor>,
        prompt: Option<Var>,
    ) -> Result<Var> {
        Gpt2::encode(self, cx, input, prompt)
    }

    fn decode<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        ids: &B::Tensor,
        prompt: Option<Var>,
        cache: &mut KvCache<B::Tensor>,
    ) -> Result<Var> {
        let d = cx.tape.backend().shape(ids).dims().to_vec();
        let (bsz, n) = (d[0], d[1]);
        let p = match prompt {
            Some(v) => cx.tape.shape(v)?.dims()[1],
            None => 0,
        };
        let start = cache.len as u32;
        let positions: Vec<u32> = (0..bsz)
            .flat_map(|_| start..start + (p + n) as u32)
            .collect();
        let positions = cx
            .tape
            .backend()
            .upload_u32(&positions, &Shape::new([bsz, p + n]))?;
        let h = self.embed(cx, ids, &positions, prompt)?;
        self.blocks(cx, h, None, Some(cache))
    }
}
