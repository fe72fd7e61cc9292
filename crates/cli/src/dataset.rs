//! Which dataset a command reads, where it lives by default, and how a
//! checkpoint's stored description names it again.

use anyhow::{Context, Result};
use rr_core::data::{DatasetInfo, Splits};
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetArg {
    /// Handwritten digits (shipped in data/mnist)
    Mnist,
    /// Zalando's clothing images, same format (pass --data-dir, or install Debian's dataset-fashion-mnist)
    FashionMnist,
    /// CIFAR-10, the official binary batches (data_batch_1.bin ... test_batch.bin, raw or .gz)
    Cifar10,
    /// CIFAR-100, the official binary files (train.bin, test.bin, raw or .gz)
    Cifar100,
    /// Your own images: DIR/train/<class>/*.png|jpg and DIR/test/<class>/*, resized to --image-size
    ImageFolder,
    /// Any pair of IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*), of any image size
    Idx,
}

impl DatasetArg {
    pub fn name(self) -> &'static str {
        match self {
            DatasetArg::Mnist => "mnist",
            DatasetArg::FashionMnist => "fashion-mnist",
            DatasetArg::Cifar10 => "cifar10",
            DatasetArg::Cifar100 => "cifar100",
            DatasetArg::ImageFolder => "image-folder",
            DatasetArg::Idx => "idx",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        use clap::ValueEnum;
        Self::value_variants().iter().copied().find(|d| d.name() == name)
    }

    fn kind(self, image_size: usize) -> rr_core::data::DatasetKind {
        use rr_core::data::DatasetKind;
        match self {
            DatasetArg::Mnist => DatasetKind::Mnist,
            DatasetArg::FashionMnist => DatasetKind::FashionMnist,
            DatasetArg::Cifar10 => DatasetKind::Cifar10,
            DatasetArg::Cifar100 => DatasetKind::Cifar100,
            DatasetArg::ImageFolder => DatasetKind::ImageFolder { image_size },
            DatasetArg::Idx => DatasetKind::Idx,
        }
    }
}

/// Loads both splits of `dataset` from `dir`.
pub fn load(dataset: DatasetArg, dir: &Path, image_size: usize) -> Result<Splits> {
    Ok(rr_core::data::load(&dataset.kind(image_size), dir)?)
}

/// The dataset a checkpoint was trained on and the side its images were resized to.
pub fn of_checkpoint(info: &DatasetInfo) -> Result<(DatasetArg, usize)> {
    let arg =
        DatasetArg::from_name(&info.name).with_context(|| format!("the checkpoint was trained on an unknown dataset `{}`", info.name))?;
    Ok((arg, info.shape[1]))
}

/// The environment variable naming a folder of datasets laid out as the
/// repository's `data/` (`mnist/`, `fashion-mnist/`, `cifar10/`, `cifar100/`).
pub const DATA_ENV: &str = "RR_DATA_DIR";

/// `--data-dir`, or where `dataset` lives by default, first found of:
/// `$RR_DATA_DIR/<name>` (when the variable is set, only there), `data/<name>`
/// under the working directory, the same under the repository this binary
/// was built from (so `cargo install --path crates/cli` finds the shipped
/// MNIST while that clone exists), and for Fashion-MNIST Debian's
/// `/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`).
pub fn data_dir(arg: &Option<PathBuf>, dataset: DatasetArg) -> Result<PathBuf> {
    if let Some(dir) = arg {
        return Ok(dir.clone());
    }
    let name = dataset.name();
    if matches!(dataset, DatasetArg::ImageFolder | DatasetArg::Idx) {
        anyhow::bail!("--dataset {name} needs --data-dir DIR");
    }
    if let Some(root) = std::env::var_os(DATA_ENV) {
        let dir = PathBuf::from(root).join(name);
        anyhow::ensure!(
            dir.is_dir(),
            "{DATA_ENV} is set, but {} is not a folder: add the {name} files there or pass --data-dir DIR",
            dir.display()
        );
        return Ok(dir);
    }
    // crates/cli -> the repository root.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap_or(Path::new("."));
    let mut candidates = vec![PathBuf::from("data").join(name), repo.join("data").join(name)];
    if dataset == DatasetArg::FashionMnist {
        candidates.insert(0, PathBuf::from("/usr/share/datasets/fashion-mnist"));
    }
    if let Some(dir) = candidates.iter().find(|p| p.is_dir()) {
        return Ok(dir.clone());
    }
    let looked = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let what = match dataset {
        DatasetArg::Mnist => "a folder with MNIST's four IDX files (the repository ships them in data/mnist)".to_string(),
        DatasetArg::FashionMnist => "a folder with its four IDX files, or install Debian's dataset-fashion-mnist".to_string(),
        _ => "a folder with the official binary files (from https://www.cs.toronto.edu/~kriz/cifar.html: the \"binary version\" archive, unpacked; raw or .gz)".to_string(),
    };
    anyhow::bail!("no {name} data found (looked in {looked}): pass --data-dir DIR, {what}, or set {DATA_ENV} to a folder holding {name}/")
}

/// The dataset description stored in a checkpoint, and its data loaded from
/// `--data-dir` (or the default folder), refused when it does not match.
pub fn for_checkpoint(ckpt: &rr_core::checkpoint::Checkpoint, path: &Path, data_dir: &Option<PathBuf>) -> Result<(DatasetInfo, Splits)> {
    let info = ckpt.dataset(path)?;
    let (arg, image_size) = of_checkpoint(&info)?;
    let dir = self::data_dir(data_dir, arg)?;
    let data = load(arg, &dir, image_size)?;
    check_same(&info, &data.info, &dir)?;
    Ok((info, data))
}

/// Refuses data whose shape, classes or class names are not those a model was trained on.
pub fn check_same(trained: &DatasetInfo, data: &DatasetInfo, dir: &Path) -> Result<()> {
    if data.shape != trained.shape || data.classes != trained.classes {
        anyhow::bail!(
            "{} holds {:?} images in {} classes, but the model was trained on {:?} images in {} classes ({})",
            dir.display(),
            data.shape,
            data.classes,
            trained.shape,
            trained.classes,
            trained.name
        );
    }
    if data.class_names != trained.class_names {
        anyhow::bail!("{} names its classes {:?}, but the model was trained on {:?}", dir.display(), data.class_names, trained.class_names);
    }
    Ok(())
}
