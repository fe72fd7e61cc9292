//! Which dataset a command reads, where it lives by default, and how a
//! checkpoint's stored description names it again.

use anyhow::{Context, Result};
use rr_core::data::{Dataset, DatasetInfo, Splits};
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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

    /// The (C, H, W) of the images, where that is known before reading them.
    pub fn known_shape(self, image_size: usize) -> Option<[usize; 3]> {
        match self {
            DatasetArg::Mnist | DatasetArg::FashionMnist => Some([1, 28, 28]),
            DatasetArg::Cifar10 | DatasetArg::Cifar100 => Some([3, 32, 32]),
            DatasetArg::ImageFolder => Some([3, image_size, image_size]),
            DatasetArg::Idx => None,
        }
    }

    /// The description (shape and classes) where that is known before reading the data.
    pub fn known_info(self, image_size: usize) -> Option<DatasetInfo> {
        let classes = match self {
            DatasetArg::Mnist | DatasetArg::FashionMnist | DatasetArg::Cifar10 => 10,
            DatasetArg::Cifar100 => 100,
            DatasetArg::ImageFolder | DatasetArg::Idx => return None,
        };
        let shape = self.known_shape(image_size)?;
        let c = shape[0];
        let class_names = (0..classes).map(|i| i.to_string()).collect();
        Some(DatasetInfo { name: self.name().into(), shape, classes, class_names, mean: vec![0.5; c], std: vec![0.25; c] })
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

/// `--data-dir`, or where `dataset` lives by default: the repository's
/// `data/mnist` (from the working directory, or from where this binary was
/// built when run elsewhere); for Fashion-MNIST, Debian's
/// `/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`) or
/// `data/fashion-mnist`; `data/cifar10` and `data/cifar100` when they exist.
pub fn data_dir(arg: &Option<PathBuf>, dataset: DatasetArg) -> Result<PathBuf> {
    if let Some(dir) = arg {
        return Ok(dir.clone());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let local = |name: &str| vec![PathBuf::from("data").join(name), repo.join("data").join(name)];
    let candidates: Vec<PathBuf> = match dataset {
        DatasetArg::Mnist => local("mnist"),
        DatasetArg::FashionMnist => [vec![PathBuf::from("/usr/share/datasets/fashion-mnist")], local("fashion-mnist")].concat(),
        DatasetArg::Cifar10 => local("cifar10"),
        DatasetArg::Cifar100 => local("cifar100"),
        DatasetArg::ImageFolder | DatasetArg::Idx => vec![],
    };
    match candidates.iter().find(|p| p.is_dir()) {
        Some(dir) => Ok(dir.clone()),
        None => match dataset {
            DatasetArg::Mnist => Ok(candidates[0].clone()),
            DatasetArg::FashionMnist => anyhow::bail!(
                "Fashion-MNIST is not shipped with the repository: pass --data-dir DIR (a folder with its four IDX files), or install Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)"
            ),
            DatasetArg::Cifar10 | DatasetArg::Cifar100 => anyhow::bail!(
                "{} is not shipped with the repository: pass --data-dir DIR, a folder with the official binary files (from https://www.cs.toronto.edu/~kriz/cifar.html: the \"binary version\" archive, unpacked; raw or .gz)",
                dataset.name()
            ),
            DatasetArg::ImageFolder | DatasetArg::Idx => anyhow::bail!("--dataset {} needs --data-dir DIR", dataset.name()),
        },
    }
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

/// The test split of the dataset a checkpoint was trained on (the training
/// files are not read), with the checkpoint's description.
pub fn test_for_checkpoint(
    ckpt: &rr_core::checkpoint::Checkpoint,
    path: &Path,
    data_dir: &Option<PathBuf>,
) -> Result<(DatasetInfo, Dataset)> {
    let info = ckpt.dataset(path)?;
    let (arg, image_size) = of_checkpoint(&info)?;
    let dir = self::data_dir(data_dir, arg)?;
    let split = rr_core::data::load_test(&arg.kind(image_size), &dir)?;
    check_test_split(&info, &split.info, &dir)?;
    Ok((info, split.data))
}

/// Refuses a test split that does not fit a model: another image shape, or
/// classes that are not the model's (as the labels are positions, the test
/// split's classes must be the first of the model's; an IDX test split may
/// lack the highest labels).
fn check_test_split(trained: &DatasetInfo, test: &DatasetInfo, dir: &Path) -> Result<()> {
    if test.shape != trained.shape {
        anyhow::bail!(
            "{} holds {:?} images, but the model was trained on {:?} images ({})",
            dir.display(),
            test.shape,
            trained.shape,
            trained.name
        );
    }
    if !trained.class_names.starts_with(&test.class_names) {
        anyhow::bail!(
            "{} names its test classes {:?}, but the model was trained on {:?}",
            dir.display(),
            test.class_names,
            trained.class_names
        );
    }
    Ok(())
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
