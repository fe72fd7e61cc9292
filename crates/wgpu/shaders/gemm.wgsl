// C (m, n) = alpha * op(A) op(B) + beta * C + bias, row-major. A workgroup of
// 16x16 invocations computes a 16x16 block of C, stepping through k 64 at a time:
// each step loads a 16x64 tile of A and a 64x16 tile of B into workgroup memory
// (4 values per invocation, issued together, so a step costs one memory round
// trip; the small products of LeNet-5 are bound by those round trips, not by
// arithmetic). A is stored (m, k), or (k, m) when transposed; B (k, n) or (n, k).

const TK: u32 = 64u;

var<workgroup> tile_a: array<f32, 1024>; // [i * TK + q] = A(row0 + i, t + q)
var<workgroup> tile_b: array<f32, 1024>; // [q * 16 + j] = B(t + q, col0 + j)

//! kernel gemm
// [a, b, c, bias, m, n, k, trans_a, trans_b, alpha, beta, has_bias]; r0 = A, r1 = B, r2 = bias, w0 = C
@compute @workgroup_size(16, 16)
fn gemm(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let m = pu(4u);
    let n = pu(5u);
    let k = pu(6u);
    let ta = pu(7u) != 0u;
    let tb = pu(8u) != 0u;
    let row0 = wg.y * 16u;
    let col0 = wg.x * 16u;
    let flat_id = l.y * 16u + l.x;
    var acc = 0.0;
    for (var t = 0u; t < k; t += TK) {
        // Neighbouring invocations load neighbouring addresses whichever way each operand is stored.
        for (var e = 0u; e < 4u; e++) {
            let idx = e * 256u + flat_id;
            var i = idx / TK;
            var q = idx % TK;
            if (ta) {
                i = idx % 16u;
                q = idx / 16u;
            }
            var av = 0.0;
            if (row0 + i < m && t + q < k) {
                av = bitcast<f32>(r0[pu(0u) + select((row0 + i) * k + t + q, (t + q) * m + row0 + i, ta)]);
            }
            tile_a[i * TK + q] = av;
            var j = idx % 16u;
            var qb = idx / 16u;
            if (tb) {
                qb = idx % TK;
                j = idx / TK;
            }
            var bv = 0.0;
            if (t + qb < k && col0 + j < n) {
                bv = bitcast<f32>(r1[pu(1u) + select((t + qb) * n + col0 + j, (col0 + j) * k + t + qb, tb)]);
            }
            tile_b[qb * 16u + j] = bv;
        }
        workgroupBarrier();
        for (var q = 0u; q < TK; q++) {
            acc = fma(tile_a[l.y * TK + q], tile_b[q * 16u + l.x], acc);
        }
        workgroupBarrier();
    }
    let row = row0 + l.y;
    let col = col0 + l.x;
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
