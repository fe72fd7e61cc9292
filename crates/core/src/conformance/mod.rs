//! The conformance suite: written once against [`Backend`], instantiated for
//! every backend with [`backend_conformance_tests!`](crate::backend_conformance_tests). Each op runs on fresh
//! random inputs of awkward sizes (batch 1, sizes that are multiples of no
//! tile, padding and stride variants), its outputs poisoned with NaN first,
//! and is compared with the plain [`crate::reference`] implementation by
//! norm-wise relative error `max|got - want| / max|want|`. The layer gradient
//! checks (against central finite differences) live here too, so every backend
//! runs them.
//!
//! Functions panic on failure (they are test bodies).

use crate::backend::{
    Activation, AugmentSpec, Backend, BatchNormGeom, Conv2dGeom, CropSpec, DropoutSpec, Flip, Gather, Gemm, Hyper, LossScaleState, Padding,
    Pool2dGeom, ScaleUpdate, UpdateRule, View, ViewMut,
};
use crate::layers::{AvgPool2d, BatchNorm, Conv2d, Ctx, Dropout, Flatten, Gelu, GlobalAvgPool, Layer, Linear, MaxPool2d, Relu};
use crate::reference;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod conv_bn;
mod narrow;
pub use conv_bn::{conv2d_batchnorm, conv2d_batchnorm_narrow};
pub use narrow::narrow_residuals;

/// Instantiates the whole suite for a backend: `$backend` is an expression of
/// type `&B` (evaluated once per test), `$tol` the relative-error bound, and
/// any attributes (e.g. `#[ignore = "needs a CUDA device"]`) go on every test.
#[macro_export]
macro_rules! backend_conformance_tests {
    ($backend:expr, $tol:expr $(, #[$meta:meta])*) => {
        $crate::backend_conformance_tests!(@tests $backend, $tol, [$(#[$meta])*],
            memory, gemm, bias_grad, relu, conv2d_forward, conv2d_backward, maxpool2d,
            softmax_cross_entropy, optimizer_step, gather_batch,
            avgpool2d, batchnorm, dropout, augment,
            gradcheck_linear, gradcheck_conv2d, gradcheck_maxpool2d, gradcheck_relu,
            gradcheck_flatten, gradcheck_loss, gradcheck_avgpool2d, gradcheck_batchnorm,
            gradcheck_dropout, gradcheck_model,
            add, crop_flip, crop_modes, label_smoothing, gather_channels, precisions,
            gelu, axpby, gradcheck_gelu,
            loss_scaling, conv2d_maxpool, scale_to_norm, conv2d_keep, conv2d_batchnorm, conv2d_batchnorm_narrow, model_narrow_edges,
            narrow_residuals);
    };
    (@tests $backend:expr, $tol:expr, $attrs:tt, $($name:ident),*) => {
        $( $crate::backend_conformance_tests!(@one $backend, $tol, $attrs, $name); )*
    };
    (@one $backend:expr, $tol:expr, [$(#[$meta:meta])*], $name:ident) => {
        #[test]
        $(#[$meta])*
        fn $name() {
            $crate::conformance::$name($backend, $tol);
        }
    };
}

fn rng(salt: u64) -> ChaCha8Rng {
    // Fresh inputs every run, reproducible from the printed seed on failure.
    let seed = std::env::var("RR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    eprintln!("conformance seed {seed} (set RR_TEST_SEED={seed} to repeat)");
    ChaCha8Rng::seed_from_u64(seed ^ salt)
}

fn uniform(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// Norm-wise relative error; asserts it is within `tol` and that nothing is NaN.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: non-finite output {} at {i} (poisoned value left unwritten?)", got[i]);
    }
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let (i, err) =
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).enumerate().fold((0, 0.0f32), |a, (i, e)| if e > a.1 { (i, e) } else { a });
    let rel = err / scale;
    assert!(rel <= tol, "{what}: relative error {rel:.3e} > {tol:.1e} (worst at {i}: got {}, want {})", got[i], want[i]);
}

fn poisoned<B: Backend>(b: &B, len: usize) -> B::Buf<f32> {
    b.upload(&vec![f32::NAN; len]).unwrap()
}

fn down<B: Backend, T: crate::Elem>(b: &B, buf: &B::Buf<T>) -> Vec<T> {
    b.download(View::all(buf)).unwrap()
}

pub fn memory<B: Backend>(b: &B, _tol: f32) {
    let mut r = rng(1);
    for len in [1usize, 7, 1000, 65_537] {
        let f = uniform(&mut r, len, -1.0, 1.0);
        let u: Vec<u32> = (0..len).map(|_| r.random_range(0..u32::MAX)).collect();
        let bytes: Vec<u8> = (0..len).map(|_| r.random_range(0..=255u8)).collect();
        assert_eq!(down(b, &b.upload(&f).unwrap()), f);
        assert_eq!(down(b, &b.upload(&u).unwrap()), u);
        assert_eq!(down(b, &b.upload(&bytes).unwrap()), bytes);
        let zeros: B::Buf<f32> = b.alloc(len).unwrap();
        assert!(down(b, &zeros).iter().all(|&v| v == 0.0), "alloc must zero-fill");
        // write / fill / copy into windows
        let mut buf = poisoned(b, len + 3);
        b.fill(ViewMut::all(&mut buf), 2.5).unwrap();
        b.write(ViewMut::range(&mut buf, 1, len).unwrap(), &f).unwrap();
        let got = down(b, &buf);
        assert_eq!(got[0], 2.5);
        assert_eq!(&got[1..=len], &f[..]);
        assert_eq!(&got[len + 1..], &[2.5, 2.5]);
        let src = b.upload(&f).unwrap();
        let mut dst = poisoned(b, len + 2);
        b.copy(View::all(&src), ViewMut::range(&mut dst, 2, len).unwrap()).unwrap();
        assert_eq!(&down(b, &dst)[2..], &f[..]);
        assert_eq!(b.download(View::range(&src, len / 2, len - len / 2).unwrap()).unwrap(), f[len / 2..]);
    }
    // A window past the end is an error, not a crash.
    let buf: B::Buf<f32> = b.alloc(4).unwrap();
    assert!(View::<B, f32>::range(&buf, 2, 3).is_err());
}

pub fn gemm<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(2);
    // Small shapes and one above 2^23 multiply-adds (backends may switch algorithms by size).
    let shapes = [(1, 1, 1), (7, 13, 5), (33, 17, 65), (128, 120, 400), (1, 10, 84), (97, 3, 1), (300, 130, 257)];
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, beta, with_bias) in [(1.0, 0.0, false), (1.0, 0.0, true), (0.5, 0.7, true), (-1.5, 1.0, false)] {
                let spec = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha, beta };
                let a = uniform(&mut r, m * k, -1.0, 1.0);
                let bm = uniform(&mut r, k * n, -1.0, 1.0);
                let bias = uniform(&mut r, n, -1.0, 1.0);
                let c0 = if beta == 0.0 { vec![f32::NAN; m * n] } else { uniform(&mut r, m * n, -1.0, 1.0) };
                let mut want = c0.clone();
                reference::gemm(&spec, &a, &bm, with_bias.then_some(&bias[..]), &mut want);
                let (da, db, dbias) = (b.upload(&a).unwrap(), b.upload(&bm).unwrap(), b.upload(&bias).unwrap());
                let mut dc = b.upload(&c0).unwrap();
                b.gemm(&spec, View::all(&da), View::all(&db), with_bias.then(|| View::all(&dbias)), ViewMut::all(&mut dc)).unwrap();
                assert_close(&format!("gemm {spec:?} bias={with_bias}"), &down(b, &dc), &want, tol);
            }
        }
    }
    // A mismatched length is a shape error.
    let small: B::Buf<f32> = b.alloc(3).unwrap();
    let mut c: B::Buf<f32> = b.alloc(4).unwrap();
    let err = b.gemm(&Gemm::new(2, 2, 2), View::all(&small), View::all(&small), None, ViewMut::all(&mut c));
    assert!(matches!(err, Err(crate::Error::Shape { op: "gemm", .. })), "{err:?}");
}

pub fn bias_grad<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(3);
    for (rows, cols) in [(1, 1), (37, 13), (128, 120), (5, 1000)] {
        let dy = uniform(&mut r, rows * cols, -1.0, 1.0);
        let mut want = vec![0.0; cols];
        reference::bias_grad(rows, cols, &dy, &mut want);
        let ddy = b.upload(&dy).unwrap();
        let mut db = poisoned(b, cols);
        b.bias_grad(rows, cols, View::all(&ddy), ViewMut::all(&mut db)).unwrap();
        assert_close(&format!("bias_grad {rows}x{cols}"), &down(b, &db), &want, tol);
    }
}

pub fn relu<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(4);
    for len in [1usize, 1000, 100_003] {
        let mut x = uniform(&mut r, len, -1.0, 1.0);
        x[0] = 0.0;
        let dy = uniform(&mut r, len, -1.0, 1.0);
        let mut y = vec![0.0; len];
        reference::relu_forward(&x, &mut y);
        let mut dx = vec![0.0; len];
        reference::relu_backward(&y, &dy, &mut dx);
        let (dx_, dy_) = (b.upload(&x).unwrap(), b.upload(&dy).unwrap());
        let mut gy = poisoned(b, len);
        b.relu_forward(View::all(&dx_), ViewMut::all(&mut gy)).unwrap();
        assert_close(&format!("relu_forward {len}"), &down(b, &gy), &y, tol);
        let mut gdx = poisoned(b, len);
        b.relu_backward(View::all(&gy), View::all(&dy_), ViewMut::all(&mut gdx)).unwrap();
        assert_close(&format!("relu_backward {len}"), &down(b, &gdx), &dx, tol);
    }
}

/// GELU forward and backward against the reference (worked out in f64), on
/// windows at offsets of larger buffers, element by element: within 1e-6,
/// absolute for values below 1 and relative above (not the suite's bound: an
/// elementwise op has no sums to round, and even the WGSL backend's erfc
/// approximation, WGSL having no erf, stays within 3e-7 of Φ). Inputs span
/// [-6, 6] and the far tails (|x| up to f32::MAX, where Φ underflows or rounds to 1).
pub fn gelu<B: Backend>(b: &B, _tol: f32) {
    let mut r = rng(25);
    let tails = [0.0f32, -0.0, 6.5, -6.5, 10.0, -10.0, 30.0, -30.0, 88.0, -88.0, 1e30, -1e30, f32::MAX, -f32::MAX, 1e-30, -1e-30];
    let cases = [uniform(&mut r, 1, -6.0, 6.0), uniform(&mut r, 1000, -6.0, 6.0), uniform(&mut r, 100_003, -6.0, 6.0), tails.to_vec()];
    for (case, x) in cases.iter().enumerate() {
        let len = x.len();
        let what = |op: &str| format!("{op} case {case} (len {len})");
        let dy = uniform(&mut r, len, -1.0, 1.0);
        let (mut want_y, mut want_dx) = (vec![0.0; len], vec![0.0; len]);
        reference::gelu_forward(x, &mut want_y);
        reference::gelu_backward(x, &dy, &mut want_dx);
        // x at offset 1, dy at offset 0, outputs at offset 2 of buffers two longer.
        let dxin = b.upload(&[&[7.0f32][..], x].concat()).unwrap();
        let ddy = b.upload(&[&dy[..], &[7.0]].concat()).unwrap();
        let (xv, dyv) = (View::range(&dxin, 1, len).unwrap(), View::range(&ddy, 0, len).unwrap());
        let (mut y, mut dx) = (poisoned(b, len + 3), poisoned(b, len + 3));
        b.gelu_forward(xv, ViewMut::range(&mut y, 2, len).unwrap()).unwrap();
        b.gelu_backward(xv, dyv, ViewMut::range(&mut dx, 2, len).unwrap()).unwrap();
        for (op, out, want) in [("gelu_forward", down(b, &y), &want_y), ("gelu_backward", down(b, &dx), &want_dx)] {
            assert!(out[..2].iter().chain(&out[2 + len..]).all(|v| v.is_nan()), "{}: wrote outside its window", what(op));
            let got = &out[2..2 + len];
            assert!(got.iter().all(|v| !v.is_nan()), "{}: NaN in the output", what(op));
            for ((g, w), xv) in got.iter().zip(want.iter()).zip(x) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{} at x = {xv}: got {g}, want {w}", what(op));
            }
        }
    }
    // Mismatched lengths are shape errors.
    let (x3, x4): (B::Buf<f32>, B::Buf<f32>) = (b.alloc(3).unwrap(), b.alloc(4).unwrap());
    let mut y4: B::Buf<f32> = b.alloc(4).unwrap();
    let err = b.gelu_forward(View::all(&x3), ViewMut::all(&mut y4));
    assert!(matches!(err, Err(crate::Error::Shape { op: "gelu_forward", .. })), "{err:?}");
    let err = b.gelu_backward(View::all(&x4), View::all(&x3), ViewMut::all(&mut y4));
    assert!(matches!(err, Err(crate::Error::Shape { op: "gelu_backward", .. })), "{err:?}");
    let err = b.gelu_backward(View::all(&x3), View::all(&x3), ViewMut::all(&mut y4));
    assert!(matches!(err, Err(crate::Error::Shape { op: "gelu_backward", .. })), "{err:?}");
}

/// `y = a x + b y` against the reference on windows at offsets of larger
/// buffers (nothing outside the window may change), including b == 0, where
/// y is not read (it holds NaN there), and a == 0.
pub fn axpby<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(26);
    for len in [1usize, 1000, 100_003] {
        for (a, beta) in [(0.5f32, 0.5f32), (-1.5, 1.0), (1.0, 0.0), (0.25, 0.0), (0.0, 2.0), (0.125, 0.875)] {
            let what = format!("axpby a={a} b={beta} len={len}");
            let x = uniform(&mut r, len, -1.0, 1.0);
            let y0 = if beta == 0.0 { vec![f32::NAN; len] } else { uniform(&mut r, len, -1.0, 1.0) };
            let mut want = y0.clone();
            reference::axpby(a, &x, beta, &mut want);
            let dxin = b.upload(&[&[7.0f32][..], &x].concat()).unwrap();
            let mut y = b.upload(&[&[f32::NAN][..], &y0, &[f32::NAN]].concat()).unwrap();
            b.axpby(a, View::range(&dxin, 1, len).unwrap(), beta, ViewMut::range(&mut y, 1, len).unwrap()).unwrap();
            let got = down(b, &y);
            assert!(got[0].is_nan() && got[len + 1].is_nan(), "{what}: wrote outside its window");
            assert_close(&what, &got[1..=len], &want, tol);
        }
    }
    let (x3, mut y4): (B::Buf<f32>, B::Buf<f32>) = (b.alloc(3).unwrap(), b.alloc(4).unwrap());
    let err = b.axpby(1.0, View::all(&x3), 1.0, ViewMut::all(&mut y4));
    assert!(matches!(err, Err(crate::Error::Shape { op: "axpby", .. })), "{err:?}");
}

