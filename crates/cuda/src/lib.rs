//! The CUDA backend. Kernels are `.cu` files in `kernels/` (one per op family),
//! compiled once per process with NVRTC for the device's architecture; dense
//! products go through cuBLAS (plain fp32: no TF32, so results match the CPU
//! within 1e-5). Everything is enqueued on one stream and nothing waits for the
//! GPU except `download` / `synchronize`. The driver, NVRTC and cuBLAS are
//! loaded at run time, so this crate builds, and the CLI runs, without CUDA.

mod cudnn;
mod ops;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use rr_core::{Elem, Error, Result, Storage, View, ViewMut};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Kernel sources, compiled together as one NVRTC program.
const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("conv.cu", include_str!("../kernels/conv.cu")),
    ("pool.cu", include_str!("../kernels/pool.cu")),
    ("loss.cu", include_str!("../kernels/loss.cu")),
    ("optim.cu", include_str!("../kernels/optim.cu")),
    ("data.cu", include_str!("../kernels/data.cu")),
    ("gemm.cu", include_str!("../kernels/gemm.cu")),
    ("norm.cu", include_str!("../kernels/norm.cu")),
    ("random.cu", include_str!("../kernels/random.cu")),
    ("precision.cu", include_str!("../kernels/precision.cu")),
    ("norm16.cu", include_str!("../kernels/norm16.cu")),
    ("narrow.cu", include_str!("../kernels/narrow.cu")),
    // dynamic loss scaling
    ("loss_scale.cu", include_str!("../kernels/loss_scale.cu")),
];

fn device_err(msg: impl std::fmt::Display) -> Error {
    Error::Device { backend: "cuda", msg: msg.to_string() }
}

