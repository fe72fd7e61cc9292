use crate::device::{self, RunStats, WithBackend};
use crate::CommonArgs;
use anyhow::Result;
use rr_core::checkpoint;
use rr_core::train::{evaluate, DeviceDataset};
use rr_core::Backend;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A .safetensors checkpoint written by `train`
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images per forward pass
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    batch_size: usize,
    /// Evaluate on a test set other than the one the checkpoint was trained with
    /// (by default refused: e.g. MNIST data for a Fashion-MNIST model)
    #[arg(long)]
    allow_other_dataset: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1, got 0");
    }
    args.common.target().check()?;
    crate::check_file(&args.checkpoint, "--checkpoint")?;
    device::dispatch(args.common.target(), false, EvalJob(args)).map(|_| ())
}

struct EvalJob(EvalArgs);

impl WithBackend for EvalJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let ckpt_path = args.checkpoint.clone();
        let (mut model, ckpt) = checkpoint::load_model(&ckpt_path, backend)?;
        let (info, test) = crate::dataset::test_for_checkpoint(&ckpt, &ckpt_path, &args.common.data_dir, args.allow_other_dataset)?;
        let test_set = DeviceDataset::upload(backend, &test, &info)?;
        let start = Instant::now();
        let stats = evaluate(backend, &mut model, &test_set, args.batch_size)?;
        let seconds = start.elapsed().as_secs_f64();
        let epoch = ckpt.metadata.get("epoch").map_or(String::new(), |e| format!(", epoch {e}"));
        println!("{} ({}{epoch}) on {}", args.checkpoint.display(), ckpt.config.name(), backend.name());
        println!(
            "test_loss {:.4}  test_acc {:.2}% ({}/{})  {:.2}s  {} img/s",
            stats.loss,
            100.0 * stats.accuracy,
            stats.correct,
            stats.samples,
            seconds,
            crate::train::group_thousands((stats.samples as f64 / seconds) as u64)
        );
        let matrix = crate::plot::confusion(backend, &mut model, &test, &info)?;
        print!("{}", crate::plot::confusion_text(&matrix, &info.class_names));
        Ok(RunStats::default())
    }
}