/// `scale_to_norm` in a window of a longer buffer (nothing outside it
/// written), with and without eps; a zero vector at eps 0 stays as it is;
/// a negative target is refused.
pub fn scale_to_norm<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(61);
    for (len, target, eps) in [(1usize, 2.0f32, 0.0f32), (7, 0.5, 1e-7), (1000, 48.0, 0.0), (65_537, 1.0, 1e-7), (0, 1.0, 0.0)] {
        let x = uniform(&mut r, len, -3.0, 3.0);
        let mut want = x.clone();
        reference::scale_to_norm(&mut want, target, eps);
        let mut padded = vec![-9.0f32; len + 2];
        padded[1..=len].copy_from_slice(&x);
        let mut buf = b.upload(&padded).unwrap();
        b.scale_to_norm(ViewMut::range(&mut buf, 1, len).unwrap(), target, eps).unwrap();
        let got = down(b, &buf);
        assert!(got[0] == -9.0 && got[len + 1] == -9.0, "scale_to_norm wrote outside its window (len {len})");
        assert_close(&format!("scale_to_norm len {len}"), &got[1..=len], &want, tol.max(1e-6));
        if len > 0 {
            let norm = got[1..=len].iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            assert!((norm - target as f64).abs() <= 1e-4 * target as f64 + eps as f64 * 10.0, "norm {norm}, target {target}");
        }
    }
    let mut zeros = b.upload(&[0.0f32; 5]).unwrap();
    b.scale_to_norm(ViewMut::all(&mut zeros), 1.0, 0.0).unwrap();
    assert_eq!(down(b, &zeros), [0.0; 5], "a zero vector stays zero");
    let err = b.scale_to_norm(ViewMut::all(&mut zeros), -1.0, 0.0);
    assert!(matches!(err, Err(crate::Error::Shape { op: "scale_to_norm", .. })), "{err:?}");
}

/// Conv geometries: LeNet's two layers plus odd sizes, strides and paddings.
pub fn conv_cases() -> Vec<Conv2dGeom> {
    let g = |n, c_in, h, w, c_out, k, stride, pad| Conv2dGeom { n, c_in, h, w, c_out, k, stride, pad };
    vec![
        g(1, 1, 28, 28, 6, 5, 1, 2),
        g(3, 6, 14, 14, 16, 5, 1, 0),
        g(2, 3, 9, 11, 5, 3, 2, 1),
        g(5, 2, 7, 7, 3, 1, 1, 0),
        g(1, 4, 5, 6, 7, 5, 3, 2),
        g(17, 1, 28, 28, 6, 5, 1, 2),
        // Weights too large for the GPU's shared-memory kernel: the fallback path.
        g(2, 64, 6, 6, 64, 3, 1, 1),
        // An empty batch.
        g(0, 2, 5, 5, 3, 3, 1, 1),
    ]
}

pub fn conv2d_forward<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(5);
    for g in conv_cases() {
        let x = uniform(&mut r, g.x_len(), -1.0, 1.0);
        let w = uniform(&mut r, g.w_len(), -1.0, 1.0);
        let bias = uniform(&mut r, g.c_out, -1.0, 1.0);
        let mut want = vec![0.0; g.y_len()];
        reference::conv2d_forward(&g, &x, &w, &bias, &mut want);
        let (dx, dw, dbias) = (b.upload(&x).unwrap(), b.upload(&w).unwrap(), b.upload(&bias).unwrap());
        let mut y = poisoned(b, g.y_len());
        b.conv2d_forward(&g, View::all(&dx), View::all(&dw), View::all(&dbias), ViewMut::all(&mut y)).unwrap();
        assert_close(&format!("conv2d_forward {g:?}"), &down(b, &y), &want, tol);
    }
}

pub fn conv2d_backward<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(6);
    for g in conv_cases() {
        for with_dx in [true, false] {
            let x = uniform(&mut r, g.x_len(), -1.0, 1.0);
            let w = uniform(&mut r, g.w_len(), -1.0, 1.0);
            let dy = uniform(&mut r, g.y_len(), -1.0, 1.0);
            let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0; g.x_len()], vec![0.0; g.w_len()], vec![0.0; g.c_out]);
            reference::conv2d_backward(&g, &x, &w, &dy, Some(&mut want_dx), &mut want_dw, &mut want_db);
            let (dx_in, dw_in, ddy) = (b.upload(&x).unwrap(), b.upload(&w).unwrap(), b.upload(&dy).unwrap());
            let mut gdx = poisoned(b, g.x_len());
            let mut gparams = poisoned(b, g.w_len() + g.c_out + 2);
            b.conv2d_backward(
                &g,
                View::all(&dx_in),
                View::all(&dw_in),
                View::all(&ddy),
                with_dx.then(|| ViewMut::all(&mut gdx)),
                ViewMut::range(&mut gparams, 1, g.w_len() + g.c_out).unwrap(),
            )
            .unwrap();
            let p = down(b, &gparams);
            assert!(p[0].is_nan() && p[p.len() - 1].is_nan(), "conv2d_backward wrote outside its window");
            assert_close(&format!("conv2d_backward dw {g:?}"), &p[1..1 + g.w_len()], &want_dw, tol);
            assert_close(&format!("conv2d_backward db {g:?}"), &p[1 + g.w_len()..p.len() - 1], &want_db, tol);
            if with_dx {
                assert_close(&format!("conv2d_backward dx {g:?}"), &down(b, &gdx), &want_dx, tol);
            } else {
                assert!(down(b, &gdx).iter().all(|v| v.is_nan()), "dx written although not requested");
            }
            no_bias_backward(b, &g, (&dx_in, &dw_in, &ddy), (&want_dw, with_dx.then_some(&want_dx[..])), tol);
        }
    }
}

/// [`Backend::conv2d_backward_no_bias`]: dW (and dx) as with a bias, in a
/// window of a larger buffer, nothing written outside it.
type Inputs<'a, B> = (&'a <B as Backend>::Buf<f32>, &'a <B as Backend>::Buf<f32>, &'a <B as Backend>::Buf<f32>);

fn no_bias_backward<B: Backend>(b: &B, g: &Conv2dGeom, (x, w, dy): Inputs<'_, B>, (want_dw, want_dx): (&[f32], Option<&[f32]>), tol: f32) {
    let mut dweight = poisoned(b, g.w_len() + 2);
    let mut scratch = poisoned(b, g.w_len() + g.c_out);
    let mut gdx = poisoned(b, g.x_len());
    let dx = want_dx.map(|_| ViewMut::all(&mut gdx));
    let window = ViewMut::range(&mut dweight, 1, g.w_len()).unwrap();
    b.conv2d_backward_no_bias(g, View::all(x), View::all(w), View::all(dy), dx, window, ViewMut::all(&mut scratch)).unwrap();
    let got = down(b, &dweight);
    assert!(got[0].is_nan() && got[got.len() - 1].is_nan(), "conv2d_backward_no_bias wrote outside its window");
    assert_close(&format!("conv2d_backward_no_bias dw {g:?}"), &got[1..=g.w_len()], want_dw, tol);
    match want_dx {
        Some(want) => assert_close(&format!("conv2d_backward_no_bias dx {g:?}"), &down(b, &gdx), want, tol),
        None => assert!(down(b, &gdx).iter().all(|v| v.is_nan()), "dx written although not requested"),
    }
}

pub fn pool_cases() -> Vec<Pool2dGeom> {
    let g = |n, c, h, w, k, stride, pad, relu| Pool2dGeom { n, c, h, w, k, stride, pad, relu };
    vec![
        g(1, 1, 4, 4, 2, 2, 0, false),
        g(3, 6, 28, 28, 2, 2, 0, true),
        g(2, 3, 7, 9, 3, 2, 1, false),
        g(2, 2, 5, 5, 3, 1, 0, true),
        g(1, 16, 10, 10, 2, 2, 0, true),
        g(4, 1, 5, 7, 2, 2, 1, false),
        g(128, 6, 28, 28, 2, 2, 0, true),
        // Odd sizes: the last row / column belongs to no 2x2 window.
        g(2, 3, 7, 9, 2, 2, 0, true),
        g(1, 2, 5, 5, 2, 2, 0, false),
        // 3x3 windows of stride 3 (the speed network's last pool), with a ragged edge.
        g(2, 4, 7, 8, 3, 3, 0, false),
    ]
}

pub fn maxpool2d<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(7);
    for g in pool_cases() {
        let x = uniform(&mut r, g.x_len(), -1.0, 1.0);
        let dy = uniform(&mut r, g.y_len(), -1.0, 1.0);
        let (mut want_y, mut want_arg) = (vec![0.0; g.y_len()], vec![0u32; g.y_len()]);
        reference::maxpool2d_forward(&g, &x, &mut want_y, &mut want_arg);
        let mut want_dx = vec![0.0; g.x_len()];
        reference::maxpool2d_backward(&dy, &want_arg, &mut want_dx);
        let dxin = b.upload(&x).unwrap();
        let mut y = poisoned(b, g.y_len());
        let mut arg = b.upload(&vec![u32::MAX; g.y_len()]).unwrap();
        b.maxpool2d_forward(&g, View::all(&dxin), ViewMut::all(&mut y), ViewMut::all(&mut arg)).unwrap();
        assert_close(&format!("maxpool2d_forward y {g:?}"), &down(b, &y), &want_y, tol);
        assert_eq!(down(b, &arg), want_arg, "maxpool2d_forward argmax {g:?}");
        let ddy = b.upload(&dy).unwrap();
        let mut dx = poisoned(b, g.x_len());
        b.maxpool2d_backward(&g, View::all(&ddy), View::all(&arg), ViewMut::all(&mut dx)).unwrap();
        assert_close(&format!("maxpool2d_backward {g:?}"), &down(b, &dx), &want_dx, tol);
    }
}

pub fn softmax_cross_entropy<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(8);
    for (n, classes, scale) in [(1, 10, 1.0), (37, 10, 3.0), (128, 10, 1.0), (5, 3, 50.0), (1000, 10, 10.0)] {
        let logits = uniform(&mut r, n * classes, -scale, scale);
        let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..classes as u32)).collect();
        let grad_scale = 1.0 / n as f32;
        let mut want_d = vec![0.0; n * classes];
        let mut want_stats = vec![1.5, 2.0];
        reference::softmax_cross_entropy(n, classes, 0.0, &logits, &labels, grad_scale, Some(&mut want_d), &mut want_stats).unwrap();
        let (dl, dlab) = (b.upload(&logits).unwrap(), b.upload(&labels).unwrap());
        for with_grad in [true, false] {
            let mut d = poisoned(b, n * classes);
            let mut stats = b.upload(&[1.5f32, 2.0]).unwrap();
            b.softmax_cross_entropy(
                n,
                classes,
                0.0,
                View::all(&dl),
                View::all(&dlab),
                grad_scale,
                with_grad.then(|| ViewMut::all(&mut d)),
                ViewMut::all(&mut stats),
            )
            .unwrap();
            let s = down(b, &stats);
            assert_close(&format!("softmax_cross_entropy loss n={n}"), &s[..1], &want_stats[..1], tol.max(1e-5));
            assert_eq!(s[1], want_stats[1], "softmax_cross_entropy correct count n={n}");
            if with_grad {
                assert_close(&format!("softmax_cross_entropy dlogits n={n}"), &down(b, &d), &want_d, tol);
            }
        }
    }
}

