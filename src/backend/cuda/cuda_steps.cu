// cuda_steps.cu — running one compiled step of the CUDA backend: dispatch from a plan op to the
// launcher of its op family, with the physical layout (NHWC, row strides of column views) applied.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_compiled.h"

// ---- running one step
static int kc_slot_dims(const kiln_slot *s, int *N, int *C, int *H, int *W) {
    if (s->ndim != 4) return kiln_error(KILN_EUNSUPPORTED, "CUDA backend: %s is not 4-D", s->name);
    *N = (int)s->shape[0], *C = (int)s->shape[1], *H = (int)s->shape[2], *W = (int)s->shape[3];
    return 0;
}

// ---- attention: kiln's own kernels or cuDNN's fused attention, whichever was faster at tune time
typedef struct kc_attn_call {
    kc_libs *L;
    const kc_half *q, *k, *v;
    kc_half *o;
    int B, H, Lq, Lk, D;
    long long ldq, ldk, ldv, ldo;
    float scale;
    int causal;
    void *scratch;
} kc_attn_call;

// kiln's attention: the flash kernel where it applies, else the cuBLAS fallback.
static int kc_attention_kiln(void *ctx) {
    const kc_attn_call *a = (const kc_attn_call *)ctx;
    if (kc_attention_flash_supported(a->D) && getenv("KILN_CUDA_NO_FLASH") == NULL) {
        int rc = kc_attention_flash(a->L->stream, a->L->dtype, a->q, a->k, a->v, a->o, a->B, a->H, a->Lq, a->Lk,
                                    a->D, a->ldq, a->ldk, a->ldv, a->ldo, a->scale, a->causal);
        if (rc != KILN_EUNSUPPORTED) return rc;
        kiln_error_clear();
    }
    return kc_attention_fallback(a->L, a->q, a->k, a->v, a->o, a->B, a->H, a->Lq, a->Lk, a->D, a->ldq, a->ldk, a->ldv,
                                 a->ldo, a->scale, a->causal, a->scratch);
}

// What decides an attention step's tactic: operand shapes, row strides, heads, mask, scale.
static void kc_attention_key(const kiln_compiled *c, const kc_step *st, long long key[11]) {
    const kiln_plan *p = c->plan;
    const kiln_op *op = &p->ops[st->op];
    const kiln_slot *sx = &p->slots[op->in[0]], *sk = &p->slots[op->in[1]];
    long long E = sx->shape[2];
    int ids[4] = {op->in[0], op->in[1], op->in[2], st->out};
    key[0] = sx->shape[0], key[1] = sx->shape[1], key[2] = E, key[3] = sk->shape[1];
    key[4] = op->heads, key[5] = op->causal;
    for (int i = 0; i < 4; i++) key[6 + i] = c->si[ids[i]].ld ? c->si[ids[i]].ld : E;
    key[10] = 0;
    memcpy(&key[10], &op->scale, sizeof op->scale);  // the bits: equal scales, equal keys
}

