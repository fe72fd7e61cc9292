//! Convolutions on tensor cores through cuDNN (loaded at run time, like the
//! driver; without it the backend keeps its own fp32 kernels).
//!
//! Activations stay fp32 between ops. For bf16 and fp16 a convolution rounds
//! its inputs to 16 bits, runs cuDNN's tensor-core algorithms with fp32
//! accumulation, and widens the result back (the bias added in the same pass).
//! For fp16 (5 exponent bits), a value beyond 65504 becomes infinite and one
//! below 2^-24 becomes 0: training scales its loss so that gradients stay in
//! range and skips the steps whose gradients overflowed (rr_core::loss_scale).
//! For tf32, cuDNN reads and writes the fp32 tensors directly.
//!
//! A plan (descriptors and algorithms) is made once per shape and precision and
//! cached. Each algorithm is the fastest cuDNN measures on the first call's
//! operands (as PyTorch's `cudnn.benchmark`); under graph capture, where timing
//! is not allowed, cuDNN's heuristics choose instead.

use crate::{device_err, CudaBackend, CudaBuf};
use cudarc::cudnn::{result as dnn, sys};
use rr_core::backend::Conv2dGeom;
use rr_core::{Precision, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// The algorithms' workspace: allocated once, before any graph is recorded;
/// algorithms that need more are passed over.
pub(crate) const WORKSPACE: usize = 256 << 20;

pub(crate) struct Cudnn {
    handle: sys::cudnnHandle_t,
    plans: Mutex<HashMap<(Conv2dGeom, Precision), Arc<Plan>>>,
    /// 16-bit copies of operands and the algorithms' workspace, grown on demand.
    scratch: Mutex<Slots>,
}

// SAFETY: the handle is only used on the backend's one stream, under `scratch`'s lock.
unsafe impl Send for Cudnn {}
unsafe impl Sync for Cudnn {}

impl Drop for Cudnn {
    fn drop(&mut self) {
        // SAFETY: created in `open` and destroyed once.
        let _ = unsafe { dnn::destroy_handle(self.handle) };
    }
}

pub(crate) struct Plan {
    pub x: sys::cudnnTensorDescriptor_t,
    pub y: sys::cudnnTensorDescriptor_t,
    pub w: sys::cudnnFilterDescriptor_t,
    pub conv: sys::cudnnConvolutionDescriptor_t,
    /// 16-bit operands are channels-last (NHWC), the layout tensor cores read;
    /// fp32 ones (tf32) stay NCHW.
    pub channels_last: bool,
    /// The shape and precision, for `RR_CUDNN_LOG`.
    label: String,
    fwd: OnceLock<sys::cudnnConvolutionFwdAlgo_t>,
    bwd_data: OnceLock<sys::cudnnConvolutionBwdDataAlgo_t>,
    bwd_filter: OnceLock<sys::cudnnConvolutionBwdFilterAlgo_t>,
}

// SAFETY: descriptors are immutable after `Plan::new`; cuDNN only reads them.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created in `Plan::new` and is destroyed once.
        unsafe {
            let _ = dnn::destroy_tensor_descriptor(self.x);
            let _ = dnn::destroy_tensor_descriptor(self.y);
            let _ = dnn::destroy_filter_descriptor(self.w);
            let _ = dnn::destroy_convolution_descriptor(self.conv);
        }
    }
}

fn dnn_err(what: &str, e: impl std::fmt::Debug) -> rr_core::Error {
    device_err(format!("cuDNN {what}: {e:?}"))
}

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| device_err(format!("cuDNN: size {v} does not fit in 32 bits")))
}

/// The element type cuDNN sees for a precision.
fn data_type(p: Precision) -> sys::cudnnDataType_t {
    match p {
        Precision::Fp32 | Precision::Tf32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        Precision::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        Precision::Fp16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
    }
}

/// Raw device addresses of a convolution's operands, for timing algorithms
/// (outputs are overwritten) and running them.
pub(crate) struct Operands {
    pub x: u64,
    pub w: u64,
    pub y: u64,
    pub workspace: u64,
}

