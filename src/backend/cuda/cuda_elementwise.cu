// cuda_elementwise.cu — the memory-bound ops: layout conversion at the I/O boundary, activations,
// GEGLU, adds, upsampling, channel copies (concat, slice) and the timestep embedding.
// Each launcher takes the stream first, computes its grid and checks the launch. Kernels that
// compute are templates on the element type T (__half or __nv_bfloat16, cuda_dtype.cuh) and their
// launchers take the backend's kc_dtype; the copies (upsample, channel copies) move 16-bit
// elements whatever their format.
#include "backend/cuda/cuda_internal.h"

static inline unsigned kc_blocks(size_t n, int threads) {
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned)(b > 1048576 ? 1048576 : (b ? b : 1));
}

#define KC_GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float kc_act(float x, int act) {
    switch (act) {
    case 1: return x / (1.0f + __expf(-x));                           // SiLU
    case 2: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); // GELU (exact, erf)
    case 3: return x / (1.0f + __expf(-1.702f * x));                  // quick GELU (CLIP)
    default: return x;
    }
}

// ---- random fill (for tuning on finite, non-zero data)
template <typename T>
__global__ void kc_fill_random_kernel(T *x, size_t n, uint32_t seed, float amp) {
    KC_GRID_STRIDE(i, n) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        x[i] = kc_from_f<T>(amp * ((float)(h & 0xffffff) / 8388608.0f - 1.0f));
    }
}
int kc_fill_random(cudaStream_t s, kc_dtype dt, kc_half *x, size_t n, uint32_t seed, float amplitude) {
    if (!n) return 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_fill_random_kernel<T><<<kc_blocks(n, 256), 256, 0, s>>>((T *)x, n, seed, amplitude)));
    KC_LAUNCHED("fill_random");
    return 0;
}

// ---- layout conversion. Index i walks the destination (NHWC for to_half, NCHW for to_f32). "half"
// in the names means the 16-bit element of the backend's dtype (fp16 or bf16).
template <typename T>
__global__ void kc_f32_to_half_kernel(const float *src, T *dst, int nhwc, int C, int H, int W, size_t n) {
    KC_GRID_STRIDE(i, n) {
        size_t j = i;
        if (nhwc) {  // i = ((n*H + h)*W + w)*C + c  ->  j = ((n*C + c)*H + h)*W + w
            size_t c = i % C, r = i / C, w = r % W, r2 = r / W, h = r2 % H, nn = r2 / H;
            j = ((nn * C + c) * H + h) * W + w;
        }
        dst[i] = kc_from_f<T>(src[j]);
    }
}
template <typename T>
__global__ void kc_half_to_f32_kernel(const T *src, float *dst, int nhwc, int C, int H, int W, size_t n) {
    KC_GRID_STRIDE(i, n) {
        size_t j = i;
        if (nhwc) {  // i = ((n*C + c)*H + h)*W + w  ->  j = ((n*H + h)*W + w)*C + c
            size_t w = i % W, r = i / W, h = r % H, r2 = r / H, c = r2 % C, nn = r2 / C;
            j = ((nn * H + h) * W + w) * C + c;
        }
        dst[i] = kc_to_f(src[j]);
    }
}
int kc_f32_to_half(cudaStream_t s, kc_dtype dt, const float *src, kc_half *dst, int nhwc, int N, int C, int H, int W,
                   size_t n) {
    (void)N;
    if (!n) return 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_f32_to_half_kernel<T><<<kc_blocks(n, 256), 256, 0, s>>>(src, (T *)dst, nhwc, C, H, W, n)));
    KC_LAUNCHED("f32_to_half");
    return 0;
}
int kc_half_to_f32(cudaStream_t s, kc_dtype dt, const kc_half *src, float *dst, int nhwc, int N, int C, int H, int W,
                   size_t n) {
    (void)N;
    if (!n) return 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_half_to_f32_kernel<T><<<kc_blocks(n, 256), 256, 0, s>>>((const T *)src, dst, nhwc, C, H,
                                                                                 W, n)));
    KC_LAUNCHED("half_to_f32");
    return 0;
}