pub fn optimizer_step<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(9);
    let sgd = |momentum, nesterov, weight_decay| UpdateRule::Sgd { momentum, nesterov, weight_decay };
    let adam = |weight_decay, decoupled| UpdateRule::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, decoupled };
    let cases = [
        (1, sgd(0.9, false, 0.0)),
        (1000, sgd(0.0, false, 0.0)),
        (61_706, sgd(0.9, false, 5e-4)),
        (4099, sgd(0.5, true, 0.1)),
        (1, adam(0.0, false)),
        (61_706, adam(1e-2, false)),
        (4099, adam(1e-2, true)),
    ];
    for (len, rule) in cases {
        // t = 3: Adam's bias corrections 1 - beta^t.
        let (bias_correction1, bias_correction2) = (1.0 - 0.9f32.powi(3), 1.0 - 0.999f32.powi(3));
        let hyper = Hyper { lr: 0.05, bias_correction1, bias_correction2, skip: 0.0 }.to_array();
        let p = uniform(&mut r, len, -1.0, 1.0);
        let g = uniform(&mut r, len, -1.0, 1.0);
        let mut st = uniform(&mut r, rule.state_len(len), -1.0, 1.0);
        if let UpdateRule::Adam { .. } = rule {
            st[len..].iter_mut().for_each(|v| *v = v.abs()); // second moments are >= 0
        }
        let (mut wp, mut wst) = (p.clone(), st.clone());
        reference::optimizer_step(&rule, &hyper, &mut wp, &g, &mut wst);
        let (mut dp, dg, mut dst, dh) = (b.upload(&p).unwrap(), b.upload(&g).unwrap(), b.upload(&st).unwrap(), b.upload(&hyper).unwrap());
        b.optimizer_step(&rule, View::all(&dh), ViewMut::all(&mut dp), View::all(&dg), ViewMut::all(&mut dst)).unwrap();
        assert_close(&format!("optimizer_step {rule:?} params {len}"), &down(b, &dp), &wp, tol);
        assert_close(&format!("optimizer_step {rule:?} state {len}"), &down(b, &dst), &wst, tol);
        // A skipped step (loss scaling's overflow) leaves every bit as it was.
        let skip = Hyper { lr: 0.05, bias_correction1, bias_correction2, skip: 1.0 }.to_array();
        let (mut dp, dg, mut dst, dh) = (b.upload(&p).unwrap(), b.upload(&g).unwrap(), b.upload(&st).unwrap(), b.upload(&skip).unwrap());
        b.optimizer_step(&rule, View::all(&dh), ViewMut::all(&mut dp), View::all(&dg), ViewMut::all(&mut dst)).unwrap();
        assert_eq!(bits(&down(b, &dp)), bits(&p), "optimizer_step {rule:?} skipped: params {len}");
        assert_eq!(bits(&down(b, &dst)), bits(&st), "optimizer_step {rule:?} skipped: state {len}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn gather_batch<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(10);
    let (count, sample_len) = (100usize, 784usize);
    let images: Vec<u8> = (0..count * sample_len).map(|_| r.random_range(0..=255u8)).collect();
    let labels: Vec<u8> = (0..count).map(|_| r.random_range(0..10u8)).collect();
    let (di, dl) = (b.upload(&images).unwrap(), b.upload(&labels).unwrap());
    for n in [1usize, 37, 100, 128] {
        let idx: Vec<u32> = (0..n).map(|_| r.random_range(0..count as u32)).collect();
        let spec = Gather { n, sample_len, channels: 1, mean: [0.1307, 0.0, 0.0, 0.0], std: [0.3081, 1.0, 1.0, 1.0] };
        let (mut wx, mut wy) = (vec![0.0; n * sample_len], vec![0u32; n]);
        reference::gather_batch(&spec, &images, &labels, &idx, &mut wx, &mut wy).unwrap();
        let didx = b.upload(&idx).unwrap();
        let mut x = poisoned(b, n * sample_len);
        let mut y = b.upload(&vec![u32::MAX; n]).unwrap();
        b.gather_batch(&spec, View::all(&di), View::all(&dl), View::all(&didx), ViewMut::all(&mut x), ViewMut::all(&mut y)).unwrap();
        assert_close(&format!("gather_batch x n={n}"), &down(b, &x), &wx, tol);
        assert_eq!(down(b, &y), wy, "gather_batch labels n={n}");
    }
}

// ---- gradient checks -------------------------------------------------------

/// Checks a layer's backward against central finite differences of
/// `L = sum(y * r)` for a random upstream gradient `r`, on a sample of input
/// and parameter elements. `x_gen` makes inputs (kept away from kinks).
fn gradcheck_layer<B: Backend>(
    b: &B,
    what: &str,
    mut layer: Box<dyn Layer<B>>,
    n: usize,
    input: &[usize],
    x_gen: &mut dyn FnMut(&mut ChaCha8Rng, usize) -> Vec<f32>,
    eps: f32,
) {
    let mut r = rng(11);
    let out = layer.build(input).unwrap();
    let (in_len, out_len) = (n * input.iter().product::<usize>(), n * out.iter().product::<usize>());
    let specs = layer.param_specs();
    let mut offsets = Vec::new();
    let mut total = 0;
    for s in &specs {
        offsets.push(total);
        total += s.len();
    }
    layer.bind_params(&offsets);
    layer.init_buffers(b).unwrap();
    layer.reserve(b, n).unwrap();
    let rng_state = b.upload(&[r.random::<u32>(), r.random::<u32>()]).unwrap();
    let params = uniform(&mut r, total, -0.5, 0.5);
    let x = x_gen(&mut r, in_len);
    let upstream = uniform(&mut r, out_len, -1.0, 1.0);

    let loss = |layer: &mut Box<dyn Layer<B>>, x: &[f32], params: &[f32]| -> f64 {
        let (dx, dp) = (b.upload(x).unwrap(), b.upload(params).unwrap());
        let mut y: B::Buf<f32> = b.alloc(out_len).unwrap();
        let ctx = Ctx { backend: b, n, params: &dp, training: true, rng: View::all(&rng_state) };
        layer.forward(&ctx, View::all(&dx), ViewMut::all(&mut y)).unwrap();
        down(b, &y).iter().zip(&upstream).map(|(y, r)| *y as f64 * *r as f64).sum()
    };

    // Analytic gradients.
    let (dx_in, dp) = (b.upload(&x).unwrap(), b.upload(&params).unwrap());
    let mut y: B::Buf<f32> = b.alloc(out_len).unwrap();
    let ctx = Ctx { backend: b, n, params: &dp, training: true, rng: View::all(&rng_state) };
    layer.forward(&ctx, View::all(&dx_in), ViewMut::all(&mut y)).unwrap();
    let dup = b.upload(&upstream).unwrap();
    let mut grads = poisoned(b, total.max(1));
    let mut gx = poisoned(b, in_len);
    layer.backward(&ctx, &mut grads, View::all(&dx_in), View::all(&y), View::all(&dup), Some(ViewMut::all(&mut gx))).unwrap();
    let (gx, grads) = (down(b, &gx), down(b, &grads));

    let check = |name: &str, i: usize, analytic: f32, numeric: f64| {
        let err = (analytic as f64 - numeric).abs();
        let bound = 2e-3 + 1e-2 * numeric.abs().max(analytic.abs() as f64);
        assert!(err <= bound, "{what}: d{name}[{i}] analytic {analytic} vs finite difference {numeric} (error {err:.2e} > {bound:.2e})");
    };
    let sample = |len: usize, r: &mut ChaCha8Rng| -> Vec<usize> {
        if len <= 40 {
            (0..len).collect()
        } else {
            (0..40).map(|_| r.random_range(0..len)).collect()
        }
    };
    // A half step that gives another slope means the step crossed a kink (a
    // fused ReLU whose input moved through 0): not differentiable there, skipped.
    // (Curvature moves central differences by O(step^2) only.)
    let (mut skipped, mut checked) = (0, 0);
    let xs_sample = sample(in_len, &mut r);
    let ps_sample = sample(total, &mut r);
    // (name, element, analytic gradient, which of x / params the step perturbs)
    let cases = xs_sample.into_iter().map(|i| ("x", i, gx[i], true)).chain(ps_sample.into_iter().map(|i| ("param", i, grads[i], false)));
    for (name, i, analytic, on_x) in cases {
        let mut at = |step: f32| {
            let (mut xs, mut ps) = (x.clone(), params.clone());
            let target = if on_x { &mut xs } else { &mut ps };
            target[i] += step;
            loss(&mut layer, &xs, &ps)
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let numeric_half = (at(0.5 * eps) - at(-0.5 * eps)) / eps as f64;
        if (numeric - numeric_half).abs() > 0.5 * (2e-3 + 1e-2 * numeric.abs()) {
            skipped += 1;
            continue;
        }
        checked += 1;
        check(name, i, analytic, numeric);
    }
    // (A quarter may: with a fused ReLU, about one input in ten sits within a step of 0.)
    assert!(skipped * 3 <= checked, "{what}: {skipped} of {} elements sat on kinks (inputs too close to them?)", skipped + checked);
}

fn smooth_inputs(r: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    uniform(r, len, -1.0, 1.0)
}

/// Values at least 0.05 away from 0 so a small step never crosses the ReLU kink.
fn away_from_zero(r: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| r.random_range(0.05f32..1.0) * if r.random_bool(0.5) { 1.0 } else { -1.0 }).collect()
}

/// Distinct values spaced 0.01 apart (shuffled) and none within 0.002 of 0, so
/// a small step never changes a window's argmax or crosses a fused ReLU's kink.
fn distinct(r: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|i| (i as f32 - (len / 2) as f32) * 0.01 + 0.003).collect();
    for i in (1..len).rev() {
        v.swap(i, r.random_range(0..=i));
    }
    v
}

pub fn gradcheck_linear<B: Backend>(b: &B, _tol: f32) {
    for (n, i, o) in [(1, 1, 1), (3, 7, 5), (8, 400, 120)] {
        gradcheck_layer(b, &format!("linear n={n} {i}->{o}"), Box::new(Linear::new(i, o)), n, &[i], &mut smooth_inputs, 1e-2);
    }
    // Without a bias and scaled (the speed-run network's classifier).
    let layer = Linear::new(12, 5).without_bias().scaled(1.0 / 9.0);
    gradcheck_layer(b, "linear 12->5, no bias, scale 1/9", Box::new(layer), 4, &[12], &mut smooth_inputs, 1e-2);
}

pub fn gradcheck_conv2d<B: Backend>(b: &B, _tol: f32) {
    for g in conv_cases().into_iter().take(5) {
        let layer = Conv2d::new(g.c_in, g.c_out, g.k, g.stride, g.pad);
        gradcheck_layer(b, &format!("conv2d {g:?}"), Box::new(layer), g.n.min(3), &[g.c_in, g.h, g.w], &mut smooth_inputs, 1e-2);
    }
}

pub fn gradcheck_maxpool2d<B: Backend>(b: &B, _tol: f32) {
    for g in pool_cases() {
        let layer = MaxPool2d::new(g.k, g.stride, g.pad);
        let layer = if g.relu { layer.with_relu() } else { layer };
        gradcheck_layer(b, &format!("maxpool2d {g:?}"), Box::new(layer), g.n.min(4), &[g.c, g.h, g.w], &mut distinct, 1e-3);
    }
}

pub fn gradcheck_relu<B: Backend>(b: &B, _tol: f32) {
    gradcheck_layer(b, "relu", Box::new(Relu), 4, &[3, 5, 5], &mut away_from_zero, 1e-2);
}

/// GELU is smooth: inputs over its curved part, [-3, 3], kinks need no avoiding.
pub fn gradcheck_gelu<B: Backend>(b: &B, _tol: f32) {
    gradcheck_layer(b, "gelu", Box::new(Gelu), 4, &[3, 5, 5], &mut |r, len| uniform(r, len, -3.0, 3.0), 1e-2);
}

pub fn gradcheck_flatten<B: Backend>(b: &B, _tol: f32) {
    gradcheck_layer(b, "flatten", Box::new(Flatten), 2, &[3, 4, 5], &mut smooth_inputs, 1e-2);
}

/// The loss's gradient (plain and label-smoothed) against finite differences of the mean loss
/// (every logit of the small cases, 40 random ones of the 100-class ones).
pub fn gradcheck_loss<B: Backend>(b: &B, _tol: f32) {
    let mut r = rng(23);
    for (n, classes, smoothing) in
        [(1, 10, 0.0f32), (6, 10, 0.0), (4, 3, 0.0), (1, 10, 0.1), (6, 10, 0.3), (4, 3, 0.1), (5, 3, 0.3), (3, 100, 0.1), (2, 100, 0.3)]
    {
        let logits = uniform(&mut r, n * classes, -3.0, 3.0);
        let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..classes as u32)).collect();
        let dlab = b.upload(&labels).unwrap();
        let mean_loss = |l: &[f32]| -> f64 {
            let dl = b.upload(l).unwrap();
            let mut stats: B::Buf<f32> = b.alloc(2).unwrap();
            b.softmax_cross_entropy(n, classes, smoothing, View::all(&dl), View::all(&dlab), 1.0, None, ViewMut::all(&mut stats)).unwrap();
            down(b, &stats)[0] as f64 / n as f64
        };
        let dl = b.upload(&logits).unwrap();
        let mut d = poisoned(b, n * classes);
        let mut stats: B::Buf<f32> = b.alloc(2).unwrap();
        b.softmax_cross_entropy(
            n,
            classes,
            smoothing,
            View::all(&dl),
            View::all(&dlab),
            1.0 / n as f32,
            Some(ViewMut::all(&mut d)),
            ViewMut::all(&mut stats),
        )
        .unwrap();
        let d = down(b, &d);
        let elements: Vec<usize> =
            if n * classes <= 60 { (0..n * classes).collect() } else { (0..40).map(|_| r.random_range(0..n * classes)).collect() };
        let eps = 1e-2f32;
        for i in elements {
            let (mut p, mut m) = (logits.clone(), logits.clone());
            p[i] += eps;
            m[i] -= eps;
            let numeric = (mean_loss(&p) - mean_loss(&m)) / (2.0 * eps as f64);
            let err = (d[i] as f64 - numeric).abs();
            assert!(
                err <= 1e-3 + 1e-2 * numeric.abs(),
                "softmax_cross_entropy n={n} classes={classes} smoothing={smoothing}: dlogits[{i}] {} vs finite difference {numeric}",
                d[i]
            );
        }
    }
}

/// A ResNet-18 with narrow tensors (see [`crate::backend::NarrowEdges`])
/// against the same model with every activation fp32 (N, C, H, W), at each
/// precision. Narrow tensors are rounded where the wide ones stay fp32 (the
/// residual sums and their gradients), so both are measured against the fp32
/// model: the narrow run's logits and parameter gradients must be as close to
/// it as the wide run's, give or take a factor of 2 and a few roundings; a
/// layout bug is off by the values' own size. Where nothing is narrow the two
/// runs must agree up to a few roundings. A backend that offers narrow edges at a precision
/// must pass some tensors narrow there.
pub fn model_narrow_edges<B: Backend>(b: &B, _tol: f32) {
    use crate::model::{Model, ModelConfig};
    let _restore = Restore(b);
    let probe = Conv2dGeom { n: 1, c_in: 64, h: 8, w: 8, c_out: 64, k: 3, stride: 1, pad: 1 };
    let offers_at = |p| {
        b.set_precision(p).unwrap();
        let offers = b.conv2d_batchnorm_narrow(&probe);
        offers.x && offers.y
    };
    // Narrow runs need enough pixels for the last stage's BatchNorm; wide-only backends a quick check.
    let any_narrow = b.precisions().into_iter().any(offers_at);
    b.set_precision(crate::backend::Precision::Fp32).unwrap();
    let (n, side) = if any_narrow { (8, 16) } else { (4, 8) };
    let input = [3, side, side];
    let mut r = rng(14);
    let x = b.upload(&uniform(&mut r, n * 3 * side * side, -1.0, 1.0)).unwrap();
    let labels = b.upload(&(0..n as u32).map(|i| i * 3 % 10).collect::<Vec<u32>>()).unwrap();
    let run = |allow: bool| {
        let mut model = Model::new(b, &ModelConfig::Resnet18, &input, 10, 5).unwrap();
        model.allow_narrow_edges(allow);
        model.reserve_backward(b, n).unwrap();
        model.forward_train(b, n, View::all(&x)).unwrap();
        let (mut dlogits, mut stats) = (b.alloc(n * 10).unwrap(), b.alloc(2).unwrap());
        let (logits, dl) = (model.logits(n).unwrap(), Some(ViewMut::all(&mut dlogits)));
        b.softmax_cross_entropy(n, 10, 0.0, logits, View::all(&labels), 1.0 / n as f32, dl, ViewMut::all(&mut stats)).unwrap();
        model.backward(b, n, View::all(&x), View::all(&dlogits)).unwrap();
        (b.download(model.logits(n).unwrap()).unwrap(), down(b, &model.params.grads), model.narrow_tensors())
    };
    let (exact_logits, exact_grads, _) = if any_narrow { run(false) } else { Default::default() };
    let rel = |got: &[f32], want: &[f32]| {
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        got.iter().zip(want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs())) / scale
    };
    for p in b.precisions() {
        b.set_precision(p).unwrap();
        let ((logits, grads, narrow), (wide_logits, wide_grads, wide)) = (run(true), run(false));
        assert_eq!(wide, 0, "resnet18 at {p}: tensors passed narrow though not allowed");
        let offers = b.conv2d_batchnorm_narrow(&probe);
        assert_eq!(narrow > 0, offers.x && offers.y, "resnet18 at {p}: {narrow} narrow tensors where the backend offers {offers:?}");
        let u = p.unit_roundoff().max(1e-6);
        if narrow == 0 {
            // The same model twice (cuDNN's fastest algorithms need not be deterministic).
            assert_close(&format!("resnet18 at {p}, nothing narrow: logits"), &logits, &wide_logits, 4.0 * u);
            assert_close(&format!("resnet18 at {p}, nothing narrow: gradients"), &grads, &wide_grads, 8.0 * u);
            continue;
        }
        for (what, got, wide, exact) in [("logits", &logits, &wide_logits, &exact_logits), ("gradients", &grads, &wide_grads, &exact_grads)]
        {
            let (e_narrow, e_wide) = (rel(got, exact), rel(wide, exact));
            eprintln!("resnet18 {what} at {p}: narrow {e_narrow:.3e}, wide {e_wide:.3e} from fp32's ({narrow} narrow tensors)");
            assert!(
                e_narrow <= 2.0 * e_wide + 4.0 * u,
                "resnet18 {what} at {p}, {narrow} narrow tensors: {e_narrow:.3e} from fp32's, the wide run's {e_wide:.3e}"
            );
        }
    }
}

