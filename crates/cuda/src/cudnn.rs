//! Convolutions on tensor cores through cuDNN (loaded at run time, like the
//! driver; without it the backend keeps its own fp32 kernels).
//!
//! Activations stay fp32 between ops. For bf16 and fp16 a convolution rounds
//! its inputs to 16 bits, runs cuDNN's tensor-core algorithms with fp32
//! accumulation, and widens the result back (the bias added in the same pass).
//! For fp16, every narrowed tensor is scaled by a power of two that puts its
//! largest magnitude near 2^14 (found on the device, nothing read back), so
//! gradients neither underflow nor overflow; the result is unscaled exactly.
//! For tf32, cuDNN reads and writes the fp32 tensors directly.
//!
//! A plan (descriptors and algorithms) is made once per shape and precision and
//! cached; algorithms come from cuDNN's heuristics (no timing runs, so a plan can
//! be made anywhere, even while a CUDA graph is being recorded).

use crate::{device_err, CudaBackend, CudaBuf};
use cudarc::cudnn::{result as dnn, sys};
use rr_core::backend::Conv2dGeom;
use rr_core::{Precision, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Workspace beyond this is not worth it: algorithms needing more are passed over.
const MAX_WORKSPACE: usize = 1 << 30;

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
    pub fwd: sys::cudnnConvolutionFwdAlgo_t,
    pub bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    pub bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    /// Bytes of workspace the largest of the three algorithms needs.
    pub workspace: usize,
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

impl Plan {
    fn new(handle: sys::cudnnHandle_t, g: &Conv2dGeom, p: Precision) -> Result<Self> {
        let dt = data_type(p);
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // SAFETY: descriptors are created before they are set and owned by the plan.
        unsafe {
            let plan = Plan {
                x: dnn::create_tensor_descriptor().map_err(|e| dnn_err("tensor descriptor", e))?,
                y: dnn::create_tensor_descriptor().map_err(|e| dnn_err("tensor descriptor", e))?,
                w: dnn::create_filter_descriptor().map_err(|e| dnn_err("filter descriptor", e))?,
                conv: dnn::create_convolution_descriptor().map_err(|e| dnn_err("convolution descriptor", e))?,
                fwd: sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                bwd_data: sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                workspace: 0,
            };
            let set = |what: &str, r: std::result::Result<(), dnn::CudnnError>| r.map_err(|e| dnn_err(what, e));
            set("x descriptor", dnn::set_tensor4d_descriptor(plan.x, nchw, dt, [int(g.n)?, int(g.c_in)?, int(g.h)?, int(g.w)?]))?;
            set(
                "y descriptor",
                dnn::set_tensor4d_descriptor(plan.y, nchw, dt, [int(g.n)?, int(g.c_out)?, int(g.out_h())?, int(g.out_w())?]),
            )?;
            set("filter descriptor", dnn::set_filter4d_descriptor(plan.w, dt, nchw, [int(g.c_out)?, int(g.c_in)?, int(g.k)?, int(g.k)?]))?;
            let (pad, stride) = (int(g.pad)?, int(g.stride)?);
            let cross = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
            let compute = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
            set("convolution descriptor", dnn::set_convolution2d_descriptor(plan.conv, pad, pad, stride, stride, 1, 1, cross, compute))?;
            let math = match p {
                Precision::Fp32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
                _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            };
            set("math type", dnn::set_convolution_math_type(plan.conv, math))?;
            plan.choose_algorithms(handle)
        }
    }

    /// The fastest algorithm of each pass by cuDNN's heuristics that runs with
    /// at most MAX_WORKSPACE bytes, preferring deterministic ones.
    unsafe fn choose_algorithms(mut self, handle: sys::cudnnHandle_t) -> Result<Self> {
        const N: usize = 8;
        let mut count = 0;
        let mut fwd: [sys::cudnnConvolutionFwdAlgoPerf_t; N] = std::mem::zeroed();
        dnn::get_convolution_forward_algorithm(handle, self.x, self.w, self.conv, self.y, N as i32, &mut count, fwd.as_mut_ptr())
            .map_err(|e| dnn_err("forward algorithm", e))?;
        let f = pick(&fwd[..count as usize], |p| (p.status, p.memory, p.determinism)).ok_or_else(|| dnn_err("forward", "no algorithm"))?;
        self.fwd = fwd[f].algo;
        let mut bd: [sys::cudnnConvolutionBwdDataAlgoPerf_t; N] = std::mem::zeroed();
        sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, self.w, self.y, self.conv, self.x, N as i32, &mut count, bd.as_mut_ptr())
            .result()
            .map_err(|e| dnn_err("backward-data algorithm", e))?;
        let d =
            pick(&bd[..count as usize], |p| (p.status, p.memory, p.determinism)).ok_or_else(|| dnn_err("backward data", "no algorithm"))?;
        self.bwd_data = bd[d].algo;
        let mut bf: [sys::cudnnConvolutionBwdFilterAlgoPerf_t; N] = std::mem::zeroed();
        dnn::get_convolution_backward_filter_algorithm(handle, self.x, self.y, self.conv, self.w, N as i32, &mut count, bf.as_mut_ptr())
            .map_err(|e| dnn_err("backward-filter algorithm", e))?;
        let w = pick(&bf[..count as usize], |p| (p.status, p.memory, p.determinism))
            .ok_or_else(|| dnn_err("backward filter", "no algorithm"))?;
        self.bwd_filter = bf[w].algo;
        self.workspace = fwd[f].memory.max(bd[d].memory).max(bf[w].memory);
        Ok(self)
    }
}

/// Index of the first (fastest) usable result, deterministic ones first.
fn pick<T>(results: &[T], key: impl Fn(&T) -> (sys::cudnnStatus_t, usize, sys::cudnnDeterminism_t)) -> Option<usize> {
    let usable = |i: &usize| {
        let (status, memory, _) = key(&results[*i]);
        status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && memory <= MAX_WORKSPACE
    };
    let deterministic = |i: &usize| key(&results[*i]).2 == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC;
    let first = (0..results.len()).find(usable)?;
    // A deterministic algorithm among the two fastest is worth taking.
    Some((first..results.len().min(first + 2)).filter(usable).find(deterministic).unwrap_or(first))
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
        let plan = Arc::new(Plan::new(self.handle, g, p)?);
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
            if s.bufs[i].as_ref().is_none_or(|b| b.len < want) {
                let old = s.bufs[i].replace(backend.alloc_bytes::<u8>(want.next_multiple_of(256))?);
                s.retired.extend(old);
            }
            ptrs.push(s.bufs[i].as_ref().map_or(0, |b| b.ptr));
        }
        Ok((s, ptrs))
    }
}
