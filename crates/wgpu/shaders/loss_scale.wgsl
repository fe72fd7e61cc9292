// Dynamic loss scaling (PyTorch's GradScaler) on the device: state = [scale,
// good_steps, found_inf, skipped] (LossScaleState in rr_core::backend).
// Non-finite means all exponent bits set (tested on the bits: WGSL may assume
// floats are finite).

fn not_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

//! kernel loss_scale_dlogits
// [state, x, n]; r0 = state, w0 = x: x *= scale.
@compute @workgroup_size(256)
fn loss_scale_dlogits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i >= pu(2u)) {
        return;
    }
    let xi = pu(1u) + i;
    w0[xi] = bitcast<u32>(bitcast<f32>(w0[xi]) * bitcast<f32>(r0[pu(0u)]));
}

//! kernel loss_scale_unscale
//! atomic w1
// [grads, state, n]; w0 = grads, w1 = state (atomic: every invocation may raise the flag).
@compute @workgroup_size(256)
fn loss_scale_unscale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i >= pu(2u)) {
        return;
    }
    let s = pu(1u);
    let inverse = 1.0 / bitcast<f32>(atomicLoad(&w1[s]));
    let gi = pu(0u) + i;
    let v = bitcast<f32>(w0[gi]) * inverse;
    w0[gi] = bitcast<u32>(v);
    if (not_finite(v)) {
        atomicStore(&w1[s + 2u], bitcast<u32>(1.0));
    }
}

//! kernel loss_scale_update
// [state, growth, backoff, growth_interval]; w0 = state. One invocation.
@compute @workgroup_size(1)
fn loss_scale_update(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x != 0u) {
        return;
    }
    let s = pu(0u);
    var scale = bitcast<f32>(w0[s]);
    var good = bitcast<f32>(w0[s + 1u]);
    if (bitcast<f32>(w0[s + 2u]) != 0.0) {
        scale = scale * pf(2u);
        good = 0.0;
        w0[s + 3u] = bitcast<u32>(bitcast<f32>(w0[s + 3u]) + 1.0);
    } else {
        good = good + 1.0;
        if (good >= f32(pu(3u))) {
            let grown = scale * pf(1u);
            if (!not_finite(grown)) {
                scale = grown;
            }
            good = 0.0;
        }
    }
    w0[s] = bitcast<u32>(scale);
    w0[s + 1u] = bitcast<u32>(good);
    w0[s + 2u] = 0u;
}
