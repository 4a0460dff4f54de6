// cuda_attention.cu — scaled dot-product attention over 16-bit [B, L, H*D] rows (fp16 or bf16:
// every kernel is a template on the element type T).
//
// Flash attention (head dims that are multiples of 8 up to 160): each block of 4 warps owns 64
// query rows of one (batch, head); K/V tiles of 64 rows stream through shared memory (cp.async,
// double-buffered); S = Q K^T and O += P V run on tensor cores (mma.sync m16n8k16, fp32
// accumulation); the softmax is online (running max and sum per row), so no score matrix is
// ever stored. Head dims that are not a multiple of 16 (40) are zero-padded in shared memory.
// fp16: the probabilities are exponentiated in fp16 pairs (ex2.approx.f16x2, two per instruction):
// they enter P V as fp16 anyway, and the row sums add exactly the rounded values used. bf16: the
// same trick would round the exponent argument to bf16 (8 bits: 2^x off by up to ~1% at x = -8),
// so each exponential is computed in fp32 and the pair rounded to bf16 once; the row sums again
// add the rounded values.
//
// Fallback (any head dim): scores through cuBLAS into fp32 scratch, a softmax kernel, then P V.
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_ptx.cuh"

#define KC_FA_THREADS 128

// (2^a, 2^b) as a pair of T packed in one register (the A fragment of P V).
template <typename T> __device__ __forceinline__ uint32_t kc_ex2_pair(float a, float b);
template <> __device__ __forceinline__ uint32_t kc_ex2_pair<__half>(float a, float b) {  // one MUFU op
    __half2 h = __floats2half2_rn(a, b);
    uint32_t in = *(uint32_t *)&h, out;
    asm("ex2.approx.f16x2 %0, %1;\n" : "=r"(out) : "r"(in));
    return out;
}
template <> __device__ __forceinline__ uint32_t kc_ex2_pair<__nv_bfloat16>(float a, float b) {
    return kc_pack2<__nv_bfloat16>(exp2f(a), exp2f(b));
}

