//! Model architectures, each built from the shared [`nn`](crate::nn) layers and registered
//! once below; the rest of Tunelab reads them through [`ModelConfig`] ([`arch`]).

pub mod arch;
pub mod bert;
pub mod gpt2;
pub mod heads;
pub mod kv_cache;
pub mod rows;
pub mod task_model;

pub use arch::{Architecture, Dims, Specs};

use crate::params::ParamId;

use crate::safetensors_io::{HostTensor, LoadError};
use arch::{model_type_of, one_of};
use heads::Task;
use std::collections::BTreeMap;

/// The inputs of one batch, already on the device.
#[derive(Debug, Clone)]
pub struct EncoderInput<T> {
    /// `(B, T)` u32 token ids.
    pub ids: T,
    /// `(B, T')` u32 token type ids, `T' = T + prompt length`.
    pub token_types: T,
    /// `(B, T')` u32 position ids.
    pub positions: T,
    /// `(B, T')` f32, 1 for tokens and 0 for padding.
    pub mask: T,
    /// `(B,)` u32: each row's last real position, as an index into the `(B T', C)` hidden
    /// states (heads that read the last token: GPT-2's sequence classifier).
    pub last_rows: T,
}

arch::architectures! {
    Bert => bert::BertConfig,
    Gpt2 => gpt2::Gpt2Config,
}
