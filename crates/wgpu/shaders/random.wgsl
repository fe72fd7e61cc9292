// Ops that draw random numbers (rng = [seed, step] on the device); mirrors
// rr_core::reference::{dropout_forward, augment_sample, crop_flip_sample}.

//! kernel dropout_forward
// [rng, x, y, mask, n, p, salt, scale]; r0 = rng, r1 = x, w0 = y, w1 = mask. The scale 1/(1-p)
// comes from the host: WGSL's division may be approximate.
@compute @workgroup_size(256)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i >= pu(4u)) {
        return;
    }
    let key = rr_stream_key(r0[pu(0u)], r0[pu(0u) + 1u], pu(6u));
    let p = pf(5u);
    let m = select(0.0, pf(7u), rr_uniform(key, i) >= p);
    w1[pu(3u) + i] = bitcast<u32>(m);
    w0[pu(2u) + i] = bitcast<u32>(bitcast<f32>(r1[pu(1u) + i]) * m);
}

//! kernel augment
// [rng, x, y, n, c, h, w, rotate_rad, scale, translate, elastic, flip, noise, fill, salt];
// r0 = rng, r1 = x, w0 = y; one invocation per output pixel (all channels).
const ELASTIC_GRID: u32 = 3u;

fn aug_u(key: u32, i: u32, j: u32) -> f32 {
    return 2.0 * rr_uniform(key, i * 8u + j) - 1.0;
}

fn elastic_point(key: u32, i: u32, gx: u32, gy: u32, axis: u32) -> f32 {
    let side = ELASTIC_GRID + 1u;
    return pf(10u) * (2.0 * rr_uniform(key, (i * side * side + gy * side + gx) * 2u + axis) - 1.0);
}

fn pixel_or_fill(base: u32, h: u32, w: u32, x: f32, y: f32) -> f32 {
    if (x >= 0.0 && y >= 0.0 && x < f32(w) && y < f32(h)) {
        return bitcast<f32>(r1[base + u32(y) * w + u32(x)]);
    }
    return pf(13u);
}

@compute @workgroup_size(256)
fn augment(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = pu(3u); let c = pu(4u); let h = pu(5u); let w = pu(6u);
    let hw = h * w;
    let t = flat(gid, groups);
    if (t >= n * hw) {
        return;
    }
    let key = rr_stream_key(r0[pu(0u)], r0[pu(0u) + 1u], pu(14u));
    let ekey = rr_mix(key ^ 1u);
    let nkey = rr_mix(key ^ 2u);
    let i = t / hw;
    let p = t - i * hw;
    let oy = p / w;
    let ox = p - oy * w;
    let flip = pu(11u) != 0u && aug_u(key, i, 4u) < 0.0;
    let angle = aug_u(key, i, 0u) * pf(7u);
    let scale = 1.0 + aug_u(key, i, 1u) * pf(8u);
    let tx = aug_u(key, i, 2u) * pf(9u) * f32(w);
    let ty = aug_u(key, i, 3u) * pf(9u) * f32(h);
    let sn = sin(angle);
    let cs = cos(angle);
    let cx = (f32(w) - 1.0) * 0.5;
    let cy = (f32(h) - 1.0) * 0.5;
    var ex = 0.0;
    var ey = 0.0;
    if (pf(10u) != 0.0) {
        let fx = f32(ox) * f32(ELASTIC_GRID) / f32(max(w, 2u) - 1u);
        let fy = f32(oy) * f32(ELASTIC_GRID) / f32(max(h, 2u) - 1u);
        let gx = min(u32(fx), ELASTIC_GRID - 1u);
        let gy = min(u32(fy), ELASTIC_GRID - 1u);
        let u = fx - f32(gx);
        let v = fy - f32(gy);
        let top0 = (1.0 - u) * elastic_point(ekey, i, gx, gy, 0u) + u * elastic_point(ekey, i, gx + 1u, gy, 0u);
        let bot0 = (1.0 - u) * elastic_point(ekey, i, gx, gy + 1u, 0u) + u * elastic_point(ekey, i, gx + 1u, gy + 1u, 0u);
        ex = (1.0 - v) * top0 + v * bot0;
        let top1 = (1.0 - u) * elastic_point(ekey, i, gx, gy, 1u) + u * elastic_point(ekey, i, gx + 1u, gy, 1u);
        let bot1 = (1.0 - u) * elastic_point(ekey, i, gx, gy + 1u, 1u) + u * elastic_point(ekey, i, gx + 1u, gy + 1u, 1u);
        ey = (1.0 - v) * top1 + v * bot1;
    }
    let px = f32(ox) + ex - cx - tx;
    let py = f32(oy) + ey - cy - ty;
    var sx = (cs * px + sn * py) / scale + cx;
    let sy = (-sn * px + cs * py) / scale + cy;
    if (flip) {
        sx = f32(w) - 1.0 - sx;
    }
    let x0 = floor(sx);
    let y0 = floor(sy);
    let fx = sx - x0;
    let fy = sy - y0;
    for (var ch = 0u; ch < c; ch++) {
        let base = pu(1u) + (i * c + ch) * hw;
        let top = (1.0 - fx) * pixel_or_fill(base, h, w, x0, y0) + fx * pixel_or_fill(base, h, w, x0 + 1.0, y0);
        let bottom = (1.0 - fx) * pixel_or_fill(base, h, w, x0, y0 + 1.0) + fx * pixel_or_fill(base, h, w, x0 + 1.0, y0 + 1.0);
        var val = (1.0 - fy) * top + fy * bottom;
        let o = ch * hw + p;
        if (pf(12u) > 0.0) {
            val += pf(12u) * rr_normal(nkey, i * c * hw + o);
        }
        w0[pu(2u) + i * c * hw + o] = bitcast<u32>(val);
    }
}

