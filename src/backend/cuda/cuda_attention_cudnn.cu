// cuda_attention_cudnn.cu — scaled dot-product attention through cuDNN's fused flash-attention
// engines (cuDNN 9 backend/graph API, no frontend library), a tactic cuda_steps.cu times against
// kiln's own flash kernel at compile time, keeping the faster.
//
// The operation graph is the one cuDNN recognises as "fused flash attention fprop" (what
// cudnn-frontend's sdpa node lowers to for inference on cuDNN 9 before 9.21):
//
//   S = Q K^T (fp32) -> S * scale -> [causal: row >= col ? S : -inf]
//     -> softmax as max / sub / exp / sum / div, P in the I/O type -> O = P V
//
// Q, K^T, V and O are [B, H, L, D] views of kiln's [B, L, H*D] rows (strides b = L*ld, h = D,
// s = ld, d = 1; K^T swaps the last two), so column views of a fused q/k/v GEMM need no copy.
// Heuristics (mode A) propose engine configurations; up to KC_SDPA_MAX_CFG of them that finalize
// within the workspace limit are timed and the fastest kept. Whatever cuDNN refuses (head dim,
// alignment, library version, no cuDNN) leaves the tactic unsupported, which is not an error.
//
//
// Switches: KILN_CUDA_NO_CUDNN_SDPA (never try), KILN_CUDA_DEBUG_SDPA=1 (print, to stderr, the
// engines tried, why one was refused and what each measured), KILN_CUDA_SDPA_CONFIGS=N (time at
// most N engine configs per graph form, default 8). KILN_CUDA_FORCE_CUDNN_SDPA is read by
// cuda_steps.cu.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda_internal.h"

#ifdef KILN_HAVE_CUDNN
#include <cudnn.h>
#endif

// SDPA inference needs little or no workspace; engines that want more than this are skipped.
const size_t kc_attention_cudnn_workspace_bytes = 32u << 20;

// Sums (a - b)^2 and b^2 over a [rows, cols] matrix pair into acc[0], acc[1].
template <typename T>
__global__ void kc_diff_kernel(const T *a, long long lda, const T *b, long long ldb, long long rows, int cols,
                               float *acc) {
    float d2 = 0.0f, r2 = 0.0f;
    long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / cols;
        int c = (int)(i % cols);
        float x = kc_to_f(a[r * lda + c]), y = kc_to_f(b[r * ldb + c]);
        d2 += (x - y) * (x - y);
        r2 += y * y;
    }
    for (int o = 16; o; o >>= 1) {
        d2 += __shfl_xor_sync(0xffffffffu, d2, o);
        r2 += __shfl_xor_sync(0xffffffffu, r2, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&acc[0], d2);
        atomicAdd(&acc[1], r2);
    }
}

