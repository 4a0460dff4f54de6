// cuda_conv.cu — 2-D convolution on NHWC 16-bit activations with [O,kh,kw,C] 16-bit weights (fp16,
// or bf16 when the backend's dtype is: cuBLASLt and cuDNN are told so; im2col only moves bits).
//
// Up to five methods, the fastest chosen by timing at compile time:
//  - GEMM: a 1x1 stride-1 convolution is a matrix product over pixels, bias and residual fused;
//  - IM2COL: patches gathered into a [pixels, kh*kw*C] buffer, then one cuBLASLt product with
//    the bias and the residual fused into its epilogue;
//  - CUDNN: cuDNN's own tensor-core kernels (algorithm found by cuDNN's timing), with bias and
//    residual through cudnnConvolutionBiasActivationForward or a small follow-up kernel;
//  - IGEMM (opt-in): kiln's implicit-GEMM kernel (cuda_conv_igemm.cu), patches gathered straight
//    into shared memory, bias and residual in its epilogue; each of its block shapes is timed.
//    On an H100 it lost to IM2COL/CUDNN on every SD 1.5 shape (NOTES.md), so timing it would only
//    lengthen compiles: KILN_CUDA_IGEMM=1 adds it to the timing, KILN_CUDA_FORCE_IGEMM=1 uses it
//    wherever it applies without timing the others (tests).
//  - CUDNN_GRAPH: cuDNN 9's backend API (cuda_conv_cudnn_graph.cu): conv + bias + residual as one
//    operation graph, the heuristics' engines timed; KILN_CUDA_NO_CUDNN_GRAPH=1 leaves it out,
//    KILN_CUDA_FORCE_CUDNN_GRAPH=1 uses it wherever it runs without timing the others (tests).
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#ifdef KILN_HAVE_CUDNN
#include <cudnn.h>
#endif

#ifdef KILN_HAVE_CUDNN
// Above this an im2col buffer costs more memory than it is worth; cuDNN needs none.
static const size_t kc_im2col_limit = 256u << 20;
static const size_t kc_cudnn_workspace_limit = 64u << 20;
#endif

static size_t kc_im2col_bytes(int N, int C, int kh, int kw, int Ho, int Wo) {
    return (size_t)N * Ho * Wo * kh * kw * C * sizeof(kc_half);
}

// col[p, (r*kw + s)*C + c] = x[n, ho*stride - pad + r, wo*stride - pad + s, c] (zero outside)
__global__ void kc_im2col_kernel(const kc_half *x, kc_half *col, int C, int H, int W, int kh, int kw, int stride,
                                 int pad, int Ho, int Wo, size_t total, int vec) {
    int step = vec ? 8 : 1;
    size_t K = (size_t)kh * kw * C;
    for (size_t i = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * step; i < total;
         i += (size_t)gridDim.x * blockDim.x * step) {
        size_t p = i / K, k = i % K;
        int c = (int)(k % C), rs = (int)(k / C), s = rs % kw, r = rs / kw;
        int wo = (int)(p % Wo), ho = (int)((p / Wo) % Ho), n = (int)(p / ((size_t)Wo * Ho));
        int hi = ho * stride - pad + r, wi = wo * stride - pad + s;
        bool inside = hi >= 0 && hi < H && wi >= 0 && wi < W;
        const kc_half *src = x + (((size_t)n * H + hi) * W + wi) * C + c;
        if (vec) {
            uint4 v = inside ? *(const uint4 *)src : make_uint4(0, 0, 0, 0);
            *(uint4 *)&col[i] = v;
        } else {
            col[i] = inside ? *src : __float2half(0.0f);
        }
    }
}

// y[p, o] += bias[o] + res[p, o] (after a cuDNN convolution without fused epilogue)
template <typename T>
__global__ void kc_bias_residual_kernel(T *y, const T *bias, const T *res, int O, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = kc_to_f(y[i]);
        if (bias) v += kc_to_f(bias[i % O]);
        if (res) v += kc_to_f(res[i]);
        y[i] = kc_from_f<T>(v);
    }
}

