//! `train`'s command-line options and how they become a model and a recipe.
//!
//! The options that make a recipe ([`RecipeArgs`]) are all optional: left
//! out, the model's recipe decides (the defaults in `--help`). The same
//! options can come from a TOML file (`--config`), keys spelled as on the
//! command line without the dashes; the command line wins.

use crate::dataset::DatasetArg;
use crate::CommonArgs;
use rr_core::backend::Padding;
use rr_core::data::DatasetInfo;
use rr_core::model::{Init, ModelConfig};
use rr_core::optim::{OptimizerKind, Schedule};
use rr_core::train::{AugmentConfig, TrainConfig};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    /// The CIFAR-10 speed-run network (airbench94's shape: whitening, conv-BatchNorm-GELU; 1.97M parameters) and its 10-epoch recipe
    CifarSpeed,
}

impl ModelArg {
    /// The option value that builds `config`, if one does.
    pub(super) fn of(config: &ModelConfig) -> Option<Self> {
        Some(match config {
            ModelConfig::Lenet5 => ModelArg::Lenet,
            ModelConfig::Mlp { .. } => ModelArg::Mlp,
            ModelConfig::MnistCnn { .. } => ModelArg::MnistCnn,
            ModelConfig::Resnet18 => ModelArg::Resnet18,
            ModelConfig::CifarResnet { depth: 20 } => ModelArg::Resnet20,
            ModelConfig::CifarResnet { depth: 56 } => ModelArg::Resnet56,
            ModelConfig::CifarSpeed { .. } => ModelArg::CifarSpeed,
            _ => return None,
        })
    }

