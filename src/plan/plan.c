/* plan.c — building a plan: slots, ops, shape inference and checks, the sticky error.
 *
 * Every builder function checks its inputs' shapes and infers the output shape. The first
 * failure is recorded in plan->status (with its message in kiln_last_error()) and every
 * later call returns -1 without doing anything, so a network builder can read straight
 * through and check the status once at the end. Memory planning is in memory.c. */
#include "plan/plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* ---- the sticky error ---- */

/* Records the first failure of the plan; later failures keep the first message. */
static int plan_fail(kiln_plan *p, int status, const char *fmt, ...) KILN_PRINTF(3, 4);
static int plan_fail(kiln_plan *p, int status, const char *fmt, ...) {
    if (p->status) return -1;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->status = status;
    kiln_error(status, "%s", msg);
    return -1;
}

/* "op LABEL (conv2d)" or "op conv2d" when no label is set, for messages. */
static const char *op_where(const kiln_plan *p, kiln_op_kind kind, char *buf, size_t size) {
    if (p->label[0])
        snprintf(buf, size, "op %s (%s)", p->label, kiln_op_name(kind));
    else
        snprintf(buf, size, "op %s", kiln_op_name(kind));
    return buf;
}

/* ---- plan lifetime ---- */

kiln_plan *kiln_plan_new(const kiln_weights *weights) {
    kiln_plan *p = calloc(1, sizeof *p);
    if (!p) {
        kiln_error(KILN_ENOMEM, "out of memory creating a plan");
        return NULL;
    }
    p->weights = weights;
    return p;
}

void kiln_plan_free(kiln_plan *plan) {
    if (!plan) return;
    free(plan->slots);
    free(plan->ops);
    free(plan);
}

void kiln_plan_set_label(kiln_plan *p, const char *fmt, ...) {
    if (!p) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->label, sizeof p->label, fmt, ap);
    va_end(ap);
}

/* ---- slots ---- */

int64_t kiln_slot_numel(const kiln_slot *s) {
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= s->shape[i];
    return n;
}

/* Appends a slot; returns its id or -1 (plan failed). */
static int add_slot(kiln_plan *p, kiln_slot_kind kind, kiln_slot_dtype dtype, int ndim, const int64_t *shape) {
    /* shape often points into p->slots (an op's output shaped like its input), which the
     * realloc below may move: copy it first */
    int64_t dims[KILN_PLAN_MAX_DIMS];
    for (int i = 0; i < ndim; i++) dims[i] = shape[i];
    if (p->n_slots == p->cap_slots) {
        int cap = p->cap_slots ? p->cap_slots * 2 : 64;
        kiln_slot *s = realloc(p->slots, (size_t)cap * sizeof *s);
        if (!s) return plan_fail(p, KILN_ENOMEM, "out of memory growing a plan to %d slots", cap);
        p->slots = s;
        p->cap_slots = cap;
    }
    kiln_slot *s = &p->slots[p->n_slots];
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->dtype = dtype;
    s->ndim = ndim;
    for (int i = 0; i < ndim; i++) s->shape[i] = dims[i];
    s->producer = -1;
    s->last_use = -1;
    return p->n_slots++;
}

/* Checks a shape given by a builder: 1..4 dims, every dim >= 1. */
static int check_shape(kiln_plan *p, const char *what, const char *name, int ndim, const int64_t *shape) {
    if (ndim < 1 || ndim > KILN_PLAN_MAX_DIMS)
        return plan_fail(p, KILN_EINVAL, "%s %s: %d dimensions (a plan slot has 1 to %d)", what, name, ndim,
                         KILN_PLAN_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1)
            return plan_fail(p, KILN_EINVAL, "%s %s: dimension %d is %lld (must be >= 1)", what, name, i,
                             (long long)shape[i]);
    return 0;
}

/* The input or output slot called name, or -1. */
int kiln_plan_find(const kiln_plan *p, const char *name) {
    for (int i = 0; i < p->n_slots; i++) {
        const kiln_slot *s = &p->slots[i];
        if ((s->kind == KILN_SLOT_INPUT || s->is_output) && !strcmp(s->name, name)) return i;
    }
    return -1;
}