#ifdef KILN_HAVE_CUDNN
typedef struct kc_cudnn_state {
    cudnnTensorDescriptor_t x, y, b;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnActivationDescriptor_t act;
    cudnnConvolutionFwdAlgo_t algo;
    int fused;          // bias (and residual) through cudnnConvolutionBiasActivationForward
    size_t workspace;
} kc_cudnn_state;

#define KC_DNN(call)                                                                                  \
    do {                                                                                              \
        cudnnStatus_t kc_d_ = (call);                                                                 \
        if (kc_d_ != CUDNN_STATUS_SUCCESS)                                                            \
            return kiln_error(KILN_EBACKEND, "%s:%d: %s: %s", __FILE__, __LINE__, #call,             \
                              cudnnGetErrorString(kc_d_));                                            \
    } while (0)

static int kc_cudnn_launch(kc_libs *libs, const kc_conv *cv, const kc_cudnn_state *d, const kc_half *x,
                           const kc_half *w, const kc_half *bias, const kc_half *res, kc_half *y, void *ws) {
    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    KC_DNN(cudnnSetStream(h, libs->stream));
    float one = 1.0f, zero = 0.0f;
    if (d->fused) {
        float alpha2 = res ? 1.0f : 0.0f;
        KC_DNN(cudnnConvolutionBiasActivationForward(h, &one, d->x, x, d->w, w, d->conv, d->algo, ws, d->workspace,
                                                     &alpha2, d->y, res ? res : y, d->b, bias, d->act, d->y, y));
        return 0;
    }
    KC_DNN(cudnnConvolutionForward(h, &one, d->x, x, d->w, w, d->conv, d->algo, ws, d->workspace, &zero, d->y, y));
    if (bias || res) {
        size_t n = (size_t)cv->N * cv->Ho * cv->Wo * cv->O;
        size_t blocks = (n + 255) / 256;
        unsigned grid = (unsigned)(blocks > 65536 ? 65536 : blocks);
        KC_DISPATCH_DTYPE(libs->dtype, T,
                          (kc_bias_residual_kernel<T><<<grid, 256, 0, libs->stream>>>((T *)y, (const T *)bias,
                                                                                     (const T *)res, cv->O, n)));
        KC_LAUNCHED("bias_residual");
    }
    return 0;
}

static void kc_cudnn_free(kc_cudnn_state *d) {
    if (!d) return;
    if (d->x) cudnnDestroyTensorDescriptor(d->x);
    if (d->y) cudnnDestroyTensorDescriptor(d->y);
    if (d->b) cudnnDestroyTensorDescriptor(d->b);
    if (d->w) cudnnDestroyFilterDescriptor(d->w);
    if (d->conv) cudnnDestroyConvolutionDescriptor(d->conv);
    if (d->act) cudnnDestroyActivationDescriptor(d->act);
    free(d);
}

static float kc_time_cudnn(kc_libs *libs, const kc_conv *cv, const kc_cudnn_state *d, const kc_half *x,
                           const kc_half *w, const kc_half *bias, const kc_half *res, kc_half *y, void *ws);

