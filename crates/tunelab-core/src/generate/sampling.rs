//! Picking the next token from a logits row, as transformers' `generate` does: the
//! repetition penalty first (on the logits of every token already in the text), then, when
//! sampling, temperature, top-k and top-p, and a draw from what is left. A temperature of 0
//! is greedy decoding (the likeliest token, after the penalty).

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// Logits are divided by it before sampling; 0 picks the likeliest token (greedy).
    pub temperature: f32,
    /// Sample among the `top_k` likeliest tokens only; 0 keeps them all.
    pub top_k: usize,
    /// Sample among the fewest likeliest tokens whose probabilities sum to at least `top_p`
    /// (nucleus sampling); 1 keeps them all.
    pub top_p: f32,
    /// transformers' `repetition_penalty`: a token already in the text has its logit divided
    /// by it (multiplied where negative); 1 leaves logits alone.
    pub repetition_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

/// A sampling setting outside its range, named as the CLI and the web form name it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} must be {expected}, got {got}")]
pub struct SamplingError {
    pub field: &'static str,
    pub expected: &'static str,
    pub got: String,
}

impl Sampling {
    /// Whether the next token is drawn at random (otherwise the likeliest is taken).
    pub fn samples(&self) -> bool {
        self.temperature > 0.0
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |field, expected, got: f32| {
            Err(SamplingError {
                field,
                expected,
                got: got.to_string(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "a number ≥ 0 (0: greedy)", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "in (0, 1]", self.top_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                "a number > 0 (1: none)",
                self.repetition_penalty,
            );
        }
        Ok(())
    }

    /// The next token from `logits` (one row; it is changed), given the ids of the text so
    /// far (`history`, for the repetition penalty). Only the first `vocab` logits count (a
    /// checkpoint's embedding table may be padded past its tokenizer).
    pub fn pick(&self, logits: &mut [f32], vocab: usize, history: &[u32], rng: &mut Rng) -> u32 {
        let n = vocab.min(logits.len());
        if n == 0 {
            return 0;
        }
        let logits = &mut logits[..n];
        if self.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &id in history {
                if let Some(s) = seen.get_mut(id as usize) {
                    *s = true;
                }
            }
            for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
                *l = if *l < 0.0 {
                    *l * self.repetition_penalty
                } else {
                    *l / self.repetition_penalty
                };
            }
        }
        if !self.samples() {
            return argmax(logits) as u32;
        }
        // Candidates, likeliest first (ties by id, so the order is deterministic).
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let max = logits[order[0]];
        let mut p: Vec<f64> = order
            .iter()
            .map(|&i| f64::from((logits[i] - max) / self.temperature).exp())
            .collect();
        let total: f64 = p.iter().sum();
        for v in &mut p {
            *v /= total;
        }
        if self.top_p < 1.0 {
            // The smallest prefix whose mass reaches top_p (at least one token).
            let mut mass = 0.0;
            let mut keep = p.len();
            for (n, v) in p.iter().enumerate() {
                mass += v;
                if mass >= f64::from(self.top_p) {
                    keep = n + 1;
                    break;
                }
            }
            p.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = p.iter().sum();
        let mut u = f64::from(rng.uniform()) * total;
        for (v, &i) in p.iter().zip(&order) {
            if u < *v {
                return i as u32;
            }
            u -= v;
        }
        order[order.len() - 1] as u32
    }
}

/// The first index of the largest value.
pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: usize, top_p: f32) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
        }
    }

    #[test]
    fn greedy_takes_the_likeliest_token_after_the_repetition_penalty() {
        let mut rng = Rng::new(1);
        let greedy = Sampling::default();
        assert_eq!(greedy.pick(&mut [0.1, 2.0, 1.9, -3.0], 4, &[], &mut rng), 1);
        // transformers' penalty: 2.0 / 1.5 = 1.33 < 1.9, so token 2 wins; a negative logit
        // is multiplied (-3 * 1.5).
        let p = Sampling {
            repetition_penalty: 1.5,
            ..Sampling::default()
        };
        let mut row = [0.1, 2.0, 1.9, -3.0];
        assert_eq!(p.pick(&mut row, 4, &[1, 3, 3], &mut rng), 2);
        assert_eq!(row, [0.1, 2.0 / 1.5, 1.9, -4.5]);
        // Only the tokenizer's vocabulary counts.
        assert_eq!(greedy.pick(&mut [0.0, 1.0, 9.0], 2, &[], &mut rng), 1);
    }

    #[test]
    fn top_k_1_and_a_tiny_top_p_are_greedy_at_any_temperature() {
        let row = [0.3, -1.0, 0.2, 0.25, 0.0];
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            assert_eq!(
                sampling(5.0, 1, 1.0).pick(&mut row.clone(), 5, &[], &mut rng),
                0
            );
            assert_eq!(
                sampling(5.0, 0, 1e-6).pick(&mut row.clone(), 5, &[], &mut rng),
                0
            );
        }
    }

    /// Frequencies over many draws against the probabilities computed here from the
    /// definition: softmax(l / T) over the kept tokens, renormalised.
    fn frequencies(s: Sampling, row: &[f32], draws: usize) -> Vec<f64> {
        let mut rng = Rng::new(7);
        let mut counts = vec![0usize; row.len()];
        for _ in 0..draws {
            counts[s.pick(&mut row.to_vec(), row.len(), &[], &mut rng) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn sampling_follows_temperature_top_k_and_top_p() {
        let row = [1.0f32, 0.0, 2.0, -1.0];
        let softmax = |l: &[f32], t: f32, keep: &[usize]| -> Vec<f64> {
            let e: Vec<f64> = (0..l.len())
                .map(|i| {
                    if keep.contains(&i) {
                        (f64::from(l[i]) / f64::from(t)).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        let cases = [
            (sampling(1.0, 0, 1.0), softmax(&row, 1.0, &[0, 1, 2, 3])),
            (sampling(0.5, 0, 1.0), softmax(&row, 0.5, &[0, 1, 2, 3])),
            (sampling(2.0, 2, 1.0), softmax(&row, 2.0, &[2, 0])),
            // At T = 1 the likeliest holds 0.64 of the mass and the two likeliest 0.88: top_p
            // 0.8 keeps those two, renormalised.
            (sampling(1.0, 0, 0.8), softmax(&row, 1.0, &[2, 0])),
        ];
        for (s, want) in cases {
            let got = frequencies(s, &row, 20_000);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 0.015, "{s:?}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let s = sampling(1.0, 0, 1.0);
        let row = [0.5f32, 0.4, 0.3, 0.2, 0.1];
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..40)
                .map(|_| s.pick(&mut row.to_vec(), 5, &[], &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let e = Sampling {
            top_p: 0.0,
            ..Sampling::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.to_string(), "top_p must be in (0, 1], got 0");
        let e = Sampling {
            temperature: f32::NAN,
            ..Sampling::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("temperature must be"), "{e}");
        assert!(
            Sampling {
                repetition_penalty: 0.0,
                ..Sampling::default()
            }
            .validate()
            .is_err()
        );
        assert!(Sampling::default().validate().is_ok());
    }
}
