//! Models as graphs: a [`Graph`] is a serializable list of nodes in
//! topological order, each an [`Op`] with the nodes it reads; [`GraphBuilder`]
//! builds one in plain code with shapes inferred from the input:
//!
//! ```
//! use rr_core::graph::{Conv, GraphBuilder};
//! # fn main() -> rr_core::Result<()> {
//! let mut g = GraphBuilder::new("tiny-resnet", &[1, 28, 28]);
//! let x = g.input();
//! let x = g.conv2d("stem", x, Conv::new(8, 3).pad(1))?;
//! let x = g.batch_norm_relu("bn", x)?;
//! // A residual block: relu(block(x) + x)
//! let y = g.conv2d("block.conv1", x, Conv::new(8, 3).pad(1).no_bias())?;
//! let y = g.batch_norm_relu("block.bn1", y)?;
//! let y = g.conv2d("block.conv2", y, Conv::new(8, 3).pad(1).no_bias())?;
//! let y = g.batch_norm("block.bn2", y)?;
//! let y = g.add(y, x)?;
//! let y = g.relu(y)?;
//! let y = g.global_avg_pool(y)?;
//! let logits = g.linear("fc", y, 10)?;
//! let graph = g.finish(logits)?;
//! assert_eq!(graph.output_shape()?, vec![10]);
//! # Ok(()) }
//! ```
//!
//! The graph is stored in every checkpoint (JSON), so any model made of these
//! ops is rebuilt by `eval`, `predict`, `serve` and `--resume`. Parameter
//! names are the node names plus `.weight`/`.bias` (`layer1.0.conv1.weight`),
//! as PyTorch's `state_dict` writes them.

use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::layers::{AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, Gelu, GlobalAvgPool, Layer, Linear, MaxPool2d, Relu};
use serde::{Deserialize, Serialize};

