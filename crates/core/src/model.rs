//! Models: a [`ModelConfig`] names a built-in architecture (LeNet-5, MLP,
//! mnist-cnn, ResNets) and expands into a [`Graph`] for a given input shape
//! and class count; a [`Model`] runs any graph on a backend, with its
//! parameters in one buffer and its activations preallocated. Models of your
//! own are built with [`crate::graph::GraphBuilder`] and run the same way.

use crate::backend::{Backend, NarrowEdges, Precision, View, ViewMut};
use crate::error::{Error, Result};
use crate::graph::{Conv, Graph, GraphBuilder, NodeId, Op};
use crate::layers::{Conv2d, Conv2dBatchNorm, Conv2dMaxPool, Ctx, Layer, MaxPool2d};
use crate::Storage;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// MNIST-style input: one channel of 28x28 (what checkpoints without a stored graph were trained on).
pub const MNIST_INPUT: [usize; 3] = [1, 28, 28];
pub const MNIST_CLASSES: usize = 10;

/// Built-in architectures. Serialized (JSON) into every checkpoint beside the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// LeNet-5 as PyTorch users write it: conv C->6 5x5 pad 2, ReLU, maxpool 2;
    /// conv 6->16 5x5, ReLU, maxpool 2; flatten; ->120, ReLU; 120->84, ReLU; 84->classes.
    Lenet5,
    /// Fully connected layers with ReLU between them. `sizes` includes the input
    /// (784 for MNIST) and the output (the classes): `[784, 256, 128, 10]`.
    Mlp { sizes: Vec<usize> },
    /// The strong MNIST model: five 3x3 conv-BatchNorm-ReLU blocks of `width`,
    /// `width`, 2`width`, 2`width`, 4`width` channels (max-pool 2 after the
    /// second and fourth), global average pooling, dropout `dropout`, and one
    /// Linear to the classes. PyTorch names: conv1..conv5, bn1..bn5, fc.
    MnistCnn {
        #[serde(default = "default_cnn_width")]
        width: usize,
        #[serde(default)]
        dropout: f32,
    },
    /// torchvision's ResNet-18 (names and layout) with the CIFAR stem: a 3x3
    /// conv of stride 1 and no max-pool; 11.2M parameters.
    Resnet18,
    /// He et al.'s CIFAR ResNets (2016, section 4.2): depth 6n+2 (20, 32, 44,
    /// 56, 110), three stages of n basic blocks with 16, 32, 64 channels;
    /// shortcuts that change shape are 1x1 conv + BatchNorm (option B), named
    /// like torchvision's (`layer2.0.downsample.0`).
    CifarResnet { depth: usize },
    /// A CIFAR-10 speed-run network in the shape of airbench94's: a frozen 2x2
    /// whitening conv (set from training images) and GELU; three blocks of
    /// conv 3x3 - max-pool 2 - BatchNorm - GELU - conv 3x3 - BatchNorm - GELU
    /// of `widths` channels (convs without bias, their first C_in filters
    /// identity at init; BatchNorm eps 1e-12, momentum 0.4); a 3x3 max-pool;
    /// a bias-free Linear scaled by 1/9. 1.97M parameters at 64, 256, 256.
    CifarSpeed {
        #[serde(default = "default_speed_widths")]
        widths: [usize; 3],
    },
    /// A graph built in code; its architecture is the graph stored beside this.
    Custom { name: String },
}

