// cuda_conv_cudnn_graph.cu — convolution through cuDNN 9's backend ("graph") API, the
// KC_CONV_CUDNN_GRAPH method of cuda_conv.cu.
//
// The legacy API (cudnnFindConvolutionForwardAlgorithmEx) only reaches cuDNN's older kernels; on an
// H100 they run 2-5x slower than im2col + cuBLASLt for most SD 1.5 shapes. The backend API describes
// the work as a graph of operations and asks cuDNN's heuristics for engine configurations, which
// include the Hopper engines and the runtime-fusion engines that can fold the bias and the residual
// into the convolution. At tune time this file:
//  1. builds an operation graph: conv -> + residual -> + bias -> Y ("fused"), where there is a bias
//     or a residual, and the plain conv -> Y graph (bias/residual then added by a small kernel);
//  2. asks the heuristics (mode A, else FALLBACK) for up to KG_MAX_CONFIGS engine configurations,
//     makes an execution plan of each (skipping those that fail to finalize, need more workspace
//     than offered, or reduce in reduced precision) and times up to KG_MAX_TIMED of them per graph;
//  3. keeps the fastest plan with the descriptors of its graph.
// A launch builds a variant pack (device pointers by tensor unique id + workspace) and calls
// cudnnBackendExecute on the handle's stream, which CUDA graph capture records like any launch.
// A plan holds no data pointers, so convolutions of the same shape share one (a U-Net repeats its
// shapes; runtime-compiled engines make each search cost up to a second).
//
// Only the C backend API is used (no cudnn-frontend), with attributes that exist since cuDNN 9.0.
// KILN_CUDA_DEBUG_CUDNN_GRAPH=1 prints, per convolution, the engines tried and their times.
#include <float.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"

#ifdef KILN_HAVE_CUDNN
#include <cudnn.h>

// Workspace one plan may use: the same cap as the legacy cuDNN path (kc_conv_scratch_bound offers it).
static const size_t kg_workspace_limit = 64u << 20;

enum {
    KG_MAX_CONFIGS = 24,  // engine configurations asked of the heuristics per graph and mode
    KG_MAX_TIMED = 16,    // plans timed per graph
    KG_MAX_RTC = 2,       // runtime-compiled plans per graph (each compiles a kernel: ~0.1-1 s)
    KG_MAX_DESCS = 16,    // descriptors of one operation graph (11 at most are made)
    KG_MAX_KNOBS = 16,
};

// Unique ids of the graph's tensors; the variant pack names the real ones by these.
enum { KG_UID_X = 1, KG_UID_W, KG_UID_Y, KG_UID_B, KG_UID_R, KG_UID_CONV, KG_UID_SUM };

// One operation graph and every descriptor it was made of (destroyed together, after its plans).
typedef struct kg_graph {
    cudnnBackendDescriptor_t d[KG_MAX_DESCS];
    int n;
    cudnnBackendDescriptor_t graph;  // the finalized operation graph (one of d)
    int fused;                       // bias / residual added inside the graph
    int has_bias, has_res;           // fused graphs: which of them the graph reads
} kg_graph;

// What makes two convolutions share a plan (memset before filling: compared with memcmp).
typedef struct kg_key {
    void *handle;
    int dtype, N, C, H, W, O, kh, kw, stride, pad, pad_end, has_bias, has_res;
} kg_key;

// The chosen plan: what kc_conv's cudnn_graph_state points to, shared by convolutions of one key.
typedef struct kc_cudnn_graph {
    kg_graph g;
    cudnnBackendDescriptor_t cfg, plan;
    size_t workspace;
    char tag[96];  // engine global index and knob choices, e.g. "eng28_k2=1_k3=0"
    kg_key key;
    int refs;      // kc_conv states pointing here (guarded by kg_cache_lock)
    float ms;
} kc_cudnn_graph;

// Plans in use, by key; an entry leaves when its last user frees it.
enum { KG_CACHE = 256 };
static kc_cudnn_graph *kg_cache[KG_CACHE];
static int kg_cache_n;
static int kg_convs;  // convolutions given a plan (kiln_cuda_cudnn_graph_convs)
static pthread_mutex_t kg_cache_lock = PTHREAD_MUTEX_INITIALIZER;

