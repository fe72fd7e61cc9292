//! The device contract. A backend owns buffers and runs ops on them.
//!
//! Ops are *asynchronous by design*: an op enqueues work and returns; only
//! [`Backend::download`] (and [`Backend::synchronize`]) wait for the device.
//! Shapes are explicit in every op (geometry structs below) and a buffer whose
//! length does not fit is an [`Error::Shape`], never silent garbage.
//!
//! All tensors are row-major and contiguous; images are (N, C, H, W).

use crate::error::{check_len, Error, Result};
use std::fmt::Debug;

/// Element types a buffer can hold.
pub trait Elem: bytemuck::Pod + Default + Debug + Send + Sync + 'static {
    const NAME: &'static str;
}
impl Elem for f32 {
    const NAME: &'static str = "f32";
}
impl Elem for u32 {
    const NAME: &'static str = "u32";
}
impl Elem for u8 {
    const NAME: &'static str = "u8";
}

/// A device buffer knows its length in elements.
pub trait Storage {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Storage for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// A read-only window `[offset, offset + len)` into a backend buffer.
pub struct View<'a, B: Backend, T: Elem> {
    pub buf: &'a B::Buf<T>,
    pub offset: usize,
    pub len: usize,
}

impl<B: Backend, T: Elem> Clone for View<'_, B, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend, T: Elem> Copy for View<'_, B, T> {}

impl<'a, B: Backend, T: Elem> View<'a, B, T> {
    /// The whole buffer.
    pub fn all(buf: &'a B::Buf<T>) -> Self {
        View { buf, offset: 0, len: buf.len() }
    }
    /// The first `len` elements (error if the buffer is shorter).
    pub fn prefix(buf: &'a B::Buf<T>, len: usize) -> Result<Self> {
        Self::range(buf, 0, len)
    }
    pub fn range(buf: &'a B::Buf<T>, offset: usize, len: usize) -> Result<Self> {
        check_range(buf.len(), offset, len)?;
        Ok(View { buf, offset, len })
    }
    /// A sub-window relative to this one.
    pub fn sub(self, offset: usize, len: usize) -> Result<Self> {
        check_range(self.len, offset, len)?;
        Ok(View { buf: self.buf, offset: self.offset + offset, len })
    }
}

/// A writable window `[offset, offset + len)` into a backend buffer.
pub struct ViewMut<'a, B: Backend, T: Elem> {
    pub buf: &'a mut B::Buf<T>,
    pub offset: usize,
    pub len: usize,
}

impl<'a, B: Backend, T: Elem> ViewMut<'a, B, T> {
    pub fn all(buf: &'a mut B::Buf<T>) -> Self {
        let len = buf.len();
        ViewMut { buf, offset: 0, len }
    }
    pub fn prefix(buf: &'a mut B::Buf<T>, len: usize) -> Result<Self> {
        Self::range(buf, 0, len)
    }
    pub fn range(buf: &'a mut B::Buf<T>, offset: usize, len: usize) -> Result<Self> {
        check_range(buf.len(), offset, len)?;
        Ok(ViewMut { buf, offset, len })
    }
    /// Re-borrow for a shorter lifetime (to pass the same window twice in sequence).
    pub fn reborrow(&mut self) -> ViewMut<'_, B, T> {
        ViewMut { buf: self.buf, offset: self.offset, len: self.len }
    }
    pub fn as_view(&self) -> View<'_, B, T> {
        View { buf: self.buf, offset: self.offset, len: self.len }
    }
}

fn check_range(buf_len: usize, offset: usize, len: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= buf_len => Ok(()),
        _ => Err(Error::shape("view", "window end", format!("<= {buf_len}"), format!("{offset}+{len}"))),
    }
}

/// What a conv's backward reads: x, what its forward kept of x (see
/// [`Backend::conv2d_forward_keep`]), if it did, and the weight.
pub type KeptConvInputs<'a, B> = (View<'a, B, f32>, Option<View<'a, B, f32>>, View<'a, B, f32>);

/// The gradients a convolution's backward writes: [dweight | dbias] as one
/// window, or, without a bias, dweight and the scratch of
/// [`Backend::conv2d_backward_no_bias`].
pub enum ConvGrads<'a, B: Backend> {
    Bias(ViewMut<'a, B, f32>),
    NoBias { dweight: ViewMut<'a, B, f32>, scratch: ViewMut<'a, B, f32> },
}

/// `C (m, n) = alpha * op(A) * op(B) + beta * C (+ bias broadcast over rows)`.
/// Row-major: `A` is stored (m, k), or (k, m) when `trans_a`; `B` is stored
/// (k, n), or (n, k) when `trans_b`; `bias` has length n.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0 }
    }
    pub fn trans_a(mut self) -> Self {
        self.trans_a = true;
        self
    }
    pub fn trans_b(mut self) -> Self {
        self.trans_b = true;
        self
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
    pub fn check(&self, a: usize, b: usize, bias: Option<usize>, c: usize) -> Result<()> {
        check_len("gemm", "A", self.m * self.k, a)?;
        check_len("gemm", "B", self.k * self.n, b)?;
        check_len("gemm", "C", self.m * self.n, c)?;
        if let Some(bias) = bias {
            check_len("gemm", "bias", self.n, bias)?;
        }
        Ok(())
    }
}

/// Geometry of a 2-D convolution: x (n, c_in, h, w) * weight (c_out, c_in, k, k)
/// -> y (n, c_out, out_h, out_w), zero padding `pad` on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dGeom {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }
    pub fn w_len(&self) -> usize {
        self.c_out * self.c_in * self.k * self.k
    }
    /// Rows of the im2col matrix: c_in * k * k.
    pub fn patch_len(&self) -> usize {
        self.c_in * self.k * self.k
    }
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.stride == 0 || self.h + 2 * self.pad < self.k || self.w + 2 * self.pad < self.k {
            return Err(Error::shape("conv2d", "geometry", "kernel >= 1, stride >= 1, kernel <= padded input", format!("{self:?}")));
        }
        Ok(())
    }
}

/// Geometry of a 2-D max pool with square window `k`, `stride` and `pad`
/// (padding counts as -infinity, as in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// ReLU fused in: max-pool commutes with ReLU, so this computes
    /// pool(relu(x)) = relu(pool(x)) without a ReLU pass or buffer. An output
    /// clamped to 0 gets the argmax [`NO_ARGMAX`] (no gradient flows back).
    pub relu: bool,
}

/// Argmax of a pooled output that receives no gradient (see [`Pool2dGeom::relu`]).
pub const NO_ARGMAX: u32 = u32::MAX;

impl Pool2dGeom {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.n * self.c * self.out_h() * self.out_w()
    }
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.stride == 0 || self.h + 2 * self.pad < self.k || self.w + 2 * self.pad < self.k || 2 * self.pad > self.k {
            return Err(Error::shape(
                "maxpool2d",
                "geometry",
                "window >= 1, stride >= 1, pad <= window/2, window <= padded input",
                format!("{self:?}"),
            ));
        }
        Ok(())
    }
}

impl Pool2dGeom {
    /// Average pooling takes no fused ReLU.
    fn validate_avg(&self) -> Result<()> {
        self.validate()?;
        if self.relu {
            return Err(Error::shape("avgpool2d", "fused relu", "false (average pooling does not commute with ReLU)", "true"));
        }
        Ok(())
    }
}