fn default_speed_widths() -> [usize; 3] {
    ModelConfig::SPEED_WIDTHS
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

    /// The speed-run network's block widths (airbench94's).
    pub const SPEED_WIDTHS: [usize; 3] = [64, 256, 256];

    /// The speed-run network with blocks of `w`, 4`w` and 4`w` channels.
    pub fn speed_widths(w: usize) -> Self {
        ModelConfig::CifarSpeed { widths: [w, 4 * w, 4 * w] }
    }

    /// The strong model's (width, dropout) in its recipe for `dataset`: 32 and
    /// 0.2 for digits; 48 and 0.3 for Fashion-MNIST.
    pub fn mnist_cnn_defaults(dataset: &str) -> (usize, f32) {
        if dataset == "fashion-mnist" {
            (48, 0.3)
        } else {
            (Self::CNN_WIDTH, 0.2)
        }
    }

    pub fn name(&self) -> String {
        match self {
            ModelConfig::Lenet5 => "lenet5".into(),
            ModelConfig::Mlp { .. } => "mlp".into(),
            ModelConfig::MnistCnn { .. } => "mnist-cnn".into(),
            ModelConfig::Resnet18 => "resnet18".into(),
            ModelConfig::CifarResnet { depth } => format!("resnet{depth}"),
            ModelConfig::CifarSpeed { .. } => "cifar-speed".into(),
            ModelConfig::Custom { name } => name.clone(),
        }
    }

    /// Checks the settings that need no input shape: width, dropout, depth.
    pub fn validate(&self) -> Result<()> {
        match *self {
            ModelConfig::MnistCnn { width, dropout } => {
                if width == 0 {
                    return Err(Error::config("--width", "must be at least 1"));
                }
                if !(0.0..1.0).contains(&dropout) {
                    return Err(Error::config("--dropout", format!("must be in [0, 1), got {dropout}")));
                }
            }
            ModelConfig::CifarResnet { depth } if depth < 8 || (depth - 2) % 6 != 0 => {
                return Err(Error::config("resnet depth", format!("must be 6n+2 (20, 32, 44, 56, 110), got {depth}")));
            }
            ModelConfig::CifarSpeed { widths } if widths.contains(&0) => {
                return Err(Error::config("--width", format!("cifar-speed block widths must be at least 1, got {widths:?}")));
            }
            _ => {}
        }
        Ok(())
    }

    /// The architecture for per-sample inputs of `input` shape and `classes` outputs.
    pub fn graph(&self, input: &[usize], classes: usize) -> Result<Graph> {
        self.validate()?;
        let mut g = GraphBuilder::new(&self.name(), input);
        let x = g.input();
        let logits = match self {
            // Each conv's ReLU is fused into the max-pool after it (they commute).
            ModelConfig::Lenet5 => {
                let x = g.conv2d("conv1", x, Conv::new(6, 5).pad(2))?;
                let x = g.relu_max_pool(x, 2, 2)?;
                let x = g.conv2d("conv2", x, Conv::new(16, 5))?;
                let x = g.relu_max_pool(x, 2, 2)?;
                let x = g.flatten(x)?;
                let x = g.linear("fc1", x, 120)?;
                let x = g.relu(x)?;
                let x = g.linear("fc2", x, 84)?;
                let x = g.relu(x)?;
                g.linear("fc3", x, classes)?
            }
            ModelConfig::Mlp { sizes } => {
                let input_len: usize = input.iter().product();
                if sizes.len() < 2 || sizes[0] != input_len || sizes[sizes.len() - 1] != classes || sizes.contains(&0) {
                    return Err(Error::config(
                        "MLP sizes",
                        format!("need at least two non-zero sizes, the first {input_len} (the image) and the last {classes} (the classes); got {sizes:?}"),
                    ));
                }
                let mut x = g.flatten(x)?;
                for (i, &size) in sizes[1..].iter().enumerate() {
                    if i > 0 {
                        x = g.relu(x)?;
                    }
                    x = g.linear(&format!("fc{}", i + 1), x, size)?;
                }
                x
            }
            &ModelConfig::MnistCnn { width: w, dropout } => {
                let mut x = x;
                for (i, c_out) in [w, w, 2 * w, 2 * w, 4 * w].into_iter().enumerate() {
                    x = g.conv2d(&format!("conv{}", i + 1), x, Conv::new(c_out, 3).pad(1))?;
                    x = g.batch_norm_relu(&format!("bn{}", i + 1), x)?;
                    if i == 1 || i == 3 {
                        x = g.max_pool(x, 2, 2)?;
                    }
                }
                x = g.global_avg_pool(x)?;
                if dropout > 0.0 {
                    x = g.dropout(x, dropout)?;
                }
                g.linear("fc", x, classes)?
            }
            ModelConfig::Resnet18 => resnet(&mut g, 64, &[(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], classes)?,
            &ModelConfig::CifarResnet { depth } => {
                let n = (depth - 2) / 6;
                resnet(&mut g, 16, &[(16, n, 1), (32, n, 2), (64, n, 2)], classes)?
            }
            ModelConfig::CifarSpeed { widths } => speed_net(&mut g, widths, classes)?,
            ModelConfig::Custom { name } => {
                return Err(Error::config(format!("model `{name}`"), "a custom model's architecture is its stored graph"))
            }
        };
        g.finish(logits)
    }

    /// Initial values that differ from the init scheme's: the speed-run
    /// network's 3x3 convs start with their first C_in filters the identity
    /// (`torch.nn.init.dirac_` on `weight[:C_in]`, as airbench does) and the
    /// whitening bias starts at 0.
    fn adjust_init(&self, entries: &[ParamEntry], host: &mut [f32]) {
        if !matches!(self, ModelConfig::CifarSpeed { .. }) {
            return;
        }
        for e in entries.iter().filter(|e| e.name == "whiten.bias") {
            host[e.offset..e.offset + e.len()].fill(0.0);
        }
        for e in entries.iter().filter(|e| e.name.ends_with(".weight") && e.shape.len() == 4) {
            let [c_out, c_in, kh, kw] = e.shape[..] else { continue };
            if e.name.starts_with("whiten") {
                continue;
            }
            let w = &mut host[e.offset..e.offset + e.len()];
            for o in 0..c_out.min(c_in) {
                let filter = &mut w[o * c_in * kh * kw..(o + 1) * c_in * kh * kw];
                filter.fill(0.0);
                filter[o * kh * kw + kh / 2 * kw + kw / 2] = 1.0;
            }
        }
    }
}

/// See [`ModelConfig::CifarSpeed`]; PyTorch-style names `whiten`,
/// `block1.conv1`, `block1.norm1`, ..., `fc`.
fn speed_net(g: &mut GraphBuilder, widths: &[usize; 3], classes: usize) -> Result<NodeId> {
    let x = g.input();
    let x = g.whiten("whiten", x, 2)?;
    let mut x = g.gelu(x)?;
    let norm = |g: &mut GraphBuilder, name: String, x| -> Result<NodeId> {
        let channels = g.shape(x)[0];
        // GELU fused into the norm: no separate pre-activation tensor to store and reread.
        let op = crate::graph::Op::BatchNorm { channels, dims: 2, relu: false, gelu: true, eps: Some(1e-12), momentum: Some(0.4) };
        g.push(Some(&name), op, &[x])
    };
    for (b, &width) in widths.iter().enumerate() {
        let name = |part: &str| format!("block{}.{part}", b + 1);
        x = g.conv2d(&name("conv1"), x, Conv::new(width, 3).pad(1).no_bias())?;
        x = g.max_pool(x, 2, 2)?;
        x = norm(g, name("norm1"), x)?;
        x = g.conv2d(&name("conv2"), x, Conv::new(width, 3).pad(1).no_bias())?;
        x = norm(g, name("norm2"), x)?;
    }
    let x = g.max_pool(x, 3, 3)?;
    let x = g.flatten(x)?;
    let in_features = g.shape(x)[0];
    g.push(Some("fc"), crate::graph::Op::Linear { in_features, out_features: classes, bias: false, scale: 1.0 / 9.0 }, &[x])
}

/// A ResNet with the CIFAR stem: conv 3x3 (`stem` channels) + BN + ReLU, then
/// stages of (channels, blocks, first stride) of basic blocks, global average
/// pooling and `fc`; torchvision's names (`layer1.0.conv1`, `layer2.0.downsample.0`).
fn resnet(g: &mut GraphBuilder, stem: usize, stages: &[(usize, usize, usize)], classes: usize) -> Result<NodeId> {
    let x = g.input();
    let x = g.conv2d("conv1", x, Conv::new(stem, 3).pad(1).no_bias())?;
    let mut x = g.batch_norm_relu("bn1", x)?;
    for (s, &(channels, blocks, stride)) in stages.iter().enumerate() {
        for b in 0..blocks {
            x = basic_block(g, &format!("layer{}.{b}", s + 1), x, channels, if b == 0 { stride } else { 1 })?;
        }
    }
    let x = g.global_avg_pool(x)?;
    g.linear("fc", x, classes)
}

/// relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut a 1x1
/// conv + BN where the shape changes.
pub fn basic_block(g: &mut GraphBuilder, name: &str, x: NodeId, channels: usize, stride: usize) -> Result<NodeId> {
    let c_in = g.shape(x).first().copied().unwrap_or(0);
    let y = g.conv2d(&format!("{name}.conv1"), x, Conv::new(channels, 3).stride(stride).pad(1).no_bias())?;
    let y = g.batch_norm_relu(&format!("{name}.bn1"), y)?;
    let y = g.conv2d(&format!("{name}.conv2"), y, Conv::new(channels, 3).pad(1).no_bias())?;
    let y = g.batch_norm(&format!("{name}.bn2"), y)?;
    let shortcut = if stride != 1 || c_in != channels {
        let s = g.conv2d(&format!("{name}.downsample.0"), x, Conv::new(channels, 1).stride(stride).no_bias())?;
        g.batch_norm(&format!("{name}.downsample.1"), s)?
    } else {
        x
    };
    let y = g.add(y, shortcut)?;
    g.relu(y)
}

/// The name of BatchNorm's step counter in PyTorch state dicts.
pub const BATCHES_TRACKED: &str = "num_batches_tracked";

/// A host copy of a named parameter tensor: (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

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

/// One node of a built model: its layer (`None` for `add` and absorbed
/// nodes), the kind of its op, inputs and state-dict name.
struct NodeRt<B: Backend> {
    layer: Option<Box<dyn Layer<B>>>,
    kind: &'static str,
    inputs: Vec<NodeId>,
    name: Option<String>,
    /// The node before runs this one's op fused with its own (see
    /// [`Conv2dMaxPool`]) and writes this node's output; this one does nothing.
    absorbed: bool,
}

impl<B: Backend> NodeRt<B> {
    fn kind(&self) -> &'static str {
        self.kind
    }
    /// The prefix of its tensors' names ("layer1.0.conv1").
    fn prefix(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind())
    }
}

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    /// The architecture (stored in checkpoints).
    pub graph: Graph,
    nodes: Vec<NodeRt<B>>,
    /// [seed, step] for the ops that draw random numbers (dropout, augmentation);
    /// the trainer sets the step (see [`crate::random`]).
    pub rng: B::Buf<u32>,
    /// Training forward passes so far: BatchNorm's `num_batches_tracked`.
    pub batches_tracked: u64,
    /// shapes[0] is the per-sample input shape; shapes[i + 1] is node i's output.
    shapes: Vec<Vec<usize>>,
    pub params: ParamStore<B>,
    /// acts[i]: output of node i, room for `capacity` samples.
    acts: Vec<B::Buf<f32>>,
    /// dacts[i]: dL/d(output of node i), for every node but the last (the loss writes that one).
    dacts: Vec<B::Buf<f32>>,
    /// Where a second consumer of a tensor writes its gradient before it is summed in.
    grad_scratch: Option<B::Buf<f32>>,
    /// Elements per sample of each tensor (shapes' products), and which tensors'
    /// gradients backward has written so far (kept so that a step allocates nothing).
    tensor_lens: Vec<usize>,
    written: Vec<bool>,
    capacity: usize,
    grad_capacity: usize,
    /// Bumped whenever a buffer the ops address is replaced (recorded graphs
    /// that use the old ones must be recorded again).
    generation: u64,
    /// Per node: it or a node before it has a parameter that trains (see [`Model::freeze`]).
    learns_upstream: Vec<bool>,
    /// The precision the layers' narrow edges were chosen for (see [`Model::narrow_edges`]),
    /// and whether any may be narrow (see [`Model::allow_narrow_edges`]).
    edges_for: Option<Precision>,
    narrow_allowed: bool,
    /// Per tensor (0: the input, i + 1: node i's output): whether it travels narrow.
    narrow: Vec<bool>,
}

