//! The prediction API over real HTTP: good and bad requests, the size limit, a
//! photo turned upright by its Exif orientation, and 200 concurrent requests
//! from several threads, all answered correctly.

mod common;

use common::{agent, digit_png, Served};
use serde_json::{json, Value};

fn post(base: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut res = agent().post(format!("{base}/api/predict")).header("Content-Type", content_type).send(body).unwrap();
    let status = res.status().as_u16();
    let body: Value = res.body_mut().read_json().unwrap_or_else(|e| panic!("status {status}: body is not JSON: {e}"));
    (status, body)
}

#[test]
fn api_answers_good_requests_and_rejects_bad_ones() {
    let mut server = Served::start();
    let base = server.base.clone();

    // The page and the model info.
    let mut page = agent().get(format!("{base}/")).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains("<canvas") && html.contains("/api/predict"));
    let info: Value = agent().get(format!("{base}/api/info")).call().unwrap().body_mut().read_json().unwrap();
    assert_eq!(info["model"], "lenet5");
    assert_eq!(info["labels"].as_array().unwrap().len(), 10);

    // A PNG of a real test digit.
    let (png, label) = digit_png(0);
    let (status, body) = post(&base, "image/png", &png);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["class"], label as u64);
    let probs: Vec<f64> = body["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);

    // The same digit photographed sideways: stored turned a quarter, with Exif Orientation 6.
    let (img, _) = common::digit(0);
    let (status, body) = post(&base, "image/jpeg", &common::jpeg_with_orientation(&image::imageops::rotate270(&img), 6));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["class"], label as u64, "the photo was not turned upright");

    // The same digit as 784 JSON pixels.
    let m = rr_core::data::Mnist::load(&common::repo().join("data/mnist")).unwrap();
    let pixels: Vec<u8> = m.test.images[..784].to_vec();
    let (status, body) = post(&base, "application/json", json!({ "pixels": pixels }).to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["class"], label as u64);

    // Bad requests: a 4xx with a JSON error, never a crash.
    let bad: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("text/plain", b"hello".to_vec(), 415, "Content-Type"),
        ("", b"hello".to_vec(), 415, "Content-Type"),
        ("application/json", b"{not json".to_vec(), 400, "malformed JSON"),
        ("application/json", br#"{"pixels": [1, 2, 3]}"#.to_vec(), 400, "784"),
        ("application/json", json!({ "pixels": vec![300; 784] }).to_string().into_bytes(), 400, "0 to 255"),
        ("application/json", br#"{"image": 1}"#.to_vec(), 400, "pixels"),
        ("image/png", png[..png.len() / 2].to_vec(), 400, "decode"),
        ("image/png", b"not an image at all".to_vec(), 400, "not a PNG or JPEG"),
        ("image/png", Vec::new(), 400, "empty"),
        ("image/png", blank_png(), 422, "blank"),
        ("image/png", vec![0u8; 3 << 20], 413, "over"),
    ];
    for (ct, body, want, needle) in bad {
        let (status, reply) = post(&base, ct, &body);
        assert_eq!(status, want, "{ct} -> {reply}");
        assert!(reply["error"].as_str().unwrap_or("").contains(needle), "{ct}: {reply}");
    }
    let res = agent().get(format!("{base}/nope")).call().unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = agent().get(format!("{base}/api/predict")).call().unwrap();
    assert_eq!(res.status().as_u16(), 405);
    assert!(server.is_running(), "the server must survive bad requests");
    let (status, _) = post(&base, "image/png", &png);
    assert_eq!(status, 200);
}

fn blank_png() -> Vec<u8> {
    let img = image::GrayImage::from_pixel(40, 40, image::Luma([255]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    png
}

#[test]
fn two_hundred_concurrent_requests_are_all_answered_correctly() {
    let server = Served::start();
    let digits: Vec<(Vec<u8>, u8)> = (0..10).map(digit_png).collect();
    // The answer each digit gets on its own.
    let expected: Vec<Value> = digits.iter().map(|(png, _)| post(&server.base, "image/png", png).1).collect();
    let base = &server.base;
    let results: Vec<(usize, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let digits = &digits;
                s.spawn(move || {
                    (0..25)
                        .map(|k| (t * 25 + k) % 10)
                        .map(|d| {
                            let (st, b) = post(base, "image/png", &digits[d].0);
                            (d, st, b)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.len(), 200);
    for (d, status, body) in results {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, expected[d], "digit {d}: a concurrent answer differs from the sequential one");
    }
}
