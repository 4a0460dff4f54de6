/* cpu_attention.c — multi-head scaled dot-product attention on the CPU.
 *
 * out[b, i, h*D:(h+1)*D] = softmax_j(scale * q_i . k_j) v_j per head, with keys j > i
 * masked out when causal. Heads are read in place from the [B, L, H*D] tensors (leading
 * dimension H*D), so nothing is transposed. For each (batch, head) a band of query rows
 * gets its score matrix from one sgemm, a float softmax with max subtraction (rows in
 * parallel), and its output from a second sgemm. The band bounds the scratch on long
 * sequences. */
#include <cblas.h>
#include <math.h>

#include "backend/cpu/cpu_ops.h"

/* Upper bound on one band's score matrix, in floats (16 MiB). */
#define ATTN_SCRATCH_FLOATS ((size_t)4 << 20)

static int64_t band_rows(int64_t lq, int64_t lk) {
    int64_t rows = (int64_t)(ATTN_SCRATCH_FLOATS / (size_t)lk);
    if (rows < 1) rows = 1;
    return rows < lq ? rows : lq;
}

size_t kiln_cpu_attention_scratch(const kiln_plan *p, const kiln_op *op) {
    int64_t lq = p->slots[op->in[0]].shape[1], lk = p->slots[op->in[1]].shape[1];
    return (size_t)(band_rows(lq, lk) * lk);
}

void kiln_cpu_attention(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *qs = &p->slots[op->in[0]], *ks = &p->slots[op->in[1]];
    const float *q = e->ptr[op->in[0]], *k = e->ptr[op->in[1]], *v = e->ptr[op->in[2]];
    float *out = e->ptr[op->out], *s = e->scratch;
    int64_t nb = qs->shape[0], lq = qs->shape[1], lk = ks->shape[1], width = qs->shape[2];
    int64_t heads = op->heads, d = width / heads, rows = band_rows(lq, lk);
    int causal = op->causal;

    for (int64_t b = 0; b < nb; b++) {
        for (int64_t h = 0; h < heads; h++) {
            const float *qh = q + b * lq * width + h * d;
            const float *kh = k + b * lk * width + h * d;
            const float *vh = v + b * lk * width + h * d;
            float *oh = out + b * lq * width + h * d;
            for (int64_t i0 = 0; i0 < lq; i0 += rows) {
                int64_t m = lq - i0 < rows ? lq - i0 : rows;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)lk, (int)d, op->scale,
                            qh + i0 * width, (int)width, kh, (int)width, 0.0f, s, (int)lk);
#pragma omp parallel for num_threads(e->n_threads) schedule(static)
                for (int64_t r = 0; r < m; r++) {
                    float *sr = s + r * lk;
                    /* causal: query i sees keys 0..i */
                    int64_t n_keys = causal ? (i0 + r + 1 < lk ? i0 + r + 1 : lk) : lk;
                    float mx = -INFINITY;
                    for (int64_t j = 0; j < n_keys; j++) mx = sr[j] > mx ? sr[j] : mx;
                    float sum = 0.0f;
                    for (int64_t j = 0; j < n_keys; j++) {
                        sr[j] = expf(sr[j] - mx);
                        sum += sr[j];
                    }
                    float inv = 1.0f / sum;
                    for (int64_t j = 0; j < n_keys; j++) sr[j] *= inv;
                    for (int64_t j = n_keys; j < lk; j++) sr[j] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)lk, 1.0f, s, (int)lk, vh,
                            (int)width, 0.0f, oh + i0 * width, (int)width);
            }
        }
    }
}
