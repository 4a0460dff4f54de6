// cuda_tools.cu — what tests and benchmarks ask of a compiled CUDA plan: the tuned choices, graph
// replay timing, an op-by-op profile, device memory in use (declared in cuda_backend.h).
#include <stdlib.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_compiled.h"

// For tests and benchmarks: which method each convolution/GEMM step chose and its measured time.
void kiln_cuda_describe(const kiln_compiled *c, FILE *f) {
    for (int i = 0; i < c->n_steps; i++) {
        const kc_step *st = &c->steps[i];
        if (st->op < 0) continue;
        const kiln_op *op = &c->plan->ops[st->op];
        if (st->has_conv)
            fprintf(f,
                    "op %4d conv   %-6s %8.3f ms  (im2col %.3f, cudnn %.3f, igemm %.3f, graph %.3f%s%s%s) "
                    "%dx%dx%dx%d->%d k%d s%d  %s%s\n",
                    st->op,
                    st->conv.method == KC_CONV_CUDNN         ? "cudnn"
                    : st->conv.method == KC_CONV_GEMM        ? "gemm"
                    : st->conv.method == KC_CONV_IGEMM       ? "igemm"
                    : st->conv.method == KC_CONV_CUDNN_GRAPH ? "graph"
                                                             : "im2col",
                    st->conv.best_ms, st->conv.im2col_ms < 1e30f ? st->conv.im2col_ms : -1.0f,
                    st->conv.cudnn_ms < 1e30f ? st->conv.cudnn_ms : -1.0f,
                    st->conv.igemm_ms < 1e30f ? st->conv.igemm_ms : -1.0f,
                    st->conv.cudnn_graph_ms < 1e30f ? st->conv.cudnn_graph_ms : -1.0f,
                    st->conv.method == KC_CONV_IGEMM || st->conv.method == KC_CONV_CUDNN_GRAPH ? " " : "",
                    st->conv.method == KC_CONV_IGEMM         ? kc_igemm_config_name(st->conv.igemm_cfg)
                    : st->conv.method == KC_CONV_CUDNN_GRAPH ? kc_cudnn_graph_tag(st->conv.cudnn_graph_state)
                                                             : "",
                    st->conv.method == KC_CONV_CUDNN_GRAPH && !kc_cudnn_graph_fused(st->conv.cudnn_graph_state)
                        ? " unfused"
                        : "",
                    st->conv.N,
                    st->conv.C, st->conv.H, st->conv.W, st->conv.O, st->conv.kh, st->conv.stride, op->label,
                    st->residual >= 0 ? " +residual" : "");
        else if (op->kind == KILN_OP_GROUP_NORM)
            fprintf(f, "op %4d gnorm  %-6s %8.3f ms  %s%s\n", st->op,
                    st->gn_cluster == -1 ? "3-kern" : st->gn_cluster == -2 ? "2-kern" : st->gn_cluster == 1 ? "1 blk" : st->gn_cluster == 2 ? "clus 2"
                    : st->gn_cluster == 4 ? "clus 4" : st->gn_cluster == 8 ? "clus 8" : "auto",
                    st->gn_ms < 1e30f ? st->gn_ms : -1.0f, op->label, st->gn_add >= 0 ? " +time embedding" : "");
        else if (st->has_gemm)
            fprintf(f, "op %4d linear %-6s %8.3f ms  M %d N %d K %d  %s%s%s\n", st->op, "lt", st->gemm.best_ms,
                    st->gemm.M, st->gemm.N, st->gemm.K, op->label, st->residual >= 0 ? " +residual" : "",
                    st->n_total ? " (horizontally fused)" : "");
        else if (st->attn_tuned) {
            const kiln_slot *sq = &c->plan->slots[op->in[0]], *sk = &c->plan->slots[op->in[1]];
            int D = (int)(sq->shape[2] / op->heads);
            const char *kiln = kc_attention_flash_supported(D) ? "flash" : "cublas";
            float kms = st->attn_kiln_ms < 1e30f ? st->attn_kiln_ms : -1.0f;
            float dms = st->attn_cudnn_ms < 1e30f ? st->attn_cudnn_ms : -1.0f;
            fprintf(f, "op %4d attn   %-6s %8.3f ms  (%s %.3f, cudnn %.3f", st->op, st->attn_cudnn ? "cudnn" : kiln,
                    st->attn_cudnn ? dms : kms, kiln, kms, dms);
            if (st->attn_cudnn) {
                char how[64];
                kc_attention_cudnn_describe(st->attn_cudnn, how, sizeof how);
                fprintf(f, ", %s", how);
            }
            fprintf(f, ") B%d H%d Lq%d Lk%d D%d%s  %s\n", (int)sq->shape[0], op->heads, (int)sq->shape[1],
                    (int)sk->shape[1], D, op->causal ? " causal" : "", op->label);
        }
    }
    double wbytes = 0;
    for (int i = 0; i < c->n_wrefs; i++)
        wbytes += (double)kiln_weight_numel(c->wrefs[i].w) * (c->wrefs[i].f32 ? 4 : 2);
    for (int i = 0; i < c->n_steps; i++)
        if (c->steps[i].wcat) {
            const kiln_op *op = &c->plan->ops[i];
            wbytes += (double)c->steps[i].n_total * (c->plan->slots[op->in[1]].shape[1] + (c->steps[i].bcat ? 1 : 0)) * 2;
        }
    fprintf(f, "weights %.1f MiB, arena %.1f MiB + scratch %.1f MiB, graph %s, %s\n", wbytes / 1048576.0,
            c->arena_bytes / 1048576.0, c->scratch_bytes / 1048576.0, c->exec ? "yes" : "no",
            kc_dtype_name(c->be->libs.dtype));
}

