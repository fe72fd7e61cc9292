//! What the shared conformance suite does not check of the CUDA kernels of the
//! new ops: crop_flip (random and alternate flips), add and axpby recorded in a
//! CUDA graph and replayed at new steps, the per-channel gather bit for bit
//! (the suite allows 1e-5), and a loss-scaled update recorded once and
//! replayed with and without overflow.
//! Run on a machine with a GPU: `cargo test -p rr-cuda -- --include-ignored`.

use rr_core::backend::{CropSpec, Flip, Gather, Padding};
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

/// A recorded crop (and add) draws fresh crops when the step on the device changes.
#[test]
#[ignore = "needs a CUDA device"]
fn crop_flip_and_add_replay_in_a_graph() {
    let b = backend();
    let spec =
        CropSpec { n: 16, c: 3, h: 32, w: 32, pad: 4, padding: Padding::Reflect, flip: Flip::Random, fixed: None, cutout: 8, salt: 2 };
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

/// Alternate flips read the step on the device: one recorded crop mirrors the
/// batch on odd epochs only, and an axpby recorded after it (a running sum, as
/// test-time augmentation keeps) follows.
#[test]
#[ignore = "needs a CUDA device"]
fn alternate_flips_follow_the_step_in_a_replayed_graph() {
    let b = backend();
    let flip = Flip::Alternate { steps_per_epoch: 4 };
    let spec = CropSpec { n: 8, c: 3, h: 16, w: 16, pad: 2, padding: Padding::Reflect, flip, fixed: None, cutout: 0, salt: 5 };
    let x = values(31, spec.len(), -1.0, 1.0);
    let (dx, mut ds) = (b.upload(&x).unwrap(), b.upload(&[9u32, 0]).unwrap());
    let (mut y, mut sum) = (b.alloc::<f32>(spec.len()).unwrap(), b.alloc::<f32>(spec.len()).unwrap());
    assert!(b.begin_capture().unwrap());
    b.crop_flip(&spec, View::all(&ds), View::all(&dx), ViewMut::all(&mut y)).unwrap();
    // (0.5 and 1: exact products, so a fused multiply-add rounds as the reference does.)
    b.axpby(0.5, View::all(&y), 1.0, ViewMut::all(&mut sum)).unwrap();
    let graph = b.end_capture().unwrap();
    let mut want_sum = vec![0.0f32; spec.len()];
    for step in [0u32, 3, 4, 7, 8, 13] {
        b.write(ViewMut::all(&mut ds), &[9, step]).unwrap();
        b.replay(&graph).unwrap();
        let (mut want, mut unflipped) = (vec![0.0; spec.len()], vec![0.0; spec.len()]);
        reference::crop_flip(&spec, &[9, step], &x, &mut want);
        reference::crop_flip(&CropSpec { flip: Flip::Off, ..spec }, &[9, step], &x, &mut unflipped);
        assert_eq!(want != unflipped, (step / 4) % 2 == 1, "the reference flips on odd epochs only (step {step})");
        assert_eq!(bits(&b.download(View::all(&y)).unwrap()), bits(&want), "replayed crop_flip at step {step}");
        reference::axpby(0.5, &want, 1.0, &mut want_sum);
        assert_eq!(bits(&b.download(View::all(&sum)).unwrap()), bits(&want_sum), "replayed axpby at step {step}");
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

/// Loss scaling inside a recorded step: scale, unscale, the optimizer's skip
/// flag copied on the device, the update. Replays read the scale and the flag
/// from the device: an overflowed replay changes no parameter and halves the
/// scale, the next (finite) one updates with the halved scale's unscaling.
#[test]
#[ignore = "needs a CUDA device"]
fn loss_scaled_step_replays_in_a_graph() {
    use rr_core::backend::{Hyper, LossScaleState, ScaleUpdate, UpdateRule};
    let b = backend();
    let len = 70_001;
    let rule = UpdateRule::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.0 };
    let spec = ScaleUpdate { growth: 2.0, backoff: 0.5, growth_interval: 3 };
    let p0 = values(40, len, -1.0, 1.0);
    let g = values(41, len, -1.0, 1.0);
    let (mut params, mut state) = (b.upload(&p0).unwrap(), b.alloc::<f32>(len).unwrap());
    let mut grads = b.alloc::<f32>(len).unwrap();
    let mut scale = b.upload(&[1024.0f32, 0.0, 0.0, 0.0]).unwrap();
    let hyper_row = b.upload(&Hyper { lr: 0.1, bias_correction1: 1.0, bias_correction2: 1.0, skip: 0.0 }.to_array()).unwrap();
    let mut hyper = b.alloc::<f32>(Hyper::LEN).unwrap();
    let mut scaled_grads = b.alloc::<f32>(len).unwrap();
    assert!(b.begin_capture().unwrap());
    b.copy(View::all(&hyper_row), ViewMut::all(&mut hyper)).unwrap();
    b.copy(View::all(&scaled_grads), ViewMut::all(&mut grads)).unwrap();
    b.loss_scale_dlogits(View::all(&scale), ViewMut::all(&mut grads)).unwrap();
    b.loss_scale_unscale(ViewMut::all(&mut scale), ViewMut::all(&mut grads)).unwrap();
    b.copy(View::range(&scale, LossScaleState::FOUND_INF, 1).unwrap(), ViewMut::range(&mut hyper, Hyper::SKIP, 1).unwrap()).unwrap();
    b.optimizer_step(&rule, View::all(&hyper), ViewMut::all(&mut params), View::all(&grads), ViewMut::all(&mut state)).unwrap();
    b.loss_scale_update(&spec, ViewMut::all(&mut scale)).unwrap();
    let graph = b.end_capture().unwrap();
    // Replay 1: one gradient is infinite (at the far end of the buffer).
    let mut bad = g.clone();
    bad[len - 1] = f32::INFINITY;
    b.write(ViewMut::all(&mut scaled_grads), &bad).unwrap();
    b.replay(&graph).unwrap();
    assert_eq!(bits(&b.download(View::all(&params)).unwrap()), bits(&p0), "an overflowed step changes no parameter");
    assert!(b.download(View::all(&state)).unwrap().iter().all(|&v| v == 0.0), "nor the momentum");
    assert_eq!(b.download(View::all(&scale)).unwrap(), [512.0, 0.0, 0.0, 1.0], "the scale backs off, the skip is counted");
    // Replay 2: finite gradients: g * 512 / 512 = g exactly (powers of two).
    b.write(ViewMut::all(&mut scaled_grads), &g).unwrap();
    b.replay(&graph).unwrap();
    let (mut want_p, mut want_state) = (p0.clone(), vec![0.0; len]);
    let row = Hyper { lr: 0.1, bias_correction1: 1.0, bias_correction2: 1.0, skip: 0.0 }.to_array();
    reference::optimizer_step(&rule, &row, &mut want_p, &g, &mut want_state);
    let got = b.download(View::all(&params)).unwrap();
    let err = got.iter().zip(&want_p).map(|(a, w)| (a - w).abs()).fold(0.0f32, f32::max);
    assert!(err <= 1e-6, "the finite step updates as the reference does (max error {err})");
    assert_eq!(b.download(View::all(&scale)).unwrap(), [512.0, 1.0, 0.0, 1.0], "one finite step counted");
}
