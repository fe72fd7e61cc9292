//! The CPU backend: buffers are `Vec`s, dense work goes through the `gemm`
//! crate, and loops over the batch run on a rayon pool of `threads` threads.
//! Convolution is im2col + GEMM per sample; scratch space is per thread and
//! reused, so a training step allocates nothing once warmed up. The `gemm`
//! crate picks AVX2/AVX-512 kernels at run time; our own hot loops (im2col,
//! col2im, pooling) get the same through `multiversion`, since the default
//! build target is baseline x86-64.

use crate::backend::{
    checks, Activation, AugmentSpec, Backend, BatchNormGeom, Conv2dGeom, CropSpec, DropoutSpec, Elem, Gather, Gemm, Pool2dGeom,
    ScaleUpdate, UpdateRule, View, ViewMut, NO_ARGMAX,
};
use crate::error::{check_len, Error, Result};
use crate::reference;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    /// Per-chunk partial weight gradients for conv backward.
    partials: Mutex<Vec<f32>>,
}

/// Samples per convolution GEMM on the CPU: enough columns for the GEMM to run
/// at speed, few enough for the column matrix to stay in cache.
const SUB: usize = 8;

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CpuBackend {
    /// `threads == 0` means one per available core.
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("rr-cpu-{i}"))
            .build()
            .map_err(|e| Error::Device { backend: "cpu", msg: format!("cannot start {threads} worker threads: {e}") })?;
        Ok(CpuBackend { pool, threads, partials: Mutex::new(Vec::new()) })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn s<'a, T: Elem>(v: View<'a, CpuBackend, T>) -> &'a [T] {
    &v.buf[v.offset..v.offset + v.len]
}

fn sm<'a, T: Elem>(v: ViewMut<'a, CpuBackend, T>) -> &'a mut [T] {
    &mut v.buf[v.offset..v.offset + v.len]
}

/// Row-major `c = alpha * op(a) op(b) + (if accumulate { c } else { 0 })`.
fn sgemm(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    sgemm_rows(g, a, b, c, 0..g.m, accumulate);
}

/// Rows `rows` of [`sgemm`]'s product; `c` holds exactly those rows.
fn sgemm_rows(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32], rows: std::ops::Range<usize>, accumulate: bool) {
    let (m, n, k) = (g.m, g.n, g.k);
    let mr = rows.len();
    assert!(rows.end <= m && a.len() >= m * k && b.len() >= k * n && c.len() >= mr * n);
    if mr == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..mr * n].fill(0.0);
        }
        return;
    }
    // First element and (row stride, column stride) of op(A)[rows] and op(B).
    let (a_off, a_rs, a_cs) = if g.trans_a { (rows.start, 1, m as isize) } else { (rows.start * k, k as isize, 1) };
    let (b_rs, b_cs) = if g.trans_b { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserted lengths cover every index the strides reach from
    // these offsets; the output does not alias the inputs (distinct borrows).
    unsafe {
        gemm::gemm(
            mr,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr().add(a_off),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            g.alpha,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// For stride 1: the outputs `lo..hi` whose input column `ox + kx - pad` is
/// inside the image (the others read padding).
fn unit_stride_range(g: &Conv2dGeom, kx: usize, ow: usize) -> (usize, usize) {
    let lo = g.pad.saturating_sub(kx).min(ow);
    let hi = (g.w + g.pad).saturating_sub(kx).clamp(lo, ow);
    (lo, hi)
}

/// Columns `col0 .. col0 + OH*OW` of cols (C_in*K*K, ld) from one image x_n (C_in, H, W).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn im2col(g: &Conv2dGeom, x: &[f32], cols: &mut [f32], ld: usize, col0: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut row = 0;
    for ci in 0..g.c_in {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let dst = &mut cols[row * ld + col0..row * ld + col0 + oh * ow];
                for oy in 0..oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    let out = &mut dst[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.stride == 1 {
                        // ix = ox + kx - pad: one contiguous copy between zero edges.
                        let (lo, hi) = unit_stride_range(g, kx, ow);
                        out[..lo].fill(0.0);
                        out[lo..hi].copy_from_slice(&src[lo + kx - g.pad..hi + kx - g.pad]);
                        out[hi..].fill(0.0);
                        continue;
                    }
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        *o = if ix < 0 || ix >= g.w as isize { 0.0 } else { src[ix as usize] };
                    }
                }
                row += 1;
            }
        }
    }
}

