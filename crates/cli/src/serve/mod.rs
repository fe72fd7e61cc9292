//! `rusty-recognition serve`: a draw-a-digit page and a JSON prediction API.
//!
//! - `GET /`: one self-contained page (canvas, clear button, live bar chart).
//! - `GET /api/info`: the model, device and class labels; `GET /health`: `{"status": "ok"}`.
//! - `POST /api/predict`: a PNG/JPEG drawing (`Content-Type: image/png` or
//!   `image/jpeg`, preprocessed like `predict`), or JSON `{"pixels": [C*H*W values
//!   0..255]}` (already MNIST-style: 28x28, light ink on dark); answers
//!   `{"class", "label", "probabilities", "labels"}`.
//!
//! Bad requests get a 4xx with `{"error": ...}`. hyper serves HTTP/1 on tokio
//! (`server.rs`: limits, timeouts, graceful shutdown); requests are decoded on
//! tokio's blocking threads and queued to the one thread that runs the model
//! (`inference.rs`), so slow clients and busy decoders never stall each other.

mod inference;
mod routes;
mod server;

use crate::device::{self, RunStats, WithBackend};
use crate::DeviceArgs;
use anyhow::{ensure, Context, Result};
use rr_core::checkpoint;
use rr_core::Backend;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 2 << 20;
/// Bodies up to this size are read to their end before the 413 (see `routes::App::read_body`).
pub const MAX_DRAIN: usize = 16 << 20;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A .safetensors checkpoint written by `train`
    #[arg(long)]
    checkpoint: PathBuf,
    /// Address to bind (127.0.0.1: this machine only)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed)
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Threads that read requests and decode images (1 to 256)
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Requests handled at once, slow ones included; more get 503 (1 to 65536)
    #[arg(long, default_value_t = 512)]
    max_requests: usize,
    /// Seconds a client may take to send a request's headers, or its body, or stay idle between requests (1 to 3600)
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

impl ServeArgs {
    /// Checks the numbers before anything starts (a thread count of 100000 is an error, not a panic).
    fn validate(&self) -> Result<()> {
        ensure!((1..=256).contains(&self.workers), "--workers {}: expected 1 to 256 threads", self.workers);
        ensure!((1..=65536).contains(&self.max_requests), "--max-requests {}: expected 1 to 65536", self.max_requests);
        ensure!((1..=3600).contains(&self.timeout), "--timeout {}: expected 1 to 3600 seconds", self.timeout);
        Ok(())
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    args.validate()?;
    args.device.target().check()?;
    crate::check_file(&args.checkpoint, "--checkpoint")?;
    device::dispatch(args.device.target(), false, ServeJob(args)).map(|_| ())
}

struct ServeJob(ServeArgs);

impl WithBackend for ServeJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let (mut model, ckpt) = checkpoint::load_model(&args.checkpoint, backend)?;
        let dataset = ckpt.dataset(&args.checkpoint)?;
        let info = json!({
            "model": ckpt.config.name(), "dataset": dataset.name, "input_shape": dataset.shape, "device": backend.name(),
            "labels": dataset.class_names, "checkpoint": args.checkpoint
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .max_blocking_threads(args.workers)
            .enable_all()
            .build()
            .context("cannot start the server's threads")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((args.host.as_str(), args.port)))
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        println!("serving {} ({}) on {} at http://{addr}/", args.checkpoint.display(), ckpt.config.name(), backend.name());
        std::io::stdout().flush()?;

        let (queue, jobs) = inference::queue(args.max_requests);
        let app = Arc::new(routes::App::new(info, dataset.clone(), queue, Duration::from_secs(args.timeout)));
        let limits = server::Limits { timeout: Duration::from_secs(args.timeout), max_requests: args.max_requests };
        // The model stays on this thread (the one that opened the device); the server runs beside it
        // and the queue closes when the server has shut down.
        std::thread::scope(|s| {
            let server = s.spawn(move || runtime.block_on(server::serve(listener, app, limits)));
            inference::run_worker(backend, &mut model, &dataset, jobs);
            server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))?
        })?;
        Ok(RunStats::default())
    }
}
