//! The IDX format (LeCun's MNIST files): a 4-byte magic `00 00 <type> <ndim>`,
//! `ndim` big-endian u32 dimensions, then the data. Files may be gzipped.
//! Only unsigned-byte data (type 0x08) is used by these datasets.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads the decompressed bytes of a raw or gzipped file (recognized by the
/// gzip magic bytes, whatever its name). Corrupt or truncated gzip data is an
/// [`Error::Dataset`] naming the file.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(gzip_size_hint(&raw));
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Dataset { path: path.to_path_buf(), msg: format!("corrupt gzip data: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The decompressed size a gzip stream records in its trailer (modulo 2^32),
/// bounded by what deflate can expand `raw` to, so that a lying trailer cannot
/// make us reserve much memory: only a capacity hint.
fn gzip_size_hint(raw: &[u8]) -> usize {
    let Some(trailer) = raw.len().checked_sub(4).map(|i| &raw[i..]) else { return 0 };
    let isize = u32::from_le_bytes(trailer.try_into().expect("4 bytes")) as usize;
    isize.min(raw.len().saturating_mul(1032))
}

/// Reads an IDX file (raw or `.gz`).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(read_maybe_gz(path)?, path)
}

/// Parses decompressed IDX bytes; `path` is only used in error messages.
pub fn parse_idx(bytes: Vec<u8>, path: &Path) -> Result<IdxArray> {
    let err = |msg: String| Error::Idx { path: path.to_path_buf(), msg };
    if bytes.len() < 4 {
        return Err(err(format!("file is {} bytes, shorter than the 4-byte header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "bad magic number {:02x} {:02x} {:02x} {:02x}: expected 00 00 08 <ndim>",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!("element type 0x{:02x} is not supported: expected 0x08 (unsigned byte)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(err(format!("{ndim} dimensions: expected 1 to 4")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(err(format!("truncated header: {ndim} dimensions need {header} bytes, file has {}", bytes.len())));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize).collect();
    let expected =
        dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| err(format!("dimensions {dims:?} overflow")))?;
    let actual = bytes.len() - header;
    if actual != expected {
        let what = if actual < expected { "truncated" } else { "trailing bytes" };
        return Err(err(format!("{what}: dimensions {dims:?} need {expected} data bytes, found {actual}")));
    }
    let mut data = bytes;
    data.drain(..header);
    Ok(IdxArray { dims, data })
}

/// Encodes u8 data as IDX (used by tests and tools that write datasets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
