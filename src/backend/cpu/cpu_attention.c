/* cpu_attention.c — multi-head scaled dot-product attention on the CPU.
 *
 * out[b, i, h*D:(h+1)*D] = softmax_j(scale * q_i . k_j) v_j per head, with keys j > i
 * masked out when causal. Heads are read in place from the [B, L, H*D] tensors (leading
 * dimension H*D), so nothing is transposed. The work is split into tasks of (batch, head,
 * band of query rows), run in parallel; each task gets its scores from one sgemm, a float
 * softmax with max subtraction, and its output rows from a second sgemm. A band is sized so
 * its score rows stay in cache, and each thread has its own score buffer. */
#include <cblas.h>
#include <math.h>
#include <omp.h>

#include "backend/cpu/cpu_ops.h"

/* Scores per band, in floats (1 MiB: within a core's L2 on current server CPUs). */
#define ATTN_BAND_FLOATS ((size_t)256 << 10)

static int64_t band_rows(int64_t lq, int64_t lk) {
    int64_t rows = (int64_t)(ATTN_BAND_FLOATS / (size_t)lk);
    if (rows < 8) rows = 8; /* very long keys: keep the sgemms from degenerating */
    return rows < lq ? rows : lq;
}

size_t kiln_cpu_attention_scratch(const kiln_plan *p, const kiln_op *op, int n_threads) {
    int64_t lq = p->slots[op->in[0]].shape[1], lk = p->slots[op->in[1]].shape[1];
    return (size_t)(band_rows(lq, lk) * lk) * (size_t)(n_threads > 0 ? n_threads : 1);
}

/* Turns one row of scores into softmax weights over its first n_keys entries (the rest,
 * masked by causality, become 0). */
static void softmax_row(float *s, int64_t n_keys, int64_t lk) {
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) mx = s[j] > mx ? s[j] : mx;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n_keys; j++) {
        s[j] = kiln_cpu_expf(s[j] - mx);
        sum += s[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n_keys; j++) s[j] *= inv;
    for (int64_t j = n_keys; j < lk; j++) s[j] = 0.0f;
}

void kiln_cpu_attention(const kiln_cpu_exec *e, const kiln_op *op) {
    const kiln_plan *p = e->plan;
    const kiln_slot *qs = &p->slots[op->in[0]], *ks = &p->slots[op->in[1]];
    const float *q = e->ptr[op->in[0]], *k = e->ptr[op->in[1]], *v = e->ptr[op->in[2]];
    float *out = e->ptr[op->out];
    int64_t nb = qs->shape[0], lq = qs->shape[1], lk = ks->shape[1], width = qs->shape[2];
    int64_t heads = op->heads, d = width / heads, rows = band_rows(lq, lk), bands = (lq + rows - 1) / rows;
    int64_t n_tasks = nb * heads * bands;
    int causal = op->causal;
    float scale = op->scale;
    /* about 4 multiply-adds per score (2 * d in the products, plus the softmax) per 16 work units */
    int team = kiln_cpu_team(e->n_threads, nb * heads * lq * lk * (2 * d + 8) / 16);

#pragma omp parallel for num_threads(team) if (team > 1) schedule(dynamic)
    for (int64_t t = 0; t < n_tasks; t++) {
        int64_t b = t / (heads * bands), h = t / bands % heads, i0 = t % bands * rows;
        int64_t m = lq - i0 < rows ? lq - i0 : rows;
        float *s = e->scratch + (size_t)omp_get_thread_num() * (size_t)(rows * lk);
        const float *qh = q + (b * lq + i0) * width + h * d;
        const float *kh = k + b * lk * width + h * d;
        const float *vh = v + b * lk * width + h * d;
        float *oh = out + (b * lq + i0) * width + h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)lk, (int)d, scale, qh, (int)width, kh,
                    (int)width, 0.0f, s, (int)lk);
        for (int64_t r = 0; r < m; r++) {
            /* causal: query i sees keys 0..i */
            int64_t n_keys = causal ? (i0 + r + 1 < lk ? i0 + r + 1 : lk) : lk;
            softmax_row(s + r * lk, n_keys, lk);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)lk, 1.0f, s, (int)lk, vh,
                    (int)width, 0.0f, oh, (int)width);
    }
}
