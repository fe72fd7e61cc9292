// SGD with momentum and weight decay over the whole parameter buffer (PyTorch semantics).
extern "C" __global__ void sgd_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v,
                                    int n, float lr, float momentum, float weight_decay) {
    GRID_STRIDE(i, n) {
        float grad = g[i] + weight_decay * p[i];
        float vel = momentum * v[i] + grad;
        v[i] = vel;
        p[i] -= lr * vel;
    }
}
