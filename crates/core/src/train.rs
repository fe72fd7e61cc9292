//! The training and evaluation loops. Both are written against [`Backend`]
//! only: the dataset is uploaded once as u8, each step gathers its batch on the
//! device from a per-epoch permutation, and loss/accuracy accumulate in device
//! buffers that are read once per epoch. A step allocates nothing.

use crate::backend::{AugmentSpec, Backend, CropSpec, Flip, Gather, Padding, View, ViewMut};
use crate::data::{Dataset, DatasetInfo};
use crate::error::{Error, Result};
use crate::lookahead::{Lookahead, LookaheadConfig};
use crate::loss_scale::{LossScaler, LossScaling};
use crate::model::Init;
use crate::model::{Model, ModelConfig};
use crate::optim::{Optimizer, OptimizerConfig, ParamGroup, Schedule, ScheduleConfig};
use crate::tta::Tta;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub init: Init,
    pub seed: u64,
    /// Random augmentation of every training batch (off when all zero).
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Train on the first this many training images only (quick experiments).
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first this many test images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
    /// Label smoothing of the cross-entropy loss (PyTorch's `label_smoothing`; 0: none).
    #[serde(default)]
    pub label_smoothing: f32,
    /// Parameters that train with other settings (see [`ParamGroup`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param_groups: Vec<ParamGroup>,
    /// Skips each epoch's last batch when it is short (every step is then one replayed graph).
    #[serde(default)]
    pub drop_last: bool,
    /// Lookahead averaging of the weights (see [`crate::lookahead`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookahead: Option<LookaheadConfig>,
    /// Test-time augmentation of the final evaluation (see [`crate::tta`]).
    #[serde(default)]
    pub tta: Tta,
    /// Dynamic loss scaling (for fp16; see [`crate::loss_scale`]).
    #[serde(default)]
    pub loss_scale: LossScaling,
}

/// On-the-fly augmentation of training batches, on the device that trains
/// (see [`AugmentSpec`] for what each range means).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Rotation in ±degrees.
    pub rotate_deg: f32,
    /// Scale in 1 ± this.
    pub scale: f32,
    /// Shift in ± this share of the image size.
    pub translate: f32,
    /// Elastic distortion: largest control-point displacement in pixels.
    pub elastic: f32,
    /// Random horizontal flips.
    pub flip: bool,
    /// Gaussian noise standard deviation (in normalized units).
    pub noise: f32,
    /// Random crops: shifts of up to this many pixels, from the image padded as `padding` says.
    #[serde(default)]
    pub crop: usize,
    #[serde(default)]
    pub padding: Padding,
    /// Cutout: a square of this side zeroed at a random place (0: none).
    #[serde(default)]
    pub cutout: usize,
    /// With `flip`: instead of random flips, a random half of the training images
    /// is mirrored once and every image is mirrored on odd epochs (airbench's
    /// derandomized flips).
    #[serde(default)]
    pub alternate_flips: bool,
}

/// The largest crop shift the crop op supports.
const MAX_CROP: usize = 64;

/// The crop/flip/cutout op's random stream (dropout layers use small salts, the warp 0).
const CROP_SALT: u32 = 0x4352_4f50;

impl AugmentConfig {
    pub fn is_off(&self) -> bool {
        *self == AugmentConfig::default()
    }

    /// For digits: small rotations, scalings and shifts (no flips: a flipped 2 is no 2).
    pub fn digits() -> Self {
        AugmentConfig { rotate_deg: 10.0, scale: 0.1, translate: 0.1, ..Default::default() }
    }

    /// For clothes: flips and shifts of up to 2 pixels.
    pub fn clothes() -> Self {
        AugmentConfig { translate: 0.07, flip: true, ..Default::default() }
    }

    /// For photos (CIFAR): random crops from the image padded by 4 pixels
    /// (reflected), and horizontal flips.
    pub fn photos() -> Self {
        AugmentConfig { crop: 4, padding: Padding::Reflect, flip: true, ..Default::default() }
    }

    /// Checks the ranges; errors name the `train` option that sets each.
    pub fn validate(&self) -> Result<()> {
        let at_least_0 = |v: f32| v.is_finite() && v >= 0.0;
        for (option, v) in [("--rotate", self.rotate_deg), ("--elastic", self.elastic), ("--noise", self.noise)] {
            if !at_least_0(v) {
                return Err(Error::config(option, format!("must be a number >= 0, got {v}")));
            }
        }
        for (option, v, what) in [("--scale", self.scale, "1 ± this"), ("--translate", self.translate, "a share of the image size")] {
            if !(at_least_0(v) && v < 1.0) {
                return Err(Error::config(option, format!("must be in [0, 1) ({what}), got {v}")));
            }
        }
        Ok(())
    }

