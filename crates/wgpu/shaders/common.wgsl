// Shared by every kernel. Each kernel is compiled on its own with a generated
// header that declares its buffers: `p` (uniform parameters, 32 words), then
// `r0, r1, ...` (read-only) and `w0, w1, ...` (read-write), all array<u32>:
// f32 data is read and written through bitcast.

struct Params {
    w: array<vec4<u32>, 8>,
}

fn pu(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

fn pf(i: u32) -> f32 {
    return bitcast<f32>(pu(i));
}

// The flat index of an invocation of a 1-D kernel of 256-wide workgroups
// dispatched as a 2-D grid (more than 65535 workgroups).
fn flat(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// Counter-based random numbers: the same integer arithmetic as rr_core::random.
fn rr_mix(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    return x ^ (x >> 16u);
}

fn rr_stream_key(seed: u32, step: u32, salt: u32) -> u32 {
    return rr_mix(rr_mix(rr_mix(seed) ^ step) ^ (salt * 0x9e3779b9u));
}

fn rr_bits(key: u32, i: u32) -> u32 {
    return rr_mix(key ^ rr_mix(i));
}

fn rr_uniform(key: u32, i: u32) -> f32 {
    return f32(rr_bits(key, i) >> 8u) * (1.0 / 16777216.0);
}

fn rr_normal(key: u32, i: u32) -> f32 {
    let u1 = f32((rr_bits(key, 2u * i) >> 8u) + 1u) * (1.0 / 16777216.0);
    let u2 = rr_uniform(key, 2u * i + 1u);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
