//! A run folder: where a run's outputs go, how they survive a kill at any
//! instant, and what `--resume` reads back.
//!
//! # Crash consistency
//!
//! `train_state.safetensors` is the run's commit record: one file that holds
//! everything a resume needs after epoch k, namely the model's state dict, the
//! optimizer state (`optimizer.state`) and, as metadata, k, the optimizer's
//! step count, the best epoch and its accuracy, the text of `metrics.csv` up
//! to epoch k, the run id, the training config and the fingerprints of the
//! data. `model.safetensors`, `best.safetensors` and `metrics.csv` are views of
//! it, for `eval`, `predict`, `serve`, `plot` and people; the two checkpoints
//! carry the run id and their epoch.
//!
//! Every file is written by [`checkpoint::write_atomic`] (temporary file,
//! fsync, rename, fsync of the folder), so each name holds a complete old or
//! new version at any instant, and the run refuses to write a NaN or an
//! infinity. After epoch k it writes the commit, then the views: the model,
//! the best model when k is the best epoch so far, the metrics.
//!
//! Invariant: when an epoch begins to train, every view matches the commit
//! (model and metrics at its epoch, the best model at its best epoch). A new
//! run makes it true by committing epoch 0 (the initial weights; metrics.csv
//! with its header only, no checkpoint) before it trains; a process that
//! trained epoch k keeps it by writing the commit and the views of k before it
//! trains k+1; `--resume` makes it true again before it trains: it removes the
//! `.NAME.tmp-PID` files of killed writes, rewrites the views of the commit
//! (the repair; identical content when nothing was interrupted) and cuts
//! `steps.csv`, appended to as an epoch trains, to the committed epochs.
//!
//! So a kill while epoch k trains or before the rename of its commit leaves
//! epoch k-1 committed, with matching views; a kill after that rename leaves
//! epoch k committed and each view at epoch k-1 or k. Either way `eval` loads
//! a complete model.safetensors (once epoch 1 is committed) and metrics.csv
//! holds epochs 1..j once each, j being k-1 or k. `--resume` reads the run
//! from the commit only, never from a view, so it restarts from exactly the
//! state a straight run had after the committed epoch (bit-identical on the CPU).
//!
//! `--resume` refuses what does not belong together, naming it: a checkpoint
//! in the folder (or the one named) of another run or of a later epoch than
//! the commit, a commit holding a NaN or an infinity, or other data than the
//! run's (by their fingerprints: [`dataset::check_run_data`]).

use crate::dataset::{self, DatasetArg};
use anyhow::{Context, Result};
use rr_core::checkpoint::{self, MODEL_KEY};
use rr_core::data::DatasetInfo;
use rr_core::model::{Model, ModelConfig, NamedTensor};
use rr_core::train::{PassStats, TrainConfig, Trainer};
use rr_core::Backend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One row of metrics.csv.
pub(super) const CSV_HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr";

/// The run's commit record: what resuming needs.
pub(super) const TRAIN_STATE: &str = "train_state.safetensors";
pub(super) const MODEL_FILE: &str = "model.safetensors";
pub(super) const BEST_FILE: &str = "best.safetensors";
pub(super) const METRICS_FILE: &str = "metrics.csv";
const CONFIG_FILE: &str = "config.json";
/// CSV logs appended to while an epoch trains (first column: the 1-based
/// epoch), so a kill leaves rows of an epoch that was not committed.
const EPOCH_LOGS: [&str; 1] = ["steps.csv"];

/// The commit record's last tensor.
const OPTIMIZER_TENSOR: &str = "optimizer.state";
/// Metadata of the commit record that its checkpoint views leave out.
const STATE_ONLY: [&str; 5] = ["optimizer_steps", "best_test_accuracy", "best_epoch", "metrics", "data_dir"];
const RUN_ID: &str = "run_id";

/// The best test accuracy so far and its epoch (`None` before any, or when a
/// run of an older version did not record it).
#[derive(Clone, Copy, Debug)]
pub(super) struct Best {
    pub(super) accuracy: f64,
    pub(super) epoch: Option<usize>,
}

