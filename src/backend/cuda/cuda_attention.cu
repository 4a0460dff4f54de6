// cuda_attention.cu — scaled dot-product attention over fp16 [B, L, H*D] rows.
//
// Flash attention (head dims that are multiples of 8 up to 160): each block of 4 warps owns 64
// query rows of one (batch, head); K/V tiles of 64 rows stream through shared memory (cp.async,
// double-buffered); S = Q K^T and O += P V run on tensor cores (mma.sync m16n8k16, fp32
// accumulation); the softmax is online (running max and sum per row), so no score matrix is
// ever stored. Head dims that are not a multiple of 16 (40) are zero-padded in shared memory.
//
// Fallback (any head dim): scores through cuBLAS into fp32 scratch, a softmax kernel, then P V.
#include <float.h>
#include <math.h>

#include "backend/cuda/cuda_internal.h"

#define KC_FA_BQ 64
#define KC_FA_BKV 64
#define KC_FA_THREADS 128

__device__ __forceinline__ uint32_t kc_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void kc_cp_async16(void *smem, const void *gmem, bool valid) {
    int bytes = valid ? 16 : 0;  // 0: zero-fill the 16 bytes (rows past the end)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kc_smem_addr(smem)), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void kc_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void kc_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void kc_ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kc_smem_addr(p)));
}
__device__ __forceinline__ void kc_ldmatrix_x4_trans(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kc_smem_addr(p)));
}
// D(16x8, f32) += A(16x16, f16, row) * B(16x8, f16, col)
__device__ __forceinline__ void kc_mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t kc_pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&h;
}

