//! Data augmentation against independent computations: each augmented image
//! is compared with the same transform worked out here from its definition
//! (a 3x3 affine matrix, inverted in f64, and bilinear sampling), and with
//! transforms whose result is known exactly (quarter turns, integer shifts,
//! mirror images). Random crops are checked the same way: padded explicitly
//! (zeros, or PyTorch's reflect padding), cropped, mirrored and cut out by hand.

use rr_core::backend::{AugmentParams, AugmentSpec, CropParams, CropSpec, Flip, Padding, View, ViewMut};
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

// ---- random crops, flips and cutout -----------------------------------------

/// One (h, w) plane padded by `p` on every side as PyTorch's
/// `F.pad(x, (p, p, p, p), mode)` does, built by copying rather than by an
/// index formula: zeros around the image, or (reflect) the rows mirrored about
/// the first and last row (which are not repeated), then the columns of the
/// full padded height mirrored the same way (so the corners mirror both ways).
fn pad_plane(img: &[f32], h: usize, w: usize, p: usize, padding: Padding) -> Vec<Vec<f32>> {
    let mut out = vec![vec![0.0f32; w + 2 * p]; h + 2 * p];
    for (r, row) in img.chunks_exact(w).enumerate() {
        out[r + p][p..p + w].copy_from_slice(row);
    }
    if padding == Padding::Reflect {
        for k in 1..=p {
            out[p - k] = out[p + k].clone();
            out[p + h - 1 + k] = out[p + h - 1 - k].clone();
        }
        for row in out.iter_mut() {
            for k in 1..=p {
                row[p - k] = row[p + k];
                row[p + w - 1 + k] = row[p + w - 1 - k];
            }
        }
    }
    out
}

#[test]
fn reflect_padding_is_pytorchs() {
    // torch.nn.functional.pad(torch.arange(12.).reshape(1, 1, 3, 4), (2, 2, 2, 2), mode="reflect")
    let want: [[f32; 8]; 7] = [
        [10., 9., 8., 9., 10., 11., 10., 9.],
        [6., 5., 4., 5., 6., 7., 6., 5.],
        [2., 1., 0., 1., 2., 3., 2., 1.],
        [6., 5., 4., 5., 6., 7., 6., 5.],
        [10., 9., 8., 9., 10., 11., 10., 9.],
        [6., 5., 4., 5., 6., 7., 6., 5.],
        [2., 1., 0., 1., 2., 3., 2., 1.],
    ];
    let img: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let got = pad_plane(&img, 3, 4, 2, Padding::Reflect);
    assert_eq!(got, want.iter().map(|r| r.to_vec()).collect::<Vec<_>>());
    let zero = pad_plane(&img, 3, 4, 1, Padding::Zero);
    assert_eq!(zero[0], vec![0.0; 6]);
    assert_eq!(zero[2], vec![0., 4., 5., 6., 7., 0.]);
}

/// Sample `i` of a crop_flip batch worked out step by step: pad, take the
/// (h, w) window at (dy, dx), mirror it left to right, zero the cutout square.
fn crop_by_hand(spec: &CropSpec, p: &CropParams, x: &[f32]) -> Vec<f32> {
    let (h, w) = (spec.h, spec.w);
    let mut out = Vec::with_capacity(spec.c * h * w);
    for plane in x.chunks_exact(h * w) {
        let padded = pad_plane(plane, h, w, spec.pad, spec.padding);
        let mut window: Vec<Vec<f32>> = padded[p.dy..p.dy + h].iter().map(|row| row[p.dx..p.dx + w].to_vec()).collect();
        if p.flip {
            window.iter_mut().for_each(|row| row.reverse());
        }
        if spec.cutout > 0 {
            let clip = |start: i64, side: usize| (start.max(0) as usize)..((start + spec.cutout as i64).clamp(0, side as i64) as usize);
            for r in clip(p.cut_y, h) {
                for s in clip(p.cut_x, w) {
                    window[r][s] = 0.0;
                }
            }
        }
        out.extend(window.into_iter().flatten());
    }
    out
}

fn crop_flip(b: &CpuBackend, spec: &CropSpec, state: [u32; 2], x: &[f32]) -> Vec<f32> {
    let (rng, xin) = (b.upload(&state).unwrap(), b.upload(x).unwrap());
    let mut y: Vec<f32> = b.upload(&vec![f32::NAN; x.len()]).unwrap();
    b.crop_flip(spec, View::all(&rng), View::all(&xin), ViewMut::all(&mut y)).unwrap();
    y
}

/// Distinct, non-zero pixel values (so a pixel read from the wrong place, or a
/// zero written where none belongs, cannot go unnoticed).
fn distinct_images(len: usize) -> Vec<f32> {
    (0..len).map(|i| (i + 1) as f32).collect()
}

