//! Optimizers and learning-rate schedules. An optimizer updates the whole
//! [`ParamStore`] in one backend call; the per-step values (learning rate,
//! Adam's bias corrections) go to a small device buffer before each step, so a
//! recorded (graph-replayed) step stays valid when they change.

use crate::backend::{Backend, Hyper, UpdateRule, View, ViewMut};
use crate::error::{Error, Result};
use crate::model::ParamStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
}

impl OptimizerKind {
    /// What its state holds, for messages.
    pub fn state_name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "SGD momentum buffer",
            OptimizerKind::Adam => "Adam moment estimates",
            OptimizerKind::AdamW => "AdamW moment estimates",
        }
    }
}

/// Optimizer hyper-parameters (the ones that do not change during training).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl OptimizerConfig {
    pub fn sgd(lr: f32, momentum: f32, weight_decay: f32) -> Self {
        OptimizerConfig { kind: OptimizerKind::Sgd, lr, momentum, nesterov: false, weight_decay, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        if !(ok(self.lr) && self.lr > 0.0) {
            return Err(Error::config("--lr", format!("must be a positive number, got {}", self.lr)));
        }
        if !(ok(self.momentum) && self.momentum < 1.0) {
            return Err(Error::config("--momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        if self.nesterov && (self.kind != OptimizerKind::Sgd || self.momentum == 0.0) {
            return Err(Error::config("--nesterov", "needs --optimizer sgd and a momentum above 0"));
        }
        if !ok(self.weight_decay) {
            return Err(Error::config("--weight-decay", format!("must be >= 0, got {}", self.weight_decay)));
        }
        for (name, b) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            if !(ok(b) && b < 1.0) {
                return Err(Error::config(name, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(ok(self.eps) && self.eps > 0.0) {
            return Err(Error::config("--eps", format!("must be a positive number, got {}", self.eps)));
        }
        Ok(())
    }

    pub fn rule(&self) -> UpdateRule {
        match self.kind {
            OptimizerKind::Sgd => UpdateRule::Sgd { momentum: self.momentum, nesterov: self.nesterov, weight_decay: self.weight_decay },
            OptimizerKind::Adam | OptimizerKind::AdamW => UpdateRule::Adam {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
                decoupled: self.kind == OptimizerKind::AdamW,
            },
        }
    }
}

/// Learning rate over training, as a multiple of the base rate, with an
/// optional linear warm-up. `t` is the (fractional) epoch: 0 at the start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` at each epoch in `milestones` (1-based epoch numbers, as PyTorch's MultiStepLR).
    Step {
        milestones: Vec<usize>,
        gamma: f32,
    },
    /// Cosine from the base rate down to 0 at the end of training.
    Cosine,
    /// One cycle: up from base/25 to base over the first `pct_start` of training, then cosine down to base/1e4.
    OneCycle {
        pct_start: f32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub schedule: Schedule,
    /// Linear warm-up from 0 over this many epochs (0: none).
    pub warmup_epochs: f32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { schedule: Schedule::Constant, warmup_epochs: 0.0 }
    }
}

impl ScheduleConfig {
    /// The learning rate at fractional epoch `t` of `epochs`.
    pub fn lr(&self, base: f32, t: f64, epochs: usize) -> f32 {
        let total = epochs.max(1) as f64;
        let progress = (t / total).clamp(0.0, 1.0);
        let cosine = |from: f64, to: f64, x: f64| to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * x.clamp(0.0, 1.0)).cos());
        let factor = match &self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| (m as f64) <= t.floor()).count();
                (*gamma as f64).powi(passed as i32)
            }
            Schedule::Cosine => cosine(1.0, 0.0, progress),
            Schedule::OneCycle { pct_start } => {
                let up = (*pct_start as f64).clamp(1e-6, 1.0);
                if progress < up {
                    cosine(1.0 / 25.0, 1.0, progress / up)
                } else {
                    cosine(1.0, 1.0 / 1e4, (progress - up) / (1.0 - up).max(1e-12))
                }
            }
        };
        let warm = if self.warmup_epochs > 0.0 { (t / self.warmup_epochs as f64).min(1.0) } else { 1.0 };
        (base as f64 * factor * warm) as f32
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(Error::config("--warmup-epochs", format!("must be >= 0, got {}", self.warmup_epochs)));
        }
        match &self.schedule {
            Schedule::Step { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                Err(Error::config("--gamma", format!("must be positive, got {gamma}")))
            }
            Schedule::OneCycle { pct_start } if !(*pct_start > 0.0 && *pct_start < 1.0) => {
                Err(Error::config("--pct-start", format!("must be in (0, 1), got {pct_start}")))
            }
            _ => Ok(()),
        }
    }
}

