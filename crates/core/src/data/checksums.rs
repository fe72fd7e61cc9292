//! `SHA256SUMS.raw`: the SHA-256 of each data file's *decompressed* bytes, in
//! `sha256sum` format (`<64 hex digits>  <file name>`, one a line). A file
//! `F.gz` is listed as `F`. Shared by every loader that reads a folder of files.

use super::idx::read_maybe_gz;
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The name of the checksum file looked for in a dataset folder.
pub const CHECKSUMS: &str = "SHA256SUMS.raw";

/// The parsed lines of a `SHA256SUMS.raw`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checksums {
    /// (file name without `.gz`, lower-case hex digest).
    pub entries: Vec<(String, String)>,
}

impl Checksums {
    /// Reads `dir/SHA256SUMS.raw`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(CHECKSUMS);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&text, &path).map(Some)
    }

    /// Parses the text of a checksum file; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(hash), Some(name)) if hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    entries.push((name.trim_start_matches('*').to_string(), hash.to_ascii_lowercase()))
                }
                _ => {
                    return Err(Error::Dataset {
                        path: path.to_path_buf(),
                        msg: format!("line {}: expected `<64 hex digits>  <file name>`, found {line:?}", i + 1),
                    })
                }
            }
        }
        Ok(Checksums { entries })
    }

    /// The recorded digest of `name` (without `.gz`), if listed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, h)| h.as_str())
    }

    /// Checks `bytes` (the decompressed content of `path`, listed as `name`).
    /// Returns whether the file was listed; a listed file whose digest differs
    /// is an [`Error::Checksum`] naming `path`.
    pub fn check(&self, name: &str, path: &Path, bytes: &[u8]) -> Result<bool> {
        let Some(expected) = self.get(name) else { return Ok(false) };
        let actual = sha256_hex(bytes);
        if actual != expected {
            return Err(Error::Checksum { path: path.to_path_buf(), expected: expected.to_string(), actual });
        }
        Ok(true)
    }
}

/// The lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds `dir/stem.gz` or `dir/stem`, or `None` when neither is a file.
pub fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)].into_iter().find(|p| p.is_file())
}

/// A file read from a dataset folder: where it was, its decompressed bytes,
/// and whether its checksum was listed (and matched).
#[derive(Clone, Debug)]
pub struct VerifiedFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub verified: bool,
}

/// Finds `stem.gz` or `stem` in `dir`, decompresses it and checks its SHA-256
/// against `sums` (when given and the file is listed there).
pub fn read_verified(dir: &Path, stem: &str, sums: Option<&Checksums>) -> Result<VerifiedFile> {
    let path = find(dir, stem).ok_or_else(|| Error::Dataset { path: dir.to_path_buf(), msg: format!("missing {stem}.gz (or {stem})") })?;
    let bytes = read_maybe_gz(&path)?;
    let verified = match sums {
        Some(sums) => sums.check(stem, &path, &bytes)?,
        None => false,
    };
    Ok(VerifiedFile { path, bytes, verified })
}
