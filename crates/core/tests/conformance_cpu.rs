//! The CPU backend against the reference implementations, and every layer's
//! gradient against finite differences.

use rr_core::CpuBackend;
use std::sync::OnceLock;

fn backend() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(|| CpuBackend::new(2).expect("cpu backend"))
}

rr_core::backend_conformance_tests!(backend(), 1e-5);
