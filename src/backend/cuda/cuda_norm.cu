// cuda_norm.cu — GroupNorm (optionally fused with SiLU) and LayerNorm on fp16 data, fp32 statistics.
//
// GroupNorm on NHWC data runs in three kernels: (1) blocks over short pixel ranges keep a Welford
// state per channel (coalesced reads of whole pixel rows), merge them per group and write (mean, M2)
// partials; (2) one warp per group merges the partials (Chan's formula) into mean and 1/std;
// (3) an elementwise pass writes act((x - mean) * rstd * gamma + beta), 8 channels per thread.
// Other layouts use a simple block-per-group kernel.
#include "backend/cuda/cuda_internal.h"

#define KC_GN_MAX_PAIRS 4  // channel pairs per thread: C <= 2 * 4 * 1024

typedef struct kc_gn_partial { float mean, m2, count, pad; } kc_gn_partial;

#define KC_GN_MAX_SPLITS 256

// Pixel ranges per image for the statistics: about 8-16 pixels per block, at most 256 blocks.
static int kc_gn_splits(int P) {
    int s = P / 8;
    return s < 1 ? 1 : s > KC_GN_MAX_SPLITS ? KC_GN_MAX_SPLITS : s;
}

size_t kc_group_norm_scratch(int N, int G) {
    return (size_t)N * G * (KC_GN_MAX_SPLITS * sizeof(kc_gn_partial) + sizeof(float2));
}

__device__ __forceinline__ float kc_silu(float v) { return v / (1.0f + __expf(-v)); }

// grid (S, N); thread j owns channel pairs j, j + blockDim.x, ...
__global__ void kc_gn_stats_kernel(const kc_half *x, int C, int P, int G, int S, kc_gn_partial *part) {
    extern __shared__ float sm[];  // mean[C], m2[C]
    float *s_mean = sm, *s_m2 = sm + C;
    int n = blockIdx.y, s = blockIdx.x;
    int p0 = (int)((long long)P * s / S), p1 = (int)((long long)P * (s + 1) / S);
    int pairs = C / 2;
    const kc_half *xn = x + (size_t)n * P * C;
    float mean[KC_GN_MAX_PAIRS][2], m2[KC_GN_MAX_PAIRS][2];
#pragma unroll
    for (int k = 0; k < KC_GN_MAX_PAIRS; k++) mean[k][0] = mean[k][1] = m2[k][0] = m2[k][1] = 0.0f;
#pragma unroll 4
    for (int p = p0; p < p1; p++) {
        float inv = 1.0f / (float)(p - p0 + 1);
#pragma unroll
        for (int k = 0; k < KC_GN_MAX_PAIRS; k++) {
            int j = threadIdx.x + k * blockDim.x;
            if (j < pairs) {
                float2 v = __half22float2(*(const __half2 *)&xn[(size_t)p * C + 2 * j]);
                float d0 = v.x - mean[k][0], d1 = v.y - mean[k][1];
                mean[k][0] += d0 * inv, mean[k][1] += d1 * inv;
                m2[k][0] += d0 * (v.x - mean[k][0]), m2[k][1] += d1 * (v.y - mean[k][1]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < KC_GN_MAX_PAIRS; k++) {
        int j = threadIdx.x + k * blockDim.x;
        if (j < pairs) {
            s_mean[2 * j] = mean[k][0], s_mean[2 * j + 1] = mean[k][1];
            s_m2[2 * j] = m2[k][0], s_m2[2 * j + 1] = m2[k][1];
        }
    }
    __syncthreads();
    int cpg = C / G;
    float cnt = (float)(p1 - p0);
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float mg = 0.0f;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) mg += s_mean[c];
        mg /= (float)cpg;
        float M2 = 0.0f;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            float d = s_mean[c] - mg;
            M2 += s_m2[c] + cnt * d * d;
        }
        kc_gn_partial r = {mg, M2, cnt * cpg, 0.0f};
        part[((size_t)n * S + s) * G + g] = r;
    }
}

// One warp per (n, g): merges the S partials (Chan's formula) into mean and 1/std.
__device__ __forceinline__ void kc_chan_merge(float &cnt, float &mean, float &m2, float c2, float mean2, float m22) {
    float tot = cnt + c2;
    if (tot <= 0.0f) return;
    float d = mean2 - mean;
    mean += d * c2 / tot;
    m2 += m22 + d * d * cnt * c2 / tot;
    cnt = tot;
}
__global__ void kc_gn_finalize_kernel(const kc_gn_partial *part, float2 *stats, int NG, int G, int S, float eps) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= NG) return;
    int n = warp / G, g = warp % G;
    float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (int s = lane; s < S; s += 32) {
        kc_gn_partial q = part[((size_t)n * S + s) * G + g];
        kc_chan_merge(cnt, mean, m2, q.count, q.mean, q.m2);
    }
    for (int o = 16; o; o >>= 1) {
        float c2 = __shfl_xor_sync(0xffffffffu, cnt, o), mean2 = __shfl_xor_sync(0xffffffffu, mean, o);
        float m22 = __shfl_xor_sync(0xffffffffu, m2, o);
        kc_chan_merge(cnt, mean, m2, c2, mean2, m22);
    }
    if (lane == 0) stats[warp] = make_float2(mean, rsqrtf(m2 / cnt + eps));
}

