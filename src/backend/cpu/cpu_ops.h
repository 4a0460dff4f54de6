/* cpu_ops.h — the CPU backend's op kernels, shared between its files (private to the backend).
 *
 * Each kernel runs one plan op on float32 buffers. e->ptr[slot] is where a slot's data lives
 * during this run (converted weights, the caller's input buffers, the arena, or the caller's
 * output buffers).
 *
 * Threads: all parallelism comes from OpenMP teams of e->n_threads. OpenBLAS is driven
 * single-threaded (the backend sets openblas_set_num_threads(1)) and big products are split
 * into tiles by kiln_cpu_sgemm, because OpenBLAS's own pthread pool and an OpenMP team
 * busy-wait against each other when they alternate, and OpenBLAS serialises multithreaded
 * calls made from several threads at once. */
#ifndef KILN_BACKEND_CPU_OPS_H
#define KILN_BACKEND_CPU_OPS_H

#include <math.h>
#include <stddef.h>

#include <cblas.h>
#include <stdint.h>
#include <string.h>

#include "plan/plan.h"

/* Floating-point traps are never enabled in kiln, and assuming they may be stops GCC from
 * turning the clamps in kiln_cpu_expf into vector selects: every loop calling it would stay
 * scalar. (Clang if-converts them without this.) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

typedef struct kiln_cpu_exec {
    const kiln_plan *plan;
    float **ptr;          /* per slot id: its data during this run */
    int n_threads;        /* OpenMP team size for kernels */
    float *scratch;       /* per-op scratch (im2col columns, attention scores) */
    size_t scratch_floats;
} kiln_cpu_exec;

/* Values a thread should have to itself before another thread is worth waking: below
 * this, the fork and the barrier of a parallel region cost more than they save (and on a
 * busy machine a region waits for its slowest, possibly descheduled, thread). */
#define KILN_CPU_WORK_PER_THREAD 16384

/* Team size for a loop over `work` simple element operations: 1 (run serially) for small
 * loops, growing to n_threads. Loops use `num_threads(t) if (t > 1)`. */
static inline int kiln_cpu_team(int n_threads, int64_t work) {
    int64_t t = work / KILN_CPU_WORK_PER_THREAD;
    if (t < 1) t = 1;
    return t < n_threads ? (int)t : n_threads;
}

/* C = alpha op(A) op(B) + beta C (row-major, as cblas_sgemm), split into a grid of tiles
 * computed by the OpenMP team; small products run on the calling thread. */
void kiln_cpu_sgemm(int n_threads, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                    const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* Scratch floats an op needs (0 for most). The backend allocates the maximum once. */
size_t kiln_cpu_conv2d_scratch(const kiln_plan *p, const kiln_op *op);
size_t kiln_cpu_attention_scratch(const kiln_plan *p, const kiln_op *op, int n_threads);

void kiln_cpu_conv2d(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_linear(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_group_norm(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_layer_norm(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_attention(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_activation(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_geglu(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_add(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_add_channel(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_scale(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_timestep_embed(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_upsample_nearest(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_concat_channels(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_nchw_to_nlc(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_nlc_to_nchw(const kiln_cpu_exec *e, const kiln_op *op);
void kiln_cpu_slice_channels(const kiln_cpu_exec *e, const kiln_op *op);

/* exp(x) in float32 within about 2 ulp, written so that loops calling it vectorise (libm's
 * expf does not). exp(x) = 2^n exp(r) with n = round(x / ln 2), |r| <= ln(2)/2, exp(r) by
 * its Taylor series to r^7 (truncation error 5e-9 relative). Below -87 the result is
 * exp(-87) = 1.6e-38 (2^n must stay a normal float), which no caller (softmax weights,
 * sigmoid) can tell apart from 0; above about 88.4 it is +inf (float overflows at 88.72). */
static inline float kiln_cpu_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 89.0f ? 89.0f : x;
    /* round to nearest through the 1.5 * 2^23 trick, which vectorises on plain SSE2 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f; /* ln 2, high part: n * hi is exact */
    r = r - n * 1.42860682030941723e-6f;  /* ln 2, low part */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Applies SiLU / GELU (exact erf) / quick GELU to one value. */
static inline float kiln_cpu_act(float x, kiln_activation act) {
    switch (act) {
    case KILN_ACT_SILU: return x / (1.0f + kiln_cpu_expf(-x));
    case KILN_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case KILN_ACT_QUICK_GELU: return x / (1.0f + kiln_cpu_expf(-1.702f * x));
    default: return x;
    }
}

#endif
