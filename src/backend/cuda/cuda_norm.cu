// cuda_norm.cu — GroupNorm (optionally fused with SiLU, and with a per-channel addend: the ResBlock's
// time embedding) and LayerNorm on 16-bit data, fp32 statistics.
//
// GroupNorm on NHWC data (C % 8 == 0) has three forms; the tuner times them per step (cuda_steps.cu):
//  - one kernel (sm_90): a cluster of 1..8 blocks owns a run of channels holding whole groups of one
//    image; each block keeps its share of the pixels in shared memory after one read, sums values
//    shifted by its first pixel (no cancellation), and the blocks merge per-group (count, mean, M2)
//    through distributed shared memory (Chan's formula); then each block writes act(x * a + b).
//    One read and one write of HBM, one launch;
//  - three kernels: (1) blocks over pixel ranges write (mean, M2) partials per group; (2) one warp
//    per group merges them into mean and 1/std; (3) a streaming pass writes act(x * a + b);
//  - two kernels: the same without (2), each block of (3) merging the partials itself.
// Other layouts use a simple block-per-group kernel. Kernels are templates over the element type T
// (__half or __nv_bfloat16, cuda_dtype.cuh).
#include <cooperative_groups.h>

#include "backend/cuda/cuda_internal.h"

namespace cg = cooperative_groups;


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

// The optional addend (a ResBlock's time embedding, fused from the ADD_CHANNEL before the norm):
// x + add rounded to the element type, exactly what the separate add would have stored.
template <typename T> __device__ __forceinline__ void kc_gn_add8(float f[8], const float ad[8]) {
#pragma unroll
    for (int e = 0; e < 8; e++) f[e] = kc_to_f(kc_from_f<T>(f[e] + ad[e]));
}
template <typename T>
__device__ __forceinline__ void kc_gn_load_add(const T *add, long long lda, int n, int c0, bool on, float ad[8]) {
#pragma unroll
    for (int e = 0; e < 8; e++) ad[e] = on && add ? kc_to_f(add[n * lda + c0 + e]) : 0.0f;
}

// Threads of a block: channel octet j = tid % C8 (8 channels, one 16-byte load), pixel lane
// pr = tid / C8 (PR lanes); so a thread's channels never change and its loop has no divisions.
// grid (S, N): block s sums pixels [p0, p1) of image n. Sums are shifted by the block's first
// pixel (a sample of each channel), which keeps E[d^2] - E[d]^2 free of cancellation.
template <typename T>
__global__ void kc_gn_stats_kernel(const T *x, const T *add, long long lda, int C, int P, int G, int S,
                                   kc_gn_partial *part) {
    extern __shared__ float sm[];  // s1[PR][C], s2[PR][C], shift[C]
    const int C8 = C / 8, PR = blockDim.x / C8, j = threadIdx.x % C8, pr = threadIdx.x / C8;
    float *s1 = sm, *s2 = sm + PR * C, *shift = sm + 2 * PR * C;
    const int n = blockIdx.y, s = blockIdx.x;
    const int p0 = (int)((long long)P * s / S), p1 = (int)((long long)P * (s + 1) / S);
    const T *xn = x + (size_t)n * P * C + j * 8;
    float sh[8], a1[8], a2[8], ad[8];
    kc_gn_load_add<T>(add, lda, n, j * 8, true, ad);
    kc_unpack8<T>(*(const uint4 *)&xn[(size_t)p0 * C], sh);
    if (add) kc_gn_add8<T>(sh, ad);
#pragma unroll
    for (int e = 0; e < 8; e++) a1[e] = a2[e] = 0.0f;
#pragma unroll 4
    for (int p = p0 + pr; p < p1; p += PR) {
        float f[8];
        kc_unpack8<T>(*(const uint4 *)&xn[(size_t)p * C], f);
        if (add) kc_gn_add8<T>(f, ad);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float d = f[e] - sh[e];
            a1[e] += d, a2[e] += d * d;
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
// One warp merges the S partials of group g of image n; every lane gets (mean, 1/std).
__device__ __forceinline__ float2 kc_gn_warp_merge(const kc_gn_partial *part, int n, int S, int G, int g, int lane,
                                                   float eps) {
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
    return make_float2(mean, rsqrtf(m2 / cnt + eps));
}

__global__ void kc_gn_finalize_kernel(const kc_gn_partial *part, float2 *stats, int NG, int G, int S, float eps) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= NG) return;
    float2 st = kc_gn_warp_merge(part, warp / G, S, G, warp % G, lane, eps);
    if (lane == 0) stats[warp] = st;
}