/* Checks that a caller-facing name fits and is not taken yet. */
static int check_io_name(kiln_plan *p, const char *what, const char *name) {
    if (!name || !name[0]) return plan_fail(p, KILN_EINVAL, "%s with an empty name", what);
    if (strlen(name) >= sizeof p->slots[0].name)
        return plan_fail(p, KILN_EINVAL, "%s name '%s' is too long (max %zu characters)", what, name,
                         sizeof p->slots[0].name - 1);
    if (kiln_plan_find(p, name) >= 0)
        return plan_fail(p, KILN_EINVAL, "%s name '%s' is already used by another input or output", what, name);
    return 0;
}

int kiln_plan_input(kiln_plan *p, const char *name, kiln_slot_dtype dtype, int ndim, const int64_t *shape) {
    if (p->status) return -1;
    if (check_io_name(p, "input", name) < 0 || check_shape(p, "input", name, ndim, shape) < 0) return -1;
    int id = add_slot(p, KILN_SLOT_INPUT, dtype, ndim, shape);
    if (id >= 0) snprintf(p->slots[id].name, sizeof p->slots[id].name, "%s", name);
    return id;
}

/* Shared by kiln_plan_weight and kiln_plan_weight_optional. */
static int add_weight(kiln_plan *p, const char *name, int ndim, const int64_t *shape, int optional) {
    if (p->status) return -1;
    if (check_shape(p, "weight", name, ndim, shape) < 0) return -1;
    if (strlen(name) >= sizeof p->slots[0].name)
        return plan_fail(p, KILN_EINVAL, "weight name '%s' is too long (max %zu characters)", name,
                         sizeof p->slots[0].name - 1);
    const kiln_weight *t = p->weights ? kiln_weights_find(p->weights, name) : NULL;
    if (!t && p->collect && !optional) {
        if (kiln_weights_add_view(p->collect, name, KILN_F16, ndim, shape, NULL, "(collected)") < 0)
            return plan_fail(p, KILN_ENOMEM, "collecting weight %s", name);
        t = kiln_weights_find(p->collect, name);
    }
    if (!t) {
        if (optional) return -1;
        /* any tensor of the store tells which file we were reading */
        const char *src = p->weights && p->weights->n > 0 ? p->weights->items[0].source : NULL;
        if (src)
            return plan_fail(p, KILN_ENOTFOUND, "tensor %s not found in the checkpoint (from %s)", name, src);
        return plan_fail(p, KILN_ENOTFOUND, "tensor %s not found in the checkpoint", name);
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[128], want[128];
        kiln_shape_str(t->ndim, t->shape, have, sizeof have);
        kiln_shape_str(ndim, shape, want, sizeof want);
        if (t->source)
            return plan_fail(p, KILN_EFORMAT, "tensor %s has shape %s, expected %s (in %s)", name, have, want,
                             t->source);
        return plan_fail(p, KILN_EFORMAT, "tensor %s has shape %s, expected %s", name, have, want);
    }
    if (t->dtype != KILN_F32 && t->dtype != KILN_F16 && t->dtype != KILN_BF16)
        return plan_fail(p, KILN_EUNSUPPORTED, "tensor %s has dtype %s; weights must be F32, F16 or BF16", name,
                         kiln_dtype_name(t->dtype));
    /* one slot per tensor, however often a builder asks for it (matched by name: in collect
     * mode the store grows while we build, so its tensors move) */
    for (int i = 0; i < p->n_slots; i++)
        if (p->slots[i].kind == KILN_SLOT_WEIGHT && !strcmp(p->slots[i].name, name)) return i;
    int id = add_slot(p, KILN_SLOT_WEIGHT, KILN_SLOT_F32, ndim, shape);
    if (id < 0) return -1;
    snprintf(p->slots[id].name, sizeof p->slots[id].name, "%s", name);
    p->slots[id].weight = t;
    return id;
}

int kiln_plan_weight(kiln_plan *p, const char *name, int ndim, const int64_t *shape) {
    return add_weight(p, name, ndim, shape, 0);
}

int kiln_plan_weight_optional(kiln_plan *p, const char *name, int ndim, const int64_t *shape) {
    return add_weight(p, name, ndim, shape, 1);
}