impl<B: Backend> Model<B> {
    /// Builds a built-in architecture for inputs of `input` shape and `classes`
    /// classes, initialized as PyTorch does by default from `seed`.
    pub fn new(backend: &B, config: &ModelConfig, input: &[usize], classes: usize, seed: u64) -> Result<Self> {
        Self::with_init(backend, config, input, classes, seed, Init::PyTorch)
    }

    /// Builds a built-in architecture with the given initialization, from `seed`.
    pub fn with_init(backend: &B, config: &ModelConfig, input: &[usize], classes: usize, seed: u64, init: Init) -> Result<Self> {
        Self::build(backend, config.clone(), config.graph(input, classes)?, seed, init)
    }

    /// Builds a model from a graph of your own (see [`crate::graph::GraphBuilder`]).
    pub fn from_graph(backend: &B, graph: Graph, seed: u64, init: Init) -> Result<Self> {
        Self::build(backend, ModelConfig::Custom { name: graph.name.clone() }, graph, seed, init)
    }

    /// Builds `graph` (the architecture `config` names) and initializes it.
    pub fn build(backend: &B, config: ModelConfig, graph: Graph, seed: u64, init: Init) -> Result<Self> {
        let shapes = graph.shapes()?;
        if shapes.last().is_none_or(|s| s.len() != 1) {
            return Err(Error::config(
                format!("model `{}`", graph.name),
                format!("output shape is {:?}, expected (classes)", shapes.last()),
            ));
        }
        let mut nodes = Vec::new();
        let mut layout = ParamLayout { model: graph.name.clone(), entries: Vec::new(), total: 0 };
        let absorbed = absorbed_nodes(&graph);
        for (i, node) in graph.nodes.iter().enumerate() {
            let next = graph.nodes.get(i + 1).filter(|_| absorbed[i + 1]);
            let input = &shapes[node.inputs[0].0];
            let layer = match (absorbed[i], next) {
                // The node before runs this one's op; an add runs the ReLU after it itself.
                (true, _) => None,
                (false, Some(_)) if node.op == Op::Add => None,
                (false, Some(next)) => Some(fused_pair::<B>(backend, (i, node), next, input, &mut layout)?),
                (false, None) => match node.op.layer::<B>()? {
                    Some(mut layer) => {
                        layer.build(input)?;
                        layer.init_buffers(backend)?;
                        layout.register(layer.as_mut(), (i, node))?;
                        Some(layer)
                    }
                    None => None,
                },
            };
            let kind = match &layer {
                Some(layer) => layer.kind(),
                None if node.op == Op::Add && next.is_some() => "add+relu",
                None => node.op.layer::<B>()?.map_or("add", |l| l.kind()),
            };
            nodes.push(NodeRt { layer, kind, inputs: node.inputs.clone(), name: node.name.clone(), absorbed: absorbed[i] });
        }
        let ParamLayout { entries, total, .. } = layout;
        let mut host = initial_values(&entries, total, seed, init);
        config.adjust_init(&entries, &mut host);
        let params = ParamStore { data: backend.upload(&host)?, grads: backend.alloc(total)?, entries };
        let tensor_lens = shapes.iter().map(|s| s.iter().product()).collect();
        let written = vec![false; graph.nodes.len()];
        let graph_len = graph.nodes.len();
        Ok(Model {
            tensor_lens,
            written,
            config,
            graph,
            nodes,
            rng: backend.upload(&[crate::random::device_seed(seed), 0])?,
            batches_tracked: 0,
            shapes,
            params,
            acts: Vec::new(),
            dacts: Vec::new(),
            grad_scratch: None,
            capacity: 0,
            grad_capacity: 0,
            generation: 0,
            learns_upstream: vec![true; graph_len],
            edges_for: None,
            narrow_allowed: true,
            narrow: vec![false; graph_len + 1],
        })
    }