/// End to end through whole models: each backward (every layer wired
/// together, loss included; for the residual network, gradients of tensors
/// read twice summed) against finite differences of the mean loss.
pub fn gradcheck_model<B: Backend>(b: &B, _tol: f32) {
    use crate::model::{Model, ModelConfig};
    let mut r = rng(13);
    let builtin = |config: ModelConfig, input: &[usize]| {
        let graph = config.graph(input, 10).unwrap();
        (config, graph)
    };
    let cases = [
        builtin(ModelConfig::Lenet5, &[1, 28, 28]),
        builtin(ModelConfig::Mlp { sizes: vec![784, 32, 10] }, &[1, 28, 28]),
        builtin(ModelConfig::MnistCnn { width: 3, dropout: 0.25 }, &[1, 28, 28]),
        // Three stages of one basic block: identity and 1x1-conv shortcuts.
        builtin(ModelConfig::CifarResnet { depth: 8 }, &[3, 8, 8]),
        // Whitening conv, GELU, max-pools, BatchNorm (eps 1e-12), a scaled bias-free Linear.
        builtin(ModelConfig::CifarSpeed { widths: [2, 3, 4] }, &[3, 32, 32]),
        (ModelConfig::Custom { name: "adds".into() }, adds_graph()),
    ];
    for (config, graph) in cases {
        let n = 3;
        let input = graph.input.clone();
        let mut model = Model::build(b, config.clone(), graph, r.random_range(0..1000), crate::model::Init::PyTorch).unwrap();
        let x = uniform(&mut r, n * input.iter().product::<usize>(), -1.0, 2.0);
        let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..10)).collect();
        let (dx, dlab) = (b.upload(&x).unwrap(), b.upload(&labels).unwrap());
        // Training mode (BatchNorm's batch statistics, dropout's mask: the
        // step counter does not move, so every pass draws the same mask).
        let loss_of = |model: &mut Model<B>| -> f64 {
            model.forward_train(b, n, View::all(&dx)).unwrap();
            let mut stats: B::Buf<f32> = b.alloc(2).unwrap();
            b.softmax_cross_entropy(n, 10, 0.0, model.logits(n).unwrap(), View::all(&dlab), 1.0, None, ViewMut::all(&mut stats)).unwrap();
            down(b, &stats)[0] as f64 / n as f64
        };
        let normalized = matches!(config, ModelConfig::MnistCnn { .. } | ModelConfig::CifarResnet { .. });
        if normalized {
            // BatchNorm centres every ReLU's input on its kink; a bias of 1
            // keeps most units away from it so that few finite-difference
            // steps cross one (those that do are skipped below).
            let mut p = down(b, &model.params.data);
            let is_bn = |name: &str| name.contains("bn") || name.contains("downsample.1");
            for e in model.params.entries.iter().filter(|e| is_bn(&e.name) && e.name.ends_with(".bias")) {
                p[e.offset..e.offset + e.len()].fill(1.0);
            }
            b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
        }
        model.reserve_backward(b, n).unwrap();
        loss_of(&mut model);
        let mut dlogits: B::Buf<f32> = b.alloc(n * 10).unwrap();
        let mut stats: B::Buf<f32> = b.alloc(2).unwrap();
        b.softmax_cross_entropy(
            n,
            10,
            0.0,
            model.logits(n).unwrap(),
            View::all(&dlab),
            1.0 / n as f32,
            Some(ViewMut::all(&mut dlogits)),
            ViewMut::all(&mut stats),
        )
        .unwrap();
        model.backward(b, n, View::all(&dx), View::all(&dlogits)).unwrap();
        let grads = down(b, &model.params.grads);
        let params = down(b, &model.params.data);
        // Small steps (a larger one crosses ReLU / max-pool kinks all over the
        // net); steps that still cross one are detected and skipped below. The
        // bound is loose for tiny gradients (f32 rounding of the loss) and 5%
        // for the large ones, which wiring mistakes get wrong by O(1).
        // BatchNorm puts ReLU inputs near their kinks: the strong model needs a smaller step.
        // (Its smaller step makes f32 rounding of the loss count for more: a larger absolute tolerance.)
        let (eps, abs_tol) = if normalized { (3e-4f32, 4e-3) } else { (1e-3, 2e-3) };
        for e in model.params.entries.clone() {
            // The largest-gradient elements of each tensor plus random ones.
            let mut idx: Vec<usize> = (0..e.len()).collect();
            idx.sort_by(|&i, &j| grads[e.offset + j].abs().total_cmp(&grads[e.offset + i].abs()));
            idx.truncate(4);
            idx.extend((0..12).map(|_| r.random_range(0..e.len())));
            let base = loss_of(&mut model);
            let mut checked = 0;
            for i in idx {
                let at = e.offset + i;
                let mut p = params.clone();
                p[at] += eps;
                b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
                let plus = loss_of(&mut model);
                p[at] -= 2.0 * eps;
                b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
                let minus = loss_of(&mut model);
                p[at] = params[at] + 0.5 * eps;
                b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
                let plus_half = loss_of(&mut model);
                p[at] = params[at] - 0.5 * eps;
                b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
                let minus_half = loss_of(&mut model);
                b.write(ViewMut::all(&mut model.params.data), &params).unwrap();
                let numeric = (plus - minus) / (2.0 * eps as f64);
                let numeric_half = (plus_half - minus_half) / eps as f64;
                // One-sided slopes that disagree, or a half step that gives
                // another slope, mean the step crossed a ReLU or max-pool kink
                // (several, possibly cancelling): not differentiable there; skip it.
                let (left, right) = ((base - minus) / eps as f64, (plus - base) / eps as f64);
                // (The thresholds sit above f32 rounding noise of the slopes.)
                let bound = abs_tol + 5e-2 * numeric.abs();
                if (left - right).abs() > bound || (numeric - numeric_half).abs() > 0.5 * bound + 2e-3 {
                    // Not differentiable within the step. It still counts as checked when one side
                    // is smooth (its full and half steps give one slope) and that slope is the
                    // analytic gradient (seen in CI: max-pool ties downstream of a 2-channel
                    // BatchNorm put both its weights next to a kink on one side). A side that
                    // disagrees proves nothing: another kink may sit close by.
                    let (left_half, right_half) = ((base - minus_half) / (0.5 * eps as f64), (plus_half - base) / (0.5 * eps as f64));
                    let one_sided = [(left, left_half), (right, right_half)]
                        .into_iter()
                        .any(|(full, half)| (full - half).abs() <= 0.5 * bound && (grads[at] as f64 - full).abs() <= bound);
                    checked += one_sided as usize;
                    continue;
                }
                checked += 1;
                // Either step size may still straddle a kink the checks above missed: one must agree.
                let mut err = (grads[at] as f64 - numeric).abs().min((grads[at] as f64 - numeric_half).abs());
                if err > bound {
                    // Kinks close together (BatchNorm centres many ReLU inputs near 0) bend the loss
                    // within both steps: a third, smaller one must agree then (seen once in CI).
                    let third = eps / 3.0;
                    let mut p = params.clone();
                    p[at] += third;
                    b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
                    let plus_third = loss_of(&mut model);
                    p[at] = params[at] - third;
                    b.write(ViewMut::all(&mut model.params.data), &p).unwrap();
                    let minus_third = loss_of(&mut model);
                    b.write(ViewMut::all(&mut model.params.data), &params).unwrap();
                    err = err.min((grads[at] as f64 - (plus_third - minus_third) / (2.0 * third as f64)).abs());
                }
                assert!(
                    err <= bound,
                    "{} model: d{}[{i}] analytic {} vs finite differences {numeric} and {numeric_half}",
                    config.name(),
                    e.name,
                    grads[at]
                );
            }
            // A conv bias before BatchNorm has no effect on the loss: its gradient is 0
            // and its finite differences are all rounding noise (often skipped).
            let vanishing = grads[e.offset..e.offset + e.len()].iter().all(|g| g.abs() < 1e-5);
            assert!(checked >= 4 || vanishing, "{} model: only {checked} elements of {} were away from kinks", config.name(), e.name);
        }
    }
}

/// A graph whose adds read one tensor twice and the graph's input:
/// relu(2 conv(x) + x), pooled, then a Linear.
fn adds_graph() -> crate::graph::Graph {
    use crate::graph::{Conv, GraphBuilder};
    let mut g = GraphBuilder::new("adds", &[2, 6, 6]);
    let x = g.input();
    let y = g.conv2d("conv", x, Conv::new(2, 3).pad(1)).unwrap();
    let y = g.add(y, y).unwrap();
    let y = g.add(y, x).unwrap();
    let y = g.relu(y).unwrap();
    let y = g.global_avg_pool(y).unwrap();
    let logits = g.linear("fc", y, 10).unwrap();
    g.finish(logits).unwrap()
}

pub fn avgpool2d<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(14);
    let g = |n, c, h, w, k, stride, pad| Pool2dGeom { n, c, h, w, k, stride, pad, relu: false };
    for g in [g(1, 1, 4, 4, 2, 2, 0), g(3, 5, 7, 7, 7, 7, 0), g(2, 3, 7, 9, 3, 2, 1), g(128, 64, 7, 7, 7, 1, 0), g(4, 2, 6, 5, 2, 1, 1)] {
        let x = uniform(&mut r, g.x_len(), -1.0, 1.0);
        let dy = uniform(&mut r, g.y_len(), -1.0, 1.0);
        let (mut want_y, mut want_dx) = (vec![0.0; g.y_len()], vec![0.0; g.x_len()]);
        reference::avgpool2d_forward(&g, &x, &mut want_y);
        reference::avgpool2d_backward(&g, &dy, &mut want_dx);
        let (dxin, ddy) = (b.upload(&x).unwrap(), b.upload(&dy).unwrap());
        let (mut y, mut dx) = (poisoned(b, g.y_len()), poisoned(b, g.x_len()));
        b.avgpool2d_forward(&g, View::all(&dxin), ViewMut::all(&mut y)).unwrap();
        b.avgpool2d_backward(&g, View::all(&ddy), ViewMut::all(&mut dx)).unwrap();
        assert_close(&format!("avgpool2d_forward {g:?}"), &down(b, &y), &want_y, tol);
        assert_close(&format!("avgpool2d_backward {g:?}"), &down(b, &dx), &want_dx, tol);
    }
    let relu = Pool2dGeom { n: 1, c: 1, h: 4, w: 4, k: 2, stride: 2, pad: 0, relu: true };
    let (x, mut y): (B::Buf<f32>, B::Buf<f32>) = (b.alloc(16).unwrap(), b.alloc(4).unwrap());
    assert!(b.avgpool2d_forward(&relu, View::all(&x), ViewMut::all(&mut y)).is_err(), "a fused ReLU is refused");
}

pub fn batchnorm_cases() -> Vec<BatchNormGeom> {
    use Activation as A;
    let g = |n, c, hw, act| BatchNormGeom { n, c, hw, eps: 1e-5, momentum: 0.1, act };
    vec![
        g(3, 1, 1, A::None),
        g(3, 5, 49, A::Relu),
        g(128, 32, 784, A::Relu),
        g(7, 130, 1, A::None),
        g(64, 64, 196, A::None),
        g(1, 3, 10, A::Relu),
        g(5, 7, 1, A::Gelu),
        g(16, 24, 289, A::Gelu),
        g(1, 3, 10, A::Gelu),
        // HW % 4 == 0: the CUDA kernels' four-at-a-time path, with each activation.
        g(6, 9, 16, A::Gelu),
        g(2, 3, 4, A::Relu),
        g(3, 5, 8, A::None),
    ]
}

pub fn batchnorm<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(15);
    for g in batchnorm_cases() {
        // An offset mean: the variance must not cancel catastrophically.
        let offset = r.random_range(-4.0f32..4.0);
        let x: Vec<f32> = uniform(&mut r, g.len(), -1.0, 1.0).iter().map(|v| v * 2.0 + offset).collect();
        let params = uniform(&mut r, 2 * g.c, -1.0, 1.0);
        let mut running = uniform(&mut r, 2 * g.c, 0.1, 1.0);
        let dy = uniform(&mut r, g.len(), -1.0, 1.0);
        let (dxin, dp, ddy) = (b.upload(&x).unwrap(), b.upload(&params).unwrap(), b.upload(&dy).unwrap());
        for training in [true, false] {
            let (mut want_run, mut want_saved, mut want_y) = (running.clone(), vec![0.0; 2 * g.c], vec![0.0; g.len()]);
            reference::batchnorm_forward(&g, training, &x, &params, &mut want_run, &mut want_saved, &mut want_y);
            let mut drun = b.upload(&running).unwrap();
            let mut saved = poisoned(b, 2 * g.c);
            let mut y = poisoned(b, g.len());
            b.batchnorm_forward(
                &g,
                training,
                View::all(&dxin),
                View::all(&dp),
                ViewMut::all(&mut drun),
                ViewMut::all(&mut saved),
                ViewMut::all(&mut y),
            )
            .unwrap();
            assert_close(&format!("batchnorm_forward y {g:?} training={training}"), &down(b, &y), &want_y, tol);
            assert_close(&format!("batchnorm_forward running {g:?} training={training}"), &down(b, &drun), &want_run, tol);
            if !training {
                continue;
            }
            assert_close(&format!("batchnorm_forward saved {g:?}"), &down(b, &saved), &want_saved, tol);
            // Backward is given the backend's own forward output: an output within
            // rounding of 0 may be clamped by the fused ReLU on one device and not
            // on another, and the mask must be the one that forward produced.
            // (The fused GELU reads no y: it recomputes z from x and `saved`.)
            let (mut want_dx, mut want_dp) = (vec![0.0; g.len()], vec![0.0; 2 * g.c]);
            reference::batchnorm_backward(&g, &x, &down(b, &y), &dy, &params, &down(b, &saved), Some(&mut want_dx), &mut want_dp);
            let (mut dx, mut dparams) = (poisoned(b, g.len()), poisoned(b, 2 * g.c));
            b.batchnorm_backward(
                &g,
                View::all(&dxin),
                View::all(&y),
                View::all(&ddy),
                View::all(&dp),
                View::all(&saved),
                Some(ViewMut::all(&mut dx)),
                ViewMut::all(&mut dparams),
            )
            .unwrap();
            assert_close(&format!("batchnorm_backward dx {g:?}"), &down(b, &dx), &want_dx, tol);
            assert_close(&format!("batchnorm_backward dparams {g:?}"), &down(b, &dparams), &want_dp, tol);
            running = want_run;
        }
    }
    // One value per channel has no variance: refused in training, as in PyTorch.
    let g = BatchNormGeom { n: 1, c: 4, hw: 1, eps: 1e-5, momentum: 0.1, act: Activation::None };
    let (x, p): (B::Buf<f32>, B::Buf<f32>) = (b.alloc(4).unwrap(), b.alloc(8).unwrap());
    let (mut run, mut saved, mut y): (B::Buf<f32>, B::Buf<f32>, B::Buf<f32>) =
        (b.alloc(8).unwrap(), b.alloc(8).unwrap(), b.alloc(4).unwrap());
    let err =
        b.batchnorm_forward(&g, true, View::all(&x), View::all(&p), ViewMut::all(&mut run), ViewMut::all(&mut saved), ViewMut::all(&mut y));
    assert!(matches!(err, Err(crate::Error::Shape { op: "batchnorm_forward", .. })), "{err:?}");
}