#[test]
fn crop_flip_matches_padding_cropping_flipping_and_cutout_by_hand() {
    let b = CpuBackend::new(2).unwrap();
    let (mut flipped, mut shifted, mut cut, mut samples) = (0, 0, 0, 0);
    let flips = [Flip::Off, Flip::Random, Flip::Always, Flip::Alternate { steps_per_epoch: 2 }];
    // Fixed offsets (no cutout with them): a corner of the padded image.
    let placements = |pad: usize, cutout: usize| if cutout == 0 { vec![None, Some((2 * pad, 0))] } else { vec![None] };
    for (c, h, w, n) in [(3, 32, 32, 64), (1, 28, 28, 1), (3, 17, 23, 9), (1, 23, 17, 9)] {
        for padding in [Padding::Zero, Padding::Reflect] {
            for pad in [0, 2, 4] {
                for flip in flips {
                    for (cutout, fixed) in [0, 8].into_iter().flat_map(|cut| placements(pad, cut).into_iter().map(move |f| (cut, f))) {
                        let spec = CropSpec { n, c, h, w, pad, padding, flip, fixed, cutout, salt: 5 };
                        let x = distinct_images(spec.len());
                        // Steps 0 and 12345 are in even epochs of 2 steps, step 3 in an odd one.
                        for state in [[1, 0], [77, 12_345], [u32::MAX, 3]] {
                            let got = crop_flip(&b, &spec, state, &x);
                            let key = random::stream_key(state[0], state[1], spec.salt);
                            let len = c * h * w;
                            for i in 0..n {
                                let p = spec.params(key, state[1], i);
                                let flip_ok = match flip {
                                    Flip::Off => !p.flip,
                                    Flip::Always => p.flip,
                                    Flip::Alternate { .. } => p.flip == (state[1] == 3),
                                    Flip::Random => true,
                                };
                                assert!(p.dy <= 2 * pad && p.dx <= 2 * pad && flip_ok, "{spec:?}: draw {p:?}");
                                assert!(fixed.is_none_or(|f| f == (p.dy, p.dx)), "{spec:?}: draw {p:?} ignores the fixed offsets");
                                let centre = |start: i64| start + (cutout / 2) as i64;
                                assert!((0..h as i64).contains(&centre(p.cut_y)) && (0..w as i64).contains(&centre(p.cut_x)), "{p:?}");
                                let want = crop_by_hand(&spec, &p, &x[i * len..(i + 1) * len]);
                                let g = &got[i * len..(i + 1) * len];
                                if let Some(j) = g.iter().zip(&want).position(|(g, w)| g != w) {
                                    let (ch, r, s) = (j / (h * w), (j / w) % h, j % w);
                                    panic!(
                                        "{spec:?} rng {state:?} sample {i} ({p:?}) channel {ch} pixel ({r}, {s}): got {}, want {}",
                                        g[j], want[j]
                                    );
                                }
                                samples += 1;
                                flipped += p.flip as usize;
                                shifted += (p.dy != pad || p.dx != pad) as usize;
                                cut += (cutout > 0) as usize;
                            }
                        }
                    }
                }
            }
        }
    }
    // The cases above did flip, shift and cut out (the comparison was not vacuous).
    // (A third of the cases cut out: those with fixed offsets take none.)
    let (enough, some) = (|k: usize| k > samples / 4, |k: usize| k > samples / 8);
    assert!(some(flipped) && enough(shifted) && enough(cut), "{flipped} flipped, {shifted} shifted, {cut} cut out of {samples}");
}

#[test]
fn crop_flip_with_the_same_seed_and_step_gives_the_same_batch() {
    let b = CpuBackend::new(2).unwrap();
    let spec =
        CropSpec { n: 16, c: 3, h: 32, w: 32, pad: 4, padding: Padding::Reflect, flip: Flip::Random, fixed: None, cutout: 8, salt: 2 };
    let x = distinct_images(spec.len());
    let a = crop_flip(&b, &spec, [5, 100], &x);
    assert_eq!(a, crop_flip(&b, &spec, [5, 100], &x), "same seed and step");
    assert_ne!(a, crop_flip(&b, &spec, [5, 101], &x), "the next step draws new crops");
    assert_ne!(a, crop_flip(&b, &spec, [6, 100], &x), "another seed draws new crops");
    assert_ne!(a, crop_flip(&b, &CropSpec { salt: 3, ..spec }, [5, 100], &x), "another salt draws new crops");
    // Every sample of a step gets its own draw, and so does every step.
    let key = |step| random::stream_key(5, step, spec.salt);
    let draws: std::collections::HashSet<_> = (0..spec.n).map(|i| format!("{:?}", spec.params(key(100), 100, i))).collect();
    assert!(draws.len() > spec.n / 2, "only {} distinct draws of {}", draws.len(), spec.n);
    let same = (0..spec.n).filter(|&i| spec.params(key(100), 100, i) == spec.params(key(101), 101, i)).count();
    assert!(same <= 1, "{same} samples drew the same crop on two steps");
}