    /// Changes whenever a buffer of the model is replaced (see [`Backend::begin_capture`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The per-sample input shape, e.g. (1, 28, 28).
    pub fn input_shape(&self) -> &[usize] {
        &self.shapes[0]
    }

    pub fn input_len(&self) -> usize {
        self.shapes[0].iter().product()
    }

    pub fn classes(&self) -> usize {
        self.shapes.last().map_or(0, |s| s.iter().product())
    }

    /// Elements per sample of tensor `t` (0: the input, i + 1: node i's output).
    fn tensor_len(&self, t: usize) -> usize {
        self.tensor_lens[t]
    }

    /// Elements per sample that node i's output buffers hold: none for a node
    /// fused with the next one (its output never leaves the fused op; 1 keeps the buffer valid).
    fn kept_len(&self, i: usize) -> usize {
        match self.nodes.get(i + 1) {
            Some(next) if next.absorbed => 1,
            _ => self.tensor_len(i + 1),
        }
    }

    /// Preallocates activations for batches of up to `n` samples. Forward calls
    /// this itself when a batch is larger than anything seen before.
    pub fn reserve(&mut self, backend: &B, n: usize) -> Result<()> {
        if n <= self.capacity {
            return Ok(());
        }
        self.acts = (0..self.nodes.len()).map(|i| backend.alloc(n * self.kept_len(i))).collect::<Result<_>>()?;
        // An absorbed node's layer never runs: its fused neighbour holds what it needs.
        for layer in self.nodes.iter_mut().filter(|node| !node.absorbed).filter_map(|node| node.layer.as_mut()) {
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
        let last = self.nodes.len() - 1;
        self.dacts = (0..last).map(|i| backend.alloc(n * self.kept_len(i))).collect::<Result<_>>()?;
        for layer in self.nodes.iter_mut().filter(|node| !node.absorbed).filter_map(|node| node.layer.as_mut()) {
            layer.reserve_backward(backend, n)?;
        }
        // A tensor read by several nodes gets its gradients summed through a scratch buffer.
        let reads = self.graph.readers();
        // (An add+relu masks its gradient there first where both inputs are one tensor.)
        let add_relu = |t: usize| self.graph.nodes[t - 1].op == Op::Add && self.nodes.get(t).is_some_and(|n| n.absorbed);
        let fan_out = (1..self.shapes.len()).filter(|&t| reads[t] > 1 || add_relu(t)).map(|t| self.tensor_len(t)).max();
        self.grad_scratch = fan_out.map(|len| backend.alloc(n * len)).transpose()?;
        self.grad_capacity = n;
        self.generation += 1;
        Ok(())
    }

    /// Inference: x: (n, input...) -> logits (n, classes), read with
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
        self.narrow_edges(backend);
        let Model { nodes, acts, params, rng, tensor_lens, narrow, .. } = self;
        let len = |t: usize| n * tensor_lens[t];
        let ctx = Ctx { backend, n, params: &params.data, training, rng: View::all(rng) };
        let outputs = output_nodes(nodes);
        for (i, node) in nodes.iter_mut().enumerate() {
            if node.absorbed {
                continue;
            }
            let out = outputs[i];
            let (before, after) = acts.split_at_mut(out);
            // x: the model's input, or an earlier node's output
            let tensor = |t: NodeId| match t.node() {
                None => Ok(x),
                Some(s) => View::prefix(&before[s], len(t.0)),
            };
            let y = ViewMut::prefix(&mut after[0], len(out + 1))?;
            let (a, b) = (tensor(node.inputs[0])?, || tensor(node.inputs[1]));
            match node.layer.as_mut() {
                Some(layer) => layer.forward(&ctx, a, y)?,
                // add, or add+relu when it absorbed the ReLU after it
                None if out > i && narrow[out + 1] => backend.add_relu_narrow(a, b()?, y)?,
                None if out > i => backend.add_relu(a, b()?, y)?,
                None => backend.add(a, b()?, y)?,
            }
        }
        Ok(())
    }