/// What a node computes. Shapes are per sample (no batch dimension).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// `torch.nn.Conv2d` with square kernels: (C_in, H, W) -> (C_out, OH, OW).
    Conv2d {
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    },
    /// A frozen conv that whitens `kernel`x`kernel` patches: (C_in, H, W) ->
    /// (2 C_in k², H - k + 1, W - k + 1), with a bias. A `torch.nn.Conv2d` in
    /// checkpoints; its filters are set from training images by
    /// [`crate::Model::init_from_data`] (see [`crate::whiten`]).
    Whiten {
        c_in: usize,
        kernel: usize,
    },
    /// `torch.nn.Linear`: (in_features) -> (out_features); without a bias when
    /// `bias` is false; `scale * x W^T + b` when `scale` isn't 1 (airbench's
    /// `Mul` after a bias-free Linear).
    Linear {
        in_features: usize,
        out_features: usize,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        bias: bool,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        scale: f32,
    },
    /// `BatchNorm2d` (dims 2: (C, H, W)) or `BatchNorm1d` (dims 1: (C)), ReLU
    /// fused when `relu`, GELU when `gelu` (not both); `eps` and `momentum`
    /// (PyTorch's meaning) default to 1e-5 and 0.1.
    BatchNorm {
        channels: usize,
        dims: usize,
        relu: bool,
        /// Absent from graphs saved before the fused GELU.
        #[serde(default, skip_serializing_if = "is_false")]
        gelu: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eps: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        momentum: Option<f32>,
    },
    Relu,
    /// `torch.nn.GELU()` (the exact erf form).
    Gelu,
    /// Max pooling; `relu` fuses a ReLU before it (they commute).
    MaxPool2d {
        kernel: usize,
        stride: usize,
        pad: usize,
        relu: bool,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    /// (C, H, W) -> (C): the mean over each channel.
    GlobalAvgPool,
    /// `salt` tells dropout layers' random streams apart.
    Dropout {
        p: f32,
        salt: u32,
    },
    /// (C, H, W) -> (C*H*W).
    Flatten,
    /// Two inputs of one shape: their sum (residual connections).
    Add,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn one() -> f32 {
    1.0
}
fn is_one(x: &f32) -> bool {
    *x == 1.0
}

impl Op {
    /// Inputs the op takes.
    pub fn arity(&self) -> usize {
        if matches!(self, Op::Add) {
            2
        } else {
            1
        }
    }

    /// The layer that runs this op (`None` for [`Op::Add`], which the model runs itself).
    pub fn layer<B: Backend>(&self) -> Result<Option<Box<dyn Layer<B>>>> {
        Ok(Some(match *self {
            Op::Conv2d { c_in, c_out, kernel, stride, pad, bias } => {
                let conv = Conv2d::new(c_in, c_out, kernel, stride, pad);
                Box::new(if bias { conv } else { conv.without_bias() })
            }
            Op::Whiten { c_in, kernel } => Box::new(Conv2d::new(c_in, crate::whiten::filters(c_in, kernel), kernel, 1, 0)),
            Op::Linear { in_features, out_features, bias, scale } => {
                let linear = Linear::new(in_features, out_features).scaled(scale);
                Box::new(if bias { linear } else { linear.without_bias() })
            }
            Op::BatchNorm { .. } => Box::new(self.batch_norm::<B>()?.expect("a batch-norm op")),
            Op::Relu => Box::new(Relu),
            Op::Gelu => Box::new(Gelu),
            Op::MaxPool2d { kernel, stride, pad, relu } => {
                let pool = MaxPool2d::new(kernel, stride, pad);
                Box::new(if relu { pool.with_relu() } else { pool })
            }
            Op::AvgPool2d { kernel, stride, pad } => Box::new(AvgPool2d::new(kernel, stride, pad)),
            Op::GlobalAvgPool => Box::new(GlobalAvgPool::new()),
            Op::Dropout { p, salt } => Box::new(Dropout::new(p, salt)?),
            Op::Flatten => Box::new(Flatten),
            Op::Add => return Ok(None),
        }))
    }

    /// The layer of a [`Op::BatchNorm`] (`None` for any other op), checked.
    pub fn batch_norm<B: Backend>(&self) -> Result<Option<BatchNorm<B>>> {
        let Op::BatchNorm { channels, dims, relu, gelu, eps, momentum } = *self else { return Ok(None) };
        let mut bn = match dims {
            1 => BatchNorm::new_1d(channels),
            2 => BatchNorm::new_2d(channels),
            _ => return Err(Error::config("batch-norm", format!("dims must be 1 or 2, got {dims}"))),
        };
        bn.eps = eps.unwrap_or(bn.eps);
        bn.momentum = momentum.unwrap_or(bn.momentum);
        if !(bn.eps > 0.0 && bn.eps.is_finite() && (0.0..=1.0).contains(&bn.momentum)) {
            return Err(Error::config("batch-norm", format!("needs eps > 0 and momentum in [0, 1], got {} and {}", bn.eps, bn.momentum)));
        }
        Ok(Some(match (relu, gelu) {
            (false, false) => bn,
            (true, false) => bn.with_relu(),
            (false, true) => bn.with_gelu(),
            (true, true) => return Err(Error::config("batch-norm", "fuses ReLU or GELU, not both (relu and gelu are true)")),
        }))
    }

    /// The output shape for these input shapes (the layer's own shape checks).
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        if inputs.len() != self.arity() {
            return Err(Error::config(format!("{self:?}"), format!("takes {} inputs, got {}", self.arity(), inputs.len())));
        }
        match self.layer::<crate::CpuBackend>()? {
            Some(mut layer) => layer.build(inputs[0]),
            None if inputs[0] == inputs[1] => Ok(inputs[0].to_vec()),
            None => Err(Error::shape("add", "input shapes", format!("{:?} (the same)", inputs[0]), format!("{:?}", inputs[1]))),
        }
    }
}

/// A tensor in a graph being built: the graph's input or a node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId(pub usize);

impl NodeId {
    /// The graph's input.
    pub const INPUT: NodeId = NodeId(0);

    /// The index of the node that computes this tensor (`None` for the input).
    pub fn node(self) -> Option<usize> {
        self.0.checked_sub(1)
    }
}

/// One node: its op, the tensors it reads and the name its parameters and
/// buffers get in the state dict (`None`: an op without any).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub op: Op,
    pub inputs: Vec<NodeId>,
}

/// A model's architecture: nodes in topological order; the last one's output is the logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    /// Per-sample input shape, e.g. (3, 32, 32).
    pub input: Vec<usize>,
    pub nodes: Vec<Node>,
}

impl Graph {
    /// How many node inputs read each tensor (0: the graph's input, i + 1: node i's output).
    pub fn readers(&self) -> Vec<usize> {
        let mut reads = vec![0usize; self.nodes.len() + 1];
        self.nodes.iter().flat_map(|node| &node.inputs).for_each(|t| reads[t.0] += 1);
        reads
    }

