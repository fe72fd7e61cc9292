//! From `train`'s options to a [`Plan`]: everything a run needs that is known
//! before any data is read, every value checked, so that a bad option fails in
//! milliseconds. An option that would do nothing in the run is an error (on
//! the command line) or a note (from a `--config` file, where the command line
//! may have changed what applies).

use super::args::{ModelArg, RecipeArgs, TrainArgs, AUGMENT_RANGES};
use super::config_file::{self, ConfigFile, RunConfig};
use super::run_dir::{read_resume, Resumed, TRAIN_STATE};
use crate::dataset::DatasetArg;
use anyhow::{bail, Context, Result};
use rr_core::data::DatasetInfo;
use rr_core::model::ModelConfig;
use rr_core::optim::{OptimizerKind, Schedule};
use rr_core::train::TrainConfig;
use std::path::{Path, PathBuf};

/// The options a resumed run may change (besides --log-interval, --data-dir, --device, --threads, --precision, --profile, --no-graphs).
const RESUME_MAY_CHANGE: [&str; 3] = ["--epochs", "--lr", "--eval-batch-size"];

/// The files a run writes to its folder (what --overwrite replaces).
pub(super) const RUN_FILES: [&str; 8] =
    ["metrics.csv", "steps.csv", "model.safetensors", "best.safetensors", TRAIN_STATE, "config.json", "curves.png", "confusion.png"];

/// The test-set batch size when none is given.
const EVAL_BATCH_SIZE: usize = 1000;

pub(super) struct Plan {
    pub(super) dataset: DatasetArg,
    pub(super) image_size: usize,
    /// --data-dir, or the folder the resumed or repeated run read.
    pub(super) data_dir: Option<PathBuf>,
    options: RecipeArgs,
    /// A repeated run's model (`--config RUN/config.json`).
    base_model: Option<ModelConfig>,
    pub(super) config: TrainConfig,
    /// Whether the recipe's batch size is the default, so a short run may halve it
    /// ([`TrainConfig::fit_short_run`]), and whether the learning rate follows it.
    pub(super) short_run: Option<bool>,
    pub(super) eval_batch_size: usize,
    pub(super) resumed: Option<Resumed>,
    /// A new run's folder (none: a dated one under runs/).
    pub(super) out: Option<PathBuf>,
    pub(super) overwrite: bool,
    pub(super) log_interval: Option<usize>,
    pub(super) profile: bool,
    pub(super) no_graphs: bool,
    /// One-line notices to print before training.
    pub(super) notes: Vec<String>,
}

impl Plan {
    /// The model to build for data described by `info`.
    pub(super) fn model_config(&self, info: &DatasetInfo) -> ModelConfig {
        match &self.resumed {
            Some(r) => r.model_config.clone(),
            None => self.options.model_config(self.base_model.as_ref(), self.dataset, info),
        }
    }
}

impl TrainArgs {
    /// Checks every option and works out the run; reads no data.
    pub(super) fn plan(self) -> Result<Plan> {
        if self.log_interval == Some(0) {
            bail!("--log-interval must be at least 1 step, got 0");
        }
        match self.resume.clone() {
            Some(path) => self.plan_resume(path),
            None => self.plan_new(),
        }
    }

    fn plan_resume(self, path: PathBuf) -> Result<Plan> {
        for (given, option) in [(self.config.is_some(), "--config"), (self.out.is_some(), "--out"), (self.overwrite, "--overwrite")] {
            if given {
                bail!("{option} cannot be combined with --resume: a resumed run keeps its settings and writes to its own folder");
            }
        }
        let refused: Vec<String> = self.recipe.given().into_iter().filter(|o| !RESUME_MAY_CHANGE.contains(&o.as_str())).collect();
        if !refused.is_empty() {
            bail!(
                "{} cannot change when resuming: a resumed run keeps its saved settings and may change only {}, --log-interval, --data-dir, --device, --threads, --precision, --profile and --no-graphs",
                refused.join(", "),
                RESUME_MAY_CHANGE.join(", ")
            );
        }
        let eval_batch_size = check_eval_batch_size(self.recipe.eval_batch_size)?;
        let mut resumed = read_resume(&path, self.recipe.epochs)?;
        if let Some(lr) = self.recipe.lr {
            resumed.config.optimizer.lr = lr;
        }
        resumed.config.validate()?;
        Ok(Plan {
            dataset: resumed.dataset,
            image_size: resumed.image_size,
            data_dir: self.common.data_dir.clone().or_else(|| resumed.data_dir.clone()),
            options: self.recipe,
            base_model: None,
            config: resumed.config.clone(),
            short_run: None,
            eval_batch_size,
            resumed: Some(resumed),
            out: None,
            overwrite: false,
            log_interval: self.log_interval,
            profile: self.profile,
            no_graphs: self.no_graphs,
            notes: Vec::new(),
        })
    }