int kiln_cuda_cudnn_graph_convs(void) {
    pthread_mutex_lock(&kg_cache_lock);
    int n = kg_convs;
    pthread_mutex_unlock(&kg_cache_lock);
    return n;
}

static int kg_debug(void) {
    const char *e = getenv("KILN_CUDA_DEBUG_CUDNN_GRAPH");
    return e && *e && *e != '0';
}

static double kg_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// cuDNN's message for the last failure (more precise than the status name).
static const char *kg_last_error(char *buf, size_t size) {
    buf[0] = 0;
    cudnnGetLastErrorString(buf, size);
    return buf;
}

static int kg_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

static int kg_pointers_aligned(const kc_half *x, const kc_half *w, const kc_half *bias, const kc_half *res,
                               const kc_half *y) {
    return kg_aligned(x) && kg_aligned(w) && kg_aligned(bias) && kg_aligned(res) && kg_aligned(y);
}

static void kg_graph_destroy(kg_graph *g) {
    for (int i = g->n - 1; i >= 0; i--)
        if (g->d[i]) cudnnBackendDestroyDescriptor(g->d[i]);
    memset(g, 0, sizeof *g);
}

#define KG_OK(call)                                                                                   \
    do {                                                                                              \
        cudnnStatus_t kg_s_ = (call);                                                                 \
        if (kg_s_ != CUDNN_STATUS_SUCCESS) return kg_s_;                                              \
    } while (0)

// A new descriptor owned by g.
static cudnnStatus_t kg_new(kg_graph *g, cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *out) {
    *out = NULL;
    if (g->n == KG_MAX_DESCS) return CUDNN_STATUS_INTERNAL_ERROR;
    KG_OK(cudnnBackendCreateDescriptor(type, out));
    g->d[g->n++] = *out;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t kg_set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                                 cudnnBackendDescriptor_t value) {
    return cudnnBackendSetAttribute(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value);
}

// A 4-D tensor [N,C,H,W] with explicit strides; virtual tensors live only inside the graph.
static cudnnStatus_t kg_tensor(kg_graph *g, int64_t uid, const int64_t dims[4], const int64_t strides[4],
                               cudnnDataType_t type, int is_virtual, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t t;
    KG_OK(kg_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &t));
    int64_t alignment = 16;
    bool virt = is_virtual != 0;
    KG_OK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
    KG_OK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type));
    KG_OK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims));
    KG_OK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides));
    KG_OK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment));
    KG_OK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt));
    KG_OK(cudnnBackendFinalize(t));
    *out = t;
    return CUDNN_STATUS_SUCCESS;
}

// out = a + b (b broadcast where its dimensions are 1), computed in fp32.
static cudnnStatus_t kg_add(kg_graph *g, cudnnBackendDescriptor_t add, cudnnBackendDescriptor_t a,
                            cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t out, cudnnBackendDescriptor_t *op) {
    KG_OK(kg_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, op));
    KG_OK(kg_set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, add));
    KG_OK(kg_set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, a));
    KG_OK(kg_set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b));
    KG_OK(kg_set_desc(*op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, out));
    return cudnnBackendFinalize(*op);
}

