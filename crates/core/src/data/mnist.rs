//! The IDX family: MNIST, Fashion-MNIST and any other pair of IDX splits, four
//! files in a folder (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or `.gz`),
//! optionally checked against a `SHA256SUMS.raw` of their decompressed bytes.

use super::checksums::{read_verified, Checksums, VerifiedFile};
use super::idx::{parse_idx, IdxArray};
use super::{channel_stats, read_names_file, Dataset, DatasetInfo, Split, Splits};
use crate::error::{Error, Result};
use std::path::Path;

/// Normalization used by the whole MNIST literature (and torchvision examples).
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

/// The optional class-names file of a generic IDX folder (one name a line).
pub const IDX_CLASSES_FILE: &str = "classes.txt";

/// MNIST-style datasets: `Mnist::load(dir)` reads the four IDX files.
pub struct Mnist;

/// Which dataset of the IDX family a folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Mnist,
    Fashion,
    /// Any image size and channel count, classes from the labels.
    Any,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Mnist => "MNIST",
            Flavor::Fashion => "Fashion-MNIST",
            Flavor::Any => "IDX",
        }
    }
}

impl Mnist {
    /// Loads MNIST: `train-*` and `t10k-*` files (raw or `.gz`) from `dir`,
    /// checking them against `dir/SHA256SUMS.raw` when that file exists.
    /// Images must be 28x28 with labels 0 to 9.
    pub fn load(dir: &Path) -> Result<Splits> {
        load_folder(dir, Flavor::Mnist)
    }

    /// Loads Fashion-MNIST (the same files and checks as [`Mnist::load`]),
    /// described by [`DatasetInfo::fashion_mnist`].
    pub fn load_fashion(dir: &Path) -> Result<Splits> {
        load_folder(dir, Flavor::Fashion)
    }

    /// Loads any pair of IDX splits with the MNIST file names: images of any
    /// size, 3-D `(n, rows, cols)` (one channel) or 4-D `(n, C, rows, cols)`;
    /// classes = largest label + 1 over both splits, named by
    /// `dir/classes.txt` (one a line) when present; mean and std per channel
    /// computed from the training images.
    pub fn load_idx(dir: &Path) -> Result<Splits> {
        load_folder(dir, Flavor::Any)
    }

    /// The test split of [`Mnist::load`] alone (the `t10k-*` files).
    pub fn load_test(dir: &Path) -> Result<Split> {
        load_test_folder(dir, Flavor::Mnist)
    }

    /// The test split of [`Mnist::load_fashion`] alone.
    pub fn load_fashion_test(dir: &Path) -> Result<Split> {
        load_test_folder(dir, Flavor::Fashion)
    }

    /// The test split of [`Mnist::load_idx`] alone: classes counted from the
    /// test labels (or `classes.txt`), mean and std from the test images.
    pub fn load_idx_test(dir: &Path) -> Result<Split> {
        load_test_folder(dir, Flavor::Any)
    }
}

const FILES: &str = "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)";

fn check_folder(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::Dataset { path: dir.to_path_buf(), msg: format!("not a folder; expected one holding {FILES}") });
    }
    Ok(())
}

fn load_folder(dir: &Path, flavor: Flavor) -> Result<Splits> {
    check_folder(dir)?;
    let sums = Checksums::read(dir)?;
    let (train, test) = rayon::join(|| load_split(dir, "train", flavor, sums.as_ref()), || load_split(dir, "t10k", flavor, sums.as_ref()));
    let ((train, train_verified), (test, test_verified)) = (train?, test?);
    if train.shape != test.shape {
        return Err(Error::Dataset {
            path: dir.to_path_buf(),
            msg: format!("training images are {:?} (C, H, W) but test images are {:?}", train.shape, test.shape),
        });
    }
    let info = describe(dir, flavor, &[&train, &test], &train)?;
    Ok(Splits { train, test, info, dir: dir.to_path_buf(), verified: train_verified && test_verified })
}

fn load_test_folder(dir: &Path, flavor: Flavor) -> Result<Split> {
    check_folder(dir)?;
    let sums = Checksums::read(dir)?;
    let (data, verified) = load_split(dir, "t10k", flavor, sums.as_ref())?;
    let info = describe(dir, flavor, &[&data], &data)?;
    Ok(Split { data, info, dir: dir.to_path_buf(), verified })
}

