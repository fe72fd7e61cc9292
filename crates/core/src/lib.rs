//! rusty-recognition core: everything that does not depend on a particular device.
//!
//! - [`backend`]: the [`Backend`] contract every device implements (buffers + ops).
//! - [`reference`](mod@reference): plain, obviously-correct implementations of every op; the
//!   fast backends are tested against these.
//! - [`cpu`]: the CPU backend (GEMM crate + rayon).
//! - [`layers`]: layers with forward/backward (Linear, Conv2d, pools, BatchNorm, Dropout, ...).
//! - [`graph`]: models as graphs (skip connections, several inputs) and the
//!   builder to write your own; [`model`]: built-in architectures (LeNet-5, MLP,
//!   mnist-cnn, ResNet-18, CIFAR ResNets) and the [`Model`] that runs any graph.
//! - [`optim`], [`train`]: SGD/Adam/AdamW with schedules, the recipes, and the
//!   training / evaluation loops (augmentation on the device).
//! - [`random`]: counter-based random numbers, the same on every backend.
//! - [`data`], [`checkpoint`]: MNIST IDX files and safetensors checkpoints.
//! - [`onnx`]: export of any model graph with its parameters as an ONNX model.
//! - [`conformance`]: the test suite every backend must pass.

pub mod backend;
pub mod checkpoint;
pub mod conformance;
pub mod cpu;
pub mod data;
pub mod error;
pub mod graph;
pub mod layers;
pub mod lookahead;
pub mod loss_scale;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod profile;
pub mod random;
pub mod reference;
pub mod train;
pub mod tta;
pub mod whiten;

pub use backend::{Backend, Elem, Precision, Storage, View, ViewMut};
pub use cpu::CpuBackend;
pub use error::{Error, Result};
pub use graph::{Conv, Graph, GraphBuilder, NodeId};
pub use model::{Model, ModelConfig};