// Sets up cuDNN for this convolution and measures it; leaves *out NULL when cuDNN cannot run it.
static int kc_cudnn_try(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                        const kc_half *res, kc_half *y, void *scratch, size_t scratch_size, kc_cudnn_state **out,
                        float *ms) {
    *out = NULL;
    *ms = FLT_MAX;
    if (!libs->cudnn || cv->pad_end) return 0;  // cuDNN pads symmetrically only
    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    kc_cudnn_state *d = (kc_cudnn_state *)calloc(1, sizeof *d);
    if (!d) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = 0;
#define KC_DNN_OR_SKIP(call)                                                                          \
    do {                                                                                              \
        if ((call) != CUDNN_STATUS_SUCCESS) goto skip;                                                \
    } while (0)
    KC_DNN_OR_SKIP(cudnnSetStream(h, libs->stream));
    KC_DNN_OR_SKIP(cudnnCreateTensorDescriptor(&d->x));
    KC_DNN_OR_SKIP(cudnnCreateTensorDescriptor(&d->y));
    KC_DNN_OR_SKIP(cudnnCreateTensorDescriptor(&d->b));
    KC_DNN_OR_SKIP(cudnnCreateFilterDescriptor(&d->w));
    KC_DNN_OR_SKIP(cudnnCreateConvolutionDescriptor(&d->conv));
    KC_DNN_OR_SKIP(cudnnCreateActivationDescriptor(&d->act));
    {
        // data, filter and bias in the backend's 16-bit type; the convolution computes in fp32 either way
        cudnnDataType_t ty = libs->dtype == KC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
        KC_DNN_OR_SKIP(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NHWC, ty, cv->N, cv->C, cv->H, cv->W));
        KC_DNN_OR_SKIP(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NHWC, ty, cv->N, cv->O, cv->Ho, cv->Wo));
        KC_DNN_OR_SKIP(cudnnSetTensor4dDescriptor(d->b, CUDNN_TENSOR_NHWC, ty, 1, cv->O, 1, 1));
        KC_DNN_OR_SKIP(cudnnSetFilter4dDescriptor(d->w, ty, CUDNN_TENSOR_NHWC, cv->O, cv->C, cv->kh, cv->kw));
    }
    KC_DNN_OR_SKIP(cudnnSetConvolution2dDescriptor(d->conv, cv->pad, cv->pad, cv->stride, cv->stride, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    KC_DNN_OR_SKIP(cudnnSetConvolutionMathType(d->conv, CUDNN_TENSOR_OP_MATH));
    KC_DNN_OR_SKIP(cudnnSetActivationDescriptor(d->act, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0));
    {
        size_t ws_limit = scratch_size < kc_cudnn_workspace_limit ? scratch_size : kc_cudnn_workspace_limit;
        cudnnConvolutionFwdAlgoPerf_t perf[8];
        int n_perf = 0;
        KC_DNN_OR_SKIP(cudnnFindConvolutionForwardAlgorithmEx(h, d->x, x, d->w, w, d->conv, d->y, y, 8, &n_perf, perf,
                                                              scratch, ws_limit));
        float best = FLT_MAX;
        for (int i = 0; i < n_perf; i++) {
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > ws_limit) continue;
            // Only deterministic tensor-core-or-default math; the first success is cuDNN's fastest.
            d->algo = perf[i].algo;
            d->workspace = perf[i].memory;
            cudnnSetConvolutionMathType(d->conv, perf[i].mathType);
            d->fused = 0;
            best = kc_time_cudnn(libs, cv, d, x, w, bias, res, y, scratch);
            break;
        }
        if (best == FLT_MAX) goto skip;
        // The fused form (bias + residual in cuDNN) runs only with IMPLICIT_PRECOMP_GEMM and identity.
        if (bias) {
            kc_cudnn_state f = *d;
            f.fused = 1;
            f.algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
            size_t need = 0;
            if (cudnnGetConvolutionForwardWorkspaceSize(h, f.x, f.w, f.conv, f.y, f.algo, &need) ==
                    CUDNN_STATUS_SUCCESS &&
                need <= ws_limit) {
                f.workspace = need;
                float t = kc_time_cudnn(libs, cv, &f, x, w, bias, res, y, scratch);
                if (t < best) best = t, *d = f;
            }
        }
        kiln_error_clear();
        *out = d;
        *ms = best;
        return 0;
    }
skip:
    kc_cudnn_free(d);
    kiln_error_clear();
    cudaGetLastError();
    return rc;
#undef KC_DNN_OR_SKIP
}
#endif

static int kc_im2col_launch(kc_libs *libs, const kc_conv *cv, const kc_half *x, kc_half *col) {
    size_t total = kc_im2col_bytes(cv->N, cv->C, cv->kh, cv->kw, cv->Ho, cv->Wo) / sizeof(kc_half);
    int vec = cv->C % 8 == 0;
    size_t blocks = (total / (vec ? 8 : 1) + 255) / 256;
    kc_im2col_kernel<<<(unsigned)(blocks > 1048576 ? 1048576 : (blocks ? blocks : 1)), 256, 0, libs->stream>>>(
        x, col, cv->C, cv->H, cv->W, cv->kh, cv->kw, cv->stride, cv->pad, cv->Ho, cv->Wo, total, vec);
    KC_LAUNCHED("im2col");
    return 0;
}

