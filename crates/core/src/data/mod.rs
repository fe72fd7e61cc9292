//! Datasets: images as u8 (N, C, H, W) with u8 labels, and a [`DatasetInfo`]
//! that describes them (shape, classes, class names, per-channel
//! normalization). The description travels in every checkpoint, so `eval`,
//! `predict` and `serve` know what a model expects.
//!
//! One entry point, [`load`], takes a [`DatasetKind`] and a folder:
//! - the IDX family ([`mnist`]): MNIST, Fashion-MNIST and any IDX pair;
//! - [`cifar`]: CIFAR-10 and CIFAR-100 in the official binary layout (raw or `.gz`);
//! - [`folder`]: an image folder (`train/<class>/*.png|jpg`, `test/<class>/...`);
//! - [`shapes`]: writes a small synthetic image folder for tests and demos.
//!
//! Folders may hold a `SHA256SUMS.raw` ([`checksums`]); files listed there are verified.
//! Every failure is an [`Error`] naming the file and what was expected, never a panic.

pub mod checksums;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod mnist;
pub mod shapes;

pub use checksums::Checksums;
pub use cifar::{Cifar10, Cifar100, CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD};
pub use folder::{ImageFolder, MAX_IMAGE_SIZE};
pub use idx::{parse_idx, read_idx, IdxArray};
pub use mnist::{Mnist, MNIST_MEAN, MNIST_STD};
pub use shapes::{write_shapes_folder, SHAPE_CLASSES};

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which loader reads a folder; `name()` / [`FromStr`](std::str::FromStr) use
/// the names "mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder"
/// (optionally "image-folder:SIZE", default size 32) and "idx".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
    Cifar10,
    Cifar100,
    /// An image folder; every image is resized to `image_size` x `image_size` RGB.
    ImageFolder {
        image_size: usize,
    },
    /// Any pair of IDX splits with the MNIST file names.
    Idx,
}

impl DatasetKind {
    /// The names [`FromStr`](std::str::FromStr) accepts (image-folder also as "image-folder:SIZE").
    pub const NAMES: [&'static str; 6] = ["mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder", "idx"];

    /// The image size "image-folder" means without an explicit ":SIZE".
    pub const DEFAULT_IMAGE_SIZE: usize = 32;

    /// The kind's name, as stored in [`DatasetInfo::name`].
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::ImageFolder { .. } => "image-folder",
            DatasetKind::Idx => "idx",
        }
    }
}

impl std::fmt::Display for DatasetKind {
    /// The name; an image folder as "image-folder:SIZE" (which parses back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetKind::ImageFolder { image_size } => write!(f, "image-folder:{image_size}"),
            other => f.write_str(other.name()),
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let unknown = || {
            Error::config(
                "dataset kind",
                format!("unknown dataset {s:?}: expected one of {} (or image-folder:SIZE)", Self::NAMES.join(", ")),
            )
        };
        Ok(match s.to_ascii_lowercase().as_str() {
            "mnist" => DatasetKind::Mnist,
            "fashion-mnist" | "fashion_mnist" | "fashion" => DatasetKind::FashionMnist,
            "cifar10" | "cifar-10" => DatasetKind::Cifar10,
            "cifar100" | "cifar-100" => DatasetKind::Cifar100,
            "idx" => DatasetKind::Idx,
            "image-folder" | "imagefolder" => DatasetKind::ImageFolder { image_size: Self::DEFAULT_IMAGE_SIZE },
            other => {
                let size = ["image-folder:", "image-folder=", "imagefolder:", "imagefolder="]
                    .iter()
                    .find_map(|p| other.strip_prefix(p))
                    .ok_or_else(unknown)?;
                let image_size = size.parse::<usize>().map_err(|_| {
                    Error::config("dataset kind", format!("{s:?}: the image size after `image-folder:` must be a whole number of pixels"))
                })?;
                folder::check_image_size(image_size).map_err(|msg| Error::config("dataset kind", format!("{s:?}: {msg}")))?;
                DatasetKind::ImageFolder { image_size }
            }
        })
    }
}

/// Loads the dataset of kind `kind` from the folder `dir`.
pub fn load(kind: &DatasetKind, dir: &Path) -> Result<Splits> {
    match kind {
        DatasetKind::Mnist => Mnist::load(dir),
        DatasetKind::FashionMnist => Mnist::load_fashion(dir),
        DatasetKind::Cifar10 => Cifar10::load(dir),
        DatasetKind::Cifar100 => Cifar100::load(dir),
        DatasetKind::ImageFolder { image_size } => ImageFolder::load(dir, *image_size),
        DatasetKind::Idx => Mnist::load_idx(dir),
    }
}