// Times cuDNN's fused attention (when it can run this shape) against kiln's and keeps the faster
// in st->attn_cudnn. KILN_CUDA_FORCE_CUDNN_SDPA keeps cuDNN's wherever it runs (tests). A step
// identical to an earlier one takes that one's choice (and shares its cuDNN plan).
static int kc_attention_tune(kiln_compiled *c, kc_step *st, kc_attn_call *a) {
    kc_attention_cudnn_free(st->attn_cudnn);
    st->attn_cudnn = NULL;
    st->attn_tuned = 1;
    st->attn_kiln_ms = st->attn_cudnn_ms = FLT_MAX;
    long long key[11], other[11];
    kc_attention_key(c, st, key);
    int aligned = (uintptr_t)a->q % 16 == 0 && (uintptr_t)a->k % 16 == 0 && (uintptr_t)a->v % 16 == 0 &&
                  (uintptr_t)a->o % 16 == 0;
    for (kc_step *prev = c->steps; prev < st; prev++) {
        if (prev->op < 0 || !prev->attn_tuned) continue;
        kc_attention_key(c, prev, other);
        if (memcmp(key, other, sizeof key) != 0 || (prev->attn_cudnn && !aligned)) continue;
        st->attn_cudnn = kc_attention_cudnn_share(prev->attn_cudnn);
        st->attn_kiln_ms = prev->attn_kiln_ms, st->attn_cudnn_ms = prev->attn_cudnn_ms;
        return 0;
    }
    KILN_TRY(kc_attention_cudnn_try(a->L, a->L->dtype, a->q, a->k, a->v, a->o, a->B, a->H, a->Lq, a->Lk, a->D, a->ldq,
                                    a->ldk, a->ldv, a->ldo, a->scale, a->causal, c->scratch, c->scratch_bytes,
                                    &st->attn_cudnn, &st->attn_cudnn_ms));
    if (!st->attn_cudnn) return 0;
    // cuDNN's result is checked against kiln's on this data before it is trusted: a graph cuDNN
    // accepts but reads differently (layout, mask) must not be picked silently.
    int force = getenv("KILN_CUDA_FORCE_CUDNN_SDPA") != NULL;
    long long rows = (long long)a->B * a->Lq;
    int cols = a->H * a->D;
    kc_half *theirs = NULL;
    KC_CUDA(cudaMalloc(&theirs, (size_t)rows * cols * sizeof(kc_half)));
    int rc = kc_attention_cudnn_run(a->L, st->attn_cudnn, a->q, a->k, a->v, a->o, a->scratch);
    if (rc == 0 && cudaMemcpy2DAsync(theirs, (size_t)cols * sizeof(kc_half), a->o, (size_t)a->ldo * sizeof(kc_half),
                                     (size_t)cols * sizeof(kc_half), (size_t)rows, cudaMemcpyDeviceToDevice,
                                     a->L->stream) != cudaSuccess)
        rc = kiln_error(KILN_EBACKEND, "attention: copying cuDNN's result: %s", cudaGetErrorString(cudaGetLastError()));
    if (rc == 0) rc = force ? kc_attention_kiln(a) : kc_time_launches(a->L->stream, kc_attention_kiln, a, &st->attn_kiln_ms);
    double rel = 0.0;
    if (rc == 0) rc = kc_rel_l2_diff(a->L->stream, a->L->dtype, theirs, cols, a->o, a->ldo, rows, cols, &rel);
    cudaFree(theirs);
    if (rc) return rc;
    int trusted = rel <= 2e-2;  // false for NaN too
    if (!trusted && (force || getenv("KILN_CUDA_DEBUG_SDPA"))) {  // the backend has no logger: opt-in only
        char how[64];
        kc_attention_cudnn_describe(st->attn_cudnn, how, sizeof how);
        fprintf(stderr, "kiln: cuDNN fused attention (%s) differs from kiln's kernel by %.3g (relative L2) for "
                        "B%d H%d Lq%d Lk%d D%d%s: %s\n", how, rel, a->B, a->H, a->Lq, a->Lk, a->D,
                a->causal ? " causal" : "", force ? "used anyway (KILN_CUDA_FORCE_CUDNN_SDPA)" : "not used");
    }
    if (!force && (!trusted || st->attn_kiln_ms <= st->attn_cudnn_ms)) {
        kc_attention_cudnn_free(st->attn_cudnn);
        st->attn_cudnn = NULL;
    }
    return 0;
}