int kc_rel_l2_diff(cudaStream_t s, kc_dtype dt, const kc_half *a, long long lda, const kc_half *b, long long ldb,
                   long long rows, int cols, double *rel) {
    float *acc = NULL, host[2] = {0.0f, 0.0f};
    KC_CUDA(cudaMalloc(&acc, 2 * sizeof(float)));
    cudaError_t e = cudaMemsetAsync(acc, 0, 2 * sizeof(float), s);
    if (e == cudaSuccess) {
        long long blocks = (rows * cols + 255) / 256;
        unsigned grid = (unsigned)(blocks > 1024 ? 1024 : (blocks ? blocks : 1));
        if (dt == KC_BF16)
            kc_diff_kernel<__nv_bfloat16><<<grid, 256, 0, s>>>((const __nv_bfloat16 *)a, lda,
                                                               (const __nv_bfloat16 *)b, ldb, rows, cols, acc);
        else
            kc_diff_kernel<__half><<<grid, 256, 0, s>>>((const __half *)a, lda, (const __half *)b, ldb, rows, cols, acc);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(host, acc, sizeof host, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    cudaFree(acc);
    if (e != cudaSuccess) return kiln_error(KILN_EBACKEND, "relative difference: %s", cudaGetErrorString(e));
    *rel = host[1] > 0.0f ? sqrt((double)host[0] / host[1]) : sqrt((double)host[0]);
    return 0;
}

#ifdef KILN_HAVE_CUDNN

enum { KC_SDPA_MAX_DESC = 96, KC_SDPA_MAX_OPS = 16, KC_SDPA_MAX_CFG = 8 };
// Unique ids of the graph's tensors: the ones bound at execution, then the virtual ones.
enum { KC_UID_Q = 1, KC_UID_K, KC_UID_V, KC_UID_O, KC_UID_SCALE, KC_UID_NEG_INF, KC_UID_VIRTUAL = 100 };

// A tuned tactic: the chosen execution plan and every descriptor it was built from (tensors,
// operations, graph, heuristics, engine configs), kept alive as long as the plan is.
typedef struct kc_sdpa {
    cudnnBackendDescriptor_t desc[KC_SDPA_MAX_DESC];
    int n_desc;
    cudnnBackendDescriptor_t plan;
    size_t workspace;
    long long engine;       // cuDNN's global engine index (debug output, descriptions)
    const char *form;       // which graph form the plan runs: "composite" or "sdpa_fwd"
    int causal;
    float scale, neg_inf;   // by-value operands: cuDNN reads these host copies at each launch
    int refs;               // steps of one compiled plan sharing it (identical attention shapes)
} kc_sdpa;

// Building the graph: the first failing call is recorded and every later call does nothing, so
// the construction reads straight through and is checked once at the end.
typedef struct kc_sdpa_build {
    kc_sdpa *st;
    cudnnStatus_t status;
    const char *failed;     // the call that failed
    int64_t next_uid;       // for virtual tensors
} kc_sdpa_build;

static void kc_sb_check(kc_sdpa_build *b, cudnnStatus_t s, const char *what) {
    if (b->status == CUDNN_STATUS_SUCCESS && s != CUDNN_STATUS_SUCCESS) b->status = s, b->failed = what;
}

static cudnnBackendDescriptor_t kc_sb_new(kc_sdpa_build *b, cudnnBackendDescriptorType_t type, const char *what) {
    if (b->status != CUDNN_STATUS_SUCCESS) return NULL;
    if (b->st->n_desc == KC_SDPA_MAX_DESC) {
        kc_sb_check(b, CUDNN_STATUS_NOT_SUPPORTED, "descriptor pool full");
        return NULL;
    }
    cudnnBackendDescriptor_t d = NULL;
    kc_sb_check(b, cudnnBackendCreateDescriptor(type, &d), what);
    if (b->status != CUDNN_STATUS_SUCCESS) return NULL;
    b->st->desc[b->st->n_desc++] = d;
    return d;
}

static void kc_sb_set(kc_sdpa_build *b, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                      cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what) {
    if (b->status != CUDNN_STATUS_SUCCESS) return;
    kc_sb_check(b, cudnnBackendSetAttribute(d, name, type, count, value), what);
}

static void kc_sb_finalize(kc_sdpa_build *b, cudnnBackendDescriptor_t d, const char *what) {
    if (b->status != CUDNN_STATUS_SUCCESS) return;
    kc_sb_check(b, cudnnBackendFinalize(d), what);
}

// A 4-D tensor; virtual ones get the next free id. All are declared 16-byte aligned (the tensor
// core engines need it; kc_attention_cudnn_try checks the real pointers and strides).
static cudnnBackendDescriptor_t kc_sb_tensor(kc_sdpa_build *b, int64_t uid, cudnnDataType_t dtype, const int64_t *dims,
                                             const int64_t *strides, bool is_virtual, bool by_value) {
    cudnnBackendDescriptor_t t = kc_sb_new(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor descriptor");
    if (uid < 0) uid = b->next_uid++;
    int64_t align = 16;
    kc_sb_set(b, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor id");
    kc_sb_set(b, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype, "tensor data type");
    kc_sb_set(b, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dims");
    kc_sb_set(b, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides");
    kc_sb_set(b, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    kc_sb_set(b, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual");
    if (by_value) kc_sb_set(b, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    kc_sb_finalize(b, t, "tensor finalize");
    return t;
}

// Pointwise operation y = mode(x[, bb][, t]); axis >= 0 for GEN_INDEX.
static cudnnBackendDescriptor_t kc_sb_pointwise(kc_sdpa_build *b, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                                                cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t bb,
                                                cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis) {
    cudnnBackendDescriptor_t pw = kc_sb_new(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise descriptor");
    kc_sb_set(b, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    kc_sb_set(b, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) kc_sb_set(b, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    kc_sb_finalize(b, pw, "pointwise finalize");
    cudnnBackendDescriptor_t op = kc_sb_new(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise operation");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw,
              "pointwise op descriptor");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pointwise x");
    if (bb) kc_sb_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bb, "pointwise b");
    if (t) kc_sb_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pointwise t");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pointwise y");
    kc_sb_finalize(b, op, "pointwise operation finalize");
    return op;
}

static cudnnBackendDescriptor_t kc_sb_reduction(kc_sdpa_build *b, cudnnReduceTensorOp_t mode,
                                                cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd = kc_sb_new(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction descriptor");
    kc_sb_set(b, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, "reduction mode");
    kc_sb_set(b, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, "reduction precision");
    kc_sb_finalize(b, rd, "reduction finalize");
    cudnnBackendDescriptor_t op = kc_sb_new(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction operation");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd, "reduction op desc");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reduction x");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reduction y");
    kc_sb_finalize(b, op, "reduction operation finalize");
    return op;
}

// c = a b over the last two dims, batched over the first two; fp32 accumulation.
static cudnnBackendDescriptor_t kc_sb_matmul(kc_sdpa_build *b, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t bm,
                                             cudnnBackendDescriptor_t c) {
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t md = kc_sb_new(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul descriptor");
    kc_sb_set(b, md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, "matmul precision");
    kc_sb_finalize(b, md, "matmul finalize");
    cudnnBackendDescriptor_t op = kc_sb_new(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul operation");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, "matmul a");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bm, "matmul b");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, "matmul c");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &md, "matmul op desc");
    kc_sb_finalize(b, op, "matmul operation finalize");
    return op;
}

// The attention operation graph (see the top of the file); NULL with b->status set on failure.
static cudnnBackendDescriptor_t kc_sdpa_graph(kc_sdpa_build *b, cudnnHandle_t h, cudnnDataType_t io, int B, int H,
                                              int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv,
                                              long long ldo, int causal) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32, boolean = CUDNN_DATA_BOOLEAN;
    const int64_t qd[4] = {B, H, Lq, D}, qs[4] = {(int64_t)Lq * ldq, D, ldq, 1};
    const int64_t kd[4] = {B, H, D, Lk}, ks[4] = {(int64_t)Lk * ldk, D, 1, ldk};  // K^T
    const int64_t vd[4] = {B, H, Lk, D}, vs[4] = {(int64_t)Lk * ldv, D, ldv, 1};
    const int64_t od[4] = {B, H, Lq, D}, os[4] = {(int64_t)Lq * ldo, D, ldo, 1};
    const int64_t sd[4] = {B, H, Lq, Lk}, ss[4] = {(int64_t)H * Lq * Lk, (int64_t)Lq * Lk, Lk, 1};
    const int64_t rd[4] = {B, H, Lq, 1}, rs[4] = {(int64_t)H * Lq, Lq, 1, 1};
    const int64_t one[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t ops[KC_SDPA_MAX_OPS];
    int n = 0;

    cudnnBackendDescriptor_t q = kc_sb_tensor(b, KC_UID_Q, io, qd, qs, false, false);
    cudnnBackendDescriptor_t kt = kc_sb_tensor(b, KC_UID_K, io, kd, ks, false, false);
    cudnnBackendDescriptor_t v = kc_sb_tensor(b, KC_UID_V, io, vd, vs, false, false);
    cudnnBackendDescriptor_t o = kc_sb_tensor(b, KC_UID_O, io, od, os, false, false);
    cudnnBackendDescriptor_t scale = kc_sb_tensor(b, KC_UID_SCALE, f32, one, one, false, true);

    cudnnBackendDescriptor_t s = kc_sb_tensor(b, -1, f32, sd, ss, true, false);
    ops[n++] = kc_sb_matmul(b, q, kt, s);
    cudnnBackendDescriptor_t scaled = kc_sb_tensor(b, -1, f32, sd, ss, true, false);
    ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_MUL, f32, s, scale, NULL, scaled, -1);
    cudnnBackendDescriptor_t last = scaled;
    if (causal) {  // query row i sees keys 0..i (top-left aligned, as kiln's kernels do)
        cudnnBackendDescriptor_t row = kc_sb_tensor(b, -1, i32, sd, ss, true, false);
        cudnnBackendDescriptor_t col = kc_sb_tensor(b, -1, i32, sd, ss, true, false);
        cudnnBackendDescriptor_t keep = kc_sb_tensor(b, -1, boolean, sd, ss, true, false);
        cudnnBackendDescriptor_t ninf = kc_sb_tensor(b, KC_UID_NEG_INF, f32, one, one, false, true);
        cudnnBackendDescriptor_t masked = kc_sb_tensor(b, -1, f32, sd, ss, true, false);
        ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_GEN_INDEX, f32, last, NULL, NULL, row, 2);
        ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_GEN_INDEX, f32, last, NULL, NULL, col, 3);
        ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_CMP_GE, boolean, row, col, NULL, keep, -1);
        ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_BINARY_SELECT, f32, last, ninf, keep, masked, -1);
        last = masked;
    }
    cudnnBackendDescriptor_t mx = kc_sb_tensor(b, -1, f32, rd, rs, true, false);
    ops[n++] = kc_sb_reduction(b, CUDNN_REDUCE_TENSOR_MAX, last, mx);
    cudnnBackendDescriptor_t sub = kc_sb_tensor(b, -1, f32, sd, ss, true, false);
    ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_SUB, f32, last, mx, NULL, sub, -1);
    cudnnBackendDescriptor_t ex = kc_sb_tensor(b, -1, f32, sd, ss, true, false);
    ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_EXP, f32, sub, NULL, NULL, ex, -1);
    cudnnBackendDescriptor_t sum = kc_sb_tensor(b, -1, f32, rd, rs, true, false);
    ops[n++] = kc_sb_reduction(b, CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    cudnnBackendDescriptor_t p = kc_sb_tensor(b, -1, io, sd, ss, true, false);  // P enters P V in the I/O type
    ops[n++] = kc_sb_pointwise(b, CUDNN_POINTWISE_DIV, f32, ex, sum, NULL, p, -1);
    ops[n++] = kc_sb_matmul(b, p, v, o);

    cudnnBackendDescriptor_t graph = kc_sb_new(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    kc_sb_set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, ops, "graph ops");
    kc_sb_set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "graph handle");
    kc_sb_finalize(b, graph, "operation graph finalize");
    return b->status == CUDNN_STATUS_SUCCESS ? graph : NULL;
}

// The same attention as one SDPA_FWD operation (cuDNN 9.13.1+): Q, K and V all [B, H, L, D] (K
// not transposed), the scale by value; no mask (masks as a subgraph need cuDNN 9.21).
static cudnnBackendDescriptor_t kc_sdpa_graph_unified(kc_sdpa_build *b, cudnnHandle_t h, cudnnDataType_t io, int B,
                                                      int H, int Lq, int Lk, int D, long long ldq, long long ldk,
                                                      long long ldv, long long ldo) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    const int64_t qd[4] = {B, H, Lq, D}, qs[4] = {(int64_t)Lq * ldq, D, ldq, 1};
    const int64_t kd[4] = {B, H, Lk, D}, ks[4] = {(int64_t)Lk * ldk, D, ldk, 1};
    const int64_t vd[4] = {B, H, Lk, D}, vs[4] = {(int64_t)Lk * ldv, D, ldv, 1};
    const int64_t od[4] = {B, H, Lq, D}, os[4] = {(int64_t)Lq * ldo, D, ldo, 1};
    const int64_t one[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t q = kc_sb_tensor(b, KC_UID_Q, io, qd, qs, false, false);
    cudnnBackendDescriptor_t k = kc_sb_tensor(b, KC_UID_K, io, kd, ks, false, false);
    cudnnBackendDescriptor_t v = kc_sb_tensor(b, KC_UID_V, io, vd, vs, false, false);
    cudnnBackendDescriptor_t o = kc_sb_tensor(b, KC_UID_O, io, od, os, false, false);
    cudnnBackendDescriptor_t scale = kc_sb_tensor(b, KC_UID_SCALE, f32, one, one, false, true);
    cudnnBackendDescriptor_t op = kc_sb_new(b, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "sdpa_fwd operation");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &q, "sdpa_fwd q");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k, "sdpa_fwd k");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, "sdpa_fwd v");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &o, "sdpa_fwd o");
    kc_sb_set(b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &scale,
              "sdpa_fwd scale");
    kc_sb_finalize(b, op, "sdpa_fwd finalize");
    cudnnBackendDescriptor_t graph = kc_sb_new(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    kc_sb_set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op, "graph ops");
    kc_sb_set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "graph handle");
    kc_sb_finalize(b, graph, "operation graph finalize");
    return b->status == CUDNN_STATUS_SUCCESS ? graph : NULL;
}

// One execution: a variant pack binding this call's pointers, made and destroyed around the
// launch (the pointers move when the backend's work buffer does). *failed names a failing call.
static cudnnStatus_t kc_sdpa_execute(cudnnHandle_t h, const kc_sdpa *st, cudnnBackendDescriptor_t plan,
                                     const kc_half *q, const kc_half *k, const kc_half *v, kc_half *o, void *ws,
                                     const char **failed) {
    int64_t uids[6] = {KC_UID_Q, KC_UID_K, KC_UID_V, KC_UID_O, KC_UID_SCALE, KC_UID_NEG_INF};
    void *ptrs[6] = {(void *)q, (void *)k, (void *)v, (void *)o, (void *)&st->scale, (void *)&st->neg_inf};
    int64_t n = st->causal ? 6 : 5;
    cudnnBackendDescriptor_t vp = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    *failed = "cudnnBackendCreateDescriptor(variant pack)";
    if (s != CUDNN_STATUS_SUCCESS) return s;
    s = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    *failed = "variant pack ids";
    if (s == CUDNN_STATUS_SUCCESS) {
        s = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
        *failed = "variant pack pointers";
    }
    if (s == CUDNN_STATUS_SUCCESS) {
        s = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
        *failed = "variant pack workspace";
    }
    if (s == CUDNN_STATUS_SUCCESS) {
        s = cudnnBackendFinalize(vp);
        *failed = "variant pack finalize";
    }
    if (s == CUDNN_STATUS_SUCCESS) {
        s = cudnnBackendExecute(h, plan, vp);
        *failed = "cudnnBackendExecute";
    }
    cudnnBackendDestroyDescriptor(vp);
    return s;
}

static void kc_sdpa_destroy(kc_sdpa *st) {
    if (!st) return;
    if (st->plan) cudnnBackendDestroyDescriptor(st->plan);
    for (int i = st->n_desc - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(st->desc[i]);
    free(st);
}

// Global index of the engine behind an engine config (for the debug output); -1 if unknown.
static long long kc_sdpa_engine_index(cudnnBackendDescriptor_t cfg) {
    cudnnBackendDescriptor_t eng = NULL;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS) return -1;
    int64_t got = 0, index = -1;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got, &eng) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &got, &index) !=
            CUDNN_STATUS_SUCCESS)
        index = -1;
    cudnnBackendDestroyDescriptor(eng);
    return (long long)index;
}