int kiln_plan_output(kiln_plan *p, int slot, const char *name) {
    if (p->status) return -1;
    if (slot < 0 || slot >= p->n_slots)
        return plan_fail(p, KILN_EINVAL, "output %s: slot %d does not exist", name ? name : "(null)", slot);
    kiln_slot *s = &p->slots[slot];
    if (s->kind != KILN_SLOT_ACTIVATION)
        return plan_fail(p, KILN_EINVAL, "output %s: slot %d is an %s, not an op result", name ? name : "(null)",
                         slot, s->kind == KILN_SLOT_INPUT ? "input" : "weight");
    if (s->is_output)
        return plan_fail(p, KILN_EINVAL, "output %s: slot %d is already output %s", name ? name : "(null)", slot,
                         s->name);
    if (check_io_name(p, "output", name) < 0) return -1;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->is_output = 1;
    return slot;
}

void kiln_plan_io_order(const kiln_plan *p, int *inputs, int *n_inputs, int *outputs, int *n_outputs) {
    int ni = 0, no = 0;
    for (int i = 0; i < p->n_slots; i++) {
        if (p->slots[i].kind == KILN_SLOT_INPUT) {
            if (inputs) inputs[ni] = i;
            ni++;
        } else if (p->slots[i].is_output) {
            if (outputs) outputs[no] = i;
            no++;
        }
    }
    if (n_inputs) *n_inputs = ni;
    if (n_outputs) *n_outputs = no;
}

/* ---- ops ---- */

/* Describes a slot for messages: "x [2, 4, 8, 8]" or "weight NAME [..]". */
static const char *slot_str(const kiln_plan *p, int id, char *buf, size_t size) {
    const kiln_slot *s = &p->slots[id];
    char shape[128];
    kiln_shape_str(s->ndim, s->shape, shape, sizeof shape);
    if (s->kind == KILN_SLOT_WEIGHT)
        snprintf(buf, size, "weight %s %s", s->name, shape);
    else if (s->kind == KILN_SLOT_INPUT)
        snprintf(buf, size, "input %s %s", s->name, shape);
    else
        snprintf(buf, size, "tensor %s", shape);
    return buf;
}

/* Starts an op: checks the plan is healthy and that each listed input exists and is
 * float (-1 entries are allowed only where optional[i] is set). Returns 0 or -1. */
static int begin_op(kiln_plan *p, kiln_op_kind kind, int n_in, const int *in, const int *optional) {
    if (p->status) return -1;
    char where[160];
    for (int i = 0; i < n_in; i++) {
        if (in[i] == -1 && optional && optional[i]) continue;
        if (in[i] < 0 || in[i] >= p->n_slots)
            return plan_fail(p, KILN_EINVAL, "%s: input %d is slot %d, which does not exist",
                             op_where(p, kind, where, sizeof where), i, in[i]);
        if (p->slots[in[i]].dtype != KILN_SLOT_F32)
            return plan_fail(p, KILN_EINVAL, "%s: input %d (%s) is int32; ops take float32",
                             op_where(p, kind, where, sizeof where), i, p->slots[in[i]].name);
    }
    return 0;
}

/* Appends the op and its output activation slot; returns the slot id or -1. */
static int emit(kiln_plan *p, const kiln_op *op, int ndim, const int64_t *shape) {
    if (p->n_ops == p->cap_ops) {
        int cap = p->cap_ops ? p->cap_ops * 2 : 64;
        kiln_op *o = realloc(p->ops, (size_t)cap * sizeof *o);
        if (!o) return plan_fail(p, KILN_ENOMEM, "out of memory growing a plan to %d ops", cap);
        p->ops = o;
        p->cap_ops = cap;
    }
    int out = add_slot(p, KILN_SLOT_ACTIVATION, KILN_SLOT_F32, ndim, shape);
    if (out < 0) return -1;
    kiln_op *o = &p->ops[p->n_ops];
    *o = *op;
    o->out = out;
    snprintf(o->label, sizeof o->label, "%s", p->label);
    p->slots[out].producer = p->n_ops++;
    return out;
}

/* An op record of this kind with inputs a, b, c, d (n_in of them). */
static kiln_op op_init(kiln_op_kind kind, int n_in, int a, int b, int c, int d) {
    kiln_op op;
    memset(&op, 0, sizeof op);
    op.kind = kind;
    op.n_in = n_in;
    op.in[0] = a;
    op.in[1] = b;
    op.in[2] = c;
    op.in[3] = d;
    op.out = -1;
    return op;
}

