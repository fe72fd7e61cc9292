//! `Backend` for `WgpuBackend`: argument checks, then one dispatch (or a few)
//! per op. Parameters are word offsets of the views into their (whole) bound
//! buffers, then sizes; f32 values go as bits.

use crate::{device_err, WgpuBackend, WgpuBuf};
use rr_core::backend::{
    checks, AugmentSpec, BatchNormGeom, Conv2dGeom, CropSpec, DropoutSpec, Gather, Gemm, Padding, Pool2dGeom, ScaleUpdate, UpdateRule,
    MAX_CHANNELS,
};
use rr_core::error::check_len;
use rr_core::{Backend, Elem, Error, Result, View, ViewMut};

/// A buffer bound to a dispatch.
type Bound<'a> = (&'a wgpu::Buffer, u64);

fn r<'a, T: Elem>(v: &View<'a, WgpuBackend, T>) -> Bound<'a> {
    (&v.buf.buf, v.buf.id)
}

fn w<'a, T: Elem>(v: &'a ViewMut<'_, WgpuBackend, T>) -> Bound<'a> {
    (&v.buf.buf, v.buf.id)
}

fn buf<T>(b: &WgpuBuf<T>) -> Bound<'_> {
    (&b.buf, b.id)
}

/// A size or offset as a shader word.
fn u(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape("wgpu", "size", "< 2^32", v))
}

fn f(v: f32) -> u32 {
    v.to_bits()
}

/// Workgroups for `n` invocations of a 256-wide 1-D kernel (2-D beyond 65535 groups; see `flat` in common.wgsl).
fn grid(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(256).max(1) as u32;
    let x = groups.min(65_535);
    (x, groups.div_ceil(x), 1)
}

/// `count` workgroups (one per output value), 2-D beyond 65535.
fn groups(count: usize) -> (u32, u32, u32) {
    let count = count.max(1) as u32;
    let x = count.min(65_535);
    (x, count.div_ceil(x), 1)
}

impl WgpuBackend {
    fn run(&self, kernel: &str, groups: (u32, u32, u32), params: &[u32], bound: &[Bound<'_>]) -> Result<()> {
        // A buffer written by a dispatch may not also be bound for reading (WebGPU's usage rules).
        let (reads, writes) = kernel_arity(kernel);
        for (i, a) in bound[reads..reads + writes].iter().enumerate() {
            if bound.iter().enumerate().any(|(j, b)| j != reads + i && b.1 == a.1) {
                return Err(device_err(format!("{kernel}: an output shares its buffer with another operand")));
            }
        }
        let buffers: Vec<&wgpu::Buffer> = bound.iter().map(|b| b.0).collect();
        let ids: Vec<u64> = bound.iter().map(|b| b.1).collect();
        self.dispatch(kernel, groups, params, &buffers, &ids)
    }

    fn conv_geometry(g: &Conv2dGeom) -> Result<[u32; 10]> {
        Ok([u(g.n)?, u(g.c_in)?, u(g.h)?, u(g.w)?, u(g.c_out)?, u(g.k)?, u(g.stride)?, u(g.pad)?, u(g.out_h())?, u(g.out_w())?])
    }

    fn pool_geometry(g: &Pool2dGeom) -> Result<[u32; 8]> {
        Ok([u(g.n * g.c)?, u(g.h)?, u(g.w)?, u(g.k)?, u(g.stride)?, u(g.pad)?, u(g.out_h())?, u(g.out_w())?])
    }
}

fn kernel_arity(kernel: &str) -> (usize, usize) {
    crate::KERNELS.iter().find(|k| k.0 == kernel).map(|k| (k.2 as usize, k.3 as usize)).expect("kernel in the table")
}

impl Backend for WgpuBackend {
    type Buf<T: Elem> = WgpuBuf<T>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc<T: Elem>(&self, len: usize) -> Result<WgpuBuf<T>> {
        // wgpu zero-initializes new buffers.
        self.create(len)
    }

    fn upload<T: Elem>(&self, host: &[T]) -> Result<WgpuBuf<T>> {
        let b = self.create::<T>(host.len())?;
        self.write_bytes(&b.buf, 0, bytemuck::cast_slice(host));
        Ok(b)
    }