// D: head dim (multiple of 8). DP: D rounded up to 16. MT: 16-row query tiles per warp (the K/V
// fragments loaded from shared memory serve MT tiles). Shared rows have DP + 8 halves (16-byte
// aligned rows, and the +8 staggers rows across banks for ldmatrix).
template <typename T, int D, int MT, int BKV>
__global__ void __launch_bounds__(KC_FA_THREADS, MT == 2 ? 4 : 1)  // MT 2: 4 blocks per SM fill one wave
    kc_flash_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v, T *__restrict__ o,
                    int H, int Lq, int Lk, long long ldq, long long ldk, long long ldv, long long ldo,
                    float scale_log2, int causal) {
    typedef typename kc_pair_of<T>::type T2;
    constexpr int BQ = 64 * MT;         // 4 warps x MT x 16 rows
    constexpr int DP = (D + 15) / 16 * 16;
    constexpr int PITCH = DP + 8;
    constexpr int KSTEPS = DP / 16;     // k-steps of S = Q K^T over the head dim
    constexpr int DTILES = D / 8;       // n-tiles of O over the head dim
    constexpr int CHUNKS = D / 8;       // 16-byte chunks per row
    constexpr int NT = BKV / 8;   // n-tiles of S over the kv tile
    extern __shared__ __align__(16) kc_half smem[];     // one declaration for every T: raw 16-bit storage
    T *sQ = (T *)smem;                                  // [BQ][PITCH]
    T *sK = sQ + BQ * PITCH;                            // [2][BKV][PITCH]
    T *sV = sK + 2 * BKV * PITCH;                       // [2][BKV][PITCH]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int qb = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
    const T *qg = q + (size_t)b * Lq * ldq + (size_t)h * D;
    const T *kg = k + (size_t)b * Lk * ldk + (size_t)h * D;
    const T *vg = v + (size_t)b * Lk * ldv + (size_t)h * D;

    // Zero the padding columns D..DP of Q and K (they enter the dot products). When D % 16 == 8,
    // V's padding tile holds a column of ones: the P V product then also yields the row sums of P,
    // on the tensor cores instead of 32 additions per thread and tile.
    constexpr bool SUM_BY_MMA = DP != D;
    if (DP != D) {
        for (int r = tid; r < BQ + 4 * BKV; r += KC_FA_THREADS) {
            T *row = r < BQ ? sQ + r * PITCH : sK + (r - BQ) * PITCH;  // sK is followed by sV
            bool is_v = r >= BQ + 2 * BKV;
            for (int c = D; c < DP; c++) row[c] = kc_from_f<T>(is_v && c == D ? 1.0f : 0.0f);
        }
    }
    for (int i = tid; i < BQ * CHUNKS; i += KC_FA_THREADS) {
        int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        bool ok = qb + r < Lq;
        kc_cp_async16(sQ + r * PITCH + c, qg + (size_t)(ok ? qb + r : 0) * ldq + c, ok);
    }
    int kv_end = Lk;
    if (causal) kv_end = min(Lk, qb + BQ);
    const int n_tiles = (kv_end + BKV - 1) / BKV;
    auto load_kv = [&](int tile, int buf) {
        int k0 = tile * BKV;
        T *dk = sK + buf * BKV * PITCH, *dv = sV + buf * BKV * PITCH;
        for (int i = tid; i < BKV * CHUNKS; i += KC_FA_THREADS) {
            int r = i / CHUNKS, c = (i % CHUNKS) * 8;
            bool ok = k0 + r < Lk;
            size_t row = ok ? k0 + r : 0;
            kc_cp_async16(dk + r * PITCH + c, kg + row * ldk + c, ok);
            kc_cp_async16(dv + r * PITCH + c, vg + row * ldv + c, ok);
        }
    };
    if (n_tiles > 0) load_kv(0, 0);
    kc_cp_commit();

    constexpr int ATILES = SUM_BY_MMA ? DTILES + 1 : DTILES;  // + the row-sum tile
    float acc[MT][ATILES][4];
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < ATILES; i++) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.0f;
        m_run[mt][0] = m_run[mt][1] = -INFINITY;
        l_run[mt][0] = l_run[mt][1] = 0.0f;
    }
    const int wrow = warp * 16 * MT;  // first query row of this warp within the block

    for (int j = 0; j < n_tiles; j++) {
        if (j + 1 < n_tiles) load_kv(j + 1, (j + 1) & 1);
        kc_cp_commit();
        kc_cp_wait<1>();
        __syncthreads();
        const T *cK = sK + (j & 1) * BKV * PITCH, *cV = sV + (j & 1) * BKV * PITCH;

        // S = Q K^T: MT x 16 rows by 64 kv columns
        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < NT; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ks++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                kc_ldmatrix_x4(a[mt], sQ + (wrow + mt * 16 + (lane % 16)) * PITCH + ks * 16 + (lane / 16) * 8);
#pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                uint32_t bb[4];
                kc_ldmatrix_x4(bb, cK + (nt * 8 + (lane % 8) + (lane / 16) * 8) * PITCH + ks * 16 +
                                       ((lane / 8) % 2) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    kc_mma16816_t<T>(s[mt][nt], a[mt], bb[0], bb[1]);
                    kc_mma16816_t<T>(s[mt][nt + 1], a[mt], bb[2], bb[3]);
                }
            }
        }
        const int kv0 = j * BKV;
        const bool need_mask = kv0 + BKV > Lk || (causal && kv0 + BKV > qb);
        uint32_t pk[MT][NT][2];  // P as pairs of T: the A fragments of P V
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const int row0 = qb + wrow + mt * 16 + g;  // this thread's rows: row0 and row0 + 8
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    if (need_mask) {
                        int col = kv0 + nt * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
                        if (col >= Lk || (causal && col > row)) s[mt][nt][e] = -INFINITY;
                    }
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[mt][nt][e]);
                }
            }
            // m_run is kept in scaled log2 units; p = 2^(s * scale_log2 - m): one FFMA per score
            float alpha[2], m_use[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                float m_new = fmaxf(m_run[mt][r], mx[r] * scale_log2);
                m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a fully masked row gives p = 0, not NaN
                alpha[r] = exp2f(m_run[mt][r] - m_use[r]);
                m_run[mt][r] = m_new;
            }
            float rs[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    pk[mt][nt][r] = kc_ex2_pair<T>(fmaf(s[mt][nt][2 * r], scale_log2, -m_use[r]),
                                                   fmaf(s[mt][nt][2 * r + 1], scale_log2, -m_use[r]));
                    if (!SUM_BY_MMA) {
                        float2 f = kc_to_f2(*(const T2 *)&pk[mt][nt][r]);
                        rs[r] += f.x + f.y;  // sum the rounded values the product uses
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) l_run[mt][r] = l_run[mt][r] * alpha[r] + rs[r];
#pragma unroll
            for (int i = 0; i < ATILES; i++) {
                acc[mt][i][0] *= alpha[0], acc[mt][i][1] *= alpha[0];
                acc[mt][i][2] *= alpha[1], acc[mt][i][3] *= alpha[1];
            }
        }
        // O += P V