    /// The training images as this augmentation wants them on the device: with
    /// alternating flips, a random half mirrored (by `seed`); otherwise as they are.
    pub fn prepare_train<'a>(&self, data: &'a crate::data::Dataset, seed: u64) -> std::borrow::Cow<'a, crate::data::Dataset> {
        if self.flip && self.alternate_flips {
            std::borrow::Cow::Owned(data.with_random_half_flipped(seed))
        } else {
            std::borrow::Cow::Borrowed(data)
        }
    }

    /// Checks the crop and cutout against images of `shape` (C, H, W).
    pub fn validate_for(&self, shape: &[usize]) -> Result<()> {
        let [_, h, w] = *shape else {
            return Err(Error::config("augmentation", format!("needs image inputs (C, H, W), the model takes {shape:?}")));
        };
        let side = h.min(w);
        let (limit, padding) = match self.padding {
            // Reflection mirrors inside the image, so the pad must stay below its side.
            Padding::Reflect => (side.saturating_sub(1).min(MAX_CROP), "reflect"),
            Padding::Zero => (side.min(MAX_CROP), "zero"),
        };
        if self.crop > limit {
            return Err(Error::config(
                "--crop",
                format!("{} pixels is too large for {h}x{w} images with {padding} padding: at most {limit}", self.crop),
            ));
        }
        if self.cutout > h.max(w) {
            return Err(Error::config("--cutout", format!("{} pixels is larger than the {h}x{w} images", self.cutout)));
        }
        if self.alternate_flips && !self.flip {
            return Err(Error::config("alternate flips", "need flips (--flip true)"));
        }
        Ok(())
    }

    /// Whether the affine warp (rotation, scale, translation, elastic, noise) runs.
    fn warps(&self) -> bool {
        let warp = AugmentConfig {
            rotate_deg: self.rotate_deg,
            scale: self.scale,
            translate: self.translate,
            elastic: self.elastic,
            noise: self.noise,
            ..Default::default()
        };
        !warp.is_off() || (self.flip && !self.crops())
    }

    /// Whether the crop/flip/cutout op runs (flips go there when it does).
    fn crops(&self) -> bool {
        self.crop > 0 || self.cutout > 0 || self.alternate_flips
    }

    /// The crop op of batches of `n` in epochs of `steps_per_epoch` steps.
    fn crop_spec(&self, n: usize, shape: &[usize], steps_per_epoch: usize) -> Result<CropSpec> {
        let [c, h, w] = *shape else {
            return Err(Error::config("augmentation", format!("needs image inputs (C, H, W), the model takes {shape:?}")));
        };
        let flip = match (self.flip, self.alternate_flips) {
            (false, _) => Flip::Off,
            (true, false) => Flip::Random,
            (true, true) => Flip::Alternate { steps_per_epoch: steps_per_epoch as u32 },
        };
        let (pad, padding, cutout) = (self.crop, self.padding, self.cutout);
        let spec = CropSpec { n, c, h, w, pad, padding, flip, fixed: None, cutout, salt: CROP_SALT };
        spec.validate().map_err(|e| Error::config("augmentation", e.to_string()))?;
        Ok(spec)
    }

    fn spec(&self, n: usize, shape: &[usize], info: &DatasetInfo) -> Result<AugmentSpec> {
        let [c, h, w] = *shape else {
            return Err(Error::config("augmentation", format!("needs image inputs (C, H, W), the model takes {shape:?}")));
        };
        Ok(AugmentSpec {
            n,
            c,
            h,
            w,
            rotate_deg: self.rotate_deg,
            scale: self.scale,
            translate: self.translate,
            elastic: self.elastic,
            flip: self.flip && !self.crops(),
            noise: self.noise,
            // The background: a 0 pixel (of the first channel) after normalization.
            fill: info.normalize(0, 0),
            salt: 0,
        })
    }
}

impl Default for TrainConfig {
    /// The defaults of `rusty-recognition train`: Nesterov SGD with a one-cycle
    /// schedule and weight decay; LeNet-5 reaches about 99.3% in 5 epochs with them.
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch_size: 128,
            optimizer: OptimizerConfig { nesterov: true, ..OptimizerConfig::sgd(0.1, 0.9, 5e-4) },
            schedule: ScheduleConfig { schedule: Schedule::OneCycle { pct_start: 0.3 }, warmup_epochs: 0.0 },
            init: Init::default(),
            seed: 0,
            augment: AugmentConfig::default(),
            train_limit: None,
            test_limit: None,
            label_smoothing: 0.0,
            param_groups: Vec::new(),
            drop_last: false,
            lookahead: None,
            tta: Tta::None,
            loss_scale: LossScaling::Off,
        }
    }
}

impl TrainConfig {
    /// The recipe a model trains with by default on `dataset` (a
    /// [`DatasetInfo::name`]): LeNet-5 and MLPs as [`TrainConfig::default`]
    /// (no augmentation); the strong CNN longer and with augmentation; the
    /// ResNets with crops and flips, label smoothing and a one-cycle schedule
    /// (see BENCHMARKS.md for what each reaches).
    pub fn recipe(model: &ModelConfig, dataset: &str) -> Self {
        let fashion = dataset == "fashion-mnist";
        let photos = !matches!(dataset, "mnist" | "fashion-mnist" | "idx");
        let nesterov = |lr| OptimizerConfig { nesterov: true, ..OptimizerConfig::sgd(lr, 0.9, 5e-4) };
        match model {
            ModelConfig::MnistCnn { .. } => TrainConfig {
                epochs: if fashion { 30 } else { 20 },
                optimizer: nesterov(0.1),
                schedule: ScheduleConfig { schedule: Schedule::OneCycle { pct_start: 0.25 }, warmup_epochs: 0.0 },
                init: Init::He,
                augment: match (fashion, photos) {
                    (true, _) => AugmentConfig::clothes(),
                    (_, true) => AugmentConfig::photos(),
                    _ => AugmentConfig::digits(),
                },
                ..TrainConfig::default()
            },
            // torch_cifar.py's recipe at batch 256 (lr 0.1 per 128), trained longer.
            ModelConfig::Resnet18 => TrainConfig {
                epochs: 20,
                batch_size: 256,
                optimizer: nesterov(0.2),
                schedule: ScheduleConfig { schedule: Schedule::OneCycle { pct_start: 0.25 }, warmup_epochs: 0.0 },
                augment: if photos { AugmentConfig::photos() } else { AugmentConfig::default() },
                label_smoothing: 0.1,
                ..TrainConfig::default()
            },
            ModelConfig::CifarResnet { .. } => TrainConfig {
                epochs: 30,
                batch_size: 128,
                optimizer: nesterov(0.1),
                schedule: ScheduleConfig { schedule: Schedule::OneCycle { pct_start: 0.25 }, warmup_epochs: 0.0 },
                init: Init::He,
                augment: if photos { AugmentConfig::photos() } else { AugmentConfig::default() },
                label_smoothing: 0.1,
                ..TrainConfig::default()
            },
            ModelConfig::CifarSpeed { .. } => TrainConfig::speed_run(),
            _ => TrainConfig::default(),
        }
    }

