// Batch gather: x[i, c, ..] = images[idx[i], c, ..] * scale[c] - shift[c], y[i] = labels[idx[i]],
// with scale = 1 / (255 std) and shift = mean / std per channel (the reference's arithmetic,
// rounded the same way: no fused multiply-add). One block per sample. An index past the
// dataset yields zeros (the host never sends one).

// Per-channel normalization, passed by value (mirrors GatherNorm in ops.rs).
struct GatherNorm {
    float scale[4];
    float shift[4];
};

extern "C" __global__ void gather_batch(const unsigned char* __restrict__ images, const unsigned char* __restrict__ labels,
                                        const unsigned* __restrict__ idx, float* __restrict__ x, unsigned* __restrict__ y,
                                        int n, int channels, int plane, int count, GatherNorm norm) {
    int i = blockIdx.x;
    if (i >= n) return;
    unsigned src = idx[i];
    bool ok = src < (unsigned)count;
    long long sample_len = (long long)channels * plane;
    const unsigned char* img = images + (long long)src * sample_len;
    float* out = x + (long long)i * sample_len;
    for (int c = 0; c < channels; c++) {
        float scale = norm.scale[c], shift = norm.shift[c];
        const unsigned char* in_c = img + (long long)c * plane;
        float* out_c = out + (long long)c * plane;
        for (int p = threadIdx.x; p < plane; p += blockDim.x)
            out_c[p] = ok ? __fsub_rn(__fmul_rn((float)in_c[p], scale), shift) : 0.0f;
    }
    if (threadIdx.x == 0) y[i] = ok ? labels[src] : 0u;
}