/// Batch normalization of x (n, c, hw...) per channel, as `torch.nn.BatchNorm2d`
/// (hw = H*W) or `BatchNorm1d` (hw = 1): `y = gamma * (x - mean) / sqrt(var + eps) + beta`,
/// then the activation `act` (fused, as in conv-BN-ReLU blocks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormGeom {
    pub n: usize,
    pub c: usize,
    /// Elements per channel per sample (H*W; 1 for BatchNorm1d).
    pub hw: usize,
    pub eps: f32,
    /// Running statistics: `running = (1 - momentum) * running + momentum * batch`.
    pub momentum: f32,
    pub act: Activation,
}

/// Which of a layer's x and y (a fused conv + BatchNorm's, say; and so dx and dy) travel as the
/// backend's 16-bit channels-last tensors, (N, H, W, C) 16-bit values in the
/// first half of the fp32 window, instead of fp32 (N, C, H, W): the model
/// narrows a tensor whose writer and every reader offer it (ResNet's
/// activations between fused conv + BatchNorm ops, adds + ReLU and the global
/// average pool), so that it is never widened to fp32 and narrowed again (see
/// [`Backend::conv2d_batchnorm_narrow`] and [`Backend::narrow_residuals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NarrowEdges {
    pub x: bool,
    pub y: bool,
}

impl NarrowEdges {
    pub const WIDE: NarrowEdges = NarrowEdges { x: false, y: false };
}

/// An activation fused into [`BatchNormGeom`]. The forward writes only
/// y = act(z) for z = bn(x); backward gets dz = dy act'(z) from y (ReLU: y > 0)
/// or, for GELU, by recomputing z from x and the saved statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    #[default]
    None = 0,
    Relu = 1,
    /// `z Φ(z)`, the exact erf form (`torch.nn.GELU()`).
    Gelu = 2,
}

impl Activation {
    /// The code the GPU kernels take: 0 none, 1 ReLU, 2 GELU.
    pub fn code(self) -> u32 {
        self as u32
    }
}

impl BatchNormGeom {
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values each channel's batch statistics are taken over.
    pub fn per_channel(&self) -> usize {
        self.n * self.hw
    }
}

/// Inverted dropout: each element is zeroed with probability `p`, the others
/// scaled by `1 / (1 - p)`. The draws are [`crate::random`] values of the
/// stream `(seed, step, salt)`, so a step is reproducible on every backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutSpec {
    pub p: f32,
    /// Tells layers apart (each draws from its own stream).
    pub salt: u32,
}

/// Random data augmentation of a batch x (n, c, h, w), one transform per
/// sample (the same for all its channels): an optional horizontal flip, then
/// an affine map (rotation, scale, translation) about the image centre and a
/// smooth elastic displacement, sampled bilinearly (outside the image reads
/// `fill`), then Gaussian noise. Each sample's parameters are drawn from the
/// [`crate::random`] stream `(seed, step, salt)`; see [`AugmentSpec::params`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentSpec {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Rotation uniform in ±`rotate_deg` degrees.
    pub rotate_deg: f32,
    /// Scale uniform in `1 ± scale`.
    pub scale: f32,
    /// Shift uniform in ±`translate` of the width (x) and height (y).
    pub translate: f32,
    /// Largest displacement in pixels of the elastic grid's control points (0: none).
    pub elastic: f32,
    /// Flip horizontally with probability 1/2 (clothes, not digits).
    pub flip: bool,
    /// Standard deviation of the added Gaussian noise (0: none).
    pub noise: f32,
    /// The value read outside the image (the normalized background).
    pub fill: f32,
    pub salt: u32,
}

/// Control points per side of the elastic displacement grid, minus one: the
/// displacement is bilinear between ELASTIC_GRID + 1 points across the image.
pub const ELASTIC_GRID: usize = 3;

/// One sample's transform, as [`AugmentSpec::params`] draws it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentParams {
    pub flip: bool,
    pub angle: f32,
    pub scale: f32,
    pub tx: f32,
    pub ty: f32,
}

impl AugmentSpec {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The transform of sample `i` under stream key `key` (see [`crate::random::stream_key`]):
    /// draws 0..5 of the sample's block of 8 (the elastic grid uses its own stream).
    pub fn params(&self, key: u32, i: usize) -> AugmentParams {
        let u = |j: u32| 2.0 * crate::random::uniform(key, i as u32 * 8 + j) - 1.0;
        AugmentParams {
            flip: self.flip && u(4) < 0.0,
            angle: u(0) * self.rotate_deg.to_radians(),
            scale: 1.0 + u(1) * self.scale,
            tx: u(2) * self.translate * self.w as f32,
            ty: u(3) * self.translate * self.h as f32,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        let ranges_ok =
            ok(self.rotate_deg) && ok(self.translate) && ok(self.elastic) && ok(self.noise) && ok(self.scale) && self.scale < 1.0;
        if !(ranges_ok && self.fill.is_finite()) {
            return Err(Error::shape("augment", "spec", "finite, non-negative ranges and scale < 1", format!("{self:?}")));
        }
        Ok(())
    }
}

/// How [`Backend::optimizer_step`] updates parameters (PyTorch's semantics).
/// Values that change from step to step (the learning rate, Adam's bias
/// corrections) are not here but in a small device buffer, see [`Hyper`], so a
/// recorded step stays valid when they change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UpdateRule {
    /// `g += wd * p; v = momentum * v + g; p -= lr * (nesterov ? g + momentum * v : v)`.
    /// State: the velocity (one value per parameter).
    Sgd { momentum: f32, nesterov: bool, weight_decay: f32 },
    /// Adam (`decoupled: false`: `g += wd * p`) or AdamW (`decoupled: true`:
    /// `p *= 1 - lr * wd`); `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    /// p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)`.
    /// State: m then v (two values per parameter).
    Adam { beta1: f32, beta2: f32, eps: f32, weight_decay: f32, decoupled: bool },
}

impl UpdateRule {
    /// Optimizer state values for `params` parameters.
    pub fn state_len(&self, params: usize) -> usize {
        match self {
            UpdateRule::Sgd { .. } => params,
            UpdateRule::Adam { .. } => 2 * params,
        }
    }
}

/// The per-step values an optimizer step reads from the device:
/// `[lr, 1 - beta1^t, 1 - beta2^t, skip]` (the bias corrections only for Adam).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    /// Nonzero: the step changes nothing, neither parameters nor state (a
    /// loss-scaled step whose gradients overflowed, see [`crate::loss_scale`]).
    pub skip: f32,
}

impl Hyper {
    pub const LEN: usize = 4;
    /// Where `skip` is in the device buffer.
    pub const SKIP: usize = 3;
    pub fn to_array(self) -> [f32; Self::LEN] {
        [self.lr, self.bias_correction1, self.bias_correction2, self.skip]
    }
}

/// Most channels a [`Gather`] normalizes (grayscale 1, RGB 3, RGBA 4).
pub const MAX_CHANNELS: usize = 4;

/// Turns u8 images (N, C, H, W) + labels and a list of sample indices into a
/// normalized f32 batch, per channel:
/// `x[i, c, ..] = (images[idx[i], c, ..] / 255 - mean[c]) / std[c]`, `y[i] = labels[idx[i]]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gather {
    /// Samples in the batch (length of the index window).
    pub n: usize,
    /// Bytes per image (C * H * W, e.g. 784 or 3072).
    pub sample_len: usize,
    /// Channels C (1 to [`MAX_CHANNELS`]); each has `sample_len / channels` pixels.
    pub channels: usize,
    /// Per-channel mean and standard deviation (entries past `channels` unused).
    pub mean: [f32; 4],
    pub std: [f32; 4],
}

impl Gather {
    /// A gather of `n` samples normalized as `info` says.
    pub fn new(n: usize, info: &crate::data::DatasetInfo) -> Self {
        let (mut mean, mut std) = ([0.0; MAX_CHANNELS], [1.0; MAX_CHANNELS]);
        let c = info.channels().min(MAX_CHANNELS);
        mean[..c].copy_from_slice(&info.mean[..c]);
        std[..c].copy_from_slice(&info.std[..c]);
        Gather { n, sample_len: info.shape.iter().product(), channels: info.channels(), mean, std }
    }

