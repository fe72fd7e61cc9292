//! `Backend` for `CudaBackend`: argument checks, then kernel launches or cuBLAS
//! calls on the backend's stream. Nothing here waits for the GPU except
//! `download` and `synchronize`.

use crate::{device_err, ptr, ptr_mut, CudaBackend, CudaBuf};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use rr_core::backend::{
    checks, Activation, AugmentSpec, BatchNormGeom, Conv2dGeom, ConvGrads, CropSpec, DropoutSpec, Gather, Gemm, KeptConvInputs,
    NarrowEdges, Padding, Pool2dGeom, ScaleUpdate, UpdateRule, MAX_CHANNELS,
};
use rr_core::error::check_len;
use rr_core::{Backend, Elem, Error, Precision, Result, View, ViewMut};

/// Launches kernel `$f` with `$cfg` and the given arguments (device pointers
/// as u64, sizes as i32, scalars as f32; at most 16).
macro_rules! launch {
    ($self:expr, $f:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        // Bind the arguments first: the builder keeps references to them.
        let args = ($($arg,)+);
        let mut b = $self.stream.launch_builder(&$self.k.$f);
        launch!(@push b, args, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15], $($arg),+);
        // SAFETY: argument types and counts match the kernel's signature in kernels/*.cu;
        // lengths were checked against every pointer's buffer before the launch.
        unsafe { b.launch($cfg) }.map(|_| ()).map_err(|e| device_err(format!(concat!(stringify!($f), ": {}"), e)))
    }};
    // One `arg` per argument: the expressions only count here (they were evaluated above).
    (@push $b:ident, $args:ident, [$i0:tt $($i:tt)*], $a0:expr $(, $a:expr)*) => {
        $b.arg(&$args.$i0);
        launch!(@push $b, $args, [$($i)*] $(, $a)*);
    };
    (@push $b:ident, $args:ident, [$($i:tt)*]) => {};
}

mod conv_bn;
mod conv_dnn;
use conv_dnn::{Dx, Dy};

const BLOCK: u32 = 256;

/// Products up to this many multiply-adds use the tiled kernel in gemm.cu.
const SMALL_GEMM: usize = 1 << 23;

impl CudaBackend {
    /// Grid-stride launch shape for `n` independent elements.
    fn cfg(&self, n: usize) -> LaunchConfig {
        let blocks = (n.div_ceil(BLOCK as usize) as u32).clamp(1, self.sms * 16);
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// Row-major `c = alpha * op(a) op(b) + beta * c` on raw device addresses.
    fn sgemm(&self, g: &Gemm, a: u64, b: u64, c: u64, beta: f32) -> Result<()> {
        self.sgemm_batched(g, (a, 0), (b, 0), (c, 0), 1, beta)
    }

    /// `batch` row-major products; each operand is (address, elements between
    /// consecutive matrices). Leading dimensions are the natural ones.
    fn sgemm_batched(&self, g: &Gemm, a: (u64, usize), b: (u64, usize), c: (u64, usize), batch: usize, beta: f32) -> Result<()> {
        if g.m == 0 || g.n == 0 || batch == 0 {
            return Ok(());
        }
        let (m, n, k) = (i32c(g.m)?, i32c(g.n)?, i32c(g.k)?);
        // cuBLAS is column-major: compute C^T (n, m) = op(B)^T op(A)^T.
        let (op_a, lda) = if g.trans_a { (cublasOperation_t::CUBLAS_OP_T, m) } else { (cublasOperation_t::CUBLAS_OP_N, k) };
        let (op_b, ldb) = if g.trans_b { (cublasOperation_t::CUBLAS_OP_T, k) } else { (cublasOperation_t::CUBLAS_OP_N, n) };
        let h = *self.blas.handle();
        if let Some(compute) = fast_compute(self.precision()) {
            use cudarc::cublas::sys::{cublasGemmAlgo_t, cudaDataType};
            let f32t = cudaDataType::CUDA_R_32F;
            // SAFETY: as below; fp32 operands, products on tensor cores with fp32 accumulation.
            let result = unsafe {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    h,
                    op_b,
                    op_a,
                    n,
                    m,
                    k,
                    (&g.alpha as *const f32).cast(),
                    b.0 as *const std::ffi::c_void,
                    f32t,
                    ldb.max(1),
                    b.1 as i64,
                    a.0 as *const std::ffi::c_void,
                    f32t,
                    lda.max(1),
                    a.1 as i64,
                    (&beta as *const f32).cast(),
                    c.0 as *mut std::ffi::c_void,
                    f32t,
                    n.max(1),
                    c.1 as i64,
                    i32c(batch)?,
                    compute,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            };
            return result.map_err(|e| device_err(format!("cuBLAS gemm ({}) {g:?} x{batch}: {e}", self.precision())));
        }
        // SAFETY: the caller checked that a, b, c address buffers of the sizes g, the strides and batch imply.
        let result = unsafe {
            cudarc::cublas::result::sgemm_strided_batched(
                h,
                op_b,
                op_a,
                n,
                m,
                k,
                &g.alpha,
                b.0 as *const f32,
                ldb.max(1),
                b.1 as i64,
                a.0 as *const f32,
                lda.max(1),
                a.1 as i64,
                &beta,
                c.0 as *mut f32,
                n.max(1),
                c.1 as i64,
                i32c(batch)?,
            )
        };
        result.map_err(|e| device_err(format!("cuBLAS sgemm {g:?} x{batch}: {e}")))
    }

    /// Two scratch buffers of at least `a` and `b` floats (grown on first use
    /// only). The guard must be held until every kernel using them is enqueued:
    /// the stream runs in order, so a later op cannot overwrite them early.
    fn scratch(&self, a: usize, b: usize) -> Result<(std::sync::MutexGuard<'_, crate::Scratch>, u64, u64)> {
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // Outgrown buffers are kept, not freed: a recorded graph may still use them.
        if s.a.as_ref().is_none_or(|buf| buf.len < a) {
            let old = s.a.replace(self.alloc_bytes::<f32>(a)?);
            s.retired.extend(old);
        }
        if s.b.as_ref().is_none_or(|buf| buf.len < b) {
            let old = s.b.replace(self.alloc_bytes::<f32>(b)?);
            s.retired.extend(old);
        }
        let (pa, pb) = (s.a.as_ref().map_or(0, |x| x.ptr), s.b.as_ref().map_or(0, |x| x.ptr));
        Ok((s, pa, pb))
    }
}

/// Whether per-channel kernels over (N, C, HW) tensors may move four floats at a
/// time (`vec4` in norm.cu): HW % 4 == 0 and every address (0: unused) 16-byte aligned.
fn vec4(hw: usize, addrs: &[u64]) -> bool {
    hw.is_multiple_of(4) && addrs.iter().all(|a| a.is_multiple_of(16))
}

/// Threads a `vec4` kernel needs for `len` values, one per group.
fn groups(len: usize, vec4: bool) -> usize {
    if vec4 {
        len / 4
    } else {
        len
    }
}

impl CudaBackend {
    /// Samples per slice of the two-phase channel sums: enough (C, S) blocks to fill every SM a few times.
    fn slices(&self, n: usize, c: usize) -> i32 {
        (8 * self.sms as usize).div_ceil(c.max(1)).clamp(1, n.max(1)) as i32
    }

