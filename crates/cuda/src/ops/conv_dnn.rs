//! `conv2d_forward` / `conv2d_backward` through cuDNN at tf32, bf16 or fp16 (see
//! crate::cudnn for the design). Every call checks its arguments first in ops.rs.

use super::i32c;
use crate::cudnn::{Cudnn, Operands, Plan, WORKSPACE};
use crate::{device_err, ptr, ptr_mut, CudaBackend};
use cudarc::cudnn::result as dnn;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use rr_core::backend::{Conv2dGeom, Pool2dGeom};
use rr_core::{Precision, Result, View, ViewMut};
use std::ffi::c_void;

/// Whether a 16-bit format is fp16 (1) or bf16 (0), as the kernels take it.
pub(super) fn half(p: Precision) -> i32 {
    (p == Precision::Fp16) as i32
}

fn vp(p: u64) -> *const c_void {
    p as *const c_void
}

fn vm(p: u64) -> *mut c_void {
    p as *mut c_void
}

const ONE: f32 = 1.0;
pub(super) const ZERO: f32 = 0.0;

fn scalar(v: &f32) -> *const c_void {
    (v as *const f32).cast()
}

/// Launch shape of the tiled layout changes: 32x32 tiles of each (C, HW) matrix.
fn tiles(n: usize, c: usize, hw: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (hw.div_ceil(32) as u32, c.div_ceil(32) as u32, n as u32), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

/// Whether the 16-byte layout kernels apply: eight channels and four positions
/// per access, on 16-byte aligned tensors (ResNet's and the speed network's activations).
fn vectorized(c: usize, hw: usize, addrs: [u64; 2]) -> bool {
    c.is_multiple_of(8) && hw.is_multiple_of(4) && addrs.iter().all(|a| a.is_multiple_of(16))
}

/// Their grid: 64x64 tiles of (positions, channels) per sample, 256 threads each.
pub(super) fn tiles64(n: usize, c: usize, hw: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (hw.div_ceil(64) as u32, c.div_ceil(64) as u32, n as u32), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The output gradient a convolution's backward reads: fp32 NCHW (narrowed
/// first at 16 bits), or already 16-bit channels-last (from a fused pool).
#[derive(Clone, Copy)]
pub(super) enum Dy {
    Wide(u64),
    Narrow(u64),
}

/// Where a convolution's backward puts dx (N, C_in, H, W): its address,
/// whether it adds into what is there (the 16-bit paths only), and whether it
/// is narrow, (N, H, W, C_in) 16-bit as cuDNN writes it (never widened).
#[derive(Clone, Copy)]
pub(super) struct Dx {
    pub addr: u64,
    pub add: bool,
    pub narrow: bool,
}

impl Dx {
    pub fn write(dx: &ViewMut<'_, CudaBackend, f32>) -> Self {
        Dx::at(ptr_mut(dx))
    }
    pub fn at(addr: u64) -> Self {
        Dx { addr, add: false, narrow: false }
    }
}

impl Dy {
    fn addr(self) -> u64 {
        match self {
            Dy::Wide(a) | Dy::Narrow(a) => a,
        }
    }
}

/// The convolution cuDNN runs for `g` at precision `p`. At 16 bits, two shapes
/// where cuDNN picks slow generic kernels are rewritten: a strided 1x1
/// convolution without padding (a ResNet shortcut) reads only every stride-th
/// pixel, so it runs as the stride-1 1x1 convolution of that subsample; and a
/// channel count that is not a multiple of 8 (the RGB stem) gets zero channels
/// up to the next multiple, the alignment tensor cores need. The narrow and
/// widen passes below make and undo the rewrite.
pub(super) fn cudnn_geom(g: &Conv2dGeom, p: Precision) -> Conv2dGeom {
    let mut e = *g;
    if matches!(p, Precision::Bf16 | Precision::Fp16) {
        if g.k == 1 && g.pad == 0 && g.stride > 1 {
            (e.h, e.w, e.stride) = (g.out_h(), g.out_w(), 1);
        }
        e.c_in = g.c_in.next_multiple_of(8);
    }
    e
}

/// Whether a narrow x, (N, H, W, C_in) 16-bit, is what cuDNN reads at 16 bits
/// (see [`cudnn_geom`]), or its strided subsample: no channels to pad.
pub(super) fn reads_narrow(g: &Conv2dGeom, p: Precision) -> bool {
    cudnn_geom(g, p).c_in == g.c_in
}

/// A strided 1x1 convolution's narrow (N, H, W, C) input and its subsample (N, OH, OW, C), as the kernels take them.
fn sample_geom(g: &Conv2dGeom) -> Result<[i32; 7]> {
    Ok([i32c(g.n)?, i32c(g.c_in)?, i32c(g.h)?, i32c(g.w)?, i32c(g.stride)?, i32c(g.out_h())?, i32c(g.out_w())?])
}

impl CudaBackend {
    /// `subsample_nhwc16`: a narrow x at `x` -> the pixels a strided 1x1 conv reads, (N, OH, OW, C_in) at `dst`.
    fn subsample(&self, g: &Conv2dGeom, x: u64, dst: u64) -> Result<u64> {
        let [n, c, h, w, s, oh, ow] = sample_geom(g)?;
        let cfg = self.cfg(g.n * g.out_h() * g.out_w() * g.c_in / 8);
        launch!(self, subsample_nhwc16, cfg, x, dst, n, c, h, w, s, oh, ow).map(|_| dst)
    }

    /// `unsample_nhwc16`: the subsample's gradient at `src` -> the narrow dx, zeros where it skipped
    /// (with `dst.add`: added into `dst`, left alone where it skipped).
    fn unsample(&self, g: &Conv2dGeom, src: u64, dst: Dx, p: Precision) -> Result<()> {
        let [n, c, h, w, s, oh, ow] = sample_geom(g)?;
        let cfg = self.cfg(g.x_len() / 8);
        launch!(self, unsample_nhwc16, cfg, src, dst.addr, n, c, h, w, s, oh, ow, dst.add as i32, half(p))
    }

    /// A convolution's input as cuDNN reads it at 16 bits (see [`cudnn_geom`]):
    /// x: (N, C_in, H, W) fp32 at `src` -> (N, H'W', C_in') 16-bit at `dst`.
    fn narrow_input(&self, g: &Conv2dGeom, src: u64, dst: u64, p: Precision) -> Result<()> {
        let e = cudnn_geom(g, p);
        if e == *g {
            return self.narrow_nhwc(src, dst, (g.n, g.c_in, g.h * g.w), p);
        }
        let s = if e.stride != g.stride { g.stride } else { 1 };
        self.narrow_strided(src, dst, (g.n, g.c_in, e.c_in), (g.h, g.w), s, (e.h, e.w), p)
    }

    /// The input gradient cuDNN computed for [`cudnn_geom`] (16-bit channels-last at
    /// `src`) -> dx: (N, C_in, H, W) fp32 at `dst` (zeros where a subsample skipped).
    /// With `dst.add`, added into what is there (nothing where a subsample skipped).
    fn widen_input_grad(&self, g: &Conv2dGeom, src: u64, dst: Dx, p: Precision) -> Result<()> {
        let e = cudnn_geom(g, p);
        if e == *g {
            return self.widen_nchw(src, 0, dst, (g.n, g.c_in, g.h * g.w), p);
        }
        let s = if e.stride != g.stride { g.stride } else { 1 };
        self.widen_strided(src, dst, (g.n, g.c_in, e.c_in), (g.h, g.w), s, (e.h, e.w), p)
    }

    /// w: (C_out, C_in, K, K) fp32 -> (C_out, K, K, C_in') 16-bit (zero channels as [`cudnn_geom`] pads).
    fn narrow_weight(&self, g: &Conv2dGeom, src: u64, dst: u64, p: Precision) -> Result<()> {
        match cudnn_geom(g, p).c_in {
            cp if cp == g.c_in => self.narrow_nhwc(src, dst, (g.c_out, g.c_in, g.k * g.k), p),
            cp => self.narrow_strided(src, dst, (g.c_out, g.c_in, cp), (g.k, g.k), 1, (g.k, g.k), p),
        }
    }

    /// dW as cuDNN computed it, (C_out, K, K, C_in') 16-bit -> (C_out, C_in, K, K) fp32.
    fn widen_weight_grad(&self, g: &Conv2dGeom, src: u64, dst: u64, p: Precision) -> Result<()> {
        match cudnn_geom(g, p).c_in {
            cp if cp == g.c_in => self.widen_nchw(src, 0, Dx::at(dst), (g.c_out, g.c_in, g.k * g.k), p),
            cp => self.widen_strided(src, Dx::at(dst), (g.c_out, g.c_in, cp), (g.k, g.k), 1, (g.k, g.k), p),
        }
    }

    /// `narrow_to_nhwc_strided`: (N, C, H, W) -> (N, OH*OW, CP), every s-th pixel, CP - C zero channels.
    #[allow(clippy::too_many_arguments)]
    fn narrow_strided(
        &self,
        src: u64,
        dst: u64,
        (n, c, cp): (usize, usize, usize),
        (h, w): (usize, usize),
        s: usize,
        (oh, ow): (usize, usize),
        p: Precision,
    ) -> Result<()> {
        let a = (i32c(c)?, i32c(cp)?, i32c(h)?, i32c(w)?, i32c(s)?, i32c(oh)?, i32c(ow)?);
        launch!(self, narrow_to_nhwc_strided, tiles(n, cp, oh * ow), src, dst, a.0, a.1, a.2, a.3, a.4, a.5, a.6, half(p))
    }

    /// `widen_to_nchw_strided`: the inverse of [`Self::narrow_strided`], zeros where it skipped
    /// (with `dst.add`: added into `dst`, left alone where it skipped).
    #[allow(clippy::too_many_arguments)]
    fn widen_strided(
        &self,
        src: u64,
        dst: Dx,
        (n, c, cp): (usize, usize, usize),
        (h, w): (usize, usize),
        s: usize,
        (oh, ow): (usize, usize),
        p: Precision,
    ) -> Result<()> {
        let a = (i32c(c)?, i32c(cp)?, i32c(h)?, i32c(w)?, i32c(s)?, i32c(oh)?, i32c(ow)?);
        let add = dst.add as i32;
        launch!(self, widen_to_nchw_strided, tiles(n, c, h * w), src, dst.addr, a.0, a.1, a.2, a.3, a.4, a.5, a.6, half(p), add)
    }

    /// (N, C, HW) fp32 at `src` -> (N, HW, C) 16-bit at `dst`.
    fn narrow_nhwc(&self, src: u64, dst: u64, (n, c, hw): (usize, usize, usize), p: Precision) -> Result<()> {
        if vectorized(c, hw, [src, dst]) {
            return launch!(self, narrow_to_nhwc_x8, tiles64(n, c, hw), src, dst, i32c(c)?, i32c(hw)?, half(p));
        }
        launch!(self, narrow_to_nhwc, tiles(n, c, hw), src, dst, i32c(c)?, i32c(hw)?, half(p))
    }

    /// (N, HW, C) 16-bit at `src` -> (N, C, HW) fp32 at `dst`, plus `bias` (0: none) per channel
    /// (with `dst.add`: added into `dst`).
    fn widen_nchw(&self, src: u64, bias: u64, dst: Dx, (n, c, hw): (usize, usize, usize), p: Precision) -> Result<()> {
        let (add, dst) = (dst.add as i32, dst.addr);
        if vectorized(c, hw, [src, dst]) {
            return launch!(self, widen_from_nhwc_x8, tiles64(n, c, hw), src, bias, dst, i32c(c)?, i32c(hw)?, half(p), add);
        }
        launch!(self, widen_from_nhwc, tiles(n, c, hw), src, bias, dst, i32c(c)?, i32c(hw)?, half(p), add)
    }

    pub(super) fn capturing(&self) -> bool {
        use cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        self.stream.capture_status() != Ok(CU_STREAM_CAPTURE_STATUS_NONE)
    }

    // x: (N, C_in, H, W), w: (C_out, C_in, K, K), bias: (C_out) -> y: (N, C_out, OH, OW)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_forward_dnn(
        &self,
        dnn: &Cudnn,
        p: Precision,
        g: &Conv2dGeom,
        x: &View<'_, Self, f32>,
        w: &View<'_, Self, f32>,
        bias: &View<'_, Self, f32>,
        y: &ViewMut<'_, Self, f32>,
        keep: Option<u64>,
    ) -> Result<()> {
        let plan = dnn.plan(&cudnn_geom(g, p), p)?;
        let ohw = g.out_h() * g.out_w();
        let sixteen = plan.channels_last;
        // At 16 bits x is narrowed into `keep` when given (for the backward), else into a slot.
        let x_bytes = if keep.is_some() { 0 } else { 2 * cudnn_geom(g, p).x_len() };
        let bytes = if sixteen { [x_bytes, 2 * cudnn_geom(g, p).w_len(), 2 * g.y_len()] } else { [0; 3] };
        let (_guard, s) = dnn.slots(self, &[WORKSPACE, bytes[0], bytes[1], bytes[2]])?;
        let o = if sixteen {
            let xs = keep.unwrap_or(s[1]);
            self.narrow_input(g, ptr(x), xs, p)?;
            self.narrow_weight(g, ptr(w), s[2], p)?;
            Operands { x: xs, w: s[2], y: s[3], workspace: s[0] }
        } else {
            Operands { x: ptr(x), w: ptr(w), y: ptr_mut(y), workspace: s[0] }
        };
        // The first call's algorithm search runs trial convolutions into y, so it comes before the bias fill.
        // SAFETY: descriptors match the checked buffer sizes; the workspace holds WORKSPACE bytes.
        unsafe { plan.forward_algo(dnn.handle(), &o, self.capturing())? };
        // fp32 output: y = bias, then y += x * w. 16-bit: y16 = x * w, widened with the bias below.
        let beta = if sixteen {
            &ZERO
        } else {
            launch!(self, bias_channels, self.cfg(g.y_len()), ptr_mut(y), ptr(bias), i32c(g.y_len())?, i32c(g.c_out)?, i32c(ohw)?)?;
            &ONE
        };
        self.dnn_forward(dnn, &plan, g, &o, beta)?;
        if sixteen {
            self.widen_nchw(o.y, ptr(bias), Dx::write(y), (g.n, g.c_out, ohw), p)?;
        }
        Ok(())
    }

    /// cuDNN's forward on `o`: y = x * w + beta y (in the plan's layout and precision).
    fn dnn_forward(&self, dnn: &Cudnn, plan: &Plan, g: &Conv2dGeom, o: &Operands, beta: &f32) -> Result<()> {
        // SAFETY: descriptors match the checked buffer sizes; the workspace holds WORKSPACE bytes.
        let algo = unsafe { plan.forward_algo(dnn.handle(), o, self.capturing())? };
        // SAFETY: as above; y does not alias x or w.
        unsafe {
            dnn::convolution_forward(
                dnn.handle(),
                scalar(&ONE),
                plan.x,
                vp(o.x),
                plan.w,
                vp(o.w),
                plan.conv,
                algo,
                vm(o.workspace),
                WORKSPACE,
                scalar(beta),
                plan.y,
                vm(o.y),
            )
        }
        .map_err(|e| device_err(format!("cuDNN convolution forward {g:?}: {e:?}")))
    }

    /// A conv on tensor cores in 16 bits into `out`, 16-bit channels-last, x narrowed
    /// into `keep` when given, or already narrow (`x_narrow`, as cuDNN reads it).
    // x: (N, C_in, H, W) fp32 or (N, H, W, C_in) 16-bit, w: (C_out, C_in, K, K) fp32 -> out: (N, OH, OW, C_out) 16-bit
    pub(super) fn conv_forward16(
        &self,
        (dnn, p): (&Cudnn, Precision),
        g: &Conv2dGeom,
        (x, x_narrow, w): (u64, bool, u64),
        keep: Option<u64>,
        out: u64,
    ) -> Result<()> {
        let plan = dnn.plan(&cudnn_geom(g, p), p)?;
        if !plan.channels_last || (x_narrow && !reads_narrow(g, p)) {
            return Err(device_err(format!("conv {g:?}: the fused paths need 16-bit operands as cuDNN reads them, not {p}")));
        }
        let e = cudnn_geom(g, p);
        let x_bytes = if keep.is_some() || (x_narrow && e == *g) { 0 } else { 2 * e.x_len() };
        let (_guard, s) = dnn.slots(self, &[WORKSPACE, x_bytes, 2 * e.w_len()])?;
        let xs = match (x_narrow, e == *g) {
            (true, true) => x,
            (true, false) => self.subsample(g, x, keep.unwrap_or(s[1]))?,
            (false, _) => {
                let xs = keep.unwrap_or(s[1]);
                self.narrow_input(g, x, xs, p)?;
                xs
            }
        };
        self.narrow_weight(g, w, s[2], p)?;
        self.dnn_forward(dnn, &plan, g, &Operands { x: xs, w: s[2], y: out, workspace: s[0] }, &ZERO)
    }

    /// A conv on tensor cores in 16 bits and the max pool over its output
    /// (non-overlapping windows, see `Backend::conv2d_maxpool_forward`): the
    /// conv writes 16-bit channels-last into `stash`, the pool reads it there.
    // x: (N, C_in, H, W), w: (C_out, C_in, K, K) -> stash: (N, OH, OW, C_out) 16-bit -> y, argmax: (N, C_out, OH/k, OW/k)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_maxpool_forward_dnn(
        &self,
        (dnn, p): (&Cudnn, Precision),
        (g, pool): (&Conv2dGeom, &Pool2dGeom),
        x: &View<'_, Self, f32>,
        w: &View<'_, Self, f32>,
        bias: &View<'_, Self, f32>,
        (y, argmax): (&ViewMut<'_, Self, f32>, &ViewMut<'_, Self, u32>),
        stash: &ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.conv_forward16((dnn, p), g, (ptr(x), false, ptr(w)), None, ptr_mut(stash))?;
        let (oh, ow) = (pool.out_h(), pool.out_w());
        launch!(
            self,
            maxpool_from_nhwc16,
            tiles(g.n, g.c_out, oh * ow),
            ptr_mut(stash),
            ptr(bias),
            ptr_mut(y),
            ptr_mut(argmax),
            i32c(g.c_out)?,
            i32c(g.out_h())?,
            i32c(g.out_w())?,
            i32c(pool.k)?,
            i32c(oh)?,
            i32c(ow)?,
            pool.relu as i32,
            half(p)
        )
    }

    /// The gradients of [`Self::conv2d_maxpool_forward_dnn`]: the pool's gradient
    /// goes straight into `stash` as the conv's 16-bit channels-last dy.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_maxpool_backward_dnn(
        &self,
        (dnn, p): (&Cudnn, Precision),
        (g, pool): (&Conv2dGeom, &Pool2dGeom),
        x: &View<'_, Self, f32>,
        w: &View<'_, Self, f32>,
        (dy, argmax): (&View<'_, Self, f32>, &View<'_, Self, u32>),
        stash: &ViewMut<'_, Self, f32>,
        dx: Option<&ViewMut<'_, Self, f32>>,
        dweight: u64,
    ) -> Result<()> {
        let (oh, ow) = (g.out_h(), g.out_w());
        launch!(
            self,
            maxpool_backward_to_nhwc16,
            tiles(g.n, g.c_out, oh * ow),
            ptr(dy),
            ptr(argmax),
            ptr_mut(stash),
            i32c(g.c_out)?,
            i32c(oh)?,
            i32c(ow)?,
            i32c(pool.k)?,
            i32c(pool.out_h())?,
            i32c(pool.out_w())?,
            half(p)
        )?;
        self.conv2d_backward_dnn(dnn, p, g, (x, None), w, Dy::Narrow(ptr_mut(stash)), dx.map(Dx::write), (dweight, None))
    }

    /// dW (C_out, C_in, K, K) at `dw`, db (C_out) at `db` when the conv has a
    /// bias, dx (N, C_in, H, W) when given.
    // x: (N, C_in, H, W), w: (C_out, C_in, K, K), dy: (N, C_out, OH, OW)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_backward_dnn(
        &self,
        dnn: &Cudnn,
        p: Precision,
        g: &Conv2dGeom,
        (x, kept): (&View<'_, Self, f32>, Option<u64>),
        w: &View<'_, Self, f32>,
        dy: Dy,
        dx: Option<Dx>,
        (dw, db): (u64, Option<u64>),
    ) -> Result<()> {
        let plan = dnn.plan(&cudnn_geom(g, p), p)?;
        let ohw = g.out_h() * g.out_w();
        let sixteen = plan.channels_last;
        if dx.is_some_and(|dx| (dx.add || dx.narrow) && !sixteen) {
            return Err(device_err(format!("conv2d_backward {g:?}: dx is added into or narrow only on 16-bit operands, not {p}")));
        }
        if dx.is_some_and(|dx| dx.narrow && !reads_narrow(g, p)) {
            return Err(device_err(format!("conv2d_backward {g:?}: a narrow dx needs C_in % 8 == 0 at 16 bits")));
        }
        if let (Some(db), Dy::Wide(dy)) = (db, dy) {
            self.channel_sums(dy, db, (g.n, g.c_out, ohw))?;
        } else if db.is_some() || (!sixteen && matches!(dy, Dy::Narrow(_))) {
            return Err(device_err(format!("conv2d_backward {g:?}: a 16-bit dy takes 16-bit operands and no bias")));
        }
        let dy_bytes = if matches!(dy, Dy::Wide(_)) { 2 * g.y_len() } else { 0 };
        let e = cudnn_geom(g, p);
        let x_bytes = if kept.is_some() { 0 } else { 2 * e.x_len() };
        let bytes = if sixteen { [x_bytes, 2 * e.w_len(), dy_bytes, 2 * e.x_len().max(e.w_len())] } else { [0; 4] };
        let (_guard, s) = dnn.slots(self, &[WORKSPACE, bytes[0], bytes[1], bytes[2], bytes[3]])?;
        // Operands as cuDNN reads them: the fp32 tensors (tf32), or channels-last 16-bit copies
        // with one buffer (s[4]) receiving dW, then dx, each widened back before the next.
        let (xs, ws, dys) = if sixteen {
            // x as the forward narrowed it (`kept`), or narrowed again.
            let xs = match kept {
                Some(kept) => kept,
                None => self.narrow_input(g, ptr(x), s[1], p).map(|_| s[1])?,
            };
            self.narrow_weight(g, ptr(w), s[2], p)?;
            let dys = match dy {
                Dy::Wide(dy) => self.narrow_nhwc(dy, s[3], (g.n, g.c_out, ohw), p).map(|_| s[3])?,
                Dy::Narrow(dy) => dy,
            };
            (xs, s[2], dys)
        } else {
            (ptr(x), ptr(w), dy.addr())
        };
        let err = |what: &str, e| device_err(format!("cuDNN convolution {what} {g:?}: {e:?}"));
        let o = Operands { x: xs, w: if sixteen { s[4] } else { dw }, y: dys, workspace: s[0] };
        // SAFETY (every call below): descriptors match the checked buffer sizes; outputs do not alias inputs.
        unsafe {
            let algo = plan.backward_filter_algo(dnn.handle(), &o, self.capturing())?;
            dnn::convolution_backward_filter(
                dnn.handle(),
                scalar(&ONE),
                plan.x,
                vp(o.x),
                plan.y,
                vp(o.y),
                plan.conv,
                algo,
                vm(o.workspace),
                WORKSPACE,
                scalar(&ZERO),
                plan.w,
                vm(o.w),
            )
        }
        .map_err(|e| err("backward filter", e))?;
        if sixteen {
            self.widen_weight_grad(g, s[4], dw, p)?;
        }
        let Some(dx) = dx else { return Ok(()) };
        // cuDNN writes a narrow dx itself, adding in (beta 1) where asked; other dx through s[4].
        let direct = dx.narrow && e == *g;
        let o = Operands { x: if sixteen && !direct { s[4] } else { dx.addr }, w: ws, y: dys, workspace: s[0] };
        let add_in = direct && dx.add;
        unsafe {
            // The first call's algorithm search writes trial results into its output: not into a sum.
            let trial = Operands { x: if add_in { s[4] } else { o.x }, ..o };
            let algo = plan.backward_data_algo(dnn.handle(), &trial, self.capturing())?;
            dnn::convolution_backward_data(
                dnn.handle(),
                scalar(&ONE),
                plan.w,
                vp(o.w),
                plan.y,
                vp(o.y),
                plan.conv,
                algo,
                vm(o.workspace),
                WORKSPACE,
                scalar(if add_in { &ONE } else { &ZERO }),
                plan.x,
                vm(o.x),
            )
        }
        .map_err(|e| err("backward data", e))?;
        match (sixteen, direct, dx.narrow) {
            (true, false, false) => self.widen_input_grad(g, s[4], dx, p),
            (true, false, true) => self.unsample(g, s[4], dx, p),
            _ => Ok(()),
        }
    }
}