// Same thread layout as the statistics: each thread folds mean, 1/std, gamma and beta of its 8
// channels into y = x * a + b once, then streams pixels. grid (pixel chunks, N).
template <typename T>
// part != NULL (the two-kernel form): the block first merges the S partials of each of image n's
// groups itself (a warp per group) instead of reading a finalize kernel's stats.
__global__ void kc_gn_apply_kernel(const T *x, const T *add, long long lda, T *y, const float *gamma,
                                   const float *beta, int C, int P, int G, int silu, const float2 *stats,
                                   int pixels_per_block, const kc_gn_partial *part, int S, float eps) {
    extern __shared__ float2 kc_gn_merged[];  // [G], the two-kernel form only
    const int C8 = C / 8, PR = blockDim.x / C8, j = threadIdx.x % C8, pr = threadIdx.x / C8;
    const int n = blockIdx.y, cpg = C / G;
    if (part) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
        for (int g = warp; g < G; g += warps) {
            float2 st = kc_gn_warp_merge(part, n, S, G, g, lane, eps);
            if (lane == 0) kc_gn_merged[g] = st;
        }
        __syncthreads();
    }
    float a[8], b[8], ad[8];
    kc_gn_load_add<T>(add, lda, n, j * 8, true, ad);
#pragma unroll
    for (int e = 0; e < 8; e++) {
        int c = j * 8 + e;
        float2 st = part ? kc_gn_merged[c / cpg] : stats[n * G + c / cpg];
        a[e] = st.y * gamma[c];
        b[e] = beta[c] - st.x * a[e];
    }
    const int p0 = blockIdx.x * pixels_per_block, p1 = min(P, p0 + pixels_per_block);
    const size_t base = (size_t)n * P * C + j * 8;
#pragma unroll 4
    for (int p = p0 + pr; p < p1; p += PR) {
        float f[8];
        kc_unpack8<T>(*(const uint4 *)&x[base + (size_t)p * C], f);
        if (add) kc_gn_add8<T>(f, ad);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            f[e] = f[e] * a[e] + b[e];
            if (silu) f[e] = kc_silu(f[e]);
        }
        *(uint4 *)&y[base + (size_t)p * C] = kc_pack8<T>(f);
    }
}

template <typename T>
__device__ __forceinline__ float kc_gn_at(const T *xb, const T *add, long long lda, int n, int c, long long at) {
    float v = kc_to_f(xb[at]);
    return add ? kc_to_f(kc_from_f<T>(v + kc_to_f(add[n * lda + c]))) : v;
}

// Any layout: one block per (n, g), two passes for the statistics, one to write.
template <typename T>
__global__ void kc_gn_generic_kernel(const T *x, const T *add, long long lda, T *y, const float *gamma,
                                     const float *beta, int C, int P, int G, long long sn, long long sc, long long sp,
                                     float eps, int silu) {
    __shared__ float red[32];
    int n = blockIdx.y, g = blockIdx.x, cpg = C / G;
    long long count = (long long)cpg * P;
    const T *xb = x + n * sn;
    T *yb = y + n * sn;
    float acc = 0.0f;
    for (long long e = threadIdx.x; e < count; e += blockDim.x) {
        int c = g * cpg + (int)(e % cpg);
        long long p = e / cpg;
        acc += kc_gn_at(xb, add, lda, n, c, c * sc + p * sp);
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
        float d = kc_gn_at(xb, add, lda, n, c, c * sc + p * sp) - mean;
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
        float r = (kc_gn_at(xb, add, lda, n, c, c * sc + p * sp) - mean) * rstd * gamma[c] + beta[c];
        if (silu) r = kc_silu(r);
        yb[c * sc + p * sp] = kc_from_f<T>(r);
    }
}

