//! MNIST-style datasets (MNIST, Fashion-MNIST): four IDX files in a folder,
//! optionally checked against a `SHA256SUMS.raw` of their decompressed bytes.

use super::idx::{parse_idx, read_maybe_gz};
use super::{Dataset, DatasetInfo, Splits};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Normalization used by the whole MNIST literature (and torchvision examples).
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

/// MNIST-style datasets: `Mnist::load(dir)` reads the four IDX files.
pub struct Mnist;

const CHECKSUMS: &str = "SHA256SUMS.raw";

impl Mnist {
    /// Loads `train-*` and `t10k-*` files (raw or `.gz`) from `dir`, checking
    /// them against `dir/SHA256SUMS.raw` when that file exists.
    pub fn load(dir: &Path) -> Result<Splits> {
        if !dir.is_dir() {
            return Err(Error::Dataset {
                path: dir.to_path_buf(),
                msg: "not a folder; expected one holding train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)".into(),
            });
        }
        let sums = read_checksums(dir)?;
        let load = |split: &str| -> Result<Dataset> {
            let (ipath, ibytes) = read_verified(dir, &format!("{split}-images-idx3-ubyte"), sums.as_deref())?;
            let (lpath, lbytes) = read_verified(dir, &format!("{split}-labels-idx1-ubyte"), sums.as_deref())?;
            let images = parse_idx(ibytes, &ipath)?;
            let labels = parse_idx(lbytes, &lpath)?;
            let bad = |path: &Path, msg: String| Error::Dataset { path: path.to_path_buf(), msg };
            let [n, rows, cols] = images.dims[..] else {
                return Err(bad(&ipath, format!("images must have 3 dimensions (count, rows, cols), found {:?}", images.dims)));
            };
            if (rows, cols) != (28, 28) {
                return Err(bad(&ipath, format!("images are {rows}x{cols}; the models expect 28x28")));
            }
            if labels.dims != [n] {
                return Err(bad(
                    &lpath,
                    format!("expected {n} labels (one per image in {}), found dimensions {:?}", ipath.display(), labels.dims),
                ));
            }
            if let Some(i) = labels.data.iter().position(|&l| l >= 10) {
                return Err(bad(&lpath, format!("label {} at index {i} is out of range 0..10", labels.data[i])));
            }
            Ok(Dataset { images: images.data, labels: labels.data, len: n, shape: [1, rows, cols] })
        };
        Ok(Splits {
            train: load("train")?,
            test: load("t10k")?,
            info: DatasetInfo::mnist(),
            dir: dir.to_path_buf(),
            verified: sums.is_some(),
        })
    }
}

fn read_checksums(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let path = dir.join(CHECKSUMS);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut sums = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(hash), Some(name)) if hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                sums.push((name.trim_start_matches('*').to_string(), hash.to_ascii_lowercase()))
            }
            _ => {
                return Err(Error::Dataset {
                    path,
                    msg: format!("line {}: expected `<64 hex digits>  <file name>`, found {line:?}", i + 1),
                })
            }
        }
    }
    Ok(Some(sums))
}

/// Finds `stem.gz` or `stem` in `dir`, decompresses it and checks its SHA-256.
fn read_verified(dir: &Path, stem: &str, sums: Option<&[(String, String)]>) -> Result<(PathBuf, Vec<u8>)> {
    let path = [dir.join(format!("{stem}.gz")), dir.join(stem)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Dataset { path: dir.to_path_buf(), msg: format!("missing {stem}.gz (or {stem})") })?;
    let bytes = read_maybe_gz(&path)?;
    if let Some(sums) = sums {
        if let Some((_, expected)) = sums.iter().find(|(name, _)| name == stem) {
            let actual = hex(&Sha256::digest(&bytes));
            if actual != *expected {
                return Err(Error::Checksum { path, expected: expected.clone(), actual });
            }
        }
    }
    Ok((path, bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
