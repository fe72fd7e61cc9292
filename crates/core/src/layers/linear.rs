use super::{Ctx, Layer, ParamSpec};
use crate::backend::{Backend, Gemm, View, ViewMut};
use crate::error::{Error, Result};

/// y = x W^T + b with W: (out, in), as `torch.nn.Linear`; optionally without
/// the bias, and with x W^T times a constant `scale` (folded into the matrix products).
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    pub bias: bool,
    pub scale: f32,
    w_off: usize,
    b_off: usize,
}

impl Linear {
    pub fn new(inputs: usize, outputs: usize) -> Self {
        Linear { inputs, outputs, bias: true, scale: 1.0, w_off: 0, b_off: 0 }
    }

    pub fn without_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    /// y = scale * x W^T + b (ONNX Gemm's alpha).
    pub fn scaled(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }
}

impl<B: Backend> Layer<B> for Linear {
    fn kind(&self) -> &'static str {
        "linear"
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        if input != [self.inputs] {
            return Err(Error::shape("linear", "input shape", format!("[{}]", self.inputs), format!("{input:?}")));
        }
        Ok(vec![self.outputs])
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let mut specs = vec![ParamSpec::new("weight", vec![self.outputs, self.inputs], self.inputs, self.outputs)];
        if self.bias {
            specs.push(ParamSpec::new("bias", vec![self.outputs], self.inputs, self.outputs));
        }
        specs
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        self.w_off = offsets[0];
        self.b_off = offsets.get(1).copied().unwrap_or(0);
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, in), W: (out, in), b: (out) -> y: (N, out) = scale * x W^T + b
        let w = View::range(ctx.params, self.w_off, self.outputs * self.inputs)?;
        let b = if self.bias { Some(View::range(ctx.params, self.b_off, self.outputs)?) } else { None };
        let g = Gemm::new(ctx.n, self.outputs, self.inputs).trans_b().alpha(self.scale);
        ctx.backend.gemm(&g, x, w, b, y)
    }

    fn backward(
        &mut self,
        ctx: &Ctx<'_, B>,
        grads: &mut B::Buf<f32>,
        x: View<'_, B, f32>,
        _y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: Option<ViewMut<'_, B, f32>>,
    ) -> Result<()> {
        let (n, i, o) = (ctx.n, self.inputs, self.outputs);
        let be = ctx.backend;
        let s = self.scale;
        // dW (out, in) = scale * dy^T (out, N) . x (N, in)
        be.gemm(&Gemm::new(o, i, n).trans_a().alpha(s), dy, x, None, ViewMut::range(grads, self.w_off, o * i)?)?;
        if self.bias {
            // db (out) = column sums of dy (N, out)
            be.bias_grad(n, o, dy, ViewMut::range(grads, self.b_off, o)?)?;
        }
        if let Some(dx) = dx {
            // dx (N, in) = scale * dy (N, out) . W (out, in)
            let w = View::range(ctx.params, self.w_off, o * i)?;
            be.gemm(&Gemm::new(n, i, o).alpha(s), dy, w, None, dx)?;
        }
        Ok(())
    }
}
