// cuda_conv_igemm.cu — implicit-GEMM convolution: NHWC 16-bit input, [O,kh,kw,C] 16-bit weights,
// y = conv(x) + bias (+ residual), with no im2col buffer. fp16 or bf16: the kernel is a template on
// the element type T, which only the tensor-core op and the epilogue see (the copies move bytes).
//
// The convolution is the product Y[P, O] = A[P, K] W[O, K]^T over pixels P = N*Ho*Wo and
// K = kh*kw*C, where A's row p is the patch under output pixel p (k = (r*kw + s)*C + c, the
// order the weights are stored in). A is never materialised: each block gathers its BM x BK
// slice of A straight from x with cp.async, 16 bytes (8 channels of one tap) per copy, and
// zero-fills the copies that fall in the padding (cp.async with source size 0). C % 8 == 0
// keeps every 16-byte chunk inside one tap. The products run on tensor cores (mma.sync
// m16n8k16, fp32 accumulation, operands from shared memory through ldmatrix), with a 3- or
// 4-stage cp.async pipeline; the epilogue adds the bias and the residual in fp32 and rounds once, as the
// cuBLASLt epilogue of the im2col path does.
//
// Several block shapes are compiled; cuda_conv.cu times each on the real shape and keeps the
// fastest (or another method when that is faster still).
#include <limits.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_ptx.cuh"


typedef struct kc_ig_params {
    const kc_half *x, *w, *bias, *res;
    kc_half *y;
    int C, H, W, O, kw, stride, pad, Ho, Wo;
    int M, K;                // M = N*Ho*Wo output pixels, K = kh*kw*C
} kc_ig_params;

