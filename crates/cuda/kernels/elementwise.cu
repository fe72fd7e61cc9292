// Element-wise ops: fill, ReLU, GELU, sums, axpby, bias broadcast, column sums, copy.

extern "C" __global__ void fill_f32(float* y, int n, float v) {
    GRID_STRIDE(i, n) y[i] = v;
}

// y = max(x, 0)
extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE(i, n) y[i] = fmaxf(x[i], 0.0f);
}

// dx = dy * (y > 0)
extern "C" __global__ void relu_backward(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int n) {
    GRID_STRIDE(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y = GELU(x) = x Φ(x) (gelu_f in common.cuh)
extern "C" __global__ void gelu_forward(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE(i, n) y[i] = gelu_f(x[i]);
}

// dx = dy GELU'(x)
extern "C" __global__ void gelu_backward(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx, int n) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * gelu_grad_f(x[i]);
}

// y = a x + b y (weight averages, test-time-augmentation sums); y is not read when b == 0.
extern "C" __global__ void axpby_f32(const float* __restrict__ x, float* __restrict__ y, int n, float a, float b) {
    GRID_STRIDE(i, n) y[i] = b == 0.0f ? a * x[i] : a * x[i] + b * y[i];
}

// x *= target / (||x|| + eps), unchanged where that is 0 (Muon). One block of
// 1024 threads: the sum of squares (f64) is reduced, then every thread scales its share.
extern "C" __global__ void scale_to_norm(float* x, int n, float target, float eps) {
    __shared__ double partial[32];
    double sq = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sq += (double)x[i] * (double)x[i];
    double norm = sqrt(block_sum_d(sq, partial)) + (double)eps;
    if (norm <= 0.0) return;
    float factor = (float)((double)target / norm);
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] *= factor;
}

// y = a + b (residual connections)
// y = a + b, then max(y, 0) when `relu` (a residual connection and the ReLU after it)
extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, int n, int relu) {
    GRID_STRIDE(i, n) {
        float v = a[i] + b[i];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// y += x (gradient sums where an output feeds several nodes)
extern "C" __global__ void add_assign_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

// c (rows, cols) = beta * c + bias[col]; c is not read when beta == 0.
extern "C" __global__ void bias_rows(float* c, const float* __restrict__ bias, int rows, int cols, float beta) {
    GRID_STRIDE(i, rows * cols) {
        float b = bias[i % cols];
        c[i] = beta == 0.0f ? b : beta * c[i] + b;
    }
}

// db[j] = sum_i dy[i, j] for dy (rows, cols): one warp per column.
extern "C" __global__ void column_sums(const float* __restrict__ dy, float* __restrict__ db, int rows, int cols) {
    int col = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (col >= cols) return;
    float acc = 0.0f;
    for (int r = lane; r < rows; r += 32) acc += dy[r * cols + col];
    acc = warp_sum(acc);
    if (lane == 0) db[col] = acc;
}

// y (N, CO, HW) = b[co] (the start of a convolution's output, before the GEMM accumulates onto it).
extern "C" __global__ void bias_channels(float* __restrict__ y, const float* __restrict__ b, int total, int CO, int HW) {
    GRID_STRIDE(i, total) y[i] = b[(i / HW) % CO];
}
