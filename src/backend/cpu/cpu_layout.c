/* cpu_layout.c — data-movement ops on the CPU: nearest upsampling, channel concat and
 * slice, and the NCHW <-> [N, H*W, C] transposes around transformer blocks. */
#include <string.h>

#include "backend/cpu/cpu_ops.h"

void kiln_cpu_upsample_nearest(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *xs = &e->plan->slots[op->in[0]];
    const float *x = e->ptr[op->in[0]];
    float *y = e->ptr[op->out];
    int64_t nc = xs->shape[0] * xs->shape[1], h = xs->shape[2], w = xs->shape[3], oh = op->h, ow = op->w;
    int team = kiln_cpu_team(e->n_threads, nc * oh * ow);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t r = 0; r < nc * oh; r++) {
        int64_t plane = r / oh, dy = r % oh, sy = dy * h / oh; /* floor(dst * in / out) */
        const float *xr = x + (plane * h + sy) * w;
        float *yr = y + r * ow;
        for (int64_t dx = 0; dx < ow; dx++) yr[dx] = xr[dx * w / ow];
    }
}

void kiln_cpu_concat_channels(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *as = &e->plan->slots[op->in[0]], *bs = &e->plan->slots[op->in[1]];
    const float *a = e->ptr[op->in[0]], *b = e->ptr[op->in[1]];
    float *y = e->ptr[op->out];
    int64_t n = as->shape[0], ca = as->shape[1], cb = bs->shape[1], hw = as->shape[2] * as->shape[3];
    int team = kiln_cpu_team(e->n_threads, n * (ca + cb) * hw / 4); /* memcpy is cheap per value */
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t i = 0; i < n * (ca + cb); i++) {
        int64_t img = i / (ca + cb), ch = i % (ca + cb);
        const float *src = ch < ca ? a + (img * ca + ch) * hw : b + (img * cb + ch - ca) * hw;
        memcpy(y + i * hw, src, (size_t)hw * sizeof(float));
    }
}

void kiln_cpu_slice_channels(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *xs = &e->plan->slots[op->in[0]];
    const float *x = e->ptr[op->in[0]];
    float *y = e->ptr[op->out];
    int64_t n = xs->shape[0], c = xs->shape[1], rest = kiln_slot_numel(xs) / (n * c);
    for (int64_t img = 0; img < n; img++)
        memcpy(y + img * op->count * rest, x + (img * c + op->start) * rest, (size_t)(op->count * rest) * sizeof(float));
}

/* Transposes each of n matrices src [rows, cols] into dst [cols, rows]. Each 32x32 tile
 * goes through a small padded buffer so that both the reads and the writes run along
 * rows: writing a column straight into dst would touch 32 cache lines 4 KiB apart (when
 * rows is a power of two), which all compete for the same cache set. */
static void transpose_batched(const float *src, float *dst, int64_t n, int64_t rows, int64_t cols, int n_threads) {
    enum { T = 32 };
    int64_t tr = (rows + T - 1) / T, tc = (cols + T - 1) / T;
    int team = kiln_cpu_team(n_threads, n * rows * cols);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t t = 0; t < n * tr * tc; t++) {
        float tile[T][T + 1];
        int64_t m = t / (tr * tc), r0 = (t / tc) % tr * T, c0 = t % tc * T;
        int64_t nr = r0 + T < rows ? T : rows - r0, nc = c0 + T < cols ? T : cols - c0;
        const float *s = src + m * rows * cols + r0 * cols + c0;
        float *d = dst + m * rows * cols + c0 * rows + r0;
        for (int64_t r = 0; r < nr; r++)
            for (int64_t c = 0; c < nc; c++) tile[r][c] = s[r * cols + c];
        for (int64_t c = 0; c < nc; c++)
            for (int64_t r = 0; r < nr; r++) d[c * rows + r] = tile[r][c];
    }
}

void kiln_cpu_nchw_to_nlc(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *xs = &e->plan->slots[op->in[0]];
    transpose_batched(e->ptr[op->in[0]], e->ptr[op->out], xs->shape[0], xs->shape[1], xs->shape[2] * xs->shape[3],
                      e->n_threads);
}

void kiln_cpu_nlc_to_nchw(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_slot *xs = &e->plan->slots[op->in[0]];
    transpose_batched(e->ptr[op->in[0]], e->ptr[op->out], xs->shape[0], xs->shape[1], xs->shape[2], e->n_threads);
}