/// One committed epoch: the content of train_state.safetensors.
pub(super) struct Commit {
    /// The model's state dict, then the optimizer state.
    tensors: Vec<NamedTensor>,
    meta: BTreeMap<String, String>,
    epoch: usize,
    best_epoch: Option<usize>,
}

impl Commit {
    pub(super) fn model_tensors(&self) -> &[NamedTensor] {
        &self.tensors[..self.tensors.len() - 1]
    }

    fn optimizer_state(&self) -> &[f32] {
        &self.tensors[self.tensors.len() - 1].2
    }

    fn meta(&self, keep: impl Fn(&str) -> bool) -> Vec<(&str, String)> {
        self.meta.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.as_str(), v.clone())).collect()
    }

    /// The first tensor holding a NaN or an infinity, and that value.
    fn first_non_finite(&self) -> Option<(&str, f32)> {
        self.tensors.iter().find_map(|(name, _, v)| v.iter().find(|x| !x.is_finite()).map(|x| (name.as_str(), *x)))
    }
}

/// A run's folder and what every file written into it carries.
pub(super) struct RunDir {
    pub(super) dir: PathBuf,
    /// Run id, training config, dataset description and data fingerprints.
    run_meta: Vec<(&'static str, String)>,
    data_dir: PathBuf,
    /// metrics.csv up to the last epoch done.
    metrics: String,
    best: Best,
}

/// One epoch's figures: a row of metrics.csv.
pub(super) struct EpochRecord {
    /// 1-based.
    pub(super) epoch: usize,
    pub(super) train: PassStats,
    pub(super) test: PassStats,
    pub(super) seconds: f64,
    pub(super) lr: f32,
}

impl EpochRecord {
    fn csv_row(&self) -> String {
        let (t, v) = (&self.train, &self.test);
        let rate = t.samples as f64 / self.seconds;
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1},{}\n",
            self.epoch, t.loss, t.accuracy, v.loss, v.accuracy, self.seconds, rate, self.lr
        )
    }
}