// ---- one-kernel GroupNorm (thread-block clusters on sm_90)
#define KC_GN_THREADS 256   // 8 warps
#define KC_GN_MAX_CHUNK 256 // channels per cluster at most (32 octets: one warp row)
#define KC_GN_MAX_CLUSTER 8 // blocks per cluster at most (the portable limit)
#define KC_GN_BATCH 4       // loads a thread issues before it waits on any
static const size_t kc_gn_smem_limit = 96u << 10;  // per block (two blocks per SM still fit)

typedef struct kc_gn_part3 { float count, mean, m2; } kc_gn_part3;

// grid (C / chunk * cs, N), clusters of cs blocks (cs = 1: no cluster): cluster q normalises
// channels [q*chunk, (q+1)*chunk) of image n; its block of rank r holds pixels [P*r/cs, P*(r+1)/cs)
// in shared memory. chunk = lcm(cpg, 8): whole groups (at most 8) and whole 16-byte vectors.
// Threads: octet j = tid % ch8p (ch8p = chunk/8 rounded up to a power of two; j >= chunk/8 idle),
// pixel lane pr = tid / ch8p. One pass: sums of values shifted by the block's first pixel (no
// cancellation), reduced over lanes by warp shuffles and one shared-memory row per warp, turned
// into per-group (count, mean, M2) and merged over the cluster with Chan's formula.
template <typename T>
__global__ void __launch_bounds__(KC_GN_THREADS)
    kc_gn_cluster_kernel(const T *x, const T *add, long long lda, T *y, const float *gamma, const float *beta, int C,
                         int P, int cpg, int chunk, int ch8p, int cs, float eps, int silu) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ uint4 kc_gn_data[];  // [pixel - p0][octet]
    __shared__ float red1[8 * KC_GN_MAX_CHUNK], red2[8 * KC_GN_MAX_CHUNK], shift[KC_GN_MAX_CHUNK];
    __shared__ kc_gn_part3 part[8];
    __shared__ float2 gstat[8];  // mean, 1/std per group of the chunk
    cg::cluster_group cluster = cg::this_cluster();
    const int ch8 = chunk / 8, PR = KC_GN_THREADS / ch8p, tid = threadIdx.x, lane = tid % 32;
    const int j = tid % ch8p, pr = tid / ch8p;
    const bool active = j < ch8;
    const int rank = cs > 1 ? (int)cluster.block_rank() : 0, q = blockIdx.x / cs, n = blockIdx.y, gq = chunk / cpg;
    const int p0 = (int)((long long)P * rank / cs), p1 = (int)((long long)P * (rank + 1) / cs);
    const int np = p1 - p0;
    const size_t base = (size_t)n * P * C + (size_t)q * chunk + j * 8;
    float sh[8], s1[8], s2[8], f[8], ga[8], be[8], ad[8];