    /// A model of this kind, to pick its recipe by (which depends on the kind only).
    pub(super) fn recipe_model(self) -> ModelConfig {
        match self {
            ModelArg::Lenet => ModelConfig::Lenet5,
            ModelArg::Mlp => ModelConfig::mlp_default(),
            ModelArg::MnistCnn => ModelConfig::MnistCnn { width: ModelConfig::CNN_WIDTH, dropout: 0.0 },
            ModelArg::Resnet18 => ModelConfig::Resnet18,
            ModelArg::Resnet20 => ModelConfig::CifarResnet { depth: 20 },
            ModelArg::Resnet56 => ModelConfig::CifarResnet { depth: 56 },
            ModelArg::CifarSpeed => ModelConfig::CifarSpeed { widths: ModelConfig::SPEED_WIDTHS },
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleArg {
    Constant,
    Step,
    Cosine,
    Onecycle,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaddingArg {
    Zero,
    Reflect,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitArg {
    Pytorch,
    He,
    Xavier,
}

/// Declares [`RecipeArgs`] from one list of fields (each an `Option`), with
/// what needs every field: merging two sets and naming the ones given.
macro_rules! recipe_args {
    ($($(#[$attr:meta])* $field:ident: $ty:ty,)*) => {
        /// The options that make the model and its recipe (every one optional).
        #[derive(clap::Args, Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct RecipeArgs {
            $($(#[$attr])* pub(super) $field: Option<$ty>,)*
        }

        impl RecipeArgs {
            /// These options, with `other`'s where these have none.
            pub(super) fn or(self, other: RecipeArgs) -> RecipeArgs {
                RecipeArgs { $($field: self.$field.or(other.$field),)* }
            }

            /// The options that are set, as `--name`s.
            pub(super) fn given(&self) -> Vec<String> {
                let mut names = Vec::new();
                $(if self.$field.is_some() {
                    names.push(format!("--{}", stringify!($field).replace('_', "-")));
                })*
                names
            }
        }
    };
}

recipe_args! {
    /// Architecture [default: lenet]
    #[arg(long, value_enum)]
    model: ModelArg,
    /// Dataset [default: mnist]
    #[arg(long, value_enum)]
    dataset: DatasetArg,
    /// image-folder: the side images are resized to, 1 to 1024 [default: 32]
    #[arg(long, allow_negative_numbers = true)]
    image_size: usize,
    /// mlp: layer sizes, input and output included [default: C*H*W,256,128,classes, e.g. 784,256,128,10]
    #[arg(long, value_delimiter = ',')]
    mlp_sizes: Vec<usize>,
    /// mnist-cnn: channels of the first block (the others have 2x and 4x) [default: 32; fashion-mnist 48];
    /// cifar-speed: of the first block (the others have 4x) [default: 64]
    #[arg(long, allow_negative_numbers = true)]
    width: usize,
    /// mnist-cnn: dropout before the classifier, in [0, 1) [default: 0.2; fashion-mnist 0.3]
    #[arg(long, allow_negative_numbers = true)]
    dropout: f32,
    /// Train on the first N training images only (quick experiments)
    #[arg(long, allow_negative_numbers = true)]
    limit_train: usize,
    /// Epochs in all (with --resume: the new total) [default: the model's recipe: 5 for lenet and mlp; mnist-cnn 20, on fashion-mnist 30; resnet18 20; resnet20/56 30]
    #[arg(long, allow_negative_numbers = true)]
    epochs: usize,
    /// [default: 128; resnet18 256; halved down to 32 while a run would take fewer than 200 steps]
    #[arg(long, allow_negative_numbers = true)]
    batch_size: usize,
    /// Optimizer [default: sgd]
    #[arg(long, value_enum)]
    optimizer: OptimizerArg,
    /// Base (peak) learning rate [default: 0.1; resnet18 0.2; scaled with the batch size when that is halved for a short run]
    #[arg(long, allow_negative_numbers = true)]
    lr: f32,
    /// SGD: momentum, in [0, 1) [default: 0.9]
    #[arg(long, allow_negative_numbers = true)]
    momentum: f32,
    /// SGD: Nesterov momentum [default: on]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    nesterov: bool,
    /// L2 weight decay (decoupled for adamw) [default: 5e-4]
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: f32,
    /// Adam/AdamW: beta1 [default: 0.9]
    #[arg(long, allow_negative_numbers = true)]
    beta1: f32,
    /// Adam/AdamW: beta2 [default: 0.999]
    #[arg(long, allow_negative_numbers = true)]
    beta2: f32,
    /// Adam/AdamW: epsilon [default: 1e-8]
    #[arg(long, allow_negative_numbers = true)]
    eps: f32,
    /// Learning-rate schedule over the epochs [default: onecycle]
    #[arg(long, value_enum)]
    schedule: ScheduleArg,
    /// Step schedule: epochs after which the rate is multiplied by --gamma [default: 3,4]
    #[arg(long, value_delimiter = ',')]
    milestones: Vec<usize>,
    /// Step schedule: the factor at each milestone [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    gamma: f32,
    /// One-cycle schedule: share of training spent warming up to the base rate, in (0, 1) [default: 0.3; mnist-cnn 0.25]
    #[arg(long, allow_negative_numbers = true)]
    pct_start: f32,
    /// Linear warm-up from 0 over this many epochs (any schedule) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    warmup_epochs: f32,
    /// Parameter initialization [default: pytorch; mnist-cnn, resnet20/56 he]
    #[arg(long, value_enum)]
    init: InitArg,
    /// Seed for initialization, shuffling, augmentation and dropout: the same seed gives the same run [default: 0]
    #[arg(long)]
    seed: u64,
    /// Augment training batches on the device [default: off; mnist-cnn on: digits ±10° rotation,
    /// ±10% scale and shift; clothes flips and ±7% shift]. The options below change single ranges.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    augment: bool,
    /// Augmentation: rotation range in ±degrees
    #[arg(long, allow_negative_numbers = true)]
    rotate: f32,
    /// Augmentation: scale range, 1 ± this, in [0, 1)
    #[arg(long, allow_negative_numbers = true)]
    scale: f32,
    /// Augmentation: shift range, ± this share of the image size, in [0, 1)
    #[arg(long, allow_negative_numbers = true)]
    translate: f32,
    /// Augmentation: elastic distortion, largest displacement in pixels
    #[arg(long, allow_negative_numbers = true)]
    elastic: f32,
    /// Augmentation: Gaussian noise standard deviation
    #[arg(long, allow_negative_numbers = true)]
    noise: f32,
    /// Augmentation: random horizontal flips
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    flip: bool,
    /// Augmentation: random crops shifted by up to this many pixels [default: 0; on CIFAR and image folders
    /// with --augment or a resnet/mnist-cnn recipe: 4]
    #[arg(long, allow_negative_numbers = true)]
    crop: usize,
    /// Augmentation: how random crops are padded (with --crop) [default: reflect]
    #[arg(long, value_enum)]
    crop_padding: PaddingArg,
    /// Augmentation: cutout, a square of this side zeroed at a random place [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    cutout: usize,
    /// Label smoothing of the loss, in [0, 1) [default: 0; resnets 0.1]
    #[arg(long, allow_negative_numbers = true)]
    label_smoothing: f32,
    /// Batch size for the test-set evaluation after each epoch [default: 1000]
    #[arg(long, allow_negative_numbers = true)]
    eval_batch_size: usize,
    /// (--data-dir, here so that a TOML file can name it)
    #[arg(skip)]
    data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub(super) recipe: RecipeArgs,
    /// Start from a file of options: TOML (keys as the options without dashes, e.g. `lr = 0.05`,
    /// `mlp-sizes = [784, 32, 10]`), or a run's config.json, which repeats that run exactly;
    /// options given on the command line win
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// Continue the run in folder RUN (or of any file of it: RUN/model.safetensors, RUN/train_state.safetensors)
    /// with its saved settings, up to --epochs in all; outputs go to the same folder.
    /// A resumed run may change --epochs (required), --lr, --eval-batch-size, --log-interval,
    /// --data-dir, --device, --threads, --precision, --profile and --no-graphs; other options are refused
    #[arg(long)]
    pub(super) resume: Option<PathBuf>,
    /// Output folder; an existing one must be empty unless --overwrite [default: runs/DATE-TIME]
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Train into a non-empty --out folder, replacing a previous run's files there
    #[arg(long)]
    pub(super) overwrite: bool,
    /// Print the loss, accuracy, learning rate and images/s every N steps and write them to
    /// RUN/steps.csv (reads the loss back every N steps) [default: off]
    #[arg(long, allow_negative_numbers = true)]
    pub(super) log_interval: Option<usize>,
    /// Print a table of time per op, per-step time and peak memory at the end
    #[arg(long)]
    pub(super) profile: bool,
    /// Run every step op by op instead of replaying a recorded CUDA graph
    #[arg(long)]
    pub(super) no_graphs: bool,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

impl RecipeArgs {
    /// The architecture asked for, for a dataset of `info`'s shape and classes,
    /// starting from `base` (a run's model) when there is one.
    pub(super) fn model_config(&self, base: Option<&ModelConfig>, dataset: DatasetArg, info: &DatasetInfo) -> ModelConfig {
        let model = self.model.or_else(|| base.and_then(ModelArg::of)).unwrap_or(ModelArg::Lenet);
        let base = base.filter(|b| ModelArg::of(b) == Some(model));
        match (model, base) {
            (ModelArg::Lenet, _) => ModelConfig::Lenet5,
            (ModelArg::Mlp, base) => {
                let base_sizes = match base {
                    Some(ModelConfig::Mlp { sizes }) => Some(sizes.clone()),
                    _ => None,
                };
                let default = || vec![info.shape.iter().product(), 256, 128, info.classes];
                ModelConfig::Mlp { sizes: self.mlp_sizes.clone().or(base_sizes).unwrap_or_else(default) }
            }
            (ModelArg::MnistCnn, base) => {
                let (width, dropout) = match base {
                    Some(&ModelConfig::MnistCnn { width, dropout }) => (width, dropout),
                    _ => ModelConfig::mnist_cnn_defaults(dataset.name()),
                };
                ModelConfig::MnistCnn { width: self.width.unwrap_or(width), dropout: self.dropout.unwrap_or(dropout) }
            }
            (ModelArg::Resnet18, _) => ModelConfig::Resnet18,
            (ModelArg::Resnet20, _) => ModelConfig::CifarResnet { depth: 20 },
            (ModelArg::Resnet56, _) => ModelConfig::CifarResnet { depth: 56 },
            (ModelArg::CifarSpeed, base) => match (self.width, base) {
                (Some(w), _) => ModelConfig::speed_widths(w),
                (None, Some(base)) => base.clone(),
                (None, None) => ModelConfig::CifarSpeed { widths: ModelConfig::SPEED_WIDTHS },
            },
        }
    }

    /// `base` (the model's recipe, or a run's configuration) with every option given applied.
    pub(super) fn apply(&self, mut c: TrainConfig, dataset: DatasetArg) -> TrainConfig {
        c.seed = self.seed.unwrap_or(c.seed);
        c.train_limit = self.limit_train.or(c.train_limit);
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        self.apply_optimizer(&mut c);
        self.apply_schedule(&mut c);
        if let Some(init) = self.init {
            c.init = match init {
                InitArg::Pytorch => Init::PyTorch,
                InitArg::He => Init::He,
                InitArg::Xavier => Init::Xavier,
            };
        }
        self.apply_augmentation(&mut c.augment, dataset);
        c.label_smoothing = self.label_smoothing.unwrap_or(c.label_smoothing);
        c
    }

    fn apply_optimizer(&self, c: &mut TrainConfig) {
        let o = &mut c.optimizer;
        if let Some(kind) = self.optimizer {
            o.kind = match kind {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::AdamW,
            };
        }
        o.lr = self.lr.unwrap_or(o.lr);
        o.momentum = self.momentum.unwrap_or(o.momentum);
        // Nesterov needs SGD with momentum: the recipe's is dropped when those go, an explicit one stays (and is refused).
        let nesterov_fits = o.kind == OptimizerKind::Sgd && o.momentum > 0.0;
        o.nesterov = self.nesterov.unwrap_or(o.nesterov && nesterov_fits);
        o.weight_decay = self.weight_decay.unwrap_or(o.weight_decay);
        o.beta1 = self.beta1.unwrap_or(o.beta1);
        o.beta2 = self.beta2.unwrap_or(o.beta2);
        o.eps = self.eps.unwrap_or(o.eps);
    }

    fn apply_schedule(&self, c: &mut TrainConfig) {
        let s = &mut c.schedule.schedule;
        let (recipe_milestones, recipe_gamma) = match s {
            Schedule::Step { milestones, gamma } => (milestones.clone(), *gamma),
            _ => (vec![3, 4], 0.1),
        };
        let recipe_pct = match s {
            Schedule::OneCycle { pct_start } => *pct_start,
            _ => 0.3,
        };
        if let Some(schedule) = self.schedule {
            *s = match schedule {
                ScheduleArg::Constant => Schedule::Constant,
                ScheduleArg::Step => Schedule::Step { milestones: recipe_milestones, gamma: recipe_gamma },
                ScheduleArg::Cosine => Schedule::Cosine,
                ScheduleArg::Onecycle => Schedule::OneCycle { pct_start: recipe_pct },
            };
        }
        match s {
            Schedule::Step { milestones, gamma } => {
                *milestones = self.milestones.clone().unwrap_or(milestones.clone());
                *gamma = self.gamma.unwrap_or(*gamma);
            }
            Schedule::OneCycle { pct_start } => *pct_start = self.pct_start.unwrap_or(*pct_start),
            _ => {}
        }
        c.schedule.warmup_epochs = self.warmup_epochs.unwrap_or(c.schedule.warmup_epochs);
    }

    fn apply_augmentation(&self, a: &mut AugmentConfig, dataset: DatasetArg) {
        match self.augment {
            Some(false) => *a = AugmentConfig::default(),
            // On with nothing configured: the dataset's ranges.
            Some(true) if a.is_off() => {
                *a = match dataset {
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
        // Alternating flips are a way of flipping: no flips, none of them.
        a.alternate_flips &= a.flip;
        a.crop = self.crop.unwrap_or(a.crop);
        a.cutout = self.cutout.unwrap_or(a.cutout);
        if let Some(p) = self.crop_padding {
            a.padding = match p {
                PaddingArg::Zero => Padding::Zero,
                PaddingArg::Reflect => Padding::Reflect,
            };
        }
    }
}

/// The ranges that `--augment false` turns off (and so may not be set beside it).
pub(super) const AUGMENT_RANGES: [&str; 8] = ["--rotate", "--scale", "--translate", "--elastic", "--noise", "--flip", "--crop", "--cutout"];