#define S(id) (&p->slots[(id)])

/* Checks that slot id is a 1-D vector of length n (bias, gamma, beta). */
static int check_vector(kiln_plan *p, kiln_op_kind kind, const char *role, int id, int64_t n) {
    if (id < 0) return 0;
    if (S(id)->ndim == 1 && S(id)->shape[0] == n) return 0;
    char where[160], a[256];
    return plan_fail(p, KILN_EINVAL, "%s: %s is %s, expected [%lld]", op_where(p, kind, where, sizeof where), role,
                     slot_str(p, id, a, sizeof a), (long long)n);
}

int kiln_plan_conv2d_ex(kiln_plan *p, int x, int w, int b, int stride, int pad, int pad_end) {
    int in[3] = {x, w, b}, opt[3] = {0, 0, 1};
    if (begin_op(p, KILN_OP_CONV2D, 3, in, opt) < 0) return -1;
    char where[160], a[256], c[256];
    op_where(p, KILN_OP_CONV2D, where, sizeof where);
    if (S(x)->ndim != 4)
        return plan_fail(p, KILN_EINVAL, "%s: input is %s, expected [N, C, H, W]", where, slot_str(p, x, a, sizeof a));
    if (S(w)->ndim != 4)
        return plan_fail(p, KILN_EINVAL, "%s: weight is %s, expected [O, C, kh, kw]", where,
                         slot_str(p, w, a, sizeof a));
    if (S(x)->shape[1] != S(w)->shape[1])
        return plan_fail(p, KILN_EINVAL, "%s: input %s has %lld channels but %s expects %lld", where,
                         slot_str(p, x, a, sizeof a), (long long)S(x)->shape[1], slot_str(p, w, c, sizeof c),
                         (long long)S(w)->shape[1]);
    if (stride < 1 || pad < 0 || pad_end < 0)
        return plan_fail(p, KILN_EINVAL, "%s: stride %d / padding %d+%d (need stride >= 1, padding >= 0)", where,
                         stride, pad, pad_end);
    if (check_vector(p, KILN_OP_CONV2D, "bias", b, S(w)->shape[0]) < 0) return -1;
    int64_t ph = S(x)->shape[2] + 2 * pad + pad_end, pw = S(x)->shape[3] + 2 * pad + pad_end;
    int64_t oh = (ph - S(w)->shape[2]) / stride + 1, ow = (pw - S(w)->shape[3]) / stride + 1;
    if (ph < S(w)->shape[2] || pw < S(w)->shape[3])
        return plan_fail(p, KILN_EINVAL, "%s: input %s is smaller than the %lldx%lld kernel with padding %d", where,
                         slot_str(p, x, a, sizeof a), (long long)S(w)->shape[2], (long long)S(w)->shape[3], pad);
    kiln_op op = op_init(KILN_OP_CONV2D, 3, x, w, b, -1);
    op.stride = stride;
    op.pad = pad;
    op.pad_end = pad_end;
    int64_t shape[4] = {S(x)->shape[0], S(w)->shape[0], oh, ow};
    return emit(p, &op, 4, shape);
}

int kiln_plan_conv2d(kiln_plan *p, int x, int w, int b, int stride, int pad) {
    return kiln_plan_conv2d_ex(p, x, w, b, stride, pad, 0);
}

int kiln_plan_linear(kiln_plan *p, int x, int w, int b) {
    int in[3] = {x, w, b}, opt[3] = {0, 0, 1};
    if (begin_op(p, KILN_OP_LINEAR, 3, in, opt) < 0) return -1;
    char where[160], a[256], c[256];
    op_where(p, KILN_OP_LINEAR, where, sizeof where);
    if (S(w)->ndim != 2)
        return plan_fail(p, KILN_EINVAL, "%s: weight is %s, expected [N, K]", where, slot_str(p, w, a, sizeof a));
    int nd = S(x)->ndim;
    if (S(x)->shape[nd - 1] != S(w)->shape[1])
        return plan_fail(p, KILN_EINVAL, "%s: input %s has last dimension %lld but %s expects %lld", where,
                         slot_str(p, x, a, sizeof a), (long long)S(x)->shape[nd - 1], slot_str(p, w, c, sizeof c),
                         (long long)S(w)->shape[1]);
    if (check_vector(p, KILN_OP_LINEAR, "bias", b, S(w)->shape[0]) < 0) return -1;
    kiln_op op = op_init(KILN_OP_LINEAR, 3, x, w, b, -1);
    int64_t shape[4];
    memcpy(shape, S(x)->shape, sizeof shape);
    shape[nd - 1] = S(w)->shape[0];
    return emit(p, &op, nd, shape);
}