    /// The recipe of [`ModelConfig::CifarSpeed`]: airbench94's, with the loss
    /// a mean over the batch (so its learning rate is 1024x and its weight
    /// decay 1/1024x airbench's per-sum values). Batch 1024 for 10 epochs
    /// (short last batches dropped); Nesterov SGD, lr 1.5, momentum 0.85,
    /// weight decay 1.33e-3; BatchNorm biases at 64x the rate and 1/64 the
    /// decay, BatchNorm weights and the whitening filters frozen, the whitening
    /// bias trained for 3 epochs; a triangular schedule (0.2 up to 1 at 23%,
    /// down to 0.07); label smoothing 0.2; crops of ±2 pixels (reflected) and
    /// alternating flips; lookahead every 5 steps; a final evaluation over 6 views.
    pub fn speed_run() -> Self {
        let optimizer = OptimizerConfig { nesterov: true, ..OptimizerConfig::sgd(1.5, 0.85, 0.0153 / 11.5) };
        let decay = optimizer.weight_decay;
        TrainConfig {
            epochs: 10,
            batch_size: 1024,
            optimizer,
            schedule: ScheduleConfig { schedule: Schedule::Triangular { start: 0.2, peak_at: 0.23, end: 0.07 }, warmup_epochs: 0.0 },
            augment: AugmentConfig { crop: 2, padding: Padding::Reflect, flip: true, alternate_flips: true, ..Default::default() },
            label_smoothing: 0.2,
            param_groups: vec![
                ParamGroup::new("whiten.weight", 0.0),
                ParamGroup { train_epochs: Some(3), ..ParamGroup::new("whiten.bias", 1.0) },
                ParamGroup::new("*.norm*.weight", 0.0),
                ParamGroup { weight_decay: Some(decay / 64.0), ..ParamGroup::new("*.norm*.bias", 64.0) },
            ],
            drop_last: true,
            lookahead: Some(LookaheadConfig::default()),
            tta: Tta::MirrorTranslate,
            ..TrainConfig::default()
        }
    }

    /// airbench94_muon's recipe for the same network (`--model cifar-speed`),
    /// translated to a mean (not summed) loss and to our head (a Linear scaled
    /// by 1/9 from PyTorch's init, where airbench94_muon scales by 1/256 from
    /// weights of standard deviation 1: the same function, so the head's rate
    /// is theirs times (9/256)^2). Batch 2000 for 8 epochs, the rates decaying
    /// linearly to 0; [`Muon`](crate::optim::Muon) (rate 0.24, momentum 0.6,
    /// Nesterov, weights renormalized) for the six block convs; Nesterov SGD
    /// (momentum 0.85) for the BatchNorm biases (rate 0.053 per summed loss),
    /// the whitening bias (the same, for 3 epochs; theirs decays to 0 over
    /// those 3, ours follows the run's schedule at 0.62x: the same mean rate)
    /// and the head (0.67); weight decay 0.004 per step at full rate; no
    /// lookahead. Muon cannot skip steps, so this runs at bf16, not fp16.
    pub fn speed_run_muon() -> Self {
        const BATCH: f32 = 2000.0;
        // Rates per summed loss times the batch: the same steps on a mean loss.
        let bias_lr = 0.053 * BATCH;
        let head_lr = 0.67 * BATCH * (9.0f32 / 256.0).powi(2);
        // Coupled weight decay (PyTorch's SGD): lr * wd = 0.004 per step for every group.
        let decay = |lr: f32| 2e-6 * BATCH / lr;
        let whiten_scale = 0.62;
        let optimizer = OptimizerConfig { nesterov: true, ..OptimizerConfig::sgd(bias_lr, 0.85, decay(bias_lr)) };
        let muon = crate::optim::Muon::airbench();
        TrainConfig {
            epochs: 8,
            batch_size: BATCH as usize,
            optimizer,
            schedule: ScheduleConfig { schedule: Schedule::Triangular { start: 1.0, peak_at: 1e-6, end: 0.0 }, warmup_epochs: 0.0 },
            param_groups: vec![
                ParamGroup::new("whiten.weight", 0.0),
                ParamGroup {
                    train_epochs: Some(3),
                    weight_decay: Some(decay(bias_lr * whiten_scale)),
                    ..ParamGroup::new("whiten.bias", whiten_scale)
                },
                ParamGroup::new("*.norm*.weight", 0.0),
                ParamGroup::new("*.norm*.bias", 1.0),
                ParamGroup { weight_decay: Some(decay(head_lr)), ..ParamGroup::new("fc.weight", head_lr / bias_lr) },
                ParamGroup { muon: Some(muon), ..ParamGroup::new("block*.conv*.weight", 0.24 / bias_lr) },
            ],
            lookahead: None,
            ..TrainConfig::speed_run()
        }
    }