    /// Phase one of the per-channel sums of norm.cu (`mode` as there) over
    /// (N, C, HW) tensors [x, y, dy, saved, params]; returns the partials'
    /// address, valid while the guard is held.
    fn channel_partials(
        &self,
        mode: i32,
        (n, c, hw): (usize, usize, usize),
        [x, y, dy, saved, params]: [u64; 5],
        act: Activation,
    ) -> Result<(std::sync::MutexGuard<'_, crate::Scratch>, u64)> {
        let slices = self.slices(n, c);
        // (C, S, 2) doubles, as floats.
        let (guard, _, partial) = self.scratch(0, 4 * c * slices as usize)?;
        let cfg = LaunchConfig { grid_dim: (c as u32, slices as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (code, vec4) = (act.code() as i32, vec4(hw, &[x, y, dy]) as i32);
        launch!(self, channel_partials, cfg, x, y, dy, saved, params, partial, i32c(n)?, i32c(c)?, i32c(hw)?, mode, code, vec4)?;
        Ok((guard, partial))
    }

    /// db[c] = sum over n and hw of dy (N, C, HW).
    fn channel_sums(&self, dy: u64, db: u64, (n, c, hw): (usize, usize, usize)) -> Result<()> {
        let (_guard, partial) = self.channel_partials(2, (n, c, hw), [0, 0, dy, 0, 0], Activation::None)?;
        launch!(self, channel_partials_finish, self.cfg(c), partial, db, i32c(c)?, self.slices(n, c), 2i32)
    }
}

/// cuBLAS's compute type for fp32 operands at a precision below fp32.
fn fast_compute(p: Precision) -> Option<cudarc::cublas::sys::cublasComputeType_t> {
    use cudarc::cublas::sys::cublasComputeType_t::*;
    match p {
        Precision::Fp32 => None,
        Precision::Tf32 => Some(CUBLAS_COMPUTE_32F_FAST_TF32),
        Precision::Bf16 => Some(CUBLAS_COMPUTE_32F_FAST_16BF),
        Precision::Fp16 => Some(CUBLAS_COMPUTE_32F_FAST_16F),
    }
}

/// Convolutions wide enough for the GEMM path (and for tensor cores to pay);
/// LeNet's small ones are launch-bound and stay on the direct kernels.
fn wide(g: &Conv2dGeom) -> bool {
    g.c_out >= 32 && g.patch_len() >= 64
}

impl CudaBackend {
    /// cuDNN and the precision for a wide convolution below fp32, if both apply.
    fn tensor_cores(&self, g: &Conv2dGeom) -> Option<(&crate::cudnn::Cudnn, Precision)> {
        let p = self.precision();
        // From 32 output channels (ResNet's 3-channel stem included); LeNet's layers stay.
        (p != Precision::Fp32 && g.c_out >= 32).then_some(())?;
        self.dnn.as_ref().map(|dnn| (dnn, p))
    }

    /// [`Self::sixteen_bit`] where the 16-bit x cuDNN reads fits the `g.x_len()`
    /// 16-bit values a layer keeps for the backward (not the padded RGB stem).
    fn keeping(&self, g: &Conv2dGeom) -> Option<(&crate::cudnn::Cudnn, Precision)> {
        self.sixteen_bit(g).filter(|&(_, p)| conv_dnn::cudnn_geom(g, p).x_len() <= g.x_len())
    }

    /// The 16-bit precision narrow tensors take (that of the fused conv + BatchNorm), if any.
    fn narrow_precision(&self) -> Option<Precision> {
        let p = self.precision();
        (self.dnn.is_some() && matches!(p, Precision::Bf16 | Precision::Fp16)).then_some(p)
    }

    /// The launch of an element-wise op on `len` narrow values at `addrs`: its
    /// grid, fp16 or bf16, and whether it moves eight values (16 bytes) at a time.
    fn narrow_elementwise(&self, op: &'static str, len: usize, addrs: [u64; 3]) -> Result<(LaunchConfig, i32, i32)> {
        let p = self.narrow_precision().ok_or_else(|| checks::no_narrow(op))?;
        let vec = len.is_multiple_of(8) && addrs.iter().all(|a| a.is_multiple_of(16));
        let cfg = self.cfg(if vec { len / 8 } else { len });
        Ok((cfg, conv_dnn::half(p), vec as i32))
    }

    /// Refuses narrow sides of a fused conv + BatchNorm that `conv2d_batchnorm_narrow`
    /// does not offer, and narrow tensors (`addrs`: x or dx, y or dy; 0: none) not 16-byte aligned.
    fn check_narrow(&self, g: &Conv2dGeom, edges: NarrowEdges, addrs: [u64; 2]) -> Result<()> {
        let offered = self.conv2d_batchnorm_narrow(g);
        if g.n > 0 && ((edges.x && !offered.x) || (edges.y && !offered.y)) {
            let want = format!("at most {offered:?} for {g:?} at {}", self.precision());
            return Err(Error::shape("conv2d_batchnorm", "narrow edges", want, format!("{edges:?}")));
        }
        let aligned = |on: bool, addr: u64| !on || addr.is_multiple_of(16);
        if !(aligned(edges.x, addrs[0]) && aligned(edges.y, addrs[1])) {
            return Err(Error::shape("conv2d_batchnorm", "narrow tensors", "16-byte aligned windows", format!("{addrs:x?}")));
        }
        Ok(())
    }

    /// cuDNN and the precision when a wide convolution runs on 16-bit channels-last operands.
    fn sixteen_bit(&self, g: &Conv2dGeom) -> Option<(&crate::cudnn::Cudnn, Precision)> {
        self.tensor_cores(g).filter(|(_, p)| matches!(p, Precision::Bf16 | Precision::Fp16))
    }

    /// y = bias, then y_n (C_out, OH*OW) += W (C_out, C_in*K*K) . cols_n, in chunks
    /// of samples whose column matrices fit a bounded scratch buffer.
    fn conv2d_forward_gemm(
        &self,
        g: &Conv2dGeom,
        x: &View<'_, Self, f32>,
        w: &View<'_, Self, f32>,
        bias: &View<'_, Self, f32>,
        y: &ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        let ohw = g.out_h() * g.out_w();
        let (pl, rows) = (g.patch_len(), g.patch_len() + 1);
        if rows > 65_535 {
            return Err(Error::shape("conv2d_forward", "C_in*K*K + 1", "<= 65535 on the GPU", rows));
        }
        launch!(self, bias_channels, self.cfg(g.y_len()), ptr_mut(y), ptr(bias), i32c(g.y_len())?, i32c(g.c_out)?, i32c(ohw)?)?;
        // At most 2^26 floats (256 MB) of columns at a time.
        let chunk = ((1usize << 26) / (rows * ohw)).clamp(1, 65_535);
        let (_guard, cols, _) = self.scratch(chunk.min(g.n) * rows * ohw, 0)?;
        let mut start = 0;
        while start < g.n {
            let n = chunk.min(g.n - start);
            let sub = Conv2dGeom { n, ..*g };
            let geo = ConvGeo::new(&sub)?;
            let xs = ptr(x) + (start * g.c_in * g.h * g.w * 4) as u64;
            let ys = ptr_mut(y) + (start * g.c_out * ohw * 4) as u64;
            let cfg = LaunchConfig {
                grid_dim: ((ohw as u32).div_ceil(BLOCK), rows as u32, n as u32),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, im2col_ones, cfg, xs, cols, geo)?;
            // The patch rows of each sample's columns (the ones row is skipped: the bias is already in y).
            let product = Gemm::new(g.c_out, ohw, pl);
            self.sgemm_batched(&product, (ptr(w), 0), (cols, rows * ohw), (ys, g.c_out * ohw), n, 1.0)?;
            start += n;
        }
        Ok(())
    }
}

/// Convolution geometry as the kernels take it (`struct ConvGeo` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvGeo {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    co: i32,
    k: i32,
    s: i32,
    p: i32,
    oh: i32,
    ow: i32,
}

// SAFETY: plain #[repr(C)] integers, laid out as the CUDA struct.
unsafe impl cudarc::driver::DeviceRepr for ConvGeo {}

impl ConvGeo {
    fn new(g: &Conv2dGeom) -> Result<Self> {
        Ok(ConvGeo {
            n: i32c(g.n)?,
            c: i32c(g.c_in)?,
            h: i32c(g.h)?,
            w: i32c(g.w)?,
            co: i32c(g.c_out)?,
            k: i32c(g.k)?,
            s: i32c(g.stride)?,
            p: i32c(g.pad)?,
            oh: i32c(g.out_h())?,
            ow: i32c(g.out_w())?,
        })
    }
}

/// Augmentation settings as the kernel takes them (`struct AugmentArgs` in kernels/random.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AugmentArgs {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    rotate_rad: f32,
    scale: f32,
    translate: f32,
    elastic: f32,
    flip: i32,
    noise: f32,
    fill: f32,
    salt: u32,
}

// SAFETY: plain #[repr(C)] 4-byte fields, laid out as the CUDA struct.
unsafe impl cudarc::driver::DeviceRepr for AugmentArgs {}

/// Crop settings as the kernel takes them (`struct CropArgs` in kernels/random.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct CropArgs {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    pad: i32,
    reflect: i32,
    /// The mode of [`rr_core::backend::Flip::kernel_args`].
    flip: i32,
    cutout: i32,
    salt: u32,
    steps_per_epoch: u32,
    fixed: i32,
    fixed_dy: i32,
    fixed_dx: i32,
}

