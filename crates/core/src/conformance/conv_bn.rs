//! The fused conv + BatchNorm op ([`Backend::conv2d_batchnorm_forward`]).

use super::{assert_close, down, poisoned, rng, uniform, Restore};
use crate::backend::{Activation, Backend, BatchNormGeom, Conv2dGeom, NarrowEdges, Precision, View, ViewMut};
use crate::reference;

/// Bias-free-style convs (given a bias here, which the op must add) and the
/// BatchNorm over each one's output, with each activation: channels not a
/// multiple of 8 (never fused), a partial and a second channel tile of 64,
/// HW % 4 != 0 (the CUDA kernels' one-float path), the strided 1x1 shortcut,
/// several position tiles per sample and an empty batch.
fn cases() -> Vec<(Conv2dGeom, Activation)> {
    let g = |n, c_in, h, w, c_out, k, stride, pad| Conv2dGeom { n, c_in, h, w, c_out, k, stride, pad };
    vec![
        (g(2, 3, 9, 9, 5, 3, 1, 1), Activation::Relu),
        (g(2, 16, 8, 8, 64, 3, 1, 1), Activation::None),
        (g(3, 32, 9, 7, 48, 3, 2, 1), Activation::Relu),
        (g(2, 64, 8, 8, 72, 1, 2, 0), Activation::Gelu),
        (g(2, 24, 7, 7, 32, 3, 1, 1), Activation::Relu),
        (g(5, 32, 16, 12, 64, 3, 1, 1), Activation::Relu),
        (g(0, 8, 6, 6, 32, 3, 1, 1), Activation::None),
    ]
}

fn bn_geom(g: &Conv2dGeom, act: Activation) -> BatchNormGeom {
    BatchNormGeom { n: g.n, c: g.c_out, hw: g.out_h() * g.out_w(), eps: 1e-5, momentum: 0.1, act }
}

struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    params: Vec<f32>,
    running: Vec<f32>,
    dy: Vec<f32>,
}

#[derive(Default)]
struct Outputs {
    y: Vec<f32>,
    running: Vec<f32>,
    saved: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    dw_without_dx: Vec<f32>,
    dparams: Vec<f32>,
    eval_y: Vec<f32>,
    /// Whether the forward left the stash's second half alone (kept the conv's output in 16 bits).
    narrow_stash: bool,
    /// Where the backend adds dx into its window: what it added (the window after, less before).
    added: Option<Vec<f32>>,
}

const GUARD: f32 = -5.0;

/// `len` NaNs after `lead` guard values and before one, and its window.
fn guarded<B: Backend>(b: &B, len: usize, lead: usize) -> B::Buf<f32> {
    let host: Vec<f32> = (0..lead + len + 1).map(|i| if i < lead || i == lead + len { GUARD } else { f32::NAN }).collect();
    b.upload(&host).unwrap()
}

/// The window of a [`guarded`] buffer, after checking nothing was written outside it.
fn unguarded<B: Backend>(b: &B, buf: &B::Buf<f32>, lead: usize, what: &str) -> Vec<f32> {
    let all = down(b, buf);
    let outside = all[..lead].iter().chain(all.last()).all(|&v| v == GUARD);
    assert!(outside, "{what}: written outside its window");
    all[lead..all.len() - 1].to_vec()
}

/// The op's device buffers: inputs, BatchNorm state, the stash and the keep.
struct Buffers<B: Backend> {
    x: B::Buf<f32>,
    w: B::Buf<f32>,
    bias: B::Buf<f32>,
    params: B::Buf<f32>,
    dy: B::Buf<f32>,
    running: B::Buf<f32>,
    saved: B::Buf<f32>,
    stash: B::Buf<f32>,
    keep: Option<B::Buf<f32>>,
}

/// How a run calls the op: its geometries, where windows start (1: not
/// 16-byte aligned, 4: aligned) and whether fused or as its two ops.
#[derive(Clone, Copy)]
struct Call<'a> {
    g: &'a Conv2dGeom,
    bn: &'a BatchNormGeom,
    lead: usize,
    fused: bool,
}