// GroupNorm's forms (one kernel with clusters of 1..8 blocks, or three kernels) are timed on the
// step's own shapes; the fastest is kept.
typedef struct kc_gn_call { kc_libs *L; kc_gn_args g; void *scratch; } kc_gn_call;
static int kc_gn_launch_timed(void *ctx) {
    kc_gn_call *a = (kc_gn_call *)ctx;
    return kc_group_norm(a->L->stream, a->L->dtype, a->L->cc_major, &a->g, a->scratch);
}
static int kc_group_norm_tune(kc_libs *L, const kc_gn_args *g, void *scratch, kc_step *st) {
    int sizes[6] = {-1, -2}, n = 2 + kc_gn_cluster_sizes(L->cc_major, g, sizes + 2);
    kc_gn_call a = {L, *g, scratch};
    st->gn_cluster = 0, st->gn_ms = 3.4e38f;
    const char *force = getenv("KILN_CUDA_GN_CLUSTER");  // tests: this cluster size wherever it fits
    if (force) {
        for (int i = 0; i < n; i++)
            if (sizes[i] == atoi(force)) st->gn_cluster = sizes[i];
        return 0;
    }
    for (int i = 0; i < n; i++) {
        float ms = 0;
        a.g.cluster = sizes[i];
        if (kc_time_launches(L->stream, kc_gn_launch_timed, &a, &ms) != 0) {  // this form cannot run here
            cudaGetLastError();
            kiln_error_clear();
            continue;
        }
        if (ms < st->gn_ms) st->gn_ms = ms, st->gn_cluster = sizes[i];
    }
    return 0;
}

