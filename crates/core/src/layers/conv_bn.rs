use super::{ensure, BatchNorm, Conv2d, Ctx, Layer, LayerBuffer, ParamSpec};
use crate::backend::{Activation, Backend, NarrowEdges, View, ViewMut};
use crate::error::{Error, Result};

/// A bias-free [`Conv2d`] and the 2-D [`BatchNorm`] that alone reads its
/// output, as one op ([`Backend::conv2d_batchnorm_forward`]): the model fuses
/// the two nodes when it builds (the graph, checkpoints and exports keep both,
/// each with its own names), so on backends that keep the conv's output
/// narrower (CUDA at 16 bits) it never exists in fp32.
pub struct Conv2dBatchNorm<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
    /// The conv's output, for backward (room for `conv.geom(n).y_len()` floats).
    stash: Option<B::Buf<f32>>,
    /// Room for the conv's output gradient, and the BatchNorm's [dgamma | dbeta]
    /// before they are copied into the gradients (the conv's dweight goes there directly).
    dstash: Option<B::Buf<f32>>,
    dbn: Option<B::Buf<f32>>,
    /// Whether x and y travel 16-bit channels-last (set by the model).
    edges: NarrowEdges,
}

impl<B: Backend> Conv2dBatchNorm<B> {
    /// `None` unless the pair can be fused: a bias-free conv and a 2-D BatchNorm over its channels.
    pub fn fuse(conv: Conv2d<B>, bn: BatchNorm<B>) -> Option<Self> {
        let fits = !conv.bias && bn.channels == conv.c_out && bn.is_2d();
        fits.then_some(Conv2dBatchNorm { conv, bn, stash: None, dstash: None, dbn: None, edges: NarrowEdges::WIDE })
    }

    /// The two layers, to name and bind their parameters one by one.
    pub fn parts_mut(&mut self) -> (&mut Conv2d<B>, &mut BatchNorm<B>) {
        (&mut self.conv, &mut self.bn)
    }

    fn missing(&self, what: &str) -> Error {
        Error::shape(self.kind(), what, "a training forward first", "none")
    }
}

impl<B: Backend> Layer<B> for Conv2dBatchNorm<B> {
    fn kind(&self) -> &'static str {
        match self.bn.act {
            Activation::None => "conv2d+batchnorm2d",
            Activation::Relu => "conv2d+batchnorm2d+relu",
            Activation::Gelu => "conv2d+batchnorm2d+gelu",
        }
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        let conv_out = self.conv.build(input)?;
        self.bn.build(&conv_out)
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        [self.conv.param_specs(), self.bn.param_specs()].concat()
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        let split = self.conv.param_specs().len();
        self.conv.bind_params(&offsets[..split]);
        self.bn.bind_params(&offsets[split..]);
    }

    fn init_buffers(&mut self, backend: &B) -> Result<()> {
        self.conv.init_buffers(backend)?;
        self.bn.init_buffers(backend)
    }

    fn buffers(&self) -> Vec<LayerBuffer<'_, B>> {
        self.bn.buffers()
    }

    fn buffers_mut(&mut self) -> Vec<ViewMut<'_, B, f32>> {
        self.bn.buffers_mut()
    }

    fn load_buffer(&mut self, backend: &B, name: &str, data: &[f32]) -> Result<()> {
        self.bn.load_buffer(backend, name, data)
    }

    fn reserve(&mut self, backend: &B, n: usize) -> Result<()> {
        ensure(backend, &mut self.stash, self.conv.geom(n).y_len())
    }

    fn reserve_backward(&mut self, backend: &B, n: usize) -> Result<()> {
        self.conv.reserve_backward(backend, n)?;
        ensure(backend, &mut self.dstash, self.conv.geom(n).y_len())?;
        ensure(backend, &mut self.dbn, 2 * self.bn.channels)
    }

    fn narrow_edges(&self, backend: &B) -> NarrowEdges {
        backend.conv2d_batchnorm_narrow(&self.conv.geom(1))
    }

    fn set_narrow_edges(&mut self, edges: NarrowEdges) {
        self.edges = edges;
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x: (N, C_in, H, W) -> conv (N, C_out, OH, OW) in the stash -> y: (N, C_out, OH, OW)
        // (x and y (N, H, W, C) 16-bit where narrow)
        self.reserve(ctx.backend, ctx.n)?;
        let (g, bn_geom, edges) = (self.conv.geom(ctx.n), self.bn.geom(ctx.n), self.edges);
        let Conv2dBatchNorm { conv, bn, stash, .. } = self;
        let stash = ViewMut::prefix(stash.as_mut().expect("reserved above"), g.y_len())?;
        let (w, zeros, keep) = conv.forward_operands(ctx)?;
        let state = bn.forward_state(ctx)?;
        ctx.backend.conv2d_batchnorm_forward((&g, &bn_geom), edges, ctx.training, (x, w, zeros), keep, state, stash, y)
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
        self.backward_into(ctx, grads, (x, y, dy), (dx, false))
    }

    fn backward_adding_dx(
        &mut self,
        ctx: &Ctx<'_, B>,
        grads: &mut B::Buf<f32>,
        x: View<'_, B, f32>,
        y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: ViewMut<'_, B, f32>,
    ) -> Result<bool> {
        let g = self.conv.geom(ctx.n);
        let stash = self.stash.as_ref().map(|s| View::prefix(s, g.y_len())).transpose()?;
        if !stash.is_some_and(|s| ctx.backend.conv2d_batchnorm_adds_dx(&g, s)) {
            return Ok(false);
        }
        self.backward_into(ctx, grads, (x, y, dy), (Some(dx), true)).map(|_| true)
    }
}

