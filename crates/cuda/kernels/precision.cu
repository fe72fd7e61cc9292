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

// The same roundings with a layout change, for tensor cores' channels-last
// convolutions: each of the N matrices (C, HW) is transposed to (HW, C) through
// a 32x32 tile in shared memory, so both reads and writes are coalesced.
// Block (32, 8); grid (ceil(HW/32), ceil(C/32), N).
// x: (N, C, HW) fp32 -> y: (N, HW, C) 16-bit
extern "C" __global__ void narrow_to_nhwc(const float* __restrict__ x, unsigned short* __restrict__ y, int c, int hw, int half) {
    __shared__ float tile[32][33];
    long long base = (long long)blockIdx.z * c * hw;
    int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int ch = c0 + j, p = p0 + threadIdx.x;
        if (ch < c && p < hw) tile[j][threadIdx.x] = x[base + (long long)ch * hw + p];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int p = p0 + j, ch = c0 + threadIdx.x;
        if (ch < c && p < hw) y[base + (long long)p * c + ch] = f32_to_16(tile[threadIdx.x][j], half);
    }
}

// x: (N, HW, C) 16-bit -> y: (N, C, HW) fp32, plus bias[c] when given.
extern "C" __global__ void widen_from_nhwc(const unsigned short* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y,
                                          int c, int hw, int half) {
    __shared__ float tile[32][33];
    long long base = (long long)blockIdx.z * c * hw;
    int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int p = p0 + j, ch = c0 + threadIdx.x;
        if (ch < c && p < hw) tile[j][threadIdx.x] = f16_to_32(x[base + (long long)p * c + ch], half);
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int ch = c0 + j, p = p0 + threadIdx.x;
        if (ch < c && p < hw) y[base + (long long)ch * hw + p] = tile[threadIdx.x][j] + (bias ? bias[ch] : 0.0f);
    }
}