// Builds the operation graph of cv: X [N,C,H,W] and Y [N,O,Ho,Wo] NHWC, W [O,C,kh,kw] stored as
// [O,kh,kw,C]; fused: conv -> (+ residual) -> (+ bias [1,O,1,1]) -> Y with fp32 in between.
// On failure g holds what was made so far (the caller destroys it).
static cudnnStatus_t kg_build(kc_libs *libs, const kc_conv *cv, int fused, int has_bias, int has_res, kg_graph *g) {
    memset(g, 0, sizeof *g);
    g->fused = fused;
    g->has_bias = fused && has_bias;
    g->has_res = fused && has_res;
    cudnnDataType_t dt = libs->dtype == KC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    int64_t N = cv->N, C = cv->C, H = cv->H, W = cv->W, O = cv->O, kh = cv->kh, kw = cv->kw, Ho = cv->Ho,
            Wo = cv->Wo;
    const int64_t xd[4] = {N, C, H, W}, xs[4] = {H * W * C, 1, W * C, C};
    const int64_t wd[4] = {O, C, kh, kw}, ws[4] = {kh * kw * C, 1, kw * C, C};
    const int64_t yd[4] = {N, O, Ho, Wo}, ys[4] = {Ho * Wo * O, 1, Wo * O, O};
    const int64_t bd[4] = {1, O, 1, 1}, bs[4] = {O, 1, O, O};

    cudnnBackendDescriptor_t tx, tw, ty, tconv;
    KG_OK(kg_tensor(g, KG_UID_X, xd, xs, dt, 0, &tx));
    KG_OK(kg_tensor(g, KG_UID_W, wd, ws, dt, 0, &tw));
    KG_OK(kg_tensor(g, KG_UID_Y, yd, ys, dt, 0, &ty));
    if (fused) KG_OK(kg_tensor(g, KG_UID_CONV, yd, ys, f32, 1, &tconv));
    else tconv = ty;

    cudnnBackendDescriptor_t conv;
    KG_OK(kg_new(g, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, &conv));
    int64_t spatial = 2, dil[2] = {1, 1}, str[2] = {cv->stride, cv->stride};
    int64_t pre[2] = {cv->pad, cv->pad}, post[2] = {cv->pad + cv->pad_end, cv->pad + cv->pad_end};
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32));
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode));
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial));
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil));
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, str));
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pre));
    KG_OK(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, post));
    KG_OK(cudnnBackendFinalize(conv));

    cudnnBackendDescriptor_t ops[3];
    int n_ops = 0;
    float alpha = 1.0f, beta = 0.0f;
    KG_OK(kg_new(g, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, &ops[n_ops]));
    cudnnBackendDescriptor_t op = ops[n_ops++];
    KG_OK(kg_set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, tx));
    KG_OK(kg_set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, tw));
    KG_OK(kg_set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, tconv));
    KG_OK(kg_set_desc(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, conv));
    KG_OK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha));
    KG_OK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta));
    KG_OK(cudnnBackendFinalize(op));

    if (g->has_bias || g->has_res) {
        cudnnBackendDescriptor_t add;
        cudnnPointwiseMode_t pw = CUDNN_POINTWISE_ADD;
        KG_OK(kg_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &add));
        KG_OK(cudnnBackendSetAttribute(add, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &pw));
        KG_OK(cudnnBackendSetAttribute(add, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &f32));
        KG_OK(cudnnBackendFinalize(add));
        // The residual first: cuDNN 9's precompiled fused engine on sm_90 matches conv -> + residual
        // -> + bias but not conv -> + bias -> + residual (seen offline with an H100 device-property
        // descriptor); the latter needs a runtime-compiled engine.
        cudnnBackendDescriptor_t cur = tconv;
        if (g->has_res) {
            cudnnBackendDescriptor_t tr, out = ty;
            KG_OK(kg_tensor(g, KG_UID_R, yd, ys, dt, 0, &tr));
            if (g->has_bias) KG_OK(kg_tensor(g, KG_UID_SUM, yd, ys, f32, 1, &out));
            KG_OK(kg_add(g, add, cur, tr, out, &ops[n_ops++]));
            cur = out;
        }
        if (g->has_bias) {
            cudnnBackendDescriptor_t tb;
            KG_OK(kg_tensor(g, KG_UID_B, bd, bs, dt, 0, &tb));
            KG_OK(kg_add(g, add, cur, tb, ty, &ops[n_ops++]));
        }
    }

    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    KG_OK(kg_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &g->graph));
    KG_OK(cudnnBackendSetAttribute(g->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops));
    KG_OK(cudnnBackendSetAttribute(g->graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h));
    return cudnnBackendFinalize(g->graph);
}

