// Dynamic loss scaling (PyTorch's GradScaler) on the device, so a recorded step
// stays valid: state = [scale, good_steps, found_inf, skipped] (LossScaleState
// in rr_core::backend). Non-finite means all exponent bits set (no math headers).

__device__ __forceinline__ bool not_finite(float v) { return (__float_as_uint(v) & 0x7f800000u) == 0x7f800000u; }

// x *= scale (the loss gradient, before backward)
extern "C" __global__ void loss_scale_dlogits(const float* __restrict__ state, float* __restrict__ x, int n) {
    float scale = state[0];
    GRID_STRIDE(i, n) x[i] *= scale;
}

// g *= 1 / scale; found_inf = 1 where an unscaled value is not finite. Every
// thread of every block reaches the block-wide vote, then one store per block
// that saw one (the same value from each: no read-modify-write needed).
extern "C" __global__ void loss_scale_unscale(float* state, float* __restrict__ g, int n) {
    float inverse = 1.0f / state[0];
    int bad = 0;
    GRID_STRIDE(i, n) {
        float v = g[i] * inverse;
        g[i] = v;
        bad |= not_finite(v);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicExch(&state[2], 1.0f);
}

// One thread: back off and count a skipped step, or count a finite step and
// grow the scale after `interval` of them (unless that overflows); clear the flag.
extern "C" __global__ void loss_scale_update(float* state, float growth, float backoff, int interval) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float scale = state[0], good = state[1];
    if (state[2] != 0.0f) {
        scale *= backoff;
        good = 0.0f;
        state[3] += 1.0f;
    } else {
        good += 1.0f;
        if (good >= (float)interval) {
            float grown = scale * growth;
            if (!not_finite(grown)) scale = grown;
            good = 0.0f;
        }
    }
    state[0] = scale;
    state[1] = good;
    state[2] = 0.0f;
}