    /// Pixels per channel of one image.
    pub fn plane(&self) -> usize {
        self.sample_len / self.channels.max(1)
    }
}

/// How [`Backend::crop_flip`] pads before cropping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Outside the image reads 0 (the mean colour, after normalization).
    Zero,
    /// Mirror at the edge without repeating it (PyTorch's `reflect`): -1 reads 1.
    #[default]
    Reflect,
}

/// Which samples [`Backend::crop_flip`] mirrors left to right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flip {
    /// No flips.
    #[default]
    Off,
    /// Each sample with probability 1/2 (its draw 2, as today).
    Random,
    /// Every sample of the batch on odd epochs, where epoch = step / steps_per_epoch and step = rng[1]
    /// (the step id the trainer copies to the device each step). With a dataset pre-flipped at random
    /// once, each image then alternates between its two mirror images from epoch to epoch
    /// (airbench's derandomized flips).
    Alternate { steps_per_epoch: u32 },
    /// Every sample (test-time augmentation's mirror view).
    Always,
}

impl Flip {
    /// Whether a sample is flipped at step `step`, given its uniform draw `u` (used by `Random` only).
    pub fn applies(self, step: u32, u: f32) -> bool {
        match self {
            Flip::Off => false,
            Flip::Random => u < 0.5,
            // (validate refuses 0 steps per epoch; max(1) keeps an unchecked spec from dividing by 0.)
            Flip::Alternate { steps_per_epoch } => (step / steps_per_epoch.max(1)) % 2 == 1,
            Flip::Always => true,
        }
    }

    /// The mode as the GPU kernels take it: [mode (0 off, 1 random, 2 alternate, 3 always), steps per epoch].
    pub fn kernel_args(self) -> [u32; 2] {
        match self {
            Flip::Off => [0, 1],
            Flip::Random => [1, 1],
            Flip::Alternate { steps_per_epoch } => [2, steps_per_epoch.max(1)],
            Flip::Always => [3, 1],
        }
    }
}

/// Random crops with padding, horizontal flips and cutout of a batch
/// x (n, c, h, w) -> y (n, c, h, w), one draw per sample (the same for all its
/// channels) from the [`crate::random`] stream `(seed, step, salt)`; see
/// [`CropSpec::params`]. Output pixel (r, s) of sample i reads input
/// `(r + dy - pad, s' + dx - pad)` with `s' = w - 1 - s` when flipped, padded
/// as `padding` says; then pixels in the cutout square are set to 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropSpec {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Largest shift in pixels (the crop is taken from the image padded by this much).
    pub pad: usize,
    pub padding: Padding,
    /// Which samples are flipped horizontally.
    pub flip: Flip,
    /// Offsets (dy, dx) into the padded image, both in 0..=2*pad, that every sample
    /// uses instead of its random draw (deterministic test-time translations); `None`: random.
    /// Cutout must be 0 with them.
    pub fixed: Option<(usize, usize)>,
    /// Side of the square zeroed at a random centre (0: no cutout); clipped at the edges.
    pub cutout: usize,
    pub salt: u32,
}

/// One sample's draw, as [`CropSpec::params`] makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropParams {
    /// Offsets into the padded image, 0..=2*pad.
    pub dy: usize,
    pub dx: usize,
    pub flip: bool,
    /// The cutout square's first row and column (may be negative: clipped), when cutout > 0.
    pub cut_y: i64,
    pub cut_x: i64,
}

