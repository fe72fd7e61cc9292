use super::{Ctx, Layer};
use crate::backend::{Backend, View, ViewMut};
use crate::error::Result;

/// y = max(x, 0).
pub struct Relu;

impl<B: Backend> Layer<B> for Relu {
    fn kind(&self) -> &'static str {
        "relu"
    }
    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        ctx.backend.relu_forward(x, y)
    }
    fn backward(
        &mut self,
        ctx: &Ctx<'_, B>,
        _grads: &mut B::Buf<f32>,
        _x: View<'_, B, f32>,
        y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: Option<ViewMut<'_, B, f32>>,
    ) -> Result<()> {
        match dx {
            Some(dx) => ctx.backend.relu_backward(y, dy, dx),
            None => Ok(()),
        }
    }
}

/// y = GELU(x) = x Φ(x), the exact erf form (`torch.nn.GELU()`).
pub struct Gelu;

impl<B: Backend> Layer<B> for Gelu {
    fn kind(&self) -> &'static str {
        "gelu"
    }
    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        ctx.backend.gelu_forward(x, y)
    }
    fn backward(
        &mut self,
        ctx: &Ctx<'_, B>,
        _grads: &mut B::Buf<f32>,
        x: View<'_, B, f32>,
        _y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: Option<ViewMut<'_, B, f32>>,
    ) -> Result<()> {
        // GELU is not monotone: its derivative needs the input, not the output.
        match dx {
            Some(dx) => ctx.backend.gelu_backward(x, dy, dx),
            None => Ok(()),
        }
    }
}

/// (N, C, H, W) -> (N, C*H*W). Data is already contiguous, so this is a copy.
pub struct Flatten;

impl<B: Backend> Layer<B> for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }
    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![input.iter().product()])
    }
    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        ctx.backend.copy(x, y)
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
        match dx {
            Some(dx) => ctx.backend.copy(dy, dx),
            None => Ok(()),
        }
    }
}
