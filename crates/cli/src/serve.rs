//! `rusty-recognition serve`: a draw-a-digit page and a JSON prediction API.
//!
//! - `GET /`: one self-contained page (canvas, clear button, live bar chart).
//! - `GET /api/info`: the model, device and class labels.
//! - `POST /api/predict`: a PNG/JPEG drawing (`Content-Type: image/png` or
//!   `image/jpeg`, preprocessed like `predict`), or JSON `{"pixels": [C*H*W values
//!   0..255]}` (already MNIST-style: 28x28, light ink on dark); answers
//!   `{"class", "label", "probabilities", "labels"}`.
//!
//! Bad requests get a 4xx with `{"error": ...}`; worker threads serve requests
//! concurrently (decoding in parallel, the model behind a lock).

use crate::device::{self, RunStats, WithBackend};
use crate::{digitize, infer, CommonArgs};
use anyhow::{anyhow, Result};
use rr_core::checkpoint;
use rr_core::model::Model;
use rr_core::Backend;
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use tiny_http::{Header, Method, Request, Response, Server};

/// Largest request body accepted.
pub const MAX_BODY: usize = 2 << 20;

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
    /// Threads serving requests
    #[arg(long, default_value_t = 8)]
    workers: usize,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    device::dispatch(args.common.target(), false, ServeJob(args)).map(|_| ())
}

struct ServeJob(ServeArgs);

struct App<'a, B: Backend> {
    backend: &'a B,
    model: Mutex<Model<B>>,
    labels: Vec<String>,
    dataset: rr_core::data::DatasetInfo,
    info: serde_json::Value,
}

/// An HTTP error: status and message.
struct Reject(u16, String);

fn reject(status: u16, msg: impl Into<String>) -> Reject {
    Reject(status, msg.into())
}

impl WithBackend for ServeJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let (model, ckpt) = checkpoint::load_model(&args.checkpoint, backend)?;
        let dataset = ckpt.dataset(&args.checkpoint)?;
        let labels = dataset.class_names.clone();
        let info = json!({
            "model": ckpt.config.name(), "dataset": dataset.name, "input_shape": dataset.shape, "device": backend.name(),
            "labels": labels, "checkpoint": args.checkpoint
        });
        let app = App { backend, model: Mutex::new(model), labels, dataset, info };
        let server =
            Server::http((args.host.as_str(), args.port)).map_err(|e| anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
        let addr = server.server_addr().to_ip().map_or_else(|| format!("{}:{}", args.host, args.port), |a| a.to_string());
        println!("serving {} ({}) on {} at http://{addr}/", args.checkpoint.display(), ckpt.config.name(), backend.name());
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::scope(|s| {
            for _ in 0..args.workers.max(1) {
                s.spawn(|| {
                    for request in server.incoming_requests() {
                        app.handle(request);
                    }
                });
            }
        });
        Ok(RunStats::default())
    }
}

impl<B: Backend> App<'_, B> {
    /// Values per image in the JSON form: C * H * W.
    fn pixels(&self) -> usize {
        self.dataset.shape.iter().product()
    }

    fn handle(&self, mut request: Request) {
        let url = request.url().split('?').next().unwrap_or("").to_string();
        let result = match (request.method(), url.as_str()) {
            (Method::Get, "/") | (Method::Get, "/index.html") => {
                let page = Response::from_string(include_str!("../assets/index.html"))
                    .with_header(header("Content-Type", "text/html; charset=utf-8"));
                let _ = request.respond(page);
                return;
            }
            (Method::Get, "/api/info") => Ok(self.info.clone()),
            (Method::Post, "/api/predict") => self.predict(&mut request),
            (_, "/" | "/index.html" | "/api/info" | "/api/predict") => {
                Err(reject(405, format!("{} is not allowed here", request.method())))
            }
            _ => Err(reject(404, format!("no such page: {url}"))),
        };
        let (status, body) = match result {
            Ok(body) => (200, body),
            Err(Reject(status, msg)) => (status, json!({ "error": msg })),
        };
        let response =
            Response::from_string(body.to_string()).with_status_code(status).with_header(header("Content-Type", "application/json"));
        let _ = request.respond(response);
    }

    fn predict(&self, request: &mut Request) -> Result<serde_json::Value, Reject> {
        let content_type = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Content-Type"))
            .map(|h| h.value.as_str().split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default();
        if request.body_length().is_some_and(|n| n > MAX_BODY) {
            return Err(reject(413, format!("the body is over {} bytes", MAX_BODY)));
        }
        let mut body = Vec::new();
        request
            .as_reader()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| reject(400, format!("cannot read the body: {e}")))?;
        if body.len() > MAX_BODY {
            return Err(reject(413, format!("the body is over {} bytes", MAX_BODY)));
        }
        let pixels = match content_type.as_str() {
            "image/png" | "image/jpeg" => {
                let img = digitize::decode(&body).map_err(|e| reject(400, format!("{e:#}")))?;
                digitize::prepare(&img, &self.dataset).map_err(|e| reject(422, format!("{e:#}")))?
            }
            "application/json" => {
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| reject(400, format!("malformed JSON: {e}")))?;
                let values = v
                    .get("pixels")
                    .and_then(|p| p.as_array())
                    .ok_or_else(|| reject(400, format!("expected {{\"pixels\": [{} numbers from 0 to 255]}}", self.pixels())))?;
                if values.len() != self.pixels() {
                    let [c, h, w] = self.dataset.shape;
                    return Err(reject(400, format!("expected {} pixels ({c}x{h}x{w}), got {}", self.pixels(), values.len())));
                }
                values
                    .iter()
                    .map(|p| p.as_f64().filter(|v| (0.0..=255.0).contains(v)).map(|v| v.round() as u8))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| reject(400, "every pixel must be a number from 0 to 255"))?
            }
            "" => return Err(reject(415, "missing Content-Type: send image/png, image/jpeg or application/json")),
            other => return Err(reject(415, format!("unsupported Content-Type {other}: send image/png, image/jpeg or application/json"))),
        };
        let probs = {
            let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            infer::probabilities(self.backend, &mut model, &self.dataset, &[pixels]).map_err(|e| reject(500, format!("{e:#}")))?
        };
        let p = &probs[0];
        let class = infer::top_k(p, 1)[0].0;
        Ok(json!({ "class": class, "label": self.labels[class], "probabilities": p, "labels": self.labels }))
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}
