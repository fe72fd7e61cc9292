//! Checkpoints: round-trip with PyTorch names and shapes; bad files give a
//! clear error naming the file and the problem, never a panic.

use rr_core::backend::View;
use rr_core::checkpoint::{self, write_atomic};
use rr_core::model::{Model, ModelConfig};
use rr_core::Backend;
use rr_core::{CpuBackend, Error};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logits(b: &CpuBackend, model: &mut Model<CpuBackend>) -> Vec<f32> {
    let x: Vec<f32> = (0..2 * 784).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let x = b.upload(&x).unwrap();
    model.forward(b, 2, View::all(&x)).unwrap();
    b.download(model.logits(2).unwrap()).unwrap()
}

fn ckpt_msg<T>(r: rr_core::Result<T>) -> String {
    match r {
        Err(Error::Checkpoint { msg, .. }) => msg,
        Err(other) => panic!("expected a checkpoint error, got {other:?}"),
        Ok(_) => panic!("expected a checkpoint error, got success"),
    }
}

#[test]
fn lenet_checkpoint_round_trips_with_pytorch_names() {
    let b = CpuBackend::new(1).unwrap();
    let dir = tmpdir("roundtrip");
    let path = dir.join("m.safetensors");
    let mut model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, 7).unwrap();
    checkpoint::save(&path, &b, &model, &[("epoch", "3".into())]).unwrap();
    let ckpt = checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.config, ModelConfig::Lenet5);
    assert_eq!(ckpt.metadata["epoch"], "3");
    assert_eq!(ckpt.metadata["format"], "pt");
    let shapes: HashMap<_, _> = ckpt.tensors.iter().map(|(n, s, _)| (n.as_str(), s.clone())).collect();
    let expected = [
        ("conv1.weight", vec![6, 1, 5, 5]),
        ("conv1.bias", vec![6]),
        ("conv2.weight", vec![16, 6, 5, 5]),
        ("conv2.bias", vec![16]),
        ("fc1.weight", vec![120, 400]),
        ("fc1.bias", vec![120]),
        ("fc2.weight", vec![84, 120]),
        ("fc2.bias", vec![84]),
        ("fc3.weight", vec![10, 84]),
        ("fc3.bias", vec![10]),
    ];
    assert_eq!(shapes.len(), expected.len());
    for (name, shape) in expected {
        assert_eq!(shapes[name], shape, "{name}");
    }
    let (mut loaded, _) = checkpoint::load_model(&path, &b).unwrap();
    assert_eq!(logits(&b, &mut loaded), logits(&b, &mut model));
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn mlp_checkpoint_round_trips() {
    let b = CpuBackend::new(1).unwrap();
    let path = tmpdir("mlp").join("m.safetensors");
    let config = ModelConfig::Mlp { sizes: vec![784, 33, 10] };
    let mut model = Model::new(&b, &config, &[1, 28, 28], 10, 1).unwrap();
    checkpoint::save(&path, &b, &model, &[]).unwrap();
    let (mut loaded, ckpt) = checkpoint::load_model(&path, &b).unwrap();
    assert_eq!(ckpt.config, config);
    assert_eq!(logits(&b, &mut loaded), logits(&b, &mut model));
}