    /// Every tensor's shape: `[input, node 0's output, ...]`; checks the whole graph.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        if self.nodes.is_empty() {
            return Err(Error::config(format!("model `{}`", self.name), "has no nodes"));
        }
        let mut shapes = vec![self.input.clone()];
        let mut used = vec![false; self.nodes.len() + 1];
        let mut names = std::collections::HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let here = |msg: String| Error::config(format!("model `{}`, node {i} ({})", self.name, node.label()), msg);
            if let Some(name) = &node.name {
                if !names.insert(name.as_str()) {
                    return Err(here(format!("another node is named `{name}` (parameter names must be unique)")));
                }
            }
            if let Some(bad) = node.inputs.iter().find(|id| id.0 > i) {
                return Err(here(format!("reads tensor {} which is not computed before it", bad.0)));
            }
            node.inputs.iter().for_each(|id| used[id.0] = true);
            let ins: Vec<&[usize]> = node.inputs.iter().map(|id| shapes[id.0].as_slice()).collect();
            let out = node.op.output_shape(&ins).map_err(|e| here(e.to_string()))?;
            shapes.push(out);
        }
        if let Some(unused) = (1..self.nodes.len()).find(|&t| !used[t]) {
            let node = &self.nodes[unused - 1];
            return Err(Error::config(
                format!("model `{}`", self.name),
                format!("the output of node {} ({}) is never used", unused - 1, node.label()),
            ));
        }
        Ok(shapes)
    }

    /// The per-sample shape of the logits.
    pub fn output_shape(&self) -> Result<Vec<usize>> {
        Ok(self.shapes()?.pop().expect("at least the input"))
    }
}

impl Node {
    /// "conv2d layer1.0.conv1", or just the op for unnamed nodes.
    pub fn label(&self) -> String {
        let op = serde_json::to_value(&self.op).ok().and_then(|v| v["op"].as_str().map(String::from)).unwrap_or_default();
        match &self.name {
            Some(name) => format!("{op} {name}"),
            None => op,
        }
    }
}

/// Convolution settings for [`GraphBuilder::conv2d`] (input channels come from the input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub bias: bool,
}

impl Conv {
    /// `c_out` output channels, a `kernel` x `kernel` window, stride 1, no padding, with bias.
    pub fn new(c_out: usize, kernel: usize) -> Self {
        Conv { c_out, kernel, stride: 1, pad: 0, bias: true }
    }
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    pub fn pad(mut self, pad: usize) -> Self {
        self.pad = pad;
        self
    }
    /// No bias (as before a BatchNorm, which has its own shift).
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// Builds a [`Graph`] node by node, checking shapes as it goes.
pub struct GraphBuilder {
    graph: Graph,
    shapes: Vec<Vec<usize>>,
    dropouts: u32,
}

impl GraphBuilder {
    /// A graph called `name` taking per-sample inputs of `input` shape, e.g. `&[3, 32, 32]`.
    pub fn new(name: &str, input: &[usize]) -> Self {
        GraphBuilder {
            graph: Graph { name: name.into(), input: input.to_vec(), nodes: Vec::new() },
            shapes: vec![input.to_vec()],
            dropouts: 0,
        }
    }

    pub fn input(&self) -> NodeId {
        NodeId::INPUT
    }

    /// The per-sample shape of a tensor of this graph (empty for an id this builder did not make).
    pub fn shape(&self, x: NodeId) -> &[usize] {
        self.shapes.get(x.0).map_or(&[], Vec::as_slice)
    }

    /// Adds a node (the general form of the methods below).
    pub fn push(&mut self, name: Option<&str>, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        let i = self.graph.nodes.len();
        if let Some(bad) = inputs.iter().find(|id| id.0 > i) {
            return Err(Error::config(format!("model `{}`", self.graph.name), format!("tensor {} does not exist yet", bad.0)));
        }
        if let Some(name) = name {
            if self.graph.nodes.iter().any(|n| n.name.as_deref() == Some(name)) {
                return Err(Error::config(format!("model `{}`", self.graph.name), format!("two nodes are named `{name}`")));
            }
        }
        let ins: Vec<&[usize]> = inputs.iter().map(|id| self.shapes[id.0].as_slice()).collect();
        let node = Node { name: name.map(String::from), op, inputs: inputs.to_vec() };
        let out = node
            .op
            .output_shape(&ins)
            .map_err(|e| Error::config(format!("model `{}`, {}", self.graph.name, node.label()), e.to_string()))?;
        self.graph.nodes.push(node);
        self.shapes.push(out);
        Ok(NodeId(i + 1))
    }

