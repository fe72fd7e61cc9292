//! Plain reference implementations of every backend op (llm.c style): simple
//! loops over slices, written to be obviously right rather than fast. The CPU
//! backend uses some of them directly; every fast op, CPU or GPU, is tested
//! against them (see [`crate::conformance`]). Callers check lengths first.

use crate::backend::{
    Activation, AugmentParams, AugmentSpec, BatchNormGeom, Conv2dGeom, CropSpec, DropoutSpec, Gather, Gemm, Hyper, LossScaleState, Padding,
    Pool2dGeom, ScaleUpdate, UpdateRule, ELASTIC_GRID, NO_ARGMAX,
};
use crate::error::{Error, Result};
use crate::random;

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

/// `db[j] = sum_i dy[i, j]`; dy: (rows, cols).
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

/// Φ(x), the standard normal CDF, in f64 as `0.5 erfc(-x / sqrt 2)` (exact in
/// both tails, where `0.5 (1 + erf)` loses the small values to cancellation).
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// φ(x), the standard normal density.
fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// `y = x Φ(x)` (`torch.nn.GELU()`, the exact erf form), worked out in f64.
pub fn gelu_forward(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x as f64 * normal_cdf(x as f64)) as f32;
    }
}

/// `dx = dy (Φ(x) + x φ(x))`, worked out in f64.
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
        let x = x as f64;
        *dx = (dy as f64 * (normal_cdf(x) + x * normal_pdf(x))) as f32;
    }
}

/// `y = a x + b y`; y is not read when b == 0 (as in BLAS).
pub fn axpby(a: f32, x: &[f32], b: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if b == 0.0 { a * x } else { a * x + b * *y };
    }
}

/// `x *= target / (||x|| + eps)`, the norm summed in f64; x unchanged where `||x|| + eps` is 0.
pub fn scale_to_norm(x: &mut [f32], target: f32, eps: f32) {
    let norm = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() + eps as f64;
    if norm > 0.0 {
        let factor = (target as f64 / norm) as f32;
        x.iter_mut().for_each(|v| *v *= factor);
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

/// `dx = 0; dx[argmax[o]] += dy[o]` (indices outside dx, NO_ARGMAX among them, are skipped).
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
    smoothing: f32,
    logits: &[f32],
    labels: &[u32],
    grad_scale: f32,
    mut dlogits: Option<&mut [f32]>,
    stats: &mut [f32],
) -> Result<()> {
    let mut loss_sum = 0.0f64;
    let mut correct = 0u32;
    let uniform = smoothing / classes as f32;
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
        // -sum_c target_c log p_c with target = (1 - s) onehot + s / C
        let mean_logit: f32 = row.iter().sum::<f32>() / classes as f32;
        loss_sum += ((1.0 - smoothing) * (log_z - row[label]) + smoothing * (log_z - mean_logit)) as f64;
        correct += (arg == label) as u32;
        if let Some(d) = dlogits.as_deref_mut() {
            for c in 0..classes {
                let p = (row[c] - log_z).exp();
                let target = (1.0 - smoothing) * (c == label) as u32 as f32 + uniform;
                d[i * classes + c] = grad_scale * (p - target);
            }
        }
    }
    stats[0] += loss_sum as f32;
    stats[1] += correct as f32;
    Ok(())
}

/// See [`UpdateRule`]; `hyper` = [lr, 1 - beta1^t, 1 - beta2^t, skip] (nonzero skip: nothing changes).
pub fn optimizer_step(rule: &UpdateRule, hyper: &[f32], p: &mut [f32], g: &[f32], state: &mut [f32]) {
    if hyper[Hyper::SKIP] != 0.0 {
        return;
    }
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
    let plane = s.plane();
    // x = px * scale - shift: one multiply-add per pixel.
    let scale = s.std.map(|sd| 1.0 / (255.0 * sd));
    let shift: [f32; 4] = std::array::from_fn(|c| s.mean[c] / s.std[c]);
    for (i, &idx) in indices.iter().enumerate().take(s.n) {
        let idx = idx as usize;
        if idx >= labels.len() {
            return Err(Error::shape("gather_batch", format!("index {i}"), format!("< {} (dataset size)", labels.len()), idx));
        }
        let src = &images[idx * s.sample_len..(idx + 1) * s.sample_len];
        for (j, (o, &px)) in x[i * s.sample_len..(i + 1) * s.sample_len].iter_mut().zip(src).enumerate() {
            let c = j / plane;
            *o = px as f32 * scale[c] - shift[c];
        }
        y[i] = labels[idx] as u32;
    }
    Ok(())
}

