//! Layers: each owns its forward and backward. Activations live in the model
//! (it hands each layer its input and output windows); parameters and their
//! gradients live in one contiguous buffer each (see [`crate::model::ParamStore`]),
//! and a layer only knows its offsets into them.
//!
//! `backward` *overwrites* the layer's parameter gradients (no zero_grad needed).

mod activation;
mod conv;
mod conv_bn;
mod dropout;
mod linear;
mod norm;
mod pool;

pub use activation::{Flatten, Gelu, Relu};
pub use conv::{Conv2d, Conv2dMaxPool};
pub use conv_bn::Conv2dBatchNorm;
pub use dropout::Dropout;
pub use linear::Linear;
pub use norm::BatchNorm;
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d};

use crate::backend::{Backend, NarrowEdges, View, ViewMut};
use crate::error::Result;

/// Grows a layer's scratch buffer `buf` to at least `len` floats (allocated
/// when a batch is larger than any before, never within a step of the same size).
pub(crate) fn ensure<B: Backend>(backend: &B, buf: &mut Option<B::Buf<f32>>, len: usize) -> Result<()> {
    if buf.as_ref().is_none_or(|b| crate::Storage::len(b) < len) {
        *buf = Some(backend.alloc(len)?);
    }
    Ok(())
}

/// A parameter tensor a layer asks for. `fan_in` drives PyTorch's default init.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// "weight" or "bias"; the model prefixes the layer name ("conv1.weight").
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub fan_in: usize,
    pub fan_out: usize,
    /// A fixed initial value (BatchNorm: weight 1, bias 0) instead of the model's init scheme.
    pub init: Option<f32>,
}

impl ParamSpec {
    /// A weight or bias initialized by the model's scheme from its fans.
    pub fn new(name: &'static str, shape: Vec<usize>, fan_in: usize, fan_out: usize) -> Self {
        ParamSpec { name, shape, fan_in, fan_out, init: None }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a layer's forward and backward read besides activations.
pub struct Ctx<'a, B: Backend> {
    pub backend: &'a B,
    /// Samples in this batch.
    pub n: usize,
    /// The whole parameter buffer.
    pub params: &'a B::Buf<f32>,
    /// Training (batch statistics, dropout, ...) or evaluation.
    pub training: bool,
    /// [seed, step] for ops that draw random numbers (see [`crate::random`]).
    pub rng: View<'a, B, u32>,
}

/// A tensor a layer keeps besides its parameters (BatchNorm's running
/// statistics), saved in checkpoints under `<layer>.<name>`.
pub struct LayerBuffer<'a, B: Backend> {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub data: View<'a, B, f32>,
}

pub trait Layer<B: Backend>: Send {
    /// "conv2d", "linear", ... (for errors and profiles).
    fn kind(&self) -> &'static str;
    /// Fixes the per-sample input shape; returns the per-sample output shape.
    fn build(&mut self, input: &[usize]) -> Result<Vec<usize>>;
    fn param_specs(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Offsets into the parameter buffer, one per [`Layer::param_specs`] entry.
    fn bind_params(&mut self, _offsets: &[usize]) {}
    /// Allocates the layer's buffers (see [`LayerBuffer`]) once, after `build`.
    fn init_buffers(&mut self, _backend: &B) -> Result<()> {
        Ok(())
    }
    fn buffers(&self) -> Vec<LayerBuffer<'_, B>> {
        Vec::new()
    }
    /// The buffers' storage, writable (weight averaging updates it in place).
    fn buffers_mut(&mut self) -> Vec<ViewMut<'_, B, f32>> {
        Vec::new()
    }
    /// Overwrites buffer `name` (one of [`Layer::buffers`], same length) in place.
    fn load_buffer(&mut self, _backend: &B, name: &str, _data: &[f32]) -> Result<()> {
        Err(crate::Error::shape(self.kind(), "buffer", "one of the layer's buffers", name.to_string()))
    }
    /// Makes room for batches of up to `n` samples (so steps never allocate).
    fn reserve(&mut self, _backend: &B, _n: usize) -> Result<()> {
        Ok(())
    }
    /// Makes room for training (backward) batches of up to `n` samples.
    fn reserve_backward(&mut self, _backend: &B, _n: usize) -> Result<()> {
        Ok(())
    }
    /// [`Layer::backward`] adding dL/dx into `dx` instead of overwriting it
    /// (an input with several readers, whose gradient is a sum), where the
    /// layer can; `Ok(false)`: it cannot here, and did nothing (the model then
    /// sums through a scratch buffer).
    #[allow(clippy::too_many_arguments)]
    fn backward_adding_dx(
        &mut self,
        _ctx: &Ctx<'_, B>,
        _grads: &mut B::Buf<f32>,
        _x: View<'_, B, f32>,
        _y: View<'_, B, f32>,
        _dy: View<'_, B, f32>,
        _dx: ViewMut<'_, B, f32>,
    ) -> Result<bool> {
        Ok(false)
    }
    /// Which of its input and output this layer can read and write narrow on
    /// `backend` (see [`NarrowEdges`]); the default: neither.
    fn narrow_edges(&self, _backend: &B) -> NarrowEdges {
        NarrowEdges::WIDE
    }
    /// Reads and writes them so from now on (sides [`Layer::narrow_edges`] offered).
    fn set_narrow_edges(&mut self, _edges: NarrowEdges) {}
    /// x: (n, input...) -> y: (n, output...)
    fn forward(&mut self, ctx: &Ctx<'_, B>, x: View<'_, B, f32>, y: ViewMut<'_, B, f32>) -> Result<()>;
    /// Given dy = dL/dy, writes the parameter gradients into `grads` and, when
    /// `dx` is given, dL/dx. `y` is this layer's forward output.
    fn backward(
        &mut self,
        ctx: &Ctx<'_, B>,
        grads: &mut B::Buf<f32>,
        x: View<'_, B, f32>,
        y: View<'_, B, f32>,
        dy: View<'_, B, f32>,
        dx: Option<ViewMut<'_, B, f32>>,
    ) -> Result<()>;
}