#pragma unroll
    for (int e = 0; e < 8; e++) sh[e] = s1[e] = s2[e] = ga[e] = be[e] = 0.0f;
    kc_gn_load_add<T>(add, lda, n, q * chunk + j * 8, active, ad);
    if (active && np > 0) {
        kc_unpack8<T>(*(const uint4 *)&x[base + (size_t)p0 * C], sh);
        if (add) kc_gn_add8<T>(sh, ad);
#pragma unroll
        for (int e = 0; e < 8; e++) ga[e] = gamma[q * chunk + j * 8 + e], be[e] = beta[q * chunk + j * 8 + e];
    }
    if (active)
        for (int p = p0 + pr; p < p1; p += KC_GN_BATCH * PR) {
            uint4 u[KC_GN_BATCH];
#pragma unroll
            for (int k = 0; k < KC_GN_BATCH; k++)  // every load of the batch in flight before any use
                if (p + k * PR < p1) u[k] = *(const uint4 *)&x[base + (size_t)(p + k * PR) * C];
#pragma unroll
            for (int k = 0; k < KC_GN_BATCH; k++) {
                if (p + k * PR >= p1) break;
                kc_unpack8<T>(u[k], f);
                if (add) {
                    kc_gn_add8<T>(f, ad);
                    u[k] = kc_pack8<T>(f);
                }
                kc_gn_data[(p + k * PR - p0) * ch8 + j] = u[k];
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    float d = f[e] - sh[e];
                    s1[e] += d, s2[e] += d * d;
                }
            }
        }
    // Lanes of a warp with the same octet (lane % ch8p) first; then one row per warp in shared memory.
    for (int o = ch8p; o < 32; o *= 2)
#pragma unroll
        for (int e = 0; e < 8; e++) {
            s1[e] += __shfl_xor_sync(0xffffffffu, s1[e], o);
            s2[e] += __shfl_xor_sync(0xffffffffu, s2[e], o);
        }
    const int warp = tid / 32;
    if (active && lane < ch8p)
#pragma unroll
        for (int e = 0; e < 8; e++) red1[warp * chunk + j * 8 + e] = s1[e], red2[warp * chunk + j * 8 + e] = s2[e];
    if (active && pr == 0)
#pragma unroll
        for (int e = 0; e < 8; e++) shift[j * 8 + e] = sh[e];
    __syncthreads();
    // Per channel: mean and M2 over this block's pixels (into red1 / red2 row 0).
    for (int c = tid; c < chunk; c += KC_GN_THREADS) {
        float t1 = 0.0f, t2 = 0.0f;
        for (int r = 0; r < KC_GN_THREADS / 32; r++) t1 += red1[r * chunk + c], t2 += red2[r * chunk + c];
        float cnt = np > 0 ? (float)np : 1.0f;
        red1[c] = shift[c] + t1 / cnt;
        red2[c] = fmaxf(t2 - t1 * t1 / cnt, 0.0f);
    }
    __syncthreads();
    // Per group: one warp each (gq <= 8 = warps per block).
    if (warp < gq) {
        int c0 = warp * cpg;
        float m = 0.0f;
        for (int c = lane; c < cpg; c += 32) m += red1[c0 + c];
        for (int o = 16; o; o >>= 1) m += __shfl_xor_sync(0xffffffffu, m, o);
        m /= (float)cpg;
        float M2 = 0.0f;
        for (int c = lane; c < cpg; c += 32) {
            float d = red1[c0 + c] - m;
            M2 += red2[c0 + c] + (float)np * d * d;
        }
        for (int o = 16; o; o >>= 1) M2 += __shfl_xor_sync(0xffffffffu, M2, o);
        if (lane == 0) part[warp] = kc_gn_part3{(float)np * cpg, m, M2};
    }
    if (cs > 1) cluster.sync();  // every block's partials are ready
    else __syncthreads();
    // Thread g*8 + r (the first two warps) reads group g's partial from rank r; 8 lanes merge them.
    if (tid < 64) {
        int g = tid / 8, r = tid % 8;
        float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
        if (g < gq && r < cs) {
            kc_gn_part3 pt = cs > 1 ? cluster.map_shared_rank(part, r)[g] : part[g];
            cnt = pt.count, mean = pt.mean, m2 = pt.m2;
        }
        for (int o = 1; o < 8; o *= 2) {
            float c2 = __shfl_xor_sync(0xffffffffu, cnt, o), mean2 = __shfl_xor_sync(0xffffffffu, mean, o);
            float m22 = __shfl_xor_sync(0xffffffffu, m2, o);
            kc_chan_merge(cnt, mean, m2, c2, mean2, m22);
        }
        if (g < gq && r == 0) gstat[g] = make_float2(mean, rsqrtf(m2 / cnt + eps));
    }
    // Done reading other blocks' shared memory: signal it now, wait for the others only at the end.
    if (cs > 1) asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
    __syncthreads();
    if (active && np > 0) {
        float a[8], b[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            int g = (j * 8 + e) / cpg;
            a[e] = gstat[g].y * ga[e];
            b[e] = be[e] - gstat[g].x * a[e];
        }
#pragma unroll 4
        for (int p = p0 + pr; p < p1; p += PR) {
            kc_unpack8<T>(kc_gn_data[(p - p0) * ch8 + j], f);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                f[e] = f[e] * a[e] + b[e];
                if (silu) f[e] = kc_silu(f[e]);
            }
            *(uint4 *)&y[base + (size_t)p * C] = kc_pack8<T>(f);
        }
    }
    if (cs > 1) asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");  // no block leaves while read