    fn plan_new(self) -> Result<Plan> {
        let cli = RecipeArgs { data_dir: self.common.data_dir.clone(), ..self.recipe.clone() };
        let (file, run): (RecipeArgs, Option<RunConfig>) = match &self.config {
            None => (RecipeArgs::default(), None),
            Some(path) => match config_file::read(path)? {
                ConfigFile::Options(o) => (*o, None),
                ConfigFile::Run(r) => (RecipeArgs::default(), Some(*r)),
            },
        };
        let options = cli.clone().or(file.clone());
        let run_dataset = run.as_ref().map(|r| DatasetArg::from_name(&r.dataset.name).context("--config: unknown dataset")).transpose()?;
        let dataset = options.dataset.or(run_dataset).unwrap_or(DatasetArg::Mnist);
        // A repeated run's data folder and image size, unless the dataset changed.
        let same_data = run_dataset == Some(dataset);
        let run = run.as_ref();
        let image_size = options
            .image_size
            .or(run.filter(|_| same_data).map(|r| r.image_size))
            .unwrap_or(rr_core::data::DatasetKind::DEFAULT_IMAGE_SIZE);
        let data_dir = options.data_dir.clone().or(run.filter(|_| same_data).map(|r| r.data_dir.clone()));
        let base_model = run.map(|r| r.model.clone());
        let model = options.model.or(base_model.as_ref().and_then(ModelArg::of)).unwrap_or(ModelArg::Lenet);
        let base = match run {
            Some(r) => r.train.clone(),
            None => TrainConfig::recipe(&model.recipe_model(), dataset.name()),
        };
        let config = options.apply(base, dataset);
        let context = RunContext { config: &config, model, dataset, augment_off: options.augment == Some(false) };
        for option in cli.given() {
            if let Some(why) = context.inapplicable(&option) {
                bail!("{option} {why}");
            }
        }
        let mut notes = Vec::new();
        let file_only: Vec<String> = file.given().into_iter().filter(|o| !cli.given().contains(o)).collect();
        for option in file_only {
            if let Some(why) = context.inapplicable(&option) {
                let path = self.config.as_deref().unwrap_or(Path::new("")).display();
                notes.push(format!("note: {} from {path} {why}; it is ignored", option.trim_start_matches("--")));
            }
        }
        config.validate()?;
        check_image_size(dataset, image_size)?;
        if let Some(shape) = dataset.known_shape(image_size).filter(|_| config.augment.crop > 0 || config.augment.cutout > 0) {
            config.augment.validate_for(&shape)?;
        }
        match dataset.known_info(image_size) {
            Some(info) => options.model_config(base_model.as_ref(), dataset, &info).graph(&info.shape, info.classes).map(|_| ())?,
            // Shape or classes come with the data: check what needs neither (MNIST's description stands in).
            None => options.model_config(base_model.as_ref(), dataset, &DatasetInfo::mnist()).validate()?,
        }
        let eval_batch_size = check_eval_batch_size(options.eval_batch_size.or(run.and_then(|r| r.eval_batch_size)))?;
        if self.overwrite && self.out.is_none() {
            bail!("--overwrite applies to an existing --out folder; without --out every run gets a new one");
        }
        check_out(self.out.as_deref(), self.overwrite)?;
        Ok(Plan {
            dataset,
            image_size,
            data_dir,
            short_run: (options.batch_size.is_none() && run.is_none()).then_some(options.lr.is_none()),
            base_model,
            config,
            options,
            eval_batch_size,
            resumed: None,
            out: self.out,
            overwrite: self.overwrite,
            log_interval: self.log_interval,
            profile: self.profile,
            no_graphs: self.no_graphs,
            notes,
        })
    }
}

