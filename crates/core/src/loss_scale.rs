//! Dynamic loss scaling for fp16 mixed precision, with the semantics of
//! PyTorch's `GradScaler`: the loss gradient is multiplied by a scale S before
//! backward, so that small gradients do not vanish in fp16; after backward the
//! gradients are divided by S and checked. A step with any NaN or infinite
//! gradient leaves the parameters and the optimizer state as they were and
//! halves S; after 2000 finite steps in a row S doubles.
//!
//! Everything happens on the device, inside the step a backend records and
//! replays: S and its bookkeeping live in a small device buffer
//! ([`LossScaleState`]), the optimizer reads the step's skip flag from there
//! (see [`crate::optim::Optimizer::skip_if`]), and nothing is read back within
//! an epoch. [`LossScaler::end_epoch`] reads the state once at the epoch's end.

use crate::backend::{Backend, LossScaleState, ScaleUpdate, View, ViewMut, MAX_GROWTH_INTERVAL};
use crate::error::{Error, Result};
use crate::Precision;
use serde::{Deserialize, Serialize};

/// Whether and how a run scales its loss (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LossScaling {
    #[default]
    Off,
    /// GradScaler's dynamic scaling from `init`, doubled after
    /// `growth_interval` finite steps, halved (and the step skipped) on overflow.
    Dynamic { init: f32, growth_interval: u32 },
}

impl LossScaling {
    /// GradScaler's defaults: `init_scale=2**16, growth_interval=2000`.
    pub fn dynamic() -> Self {
        LossScaling::Dynamic { init: 65536.0, growth_interval: 2000 }
    }

    /// What a run at `precision` needs: dynamic scaling for fp16 (whose 5-bit
    /// exponent loses small gradients), none otherwise.
    pub fn for_precision(precision: Precision) -> Self {
        match precision {
            Precision::Fp16 => Self::dynamic(),
            _ => LossScaling::Off,
        }
    }

    pub fn is_on(&self) -> bool {
        *self != LossScaling::Off
    }

    /// The update rule of the device state (GradScaler's growth factor 2 and backoff 0.5).
    pub fn update_rule(growth_interval: u32) -> ScaleUpdate {
        ScaleUpdate { growth: 2.0, backoff: 0.5, growth_interval }
    }

    pub fn validate(&self) -> Result<()> {
        let LossScaling::Dynamic { init, growth_interval } = *self else { return Ok(()) };
        if !(init.is_finite() && init > 0.0) {
            return Err(Error::config("loss_scale", format!("the initial scale must be a positive number, got {init}")));
        }
        if !(1..=MAX_GROWTH_INTERVAL).contains(&growth_interval) {
            return Err(Error::config(
                "loss_scale",
                format!("the growth interval must be 1 to {MAX_GROWTH_INTERVAL} steps, got {growth_interval}"),
            ));
        }
        Ok(())
    }

    /// One line for a run's header.
    pub fn describe(&self) -> String {
        match self {
            LossScaling::Off => "off".to_string(),
            LossScaling::Dynamic { init, growth_interval } => format!(
                "dynamic, from {init}: x2 after {growth_interval} steps without overflow, x0.5 and the step skipped when a gradient is inf or NaN"
            ),
        }
    }
}

/// The scaler's state as read back from the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleStatus {
    pub scale: f32,
    /// Finite steps since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped since training began.
    pub skipped: u64,
}

/// What an epoch did to the scale (see [`LossScaler::end_epoch`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochLossScale {
    /// The scale at the epoch's end.
    pub scale: f32,
    /// Steps of this epoch that were skipped.
    pub skipped: u64,
}

/// Dynamic loss scaling on the device (see the module docs).
pub struct LossScaler<B: Backend> {
    update: ScaleUpdate,
    state: B::Buf<f32>,
    /// Skipped steps as of the last [`LossScaler::end_epoch`].
    skipped_before: u64,
    last_epoch: Option<EpochLossScale>,
}