/// Loads only the test split of kind `kind` from `dir` (what evaluating a
/// trained model needs). Its description is the loader's from the test split
/// alone: for `idx` and image folders, classes and normalization come from the
/// test files, so callers evaluating a model use the model's description.
pub fn load_test(kind: &DatasetKind, dir: &Path) -> Result<Split> {
    match kind {
        DatasetKind::Mnist => Mnist::load_test(dir),
        DatasetKind::FashionMnist => Mnist::load_fashion_test(dir),
        DatasetKind::Cifar10 => Cifar10::load_test(dir),
        DatasetKind::Cifar100 => Cifar100::load_test(dir),
        DatasetKind::ImageFolder { image_size } => ImageFolder::load_test(dir, *image_size),
        DatasetKind::Idx => Mnist::load_idx_test(dir),
    }
}

/// Per-channel mean and standard deviation (population) of u8 images
/// `(len, C, H, W)` scaled to [0, 1]. A channel with no spread gets std 1 (so
/// that normalization stays finite); an empty set gets mean 0, std 1.
pub fn channel_stats(images: &[u8], shape: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let [c, h, w] = shape;
    let plane = h * w;
    if c == 0 || plane == 0 || images.len() < c * plane {
        return (vec![0.0; c], vec![1.0; c]);
    }
    // (sum, sum of squares) per channel; u64 cannot overflow for any realistic size.
    let sums = images
        .par_chunks(c * plane)
        .fold(
            || vec![(0u64, 0u64); c],
            |mut acc, img| {
                for (ch, px) in img.chunks_exact(plane).enumerate() {
                    let (s, q) = px.iter().fold((0u64, 0u64), |(s, q), &p| (s + p as u64, q + (p as u64) * (p as u64)));
                    acc[ch].0 += s;
                    acc[ch].1 += q;
                }
                acc
            },
        )
        .reduce(|| vec![(0u64, 0u64); c], |a, b| a.iter().zip(&b).map(|(x, y)| (x.0 + y.0, x.1 + y.1)).collect());
    let n = (images.len() / (c * plane) * plane) as f64;
    let mut mean = Vec::with_capacity(c);
    let mut std = Vec::with_capacity(c);
    for &(s, q) in &sums {
        let m = s as f64 / n / 255.0;
        let var = (q as f64 / n / (255.0 * 255.0) - m * m).max(0.0);
        mean.push(m as f32);
        let sd = var.sqrt() as f32;
        std.push(if sd > 1e-6 { sd } else { 1.0 });
    }
    (mean, std)
}

/// Reads a class-names file: one name a line, surrounding spaces trimmed,
/// blank lines ignored. An empty file or a repeated name is an error.
pub fn read_names_file(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_names(&bytes, path)
}

/// Parses the bytes of a class-names file; `path` is only used in error messages.
pub fn parse_names(bytes: &[u8], path: &Path) -> Result<Vec<String>> {
    let bad = |msg: String| Error::Dataset { path: path.to_path_buf(), msg };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("class names must be UTF-8 text: {e}")))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(bad("no class names: expected one a line".into()));
    }
    for (i, n) in names.iter().enumerate() {
        if let Some(j) = names[..i].iter().position(|m| m == n) {
            return Err(bad(format!("class name {n:?} appears twice (lines {} and {} of the names)", j + 1, i + 1)));
        }
    }
    Ok(names)
}

/// One split: images as u8 (len, C, H, W), labels as u8 (len).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub len: usize,
    /// (C, H, W) of every image.
    pub shape: [usize; 3],
}

impl Dataset {
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Keeps the first `n` samples (all of them if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
        self.images.truncate(self.len * self.sample_len());
        self.labels.truncate(self.len);
    }

