//! Turns an arbitrary photo or drawing of a digit into an MNIST-style 28x28
//! image, the way MNIST itself was made: grayscale, light-on-dark, cropped to
//! the ink, scaled to fit 20x20 keeping the aspect ratio, and placed in 28x28
//! with its center of mass at the center.

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits};
use std::io::Cursor;

/// Largest file accepted, and the largest decoded image (width and height).
pub const MAX_FILE_BYTES: usize = 20 << 20;
pub const MAX_SIDE: u32 = 8192;

/// Decodes PNG or JPEG bytes (with limits, so a huge or hostile file is an error, not an allocation),
/// upright: turned or mirrored as its Exif Orientation says (a phone's photo is often stored sideways).
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    if bytes.len() > MAX_FILE_BYTES {
        bail!("the file is {} MB; the limit is {} MB", bytes.len() >> 20, MAX_FILE_BYTES >> 20);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().context("cannot read the image")?;
    if reader.format().is_none() {
        bail!("not a PNG or JPEG image");
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits.clone());
    let cannot = |e: image::ImageError| anyhow::anyhow!("cannot decode the image: {e}");
    let mut decoder = reader.into_decoder().map_err(cannot)?;
    // The decoder's own limits check the dimensions; the pixel buffer is checked here (as `ImageReader::decode` does).
    limits.reserve(decoder.total_bytes()).map_err(cannot)?;
    let orientation = decoder.orientation().map_err(cannot)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Grayscale with transparency composited onto white (a drawing on a
/// transparent canvas reads as dark ink on a light background).
fn to_gray(img: &DynamicImage) -> GrayImage {
    let rgba = img.to_rgba8();
    GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let lum = 0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32;
        let alpha = a as f32 / 255.0;
        image::Luma([(alpha * lum + (1.0 - alpha) * 255.0).round() as u8])
    })
}

/// 28x28 MNIST-style pixels (0 = background, 255 = ink), row-major.
pub fn mnist_style(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut gray = to_gray(img);
    let (w, h) = gray.dimensions();
    if w == 0 || h == 0 {
        bail!("the image has no pixels");
    }
    // Light background (judged by the border) -> invert so ink is bright, as in MNIST.
    let border: Vec<u32> = (0..w)
        .flat_map(|x| [gray.get_pixel(x, 0)[0], gray.get_pixel(x, h - 1)[0]])
        .chain((0..h).flat_map(|y| [gray.get_pixel(0, y)[0], gray.get_pixel(w - 1, y)[0]]))
        .map(u32::from)
        .collect();
    let background = border.iter().sum::<u32>() / border.len() as u32;
    if background > 127 {
        image::imageops::invert(&mut gray);
    }
    let bg = if background > 127 { 255 - background } else { background };
    // Ink: clearly brighter than the background.
    let threshold = (bg + 40).min(200) as u8;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in gray.enumerate_pixels() {
        if p[0] > threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x1 < x0 {
        bail!("no digit found: the image is blank");
    }
    // Remove the background level, crop to the ink, fit into 20x20.
    let crop = image::imageops::crop_imm(&gray, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let crop = GrayImage::from_fn(crop.width(), crop.height(), |x, y| {
        let v = crop.get_pixel(x, y)[0] as u32;
        image::Luma([(v.saturating_sub(bg) * 255 / (255 - bg).max(1)).min(255) as u8])
    });
    let (cw, ch) = crop.dimensions();
    let scale = 20.0 / cw.max(ch) as f32;
    let (nw, nh) = (((cw as f32 * scale).round() as u32).clamp(1, 20), ((ch as f32 * scale).round() as u32).clamp(1, 20));
    let small = image::imageops::resize(&crop, nw, nh, FilterType::Triangle);
    // Center of mass of the ink -> the center of the 28x28 frame.
    let (mut mass, mut mx, mut my) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p[0] as f32;
        mass += v;
        mx += v * x as f32;
        my += v * y as f32;
    }
    let (cx, cy) = if mass > 0.0 { (mx / mass, my / mass) } else { (nw as f32 / 2.0, nh as f32 / 2.0) };
    let ox = ((14.0 - cx).round() as i64).clamp(0, 28 - nw as i64) as u32;
    let oy = ((14.0 - cy).round() as i64).clamp(0, 28 - nh as i64) as u32;
    let mut out = vec![0u8; 28 * 28];
    for (x, y, p) in small.enumerate_pixels() {
        out[((oy + y) * 28 + ox + x) as usize] = p[0];
    }
    Ok(out)
}

/// An image prepared as the checkpoint's dataset was: MNIST-style digits for
/// the 28x28 grayscale datasets (MNIST, Fashion-MNIST), otherwise the image
/// converted to the dataset's channels (RGB or gray) and resized to its
/// height x width, as (C, H, W) bytes.
pub fn prepare(img: &DynamicImage, info: &rr_core::data::DatasetInfo) -> Result<Vec<u8>> {
    let [c, h, w] = info.shape;
    if matches!(info.name.as_str(), "mnist" | "fashion-mnist") && info.shape == [1, 28, 28] {
        return mnist_style(img);
    }
    let resized = img.resize_exact(w as u32, h as u32, FilterType::Triangle);
    match c {
        1 => Ok(resized.to_luma8().into_raw()),
        3 => {
            let rgb = resized.to_rgb8();
            // (H, W, 3) interleaved -> (3, H, W) planes
            Ok((0..3).flat_map(|ch| rgb.pixels().map(move |p| p.0[ch])).collect())
        }
        _ => bail!("models with {c} input channels cannot take photos (1 or 3 channels)"),
    }
}