// Block tile BM pixels x BN output channels; warps tile it WM x WN each; K advances BK (32 or
// 64) per stage. Shared rows are BK + 8 halves (80 or 144 bytes): the 8 rows one ldmatrix phase
// reads then start in 8 different 4-bank groups, so the reads are free of bank conflicts.
template <typename T, int BM, int BN, int WM, int WN, int BK, int STAGES, int MINB>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32, MINB) kc_igemm_kernel(kc_ig_params p) {
    typedef typename kc_pair_of<T>::type T2;
    constexpr int WARPS_N = BN / WN;
    constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    constexpr int MT = WM / 16, NT = WN / 8;
    constexpr int PITCH = BK + 8;
    constexpr int TPR = BK / 8;                     // threads per row slice, 16 bytes each
    constexpr int ROWS_PER_PASS = THREADS / TPR;
    constexpr int A_ROWS = BM / ROWS_PER_PASS;      // A rows each thread copies per stage
    constexpr int B_ROWS = BN / ROWS_PER_PASS;
    static_assert(BM % ROWS_PER_PASS == 0 && BN % ROWS_PER_PASS == 0, "tile rows must split evenly");
    static_assert(NT % 2 == 0 && WM % 16 == 0, "warp tile");
    extern __shared__ __align__(16) kc_half kc_ig_shared[];
    kc_half *sA = kc_ig_shared;                           // [STAGES][BM][PITCH]
    kc_half *sB = kc_ig_shared + STAGES * BM * PITCH;     // [STAGES][BN][PITCH]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kcol = (tid % TPR) * 8;  // this thread's 8 halves within a K slice
    const int row0 = tid / TPR;        // its first row; further rows every ROWS_PER_PASS

    // Per copied A row: where tap (0,0) of its patch starts in x, and that tap's input position.
    // Rows past the last pixel get a position that fails every bounds test.
    long long a_off[A_ROWS];
    int a_hi[A_ROWS], a_wi[A_ROWS];
#pragma unroll
    for (int i = 0; i < A_ROWS; i++) {
        int m = m0 + row0 + i * ROWS_PER_PASS;
        if (m < p.M) {
            int wo = m % p.Wo, t = m / p.Wo;
            int ho = t % p.Ho, n = t / p.Ho;
            int hi = ho * p.stride - p.pad, wi = wo * p.stride - p.pad;
            a_hi[i] = hi, a_wi[i] = wi;
            a_off[i] = (((long long)n * p.H + hi) * p.W + wi) * p.C;
        } else {
            a_hi[i] = INT_MIN / 2, a_wi[i] = 0, a_off[i] = 0;
        }
    }
    const kc_half *b_src[B_ROWS];
    bool b_ok[B_ROWS];
#pragma unroll
    for (int i = 0; i < B_ROWS; i++) {
        int o = n0 + row0 + i * ROWS_PER_PASS;
        b_ok[i] = o < p.O;
        b_src[i] = p.w + (size_t)(b_ok[i] ? o : 0) * p.K + kcol;
    }

    auto load_stage = [&](int stage, int kt) {
        int k = kt * BK + kcol;
        bool kin = k < p.K;
        int tap = k / p.C, c = k - tap * p.C;
        int r = tap / p.kw, s = tap - r * p.kw;
        long long koff = ((long long)r * p.W + s) * p.C + c;
        kc_half *dA = sA + (stage * BM + row0) * PITCH + kcol;
#pragma unroll
        for (int i = 0; i < A_ROWS; i++) {
            bool ok = kin && (unsigned)(a_hi[i] + r) < (unsigned)p.H && (unsigned)(a_wi[i] + s) < (unsigned)p.W;
            kc_cp_async16(dA + i * ROWS_PER_PASS * PITCH, ok ? p.x + a_off[i] + koff : p.x, ok);
        }
        kc_half *dB = sB + (stage * BN + row0) * PITCH + kcol;
#pragma unroll
        for (int i = 0; i < B_ROWS; i++) {
            bool ok = kin && b_ok[i];
            kc_cp_async16(dB + i * ROWS_PER_PASS * PITCH, ok ? b_src[i] + kt * BK : p.w, ok);
        }
    };

    const int KT = (p.K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_stage(s, s);
        kc_cp_commit();  // empty groups keep the wait count uniform
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    const int wm = (warp / WARPS_N) * WM, wn = (warp % WARPS_N) * WN;
    // ldmatrix addressing: A 16x16 fragments (lanes 0-15 rows at k, 16-31 rows at k+8);
    // B as [n][k]: lanes 0-7 n 0-7 at k, 8-15 n 0-7 at k+8, 16-23 n 8-15 at k, 24-31 n 8-15 at k+8.
    const int a_lrow = lane % 16, a_lcol = (lane / 16) * 8;
    const int b_lrow = (lane / 16) * 8 + lane % 8, b_lcol = ((lane / 8) % 2) * 8;

    for (int kt = 0; kt < KT; kt++) {
        kc_cp_wait<STAGES - 2>();  // slice kt has landed (this thread's copies)
        __syncthreads();                 // ... everyone's; and slice kt-1's stage is free again
        int next = kt + STAGES - 1;
        if (next < KT) load_stage(next % STAGES, next);
        kc_cp_commit();
        const kc_half *cA = sA + (kt % STAGES) * BM * PITCH;
        const kc_half *cB = sB + (kt % STAGES) * BN * PITCH;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; i++)
                kc_ldmatrix_x4(af[i], cA + (wm + i * 16 + a_lrow) * PITCH + kk + a_lcol);
#pragma unroll
            for (int j = 0; j < NT / 2; j++) {
                uint32_t r4[4];
                kc_ldmatrix_x4(r4, cB + (wn + j * 16 + b_lrow) * PITCH + kk + b_lcol);
                bf[2 * j][0] = r4[0], bf[2 * j][1] = r4[1];
                bf[2 * j + 1][0] = r4[2], bf[2 * j + 1][1] = r4[3];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) kc_mma16816_t<T>(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }
    kc_cp_wait<0>();

    // Epilogue: accumulator (i, j) holds rows g and g+8, columns 2t and 2t+1 of its 16x8 tile.
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        int o = n0 + wn + j * 8 + t * 2;
        if (o >= p.O) continue;  // O % 8 == 0: an 8-column tile is all in or all out
        float b0 = 0.0f, b1 = 0.0f;
        if (p.bias) {
            T2 bb = *(const T2 *)(p.bias + o);  // __low2float/__high2float have both pair overloads
            b0 = __low2float(bb), b1 = __high2float(bb);
        }
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int m = m0 + wm + i * 16 + g + h * 8;
                if (m >= p.M) continue;
                size_t idx = (size_t)m * p.O + o;
                float v0 = acc[i][j][2 * h] + b0, v1 = acc[i][j][2 * h + 1] + b1;
                if (p.res) {
                    T2 rr = *(const T2 *)(p.res + idx);
                    v0 += __low2float(rr), v1 += __high2float(rr);
                }
                *(T2 *)(p.y + idx) = kc_from_f2<T>(v0, v1);
            }
    }
}

// One compiled block shape.
typedef struct kc_ig_config {
    const char *name;
    int bm, bn, threads;
    size_t smem;
    const void *kernel;
    void (*launch)(dim3 grid, int threads, size_t smem, cudaStream_t s, const kc_ig_params &p);
} kc_ig_config;

template <typename T, int BM, int BN, int WM, int WN, int BK, int STAGES, int MINB>
static void kc_ig_launch_shape(dim3 grid, int threads, size_t smem, cudaStream_t s, const kc_ig_params &p) {
    kc_igemm_kernel<T, BM, BN, WM, WN, BK, STAGES, MINB><<<grid, threads, smem, s>>>(p);
}

