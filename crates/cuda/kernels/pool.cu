// Max pooling with argmax (flat index into x); padding counts as -infinity.
// With relu set, a ReLU before the pool is fused in: outputs <= 0 become 0
// with argmax 0xffffffff (no gradient).

extern "C" __global__ void maxpool_forward(const float* __restrict__ x, float* __restrict__ y, unsigned* __restrict__ argmax,
                                           int planes, int H, int W, int K, int S, int P, int OH, int OW, int relu) {
    GRID_STRIDE(o, planes * OH * OW) {
        int ox = o % OW, oy = (o / OW) % OH, plane = o / (OW * OH);
        float best = -INFINITY;
        int best_i = -1;
        for (int ky = 0; ky < K; ky++) {
            int iy = oy * S + ky - P;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < K; kx++) {
                int ix = ox * S + kx - P;
                if (ix < 0 || ix >= W) continue;
                int xi = (plane * H + iy) * W + ix;
                float v = x[xi];
                if (v > best || best_i < 0) { best = v; best_i = xi; }
            }
        }
        if (relu && !(best > 0.0f)) { best = 0.0f; best_i = -1; }
        y[o] = best;
        argmax[o] = (unsigned)best_i;
    }
}

// dx must be zeroed first; overlapping windows may hit the same input, hence atomics.
extern "C" __global__ void maxpool_backward(const float* __restrict__ dy, const unsigned* __restrict__ argmax, float* dx, int n_out, int n_in) {
    GRID_STRIDE(o, n_out) {
        unsigned i = argmax[o];
        if (i < (unsigned)n_in) atomicAdd(dx + i, dy[o]);
    }
}

// Non-overlapping windows (K == S, no padding): each input lies in at most one
// window, so dx is a gather that writes every element (no zero fill, no atomics).
extern "C" __global__ void maxpool_backward_tiled(const float* __restrict__ dy, const unsigned* __restrict__ argmax, float* __restrict__ dx,
                                                  int planes, int H, int W, int K, int OH, int OW) {
    GRID_STRIDE(i, planes * H * W) {
        int ix = i % W, iy = (i / W) % H, plane = i / (W * H);
        int ox = ix / K, oy = iy / K;
        float v = 0.0f;
        if (ox < OW && oy < OH) {
            int o = (plane * OH + oy) * OW + ox;
            if (argmax[o] == (unsigned)i) v = dy[o];
        }
        dx[i] = v;
    }
}

// Average pooling: padding reads 0, every window divides by K*K.
extern "C" __global__ void avgpool_forward(const float* __restrict__ x, float* __restrict__ y, int planes, int H, int W, int K, int S,
                                           int P, int OH, int OW) {
    float inv = 1.0f / (float)(K * K);
    GRID_STRIDE(o, planes * OH * OW) {
        int ox = o % OW, oy = (o / OW) % OH, plane = o / (OW * OH);
        float acc = 0.0f;
        for (int ky = 0; ky < K; ky++) {
            int iy = oy * S + ky - P;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < K; kx++) {
                int ix = ox * S + kx - P;
                if (ix >= 0 && ix < W) acc += x[(plane * H + iy) * W + ix];
            }
        }
        y[o] = acc * inv;
    }
}

// dx[i] = sum of dy / (K*K) over the windows that contain input i (a gather: no atomics, no zero fill).
extern "C" __global__ void avgpool_backward(const float* __restrict__ dy, float* __restrict__ dx, int planes, int H, int W, int K, int S,
                                            int P, int OH, int OW) {
    float inv = 1.0f / (float)(K * K);
    GRID_STRIDE(i, planes * H * W) {
        int ix = i % W, iy = (i / W) % H, plane = i / (W * H);
        float acc = 0.0f;
        for (int oy = 0; oy < OH; oy++) {
            int ky = iy + P - oy * S;
            if (ky < 0 || ky >= K) continue;
            for (int ox = 0; ox < OW; ox++) {
                int kx = ix + P - ox * S;
                if (kx >= 0 && kx < K) acc += dy[(plane * OH + oy) * OW + ox] * inv;
            }
        }
        dx[i] = acc;
    }
}
