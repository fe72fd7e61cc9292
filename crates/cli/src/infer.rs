//! Class probabilities for images prepared as the dataset was, on any backend.

use anyhow::Result;
use rr_core::backend::{Gather, View, ViewMut};
use rr_core::data::DatasetInfo;
use rr_core::model::Model;
use rr_core::Backend;

/// Softmax probabilities for `images` (each (C, H, W) u8 pixels as `info`
/// describes them), in batches, normalized exactly as in training (the same gather op).
pub fn probabilities<B: Backend>(backend: &B, model: &mut Model<B>, info: &DatasetInfo, images: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
    let sample_len = model.input_len();
    let classes = model.classes();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(1000) {
        let n = chunk.len();
        let pixels: Vec<u8> = chunk.iter().flat_map(|img| img.iter().copied()).collect();
        anyhow::ensure!(pixels.len() == n * sample_len, "each image must have {sample_len} pixels");
        let images = backend.upload(&pixels)?;
        let labels = backend.upload(&vec![0u8; n])?;
        let idx = backend.upload(&(0..n as u32).collect::<Vec<_>>())?;
        let mut x = backend.alloc::<f32>(n * sample_len)?;
        let mut y = backend.alloc::<u32>(n)?;
        let spec = Gather::new(n, info);
        backend.gather_batch(&spec, View::all(&images), View::all(&labels), View::all(&idx), ViewMut::all(&mut x), ViewMut::all(&mut y))?;
        model.forward(backend, n, View::all(&x))?;
        let logits = backend.download(model.logits(n)?)?;
        for row in logits.chunks_exact(classes) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            out.push(exps.iter().map(|e| e / sum).collect());
        }
    }
    Ok(out)
}

/// The `k` most probable classes, most probable first.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    order.truncate(k);
    order
}
