//! The HTTP/1 server: hyper on tokio, with tower's layers around the routes.
//!
//! Limits, so that no client can hold the server: request headers up to
//! [`MAX_HEADER`] bytes (431 beyond) sent within `timeout` (hyper's header read
//! timeout, which also closes connections idle for that long between requests);
//! bodies up to [`super::MAX_BODY`] bytes (413 beyond) arriving within `timeout`
//! in all (408); a body shorter than its Content-Length is an error (400); at most
//! `max_requests` requests at once (503 beyond) and [`MAX_CONNECTIONS`]
//! connections (more wait to be accepted). SIGINT or SIGTERM stops accepting,
//! lets open requests finish (for up to `timeout`) and returns.

use super::routes::{self, App};
use anyhow::Result;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{Request, StatusCode};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{BoxError, ServiceBuilder};
use tower_http::timeout::RequestBodyDeadlineLayer;

/// Largest request head (request line and headers).
pub const MAX_HEADER: usize = 16 << 10;
/// Open connections at most: below the usual limit of 1024 open files.
pub const MAX_CONNECTIONS: usize = 900;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub max_requests: usize,
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(listener: TcpListener, app: Arc<App>, limits: Limits) -> Result<()> {
    let service = ServiceBuilder::new()
        .map_request(|r: Request<Incoming>| r.map(Body::new))
        .layer(from_fn(routes::log_request))
        .layer(from_fn(routes::json_errors))
        .layer(HandleErrorLayer::new(overloaded(limits.max_requests)))
        .load_shed()
        .concurrency_limit(limits.max_requests)
        .layer(RequestBodyDeadlineLayer::new(limits.timeout))
        .service(routes::router(app));
    let mut http = http1::Builder::new();
    // half_close: a client may shut its side after the body and still read the answer
    // (a body short of its Content-Length is still an error: the handler sees it cut).
    http.timer(TokioTimer::new()).header_read_timeout(limits.timeout).max_header_size(MAX_HEADER).half_close(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit?,
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    eprintln!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await; // a client's I/O error or timeout ends only its own connection
            drop(permit);
        });
    }
    drop(listener);
    eprintln!("shutting down: waiting for {} open connections", graceful.count());
    tokio::select! {
        _ = graceful.shutdown() => eprintln!("stopped"),
        _ = tokio::time::sleep(limits.timeout) => eprintln!("stopped; connections still open after {} s were closed", limits.timeout.as_secs()),
    }
    Ok(())
}

/// The answer of the load-shedding layer when `max_requests` are in flight.
/// (A named return type: a closure written in place is not general enough for `tokio::spawn`.)
fn overloaded(max_requests: usize) -> impl FnOnce(BoxError) -> Ready<Response> + Clone + Send + 'static {
    move |e| {
        let (status, message) = if e.is::<tower::load_shed::error::Overloaded>() {
            (StatusCode::SERVICE_UNAVAILABLE, format!("the server is busy ({max_requests} requests at once); try again"))
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"))
        };
        let body = json!({ "error": message }).to_string();
        ready((status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("tokio can install a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
