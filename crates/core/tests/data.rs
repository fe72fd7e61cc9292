//! IDX and MNIST loading: good files round-trip; truncated, wrong-magic,
//! wrong-dimension, corrupt and garbage files give the documented error, never a panic.

use rr_core::data::idx::{encode_idx, parse_idx, read_idx};
use rr_core::data::{self, DatasetInfo, DatasetKind, Mnist};
use rr_core::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_msg(result: rr_core::Result<rr_core::data::IdxArray>) -> String {
    match result {
        Err(Error::Idx { msg, .. }) => msg,
        other => panic!("expected an IDX error, got {other:?}"),
    }
}

#[test]
fn idx_round_trips_raw_and_gzipped() {
    let dir = tmpdir("roundtrip");
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let bytes = encode_idx(&[2, 3, 4], &data);
    std::fs::write(dir.join("a.idx"), &bytes).unwrap();
    std::fs::write(dir.join("a.idx.gz"), gzip(&bytes)).unwrap();
    for name in ["a.idx", "a.idx.gz"] {
        let arr = read_idx(&dir.join(name)).unwrap();
        assert_eq!(arr.dims, vec![2, 3, 4]);
        assert_eq!(arr.data, data);
    }
}

#[test]
fn idx_errors_say_what_is_wrong() {
    let p = Path::new("x.idx");
    let good = encode_idx(&[3, 2], &[1, 2, 3, 4, 5, 6]);
    assert!(idx_msg(parse_idx(good[..good.len() - 1].to_vec(), p)).contains("truncated"));
    assert!(idx_msg(parse_idx([good.clone(), vec![0]].concat(), p)).contains("trailing"));
    let mut bad_magic = good.clone();
    bad_magic[0] = 0x42;
    assert!(idx_msg(parse_idx(bad_magic, p)).contains("bad magic"));
    let mut bad_type = good.clone();
    bad_type[2] = 0x0d;
    assert!(idx_msg(parse_idx(bad_type, p)).contains("not supported"));
    let mut no_dims = good.clone();
    no_dims[3] = 0;
    assert!(idx_msg(parse_idx(no_dims, p)).contains("dimensions"));
    let mut many_dims = good.clone();
    many_dims[3] = 9;
    assert!(idx_msg(parse_idx(many_dims, p)).contains("dimensions"));
    assert!(idx_msg(parse_idx(good[..6].to_vec(), p)).contains("truncated header"));
    assert!(idx_msg(parse_idx(vec![0, 0], p)).contains("shorter than"));
    // Huge dimensions must not overflow or allocate.
    let huge = encode_idx(&[u32::MAX as usize, u32::MAX as usize, u32::MAX as usize], &[]);
    assert!(!idx_msg(parse_idx(huge, p)).is_empty());
    // The error names the file.
    let err = parse_idx(vec![1], Path::new("/some/file.idx")).unwrap_err().to_string();
    assert!(err.contains("/some/file.idx"), "{err}");
}

#[test]
fn idx_garbage_and_corrupt_gzip_never_panic() {
    let dir = tmpdir("garbage");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = parse_idx(bytes, Path::new("garbage"));
    }
    let good = gzip(&encode_idx(&[10, 10], &[7; 100]));
    for cut in [3, 10, good.len() / 2, good.len() - 4] {
        let path = dir.join(format!("cut{cut}.gz"));
        std::fs::write(&path, &good[..cut]).unwrap();
        assert!(read_idx(&path).is_err(), "a truncated gzip file must be an error");
    }
    let mut flipped = good.clone();
    flipped[20] ^= 0xff;
    std::fs::write(dir.join("flipped.gz"), &flipped).unwrap();
    assert!(read_idx(&dir.join("flipped.gz")).is_err());
    assert!(matches!(read_idx(&dir.join("missing.gz")), Err(Error::Io { .. })));
}

fn repo_mnist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

#[test]
fn mnist_loads_and_verifies_the_shipped_files() {
    let m = Mnist::load(&repo_mnist()).unwrap();
    assert!(m.verified, "data/mnist ships SHA256SUMS.raw");
    assert_eq!((m.train.len, m.test.len), (60_000, 10_000));
    assert_eq!(m.train.shape, [1, 28, 28]);
    assert_eq!(m.info, rr_core::data::DatasetInfo::mnist());
    assert_eq!(m.train.images.len(), 60_000 * 784);
    // Every class is present in both splits.
    for split in [&m.train, &m.test] {
        let mut counts = [0usize; 10];
        split.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}

/// A small fake MNIST folder (raw files) with `n` training and test samples.
fn fake_mnist(dir: &Path, n: usize, labels: &[u8]) {
    for split in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), encode_idx(&[n, 28, 28], &vec![9; n * 784])).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), encode_idx(&[labels.len()], labels)).unwrap();
    }
}