/// dx_n (C_in, H, W) = scatter-add of columns `col0 .. col0 + OH*OW` of cols
/// (C_in*K*K, ld); dx_n is overwritten.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn col2im(g: &Conv2dGeom, cols: &[f32], ld: usize, col0: usize, dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    dx.fill(0.0);
    let mut row = 0;
    for ci in 0..g.c_in {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let src = &cols[row * ld + col0..row * ld + col0 + oh * ow];
                for oy in 0..oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.stride == 1 {
                        let (lo, hi) = unit_stride_range(g, kx, ow);
                        let d = &mut dst[lo + kx - g.pad..hi + kx - g.pad];
                        d.iter_mut().zip(&src[oy * ow + lo..oy * ow + hi]).for_each(|(d, v)| *d += v);
                        continue;
                    }
                    for ox in 0..ow {
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += src[oy * ow + ox];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// The common 2x2 / stride 2 pool of one plane, without data-dependent branches
/// (same result and tie-breaking as the reference: the first maximum in
/// row-major window order). `base` is the plane's offset in the whole input.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn maxpool_2x2(g: &Pool2dGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32], base: u32) {
    let (oh, ow, w) = (g.out_h(), g.out_w(), g.w);
    for oy in 0..oh {
        let top = &x[2 * oy * w..][..2 * ow];
        let bottom = &x[(2 * oy + 1) * w..][..2 * ow];
        let yr = &mut y[oy * ow..][..ow];
        let ar = &mut argmax[oy * ow..][..ow];
        let row0 = base + (2 * oy * w) as u32;
        for ox in 0..ow {
            let (t0, t1, b0, b1) = (top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]);
            let i0 = row0 + 2 * ox as u32;
            let mut best = t0;
            let mut at = i0;
            let take = t1 > best;
            best = if take { t1 } else { best };
            at = if take { i0 + 1 } else { at };
            let take = b0 > best;
            best = if take { b0 } else { best };
            at = if take { i0 + w as u32 } else { at };
            let take = b1 > best;
            best = if take { b1 } else { best };
            at = if take { i0 + w as u32 + 1 } else { at };
            let clamp = g.relu && (best.is_nan() || best <= 0.0);
            yr[ox] = if clamp { 0.0 } else { best };
            ar[ox] = if clamp { NO_ARGMAX } else { at };
        }
    }
}

/// Backward of [`maxpool_2x2`] for one plane: dx (H, W) from dy and argmax (OH, OW).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn maxpool_2x2_backward(g: &Pool2dGeom, dy: &[f32], argmax: &[u32], dx: &mut [f32], base: u32) {
    let (oh, ow, w) = (g.out_h(), g.out_w(), g.w);
    if g.h % 2 == 1 || w % 2 == 1 {
        dx.fill(0.0); // the last row / column belongs to no window
    }
    for oy in 0..oh {
        let (top, bottom) = dx[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
        let row0 = base + (2 * oy * w) as u32;
        for ox in 0..ow {
            let (d, a) = (dy[oy * ow + ox], argmax[oy * ow + ox]);
            let i0 = row0 + 2 * ox as u32;
            top[2 * ox] = if a == i0 { d } else { 0.0 };
            top[2 * ox + 1] = if a == i0 + 1 { d } else { 0.0 };
            bottom[2 * ox] = if a == i0 + w as u32 { d } else { 0.0 };
            bottom[2 * ox + 1] = if a == i0 + w as u32 + 1 { d } else { 0.0 };
        }
    }
}

/// Sum with eight independent accumulators (vectorizes; a plain fold does not).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs `f` with this thread's scratch buffer resized to `len`.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

