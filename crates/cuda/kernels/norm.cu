// Batch normalization over x (N, C, HW), per channel. Sums run in double, as
// in the reference. params = [gamma | beta], running = [mean | var],
// saved = [mean | invstd].

// Training statistics: one block per channel. Writes saved and moves running
// towards the batch (unbiased variance), as PyTorch does.
extern "C" __global__ void bn_stats(const float* __restrict__ x, float* running, float* saved, int N, int C, int HW, float eps,
                                    float momentum) {
    __shared__ double sh[32];
    int c = blockIdx.x;
    int m = N * HW;
    double sum = 0.0, sumsq = 0.0;
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
        int n = t / HW, j = t - n * HW;
        double v = x[((long long)n * C + c) * HW + j];
        sum += v;
        sumsq += v * v;
    }
    sum = block_sum_d(sum, sh);
    sumsq = block_sum_d(sumsq, sh);
    if (threadIdx.x == 0) {
        double mean = sum / m;
        double var = fmax(sumsq / m - mean * mean, 0.0);
        saved[c] = (float)mean;
        saved[C + c] = (float)(1.0 / sqrt(var + (double)eps));
        running[c] = (1.0f - momentum) * running[c] + momentum * (float)mean;
        running[C + c] = (1.0f - momentum) * running[C + c] + momentum * (float)(var * m / (m - 1.0));
    }
}

// y = relu?(gamma * (x - mean) * invstd + beta). Training reads saved
// [mean | invstd]; evaluation reads running [mean | var].
extern "C" __global__ void bn_apply(const float* __restrict__ x, const float* __restrict__ params, const float* __restrict__ stats,
                                    float* __restrict__ y, int N, int C, int HW, float eps, int training, int relu) {
    GRID_STRIDE(i, N * C * HW) {
        int c = (i / HW) % C;
        float mean = stats[c];
        float invstd = training ? stats[C + c] : 1.0f / sqrtf(stats[C + c] + eps);
        float v = params[c] * ((x[i] - mean) * invstd) + params[C + c];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// dgamma = sum dy' xhat, dbeta = sum dy' (dy' = dy masked by y > 0 under the
// fused ReLU): one block per channel.
extern "C" __global__ void bn_backward_reduce(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                              const float* __restrict__ saved, float* __restrict__ dparams, int N, int C, int HW,
                                              int relu) {
    __shared__ double sh[32];
    int c = blockIdx.x;
    int m = N * HW;
    float mean = saved[c], invstd = saved[C + c];
    double dgamma = 0.0, dbeta = 0.0;
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
        int n = t / HW, j = t - n * HW;
        long long i = ((long long)n * C + c) * HW + j;
        float d = (relu && y[i] <= 0.0f) ? 0.0f : dy[i];
        dbeta += d;
        dgamma += (double)d * (double)((x[i] - mean) * invstd);
    }
    dgamma = block_sum_d(dgamma, sh);
    dbeta = block_sum_d(dbeta, sh);
    if (threadIdx.x == 0) {
        dparams[c] = (float)dgamma;
        dparams[C + c] = (float)dbeta;
    }
}

// dx = gamma * invstd * (dy' - dbeta / M - xhat * dgamma / M)
extern "C" __global__ void bn_backward_dx(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                          const float* __restrict__ params, const float* __restrict__ saved,
                                          const float* __restrict__ dparams, float* __restrict__ dx, int N, int C, int HW, int relu) {
    double m = (double)N * HW;
    GRID_STRIDE(i, N * C * HW) {
        int c = (i / HW) % C;
        float mean = saved[c], invstd = saved[C + c];
        float mb = (float)(dparams[C + c] / m), mg = (float)(dparams[c] / m);
        float d = (relu && y[i] <= 0.0f) ? 0.0f : dy[i];
        float xhat = (x[i] - mean) * invstd;
        dx[i] = params[c] * invstd * (d - mb - xhat * mg);
    }
}
