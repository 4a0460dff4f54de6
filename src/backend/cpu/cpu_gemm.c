/* cpu_gemm.c — the linear layer on the CPU: y = x W^T + b over all leading dims, one sgemm. */
#include <cblas.h>

#include "backend/cpu/cpu_ops.h"

void kiln_cpu_linear(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *ws = &p->slots[op->in[1]];
    const float *x = e->ptr[op->in[0]], *w = e->ptr[op->in[1]];
    const float *bias = op->in[2] >= 0 ? e->ptr[op->in[2]] : NULL;
    float *y = e->ptr[op->out];
    int64_t nout = ws->shape[0], k = ws->shape[1];
    int64_t m = kiln_slot_numel(&p->slots[op->in[0]]) / k;
    /* W is stored [N, K] (torch layout), so it enters transposed */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nout, (int)k, 1.0f, x, (int)k, w, (int)k, 0.0f,
                y, (int)nout);
    if (!bias) return;
#pragma omp parallel for num_threads(e->n_threads) schedule(static)
    for (int64_t i = 0; i < m; i++) {
        float *yr = y + i * nout;
        for (int64_t j = 0; j < nout; j++) yr[j] += bias[j];
    }
}
