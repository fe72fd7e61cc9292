//! Lookahead averaging of the weights (airbench's `LookaheadState`): every
//! `every` steps an average of the model's state is pulled towards the current
//! weights and the weights are reset to it; the average's decay ramps up over
//! training, and the last step makes the weights the average.
//!
//! The state averaged is every float the model keeps: the parameters and the
//! BatchNorm running statistics, as `lerp_` over PyTorch's `state_dict`.

use crate::backend::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::Storage;
use serde::{Deserialize, Serialize};

/// When and how strongly the weights are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LookaheadConfig {
    /// Steps between updates.
    pub every: usize,
    /// The decay reached at the end of training; at step t of T it is `decay * (t / T)^power`.
    pub decay: f32,
    pub power: f32,
}

impl Default for LookaheadConfig {
    /// airbench94's: every 5 steps, decay 0.95^5 ramped up cubically.
    fn default() -> Self {
        LookaheadConfig { every: 5, decay: 0.95f32.powi(5), power: 3.0 }
    }
}

impl LookaheadConfig {
    pub fn validate(&self) -> Result<()> {
        if self.every == 0 || !(0.0..1.0).contains(&self.decay) || !(self.power.is_finite() && self.power >= 0.0) {
            return Err(Error::config("lookahead", format!("needs every >= 1, decay in [0, 1) and power >= 0, got {self:?}")));
        }
        Ok(())
    }

    /// The decay of an update after `step` of `total` steps.
    pub fn decay_at(&self, step: usize, total: usize) -> f32 {
        self.decay * (step as f32 / total.max(1) as f32).powf(self.power)
    }
}

/// The averaged copy of a model's state, on the device.
pub struct Lookahead<B: Backend> {
    pub config: LookaheadConfig,
    /// One buffer per averaged tensor group of the model (see [`Model::averaged_state`]).
    average: Vec<B::Buf<f32>>,
}

impl<B: Backend> Lookahead<B> {
    /// Starts the average at the model's current state.
    pub fn new(backend: &B, config: LookaheadConfig, model: &mut Model<B>) -> Result<Self> {
        config.validate()?;
        let mut average = Vec::new();
        for target in model.averaged_state() {
            let mut buf = backend.alloc(target.len)?;
            backend.copy(target.as_view(), ViewMut::all(&mut buf))?;
            average.push(buf);
        }
        Ok(Lookahead { config, average })
    }

    /// After step `step` (1-based) of `total`: updates when it is due, and at the
    /// last step makes the weights the average (decay 1: the last `every - 1`
    /// steps' changes are dropped, as airbench does).
    pub fn after_step(&mut self, backend: &B, model: &mut Model<B>, step: usize, total: usize) -> Result<()> {
        if step >= total {
            self.update(backend, model, 1.0)
        } else if step.is_multiple_of(self.config.every) {
            self.update(backend, model, self.config.decay_at(step, total))
        } else {
            Ok(())
        }
    }

    /// average = decay * average + (1 - decay) * state; state = average.
    pub fn update(&mut self, backend: &B, model: &mut Model<B>, decay: f32) -> Result<()> {
        for (average, mut target) in self.average.iter_mut().zip(model.averaged_state()) {
            backend.axpby(1.0 - decay, target.as_view(), decay, ViewMut::all(average))?;
            backend.copy(View::all(average), target.reborrow())?;
        }
        Ok(())
    }

    /// The average, flattened (for a checkpoint).
    pub fn state(&self, backend: &B) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for buf in &self.average {
            out.extend(backend.download(View::all(buf))?);
        }
        Ok(out)
    }

    pub fn state_len(&self) -> usize {
        self.average.iter().map(|b| b.len()).sum()
    }

    /// Restores what [`Lookahead::state`] saved.
    pub fn restore(&mut self, backend: &B, state: &[f32]) -> Result<()> {
        crate::error::check_len("lookahead restore", "state", self.state_len(), state.len())?;
        let mut rest = state;
        for buf in &mut self.average {
            let (head, tail) = rest.split_at(buf.len());
            backend.write(ViewMut::all(buf), head)?;
            rest = tail;
        }
        Ok(())
    }
}
