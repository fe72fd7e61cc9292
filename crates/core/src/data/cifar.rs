//! CIFAR-10 and CIFAR-100 in the layout of the official binary distributions
//! (`cifar-10-batches-bin`, `cifar-100-binary`), each file raw or gzipped.
//!
//! - CIFAR-10: `data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`;
//!   records of 3073 bytes: the label (0-9), then 1024 red, 1024 green and
//!   1024 blue bytes, rows top to bottom (exactly our (C, H, W) layout). Class
//!   names from `batches.meta.txt` when present.
//! - CIFAR-100: `train.bin` and `test.bin`; records of 3074 bytes: the coarse
//!   label (0-19), the fine label (0-99), then the 3072 pixel bytes. The fine
//!   label is used (100 classes), named by `fine_label_names.txt` when present.
//!
//! Any number of records per file and any record order are accepted (copies
//! with reshuffled records, such as the project's shared CIFAR-10, load the
//! same way as the official files). The batch files are decompressed and
//! checksummed in parallel.

use super::checksums::{find, read_verified, Checksums, VerifiedFile};
use super::{parse_names, Dataset, DatasetInfo, Split, Splits};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Per-channel mean of the CIFAR-10 training images.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training images.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Per-channel mean of the CIFAR-100 training images.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// Per-channel standard deviation of the CIFAR-100 training images.
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

/// The ten CIFAR-10 classes, in label order (used when `batches.meta.txt` is absent).
pub const CIFAR10_CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The hundred CIFAR-100 fine classes, in label order (used when `fine_label_names.txt` is absent).
#[rustfmt::skip]
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Bytes of one image: 3 x 32 x 32.
const PIXELS: usize = 3 * 32 * 32;

/// CIFAR-10: `Cifar10::load(dir)`.
pub struct Cifar10;

/// CIFAR-100 (fine labels): `Cifar100::load(dir)`.
pub struct Cifar100;

impl Cifar10 {
    /// Loads the five training batches and the test batch from `dir` (or from
    /// `dir/cifar-10-batches-bin`, where the official archive unpacks),
    /// checking them against `SHA256SUMS.raw` when present.
    pub fn load(dir: &Path) -> Result<Splits> {
        load(dir, &CIFAR10)
    }

    /// The test batch alone (`test_batch.bin`), as [`Cifar10::load`] reads it.
    pub fn load_test(dir: &Path) -> Result<Split> {
        load_test(dir, &CIFAR10)
    }
}

impl Cifar100 {
    /// Loads `train.bin` and `test.bin` from `dir` (or from
    /// `dir/cifar-100-binary`), checking them against `SHA256SUMS.raw` when present.
    pub fn load(dir: &Path) -> Result<Splits> {
        load(dir, &CIFAR100)
    }

    /// `test.bin` alone, as [`Cifar100::load`] reads it.
    pub fn load_test(dir: &Path) -> Result<Split> {
        load_test(dir, &CIFAR100)
    }
}

/// What distinguishes the two datasets' files.
struct Layout {
    name: &'static str,
    title: &'static str,
    train: &'static [&'static str],
    test: &'static [&'static str],
    /// The folder the official archive unpacks to.
    subfolder: &'static str,
    /// Label bytes before the pixels; the last one is the label used.
    label_bytes: usize,
    classes: usize,
    /// The range of the coarse label (CIFAR-100's first byte).
    coarse_classes: Option<usize>,
    names_file: &'static str,
    default_names: &'static [&'static str],
    mean: [f32; 3],
    std: [f32; 3],
}

impl Layout {
    fn record(&self) -> usize {
        self.label_bytes + PIXELS
    }

    fn files(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.train.iter().chain(self.test).copied()
    }
}

const CIFAR10: Layout = Layout {
    name: "cifar10",
    title: "CIFAR-10",
    train: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
    test: &["test_batch.bin"],
    subfolder: "cifar-10-batches-bin",
    label_bytes: 1,
    classes: 10,
    coarse_classes: None,
    names_file: "batches.meta.txt",
    default_names: &CIFAR10_CLASSES,
    mean: CIFAR10_MEAN,
    std: CIFAR10_STD,
};

const CIFAR100: Layout = Layout {
    name: "cifar100",
    title: "CIFAR-100",
    train: &["train.bin"],
    test: &["test.bin"],
    subfolder: "cifar-100-binary",
    label_bytes: 2,
    classes: 100,
    coarse_classes: Some(20),
    names_file: "fine_label_names.txt",
    default_names: &CIFAR100_CLASSES,
    mean: CIFAR100_MEAN,
    std: CIFAR100_STD,
};

/// `dir`, or the official archive's subfolder of it when only that holds the files.
fn resolve(dir: &Path, layout: &Layout) -> Result<PathBuf> {
    let list = || layout.files().map(|f| format!("{f}(.gz)")).collect::<Vec<_>>().join(", ");
    if !dir.is_dir() {
        return Err(Error::Dataset { path: dir.to_path_buf(), msg: format!("not a folder; expected one holding {}", list()) });
    }
    let has_any = |d: &Path| layout.files().any(|f| find(d, f).is_some());
    let sub = dir.join(layout.subfolder);
    if !has_any(dir) && sub.is_dir() && has_any(&sub) {
        return Ok(sub);
    }
    Ok(dir.to_path_buf())
}