static int kc_conv_launch(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                          const kc_half *res, kc_half *y, void *scratch) {
    switch (cv->method) {
    case KC_CONV_GEMM: return kc_gemm_run(libs, &cv->gemm, x, w, bias, res, y, scratch);
    case KC_CONV_IM2COL: {
        KILN_TRY(kc_im2col_launch(libs, cv, x, (kc_half *)scratch));
        size_t col_bytes = (kc_im2col_bytes(cv->N, cv->C, cv->kh, cv->kw, cv->Ho, cv->Wo) + 255) & ~(size_t)255;
        return kc_gemm_run(libs, &cv->gemm, (kc_half *)scratch, w, bias, res, y, (char *)scratch + col_bytes);
    }
    case KC_CONV_IGEMM: return kc_igemm_launch(libs->stream, libs->dtype, cv->igemm_cfg, cv, x, w, bias, res, y);
    case KC_CONV_CUDNN_GRAPH:
        return kc_cudnn_graph_launch(libs, cv, cv->cudnn_graph_state, x, w, bias, res, y, scratch);
#ifdef KILN_HAVE_CUDNN
    case KC_CONV_CUDNN:
        return kc_cudnn_launch(libs, cv, (const kc_cudnn_state *)cv->cudnn_state, x, w, bias, res, y, scratch);
#endif
    default: return kiln_error(KILN_EBACKEND, "conv: no method chosen");
    }
}

// One conv call as kc_time_launches wants it: the method cv names, or a cuDNN (legacy) state d.
typedef struct kc_conv_call {
    kc_libs *libs;
    const kc_conv *cv;
    const void *d;
    const kc_half *x, *w, *b, *r;
    kc_half *y;
    void *scratch;
} kc_conv_call;

static int kc_conv_call_launch(void *ctx) {
    const kc_conv_call *a = (const kc_conv_call *)ctx;
#ifdef KILN_HAVE_CUDNN
    if (a->d) return kc_cudnn_launch(a->libs, a->cv, (const kc_cudnn_state *)a->d, a->x, a->w, a->b, a->r, a->y, a->scratch);
#endif
    return kc_conv_launch(a->libs, a->cv, a->x, a->w, a->b, a->r, a->y, a->scratch);
}

// The method cv names, timed (kc_time_launches).
static int kc_time_method(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *b,
                          const kc_half *r, kc_half *y, void *scratch, float *ms) {
    kc_conv_call a = {libs, cv, NULL, x, w, b, r, y, scratch};
    return kc_time_launches(libs->stream, kc_conv_call_launch, &a, ms);
}

#ifdef KILN_HAVE_CUDNN
// A cuDNN legacy configuration d, timed; FLT_MAX when it does not run.
static float kc_time_cudnn(kc_libs *libs, const kc_conv *cv, const kc_cudnn_state *d, const kc_half *x,
                           const kc_half *w, const kc_half *bias, const kc_half *res, kc_half *y, void *ws) {
    kc_conv_call a = {libs, cv, d, x, w, bias, res, y, ws};
    float ms = FLT_MAX;
    if (kc_time_launches(libs->stream, kc_conv_call_launch, &a, &ms) != 0) {
        cudaGetLastError();
        kiln_error_clear();
        return FLT_MAX;
    }
    return ms;
}
#endif

// Frees the method chosen so far (its GEMM, its cuDNN state) when a later one wins.
static void kc_conv_drop_choice(kc_conv *cv) {
    kc_gemm_destroy(&cv->gemm);
#ifdef KILN_HAVE_CUDNN
    kc_cudnn_free((kc_cudnn_state *)cv->cudnn_state);
#endif
    cv->cudnn_state = NULL;
}

