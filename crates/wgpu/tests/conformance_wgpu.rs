//! The conformance suite on the wgpu backend. It runs wherever a Vulkan, Metal
//! or DirectX 12 adapter exists, software ones included: in CI that is Mesa's
//! llvmpipe (Debian's `mesa-vulkan-drivers` and `libvulkan1`, which `.ci/run`
//! installs). With no adapter at all the tests fail, they do not skip.

use rr_wgpu::WgpuBackend;
use std::sync::OnceLock;

fn backend() -> &'static WgpuBackend {
    static B: OnceLock<WgpuBackend> = OnceLock::new();
    B.get_or_init(|| {
        let b = WgpuBackend::new(true)
            .unwrap_or_else(|e| panic!("no wgpu adapter ({e}); on Debian: apt-get install mesa-vulkan-drivers libvulkan1"));
        eprintln!("wgpu conformance on {}", rr_core::Backend::name(&b));
        b
    })
}

rr_core::backend_conformance_tests!(backend(), 1e-5);
