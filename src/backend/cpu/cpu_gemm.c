/* cpu_gemm.c — matrix products on the CPU: a tiled parallel sgemm over single-threaded
 * OpenBLAS calls, and the linear layer y = x W^T + b over all leading dims. */
#include <cblas.h>

#include "backend/cpu/cpu_ops.h"

/* Multiply-adds a thread should have to itself: each tile repacks its slices of A and B,
 * which only pays off on tiles of this much work. */
#define GEMM_MACS_PER_THREAD (1 << 19)

void kiln_cpu_sgemm(int n_threads, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                    const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    double macs = (double)m * n * k;
    if (macs / GEMM_MACS_PER_THREAD < n_threads) n_threads = (int)(macs / GEMM_MACS_PER_THREAD);
    if (n_threads <= 1) {
        cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* a grid tm x tn = n_threads whose tiles are closest to square: each tile packs its
     * slice of A and of B, so the total packing work is smallest with the least perimeter */
    int tm = 1, tn = n_threads;
    double best = -1;
    for (int i = 1; i <= n_threads; i++) {
        if (n_threads % i) continue;
        int j = n_threads / i;
        if (i > m || j > n) continue;
        double cost = (double)m / i + (double)n / j;
        if (best < 0 || cost < best) {
            best = cost;
            tm = i;
            tn = j;
        }
    }
    if (best < 0) { /* fewer rows and columns than threads: split the longer side only */
        tm = m >= n ? (m < n_threads ? m : n_threads) : 1;
        tn = m >= n ? 1 : (n < n_threads ? n : n_threads);
    }
#pragma omp parallel for num_threads(tm * tn) schedule(static)
    for (int t = 0; t < tm * tn; t++) {
        int ti = t / tn, tj = t % tn;
        int i0 = (int)((int64_t)m * ti / tm), i1 = (int)((int64_t)m * (ti + 1) / tm);
        int j0 = (int)((int64_t)n * tj / tn), j1 = (int)((int64_t)n * (tj + 1) / tn);
        if (i1 <= i0 || j1 <= j0) continue;
        /* op(A) rows i0..i1: A is [m, k] untransposed or [k, m] transposed; likewise B */
        const float *at = ta == CblasNoTrans ? a + (size_t)i0 * lda : a + i0;
        const float *bt = tb == CblasNoTrans ? b + j0 : b + (size_t)j0 * ldb;
        cblas_sgemm(CblasRowMajor, ta, tb, i1 - i0, j1 - j0, k, alpha, at, lda, bt, ldb, beta,
                    c + (size_t)i0 * ldc + j0, ldc);
    }
}

void kiln_cpu_linear(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *ws = &p->slots[op->in[1]];
    const float *x = e->ptr[op->in[0]], *w = e->ptr[op->in[1]];
    const float *bias = op->in[2] >= 0 ? e->ptr[op->in[2]] : NULL;
    float *y = e->ptr[op->out];
    int64_t nout = ws->shape[0], k = ws->shape[1];
    int64_t m = kiln_slot_numel(&p->slots[op->in[0]]) / k;
    /* W is stored [N, K] (torch layout), so it enters transposed */
    kiln_cpu_sgemm(e->n_threads, CblasNoTrans, CblasTrans, (int)m, (int)nout, (int)k, 1.0f, x, (int)k, w, (int)k,
                   0.0f, y, (int)nout);
    if (!bias) return;
    int team = kiln_cpu_team(e->n_threads, m * nout);
#pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t i = 0; i < m; i++) {
        float *yr = y + i * nout;
        for (int64_t j = 0; j < nout; j++) yr[j] += bias[j];
    }
}
