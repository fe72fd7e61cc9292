//! `conv2d_batchnorm_forward` / `_backward` at 16 bits: the conv writes its
//! output 16-bit channels-last into the stash, and the BatchNorm kernels of
//! norm16.cu read it there, so it is never widened to fp32; the backward writes
//! the conv's output gradient 16-bit channels-last, as cuDNN reads it. Narrow
//! edges (`NarrowEdges`) take x and dy, and give y and dx, in that layout too.

use super::conv_dnn::{half, tiles64, Dx, Dy};
use super::i32c;
use crate::cudnn::Cudnn;
use crate::{device_err, CudaBackend};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use rr_core::backend::{BatchNormGeom, Conv2dGeom, NarrowEdges};
use rr_core::{Precision, Result, View};

/// Threads of the per-channel kernels of norm16.cu.
const BLOCK16: u32 = 256;

/// One warp per channel, for the finishing sums.
fn warps(c: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((32 * c).div_ceil(BLOCK16 as usize) as u32, 1, 1), block_dim: (BLOCK16, 1, 1), shared_mem_bytes: 0 }
}

/// Whether the fp32 (N, C, HW) tensors at `addrs` may move four floats at a time, as the kernels take it.
fn vec4(hw: usize, addrs: &[u64]) -> i32 {
    super::vec4(hw, addrs) as i32
}

/// The pointers of the fused op's fp32 operands.
pub(super) struct BnOperands {
    pub bias: u64,
    pub params: u64,
    pub running: u64,
    pub saved: u64,
}

impl CudaBackend {
    /// cuDNN and the 16-bit precision when a conv + BatchNorm runs fused: a 16-bit
    /// conv on tensor cores whose output channels come in groups of eight, into a
    /// 16-byte aligned stash (else the two ops run one by one).
    pub(super) fn fuses_batchnorm(&self, g: &Conv2dGeom, stash: u64) -> Option<(&Cudnn, Precision)> {
        self.sixteen_bit(g).filter(|_| g.n > 0 && g.c_out.is_multiple_of(8) && stash.is_multiple_of(16))
    }

    /// The grid of `bn16_stat_partials` or `bn16_grad_partials`: (channel tiles,
    /// slices), `waves` blocks per SM, each slice at least one of `units` (rows
    /// or tiles); returns it with the partials' address, valid while the guard is held.
    fn bn16_grid(&self, c: usize, units: usize, waves: usize) -> Result<(std::sync::MutexGuard<'_, crate::Scratch>, u64, LaunchConfig)> {
        let channel_tiles = c.div_ceil(64);
        let slices = (waves * self.sms as usize).div_ceil(channel_tiles).clamp(1, units.max(1));
        // (C, S, 2) doubles, as floats.
        let (guard, _, partial) = self.scratch(0, 4 * c * slices)?;
        let cfg = LaunchConfig { grid_dim: (channel_tiles as u32, slices as u32, 1), block_dim: (BLOCK16, 1, 1), shared_mem_bytes: 0 };
        Ok((guard, partial, cfg))
    }

    /// Training statistics of the 16-bit conv output `x16` (+ `bias`) into
    /// `saved` [mean | invstd], moving `running` (as norm.cu's bn_stats_finish).
    fn bn16_stats(&self, p: Precision, g: &BatchNormGeom, (x16, bias): (u64, u64), (running, saved): (u64, u64)) -> Result<()> {
        let rows = g.n * g.hw;
        // Three blocks fit an SM (`__launch_bounds__`): one wave.
        let (_guard, partial, cfg) = self.bn16_grid(g.c, rows, 3)?;
        let c = i32c(g.c)?;
        launch!(self, bn16_stat_partials, cfg, x16, bias, partial, rows as i64, c, half(p))?;
        let (slices, m) = (cfg.grid_dim.1 as i32, i32c(g.per_channel())?);
        launch!(self, bn16_stats_finish, warps(g.c), partial, running, saved, c, slices, m, g.eps, g.momentum)
    }

