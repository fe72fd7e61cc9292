//! Models built from config: a [`ModelConfig`] names an architecture, [`Model`]
//! is the sequential network built from it on a backend, with its parameters,
//! gradients and activations preallocated.

use crate::backend::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::layers::{BatchNorm, Conv2d, Ctx, Dropout, Flatten, GlobalAvgPool, Layer, Linear, MaxPool2d, Relu};
use crate::Storage;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// MNIST-style input: one channel of 28x28.
pub const INPUT_SHAPE: [usize; 3] = [1, 28, 28];
pub const CLASSES: usize = 10;

/// Architectures. Serialized (JSON) into every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// LeNet-5 as PyTorch users write it: conv 1->6 5x5 pad 2, ReLU, maxpool 2;
    /// conv 6->16 5x5, ReLU, maxpool 2; flatten 400; 400->120, ReLU; 120->84, ReLU; 84->10.
    Lenet5,
    /// Fully connected layers with ReLU between them. `sizes` includes the input
    /// (784) and the output (10): `[784, 256, 128, 10]`.
    Mlp { sizes: Vec<usize> },
    /// The strong model: five 3x3 conv-BatchNorm-ReLU blocks of `width`,
    /// `width`, 2`width`, 2`width`, 4`width` channels (max-pool 2 after the
    /// second and fourth), global average pooling, dropout `dropout`, and one
    /// Linear to the classes. PyTorch names: conv1..conv5, bn1..bn5, fc.
    MnistCnn {
        #[serde(default = "default_cnn_width")]
        width: usize,
        #[serde(default)]
        dropout: f32,
    },
}

fn default_cnn_width() -> usize {
    ModelConfig::CNN_WIDTH
}

impl ModelConfig {
    pub fn mlp_default() -> Self {
        ModelConfig::Mlp { sizes: vec![784, 256, 128, 10] }
    }

    /// The strong model's default width (channels of its first block).
    pub const CNN_WIDTH: usize = 32;

    /// The strong model's (width, dropout) in its recipe for `dataset`: 32 and
    /// 0.2 for digits; 48 and 0.3 for Fashion-MNIST.
    pub fn mnist_cnn_defaults(dataset: &str) -> (usize, f32) {
        if dataset == "fashion-mnist" {
            (48, 0.3)
        } else {
            (Self::CNN_WIDTH, 0.2)
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Lenet5 => "lenet5",
            ModelConfig::Mlp { .. } => "mlp",
            ModelConfig::MnistCnn { .. } => "mnist-cnn",
        }
    }

    /// The layers in order, each with the name its parameters get in the
    /// state dict (PyTorch's names) or `None` for parameter-free layers.
    fn layers<B: Backend>(&self) -> Result<Vec<NamedLayer<B>>> {
        let named = |name: &str, l: Box<dyn Layer<B>>| (Some(name.to_string()), l);
        let plain = |l: Box<dyn Layer<B>>| (None, l);
        Ok(match self {
            // Each conv's ReLU is fused into the max-pool after it (they commute).
            ModelConfig::Lenet5 => vec![
                named("conv1", Box::new(Conv2d::new(1, 6, 5, 1, 2))),
                plain(Box::new(MaxPool2d::new(2, 2, 0).with_relu())),
                named("conv2", Box::new(Conv2d::new(6, 16, 5, 1, 0))),
                plain(Box::new(MaxPool2d::new(2, 2, 0).with_relu())),
                plain(Box::new(Flatten)),
                named("fc1", Box::new(Linear::new(400, 120))),
                plain(Box::new(Relu)),
                named("fc2", Box::new(Linear::new(120, 84))),
                plain(Box::new(Relu)),
                named("fc3", Box::new(Linear::new(84, 10))),
            ],
            ModelConfig::Mlp { sizes } => {
                let input: usize = INPUT_SHAPE.iter().product();
                if sizes.len() < 2 || sizes[0] != input || sizes[sizes.len() - 1] != CLASSES || sizes.contains(&0) {
                    return Err(Error::config(
                        "MLP sizes",
                        format!("need at least two non-zero sizes, the first {input} (the image) and the last {CLASSES} (the classes); got {sizes:?}"),
                    ));
                }
                let mut layers = vec![plain(Box::new(Flatten) as Box<dyn Layer<B>>)];
                for (i, pair) in sizes.windows(2).enumerate() {
                    if i > 0 {
                        layers.push(plain(Box::new(Relu)));
                    }
                    layers.push(named(&format!("fc{}", i + 1), Box::new(Linear::new(pair[0], pair[1]))));
                }
                layers
            }
            &ModelConfig::MnistCnn { width: w, dropout } => {
                if w == 0 {
                    return Err(Error::config("--width", "must be at least 1"));
                }
                let mut layers = Vec::new();
                let channels = [(1, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w)];
                for (i, &(c_in, c_out)) in channels.iter().enumerate() {
                    layers.push(named(&format!("conv{}", i + 1), Box::new(Conv2d::new(c_in, c_out, 3, 1, 1))));
                    layers.push(named(&format!("bn{}", i + 1), Box::new(BatchNorm::new_2d(c_out).with_relu())));
                    if i == 1 || i == 3 {
                        layers.push(plain(Box::new(MaxPool2d::new(2, 2, 0))));
                    }
                }
                layers.push(plain(Box::new(GlobalAvgPool::new())));
                if dropout > 0.0 {
                    layers.push(plain(Box::new(Dropout::new(dropout, 1)?)));
                }
                layers.push(named("fc", Box::new(Linear::new(4 * w, CLASSES))));
                layers
            }
        })
    }
}

