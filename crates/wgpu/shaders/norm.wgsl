// Batch normalization over x (N, C, HW) per channel; params = [gamma | beta],
// running = [mean | var], saved = [mean | invstd]. Reductions run in f32 over a
// fixed tree (one workgroup per channel), the variance in a second pass.
// `act` is the fused activation (Activation::code): 0 none, 1 ReLU, 2 GELU.

// dy' = dy act'(z): ReLU masks by y > 0; GELU recomputes z = gamma * xhat + beta
// (the forward stores only y). (Every kernel of this file gets this function,
// and not all bind y: callers read y, and only under ReLU.)
fn bn_dz(act: u32, y: f32, dy: f32, xhat: f32, gamma: f32, beta: f32) -> f32 {
    if (act == 1u) {
        return select(dy, 0.0, y <= 0.0);
    }
    if (act == 2u) {
        return dy * gelu_grad(gamma * xhat + beta);
    }
    return dy;
}

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

fn tree_sum(l: u32) {
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (l < s) {
            red[l] += red[l + s];
            red2[l] += red2[l + s];
        }
        workgroupBarrier();
    }
}

//! kernel bn_stats
// [x, running, saved, N, C, HW, eps, momentum]; r0 = x, w0 = running, w1 = saved. One workgroup per channel.
@compute @workgroup_size(256)
fn bn_stats(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let N = pu(3u); let C = pu(4u); let HW = pu(5u);
    let c = wg.x;
    let l = lid.x;
    let m = N * HW;
    var s = 0.0;
    for (var t = l; t < m; t += 256u) {
        let n = t / HW;
        s += bitcast<f32>(r0[pu(0u) + (n * C + c) * HW + (t - n * HW)]);
    }
    red[l] = s;
    red2[l] = 0.0;
    tree_sum(l);
    let mean = red[0] / f32(m);
    workgroupBarrier();
    var q = 0.0;
    for (var t = l; t < m; t += 256u) {
        let n = t / HW;
        let d = bitcast<f32>(r0[pu(0u) + (n * C + c) * HW + (t - n * HW)]) - mean;
        q += d * d;
    }
    red[l] = 0.0;
    red2[l] = q;
    tree_sum(l);
    if (l == 0u) {
        let var_ = red2[0] / f32(m);
        let mom = pf(7u);
        w1[pu(2u) + c] = bitcast<u32>(mean);
        w1[pu(2u) + C + c] = bitcast<u32>(1.0 / sqrt(var_ + pf(6u)));
        let rm = pu(1u) + c;
        let rv = pu(1u) + C + c;
        w0[rm] = bitcast<u32>((1.0 - mom) * bitcast<f32>(w0[rm]) + mom * mean);
        w0[rv] = bitcast<u32>((1.0 - mom) * bitcast<f32>(w0[rv]) + mom * (var_ * f32(m) / f32(m - 1u)));
    }
}

//! kernel bn_apply
// [x, params, stats, y, N, C, HW, eps, training, act]; r0 = x, r1 = params, r2 = stats, w0 = y.
// Training reads saved [mean | invstd]; evaluation reads running [mean | var].
@compute @workgroup_size(256)
fn bn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let N = pu(4u); let C = pu(5u); let HW = pu(6u);
    let i = flat(gid, groups);
    if (i >= N * C * HW) {
        return;
    }
    let c = (i / HW) % C;
    let mean = bitcast<f32>(r2[pu(2u) + c]);
    var invstd = bitcast<f32>(r2[pu(2u) + C + c]);
    if (pu(8u) == 0u) {
        invstd = 1.0 / sqrt(invstd + pf(7u));
    }
    let v = bitcast<f32>(r1[pu(1u) + c]) * ((bitcast<f32>(r0[pu(0u) + i]) - mean) * invstd) + bitcast<f32>(r1[pu(1u) + C + c]);
    var y = v;
    if (pu(9u) == 1u) {
        y = max(v, 0.0);
    } else if (pu(9u) == 2u) {
        y = gelu(v);
    }
    w0[pu(3u) + i] = bitcast<u32>(y);
}

//! kernel bn_backward_reduce
// [x, y, dy, saved, dparams, N, C, HW, act, params]; r0 = x, r1 = y, r2 = dy, r3 = saved, r4 = params,
// w0 = dparams.
@compute @workgroup_size(256)
fn bn_backward_reduce(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let N = pu(5u); let C = pu(6u); let HW = pu(7u); let act = pu(8u);
    let c = wg.x;
    let l = lid.x;
    let mean = bitcast<f32>(r3[pu(3u) + c]);
    let invstd = bitcast<f32>(r3[pu(3u) + C + c]);
    let gamma = bitcast<f32>(r4[pu(9u) + c]);
    let beta = bitcast<f32>(r4[pu(9u) + C + c]);
    var dg = 0.0;
    var db = 0.0;
    for (var t = l; t < N * HW; t += 256u) {
        let n = t / HW;
        let i = (n * C + c) * HW + (t - n * HW);
        let xhat = (bitcast<f32>(r0[pu(0u) + i]) - mean) * invstd;
        var y = 0.0;
        if (act == 1u) {
            y = bitcast<f32>(r1[pu(1u) + i]);
        }
        let d = bn_dz(act, y, bitcast<f32>(r2[pu(2u) + i]), xhat, gamma, beta);
        db += d;
        dg += d * xhat;
    }
    red[l] = dg;
    red2[l] = db;
    tree_sum(l);
    if (l == 0u) {
        w0[pu(4u) + c] = bitcast<u32>(red[0]);
        w0[pu(4u) + C + c] = bitcast<u32>(red2[0]);
    }
}

//! kernel bn_backward_dx
// [x, y, dy, params, saved, dparams, dx, N, C, HW, act]; r0..r5 = x, y, dy, params, saved, dparams; w0 = dx.
@compute @workgroup_size(256)
fn bn_backward_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let N = pu(7u); let C = pu(8u); let HW = pu(9u); let act = pu(10u);
    let i = flat(gid, groups);
    if (i >= N * C * HW) {
        return;
    }
    let c = (i / HW) % C;
    let m = f32(N * HW);
    let mean = bitcast<f32>(r4[pu(4u) + c]);
    let invstd = bitcast<f32>(r4[pu(4u) + C + c]);
    let mb = bitcast<f32>(r5[pu(5u) + C + c]) / m;
    let mg = bitcast<f32>(r5[pu(5u) + c]) / m;
    let gamma = bitcast<f32>(r3[pu(3u) + c]);
    let xhat = (bitcast<f32>(r0[pu(0u) + i]) - mean) * invstd;
    var y = 0.0;
    if (act == 1u) {
        y = bitcast<f32>(r1[pu(1u) + i]);
    }
    let d = bn_dz(act, y, bitcast<f32>(r2[pu(2u) + i]), xhat, gamma, bitcast<f32>(r3[pu(3u) + C + c]));
    w0[pu(6u) + i] = bitcast<u32>(gamma * invstd * (d - mb - xhat * mg));
}
