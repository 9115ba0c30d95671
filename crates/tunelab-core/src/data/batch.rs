//! Examples → token features → padded micro-batches (dynamic padding, deterministic order,
//! masked-LM masking).

use super::{DataError, Example, Labels};
use crate::backend::IGNORE_INDEX;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

/// What the labels of a feature mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// One class id per example.
    Sequence,
    /// One label per token ([`IGNORE_INDEX`] for specials and continuation sub-words).
    Token,
    /// Labels are made at batch time by masking.
    MaskedLm,
    /// Labels are the tokens themselves (the model shifts them: position `t` predicts
    /// token `t + 1`; see `TaskModel::targets`).
    CausalLm,
}

/// One tokenised example.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub ids: Vec<u32>,
    /// `[class]` for sequences, one per token for token tasks, empty for masked LM.
    pub labels: Vec<u32>,
    /// The line of the source file it came from (0 for masked-LM blocks).
    pub line: usize,
}

/// A tokenised split.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub kind: FeatureKind,
    pub items: Vec<Feature>,
    /// Number of tokens a masked-LM wrap adds around a block (never masked).
    pub special_lead: usize,
    pub special_tail: usize,
}

impl Features {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Total tokens (for tokens/s).
    pub fn tokens(&self) -> usize {
        self.items.iter().map(|f| f.ids.len()).sum()
    }
}

fn tok_err(file: &str, line: usize, e: impl std::fmt::Display) -> DataError {
    DataError::Row {
        file: file.into(),
        line,
        reason: e.to_string(),
    }
}

/// Tokenises `examples` (read from `file`) for `kind`. Class and tag names are mapped with
/// `labels`; a label it does not know is an error naming the line. Masked- and causal-LM text
/// is concatenated and cut into blocks of `max_len` tokens, specials included (run_mlm's and
/// run_clm's `group_texts`).
pub fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    kind: FeatureKind,
    labels: &Labels,
    max_len: usize,
    file: &str,
) -> Result<Features, DataError> {
    let mut items = Vec::with_capacity(examples.len());
    let (mut special_lead, mut special_tail) = (0, 0);
    match kind {
        FeatureKind::Sequence => {
            for e in examples {
                let Example::Text { line, text, label } = e else {
                    return Err(tok_err(
                        file,
                        e.line(),
                        "expected a text with a label, found pre-split tokens",
                    ));
                };
                let label = label.as_deref().ok_or_else(|| {
                    tok_err(
                        file,
                        *line,
                        "this example has no label (classification needs one)",
                    )
                })?;
                let class = labels.id(label, file, *line)?;
                let ids = tok
                    .encode_text(text, max_len)
                    .map_err(|e| tok_err(file, *line, e))?;
                items.push(Feature {
                    ids,
                    labels: vec![class],
                    line: *line,
                });
            }
        }
        FeatureKind::Token => {
            for e in examples {
                let Example::Tagged { line, words, tags } = e else {
                    return Err(tok_err(
                        file,
                        e.line(),
                        "expected tokens with tags (CoNLL, or JSONL `tokens`/`tags`), found a text",
                    ));
                };
                if tags.len() != words.len() {
                    return Err(tok_err(file, *line, "every token needs a tag"));
                }
                let tag_ids = tags
                    .iter()
                    .map(|t| labels.id(t, file, *line))
                    .collect::<Result<Vec<u32>, _>>()?;
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                let (ids, starts) = tok
                    .encode_tagged(&words, max_len)
                    .map_err(|e| tok_err(file, *line, e))?;
                let labels = starts
                    .iter()
                    .map(|&w| {
                        if w == IGNORE_INDEX {
                            IGNORE_INDEX
                        } else {
                            tag_ids[w as usize]
                        }
                    })
                    .collect();
                items.push(Feature {
                    ids,
                    labels,
                    line: *line,
                });
            }
        }
        FeatureKind::MaskedLm | FeatureKind::CausalLm => {
            let (lead, tail) = tok.special_wrap().map_err(|e| tok_err(file, 0, e))?;
            if max_len <= lead.len() + tail.len() {
                return Err(DataError::File {
                    file: file.into(),
                    reason: format!("max_len {max_len} leaves no room for text"),
                });
            }
            let block = max_len - lead.len() - tail.len();
            let mut stream = Vec::new();
            for e in examples {
                let text = match e {
                    Example::Text { text, .. } => text.clone(),
                    Example::Tagged { words, .. } => words.join(" "),
                };
                let line = e.line();
                stream.extend(
                    tok.encode_plain(&text)
                        .map_err(|err| tok_err(file, line, err))?,
                );
            }
            for chunk in stream.chunks(block) {
                let mut ids = lead.clone();
                ids.extend_from_slice(chunk);
                ids.extend_from_slice(&tail);
                items.push(Feature {
                    ids,
                    labels: Vec::new(),
                    line: 0,
                });
            }
            special_lead = lead.len();
            special_tail = tail.len();
        }
    }
    if items.is_empty() {
        return Err(DataError::File {
            file: file.into(),
            reason: "no examples to train or evaluate on".into(),
        });
    }
    Ok(Features {
        kind,
        items,
        special_lead,
        special_tail,
    })
}