    /// Checks every value; errors name the `train` option that sets it.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::config("--batch-size", "must be at least 1, got 0"));
        }
        if self.train_limit == Some(0) {
            return Err(Error::config("--limit-train", "must be at least 1 image, got 0"));
        }
        if self.test_limit == Some(0) {
            return Err(Error::config("--limit-test", "must be at least 1 image, got 0"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::config("--label-smoothing", format!("must be in [0, 1), got {}", self.label_smoothing)));
        }
        self.augment.validate()?;
        self.loss_scale.validate()?;
        self.schedule.validate()?;
        if let Some(lookahead) = &self.lookahead {
            lookahead.validate()?;
        }
        self.optimizer.validate()
    }

    /// Adapts a default recipe to a short run: while training `train_len`
    /// images for the configured epochs would take fewer than
    /// [`SHORT_RUN_STEPS`] steps, halves the batch size (down to
    /// [`SHORT_RUN_MIN_BATCH`]), and with `scale_lr` scales the learning rate
    /// in proportion (the linear scaling rule). A 24-step one-cycle run of
    /// LeNet-5 barely leaves chance; 94 steps at batch 32 reach ~86%. Runs of
    /// [`SHORT_RUN_STEPS`] steps or more are left as they are. Returns whether
    /// the batch size changed.
    pub fn fit_short_run(&mut self, train_len: usize, scale_lr: bool) -> bool {
        let steps = |bs: usize| self.epochs * train_len.div_ceil(bs);
        let old = self.batch_size;
        if self.epochs == 0 {
            return false;
        }
        let mut bs = old;
        while steps(bs) < SHORT_RUN_STEPS && bs / 2 >= SHORT_RUN_MIN_BATCH {
            bs /= 2;
        }
        if bs == old {
            return false;
        }
        self.batch_size = bs;
        if scale_lr {
            self.optimizer.lr = (self.optimizer.lr as f64 * bs as f64 / old as f64) as f32;
        }
        true
    }
}

/// Steps in an epoch of `len` samples in batches of `bs` (with `drop_last`,
/// only full ones, unless there are fewer samples than one batch).
pub fn steps_per_epoch(len: usize, bs: usize, drop_last: bool) -> usize {
    if drop_last && len >= bs {
        len / bs
    } else {
        len.div_ceil(bs)
    }
}

/// The fewest steps [`TrainConfig::fit_short_run`] plans for.
pub const SHORT_RUN_STEPS: usize = 200;

/// The smallest batch size [`TrainConfig::fit_short_run`] goes down to.
pub const SHORT_RUN_MIN_BATCH: usize = 32;

/// A dataset living on the device as u8 images and labels.
pub struct DeviceDataset<B: Backend> {
    pub images: B::Buf<u8>,
    pub labels: B::Buf<u8>,
    pub len: usize,
    pub sample_len: usize,
    /// Shape, classes and normalization.
    pub info: DatasetInfo,
    /// Unique per upload, so a recorded step knows which dataset it reads.
    id: u64,
}

