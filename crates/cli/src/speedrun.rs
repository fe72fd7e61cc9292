//! `rusty-recognition speedrun`: the CIFAR-10 speed recipe (`--model
//! cifar-speed`) trained several times from scratch in one process, timed the
//! way airbench times itself: from the whitening layer's initialization to the
//! end of the final test-time-augmented evaluation. Left out, as airbench
//! leaves them out: a warm-up run (cuDNN's algorithm search, kernel loading),
//! building the model and optimizer, uploading the data (with this run's
//! pre-flipped half) and per-epoch evaluations (there are none). Unlike
//! `train`, it does not read every parameter back after each epoch to check
//! that it is finite (each epoch's loss still is).

use crate::dataset::{self, DatasetArg};
use crate::device::{self, RunStats, WithBackend};
use crate::CommonArgs;
use anyhow::{bail, Result};
use rr_core::data::Splits;
use rr_core::model::{Model, ModelConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::tta::evaluate_tta;
use rr_core::Backend;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SpeedrunArgs {
    /// Timed runs (seeds --seed, --seed + 1, ...)
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    runs: usize,
    /// Epochs per run [default: the recipe's, 10 (8 with --muon)]
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// The first run's seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of the untimed warm-up run (0: none; its first call of each
    /// convolution shape is where cuDNN times its algorithms)
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    warmup_epochs: usize,
    /// Channels of the first block (the others have 4x) [default: 64, airbench94's]
    #[arg(long, allow_negative_numbers = true)]
    width: Option<usize>,
    /// Train on the first N training images only (quick experiments)
    #[arg(long, allow_negative_numbers = true)]
    limit_train: Option<usize>,
    /// Evaluate on the first N test images only (quick experiments)
    #[arg(long, allow_negative_numbers = true)]
    limit_test: Option<usize>,
    /// Batch size of the evaluations
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true)]
    eval_batch_size: usize,
    /// Run every step op by op instead of replaying a recorded CUDA graph
    #[arg(long)]
    no_graphs: bool,
    /// airbench94_muon's recipe instead of airbench94's (TrainConfig::speed_run_muon:
    /// Muon for the convs, batch 2000, 8 epochs, no lookahead); needs bf16 or fp32, not fp16
    #[arg(long)]
    muon: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: SpeedrunArgs) -> Result<()> {
    for (option, value) in [
        ("--runs", Some(args.runs)),
        ("--epochs", args.epochs),
        ("--eval-batch-size", Some(args.eval_batch_size)),
        ("--width", args.width),
        ("--limit-train", args.limit_train),
        ("--limit-test", args.limit_test),
    ] {
        if value == Some(0) {
            bail!("{option} must be at least 1, got 0");
        }
    }
    args.common.target().check()?;
    device::dispatch(args.common.target(), false, SpeedrunJob(args)).map(|_| ())
}

struct SpeedrunJob(SpeedrunArgs);

/// One run's figures.
struct Timed {
    tta_accuracy: f64,
    accuracy: f64,
    whiten_s: f64,
    train_s: f64,
    tta_s: f64,
}

impl Timed {
    fn seconds(&self) -> f64 {
        self.whiten_s + self.train_s + self.tta_s
    }
}

