use crate::dataset::{self, DatasetArg};
use crate::device::{self, RunStats, WithBackend};
use crate::CommonArgs;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rr_core::checkpoint;
use rr_core::data::DatasetInfo;
use rr_core::model::{Init, Model, ModelConfig};
use rr_core::optim::{OptimizerKind, Schedule};
use rr_core::train::{evaluate, AugmentConfig, DeviceDataset, TrainConfig, Trainer};
use rr_core::Backend;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelArg {
    /// LeNet-5 (61k parameters)
    Lenet,
    /// Fully connected layers (--mlp-sizes)
    Mlp,
    /// The strong model: five conv-BatchNorm-ReLU blocks (--width), ~99.6% on MNIST
    MnistCnn,
    /// torchvision's ResNet-18 with the CIFAR stem (11.2M parameters)
    Resnet18,
    /// He et al.'s CIFAR ResNet-20 (0.27M parameters; cheap enough for the CPU)
    Resnet20,
    /// He et al.'s CIFAR ResNet-56 (0.86M parameters)
    Resnet56,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleArg {
    Constant,
    Step,
    Cosine,
    Onecycle,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Architecture
    #[arg(long, value_enum, default_value = "lenet")]
    model: ModelArg,
    /// Dataset
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetArg,
    /// image-folder: the side images are resized to
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Layer sizes of the MLP, input and output included [default: C*H*W,256,128,classes, e.g. 784,256,128,10]
    #[arg(long, value_delimiter = ',')]
    mlp_sizes: Option<Vec<usize>>,
    /// mnist-cnn: channels of the first block (the others have 2x and 4x) [default: 32; fashion-mnist 48]
    #[arg(long)]
    width: Option<usize>,
    /// mnist-cnn: dropout before the classifier [default: 0.2; fashion-mnist 0.3]
    #[arg(long)]
    dropout: Option<f32>,
    /// Train on the first N training images only (quick experiments)
    #[arg(long)]
    limit_train: Option<usize>,
    /// Epochs in all (with --resume: the new total) [default: the model's recipe: 5 for lenet and mlp; mnist-cnn 20, on fashion-mnist 30; resnet18 20; resnet20/56 30]
    #[arg(long)]
    epochs: Option<usize>,
    /// [default: 128; resnet18 256]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Optimizer [default: sgd]
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Base learning rate [default: 0.1; resnet18 0.2]
    #[arg(long)]
    lr: Option<f32>,
    /// SGD momentum [default: 0.9]
    #[arg(long)]
    momentum: Option<f32>,
    /// Nesterov momentum (SGD) [default: on]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    nesterov: Option<bool>,
    /// L2 weight decay (decoupled for adamw) [default: 5e-4]
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Adam's beta1
    #[arg(long, default_value_t = TrainConfig::default().optimizer.beta1)]
    beta1: f32,
    /// Adam's beta2
    #[arg(long, default_value_t = TrainConfig::default().optimizer.beta2)]
    beta2: f32,
    /// Adam's epsilon
    #[arg(long, default_value_t = TrainConfig::default().optimizer.eps)]
    eps: f32,
    /// Learning-rate schedule over the epochs [default: onecycle]
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Step schedule: epochs after which the rate is multiplied by --gamma
    #[arg(long, value_delimiter = ',', default_value = "3,4")]
    milestones: Vec<usize>,
    /// Step schedule: the factor at each milestone
    #[arg(long, default_value_t = 0.1)]
    gamma: f32,
    /// One-cycle schedule: share of training spent warming up to the base rate [default: 0.3; mnist-cnn 0.25]
    #[arg(long)]
    pct_start: Option<f32>,
    /// Linear warm-up from 0 over this many epochs (any schedule)
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f32,
    /// Parameter initialization [default: pytorch; mnist-cnn, resnet20/56 he]
    #[arg(long, value_enum)]
    init: Option<InitArg>,
    /// Seed for initialization, shuffling, augmentation and dropout: the same seed gives the same run
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Augment training batches on the device [default: off; mnist-cnn on: digits ±10° rotation,
    /// ±10% scale and shift; clothes flips and ±7% shift]. The options below change single ranges.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    augment: Option<bool>,
    /// Augmentation: rotation range in ±degrees
    #[arg(long)]
    rotate: Option<f32>,
    /// Augmentation: scale range, 1 ± this
    #[arg(long)]
    scale: Option<f32>,
    /// Augmentation: shift range, ± this share of the image size
    #[arg(long)]
    translate: Option<f32>,
    /// Augmentation: elastic distortion, largest displacement in pixels
    #[arg(long)]
    elastic: Option<f32>,
    /// Augmentation: Gaussian noise standard deviation
    #[arg(long)]
    noise: Option<f32>,
    /// Augmentation: random horizontal flips
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    flip: Option<bool>,
    /// Augmentation: random crops shifted by up to this many pixels [default: 0; on CIFAR and image folders
    /// with --augment or a resnet/mnist-cnn recipe: 4]
    #[arg(long)]
    crop: Option<usize>,
    /// Augmentation: how random crops are padded [default: reflect]
    #[arg(long, value_enum)]
    crop_padding: Option<PaddingArg>,
    /// Augmentation: cutout, a square of this side zeroed at a random place [default: 0]
    #[arg(long)]
    cutout: Option<usize>,
    /// Label smoothing of the loss [default: 0; resnets 0.1]
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Continue a run from its checkpoint (RUN/model.safetensors, with RUN/train_state.safetensors
    /// beside it) with its saved settings, up to --epochs in all; outputs go to the same folder
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Batch size for the test-set evaluation after each epoch
    #[arg(long, default_value_t = 1000)]
    eval_batch_size: usize,
    /// Output folder [default: runs/DATE-TIME]
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingArg {
    Zero,
    Reflect,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitArg {
    Pytorch,
    He,
    Xavier,
}

pub fn run(args: TrainArgs) -> Result<()> {
    device::dispatch(args.common.device, args.common.threads, args.profile, TrainJob(args)).map(|_| ())
}

struct TrainJob(TrainArgs);

/// One row of metrics.csv.
const CSV_HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr";

/// The file beside a checkpoint that holds what resuming needs.
const TRAIN_STATE: &str = "train_state.safetensors";

/// What `--resume` restores.
struct Resumed {
    out: PathBuf,
    model_config: ModelConfig,
    graph: rr_core::Graph,
    dataset: DatasetArg,
    image_size: usize,
    /// The dataset description and folder of the run (older runs: no folder).
    trained_on: DatasetInfo,
    data_dir: Option<PathBuf>,
    config: TrainConfig,
    epochs_done: usize,
    optimizer_state: Vec<f32>,
    optimizer_steps: u64,
    best: f64,
    checkpoint: PathBuf,
}

fn read_resume(path: &std::path::Path, epochs: Option<usize>) -> Result<Resumed> {
    let ckpt = checkpoint::load(path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf();
    let state_path = dir.join(TRAIN_STATE);
    let (tensors, meta) =
        checkpoint::load_tensors(&state_path).with_context(|| format!("--resume needs {} beside the checkpoint", state_path.display()))?;
    let get = |k: &str| meta.get(k).with_context(|| format!("{}: no `{k}` entry", state_path.display()));
    let mut config: TrainConfig =
        serde_json::from_str(get("train_config")?).with_context(|| format!("{}: bad train_config", state_path.display()))?;
    let epochs_done: usize = get("epoch")?.parse().with_context(|| format!("{}: bad epoch", state_path.display()))?;
    let Some(epochs) = epochs else {
        anyhow::bail!("{} has {epochs_done} epochs: pass --epochs with the new total to train more", path.display());
    };
    if epochs <= epochs_done {
        anyhow::bail!("{} already has {epochs_done} epochs: pass --epochs above that to train more", path.display());
    }
    config.epochs = epochs;
    let optimizer_state = tensors
        .into_iter()
        .find(|(n, _, _)| n == "optimizer.state")
        .map(|(_, _, v)| v)
        .with_context(|| format!("{}: no optimizer state", state_path.display()))?;
    let info = ckpt.dataset(path)?;
    let (dataset, image_size) = dataset::of_checkpoint(&info)?;
    Ok(Resumed {
        trained_on: info,
        data_dir: meta.get("data_dir").map(PathBuf::from),
        out: dir,
        model_config: ckpt.config,
        graph: ckpt.graph,
        dataset,
        image_size,
        config,
        epochs_done,
        optimizer_state,
        optimizer_steps: get("optimizer_steps")?.parse().with_context(|| format!("{}: bad optimizer_steps", state_path.display()))?,
        best: get("best_test_accuracy")?.parse().unwrap_or(0.0),
        checkpoint: path.to_path_buf(),
    })
}

impl TrainArgs {
    /// The architecture asked for, for a dataset of `info`'s shape and classes.
    fn model_config(&self, info: &DatasetInfo) -> ModelConfig {
        match self.model {
            ModelArg::Lenet => ModelConfig::Lenet5,
            ModelArg::Mlp => {
                let default = || vec![info.shape.iter().product(), 256, 128, info.classes];
                ModelConfig::Mlp { sizes: self.mlp_sizes.clone().unwrap_or_else(default) }
            }
            ModelArg::MnistCnn => {
                let (width, dropout) = ModelConfig::mnist_cnn_defaults(self.dataset.name());
                ModelConfig::MnistCnn { width: self.width.unwrap_or(width), dropout: self.dropout.unwrap_or(dropout) }
            }
            ModelArg::Resnet18 => ModelConfig::Resnet18,
            ModelArg::Resnet20 => ModelConfig::CifarResnet { depth: 20 },
            ModelArg::Resnet56 => ModelConfig::CifarResnet { depth: 56 },
        }
    }

    /// The model's recipe for the dataset, with every option given on the command line applied.
    fn train_config(&self, model: &ModelConfig) -> TrainConfig {
        let mut c = TrainConfig::recipe(model, self.dataset.name());
        c.seed = self.seed;
        c.train_limit = self.limit_train;
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        let o = &mut c.optimizer;
        if let Some(kind) = self.optimizer {
            o.kind = match kind {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::AdamW,
            };
            if o.kind != OptimizerKind::Sgd {
                o.nesterov = false;
            }
        }
        o.lr = self.lr.unwrap_or(o.lr);
        o.momentum = self.momentum.unwrap_or(o.momentum);
        o.nesterov = self.nesterov.unwrap_or(o.nesterov);
        o.weight_decay = self.weight_decay.unwrap_or(o.weight_decay);
        (o.beta1, o.beta2, o.eps) = (self.beta1, self.beta2, self.eps);
        let recipe_pct = match c.schedule.schedule {
            Schedule::OneCycle { pct_start } => pct_start,
            _ => 0.3,
        };
        if let Some(schedule) = self.schedule {
            c.schedule.schedule = match schedule {
                ScheduleArg::Constant => Schedule::Constant,
                ScheduleArg::Step => Schedule::Step { milestones: self.milestones.clone(), gamma: self.gamma },
                ScheduleArg::Cosine => Schedule::Cosine,
                ScheduleArg::Onecycle => Schedule::OneCycle { pct_start: recipe_pct },
            };
        }
        if let (Schedule::OneCycle { pct_start }, Some(p)) = (&mut c.schedule.schedule, self.pct_start) {
            *pct_start = p;
        }
        c.schedule.warmup_epochs = self.warmup_epochs;
        if let Some(init) = self.init {
            c.init = match init {
                InitArg::Pytorch => Init::PyTorch,
                InitArg::He => Init::He,
                InitArg::Xavier => Init::Xavier,
            };
        }
        let a = &mut c.augment;
        match self.augment {
            Some(false) => *a = AugmentConfig::default(),
            // On with nothing configured: the dataset's ranges.
            Some(true) if a.is_off() => {
                *a = match self.dataset {
                    DatasetArg::FashionMnist => AugmentConfig::clothes(),
                    DatasetArg::Mnist | DatasetArg::Idx => AugmentConfig::digits(),
                    _ => AugmentConfig::photos(),
                }
            }
            _ => {}
        }
        a.rotate_deg = self.rotate.unwrap_or(a.rotate_deg);
        a.scale = self.scale.unwrap_or(a.scale);
        a.translate = self.translate.unwrap_or(a.translate);
        a.elastic = self.elastic.unwrap_or(a.elastic);
        a.noise = self.noise.unwrap_or(a.noise);
        a.flip = self.flip.unwrap_or(a.flip);
        a.crop = self.crop.unwrap_or(a.crop);
        a.cutout = self.cutout.unwrap_or(a.cutout);
        if let Some(p) = self.crop_padding {
            a.padding = match p {
                PaddingArg::Zero => rr_core::backend::Padding::Zero,
                PaddingArg::Reflect => rr_core::backend::Padding::Reflect,
            };
        }
        c.label_smoothing = self.label_smoothing.unwrap_or(c.label_smoothing);
        c
    }
}

impl WithBackend for TrainJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let resumed = args.resume.as_deref().map(|p| read_resume(p, args.epochs)).transpose()?;
        let (dataset, image_size) = match &resumed {
            Some(r) => (r.dataset, r.image_size),
            None => (args.dataset, args.image_size),
        };
        // A resumed run reads the folder it was trained on unless told otherwise.
        let dir_arg = args.common.data_dir.clone().or_else(|| resumed.as_ref().and_then(|r| r.data_dir.clone()));
        let data_dir = dataset::data_dir(&dir_arg, dataset)?;
        let mut data = dataset::load(dataset, &data_dir, image_size)?;
        if let Some(r) = &resumed {
            dataset::check_same(&r.trained_on, &data.info, &data_dir)?;
            // The normalization the run was trained with (an image folder's statistics may have moved).
            data.info = r.trained_on.clone();
        }
        let info = data.info.clone();
        let (model_config, config) = match &resumed {
            Some(r) => (r.model_config.clone(), r.config.clone()),
            None => {
                let model_config = args.model_config(&info);
                let config = args.train_config(&model_config);
                (model_config, config)
            }
        };
        config.validate()?;
        if let Some(n) = config.train_limit {
            if n == 0 {
                anyhow::bail!("--limit-train must be at least 1");
            }
            data.train.truncate(n);
        }
        let out = match &resumed {
            Some(r) => r.out.clone(),
            None => make_out_dir(args.out.clone())?,
        };

        let model = match &resumed {
            Some(r) => {
                let mut model = Model::build(backend, r.model_config.clone(), r.graph.clone(), config.seed, config.init)?;
                let ckpt = checkpoint::load(&r.checkpoint)?;
                model.load_state_dict(backend, &ckpt.tensors, &r.checkpoint)?;
                model
            }
            None => Model::with_init(backend, &model_config, &info.shape, info.classes, config.seed, config.init)?,
        };
        if model.input_shape() != info.shape || model.classes() != info.classes {
            anyhow::bail!(
                "the model takes {:?} inputs and predicts {} classes, but {} has {:?} images in {} classes",
                model.input_shape(),
                model.classes(),
                info.name,
                info.shape,
                info.classes
            );
        }
        let dataset = info.name.as_str();
        let o = &config.optimizer;
        println!(
            "{} {} ({} parameters) on {} | {dataset}: {} train / {} test images from {}{} | {} epochs, batch {}, {} lr {} ({} schedule), momentum {}{}, weight decay {}",
            if resumed.is_some() { "resuming" } else { "training" },
            model_config.name(),
            model.params.count(),
            backend.name(),
            data.train.len,
            data.test.len,
            data_dir.display(),
            if data.verified { " (SHA-256 verified)" } else { "" },
            config.epochs,
            config.batch_size,
            serde_json::to_value(o.kind)?.as_str().unwrap_or("?"),
            o.lr,
            match config.schedule.schedule {
                Schedule::Constant => "constant",
                Schedule::Step { .. } => "step",
                Schedule::Cosine => "cosine",
                Schedule::OneCycle { .. } => "one-cycle",
            },
            o.momentum,
            if o.nesterov { " (Nesterov)" } else { "" },
            o.weight_decay,
        );
        if !config.augment.is_off() {
            let a = &config.augment;
            println!(
                "augmentation: rotate ±{}°, scale ±{}, shift ±{}, elastic {} px, flips {}, noise {}, crop ±{} px ({:?} padding), cutout {} px",
                a.rotate_deg,
                a.scale,
                a.translate,
                a.elastic,
                if a.flip { "on" } else { "off" },
                a.noise,
                a.crop,
                a.padding,
                a.cutout
            );
        }
        if config.label_smoothing > 0.0 {
            println!("label smoothing {}", config.label_smoothing);
        }
        let train_set = DeviceDataset::upload(backend, &data.train, &info)?;
        let test_set = DeviceDataset::upload(backend, &data.test, &info)?;
        let mut trainer = Trainer::new(backend, model, config.clone(), train_set.len)?;
        trainer.use_graphs = !args.no_graphs;
        let (first_epoch, mut best) = match &resumed {
            Some(r) => {
                trainer.optimizer.restore(backend, &r.optimizer_state, r.optimizer_steps)?;
                (r.epochs_done, r.best)
            }
            None => (0, -1.0),
        };
        let mut run = RunStats::default();

        let metrics_path = out.join("metrics.csv");
        let mut csv = if resumed.is_some() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("cannot append to {}", metrics_path.display()))?
        } else {
            let mut f = std::fs::File::create(&metrics_path).with_context(|| format!("cannot create {}", metrics_path.display()))?;
            writeln!(f, "{CSV_HEADER}")?;
            f
        };
        let ckpt_path = out.join("model.safetensors");
        let best_path = out.join("best.safetensors");
        let run_config = serde_json::json!({ "model": model_config, "train": config, "device": backend.name(), "dataset": info, "data_dir": data_dir, "image_size": image_size });
        std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&run_config)?)?;

        let steps = trainer.steps_per_epoch(train_set.len);
        for epoch in first_epoch..config.epochs {
            let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
            let lr = trainer.lr_at(epoch as f64);
            let start = Instant::now();
            let train = trainer.train_epoch(backend, &train_set, epoch, &mut |done, _| bar.set_position(done as u64));
            bar.finish_and_clear();
            let train = train.map_err(|e| {
                let kept = if epoch > first_epoch || resumed.is_some() {
                    format!("; the last good checkpoint (epoch {epoch}) is intact: {}", ckpt_path.display())
                } else {
                    String::new()
                };
                anyhow::anyhow!("{e}{kept}")
            })?;
            let seconds = start.elapsed().as_secs_f64();
            run.steps += steps;
            run.images += train.samples;
            run.seconds += seconds;
            let test = evaluate(backend, &mut trainer.model, &test_set, args.eval_batch_size)?;
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
                lr
            )?;
            csv.flush()?;
            let meta = [
                ("epoch", (epoch + 1).to_string()),
                ("test_accuracy", format!("{:.6}", test.accuracy)),
                ("test_loss", format!("{:.6}", test.loss)),
                ("train_config", serde_json::to_string(&config)?),
                ("dataset", serde_json::to_string(&info)?),
            ];
            checkpoint::save(&ckpt_path, backend, &trainer.model, &meta)?;
            if test.accuracy > best {
                best = test.accuracy;
                checkpoint::save(&best_path, backend, &trainer.model, &meta)?;
            }
            // What --resume needs: the optimizer state and where training stands.
            let state = trainer.optimizer.state(backend)?;
            let state_len = state.len();
            checkpoint::save_tensors(
                &out.join(TRAIN_STATE),
                &[("optimizer.state".to_string(), vec![state_len], state)],
                &[
                    ("epoch", (epoch + 1).to_string()),
                    ("optimizer_steps", trainer.optimizer.steps.to_string()),
                    ("best_test_accuracy", format!("{best}")),
                    ("train_config", serde_json::to_string(&config)?),
                    ("dataset", serde_json::to_string(&info)?),
                    ("data_dir", data_dir.display().to_string()),
                ],
            )?;
        }
        if config.epochs > first_epoch {
            crate::plot::draw_run(backend, &out, &mut trainer.model, &data.test, &info)?;
            println!("wrote {} and {}", out.join("curves.png").display(), out.join("confusion.png").display());
        }
        if let Some((what, bytes)) = backend.peak_memory() {
            println!("{what}: {:.1} MB", bytes as f64 / 1e6);
        }
        println!("wrote {} and {} (best: {})", metrics_path.display(), ckpt_path.display(), best_path.display());
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
