//! Data augmentation against independent computations: each augmented image
//! is compared with the same transform worked out here from its definition
//! (a 3x3 affine matrix, inverted in f64, and bilinear sampling), and with
//! transforms whose result is known exactly (quarter turns, integer shifts,
//! mirror images).

use rr_core::backend::{AugmentParams, AugmentSpec, View, ViewMut};
use rr_core::{random, reference, Backend, CpuBackend};

const SIDE: usize = 28;
const FILL: f32 = -0.42;

fn spec(n: usize) -> AugmentSpec {
    AugmentSpec {
        n,
        c: 1,
        h: SIDE,
        w: SIDE,
        rotate_deg: 0.0,
        scale: 0.0,
        translate: 0.0,
        elastic: 0.0,
        flip: false,
        noise: 0.0,
        fill: FILL,
        salt: 9,
    }
}

/// Smooth, asymmetric test images (no two pixels alike).
fn images(n: usize) -> Vec<f32> {
    (0..n * SIDE * SIDE)
        .map(|i| {
            let (s, y, x) = (i / (SIDE * SIDE), (i / SIDE) % SIDE, i % SIDE);
            ((x as f32 * 0.37 + s as f32).sin() + (y as f32 * 0.23 - 0.5 * x as f32 / SIDE as f32).cos() * 1.3 + y as f32 * 0.05) * 0.7
        })
        .collect()
}

fn augment(b: &CpuBackend, spec: &AugmentSpec, state: [u32; 2], x: &[f32]) -> Vec<f32> {
    let (rng, xin) = (b.upload(&state).unwrap(), b.upload(x).unwrap());
    let mut y: Vec<f32> = b.alloc(x.len()).unwrap();
    b.augment(spec, View::all(&rng), View::all(&xin), ViewMut::all(&mut y)).unwrap();
    y
}

/// Bilinear sampling in f64, written from its definition.
fn sample(img: &[f32], x: f64, y: f64) -> f64 {
    let px = |xi: i64, yi: i64| {
        if xi < 0 || yi < 0 || xi >= SIDE as i64 || yi >= SIDE as i64 {
            FILL as f64
        } else {
            img[yi as usize * SIDE + xi as usize] as f64
        }
    };
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    px(x0, y0) * (1.0 - fx) * (1.0 - fy)
        + px(x0 + 1, y0) * fx * (1.0 - fy)
        + px(x0, y0 + 1) * (1.0 - fx) * fy
        + px(x0 + 1, y0 + 1) * fx * fy
}

type Mat3 = [[f64; 3]; 3];

fn mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

/// Inverse of an affine 3x3 matrix (last row 0 0 1) by the adjugate.
fn invert(m: &Mat3) -> Mat3 {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    [[a, b, -(a * m[0][2] + b * m[1][2])], [c, d, -(c * m[0][2] + d * m[1][2])], [0.0, 0.0, 1.0]]
}

/// The forward map of a transform: out = T(centre + t) R(angle) S(scale) T(-centre) in.
fn forward_matrix(p: &AugmentParams) -> Mat3 {
    let c = (SIDE as f64 - 1.0) / 2.0;
    let (s, co) = (p.angle as f64).sin_cos();
    let k = p.scale as f64;
    let shift_to = [[1.0, 0.0, c + p.tx as f64], [0.0, 1.0, c + p.ty as f64], [0.0, 0.0, 1.0]];
    let rotate = [[co, -s, 0.0], [s, co, 0.0], [0.0, 0.0, 1.0]];
    let scale = [[k, 0.0, 0.0], [0.0, k, 0.0], [0.0, 0.0, 1.0]];
    let shift_from = [[1.0, 0.0, -c], [0.0, 1.0, -c], [0.0, 0.0, 1.0]];
    mul(&mul(&shift_to, &rotate), &mul(&scale, &shift_from))
}

