// cuda_internal.h — what the CUDA backend's files share: error checks, the element type of
// activations, and the launchers of each op family (one .cu file per family).
//
// Physical layout on the device: a 4-D slot [N,C,H,W] is stored NHWC; every other slot is
// stored row-major as the plan describes it. Activations and weights are 16-bit elements, typed
// kc_half in host code; their format is the backend's dtype (libs->dtype: fp16 by default, or
// bf16), and every launcher whose kernel computes takes it (a kc_dtype, or the kc_libs). Norms and
// the softmax accumulate in fp32, matrix products accumulate in fp32.
#ifndef KILN_BACKEND_CUDA_INTERNAL_H
#define KILN_BACKEND_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/cuda/cuda_dtype.cuh"

extern "C" {
#include "backend/backend.h"
#include "core/error.h"
}

typedef __half kc_half;

// Returns KILN_EBACKEND with the failing call, file and line in the message.
#define KC_CUDA(call)                                                                                 \
    do {                                                                                              \
        cudaError_t kc_e_ = (call);                                                                   \
        if (kc_e_ != cudaSuccess)                                                                     \
            return kiln_error(KILN_EBACKEND, "%s:%d: %s: %s", __FILE__, __LINE__, #call,             \
                              cudaGetErrorString(kc_e_));                                             \
    } while (0)
