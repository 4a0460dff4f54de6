/* cpu_norm.c — GroupNorm (with optional fused SiLU) and LayerNorm on the CPU.
 *
 * As torch: biased variance, eps inside the square root, then the per-channel affine.
 * Sums are accumulated in double, in two passes (mean, then squared deviations), so
 * large activations with a small spread keep their precision. */
#include <math.h>

#include "backend/cpu/cpu_ops.h"

void kiln_cpu_group_norm(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *xs = &p->slots[op->in[0]];
    const float *x = e->ptr[op->in[0]], *gamma = e->ptr[op->in[1]], *beta = e->ptr[op->in[2]];
    float *y = e->ptr[op->out];
    int64_t n = xs->shape[0], c = xs->shape[1], groups = op->groups;
    int64_t hw = kiln_slot_numel(xs) / (n * c), cg = c / groups, count = cg * hw;
    int silu = op->act == KILN_ACT_SILU;
    int team = kiln_cpu_team(e->n_threads, 4 * n * c * hw);

#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t ng = 0; ng < n * groups; ng++) {
        /* a group's channels are contiguous: one block of cg*hw values */
        const float *xg = x + ng * count;
        float *yg = y + ng * count;
        double sum = 0, sq = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < count; i++) sum += xg[i];
        double mean = sum / (double)count;
#pragma omp simd reduction(+ : sq)
        for (int64_t i = 0; i < count; i++) {
            double d = xg[i] - mean;
            sq += d * d;
        }
        double rstd = 1.0 / sqrt(sq / (double)count + (double)op->eps);
        int64_t c0 = (ng % groups) * cg;
        /* subtracting the mean first (not folding it into the bias) keeps precision when
         * the mean is large next to the spread; the mean goes in as two floats (high and
         * low part) so that x - mean is nearly exact */
        float m = (float)mean, m_lo = (float)(mean - (double)m);
        for (int64_t ci = 0; ci < cg; ci++) {
            float a = (float)(gamma[c0 + ci] * rstd), b = beta[c0 + ci];
            const float *xc = xg + ci * hw;
            float *yc = yg + ci * hw;
            if (silu) {
                for (int64_t i = 0; i < hw; i++) {
                    float v = ((xc[i] - m) - m_lo) * a + b;
                    yc[i] = v / (1.0f + expf(-v));
                }
            } else {
                for (int64_t i = 0; i < hw; i++) yc[i] = ((xc[i] - m) - m_lo) * a + b;
            }
        }
    }
}

void kiln_cpu_layer_norm(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *xs = &p->slots[op->in[0]];
    const float *x = e->ptr[op->in[0]], *gamma = e->ptr[op->in[1]], *beta = e->ptr[op->in[2]];
    float *y = e->ptr[op->out];
    int64_t c = xs->shape[xs->ndim - 1], rows = kiln_slot_numel(xs) / c;
    int team = kiln_cpu_team(e->n_threads, 4 * rows * c);

#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        float *yr = y + r * c;
        double sum = 0, sq = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < c; i++) sum += xr[i];
        double mean = sum / (double)c;
#pragma omp simd reduction(+ : sq)
        for (int64_t i = 0; i < c; i++) {
            double d = xr[i] - mean;
            sq += d * d;
        }
        double rstd = 1.0 / sqrt(sq / (double)c + (double)op->eps);
        for (int64_t i = 0; i < c; i++) yr[i] = (float)((xr[i] - mean) * rstd * gamma[i] + beta[i]);
    }
}