impl<B: Backend> LossScaler<B> {
    /// A scaler as `scaling` says; `None` when it is off.
    pub fn new(backend: &B, scaling: LossScaling) -> Result<Option<Self>> {
        scaling.validate()?;
        let LossScaling::Dynamic { init, growth_interval } = scaling else { return Ok(None) };
        let mut state = [0.0; LossScaleState::LEN];
        state[LossScaleState::SCALE] = init;
        Ok(Some(LossScaler {
            update: LossScaling::update_rule(growth_interval),
            state: backend.upload(&state)?,
            skipped_before: 0,
            last_epoch: None,
        }))
    }

    /// `dlogits *= scale`, after the loss and before backward.
    pub fn scale_dlogits(&self, backend: &B, dlogits: ViewMut<'_, B, f32>) -> Result<()> {
        backend.loss_scale_dlogits(View::all(&self.state), dlogits)
    }

    /// `grads /= scale`, after backward; flags the step if a gradient is not finite.
    pub fn unscale(&mut self, backend: &B, grads: ViewMut<'_, B, f32>) -> Result<()> {
        backend.loss_scale_unscale(ViewMut::all(&mut self.state), grads)
    }

    /// The step's flag: nonzero when it must be skipped (for [`crate::optim::Optimizer::skip_if`]).
    pub fn found_inf(&self) -> View<'_, B, f32> {
        View { buf: &self.state, offset: LossScaleState::FOUND_INF, len: 1 }
    }

    /// After the optimizer step: moves the scale and clears the flag.
    pub fn update(&mut self, backend: &B) -> Result<()> {
        backend.loss_scale_update(&self.update, ViewMut::all(&mut self.state))
    }

    /// Reads the state back (waits for the device).
    pub fn status(&self, backend: &B) -> Result<LossScaleStatus> {
        let s = backend.download(View::all(&self.state))?;
        Ok(LossScaleStatus {
            scale: s[LossScaleState::SCALE],
            good_steps: s[LossScaleState::GOOD_STEPS] as u32,
            skipped: s[LossScaleState::SKIPPED] as u64,
        })
    }

    /// Sets the state (a resumed run's, or a test's).
    pub fn restore(&mut self, backend: &B, status: LossScaleStatus) -> Result<()> {
        let mut s = [0.0; LossScaleState::LEN];
        s[LossScaleState::SCALE] = status.scale;
        s[LossScaleState::GOOD_STEPS] = status.good_steps as f32;
        s[LossScaleState::SKIPPED] = status.skipped as f32;
        backend.write(ViewMut::all(&mut self.state), &s)?;
        self.skipped_before = status.skipped;
        Ok(())
    }

    /// Reads the state at an epoch's end and works out the epoch's figures
    /// (kept for [`LossScaler::last_epoch`]).
    pub fn end_epoch(&mut self, backend: &B) -> Result<EpochLossScale> {
        let status = self.status(backend)?;
        let epoch = EpochLossScale { scale: status.scale, skipped: status.skipped.saturating_sub(self.skipped_before) };
        self.skipped_before = status.skipped;
        self.last_epoch = Some(epoch);
        Ok(epoch)
    }

    /// The figures of the last epoch trained, if any.
    pub fn last_epoch(&self) -> Option<EpochLossScale> {
        self.last_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_by_name() {
        for bad in [
            LossScaling::Dynamic { init: 0.0, growth_interval: 10 },
            LossScaling::Dynamic { init: f32::INFINITY, growth_interval: 10 },
            LossScaling::Dynamic { init: f32::NAN, growth_interval: 10 },
            LossScaling::Dynamic { init: 1.0, growth_interval: 0 },
            LossScaling::Dynamic { init: 1.0, growth_interval: MAX_GROWTH_INTERVAL + 1 },
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("loss_scale"), "{e}");
        }
        assert!(LossScaling::dynamic().validate().is_ok());
        assert_eq!(LossScaling::for_precision(Precision::Fp16), LossScaling::dynamic());
        assert_eq!(LossScaling::for_precision(Precision::Bf16), LossScaling::Off);
    }

    #[test]
    fn config_json_form() {
        let json = serde_json::to_string(&LossScaling::dynamic()).unwrap();
        assert_eq!(json, r#"{"kind":"dynamic","init":65536.0,"growth_interval":2000}"#);
        assert_eq!(serde_json::from_str::<LossScaling>(r#"{"kind":"off"}"#).unwrap(), LossScaling::Off);
    }
}