fn write_st(path: &Path, tensors: &[(&str, Vec<usize>, Dtype)], metadata: Option<HashMap<String, String>>) {
    let datas: Vec<Vec<u8>> = tensors.iter().map(|(_, s, d)| vec![0u8; s.iter().product::<usize>() * d.bitsize() / 8]).collect();
    let views: Vec<_> =
        tensors.iter().zip(&datas).map(|((n, s, d), data)| (n.to_string(), TensorView::new(*d, s.clone(), data).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let b = CpuBackend::new(1).unwrap();
    let dir = tmpdir("bad");
    let good = dir.join("good.safetensors");
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, 0).unwrap();
    checkpoint::save(&good, &b, &model, &[]).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    // Truncated at several points, and garbage.
    for cut in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.join(format!("cut{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = checkpoint::load_model(&p, &b).err().expect("truncated checkpoint must fail");
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all, just some text").unwrap();
    assert!(ckpt_msg(checkpoint::load(&garbage)).contains("not a safetensors file"));
    assert!(matches!(checkpoint::load(&dir.join("missing.safetensors")), Err(Error::Io { .. })));

    let meta = |m: &str| Some(HashMap::from([("model".to_string(), m.to_string())]));
    let lenet = r#"{"arch":"lenet5"}"#;
    let p = dir.join("x.safetensors");
    // No metadata: architecture unknown.
    write_st(&p, &[("conv1.weight", vec![6, 1, 5, 5], Dtype::F32)], None);
    assert!(ckpt_msg(checkpoint::load(&p)).contains("architecture is unknown"));
    // Unknown architecture.
    write_st(&p, &[("conv1.weight", vec![6, 1, 5, 5], Dtype::F32)], meta(r#"{"arch":"resnet"}"#));
    assert!(ckpt_msg(checkpoint::load(&p)).contains("not a known model config"));
    // Wrong dtype.
    write_st(&p, &[("conv1.weight", vec![6, 1, 5, 5], Dtype::F16)], meta(lenet));
    assert!(ckpt_msg(checkpoint::load(&p)).contains("expected F32"));
    // Missing tensors.
    write_st(&p, &[("conv1.weight", vec![6, 1, 5, 5], Dtype::F32)], meta(lenet));
    assert!(ckpt_msg(checkpoint::load_model(&p, &b)).contains("missing tensor `conv1.bias`"));
    // Wrong shape: names the tensor and both shapes.
    let mut all: Vec<(String, Vec<usize>)> = model.params.entries.iter().map(|e| (e.name.clone(), e.shape.clone())).collect();
    all[0].1 = vec![6, 1, 3, 3];
    let tensors: Vec<_> = all.iter().map(|(n, s)| (n.as_str(), s.clone(), Dtype::F32)).collect();
    write_st(&p, &tensors, meta(lenet));
    let msg = ckpt_msg(checkpoint::load_model(&p, &b));
    assert!(msg.contains("conv1.weight") && msg.contains("[6, 1, 3, 3]") && msg.contains("[6, 1, 5, 5]"), "{msg}");
    // An extra tensor.
    let mut extra = model.params.entries.iter().map(|e| (e.name.as_str(), e.shape.clone(), Dtype::F32)).collect::<Vec<_>>();
    extra.push(("fc4.weight", vec![2], Dtype::F32));
    write_st(&p, &extra, meta(lenet));
    assert!(ckpt_msg(checkpoint::load_model(&p, &b)).contains("unexpected tensor `fc4.weight`"));
}

#[test]
fn atomic_write_replaces_and_leaves_no_temporary() {
    let dir = tmpdir("atomic");
    let p = dir.join("f.bin");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    // A folder that does not exist: an error naming the path, nothing left.
    let err = write_atomic(&dir.join("no/such/dir/f.bin"), b"x").unwrap_err().to_string();
    assert!(err.contains("no/such/dir/f.bin"), "{err}");
}

#[test]
fn only_the_names_of_atomic_writes_count_as_temporary() {
    assert!(checkpoint::is_temporary(&format!(".model.safetensors.tmp-{}", std::process::id())));
    for name in ["model.safetensors", "model.safetensors.tmp-12", ".model.safetensors.tmp-", ".m.tmp-12x", ".tmp-x"] {
        assert!(!checkpoint::is_temporary(name), "{name}");
    }
}

#[test]
fn resnet18_has_torchvision_names_and_size() {
    let b = CpuBackend::new(1).unwrap();
    let model = Model::new(&b, &ModelConfig::Resnet18, &[3, 32, 32], 10, 0).unwrap();
    // torchvision's resnet18 with the CIFAR stem and 10 classes (torch_cifar.py's ResNet18).
    assert_eq!(model.params.count(), 11_173_962);
    let state = model.state_dict(&b).unwrap();
    let shapes: HashMap<_, _> = state.iter().map(|(n, s, _)| (n.as_str(), s.clone())).collect();
    for (name, shape) in [
        ("conv1.weight", vec![64, 3, 3, 3]),
        ("bn1.running_mean", vec![64]),
        ("bn1.num_batches_tracked", vec![]),
        ("layer1.0.conv1.weight", vec![64, 64, 3, 3]),
        ("layer1.1.bn2.bias", vec![64]),
        ("layer2.0.conv1.weight", vec![128, 64, 3, 3]),
        ("layer2.0.downsample.0.weight", vec![128, 64, 1, 1]),
        ("layer2.0.downsample.1.running_var", vec![128]),
        ("layer4.1.conv2.weight", vec![512, 512, 3, 3]),
        ("fc.weight", vec![10, 512]),
        ("fc.bias", vec![10]),
    ] {
        assert_eq!(shapes.get(name), Some(&shape), "{name}");
    }
    // Convolutions have no bias (BatchNorm follows), and only stride-2 blocks have a downsample.
    assert!(!shapes.contains_key("conv1.bias") && !shapes.contains_key("layer1.0.downsample.0.weight"));
    // 20 BatchNorms x 5 tensors + 20 convs + fc weight and bias: PyTorch's 122 state-dict entries.
    assert_eq!(state.len(), 122);
}

#[test]
fn graph_models_round_trip_without_their_code() {
    let b = CpuBackend::new(1).unwrap();
    let path = tmpdir("graph").join("m.safetensors");
    let mut model = Model::new(&b, &ModelConfig::CifarResnet { depth: 8 }, &[3, 8, 8], 7, 5).unwrap();
    checkpoint::save(&path, &b, &model, &[]).unwrap();
    let (mut loaded, ckpt) = checkpoint::load_model(&path, &b).unwrap();
    assert_eq!(ckpt.graph, model.graph);
    assert_eq!(loaded.input_shape(), &[3, 8, 8]);
    let x = b.upload(&(0..2 * 192).map(|i| (i % 17) as f32 / 17.0).collect::<Vec<_>>()).unwrap();
    let run = |m: &mut Model<CpuBackend>| {
        m.forward(&b, 2, View::all(&x)).unwrap();
        b.download(m.logits(2).unwrap()).unwrap()
    };
    assert_eq!(run(&mut loaded), run(&mut model));
    // A stored graph that does not hold together is refused, naming the problem.
    let mut tensors = checkpoint::load_tensors(&path).unwrap();
    let mut graph = model.graph.clone();
    graph.nodes[3].inputs = vec![rr_core::NodeId(40)];
    tensors.1.insert("graph".into(), serde_json::to_string(&graph).unwrap());
    let meta: Vec<(&str, String)> = tensors.1.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let bad = path.with_file_name("bad.safetensors");
    checkpoint::save_tensors(&bad, &tensors.0, &meta).unwrap();
    let err = checkpoint::load(&bad).unwrap_err().to_string();
    assert!(err.contains("not computed before it"), "{err}");
}
