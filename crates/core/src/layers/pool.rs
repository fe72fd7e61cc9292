use super::{Ctx, Layer};
use crate::backend::{Backend, NarrowEdges, Pool2dGeom, View, ViewMut};
use crate::error::{Error, Result};

/// Max pooling with a square window; remembers the argmax of each output for
/// backward. `relu` fuses a preceding ReLU (see [`Pool2dGeom::relu`]).
pub struct MaxPool2d<B: Backend> {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub relu: bool,
    chw: (usize, usize, usize),
    argmax: Option<B::Buf<u32>>,
}

impl<B: Backend> MaxPool2d<B> {
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        MaxPool2d { kernel, stride, pad, relu: false, chw: (0, 0, 0), argmax: None }
    }

    /// relu(x) then this pool, in one op.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    pub(crate) fn geom(&self, n: usize) -> Pool2dGeom {
        let (c, h, w) = self.chw;
        Pool2dGeom { n, c, h, w, k: self.kernel, stride: self.stride, pad: self.pad, relu: self.relu }
    }

    pub(crate) fn argmax_buf(&mut self, backend: &B, len: usize) -> Result<&mut B::Buf<u32>> {
        if self.argmax.as_ref().is_none_or(|a| crate::Storage::len(a) < len) {
            self.argmax = Some(backend.alloc(len)?);
        }
        Ok(self.argmax.as_mut().expect("allocated above"))
    }
}

impl<B: Backend> Layer<B> for MaxPool2d<B> {
    fn kind(&self) -> &'static str {
        if self.relu {
            "relu+maxpool2d"
        } else {
            "maxpool2d"
        }
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [c, h, w] => {
                self.chw = (c, h, w);
                let g = self.geom(1);
                g.validate()?;
                Ok(vec![c, g.out_h(), g.out_w()])
            }
            _ => Err(Error::shape("maxpool2d", "input shape", "[C, H, W]", format!("{input:?}"))),
        }
    }

    fn reserve(&mut self, backend: &B, n: usize) -> Result<()> {
        let len = self.geom(n).y_len();
        self.argmax_buf(backend, len).map(|_| ())
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C, H, W) -> y, argmax: (N, C, OH, OW)
        let g = self.geom(ctx.n);
        let argmax = self.argmax_buf(ctx.backend, g.y_len())?;
        ctx.backend.maxpool2d_forward(&g, x, y, ViewMut::prefix(argmax, g.y_len())?)
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
        let g = self.geom(ctx.n);
        let argmax = self.argmax.as_ref().ok_or_else(|| Error::shape("maxpool2d", "backward before forward", "argmax", "none"))?;
        ctx.backend.maxpool2d_backward(&g, dy, View::prefix(argmax, g.y_len())?, dx)
    }
}

impl<B: Backend> MaxPool2d<B> {
    /// The argmax of the last forward pass of `n` samples.
    pub(crate) fn argmax(&self, n: usize) -> Result<View<'_, B, u32>> {
        let argmax = self.argmax.as_ref().ok_or_else(|| Error::shape("maxpool2d", "backward before forward", "argmax", "none"))?;
        View::prefix(argmax, self.geom(n).y_len())
    }
}

/// Average pooling with a square window (`torch.nn.AvgPool2d`, padding counted
/// in the divisor as PyTorch does by default).
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    chw: (usize, usize, usize),
}

impl AvgPool2d {
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        AvgPool2d { kernel, stride, pad, chw: (0, 0, 0) }
    }

    fn geom(&self, n: usize) -> Pool2dGeom {
        let (c, h, w) = self.chw;
        Pool2dGeom { n, c, h, w, k: self.kernel, stride: self.stride, pad: self.pad, relu: false }
    }
}

impl<B: Backend> Layer<B> for AvgPool2d {
    fn kind(&self) -> &'static str {
        "avgpool2d"
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [c, h, w] => {
                self.chw = (c, h, w);
                let g = self.geom(1);
                g.validate()?;
                Ok(vec![c, g.out_h(), g.out_w()])
            }
            _ => Err(Error::shape("avgpool2d", "input shape", "[C, H, W]", format!("{input:?}"))),
        }
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C, H, W) -> y: (N, C, OH, OW)
        ctx.backend.avgpool2d_forward(&self.geom(ctx.n), x, y)
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
            Some(dx) => ctx.backend.avgpool2d_backward(&self.geom(ctx.n), dy, dx),
            None => Ok(()),
        }
    }
}

/// Global average pooling: (C, H, W) -> (C), the mean of each channel
/// (`AdaptiveAvgPool2d(1)` then `Flatten` in PyTorch). Square inputs only.
pub struct GlobalAvgPool {
    pool: AvgPool2d,
    /// Whether x comes narrow (set by the model, see [`NarrowEdges`]).
    narrow: bool,
}

impl GlobalAvgPool {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        GlobalAvgPool { pool: AvgPool2d::new(1, 1, 0), narrow: false }
    }

    /// (N, C, HW) of a batch of `n`.
    fn nchw(&self, n: usize) -> (usize, usize, usize) {
        let (c, h, w) = self.pool.chw;
        (n, c, h * w)
    }
}

impl<B: Backend> Layer<B> for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "global-avgpool"
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [c, h, w] if h == w && h > 0 => {
                self.pool = AvgPool2d::new(h, h, 0);
                <AvgPool2d as Layer<B>>::build(&mut self.pool, input)?;
                Ok(vec![c])
            }
            _ => Err(Error::shape("global-avgpool", "input shape", "[C, H, H] (square)", format!("{input:?}"))),
        }
    }

    fn narrow_edges(&self, backend: &B) -> NarrowEdges {
        NarrowEdges { x: backend.narrow_residuals(), y: false }
    }

    fn set_narrow_edges(&mut self, edges: NarrowEdges) {
        self.narrow = edges.x;
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C, H, H) (narrow: (N, H, H, C) 16-bit) -> y: (N, C)
        if self.narrow {
            return ctx.backend.global_avgpool_narrow_forward(self.nchw(ctx.n), x, y);
        }
        <AvgPool2d as Layer<B>>::forward(&mut self.pool, ctx, x, y)
    }

    fn backward(
        &mut self,
        ctx: &Ctx<'_, B>,
        grads: &mut B::Buf<f32>,
        x: View<'_, B, f32>,
        y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: Option<ViewMut<'_, B, f32>>,
    ) -> Result<()> {
        match dx {
            Some(dx) if self.narrow => ctx.backend.global_avgpool_narrow_backward(self.nchw(ctx.n), dy, dx),
            dx => <AvgPool2d as Layer<B>>::backward(&mut self.pool, ctx, grads, x, y, dy, dx),
        }
    }
}
