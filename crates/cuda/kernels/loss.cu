// Fused softmax cross-entropy with label smoothing s (PyTorch's label_smoothing):
// one thread per sample; loss (1 - s)(logZ - x[label]) + s(logZ - mean_c x[c]),
// gradient grad_scale * (p_c - ((1 - s)[c == label] + s / C)). The block reduces
// the loss and the correct count and adds them to stats[0], stats[1] once.

extern "C" __global__ void softmax_cross_entropy(const float* __restrict__ logits, const unsigned* __restrict__ labels,
                                                 float* __restrict__ dlogits, float* __restrict__ stats,
                                                 int n, int classes, float smoothing, float grad_scale, int write_grad) {
    __shared__ float s_loss[32], s_correct[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float loss = 0.0f, correct = 0.0f;
    if (i < n) {
        const float* row = logits + (long long)i * classes;
        unsigned label = labels[i];
        float mx = row[0];
        int arg = 0;
        for (int c = 1; c < classes; c++) if (row[c] > mx) { mx = row[c]; arg = c; }
        float sum = 0.0f, total = 0.0f;
        for (int c = 0; c < classes; c++) {
            sum += expf(row[c] - mx);
            total += row[c];
        }
        float log_z = mx + logf(sum);
        float mean = total / (float)classes;
        if (label < (unsigned)classes) {
            loss = (1.0f - smoothing) * (log_z - row[label]) + smoothing * (log_z - mean);
            correct = arg == (int)label ? 1.0f : 0.0f;
        }
        if (write_grad) {
            float* d = dlogits + (long long)i * classes;
            float uniform = smoothing / (float)classes;
            for (int c = 0; c < classes; c++) {
                float target = (c == (int)label ? 1.0f - smoothing : 0.0f) + uniform;
                d[c] = grad_scale * (expf(row[c] - log_z) - target);
            }
        }
    }
    loss = warp_sum(loss);
    correct = warp_sum(correct);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { s_loss[warp] = loss; s_correct[warp] = correct; }
    __syncthreads();
    if (warp == 0) {
        int warps = (blockDim.x + 31) / 32;
        loss = lane < warps ? s_loss[lane] : 0.0f;
        correct = lane < warps ? s_correct[lane] : 0.0f;
        loss = warp_sum(loss);
        correct = warp_sum(correct);
        if (lane == 0) { atomicAdd(stats, loss); atomicAdd(stats + 1, correct); }
    }
}