int kiln_plan_group_norm(kiln_plan *p, int x, int gamma, int beta, int groups, float eps, kiln_activation act) {
    int in[3] = {x, gamma, beta};
    if (begin_op(p, KILN_OP_GROUP_NORM, 3, in, NULL) < 0) return -1;
    char where[160], a[256];
    op_where(p, KILN_OP_GROUP_NORM, where, sizeof where);
    if (S(x)->ndim < 2)
        return plan_fail(p, KILN_EINVAL, "%s: input is %s, expected [N, C, ...]", where, slot_str(p, x, a, sizeof a));
    int64_t c = S(x)->shape[1];
    if (groups < 1 || c % groups)
        return plan_fail(p, KILN_EINVAL, "%s: %lld channels do not split into %d groups", where, (long long)c,
                         groups);
    if (act != KILN_ACT_NONE && act != KILN_ACT_SILU)
        return plan_fail(p, KILN_EINVAL, "%s: fused activation %d (only none or SiLU)", where, (int)act);
    if (!(eps >= 0)) return plan_fail(p, KILN_EINVAL, "%s: eps %g must be >= 0", where, (double)eps);
    if (check_vector(p, KILN_OP_GROUP_NORM, "gamma", gamma, c) < 0) return -1;
    if (check_vector(p, KILN_OP_GROUP_NORM, "beta", beta, c) < 0) return -1;
    kiln_op op = op_init(KILN_OP_GROUP_NORM, 3, x, gamma, beta, -1);
    op.groups = groups;
    op.eps = eps;
    op.act = act;
    return emit(p, &op, S(x)->ndim, S(x)->shape);
}

int kiln_plan_layer_norm(kiln_plan *p, int x, int gamma, int beta, float eps) {
    int in[3] = {x, gamma, beta};
    if (begin_op(p, KILN_OP_LAYER_NORM, 3, in, NULL) < 0) return -1;
    char where[160];
    op_where(p, KILN_OP_LAYER_NORM, where, sizeof where);
    if (!(eps >= 0)) return plan_fail(p, KILN_EINVAL, "%s: eps %g must be >= 0", where, (double)eps);
    int64_t c = S(x)->shape[S(x)->ndim - 1];
    if (check_vector(p, KILN_OP_LAYER_NORM, "gamma", gamma, c) < 0) return -1;
    if (check_vector(p, KILN_OP_LAYER_NORM, "beta", beta, c) < 0) return -1;
    kiln_op op = op_init(KILN_OP_LAYER_NORM, 3, x, gamma, beta, -1);
    op.eps = eps;
    return emit(p, &op, S(x)->ndim, S(x)->shape);
}

int kiln_plan_activation(kiln_plan *p, int x, kiln_activation act) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_ACTIVATION, 1, in, NULL) < 0) return -1;
    if (act != KILN_ACT_SILU && act != KILN_ACT_GELU && act != KILN_ACT_QUICK_GELU) {
        char where[160];
        return plan_fail(p, KILN_EINVAL, "%s: unknown activation %d", op_where(p, KILN_OP_ACTIVATION, where,
                         sizeof where), (int)act);
    }
    kiln_op op = op_init(KILN_OP_ACTIVATION, 1, x, -1, -1, -1);
    op.act = act;
    return emit(p, &op, S(x)->ndim, S(x)->shape);
}

int kiln_plan_geglu(kiln_plan *p, int x) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_GEGLU, 1, in, NULL) < 0) return -1;
    int nd = S(x)->ndim;
    if (S(x)->shape[nd - 1] % 2) {
        char where[160], a[256];
        return plan_fail(p, KILN_EINVAL, "%s: input %s has an odd last dimension", op_where(p, KILN_OP_GEGLU, where,
                         sizeof where), slot_str(p, x, a, sizeof a));
    }
    kiln_op op = op_init(KILN_OP_GEGLU, 1, x, -1, -1, -1);
    int64_t shape[4];
    memcpy(shape, S(x)->shape, sizeof shape);
    shape[nd - 1] /= 2;
    return emit(p, &op, nd, shape);
}

