//! The `train` command: trains a model epoch by epoch, printing a line and writing a checkpoint after each.

mod args;
mod config_file;
mod plan;
mod progress;
mod run_dir;

pub use args::TrainArgs;
use run_dir::*;

use crate::dataset;
use crate::device::{self, RunStats, WithBackend};
use anyhow::Result;
use config_file::RunConfig;
use plan::Plan;
use progress::{EpochBar, StepLog};
use rr_core::loss_scale::LossScaling;
use rr_core::model::Model;
use rr_core::optim::{OptimizerKind, Schedule};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::tta::{evaluate_tta, Tta};
use rr_core::{Backend, Precision};
use std::time::Instant;

pub fn run(args: TrainArgs) -> Result<()> {
    let target = args.common.target();
    // Every option is checked before the device opens or any data is read.
    let plan = args.plan()?;
    device::dispatch(target, plan.profile, TrainJob(plan)).map(|_| ())
}

struct TrainJob(Plan);

impl WithBackend for TrainJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let mut plan = self.0;
        for note in &plan.notes {
            eprintln!("{note}");
        }
        let resumed = plan.resumed.take();
        let data_dir = dataset::data_dir(&plan.data_dir, plan.dataset)?;
        let mut data = dataset::load(plan.dataset, &data_dir, plan.image_size)?;
        if let Some(r) = &resumed {
            dataset::check_same(&r.trained_on, &data.info, &data_dir)?;
            // The normalization the run was trained with (an image folder's statistics may have moved).
            data.info = r.trained_on.clone();
        }
        let info = data.info.clone();
        let model_config = plan.model_config(&info);
        if let Some(n) = plan.config.train_limit {
            data.train.truncate(n);
        }
        if let Some(n) = plan.config.test_limit {
            data.test.truncate(n);
        }
        if let Some(scale_lr) = plan.short_run {
            let before = plan.config.batch_size;
            if plan.config.fit_short_run(data.train.len, scale_lr) {
                println!(
                    "short run: batch {} and lr {} ({} steps at batch {before}; the default recipe takes at least {} where it can: pass --batch-size to choose)",
                    plan.config.batch_size,
                    plan.config.optimizer.lr,
                    plan.config.epochs * data.train.len.div_ceil(before),
                    rr_core::train::SHORT_RUN_STEPS,
                );
            }
        }
        // fp16 trains with dynamic loss scaling (GradScaler's), other precisions without.
        plan.config.loss_scale = match (backend.precision(), plan.config.loss_scale) {
            (Precision::Fp16, given @ LossScaling::Dynamic { .. }) => given,
            (precision, _) => LossScaling::for_precision(precision),
        };
        let config = plan.config.clone();
        config.validate()?;
        if let Some(r) = &resumed {
            r.check_data(&data, &data_dir)?;
        }

        let mut model = match &resumed {
            Some(r) => r.model(backend)?,
            None => Model::with_init(backend, &model_config, &info.shape, info.classes, config.seed, config.init)?,
        };
        if resumed.is_none() {
            init_from_data(backend, &mut model, &data.train, &info)?;
        }
        if model.input_shape() != info.shape || model.classes() != info.classes {
            anyhow::bail!(
                "the model takes {:?} inputs and predicts {} classes, but {} has {:?} images in {} classes",
                model.input_shape(),
                model.classes(),
                info.name,
                info.shape,
                info.classes
            );
        }
        println!(
            "{} {} ({} parameters) on {} | {}: {} train / {} test images from {}{} | {}",
            if resumed.is_some() { "resuming" } else { "training" },
            model_config.name(),
            model.params.count(),
            backend.name(),
            info.name,
            data.train.len,
            data.test.len,
            data_dir.display(),
            if data.verified { " (SHA-256 verified)" } else { "" },
            describe_recipe(&config),
        );
        if !config.augment.is_off() {
            let a = &config.augment;
            println!(
                "augmentation: rotate ±{}°, scale ±{}, shift ±{}, elastic {} px, flips {}, noise {}, crop ±{} px ({:?} padding), cutout {} px",
                a.rotate_deg,
                a.scale,
                a.translate,
                a.elastic,
                match (a.flip, a.alternate_flips) {
                    (false, _) => "off",
                    (true, false) => "on",
                    (true, true) => "alternating",
                },
                a.noise,
                a.crop,
                a.padding,
                a.cutout
            );
        }
        if config.label_smoothing > 0.0 {
            println!("label smoothing {}", config.label_smoothing);
        }
        if config.loss_scale.is_on() {
            println!("loss scaling: {}", config.loss_scale.describe());
        }
        let train_set = DeviceDataset::upload(backend, &config.augment.prepare_train(&data.train, config.seed), &info)?;
        let test_set = DeviceDataset::upload(backend, &data.test, &info)?;
        let mut trainer = Trainer::new(backend, model, config.clone(), train_set.len)?;
        trainer.use_graphs = !plan.no_graphs;
        if plan.no_graphs {
            device::note_no_graphs(&backend.name());
        }
        let run_config = RunConfig {
            model: model_config.clone(),
            train: config.clone(),
            device: backend.name(),
            precision: backend.precision(),
            dataset: info.clone(),
            data_dir: data_dir.clone(),
            image_size: plan.image_size,
            eval_batch_size: Some(plan.eval_batch_size),
        };
        let fingerprints = dataset::fingerprint_entries(&data);
        let (first_epoch, mut run_dir) = match &resumed {
            Some(r) => {
                r.restore(backend, &mut trainer)?;
                (r.epochs_done, RunDir::reopen(r, &info, fingerprints, &data_dir, &run_config)?)
            }
            None => {
                if let Some(dir) = plan.out.as_deref().filter(|_| plan.overwrite) {
                    plan::clear_run_files(dir)?;
                }
                (0, RunDir::create(plan.out.clone(), backend, &trainer, &info, fingerprints, &data_dir, &run_config)?)
            }
        };
        let mut run = RunStats::default();

        let mut step_log = plan.log_interval.map(|every| StepLog::open(&run_dir.dir, every, resumed.is_some())).transpose()?;

        let steps = trainer.steps_per_epoch(train_set.len);
        for epoch in first_epoch..config.epochs {
            let mut bar = EpochBar::new(epoch, config.epochs, steps);
            // metrics.csv's lr: the mean over the epoch's steps.
            let lr = trainer.epoch_lrs(epoch, steps).iter().map(|&l| l as f64).sum::<f64>() / steps.max(1) as f64;
            if let Some(log) = &mut step_log {
                log.begin_epoch();
            }
            let start = Instant::now();
            let train = trainer.train_epoch_with(backend, &train_set, epoch, &mut |r| {
                bar.update(r)?;
                match &mut step_log {
                    Some(log) => log.after_step(epoch, r, &bar),
                    None => Ok(()),
                }
            });
            bar.finish();
            let train = train.map_err(|e| anyhow::anyhow!("{e}; {}", run_dir.last_good(epoch)))?;
            let seconds = start.elapsed().as_secs_f64();
            run.steps += steps;
            run.images += train.samples;
            run.seconds += seconds;
            let test = evaluate(backend, &mut trainer.model, &test_set, plan.eval_batch_size)?;
            let rate = train.samples as f64 / seconds;
            println!(
                "epoch {:>2}/{}  train_loss {:.4}  train_acc {:6.2}%  test_loss {:.4}  test_acc {:6.2}%  {:6.2}s  {:>9} img/s{}",
                epoch + 1,
                config.epochs,
                train.loss,
                100.0 * train.accuracy,
                test.loss,
                100.0 * test.accuracy,
                seconds,
                group_thousands(rate as u64),
                describe_loss_scale(&trainer),
            );
            run_dir.save_epoch(backend, &trainer, &EpochRecord { epoch: epoch + 1, train, test, seconds, lr: lr as f32 })?;
        }
        if config.tta != Tta::None && first_epoch < config.epochs {
            let start = Instant::now();
            let test = evaluate_tta(backend, &mut trainer.model, &test_set, plan.eval_batch_size, config.tta)?;
            println!(
                "test-time augmentation ({} views per image): test_loss {:.4}  test_acc {:6.2}%  {:.2}s",
                config.tta.views_per_image(),
                test.loss,
                100.0 * test.accuracy,
                start.elapsed().as_secs_f64()
            );
        }
        let out = &run_dir.dir;
        if config.epochs > 0 {
            crate::plot::draw_run(backend, out, &mut trainer.model, &data.test, &info)?;
            println!("wrote {} and {}", out.join("curves.png").display(), out.join("confusion.png").display());
        }
        if let Some((what, bytes)) = backend.peak_memory() {
            println!("{what}: {:.1} MB", bytes as f64 / 1e6);
        }
        let metrics = run_dir.path(METRICS_FILE);
        if config.epochs == 0 {
            println!("no epochs to train: wrote the initial state (train on with --resume {} --epochs N)", out.display());
        } else {
            let (model, best) = (run_dir.path(MODEL_FILE), run_dir.path(BEST_FILE));
            if first_epoch == config.epochs {
                println!("nothing to train: {} already has {} epochs (its files are up to date)", out.display(), config.epochs);
            }
            println!("wrote {} and {} (best: {})", metrics.display(), model.display(), best.display());
            if let Some(log) = &step_log {
                println!("wrote {}", log.path().display());
            }
            println!("evaluate with: rusty-recognition eval --checkpoint {}", model.display());
        }
        Ok(run)
    }
}