// What an engine configuration is: its tag ("eng<global index>_k<knob>=<value>..."), whether its
// engine compiles a kernel at plan time, and a reason to skip it (NULL: none).
static void kg_engine_info(cudnnBackendDescriptor_t cfg, char *tag, size_t tag_size, int *rtc, const char **skip) {
    *rtc = 0;
    *skip = NULL;
    snprintf(tag, tag_size, "eng?");
    cudnnBackendDescriptor_t eng = NULL;
    int64_t n = 0;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS) return;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng) ==
        CUDNN_STATUS_SUCCESS) {
        int64_t index = -1;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index) ==
            CUDNN_STATUS_SUCCESS)
            snprintf(tag, tag_size, "eng%lld", (long long)index);
        cudnnBackendNumericalNote_t notes[16];
        int64_t nn = 0;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, 16, &nn,
                                     notes) == CUDNN_STATUS_SUCCESS)
            for (int64_t i = 0; i < nn && i < 16; i++) {
                // fp16 accumulation would break the fp32-accumulation accuracy the tests hold kiln to
                if (notes[i] == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION) *skip = "reduced-precision reduction";
                if (notes[i] == CUDNN_NUMERICAL_NOTE_FFT) *skip = "FFT";
            }
        cudnnBackendBehaviorNote_t behavior[16];
        int64_t nb = 0;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, 16, &nb,
                                     behavior) == CUDNN_STATUS_SUCCESS)
            for (int64_t i = 0; i < nb && i < 16; i++)
                if (behavior[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) *rtc = 1;
    }
    cudnnBackendDestroyDescriptor(eng);

    cudnnBackendDescriptor_t knobs[KG_MAX_KNOBS];
    int made = 0;
    while (made < KG_MAX_KNOBS &&
           cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, &knobs[made]) == CUDNN_STATUS_SUCCESS)
        made++;
    int64_t nk = 0;
    if (made == KG_MAX_KNOBS && cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, made, &nk, knobs) ==
                                    CUDNN_STATUS_SUCCESS)
        for (int64_t i = 0; i < nk && i < made; i++) {
            cudnnBackendKnobType_t type;
            int64_t value = 0, c = 0;
            if (cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &c,
                                         &type) != CUDNN_STATUS_SUCCESS ||
                cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &c,
                                         &value) != CUDNN_STATUS_SUCCESS)
                continue;
            size_t used = strlen(tag);
            if (used + 1 < tag_size) snprintf(tag + used, tag_size - used, "_k%d=%lld", (int)type, (long long)value);
        }
    for (int i = 0; i < made; i++) cudnnBackendDestroyDescriptor(knobs[i]);
}

template <typename T> __global__ void kg_bias_residual_kernel(T *y, const T *bias, const T *res, int O, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = kc_to_f(y[i]);
        if (bias) v += kc_to_f(bias[i % O]);
        if (res) v += kc_to_f(res[i]);
        y[i] = kc_from_f<T>(v);
    }
}

template <typename T>
static void kg_bias_residual(cudaStream_t s, kc_half *y, const kc_half *bias, const kc_half *res, int O, size_t n) {
    size_t blocks = (n + 255) / 256;
    kg_bias_residual_kernel<T><<<(unsigned)(blocks > 65536 ? 65536 : (blocks ? blocks : 1)), 256, 0, s>>>(
        (T *)y, (const T *)bias, (const T *)res, O, n);
}