pub fn dropout<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(16);
    for (len, p) in [(1usize, 0.5f32), (1000, 0.1), (100_003, 0.5), (40_000, 0.9)] {
        let spec = DropoutSpec { p, salt: r.random_range(0..100) };
        let state = [r.random::<u32>(), r.random_range(0..1000)];
        let x = uniform(&mut r, len, -1.0, 1.0);
        let dy = uniform(&mut r, len, -1.0, 1.0);
        let (mut wy, mut wmask, mut wdx) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
        reference::dropout_forward(&spec, &state, &x, &mut wy, &mut wmask);
        reference::dropout_backward(&wmask, &dy, &mut wdx);
        let (dstate, dxin, ddy) = (b.upload(&state).unwrap(), b.upload(&x).unwrap(), b.upload(&dy).unwrap());
        let (mut y, mut mask, mut dx) = (poisoned(b, len), poisoned(b, len), poisoned(b, len));
        b.dropout_forward(&spec, View::all(&dstate), View::all(&dxin), ViewMut::all(&mut y), ViewMut::all(&mut mask)).unwrap();
        b.dropout_backward(View::all(&mask), View::all(&ddy), ViewMut::all(&mut dx)).unwrap();
        // The draws are integer arithmetic: the same elements are kept on every backend
        // (the scale 1/(1-p) may round differently where division is approximate).
        let mask = down(b, &mask);
        let kept = |m: &[f32]| m.iter().map(|&v| v != 0.0).collect::<Vec<bool>>();
        assert_eq!(kept(&mask), kept(&wmask), "dropout mask len={len} p={p}");
        assert_close(&format!("dropout mask len={len}"), &mask, &wmask, tol);
        assert_close(&format!("dropout_forward len={len}"), &down(b, &y), &wy, tol);
        assert_close(&format!("dropout_backward len={len}"), &down(b, &dx), &wdx, tol);
        if len >= 10_000 {
            let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / len as f64;
            assert!((kept - (1.0 - p as f64)).abs() < 0.02, "dropout p={p}: kept {kept}");
        }
    }
}

pub fn augment_cases() -> Vec<AugmentSpec> {
    let base = AugmentSpec {
        n: 5,
        c: 1,
        h: 28,
        w: 28,
        rotate_deg: 15.0,
        scale: 0.1,
        translate: 0.1,
        elastic: 0.0,
        flip: false,
        noise: 0.0,
        fill: -0.42,
        salt: 3,
    };
    vec![
        base,
        AugmentSpec { n: 128, elastic: 2.0, noise: 0.1, ..base },
        AugmentSpec { n: 3, c: 2, h: 9, w: 13, flip: true, rotate_deg: 180.0, ..base },
        AugmentSpec { n: 1, rotate_deg: 0.0, scale: 0.0, translate: 0.0, ..base },
    ]
}

pub fn augment<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(17);
    for spec in augment_cases() {
        let state = [r.random::<u32>(), r.random_range(0..10_000)];
        let x = uniform(&mut r, spec.len(), -0.5, 2.8);
        let mut want = vec![0.0; spec.len()];
        reference::augment(&spec, &state, &x, &mut want);
        let (dstate, dxin) = (b.upload(&state).unwrap(), b.upload(&x).unwrap());
        let mut y = poisoned(b, spec.len());
        b.augment(&spec, View::all(&dstate), View::all(&dxin), ViewMut::all(&mut y)).unwrap();
        // Sample positions come from sin/cos, which may round differently per device.
        assert_close(&format!("augment {spec:?}"), &down(b, &y), &want, tol.max(1e-4));
        if spec.rotate_deg == 0.0 && spec.scale == 0.0 && spec.translate == 0.0 && spec.elastic == 0.0 && spec.noise == 0.0 {
            assert_close("augment with nothing to do is the identity", &down(b, &y), &x, 1e-6);
        }
    }
}

/// `add` and `add_assign` on windows at different offsets of larger buffers
/// (nothing outside the output window may change), one length of ~5M.
pub fn add<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(19);
    for len in [1usize, 1000, 33_000, 5_000_011] {
        let a = uniform(&mut r, len, -1.0, 1.0);
        let bv = uniform(&mut r, len, -1.0, 1.0);
        let mut want = vec![0.0; len];
        reference::add(&a, &bv, &mut want);
        // a at offset 1, b at offset 0, y at offset 2.
        let da = b.upload(&[&[7.0f32][..], &a].concat()).unwrap();
        let db = b.upload(&[&bv[..], &[7.0, 7.0]].concat()).unwrap();
        let (va, vb) = (View::range(&da, 1, len).unwrap(), View::range(&db, 0, len).unwrap());
        let mut y = poisoned(b, len + 3);
        b.add(va, vb, ViewMut::range(&mut y, 2, len).unwrap()).unwrap();
        let got = down(b, &y);
        assert!(got[..2].iter().chain(&got[2 + len..]).all(|v| v.is_nan()), "add wrote outside its window (len {len})");
        assert_close(&format!("add len={len}"), &got[2..2 + len], &want, tol);
        drop((y, got));
        // The same windows with the ReLU after the sum.
        let mut y = poisoned(b, len + 3);
        b.add_relu(va, vb, ViewMut::range(&mut y, 2, len).unwrap()).unwrap();
        let got = down(b, &y);
        assert!(got[..2].iter().chain(&got[2 + len..]).all(|v| v.is_nan()), "add_relu wrote outside its window (len {len})");
        reference::add_relu(&a, &bv, &mut want);
        assert!(len < 1000 || want.iter().filter(|&&v| v == 0.0).count() > len / 4, "add_relu: the inputs clamp too little");
        assert_close(&format!("add_relu len={len}"), &got[2..2 + len], &want, tol);
        drop((y, got));
        // y = b, then y += a twice; y is a window at offset 1 and the elements around it keep their values.
        let mut acc = b.upload(&[&[5.0f32][..], &bv, &[6.0]].concat()).unwrap();
        let mut want = bv;
        for pass in 1..=2 {
            b.add_assign(va, ViewMut::range(&mut acc, 1, len).unwrap()).unwrap();
            reference::add_assign(&a, &mut want);
            let got = down(b, &acc);
            assert_eq!((got[0], got[len + 1]), (5.0, 6.0), "add_assign wrote outside its window (len {len})");
            assert_close(&format!("add_assign len={len} pass {pass}"), &got[1..=len], &want, tol);
        }
        if len <= 1000 {
            // Both inputs one window: y = 2a.
            let mut y = poisoned(b, len);
            b.add(va, va, ViewMut::all(&mut y)).unwrap();
            let twice: Vec<f32> = a.iter().map(|v| 2.0 * v).collect();
            assert_close(&format!("add a+a len={len}"), &down(b, &y), &twice, tol);
        }
    }
    // Mismatched lengths are shape errors.
    let (x3, x4): (B::Buf<f32>, B::Buf<f32>) = (b.alloc(3).unwrap(), b.alloc(4).unwrap());
    let mut y4: B::Buf<f32> = b.alloc(4).unwrap();
    let err = b.add(View::all(&x3), View::all(&x4), ViewMut::all(&mut y4));
    assert!(matches!(err, Err(crate::Error::Shape { op: "add", .. })), "{err:?}");
    let err = b.add(View::all(&x4), View::all(&x4), ViewMut::prefix(&mut y4, 3).unwrap());
    assert!(matches!(err, Err(crate::Error::Shape { op: "add", .. })), "{err:?}");
    let err = b.add_assign(View::all(&x3), ViewMut::all(&mut y4));
    assert!(matches!(err, Err(crate::Error::Shape { op: "add_assign", .. })), "{err:?}");
}

/// Crop geometries: the CIFAR and MNIST sizes, non-square images both ways,
/// reflect padding as large as it may be, cutout as large as the image, batch 1
/// and 64, an empty batch.
pub fn crop_cases() -> Vec<CropSpec> {
    use Padding::{Reflect, Zero};
    let s = |n, c, h, w, pad, padding, flip: bool, cutout| {
        let flip = if flip { Flip::Random } else { Flip::Off };
        CropSpec { n, c, h, w, pad, padding, flip, fixed: None, cutout, salt: 11 }
    };
    vec![
        // Nothing to do: the identity.
        s(1, 1, 28, 28, 0, Zero, false, 0),
        s(1, 3, 32, 32, 4, Reflect, true, 8),
        s(64, 3, 32, 32, 4, Zero, true, 8),
        s(64, 3, 32, 32, 4, Reflect, true, 0),
        s(64, 1, 28, 28, 2, Zero, false, 8),
        s(1, 1, 28, 28, 2, Reflect, false, 0),
        s(5, 3, 17, 23, 2, Reflect, true, 8),
        s(5, 3, 17, 23, 4, Zero, true, 0),
        s(3, 1, 23, 17, 4, Reflect, false, 8),
        // No shift: flips and cutout only.
        s(7, 3, 17, 23, 0, Reflect, true, 8),
        // Reflect padding of side - 1, the most PyTorch allows.
        s(4, 2, 5, 3, 2, Reflect, true, 3),
        // A cutout as large as the image.
        s(2, 1, 6, 6, 3, Zero, true, 6),
        s(0, 3, 32, 32, 4, Reflect, true, 8),
    ]
}

/// Exact equality (a crop only moves values; padding and cutout are 0), with
/// the first mismatch named by sample, channel, row and column.
fn assert_same_image(what: &str, spec: &CropSpec, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        let (plane, hw) = (spec.h * spec.w, spec.c * spec.h * spec.w);
        let (n, c, row, col) = (i / hw, (i % hw) / plane, (i % plane) / spec.w, i % spec.w);
        panic!("{what}: sample {n} channel {c} pixel (row {row}, col {col}): got {}, want {}", got[i], want[i]);
    }
}

pub fn crop_flip<B: Backend>(b: &B, _tol: f32) {
    let mut r = rng(20);
    for spec in crop_cases() {
        let len = spec.len();
        let states = [[r.random::<u32>(), r.random_range(0..100_000)], [0, 0], [u32::MAX, r.random::<u32>()]];
        for state in states {
            let x = uniform(&mut r, len, -1.0, 1.0);
            let mut want = vec![0.0; len];
            reference::crop_flip(&spec, &state, &x, &mut want);
            // rng, x and y are windows at offsets of larger buffers.
            let dstate = b.upload(&[u32::MAX - 1, state[0], state[1], 3]).unwrap();
            let dx = b.upload(&[&[9.0f32][..], &x].concat()).unwrap();
            let mut y = poisoned(b, len + 2);
            b.crop_flip(
                &spec,
                View::range(&dstate, 1, 2).unwrap(),
                View::range(&dx, 1, len).unwrap(),
                ViewMut::range(&mut y, 1, len).unwrap(),
            )
            .unwrap();
            let got = down(b, &y);
            assert!(got[0].is_nan() && got[len + 1].is_nan(), "crop_flip wrote outside its window {spec:?}");
            assert_same_image(&format!("crop_flip {spec:?} rng {state:?}"), &spec, &got[1..=len], &want);
            if spec.pad == 0 && spec.flip == Flip::Off && spec.cutout == 0 {
                assert_same_image("crop_flip with nothing to do is the identity", &spec, &got[1..=len], &x);
            }
        }
    }
    // Bad specs and lengths are errors (not panics, not out-of-bounds reads), and write nothing.
    let base = CropSpec { n: 2, c: 3, h: 8, w: 8, pad: 2, padding: Padding::Reflect, flip: Flip::Random, fixed: None, cutout: 4, salt: 1 };
    let bad = [
        CropSpec { h: 4, pad: 4, ..base },
        CropSpec { w: 3, pad: 3, ..base },
        CropSpec { pad: 9, ..base },
        CropSpec { h: 1, w: 1, pad: 1, ..base },
        CropSpec { pad: 65, padding: Padding::Zero, ..base },
        CropSpec { cutout: 9, ..base },
        // Fixed offsets past 2 * pad, or with a cutout; alternate flips with no steps per epoch.
        CropSpec { fixed: Some((5, 0)), cutout: 0, ..base },
        CropSpec { fixed: Some((0, 5)), cutout: 0, ..base },
        CropSpec { fixed: Some((1, 1)), ..base },
        CropSpec { flip: Flip::Alternate { steps_per_epoch: 0 }, ..base },
    ];
    let state = b.upload(&[1u32, 2]).unwrap();
    for spec in bad {
        let x = b.upload(&vec![1.0f32; spec.len()]).unwrap();
        let mut y = poisoned(b, spec.len());
        let err = b.crop_flip(&spec, View::all(&state), View::all(&x), ViewMut::all(&mut y));
        assert!(matches!(err, Err(crate::Error::Shape { op: "crop_flip", .. })), "{spec:?}: {err:?}");
        assert!(down(b, &y).iter().all(|v| v.is_nan()), "crop_flip wrote its output although the spec was refused: {spec:?}");
    }
    let len = base.len();
    let (x, short) = (b.upload(&vec![1.0f32; len]).unwrap(), b.upload(&vec![1.0f32; len - 1]).unwrap());
    let mut y = poisoned(b, len);
    let mut long = poisoned(b, len + 1);
    for err in [
        b.crop_flip(&base, View::prefix(&state, 1).unwrap(), View::all(&x), ViewMut::all(&mut y)),
        b.crop_flip(&base, View::all(&state), View::all(&short), ViewMut::all(&mut y)),
        b.crop_flip(&base, View::all(&state), View::all(&x), ViewMut::all(&mut long)),
    ] {
        assert!(matches!(err, Err(crate::Error::Shape { op: "crop_flip", .. })), "{err:?}");
    }
}

