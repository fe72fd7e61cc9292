// Direct 2-D convolution and its gradients. Geometry words (after the offsets):
// N, C, H, W, CO, K, S, P, OH, OW. x: (N, C, H, W), w: (CO, C, K, K), y: (N, CO, OH, OW).

var<workgroup> partial: array<f32, 256>;

//! kernel conv_forward
// [x, w, b, y, geometry...]; r0 = x, r1 = w, r2 = b, w0 = y; one invocation per output.
@compute @workgroup_size(256)
fn conv_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let N = pu(4u); let C = pu(5u); let H = pu(6u); let W = pu(7u); let CO = pu(8u);
    let K = pu(9u); let S = pu(10u); let P = pu(11u); let OH = pu(12u); let OW = pu(13u);
    let i = flat(gid, groups);
    if (i >= N * CO * OH * OW) {
        return;
    }
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let co = (i / (OW * OH)) % CO;
    let n = i / (OW * OH * CO);
    var acc = bitcast<f32>(r2[pu(2u) + co]);
    for (var c = 0u; c < C; c++) {
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
                let xv = bitcast<f32>(r0[pu(0u) + ((n * C + c) * H + u32(iy)) * W + u32(ix)]);
                let wv = bitcast<f32>(r1[pu(1u) + ((co * C + c) * K + ky) * K + kx]);
                acc = fma(xv, wv, acc);
            }
        }
    }
    w0[pu(3u) + i] = bitcast<u32>(acc);
}

//! kernel conv_backward_weight
// [x, dy, dparams, geometry...]; r0 = x, r1 = dy, w0 = [dW (CO, C, K, K) | db (CO)].
// One workgroup per output value; its 256 invocations split the (n, oy) rows of
// the sum and run along ox (one division per row, not per term).
@compute @workgroup_size(256)
fn conv_backward_weight(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let N = pu(3u); let C = pu(4u); let H = pu(5u); let W = pu(6u); let CO = pu(7u);
    let K = pu(8u); let S = pu(9u); let P = pu(10u); let OH = pu(11u); let OW = pu(12u);
    let o = wg.x + wg.y * groups.x;
    let wl = CO * C * K * K;
    let valid = o < wl + CO;
    var acc = 0.0;
    if (valid) {
        let rows = N * OH;
        if (o < wl) {
            let kx = o % K;
            let ky = (o / K) % K;
            let c = (o / (K * K)) % C;
            let co = o / (K * K * C);
            // ox range whose input column ix = ox*S + kx - P lies inside [0, W)
            var ox0 = 0u;
            if (kx < P) {
                ox0 = (P - kx + S - 1u) / S;
            }
            var ox1 = 0u;
            if (W + P > kx) {
                ox1 = min(OW, (W + P - kx + S - 1u) / S);
            }
            for (var r = l.x; r < rows; r += 256u) {
                let n = r / OH;
                let oy = r - n * OH;
                let iy = i32(oy * S + ky) - i32(P);
                if (iy < 0 || iy >= i32(H)) {
                    continue;
                }
                let dyrow = pu(1u) + ((n * CO + co) * OH + oy) * OW;
                let xrow = pu(0u) + ((n * C + c) * H + u32(iy)) * W + kx - P;
                for (var ox = ox0; ox < ox1; ox++) {
                    acc = fma(bitcast<f32>(r1[dyrow + ox]), bitcast<f32>(r0[xrow + ox * S]), acc);
                }
            }
        } else {
            let co = o - wl;
            for (var r = l.x; r < rows; r += 256u) {
                let n = r / OH;
                let oy = r - n * OH;
                let dyrow = pu(1u) + ((n * CO + co) * OH + oy) * OW;
                for (var ox = 0u; ox < OW; ox++) {
                    acc += bitcast<f32>(r1[dyrow + ox]);
                }
            }
        }
    }
    partial[l.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (l.x < s) {
            partial[l.x] += partial[l.x + s];
        }
        workgroupBarrier();
    }
    if (l.x == 0u && valid) {
        w0[pu(2u) + o] = bitcast<u32>(partial[0]);
    }
}

//! kernel conv_backward_input
// [w, dy, dx, geometry...]; r0 = w, r1 = dy, w0 = dx; one invocation per input value.
@compute @workgroup_size(256)
fn conv_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let N = pu(3u); let C = pu(4u); let H = pu(5u); let W = pu(6u); let CO = pu(7u);
    let K = pu(8u); let S = pu(9u); let P = pu(10u); let OH = pu(11u); let OW = pu(12u);
    let i = flat(gid, groups);
    if (i >= N * C * H * W) {
        return;
    }
    let ix = i % W;
    let iy = (i / W) % H;
    let c = (i / (W * H)) % C;
    let n = i / (W * H * C);
    var acc = 0.0;
    for (var ky = 0u; ky < K; ky++) {
        let ty = i32(iy + P) - i32(ky);
        if (ty < 0 || (S != 1u && ty % i32(S) != 0)) {
            continue;
        }
        let oy = select(u32(ty) / S, u32(ty), S == 1u);
        if (oy >= OH) {
            continue;
        }
        for (var kx = 0u; kx < K; kx++) {
            let tx = i32(ix + P) - i32(kx);
            if (tx < 0 || (S != 1u && tx % i32(S) != 0)) {
                continue;
            }
            let ox = select(u32(tx) / S, u32(tx), S == 1u);
            if (ox >= OW) {
                continue;
            }
            for (var co = 0u; co < CO; co++) {
                let d = bitcast<f32>(r1[pu(1u) + ((n * CO + co) * OH + oy) * OW + ox]);
                acc = fma(d, bitcast<f32>(r0[pu(0u) + ((co * C + c) * K + ky) * K + kx]), acc);
            }
        }
    }
    w0[pu(2u) + i] = bitcast<u32>(acc);
}