fn load(dir: &Path, layout: &Layout) -> Result<Splits> {
    let dir = resolve(dir, layout)?;
    let files: Vec<&str> = layout.files().collect();
    let (mut parts, verified, info) = load_files(&dir, layout, &files)?;
    let test = concat(parts.split_off(layout.train.len()));
    Ok(Splits { train: concat(parts), test, info, dir, verified })
}

fn load_test(dir: &Path, layout: &Layout) -> Result<Split> {
    let dir = resolve(dir, layout)?;
    let (parts, verified, info) = load_files(&dir, layout, layout.test)?;
    Ok(Split { data: concat(parts), info, dir, verified })
}

/// Reads `files` of `dir`, and the description; whether every file was checksummed.
fn load_files(dir: &Path, layout: &Layout, files: &[&str]) -> Result<(Vec<Parsed>, bool, DatasetInfo)> {
    let sums = Checksums::read(dir)?;
    // Decompress, checksum and parse every file in parallel; report the first
    // failing file in the fixed file order, so the error is deterministic.
    let parsed: Vec<Result<(Parsed, bool)>> = files
        .par_iter()
        .map(|stem| {
            let VerifiedFile { path, bytes, verified } = read_verified(dir, stem, sums.as_ref())?;
            Ok((parse_records(&bytes, &path, layout)?, verified))
        })
        .collect();
    let parsed = parsed.into_iter().collect::<Result<Vec<_>>>()?;
    let verified = sums.is_some() && parsed.iter().all(|(_, v)| *v);
    let class_names = read_class_names(dir, layout, sums.as_ref())?;
    let info = DatasetInfo {
        name: layout.name.into(),
        shape: [3, 32, 32],
        classes: layout.classes,
        class_names,
        mean: layout.mean.to_vec(),
        std: layout.std.to_vec(),
    };
    info.validate().map_err(|e| Error::Dataset { path: dir.to_path_buf(), msg: e.to_string() })?;
    Ok((parsed.into_iter().map(|(p, _)| p).collect(), verified, info))
}

/// One file's records.
struct Parsed {
    images: Vec<u8>,
    labels: Vec<u8>,
}

fn concat(parts: Vec<Parsed>) -> Dataset {
    let mut parts = parts.into_iter();
    let mut first = parts.next().unwrap_or(Parsed { images: Vec::new(), labels: Vec::new() });
    let rest: Vec<Parsed> = parts.collect();
    first.images.reserve_exact(rest.iter().map(|p| p.images.len()).sum());
    first.labels.reserve_exact(rest.iter().map(|p| p.labels.len()).sum());
    for p in rest {
        first.images.extend_from_slice(&p.images);
        first.labels.extend_from_slice(&p.labels);
    }
    let len = first.labels.len();
    Dataset { images: first.images, labels: first.labels, len, shape: [3, 32, 32] }
}

/// Splits a file's bytes into labels and (C, H, W) pixels, checking sizes and label ranges.
fn parse_records(bytes: &[u8], path: &Path, layout: &Layout) -> Result<Parsed> {
    let bad = |msg: String| Error::Dataset { path: path.to_path_buf(), msg };
    let record = layout.record();
    if bytes.is_empty() {
        return Err(bad(format!("holds no records: expected {} records of {record} bytes", layout.title)));
    }
    if !bytes.len().is_multiple_of(record) {
        let other = if layout.label_bytes == 1 { &CIFAR100 } else { &CIFAR10 };
        let hint = if bytes.len().is_multiple_of(other.record()) {
            format!(" (it is a multiple of {}, the {} record size: is this a {} file?)", other.record(), other.title, other.title)
        } else {
            format!(
                " ({} whole records and {} bytes left over: truncated or not a {} file)",
                bytes.len() / record,
                bytes.len() % record,
                layout.title
            )
        };
        let labels = if layout.label_bytes == 1 { "a label byte" } else { "coarse and fine label bytes" };
        return Err(bad(format!(
            "{} bytes is not a multiple of the {record}-byte {} record ({labels}, then {PIXELS} pixel bytes){hint}",
            bytes.len(),
            layout.title
        )));
    }
    let n = bytes.len() / record;
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        if let Some(coarse) = layout.coarse_classes {
            if rec[0] as usize >= coarse {
                return Err(bad(format!("record {i}: coarse label {} is out of range 0..{coarse}", rec[0])));
            }
        }
        let label = rec[layout.label_bytes - 1];
        if label as usize >= layout.classes {
            let which = if layout.coarse_classes.is_some() { "fine label" } else { "label" };
            return Err(bad(format!("record {i}: {which} {label} is out of range 0..{}", layout.classes)));
        }
        labels.push(label);
    }
    let mut images = Vec::with_capacity(n * PIXELS);
    for rec in bytes.chunks_exact(record) {
        images.extend_from_slice(&rec[layout.label_bytes..]);
    }
    Ok(Parsed { images, labels })
}

/// The class names from the names file (checked against the checksums when
/// listed there), or the standard names when the file is absent.
fn read_class_names(dir: &Path, layout: &Layout, sums: Option<&Checksums>) -> Result<Vec<String>> {
    if find(dir, layout.names_file).is_none() {
        return Ok(layout.default_names.iter().map(|s| s.to_string()).collect());
    }
    let VerifiedFile { path, bytes, .. } = read_verified(dir, layout.names_file, sums)?;
    let names = parse_names(&bytes, &path)?;
    if names.len() != layout.classes {
        return Err(Error::Dataset {
            path,
            msg: format!("{} class names: {} has {} classes, one name a line", names.len(), layout.title, layout.classes),
        });
    }
    Ok(names)
}
