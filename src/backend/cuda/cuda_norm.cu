// cuda_norm.cu — GroupNorm (optionally fused with SiLU) and LayerNorm on fp16 data, fp32 statistics.
//
// GroupNorm on NHWC data runs in two kernels: (1) blocks over pixel ranges keep a Welford state per
// channel (coalesced reads of whole pixel rows), merge them per group and write (mean, M2) partials;
// (2) the apply kernel merges the partials of each group (Chan's formula) and writes
// act((x - mean) * rstd * gamma + beta). Other layouts use a simple block-per-group kernel.
#include "backend/cuda/cuda_internal.h"

#define KC_GN_MAX_PAIRS 4  // channel pairs per thread: C <= 2 * 4 * 1024

typedef struct kc_gn_partial { float mean, m2, count, pad; } kc_gn_partial;

static int kc_gn_splits(int P) {
    int s = P / 64;
    return s < 1 ? 1 : s > 128 ? 128 : s;
}

size_t kc_group_norm_scratch(int N, int G) { return (size_t)N * G * 128 * sizeof(kc_gn_partial); }

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

// grid (pixel chunks, N); merges the partials, then normalizes rows of C channels.
__global__ void kc_gn_apply_kernel(const kc_half *x, kc_half *y, const float *gamma, const float *beta, int C, int P,
                                   int G, int S, float eps, int silu, const kc_gn_partial *part, int rows_per_block) {
    extern __shared__ float sm[];  // mean[G], rstd[G]
    float *s_mean = sm, *s_rstd = sm + G;
    int n = blockIdx.y;
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
        for (int s = 0; s < S; s++) {
            kc_gn_partial q = part[((size_t)n * S + s) * G + g];
            if (q.count <= 0.0f) continue;
            float tot = cnt + q.count, d = q.mean - mean;
            mean += d * q.count / tot;
            m2 += q.m2 + d * d * cnt * q.count / tot;
            cnt = tot;
        }
        s_mean[g] = mean;
        s_rstd[g] = rsqrtf(m2 / cnt + eps);
    }
    __syncthreads();
    int cpg = C / G, pairs = C / 2;
    int p0 = blockIdx.x * rows_per_block, p1 = min(P, p0 + rows_per_block);
    const kc_half *xn = x + (size_t)n * P * C;
    kc_half *yn = y + (size_t)n * P * C;
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
        int c = 2 * j, g0 = c / cpg, g1 = (c + 1) / cpg;
        float a0 = s_rstd[g0] * gamma[c], b0 = beta[c] - s_mean[g0] * a0;
        float a1 = s_rstd[g1] * gamma[c + 1], b1 = beta[c + 1] - s_mean[g1] * a1;
        for (int p = p0; p < p1; p++) {
            float2 v = __half22float2(*(const __half2 *)&xn[(size_t)p * C + c]);
            float r0 = v.x * a0 + b0, r1 = v.y * a1 + b1;
            if (silu) r0 = kc_silu(r0), r1 = kc_silu(r1);
            *(__half2 *)&yn[(size_t)p * C + c] = __floats2half2_rn(r0, r1);
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
    int cpg = C / G;
    bool nhwc = sc == 1 && sp == C && sn == (long long)P * C;
    if (nhwc && C % 2 == 0 && cpg % 2 == 0 && C <= 2 * KC_GN_MAX_PAIRS * 1024 && partials) {
        int S = kc_gn_splits(P);
        int pairs = C / 2;
        int threads = pairs < 1024 ? ((pairs + 31) / 32) * 32 : 1024;
        kc_gn_stats_kernel<<<dim3(S, N), threads, 2 * C * sizeof(float), s>>>(x, C, P, G, S,
                                                                               (kc_gn_partial *)partials);
        KC_LAUNCHED("group_norm_stats");
        int rows = 16;
        int threads_a = pairs < 512 ? ((pairs + 31) / 32) * 32 : 512;
        kc_gn_apply_kernel<<<dim3((P + rows - 1) / rows, N), threads_a, 2 * G * sizeof(float), s>>>(
            x, y, gamma, beta, C, P, G, S, eps, silu, (const kc_gn_partial *)partials, rows);
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

int kc_layer_norm(cudaStream_t s, const kc_half *x, kc_half *y, const float *gamma, const float *beta, long long rows,
                  int C, float eps) {
    if (rows <= 0) return 0;
    kc_layer_norm_kernel<<<(unsigned)rows, 128, 0, s>>>(x, y, gamma, beta, C, eps);
    KC_LAUNCHED("layer_norm");
    return 0;
}