    /// Chooses, for the backend's current precision, the tensors that travel
    /// narrow (see [`NarrowEdges`] and [`narrow_tensors`]), so that neither
    /// side widens or narrows them (ResNet's activations at 16 bits on CUDA).
    fn narrow_edges(&mut self, backend: &B) {
        if self.edges_for == Some(backend.precision()) {
            return;
        }
        self.edges_for = Some(backend.precision());
        let outputs = output_nodes(&self.nodes);
        let adds = self.narrow_allowed && backend.narrow_residuals();
        let offer = |(j, node): (usize, &NodeRt<B>)| match &node.layer {
            _ if !self.narrow_allowed || node.absorbed => NarrowEdges::WIDE,
            Some(layer) => layer.narrow_edges(backend),
            // An add + ReLU.
            None if adds && outputs[j] > j => NarrowEdges { x: true, y: true },
            None => NarrowEdges::WIDE,
        };
        let offered: Vec<NarrowEdges> = self.nodes.iter().enumerate().map(offer).collect();
        self.narrow = narrow_tensors(&self.nodes, &offered);
        let narrow = &self.narrow;
        for (j, node) in self.nodes.iter_mut().enumerate() {
            let (Some(layer), Some(input)) = (node.layer.as_mut(), node.inputs.first()) else { continue };
            layer.set_narrow_edges(NarrowEdges { x: narrow[input.0], y: narrow[outputs[j] + 1] });
        }
        // Recorded steps ran the old kernels.
        self.generation += 1;
    }

    /// Lets the backend keep the tensors between fused ops that offer it narrow
    /// (the default, see [`NarrowEdges`]), or keeps every activation fp32 (N, C, H, W).
    pub fn allow_narrow_edges(&mut self, allow: bool) {
        (self.narrow_allowed, self.edges_for) = (allow, None);
    }

    /// How many tensors the last forward passed narrow.
    pub fn narrow_tensors(&self) -> usize {
        self.narrow.iter().filter(|&&n| n).count()
    }