//! kernel crop_flip
// [rng, x, y, n, c, h, w, pad, reflect, flip mode, cutout, salt, steps per epoch, fixed, fixed dy,
// fixed dx]; r0 = rng, r1 = x, w0 = y; one invocation per output pixel (all channels). Sample i's
// draws are CropSpec::params': draws i * 8 + 0..5 of the stream (dy, dx, flip, cutout row, cutout
// column), the offsets fixed ones instead where `fixed` is set; values are copied as bits.
// Flip modes (Flip::kernel_args): 0 off, 1 random (draw 2), 2 on odd epochs (step / steps per
// epoch, step = rng[1]), 3 always.
fn crop_flips(key: u32, i: u32, step: u32) -> bool {
    let mode = pu(9u);
    if (mode == 1u) {
        return rr_uniform(key, i * 8u + 2u) < 0.5;
    }
    if (mode == 2u) {
        return (step / pu(12u)) % 2u == 1u;
    }
    return mode == 3u;
}

// An integer in 0..m from draw j of sample i: min(floor(u * m), m - 1) (exact in f32; m >= 1).
fn crop_int(key: u32, i: u32, j: u32, m: u32) -> u32 {
    return min(u32(rr_uniform(key, i * 8u + j) * f32(m)), m - 1u);
}

// The source coordinate of output coordinate o shifted by shift - pad in a side of len pixels,
// or -1 where zero padding reads 0 (reference::crop_source; reflect has pad < len: one fold).
fn crop_source(o: u32, shift: u32, pad: u32, len: u32, reflect: bool) -> i32 {
    let i = i32(o + shift) - i32(pad);
    let n = i32(len);
    if (i >= 0 && i < n) {
        return i;
    }
    if (!reflect) {
        return -1;
    }
    return select(2 * (n - 1) - i, -i, i < 0);
}

@compute @workgroup_size(256)
fn crop_flip(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = pu(3u); let c = pu(4u); let h = pu(5u); let w = pu(6u);
    let pad = pu(7u); let reflect = pu(8u) != 0u; let cutout = pu(10u);
    let hw = h * w;
    let t = flat(gid, groups);
    if (t >= n * hw) {
        return;
    }
    let key = rr_stream_key(r0[pu(0u)], r0[pu(0u) + 1u], pu(11u));
    let i = t / hw;
    let p = t - i * hw;
    let row = p / w;
    let col = p - row * w;
    let shifts = 2u * pad + 1u;
    var dy = crop_int(key, i, 0u, shifts);
    var dx = crop_int(key, i, 1u, shifts);
    if (pu(13u) != 0u) {
        dy = pu(14u);
        dx = pu(15u);
    }
    let flip = crop_flips(key, i, r0[pu(0u) + 1u]);
    let sx = select(col, w - 1u - col, flip);
    // The cutout square is placed on the output (after the flip), as the reference does.
    var in_cut = false;
    if (cutout > 0u) {
        let cut_y = i32(crop_int(key, i, 3u, h)) - i32(cutout / 2u);
        let cut_x = i32(crop_int(key, i, 4u, w)) - i32(cutout / 2u);
        let k = i32(cutout);
        in_cut = i32(row) >= cut_y && i32(row) < cut_y + k && i32(col) >= cut_x && i32(col) < cut_x + k;
    }
    let src_y = crop_source(row, dy, pad, h, reflect);
    let src_x = crop_source(sx, dx, pad, w, reflect);
    let read = !in_cut && src_y >= 0 && src_x >= 0;
    let src = pu(1u) + i * c * hw + u32(src_y) * w + u32(src_x);
    let dst = pu(2u) + i * c * hw + p;
    for (var ch = 0u; ch < c; ch++) {
        var v = 0u;
        if (read) {
            v = r1[src + ch * hw];
        }
        w0[dst + ch * hw] = v;
    }
}