size_t kc_conv_scratch_bound(int N, int C, int H, int W, int O, int kh, int kw, int stride, int pad, int pad_end) {
    int Ho = (H + 2 * pad + pad_end - kh) / stride + 1, Wo = (W + 2 * pad + pad_end - kw) / stride + 1;
    size_t bound = kc_gemm_workspace_bytes;
    if (!(kh == 1 && kw == 1 && stride == 1 && pad == 0 && pad_end == 0)) {
        size_t col = kc_im2col_bytes(N, C, kh, kw, Ho, Wo);
#ifdef KILN_HAVE_CUDNN
        if (col > kc_im2col_limit && pad_end == 0) col = 0;  // cuDNN only
        if (bound < kc_cudnn_workspace_limit) bound = kc_cudnn_workspace_limit;
#endif
        bound += ((col + 255) & ~(size_t)255);
    }
    (void)O;
    return bound;
}

int kc_conv_init(kc_libs *libs, kc_conv *cv, int N, int C, int H, int W, int O, int kh, int kw, int stride, int pad,
                 int pad_end, int has_bias, int has_residual, const kc_half *x, const kc_half *w, const kc_half *bias,
                 const kc_half *res, kc_half *y, void *scratch, size_t scratch_size) {
    memset(cv, 0, sizeof *cv);
    cv->N = N, cv->C = C, cv->H = H, cv->W = W, cv->O = O, cv->kh = kh, cv->kw = kw, cv->stride = stride;
    cv->pad = pad, cv->pad_end = pad_end, cv->has_bias = has_bias, cv->has_residual = has_residual;
    cv->Ho = (H + 2 * pad + pad_end - kh) / stride + 1;
    cv->Wo = (W + 2 * pad + pad_end - kw) / stride + 1;
    long long pixels = (long long)N * cv->Ho * cv->Wo;
    const kc_half *b = has_bias ? bias : NULL, *r = has_residual ? res : NULL;
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0 && pad_end == 0) {
        cv->method = KC_CONV_GEMM;
        KILN_TRY(kc_gemm_init(libs, &cv->gemm, (int)pixels, O, C, C, O, has_bias, has_residual, x, w, b, r, y,
                              scratch, scratch_size));
        cv->best_ms = cv->gemm.best_ms;
        cv->scratch = cv->gemm.workspace;
        return 0;
    }
    float best = FLT_MAX;
    cv->im2col_ms = cv->cudnn_ms = cv->igemm_ms = cv->cudnn_graph_ms = FLT_MAX;
    int force_igemm = getenv("KILN_CUDA_FORCE_IGEMM") != NULL;
    // cuDNN's backend API (cuda_conv_cudnn_graph.cu): timed last, or first and alone when forced (tests).
    int graph = getenv("KILN_CUDA_NO_CUDNN_GRAPH") == NULL;
    if (graph && !force_igemm && getenv("KILN_CUDA_FORCE_CUDNN_GRAPH")) {
        void *g = NULL;
        KILN_TRY(kc_cudnn_graph_try(libs, cv, x, w, b, r, y, scratch, scratch_size, &g, &cv->cudnn_graph_ms));
        if (g) {
            cv->method = KC_CONV_CUDNN_GRAPH;
            cv->cudnn_graph_state = g;
            cv->scratch = kc_cudnn_graph_workspace(g);
            cv->best_ms = cv->cudnn_graph_ms;
            return 0;
        }
        graph = 0;  // tried already: it cannot run this one
    }
    int igemm = (force_igemm || getenv("KILN_CUDA_IGEMM")) && kc_igemm_supported(cv, x, w, b, r, y);
    int others = !(igemm && force_igemm);
    size_t col = kc_im2col_bytes(N, C, kh, kw, cv->Ho, cv->Wo), col_bytes = (col + 255) & ~(size_t)255;
#ifdef KILN_HAVE_CUDNN
    kc_cudnn_state *d = NULL;
    float dnn_ms = FLT_MAX;
    if (others) KILN_TRY(kc_cudnn_try(libs, cv, x, w, b, r, y, scratch, scratch_size, &d, &dnn_ms));
    int allow_im2col = col <= kc_im2col_limit || !d;
#else
    int allow_im2col = 1;
