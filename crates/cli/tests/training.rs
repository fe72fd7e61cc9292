//! Training behaviours end to end on the CPU: resuming is bit-identical to
//! training straight through, the same seed gives the same run, the
//! optimizers and schedules train, and a diverging run stops with a clear
//! message while the last good checkpoint stays intact.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rusty-recognition"));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    c
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-training-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A small, fast MLP run with the given extra options.
fn train(out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--device", "cpu", "--threads", "2", "--model", "mlp", "--mlp-sizes", "784,32,10", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    out.into_owned()
}

fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    rr_core::checkpoint::load(path).unwrap().tensors
}

/// metrics.csv without the timing columns (seconds, images_per_sec).
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            [&f[..5], &f[7..]].concat().join(",")
        })
        .collect()
}

#[test]
fn resuming_is_bit_identical_to_training_straight_through() {
    for opt in [&["--optimizer", "sgd", "--nesterov"][..], &["--optimizer", "adam", "--lr", "0.001"][..]] {
        let (split, straight) = (tmpdir("split"), tmpdir("straight"));
        let schedule = ["--schedule", "step", "--milestones", "2,5", "--gamma", "0.5"];
        ok(&train(&split, &[&["--epochs", "4"][..], opt, &schedule].concat()));
        let out = ok(&bin()
            .args(["train", "--device", "cpu", "--threads", "2", "--epochs", "6", "--resume"])
            .arg(split.join("model.safetensors"))
            .output()
            .unwrap());
        assert!(out.contains("resuming") && out.contains("epoch  5/6") && !out.contains("epoch  1/6"), "{out}");
        ok(&train(&straight, &[&["--epochs", "6"][..], opt, &schedule].concat()));
        let (a, b) = (tensors(&split.join("model.safetensors")), tensors(&straight.join("model.safetensors")));
        assert_eq!(a.len(), b.len());
        for ((na, _, va), (nb, _, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{opt:?}: {na} differs after resuming");
        }
        assert_eq!(metrics(&split), metrics(&straight), "{opt:?}: the resumed metrics differ");
        assert!(split.join("best.safetensors").is_file());
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let (a, b, c) = (tmpdir("seed-a"), tmpdir("seed-b"), tmpdir("seed-c"));
    ok(&train(&a, &["--epochs", "2", "--seed", "7"]));
    ok(&train(&b, &["--epochs", "2", "--seed", "7"]));
    ok(&train(&c, &["--epochs", "2", "--seed", "8"]));
    assert_eq!(metrics(&a), metrics(&b));
    assert!(tensors(&a.join("model.safetensors")) == tensors(&b.join("model.safetensors")), "the same seed gave other weights");
    assert_ne!(metrics(&a), metrics(&c), "another seed must give another run");
}

#[test]
fn optimizers_and_schedules_train() {
    for opt in [
        &["--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.01", "--schedule", "onecycle"][..],
        &["--optimizer", "sgd", "--lr", "0.05", "--schedule", "cosine", "--warmup-epochs", "0.5", "--init", "he"][..],
        &["--optimizer", "adam", "--lr", "0.001", "--init", "xavier"][..],
    ] {
        let out = tmpdir("opt");
        ok(&train(&out, &[&["--epochs", "2"][..], opt].concat()));
        let last = metrics(&out).pop().unwrap();
        let acc: f64 = last.split(',').nth(4).unwrap().parse().unwrap();
        assert!(acc > 0.9, "{opt:?}: test accuracy {acc}");
    }
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let out = tmpdir("diverge");
    // Epoch 1 trains normally; from epoch 2 the rate is multiplied by 1e7.
    let o = train(&out, &["--epochs", "3", "--schedule", "step", "--milestones", "1", "--gamma", "1e7"]);
    assert!(!o.status.success(), "a diverging run must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("training diverged in epoch 2 at step") && err.contains("last good checkpoint (epoch 1)"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let ckpt = rr_core::checkpoint::load(&out.join("model.safetensors")).unwrap();
    assert_eq!(ckpt.metadata["epoch"], "1");
    assert!(ckpt.tensors.iter().all(|(_, _, v)| v.iter().all(|x| x.is_finite())));
}

/// The strong model, tiny and on a slice of MNIST: BatchNorm, dropout and augmentation in play.
fn train_cnn(out: &Path, extra: &[&str]) -> Output {
    bin().args(["train", "--device", "cpu", "--threads", "2", "--model", "mnist-cnn", "--out"]).arg(out).args(extra).output().unwrap()
}

#[test]
fn the_strong_model_resumes_bit_identically_with_batchnorm_dropout_and_augmentation() {
    let (split, straight) = (tmpdir("cnn-split"), tmpdir("cnn-straight"));
    // (A step schedule: one-cycle and cosine plan over --epochs, so "4, then 2 more" would be another run.)
    let common = [
        "--width",
        "4",
        "--dropout",
        "0.3",
        "--limit-train",
        "1024",
        "--elastic",
        "1",
        "--noise",
        "0.05",
        "--schedule",
        "step",
        "--milestones",
        "2,5",
    ];
    let out = ok(&train_cnn(&split, &[&["--epochs", "4"][..], &common].concat()));
    assert!(out.contains("augmentation: rotate ±10°"), "{out}");
    ok(&bin()
        .args(["train", "--device", "cpu", "--threads", "2", "--epochs", "6", "--resume"])
        .arg(split.join("model.safetensors"))
        .output()
        .unwrap());
    ok(&train_cnn(&straight, &[&["--epochs", "6"][..], &common].concat()));
    let (a, b) = (tensors(&split.join("model.safetensors")), tensors(&straight.join("model.safetensors")));
    assert_eq!(a.len(), b.len());
    let mut buffers = 0;
    for ((na, _, va), (nb, _, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        buffers += na.contains("running_") as usize;
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{na} differs after resuming");
    }
    assert_eq!(buffers, 10, "every BatchNorm's running mean and variance is saved");
    let tracked = a.iter().find(|(n, _, _)| n == "bn1.num_batches_tracked").expect("num_batches_tracked saved");
    assert_eq!(tracked.2, vec![6.0 * 8.0], "6 epochs of 8 steps");
    assert_eq!(metrics(&split), metrics(&straight), "the resumed metrics differ");
}

#[test]
fn a_short_run_of_the_strong_model_learns() {
    let out = tmpdir("cnn-learns");
    ok(&train_cnn(&out, &["--width", "8", "--limit-train", "12800", "--epochs", "1"]));
    let last = metrics(&out).pop().unwrap();
    let acc: f64 = last.split(',').nth(4).unwrap().parse().unwrap();
    assert!(acc > 0.6, "100 steps of mnist-cnn: test accuracy {acc} (chance is 0.1)");
    // eval in inference mode (running statistics) reproduces the training run's figure.
    let eval = ok(&bin().args(["eval", "--device", "cpu", "--checkpoint"]).arg(out.join("model.safetensors")).output().unwrap());
    assert!(eval.contains(&format!("test_acc {:.2}%", 100.0 * acc)), "{eval} vs {acc}");
}
