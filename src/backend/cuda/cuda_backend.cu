// cuda_backend.cu — the CUDA backend's vtable: compiles a plan into steps over one device arena,
// tunes the library calls, captures the whole run as one CUDA graph, and replays it.
//
// Compile does, in order: fusion (a LINEAR/CONV2D whose only reader is an ADD takes the other
// operand as its residual; layout ops NCHW_TO_NLC/NLC_TO_NCHW become aliases, because NHWC and
// [N, HW, C] are the same bytes), memory planning over buffer lifetimes, weight upload (16-bit in
// the backend's dtype, fp16 or bf16; 4-D as [O, kh, kw, C]; norm parameters fp32; cached per
// backend so plans share them), tuning of every GEMM and convolution on random data, and graph
// capture. Run copies the host fp32 inputs in, replays the graph (which converts them to 16-bit
// NHWC first and the outputs back last), and copies the outputs out.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_compiled.h"

#ifdef KILN_HAVE_CUDNN
#include <cudnn.h>
#endif

static size_t kc_align(size_t n) { return (n + 255) & ~(size_t)255; }


// Converts and copies one weight to new device memory: fp32 as is, or 16-bit in the backend's dtype
// (4-D as NHWC).
// Converts weight w into device memory dev (fp32 as is, or 16-bit with 4-D as NHWC).
static int kc_convert_weight(kc_backend *be, const kiln_weight *w, int f32, void *dev) {
    int64_t n = kiln_weight_numel(w);
    float *host = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!host) return kiln_error(KILN_ENOMEM, "out of memory converting weight %s", w->name);
    kiln_weight_to_f32(w, host);
    if ((size_t)n > be->staging_n) {
        cudaFree(be->staging);
        be->staging = NULL;
        be->staging_n = 0;
        if (cudaMalloc(&be->staging, (size_t)n * sizeof(float)) != cudaSuccess) {
            free(host);
            return kiln_error(KILN_ENOMEM, "out of GPU memory uploading weight %s", w->name);
        }
        be->staging_n = (size_t)n;
    }
    // Same stream as the conversion kernel, so the kernel never reads a copy in flight.
    cudaError_t e = cudaMemcpyAsync(f32 ? dev : (void *)be->staging, host, (size_t)n * sizeof(float),
                                    cudaMemcpyHostToDevice, be->libs.stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(be->libs.stream);
    free(host);
    if (e != cudaSuccess) return kiln_error(KILN_EBACKEND, "uploading weight %s: %s", w->name, cudaGetErrorString(e));
    if (!f32) {
        int nhwc = w->ndim == 4;
        KILN_TRY(kc_f32_to_half(be->libs.stream, be->libs.dtype, be->staging, (kc_half *)dev, nhwc,
                                nhwc ? (int)w->shape[0] : 1, nhwc ? (int)w->shape[1] : 1,
                                nhwc ? (int)w->shape[2] : 1, nhwc ? (int)w->shape[3] : 1, (size_t)n));
        if (cudaStreamSynchronize(be->libs.stream) != cudaSuccess)
            return kiln_error(KILN_EBACKEND, "converting weight %s", w->name);
    }
    return 0;
}

// Converts and copies one weight to new device memory.
static int kc_upload_weight(kc_backend *be, const kiln_weight *w, int f32, void **out) {
    void *dev = NULL;
    size_t bytes = (size_t)kiln_weight_numel(w) * (f32 ? sizeof(float) : sizeof(kc_half));
    if (cudaMalloc(&dev, bytes ? bytes : 16) != cudaSuccess) {
        cudaGetLastError();
        return kiln_error(KILN_ENOMEM, "out of GPU memory uploading weight %s (%zu bytes)", w->name, bytes);
    }
    int rc = kc_convert_weight(be, w, f32, dev);
    if (rc) {
        cudaFree(dev);
        return rc;
    }
    *out = dev;
    return 0;
}

// ---- weights
static int kc_cache_find(kc_backend *be, const kiln_weight *w, int f32) {
    for (int i = 0; i < be->n_cache; i++)
        if (be->cache[i].w == w && be->cache[i].f32 == f32) return i;
    return -1;
}

static void kc_cache_release(kc_backend *be, const kiln_weight *w, int f32) {
    int i = kc_cache_find(be, w, f32);
    if (i < 0 || --be->cache[i].refs > 0) return;
    cudaFree(be->cache[i].dev);
    be->cache[i] = be->cache[--be->n_cache];
}

