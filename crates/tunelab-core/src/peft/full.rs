//! Full fine-tuning: every parameter trains. The baseline the other methods are measured
//! against.

use super::{Applied, PeftError, Target};
use crate::backend::Backend;

pub fn apply<B: Backend>(t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
    let ids: Vec<_> = t.store.iter().map(|(id, _)| id).collect();
    for id in ids {
        t.store.set_trainable(id, true);
    }
    Ok(Applied::default())
}