int kc_cudnn_graph_launch(kc_libs *libs, const kc_conv *cv, const void *state, const kc_half *x, const kc_half *w,
                          const kc_half *bias, const kc_half *res, kc_half *y, void *scratch) {
    const kc_cudnn_graph *s = (const kc_cudnn_graph *)state;
    if (!s || !libs->cudnn) return kiln_error(KILN_EBACKEND, "cuDNN graph conv: no plan (or no cuDNN handle)");
    if (!kg_pointers_aligned(x, w, bias, res, y))
        return kiln_error(KILN_EBACKEND, "cuDNN graph conv %dx%dx%dx%d -> %d: a buffer is not 16-byte aligned", cv->N,
                          cv->C, cv->H, cv->W, cv->O);
    if ((s->g.has_bias && !bias) || (s->g.has_res && !res))
        return kiln_error(KILN_EBACKEND, "cuDNN graph conv: the plan fuses a %s that this call lacks",
                          s->g.has_bias && !bias ? "bias" : "residual");
    void *ptrs[5];
    int64_t uids[5];
    int n = 0;
    ptrs[n] = (void *)x, uids[n++] = KG_UID_X;
    ptrs[n] = (void *)w, uids[n++] = KG_UID_W;
    ptrs[n] = (void *)y, uids[n++] = KG_UID_Y;
    if (s->g.has_bias) ptrs[n] = (void *)bias, uids[n++] = KG_UID_B;
    if (s->g.has_res) ptrs[n] = (void *)res, uids[n++] = KG_UID_R;

    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t st = cudnnSetStream(h, libs->stream);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &scratch);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(pack);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(h, s->plan, pack);
    if (st != CUDNN_STATUS_SUCCESS) {
        char msg[256];
        kg_last_error(msg, sizeof msg);
        if (pack) cudnnBackendDestroyDescriptor(pack);
        return kiln_error(KILN_EBACKEND, "cuDNN graph conv %dx%dx%dx%d -> %d (%s): %s: %s", cv->N, cv->C, cv->H, cv->W,
                          cv->O, s->tag, cudnnGetErrorString(st), msg);
    }
    cudnnBackendDestroyDescriptor(pack);
    if (!s->g.fused && (bias || res)) {
        size_t count = (size_t)cv->N * cv->Ho * cv->Wo * cv->O;
        KC_DISPATCH_DTYPE(libs->dtype, T, kg_bias_residual<T>(libs->stream, y, bias, res, cv->O, count));
        KC_LAUNCHED("cuDNN graph conv bias/residual");
    }
    return 0;
}