    fn write<T: Elem>(&self, dst: ViewMut<'_, Self, T>, host: &[T]) -> Result<()> {
        check_len("write", "host data", dst.len, host.len())?;
        let size = std::mem::size_of::<T>();
        let (offset, bytes) = (dst.offset * size, std::mem::size_of_val(host));
        if offset % 4 != 0 || (bytes % 4 != 0 && dst.offset + dst.len != dst.buf.len) {
            return Err(device_err(format!("write of {} {} at element {}: not whole 4-byte words", host.len(), T::NAME, dst.offset)));
        }
        // After everything recorded so far (a queued write lands before the next submission).
        self.flush();
        self.write_bytes(&dst.buf.buf, offset as u64, bytemuck::cast_slice(host));
        Ok(())
    }

    fn download<T: Elem>(&self, src: View<'_, Self, T>) -> Result<Vec<T>> {
        if src.len == 0 {
            return Ok(Vec::new());
        }
        let size = std::mem::size_of::<T>();
        let start = src.offset * size;
        let aligned = start / 4 * 4;
        let end = (start + src.len * size).div_ceil(4) * 4;
        let bytes = self.read_bytes(&src.buf.buf, aligned as u64, (end - aligned) as u64)?;
        let skip = start - aligned;
        let mut out = vec![T::default(); src.len];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[skip..skip + src.len * size]);
        Ok(out)
    }

    fn synchronize(&self) -> Result<()> {
        self.flush();
        self.wait_idle()
    }

    fn fill(&self, dst: ViewMut<'_, Self, f32>, value: f32) -> Result<()> {
        let params = [u(dst.offset)?, u(dst.len)?, f(value)];
        self.run("fill", grid(dst.len), &params, &[w(&dst)])
    }

    fn copy<T: Elem>(&self, src: View<'_, Self, T>, dst: ViewMut<'_, Self, T>) -> Result<()> {
        check_len("copy", "destination", src.len, dst.len)?;
        if src.len == 0 {
            return Ok(());
        }
        let size = std::mem::size_of::<T>();
        let (from, to, bytes) = (src.offset * size, dst.offset * size, src.len * size);
        if from % 4 != 0 || to % 4 != 0 || bytes % 4 != 0 {
            return Err(device_err(format!("copy of {} {}: not whole 4-byte words", src.len, T::NAME)));
        }
        if src.buf.id == dst.buf.id {
            return Err(device_err("copy within one buffer is not supported"));
        }
        let params = [u(from / 4)?, u(to / 4)?, u(bytes / 4)?];
        self.run("copy_words", grid(bytes / 4), &params, &[r(&src), w(&dst)])
    }

    type Graph = ();
    type Mark = crate::WgpuMark;

    fn mark(&self) -> Result<crate::WgpuMark> {
        self.mark_now()
    }

    fn elapsed_ms(&self, start: &crate::WgpuMark, end: &crate::WgpuMark) -> Result<f64> {
        self.mark_elapsed_ms(start, end)
    }

    fn peak_memory(&self) -> Option<(&'static str, u64)> {
        Some(("peak GPU buffer memory allocated", self.peak.load(std::sync::atomic::Ordering::Relaxed)))
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
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let bias_bound = bias.as_ref().map_or(r(&a), r);
        let params = [
            u(a.offset)?,
            u(b.offset)?,
            u(c.offset)?,
            u(bias.map_or(0, |b| b.offset))?,
            u(g.m)?,
            u(g.n)?,
            u(g.k)?,
            g.trans_a as u32,
            g.trans_b as u32,
            f(g.alpha),
            f(g.beta),
            bias.is_some() as u32,
        ];
        let groups = (u(g.n.div_ceil(16))?, u(g.m.div_ceil(16))?, 1);
        self.run("gemm", groups, &params, &[r(&a), r(&b), bias_bound, w(&c)])
    }

    fn bias_grad(&self, rows: usize, cols: usize, dy: View<'_, Self, f32>, db: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::bias_grad(rows, cols, dy.len, db.len)?;
        let params = [u(dy.offset)?, u(db.offset)?, u(rows)?, u(cols)?];
        self.run("column_sums", groups(cols), &params, &[r(&dy), w(&db)])
    }