impl<B: Backend> Buffers<B> {
    fn forward(&mut self, b: &B, c: Call<'_>, training: bool, y: &mut B::Buf<f32>) {
        let (g, lead) = (c.g, c.lead);
        let keep = self.keep.as_mut().map(|k| ViewMut::range(k, lead, g.x_len().div_ceil(2)).unwrap());
        let inputs = (View::all(&self.x), View::all(&self.w), View::all(&self.bias));
        let state = (View::all(&self.params), ViewMut::all(&mut self.running), ViewMut::all(&mut self.saved));
        let (sv, yv) = (ViewMut::range(&mut self.stash, lead, g.y_len()).unwrap(), ViewMut::range(y, lead, g.y_len()).unwrap());
        match c.fused {
            true => b.conv2d_batchnorm_forward((g, c.bn), NarrowEdges::WIDE, training, inputs, keep, state, sv, yv),
            false => crate::backend::conv2d_batchnorm_forward_unfused(b, (g, c.bn), training, inputs, keep, state, sv, yv),
        }
        .unwrap();
    }

    /// dx (when asked; added onto `onto` when given), dweight and [dgamma | dbeta]
    /// of the last training forward, whose output was `y`.
    fn backward(&self, b: &B, c: Call<'_>, y: &B::Buf<f32>, with_dx: bool, onto: Option<&[f32]>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (g, lead) = (c.g, c.lead);
        let mut dx = guarded(b, g.x_len(), lead);
        if let Some(onto) = onto {
            b.write(ViewMut::range(&mut dx, lead, g.x_len()).unwrap(), onto).unwrap();
        }
        let (mut dw, mut dparams) = (guarded(b, g.w_len(), lead), guarded(b, 2 * c.bn.c, lead));
        let (mut dstash, mut scratch) = (guarded(b, g.y_len(), lead), poisoned(b, g.w_len() + g.c_out));
        let inputs =
            (View::all(&self.x), self.keep.as_ref().map(|k| View::range(k, lead, g.x_len().div_ceil(2)).unwrap()), View::all(&self.w));
        let tensors = (View::range(&self.stash, lead, g.y_len()).unwrap(), View::range(y, lead, g.y_len()).unwrap(), View::all(&self.dy));
        let state = (View::all(&self.bias), View::all(&self.params), View::all(&self.saved));
        let dxv = (with_dx.then(|| ViewMut::range(&mut dx, lead, g.x_len()).unwrap()), onto.is_some());
        let dsv = ViewMut::range(&mut dstash, lead, g.y_len()).unwrap();
        let grads = (
            ViewMut::range(&mut dw, lead, g.w_len()).unwrap(),
            ViewMut::all(&mut scratch),
            ViewMut::range(&mut dparams, lead, 2 * c.bn.c).unwrap(),
        );
        match c.fused {
            true => b.conv2d_batchnorm_backward((g, c.bn), NarrowEdges::WIDE, inputs, tensors, state, dsv, dxv, grads),
            false => crate::backend::conv2d_batchnorm_backward_unfused(b, (g, c.bn), inputs, tensors, state, dsv, dxv, grads),
        }
        .unwrap();
        unguarded(b, &dstash, lead, "conv2d_batchnorm_backward dstash");
        let dx = unguarded(b, &dx, lead, "conv2d_batchnorm_backward dx");
        if !with_dx {
            assert!(dx.iter().all(|v| v.is_nan()), "conv2d_batchnorm_backward wrote dx although not asked {g:?}");
        }
        (
            dx,
            unguarded(b, &dw, lead, "conv2d_batchnorm_backward dweight"),
            unguarded(b, &dparams, lead, "conv2d_batchnorm_backward dparams"),
        )
    }
}

