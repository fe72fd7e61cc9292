//! `rusty-recognition`: train, evaluate and checkpoint networks on image datasets.

mod bench;
mod dataset;
mod device;
mod digitize;
mod eval;
mod export;
mod infer;
mod plot;
mod predict;
mod serve;
mod train;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rusty-recognition",
    version,
    about = "Train and evaluate convolutional networks on image datasets (MNIST, CIFAR, your own folders), on the CPU or a GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; prints one line per epoch and writes metrics.csv and a checkpoint.
    Train(Box<train::TrainArgs>),
    /// Evaluate a checkpoint on the test set.
    Eval(eval::EvalArgs),
    /// Predict the class of PNG/JPEG images (any size; preprocessed as the checkpoint's dataset was).
    Predict(predict::PredictArgs),
    /// Serve a draw-a-digit web page and a JSON prediction API for a checkpoint.
    Serve(serve::ServeArgs),
    /// Redraw a run folder's curves.png and confusion.png from its metrics.csv and checkpoint.
    Plot(plot::PlotArgs),
    /// Export a checkpoint as an ONNX model (input: the normalized image; output: the logits).
    Export(export::ExportArgs),
    /// Time LeNet-5 training epochs and inference on a device (the figures of BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

/// Options shared by every command that reads data and runs a model.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// The dataset's folder (MNIST: the four IDX files, raw or .gz; CIFAR: the binary batches;
    /// image-folder: train/ and test/) [default: the repository's data/mnist]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub run_on: DeviceArgs,
}

impl CommonArgs {
    /// Where and how to run.
    pub fn target(&self) -> device::Target {
        self.run_on.target()
    }
}

/// Where and how to run, alone for the commands that read no dataset (`predict`, `serve`).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Device: auto (the first GPU if usable, else the CPU), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: device::DeviceArg,
    /// CPU worker threads (0 = one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Precision of convolutions and matrix products: auto (bf16 on a CUDA GPU with cuDNN, else fp32),
    /// fp32, tf32 (CUDA), bf16 (CUDA with cuDNN); weights, optimizer state and the loss stay fp32
    #[arg(long, default_value = "auto")]
    pub precision: device::PrecisionArg,
}

impl DeviceArgs {
    /// Where and how to run.
    pub fn target(&self) -> device::Target {
        device::Target { device: self.device, threads: self.threads, precision: self.precision }
    }
}

fn main() -> ExitCode {
    // Like other command-line tools, stop quietly when the reader of our
    // output goes away (`rusty-recognition eval ... | head`) instead of panicking.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