// SAFETY: plain #[repr(C)] 4-byte fields, laid out as the CUDA struct.
unsafe impl cudarc::driver::DeviceRepr for CropArgs {}

/// Per-channel normalization as the gather kernel takes it (`struct GatherNorm`
/// in kernels/data.cu): `x = px * scale[c] - shift[c]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GatherNorm {
    scale: [f32; MAX_CHANNELS],
    shift: [f32; MAX_CHANNELS],
}

// SAFETY: plain #[repr(C)] f32 arrays, laid out as the CUDA struct.
unsafe impl cudarc::driver::DeviceRepr for GatherNorm {}

impl GatherNorm {
    /// The reference's arithmetic (`reference::gather_batch`): scale = 1 / (255 std), shift = mean / std.
    fn new(spec: &Gather) -> Self {
        let mut norm = GatherNorm { scale: [0.0; MAX_CHANNELS], shift: [0.0; MAX_CHANNELS] };
        for c in 0..spec.channels.min(MAX_CHANNELS) {
            norm.scale[c] = 1.0 / (255.0 * spec.std[c]);
            norm.shift[c] = spec.mean[c] / spec.std[c];
        }
        norm
    }
}

/// A pool's geometry as kernel arguments: planes, H, W, K, S, P, OH, OW.
#[allow(clippy::type_complexity)]
fn pool_args(g: &Pool2dGeom) -> Result<(i32, i32, i32, i32, i32, i32, i32, i32)> {
    Ok((i32c(g.n * g.c)?, i32c(g.h)?, i32c(g.w)?, i32c(g.k)?, i32c(g.stride)?, i32c(g.pad)?, i32c(g.out_h())?, i32c(g.out_w())?))
}

/// Sizes go to kernels as i32.
fn i32c(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::shape("cuda", "size", "< 2^31", v))
}

impl Backend for CudaBackend {
    type Buf<T: Elem> = CudaBuf<T>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc<T: Elem>(&self, len: usize) -> Result<CudaBuf<T>> {
        self.alloc_bytes(len)
    }

    fn upload<T: Elem>(&self, host: &[T]) -> Result<CudaBuf<T>> {
        let buf = self.alloc_bytes::<T>(host.len())?;
        if !host.is_empty() {
            // SAFETY: buf holds host.len() elements of T.
            unsafe { cudarc::driver::result::memcpy_htod_async(buf.ptr, host, self.stream.cu_stream()) }.map_err(device_err)?;
        }
        Ok(buf)
    }

    fn write<T: Elem>(&self, dst: ViewMut<'_, Self, T>, host: &[T]) -> Result<()> {
        check_len("write", "host data", dst.len, host.len())?;
        if !host.is_empty() {
            // SAFETY: the window holds host.len() elements.
            unsafe { cudarc::driver::result::memcpy_htod_async(ptr_mut(&dst), host, self.stream.cu_stream()) }.map_err(device_err)?;
        }
        Ok(())
    }

