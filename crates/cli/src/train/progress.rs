//! What a run shows while an epoch trains: the progress bar (with the running
//! loss and accuracy, read back about once a second and only when the bar is
//! drawn) and, with `--log-interval N`, a line and a steps.csv row every N steps.

use super::group_thousands;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rr_core::train::StepReport;
use rr_core::Backend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The step log's file in the run folder, and its columns.
pub(super) const STEPS_CSV: &str = "steps.csv";
/// (`plot` reads the columns by name; a resume cuts the rows by the first, the epoch.)
pub(super) const STEPS_HEADER: &str = "epoch,step,loss,accuracy,lr,images_per_sec";

/// How often the bar's running loss is read back (each read waits for the device).
const BAR_STATS_EVERY: Duration = Duration::from_secs(1);

/// One epoch's progress bar.
pub(super) struct EpochBar {
    bar: ProgressBar,
    stats_read: Instant,
}

impl EpochBar {
    pub(super) fn new(epoch: usize, epochs: usize, steps: usize) -> Self {
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps{msg}, {elapsed} elapsed, eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{epochs}", epoch + 1));
        EpochBar { bar, stats_read: Instant::now() }
    }

    pub(super) fn update<B: Backend>(&mut self, r: &StepReport<'_, B>) -> rr_core::Result<()> {
        self.bar.set_position(r.done as u64);
        if !self.bar.is_hidden() && self.stats_read.elapsed() >= BAR_STATS_EVERY {
            let (loss, correct) = r.sums()?;
            let n = r.samples.max(1) as f64;
            self.bar.set_message(format!(", loss {:.4}, accuracy {:.2}%", loss / n, 100.0 * correct / n));
            self.stats_read = Instant::now();
        }
        Ok(())
    }

    /// Prints a line above the bar (or plainly when the bar is not drawn).
    fn println(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }

    pub(super) fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// `--log-interval`: every `every` steps (counted over the run), the loss and
/// accuracy over the steps since the previous line (within the epoch), the
/// learning rate of the last step and the images per second since then.
pub(super) struct StepLog {
    every: usize,
    path: PathBuf,
    file: std::fs::File,
    /// The epoch's sums and time at the previous line (or the epoch's start).
    since: (f64, f64, usize, Instant),
}

impl StepLog {
    /// Creates `dir/steps.csv`, or appends to it when resuming a run that has one.
    pub(super) fn open(dir: &Path, every: usize, resuming: bool) -> Result<Self> {
        let path = dir.join(STEPS_CSV);
        let append = resuming && path.is_file();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if !append {
            writeln!(file, "{STEPS_HEADER}")?;
        }
        Ok(StepLog { every, path, file, since: (0.0, 0.0, 0, Instant::now()) })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn begin_epoch(&mut self) {
        self.since = (0.0, 0.0, 0, Instant::now());
    }

    /// After step `r.done` of 0-based `epoch`: a line when the run's step count is a multiple of the interval.
    /// (Errors are the library's: this runs inside the training loop.)
    pub(super) fn after_step<B: Backend>(&mut self, epoch: usize, r: &StepReport<'_, B>, bar: &EpochBar) -> rr_core::Result<()> {
        let step = epoch * r.steps + r.done;
        if !step.is_multiple_of(self.every) {
            return Ok(());
        }
        let (loss_sum, correct_sum) = r.sums()?;
        let (loss0, correct0, samples0, time0) = self.since;
        let n = (r.samples - samples0).max(1) as f64;
        let (loss, accuracy) = ((loss_sum - loss0) / n, (correct_sum - correct0) / n);
        let rate = n / time0.elapsed().as_secs_f64().max(1e-9);
        bar.println(&format!(
            "step {step:>6} (epoch {})  loss {loss:.4}  acc {:6.2}%  lr {:.6}  {:>9} img/s",
            epoch + 1,
            100.0 * accuracy,
            r.lr,
            group_thousands(rate as u64)
        ));
        writeln!(self.file, "{},{step},{loss:.6},{accuracy:.6},{},{rate:.1}", epoch + 1, r.lr)
            .map_err(|e| rr_core::Error::io(&self.path, e))?;
        self.since = (loss_sum, correct_sum, r.samples, Instant::now());
        Ok(())
    }
}
