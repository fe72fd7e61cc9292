//! `conv2d_forward` / `conv2d_backward` through cuDNN at tf32, bf16 or fp16 (see
//! crate::cudnn for the design). Every call checks its arguments first in ops.rs.

use super::i32c;
use crate::cudnn::{Cudnn, Operands, WORKSPACE};
use crate::{device_err, ptr, ptr_mut, CudaBackend};
use cudarc::cudnn::result as dnn;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use rr_core::backend::Conv2dGeom;
use rr_core::{Precision, Result, View, ViewMut};
use std::ffi::c_void;

/// Whether a 16-bit format is fp16 (1) or bf16 (0), as the kernels take it.
fn half(p: Precision) -> i32 {
    (p == Precision::Fp16) as i32
}

fn vp(p: u64) -> *const c_void {
    p as *const c_void
}

fn vm(p: u64) -> *mut c_void {
    p as *mut c_void
}

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn scalar(v: &f32) -> *const c_void {
    (v as *const f32).cast()
}

/// Launch shape of the tiled layout changes: 32x32 tiles of each (C, HW) matrix.
fn tiles(n: usize, c: usize, hw: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (hw.div_ceil(32) as u32, c.div_ceil(32) as u32, n as u32), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

impl CudaBackend {
    /// (N, C, HW) fp32 at `src` -> (N, HW, C) 16-bit at `dst`.
    fn narrow_nhwc(&self, src: u64, dst: u64, (n, c, hw): (usize, usize, usize), p: Precision) -> Result<()> {
        launch!(self, narrow_to_nhwc, tiles(n, c, hw), src, dst, i32c(c)?, i32c(hw)?, half(p))
    }

    /// (N, HW, C) 16-bit at `src` -> (N, C, HW) fp32 at `dst`, plus `bias` (0: none) per channel.
    fn widen_nchw(&self, src: u64, bias: u64, dst: u64, (n, c, hw): (usize, usize, usize), p: Precision) -> Result<()> {
        launch!(self, widen_from_nhwc, tiles(n, c, hw), src, bias, dst, i32c(c)?, i32c(hw)?, half(p))
    }

    fn capturing(&self) -> bool {
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
    ) -> Result<()> {
        let plan = dnn.plan(g, p)?;
        let ohw = g.out_h() * g.out_w();
        let sixteen = plan.channels_last;
        let bytes = if sixteen { [2 * g.x_len(), 2 * g.w_len(), 2 * g.y_len()] } else { [0; 3] };
        let (_guard, s) = dnn.slots(self, &[WORKSPACE, bytes[0], bytes[1], bytes[2]])?;
        let o = if sixteen {
            self.narrow_nhwc(ptr(x), s[1], (g.n, g.c_in, g.h * g.w), p)?;
            self.narrow_nhwc(ptr(w), s[2], (g.c_out, g.c_in, g.k * g.k), p)?;
            Operands { x: s[1], w: s[2], y: s[3], workspace: s[0] }
        } else {
            Operands { x: ptr(x), w: ptr(w), y: ptr_mut(y), workspace: s[0] }
        };
        // SAFETY: descriptors match the checked buffer sizes; the workspace holds WORKSPACE bytes.
        let algo = unsafe { plan.forward_algo(dnn.handle(), &o, self.capturing())? };
        // fp32 output: y = bias, then y += x * w. 16-bit: y16 = x * w, widened with the bias below.
        let beta = if sixteen {
            &ZERO
        } else {
            launch!(self, bias_channels, self.cfg(g.y_len()), ptr_mut(y), ptr(bias), i32c(g.y_len())?, i32c(g.c_out)?, i32c(ohw)?)?;
            &ONE
        };
        // SAFETY: as above.
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
        .map_err(|e| device_err(format!("cuDNN convolution forward {g:?}: {e:?}")))?;
        if sixteen {
            self.widen_nchw(o.y, ptr(bias), ptr_mut(y), (g.n, g.c_out, ohw), p)?;
        }
        Ok(())
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
        x: &View<'_, Self, f32>,
        w: &View<'_, Self, f32>,
        dy: &View<'_, Self, f32>,
        dx: Option<&ViewMut<'_, Self, f32>>,
        (dw, db): (u64, Option<u64>),
    ) -> Result<()> {
        let plan = dnn.plan(g, p)?;
        let ohw = g.out_h() * g.out_w();
        if let Some(db) = db {
            self.channel_sums(ptr(dy), db, (g.n, g.c_out, ohw))?;
        }
        let sixteen = plan.channels_last;
        let bytes = if sixteen { [2 * g.x_len(), 2 * g.w_len(), 2 * g.y_len(), 2 * g.x_len().max(g.w_len())] } else { [0; 4] };
        let (_guard, s) = dnn.slots(self, &[WORKSPACE, bytes[0], bytes[1], bytes[2], bytes[3]])?;
        // Operands as cuDNN reads them: the fp32 tensors (tf32), or channels-last 16-bit copies
        // with one buffer (s[4]) receiving dW, then dx, each widened back before the next.
        let (xs, ws, dys) = if sixteen {
            self.narrow_nhwc(ptr(x), s[1], (g.n, g.c_in, g.h * g.w), p)?;
            self.narrow_nhwc(ptr(w), s[2], (g.c_out, g.c_in, g.k * g.k), p)?;
            self.narrow_nhwc(ptr(dy), s[3], (g.n, g.c_out, ohw), p)?;
            (s[1], s[2], s[3])
        } else {
            (ptr(x), ptr(w), ptr(dy))
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
            self.widen_nchw(s[4], 0, dw, (g.c_out, g.c_in, g.k * g.k), p)?;
        }
        let Some(dx) = dx else { return Ok(()) };
        let o = Operands { x: if sixteen { s[4] } else { ptr_mut(dx) }, w: ws, y: dys, workspace: s[0] };
        unsafe {
            let algo = plan.backward_data_algo(dnn.handle(), &o, self.capturing())?;
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
                scalar(&ZERO),
                plan.x,
                vm(o.x),
            )
        }
        .map_err(|e| err("backward data", e))?;
        if sixteen {
            self.widen_nchw(s[4], 0, ptr_mut(dx), (g.n, g.c_in, g.h * g.w), p)?;
        }
        Ok(())
    }
}