int kiln_plan_attention(kiln_plan *p, int q, int k, int v, int heads, int causal) {
    int in[3] = {q, k, v};
    if (begin_op(p, KILN_OP_ATTENTION, 3, in, NULL) < 0) return -1;
    char where[160], a[256], b[256], c[256];
    op_where(p, KILN_OP_ATTENTION, where, sizeof where);
    if (S(q)->ndim != 3 || S(k)->ndim != 3 || S(v)->ndim != 3)
        return plan_fail(p, KILN_EINVAL, "%s: q %s, k %s, v %s must all be [B, L, heads*dim]", where,
                         slot_str(p, q, a, sizeof a), slot_str(p, k, b, sizeof b), slot_str(p, v, c, sizeof c));
    int64_t bq = S(q)->shape[0], e = S(q)->shape[2];
    if (S(k)->shape[0] != bq || S(v)->shape[0] != bq || S(k)->shape[2] != e || S(v)->shape[2] != e ||
        S(k)->shape[1] != S(v)->shape[1])
        return plan_fail(p, KILN_EINVAL, "%s: q %s, k %s, v %s do not match (need q [B, Lq, E], k and v [B, Lk, E])",
                         where, slot_str(p, q, a, sizeof a), slot_str(p, k, b, sizeof b), slot_str(p, v, c, sizeof c));
    if (heads < 1 || e % heads)
        return plan_fail(p, KILN_EINVAL, "%s: width %lld does not split into %d heads", where, (long long)e, heads);
    kiln_op op = op_init(KILN_OP_ATTENTION, 3, q, k, v, -1);
    op.heads = heads;
    op.causal = causal ? 1 : 0;
    op.scale = (float)(1.0 / sqrt((double)(e / heads)));
    return emit(p, &op, 3, S(q)->shape);
}

int kiln_plan_upsample_nearest(kiln_plan *p, int x, int out_h, int out_w) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_UPSAMPLE_NEAREST, 1, in, NULL) < 0) return -1;
    char where[160], a[256];
    op_where(p, KILN_OP_UPSAMPLE_NEAREST, where, sizeof where);
    if (S(x)->ndim != 4)
        return plan_fail(p, KILN_EINVAL, "%s: input is %s, expected [N, C, H, W]", where, slot_str(p, x, a, sizeof a));
    if (out_h < 1 || out_w < 1)
        return plan_fail(p, KILN_EINVAL, "%s: output size %dx%d must be positive", where, out_h, out_w);
    kiln_op op = op_init(KILN_OP_UPSAMPLE_NEAREST, 1, x, -1, -1, -1);
    op.h = out_h;
    op.w = out_w;
    int64_t shape[4] = {S(x)->shape[0], S(x)->shape[1], out_h, out_w};
    return emit(p, &op, 4, shape);
}

int kiln_plan_concat_channels(kiln_plan *p, int a, int b) {
    int in[2] = {a, b};
    if (begin_op(p, KILN_OP_CONCAT_CHANNELS, 2, in, NULL) < 0) return -1;
    char where[160], sa[256], sb[256];
    op_where(p, KILN_OP_CONCAT_CHANNELS, where, sizeof where);
    if (S(a)->ndim != 4 || S(b)->ndim != 4 || S(a)->shape[0] != S(b)->shape[0] || S(a)->shape[2] != S(b)->shape[2] ||
        S(a)->shape[3] != S(b)->shape[3])
        return plan_fail(p, KILN_EINVAL, "%s: %s and %s must be [N, C, H, W] with the same N, H, W", where,
                         slot_str(p, a, sa, sizeof sa), slot_str(p, b, sb, sizeof sb));
    kiln_op op = op_init(KILN_OP_CONCAT_CHANNELS, 2, a, b, -1, -1);
    int64_t shape[4] = {S(a)->shape[0], S(a)->shape[1] + S(b)->shape[1], S(a)->shape[2], S(a)->shape[3]};
    return emit(p, &op, 4, shape);
}