    fn channels(&self, x: NodeId, what: &str) -> Result<usize> {
        match self.shape(x) {
            [c, _, _] => Ok(*c),
            other => Err(Error::config(format!("model `{}`, {what}", self.graph.name), format!("needs a (C, H, W) input, got {other:?}"))),
        }
    }

    pub fn conv2d(&mut self, name: &str, x: NodeId, conv: Conv) -> Result<NodeId> {
        let c_in = self.channels(x, name)?;
        let Conv { c_out, kernel, stride, pad, bias } = conv;
        self.push(Some(name), Op::Conv2d { c_in, c_out, kernel, stride, pad, bias }, &[x])
    }

    /// `BatchNorm2d` on (C, H, W) inputs, `BatchNorm1d` on (C) inputs.
    pub fn batch_norm(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.batch_norm_op(name, x, Activation::None)
    }

    /// relu(batch_norm(x)) in one op.
    pub fn batch_norm_relu(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.batch_norm_op(name, x, Activation::Relu)
    }

    /// gelu(batch_norm(x)) in one op.
    pub fn batch_norm_gelu(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.batch_norm_op(name, x, Activation::Gelu)
    }

    fn batch_norm_op(&mut self, name: &str, x: NodeId, act: Activation) -> Result<NodeId> {
        let (channels, dims) = match self.shape(x) {
            [c, _, _] => (*c, 2),
            [c] => (*c, 1),
            other => {
                return Err(Error::config(
                    format!("model `{}`, {name}", self.graph.name),
                    format!("batch norm needs (C, H, W) or (C), got {other:?}"),
                ))
            }
        };
        let (relu, gelu) = (act == Activation::Relu, act == Activation::Gelu);
        self.push(Some(name), Op::BatchNorm { channels, dims, relu, gelu, eps: None, momentum: None }, &[x])
    }

    pub fn relu(&mut self, x: NodeId) -> Result<NodeId> {
        self.push(None, Op::Relu, &[x])
    }

    pub fn gelu(&mut self, x: NodeId) -> Result<NodeId> {
        self.push(None, Op::Gelu, &[x])
    }

    pub fn max_pool(&mut self, x: NodeId, kernel: usize, stride: usize) -> Result<NodeId> {
        self.push(None, Op::MaxPool2d { kernel, stride, pad: 0, relu: false }, &[x])
    }

    /// max_pool(relu(x)) in one op.
    pub fn relu_max_pool(&mut self, x: NodeId, kernel: usize, stride: usize) -> Result<NodeId> {
        self.push(None, Op::MaxPool2d { kernel, stride, pad: 0, relu: true }, &[x])
    }

    pub fn avg_pool(&mut self, x: NodeId, kernel: usize, stride: usize) -> Result<NodeId> {
        self.push(None, Op::AvgPool2d { kernel, stride, pad: 0 }, &[x])
    }

    pub fn global_avg_pool(&mut self, x: NodeId) -> Result<NodeId> {
        self.push(None, Op::GlobalAvgPool, &[x])
    }

    pub fn flatten(&mut self, x: NodeId) -> Result<NodeId> {
        self.push(None, Op::Flatten, &[x])
    }

    /// A Linear layer; (C, H, W) inputs are flattened first.
    pub fn linear(&mut self, name: &str, x: NodeId, outputs: usize) -> Result<NodeId> {
        let x = if self.shape(x).len() > 1 { self.flatten(x)? } else { x };
        let &[in_features] = self.shape(x) else {
            return Err(Error::config(format!("model `{}`, {name}", self.graph.name), format!("no such tensor {} or an empty shape", x.0)));
        };
        self.push(Some(name), Op::Linear { in_features, out_features: outputs, bias: true, scale: 1.0 }, &[x])
    }

    /// A frozen whitening conv of `kernel`x`kernel` patches (see [`Op::Whiten`]).
    pub fn whiten(&mut self, name: &str, x: NodeId, kernel: usize) -> Result<NodeId> {
        let c_in = self.channels(x, name)?;
        self.push(Some(name), Op::Whiten { c_in, kernel }, &[x])
    }

    /// Dropout with probability `p` (each dropout node draws from its own stream).
    pub fn dropout(&mut self, x: NodeId, p: f32) -> Result<NodeId> {
        self.dropouts += 1;
        self.push(None, Op::Dropout { p, salt: self.dropouts }, &[x])
    }

