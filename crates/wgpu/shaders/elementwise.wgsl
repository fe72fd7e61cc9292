// Element-wise ops. Parameters are word offsets into the bound buffers, then sizes.

//! kernel fill
// [dst, n, value]
@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(1u)) {
        w0[pu(0u) + i] = pu(2u);
    }
}

//! kernel relu_forward
// [x, y, n]: y = max(x, 0)
@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(2u)) {
        w0[pu(1u) + i] = bitcast<u32>(max(bitcast<f32>(r0[pu(0u) + i]), 0.0));
    }
}

//! kernel relu_backward
// [y, dy, dx, n]: dx = dy * (y > 0)
@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(3u)) {
        let y = bitcast<f32>(r0[pu(0u) + i]);
        w0[pu(2u) + i] = select(0u, r1[pu(1u) + i], y > 0.0);
    }
}

//! kernel gelu_forward
// [x, y, n]: y = x Φ(x)
@compute @workgroup_size(256)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(2u)) {
        let x = bitcast<f32>(r0[pu(0u) + i]);
        w0[pu(1u) + i] = bitcast<u32>(gelu(x));
    }
}

//! kernel gelu_backward
// [x, dy, dx, n]: dx = dy GELU'(x)
@compute @workgroup_size(256)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(3u)) {
        w0[pu(2u) + i] = bitcast<u32>(bitcast<f32>(r1[pu(1u) + i]) * gelu_grad(bitcast<f32>(r0[pu(0u) + i])));
    }
}

//! kernel axpby
// [x, y, n, a, b]: y = a x + b y (y not read when b == 0)
@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(2u)) {
        let o = pu(1u) + i;
        let ax = pf(3u) * bitcast<f32>(r0[pu(0u) + i]);
        var v = ax;
        if (pf(4u) != 0.0) {
            v = ax + pf(4u) * bitcast<f32>(w0[o]);
        }
        w0[o] = bitcast<u32>(v);
    }
}

//! kernel mul
// [a, b, out, n]: out = a * b
@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(3u)) {
        w0[pu(2u) + i] = bitcast<u32>(bitcast<f32>(r0[pu(0u) + i]) * bitcast<f32>(r1[pu(1u) + i]));
    }
}

//! kernel add
// [a, b, y, n, relu]: y = a + b, then max(y, 0) when relu != 0
@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(3u)) {
        var v = bitcast<f32>(r0[pu(0u) + i]) + bitcast<f32>(r1[pu(1u) + i]);
        if (pu(4u) != 0u) {
            v = max(v, 0.0);
        }
        w0[pu(2u) + i] = bitcast<u32>(v);
    }
}

//! kernel add_assign
// [x, y, n]: y += x
@compute @workgroup_size(256)
fn add_assign(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(2u)) {
        let o = pu(1u) + i;
        w0[o] = bitcast<u32>(bitcast<f32>(w0[o]) + bitcast<f32>(r0[pu(0u) + i]));
    }
}

//! kernel column_sums
// [dy, db, rows, cols]: db[j] = sum_i dy[i, j]; one workgroup per column, its
// invocations splitting the rows, then a tree sum.
var<workgroup> col_part: array<f32, 256>;

@compute @workgroup_size(256)
fn column_sums(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let j = wg.x + wg.y * groups.x;
    let rows = pu(2u);
    let cols = pu(3u);
    var acc = 0.0;
    if (j < cols) {
        for (var i = lid.x; i < rows; i += 256u) {
            acc += bitcast<f32>(r0[pu(0u) + i * cols + j]);
        }
    }
    col_part[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            col_part[lid.x] += col_part[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && j < cols) {
        w0[pu(1u) + j] = bitcast<u32>(col_part[0]);
    }
}

//! kernel copy_words
// [src, dst, n]: dst = src, in whole 32-bit words. (A kernel rather than a buffer copy: the
// copies between a training step's dispatches then do not break their compute pass.)
@compute @workgroup_size(256)
fn copy_words(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i < pu(2u)) {
        w0[pu(1u) + i] = r0[pu(0u) + i];
    }
}

//! kernel scale_to_norm
// [x, n, target, eps]: x *= target / (||x|| + eps), unchanged where that is 0 (Muon).
// One workgroup: a tree sum of squares, then every invocation scales its share.
var<workgroup> sq_part: array<f32, 256>;

@compute @workgroup_size(256)
fn scale_to_norm(@builtin(local_invocation_id) lid: vec3<u32>) {
    let base = pu(0u);
    let n = pu(1u);
    var acc = 0.0;
    for (var i = lid.x; i < n; i += 256u) {
        let v = bitcast<f32>(w0[base + i]);
        acc += v * v;
    }
    sq_part[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            sq_part[lid.x] += sq_part[lid.x + s];
        }
        workgroupBarrier();
    }
    let norm = sqrt(sq_part[0]) + pf(3u);
    if (norm <= 0.0) {
        return;
    }
    let factor = pf(2u) / norm;
    for (var i = lid.x; i < n; i += 256u) {
        w0[base + i] = bitcast<u32>(bitcast<f32>(w0[base + i]) * factor);
    }
}