// ---- activation (and scale: act 0 with a scale); 8 elements per thread when aligned
template <typename T>
__global__ void kc_activation_kernel(const T *x, T *y, size_t n, int act, float scale) {
    typedef typename kc_pair_of<T>::type T2;
    size_t n8 = n / 8;
    const uint4 *x8 = (const uint4 *)x;
    uint4 *y8 = (uint4 *)y;
    KC_GRID_STRIDE(i, n8) {
        uint4 v = x8[i];
        T2 *h = (T2 *)&v;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 f = kc_to_f2(h[k]);
            h[k] = kc_from_f2<T>(kc_act(f.x, act) * scale, kc_act(f.y, act) * scale);
        }
        y8[i] = v;
    }
    KC_GRID_STRIDE(i, n - n8 * 8) {
        size_t j = n8 * 8 + i;
        y[j] = kc_from_f<T>(kc_act(kc_to_f(x[j]), act) * scale);
    }
}
int kc_activation(cudaStream_t s, kc_dtype dt, const kc_half *x, kc_half *y, size_t n, int act, float scale) {
    if (!n) return 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_activation_kernel<T><<<kc_blocks((n + 7) / 8, 256), 256, 0, s>>>((const T *)x, (T *)y, n,
                                                                                          act, scale)));
    KC_LAUNCHED("activation");
    return 0;
}

// ---- GEGLU: y[r, j] = x[r, j] * gelu(x[r, N + j]); two elements per thread
template <typename T>
__global__ void kc_geglu_kernel(const T *x, T *y, long long rows, int N) {
    typedef typename kc_pair_of<T>::type T2;
    size_t total = (size_t)rows * N;
    if ((N & 1) == 0) {
        int n2 = N / 2;
        KC_GRID_STRIDE(i, total / 2) {
            size_t r = i / n2, j = (i % n2) * 2;
            float2 a = kc_to_f2(*(const T2 *)&x[r * 2 * N + j]);
            float2 g = kc_to_f2(*(const T2 *)&x[r * 2 * N + N + j]);
            *(T2 *)&y[r * N + j] = kc_from_f2<T>(a.x * kc_act(g.x, 2), a.y * kc_act(g.y, 2));
        }
    } else {
        KC_GRID_STRIDE(i, total) {
            size_t r = i / N, j = i % N;
            y[i] = kc_from_f<T>(kc_to_f(x[r * 2 * N + j]) * kc_act(kc_to_f(x[r * 2 * N + N + j]), 2));
        }
    }
}
int kc_geglu(cudaStream_t s, kc_dtype dt, const kc_half *x, kc_half *y, long long rows, int N) {
    size_t total = (size_t)rows * N;
    if (!total) return 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_geglu_kernel<T><<<kc_blocks(total / 2 + 1, 256), 256, 0, s>>>((const T *)x, (T *)y, rows,
                                                                                       N)));
    KC_LAUNCHED("geglu");
    return 0;
}