#[test]
fn crop_flip_draws_cover_every_offset_and_flip_half_the_time() {
    // Every pixel of an 8x8 image holds 1 + its index, padding reads 0: from a
    // cropped output the offsets and the flip can be read back.
    let b = CpuBackend::new(2).unwrap();
    let (n, side, pad) = (4000usize, 8usize, 3usize);
    for flip in [Flip::Random, Flip::Off] {
        let spec = CropSpec { n, c: 1, h: side, w: side, pad, padding: Padding::Zero, flip, fixed: None, cutout: 0, salt: 4 };
        let x: Vec<f32> = (0..spec.len()).map(|i| (1 + i % (side * side)) as f32).collect();
        let state = [42, 7];
        let y = crop_flip(&b, &spec, state, &x);
        let key = random::stream_key(state[0], state[1], spec.salt);
        let (mut dys, mut dxs, mut flips) = (vec![0usize; 2 * pad + 1], vec![0usize; 2 * pad + 1], 0);
        for i in 0..n {
            let img = &y[i * side * side..(i + 1) * side * side];
            // At most `pad` of 8 columns read padding: some row has two neighbours inside the image.
            let (r, s) = (0..side * side - 1)
                .map(|j| (j / side, j % side))
                .find(|&(r, s)| s + 1 < side && img[r * side + s] != 0.0 && img[r * side + s + 1] != 0.0)
                .expect("an image pixel in the crop");
            let v = img[r * side + s] as usize - 1;
            let (src_r, src_s) = (v / side, v % side);
            let is_flipped = img[r * side + s + 1] < img[r * side + s];
            let col = if is_flipped { side - 1 - s } else { s };
            let (dy, dx) = (src_r + pad - r, src_s + pad - col);
            let p = spec.params(key, state[1], i);
            assert_eq!((dy, dx, is_flipped), (p.dy, p.dx, p.flip), "sample {i}: the output shows another draw than params gives");
            dys[dy] += 1;
            dxs[dx] += 1;
            flips += is_flipped as usize;
        }
        // Uniform over the 2 pad + 1 offsets (expected n / 7 = 571 each, standard deviation 22).
        let expected = n / (2 * pad + 1);
        for (axis, counts) in [("dy", &dys), ("dx", &dxs)] {
            assert!(
                counts.iter().all(|&k| k.abs_diff(expected) < expected / 5),
                "{axis} offsets not uniform over 0..={}: {counts:?}",
                2 * pad
            );
        }
        let rate = flips as f64 / n as f64;
        if flip == Flip::Random {
            assert!((rate - 0.5).abs() < 0.05, "flipped {rate} of the samples");
        } else {
            assert_eq!(flips, 0, "flipped although flip is off");
        }
    }
}

#[test]
fn cutout_zeroes_one_square_around_a_uniform_centre() {
    // An image of ones, no shift, no flip: the zeros of the output are the cutout square.
    let b = CpuBackend::new(2).unwrap();
    let (n, h, w, side) = (3000usize, 9usize, 7usize, 4usize);
    let spec = CropSpec { n, c: 2, h, w, pad: 0, padding: Padding::Zero, flip: Flip::Off, fixed: None, cutout: side, salt: 8 };
    let y = crop_flip(&b, &spec, [9, 9], &vec![1.0; spec.len()]);
    let (mut rows_seen, mut cols_seen) = (vec![0usize; h], vec![0usize; w]);
    for i in 0..n {
        let img = &y[i * 2 * h * w..(i + 1) * 2 * h * w];
        assert_eq!(img[..h * w], img[h * w..], "sample {i}: both channels share the square");
        let zeros: Vec<(usize, usize)> = (0..h * w).filter(|&j| img[j] == 0.0).map(|j| (j / w, j % w)).collect();
        let (r0, r1) = (zeros.iter().map(|z| z.0).min().unwrap(), zeros.iter().map(|z| z.0).max().unwrap());
        let (c0, c1) = (zeros.iter().map(|z| z.1).min().unwrap(), zeros.iter().map(|z| z.1).max().unwrap());
        // A full rectangle, `side` wide unless clipped at an edge.
        assert_eq!(zeros.len(), (r1 - r0 + 1) * (c1 - c0 + 1), "sample {i}: the zeros are not a rectangle");
        let extent_ok = |lo: usize, hi: usize, len: usize| hi - lo + 1 == side || (hi - lo + 1 < side && (lo == 0 || hi == len - 1));
        assert!(extent_ok(r0, r1, h) && extent_ok(c0, c1, w), "sample {i}: rows {r0}..={r1}, columns {c0}..={c1}");
        // The centre (first row + side / 2) is uniform over the image.
        let centre = |lo: usize, hi: usize| if hi - lo + 1 == side || lo > 0 { lo + side / 2 } else { hi + 1 + side / 2 - side };
        rows_seen[centre(r0, r1)] += 1;
        cols_seen[centre(c0, c1)] += 1;
    }
    for (axis, seen, len) in [("row", &rows_seen, h), ("column", &cols_seen, w)] {
        let expected = n / len;
        assert!(seen.iter().all(|&k| k.abs_diff(expected) < expected / 4), "cutout {axis} centres not uniform: {seen:?}");
    }
}