// Uploads (or finds) w for compiled plan c; c holds one count on the entry until it is freed.
static int kc_weight_get(kiln_compiled *c, const kiln_weight *w, int f32, void **out) {
    kc_backend *be = c->be;
    int held = 0;
    for (int i = 0; i < c->n_wrefs && !held; i++) held = c->wrefs[i].w == w && c->wrefs[i].f32 == f32;
    int at = kc_cache_find(be, w, f32);
    if (at >= 0) {
        if (be->cache[at].version != w->version) {  // the values changed (LoRA): convert again in place,
            KILN_TRY(kc_convert_weight(be, w, f32, be->cache[at].dev));  // other plans' graphs keep the address
            be->cache[at].version = w->version;
        }
        if (!held) be->cache[at].refs++;
    } else {
        void *dev = NULL;
        KILN_TRY(kc_upload_weight(be, w, f32, &dev));
        if (be->n_cache == be->cap_cache) {
            int cap = be->cap_cache ? 2 * be->cap_cache : 256;
            kc_cached_weight *grown = (kc_cached_weight *)realloc(be->cache, (size_t)cap * sizeof *grown);
            if (!grown) {
                cudaFree(dev);
                return kiln_error(KILN_ENOMEM, "out of memory");
            }
            be->cache = grown, be->cap_cache = cap;
        }
        be->cache[be->n_cache++] = (kc_cached_weight){w, f32, w->version, held ? 0 : 1, dev};
        at = be->n_cache - 1;
    }
    if (!held) {
        if (c->n_wrefs == c->cap_wrefs) {
            int cap = c->cap_wrefs ? 2 * c->cap_wrefs : 64;
            void *grown = realloc(c->wrefs, (size_t)cap * sizeof *c->wrefs);
            if (!grown) {
                kc_cache_release(be, w, f32);
                return kiln_error(KILN_ENOMEM, "out of memory");
            }
            c->wrefs = (decltype(c->wrefs))grown, c->cap_wrefs = cap;
        }
        c->wrefs[c->n_wrefs].w = w;
        c->wrefs[c->n_wrefs].f32 = f32;
        c->n_wrefs++;
    }
    *out = be->cache[at].dev;
    return 0;
}

// Gives up plan c's count on a weight's device copy (its data now lives elsewhere, e.g. in a
// concatenated weight), so the copy is freed when no other plan uses it.
static void kc_weight_drop(kiln_compiled *c, const kiln_weight *w, int f32) {
    for (int i = 0; i < c->n_wrefs; i++)
        if (c->wrefs[i].w == w && c->wrefs[i].f32 == f32) {
            c->wrefs[i] = c->wrefs[--c->n_wrefs];
            kc_cache_release(c->be, w, f32);
            return;
        }
}

// Device pointer of a slot read as 16-bit data (weights from the cache).
int kc_half_ptr(kiln_compiled *c, int id, const kc_half **out) {
    const kiln_slot *s = &c->plan->slots[id];
    if (s->kind == KILN_SLOT_WEIGHT) {
        void *p;
        KILN_TRY(kc_weight_get(c, s->weight, 0, &p));
        *out = (const kc_half *)p;
        return 0;
    }
    if (s->dtype != KILN_SLOT_F32)
        return kiln_error(KILN_EUNSUPPORTED, "CUDA backend: slot %s is int32 where float data is needed", s->name);
    *out = (const kc_half *)c->si[id].ptr;
    return 0;
}
int kc_f32_ptr(kiln_compiled *c, int id, const float **out) {
    const kiln_slot *s = &c->plan->slots[id];
    if (s->kind != KILN_SLOT_WEIGHT)
        return kiln_error(KILN_EUNSUPPORTED, "CUDA backend: norm parameter %s must be a weight", s->name);
    void *p;
    KILN_TRY(kc_weight_get(c, s->weight, 1, &p));
    *out = (const float *)p;
    return 0;
}

// ---- analysis: aliases, fusion, lifetimes
static int kc_is_alias_op(kiln_op_kind k) { return k == KILN_OP_NCHW_TO_NLC || k == KILN_OP_NLC_TO_NCHW; }

// Finds an ADD that is the only reader of `slot` and whose other operand can be the epilogue's
// residual (same shape, ready before op `at`). Returns the ADD's op index or -1.
static int kc_find_residual_add(const kiln_plan *p, const int *readers, int slot, int at, int *other) {
    const kiln_slot *s = &p->slots[slot];
    if (s->is_output || readers[slot] != 1) return -1;
    for (int j = at + 1; j < p->n_ops; j++) {
        const kiln_op *op = &p->ops[j];
        int uses = 0;
        for (int i = 0; i < op->n_in; i++) uses += op->in[i] == slot;
        if (!uses) continue;
        if (op->kind != KILN_OP_ADD || uses != 1) return -1;
        int o = op->in[0] == slot ? op->in[1] : op->in[0];
        const kiln_slot *so = &p->slots[o];
        if (kiln_slot_numel(so) != kiln_slot_numel(s) || so->ndim != s->ndim || so->dtype != KILN_SLOT_F32) return -1;
        if (so->kind == KILN_SLOT_ACTIVATION && so->producer >= at) return -1;
        *other = o;
        return j;
    }
    return -1;
}

