// Batch normalization of a convolution's 16-bit channels-last output, so that
// the conv's output is never widened to fp32 (conv2d_batchnorm in conv_bn.rs):
// x: (N, HW, C) 16-bit (`half` as in precision.cu), read eight channels (16 bytes)
// at a time, C % 8 == 0 and x 16-byte aligned (the host checks); y and dy are
// the BatchNorm's fp32 output and its gradient, (N, C, HW). Each block works on
// 64x64 tiles of (positions, channels) of one sample, transposing the fp32
// tensors through shared memory; `vec` (HW % 4 == 0, y or dy 16-byte aligned)
// moves them four floats at a time. The arithmetic is norm.cu's (a fused ReLU's
// mask from the recomputed z, see bn16_z, where norm.cu reads y). Where the
// model narrows the edge to the next fused op (NarrowEdges in rr-core), y and
// dy are 16-bit channels-last like x instead (`narrow`): no transpose.

#define T16 64

// Loads the (channels, positions) tile [c0, c0 + 64) x [p0, p0 + 64) of the
// fp32 (C, HW) matrix at `src` (one sample's) into `tile`; outside: untouched.
__device__ __forceinline__ void load_tile_nchw(const float* __restrict__ src, float (*tile)[T16 + 1], int c0, int p0, int C, int HW,
                                               int vec) {
    for (int i = threadIdx.x; i < T16 * 16; i += blockDim.x) {
        int r = i / 16, q = (i % 16) * 4;
        if (c0 + r >= C || p0 + q >= HW) continue;
        const float* row = src + (long long)(c0 + r) * HW + p0;
        if (vec) {
            float4 v = *reinterpret_cast<const float4*>(row + q);
            tile[r][q] = v.x, tile[r][q + 1] = v.y, tile[r][q + 2] = v.z, tile[r][q + 3] = v.w;
        } else {
            for (int k = 0; k < 4 && p0 + q + k < HW; k++) tile[r][q + k] = row[q + k];
        }
    }
}

// The eight 16-bit values at `p` (16 bytes), widened.
__device__ __forceinline__ void load8(const unsigned short* __restrict__ p, int half, float (&v)[8]) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = f16_to_32((unsigned short)(words[k / 2] >> (16 * (k % 2))), half);
}

// Rounds v to 16 bits and stores it at `p` (16 bytes).
__device__ __forceinline__ void store8(unsigned short* __restrict__ p, const float (&v)[8], int half) {
    unsigned words[4];
#pragma unroll
    for (int k = 0; k < 8; k += 2) words[k / 2] = pack16x2(v[k], v[k + 1], half);
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
}

// Per-channel constants of a block's 64 channels, in shared memory: rows of
// `sp`. x is the conv's output before its bias (0: none), added on reading, as
// widen_from_nhwc adds it.
#define SP_MEAN 0
#define SP_INVSTD 1
#define SP_GAMMA 2
#define SP_BETA 3
#define SP_BIAS 4
#define SP_MB 5
#define SP_MG 6

// Sums of 8 channels' values held by the threads of a block (tid % 8 picks
// the channels, a[k] and b[k] the two sums of channel 8 (tid % 8) + k) into
// partial[c][s][0..2] for the block's 64 channels from c0. `red`: 8 warps x 2 x 64.
__device__ __forceinline__ void block_channel_sums(double (&a)[8], double (&b)[8], double (*red)[2][T16], double* __restrict__ partial,
                                                   int c0, int C, int s, int S) {
    // Lanes l, l ^ 8 and l ^ 16 hold the same channels: sum them, then the 8 warps.
#pragma unroll
    for (int k = 0; k < 8; k++) {
        for (int o = 8; o < 32; o <<= 1) {
            a[k] += __shfl_xor_sync(0xffffffff, a[k], o);
            b[k] += __shfl_xor_sync(0xffffffff, b[k], o);
        }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane < 8) {
#pragma unroll
        for (int k = 0; k < 8; k++) red[warp][0][8 * lane + k] = a[k], red[warp][1][8 * lane + k] = b[k];
    }
    __syncthreads();
    if (threadIdx.x < T16 && c0 + threadIdx.x < C) {
        double sa = 0.0, sb = 0.0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) sa += red[w][0][threadIdx.x], sb += red[w][1][threadIdx.x];
        long long at = ((long long)(c0 + threadIdx.x) * S + s) * 2;
        partial[at] = sa;
        partial[at + 1] = sb;
    }
}