// Keeps the stream busy for ns nanoseconds, so that the launches queued behind it run back to
// back: the measurement then sees GPU time only, as a CUDA graph replay would, not the host time of
// building variant packs and calling cuDNN.
__global__ void kg_spin_kernel(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

// Median of 5 measurements of 4 back-to-back launches, after one warm-up; FLT_MAX when it fails.
static float kg_time(kc_libs *libs, const kc_conv *cv, const kc_cudnn_graph *s, const kc_half *x, const kc_half *w,
                     const kc_half *bias, const kc_half *res, kc_half *y, void *scratch) {
    cudaEvent_t e0 = NULL, e1 = NULL;
    float t[5] = {0}, result = FLT_MAX;
    int ok = cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess;
    ok = ok && kc_cudnn_graph_launch(libs, cv, s, x, w, bias, res, y, scratch) == 0;
    for (int r = 0; r < 5 && ok; r++) {
        kg_spin_kernel<<<1, 1, 0, libs->stream>>>(250000ull);
        cudaEventRecord(e0, libs->stream);
        for (int k = 0; k < 4 && ok; k++) ok = kc_cudnn_graph_launch(libs, cv, s, x, w, bias, res, y, scratch) == 0;
        cudaEventRecord(e1, libs->stream);
        ok = ok && cudaEventSynchronize(e1) == cudaSuccess && cudaEventElapsedTime(&t[r], e0, e1) == cudaSuccess;
        t[r] /= 4.0f;
    }
    if (ok && cudaStreamSynchronize(libs->stream) == cudaSuccess) {
        for (int i = 1; i < 5; i++)
            for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
                float tmp = t[j];
                t[j] = t[j - 1], t[j - 1] = tmp;
            }
        result = t[2];
    } else {
        cudaStreamSynchronize(libs->stream);
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaGetLastError();
    kiln_error_clear();
    return result;
}

// The fastest plan so far over all graphs tried (plan and cfg owned here until handed over).
typedef struct kg_best {
    cudnnBackendDescriptor_t cfg, plan;
    kg_graph *g;
    size_t workspace;
    float ms;
    char tag[96];
} kg_best;

static void kg_best_drop(kg_best *b) {
    if (b->plan) cudnnBackendDestroyDescriptor(b->plan);
    if (b->cfg) cudnnBackendDestroyDescriptor(b->cfg);
    b->plan = b->cfg = NULL;
    b->g = NULL;
    b->ms = FLT_MAX;
}

// Asks the heuristics for engine configurations of g's graph and times plans of them; the fastest
// replaces *best when it beats it.
static void kg_search(kc_libs *libs, const kc_conv *cv, kg_graph *g, const kc_half *x, const kc_half *w,
                      const kc_half *bias, const kc_half *res, kc_half *y, void *scratch, size_t ws_limit, int dbg,
                      kg_best *best) {
    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    int timed = 0, rtc_tried = 0;
    const char *env_rtc = getenv("KILN_CUDA_CUDNN_GRAPH_RTC");
    int rtc_limit = env_rtc ? atoi(env_rtc) : KG_MAX_RTC;
    char msg[256];
    for (int m = 0; m < 2 && timed == 0; m++) {
        cudnnBackendDescriptor_t heur = NULL, cfgs[KG_MAX_CONFIGS];
        int made = 0;
        int64_t n_cfg = 0;
        cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
        if (st == CUDNN_STATUS_SUCCESS) st = kg_set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, g->graph);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m]);
        if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(heur);
        while (st == CUDNN_STATUS_SUCCESS && made < KG_MAX_CONFIGS) {
            st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[made]);
            if (st == CUDNN_STATUS_SUCCESS) made++;
        }
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, made,
                                          &n_cfg, cfgs);
        if (st != CUDNN_STATUS_SUCCESS) n_cfg = 0;
        if (n_cfg > made) n_cfg = made;
        if (dbg)
            fprintf(stderr, "[cudnn-graph]   %s graph, heuristics %s: %lld configs%s%s\n", g->fused ? "fused" : "plain",
                    m == 0 ? "A" : "FALLBACK", (long long)n_cfg, st == CUDNN_STATUS_SUCCESS ? "" : " -- ",
                    st == CUDNN_STATUS_SUCCESS ? "" : kg_last_error(msg, sizeof msg));
        for (int i = 0; i < n_cfg && timed < KG_MAX_TIMED; i++) {
            char tag[96];
            int rtc = 0;
            const char *skip = NULL;
            kg_engine_info(cfgs[i], tag, sizeof tag, &rtc, &skip);
            if (!skip && rtc && rtc_tried >= rtc_limit) skip = "runtime-compiled, limit reached";
            if (skip) {
                if (dbg) fprintf(stderr, "[cudnn-graph]     #%d %s%s: skipped (%s)\n", i, tag, rtc ? " rtc" : "", skip);
                continue;
            }
            rtc_tried += rtc;
            double t0 = kg_now_ms();
            cudnnBackendDescriptor_t plan = NULL;
            int64_t ws = 0, cnt = 0;
            st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
            if (st == CUDNN_STATUS_SUCCESS) st = kg_set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[i]);
            if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(plan);
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt,
                                              &ws);
            double plan_ms = kg_now_ms() - t0;
            if (st != CUDNN_STATUS_SUCCESS || ws < 0 || (size_t)ws > ws_limit) {
                if (dbg)
                    fprintf(stderr, "[cudnn-graph]     #%d %s%s: plan %.1f ms, %s\n", i, tag, rtc ? " rtc" : "", plan_ms,
                            st != CUDNN_STATUS_SUCCESS ? kg_last_error(msg, sizeof msg) : "workspace over the limit");
                if (plan) cudnnBackendDestroyDescriptor(plan);
                continue;
            }
            kc_cudnn_graph probe;
            memset(&probe, 0, sizeof probe);
            probe.g = *g;  // a view: the descriptors stay owned by g
            probe.plan = plan;
            probe.workspace = (size_t)ws;
            snprintf(probe.tag, sizeof probe.tag, "%s", tag);
            float ms = kg_time(libs, cv, &probe, x, w, bias, res, y, scratch);
            if (dbg)
                fprintf(stderr, "[cudnn-graph]     #%d %s%s: plan %.1f ms, workspace %lld B, %s%.4f ms\n", i, tag,
                        rtc ? " rtc" : "", plan_ms, (long long)ws, ms == FLT_MAX ? "failed to run " : "",
                        ms == FLT_MAX ? 0.0f : ms);
            if (ms == FLT_MAX) {
                cudnnBackendDestroyDescriptor(plan);
                continue;
            }
            timed++;
            if (ms < best->ms) {
                kg_best_drop(best);
                best->cfg = cfgs[i];
                cfgs[i] = NULL;  // the plan's engine configuration now lives as long as the plan
                best->plan = plan;
                best->g = g;
                best->workspace = (size_t)ws;
                best->ms = ms;
                snprintf(best->tag, sizeof best->tag, "%s", tag);
            } else {
                cudnnBackendDestroyDescriptor(plan);
            }
        }
        for (int i = 0; i < made; i++)
            if (cfgs[i]) cudnnBackendDestroyDescriptor(cfgs[i]);
        if (heur) cudnnBackendDestroyDescriptor(heur);
    }
}

