//! CIFAR-10 and CIFAR-100 loading: synthetic files in the official binary
//! layout (raw and gzipped) round-trip with their labels and pixel layout; bad
//! files give the documented error naming the file, never a panic; the
//! project's real CIFAR-10 copy (shared/data/cifar10) loads and verifies.

use rr_core::data::checksums::sha256_hex;
use rr_core::data::{self, Cifar10, Cifar100, DatasetKind, CIFAR100_CLASSES, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD};
use rr_core::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-data-cifar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The pixel byte `p` (0..3072) of synthetic record `id`.
fn pixel(id: usize, p: usize) -> u8 {
    (id * 31 + p * 7 + p / 1024) as u8
}

/// `labels.len()` records with the given label bytes (1 for CIFAR-10, 2 for CIFAR-100) and synthetic pixels.
fn records(first_id: usize, labels: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, l) in labels.iter().enumerate() {
        out.extend_from_slice(l);
        out.extend((0..3072).map(|p| pixel(first_id + k, p)));
    }
    out
}

const C10_TRAIN: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

/// A CIFAR-10 folder: batch b has b + 1 records, the test batch 4; labels cycle 0..10.
/// Returns the expected train and test labels.
fn fake_cifar10(dir: &Path, gz: bool, sums: bool) -> (Vec<u8>, Vec<u8>) {
    let mut sum_lines = String::new();
    let mut id = 0;
    let mut train = Vec::new();
    let mut write = |name: &str, n: usize, labels_out: &mut Vec<u8>, id: &mut usize| {
        let labels: Vec<Vec<u8>> = (0..n).map(|k| vec![((*id + k) % 10) as u8]).collect();
        labels_out.extend(labels.iter().map(|l| l[0]));
        let bytes = records(*id, &labels);
        *id += n;
        sum_lines.push_str(&format!("{}  {name}\n", sha256_hex(&bytes)));
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
    };
    for (b, name) in C10_TRAIN.iter().enumerate() {
        write(name, b + 1, &mut train, &mut id);
    }
    let mut test = Vec::new();
    write("test_batch.bin", 4, &mut test, &mut id);
    if sums {
        std::fs::write(dir.join("SHA256SUMS.raw"), sum_lines).unwrap();
    }
    (train, test)
}

fn dataset_msg<T: std::fmt::Debug>(r: rr_core::Result<T>) -> (PathBuf, String) {
    match r {
        Err(Error::Dataset { path, msg }) => (path, msg),
        other => panic!("expected a dataset error, got {other:?}"),
    }
}

#[test]
fn cifar10_round_trips_raw_and_gzipped() {
    for gz in [false, true] {
        let dir = tmpdir(&format!("c10-{gz}"));
        let (train_labels, test_labels) = fake_cifar10(&dir, gz, gz);
        let s = Cifar10::load(&dir).unwrap();
        assert_eq!(s.verified, gz, "checksums were written only for the gzipped copy");
        assert_eq!((s.train.len, s.test.len), (15, 4));
        assert_eq!(s.train.shape, [3, 32, 32]);
        assert_eq!(s.train.images.len(), 15 * 3072);
        assert_eq!(s.train.labels, train_labels);
        assert_eq!(s.test.labels, test_labels);
        // Records keep their file order and their bytes: R plane, G plane, B plane, rows top to bottom = (C, H, W).
        for (split, first_id) in [(&s.train, 0), (&s.test, 15)] {
            for k in 0..split.len {
                let img = split.image(k);
                assert!(img.iter().enumerate().all(|(p, &v)| v == pixel(first_id + k, p)), "record {k}");
            }
        }
        // No batches.meta.txt: the standard names. The description is complete.
        assert_eq!(s.info.class_names, CIFAR10_CLASSES.map(String::from).to_vec());
        assert_eq!((s.info.name.as_str(), s.info.classes, s.info.shape), ("cifar10", 10, [3, 32, 32]));
        assert_eq!((s.info.mean.clone(), s.info.std.clone()), (CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec()));
        s.info.validate().unwrap();
    }
}