// xhat = (x + bias - mean) * invstd and z = gamma * xhat + beta, each step
// rounded as written (no contraction into fused multiply-adds), so that the
// backward recomputes exactly the z whose ReLU the forward wrote: a fused
// ReLU's mask comes from z > 0, and y is never read.
__device__ __forceinline__ float bn16_xhat(float v, float bias, float mean, float invstd) {
    return __fmul_rn(__fsub_rn(__fadd_rn(v, bias), mean), invstd);
}
__device__ __forceinline__ float bn16_z(float xhat, float gamma, float beta) { return __fadd_rn(__fmul_rn(gamma, xhat), beta); }

// Phase one of the training statistics (norm.cu's channel_partials mode 0):
// block (t, s) of a (ceil(C/64), S) grid sums x + bias and its square, in
// double, over its share s of the N * HW rows (positions) of x for channels
// [64t, 64t + 64) into partial[c][s][0..2]. Each thread holds 8 channels
// (tid % 8) and every 32nd row from tid / 8, two rows in flight at a time.
extern "C" __global__ void __launch_bounds__(256, 3) bn16_stat_partials(const unsigned short* __restrict__ x, const float* __restrict__ bias,
                                                                     double* __restrict__ partial, long long rows, int C, int half) {
    __shared__ double red[8][2][T16];
    const int c0 = blockIdx.x * T16, s = blockIdx.y, S = gridDim.y;
    const int g = threadIdx.x % 8, r = threadIdx.x / 8, c = c0 + 8 * g;
    const long long r0 = s * rows / S, r1 = (s + 1) * rows / S;
    double a[8], b[8];
    float bk[8];
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] = b[k] = 0.0, bk[k] = bias && c < C ? bias[c + k] : 0.0f;
    if (c < C) {
        for (long long row = r0 + r; row < r1; row += 2 * 32) {
            float v[2][8];
#pragma unroll
            for (int u = 0; u < 2; u++) {
                if (row + 32 * u < r1) {
                    load8(x + (row + 32 * u) * C + c, half, v[u]);
                } else {
#pragma unroll
                    for (int k = 0; k < 8; k++) v[u][k] = -bk[k];  // adds 0 below
                }
            }
#pragma unroll
            for (int u = 0; u < 2; u++) {
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    double d = v[u][k] + bk[k];
                    a[k] += d;
                    b[k] += d * d;
                }
            }
        }
    }
    block_channel_sums(a, b, red, partial, c0, C, s, S);
}

