/* cpu_ops.h — the CPU backend's op kernels, shared between its files (private to the backend).
 *
 * Each kernel runs one plan op on float32 buffers. e->ptr[slot] is where a slot's data lives
 * during this run (converted weights, the caller's input buffers, the arena, or the caller's
 * output buffers). Kernels parallelise their outer loops with OpenMP over e->n_threads and
 * call OpenBLAS sgemm for matrix products. */
#ifndef KILN_BACKEND_CPU_OPS_H
#define KILN_BACKEND_CPU_OPS_H

#include <math.h>
#include <stddef.h>

#include "plan/plan.h"

typedef struct kiln_cpu_exec {
    const kiln_plan *plan;
    float **ptr;          /* per slot id: its data during this run */
    int n_threads;        /* OpenMP team size for kernels */
    float *scratch;       /* per-op scratch (im2col columns, attention scores) */
    size_t scratch_floats;
} kiln_cpu_exec;

/* Scratch floats an op needs (0 for most). The backend allocates the maximum once. */
size_t kiln_cpu_conv2d_scratch(const kiln_plan *p, const kiln_op *op);
size_t kiln_cpu_attention_scratch(const kiln_plan *p, const kiln_op *op);

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

/* Applies SiLU / GELU (exact erf) / quick GELU to one value. */
static inline float kiln_cpu_act(float x, kiln_activation act) {
    switch (act) {
    case KILN_ACT_SILU: return x / (1.0f + expf(-x));
    case KILN_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case KILN_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    default: return x;
    }
}

#endif
