//! Model architectures, each built from the shared [`nn`](crate::nn) layers.

pub mod bert;
