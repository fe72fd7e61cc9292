use super::{Ctx, Layer, ParamSpec};
use crate::backend::{Backend, Gemm, View, ViewMut};
use crate::error::{Error, Result};

/// y = x W^T + b with W: (out, in), as `torch.nn.Linear`.
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    w_off: usize,
    b_off: usize,
}

impl Linear {
    pub fn new(inputs: usize, outputs: usize) -> Self {
        Linear { inputs, outputs, w_off: 0, b_off: 0 }
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
        vec![
            ParamSpec::new("weight", vec![self.outputs, self.inputs], self.inputs, self.outputs),
            ParamSpec::new("bias", vec![self.outputs], self.inputs, self.outputs),
        ]
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        (self.w_off, self.b_off) = (offsets[0], offsets[1]);
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, in), W: (out, in), b: (out) -> y: (N, out) = x W^T + b
        let w = View::range(ctx.params, self.w_off, self.outputs * self.inputs)?;
        let b = View::range(ctx.params, self.b_off, self.outputs)?;
        let g = Gemm::new(ctx.n, self.outputs, self.inputs).trans_b();
        ctx.backend.gemm(&g, x, w, Some(b), y)
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
        // dW (out, in) = dy^T (out, N) . x (N, in)
        be.gemm(&Gemm::new(o, i, n).trans_a(), dy, x, None, ViewMut::range(grads, self.w_off, o * i)?)?;
        // db (out) = column sums of dy (N, out)
        be.bias_grad(n, o, dy, ViewMut::range(grads, self.b_off, o)?)?;
        if let Some(dx) = dx {
            // dx (N, in) = dy (N, out) . W (out, in)
            let w = View::range(ctx.params, self.w_off, o * i)?;
            be.gemm(&Gemm::new(n, i, o), dy, w, None, dx)?;
        }
        Ok(())
    }
}
