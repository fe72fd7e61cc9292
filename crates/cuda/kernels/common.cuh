// Shared helpers for every kernel file. All tensors are row-major, contiguous.
#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// GELU(x) = x Φ(x) and its slope Φ(x) + x φ(x), φ(x) = exp(-x²/2) / sqrt(2π);
// normcdff keeps its accuracy in both tails (unlike 1 + erff).
__device__ __forceinline__ float gelu_f(float x) { return x * normcdff(x); }
__device__ __forceinline__ float gelu_grad_f(float x) { return normcdff(x) + x * 0.398942280401432678f * expf(-0.5f * x * x); }

// Activations fused into batch norm (Activation::code in rr-core): 0 none, 1 ReLU, 2 GELU.
#define ACT_RELU 1
#define ACT_GELU 2

// Convolution geometry, passed to kernels by value (mirrors ConvGeo in ops.rs).
struct ConvGeo {
    int n, c, h, w, co, k, s, p, oh, ow;
};
#define CONV_GEO_LOCALS(g)                                                                  \
    const int N = g.n, C = g.c, H = g.h, W = g.w, CO = g.co, K = g.k, S = g.s, P = g.p,   \
              OH = g.oh, OW = g.ow;                                                          \
    (void)N; (void)C; (void)H; (void)W; (void)CO; (void)K; (void)S; (void)P; (void)OH; (void)OW

// Counter-based random numbers: the same integer arithmetic as rr_core::random
// (see random.rs there), so every backend draws the same values.
__device__ __forceinline__ unsigned rr_mix(unsigned x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}
__device__ __forceinline__ unsigned rr_stream_key(unsigned seed, unsigned step, unsigned salt) {
    return rr_mix(rr_mix(rr_mix(seed) ^ step) ^ (salt * 0x9e3779b9u));
}
__device__ __forceinline__ unsigned rr_bits(unsigned key, unsigned i) { return rr_mix(key ^ rr_mix(i)); }
__device__ __forceinline__ float rr_uniform(unsigned key, unsigned i) { return (float)(rr_bits(key, i) >> 8) * (1.0f / 16777216.0f); }
__device__ __forceinline__ float rr_normal(unsigned key, unsigned i) {
    float u1 = (float)((rr_bits(key, 2 * i) >> 8) + 1) * (1.0f / 16777216.0f);
    float u2 = rr_uniform(key, 2 * i + 1);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); the
// result is valid in every thread. `shared` holds 32 doubles.
__device__ __forceinline__ double block_sum_d(double v, double* shared) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    return warp_sum_d(v);
}
