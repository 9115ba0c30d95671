//! Evaluation metrics that accumulate batch by batch (no logits are kept).
//!
//! - classification: accuracy, macro-F1, per-class precision/recall/F1 and the confusion
//!   matrix (scikit-learn's definitions, 0 where a denominator is 0);
//! - token classification: entity-level precision/recall/F1 with seqeval's default (IOB2,
//!   non-strict) chunking, overall (micro) and per entity type, plus token accuracy;
//! - masked LM: mean loss per masked token and perplexity.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Precision, recall, F1 and support of one class or entity type.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Prf {
    fn from_counts(tp: u64, predicted: u64, actual: u64) -> Self {
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, actual);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Self {
            precision,
            recall,
            f1,
            support: actual,
        }
    }
}

/// A streaming confusion matrix (`counts[gold][pred]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(labels: Vec<String>) -> Self {
        let k = labels.len();
        Self {
            labels,
            counts: vec![vec![0; k]; k],
        }
    }

    pub fn add(&mut self, gold: usize, pred: usize) {
        self.counts[gold][pred] += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: u64 = (0..self.labels.len()).map(|i| self.counts[i][i]).sum();
        ratio(right, self.total())
    }

    pub fn per_class(&self) -> Vec<Prf> {
        let k = self.labels.len();
        (0..k)
            .map(|c| {
                let tp = self.counts[c][c];
                let predicted: u64 = (0..k).map(|g| self.counts[g][c]).sum();
                let actual: u64 = self.counts[c].iter().sum();
                Prf::from_counts(tp, predicted, actual)
            })
            .collect()
    }

    pub fn macro_f1(&self) -> f64 {
        let per = self.per_class();
        if per.is_empty() {
            return 0.0;
        }
        per.iter().map(|p| p.f1).sum::<f64>() / per.len() as f64
    }
}

/// An entity: type and inclusive token span.
pub type Entity = (String, usize, usize);

fn split_tag(tag: &str) -> (char, &str) {
    if tag == "O" {
        return ('O', "_");
    }
    let mut chars = tag.chars();
    let prefix = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    let ty = rest.strip_prefix('-').unwrap_or(rest);
    (prefix, if ty.is_empty() { "_" } else { ty })
}

fn end_of_chunk(prev: char, tag: char, prev_ty: &str, ty: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_ty != ty)
}

fn start_of_chunk(prev: char, tag: char, prev_ty: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_ty != ty)
}

/// The entities of one tag sequence, chunked as seqeval's default mode does (an `I-` after
/// `O` or after another type starts an entity).
pub fn entities(tags: &[&str]) -> Vec<Entity> {
    let mut out = Vec::new();
    let (mut prev, mut prev_ty) = ('O', "_");
    let mut begin = 0;
    for (i, t) in tags.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = split_tag(t);
        if end_of_chunk(prev, tag, prev_ty, ty) {
            out.push((prev_ty.to_string(), begin, i - 1));
        }
        if start_of_chunk(prev, tag, prev_ty, ty) {
            begin = i;
        }
        prev = tag;
        prev_ty = ty;
    }
    out
}

/// Streaming entity-level scores and token accuracy for token classification.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityScores {
    /// Per type: (true positives, predicted, actual).
    pub counts: BTreeMap<String, (u64, u64, u64)>,
    pub tokens_right: u64,
    pub tokens: u64,
}

impl EntityScores {
    /// Adds one sentence's gold and predicted tags (word level, same length).
    pub fn add(&mut self, gold: &[&str], pred: &[&str]) {
        self.tokens += gold.len() as u64;
        self.tokens_right += gold.iter().zip(pred).filter(|(g, p)| g == p).count() as u64;
        let g: BTreeSet<Entity> = entities(gold).into_iter().collect();
        let p: BTreeSet<Entity> = entities(pred).into_iter().collect();
        for e in &g {
            self.counts.entry(e.0.clone()).or_default().2 += 1;
        }
        for e in &p {
            let c = self.counts.entry(e.0.clone()).or_default();
            c.1 += 1;
            if g.contains(e) {
                c.0 += 1;
            }
        }
    }

    /// Micro-averaged over all entities (seqeval's `precision_score` etc.).
    pub fn overall(&self) -> Prf {
        let (tp, p, a) = self
            .counts
            .values()
            .fold((0, 0, 0), |acc, c| (acc.0 + c.0, acc.1 + c.1, acc.2 + c.2));
        Prf::from_counts(tp, p, a)
    }