// tune = 1 at compile time: prepares (and times) library calls instead of only launching.
int kc_run_step(kiln_compiled *c, kc_step *st, int tune) {
    const kiln_plan *p = c->plan;
    const kiln_op *op = &p->ops[st->op];
    kc_libs *L = &c->be->libs;
    cudaStream_t s = L->stream;
    kc_dtype dt = L->dtype;  // format of every 16-bit slot and weight
    const kiln_slot *so = &p->slots[st->out];
    kc_half *y = (kc_half *)c->si[st->out].ptr;
    size_t n = (size_t)kiln_slot_numel(so);
    const kc_half *x = NULL, *w = NULL, *b = NULL, *r = NULL;
    if (op->n_in > 0 && op->in[0] >= 0 && p->slots[op->in[0]].dtype == KILN_SLOT_F32 &&
        op->kind != KILN_OP_TIMESTEP_EMBED)
        KILN_TRY(kc_half_ptr(c, op->in[0], &x));
    if (st->residual >= 0) KILN_TRY(kc_half_ptr(c, st->residual, &r));
    const kiln_slot *sx = op->n_in > 0 && op->in[0] >= 0 ? &p->slots[op->in[0]] : NULL;

    switch (op->kind) {
    case KILN_OP_CONV2D: {
        int N = 0, C = 0, H = 0, W = 0;
        KILN_TRY(kc_slot_dims(sx, &N, &C, &H, &W));
        const kiln_slot *sw = &p->slots[op->in[1]];
        KILN_TRY(kc_half_ptr(c, op->in[1], &w));
        if (op->in[2] >= 0) KILN_TRY(kc_half_ptr(c, op->in[2], &b));
        if (tune) {
            KILN_TRY(kc_conv_init(L, &st->conv, N, C, H, W, (int)sw->shape[0], (int)sw->shape[2], (int)sw->shape[3],
                                  op->stride, op->pad, op->pad_end, b != NULL, r != NULL, x, w, b, r, y, c->scratch,
                                  c->scratch_bytes));
            st->has_conv = 1;
        }
        return kc_conv_run(L, &st->conv, x, w, b, r, y, c->scratch);
    }
    case KILN_OP_LINEAR: {
        if (sx->ndim == 4) return kiln_error(KILN_EUNSUPPORTED, "CUDA backend: linear on 4-D %s", sx->name);
        const kiln_slot *sw = &p->slots[op->in[1]];
        int N = (int)sw->shape[0], K = (int)sw->shape[1];
        int M = (int)(kiln_slot_numel(sx) / K);
        if (st->wcat) {  // horizontally fused: the concatenated weights; this op's columns come first
            w = st->wcat, b = st->bcat, N = st->n_total;
        } else {
            KILN_TRY(kc_half_ptr(c, op->in[1], &w));
            if (op->in[2] >= 0) KILN_TRY(kc_half_ptr(c, op->in[2], &b));
        }
        long long ldx = c->si[op->in[0]].ld ? c->si[op->in[0]].ld : K;
        long long ldy = c->si[st->out].ld ? c->si[st->out].ld : N;
        if (tune) {
            KILN_TRY(kc_gemm_init(L, &st->gemm, M, N, K, (int)ldx, (int)ldy, b != NULL, r != NULL, x, w, b, r, y,
                                  c->scratch, c->scratch_bytes));
            st->has_gemm = 1;
        }
        return kc_gemm_run(L, &st->gemm, x, w, b, r, y, c->scratch);
    }
    case KILN_OP_GROUP_NORM: {
        kc_gn_args g = {};
        if (st->gn_add >= 0) {  // GN(x + time embedding): the ADD_CHANNEL before it was fused in
            KILN_TRY(kc_half_ptr(c, st->gn_x, &x));
            KILN_TRY(kc_half_ptr(c, st->gn_add, &g.add));
            sx = &p->slots[st->gn_x];
            g.ld_add = c->si[st->gn_add].ld ? c->si[st->gn_add].ld : sx->shape[1];
        }
        KILN_TRY(kc_f32_ptr(c, op->in[1], &g.gamma));
        KILN_TRY(kc_f32_ptr(c, op->in[2], &g.beta));
        g.x = x, g.y = y, g.N = (int)sx->shape[0], g.C = (int)sx->shape[1], g.G = op->groups;
        long long P = kiln_slot_numel(sx) / ((long long)g.N * g.C);
        g.P = (int)P, g.sn = (long long)g.C * P, g.sc = sx->ndim == 4 ? 1 : P, g.sp = sx->ndim == 4 ? g.C : 1;
        g.eps = op->eps, g.silu = op->act == KILN_ACT_SILU;
        if (tune) KILN_TRY(kc_group_norm_tune(L, &g, c->scratch, st));
        g.cluster = st->gn_cluster;
        return kc_group_norm(s, dt, L->cc_major, &g, c->scratch);
    }
    case KILN_OP_LAYER_NORM: {
        if (sx->ndim == 4) return kiln_error(KILN_EUNSUPPORTED, "CUDA backend: layer norm on 4-D %s", sx->name);
        const float *gamma = NULL, *beta = NULL;
        KILN_TRY(kc_f32_ptr(c, op->in[1], &gamma));
        KILN_TRY(kc_f32_ptr(c, op->in[2], &beta));
        int C = (int)sx->shape[sx->ndim - 1];
        return kc_layer_norm(s, dt, x, y, gamma, beta, (long long)(n / C), C, op->eps);
    }
    case KILN_OP_ACTIVATION: return kc_activation(s, dt, x, y, n, (int)op->act, 1.0f);
    case KILN_OP_SCALE: return kc_activation(s, dt, x, y, n, 0, op->scale);
    case KILN_OP_GEGLU: {
        int N = (int)so->shape[so->ndim - 1];
        return kc_geglu(s, dt, x, y, (long long)(n / N), N);
    }
    case KILN_OP_ATTENTION: {
        const kiln_slot *sk = &p->slots[op->in[1]];
        const kc_half *k = NULL, *v = NULL;
        KILN_TRY(kc_half_ptr(c, op->in[1], &k));
        KILN_TRY(kc_half_ptr(c, op->in[2], &v));
        int B = (int)sx->shape[0], Lq = (int)sx->shape[1], E = (int)sx->shape[2], Lk = (int)sk->shape[1];
        int H = op->heads, D = E / H;
        long long ldq = c->si[op->in[0]].ld ? c->si[op->in[0]].ld : E;
        long long ldk = c->si[op->in[1]].ld ? c->si[op->in[1]].ld : E;
        long long ldv = c->si[op->in[2]].ld ? c->si[op->in[2]].ld : E;
        long long ldo = c->si[st->out].ld ? c->si[st->out].ld : E;
        float scale = op->scale > 0.0f ? op->scale : 1.0f / sqrtf((float)D);
        kc_attn_call a = {L, x, k, v, y, B, H, Lq, Lk, D, ldq, ldk, ldv, ldo, scale, op->causal, c->scratch};
        if (tune) KILN_TRY(kc_attention_tune(c, st, &a));
        if (st->attn_cudnn) return kc_attention_cudnn_run(L, st->attn_cudnn, x, k, v, y, c->scratch);
        return kc_attention_kiln(&a);
    }
    case KILN_OP_UPSAMPLE_NEAREST: {
        int N = 0, C = 0, H = 0, W = 0;
        KILN_TRY(kc_slot_dims(sx, &N, &C, &H, &W));
        return kc_upsample_nearest(s, x, y, N, C, H, W, (int)so->shape[2], (int)so->shape[3], C);
    }
    case KILN_OP_CONCAT_CHANNELS: {
        const kiln_slot *sb = &p->slots[op->in[1]];
        const kc_half *xb = NULL;
        KILN_TRY(kc_half_ptr(c, op->in[1], &xb));
        int Ca = (int)sx->shape[1], Cb = (int)sb->shape[1];
        long long rows = (long long)sx->shape[0] * sx->shape[2] * sx->shape[3];
        KILN_TRY(kc_copy_channels(s, x, Ca, 0, y, Ca + Cb, 0, rows, Ca));
        return kc_copy_channels(s, xb, Cb, 0, y, Ca + Cb, Ca, rows, Cb);
    }
    case KILN_OP_SLICE_CHANNELS: {
        int C = (int)sx->shape[1];
        long long rows = (long long)sx->shape[0] * sx->shape[2] * sx->shape[3];
        return kc_copy_channels(s, x, C, op->start, y, op->count, 0, rows, op->count);
    }
    case KILN_OP_ADD: {
        const kiln_slot *sb = &p->slots[op->in[1]];
        const kc_half *xb = NULL;
        KILN_TRY(kc_half_ptr(c, op->in[1], &xb));
        return kc_add(s, dt, x, xb, y, n, (size_t)kiln_slot_numel(sb), sx->ndim, sx->shape, sb->ndim, sb->shape);
    }
    case KILN_OP_ADD_CHANNEL: {
        const kc_half *e = NULL;
        KILN_TRY(kc_half_ptr(c, op->in[1], &e));
        int N = 0, C = 0, H = 0, W = 0;
        KILN_TRY(kc_slot_dims(sx, &N, &C, &H, &W));
        long long lde = c->si[op->in[1]].ld ? c->si[op->in[1]].ld : C;
        return kc_add_channel(s, dt, x, e, y, N, C, (long long)H * W, lde);
    }
    case KILN_OP_TIMESTEP_EMBED: {
        int id = op->in[0];
        const void *t = c->si[id].ptr;
        int t_f32 = 0, t_i32 = sx->dtype == KILN_SLOT_I32;
        if (sx->kind == KILN_SLOT_INPUT && sx->dtype == KILN_SLOT_F32) {
            t = c->si[id].f32;  // read the caller's fp32 values: fractional timesteps survive
            t_f32 = 1;
        } else if (sx->kind == KILN_SLOT_WEIGHT) {
            KILN_TRY(kc_half_ptr(c, id, (const kc_half **)&t));
        }
        return kc_timestep_embed(s, dt, t, t_f32, t_i32, y, (int)so->shape[0], op->dim, op->max_period);
    }
    default:
        return kiln_error(KILN_EUNSUPPORTED, "CUDA backend: op %s (%s) is not supported", kiln_op_name(op->kind),
                          op->label);
    }
}

