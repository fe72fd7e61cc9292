//! ONNX export: any model [`Graph`] with its trained parameters as an ONNX
//! model (opset [`OPSET`]) that ONNX Runtime, OpenCV's DNN module, TensorRT or
//! Netron read.
//!
//! The model takes the *normalized* float image `input` (batch, C, H, W),
//! `x = (pixel / 255 - mean[c]) / std[c]` with the dataset's per-channel mean
//! and std (stored in the metadata properties `mean` and `std`, beside
//! `class_names`), exactly what the model sees in training, and returns the
//! `logits` (batch, classes). The batch dimension is symbolic (`batch`).
//!
//! Ops map one to one: Conv, Gemm (`transB`, PyTorch's (out, in) weights),
//! BatchNormalization with the running statistics (then Relu where ours fuses
//! one), MaxPool (then Relu where fused), AveragePool (padding counted, as
//! ours), GlobalAveragePool + Flatten, Flatten, Relu, Add. Dropout is left out
//! (it is the identity at inference). GELU, which opset 17 lacks (Gelu came
//! in opset 20), is PyTorch's decomposition `Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)`.

pub mod proto;

use crate::checkpoint::Checkpoint;
use crate::data::DatasetInfo;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Op};
use crate::model::NamedTensor;
use proto::*;
use std::collections::HashSet;
use std::path::Path;

/// The ONNX operator set the exported models use.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// The names of the graph's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

/// The ONNX model of a checkpoint: its stored graph, parameters and dataset description.
pub fn from_checkpoint(ckpt: &Checkpoint, path: &Path) -> Result<ModelProto> {
    let info = ckpt.dataset(path)?;
    let model_json = ckpt.metadata.get(crate::checkpoint::MODEL_KEY).cloned();
    export(&ckpt.graph, &ckpt.tensors, &info, model_json)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: format!("cannot export to ONNX: {e}") })
}

/// The ONNX model of `graph` with the state-dict `tensors` (PyTorch names and
/// layouts, as checkpoints hold them), for data as `info` describes it.
/// `model_json` (the checkpoint's model config) is kept in the metadata.
pub fn export(graph: &Graph, tensors: &[NamedTensor], info: &DatasetInfo, model_json: Option<String>) -> Result<ModelProto> {
    let shapes = graph.shapes()?;
    let classes = shapes.last().map_or(0, |s| s.iter().product());
    let mut out = GraphWriter { graph, tensors, nodes: Vec::new(), initializers: Vec::new(), names: vec![INPUT.to_string()] };
    for (i, node) in graph.nodes.iter().enumerate() {
        let name = out.node(i, node)?;
        out.names.push(name);
    }
    out.name_output();
    out.check_unique_names()?;
    let mut input_dims = vec![Dim::Batch];
    input_dims.extend(shapes[0].iter().map(|&d| Dim::Fixed(d)));
    let onnx_graph = GraphProto {
        node: out.nodes,
        name: Some(graph.name.clone()),
        initializer: out.initializers,
        doc_string: None,
        input: vec![value_info(INPUT, &input_dims, &input_doc(info))],
        output: vec![value_info(OUTPUT, &[Dim::Batch, Dim::Fixed(classes)], "logits (batch, classes); softmax gives the probabilities")],
        value_info: Vec::new(),
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("rusty-recognition".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(format!("{} trained on {}. {}", graph.name, info.name, input_doc(info))),
        graph: Some(onnx_graph),
        metadata_props: metadata(info, model_json),
    })
}

/// The model as bytes (the `.onnx` file).
pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// What the input is, in words (the doc strings).
fn input_doc(info: &DatasetInfo) -> String {
    format!(
        "Input `{INPUT}`: float32 (batch, {}, {}, {}), normalized per channel c as x = (pixel / 255 - mean[c]) / std[c] \
         with pixel in 0..255, mean {:?}, std {:?} (metadata `mean`, `std`). Output `{OUTPUT}`: (batch, {}) over classes {:?}.",
        info.shape[0], info.shape[1], info.shape[2], info.mean, info.std, info.classes, info.class_names
    )
}