static NEXT_DATASET_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<B: Backend> DeviceDataset<B> {
    /// Uploads one split described by `info` (whose shape must be the images').
    pub fn upload(backend: &B, data: &Dataset, info: &DatasetInfo) -> Result<Self> {
        info.validate()?;
        if info.shape != data.shape {
            return Err(Error::config("dataset", format!("images are {:?}, the description says {:?}", data.shape, info.shape)));
        }
        Ok(DeviceDataset {
            info: info.clone(),
            images: backend.upload(&data.images)?,
            labels: backend.upload(&data.labels)?,
            len: data.len,
            sample_len: data.sample_len(),
            id: NEXT_DATASET_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn gather_spec(&self, n: usize) -> Gather {
        Gather::new(n, &self.info)
    }
}

/// Mean loss and accuracy over a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassStats {
    pub loss: f64,
    pub accuracy: f64,
    pub correct: usize,
    pub samples: usize,
}

impl PassStats {
    pub(crate) fn from_sums(stats: &[f32], samples: usize) -> Self {
        let n = samples.max(1) as f64;
        PassStats { loss: stats[0] as f64 / n, accuracy: stats[1] as f64 / n, correct: stats[1] as usize, samples }
    }
}

/// A fixed-size batch workspace: input, labels and the loss accumulators.
struct Batch<B: Backend> {
    x: B::Buf<f32>,
    /// The warped batch (allocated only when the affine augmentation runs).
    warped: Option<B::Buf<f32>>,
    /// The cropped batch (allocated only when crop/flip/cutout runs).
    cropped: Option<B::Buf<f32>>,
    y: B::Buf<u32>,
    stats: B::Buf<f32>,
}

impl<B: Backend> Batch<B> {
    fn new(backend: &B, capacity: usize, sample_len: usize) -> Result<Self> {
        Ok(Batch {
            x: backend.alloc(capacity * sample_len)?,
            warped: None,
            cropped: None,
            y: backend.alloc(capacity)?,
            stats: backend.alloc(2)?,
        })
    }
}

/// The permutation of epoch `epoch` (0-based) for a run seeded with `seed`.
pub fn epoch_permutation(seed: u64, epoch: usize, len: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x05ee_d0fe_90c4_u64.wrapping_mul(epoch as u64 + 1));
    let mut perm: Vec<u32> = (0..len as u32).collect();
    for i in (1..len).rev() {
        let j = rng.random_range(0..=i);
        perm.swap(i, j);
    }
    perm
}

pub struct Trainer<B: Backend> {
    pub model: Model<B>,
    pub optimizer: Optimizer<B>,
    /// Dynamic loss scaling, when the config turns it on.
    pub loss_scaler: Option<LossScaler<B>>,
    pub config: TrainConfig,
    batch: Batch<B>,
    /// The current step's sample indices (a window of the permutation is
    /// copied here, so a recorded step always reads the same buffer).
    batch_indices: B::Buf<u32>,
    dlogits: B::Buf<f32>,
    perm: B::Buf<u32>,
    /// The global step numbers of this epoch's steps: each step copies its
    /// number into the model's random-stream state on the device.
    step_ids: B::Buf<u32>,
    /// The running loss sum after each step of the epoch (a device-side copy,
    /// read only when the loss went non-finite, to name the step).
    loss_log: B::Buf<f32>,
    /// The weight average, when the recipe has one.
    pub lookahead: Option<Lookahead<B>>,
    /// Steps of the whole run (the lookahead's ramp).
    total_steps: usize,
    /// Record full-size steps once and replay them (where the backend can).
    pub use_graphs: bool,
    /// Read the parameters and optimizer state back after each epoch to check
    /// they are finite ([`Error::NonFinite`]); benchmarks may turn it off.
    pub check_finite: bool,
    graph: Option<(GraphKey, B::Graph)>,
    warmed_up: Option<GraphKey>,
}

/// What a recorded step depends on: the dataset and the model's buffers (the
/// optimizer's fixed settings belong to the trainer; its per-step values are
/// read from the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphKey {
    dataset: u64,
    model: u64,
}

/// Values of the loss scale in [`Trainer::state`].
const SAVED_SCALE: usize = 3;

impl<B: Backend> Trainer<B> {
    pub fn new(backend: &B, mut model: Model<B>, config: TrainConfig, train_len: usize) -> Result<Self> {
        config.validate()?;
        let bs = config.batch_size;
        model.reserve_backward(backend, bs)?;
        // Random streams follow the run's seed, however the model was built or loaded.
        backend.write(ViewMut::range(&mut model.rng, 0, 1)?, &[crate::random::device_seed(config.seed)])?;
        let optimizer = Optimizer::with_groups(backend, config.optimizer, &model.params, &config.param_groups)?;
        let loss_scaler = LossScaler::new(backend, config.loss_scale)?;
        if optimizer.uses_muon() && loss_scaler.is_some() {
            // An overflowed step would put infinities into Muon's momentum: it cannot be skipped.
            return Err(Error::config("--precision fp16", "its loss scaling skips overflowed steps, which Muon cannot; use bf16"));
        }
        let lookahead = config.lookahead.map(|c| Lookahead::new(backend, c, &mut model)).transpose()?;
        let mut batch = Batch::new(backend, bs, model.input_len())?;
        if config.augment.warps() {
            batch.warped = Some(backend.alloc(bs * model.input_len())?);
        }
        if config.augment.crops() {
            config.augment.validate_for(model.input_shape())?;
            config.augment.crop_spec(bs, model.input_shape(), 1)?;
            batch.cropped = Some(backend.alloc(bs * model.input_len())?);
        }
        let total_steps = config.epochs * steps_per_epoch(train_len, bs, config.drop_last);
        Ok(Trainer {
            batch,
            step_ids: backend.alloc(train_len.div_ceil(bs).max(1))?,
            batch_indices: backend.alloc(bs)?,
            dlogits: backend.alloc(bs * model.classes())?,
            perm: backend.alloc(train_len)?,
            loss_log: backend.alloc(train_len.div_ceil(bs).max(1))?,
            model,
            optimizer,
            lookahead,
            total_steps,
            loss_scaler,
            config,
            use_graphs: true,
            check_finite: true,
            graph: None,
            warmed_up: None,
        })
    }

    /// Steps in one epoch over `len` samples (the last batch may be short, or dropped).
    pub fn steps_per_epoch(&self, len: usize) -> usize {
        steps_per_epoch(len, self.config.batch_size, self.config.drop_last)
    }

    /// What a resume needs besides the model: the optimizer state, then the
    /// lookahead average (when there is one), then the loss scale (when the
    /// run scales its loss: [scale, good steps, skipped steps]).
    pub fn state(&self, backend: &B) -> Result<Vec<f32>> {
        let mut state = self.optimizer.state(backend)?;
        if let Some(lookahead) = &self.lookahead {
            state.extend(lookahead.state(backend)?);
        }
        if let Some(scaler) = &self.loss_scaler {
            let s = scaler.status(backend)?;
            state.extend([s.scale, s.good_steps as f32, s.skipped as f32]);
        }
        Ok(state)
    }