// Elementwise over NHWC: 8 channels per thread (C % 8 == 0) or 1.
__global__ void kc_gn_apply_kernel(const kc_half *x, kc_half *y, const float *gamma, const float *beta, int C,
                                   long long PC, int G, int silu, const float2 *stats, size_t n, int vec) {
    int cpg = C / G;
    if (vec) {
        for (size_t i = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * 8; i < n;
             i += (size_t)gridDim.x * blockDim.x * 8) {
            int c0 = (int)(i % C);
            size_t nn = i / PC;
            uint4 v = *(const uint4 *)&x[i];
            __half2 *h = (__half2 *)&v;
            float4 ga = *(const float4 *)&gamma[c0], gb = *(const float4 *)&gamma[c0 + 4];
            float4 ba = *(const float4 *)&beta[c0], bb = *(const float4 *)&beta[c0 + 4];
            float gm[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
            float bt[8] = {ba.x, ba.y, ba.z, ba.w, bb.x, bb.y, bb.z, bb.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float2 f = __half22float2(h[k]);
                float2 s0 = stats[nn * G + (c0 + 2 * k) / cpg], s1 = stats[nn * G + (c0 + 2 * k + 1) / cpg];
                float r0 = (f.x - s0.x) * s0.y * gm[2 * k] + bt[2 * k];
                float r1 = (f.y - s1.x) * s1.y * gm[2 * k + 1] + bt[2 * k + 1];
                if (silu) r0 = kc_silu(r0), r1 = kc_silu(r1);
                h[k] = __floats2half2_rn(r0, r1);
            }
            *(uint4 *)&y[i] = v;
        }
    } else {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
            int c = (int)(i % C);
            float2 st = stats[(i / PC) * G + c / cpg];
            float r = (__half2float(x[i]) - st.x) * st.y * gamma[c] + beta[c];
            if (silu) r = kc_silu(r);
            y[i] = __float2half(r);
        }
    }
}

// Any layout: one block per (n, g), two passes for the statistics, one to write.
__global__ void kc_gn_generic_kernel(const kc_half *x, kc_half *y, const float *gamma, const float *beta, int C, int P,
                                     int G, long long sn, long long sc, long long sp, float eps, int silu) {
    __shared__ float red[32];
    int n = blockIdx.y, g = blockIdx.x, cpg = C / G;
    long long count = (long long)cpg * P;
    const kc_half *xb = x + n * sn;
    kc_half *yb = y + n * sn;
    float acc = 0.0f;
    for (long long e = threadIdx.x; e < count; e += blockDim.x) {
        int c = g * cpg + (int)(e % cpg);
        long long p = e / cpg;
        acc += __half2float(xb[c * sc + p * sp]);
    }
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    float mean = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) mean += red[w];
    mean /= (float)count;
    __syncthreads();
    acc = 0.0f;
    for (long long e = threadIdx.x; e < count; e += blockDim.x) {
        int c = g * cpg + (int)(e % cpg);
        long long p = e / cpg;
        float d = __half2float(xb[c * sc + p * sp]) - mean;
        acc += d * d;
    }
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    float var = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) var += red[w];
    float rstd = rsqrtf(var / (float)count + eps);
    for (long long e = threadIdx.x; e < count; e += blockDim.x) {
        int c = g * cpg + (int)(e % cpg);
        long long p = e / cpg;
        float r = (__half2float(xb[c * sc + p * sp]) - mean) * rstd * gamma[c] + beta[c];
        if (silu) r = kc_silu(r);
        yb[c * sc + p * sp] = __float2half(r);
    }
}

