// cuda_compiled.h — the CUDA backend's private state shared by its files: the backend with its
// weight cache, and a compiled plan (slots on the device, steps, arena, graph).
#ifndef KILN_BACKEND_CUDA_COMPILED_H
#define KILN_BACKEND_CUDA_COMPILED_H

#include "backend/cuda/cuda_internal.h"

// ---- backend and its weight cache
// Device copies of weights are shared by the compiled plans of one backend and counted: an entry
// lives while some compiled plan uses it. (A store's tensors may be freed once no compiled plan
// needs them, and a new store may reuse their addresses, so nothing outlives its last user.)
typedef struct kc_cached_weight {
    const kiln_weight *w;
    int f32;                // 1: fp32 as stored; 0: 16-bit (libs.dtype), 4-D permuted to NHWC
    uint64_t version;
    int refs;               // compiled plans using it
    void *dev;
} kc_cached_weight;

// Device memory for activations, scratch and host I/O staging is one buffer per backend, shared by
// all its compiled plans: they run one at a time on one stream and keep nothing in it between runs,
// so the backend needs the largest plan's size, not the sum (U-Net + VAE + text encoder). When a
// new plan needs more, the buffer is reallocated and older plans move onto it before their next run
// (pointers rebased, graph captured again; the tuning stays).
typedef struct kc_backend {
    kc_libs libs;
    char *work;
    size_t work_bytes;
    const struct kiln_compiled *last_run;  // the plan whose inputs the work buffer holds (NULL: none)
    int device;
    char name[256];
    kc_cached_weight *cache;
    int n_cache, cap_cache;
    float *staging;         // device fp32 buffer for weight conversion
    size_t staging_n;
} kc_backend;

// ---- compiled plan
typedef struct kc_slotinfo {
    int buf;                // buffer id (after aliasing), -1 for weights
    void *ptr;              // device data: 16-bit of libs.dtype (I32 inputs: int32)
    size_t view_off;        // bytes into its buffer (column range of a horizontally fused GEMM)
    float *f32;             // inputs and outputs: device fp32 staging in the logical layout
    long long ld;           // row stride in elements; 0 = dense
} kc_slotinfo;

// One member of a horizontally fused GEMM: its weight and bias, its rows in the concatenation, and
// the versions its rows were converted from.
typedef struct kc_cat_member {
    const kiln_weight *w, *b;
    size_t row, n;
    uint64_t wver, bver;
} kc_cat_member;

typedef struct kc_step {
    int op;                 // plan op index, or -1 for a removed op
    int out;                // slot written (an ADD's output when a residual was fused)
    int residual;           // slot added in the epilogue, or -1
    int gn_x, gn_add;       // GROUP_NORM of an ADD_CHANNEL's result: its x and per-channel addend (-1: none)
    int gn_cluster;         // GROUP_NORM: the form the tuner chose (kc_gn_args.cluster)
    float gn_ms;            // and its time
    kc_gemm gemm;
    kc_conv conv;
    int has_gemm, has_conv;
    // Horizontal fusion: LINEAR ops sharing their input run as one GEMM over concatenated weights
    // (owned here), writing every member's output as a column range of one buffer. The members'
    // weights, rows and versions are kept so that a changed weight is converted into its rows again.
    kc_half *wcat, *bcat;
    int n_total, cat_k;
    kc_cat_member *cat;
    int n_cat;
    // Attention: cuDNN's fused attention (state from kc_attention_cudnn_try) when it beat kiln's
    // own kernel at tune time, else NULL; the times both measured (FLT_MAX: not measured).
    void *attn_cudnn;
    float attn_kiln_ms, attn_cudnn_ms;
    int attn_tuned;
} kc_step;

struct kiln_compiled {
    kc_backend *be;
    const kiln_plan *plan;
    kc_slotinfo *si;
    kc_step *steps;
    int n_steps;
    int *in_ids, n_in, *out_ids, n_out;
    char *arena;            // activations, then scratch, then I/O staging: the backend's work buffer
    size_t arena_bytes, scratch_bytes, total_bytes;
    void *scratch;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    // Steps left out of the run (profiling only): op kinds (bit per kiln_op_kind) and conv methods.
    uint64_t skip_kinds;
    unsigned skip_conv_methods;
    struct { const kiln_weight *w; int f32; } *wrefs;  // cache entries this plan holds a count on
    // Pinned host copies of the inputs as last uploaded, then the outputs (NULL: pageable copies).
    // An input equal to its last upload (a prompt's context on every sampling step) is not sent again
    // while the work buffer still holds it (be->last_run == this plan).
    char *pinned;
    size_t *pinned_off;     // per input, then per output
    int *in_sent;
    uint64_t weights_stamp; // sum of the versions of every weight the plan reads: changes with a LoRA
    int n_wrefs, cap_wrefs;
};

static inline int kc_nhwc(const kiln_slot *s) { return s->ndim == 4; }

// Device pointer of a slot read as 16-bit data (weights come from the cache, uploaded on first use),
// and of a weight read as fp32 (norm parameters). cuda_backend.cu.
int kc_half_ptr(kiln_compiled *c, int id, const kc_half **out);
int kc_f32_ptr(kiln_compiled *c, int id, const float **out);
// One step (tune = 1 at compile time: prepares and times library calls), and the whole run as the
// graph holds it: input conversion, steps, output conversion. cuda_steps.cu.
int kc_run_step(kiln_compiled *c, kc_step *st, int tune);
int kc_execute(kiln_compiled *c, int tune);
// Captures kc_execute as the plan's CUDA graph (replacing any earlier one); falls back to running
// op by op when capture fails. cuda_backend.cu.
int kc_capture(kiln_compiled *c);
// Before every run: converts weights that changed since c last ran into their device memory (a
// LoRA), and moves c onto the backend's current work buffer if it was reallocated since (rebases
// pointers, captures the graph again). cuda_backend.cu.
int kc_ready(kiln_compiled *c);
// Scratch one op may need (workspaces, im2col, group-norm partials, attention fallback).
size_t kc_step_scratch(const kiln_plan *p, const kiln_op *op);

#endif
