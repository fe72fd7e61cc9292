//! Image folders (torchvision's ImageFolder layout) and the synthetic shapes
//! folder: good folders load with their classes, layout and statistics; every
//! bad folder or file gives an error naming it, never a panic.

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rr_core::data::{self, write_shapes_folder, DatasetKind, ImageFolder, SHAPE_CLASSES};
use rr_core::Error;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-data-folder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn png(w: u32, h: u32, color: ExtendedColorType, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(pixels, w, h, color).unwrap();
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A folder with classes `a` and `b`, one 2x2 RGB image per class and split.
fn tiny_folder(dir: &Path) {
    for split in ["train", "test"] {
        for (i, class) in ["a", "b"].iter().enumerate() {
            let px: Vec<u8> = (0..12).map(|k| (k * 10 + i * 100) as u8).collect();
            write(&dir.join(split).join(class).join("0.png"), &png(2, 2, ExtendedColorType::Rgb8, &px));
        }
    }
}

fn dataset_msg<T: std::fmt::Debug>(r: rr_core::Result<T>) -> (PathBuf, String) {
    match r {
        Err(Error::Dataset { path, msg }) => (path, msg),
        other => panic!("expected a dataset error, got {other:?}"),
    }
}

#[test]
fn image_folder_layout_and_conversion() {
    let dir = tmpdir("layout");
    tiny_folder(&dir);
    // Grayscale and RGBA images become RGB; other files and hidden ones are ignored.
    write(&dir.join("train/a/1.PNG"), &png(2, 2, ExtendedColorType::L8, &[0, 50, 100, 150]));
    write(&dir.join("train/b/1.png"), &png(2, 2, ExtendedColorType::Rgba8, &[9; 16]));
    write(&dir.join("train/a/notes.txt"), b"not an image");
    write(&dir.join("train/a/.hidden.png"), b"garbage");
    write(&dir.join("train/.cache/x.png"), b"garbage");
    let s = ImageFolder::load(&dir, 2).unwrap();
    assert_eq!(s.info.class_names, ["a", "b"]);
    assert_eq!((s.info.name.as_str(), s.info.shape, s.info.classes), ("image-folder", [3, 2, 2], 2));
    assert!(!s.verified);
    assert_eq!((s.train.len, s.test.len), (4, 2));
    // Round-robin over classes: a/0, b/0, a/1, b/1.
    assert_eq!(s.train.labels, [0, 1, 0, 1]);
    // (C, H, W): the interleaved RGB pixels k*10 come back as planes.
    assert_eq!(s.train.image(0), [0, 30, 60, 90, 10, 40, 70, 100, 20, 50, 80, 110]);
    assert_eq!(s.train.image(2), [0, 50, 100, 150, 0, 50, 100, 150, 0, 50, 100, 150]);
    assert_eq!(s.train.image(3), [9; 12]);
    // Mean and std come from the training split, per channel.
    let (mean, std) = data::channel_stats(&s.train.images, s.train.shape);
    assert_eq!((s.info.mean.clone(), s.info.std.clone()), (mean, std));
    s.info.validate().unwrap();
    // Resizing: any image becomes image_size x image_size.
    let s = data::load(&DatasetKind::ImageFolder { image_size: 5 }, &dir).unwrap();
    assert_eq!((s.train.shape, s.train.images.len()), ([3, 5, 5], 4 * 75));
}

#[test]
fn image_folder_errors_name_the_folder_or_file() {
    let dir = tmpdir("bad");
    // Empty folder: no train/.
    let (path, msg) = dataset_msg(ImageFolder::load(&dir, 8));
    assert!(path.ends_with("train") && msg.contains("missing folder"), "{path:?}: {msg}");
    // train/ and test/ with no class subfolders.
    std::fs::create_dir_all(dir.join("train")).unwrap();
    std::fs::create_dir_all(dir.join("test")).unwrap();
    write(&dir.join("train/stray.png"), b"x");
    let (path, msg) = dataset_msg(ImageFolder::load(&dir, 8));
    assert!(path.ends_with("train") && msg.contains("no class subfolders"), "{path:?}: {msg}");
    std::fs::remove_file(dir.join("train/stray.png")).unwrap();

    tiny_folder(&dir);
    ImageFolder::load(&dir, 8).unwrap();
    // A class folder with no images.
    std::fs::create_dir_all(dir.join("train/c")).unwrap();
    write(&dir.join("train/c/readme.txt"), b"no images here");
    let (path, msg) = dataset_msg(ImageFolder::load(&dir, 8));
    assert!(path.ends_with("train/c") && msg.contains("holds no images"), "{path:?}: {msg}");
    // A class missing from the test split.
    write(&dir.join("train/c/0.png"), &std::fs::read(dir.join("train/a/0.png")).unwrap());
    let (path, msg) = dataset_msg(ImageFolder::load(&dir, 8));
    assert!(path.ends_with("test") && msg.contains("class `c` of train/ has no folder"), "{path:?}: {msg}");
    std::fs::remove_dir_all(dir.join("train/c")).unwrap();
    // A test class that is not a training class.
    write(&dir.join("test/d/0.png"), &std::fs::read(dir.join("train/a/0.png")).unwrap());
    let (path, msg) = dataset_msg(ImageFolder::load(&dir, 8));
    assert!(path.ends_with("test/d") && msg.contains("not a class of train/"), "{path:?}: {msg}");
    std::fs::remove_dir_all(dir.join("test/d")).unwrap();
    ImageFolder::load(&dir, 8).unwrap();

    // A corrupt image, a truncated one, a zero-sized one, one that is not an image: each named.
    let good = std::fs::read(dir.join("train/b/0.png")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("bad.png", good.iter().enumerate().map(|(i, &b)| if i > 40 { b ^ 0x5a } else { b }).collect(), "corrupt"),
        ("cut.png", good[..good.len() / 2].to_vec(), "corrupt"),
        ("empty.jpg", Vec::new(), "empty image file (0 bytes)"),
        ("text.jpeg", b"hello, I am not a JPEG".to_vec(), "not a PNG or JPEG"),
    ];
    for (name, bytes, expected) in cases {
        let file = dir.join("test/b").join(name);
        write(&file, &bytes);
        let (path, msg) = dataset_msg(ImageFolder::load(&dir, 8));
        assert_eq!(path, file);
        assert!(msg.contains(expected), "{name}: {msg}");
        std::fs::remove_file(&file).unwrap();
    }

    // Image sizes out of range.
    for size in [0, 1025, usize::MAX] {
        let (_, msg) = dataset_msg(ImageFolder::load(&dir, size));
        assert!(msg.contains("expected 1 to 1024"), "{msg}");
    }
    // Not a folder.
    let (_, msg) = dataset_msg(ImageFolder::load(&dir.join("nope"), 8));
    assert!(msg.contains("not a folder"), "{msg}");
}

#[test]
fn image_folder_takes_256_classes_but_not_257() {
    let dir = tmpdir("many");
    let one = png(1, 1, ExtendedColorType::Rgb8, &[1, 2, 3]);
    for c in 0..256 {
        for split in ["train", "test"] {
            write(&dir.join(format!("{split}/c{c:03}/0.png")), &one);
        }
    }
    let s = ImageFolder::load(&dir, 4).unwrap();
    assert_eq!((s.info.classes, s.train.labels[255]), (256, 255));
    write(&dir.join("train/c256/0.png"), &one);
    let (path, msg) = dataset_msg(ImageFolder::load(&dir, 4));
    assert!(path.ends_with("train") && msg.contains("257 class folders"), "{path:?}: {msg}");
}

#[test]
fn image_folder_garbage_files_never_panic() {
    let dir = tmpdir("garbage");
    tiny_folder(&dir);
    let good = std::fs::read(dir.join("train/a/0.png")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let file = dir.join("train/a/g.png");
    for round in 0..60 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            // A valid header with random damage after it.
            good.iter().enumerate().map(|(i, &b)| if i > 8 && next() % 8 == 0 { next() as u8 } else { b }).collect()
        } else {
            (0..(next() % 200)).map(|_| next() as u8).collect()
        };
        write(&file, &bytes);
        let _ = ImageFolder::load(&dir, 3);
    }
}