fn metadata(info: &DatasetInfo, model_json: Option<String>) -> Vec<StringStringEntryProto> {
    let json = |v: &[String]| serde_json::to_string(v).expect("strings serialize");
    let numbers = |v: &[f32]| serde_json::to_string(v).expect("numbers serialize");
    let mut props = vec![
        ("dataset", info.name.clone()),
        ("class_names", json(&info.class_names)),
        ("mean", numbers(&info.mean)),
        ("std", numbers(&info.std)),
        ("normalization", "x = (pixel / 255 - mean[c]) / std[c] per channel c, pixel in 0..255".to_string()),
    ];
    props.extend(model_json.map(|m| ("model", m)));
    props.into_iter().map(|(k, v)| StringStringEntryProto { key: Some(k.into()), value: Some(v) }).collect()
}

enum Dim {
    Batch,
    Fixed(usize),
}

fn value_info(name: &str, dims: &[Dim], doc: &str) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => Value::DimParam("batch".into()),
                &Dim::Fixed(n) => Value::DimValue(n as i64),
            }),
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type: Some(FLOAT), shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)) }),
        doc_string: Some(doc.into()),
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(ATTR_INTS),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(ATTR_INT), i: Some(value), ..Default::default() }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(ATTR_FLOAT), f: Some(value), ..Default::default() }
}

/// A square window's attributes: kernel_shape, strides, pads (the same on every side).
fn window(kernel: usize, stride: usize, pad: usize) -> Vec<AttributeProto> {
    vec![ints("kernel_shape", &[kernel, kernel]), ints("strides", &[stride, stride]), ints("pads", &[pad, pad, pad, pad])]
}

/// Builds the ONNX nodes and initializers of a graph, node by node.
struct GraphWriter<'a> {
    graph: &'a Graph,
    tensors: &'a [NamedTensor],
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The ONNX name of each tensor of `graph`: [input, node 0's output, ...].
    names: Vec<String>,
}