// Everything the graph holds: input conversion, the steps, output conversion.
int kc_execute(kiln_compiled *c, int tune) {
    const kiln_plan *p = c->plan;
    cudaStream_t s = c->be->libs.stream;
    kc_dtype dt = c->be->libs.dtype;
    for (int i = 0; i < c->n_in; i++) {
        const kiln_slot *sl = &p->slots[c->in_ids[i]];
        if (sl->dtype != KILN_SLOT_F32) continue;  // int32 inputs are read in place
        int nhwc = kc_nhwc(sl);
        KILN_TRY(kc_f32_to_half(s, dt, c->si[c->in_ids[i]].f32, (kc_half *)c->si[c->in_ids[i]].ptr, nhwc,
                                nhwc ? (int)sl->shape[0] : 1, nhwc ? (int)sl->shape[1] : 1,
                                nhwc ? (int)sl->shape[2] : 1, nhwc ? (int)sl->shape[3] : 1,
                                (size_t)kiln_slot_numel(sl)));
    }
    for (int i = 0; i < c->n_steps; i++) {
        kc_step *st = &c->steps[i];
        if (st->op < 0) continue;
        if (!tune && ((c->skip_kinds >> p->ops[st->op].kind) & 1)) continue;
        if (!tune && st->has_conv && ((c->skip_conv_methods >> st->conv.method) & 1)) continue;
        int rc = kc_run_step(c, st, tune);
        if (rc) return kiln_error_context(rc, "op %d %s (%s): ", st->op, kiln_op_name(p->ops[st->op].kind),
                                          p->ops[st->op].label);
    }
    for (int i = 0; i < c->n_out; i++) {
        const kiln_slot *sl = &p->slots[c->out_ids[i]];
        int nhwc = kc_nhwc(sl);
        KILN_TRY(kc_half_to_f32(s, dt, (const kc_half *)c->si[c->out_ids[i]].ptr, c->si[c->out_ids[i]].f32, nhwc,
                                nhwc ? (int)sl->shape[0] : 1, nhwc ? (int)sl->shape[1] : 1,
                                nhwc ? (int)sl->shape[2] : 1, nhwc ? (int)sl->shape[3] : 1,
                                (size_t)kiln_slot_numel(sl)));
    }
    return 0;
}