/// The description of a folder's splits: fixed for MNIST and Fashion-MNIST;
/// for any IDX pair, classes from the labels of `labelled` (named by
/// `classes.txt` when present) and normalization from the images of `stats_from`.
fn describe(dir: &Path, flavor: Flavor, labelled: &[&Dataset], stats_from: &Dataset) -> Result<DatasetInfo> {
    let bad = |path: &Path, msg: String| Error::Dataset { path: path.to_path_buf(), msg };
    let info = match flavor {
        Flavor::Mnist => DatasetInfo::mnist(),
        Flavor::Fashion => DatasetInfo::fashion_mnist(),
        Flavor::Any => {
            let max_label = labelled.iter().flat_map(|d| &d.labels).copied().max().unwrap_or(0) as usize;
            let names_path = dir.join(IDX_CLASSES_FILE);
            let class_names = if names_path.is_file() {
                let names = read_names_file(&names_path)?;
                if names.len() <= max_label {
                    return Err(bad(
                        &names_path,
                        format!("{} class names, but the labels go up to {max_label}: need at least {} names", names.len(), max_label + 1),
                    ));
                }
                if names.len() > 256 {
                    return Err(bad(&names_path, format!("{} class names: at most 256 classes (labels are bytes)", names.len())));
                }
                names
            } else {
                (0..=max_label).map(|c| c.to_string()).collect()
            };
            let (mean, std) = channel_stats(&stats_from.images, stats_from.shape);
            DatasetInfo { name: "idx".into(), shape: stats_from.shape, classes: class_names.len(), class_names, mean, std }
        }
    };
    info.validate().map_err(|e| bad(dir, e.to_string()))?;
    Ok(info)
}

/// Reads one split's images and labels; returns it and whether both files were checksummed.
fn load_split(dir: &Path, split: &str, flavor: Flavor, sums: Option<&Checksums>) -> Result<(Dataset, bool)> {
    let (images, labels) = rayon::join(
        || read_verified(dir, &format!("{split}-images-idx3-ubyte"), sums),
        || read_verified(dir, &format!("{split}-labels-idx1-ubyte"), sums),
    );
    let (VerifiedFile { path: ipath, bytes: ibytes, verified: iv }, VerifiedFile { path: lpath, bytes: lbytes, verified: lv }) =
        (images?, labels?);
    let images: IdxArray = parse_idx(ibytes, &ipath)?;
    let labels: IdxArray = parse_idx(lbytes, &lpath)?;
    let bad = |path: &Path, msg: String| Error::Dataset { path: path.to_path_buf(), msg };
    let name = flavor.name();
    let (n, shape) = match (flavor, &images.dims[..]) {
        (Flavor::Mnist | Flavor::Fashion, &[n, rows, cols]) => {
            if (rows, cols) != (28, 28) {
                return Err(bad(
                    &ipath,
                    format!("images are {rows}x{cols}; {name} images are 28x28 (the `idx` dataset kind reads other sizes)"),
                ));
            }
            (n, [1, rows, cols])
        }
        (Flavor::Mnist | Flavor::Fashion, dims) => {
            return Err(bad(&ipath, format!("images must have 3 dimensions (count, rows, cols), found {dims:?}")));
        }
        (Flavor::Any, &[n, rows, cols]) => (n, [1, rows, cols]),
        (Flavor::Any, &[n, c, rows, cols]) => (n, [c, rows, cols]),
        (Flavor::Any, dims) => {
            return Err(bad(
                &ipath,
                format!("images must have 3 dimensions (count, rows, cols) or 4 (count, channels, rows, cols), found {dims:?}"),
            ));
        }
    };
    if shape.contains(&0) {
        return Err(bad(&ipath, format!("images of {:?} (C, H, W): every size must be non-zero", shape)));
    }
    if shape[0] > crate::backend::MAX_CHANNELS {
        return Err(bad(&ipath, format!("{} channels: at most {} are supported", shape[0], crate::backend::MAX_CHANNELS)));
    }
    if n == 0 {
        return Err(bad(&ipath, "holds no images".into()));
    }
    if labels.dims != [n] {
        return Err(bad(&lpath, format!("expected {n} labels (one per image in {}), found dimensions {:?}", ipath.display(), labels.dims)));
    }
    if flavor != Flavor::Any {
        if let Some(i) = labels.data.iter().position(|&l| l >= 10) {
            return Err(bad(&lpath, format!("label {} at index {i} is out of range 0..10", labels.data[i])));
        }
    }
    Ok((Dataset { images: images.data, labels: labels.data, len: n, shape }, iv && lv))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test split loads from a folder without the training files, as the full load describes it.
    #[test]
    fn the_test_split_loads_alone() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let dir = std::env::temp_dir().join(format!("rr-mnist-test-only-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
            std::fs::copy(repo.join(f), dir.join(f)).unwrap();
        }
        let full = Mnist::load(&repo).unwrap();
        let test = Mnist::load_test(&dir).unwrap();
        assert_eq!((test.data.len, &test.data.labels, &test.info), (full.test.len, &full.test.labels, &full.info));
        assert!(Mnist::load(&dir).unwrap_err().to_string().contains("train-images"));
        let idx = Mnist::load_idx_test(&dir).unwrap();
        assert_eq!((idx.info.classes, idx.info.shape, idx.data.images.len()), (10, [1, 28, 28], 10_000 * 784));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
