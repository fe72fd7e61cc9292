// Pooling. Geometry words (after the offsets): planes (N*C), H, W, K, S, P, OH, OW.

// The outputs o in [lo, hi) whose windows o*S - P .. o*S - P + K - 1 contain input i.
fn window_range(i: u32, K: u32, S: u32, P: u32, O: u32) -> vec2<u32> {
    let top = i + P; // o*S <= top and o*S + K - 1 >= top
    var lo = 0u;
    if (top + 1u > K) {
        lo = (top + 1u - K + S - 1u) / S;
    }
    let hi = min(O, top / S + 1u);
    return vec2<u32>(lo, max(lo, hi));
}

//! kernel maxpool_forward
// [x, y, argmax, geometry..., relu]; r0 = x, w0 = y, w1 = argmax (flat index into x, or
// 0xffffffff where a fused ReLU clamped the output).
@compute @workgroup_size(256)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let planes = pu(3u); let H = pu(4u); let W = pu(5u); let K = pu(6u);
    let S = pu(7u); let P = pu(8u); let OH = pu(9u); let OW = pu(10u); let relu = pu(11u) != 0u;
    let o = flat(gid, groups);
    if (o >= planes * OH * OW) {
        return;
    }
    let ox = o % OW;
    let oy = (o / OW) % OH;
    let plane = o / (OW * OH);
    var best = 0.0;
    var best_i = 0xffffffffu;
    for (var ky = 0u; ky < K; ky++) {
        let iy = i32(oy * S + ky) - i32(P);
        if (iy < 0 || iy >= i32(H)) {
            continue;
        }
        for (var kx = 0u; kx < K; kx++) {
            let ix = i32(ox * S + kx) - i32(P);
            if (ix < 0 || ix >= i32(W)) {
                continue;
            }
            let xi = (plane * H + u32(iy)) * W + u32(ix);
            let v = bitcast<f32>(r0[pu(0u) + xi]);
            if (best_i == 0xffffffffu || v > best) {
                best = v;
                best_i = xi;
            }
        }
    }
    if (relu && !(best > 0.0)) {
        best = 0.0;
        best_i = 0xffffffffu;
    }
    w0[pu(1u) + o] = bitcast<u32>(best);
    w1[pu(2u) + o] = best_i;
}

//! kernel maxpool_backward
// [dy, argmax, dx, geometry...]; r0 = dy, r1 = argmax, w0 = dx. A gather: each input
// sums the gradients of the outputs whose argmax it is (no atomics, no zero fill).
@compute @workgroup_size(256)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let planes = pu(3u); let H = pu(4u); let W = pu(5u); let K = pu(6u);
    let S = pu(7u); let P = pu(8u); let OH = pu(9u); let OW = pu(10u);
    let i = flat(gid, groups);
    if (i >= planes * H * W) {
        return;
    }
    let ix = i % W;
    let iy = (i / W) % H;
    let plane = i / (W * H);
    var acc = 0.0;
    let ys = window_range(iy, K, S, P, OH);
    let xs = window_range(ix, K, S, P, OW);
    for (var oy = ys.x; oy < ys.y; oy++) {
        for (var ox = xs.x; ox < xs.y; ox++) {
            let o = (plane * OH + oy) * OW + ox;
            if (r1[pu(1u) + o] == i) {
                acc += bitcast<f32>(r0[pu(0u) + o]);
            }
        }
    }
    w0[pu(2u) + i] = bitcast<u32>(acc);
}

//! kernel avgpool_forward
// [x, y, geometry...]; r0 = x, w0 = y. Padding reads 0; the divisor is K*K.
@compute @workgroup_size(256)
fn avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let planes = pu(2u); let H = pu(3u); let W = pu(4u); let K = pu(5u);
    let S = pu(6u); let P = pu(7u); let OH = pu(8u); let OW = pu(9u);
    let o = flat(gid, groups);
    if (o >= planes * OH * OW) {
        return;
    }
    let ox = o % OW;
    let oy = (o / OW) % OH;
    let plane = o / (OW * OH);
    var acc = 0.0;
    for (var ky = 0u; ky < K; ky++) {
        let iy = i32(oy * S + ky) - i32(P);
        if (iy < 0 || iy >= i32(H)) {
            continue;
        }
        for (var kx = 0u; kx < K; kx++) {
            let ix = i32(ox * S + kx) - i32(P);
            if (ix >= 0 && ix < i32(W)) {
                acc += bitcast<f32>(r0[pu(0u) + (plane * H + u32(iy)) * W + u32(ix)]);
            }
        }
    }
    w0[pu(1u) + o] = bitcast<u32>(acc * (1.0 / f32(K * K)));
}

//! kernel avgpool_backward
// [dy, dx, geometry...]; r0 = dy, w0 = dx (a gather over the windows containing each input).
@compute @workgroup_size(256)
fn avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let planes = pu(2u); let H = pu(3u); let W = pu(4u); let K = pu(5u);
    let S = pu(6u); let P = pu(7u); let OH = pu(8u); let OW = pu(9u);
    let i = flat(gid, groups);
    if (i >= planes * H * W) {
        return;
    }
    let ix = i % W;
    let iy = (i / W) % H;
    let plane = i / (W * H);
    let inv = 1.0 / f32(K * K);
    var acc = 0.0;
    let ys = window_range(iy, K, S, P, OH);
    let xs = window_range(ix, K, S, P, OW);
    for (var oy = ys.x; oy < ys.y; oy++) {
        for (var ox = xs.x; ox < xs.y; ox++) {
            acc += bitcast<f32>(r0[pu(0u) + (plane * OH + oy) * OW + ox]) * inv;
        }
    }
    w0[pu(1u) + i] = bitcast<u32>(acc);
}
