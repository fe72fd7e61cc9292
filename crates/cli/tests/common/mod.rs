//! Shared by the serve tests: a trained checkpoint and a running server.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rusty-recognition"));
    c.current_dir(repo());
    c
}

/// A LeNet-5 trained one epoch on the CPU (once per test binary).
pub fn checkpoint() -> &'static Path {
    static CKPT: OnceLock<PathBuf> = OnceLock::new();
    CKPT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rr-serve-model-{}", std::process::id()));
        let o = bin().args(["train", "--device", "cpu", "--epochs", "1", "--out"]).arg(&dir).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dir.join("model.safetensors")
    })
}

/// `serve` on a free port; killed on drop.
pub struct Served {
    child: Child,
    pub base: String,
}

impl Served {
    pub fn start() -> Served {
        let mut child = bin()
            .args(["serve", "--device", "cpu", "--port", "0", "--checkpoint"])
            .arg(checkpoint())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.split("at ").last().unwrap().trim().trim_end_matches('/').to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "unexpected banner: {line}");
        Served { child, base }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that hands back 4xx/5xx responses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// An MNIST test digit as PNG bytes (index `i`), and its label.
pub fn digit_png(i: usize) -> (Vec<u8>, u8) {
    let m = rr_core::data::Mnist::load(&repo().join("data/mnist")).unwrap();
    let img = image::GrayImage::from_raw(28, 28, m.test.images[i * 784..(i + 1) * 784].to_vec()).unwrap();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    (png, m.test.labels[i])
}
