use super::{Ctx, Layer};
use crate::backend::{Backend, DropoutSpec, View, ViewMut};
use crate::error::{Error, Result};

/// Inverted dropout (`torch.nn.Dropout`): in training each element is zeroed
/// with probability `p` and the rest scaled by 1/(1-p); in evaluation it passes
/// x through. The mask comes from the device's random stream (see
/// [`crate::random`]), keyed by the model's step counter and `salt`.
pub struct Dropout<B: Backend> {
    pub p: f32,
    pub salt: u32,
    sample_len: usize,
    mask: Option<B::Buf<f32>>,
}

impl<B: Backend> Dropout<B> {
    pub fn new(p: f32, salt: u32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config("dropout", format!("probability must be in [0, 1), got {p}")));
        }
        Ok(Dropout { p, salt, sample_len: 0, mask: None })
    }
}

impl<B: Backend> Layer<B> for Dropout<B> {
    fn kind(&self) -> &'static str {
        "dropout"
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        self.sample_len = input.iter().product();
        Ok(input.to_vec())
    }

    fn reserve(&mut self, backend: &B, n: usize) -> Result<()> {
        if self.p > 0.0 && self.mask.as_ref().is_none_or(|m| crate::Storage::len(m) < n * self.sample_len) {
            self.mask = Some(backend.alloc(n * self.sample_len)?);
        }
        Ok(())
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x, y: (N, ...)
        if !ctx.training || self.p == 0.0 {
            return ctx.backend.copy(x, y);
        }
        self.reserve(ctx.backend, ctx.n)?;
        let mask = ViewMut::prefix(self.mask.as_mut().expect("allocated above"), x.len)?;
        ctx.backend.dropout_forward(&DropoutSpec { p: self.p, salt: self.salt }, ctx.rng, x, y, mask)
    }

    fn backward(
        &mut self,
        ctx: &Ctx<'_, B>,
        _grads: &mut B::Buf<f32>,
        _x: View<'_, B, f32>,
        _y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: Option<ViewMut<'_, B, f32>>,
    ) -> Result<()> {
        let Some(dx) = dx else { return Ok(()) };
        if self.p == 0.0 {
            return ctx.backend.copy(dy, dx);
        }
        let mask = self.mask.as_ref().ok_or_else(|| Error::shape("dropout", "backward before a training forward", "mask", "none"))?;
        ctx.backend.dropout_backward(View::prefix(mask, dy.len)?, dy, dx)
    }
}