// ---- add
template <typename T>
__global__ void kc_add_same_kernel(const T *a, const T *b, T *y, size_t n) {
    typedef typename kc_pair_of<T>::type T2;
    size_t n8 = n / 8;
    KC_GRID_STRIDE(i, n8) {
        uint4 va = ((const uint4 *)a)[i], vb = ((const uint4 *)b)[i];
        T2 *ha = (T2 *)&va, *hb = (T2 *)&vb;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 fa = kc_to_f2(ha[k]), fb = kc_to_f2(hb[k]);
            ha[k] = kc_from_f2<T>(fa.x + fb.x, fa.y + fb.y);
        }
        ((uint4 *)y)[i] = va;
    }
    KC_GRID_STRIDE(i, n - n8 * 8) {
        size_t j = n8 * 8 + i;
        y[j] = kc_from_f<T>(kc_to_f(a[j]) + kc_to_f(b[j]));
    }
}
// Logical shape of up to 4 dims and whether it is stored NHWC (4-D).
struct kc_shape4 { long long d[4]; int ndim; };
// Physical index -> logical row-major index for a slot of this shape.
__device__ __forceinline__ size_t kc_phys_to_logical(size_t i, const kc_shape4 &s) {
    if (s.ndim != 4) return i;
    size_t C = s.d[1], H = s.d[2], W = s.d[3];
    size_t c = i % C, r = i / C, w = r % W, r2 = r / W, h = r2 % H, nn = r2 / H;
    return ((nn * C + c) * H + h) * W + w;
}
__device__ __forceinline__ size_t kc_logical_to_phys(size_t j, const kc_shape4 &s) {
    if (s.ndim != 4) return j;
    size_t C = s.d[1], H = s.d[2], W = s.d[3];
    size_t w = j % W, r = j / W, h = r % H, r2 = r / H, c = r2 % C, nn = r2 / C;
    return ((nn * H + h) * W + w) * C + c;
}
template <typename T>
__global__ void kc_add_bcast_kernel(const T *a, const T *b, T *y, size_t n, size_t nb, kc_shape4 sa, kc_shape4 sb) {
    KC_GRID_STRIDE(i, n) {
        size_t lb = kc_phys_to_logical(i, sa) % nb;
        y[i] = kc_from_f<T>(kc_to_f(a[i]) + kc_to_f(b[kc_logical_to_phys(lb, sb)]));
    }
}
int kc_add(cudaStream_t s, kc_dtype dt, const kc_half *a, const kc_half *b, kc_half *y, size_t n, size_t nb,
           int a_ndim, const int64_t *a_shape, int b_ndim, const int64_t *b_shape) {
    if (!n) return 0;
    if (nb == n && (a_ndim == 4) == (b_ndim == 4)) {
        KC_DISPATCH_DTYPE(dt, T,
                          (kc_add_same_kernel<T><<<kc_blocks((n + 7) / 8, 256), 256, 0, s>>>((const T *)a,
                                                                                            (const T *)b, (T *)y, n)));
    } else {
        kc_shape4 sa = {{1, 1, 1, 1}, a_ndim}, sb = {{1, 1, 1, 1}, b_ndim};
        for (int i = 0; i < a_ndim && i < 4; i++) sa.d[i] = a_shape[i];
        for (int i = 0; i < b_ndim && i < 4; i++) sb.d[i] = b_shape[i];
        KC_DISPATCH_DTYPE(dt, T,
                          (kc_add_bcast_kernel<T><<<kc_blocks(n, 256), 256, 0, s>>>((const T *)a, (const T *)b,
                                                                                   (T *)y, n, nb, sa, sb)));
    }
    KC_LAUNCHED("add");
    return 0;
}

// ---- add_channel: y[n, p, c] = x[n, p, c] + e[n * lde + c] (NHWC; lde: e's row stride)
template <typename T>
__global__ void kc_add_channel_kernel(const T *x, const T *e, T *y, int C, long long HW, size_t n, long long lde) {
    typedef typename kc_pair_of<T>::type T2;
    if ((C & 1) == 0 && (lde & 1) == 0) {
        KC_GRID_STRIDE(i, n / 2) {
            size_t j = i * 2, c = j % C, nn = j / ((size_t)C * HW);
            float2 fx = kc_to_f2(*(const T2 *)&x[j]);
            float2 fe = kc_to_f2(*(const T2 *)&e[nn * lde + c]);
            *(T2 *)&y[j] = kc_from_f2<T>(fx.x + fe.x, fx.y + fe.y);
        }
    } else {
        KC_GRID_STRIDE(i, n) {
            size_t c = i % C, nn = i / ((size_t)C * HW);
            y[i] = kc_from_f<T>(kc_to_f(x[i]) + kc_to_f(e[nn * lde + c]));
        }
    }
}
int kc_add_channel(cudaStream_t s, kc_dtype dt, const kc_half *x, const kc_half *e, kc_half *y, int N, int C,
                   long long HW, long long lde) {
    size_t n = (size_t)N * C * HW;
    if (!n) return 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_add_channel_kernel<T><<<kc_blocks(n / 2 + 1, 256), 256, 0, s>>>((const T *)x, (const T *)e,
                                                                                         (T *)y, C, HW, n, lde)));
    KC_LAUNCHED("add_channel");
    return 0;
}