    /// The logits of the last forward pass: (n, classes).
    pub fn logits(&self, n: usize) -> Result<View<'_, B, f32>> {
        let last = self.acts.last().ok_or_else(|| Error::shape("model", "logits", "a forward pass first", "none"))?;
        View::prefix(last, n * self.classes())
    }

    /// Back-propagates dlogits (n, classes) through the graph, overwriting
    /// every parameter gradient. `x` must be the input of the last forward pass.
    /// Each tensor's gradient is written by the last node that reads it (the
    /// first one backward visits) and summed into by the others.
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
        let last = self.nodes.len() - 1;
        let Model { nodes, acts, dacts, grad_scratch, params, rng, tensor_lens, written, learns_upstream: learns, narrow, .. } = self;
        let len = |t: usize| n * tensor_lens[t];
        let ctx = Ctx { backend, n, params: &params.data, training: true, rng: View::all(rng) };
        written.fill(false);
        let outputs = output_nodes(nodes);
        for (i, node) in nodes.iter_mut().enumerate().rev() {
            // Nothing at or before this node (a fused pair: its second node) learns: neither its
            // parameter gradients nor dx are needed.
            let out = outputs[i];
            if !learns[out] || node.absorbed {
                continue;
            }
            let (below, above) = dacts.split_at_mut(i.min(last));
            // dy: (n, output of node `out`: this one's, or the one it is fused with)
            let dy = if out == last { dlogits } else { View::prefix(&above[out - i], len(out + 1))? };
            let tensor = |t: NodeId| match t.node() {
                None => Ok(x),
                Some(s) => View::prefix(&acts[s], len(t.0)),
            };
            // The node that computes tensor t, when something at or before it learns (else dx is not needed).
            let learner = |t: &NodeId| t.node().filter(|&s| learns[s]);
            let Some(layer) = node.layer.as_mut() else {
                // An add has two inputs: the learning ones, without allocating in the step.
                let (mut learners, mut count) = ([0usize; 2], 0);
                for s in node.inputs.iter().filter_map(learner) {
                    (learners[count], count) = (s, count + 1);
                }
                let y = View::prefix(&acts[out], len(out + 1))?;
                let relu_y = (out > i).then_some(y);
                let sums = Sums { narrow: narrow[out + 1] };
                add_backward(backend, sums, relu_y, dy, (below, written), &learners[..count], len, grad_scratch.as_mut())?;
                continue;
            };
            let t = node.inputs[0];
            let (input, output) = (tensor(t)?, View::prefix(&acts[out], len(out + 1))?);
            match learner(&t) {
                None => layer.backward(&ctx, &mut params.grads, input, output, dy, None)?,
                Some(s) if !std::mem::replace(&mut written[s], true) => {
                    let dx = ViewMut::prefix(&mut below[s], len(t.0))?;
                    layer.backward(&ctx, &mut params.grads, input, output, dy, Some(dx))?
                }
                Some(s) => {
                    // A second reader's gradient: added in place where the layer can, else through the scratch.
                    let dx = ViewMut::prefix(&mut below[s], len(t.0))?;
                    if layer.backward_adding_dx(&ctx, &mut params.grads, input, output, dy, dx)? {
                        continue;
                    }
                    let scratch =
                        grad_scratch.as_mut().ok_or_else(|| Error::shape("model backward", "gradient scratch", "allocated", "none"))?;
                    layer.backward(&ctx, &mut params.grads, input, output, dy, Some(ViewMut::prefix(scratch, len(t.0))?))?;
                    let sum = ViewMut::prefix(&mut below[s], len(t.0))?;
                    Sums { narrow: narrow[t.0] }.give(backend, View::prefix(scratch, len(t.0))?, sum, &mut true)?;
                }
            }
        }
        Ok(())
    }

    /// Marks the parameters that will not be updated (`is_frozen` of their
    /// name), so that backward skips what only they need: a node none of whose
    /// ancestors (itself included) has a trainable parameter gets no backward
    /// at all, and the node after it computes no dx (the speed network's frozen
    /// whitening layer saves the next conv's data gradient and a GELU backward).
    /// Frozen gradients then keep old values.
    pub fn freeze(&mut self, is_frozen: impl Fn(&str) -> bool) {
        let mut learns = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let prefix = node.name.as_deref().map(|p| format!("{p}."));
            let own = self.params.entries.iter().filter(|e| prefix.as_deref().is_some_and(|p| e.name.starts_with(p)));
            let trains = own.into_iter().any(|e| !is_frozen(&e.name));
            let upstream = node.inputs.iter().any(|t| t.node().is_some_and(|s| learns[s]));
            learns.push(trains || upstream);
        }
        if self.learns_upstream != learns {
            // A recorded step ran the old set of backward ops.
            self.generation += 1;
            self.learns_upstream = learns;
        }
    }

    /// Every float the model keeps, as windows to average (see
    /// [`crate::lookahead`]): the parameter buffer, then each layer's buffers.
    pub fn averaged_state(&mut self) -> Vec<ViewMut<'_, B, f32>> {
        let mut out = vec![ViewMut::all(&mut self.params.data)];
        for layer in self.nodes.iter_mut().filter_map(|node| node.layer.as_mut()) {
            out.extend(layer.buffers_mut());
        }
        out
    }

    /// Data-dependent initialization: sets the filters of each whitening conv
    /// that reads the model's input (see [`crate::graph::Op::Whiten`]) from
    /// `images` (n, input...), normalized as the model sees them. A model
    /// without one is left as it is. Returns whether anything was set.
    pub fn init_from_data(&mut self, backend: &B, images: &[f32]) -> Result<bool> {
        let shape: [usize; 3] = self.input_shape().try_into().map_err(|_| Error::config("whitening", "needs (C, H, W) inputs"))?;
        let mut done = false;
        for node in &self.graph.nodes {
            let crate::graph::Op::Whiten { kernel, .. } = node.op else { continue };
            if node.inputs[0] != NodeId::INPUT {
                return Err(Error::config(node.label(), "a whitening conv must read the model's input"));
            }
            let name = format!("{}.weight", node.name.as_deref().unwrap_or_default());
            let entry = self.params.entries.iter().find(|e| e.name == name).ok_or_else(|| Error::config(node.label(), "has no weight"))?;
            let filters = crate::whiten::whitening_filters(images, shape, kernel, crate::whiten::EPS);
            backend.write(ViewMut::range(&mut self.params.data, entry.offset, entry.len())?, &filters)?;
            done = true;
        }
        Ok(done)
    }

    /// The parameters, then each layer's buffers (BatchNorm's running
    /// statistics and `num_batches_tracked`), as named host tensors.
    pub fn state_dict(&self, backend: &B) -> Result<Vec<NamedTensor>> {
        let all = backend.download(View::all(&self.params.data))?;
        let mut out: Vec<NamedTensor> =
            self.params.entries.iter().map(|e| (e.name.clone(), e.shape.clone(), all[e.offset..e.offset + e.len()].to_vec())).collect();
        // A fused layer's buffers are its second node's (the BatchNorm after a conv).
        let outputs = output_nodes(&self.nodes);
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(layer) = &node.layer else { continue };
            let buffers = layer.buffers();
            if buffers.is_empty() {
                continue;
            }
            let prefix = self.nodes[outputs[i]].prefix();
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
        let model = self.graph.name.clone();
        let find = |name: &str, shape: &[usize]| -> Result<&Vec<f32>> {
            let (_, got, data) = tensors
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| err(format!("missing tensor `{name}` (shape {shape:?}) needed by {model}")))?;
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
        let outputs = output_nodes(&self.nodes);
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(layer) = &node.layer else { continue };
            let list = layer.buffers();
            let prefix = self.nodes[outputs[i]].prefix();
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
            return Err(err(format!("unexpected tensor `{extra}`: not a parameter or buffer of {model}")));
        }
        backend.write(ViewMut::all(&mut self.params.data), &host)?;
        for (i, name, data) in buffers {
            self.nodes[i].layer.as_mut().expect("buffers come from layers").load_buffer(backend, name, &data)?;
        }
        self.batches_tracked = tracked.unwrap_or(0);
        Ok(())
    }

    pub fn layer_kinds(&self) -> Vec<&'static str> {
        self.nodes.iter().map(NodeRt::kind).collect()
    }

    /// A table of the nodes: name, op, inputs, output shape and parameter count.
    pub fn summary(&self) -> String {
        let mut out = format!("{:<28} {:<18} {:<10} {:<18} {:>10}\n", "node", "op", "inputs", "output", "params");
        out.push_str(&format!("{:<28} {:<18} {:<10} {:<18} {:>10}\n", "input", "", "", format!("{:?}", self.shapes[0]), ""));
        for (i, node) in self.nodes.iter().enumerate() {
            let prefix = node.name.as_ref().map(|n| format!("{n}."));
            let params: usize =
                prefix.map_or(0, |p| self.params.entries.iter().filter(|e| e.name.starts_with(&p)).map(ParamEntry::len).sum());
            let inputs = node.inputs.iter().map(|t| t.node().map_or("in".to_string(), |s| s.to_string())).collect::<Vec<_>>().join(",");
            let name = format!("{i}: {}", node.name.as_deref().unwrap_or(""));
            out.push_str(&format!(
                "{name:<28} {:<18} {inputs:<10} {:<18} {params:>10}\n",
                node.kind(),
                format!("{:?}", self.shapes[i + 1])
            ));
        }
        out.push_str(&format!("{} parameters", self.params.count()));
        out
    }
}

