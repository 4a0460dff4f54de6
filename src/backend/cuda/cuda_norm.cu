// cuda_norm.cu — GroupNorm (optionally fused with SiLU) and LayerNorm on fp16 data, fp32 statistics.
//
// GroupNorm on NHWC data (C % 8 == 0) runs in three kernels: (1) blocks over pixel ranges sum
// shifted values per channel (16-byte coalesced reads of whole pixel rows), merge them per group
// and write (mean, M2) partials; (2) one warp per group merges the partials (Chan's formula) into
// mean and 1/std; (3) a streaming pass writes act(x * a + b), a and b folded per channel.
// Other layouts use a simple block-per-group kernel.
#include "backend/cuda/cuda_internal.h"


typedef struct kc_gn_partial { float mean, m2, count, pad; } kc_gn_partial;

#define KC_GN_MAX_SPLITS 64

// Pixel ranges per image for the statistics, at most 64: about 16 pixels per block where a block
// has several pixel lanes, 4 where it has one (wide C), so small maps still fill the GPU.
static int kc_gn_splits(int P, int PR) {
    int s = PR >= 4 ? P / 16 : P / 4;
    return s < 1 ? 1 : s > KC_GN_MAX_SPLITS ? KC_GN_MAX_SPLITS : s;
}

size_t kc_group_norm_scratch(int N, int G) {
    return (size_t)N * G * (KC_GN_MAX_SPLITS * sizeof(kc_gn_partial) + sizeof(float2));
}

__device__ __forceinline__ float kc_silu(float v) { return v / (1.0f + __expf(-v)); }

// Threads of a block: channel octet j = tid % C8 (8 channels, one 16-byte load), pixel lane
// pr = tid / C8 (PR lanes); so a thread's channels never change and its loop has no divisions.
// grid (S, N): block s sums pixels [p0, p1) of image n. Sums are shifted by the block's first
// pixel (a sample of each channel), which keeps E[d^2] - E[d]^2 free of cancellation.
__global__ void kc_gn_stats_kernel(const kc_half *x, int C, int P, int G, int S, kc_gn_partial *part) {
    extern __shared__ float sm[];  // s1[PR][C], s2[PR][C], shift[C]
    const int C8 = C / 8, PR = blockDim.x / C8, j = threadIdx.x % C8, pr = threadIdx.x / C8;
    float *s1 = sm, *s2 = sm + PR * C, *shift = sm + 2 * PR * C;
    const int n = blockIdx.y, s = blockIdx.x;
    const int p0 = (int)((long long)P * s / S), p1 = (int)((long long)P * (s + 1) / S);
    const kc_half *xn = x + (size_t)n * P * C + j * 8;
    float sh[8], a1[8], a2[8];
    {
        uint4 u = *(const uint4 *)&xn[(size_t)p0 * C];
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 f = __half22float2(h[e]);
            sh[2 * e] = f.x, sh[2 * e + 1] = f.y;
        }
    }
#pragma unroll
    for (int e = 0; e < 8; e++) a1[e] = a2[e] = 0.0f;
#pragma unroll 4
    for (int p = p0 + pr; p < p1; p += PR) {
        uint4 u = *(const uint4 *)&xn[(size_t)p * C];
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 f = __half22float2(h[e]);
            float d0 = f.x - sh[2 * e], d1 = f.y - sh[2 * e + 1];
            a1[2 * e] += d0, a2[2 * e] += d0 * d0;
            a1[2 * e + 1] += d1, a2[2 * e + 1] += d1 * d1;
        }
    }
#pragma unroll
    for (int e = 0; e < 8; e++) s1[pr * C + j * 8 + e] = a1[e], s2[pr * C + j * 8 + e] = a2[e];
    if (pr == 0)
#pragma unroll
        for (int e = 0; e < 8; e++) shift[j * 8 + e] = sh[e];
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float t1 = 0.0f, t2 = 0.0f;
        for (int r = 0; r < PR; r++) t1 += s1[r * C + c], t2 += s2[r * C + c];
        s1[c] = t1, s2[c] = t2;
    }
    __syncthreads();
    const int cpg = C / G;
    const float cnt = (float)(p1 - p0);
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float mg = 0.0f;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) mg += shift[c] + s1[c] / cnt;
        mg /= (float)cpg;
        float M2 = 0.0f;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            float mc = shift[c] + s1[c] / cnt, d = mc - mg;
            M2 += fmaxf(s2[c] - s1[c] * s1[c] / cnt, 0.0f) + cnt * d * d;
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

// Same thread layout as the statistics: each thread folds mean, 1/std, gamma and beta of its 8
// channels into y = x * a + b once, then streams pixels. grid (pixel chunks, N).
__global__ void kc_gn_apply_kernel(const kc_half *x, kc_half *y, const float *gamma, const float *beta, int C, int P,
                                   int G, int silu, const float2 *stats, int pixels_per_block) {
    const int C8 = C / 8, PR = blockDim.x / C8, j = threadIdx.x % C8, pr = threadIdx.x / C8;
    const int n = blockIdx.y, cpg = C / G;
    float a[8], b[8];
#pragma unroll
    for (int e = 0; e < 8; e++) {
        int c = j * 8 + e;
        float2 st = stats[n * G + c / cpg];
        a[e] = st.y * gamma[c];
        b[e] = beta[c] - st.x * a[e];
    }
    const int p0 = blockIdx.x * pixels_per_block, p1 = min(P, p0 + pixels_per_block);
    const size_t base = (size_t)n * P * C + j * 8;
#pragma unroll 4
    for (int p = p0 + pr; p < p1; p += PR) {
        uint4 u = *(const uint4 *)&x[base + (size_t)p * C];
        __half2 *h = (__half2 *)&u;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 f = __half22float2(h[e]);
            float r0 = f.x * a[2 * e] + b[2 * e], r1 = f.y * a[2 * e + 1] + b[2 * e + 1];
            if (silu) r0 = kc_silu(r0), r1 = kc_silu(r1);
            h[e] = __floats2half2_rn(r0, r1);
        }
        *(uint4 *)&y[base + (size_t)p * C] = u;
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
    int C8 = C / 8;
    if (nhwc && C % 8 == 0 && C8 <= 512 && partials && (uintptr_t)x % 16 == 0 && (uintptr_t)y % 16 == 0) {
        int PR = C8 >= 256 ? 1 : 256 / C8, threads = C8 * PR;
        int S = kc_gn_splits(P, PR);
        kc_gn_partial *part = (kc_gn_partial *)partials;
        float2 *stats = (float2 *)((char *)partials + (size_t)N * G * KC_GN_MAX_SPLITS * sizeof(kc_gn_partial));
        size_t smem = (size_t)(2 * PR + 1) * C * sizeof(float);
        kc_gn_stats_kernel<<<dim3(S, N), threads, smem, s>>>(x, C, P, G, S, part);
        KC_LAUNCHED("group_norm_stats");
        int warps = N * G;
        kc_gn_finalize_kernel<<<(warps + 7) / 8, 256, 0, s>>>(part, stats, warps, G, S, eps);
        KC_LAUNCHED("group_norm_finalize");
        int ppb = PR * ((long long)N * P * C8 >= 65536 ? 8 : 2);  // pixels per block: fewer on small maps
        kc_gn_apply_kernel<<<dim3((P + ppb - 1) / ppb, N), threads, 0, s>>>(x, y, gamma, beta, C, P, G, silu, stats,
                                                                            ppb);
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