/// The flip modes and fixed offsets against the reference, bit for bit: each
/// mode at steps of even and odd epochs (of 5 steps: steps 0, 4, 12 even; 5, 9,
/// u32::MAX odd), fixed offsets with no flips and with every sample flipped, on
/// zero and reflect padding; and what each mode means, worked out without the
/// reference: Off with the centre offsets is the identity, Always its mirror
/// image, Alternate one of the two by the epoch.
pub fn crop_modes<B: Backend>(b: &B, _tol: f32) {
    let mut r = rng(24);
    let base = CropSpec { n: 9, c: 3, h: 11, w: 13, pad: 3, padding: Padding::Zero, flip: Flip::Off, fixed: None, cutout: 4, salt: 6 };
    let (len, seed) = (base.len(), r.random::<u32>());
    let x = uniform(&mut r, len, -1.0, 1.0);
    let mirrored: Vec<f32> = x.chunks_exact(base.w).flat_map(|row| row.iter().rev().copied()).collect();
    let dx = b.upload(&x).unwrap();
    let flips = [Flip::Off, Flip::Random, Flip::Always, Flip::Alternate { steps_per_epoch: 5 }];
    for padding in [Padding::Zero, Padding::Reflect] {
        for fixed in [None, Some((3, 3)), Some((0, 6)), Some((6, 1))] {
            for flip in flips {
                let spec = CropSpec { padding, flip, fixed, cutout: if fixed.is_some() { 0 } else { base.cutout }, ..base };
                for step in [0u32, 4, 5, 9, 12, u32::MAX] {
                    let what = format!("crop_flip {spec:?} at step {step}");
                    let mut want = vec![0.0; len];
                    reference::crop_flip(&spec, &[seed, step], &x, &mut want);
                    let dstate = b.upload(&[seed, step]).unwrap();
                    let mut y = poisoned(b, len);
                    b.crop_flip(&spec, View::all(&dstate), View::all(&dx), ViewMut::all(&mut y)).unwrap();
                    let got = down(b, &y);
                    assert_same_image(&what, &spec, &got, &want);
                    let odd_epoch = (step / 5) % 2 == 1;
                    let all_flipped = match flip {
                        Flip::Off => Some(false),
                        Flip::Always => Some(true),
                        Flip::Alternate { .. } => Some(odd_epoch),
                        Flip::Random => None,
                    };
                    if fixed == Some((3, 3)) {
                        if let Some(flipped) = all_flipped {
                            let image = if flipped { &mirrored } else { &x };
                            assert_same_image(&format!("{what}: the centre crop (mirrored: {flipped})"), &spec, &got, image);
                        }
                    }
                }
            }
        }
    }
}

/// The smoothed loss (summed over samples) and its gradient `grad_scale * (softmax - target)`
/// worked out from the definition in f64: `-sum_c target_c log p_c`, `target = (1 - s) onehot + s / C`.
fn smoothed_loss_f64(classes: usize, smoothing: f32, logits: &[f32], labels: &[u32], grad_scale: f32) -> (f64, Vec<f64>) {
    let s = smoothing as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; logits.len()];
    for (i, (row, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let log_z = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        for (c, &v) in row.iter().enumerate() {
            let target = (1.0 - s) * (c == label as usize) as u8 as f64 + s / classes as f64;
            let log_p = v as f64 - log_z;
            loss -= target * log_p;
            grad[i * classes + c] = grad_scale as f64 * (log_p.exp() - target);
        }
    }
    (loss, grad)
}

/// Softmax cross-entropy with label smoothing (PyTorch's `label_smoothing`),
/// against the reference and against the definition worked out in f64.
pub fn label_smoothing<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(21);
    for classes in [3usize, 10, 100] {
        for smoothing in [0.0f32, 0.1, 0.3] {
            for (n, scale) in [(1usize, 3.0f32), (37, 1.0), (129, 20.0)] {
                let logits = uniform(&mut r, n * classes, -scale, scale);
                let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..classes as u32)).collect();
                let grad_scale = 1.0 / n as f32;
                let (mut want_d, mut want_stats) = (vec![0.0; n * classes], vec![1.5, 2.0]);
                reference::softmax_cross_entropy(n, classes, smoothing, &logits, &labels, grad_scale, Some(&mut want_d), &mut want_stats)
                    .unwrap();
                let (def_loss, def_d) = smoothed_loss_f64(classes, smoothing, &logits, &labels, grad_scale);
                let def_d: Vec<f32> = def_d.iter().map(|&v| v as f32).collect();
                let what = format!("softmax_cross_entropy n={n} classes={classes} smoothing={smoothing}");
                let (dl, dlab) = (b.upload(&logits).unwrap(), b.upload(&labels).unwrap());
                for with_grad in [true, false] {
                    let mut d = poisoned(b, n * classes);
                    let mut stats = b.upload(&[1.5f32, 2.0]).unwrap();
                    b.softmax_cross_entropy(
                        n,
                        classes,
                        smoothing,
                        View::all(&dl),
                        View::all(&dlab),
                        grad_scale,
                        with_grad.then(|| ViewMut::all(&mut d)),
                        ViewMut::all(&mut stats),
                    )
                    .unwrap();
                    let s = down(b, &stats);
                    assert_close(&format!("{what}: loss"), &s[..1], &want_stats[..1], tol.max(1e-5));
                    // (The loss is summed in f32 from f32 log-sum-exps: 1e-4 of the definition.)
                    assert_close(&format!("{what}: loss (definition)"), &[s[0] - 1.5], &[def_loss as f32], 1e-4);
                    assert_eq!(s[1], want_stats[1], "{what}: correct count");
                    if with_grad {
                        let d = down(b, &d);
                        assert_close(&format!("{what}: dlogits"), &d, &want_d, tol);
                        assert_close(&format!("{what}: dlogits (definition)"), &d, &def_d, 1e-4);
                    } else {
                        assert!(down(b, &d).iter().all(|v| v.is_nan()), "{what}: dlogits written although not requested");
                    }
                }
            }
        }
    }
    // Smoothing outside [0, 1) is a shape error.
    let (logits, labels) = (b.upload(&[0.5f32, -0.5, 1.0]).unwrap(), b.upload(&[1u32]).unwrap());
    for smoothing in [1.0f32, 1.5, -0.1, f32::NAN] {
        let mut stats: B::Buf<f32> = b.alloc(2).unwrap();
        let err = b.softmax_cross_entropy(1, 3, smoothing, View::all(&logits), View::all(&labels), 1.0, None, ViewMut::all(&mut stats));
        assert!(matches!(err, Err(crate::Error::Shape { op: "softmax_cross_entropy", .. })), "smoothing {smoothing}: {err:?}");
    }
}

/// Per-channel gather normalization: one channel (MNIST), three with distinct
/// means and deviations (CIFAR, and a non-square image), four. The entries past
/// `channels` are NaN and 0: a backend that reads them writes NaN or infinities.
pub fn gather_channels<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(22);
    let nan = f32::NAN;
    let cases = [
        (1usize, 784usize, [0.1307, nan, nan, nan], [0.3081, 0.0, 0.0, 0.0]),
        (3, 3 * 32 * 32, [0.4914, 0.4822, 0.4465, nan], [0.2470, 0.2435, 0.2616, 0.0]),
        (3, 3 * 17 * 23, [0.9, 0.1, 0.5, nan], [0.05, 2.0, 0.5, 0.0]),
        (4, 4 * 5 * 7, [0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.9, 1.7]),
    ];
    for (channels, sample_len, mean, std) in cases {
        let count = 50usize;
        let images: Vec<u8> = (0..count * sample_len).map(|_| r.random_range(0..=255u8)).collect();
        let labels: Vec<u8> = (0..count).map(|_| r.random_range(0..=255u8)).collect();
        let (di, dl) = (b.upload(&images).unwrap(), b.upload(&labels).unwrap());
        for n in [1usize, 37, 128] {
            let idx: Vec<u32> = (0..n).map(|_| r.random_range(0..count as u32)).collect();
            let spec = Gather { n, sample_len, channels, mean, std };
            let (mut wx, mut wy) = (vec![0.0; n * sample_len], vec![0u32; n]);
            reference::gather_batch(&spec, &images, &labels, &idx, &mut wx, &mut wy).unwrap();
            let didx = b.upload(&idx).unwrap();
            let mut x = poisoned(b, n * sample_len);
            let mut y = b.upload(&vec![u32::MAX; n]).unwrap();
            b.gather_batch(&spec, View::all(&di), View::all(&dl), View::all(&didx), ViewMut::all(&mut x), ViewMut::all(&mut y)).unwrap();
            let x = down(b, &x);
            let what = format!("gather_batch channels={channels} sample_len={sample_len} n={n}");
            assert_close(&format!("{what}: x"), &x, &wx, tol);
            assert_eq!(down(b, &y), wy, "{what}: labels");
            // Each channel plane against the definition (px / 255 - mean) / std in f64.
            let plane = sample_len / channels;
            for (i, &k) in idx.iter().enumerate() {
                for c in 0..channels {
                    let at = |s: usize| s * sample_len + c * plane;
                    let src = &images[at(k as usize)..at(k as usize) + plane];
                    let def: Vec<f32> = src.iter().map(|&p| ((p as f64 / 255.0 - mean[c] as f64) / std[c] as f64) as f32).collect();
                    assert_close(&format!("{what}: sample {i} channel {c} (definition)"), &x[at(i)..at(i) + plane], &def, 1e-5);
                }
            }
        }
    }
    // Channels that do not divide the sample, none, too many, a deviation that is not positive: shape errors.
    let (images, labels, idx) = (b.upload(&vec![0u8; 2 * 784]).unwrap(), b.upload(&[0u8, 1]).unwrap(), b.upload(&[1u32]).unwrap());
    let ok = Gather { n: 1, sample_len: 784, channels: 1, mean: [0.5; 4], std: [0.5; 4] };
    for spec in [
        Gather { channels: 3, ..ok },
        Gather { channels: 5, ..ok },
        Gather { channels: 0, ..ok },
        Gather { channels: 2, std: [0.5, 0.0, 0.5, 0.5], ..ok },
        Gather { channels: 4, std: [0.5, 0.5, 0.5, f32::NAN], ..ok },
        Gather { std: [-0.5, 1.0, 1.0, 1.0], ..ok },
    ] {
        let mut x = poisoned(b, 784);
        let mut y: B::Buf<u32> = b.alloc(1).unwrap();
        let err =
            b.gather_batch(&spec, View::all(&images), View::all(&labels), View::all(&idx), ViewMut::all(&mut x), ViewMut::all(&mut y));
        assert!(matches!(err, Err(crate::Error::Shape { op: "gather_batch", .. })), "{spec:?}: {err:?}");
    }
}

pub fn gradcheck_avgpool2d<B: Backend>(b: &B, _tol: f32) {
    gradcheck_layer(b, "avgpool2d 3/2 pad 1", Box::new(AvgPool2d::new(3, 2, 1)), 2, &[3, 7, 6], &mut smooth_inputs, 1e-2);
    gradcheck_layer(b, "global avgpool", Box::new(GlobalAvgPool::new()), 3, &[4, 5, 5], &mut smooth_inputs, 1e-2);
}

/// BatchNorm (plain and with its fused GELU) against finite differences, and
/// its fused activations against the activation's own backward on the plain
/// output z: fused(dy) == unfused(dy * act'(z)). (Finite differences of the
/// fused ReLU are unreliable: normalization puts half its outputs next to the
/// kink, and a change of gamma or beta moves all of them. GELU is smooth.)
pub fn gradcheck_batchnorm<B: Backend>(b: &B, tol: f32) {
    gradcheck_layer(b, "batchnorm2d", Box::new(BatchNorm::new_2d(3)), 4, &[3, 5, 5], &mut smooth_inputs, 1e-3);
    gradcheck_layer(b, "batchnorm1d", Box::new(BatchNorm::new_1d(7)), 6, &[7], &mut smooth_inputs, 1e-3);
    gradcheck_layer(b, "batchnorm2d+gelu", Box::new(BatchNorm::new_2d(3).with_gelu()), 4, &[3, 5, 5], &mut smooth_inputs, 1e-3);
    gradcheck_layer(b, "batchnorm1d+gelu", Box::new(BatchNorm::new_1d(7).with_gelu()), 6, &[7], &mut smooth_inputs, 1e-3);
    let mut r = rng(18);
    for g in batchnorm_cases().into_iter().filter(|g| g.act != Activation::None) {
        let plain = BatchNormGeom { act: Activation::None, ..g };
        let x = uniform(&mut r, g.len(), -1.0, 1.0);
        let params = uniform(&mut r, 2 * g.c, -1.0, 1.0);
        let dy = uniform(&mut r, g.len(), -1.0, 1.0);
        let (dxin, dp, ddy) = (b.upload(&x).unwrap(), b.upload(&params).unwrap(), b.upload(&dy).unwrap());
        let run = |g: &BatchNormGeom, dy: &B::Buf<f32>| {
            let (mut running, mut saved, mut y): (B::Buf<f32>, B::Buf<f32>, B::Buf<f32>) =
                (b.alloc(2 * g.c).unwrap(), b.alloc(2 * g.c).unwrap(), b.alloc(g.len()).unwrap());
            b.batchnorm_forward(
                g,
                true,
                View::all(&dxin),
                View::all(&dp),
                ViewMut::all(&mut running),
                ViewMut::all(&mut saved),
                ViewMut::all(&mut y),
            )
            .unwrap();
            let (mut dx, mut dparams) = (poisoned(b, g.len()), poisoned(b, 2 * g.c));
            b.batchnorm_backward(
                g,
                View::all(&dxin),
                View::all(&y),
                View::all(dy),
                View::all(&dp),
                View::all(&saved),
                Some(ViewMut::all(&mut dx)),
                ViewMut::all(&mut dparams),
            )
            .unwrap();
            (down(b, &y), down(b, &dx), down(b, &dparams))
        };
        let (y_fused, dx_fused, dp_fused) = run(&g, &ddy);
        let (z, _, _) = run(&plain, &ddy);
        let (mut act_z, mut dz) = (vec![0.0; g.len()], vec![0.0; g.len()]);
        if g.act == Activation::Relu {
            act_z = z.iter().map(|v| v.max(0.0)).collect();
            dz = dy.iter().zip(&z).map(|(d, z)| if *z > 0.0 { *d } else { 0.0 }).collect();
        } else {
            reference::gelu_forward(&z, &mut act_z);
            reference::gelu_backward(&z, &dy, &mut dz);
        }
        assert_close(&format!("batchnorm fused forward {g:?}"), &y_fused, &act_z, tol);
        let (_, dx_plain, dp_plain) = run(&plain, &b.upload(&dz).unwrap());
        assert_close(&format!("batchnorm fused dx {g:?}"), &dx_fused, &dx_plain, tol);
        assert_close(&format!("batchnorm fused dparams {g:?}"), &dp_fused, &dp_plain, tol);
    }
}

