//! `export --format onnx`: the exported models, run by ONNX Runtime
//! (scripts/check_onnx.py; `pip install onnxruntime numpy`, as scripts/test.sh does),
//! predict what ours predict and their logits agree within 1e-4 (absolute).

mod common;

use common::{bin, repo};
use rr_core::backend::{Gather, View, ViewMut};
use rr_core::checkpoint;
use rr_core::data::DatasetInfo;
use rr_core::graph::{Conv, GraphBuilder, Op};
use rr_core::model::{Init, Model, ModelConfig};
use rr_core::{Backend, CpuBackend};
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-export-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `export` on a checkpoint; returns the .onnx path.
fn export(ckpt: &Path) -> PathBuf {
    let out = ckpt.with_extension("onnx");
    let o = bin().args(["export", "--format", "onnx", "--checkpoint"]).arg(ckpt).arg("--out").arg(&out).output().unwrap();
    assert!(o.status.success(), "export failed: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("opset 17") && stdout.contains("input `input`"), "unexpected output: {stdout}");
    out
}

/// Our logits (n, classes) for raw u8 images, normalized by the gather op as in training.
fn our_logits(ckpt: &Path, images: &[u8]) -> Vec<f32> {
    let backend = CpuBackend::new(0).unwrap();
    let (mut model, stored) = checkpoint::load_model(ckpt, &backend).unwrap();
    let info = stored.dataset(ckpt).unwrap();
    let n = images.len() / model.input_len();
    let pixels = backend.upload(images).unwrap();
    let labels = backend.upload(&vec![0u8; n]).unwrap();
    let idx = backend.upload(&(0..n as u32).collect::<Vec<_>>()).unwrap();
    let mut x = backend.alloc::<f32>(n * model.input_len()).unwrap();
    let mut y = backend.alloc::<u32>(n).unwrap();
    let gather = Gather::new(n, &info);
    backend
        .gather_batch(&gather, View::all(&pixels), View::all(&labels), View::all(&idx), ViewMut::all(&mut x), ViewMut::all(&mut y))
        .unwrap();
    model.forward(&backend, n, View::all(&x)).unwrap();
    backend.download(model.logits(n).unwrap()).unwrap()
}

/// ONNX Runtime's predictions and logits for `images` against ours (scripts/check_onnx.py).
fn assert_onnxruntime_agrees(onnx: &Path, ckpt: &Path, images: &[u8]) {
    let logits = our_logits(ckpt, images);
    let (img_path, logits_path) = (onnx.with_extension("u8"), onnx.with_extension("f32"));
    std::fs::write(&img_path, images).unwrap();
    std::fs::write(&logits_path, logits.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let o = Command::new("python3")
        .arg(repo().join("scripts/check_onnx.py"))
        .args([onnx, &img_path, &logits_path])
        .args(["--tol", "1e-4"])
        .output()
        .expect("python3 is needed to run scripts/check_onnx.py");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{}: ONNX Runtime check failed:\n{stdout}{stderr}", onnx.display());
    println!("{}: {stdout}", onnx.display());
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// A freshly initialized model with BatchNorm statistics and affine
/// parameters set far from (0, 1, 1, 0), so that the exported layout of
/// each of them matters; saved as a checkpoint.
fn random_checkpoint(dir: &Path, model: Model<CpuBackend>, info: &DatasetInfo) -> PathBuf {
    let backend = CpuBackend::new(0).unwrap();
    let mut model = model;
    let mut tensors = model.state_dict(&backend).unwrap();
    let mut k = 0u64;
    for (name, _, values) in &mut tensors {
        let bn = tensors_of_batchnorm(&model, name);
        let range = match name.rsplit('.').next() {
            Some("running_mean") => (-0.5, 0.5),
            Some("running_var") => (0.5, 2.0),
            Some("weight") if bn => (0.5, 1.5),
            Some("bias") if bn => (-0.3, 0.3),
            _ => continue,
        };
        k += 1;
        let draws = noise(values.len(), 0x9e37_79b9 + k);
        for (v, b) in values.iter_mut().zip(draws) {
            *v = range.0 + (range.1 - range.0) * b as f32 / 255.0;
        }
    }
    model.load_state_dict(&backend, &tensors, dir).unwrap();
    let path = dir.join(format!("{}.safetensors", model.graph.name));
    checkpoint::save(&path, &backend, &model, &[info.metadata_entry()]).unwrap();
    path
}

/// Whether `name` is a tensor of a BatchNorm node of `model`.
fn tensors_of_batchnorm(model: &Model<CpuBackend>, name: &str) -> bool {
    model
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::BatchNorm { .. }) && n.name.as_deref().is_some_and(|p| name.starts_with(&format!("{p}."))))
}

fn cifar_info() -> DatasetInfo {
    use rr_core::data::{CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD};
    DatasetInfo {
        name: "cifar10".into(),
        shape: [3, 32, 32],
        classes: 10,
        class_names: CIFAR10_CLASSES.map(String::from).to_vec(),
        mean: CIFAR10_MEAN.to_vec(),
        std: CIFAR10_STD.to_vec(),
    }
}

#[test]
fn lenet_trained_on_mnist_agrees_with_onnxruntime_on_1000_test_images() {
    let dir = temp_dir("lenet");
    let o = bin().args(["train", "--device", "cpu", "--epochs", "1", "--limit-train", "2000", "--out"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = dir.join("model.safetensors");
    let onnx = export(&ckpt);
    let mnist = rr_core::data::Mnist::load(&repo().join("data/mnist")).unwrap();
    assert_onnxruntime_agrees(&onnx, &ckpt, &mnist.test.images[..1000 * 784]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn residual_batchnorm_and_dropout_models_agree_with_onnxruntime() {
    let dir = temp_dir("graphs");
    let backend = CpuBackend::new(0).unwrap();
    let mnist = DatasetInfo::mnist();
    let builtin = |config: &ModelConfig, info: &DatasetInfo| Model::new(&backend, config, &info.shape, info.classes, 7).unwrap();
    let models = [
        (builtin(&ModelConfig::CifarResnet { depth: 20 }, &cifar_info()), cifar_info(), 200),
        (builtin(&ModelConfig::MnistCnn { width: 16, dropout: 0.2 }, &mnist), mnist.clone(), 200),
        (builtin(&ModelConfig::mlp_default(), &mnist), mnist.clone(), 200),
        (builtin(&ModelConfig::Resnet18, &cifar_info()), cifar_info(), 6),
        // Whitening conv, BatchNorm-GELU, 3x3 pooling, a bias-free Linear scaled by 1/9 (ONNX Gemm's alpha).
        (builtin(&ModelConfig::speed_widths(8), &cifar_info()), cifar_info(), 100),
        (Model::from_graph(&backend, odd_ops_graph(), 7, Init::He).unwrap(), odd_ops_info(), 200),
    ];
    for (i, (model, info, n)) in models.into_iter().enumerate() {
        let ckpt = random_checkpoint(&dir, model, &info);
        let onnx = export(&ckpt);
        let images = noise(n * info.shape.iter().product::<usize>(), 1 + i as u64);
        assert_onnxruntime_agrees(&onnx, &ckpt, &images);
        std::fs::remove_file(&ckpt).unwrap();
        std::fs::remove_file(&onnx).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The ops no built-in model has: padded max and average pools, a fused
/// ReLU on a max pool, BatchNorm2d + GELU, GELU, BatchNorm1d + ReLU, and a dropout as the last node.
fn odd_ops_graph() -> rr_core::Graph {
    let mut g = GraphBuilder::new("odd-ops", &[3, 12, 12]);
    let x = g.input();
    let x = g.conv2d("conv", x, Conv::new(8, 3).stride(2).pad(1)).unwrap();
    let x = g.batch_norm_gelu("norm", x).unwrap();
    let x = g.push(None, Op::MaxPool2d { kernel: 3, stride: 1, pad: 1, relu: true }, &[x]).unwrap();
    let x = g.push(None, Op::AvgPool2d { kernel: 3, stride: 2, pad: 1 }, &[x]).unwrap();
    let x = g.gelu(x).unwrap();
    let x = g.linear("fc1", x, 24).unwrap();
    let x = g.batch_norm_relu("bn", x).unwrap();
    let x = g.linear("fc2", x, 5).unwrap();
    let x = g.dropout(x, 0.3).unwrap();
    g.finish(x).unwrap()
}

fn odd_ops_info() -> DatasetInfo {
    DatasetInfo {
        name: "image-folder".into(),
        shape: [3, 12, 12],
        classes: 5,
        class_names: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.2, 0.25, 0.3],
    }
}

#[test]
fn export_refuses_bad_input_with_clear_errors() {
    let dir = temp_dir("errors");
    let run = |args: &[&str]| {
        let o = bin().arg("export").args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let missing = dir.join("none.safetensors");
    let (code, err) = run(&["--checkpoint", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("none.safetensors"), "{err}");

    let (code, err) = run(&["--checkpoint", missing.to_str().unwrap(), "--format", "tflite"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("tflite") && err.contains("onnx"), "{err}");

    // A LeNet checkpoint without one of its tensors.
    let backend = CpuBackend::new(0).unwrap();
    let model = Model::new(&backend, &ModelConfig::Lenet5, &[1, 28, 28], 10, 1).unwrap();
    let mut tensors = model.state_dict(&backend).unwrap();
    tensors.retain(|(name, _, _)| name != "fc3.bias");
    let ckpt = dir.join("partial.safetensors");
    let meta = [
        ("model", serde_json::to_string(&model.config).unwrap()),
        ("graph", serde_json::to_string(&model.graph).unwrap()),
        DatasetInfo::mnist().metadata_entry(),
    ];
    let meta: Vec<(&str, String)> = meta.iter().map(|(k, v)| (*k, v.clone())).collect();
    checkpoint::save_tensors(&ckpt, &tensors, &meta).unwrap();
    let (code, err) = run(&["--checkpoint", ckpt.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("partial.safetensors") && err.contains("fc3.bias") && err.contains("missing"), "{err}");
    assert!(!ckpt.with_extension("onnx").exists(), "no model is written on error");
    std::fs::remove_dir_all(&dir).unwrap();
}