impl RunDir {
    /// A new run's folder (`--out`, or runs/DATE-TIME), with `config.json`
    /// and epoch 0 committed: the model and optimizer as the trainer has them.
    pub(super) fn create<B: Backend>(
        out: Option<PathBuf>,
        backend: &B,
        trainer: &Trainer<B>,
        info: &DatasetInfo,
        data: [(&'static str, String); 2],
        data_dir: &Path,
        run_config: &impl serde::Serialize,
    ) -> Result<Self> {
        let dir = make_out_dir(out)?;
        let run_meta = run_meta(new_run_id(), &trainer.config, info, data)?;
        let run = RunDir::open(dir, run_meta, data_dir, format!("{CSV_HEADER}\n"), Best { accuracy: -1.0, epoch: None })?;
        run.write_config(run_config)?;
        let commit = run.commit(backend, trainer, 0, None)?;
        run.write(&commit)?;
        Ok(run)
    }

    /// The folder of a resumed run, repaired: its views rewritten from the
    /// commit record, and `config.json` with the settings it goes on with.
    pub(super) fn reopen(
        r: &Resumed,
        info: &DatasetInfo,
        data: [(&'static str, String); 2],
        data_dir: &Path,
        run_config: &impl serde::Serialize,
    ) -> Result<Self> {
        let metrics = r.commit.meta.get("metrics").cloned().unwrap_or_else(|| format!("{CSV_HEADER}\n"));
        let run = RunDir::open(r.out.clone(), run_meta(r.run_id.clone(), &r.config, info, data)?, data_dir, metrics, r.best)?;
        run.write_views(&r.commit)?;
        for log in EPOCH_LOGS {
            cut_log(&run.path(log), r.epochs_done)?;
        }
        run.write_config(run_config)?;
        Ok(run)
    }

    /// The folder, rid of the temporary files of killed writes.
    fn open(dir: PathBuf, run_meta: Vec<(&'static str, String)>, data_dir: &Path, metrics: String, best: Best) -> Result<Self> {
        remove_stale_temporaries(&dir)?;
        Ok(RunDir { dir, run_meta, data_dir: data_dir.to_path_buf(), metrics, best })
    }

    pub(super) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn write_config(&self, run_config: &impl serde::Serialize) -> Result<()> {
        Ok(checkpoint::write_atomic(&self.path(CONFIG_FILE), serde_json::to_string_pretty(run_config)?.as_bytes())?)
    }

    /// Commits the epoch just trained, then writes its views (see the module's
    /// documentation).
    pub(super) fn save_epoch<B: Backend>(&mut self, backend: &B, trainer: &Trainer<B>, record: &EpochRecord) -> Result<()> {
        self.metrics.push_str(&record.csv_row());
        if record.test.accuracy > self.best.accuracy {
            self.best = Best { accuracy: record.test.accuracy, epoch: Some(record.epoch) };
        }
        let commit = self.commit(backend, trainer, record.epoch, Some(&record.test))?;
        self.write(&commit)
    }

    /// Where the last good state is, for an error in epoch `done + 1`.
    pub(super) fn last_good(&self, done: usize) -> String {
        if done == 0 {
            "no epoch was saved".into()
        } else {
            format!("the last good checkpoint (epoch {done}) is intact: {}", self.path(MODEL_FILE).display())
        }
    }

    fn commit<B: Backend>(&self, backend: &B, trainer: &Trainer<B>, epoch: usize, test: Option<&PassStats>) -> Result<Commit> {
        let mut tensors = trainer.model.state_dict(backend)?;
        let state = trainer.state(backend)?;
        tensors.push((OPTIMIZER_TENSOR.to_string(), vec![state.len()], state));
        let mut meta: BTreeMap<String, String> =
            checkpoint::model_metadata(&trainer.model).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        meta.extend(self.run_meta.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut set = |k: &str, v: String| meta.insert(k.to_string(), v);
        set("epoch", epoch.to_string());
        if let Some(test) = test {
            set("test_accuracy", format!("{:.6}", test.accuracy));
            set("test_loss", format!("{:.6}", test.loss));
        }
        set("optimizer_steps", trainer.optimizer.steps.to_string());
        set("best_test_accuracy", format!("{}", self.best.accuracy));
        if let Some(e) = self.best.epoch {
            set("best_epoch", e.to_string());
        }
        set("metrics", self.metrics.clone());
        set("data_dir", self.data_dir.display().to_string());
        Ok(Commit { tensors, meta, epoch, best_epoch: self.best.epoch })
    }

    /// The commit record, then its views; never a NaN or an infinity.
    fn write(&self, commit: &Commit) -> Result<()> {
        if let Some((name, value)) = commit.first_non_finite() {
            let done = commit.epoch.saturating_sub(1);
            anyhow::bail!("epoch {}: `{name}` holds {value}, so it was not saved; {}", commit.epoch, self.last_good(done));
        }
        checkpoint::save_tensors(&self.path(TRAIN_STATE), &commit.tensors, &commit.meta(|_| true))?;
        // (Where the crash tests ask for it, a wide window of views behind the commit.)
        (0..3).for_each(|_| checkpoint::test_write_delay());
        self.write_views(commit)
    }

    fn write_views(&self, commit: &Commit) -> Result<()> {
        if commit.epoch > 0 {
            let meta = commit.meta(|k| !STATE_ONLY.contains(&k));
            checkpoint::save_tensors(&self.path(MODEL_FILE), commit.model_tensors(), &meta)?;
            if commit.best_epoch == Some(commit.epoch) {
                checkpoint::save_tensors(&self.path(BEST_FILE), commit.model_tensors(), &meta)?;
            }
        }
        let metrics = commit.meta.get("metrics").map_or(CSV_HEADER, String::as_str);
        Ok(checkpoint::write_atomic(&self.path(METRICS_FILE), metrics.as_bytes())?)
    }
}

/// The metadata every file of a run carries: its id, training config,
/// dataset description and data fingerprints.
fn run_meta(
    run_id: String,
    config: &TrainConfig,
    info: &DatasetInfo,
    data: [(&'static str, String); 2],
) -> Result<Vec<(&'static str, String)>> {
    let mut meta = vec![(RUN_ID, run_id), ("train_config", serde_json::to_string(config)?), info.metadata_entry()];
    meta.extend(data);
    Ok(meta)
}

/// Cuts a CSV log to its header and the whole rows of epochs 1..=epochs
/// (when it exists): what a resume keeps of a log the kill interrupted.
fn cut_log(path: &Path, epochs: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let committed = |row: &&str| row.split(',').next().and_then(|e| e.parse::<usize>().ok()).is_some_and(|e| e <= epochs);
    let mut lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    let kept: String = lines.next().into_iter().chain(lines.filter(committed)).collect();
    if kept != text {
        checkpoint::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// A fresh id for a run: 128 random bits (the standard library's hasher keys
/// are seeded from the OS), in hex.
fn new_run_id() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let state = std::collections::hash_map::RandomState::new();
    let (a, b) = (state.hash_one((nanos, std::process::id())), state.hash_one((std::process::id(), nanos)));
    format!("{a:016x}{b:016x}")
}

/// Removes the temporary files that writes killed midway left in `dir`.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_str().is_some_and(checkpoint::is_temporary) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// What `--resume` restores.
pub(super) struct Resumed {
    pub(super) out: PathBuf,
    pub(super) state_path: PathBuf,
    pub(super) run_id: String,
    pub(super) model_config: ModelConfig,
    pub(super) graph: rr_core::Graph,
    pub(super) dataset: DatasetArg,
    pub(super) image_size: usize,
    /// The dataset description and folder of the run (older runs: no folder).
    pub(super) trained_on: DatasetInfo,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) config: TrainConfig,
    pub(super) epochs_done: usize,
    pub(super) optimizer_steps: u64,
    pub(super) best: Best,
    pub(super) commit: Commit,
}

impl Resumed {
    /// The model of the commit, on `backend`.
    pub(super) fn model<B: Backend>(&self, backend: &B) -> Result<Model<B>> {
        let mut model = Model::build(backend, self.model_config.clone(), self.graph.clone(), self.config.seed, self.config.init)?;
        model.load_state_dict(backend, self.commit.model_tensors(), &self.state_path)?;
        Ok(model)
    }

    /// The optimizer state of the commit, into `trainer`.
    pub(super) fn restore<B: Backend>(&self, backend: &B, trainer: &mut Trainer<B>) -> Result<()> {
        Ok(trainer.restore(backend, self.commit.optimizer_state(), self.optimizer_steps)?)
    }

    /// Refuses data other than the run's.
    pub(super) fn check_data(&self, data: &rr_core::data::Splits, dir: &Path) -> Result<()> {
        dataset::check_run_data(&self.commit.meta, &self.trained_on, data, dir)
    }
}

/// `--resume PATH`: the run in PATH's folder (PATH may be the folder itself,
/// or any file of it), as its commit record has it, to train up to `epochs`
/// epochs in all (as many as it has: nothing to train, its files repaired).
pub(super) fn read_resume(path: &Path, epochs: Option<usize>) -> Result<Resumed> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    };
    let state_path = dir.join(TRAIN_STATE);
    if !state_path.is_file() {
        if !path.exists() {
            anyhow::bail!("--resume {}: no such file or folder", path.display());
        }
        let place = if path.is_dir() { "in" } else { "beside" };
        anyhow::bail!("--resume needs {} (the run's training state) {place} {}", state_path.display(), path.display());
    }
    let (tensors, meta) = checkpoint::load_tensors(&state_path)?;
    if !meta.contains_key(MODEL_KEY) {
        anyhow::bail!(
            "{} holds no model: it was written by an older version, whose runs cannot be resumed (start a new run)",
            state_path.display()
        );
    }
    let commit = commit_of(&state_path, tensors, meta)?;
    let run_id = commit.meta.get(RUN_ID).with_context(|| format!("{}: no `{RUN_ID}` entry", state_path.display()))?.clone();
    let named =
        Some(path.to_path_buf()).filter(|p| p.is_file() && ![state_path.clone(), dir.join(MODEL_FILE), dir.join(BEST_FILE)].contains(p));
    for file in [dir.join(MODEL_FILE), dir.join(BEST_FILE)].into_iter().chain(named) {
        if file.is_file() {
            check_belongs(&file, &state_path, &run_id, commit.epoch)?;
        }
    }
    if let Some((name, value)) = commit.first_non_finite() {
        anyhow::bail!(
            "{}: `{name}` holds {value} (epoch {}): a run with NaN or infinite values cannot be resumed",
            state_path.display(),
            commit.epoch
        );
    }
    let get = |k: &str| commit.meta.get(k).with_context(|| format!("{}: no `{k}` entry", state_path.display()));
    let mut config: TrainConfig =
        serde_json::from_str(get("train_config")?).with_context(|| format!("{}: bad train_config", state_path.display()))?;
    let epochs_done = commit.epoch;
    let Some(epochs) = epochs else {
        anyhow::bail!("{} has {epochs_done} epochs: pass --epochs with the new total to train more", dir.display());
    };
    if epochs < epochs_done {
        anyhow::bail!("{} already has {epochs_done} epochs: pass --epochs {epochs_done} or more", dir.display());
    }
    config.epochs = epochs;
    let ckpt = checkpoint::from_tensors(&state_path, Vec::new(), commit.meta.clone())?;
    let info = ckpt.dataset(&state_path)?;
    let (dataset, image_size) = dataset::of_checkpoint(&info)?;
    let best_accuracy = get("best_test_accuracy")?.parse().unwrap_or(0.0);
    Ok(Resumed {
        trained_on: info,
        data_dir: commit.meta.get("data_dir").map(PathBuf::from),
        out: dir,
        run_id,
        model_config: ckpt.config,
        graph: ckpt.graph,
        dataset,
        image_size,
        config,
        epochs_done,
        optimizer_steps: get("optimizer_steps")?.parse().with_context(|| format!("{}: bad optimizer_steps", state_path.display()))?,
        best: Best { accuracy: best_accuracy, epoch: commit.best_epoch },
        commit,
        state_path,
    })
}

/// The commit in a train_state file's tensors and metadata.
fn commit_of(path: &Path, mut tensors: Vec<NamedTensor>, meta: BTreeMap<String, String>) -> Result<Commit> {
    let at = tensors
        .iter()
        .position(|(n, _, _)| n == OPTIMIZER_TENSOR)
        .with_context(|| format!("{}: no `{OPTIMIZER_TENSOR}` tensor", path.display()))?;
    let optimizer = tensors.remove(at);
    tensors.push(optimizer);
    let epoch = epoch_of(&meta, path)?;
    let best_epoch =
        meta.get("best_epoch").map(|e| e.parse()).transpose().with_context(|| format!("{}: bad best_epoch", path.display()))?;
    Ok(Commit { tensors, meta, epoch, best_epoch })
}

fn epoch_of(meta: &BTreeMap<String, String>, path: &Path) -> Result<usize> {
    let e = meta.get("epoch").with_context(|| format!("{}: no `epoch` entry", path.display()))?;
    e.parse().with_context(|| format!("{}: bad epoch {e:?}", path.display()))
}

/// Refuses a checkpoint `file` beside the commit `state` that is of another
/// run, or of a later epoch than the commit.
fn check_belongs(file: &Path, state: &Path, run_id: &str, epoch: usize) -> Result<()> {
    let (_, meta) = checkpoint::load_tensors(file)?;
    match meta.get(RUN_ID) {
        Some(id) if id == run_id => {}
        Some(id) => {
            anyhow::bail!("{} is of run {id}, but {} of run {run_id}: they are not files of one run", file.display(), state.display())
        }
        None => anyhow::bail!(
            "{} carries no run id (not written by this run), but {} is of run {run_id}: they are not files of one run",
            file.display(),
            state.display()
        ),
    }
    let file_epoch = epoch_of(&meta, file)?;
    if file_epoch > epoch {
        anyhow::bail!(
            "{} is at epoch {file_epoch}, but {} only at epoch {epoch}: the training state is older than the model (a copy?)",
            file.display(),
            state.display()
        );
    }
    Ok(())
}

pub(super) fn make_out_dir(out: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match out {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
            let mut dir = PathBuf::from("runs").join(&stamp);
            let mut i = 1;
            while dir.exists() {
                i += 1;
                dir = PathBuf::from("runs").join(format!("{stamp}-{i}"));
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    Ok(dir)
}