/// The op as `c` says on uploaded inputs, every output in a window of a guarded buffer.
fn run<B: Backend>(b: &B, c: Call<'_>, input: &Inputs) -> Outputs {
    let (g, lead) = (c.g, c.lead);
    let up = |v: &[f32]| b.upload(v).unwrap();
    let mut bufs = Buffers::<B> {
        x: up(&input.x),
        w: up(&input.w),
        bias: up(&input.bias),
        params: up(&input.params),
        dy: up(&input.dy),
        running: up(&input.running),
        saved: poisoned(b, 2 * c.bn.c),
        stash: guarded(b, g.y_len(), lead),
        keep: b.conv2d_keeps(g).then(|| guarded(b, g.x_len().div_ceil(2), lead)),
    };
    let mut y = guarded(b, g.y_len(), lead);
    bufs.forward(b, c, true, &mut y);
    let stash = unguarded(b, &bufs.stash, lead, "conv2d_batchnorm_forward stash");
    let (dx, dw, dparams) = bufs.backward(b, c, &y, true, None);
    let (_, dw_without_dx, _) = bufs.backward(b, c, &y, false, None);
    // Where the backend adds dx into a window (a tensor with two readers), onto values already there.
    let adds = c.fused && b.conv2d_batchnorm_adds_dx(g, View::range(&bufs.stash, lead, g.y_len()).unwrap());
    let onto: Vec<f32> = (0..g.x_len()).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    let dx_added = adds.then(|| bufs.backward(b, c, &y, true, Some(&onto)).0);
    let mut eval_y = guarded(b, g.y_len(), lead);
    let (running, saved) = (down(b, &bufs.running), down(b, &bufs.saved));
    bufs.forward(b, c, false, &mut eval_y);
    Outputs {
        y: unguarded(b, &y, lead, "conv2d_batchnorm_forward y"),
        running,
        saved,
        dx,
        dw,
        dw_without_dx,
        dparams,
        eval_y: unguarded(b, &eval_y, lead, "conv2d_batchnorm_forward y (evaluation)"),
        narrow_stash: stash[g.y_len().div_ceil(2)..].iter().all(|v| v.is_nan()),
        added: dx_added.map(|d| d.iter().zip(&onto).map(|(d, o)| d - o).collect()),
    }
}

/// The reference conv then BatchNorm, forward (training, then evaluation with
/// the updated running statistics) and backward through the given forward output.
fn reference_run(g: &Conv2dGeom, bn: &BatchNormGeom, input: &Inputs, y_got: &[f32]) -> Outputs {
    let mut conv_y = vec![0.0; g.y_len()];
    reference::conv2d_forward(g, &input.x, &input.w, &input.bias, &mut conv_y);
    let (mut running, mut saved, mut y) = (input.running.clone(), vec![0.0; 2 * bn.c], vec![0.0; g.y_len()]);
    reference::batchnorm_forward(bn, true, &conv_y, &input.params, &mut running, &mut saved, &mut y);
    let (mut dconv, mut dparams) = (vec![0.0; g.y_len()], vec![0.0; 2 * bn.c]);
    reference::batchnorm_backward(bn, &conv_y, y_got, &input.dy, &input.params, &saved, Some(&mut dconv), &mut dparams);
    let (mut dx, mut dw, mut db) = (vec![0.0; g.x_len()], vec![0.0; g.w_len()], vec![0.0; g.c_out]);
    reference::conv2d_backward(g, &input.x, &input.w, &dconv, Some(&mut dx), &mut dw, &mut db);
    let mut eval_y = vec![0.0; g.y_len()];
    reference::batchnorm_forward(bn, false, &conv_y, &input.params, &mut running.clone(), &mut vec![0.0; 2 * bn.c], &mut eval_y);
    Outputs { y, running, saved, dx, dw, dparams, eval_y, ..Outputs::default() }
}