/// `y = a + b`.
pub fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

/// `y = max(a + b, 0)`: a residual connection and the ReLU after it.
pub fn add_relu(a: &[f32], b: &[f32], y: &mut [f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = (a + b).max(0.0);
    }
}

/// `y += x`.
pub fn add_assign(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// The source index of output coordinate `o` shifted by `shift - pad` in a
/// side of `len` pixels, or `None` where zero padding reads 0.
pub fn crop_source(o: usize, shift: usize, pad: usize, len: usize, padding: Padding) -> Option<usize> {
    let i = o as i64 + shift as i64 - pad as i64;
    let n = len as i64;
    match padding {
        _ if (0..n).contains(&i) => Some(i as usize),
        Padding::Zero => None,
        // Reflect without repeating the edge: -1 -> 1, n -> n - 2 (pad < len, so one fold suffices).
        Padding::Reflect => Some(if i < 0 { -i } else { 2 * (n - 1) - i } as usize),
    }
}

/// One sample of [`crop_flip`] at step `step` (rng[1]): x, y (c, h, w).
pub fn crop_flip_sample(spec: &CropSpec, key: u32, step: u32, i: usize, x: &[f32], y: &mut [f32]) {
    let (h, w) = (spec.h, spec.w);
    let p = spec.params(key, step, i);
    let cut = spec.cutout as i64;
    for c in 0..spec.c {
        for r in 0..h {
            for s in 0..w {
                let sx = if p.flip { w - 1 - s } else { s };
                let in_cut = cut > 0 && (p.cut_y..p.cut_y + cut).contains(&(r as i64)) && (p.cut_x..p.cut_x + cut).contains(&(s as i64));
                let src = match (crop_source(r, p.dy, spec.pad, h, spec.padding), crop_source(sx, p.dx, spec.pad, w, spec.padding)) {
                    (Some(sy), Some(sx)) if !in_cut => x[(c * h + sy) * w + sx],
                    _ => 0.0,
                };
                y[(c * h + r) * w + s] = src;
            }
        }
    }
}

/// See [`CropSpec`]; `rng` = [seed, step].
pub fn crop_flip(spec: &CropSpec, rng: &[u32], x: &[f32], y: &mut [f32]) {
    let key = random::stream_key(rng[0], rng[1], spec.salt);
    let len = spec.c * spec.h * spec.w;
    for i in 0..spec.n {
        crop_flip_sample(spec, key, rng[1], i, &x[i * len..(i + 1) * len], &mut y[i * len..(i + 1) * len]);
    }
}

/// Average pooling; padding reads 0 and every window divides by k*k.
/// x: (N, C, H, W) -> y: (N, C, OH, OW)
pub fn avgpool2d_forward(g: &Pool2dGeom, x: &[f32], y: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let inv = 1.0 / (g.k * g.k) as f32;
    for plane in 0..g.n * g.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0f32;
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                            acc += x[(plane * g.h + iy as usize) * g.w + ix as usize];
                        }
                    }
                }
                y[(plane * oh + oy) * ow + ox] = acc * inv;
            }
        }
    }
}

/// dy: (N, C, OH, OW) -> dx: (N, C, H, W), each output spreading dy / (k*k) over its window.
pub fn avgpool2d_backward(g: &Pool2dGeom, dy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let inv = 1.0 / (g.k * g.k) as f32;
    dx.fill(0.0);
    for plane in 0..g.n * g.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let d = dy[(plane * oh + oy) * ow + ox] * inv;
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                            dx[(plane * g.h + iy as usize) * g.w + ix as usize] += d;
                        }
                    }
                }
            }
        }
    }
}

/// Element `j` of channel `c` of sample `n` in (N, C, HW) layout.
#[inline]
fn bn_index(g: &BatchNormGeom, n: usize, c: usize, j: usize) -> usize {
    (n * g.c + c) * g.hw + j
}

/// The batch mean and biased variance of channel `c` (sums in f64).
pub fn batchnorm_moments(g: &BatchNormGeom, x: &[f32], c: usize) -> (f64, f64) {
    let (mut sum, mut sumsq) = (0.0f64, 0.0f64);
    for n in 0..g.n {
        for j in 0..g.hw {
            let v = x[bn_index(g, n, c, j)] as f64;
            sum += v;
            sumsq += v * v;
        }
    }
    let m = g.per_channel() as f64;
    let mean = sum / m;
    (mean, (sumsq / m - mean * mean).max(0.0))
}

