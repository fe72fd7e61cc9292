// Ops that draw random numbers: dropout, data augmentation and random crops. rng = [seed, step]
// lives on the device, so a recorded step draws fresh numbers when the step
// changes. Mirrors rr_core::reference (dropout_forward, augment_sample, crop_flip_sample).

extern "C" __global__ void dropout_forward(const unsigned* __restrict__ rng, const float* __restrict__ x, float* __restrict__ y,
                                           float* __restrict__ mask, int n, float p, unsigned salt) {
    unsigned key = rr_stream_key(rng[0], rng[1], salt);
    float scale = 1.0f / (1.0f - p);
    GRID_STRIDE(i, n) {
        float m = rr_uniform(key, (unsigned)i) >= p ? scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

extern "C" __global__ void dropout_backward(const float* __restrict__ mask, const float* __restrict__ dy, float* __restrict__ dx, int n) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * mask[i];
}

#define ELASTIC_GRID 3

struct AugmentArgs {
    int n, c, h, w;
    float rotate_rad, scale, translate, elastic;
    int flip;
    float noise, fill;
    unsigned salt;
};

__device__ __forceinline__ float aug_u(unsigned key, int i, int j) { return 2.0f * rr_uniform(key, (unsigned)(i * 8 + j)) - 1.0f; }

__device__ __forceinline__ float elastic_point(const AugmentArgs& a, unsigned key, int i, int gx, int gy, int axis) {
    const int side = ELASTIC_GRID + 1;
    unsigned draw = (unsigned)(((i * side * side + gy * side + gx) * 2) + axis);
    return a.elastic * (2.0f * rr_uniform(key, draw) - 1.0f);
}

__device__ __forceinline__ float pixel_or_fill(const float* plane, int h, int w, float x, float y, float fill) {
    return (x >= 0.0f && y >= 0.0f && x < (float)w && y < (float)h) ? plane[(int)y * w + (int)x] : fill;
}

// One thread per output pixel of every sample (all channels). x, y: (n, c, h, w).
extern "C" __global__ void augment(const unsigned* __restrict__ rng, const float* __restrict__ x, float* __restrict__ y, AugmentArgs a) {
    unsigned key = rr_stream_key(rng[0], rng[1], a.salt);
    unsigned ekey = rr_mix(key ^ 1u), nkey = rr_mix(key ^ 2u);
    int hw = a.h * a.w;
    GRID_STRIDE(t, a.n * hw) {
        int i = t / hw, p = t - i * hw, oy = p / a.w, ox = p - oy * a.w;
        bool flip = a.flip && aug_u(key, i, 4) < 0.0f;
        float angle = aug_u(key, i, 0) * a.rotate_rad;
        float scale = 1.0f + aug_u(key, i, 1) * a.scale;
        float tx = aug_u(key, i, 2) * a.translate * (float)a.w;
        float ty = aug_u(key, i, 3) * a.translate * (float)a.h;
        float sn = sinf(angle), cs = cosf(angle);
        float cx = ((float)a.w - 1.0f) * 0.5f, cy = ((float)a.h - 1.0f) * 0.5f;
        float ex = 0.0f, ey = 0.0f;
        if (a.elastic != 0.0f) {
            float fx = (float)ox * (float)ELASTIC_GRID / (float)(max(a.w, 2) - 1);
            float fy = (float)oy * (float)ELASTIC_GRID / (float)(max(a.h, 2) - 1);
            int gx = min((int)fx, ELASTIC_GRID - 1), gy = min((int)fy, ELASTIC_GRID - 1);
            float u = fx - gx, v = fy - gy;
            float d[2];
            for (int axis = 0; axis < 2; axis++) {
                float top = (1.0f - u) * elastic_point(a, ekey, i, gx, gy, axis) + u * elastic_point(a, ekey, i, gx + 1, gy, axis);
                float bottom = (1.0f - u) * elastic_point(a, ekey, i, gx, gy + 1, axis) + u * elastic_point(a, ekey, i, gx + 1, gy + 1, axis);
                d[axis] = (1.0f - v) * top + v * bottom;
            }
            ex = d[0];
            ey = d[1];
        }
        float px = (float)ox + ex - cx - tx, py = (float)oy + ey - cy - ty;
        float sx = (cs * px + sn * py) / scale + cx;
        float sy = (-sn * px + cs * py) / scale + cy;
        if (flip) sx = (float)a.w - 1.0f - sx;
        float x0 = floorf(sx), y0 = floorf(sy), fx = sx - x0, fy = sy - y0;
        for (int c = 0; c < a.c; c++) {
            const float* plane = x + ((long long)i * a.c + c) * hw;
            float top = (1.0f - fx) * pixel_or_fill(plane, a.h, a.w, x0, y0, a.fill) + fx * pixel_or_fill(plane, a.h, a.w, x0 + 1.0f, y0, a.fill);
            float bottom =
                (1.0f - fx) * pixel_or_fill(plane, a.h, a.w, x0, y0 + 1.0f, a.fill) + fx * pixel_or_fill(plane, a.h, a.w, x0 + 1.0f, y0 + 1.0f, a.fill);
            float val = (1.0f - fy) * top + fy * bottom;
            int o = c * hw + p;
            if (a.noise > 0.0f) val += a.noise * rr_normal(nkey, (unsigned)(i * a.c * hw + o));
            y[(long long)i * a.c * hw + o] = val;
        }
    }
}

// Random crop (zero or reflect padding), horizontal flip and cutout (mirrors CropArgs in ops.rs).
// flip is the mode of Flip::kernel_args: 0 off, 1 random (draw 2), 2 on odd epochs
// (rng[1] / steps_per_epoch), 3 always. Where `fixed` is set, every sample takes the
// offsets (fixed_dy, fixed_dx) instead of draws 0 and 1.
struct CropArgs {
    int n, c, h, w, pad;
    int reflect, flip, cutout;
    unsigned salt, steps_per_epoch;
    int fixed, fixed_dy, fixed_dx;
};

// Whether sample i is flipped at step `step` (CropSpec::params).
__device__ __forceinline__ bool crop_flips(unsigned key, int i, unsigned step, const CropArgs& a) {
    switch (a.flip) {
        case 1: return rr_uniform(key, (unsigned)i * 8u + 2u) < 0.5f;
        case 2: return (step / a.steps_per_epoch) % 2u == 1u;
        case 3: return true;
        default: return false;
    }
}

// Sample i's integer in 0..m from draw j of its block of 8: min(floor(u * m), m - 1), the
// product in f32 as CropSpec::params does it.
__device__ __forceinline__ int crop_int(unsigned key, int i, unsigned j, int m) {
    int v = (int)(rr_uniform(key, (unsigned)i * 8u + j) * (float)m);
    return min(v, m - 1);
}

// Source index of output coordinate o shifted by shift - pad on a side of len pixels,
// or -1 where zero padding reads 0. Reflect mirrors without repeating the edge
// (-1 -> 1, len -> len - 2); pad < len, so one fold suffices.
__device__ __forceinline__ int crop_source(int o, int shift, int pad, int len, int reflect) {
    int i = o + shift - pad;
    if (i >= 0 && i < len) return i;
    if (!reflect) return -1;
    return i < 0 ? -i : 2 * (len - 1) - i;
}

// One thread per output pixel of every sample (all channels). x, y: (n, c, h, w), not overlapping.
extern "C" __global__ void crop_flip(const unsigned* __restrict__ rng, const float* __restrict__ x, float* __restrict__ y, CropArgs a) {
    unsigned step = rng[1];
    unsigned key = rr_stream_key(rng[0], step, a.salt);
    int hw = a.h * a.w;
    int shifts = 2 * a.pad + 1;
    GRID_STRIDE(t, a.n * hw) {
        int i = t / hw, p = t - i * hw, r = p / a.w, s = p - r * a.w;
        int dy = a.fixed ? a.fixed_dy : crop_int(key, i, 0u, shifts);
        int dx = a.fixed ? a.fixed_dx : crop_int(key, i, 1u, shifts);
        bool flip = crop_flips(key, i, step, a);
        bool in_cut = false;
        if (a.cutout > 0) {
            int cy = crop_int(key, i, 3u, a.h) - a.cutout / 2, cx = crop_int(key, i, 4u, a.w) - a.cutout / 2;
            in_cut = r >= cy && r < cy + a.cutout && s >= cx && s < cx + a.cutout;
        }
        int sy = crop_source(r, dy, a.pad, a.h, a.reflect);
        int sx = crop_source(flip ? a.w - 1 - s : s, dx, a.pad, a.w, a.reflect);
        bool read = !in_cut && sy >= 0 && sx >= 0;
        int src = read ? sy * a.w + sx : 0;
        const float* in = x + (long long)i * a.c * hw;
        float* out = y + (long long)i * a.c * hw;
        for (int c = 0; c < a.c; c++) out[(long long)c * hw + p] = read ? in[(long long)c * hw + src] : 0.0f;
    }
}