/// The name of BatchNorm's step counter in PyTorch state dicts.
pub const BATCHES_TRACKED: &str = "num_batches_tracked";

/// A host copy of a named parameter tensor: (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A layer with the name its parameters get in the state dict (`None`: no parameters).
type NamedLayer<B> = (Option<String>, Box<dyn Layer<B>>);

/// How parameters are initialized. Biases are 0 except with `PyTorch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// PyTorch's default: weights and biases uniform in ±1/sqrt(fan_in)
    /// (Kaiming-uniform with a = sqrt(5)).
    #[default]
    PyTorch,
    /// He / Kaiming normal: weights N(0, 2 / fan_in).
    He,
    /// Xavier / Glorot uniform: weights uniform in ±sqrt(6 / (fan_in + fan_out)).
    Xavier,
}

/// One parameter tensor's place in the [`ParamStore`].
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// PyTorch state-dict name, e.g. "conv1.weight".
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub fan_in: usize,
    pub fan_out: usize,
    /// A fixed initial value (see [`crate::layers::ParamSpec::init`]).
    pub init: Option<f32>,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// All parameters in one contiguous buffer, their gradients in another of the
/// same layout, so an optimizer updates everything in one call.
pub struct ParamStore<B: Backend> {
    pub data: B::Buf<f32>,
    pub grads: B::Buf<f32>,
    pub entries: Vec<ParamEntry>,
}

impl<B: Backend> ParamStore<B> {
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Number of real parameters (without alignment padding).
    pub fn count(&self) -> usize {
        self.entries.iter().map(ParamEntry::len).sum()
    }
}

/// A standard normal sample (Box-Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Each layer's parameters start on a 64-float (256-byte) boundary.
const PARAM_ALIGN: usize = 64;

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    layers: Vec<Box<dyn Layer<B>>>,
    /// Each layer's state-dict name (`None`: no parameters or buffers).
    names: Vec<Option<String>>,
    /// [seed, step] for the ops that draw random numbers (dropout, augmentation);
    /// the trainer sets the step (see [`crate::random`]).
    pub rng: B::Buf<u32>,
    /// Training forward passes so far: BatchNorm's `num_batches_tracked`.
    pub batches_tracked: u64,
    /// shapes[0] is the per-sample input shape; shapes[i + 1] is layer i's output.
    shapes: Vec<Vec<usize>>,
    pub params: ParamStore<B>,
    /// acts[i]: output of layer i, room for `capacity` samples.
    acts: Vec<B::Buf<f32>>,
    /// dacts[i]: dL/d(output of layer i), for every layer but the last (the loss writes that one).
    dacts: Vec<B::Buf<f32>>,
    capacity: usize,
    grad_capacity: usize,
    /// Bumped whenever a buffer the ops address is replaced (recorded graphs
    /// that use the old ones must be recorded again).
    generation: u64,
}

