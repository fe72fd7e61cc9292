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

// erfc(z) for z >= 0: Numerical Recipes' erfcc (Press et al., Numerical Recipes
// in C, 2nd ed., section 6.2), a Chebyshev fit with fractional error below
// 1.2e-7 everywhere (WGSL has no erf). Evaluated in f32 it stays within 3e-7 of
// Φ below; unlike 1 + erf it keeps its relative accuracy in the tail.
fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = 1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807
        + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))));
    return t * exp(-z * z - 1.26551223 + t * poly);
}

// Φ(x), the standard normal CDF: 0.5 erfc(-x / sqrt 2).
fn normal_cdf(x: f32) -> f32 {
    let tail = 0.5 * erfc_nonneg(abs(x) * 0.70710678118654752);
    return select(1.0 - tail, tail, x < 0.0);
}

// GELU(x) = x Φ(x) (elementwise, and fused into batch norm).
fn gelu(x: f32) -> f32 {
    return x * normal_cdf(x);
}

// GELU'(x) = Φ(x) + x φ(x), φ(x) = exp(-x²/2) / sqrt(2π).
fn gelu_grad(x: f32) -> f32 {
    return normal_cdf(x) + x * 0.39894228040143268 * exp(-0.5 * x * x);
}