    pub fn per_type(&self) -> BTreeMap<String, Prf> {
        self.counts
            .iter()
            .map(|(k, &(tp, p, a))| (k.clone(), Prf::from_counts(tp, p, a)))
            .collect()
    }

    pub fn token_accuracy(&self) -> f64 {
        ratio(self.tokens_right, self.tokens)
    }
}

/// Masked-LM loss per masked token, streamed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossMeter {
    pub sum: f64,
    pub tokens: u64,
}

impl LossMeter {
    pub fn add(&mut self, loss_sum: f64, tokens: u64) {
        self.sum += loss_sum;
        self.tokens += tokens;
    }

    pub fn mean(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            self.sum / self.tokens as f64
        }
    }

    pub fn perplexity(&self) -> f64 {
        self.mean().exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_matches_scikit_learn() {
        // sklearn 1.x: f1_score(average='macro') = 0.6222..., per-class P/R/F1 below.
        let gold = [0, 1, 2, 2, 1, 0, 2, 1];
        let pred = [0, 2, 2, 1, 1, 0, 0, 1];
        let mut c = Confusion::new(vec!["a".into(), "b".into(), "c".into()]);
        for (g, p) in gold.iter().zip(pred) {
            c.add(*g, p);
        }
        assert!((c.accuracy() - 5.0 / 8.0).abs() < 1e-12);
        assert!((c.macro_f1() - 0.622_222_222_222_222_2).abs() < 1e-12);
        let per = c.per_class();
        let want = [
            (2.0 / 3.0, 1.0, 0.8, 2),
            (2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 3),
            (0.5, 1.0 / 3.0, 0.4, 3),
        ];
        for (p, w) in per.iter().zip(want) {
            assert!((p.precision - w.0).abs() < 1e-12, "{per:?}");
            assert!((p.recall - w.1).abs() < 1e-12, "{per:?}");
            assert!((p.f1 - w.2).abs() < 1e-12, "{per:?}");
            assert_eq!(p.support, w.3);
        }
        assert_eq!(c.counts[2], vec![1, 1, 1]);
    }

    #[test]
    fn entities_match_seqeval() {
        // seqeval 1.2.2 get_entities / classification_report on the same sequences.
        let gold = [
            vec!["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"],
            vec!["O", "I-MISC", "I-MISC", "O", "B-PER", "B-PER"],
        ];
        let pred = [
            vec!["B-PER", "I-PER", "O", "B-LOC", "O", "O", "I-ORG"],
            vec!["O", "B-MISC", "I-MISC", "O", "B-PER", "I-PER"],
        ];
        assert_eq!(
            entities(&gold[1]),
            vec![
                ("MISC".to_string(), 1, 2),
                ("PER".to_string(), 4, 4),
                ("PER".to_string(), 5, 5)
            ]
        );
        assert_eq!(
            entities(&pred[0]),
            vec![
                ("PER".to_string(), 0, 1),
                ("LOC".to_string(), 3, 3),
                ("ORG".to_string(), 6, 6)
            ]
        );
        let mut s = EntityScores::default();
        for (g, p) in gold.iter().zip(&pred) {
            s.add(g, p);
        }
        let o = s.overall();
        assert!((o.precision - 0.6).abs() < 1e-12);
        assert!((o.recall - 0.5).abs() < 1e-12);
        assert!((o.f1 - 0.545_454_545_454_545_4).abs() < 1e-12);
        let per = s.per_type();
        assert!((per["PER"].precision - 0.5).abs() < 1e-12);
        assert!((per["PER"].recall - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(per["LOC"].f1, 0.0);
        assert_eq!(per["MISC"].f1, 1.0);
        assert!((s.token_accuracy() - 9.0 / 13.0).abs() < 1e-12);
    }

    #[test]
    fn perplexity_is_exp_mean_loss() {
        let mut m = LossMeter::default();
        m.add(6.0, 3);
        m.add(2.0, 1);
        assert_eq!(m.mean(), 2.0);
        assert!((m.perplexity() - 2f64.exp()).abs() < 1e-12);
        assert!(LossMeter::default().mean().is_nan());
    }
}