impl<B: Backend> Model<B> {
    /// Builds the model and initializes it as PyTorch does by default
    /// (weights and biases uniform in ±1/sqrt(fan_in), i.e. Kaiming-uniform
    /// with a = sqrt(5)), from `seed`.
    pub fn new(backend: &B, config: &ModelConfig, seed: u64) -> Result<Self> {
        Self::with_init(backend, config, seed, Init::PyTorch)
    }

    /// Builds the model with the given initialization, from `seed`.
    pub fn with_init(backend: &B, config: &ModelConfig, seed: u64, init: Init) -> Result<Self> {
        let mut named = config.layers::<B>()?;
        let mut shapes = vec![INPUT_SHAPE.to_vec()];
        let mut entries = Vec::new();
        let mut total = 0usize;
        for (name, layer) in named.iter_mut() {
            let out = layer.build(shapes.last().expect("non-empty"))?;
            shapes.push(out);
            layer.init_buffers(backend)?;
            let specs = layer.param_specs();
            if specs.is_empty() {
                continue;
            }
            total = total.next_multiple_of(PARAM_ALIGN);
            let mut offsets = Vec::new();
            for spec in specs {
                let prefix = name.as_deref().unwrap_or(layer.kind());
                offsets.push(total);
                entries.push(ParamEntry {
                    name: format!("{prefix}.{}", spec.name),
                    shape: spec.shape.clone(),
                    offset: total,
                    fan_in: spec.fan_in,
                    fan_out: spec.fan_out,
                    init: spec.init,
                });
                total += spec.len();
            }
            layer.bind_params(&offsets);
        }
        if shapes.last() != Some(&vec![CLASSES]) {
            return Err(Error::config("model", format!("output shape is {:?}, expected [{CLASSES}]", shapes.last())));
        }
        let mut host = vec![0.0f32; total];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for e in &entries {
            let values = &mut host[e.offset..e.offset + e.len()];
            let is_bias = e.name.ends_with(".bias");
            if let Some(v) = e.init {
                values.fill(v);
                continue;
            }
            match init {
                Init::PyTorch => {
                    let bound = 1.0 / (e.fan_in as f32).sqrt();
                    values.iter_mut().for_each(|v| *v = rng.random_range(-bound..bound));
                }
                _ if is_bias => values.fill(0.0),
                Init::He => {
                    let std = (2.0 / e.fan_in as f32).sqrt();
                    values.iter_mut().for_each(|v| *v = std * standard_normal(&mut rng));
                }
                Init::Xavier => {
                    let bound = (6.0 / (e.fan_in + e.fan_out) as f32).sqrt();
                    values.iter_mut().for_each(|v| *v = rng.random_range(-bound..bound));
                }
            }
        }
        let params = ParamStore { data: backend.upload(&host)?, grads: backend.alloc(total)?, entries };
        let (names, layers) = named.into_iter().unzip();
        Ok(Model {
            config: config.clone(),
            layers,
            names,
            rng: backend.upload(&[crate::random::device_seed(seed), 0])?,
            batches_tracked: 0,
            shapes,
            params,
            acts: Vec::new(),
            dacts: Vec::new(),
            capacity: 0,
            grad_capacity: 0,
            generation: 0,
        })
    }

    /// Changes whenever a buffer of the model is replaced (see [`Backend::begin_capture`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The per-sample input shape, (1, 28, 28).
    pub fn input_shape(&self) -> &[usize] {
        &self.shapes[0]
    }

    pub fn input_len(&self) -> usize {
        self.shapes[0].iter().product()
    }

    pub fn classes(&self) -> usize {
        self.shapes.last().map_or(0, |s| s.iter().product())
    }

    fn out_len(&self, i: usize) -> usize {
        self.shapes[i + 1].iter().product()
    }

