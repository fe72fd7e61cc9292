//! `predict` on real MNIST test digits written out as PNG/JPEG files, some
//! inverted, rescaled to 200x200 or placed off-center on a larger canvas: each
//! is predicted as the model predicts the original digit. Bad files get an
//! error of their own, the others are still predicted, and the exit code says so.

use image::{GrayImage, ImageFormat, Luma};
use rr_core::data::{Mnist, Splits};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rusty-recognition"));
    c.current_dir(repo());
    c
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-predict-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn digit(m: &Splits, i: usize) -> GrayImage {
    GrayImage::from_raw(28, 28, m.test.images[i * 784..(i + 1) * 784].to_vec()).unwrap()
}

/// The variants a user might hand in for one MNIST digit.
fn variants(img: &GrayImage) -> Vec<(&'static str, GrayImage)> {
    let inverted = GrayImage::from_fn(28, 28, |x, y| Luma([255 - img.get_pixel(x, y)[0]]));
    let big = image::imageops::resize(img, 200, 200, image::imageops::FilterType::Triangle);
    let mut off = GrayImage::from_pixel(120, 70, Luma([0]));
    image::imageops::overlay(&mut off, img, 80, 35);
    let big_inverted = image::imageops::resize(&inverted, 150, 150, image::imageops::FilterType::Triangle);
    vec![("original", img.clone()), ("inverted", inverted), ("200x200", big), ("off-center", off), ("inverted-150", big_inverted)]
}

#[derive(serde::Deserialize)]
struct Prediction {
    file: String,
    class: Option<usize>,
    top3: Option<Vec<serde_json::Value>>,
    error: Option<String>,
}

#[test]
fn predicts_real_digits_in_any_form_and_reports_bad_files() {
    let dir = tmpdir("digits");
    let out = dir.join("run");
    // A LeNet-5 trained for one epoch on the CPU.
    let o = bin().args(["train", "--device", "cpu", "--epochs", "1", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = out.join("model.safetensors");

    let m = Mnist::load(&repo().join("data/mnist")).unwrap();
    let mut files = Vec::new();
    let mut expected_of_file = Vec::new();
    for i in 0..12 {
        let img = digit(&m, i);
        for (name, v) in variants(&img) {
            let path = dir.join(format!("d{i}-{name}.png"));
            v.save_with_format(&path, ImageFormat::Png).unwrap();
            files.push(path);
            expected_of_file.push(i);
        }
        let jpg = dir.join(format!("d{i}-photo.jpg"));
        image::imageops::resize(&variants(&img)[1].1, 64, 64, image::imageops::FilterType::Triangle)
            .save_with_format(&jpg, ImageFormat::Jpeg)
            .unwrap();
        files.push(jpg);
        expected_of_file.push(i);
    }
    let o = bin().args(["predict", "--device", "cpu", "--json", "--checkpoint"]).arg(&ckpt).args(&files).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results: Vec<Prediction> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(results.len(), files.len());
    // The class predicted for each original digit (the 28x28 file) is what every variant must get.
    let mut disagreements = Vec::new();
    for (r, &i) in results.iter().zip(&expected_of_file) {
        assert!(r.error.is_none(), "{}: {:?}", r.file, r.error);
        assert_eq!(r.top3.as_ref().map(Vec::len), Some(3));
        let original = &results[expected_of_file.iter().position(|&j| j == i).unwrap()];
        if r.class != original.class {
            disagreements.push(format!("{} -> {:?}, original -> {:?} (label {})", r.file, r.class, original.class, m.test.labels[i]));
        }
    }
    assert!(disagreements.is_empty(), "variants predicted differently:\n{}", disagreements.join("\n"));
    // And the originals are mostly right (a one-epoch model is ~97.5%).
    let right = (0..12).filter(|&i| results[i * 6].class == Some(m.test.labels[i] as usize)).count();
    assert!(right >= 11, "{right}/12 originals right");

    // Bad files: each gets its own error, the good one is still predicted, exit code non-zero.
    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.join("notes.png");
    std::fs::write(&text, b"this is not an image").unwrap();
    let blank = dir.join("blank.png");
    GrayImage::from_pixel(50, 50, Luma([255])).save(&blank).unwrap();
    let truncated = dir.join("truncated.png");
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let missing = dir.join("missing.png");
    let o = bin()
        .args(["predict", "--device", "cpu", "--json", "--checkpoint"])
        .arg(&ckpt)
        .args([&empty, &text, &blank, &truncated, &missing, &files[0]])
        .output()
        .unwrap();
    assert!(!o.status.success(), "bad files must give a non-zero exit");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let results: Vec<Prediction> = serde_json::from_slice(&o.stdout).unwrap();
    let errors: Vec<&str> = results.iter().map(|r| r.error.as_deref().unwrap_or("")).collect();
    assert!(errors[0].contains("empty"), "{errors:?}");
    assert!(errors[1].contains("not a PNG or JPEG"), "{errors:?}");
    assert!(errors[2].contains("blank"), "{errors:?}");
    assert!(errors[3].contains("decode"), "{errors:?}");
    assert!(errors[4].contains("cannot read"), "{errors:?}");
    assert!(results[5].error.is_none() && results[5].class.is_some());
    assert!(stderr.contains("5 of 6 files could not be predicted"), "{stderr}");
}

#[test]
fn an_enormous_image_is_refused() {
    let dir = tmpdir("huge");
    // 10000 x 10000 declared in the header; the decoder limit refuses it before allocating.
    let path = dir.join("huge.png");
    let img = GrayImage::from_pixel(9000, 9000, Luma([0]));
    img.save(&path).unwrap();
    let ckpt = dir.join("m.safetensors");
    let b = rr_core::CpuBackend::new(1).unwrap();
    let model = rr_core::Model::new(&b, &rr_core::ModelConfig::Lenet5, &[1, 28, 28], 10, 0).unwrap();
    rr_core::checkpoint::save(&ckpt, &b, &model, &[]).unwrap();
    let o = bin().args(["predict", "--device", "cpu", "--checkpoint"]).arg(&ckpt).arg(&path).output().unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("huge.png") && stderr.contains("error"), "{stderr}");
}
