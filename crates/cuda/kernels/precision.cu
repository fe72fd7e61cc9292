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

// x: (N, HW, C) 16-bit -> y: (N, C, HW) fp32, plus bias[c] when given; with
// `add`, added into y (a gradient summed over a tensor's readers).
extern "C" __global__ void widen_from_nhwc(const unsigned short* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y,
                                          int c, int hw, int half, int add) {
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
        if (ch >= c || p >= hw) continue;
        float v = tile[threadIdx.x][j] + (bias ? bias[ch] : 0.0f);
        long long o = base + (long long)ch * hw + p;
        y[o] = add ? y[o] + v : v;
    }
}

// A max pool over non-overlapping KxK windows read straight from a 16-bit
// channels-last conv output (so the conv's output is never widened to fp32):
// x: (N, H, W, C) 16-bit, plus bias[c] -> y: (N, C, OH, OW) fp32, argmax: the
// flat NCHW index into x, as maxpool_forward writes it (same window order and
// ties, so the two paths agree bit for bit). Each 32x32 tile of (positions,
// channels) is reduced with reads coalesced over channels, then written
// coalesced over positions. Block (32, 8); grid (ceil(OH*OW/32), ceil(C/32), N).
extern "C" __global__ void maxpool_from_nhwc16(const unsigned short* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y,
                                               unsigned* __restrict__ argmax, int c, int h, int w, int k, int oh, int ow, int relu,
                                               int half) {
    __shared__ float best_v[32][33];
    __shared__ unsigned best_i[32][33];
    int n = blockIdx.z, ohw = oh * ow;
    int q0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    long long in_base = (long long)n * h * w * c;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int q = q0 + j, ch = c0 + threadIdx.x;
        if (ch >= c || q >= ohw) continue;
        int oy = q / ow, ox = q % ow;
        float b = bias ? bias[ch] : 0.0f, best = -INFINITY;
        int best_at = -1;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * k + ky;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * k + kx;
                float v = f16_to_32(x[in_base + ((long long)iy * w + ix) * c + ch], half) + b;
                int at = (iy * w + ix);
                if (v > best || best_at < 0) { best = v; best_at = at; }
            }
        }
        unsigned flat = (unsigned)(((long long)n * c + ch) * h * w + best_at);
        if (relu && !(best > 0.0f)) { best = 0.0f; flat = 0xffffffffu; }
        best_v[j][threadIdx.x] = best;
        best_i[j][threadIdx.x] = flat;
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int ch = c0 + j, q = q0 + threadIdx.x;
        if (ch >= c || q >= ohw) continue;
        long long o = ((long long)n * c + ch) * ohw + q;
        y[o] = best_v[threadIdx.x][j];
        argmax[o] = best_i[threadIdx.x][j];
    }
}

// The gradient of that pool, written as the 16-bit channels-last dy of the conv:
// dy: (N, C, OH, OW) fp32 and argmax -> dx: (N, H, W, C) 16-bit, dx = dy[o] where
// argmax[o] is this element, else 0 (maxpool_backward_tiled, then narrow_to_nhwc).
// Block (32, 8); grid (ceil(H*W/32), ceil(C/32), N).
extern "C" __global__ void maxpool_backward_to_nhwc16(const float* __restrict__ dy, const unsigned* __restrict__ argmax,
                                                      unsigned short* __restrict__ dx, int c, int h, int w, int k, int oh, int ow,
                                                      int half) {
    __shared__ float tile[32][33];
    int n = blockIdx.z, hw = h * w;
    int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int ch = c0 + j, p = p0 + threadIdx.x;
        if (ch >= c || p >= hw) continue;
        int oy = (p / w) / k, ox = (p % w) / k;
        float v = 0.0f;
        if (oy < oh && ox < ow) {
            long long plane = (long long)n * c + ch;
            long long o = plane * oh * ow + (long long)oy * ow + ox;
            if (argmax[o] == (unsigned)(plane * hw + p)) v = dy[o];
        }
        tile[j][threadIdx.x] = v;
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int p = p0 + j, ch = c0 + threadIdx.x;
        if (ch < c && p < hw) dx[(long long)n * hw * c + (long long)p * c + ch] = f32_to_16(tile[threadIdx.x][j], half);
    }
}

// The operands cuDNN gets for convolutions it runs slowly as they are (see cudnn_geom in
// conv_dnn.rs): a 1x1 convolution of stride S without padding reads only x[.., oy*S, ox*S], so
// it runs as the stride-1 1x1 convolution of that subsample; a channel count that is not a
// multiple of 8 (the RGB stem) is padded with zero channels to CP, the alignment tensor cores need.
// x: (N, C, H, W) fp32 -> y: (N, OH*OW, CP) 16-bit, y[q = oy*OW + ox][ch] = x[ch][oy*S][ox*S]
// (0 for ch >= C). S = 1, OH = H, OW = W: only the padding. Block (32, 8); grid
// (ceil(OH*OW/32), ceil(CP/32), N).
extern "C" __global__ void narrow_to_nhwc_strided(const float* __restrict__ x, unsigned short* __restrict__ y, int c, int cp, int h,
                                                  int w, int s, int oh, int ow, int half) {
    __shared__ float tile[32][33];
    int n = blockIdx.z, ohw = oh * ow;
    int q0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int ch = c0 + j, q = q0 + threadIdx.x;
        if (ch < cp && q < ohw)
            tile[j][threadIdx.x] = ch < c ? x[((long long)n * c + ch) * h * w + (long long)(q / ow) * s * w + (q % ow) * s] : 0.0f;
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int q = q0 + j, ch = c0 + threadIdx.x;
        if (ch < cp && q < ohw) y[((long long)n * ohw + q) * cp + ch] = f32_to_16(tile[threadIdx.x][j], half);
    }
}