impl Plan {
    fn new(g: &Conv2dGeom, p: Precision) -> Result<Self> {
        let dt = data_type(p);
        let channels_last = matches!(p, Precision::Bf16 | Precision::Fp16);
        let format = if channels_last { sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC } else { sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW };
        // SAFETY: descriptors are created before they are set and owned by the plan.
        unsafe {
            let plan = Plan {
                x: dnn::create_tensor_descriptor().map_err(|e| dnn_err("tensor descriptor", e))?,
                y: dnn::create_tensor_descriptor().map_err(|e| dnn_err("tensor descriptor", e))?,
                w: dnn::create_filter_descriptor().map_err(|e| dnn_err("filter descriptor", e))?,
                conv: dnn::create_convolution_descriptor().map_err(|e| dnn_err("convolution descriptor", e))?,
                channels_last,
                label: format!("{g:?} at {p}"),
                fwd: OnceLock::new(),
                bwd_data: OnceLock::new(),
                bwd_filter: OnceLock::new(),
            };
            let set = |what: &str, r: std::result::Result<(), dnn::CudnnError>| r.map_err(|e| dnn_err(what, e));
            set("x descriptor", dnn::set_tensor4d_descriptor(plan.x, format, dt, [int(g.n)?, int(g.c_in)?, int(g.h)?, int(g.w)?]))?;
            let y_dims = [int(g.n)?, int(g.c_out)?, int(g.out_h())?, int(g.out_w())?];
            set("y descriptor", dnn::set_tensor4d_descriptor(plan.y, format, dt, y_dims))?;
            set(
                "filter descriptor",
                dnn::set_filter4d_descriptor(plan.w, dt, format, [int(g.c_out)?, int(g.c_in)?, int(g.k)?, int(g.k)?]),
            )?;
            let (pad, stride) = (int(g.pad)?, int(g.stride)?);
            let cross = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
            let compute = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
            set("convolution descriptor", dnn::set_convolution2d_descriptor(plan.conv, pad, pad, stride, stride, 1, 1, cross, compute))?;
            let math = match p {
                Precision::Fp32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
                _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            };
            set("math type", dnn::set_convolution_math_type(plan.conv, math))?;
            Ok(plan)
        }
    }

    /// The forward algorithm: timed by cuDNN on these operands the first time
    /// (outside graph capture, which timing would break), else its heuristics.
    pub unsafe fn forward_algo(&self, h: sys::cudnnHandle_t, o: &Operands, capturing: bool) -> Result<sys::cudnnConvolutionFwdAlgo_t> {
        if let Some(a) = self.fwd.get() {
            return Ok(*a);
        }
        let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; ALGOS] = std::mem::zeroed();
        let mut count = 0;
        let status = if capturing {
            sys::cudnnGetConvolutionForwardAlgorithm_v7(h, self.x, self.w, self.conv, self.y, ALGOS as i32, &mut count, perf.as_mut_ptr())
        } else {
            sys::cudnnFindConvolutionForwardAlgorithmEx(
                h,
                self.x,
                vp(o.x),
                self.w,
                vp(o.w),
                self.conv,
                self.y,
                vm(o.y),
                ALGOS as i32,
                &mut count,
                perf.as_mut_ptr(),
                vm(o.workspace),
                WORKSPACE,
            )
        };
        status.result().map_err(|e| dnn_err("forward algorithm search", e))?;
        let i = pick(&perf[..count as usize], |p| (p.algo as i32, p.time, p.memory, p.status), (&self.label, "forward", capturing))?;
        Ok(*self.fwd.get_or_init(|| perf[i].algo))
    }

    /// The backward-data algorithm (as [`Plan::forward_algo`]); `o.x` is dx, `o.y` is dy.
    pub unsafe fn backward_data_algo(
        &self,
        h: sys::cudnnHandle_t,
        o: &Operands,
        capturing: bool,
    ) -> Result<sys::cudnnConvolutionBwdDataAlgo_t> {
        if let Some(a) = self.bwd_data.get() {
            return Ok(*a);
        }
        let mut perf: [sys::cudnnConvolutionBwdDataAlgoPerf_t; ALGOS] = std::mem::zeroed();
        let mut count = 0;
        let status = if capturing {
            sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                h,
                self.w,
                self.y,
                self.conv,
                self.x,
                ALGOS as i32,
                &mut count,
                perf.as_mut_ptr(),
            )
        } else {
            sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                h,
                self.w,
                vp(o.w),
                self.y,
                vp(o.y),
                self.conv,
                self.x,
                vm(o.x),
                ALGOS as i32,
                &mut count,
                perf.as_mut_ptr(),
                vm(o.workspace),
                WORKSPACE,
            )
        };
        status.result().map_err(|e| dnn_err("backward-data algorithm search", e))?;
        let i = pick(&perf[..count as usize], |p| (p.algo as i32, p.time, p.memory, p.status), (&self.label, "backward data", capturing))?;
        Ok(*self.bwd_data.get_or_init(|| perf[i].algo))
    }

    /// The backward-filter algorithm (as [`Plan::forward_algo`]); `o.w` is dw, `o.y` is dy.
    pub unsafe fn backward_filter_algo(
        &self,
        h: sys::cudnnHandle_t,
        o: &Operands,
        capturing: bool,
    ) -> Result<sys::cudnnConvolutionBwdFilterAlgo_t> {
        if let Some(a) = self.bwd_filter.get() {
            return Ok(*a);
        }
        let mut perf: [sys::cudnnConvolutionBwdFilterAlgoPerf_t; ALGOS] = std::mem::zeroed();
        let mut count = 0;
        let status = if capturing {
            sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                h,
                self.x,
                self.y,
                self.conv,
                self.w,
                ALGOS as i32,
                &mut count,
                perf.as_mut_ptr(),
            )
        } else {
            sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h,
                self.x,
                vp(o.x),
                self.y,
                vp(o.y),
                self.conv,
                self.w,
                vm(o.w),
                ALGOS as i32,
                &mut count,
                perf.as_mut_ptr(),
                vm(o.workspace),
                WORKSPACE,
            )
        };
        status.result().map_err(|e| dnn_err("backward-filter algorithm search", e))?;
        let i =
            pick(&perf[..count as usize], |p| (p.algo as i32, p.time, p.memory, p.status), (&self.label, "backward filter", capturing))?;
        Ok(*self.bwd_filter.get_or_init(|| perf[i].algo))
    }
}

