use super::{Ctx, Layer, LayerBuffer, ParamSpec};
use crate::backend::{Activation, Backend, BatchNormGeom, View, ViewMut};
use crate::error::{Error, Result};

/// Batch normalization as `torch.nn.BatchNorm2d` (input (C, H, W) per sample)
/// or `BatchNorm1d` (input (C)), with PyTorch's defaults (eps 1e-5, momentum
/// 0.1) and names: parameters `weight` (gamma, starts at 1) and `bias` (beta,
/// starts at 0), buffers `running_mean` and `running_var` (the model adds
/// `num_batches_tracked`). Training normalizes with the batch's statistics,
/// evaluation with the running ones. `act` fuses a following ReLU or GELU.
pub struct BatchNorm<B: Backend> {
    pub channels: usize,
    pub eps: f32,
    pub momentum: f32,
    pub act: Activation,
    /// 2: (C, H, W) inputs; 1: (C) inputs.
    dims: usize,
    hw: usize,
    off: usize,
    /// [running_mean (C) | running_var (C)]
    running: Option<B::Buf<f32>>,
    /// [batch mean (C) | batch 1/sqrt(var + eps) (C)] of the last training forward.
    saved: Option<B::Buf<f32>>,
}

impl<B: Backend> BatchNorm<B> {
    pub fn new_2d(channels: usize) -> Self {
        Self::new(channels, 2)
    }
    pub fn new_1d(channels: usize) -> Self {
        Self::new(channels, 1)
    }
    fn new(channels: usize, dims: usize) -> Self {
        BatchNorm { channels, eps: 1e-5, momentum: 0.1, act: Activation::None, dims, hw: 0, off: 0, running: None, saved: None }
    }

    /// relu(batchnorm(x)) in one op.
    pub fn with_relu(mut self) -> Self {
        self.act = Activation::Relu;
        self
    }

    /// gelu(batchnorm(x)) in one op (backward recomputes the pre-activation).
    pub fn with_gelu(mut self) -> Self {
        self.act = Activation::Gelu;
        self
    }

    pub(super) fn geom(&self, n: usize) -> BatchNormGeom {
        BatchNormGeom { n, c: self.channels, hw: self.hw, eps: self.eps, momentum: self.momentum, act: self.act }
    }

    fn missing(&self, what: &str) -> Error {
        Error::shape(self.kind_name(), what, "init_buffers / a training forward first", "none")
    }

    pub(super) fn kind_name(&self) -> &'static str {
        match (self.dims, self.act) {
            (2, Activation::None) => "batchnorm2d",
            (2, Activation::Relu) => "batchnorm2d+relu",
            (2, Activation::Gelu) => "batchnorm2d+gelu",
            (_, Activation::None) => "batchnorm1d",
            (_, Activation::Relu) => "batchnorm1d+relu",
            (_, Activation::Gelu) => "batchnorm1d+gelu",
        }
    }

    /// What a forward reads and writes beside x and y: [gamma | beta],
    /// running = [mean | var] and saved = [mean | invstd] (allocated on first use).
    #[allow(clippy::type_complexity)]
    pub(super) fn forward_state<'a>(
        &'a mut self,
        ctx: &Ctx<'a, B>,
    ) -> Result<(View<'a, B, f32>, ViewMut<'a, B, f32>, ViewMut<'a, B, f32>)> {
        if self.running.is_none() {
            self.init_buffers(ctx.backend)?;
        }
        let params = View::range(ctx.params, self.off, 2 * self.channels)?;
        let running = ViewMut::all(self.running.as_mut().expect("allocated above"));
        let saved = ViewMut::all(self.saved.as_mut().expect("allocated with running"));
        Ok((params, running, saved))
    }

    /// What a backward reads: [gamma | beta] and the saved batch statistics.
    pub(super) fn backward_state<'a>(&'a self, ctx: &Ctx<'a, B>) -> Result<(View<'a, B, f32>, View<'a, B, f32>)> {
        let saved = self.saved.as_ref().ok_or_else(|| self.missing("saved statistics"))?;
        Ok((View::range(ctx.params, self.off, 2 * self.channels)?, View::all(saved)))
    }

    /// Over (C, H, W) inputs (`BatchNorm2d`), not (C).
    pub(super) fn is_2d(&self) -> bool {
        self.dims == 2
    }

    /// Where its gradients [dgamma | dbeta] go in the gradient buffer.
    pub(super) fn param_offset(&self) -> usize {
        self.off
    }
}

