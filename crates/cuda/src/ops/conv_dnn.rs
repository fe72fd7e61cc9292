//! `conv2d_forward` / `conv2d_backward` through cuDNN at tf32 or bf16 (see
//! crate::cudnn for the design). Every call checks its arguments first in ops.rs.

use super::{i32c, BLOCK};
use crate::cudnn::Cudnn;
use crate::{device_err, ptr, ptr_mut, CudaBackend};
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

impl CudaBackend {
    /// Rounds `n` floats at `src` to 16 bits at `dst`.
    fn narrow(&self, src: u64, dst: u64, n: usize, p: Precision) -> Result<()> {
        launch!(self, narrow_f32, self.cfg(n), src, dst, i32c(n)?, 1.0f32, half(p))
    }

    /// Widens `n` 16-bit values at `src` (N, C, HW) to floats at `dst`, adding `bias` (0: none) per channel.
    fn widen(&self, src: u64, bias: u64, dst: u64, n: usize, (c, hw): (usize, usize), p: Precision) -> Result<()> {
        launch!(self, widen_f32, self.cfg(n), src, bias, dst, i32c(n)?, i32c(c.max(1))?, i32c(hw.max(1))?, 1.0f32, half(p))
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
        let (one, zero) = (1.0f32, 0.0f32);
        if p == Precision::Tf32 {
            // y = bias, then y += x * w on tensor cores.
            launch!(self, bias_channels, self.cfg(g.y_len()), ptr_mut(y), ptr(bias), i32c(g.y_len())?, i32c(g.c_out)?, i32c(ohw)?)?;
            let (_guard, s) = dnn.slots(self, &[plan.workspace])?;
            // SAFETY: descriptors match the checked buffer sizes; the workspace holds plan.workspace bytes.
            return unsafe {
                cudarc::cudnn::result::convolution_forward(
                    dnn.handle(),
                    (&one as *const f32).cast(),
                    plan.x,
                    vp(ptr(x)),
                    plan.w,
                    vp(ptr(w)),
                    plan.conv,
                    plan.fwd,
                    vm(s[0]),
                    plan.workspace,
                    (&one as *const f32).cast(),
                    plan.y,
                    vm(ptr_mut(y)),
                )
            }
            .map_err(|e| device_err(format!("cuDNN convolution forward {g:?}: {e:?}")));
        }
        let (_guard, s) = dnn.slots(self, &[2 * g.x_len(), 2 * g.w_len(), 2 * g.y_len(), plan.workspace])?;
        let (x16, w16, y16, ws) = (s[0], s[1], s[2], s[3]);
        self.narrow(ptr(x), x16, g.x_len(), p)?;
        self.narrow(ptr(w), w16, g.w_len(), p)?;
        // SAFETY: as above, on the 16-bit copies.
        unsafe {
            cudarc::cudnn::result::convolution_forward(
                dnn.handle(),
                (&one as *const f32).cast(),
                plan.x,
                vp(x16),
                plan.w,
                vp(w16),
                plan.conv,
                plan.fwd,
                vm(ws),
                plan.workspace,
                (&zero as *const f32).cast(),
                plan.y,
                vm(y16),
            )
        }
        .map_err(|e| device_err(format!("cuDNN convolution forward {g:?}: {e:?}")))?;
        self.widen(y16, ptr(bias), ptr_mut(y), g.y_len(), (g.c_out, ohw), p)
    }

    /// dparams = [dW (C_out, C_in, K, K) | db (C_out)], dx (N, C_in, H, W) when given.
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
        dparams: &ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        let plan = dnn.plan(g, p)?;
        let ohw = g.out_h() * g.out_w();
        let (one, zero) = (1.0f32, 0.0f32);
        let dw = ptr_mut(dparams);
        let db = dw + 4 * g.w_len() as u64;
        let cfg = LaunchConfig { grid_dim: (g.c_out as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, channel_sums, cfg, ptr(dy), db, i32c(g.n)?, i32c(g.c_out)?, i32c(ohw)?)?;
        let bytes =
            if p == Precision::Tf32 { [0; 5] } else { [2 * g.x_len(), 2 * g.w_len(), 2 * g.y_len(), 2 * g.x_len().max(g.w_len()), 0] };
        let (_guard, s) = dnn.slots(self, &[bytes[0], bytes[1], bytes[2], bytes[3], plan.workspace])?;
        let ws = s[4];
        // Operands as cuDNN reads them: the fp32 tensors (tf32) or 16-bit copies.
        let (xs, wsrc, dys, out) = if p == Precision::Tf32 {
            (ptr(x), ptr(w), ptr(dy), 0)
        } else {
            self.narrow(ptr(x), s[0], g.x_len(), p)?;
            self.narrow(ptr(w), s[1], g.w_len(), p)?;
            self.narrow(ptr(dy), s[2], g.y_len(), p)?;
            (s[0], s[1], s[2], s[3])
        };
        let err = |what: &str, e| device_err(format!("cuDNN convolution {what} {g:?}: {e:?}"));
        // SAFETY (both calls): descriptors match the checked buffer sizes; outputs do not alias inputs.
        unsafe {
            cudarc::cudnn::result::convolution_backward_filter(
                dnn.handle(),
                (&one as *const f32).cast(),
                plan.x,
                vp(xs),
                plan.y,
                vp(dys),
                plan.conv,
                plan.bwd_filter,
                vm(ws),
                plan.workspace,
                (&zero as *const f32).cast(),
                plan.w,
                vm(if out == 0 { dw } else { out }),
            )
        }
        .map_err(|e| err("backward filter", e))?;
        if out != 0 {
            self.widen(out, 0, dw, g.w_len(), (1, 1), p)?;
        }
        let Some(dx) = dx else { return Ok(()) };
        unsafe {
            cudarc::cudnn::result::convolution_backward_data(
                dnn.handle(),
                (&one as *const f32).cast(),
                plan.w,
                vp(wsrc),
                plan.y,
                vp(dys),
                plan.conv,
                plan.bwd_data,
                vm(ws),
                plan.workspace,
                (&zero as *const f32).cast(),
                plan.x,
                vm(if out == 0 { ptr_mut(dx) } else { out }),
            )
        }
        .map_err(|e| err("backward data", e))?;
        if out != 0 {
            self.widen(out, 0, ptr_mut(dx), g.x_len(), (1, 1), p)?;
        }
        Ok(())
    }
}
