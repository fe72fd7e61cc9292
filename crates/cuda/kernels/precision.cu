// Rounding between fp32 and the 16-bit formats tensor cores take, with the
// bias of a convolution fused into the widening pass. Formats are stored as
// unsigned short bit patterns; `half` selects IEEE fp16 (1) or bfloat16 (0).

__device__ __forceinline__ unsigned short f32_to_16(float f, int half) {
    if (half) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float f16_to_32(unsigned short b, int half) {
    if (half) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
        return f;
    }
    return __uint_as_float((unsigned)b << 16);
}

// y[i] = round(x[i] * scale)
extern "C" __global__ void narrow_f32(const float* __restrict__ x, unsigned short* __restrict__ y, int n, float scale, int half) {
    GRID_STRIDE(i, n) y[i] = f32_to_16(x[i] * scale, half);
}

// x: (N, C, HW) 16-bit -> y = x * scale (+ bias[c] when bias is given), fp32
extern "C" __global__ void widen_f32(const unsigned short* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y,
                                     int n, int c, int hw, float scale, int half) {
    GRID_STRIDE(i, n) {
        float v = f16_to_32(x[i], half) * scale;
        if (bias) v += bias[(i / hw) % c];
        y[i] = v;
    }
}

// db[c] = sum over n and hw of dy[n, c, hw]; one block per channel.
// dy: (N, C, HW) -> db: (C)
extern "C" __global__ void channel_sums(const float* __restrict__ dy, float* __restrict__ db, int n, int c, int hw) {
    __shared__ double shared[32];
    int ch = blockIdx.x;
    double acc = 0.0;
    for (int i = threadIdx.x; i < n * hw; i += blockDim.x) acc += dy[((long long)(i / hw) * c + ch) * hw + i % hw];
    acc = block_sum_d(acc, shared);
    if (threadIdx.x == 0) db[ch] = (float)acc;
}