    fn relu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        check_len("relu_forward", "y", x.len, y.len)?;
        let params = [u(x.offset)?, u(y.offset)?, u(x.len)?];
        self.run("relu_forward", grid(x.len), &params, &[r(&x), w(&y)])
    }

    fn relu_backward(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::relu_backward(y.len, dy.len, dx.len)?;
        let params = [u(y.offset)?, u(dy.offset)?, u(dx.offset)?, u(y.len)?];
        self.run("relu_backward", grid(y.len), &params, &[r(&y), r(&dy), w(&dx)])
    }

    fn gelu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::gelu_forward(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let params = [u(x.offset)?, u(y.offset)?, u(x.len)?];
        self.run("gelu_forward", grid(x.len), &params, &[r(&x), w(&y)])
    }

    fn gelu_backward(&self, x: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::gelu_backward(x.len, dy.len, dx.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let params = [u(x.offset)?, u(dy.offset)?, u(dx.offset)?, u(x.len)?];
        self.run("gelu_backward", grid(x.len), &params, &[r(&x), r(&dy), w(&dx)])
    }

    fn axpby(&self, a: f32, x: View<'_, Self, f32>, b: f32, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::axpby(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let params = [u(x.offset)?, u(y.offset)?, u(x.len)?, f(a), f(b)];
        self.run("axpby", grid(x.len), &params, &[r(&x), w(&y)])
    }

    fn scale_to_norm(&self, x: ViewMut<'_, Self, f32>, target: f32, eps: f32) -> Result<()> {
        checks::scale_to_norm(target, eps)?;
        if x.len == 0 {
            return Ok(());
        }
        let params = [u(x.offset)?, u(x.len)?, f(target), f(eps)];
        self.run("scale_to_norm", (1, 1, 1), &params, &[w(&x)])
    }

    fn conv2d_forward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        wt: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::conv2d_forward(g, x.len, wt.len, bias.len, y.len)?;
        let mut params = vec![u(x.offset)?, u(wt.offset)?, u(bias.offset)?, u(y.offset)?];
        params.extend(Self::conv_geometry(g)?);
        self.run("conv_forward", grid(g.y_len()), &params, &[r(&x), r(&wt), r(&bias), w(&y)])
    }

    fn conv2d_backward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        wt: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dparams: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::conv2d_backward(g, x.len, wt.len, dy.len, dx.as_ref().map(|d| d.len), dparams.len)?;
        let geo = Self::conv_geometry(g)?;
        let mut params = vec![u(x.offset)?, u(dy.offset)?, u(dparams.offset)?];
        params.extend(geo);
        self.run("conv_backward_weight", groups(g.w_len() + g.c_out), &params, &[r(&x), r(&dy), w(&dparams)])?;
        if let Some(dx) = dx {
            let mut params = vec![u(wt.offset)?, u(dy.offset)?, u(dx.offset)?];
            params.extend(geo);
            self.run("conv_backward_input", grid(g.x_len()), &params, &[r(&wt), r(&dy), w(&dx)])?;
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
        let mut params = vec![u(x.offset)?, u(y.offset)?, u(argmax.offset)?];
        params.extend(Self::pool_geometry(g)?);
        params.push(g.relu as u32);
        self.run("maxpool_forward", grid(g.y_len()), &params, &[r(&x), w(&y), w(&argmax)])
    }

    fn maxpool2d_backward(
        &self,
        g: &Pool2dGeom,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::maxpool2d_backward(g, dy.len, argmax.len, dx.len)?;
        let mut params = vec![u(dy.offset)?, u(argmax.offset)?, u(dx.offset)?];
        params.extend(Self::pool_geometry(g)?);
        self.run("maxpool_backward", grid(g.x_len()), &params, &[r(&dy), r(&argmax), w(&dx)])
    }

    fn avgpool2d_forward(&self, g: &Pool2dGeom, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::avgpool2d("avgpool2d_forward", g, x.len, y.len)?;
        let mut params = vec![u(x.offset)?, u(y.offset)?];
        params.extend(Self::pool_geometry(g)?);
        self.run("avgpool_forward", grid(g.y_len()), &params, &[r(&x), w(&y)])
    }

    fn avgpool2d_backward(&self, g: &Pool2dGeom, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::avgpool2d("avgpool2d_backward", g, dx.len, dy.len)?;
        let mut params = vec![u(dy.offset)?, u(dx.offset)?];
        params.extend(Self::pool_geometry(g)?);
        self.run("avgpool_backward", grid(g.x_len()), &params, &[r(&dy), w(&dx)])
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
        if g.is_empty() {
            return Ok(());
        }
        let (n, c, hw) = (u(g.n)?, u(g.c)?, u(g.hw)?);
        if training {
            let p = [u(x.offset)?, u(running.offset)?, u(saved.offset)?, n, c, hw, f(g.eps), f(g.momentum)];
            self.run("bn_stats", (c, 1, 1), &p, &[r(&x), w(&running), w(&saved)])?;
        }
        let stats = if training { (w(&saved), saved.offset) } else { (w(&running), running.offset) };
        let p = [u(x.offset)?, u(params.offset)?, u(stats.1)?, u(y.offset)?, n, c, hw, f(g.eps), training as u32, g.act.code()];
        self.run("bn_apply", grid(g.len()), &p, &[r(&x), r(&params), stats.0, w(&y)])
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
        let (n, c, hw, act) = (u(g.n)?, u(g.c)?, u(g.hw)?, g.act.code());
        let p = [u(x.offset)?, u(y.offset)?, u(dy.offset)?, u(saved.offset)?, u(dparams.offset)?, n, c, hw, act, u(params.offset)?];
        self.run("bn_backward_reduce", (c, 1, 1), &p, &[r(&x), r(&y), r(&dy), r(&saved), r(&params), w(&dparams)])?;
        if let Some(dx) = dx {
            let p = [
                u(x.offset)?,
                u(y.offset)?,
                u(dy.offset)?,
                u(params.offset)?,
                u(saved.offset)?,
                u(dparams.offset)?,
                u(dx.offset)?,
                n,
                c,
                hw,
                act,
            ];
            let dp: Bound<'_> = (&*dparams.buf.buf, dparams.buf.id);
            self.run("bn_backward_dx", grid(g.len()), &p, &[r(&x), r(&y), r(&dy), r(&params), r(&saved), dp, w(&dx)])?;
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
        let p = [u(rng.offset)?, u(x.offset)?, u(y.offset)?, u(mask.offset)?, u(x.len)?, f(spec.p), spec.salt, f(1.0 / (1.0 - spec.p))];
        self.run("dropout_forward", grid(x.len), &p, &[r(&rng), r(&x), w(&y), w(&mask)])
    }

    fn dropout_backward(&self, mask: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::dropout_backward(mask.len, dy.len, dx.len)?;
        let p = [u(mask.offset)?, u(dy.offset)?, u(dx.offset)?, u(mask.len)?];
        self.run("mul", grid(mask.len), &p, &[r(&mask), r(&dy), w(&dx)])
    }

    fn augment(&self, spec: &AugmentSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::augment(spec, rng.len, x.len, y.len)?;
        let p = [
            u(rng.offset)?,
            u(x.offset)?,
            u(y.offset)?,
            u(spec.n)?,
            u(spec.c)?,
            u(spec.h)?,
            u(spec.w)?,
            f(spec.rotate_deg.to_radians()),
            f(spec.scale),
            f(spec.translate),
            f(spec.elastic),
            spec.flip as u32,
            f(spec.noise),
            f(spec.fill),
            spec.salt,
        ];
        self.run("augment", grid(spec.n * spec.h * spec.w), &p, &[r(&rng), r(&x), w(&y)])
    }

    fn add(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        if a.len == 0 {
            return Ok(());
        }
        let p = [u(a.offset)?, u(b.offset)?, u(y.offset)?, u(a.len)?, 0];
        self.run("add", grid(a.len), &p, &[r(&a), r(&b), w(&y)])
    }

    fn add_relu(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        if a.len == 0 {
            return Ok(());
        }
        let p = [u(a.offset)?, u(b.offset)?, u(y.offset)?, u(a.len)?, 1];
        self.run("add", grid(a.len), &p, &[r(&a), r(&b), w(&y)])
    }

    fn add_assign(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add_assign(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let p = [u(x.offset)?, u(y.offset)?, u(x.len)?];
        self.run("add_assign", grid(x.len), &p, &[r(&x), w(&y)])
    }

    fn crop_flip(&self, spec: &CropSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::crop_flip(spec, rng.len, x.len, y.len)?;
        if spec.is_empty() {
            return Ok(());
        }
        // Every index the kernel computes is below len (checked to fit a word).
        u(spec.len())?;
        let (flip, fixed) = (spec.flip.kernel_args(), spec.fixed.unwrap_or((0, 0)));
        let p = [
            u(rng.offset)?,
            u(x.offset)?,
            u(y.offset)?,
            u(spec.n)?,
            u(spec.c)?,
            u(spec.h)?,
            u(spec.w)?,
            u(spec.pad)?,
            (spec.padding == Padding::Reflect) as u32,
            flip[0],
            u(spec.cutout)?,
            spec.salt,
            flip[1],
            spec.fixed.is_some() as u32,
            u(fixed.0)?,
            u(fixed.1)?,
        ];
        self.run("crop_flip", grid(spec.n * spec.h * spec.w), &p, &[r(&rng), r(&x), w(&y)])
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
        if n == 0 {
            return Ok(());
        }
        let (grad, grad_offset) = match &dlogits {
            Some(d) => ((&*d.buf.buf, d.buf.id), d.offset),
            None => (buf(&self.dummy), 0),
        };
        let p = [
            u(logits.offset)?,
            u(labels.offset)?,
            u(grad_offset)?,
            u(stats.offset)?,
            u(n)?,
            u(classes)?,
            f(grad_scale),
            dlogits.is_some() as u32,
            f(smoothing),
            // As the reference computes it (a division in WGSL may be approximate).
            f(smoothing / classes as f32),
        ];
        self.run("softmax_cross_entropy", (1, 1, 1), &p, &[r(&logits), r(&labels), grad, w(&stats)])
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
        let head = [u(params.offset)?, u(grads.offset)?, u(state.offset)?, u(hyper.offset)?, u(params.len)?];
        let bound = [r(&grads), r(&hyper), w(&params), w(&state)];
        match *rule {
            UpdateRule::Sgd { momentum, nesterov, weight_decay } => {
                let p: Vec<u32> = head.iter().copied().chain([f(momentum), nesterov as u32, f(weight_decay)]).collect();
                self.run("sgd_step", grid(params.len), &p, &bound)
            }
            UpdateRule::Adam { beta1, beta2, eps, weight_decay, decoupled } => {
                let p: Vec<u32> = head.iter().copied().chain([f(beta1), f(beta2), f(eps), f(weight_decay), decoupled as u32]).collect();
                self.run("adam_step", grid(params.len), &p, &bound)
            }
        }
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
        if spec.n == 0 {
            return Ok(());
        }
        // A kernel cannot fail: an index outside the dataset leaves its sample unwritten
        // (the trainer's indices come from a permutation of the dataset; the CPU backend
        // reports a bad one as an error).
        // x = px * scale[c] - shift[c], as the reference computes them (channels past
        // `channels` are never read: 0).
        let (mut scale, mut shift) = ([0.0f32; MAX_CHANNELS], [0.0f32; MAX_CHANNELS]);
        for c in 0..spec.channels {
            scale[c] = 1.0 / (255.0 * spec.std[c]);
            shift[c] = spec.mean[c] / spec.std[c];
        }
        // One invocation per output pixel, or per sample where images have no pixels.
        let invocations = spec.n * spec.sample_len.max(1);
        u(invocations)?;
        let mut p = vec![
            u(images.offset)?,
            u(labels.offset)?,
            u(indices.offset)?,
            u(x.offset)?,
            u(y.offset)?,
            u(spec.n)?,
            u(spec.sample_len)?,
            u(labels.len)?,
            u(spec.plane())?,
        ];
        p.extend(scale.map(f));
        p.extend(shift.map(f));
        self.run("gather_batch", grid(invocations), &p, &[r(&images), r(&labels), r(&indices), w(&x), w(&y)])
    }

    // ---- dynamic loss scaling (shaders/loss_scale.wgsl) ----
    fn loss_scale_dlogits(&self, state: View<'_, Self, f32>, x: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_state("loss_scale_dlogits", state.len)?;
        let p = [u(state.offset)?, u(x.offset)?, u(x.len)?];
        self.run("loss_scale_dlogits", grid(x.len), &p, &[r(&state), w(&x)])
    }

    fn loss_scale_unscale(&self, state: ViewMut<'_, Self, f32>, grads: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_state("loss_scale_unscale", state.len)?;
        let p = [u(grads.offset)?, u(state.offset)?, u(grads.len)?];
        self.run("loss_scale_unscale", grid(grads.len), &p, &[w(&grads), w(&state)])
    }

    fn loss_scale_update(&self, spec: &ScaleUpdate, state: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_update(spec, state.len)?;
        let p = [u(state.offset)?, f(spec.growth), f(spec.backoff), spec.growth_interval];
        self.run("loss_scale_update", (1, 1, 1), &p, &[w(&state)])
    }
}
