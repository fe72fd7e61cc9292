// C (m, n) = alpha * op(A) op(B) + beta * C + bias, row-major, 16x16 tiles in
// workgroup memory. A is stored (m, k) or (k, m) when transposed; B (k, n) or (n, k).

var<workgroup> tile_a: array<f32, 256>;
var<workgroup> tile_b: array<f32, 256>;

//! kernel gemm
// [a, b, c, bias, m, n, k, trans_a, trans_b, alpha, beta, has_bias]; r0 = A, r1 = B, r2 = bias, w0 = C
@compute @workgroup_size(16, 16)
fn gemm(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let m = pu(4u);
    let n = pu(5u);
    let k = pu(6u);
    let ta = pu(7u) != 0u;
    let tb = pu(8u) != 0u;
    let row = wg.y * 16u + l.y;
    let col = wg.x * 16u + l.x;
    var acc = 0.0;
    for (var t = 0u; t < k; t += 16u) {
        let ak = t + l.x;
        var av = 0.0;
        if (row < m && ak < k) {
            av = bitcast<f32>(r0[pu(0u) + select(row * k + ak, ak * m + row, ta)]);
        }
        tile_a[l.y * 16u + l.x] = av;
        let bk = t + l.y;
        var bv = 0.0;
        if (bk < k && col < n) {
            bv = bitcast<f32>(r1[pu(1u) + select(bk * n + col, col * k + bk, tb)]);
        }
        tile_b[l.y * 16u + l.x] = bv;
        workgroupBarrier();
        for (var q = 0u; q < 16u; q++) {
            acc = fma(tile_a[l.y * 16u + q], tile_b[q * 16u + l.x], acc);
        }
        workgroupBarrier();
    }
    if (row < m && col < n) {
        let at = pu(2u) + row * n + col;
        var v = pf(9u) * acc;
        let beta = pf(10u);
        if (beta != 0.0) {
            v += beta * bitcast<f32>(w0[at]);
        }
        if (pu(11u) != 0u) {
            v += bitcast<f32>(r2[pu(3u) + col]);
        }
        w0[at] = bitcast<u32>(v);
    }
}
