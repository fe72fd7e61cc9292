//! The CUDA kernels of add/add_assign, crop_flip, label smoothing and
//! per-channel gather against rr_core::reference, on a real GPU (the shared
//! conformance suite covers these too once it has cases for them).
//! Run on a machine with a GPU: `cargo test -p rr-cuda -- --include-ignored`.

use rr_core::backend::{CropSpec, Gather, Padding};
use rr_core::conformance::assert_close;
use rr_core::{random, reference, Backend, View, ViewMut};
use rr_cuda::CudaBackend;
use std::sync::{Mutex, MutexGuard, OnceLock};

fn backend() -> MutexGuard<'static, CudaBackend> {
    static B: OnceLock<Mutex<CudaBackend>> = OnceLock::new();
    B.get_or_init(|| Mutex::new(CudaBackend::new(0).unwrap_or_else(|e| panic!("needs a CUDA device: {e}"))))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Deterministic inputs in [lo, hi).
fn values(salt: u32, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    let key = random::stream_key(12_345, 0, salt);
    (0..len).map(|i| lo + (hi - lo) * random::uniform(key, i as u32)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn add_and_add_assign_match_the_reference_exactly() {
    let b = backend();
    // Up to a ResNet-18 activation at batch 512 (~33M floats): the grid-stride loop covers it all.
    for len in [0usize, 1, 1000, 65_537, 33_554_433] {
        let (a, x) = (values(1, len, -2.0, 2.0), values(2, len, -2.0, 2.0));
        let (da, dx) = (b.upload(&a).unwrap(), b.upload(&x).unwrap());
        let mut y = b.upload(&vec![f32::NAN; len]).unwrap();
        b.add(View::all(&da), View::all(&dx), ViewMut::all(&mut y)).unwrap();
        let mut want = vec![0.0; len];
        reference::add(&a, &x, &mut want);
        assert_eq!(bits(&b.download(View::all(&y)).unwrap()), bits(&want), "add len={len}");
        b.add_assign(View::all(&dx), ViewMut::all(&mut y)).unwrap();
        reference::add_assign(&x, &mut want);
        assert_eq!(bits(&b.download(View::all(&y)).unwrap()), bits(&want), "add_assign len={len}");
    }
    // Windows at odd offsets.
    let (a, x) = (values(3, 100, -1.0, 1.0), values(4, 100, -1.0, 1.0));
    let (da, dx) = (b.upload(&a).unwrap(), b.upload(&x).unwrap());
    let mut y = b.upload(&vec![0.0f32; 100]).unwrap();
    b.add(View::range(&da, 3, 50).unwrap(), View::range(&dx, 7, 50).unwrap(), ViewMut::range(&mut y, 11, 50).unwrap()).unwrap();
    let got = b.download(View::all(&y)).unwrap();
    for i in 0..100 {
        let want = if (11..61).contains(&i) { a[i - 8] + x[i - 4] } else { 0.0 };
        assert_eq!(got[i].to_bits(), want.to_bits(), "add window at {i}");
    }
    // Length mismatches are shape errors.
    assert!(matches!(
        b.add(View::all(&da), View::prefix(&dx, 99).unwrap(), ViewMut::all(&mut y)),
        Err(rr_core::Error::Shape { op: "add", .. })
    ));
    assert!(matches!(
        b.add_assign(View::prefix(&da, 99).unwrap(), ViewMut::all(&mut y)),
        Err(rr_core::Error::Shape { op: "add_assign", .. })
    ));
}

fn crop_cases() -> Vec<CropSpec> {
    let base = CropSpec { n: 7, c: 3, h: 32, w: 32, pad: 4, padding: Padding::Zero, flip: true, cutout: 8, salt: 5 };
    vec![
        base,
        CropSpec { padding: Padding::Reflect, ..base },
        CropSpec { n: 5, c: 1, h: 28, w: 28, pad: 2, padding: Padding::Reflect, flip: false, cutout: 0, ..base },
        CropSpec { n: 3, c: 2, h: 9, w: 13, pad: 8, cutout: 13, ..base },
        CropSpec { n: 4, c: 2, h: 9, w: 13, pad: 8, padding: Padding::Reflect, cutout: 3, ..base },
        CropSpec { n: 2, pad: 0, flip: false, cutout: 0, ..base },
        CropSpec { n: 512, ..base },
        CropSpec { n: 0, ..base },
    ]
}

#[test]
#[ignore = "needs a CUDA device"]
fn crop_flip_matches_the_reference_exactly() {
    let b = backend();
    for (k, spec) in crop_cases().into_iter().enumerate() {
        let state = [0x9e37_79b9u32.wrapping_mul(k as u32 + 1), 17 + k as u32];
        let x = values(10 + k as u32, spec.len(), -1.0, 3.0);
        let mut want = vec![0.0; spec.len()];
        reference::crop_flip(&spec, &state, &x, &mut want);
        let (ds, dx) = (b.upload(&state).unwrap(), b.upload(&x).unwrap());
        let mut y = b.upload(&vec![f32::NAN; spec.len()]).unwrap();
        b.crop_flip(&spec, View::all(&ds), View::all(&dx), ViewMut::all(&mut y)).unwrap();
        assert_eq!(bits(&b.download(View::all(&y)).unwrap()), bits(&want), "crop_flip {spec:?}");
        if spec.pad == 0 && !spec.flip && spec.cutout == 0 {
            assert_eq!(bits(&want), bits(&x), "crop_flip with nothing to do is the identity");
        }
    }
}

/// A recorded crop (and add) draws fresh crops when the step on the device changes.
#[test]
#[ignore = "needs a CUDA device"]
fn crop_flip_and_add_replay_in_a_graph() {
    let b = backend();
    let spec = CropSpec { n: 16, c: 3, h: 32, w: 32, pad: 4, padding: Padding::Reflect, flip: true, cutout: 8, salt: 2 };
    let x = values(30, spec.len(), -1.0, 1.0);
    let (dx, mut ds) = (b.upload(&x).unwrap(), b.upload(&[7u32, 0]).unwrap());
    let (mut y, mut z) = (b.alloc::<f32>(spec.len()).unwrap(), b.alloc::<f32>(spec.len()).unwrap());
    assert!(b.begin_capture().unwrap());
    b.crop_flip(&spec, View::all(&ds), View::all(&dx), ViewMut::all(&mut y)).unwrap();
    b.add(View::all(&y), View::all(&dx), ViewMut::all(&mut z)).unwrap();
    b.add_assign(View::all(&dx), ViewMut::all(&mut z)).unwrap();
    let graph = b.end_capture().unwrap();
    for step in [3u32, 4] {
        b.write(ViewMut::all(&mut ds), &[7, step]).unwrap();
        b.replay(&graph).unwrap();
        let mut want = vec![0.0; spec.len()];
        reference::crop_flip(&spec, &[7, step], &x, &mut want);
        assert_eq!(bits(&b.download(View::all(&y)).unwrap()), bits(&want), "replayed crop_flip at step {step}");
        let want_z: Vec<f32> = want.iter().zip(&x).map(|(w, x)| (w + x) + x).collect();
        assert_eq!(bits(&b.download(View::all(&z)).unwrap()), bits(&want_z), "replayed add at step {step}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn softmax_cross_entropy_with_label_smoothing() {
    let b = backend();
    for (n, classes, scale) in [(1usize, 10usize, 1.0f32), (37, 10, 3.0), (1000, 10, 10.0), (5, 3, 50.0), (300, 100, 5.0)] {
        for smoothing in [0.0f32, 0.1, 0.35] {
            let logits = values(40 + classes as u32, n * classes, -scale, scale);
            let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % classes) as u32).collect();
            let grad_scale = 1.0 / n as f32;
            let mut want_d = vec![0.0; n * classes];
            let mut want_stats = vec![1.5, 2.0];
            reference::softmax_cross_entropy(n, classes, smoothing, &logits, &labels, grad_scale, Some(&mut want_d), &mut want_stats)
                .unwrap();
            let (dl, dlab) = (b.upload(&logits).unwrap(), b.upload(&labels).unwrap());
            let mut d = b.upload(&vec![f32::NAN; n * classes]).unwrap();
            let mut stats = b.upload(&[1.5f32, 2.0]).unwrap();
            b.softmax_cross_entropy(
                n,
                classes,
                smoothing,
                View::all(&dl),
                View::all(&dlab),
                grad_scale,
                Some(ViewMut::all(&mut d)),
                ViewMut::all(&mut stats),
            )
            .unwrap();
            let s = b.download(View::all(&stats)).unwrap();
            let what = format!("n={n} classes={classes} smoothing={smoothing}");
            assert_close(&format!("softmax_cross_entropy loss {what}"), &s[..1], &want_stats[..1], 1e-5);
            assert_eq!(s[1], want_stats[1], "softmax_cross_entropy correct count {what}");
            assert_close(&format!("softmax_cross_entropy dlogits {what}"), &b.download(View::all(&d)).unwrap(), &want_d, 1e-5);
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gather_batch_normalizes_per_channel_exactly() {
    let b = backend();
    let cases = [
        (1usize, 784usize, [0.1307f32, 0.0, 0.0, 0.0], [0.3081f32, 1.0, 1.0, 1.0]),
        (3, 3072, [0.4914, 0.4822, 0.4465, 0.0], [0.2470, 0.2435, 0.2616, 1.0]),
        (2, 2 * 49, [0.5, 0.25, 0.0, 0.0], [0.5, 0.125, 1.0, 1.0]),
        (4, 4 * 5, [0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]),
    ];
    for (channels, sample_len, mean, std) in cases {
        let count = 50usize;
        let key = random::stream_key(3, 1, sample_len as u32);
        let images: Vec<u8> = (0..count * sample_len).map(|i| (random::bits(key, i as u32) & 0xff) as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        let (di, dl) = (b.upload(&images).unwrap(), b.upload(&labels).unwrap());
        for n in [0usize, 1, 37, 128] {
            let idx: Vec<u32> = (0..n).map(|i| ((i * 13 + 5) % count) as u32).collect();
            let spec = Gather { n, sample_len, channels, mean, std };
            let (mut wx, mut wy) = (vec![0.0; n * sample_len], vec![0u32; n]);
            reference::gather_batch(&spec, &images, &labels, &idx, &mut wx, &mut wy).unwrap();
            let didx = b.upload(&idx).unwrap();
            let mut x = b.upload(&vec![f32::NAN; n * sample_len]).unwrap();
            let mut y = b.upload(&vec![u32::MAX; n]).unwrap();
            b.gather_batch(&spec, View::all(&di), View::all(&dl), View::all(&didx), ViewMut::all(&mut x), ViewMut::all(&mut y)).unwrap();
            assert_eq!(bits(&b.download(View::all(&x)).unwrap()), bits(&wx), "gather_batch x channels={channels} n={n}");
            assert_eq!(b.download(View::all(&y)).unwrap(), wy, "gather_batch labels channels={channels} n={n}");
        }
    }
}
