//! Every option takes effect or is refused: bad values and options that do
//! not apply are clear errors (exit code 1, no panic) before any data is read;
//! messages are printed once and point at the fix; every command's help has
//! examples.

mod common;

use common::bin;
use std::path::PathBuf;
use std::process::Output;

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-options-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args` and checks it fails cleanly with every one of `needles` in the message.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let o = bin().args(args).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail with exit code 1:\n{}\n{err}", String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in:\n{err}");
    }
    err
}

/// Every case names the option, the value and what is allowed. The data folder
/// does not exist and the device is the CPU: an error about either would mean
/// the option was checked too late.
#[test]
fn bad_values_are_refused_before_any_work() {
    let out = tmpdir("never-written");
    let o = out.to_str().unwrap();
    let base = ["train", "--device", "cpu", "--data-dir", "/no/such/dir", "--out", o];
    let cases: &[(&[&str], &[&str])] = &[
        (&["--threads", "100000"], &["--threads 100000", "at most"]),
        (&["--dropout=-0.1", "--model", "mnist-cnn"], &["--dropout", "-0.1", "[0, 1)"]),
        (&["--dropout", "1", "--model", "mnist-cnn"], &["--dropout", "got 1"]),
        (&["--batch-size", "0"], &["--batch-size", "got 0"]),
        (&["--eval-batch-size", "0"], &["--eval-batch-size", "got 0"]),
        (&["--limit-train", "0"], &["--limit-train", "got 0"]),
        (&["--rotate", "-5"], &["--rotate", "got -5", ">= 0"]),
        (&["--scale=-0.1"], &["--scale", "got -0.1"]),
        (&["--noise", "-1"], &["--noise", "got -1"]),
        (&["--translate", "1"], &["--translate", "got 1", "[0, 1)"]),
        (&["--crop", "28"], &["--crop", "28 pixels", "28x28", "at most 27"]),
        (&["--cutout", "29"], &["--cutout", "29 pixels", "28x28"]),
        (&["--label-smoothing", "1"], &["--label-smoothing", "got 1", "[0, 1)"]),
        (&["--label-smoothing", "-0.1"], &["--label-smoothing", "got -0.1"]),
        (&["--lr", "-1"], &["--lr", "got -1", "positive"]),
        (&["--lr", "0"], &["--lr", "got 0"]),
        (&["--lr", "nan"], &["--lr", "got NaN"]),
        (&["--lr", "inf"], &["--lr", "got inf"]),
        (&["--momentum", "1"], &["--momentum", "got 1", "[0, 1)"]),
        (&["--momentum", "-0.5"], &["--momentum", "got -0.5"]),
        (&["--pct-start", "1"], &["--pct-start", "got 1", "(0, 1)"]),
        (&["--pct-start", "0"], &["--pct-start", "got 0"]),
        (&["--warmup-epochs", "-1"], &["--warmup-epochs", "got -1"]),
        (&["--dataset", "image-folder", "--image-size", "0"], &["--image-size", "image size 0", "1 to 1024"]),
        (&["--dataset", "image-folder", "--image-size", "100000"], &["--image-size", "100000", "1 to 1024"]),
        (&["--log-interval", "0"], &["--log-interval", "got 0"]),
        (&["--model", "mlp", "--mlp-sizes", "784,10,3"], &["MLP sizes", "784,"]),
        (&["--model", "mnist-cnn", "--width", "0"], &["--width", "at least 1"]),
    ];
    for (extra, needles) in cases {
        refused(&[&base[..], extra].concat(), needles);
    }
    assert!(!out.exists(), "a refused run must not create its --out folder");
    refused(&["bench", "--device", "cpu", "--epochs", "0"], &["--epochs", "got 0"]);
    refused(&["bench", "--device", "cpu", "--infer-batch", "0"], &["--infer-batch", "got 0"]);
    refused(&["bench", "--device", "cpu", "--infer-reps", "0"], &["--infer-reps", "got 0"]);
    refused(&["eval", "--device", "cpu", "--batch-size", "0", "--checkpoint", "/no/such/ckpt"], &["--batch-size", "got 0"]);
    refused(&["eval", "--threads", "100000", "--checkpoint", "/no/such/ckpt"], &["--threads 100000"]);
}

/// An option that would do nothing names what it applies to and what the run has.
#[test]
fn options_that_do_not_apply_are_refused() {
    let train = |extra: &[&'static str]| [&["train", "--device", "cpu", "--data-dir", "/no/such/dir"][..], extra].concat();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--width", "8"], &["--width", "mnist-cnn and cifar-speed only", "lenet"]),
        (&["--dropout", "0.1", "--model", "cifar-speed"], &["--dropout", "mnist-cnn only", "cifar-speed"]),
        (&["--dropout", "0.1"], &["--dropout", "mnist-cnn only"]),
        (&["--model", "lenet", "--mlp-sizes", "784,10"], &["--mlp-sizes", "mlp only"]),
        (&["--gamma", "0.5"], &["--gamma", "step only", "onecycle"]),
        (&["--milestones", "2,3"], &["--milestones", "step only"]),
        (&["--schedule", "cosine", "--pct-start", "0.2"], &["--pct-start", "onecycle only", "cosine"]),
        (&["--beta1", "0.8"], &["--beta1", "adam and adamw only", "sgd"]),
        (&["--eps", "1e-6"], &["--eps", "adam"]),
        (&["--optimizer", "adam", "--momentum", "0.9"], &["--momentum", "sgd only", "adam"]),
        (&["--optimizer", "adam", "--nesterov", "true"], &["--nesterov", "sgd only", "adam"]),
        (&["--image-size", "20"], &["--image-size", "image-folder only", "mnist"]),
        (&["--augment", "false", "--rotate", "5"], &["--rotate", "conflicts with --augment false"]),
        (&["--crop-padding", "zero"], &["--crop-padding", "--crop is 0"]),
        (&["--overwrite"], &["--overwrite", "--out"]),
    ];
    for (extra, needles) in cases {
        refused(&train(extra), needles);
    }
    // Negative numbers reach the validation instead of clap's "unexpected argument".
    let err = refused(&train(&["--lr", "-1"]), &["--lr"]);
    assert!(!err.contains("unexpected argument"), "{err}");
    // The undocumented `gpu` device is gone (a usage error: clap's exit code 2); --help lists wgpu.
    let o = bin().args(["train", "--device", "gpu"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown device `gpu`: expected auto, cpu, cuda, cuda:N or wgpu"), "{}", stderr(&o));
}

/// What a resumed run may change is listed; the rest is refused before anything is read.
#[test]
fn a_resumed_run_refuses_what_it_cannot_change() {
    let resume = |extra: &[&'static str]| [&["train", "--resume", "/no/such/run/model.safetensors", "--epochs", "9"][..], extra].concat();
    for option in ["--model", "--batch-size", "--optimizer", "--seed", "--dataset"] {
        let value = match option {
            "--model" => "mnist-cnn",
            "--optimizer" => "adam",
            "--dataset" => "cifar10",
            _ => "7",
        };
        refused(&resume(&[option, value]), &[option, "cannot change when resuming", "--epochs, --lr"]);
    }
    refused(&resume(&["--out", "/tmp/x"]), &["--out cannot be combined with --resume"]);
    refused(&resume(&["--config", "/tmp/x.toml"]), &["--config cannot be combined with --resume"]);
}

#[test]
fn os_errors_are_printed_once() {
    for args in [
        &["eval", "--device", "cpu", "--checkpoint", "/no/such/file.safetensors"][..],
        &["train", "--device", "cpu", "--config", "/no/such/options.toml"][..],
        &["predict", "--device", "cpu", "--checkpoint", "/no/such/file.safetensors", "x.png"][..],
    ] {
        let err = refused(args, &["/no/such/", "No such file or directory"]);
        assert_eq!(err.matches("No such file or directory").count(), 1, "{args:?}: the OS error is repeated:\n{err}");
    }
}

#[test]
fn a_non_empty_out_folder_is_refused_unless_overwrite() {
    let out = tmpdir("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("steps.csv"), "stale\n").unwrap();
    std::fs::write(out.join("notes.txt"), "mine\n").unwrap();
    let run = |extra: &[&str]| {
        bin()
            .args(["train", "--device", "cpu", "--model", "mlp", "--mlp-sizes", "784,8,10", "--limit-train", "500", "--epochs", "1"])
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not empty") && stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    let o = run(&["--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The previous run's files are replaced (no stale steps.csv without --log-interval); others stay.
    assert!(out.join("model.safetensors").is_file() && !out.join("steps.csv").exists());
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine\n");
}

#[test]
fn every_command_has_help_with_examples() {
    for command in ["train", "eval", "predict", "serve", "plot", "bench"] {
        let o = bin().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{command} --help");
        assert!(
            help.contains("Example") && help.contains(&format!("rusty-recognition {command} ")),
            "{command} --help has no example:\n{help}"
        );
    }
    let o = bin().args(["train", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    let device = help.lines().skip_while(|l| !l.trim_start().starts_with("--device <DEVICE>")).nth(1).unwrap_or("");
    assert!(device.contains("wgpu") && device.contains("cuda:N"), "--device help: {device}");
}
