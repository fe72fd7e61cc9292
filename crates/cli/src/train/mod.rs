//! The `train` command: trains a model epoch by epoch, printing a line and writing a checkpoint after each.

mod args;
mod run_dir;

pub use args::TrainArgs;
use run_dir::*;

use crate::dataset;
use crate::device::{self, RunStats, WithBackend};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rr_core::model::Model;
use rr_core::optim::Schedule;
use rr_core::train::{evaluate, DeviceDataset, Trainer};
use rr_core::Backend;
use std::time::Instant;

pub fn run(args: TrainArgs) -> Result<()> {
    device::dispatch(args.common.target(), args.profile, TrainJob(args)).map(|_| ())
}

struct TrainJob(TrainArgs);

impl WithBackend for TrainJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let resumed = args.resume.as_deref().map(|p| read_resume(p, args.epochs)).transpose()?;
        let (dataset, image_size) = match &resumed {
            Some(r) => (r.dataset, r.image_size),
            None => (args.dataset, args.image_size),
        };
        // A resumed run reads the folder it was trained on unless told otherwise.
        let dir_arg = args.common.data_dir.clone().or_else(|| resumed.as_ref().and_then(|r| r.data_dir.clone()));
        let data_dir = dataset::data_dir(&dir_arg, dataset)?;
        let mut data = dataset::load(dataset, &data_dir, image_size)?;
        if let Some(r) = &resumed {
            dataset::check_same(&r.trained_on, &data.info, &data_dir)?;
            // The normalization the run was trained with (an image folder's statistics may have moved).
            data.info = r.trained_on.clone();
        }
        let info = data.info.clone();
        let (model_config, config) = match &resumed {
            Some(r) => (r.model_config.clone(), r.config.clone()),
            None => {
                let model_config = args.model_config(&info);
                let config = args.train_config(&model_config);
                (model_config, config)
            }
        };
        config.validate()?;
        if let Some(n) = config.train_limit {
            if n == 0 {
                anyhow::bail!("--limit-train must be at least 1");
            }
            data.train.truncate(n);
        }
        if let Some(r) = &resumed {
            r.check_data(&data, &data_dir)?;
        }

        let model = match &resumed {
            Some(r) => r.model(backend)?,
            None => Model::with_init(backend, &model_config, &info.shape, info.classes, config.seed, config.init)?,
        };
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
        let dataset = info.name.as_str();
        let o = &config.optimizer;
        println!(
            "{} {} ({} parameters) on {} | {dataset}: {} train / {} test images from {}{} | {} epochs, batch {}, {} lr {} ({} schedule), momentum {}{}, weight decay {}",
            if resumed.is_some() { "resuming" } else { "training" },
            model_config.name(),
            model.params.count(),
            backend.name(),
            data.train.len,
            data.test.len,
            data_dir.display(),
            if data.verified { " (SHA-256 verified)" } else { "" },
            config.epochs,
            config.batch_size,
            serde_json::to_value(o.kind)?.as_str().unwrap_or("?"),
            o.lr,
            match config.schedule.schedule {
                Schedule::Constant => "constant",
                Schedule::Step { .. } => "step",
                Schedule::Cosine => "cosine",
                Schedule::OneCycle { .. } => "one-cycle",
            },
            o.momentum,
            if o.nesterov { " (Nesterov)" } else { "" },
            o.weight_decay,
        );
        if !config.augment.is_off() {
            let a = &config.augment;
            println!(
                "augmentation: rotate ±{}°, scale ±{}, shift ±{}, elastic {} px, flips {}, noise {}, crop ±{} px ({:?} padding), cutout {} px",
                a.rotate_deg,
                a.scale,
                a.translate,
                a.elastic,
                if a.flip { "on" } else { "off" },
                a.noise,
                a.crop,
                a.padding,
                a.cutout
            );
        }
        if config.label_smoothing > 0.0 {
            println!("label smoothing {}", config.label_smoothing);
        }
        let train_set = DeviceDataset::upload(backend, &data.train, &info)?;
        let test_set = DeviceDataset::upload(backend, &data.test, &info)?;
        let mut trainer = Trainer::new(backend, model, config.clone(), train_set.len)?;
        trainer.use_graphs = !args.no_graphs;
        let run_config = serde_json::json!({ "model": model_config, "train": config, "device": backend.name(), "precision": backend.precision(), "dataset": info, "data_dir": data_dir, "image_size": image_size });
        let fingerprints = dataset::fingerprint_entries(&data);
        let (first_epoch, mut run_dir) = match &resumed {
            Some(r) => {
                r.restore(backend, &mut trainer)?;
                (r.epochs_done, RunDir::reopen(r, &info, fingerprints, &data_dir, &run_config)?)
            }
            None => (0, RunDir::create(args.out.clone(), backend, &trainer, &info, fingerprints, &data_dir, &run_config)?),
        };
        let mut run = RunStats::default();

        let steps = trainer.steps_per_epoch(train_set.len);
        for epoch in first_epoch..config.epochs {
            let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
            let lr = trainer.lr_at(epoch as f64);
            let start = Instant::now();
            let train = trainer.train_epoch(backend, &train_set, epoch, &mut |done, _| bar.set_position(done as u64));
            bar.finish_and_clear();
            let train = train.map_err(|e| anyhow::anyhow!("{e}; {}", run_dir.last_good(epoch)))?;
            let seconds = start.elapsed().as_secs_f64();
            run.steps += steps;
            run.images += train.samples;
            run.seconds += seconds;
            let test = evaluate(backend, &mut trainer.model, &test_set, args.eval_batch_size)?;
            let rate = train.samples as f64 / seconds;
            println!(
                "epoch {:>2}/{}  train_loss {:.4}  train_acc {:6.2}%  test_loss {:.4}  test_acc {:6.2}%  {:6.2}s  {:>9} img/s",
                epoch + 1,
                config.epochs,
                train.loss,
                100.0 * train.accuracy,
                test.loss,
                100.0 * test.accuracy,
                seconds,
                group_thousands(rate as u64),
            );
            run_dir.save_epoch(backend, &trainer, &EpochRecord { epoch: epoch + 1, train, test, seconds, lr })?;
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
            println!("evaluate with: rusty-recognition eval --checkpoint {}", model.display());
        }
        Ok(run)
    }
}

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