/// The fused conv + BatchNorm, forward (training and evaluation) and backward
/// with and without dx, aligned and not: against the reference at fp32, and at
/// every precision the backend offers against the backend's own two ops at
/// that precision (the same conv output, so the same y up to the order of the
/// statistics' sums; the gradients up to a rounding of the format). Where the
/// backend keeps the conv's output in 16 bits (CUDA, eight-channel groups,
/// aligned), the stash's second half must be untouched.
pub fn conv2d_batchnorm<B: Backend>(b: &B, tol: f32) {
    let _restore = Restore(b);
    let mut r = rng(63);
    for p in b.precisions() {
        b.set_precision(p).unwrap();
        for (g, act) in cases() {
            let bn = bn_geom(&g, act);
            let input = Inputs {
                x: uniform(&mut r, g.x_len(), -1.0, 1.0),
                w: uniform(&mut r, g.w_len(), -1.0, 1.0),
                bias: uniform(&mut r, g.c_out, -0.5, 0.5),
                params: [uniform(&mut r, bn.c, 0.5, 1.5), uniform(&mut r, bn.c, -0.5, 0.5)].concat(),
                running: [uniform(&mut r, bn.c, -0.2, 0.2), uniform(&mut r, bn.c, 0.5, 2.0)].concat(),
                dy: uniform(&mut r, g.y_len(), -1.0, 1.0),
            };
            for lead in [1, 4] {
                let what = format!("conv2d_batchnorm at {p} {g:?} {act:?} lead {lead}");
                let call = Call { g: &g, bn: &bn, lead, fused: true };
                let got = run(b, call, &input);
                let (want, bound, grad_bound) = match p {
                    Precision::Fp32 => (reference_run(&g, &bn, &input, &got.y), tol, tol),
                    _ => (run(b, Call { fused: false, ..call }, &input), 1e-4, 4.0 * p.unit_roundoff()),
                };
                for (name, got, want, bound) in [
                    ("y", &got.y, &want.y, bound),
                    ("running", &got.running, &want.running, bound),
                    ("eval y", &got.eval_y, &want.eval_y, bound),
                    ("dparams", &got.dparams, &want.dparams, grad_bound),
                    ("dx", &got.dx, &want.dx, grad_bound),
                    ("dw", &got.dw, &want.dw, grad_bound),
                ] {
                    assert_close(&format!("{what}: {name}"), got, want, bound);
                }
                if let Some(added) = &got.added {
                    assert_close(&format!("{what}: dx added into a window"), added, &got.dx, grad_bound);
                }
                // cuDNN's weight gradient may sum in another order from one call to the next.
                assert_close(&format!("{what}: dw without dx"), &got.dw_without_dx, &got.dw, grad_bound);
                if g.n > 0 {
                    assert_close(&format!("{what}: saved"), &got.saved, &want.saved, bound);
                }
                let sixteen = matches!(p, Precision::Bf16 | Precision::Fp16);
                if sixteen && g.n > 0 && g.c_out >= 32 && g.c_out % 8 == 0 && lead == 4 {
                    assert!(got.narrow_stash, "{what}: the conv's output was not kept in 16 bits (the stash's second half was written)");
                }
            }
        }
    }
}

/// fp32 (N, C, HW) -> a narrow tensor as the op takes it: (N, HW, C) values
/// rounded to 16 bits (`p`), two to a float, in the first half of a window of `v.len()` floats.
pub(super) fn narrowed(v: &[f32], (_, c, hw): (usize, usize, usize), p: Precision) -> Vec<f32> {
    let to16 = |x: f32| if p == Precision::Fp16 { half::f16::from_f32(x).to_bits() } else { half::bf16::from_f32(x).to_bits() };
    let mut h = vec![0u16; 2 * v.len()];
    for (i, &x) in v.iter().enumerate() {
        let (ni, ci, q) = (i / (c * hw), i / hw % c, i % hw);
        h[(ni * hw + q) * c + ci] = to16(x);
    }
    h.chunks(2).map(|pair| f32::from_bits(pair[0] as u32 | (pair[1] as u32) << 16)).collect()
}