#[test]
fn mnist_errors_name_the_file() {
    let dir = tmpdir("mnist-bad");
    fake_mnist(&dir, 3, &[1, 2, 3]);
    let m = Mnist::load(&dir).unwrap();
    assert!(!m.verified);
    assert_eq!(m.train.len, 3);

    // A checksum mismatch names the file.
    std::fs::write(dir.join("SHA256SUMS.raw"), format!("{}  train-labels-idx1-ubyte\n", "ab".repeat(32))).unwrap();
    match Mnist::load(&dir) {
        Err(Error::Checksum { path, .. }) => assert!(path.ends_with("train-labels-idx1-ubyte")),
        other => panic!("expected a checksum error, got {other:?}"),
    }
    std::fs::write(dir.join("SHA256SUMS.raw"), "not a checksum line\n").unwrap();
    assert!(matches!(Mnist::load(&dir), Err(Error::Dataset { .. })));
    std::fs::remove_file(dir.join("SHA256SUMS.raw")).unwrap();

    // Label count differs from image count.
    fake_mnist(&dir, 3, &[1, 2]);
    let err = Mnist::load(&dir).unwrap_err().to_string();
    assert!(err.contains("train-labels-idx1-ubyte") && err.contains("expected 3 labels"), "{err}");
    // Label out of range.
    fake_mnist(&dir, 3, &[1, 2, 10]);
    assert!(Mnist::load(&dir).unwrap_err().to_string().contains("out of range"));
    // A missing file.
    fake_mnist(&dir, 3, &[1, 2, 3]);
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
    let err = Mnist::load(&dir).unwrap_err().to_string();
    assert!(err.contains("missing t10k-images-idx3-ubyte"), "{err}");
    // Not a folder.
    assert!(Mnist::load(&dir.join("nope")).unwrap_err().to_string().contains("not a folder"));
}

#[test]
fn dataset_kind_names_parse_and_serialize() {
    let kinds = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::ImageFolder { image_size: 48 },
        DatasetKind::Idx,
    ];
    for (kind, name) in kinds.iter().zip(DatasetKind::NAMES) {
        assert_eq!(kind.name(), name);
        assert_eq!(kind.to_string().parse::<DatasetKind>().unwrap(), *kind);
        let json = serde_json::to_string(kind).unwrap();
        assert!(json.contains(name), "{json}");
        assert_eq!(serde_json::from_str::<DatasetKind>(&json).unwrap(), *kind);
    }
    assert_eq!(serde_json::to_string(&DatasetKind::FashionMnist).unwrap(), "\"fashion-mnist\"");
    assert_eq!("image-folder".parse::<DatasetKind>().unwrap(), DatasetKind::ImageFolder { image_size: 32 });
    assert_eq!("image-folder:64".parse::<DatasetKind>().unwrap(), DatasetKind::ImageFolder { image_size: 64 });
    assert_eq!("CIFAR10".parse::<DatasetKind>().unwrap(), DatasetKind::Cifar10);
    for bad in ["imagenet", "", "image-folder:0", "image-folder:2000", "image-folder:x"] {
        let err = bad.parse::<DatasetKind>().unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
    }
}