/// The epoch line's loss-scaling figures (nothing when it is off).
fn describe_loss_scale<B: Backend>(trainer: &Trainer<B>) -> String {
    match trainer.loss_scaler.as_ref().and_then(|s| s.last_epoch()) {
        Some(e) => format!("  loss_scale {}  skipped {} step{}", e.scale, e.skipped, if e.skipped == 1 { "" } else { "s" }),
        None => String::new(),
    }
}

/// The optimizer, schedule and the settings that apply to them, for the header.
fn describe_recipe(c: &TrainConfig) -> String {
    let o = &c.optimizer;
    let optimizer = match o.kind {
        OptimizerKind::Sgd => format!("sgd lr {}, momentum {}{}", o.lr, o.momentum, if o.nesterov { " (Nesterov)" } else { "" }),
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            let name = if o.kind == OptimizerKind::Adam { "adam" } else { "adamw" };
            format!("{name} lr {}, betas ({}, {}), eps {}", o.lr, o.beta1, o.beta2, o.eps)
        }
    };
    let schedule = match &c.schedule.schedule {
        Schedule::Constant => "constant schedule".to_string(),
        Schedule::Step { milestones, gamma } => {
            let at: Vec<String> = milestones.iter().map(|m| m.to_string()).collect();
            format!("step schedule (x{gamma} after epochs {})", at.join(","))
        }
        Schedule::Cosine => "cosine schedule".to_string(),
        Schedule::OneCycle { pct_start } => format!("one-cycle schedule ({:.0}% warm-up)", pct_start * 100.0),
        Schedule::Triangular { start, peak_at, end } => {
            format!("triangular schedule ({start} up to 1 at {:.0}%, down to {end})", peak_at * 100.0)
        }
    };
    let warmup =
        if c.schedule.warmup_epochs > 0.0 { format!(", linear warm-up over {} epochs", c.schedule.warmup_epochs) } else { String::new() };
    let epochs = if c.epochs == 1 { "1 epoch".to_string() } else { format!("{} epochs", c.epochs) };
    let mut extras = String::new();
    for g in &c.param_groups {
        let decay = g.weight_decay.map_or(String::new(), |wd| format!(", weight decay {wd}"));
        let epochs = g.train_epochs.map_or(String::new(), |e| format!(" for {e} epochs"));
        match g.lr_scale {
            0.0 => extras += &format!(", {} frozen", g.params),
            scale => extras += &format!(", {} at {scale}x lr{decay}{epochs}", g.params),
        }
    }
    if let Some(l) = &c.lookahead {
        extras += &format!(", lookahead every {} steps (decay {:.3})", l.every, l.decay);
    }
    if c.drop_last {
        extras += ", short last batch dropped";
    }
    format!("{epochs}, batch {}, {optimizer}, weight decay {}, {schedule}{warmup}{extras}", c.batch_size, o.weight_decay)
}

/// Sets the filters of a whitening layer from the first training images (the
/// speed-run network's; other models have none), and says so.
fn init_from_data<B: Backend>(
    backend: &B,
    model: &mut Model<B>,
    train: &rr_core::data::Dataset,
    info: &rr_core::data::DatasetInfo,
) -> Result<()> {
    if !model.graph.nodes.iter().any(|n| matches!(n.op, rr_core::graph::Op::Whiten { .. })) {
        return Ok(());
    }
    let start = Instant::now();
    let images = train.normalized(info, WHITENING_IMAGES);
    model.init_from_data(backend, &images)?;
    let n = images.len() / train.sample_len().max(1);
    println!("whitening: filters from the patches of the first {n} training images ({:.0} ms)", start.elapsed().as_secs_f64() * 1e3);
    Ok(())
}

/// How many training images the whitening statistics come from (airbench's 5,000).
pub const WHITENING_IMAGES: usize = 5000;

pub fn group_thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
