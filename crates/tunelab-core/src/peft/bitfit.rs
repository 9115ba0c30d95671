//! BitFit (Ben Zaken et al., 2022): only the bias terms train — of linear layers and layer
//! norms — plus the head. No Hugging Face PEFT type exists; adapters are saved as
//! safetensors with a manifest.

use super::{Applied, PeftError, Target};
use crate::backend::Backend;

pub fn apply<B: Backend>(t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
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
