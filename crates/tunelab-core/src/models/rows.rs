//! Forward-pass helpers every encoder family shares, so each family's forward is its own
//! arithmetic only:
//!
//! - **Prompt rows apart** ([`Rows`]): with prompt tuning and a frozen model, the prompt's
//!   rows and the token rows are embedded and projected apart up to the first layer's
//!   attention, so the backward computes input gradients for the prompt's rows only. Every
//!   op up to there is per position, so the parts are exact.
//! - **First position only** ([`FirstOnly`]): a sequence-classification head reads one
//!   position per sequence, so the last layer's work after attention (and, where the
//!   backend's attention takes fewer queries than keys, its queries and attention too) runs
//!   for position 0 only, in the forward pass and in the backward pass.

use crate::backend::{Backend, Result};
use crate::nn::{Ctx, Linear};
use crate::tape::Var;

/// Hidden states between layers: whole `(B, T', C)`, or (prompt tuning, before the first
/// layer) a prompt's rows `(B, P, C)` and the token rows `(B, T, C)` apart.
#[derive(Debug, Clone, Copy)]
pub enum Rows {
    Whole(Var),
    Split { prompt: Var, tokens: Var },
}

impl Rows {
    /// The whole `(B, T', C)`.
    pub fn join<B: Backend>(self, cx: &mut Ctx<'_, B>) -> Result<Var> {
        match self {
            Self::Whole(h) => Ok(h),
            Self::Split { prompt, tokens } => cx.tape.concat_seq(prompt, tokens),
        }
    }

    /// The input embeddings: `tokens (B, T, C)` with `prompt (B, P, C)` prepended, then
    /// `per_position(cx, h, span)` — the family's position embeddings, layer norm and the
    /// like, for the positions `span = (start, len)` of the whole length, or all of them
    /// (`None`). The parts stay apart when nothing in `frozen` (what `per_position` reads
    /// besides `h`, and the token rows) needs a gradient.
    pub fn embed<B: Backend>(
        cx: &mut Ctx<'_, B>,
        tokens: Var,
        prompt: Option<Var>,
        frozen: &[Var],
        mut per_position: impl FnMut(&mut Ctx<'_, B>, Var, Option<(usize, usize)>) -> Result<Var>,
    ) -> Result<Rows> {
        let Some(p) = prompt else {
            return per_position(cx, tokens, None).map(Rows::Whole);
        };
        if cx.tape.needs_grad(tokens) || frozen.iter().any(|&v| cx.tape.needs_grad(v)) {
            let h = cx.tape.concat_seq(p, tokens)?; // (B, P+T, C)
            return per_position(cx, h, None).map(Rows::Whole);
        }
        let (p_len, t_len) = (
            cx.tape.shape(p)?.dims()[1],
            cx.tape.shape(tokens)?.dims()[1],
        );
        Ok(Rows::Split {
            prompt: per_position(cx, p, Some((0, p_len)))?,
            tokens: per_position(cx, tokens, Some((p_len, t_len)))?,
        })
    }

    /// A layer's attention inputs: the query, key and value projections and the residual.
    /// Split rows are projected part by part and joined (input gradients for the prompt's
    /// rows only); in the last layer of a first-position forward, the queries and residual
    /// are position 0's where `first` says so.
    pub fn attention_inputs<B: Backend>(
        self,
        cx: &mut Ctx<'_, B>,
        first: FirstOnly,
        [query, key, value]: [&Linear; 3],
    ) -> Result<[Var; 4]> {
        match self {
            Rows::Split { prompt, tokens } if !first.active => {
                let mut proj = |lin: &Linear| -> Result<Var> {
                    let a = lin.forward(cx, prompt)?;
                    let b = lin.forward(cx, tokens)?;
                    cx.tape.concat_seq(a, b)
                };
                let (q, k, v) = (proj(query)?, proj(key)?, proj(value)?);
                Ok([q, k, v, cx.tape.concat_seq(prompt, tokens)?])
            }
            _ => {
                let h = self.join(cx)?;
                // Keys and values cover every position; with a query subset the queries
                // (and from there on everything) are position 0's only.
                let hq = first.queries(cx, h)?;
                let q = query.forward(cx, hq)?;
                let k = key.forward(cx, h)?;
                let v = value.forward(cx, h)?;
                Ok([q, k, v, hq])
            }
        }
    }
}

/// Whether a layer computes position 0 only (the last layer of a first-position forward),
/// and how: with its queries cut before attention (`query_subset`, where the backend's
/// attention takes fewer queries than keys), or its attention output cut after.
#[derive(Debug, Clone, Copy)]
pub struct FirstOnly {
    pub active: bool,
    pub query_subset: bool,
}

impl FirstOnly {
    /// For layer `l` of `layers`, when the forward reads the first position only.
    pub fn at<B: Backend>(cx: &Ctx<'_, B>, first_only: bool, l: usize, layers: usize) -> Self {
        FirstOnly {
            active: first_only && l + 1 == layers,
            query_subset: cx.tape.backend().attention_query_subset(),
        }
    }

    /// The rows the query projection reads.
    pub fn queries<B: Backend>(self, cx: &mut Ctx<'_, B>, h: Var) -> Result<Var> {
        if self.active && self.query_subset {
            cx.tape.slice_seq(h, 0, 1)
        } else {
            Ok(h)
        }
    }

    /// The attention output and the residual, cut to position 0 where the queries were
    /// not: from here on every op is per position.
    pub fn after_attention<B: Backend>(
        self,
        cx: &mut Ctx<'_, B>,
        attention: Var,
        residual: Var,
    ) -> Result<(Var, Var)> {
        if self.active && !self.query_subset {
            Ok((
                cx.tape.slice_seq(attention, 0, 1)?,
                cx.tape.slice_seq(residual, 0, 1)?,
            ))
        } else {
            Ok((attention, residual))
        }
    }

    /// The first position of a whole `(B, T', C)` (a model without layers).
    pub fn first<B: Backend>(cx: &mut Ctx<'_, B>, h: Var) -> Result<Var> {
        cx.tape.slice_seq(h, 0, 1)
    }
}
