//! `serve` under hostile or careless clients, over raw sockets on 127.0.0.1:
//! 100 slow clients (bodies sent a byte every 0.5 s, headers never finished)
//! while good requests are answered in under a second, and the slow ones cut
//! off at `--timeout`; headers and bodies over the limits; a body shorter than
//! its Content-Length; HEAD, 405 with Allow, /health, the request log; the
//! bound on requests at once; bad option values; a graceful SIGTERM.
//! An untrained checkpoint serves here (answers, not accuracy, are tested).

mod common;

use common::{agent, bin, digit_png, untrained_checkpoint, Served};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// A predict request's head for a body of `len` bytes.
fn predict_head(len: usize) -> String {
    format!("POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: {len}\r\n\r\n")
}

fn connect(server: &Served) -> TcpStream {
    let s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Everything the server sends until it closes the connection (or 10 s pass).
fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Err(e) if out.is_empty() => format!("(no answer: {e})"),
        _ => String::from_utf8_lossy(&out).into_owned(),
    }
}

/// Sends `bytes` on a fresh connection, half-closes, and reads the whole answer.
fn exchange(server: &Served, bytes: &[u8]) -> String {
    let mut s = connect(server);
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    read_all(s)
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// The JSON body of a raw response.
fn json_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {response:?}"))
}

/// One good request: its status and how long it took.
fn timed_predict(server: &Served, png: &[u8]) -> (u16, Duration) {
    let start = Instant::now();
    let res = agent().post(format!("{}/api/predict", server.base)).header("Content-Type", "image/png").send(png).unwrap();
    (res.status().as_u16(), start.elapsed())
}

#[test]
fn a_hundred_slow_clients_do_not_slow_good_requests_and_are_cut_off() {
    let server = Served::with(untrained_checkpoint(), &["--timeout", "3", "--workers", "2"]);
    let (png, _) = digit_png(0);
    // 50 bodies sent a byte every 0.5 s, 50 request heads that never end.
    let mut slow_bodies: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(predict_head(png.len()).as_bytes()).unwrap();
            s
        })
        .collect();
    let mut slow_heads: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\n").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let (mut worst, mut answered, mut sent) = (Duration::ZERO, 0, 0);
    let mut next_byte = Instant::now();
    // 2.5 s of good requests among the slow clients, then 2 s more past their 3 s timeout.
    while started.elapsed() < Duration::from_millis(4500) {
        if Instant::now() >= next_byte && started.elapsed() < Duration::from_millis(2500) {
            for s in &mut slow_bodies {
                s.write_all(&png[sent..sent + 1]).unwrap();
            }
            for s in &mut slow_heads {
                s.write_all(b"X").unwrap(); // a header name that never ends
            }
            sent += 1;
            next_byte += Duration::from_millis(500);
        }
        let (status, took) = timed_predict(&server, &png);
        assert_eq!(status, 200);
        worst = worst.max(took);
        answered += 1;
    }
    assert!(worst < Duration::from_secs(1), "a good request took {worst:?} among 100 slow clients");
    assert!(answered >= 20, "only {answered} good requests answered in 4.5 s");
    // By now (4.5 s > 3 s) every slow client has been cut off: the bodies with 408, the heads closed.
    let reading = Instant::now();
    for s in slow_bodies {
        let response = read_all(s);
        assert_eq!(status_of(&response), 408, "{response}");
        assert!(json_of(&response)["error"].as_str().unwrap().contains("did not arrive within 3 s"), "{response}");
    }
    for s in slow_heads {
        let response = read_all(s);
        assert!(response.is_empty(), "a never-finished head must be closed, unanswered: {response}");
    }
    assert!(reading.elapsed() < Duration::from_secs(1), "the slow clients were not cut off at 3 s");
    eprintln!("{answered} good requests answered, the slowest in {worst:?}");
}

