// Batch gather from u8 images and labels (stored 4 to a word).

fn byte_at(word: u32, index: u32) -> u32 {
    return (word >> (8u * (index % 4u))) & 0xffu;
}

//! kernel gather_batch
// [images (byte offset), labels (byte offset), indices, x, y, n, sample_len, count, plane,
// scale[4], shift[4]]; r0 = images, r1 = labels, r2 = indices, w0 = x, w1 = y. One invocation per
// output pixel (per sample where images have none); element j of a sample is in channel
// j / plane: x = px * scale[c] - shift[c].
@compute @workgroup_size(256)
fn gather_batch(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = pu(5u);
    let len = pu(6u);
    // Images of no pixels still gather their labels: one invocation per sample.
    let per = max(len, 1u);
    let t = flat(gid, groups);
    if (t >= n * per) {
        return;
    }
    let s = t / per;
    let j = t - s * per;
    let idx = r2[pu(2u) + s];
    if (idx >= pu(7u)) {
        return;
    }
    if (j < len) {
        let b = pu(0u) + idx * len + j;
        let px = f32(byte_at(r0[b / 4u], b));
        let c = min(j / pu(8u), 3u);
        w0[pu(3u) + s * len + j] = bitcast<u32>(px * pf(9u + c) - pf(13u + c));
    }
    if (j == 0u) {
        let lb = pu(1u) + idx;
        w1[pu(4u) + s] = byte_at(r1[lb / 4u], lb);
    }
}
