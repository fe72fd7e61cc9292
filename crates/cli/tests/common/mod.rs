//! Shared by the CLI tests: the binary, checkpoints, a running server, test images.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// An untrained LeNet-5 for MNIST (instant; for tests of everything but accuracy).
pub fn untrained_checkpoint() -> &'static Path {
    static CKPT: OnceLock<PathBuf> = OnceLock::new();
    CKPT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rr-untrained-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let b = rr_core::CpuBackend::new(1).unwrap();
        let model = rr_core::Model::new(&b, &rr_core::ModelConfig::Lenet5, &[1, 28, 28], 10, 0).unwrap();
        rr_core::checkpoint::save(&path, &b, &model, &[]).unwrap();
        path
    })
}

/// `serve` on a free port; killed on drop. Its stderr (one line per request) is kept.
pub struct Served {
    child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// The trained checkpoint with the default options.
    pub fn start() -> Served {
        Served::with(checkpoint(), &[])
    }

    pub fn with(checkpoint: &Path, args: &[&str]) -> Served {
        let mut child = bin()
            .args(["serve", "--device", "cpu", "--port", "0", "--checkpoint"])
            .arg(checkpoint)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| sink.lock().unwrap().push_str(&(l + "\n"))));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Keep reading stdout too: a closed pipe would kill the server at its next line.
        let sink = log.clone();
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|l| sink.lock().unwrap().push_str(&(l + "\n"))));
        let base = line.split("at ").last().unwrap().trim().trim_end_matches('/').to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "unexpected banner: {line}{}", log.lock().unwrap());
        Served { child, base, log }
    }

    /// host:port, for raw sockets.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit status, if it exits within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.log());
        }
    }
}

/// An HTTP client that hands back 4xx/5xx responses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// An MNIST test digit (index `i`) and its label.
pub fn digit(i: usize) -> (image::GrayImage, u8) {
    static MNIST: OnceLock<rr_core::data::Splits> = OnceLock::new();
    let m = MNIST.get_or_init(|| rr_core::data::Mnist::load(&repo().join("data/mnist")).unwrap());
    let img = image::GrayImage::from_raw(28, 28, m.test.images[i * 784..(i + 1) * 784].to_vec()).unwrap();
    (img, m.test.labels[i])
}

/// An MNIST test digit as PNG bytes (index `i`), and its label.
pub fn digit_png(i: usize) -> (Vec<u8>, u8) {
    let (img, label) = digit(i);
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    (png, label)
}

/// A minimal Exif chunk (a TIFF header and one IFD) holding only the
/// Orientation tag (0x0112, one SHORT): 1 upright, 6 "rotate 90° clockwise to
/// view", 8 "rotate 270°", 2-5 and 7 the mirrored ones.
pub fn exif_orientation(value: u16) -> Vec<u8> {
    let mut chunk = b"II*\0".to_vec(); // little-endian TIFF
    chunk.extend(8u32.to_le_bytes()); // the IFD right after this header
    chunk.extend(1u16.to_le_bytes()); // one entry
    chunk.extend(0x0112u16.to_le_bytes()); // Orientation
    chunk.extend(3u16.to_le_bytes()); // SHORT
    chunk.extend(1u32.to_le_bytes()); // one value
    chunk.extend(value.to_le_bytes());
    chunk.extend([0, 0]); // the value field's unused half
    chunk.extend(0u32.to_le_bytes()); // no next IFD
    chunk
}

/// `img` as a JPEG whose Exif says Orientation = `value` (the APP1 segment the JPEG encoder writes).
pub fn jpeg_with_orientation(img: &image::GrayImage, value: u16) -> Vec<u8> {
    use image::ImageEncoder;
    let mut jpeg = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
    encoder.set_exif_metadata(exif_orientation(value)).unwrap();
    encoder.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::L8).unwrap();
    assert!(jpeg.windows(6).any(|w| w == b"Exif\0\0"), "the JPEG has an Exif segment");
    jpeg
}

/// `img` as a PNG whose eXIf chunk says Orientation = `value`.
pub fn png_with_orientation(img: &image::GrayImage, value: u16) -> Vec<u8> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
    encoder.set_exif_metadata(exif_orientation(value)).unwrap();
    encoder.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::L8).unwrap();
    png
}
