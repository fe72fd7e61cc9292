use super::{Ctx, Layer, ParamSpec};
use crate::backend::{Backend, Conv2dGeom, View, ViewMut};
use crate::error::{Error, Result};

/// 2-D convolution with square kernels, as `torch.nn.Conv2d` (weight (C_out, C_in, K, K)).
pub struct Conv2d {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    hw: (usize, usize),
    off: usize,
}

impl Conv2d {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, pad: usize) -> Self {
        Conv2d { c_in, c_out, kernel, stride, pad, hw: (0, 0), off: 0 }
    }

    fn geom(&self, n: usize) -> Conv2dGeom {
        Conv2dGeom { n, c_in: self.c_in, h: self.hw.0, w: self.hw.1, c_out: self.c_out, k: self.kernel, stride: self.stride, pad: self.pad }
    }
}

impl<B: Backend> Layer<B> for Conv2d {
    fn kind(&self) -> &'static str {
        "conv2d"
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [c, h, w] if c == self.c_in => {
                self.hw = (h, w);
                let g = self.geom(1);
                g.validate()?;
                Ok(vec![self.c_out, g.out_h(), g.out_w()])
            }
            _ => Err(Error::shape("conv2d", "input shape", format!("[{}, H, W]", self.c_in), format!("{input:?}"))),
        }
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let fan_in = self.c_in * self.kernel * self.kernel;
        let fan_out = self.c_out * self.kernel * self.kernel;
        vec![
            ParamSpec::new("weight", vec![self.c_out, self.c_in, self.kernel, self.kernel], fan_in, fan_out),
            ParamSpec::new("bias", vec![self.c_out], fan_in, fan_out),
        ]
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        // The backend writes [dweight | dbias] as one window: they must be adjacent.
        assert_eq!(offsets[1], offsets[0] + self.c_out * self.c_in * self.kernel * self.kernel);
        self.off = offsets[0];
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C_in, H, W) -> y: (N, C_out, OH, OW)
        let g = self.geom(ctx.n);
        let w = View::range(ctx.params, self.off, g.w_len())?;
        let b = View::range(ctx.params, self.off + g.w_len(), g.c_out)?;
        ctx.backend.conv2d_forward(&g, x, w, b, y)
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
        // dy: (N, C_out, OH, OW) -> dW (C_out, C_in, K, K), db (C_out), dx (N, C_in, H, W)
        let g = self.geom(ctx.n);
        let w = View::range(ctx.params, self.off, g.w_len())?;
        let dparams = ViewMut::range(grads, self.off, g.w_len() + g.c_out)?;
        ctx.backend.conv2d_backward(&g, x, w, dy, dx, dparams)
    }
}