// D: head dim (multiple of 8). DP: D rounded up to 16. Shared rows have DP + 8 halves (16-byte
// aligned rows, and the +8 staggers rows across banks for ldmatrix).
template <int D>
__global__ void __launch_bounds__(KC_FA_THREADS)
    kc_flash_kernel(const kc_half *__restrict__ q, const kc_half *__restrict__ k, const kc_half *__restrict__ v,
                    kc_half *__restrict__ o, int H, int Lq, int Lk, long long ldq, long long ldk, long long ldv,
                    long long ldo, float scale_log2, int causal) {
    constexpr int DP = (D + 15) / 16 * 16;
    constexpr int PITCH = DP + 8;
    constexpr int KSTEPS = DP / 16;     // k-steps of S = Q K^T over the head dim
    constexpr int DTILES = D / 8;       // n-tiles of O over the head dim
    constexpr int CHUNKS = D / 8;       // 16-byte chunks per row
    extern __shared__ __align__(16) kc_half smem[];
    kc_half *sQ = smem;                                 // [BQ][PITCH]
    kc_half *sK = sQ + KC_FA_BQ * PITCH;                // [2][BKV][PITCH]
    kc_half *sV = sK + 2 * KC_FA_BKV * PITCH;           // [2][BKV][PITCH]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int qb = blockIdx.x * KC_FA_BQ, h = blockIdx.y, b = blockIdx.z;
    const kc_half *qg = q + (size_t)b * Lq * ldq + (size_t)h * D;
    const kc_half *kg = k + (size_t)b * Lk * ldk + (size_t)h * D;
    const kc_half *vg = v + (size_t)b * Lk * ldv + (size_t)h * D;

    // Zero the padding columns D..DP of Q and K (they enter the dot products).
    if (DP != D) {
        for (int r = tid; r < KC_FA_BQ + 2 * KC_FA_BKV; r += KC_FA_THREADS) {
            kc_half *row = r < KC_FA_BQ ? sQ + r * PITCH : sK + (r - KC_FA_BQ) * PITCH;
            for (int c = D; c < DP; c++) row[c] = __float2half(0.0f);
        }
    }
    for (int i = tid; i < KC_FA_BQ * CHUNKS; i += KC_FA_THREADS) {
        int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        bool ok = qb + r < Lq;
        kc_cp_async16(sQ + r * PITCH + c, qg + (size_t)(ok ? qb + r : 0) * ldq + c, ok);
    }
    int kv_end = Lk;
    if (causal) kv_end = min(Lk, qb + KC_FA_BQ);
    const int n_tiles = (kv_end + KC_FA_BKV - 1) / KC_FA_BKV;
    auto load_kv = [&](int tile, int buf) {
        int k0 = tile * KC_FA_BKV;
        kc_half *dk = sK + buf * KC_FA_BKV * PITCH, *dv = sV + buf * KC_FA_BKV * PITCH;
        for (int i = tid; i < KC_FA_BKV * CHUNKS; i += KC_FA_THREADS) {
            int r = i / CHUNKS, c = (i % CHUNKS) * 8;
            bool ok = k0 + r < Lk;
            size_t row = ok ? k0 + r : 0;
            kc_cp_async16(dk + r * PITCH + c, kg + row * ldk + c, ok);
            kc_cp_async16(dv + r * PITCH + c, vg + row * ldv + c, ok);
        }
    };
    if (n_tiles > 0) load_kv(0, 0);
    kc_cp_commit();

    float acc[DTILES][4];
#pragma unroll
    for (int i = 0; i < DTILES; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    const int row0 = qb + warp * 16 + g;  // this thread's two query rows: row0 and row0 + 8

    for (int j = 0; j < n_tiles; j++) {
        if (j + 1 < n_tiles) load_kv(j + 1, (j + 1) & 1);
        kc_cp_commit();
        kc_cp_wait<1>();
        __syncthreads();
        const kc_half *cK = sK + (j & 1) * KC_FA_BKV * PITCH, *cV = sV + (j & 1) * KC_FA_BKV * PITCH;

        // S = Q K^T for this warp's 16 rows x 64 kv columns (8 n-tiles)
        float s[KC_FA_BKV / 8][4];
#pragma unroll
        for (int i = 0; i < KC_FA_BKV / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ks++) {
            uint32_t a[4];
            kc_ldmatrix_x4(a, sQ + (warp * 16 + (lane % 16)) * PITCH + ks * 16 + (lane / 16) * 8);
#pragma unroll
            for (int nt = 0; nt < KC_FA_BKV / 8; nt += 2) {
                uint32_t bb[4];
                kc_ldmatrix_x4(bb, cK + (nt * 8 + (lane % 8) + (lane / 16) * 8) * PITCH + ks * 16 +
                                       ((lane / 8) % 2) * 8);
                kc_mma16816(s[nt], a, bb[0], bb[1]);
                kc_mma16816(s[nt + 1], a, bb[2], bb[3]);
            }
        }
        // mask, scale (log2 domain), running max
        const int kv0 = j * KC_FA_BKV;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < KC_FA_BKV / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int col = kv0 + nt * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
                float val = s[nt][e] * scale_log2;
                if (col >= Lk || (causal && col > row)) val = -INFINITY;
                s[nt][e] = val;
                mx[e >> 1] = fmaxf(mx[e >> 1], val);
            }
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float m_new = fmaxf(m_run[r], mx[r]);
            alpha[r] = m_new == -INFINITY ? 1.0f : exp2f(m_run[r] - m_new);
            m_run[r] = m_new;
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < KC_FA_BKV / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float m = m_run[e >> 1];
                float p = m == -INFINITY ? 0.0f : exp2f(s[nt][e] - m);
                s[nt][e] = p;
                rs[e >> 1] += p;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) l_run[r] = l_run[r] * alpha[r] + rs[r];
#pragma unroll
        for (int i = 0; i < DTILES; i++) {
            acc[i][0] *= alpha[0], acc[i][1] *= alpha[0];
            acc[i][2] *= alpha[1], acc[i][3] *= alpha[1];
        }
        // O += P V: P's accumulator fragments are already the A fragments of the next product.
#pragma unroll
        for (int kk = 0; kk < KC_FA_BKV / 16; kk++) {
            uint32_t a[4];
            a[0] = kc_pack_half2(s[2 * kk][0], s[2 * kk][1]);
            a[1] = kc_pack_half2(s[2 * kk][2], s[2 * kk][3]);
            a[2] = kc_pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = kc_pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dt = 0; dt < DTILES; dt += 2) {
                uint32_t bb[4];
                kc_ldmatrix_x4_trans(bb, cV + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * PITCH + dt * 8 +
                                             (lane / 16) * 8);
                kc_mma16816(acc[dt], a, bb[0], bb[1]);
                if (dt + 1 < DTILES) kc_mma16816(acc[dt + 1], a, bb[2], bb[3]);
            }
        }
        __syncthreads();  // the buffer just read is the next load's target
    }
    kc_cp_wait<0>();

    // row sums across the 4 threads of a row, then write O / l
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int row = row0 + r * 8;
        if (row >= Lq) continue;
        float inv = l_run[r] > 0.0f ? 1.0f / l_run[r] : 0.0f;
        kc_half *orow = o + ((size_t)b * Lq + row) * ldo + (size_t)h * D;
