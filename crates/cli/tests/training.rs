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
        // Eight steps an epoch (not the smaller batches a default short run gets).
        "--batch-size",
        "128",
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
    // Batch 128 as before short runs got smaller batches (which learn more, but take longer on the CPU).
    ok(&train_cnn(&out, &["--width", "8", "--limit-train", "12800", "--epochs", "1", "--batch-size", "128"]));
    let last = metrics(&out).pop().unwrap();
    let acc: f64 = last.split(',').nth(4).unwrap().parse().unwrap();
    assert!(acc > 0.6, "100 steps of mnist-cnn: test accuracy {acc} (chance is 0.1)");
    // eval in inference mode (running statistics) reproduces the training run's figure.
    let eval = ok(&bin().args(["eval", "--device", "cpu", "--checkpoint"]).arg(out.join("model.safetensors")).output().unwrap());
    assert!(eval.contains(&format!("test_acc {:.2}%", 100.0 * acc)), "{eval} vs {acc}");
}

/// The default recipe learns however short the run: 3,000 images for one
/// epoch (24 steps at batch 128, near chance before short runs got smaller
/// batches) pass 80% on the MNIST test set.
#[test]
fn a_short_run_of_the_default_recipe_learns() {
    let out = tmpdir("short-default");
    let stdout = ok(&bin()
        .args(["train", "--device", "cpu", "--threads", "2", "--limit-train", "3000", "--epochs", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    assert!(stdout.contains("short run: batch 32 and lr 0.025"), "{stdout}");
    let acc: f64 = metrics(&out).pop().unwrap().split(',').nth(4).unwrap().parse().unwrap();
    assert!(acc >= 0.80, "the default recipe on 3000 images, 1 epoch: test accuracy {acc}");
}

/// steps.csv's rows: (epoch, step, loss, accuracy, lr, images/s).
fn step_rows(dir: &Path) -> Vec<(usize, usize, f64, f64, f64, f64)> {
    let csv = std::fs::read_to_string(dir.join("steps.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("epoch,step,loss,accuracy,lr,images_per_sec"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            let x = |i: usize| f[i].parse::<f64>().unwrap();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), x(2), x(3), x(4), x(5))
        })
        .collect()
}

/// --log-interval prints a line and writes a steps.csv row every N steps of
/// the run; a resumed run takes a new --lr (header, schedule, metrics.csv's
/// mean lr) and appends to steps.csv.
#[test]
fn step_logs_and_a_resumed_run_with_a_new_learning_rate() {
    let out = tmpdir("steps");
    let common = ["--limit-train", "1000", "--batch-size", "100", "--schedule", "constant", "--log-interval", "3"];
    let first = ok(&train(&out, &[&["--epochs", "1"][..], &common].concat()));
    assert_eq!(first.lines().filter(|l| l.starts_with("step ")).count(), 3, "{first}");
    let resumed = ok(&bin()
        .args(["train", "--device", "cpu", "--threads", "2", "--epochs", "2", "--lr", "0.05", "--log-interval", "3", "--resume"])
        // (Any file of the run names it, its training state too.)
        .arg(out.join("train_state.safetensors"))
        .output()
        .unwrap());
    assert!(resumed.contains("resuming") && resumed.contains("sgd lr 0.05,"), "{resumed}");
    let rows = step_rows(&out);
    // 10 steps an epoch: steps 3, 6, 9, then 12, 15, 18 of the run.
    let steps: Vec<(usize, usize)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(steps, [(1, 3), (1, 6), (1, 9), (2, 12), (2, 15), (2, 18)]);
    for &(epoch, _, loss, acc, lr, rate) in &rows {
        assert!(loss.is_finite() && loss > 0.0 && (0.0..=1.0).contains(&acc) && rate > 0.0, "{rows:?}");
        assert_eq!(lr, if epoch == 1 { 0.1 } else { 0.05 });
    }
    assert!(rows[5].2 < rows[0].2, "the loss falls: {rows:?}");
    let lrs: Vec<String> = metrics(&out).iter().skip(1).map(|r| r.rsplit(',').next().unwrap().to_string()).collect();
    assert_eq!(lrs, ["0.1", "0.05"], "metrics.csv's lr is each epoch's mean");
}

/// `--config RUN/config.json` repeats a run exactly; options given beside it
/// win, and a TOML file of options works the same way.
#[test]
fn a_run_config_repeats_the_run_and_options_override_it() {
    let (a, b, c, d) = (tmpdir("cfg-a"), tmpdir("cfg-b"), tmpdir("cfg-c"), tmpdir("cfg-d"));
    ok(&train(&a, &["--limit-train", "2000", "--epochs", "2", "--seed", "3", "--batch-size", "100", "--lr", "0.1"]));
    let config = std::fs::read_to_string(a.join("config.json")).unwrap();
    assert!(config.contains("\"lr\": 0.1,") && !config.contains("0.1000000"), "f32 values are written as given:\n{config}");
    let rerun = |out: &Path, extra: &[&str]| {
        ok(&bin()
            .args(["train", "--device", "cpu", "--threads", "2", "--config"])
            .arg(a.join("config.json"))
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap())
    };
    rerun(&b, &[]);
    assert_eq!(metrics(&a), metrics(&b), "the repeated run differs");
    assert!(tensors(&a.join("model.safetensors")) == tensors(&b.join("model.safetensors")), "the repeated run has other weights");
    let header = rerun(&c, &["--lr", "0.05"]);
    assert!(header.contains("sgd lr 0.05,") && header.contains("2000 train"), "{header}");
    assert_ne!(metrics(&a), metrics(&c), "--lr beside --config must take effect");

    let toml = d.with_extension("toml");
    std::fs::write(&toml, "model = \"mlp\"\nmlp-sizes = [784, 16, 10]\nlimit-train = 1000\nepochs = 1\nbatch-size = 100\n").unwrap();
    let o = ok(&bin()
        .args(["train", "--device", "cpu", "--threads", "2", "--epochs", "2", "--config"])
        .arg(&toml)
        .arg("--out")
        .arg(&d)
        .output()
        .unwrap());
    assert!(o.contains("training mlp (12730 parameters)") && o.contains("1000 train") && o.contains("2 epochs, batch 100"), "{o}");
    std::fs::write(&toml, "learning-rate = 0.1\n").unwrap();
    let o = bin().args(["train", "--config"]).arg(&toml).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("unknown field `learning-rate`") && err.contains(toml.to_str().unwrap()), "{err}");
}

/// eval reads only the test split: a folder with the two t10k files is enough.
#[test]
fn eval_needs_only_the_test_files() {
    let (run, data) = (tmpdir("eval-run"), tmpdir("eval-data"));
    ok(&train(&run, &["--mlp-sizes", "784,16,10", "--limit-train", "1000", "--epochs", "1"]));
    assert!(!run.join("steps.csv").exists(), "steps.csv is written only with --log-interval");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist").join(f), data.join(f)).unwrap();
    }
    let acc: f64 = metrics(&run).pop().unwrap().split(',').nth(4).unwrap().parse().unwrap();
    let o = ok(&bin()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(run.join("model.safetensors"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap());
    assert!(o.contains(&format!("({}/10000)", (acc * 1e4).round())), "eval must reproduce {acc}:\n{o}");
}