#[test]
fn limits_methods_health_and_the_request_log() {
    let server = Served::with(untrained_checkpoint(), &[]);
    let (png, _) = digit_png(1);

    // A request head over the 16 KiB limit: 431.
    let big_header = format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n", "a".repeat(20 << 10));
    assert_eq!(status_of(&exchange(&server, big_header.as_bytes())), 431);

    // Bodies over 2 MB: 413, declared in Content-Length or sent chunked.
    let mut big = predict_head(3 << 20).into_bytes();
    big.extend(vec![0u8; 3 << 20]);
    let response = exchange(&server, &big);
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(json_of(&response)["error"].as_str().unwrap().contains("over 2097152 bytes"));
    let mut chunked =
        b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend(format!("{:x}\r\n", (2 << 20) + 1).as_bytes());
    chunked.extend(vec![0u8; (2 << 20) + 1]);
    chunked.extend(b"\r\n0\r\n\r\n");
    let response = exchange(&server, &chunked);
    assert_eq!(status_of(&response), 413, "{response}");

    // A whole PNG but a Content-Length 100 bytes longer, then a half-close: not a good request.
    let mut short = predict_head(png.len() + 100).into_bytes();
    short.extend(&png);
    let response = exchange(&server, &short);
    assert_eq!(status_of(&response), 400, "{response}");
    assert!(json_of(&response)["error"].as_str().unwrap().contains("cannot read the body"), "{response}");
    // The same PNG with its true length is fine.
    let mut exact = predict_head(png.len()).into_bytes();
    exact.extend(&png);
    assert_eq!(status_of(&exchange(&server, &exact)), 200);

    // /health, HEAD where GET is, 405 with Allow for a wrong method.
    let mut health = agent().get(format!("{}/health", server.base)).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.body_mut().read_json::<Value>().unwrap()["status"], "ok");
    for path in ["/", "/api/info", "/health"] {
        let response = exchange(&server, format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes());
        assert_eq!(status_of(&response), 200, "HEAD {path}: {response}");
        assert!(response.ends_with("\r\n\r\n"), "HEAD {path} sent a body: {response}");
        assert!(response.to_ascii_lowercase().contains("content-length: "), "{response}");
    }
    for (method, path, allowed) in [("DELETE", "/api/info", "GET,HEAD"), ("GET", "/api/predict", "POST"), ("PUT", "/", "GET,HEAD")] {
        let response = exchange(&server, format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes());
        assert_eq!(status_of(&response), 405, "{method} {path}: {response}");
        assert!(response.to_ascii_lowercase().contains(&format!("allow: {}", allowed.to_ascii_lowercase())), "{response}");
        assert!(json_of(&response)["error"].as_str().unwrap().contains(&format!("{method} is not allowed")), "{response}");
    }

    // One log line per request: method, path, status, milliseconds.
    let log = server.log();
    for line in ["GET /health 200 ", "HEAD / 200 ", "POST /api/predict 413 ", "POST /api/predict 400 ", "DELETE /api/info 405 "] {
        assert!(log.lines().any(|l| l.starts_with(line) && l.ends_with("ms")), "no `{line}...ms` line in the log:\n{log}");
    }
}

#[test]
fn requests_beyond_max_requests_get_503_until_one_finishes() {
    let server = Served::with(untrained_checkpoint(), &["--max-requests", "2"]);
    let health = || agent().get(format!("{}/health", server.base)).call().unwrap().status().as_u16();
    assert_eq!(health(), 200);
    // Two requests in flight (bodies not finished) take both places.
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(predict_head(1000).as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut res = agent().get(format!("{}/health", server.base)).call().unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.body_mut().read_json::<Value>().unwrap()["error"].as_str().unwrap().contains("busy"));
    drop(holders);
    let start = Instant::now();
    while health() != 200 {
        assert!(start.elapsed() < Duration::from_secs(3), "still 503 after the requests in flight went away");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_option_values_are_refused_and_the_bounds_work() {
    for (option, value) in [("--workers", "0"), ("--workers", "100000"), ("--max-requests", "0"), ("--timeout", "0")] {
        let o = bin()
            .args(["serve", "--device", "cpu", "--port", "0", option, value, "--checkpoint"])
            .arg(untrained_checkpoint())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{option} {value}: {stderr}");
        assert!(stderr.contains(&format!("error: {option} {value}: expected")), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // `--data-dir` meant nothing for predict and serve: it is gone from both.
    for command in ["serve", "predict"] {
        let o =
            bin().args([command, "--data-dir", "data/mnist", "--checkpoint"]).arg(untrained_checkpoint()).arg("x.png").output().unwrap();
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("unexpected argument '--data-dir'"), "{command}");
    }
    // Both ends of --workers serve.
    for workers in ["1", "256"] {
        let server = Served::with(untrained_checkpoint(), &["--workers", workers]);
        let (status, _) = timed_predict(&server, &digit_png(2).0);
        assert_eq!(status, 200, "--workers {workers}");
    }
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits() {
    let mut server = Served::with(untrained_checkpoint(), &[]);
    let (png, _) = digit_png(3);
    let mut s = connect(&server);
    s.write_all(predict_head(png.len()).as_bytes()).unwrap();
    s.write_all(&png[..png.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let kill = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.is_running(), "the server must wait for the request in flight");
    assert!(TcpStream::connect(server.addr()).is_err(), "a stopping server must not accept new connections");
    s.write_all(&png[png.len() / 2..]).unwrap();
    let response = read_all(s);
    assert_eq!(status_of(&response), 200, "{response}");
    let status = server.wait_exit(Duration::from_secs(5)).expect("the server exits once the request is answered");
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}