/// The mean and 1/sqrt(var + eps) channel `c` is normalized with. Training
/// (`moments` from [`batchnorm_moments`]): the batch's, also written to `saved`
/// and folded into `running`. Evaluation (`None`): the running statistics.
pub fn batchnorm_channel_stats(
    g: &BatchNormGeom,
    c: usize,
    moments: Option<(f64, f64)>,
    running: &mut [f32],
    saved: &mut [f32],
) -> (f32, f32) {
    let Some((mean, var)) = moments else {
        return (running[c], 1.0 / (running[g.c + c] + g.eps).sqrt());
    };
    let m = g.per_channel() as f64;
    let invstd = (1.0 / (var + g.eps as f64).sqrt()) as f32;
    saved[c] = mean as f32;
    saved[g.c + c] = invstd;
    let mom = g.momentum;
    running[c] = (1.0 - mom) * running[c] + mom * mean as f32;
    running[g.c + c] = (1.0 - mom) * running[g.c + c] + mom * (var * m / (m - 1.0)) as f32;
    (mean as f32, invstd)
}

/// See [`crate::Backend::batchnorm_forward`]. x, y: (N, C, HW).
pub fn batchnorm_forward(
    g: &BatchNormGeom,
    training: bool,
    x: &[f32],
    params: &[f32],
    running: &mut [f32],
    saved: &mut [f32],
    y: &mut [f32],
) {
    if g.n == 0 {
        return;
    }
    for c in 0..g.c {
        let moments = training.then(|| batchnorm_moments(g, x, c));
        let (mean, invstd) = batchnorm_channel_stats(g, c, moments, running, saved);
        let (gamma, beta) = (params[c], params[g.c + c]);
        for n in 0..g.n {
            for j in 0..g.hw {
                let i = bn_index(g, n, c, j);
                let z = gamma * ((x[i] - mean) * invstd) + beta;
                y[i] = match g.act {
                    Activation::None => z,
                    Activation::Relu => z.max(0.0),
                    Activation::Gelu => (z as f64 * normal_cdf(z as f64)) as f32,
                };
            }
        }
    }
}

/// See [`crate::Backend::batchnorm_backward`]: with dy' = dy act'(z) (dy masked by y > 0 under the
/// fused ReLU; times GELU'(z) for z = gamma xhat + beta recomputed under the fused GELU)
/// and xhat = (x - mean) * invstd, dbeta = sum dy', dgamma = sum dy' xhat,
/// dx = gamma * invstd * (dy' - dbeta / M - xhat * dgamma / M) over the M values of a channel.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    g: &BatchNormGeom,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    params: &[f32],
    saved: &[f32],
    mut dx: Option<&mut [f32]>,
    dparams: &mut [f32],
) {
    let m = g.per_channel() as f64;
    for c in 0..g.c {
        let (mean, invstd, gamma, beta) = (saved[c], saved[g.c + c], params[c], params[g.c + c]);
        let dyr = |i: usize| match g.act {
            Activation::None => dy[i],
            Activation::Relu if y[i] <= 0.0 => 0.0,
            Activation::Relu => dy[i],
            Activation::Gelu => {
                let z = (gamma * ((x[i] - mean) * invstd) + beta) as f64;
                (dy[i] as f64 * (normal_cdf(z) + z * normal_pdf(z))) as f32
            }
        };
        let (mut dbeta, mut dgamma) = (0.0f64, 0.0f64);
        for n in 0..g.n {
            for j in 0..g.hw {
                let i = bn_index(g, n, c, j);
                dbeta += dyr(i) as f64;
                dgamma += dyr(i) as f64 * ((x[i] - mean) * invstd) as f64;
            }
        }
        dparams[c] = dgamma as f32;
        dparams[g.c + c] = dbeta as f32;
        if let Some(dx) = dx.as_deref_mut() {
            let (mb, mg) = ((dbeta / m) as f32, (dgamma / m) as f32);
            for n in 0..g.n {
                for j in 0..g.hw {
                    let i = bn_index(g, n, c, j);
                    let xhat = (x[i] - mean) * invstd;
                    dx[i] = gamma * invstd * (dyr(i) - mb - xhat * mg);
                }
            }
        }
    }
}

/// See [`crate::Backend::dropout_forward`]; `rng` = [seed, step].
pub fn dropout_forward(spec: &DropoutSpec, rng: &[u32], x: &[f32], y: &mut [f32], mask: &mut [f32]) {
    dropout_forward_from(spec, rng, 0, x, y, mask);
}