    fn download<T: Elem>(&self, src: View<'_, Self, T>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); src.len];
        if !out.is_empty() {
            // SAFETY: the window holds out.len() elements; we wait for the copy below.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, ptr(&src), self.stream.cu_stream()) }.map_err(device_err)?;
        }
        self.synchronize()?;
        Ok(out)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| device_err(format!("a queued GPU operation failed: {e}")))
    }

    fn fill(&self, dst: ViewMut<'_, Self, f32>, value: f32) -> Result<()> {
        let n = dst.len;
        launch!(self, fill, self.cfg(n), ptr_mut(&dst), i32c(n)?, value)
    }

    fn copy<T: Elem>(&self, src: View<'_, Self, T>, dst: ViewMut<'_, Self, T>) -> Result<()> {
        check_len("copy", "destination", src.len, dst.len)?;
        if src.len == 0 {
            return Ok(());
        }
        let bytes = src.len * std::mem::size_of::<T>();
        // SAFETY: both windows hold src.len elements.
        unsafe { cudarc::driver::result::memcpy_dtod_async(ptr_mut(&dst), ptr(&src), bytes, self.stream.cu_stream()) }.map_err(device_err)
    }

    type Graph = cudarc::driver::CudaGraph;

    fn begin_capture(&self) -> Result<bool> {
        use cudarc::driver::sys::CUstreamCaptureMode;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| device_err(format!("begin graph capture: {e}")))?;
        Ok(true)
    }

    fn end_capture(&self) -> Result<Self::Graph> {
        let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
        self.stream
            .end_capture(flags)
            .map_err(|e| device_err(format!("end graph capture: {e}")))?
            .ok_or_else(|| device_err("graph capture recorded nothing"))
    }

    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        graph.launch().map_err(|e| device_err(format!("graph launch: {e}")))
    }

    type Mark = cudarc::driver::CudaEvent;

    fn mark(&self) -> Result<Self::Mark> {
        self.stream.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(device_err)
    }

    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64> {
        end.synchronize().map_err(device_err)?;
        start.elapsed_ms(end).map(f64::from).map_err(device_err)
    }

    fn precisions(&self) -> Vec<Precision> {
        let mut p = vec![Precision::Fp32, Precision::Tf32];
        if self.dnn.is_some() {
            // 16-bit convolutions need cuDNN; fp16 trains with loss scaling (rr_core::loss_scale).
            p.extend([Precision::Bf16, Precision::Fp16]);
        }
        p
    }

    fn set_precision(&self, precision: Precision) -> Result<()> {
        if !self.precisions().contains(&precision) {
            let why = "it needs cuDNN 9 (libcudnn.so.9), which was not found";
            return Err(Error::config("precision", format!("{precision} is not available on {}: {why}", self.name)));
        }
        self.precision.store(Precision::ALL.iter().position(|p| *p == precision).unwrap_or(0) as u8, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn precision(&self) -> Precision {
        Precision::ALL[self.precision.load(std::sync::atomic::Ordering::Relaxed) as usize]
    }

    fn peak_memory(&self) -> Option<(&'static str, u64)> {
        Some(("peak device memory allocated", crate::allocated_bytes().1 as u64))
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
        // Small products: one tiled kernel with the bias fused, instead of a
        // bias pass plus cuBLAS's split-K kernels.
        if g.m * g.n * g.k <= SMALL_GEMM {
            let cfg = LaunchConfig {
                grid_dim: ((g.n as u32).div_ceil(16), (g.m as u32).div_ceil(16), 1),
                block_dim: (16, 16, 1),
                shared_mem_bytes: 0,
            };
            let bias_ptr = bias.as_ref().map_or(0u64, ptr);
            return launch!(
                self,
                gemm_small,
                cfg,
                ptr(&a),
                ptr(&b),
                ptr_mut(&c),
                bias_ptr,
                i32c(g.m)?,
                i32c(g.n)?,
                i32c(g.k)?,
                g.trans_a as i32,
                g.trans_b as i32,
                g.alpha,
                g.beta
            );
        }
        let mut beta = g.beta;
        if let Some(bias) = bias {
            // c = beta * c + bias, then accumulate the product onto it.
            launch!(self, bias_rows, self.cfg(g.m * g.n), ptr_mut(&c), ptr(&bias), i32c(g.m)?, i32c(g.n)?, beta)?;
            beta = 1.0;
        }
        if g.k == 0 && beta == 0.0 {
            return self.fill(c, 0.0);
        }
        self.sgemm(g, ptr(&a), ptr(&b), ptr_mut(&c), beta)
    }

    fn bias_grad(&self, rows: usize, cols: usize, dy: View<'_, Self, f32>, db: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::bias_grad(rows, cols, dy.len, db.len)?;
        let warps = BLOCK / 32;
        let cfg = LaunchConfig { grid_dim: ((cols as u32).div_ceil(warps).max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, column_sums, cfg, ptr(&dy), ptr_mut(&db), i32c(rows)?, i32c(cols)?)
    }

    fn relu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        check_len("relu_forward", "y", x.len, y.len)?;
        launch!(self, relu_forward, self.cfg(x.len), ptr(&x), ptr_mut(&y), i32c(x.len)?)
    }

    fn relu_backward(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::relu_backward(y.len, dy.len, dx.len)?;
        launch!(self, relu_backward, self.cfg(y.len), ptr(&y), ptr(&dy), ptr_mut(&dx), i32c(y.len)?)
    }

    fn gelu_forward(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::gelu_forward(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        launch!(self, gelu_forward, self.cfg(x.len), ptr(&x), ptr_mut(&y), i32c(x.len)?)
    }

    fn gelu_backward(&self, x: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::gelu_backward(x.len, dy.len, dx.len)?;
        if x.len == 0 {
            return Ok(());
        }
        launch!(self, gelu_backward, self.cfg(x.len), ptr(&x), ptr(&dy), ptr_mut(&dx), i32c(x.len)?)
    }

    fn axpby(&self, a: f32, x: View<'_, Self, f32>, b: f32, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::axpby(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        launch!(self, axpby, self.cfg(x.len), ptr(&x), ptr_mut(&y), i32c(x.len)?, a, b)
    }

    fn scale_to_norm(&self, x: ViewMut<'_, Self, f32>, target: f32, eps: f32) -> Result<()> {
        checks::scale_to_norm(target, eps)?;
        if x.len == 0 {
            return Ok(());
        }
        // One block: the norm is a block reduction that every thread then applies (no second launch, no scratch).
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        launch!(self, scale_to_norm, cfg, ptr_mut(&x), i32c(x.len)?, target, eps)
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
        let geo = ConvGeo::new(g)?;
        // Wide layers on tensor cores (cuDNN) below fp32.
        if let Some((dnn, p)) = self.tensor_cores(g) {
            return self.conv2d_forward_dnn(dnn, p, g, &x, &w, &bias, &y, None);
        }
        // Wide layers (the strong model's 32..128 channels): im2col + batched GEMM.
        if wide(g) {
            return self.conv2d_forward_gemm(g, &x, &w, &bias, &y);
        }
        // Weights (and bias) in shared memory when they fit; 8 output channels per thread.
        let smem = 4 * (g.w_len() + g.c_out);
        if smem <= 48 * 1024 {
            let mut cfg = self.cfg(g.n * g.c_out.div_ceil(8) * g.out_h() * g.out_w());
            cfg.shared_mem_bytes = smem as u32;
            return launch!(self, conv2d_forward_smem, cfg, ptr(&x), ptr(&w), ptr(&bias), ptr_mut(&y), geo, 0i32);
        }
        launch!(self, conv2d_direct, self.cfg(g.y_len()), ptr(&x), ptr(&w), ptr(&bias), ptr_mut(&y), geo, 0i32)
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
        let (oh, ow) = (g.out_h(), g.out_w());
        let ohw = oh * ow;
        if g.n == 0 || ohw == 0 {
            self.fill(dparams, 0.0)?;
            return match dx {
                Some(dx) => self.fill(dx, 0.0),
                None => Ok(()),
            };
        }
        if let Some((dnn, p)) = self.tensor_cores(g) {
            let dw = ptr_mut(&dparams);
            return self.conv2d_backward_dnn(
                dnn,
                p,
                g,
                (&x, None),
                &w,
                Dy::Wide(ptr(&dy)),
                dx.as_ref().map(Dx::write),
                (dw, Some(dw + 4 * g.w_len() as u64)),
            );
        }
        let (pl, rows) = (g.patch_len(), g.patch_len() + 1);
        let (_guard, cols, partial) = self.scratch(g.n * rows * ohw, g.n * g.c_out * rows)?;
        let geo = ConvGeo::new(g)?;
        if g.n > 65_535 || rows > 65_535 {
            return Err(Error::shape("conv2d_backward", "batch and C_in*K*K + 1", "<= 65535 on the GPU", format!("{} and {rows}", g.n)));
        }
        // Grid (inner blocks, mid, n): no divisions to find the sample and row.
        let grid3 = |inner: usize, mid: usize| LaunchConfig {
            grid_dim: ((inner as u32).div_ceil(BLOCK), mid as u32, g.n as u32),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // cols_n ((C_in*K*K + 1), OH*OW): patches plus a row of ones
        launch!(self, im2col_ones, grid3(ohw, rows), ptr(&x), cols, geo)?;
        // [dW_n | db_n] (C_out, C_in*K*K + 1) = dy_n (C_out, OH*OW) . cols_n^T, for every n at once
        let per_sample = Gemm::new(g.c_out, rows, ohw).trans_b();
        self.sgemm_batched(&per_sample, (ptr(&dy), g.c_out * ohw), (cols, rows * ohw), (partial, g.c_out * rows), g.n, 0.0)?;
        if let Some(dx) = dx {
            // dcols_n (C_in*K*K, OH*OW) = W^T . dy_n, over the patch rows of cols (no longer needed)
            let back = Gemm::new(pl, ohw, g.c_out).trans_a();
            self.sgemm_batched(&back, (ptr(&w), 0), (ptr(&dy), g.c_out * ohw), (cols, rows * ohw), g.n, 0.0)?;
            launch!(self, col2im, grid3(g.h * g.w, g.c_in), cols, ptr_mut(&dx), geo)?;
        }
        // dparams = [sum_n dW_n | sum_n db_n], one warp per output
        let warps = (g.c_out * rows) as u32;
        let cfg = LaunchConfig { grid_dim: (warps.div_ceil(BLOCK / 32), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, conv_grad_reduce, cfg, partial, ptr_mut(&dparams), i32c(g.n)?, i32c(g.c_out)?, i32c(rows)?)
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
        checks::conv2d_backward(g, x.len, w.len, dy.len, dx.as_ref().map(|d| d.len), scratch.len)?;
        rr_core::error::check_len("conv2d_backward_no_bias", "dweight", g.w_len(), dweight.len)?;
        // cuDNN writes dW where it belongs and no bias sums are taken (a full pass over dy saved).
        match self.tensor_cores(g).filter(|_| g.n > 0 && g.out_h() * g.out_w() > 0) {
            Some((dnn, p)) => self.conv2d_backward_dnn(
                dnn,
                p,
                g,
                (&x, None),
                &w,
                Dy::Wide(ptr(&dy)),
                dx.as_ref().map(Dx::write),
                (ptr_mut(&dweight), None),
            ),
            None => rr_core::backend::conv2d_backward_through_scratch(self, g, x, w, dy, dx, dweight, scratch),
        }
    }

    fn conv2d_keeps(&self, g: &Conv2dGeom) -> bool {
        self.keeping(g).is_some()
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
        checks::conv2d_forward(g, x.len, w.len, bias.len, y.len)?;
        check_len("conv2d_forward_keep", "keep", g.x_len().div_ceil(2), keep.len)?;
        match self.keeping(g).filter(|_| g.n > 0) {
            Some((dnn, p)) => self.conv2d_forward_dnn(dnn, p, g, &x, &w, &bias, &y, Some(ptr_mut(&keep))),
            None => self.conv2d_forward(g, x, w, bias, y),
        }
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
        check_len("conv2d_backward_kept", "kept", g.x_len().div_ceil(2), kept.len)?;
        let wide = |len| checks::conv2d_backward(g, x.len, w.len, dy.len, dx.as_ref().map(|d| d.len), len);
        // At 16 bits on cuDNN, x as conv2d_forward_keep narrowed it; otherwise the plain backward.
        let dnn = self.keeping(g).filter(|_| g.n > 0 && g.out_h() * g.out_w() > 0);
        match (dnn, grads) {
            (Some((dnn, p)), ConvGrads::Bias(dparams)) => {
                wide(dparams.len)?;
                let dw = ptr_mut(&dparams);
                self.conv2d_backward_dnn(
                    dnn,
                    p,
                    g,
                    (&x, Some(ptr(&kept))),
                    &w,
                    Dy::Wide(ptr(&dy)),
                    dx.as_ref().map(Dx::write),
                    (dw, Some(dw + 4 * g.w_len() as u64)),
                )
            }
            (Some((dnn, p)), ConvGrads::NoBias { dweight, scratch }) => {
                wide(scratch.len)?;
                check_len("conv2d_backward_kept", "dweight", g.w_len(), dweight.len)?;
                self.conv2d_backward_dnn(
                    dnn,
                    p,
                    g,
                    (&x, Some(ptr(&kept))),
                    &w,
                    Dy::Wide(ptr(&dy)),
                    dx.as_ref().map(Dx::write),
                    (ptr_mut(&dweight), None),
                )
            }
            (None, ConvGrads::Bias(dparams)) => self.conv2d_backward(g, x, w, dy, dx, dparams),
            (None, ConvGrads::NoBias { dweight, scratch }) => self.conv2d_backward_no_bias(g, x, w, dy, dx, dweight, scratch),
        }
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
        checks::conv2d_maxpool(g, pool, stash.len)?;
        checks::conv2d_forward(g, x.len, w.len, bias.len, stash.len)?;
        checks::maxpool2d_forward(pool, stash.len, y.len, argmax.len)?;
        // 16-bit tensor cores: the conv's output stays 16-bit channels-last, in the stash.
        match self.sixteen_bit(g).filter(|_| g.n > 0) {
            Some(dnn) => self.conv2d_maxpool_forward_dnn(dnn, (g, pool), &x, &w, &bias, (&y, &argmax), &stash),
            None => rr_core::backend::conv2d_maxpool_forward_unfused(self, g, pool, x, w, bias, y, argmax, stash),
        }
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
        checks::conv2d_maxpool(g, pool, stash.len)?;
        checks::maxpool2d_backward(pool, dy.len, argmax.len, stash.len)?;
        checks::conv2d_backward(g, x.len, w.len, stash.len, dx.as_ref().map(|d| d.len), scratch.len)?;
        rr_core::error::check_len("conv2d_maxpool_backward", "dweight", g.w_len(), dweight.len)?;
        match self.sixteen_bit(g).filter(|_| g.n > 0) {
            Some(dnn) => self.conv2d_maxpool_backward_dnn(dnn, (g, pool), &x, &w, (&dy, &argmax), &stash, dx.as_ref(), ptr_mut(&dweight)),
            None => rr_core::backend::conv2d_maxpool_backward_unfused(self, g, pool, x, w, dy, argmax, stash, dx, dweight, scratch),
        }
    }

    fn conv2d_batchnorm_forward(
        &self,
        (g, bn): (&Conv2dGeom, &BatchNormGeom),
        edges: NarrowEdges,
        training: bool,
        (x, w, bias): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        keep: Option<ViewMut<'_, Self, f32>>,
        (params, running, saved): (View<'_, Self, f32>, ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>),
        stash: ViewMut<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::conv2d_batchnorm(g, bn, stash.len)?;
        checks::conv2d_forward(g, x.len, w.len, bias.len, stash.len)?;
        checks::batchnorm_forward(bn, training, stash.len, params.len, running.len, saved.len, y.len)?;
        if let Some(keep) = &keep {
            check_len("conv2d_batchnorm_forward", "keep", g.x_len().div_ceil(2), keep.len)?;
        }
        self.check_narrow(g, edges, [ptr(&x), ptr_mut(&y)])?;
        // 16-bit tensor cores: the conv's output stays 16-bit channels-last, in the stash.
        let Some(dnn) = self.fuses_batchnorm(g, ptr_mut(&stash)) else {
            let bn_state = (params, running, saved);
            checks::wide(g, edges)?;
            return rr_core::backend::conv2d_batchnorm_forward_unfused(self, (g, bn), training, (x, w, bias), keep, bn_state, stash, y);
        };
        // x goes into `keep` only where the kept backward will read it there (see conv2d_forward_keep).
        let keep = keep.filter(|_| self.keeping(g).is_some()).map(|k| ptr_mut(&k));
        let o = conv_bn::BnOperands { bias: ptr(&bias), params: ptr(&params), running: ptr_mut(&running), saved: ptr_mut(&saved) };
        self.conv2d_batchnorm_forward_dnn(dnn, (g, bn, edges), training, (&x, &w), keep, &o, (ptr_mut(&stash), ptr_mut(&y)))
    }

    fn conv2d_batchnorm_backward(
        &self,
        (g, bn): (&Conv2dGeom, &BatchNormGeom),
        edges: NarrowEdges,
        (x, kept, w): KeptConvInputs<'_, Self>,
        (stash, y, dy): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        (bias, params, saved): (View<'_, Self, f32>, View<'_, Self, f32>, View<'_, Self, f32>),
        dstash: ViewMut<'_, Self, f32>,
        (dx, add_dx): (Option<ViewMut<'_, Self, f32>>, bool),
        (dweight, scratch, dparams): (ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>, ViewMut<'_, Self, f32>),
    ) -> Result<()> {
        checks::conv2d_batchnorm(g, bn, stash.len)?;
        checks::batchnorm_backward(bn, stash.len, y.len, dy.len, params.len, saved.len, Some(dstash.len), dparams.len)?;
        checks::conv2d_backward(g, x.len, w.len, dstash.len, dx.as_ref().map(|d| d.len), scratch.len)?;
        check_len("conv2d_batchnorm_backward", "dweight", g.w_len(), dweight.len)?;
        if let Some(kept) = &kept {
            check_len("conv2d_batchnorm_backward", "kept", g.x_len().div_ceil(2), kept.len)?;
        }
        self.check_narrow(g, edges, [dx.as_ref().map_or(0, ptr_mut), ptr(&dy)])?;
        // The same test as the forward's: the stash holds what that forward left there.
        let Some(dnn) = self.fuses_batchnorm(g, ptr(&stash)) else {
            let grads = (dweight, scratch, dparams);
            checks::wide(g, edges)?;
            return rr_core::backend::conv2d_batchnorm_backward_unfused(
                self,
                (g, bn),
                (x, kept, w),
                (stash, y, dy),
                (bias, params, saved),
                dstash,
                (dx, add_dx),
                grads,
            );
        };
        // A narrow x is what cuDNN reads, its own kept copy, or a strided conv's subsample the forward kept.
        let kept = match kept.filter(|_| self.keeping(g).is_some()) {
            _ if edges.x && conv_dnn::cudnn_geom(g, dnn.1) == *g => Some(ptr(&x)),
            None if edges.x => {
                return Err(Error::shape(
                    "conv2d_batchnorm_backward",
                    "kept",
                    "the subsample of a narrow x from a training forward",
                    "none",
                ))
            }
            kept => kept.map(|k| ptr(&k)),
        };
        let o = conv_bn::BnOperands { bias: ptr(&bias), params: ptr(&params), running: 0, saved: ptr(&saved) };
        // y is not read: a fused ReLU's mask is recomputed from the stash.
        let tensors = [ptr(&stash), ptr(&dy)];
        let grads = (ptr_mut(&dweight), ptr_mut(&dparams));
        let dx = dx.as_ref().map(|dx| Dx { addr: ptr_mut(dx), add: add_dx, narrow: edges.x });
        self.conv2d_batchnorm_backward_dnn(dnn, (g, bn, edges.y), (&x, kept, &w), tensors, &o, ptr_mut(&dstash), dx, grads)
    }

    fn conv2d_batchnorm_adds_dx(&self, g: &Conv2dGeom, stash: View<'_, Self, f32>) -> bool {
        // The fused path widens dx from 16 bits: the widening adds in as cheaply as it writes.
        self.fuses_batchnorm(g, ptr(&stash)).is_some()
    }

    fn conv2d_batchnorm_narrow(&self, g: &Conv2dGeom) -> NarrowEdges {
        // The fused path's test (see fuses_batchnorm) for any batch; x as cuDNN reads it.
        match self.sixteen_bit(g).filter(|_| g.c_out.is_multiple_of(8)) {
            Some((_, p)) => NarrowEdges { x: conv_dnn::reads_narrow(g, p), y: true },
            None => NarrowEdges::WIDE,
        }
    }

    fn maxpool2d_forward(
        &self,
        g: &Pool2dGeom,
        x: View<'_, Self, f32>,
        y: ViewMut<'_, Self, f32>,
        argmax: ViewMut<'_, Self, u32>,
    ) -> Result<()> {
        checks::maxpool2d_forward(g, x.len, y.len, argmax.len)?;
        launch!(
            self,
            maxpool_forward,
            self.cfg(g.y_len()),
            ptr(&x),
            ptr_mut(&y),
            ptr_mut(&argmax),
            i32c(g.n * g.c)?,
            i32c(g.h)?,
            i32c(g.w)?,
            i32c(g.k)?,
            i32c(g.stride)?,
            i32c(g.pad)?,
            i32c(g.out_h())?,
            i32c(g.out_w())?,
            g.relu as i32
        )
    }

    fn maxpool2d_backward(
        &self,
        g: &Pool2dGeom,
        dy: View<'_, Self, f32>,
        argmax: View<'_, Self, u32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::maxpool2d_backward(g, dy.len, argmax.len, dx.len)?;
        let dxp = ptr_mut(&dx);
        if g.k == g.stride && g.pad == 0 {
            let (planes, h, w, k, _, _, oh, ow) = pool_args(g)?;
            return launch!(self, maxpool_backward_tiled, self.cfg(g.x_len()), ptr(&dy), ptr(&argmax), dxp, planes, h, w, k, oh, ow);
        }
        launch!(self, fill, self.cfg(g.x_len()), dxp, i32c(g.x_len())?, 0.0f32)?;
        launch!(self, maxpool_backward, self.cfg(g.y_len()), ptr(&dy), ptr(&argmax), dxp, i32c(g.y_len())?, i32c(g.x_len())?)
    }

    fn avgpool2d_forward(&self, g: &Pool2dGeom, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::avgpool2d("avgpool2d_forward", g, x.len, y.len)?;
        let (planes, h, w, k, s, p, oh, ow) = pool_args(g)?;
        launch!(self, avgpool_forward, self.cfg(g.y_len()), ptr(&x), ptr_mut(&y), planes, h, w, k, s, p, oh, ow)
    }

    fn avgpool2d_backward(&self, g: &Pool2dGeom, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::avgpool2d("avgpool2d_backward", g, dx.len, dy.len)?;
        let (planes, h, w, k, s, p, oh, ow) = pool_args(g)?;
        launch!(self, avgpool_backward, self.cfg(g.x_len()), ptr(&dy), ptr_mut(&dx), planes, h, w, k, s, p, oh, ow)
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
        let (n, c, hw) = (i32c(g.n)?, i32c(g.c)?, i32c(g.hw)?);
        let stats = if training {
            let (_guard, partial) = self.channel_partials(0, (g.n, g.c, g.hw), [ptr(&x), 0, 0, 0, 0], Activation::None)?;
            let m = i32c(g.n * g.hw)?;
            let (slices, finish) = (self.slices(g.n, g.c), self.cfg(g.c));
            launch!(self, bn_stats_finish, finish, partial, ptr_mut(&running), ptr_mut(&saved), c, slices, m, g.eps, g.momentum)?;
            ptr_mut(&saved)
        } else {
            ptr_mut(&running)
        };
        let v4 = vec4(g.hw, &[ptr(&x), ptr_mut(&y)]);
        launch!(
            self,
            bn_apply,
            self.cfg(groups(g.len(), v4)),
            ptr(&x),
            ptr(&params),
            stats,
            ptr_mut(&y),
            n,
            c,
            hw,
            g.eps,
            training as i32,
            g.act.code() as i32,
            v4 as i32
        )
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
        let (n, c, hw, act) = (i32c(g.n)?, i32c(g.c)?, i32c(g.hw)?, g.act.code() as i32);
        let tensors = [ptr(&x), ptr(&y), ptr(&dy), ptr(&saved), ptr(&params)];
        let (guard, partial) = self.channel_partials(1, (g.n, g.c, g.hw), tensors, g.act)?;
        launch!(self, channel_partials_finish, self.cfg(g.c), partial, ptr_mut(&dparams), c, self.slices(g.n, g.c), 1i32)?;
        drop(guard);
        match dx {
            Some(dx) if !g.is_empty() => {
                let v4 = vec4(g.hw, &[ptr(&x), ptr(&y), ptr(&dy), ptr_mut(&dx)]);
                launch!(
                    self,
                    bn_backward_dx,
                    self.cfg(groups(g.len(), v4)),
                    ptr(&x),
                    ptr(&y),
                    ptr(&dy),
                    ptr(&params),
                    ptr(&saved),
                    ptr_mut(&dparams),
                    ptr_mut(&dx),
                    n,
                    c,
                    hw,
                    act,
                    v4 as i32
                )
            }
            _ => Ok(()),
        }
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
        launch!(self, dropout_forward, self.cfg(x.len), ptr(&rng), ptr(&x), ptr_mut(&y), ptr_mut(&mask), i32c(x.len)?, spec.p, spec.salt)
    }

    fn dropout_backward(&self, mask: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::dropout_backward(mask.len, dy.len, dx.len)?;
        launch!(self, dropout_backward, self.cfg(mask.len), ptr(&mask), ptr(&dy), ptr_mut(&dx), i32c(mask.len)?)
    }

    fn augment(&self, spec: &AugmentSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::augment(spec, rng.len, x.len, y.len)?;
        if spec.is_empty() {
            return Ok(());
        }
        let args = AugmentArgs {
            n: i32c(spec.n)?,
            c: i32c(spec.c)?,
            h: i32c(spec.h)?,
            w: i32c(spec.w)?,
            rotate_rad: spec.rotate_deg.to_radians(),
            scale: spec.scale,
            translate: spec.translate,
            elastic: spec.elastic,
            flip: spec.flip as i32,
            noise: spec.noise,
            fill: spec.fill,
            salt: spec.salt,
        };
        launch!(self, augment, self.cfg(spec.n * spec.h * spec.w), ptr(&rng), ptr(&x), ptr_mut(&y), args)
    }

    fn crop_flip(&self, spec: &CropSpec, rng: View<'_, Self, u32>, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::crop_flip(spec, rng.len, x.len, y.len)?;
        if spec.is_empty() {
            return Ok(());
        }
        i32c(spec.len())?;
        let ([flip, steps_per_epoch], (fixed_dy, fixed_dx)) = (spec.flip.kernel_args(), spec.fixed.unwrap_or((0, 0)));
        let args = CropArgs {
            n: i32c(spec.n)?,
            c: i32c(spec.c)?,
            h: i32c(spec.h)?,
            w: i32c(spec.w)?,
            pad: i32c(spec.pad)?,
            reflect: (spec.padding == Padding::Reflect) as i32,
            flip: flip as i32,
            cutout: i32c(spec.cutout)?,
            salt: spec.salt,
            steps_per_epoch,
            fixed: spec.fixed.is_some() as i32,
            fixed_dy: i32c(fixed_dy)?,
            fixed_dx: i32c(fixed_dx)?,
        };
        launch!(self, crop_flip, self.cfg(spec.n * spec.h * spec.w), ptr(&rng), ptr(&x), ptr_mut(&y), args)
    }

    fn add(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        if a.len == 0 {
            return Ok(());
        }
        launch!(self, add, self.cfg(a.len), ptr(&a), ptr(&b), ptr_mut(&y), i32c(a.len)?, 0i32)
    }

    fn add_relu(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        if a.len == 0 {
            return Ok(());
        }
        launch!(self, add, self.cfg(a.len), ptr(&a), ptr(&b), ptr_mut(&y), i32c(a.len)?, 1i32)
    }

    fn add_assign(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add_assign(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        launch!(self, add_assign, self.cfg(x.len), ptr(&x), ptr_mut(&y), i32c(x.len)?)
    }

    fn narrow_residuals(&self) -> bool {
        self.narrow_precision().is_some()
    }

    fn global_avgpool_narrow_forward(&self, nchw: (usize, usize, usize), x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::global_avgpool(nchw, x.len, y.len)?;
        let p = self.narrow_precision().ok_or_else(|| checks::no_narrow("global_avgpool"))?;
        let (n, c, hw) = (i32c(nchw.0)?, i32c(nchw.1)?, i32c(nchw.2)?);
        launch!(self, global_avgpool16, self.cfg(y.len), ptr(&x), ptr_mut(&y), n, c, hw, conv_dnn::half(p))
    }

    fn global_avgpool_narrow_backward(
        &self,
        nchw: (usize, usize, usize),
        dy: View<'_, Self, f32>,
        dx: ViewMut<'_, Self, f32>,
    ) -> Result<()> {
        checks::global_avgpool(nchw, dx.len, dy.len)?;
        let p = self.narrow_precision().ok_or_else(|| checks::no_narrow("global_avgpool_backward"))?;
        let (n, c, hw) = (i32c(nchw.0)?, i32c(nchw.1)?, i32c(nchw.2)?);
        launch!(self, global_avgpool16_backward, self.cfg(dx.len), ptr(&dy), ptr_mut(&dx), n, c, hw, conv_dnn::half(p))
    }

    fn add_relu_narrow(&self, a: View<'_, Self, f32>, b: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add(a.len, b.len, y.len)?;
        let (cfg, half, vec) = self.narrow_elementwise("add_relu", a.len, [ptr(&a), ptr(&b), ptr_mut(&y)])?;
        launch!(self, add_relu16, cfg, ptr(&a), ptr(&b), ptr_mut(&y), i32c(a.len)?, half, vec)
    }

    fn relu_backward_narrow(&self, y: View<'_, Self, f32>, dy: View<'_, Self, f32>, dx: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::relu_backward(y.len, dy.len, dx.len)?;
        let (cfg, half, vec) = self.narrow_elementwise("relu_backward", y.len, [ptr(&y), ptr(&dy), ptr_mut(&dx)])?;
        launch!(self, relu_backward16, cfg, ptr(&y), ptr(&dy), ptr_mut(&dx), i32c(y.len)?, half, vec)
    }

    fn add_assign_narrow(&self, x: View<'_, Self, f32>, y: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::add_assign(x.len, y.len)?;
        let (cfg, half, vec) = self.narrow_elementwise("add_assign", x.len, [ptr(&x), ptr_mut(&y), ptr_mut(&y)])?;
        launch!(self, add_assign16, cfg, ptr(&x), ptr_mut(&y), i32c(x.len)?, half, vec)
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
        let (d, write) = dlogits.as_ref().map_or((0u64, 0i32), |d| (ptr_mut(d), 1));
        let cfg = LaunchConfig { grid_dim: ((n as u32).div_ceil(BLOCK), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(
            self,
            softmax_cross_entropy,
            cfg,
            ptr(&logits),
            ptr(&labels),
            d,
            ptr_mut(&stats),
            i32c(n)?,
            i32c(classes)?,
            smoothing,
            grad_scale,
            write
        )
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
        let n = i32c(params.len)?;
        let cfg = self.cfg(params.len);
        match *rule {
            UpdateRule::Sgd { momentum, nesterov, weight_decay } => {
                launch!(
                    self,
                    sgd_step,
                    cfg,
                    ptr_mut(&params),
                    ptr(&grads),
                    ptr_mut(&state),
                    ptr(&hyper),
                    n,
                    momentum,
                    nesterov as i32,
                    weight_decay
                )
            }
            UpdateRule::Adam { beta1, beta2, eps, weight_decay, decoupled } => launch!(
                self,
                adam_step,
                cfg,
                ptr_mut(&params),
                ptr(&grads),
                ptr_mut(&state),
                ptr(&hyper),
                n,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled as i32
            ),
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
        // Same arithmetic as the reference: px * (1 / (255 std[c])) - mean[c] / std[c].
        let norm = GatherNorm::new(spec);
        i32c(spec.n * spec.sample_len)?;
        let cfg = LaunchConfig { grid_dim: (spec.n as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(
            self,
            gather_batch,
            cfg,
            ptr(&images),
            ptr(&labels),
            ptr(&indices),
            ptr_mut(&x),
            ptr_mut(&y),
            i32c(spec.n)?,
            i32c(spec.channels)?,
            i32c(spec.plane())?,
            i32c(labels.len)?,
            norm
        )
    }

    // ---- dynamic loss scaling (kernels/loss_scale.cu) ----
    fn loss_scale_dlogits(&self, state: View<'_, Self, f32>, x: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_state("loss_scale_dlogits", state.len)?;
        launch!(self, loss_scale_dlogits, self.cfg(x.len), ptr(&state), ptr_mut(&x), i32c(x.len)?)
    }

    fn loss_scale_unscale(&self, state: ViewMut<'_, Self, f32>, grads: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_state("loss_scale_unscale", state.len)?;
        launch!(self, loss_scale_unscale, self.cfg(grads.len), ptr_mut(&state), ptr_mut(&grads), i32c(grads.len)?)
    }

    fn loss_scale_update(&self, spec: &ScaleUpdate, state: ViewMut<'_, Self, f32>) -> Result<()> {
        checks::loss_scale_update(spec, state.len)?;
        let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
        launch!(self, loss_scale_update, one, ptr_mut(&state), spec.growth, spec.backoff, i32c(spec.growth_interval as usize)?)
    }
}
