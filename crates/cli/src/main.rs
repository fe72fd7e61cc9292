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
mod speedrun;
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
    #[command(after_help = "\
Trains a model on a dataset and writes a run folder: metrics.csv, model.safetensors, best.safetensors,
train_state.safetensors (for --resume), config.json (for --config), curves.png and confusion.png.

Examples:
  rusty-recognition train                                   # LeNet-5 on the shipped MNIST, 5 epochs
  rusty-recognition train --model mnist-cnn --out runs/cnn  # the strong model, 20 epochs (~99.6%)
  rusty-recognition train --limit-train 3000 --epochs 1 --log-interval 20
  rusty-recognition train --config runs/cnn/config.json --out runs/cnn-again   # repeat a run
  rusty-recognition train --resume runs/cnn/model.safetensors --epochs 30      # train it further")]
    Train(Box<train::TrainArgs>),
    /// Evaluate a checkpoint on the test set.
    #[command(after_help = "\
Prints the test loss and accuracy, the accuracy of each class and the confusion matrix; reads only the
test split of the dataset the checkpoint was trained on.

Examples:
  rusty-recognition eval --checkpoint runs/cnn/model.safetensors
  rusty-recognition eval --checkpoint runs/fashion/best.safetensors --data-dir /usr/share/datasets/fashion-mnist")]
    Eval(eval::EvalArgs),
    /// Predict the class of PNG/JPEG images (any size; preprocessed as the checkpoint's dataset was).
    #[command(after_help = "\
Prints each image's class and its top-3 probabilities (--json: one JSON array).

Examples:
  rusty-recognition predict --checkpoint runs/cnn/model.safetensors seven.png
  rusty-recognition predict --json --checkpoint runs/cnn/model.safetensors *.png")]
    Predict(predict::PredictArgs),
    /// Serve a draw-a-digit web page and a JSON prediction API for a checkpoint.
    #[command(after_help = "\
Serves a page to draw or upload an image, and POST /api/predict (PNG/JPEG or {\"pixels\": [...]}).

Examples:
  rusty-recognition serve --checkpoint runs/cnn/model.safetensors             # http://127.0.0.1:8000/
  rusty-recognition serve --checkpoint runs/cnn/model.safetensors --port 0    # any free port")]
    Serve(serve::ServeArgs),
    /// Redraw a run folder's curves.png and confusion.png from its metrics.csv and checkpoint.
    #[command(after_help = "\
Example:
  rusty-recognition plot runs/cnn")]
    Plot(plot::PlotArgs),
    /// Export a checkpoint as an ONNX model (input: the normalized image; output: the logits).
    #[command(after_help = "\
Writes the model as ONNX (opset 17, dynamic batch) with its normalization and class names in the metadata.

Examples:
  rusty-recognition export --checkpoint runs/cnn/model.safetensors              # runs/cnn/model.onnx
  rusty-recognition export --checkpoint runs/cnn/best.safetensors --out cnn.onnx")]
    Export(export::ExportArgs),
    /// Time LeNet-5 training epochs and inference on a device (the figures of BENCHMARKS.md).
    #[command(after_help = "\
Prints one line per epoch, then a BENCH line: median epoch time, training and inference images/s,
peak memory.

Examples:
  rusty-recognition bench --device cuda
  rusty-recognition bench --device cpu --epochs 3 --infer-reps 5")]
    Bench(bench::BenchArgs),
    /// Train the CIFAR-10 speed recipe (cifar-speed) several times and time it as airbench does.
    #[command(after_help = "\
Trains --model cifar-speed from scratch --runs times (after an untimed warm-up run) and prints a SPEEDRUN
line per run (test accuracy with test-time augmentation, seconds from the whitening layer's
initialization to the end of the final evaluation), then the mean, standard deviation and peak memory.

Examples:
  rusty-recognition speedrun --device cuda --data-dir ../shared/data/cifar10
  rusty-recognition speedrun --device cuda --runs 1 --epochs 2 --warmup-epochs 0")]
    Speedrun(speedrun::SpeedrunArgs),
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
    /// Device: auto (the first CUDA GPU if usable, else a hardware GPU through wgpu, else the CPU),
    /// cpu, cuda, cuda:N, or wgpu (the best adapter wgpu finds: Vulkan, Metal, DirectX 12, software ones included)
    #[arg(long, default_value = "auto")]
    pub device: device::DeviceArg,
    /// CPU backend worker threads, at most 4 per core [default: 0 = one per core]
    #[arg(long, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Precision of convolutions and matrix products: auto (bf16 on a CUDA GPU with cuDNN, else fp32),
    /// fp32, tf32 (CUDA), bf16 (CUDA with cuDNN), fp16 (CUDA with cuDNN; trains with dynamic loss
    /// scaling); weights, optimizer state and the loss stay fp32
    #[arg(long, default_value = "auto")]
    pub precision: device::PrecisionArg,
}

impl DeviceArgs {
    /// Where and how to run.
    pub fn target(&self) -> device::Target {
        device::Target { device: self.device, threads: self.threads, precision: self.precision }
    }
}

/// Refuses a missing input file before any device is opened or data read.
pub fn check_file(path: &std::path::Path, option: &str) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => anyhow::bail!("{option} {}: not a file", path.display()),
        Err(e) => anyhow::bail!("{option} {}: {e}", path.display()),
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
    let result = run(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Speedrun(args) => speedrun::run(args),
    }
}