impl GraphWriter<'_> {
    /// Emits graph node `i`; returns the name of the tensor that holds its output.
    fn node(&mut self, i: usize, node: &Node) -> Result<String> {
        let x = self.names[node.inputs[0].0].clone();
        // PyTorch's naming: node `/conv1/Conv`, its output `/conv1/Conv_output_0`.
        let scope = node.name.clone().unwrap_or_else(|| format!("{}_{i}", node.label()));
        let here = |e: Error| Error::config(format!("model `{}`, node {i} ({})", self.graph.name, node.label()), e.to_string());
        let param = |w: &mut Self, suffix: &str, shape: &[usize]| w.param(&scope, suffix, shape).map_err(here);
        match node.op {
            Op::Conv2d { c_in, c_out, kernel, stride, pad, bias } => {
                let mut inputs = vec![x, param(self, "weight", &[c_out, c_in, kernel, kernel])?];
                if bias {
                    inputs.push(param(self, "bias", &[c_out])?);
                }
                let mut attrs = window(kernel, stride, pad);
                attrs.extend([ints("dilations", &[1, 1]), int("group", 1)]);
                Ok(self.push(&scope, "Conv", inputs, attrs))
            }
            Op::Whiten { c_in, kernel } => {
                let c_out = crate::whiten::filters(c_in, kernel);
                let inputs = vec![x, param(self, "weight", &[c_out, c_in, kernel, kernel])?, param(self, "bias", &[c_out])?];
                let mut attrs = window(kernel, 1, 0);
                attrs.extend([ints("dilations", &[1, 1]), int("group", 1)]);
                Ok(self.push(&scope, "Conv", inputs, attrs))
            }
            Op::Linear { in_features, out_features, bias, scale } => {
                let mut inputs = vec![x, param(self, "weight", &[out_features, in_features])?];
                if bias {
                    inputs.push(param(self, "bias", &[out_features])?);
                }
                Ok(self.push(&scope, "Gemm", inputs, vec![int("transB", 1), float("alpha", scale)]))
            }
            Op::BatchNorm { channels, relu, gelu, eps, .. } => {
                let c = [channels];
                let inputs = vec![
                    x,
                    param(self, "weight", &c)?,
                    param(self, "bias", &c)?,
                    param(self, "running_mean", &c)?,
                    param(self, "running_var", &c)?,
                ];
                let eps = eps.unwrap_or(crate::layers::BatchNorm::<crate::CpuBackend>::new_2d(channels).eps);
                let y = self.push(&scope, "BatchNormalization", inputs, vec![float("epsilon", eps)]);
                Ok(match (relu, gelu) {
                    (true, _) => self.push(&scope, "Relu", vec![y], vec![]),
                    (_, true) => self.gelu(&scope, y),
                    _ => y,
                })
            }
            Op::Relu => Ok(self.push(&scope, "Relu", vec![x], vec![])),
            Op::Gelu => Ok(self.gelu(&scope, x)),
            Op::MaxPool2d { kernel, stride, pad, relu } => {
                // relu(maxpool(x)) = maxpool(relu(x)): the Relu goes on the smaller tensor.
                let y = self.push(&scope, "MaxPool", vec![x], window(kernel, stride, pad));
                Ok(if relu { self.push(&scope, "Relu", vec![y], vec![]) } else { y })
            }
            Op::AvgPool2d { kernel, stride, pad } => {
                let mut attrs = window(kernel, stride, pad);
                attrs.push(int("count_include_pad", 1));
                Ok(self.push(&scope, "AveragePool", vec![x], attrs))
            }
            Op::GlobalAvgPool => {
                let y = self.push(&scope, "GlobalAveragePool", vec![x], vec![]);
                Ok(self.push(&scope, "Flatten", vec![y], vec![int("axis", 1)]))
            }
            Op::Dropout { .. } => Ok(x),
            Op::Flatten => Ok(self.push(&scope, "Flatten", vec![x], vec![int("axis", 1)])),
            Op::Add => {
                let b = self.names[node.inputs[1].0].clone();
                Ok(self.push(&scope, "Add", vec![x, b], vec![]))
            }
        }
    }

    /// `x Φ(x) = 0.5 x (1 + erf(x / sqrt 2))` in opset 17's ops, as PyTorch exports `nn.GELU()`.
    fn gelu(&mut self, scope: &str, x: String) -> String {
        let sqrt2 = self.constant(scope, "sqrt2", std::f32::consts::SQRT_2);
        let one = self.constant(scope, "one", 1.0);
        let half = self.constant(scope, "half", 0.5);
        let scaled = self.push(scope, "Div", vec![x.clone(), sqrt2], vec![]);
        let erf = self.push(scope, "Erf", vec![scaled], vec![]);
        let one_plus = self.push(scope, "Add", vec![erf, one], vec![]);
        let product = self.push(scope, "Mul", vec![x, one_plus], vec![]);
        self.push(scope, "Mul", vec![product, half], vec![])
    }

    /// A scalar f32 initializer `/{scope}/{what}` (broadcast by the op that reads it); returns its name.
    fn constant(&mut self, scope: &str, what: &str, value: f32) -> String {
        let name = format!("/{scope}/{what}");
        self.initializers.push(TensorProto {
            dims: Vec::new(),
            data_type: Some(FLOAT),
            name: Some(name.clone()),
            raw_data: Some(value.to_le_bytes().to_vec()),
        });
        name
    }

    /// Adds a node; returns its output's name. A second node of the same op in one
    /// scope is `/{scope}/{op}_1` (PyTorch's naming), and so on.
    fn push(&mut self, scope: &str, op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let base = format!("/{scope}/{op}");
        let taken = |name: &str| self.nodes.iter().any(|n| n.name.as_deref() == Some(name));
        let name = (0..).map(|k| if k == 0 { base.clone() } else { format!("{base}_{k}") }).find(|n| !taken(n)).expect("a free name");
        let output = format!("{name}_output_0");
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name: Some(name),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
        output
    }

    /// Adds the state-dict tensor `{scope}.{suffix}` as an initializer (checking its shape); returns its name.
    fn param(&mut self, scope: &str, suffix: &str, shape: &[usize]) -> Result<String> {
        let name = format!("{scope}.{suffix}");
        let (_, got, values) = self
            .tensors
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| Error::config(format!("tensor `{name}`"), format!("missing (the layer needs shape {shape:?})")))?;
        if got != shape || values.len() != shape.iter().product::<usize>() {
            return Err(Error::config(format!("tensor `{name}`"), format!("has shape {got:?}, the layer needs {shape:?}")));
        }
        self.initializers.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            name: Some(name.clone()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        });
        Ok(name)
    }

    /// Renames the last tensor to [`OUTPUT`]: the last node's output, or through an
    /// Identity where the last op emitted nothing (a final dropout).
    fn name_output(&mut self) {
        let last = self.names.last().cloned().unwrap_or_else(|| INPUT.to_string());
        match self.nodes.last_mut() {
            Some(node) if node.output[0] == last => node.output[0] = OUTPUT.into(),
            _ => {
                self.nodes.push(NodeProto {
                    input: vec![last],
                    output: vec![OUTPUT.into()],
                    name: Some(format!("/{OUTPUT}/Identity")),
                    op_type: Some("Identity".into()),
                    ..Default::default()
                });
            }
        }
    }

    /// ONNX needs every value (tensor) name to be defined once.
    fn check_unique_names(&self) -> Result<()> {
        let mut seen: HashSet<&str> = HashSet::from([INPUT]);
        let defined = self.initializers.iter().filter_map(|t| t.name.as_deref()).chain(self.nodes.iter().map(|n| n.output[0].as_str()));
        for name in defined {
            if !seen.insert(name) {
                return Err(Error::config(format!("model `{}`", self.graph.name), format!("two ONNX values would be named `{name}`")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelConfig};
    use crate::CpuBackend;

    fn lenet() -> (Graph, Vec<NamedTensor>) {
        let backend = CpuBackend::new(1).unwrap();
        let model = Model::new(&backend, &ModelConfig::Lenet5, &[1, 28, 28], 10, 0).unwrap();
        (model.graph.clone(), model.state_dict(&backend).unwrap())
    }

    fn ops(model: &ModelProto) -> Vec<&str> {
        model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_deref().unwrap()).collect()
    }

    #[test]
    fn lenet_maps_to_onnx_ops_with_a_dynamic_batch() {
        let (graph, tensors) = lenet();
        let model = export(&graph, &tensors, &DatasetInfo::mnist(), None).unwrap();
        let relu_pool = ["Conv", "MaxPool", "Relu"];
        let expected: Vec<&str> = [&relu_pool[..], &relu_pool, &["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]].concat();
        assert_eq!(ops(&model), expected);
        let g = model.graph.as_ref().unwrap();
        assert_eq!(g.node.last().unwrap().output, vec![OUTPUT.to_string()]);
        // Parameters only: no num_batches_tracked, nothing duplicated.
        assert_eq!(g.initializer.len(), 10);
        let Some(type_proto::Value::TensorType(t)) = &g.input[0].r#type.as_ref().unwrap().value else { panic!("not a tensor") };
        use tensor_shape_proto::dimension::Value::{DimParam, DimValue};
        let dims: Vec<_> = t.shape.as_ref().unwrap().dim.iter().map(|d| d.value.clone().unwrap()).collect();
        assert_eq!(dims, vec![DimParam("batch".into()), DimValue(1), DimValue(28), DimValue(28)]);
        let meta: Vec<(&str, &str)> =
            model.metadata_props.iter().map(|p| (p.key.as_deref().unwrap(), p.value.as_deref().unwrap())).collect();
        assert!(meta.contains(&("mean", "[0.1307]")) && meta.contains(&("std", "[0.3081]")), "{meta:?}");
        // The bytes decode back to the same model.
        let decoded: ModelProto = prost::Message::decode(encode(&model).as_slice()).unwrap();
        assert_eq!(decoded, model);
    }

    #[test]
    fn gelu_is_the_erf_decomposition_with_unique_names() {
        let info =
            DatasetInfo { shape: [4, 1, 1], classes: 3, class_names: ["a", "b", "c"].map(String::from).to_vec(), ..DatasetInfo::mnist() };
        let backend = CpuBackend::new(1).unwrap();
        let mut g = crate::GraphBuilder::new("gelus", &[4]);
        let x = g.linear("fc1", g.input(), 4).unwrap();
        let x = g.gelu(x).unwrap();
        let x = g.gelu(x).unwrap();
        let x = g.linear("fc2", x, 3).unwrap();
        let graph = g.finish(x).unwrap();
        let model = Model::from_graph(&backend, graph.clone(), 0, crate::model::Init::PyTorch).unwrap();
        let onnx = export(&graph, &model.state_dict(&backend).unwrap(), &info, None).unwrap();
        let gelu = ["Div", "Erf", "Add", "Mul", "Mul"];
        assert_eq!(ops(&onnx), [&["Gemm"][..], &gelu, &gelu, &["Gemm"]].concat());
        let g = onnx.graph.as_ref().unwrap();
        // The second GELU reads the first one's output; its own Mul reads its input and the Add.
        let (first, second) = (&g.node[1..6], &g.node[6..11]);
        assert_eq!(second[0].input[0], first[4].output[0]);
        assert_eq!(second[3].input, vec![first[4].output[0].clone(), second[2].output[0].clone()]);
        let scalar = |name: &str| g.initializer.iter().find(|t| t.name.as_deref() == Some(name)).map(|t| t.raw_data.clone().unwrap());
        assert_eq!(scalar(&second[0].input[1]), Some(std::f32::consts::SQRT_2.to_le_bytes().to_vec()));
        assert_eq!(scalar(&second[4].input[1]), Some(0.5f32.to_le_bytes().to_vec()));
        // Every node and value name is defined once (two Muls per scope).
        let names: HashSet<&str> = g.node.iter().map(|n| n.name.as_deref().unwrap()).collect();
        assert_eq!(names.len(), g.node.len());
    }

    #[test]
    fn attributes_of_value_zero_still_carry_their_field() {
        // proto2: `i = 0` is written (field 3, varint 0), as the ONNX checker wants one value field.
        let bytes = prost::Message::encode_to_vec(&int("axis", 0));
        assert!(bytes.windows(2).any(|w| w == [0x18, 0x00]), "{bytes:?}");
    }

    #[test]
    fn a_final_dropout_is_left_out_and_the_logits_named() {
        let info = DatasetInfo {
            shape: [4, 1, 1],
            classes: 4,
            class_names: ["a", "b", "c", "d"].map(String::from).to_vec(),
            ..DatasetInfo::mnist()
        };
        let backend = CpuBackend::new(1).unwrap();
        let export_of = |with_fc: bool| {
            let mut g = crate::GraphBuilder::new("drop-last", &[4]);
            let x = if with_fc { g.linear("fc", g.input(), 4).unwrap() } else { g.input() };
            let x = g.dropout(x, 0.5).unwrap();
            let graph = g.finish(x).unwrap();
            let model = Model::from_graph(&backend, graph.clone(), 0, crate::model::Init::PyTorch).unwrap();
            export(&graph, &model.state_dict(&backend).unwrap(), &info, None).unwrap().graph.unwrap()
        };
        // The Gemm writes the logits itself.
        let g = export_of(true);
        assert_eq!(g.node.iter().map(|n| n.op_type.as_deref().unwrap()).collect::<Vec<_>>(), vec!["Gemm"]);
        assert_eq!(g.node[0].output, vec![OUTPUT.to_string()]);
        // Nothing computes them but the dropout of the input: an Identity does.
        let g = export_of(false);
        assert_eq!(g.node.len(), 1);
        assert_eq!(
            (g.node[0].op_type.as_deref(), &g.node[0].input[0], &g.node[0].output[0]),
            (Some("Identity"), &INPUT.to_string(), &OUTPUT.to_string())
        );
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named() {
        let (graph, mut tensors) = lenet();
        let info = DatasetInfo::mnist();
        tensors.iter_mut().find(|t| t.0 == "fc2.weight").unwrap().1 = vec![84, 121];
        let err = export(&graph, &tensors, &info, None).unwrap_err().to_string();
        assert!(err.contains("fc2.weight") && err.contains("[84, 121]") && err.contains("[84, 120]"), "{err}");
        tensors.retain(|t| t.0 != "conv1.bias");
        let err = export(&graph, &tensors, &info, None).unwrap_err().to_string();
        assert!(err.contains("conv1.bias") && err.contains("missing"), "{err}");
    }
}
