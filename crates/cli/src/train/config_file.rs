//! `train --config FILE`: a TOML file of options, or a run's own config.json.

use super::args::RecipeArgs;
use anyhow::{Context, Result};
use rr_core::data::DatasetInfo;
use rr_core::model::ModelConfig;
use rr_core::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A run's config.json: what `--config` needs to repeat it exactly. Written
/// straight from these types, so f32 values keep their shortest form
/// (`"lr": 0.1`, not the f64 widening 0.10000000149011612).
#[derive(Serialize, Deserialize)]
pub(super) struct RunConfig {
    pub(super) model: ModelConfig,
    pub(super) train: TrainConfig,
    /// Where and at what precision the run trained (informative: --config
    /// picks neither; pass --device and --precision).
    pub(super) device: String,
    #[serde(default)]
    pub(super) precision: rr_core::Precision,
    pub(super) dataset: DatasetInfo,
    pub(super) data_dir: PathBuf,
    pub(super) image_size: usize,
    #[serde(default)]
    pub(super) eval_batch_size: Option<usize>,
}

pub(super) enum ConfigFile {
    /// Options, as on the command line.
    Options(Box<RecipeArgs>),
    /// A run to repeat.
    Run(Box<RunConfig>),
}

/// Reads a `--config` file: a `.json` file is a run's config.json, anything else TOML options.
pub(super) fn read(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let run = serde_json::from_str(&text)
            .with_context(|| format!("--config {}: not a config.json written by `train` (model, train, dataset, ...)", path.display()))?;
        return Ok(ConfigFile::Run(Box::new(run)));
    }
    let options = toml::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {}", path.display(), e.to_string().trim_end()))?;
    Ok(ConfigFile::Options(Box::new(options)))
}
