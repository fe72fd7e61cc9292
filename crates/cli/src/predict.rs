use crate::device::{self, RunStats, WithBackend};
use crate::{digitize, infer, DeviceArgs};
use anyhow::{bail, Result};
use rr_core::checkpoint;
use rr_core::Backend;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// A .safetensors checkpoint written by `train`
    #[arg(long)]
    checkpoint: PathBuf,
    /// PNG or JPEG files, any size: photos or drawings of one digit (or garment) each
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print JSON (one array, an object per file) instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: PredictArgs) -> Result<()> {
    args.device.target().check()?;
    crate::check_file(&args.checkpoint, "--checkpoint")?;
    device::dispatch(args.device.target(), false, PredictJob(args)).map(|_| ())
}

struct PredictJob(PredictArgs);

#[derive(Serialize)]
struct Guess {
    class: usize,
    label: String,
    probability: f32,
}

#[derive(Serialize)]
struct FileResult {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top3: Vec<Guess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl WithBackend for PredictJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let (mut model, ckpt) = checkpoint::load_model(&args.checkpoint, backend)?;
        let info = ckpt.dataset(&args.checkpoint)?;
        let names = info.class_names.clone();
        // Each file on its own: one bad file is reported and the others are still predicted.
        let prepared: Vec<(PathBuf, Result<Vec<u8>>)> = args
            .images
            .iter()
            .map(|path| {
                let pixels = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read: {e}"))
                    .and_then(|bytes| digitize::decode(&bytes))
                    .and_then(|img| digitize::prepare(&img, &info));
                (path.clone(), pixels)
            })
            .collect();
        let good: Vec<Vec<u8>> = prepared.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect();
        let mut probs = infer::probabilities(backend, &mut model, &info, &good)?.into_iter();
        let mut results = Vec::new();
        for (path, pixels) in &prepared {
            let file = path.display().to_string();
            results.push(match pixels {
                Ok(_) => {
                    let p = probs.next().expect("one result per good image");
                    let top3: Vec<Guess> = infer::top_k(&p, 3)
                        .into_iter()
                        .map(|(c, pr)| Guess { class: c, label: names[c].clone(), probability: pr })
                        .collect();
                    FileResult { file, class: Some(top3[0].class), label: Some(top3[0].label.clone()), top3, error: None }
                }
                Err(e) => FileResult { file, class: None, label: None, top3: Vec::new(), error: Some(format!("{e:#}")) },
            });
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&results)?);
        } else {
            for r in &results {
                match &r.error {
                    Some(e) => eprintln!("{}: error: {e}", r.file),
                    None => {
                        let top: Vec<String> = r.top3.iter().map(|g| format!("{} {:.1}%", g.label, 100.0 * g.probability)).collect();
                        println!("{}: {}  (top 3: {})", r.file, r.label.as_deref().unwrap_or("?"), top.join(", "));
                    }
                }
            }
        }
        let failed = results.iter().filter(|r| r.error.is_some()).count();
        if failed > 0 {
            bail!("{failed} of {} files could not be predicted", results.len());
        }
        Ok(RunStats::default())
    }
}