    /// [dgamma | dbeta] into `dparams` from the 16-bit conv output `x16` (+ `bias`)
    /// and the gradient dy of the BatchNorm's output, fp32 or (`narrow`) 16-bit
    /// channels-last (as norm.cu's channel_partials mode 1).
    fn bn16_grads(
        &self,
        p: Precision,
        g: &BatchNormGeom,
        [x16, bias, dy, saved, params]: [u64; 5],
        narrow: bool,
        dparams: u64,
    ) -> Result<()> {
        if narrow {
            let rows = g.n * g.hw;
            let (_guard, partial, cfg) = self.bn16_grid(g.c, rows, 3)?;
            let (c, act) = (i32c(g.c)?, g.act.code() as i32);
            launch!(self, bn16_grad_partials_nhwc, cfg, x16, bias, dy, saved, params, partial, rows as i64, c, act, half(p))?;
            return launch!(self, bn16_grads_finish, warps(g.c), partial, dparams, c, cfg.grid_dim.1 as i32);
        }
        let tiles = g.n * g.hw.div_ceil(64);
        let (_guard, partial, cfg) = self.bn16_grid(g.c, tiles, 8)?;
        let (n, c, hw, act) = (i32c(g.n)?, i32c(g.c)?, i32c(g.hw)?, g.act.code() as i32);
        let vec = vec4(g.hw, &[dy]);
        launch!(self, bn16_grad_partials, cfg, x16, bias, dy, saved, params, partial, n, c, hw, act, half(p), vec)?;
        launch!(self, bn16_grads_finish, warps(g.c), partial, dparams, c, cfg.grid_dim.1 as i32)
    }

    // x: (N, C_in, H, W) -> stash: (N, OH, OW, C_out) 16-bit -> y: (N, C_out, OH, OW)
    // (x and y (N, H, W, C) 16-bit where `edges` says)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_batchnorm_forward_dnn(
        &self,
        (dnn, p): (&Cudnn, Precision),
        (g, bn, edges): (&Conv2dGeom, &BatchNormGeom, NarrowEdges),
        training: bool,
        (x, w): (&View<'_, Self, f32>, &View<'_, Self, f32>),
        keep: Option<u64>,
        o: &BnOperands,
        (stash, y): (u64, u64),
    ) -> Result<()> {
        self.conv_forward16((dnn, p), g, (crate::ptr(x), edges.x, crate::ptr(w)), keep, stash)?;
        let (c, hw) = (i32c(bn.c)?, i32c(bn.hw)?);
        let stats = if training {
            self.bn16_stats(p, bn, (stash, o.bias), (o.running, o.saved))?;
            o.saved
        } else {
            o.running
        };
        let (act, vec, narrow) = (bn.act.code() as i32, vec4(bn.hw, &[y]), edges.y as i32);
        let cfg = tiles64(bn.n, bn.c, bn.hw);
        launch!(self, bn16_apply, cfg, stash, o.bias, o.params, stats, y, c, hw, bn.eps, training as i32, act, half(p), vec, narrow)
    }

    /// The gradients of [`Self::conv2d_batchnorm_forward_dnn`]: [dgamma | dbeta]
    /// into `dparams`, the conv's 16-bit dy into `dstash`, then the conv's backward
    /// from it; dy is narrow where `dy_narrow` says (dx where it says so itself).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_batchnorm_backward_dnn(
        &self,
        (dnn, p): (&Cudnn, Precision),
        (g, bn, dy_narrow): (&Conv2dGeom, &BatchNormGeom, bool),
        (x, kept, w): (&View<'_, Self, f32>, Option<u64>, &View<'_, Self, f32>),
        [stash, dy]: [u64; 2],
        o: &BnOperands,
        dstash: u64,
        dx: Option<Dx>,
        (dweight, dparams): (u64, u64),
    ) -> Result<()> {
        let (n, c, hw, act) = (i32c(bn.n)?, i32c(bn.c)?, i32c(bn.hw)?, bn.act.code() as i32);
        // A fused ReLU's mask is recomputed from the stash (see bn16_z in norm16.cu): y is not read.
        self.bn16_grads(p, bn, [stash, o.bias, dy, o.saved, o.params], dy_narrow, dparams)?;
        let (cfg, vec, narrow) = (tiles64(bn.n, bn.c, bn.hw), vec4(bn.hw, &[dy]), dy_narrow as i32);
        launch!(self, bn16_backward_dx, cfg, stash, o.bias, dy, o.params, o.saved, dparams, dstash, n, c, hw, act, half(p), vec, narrow)?;
        self.conv2d_backward_dnn(dnn, p, g, (x, kept), w, Dy::Narrow(dstash), dx, (dweight, None))
    }
}