#endif
}

static int kc_gcd(int a, int b) { return b ? kc_gcd(b, a % b) : a; }

// Channels per cluster (lcm(cpg, 8)) and the shared memory a block of a cs-block cluster needs.
static int kc_gn_chunk(int C, int G) {
    int cpg = C / G;
    return cpg / kc_gcd(cpg, 8) * 8;
}
static size_t kc_gn_cluster_smem(const kc_gn_args *g, int cs) {
    return (size_t)((g->P + cs - 1) / cs) * kc_gn_chunk(g->C, g->G) * 2;
}

int kc_gn_cluster_sizes(int cc_major, const kc_gn_args *g, int sizes[4]) {
    int n = 0, chunk = kc_gn_chunk(g->C, g->G);
    bool nhwc = g->sc == 1 && g->sp == g->C && g->sn == (long long)g->P * g->C;
    if (cc_major < 9 || !nhwc || g->C % 8 || chunk > KC_GN_MAX_CHUNK || g->C % chunk) return 0;
    for (int cs = 1; cs <= KC_GN_MAX_CLUSTER; cs *= 2)
        if (kc_gn_cluster_smem(g, cs) <= kc_gn_smem_limit) sizes[n++] = cs;
    return n;
}

// Launches the one-kernel form with clusters of cs blocks.
template <typename T> static int kc_gn_cluster_launch(cudaStream_t s, const kc_gn_args *g, int cs) {
    static int smem_set;  // the opt-in above 48 KiB of dynamic shared memory, once per element type
    int C = g->C, cpg = C / g->G, chunk = kc_gn_chunk(C, g->G), ch8p = 1;
    while (ch8p < chunk / 8) ch8p *= 2;
    size_t smem = kc_gn_cluster_smem(g, cs);
    if (!smem_set) {  // before any launch: the kernel's static shared memory counts against the default 48 KiB
        KC_CUDA(cudaFuncSetAttribute(kc_gn_cluster_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)kc_gn_smem_limit));
        smem_set = 1;
    }
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    cfg.gridDim = dim3((unsigned)(C / chunk * cs), (unsigned)g->N);
    cfg.blockDim = dim3(KC_GN_THREADS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)cs, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = cs > 1 ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, kc_gn_cluster_kernel<T>, (const T *)g->x, (const T *)g->add, g->ld_add,
                                       (T *)g->y, g->gamma, g->beta, C, g->P, cpg, chunk, ch8p, cs, g->eps, g->silu);
    if (e != cudaSuccess) {
        cudaGetLastError();  // a refused launch must not poison the launches after it
        return kiln_error(KILN_EBACKEND, "group norm: %d-block clusters with %zu bytes of shared memory: %s", cs,
                          smem, cudaGetErrorString(e));
    }
    return 0;
}

