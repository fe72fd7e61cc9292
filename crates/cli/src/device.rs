//! `--device` parsing and dispatch to a backend-generic function.

use anyhow::Result;
use rr_core::profile::Profiled;
use rr_core::{Backend, CpuBackend, Precision};
use rr_cuda::CudaBackend;
use rr_wgpu::WgpuBackend;

use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// The first CUDA device if one works, else a real GPU through wgpu, else the CPU (with a notice).
    Auto,
    Cpu,
    Cuda(usize),
    /// The best adapter wgpu finds (Vulkan, Metal, DirectX 12), software ones included.
    Wgpu,
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            "wgpu" => Ok(DeviceArg::Wgpu),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!("unknown device `{other}`: expected auto, cpu, cuda, cuda:N or wgpu")),
            },
        }
    }
}

/// `--precision`: a precision, or the best the device offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    Auto,
    Exactly(Precision),
}

impl FromStr for PrecisionArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionArg::Auto),
            other => other
                .parse()
                .map(PrecisionArg::Exactly)
                .map_err(|_| format!("unknown precision `{other}`: expected auto, fp32, tf32, bf16 or fp16")),
        }
    }
}

/// Where and how to run: the device, CPU threads (none or 0: one per core) and the precision.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub device: DeviceArg,
    pub threads: Option<usize>,
    pub precision: PrecisionArg,
}

/// Applies `--precision` to a backend: `auto` takes bf16 where offered (tensor
/// cores keep accuracy there), else fp32; a precision the device lacks is an
/// error on a GPU, and a note on the CPU, which always computes in fp32.
fn apply_precision<B: Backend>(backend: &B, arg: PrecisionArg) -> Result<()> {
    let offered = backend.precisions();
    let precision = match arg {
        PrecisionArg::Auto if backend.name().starts_with("cuda") && !offered.contains(&Precision::Bf16) => {
            eprintln!("note: cuDNN 9 (libcudnn.so.9) was not found: convolutions run on this backend's own fp32 kernels");
            Precision::Fp32
        }
        PrecisionArg::Auto => [Precision::Bf16, Precision::Fp32].into_iter().find(|p| offered.contains(p)).unwrap_or(Precision::Fp32),
        PrecisionArg::Exactly(p) if !offered.contains(&p) && backend.name().starts_with("cpu") => {
            let scaling = if p == Precision::Fp16 { " (nor its loss scaling: training runs in fp32 without)" } else { "" };
            eprintln!("note: the CPU computes in fp32 only; --precision {p} does not apply there{scaling}");
            Precision::Fp32
        }
        PrecisionArg::Exactly(p) => p,
    };
    backend.set_precision(precision).map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
    if precision != Precision::Fp32 {
        eprintln!("precision: {precision} convolutions and products (fp32 weights, optimizer state, BatchNorm statistics and loss)");
    }
    Ok(())
}

/// Something to run once the backend is known.
pub trait WithBackend {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats>;
}

/// What a run did, for the profile's per-step figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub steps: usize,
    pub images: usize,
    pub seconds: f64,
}