/// What decides whether an option does anything.
struct RunContext<'a> {
    config: &'a TrainConfig,
    model: ModelArg,
    dataset: DatasetArg,
    augment_off: bool,
}

impl RunContext<'_> {
    /// Why `option` has no effect in this run, if it has none.
    fn inapplicable(&self, option: &str) -> Option<String> {
        let model = value_name(self.model);
        let o = &self.config.optimizer;
        let optimizer = serde_json::to_value(o.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let schedule = schedule_name(&self.config.schedule.schedule);
        let why = match option {
            "--width" if !matches!(self.model, ModelArg::MnistCnn | ModelArg::CifarSpeed) => {
                format!("applies to --model mnist-cnn and cifar-speed only (the model is {model})")
            }
            "--dropout" if self.model != ModelArg::MnistCnn => format!("applies to --model mnist-cnn only (the model is {model})"),
            "--mlp-sizes" if self.model != ModelArg::Mlp => format!("applies to --model mlp only (the model is {model})"),
            "--image-size" if self.dataset != DatasetArg::ImageFolder => {
                format!("applies to --dataset image-folder only ({} images keep their size)", self.dataset.name())
            }
            "--momentum" | "--nesterov" if o.kind != OptimizerKind::Sgd => {
                format!("applies to --optimizer sgd only (the optimizer is {optimizer}, which uses --beta1 and --beta2)")
            }
            "--beta1" | "--beta2" | "--eps" if o.kind == OptimizerKind::Sgd => {
                "applies to --optimizer adam and adamw only (the optimizer is sgd, which uses --momentum)".to_string()
            }
            "--milestones" | "--gamma" if !matches!(self.config.schedule.schedule, Schedule::Step { .. }) => {
                format!("applies to --schedule step only (the schedule is {schedule})")
            }
            "--pct-start" if !matches!(self.config.schedule.schedule, Schedule::OneCycle { .. }) => {
                format!("applies to --schedule onecycle only (the schedule is {schedule})")
            }
            "--crop-padding" if self.config.augment.crop == 0 => "applies to random crops only (--crop is 0)".to_string(),
            range if self.augment_off && AUGMENT_RANGES.contains(&range) => {
                "conflicts with --augment false (which turns every range off): leave one of them out".to_string()
            }
            _ => return None,
        };
        Some(why)
    }
}

fn value_name<T: clap::ValueEnum>(value: T) -> String {
    value.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}

pub(super) fn schedule_name(s: &Schedule) -> &'static str {
    match s {
        Schedule::Constant => "constant",
        Schedule::Step { .. } => "step",
        Schedule::Cosine => "cosine",
        Schedule::OneCycle { .. } => "onecycle",
        Schedule::Triangular { .. } => "triangular",
    }
}

fn check_eval_batch_size(size: Option<usize>) -> Result<usize> {
    match size.unwrap_or(EVAL_BATCH_SIZE) {
        0 => bail!("--eval-batch-size must be at least 1, got 0"),
        n => Ok(n),
    }
}

fn check_image_size(dataset: DatasetArg, size: usize) -> Result<()> {
    if dataset == DatasetArg::ImageFolder {
        rr_core::data::folder::check_image_size(size).map_err(|msg| anyhow::anyhow!("--image-size: {msg}"))?;
    }
    Ok(())
}

/// Refuses an existing, non-empty output folder unless `overwrite`.
fn check_out(out: Option<&Path>, overwrite: bool) -> Result<()> {
    let Some(out) = out else { return Ok(()) };
    if out.exists() && !out.is_dir() {
        bail!("--out {}: a file, not a folder", out.display());
    }
    let non_empty = out.is_dir() && std::fs::read_dir(out).with_context(|| format!("--out {}", out.display()))?.next().is_some();
    if non_empty && !overwrite {
        // Resuming needs the run's commit record: a run killed before its first one cannot be.
        let resume = match out.join(TRAIN_STATE).is_file() {
            true => format!(", --resume {} to continue that run", out.display()),
            false => String::new(),
        };
        bail!(
            "--out {}: the folder is not empty; pass --overwrite to replace a previous run's files there{resume}, or another --out",
            out.display()
        );
    }
    Ok(())
}

/// Removes a previous run's files from `out` (other files stay).
pub(super) fn clear_run_files(out: &Path) -> Result<()> {
    for name in RUN_FILES {
        let path = out.join(name);
        if path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("--overwrite: cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}