/// The order examples are visited in during `epoch`: a Fisher–Yates shuffle seeded by
/// `(seed, epoch)`, so a run and its resumption see the same batches.
pub fn batch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5348_5546);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A padded micro-batch on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatch {
    /// `(B, T)` token ids.
    pub ids: Vec<u32>,
    /// `(B, T)`: 1 for tokens, 0 for padding.
    pub mask: Vec<f32>,
    /// `(B,)` class ids, or `(B, T)` token labels with [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Vec<u32>,
    pub batch: usize,
    pub len: usize,
    /// Positions that contribute to the loss.
    pub loss_tokens: usize,
}

impl MicroBatch {
    /// The rows cut into `parts` micro-batches of consecutive rows, as even as possible (fewer
    /// when there are fewer rows; none empty), each padded only to its own longest row. Their
    /// losses and gradients add up to this batch's (see
    /// [`step_accumulated`](crate::trainer::step::step_accumulated)): how a step runs its passes at
    /// once on several cores ([`Backend::concurrent_passes`](crate::Backend)).
    pub fn split(&self, parts: usize) -> Vec<MicroBatch> {
        let parts = parts.clamp(1, self.batch.max(1));
        if parts == 1 {
            return vec![self.clone()];
        }
        let per_row_labels = self.labels.len() == self.batch * self.len;
        let row_len = |r: usize| {
            self.mask[r * self.len..(r + 1) * self.len]
                .iter()
                .rposition(|&m| m > 0.0)
                .map_or(0, |i| i + 1)
        };
        let (base, extra) = (self.batch / parts, self.batch % parts);
        let mut start = 0;
        (0..parts)
            .map(|p| {
                let rows = start..start + base + usize::from(p < extra);
                start = rows.end;
                let len = rows
                    .clone()
                    .map(row_len)
                    .max()
                    .unwrap_or(0)
                    .max(1)
                    .min(self.len);
                let ids = cut_rows(&self.ids, rows.clone(), self.len, len);
                let mask = cut_rows(&self.mask, rows.clone(), self.len, len);
                let (labels, loss_tokens) = if per_row_labels {
                    let l = cut_rows(&self.labels, rows.clone(), self.len, len);
                    let n = l.iter().filter(|&&x| x != IGNORE_INDEX).count();
                    (l, n)
                } else {
                    (self.labels[rows.clone()].to_vec(), rows.len())
                };
                MicroBatch {
                    ids,
                    mask,
                    labels,
                    batch: rows.len(),
                    len,
                    loss_tokens,
                }
            })
            .collect()
    }
}

/// The first `len` values of each of `rows` of a row-major `(B, stride)` array.
fn cut_rows<T: Copy>(v: &[T], rows: std::ops::Range<usize>, stride: usize, len: usize) -> Vec<T> {
    rows.flat_map(|r| v[r * stride..r * stride + len].iter().copied())
        .collect()
}

