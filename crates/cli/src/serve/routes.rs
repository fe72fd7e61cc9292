//! The routes, their handlers and the JSON shape of every answer.

use super::inference::Queue;
use super::{MAX_BODY, MAX_DRAIN};
use crate::{digitize, infer};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use rr_core::data::DatasetInfo;
use serde_json::{json, Value};
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every handler shares.
pub struct App {
    info: Value,
    dataset: Arc<DatasetInfo>,
    queue: Queue,
    /// The time a body may take to arrive (for the 408 message).
    timeout: Duration,
}

impl App {
    pub fn new(info: Value, dataset: DatasetInfo, queue: Queue, timeout: Duration) -> App {
        App { info, dataset: Arc::new(dataset), queue, timeout }
    }
}

/// The routes; `get` answers HEAD too, and a wrong method gets 405 with `Allow`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/api/info", get(info))
        .route("/health", get(health))
        .route("/api/predict", post(predict))
        .fallback(not_found)
        .with_state(app)
}

/// An HTTP error: status and message, sent as `{"error": message}`.
pub struct Reject(StatusCode, String);

fn reject(status: StatusCode, msg: impl Into<String>) -> Reject {
    Reject(status, msg.into())
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({ "error": self.1 }))
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/index.html"))
}

async fn info(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &app.info)
}

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

async fn not_found(uri: Uri) -> Reject {
    reject(StatusCode::NOT_FOUND, format!("no such page: {}", uri.path()))
}

/// The two kinds of upload `POST /api/predict` takes.
#[derive(Clone, Copy)]
enum Upload {
    Image,
    Pixels,
}

impl Upload {
    fn of(headers: &HeaderMap) -> Result<Upload, Reject> {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mime.as_str() {
            "image/png" | "image/jpeg" => Ok(Upload::Image),
            "application/json" => Ok(Upload::Pixels),
            "" => Err(reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, "missing Content-Type: send image/png, image/jpeg or application/json")),
            other => Err(reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Type {other}: send image/png, image/jpeg or application/json"),
            )),
        }
    }

    /// The body as the model's input pixels (CPU work: run on a blocking thread).
    fn pixels(self, body: &[u8], dataset: &DatasetInfo) -> Result<Vec<u8>, Reject> {
        match self {
            Upload::Image => {
                let img = digitize::decode(body).map_err(|e| reject(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
                digitize::prepare(&img, dataset).map_err(|e| reject(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))
            }
            Upload::Pixels => json_pixels(body, dataset),
        }
    }
}

/// `{"pixels": [C*H*W numbers 0..255]}` as bytes.
fn json_pixels(body: &[u8], dataset: &DatasetInfo) -> Result<Vec<u8>, Reject> {
    let bad = |msg: String| reject(StatusCode::BAD_REQUEST, msg);
    let len: usize = dataset.shape.iter().product();
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let values =
        v.get("pixels").and_then(|p| p.as_array()).ok_or_else(|| bad(format!("expected {{\"pixels\": [{len} numbers from 0 to 255]}}")))?;
    if values.len() != len {
        let [c, h, w] = dataset.shape;
        return Err(bad(format!("expected {len} pixels ({c}x{h}x{w}), got {}", values.len())));
    }
    values
        .iter()
        .map(|p| p.as_f64().filter(|v| (0.0..=255.0).contains(v)).map(|v| v.round() as u8))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| bad("every pixel must be a number from 0 to 255".into()))
}

async fn predict(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Result<Response, Reject> {
    let upload = Upload::of(&headers)?;
    let body = app.read_body(&headers, body).await?;
    let dataset = app.dataset.clone();
    let pixels = tokio::task::spawn_blocking(move || upload.pixels(&body, &dataset))
        .await
        .map_err(|e| reject(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding failed: {e}")))??;
    let probs = app.queue.probabilities(pixels).await.map_err(|e| reject(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let class = infer::top_k(&probs, 1)[0].0;
    let labels = &app.dataset.class_names;
    Ok(json_response(StatusCode::OK, &json!({ "class": class, "label": labels[class], "probabilities": probs, "labels": labels })))
}

impl App {
    /// The body, up to [`MAX_BODY`] bytes. A longer one (up to [`MAX_DRAIN`]) is read on and
    /// dropped before the 413, so that a client that sends its whole body before reading the
    /// answer gets the 413 rather than a reset connection; beyond that the 413 comes at once.
    async fn read_body(&self, headers: &HeaderMap, mut body: Body) -> Result<Bytes, Reject> {
        let too_large = || reject(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_BODY} bytes"));
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_DRAIN as u64) {
            return Err(too_large());
        }
        let (mut kept, mut seen) = (Vec::new(), 0usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.body_error(&e))?;
            let Some(data) = frame.data_ref() else { continue };
            seen += data.len();
            if seen > MAX_DRAIN {
                return Err(too_large());
            }
            if seen <= MAX_BODY {
                kept.extend_from_slice(data);
            }
        }
        if seen > MAX_BODY {
            return Err(too_large());
        }
        Ok(Bytes::from(kept))
    }

    /// Why a body could not be read: too slow (the deadline layer), or cut short (fewer
    /// bytes than its Content-Length before the client closed).
    fn body_error(&self, e: &axum::Error) -> Reject {
        let mut cause: Option<&(dyn Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if c.is::<tower_http::timeout::TimeoutError>() {
                return reject(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", self.timeout.as_secs()));
            }
            cause = c.source();
        }
        reject(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))
    }
}

/// Errors answered by the router rather than a handler (405) get
/// the same `{"error": ...}` body as the others; their headers (`Allow`) stay.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let is_json = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || is_json {
        return response;
    }
    let message = match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = response.headers().get(ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
            format!("{method} is not allowed here (allowed: {allow})")
        }
        status => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(CONTENT_TYPE, "application/json".parse().expect("a valid header value"));
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
}

/// One line per request on stderr: method, path, status, milliseconds.
pub async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    eprintln!("{method} {path} {} {:.1}ms", response.status().as_u16(), start.elapsed().as_secs_f64() * 1e3);
    response
}
