//! The binary end to end: train writes metrics and a checkpoint that eval
//! reproduces exactly; bad input is a clear error and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rusty-recognition"));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    c
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn train_then_eval_reproduces_the_test_accuracy() {
    let out = tmpdir("train");
    let o = bin().args(["train", "--model", "mlp", "--mlp-sizes", "784,32,10", "--epochs", "2", "--out"]).arg(&out).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "train failed:\n{stdout}\n{stderr}");
    // One line per epoch; no progress-bar control characters when not on a terminal.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("epoch ")).count(), 2, "{stdout}");
    assert!(!stdout.contains('\r') && !stderr.contains('\r') && !stderr.contains('\x1b'), "{stderr:?}");

    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr");
    assert_eq!(rows.len(), 3);
    let last: Vec<f64> = rows[2].split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(last[0], 2.0);
    let test_correct = (last[4] * 10_000.0).round() as u64;
    assert!(test_correct > 9000, "a 2-epoch MLP should pass 90%: {csv}");
    assert!(out.join("config.json").is_file());

    let o = bin().args(["eval", "--checkpoint"]).arg(out.join("model.safetensors")).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "eval failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("({test_correct}/10000)")), "eval must reproduce {test_correct}/10000:\n{stdout}");
    // Per-class accuracy and the confusion matrix as text; its diagonal sums to the correct count.
    assert!(stdout.contains("per-class accuracy") && stdout.contains("confusion matrix"), "{stdout}");
    let rows: Vec<Vec<u64>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("confusion matrix"))
        .skip(2)
        .map(|l| l.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 10);
    assert_eq!((0..10).map(|i| rows[i][i]).sum::<u64>(), test_correct);
    assert_eq!(rows.iter().flatten().sum::<u64>(), 10_000);

    // Plots: written by train, the expected size, not blank; `plot` redraws them.
    check_plots(&out);
    std::fs::remove_file(out.join("curves.png")).unwrap();
    std::fs::remove_file(out.join("confusion.png")).unwrap();
    let o = bin().arg("plot").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_plots(&out);
}

fn check_plots(run: &Path) {
    for (name, size) in [("curves.png", (1500, 450)), ("confusion.png", (760, 720))] {
        let img = image::open(run.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).to_rgb8();
        assert_eq!(img.dimensions(), size, "{name}");
        let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let colors: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(ink > img.len() / 3 / 100, "{name} is nearly blank ({ink} non-white pixels)");
        assert!(colors.len() > 20, "{name} has only {} colors", colors.len());
    }
}

fn fails_with(args: &[&str], needle: &str) {
    let o = bin().args(args).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{args:?} should fail:\n{stdout}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected `{needle}` in:\n{stderr}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tmpdir("bad");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let g = garbage.to_str().unwrap();
    fails_with(&["eval", "--checkpoint", g], g);
    fails_with(&["eval", "--checkpoint", "/no/such/file.safetensors"], "/no/such/file.safetensors");
    let out = dir.join("o");
    let o = out.to_str().unwrap();
    fails_with(&["train", "--data-dir", "/no/such/dir", "--out", o], "/no/such/dir");
    fails_with(&["train", "--lr=-1", "--out", o], "--lr");
    fails_with(&["train", "--momentum", "1.5", "--out", o], "--momentum");
    fails_with(&["train", "--batch-size", "0", "--out", o], "--batch-size");
    fails_with(&["train", "--model", "mlp", "--mlp-sizes", "784,10,3", "--out", o], "MLP sizes");
    fails_with(&["train", "--device", "tpu", "--out", o], "tpu");
}

/// Fashion-MNIST from the shared data folder (tests use ../shared/data/fashion-mnist).
fn fashion_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    assert!(dir.is_dir(), "Fashion-MNIST is expected at {} (shared/ beside the clone, as CI lays it out)", dir.display());
    dir
}

#[test]
fn fashion_mnist_trains_and_predicts_with_class_names() {
    let out = tmpdir("fashion");
    let o = bin()
        .args([
            "train",
            "--device",
            "cpu",
            "--dataset",
            "fashion-mnist",
            "--model",
            "mlp",
            "--mlp-sizes",
            "784,32,10",
            "--epochs",
            "1",
            "--out",
        ])
        .arg(&out)
        .arg("--data-dir")
        .arg(fashion_dir())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("fashion-mnist: 60000 train / 10000 test"), "{stdout}");
    let ckpt = out.join("model.safetensors");
    // Eval needs the data folder (Fashion-MNIST is not shipped) and names the classes.
    let o = bin().args(["eval", "--device", "cpu", "--checkpoint"]).arg(&ckpt).arg("--data-dir").arg(fashion_dir()).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("Ankle boot") && stdout.contains("Trouser"), "{stdout}");
    // A test image as PNG: predicted with a class name.
    let m = rr_core::data::Mnist::load(&fashion_dir()).unwrap();
    let img = image::GrayImage::from_raw(28, 28, m.test.images[..784].to_vec()).unwrap();
    let png = out.join("item.png");
    img.save(&png).unwrap();
    let o = bin().args(["predict", "--device", "cpu", "--json", "--checkpoint"]).arg(&ckpt).arg(&png).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
    assert!(names.contains(&v[0]["label"].as_str().unwrap()), "{v}");
    // Without --data-dir (and no Debian package), the error says what to do.
    let missing = tmpdir("fashion-missing");
    let o = bin()
        .args([
            "train",
            "--device",
            "cpu",
            "--dataset",
            "fashion-mnist",
            "--model",
            "mlp",
            "--mlp-sizes",
            "784,8,10",
            "--epochs",
            "1",
            "--out",
        ])
        .arg(&missing)
        .output()
        .unwrap();
    if !Path::new("/usr/share/datasets/fashion-mnist").is_dir() {
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--data-dir"));
    }
}

/// The wgpu backend from the command line (in CI: Mesa's llvmpipe, a software
/// adapter, which `--device wgpu` accepts and `--device auto` never picks).
#[test]
fn wgpu_trains_and_evaluates_and_auto_skips_software_adapters() {
    let out = tmpdir("wgpu");
    let small = ["--model", "mlp", "--mlp-sizes", "784,16,10", "--epochs", "1", "--limit-train", "1024", "--out"];
    let o = bin().args(["train", "--device", "wgpu"]).args(small).arg(&out).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "train --device wgpu failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("adapter: wgpu (") && stdout.contains("on wgpu ("), "{stdout}\n{stderr}");
    // A software adapter (llvmpipe in CI) is named as such.
    let software = stdout.contains(", Cpu,");
    assert_eq!(stderr.contains("note: this is a software adapter"), software, "{stdout}\n{stderr}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let acc: f64 = csv.lines().nth(1).unwrap().split(',').nth(4).unwrap().parse().unwrap();
    assert!(acc > 0.5, "1024 images of an MLP on wgpu: test accuracy {acc}");
    let o = bin().args(["eval", "--device", "wgpu", "--checkpoint"]).arg(out.join("model.safetensors")).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success() && stdout.contains(&format!("test_acc {:.2}%", 100.0 * acc)), "{stdout}\n{stderr}");

    let o = bin().args(["train", "--device", "auto"]).args(small).arg(out.join("auto")).output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let header = stdout.lines().next().unwrap_or("");
    assert!(!header.contains(", Cpu,"), "auto picked a software adapter: {header}");
}