int kc_cudnn_graph_try(kc_libs *libs, const kc_conv *cv, const kc_half *x, const kc_half *w, const kc_half *bias,
                       const kc_half *res, kc_half *y, void *scratch, size_t scratch_size, void **state, float *ms) {
    *state = NULL;
    *ms = FLT_MAX;
    if (!libs->cudnn) return 0;
    int dbg = kg_debug();
    double t0 = kg_now_ms();
    if (dbg)
        fprintf(stderr, "[cudnn-graph] conv %dx%dx%dx%d -> %d k%dx%d s%d p%d+%d%s%s %s\n", cv->N, cv->C, cv->H, cv->W,
                cv->O, cv->kh, cv->kw, cv->stride, cv->pad, cv->pad_end, bias ? " bias" : "", res ? " +res" : "",
                kc_dtype_name(libs->dtype));
    if (!kg_pointers_aligned(x, w, bias, res, y)) {
        if (dbg) fprintf(stderr, "[cudnn-graph]   skipped: a buffer is not 16-byte aligned\n");
        return 0;
    }
    if (cudnnSetStream((cudnnHandle_t)libs->cudnn, libs->stream) != CUDNN_STATUS_SUCCESS) return 0;
    size_t ws_limit = scratch_size < kg_workspace_limit ? scratch_size : kg_workspace_limit;
    kg_key key;
    memset(&key, 0, sizeof key);
    key.handle = libs->cudnn, key.dtype = (int)libs->dtype, key.N = cv->N, key.C = cv->C, key.H = cv->H;
    key.W = cv->W, key.O = cv->O, key.kh = cv->kh, key.kw = cv->kw, key.stride = cv->stride, key.pad = cv->pad;
    key.pad_end = cv->pad_end, key.has_bias = bias != NULL, key.has_res = res != NULL;
    pthread_mutex_lock(&kg_cache_lock);
    for (int i = 0; i < kg_cache_n; i++)
        if (memcmp(&kg_cache[i]->key, &key, sizeof key) == 0 && kg_cache[i]->workspace <= ws_limit) {
            kc_cudnn_graph *s = kg_cache[i];
            s->refs++;
            kg_convs++;
            *state = s;
            *ms = s->ms;
            break;
        }
    pthread_mutex_unlock(&kg_cache_lock);
    if (*state) {
        if (dbg)
            fprintf(stderr, "[cudnn-graph]   -> the plan of an earlier conv of this shape: %s %.4f ms\n",
                    ((const kc_cudnn_graph *)*state)->tag, *ms);
        return 0;
    }
    kg_graph graphs[2];
    memset(graphs, 0, sizeof graphs);
    kg_best best;
    memset(&best, 0, sizeof best);
    best.ms = FLT_MAX;
    char msg[256];
    // The fused graph first, where there is something to fuse; the plain one is timed too, since
    // a fast plain engine plus the small bias/residual kernel may beat every fused engine.
    for (int fused = (bias || res) ? 1 : 0; fused >= 0; fused--) {
        kg_graph *g = &graphs[fused];
        cudnnStatus_t st = kg_build(libs, cv, fused, bias != NULL, res != NULL, g);
        if (st != CUDNN_STATUS_SUCCESS) {
            if (dbg)
                fprintf(stderr, "[cudnn-graph]   %s graph not built: %s: %s\n", fused ? "fused" : "plain",
                        cudnnGetErrorString(st), kg_last_error(msg, sizeof msg));
            kg_graph_destroy(g);
            continue;
        }
        kg_search(libs, cv, g, x, w, bias, res, y, scratch, ws_limit, dbg, &best);
    }
    kc_cudnn_graph *s = NULL;
    if (best.plan) {
        s = (kc_cudnn_graph *)calloc(1, sizeof *s);
        if (!s) {
            kg_best_drop(&best);
            kg_graph_destroy(&graphs[0]);
            kg_graph_destroy(&graphs[1]);
            return kiln_error(KILN_ENOMEM, "cuDNN graph conv: out of memory");
        }
        s->g = *best.g;
        memset(best.g, 0, sizeof *best.g);  // moved into s
        s->cfg = best.cfg;
        s->plan = best.plan;
        s->workspace = best.workspace;
        snprintf(s->tag, sizeof s->tag, "%s", best.tag);
        s->key = key;
        s->refs = 1;
        s->ms = best.ms;
        *state = s;
        *ms = best.ms;
        pthread_mutex_lock(&kg_cache_lock);
        if (kg_cache_n < KG_CACHE) kg_cache[kg_cache_n++] = s;  // else: not shared, still correct
        kg_convs++;
        pthread_mutex_unlock(&kg_cache_lock);
    }
    kg_graph_destroy(&graphs[0]);
    kg_graph_destroy(&graphs[1]);
    if (dbg) {
        if (s)
            fprintf(stderr, "[cudnn-graph]   -> %s %s %.4f ms (workspace %zu B; tuning took %.0f ms)\n",
                    s->g.fused ? "fused" : "plain", s->tag, *ms, s->workspace, kg_now_ms() - t0);
        else
            fprintf(stderr, "[cudnn-graph]   -> unsupported (tuning took %.0f ms)\n", kg_now_ms() - t0);
    }
    cudaGetLastError();
    kiln_error_clear();
    return 0;
}

