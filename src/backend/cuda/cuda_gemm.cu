// cuda_gemm.cu — matrix products through cuBLASLt: Y = X W^T + bias + residual in one call
// (bias through the BIAS epilogue, the residual as C with beta = 1), 16-bit in and out (fp16, or
// bf16 when the backend's dtype is bf16: A/B/C/D and the bias), fp32 accumulation and scaling. The
// algorithm is chosen at compile time by timing cuBLASLt's candidates.
//
// Row-major Y[M,N] is column-major N x M, so cuBLASLt computes D(N x M) = W^T... as
// op(A) = W (stored K x N column-major, transposed) times B = X (K x M column-major).
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

const size_t kc_gemm_workspace_bytes = 32u << 20;

// cuBLAS's name for the backend's 16-bit element type.
static cudaDataType_t kc_cuda_type(kc_dtype dt) { return dt == KC_BF16 ? CUDA_R_16BF : CUDA_R_16F; }

static int kc_gemm_set_pointers(const kc_gemm *g, const kc_half *bias) {
    if (g->has_bias)
        KC_BLAS(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    return 0;
}

static int kc_gemm_launch(kc_libs *libs, const kc_gemm *g, const cublasLtMatmulAlgo_t *algo, const kc_half *X,
                          const kc_half *W, const kc_half *bias, const kc_half *R, kc_half *Y, void *ws,
                          size_t ws_size) {
    float alpha = 1.0f, beta = g->has_residual ? 1.0f : 0.0f;
    KILN_TRY(kc_gemm_set_pointers(g, bias));
    KC_BLAS(cublasLtMatmul(libs->lt, g->desc, &alpha, W, g->la, X, g->lb, &beta, g->has_residual ? R : Y, g->lc, Y,
                           g->lc, algo, ws, ws_size, libs->stream));
    return 0;
}

// A U-Net repeats GEMM shapes many times; each shape is timed once per backend.
typedef struct kc_gemm_tuned {
    int M, N, K, ldx, ldy, has_bias, has_residual, aligned;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
    float best_ms;
} kc_gemm_tuned;

static kc_gemm_tuned *kc_gemm_find_tuned(kc_libs *libs, const kc_gemm *g, int aligned) {
    for (int i = 0; i < libs->n_tuned; i++) {
        kc_gemm_tuned *t = &libs->tuned[i];
        if (t->M == g->M && t->N == g->N && t->K == g->K && t->ldx == g->ldx && t->ldy == g->ldy &&
            t->has_bias == g->has_bias && t->has_residual == g->has_residual && t->aligned == aligned)
            return t;
    }
    return NULL;
}

static void kc_gemm_remember(kc_libs *libs, const kc_gemm *g, int aligned) {
    if (libs->n_tuned == libs->cap_tuned) {
        int cap = libs->cap_tuned ? 2 * libs->cap_tuned : 64;
        kc_gemm_tuned *grown = (kc_gemm_tuned *)realloc(libs->tuned, (size_t)cap * sizeof *grown);
        if (!grown) return;  // only a missed shortcut
        libs->tuned = grown, libs->cap_tuned = cap;
    }
    kc_gemm_tuned *t = &libs->tuned[libs->n_tuned++];
    t->M = g->M, t->N = g->N, t->K = g->K, t->ldx = g->ldx, t->ldy = g->ldy;
    t->has_bias = g->has_bias, t->has_residual = g->has_residual, t->aligned = aligned;
    t->algo = g->algo, t->workspace = g->workspace, t->best_ms = g->best_ms;
}

void kc_gemm_forget_all(kc_libs *libs) {
    free(libs->tuned);
    libs->tuned = NULL;
    libs->n_tuned = libs->cap_tuned = 0;
}

// One algorithm's call as kc_time_launches wants it.
typedef struct kc_gemm_call {
    kc_libs *libs;
    const kc_gemm *g;
    const cublasLtMatmulAlgo_t *algo;
    const kc_half *X, *W, *bias, *R;
    kc_half *Y;
    void *ws;
    size_t ws_size;
} kc_gemm_call;

static int kc_gemm_call_launch(void *ctx) {
    const kc_gemm_call *a = (const kc_gemm_call *)ctx;
    return kc_gemm_launch(a->libs, a->g, a->algo, a->X, a->W, a->bias, a->R, a->Y, a->ws, a->ws_size);
}

// One algorithm, timed (kc_time_launches); FLT_MAX when it does not run.
static float kc_gemm_time(kc_libs *libs, const kc_gemm *g, const cublasLtMatmulAlgo_t *algo, const kc_half *X,
                          const kc_half *W, const kc_half *bias, const kc_half *R, kc_half *Y, void *ws,
                          size_t ws_size) {
    kc_gemm_call a = {libs, g, algo, X, W, bias, R, Y, ws, ws_size};
    float ms = FLT_MAX;
    if (kc_time_launches(libs->stream, kc_gemm_call_launch, &a, &ms) != 0) {
        kiln_error_clear();
        cudaGetLastError();
        return FLT_MAX;
    }
    return ms;
}

// Turns algo into its split-K form with `splits` slices of K (partial sums reduced in fp32), if
// the algorithm supports that for this GEMM; *ws_need: the workspace it then needs.
static int kc_gemm_split_k(kc_libs *libs, const kc_gemm *g, cublasLtMatmulAlgo_t *algo, int splits, size_t *ws_need) {
    int32_t supported = 0;
    uint32_t schemes = 0;
    size_t written = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &supported, sizeof supported,
                                          &written) != CUBLAS_STATUS_SUCCESS ||
        !supported)
        return -1;
    if (cublasLtMatmulAlgoCapGetAttribute(algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes,
                                          &written) != CUBLAS_STATUS_SUCCESS)
        return -1;
    uint32_t scheme = (schemes & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                      : (schemes & CUBLASLT_REDUCTION_SCHEME_INPLACE) ? CUBLASLT_REDUCTION_SCHEME_INPLACE
                                                                      : CUBLASLT_REDUCTION_SCHEME_NONE;
    int32_t n = splits;
    if (scheme == CUBLASLT_REDUCTION_SCHEME_NONE ||
        cublasLtMatmulAlgoConfigSetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &n, sizeof n) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoConfigSetAttribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme) !=
            CUBLAS_STATUS_SUCCESS)
        return -1;
    cublasLtMatmulHeuristicResult_t check;
    if (cublasLtMatmulAlgoCheck(libs->lt, g->desc, g->la, g->lb, g->lc, g->lc, algo, &check) != CUBLAS_STATUS_SUCCESS ||
        check.state != CUBLAS_STATUS_SUCCESS)
        return -1;
    *ws_need = check.workspaceSize;
    return 0;
}