impl CropSpec {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i`'s draw under stream key `key` at step `step` (rng[1], which
    /// [`Flip::Alternate`] reads): draws 0..5 of its block of 8 (the offsets
    /// are `fixed` instead where given). An integer in 0..m is
    /// `min(floor(u * m), m - 1)` of a uniform u (exact in f32 on every device).
    pub fn params(&self, key: u32, step: u32, i: usize) -> CropParams {
        let u = |j: u32| crate::random::uniform(key, i as u32 * 8 + j);
        let int = |j: u32, m: usize| ((u(j) * m as f32) as usize).min(m.saturating_sub(1));
        let shifts = 2 * self.pad + 1;
        let (dy, dx) = self.fixed.unwrap_or_else(|| (int(0, shifts), int(1, shifts)));
        CropParams {
            dy,
            dx,
            flip: self.flip.applies(step, u(2)),
            cut_y: int(3, self.h) as i64 - (self.cutout / 2) as i64,
            cut_x: int(4, self.w) as i64 - (self.cutout / 2) as i64,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some((dy, dx)) = self.fixed {
            if dy > 2 * self.pad || dx > 2 * self.pad || self.cutout > 0 {
                return Err(Error::shape(
                    "crop_flip",
                    "fixed offsets",
                    format!("both in 0..={} (2 * pad) and no cutout", 2 * self.pad),
                    format!("({dy}, {dx}) with cutout {}", self.cutout),
                ));
            }
        }
        if self.flip == (Flip::Alternate { steps_per_epoch: 0 }) {
            return Err(Error::shape("crop_flip", "alternate flips' steps per epoch", ">= 1", 0));
        }
        if self.padding == Padding::Reflect && self.n > 0 && (self.pad >= self.h || self.pad >= self.w) {
            return Err(Error::shape("crop_flip", "reflect padding", format!("< the image size {}x{}", self.h, self.w), self.pad));
        }
        if self.pad > 64 || self.cutout > self.h.max(self.w) {
            return Err(Error::shape("crop_flip", "pad and cutout", "pad <= 64 and cutout <= the image side", format!("{self:?}")));
        }
        Ok(())
    }
}

/// The number format convolutions and matrix products compute in. Parameters,
/// optimizer state, BatchNorm statistics and the loss stay fp32 whatever this is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE fp32 multiplies and adds: the reference.
    #[default]
    Fp32,
    /// fp32 data, tensor-core products with 10-bit mantissas (NVIDIA TF32).
    Tf32,
    /// Inputs rounded to bfloat16 (8-bit mantissa), fp32 accumulation.
    Bf16,
    /// Inputs rounded to IEEE fp16 (10-bit mantissa, 5-bit exponent), fp32
    /// accumulation; gradients need loss scaling to stay in range.
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 4] = [Precision::Fp32, Precision::Tf32, Precision::Bf16, Precision::Fp16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The relative error of one rounding of an input (half an ulp).
    pub fn unit_roundoff(self) -> f32 {
        match self {
            Precision::Fp32 => f32::EPSILON / 2.0,
            Precision::Tf32 | Precision::Fp16 => 2f32.powi(-11),
            Precision::Bf16 => 2f32.powi(-8),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::config("precision", format!("`{s}` is not one of fp32, tf32, bf16, fp16")))
    }
}

// ---- dynamic loss scaling (fp16 mixed precision) ------------------------------

/// The device state of dynamic loss scaling, [`LossScaleState::LEN`] f32
/// values (see [`crate::loss_scale`]): the scale, the finite steps since it
/// last changed, whether this step found a non-finite gradient (0 or 1), and
/// the steps skipped so far. On the device so a recorded step stays valid.
pub struct LossScaleState;

impl LossScaleState {
    pub const SCALE: usize = 0;
    pub const GOOD_STEPS: usize = 1;
    pub const FOUND_INF: usize = 2;
    pub const SKIPPED: usize = 3;
    pub const LEN: usize = 4;
}

/// How [`Backend::loss_scale_update`] moves the scale (PyTorch's GradScaler):
/// a step that found a non-finite gradient multiplies it by `backoff`; after
/// `growth_interval` finite steps in a row it is multiplied by `growth` (when
/// that stays finite).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleUpdate {
    pub growth: f32,
    pub backoff: f32,
    pub growth_interval: u32,
}

/// The longest growth interval: steps are counted in an f32 (exact up to 2^24).
pub const MAX_GROWTH_INTERVAL: u32 = 1 << 24;

impl ScaleUpdate {
    pub fn validate(&self) -> Result<()> {
        let ok = self.growth.is_finite()
            && self.growth > 1.0
            && self.backoff > 0.0
            && self.backoff < 1.0
            && (1..=MAX_GROWTH_INTERVAL).contains(&self.growth_interval);
        if !ok {
            return Err(Error::shape(
                "loss_scale_update",
                "spec",
                format!("growth > 1 (finite), backoff in (0, 1), growth interval in 1..={MAX_GROWTH_INTERVAL}"),
                format!("{self:?}"),
            ));
        }
        Ok(())
    }
}

// ---- end of dynamic loss scaling ---------------------------------------------

/// The contract every device implements. See the module docs.
pub trait Backend: Send + Sync + Sized + 'static {
    type Buf<T: Elem>: Storage + Send + Sync;

    /// Human-readable device name ("cpu (2 threads)", "cuda:0 NVIDIA H100 ...").
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------
    /// A zero-filled buffer of `len` elements.
    fn alloc<T: Elem>(&self, len: usize) -> Result<Self::Buf<T>>;
    fn upload<T: Elem>(&self, host: &[T]) -> Result<Self::Buf<T>>;
    /// Copies `host` into the window (lengths must match).
    fn write<T: Elem>(&self, dst: ViewMut<'_, Self, T>, host: &[T]) -> Result<()>;
    /// Copies the window to the host; waits for all queued work.
    fn download<T: Elem>(&self, src: View<'_, Self, T>) -> Result<Vec<T>>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    fn fill(&self, dst: ViewMut<'_, Self, f32>, value: f32) -> Result<()>;
    fn copy<T: Elem>(&self, src: View<'_, Self, T>, dst: ViewMut<'_, Self, T>) -> Result<()>;

    // ---- precision ------------------------------------------------------------
    /// The precisions [`Backend::set_precision`] accepts (fp32 always).
    fn precisions(&self) -> Vec<Precision> {
        vec![Precision::Fp32]
    }
    /// Sets the precision of convolutions and matrix products from now on.
    fn set_precision(&self, precision: Precision) -> Result<()> {
        match precision {
            Precision::Fp32 => Ok(()),
            other => Err(Error::config("precision", format!("{other} is not available on {}: it computes in fp32 only", self.name()))),
        }
    }
    fn precision(&self) -> Precision {
        Precision::Fp32
    }

    // ---- graphs, timing, memory ---------------------------------------------
    /// A recorded sequence of ops that [`Backend::replay`] runs again (a CUDA graph).
    type Graph;
    /// Starts recording ops instead of running them. Returns `false` (and
    /// records nothing) where the backend has no graphs: callers then just run
    /// ops. Nothing may wait for the device while recording.
    fn begin_capture(&self) -> Result<bool> {
        Ok(false)
    }
    /// Ends a recording started by [`Backend::begin_capture`].
    fn end_capture(&self) -> Result<Self::Graph> {
        Err(Error::Device { backend: "backend", msg: "graph capture is not supported".into() })
    }
    /// Enqueues a recorded graph. Buffers it uses must still be alive.
    fn replay(&self, _graph: &Self::Graph) -> Result<()> {
        Err(Error::Device { backend: "backend", msg: "graph capture is not supported".into() })
    }
    /// A point in the stream of ops, for timing (a CUDA event, or an instant on the CPU).
    type Mark;
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds between two marks; waits until `end` is reached.
    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64>;
    /// The most memory this process has held on the device: a label and bytes
    /// (device bytes allocated on a GPU, peak resident memory on the CPU).
    fn peak_memory(&self) -> Option<(&'static str, u64)>;

    // ---- dense --------------------------------------------------------------
    /// See [`Gemm`].
    fn gemm(
        &self,
        spec: &Gemm,
        a: View<'_, Self, f32>,
        b: View<'_, Self, f32>,
        bias: Option<View<'_, Self, f32>>,
        c: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// Column sums: `db[j] = sum_i dy[i, j]` for dy (rows, cols).
    fn bias_grad(&self, rows: usize, cols: usize, dy: View<'_, Self, f32>, db: ViewMut<'_, Self, f32>) -> Result<()>;

    // ---- activations --------------------------------------------------------
    fn relu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// `dx = dy * (y > 0)` (uses the forward output, so it can run in place of x).
    fn relu_backward(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()>;
    /// y = GELU(x) = x * Φ(x), the exact erf form (`torch.nn.GELU()`); x, y: (len), must not overlap.
    fn gelu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// dx = dy * GELU'(x), GELU'(x) = Φ(x) + x φ(x); x, dy, dx: (len).
    fn gelu_backward(&self, x: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()>;

    // ---- elementwise (residual connections, gradient sums) -----------------
    /// `y = a + b` (all the same length).
    fn add(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// `y = max(a + b, 0)`: a residual connection and the ReLU after it, in one pass.
    fn add_relu(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// `y += x` (the same length): sums gradients where an output feeds several nodes.
    fn add_assign(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// Whether the three ops below and the narrow global average pool take
    /// narrow tensors at the current precision, so that a residual network's
    /// activations between fused ops that offer narrow edges stay narrow (see
    /// [`NarrowEdges`]). The default: no.
    fn narrow_residuals(&self) -> bool {
        false
    }
    /// [`Backend::add_relu`] on narrow tensors: each window of `len` floats holds
    /// `len` 16-bit values in its first half, in any layout (all three the same).
    fn add_relu_narrow(&self, _a: View<'_, Self, f32>, _b: View<'_, Self, f32>, _y: ViewMut<'_, Self, f32>) -> Result<()> {
        Err(checks::no_narrow("add_relu"))
    }
    /// [`Backend::relu_backward`] on narrow tensors, as [`Backend::add_relu_narrow`]'s.
    fn relu_backward_narrow(&self, _y: View<'_, Self, f32>, _dy: View<'_, Self, f32>, _dx: ViewMut<'_, Self, f32>) -> Result<()> {
        Err(checks::no_narrow("relu_backward"))
    }
    /// [`Backend::add_assign`] on narrow tensors (summed in fp32, rounded once), as [`Backend::add_relu_narrow`]'s.
    fn add_assign_narrow(&self, _x: View<'_, Self, f32>, _y: ViewMut<'_, Self, f32>) -> Result<()> {
        Err(checks::no_narrow("add_assign"))
    }
    /// y = a * x + b * y, elementwise; x, y: (len). (Weight averages, test-time-augmentation sums.)
    /// As in BLAS, y is not read when b == 0 (whatever it held, NaN included, is overwritten).
    fn axpby(&self, a: f32, x: View<'_, Self, f32>, b: f32, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// `x *= target / (||x|| + eps)` in place, the norm Euclidean, summed in
    /// f64 (Muon's normalizations, see [`crate::optim::Muon`]); x is left as it
    /// is where `||x|| + eps` is 0.
    fn scale_to_norm(&self, x: ViewMut<'_, Self, f32>, target: f32, eps: f32) -> Result<()>;

    // ---- convolution and pooling -------------------------------------------
    fn conv2d_forward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// Overwrites `dparams` = [dweight (C_out, C_in, K, K) | dbias (C_out)] (one
    /// window, as the parameter store lays them out) and, when given, dx.
    fn conv2d_backward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dparams: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// [`Backend::conv2d_backward`] of a conv without a bias: overwrites `dweight`
    /// (C_out, C_in, K, K) only. `scratch` (C_out C_in K K + C_out) is room for
    /// [dweight | dbias], which the default computes there and copies out of;
    /// backends that can skip the bias sums override it.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_no_bias(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dweight: ViewMut<'_, Self, f32>,
        scratch: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        conv2d_backward_through_scratch(self, g, x, w, dy, dx, dweight, scratch)
    }
    /// Whether [`Backend::conv2d_forward_keep`] keeps anything for `g` at the
    /// current precision (layers allocate its room only then).
    fn conv2d_keeps(&self, _g: &Conv2dGeom) -> bool {
        false
    }
    /// [`Backend::conv2d_forward`] that may also leave in `keep` (room for
    /// `g.x_len().div_ceil(2)` floats) what its backward would otherwise compute
    /// again from x (CUDA at 16 bits: x rounded and laid out channels-last),
    /// for a [`Backend::conv2d_backward_kept`] at the same precision. The default ignores it.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward_keep(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        _keep: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.conv2d_forward(g, x, w, bias, y)
    }
    /// The backward of a [`Backend::conv2d_forward_keep`] of the same x, given
    /// its `keep`: [`Backend::conv2d_backward`] or [`Backend::conv2d_backward_no_bias`]
    /// as `grads` says.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_kept(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        _kept: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        grads: ConvGrads<'_, Self>,
    ) -> Result<()> {
        match grads {
            ConvGrads::Bias(dparams) => self.conv2d_backward(g, x, w, dy, dx, dparams),
            ConvGrads::NoBias { dweight, scratch } => self.conv2d_backward_no_bias(g, x, w, dy, dx, dweight, scratch),
        }
    }
    /// `argmax[o]` is the flat index into x of the maximum of output o
    /// ([`NO_ARGMAX`] where a fused ReLU clamped it).
    fn maxpool2d_forward(
        &self,
        g: &Pool2dGeom,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        argmax: ViewMut<'_, Self, u32>,
    ) -> Result<()>;
    /// `dx = 0; dx[argmax[o]] += dy[o]` (skipping [`NO_ARGMAX`]).
    fn maxpool2d_backward(
        &self,
        g: &Pool2dGeom,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// A convolution whose output only a max pool over non-overlapping windows
    /// reads (`pool.k == pool.stride`, no padding, `pool` over the conv's output):
    /// `y = maxpool(conv(x, w) + bias)`, `argmax` as [`Backend::maxpool2d_forward`]'s.
    /// `stash` (`g.y_len()` floats) holds what backward needs: backends that
    /// can keep the conv's output narrower than fp32 (CUDA's 16-bit
    /// channels-last) never write it in fp32 (see [`conv2d_maxpool_forward_unfused`],
    /// the default).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_maxpool_forward(
        &self,
        g: &Conv2dGeom,
        pool: &Pool2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        argmax: ViewMut<'_, Self, u32>,
        stash: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        conv2d_maxpool_forward_unfused(self, g, pool, x, w, bias, y, argmax, stash)
    }
    /// The gradients of [`Backend::conv2d_maxpool_forward`] (its `argmax` and
    /// `stash`, which this overwrites) for a fixed bias: dweight and dx (when
    /// given), `scratch` as [`Backend::conv2d_backward_no_bias`]'s.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_maxpool_backward(
        &self,
        g: &Conv2dGeom,
        pool: &Pool2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        stash: ViewMut<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dweight: ViewMut<'_, Self, f32>,
        scratch: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        conv2d_maxpool_backward_unfused(self, g, pool, x, w, dy, argmax, stash, dx, dweight, scratch)
    }

    /// A bias-free convolution whose output only a 2-D BatchNorm over it reads:
    /// `y = batchnorm(conv(x, w) + bias)`, the BatchNorm as [`Backend::batchnorm_forward`]
    /// (`params` [gamma | beta], `running`, `saved`), `keep` as [`Backend::conv2d_forward_keep`]'s.
    /// `stash` (`g.y_len()` floats) holds the conv's output for backward:
    /// backends that can keep it narrower than fp32 (CUDA's 16-bit channels-last)
    /// normalize it from there and never write it in fp32 (see
    /// [`conv2d_batchnorm_forward_unfused`], the default).
    /// With `edges`, x and y are narrow (only sides [`Backend::conv2d_batchnorm_narrow`] offers).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_batchnorm_forward(
        &self,
        geoms: (&Conv2dGeom, &BatchNormGeom),
        edges: NarrowEdges,
        training: bool,
        (x, w, bias): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        keep: Option<ViewMut<'_, Self, f32>>,
        bn: (View<'_, Self, f32>, ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>),
        stash: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::wide(geoms.0, edges)?;
        conv2d_batchnorm_forward_unfused(self, geoms, training, (x, w, bias), keep, bn, stash, y)
    }
    /// The gradients of a training [`Backend::conv2d_batchnorm_forward`] of the
    /// same x and bias (its `kept` and `stash`; `y` its output), for a fixed
    /// bias: overwrites the BatchNorm's `dparams` [dgamma | dbeta], `dweight`
    /// and dx (when given).
    /// `dstash` (`g.y_len()` floats) is room for the conv's output gradient,
    /// `scratch` as [`Backend::conv2d_backward_no_bias`]'s. With `add_dx`, dx
    /// is added into its window instead (only where [`Backend::conv2d_batchnorm_adds_dx`] says so).
    /// `edges` as the forward's: a narrow x is its own `kept`, dx and dy are narrow as x and y.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_batchnorm_backward(
        &self,
        geoms: (&Conv2dGeom, &BatchNormGeom),
        edges: NarrowEdges,
        (x, kept, w): KeptConvInputs<'_, Self>,
        (stash, y, dy): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        (bias, params, saved): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        dstash: ViewMut<'_, Self, f32>,
        dx: (Option<ViewMut<'_, Self, f32>>, bool),
        grads: (ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>),
    ) -> Result<()> {
        checks::wide(geoms.0, edges)?;
        conv2d_batchnorm_backward_unfused(self, geoms, (x, kept, w), (stash, y, dy), (bias, params, saved), dstash, dx, grads)
    }
    /// Whether [`Backend::conv2d_batchnorm_backward`] can add dx into its
    /// window for `g` with this stash (a tensor with several readers, whose
    /// gradient is a sum). The default: never (the model sums through a scratch buffer).
    fn conv2d_batchnorm_adds_dx(&self, _g: &Conv2dGeom, _stash: View<'_, Self, f32>) -> bool {
        false
    }
    /// Which sides of a fused conv + BatchNorm over `g` (any batch size) can be
    /// narrow at the current precision (see [`NarrowEdges`]). The default: neither.
    fn conv2d_batchnorm_narrow(&self, _g: &Conv2dGeom) -> NarrowEdges {
        NarrowEdges::WIDE
    }

    /// The mean of each channel of a narrow x, (N, HW, C) 16-bit (see
    /// [`Backend::narrow_residuals`]) -> y: (N, C) fp32. The default: refused.
    fn global_avgpool_narrow_forward(
        &self,
        _nchw: (usize, usize, usize),
        _x: View<'_, Self, f32>,
        _y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        Err(checks::no_narrow("global_avgpool"))
    }
    /// Its gradient: dy (N, C) fp32 -> dx narrow (N, HW, C) = dy / HW, written.
    fn global_avgpool_narrow_backward(
        &self,
        _nchw: (usize, usize, usize),
        _dy: View<'_, Self, f32>,
        _dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        Err(checks::no_narrow("global_avgpool_backward"))
    }

    /// Average pooling (padding counts as 0 and the divisor is always k*k, as
    /// PyTorch's default `count_include_pad=True`). `g.relu` must be false.
    fn avgpool2d_forward(&self, g: &Pool2dGeom, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    fn avgpool2d_backward(&self, g: &Pool2dGeom, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()>;

    // ---- normalization and regularization ----------------------------------
    /// See [`BatchNormGeom`]; `params` = [gamma (C) | beta (C)], `running` =
    /// [mean (C) | var (C)]. Training: normalizes with the batch's mean and
    /// biased variance, writes `saved` = [mean (C) | 1/sqrt(var + eps) (C)] for
    /// backward and moves `running` towards the batch (unbiased variance), as
    /// PyTorch does. Not training: normalizes with `running`; `saved` is untouched.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(
        &self,
        g: &BatchNormGeom,
        training: bool,
        x: View<'_, Self, f32>,
        params: View<'_, Self, f32>,
        running: ViewMut<'_, Self, f32>,
        saved: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// Gradients of a training-mode [`Backend::batchnorm_forward`] whose output
    /// was `y`: overwrites `dparams` = [dgamma | dbeta] and, when given, dx.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &self,
        g: &BatchNormGeom,
        x: View<'_, Self, f32>,
        y: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        params: View<'_, Self, f32>,
        saved: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dparams: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// See [`DropoutSpec`]; `rng` = [seed, step]. Writes `mask` (0 or 1/(1-p)) and `y = x * mask`.
    fn dropout_forward(
        &self,
        spec: &DropoutSpec,
        rng: View<'_, Self, u32>,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        mask: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// `dx = dy * mask`.
    fn dropout_backward(&self, mask: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()>;
    /// See [`AugmentSpec`]; `rng` = [seed, step]; x and y are (n, c, h, w) and must not overlap.
    fn augment(&self, spec: &AugmentSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;
    /// See [`CropSpec`]; `rng` = [seed, step]; x and y are (n, c, h, w) and must not overlap.
    fn crop_flip(&self, spec: &CropSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()>;

    // ---- loss, optimizer, data ---------------------------------------------
    /// Fused softmax + cross-entropy over logits (n, classes), with label
    /// smoothing `smoothing` (PyTorch's `label_smoothing`: the target is
    /// `(1 - smoothing) * onehot + smoothing / classes`; 0 for none).
    /// Adds the summed loss to `stats[0]` and the number of correct argmax
    /// predictions to `stats[1]` (device-side accumulators, read once per epoch).
    /// When `dlogits` is given it receives `grad_scale * (softmax - target)`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &self,
        n: usize,
        classes: usize,
        smoothing: f32,
        logits: View<'_, Self, f32>,
        labels: View<'_, Self, u32>,
        grad_scale: f32,
        dlogits: Option<ViewMut<'_, Self, f32>>,
        stats: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// One optimizer step over every parameter at once (see [`UpdateRule`]);
    /// `hyper` holds [`Hyper::to_array`] on the device.
    fn optimizer_step(
        &self,
        rule: &UpdateRule,
        hyper: View<'_, Self, f32>,
        params: ViewMut<'_, Self, f32>,
        grads: View<'_, Self, f32>,
        state: ViewMut<'_, Self, f32>,
    ) -> Result<()>;
    /// See [`Gather`].
    #[allow(clippy::too_many_arguments)]
    fn gather_batch(
        &self,
        spec: &Gather,
        images: View<'_, Self, u8>,
        labels: View<'_, Self, u8>,
        indices: View<'_, Self, u32>,
        x: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, u32>,
    ) -> Result<()>;

    // ---- dynamic loss scaling (see crate::loss_scale; `state` as [`LossScaleState`]) ----
    /// `x *= scale`: the loss gradient, scaled before backward.
    fn loss_scale_dlogits(&self, state: View<'_, Self, f32>, x: ViewMut<'_, Self, f32>) -> Result<()>;
    /// `grads *= 1 / scale` (the reciprocal rounded to f32 once); sets
    /// `found_inf` to 1 if any unscaled value is NaN or infinite, and leaves
    /// it as it was otherwise.
    fn loss_scale_unscale(&self, state: ViewMut<'_, Self, f32>, grads: ViewMut<'_, Self, f32>) -> Result<()>;
    /// The end of a step (see [`ScaleUpdate`]): backs off and counts a skipped
    /// step if `found_inf`, else counts a finite step and grows the scale after
    /// `growth_interval` of them; then clears `found_inf` for the next step.
    fn loss_scale_update(&self, spec: &ScaleUpdate, state: ViewMut<'_, Self, f32>) -> Result<()>;
}

/// [`Backend::conv2d_backward_no_bias`] by way of [`Backend::conv2d_backward`]:
/// [dweight | dbias] computed in `scratch`, dweight copied out (the default, and
/// the fallback of backends that override it for some shapes only).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_through_scratch<B: Backend>(
    backend: &B,
    g: &Conv2dGeom,
    x: View<'_, B, f32>,
    w: View<'_, B, f32>,
    dy: View<'_, B, f32>,
    dx: Option<ViewMut<'_, B, f32>>,
    dweight: ViewMut<'_, B, f32>,
    mut scratch: ViewMut<'_, B, f32>,
) -> Result<()> {
    crate::error::check_len("conv2d_backward_no_bias", "dweight", g.w_len(), dweight.len)?;
    backend.conv2d_backward(g, x, w, dy, dx, scratch.reborrow())?;
    backend.copy(scratch.as_view().sub(0, g.w_len())?, dweight)
}

/// [`Backend::conv2d_maxpool_forward`] as its two ops, the conv's output in
/// `stash` (the default, and the fallback of backends that fuse some shapes only).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_maxpool_forward_unfused<B: Backend>(
    backend: &B,
    g: &Conv2dGeom,
    pool: &Pool2dGeom,
    x: View<'_, B, f32>,
    w: View<'_, B, f32>,
    bias: View<'_, B, f32>,
    y: ViewMut<'_, B, f32>,
    argmax: ViewMut<'_, B, u32>,
    mut stash: ViewMut<'_, B, f32>,
) -> Result<()> {
    checks::conv2d_maxpool(g, pool, stash.len)?;
    backend.conv2d_forward(g, x, w, bias, stash.reborrow())?;
    backend.maxpool2d_forward(pool, stash.as_view(), y, argmax)
}

/// [`Backend::conv2d_maxpool_backward`] as its two ops: the pool's dx in
/// `stash`, then the bias-free conv's backward from it.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_maxpool_backward_unfused<B: Backend>(
    backend: &B,
    g: &Conv2dGeom,
    pool: &Pool2dGeom,
    x: View<'_, B, f32>,
    w: View<'_, B, f32>,
    dy: View<'_, B, f32>,
    argmax: View<'_, B, u32>,
    mut stash: ViewMut<'_, B, f32>,
    dx: Option<ViewMut<'_, B, f32>>,
    dweight: ViewMut<'_, B, f32>,
    scratch: ViewMut<'_, B, f32>,
) -> Result<()> {
    checks::conv2d_maxpool(g, pool, stash.len)?;
    backend.maxpool2d_backward(pool, dy, argmax, stash.reborrow())?;
    backend.conv2d_backward_no_bias(g, x, w, stash.as_view(), dx, dweight, scratch)
}

/// [`Backend::conv2d_batchnorm_forward`] as its two ops, the conv's output in
/// `stash` (the default, and the fallback of backends that fuse some shapes only).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batchnorm_forward_unfused<B: Backend>(
    backend: &B,
    (g, bn): (&Conv2dGeom, &BatchNormGeom),
    training: bool,
    (x, w, bias): (View<'_, B, f32>, View<'_, B, f32>, View<'_, B, f32>),
    keep: Option<ViewMut<'_, B, f32>>,
    (params, running, saved): (View<'_, B, f32>, ViewMut<'_, B, f32>, ViewMut<'_, B, f32>),
    mut stash: ViewMut<'_, B, f32>,
    y: ViewMut<'_, B, f32>,
) -> Result<()> {
    checks::conv2d_batchnorm(g, bn, stash.len)?;
    match keep {
        Some(keep) => backend.conv2d_forward_keep(g, x, w, bias, stash.reborrow(), keep)?,
        None => backend.conv2d_forward(g, x, w, bias, stash.reborrow())?,
    }
    backend.batchnorm_forward(bn, training, stash.as_view(), params, running, saved, y)
}

/// [`Backend::conv2d_batchnorm_backward`] as its two ops: the BatchNorm's dx
/// in `dstash`, then the bias-free conv's backward from it (the stash holds
/// the conv's output with its bias, so the bias is not read again).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batchnorm_backward_unfused<B: Backend>(
    backend: &B,
    (g, bn): (&Conv2dGeom, &BatchNormGeom),
    (x, kept, w): KeptConvInputs<'_, B>,
    (stash, y, dy): (View<'_, B, f32>, View<'_, B, f32>, View<'_, B, f32>),
    (_bias, params, saved): (View<'_, B, f32>, View<'_, B, f32>, View<'_, B, f32>),
    mut dstash: ViewMut<'_, B, f32>,
    (dx, add_dx): (Option<ViewMut<'_, B, f32>>, bool),
    (dweight, scratch, dparams): (ViewMut<'_, B, f32>, ViewMut<'_, B, f32>, ViewMut<'_, B, f32>),
) -> Result<()> {
    checks::conv2d_batchnorm(g, bn, stash.len)?;
    // (An empty batch has nothing to add.)
    if add_dx && g.n > 0 {
        return Err(Error::shape("conv2d_batchnorm_backward", "add_dx", "false here (see conv2d_batchnorm_adds_dx)", "true"));
    }
    check_len("conv2d_batchnorm_backward", "dstash", g.y_len(), dstash.len)?;
    backend.batchnorm_backward(bn, stash, y, dy, params, saved, Some(dstash.reborrow()), dparams)?;
    match kept {
        Some(kept) => backend.conv2d_backward_kept(g, x, kept, w, dstash.as_view(), dx, ConvGrads::NoBias { dweight, scratch }),
        None => backend.conv2d_backward_no_bias(g, x, w, dstash.as_view(), dx, dweight, scratch),
    }
}

/// Argument checks shared by every backend: each op validates its geometry
/// and the length of every window the same way, so a mismatch is the same
/// [`Error::Shape`] on every device.
pub mod checks {
    use super::{AugmentSpec, BatchNormGeom, Conv2dGeom, CropSpec, DropoutSpec, Gather, NarrowEdges, Pool2dGeom, MAX_CHANNELS};
    use crate::error::{check_len, Error, Result};

    pub fn conv2d_forward(g: &Conv2dGeom, x: usize, w: usize, bias: usize, y: usize) -> Result<()> {
        g.validate()?;
        check_len("conv2d_forward", "x", g.x_len(), x)?;
        check_len("conv2d_forward", "weight", g.w_len(), w)?;
        check_len("conv2d_forward", "bias", g.c_out, bias)?;
        check_len("conv2d_forward", "y", g.y_len(), y)
    }

    pub fn conv2d_backward(g: &Conv2dGeom, x: usize, w: usize, dy: usize, dx: Option<usize>, dparams: usize) -> Result<()> {
        g.validate()?;
        check_len("conv2d_backward", "x", g.x_len(), x)?;
        check_len("conv2d_backward", "weight", g.w_len(), w)?;
        check_len("conv2d_backward", "dy", g.y_len(), dy)?;
        check_len("conv2d_backward", "dweight+dbias", g.w_len() + g.c_out, dparams)?;
        dx.map_or(Ok(()), |dx| check_len("conv2d_backward", "dx", g.x_len(), dx))
    }

    /// A fused conv + max pool: the pool reads exactly the conv's output, in
    /// non-overlapping windows; `stash` holds the conv's output.
    pub fn conv2d_maxpool(g: &Conv2dGeom, pool: &Pool2dGeom, stash: usize) -> Result<()> {
        g.validate()?;
        pool.validate()?;
        let reads = (pool.n, pool.c, pool.h, pool.w) == (g.n, g.c_out, g.out_h(), g.out_w());
        if !reads || pool.k != pool.stride || pool.pad != 0 {
            return Err(Error::shape(
                "conv2d_maxpool",
                "pool geometry",
                format!("non-overlapping windows (k == stride, no padding) over the conv's output ({g:?})"),
                format!("{pool:?}"),
            ));
        }
        check_len("conv2d_maxpool", "stash", g.y_len(), stash)
    }

    /// The error of an op asked for narrow tensors on a backend or precision without them.
    pub fn no_narrow(op: &'static str) -> Error {
        Error::shape(op, "narrow tensors", "none on this backend and precision (see Backend::narrow_residuals)", "narrow")
    }

    /// A fused conv + 2-D BatchNorm: the BatchNorm reads exactly the conv's
    /// output; `stash` holds that output.
    /// The unfused path takes fp32 tensors only (an empty batch has no layout).
    pub fn wide(g: &Conv2dGeom, edges: NarrowEdges) -> Result<()> {
        if g.n > 0 && edges != NarrowEdges::WIDE {
            return Err(Error::shape("conv2d_batchnorm", "narrow edges", "none on this backend and precision", format!("{edges:?}")));
        }
        Ok(())
    }

    pub fn conv2d_batchnorm(g: &Conv2dGeom, bn: &BatchNormGeom, stash: usize) -> Result<()> {
        g.validate()?;
        if (bn.n, bn.c, bn.hw) != (g.n, g.c_out, g.out_h() * g.out_w()) {
            return Err(Error::shape("conv2d_batchnorm", "batch-norm geometry", format!("the conv's output ({g:?})"), format!("{bn:?}")));
        }
        check_len("conv2d_batchnorm", "stash", g.y_len(), stash)
    }

    pub fn maxpool2d_forward(g: &Pool2dGeom, x: usize, y: usize, argmax: usize) -> Result<()> {
        g.validate()?;
        check_len("maxpool2d_forward", "x", g.x_len(), x)?;
        check_len("maxpool2d_forward", "y", g.y_len(), y)?;
        check_len("maxpool2d_forward", "argmax", g.y_len(), argmax)
    }

    pub fn maxpool2d_backward(g: &Pool2dGeom, dy: usize, argmax: usize, dx: usize) -> Result<()> {
        g.validate()?;
        check_len("maxpool2d_backward", "dy", g.y_len(), dy)?;
        check_len("maxpool2d_backward", "argmax", g.y_len(), argmax)?;
        check_len("maxpool2d_backward", "dx", g.x_len(), dx)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn softmax_cross_entropy(
        n: usize,
        classes: usize,
        smoothing: f32,
        logits: usize,
        labels: usize,
        dlogits: Option<usize>,
        stats: usize,
    ) -> Result<()> {
        if classes == 0 {
            return Err(Error::shape("softmax_cross_entropy", "classes", ">= 1", 0));
        }
        if !(0.0..1.0).contains(&smoothing) {
            return Err(Error::shape("softmax_cross_entropy", "label smoothing", "in [0, 1)", smoothing));
        }
        check_len("softmax_cross_entropy", "logits", n * classes, logits)?;
        check_len("softmax_cross_entropy", "labels", n, labels)?;
        check_len("softmax_cross_entropy", "stats", 2, stats)?;
        dlogits.map_or(Ok(()), |d| check_len("softmax_cross_entropy", "dlogits", n * classes, d))
    }

    pub fn optimizer_step(rule: &super::UpdateRule, hyper: usize, params: usize, grads: usize, state: usize) -> Result<()> {
        check_len("optimizer_step", "hyper", super::Hyper::LEN, hyper)?;
        check_len("optimizer_step", "grads", params, grads)?;
        check_len("optimizer_step", "state", rule.state_len(params), state)
    }

    pub fn gather_batch(spec: &Gather, images: usize, labels: usize, indices: usize, x: usize, y: usize) -> Result<()> {
        if spec.channels == 0 || spec.channels > MAX_CHANNELS || !spec.sample_len.is_multiple_of(spec.channels) {
            return Err(Error::shape(
                "gather_batch",
                "channels",
                format!("1 to {MAX_CHANNELS}, dividing the sample length {}", spec.sample_len),
                spec.channels,
            ));
        }
        if spec.std[..spec.channels].iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(Error::shape("gather_batch", "std", "> 0 for every channel", format!("{:?}", spec.std)));
        }
        check_len("gather_batch", "images", labels * spec.sample_len, images)?;
        check_len("gather_batch", "indices", spec.n, indices)?;
        check_len("gather_batch", "x", spec.n * spec.sample_len, x)?;
        check_len("gather_batch", "y", spec.n, y)
    }

    pub fn avgpool2d(op: &'static str, g: &Pool2dGeom, x: usize, y: usize) -> Result<()> {
        g.validate_avg()?;
        check_len(op, "x", g.x_len(), x)?;
        check_len(op, "y", g.y_len(), y)
    }

    pub fn batchnorm_forward(
        g: &BatchNormGeom,
        training: bool,
        x: usize,
        params: usize,
        running: usize,
        saved: usize,
        y: usize,
    ) -> Result<()> {
        batchnorm_geom("batchnorm_forward", g, training)?;
        check_len("batchnorm_forward", "x", g.len(), x)?;
        check_len("batchnorm_forward", "gamma+beta", 2 * g.c, params)?;
        check_len("batchnorm_forward", "running mean+var", 2 * g.c, running)?;
        check_len("batchnorm_forward", "saved mean+invstd", 2 * g.c, saved)?;
        check_len("batchnorm_forward", "y", g.len(), y)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_backward(
        g: &BatchNormGeom,
        x: usize,
        y: usize,
        dy: usize,
        params: usize,
        saved: usize,
        dx: Option<usize>,
        dparams: usize,
    ) -> Result<()> {
        batchnorm_geom("batchnorm_backward", g, true)?;
        for (what, len) in [("x", x), ("y", y), ("dy", dy)] {
            check_len("batchnorm_backward", what, g.len(), len)?;
        }
        check_len("batchnorm_backward", "gamma+beta", 2 * g.c, params)?;
        check_len("batchnorm_backward", "saved mean+invstd", 2 * g.c, saved)?;
        check_len("batchnorm_backward", "dgamma+dbeta", 2 * g.c, dparams)?;
        dx.map_or(Ok(()), |dx| check_len("batchnorm_backward", "dx", g.len(), dx))
    }

    fn batchnorm_geom(op: &'static str, g: &BatchNormGeom, training: bool) -> Result<()> {
        if !(g.eps > 0.0 && g.eps.is_finite() && (0.0..=1.0).contains(&g.momentum)) {
            return Err(Error::shape(op, "eps and momentum", "eps > 0, momentum in [0, 1]", format!("{} and {}", g.eps, g.momentum)));
        }
        if g.c == 0 || g.hw == 0 {
            return Err(Error::shape(op, "channels and values per channel per sample", ">= 1", format!("{} and {}", g.c, g.hw)));
        }
        // PyTorch refuses too: one value per channel has no variance.
        if training && g.n > 0 && g.per_channel() < 2 {
            return Err(Error::shape(op, "values per channel in training", ">= 2", g.per_channel()));
        }
        Ok(())
    }

    pub fn dropout_forward(spec: &DropoutSpec, rng: usize, x: usize, y: usize, mask: usize) -> Result<()> {
        if !(0.0..1.0).contains(&spec.p) {
            return Err(Error::shape("dropout_forward", "p", "in [0, 1)", spec.p));
        }
        check_len("dropout_forward", "rng [seed, step]", 2, rng)?;
        check_len("dropout_forward", "y", x, y)?;
        check_len("dropout_forward", "mask", x, mask)
    }

    pub fn dropout_backward(mask: usize, dy: usize, dx: usize) -> Result<()> {
        check_len("dropout_backward", "dy", mask, dy)?;
        check_len("dropout_backward", "dx", mask, dx)
    }

    pub fn augment(spec: &AugmentSpec, rng: usize, x: usize, y: usize) -> Result<()> {
        spec.validate()?;
        check_len("augment", "rng [seed, step]", 2, rng)?;
        check_len("augment", "x", spec.len(), x)?;
        check_len("augment", "y", spec.len(), y)
    }

    pub fn crop_flip(spec: &CropSpec, rng: usize, x: usize, y: usize) -> Result<()> {
        spec.validate()?;
        check_len("crop_flip", "rng [seed, step]", 2, rng)?;
        check_len("crop_flip", "x", spec.len(), x)?;
        check_len("crop_flip", "y", spec.len(), y)
    }

    pub fn add(a: usize, b: usize, y: usize) -> Result<()> {
        check_len("add", "b", a, b)?;
        check_len("add", "y", a, y)
    }

    /// (N, C, HW) -> (N, C): `x` and `y` the lengths of the windows.
    pub fn global_avgpool((n, c, hw): (usize, usize, usize), x: usize, y: usize) -> Result<()> {
        check_len("global_avgpool", "x", n * c * hw, x)?;
        check_len("global_avgpool", "y", n * c, y)
    }

    pub fn add_assign(x: usize, y: usize) -> Result<()> {
        check_len("add_assign", "y", x, y)
    }

    pub fn bias_grad(rows: usize, cols: usize, dy: usize, db: usize) -> Result<()> {
        check_len("bias_grad", "dy", rows * cols, dy)?;
        check_len("bias_grad", "db", cols, db)
    }

    pub fn relu_backward(y: usize, dy: usize, dx: usize) -> Result<()> {
        check_len("relu_backward", "dy", y, dy)?;
        check_len("relu_backward", "dx", y, dx)
    }

    pub fn gelu_forward(x: usize, y: usize) -> Result<()> {
        check_len("gelu_forward", "y", x, y)
    }

    pub fn gelu_backward(x: usize, dy: usize, dx: usize) -> Result<()> {
        check_len("gelu_backward", "dy", x, dy)?;
        check_len("gelu_backward", "dx", x, dx)
    }

    pub fn axpby(x: usize, y: usize) -> Result<()> {
        check_len("axpby", "y", x, y)
    }

    pub fn scale_to_norm(target: f32, eps: f32) -> Result<()> {
        if !(target.is_finite() && target >= 0.0 && eps.is_finite() && eps >= 0.0) {
            return Err(Error::shape("scale_to_norm", "target and eps", "finite and >= 0", format!("{target} and {eps}")));
        }
        Ok(())
    }

    // ---- dynamic loss scaling ----
    pub fn loss_scale_state(op: &'static str, state: usize) -> Result<()> {
        check_len(op, "loss scale state", super::LossScaleState::LEN, state)
    }

    pub fn loss_scale_update(spec: &super::ScaleUpdate, state: usize) -> Result<()> {
        spec.validate()?;
        loss_scale_state("loss_scale_update", state)
    }
}