impl<B: Backend> Layer<B> for BatchNorm<B> {
    fn kind(&self) -> &'static str {
        self.kind_name()
    }

    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>> {
        match (self.dims, input) {
            (2, &[c, h, w]) if c == self.channels => self.hw = h * w,
            (1, &[c]) if c == self.channels => self.hw = 1,
            _ => {
                let want = if self.dims == 2 { format!("[{}, H, W]", self.channels) } else { format!("[{}]", self.channels) };
                return Err(Error::shape(self.kind_name(), "input shape", want, format!("{input:?}")));
            }
        }
        Ok(input.to_vec())
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let c = self.channels;
        vec![
            ParamSpec { init: Some(1.0), ..ParamSpec::new("weight", vec![c], c, c) },
            ParamSpec { init: Some(0.0), ..ParamSpec::new("bias", vec![c], c, c) },
        ]
    }

    fn bind_params(&mut self, offsets: &[usize]) {
        // The backend reads [gamma | beta] as one window: they must be adjacent.
        assert_eq!(offsets[1], offsets[0] + self.channels);
        self.off = offsets[0];
    }

    fn init_buffers(&mut self, backend: &B) -> Result<()> {
        let c = self.channels;
        let mut running = vec![0.0f32; 2 * c];
        running[c..].fill(1.0);
        self.running = Some(backend.upload(&running)?);
        self.saved = Some(backend.alloc(2 * c)?);
        Ok(())
    }

    fn buffers(&self) -> Vec<LayerBuffer<'_, B>> {
        let c = self.channels;
        let Some(running) = &self.running else { return Vec::new() };
        vec![
            LayerBuffer { name: "running_mean", shape: vec![c], data: View { buf: running, offset: 0, len: c } },
            LayerBuffer { name: "running_var", shape: vec![c], data: View { buf: running, offset: c, len: c } },
        ]
    }

    fn buffers_mut(&mut self) -> Vec<ViewMut<'_, B, f32>> {
        self.running.as_mut().map(ViewMut::all).into_iter().collect()
    }

    fn load_buffer(&mut self, backend: &B, name: &str, data: &[f32]) -> Result<()> {
        let c = self.channels;
        let offset = match name {
            "running_mean" => 0,
            "running_var" => c,
            _ => return Err(Error::shape(self.kind_name(), "buffer", "running_mean or running_var", name.to_string())),
        };
        let kind = self.kind_name();
        let running = self.running.as_mut().ok_or_else(|| Error::shape(kind, "buffers", "init_buffers first", "none"))?;
        backend.write(ViewMut::range(running, offset, c)?, data)
    }

    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()> {
        // x, y: (N, C, H, W) or (N, C)
        let g = self.geom(ctx.n);
        let (params, running, saved) = self.forward_state(ctx)?;
        ctx.backend.batchnorm_forward(&g, ctx.training, x, params, running, saved, y)
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
        // dy: (N, C, H, W) -> dgamma, dbeta (C), dx (N, C, H, W)
        let g = self.geom(ctx.n);
        let (params, saved) = self.backward_state(ctx)?;
        let dparams = ViewMut::range(grads, self.off, 2 * g.c)?;
        ctx.backend.batchnorm_backward(&g, x, y, dy, params, saved, dx, dparams)
    }
}
