/* plan.h — the plan IR: a network for one set of shapes, as data.
 *
 * A plan is a flat array of ops over numbered tensor slots. Network builders
 * (src/net/) emit it once per shape; passes may rewrite it; a backend compiles
 * and runs it. A plan knows shapes and weights by name, never kernels.
 *
 * Slots are inputs (fed per run), weights (named tensors of a kiln_weights store,
 * fixed at compile time), activations (intermediate), and outputs (activations the
 * caller reads back). All float slots are logically float32, NCHW or [B, L, C]
 * row-major; a backend picks its own physical layout and precision.
 *
 * Builders call the kiln_plan_* op functions, which infer and check shapes. The first
 * error sticks in the plan (plan->status) and later calls become no-ops returning -1,
 * so a forward pass reads straight through and is checked once at the end. */
#ifndef KILN_PLAN_PLAN_H
#define KILN_PLAN_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "model/weights.h"

#define KILN_PLAN_MAX_DIMS 4
#define KILN_PLAN_MAX_INPUTS 4

typedef enum kiln_slot_kind {
    KILN_SLOT_INPUT,      /* fed by the caller each run */
    KILN_SLOT_WEIGHT,     /* a named weight tensor, constant across runs */
    KILN_SLOT_ACTIVATION, /* produced by an op */
} kiln_slot_kind;

typedef enum kiln_slot_dtype { KILN_SLOT_F32, KILN_SLOT_I32 } kiln_slot_dtype;

typedef struct kiln_slot {
    kiln_slot_kind kind;
    kiln_slot_dtype dtype;
    int ndim;
    int64_t shape[KILN_PLAN_MAX_DIMS];
    char name[128];                  /* inputs/outputs: caller-facing name; weights: tensor name */
    const kiln_weight *weight;       /* KILN_SLOT_WEIGHT: the tensor in the store */
    int is_output;                   /* the caller reads it after a run */
    int producer;                    /* op index that writes it, -1 for inputs/weights */
    int last_use;                    /* last op index that reads it (memory planning) */
    size_t arena_offset;             /* inputs and activations: byte offset in the arena (memory planner) */
} kiln_slot;

typedef enum kiln_op_kind {
    KILN_OP_CONV2D,          /* x[N,C,H,W], w[O,C,kh,kw], b[O] (optional) -> [N,O,H',W']; stride, pad, pad_end:
                                zero padding `pad` before and `pad + pad_end` after each spatial axis
                                (pad_end = 1 with pad = 0 is LDM's asymmetric VAE downsampling) */
    KILN_OP_LINEAR,          /* x[..,K], w[N,K], b[N] (optional) -> [..,N] */
    KILN_OP_GROUP_NORM,      /* x[N,C,...], gamma[C], beta[C] -> same; groups, eps; act = NONE or SILU */
    KILN_OP_LAYER_NORM,      /* x[..,C], gamma[C], beta[C] -> same; eps (over the last dim) */
    KILN_OP_ACTIVATION,      /* x -> act(x); act */
    KILN_OP_GEGLU,           /* x[..,2N] -> x[..,:N] * gelu(x[..,N:]) (exact erf GELU) */
    KILN_OP_ATTENTION,       /* q[B,Lq,H*D], k[B,Lk,H*D], v[B,Lk,H*D] -> [B,Lq,H*D]; heads, causal, scale */
    KILN_OP_UPSAMPLE_NEAREST,/* x[N,C,H,W] -> [N,C,out_h,out_w] (nearest, floor(dst*in/out)) */
    KILN_OP_CONCAT_CHANNELS, /* a[N,Ca,H,W], b[N,Cb,H,W] -> [N,Ca+Cb,H,W] */
    KILN_OP_ADD,             /* a + b; b may have fewer elements: b repeats (b's shape = a's trailing dims) */
    KILN_OP_ADD_CHANNEL,     /* x[N,C,H,W] + e[N,C] broadcast over H,W (resnet time embedding) */
    KILN_OP_SCALE,           /* x * scale */
    KILN_OP_TIMESTEP_EMBED,  /* t[N] -> [N,dim] = [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / (dim/2)) */
    KILN_OP_NCHW_TO_NLC,     /* x[N,C,H,W] -> [N,H*W,C] */
    KILN_OP_NLC_TO_NCHW,     /* x[N,H*W,C] -> [N,C,H,W] (h, w attributes) */
    KILN_OP_SLICE_CHANNELS,  /* x[N,C,H,W] -> [N,count,H,W] from channel start (e.g. VAE mean/logvar) */
    KILN_OP_COUNT
} kiln_op_kind;

typedef enum kiln_activation { KILN_ACT_NONE, KILN_ACT_SILU, KILN_ACT_GELU, KILN_ACT_QUICK_GELU } kiln_activation;

