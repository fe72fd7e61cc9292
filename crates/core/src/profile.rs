//! `--profile`: a backend wrapper that times every op (CUDA events on the GPU,
//! wall time on the CPU) and sums the time per op. It records no graphs, so
//! profiled runs show each op separately.

use crate::backend::{
    AugmentSpec, Backend, BatchNormGeom, Conv2dGeom, ConvGrads, CropSpec, DropoutSpec, Elem, Gather, Gemm, KeptConvInputs, NarrowEdges,
    Pool2dGeom, ScaleUpdate, UpdateRule, View, ViewMut,
};
use crate::error::Result;
use std::sync::Mutex;

pub struct Profiled<B: Backend> {
    pub inner: B,
    records: Mutex<Vec<Record<B::Mark>>>,
}

/// One timed op: its name and the marks before and after it.
struct Record<M> {
    op: &'static str,
    start: M,
    end: M,
}

/// Total time of one op over a run.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub op: &'static str,
    pub calls: usize,
    pub ms: f64,
}

impl<B: Backend> Profiled<B>
where
    B::Mark: Send,
{
    pub fn new(inner: B) -> Self {
        Profiled { inner, records: Mutex::new(Vec::new()) }
    }

    fn timed<R>(&self, op: &'static str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let start = self.inner.mark()?;
        let out = f()?;
        let end = self.inner.mark()?;
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push(Record { op, start, end });
        Ok(out)
    }

    /// Time per op since the last call, slowest first (waits for the device).
    pub fn take(&self) -> Result<Vec<OpTime>> {
        let records = std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()));
        let mut table: Vec<OpTime> = Vec::new();
        for Record { op, start, end } in &records {
            let ms = self.inner.elapsed_ms(start, end)?;
            match table.iter_mut().find(|t| t.op == *op) {
                Some(t) => {
                    t.calls += 1;
                    t.ms += ms;
                }
                None => table.push(OpTime { op, calls: 1, ms }),
            }
        }
        table.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(table)
    }
}

fn v<'a, B: Backend, T: Elem>(x: View<'a, Profiled<B>, T>) -> View<'a, B, T>
where
    B::Mark: Send,
{
    View { buf: x.buf, offset: x.offset, len: x.len }
}

fn vm<'a, B: Backend, T: Elem>(x: ViewMut<'a, Profiled<B>, T>) -> ViewMut<'a, B, T>
where
    B::Mark: Send,
{
    ViewMut { buf: x.buf, offset: x.offset, len: x.len }
}

