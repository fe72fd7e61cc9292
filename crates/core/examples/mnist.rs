//! LeNet-5 on MNIST in a screenful, with the library alone (no CLI):
//! `cargo run --release -p rr-core --example mnist`. It asserts its accuracy.

use rr_core::data::Mnist;
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::CpuBackend;

fn main() -> rr_core::Result<()> {
    let backend = CpuBackend::new(0)?; // all cores
    let mnist = Mnist::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"))?;
    let (train, test) =
        (DeviceDataset::upload(&backend, &mnist.train, &mnist.info)?, DeviceDataset::upload(&backend, &mnist.test, &mnist.info)?);

    let config = TrainConfig { epochs: 3, ..TrainConfig::default() }; // Nesterov SGD 0.1, one-cycle, batch 128
    let model = Model::new(&backend, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed)?;
    let mut trainer = Trainer::new(&backend, model, config.clone(), train.len)?;
    for epoch in 0..config.epochs {
        let stats = trainer.train_epoch(&backend, &train, epoch, &mut |_, _| {})?;
        let result = evaluate(&backend, &mut trainer.model, &test, 1000)?;
        println!("epoch {}: train loss {:.4}, test accuracy {:.2}%", epoch + 1, stats.loss, 100.0 * result.accuracy);
        if epoch + 1 == config.epochs {
            assert!(result.accuracy >= 0.98, "LeNet-5 should pass 98% in 3 epochs");
        }
    }
    Ok(())
}