/// [`dropout_forward`] of the elements `first..first + x.len()` (for parallel chunks).
pub fn dropout_forward_from(spec: &DropoutSpec, rng: &[u32], first: usize, x: &[f32], y: &mut [f32], mask: &mut [f32]) {
    let key = random::stream_key(rng[0], rng[1], spec.salt);
    let scale = 1.0 / (1.0 - spec.p);
    for (i, ((y, m), &x)) in y.iter_mut().zip(mask.iter_mut()).zip(x).enumerate() {
        *m = if random::uniform(key, (first + i) as u32) >= spec.p { scale } else { 0.0 };
        *y = x * *m;
    }
}

pub fn dropout_backward(mask: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &d), &m) in dx.iter_mut().zip(dy).zip(mask) {
        *dx = d * m;
    }
}

/// The three stream keys of an augmentation step: affine parameters, elastic grid, noise.
pub fn augment_keys(spec: &AugmentSpec, rng: &[u32]) -> [u32; 3] {
    let key = random::stream_key(rng[0], rng[1], spec.salt);
    [key, random::mix(key ^ 1), random::mix(key ^ 2)]
}

/// The elastic displacement (dx, dy) in pixels at output pixel (ox, oy) of sample `i`:
/// bilinear between the (ELASTIC_GRID + 1)^2 random control points.
pub fn elastic_at(spec: &AugmentSpec, key: u32, i: usize, ox: usize, oy: usize) -> (f32, f32) {
    if spec.elastic == 0.0 {
        return (0.0, 0.0);
    }
    let g = ELASTIC_GRID;
    let side = g + 1;
    let point = |gx: usize, gy: usize, axis: usize| {
        let draw = ((i * side * side + gy * side + gx) * 2 + axis) as u32;
        spec.elastic * (2.0 * random::uniform(key, draw) - 1.0)
    };
    let fx = ox as f32 * g as f32 / (spec.w.max(2) - 1) as f32;
    let fy = oy as f32 * g as f32 / (spec.h.max(2) - 1) as f32;
    let (gx, gy) = ((fx as usize).min(g - 1), (fy as usize).min(g - 1));
    let (tx, ty) = (fx - gx as f32, fy - gy as f32);
    let lerp2 = |axis| {
        let top = (1.0 - tx) * point(gx, gy, axis) + tx * point(gx + 1, gy, axis);
        let bottom = (1.0 - tx) * point(gx, gy + 1, axis) + tx * point(gx + 1, gy + 1, axis);
        (1.0 - ty) * top + ty * bottom
    };
    (lerp2(0), lerp2(1))
}

/// Bilinear sample of the (h, w) plane at (sx, sy); pixels outside read `fill`.
pub fn bilinear(plane: &[f32], h: usize, w: usize, sx: f32, sy: f32, fill: f32) -> f32 {
    let (x0, y0) = (sx.floor(), sy.floor());
    let (fx, fy) = (sx - x0, sy - y0);
    let at = |x: f32, y: f32| {
        if x >= 0.0 && y >= 0.0 && x < w as f32 && y < h as f32 {
            plane[y as usize * w + x as usize]
        } else {
            fill
        }
    };
    let top = (1.0 - fx) * at(x0, y0) + fx * at(x0 + 1.0, y0);
    let bottom = (1.0 - fx) * at(x0, y0 + 1.0) + fx * at(x0 + 1.0, y0 + 1.0);
    (1.0 - fy) * top + fy * bottom
}

/// Sample `i` of [`crate::Backend::augment`]: x, y are that sample's (C, H, W).
pub fn augment_sample(spec: &AugmentSpec, keys: [u32; 3], i: usize, x: &[f32], y: &mut [f32]) {
    warp_sample(spec, &spec.params(keys[0], i), keys, i, x, y);
}

/// [`augment_sample`] with the affine parameters given (elastic grid and
/// noise still come from `keys[1]` and `keys[2]`).
pub fn warp_sample(spec: &AugmentSpec, p: &AugmentParams, keys: [u32; 3], i: usize, x: &[f32], y: &mut [f32]) {
    let (h, w) = (spec.h, spec.w);
    let (sin, cos) = p.angle.sin_cos();
    let (cx, cy) = ((w as f32 - 1.0) * 0.5, (h as f32 - 1.0) * 0.5);
    for oy in 0..h {
        for ox in 0..w {
            let (ex, ey) = elastic_at(spec, keys[1], i, ox, oy);
            // Invert out = s R(angle) (in - centre) + centre + t.
            let (px, py) = (ox as f32 + ex - cx - p.tx, oy as f32 + ey - cy - p.ty);
            let mut sx = (cos * px + sin * py) / p.scale + cx;
            let sy = (-sin * px + cos * py) / p.scale + cy;
            if p.flip {
                sx = w as f32 - 1.0 - sx;
            }
            for c in 0..spec.c {
                let o = (c * h + oy) * w + ox;
                let mut v = bilinear(&x[c * h * w..(c + 1) * h * w], h, w, sx, sy, spec.fill);
                if spec.noise > 0.0 {
                    v += spec.noise * random::normal(keys[2], (i * spec.c * h * w + o) as u32);
                }
                y[o] = v;
            }
        }
    }
}