impl<B: Backend> Conv2dBatchNorm<B> {
    /// The backward, dx written or (`add_dx`) added into.
    #[allow(clippy::type_complexity)]
    fn backward_into(
        &mut self,
        ctx: &Ctx<'_, B>,
        grads: &mut B::Buf<f32>,
        (x, y, dy): (View<'_, B, f32>, View<'_, B, f32>, View<'_, B, f32>),
        dx: (Option<ViewMut<'_, B, f32>>, bool),
    ) -> Result<()> {
        // dy: (N, C_out, OH, OW) -> dgamma, dbeta (C_out), dW (C_out, C_in, K, K), dx (N, C_in, H, W)
        let (g, bn_geom) = (self.conv.geom(ctx.n), self.bn.geom(ctx.n));
        if self.stash.is_none() || self.dstash.is_none() || self.dbn.is_none() {
            return Err(self.missing("stash"));
        }
        let (bn_off, edges) = (self.bn.param_offset(), self.edges);
        let Conv2dBatchNorm { conv, bn, stash, dstash, dbn, .. } = self;
        let stash = View::prefix(stash.as_ref().expect("checked above"), g.y_len())?;
        let dstash = ViewMut::prefix(dstash.as_mut().expect("checked above"), g.y_len())?;
        let dbn = dbn.as_mut().expect("checked above");
        let w = View::range(ctx.params, conv.param_offset(), g.w_len())?;
        let dweight = ViewMut::range(grads, conv.param_offset(), g.w_len())?;
        let (kept, bias_free) = conv.backward_room(ctx.n)?;
        let (zeros, scratch) =
            bias_free.ok_or_else(|| Error::shape("conv2d+batchnorm2d", "bias-free buffers", "init_buffers first", "none"))?;
        let (params, saved) = bn.backward_state(ctx)?;
        let grads_out = (dweight, scratch, ViewMut::all(dbn));
        ctx.backend.conv2d_batchnorm_backward(
            (&g, &bn_geom),
            edges,
            (x, kept, w),
            (stash, y, dy),
            (zeros, params, saved),
            dstash,
            dx,
            grads_out,
        )?;
        ctx.backend.copy(View::all(dbn), ViewMut::range(grads, bn_off, 2 * bn_geom.c)?)
    }
}
