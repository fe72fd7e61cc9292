//! `predict` on real MNIST test digits written out as PNG/JPEG files, some
//! inverted, rescaled to 200x200 or placed off-center on a larger canvas: each
//! is predicted as the model predicts the original digit. Bad files get an
//! error of their own, the others are still predicted, and the exit code says so.

mod common;

use common::{bin, repo};
use image::{DynamicImage, GrayImage, ImageFormat, Luma};
use rr_core::data::{Mnist, Splits};
use std::path::{Path, PathBuf};

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
    // A LeNet-5 trained for one epoch on the CPU.
    let ckpt = common::checkpoint();

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
    let o = bin().args(["predict", "--device", "cpu", "--json", "--checkpoint"]).arg(ckpt).args(&files).output().unwrap();
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
        .arg(ckpt)
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
    let o = bin().args(["predict", "--device", "cpu", "--checkpoint"]).arg(common::untrained_checkpoint()).arg(&path).output().unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("huge.png") && stderr.contains("error"), "{stderr}");
}

/// `predict --json` on `files`: each file's class and top-3 probabilities.
fn predict_json(files: &[PathBuf]) -> Vec<Prediction> {
    let o = bin().args(["predict", "--device", "cpu", "--json", "--checkpoint"]).arg(common::checkpoint()).args(files).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

#[test]
fn photos_are_turned_upright_as_their_exif_orientation_says() {
    let dir = tmpdir("exif");
    // Phone-style JPEGs: each digit stored turned a quarter counter-clockwise, with
    // Orientation 6 ("turn 90° clockwise to view"), and the same turned clockwise with 8.
    let mut files = Vec::new();
    for i in 0..12 {
        let (img, _) = common::digit(i);
        files.push(write(&dir.join(format!("d{i}-upright.png")), &common::digit_png(i).0));
        let six = common::jpeg_with_orientation(&image::imageops::rotate270(&img), 6);
        files.push(write(&dir.join(format!("d{i}-exif6.jpg")), &six));
        let eight = common::jpeg_with_orientation(&image::imageops::rotate90(&img), 8);
        files.push(write(&dir.join(format!("d{i}-exif8.jpg")), &eight));
    }
    let results = predict_json(&files);
    for r in results.chunks(3) {
        assert_eq!(r[1].class, r[0].class, "{}: not the upright digit's class", r[1].file);
        assert_eq!(r[2].class, r[0].class, "{}: not the upright digit's class", r[2].file);
    }
    let right = results.chunks(3).enumerate().filter(|(i, r)| r[0].class == Some(common::digit(*i).1 as usize)).count();
    assert!(right >= 11, "{right}/12 upright digits right");

    // All eight orientations, lossless: a digit stored so that its tag makes it upright gives
    // exactly the upright digit's probabilities (the same pixels); the stored image read
    // without the tag (sideways or mirrored) gives other ones.
    let (img, _) = common::digit(0);
    let upright = DynamicImage::ImageLuma8(img.clone());
    let mut files = vec![write(&dir.join("upright.png"), &common::digit_png(0).0)];
    for value in 1..=8u8 {
        let orientation = image::metadata::Orientation::from_exif(value).unwrap();
        // The one of the eight transforms of the digit that this orientation turns back upright.
        let stored = (1..=8u8)
            .map(|t| {
                let mut s = upright.clone();
                s.apply_orientation(image::metadata::Orientation::from_exif(t).unwrap());
                s
            })
            .find(|s| {
                let mut back = s.clone();
                back.apply_orientation(orientation);
                back == upright
            })
            .unwrap()
            .into_luma8();
        assert_eq!(stored == img, value == 1, "orientation {value}: the stored image is the upright one only for 1");
        files.push(write(&dir.join(format!("tag{value}.png")), &common::png_with_orientation(&stored, value as u16)));
        let mut plain = Vec::new();
        stored.write_to(&mut std::io::Cursor::new(&mut plain), ImageFormat::Png).unwrap();
        files.push(write(&dir.join(format!("untagged{value}.png")), &plain));
    }
    let results = predict_json(&files);
    let probs = |r: &Prediction| serde_json::to_string(&r.top3).unwrap();
    for pair in results[1..].chunks(2) {
        assert_eq!(probs(&pair[0]), probs(&results[0]), "{}: not the upright digit's pixels", pair[0].file);
        if pair[1].file.ends_with("untagged1.png") {
            assert_eq!(probs(&pair[1]), probs(&results[0]));
        } else {
            assert_ne!(probs(&pair[1]), probs(&results[0]), "{}: read as upright without its tag", pair[1].file);
        }
    }
}
