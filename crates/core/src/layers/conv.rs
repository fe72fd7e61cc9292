use super::{Ctx, Layer, MaxPool2d, ParamSpec};
use crate::backend::{Backend, Conv2dGeom, ConvGrads, View, ViewMut};
use crate::error::{Error, Result};

/// 2-D convolution with square kernels, as `torch.nn.Conv2d` (weight (C_out, C_in, K, K)),
/// with or without a bias (`bias=False` before a BatchNorm, as in ResNets).
pub struct Conv2d<B: Backend> {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub bias: bool,
    hw: (usize, usize),
    off: usize,
    /// Without a bias: what stands in for it (see [`BiasFree`]).
    no_bias: Option<BiasFree<B>>,
    /// What the forward leaves for the backward (see [`Backend::conv2d_forward_keep`]),
    /// for training batches of up to its capacity; the batch it holds.
    keep: Option<B::Buf<f32>>,
    kept_for: Option<usize>,
}

/// Floats of room for what a forward keeps for its backward: x in 16 bits.
fn keep_len(g: &Conv2dGeom) -> usize {
    g.x_len().div_ceil(2)
}

fn no_bias_buffers() -> Error {
    Error::shape("conv2d", "bias-free buffers", "init_buffers first", "none")
}

/// A bias-free convolution's buffers: zeros for the backend's bias input, and
/// a window for the [dweight | dbias] it writes (dweight is copied to the gradients).
pub(super) struct BiasFree<B: Backend> {
    pub(super) zeros: B::Buf<f32>,
    dparams: B::Buf<f32>,
}

impl<B: Backend> Conv2d<B> {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, pad: usize) -> Self {
        Conv2d { c_in, c_out, kernel, stride, pad, bias: true, hw: (0, 0), off: 0, no_bias: None, keep: None, kept_for: None }
    }

    /// The same convolution without a bias parameter.
    pub fn without_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    pub(super) fn geom(&self, n: usize) -> Conv2dGeom {
        Conv2dGeom { n, c_in: self.c_in, h: self.hw.0, w: self.hw.1, c_out: self.c_out, k: self.kernel, stride: self.stride, pad: self.pad }
    }

    /// Where its weight (then bias) starts in the parameter and gradient buffers.
    pub(super) fn param_offset(&self) -> usize {
        self.off
    }

    pub(super) fn bias_free(&self) -> Result<&BiasFree<B>> {
        self.no_bias.as_ref().ok_or_else(no_bias_buffers)
    }

    /// The window a bias-free backward writes [dweight | dbias] into (see [`BiasFree`]).
    pub(super) fn bias_free_scratch(&mut self) -> Result<ViewMut<'_, B, f32>> {
        self.no_bias.as_mut().map(|b| ViewMut::all(&mut b.dparams)).ok_or_else(no_bias_buffers)
    }

    /// Its pieces a forward reads beside x: the weight, the bias (zeros when
    /// bias-free) and where to keep what its backward needs: the room
    /// [`Layer::reserve_backward`] made, when it fits the batch (recorded for [`Self::kept`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn forward_operands<'a>(
        &'a mut self,
        ctx: &Ctx<'a, B>,
    ) -> Result<(View<'a, B, f32>, View<'a, B, f32>, Option<ViewMut<'a, B, f32>>)> {
        let g = self.geom(ctx.n);
        let w = View::range(ctx.params, self.off, g.w_len())?;
        let b = match self.bias {
            true => View::range(ctx.params, self.off + g.w_len(), g.c_out)?,
            false => View::all(&self.no_bias.as_ref().ok_or_else(no_bias_buffers)?.zeros),
        };
        let keep = self.keep.as_mut().filter(|k| crate::Storage::len(*k) >= keep_len(&g));
        self.kept_for = keep.is_some().then_some(ctx.n);
        Ok((w, b, keep.map(|k| ViewMut::prefix(k, keep_len(&g))).transpose()?))
    }

    /// What the last forward kept (see [`Self::forward_operands`]), if it was of
    /// these `n` samples, and, when bias-free, the zeros and the scratch (see [`BiasFree`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn backward_room(
        &mut self,
        n: usize,
    ) -> Result<(Option<View<'_, B, f32>>, Option<(View<'_, B, f32>, ViewMut<'_, B, f32>)>)> {
        let len = keep_len(&self.geom(n));
        let kept = self.keep.as_ref().filter(|_| self.kept_for == Some(n)).map(|k| View::prefix(k, len)).transpose()?;
        Ok((kept, self.no_bias.as_mut().map(|b| (View::all(&b.zeros), ViewMut::all(&mut b.dparams)))))
    }
}