// Back from those operands: src: (N, OH*OW, CP) 16-bit -> dst: (N, C, H, W) fp32, the value at
// (oy*S, ox*S) and 0 everywhere else (every element of dst is written; padding channels dropped);
// with `add`, the values are added into dst, which is left alone everywhere else.
// Block (32, 8); grid (ceil(H*W/32), ceil(C/32), N).
extern "C" __global__ void widen_to_nchw_strided(const unsigned short* __restrict__ src, float* __restrict__ dst, int c, int cp, int h,
                                                 int w, int s, int oh, int ow, int half, int add) {
    __shared__ bool taken[32][33];
    __shared__ float tile[32][33];
    int n = blockIdx.z, hw = h * w;
    int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int p = p0 + j, ch = c0 + threadIdx.x;
        if (ch >= c || p >= hw) continue;
        int iy = p / w, ix = p % w;
        bool sampled = iy % s == 0 && ix % s == 0 && iy / s < oh && ix / s < ow;
        long long q = (long long)(iy / s) * ow + ix / s;
        tile[j][threadIdx.x] = sampled ? f16_to_32(src[((long long)n * oh * ow + q) * cp + ch], half) : 0.0f;
        taken[j][threadIdx.x] = sampled;
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int ch = c0 + j, p = p0 + threadIdx.x;
        if (ch >= c || p >= hw) continue;
        long long o = ((long long)n * c + ch) * hw + p;
        if (!add) {
            dst[o] = tile[threadIdx.x][j];
        } else if (taken[threadIdx.x][j]) {
            dst[o] += tile[threadIdx.x][j];
        }
    }
}

// narrow_to_nhwc and widen_from_nhwc with 16-byte accesses (four floats along positions, eight
// 16-bit values along channels) through a 64x64 tile, for C % 8 == 0, HW % 4 == 0 and 16-byte
// aligned tensors (the host checks); the same roundings, bit for bit. Block 256; grid
// (ceil(HW/64), ceil(C/64), N).
__device__ __forceinline__ unsigned pack16x2(float lo, float hi, int half) {
    return (unsigned)f32_to_16(lo, half) | ((unsigned)f32_to_16(hi, half) << 16);
}

// x: (N, C, HW) fp32 -> y: (N, HW, C) 16-bit
extern "C" __global__ void narrow_to_nhwc_x8(const float* __restrict__ x, unsigned short* __restrict__ y, int c, int hw, int half) {
    __shared__ float tile[64][65];
    long long base = (long long)blockIdx.z * c * hw;
    int p0 = blockIdx.x * 64, c0 = blockIdx.y * 64;
    for (int i = threadIdx.x; i < 64 * 16; i += blockDim.x) {
        int r = i / 16, q = (i % 16) * 4;
        if (c0 + r < c && p0 + q < hw) {
            float4 v = *reinterpret_cast<const float4*>(x + base + (long long)(c0 + r) * hw + p0 + q);
            tile[r][q] = v.x;
            tile[r][q + 1] = v.y;
            tile[r][q + 2] = v.z;
            tile[r][q + 3] = v.w;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 64 * 8; i += blockDim.x) {
        int g = (i % 8) * 8, q = i / 8;
        if (c0 + g < c && p0 + q < hw) {
            uint4 v;
            v.x = pack16x2(tile[g][q], tile[g + 1][q], half);
            v.y = pack16x2(tile[g + 2][q], tile[g + 3][q], half);
            v.z = pack16x2(tile[g + 4][q], tile[g + 5][q], half);
            v.w = pack16x2(tile[g + 6][q], tile[g + 7][q], half);
            *reinterpret_cast<uint4*>(y + base + (long long)(p0 + q) * c + c0 + g) = v;
        }
    }
}

// x: (N, HW, C) 16-bit -> y: (N, C, HW) fp32, plus bias[c] when given; with `add`, added into y.
extern "C" __global__ void widen_from_nhwc_x8(const unsigned short* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y,
                                             int c, int hw, int half, int add) {
    __shared__ float tile[64][65];
    long long base = (long long)blockIdx.z * c * hw;
    int p0 = blockIdx.x * 64, c0 = blockIdx.y * 64;
    for (int i = threadIdx.x; i < 64 * 8; i += blockDim.x) {
        int g = (i % 8) * 8, q = i / 8;
        if (c0 + g < c && p0 + q < hw) {
            uint4 v = *reinterpret_cast<const uint4*>(x + base + (long long)(p0 + q) * c + c0 + g);
            unsigned words[4] = {v.x, v.y, v.z, v.w};
            for (int k = 0; k < 8; k++) {
                unsigned short h = (unsigned short)(words[k / 2] >> (16 * (k % 2)));
                tile[g + k][q] = f16_to_32(h, half) + (bias ? bias[c0 + g + k] : 0.0f);
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 64 * 16; i += blockDim.x) {
        int r = i / 16, q = (i % 16) * 4;
        if (c0 + r < c && p0 + q < hw) {
            float4 v = make_float4(tile[r][q], tile[r][q + 1], tile[r][q + 2], tile[r][q + 3]);
            float4* out = reinterpret_cast<float4*>(y + base + (long long)(c0 + r) * hw + p0 + q);
            if (add) {
                float4 o = *out;
                v.x += o.x, v.y += o.y, v.z += o.z, v.w += o.w;
            }
            *out = v;
        }
    }
}