    /// Restores what [`Trainer::state`] saved after `steps` optimizer steps.
    /// A saved loss scale is taken up when this run scales its loss too and
    /// dropped when it does not (a resume may change `--precision`); a run
    /// saved without one (another precision, or before loss scales were
    /// saved) starts its scale afresh.
    pub fn restore(&mut self, backend: &B, state: &[f32], steps: u64) -> Result<()> {
        let (optimizer, average) = (self.optimizer.state_len(), self.lookahead.as_ref().map_or(0, |l| l.state_len()));
        let scale = match state.len().checked_sub(optimizer + average) {
            Some(0) => None,
            Some(SAVED_SCALE) => Some(&state[optimizer + average..]),
            _ => {
                return Err(Error::shape(
                    "trainer restore",
                    "state",
                    format!("{} values (optimizer, lookahead average, optionally {SAVED_SCALE} of loss scale)", optimizer + average),
                    state.len(),
                ))
            }
        };
        self.optimizer.restore(backend, &state[..optimizer], steps)?;
        if let Some(lookahead) = self.lookahead.as_mut() {
            lookahead.restore(backend, &state[optimizer..optimizer + average])?;
        }
        match (self.loss_scaler.as_mut(), scale) {
            (Some(scaler), Some(&[scale, good, skipped])) => {
                let count = |v: f32| v >= 0.0 && v.fract() == 0.0;
                if !(scale.is_finite() && scale > 0.0 && count(good) && count(skipped)) {
                    return Err(Error::config(
                        "saved loss scale",
                        format!("needs a positive scale and whole step counts, got {scale}, {good}, {skipped}"),
                    ));
                }
                scaler.restore(backend, crate::loss_scale::LossScaleStatus { scale, good_steps: good as u32, skipped: skipped as u64 })
            }
            _ => Ok(()),
        }
    }

    /// One training step on the `n` samples whose indices are in `batch_indices`:
    /// gather, forward, loss, backward, update. Waits for nothing.
    fn step(&mut self, backend: &B, data: &DeviceDataset<B>, n: usize) -> Result<()> {
        let classes = self.model.classes();
        let x_len = n * data.sample_len;
        // x: (n, 1, 28, 28), y: (n)
        backend.gather_batch(
            &data.gather_spec(n),
            View::all(&data.images),
            View::all(&data.labels),
            View::prefix(&self.batch_indices, n)?,
            ViewMut::prefix(&mut self.batch.x, x_len)?,
            ViewMut::prefix(&mut self.batch.y, n)?,
        )?;
        // Augmentation: the affine warp, then crop/flip/cutout, each when configured.
        let steps_per_epoch = self.steps_per_epoch(data.len);
        let mut x = View::prefix(&self.batch.x, x_len)?;
        if let Some(warped) = self.batch.warped.as_mut() {
            let spec = self.config.augment.spec(n, self.model.input_shape(), &data.info)?;
            backend.augment(&spec, View::all(&self.model.rng), x, ViewMut::prefix(warped, x_len)?)?;
            x = View::prefix(warped, x_len)?;
        }
        if let Some(cropped) = self.batch.cropped.as_mut() {
            let spec = self.config.augment.crop_spec(n, self.model.input_shape(), steps_per_epoch)?;
            backend.crop_flip(&spec, View::all(&self.model.rng), x, ViewMut::prefix(cropped, x_len)?)?;
            x = View::prefix(cropped, x_len)?;
        }
        self.model.forward_train(backend, n, x)?;
        // Mean loss over the batch: dlogits = (softmax - onehot) / n
        backend.softmax_cross_entropy(
            n,
            classes,
            self.config.label_smoothing,
            self.model.logits(n)?,
            View::prefix(&self.batch.y, n)?,
            1.0 / n as f32,
            Some(ViewMut::prefix(&mut self.dlogits, n * classes)?),
            ViewMut::all(&mut self.batch.stats),
        )?;
        if let Some(scaler) = &self.loss_scaler {
            scaler.scale_dlogits(backend, ViewMut::prefix(&mut self.dlogits, n * classes)?)?;
        }
        self.model.backward(backend, n, x, View::prefix(&self.dlogits, n * classes)?)?;
        let Some(scaler) = &mut self.loss_scaler else { return self.optimizer.step(backend, &mut self.model.params) };
        // Unscale and check, skip the update if a gradient overflowed, move the scale.
        scaler.unscale(backend, ViewMut::all(&mut self.model.params.grads))?;
        self.optimizer.skip_if(backend, scaler.found_inf())?;
        self.optimizer.step(backend, &mut self.model.params)?;
        scaler.update(backend)
    }

    /// A full-size step: replayed from a recorded graph where the backend has
    /// them (recorded on the second step with the same dataset and buffers;
    /// the first one runs normally so every lazily grown buffer exists).
    fn full_step(&mut self, backend: &B, data: &DeviceDataset<B>) -> Result<()> {
        let n = self.config.batch_size;
        let key = GraphKey { dataset: data.id, model: self.model.generation() };
        if !self.use_graphs {
            return self.step(backend, data, n);
        }
        if let Some((k, graph)) = &self.graph {
            if *k == key {
                // The recorded step includes the optimizer update and a training forward: count them.
                self.optimizer.steps += 1;
                self.model.batches_tracked += 1;
                return backend.replay(graph);
            }
        }
        if self.warmed_up != Some(key) {
            self.warmed_up = Some(key);
            return self.step(backend, data, n);
        }
        if !backend.begin_capture()? {
            self.use_graphs = false;
            return self.step(backend, data, n);
        }
        let recorded = self.step(backend, data, n);
        let graph = backend.end_capture();
        recorded?;
        let graph = graph?;
        backend.replay(&graph)?;
        self.graph = Some((key, graph));
        Ok(())
    }