/// See [`crate::Backend::augment`]; `rng` = [seed, step].
pub fn augment(spec: &AugmentSpec, rng: &[u32], x: &[f32], y: &mut [f32]) {
    let keys = augment_keys(spec, rng);
    let len = spec.c * spec.h * spec.w;
    for i in 0..spec.n {
        augment_sample(spec, keys, i, &x[i * len..(i + 1) * len], &mut y[i * len..(i + 1) * len]);
    }
}

// ---- dynamic loss scaling (see crate::loss_scale) -----------------------------

/// `x *= state[SCALE]`.
pub fn loss_scale_dlogits(state: &[f32], x: &mut [f32]) {
    let scale = state[LossScaleState::SCALE];
    x.iter_mut().for_each(|v| *v *= scale);
}

/// `grads *= 1 / scale`; `found_inf = 1` if an unscaled value is not finite.
pub fn loss_scale_unscale(state: &mut [f32], grads: &mut [f32]) {
    let inverse = 1.0 / state[LossScaleState::SCALE];
    let mut finite = true;
    for g in grads.iter_mut() {
        *g *= inverse;
        finite &= g.is_finite();
    }
    if !finite {
        state[LossScaleState::FOUND_INF] = 1.0;
    }
}

/// GradScaler's update (see [`ScaleUpdate`]), then `found_inf = 0`.
pub fn loss_scale_update(spec: &ScaleUpdate, state: &mut [f32]) {
    let (scale, good) = (LossScaleState::SCALE, LossScaleState::GOOD_STEPS);
    if state[LossScaleState::FOUND_INF] != 0.0 {
        state[scale] *= spec.backoff;
        state[good] = 0.0;
        state[LossScaleState::SKIPPED] += 1.0;
    } else {
        state[good] += 1.0;
        if state[good] >= spec.growth_interval as f32 {
            let grown = state[scale] * spec.growth;
            if grown.is_finite() {
                state[scale] = grown;
            }
            state[good] = 0.0;
        }
    }
    state[LossScaleState::FOUND_INF] = 0.0;
}

#[cfg(test)]
mod tests {
    /// GELU and its derivative at points worked out by CPython's `math.erfc`
    /// (`x * 0.5 * erfc(-x / sqrt(2))`, and `Φ(x) + x exp(-x²/2) / sqrt(2π)`),
    /// the values `torch.nn.GELU()` gives; the far negative tail keeps its
    /// relative accuracy (no `1 + erf` cancellation).
    #[test]
    fn gelu_matches_the_definition_worked_out_elsewhere() {
        let points: [(f32, f64, f64); 8] = [
            (-5.0, -1.4332578593959731e-06, -7.146946001792295e-06),
            (-3.0, -0.004049694094890287, -0.011945647204183927),
            (-1.0, -0.15865525393145707, -0.08331547058768629),
            (-0.5, -0.15426876936299344, 0.13250487534383712),
            (0.0, 0.0, 0.5),
            (0.5, 0.34573123063700656, 0.8674951246561629),
            (1.0, 0.8413447460685429, 1.0833154705876864),
            (3.0, 2.99595030590511, 1.011945647204184),
        ];
        let x: Vec<f32> = points.iter().map(|p| p.0).collect();
        let (mut y, mut dx) = (vec![f32::NAN; 8], vec![f32::NAN; 8]);
        super::gelu_forward(&x, &mut y);
        super::gelu_backward(&x, &[1.0; 8], &mut dx);
        for (i, &(x, want_y, want_d)) in points.iter().enumerate() {
            assert!((y[i] as f64 - want_y).abs() <= 1e-7 * want_y.abs(), "GELU({x}) = {}, want {want_y}", y[i]);
            assert!((dx[i] as f64 - want_d).abs() <= 1e-7 * want_d.abs(), "GELU'({x}) = {}, want {want_d}", dx[i]);
        }
    }
}
