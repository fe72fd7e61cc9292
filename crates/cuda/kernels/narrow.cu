// Ops on narrow tensors (NarrowEdges in rr-core): 16-bit values (`half` as in
// precision.cu) in the first half of an fp32 window, channels-last where a
// layout matters. load8 and store8 come from norm16.cu.

// The element-wise ops of a residual connection, n values each in any layout
// (all the same), eight at a time where n % 8 == 0 and every pointer is
// 16-byte aligned (`vec`), else one at a time. Sums are taken in fp32 and
// rounded once.

// y = max(a + b, 0)
extern "C" __global__ void add_relu16(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                                      unsigned short* __restrict__ y, int n, int half, int vec) {
    if (!vec) {
        GRID_STRIDE(i, n) y[i] = f32_to_16(fmaxf(f16_to_32(a[i], half) + f16_to_32(b[i], half), 0.0f), half);
        return;
    }
    GRID_STRIDE(i, n / 8) {
        float va[8], vb[8];
        load8(a + 8 * (long long)i, half, va);
        load8(b + 8 * (long long)i, half, vb);
#pragma unroll
        for (int k = 0; k < 8; k++) va[k] = fmaxf(va[k] + vb[k], 0.0f);
        store8(y + 8 * (long long)i, va, half);
    }
}

// dx = dy * (y > 0): no rounding (dy's values or zeros).
extern "C" __global__ void relu_backward16(const unsigned short* __restrict__ y, const unsigned short* __restrict__ dy,
                                           unsigned short* __restrict__ dx, int n, int half, int vec) {
    // A 16-bit value is > 0 when its sign bit is clear and it is not +0 (NaN: as in fp32, not > 0).
    const unsigned short inf = half ? 0x7c00 : 0x7f80;
    if (!vec) {
        GRID_STRIDE(i, n) dx[i] = y[i] != 0 && y[i] <= inf ? dy[i] : 0;
        return;
    }
    GRID_STRIDE(i, n / 8) {
        uint4 vy = reinterpret_cast<const uint4*>(y)[i], vd = reinterpret_cast<const uint4*>(dy)[i];
        unsigned ys[4] = {vy.x, vy.y, vy.z, vy.w}, ds[4] = {vd.x, vd.y, vd.z, vd.w}, out[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            unsigned lo = ys[k] & 0xffffu, hi = ys[k] >> 16;
            unsigned keep = (lo != 0 && lo <= inf ? 0x0000ffffu : 0u) | (hi != 0 && hi <= inf ? 0xffff0000u : 0u);
            out[k] = ds[k] & keep;
        }
        reinterpret_cast<uint4*>(dx)[i] = make_uint4(out[0], out[1], out[2], out[3]);
    }
}

// y += x
extern "C" __global__ void add_assign16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y, int n, int half, int vec) {
    if (!vec) {
        GRID_STRIDE(i, n) y[i] = f32_to_16(f16_to_32(x[i], half) + f16_to_32(y[i], half), half);
        return;
    }
    GRID_STRIDE(i, n / 8) {
        float vx[8], vy[8];
        load8(x + 8 * (long long)i, half, vx);
        load8(y + 8 * (long long)i, half, vy);
#pragma unroll
        for (int k = 0; k < 8; k++) vy[k] += vx[k];
        store8(y + 8 * (long long)i, vy, half);
    }
}

// A strided 1x1 convolution's input (a ResNet shortcut, no padding) as cuDNN
// reads it (cudnn_geom in conv_dnn.rs): every s-th pixel of the narrow
// x (N, H, W, C) -> y (N, OH, OW, C), eight channels (16 bytes) a thread; C % 8 == 0.
extern "C" __global__ void subsample_nhwc16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y, int n, int c, int h,
                                            int w, int s, int oh, int ow) {
    const int groups = c / 8;
    GRID_STRIDE(i, n * oh * ow * groups) {
        const int g = i % groups, pixel = i / groups, ox = pixel % ow, oy = (pixel / ow) % oh, b = pixel / (ow * oh);
        const long long from = (((long long)b * h + oy * s) * w + ox * s) * c + 8 * g;
        reinterpret_cast<uint4*>(y)[i] = *reinterpret_cast<const uint4*>(x + from);
    }
}

// Its gradient: dy (N, OH, OW, C) -> dx (N, H, W, C) narrow, zeros at the
// pixels it skipped; with `add`, added into dx, which is left alone there.
extern "C" __global__ void unsample_nhwc16(const unsigned short* __restrict__ dy, unsigned short* __restrict__ dx, int n, int c, int h,
                                           int w, int s, int oh, int ow, int add, int half) {
    const int groups = c / 8;
    GRID_STRIDE(i, n * h * w * groups) {
        const int g = i % groups, pixel = i / groups, xx = pixel % w, yy = (pixel / w) % h, b = pixel / (w * h);
        uint4* out = reinterpret_cast<uint4*>(dx) + i;
        if (yy % s != 0 || xx % s != 0) {
            if (!add) *out = make_uint4(0, 0, 0, 0);
            continue;
        }
        const unsigned short* from = dy + (((long long)b * oh + yy / s) * ow + xx / s) * c + 8 * g;
        if (!add) {
            *out = *reinterpret_cast<const uint4*>(from);
            continue;
        }
        float v[8], d[8];
        load8(from, half, d);
        load8(reinterpret_cast<const unsigned short*>(out), half, v);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] += d[k];
        store8(reinterpret_cast<unsigned short*>(out), v, half);
    }
}

// Global average pooling of a narrow x (N, HW, C) -> y (N, C) fp32, a thread
// per (sample, channel), summed in fp32.
extern "C" __global__ void global_avgpool16(const unsigned short* __restrict__ x, float* __restrict__ y, int n, int c, int hw, int half) {
    GRID_STRIDE(i, n * c) {
        const unsigned short* from = x + (long long)(i / c) * hw * c + i % c;
        float sum = 0.0f;
        for (int p = 0; p < hw; p++) sum += f16_to_32(from[(long long)p * c], half);
        y[i] = sum / hw;
    }
}

// Its gradient: dy (N, C) -> dx (N, HW, C) narrow = dy / HW.
extern "C" __global__ void global_avgpool16_backward(const float* __restrict__ dy, unsigned short* __restrict__ dx, int n, int c, int hw,
                                                     int half) {
    GRID_STRIDE(i, n * hw * c) dx[i] = f32_to_16(dy[(i / (hw * c)) * c + i % c] / hw, half);
}
