// Batch gather: x[i] = images[idx[i]] * scale - shift, y[i] = labels[idx[i]].
// One block per sample. An index past the dataset yields zeros (the host never sends one).
extern "C" __global__ void gather_batch(const unsigned char* __restrict__ images, const unsigned char* __restrict__ labels,
                                        const unsigned* __restrict__ idx, float* __restrict__ x, unsigned* __restrict__ y,
                                        int n, int sample_len, int count, float scale, float shift) {
    int i = blockIdx.x;
    if (i >= n) return;
    unsigned src = idx[i];
    bool ok = src < (unsigned)count;
    const unsigned char* img = images + (long long)src * sample_len;
    float* out = x + (long long)i * sample_len;
    for (int p = threadIdx.x; p < sample_len; p += blockDim.x) out[p] = ok ? img[p] * scale - shift : 0.0f;
    if (threadIdx.x == 0) y[i] = ok ? labels[src] : 0u;
}