// Scratch one step may need (workspaces, im2col, group-norm partials, attention fallback).
size_t kc_step_scratch(const kiln_plan *p, const kiln_op *op) {
    const kiln_slot *sx = op->n_in > 0 && op->in[0] >= 0 ? &p->slots[op->in[0]] : NULL;
    switch (op->kind) {
    case KILN_OP_CONV2D: {
        const kiln_slot *sw = &p->slots[op->in[1]];
        if (sx->ndim != 4) return 0;
        return kc_conv_scratch_bound((int)sx->shape[0], (int)sx->shape[1], (int)sx->shape[2], (int)sx->shape[3],
                                     (int)sw->shape[0], (int)sw->shape[2], (int)sw->shape[3], op->stride, op->pad,
                                     op->pad_end);
    }
    case KILN_OP_LINEAR: return kc_gemm_workspace_bytes;
    case KILN_OP_GROUP_NORM: return kc_group_norm_scratch((int)sx->shape[0], op->groups);
    case KILN_OP_ATTENTION: {
        const kiln_slot *sk = &p->slots[op->in[1]];
        int D = (int)(sx->shape[2] / op->heads);
        size_t kiln = kc_attention_flash_supported(D) && getenv("KILN_CUDA_NO_FLASH") == NULL
                          ? 0
                          : kc_attention_fallback_scratch(op->heads, (int)sx->shape[1], (int)sk->shape[1]);
        size_t dnn = kc_attention_cudnn_scratch_bound();  // cuDNN's workspace (the two never run together)
        return kiln > dnn ? kiln : dnn;
    }
    default: return 0;
    }
}
