//! Optimizers. They update the whole [`ParamStore`] in one backend call.

use crate::backend::{Backend, SgdStep, View, ViewMut};
use crate::error::{Error, Result};
use crate::model::ParamStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl SgdConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        if !(ok(self.lr) && self.lr > 0.0) {
            return Err(Error::config("--lr", format!("must be a positive number, got {}", self.lr)));
        }
        if !(ok(self.momentum) && self.momentum < 1.0) {
            return Err(Error::config("--momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        if !ok(self.weight_decay) {
            return Err(Error::config("--weight-decay", format!("must be >= 0, got {}", self.weight_decay)));
        }
        Ok(())
    }
}

/// SGD with momentum and weight decay (PyTorch semantics); the velocity
/// buffer has the parameter store's layout.
pub struct Sgd<B: Backend> {
    pub config: SgdConfig,
    velocity: B::Buf<f32>,
}

impl<B: Backend> Sgd<B> {
    pub fn new(backend: &B, config: SgdConfig, params: &ParamStore<B>) -> Result<Self> {
        config.validate()?;
        Ok(Sgd { config, velocity: backend.alloc(params.len())? })
    }

    pub fn step(&mut self, backend: &B, params: &mut ParamStore<B>) -> Result<()> {
        let step = SgdStep { lr: self.config.lr, momentum: self.config.momentum, weight_decay: self.config.weight_decay };
        backend.sgd_step(&step, ViewMut::all(&mut params.data), View::all(&params.grads), ViewMut::all(&mut self.velocity))
    }
}