// Phase one of the gradient sums (norm.cu's channel_partials mode 1): block
// (t, s) of a (ceil(C/64), S) grid sums dy' and dy' * xhat (dy' = bn_dz of the
// fused activation) for channels [64t, 64t + 64) over its share s of the
// N * ceil(HW/64) tiles of 64 positions, into partial[c][s][0..2]. dy comes
// through shared memory (transposed); each thread holds 8 channels
// (tid % 8) at two positions of each tile (tid / 8 and tid / 8 + 32), summing
// its few values in float, the rest in double.
extern "C" __global__ void __launch_bounds__(256) bn16_grad_partials(const unsigned short* __restrict__ x, const float* __restrict__ bias,
                                                                     const float* __restrict__ dy,
                                                                     const float* __restrict__ saved, const float* __restrict__ params,
                                                                     double* __restrict__ partial, int N, int C, int HW, int act,
                                                                     int half, int vec) {
    __shared__ float dy_t[T16][T16 + 1];
    __shared__ float sp[5][T16];
    __shared__ double red[8][2][T16];
    const int c0 = blockIdx.x * T16, s = blockIdx.y, S = gridDim.y;
    const int g = threadIdx.x % 8, r = threadIdx.x / 8;
    const int tiles = (HW + T16 - 1) / T16;
    const long long items = (long long)N * tiles;
    const long long i0 = s * items / S, i1 = (s + 1) * items / S;
    if (threadIdx.x < T16) {
        int c = c0 + threadIdx.x;
        bool on = c < C;
        sp[SP_MEAN][threadIdx.x] = on ? saved[c] : 0.0f;
        sp[SP_INVSTD][threadIdx.x] = on ? saved[C + c] : 0.0f;
        sp[SP_GAMMA][threadIdx.x] = on ? params[c] : 0.0f;
        sp[SP_BETA][threadIdx.x] = on ? params[C + c] : 0.0f;
        sp[SP_BIAS][threadIdx.x] = bias && on ? bias[c] : 0.0f;
    }
    float fa[8], fb[8];
#pragma unroll
    for (int k = 0; k < 8; k++) fa[k] = fb[k] = 0.0f;
    const bool lane_on = c0 + 8 * g < C;
    for (long long it = i0; it < i1; it++) {
        const int n = (int)(it / tiles), p0 = (int)(it % tiles) * T16;
        // This tile's x first (it does not wait for the tiles below).
        float v[2][8];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int q = r + 32 * h;
            if (lane_on && p0 + q < HW) load8(x + ((long long)n * HW + p0 + q) * C + c0 + 8 * g, half, v[h]);
        }
        __syncthreads();  // the previous tile's readers are done
        load_tile_nchw(dy + (long long)n * C * HW, dy_t, c0, p0, C, HW, vec);
        __syncthreads();
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int q = r + 32 * h;
            if (!lane_on || p0 + q >= HW) continue;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int cl = 8 * g + k;
                const float gamma = sp[SP_GAMMA][cl], beta = sp[SP_BETA][cl];
                float xhat = bn16_xhat(v[h][k], sp[SP_BIAS][cl], sp[SP_MEAN][cl], sp[SP_INVSTD][cl]);
                float d = bn_dz(act, act == ACT_RELU ? bn16_z(xhat, gamma, beta) : 0.0f, dy_t[cl][q], xhat, gamma, beta);
                fa[k] += d;
                fb[k] += d * xhat;
            }
        }
    }
    double a[8], b[8];
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] = fa[k], b[k] = fb[k];
    block_channel_sums(a, b, red, partial, c0, C, s, S);
}

// bn16_grad_partials for a narrow dy, (N, HW, C) 16-bit like x: rows (positions)
// as bn16_stat_partials reads them, two in flight, no tiles; each thread sums
// its values in float, the block in double.
extern "C" __global__ void __launch_bounds__(256, 3) bn16_grad_partials_nhwc(const unsigned short* __restrict__ x,
                                                                          const float* __restrict__ bias,
                                                                          const unsigned short* __restrict__ dy,
                                                                          const float* __restrict__ saved,
                                                                          const float* __restrict__ params, double* __restrict__ partial,
                                                                          long long rows, int C, int act, int half) {
    __shared__ double red[8][2][T16];
    __shared__ float sp[5][T16];
    const int c0 = blockIdx.x * T16, s = blockIdx.y, S = gridDim.y;
    const int g = threadIdx.x % 8, r = threadIdx.x / 8, c = c0 + 8 * g;
    const long long r0 = s * rows / S, r1 = (s + 1) * rows / S;
    if (threadIdx.x < T16) {
        const int ct = c0 + threadIdx.x;
        const bool on = ct < C;
        sp[SP_MEAN][threadIdx.x] = on ? saved[ct] : 0.0f;
        sp[SP_INVSTD][threadIdx.x] = on ? saved[C + ct] : 0.0f;
        sp[SP_GAMMA][threadIdx.x] = on ? params[ct] : 0.0f;
        sp[SP_BETA][threadIdx.x] = on ? params[C + ct] : 0.0f;
        sp[SP_BIAS][threadIdx.x] = bias && on ? bias[ct] : 0.0f;
    }
    __syncthreads();
    float fa[8], fb[8];
#pragma unroll
    for (int k = 0; k < 8; k++) fa[k] = fb[k] = 0.0f;
    if (c < C) {
        for (long long row = r0 + r; row < r1; row += 2 * 32) {
            float v[2][8], d[2][8];
            const bool second = row + 32 < r1;
            load8(x + row * C + c, half, v[0]);
            load8(dy + row * C + c, half, d[0]);
            if (second) {
                load8(x + (row + 32) * C + c, half, v[1]);
                load8(dy + (row + 32) * C + c, half, d[1]);
            }
#pragma unroll
            for (int u = 0; u < 2; u++) {
                if (u == 1 && !second) break;
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const int cl = 8 * g + k;
                    const float gamma = sp[SP_GAMMA][cl], beta = sp[SP_BETA][cl];
                    float xhat = bn16_xhat(v[u][k], sp[SP_BIAS][cl], sp[SP_MEAN][cl], sp[SP_INVSTD][cl]);
                    float dz = bn_dz(act, act == ACT_RELU ? bn16_z(xhat, gamma, beta) : 0.0f, d[u][k], xhat, gamma, beta);
                    fa[k] += dz;
                    fb[k] += dz * xhat;
                }
            }
        }
    }
    double a[8], b[8];
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] = fa[k], b[k] = fb[k];
    block_channel_sums(a, b, red, partial, c0, C, s, S);
}