    /// Preallocates activations for batches of up to `n` samples. Forward calls
    /// this itself when a batch is larger than anything seen before.
    pub fn reserve(&mut self, backend: &B, n: usize) -> Result<()> {
        if n <= self.capacity {
            return Ok(());
        }
        self.acts = (0..self.layers.len()).map(|i| backend.alloc(n * self.out_len(i))).collect::<Result<_>>()?;
        for layer in &mut self.layers {
            layer.reserve(backend, n)?;
        }
        self.capacity = n;
        self.generation += 1;
        Ok(())
    }

    /// Preallocates activation gradients for training batches of up to `n`
    /// samples (forward-only use, such as evaluation, never needs them).
    pub fn reserve_backward(&mut self, backend: &B, n: usize) -> Result<()> {
        self.reserve(backend, n)?;
        if n <= self.grad_capacity {
            return Ok(());
        }
        self.dacts = (0..self.layers.len() - 1).map(|i| backend.alloc(n * self.out_len(i))).collect::<Result<_>>()?;
        self.grad_capacity = n;
        self.generation += 1;
        Ok(())
    }

    /// Inference: x: (n, 1, 28, 28) -> logits (n, classes), read with
    /// [`Model::logits`]. BatchNorm uses its running statistics, dropout is off.
    pub fn forward(&mut self, backend: &B, n: usize, x: View<'_, B, f32>) -> Result<()> {
        self.forward_mode(backend, n, x, false)
    }

    /// A training forward pass (batch statistics, dropout), to be followed by
    /// [`Model::backward`]. Counts towards `batches_tracked`.
    pub fn forward_train(&mut self, backend: &B, n: usize, x: View<'_, B, f32>) -> Result<()> {
        self.batches_tracked += 1;
        self.forward_mode(backend, n, x, true)
    }

    fn forward_mode(&mut self, backend: &B, n: usize, x: View<'_, B, f32>, training: bool) -> Result<()> {
        crate::error::check_len("model forward", "input", n * self.input_len(), x.len)?;
        self.reserve(backend, n)?;
        let ctx = Ctx { backend, n, params: &self.params.data, training, rng: View::all(&self.rng) };
        for i in 0..self.layers.len() {
            let (before, after) = self.acts.split_at_mut(i);
            let input = if i == 0 { x } else { View::prefix(&before[i - 1], n * self.shapes[i].iter().product::<usize>())? };
            let output = ViewMut::prefix(&mut after[0], n * self.shapes[i + 1].iter().product::<usize>())?;
            self.layers[i].forward(&ctx, input, output)?;
        }
        Ok(())
    }

