//! Named parameters and which of them train.
//!
//! A [`ParamStore`] owns every weight of a model under its Hugging Face name
//! (`encoder.layer.0.attention.self.query.weight`). PEFT methods decide which entries are
//! trainable and add their own (`...query.lora_A.weight`). Each step, [`ParamStore::bind`] puts
//! every parameter on the tape as a leaf; the tape then records work only for those that train.

use crate::backend::{Backend, Result};
use crate::tape::{Tape, Var};
use std::collections::HashMap;

/// Index of a parameter in its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

#[derive(Debug, Clone)]
pub struct Param<T> {
    pub name: String,
    pub value: T,
    pub trainable: bool,
}

/// Every parameter of a model, in insertion order.
#[derive(Debug, Clone)]
pub struct ParamStore<B: Backend> {
    params: Vec<Param<B::Tensor>>,
    by_name: HashMap<String, ParamId>,
}

/// A store's parameters as leaves on one tape.
#[derive(Debug, Clone)]
pub struct Bound(Vec<Var>);

impl Bound {
    pub fn var(&self, id: ParamId) -> Var {
        self.0[id.0]
    }
}

impl<B: Backend> Default for ParamStore<B> {
    fn default() -> Self {
        Self {
            params: Vec::new(),
            by_name: HashMap::new(),
        }
    }
}

/// Errors of the parameter store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter `{0}` is defined twice")]
    Duplicate(String),
    #[error("no parameter named `{0}`")]
    Unknown(String),
}

impl<B: Backend> ParamStore<B> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter; names are unique.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: B::Tensor,
        trainable: bool,
    ) -> std::result::Result<ParamId, ParamError> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(ParamError::Duplicate(name));
        }
        let id = ParamId(self.params.len());
        self.by_name.insert(name.clone(), id);
        self.params.push(Param {
            name,
            value,
            trainable,
        });
        Ok(id)
    }

    pub fn id(&self, name: &str) -> std::result::Result<ParamId, ParamError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ParamError::Unknown(name.to_string()))
    }

    pub fn get(&self, id: ParamId) -> &Param<B::Tensor> {
        &self.params[id.0]
    }

    pub fn set_value(&mut self, id: ParamId, value: B::Tensor) {
        self.params[id.0].value = value;
    }

    pub fn set_trainable(&mut self, id: ParamId, trainable: bool) {
        self.params[id.0].trainable = trainable;
    }

    /// Freezes everything (PEFT methods then unfreeze what they train).
    pub fn freeze_all(&mut self) {
        for p in &mut self.params {
            p.trainable = false;
        }
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param<B::Tensor>)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }

    /// Ids of the trainable parameters, in order.
    pub fn trainable(&self) -> Vec<ParamId> {
        self.iter()
            .filter(|(_, p)| p.trainable)
            .map(|(id, _)| id)
            .collect()
    }

    /// `(trainable, total)` element counts.
    pub fn counts(&self, backend: &B) -> (usize, usize) {
        self.params.iter().fold((0, 0), |(t, all), p| {
            let n = backend.shape(&p.value).numel();
            (t + if p.trainable { n } else { 0 }, all + n)
        })
    }

    /// Every parameter as a leaf on `tape`.
    pub fn bind(&self, tape: &mut Tape<B>) -> Bound {
        Bound(
            self.params
                .iter()
                .map(|p| tape.leaf(p.value.clone(), p.trainable))
                .collect(),
        )
    }

    /// Every parameter as a constant leaf: nothing is recorded for backward (evaluation).
    pub fn bind_frozen(&self, tape: &mut Tape<B>) -> Bound {
        Bound(
            self.params
                .iter()
                .map(|p| tape.leaf(p.value.clone(), false))
                .collect(),
        )
    }

    /// Gradients of the trainable parameters after `tape.backward`, in the order of
    /// [`ParamStore::trainable`]. A trainable parameter the loss does not reach gets `None`.
    pub fn grads(&self, tape: &mut Tape<B>, bound: &Bound) -> Vec<(ParamId, Option<B::Tensor>)> {
        self.trainable()
            .into_iter()
            .map(|id| (id, tape.take_grad(bound.var(id))))
            .collect()
    }

    /// Sum of squares of all given gradients as a `(1,)` tensor (on the device).
    pub fn grad_sq_norm(backend: &B, grads: &[&B::Tensor]) -> Result<Option<B::Tensor>> {
        backend.sum_squares_many(grads)
    }
}
