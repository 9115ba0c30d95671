//! Learning-rate schedules with warmup, as multipliers of the base rate. `factor(step)` is
//! the multiplier for optimiser step `step` (0-based), matching transformers'
//! `get_*_schedule_with_warmup` lambdas.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warmup, then linear decay to 0 at `total`.
    Linear { warmup: u32, total: u32 },
    /// Linear warmup, then half a cosine to 0 at `total`.
    Cosine { warmup: u32, total: u32 },
    /// Linear warmup, then constant.
    Constant { warmup: u32 },
}

impl Schedule {
    pub fn factor(&self, step: u32) -> f64 {
        let warm = |w: u32| (w > 0 && step < w).then(|| f64::from(step) / f64::from(w));
        match *self {
            Self::Linear { warmup, total } => warm(warmup).unwrap_or_else(|| {
                (f64::from(total.saturating_sub(step))
                    / f64::from(total.saturating_sub(warmup).max(1)))
                .max(0.0)
            }),
            Self::Cosine { warmup, total } => warm(warmup).unwrap_or_else(|| {
                let progress =
                    f64::from(step - warmup) / f64::from(total.saturating_sub(warmup).max(1));
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }),
            Self::Constant { warmup } => warm(warmup).unwrap_or(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn linear_warmup_then_decay_like_transformers() {
        let s = Schedule::Linear {
            warmup: 3,
            total: 10,
        };
        let f: Vec<f64> = (0..11).map(|i| s.factor(i)).collect();
        let want = [
            0.0,
            1.0 / 3.0,
            2.0 / 3.0,
            1.0,
            6.0 / 7.0,
            5.0 / 7.0,
            4.0 / 7.0,
            3.0 / 7.0,
            2.0 / 7.0,
            1.0 / 7.0,
            0.0,
        ];
        for (a, b) in f.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{f:?}");
        }
    }

    #[test]
    fn cosine_and_constant() {
        let c = Schedule::Cosine {
            warmup: 2,
            total: 6,
        };
        assert_eq!(c.factor(1), 0.5);
        assert!((c.factor(2) - 1.0).abs() < 1e-12);
        assert!((c.factor(4) - 0.5).abs() < 1e-12);
        assert!(c.factor(6).abs() < 1e-12);
        let k = Schedule::Constant { warmup: 0 };
        assert_eq!(k.factor(0), 1.0);
        assert_eq!(k.factor(99), 1.0);
    }
}