/// Per node: whether the node before runs its op fused with its own: a
/// bias-free conv and the op that alone reads its output, a max pool over
/// non-overlapping windows (see [`Conv2dMaxPool::fuse`]) or a 2-D BatchNorm
/// (see [`Conv2dBatchNorm::fuse`]); an add and the ReLU that alone reads its
/// sum (a residual connection, [`Backend::add_relu`]).
fn absorbed_nodes(graph: &Graph) -> Vec<bool> {
    let reads = graph.readers();
    let mut absorbed = vec![false; graph.nodes.len()];
    for i in 1..graph.nodes.len() {
        let (prev, node) = (&graph.nodes[i - 1], &graph.nodes[i]);
        let conv = matches!(prev.op, Op::Conv2d { bias: false, .. });
        let pool = matches!(node.op, Op::MaxPool2d { kernel, stride, pad: 0, .. } if kernel == stride);
        let norm = matches!(node.op, Op::BatchNorm { dims: 2, .. });
        let add_relu = prev.op == Op::Add && node.op == Op::Relu;
        // The first node's output (tensor i) is read by this node only.
        let alone = !absorbed[i - 1] && node.inputs == [NodeId(i)] && reads[i] == 1;
        absorbed[i] = alone && ((conv && (pool || norm)) || add_relu);
    }
    absorbed
}

/// Names the parameters of each layer after its node and gives them their
/// places in the parameter buffer.
struct ParamLayout {
    model: String,
    entries: Vec<ParamEntry>,
    total: usize,
}

impl ParamLayout {
    fn register<B: Backend>(&mut self, layer: &mut dyn Layer<B>, (i, node): (usize, &crate::graph::Node)) -> Result<()> {
        let specs = layer.param_specs();
        if specs.is_empty() {
            return Ok(());
        }
        let prefix = node.name.as_deref().ok_or_else(|| {
            Error::config(format!("model `{}`", self.model), format!("node {i} ({}) has parameters but no name", node.label()))
        })?;
        self.total = self.total.next_multiple_of(PARAM_ALIGN);
        let mut offsets = Vec::new();
        for spec in specs {
            offsets.push(self.total);
            self.entries.push(ParamEntry {
                name: format!("{prefix}.{}", spec.name),
                shape: spec.shape.clone(),
                offset: self.total,
                fan_in: spec.fan_in,
                fan_out: spec.fan_out,
                init: spec.init,
            });
            self.total += spec.len();
        }
        layer.bind_params(&offsets);
        Ok(())
    }
}

/// The fused layer of a conv node and the node after it that it absorbs (see
/// [`absorbed_nodes`]), built, with each part's parameters named after its node.
fn fused_pair<B: Backend>(
    backend: &B,
    (i, conv_node): (usize, &crate::graph::Node),
    next: &crate::graph::Node,
    input: &[usize],
    layout: &mut ParamLayout,
) -> Result<Box<dyn Layer<B>>> {
    let fail =
        || Error::config("fused layer", format!("fuses a bias-free conv and the op after it, got {:?} and {:?}", conv_node.op, next.op));
    let Op::Conv2d { c_in, c_out, kernel, stride, pad, bias: false } = conv_node.op else { return Err(fail()) };
    let conv = Conv2d::new(c_in, c_out, kernel, stride, pad).without_bias();
    let mut layer: Box<dyn Layer<B>> = match (&next.op, next.op.batch_norm::<B>()?) {
        (_, Some(bn)) => {
            let mut fused = Conv2dBatchNorm::fuse(conv, bn).ok_or_else(fail)?;
            fused.build(input)?;
            fused.init_buffers(backend)?;
            let (conv, bn) = fused.parts_mut();
            layout.register(conv, (i, conv_node))?;
            layout.register(bn, (i + 1, next))?;
            return Ok(Box::new(fused));
        }
        (&Op::MaxPool2d { kernel: k, stride: s, pad: p, relu }, None) => {
            let pool = MaxPool2d::new(k, s, p);
            let pool = if relu { pool.with_relu() } else { pool };
            Box::new(Conv2dMaxPool::fuse(conv, pool).ok_or_else(fail)?)
        }
        _ => return Err(fail()),
    };
    layer.build(input)?;
    layer.init_buffers(backend)?;
    layout.register(layer.as_mut(), (i, conv_node))?;
    Ok(layer)
}

/// Per tensor (0: the input, i + 1: node i's output): whether it travels
/// narrow, given what each node `offered`. A tensor is narrow where the node
/// that writes it offers a narrow output and every node that reads it a narrow
/// input (never the logits: the loss reads them). An add + ReLU takes narrow
/// tensors only as a whole: its inputs and output all narrow, or all wide.
fn narrow_tensors<B: Backend>(nodes: &[NodeRt<B>], offered: &[NarrowEdges]) -> Vec<bool> {
    let outputs = output_nodes(nodes);
    let mut narrow = vec![false; nodes.len() + 1];
    // (An absorbed node neither writes nor reads a tensor outside its fused op.)
    let running = || nodes.iter().enumerate().filter(|(_, node)| !node.absorbed);
    for (j, _) in running() {
        narrow[outputs[j] + 1] = offered[j].y;
    }
    narrow[nodes.len()] = false;
    for (j, node) in running() {
        node.inputs.iter().filter(|_| !offered[j].x).for_each(|t| narrow[t.0] = false);
    }
    let adds: Vec<(usize, &NodeRt<B>)> = running().filter(|(_, node)| node.layer.is_none()).collect();
    loop {
        let mut changed = false;
        for &(j, node) in &adds {
            let tensors = || node.inputs.iter().map(|t| t.0).chain([outputs[j] + 1]);
            if tensors().any(|t| narrow[t]) && tensors().any(|t| !narrow[t]) {
                tensors().for_each(|t| narrow[t] = false);
                changed = true;
            }
        }
        if !changed {
            return narrow;
        }
    }
}

/// The element-wise ops of a gradient sum, on fp32 tensors or on narrow ones.
#[derive(Clone, Copy)]
struct Sums {
    narrow: bool,
}

impl Sums {
    fn relu_backward<B: Backend>(self, b: &B, y: View<'_, B, f32>, dy: View<'_, B, f32>, dx: ViewMut<'_, B, f32>) -> Result<()> {
        if self.narrow {
            b.relu_backward_narrow(y, dy, dx)
        } else {
            b.relu_backward(y, dy, dx)
        }
    }

