// Optimizer steps over the whole parameter buffer (PyTorch semantics).
// hyper = [lr, 1 - beta1^t, 1 - beta2^t, skip], read on the device so a recorded
// step stays valid when the learning rate changes; a nonzero skip (loss scaling
// found an overflowed gradient) leaves parameters and state as they are.

// SGD: g += wd p; v = momentum v + g; p -= lr (nesterov ? g + momentum v : v)
extern "C" __global__ void sgd_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v,
                                    const float* __restrict__ hyper, int n, float momentum, int nesterov, float weight_decay) {
    if (hyper[3] != 0.0f) return;
    float lr = hyper[0];
    GRID_STRIDE(i, n) {
        float grad = g[i] + weight_decay * p[i];
        float vel = momentum * v[i] + grad;
        v[i] = vel;
        p[i] -= lr * (nesterov ? grad + momentum * vel : vel);
    }
}

// Adam (decoupled = 0: g += wd p) / AdamW (decoupled = 1: p *= 1 - lr wd); state = [m | v].
extern "C" __global__ void adam_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ state,
                                     const float* __restrict__ hyper, int n, float beta1, float beta2, float eps,
                                     float weight_decay, int decoupled) {
    if (hyper[3] != 0.0f) return;
    float lr = hyper[0], bc1 = hyper[1], bc2 = hyper[2];
    float* m = state;
    float* v = state + n;
    GRID_STRIDE(i, n) {
        float grad = g[i];
        float pi = p[i];
        if (decoupled) pi *= 1.0f - lr * weight_decay; else grad += weight_decay * pi;
        float mi = beta1 * m[i] + (1.0f - beta1) * grad;
        float vi = beta2 * v[i] + (1.0f - beta2) * grad * grad;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - (lr / bc1) * mi / (sqrtf(vi) / sqrtf(bc2) + eps);
    }
}
