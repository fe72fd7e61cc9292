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

/// More than 65535 workgroups of 256: the 1-D kernels run as a 2-D grid (see `flat` in
/// common.wgsl). The shared suite's sizes stay below that.
#[test]
fn kernels_past_65535_workgroups() {
    use rr_core::backend::{CropSpec, Flip, Padding, View, ViewMut};
    use rr_core::{reference, Backend};
    let b = backend();
    let len = 17_500_003;
    let x: Vec<f32> = (0..len).map(|i| (i % 1013) as f32 * 0.25 - 100.0).collect();
    let y0: Vec<f32> = (0..len).map(|i| (i % 97) as f32 - 48.0).collect();
    let dx = b.upload(&x).unwrap();
    let mut dy = b.upload(&y0).unwrap();
    b.add_assign(View::all(&dx), ViewMut::all(&mut dy)).unwrap();
    let mut want = y0.clone();
    reference::add_assign(&x, &mut want);
    assert!(b.download(View::all(&dy)).unwrap() == want, "add_assign of {len}");
    let dy0 = b.upload(&y0).unwrap();
    b.add(View::all(&dx), View::all(&dy0), ViewMut::all(&mut dy)).unwrap();
    let mut want = vec![0.0; len];
    reference::add(&x, &y0, &mut want);
    assert!(b.download(View::all(&dy)).unwrap() == want, "add of {len}");
    // 17000 images of 32x32: 17.4M output pixels, the last samples' draws at i * 8 ~ 136000.
    let spec =
        CropSpec { n: 17_000, c: 1, h: 32, w: 32, pad: 4, padding: Padding::Reflect, flip: Flip::Random, fixed: None, cutout: 16, salt: 3 };
    let state = [12345u32, 678];
    let (dstate, dx) = (b.upload(&state).unwrap(), b.upload(&x[..spec.len()]).unwrap());
    let mut dy = b.alloc::<f32>(spec.len()).unwrap();
    b.crop_flip(&spec, View::all(&dstate), View::all(&dx), ViewMut::all(&mut dy)).unwrap();
    let mut want = vec![0.0; spec.len()];
    reference::crop_flip(&spec, &state, &x[..spec.len()], &mut want);
    let got = b.download(View::all(&dy)).unwrap();
    assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "crop_flip {spec:?}");
}

/// Images of no pixels: the gather still writes the labels (as the CPU backend does).
#[test]
fn gather_of_empty_images_writes_the_labels() {
    use rr_core::backend::{Gather, View, ViewMut};
    use rr_core::Backend;
    let b = backend();
    let (images, labels, idx) = (b.upload(&Vec::<u8>::new()).unwrap(), b.upload(&[3u8, 4, 5]).unwrap(), b.upload(&[2u32, 0, 2]).unwrap());
    let spec = Gather { n: 3, sample_len: 0, channels: 1, mean: [0.0; 4], std: [1.0; 4] };
    let mut x = b.alloc::<f32>(0).unwrap();
    let mut y = b.upload(&[u32::MAX; 3]).unwrap();
    b.gather_batch(&spec, View::all(&images), View::all(&labels), View::all(&idx), ViewMut::all(&mut x), ViewMut::all(&mut y)).unwrap();
    assert_eq!(b.download(View::all(&y)).unwrap(), [5, 3, 5]);
}