// Assigns arena offsets to buffers given their lifetimes [first, last] in step order (greedy:
// largest first, lowest offset that overlaps no live buffer). Returns the arena size.
typedef struct kc_buffer { size_t size, offset; int first, last; } kc_buffer;
static size_t kc_plan_memory(kc_buffer *b, int n) {
    int *order = (int *)malloc((size_t)(n ? n : 1) * sizeof(int));
    int *placed = (int *)malloc((size_t)(n ? n : 1) * sizeof(int));
    int n_placed = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++)  // insertion sort by size, descending (few thousand buffers at most)
        for (int j = i; j > 0 && b[order[j]].size > b[order[j - 1]].size; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    for (int oi = 0; oi < n; oi++) {
        kc_buffer *cur = &b[order[oi]];
        if (!cur->size) continue;
        size_t off = 0;
        for (int moved = 1; moved;) {  // bump past every live conflict until none overlaps
            moved = 0;
            for (int k = 0; k < n_placed; k++) {
                kc_buffer *o = &b[placed[k]];
                if (o->last < cur->first || cur->last < o->first) continue;
                if (off < o->offset + o->size && o->offset < off + cur->size) {
                    off = kc_align(o->offset + o->size);
                    moved = 1;
                }
            }
        }
        cur->offset = off;
        placed[n_placed++] = order[oi];
        if (off + cur->size > total) total = off + cur->size;
    }
    free(order);
    free(placed);
    return kc_align(total);
}

// ---- the work buffer shared by the backend's plans (see kc_backend)
// Makes the work buffer at least `bytes` long. Reallocating waits for queued work first, since
// other plans' kernels may still be using the old buffer.
static int kc_work_reserve(kc_backend *be, size_t bytes) {
    if (be->work && be->work_bytes >= bytes) return 0;
    KC_CUDA(cudaStreamSynchronize(be->libs.stream));
    cudaFree(be->work);
    be->work = NULL;
    be->work_bytes = 0;
    if (cudaMalloc((void **)&be->work, bytes) != cudaSuccess) {
        cudaGetLastError();
        be->work = NULL;
        return kiln_error(KILN_ENOMEM, "out of GPU memory: the plan's activations and scratch need %.1f MiB",
                          bytes / 1048576.0);
    }
    be->work_bytes = bytes;
    be->last_run = NULL;  // a new buffer holds no plan's inputs
    return 0;
}