typedef struct kc_sdpa_timed {
    cudnnHandle_t h;
    const kc_sdpa *st;
    cudnnBackendDescriptor_t plan;
    const kc_half *q, *k, *v;
    kc_half *o;
    void *ws;
} kc_sdpa_timed;

static int kc_sdpa_launch_timed(void *ctx) {
    const kc_sdpa_timed *t = (const kc_sdpa_timed *)ctx;
    const char *failed = "";
    cudnnStatus_t s = kc_sdpa_execute(t->h, t->st, t->plan, t->q, t->k, t->v, t->o, t->ws, &failed);
    if (s != CUDNN_STATUS_SUCCESS)
        return kiln_error(KILN_EBACKEND, "cuDNN SDPA: %s: %s", failed, cudnnGetErrorString(s));
    return 0;
}

static double kc_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void kc_sdpa_debug_refusal(int debug, const char *what, const char *call, cudnnStatus_t s) {
    if (!debug) return;
    char detail[512];
    detail[0] = 0;
    cudnnGetLastErrorString(detail, sizeof detail);
    fprintf(stderr, "kiln sdpa:   %s: %s: %s%s%s\n", what, call ? call : "?", cudnnGetErrorString(s),
            detail[0] ? " - " : "", detail);
}

// The search over engine configurations, shared by both graph forms: the fastest plan so far
// lives in st->plan (its time in best).
typedef struct kc_sdpa_search {
    cudnnHandle_t h;
    cudaStream_t stream;
    kc_sdpa *st;
    const kc_half *q, *k, *v;
    kc_half *o;
    void *scratch;
    size_t limit;           // workspace an engine may use
    int max_cfg;            // engine configs timed per graph form
    int debug;
    float best;
} kc_sdpa_search;