#pragma unroll
        for (int dt = 0; dt < DTILES; dt++)
            *(__half2 *)&orow[dt * 8 + 2 * t] = __floats2half2_rn(acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv);
    }
}

int kc_attention_flash_supported(int D) {
    return D == 32 || D == 40 || D == 48 || D == 64 || D == 80 || D == 96 || D == 128 || D == 160;
}

template <int D>
static int kc_flash_launch(cudaStream_t s, const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o, int B,
                           int H, int Lq, int Lk, long long ldq, long long ldk, long long ldv, long long ldo,
                           float scale, int causal) {
    constexpr int DP = (D + 15) / 16 * 16;
    size_t smem = (size_t)(KC_FA_BQ + 4 * KC_FA_BKV) * (DP + 8) * sizeof(kc_half);
    static bool configured = false;  // the attribute is per kernel; setting it twice is harmless
    if (!configured) {
        KC_CUDA(cudaFuncSetAttribute(kc_flash_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        configured = true;
    }
    dim3 grid((Lq + KC_FA_BQ - 1) / KC_FA_BQ, H, B);
    kc_flash_kernel<D><<<grid, KC_FA_THREADS, smem, s>>>(q, k, v, o, H, Lq, Lk, ldq, ldk, ldv, ldo,
                                                         scale * 1.4426950408889634f, causal);
    KC_LAUNCHED("flash_attention");
    return 0;
}

int kc_attention_flash(cudaStream_t s, const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o, int B,
                       int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv, long long ldo,
                       float scale, int causal) {
    if (ldq % 8 || ldk % 8 || ldv % 8 || ldo % 2 || (uintptr_t)q % 16 || (uintptr_t)k % 16 || (uintptr_t)v % 16)
        return kiln_error(KILN_EUNSUPPORTED, "flash attention: rows not 16-byte aligned");
    switch (D) {
    case 32: return kc_flash_launch<32>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 40: return kc_flash_launch<40>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 48: return kc_flash_launch<48>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 64: return kc_flash_launch<64>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 80: return kc_flash_launch<80>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 96: return kc_flash_launch<96>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 128: return kc_flash_launch<128>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    case 160: return kc_flash_launch<160>(s, q, k, v, o, B, H, Lq, Lk, ldq, ldk, ldv, ldo, scale, causal);
    default: return kiln_error(KILN_EUNSUPPORTED, "flash attention: head dim %d", D);
    }
}

// ---- fallback: softmax over rows of fp32 scores into fp16 probabilities
__global__ void kc_softmax_rows_kernel(const float *sc, kc_half *p, int Lq, int Lk, int causal) {
    __shared__ float red[32];
    size_t row = blockIdx.x;
    int qi = (int)(row % Lq);
    const float *in = sc + row * Lk;
    kc_half *out = p + row * Lk;
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
        out[c] = __float2half(c < lim ? __expf(in[c] - m) * inv : 0.0f);
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
        kc_softmax_rows_kernel<<<(unsigned)(H * Lq), 256, 0, libs->stream>>>(sc, p, Lq, Lk, causal);
        KC_LAUNCHED("softmax");
        KILN_TRY(kc_gemm_batched(libs, Lq, D, Lk, 1.0f, p, Lk, (long long)Lq * Lk, v + (size_t)b * Lk * ldv, (int)ldv,
                                 D, 0, o + (size_t)b * Lq * ldo, (int)ldo, D, 0, H));
    }
    return 0;
}