int kiln_plan_add(kiln_plan *p, int a, int b) {
    int in[2] = {a, b};
    if (begin_op(p, KILN_OP_ADD, 2, in, NULL) < 0) return -1;
    /* b must equal a's trailing dims once b's leading 1s are dropped */
    const kiln_slot *sa = S(a), *sb = S(b);
    int lead = 0;
    while (lead < sb->ndim - 1 && sb->shape[lead] == 1) lead++;
    int bn = sb->ndim - lead, ok = bn <= sa->ndim;
    for (int i = 0; ok && i < bn; i++) ok = sb->shape[lead + i] == sa->shape[sa->ndim - bn + i];
    if (!ok) {
        char where[160], x[256], y[256];
        return plan_fail(p, KILN_EINVAL, "%s: %s cannot be added to %s (its shape must be the trailing dims)",
                         op_where(p, KILN_OP_ADD, where, sizeof where), slot_str(p, b, y, sizeof y),
                         slot_str(p, a, x, sizeof x));
    }
    kiln_op op = op_init(KILN_OP_ADD, 2, a, b, -1, -1);
    return emit(p, &op, sa->ndim, sa->shape);
}

int kiln_plan_add_channel(kiln_plan *p, int x, int e) {
    int in[2] = {x, e};
    if (begin_op(p, KILN_OP_ADD_CHANNEL, 2, in, NULL) < 0) return -1;
    if (S(x)->ndim < 2 || S(e)->ndim != 2 || S(e)->shape[0] != S(x)->shape[0] || S(e)->shape[1] != S(x)->shape[1]) {
        char where[160], a[256], b[256];
        return plan_fail(p, KILN_EINVAL, "%s: %s cannot be added per channel to %s (need [N, C] and [N, C, ...])",
                         op_where(p, KILN_OP_ADD_CHANNEL, where, sizeof where), slot_str(p, e, b, sizeof b),
                         slot_str(p, x, a, sizeof a));
    }
    kiln_op op = op_init(KILN_OP_ADD_CHANNEL, 2, x, e, -1, -1);
    return emit(p, &op, S(x)->ndim, S(x)->shape);
}

int kiln_plan_scale(kiln_plan *p, int x, float scale) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_SCALE, 1, in, NULL) < 0) return -1;
    kiln_op op = op_init(KILN_OP_SCALE, 1, x, -1, -1, -1);
    op.scale = scale;
    return emit(p, &op, S(x)->ndim, S(x)->shape);
}

int kiln_plan_timestep_embed(kiln_plan *p, int t, int dim, float max_period) {
    int in[1] = {t};
    if (begin_op(p, KILN_OP_TIMESTEP_EMBED, 1, in, NULL) < 0) return -1;
    char where[160], a[256];
    op_where(p, KILN_OP_TIMESTEP_EMBED, where, sizeof where);
    if (S(t)->ndim != 1)
        return plan_fail(p, KILN_EINVAL, "%s: timesteps are %s, expected [N]", where, slot_str(p, t, a, sizeof a));
    if (dim < 2 || dim % 2)
        return plan_fail(p, KILN_EINVAL, "%s: embedding width %d must be even and >= 2", where, dim);
    if (!(max_period > 0))
        return plan_fail(p, KILN_EINVAL, "%s: max_period %g must be > 0", where, (double)max_period);
    kiln_op op = op_init(KILN_OP_TIMESTEP_EMBED, 1, t, -1, -1, -1);
    op.dim = dim;
    op.max_period = max_period;
    int64_t shape[2] = {S(t)->shape[0], dim};
    return emit(p, &op, 2, shape);
}

int kiln_plan_nchw_to_nlc(kiln_plan *p, int x) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_NCHW_TO_NLC, 1, in, NULL) < 0) return -1;
    if (S(x)->ndim != 4) {
        char where[160], a[256];
        return plan_fail(p, KILN_EINVAL, "%s: input is %s, expected [N, C, H, W]",
                         op_where(p, KILN_OP_NCHW_TO_NLC, where, sizeof where), slot_str(p, x, a, sizeof a));
    }
    kiln_op op = op_init(KILN_OP_NCHW_TO_NLC, 1, x, -1, -1, -1);
    op.h = (int)S(x)->shape[2];
    op.w = (int)S(x)->shape[3];
    int64_t shape[3] = {S(x)->shape[0], S(x)->shape[2] * S(x)->shape[3], S(x)->shape[1]};
    return emit(p, &op, 3, shape);
}