#[test]
fn cifar10_names_file_subfolder_and_entry_point() {
    let root = tmpdir("c10-sub");
    // The official archive unpacks to cifar-10-batches-bin/: pointing at its parent works.
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    fake_cifar10(&dir, false, false);
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    // Blank lines (the official file ends with some) and surrounding spaces are ignored.
    std::fs::write(
        dir.join("batches.meta.txt"),
        format!("{}\n\n\n", names.iter().map(|n| format!("  {n} ")).collect::<Vec<_>>().join("\n")),
    )
    .unwrap();
    let s = data::load(&DatasetKind::Cifar10, &root).unwrap();
    assert_eq!(s.dir, dir);
    assert_eq!(s.info.class_names, names);
    // A names file with the wrong number of names names itself.
    std::fs::write(dir.join("batches.meta.txt"), "a\nb\n").unwrap();
    let (path, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(path.ends_with("batches.meta.txt") && msg.contains("2 class names"), "{msg}");
}

#[test]
fn cifar10_bad_files_name_the_file() {
    let dir = tmpdir("c10-bad");
    fake_cifar10(&dir, false, false);
    let batch3 = dir.join("data_batch_3.bin");
    let good3 = std::fs::read(&batch3).unwrap();

    // Wrong record size (a few bytes too many).
    std::fs::write(&batch3, [&good3[..], &[0u8; 5]].concat()).unwrap();
    let (path, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(path.ends_with("data_batch_3.bin") && msg.contains("not a multiple of the 3073-byte"), "{path:?}: {msg}");
    // Truncated file (cut mid-record).
    std::fs::write(&batch3, &good3[..good3.len() - 100]).unwrap();
    let err = Cifar10::load(&dir).unwrap_err().to_string();
    assert!(err.contains("data_batch_3.bin") && err.contains("truncated"), "{err}");
    // A CIFAR-100 file where a CIFAR-10 one belongs gets a hint.
    std::fs::write(&batch3, records(0, &[vec![0, 0], vec![1, 1], vec![2, 2]])).unwrap();
    let (_, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(msg.contains("CIFAR-100 record size"), "{msg}");
    // Empty file.
    std::fs::write(&batch3, b"").unwrap();
    let (path, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(path.ends_with("data_batch_3.bin") && msg.contains("no records"), "{msg}");
    // Label out of range.
    let mut bad_label = good3.clone();
    bad_label[3073] = 10;
    std::fs::write(&batch3, &bad_label).unwrap();
    let (path, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(path.ends_with("data_batch_3.bin") && msg.contains("record 1: label 10 is out of range 0..10"), "{msg}");
    std::fs::write(&batch3, &good3).unwrap();
    Cifar10::load(&dir).unwrap();

    // A corrupt or truncated gzip file.
    let gz = gzip(&good3);
    std::fs::remove_file(&batch3).unwrap();
    std::fs::write(dir.join("data_batch_3.bin.gz"), &gz[..gz.len() / 2]).unwrap();
    let (path, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(path.ends_with("data_batch_3.bin.gz") && msg.contains("gzip"), "{msg}");
    std::fs::write(dir.join("data_batch_3.bin.gz"), &gz).unwrap();
    Cifar10::load(&dir).unwrap();

    // A checksum mismatch names the file; a malformed checksum file is an error.
    std::fs::write(dir.join("SHA256SUMS.raw"), format!("{}  data_batch_2.bin\n", "ab".repeat(32))).unwrap();
    match Cifar10::load(&dir) {
        Err(Error::Checksum { path, expected, .. }) => {
            assert!(path.ends_with("data_batch_2.bin"), "{path:?}");
            assert_eq!(expected, "ab".repeat(32));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    std::fs::write(dir.join("SHA256SUMS.raw"), "garbage\n").unwrap();
    let (path, _) = dataset_msg(Cifar10::load(&dir));
    assert!(path.ends_with("SHA256SUMS.raw"));
    std::fs::remove_file(dir.join("SHA256SUMS.raw")).unwrap();

    // A missing file.
    std::fs::remove_file(dir.join("test_batch.bin")).unwrap();
    let (_, msg) = dataset_msg(Cifar10::load(&dir));
    assert!(msg.contains("missing test_batch.bin"), "{msg}");
    // Not a folder.
    let (_, msg) = dataset_msg(Cifar10::load(&dir.join("nope")));
    assert!(msg.contains("not a folder"), "{msg}");
}

#[test]
fn cifar_garbage_never_panics() {
    let dir = tmpdir("c-garbage");
    fake_cifar10(&dir, false, false);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for len in [0, 1, 2, 3072, 3073, 3074, 6146, 6148, 9219, 20000] {
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        std::fs::write(dir.join("train.bin"), &bytes).unwrap();
        std::fs::write(dir.join("test.bin"), &bytes).unwrap();
        let _ = Cifar10::load(&dir);
        let _ = Cifar100::load(&dir);
    }
}

/// A CIFAR-100 folder: `n_train` and `n_test` records with fine label = (id * 7) % 100.
fn fake_cifar100(dir: &Path, n_train: usize, n_test: usize, gz: bool) -> (Vec<u8>, Vec<u8>) {
    let labels =
        |first: usize, n: usize| -> Vec<Vec<u8>> { (first..first + n).map(|id| vec![(id % 20) as u8, ((id * 7) % 100) as u8]).collect() };
    let mut sums = String::new();
    let mut out = Vec::new();
    for (name, first, n) in [("train.bin", 0, n_train), ("test.bin", n_train, n_test)] {
        let l = labels(first, n);
        let bytes = records(first, &l);
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&bytes)));
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
        out.push(l.iter().map(|l| l[1]).collect());
    }
    std::fs::write(dir.join("SHA256SUMS.raw"), sums).unwrap();
    (out.remove(0), out.remove(0))
}

#[test]
fn cifar100_round_trips_with_fine_labels() {
    for gz in [false, true] {
        let dir = tmpdir(&format!("c100-{gz}"));
        let (train, test) = fake_cifar100(&dir, 23, 5, gz);
        let s = data::load(&DatasetKind::Cifar100, &dir).unwrap();
        assert!(s.verified);
        assert_eq!((s.train.len, s.test.len), (23, 5));
        assert_eq!((s.train.labels.clone(), s.test.labels.clone()), (train, test));
        for k in 0..23 {
            assert!(s.train.image(k).iter().enumerate().all(|(p, &v)| v == pixel(k, p)), "record {k}");
        }
        assert_eq!((s.info.name.as_str(), s.info.classes), ("cifar100", 100));
        assert_eq!(s.info.class_names, CIFAR100_CLASSES.map(String::from).to_vec());
        assert_eq!(s.info.mean, vec![0.5071, 0.4865, 0.4409]);
        assert_eq!(s.info.std, vec![0.2673, 0.2564, 0.2762]);
        s.info.validate().unwrap();
    }
}

#[test]
fn cifar100_bad_files_name_the_file() {
    let dir = tmpdir("c100-bad");
    fake_cifar100(&dir, 4, 2, false);
    std::fs::remove_file(dir.join("SHA256SUMS.raw")).unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("fine{i}")).collect();
    std::fs::write(dir.join("fine_label_names.txt"), names.join("\n")).unwrap();
    assert_eq!(Cifar100::load(&dir).unwrap().info.class_names, names);
    std::fs::write(dir.join("fine_label_names.txt"), "x\ny\n").unwrap();
    let (path, _) = dataset_msg(Cifar100::load(&dir));
    assert!(path.ends_with("fine_label_names.txt"));
    std::fs::remove_file(dir.join("fine_label_names.txt")).unwrap();

    let good = std::fs::read(dir.join("test.bin")).unwrap();
    let mut fine = good.clone();
    fine[3074 + 1] = 100;
    std::fs::write(dir.join("test.bin"), &fine).unwrap();
    let (path, msg) = dataset_msg(Cifar100::load(&dir));
    assert!(path.ends_with("test.bin") && msg.contains("record 1: fine label 100 is out of range 0..100"), "{msg}");
    let mut coarse = good.clone();
    coarse[0] = 20;
    std::fs::write(dir.join("test.bin"), &coarse).unwrap();
    let (_, msg) = dataset_msg(Cifar100::load(&dir));
    assert!(msg.contains("record 0: coarse label 20 is out of range 0..20"), "{msg}");
    // CIFAR-10-sized records in a CIFAR-100 file.
    std::fs::write(dir.join("test.bin"), records(0, &[vec![1], vec![2]])).unwrap();
    let (_, msg) = dataset_msg(Cifar100::load(&dir));
    assert!(msg.contains("not a multiple of the 3074-byte") && msg.contains("CIFAR-10 record size"), "{msg}");
    std::fs::remove_file(dir.join("test.bin")).unwrap();
    let (_, msg) = dataset_msg(Cifar100::load(&dir));
    assert!(msg.contains("missing test.bin"), "{msg}");
}

/// The project's CIFAR-10 copy: `shared/` sits beside the repository.
fn shared_cifar10() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10")
}

#[test]
fn real_cifar10_loads_and_verifies() {
    let dir = shared_cifar10();
    assert!(
        dir.join("data_batch_1.bin.gz").is_file(),
        "the real CIFAR-10 copy is missing: looked for {} (resolved: {:?}); shared/ must sit beside the repository",
        dir.join("data_batch_1.bin.gz").display(),
        std::fs::canonicalize(&dir).ok()
    );
    let start = std::time::Instant::now();
    let s = data::load(&DatasetKind::Cifar10, &dir).unwrap();
    let took = start.elapsed();
    eprintln!("real CIFAR-10 loaded in {:.2} s", took.as_secs_f64());
    assert!(s.verified, "{} ships SHA256SUMS.raw listing every batch", dir.display());
    assert_eq!((s.train.len, s.test.len), (50_000, 10_000));
    assert_eq!(s.train.images.len(), 50_000 * 3072);
    assert_eq!(s.test.images.len(), 10_000 * 3072);
    assert_eq!(s.info.class_names, CIFAR10_CLASSES.map(String::from).to_vec());
    for (split, per_class) in [(&s.train, 5000), (&s.test, 1000)] {
        let mut counts = [0usize; 10];
        split.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert!(counts.iter().all(|&c| c.abs_diff(per_class) <= per_class / 20), "{counts:?}");
        // The first records already mix the classes (the copy is shuffled).
        let mut first = [0usize; 10];
        split.labels[..1000].iter().for_each(|&l| first[l as usize] += 1);
        assert!(first.iter().all(|&c| c > 50), "{first:?}");
    }
    // The pixel layout is right: the per-channel statistics are CIFAR-10's known ones (R, G, B in that order).
    let (mean, std) = data::channel_stats(&s.train.images, s.train.shape);
    for c in 0..3 {
        assert!((mean[c] - CIFAR10_MEAN[c]).abs() < 1e-3, "channel {c}: mean {mean:?}");
        assert!((std[c] - CIFAR10_STD[c]).abs() < 1e-3, "channel {c}: std {std:?}");
    }
}
