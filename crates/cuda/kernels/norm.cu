// Batch normalization over x (N, C, HW), per channel. Sums run in double, as
// in the reference. params = [gamma | beta], running = [mean | var],
// saved = [mean | invstd]. `act` is the fused activation (ACT_* in common.cuh).

// dy' = dy act'(z) for the fused activation: ReLU masks by y > 0; GELU
// recomputes z = gamma * xhat + beta (the forward stores only y).
__device__ __forceinline__ float bn_dz(int act, float y, float dy, float xhat, float gamma, float beta) {
    if (act == ACT_RELU) return y <= 0.0f ? 0.0f : dy;
    if (act == ACT_GELU) return dy * gelu_grad_f(gamma * xhat + beta);
    return dy;
}

// y = act(gamma * (x - mean) * invstd + beta). Training reads saved
// [mean | invstd]; evaluation reads running [mean | var].
extern "C" __global__ void bn_apply(const float* __restrict__ x, const float* __restrict__ params, const float* __restrict__ stats,
                                    float* __restrict__ y, int N, int C, int HW, float eps, int training, int act) {
    GRID_STRIDE(i, N * C * HW) {
        int c = (i / HW) % C;
        float mean = stats[c];
        float invstd = training ? stats[C + c] : 1.0f / sqrtf(stats[C + c] + eps);
        float v = params[c] * ((x[i] - mean) * invstd) + params[C + c];
        y[i] = act == ACT_RELU ? fmaxf(v, 0.0f) : act == ACT_GELU ? gelu_f(v) : v;
    }
}

// dx = gamma * invstd * (dy' - dbeta / M - xhat * dgamma / M)
extern "C" __global__ void bn_backward_dx(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                          const float* __restrict__ params, const float* __restrict__ saved,
                                          const float* __restrict__ dparams, float* __restrict__ dx, int N, int C, int HW, int act) {
    double m = (double)N * HW;
    GRID_STRIDE(i, N * C * HW) {
        int c = (i / HW) % C;
        float mean = saved[c], invstd = saved[C + c];
        float mb = (float)(dparams[C + c] / m), mg = (float)(dparams[c] / m);
        float xhat = (x[i] - mean) * invstd;
        float d = bn_dz(act, act == ACT_RELU ? y[i] : 0.0f, dy[i], xhat, params[c], params[C + c]);
        dx[i] = params[c] * invstd * (d - mb - xhat * mg);
    }
}

// Per-channel sums over the batch in two phases, so that every SM works even
// when there are few channels: block (c, s) of a (C, S) grid sums its slice
// of samples [s*N/S, (s+1)*N/S) into partial[c][s][0..2], in double. What it sums:
// mode 0: x and x*x (training statistics); mode 1: dy' and dy' * xhat
// (backward; dy' = bn_dz of the fused activation `act`, which reads params
// [gamma | beta]); mode 2: dy (a bias gradient).
// x, y, dy: (N, C, HW); partial: (C, S, 2)
extern "C" __global__ void channel_partials(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                            const float* __restrict__ saved, const float* __restrict__ params,
                                            double* __restrict__ partial, int N, int C, int HW, int mode, int act) {
    __shared__ double sh[32];
    int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    int n0 = (int)((long long)s * N / S), n1 = (int)((long long)(s + 1) * N / S);
    float mean = mode == 1 ? saved[c] : 0.0f, invstd = mode == 1 ? saved[C + c] : 0.0f;
    float gamma = mode == 1 && act == ACT_GELU ? params[c] : 0.0f, beta = mode == 1 && act == ACT_GELU ? params[C + c] : 0.0f;
    double a = 0.0, b = 0.0;
    int count = (n1 - n0) * HW;
    for (int t = threadIdx.x; t < count; t += blockDim.x) {
        int n = n0 + t / HW, j = t - (n - n0) * HW;
        long long i = ((long long)n * C + c) * HW + j;
        if (mode == 0) {
            double v = x[i];
            a += v;
            b += v * v;
        } else if (mode == 1) {
            float xhat = (x[i] - mean) * invstd;
            float d = bn_dz(act, act == ACT_RELU ? y[i] : 0.0f, dy[i], xhat, gamma, beta);
            a += d;
            b += (double)d * (double)xhat;
        } else {
            a += dy[i];
        }
    }
    a = block_sum_d(a, sh);
    b = block_sum_d(b, sh);
    if (threadIdx.x == 0) {
        partial[((long long)c * S + s) * 2] = a;
        partial[((long long)c * S + s) * 2 + 1] = b;
    }
}

// Training statistics from mode-0 partials over m = N * HW values: writes saved
// [mean | invstd] and moves running towards the batch (unbiased variance), as PyTorch does.
extern "C" __global__ void bn_stats_finish(const double* __restrict__ partial, float* running, float* saved, int C, int S, int m,
                                           float eps, float momentum) {
    GRID_STRIDE(c, C) {
        double sum = 0.0, sumsq = 0.0;
        for (int s = 0; s < S; s++) {
            sum += partial[((long long)c * S + s) * 2];
            sumsq += partial[((long long)c * S + s) * 2 + 1];
        }
        double mean = sum / m;
        double var = fmax(sumsq / m - mean * mean, 0.0);
        saved[c] = (float)mean;
        saved[C + c] = (float)(1.0 / sqrt(var + (double)eps));
        running[c] = (1.0f - momentum) * running[c] + momentum * (float)mean;
        running[C + c] = (1.0f - momentum) * running[C + c] + momentum * (float)(var * m / (m - 1.0));
    }
}

// Mode-1 partials -> dparams = [dgamma | dbeta]; mode-2 partials -> out = [sum dy].
extern "C" __global__ void channel_partials_finish(const double* __restrict__ partial, float* __restrict__ out, int C, int S, int mode) {
    GRID_STRIDE(c, C) {
        double a = 0.0, b = 0.0;
        for (int s = 0; s < S; s++) {
            a += partial[((long long)c * S + s) * 2];
            b += partial[((long long)c * S + s) * 2 + 1];
        }
        if (mode == 1) {
            out[c] = (float)b;
            out[C + c] = (float)a;
        } else {
            out[c] = (float)a;
        }
    }
}
