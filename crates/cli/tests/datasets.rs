//! Datasets beyond MNIST end to end: a generated image folder of colour shapes
//! is learned to >= 90% and predicted from its PNG/JPEG files; CIFAR-10 (the
//! copy in ../shared) trains and evaluates; a checkpoint evaluated on data of
//! another shape is refused.

mod common;

use common::bin;
use std::path::PathBuf;
use std::process::Output;

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-datasets-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The last epoch's test accuracy in a metrics.csv.
fn final_accuracy(run: &std::path::Path) -> f64 {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    csv.lines().last().unwrap().split(',').nth(4).unwrap().parse().unwrap()
}

fn cifar10_dir() -> PathBuf {
    let dir = common::repo().join("../shared/data/cifar10");
    assert!(dir.is_dir(), "CIFAR-10 is expected in {} (CI lays shared/ beside the repository)", dir.display());
    dir
}

#[test]
fn an_image_folder_of_colour_shapes_is_learned() {
    let data = tmpdir("shapes");
    rr_core::data::write_shapes_folder(&data, 1000, 60, 32, 7).unwrap();
    let run = tmpdir("shapes-run");
    let o = bin()
        .args(["train", "--device", "cpu", "--dataset", "image-folder", "--image-size", "32", "--epochs", "12", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let acc = final_accuracy(&run);
    assert!(acc >= 0.90, "LeNet-5 on the shapes folder should pass 90%, got {acc}\n{}", text(&o));

    // eval rebuilds the dataset from the checkpoint's description and reproduces the accuracy.
    let ckpt = run.join("model.safetensors");
    let o = bin().args(["eval", "--device", "cpu", "--checkpoint"]).arg(&ckpt).arg("--data-dir").arg(&data).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let correct = (acc * 240.0).round() as usize;
    assert!(text(&o).contains(&format!("({correct}/240)")), "{}", text(&o));
    for name in rr_core::data::SHAPE_CLASSES {
        assert!(text(&o).contains(name), "per-class lines name the classes: {}", text(&o));
    }

    // predict takes the folder's own files (colour, any size) and names the classes.
    let files: Vec<PathBuf> = rr_core::data::SHAPE_CLASSES
        .iter()
        .map(|c| std::fs::read_dir(data.join("test").join(c)).unwrap().next().unwrap().unwrap().path())
        .collect();
    let o = bin().args(["predict", "--device", "cpu", "--json", "--checkpoint"]).arg(&ckpt).args(&files).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let results: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let right = results
        .as_array()
        .unwrap()
        .iter()
        .zip(rr_core::data::SHAPE_CLASSES)
        .filter(|(r, class)| r["label"].as_str() == Some(*class))
        .count();
    assert!(right >= 3, "at least 3 of the 4 shapes predicted right: {results}");

    // A checkpoint of 3x32x32 images is refused on MNIST's 1x28x28 ones, with both shapes named.
    let o = bin()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&ckpt)
        .arg("--data-dir")
        .arg(common::repo().join("data/mnist"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("error:"), "{}", text(&o));
}

#[test]
fn cifar10_trains_and_evaluates() {
    let run = tmpdir("cifar");
    let o = bin()
        .args(["train", "--device", "cpu", "--dataset", "cifar10", "--limit-train", "10000", "--epochs", "3", "--data-dir"])
        .arg(cifar10_dir())
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("SHA-256 verified"), "{}", text(&o));
    let acc = final_accuracy(&run);
    assert!(acc > 0.30, "LeNet-5 on 10,000 CIFAR-10 images for 3 epochs should pass 30% (chance: 10%), got {acc}");
    let o = bin()
        .args(["eval", "--device", "cpu", "--data-dir"])
        .arg(cifar10_dir())
        .arg("--checkpoint")
        .arg(run.join("model.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let correct = (acc * 10_000.0).round() as usize;
    assert!(text(&o).contains(&format!("({correct}/10000)")) && text(&o).contains("airplane"), "{}", text(&o));
}

/// The speed recipe (narrowed to width 8 so it runs on two cores): whitening
/// from data, the lookahead average, alternating flips and the final
/// test-time-augmented evaluation; a run killed in its second epoch and resumed
/// ends where a straight one does (the lookahead average is part of the commit).
#[test]
fn cifar_speed_recipe_trains_and_resumes_exactly() {
    use std::io::{BufRead, BufReader};
    let command = |out: &std::path::Path, resume: bool| {
        let mut c = bin();
        c.args(["train", "--device", "cpu", "--epochs", "3", "--data-dir"]).arg(cifar10_dir());
        if resume {
            c.arg("--resume").arg(out);
        } else {
            c.args(["--dataset", "cifar10", "--model", "cifar-speed", "--width", "8", "--limit-train", "2048", "--limit-test", "1000"]);
            c.args(["--batch-size", "256", "--out"]).arg(out);
        }
        c
    };
    let run = |mut c: std::process::Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let straight = tmpdir("speed");
    let log = run(command(&straight, false));
    for needle in ["whitening: filters from the patches of the first 2048 training images", "flips alternating", "lookahead every 5 steps"]
    {
        assert!(log.contains(needle), "`{needle}` missing:\n{log}");
    }
    let tta: f64 = log
        .lines()
        .find_map(|l| l.strip_prefix("test-time augmentation (6 views per image):"))
        .and_then(|l| l.split("test_acc").nth(1))
        .and_then(|v| v.trim().split('%').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no test-time augmentation line:\n{log}"));
    assert!(tta > 20.0, "cifar-speed at width 8 on 2,048 images for 3 epochs should pass 20% (chance: 10%), got {tta}%\n{log}");

    // The same run, killed once its second epoch's line is out (its commit may be half written), then resumed.
    let resumed = tmpdir("speed-resumed");
    let mut child = command(&resumed, false).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert!(lines.into_iter().any(|l| l.starts_with("epoch  2/3")), "the run ended before its second epoch");
    child.kill().unwrap();
    child.wait().unwrap();
    run(command(&resumed, true));
    let values = |dir: &std::path::Path| {
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let header: Vec<String> = csv.lines().next().unwrap().split(',').map(String::from).collect();
        let keep: Vec<usize> = (0..header.len()).filter(|&i| !["seconds", "images_per_sec"].contains(&header[i].as_str())).collect();
        csv.lines().skip(1).map(|l| keep.iter().map(|&i| l.split(',').nth(i).unwrap().to_string()).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    assert_eq!(values(&straight).len(), 3);
    // Everything but the times matches.
    assert_eq!(values(&straight), values(&resumed), "a run killed and resumed differs from a straight one");
}

/// `speedrun` end to end on a sliver of CIFAR-10: a SPEEDRUN line per run and
/// the summary, with the test accuracy and the time split as documented.
#[test]
fn speedrun_prints_each_run_and_a_summary() {
    let o = bin()
        .args(["speedrun", "--device", "cpu", "--runs", "2", "--epochs", "1", "--warmup-epochs", "0", "--width", "4"])
        .args(["--limit-train", "1024", "--limit-test", "300", "--data-dir"])
        .arg(cifar10_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let runs: Vec<&str> = out.lines().filter(|l| l.starts_with("SPEEDRUN run=")).collect();
    assert_eq!(runs.len(), 2, "{out}");
    for (i, run) in runs.iter().enumerate() {
        assert!(run.starts_with(&format!("SPEEDRUN run={} seed={i} tta_acc=0.", i + 1)), "{run}");
        for field in ["acc=", "time_s=", "whiten_s=", "train_s=", "tta_s="] {
            assert!(run.contains(field), "{field} missing: {run}");
        }
    }
    assert!(out.contains("SPEEDRUN_SUMMARY") && out.contains("runs=2 mean_tta_acc="), "{out}");
    // airbench94_muon's recipe: batch 2000, so 2000 images make one step.
    let o = bin()
        .args(["speedrun", "--device", "cpu", "--runs", "1", "--epochs", "1", "--warmup-epochs", "0", "--width", "4", "--muon"])
        .args(["--limit-train", "2000", "--limit-test", "300", "--data-dir"])
        .arg(cifar10_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("airbench94_muon's recipe") && out.contains("1 epochs of batch 2000"), "{out}");
    assert!(out.contains("SPEEDRUN run=1 seed=0 tta_acc=0.") && out.contains("runs=1 mean_tta_acc="), "{out}");
    let o = bin().args(["speedrun", "--device", "cpu", "--runs", "0"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("--runs must be at least 1, got 0"), "{}", text(&o));
}
