//! One error type for the whole crate: every variant names the op, file or value
//! that went wrong and what was expected.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was handed a buffer or geometry that does not fit.
    #[error("{op}: {what}: expected {expected}, got {got}")]
    Shape { op: &'static str, what: String, expected: String, got: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An IDX data file is malformed.
    #[error("{path}: not a valid IDX file: {msg}")]
    Idx { path: PathBuf, msg: String },

    /// A data file's content does not match its recorded SHA-256.
    #[error("{path}: SHA-256 mismatch (expected {expected}, got {actual}); the file is corrupt or not the one listed in SHA256SUMS.raw")]
    Checksum { path: PathBuf, expected: String, actual: String },

    /// A dataset is inconsistent (counts, label range, image size).
    #[error("dataset {path}: {msg}")]
    Dataset { path: PathBuf, msg: String },

    /// A checkpoint is malformed or does not fit the model.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// An invalid configuration value (hyper-parameter, model size, ...).
    #[error("invalid {what}: {msg}")]
    Config { what: String, msg: String },

    /// Training diverged: the loss became NaN or infinite.
    #[error("training diverged in epoch {epoch} at step {step}: the loss became {loss} (try a smaller --lr)")]
    Diverged { epoch: usize, step: usize, loss: f32 },

    /// Training diverged: a parameter or the optimizer state became NaN or
    /// infinite (found at the end of an epoch; Adam's moments can overflow
    /// while the loss stays finite).
    #[error("training diverged in epoch {epoch} (found at its end, after step {step}): {what} became {value} (try a smaller --lr)")]
    NonFinite { epoch: usize, step: usize, what: String, value: f32 },

    /// A device (driver, library, kernel launch) failed.
    #[error("{backend} backend: {msg}")]
    Device { backend: &'static str, msg: String },
}

impl Error {
    pub fn shape(op: &'static str, what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape { op, what: what.into(), expected: expected.to_string(), got: got.to_string() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn config(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { what: what.into(), msg: msg.into() }
    }
}

/// Returns a shape error unless `got == expected`.
pub fn check_len(op: &'static str, what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::shape(op, format!("length of {what}"), expected, got))
    }
}