impl Backend for CpuBackend {
    type Buf<T: Elem> = Vec<T>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn alloc<T: Elem>(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); len])
    }

    fn upload<T: Elem>(&self, host: &[T]) -> Result<Vec<T>> {
        Ok(host.to_vec())
    }

    fn write<T: Elem>(&self, dst: ViewMut<'_, Self, T>, host: &[T]) -> Result<()> {
        check_len("write", "host data", dst.len, host.len())?;
        sm(dst).copy_from_slice(host);
        Ok(())
    }

    fn download<T: Elem>(&self, src: View<'_, Self, T>) -> Result<Vec<T>> {
        Ok(s(src).to_vec())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn fill(&self, dst: ViewMut<'_, Self, f32>, value: f32) -> Result<()> {
        sm(dst).fill(value);
        Ok(())
    }

    fn copy<T: Elem>(&self, src: View<'_, Self, T>, dst: ViewMut<'_, Self, T>) -> Result<()> {
        check_len("copy", "destination", src.len, dst.len)?;
        sm(dst).copy_from_slice(s(src));
        Ok(())
    }

    type Graph = ();
    type Mark = std::time::Instant;

    fn mark(&self) -> Result<std::time::Instant> {
        Ok(std::time::Instant::now())
    }

    fn elapsed_ms(&self, start: &std::time::Instant, end: &std::time::Instant) -> Result<f64> {
        Ok(end.saturating_duration_since(*start).as_secs_f64() * 1e3)
    }

    fn peak_memory(&self) -> Option<(&'static str, u64)> {
        // VmHWM: the peak resident set size (Linux).
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(("peak resident memory", kib * 1024))
    }

    fn gemm(
        &self,
        g: &Gemm,
        a: View<'_, Self, f32>,
        b: View<'_, Self, f32>,
        bias: Option<View<'_, Self, f32>>,
        c: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        g.check(a.len, b.len, bias.map(|b| b.len), c.len)?;
        let c = sm(c);
        let mut accumulate = g.beta != 0.0;
        if accumulate && g.beta != 1.0 {
            c.iter_mut().for_each(|v| *v *= g.beta);
        }
        if let Some(bias) = bias {
            let bias = s(bias);
            for row in c.chunks_exact_mut(g.n) {
                if accumulate {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                } else {
                    row.copy_from_slice(bias);
                }
            }
            accumulate = true;
        }
        // Rows of C split across the threads (each a single-threaded GEMM):
        // cheaper than the gemm crate's own threading at these small sizes.
        let (a, b) = (s(a), s(b));
        let per = g.m.div_ceil(self.threads).max(16);
        if self.threads > 1 && g.m >= 32 && g.m * g.n * g.k >= 1 << 18 {
            self.pool.install(|| {
                c.par_chunks_mut(per * g.n).enumerate().for_each(|(t, rows)| {
                    let lo = t * per;
                    sgemm_rows(g, a, b, rows, lo..lo + rows.len() / g.n, accumulate)
                })
            });
        } else {
            sgemm(g, a, b, c, accumulate);
        }
        Ok(())
    }

    fn bias_grad(&self, rows: usize, cols: usize, dy: View<'_, Self, f32>, db: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::bias_grad(rows, cols, dy.len, db.len)?;
        let (dy, db) = (s(dy), sm(db));
        db.fill(0.0);
        for row in dy.chunks_exact(cols) {
            db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        }
        Ok(())
    }

    fn relu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        check_len("relu_forward", "y", x.len, y.len)?;
        let (x, y) = (s(x), sm(y));
        self.pool.install(|| y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(y, x)| reference::relu_forward(x, y)));
        Ok(())
    }

    fn relu_backward(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::relu_backward(y.len, dy.len, dx.len)?;
        let (y, dy, dx) = (s(y), s(dy), sm(dx));
        self.pool.install(|| {
            dx.par_chunks_mut(1 << 14)
                .zip(dy.par_chunks(1 << 14).zip(y.par_chunks(1 << 14)))
                .for_each(|(dx, (dy, y))| reference::relu_backward(y, dy, dx))
        });
        Ok(())
    }

    fn gelu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::gelu_forward(x.len, y.len)?;
        let (x, y) = (s(x), sm(y));
        self.pool.install(|| {
            y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x)))
        });
        Ok(())
    }

    fn gelu_backward(&self, x: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::gelu_backward(x.len, dy.len, dx.len)?;
        let (x, dy, dx) = (s(x), s(dy), sm(dx));
        self.pool.install(|| {
            dx.par_chunks_mut(1 << 14).zip(dy.par_chunks(1 << 14).zip(x.par_chunks(1 << 14))).for_each(|(dx, (dy, x))| {
                for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                    *dx = dy * gelu_grad(x);
                }
            })
        });
        Ok(())
    }

    fn axpby(&self, a: f32, x: View<'_, Self, f32>, b: f32, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::axpby(x.len, y.len)?;
        let (x, y) = (s(x), sm(y));
        self.pool.install(|| y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(y, x)| reference::axpby(a, x, b, y)));
        Ok(())
    }

    fn scale_to_norm(&self, x: ViewMut<'_, Self, f32>, target: f32, eps: f32) -> Result<()> {
        checks::scale_to_norm(target, eps)?;
        reference::scale_to_norm(sm(x), target, eps);
        Ok(())
    }

    fn add(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        let (a, b, y) = (s(a), s(b), sm(y));
        self.pool.install(|| {
            y.par_chunks_mut(1 << 14).zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14))).for_each(|(y, (a, b))| reference::add(a, b, y))
        });
        Ok(())
    }

    fn add_relu(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        let (a, b, y) = (s(a), s(b), sm(y));
        self.pool.install(|| {
            y.par_chunks_mut(1 << 14)
                .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
                .for_each(|(y, (a, b))| reference::add_relu(a, b, y))
        });
        Ok(())
    }

    fn add_assign(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add_assign(x.len, y.len)?;
        let (x, y) = (s(x), sm(y));
        self.pool.install(|| y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(y, x)| reference::add_assign(x, y)));
        Ok(())
    }

    fn conv2d_forward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::conv2d_forward(g, x.len, w.len, bias.len, y.len)?;
        if g.n == 0 {
            return Ok(());
        }
        let (x, w, bias, y) = (s(x), s(w), s(bias), sm(y));
        let ohw = g.out_h() * g.out_w();
        let pl = g.patch_len();
        let (x_n, y_n) = (g.c_in * g.h * g.w, g.c_out * ohw);
        // Groups of SUB samples: one GEMM per group (wide enough to run at speed)
        // yt (C_out, SUB*OH*OW) = W (C_out, C_in*K*K) . cols (C_in*K*K, SUB*OH*OW),
        // then each (sample, channel) row lands in y (N, C_out, OH, OW) with its bias.
        self.pool.install(|| {
            y.par_chunks_mut(SUB * y_n).zip(x.par_chunks(SUB * x_n)).for_each(|(yc, xc)| {
                let ncols = (xc.len() / x_n) * ohw;
                with_cols(pl * ncols + g.c_out * ncols, |scratch| {
                    let (cols, yt) = scratch.split_at_mut(pl * ncols);
                    for (i, xn) in xc.chunks_exact(x_n).enumerate() {
                        im2col(g, xn, cols, ncols, i * ohw);
                    }
                    sgemm(&Gemm::new(g.c_out, ncols, pl), w, cols, yt, false);
                    for (i, yn) in yc.chunks_exact_mut(y_n).enumerate() {
                        for (co, row) in yn.chunks_exact_mut(ohw).enumerate() {
                            let src = &yt[co * ncols + i * ohw..co * ncols + (i + 1) * ohw];
                            row.iter_mut().zip(src).for_each(|(o, v)| *o = v + bias[co]);
                        }
                    }
                });
            })
        });
        Ok(())
    }

    fn conv2d_backward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dparams: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::conv2d_backward(g, x.len, w.len, dy.len, dx.as_ref().map(|d| d.len), dparams.len)?;
        let (x, w, dy) = (s(x), s(w), s(dy));
        let (dw, db) = sm(dparams).split_at_mut(g.w_len());
        let dx = dx.map(sm);
        let ohw = g.out_h() * g.out_w();
        let pl = g.patch_len();
        let (x_n, y_n) = (g.c_in * g.h * g.w, g.c_out * ohw);
        let wl = g.w_len();
        let part_len = wl + g.c_out;
        // Split the batch into one chunk per thread; each chunk sums its own
        // partial dW/db, then the partials are reduced.
        if g.n == 0 {
            dw.fill(0.0);
            db.fill(0.0);
            return Ok(());
        }
        let chunks = self.threads.min(g.n);
        let per_chunk = g.n.div_ceil(chunks);
        let mut partials = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        if partials.len() < chunks * part_len {
            partials.resize(chunks * part_len, 0.0);
        }
        // One task per chunk: samples [t * per_chunk, (t + 1) * per_chunk).
        let used = g.n.div_ceil(per_chunk).max(1);
        let partials = &mut partials[..used * part_len];
        let work = |t: usize, part: &mut [f32], mut dxc: Option<&mut [f32]>| {
            let (lo, hi) = ((t * per_chunk).min(g.n), ((t + 1) * per_chunk).min(g.n));
            let (xc, dyc) = (&x[lo * x_n..hi * x_n], &dy[lo * y_n..hi * y_n]);
            {
                part.fill(0.0);
                let (pdw, pdb) = part.split_at_mut(wl);
                // Groups of SUB samples, as in the forward pass.
                for (s_i, (xs, dys)) in xc.chunks(SUB * x_n).zip(dyc.chunks(SUB * y_n)).enumerate() {
                    let ncols = (xs.len() / x_n) * ohw;
                    with_cols(2 * pl * ncols + g.c_out * ncols, |scratch| {
                        let (cols, rest) = scratch.split_at_mut(pl * ncols);
                        let (dcols, dyt) = rest.split_at_mut(pl * ncols);
                        // dyt (C_out, SUB*OH*OW) from dy (SUB, C_out, OH*OW)
                        for (i, dyn_) in dys.chunks_exact(y_n).enumerate() {
                            for (co, row) in dyn_.chunks_exact(ohw).enumerate() {
                                dyt[co * ncols + i * ohw..co * ncols + (i + 1) * ohw].copy_from_slice(row);
                            }
                        }
                        for (i, xn) in xs.chunks_exact(x_n).enumerate() {
                            im2col(g, xn, cols, ncols, i * ohw);
                        }
                        // dW (C_out, C_in*K*K) += dyt . cols^T; db += row sums of dyt
                        sgemm(&Gemm::new(g.c_out, pl, ncols).trans_b(), dyt, cols, pdw, true);
                        for (co, row) in dyt.chunks_exact(ncols).enumerate() {
                            pdb[co] += sum(row);
                        }
                        if let Some(dxc) = dxc.as_deref_mut() {
                            // dcols (C_in*K*K, SUB*OH*OW) = W^T . dyt, scattered back per sample
                            sgemm(&Gemm::new(pl, ncols, g.c_out).trans_a(), w, dyt, dcols, false);
                            let dxs = &mut dxc[s_i * SUB * x_n..];
                            for (i, dxn) in dxs.chunks_exact_mut(x_n).take(ncols / ohw).enumerate() {
                                col2im(g, dcols, ncols, i * ohw, dxn);
                            }
                        }
                    });
                }
            }
        };
        self.pool.install(|| match dx {
            Some(dx) => partials
                .par_chunks_mut(part_len)
                .zip(dx.par_chunks_mut(per_chunk * x_n))
                .enumerate()
                .for_each(|(t, (part, dxc))| work(t, part, Some(dxc))),
            None => partials.par_chunks_mut(part_len).enumerate().for_each(|(t, part)| work(t, part, None)),
        });
        dw.fill(0.0);
        db.fill(0.0);
        for part in partials.chunks(part_len) {
            dw.iter_mut().zip(&part[..wl]).for_each(|(d, p)| *d += p);
            db.iter_mut().zip(&part[wl..]).for_each(|(d, p)| *d += p);
        }
        Ok(())
    }

    fn maxpool2d_forward(
        &self,
        g: &Pool2dGeom,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        argmax: ViewMut<'_, Self, u32>,
    ) -> Result<()> {
        checks::maxpool2d_forward(g, x.len, y.len, argmax.len)?;
        let (x, y, argmax) = (s(x), sm(y), sm(argmax));
        let (ohw, hw) = (g.out_h() * g.out_w(), g.h * g.w);
        let plane_geom = Pool2dGeom { n: 1, c: 1, ..*g };
        self.pool.install(|| {
            y.par_chunks_mut(ohw).zip(argmax.par_chunks_mut(ohw)).enumerate().for_each(|(p, (yp, ap))| {
                if (g.k, g.stride, g.pad) == (2, 2, 0) {
                    maxpool_2x2(&plane_geom, &x[p * hw..(p + 1) * hw], yp, ap, (p * hw) as u32);
                } else {
                    reference::maxpool2d_forward(&plane_geom, &x[p * hw..(p + 1) * hw], yp, ap);
                    ap.iter_mut().filter(|a| **a != NO_ARGMAX).for_each(|a| *a += (p * hw) as u32);
                }
            })
        });
        Ok(())
    }

    fn maxpool2d_backward(
        &self,
        g: &Pool2dGeom,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::maxpool2d_backward(g, dy.len, argmax.len, dx.len)?;
        let (dy, argmax, dx) = (s(dy), s(argmax), sm(dx));
        let (ohw, hw) = (g.out_h() * g.out_w(), g.h * g.w);
        if (g.k, g.stride, g.pad) == (2, 2, 0) {
            // Windows do not overlap: every input gets its window's gradient or 0,
            // written once (no zero fill, no scatter).
            self.pool.install(|| {
                dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
                    maxpool_2x2_backward(g, &dy[p * ohw..(p + 1) * ohw], &argmax[p * ohw..(p + 1) * ohw], dxp, (p * hw) as u32)
                })
            });
            return Ok(());
        }
        self.pool.install(|| {
            dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
                dxp.fill(0.0);
                let base = p * hw;
                for (&d, &a) in dy[p * ohw..(p + 1) * ohw].iter().zip(&argmax[p * ohw..(p + 1) * ohw]) {
                    // An index outside this plane cannot come from maxpool2d_forward; skip it.
                    if let Some(v) = (a as usize).checked_sub(base).and_then(|i| dxp.get_mut(i)) {
                        *v += d;
                    }
                }
            })
        });
        Ok(())
    }

    fn avgpool2d_forward(&self, g: &Pool2dGeom, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::avgpool2d("avgpool2d_forward", g, x.len, y.len)?;
        let (x, y) = (s(x), sm(y));
        let (ohw, hw) = (g.out_h() * g.out_w(), g.h * g.w);
        let plane = Pool2dGeom { n: 1, c: 1, ..*g };
        self.pool.install(|| {
            y.par_chunks_mut(ohw.max(1)).enumerate().for_each(|(p, yp)| reference::avgpool2d_forward(&plane, &x[p * hw..(p + 1) * hw], yp))
        });
        Ok(())
    }

    fn avgpool2d_backward(&self, g: &Pool2dGeom, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::avgpool2d("avgpool2d_backward", g, dx.len, dy.len)?;
        let (dy, dx) = (s(dy), sm(dx));
        let (ohw, hw) = (g.out_h() * g.out_w(), g.h * g.w);
        let plane = Pool2dGeom { n: 1, c: 1, ..*g };
        self.pool.install(|| {
            dx.par_chunks_mut(hw.max(1))
                .enumerate()
                .for_each(|(p, dxp)| reference::avgpool2d_backward(&plane, &dy[p * ohw..(p + 1) * ohw], dxp))
        });
        Ok(())
    }

    fn batchnorm_forward(
        &self,
        g: &BatchNormGeom,
        training: bool,
        x: View<'_, Self, f32>,
        params: View<'_, Self, f32>,
        running: ViewMut<'_, Self, f32>,
        saved: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::batchnorm_forward(g, training, x.len, params.len, running.len, saved.len, y.len)?;
        if g.n == 0 {
            return Ok(());
        }
        let (x, params, running, saved, y) = (s(x), s(params), sm(running), sm(saved), sm(y));
        // Batch moments of the channels in parallel, the per-channel bookkeeping in
        // order (both by the reference code), then the (n, c) planes in parallel.
        let moments: Vec<(f64, f64)> = if training {
            self.pool.install(|| (0..g.c).into_par_iter().map(|c| reference::batchnorm_moments(g, x, c)).collect())
        } else {
            Vec::new()
        };
        let stats: Vec<(f32, f32)> =
            (0..g.c).map(|c| reference::batchnorm_channel_stats(g, c, moments.get(c).copied(), running, saved)).collect();
        self.pool.install(|| {
            y.par_chunks_mut(g.hw).zip(x.par_chunks(g.hw)).enumerate().for_each(|(p, (yp, xp))| {
                let c = p % g.c;
                let (mean, invstd) = stats[c];
                let (gamma, beta) = (params[c], params[g.c + c]);
                for (y, &x) in yp.iter_mut().zip(xp) {
                    let z = gamma * ((x - mean) * invstd) + beta;
                    *y = match g.act {
                        Activation::None => z,
                        Activation::Relu => z.max(0.0),
                        Activation::Gelu => gelu(z),
                    };
                }
            })
        });
        Ok(())
    }

    fn batchnorm_backward(
        &self,
        g: &BatchNormGeom,
        x: View<'_, Self, f32>,
        y: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        params: View<'_, Self, f32>,
        saved: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dparams: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::batchnorm_backward(g, x.len, y.len, dy.len, params.len, saved.len, dx.as_ref().map(|d| d.len), dparams.len)?;
        let (x, y, dy, params, saved, dparams) = (s(x), s(y), s(dy), s(params), s(saved), sm(dparams));
        // dz = dy act'(z); GELU recomputes z = gamma xhat + beta (channel c = (i / hw) % C).
        let dyr = |i: usize| match g.act {
            Activation::None => dy[i],
            Activation::Relu => {
                if y[i] <= 0.0 {
                    0.0
                } else {
                    dy[i]
                }
            }
            Activation::Gelu => {
                let c = (i / g.hw) % g.c;
                dy[i] * gelu_grad(params[c] * ((x[i] - saved[c]) * saved[g.c + c]) + params[g.c + c])
            }
        };
        // Per channel: (dgamma, dbeta) summed in f64 over the channel's planes.
        let sums: Vec<(f64, f64)> = self.pool.install(|| {
            (0..g.c)
                .into_par_iter()
                .map(|c| {
                    let (mean, invstd) = (saved[c], saved[g.c + c]);
                    let (mut dgamma, mut dbeta) = (0.0f64, 0.0f64);
                    for n in 0..g.n {
                        let base = (n * g.c + c) * g.hw;
                        for (j, &xv) in x[base..base + g.hw].iter().enumerate() {
                            let d = dyr(base + j);
                            dbeta += d as f64;
                            dgamma += d as f64 * ((xv - mean) * invstd) as f64;
                        }
                    }
                    (dgamma, dbeta)
                })
                .collect()
        });
        for (c, &(dgamma, dbeta)) in sums.iter().enumerate() {
            dparams[c] = dgamma as f32;
            dparams[g.c + c] = dbeta as f32;
        }
        if let Some(dx) = dx {
            let m = g.per_channel() as f64;
            self.pool.install(|| {
                sm(dx).par_chunks_mut(g.hw).enumerate().for_each(|(p, dxp)| {
                    let c = p % g.c;
                    let (mean, invstd, gamma) = (saved[c], saved[g.c + c], params[c]);
                    let (mb, mg) = ((sums[c].1 / m) as f32, (sums[c].0 / m) as f32);
                    for (j, dx) in dxp.iter_mut().enumerate() {
                        let i = p * g.hw + j;
                        let xhat = (x[i] - mean) * invstd;
                        *dx = gamma * invstd * (dyr(i) - mb - xhat * mg);
                    }
                })
            });
        }
        Ok(())
    }

    fn dropout_forward(
        &self,
        spec: &DropoutSpec,
        rng: View<'_, Self, u32>,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        mask: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::dropout_forward(spec, rng.len, x.len, y.len, mask.len)?;
        let (rng, x, y, mask) = (s(rng), s(x), sm(y), sm(mask));
        const CHUNK: usize = 1 << 14;
        self.pool.install(|| {
            y.par_chunks_mut(CHUNK)
                .zip(mask.par_chunks_mut(CHUNK))
                .zip(x.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(i, ((y, m), x))| reference::dropout_forward_from(spec, rng, i * CHUNK, x, y, m))
        });
        Ok(())
    }

    fn dropout_backward(&self, mask: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::dropout_backward(mask.len, dy.len, dx.len)?;
        reference::dropout_backward(s(mask), s(dy), sm(dx));
        Ok(())
    }

    fn augment(&self, spec: &AugmentSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::augment(spec, rng.len, x.len, y.len)?;
        let keys = reference::augment_keys(spec, s(rng));
        let (x, y) = (s(x), sm(y));
        let len = spec.c * spec.h * spec.w;
        self.pool.install(|| {
            y.par_chunks_mut(len.max(1))
                .zip(x.par_chunks(len.max(1)))
                .enumerate()
                .for_each(|(i, (yi, xi))| reference::augment_sample(spec, keys, i, xi, yi))
        });
        Ok(())
    }

    fn crop_flip(&self, spec: &CropSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::crop_flip(spec, rng.len, x.len, y.len)?;
        let (seed, step) = (s(rng)[0], s(rng)[1]);
        let key = crate::random::stream_key(seed, step, spec.salt);
        let (x, y) = (s(x), sm(y));
        let len = (spec.c * spec.h * spec.w).max(1);
        self.pool.install(|| {
            y.par_chunks_mut(len)
                .zip(x.par_chunks(len))
                .enumerate()
                .for_each(|(i, (yi, xi))| reference::crop_flip_sample(spec, key, step, i, xi, yi))
        });
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        n: usize,
        classes: usize,
        smoothing: f32,
        logits: View<'_, Self, f32>,
        labels: View<'_, Self, u32>,
        grad_scale: f32,
        dlogits: Option<ViewMut<'_, Self, f32>>,
        stats: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::softmax_cross_entropy(n, classes, smoothing, logits.len, labels.len, dlogits.as_ref().map(|d| d.len), stats.len)?;
        reference::softmax_cross_entropy(n, classes, smoothing, s(logits), s(labels), grad_scale, dlogits.map(sm), sm(stats))
    }

    fn optimizer_step(
        &self,
        rule: &UpdateRule,
        hyper: View<'_, Self, f32>,
        params: ViewMut<'_, Self, f32>,
        grads: View<'_, Self, f32>,
        state: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::optimizer_step(rule, hyper.len, params.len, grads.len, state.len)?;
        reference::optimizer_step(rule, s(hyper), sm(params), s(grads), sm(state));
        Ok(())
    }

    fn gather_batch(
        &self,
        spec: &Gather,
        images: View<'_, Self, u8>,
        labels: View<'_, Self, u8>,
        indices: View<'_, Self, u32>,
        x: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, u32>,
    ) -> Result<()> {
        checks::gather_batch(spec, images.len, labels.len, indices.len, x.len, y.len)?;
        let (images, labels, indices, x, y) = (s(images), s(labels), s(indices), sm(x), sm(y));
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= labels.len()) {
            return Err(Error::shape("gather_batch", "index", format!("< {} (dataset size)", labels.len()), bad));
        }
        if spec.sample_len == 0 {
            // Images of no pixels: only the labels to gather (and chunks of x of length 0 cannot be split).
            return reference::gather_batch(spec, images, labels, indices, x, y);
        }
        // Groups of samples in parallel, each group by the reference code.
        let group = 16;
        let one = Gather { n: group, ..*spec };
        self.pool.install(|| {
            x.par_chunks_mut(group * spec.sample_len)
                .zip(y.par_chunks_mut(group))
                .zip(indices.par_chunks(group))
                .try_for_each(|((xg, yg), ig)| reference::gather_batch(&Gather { n: ig.len(), ..one }, images, labels, ig, xg, yg))
        })
    }

    // ---- dynamic loss scaling ----
    fn loss_scale_dlogits(&self, state: View<'_, Self, f32>, x: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_state("loss_scale_dlogits", state.len)?;
        reference::loss_scale_dlogits(s(state), sm(x));
        Ok(())
    }

    fn loss_scale_unscale(&self, state: ViewMut<'_, Self, f32>, grads: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_state("loss_scale_unscale", state.len)?;
        reference::loss_scale_unscale(sm(state), sm(grads));
        Ok(())
    }

    fn loss_scale_update(&self, spec: &ScaleUpdate, state: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_update(spec, state.len)?;
        reference::loss_scale_update(spec, sm(state));
        Ok(())
    }
}

/// GELU(x) = x Φ(x).
fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// GELU'(x) = Φ(x) + x φ(x), φ(x) = exp(-x²/2) / sqrt(2π).
fn gelu_grad(x: f32) -> f32 {
    normal_cdf(x) + x * 0.398_942_3 * (-0.5 * x * x).exp()
}

/// Φ(x) in f32 through Numerical Recipes' erfcc (Press et al., section 6.2;
/// fractional error below 1.2e-7): about 4x faster than the f64 reference's
/// libm erfc, and as accurate in f32 (the wgpu shader uses the same fit).
fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = 1.000_023_7
        + t * (0.374_091_96
            + t * (0.096_784_18
                + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77)))))));
    let tail = 0.5 * t * (-z * z - 1.265_512_2 + t * poly).exp();
    if x < 0.0 {
        tail
    } else {
        1.0 - tail
    }
}