int kc_capture(kiln_compiled *c) {
    kc_libs *L = &c->be->libs;
    if (c->exec) cudaGraphExecDestroy(c->exec);
    if (c->graph) cudaGraphDestroy(c->graph);
    c->exec = NULL;
    c->graph = NULL;
    if (getenv("KILN_CUDA_NO_GRAPH")) return 0;
    if (cudaStreamBeginCapture(L->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    int erc = kc_execute(c, 0);
    cudaError_t e = cudaStreamEndCapture(L->stream, &c->graph);
    if (erc == 0 && e == cudaSuccess && cudaGraphInstantiate(&c->exec, c->graph, 0) == cudaSuccess) return 0;
    if (c->graph) cudaGraphDestroy(c->graph);
    c->graph = NULL;
    c->exec = NULL;
    cudaGetLastError();
    kiln_error_clear();
    fprintf(stderr, "kiln: CUDA graph capture failed; running op by op\n");
    return 0;
}

// Sum of the versions of every weight c reads (versions only grow, so any change changes the sum).
static uint64_t kc_weights_stamp(const kiln_compiled *c) {
    uint64_t stamp = 0;
    for (int i = 0; i < c->n_wrefs; i++) stamp += c->wrefs[i].w->version;
    for (int i = 0; i < c->n_steps; i++)
        for (int m = 0; m < c->steps[i].n_cat; m++)
            stamp += c->steps[i].cat[m].w->version + (c->steps[i].cat[m].b ? c->steps[i].cat[m].b->version : 0);
    return stamp;
}

// Weights whose values changed since they were uploaded (a LoRA merged or restored) are converted
// again into the same device memory, so the tuned steps and the captured graph stay valid.
static int kc_refit(kiln_compiled *c) {
    uint64_t stamp = kc_weights_stamp(c);
    if (stamp == c->weights_stamp) return 0;
    kc_backend *be = c->be;
    for (int i = 0; i < c->n_wrefs; i++) {
        int at = kc_cache_find(be, c->wrefs[i].w, c->wrefs[i].f32);
        if (at < 0 || be->cache[at].version == be->cache[at].w->version) continue;
        KILN_TRY(kc_convert_weight(be, be->cache[at].w, be->cache[at].f32, be->cache[at].dev));
        be->cache[at].version = be->cache[at].w->version;
    }
    for (int i = 0; i < c->n_steps; i++) {
        kc_step *st = &c->steps[i];
        for (int m = 0; m < st->n_cat; m++) {
            kc_cat_member *cm = &st->cat[m];
            if (cm->wver != cm->w->version) {
                KILN_TRY(kc_convert_weight(be, cm->w, 0, st->wcat + cm->row * st->cat_k));
                cm->wver = cm->w->version;
            }
            if (cm->b && cm->bver != cm->b->version) {
                KILN_TRY(kc_convert_weight(be, cm->b, 0, st->bcat + cm->row));
                cm->bver = cm->b->version;
            }
        }
    }
    c->weights_stamp = stamp;
    return 0;
}

int kc_ready(kiln_compiled *c) {
    kc_backend *be = c->be;
    KILN_TRY(kc_refit(c));  // first: a graph is never captured while weights are being converted
    if (c->arena && c->arena == be->work) return 0;
    KILN_TRY(kc_work_reserve(be, c->total_bytes));
    const char *old = c->arena;
    for (int i = 0; i < c->plan->n_slots; i++) {  // every non-weight pointer lies in the work buffer
        if (c->si[i].ptr && c->plan->slots[i].kind != KILN_SLOT_WEIGHT)
            c->si[i].ptr = be->work + ((const char *)c->si[i].ptr - old);
        if (c->si[i].f32) c->si[i].f32 = (float *)(be->work + ((const char *)c->si[i].f32 - old));
    }
    c->scratch = be->work + ((const char *)c->scratch - old);
    c->arena = be->work;
    return kc_capture(c);
}

static void kc_free_compiled(kiln_compiled *c) {
    if (!c) return;
    if (c->exec) cudaGraphExecDestroy(c->exec);
    if (c->graph) cudaGraphDestroy(c->graph);
    for (int i = 0; i < c->n_steps; i++) {
        if (c->steps[i].has_gemm) kc_gemm_destroy(&c->steps[i].gemm);
        if (c->steps[i].has_conv) kc_conv_destroy(&c->steps[i].conv);
        kc_attention_cudnn_free(c->steps[i].attn_cudnn);
        cudaFree(c->steps[i].wcat);
        cudaFree(c->steps[i].bcat);
        free(c->steps[i].cat);
    }
    for (int i = 0; i < c->n_wrefs; i++) kc_cache_release(c->be, c->wrefs[i].w, c->wrefs[i].f32);
    free(c->wrefs);
    if (c->be->last_run == c) c->be->last_run = NULL;
    if (c->pinned) cudaFreeHost(c->pinned);
    free(c->pinned_off);
    free(c->in_sent);
    free(c->si);
    free(c->steps);
    free(c->in_ids);
    free(c->out_ids);
    free(c);
}

// Whether every reader of `slot` can take it as a column range (row stride != width).
static int kc_strided_readers_ok(const kiln_plan *p, int slot) {
    for (int j = 0; j < p->n_ops; j++) {
        const kiln_op *op = &p->ops[j];
        for (int k = 0; k < op->n_in; k++) {
            if (op->in[k] != slot) continue;
            if (op->kind == KILN_OP_ATTENTION && k <= 2) continue;
            if (op->kind == KILN_OP_ADD_CHANNEL && k == 1) continue;
            return 0;
        }
    }
    return 1;
}

// Groups LINEAR ops that read the same input (no residual, outputs read only by attention or
// add_channel): q/k/v of self-attention, k/v of every cross-attention on the shared context, the
// time-embedding projections of every ResBlock. The first member becomes the fused step.
static void kc_fuse_horizontal(kiln_compiled *c, const int *readers, int *root) {
    const kiln_plan *p = c->plan;
    int no = p->n_ops;
    int *taken = (int *)calloc((size_t)no + 1, sizeof(int));
    if (!taken) return;
    for (int i = 0; i < no; i++) {
        const kiln_op *a = &p->ops[i];
        kc_step *sa = &c->steps[i];
        if (taken[i] || a->kind != KILN_OP_LINEAR || sa->op != i || sa->residual >= 0) continue;
        if (p->slots[a->out].is_output || p->slots[a->out].ndim == 4 || !kc_strided_readers_ok(p, a->out)) continue;
        if (p->slots[a->in[1]].kind != KILN_SLOT_WEIGHT) continue;
        int has_bias = a->in[2] >= 0, n_total = (int)p->slots[a->in[1]].shape[0], members = 1;
        int64_t rows = kiln_slot_numel(&p->slots[a->out]) / n_total;
        for (int j = i + 1; j < no; j++) {
            const kiln_op *b = &p->ops[j];
            if (taken[j] || b->kind != KILN_OP_LINEAR || b->in[0] != a->in[0] || c->steps[j].op != j ||
                c->steps[j].residual >= 0 || (b->in[2] >= 0) != has_bias)
                continue;
            if (p->slots[b->out].is_output || p->slots[b->in[1]].kind != KILN_SLOT_WEIGHT ||
                !kc_strided_readers_ok(p, b->out))
                continue;
            taken[j] = i + 1;  // member of the group led by op i
            members++;
            n_total += (int)p->slots[b->in[1]].shape[0];
        }
        if (members < 2) continue;
        taken[i] = i + 1;
        sa->n_total = n_total;
        size_t col = 0;
        for (int j = i; j < no; j++) {
            if (taken[j] != i + 1) continue;
            int out = p->ops[j].out;
            root[out] = root[a->out];
            c->si[out].view_off = col * sizeof(kc_half);
            c->si[out].ld = n_total;
            col += (size_t)p->slots[p->ops[j].in[1]].shape[0];
            if (j != i) c->steps[j].op = -1;
        }
        (void)rows;
        (void)readers;
    }
    free(taken);
}

// GROUP_NORM whose input is an ADD_CHANNEL result read by nothing else (a ResBlock's h + time
// embedding): the norm adds the embedding while loading, and the ADD_CHANNEL step goes.
static void kc_fuse_add_channel_norm(kiln_compiled *c, const int *readers) {
    const kiln_plan *p = c->plan;
    for (int i = 0; i < p->n_ops; i++) {
        const kiln_op *op = &p->ops[i];
        if (op->kind != KILN_OP_GROUP_NORM || c->steps[i].op != i) continue;
        const kiln_slot *sx = &p->slots[op->in[0]];
        int j = sx->producer;
        if (sx->kind != KILN_SLOT_ACTIVATION || sx->is_output || readers[op->in[0]] != 1 || sx->ndim != 4 || j < 0 ||
            p->ops[j].kind != KILN_OP_ADD_CHANNEL || c->steps[j].op != j)
            continue;
        c->steps[i].gn_x = p->ops[j].in[0];
        c->steps[i].gn_add = p->ops[j].in[1];
        c->steps[j].op = -1;
    }
}

// Builds the concatenated weights (and biases) of horizontally fused GEMMs from the cached copies.
static int kc_concat_weights(kiln_compiled *c) {
    const kiln_plan *p = c->plan;
    for (int i = 0; i < p->n_ops; i++) {
        kc_step *st = &c->steps[i];
        if (st->op < 0 || !st->n_total) continue;
        const kiln_op *a = &p->ops[i];
        int K = (int)p->slots[a->in[1]].shape[1], has_bias = a->in[2] >= 0;
        st->cat_k = K;
        st->cat = (kc_cat_member *)calloc((size_t)p->n_ops - i, sizeof *st->cat);
        if (!st->cat) return kiln_error(KILN_ENOMEM, "out of memory");
        KC_CUDA(cudaMalloc((void **)&st->wcat, (size_t)st->n_total * K * sizeof(kc_half)));
        if (has_bias) KC_CUDA(cudaMalloc((void **)&st->bcat, (size_t)st->n_total * sizeof(kc_half)));
        size_t row = 0;
        for (int j = i; j < p->n_ops; j++) {
            const kiln_op *b = &p->ops[j];
            if (b->kind != KILN_OP_LINEAR || b->in[0] != a->in[0] || c->si[b->out].ld != st->n_total ||
                c->si[b->out].buf != c->si[a->out].buf)
                continue;
            const kc_half *w = NULL, *bias = NULL;
            KILN_TRY(kc_half_ptr(c, b->in[1], &w));
            size_t n = (size_t)p->slots[b->in[1]].shape[0];
            KC_CUDA(cudaMemcpy(st->wcat + row * K, w, n * K * sizeof(kc_half), cudaMemcpyDeviceToDevice));
            if (has_bias) {
                KILN_TRY(kc_half_ptr(c, b->in[2], &bias));
                KC_CUDA(cudaMemcpy(st->bcat + row, bias, n * sizeof(kc_half), cudaMemcpyDeviceToDevice));
            }
            const kiln_weight *mw = p->slots[b->in[1]].weight, *mb = has_bias ? p->slots[b->in[2]].weight : NULL;
            kc_cat_member *cm = &st->cat[st->n_cat++];
            cm->w = mw, cm->b = mb, cm->row = row, cm->n = n, cm->wver = mw->version, cm->bver = mb ? mb->version : 0;
            row += n;
            kc_weight_drop(c, p->slots[b->in[1]].weight, 0);
            if (has_bias) kc_weight_drop(c, p->slots[b->in[2]].weight, 0);
        }
        if (row != (size_t)st->n_total)
            return kiln_error(KILN_EBACKEND, "fused GEMM at op %d: %zu of %d rows found", i, row, st->n_total);
    }
    return 0;
}

static int kc_compile_impl(kiln_compiled *c) {
    const kiln_plan *p = c->plan;
    int ns = p->n_slots, no = p->n_ops;
    kc_libs *L = &c->be->libs;
    KC_CUDA(cudaSetDevice(c->be->device));
    c->si = (kc_slotinfo *)calloc((size_t)ns + 1, sizeof *c->si);
    c->steps = (kc_step *)calloc((size_t)no + 1, sizeof *c->steps);
    c->in_ids = (int *)malloc(((size_t)ns + 1) * sizeof(int));
    c->out_ids = (int *)malloc(((size_t)ns + 1) * sizeof(int));
    int *readers = (int *)calloc((size_t)ns + 1, sizeof(int));
    int *root = (int *)malloc(((size_t)ns + 1) * sizeof(int));
    int *def_step = (int *)malloc(((size_t)ns + 1) * sizeof(int));
    kc_buffer *bufs = (kc_buffer *)calloc((size_t)ns + 1, sizeof *bufs);
    size_t scratch = 0, io_bytes = 0, total = 0;
    int rc = 0;
    if (!c->si || !c->steps || !c->in_ids || !c->out_ids || !readers || !root || !def_step || !bufs) {
        rc = kiln_error(KILN_ENOMEM, "out of memory compiling a plan");
        goto done;
    }
    kiln_plan_io_order(p, c->in_ids, &c->n_in, c->out_ids, &c->n_out);
    for (int i = 0; i < no; i++)
        for (int k = 0; k < p->ops[i].n_in; k++)
            if (p->ops[i].in[k] >= 0) readers[p->ops[i].in[k]]++;
    for (int i = 0; i < ns; i++) root[i] = i, def_step[i] = -1, c->si[i].buf = -1;

    // Steps, with residual fusion and aliases.
    c->n_steps = no;
    for (int i = 0; i < no; i++) c->steps[i].op = -2;  // not yet decided
    for (int i = 0; i < no; i++) {
        const kiln_op *op = &p->ops[i];
        kc_step *st = &c->steps[i];
        if (st->op == -1) continue;  // an ADD folded into an earlier step
        st->op = i, st->out = op->out, st->residual = -1, st->gn_x = st->gn_add = -1;
        if (kc_is_alias_op(op->kind)) {
            if (p->slots[op->in[0]].kind == KILN_SLOT_WEIGHT) {
                rc = kiln_error(KILN_EUNSUPPORTED, "CUDA backend: layout op on weight %s", p->slots[op->in[0]].name);
                goto done;
            }
            root[op->out] = root[op->in[0]];
            st->op = -1;
            continue;
        }
        if ((op->kind == KILN_OP_LINEAR || op->kind == KILN_OP_CONV2D) && !getenv("KILN_CUDA_NO_FUSE")) {
            int other = -1, j = kc_find_residual_add(p, readers, op->out, i, &other);
            if (j >= 0) {
                st->out = p->ops[j].out;
                st->residual = other;
                c->steps[j].op = -1;
            }
        }
    }
    if (!getenv("KILN_CUDA_NO_FUSE")) {
        kc_fuse_horizontal(c, readers, root);
        kc_fuse_add_channel_norm(c, readers);
    }
    // Buffers: one per root slot that holds data (inputs, activations), lifetimes in step order.
    for (int i = 0; i < ns; i++) bufs[i].first = INT_MAX, bufs[i].last = -1;
    for (int i = 0; i < ns; i++) {
        const kiln_slot *s = &p->slots[i];
        if (s->kind == KILN_SLOT_WEIGHT) continue;
        int r = root[i];
        kc_buffer *b = &bufs[r];
        size_t bytes = (size_t)kiln_slot_numel(s) * (s->dtype == KILN_SLOT_I32 ? 4 : sizeof(kc_half));
        if (bytes > b->size) b->size = bytes;
        if (s->kind == KILN_SLOT_INPUT) b->first = -1;
        if (s->is_output) b->last = INT_MAX;
    }
    for (int i = 0; i < no; i++) {
        const kc_step *st = &c->steps[i];
        if (st->op < 0) continue;
        const kiln_op *op = &p->ops[i];
        kc_buffer *bo = &bufs[root[st->out]];
        if (i < bo->first) bo->first = i;
        if (i > bo->last) bo->last = i;
        for (int k = 0; k < op->n_in; k++) {
            int id = op->in[k];
            if (id < 0 || p->slots[id].kind == KILN_SLOT_WEIGHT || (k == 0 && st->gn_x >= 0)) continue;
            kc_buffer *b = &bufs[root[id]];
            if (i > b->last) b->last = i;
            if (i < b->first) b->first = i;
        }
        if (st->residual >= 0 && p->slots[st->residual].kind != KILN_SLOT_WEIGHT) {
            kc_buffer *b = &bufs[root[st->residual]];
            if (i > b->last) b->last = i;
        }
        for (int k = 0; k < 2 && st->gn_add >= 0; k++) {  // a fused ADD_CHANNEL's operands
            int id = k ? st->gn_add : st->gn_x;
            if (p->slots[id].kind == KILN_SLOT_WEIGHT) continue;
            kc_buffer *b = &bufs[root[id]];
            if (i > b->last) b->last = i;
            if (i < b->first) b->first = i;
        }
    }
    for (int i = 0; i < ns; i++)  // aliases, weights, and results of fused-away steps hold no memory
        if (root[i] != i || p->slots[i].kind == KILN_SLOT_WEIGHT || bufs[i].last < bufs[i].first) bufs[i].size = 0;
    for (int i = 0; i < no; i++)  // a fused GEMM's buffer holds all its members' columns
        if (c->steps[i].op >= 0 && c->steps[i].n_total) {
            const kiln_slot *so = &p->slots[p->ops[i].out];
            int64_t rows = kiln_slot_numel(so) / so->shape[so->ndim - 1];
            bufs[root[p->ops[i].out]].size = (size_t)rows * c->steps[i].n_total * sizeof(kc_half);
        }
    c->arena_bytes = kc_plan_memory(bufs, ns);
    // Scratch after the activations.
    for (int i = 0; i < no; i++) {
        if (c->steps[i].op < 0) continue;
        size_t need = kc_step_scratch(p, &p->ops[i]);
        if (need > scratch) scratch = need;
    }
    c->scratch_bytes = kc_align(scratch);
    for (int i = 0; i < c->n_in; i++) io_bytes += kc_align((size_t)kiln_slot_numel(&p->slots[c->in_ids[i]]) * 4);
    for (int i = 0; i < c->n_out; i++) io_bytes += kc_align((size_t)kiln_slot_numel(&p->slots[c->out_ids[i]]) * 4);
    total = c->arena_bytes + c->scratch_bytes + io_bytes;
    c->total_bytes = total ? total : 256;
    rc = kc_work_reserve(c->be, c->total_bytes);
    if (rc) goto done;
    c->arena = c->be->work;
    c->be->last_run = NULL;  // tuning overwrites whatever inputs the work buffer held
    c->pinned_off = (size_t *)calloc((size_t)(c->n_in + c->n_out) + 1, sizeof *c->pinned_off);
    c->in_sent = (int *)calloc((size_t)c->n_in + 1, sizeof *c->in_sent);
    if (c->pinned_off && c->in_sent && io_bytes && cudaMallocHost((void **)&c->pinned, io_bytes) == cudaSuccess) {
        size_t off = 0;
        for (int i = 0; i < c->n_in + c->n_out; i++) {
            c->pinned_off[i] = off;
            int id = i < c->n_in ? c->in_ids[i] : c->out_ids[i - c->n_in];
            off += kc_align((size_t)kiln_slot_numel(&p->slots[id]) * 4);
        }
    } else {
        cudaGetLastError();  // pageable copies then
        c->pinned = NULL;
    }
    c->scratch = c->arena + c->arena_bytes;
    {
        char *io = c->arena + c->arena_bytes + c->scratch_bytes;
        for (int i = 0; i < c->n_in; i++) {
            int id = c->in_ids[i];
            c->si[id].f32 = (float *)io;
            io += kc_align((size_t)kiln_slot_numel(&p->slots[id]) * 4);
        }
        for (int i = 0; i < c->n_out; i++) {
            int id = c->out_ids[i];
            c->si[id].f32 = (float *)io;
            io += kc_align((size_t)kiln_slot_numel(&p->slots[id]) * 4);
        }
    }
    for (int i = 0; i < ns; i++) {
        const kiln_slot *s = &p->slots[i];
        if (s->kind == KILN_SLOT_WEIGHT) continue;
        c->si[i].buf = root[i];
        c->si[i].ptr = c->arena + bufs[root[i]].offset + c->si[i].view_off;
        if (s->kind == KILN_SLOT_INPUT && s->dtype == KILN_SLOT_I32) c->si[i].ptr = c->si[i].f32;
    }
    // Random finite data everywhere, so tuning never times zeros or NaNs.
    rc = kc_fill_random(L->stream, L->dtype, (kc_half *)c->arena, (c->arena_bytes + c->scratch_bytes) / 2, 12345u,
                        0.5f);
    if (rc) goto done;
    for (int i = 0; i < c->n_in; i++) {
        int id = c->in_ids[i];
        size_t n = (size_t)kiln_slot_numel(&p->slots[id]);
        if (p->slots[id].dtype == KILN_SLOT_I32) {
            if (cudaMemsetAsync(c->si[id].f32, 0, n * 4, L->stream) != cudaSuccess) {
                rc = kiln_error(KILN_EBACKEND, "cudaMemset failed");
                goto done;
            }
        } else {  // half the f32 buffer's bytes hold random halves: reinterpret a random fill as f32 data
            rc = kc_half_to_f32(L->stream, L->dtype, (const kc_half *)c->arena, c->si[id].f32, 0, 1, 1, 1, 1,
                                n < c->arena_bytes / 2 ? n : c->arena_bytes / 2);
            if (rc) goto done;
        }
    }
    rc = kc_concat_weights(c);
    if (rc) goto done;
    // Tuning run (uploads weights on first use), then the graph.
    rc = kc_execute(c, 1);
    if (rc) goto done;
    if (cudaStreamSynchronize(L->stream) != cudaSuccess) {
        rc = kiln_error(KILN_EBACKEND, "compile: %s", cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    c->weights_stamp = kc_weights_stamp(c);
    rc = kc_capture(c);
done:
    free(readers);
    free(root);
    free(def_step);
    free(bufs);
    return rc;
}

static int kc_compile(kiln_backend *be, const kiln_plan *plan, kiln_compiled **out) {
    *out = NULL;
    if (plan->status) return kiln_error(plan->status, "cannot compile a plan that failed to build");
    kiln_compiled *c = (kiln_compiled *)calloc(1, sizeof *c);
    if (!c) return kiln_error(KILN_ENOMEM, "out of memory");
    c->be = (kc_backend *)be->impl;
    c->plan = plan;
    int rc = kc_compile_impl(c);
    if (rc) {
        kc_free_compiled(c);
        return rc;
    }
    *out = c;
    return 0;
}

// Host side of a run: inputs into the work buffer (through pinned memory when there is some,
// skipping inputs unchanged since this plan's last run), the graph, outputs back.
static int kc_run(kiln_compiled *c, const void *const *inputs, void *const *outputs) {
    const kiln_plan *p = c->plan;
    kc_backend *be = c->be;
    cudaStream_t s = be->libs.stream;
    KC_CUDA(cudaSetDevice(be->device));
    KILN_TRY(kc_ready(c));
    if (be->last_run != c && c->in_sent) memset(c->in_sent, 0, (size_t)c->n_in * sizeof *c->in_sent);
    be->last_run = NULL;  // until this run has put its inputs in place
    for (int i = 0; i < c->n_in; i++) {
        int id = c->in_ids[i];
        size_t bytes = (size_t)kiln_slot_numel(&p->slots[id]) * 4;
        const void *src = inputs[i];
        if (c->pinned) {
            char *h = c->pinned + c->pinned_off[i];
            if (c->in_sent[i] && !memcmp(h, inputs[i], bytes)) continue;
            memcpy(h, inputs[i], bytes);
            src = h;
            c->in_sent[i] = 1;
        }
        KC_CUDA(cudaMemcpyAsync(c->si[id].f32, src, bytes, cudaMemcpyHostToDevice, s));
    }
    if (c->exec) {
        KC_CUDA(cudaGraphLaunch(c->exec, s));
    } else {
        KILN_TRY(kc_execute(c, 0));
    }
    for (int i = 0; i < c->n_out; i++) {
        int id = c->out_ids[i];
        size_t bytes = (size_t)kiln_slot_numel(&p->slots[id]) * 4;
        void *dst = c->pinned ? (void *)(c->pinned + c->pinned_off[c->n_in + i]) : outputs[i];
        KC_CUDA(cudaMemcpyAsync(dst, c->si[id].f32, bytes, cudaMemcpyDeviceToHost, s));
    }
    KC_CUDA(cudaStreamSynchronize(s));
    for (int i = 0; c->pinned && i < c->n_out; i++)
        memcpy(outputs[i], c->pinned + c->pinned_off[c->n_in + i],
               (size_t)kiln_slot_numel(&p->slots[c->out_ids[i]]) * 4);
    be->last_run = c;
    return 0;
}

static void kc_destroy(kiln_backend *be) {
    if (!be) return;
    kc_backend *b = (kc_backend *)be->impl;
    if (b) {
        for (int i = 0; i < b->n_cache; i++) cudaFree(b->cache[i].dev);
        free(b->cache);
        cudaFree(b->work);
        kc_gemm_forget_all(&b->libs);
        cudaFree(b->staging);
        if (b->libs.lt) cublasLtDestroy(b->libs.lt);
        if (b->libs.blas) cublasDestroy(b->libs.blas);
#ifdef KILN_HAVE_CUDNN
        if (b->libs.cudnn) cudnnDestroy((cudnnHandle_t)b->libs.cudnn);
#endif
        if (b->libs.stream) cudaStreamDestroy(b->libs.stream);
        free(b);
    }
    free(be);
}

static const kiln_backend_ops kc_ops = {"cuda", kc_compile, kc_run, kc_free_compiled, kc_destroy, 1};

extern "C" int kiln_backend_cuda_create_ex(int device, int bf16, kiln_backend **out) {
    *out = NULL;
    char name[256];
    int major = 0, minor = 0;
    KILN_TRY(kiln_cuda_check_device(device, name, sizeof name, &major, &minor));
    KC_CUDA(cudaSetDevice(device));
    kiln_cuda_note_context();  // device memory of a bare context: the baseline kiln's own use is measured from
    kiln_backend *be = (kiln_backend *)calloc(1, sizeof *be);
    kc_backend *b = (kc_backend *)calloc(1, sizeof *b);
    if (!be || !b) {
        free(be);
        free(b);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    be->ops = &kc_ops;
    be->impl = b;
    b->device = device;
    b->libs.dtype = bf16 ? KC_BF16 : KC_F16;
    snprintf(b->name, sizeof b->name, "%s", name);
    int rc = 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) b->libs.sm_count = prop.multiProcessorCount;
    b->libs.cc_major = major;
    if (cudaStreamCreateWithFlags(&b->libs.stream, cudaStreamNonBlocking) != cudaSuccess)
        rc = kiln_error(KILN_EBACKEND, "cannot create a CUDA stream on %s", name);
    else if (cublasLtCreate(&b->libs.lt) != CUBLAS_STATUS_SUCCESS)
        rc = kiln_error(KILN_EBACKEND, "cannot initialise cuBLASLt on %s", name);
    else if (cublasCreate(&b->libs.blas) != CUBLAS_STATUS_SUCCESS)
        rc = kiln_error(KILN_EBACKEND, "cannot initialise cuBLAS on %s", name);
    if (rc) {
        kc_destroy(be);
        return rc;
    }
    cublasSetMathMode(b->libs.blas, CUBLAS_DEFAULT_MATH);
#ifdef KILN_HAVE_CUDNN
    cudnnHandle_t dnn = NULL;
    if (!getenv("KILN_CUDA_NO_CUDNN") && cudnnCreate(&dnn) == CUDNN_STATUS_SUCCESS) b->libs.cudnn = dnn;
#endif
    *out = be;
    return 0;
}