impl WithBackend for SpeedrunJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        if args.muon && backend.precision() == rr_core::Precision::Fp16 {
            bail!("--muon cannot run at --precision fp16: Muon cannot skip the steps whose loss scaling overflowed; use bf16");
        }
        let dir = dataset::data_dir(&args.common.data_dir, DatasetArg::Cifar10)?;
        let mut data = dataset::load(DatasetArg::Cifar10, &dir, 32)?;
        if let Some(n) = args.limit_train {
            data.train.truncate(n);
        }
        if let Some(n) = args.limit_test {
            data.test.truncate(n);
        }
        let test_set = DeviceDataset::upload(backend, &data.test, &data.info)?;
        let mut recipe = if args.muon { TrainConfig::speed_run_muon() } else { TrainConfig::speed_run() };
        recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
        // fp16 needs dynamic loss scaling (rr_core::loss_scale); other precisions do without.
        recipe.loss_scale = rr_core::loss_scale::LossScaling::for_precision(backend.precision());
        println!(
            "speedrun: cifar-speed (widths {:?}, {}) on {} ({}), {} train images, {} epochs of batch {}, {} timed runs after a {}-epoch warm-up",
            args.width.map_or(ModelConfig::SPEED_WIDTHS, |w| [w, 4 * w, 4 * w]),
            if args.muon { "airbench94_muon's recipe" } else { "airbench94's recipe" },
            backend.name(),
            backend.precision(),
            data.train.len,
            recipe.epochs,
            recipe.batch_size,
            args.runs,
            args.warmup_epochs
        );
        if args.warmup_epochs > 0 {
            let warmup = TrainConfig { epochs: args.warmup_epochs, seed: u64::MAX, ..recipe.clone() };
            let t = Instant::now();
            let w = one_run(backend, &args, &warmup, &data, &test_set)?;
            println!("warm-up: {:.2}s, {:.2}% (not counted)", t.elapsed().as_secs_f64(), 100.0 * w.tta_accuracy);
        }
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let config = TrainConfig { seed: args.seed + i as u64, ..recipe.clone() };
            let r = one_run(backend, &args, &config, &data, &test_set)?;
            println!(
                "SPEEDRUN run={} seed={} tta_acc={:.4} acc={:.4} time_s={:.3} whiten_s={:.3} train_s={:.3} tta_s={:.3}",
                i + 1,
                config.seed,
                r.tta_accuracy,
                r.accuracy,
                r.seconds(),
                r.whiten_s,
                r.train_s,
                r.tta_s
            );
            runs.push(r);
        }
        let accs: Vec<f64> = runs.iter().map(|r| r.tta_accuracy).collect();
        let secs: Vec<f64> = runs.iter().map(Timed::seconds).collect();
        let peak = backend.peak_memory().map_or("unknown".into(), |(what, b)| format!("{:.1} MB {what}", b as f64 / 1e6));
        println!(
            "SPEEDRUN_SUMMARY device=\"{}\" precision={} runs={} mean_tta_acc={:.4} std_tta_acc={:.4} mean_time_s={:.3} median_time_s={:.3} peak_memory=\"{peak}\"",
            backend.name(),
            backend.precision(),
            runs.len(),
            mean(&accs),
            std_dev(&accs),
            mean(&secs),
            crate::bench::median(&secs),
        );
        Ok(RunStats::default())
    }
}

/// Trains `config` from scratch and evaluates it (see the module docs for what is timed).
fn one_run<B: Backend>(backend: &B, args: &SpeedrunArgs, config: &TrainConfig, data: &Splits, test: &DeviceDataset<B>) -> Result<Timed> {
    let info = &data.info;
    let train_set = DeviceDataset::upload(backend, &config.augment.prepare_train(&data.train, config.seed), info)?;
    let model_config = ModelConfig::speed_widths(args.width.unwrap_or(ModelConfig::SPEED_WIDTHS[0]));
    let mut model = Model::with_init(backend, &model_config, &info.shape, info.classes, config.seed, config.init)?;
    backend.synchronize()?;
    let t = Instant::now();
    let images = data.train.normalized(info, crate::train::WHITENING_IMAGES);
    model.init_from_data(backend, &images)?;
    backend.synchronize()?;
    let whiten_s = t.elapsed().as_secs_f64();
    let mut trainer = Trainer::new(backend, model, config.clone(), train_set.len)?;
    trainer.use_graphs = !args.no_graphs;
    // The per-epoch read-back of every parameter that guards long runs (a benchmark's loss is checked instead).
    trainer.check_finite = false;
    let t = Instant::now();
    for epoch in 0..config.epochs {
        // Each epoch ends by reading its loss sums back: the device is done.
        trainer.train_epoch(backend, &train_set, epoch, &mut |_, _| {})?;
    }
    let train_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tta = evaluate_tta(backend, &mut trainer.model, test, args.eval_batch_size, config.tta)?;
    let tta_s = t.elapsed().as_secs_f64();
    let plain = evaluate(backend, &mut trainer.model, test, args.eval_batch_size)?;
    Ok(Timed { tta_accuracy: tta.accuracy, accuracy: plain.accuracy, whiten_s, train_s, tta_s })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The sample standard deviation (n - 1), 0 for one value.
fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}
