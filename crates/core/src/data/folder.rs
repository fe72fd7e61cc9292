//! An image folder in torchvision's `ImageFolder` convention:
//! `DIR/train/<class>/*.{png,jpg,jpeg}` and `DIR/test/<class>/*`. Class names
//! are the sorted subfolder names of `train/` (the label is the position);
//! `test/` must have the same classes. Every image is converted to RGB and
//! resized to `image_size` x `image_size` (triangle filter), decoded in
//! parallel. The per-channel mean and std are computed from the training split.
//!
//! Samples are ordered round-robin over the classes (the first image of each
//! class, then the second, ...), so the first N of a split mix the classes.
//! Hidden files and folders (names starting with `.`) and files with other
//! extensions are ignored.

use super::{channel_stats, Dataset, DatasetInfo, Split, Splits};
use crate::error::{Error, Result};
use image::{imageops, ImageReader, Limits};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The largest `image_size` an image folder may be loaded at.
pub const MAX_IMAGE_SIZE: usize = 1024;

/// The image file extensions read (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The most classes a dataset can have (labels are bytes).
const MAX_CLASSES: usize = 256;

/// Largest width or height of a source image that is decoded.
const MAX_SOURCE_SIDE: u32 = 16_384;

/// An image folder: `ImageFolder::load(dir, image_size)`.
pub struct ImageFolder;

/// `Ok` for a usable `image_size`, else why not.
pub fn check_image_size(image_size: usize) -> std::result::Result<(), String> {
    if image_size == 0 || image_size > MAX_IMAGE_SIZE {
        return Err(format!("image size {image_size}: expected 1 to {MAX_IMAGE_SIZE} pixels"));
    }
    Ok(())
}

impl ImageFolder {
    /// Loads `dir/train` and `dir/test`, every image as RGB `image_size` x `image_size`.
    pub fn load(dir: &Path, image_size: usize) -> Result<Splits> {
        let bad = |path: &Path, msg: String| Error::Dataset { path: path.to_path_buf(), msg };
        let [train_dir, test_dir] = split_dirs(dir, image_size, &["train", "test"])?;
        let train_classes = list_classes(&train_dir)?;
        check_class_count(&train_dir, &train_classes)?;
        let test_classes = list_classes(&test_dir)?;
        for (name, _) in &train_classes {
            if !test_classes.iter().any(|(n, _)| n == name) {
                return Err(bad(&test_dir, format!("class `{name}` of train/ has no folder here (every class needs test images)")));
            }
        }
        for (name, _) in &test_classes {
            if !train_classes.iter().any(|(n, _)| n == name) {
                return Err(bad(
                    &test_dir.join(name),
                    format!("class `{name}` is not a class of train/ (classes: {})", names(&train_classes)),
                ));
            }
        }
        // Label = position in the sorted train classes; test classes are the same set, in the same order.
        let shape = [3, image_size, image_size];
        let train = decode_split(&train_classes, shape)?;
        let test = decode_split(&test_classes, shape)?;
        let info = describe(dir, train_classes, &train)?;
        Ok(Splits { train, test, info, dir: dir.to_path_buf(), verified: false })
    }

    /// `dir/test` alone: classes named by its subfolders (sorted), mean and
    /// std from its images.
    pub fn load_test(dir: &Path, image_size: usize) -> Result<Split> {
        let [test_dir] = split_dirs(dir, image_size, &["test"])?;
        let classes = list_classes(&test_dir)?;
        check_class_count(&test_dir, &classes)?;
        let data = decode_split(&classes, [3, image_size, image_size])?;
        let info = describe(dir, classes, &data)?;
        Ok(Split { data, info, dir: dir.to_path_buf(), verified: false })
    }
}

/// `dir`'s subfolders `splits`, checked to exist (and the image size to be usable).
fn split_dirs<const N: usize>(dir: &Path, image_size: usize, splits: &[&str; N]) -> Result<[PathBuf; N]> {
    let bad = |path: &Path, msg: String| Error::Dataset { path: path.to_path_buf(), msg };
    check_image_size(image_size).map_err(|msg| bad(dir, msg))?;
    if !dir.is_dir() {
        return Err(bad(dir, "not a folder; expected one holding train/<class>/*.png|jpg|jpeg and test/<class>/...".into()));
    }
    let dirs = splits.map(|s| dir.join(s));
    for d in &dirs {
        if !d.is_dir() {
            return Err(bad(d, "missing folder: an image folder holds train/<class>/*.png|jpg|jpeg and test/<class>/...".into()));
        }
    }
    Ok(dirs)
}

fn check_class_count(split: &Path, classes: &[(String, Vec<PathBuf>)]) -> Result<()> {
    if classes.len() > MAX_CLASSES {
        return Err(Error::Dataset {
            path: split.to_path_buf(),
            msg: format!("{} class folders: at most {MAX_CLASSES} classes (labels are bytes)", classes.len()),
        });
    }
    Ok(())
}