const char *kiln_cuda_precision(const kiln_backend *be) {
    return kc_dtype_name(((const kc_backend *)be->impl)->libs.dtype);
}

int kiln_cuda_time(kiln_compiled *c, int warmup, int iters, float *median_ms, float *min_ms) {
    cudaStream_t s = c->be->libs.stream;
    KILN_TRY(kc_ready(c));
    for (int i = 0; i < warmup; i++) {
        if (c->exec) KC_CUDA(cudaGraphLaunch(c->exec, s));
        else KILN_TRY(kc_execute(c, 0));
    }
    if (iters < 1) iters = 1;
    float *t = (float *)malloc((size_t)iters * sizeof(float));
    if (!t) return kiln_error(KILN_ENOMEM, "out of memory");
    cudaEvent_t e0, e1;
    KC_CUDA(cudaEventCreate(&e0));
    KC_CUDA(cudaEventCreate(&e1));
    int rc = 0;
    for (int i = 0; i < iters && rc == 0; i++) {
        cudaEventRecord(e0, s);
        if (c->exec) rc = cudaGraphLaunch(c->exec, s) == cudaSuccess ? 0 : kiln_error(KILN_EBACKEND, "graph launch");
        else rc = kc_execute(c, 0);
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[i], e0, e1);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (rc == 0 && cudaStreamSynchronize(s) != cudaSuccess)
        rc = kiln_error(KILN_EBACKEND, "timing: %s", cudaGetErrorString(cudaGetLastError()));
    for (int i = 1; i < iters; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            float x = t[j]; t[j] = t[j - 1]; t[j - 1] = x;
        }
    *median_ms = t[iters / 2];
    *min_ms = t[0];
    free(t);
    return rc;
}

static size_t context_bytes;  // in use right after the context was made (driver, runtime, kernels)

void kiln_cuda_note_context(void) {
    if (context_bytes) return;
    cudaFree(0);  // makes the context if there is none yet
    context_bytes = kiln_cuda_mem_used();
}

size_t kiln_cuda_mem_context(void) { return context_bytes; }

size_t kiln_cuda_mem_used(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
    return total_b - free_b;
}

// Graph replay time with some steps left out (c->skip_*), then the full graph captured again.
static int kc_time_without(kiln_compiled *c, uint64_t kinds, unsigned conv_methods, float *ms) {
    float mn = 0;
    c->skip_kinds = kinds, c->skip_conv_methods = conv_methods;
    int rc = kc_capture(c);
    if (rc == 0) rc = kiln_cuda_time(c, 3, 15, ms, &mn);
    c->skip_kinds = 0, c->skip_conv_methods = 0;
    int rc2 = kc_capture(c);
    return rc ? rc : rc2;
}

