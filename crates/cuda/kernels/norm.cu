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

// The kernels below read and write V consecutive values at a time: V = 4
// (float4) when HW % 4 == 0 and every tensor is 16-byte aligned (`vec4`,
// checked by the host), else 1. A group of V never crosses a channel plane,
// so its channel is found with one division per group.
template <int V>
__device__ __forceinline__ void load_v(const float* __restrict__ p, long long g, float (&v)[V]) {
    if constexpr (V == 4) {
        float4 t = reinterpret_cast<const float4*>(p)[g];
        v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    } else {
        v[0] = p[g];
    }
}
template <int V>
__device__ __forceinline__ void store_v(float* __restrict__ p, long long g, const float (&v)[V]) {
    if constexpr (V == 4) {
        reinterpret_cast<float4*>(p)[g] = make_float4(v[0], v[1], v[2], v[3]);
    } else {
        p[g] = v[0];
    }
}
#define VEC_DISPATCH(vec4, call) \
    do {                         \
        if (vec4) {              \
            call(4);             \
        } else {                 \
            call(1);             \
        }                        \
    } while (0)

// y = act(gamma * (x - mean) * invstd + beta). Training reads saved
// [mean | invstd]; evaluation reads running [mean | var].
template <int V>
__device__ void bn_apply_v(const float* __restrict__ x, const float* __restrict__ params, const float* __restrict__ stats,
                           float* __restrict__ y, int N, int C, int HW, float eps, int training, int act) {
    const int HWV = HW / V;
    const long long groups = (long long)N * C * HWV;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups; g += (long long)blockDim.x * gridDim.x) {
        int c = (int)((g / HWV) % C);
        float mean = stats[c];
        float invstd = training ? stats[C + c] : 1.0f / sqrtf(stats[C + c] + eps);
        float gamma = params[c], beta = params[C + c];
        float v[V];
        load_v<V>(x, g, v);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float z = gamma * ((v[k] - mean) * invstd) + beta;
            v[k] = act == ACT_RELU ? fmaxf(z, 0.0f) : act == ACT_GELU ? gelu_f(z) : z;
        }
        store_v<V>(y, g, v);
    }
}
extern "C" __global__ void bn_apply(const float* __restrict__ x, const float* __restrict__ params, const float* __restrict__ stats,
                                    float* __restrict__ y, int N, int C, int HW, float eps, int training, int act, int vec4) {
#define BN_APPLY(V) bn_apply_v<V>(x, params, stats, y, N, C, HW, eps, training, act)
    VEC_DISPATCH(vec4, BN_APPLY);
#undef BN_APPLY
}

// dx = gamma * invstd * (dy' - dbeta / M - xhat * dgamma / M)
template <int V>
__device__ void bn_backward_dx_v(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                 const float* __restrict__ params, const float* __restrict__ saved,
                                 const float* __restrict__ dparams, float* __restrict__ dx, int N, int C, int HW, int act) {
    const double m = (double)N * HW;
    const int HWV = HW / V;
    const long long groups = (long long)N * C * HWV;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups; g += (long long)blockDim.x * gridDim.x) {
        int c = (int)((g / HWV) % C);
        float mean = saved[c], invstd = saved[C + c], gamma = params[c], beta = params[C + c];
        float mb = (float)(dparams[C + c] / m), mg = (float)(dparams[c] / m);
        float xv[V], yv[V], dv[V];
        load_v<V>(x, g, xv);
        load_v<V>(dy, g, dv);
        if (act == ACT_RELU) load_v<V>(y, g, yv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float xhat = (xv[k] - mean) * invstd;
            float d = bn_dz(act, act == ACT_RELU ? yv[k] : 0.0f, dv[k], xhat, gamma, beta);
            dv[k] = gamma * invstd * (d - mb - xhat * mg);
        }
        store_v<V>(dx, g, dv);
    }
}
extern "C" __global__ void bn_backward_dx(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                          const float* __restrict__ params, const float* __restrict__ saved,
                                          const float* __restrict__ dparams, float* __restrict__ dx, int N, int C, int HW, int act,
                                          int vec4) {
#define BN_DX(V) bn_backward_dx_v<V>(x, y, dy, params, saved, dparams, dx, N, C, HW, act)
    VEC_DISPATCH(vec4, BN_DX);
#undef BN_DX
}

// Per-channel sums over the batch in two phases, so that every SM works even
// when there are few channels: block (c, s) of a (C, S) grid sums its slice
// of samples [s*N/S, (s+1)*N/S) into partial[c][s][0..2], in double. What it sums:
// mode 0: x and x*x (training statistics); mode 1: dy' and dy' * xhat
// (backward; dy' = bn_dz of the fused activation `act`, which reads params
// [gamma | beta]); mode 2: dy (a bias gradient).
// x, y, dy: (N, C, HW); partial: (C, S, 2)
template <int V>
__device__ void channel_partials_v(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                   const float* __restrict__ saved, const float* __restrict__ params,
                                   double* __restrict__ partial, int N, int C, int HW, int mode, int act) {
    __shared__ double sh[32];
    int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    int n0 = (int)((long long)s * N / S), n1 = (int)((long long)(s + 1) * N / S);
    float mean = mode == 1 ? saved[c] : 0.0f, invstd = mode == 1 ? saved[C + c] : 0.0f;
    float gamma = mode == 1 && act == ACT_GELU ? params[c] : 0.0f, beta = mode == 1 && act == ACT_GELU ? params[C + c] : 0.0f;
    double a = 0.0, b = 0.0;
    const int HWV = HW / V;
    const int count = (n1 - n0) * HWV;
    for (int t = threadIdx.x; t < count; t += blockDim.x) {
        int n = n0 + t / HWV, j = t - (n - n0) * HWV;
        long long g = ((long long)n * C + c) * HWV + j;
        float xv[V], yv[V], dv[V];
        if (mode != 2) load_v<V>(x, g, xv);
        if (mode != 0) load_v<V>(dy, g, dv);
        if (mode == 1 && act == ACT_RELU) load_v<V>(y, g, yv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            if (mode == 0) {
                double v = xv[k];
                a += v;
                b += v * v;
            } else if (mode == 1) {
                float xhat = (xv[k] - mean) * invstd;
                float d = bn_dz(act, act == ACT_RELU ? yv[k] : 0.0f, dv[k], xhat, gamma, beta);
                a += d;
                b += (double)d * (double)xhat;
            } else {
                a += dv[k];
            }
        }
    }
    a = block_sum_d(a, sh);
    b = block_sum_d(b, sh);
    if (threadIdx.x == 0) {
        partial[((long long)c * S + s) * 2] = a;
        partial[((long long)c * S + s) * 2 + 1] = b;
    }
}
extern "C" __global__ void channel_partials(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                                            const float* __restrict__ saved, const float* __restrict__ params,
                                            double* __restrict__ partial, int N, int C, int HW, int mode, int act, int vec4) {
#define PARTIALS(V) channel_partials_v<V>(x, y, dy, saved, params, partial, N, C, HW, mode, act)
    VEC_DISPATCH(vec4, PARTIALS);
#undef PARTIALS
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
