// Shared helpers for every kernel file. All tensors are row-major, contiguous.
#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// Convolution geometry, passed to kernels by value (mirrors ConvGeo in ops.rs).
struct ConvGeo {
    int n, c, h, w, co, k, s, p, oh, ow;
};
#define CONV_GEO_LOCALS(g)                                                                  \
    const int N = g.n, C = g.c, H = g.h, W = g.w, CO = g.co, K = g.k, S = g.s, P = g.p,   \
              OH = g.oh, OW = g.ow;                                                          \
    (void)N; (void)C; (void)H; (void)W; (void)CO; (void)K; (void)S; (void)P; (void)OH; (void)OW