int kc_gemm_init(kc_libs *libs, kc_gemm *g, int M, int N, int K, int ldx, int ldy, int has_bias, int has_residual,
                 const kc_half *X, const kc_half *W, const kc_half *bias, const kc_half *R, kc_half *Y, void *ws,
                 size_t ws_size) {
    memset(g, 0, sizeof *g);
    g->M = M, g->N = N, g->K = K, g->ldx = ldx, g->ldy = ldy;
    g->has_bias = has_bias, g->has_residual = has_residual;
    if (has_residual && ldy != N)
        return kiln_error(KILN_EUNSUPPORTED, "GEMM %dx%dx%d: a residual needs a dense output", M, N, K);
    KC_BLAS(cublasLtMatmulDescCreate(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    KC_BLAS(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    KC_BLAS(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtEpilogue_t epi = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    KC_BLAS(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    cudaDataType_t ty = kc_cuda_type(libs->dtype);
    if (has_bias && libs->dtype == KC_BF16) {  // the bias is bf16 like D (said explicitly; fp16 keeps the default)
        cudaDataType_t bt = CUDA_R_16BF;
        KC_BLAS(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    KC_BLAS(cublasLtMatrixLayoutCreate(&g->la, ty, K, N, K));
    KC_BLAS(cublasLtMatrixLayoutCreate(&g->lb, ty, K, M, ldx));
    KC_BLAS(cublasLtMatrixLayoutCreate(&g->lc, ty, N, M, ldy));
    KILN_TRY(kc_gemm_set_pointers(g, bias));
    // The algorithm may depend on the operands' alignment: 16-byte aligned or not is part of the key.
    int aligned = (((uintptr_t)X | (uintptr_t)W | (uintptr_t)Y | (uintptr_t)bias | (uintptr_t)R) & 15) == 0;
    const kc_gemm_tuned *known = kc_gemm_find_tuned(libs, g, aligned);
    if (known && known->workspace <= ws_size) {
        g->algo = known->algo, g->workspace = known->workspace, g->best_ms = known->best_ms;
        return 0;
    }

    cublasLtMatmulPreference_t pref;
    KC_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws_limit = ws_size < kc_gemm_workspace_bytes ? ws_size : kc_gemm_workspace_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_limit, sizeof ws_limit);
    enum { CAND = 16 };
    cublasLtMatmulHeuristicResult_t res[CAND];
    int n_res = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(libs->lt, g->desc, g->la, g->lb, g->lc, g->lc, pref, CAND,
                                                       res, &n_res);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || n_res == 0)
        return kiln_error(KILN_EBACKEND, "cuBLASLt has no algorithm for GEMM M=%d N=%d K=%d (status %d)", M, N, K,
                          (int)st);

    // Time each candidate (kc_gemm_time); when the output has fewer 128x128 tiles than the GPU has
    // SMs (8x8 latents, the mid block), also the best few with the K dimension split: cuBLASLt's
    // heuristics rarely offer split-K there, and without it most SMs would idle.
    int best = -1;
    cublasLtMatmulAlgo_t best_algo;
    size_t best_ws = 0;
    float best_ms = FLT_MAX;
    for (int i = 0; i < n_res; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        float t = kc_gemm_time(libs, g, &res[i].algo, X, W, bias, R, Y, ws, ws_limit);
        if (t < best_ms) best_ms = t, best = i, best_algo = res[i].algo, best_ws = res[i].workspaceSize;
    }
    long long tiles = (long long)((M + 127) / 128) * ((N + 127) / 128);
    for (int i = 0, tried = 0; i < n_res && tried < 4 && tiles < libs->sm_count && K >= 1024; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        tried++;
        static const int splits[] = {2, 4, 8, 16};
        for (int k = 0; k < 4 && K / splits[k] >= 256; k++) {
            cublasLtMatmulAlgo_t algo = res[i].algo;
            size_t ws_need = 0;
            if (kc_gemm_split_k(libs, g, &algo, splits[k], &ws_need) != 0 || ws_need > ws_limit) continue;
            float t = kc_gemm_time(libs, g, &algo, X, W, bias, R, Y, ws, ws_limit);
            if (t < best_ms) best_ms = t, best = i, best_algo = algo, best_ws = ws_need;
        }
    }
    KC_CUDA(cudaStreamSynchronize(libs->stream));
    if (best < 0) return kiln_error(KILN_EBACKEND, "no cuBLASLt algorithm ran for GEMM M=%d N=%d K=%d", M, N, K);
    g->algo = best_algo;
    g->workspace = best_ws;
    g->best_ms = best_ms;
    kc_gemm_remember(libs, g, aligned);
    return 0;
}

int kc_gemm_run(kc_libs *libs, const kc_gemm *g, const kc_half *X, const kc_half *W, const kc_half *bias,
                const kc_half *R, kc_half *Y, void *ws) {
    return kc_gemm_launch(libs, g, &g->algo, X, W, bias, R, Y, ws, g->workspace);
}

void kc_gemm_destroy(kc_gemm *g) {
    if (g->desc) cublasLtMatmulDescDestroy(g->desc);
    if (g->la) cublasLtMatrixLayoutDestroy(g->la);
    if (g->lb) cublasLtMatrixLayoutDestroy(g->lb);
    if (g->lc) cublasLtMatrixLayoutDestroy(g->lc);
    memset(g, 0, sizeof *g);
}

int kc_gemm_batched(kc_libs *libs, int m, int n, int k, float alpha, const kc_half *A, int lda, long long sa,
                    const kc_half *B, int ldb, long long sb, int b_transposed, void *C, int ldc, long long sc,
                    int c_f32, int batch) {
    // Row-major C = A op(B) is column-major C^T = op(B)^T A^T.
    float beta = 0.0f;
    cudaDataType_t ty = kc_cuda_type(libs->dtype);
    KC_BLAS(cublasSetStream(libs->blas, libs->stream));
    KC_BLAS(cublasGemmStridedBatchedEx(libs->blas, b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, m, k,
                                       &alpha, B, ty, ldb, sb, A, ty, lda, sa, &beta, C, c_f32 ? CUDA_R_32F : ty, ldc,
                                       sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}