#pragma unroll
        for (int kk = 0; kk < BKV / 16; kk++) {
#pragma unroll
            for (int dt = 0; dt < DTILES; dt += 2) {
                uint32_t bb[4];
                kc_ldmatrix_x4_trans(bb, cV + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * PITCH + dt * 8 +
                                             (lane / 16) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    uint32_t a[4] = {pk[mt][2 * kk][0], pk[mt][2 * kk][1], pk[mt][2 * kk + 1][0],
                                     pk[mt][2 * kk + 1][1]};
                    kc_mma16816_t<T>(acc[mt][dt], a, bb[0], bb[1]);
                    if (dt + 1 < ATILES) kc_mma16816_t<T>(acc[mt][dt + 1], a, bb[2], bb[3]);
                }
            }
        }
        __syncthreads();  // the buffer just read is the next load's target
    }
    kc_cp_wait<0>();

    // row sums across the 4 threads of a row, then write O / l
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l;
            if (SUM_BY_MMA) {  // column D of the sum tile sits with the row's t == 0 thread
                l = __shfl_sync(0xffffffffu, acc[mt][ATILES - 1][2 * r], lane & ~3);
            } else {
                l = l_run[mt][r];
                l += __shfl_xor_sync(0xffffffffu, l, 1);
                l += __shfl_xor_sync(0xffffffffu, l, 2);
            }
            int row = qb + wrow + mt * 16 + g + r * 8;
            if (row >= Lq) continue;
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
            T *orow = o + ((size_t)b * Lq + row) * ldo + (size_t)h * D;
#pragma unroll
            for (int dt = 0; dt < DTILES; dt++)
                *(T2 *)&orow[dt * 8 + 2 * t] = kc_from_f2<T>(acc[mt][dt][2 * r] * inv, acc[mt][dt][2 * r + 1] * inv);
        }
    }
}

int kc_attention_flash_supported(int D) {
    return D == 32 || D == 40 || D == 48 || D == 64 || D == 80 || D == 96 || D == 128 || D == 160;
}