    /// `a + b` (the same shape).
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(None, Op::Add, &[a, b])
    }

    /// The finished graph; `output` (the logits) must be the last node added.
    pub fn finish(self, output: NodeId) -> Result<Graph> {
        if output.0 != self.graph.nodes.len() || output == NodeId::INPUT {
            return Err(Error::config(format!("model `{}`", self.graph.name), "the output must be the last node added"));
        }
        self.graph.shapes()?;
        Ok(self.graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_nodes_serialize_as_gelu_and_models_name_them() {
        let mut g = GraphBuilder::new("gelu-net", &[2, 4, 4]);
        let x = g.conv2d("conv", g.input(), Conv::new(3, 3).pad(1)).unwrap();
        let x = g.gelu(x).unwrap();
        let logits = g.linear("fc", x, 5).unwrap();
        let graph = g.finish(logits).unwrap();
        assert_eq!(graph.nodes[1].op, Op::Gelu);
        let json = serde_json::to_value(&graph).unwrap();
        assert_eq!(json["nodes"][1]["op"], "gelu");
        let back: Graph = serde_json::from_value(json).unwrap();
        assert_eq!(back, graph);
        assert_eq!(back.shapes().unwrap()[2], vec![3, 4, 4]);
        let backend = crate::CpuBackend::new(1).unwrap();
        let model = crate::Model::from_graph(&backend, graph, 0, crate::model::Init::PyTorch).unwrap();
        assert_eq!(model.layer_kinds(), ["conv2d", "gelu", "flatten", "linear"]);
        assert!(model.summary().lines().any(|l| l.starts_with("1: ") && l.contains(" gelu ")), "{}", model.summary());
    }

    #[test]
    fn batch_norm_gelu_serializes_with_a_gelu_key_old_graphs_load_without_one() {
        let mut g = GraphBuilder::new("bn-gelu", &[2, 4, 4]);
        let x = g.batch_norm_gelu("norm", g.input()).unwrap();
        let x = g.batch_norm_relu("norm2", x).unwrap();
        let logits = g.linear("fc", x, 3).unwrap();
        let graph = g.finish(logits).unwrap();
        let json = serde_json::to_value(&graph).unwrap();
        assert_eq!(json["nodes"][0]["gelu"], true, "{json}");
        assert!(json["nodes"][1].get("gelu").is_none(), "no key when false: {json}");
        assert_eq!(serde_json::from_value::<Graph>(json).unwrap(), graph);
        let backend = crate::CpuBackend::new(1).unwrap();
        let model = crate::Model::from_graph(&backend, graph, 0, crate::model::Init::PyTorch).unwrap();
        assert_eq!(model.layer_kinds(), ["batchnorm2d+gelu", "batchnorm2d+relu", "flatten", "linear"]);
        // A BatchNorm node as saved before the fused GELU: no `gelu` key.
        let old: Op = serde_json::from_str(r#"{"op": "batch-norm", "channels": 2, "dims": 2, "relu": true}"#).unwrap();
        assert_eq!(old, Op::BatchNorm { channels: 2, dims: 2, relu: true, gelu: false, eps: None, momentum: None });
        let both = Op::BatchNorm { channels: 2, dims: 2, relu: true, gelu: true, eps: None, momentum: None };
        let err = both.layer::<crate::CpuBackend>().err().expect("relu and gelu together are refused");
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn a_bias_free_conv_runs_fused_with_the_batch_norm_that_alone_reads_it_and_both_keep_their_names() {
        let mut g = GraphBuilder::new("fusion", &[3, 8, 8]);
        // Fused: a bias-free conv, then a 2-D BatchNorm (+ReLU) reading it alone.
        let x = g.conv2d("conv1", g.input(), Conv::new(4, 3).pad(1).no_bias()).unwrap();
        let x = g.batch_norm_relu("bn1", x).unwrap();
        // Not fused: a conv with a bias; a conv output that a second node reads.
        let y = g.conv2d("conv2", x, Conv::new(4, 3).pad(1)).unwrap();
        let y = g.batch_norm("bn2", y).unwrap();
        let z = g.conv2d("conv3", y, Conv::new(4, 1).no_bias()).unwrap();
        let n = g.batch_norm("bn3", z).unwrap();
        let x = g.add(n, z).unwrap();
        let x = g.global_avg_pool(x).unwrap();
        let logits = g.linear("fc", x, 2).unwrap();
        let graph = g.finish(logits).unwrap();
        let backend = crate::CpuBackend::new(1).unwrap();
        let mut model = crate::Model::from_graph(&backend, graph, 0, crate::model::Init::PyTorch).unwrap();
        let kinds = model.layer_kinds();
        assert_eq!(kinds[..2], ["conv2d+batchnorm2d+relu", "batchnorm2d+relu"]);
        assert_eq!(kinds[2..6], ["conv2d", "batchnorm2d", "conv2d", "batchnorm2d"]);
        // Parameters and buffers keep each node's names, in node order.
        let names: Vec<String> = model.state_dict(&backend).unwrap().into_iter().map(|(name, _, _)| name).collect();
        for name in ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("conv1.running")), "{names:?}");
        let params: Vec<&str> = model.params.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(params[..3], ["conv1.weight", "bn1.weight", "bn1.bias"]);
        // A checkpoint's tensors load back (the fused layer takes its BatchNorm's buffers).
        let state = model.state_dict(&backend).unwrap();
        model.load_state_dict(&backend, &state, std::path::Path::new("state")).unwrap();
        // With the conv frozen, its BatchNorm still learns: the fused pair's backward runs.
        model.freeze(|name| name.starts_with("conv1."));
        let n = 2;
        let input: Vec<f32> = (0..n * 3 * 8 * 8).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let x = crate::Backend::upload(&backend, &input).unwrap();
        model.reserve_backward(&backend, n).unwrap();
        model.forward_train(&backend, n, crate::View::all(&x)).unwrap();
        let dlogits = crate::Backend::upload(&backend, &[0.5f32, -0.5, -0.25, 0.25]).unwrap();
        crate::Backend::fill(&backend, crate::ViewMut::all(&mut model.params.grads), f32::NAN).unwrap();
        model.backward(&backend, n, crate::View::all(&x), crate::View::all(&dlogits)).unwrap();
        let grads = crate::Backend::download(&backend, crate::View::all(&model.params.grads)).unwrap();
        let bn1 = model.params.entries.iter().find(|e| e.name == "bn1.weight").unwrap();
        assert!(grads[bn1.offset..bn1.offset + bn1.len()].iter().all(|g| g.is_finite()), "bn1's gradients were not computed");
    }

    #[test]
    fn a_bias_free_conv_runs_fused_with_the_max_pool_that_alone_reads_it() {
        let mut g = GraphBuilder::new("fusion", &[2, 12, 12]);
        // Fused: a bias-free conv, then 2x2 windows of stride 2.
        let x = g.conv2d("a", g.input(), Conv::new(3, 3).pad(1).no_bias()).unwrap();
        let x = g.max_pool(x, 2, 2).unwrap();
        // Not fused: a bias; overlapping windows; a conv output with a second reader.
        let x = g.conv2d("b", x, Conv::new(3, 3).pad(1)).unwrap();
        let x = g.max_pool(x, 2, 2).unwrap();
        let x = g.conv2d("c", x, Conv::new(3, 3).pad(1).no_bias()).unwrap();
        let x = g.max_pool(x, 3, 1).unwrap();
        let y = g.conv2d("d", x, Conv::new(3, 1).no_bias()).unwrap();
        let pooled = g.max_pool(y, 1, 1).unwrap();
        let x = g.add(pooled, y).unwrap();
        let x = g.flatten(x).unwrap();
        let logits = g.linear("fc", x, 2).unwrap();
        let graph = g.finish(logits).unwrap();
        let backend = crate::CpuBackend::new(1).unwrap();
        let mut model = crate::Model::from_graph(&backend, graph, 0, crate::model::Init::PyTorch).unwrap();
        let kinds = model.layer_kinds();
        assert_eq!(kinds[..4], ["conv2d+maxpool2d", "maxpool2d", "conv2d", "maxpool2d"]);
        assert_eq!(kinds[4..8], ["conv2d", "maxpool2d", "conv2d", "maxpool2d"]);
        // The fused pair computes what the two ops compute (its gradients: the conformance suite).
        let input: Vec<f32> = (0..3 * 2 * 12 * 12).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let x = crate::Backend::upload(&backend, &input).unwrap();
        model.forward(&backend, 3, crate::View::all(&x)).unwrap();
        let logits = crate::Backend::download(&backend, model.logits(3).unwrap()).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
    }
}
