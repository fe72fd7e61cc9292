// A small tiled SGEMM for the shapes where cuBLAS spends more on launching
// split-K kernels and a separate bias pass than on the product itself
// (LeNet's Linear layers: 128 x 120 x 400 and smaller).
// Row-major C (m, n) = alpha * op(A) op(B) + beta * C + bias[col];
// A is (m, k), or (k, m) when ta; B is (k, n), or (n, k) when tb.
// C is not read when beta == 0; bias may be null.
#define TILE 16
extern "C" __global__ void gemm_small(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                                      const float* __restrict__ bias, int m, int n, int k, int ta, int tb,
                                      float alpha, float beta) {
    __shared__ float As[TILE][TILE + 1];
    __shared__ float Bs[TILE][TILE + 1];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TILE) {
        // As[ty][tx] = op(A)[row][k0 + tx]; Bs[ty][tx] = op(B)[k0 + ty][col]
        int ak = k0 + threadIdx.x;
        int arow = blockIdx.y * TILE + threadIdx.y;
        As[threadIdx.y][threadIdx.x] = (arow < m && ak < k) ? (ta ? A[(long long)ak * m + arow] : A[(long long)arow * k + ak]) : 0.0f;
        int bk = k0 + threadIdx.y;
        Bs[threadIdx.y][threadIdx.x] = (bk < k && col < n) ? (tb ? B[(long long)col * k + bk] : B[(long long)bk * n + col]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE; kk++) acc = fmaf(As[threadIdx.y][kk], Bs[kk][threadIdx.x], acc);
        __syncthreads();
    }
    if (row < m && col < n) {
        long long i = (long long)row * n + col;
        float v = alpha * acc + (bias ? bias[col] : 0.0f);
        C[i] = beta == 0.0f ? v : v + beta * C[i];
    }
}