template <typename T, int D>
static int kc_flash_launch(cudaStream_t s, const T *q, const T *k, const T *v, T *o, int B, int H, int Lq, int Lk,
                           long long ldq, long long ldk, long long ldv, long long ldo, float scale, int causal) {
    // Two query tiles per warp where the registers allow it (small heads): halves the shared-memory
    // traffic of K and V per tensor-core op. KILN_FA_MT1 forces one (for A/B timing).
    constexpr int DP = (D + 15) / 16 * 16;
    static int mt1 = -1;
    if (mt1 < 0) mt1 = getenv("KILN_FA_MT1") != NULL;
    if (D <= 64 && !mt1) {  // 128 query rows per block, kv tiles of 32 (registers for 4 blocks per SM)
        constexpr int MT = 2, BKV = 32;
        size_t smem = (size_t)(64 * MT + 4 * BKV) * (DP + 8) * sizeof(kc_half);
        static bool configured = false;  // the attribute is per kernel; setting it twice is harmless
        if (!configured) {
            KC_CUDA(cudaFuncSetAttribute(kc_flash_kernel<T, D, MT, BKV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            configured = true;
        }
        dim3 grid((Lq + 64 * MT - 1) / (64 * MT), H, B);
        kc_flash_kernel<T, D, MT, BKV><<<grid, KC_FA_THREADS, smem, s>>>(q, k, v, o, H, Lq, Lk, ldq, ldk, ldv, ldo,
                                                                         scale * 1.4426950408889634f, causal);
    } else {
        constexpr int BKV = 64;
        size_t smem = (size_t)(64 + 4 * BKV) * (DP + 8) * sizeof(kc_half);
        static bool configured = false;
        if (!configured) {
            KC_CUDA(cudaFuncSetAttribute(kc_flash_kernel<T, D, 1, BKV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            configured = true;
        }
        dim3 grid((Lq + 63) / 64, H, B);
        kc_flash_kernel<T, D, 1, BKV><<<grid, KC_FA_THREADS, smem, s>>>(q, k, v, o, H, Lq, Lk, ldq, ldk, ldv, ldo,
                                                                        scale * 1.4426950408889634f, causal);
    }
    KC_LAUNCHED("flash_attention");
    return 0;
}

template <typename T>
static int kc_flash_dispatch(cudaStream_t s, const T *q, const T *k, const T *v, T *o, int B, int H, int Lq, int Lk,
                             int D, long long ldq, long long ldk, long long ldv, long long ldo, float scale,
                             int causal) {
    switch (D) {
    case 32: return kc_flash_launch<T, 32>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 40: return kc_flash_launch<T, 40>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 48: return kc_flash_launch<T, 48>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 64: return kc_flash_launch<T, 64>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 80: return kc_flash_launch<T, 80>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 96: return kc_flash_launch<T, 96>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 128: return kc_flash_launch<T, 128>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 160: return kc_flash_launch<T, 160>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    default: return kiln_error(KILN_EUNSUPPORTED, "flash attention: head dim %d", D);
    }
}

int kc_attention_flash(cudaStream_t s, kc_dtype dt, const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o,
                       int B, int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv, long long ldo,
                       float scale, int causal) {
    if (ldq % 8 || ldk % 8 || ldv % 8 || ldo % 2 || (uintptr_t)q % 16 || (uintptr_t)k % 16 || (uintptr_t)v % 16)
        return kiln_error(KILN_EUNSUPPORTED, "flash attention: rows not 16-byte aligned");
    if (dt == KC_BF16)
        return kc_flash_dispatch<__nv_bfloat16>(s, (const __nv_bfloat16 *)q, (const __nv_bfloat16 *)k,
                                                (const __nv_bfloat16 *)v, (__nv_bfloat16 *)o, B, H, Lq, Lk, D, ldq,
                                                ldk, ldv, ldo, scale, causal);
    return kc_flash_dispatch<__half>(s, q, k, v, o, B, H, Lq, Lk, D, ldq, ldk, ldv, ldo, scale, causal);
}

// ---- fallback: softmax over rows of fp32 scores into 16-bit probabilities
template <typename T>
__global__ void kc_softmax_rows_kernel(const float *sc, T *p, int Lq, int Lk, int causal) {
    __shared__ float red[32];
    size_t row = blockIdx.x;
    int qi = (int)(row % Lq);
    const float *in = sc + row * Lk;
    T *out = p + row * Lk;
    int lim = causal ? min(Lk, qi + 1) : Lk;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < lim; c += blockDim.x) m = fmaxf(m, in[c]);
    for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < (int)blockDim.x / 32; w++) m = fmaxf(m, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int c = threadIdx.x; c < lim; c += blockDim.x) sum += __expf(in[c] - m);
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) sum += red[w];
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int c = threadIdx.x; c < Lk; c += blockDim.x)
        out[c] = kc_from_f<T>(c < lim ? __expf(in[c] - m) * inv : 0.0f);
}

size_t kc_attention_fallback_scratch(int H, int Lq, int Lk) {
    return (size_t)H * Lq * Lk * (sizeof(float) + sizeof(kc_half)) + 256;
}

int kc_attention_fallback(kc_libs *libs, const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o, int B,
                          int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv, long long ldo,
                          float scale, int causal, void *scratch) {
    float *sc = (float *)scratch;
    kc_half *p = (kc_half *)((char *)scratch + (((size_t)H * Lq * Lk * sizeof(float) + 255) & ~(size_t)255));
    for (int b = 0; b < B; b++) {
        KILN_TRY(kc_gemm_batched(libs, Lq, Lk, D, scale, q + (size_t)b * Lq * ldq, (int)ldq, D,
                                 k + (size_t)b * Lk * ldk, (int)ldk, D, 1, sc, Lk, (long long)Lq * Lk, 1, H));
        KC_DISPATCH_DTYPE(libs->dtype, T,
                          (kc_softmax_rows_kernel<T><<<(unsigned)(H * Lq), 256, 0, libs->stream>>>(sc, (T *)p, Lq,
                                                                                                   Lk, causal)));
        KC_LAUNCHED("softmax");
        KILN_TRY(kc_gemm_batched(libs, Lq, D, Lk, 1.0f, p, Lk, (long long)Lq * Lk, v + (size_t)b * Lk * ldv, (int)ldv,
                                 D, 0, o + (size_t)b * Lq * ldo, (int)ldo, D, 0, H));
    }
    return 0;
}