    /// The learning rate at fractional epoch `t` (0 at the start of training).
    pub fn lr_at(&self, t: f64) -> f32 {
        self.config.schedule.lr(self.config.optimizer.lr, t, self.config.epochs)
    }

    /// The learning rates of epoch `epoch`'s `steps` steps (0-based epoch).
    pub fn epoch_lrs(&self, epoch: usize, steps: usize) -> Vec<f32> {
        (0..steps).map(|step| self.lr_at(epoch as f64 + step as f64 / steps as f64)).collect()
    }

    /// One pass over `data` in the order of epoch `epoch`'s permutation.
    /// `progress(step_done, steps)` is called after each step is enqueued; it
    /// never waits for the device. Returns the running train loss/accuracy; a
    /// loss that became NaN or infinite is [`Error::Diverged`] naming the step;
    /// parameters or optimizer state that did are [`Error::NonFinite`].
    pub fn train_epoch(
        &mut self,
        backend: &B,
        data: &DeviceDataset<B>,
        epoch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<PassStats> {
        self.train_epoch_with(backend, data, epoch, &mut |r| {
            progress(r.done, r.steps);
            Ok(())
        })
    }

    /// [`Trainer::train_epoch`] with a [`StepReport`] after each step is
    /// enqueued, which can read the running loss and accuracy back (waiting
    /// for the device) when the caller wants them; an error it returns stops the epoch.
    pub fn train_epoch_with(
        &mut self,
        backend: &B,
        data: &DeviceDataset<B>,
        epoch: usize,
        on_step: &mut dyn FnMut(&StepReport<'_, B>) -> Result<()>,
    ) -> Result<PassStats> {
        if crate::Storage::len(&self.perm) != data.len {
            self.perm = backend.alloc(data.len)?;
        }
        let bs = self.config.batch_size;
        let steps = self.steps_per_epoch(data.len);
        if crate::Storage::len(&self.loss_log) < steps {
            self.loss_log = backend.alloc(steps)?;
        }
        if crate::Storage::len(&self.step_ids) < steps {
            self.step_ids = backend.alloc(steps)?;
        }
        // Global step numbers: random draws depend on where training is, not on how it got there.
        let ids: Vec<u32> = (0..steps).map(|i| (epoch * steps + i) as u32).collect();
        backend.write(ViewMut::prefix(&mut self.step_ids, steps)?, &ids)?;
        backend.write(ViewMut::all(&mut self.perm), &epoch_permutation(self.config.seed, epoch, data.len))?;
        backend.fill(ViewMut::all(&mut self.batch.stats), 0.0)?;
        // The epoch's learning rates go to the device once; steps copy theirs there.
        let lrs = self.epoch_lrs(epoch, steps);
        self.optimizer.plan(backend, epoch, &lrs)?;
        let optimizer = &self.optimizer;
        self.model.freeze(|name| optimizer.frozen(name, epoch));
        let mut samples = 0;
        for (step, &lr) in lrs.iter().enumerate() {
            let start = step * bs;
            let n = bs.min(data.len - start);
            self.optimizer.prepare(backend, step)?;
            backend.copy(View::range(&self.step_ids, step, 1)?, ViewMut::range(&mut self.model.rng, 1, 1)?)?;
            backend.copy(View::range(&self.perm, start, n)?, ViewMut::prefix(&mut self.batch_indices, n)?)?;
            if n == bs {
                self.full_step(backend, data)?;
            } else {
                self.step(backend, data, n)?;
            }
            backend.copy(View::range(&self.batch.stats, 0, 1)?, ViewMut::range(&mut self.loss_log, step, 1)?)?;
            if let Some(lookahead) = self.lookahead.as_mut() {
                lookahead.after_step(backend, &mut self.model, epoch * steps + step + 1, self.total_steps)?;
            }
            samples += n;
            on_step(&StepReport { done: step + 1, steps, samples: start + n, lr, backend, stats: &self.batch.stats })?;
        }
        let sums = backend.download(View::all(&self.batch.stats))?;
        if let Some(scaler) = &mut self.loss_scaler {
            scaler.end_epoch(backend)?;
        }
        if !sums[0].is_finite() {
            let log = backend.download(View::prefix(&self.loss_log, steps)?)?;
            let step = log.iter().position(|v| !v.is_finite()).map_or(steps, |i| i + 1);
            return Err(Error::Diverged { epoch: epoch + 1, step, loss: sums[0] });
        }
        if self.check_finite {
            self.check_finite(backend, epoch, steps)?;
        }
        Ok(PassStats::from_sums(&sums, samples))
    }

    /// [`Error::NonFinite`] when a parameter or the optimizer state is NaN or
    /// infinite after epoch `epoch` (0-based) of `steps` steps: one read-back
    /// of each flat buffer per epoch.
    fn check_finite(&self, backend: &B, epoch: usize, steps: usize) -> Result<()> {
        let diverged = |what: String, value: f32| Error::NonFinite { epoch: epoch + 1, step: steps, what, value };
        let params = backend.download(View::all(&self.model.params.data))?;
        if let Some(i) = params.iter().position(|v| !v.is_finite()) {
            let entry = self.model.params.entries.iter().find(|e| (e.offset..e.offset + e.len()).contains(&i));
            let name = entry.map_or("alignment padding".to_string(), |e| format!("`{}`", e.name));
            return Err(diverged(format!("parameter {name}"), params[i]));
        }
        let state = self.optimizer.state(backend)?;
        if let Some(v) = state.iter().find(|v| !v.is_finite()) {
            return Err(diverged(format!("the {}", self.config.optimizer.kind.state_name()), *v));
        }
        Ok(())
    }
}

/// Where an epoch stands after a step (see [`Trainer::train_epoch_with`]).
pub struct StepReport<'a, B: Backend> {
    /// Steps enqueued in this epoch (1-based), of `steps`.
    pub done: usize,
    pub steps: usize,
    /// Images of this epoch's steps so far.
    pub samples: usize,
    /// The learning rate of the step just enqueued.
    pub lr: f32,
    backend: &'a B,
    stats: &'a B::Buf<f32>,
}

impl<B: Backend> StepReport<'_, B> {
    /// The sums of the loss and of the correct predictions over this epoch's
    /// steps so far. Reads them back, so it waits for every enqueued step:
    /// call it every so often, not after every step.
    pub fn sums(&self) -> Result<(f64, f64)> {
        let sums = self.backend.download(View::all(self.stats))?;
        Ok((sums[0] as f64, sums[1] as f64))
    }
}