int kc_group_norm(cudaStream_t s, const kc_half *x, kc_half *y, const float *gamma, const float *beta, int N, int C,
                  int P, int G, long long sn, long long sc, long long sp, float eps, int silu, void *partials) {
    if (G <= 0 || C % G) return kiln_error(KILN_EINVAL, "group norm: %d channels in %d groups", C, G);
    bool nhwc = sc == 1 && sp == C && sn == (long long)P * C;
    if (nhwc && C % 2 == 0 && C <= 2 * KC_GN_MAX_PAIRS * 1024 && partials) {
        int S = kc_gn_splits(P);
        int pairs = C / 2;
        int threads = pairs < 1024 ? ((pairs + 31) / 32) * 32 : 1024;
        kc_gn_partial *part = (kc_gn_partial *)partials;
        float2 *stats = (float2 *)((char *)partials + (size_t)N * G * KC_GN_MAX_SPLITS * sizeof(kc_gn_partial));
        kc_gn_stats_kernel<<<dim3(S, N), threads, 2 * C * sizeof(float), s>>>(x, C, P, G, S, part);
        KC_LAUNCHED("group_norm_stats");
        int warps = N * G;
        kc_gn_finalize_kernel<<<(warps + 7) / 8, 256, 0, s>>>(part, stats, warps, G, S, eps);
        KC_LAUNCHED("group_norm_finalize");
        size_t n = (size_t)N * P * C;
        int vec = C % 8 == 0;
        size_t work = vec ? n / 8 : n, blocks = (work + 255) / 256;
        kc_gn_apply_kernel<<<(unsigned)(blocks > 65536 ? 65536 : blocks), 256, 0, s>>>(
            x, y, gamma, beta, C, (long long)P * C, G, silu, stats, n, vec);
        KC_LAUNCHED("group_norm_apply");
        return 0;
    }
    kc_gn_generic_kernel<<<dim3(G, N), 256, 0, s>>>(x, y, gamma, beta, C, P, G, sn, sc, sp, eps, silu);
    KC_LAUNCHED("group_norm");
    return 0;
}

// LayerNorm: one block of 128 threads per row; the row stays in L1 between the passes.
__global__ void kc_layer_norm_kernel(const kc_half *x, kc_half *y, const float *gamma, const float *beta, int C,
                                     float eps) {
    __shared__ float red[4];
    const kc_half *xr = x + (size_t)blockIdx.x * C;
    kc_half *yr = y + (size_t)blockIdx.x * C;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) acc += __half2float(xr[c]);
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    float mean = (red[0] + red[1] + red[2] + red[3]) / (float)C;
    __syncthreads();
    acc = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = __half2float(xr[c]) - mean;
        acc += d * d;
    }
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    float rstd = rsqrtf((red[0] + red[1] + red[2] + red[3]) / (float)C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        yr[c] = __float2half((__half2float(xr[c]) - mean) * rstd * gamma[c] + beta[c]);
}

// LayerNorm with the row in registers: one warp per row, V vectors of 8 halves per lane (C = 8 * 32 * V at most).
template <int V>
__global__ void kc_layer_norm_warp_kernel(const kc_half *x, kc_half *y, const float *gamma, const float *beta,
                                          long long rows, int C, float eps) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32, nv = C / 8;
    if (row >= rows) return;
    const kc_half *xr = x + row * C;
    float v[V][8];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < V; k++) {
        int j = lane + 32 * k;
        if (j < nv) {
            uint4 u = *(const uint4 *)&xr[j * 8];
            const __half2 *h = (const __half2 *)&u;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float2 f = __half22float2(h[e]);
                v[k][2 * e] = f.x, v[k][2 * e + 1] = f.y;
                sum += f.x + f.y;
            }
        }
    }
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float mean = sum / (float)C, sq = 0.0f;
#pragma unroll
    for (int k = 0; k < V; k++)
        if (lane + 32 * k < nv)
#pragma unroll
            for (int e = 0; e < 8; e++) sq += (v[k][e] - mean) * (v[k][e] - mean);
    for (int o = 16; o; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    float rstd = rsqrtf(sq / (float)C + eps);
#pragma unroll
    for (int k = 0; k < V; k++) {
        int j = lane + 32 * k;
        if (j < nv) {
            uint4 u;
            __half2 *h = (__half2 *)&u;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = j * 8 + 2 * e;
                h[e] = __floats2half2_rn((v[k][2 * e] - mean) * rstd * gamma[c] + beta[c],
                                         (v[k][2 * e + 1] - mean) * rstd * gamma[c + 1] + beta[c + 1]);
            }
            *(uint4 *)&y[row * C + j * 8] = u;
        }
    }
}

int kc_layer_norm(cudaStream_t s, const kc_half *x, kc_half *y, const float *gamma, const float *beta, long long rows,
                  int C, float eps) {
    if (rows <= 0) return 0;
    int V = (C / 8 + 31) / 32;
    if (C % 8 == 0 && V <= 8) {
        unsigned blocks = (unsigned)((rows + 7) / 8);  // 8 warps (rows) per block
        switch (V) {
        case 1: kc_layer_norm_warp_kernel<1><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 2: kc_layer_norm_warp_kernel<2><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 3: kc_layer_norm_warp_kernel<3><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 4: kc_layer_norm_warp_kernel<4><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 5: kc_layer_norm_warp_kernel<5><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 6: kc_layer_norm_warp_kernel<6><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        default: kc_layer_norm_warp_kernel<8><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        }
        KC_LAUNCHED("layer_norm");
        return 0;
    }
    kc_layer_norm_kernel<<<(unsigned)rows, 128, 0, s>>>(x, y, gamma, beta, C, eps);
    KC_LAUNCHED("layer_norm");
    return 0;
}