// Asks the heuristics (mode A) for the graph's engine configs and times up to KC_SDPA_MAX_CFG of
// them that finalize. A graph or engine cuDNN refuses is skipped, not an error.
static int kc_sdpa_search_graph(kc_sdpa_search *se, kc_sdpa_build *b, cudnnBackendDescriptor_t graph,
                                const char *form) {
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    cudnnBackendDescriptor_t heur = kc_sb_new(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics descriptor");
    kc_sb_set(b, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph,
              "heuristics graph");
    kc_sb_set(b, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    kc_sb_finalize(b, heur, "heuristics finalize");
    int64_t n_cfg = 0;
    if (b->status == CUDNN_STATUS_SUCCESS)
        kc_sb_check(b,
                    cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                             &n_cfg, NULL),
                    "heuristics result count");
    cudnnBackendDescriptor_t cfg[KC_SDPA_MAX_CFG];
    int64_t want = n_cfg < se->max_cfg ? n_cfg : se->max_cfg, got = 0;
    for (int64_t i = 0; i < want; i++) cfg[i] = kc_sb_new(b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    if (b->status == CUDNN_STATUS_SUCCESS && want > 0)
        kc_sb_check(b,
                    cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, want,
                                             &got, cfg),
                    "heuristics results");
    if (b->status != CUDNN_STATUS_SUCCESS) {
        char what[64];
        snprintf(what, sizeof what, "%s graph refused", form);
        kc_sdpa_debug_refusal(se->debug, what, b->failed, b->status);
        return 0;
    }
    if (got > want) got = want;
    if (se->debug)
        fprintf(stderr, "kiln sdpa:   %s graph: %lld engine configs, trying %lld\n", form, (long long)n_cfg,
                (long long)got);

    for (int64_t i = 0; i < got; i++) {
        long long engine = kc_sdpa_engine_index(cfg[i]);
        cudnnBackendDescriptor_t plan = NULL;
        cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
        const char *call = "create execution plan";
        if (s == CUDNN_STATUS_SUCCESS) {
            s = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &se->h);
            call = "plan handle";
        }
        if (s == CUDNN_STATUS_SUCCESS) {
            s = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         1, &cfg[i]);
            call = "plan engine config";
        }
        double t0 = kc_now_ms();
        if (s == CUDNN_STATUS_SUCCESS) {
            s = cudnnBackendFinalize(plan);  // may compile kernels (runtime fusion engines)
            call = "plan finalize";
        }
        double finalize_ms = kc_now_ms() - t0;
        int64_t ws = 0, n_ws = 0;
        if (s == CUDNN_STATUS_SUCCESS) {
            s = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n_ws,
                                         &ws);
            call = "plan workspace size";
        }
        if (s != CUDNN_STATUS_SUCCESS) {
            char what[80];
            snprintf(what, sizeof what, "%s engine %lld refused", form, engine);
            kc_sdpa_debug_refusal(se->debug, what, call, s);
            if (plan) cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        if (ws < 0 || (size_t)ws > se->limit) {
            if (se->debug)
                fprintf(stderr, "kiln sdpa:   %s engine %lld: workspace %lld bytes > limit %zu\n", form, engine,
                        (long long)ws, se->limit);
            cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        kc_sdpa_timed tm = {se->h, se->st, plan, se->q, se->k, se->v, se->o, se->scratch};
        float t = FLT_MAX;
        if (kc_time_launches(se->stream, kc_sdpa_launch_timed, &tm, &t) != 0) {
            if (se->debug)
                fprintf(stderr, "kiln sdpa:   %s engine %lld: does not run: %s\n", form, engine, kiln_last_error());
            kiln_error_clear();
            cudaGetLastError();
            cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        if (se->debug)
            fprintf(stderr, "kiln sdpa:   %s engine %lld: workspace %lld bytes, %.4f ms (plan finalize %.0f ms)\n",
                    form, engine, (long long)ws, t, finalize_ms);
        if (t < se->best) {
            if (se->st->plan) cudnnBackendDestroyDescriptor(se->st->plan);
            se->st->plan = plan, se->st->workspace = (size_t)ws, se->st->engine = engine, se->st->form = form;
            se->best = t;
        } else {
            cudnnBackendDestroyDescriptor(plan);
        }
    }
    return 0;
}
#endif  // KILN_HAVE_CUDNN

size_t kc_attention_cudnn_scratch_bound(void) {
#ifdef KILN_HAVE_CUDNN
    if (getenv("KILN_CUDA_NO_CUDNN") || getenv("KILN_CUDA_NO_CUDNN_SDPA")) return 0;
    return kc_attention_cudnn_workspace_bytes;
#else
    return 0;
#endif
}

int kc_attention_cudnn_try(kc_libs *libs, kc_dtype dt, const kc_half *q, const kc_half *k, const kc_half *v,
                           kc_half *o, int B, int H, int Lq, int Lk, int D, long long ldq, long long ldk, long long ldv,
                           long long ldo, float scale, int causal, void *scratch, size_t scratch_size, void **state,
                           float *ms) {
    *state = NULL;
    *ms = FLT_MAX;
#ifndef KILN_HAVE_CUDNN
    (void)libs, (void)dt, (void)q, (void)k, (void)v, (void)o, (void)B, (void)H, (void)Lq, (void)Lk, (void)D;
    (void)ldq, (void)ldk, (void)ldv, (void)ldo, (void)scale, (void)causal, (void)scratch, (void)scratch_size;
    return 0;
#else
    if (!libs->cudnn || getenv("KILN_CUDA_NO_CUDNN_SDPA")) return 0;
    const char *dbg = getenv("KILN_CUDA_DEBUG_SDPA");
    int debug = dbg && atoi(dbg) != 0;
    if (debug)
        fprintf(stderr, "kiln sdpa: B %d H %d Lq %d Lk %d D %d ld %lld/%lld/%lld/%lld%s %s (cuDNN %zu)\n", B, H, Lq, Lk,
                D, ldq, ldk, ldv, ldo, causal ? " causal" : "", kc_dtype_name(dt), cudnnGetVersion());
    // The graphs declare 16-byte aligned tensors: every head of every row must start on 16 bytes.
    if (D % 8 || ldq % 8 || ldk % 8 || ldv % 8 || ldo % 8 || (uintptr_t)q % 16 || (uintptr_t)k % 16 ||
        (uintptr_t)v % 16 || (uintptr_t)o % 16) {
        if (debug) fprintf(stderr, "kiln sdpa:   unsupported: rows or heads not 16-byte aligned\n");
        return 0;
    }
    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    if (cudnnSetStream(h, libs->stream) != CUDNN_STATUS_SUCCESS) return 0;
    kc_sdpa *st = (kc_sdpa *)calloc(1, sizeof *st);
    if (!st) return kiln_error(KILN_ENOMEM, "cuDNN SDPA: out of memory");
    st->refs = 1;
    st->causal = causal;
    st->scale = scale;
    st->neg_inf = -INFINITY;
    st->engine = -1;
    cudnnDataType_t io = dt == KC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    kc_sdpa_search se;
    memset(&se, 0, sizeof se);
    se.h = h, se.stream = libs->stream, se.st = st;
    se.q = q, se.k = k, se.v = v, se.o = o, se.scratch = scratch;
    se.limit = scratch_size < kc_attention_cudnn_workspace_bytes ? scratch_size : kc_attention_cudnn_workspace_bytes;
    se.debug = debug;
    se.best = FLT_MAX;
    // Plan finalize may compile kernels (runtime fusion): KILN_CUDA_SDPA_CONFIGS=N caps the configs
    // timed per graph form (1..8) where tuning time matters more than the last microsecond.
    const char *cap = getenv("KILN_CUDA_SDPA_CONFIGS");
    se.max_cfg = cap && atoi(cap) >= 1 && atoi(cap) <= KC_SDPA_MAX_CFG ? atoi(cap) : KC_SDPA_MAX_CFG;
    int rc = 0;
    // The operation graph of matmuls, pointwise ops and reductions (cuDNN's runtime fusion engines).
    {
        kc_sdpa_build b = {st, CUDNN_STATUS_SUCCESS, NULL, KC_UID_VIRTUAL};
        cudnnBackendDescriptor_t graph = kc_sdpa_graph(&b, h, io, B, H, Lq, Lk, D, ldq, ldk, ldv, ldo, causal);
        rc = kc_sdpa_search_graph(&se, &b, graph, "composite");
    }
    // The one-operation SDPA_FWD graph (cuDNN 9.13.1 and later; masks need 9.21, so not causal).
    if (rc == 0 && !causal && cudnnGetVersion() >= 91301) {
        kc_sdpa_build b = {st, CUDNN_STATUS_SUCCESS, NULL, KC_UID_VIRTUAL};
        cudnnBackendDescriptor_t graph = kc_sdpa_graph_unified(&b, h, io, B, H, Lq, Lk, D, ldq, ldk, ldv, ldo);
        rc = kc_sdpa_search_graph(&se, &b, graph, "sdpa_fwd");
    }
    if (rc || !st->plan) {
        if (debug && rc == 0) fprintf(stderr, "kiln sdpa:   unsupported: no engine config runs\n");
        kc_sdpa_destroy(st);
        return rc;
    }
    if (debug) fprintf(stderr, "kiln sdpa:   chosen: %s engine %lld, %.4f ms\n", st->form, st->engine, se.best);
    *state = st;
    *ms = se.best;
    return 0;
#endif
}

int kc_attention_cudnn_run(kc_libs *libs, const void *state, const kc_half *q, const kc_half *k, const kc_half *v,
                           kc_half *o, void *scratch) {
#ifdef KILN_HAVE_CUDNN
    const kc_sdpa *st = (const kc_sdpa *)state;
    if (!st || !libs->cudnn) return kiln_error(KILN_EBACKEND, "cuDNN SDPA: no execution plan");
    if ((uintptr_t)q % 16 || (uintptr_t)k % 16 || (uintptr_t)v % 16 || (uintptr_t)o % 16)
        return kiln_error(KILN_EBACKEND, "cuDNN SDPA: operands lost their 16-byte alignment");
    cudnnHandle_t h = (cudnnHandle_t)libs->cudnn;
    cudnnStatus_t s = cudnnSetStream(h, libs->stream);
    if (s != CUDNN_STATUS_SUCCESS)
        return kiln_error(KILN_EBACKEND, "cuDNN SDPA: cudnnSetStream: %s", cudnnGetErrorString(s));
    const char *failed = "";
    s = kc_sdpa_execute(h, st, st->plan, q, k, v, o, scratch, &failed);
    if (s != CUDNN_STATUS_SUCCESS)
        return kiln_error(KILN_EBACKEND, "cuDNN SDPA (engine %lld): %s: %s", st->engine, failed,
                          cudnnGetErrorString(s));
    return 0;
#else
    (void)libs, (void)state, (void)q, (void)k, (void)v, (void)o, (void)scratch;
    return kiln_error(KILN_EBACKEND, "cuDNN SDPA: built without cuDNN");
#endif
}

void kc_attention_cudnn_describe(const void *state, char *buf, size_t size) {
#ifdef KILN_HAVE_CUDNN
    const kc_sdpa *st = (const kc_sdpa *)state;
    if (st) {
        snprintf(buf, size, "%s engine %lld", st->form ? st->form : "?", st->engine);
        return;
    }
#else
    (void)state;
#endif
    snprintf(buf, size, "none");
}

void *kc_attention_cudnn_share(void *state) {
#ifdef KILN_HAVE_CUDNN
    if (state) ((kc_sdpa *)state)->refs++;
#endif
    return state;
}

void kc_attention_cudnn_free(void *state) {
#ifdef KILN_HAVE_CUDNN
    kc_sdpa *st = (kc_sdpa *)state;
    if (st && --st->refs == 0) kc_sdpa_destroy(st);
#else
    (void)state;
#endif
}