// What each op kind costs inside the graph: the replay time without it, subtracted from the full
// replay. Op-by-op timing overstates small kernels (launch gaps); this is what leaving them out saves.
static int kc_profile_graph(kiln_compiled *c, FILE *f) {
    int present[KILN_OP_COUNT] = {0}, conv_methods[KC_CONV_METHODS] = {0};
    for (int i = 0; i < c->n_steps; i++) {
        if (c->steps[i].op < 0) continue;
        present[c->plan->ops[c->steps[i].op].kind] = 1;
        if (c->steps[i].has_conv) conv_methods[c->steps[i].conv.method] = 1;
    }
    float full = 0, without = 0;
    KILN_TRY(kc_time_without(c, 0, 0, &full));
    fprintf(f, "graph replay %.3f ms; what leaving each op kind out saves (graph replays, median of 15):\n", full);
    for (int k = 0; k < KILN_OP_COUNT; k++) {
        if (!present[k]) continue;
        KILN_TRY(kc_time_without(c, 1ull << k, 0, &without));
        fprintf(f, "  graph %-18s %8.3f ms\n", kiln_op_name((kiln_op_kind)k), full - without);
    }
    static const char *names[KC_CONV_METHODS] = {"?", "gemm", "im2col", "cudnn", "igemm", "cudnn-graph"};
    for (int m = 1; m < KC_CONV_METHODS; m++) {
        if (!conv_methods[m]) continue;
        KILN_TRY(kc_time_without(c, 0, 1u << m, &without));
        fprintf(f, "  graph conv2d/%-11s %8.3f ms\n", names[m] ? names[m] : "other", full - without);
    }
    return 0;
}

int kiln_cuda_profile(kiln_compiled *c, FILE *f) {
    cudaStream_t s = c->be->libs.stream;
    KILN_TRY(kc_ready(c));
    int n = c->n_steps;
    cudaEvent_t *ev = (cudaEvent_t *)calloc((size_t)n + 1, sizeof *ev);
    double per_kind[KILN_OP_COUNT] = {0}, conv_method[KC_CONV_METHODS] = {0};
    int count[KILN_OP_COUNT] = {0};
    if (!ev) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = 0;
    for (int i = 0; i <= n && rc == 0; i++)
        if (cudaEventCreate(&ev[i]) != cudaSuccess) rc = kiln_error(KILN_EBACKEND, "cudaEventCreate");
    for (int rep = 0; rep < 2 && rc == 0; rep++) {  // the first pass warms up
        cudaEventRecord(ev[0], s);
        for (int i = 0; i < n && rc == 0; i++) {
            if (c->steps[i].op >= 0) rc = kc_run_step(c, &c->steps[i], 0);
            cudaEventRecord(ev[i + 1], s);
        }
        if (cudaStreamSynchronize(s) != cudaSuccess) rc = kiln_error(KILN_EBACKEND, "profile run failed");
    }
    double total = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (c->steps[i].op < 0) continue;
        float ms = 0;
        cudaEventElapsedTime(&ms, ev[i], ev[i + 1]);
        kiln_op_kind k = c->plan->ops[c->steps[i].op].kind;
        per_kind[k] += ms;
        count[k]++;
        if (k == KILN_OP_CONV2D) conv_method[c->steps[i].conv.method] += ms;
        total += ms;
    }
    if (rc == 0) {
        fprintf(f, "%-18s %6s %10s %7s   (op by op, events between launches; no graph)\n", "op", "count", "ms", "share");
        for (int k = 0; k < KILN_OP_COUNT; k++)
            if (count[k])
                fprintf(f, "%-18s %6d %10.3f %6.1f%%\n", kiln_op_name((kiln_op_kind)k), count[k], per_kind[k],
                        100.0 * per_kind[k] / total);
        fprintf(f, "%-18s %6s %10.3f   (conv: gemm %.3f, im2col %.3f, cudnn %.3f, igemm %.3f, cudnn graph %.3f)\n",
                "total", "", total, conv_method[KC_CONV_GEMM], conv_method[KC_CONV_IM2COL], conv_method[KC_CONV_CUDNN],
                conv_method[KC_CONV_IGEMM], conv_method[KC_CONV_CUDNN_GRAPH]);
    }
    for (int i = 0; i <= n; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    free(ev);
    if (rc == 0 && c->exec) rc = kc_profile_graph(c, f);
    return rc;
}