/// An IDX folder with the given image dimensions (first = count) and labels for both splits.
fn fake_idx(dir: &Path, dims: &[usize], labels: &[u8], gz: bool) {
    let n: usize = dims.iter().product();
    for split in ["train", "t10k"] {
        let images: Vec<u8> = (0..n).map(|i| (i * 13 % 251) as u8).collect();
        let files = [
            (format!("{split}-images-idx3-ubyte"), encode_idx(dims, &images)),
            (format!("{split}-labels-idx1-ubyte"), encode_idx(&[labels.len()], labels)),
        ];
        for (name, bytes) in files {
            let _ = std::fs::remove_file(dir.join(&name));
            let _ = std::fs::remove_file(dir.join(format!("{name}.gz")));
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}

#[test]
fn idx_kind_reads_any_size_and_channels() {
    let dir = tmpdir("idx-any");
    // 3-D: one channel of 5x7; classes = largest label + 1.
    fake_idx(&dir, &[4, 5, 7], &[0, 3, 1, 2], true);
    let s = data::load(&DatasetKind::Idx, &dir).unwrap();
    assert_eq!((s.train.shape, s.train.len, s.test.len), ([1, 5, 7], 4, 4));
    assert_eq!((s.info.name.as_str(), s.info.classes, s.info.shape), ("idx", 4, [1, 5, 7]));
    assert_eq!(s.info.class_names, ["0", "1", "2", "3"]);
    let (mean, std) = data::channel_stats(&s.train.images, s.train.shape);
    assert_eq!((s.info.mean.clone(), s.info.std.clone()), (mean.clone(), std));
    let expected_mean = s.train.images.iter().map(|&p| p as f64).sum::<f64>() / s.train.images.len() as f64 / 255.0;
    assert!((mean[0] as f64 - expected_mean).abs() < 1e-6);
    s.info.validate().unwrap();
    // 4-D: (n, C, rows, cols), with class names from classes.txt.
    fake_idx(&dir, &[3, 3, 4, 4], &[0, 1, 0], false);
    std::fs::write(dir.join("classes.txt"), "cat\ndog\n\nbird\n").unwrap();
    let s = data::load(&DatasetKind::Idx, &dir).unwrap();
    assert_eq!((s.train.shape, s.info.classes), ([3, 4, 4], 3));
    assert_eq!(s.info.class_names, ["cat", "dog", "bird"]);
    assert_eq!((s.info.mean.len(), s.info.std.len()), (3, 3));
    // Too few names for the labels.
    std::fs::write(dir.join("classes.txt"), "cat\n").unwrap();
    let err = data::load(&DatasetKind::Idx, &dir).unwrap_err().to_string();
    assert!(err.contains("classes.txt") && err.contains("labels go up to 1"), "{err}");
    std::fs::remove_file(dir.join("classes.txt")).unwrap();
    // Too many channels, 2-D images, and differing train/test shapes are errors.
    fake_idx(&dir, &[2, 5, 3, 3], &[0, 1], false);
    assert!(data::load(&DatasetKind::Idx, &dir).unwrap_err().to_string().contains("5 channels"));
    fake_idx(&dir, &[2, 9], &[0, 1], false);
    assert!(data::load(&DatasetKind::Idx, &dir).unwrap_err().to_string().contains("3 dimensions"));
    fake_idx(&dir, &[2, 6, 6], &[0, 1], false);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), encode_idx(&[2, 6, 5], &[1; 60])).unwrap();
    let err = data::load(&DatasetKind::Idx, &dir).unwrap_err().to_string();
    assert!(err.contains("test images are [1, 6, 5]"), "{err}");
    // No images.
    fake_idx(&dir, &[0, 6, 6], &[], false);
    assert!(data::load(&DatasetKind::Idx, &dir).unwrap_err().to_string().contains("no images"));
}

#[test]
fn mnist_and_fashion_keep_their_shapes() {
    let dir = tmpdir("mnist-shape");
    fake_idx(&dir, &[2, 20, 20], &[0, 1], false);
    for kind in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
        let err = data::load(&kind, &dir).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("are 28x28") && err.contains("`idx`"), "{err}");
    }
    assert_eq!(data::load(&DatasetKind::Idx, &dir).unwrap().train.shape, [1, 20, 20]);
    fake_mnist(&dir, 2, &[4, 9]);
    let s = data::load(&DatasetKind::FashionMnist, &dir).unwrap();
    assert_eq!(s.info, DatasetInfo::fashion_mnist());
    assert_eq!(data::load(&DatasetKind::Mnist, &dir).unwrap().info, DatasetInfo::mnist());
}

#[test]
fn shared_fashion_mnist_loads() {
    // The project's copy of Fashion-MNIST: `shared/` sits beside the repository.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    assert!(dir.is_dir(), "Fashion-MNIST is missing: looked in {}; shared/ must sit beside the repository", dir.display());
    let s = data::load(&DatasetKind::FashionMnist, &dir).unwrap();
    assert_eq!((s.train.len, s.test.len), (60_000, 10_000));
    assert!(s.verified, "{} ships SHA256SUMS.raw", dir.display());
    assert_eq!(s.info.class_names[9], "Ankle boot");
}