#define KC_BLAS(call)                                                                                 \
    do {                                                                                              \
        cublasStatus_t kc_s_ = (call);                                                                \
        if (kc_s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return kiln_error(KILN_EBACKEND, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, \
                              (int)kc_s_);                                                            \
    } while (0)
// After a kernel launch: reports a bad launch configuration at once.
#define KC_LAUNCHED(what) KC_CUDA(cudaGetLastError())  /* and clears it: one refused launch must not fail the next */

extern "C" int kiln_cuda_check_device(int device, char *name, size_t name_size, int *cc_major, int *cc_minor);

// Median time (ms) of launch(ctx): 5 measurements of 4 back-to-back calls after one warm-up
// (cuda_timing.cu). Every tuning choice is timed with it.
int kc_time_launches(cudaStream_t s, int (*launch)(void *ctx), void *ctx, float *ms);
int kc_cmp_float(const void *a, const void *b);  // for qsort over floats

// Libraries shared by all compiled plans of one backend.
typedef struct kc_libs {
    cublasLtHandle_t lt;
    cublasHandle_t blas;
    void *cudnn;            // cudnnHandle_t, or NULL when built without cuDNN
    cudaStream_t stream;
    int sm_count;
    int cc_major;           // compute capability of the device
    kc_dtype dtype;         // element type of activations and weights (fp16 unless bf16 was asked for)
    struct kc_gemm_tuned *tuned;  // GEMM algorithms already chosen, by shape (cuda_gemm.cu)
    int n_tuned, cap_tuned;
} kc_libs;

// ---- GEMM (cuda_gemm.cu): Y[M,N] (row stride ldy) = X[M,K] (row stride ldx) W[N,K]^T + bias[N] + R[M,N]
typedef struct kc_gemm {
    int M, N, K, ldx, ldy;
    int has_bias, has_residual;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;       // bytes the chosen algorithm needs
    float best_ms;          // time measured while choosing
} kc_gemm;

// Prepares and tunes (times up to 8 candidate algorithms on the given buffers, which must hold
// finite data). ws/ws_size: scratch the candidates may use.
int kc_gemm_init(kc_libs *libs, kc_gemm *g, int M, int N, int K, int ldx, int ldy, int has_bias, int has_residual,
                 const kc_half *X, const kc_half *W, const kc_half *bias, const kc_half *R, kc_half *Y, void *ws,
                 size_t ws_size);
int kc_gemm_run(kc_libs *libs, const kc_gemm *g, const kc_half *X, const kc_half *W, const kc_half *bias,
                const kc_half *R, kc_half *Y, void *ws);
void kc_gemm_destroy(kc_gemm *g);
void kc_gemm_forget_all(kc_libs *libs);  // frees the per-shape choices (backend teardown)
// Batched strided product for the attention fallback (cuBLAS): per batch i,
// C_i[m,n] (fp32, or 16-bit of libs->dtype, per c_f32) = alpha * A_i[m,k] * op(B_i), row-major with
// leading dims.
int kc_gemm_batched(kc_libs *libs, int m, int n, int k, float alpha, const kc_half *A, int lda, long long sa,
                    const kc_half *B, int ldb, long long sb, int b_transposed, void *C, int ldc, long long sc,
                    int c_f32, int batch);

// ---- convolution (cuda_conv.cu): NHWC 16-bit (libs->dtype), weight [O,kh,kw,C]
typedef struct kc_conv {
    int N, C, H, W, O, kh, kw, stride, pad, pad_end, Ho, Wo;  // pad before, pad + pad_end after
    int has_bias, has_residual;
    int method;             // KC_CONV_GEMM (1x1 stride 1), KC_CONV_IM2COL, KC_CONV_CUDNN, KC_CONV_IGEMM,
                            // KC_CONV_CUDNN_GRAPH
    kc_gemm gemm;           // GEMM and IM2COL methods
    void *cudnn_state;      // descriptors and algorithm for KC_CONV_CUDNN
    void *cudnn_graph_state;  // operation graph and execution plan for KC_CONV_CUDNN_GRAPH
    size_t scratch;         // bytes of scratch needed (im2col buffer / cuDNN workspace / GEMM workspace)
    float best_ms;
    int igemm_cfg;          // block shape of KC_CONV_IGEMM (index into cuda_conv_igemm.cu's table)
    float im2col_ms, cudnn_ms, igemm_ms;  // what each method measured (FLT_MAX: not tried)
    float cudnn_graph_ms;
} kc_conv;
enum {
    KC_CONV_GEMM = 1,
    KC_CONV_IM2COL = 2,
    KC_CONV_CUDNN = 3,
    KC_CONV_IGEMM = 4,
    KC_CONV_CUDNN_GRAPH = 5,
    KC_CONV_METHODS = 6
};

// Scratch the conv may need before tuning (im2col buffer + GEMM workspace), for sizing the arena.
size_t kc_conv_scratch_bound(int N, int C, int H, int W, int O, int kh, int kw, int stride, int pad, int pad_end);
int kc_conv_init(kc_libs *libs, kc_conv *cv, int N, int C, int H, int W, int O, int kh, int kw, int stride, int pad,
                 int pad_end, int has_bias, int has_residual, const kc_half *x, const kc_half *w, const kc_half *bias,
                 const kc_half *res, kc_half *y, void *scratch, size_t scratch_size);
int kc_conv_run(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                const kc_half *res, kc_half *y, void *scratch);
void kc_conv_destroy(kc_conv *cv);
extern const size_t kc_gemm_workspace_bytes;

// ---- implicit-GEMM convolution (cuda_conv_igemm.cu): C % 8 == 0, O % 8 == 0, symmetric padding,
// any kernel size and stride; no scratch. cv's shape fields (N..Wo) describe the convolution.
int kc_igemm_supported(const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                       const kc_half *res, const kc_half *y);
int kc_igemm_n_configs(void);
const char *kc_igemm_config_name(int cfg);
int kc_igemm_launch(cudaStream_t s, kc_dtype dt, int cfg, const kc_conv *cv, const kc_half *x, const kc_half *w,
                    const kc_half *bias, const kc_half *res, kc_half *y);

// ---- cuDNN 9 backend-API convolution (cuda_conv_cudnn_graph.cu): any kernel size, stride, pre/post
// padding; fp16 or bf16 per libs->dtype; buffers 16-byte aligned. cv's shape fields (N..Wo)
// describe the convolution; bias / res NULL when absent.
// try: builds the operation graph (bias and residual fused where an engine can), times the plans of
// the heuristics' engine configurations on the given buffers, keeps the fastest in *state with its
// time in *ms. Leaves *state NULL and *ms FLT_MAX when cuDNN cannot run it (not an error); fails
// only on real failures (out of memory). scratch_size bounds the workspace.
int kc_cudnn_graph_try(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                       const kc_half *res, kc_half *y, void *scratch, size_t scratch_size, void **state, float *ms);
// launch: the same bias / res presence as at try; scratch holds kc_cudnn_graph_workspace(state) bytes.
int kc_cudnn_graph_launch(kc_libs *libs, const kc_conv *cv, const void *state, const kc_half *x, const kc_half *w,
                          const kc_half *bias, const kc_half *res, kc_half *y, void *scratch);
void kc_cudnn_graph_free(void *state);
size_t kc_cudnn_graph_workspace(const void *state);
const char *kc_cudnn_graph_tag(const void *state);  // chosen engine and knobs, e.g. "eng28_k2=1"
int kc_cudnn_graph_fused(const void *state);        // bias / residual inside cuDNN's kernel

// ---- norms (cuda_norm.cu)
// partials: scratch of kc_group_norm_scratch(N, G) bytes.
size_t kc_group_norm_scratch(int N, int G);
// GroupNorm of x laid out as element (n, c, p) at n*sn + c*sc + p*sp (p = spatial index, P of them),
// y = act(GN(x + add[n, c])); add (optional, NHWC only) is [N, C] with row stride ld_add.
typedef struct kc_gn_args {
    const kc_half *x, *add;
    kc_half *y;
    const float *gamma, *beta;
    long long ld_add, sn, sc, sp;
    int N, C, P, G, silu;
    float eps;
    int cluster;            // one-kernel form: blocks per cluster (1..8), 0 = the largest that fits;
                            // -1 = three kernels (statistics, merge, apply), -2 = two (the apply merges)
} kc_gn_args;
// The cluster sizes the one-kernel form can use for g on this GPU (none before sm_90 or for
// layouts it does not handle); the tuner times each.
int kc_gn_cluster_sizes(int cc_major, const kc_gn_args *g, int sizes[4]);
// cc_major: the GPU's compute capability (the one-kernel form needs sm_90 clusters).
int kc_group_norm(cudaStream_t s, kc_dtype dt, int cc_major, const kc_gn_args *g, void *partials);
int kc_layer_norm(cudaStream_t s, kc_dtype dt, const kc_half *x, kc_half *y, const float *gamma, const float *beta,
                  long long rows, int C, float eps);

// ---- attention (cuda_attention.cu): q/k/v rows of H*D elements with row strides (elements).
int kc_attention_flash_supported(int D);
int kc_attention_flash(cudaStream_t s, kc_dtype dt, const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o,
                       int B, int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv, long long ldo,
                       float scale, int causal);
size_t kc_attention_fallback_scratch(int H, int Lq, int Lk);
int kc_attention_fallback(kc_libs *libs, const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o, int B,
                          int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv, long long ldo,
                          float scale, int causal, void *scratch);

// ---- attention through cuDNN's fused flash-attention engines (cuda_attention_cudnn.cu): same
// operands as above, I/O in dt. Builds the SDPA operation graph, times up to 8 engine configs that
// finalize with at most kc_attention_cudnn_workspace_bytes of workspace (and scratch_size) and
// keeps the fastest in *state with its time in *ms. Leaves *state NULL (returns 0) when cuDNN
// cannot run it (no cuDNN, head dim, alignment, KILN_CUDA_NO_CUDNN_SDPA).
extern const size_t kc_attention_cudnn_workspace_bytes;
size_t kc_attention_cudnn_scratch_bound(void);  // scratch to reserve for it (0 when it is off)
int kc_attention_cudnn_try(kc_libs *libs, kc_dtype dt, const kc_half *q, const kc_half *k, const kc_half *v,
                           kc_half *o, int B, int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv,
                           long long ldo, float scale, int causal, void *scratch, size_t scratch_size, void **state,
                           float *ms);
int kc_attention_cudnn_run(kc_libs *libs, const void *state, const kc_half *q, const kc_half *k, const kc_half *v,
                           kc_half *o, void *scratch);
void kc_attention_cudnn_describe(const void *state, char *buf, size_t size);  // graph form and engine
// Another user of the same state (a step with identical operands' shapes); each user frees it once.
void *kc_attention_cudnn_share(void *state);
void kc_attention_cudnn_free(void *state);
// ||a - b|| / ||b|| over [rows, cols] matrices of dt elements with row strides lda, ldb (waits for s).
int kc_rel_l2_diff(cudaStream_t s, kc_dtype dt, const kc_half *a, long long lda, const kc_half *b, long long ldb,
                   long long rows, int cols, double *rel);


// ---- elementwise (cuda_elementwise.cu); upsample and channel copies only move 16-bit elements
int kc_fill_random(cudaStream_t s, kc_dtype dt, kc_half *x, size_t n, uint32_t seed, float amplitude);
// fp32 in the logical layout -> 16-bit (dt) in the physical layout (NCHW -> NHWC when nhwc), and back.
int kc_f32_to_half(cudaStream_t s, kc_dtype dt, const float *src, kc_half *dst, int nhwc, int N, int C, int H, int W,
                   size_t n);
int kc_half_to_f32(cudaStream_t s, kc_dtype dt, const kc_half *src, float *dst, int nhwc, int N, int C, int H, int W,
                   size_t n);
int kc_activation(cudaStream_t s, kc_dtype dt, const kc_half *x, kc_half *y, size_t n, int act, float scale);
int kc_geglu(cudaStream_t s, kc_dtype dt, const kc_half *x, kc_half *y, long long rows, int N);
// out = a + b; b has nb elements; when nb < n, b repeats over a's logical layout (see plan.h), and
// a_desc/b_desc give the logical shapes (ndim and dims) to map physical NHWC positions.
int kc_add(cudaStream_t s, kc_dtype dt, const kc_half *a, const kc_half *b, kc_half *y, size_t n, size_t nb,
           int a_ndim, const int64_t *a_shape, int b_ndim, const int64_t *b_shape);
int kc_add_channel(cudaStream_t s, kc_dtype dt, const kc_half *x, const kc_half *e, kc_half *y, int N, int C,
                   long long HW, long long lde);
int kc_upsample_nearest(cudaStream_t s, const kc_half *x, kc_half *y, int N, int C, int H, int W, int Ho, int Wo,
                        int ldy);
int kc_copy_channels(cudaStream_t s, const kc_half *x, int ldx, int x_start, kc_half *y, int ldy, int y_start,
                     long long rows, int count);
int kc_timestep_embed(cudaStream_t s, kc_dtype dt, const void *t, int t_is_f32, int t_is_i32, kc_half *y, int N,
                      int dim, float max_period);

#endif
