//! End to end in a real browser: headless Chromium (driven through
//! chromedriver's WebDriver API) opens the page, draws a digit on the canvas
//! with the mouse, and the page shows the right prediction. A screenshot is
//! saved to target/test-artifacts/serve-page.png. Needs Debian's `chromium`
//! and `chromium-driver` (.ci/run installs them).

mod common;

use base64::Engine;
use common::{agent, Served};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_driver() -> Driver {
    let exe = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not found: install Debian's chromium and chromium-driver packages (.ci/run does)");
    let port = free_port();
    let child = Command::new(exe).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while agent().get(format!("{base}/status")).call().is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, base }
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let a = agent();
    let mut res = match (method, body) {
        ("GET", _) => a.get(url).call(),
        ("DELETE", _) => a.delete(url).call(),
        (_, Some(b)) => a.post(url).send_json(b),
        (_, None) => a.post(url).send_json(json!({})),
    }
    .unwrap();
    let status = res.status().as_u16();
    let v: Value = res.body_mut().read_json().unwrap();
    assert!(status < 300, "WebDriver {method} {url}: {status} {v}");
    v["value"].clone()
}

#[test]
fn drawing_a_digit_in_chromium_shows_the_right_prediction() {
    let server = Served::start();
    let driver = start_driver();
    let profile = std::env::temp_dir().join(format!("rr-chromium-{}", std::process::id()));
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=900,700",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args } } } });
    let session = call("POST", &format!("{}/session", driver.base), Some(caps));
    let sid = session["sessionId"].as_str().unwrap().to_string();
    let s = format!("{}/session/{sid}", driver.base);

    call("POST", &format!("{s}/url"), Some(json!({ "url": format!("{}/", server.base) })));
    let find = |css: &str| -> String {
        let el = call("POST", &format!("{s}/element"), Some(json!({ "using": "css selector", "value": css })));
        el.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string()
    };
    let pad = find("#pad");
    let prediction = find("#prediction");
    let origin = json!({ "element-6066-11e4-a52e-4f735466cecf": pad });

    // A "1": one slightly slanted stroke down the middle of the 280x280 canvas.
    let mut actions = vec![
        json!({ "type": "pointerMove", "duration": 0, "origin": origin, "x": 12, "y": -95 }),
        json!({ "type": "pointerDown", "button": 0 }),
    ];
    for k in 1..=19 {
        actions.push(json!({ "type": "pointerMove", "duration": 15, "origin": origin, "x": 12 - k, "y": -95 + 10 * k }));
    }
    actions.push(json!({ "type": "pointerUp", "button": 0 }));
    call(
        "POST",
        &format!("{s}/actions"),
        Some(json!({ "actions": [{ "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" }, "actions": actions }] })),
    );

    // The page asks the server and shows the answer.
    let start = Instant::now();
    let shown = loop {
        let text = call("GET", &format!("{s}/element/{prediction}/text"), None).as_str().unwrap_or("").to_string();
        if text.chars().any(|c| c.is_ascii_digit()) {
            std::thread::sleep(Duration::from_millis(500)); // let the last request land
            break call("GET", &format!("{s}/element/{prediction}/text"), None).as_str().unwrap_or("").to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no prediction shown after 15 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let bars = call("POST", &format!("{s}/elements"), Some(json!({ "using": "css selector", "value": ".bar" })));
    assert_eq!(bars.as_array().map(Vec::len), Some(10), "ten probability bars");

    let png = call("GET", &format!("{s}/screenshot"), None);
    let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
    let artifacts = common::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("serve-page.png"), &bytes).unwrap();
    call("DELETE", &s, None);
    let _ = std::fs::remove_dir_all(&profile);
    assert_eq!(shown, "1", "the page shows {shown:?} for a drawn 1 (screenshot: target/test-artifacts/serve-page.png)");
}