    /// A copy with a random half of the images (chosen by `seed`) mirrored
    /// left to right: the start of alternating flips (see
    /// [`crate::backend::Flip::Alternate`]).
    pub fn with_random_half_flipped(&self, seed: u64) -> Dataset {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x666c_6970);
        let mut out = self.clone();
        let w = self.shape[2];
        let sample = self.sample_len();
        for img in out.images.chunks_mut(sample.max(1)).take(self.len) {
            if rng.random::<bool>() {
                img.chunks_mut(w.max(1)).for_each(<[u8]>::reverse);
            }
        }
        out
    }

    /// The first `n` images (at most all), normalized as `info` says: (n, C, H, W) floats.
    pub fn normalized(&self, info: &DatasetInfo, n: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let plane = self.shape[1] * self.shape[2];
        let n = n.min(self.len);
        let mut out = vec![0f32; n * self.sample_len()];
        out.par_chunks_mut(plane.max(1)).zip(self.images.par_chunks(plane.max(1))).enumerate().for_each(|(p, (out, px))| {
            let c = p % self.shape[0];
            let (scale, shift) = (1.0 / (255.0 * info.std[c]), info.mean[c] / info.std[c]);
            out.iter_mut().zip(px).for_each(|(o, &v)| *o = v as f32 * scale - shift);
        });
        out
    }

    /// The u8 pixels of sample `i`: (C, H, W).
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.sample_len();
        &self.images[i * l..(i + 1) * l]
    }
}

/// What a dataset is: stored in checkpoints (metadata key `dataset`, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// "mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder", "idx".
    pub name: String,
    /// (C, H, W) of the model's input.
    pub shape: [usize; 3],
    pub classes: usize,
    /// One per class, in label order.
    pub class_names: Vec<String>,
    /// Per-channel normalization applied when batches are gathered:
    /// `x = (pixel / 255 - mean[c]) / std[c]`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl DatasetInfo {
    pub fn channels(&self) -> usize {
        self.shape[0]
    }

    /// MNIST's description (10 digits, 1x28x28, the literature's mean and std).
    pub fn mnist() -> Self {
        DatasetInfo {
            name: "mnist".into(),
            shape: [1, 28, 28],
            classes: 10,
            class_names: (0..10).map(|d| d.to_string()).collect(),
            mean: vec![MNIST_MEAN],
            std: vec![MNIST_STD],
        }
    }

    /// Fashion-MNIST's description (its ten clothing classes; MNIST's normalization, as before).
    pub fn fashion_mnist() -> Self {
        let names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
        DatasetInfo { name: "fashion-mnist".into(), class_names: names.map(String::from).to_vec(), ..Self::mnist() }
    }

    /// Checks that the description is self-consistent (one mean and std per channel, ...).
    pub fn validate(&self) -> Result<()> {
        let c = self.channels();
        let bad = |msg: String| Err(Error::config(format!("dataset description `{}`", self.name), msg));
        if self.shape.contains(&0) || c > crate::backend::MAX_CHANNELS {
            return bad(format!("shape {:?}: need non-zero sizes and 1 to {} channels", self.shape, crate::backend::MAX_CHANNELS));
        }
        if self.classes == 0 || self.classes > 256 || self.class_names.len() != self.classes {
            return bad(format!("{} classes with {} names: need 1 to 256 classes, one name each", self.classes, self.class_names.len()));
        }
        if self.mean.len() != c || self.std.len() != c || self.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return bad(format!("mean {:?} and std {:?}: need {c} of each, std > 0", self.mean, self.std));
        }
        Ok(())
    }

    /// The normalized value of a u8 pixel of channel `c`.
    pub fn normalize(&self, c: usize, pixel: u8) -> f32 {
        (pixel as f32 / 255.0 - self.mean[c]) / self.std[c]
    }

    /// Reads the `dataset` metadata of a checkpoint: this struct as JSON, or
    /// the bare name older checkpoints stored ("mnist", "fashion-mnist").
    pub fn from_metadata(value: Option<&str>) -> Result<Self> {
        let info = match value {
            None | Some("mnist") => Self::mnist(),
            Some("fashion-mnist") => Self::fashion_mnist(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| Error::config("checkpoint dataset description", format!("{e}: {json}")))?
            }
        };
        info.validate()?;
        Ok(info)
    }

    /// Metadata entry that stores this description in a checkpoint
    /// (`checkpoint::save(path, backend, model, &[info.metadata_entry()])`).
    pub fn metadata_entry(&self) -> (&'static str, String) {
        ("dataset", serde_json::to_string(self).expect("a dataset description serializes"))
    }
}

/// One split loaded alone ([`load_test`]) and its description.
#[derive(Clone, Debug)]
pub struct Split {
    pub data: Dataset,
    pub info: DatasetInfo,
    /// Where it was read from.
    pub dir: PathBuf,
    /// Whether the files were checked against a `SHA256SUMS.raw`.
    pub verified: bool,
}

/// A loaded dataset: both splits and their description.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
    pub info: DatasetInfo,
    /// Where it was read from.
    pub dir: PathBuf,
    /// Whether the files were checked against a `SHA256SUMS.raw`.
    pub verified: bool,
}