int kiln_plan_nlc_to_nchw(kiln_plan *p, int x, int h, int w) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_NLC_TO_NCHW, 1, in, NULL) < 0) return -1;
    if (S(x)->ndim != 3 || h < 1 || w < 1 || S(x)->shape[1] != (int64_t)h * w) {
        char where[160], a[256];
        return plan_fail(p, KILN_EINVAL, "%s: input %s cannot become %dx%d (need [N, h*w, C])",
                         op_where(p, KILN_OP_NLC_TO_NCHW, where, sizeof where), slot_str(p, x, a, sizeof a), h, w);
    }
    kiln_op op = op_init(KILN_OP_NLC_TO_NCHW, 1, x, -1, -1, -1);
    op.h = h;
    op.w = w;
    int64_t shape[4] = {S(x)->shape[0], S(x)->shape[2], h, w};
    return emit(p, &op, 4, shape);
}

int kiln_plan_slice_channels(kiln_plan *p, int x, int start, int count) {
    int in[1] = {x};
    if (begin_op(p, KILN_OP_SLICE_CHANNELS, 1, in, NULL) < 0) return -1;
    if (S(x)->ndim < 2 || start < 0 || count < 1 || start + (int64_t)count > S(x)->shape[1]) {
        char where[160], a[256];
        return plan_fail(p, KILN_EINVAL, "%s: channels %d..%d are not inside %s",
                         op_where(p, KILN_OP_SLICE_CHANNELS, where, sizeof where), start, start + count - 1,
                         slot_str(p, x, a, sizeof a));
    }
    kiln_op op = op_init(KILN_OP_SLICE_CHANNELS, 1, x, -1, -1, -1);
    op.start = start;
    op.count = count;
    int64_t shape[4];
    memcpy(shape, S(x)->shape, sizeof shape);
    shape[1] = count;
    return emit(p, &op, S(x)->ndim, shape);
}

/* ---- inspecting ---- */

const char *kiln_op_name(kiln_op_kind kind) {
    switch (kind) {
    case KILN_OP_CONV2D: return "conv2d";
    case KILN_OP_LINEAR: return "linear";
    case KILN_OP_GROUP_NORM: return "group_norm";
    case KILN_OP_LAYER_NORM: return "layer_norm";
    case KILN_OP_ACTIVATION: return "activation";
    case KILN_OP_GEGLU: return "geglu";
    case KILN_OP_ATTENTION: return "attention";
    case KILN_OP_UPSAMPLE_NEAREST: return "upsample_nearest";
    case KILN_OP_CONCAT_CHANNELS: return "concat_channels";
    case KILN_OP_ADD: return "add";
    case KILN_OP_ADD_CHANNEL: return "add_channel";
    case KILN_OP_SCALE: return "scale";
    case KILN_OP_TIMESTEP_EMBED: return "timestep_embed";
    case KILN_OP_NCHW_TO_NLC: return "nchw_to_nlc";
    case KILN_OP_NLC_TO_NCHW: return "nlc_to_nchw";
    case KILN_OP_SLICE_CHANNELS: return "slice_channels";
    default: return "unknown";
    }
}

double kiln_op_flops(const kiln_plan *p, const kiln_op *op) {
    const kiln_slot *out = &p->slots[op->out];
    double numel = (double)kiln_slot_numel(out);
    switch (op->kind) {
    case KILN_OP_CONV2D: {
        const kiln_slot *w = &p->slots[op->in[1]];
        /* each output value is C*kh*kw multiply-adds */
        return 2.0 * numel * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
    }
    case KILN_OP_LINEAR: return 2.0 * numel * (double)p->slots[op->in[1]].shape[1];
    case KILN_OP_ATTENTION: {
        const kiln_slot *q = &p->slots[op->in[0]], *k = &p->slots[op->in[1]];
        /* q k^T and p v: B * Lq * Lk * E multiply-adds each */
        return 4.0 * (double)q->shape[0] * (double)q->shape[1] * (double)k->shape[1] * (double)q->shape[2];
    }
    default: return numel;
    }
}

const kiln_slot *kiln_plan_slot(const kiln_plan *p, int id) {
    static const kiln_slot none; /* all zero: shape [0, 0, 0, 0] */
    return p && id >= 0 && id < p->n_slots ? &p->slots[id] : &none;
}