// The sums of channel c's S partials, by one warp; valid in lane 0.
__device__ __forceinline__ void partial_sums(const double* __restrict__ partial, int c, int S, double& a, double& b) {
    a = 0.0, b = 0.0;
    for (int s = threadIdx.x % 32; s < S; s += 32) {
        a += partial[((long long)c * S + s) * 2];
        b += partial[((long long)c * S + s) * 2 + 1];
    }
    a = warp_sum_d(a);
    b = warp_sum_d(b);
}

// bn_stats_finish (norm.cu) with a warp per channel, for bn16_partials' many slices.
extern "C" __global__ void bn16_stats_finish(const double* __restrict__ partial, float* running, float* saved, int C, int S, int m,
                                             float eps, float momentum) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (c >= C) return;
    double sum, sumsq;
    partial_sums(partial, c, S, sum, sumsq);
    if (threadIdx.x % 32 != 0) return;
    double mean = sum / m;
    double var = fmax(sumsq / m - mean * mean, 0.0);
    saved[c] = (float)mean;
    saved[C + c] = (float)(1.0 / sqrt(var + (double)eps));
    running[c] = (1.0f - momentum) * running[c] + momentum * (float)mean;
    running[C + c] = (1.0f - momentum) * running[C + c] + momentum * (float)(var * m / (m - 1.0));
}

// channel_partials_finish (norm.cu) mode 1 with a warp per channel: dparams = [dgamma | dbeta].
extern "C" __global__ void bn16_grads_finish(const double* __restrict__ partial, float* __restrict__ dparams, int C, int S) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (c >= C) return;
    double a, b;
    partial_sums(partial, c, S, a, b);
    if (threadIdx.x % 32 != 0) return;
    dparams[c] = (float)b;
    dparams[C + c] = (float)a;
}

// bn_apply (norm.cu) from the 16-bit channels-last x: y (N, C, HW) fp32 =
// act(gamma * (x - mean) * invstd + beta), training with saved [mean | invstd],
// evaluation with running [mean | var]; `narrow`: y (N, HW, C) 16-bit like x.
// Block 256; grid (ceil(HW/64), ceil(C/64), N).
extern "C" __global__ void __launch_bounds__(256) bn16_apply(const unsigned short* __restrict__ x, const float* __restrict__ bias,
                                                             const float* __restrict__ params,
                                                             const float* __restrict__ stats, float* __restrict__ y, int C, int HW,
                                                             float eps, int training, int act, int half, int vec, int narrow) {
    __shared__ float tile[T16][T16 + 1];
    __shared__ float sp[5][T16];
    const long long base = (long long)blockIdx.z * C * HW;
    const int p0 = blockIdx.x * T16, c0 = blockIdx.y * T16;
    if (threadIdx.x < T16 && c0 + threadIdx.x < C) {
        int c = c0 + threadIdx.x;
        sp[SP_MEAN][threadIdx.x] = stats[c];
        sp[SP_INVSTD][threadIdx.x] = training ? stats[C + c] : 1.0f / sqrtf(stats[C + c] + eps);
        sp[SP_GAMMA][threadIdx.x] = params[c];
        sp[SP_BETA][threadIdx.x] = params[C + c];
        sp[SP_BIAS][threadIdx.x] = bias ? bias[c] : 0.0f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < T16 * 8; i += blockDim.x) {
        int g = (i % 8) * 8, q = i / 8;
        if (c0 + g >= C || p0 + q >= HW) continue;
        const long long at = base + (long long)(p0 + q) * C + c0 + g;
        float v[8];
        load8(x + at, half, v);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int cl = g + k;
            float z = bn16_z(bn16_xhat(v[k], sp[SP_BIAS][cl], sp[SP_MEAN][cl], sp[SP_INVSTD][cl]), sp[SP_GAMMA][cl], sp[SP_BETA][cl]);
            v[k] = act == ACT_RELU ? fmaxf(z, 0.0f) : act == ACT_GELU ? gelu_f(z) : z;
            if (!narrow) tile[cl][q] = v[k];
        }
        if (narrow) store8(reinterpret_cast<unsigned short*>(y) + at, v, half);
    }
    if (narrow) return;  // the whole block: no transpose
    __syncthreads();
    for (int i = threadIdx.x; i < T16 * 16; i += blockDim.x) {
        int r = i / 16, q = (i % 16) * 4;
        if (c0 + r >= C || p0 + q >= HW) continue;
        float* row = y + base + (long long)(c0 + r) * HW + p0;
        if (vec) {
            *reinterpret_cast<float4*>(row + q) = make_float4(tile[r][q], tile[r][q + 1], tile[r][q + 2], tile[r][q + 3]);
        } else {
            for (int k = 0; k < 4 && p0 + q + k < HW; k++) row[q + k] = tile[r][q + k];
        }
    }
}