typedef struct kiln_op {
    kiln_op_kind kind;
    int n_in;
    int in[KILN_PLAN_MAX_INPUTS];  /* slot ids; -1 for an absent optional input (bias) */
    int out;                       /* slot id */
    /* attributes; each op reads the ones its comment above names */
    int stride, pad, pad_end;      /* CONV2D */
    int groups;                    /* GROUP_NORM */
    kiln_activation act;           /* GROUP_NORM (fused), ACTIVATION */
    int heads, causal;             /* ATTENTION */
    int start, count;              /* SLICE_CHANNELS */
    int h, w;                      /* NLC_TO_NCHW, UPSAMPLE_NEAREST (output size) */
    int dim;                       /* TIMESTEP_EMBED */
    float eps;                     /* norms */
    float scale;                   /* ATTENTION (softmax scale), SCALE */
    float max_period;              /* TIMESTEP_EMBED (10000) */
    char label[96];                /* the checkpoint module this op comes from, for errors and profiles */
} kiln_op;

typedef struct kiln_plan {
    int n_slots, cap_slots;
    kiln_slot *slots;
    int n_ops, cap_ops;
    kiln_op *ops;
    const kiln_weights *weights;   /* the store weight slots come from */
    kiln_weights *collect;         /* if set (== weights), a missing weight is added to it with the builder's shape
                                      and no data instead of failing: how `kiln mkrandom` learns every name and
                                      shape of an architecture from the builders themselves */
    int status;                    /* first error (0 = ok); the message is in kiln_last_error() */
    size_t arena_bytes;            /* after kiln_plan_finalize: activation arena size */
    char label[96];                /* label given to ops added next (kiln_plan_set_label) */
} kiln_plan;

/* ---- building ---- */
kiln_plan *kiln_plan_new(const kiln_weights *weights);
void kiln_plan_free(kiln_plan *plan);

/* A caller-fed input slot. */
int kiln_plan_input(kiln_plan *p, const char *name, kiln_slot_dtype dtype, int ndim, const int64_t *shape);
/* A weight slot for the named tensor; checks that it exists and has exactly this shape
 * (ndim/shape given by the builder) and reports the name and both shapes otherwise. */
int kiln_plan_weight(kiln_plan *p, const char *name, int ndim, const int64_t *shape);
/* Like kiln_plan_weight but returns -1 without an error when the tensor is absent. */
int kiln_plan_weight_optional(kiln_plan *p, const char *name, int ndim, const int64_t *shape);
/* Marks a slot as a named output the caller reads back. */
int kiln_plan_output(kiln_plan *p, int slot, const char *name);

/* Ops: each returns the output slot (or -1 once the plan has failed). */
int kiln_plan_conv2d(kiln_plan *p, int x, int w, int b, int stride, int pad);
/* Conv with pad_end extra zeros after each spatial axis (see KILN_OP_CONV2D). */
int kiln_plan_conv2d_ex(kiln_plan *p, int x, int w, int b, int stride, int pad, int pad_end);
int kiln_plan_linear(kiln_plan *p, int x, int w, int b);
int kiln_plan_group_norm(kiln_plan *p, int x, int gamma, int beta, int groups, float eps, kiln_activation act);
int kiln_plan_layer_norm(kiln_plan *p, int x, int gamma, int beta, float eps);
int kiln_plan_activation(kiln_plan *p, int x, kiln_activation act);
int kiln_plan_geglu(kiln_plan *p, int x);
int kiln_plan_attention(kiln_plan *p, int q, int k, int v, int heads, int causal);
int kiln_plan_upsample_nearest(kiln_plan *p, int x, int out_h, int out_w);
int kiln_plan_concat_channels(kiln_plan *p, int a, int b);
int kiln_plan_add(kiln_plan *p, int a, int b);
int kiln_plan_add_channel(kiln_plan *p, int x, int e);
int kiln_plan_scale(kiln_plan *p, int x, float scale);
int kiln_plan_timestep_embed(kiln_plan *p, int t, int dim, float max_period);
int kiln_plan_nchw_to_nlc(kiln_plan *p, int x);
int kiln_plan_nlc_to_nchw(kiln_plan *p, int x, int h, int w);
int kiln_plan_slice_channels(kiln_plan *p, int x, int start, int count);

/* Sets the label (checkpoint module name) of ops added from now on, for messages and profiles. */
void kiln_plan_set_label(kiln_plan *p, const char *fmt, ...);

/* Computes slot lifetimes and assigns arena offsets (greedy best fit), sets arena_bytes.
 * Returns plan->status. Call once after building. */
int kiln_plan_finalize(kiln_plan *p);

/* ---- inspecting ---- */
/* The slot with that id; for an invalid id (-1 after the plan failed) a zeroed slot, so builders can read shapes
 * unconditionally and check the plan's status once at the end. */
const kiln_slot *kiln_plan_slot(const kiln_plan *p, int id);
int64_t kiln_slot_numel(const kiln_slot *s);
/* Slot id of the input or output with that name, or -1. */
int kiln_plan_find(const kiln_plan *p, const char *name);
const char *kiln_op_name(kiln_op_kind kind);
/* The order backends take host buffers in: input slots, then output slots, each in slot-id
 * order. Writes up to p->n_slots ids into inputs / outputs (either may be NULL) and the
 * counts into *n_inputs / *n_outputs (either may be NULL). */
void kiln_plan_io_order(const kiln_plan *p, int *inputs, int *n_inputs, int *outputs, int *n_outputs);
/* FLOPs of one op (2 per multiply-add), for benchmarks. */
double kiln_op_flops(const kiln_plan *p, const kiln_op *op);

#endif
