/* cpu_conv.c — 2-D convolution on the CPU: im2col + sgemm (direct sgemm for 1x1 convs).
 *
 * Semantics as torch.nn.functional.conv2d with groups = 1: `pad` zeros on all four sides
 * plus `pad_end` more after each axis (LDM's VAE downsampling pads (0,1,0,1)), the same
 * stride in both directions, any kernel size. For each image the output
 * [O, Ho*Wo] is W [O, C*kh*kw] times the column matrix [C*kh*kw, Ho*Wo]. The column matrix
 * is built a band of output rows at a time so its scratch stays bounded on big images. */
#include <cblas.h>
#include <string.h>

#include "backend/cpu/cpu_ops.h"

/* Upper bound on the im2col band, in floats (16 MiB). */
#define CONV_SCRATCH_FLOATS ((size_t)4 << 20)

static int is_pointwise(const kiln_plan *p, const kiln_op *op) {
    const kiln_slot *w = &p->slots[op->in[1]];
    return w->shape[2] == 1 && w->shape[3] == 1 && op->stride == 1 && op->pad == 0 && op->pad_end == 0;
}

/* Output rows per im2col band for this op. */
static int64_t band_rows(const kiln_plan *p, const kiln_op *op) {
    const kiln_slot *w = &p->slots[op->in[1]], *y = &p->slots[op->out];
    int64_t k = w->shape[1] * w->shape[2] * w->shape[3], ho = y->shape[2], wo = y->shape[3];
    int64_t rows = (int64_t)(CONV_SCRATCH_FLOATS / (size_t)(k * wo));
    if (rows < 1) rows = 1;
    if (rows > ho) rows = ho;
    return rows;
}

size_t kiln_cpu_conv2d_scratch(const kiln_plan *p, const kiln_op *op) {
    if (is_pointwise(p, op)) return 0;
    const kiln_slot *w = &p->slots[op->in[1]], *y = &p->slots[op->out];
    return (size_t)(w->shape[1] * w->shape[2] * w->shape[3]) * (size_t)(band_rows(p, op) * y->shape[3]);
}

/* Fills col [C*kh*kw, rows*Wo] for output rows oh0..oh0+rows-1 of one image. */
static void im2col(const float *x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int stride, int pad,
                   int64_t oh0, int64_t rows, int64_t wo, float *col, int n_threads) {
    int64_t k = c * kh * kw, n = rows * wo;
    int team = kiln_cpu_team(n_threads, k * n);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t r = 0; r < k; r++) {
        int64_t ci = r / (kh * kw), ki = (r / kw) % kh, kj = r % kw;
        const float *xc = x + ci * h * w;
        float *dst = col + r * n;
        for (int64_t oy = 0; oy < rows; oy++) {
            int64_t iy = (oh0 + oy) * stride - pad + ki;
            float *d = dst + oy * wo;
            if (iy < 0 || iy >= h) {
                memset(d, 0, (size_t)wo * sizeof(float));
                continue;
            }
            const float *xr = xc + iy * w;
            for (int64_t ox = 0; ox < wo; ox++) {
                int64_t ix = ox * stride - pad + kj;
                d[ox] = (ix >= 0 && ix < w) ? xr[ix] : 0.0f;
            }
        }
    }
}

void kiln_cpu_conv2d(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *xs = &p->slots[op->in[0]], *ws = &p->slots[op->in[1]], *ys = &p->slots[op->out];
    const float *x = e->ptr[op->in[0]], *wt = e->ptr[op->in[1]];
    const float *bias = op->in[2] >= 0 ? e->ptr[op->in[2]] : NULL;
    float *y = e->ptr[op->out];
    int64_t n = xs->shape[0], c = xs->shape[1], h = xs->shape[2], w = xs->shape[3];
    int64_t o = ws->shape[0], kh = ws->shape[2], kw = ws->shape[3];
    int64_t ho = ys->shape[2], wo = ys->shape[3], k = c * kh * kw, hw_out = ho * wo;

    for (int64_t b = 0; b < n; b++) {
        const float *xb = x + b * c * h * w;
        float *yb = y + b * o * hw_out;
        if (is_pointwise(p, op)) {
            kiln_cpu_sgemm(e->n_threads, CblasNoTrans, CblasNoTrans, (int)o, (int)hw_out, (int)c, 1.0f, wt, (int)c, xb,
                           (int)hw_out, 0.0f, yb, (int)hw_out);
            continue;
        }
        int64_t rows = band_rows(p, op);
        for (int64_t oh0 = 0; oh0 < ho; oh0 += rows) {
            int64_t r = ho - oh0 < rows ? ho - oh0 : rows;
            im2col(xb, c, h, w, kh, kw, op->stride, op->pad, oh0, r, wo, e->scratch, e->n_threads);
            kiln_cpu_sgemm(e->n_threads, CblasNoTrans, CblasNoTrans, (int)o, (int)(r * wo), (int)k, 1.0f, wt, (int)k,
                           e->scratch, (int)(r * wo), 0.0f, yb + oh0 * wo, (int)hw_out);
        }
    }
    if (!bias) return;
    int team = kiln_cpu_team(e->n_threads, n * o * hw_out);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t i = 0; i < n * o; i++) {
        float bv = bias[i % o], *yr = y + i * hw_out;
        for (int64_t j = 0; j < hw_out; j++) yr[j] += bv;
    }
}
