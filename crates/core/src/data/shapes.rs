//! A synthetic image folder for tests and demos: four classes of simple
//! colour shapes (circle, square, triangle, cross) at a random position and
//! size, in a random foreground colour on a random, contrasting background,
//! with a little pixel noise. Most files are PNG; every fourth is a JPEG, so
//! both decoders are exercised. Everything is a function of the seed.
//!
//! A small CNN learns it easily (the classes differ only in shape, which a few
//! convolutions see at any position and colour).

use crate::error::{Error, Result};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The classes [`write_shapes_folder`] draws, in label order (sorted, as the image folder loader sorts them).
pub const SHAPE_CLASSES: [&str; 4] = ["circle", "cross", "square", "triangle"];

/// Smallest and largest image side [`write_shapes_folder`] accepts.
pub const SHAPES_MIN_SIZE: usize = 8;
pub const SHAPES_MAX_SIZE: usize = 1024;

/// Writes `dir/train/<class>/NNNNN.{png,jpg}` (`per_class_train` images per
/// class) and `dir/test/<class>/...` (`per_class_test` per class), each
/// `size` x `size` RGB, deterministically from `seed`. Existing files of the
/// same names are overwritten; nothing else in `dir` is touched.
pub fn write_shapes_folder(dir: &Path, per_class_train: usize, per_class_test: usize, size: usize, seed: u64) -> Result<()> {
    if !(SHAPES_MIN_SIZE..=SHAPES_MAX_SIZE).contains(&size) {
        return Err(Error::config("shapes image size", format!("{size}: expected {SHAPES_MIN_SIZE} to {SHAPES_MAX_SIZE} pixels")));
    }
    if per_class_train == 0 || per_class_test == 0 {
        return Err(Error::config(
            "shapes image counts",
            format!("{per_class_train} training and {per_class_test} test images per class: need at least one of each"),
        ));
    }
    let mut jobs: Vec<(PathBuf, u64, usize, bool)> = Vec::new();
    for (split_id, (split, count)) in [("train", per_class_train), ("test", per_class_test)].into_iter().enumerate() {
        for (class, name) in SHAPE_CLASSES.iter().enumerate() {
            let folder = dir.join(split).join(name);
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            for i in 0..count {
                let jpeg = i % 4 == 3;
                let file = folder.join(format!("{i:05}.{}", if jpeg { "jpg" } else { "png" }));
                let key = mix(mix(mix(seed ^ 0x5348_4150_4553) ^ split_id as u64) ^ class as u64) ^ i as u64;
                jobs.push((file, key, class, jpeg));
            }
        }
    }
    let results: Vec<Result<()>> = jobs
        .par_iter()
        .map(|(file, key, class, jpeg)| {
            let pixels = draw(*class, size, &mut SplitMix(mix(*key)));
            let mut bytes = Vec::new();
            let (w, h) = (size as u32, size as u32);
            let encoded = if *jpeg {
                JpegEncoder::new_with_quality(&mut bytes, 92).encode(&pixels, w, h, ExtendedColorType::Rgb8)
            } else {
                PngEncoder::new(&mut bytes).write_image(&pixels, w, h, ExtendedColorType::Rgb8)
            };
            encoded.map_err(|e| Error::Dataset { path: file.clone(), msg: format!("cannot encode the image: {e}") })?;
            std::fs::write(file, &bytes).map_err(|e| Error::io(file, e))
        })
        .collect();
    results.into_iter().collect()
}

/// SplitMix64's finalizer: a good 64-bit mixing function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A tiny deterministic generator (SplitMix64), independent of any crate's version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    fn colour(&mut self) -> [f32; 3] {
        [self.range(0.0, 255.0), self.range(0.0, 255.0), self.range(0.0, 255.0)]
    }
}

/// Draws one image of `class` as interleaved RGB bytes (row-major).
fn draw(class: usize, size: usize, rng: &mut SplitMix) -> Vec<u8> {
    let s = size as f32;
    let bg = rng.colour();
    // A foreground that stands out from the background (retry until it does).
    let mut fg = rng.colour();
    for _ in 0..64 {
        let diff: f32 = fg.iter().zip(&bg).map(|(a, b)| (a - b).abs()).sum();
        if diff >= 180.0 {
            break;
        }
        fg = rng.colour();
    }
    let r = rng.range(0.22, 0.40) * s;
    let cx = rng.range(r, s - r);
    let cy = rng.range(r, s - r);
    let inside = |x: f32, y: f32| -> bool {
        let (dx, dy) = (x - cx, y - cy);
        match SHAPE_CLASSES[class] {
            "circle" => dx * dx + dy * dy <= r * r,
            "square" => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
            // Pointing up: the apex at the top, the base at the bottom.
            "triangle" => dy.abs() <= r && dx.abs() <= (dy + r) / 2.0,
            // A plus sign with arms a third of the radius wide.
            _ => (dx.abs() <= r / 3.0 && dy.abs() <= r) || (dy.abs() <= r / 3.0 && dx.abs() <= r),
        }
    };
    let mut out = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            // 2x2 supersampling for smooth edges.
            let mut cover = 0.0;
            for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                if inside(x as f32 + ox, y as f32 + oy) {
                    cover += 0.25;
                }
            }
            for c in 0..3 {
                let v = bg[c] + (fg[c] - bg[c]) * cover + rng.range(-8.0, 8.0);
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}