#define KC_IG_CONFIG(T, BM, BN, WM, WN, BK, STAGES, MINB)                                                 \
    {#BM "x" #BN "x" #BK "/" #STAGES, BM, BN, (BM / WM) * (BN / WN) * 32,                                  \
     (size_t)(STAGES) * ((BM) + (BN)) * ((BK) + 8) * sizeof(kc_half),                                      \
     (const void *)kc_igemm_kernel<T, BM, BN, WM, WN, BK, STAGES, MINB>,                                   \
     kc_ig_launch_shape<T, BM, BN, WM, WN, BK, STAGES, MINB>}

// name: BMxBNxBK/stages. Shared memory per block: 40-111 KiB; MINB blocks fit per SM. The same
// shapes for both element types (row [kc_dtype]).
#define KC_IG_CONFIGS(T)                                                                                  \
    {                                                                                                     \
        KC_IG_CONFIG(T, 128, 128, 64, 32, 32, 4, 2),  /* 8 warps: large maps */                           \
        KC_IG_CONFIG(T, 128, 64, 64, 32, 32, 4, 3),   /* 4 warps: O = 320 splits into 5 column tiles */   \
        KC_IG_CONFIG(T, 64, 128, 32, 64, 32, 4, 3),   /* 4 warps: few pixels, many channels */            \
        KC_IG_CONFIG(T, 64, 64, 32, 32, 32, 4, 4),    /* 4 warps: small maps (more blocks) */             \
        KC_IG_CONFIG(T, 128, 128, 64, 32, 64, 3, 2),  /* the same with 64-wide K slices: half the barriers */ \
        KC_IG_CONFIG(T, 128, 64, 64, 32, 64, 3, 2),                                                        \
        KC_IG_CONFIG(T, 64, 64, 32, 32, 64, 4, 3),                                                         \
    }
enum { KC_IG_NCONFIGS = 7 };
static const kc_ig_config kc_ig_configs[2][KC_IG_NCONFIGS] = {KC_IG_CONFIGS(__half), KC_IG_CONFIGS(__nv_bfloat16)};

int kc_igemm_n_configs(void) { return KC_IG_NCONFIGS; }

const char *kc_igemm_config_name(int cfg) {
    return cfg >= 0 && cfg < KC_IG_NCONFIGS ? kc_ig_configs[0][cfg].name : "?";
}

int kc_igemm_supported(const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                       const kc_half *res, const kc_half *y) {
    if (cv->C % 8 || cv->O % 8 || cv->pad_end || cv->stride < 1 || cv->Ho < 1 || cv->Wo < 1) return 0;
    if (((uintptr_t)x | (uintptr_t)w) & 15) return 0;                       // 16-byte cp.async sources
    if (((uintptr_t)y | (uintptr_t)bias | (uintptr_t)res) & 3) return 0;    // half2 epilogue
    long long K = (long long)cv->kh * cv->kw * cv->C, M = (long long)cv->N * cv->Ho * cv->Wo;
    return K < INT_MAX && M < INT_MAX && (M + 63) / 64 <= 65535;
}

int kc_igemm_launch(cudaStream_t s, kc_dtype dt, int cfg, const kc_conv *cv, const kc_half *x, const kc_half *w,
                    const kc_half *bias, const kc_half *res, kc_half *y) {
    if (cfg < 0 || cfg >= KC_IG_NCONFIGS) return kiln_error(KILN_EBACKEND, "implicit-GEMM conv: bad config %d", cfg);
    int ti = dt == KC_BF16 ? 1 : 0;
    const kc_ig_config *k = &kc_ig_configs[ti][cfg];
    size_t smem = k->smem;
    static int smem_set[2][KC_IG_NCONFIGS];  // the attribute is per kernel; set once (above 48 KiB needs it)
    if (!smem_set[ti][cfg]) {
        KC_CUDA(cudaFuncSetAttribute(k->kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        smem_set[ti][cfg] = 1;
    }
    kc_ig_params p;
    p.x = x, p.w = w, p.bias = bias, p.res = res, p.y = y;
    p.C = cv->C, p.H = cv->H, p.W = cv->W, p.O = cv->O, p.kw = cv->kw, p.stride = cv->stride, p.pad = cv->pad;
    p.Ho = cv->Ho, p.Wo = cv->Wo;
    p.M = cv->N * cv->Ho * cv->Wo, p.K = cv->kh * cv->kw * cv->C;
    if (((long long)p.M + k->bm - 1) / k->bm > 65535)
        return kiln_error(KILN_EBACKEND, "implicit-GEMM conv: %d pixels is too many for block shape %s", p.M, k->name);
    dim3 grid((unsigned)((p.O + k->bn - 1) / k->bn), (unsigned)((p.M + k->bm - 1) / k->bm));
    k->launch(grid, k->threads, smem, s, p);
    KC_LAUNCHED("implicit-GEMM conv");
    return 0;
}