    /// dst = src, or dst += src once `seen` (which this sets).
    fn give<B: Backend>(self, b: &B, src: View<'_, B, f32>, dst: ViewMut<'_, B, f32>, seen: &mut bool) -> Result<()> {
        match (std::mem::replace(seen, true), self.narrow) {
            (true, false) => b.add_assign(src, dst),
            (true, true) => b.add_assign_narrow(src, dst),
            (false, false) => b.copy(src, dst),
            // The 16-bit values: the windows' first halves.
            (false, true) => {
                let half = src.len.div_ceil(2);
                b.copy(View { len: half, ..src }, ViewMut { len: half, ..dst })
            }
        }
    }
}

/// The backward of an add (of an add+relu when `relu_y`, its output, is
/// given): each learning input (tensor s: `dacts[s]`, lengths from `len`)
/// receives dy, or dy masked by the ReLU, written by the first reader and
/// summed in by the others (`written`).
#[allow(clippy::too_many_arguments)]
fn add_backward<B: Backend>(
    backend: &B,
    sums: Sums,
    relu_y: Option<View<'_, B, f32>>,
    dy: View<'_, B, f32>,
    (dacts, written): (&mut [B::Buf<f32>], &mut [bool]),
    learners: &[usize],
    len: impl Fn(usize) -> usize,
    scratch: Option<&mut B::Buf<f32>>,
) -> Result<()> {
    let Some(y) = relu_y else {
        for &s in learners {
            sums.give(backend, dy, ViewMut::prefix(&mut dacts[s], len(s + 1))?, &mut written[s])?;
        }
        return Ok(());
    };
    match learners.split_first() {
        // The ReLU's backward straight into the first input's gradient, copied on from there.
        Some((&first, rest)) if !written[first] && !rest.contains(&first) => {
            written[first] = true;
            sums.relu_backward(backend, y, dy, ViewMut::prefix(&mut dacts[first], len(first + 1))?)?;
            for &s in rest {
                let (src, dst) = two_mut(dacts, first, s);
                sums.give(backend, View::prefix(src, len(first + 1))?, ViewMut::prefix(dst, len(s + 1))?, &mut written[s])?;
            }
            Ok(())
        }
        None => Ok(()),
        // Both inputs the same tensor, or one written already: the masked dy in the scratch first.
        Some(_) => {
            let scratch = scratch.ok_or_else(|| Error::shape("model backward", "gradient scratch", "allocated", "none"))?;
            sums.relu_backward(backend, y, dy, ViewMut::prefix(scratch, dy.len)?)?;
            for &s in learners {
                sums.give(backend, View::prefix(scratch, dy.len)?, ViewMut::prefix(&mut dacts[s], len(s + 1))?, &mut written[s])?;
            }
            Ok(())
        }
    }
}

/// `v[a]` to read and `v[b]` to write (`a != b`).
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&T, &mut T) {
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&hi[0], &mut lo[b])
    }
}

/// Per node: the node whose output buffers hold its result (the next one when it absorbed it).
fn output_nodes<B: Backend>(nodes: &[NodeRt<B>]) -> Vec<usize> {
    (0..nodes.len()).map(|i| if nodes.get(i + 1).is_some_and(|n| n.absorbed) { i + 1 } else { i }).collect()
}

/// Initial parameter values for `entries` (see [`Init`]); biases are 0 except with `PyTorch`.
fn initial_values(entries: &[ParamEntry], total: usize, seed: u64, init: Init) -> Vec<f32> {
    let mut host = vec![0.0f32; total];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for e in entries {
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
    host
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    /// ResNet-18's tensors as [`narrow_tensors`] plans them when every layer
    /// offers narrow sides, the global average pool reading narrow or not.
    fn planned(pool_reads_narrow: bool) -> (Model<CpuBackend>, Vec<bool>) {
        let backend = CpuBackend::new(1).unwrap();
        let model = Model::new(&backend, &ModelConfig::Resnet18, &[3, 8, 8], 10, 0).unwrap();
        let offer = |node: &NodeRt<CpuBackend>| match node.kind {
            _ if node.absorbed => NarrowEdges::WIDE,
            "global-avgpool" => NarrowEdges { x: pool_reads_narrow, y: false },
            _ => NarrowEdges { x: true, y: true },
        };
        let offered: Vec<NarrowEdges> = model.nodes.iter().map(offer).collect();
        let narrow = narrow_tensors(&model.nodes, &offered);
        (model, narrow)
    }

    /// Whether the output of the node named `name` is narrow.
    fn narrow_output(model: &Model<CpuBackend>, narrow: &[bool], name: &str) -> bool {
        let i = model.nodes.iter().position(|node| node.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no node {name}"));
        narrow[i + 1]
    }

    #[test]
    fn a_residual_network_travels_narrow_where_every_reader_takes_it() {
        let (model, narrow) = planned(true);
        assert!(!narrow[0] && !narrow[narrow.len() - 1], "the input and the logits stay fp32");
        for name in ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.downsample.1", "layer4.1.bn2"] {
            assert!(narrow_output(&model, &narrow, name), "{name}'s output is not narrow");
        }
        // The adds' outputs (each block's), read by the next block or the pool.
        let adds = model.nodes.iter().enumerate().filter(|(_, node)| node.kind == "add+relu");
        assert!(adds.clone().count() == 8 && adds.clone().all(|(j, _)| narrow[j + 2]), "{narrow:?}");
    }

    #[test]
    fn an_add_is_narrow_as_a_whole_or_not_at_all() {
        // The pool takes fp32: the last block's sum is wide, so are its inputs, and the
        // block before's sum they include, and its inputs; the third stage's output
        // feeds only convs and stays narrow.
        let (model, narrow) = planned(false);
        for name in ["layer4.1.bn2", "layer4.0.bn2", "layer4.0.downsample.1"] {
            assert!(!narrow_output(&model, &narrow, name), "{name}'s output is narrow");
        }
        for name in ["layer4.1.bn1", "layer4.0.bn1", "layer3.1.bn2", "bn1"] {
            assert!(narrow_output(&model, &narrow, name), "{name}'s output is not narrow");
        }
    }
}
