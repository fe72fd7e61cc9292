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
/// test-time-augmented evaluation; a run resumed midway ends where a straight
/// one does (the lookahead average is part of the commit).
#[test]
fn cifar_speed_recipe_trains_and_resumes_exactly() {
    let train = |out: &std::path::Path, epochs: &str, resume: bool| {
        let mut c = bin();
        c.args(["train", "--device", "cpu", "--dataset", "cifar10", "--model", "cifar-speed", "--width", "8"]);
        c.args(["--limit-train", "4096", "--batch-size", "256", "--epochs", epochs, "--data-dir"]).arg(cifar10_dir());
        if resume {
            c.arg("--resume").arg(out.join("train_state.safetensors"));
        } else {
            c.arg("--out").arg(out);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let straight = tmpdir("speed");
    let log = train(&straight, "4", false);
    for needle in ["whitening: filters from the patches of the first 4096 training images", "flips alternating", "lookahead every 5 steps"]
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
    assert!(tta > 35.0, "cifar-speed at width 8 on 4,096 images for 4 epochs should pass 35% (chance: 10%), got {tta}%\n{log}");
    let resumed = tmpdir("speed-resumed");
    train(&resumed, "2", false);
    train(&resumed, "4", true);
    let metrics = |dir: &std::path::Path| std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(metrics(&straight).lines().count(), 5);
    let values = |dir: &std::path::Path| {
        let csv = metrics(dir);
        let header: Vec<String> = csv.lines().next().unwrap().split(',').map(String::from).collect();
        let keep: Vec<usize> = (0..header.len()).filter(|&i| !["seconds", "images_per_sec"].contains(&header[i].as_str())).collect();
        csv.lines().skip(1).map(|l| keep.iter().map(|&i| l.split(',').nth(i).unwrap().to_string()).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    // Everything but the time matches.
    assert_eq!(values(&straight), values(&resumed), "a run resumed after epoch 2 differs from a straight one");
}
