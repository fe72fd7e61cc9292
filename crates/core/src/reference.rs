//! Plain reference implementations of every backend op (llm.c style): simple
//! loops over slices, written to be obviously right rather than fast. The CPU
//! backend uses some of them directly; every fast op, CPU or GPU, is tested
//! against them (see [`crate::conformance`]). Callers check lengths first.

use crate::backend::{Conv2dGeom, Gather, Gemm, Pool2dGeom, UpdateRule, NO_ARGMAX};
use crate::error::{Error, Result};

/// C (m, n) = alpha * op(A) op(B) + beta * C + bias.
pub fn gemm(s: &Gemm, a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32]) {
    let (m, n, k) = (s.m, s.n, s.k);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if s.trans_a { a[p * m + i] } else { a[i * k + p] };
                let bv = if s.trans_b { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            let old = if s.beta == 0.0 { 0.0 } else { s.beta * c[i * n + j] };
            c[i * n + j] = s.alpha * acc as f32 + old + bias.map_or(0.0, |b| b[j]);
        }
    }
}

/// db[j] = sum_i dy[i, j]; dy: (rows, cols).
pub fn bias_grad(rows: usize, cols: usize, dy: &[f32], db: &mut [f32]) {
    for (j, d) in db.iter_mut().enumerate().take(cols) {
        *d = (0..rows).map(|i| dy[i * cols + j]).sum();
    }
}

pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x.max(0.0);
    }
}

pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
        *dx = if y > 0.0 { dy } else { 0.0 };
    }
}

/// Direct convolution.
/// x: (N, C_in, H, W), w: (C_out, C_in, K, K), b: (C_out) -> y: (N, C_out, OH, OW)
pub fn conv2d_forward(g: &Conv2dGeom, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for n in 0..g.n {
        for co in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[co] as f64;
                    for ci in 0..g.c_in {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * g.c_in + ci) * g.k + ky) * g.k + kx;
                                acc += x[xi] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    y[((n * g.c_out + co) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
}

/// Gradients of [`conv2d_forward`] given dy: (N, C_out, OH, OW).
/// Overwrites dw (C_out, C_in, K, K), db (C_out) and dx (N, C_in, H, W) if given.
pub fn conv2d_backward(g: &Conv2dGeom, x: &[f32], w: &[f32], dy: &[f32], mut dx: Option<&mut [f32]>, dw: &mut [f32], db: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut dw64 = vec![0.0f64; dw.len()];
    let mut db64 = vec![0.0f64; db.len()];
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(0.0);
    }
    for n in 0..g.n {
        for co in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let d = dy[((n * g.c_out + co) * oh + oy) * ow + ox];
                    db64[co] += d as f64;
                    for ci in 0..g.c_in {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((co * g.c_in + ci) * g.k + ky) * g.k + kx;
                                dw64[wi] += d as f64 * x[xi] as f64;
                                if let Some(dx) = dx.as_deref_mut() {
                                    dx[xi] += d * w[wi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for (o, v) in dw.iter_mut().zip(dw64) {
        *o = v as f32;
    }
    for (o, v) in db.iter_mut().zip(db64) {
        *o = v as f32;
    }
}

/// x: (N, C, H, W) -> y: (N, C, OH, OW); argmax holds the flat index into x of
/// each output's maximum (the first one in row-major window order on ties),
/// or NO_ARGMAX where the fused ReLU clamped the output.
pub fn maxpool2d_forward(g: &Pool2dGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for plane in 0..g.n * g.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f32::NEG_INFINITY;
                let mut best_i = u32::MAX;
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let xi = (plane * g.h + iy as usize) * g.w + ix as usize;
                        if x[xi] > best || best_i == u32::MAX {
                            best = x[xi];
                            best_i = xi as u32;
                        }
                    }
                }
                let o = (plane * oh + oy) * ow + ox;
                if g.relu && (best.is_nan() || best <= 0.0) {
                    (best, best_i) = (0.0, NO_ARGMAX);
                }
                y[o] = best;
                argmax[o] = best_i;
            }
        }
    }
}

/// dx = 0; dx[argmax[o]] += dy[o] (indices outside dx, NO_ARGMAX among them, are skipped).
pub fn maxpool2d_backward(dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    dx.fill(0.0);
    for (&d, &i) in dy.iter().zip(argmax) {
        if let Some(v) = dx.get_mut(i as usize) {
            *v += d;
        }
    }
}

/// Softmax cross-entropy over logits (n, classes). Returns an error for a label
/// out of range. See [`crate::Backend::softmax_cross_entropy`].
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    grad_scale: f32,
    mut dlogits: Option<&mut [f32]>,
    stats: &mut [f32],
) -> Result<()> {
    let mut loss_sum = 0.0f64;
    let mut correct = 0u32;
    for i in 0..n {
        let row = &logits[i * classes..(i + 1) * classes];
        let label = labels[i] as usize;
        if label >= classes {
            return Err(Error::shape("softmax_cross_entropy", format!("label of sample {i}"), format!("< {classes}"), label));
        }
        let (mut arg, mut max) = (0, row[0]);
        for (c, &v) in row.iter().enumerate() {
            if v > max {
                max = v;
                arg = c;
            }
        }
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        let log_z = max + sum.ln();
        loss_sum += (log_z - row[label]) as f64;
        correct += (arg == label) as u32;
        if let Some(d) = dlogits.as_deref_mut() {
            for c in 0..classes {
                let p = (row[c] - log_z).exp();
                d[i * classes + c] = grad_scale * (p - (c == label) as u32 as f32);
            }
        }
    }
    stats[0] += loss_sum as f32;
    stats[1] += correct as f32;
    Ok(())
}

/// See [`UpdateRule`]; `hyper` = [lr, 1 - beta1^t, 1 - beta2^t].
pub fn optimizer_step(rule: &UpdateRule, hyper: &[f32], p: &mut [f32], g: &[f32], state: &mut [f32]) {
    let lr = hyper[0];
    match *rule {
        UpdateRule::Sgd { momentum, nesterov, weight_decay } => {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(state.iter_mut()) {
                let g = g + weight_decay * *p;
                *v = momentum * *v + g;
                *p -= lr * if nesterov { g + momentum * *v } else { *v };
            }
        }
        UpdateRule::Adam { beta1, beta2, eps, weight_decay, decoupled } => {
            let (bc1, bc2) = (hyper[1], hyper[2]);
            let (m, v) = state.split_at_mut(p.len());
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = if decoupled {
                    *p *= 1.0 - lr * weight_decay;
                    g
                } else {
                    g + weight_decay * *p
                };
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *p -= (lr / bc1) * *m / (v.sqrt() / bc2.sqrt() + eps);
            }
        }
    }
}

/// Fails if an index is outside the dataset.
pub fn gather_batch(s: &Gather, images: &[u8], labels: &[u8], indices: &[u32], x: &mut [f32], y: &mut [u32]) -> Result<()> {
    let scale = 1.0 / (255.0 * s.std);
    let shift = s.mean / s.std;
    for (i, &idx) in indices.iter().enumerate().take(s.n) {
        let idx = idx as usize;
        if idx >= labels.len() {
            return Err(Error::shape("gather_batch", format!("index {i}"), format!("< {} (dataset size)", labels.len()), idx));
        }
        let src = &images[idx * s.sample_len..(idx + 1) * s.sample_len];
        for (o, &px) in x[i * s.sample_len..(i + 1) * s.sample_len].iter_mut().zip(src) {
            *o = px as f32 * scale - shift;
        }
        y[i] = labels[idx] as u32;
    }
    Ok(())
}
