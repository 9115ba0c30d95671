//! Full fine-tuning: every parameter trains. The baseline the other methods are measured
//! against.

use super::{Applied, Count, ExportKind, PeftError, PeftMethod, Shapes, Target};
use crate::backend::Backend;
use serde::{Deserialize, Serialize};

/// Full fine-tuning has no options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Full {}

impl PeftMethod for Full {
    const NAME: &'static str = "full";
    const TITLE: &'static str = "Full fine-tuning";
    const SUMMARY: &'static str = "every weight trains (the baseline)";
    const HELP: &'static str = "Trains every weight. Usually the most accurate and the most expensive: the baseline the others are measured against.";
    const LR: f64 = 5e-5;
    const EXPORT: ExportKind = ExportKind::Model;

    fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
        let ids: Vec<_> = t.store.iter().map(|(id, _)| id).collect();
        for id in ids {
            t.store.set_trainable(id, true);
        }
        Ok(Applied::default())
    }

    fn count(&self, m: &Shapes) -> Result<Count, PeftError> {
        Ok(Count {
            unfrozen: m.params.iter().map(|(_, s)| s.numel()).sum(),
            added: 0,
        })
    }
}