pub fn gradcheck_dropout<B: Backend>(b: &B, _tol: f32) {
    for p in [0.0, 0.3, 0.8] {
        gradcheck_layer(b, &format!("dropout p={p}"), Box::new(Dropout::new(p, 5).unwrap()), 4, &[3, 7], &mut smooth_inputs, 1e-2);
    }
}

/// Puts a backend back to fp32 when a test that changed its precision ends (passing or not).
struct Restore<'a, B: Backend>(&'a B);

impl<B: Backend> Drop for Restore<'_, B> {
    fn drop(&mut self) {
        let _ = self.0.set_precision(crate::backend::Precision::Fp32);
    }
}

/// Every precision the backend offers below fp32, on the ops it changes
/// (wide convolutions, large products), against the fp32 reference with a
/// bound of a few unit roundoffs of the format; fp32 is restored afterwards.
/// The result must also differ from fp32's (else the precision was ignored).
/// Precisions a backend does not offer must be refused. Inputs are in [-1, 1],
/// so every operand and result stays far inside fp16's range (checked).
pub fn precisions<B: Backend>(b: &B, _tol: f32) {
    use crate::backend::Precision;
    let _restore = Restore(b);
    let offered = b.precisions();
    assert!(offered.contains(&Precision::Fp32), "fp32 must always be offered");
    for p in Precision::ALL {
        if !offered.contains(&p) {
            let err = b.set_precision(p).expect_err("a precision not offered must be refused");
            assert!(err.to_string().contains(p.name()), "the refusal names the precision: {err}");
            continue;
        }
        b.set_precision(p).unwrap();
        assert_eq!(b.precision(), p);
        if p == Precision::Fp32 {
            continue;
        }
        let tol = 8.0 * p.unit_roundoff();
        let mut r = rng(40);
        let g = |n, c_in, h, w, c_out, k, stride, pad| Conv2dGeom { n, c_in, h, w, c_out, k, stride, pad };
        // ResNet-like layers: the RGB stem, 3x3, a strided 3x3, the 1x1 shortcut, an odd 5x5.
        let layers = [g(2, 3, 8, 8, 64, 3, 1, 1), g(4, 64, 8, 8, 64, 3, 1, 1), g(3, 32, 9, 7, 48, 3, 2, 1), g(2, 64, 8, 8, 128, 1, 2, 0)];
        for geom in layers.into_iter().chain([g(2, 16, 6, 6, 32, 5, 1, 2), g(1, 40, 5, 3, 33, 3, 1, 2)]) {
            precision_conv(b, &mut r, &geom, p, tol);
        }
        let spec = Gemm::new(300, 130, 257);
        let a = uniform(&mut r, 300 * 257, -1.0, 1.0);
        let bm = uniform(&mut r, 257 * 130, -1.0, 1.0);
        let mut want = vec![0.0; 300 * 130];
        reference::gemm(&spec, &a, &bm, None, &mut want);
        let (da, db) = (b.upload(&a).unwrap(), b.upload(&bm).unwrap());
        let mut dc = poisoned(b, 300 * 130);
        b.gemm(&spec, View::all(&da), View::all(&db), None, ViewMut::all(&mut dc)).unwrap();
        let got = down(b, &dc);
        assert_fits_16_bits(&format!("gemm at {p}"), &want);
        assert_close(&format!("gemm at {p}"), &got, &want, tol);
        assert!(got != want, "gemm at {p}: bit-identical to fp32, so the precision was not applied");
    }
}

/// fp16's largest value is 65504: results far below it, so the bounds test rounding, not overflow.
fn assert_fits_16_bits(what: &str, v: &[f32]) {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(max < 4096.0, "{what}: the test's values reach {max}, too close to fp16's largest (65504)");
}

fn precision_conv<B: Backend>(b: &B, r: &mut ChaCha8Rng, g: &Conv2dGeom, p: crate::backend::Precision, tol: f32) {
    let x = uniform(r, g.x_len(), -1.0, 1.0);
    let w = uniform(r, g.w_len(), -1.0, 1.0);
    let bias = uniform(r, g.c_out, -1.0, 1.0);
    let dy = uniform(r, g.y_len(), -1.0, 1.0);
    let mut want_y = vec![0.0; g.y_len()];
    reference::conv2d_forward(g, &x, &w, &bias, &mut want_y);
    let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0; g.x_len()], vec![0.0; g.w_len()], vec![0.0; g.c_out]);
    reference::conv2d_backward(g, &x, &w, &dy, Some(&mut want_dx), &mut want_dw, &mut want_db);
    for (what, v) in [("y", &want_y), ("dx", &want_dx), ("dw", &want_dw)] {
        assert_fits_16_bits(&format!("conv2d {what} at {p} {g:?}"), v);
    }
    let (dx_in, dw_in, dbias, ddy) = (b.upload(&x).unwrap(), b.upload(&w).unwrap(), b.upload(&bias).unwrap(), b.upload(&dy).unwrap());
    let mut y = poisoned(b, g.y_len());
    b.conv2d_forward(g, View::all(&dx_in), View::all(&dw_in), View::all(&dbias), ViewMut::all(&mut y)).unwrap();
    let got_y = down(b, &y);
    assert_close(&format!("conv2d_forward at {p} {g:?}"), &got_y, &want_y, tol);
    assert!(got_y != want_y, "conv2d_forward at {p} {g:?}: bit-identical to fp32, so the precision was not applied");
    let mut gdx = poisoned(b, g.x_len());
    let mut gparams = poisoned(b, g.w_len() + g.c_out);
    let (xv, wv, dyv) = (View::all(&dx_in), View::all(&dw_in), View::all(&ddy));
    b.conv2d_backward(g, xv, wv, dyv, Some(ViewMut::all(&mut gdx)), ViewMut::all(&mut gparams)).unwrap();
    let params = down(b, &gparams);
    assert_close(&format!("conv2d_backward dw at {p} {g:?}"), &params[..g.w_len()], &want_dw, tol);
    // The bias gradient is a sum of fp32 values: fp32's bound holds.
    assert_close(&format!("conv2d_backward db at {p} {g:?}"), &params[g.w_len()..], &want_db, 1e-5);
    assert_close(&format!("conv2d_backward dx at {p} {g:?}"), &down(b, &gdx), &want_dx, tol);
    no_bias_backward(b, g, (&dx_in, &dw_in, &ddy), (&want_dw, Some(&want_dx[..])), tol);
}

// ---- dynamic loss scaling -------------------------------------------------------

/// A state window at offset 1 of a longer buffer (so kernels must honour view offsets).
fn scale_state<B: Backend>(b: &B, state: [f32; LossScaleState::LEN]) -> B::Buf<f32> {
    let mut padded = vec![-7.0f32; LossScaleState::LEN + 2];
    padded[1..=LossScaleState::LEN].copy_from_slice(&state);
    b.upload(&padded).unwrap()
}

fn state_view<B: Backend>(buf: &B::Buf<f32>) -> View<'_, B, f32> {
    View::range(buf, 1, LossScaleState::LEN).unwrap()
}

fn state_view_mut<B: Backend>(buf: &mut B::Buf<f32>) -> ViewMut<'_, B, f32> {
    ViewMut::range(buf, 1, LossScaleState::LEN).unwrap()
}

/// The state read back; the padding around the window must be untouched.
fn read_state<B: Backend>(b: &B, buf: &B::Buf<f32>) -> [f32; LossScaleState::LEN] {
    let all = down(b, buf);
    assert!(all[0] == -7.0 && all[LossScaleState::LEN + 1] == -7.0, "loss scale op wrote outside its state window: {all:?}");
    all[1..=LossScaleState::LEN].try_into().unwrap()
}

/// The three loss-scaling ops against the reference: scaling the loss
/// gradient, unscaling with the overflow flag (a non-finite value anywhere,
/// the last element of a large buffer included, sets it; finite values leave
/// it as it was), and GradScaler's update in each of its branches.
pub fn loss_scaling<B: Backend>(b: &B, tol: f32) {
    let mut r = rng(50);
    let found = LossScaleState::FOUND_INF;
    // dlogits *= scale
    for (len, s) in [(1usize, 65536.0f32), (1000, 3.0), (100_003, 0.125)] {
        let x = uniform(&mut r, len, -1.0, 1.0);
        let st = [s, 5.0, 0.0, 2.0];
        let mut want = x.clone();
        reference::loss_scale_dlogits(&st, &mut want);
        let dstate = scale_state(b, st);
        let mut dx = b.upload(&x).unwrap();
        b.loss_scale_dlogits(state_view(&dstate), ViewMut::all(&mut dx)).unwrap();
        assert_close(&format!("loss_scale_dlogits {len} x{s}"), &down(b, &dx), &want, tol);
        assert_eq!(read_state(b, &dstate), st, "loss_scale_dlogits changed the state");
    }
    // grads /= scale, found_inf where an unscaled value is not finite
    let cases = [
        (1usize, 65536.0f32, None, 0.0f32),
        (1000, 1024.0, Some((999, f32::INFINITY)), 0.0),
        (100_003, 65536.0, None, 0.0),
        (100_003, 65536.0, Some((100_002, f32::NAN)), 0.0),
        (100_003, 3.0, Some((77_777, f32::NEG_INFINITY)), 0.0),
        // Finite, but infinite once divided by a scale below 1.
        (4099, 0.25, Some((4098, f32::MAX)), 0.0),
        // A flag already set stays set.
        (1000, 2.0, None, 1.0),
    ];
    for (len, s, bad, flag) in cases {
        let mut g = uniform(&mut r, len, -1000.0, 1000.0);
        if let Some((i, v)) = bad {
            g[i] = v;
        }
        let st = [s, 7.0, flag, 3.0];
        let (mut want_g, mut want_st) = (g.clone(), st);
        reference::loss_scale_unscale(&mut want_st, &mut want_g);
        assert_eq!(want_st[found], if bad.is_some() || flag != 0.0 { 1.0 } else { 0.0 }, "reference flag");
        let mut dstate = scale_state(b, st);
        let mut dg = b.upload(&g).unwrap();
        b.loss_scale_unscale(state_view_mut(&mut dstate), ViewMut::all(&mut dg)).unwrap();
        assert_eq!(read_state(b, &dstate), want_st, "loss_scale_unscale state, {len} values / {s}, bad {bad:?}");
        let got = down(b, &dg);
        let finite = |v: &[f32]| v.iter().map(|x| if x.is_finite() { *x } else { 0.0 }).collect::<Vec<_>>();
        assert_close(&format!("loss_scale_unscale {len} / {s}"), &finite(&got), &finite(&want_g), tol);
        let non_finite = |v: &[f32]| v.iter().map(|x| x.is_finite()).collect::<Vec<_>>();
        assert_eq!(non_finite(&got), non_finite(&want_g), "loss_scale_unscale: the same values overflow");
    }
    // The update's branches: a backoff, a finite step, a growth, a growth that would overflow.
    let rule = ScaleUpdate { growth: 2.0, backoff: 0.5, growth_interval: 4 };
    let updates =
        [[65536.0, 3.0, 1.0, 0.0], [65536.0, 1.0, 0.0, 2.0], [65536.0, 3.0, 0.0, 2.0], [3.0e38, 3.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]];
    for st in updates {
        let mut want = st;
        reference::loss_scale_update(&rule, &mut want);
        let mut dstate = scale_state(b, st);
        b.loss_scale_update(&rule, state_view_mut(&mut dstate)).unwrap();
        assert_eq!(read_state(b, &dstate), want, "loss_scale_update from {st:?}");
    }
    // The reference's branches themselves, in numbers.
    let after = |st: [f32; LossScaleState::LEN]| {
        let mut st = st;
        reference::loss_scale_update(&rule, &mut st);
        st
    };
    assert_eq!(after(updates[0]), [32768.0, 0.0, 0.0, 1.0], "backoff, counted as skipped");
    assert_eq!(after(updates[1]), [65536.0, 2.0, 0.0, 2.0], "a finite step");
    assert_eq!(after(updates[2]), [131072.0, 0.0, 0.0, 2.0], "growth after 4 finite steps");
    assert_eq!(after(updates[3]), [3.0e38, 0.0, 0.0, 0.0], "no growth to infinity");
    // Bad arguments are errors.
    let mut short: B::Buf<f32> = b.alloc(3).unwrap();
    let mut x: B::Buf<f32> = b.alloc(4).unwrap();
    let err = b.loss_scale_unscale(ViewMut::all(&mut short), ViewMut::all(&mut x));
    assert!(matches!(err, Err(crate::Error::Shape { op: "loss_scale_unscale", .. })), "{err:?}");
    let err = b.loss_scale_dlogits(View::all(&short), ViewMut::all(&mut x));
    assert!(matches!(err, Err(crate::Error::Shape { op: "loss_scale_dlogits", .. })), "{err:?}");
    let mut state = scale_state(b, [1.0, 0.0, 0.0, 0.0]);
    let err = b.loss_scale_update(&ScaleUpdate { growth: 0.5, ..rule }, state_view_mut(&mut state));
    assert!(matches!(err, Err(crate::Error::Shape { op: "loss_scale_update", .. })), "{err:?}");
}

// ---- fused conv + max pool --------------------------------------------------------

/// What [`Backend::conv2d_maxpool_forward`] and its backward produce, and
/// whether the forward left the second half of the stash alone (it kept the
/// conv's output in 16 bits).
struct ConvPoolOut {
    y: Vec<f32>,
    argmax: Vec<u32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    /// dw of a second pass whose backward computes no dx.
    dw_without_dx: Vec<f32>,
    narrow_stash: bool,
}

/// The operands of one case.
struct ConvPoolInputs<'a> {
    x: &'a [f32],
    w: &'a [f32],
    bias: &'a [f32],
    dy: &'a [f32],
}

/// Bias-free convs and the non-overlapping max pool over each one's output:
/// ragged edges, a fused ReLU, wide layers (tensor cores below fp32; the
/// speed network's first block), 3x3 windows and an empty batch.
fn conv_pool_cases() -> Vec<(Conv2dGeom, Pool2dGeom)> {
    let g = |n, c_in, h, w, c_out, k, stride, pad| Conv2dGeom { n, c_in, h, w, c_out, k, stride, pad };
    let pool = |g: Conv2dGeom, k, relu| Pool2dGeom { n: g.n, c: g.c_out, h: g.out_h(), w: g.out_w(), k, stride: k, pad: 0, relu };
    [
        (g(2, 3, 9, 9, 5, 3, 1, 1), 2, false),
        (g(3, 8, 8, 8, 6, 3, 1, 1), 2, true),
        (g(2, 24, 15, 15, 64, 3, 1, 1), 2, false),
        (g(2, 32, 9, 9, 48, 3, 1, 1), 3, true),
        (g(0, 4, 6, 6, 32, 3, 1, 1), 2, false),
    ]
    .into_iter()
    .map(|(g, k, relu)| (g, pool(g, k, relu)))
    .collect()
}