/// Checks that the CUDA driver, NVRTC and cuBLAS libraries can be opened,
/// and says which one is missing and where it was looked for if not.
/// (cudarc would panic on first use of a missing library; this never does.)
pub fn check_libraries() -> Result<()> {
    // SAFETY: these only try to dlopen the candidate names.
    let present = unsafe {
        [
            ("CUDA driver", "cuda", cudarc::driver::sys::is_culib_present()),
            ("NVRTC", "nvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("cuBLAS", "cublas", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    for (what, lib, ok) in present {
        if !ok {
            let mut names = cudarc::get_lib_name_candidates(lib);
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            return Err(device_err(format!(
                "the {what} library was not found (searched the dynamic-linker path, LD_LIBRARY_PATH included, for {}); install the NVIDIA driver{}",
                names.join(", "),
                if lib == "cuda" { "" } else { " and the CUDA 13 runtime libraries (NVRTC, cuBLAS)" }
            )));
        }
    }
    Ok(())
}

/// A device buffer of `len` elements of `T` (stored as bytes so one type
/// serves every element type).
pub struct CudaBuf<T> {
    bytes: CudaSlice<u8>,
    ptr: u64,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T> Storage for CudaBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
}

impl<T> Drop for CudaBuf<T> {
    fn drop(&mut self) {
        ALLOCATED.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Device bytes held by live buffers now, and the most ever held, this process.
pub fn allocated_bytes() -> (usize, usize) {
    (ALLOCATED.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

/// Compiled kernels.
struct Kernels {
    _module: Arc<CudaModule>,
    fill: CudaFunction,
    relu_forward: CudaFunction,
    relu_backward: CudaFunction,
    gelu_forward: CudaFunction,
    gelu_backward: CudaFunction,
    axpby: CudaFunction,
    add: CudaFunction,
    add_assign: CudaFunction,
    bias_rows: CudaFunction,
    column_sums: CudaFunction,
    im2col_ones: CudaFunction,
    conv_grad_reduce: CudaFunction,
    conv2d_direct: CudaFunction,
    conv2d_forward_smem: CudaFunction,
    col2im: CudaFunction,
    maxpool_forward: CudaFunction,
    maxpool_backward: CudaFunction,
    maxpool_backward_tiled: CudaFunction,
    softmax_cross_entropy: CudaFunction,
    sgd_step: CudaFunction,
    gemm_small: CudaFunction,
    adam_step: CudaFunction,
    gather_batch: CudaFunction,
    bias_channels: CudaFunction,
    avgpool_forward: CudaFunction,
    avgpool_backward: CudaFunction,
    channel_partials: CudaFunction,
    bn_stats_finish: CudaFunction,
    channel_partials_finish: CudaFunction,
    bn_apply: CudaFunction,
    bn_backward_dx: CudaFunction,
    dropout_forward: CudaFunction,
    dropout_backward: CudaFunction,
    augment: CudaFunction,
    crop_flip: CudaFunction,
    narrow_to_nhwc: CudaFunction,
    widen_from_nhwc: CudaFunction,
    maxpool_from_nhwc16: CudaFunction,
    scale_to_norm: CudaFunction,
    maxpool_backward_to_nhwc16: CudaFunction,
    narrow_to_nhwc_strided: CudaFunction,
    narrow_to_nhwc_x8: CudaFunction,
    widen_from_nhwc_x8: CudaFunction,
    bn16_stat_partials: CudaFunction,
    bn16_grad_partials_nhwc: CudaFunction,
    add_relu16: CudaFunction,
    relu_backward16: CudaFunction,
    add_assign16: CudaFunction,
    subsample_nhwc16: CudaFunction,
    unsample_nhwc16: CudaFunction,
    global_avgpool16: CudaFunction,
    global_avgpool16_backward: CudaFunction,
    bn16_grad_partials: CudaFunction,
    bn16_stats_finish: CudaFunction,
    bn16_grads_finish: CudaFunction,
    bn16_apply: CudaFunction,
    bn16_backward_dx: CudaFunction,
    widen_to_nchw_strided: CudaFunction,
    // dynamic loss scaling
    loss_scale_dlogits: CudaFunction,
    loss_scale_unscale: CudaFunction,
    loss_scale_update: CudaFunction,
}

/// Scratch space reused across ops (im2col columns, transposed activations).
#[derive(Default)]
pub(crate) struct Scratch {
    a: Option<CudaBuf<f32>>,
    b: Option<CudaBuf<f32>>,
    retired: Vec<CudaBuf<f32>>,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    scratch: Mutex<Scratch>,
    name: String,
    sms: u32,
    /// cuDNN, when installed: convolutions on tensor cores.
    dnn: Option<cudnn::Cudnn>,
    /// The precision of convolutions and products (a `Precision` index).
    precision: std::sync::atomic::AtomicU8,
}

impl CudaBackend {
    /// Opens device `ordinal`: checks the libraries, creates a context and a
    /// stream, and compiles the kernels for the device's architecture.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_libraries()?;
        let count = CudaContext::device_count().map_err(|e| device_err(format!("cannot query devices: {e}")))?;
        if count <= 0 {
            return Err(device_err("the driver loaded but reports no CUDA device"));
        }
        if ordinal >= count as usize {
            return Err(device_err(format!("no device cuda:{ordinal}: {count} device(s) present (cuda:0..cuda:{})", count - 1)));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| device_err(format!("cannot create a context on cuda:{ordinal}: {e}")))?;
        // One stream, in order: cudarc's cross-stream event tracking is not needed.
        // SAFETY: no buffer of this context is used from another stream.
        unsafe { ctx.disable_event_tracking() };
        // A real stream (not the legacy default stream): graphs can be captured on it.
        let stream = ctx.new_stream().map_err(|e| device_err(format!("cannot create a stream: {e}")))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| device_err(format!("cuBLAS: {e}")))?;
        let (major, minor) = ctx.compute_capability().map_err(device_err)?;
        let k = compile_kernels(&ctx, major, minor)?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let dnn = cudnn::Cudnn::open(&stream)?;
        let sms = ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_or(80, |v| v as u32);
        Ok(CudaBackend {
            name: format!("cuda:{ordinal} ({gpu}, sm_{major}{minor})"),
            ctx,
            stream,
            blas,
            k,
            scratch: Mutex::new(Scratch::default()),
            sms,
            dnn,
            precision: std::sync::atomic::AtomicU8::new(0),
        })
    }

    /// The cuDNN version in use, if cuDNN was found (e.g. 91000 for 9.10.0).
    pub fn cudnn_version(&self) -> Option<usize> {
        self.dnn.as_ref().map(|_| cudnn::Cudnn::version())
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn alloc_bytes<T>(&self, len: usize) -> Result<CudaBuf<T>> {
        let bytes = (len * std::mem::size_of::<T>()).max(4);
        let slice = self.stream.alloc_zeros::<u8>(bytes).map_err(|e| device_err(format!("cannot allocate {bytes} bytes: {e}")))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(&self.stream);
            p
        };
        let now = ALLOCATED.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK.fetch_max(now, Ordering::Relaxed);
        Ok(CudaBuf { bytes: slice, ptr, len, _elem: PhantomData })
    }
}

/// Device address of a view's first element.
fn ptr<T: Elem>(v: &View<'_, CudaBackend, T>) -> u64 {
    v.buf.ptr + (v.offset * std::mem::size_of::<T>()) as u64
}

fn ptr_mut<T: Elem>(v: &ViewMut<'_, CudaBackend, T>) -> u64 {
    v.buf.ptr + (v.offset * std::mem::size_of::<T>()) as u64
}

fn compile_kernels(ctx: &Arc<CudaContext>, major: i32, minor: i32) -> Result<Kernels> {
    let common = KERNEL_SOURCES[0].1;
    let mut src = String::from("#define INFINITY __int_as_float(0x7f800000)\n");
    src.push_str(common);
    for (name, body) in &KERNEL_SOURCES[1..] {
        src.push_str(&format!("\n// ---- {name} ----\n{body}"));
    }
    // NVRTC wants a 'static arch string; one per process is leaked at most.
    let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), options: vec!["--std=c++17".into()], ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            device_err(format!("NVRTC failed to compile the kernels:\n{}", log.to_string_lossy()))
        }
        other => device_err(format!("NVRTC: {other:?}")),
    })?;
    let module = ctx.load_module(ptx).map_err(|e| device_err(format!("cannot load the compiled kernels: {e}")))?;
    let f = |name: &str| module.load_function(name).map_err(|e| device_err(format!("kernel {name}: {e}")));
    Ok(Kernels {
        fill: f("fill_f32")?,
        relu_forward: f("relu_forward")?,
        relu_backward: f("relu_backward")?,
        gelu_forward: f("gelu_forward")?,
        gelu_backward: f("gelu_backward")?,
        axpby: f("axpby_f32")?,
        add: f("add_f32")?,
        add_assign: f("add_assign_f32")?,
        bias_rows: f("bias_rows")?,
        column_sums: f("column_sums")?,
        im2col_ones: f("im2col_ones")?,
        conv_grad_reduce: f("conv_grad_reduce")?,
        conv2d_direct: f("conv2d_direct")?,
        conv2d_forward_smem: f("conv2d_forward_smem")?,
        col2im: f("col2im")?,
        maxpool_forward: f("maxpool_forward")?,
        maxpool_backward: f("maxpool_backward")?,
        maxpool_backward_tiled: f("maxpool_backward_tiled")?,
        softmax_cross_entropy: f("softmax_cross_entropy")?,
        sgd_step: f("sgd_step")?,
        gemm_small: f("gemm_small")?,
        adam_step: f("adam_step")?,
        gather_batch: f("gather_batch")?,
        bias_channels: f("bias_channels")?,
        avgpool_forward: f("avgpool_forward")?,
        avgpool_backward: f("avgpool_backward")?,
        channel_partials: f("channel_partials")?,
        bn_stats_finish: f("bn_stats_finish")?,
        channel_partials_finish: f("channel_partials_finish")?,
        bn_apply: f("bn_apply")?,
        bn_backward_dx: f("bn_backward_dx")?,
        dropout_forward: f("dropout_forward")?,
        dropout_backward: f("dropout_backward")?,
        augment: f("augment")?,
        crop_flip: f("crop_flip")?,
        narrow_to_nhwc: f("narrow_to_nhwc")?,
        widen_from_nhwc: f("widen_from_nhwc")?,
        maxpool_from_nhwc16: f("maxpool_from_nhwc16")?,
        scale_to_norm: f("scale_to_norm")?,
        maxpool_backward_to_nhwc16: f("maxpool_backward_to_nhwc16")?,
        narrow_to_nhwc_strided: f("narrow_to_nhwc_strided")?,
        narrow_to_nhwc_x8: f("narrow_to_nhwc_x8")?,
        widen_from_nhwc_x8: f("widen_from_nhwc_x8")?,
        bn16_stat_partials: f("bn16_stat_partials")?,
        bn16_grad_partials_nhwc: f("bn16_grad_partials_nhwc")?,
        add_relu16: f("add_relu16")?,
        relu_backward16: f("relu_backward16")?,
        add_assign16: f("add_assign16")?,
        subsample_nhwc16: f("subsample_nhwc16")?,
        unsample_nhwc16: f("unsample_nhwc16")?,
        global_avgpool16: f("global_avgpool16")?,
        global_avgpool16_backward: f("global_avgpool16_backward")?,
        bn16_grad_partials: f("bn16_grad_partials")?,
        bn16_stats_finish: f("bn16_stats_finish")?,
        bn16_grads_finish: f("bn16_grads_finish")?,
        bn16_apply: f("bn16_apply")?,
        bn16_backward_dx: f("bn16_backward_dx")?,
        widen_to_nchw_strided: f("widen_to_nchw_strided")?,
        // dynamic loss scaling
        loss_scale_dlogits: f("loss_scale_dlogits")?,
        loss_scale_unscale: f("loss_scale_unscale")?,
        loss_scale_update: f("loss_scale_update")?,
        _module: module,
    })
}