/// The inverse of [`narrowed`]: the window's first half widened back to fp32 (N, C, HW).
pub(super) fn widened(v: &[f32], (n, c, hw): (usize, usize, usize), p: Precision) -> Vec<f32> {
    let h: Vec<u16> = v.iter().flat_map(|x| [x.to_bits() as u16, (x.to_bits() >> 16) as u16]).collect();
    let to32 = |b: u16| if p == Precision::Fp16 { half::f16::from_bits(b).to_f32() } else { half::bf16::from_bits(b).to_f32() };
    (0..n * c * hw).map(|i| to32(h[(i / (c * hw) * hw + i % hw) * c + i / hw % c])).collect()
}

/// The op with `edges` narrow on plain buffers: training forward, backward with
/// dx (added into `prior` (N, C_in, H, W) where given), evaluation forward;
/// narrow outputs widened back.
fn run_narrow<B: Backend>(
    b: &B,
    (g, bn): (&Conv2dGeom, &BatchNormGeom),
    edges: NarrowEdges,
    (input, prior): (&Inputs, Option<&[f32]>),
    p: Precision,
) -> crate::Result<Outputs> {
    let (xs, ys) = ((g.n, g.c_in, g.h * g.w), (g.n, g.c_out, g.out_h() * g.out_w()));
    let up = |v: &[f32]| b.upload(v).unwrap();
    let x = up(&if edges.x { narrowed(&input.x, xs, p) } else { input.x.clone() });
    let dy = up(&if edges.y { narrowed(&input.dy, ys, p) } else { input.dy.clone() });
    let (w, bias, params, mut running) = (up(&input.w), up(&input.bias), up(&input.params), up(&input.running));
    let (mut saved, mut stash, mut y, mut eval_y) =
        (poisoned(b, 2 * bn.c), poisoned(b, g.y_len()), poisoned(b, g.y_len()), poisoned(b, g.y_len()));
    let mut keep = b.conv2d_keeps(g).then(|| poisoned(b, g.x_len().div_ceil(2)));
    let forward = |training: bool, [y, saved, running, stash]: [&mut B::Buf<f32>; 4], keep: &mut Option<B::Buf<f32>>| {
        let inputs = (View::all(&x), View::all(&w), View::all(&bias));
        let state = (View::all(&params), ViewMut::all(running), ViewMut::all(saved));
        let keep = keep.as_mut().map(ViewMut::all);
        b.conv2d_batchnorm_forward((g, bn), edges, training, inputs, keep, state, ViewMut::all(stash), ViewMut::all(y))
    };
    forward(true, [&mut y, &mut saved, &mut running, &mut stash], &mut keep)?;
    let (running_after, saved_after) = (down(b, &running), down(b, &saved));
    let mut dx = match prior {
        Some(v) => up(&if edges.x { narrowed(v, xs, p) } else { v.to_vec() }),
        None => poisoned(b, g.x_len()),
    };
    let (mut dw, mut dparams) = (poisoned(b, g.w_len()), poisoned(b, 2 * bn.c));
    let (mut dstash, mut scratch) = (poisoned(b, g.y_len()), poisoned(b, g.w_len() + g.c_out));
    b.conv2d_batchnorm_backward(
        (g, bn),
        edges,
        (View::all(&x), keep.as_ref().map(View::all), View::all(&w)),
        (View::all(&stash), View::all(&y), View::all(&dy)),
        (View::all(&bias), View::all(&params), View::all(&saved)),
        ViewMut::all(&mut dstash),
        (Some(ViewMut::all(&mut dx)), prior.is_some()),
        (ViewMut::all(&mut dw), ViewMut::all(&mut scratch), ViewMut::all(&mut dparams)),
    )?;
    forward(false, [&mut eval_y, &mut saved, &mut running, &mut stash], &mut keep)?;
    let out = |buf: &B::Buf<f32>, shape, narrow| if narrow { widened(&down(b, buf), shape, p) } else { down(b, buf) };
    Ok(Outputs {
        y: out(&y, ys, edges.y),
        eval_y: out(&eval_y, ys, edges.y),
        dx: out(&dx, xs, edges.x),
        dw: down(b, &dw),
        dparams: down(b, &dparams),
        running: running_after,
        saved: saved_after,
        ..Outputs::default()
    })
}

