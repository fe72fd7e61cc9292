// Convolution as im2col + one GEMM over the whole batch.
// The column matrix is (C_in*K*K, N*OH*OW): GEMM outputs (C_out, N*OH*OW),
// which the layout kernels below turn into (N, C_out, OH, OW) and back.

// cols[r, n*OHW + p] with r = (c*K + ky)*K + kx, p = oy*OW + ox.
extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ cols,
                                  int N, int C, int H, int W, int K, int S, int P, int OH, int OW) {
    int ohw = OH * OW, ncols = N * ohw;
    GRID_STRIDE(i, C * K * K * ncols) {
        int col = i % ncols, r = i / ncols;
        int n = col / ohw, p = col % ohw;
        int oy = p / OW, ox = p % OW;
        int kx = r % K, ky = (r / K) % K, c = r / (K * K);
        int iy = oy * S + ky - P, ix = ox * S + kx - P;
        cols[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((n * C + c) * H + iy) * W + ix] : 0.0f;
    }
}

// dx[n, c, iy, ix] = sum of dcols over the (ky, kx, oy, ox) that read it (gather, no atomics).
extern "C" __global__ void col2im(const float* __restrict__ dcols, float* __restrict__ dx,
                                  int N, int C, int H, int W, int K, int S, int P, int OH, int OW) {
    int ohw = OH * OW, ncols = N * ohw;
    GRID_STRIDE(i, N * C * H * W) {
        int ix = i % W, iy = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
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
                acc += dcols[((c * K + ky) * K + kx) * ncols + n * ohw + oy * OW + ox];
            }
        }
        dx[i] = acc;
    }
}

// y (N, C, HW) = yt (C, N*HW) + bias[c]; optionally ReLU (fused epilogue).
extern "C" __global__ void cnhw_to_nchw_bias(const float* __restrict__ yt, const float* __restrict__ bias,
                                             float* __restrict__ y, int N, int C, int HW, int relu) {
    GRID_STRIDE(i, N * C * HW) {
        int p = i % HW, c = (i / HW) % C, n = i / (HW * C);
        float v = yt[(c * N + n) * HW + p] + bias[c];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// dyt (C, N*HW) = dy (N, C, HW)
extern "C" __global__ void nchw_to_cnhw(const float* __restrict__ dy, float* __restrict__ dyt, int N, int C, int HW) {
    GRID_STRIDE(i, N * C * HW) {
        int p = i % HW, n = (i / HW) % N, c = i / (HW * N);
        dyt[i] = dy[(n * C + c) * HW + p];
    }
}

// db[c] = sum over rows of dyt (C, len): one block per channel.
extern "C" __global__ void row_sums(const float* __restrict__ dyt, float* __restrict__ db, int len) {
    __shared__ float partial[32];
    int c = blockIdx.x;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < len; i += blockDim.x) acc += dyt[(long long)c * len + i];
    acc = warp_sum(acc);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) db[c] = acc;
    }
}