impl<B: Backend> Backend for Profiled<B>
where
    B::Mark: Send,
{
    type Buf<T: Elem> = B::Buf<T>;
    type Graph = ();
    type Mark = B::Mark;

    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc<T: Elem>(&self, len: usize) -> Result<Self::Buf<T>> {
        self.inner.alloc(len)
    }
    fn upload<T: Elem>(&self, host: &[T]) -> Result<Self::Buf<T>> {
        self.timed("upload", || self.inner.upload(host))
    }
    fn write<T: Elem>(&self, dst: ViewMut<'_, Self, T>, host: &[T]) -> Result<()> {
        self.timed("write", || self.inner.write(vm(dst), host))
    }
    fn download<T: Elem>(&self, src: View<'_, Self, T>) -> Result<Vec<T>> {
        self.inner.download(v(src))
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn fill(&self, dst: ViewMut<'_, Self, f32>, value: f32) -> Result<()> {
        self.timed("fill", || self.inner.fill(vm(dst), value))
    }
    fn copy<T: Elem>(&self, src: View<'_, Self, T>, dst: ViewMut<'_, Self, T>) -> Result<()> {
        self.timed("copy", || self.inner.copy(v(src), vm(dst)))
    }
    fn mark(&self) -> Result<Self::Mark> {
        self.inner.mark()
    }
    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64> {
        self.inner.elapsed_ms(start, end)
    }
    fn peak_memory(&self) -> Option<(&'static str, u64)> {
        self.inner.peak_memory()
    }
    fn precisions(&self) -> Vec<crate::backend::Precision> {
        self.inner.precisions()
    }
    fn set_precision(&self, precision: crate::backend::Precision) -> Result<()> {
        self.inner.set_precision(precision)
    }
    fn precision(&self) -> crate::backend::Precision {
        self.inner.precision()
    }
    fn gemm(
        &self,
        spec: &Gemm,
        a: View<'_, Self, f32>,
        b: View<'_, Self, f32>,
        bias: Option<View<'_, Self, f32>>,
        c: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("gemm", || self.inner.gemm(spec, v(a), v(b), bias.map(v), vm(c)))
    }
    fn bias_grad(&self, rows: usize, cols: usize, dy: View<'_, Self, f32>, db: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("bias_grad", || self.inner.bias_grad(rows, cols, v(dy), vm(db)))
    }
    fn relu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("relu_forward", || self.inner.relu_forward(v(x), vm(y)))
    }
    fn relu_backward(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("relu_backward", || self.inner.relu_backward(v(y), v(dy), vm(dx)))
    }
    fn gelu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("gelu_forward", || self.inner.gelu_forward(v(x), vm(y)))
    }
    fn gelu_backward(&self, x: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("gelu_backward", || self.inner.gelu_backward(v(x), v(dy), vm(dx)))
    }
    fn axpby(&self, a: f32, x: View<'_, Self, f32>, b: f32, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("axpby", || self.inner.axpby(a, v(x), b, vm(y)))
    }
    fn scale_to_norm(&self, x: ViewMut<'_, Self, f32>, target: f32, eps: f32) -> Result<()> {
        self.timed("scale_to_norm", || self.inner.scale_to_norm(vm(x), target, eps))
    }
    fn conv2d_forward(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("conv2d_forward", || self.inner.conv2d_forward(g, v(x), v(w), v(bias), vm(y)))
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
        self.timed("conv2d_backward", || self.inner.conv2d_backward(g, v(x), v(w), v(dy), dx.map(vm), vm(dparams)))
    }
    fn conv2d_backward_no_bias(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dweight: ViewMut<'_, Self, f32>,
        scratch: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("conv2d_backward", || self.inner.conv2d_backward_no_bias(g, v(x), v(w), v(dy), dx.map(vm), vm(dweight), vm(scratch)))
    }
    fn conv2d_keeps(&self, g: &Conv2dGeom) -> bool {
        self.inner.conv2d_keeps(g)
    }
    fn conv2d_forward_keep(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        keep: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("conv2d_forward", || self.inner.conv2d_forward_keep(g, v(x), v(w), v(bias), vm(y), vm(keep)))
    }
    fn conv2d_backward_kept(
        &self,
        g: &Conv2dGeom,
        x: View<'_, Self, f32>,
        kept: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        grads: ConvGrads<'_, Self>,
    ) -> Result<()> {
        let grads = match grads {
            ConvGrads::Bias(dparams) => ConvGrads::Bias(vm(dparams)),
            ConvGrads::NoBias { dweight, scratch } => ConvGrads::NoBias { dweight: vm(dweight), scratch: vm(scratch) },
        };
        self.timed("conv2d_backward", || self.inner.conv2d_backward_kept(g, v(x), v(kept), v(w), v(dy), dx.map(vm), grads))
    }
    fn conv2d_maxpool_forward(
        &self,
        g: &Conv2dGeom,
        pool: &Pool2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        bias: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        argmax: ViewMut<'_, Self, u32>,
        stash: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("conv2d_maxpool_forward", || {
            self.inner.conv2d_maxpool_forward(g, pool, v(x), v(w), v(bias), vm(y), vm(argmax), vm(stash))
        })
    }
    fn conv2d_maxpool_backward(
        &self,
        g: &Conv2dGeom,
        pool: &Pool2dGeom,
        x: View<'_, Self, f32>,
        w: View<'_, Self, f32>,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        stash: ViewMut<'_, Self, f32>,
        dx: Option<ViewMut<'_, Self, f32>>,
        dweight: ViewMut<'_, Self, f32>,
        scratch: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("conv2d_maxpool_backward", || {
            self.inner.conv2d_maxpool_backward(g, pool, v(x), v(w), v(dy), v(argmax), vm(stash), dx.map(vm), vm(dweight), vm(scratch))
        })
    }
    fn conv2d_batchnorm_forward(
        &self,
        geoms: (&Conv2dGeom, &BatchNormGeom),
        edges: NarrowEdges,
        training: bool,
        (x, w, bias): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        keep: Option<ViewMut<'_, Self, f32>>,
        (params, running, saved): (View<'_, Self, f32>, ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>),
        stash: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        let bn = (v(params), vm(running), vm(saved));
        self.timed("conv2d_batchnorm_forward", || {
            self.inner.conv2d_batchnorm_forward(geoms, edges, training, (v(x), v(w), v(bias)), keep.map(vm), bn, vm(stash), vm(y))
        })
    }
    fn conv2d_batchnorm_adds_dx(&self, g: &Conv2dGeom, stash: View<'_, Self, f32>) -> bool {
        self.inner.conv2d_batchnorm_adds_dx(g, v(stash))
    }
    fn conv2d_batchnorm_narrow(&self, g: &Conv2dGeom) -> NarrowEdges {
        self.inner.conv2d_batchnorm_narrow(g)
    }
    fn conv2d_batchnorm_backward(
        &self,
        geoms: (&Conv2dGeom, &BatchNormGeom),
        edges: NarrowEdges,
        (x, kept, w): KeptConvInputs<'_, Self>,
        (stash, y, dy): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        (bias, params, saved): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        dstash: ViewMut<'_, Self, f32>,
        (dx, add_dx): (Option<ViewMut<'_, Self, f32>>, bool),
        (dweight, scratch, dparams): (ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>),
    ) -> Result<()> {
        let (inputs, grads) = ((v(x), kept.map(v), v(w)), (vm(dweight), vm(scratch), vm(dparams)));
        self.timed("conv2d_batchnorm_backward", || {
            self.inner.conv2d_batchnorm_backward(
                geoms,
                edges,
                inputs,
                (v(stash), v(y), v(dy)),
                (v(bias), v(params), v(saved)),
                vm(dstash),
                (dx.map(vm), add_dx),
                grads,
            )
        })
    }
    fn maxpool2d_forward(
        &self,
        g: &Pool2dGeom,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        argmax: ViewMut<'_, Self, u32>,
    ) -> Result<()> {
        self.timed("maxpool2d_forward", || self.inner.maxpool2d_forward(g, v(x), vm(y), vm(argmax)))
    }
    fn maxpool2d_backward(
        &self,
        g: &Pool2dGeom,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("maxpool2d_backward", || self.inner.maxpool2d_backward(g, v(dy), v(argmax), vm(dx)))
    }
    fn avgpool2d_forward(&self, g: &Pool2dGeom, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("avgpool2d_forward", || self.inner.avgpool2d_forward(g, v(x), vm(y)))
    }
    fn avgpool2d_backward(&self, g: &Pool2dGeom, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("avgpool2d_backward", || self.inner.avgpool2d_backward(g, v(dy), vm(dx)))
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
        self.timed("batchnorm_forward", || self.inner.batchnorm_forward(g, training, v(x), v(params), vm(running), vm(saved), vm(y)))
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
        self.timed("batchnorm_backward", || {
            self.inner.batchnorm_backward(g, v(x), v(y), v(dy), v(params), v(saved), dx.map(vm), vm(dparams))
        })
    }
    fn dropout_forward(
        &self,
        spec: &DropoutSpec,
        rng: View<'_, Self, u32>,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        mask: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("dropout_forward", || self.inner.dropout_forward(spec, v(rng), v(x), vm(y), vm(mask)))
    }
    fn dropout_backward(&self, mask: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("dropout_backward", || self.inner.dropout_backward(v(mask), v(dy), vm(dx)))
    }
    fn augment(&self, spec: &AugmentSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("augment", || self.inner.augment(spec, v(rng), v(x), vm(y)))
    }
    fn crop_flip(&self, spec: &CropSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("crop_flip", || self.inner.crop_flip(spec, v(rng), v(x), vm(y)))
    }
    fn add(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("add", || self.inner.add(v(a), v(b), vm(y)))
    }
    fn add_relu(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("add_relu", || self.inner.add_relu(v(a), v(b), vm(y)))
    }
    fn add_assign(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("add_assign", || self.inner.add_assign(v(x), vm(y)))
    }
    fn narrow_residuals(&self) -> bool {
        self.inner.narrow_residuals()
    }
    fn global_avgpool_narrow_forward(&self, nchw: (usize, usize, usize), x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("global_avgpool_narrow_forward", || self.inner.global_avgpool_narrow_forward(nchw, v(x), vm(y)))
    }
    fn global_avgpool_narrow_backward(
        &self,
        nchw: (usize, usize, usize),
        dy: View<'_, Self, f32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("global_avgpool_narrow_backward", || self.inner.global_avgpool_narrow_backward(nchw, v(dy), vm(dx)))
    }
    fn add_relu_narrow(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("add_relu_narrow", || self.inner.add_relu_narrow(v(a), v(b), vm(y)))
    }
    fn relu_backward_narrow(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("relu_backward_narrow", || self.inner.relu_backward_narrow(v(y), v(dy), vm(dx)))
    }
    fn add_assign_narrow(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("add_assign_narrow", || self.inner.add_assign_narrow(v(x), vm(y)))
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
        self.timed("softmax_cross_entropy", || {
            self.inner.softmax_cross_entropy(n, classes, smoothing, v(logits), v(labels), grad_scale, dlogits.map(vm), vm(stats))
        })
    }
    fn optimizer_step(
        &self,
        rule: &UpdateRule,
        hyper: View<'_, Self, f32>,
        params: ViewMut<'_, Self, f32>,
        grads: View<'_, Self, f32>,
        state: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        self.timed("optimizer_step", || self.inner.optimizer_step(rule, v(hyper), vm(params), v(grads), vm(state)))
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
        self.timed("gather_batch", || self.inner.gather_batch(spec, v(images), v(labels), v(indices), vm(x), vm(y)))
    }

    // ---- dynamic loss scaling ----
    fn loss_scale_dlogits(&self, state: View<'_, Self, f32>, x: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("loss_scale_dlogits", || self.inner.loss_scale_dlogits(v(state), vm(x)))
    }
    fn loss_scale_unscale(&self, state: ViewMut<'_, Self, f32>, grads: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("loss_scale_unscale", || self.inner.loss_scale_unscale(vm(state), vm(grads)))
    }
    fn loss_scale_update(&self, spec: &ScaleUpdate, state: ViewMut<'_, Self, f32>) -> Result<()> {
        self.timed("loss_scale_update", || self.inner.loss_scale_update(spec, vm(state)))
    }
}