/// Narrow edges ([`NarrowEdges`]): where the backend offers them, the op with
/// 16-bit channels-last x, y, dx and dy gives what the wide op gives on the
/// same values (x and dy rounded to 16 bits first), up to a rounding of the
/// format; sides it does not offer are refused.
pub fn conv2d_batchnorm_narrow<B: Backend>(b: &B, _tol: f32) {
    let _restore = Restore(b);
    let mut r = rng(64);
    for p in b.precisions() {
        b.set_precision(p).unwrap();
        for (g, act) in cases() {
            let (bn, offered) = (bn_geom(&g, act), b.conv2d_batchnorm_narrow(&g));
            let round = |v: Vec<f32>, shape| match offered == NarrowEdges::WIDE {
                true => v,
                false => widened(&narrowed(&v, shape, p), shape, p),
            };
            let input = Inputs {
                x: round(uniform(&mut r, g.x_len(), -1.0, 1.0), (g.n, g.c_in, g.h * g.w)),
                w: uniform(&mut r, g.w_len(), -1.0, 1.0),
                bias: uniform(&mut r, g.c_out, -0.5, 0.5),
                params: [uniform(&mut r, bn.c, 0.5, 1.5), uniform(&mut r, bn.c, -0.5, 0.5)].concat(),
                running: [uniform(&mut r, bn.c, -0.2, 0.2), uniform(&mut r, bn.c, 0.5, 2.0)].concat(),
                dy: round(uniform(&mut r, g.y_len(), -1.0, 1.0), (g.n, g.c_out, g.out_h() * g.out_w())),
            };
            let what = format!("conv2d_batchnorm narrow edges at {p} {g:?} {act:?} (offered {offered:?})");
            for refused in [NarrowEdges { x: true, y: false }, NarrowEdges { x: false, y: true }] {
                if g.n > 0 && ((refused.x && !offered.x) || (refused.y && !offered.y)) {
                    assert!(run_narrow(b, (&g, &bn), refused, (&input, None), p).is_err(), "{what}: {refused:?} was not refused");
                }
            }
            if offered == NarrowEdges::WIDE {
                continue;
            }
            assert!(matches!(p, Precision::Bf16 | Precision::Fp16), "{what}: narrow edges at {p}");
            let want = run(b, Call { g: &g, bn: &bn, lead: 4, fused: true }, &input);
            let got = run_narrow(b, (&g, &bn), offered, (&input, None), p).unwrap();
            let u = p.unit_roundoff();
            // dx added into a gradient another reader wrote (a residual network's shortcut).
            let prior = round(uniform(&mut r, g.x_len(), -1.0, 1.0), (g.n, g.c_in, g.h * g.w));
            let sum: Vec<f32> = prior.iter().zip(&want.dx).map(|(a, d)| a + d).collect();
            let added = run_narrow(b, (&g, &bn), offered, (&input, Some(&prior)), p).unwrap();
            assert_close(&format!("{what}: dx added in"), &added.dx, &sum, 4.0 * u);
            for (name, got, want, bound) in [
                ("y", &got.y, &want.y, 2.0 * u),
                ("eval y", &got.eval_y, &want.eval_y, 2.0 * u),
                ("running", &got.running, &want.running, 1e-4),
                ("dparams", &got.dparams, &want.dparams, 4.0 * u),
                ("dx", &got.dx, &want.dx, 4.0 * u),
                ("dw", &got.dw, &want.dw, 4.0 * u),
            ] {
                assert_close(&format!("{what}: {name}"), got, want, bound);
            }
        }
    }
}