// bn_backward_dx (norm.cu) into the 16-bit channels-last gradient the conv's
// backward reads: dx (N, HW, C) 16-bit = gamma * invstd * (dy' - dbeta / M -
// xhat * dgamma / M), dparams = [dgamma | dbeta] from bn16_grads_finish;
// `narrow`: dy (N, HW, C) 16-bit like x. Block 256; grid (ceil(HW/64), ceil(C/64), N).
extern "C" __global__ void __launch_bounds__(256) bn16_backward_dx(const unsigned short* __restrict__ x, const float* __restrict__ bias,
                                                                   const float* __restrict__ dy, const float* __restrict__ params,
                                                                   const float* __restrict__ saved, const float* __restrict__ dparams,
                                                                   unsigned short* __restrict__ dx, int N, int C, int HW, int act,
                                                                   int half, int vec, int narrow) {
    __shared__ float dy_t[T16][T16 + 1];
    __shared__ float sp[7][T16];
    const int n = blockIdx.z;
    const long long base = (long long)n * C * HW;
    const int p0 = blockIdx.x * T16, c0 = blockIdx.y * T16;
    const double m = (double)N * HW;
    if (threadIdx.x < T16 && c0 + threadIdx.x < C) {
        int c = c0 + threadIdx.x;
        sp[SP_MEAN][threadIdx.x] = saved[c];
        sp[SP_INVSTD][threadIdx.x] = saved[C + c];
        sp[SP_GAMMA][threadIdx.x] = params[c];
        sp[SP_BETA][threadIdx.x] = params[C + c];
        sp[SP_MB][threadIdx.x] = (float)(dparams[C + c] / m);
        sp[SP_MG][threadIdx.x] = (float)(dparams[c] / m);
        sp[SP_BIAS][threadIdx.x] = bias ? bias[c] : 0.0f;
    }
    if (!narrow) load_tile_nchw(dy + base, dy_t, c0, p0, C, HW, vec);
    __syncthreads();
    for (int i = threadIdx.x; i < T16 * 8; i += blockDim.x) {
        int g = (i % 8) * 8, q = i / 8;
        if (c0 + g >= C || p0 + q >= HW) continue;
        const long long at = base + (long long)(p0 + q) * C + c0 + g;
        float v[8], dv[8];
        load8(x + at, half, v);
        if (narrow) {
            load8(reinterpret_cast<const unsigned short*>(dy) + at, half, dv);
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) dv[k] = dy_t[g + k][q];
        }
        unsigned words[4];
#pragma unroll
        for (int k = 0; k < 8; k += 2) {
            float out[2];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int cl = g + k + j;
                const float invstd = sp[SP_INVSTD][cl], gamma = sp[SP_GAMMA][cl];
                float xhat = bn16_xhat(v[k + j], sp[SP_BIAS][cl], sp[SP_MEAN][cl], invstd);
                float d = bn_dz(act, act == ACT_RELU ? bn16_z(xhat, gamma, sp[SP_BETA][cl]) : 0.0f, dv[k + j], xhat, gamma, sp[SP_BETA][cl]);
                out[j] = gamma * invstd * (d - sp[SP_MB][cl] - xhat * sp[SP_MG][cl]);
            }
            words[k / 2] = pack16x2(out[0], out[1], half);
        }
        *reinterpret_cast<uint4*>(dx + at) = make_uint4(words[0], words[1], words[2], words[3]);
    }
}
