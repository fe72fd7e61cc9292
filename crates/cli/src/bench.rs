//! `rusty-recognition bench`: the figures BENCHMARKS.md records. LeNet-5
//! training epochs (data already on the device), then inference throughput.

use crate::device::{self, RunStats, WithBackend};
use crate::CommonArgs;
use anyhow::Result;
use rr_core::backend::{Gather, View, ViewMut};
use rr_core::data::Mnist;
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::Backend;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Training epochs to time (the first is warm-up; the median of the rest is reported)
    #[arg(long, default_value_t = 6, allow_negative_numbers = true)]
    epochs: usize,
    /// Training batch size
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    batch_size: usize,
    /// Batch size of the inference benchmark (at most the 10,000 test images)
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true)]
    infer_batch: usize,
    /// Timed inference passes (after 3 warm-up passes)
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    infer_reps: usize,
    /// Run every step op by op instead of replaying a recorded CUDA graph
    #[arg(long)]
    no_graphs: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let start = Instant::now();
    for (option, value) in [
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
        ("--infer-batch", args.infer_batch),
        ("--infer-reps", args.infer_reps),
    ] {
        if value == 0 {
            anyhow::bail!("{option} must be at least 1, got 0");
        }
    }
    device::dispatch(args.common.target(), false, BenchJob(args, start)).map(|_| ())
}

struct BenchJob(BenchArgs, Instant);

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

impl WithBackend for BenchJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let (args, process_start) = (self.0, self.1);
        println!("device ready {:.2}s after start (libraries loaded, kernels compiled)", process_start.elapsed().as_secs_f64());
        let data = Mnist::load(&crate::dataset::data_dir(&args.common.data_dir, crate::dataset::DatasetArg::Mnist)?)?;
        let train_set = DeviceDataset::upload(backend, &data.train, &data.info)?;
        let test_set = DeviceDataset::upload(backend, &data.test, &data.info)?;
        let loss_scale = rr_core::loss_scale::LossScaling::for_precision(backend.precision());
        let config = TrainConfig { epochs: args.epochs, batch_size: args.batch_size, loss_scale, ..TrainConfig::default() };
        let model = Model::new(backend, &ModelConfig::Lenet5, &data.info.shape, data.info.classes, config.seed)?;
        let mut trainer = Trainer::new(backend, model, config, train_set.len)?;
        trainer.use_graphs = !args.no_graphs;
        if args.no_graphs {
            device::note_no_graphs(&backend.name());
        }
        println!(
            "bench: LeNet-5, batch {}, {} on {} ({})",
            args.batch_size,
            if args.no_graphs { "op by op" } else { "steps replayed from a recorded graph where supported" },
            backend.name(),
            env!("CARGO_PKG_VERSION")
        );
        let mut epoch_s = Vec::new();
        for epoch in 0..args.epochs {
            backend.synchronize()?;
            let t = Instant::now();
            // train_epoch ends by reading the loss sums back, so the GPU is done.
            let stats = trainer.train_epoch(backend, &train_set, epoch, &mut |_, _| {})?;
            let s = t.elapsed().as_secs_f64();
            let test = evaluate(backend, &mut trainer.model, &test_set, 1000)?;
            println!(
                "epoch {} train_s={s:.4} img/s={:.0} train_loss={:.4} test_acc={:.4}",
                epoch + 1,
                stats.samples as f64 / s,
                stats.loss,
                test.accuracy
            );
            epoch_s.push(s);
        }
        let warm = if epoch_s.len() > 1 { &epoch_s[1..] } else { &epoch_s[..] };
        let epoch_median = median(warm);

        // Inference: the test images gathered once, then forward passes only.
        let n = args.infer_batch.min(test_set.len);
        let model = &mut trainer.model;
        let mut x = backend.alloc::<f32>(n * test_set.sample_len)?;
        let mut y = backend.alloc::<u32>(n)?;
        let idx = backend.upload(&(0..n as u32).collect::<Vec<_>>())?;
        let spec = Gather::new(n, &data.info);
        backend.gather_batch(
            &spec,
            View::all(&test_set.images),
            View::all(&test_set.labels),
            View::all(&idx),
            ViewMut::all(&mut x),
            ViewMut::all(&mut y),
        )?;
        for _ in 0..3 {
            model.forward(backend, n, View::all(&x))?;
        }
        backend.synchronize()?;
        let mut pass_ms = Vec::new();
        for _ in 0..args.infer_reps {
            let (a, t) = (backend.mark()?, Instant::now());
            model.forward(backend, n, View::all(&x))?;
            let b = backend.mark()?;
            let ms = backend.elapsed_ms(&a, &b)?;
            pass_ms.push(if ms > 0.0 { ms } else { t.elapsed().as_secs_f64() * 1e3 });
        }
        let infer_ms = median(&pass_ms);
        let infer_rate = n as f64 / (infer_ms / 1e3);
        let peak = backend.peak_memory().map_or("unknown".into(), |(what, b)| format!("{:.1} MB {what}", b as f64 / 1e6));
        println!(
            "BENCH device=\"{}\" epoch_median_s={epoch_median:.4} train_img_per_s={:.0} infer_batch={n} infer_median_ms={infer_ms:.3} infer_img_per_s={infer_rate:.0} peak_memory=\"{peak}\" process_s={:.2}",
            backend.name(),
            train_set.len as f64 / epoch_median,
            process_start.elapsed().as_secs_f64()
        );
        Ok(RunStats::default())
    }
}