#[test]
fn random_affine_matches_an_independent_warp() {
    let b = CpuBackend::new(2).unwrap();
    let n = 16;
    let spec = AugmentSpec { rotate_deg: 30.0, scale: 0.2, translate: 0.15, ..spec(n) };
    let x = images(n);
    let state = [1234, 77];
    let got = augment(&b, &spec, state, &x);
    let key = random::stream_key(state[0], state[1], spec.salt);
    let mut angles = Vec::new();
    for i in 0..n {
        let p = spec.params(key, i);
        assert!(p.angle.abs() <= 30f32.to_radians() && (p.scale - 1.0).abs() <= 0.2, "{p:?}");
        assert!(p.tx.abs() <= 0.15 * SIDE as f32 && p.ty.abs() <= 0.15 * SIDE as f32, "{p:?}");
        angles.push(p.angle);
        let inv = invert(&forward_matrix(&p));
        let img = &x[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
        for oy in 0..SIDE {
            for ox in 0..SIDE {
                let (fx, fy) = (ox as f64, oy as f64);
                let sx = inv[0][0] * fx + inv[0][1] * fy + inv[0][2];
                let sy = inv[1][0] * fx + inv[1][1] * fy + inv[1][2];
                let want = sample(img, sx, sy);
                let g = got[i * SIDE * SIDE + oy * SIDE + ox] as f64;
                assert!((g - want).abs() < 2e-4, "sample {i} ({p:?}) pixel ({ox}, {oy}): got {g}, want {want}");
            }
        }
    }
    // Sixteen draws that are all alike would mean the per-sample parameters are not random.
    angles.sort_by(f32::total_cmp);
    assert!(angles[n - 1] - angles[0] > 20f32.to_radians(), "{angles:?}");
}

fn warp(params: AugmentParams, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    reference::warp_sample(&spec(1), &params, [0, 0, 0], 0, x, &mut y);
    y
}

const IDENTITY: AugmentParams = AugmentParams { flip: false, angle: 0.0, scale: 1.0, tx: 0.0, ty: 0.0 };

#[test]
fn quarter_turns_shifts_and_flips_are_exact() {
    let x = images(1);
    let at = |img: &[f32], x: i64, y: i64| {
        if x < 0 || y < 0 || x >= SIDE as i64 || y >= SIDE as i64 {
            FILL
        } else {
            img[y as usize * SIDE + x as usize]
        }
    };
    let last = SIDE as i64 - 1;
    let turned = warp(AugmentParams { angle: std::f32::consts::FRAC_PI_2, ..IDENTITY }, &x);
    let shifted = warp(AugmentParams { tx: 3.0, ty: -2.0, ..IDENTITY }, &x);
    let flipped = warp(AugmentParams { flip: true, ..IDENTITY }, &x);
    let same = warp(IDENTITY, &x);
    for oy in 0..SIDE as i64 {
        for ox in 0..SIDE as i64 {
            let o = (oy * SIDE as i64 + ox) as usize;
            // A quarter turn (clockwise on screen, y pointing down): out(x, y) = in(y, last - x).
            assert!((turned[o] - at(&x, oy, last - ox)).abs() < 1e-4, "quarter turn at ({ox}, {oy})");
            assert_eq!(shifted[o], at(&x, ox - 3, oy + 2), "shift at ({ox}, {oy})");
            assert_eq!(flipped[o], at(&x, last - ox, oy), "flip at ({ox}, {oy})");
            assert_eq!(same[o], x[o], "identity at ({ox}, {oy})");
        }
    }
}

#[test]
fn the_same_seed_and_step_give_the_same_batch() {
    let b = CpuBackend::new(2).unwrap();
    let spec = AugmentSpec { rotate_deg: 10.0, scale: 0.1, translate: 0.1, elastic: 2.0, noise: 0.1, flip: true, ..spec(8) };
    let x = images(8);
    let a = augment(&b, &spec, [5, 100], &x);
    assert_eq!(a, augment(&b, &spec, [5, 100], &x), "same seed and step");
    assert_ne!(a, augment(&b, &spec, [5, 101], &x), "the next step draws new transforms");
    assert_ne!(a, augment(&b, &spec, [6, 100], &x), "another seed draws new transforms");
}

#[test]
fn noise_has_the_requested_spread_and_elastic_moves_pixels_a_little() {
    let b = CpuBackend::new(2).unwrap();
    let n = 64;
    let x = images(n);
    let noisy = augment(&b, &AugmentSpec { noise: 0.5, ..spec(n) }, [3, 4], &x);
    let d: Vec<f64> = noisy.iter().zip(&x).map(|(a, b)| (a - b) as f64).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let std = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!(mean.abs() < 0.01 && (std - 0.5).abs() < 0.01, "noise mean {mean}, std {std}");
    // Elastic displacements of at most 1.5 px: every output lies within the
    // range of its input's 5x5 neighbourhood, and some pixels do change.
    let warped = augment(&b, &AugmentSpec { elastic: 1.5, ..spec(n) }, [3, 4], &x);
    let mut changed = 0;
    for i in 0..n {
        let img = &x[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
        for oy in 2..SIDE - 2 {
            for ox in 2..SIDE - 2 {
                let near: Vec<f32> = (oy - 2..=oy + 2).flat_map(|y| (ox - 2..=ox + 2).map(move |x| img[y * SIDE + x])).collect();
                let (lo, hi) = near.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let v = warped[i * SIDE * SIDE + oy * SIDE + ox];
                assert!(v >= lo - 1e-5 && v <= hi + 1e-5, "elastic output outside its neighbourhood");
                changed += ((v - img[oy * SIDE + ox]).abs() > 1e-3) as usize;
            }
        }
    }
    assert!(changed > n * 24 * 24 / 2, "elastic distortion changed only {changed} pixels");
}
