//! LeNet-5 trained one epoch on the GPU must reach >= 97% on the real MNIST test
//! set; the strong MNIST CNN (convolutions of 32 to 128 channels, on cuDNN's
//! tensor cores) must learn in fp16 with dynamic loss scaling.

use rr_core::data::Mnist;
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_cuda::CudaBackend;
use std::path::{Path, PathBuf};

/// One training run on the GPU at a time. Two in parallel (the test harness's
/// threads) once failed in cuDNN (EXECUTION_FAILED in the fp16 run while the
/// LeNet run recorded its graph); each passes alone. Not yet understood:
/// serialized here so that the tests check training, not that race.
static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn gpu() -> std::sync::MutexGuard<'static, ()> {
    GPU.lock().unwrap_or_else(|e| e.into_inner())
}

/// MNIST, from RR_MNIST_DIR when this binary runs on another machine.
fn mnist() -> rr_core::data::Splits {
    let dir = std::env::var_os("RR_MNIST_DIR")
        .map_or_else(|| -> PathBuf { Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist") }, Into::into);
    Mnist::load(&dir).unwrap()
}

#[test]
#[ignore = "needs a CUDA device"]
fn lenet_one_epoch_on_the_gpu_reaches_97_percent() {
    let _gpu = gpu();
    let b = CudaBackend::new(0).expect("needs a CUDA device");
    let data = mnist();
    let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed).unwrap();
    let train = DeviceDataset::upload(&b, &data.train, &data.info).unwrap();
    let test = DeviceDataset::upload(&b, &data.test, &data.info).unwrap();
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    let stats = trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    // Replayed (graph) steps count as optimizer steps too (Adam's bias correction uses the count).
    assert_eq!(trainer.optimizer.steps as usize, trainer.steps_per_epoch(train.len));
    let result = evaluate(&b, &mut trainer.model, &test, 1000).unwrap();
    eprintln!("{}: train loss {:.4}, test accuracy {:.2}%", rr_core::Backend::name(&b), stats.loss, 100.0 * result.accuracy);
    assert!(result.accuracy >= 0.97, "test accuracy {:.2}% < 97%", 100.0 * result.accuracy);
}

/// fp16 convolutions and products with GradScaler's loss scaling, recorded and
/// replayed as CUDA graphs: one epoch of the strong CNN reaches 98.5%, few steps
/// are skipped, and the scale stays a finite power of two.
#[test]
#[ignore = "needs a CUDA device"]
fn mnist_cnn_learns_in_fp16_with_loss_scaling() {
    let _gpu = gpu();
    use rr_core::loss_scale::LossScaling;
    use rr_core::{Backend, Precision};
    let b = CudaBackend::new(0).expect("needs a CUDA device");
    b.set_precision(Precision::Fp16).expect("fp16 needs cuDNN on the device");
    let data = mnist();
    let model_config = ModelConfig::MnistCnn { width: 32, dropout: 0.0 };
    let config = TrainConfig { epochs: 1, loss_scale: LossScaling::dynamic(), ..TrainConfig::recipe(&model_config, "mnist") };
    let model = Model::with_init(&b, &model_config, &[1, 28, 28], 10, config.seed, config.init).unwrap();
    let train = DeviceDataset::upload(&b, &data.train, &data.info).unwrap();
    let test = DeviceDataset::upload(&b, &data.test, &data.info).unwrap();
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    let stats = trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    let steps = trainer.steps_per_epoch(train.len) as u64;
    let epoch = trainer.loss_scaler.as_ref().and_then(|s| s.last_epoch()).expect("the scaler reports the epoch");
    let result = evaluate(&b, &mut trainer.model, &test, 1000).unwrap();
    eprintln!(
        "fp16: train loss {:.4}, test accuracy {:.2}%, loss scale {} after {} skipped of {steps} steps",
        stats.loss,
        100.0 * result.accuracy,
        epoch.scale,
        epoch.skipped
    );
    assert_eq!(b.precision(), Precision::Fp16);
    assert!(epoch.skipped * 20 < steps, "{} of {steps} steps skipped", epoch.skipped);
    assert!(epoch.scale.is_finite() && epoch.scale >= 1.0 && epoch.scale.log2().fract() == 0.0, "scale {}", epoch.scale);
    assert!(result.accuracy >= 0.985, "test accuracy {:.2}% < 98.5%", 100.0 * result.accuracy);
}
