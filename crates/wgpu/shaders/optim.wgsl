// Optimizer steps over every parameter at once; hyper = [lr, 1 - beta1^t, 1 - beta2^t, skip]
// (a nonzero skip, loss scaling's overflowed step, leaves parameters and state as they are).

fn skipped() -> bool {
    return bitcast<f32>(r1[pu(3u) + 3u]) != 0.0;
}

//! kernel sgd_step
// [params, grads, state, hyper, n, momentum, nesterov, weight_decay]; r0 = grads, r1 = hyper, w0 = params, w1 = state.
@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i >= pu(4u) || skipped()) {
        return;
    }
    let lr = bitcast<f32>(r1[pu(3u)]);
    let mom = pf(5u);
    let pi = pu(0u) + i;
    let si = pu(2u) + i;
    let p = bitcast<f32>(w0[pi]);
    let g = bitcast<f32>(r0[pu(1u) + i]) + pf(7u) * p;
    let v = mom * bitcast<f32>(w1[si]) + g;
    w1[si] = bitcast<u32>(v);
    w0[pi] = bitcast<u32>(p - lr * select(v, g + mom * v, pu(6u) != 0u));
}

//! kernel adam_step
// [params, grads, state, hyper, n, beta1, beta2, eps, weight_decay, decoupled]; state = [m (n) | v (n)].
@compute @workgroup_size(256)
fn adam_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = pu(4u);
    let i = flat(gid, groups);
    if (i >= n || skipped()) {
        return;
    }
    let lr = bitcast<f32>(r1[pu(3u)]);
    let bc1 = bitcast<f32>(r1[pu(3u) + 1u]);
    let bc2 = bitcast<f32>(r1[pu(3u) + 2u]);
    let b1 = pf(5u);
    let b2 = pf(6u);
    let wd = pf(8u);
    let pi = pu(0u) + i;
    var p = bitcast<f32>(w0[pi]);
    var g = bitcast<f32>(r0[pu(1u) + i]);
    if (pu(9u) != 0u) {
        p = p * (1.0 - lr * wd);
    } else {
        g = g + wd * p;
    }
    let mi = pu(2u) + i;
    let vi = pu(2u) + n + i;
    let m = b1 * bitcast<f32>(w1[mi]) + (1.0 - b1) * g;
    let v = b2 * bitcast<f32>(w1[vi]) + (1.0 - b2) * g * g;
    w1[mi] = bitcast<u32>(m);
    w1[vi] = bitcast<u32>(v);
    w0[pi] = bitcast<u32>(p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + pf(7u)));
}
