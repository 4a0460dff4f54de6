/* cpu_elementwise.c — pointwise ops on the CPU: activations, GEGLU, add (with trailing
 * broadcast), per-channel add, scale, and the sinusoidal timestep embedding. */
#include <math.h>

#include "backend/cpu/cpu_ops.h"

void kiln_cpu_activation(const kiln_cpu_exec *e, const kiln_op *op) {
    const float *x = e->ptr[op->in[0]];
    float *y = e->ptr[op->out];
    int64_t n = kiln_slot_numel(&e->plan->slots[op->out]);
    int team = kiln_cpu_team(e->n_threads, 4 * n);
    /* one loop per activation, so that each is a straight loop the compiler vectorises */
    switch (op->act) {
    case KILN_ACT_SILU:
#pragma omp parallel for simd num_threads(team) if (team > 1) schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = kiln_cpu_act(x[i], KILN_ACT_SILU);
        break;
    case KILN_ACT_QUICK_GELU:
#pragma omp parallel for simd num_threads(team) if (team > 1) schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = kiln_cpu_act(x[i], KILN_ACT_QUICK_GELU);
        break;
    default:
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = kiln_cpu_act(x[i], op->act);
        break;
    }
}

void kiln_cpu_geglu(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *ys = &e->plan->slots[op->out];
    const float *x = e->ptr[op->in[0]];
    float *y = e->ptr[op->out];
    int64_t half = ys->shape[ys->ndim - 1], rows = kiln_slot_numel(ys) / half;
    int team = kiln_cpu_team(e->n_threads, 8 * rows * half);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *a = x + r * 2 * half, *g = a + half;
        float *yr = y + r * half;
        for (int64_t j = 0; j < half; j++) yr[j] = a[j] * kiln_cpu_act(g[j], KILN_ACT_GELU);
    }
}

void kiln_cpu_add(const kiln_cpu_exec *e, const kiln_op *op) {
    const float *a = e->ptr[op->in[0]], *b = e->ptr[op->in[1]];
    float *y = e->ptr[op->out];
    int64_t n = kiln_slot_numel(&e->plan->slots[op->out]);
    int64_t nb = kiln_slot_numel(&e->plan->slots[op->in[1]]);
    int team = kiln_cpu_team(e->n_threads, n);
    if (nb == n) {
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
        return;
    }
    /* b is a's trailing dims: it repeats every nb values */
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t r = 0; r < n / nb; r++)
        for (int64_t j = 0; j < nb; j++) y[r * nb + j] = a[r * nb + j] + b[j];
}

void kiln_cpu_add_channel(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *xs = &e->plan->slots[op->in[0]];
    const float *x = e->ptr[op->in[0]], *emb = e->ptr[op->in[1]];
    float *y = e->ptr[op->out];
    int64_t nc = xs->shape[0] * xs->shape[1], hw = kiln_slot_numel(xs) / nc;
    int team = kiln_cpu_team(e->n_threads, nc * hw);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t i = 0; i < nc; i++) {
        float v = emb[i];
        for (int64_t j = 0; j < hw; j++) y[i * hw + j] = x[i * hw + j] + v;
    }
}

void kiln_cpu_scale(const kiln_cpu_exec *e, const kiln_op *op) {
    const float *x = e->ptr[op->in[0]];
    float *y = e->ptr[op->out], s = op->scale;
    int64_t n = kiln_slot_numel(&e->plan->slots[op->out]);
    int team = kiln_cpu_team(e->n_threads, n);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * s;
}

/* Rounded through float32 step by step as torch does it (LDM timestep_embedding):
 * exponent = float(-ln(max_period)) * k / half, f = exp(exponent), arg = t * f. */
void kiln_cpu_timestep_embed(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *ts = &e->plan->slots[op->in[0]];
    const float *t = e->ptr[op->in[0]];
    float *y = e->ptr[op->out];
    int64_t n = ts->shape[0], dim = op->dim, half = dim / 2;
    float neg_log = (float)(-log((double)op->max_period));
    for (int64_t i = 0; i < n; i++) {
        for (int64_t k = 0; k < half; k++) {
            float expo = (neg_log * (float)k) / (float)half;
            float f = expf(expo);
            float arg = t[i] * f;
            y[i * dim + k] = cosf(arg);
            y[i * dim + half + k] = sinf(arg);
        }
    }
}
