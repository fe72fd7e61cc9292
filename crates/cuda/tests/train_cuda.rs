//! LeNet-5 trained one epoch on the GPU must reach >= 97% on the real MNIST test set.

use rr_core::data::Mnist;
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_cuda::CudaBackend;
use std::path::{Path, PathBuf};

#[test]
#[ignore = "needs a CUDA device"]
fn lenet_one_epoch_on_the_gpu_reaches_97_percent() {
    let b = CudaBackend::new(0).expect("needs a CUDA device");
    // RR_MNIST_DIR: where the data is when this binary runs on another machine.
    let dir = std::env::var_os("RR_MNIST_DIR")
        .map_or_else(|| -> PathBuf { Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist") }, Into::into);
    let data = Mnist::load(&dir).unwrap();
    let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
    let model = Model::new(&b, &ModelConfig::Lenet5, config.seed).unwrap();
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