template <typename T> static int kc_group_norm_t(cudaStream_t s, int cc_major, const kc_gn_args *g, void *partials) {
    const int N = g->N, C = g->C, P = g->P, G = g->G, C8 = C / 8;
    const T *x = (const T *)g->x, *add = (const T *)g->add;
    T *y = (T *)g->y;
    bool nhwc = g->sc == 1 && g->sp == C && g->sn == (long long)P * C;
    bool vec = nhwc && C % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)y % 16 == 0;
    if (vec && g->cluster >= 0) {  // one kernel, when it applies
        int sizes[4], n = kc_gn_cluster_sizes(cc_major, g, sizes), cs = 0;
        for (int i = 0; i < n; i++)
            if (sizes[i] == g->cluster || !g->cluster) cs = sizes[i];  // 0: the largest (most blocks)
        if (cs) return kc_gn_cluster_launch<T>(s, g, cs);
    }
    if (vec && C8 <= 512 && partials) {
        int PR = C8 >= 256 ? 1 : 256 / C8, threads = C8 * PR;
        int S = kc_gn_splits(P, PR);
        kc_gn_partial *part = (kc_gn_partial *)partials;
        float2 *stats = (float2 *)((char *)partials + (size_t)N * G * KC_GN_MAX_SPLITS * sizeof(kc_gn_partial));
        size_t smem = (size_t)(2 * PR + 1) * C * sizeof(float);
        kc_gn_stats_kernel<T><<<dim3(S, N), threads, smem, s>>>(x, add, g->ld_add, C, P, G, S, part);
        KC_LAUNCHED("group_norm_stats");
        const bool merge_in_apply = g->cluster == -2;  // two kernels: each apply block merges the partials
        if (!merge_in_apply) {
            int warps = N * G;
            kc_gn_finalize_kernel<<<(warps + 7) / 8, 256, 0, s>>>(part, stats, warps, G, S, g->eps);
            KC_LAUNCHED("group_norm_finalize");
        }
        // pixels per block: fewer on small maps; more when every block merges the partials itself
        int ppb = PR * ((long long)N * P * C8 >= 65536 ? (merge_in_apply ? 32 : 8) : 2);
        kc_gn_apply_kernel<T><<<dim3((P + ppb - 1) / ppb, N), threads, merge_in_apply ? G * sizeof(float2) : 0, s>>>(
            x, add, g->ld_add, y, g->gamma, g->beta, C, P, G, g->silu, stats, ppb, merge_in_apply ? part : NULL, S,
            g->eps);
        KC_LAUNCHED("group_norm_apply");
        return 0;
    }
    kc_gn_generic_kernel<T><<<dim3(G, N), 256, 0, s>>>(x, add, g->ld_add, y, g->gamma, g->beta, C, P, G, g->sn, g->sc,
                                                       g->sp, g->eps, g->silu);
    KC_LAUNCHED("group_norm");
    return 0;
}

int kc_group_norm(cudaStream_t s, kc_dtype dt, int cc_major, const kc_gn_args *g, void *partials) {
    if (g->G <= 0 || g->C % g->G) return kiln_error(KILN_EINVAL, "group norm: %d channels in %d groups", g->C, g->G);
    int rc = 0;
    KC_DISPATCH_DTYPE(dt, T, rc = kc_group_norm_t<T>(s, cc_major, g, partials));
    return rc;
}

// LayerNorm: one block of 128 threads per row; the row stays in L1 between the passes.
template <typename T>
__global__ void kc_layer_norm_kernel(const T *x, T *y, const float *gamma, const float *beta, int C, float eps) {
    __shared__ float red[4];
    const T *xr = x + (size_t)blockIdx.x * C;
    T *yr = y + (size_t)blockIdx.x * C;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) acc += kc_to_f(xr[c]);
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    float mean = (red[0] + red[1] + red[2] + red[3]) / (float)C;
    __syncthreads();
    acc = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = kc_to_f(xr[c]) - mean;
        acc += d * d;
    }
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = acc;
    __syncthreads();
    float rstd = rsqrtf((red[0] + red[1] + red[2] + red[3]) / (float)C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        yr[c] = kc_from_f<T>((kc_to_f(xr[c]) - mean) * rstd * gamma[c] + beta[c]);
}

