//! A network of your own, with a residual block, built in code and trained on
//! MNIST with the library alone: `cargo run --release -p rr-core --example custom_model`.
//! It prints the model's summary and asserts at least 98% test accuracy.

use rr_core::data::Mnist;
use rr_core::graph::{Conv, GraphBuilder, NodeId};
use rr_core::model::{Init, Model};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::{checkpoint, CpuBackend, Result};

/// relu(bn(conv(relu(bn(conv(x))))) + x): the block keeps the shape, so the shortcut is x itself.
fn residual(g: &mut GraphBuilder, name: &str, x: NodeId) -> Result<NodeId> {
    let c = g.shape(x)[0];
    let y = g.conv2d(&format!("{name}.conv1"), x, Conv::new(c, 3).pad(1).no_bias())?;
    let y = g.batch_norm_relu(&format!("{name}.bn1"), y)?;
    let y = g.conv2d(&format!("{name}.conv2"), y, Conv::new(c, 3).pad(1).no_bias())?;
    let y = g.batch_norm(&format!("{name}.bn2"), y)?;
    let y = g.add(y, x)?;
    g.relu(y)
}

fn main() -> Result<()> {
    let backend = CpuBackend::new(0)?; // all cores
    let mnist = Mnist::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"))?;

    // (1, 28, 28) -> conv 16 -> pool -> residual block -> pool -> global pool -> 10 classes
    let mut g = GraphBuilder::new("my-resnet", &mnist.info.shape);
    let x = g.input();
    let x = g.conv2d("stem", x, Conv::new(16, 3).pad(1).no_bias())?;
    let x = g.batch_norm_relu("stem_bn", x)?;
    let x = g.max_pool(x, 2, 2)?; // (16, 14, 14)
    let x = residual(&mut g, "block1", x)?;
    let x = g.conv2d("widen", x, Conv::new(32, 3).pad(1).stride(2).no_bias())?; // (32, 7, 7)
    let x = g.batch_norm_relu("widen_bn", x)?;
    let x = residual(&mut g, "block2", x)?;
    let x = g.global_avg_pool(x)?;
    let logits = g.linear("fc", x, mnist.info.classes)?;
    let graph = g.finish(logits)?;

    let config = TrainConfig { epochs: 2, ..TrainConfig::default() }; // Nesterov SGD 0.1, one-cycle, batch 128
    let model = Model::from_graph(&backend, graph, config.seed, Init::He)?;
    println!("{}", model.summary());
    let train = DeviceDataset::upload(&backend, &mnist.train, &mnist.info)?;
    let test = DeviceDataset::upload(&backend, &mnist.test, &mnist.info)?;
    let mut trainer = Trainer::new(&backend, model, config.clone(), train.len)?;
    for epoch in 0..config.epochs {
        let stats = trainer.train_epoch(&backend, &train, epoch, &mut |_, _| {})?;
        println!("epoch {}: train loss {:.4}", epoch + 1, stats.loss);
    }
    let result = evaluate(&backend, &mut trainer.model, &test, 1000)?;
    println!("test accuracy {:.2}%", 100.0 * result.accuracy);
    assert!(result.accuracy >= 0.98, "the custom residual network should pass 98%, got {:.2}%", 100.0 * result.accuracy);

    // The architecture travels with the checkpoint: it loads back without this code.
    let path = std::env::temp_dir().join(format!("custom_model-{}.safetensors", std::process::id()));
    checkpoint::save(&path, &backend, &trainer.model, &[mnist.info.metadata_entry()])?;
    let (mut loaded, _) = checkpoint::load_model(&path, &backend)?;
    let again = evaluate(&backend, &mut loaded, &test, 1000)?;
    assert_eq!(again.correct, result.correct, "the reloaded checkpoint predicts the same");
    println!("reloaded from {}: the same {:.2}%", path.display(), 100.0 * again.accuracy);
    std::fs::remove_file(&path).ok();
    Ok(())
}