#[test]
fn shapes_folder_loads_and_is_deterministic() {
    let dir = tmpdir("shapes");
    write_shapes_folder(&dir, 6, 3, 24, 7).unwrap();
    let s = data::load(&DatasetKind::ImageFolder { image_size: 24 }, &dir).unwrap();
    assert_eq!(s.info.class_names, SHAPE_CLASSES.map(String::from).to_vec());
    assert_eq!((s.info.classes, s.info.shape), (4, [3, 24, 24]));
    assert_eq!((s.train.len, s.test.len), (24, 12));
    assert_eq!(&s.train.labels[..8], [0, 1, 2, 3, 0, 1, 2, 3]);
    s.info.validate().unwrap();
    // Both PNG and JPEG files are written.
    let files: Vec<String> =
        std::fs::read_dir(dir.join("train/circle")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(files.iter().any(|f| f.ends_with(".png")) && files.iter().any(|f| f.ends_with(".jpg")), "{files:?}");
    // Images are not blank: foreground and background differ.
    for k in 0..s.train.len {
        let img = s.train.image(k);
        let (lo, hi) = (img.iter().min().unwrap(), img.iter().max().unwrap());
        assert!(hi - lo > 60, "image {k} has too little contrast ({lo}..{hi})");
    }
    // The same seed gives the same files; another seed, others.
    let again = tmpdir("shapes-again");
    write_shapes_folder(&again, 6, 3, 24, 7).unwrap();
    let other = tmpdir("shapes-other");
    write_shapes_folder(&other, 6, 3, 24, 8).unwrap();
    for f in ["train/cross/00000.png", "train/triangle/00003.jpg", "test/square/00002.png"] {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f}");
        assert_ne!(std::fs::read(dir.join(f)).unwrap(), std::fs::read(other.join(f)).unwrap(), "{f}");
    }
    // Bad arguments are errors.
    assert!(write_shapes_folder(&other, 0, 3, 24, 1).is_err());
    assert!(write_shapes_folder(&other, 3, 3, 4, 1).is_err());
}