#endif
    if (others && allow_im2col && col_bytes < scratch_size) {
        kc_conv probe = *cv;
        probe.method = KC_CONV_IM2COL;
        int K = kh * kw * C;
        // Tune the GEMM on a gathered patch buffer, then time the whole method.
        kc_half *colbuf = (kc_half *)scratch;
        KILN_TRY(kc_im2col_launch(libs, &probe, x, colbuf));  // tune on real patches, not garbage
        int rc = kc_gemm_init(libs, &probe.gemm, (int)pixels, O, K, K, O, has_bias, has_residual, colbuf, w, b, r, y,
                              (char *)scratch + col_bytes, scratch_size - col_bytes);
        if (rc == 0) {
            probe.scratch = col_bytes + probe.gemm.workspace;
            float t = FLT_MAX;
            rc = kc_time_method(libs, &probe, x, w, b, r, y, scratch, &t);
            if (rc) {
                kc_gemm_destroy(&probe.gemm);
                return rc;
            }
            best = t;
            probe.im2col_ms = best;
            *cv = probe;
        } else {
            kiln_error_clear();
        }
    }
#ifdef KILN_HAVE_CUDNN
    cv->cudnn_ms = dnn_ms;
    if (d && dnn_ms < best) {
        kc_gemm_destroy(&cv->gemm);
        cv->method = KC_CONV_CUDNN;
        cv->cudnn_state = d;
        cv->scratch = d->workspace;
        best = dnn_ms;
    } else {
        kc_cudnn_free(d);
    }
#endif
    if (igemm) {
        kc_conv probe = *cv;
        probe.method = KC_CONV_IGEMM;
        probe.scratch = 0;
        memset(&probe.gemm, 0, sizeof probe.gemm);
        probe.cudnn_state = NULL;
        int best_cfg = -1;
        for (int k = 0; k < kc_igemm_n_configs(); k++) {
            probe.igemm_cfg = k;
            float t = FLT_MAX;
            if (kc_time_method(libs, &probe, x, w, b, r, y, scratch, &t) != 0) {  // this shape cannot run
                kiln_error_clear();
                cudaGetLastError();
                continue;
            }
            if (t < cv->igemm_ms) cv->igemm_ms = t, best_cfg = k;
        }
        if (best_cfg >= 0 && cv->igemm_ms < best) {
            kc_conv_drop_choice(cv);
            cv->method = KC_CONV_IGEMM;
            cv->igemm_cfg = best_cfg;
            cv->scratch = 0;
            best = cv->igemm_ms;
        }
    }
    if (graph && others) {
        void *g = NULL;
        float t = FLT_MAX;
        KILN_TRY(kc_cudnn_graph_try(libs, cv, x, w, b, r, y, scratch, scratch_size, &g, &t));
        cv->cudnn_graph_ms = t;
        if (g && t < best) {
            kc_conv_drop_choice(cv);
            cv->method = KC_CONV_CUDNN_GRAPH;
            cv->cudnn_graph_state = g;
            cv->scratch = kc_cudnn_graph_workspace(g);
            best = t;
        } else {
            kc_cudnn_graph_free(g);
        }
    }
    if (best == FLT_MAX)
        return kiln_error(KILN_EBACKEND, "conv %dx%dx%dx%d -> %d (%dx%d, stride %d, pad %d+%d): no method runs", N, C,
                          H, W, O, kh, kw, stride, pad, pad_end);
    cv->best_ms = best;
    return 0;
}

int kc_conv_run(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                const kc_half *res, kc_half *y, void *scratch) {
    return kc_conv_launch(libs, cv, x, w, cv->has_bias ? bias : NULL, cv->has_residual ? res : NULL, y, scratch);
}

void kc_conv_destroy(kc_conv *cv) {
    kc_gemm_destroy(&cv->gemm);
#ifdef KILN_HAVE_CUDNN
    kc_cudnn_free((kc_cudnn_state *)cv->cudnn_state);
#endif
    cv->cudnn_state = NULL;
    kc_cudnn_graph_free(cv->cudnn_graph_state);
    cv->cudnn_graph_state = NULL;
}
