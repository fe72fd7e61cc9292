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
    // Tiles are loaded so that neighbouring invocations (l.x) read neighbouring
    // addresses whichever way each operand is stored.
    let row0 = wg.y * 16u;
    let col0 = wg.x * 16u;
    for (var t = 0u; t < k; t += 16u) {
        // tile_a[i * 16 + q] = A(row0 + i, t + q)
        var ai = l.y;
        var aq = l.x;
        if (ta) {
            ai = l.x;
            aq = l.y;
        }
        var av = 0.0;
        if (row0 + ai < m && t + aq < k) {
            av = bitcast<f32>(r0[pu(0u) + select((row0 + ai) * k + t + aq, (t + aq) * m + row0 + ai, ta)]);
        }
        tile_a[ai * 16u + aq] = av;
        // tile_b[q * 16 + j] = B(t + q, col0 + j)
        var bq = l.y;
        var bj = l.x;
        if (tb) {
            bq = l.x;
            bj = l.y;
        }
        var bv = 0.0;
        if (t + bq < k && col0 + bj < n) {
            bv = bitcast<f32>(r1[pu(1u) + select((t + bq) * n + col0 + bj, (col0 + bj) * k + t + bq, tb)]);
        }
        tile_b[bq * 16u + bj] = bv;
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
