// Convolution: a direct kernel for the forward pass (bias and ReLU fused);
// backward by per-sample column matrices and batched GEMMs (cuBLAS).

// Per-sample column matrices with a row of ones appended:
// cols[n, r, p] with r = (c*K + ky)*K + kx < C*K*K, and cols[n, C*K*K, p] = 1,
// p = oy*OW + ox. The ones row makes one batched GEMM produce the bias
// gradient beside the weight gradient. Grid: (p blocks, r, n).
extern "C" __global__ void im2col_ones(const float* __restrict__ x, float* __restrict__ cols, ConvGeo g) {
    CONV_GEO_LOCALS(g);
    int ohw = OH * OW, rows = C * K * K + 1;
    int p = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y, n = blockIdx.z;
    if (p >= ohw) return;
    float v = 1.0f;
    if (r < rows - 1) {
        int oy = p / OW, ox = p - oy * OW;
        int kx = r % K, ky = (r / K) % K, c = r / (K * K);
        int iy = oy * S + ky - P, ix = ox * S + kx - P;
        v = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((n * C + c) * H + iy) * W + ix] : 0.0f;
    }
    cols[((long long)n * rows + r) * ohw + p] = v;
}

// dx[n, c, iy, ix] = sum of dcols[n, r, p] over the (ky, kx, oy, ox) that read it
// (gather, no atomics). dcols has the per-sample stride of im2col_ones.
// Grid: (pixel blocks, c, n).
extern "C" __global__ void col2im(const float* __restrict__ dcols, float* __restrict__ dx, ConvGeo g) {
    CONV_GEO_LOCALS(g);
    int ohw = OH * OW;
    int q = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y, n = blockIdx.z;
    if (q >= H * W) return;
    int iy = q / W, ix = q - iy * W;
    const float* d = dcols + (long long)n * (C * K * K + 1) * ohw + (long long)c * K * K * ohw;
    float acc = 0.0f;
    for (int ky = 0; ky < K; ky++) {
        int ty = iy + P - ky;
        if (ty < 0 || ty % S != 0) continue;
        int oy = ty / S;
        if (oy >= OH) continue;
        for (int kx = 0; kx < K; kx++) {
            int tx = ix + P - kx;
            if (tx < 0 || tx % S != 0) continue;
            int ox = tx / S;
            if (ox >= OW) continue;
            acc += d[(ky * K + kx) * ohw + oy * OW + ox];
        }
    }
    dx[((long long)(n * C + c)) * H * W + q] = acc;
}

// Sums the per-sample [dW | db] blocks (N, CO, R) with R = C*K*K + 1 into
// dparams = [dW (CO, R-1) | db (CO)]. One warp per output; lanes split the batch.
extern "C" __global__ void conv_grad_reduce(const float* __restrict__ partial, float* __restrict__ dparams, int N, int CO, int R) {
    int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (i >= CO * R) return;
    float acc = 0.0f;
    for (int n = lane; n < N; n += 32) acc += partial[(long long)n * CO * R + i];
    acc = warp_sum(acc);
    int co = i / R, r = i % R;
    if (lane == 0) dparams[r < R - 1 ? co * (R - 1) + r : CO * (R - 1) + co] = acc;
}

// Direct convolution for the forward pass: one thread per output element,
// bias (and optionally ReLU) fused. At LeNet's sizes this beats im2col + GEMM:
// no column matrix to write and read back, and one launch instead of three.
// x: (N, C, H, W), w: (CO, C, K, K), b: (CO) -> y: (N, CO, OH, OW)
extern "C" __global__ void conv2d_direct(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                         float* __restrict__ y, ConvGeo g, int relu) {
    CONV_GEO_LOCALS(g);
    GRID_STRIDE(i, N * CO * OH * OW) {
        int ox = i % OW, oy = (i / OW) % OH, co = (i / (OW * OH)) % CO, n = i / (OW * OH * CO);
        float acc = b[co];
        const float* wc = w + co * C * K * K;
        for (int c = 0; c < C; c++) {
            const float* xp = x + (n * C + c) * H * W;
            const float* wk = wc + c * K * K;
            for (int ky = 0; ky < K; ky++) {
                int iy = oy * S + ky - P;
                if (iy < 0 || iy >= H) continue;
                for (int kx = 0; kx < K; kx++) {
                    int ix = ox * S + kx - P;
                    if (ix < 0 || ix >= W) continue;
                    acc = fmaf(xp[iy * W + ix], wk[ky * K + kx], acc);
                }
            }
        }
        y[i] = relu ? fmaxf(acc, 0.0f) : acc;
    }
}

// Forward convolution with the weights in shared memory and CPT output
// channels per thread, so each input value is read once per group of
// channels. Shared memory: CO*C*K*K + CO floats (the caller checks it fits).
#define CPT 8
extern "C" __global__ void conv2d_forward_smem(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                               float* __restrict__ y, ConvGeo g, int relu) {
    CONV_GEO_LOCALS(g);
    extern __shared__ float ws[];
    int wl = CO * C * K * K;
    for (int i = threadIdx.x; i < wl; i += blockDim.x) ws[i] = w[i];
    for (int i = threadIdx.x; i < CO; i += blockDim.x) ws[wl + i] = b[i];
    __syncthreads();
    int groups = (CO + CPT - 1) / CPT, ohw = OH * OW, kk = K * K;
    int total = N * groups * ohw;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += blockDim.x * gridDim.x) {
        int p = t % ohw, gi = (t / ohw) % groups, n = t / (ohw * groups);
        int oy = p / OW, ox = p - oy * OW, co0 = gi * CPT;
        float acc[CPT];
#pragma unroll
        for (int j = 0; j < CPT; j++) acc[j] = co0 + j < CO ? ws[wl + co0 + j] : 0.0f;
        for (int c = 0; c < C; c++) {
            const float* xp = x + (long long)(n * C + c) * H * W;
            for (int ky = 0; ky < K; ky++) {
                int iy = oy * S + ky - P;
                if (iy < 0 || iy >= H) continue;
                for (int kx = 0; kx < K; kx++) {
                    int ix = ox * S + kx - P;
                    if (ix < 0 || ix >= W) continue;
                    float xv = xp[iy * W + ix];
                    const float* wk = ws + (co0 * C + c) * kk + ky * K + kx;
#pragma unroll
                    for (int j = 0; j < CPT; j++)
                        if (co0 + j < CO) acc[j] = fmaf(xv, wk[j * C * kk], acc[j]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < CPT; j++)
            if (co0 + j < CO) {
                float v = acc[j];
                y[((long long)(n * CO + co0 + j) * OH + oy) * OW + ox] = relu ? fmaxf(v, 0.0f) : v;
            }
    }
}
