use crate::device::{self, RunStats, WithBackend};
use crate::CommonArgs;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rr_core::checkpoint;
use rr_core::data::Mnist;
use rr_core::model::{Model, ModelConfig};
use rr_core::optim::SgdConfig;
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::Backend;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelArg {
    Lenet,
    Mlp,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetArg {
    /// Handwritten digits (shipped in data/mnist)
    Mnist,
    /// Zalando's clothing images, same format (pass --data-dir, or install Debian's dataset-fashion-mnist)
    FashionMnist,
}

impl DatasetArg {
    pub fn name(self) -> &'static str {
        match self {
            DatasetArg::Mnist => "mnist",
            DatasetArg::FashionMnist => "fashion-mnist",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Architecture
    #[arg(long, value_enum, default_value = "lenet")]
    model: ModelArg,
    /// Dataset (same IDX format and image size)
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetArg,
    /// Layer sizes of the MLP, input and output included
    #[arg(long, value_delimiter = ',', default_value = "784,256,128,10")]
    mlp_sizes: Vec<usize>,
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch_size: usize,
    /// Learning rate
    #[arg(long, default_value_t = TrainConfig::default().sgd.lr)]
    lr: f32,
    #[arg(long, default_value_t = TrainConfig::default().sgd.momentum)]
    momentum: f32,
    #[arg(long, default_value_t = TrainConfig::default().sgd.weight_decay)]
    weight_decay: f32,
    /// Seed for initialization and shuffling: the same seed gives the same run
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Batch size for the test-set evaluation after each epoch
    #[arg(long, default_value_t = 1000)]
    eval_batch_size: usize,
    /// Output folder [default: runs/<date>-<time>]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print a table of time per op, per-step time and peak memory at the end
    #[arg(long)]
    profile: bool,
    /// Run every step op by op instead of replaying a recorded CUDA graph
    #[arg(long)]
    no_graphs: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: TrainArgs) -> Result<()> {
    device::dispatch(args.common.device, args.common.threads, args.profile, TrainJob(args)).map(|_| ())
}

struct TrainJob(TrainArgs);

/// One row of metrics.csv.
const CSV_HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr";

impl WithBackend for TrainJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let model_config = match args.model {
            ModelArg::Lenet => ModelConfig::Lenet5,
            ModelArg::Mlp => ModelConfig::Mlp { sizes: args.mlp_sizes.clone() },
        };
        let config = TrainConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            sgd: SgdConfig { lr: args.lr, momentum: args.momentum, weight_decay: args.weight_decay },
            seed: args.seed,
        };
        config.validate()?;
        let dataset = args.dataset.name();
        let data_dir = device::data_dir(&args.common.data_dir, dataset)?;
        let data = Mnist::load(&data_dir)?;
        let out = make_out_dir(args.out.clone())?;

        let model = Model::new(backend, &model_config, config.seed)?;
        println!(
            "training {} ({} parameters) on {} | {dataset}: {} train / {} test images from {}{} | {} epochs, batch {}, lr {}, momentum {}, weight decay {}",
            model_config.name(),
            model.params.count(),
            backend.name(),
            data.train.len,
            data.test.len,
            data_dir.display(),
            if data.verified { " (SHA-256 verified)" } else { "" },
            config.epochs,
            config.batch_size,
            config.sgd.lr,
            config.sgd.momentum,
            config.sgd.weight_decay,
        );
        let train_set = DeviceDataset::upload(backend, &data.train)?;
        let test_set = DeviceDataset::upload(backend, &data.test)?;
        let mut trainer = Trainer::new(backend, model, config.clone(), train_set.len)?;
        trainer.use_graphs = !args.no_graphs;
        let mut run = RunStats::default();

        let metrics_path = out.join("metrics.csv");
        let mut csv = std::fs::File::create(&metrics_path).with_context(|| format!("cannot create {}", metrics_path.display()))?;
        writeln!(csv, "{CSV_HEADER}")?;
        let ckpt_path = out.join("model.safetensors");
        let run_config = serde_json::json!({ "model": model_config, "train": config, "device": backend.name(), "dataset": dataset, "data_dir": data_dir });
        std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&run_config)?)?;

        let steps = trainer.steps_per_epoch(train_set.len);
        for epoch in 0..config.epochs {
            let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps, {per_sec}, eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
            let start = Instant::now();
            let train = trainer.train_epoch(backend, &train_set, epoch, &mut |done, _| bar.set_position(done as u64))?;
            let seconds = start.elapsed().as_secs_f64();
            bar.finish_and_clear();
            run.steps += steps;
            run.images += train.samples;
            run.seconds += seconds;
            let test = evaluate(backend, &mut trainer.model, &test_set, args.eval_batch_size)?;
            if !train.loss.is_finite() {
                anyhow::bail!("training diverged in epoch {}: train loss is {} (try a smaller --lr)", epoch + 1, train.loss);
            }
            let rate = train.samples as f64 / seconds;
            println!(
                "epoch {:>2}/{}  train_loss {:.4}  train_acc {:6.2}%  test_loss {:.4}  test_acc {:6.2}%  {:6.2}s  {:>9} img/s",
                epoch + 1,
                config.epochs,
                train.loss,
                100.0 * train.accuracy,
                test.loss,
                100.0 * test.accuracy,
                seconds,
                group_thousands(rate as u64),
            );
            writeln!(
                csv,
                "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1},{}",
                epoch + 1,
                train.loss,
                train.accuracy,
                test.loss,
                test.accuracy,
                seconds,
                rate,
                trainer.optimizer.config.lr
            )?;
            csv.flush()?;
            let meta = [
                ("epoch", (epoch + 1).to_string()),
                ("test_accuracy", format!("{:.6}", test.accuracy)),
                ("test_loss", format!("{:.6}", test.loss)),
                ("train_config", serde_json::to_string(&config)?),
                ("dataset", dataset.to_string()),
            ];
            checkpoint::save(&ckpt_path, backend, &trainer.model, &meta)?;
        }
        if config.epochs > 0 {
            let names = crate::infer::class_names(dataset);
            crate::plot::draw_run(backend, &out, &mut trainer.model, &data.test, &names)?;
            println!("wrote {} and {}", out.join("curves.png").display(), out.join("confusion.png").display());
        }
        if let Some((what, bytes)) = backend.peak_memory() {
            println!("{what}: {:.1} MB", bytes as f64 / 1e6);
        }
        println!("wrote {} and {}", metrics_path.display(), ckpt_path.display());
        println!("evaluate with: rusty-recognition eval --checkpoint {}", ckpt_path.display());
        Ok(run)
    }
}

fn make_out_dir(out: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match out {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
            let mut dir = PathBuf::from("runs").join(&stamp);
            let mut i = 1;
            while dir.exists() {
                i += 1;
                dir = PathBuf::from("runs").join(format!("{stamp}-{i}"));
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    Ok(dir)
}

pub fn group_thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