/// Masked-LM masking: BERT's 15% / 80-10-10 recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Masking {
    pub probability: f32,
    pub mask_id: u32,
    pub vocab_size: u32,
}

/// Pads `features[rows]` to the longest row. For masked LM, `masking` chooses ~15% of the
/// non-special tokens (at least one per row): 80% become `[MASK]`, 10% a random token, 10%
/// stay; only chosen positions carry labels.
pub fn build_batch(
    features: &Features,
    rows: &[usize],
    pad_id: u32,
    masking: Option<(Masking, &mut Rng)>,
) -> MicroBatch {
    let len = rows
        .iter()
        .map(|&r| features.items[r].ids.len())
        .max()
        .unwrap_or(0);
    let batch = rows.len();
    let mut ids = Vec::with_capacity(batch * len);
    let mut mask = Vec::with_capacity(batch * len);
    let mut labels = Vec::with_capacity(batch * len);
    for &r in rows {
        let f = &features.items[r];
        let n = f.ids.len();
        ids.extend_from_slice(&f.ids);
        ids.extend(std::iter::repeat_n(pad_id, len - n));
        mask.extend(std::iter::repeat_n(1.0, n));
        mask.extend(std::iter::repeat_n(0.0, len - n));
        match features.kind {
            FeatureKind::Sequence => labels.push(f.labels[0]),
            FeatureKind::Token => {
                labels.extend_from_slice(&f.labels);
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, len - n));
            }
            FeatureKind::MaskedLm => labels.extend(std::iter::repeat_n(IGNORE_INDEX, len)),
            FeatureKind::CausalLm => {
                labels.extend_from_slice(&f.ids);
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, len - n));
            }
        }
    }
    if let (FeatureKind::MaskedLm, Some((m, rng))) = (features.kind, masking) {
        for (b, &r) in rows.iter().enumerate() {
            let n = features.items[r].ids.len();
            let (lo, hi) = (features.special_lead, n - features.special_tail);
            if hi <= lo {
                continue;
            }
            let mut chosen: Vec<usize> =
                (lo..hi).filter(|_| rng.uniform() < m.probability).collect();
            if chosen.is_empty() {
                chosen.push(lo + rng.below((hi - lo) as u64) as usize);
            }
            for t in chosen {
                let at = b * len + t;
                labels[at] = ids[at];
                let u = rng.uniform();
                if u < 0.8 {
                    ids[at] = m.mask_id;
                } else if u < 0.9 {
                    ids[at] = rng.below(u64::from(m.vocab_size)) as u32;
                }
            }
        }
    }
    let loss_tokens = match features.kind {
        FeatureKind::Sequence => batch,
        _ => labels.iter().filter(|&&l| l != IGNORE_INDEX).count(),
    };
    MicroBatch {
        ids,
        mask,
        labels,
        batch,
        len,
        loss_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(kind: FeatureKind, rows: Vec<Vec<u32>>) -> Features {
        Features {
            kind,
            items: rows
                .into_iter()
                .map(|ids| Feature {
                    labels: match kind {
                        FeatureKind::Sequence => vec![1],
                        FeatureKind::Token => ids.iter().map(|i| i % 3).collect(),
                        FeatureKind::MaskedLm | FeatureKind::CausalLm => vec![],
                    },
                    ids,
                    line: 1,
                })
                .collect(),
            special_lead: 1,
            special_tail: 1,
        }
    }

    #[test]
    fn order_is_a_permutation_fixed_by_seed_and_epoch() {
        let a = batch_order(100, 7, 0);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, batch_order(100, 7, 0));
        assert_ne!(a, batch_order(100, 7, 1));
        assert_ne!(a, batch_order(100, 8, 0));
    }

    /// Parts are consecutive rows (sizes differing by at most one, none empty), each padded
    /// to its own longest row, with their labels and loss tokens; their loss tokens add up.
    #[test]
    fn split_cuts_rows_and_trims_padding() {
        let rows = vec![
            vec![5, 6, 7, 8],
            vec![9],
            vec![10, 11],
            vec![12],
            vec![13, 14, 15],
        ];
        let f = features(FeatureKind::Token, rows.clone());
        let b = build_batch(&f, &[0, 1, 2, 3, 4], 0, None);
        let parts = b.split(2);
        assert_eq!(parts.len(), 2);
        let (p, q) = (&parts[0], &parts[1]);
        assert_eq!((p.batch, p.len, q.batch, q.len), (3, 4, 2, 3));
        assert_eq!(p.ids, &b.ids[..12]);
        assert_eq!(q.ids, vec![12, 0, 0, 13, 14, 15]);
        assert_eq!(q.mask, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(q.labels, vec![0, IGNORE_INDEX, IGNORE_INDEX, 1, 2, 0]);
        assert_eq!(p.loss_tokens + q.loss_tokens, b.loss_tokens);
        assert_eq!((p.loss_tokens, q.loss_tokens), (7, 4));

        let f = features(FeatureKind::Sequence, rows);
        let b = build_batch(&f, &[4, 3, 2, 1, 0], 0, None);
        let parts = b.split(3);
        let sizes: Vec<(usize, usize, usize)> = parts
            .iter()
            .map(|p| (p.batch, p.len, p.loss_tokens))
            .collect();
        assert_eq!(sizes, vec![(2, 3, 2), (2, 2, 2), (1, 4, 1)]);
        assert_eq!(parts[2].ids, vec![5, 6, 7, 8]);
        assert!(parts.iter().all(|p| p.labels == vec![1; p.batch]));
        // More parts than rows: one row each; one part: the batch as it is.
        assert_eq!(b.split(9).len(), 5);
        assert_eq!(b.split(1), vec![b.clone()]);
        assert_eq!(b.split(0), vec![b.clone()]);
    }

    #[test]
    fn dynamic_padding_and_token_labels() {
        let f = features(FeatureKind::Token, vec![vec![5, 6, 7], vec![8]]);
        let b = build_batch(&f, &[1, 0], 0, None);
        assert_eq!((b.batch, b.len), (2, 3));
        assert_eq!(b.ids, vec![8, 0, 0, 5, 6, 7]);
        assert_eq!(b.mask, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b.labels, vec![2, IGNORE_INDEX, IGNORE_INDEX, 2, 0, 1]);
        assert_eq!(b.loss_tokens, 4);
    }

    #[test]
    fn masking_follows_80_10_10_and_spares_specials() {
        let row: Vec<u32> = std::iter::once(101)
            .chain((0..2000).map(|i| 1000 + i % 500))
            .chain(std::iter::once(102))
            .collect();
        let f = features(FeatureKind::MaskedLm, vec![row.clone()]);
        let mut rng = Rng::new(3);
        let m = Masking {
            probability: 0.15,
            mask_id: 103,
            vocab_size: 30000,
        };
        let b = build_batch(&f, &[0], 0, Some((m, &mut rng)));
        let chosen: Vec<usize> = (0..row.len())
            .filter(|&t| b.labels[t] != IGNORE_INDEX)
            .collect();
        assert!(!chosen.contains(&0) && !chosen.contains(&(row.len() - 1)));
        let frac = chosen.len() as f64 / 2000.0;
        assert!((frac - 0.15).abs() < 0.03, "{frac}");
        let masked = chosen.iter().filter(|&&t| b.ids[t] == 103).count() as f64;
        let kept = chosen.iter().filter(|&&t| b.ids[t] == row[t]).count() as f64;
        let n = chosen.len() as f64;
        assert!((masked / n - 0.8).abs() < 0.06, "{}", masked / n);
        assert!((kept / n - 0.1).abs() < 0.05, "{}", kept / n);
        for &t in &chosen {
            assert_eq!(b.labels[t], row[t], "labels hold the original token");
        }
        assert_eq!(b.loss_tokens, chosen.len());
    }
}
