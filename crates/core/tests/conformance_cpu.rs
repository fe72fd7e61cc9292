//! The CPU backend against the reference implementations, and every layer's
//! gradient against finite differences.

use rr_core::CpuBackend;
use std::sync::OnceLock;

fn backend() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(|| CpuBackend::new(2).expect("cpu backend"))
}

rr_core::backend_conformance_tests!(backend(), 1e-5);

/// Images of no pixels are consistent lengths (0 bytes each): the gather writes
/// the labels only (the CPU backend used to panic splitting x into chunks of 0).
#[test]
fn gather_of_empty_images_writes_the_labels() {
    use rr_core::backend::{Gather, View, ViewMut};
    use rr_core::Backend;
    let b = backend();
    let (images, labels, idx) = (Vec::<u8>::new(), vec![3u8, 4, 5], vec![2u32, 0, 2]);
    let spec = Gather { n: 3, sample_len: 0, channels: 1, mean: [0.0; 4], std: [1.0; 4] };
    let (mut x, mut y) = (Vec::<f32>::new(), vec![u32::MAX; 3]);
    b.gather_batch(&spec, View::all(&images), View::all(&labels), View::all(&idx), ViewMut::all(&mut x), ViewMut::all(&mut y)).unwrap();
    assert_eq!(y, [5, 3, 5]);
}