impl<B: Backend> Layer<B> for Conv2d<B> {
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
        let weight = ParamSpec::new("weight", vec![self.c_out, self.c_in, self.kernel, self.kernel], fan_in, fan_out);
        if !self.bias {
            return vec![weight];
        }
        vec![weight, ParamSpec::new("bias", vec![self.c_out], fan_in, fan_out)]
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        // The backend writes [dweight | dbias] as one window: they must be adjacent.
        if self.bias {
            assert_eq!(offsets[1], offsets[0] + self.c_out * self.c_in * self.kernel * self.kernel);
        }
        self.off = offsets[0];
    }

    fn init_buffers(&mut self, backend: &B) -> Result<()> {
        if !self.bias {
            let w_len = self.c_out * self.c_in * self.kernel * self.kernel;
            self.no_bias = Some(BiasFree { zeros: backend.alloc(self.c_out)?, dparams: backend.alloc(w_len + self.c_out)? });
        }
        Ok(())
    }

    fn reserve_backward(&mut self, backend: &B, n: usize) -> Result<()> {
        let len = keep_len(&self.geom(n));
        if backend.conv2d_keeps(&self.geom(n)) && self.keep.as_ref().is_none_or(|k| crate::Storage::len(k) < len) {
            self.keep = Some(backend.alloc(len)?);
        }
        Ok(())
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C_in, H, W) -> y: (N, C_out, OH, OW)
        let g = self.geom(ctx.n);
        let backend = ctx.backend;
        // A batch that fits the training room leaves what its backward needs there.
        match self.forward_operands(ctx)? {
            (w, b, Some(keep)) => backend.conv2d_forward_keep(&g, x, w, b, y, keep),
            (w, b, None) => backend.conv2d_forward(&g, x, w, b, y),
        }
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
        let (with_bias, off) = (self.bias, self.off);
        let (kept, scratch) = self.backward_room(ctx.n)?;
        let grads = match (with_bias, scratch) {
            (true, _) => ConvGrads::Bias(ViewMut::range(grads, off, g.w_len() + g.c_out)?),
            (false, Some((_, scratch))) => ConvGrads::NoBias { dweight: ViewMut::range(grads, off, g.w_len())?, scratch },
            (false, None) => return Err(no_bias_buffers()),
        };
        match (kept, grads) {
            (Some(kept), grads) => ctx.backend.conv2d_backward_kept(&g, x, kept, w, dy, dx, grads),
            (None, ConvGrads::Bias(dparams)) => ctx.backend.conv2d_backward(&g, x, w, dy, dx, dparams),
            (None, ConvGrads::NoBias { dweight, scratch }) => ctx.backend.conv2d_backward_no_bias(&g, x, w, dy, dx, dweight, scratch),
        }
    }
}

/// A bias-free [`Conv2d`] and the [`MaxPool2d`] over non-overlapping windows
/// that alone reads its output, as one op ([`Backend::conv2d_maxpool_forward`]):
/// the model fuses the two nodes when it builds (the graph, checkpoints and
/// exports keep both), so the conv's full-size output never exists in fp32 on
/// backends that keep it narrower.
pub struct Conv2dMaxPool<B: Backend> {
    conv: Conv2d<B>,
    pool: MaxPool2d<B>,
    /// What backward needs of the conv's output (room for `conv.geom(n).y_len()` floats).
    stash: Option<B::Buf<f32>>,
}

impl<B: Backend> Conv2dMaxPool<B> {
    /// `None` unless the pair can be fused: a bias-free conv, a pool with kernel == stride and no padding.
    pub fn fuse(conv: Conv2d<B>, pool: MaxPool2d<B>) -> Option<Self> {
        (!conv.bias && pool.kernel == pool.stride && pool.pad == 0).then_some(Conv2dMaxPool { conv, pool, stash: None })
    }
}

impl<B: Backend> Layer<B> for Conv2dMaxPool<B> {
    fn kind(&self) -> &'static str {
        "conv2d+maxpool2d"
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        let conv_out = self.conv.build(input)?;
        self.pool.build(&conv_out)
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        self.conv.param_specs()
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        self.conv.bind_params(offsets)
    }

    fn init_buffers(&mut self, backend: &B) -> Result<()> {
        self.conv.init_buffers(backend)
    }

    fn reserve(&mut self, backend: &B, n: usize) -> Result<()> {
        self.pool.reserve(backend, n)?;
        super::ensure(backend, &mut self.stash, self.conv.geom(n).y_len())
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C_in, H, W) -> conv (N, C_out, OH, OW) -> y, argmax: (N, C_out, OH / k, OW / k)
        self.reserve(ctx.backend, ctx.n)?;
        let (g, pool) = (self.conv.geom(ctx.n), self.pool.geom(ctx.n));
        let w = View::range(ctx.params, self.conv.off, g.w_len())?;
        let zeros = View::all(&self.conv.bias_free()?.zeros);
        let argmax = self.pool.argmax_buf(ctx.backend, pool.y_len())?;
        let argmax = ViewMut::prefix(argmax, pool.y_len())?;
        let stash = ViewMut::prefix(self.stash.as_mut().expect("reserved above"), g.y_len())?;
        ctx.backend.conv2d_maxpool_forward(&g, &pool, x, w, zeros, y, argmax, stash)
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
        // dy: (N, C_out, OH / k, OW / k) -> dW (C_out, C_in, K, K), dx (N, C_in, H, W)
        let (g, pool) = (self.conv.geom(ctx.n), self.pool.geom(ctx.n));
        let w = View::range(ctx.params, self.conv.off, g.w_len())?;
        let dweight = ViewMut::range(grads, self.conv.off, g.w_len())?;
        let Conv2dMaxPool { conv, pool: pool_layer, stash } = self;
        let argmax = pool_layer.argmax(ctx.n)?;
        let stash = ViewMut::prefix(
            stash.as_mut().ok_or_else(|| Error::shape("conv2d+maxpool2d", "backward before forward", "stash", "none"))?,
            g.y_len(),
        )?;
        let scratch = conv.bias_free_scratch()?;
        ctx.backend.conv2d_maxpool_backward(&g, &pool, x, w, dy, argmax, stash, dx, dweight, scratch)
    }
}