/// An optimizer with its state on the device (velocity, or Adam's moments).
pub struct Optimizer<B: Backend> {
    pub config: OptimizerConfig,
    state: B::Buf<f32>,
    /// The values the next step reads ([`Hyper`]).
    hyper: B::Buf<f32>,
    /// Planned values for upcoming steps, [`Hyper::LEN`] per step: uploaded once
    /// per epoch, then each step copies its row on the device (no host write).
    plan: B::Buf<f32>,
    /// Steps taken so far (Adam's t).
    pub steps: u64,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(backend: &B, config: OptimizerConfig, params: &ParamStore<B>) -> Result<Self> {
        config.validate()?;
        Ok(Optimizer {
            config,
            state: backend.alloc(config.rule().state_len(params.len()))?,
            hyper: backend.alloc(Hyper::LEN)?,
            plan: backend.alloc(Hyper::LEN)?,
            steps: 0,
        })
    }

    /// Uploads the values of the next `lrs.len()` steps (one learning rate each;
    /// Adam's bias corrections follow from the step count).
    pub fn plan(&mut self, backend: &B, lrs: &[f32]) -> Result<()> {
        let mut table = Vec::with_capacity(lrs.len() * Hyper::LEN);
        for (i, &lr) in lrs.iter().enumerate() {
            let t = (self.steps + 1 + i as u64) as i32;
            let (bias_correction1, bias_correction2) = (1.0 - self.config.beta1.powi(t), 1.0 - self.config.beta2.powi(t));
            let h = Hyper { lr, bias_correction1, bias_correction2, skip: 0.0 };
            table.extend_from_slice(&h.to_array());
        }
        if crate::Storage::len(&self.plan) < table.len() {
            self.plan = backend.alloc(table.len())?;
        }
        backend.write(ViewMut::prefix(&mut self.plan, table.len())?, &table)
    }

    /// Makes planned step `i` (0-based, counted from the last [`Optimizer::plan`])
    /// the next one: a copy on the device.
    pub fn prepare(&mut self, backend: &B, i: usize) -> Result<()> {
        backend.copy(View::range(&self.plan, i * Hyper::LEN, Hyper::LEN)?, ViewMut::all(&mut self.hyper))
    }

    /// Makes the next step change nothing where `flag` (one value on the
    /// device) is nonzero: a device-side copy into the step's values, after
    /// [`Optimizer::prepare`] (which clears it). For loss scaling's overflowed steps.
    pub fn skip_if(&mut self, backend: &B, flag: View<'_, B, f32>) -> Result<()> {
        backend.copy(flag, ViewMut::range(&mut self.hyper, Hyper::SKIP, 1)?)
    }

    /// One update with the values of the last [`Optimizer::prepare`].
    pub fn step(&mut self, backend: &B, params: &mut ParamStore<B>) -> Result<()> {
        self.steps += 1;
        backend.optimizer_step(
            &self.config.rule(),
            View::all(&self.hyper),
            ViewMut::all(&mut params.data),
            View::all(&params.grads),
            ViewMut::all(&mut self.state),
        )
    }

    /// The state for a checkpoint (host copy).
    pub fn state(&self, backend: &B) -> Result<Vec<f32>> {
        backend.download(View::all(&self.state))
    }

    /// Restores state saved by [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, backend: &B, state: &[f32], steps: u64) -> Result<()> {
        crate::error::check_len("optimizer restore", "state", crate::Storage::len(&self.state), state.len())?;
        backend.write(ViewMut::all(&mut self.state), state)?;
        self.steps = steps;
        Ok(())
    }
}
