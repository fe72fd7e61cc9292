// Fused softmax cross-entropy over logits (n, classes).

// exp and log closer to the reference's (the C library's, correctly rounded nearly always)
// than the drivers' builtins, which may be several ulps off (WGSL allows 3 + 2|x| for exp).
// Where a prediction is close to its target, p - target cancels and those ulps show against
// the reference's gradient. Measured on llvmpipe (exp over [-30, 0], log over [1, 100]): the
// builtins give the reference's bits in 10% (exp) and 74% (log) of cases, exp_f32 in 99.4%
// (else 1 ulp off), log_f32 (Cephes' logf) in 97%.

// x unchanged, in a way the shader compiler cannot see through (parameter word 31 is 0: the
// unused words of a slot are zero and no kernel here has that many), so that it cannot
// reassociate the error-free transformations of exp_f32 ((a + b) - a is not b in floats).
fn keep(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ pu(31u));
}

// For x <= 88 (here x <= 0: a logit minus the row's maximum or its log-sum-exp).
fn exp_f32(x: f32) -> f32 {
    if (x < -103.98) {
        return 0.0; // below half the smallest subnormal
    }
    // x = k ln2 + r with |r| <= ln2 / 2, r = r_hi + r_lo to about 48 bits: ln2 in two
    // parts, the first (9 bits) exact times any k here; the rounding errors of the rest
    // recovered with fma and two-sum.
    let k = round(x * 1.44269504);
    let r1 = fma(-k, 0.693359375, x);
    let t = keep(-k * -2.12194440e-4);
    let t_err = fma(-k, -2.12194440e-4, -t);
    let r = keep(r1 + t);
    let bv = keep(r - r1);
    let r_lo = (r1 - (r - bv)) + (t - bv) + t_err;
    // exp(r) = 1 + r + r^2/2 + r^3 Q(r): the first three terms in two parts each, the rest
    // (below 0.007) in f32; one rounding at the end.
    let r2 = keep(r * r);
    let r2_err = fma(r, r, -r2);
    let h = 0.5 * r2;
    let h_lo = 0.5 * r2_err + r * r_lo;
    var q = fma(2.7557319e-6, r, 2.4801587e-5);
    q = fma(q, r, 1.9841270e-4);
    q = fma(q, r, 1.3888889e-3);
    q = fma(q, r, 8.3333333e-3);
    q = fma(q, r, 4.1666667e-2);
    q = fma(q, r, 1.6666667e-1);
    let cubic = r2 * r * q;
    let a = keep(r + h);
    let av = keep(a - r);
    let a_err = (r - (a - av)) + (h - av);
    let b = keep(1.0 + a);
    let b_err = a - (b - 1.0);
    let tail = ((a_err + b_err) + (r_lo + h_lo)) + cubic;
    return ldexp(b + tail, i32(k));
}

// For normal x > 0 (here a sum of exponentials, at least 1).
fn log_f32(x: f32) -> f32 {
    let parts = frexp(x);
    var m = parts.fract;
    var e = f32(parts.exp);
    if (m < 0.70710678) {
        m = m + m;
        e -= 1.0;
    }
    let f = m - 1.0;
    let z = f * f;
    var y = fma(7.0376836292e-2, f, -1.1514610310e-1);
    y = fma(y, f, 1.1676998740e-1);
    y = fma(y, f, -1.2420140846e-1);
    y = fma(y, f, 1.4249322787e-1);
    y = fma(y, f, -1.6668057665e-1);
    y = fma(y, f, 2.0000714765e-1);
    y = fma(y, f, -2.4999993993e-1);
    y = fma(y, f, 3.3333331174e-1);
    y = y * f * z;
    y = fma(e, -2.12194440e-4, y);
    y = fma(-0.5, z, y);
    return fma(e, 0.693359375, f + y);
}

var<workgroup> loss_part: array<f32, 256>;
var<workgroup> correct_part: array<f32, 256>;

//! kernel softmax_cross_entropy
// [logits, labels, dlogits, stats, n, classes, grad_scale, write_grad, smoothing, smoothing / classes];
// r0 = logits, r1 = labels, w0 = dlogits, w1 = stats. One workgroup: each invocation takes every
// 256th sample; the loss sum and correct count are added to stats[0], stats[1]. With label
// smoothing s the target is (1 - s) onehot + s / classes (reference::softmax_cross_entropy).
@compute @workgroup_size(256)
fn softmax_cross_entropy(@builtin(local_invocation_id) lid: vec3<u32>) {
    let n = pu(4u);
    let classes = pu(5u);
    let scale = pf(6u);
    let write = pu(7u) != 0u;
    let smoothing = pf(8u);
    let uniform_target = pf(9u);
    let l = lid.x;
    var loss = 0.0;
    var correct = 0.0;
    for (var i = l; i < n; i += 256u) {
        let row = pu(0u) + i * classes;
        let label = r1[pu(1u) + i];
        var best = bitcast<f32>(r0[row]);
        var arg = 0u;
        var total = best;
        for (var c = 1u; c < classes; c++) {
            let v = bitcast<f32>(r0[row + c]);
            total += v;
            if (v > best) {
                best = v;
                arg = c;
            }
        }
        var sum = 0.0;
        for (var c = 0u; c < classes; c++) {
            sum += exp_f32(bitcast<f32>(r0[row + c]) - best);
        }
        let log_z = best + log_f32(sum);
        if (label < classes) {
            let mean_logit = total / f32(classes);
            loss += (1.0 - smoothing) * (log_z - bitcast<f32>(r0[row + label])) + smoothing * (log_z - mean_logit);
            correct += select(0.0, 1.0, arg == label);
        }
        if (write) {
            for (var c = 0u; c < classes; c++) {
                let prob = exp_f32(bitcast<f32>(r0[row + c]) - log_z);
                let goal = (1.0 - smoothing) * select(0.0, 1.0, c == label) + uniform_target;
                w0[pu(2u) + i * classes + c] = bitcast<u32>(scale * (prob - goal));
            }
        }
    }
    loss_part[l] = loss;
    correct_part[l] = correct;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (l < s) {
            loss_part[l] += loss_part[l + s];
            correct_part[l] += correct_part[l + s];
        }
        workgroupBarrier();
    }
    if (l == 0u) {
        w1[pu(3u)] = bitcast<u32>(bitcast<f32>(w1[pu(3u)]) + loss_part[0]);
        w1[pu(3u) + 1u] = bitcast<u32>(bitcast<f32>(w1[pu(3u) + 1u]) + correct_part[0]);
    }
}

