//! Which dataset a command reads, where it lives by default, and how a
//! checkpoint's stored description names it again.

use anyhow::{Context, Result};
use rr_core::data::{Dataset, DatasetInfo, Splits};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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

/// The environment variable naming a folder of datasets laid out as the
/// repository's `data/` (`mnist/`, `fashion-mnist/`, `cifar10/`, `cifar100/`).
pub const DATA_ENV: &str = "RR_DATA_DIR";

/// `--data-dir`, or where `dataset` lives by default, first found of:
/// `$RR_DATA_DIR/<name>` (when the variable is set, only there), for
/// Fashion-MNIST Debian's `/usr/share/datasets/fashion-mnist` (package
/// `dataset-fashion-mnist`), `data/<name>` under the working directory, the
/// same under the repository this binary was built from (so `cargo install
/// --path crates/cli` finds the shipped MNIST while that clone exists).
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
/// `--data-dir` (or the default folder), refused when it does not match
/// (shape, classes, class names, or a test set other than the checkpoint's,
/// unless `allow_other`).
pub fn for_checkpoint(
    ckpt: &rr_core::checkpoint::Checkpoint,
    path: &Path,
    data_dir: &Option<PathBuf>,
    allow_other: bool,
) -> Result<(DatasetInfo, Splits)> {
    let info = ckpt.dataset(path)?;
    let (arg, image_size) = of_checkpoint(&info)?;
    let dir = self::data_dir(data_dir, arg)?;
    let data = load(arg, &dir, image_size)?;
    check_same(&info, &data.info, &dir)?;
    if let Err(e) = check_test_set(&ckpt.metadata, &info, &data.test, &dir, &path.display().to_string()) {
        if !allow_other {
            anyhow::bail!("{e:#}: pass --allow-other-dataset to use it anyway");
        }
        eprintln!("warning: {e:#} (--allow-other-dataset)");
    }
    Ok((info, data))
}

/// The test split of the dataset a checkpoint was trained on (the training
/// files are not read), with the checkpoint's description; refused as
/// [`for_checkpoint`] refuses other data.
pub fn test_for_checkpoint(
    ckpt: &rr_core::checkpoint::Checkpoint,
    path: &Path,
    data_dir: &Option<PathBuf>,
    allow_other: bool,
) -> Result<(DatasetInfo, Dataset)> {
    let info = ckpt.dataset(path)?;
    let (arg, image_size) = of_checkpoint(&info)?;
    let dir = self::data_dir(data_dir, arg)?;
    let split = rr_core::data::load_test(&arg.kind(image_size), &dir)?;
    check_test_split(&info, &split.info, &dir)?;
    if let Err(e) = check_test_set(&ckpt.metadata, &info, &split.data, &dir, &path.display().to_string()) {
        if !allow_other {
            anyhow::bail!("{e:#}: pass --allow-other-dataset to use it anyway");
        }
        eprintln!("warning: {e:#} (--allow-other-dataset)");
    }
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

/// Checkpoint metadata keys: the [`fingerprint`] of the training images a run
/// trained on (after `--limit-train`) and of its test set.
pub const TRAIN_DATA_KEY: &str = "train_data_sha256";
pub const TEST_DATA_KEY: &str = "test_data_sha256";

/// The SHA-256 of a split's images, then its labels (as loaded: the same for
/// raw and gzipped files): what tells two datasets of the same shape apart.
pub fn fingerprint(split: &Dataset) -> String {
    let digest = Sha256::new().chain_update(&split.images).chain_update(&split.labels).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The metadata entries that record which data a run uses.
pub fn fingerprint_entries(data: &Splits) -> [(&'static str, String); 2] {
    [(TRAIN_DATA_KEY, fingerprint(&data.train)), (TEST_DATA_KEY, fingerprint(&data.test))]
}

/// The [`fingerprint`]s of the official test sets, to name the dataset a folder
/// holds (checkpoints written before fingerprints were stored are checked against these).
const KNOWN_TEST_SETS: [(&str, &str); 3] = [
    ("mnist", "c3f9adf9c66efb572b1f9326c3a511b45910c7173b97be66ceceeeeaef6b802b"),
    ("fashion-mnist", "9f1ec356a747bfe4ebab3cfb722d3694c9ca737e2570f6f90cf31d7b6fd689d4"),
    ("cifar10", "20d6645e0009462d817872202aded6097f50806f4a288cbbe2a999a7b0a4b318"),
];

fn known_test_set(fingerprint: &str) -> Option<&'static str> {
    KNOWN_TEST_SETS.iter().find(|(_, f)| *f == fingerprint).map(|(name, _)| *name)
}

/// Refuses a test set other than the one a checkpoint was tested on in
/// training: by the fingerprint it stores, or (older checkpoints) when the
/// data is a known dataset other than the known one it names. `subject` names
/// the checkpoint or run in the message.
pub fn check_test_set(meta: &BTreeMap<String, String>, trained: &DatasetInfo, test: &Dataset, dir: &Path, subject: &str) -> Result<()> {
    let got = fingerprint(test);
    let named_known = KNOWN_TEST_SETS.iter().any(|(name, _)| *name == trained.name);
    let matches = match meta.get(TEST_DATA_KEY) {
        Some(expected) => *expected == got,
        None => !named_known || known_test_set(&got).is_none_or(|name| name == trained.name),
    };
    if matches {
        return Ok(());
    }
    let holds = match known_test_set(&got) {
        Some(name) => format!("the {name} test set"),
        None => format!("another test set (SHA-256 {})", &got[..16]),
    };
    anyhow::bail!("{} holds {holds}, but {subject} was trained on {}", dir.display(), describe(trained, meta));
}

/// Refuses to resume a run on other training or test data than it was trained
/// on (when the run recorded its data's fingerprints).
pub fn check_run_data(meta: &BTreeMap<String, String>, trained: &DatasetInfo, data: &Splits, dir: &Path) -> Result<()> {
    check_test_set(meta, trained, &data.test, dir, "the run")?;
    if let Some(expected) = meta.get(TRAIN_DATA_KEY) {
        let got = fingerprint(&data.train);
        if *expected != got {
            anyhow::bail!(
                "{} holds other training images than the run was trained on ({}; SHA-256 {} expected, {} found)",
                dir.display(),
                describe(trained, meta),
                &expected[..expected.len().min(16)],
                &got[..16]
            );
        }
    }
    Ok(())
}

/// "fashion-mnist" or, for a test set of unknown name, "idx with the test set of SHA-256 …".
fn describe(trained: &DatasetInfo, meta: &BTreeMap<String, String>) -> String {
    match meta.get(TEST_DATA_KEY) {
        Some(f) if known_test_set(f).is_none() => format!("{} with the test set of SHA-256 {}", trained.name, &f[..f.len().min(16)]),
        _ => trained.name.clone(),
    }
}