/// Opens the device and runs `f` on it; with `profile`, through the
/// op-timing wrapper, then prints the table.
pub fn dispatch<F: WithBackend>(target: Target, profile: bool, f: F) -> Result<RunStats> {
    let (threads, precision) = (target.threads, target.precision);
    check_threads(threads)?;
    let cpu = || CpuBackend::new(threads.unwrap_or(0));
    let not_cpu = |name: &str| {
        if threads.is_some() {
            eprintln!("note: --threads sizes the CPU backend's pool; it does nothing on {name}");
        }
    };
    match target.device {
        DeviceArg::Cpu => run_on(cpu()?, precision, profile, f),
        DeviceArg::Cuda(n) => {
            let gpu = CudaBackend::new(n)?;
            not_cpu(&gpu.name());
            run_on(gpu, precision, profile, f)
        }
        DeviceArg::Wgpu => {
            let gpu = WgpuBackend::new(true)?;
            eprintln!("adapter: {}", gpu.name());
            if gpu.is_software() {
                eprintln!("note: this is a software adapter (the CPU emulating a GPU): --device cpu is faster");
            }
            not_cpu(&gpu.name());
            run_on(gpu, precision, profile, f)
        }
        DeviceArg::Auto => match CudaBackend::new(0) {
            Ok(gpu) => {
                not_cpu(&gpu.name());
                run_on(gpu, precision, profile, f)
            }
            Err(e) => {
                // The short reason; `--device cuda` prints the full one (paths searched).
                let reason = e.to_string();
                let reason = reason.split(" (searched").next().unwrap_or(&reason).to_string();
                // A real GPU through wgpu next; a software adapter never (the CPU backend is faster).
                match WgpuBackend::new(false) {
                    Ok(gpu) => {
                        eprintln!("note: no usable CUDA GPU ({reason}); running on {}", gpu.name());
                        not_cpu(&gpu.name());
                        run_on(gpu, precision, profile, f)
                    }
                    Err(w) => {
                        eprintln!("note: no usable GPU (CUDA: {reason}; wgpu: {w}); running on the CPU");
                        run_on(cpu()?, precision, profile, f)
                    }
                }
            }
        },
    }
}

/// `--no-graphs` where steps are never recorded: say it does nothing.
pub fn note_no_graphs(backend_name: &str) {
    if !backend_name.starts_with("cuda") {
        eprintln!("note: --no-graphs does nothing on {backend_name}: only the CUDA backend records and replays steps");
    }
}

impl Target {
    /// The checks of these options that need no device (dispatch makes them too).
    pub fn check(&self) -> Result<()> {
        check_threads(self.threads)
    }
}

/// More threads than a few per core only slow the CPU backend down (and
/// 100,000 of them take minutes to start): refuse them.
fn check_threads(threads: Option<usize>) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = 4 * cores;
    match threads {
        Some(n) if n > most => {
            anyhow::bail!("--threads {n}: at most {most} (4 per core; this machine has {cores}), or 0 for one per core")
        }
        _ => Ok(()),
    }
}

fn run_on<B: Backend, F: WithBackend>(backend: B, precision: PrecisionArg, profile: bool, f: F) -> Result<RunStats>
where
    B::Mark: Send,
{
    apply_precision(&backend, precision)?;
    if !profile {
        return f.run(&backend);
    }
    let profiled = Profiled::new(backend);
    let stats = f.run(&profiled)?;
    print_profile(&profiled, &stats)?;
    Ok(stats)
}

fn print_profile<B: Backend>(p: &Profiled<B>, stats: &RunStats) -> Result<()>
where
    B::Mark: Send,
{
    let table = p.take()?;
    let timer = match p.name() {
        n if n.starts_with("cuda") => "CUDA events around each op",
        n if n.starts_with("wgpu") => "GPU timestamps around each op where the adapter writes them, else wall time",
        _ => "wall time of each op",
    };
    println!("\nprofile of {} ({timer}; graph capture is off while profiling):", p.name());
    let total: f64 = table.iter().map(|t| t.ms).sum();
    let steps = stats.steps.max(1) as f64;
    println!("{:<24} {:>8} {:>11} {:>10} {:>7}", "op", "calls", "total ms", "us/step", "share");
    for t in &table {
        println!("{:<24} {:>8} {:>11.2} {:>10.1} {:>6.1}%", t.op, t.calls, t.ms, 1e3 * t.ms / steps, 100.0 * t.ms / total.max(1e-12));
    }
    println!("{:<24} {:>8} {:>11.2} {:>10.1}", "all ops", table.iter().map(|t| t.calls).sum::<usize>(), total, 1e3 * total / steps);
    if stats.steps > 0 {
        println!(
            "per training step: {:.1} us wall over {} steps; {:.0} images/s",
            1e6 * stats.seconds / steps,
            stats.steps,
            stats.images as f64 / stats.seconds.max(1e-12)
        );
    }
    if let Some((what, bytes)) = p.peak_memory() {
        println!("{what}: {:.1} MB", bytes as f64 / 1e6);
    }
    Ok(())
}