/// Loss and accuracy of `model` on all of `data`, in batches of `batch_size`.
pub fn evaluate<B: Backend>(backend: &B, model: &mut Model<B>, data: &DeviceDataset<B>, batch_size: usize) -> Result<PassStats> {
    if batch_size == 0 {
        return Err(Error::config("--batch-size", "must be at least 1"));
    }
    let bs = batch_size.min(data.len.max(1));
    let mut batch = Batch::new(backend, bs, data.sample_len)?;
    let order: Vec<u32> = (0..data.len as u32).collect();
    let order = backend.upload(&order)?;
    let classes = model.classes();
    for start in (0..data.len).step_by(bs) {
        let n = bs.min(data.len - start);
        let x_len = n * data.sample_len;
        backend.gather_batch(
            &data.gather_spec(n),
            View::all(&data.images),
            View::all(&data.labels),
            View::range(&order, start, n)?,
            ViewMut::prefix(&mut batch.x, x_len)?,
            ViewMut::prefix(&mut batch.y, n)?,
        )?;
        model.forward(backend, n, View::prefix(&batch.x, x_len)?)?;
        backend.softmax_cross_entropy(
            n,
            classes,
            0.0,
            model.logits(n)?,
            View::prefix(&batch.y, n)?,
            1.0,
            None,
            ViewMut::all(&mut batch.stats),
        )?;
    }
    let sums = backend.download(View::all(&batch.stats))?;
    Ok(PassStats::from_sums(&sums, data.len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_runs_get_smaller_batches() {
        // LeNet-5's 5 epochs of MNIST (2,345 steps) and one full epoch (469) stay as they are (and 0 epochs train nothing).
        for epochs in [5, 1, 0] {
            let mut c = TrainConfig { epochs, ..TrainConfig::default() };
            assert!(!c.fit_short_run(60_000, true));
            assert_eq!((c.batch_size, c.optimizer.lr), (128, 0.1));
        }
        // 3,000 images for one epoch: 24 steps at 128, 47 at 64, 94 at 32 (the floor).
        let mut c = TrainConfig { epochs: 1, ..TrainConfig::default() };
        assert!(c.fit_short_run(3000, true));
        assert_eq!((c.batch_size, c.optimizer.lr), (32, 0.025));
        // 12,800 images: 100 steps at 128, 200 at 64; a given learning rate stays.
        let mut c = TrainConfig { epochs: 1, ..TrainConfig::default() };
        assert!(c.fit_short_run(12_800, false));
        assert_eq!((c.batch_size, c.optimizer.lr), (64, 0.1));
    }

    #[test]
    fn invalid_values_name_their_option() {
        let bad = |c: TrainConfig, needle: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        let c = TrainConfig::default;
        bad(TrainConfig { train_limit: Some(0), ..c() }, "--limit-train");
        bad(TrainConfig { augment: AugmentConfig { translate: 1.0, ..Default::default() }, ..c() }, "--translate");
        bad(TrainConfig { augment: AugmentConfig { rotate_deg: -1.0, ..Default::default() }, ..c() }, "--rotate");
        let crop = |crop, padding| AugmentConfig { crop, padding, ..Default::default() };
        assert!(crop(27, Padding::Reflect).validate_for(&[1, 28, 28]).is_ok());
        assert!(crop(28, Padding::Reflect).validate_for(&[1, 28, 28]).unwrap_err().to_string().contains("--crop"));
        assert!(crop(28, Padding::Zero).validate_for(&[1, 28, 28]).is_ok());
        let cutout = AugmentConfig { cutout: 29, ..Default::default() };
        assert!(cutout.validate_for(&[1, 28, 28]).unwrap_err().to_string().contains("--cutout"));
    }
}