// LayerNorm with the row in registers: one warp per row, V vectors of 8 elements per lane (C = 8 * 32 * V at most).
template <int V, typename T>
__global__ void kc_layer_norm_warp_kernel(const T *x, T *y, const float *gamma, const float *beta, long long rows,
                                          int C, float eps) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32, nv = C / 8;
    if (row >= rows) return;
    const T *xr = x + row * C;
    constexpr bool PRE = V <= 3;  // registers for gamma and beta too (wider rows would lose occupancy)
    constexpr int VP = PRE ? V : 1;
    float v[V][8], ga[VP][8], be[VP][8];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < V; k++) {
        int j = lane + 32 * k;
        if (j < nv) {  // gamma and beta are loaded with the row, not after the reductions
            kc_unpack8<T>(*(const uint4 *)&xr[j * 8], v[k]);
        }
        if (PRE && j < nv) {
            const int kp = PRE ? k : 0;
            float4 g0 = *(const float4 *)&gamma[j * 8], g1 = *(const float4 *)&gamma[j * 8 + 4];
            float4 b0 = *(const float4 *)&beta[j * 8], b1 = *(const float4 *)&beta[j * 8 + 4];
            ga[kp][0] = g0.x, ga[kp][1] = g0.y, ga[kp][2] = g0.z, ga[kp][3] = g0.w;
            ga[kp][4] = g1.x, ga[kp][5] = g1.y, ga[kp][6] = g1.z, ga[kp][7] = g1.w;
            be[kp][0] = b0.x, be[kp][1] = b0.y, be[kp][2] = b0.z, be[kp][3] = b0.w;
            be[kp][4] = b1.x, be[kp][5] = b1.y, be[kp][6] = b1.z, be[kp][7] = b1.w;
        }
        if (j < nv) {
#pragma unroll
            for (int e = 0; e < 8; e++) sum += v[k][e];
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
#pragma unroll
            for (int e = 0; e < 8; e++)
                v[k][e] = (v[k][e] - mean) * rstd * (PRE ? ga[PRE ? k : 0][e] : gamma[j * 8 + e]) +
                          (PRE ? be[PRE ? k : 0][e] : beta[j * 8 + e]);
            *(uint4 *)&y[row * C + j * 8] = kc_pack8<T>(v[k]);
        }
    }
}

template <typename T>
static int kc_layer_norm_t(cudaStream_t s, const T *x, T *y, const float *gamma, const float *beta, long long rows,
                           int C, float eps) {
    int V = (C / 8 + 31) / 32;
    if (C % 8 == 0 && V <= 8) {
        unsigned blocks = (unsigned)((rows + 7) / 8);  // 8 warps (rows) per block
        switch (V) {
        case 1: kc_layer_norm_warp_kernel<1, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 2: kc_layer_norm_warp_kernel<2, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 3: kc_layer_norm_warp_kernel<3, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 4: kc_layer_norm_warp_kernel<4, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 5: kc_layer_norm_warp_kernel<5, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        case 6: kc_layer_norm_warp_kernel<6, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        default: kc_layer_norm_warp_kernel<8, T><<<blocks, 256, 0, s>>>(x, y, gamma, beta, rows, C, eps); break;
        }
        KC_LAUNCHED("layer_norm");
        return 0;
    }
    kc_layer_norm_kernel<T><<<(unsigned)rows, 128, 0, s>>>(x, y, gamma, beta, C, eps);
    KC_LAUNCHED("layer_norm");
    return 0;
}

int kc_layer_norm(cudaStream_t s, kc_dtype dt, const kc_half *x, kc_half *y, const float *gamma, const float *beta,
                  long long rows, int C, float eps) {
    if (rows <= 0) return 0;
    int rc = 0;
    KC_DISPATCH_DTYPE(dt, T, rc = kc_layer_norm_t<T>(s, (const T *)x, (T *)y, gamma, beta, rows, C, eps));
    return rc;
}
