//! Narrow tensors outside the fused conv + BatchNorm: the element-wise ops of
//! a residual connection and global average pooling (see [`Backend::narrow_residuals`]).

use super::conv_bn::{narrowed, widened};
use super::{assert_close, down, poisoned, rng, uniform, Restore};
use crate::backend::{Backend, Precision, View, ViewMut};

/// Where the backend offers them, each op on 16-bit values gives what fp32
/// gives on the same values, up to one rounding to the format (the ReLU's
/// gradient exactly), eight values at a time and one at a time; where it does
/// not, every one is refused.
pub fn narrow_residuals<B: Backend>(b: &B, _tol: f32) {
    let _restore = Restore(b);
    let mut r = rng(71);
    for p in b.precisions() {
        b.set_precision(p).unwrap();
        if !b.narrow_residuals() {
            assert_refused(b, p);
            continue;
        }
        assert!(matches!(p, Precision::Bf16 | Precision::Fp16), "narrow tensors at {p}");
        let u = p.unit_roundoff();
        for len in [1, 13, 64, 4104] {
            let shape = (1, 1, len);
            let round = |v: Vec<f32>| widened(&narrowed(&v, shape, p), shape, p);
            let (a, dy) = (round(uniform(&mut r, len, -1.0, 1.0)), round(uniform(&mut r, len, -1.0, 1.0)));
            // The ReLU's output: zeros (both signs) among the values.
            let y: Vec<f32> = a.iter().enumerate().map(|(i, &v)| [v, 0.0, -0.0, v.abs()][i % 4]).collect();
            let up = |v: &[f32]| b.upload(&narrowed(v, shape, p)).unwrap();
            let (na, ndy, ny) = (up(&a), up(&dy), up(&y));
            let what = |op: &str| format!("{op} on {len} narrow values at {p}");
            let wide = |buf: &B::Buf<f32>| widened(&down(b, buf), shape, p);

            let mut out = poisoned(b, len);
            b.add_relu_narrow(View::all(&na), View::all(&ndy), ViewMut::all(&mut out)).unwrap();
            let want: Vec<f32> = a.iter().zip(&dy).map(|(x, d)| (x + d).max(0.0)).collect();
            assert_close(&what("add_relu"), &wide(&out), &want, u);

            let mut out = poisoned(b, len);
            b.relu_backward_narrow(View::all(&ny), View::all(&ndy), ViewMut::all(&mut out)).unwrap();
            let want: Vec<f32> = y.iter().zip(&dy).map(|(&v, &d)| if v > 0.0 { d } else { 0.0 }).collect();
            assert_close(&what("relu_backward"), &wide(&out), &want, 0.0);

            let mut out = up(&y);
            b.add_assign_narrow(View::all(&na), ViewMut::all(&mut out)).unwrap();
            let want: Vec<f32> = a.iter().zip(&y).map(|(x, v)| x + v).collect();
            assert_close(&what("add_assign"), &wide(&out), &want, u);
        }
        for (n, c, hw) in [(3, 24, 16), (2, 5, 9), (1, 512, 1)] {
            let shape = (n, c, hw);
            let x = widened(&narrowed(&uniform(&mut r, n * c * hw, -1.0, 1.0), shape, p), shape, p);
            let dy = uniform(&mut r, n * c, -1.0, 1.0);
            let what = format!("global_avgpool of narrow (N, C, HW) {shape:?} at {p}");
            let (nx, ndy) = (b.upload(&narrowed(&x, shape, p)).unwrap(), b.upload(&dy).unwrap());
            let (mut y, mut dx) = (poisoned(b, n * c), poisoned(b, n * c * hw));
            b.global_avgpool_narrow_forward(shape, View::all(&nx), ViewMut::all(&mut y)).unwrap();
            let want: Vec<f32> = x.chunks(hw).map(|row| row.iter().sum::<f32>() / hw as f32).collect();
            assert_close(&what, &down(b, &y), &want, 1e-5);
            b.global_avgpool_narrow_backward(shape, View::all(&ndy), ViewMut::all(&mut dx)).unwrap();
            let want: Vec<f32> = (0..n * c * hw).map(|i| dy[i / hw] / hw as f32).collect();
            assert_close(&format!("{what}: backward"), &widened(&down(b, &dx), shape, p), &want, u);
        }
    }
}

/// Every narrow op errs (and writes nothing that matters) where none is offered.
fn assert_refused<B: Backend>(b: &B, p: Precision) {
    let (x, mut y) = (b.upload(&[0.5f32; 8]).unwrap(), b.upload(&[0.0f32; 8]).unwrap());
    let refused = |what: &str, r: crate::Result<()>| assert!(r.is_err(), "{what} on narrow tensors at {p}: not refused");
    refused("add_relu", b.add_relu_narrow(View::all(&x), View::all(&x), ViewMut::all(&mut y)));
    refused("relu_backward", b.relu_backward_narrow(View::all(&x), View::all(&x), ViewMut::all(&mut y)));
    refused("add_assign", b.add_assign_narrow(View::all(&x), ViewMut::all(&mut y)));
    let (shape, mut pooled) = ((1, 2, 4), b.upload(&[0.0f32; 2]).unwrap());
    refused("global_avgpool", b.global_avgpool_narrow_forward(shape, View::all(&x), ViewMut::all(&mut pooled)));
    refused("global_avgpool_backward", b.global_avgpool_narrow_backward(shape, View::all(&pooled), ViewMut::all(&mut y)));
}