/// The description of a folder whose classes are `classes`, normalized by the statistics of `stats_from`.
fn describe(dir: &Path, classes: Vec<(String, Vec<PathBuf>)>, stats_from: &Dataset) -> Result<DatasetInfo> {
    let bad = |msg: String| Error::Dataset { path: dir.to_path_buf(), msg };
    let (mean, std) = channel_stats(&stats_from.images, stats_from.shape);
    let class_names: Vec<String> = classes.into_iter().map(|(n, _)| n).collect();
    let info = DatasetInfo { name: "image-folder".into(), shape: stats_from.shape, classes: class_names.len(), class_names, mean, std };
    info.validate().map_err(|e| bad(e.to_string()))?;
    Ok(info)
}

fn names(classes: &[(String, Vec<PathBuf>)]) -> String {
    classes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn hidden(path: &Path) -> bool {
    path.file_name().map(|n| n.to_string_lossy().starts_with('.')).unwrap_or(true)
}

fn is_image(path: &Path) -> bool {
    path.extension().map(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x))).unwrap_or(false)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if !hidden(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The class subfolders of a split (sorted by name) and their image files (sorted).
fn list_classes(split: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes = Vec::new();
    for path in read_dir_sorted(split)? {
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files: Vec<PathBuf> = read_dir_sorted(&path)?.into_iter().filter(|p| is_image(p) && p.is_file()).collect();
        if files.is_empty() {
            return Err(Error::Dataset { path, msg: format!("class folder `{name}` holds no images (*.png, *.jpg, *.jpeg)") });
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(Error::Dataset {
            path: split.to_path_buf(),
            msg: "no class subfolders: expected one folder per class, each holding *.png|jpg|jpeg images".into(),
        });
    }
    Ok(classes)
}

/// Decodes every image of a split in parallel, ordered round-robin over the classes.
fn decode_split(classes: &[(String, Vec<PathBuf>)], shape: [usize; 3]) -> Result<Dataset> {
    let longest = classes.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
    let mut samples: Vec<(&Path, u8)> = Vec::new();
    for i in 0..longest {
        for (label, (_, files)) in classes.iter().enumerate() {
            if let Some(f) = files.get(i) {
                samples.push((f, label as u8));
            }
        }
    }
    let sample_len: usize = shape.iter().product();
    let total = samples.len().checked_mul(sample_len);
    let mut images: Vec<u8> = Vec::new();
    let dir = classes.first().and_then(|(_, f)| f.first()).and_then(|f| f.parent()).and_then(|p| p.parent()).unwrap_or(Path::new("."));
    total.and_then(|t| images.try_reserve_exact(t).ok()).ok_or_else(|| Error::Dataset {
        path: dir.to_path_buf(),
        msg: format!("{} images of {shape:?} do not fit in memory: use a smaller image size", samples.len()),
    })?;
    images.resize(samples.len() * sample_len, 0);
    let results: Vec<Result<()>> =
        images.par_chunks_mut(sample_len).zip(&samples).map(|(out, (path, _))| decode_into(path, shape[1], out)).collect();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let labels = samples.iter().map(|(_, l)| *l).collect();
    Ok(Dataset { images, labels, len: samples.len(), shape })
}

/// Decodes one image file, converts it to RGB, resizes it to `size` x `size`
/// and writes it to `out` as (C, H, W).
pub fn decode_into(path: &Path, size: usize, out: &mut [u8]) -> Result<()> {
    let bad = |msg: String| Error::Dataset { path: path.to_path_buf(), msg };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(bad("empty image file (0 bytes)".into()));
    }
    let mut reader =
        ImageReader::new(std::io::Cursor::new(&bytes[..])).with_guessed_format().map_err(|e| bad(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG or JPEG image (its content is not recognized)".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    reader.limits(limits);
    // A decoder should never panic on bad input; if one does, it is this file's error, not a crash.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| bad("the image decoder failed on this file (corrupt image)".into()))?
        .map_err(|e| bad(format!("corrupt or unsupported image: {e}")))?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(bad(format!("image is {}x{} pixels", decoded.width(), decoded.height())));
    }
    let rgb = decoded.to_rgb8();
    let s = size as u32;
    let rgb = if rgb.dimensions() == (s, s) { rgb } else { imageops::resize(&rgb, s, s, imageops::FilterType::Triangle) };
    let plane = size * size;
    if out.len() != 3 * plane {
        return Err(bad(format!("internal: output buffer of {} bytes for a 3x{size}x{size} image", out.len())));
    }
    for (i, px) in rgb.pixels().enumerate() {
        out[i] = px.0[0];
        out[plane + i] = px.0[1];
        out[2 * plane + i] = px.0[2];
    }
    Ok(())
}