/// A buffer of `len` NaNs between two guard values, and its window.
fn guarded<B: Backend, T: crate::Elem>(b: &B, len: usize, fill: T, guard: T) -> B::Buf<T> {
    let mut host = vec![fill; len + 2];
    (host[0], host[len + 1]) = (guard, guard);
    b.upload(&host).unwrap()
}

/// The window of a [`guarded`] buffer, after checking that nothing was written outside it.
fn unguarded<B: Backend, T: crate::Elem + PartialEq + std::fmt::Debug>(b: &B, buf: &B::Buf<T>, guard: T, what: &str) -> Vec<T> {
    let all = down(b, buf);
    assert!(all[0] == guard && all[all.len() - 1] == guard, "{what}: written outside its window");
    all[1..all.len() - 1].to_vec()
}

/// Runs the fused op, or its two ops one by one when `fused` is false, on
/// uploaded inputs; every output in a window of a guarded buffer.
fn run_conv_pool<B: Backend>(b: &B, (g, pool): (&Conv2dGeom, &Pool2dGeom), input: &ConvPoolInputs<'_>, fused: bool) -> ConvPoolOut {
    let (x_in, w_in, dy_in, bias) =
        (b.upload(input.x).unwrap(), b.upload(input.w).unwrap(), b.upload(input.dy).unwrap(), b.upload(input.bias).unwrap());
    let (xv, wv) = (View::all(&x_in), View::all(&w_in));
    let nan = f32::NAN;
    let mut stash = guarded(b, g.y_len(), nan, -5.0);
    let mut dws = Vec::new();
    let (mut y_out, mut arg_out, mut dx_out, mut narrow_stash) = (Vec::new(), Vec::new(), Vec::new(), false);
    for with_dx in [true, false] {
        let (mut y, mut argmax) = (guarded(b, pool.y_len(), nan, -5.0), guarded(b, pool.y_len(), 7u32, 9u32));
        let (yv, av, sv) = (
            ViewMut::range(&mut y, 1, pool.y_len()).unwrap(),
            ViewMut::range(&mut argmax, 1, pool.y_len()).unwrap(),
            ViewMut::range(&mut stash, 1, g.y_len()).unwrap(),
        );
        match fused {
            true => b.conv2d_maxpool_forward(g, pool, xv, wv, View::all(&bias), yv, av, sv),
            false => crate::backend::conv2d_maxpool_forward_unfused(b, g, pool, xv, wv, View::all(&bias), yv, av, sv),
        }
        .unwrap();
        if with_dx {
            let kept = unguarded(b, &stash, -5.0, "conv2d_maxpool_forward stash");
            narrow_stash = kept[g.y_len().div_ceil(2)..].iter().all(|v| v.is_nan());
            (y_out, arg_out) =
                (unguarded(b, &y, -5.0, "conv2d_maxpool_forward y"), unguarded(b, &argmax, 9, "conv2d_maxpool_forward argmax"));
        }
        let (mut gdx, mut dweight, mut scratch) =
            (guarded(b, g.x_len(), nan, -5.0), guarded(b, g.w_len(), nan, -5.0), poisoned(b, g.w_len() + g.c_out));
        let (dyv, av, sv) =
            (View::all(&dy_in), View::range(&argmax, 1, pool.y_len()).unwrap(), ViewMut::range(&mut stash, 1, g.y_len()).unwrap());
        let dxv = with_dx.then(|| ViewMut::range(&mut gdx, 1, g.x_len()).unwrap());
        let (dwv, scv) = (ViewMut::range(&mut dweight, 1, g.w_len()).unwrap(), ViewMut::all(&mut scratch));
        match fused {
            true => b.conv2d_maxpool_backward(g, pool, xv, wv, dyv, av, sv, dxv, dwv, scv),
            false => crate::backend::conv2d_maxpool_backward_unfused(b, g, pool, xv, wv, dyv, av, sv, dxv, dwv, scv),
        }
        .unwrap();
        dws.push(unguarded(b, &dweight, -5.0, "conv2d_maxpool_backward dweight"));
        let dx = unguarded(b, &gdx, -5.0, "conv2d_maxpool_backward dx");
        if with_dx {
            dx_out = dx;
        } else {
            assert!(dx.iter().all(|v| v.is_nan()), "conv2d_maxpool_backward wrote dx although not asked {g:?}");
        }
    }
    let dw_without_dx = dws.pop().unwrap();
    ConvPoolOut { y: y_out, argmax: arg_out, dx: dx_out, dw: dws.pop().unwrap(), dw_without_dx, narrow_stash }
}

/// The fused conv + max pool against the reference conv (with a bias) then
/// pool, forward and backward, with and without dx. At each 16-bit precision
/// the backend offers, also against the backend's own two ops at that
/// precision: the fused op must round as they do, so its outputs and argmax
/// are the same (the gradients up to the order of cuDNN's sums, a rounding of
/// the format), the precision must have been applied, and wide layers must
/// keep the conv's output in 16 bits (half the stash left untouched).
pub fn conv2d_maxpool<B: Backend>(b: &B, tol: f32) {
    use crate::backend::Precision;
    let _restore = Restore(b);
    let mut r = rng(60);
    for p in b.precisions().into_iter().filter(|p| matches!(p, Precision::Fp32 | Precision::Bf16 | Precision::Fp16)) {
        b.set_precision(p).unwrap();
        let tol = if p == Precision::Fp32 { tol } else { 8.0 * p.unit_roundoff() };
        for (g, pool) in conv_pool_cases() {
            let (x, w, dy) =
                (uniform(&mut r, g.x_len(), -1.0, 1.0), uniform(&mut r, g.w_len(), -1.0, 1.0), uniform(&mut r, pool.y_len(), -1.0, 1.0));
            let bias = uniform(&mut r, g.c_out, -0.5, 0.5);
            let input = ConvPoolInputs { x: &x, w: &w, bias: &bias, dy: &dy };
            let mut conv_y = vec![0.0; g.y_len()];
            reference::conv2d_forward(&g, &x, &w, &bias, &mut conv_y);
            let (mut want_y, mut want_arg) = (vec![0.0; pool.y_len()], vec![0u32; pool.y_len()]);
            reference::maxpool2d_forward(&pool, &conv_y, &mut want_y, &mut want_arg);
            let got = run_conv_pool(b, (&g, &pool), &input, true);
            let what = format!("conv2d_maxpool at {p} {g:?} {pool:?}");
            assert_close(&format!("{what}: y"), &got.y, &want_y, tol);
            assert_close(&format!("{what}: dw without dx"), &got.dw_without_dx, &got.dw, tol);
            if p == Precision::Fp32 {
                assert_eq!(got.argmax, want_arg, "{what}: argmax");
                let mut dconv = vec![0.0; g.y_len()];
                reference::maxpool2d_backward(&dy, &want_arg, &mut dconv);
                let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0; g.x_len()], vec![0.0; g.w_len()], vec![0.0; g.c_out]);
                reference::conv2d_backward(&g, &x, &w, &dconv, Some(&mut want_dx), &mut want_dw, &mut want_db);
                assert_close(&format!("{what}: dx"), &got.dx, &want_dx, tol);
                assert_close(&format!("{what}: dw"), &got.dw, &want_dw, tol);
                continue;
            }
            // Below fp32 a near-tie may pick another maximum than fp32 does: compare with the two ops.
            let two_ops = run_conv_pool(b, (&g, &pool), &input, false);
            assert_eq!(got.y, two_ops.y, "{what}: y differs from conv2d_forward + maxpool2d_forward at the same precision");
            assert_eq!(got.argmax, two_ops.argmax, "{what}: argmax differs from maxpool2d_forward's");
            assert_close(&format!("{what}: dx against the two ops"), &got.dx, &two_ops.dx, 2.0 * p.unit_roundoff());
            assert_close(&format!("{what}: dw against the two ops"), &got.dw, &two_ops.dw, 2.0 * p.unit_roundoff());
            if g.n > 0 && g.c_out >= 32 {
                assert!(got.y != want_y, "{what}: bit-identical to fp32, so the precision was not applied");
                assert!(got.narrow_stash, "{what}: the conv's output was not kept in 16 bits (the stash's second half was written)");
            }
        }
    }
}

// ---- a conv's forward keeping x for its backward --------------------------------

/// The outputs of a conv forward and backward: y, dx and the gradients.
type ConvRun = (Vec<f32>, Vec<f32>, Vec<f32>);

/// [`Backend::conv2d_forward_keep`] and [`Backend::conv2d_backward_kept`]
/// (`keep` true) or the plain ops, with and without a bias; returns the
/// outputs and whether `keep` was written.
fn run_conv_keep<B: Backend>(
    b: &B,
    g: &Conv2dGeom,
    (x, w, bias, dy): (&[f32], &[f32], &[f32], &[f32]),
    with_bias: bool,
    keep: bool,
) -> (ConvRun, bool) {
    let (xv, wv, bv, dyv) = (b.upload(x).unwrap(), b.upload(w).unwrap(), b.upload(bias).unwrap(), b.upload(dy).unwrap());
    let (mut y, mut dx, mut kept) = (poisoned(b, g.y_len()), poisoned(b, g.x_len()), guarded(b, g.x_len().div_ceil(2), f32::NAN, -5.0));
    let grads_len = g.w_len() + if with_bias { g.c_out } else { 0 };
    let (mut grads, mut scratch) = (poisoned(b, grads_len), poisoned(b, g.w_len() + g.c_out));
    let (x_, w_, b_) = (View::all(&xv), View::all(&wv), View::all(&bv));
    match keep {
        true => b.conv2d_forward_keep(g, x_, w_, b_, ViewMut::all(&mut y), ViewMut::range(&mut kept, 1, g.x_len().div_ceil(2)).unwrap()),
        false => b.conv2d_forward(g, x_, w_, b_, ViewMut::all(&mut y)),
    }
    .unwrap();
    let all = unguarded(b, &kept, -5.0, "conv2d_forward_keep keep");
    let written = all.iter().any(|v| !v.is_nan());
    let gv = match with_bias {
        true => crate::backend::ConvGrads::Bias(ViewMut::all(&mut grads)),
        false => crate::backend::ConvGrads::NoBias { dweight: ViewMut::all(&mut grads), scratch: ViewMut::all(&mut scratch) },
    };
    let dxv = Some(ViewMut::all(&mut dx));
    match (keep, gv) {
        (true, gv) => b.conv2d_backward_kept(g, x_, View::range(&kept, 1, g.x_len().div_ceil(2)).unwrap(), w_, View::all(&dyv), dxv, gv),
        (false, crate::backend::ConvGrads::Bias(d)) => b.conv2d_backward(g, x_, w_, View::all(&dyv), dxv, d),
        (false, crate::backend::ConvGrads::NoBias { dweight, scratch }) => {
            b.conv2d_backward_no_bias(g, x_, w_, View::all(&dyv), dxv, dweight, scratch)
        }
    }
    .unwrap();
    ((down(b, &y), down(b, &dx), down(b, &grads)), written)
}

/// A conv's forward that keeps what its backward needs (x in 16 bits on CUDA)
/// computes what the plain ops compute at every precision the backend offers:
/// the same y, the gradients up to the order of cuDNN's sums; against the
/// reference at fp32; and wherever the backend says it keeps something for a
/// shape, `keep` was written (the kept path ran).
pub fn conv2d_keep<B: Backend>(b: &B, tol: f32) {
    use crate::backend::Precision;
    let _restore = Restore(b);
    let mut r = rng(62);
    let g = |n, c_in, h, w, c_out, k, stride, pad| Conv2dGeom { n, c_in, h, w, c_out, k, stride, pad };
    // The RGB stem, a ResNet 3x3, a strided 3x3, the strided 1x1 shortcut, a narrow conv.
    let cases = [
        g(2, 3, 8, 8, 64, 3, 1, 1),
        g(2, 64, 8, 8, 64, 3, 1, 1),
        g(3, 32, 9, 7, 48, 3, 2, 1),
        g(2, 64, 8, 8, 128, 1, 2, 0),
        g(2, 4, 6, 6, 8, 3, 1, 1),
    ];
    for p in b.precisions() {
        b.set_precision(p).unwrap();
        let bound = if p == Precision::Fp32 { tol } else { 2.0 * p.unit_roundoff() };
        for geom in cases {
            for with_bias in [true, false] {
                let (x, w, dy) = (
                    uniform(&mut r, geom.x_len(), -1.0, 1.0),
                    uniform(&mut r, geom.w_len(), -1.0, 1.0),
                    uniform(&mut r, geom.y_len(), -1.0, 1.0),
                );
                let bias: Vec<f32> = if with_bias { uniform(&mut r, geom.c_out, -0.5, 0.5) } else { vec![0.0; geom.c_out] };
                let input = (&x[..], &w[..], &bias[..], &dy[..]);
                let what = format!("conv2d_keep at {p} {geom:?} bias={with_bias}");
                let ((y, dx, grads), written) = run_conv_keep(b, &geom, input, with_bias, true);
                let ((y0, dx0, grads0), _) = run_conv_keep(b, &geom, input, with_bias, false);
                assert_eq!(y, y0, "{what}: y differs from conv2d_forward's");
                assert_close(&format!("{what}: dx"), &dx, &dx0, bound);
                assert_close(&format!("{what}: grads"), &grads, &grads0, bound);
                if b.conv2d_keeps(&geom) {
                    assert!(written, "{what}: the backend keeps x for this shape but left keep untouched");
                }
                if p == Precision::Fp32 {
                    let mut want_y = vec![0.0; geom.y_len()];
                    reference::conv2d_forward(&geom, &x, &w, &bias, &mut want_y);
                    let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0; geom.x_len()], vec![0.0; geom.w_len()], vec![0.0; geom.c_out]);
                    reference::conv2d_backward(&geom, &x, &w, &dy, Some(&mut want_dx), &mut want_dw, &mut want_db);
                    let want_grads = if with_bias { [want_dw, want_db].concat() } else { want_dw };
                    assert_close(&format!("{what}: y against the reference"), &y, &want_y, tol);
                    assert_close(&format!("{what}: dx against the reference"), &dx, &want_dx, tol);
                    assert_close(&format!("{what}: grads against the reference"), &grads, &want_grads, tol);
                }
            }
        }
    }
}
