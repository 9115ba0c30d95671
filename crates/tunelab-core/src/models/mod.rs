//! Model architectures, each built from the shared [`nn`](crate::nn) layers.

pub mod bert;
pub mod heads;
pub mod task_model;