// ---- nearest upsample, NHWC; the output row (pixel) stride ldy lets it write into a concat buffer
__global__ void kc_upsample_kernel(const kc_half *x, kc_half *y, int C, int H, int W, int Ho, int Wo, int ldy,
                                   size_t n, int vec) {
    if (vec) {
        int C8 = C / 8;
        KC_GRID_STRIDE(i, n / 8) {
            size_t c8 = i % C8, r = i / C8, wo = r % Wo, r2 = r / Wo, ho = r2 % Ho, nn = r2 / Ho;
            size_t hi = ho * H / Ho, wi = wo * W / Wo;
            const uint4 *src = (const uint4 *)&x[((nn * H + hi) * W + wi) * C] + c8;
            *((uint4 *)&y[((nn * Ho + ho) * Wo + wo) * (size_t)ldy] + c8) = *src;
        }
    } else {
        KC_GRID_STRIDE(i, n) {
            size_t c = i % C, r = i / C, wo = r % Wo, r2 = r / Wo, ho = r2 % Ho, nn = r2 / Ho;
            size_t hi = ho * H / Ho, wi = wo * W / Wo;
            y[((nn * Ho + ho) * Wo + wo) * (size_t)ldy + c] = x[((nn * H + hi) * W + wi) * C + c];
        }
    }
}
int kc_upsample_nearest(cudaStream_t s, const kc_half *x, kc_half *y, int N, int C, int H, int W, int Ho, int Wo,
                        int ldy) {
    size_t n = (size_t)N * C * Ho * Wo;
    if (!n) return 0;
    bool vec = (C % 8) == 0 && (ldy % 8) == 0 && ((uintptr_t)y % 16) == 0;
    kc_upsample_kernel<<<kc_blocks(vec ? n / 8 : n, 256), 256, 0, s>>>(x, y, C, H, W, Ho, Wo, ldy, n, vec);
    KC_LAUNCHED("upsample");
    return 0;
}

// ---- channel copy between row-strided buffers (concat halves, slices): y[r, y0 + j] = x[r, x0 + j]
__global__ void kc_copy_channels_kernel(const kc_half *x, int ldx, int x0, kc_half *y, int ldy, int y0, size_t rows,
                                        int count, int vec) {
    if (vec) {
        int c8 = count / 8;
        KC_GRID_STRIDE(i, rows * c8) {
            size_t r = i / c8, j = (i % c8) * 8;
            *(uint4 *)&y[r * ldy + y0 + j] = *(const uint4 *)&x[r * ldx + x0 + j];
        }
    } else {
        KC_GRID_STRIDE(i, rows * count) {
            size_t r = i / count, j = i % count;
            y[r * ldy + y0 + j] = x[r * ldx + x0 + j];
        }
    }
}
int kc_copy_channels(cudaStream_t s, const kc_half *x, int ldx, int x_start, kc_half *y, int ldy, int y_start,
                     long long rows, int count) {
    size_t n = (size_t)rows * count;
    if (!n) return 0;
    int vec = count % 8 == 0 && ldx % 8 == 0 && ldy % 8 == 0 && x_start % 8 == 0 && y_start % 8 == 0 &&
              (uintptr_t)x % 16 == 0 && (uintptr_t)y % 16 == 0;
    kc_copy_channels_kernel<<<kc_blocks(vec ? n / 8 : n, 256), 256, 0, s>>>(x, ldx, x_start, y, ldy, y_start, rows,
                                                                          count, vec);
    KC_LAUNCHED("copy_channels");
    return 0;
}

// ---- timestep embedding: y[n, k] = cos(t f_k), y[n, half + k] = sin(t f_k)
template <typename T>
__global__ void kc_timestep_kernel(const void *t, int t_kind, T *y, int N, int dim, float max_period) {
    int half = dim / 2;
    KC_GRID_STRIDE(i, (size_t)N * dim) {
        int n = (int)(i / dim), k = (int)(i % dim);
        float tv = t_kind == 1 ? ((const float *)t)[n]
                   : t_kind == 2 ? (float)((const int32_t *)t)[n]
                                 : kc_to_f(((const T *)t)[n]);
        // float32 steps as torch rounds them (exponent, frequency, argument); double-precision
        // exp/cos because --use_fast_math would turn expf/cosf into inaccurate intrinsics.
        float v = 0.0f;
        if (k < 2 * half) {
            int kk = k < half ? k : k - half;
            float expo = __fdiv_rn(__fmul_rn((float)-log((double)max_period), (float)kk), (float)half);
            float f = (float)exp((double)expo);
            float arg = __fmul_rn(tv, f);
            v = k < half ? (float)cos((double)arg) : (float)sin((double)arg);
        }
        y[i] = kc_from_f<T>(v);
    }
}
int kc_timestep_embed(cudaStream_t s, kc_dtype dt, const void *t, int t_is_f32, int t_is_i32, kc_half *y, int N,
                      int dim, float max_period) {
    size_t n = (size_t)N * dim;
    if (!n) return 0;
    int t_kind = t_is_f32 ? 1 : t_is_i32 ? 2 : 0;
    KC_DISPATCH_DTYPE(dt, T,
                      (kc_timestep_kernel<T><<<kc_blocks(n, 256), 256, 0, s>>>(t, t_kind, (T *)y, N, dim, max_period)));
    KC_LAUNCHED("timestep_embed");
    return 0;
}