    /// The logits of the last forward pass: (n, classes).
    pub fn logits(&self, n: usize) -> Result<View<'_, B, f32>> {
        let last = self.acts.last().ok_or_else(|| Error::shape("model", "logits", "a forward pass first", "none"))?;
        View::prefix(last, n * self.classes())
    }

    /// Back-propagates dlogits (n, classes) through the network, overwriting
    /// every parameter gradient. `x` must be the input of the last forward pass.
    pub fn backward(&mut self, backend: &B, n: usize, x: View<'_, B, f32>, dlogits: View<'_, B, f32>) -> Result<()> {
        crate::error::check_len("model backward", "dlogits", n * self.classes(), dlogits.len)?;
        if n > self.capacity.min(self.grad_capacity) {
            return Err(Error::shape(
                "model backward",
                "batch",
                format!("<= {} (see Model::reserve_backward)", self.grad_capacity.min(self.capacity)),
                n,
            ));
        }
        let ctx = Ctx { backend, n, params: &self.params.data, training: true, rng: View::all(&self.rng) };
        let len = |shape: &Vec<usize>| n * shape.iter().product::<usize>();
        for i in (0..self.layers.len()).rev() {
            let input = if i == 0 { x } else { View::prefix(&self.acts[i - 1], len(&self.shapes[i]))? };
            let output = View::prefix(&self.acts[i], len(&self.shapes[i + 1]))?;
            let (below, above) = self.dacts.split_at_mut(i);
            let dy = if i + 1 == self.layers.len() { dlogits } else { View::prefix(&above[0], len(&self.shapes[i + 1]))? };
            let dx = match below.last_mut() {
                Some(buf) => Some(ViewMut::prefix(buf, len(&self.shapes[i]))?),
                None => None,
            };
            self.layers[i].backward(&ctx, &mut self.params.grads, input, output, dy, dx)?;
        }
        Ok(())
    }

    /// The parameters, then each layer's buffers (BatchNorm's running
    /// statistics and `num_batches_tracked`), as named host tensors.
    pub fn state_dict(&self, backend: &B) -> Result<Vec<NamedTensor>> {
        let all = backend.download(View::all(&self.params.data))?;
        let mut out: Vec<NamedTensor> =
            self.params.entries.iter().map(|e| (e.name.clone(), e.shape.clone(), all[e.offset..e.offset + e.len()].to_vec())).collect();
        for (name, layer) in self.names.iter().zip(&self.layers) {
            let buffers = layer.buffers();
            if buffers.is_empty() {
                continue;
            }
            let prefix = name.as_deref().unwrap_or(layer.kind());
            for b in buffers {
                out.push((format!("{prefix}.{}", b.name), b.shape, backend.download(b.data)?));
            }
            // PyTorch keeps this count per BatchNorm layer (an int64 scalar; see checkpoint.rs).
            out.push((format!("{prefix}.{BATCHES_TRACKED}"), vec![], vec![self.batches_tracked as f32]));
        }
        Ok(out)
    }

    /// Replaces the parameters and buffers with named host tensors. Every name
    /// must be present with the right shape and no other may be; nothing
    /// changes if any does not fit. `source` names where they came from, for errors.
    pub fn load_state_dict(&mut self, backend: &B, tensors: &[NamedTensor], source: &std::path::Path) -> Result<()> {
        let err = |msg: String| Error::Checkpoint { path: source.to_path_buf(), msg };
        let find = |name: &str, shape: &[usize]| -> Result<&Vec<f32>> {
            let (_, got, data) = tensors
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| err(format!("missing tensor `{name}` (shape {shape:?}) needed by {}", self.config.name())))?;
            if got != shape || data.len() != shape.iter().product::<usize>() {
                return Err(err(format!("tensor `{name}` has shape {got:?}, the model needs {shape:?}")));
            }
            Ok(data)
        };
        let mut host = vec![0.0f32; self.params.len()];
        let mut expected: Vec<String> = Vec::new();
        for e in &self.params.entries {
            host[e.offset..e.offset + e.len()].copy_from_slice(find(&e.name, &e.shape)?);
            expected.push(e.name.clone());
        }
        // Buffers: every one checked before any is written.
        let mut buffers: Vec<(usize, &'static str, Vec<f32>)> = Vec::new();
        let mut tracked = None;
        for (i, (name, layer)) in self.names.iter().zip(&self.layers).enumerate() {
            let prefix = name.as_deref().unwrap_or(layer.kind());
            let list = layer.buffers();
            for b in &list {
                let full = format!("{prefix}.{}", b.name);
                buffers.push((i, b.name, find(&full, &b.shape)?.clone()));
                expected.push(full);
            }
            if !list.is_empty() {
                let full = format!("{prefix}.{BATCHES_TRACKED}");
                let count = find(&full, &[])?[0];
                if !(count >= 0.0 && count.fract() == 0.0) {
                    return Err(err(format!("tensor `{full}` is {count}, expected a count")));
                }
                tracked = Some(count as u64);
                expected.push(full);
            }
        }
        if let Some((extra, _, _)) = tensors.iter().find(|(name, _, _)| !expected.contains(name)) {
            return Err(err(format!("unexpected tensor `{extra}`: not a parameter or buffer of {}", self.config.name())));
        }
        backend.write(ViewMut::all(&mut self.params.data), &host)?;
        for (i, name, data) in buffers {
            self.layers[i].load_buffer(backend, name, &data)?;
        }
        self.batches_tracked = tracked.unwrap_or(0);
        Ok(())
    }

    pub fn layer_kinds(&self) -> Vec<&'static str> {
        self.layers.iter().map(|l| l.kind()).collect()
    }
}
