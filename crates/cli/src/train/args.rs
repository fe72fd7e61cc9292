//! `train`'s command-line options and how they become a model and a recipe.

use crate::dataset::DatasetArg;
use crate::CommonArgs;
use rr_core::data::DatasetInfo;
use rr_core::model::{Init, ModelConfig};
use rr_core::optim::{OptimizerKind, Schedule};
use rr_core::train::{AugmentConfig, TrainConfig};
use std::path::PathBuf;

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
    pub(super) model: ModelArg,
    /// Dataset
    #[arg(long, value_enum, default_value = "mnist")]
    pub(super) dataset: DatasetArg,
    /// image-folder: the side images are resized to
    #[arg(long, default_value_t = 32)]
    pub(super) image_size: usize,
    /// Layer sizes of the MLP, input and output included [default: C*H*W,256,128,classes, e.g. 784,256,128,10]
    #[arg(long, value_delimiter = ',')]
    pub(super) mlp_sizes: Option<Vec<usize>>,
    /// mnist-cnn: channels of the first block (the others have 2x and 4x) [default: 32; fashion-mnist 48]
    #[arg(long)]
    pub(super) width: Option<usize>,
    /// mnist-cnn: dropout before the classifier [default: 0.2; fashion-mnist 0.3]
    #[arg(long)]
    pub(super) dropout: Option<f32>,
    /// Train on the first N training images only (quick experiments)
    #[arg(long)]
    pub(super) limit_train: Option<usize>,
    /// Epochs in all (with --resume: the new total) [default: the model's recipe: 5 for lenet and mlp; mnist-cnn 20, on fashion-mnist 30; resnet18 20; resnet20/56 30]
    #[arg(long)]
    pub(super) epochs: Option<usize>,
    /// [default: 128; resnet18 256]
    #[arg(long)]
    pub(super) batch_size: Option<usize>,
    /// Optimizer [default: sgd]
    #[arg(long, value_enum)]
    pub(super) optimizer: Option<OptimizerArg>,
    /// Base learning rate [default: 0.1; resnet18 0.2]
    #[arg(long)]
    pub(super) lr: Option<f32>,
    /// SGD momentum [default: 0.9]
    #[arg(long)]
    pub(super) momentum: Option<f32>,
    /// Nesterov momentum (SGD) [default: on]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(super) nesterov: Option<bool>,
    /// L2 weight decay (decoupled for adamw) [default: 5e-4]
    #[arg(long)]
    pub(super) weight_decay: Option<f32>,
    /// Adam's beta1
    #[arg(long, default_value_t = TrainConfig::default().optimizer.beta1)]
    pub(super) beta1: f32,
    /// Adam's beta2
    #[arg(long, default_value_t = TrainConfig::default().optimizer.beta2)]
    pub(super) beta2: f32,
    /// Adam's epsilon
    #[arg(long, default_value_t = TrainConfig::default().optimizer.eps)]
    pub(super) eps: f32,
    /// Learning-rate schedule over the epochs [default: onecycle]
    #[arg(long, value_enum)]
    pub(super) schedule: Option<ScheduleArg>,
    /// Step schedule: epochs after which the rate is multiplied by --gamma
    #[arg(long, value_delimiter = ',', default_value = "3,4")]
    pub(super) milestones: Vec<usize>,
    /// Step schedule: the factor at each milestone
    #[arg(long, default_value_t = 0.1)]
    pub(super) gamma: f32,
    /// One-cycle schedule: share of training spent warming up to the base rate [default: 0.3; mnist-cnn 0.25]
    #[arg(long)]
    pub(super) pct_start: Option<f32>,
    /// Linear warm-up from 0 over this many epochs (any schedule)
    #[arg(long, default_value_t = 0.0)]
    pub(super) warmup_epochs: f32,
    /// Parameter initialization [default: pytorch; mnist-cnn, resnet20/56 he]
    #[arg(long, value_enum)]
    pub(super) init: Option<InitArg>,
    /// Seed for initialization, shuffling, augmentation and dropout: the same seed gives the same run
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub(super) seed: u64,
    /// Augment training batches on the device [default: off; mnist-cnn on: digits ±10° rotation,
    /// ±10% scale and shift; clothes flips and ±7% shift]. The options below change single ranges.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(super) augment: Option<bool>,
    /// Augmentation: rotation range in ±degrees
    #[arg(long)]
    pub(super) rotate: Option<f32>,
    /// Augmentation: scale range, 1 ± this
    #[arg(long)]
    pub(super) scale: Option<f32>,
    /// Augmentation: shift range, ± this share of the image size
    #[arg(long)]
    pub(super) translate: Option<f32>,
    /// Augmentation: elastic distortion, largest displacement in pixels
    #[arg(long)]
    pub(super) elastic: Option<f32>,
    /// Augmentation: Gaussian noise standard deviation
    #[arg(long)]
    pub(super) noise: Option<f32>,
    /// Augmentation: random horizontal flips
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(super) flip: Option<bool>,
    /// Augmentation: random crops shifted by up to this many pixels [default: 0; on CIFAR and image folders
    /// with --augment or a resnet/mnist-cnn recipe: 4]
    #[arg(long)]
    pub(super) crop: Option<usize>,
    /// Augmentation: how random crops are padded [default: reflect]
    #[arg(long, value_enum)]
    pub(super) crop_padding: Option<PaddingArg>,
    /// Augmentation: cutout, a square of this side zeroed at a random place [default: 0]
    #[arg(long)]
    pub(super) cutout: Option<usize>,
    /// Label smoothing of the loss [default: 0; resnets 0.1]
    #[arg(long)]
    pub(super) label_smoothing: Option<f32>,
    /// Continue a run from its checkpoint (RUN/model.safetensors, with RUN/train_state.safetensors
    /// beside it) with its saved settings, up to --epochs in all; outputs go to the same folder
    #[arg(long)]
    pub(super) resume: Option<PathBuf>,
    /// Batch size for the test-set evaluation after each epoch
    #[arg(long, default_value_t = 1000)]
    pub(super) eval_batch_size: usize,
    /// Output folder [default: runs/DATE-TIME]
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Print a table of time per op, per-step time and peak memory at the end
    #[arg(long)]
    pub(super) profile: bool,
    /// Run every step op by op instead of replaying a recorded CUDA graph
    #[arg(long)]
    pub(super) no_graphs: bool,
    #[command(flatten)]
    pub(super) common: CommonArgs,
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

impl TrainArgs {
    /// The architecture asked for, for a dataset of `info`'s shape and classes.
    pub(super) fn model_config(&self, info: &DatasetInfo) -> ModelConfig {
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
    pub(super) fn train_config(&self, model: &ModelConfig) -> TrainConfig {
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
