//! The real thing: LeNet-5 trained for one epoch on the real MNIST training set
//! must reach >= 97% on the real test set (CPU backend).

use rr_core::data::Mnist;
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::CpuBackend;
use std::path::Path;

#[test]
fn lenet_one_epoch_reaches_97_percent() {
    let b = CpuBackend::new(0).unwrap();
    let data = Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    // The default recipe, planned over one epoch (its one-cycle schedule runs its whole course).
    let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed).unwrap();
    let train = DeviceDataset::upload(&b, &data.train, &data.info).unwrap();
    let test = DeviceDataset::upload(&b, &data.test, &data.info).unwrap();
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    let start = std::time::Instant::now();
    let stats = trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    assert_eq!(trainer.optimizer.steps as usize, trainer.steps_per_epoch(train.len));
    let seconds = start.elapsed().as_secs_f64();
    let result = evaluate(&b, &mut trainer.model, &test, 1000).unwrap();
    eprintln!("one epoch in {seconds:.1}s: train loss {:.4}, test accuracy {:.2}%", stats.loss, 100.0 * result.accuracy);
    assert_eq!(result.samples, 10_000);
    assert!(result.accuracy >= 0.97, "test accuracy {:.2}% < 97%", 100.0 * result.accuracy);
}

/// Muon for every weight (momentum 0.6, Nesterov, no weight renormalization:
/// LeNet has no BatchNorm), SGD for the biases: one epoch must also reach 97%.
#[test]
fn lenet_with_muon_one_epoch_reaches_97_percent() {
    use rr_core::optim::{Muon, ParamGroup};
    let b = CpuBackend::new(0).unwrap();
    let data = Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    let muon = Muon { normalize_weights: false, ..Muon::airbench() };
    // Muon's learning rate: 0.3 x the recipe's 0.1 (its one-cycle schedule applies to both).
    let groups = vec![ParamGroup { muon: Some(muon), ..ParamGroup::new("*.weight", 0.3) }];
    let config = TrainConfig { epochs: 1, param_groups: groups, ..TrainConfig::default() };
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed).unwrap();
    let train = DeviceDataset::upload(&b, &data.train, &data.info).unwrap();
    let test = DeviceDataset::upload(&b, &data.test, &data.info).unwrap();
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    let stats = trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    let result = evaluate(&b, &mut trainer.model, &test, 1000).unwrap();
    eprintln!("Muon: train loss {:.4}, test accuracy {:.2}%", stats.loss, 100.0 * result.accuracy);
    assert!(result.accuracy >= 0.97, "test accuracy {:.2}% < 97%", 100.0 * result.accuracy);
}
