//! The CUDA backend against the reference implementations (fp32 cuBLAS, no
//! TF32: bound 1e-5), plus every gradient check, on a real GPU.
//! Run on a machine with a GPU: `cargo test -p rr-cuda -- --include-ignored`.

use rr_cuda::CudaBackend;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// One backend for the whole test binary, one test at a time on it.
fn backend() -> MutexGuard<'static, CudaBackend> {
    static B: OnceLock<Mutex<CudaBackend>> = OnceLock::new();
    B.get_or_init(|| Mutex::new(CudaBackend::new(0).unwrap_or_else(|e| panic!("needs a CUDA device: {e}"))))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

rr_core::backend_conformance_tests!(&*backend(), 1e-5, #[ignore = "needs a CUDA device"]);
