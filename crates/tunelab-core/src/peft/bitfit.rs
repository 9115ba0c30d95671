//! BitFit (Ben Zaken et al., 2022): only the bias terms train — of linear layers and layer
//! norms — plus the head. No Hugging Face PEFT type exists; the export is the changed
//! tensors as safetensors under Hugging Face names.

use super::{Applied, Count, ExportKind, PeftError, PeftMethod, Shapes, Target};
use crate::backend::Backend;
use serde::{Deserialize, Serialize};

/// BitFit has no options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bitfit {}

impl PeftMethod for Bitfit {
    const NAME: &'static str = "bitfit";
    const TITLE: &'static str = "BitFit";
    const SUMMARY: &'static str = "only the bias vectors and the head train";
    const HELP: &'static str = "Trains only the bias terms — the small offsets added after each layer — plus the new output layer. The tiniest change that still helps.";
    const LR: f64 = 1e-3;
    const EXPORT: ExportKind = ExportKind::Tensors {
        file: crate::export::BITFIT_WEIGHTS,
    };

    fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
        let ids: Vec<_> = t
            .store
            .iter()
            .filter(|(_, p)| p.name.ends_with(".bias"))
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            t.store.set_trainable(id, true);
        }
        Ok(Applied::default())
    }

    fn count(&self, m: &Shapes) -> Result<Count, PeftError> {
        Ok(Count {
            unfrozen: m
                .params
                .iter()
                .filter(|(n, _)| n.ends_with(".bias"))
                .map(|(_, s)| s.numel())
                .sum(),
            added: 0,
        })
    }
}
