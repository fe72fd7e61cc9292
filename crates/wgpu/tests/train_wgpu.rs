//! LeNet-5 trains on the wgpu backend. In CI (Mesa's llvmpipe, a software
//! Vulkan driver, about 370 images/s) a short run must lower the loss and
//! learn; on a real GPU a full epoch must reach 97%.

use rr_core::data::{Mnist, Splits};
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_wgpu::WgpuBackend;
use std::path::Path;

fn mnist() -> Splits {
    Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap()
}

#[test]
fn forty_steps_of_lenet_lower_the_loss_and_learn() {
    let b = WgpuBackend::new(true)
        .unwrap_or_else(|e| panic!("no wgpu adapter ({e}); on Debian: apt-get install mesa-vulkan-drivers libvulkan1"));
    let mut data = mnist();
    data.train.truncate(2560);
    data.test.truncate(1000);
    let config = TrainConfig { epochs: 2, ..TrainConfig::default() };
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed).unwrap();
    let (train, test) =
        (DeviceDataset::upload(&b, &data.train, &data.info).unwrap(), DeviceDataset::upload(&b, &data.test, &data.info).unwrap());
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    let first = trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    let second = trainer.train_epoch(&b, &train, 1, &mut |_, _| {}).unwrap();
    let result = evaluate(&b, &mut trainer.model, &test, 500).unwrap();
    eprintln!("{}: loss {:.3} -> {:.3}, accuracy {:.1}%", rr_core::Backend::name(&b), first.loss, second.loss, 100.0 * result.accuracy);
    assert!(second.loss < 0.7 * first.loss, "the loss must fall: {} then {}", first.loss, second.loss);
    assert!(result.accuracy > 0.7, "40 steps: test accuracy {:.1}% (chance is 10%)", 100.0 * result.accuracy);
}

#[test]
#[ignore = "needs a real GPU through wgpu (Vulkan, Metal or DirectX 12)"]
fn lenet_one_epoch_on_a_real_gpu_reaches_97_percent() {
    let b = WgpuBackend::new(false).unwrap_or_else(|e| panic!("needs a real GPU: {e}"));
    let data = mnist();
    let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed).unwrap();
    let (train, test) =
        (DeviceDataset::upload(&b, &data.train, &data.info).unwrap(), DeviceDataset::upload(&b, &data.test, &data.info).unwrap());
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    let result = evaluate(&b, &mut trainer.model, &test, 1000).unwrap();
    eprintln!("{}: one epoch, test accuracy {:.2}%", rr_core::Backend::name(&b), 100.0 * result.accuracy);
    assert!(result.accuracy >= 0.97, "test accuracy {:.2}% < 97%", 100.0 * result.accuracy);
}
