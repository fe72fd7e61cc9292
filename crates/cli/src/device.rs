//! `--device` parsing and dispatch to a backend-generic function.

use anyhow::Result;
use rr_core::{Backend, CpuBackend};
use rr_cuda::CudaBackend;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// The first CUDA device if one works, else the CPU (with a notice).
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!("unknown device `{other}`: expected auto, cpu, cuda or cuda:N")),
            },
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
        DeviceArg::Cuda(n) => f.run(&CudaBackend::new(n)?),
        DeviceArg::Auto => match CudaBackend::new(0) {
            Ok(gpu) => f.run(&gpu),
            Err(e) => {
                eprintln!("note: no usable GPU ({e}); running on the CPU");
                f.run(&CpuBackend::new(threads)?)
            }
        },
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
