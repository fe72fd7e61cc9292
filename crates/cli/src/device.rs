//! `--device` parsing and dispatch to a backend-generic function.

use anyhow::Result;
use rr_core::{Backend, CpuBackend};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            other => Err(format!("unknown device `{other}`: expected `cpu`")),
        }
    }
}

/// Something to run once the backend is known.
pub trait WithBackend {
    type Output;
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output>;
}

pub fn dispatch<F: WithBackend>(device: DeviceArg, threads: usize, f: F) -> Result<F::Output> {
    match device {
        DeviceArg::Cpu => f.run(&CpuBackend::new(threads)?),
    }
}

/// `--data-dir`, or the repository's `data/mnist` (from the working directory,
/// or from where this binary was built when run elsewhere).
pub fn data_dir(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(dir) = arg {
        return dir.clone();
    }
    let local = Path::new("data/mnist");
    if local.is_dir() {
        return local.to_path_buf();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    if built.is_dir() {
        return built;
    }
    local.to_path_buf()
}