void kc_cudnn_graph_free(void *state) {
    kc_cudnn_graph *s = (kc_cudnn_graph *)state;
    if (!s) return;
    pthread_mutex_lock(&kg_cache_lock);
    int last = --s->refs == 0;
    if (last)
        for (int i = 0; i < kg_cache_n; i++)
            if (kg_cache[i] == s) {
                kg_cache[i] = kg_cache[--kg_cache_n];
                break;
            }
    pthread_mutex_unlock(&kg_cache_lock);
    if (!last) return;
    if (s->plan) cudnnBackendDestroyDescriptor(s->plan);
    if (s->cfg) cudnnBackendDestroyDescriptor(s->cfg);
    kg_graph_destroy(&s->g);
    free(s);
}

size_t kc_cudnn_graph_workspace(const void *state) {
    return state ? ((const kc_cudnn_graph *)state)->workspace : 0;
}

const char *kc_cudnn_graph_tag(const void *state) {
    return state ? ((const kc_cudnn_graph *)state)->tag : "";
}

int kc_cudnn_graph_fused(const void *state) { return state ? ((const kc_cudnn_graph *)state)->g.fused : 0; }

#else  // built without cuDNN: the method never applies

int kiln_cuda_cudnn_graph_convs(void) { return -1; }

int kc_cudnn_graph_try(kc_libs *, const kc_conv *, const kc_half *, const kc_half *, const kc_half *, const kc_half *,
                       kc_half *, void *, size_t, void **state, float *ms) {
    *state = NULL;
    *ms = FLT_MAX;
    return 0;
}

int kc_cudnn_graph_launch(kc_libs *, const kc_conv *, const void *, const kc_half *, const kc_half *, const kc_half *,
                          const kc_half *, kc_half *, void *) {
    return kiln_error(KILN_EBACKEND, "cuDNN graph conv: kiln was built without cuDNN");
}

void kc_cudnn_graph_free(void *) {}
size_t kc_cudnn_graph_workspace(const void *) { return 0; }
const char *kc_cudnn_graph_tag(const void *) { return ""; }
int kc_cudnn_graph_fused(const void *) { return 0; }

#endif
