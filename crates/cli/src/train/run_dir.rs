//! A run folder: where a run's outputs go, and what `--resume` reads back.

use crate::dataset::{self, DatasetArg};
use anyhow::{Context, Result};
use rr_core::checkpoint;
use rr_core::data::DatasetInfo;
use rr_core::model::ModelConfig;
use rr_core::train::TrainConfig;
use std::path::PathBuf;

/// One row of metrics.csv.
pub(super) const CSV_HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr";

/// The file beside a checkpoint that holds what resuming needs.
pub(super) const TRAIN_STATE: &str = "train_state.safetensors";

/// What `--resume` restores.
pub(super) struct Resumed {
    pub(super) out: PathBuf,
    pub(super) model_config: ModelConfig,
    pub(super) graph: rr_core::Graph,
    pub(super) dataset: DatasetArg,
    pub(super) image_size: usize,
    /// The dataset description and folder of the run (older runs: no folder).
    pub(super) trained_on: DatasetInfo,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) config: TrainConfig,
    pub(super) epochs_done: usize,
    pub(super) optimizer_state: Vec<f32>,
    pub(super) optimizer_steps: u64,
    pub(super) best: f64,
    pub(super) checkpoint: PathBuf,
}

pub(super) fn read_resume(path: &std::path::Path, epochs: Option<usize>) -> Result<Resumed> {
    let ckpt = checkpoint::load(path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf();
    let state_path = dir.join(TRAIN_STATE);
    let (tensors, meta) =
        checkpoint::load_tensors(&state_path).with_context(|| format!("--resume needs {} beside the checkpoint", state_path.display()))?;
    let get = |k: &str| meta.get(k).with_context(|| format!("{}: no `{k}` entry", state_path.display()));
    let mut config: TrainConfig =
        serde_json::from_str(get("train_config")?).with_context(|| format!("{}: bad train_config", state_path.display()))?;
    let epochs_done: usize = get("epoch")?.parse().with_context(|| format!("{}: bad epoch", state_path.display()))?;
    let Some(epochs) = epochs else {
        anyhow::bail!("{} has {epochs_done} epochs: pass --epochs with the new total to train more", path.display());
    };
    if epochs <= epochs_done {
        anyhow::bail!("{} already has {epochs_done} epochs: pass --epochs above that to train more", path.display());
    }
    config.epochs = epochs;
    let optimizer_state = tensors
        .into_iter()
        .find(|(n, _, _)| n == "optimizer.state")
        .map(|(_, _, v)| v)
        .with_context(|| format!("{}: no optimizer state", state_path.display()))?;
    let info = ckpt.dataset(path)?;
    let (dataset, image_size) = dataset::of_checkpoint(&info)?;
    Ok(Resumed {
        trained_on: info,
        data_dir: meta.get("data_dir").map(PathBuf::from),
        out: dir,
        model_config: ckpt.config,
        graph: ckpt.graph,
        dataset,
        image_size,
        config,
        epochs_done,
        optimizer_state,
        optimizer_steps: get("optimizer_steps")?.parse().with_context(|| format!("{}: bad optimizer_steps", state_path.display()))?,
        best: get("best_test_accuracy")?.parse().unwrap_or(0.0),
        checkpoint: path.to_path_buf(),
    })
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