const ALGOS: usize = 8;

fn vp(p: u64) -> *const c_void {
    p as *const c_void
}

fn vm(p: u64) -> *mut c_void {
    p as *mut c_void
}

/// Index of the fastest usable result (cuDNN sorts them fastest first); `key`
/// gives each one's (algorithm, time, workspace, status). With `RR_CUDNN_LOG`
/// set, prints what cuDNN offered for this shape and direction and which one was taken.
fn pick<T>(
    results: &[T],
    key: impl Fn(&T) -> (i32, f32, usize, sys::cudnnStatus_t),
    (label, what, heuristic): (&str, &str, bool),
) -> Result<usize> {
    let ok = |&(_, _, memory, status): &(i32, f32, usize, sys::cudnnStatus_t)| {
        status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && memory <= WORKSPACE
    };
    let picked = results.iter().position(|r| ok(&key(r)));
    static LOG: OnceLock<bool> = OnceLock::new();
    if *LOG.get_or_init(|| std::env::var_os("RR_CUDNN_LOG").is_some()) {
        eprintln!("cudnn {what} {label}: {}", if heuristic { "heuristics (graph capture)" } else { "timed" });
        for (i, (algo, ms, bytes, status)) in results.iter().map(&key).enumerate() {
            let mark = if Some(i) == picked { "<- taken" } else { "" };
            eprintln!("  algo {algo:2} {ms:9.4} ms {:8.1} MB {status:?} {mark}", bytes as f64 / 1e6);
        }
    }
    picked.ok_or_else(|| dnn_err(what, "no algorithm fits"))
}

/// Device buffers reused across calls. Outgrown ones are kept, not freed:
/// a recorded CUDA graph may still use them.
#[derive(Default)]
pub(crate) struct Slots {
    bufs: Vec<Option<CudaBuf<u8>>>,
    retired: Vec<CudaBuf<u8>>,
}

impl Cudnn {
    /// Opens cuDNN on the backend's stream; `Ok(None)` when the library is not installed.
    pub fn open(stream: &cudarc::driver::CudaStream) -> Result<Option<Self>> {
        // SAFETY: only tries to dlopen the candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Ok(None);
        }
        let handle = dnn::create_handle().map_err(|e| dnn_err("create", e))?;
        // SAFETY: the handle was just created; the stream outlives the backend's use of it.
        unsafe { dnn::set_stream(handle, stream.cu_stream() as sys::cudaStream_t) }.map_err(|e| dnn_err("set stream", e))?;
        Ok(Some(Cudnn { handle, plans: Mutex::new(HashMap::new()), scratch: Mutex::new(Slots::default()) }))
    }

    pub fn version() -> usize {
        dnn::get_version()
    }

    pub fn handle(&self) -> sys::cudnnHandle_t {
        self.handle
    }

    pub fn plan(&self, g: &Conv2dGeom, p: Precision) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&(*g, p)) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(Plan::new(g, p)?);
        plans.insert((*g, p), plan.clone());
        Ok(plan)
    }

    /// Device buffers of at least `bytes[i]` bytes each. Hold the guard until
    /// every op using them is enqueued (the stream runs in order).
    pub fn slots(&self, backend: &CudaBackend, bytes: &[usize]) -> Result<(std::sync::MutexGuard<'_, Slots>, Vec<u64>)> {
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if s.bufs.len() < bytes.len() {
            s.bufs.resize_with(bytes.len(), || None);
        }
        let mut ptrs = Vec::with_capacity(bytes.len());
        for (i, &want) in bytes.iter().enumerate() {
            // A slot this call does not use: nothing to allocate (which could happen during graph capture).
            if want == 0 {
                ptrs.push(0);
                continue;
            }
            if s.bufs[i].as_ref().is_none_or(|b| b.len < want) {
                let old = s.bufs[i].replace(backend.alloc_bytes::<u8>(want.next_multiple_of(256))?);
                s.retired.extend(old);
            }
            ptrs.push(s.bufs[i].as_ref().map_or(0, |b| b.ptr));
        }
        Ok((s, ptrs))
    }
}
