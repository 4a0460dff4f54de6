/* cpu_backend.c — the CPU reference backend: compiling a plan and running it op by op.
 *
 * Compiling converts every weight to float32 once and allocates one arena of
 * plan->arena_bytes for the activations plus one scratch buffer sized for the most
 * demanding op. Running points each slot at its data (inputs are read straight from the
 * caller's buffers and outputs written straight into them, so nothing is copied) and
 * executes the ops in plan order. The kernels live in the other files of this folder. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

typedef struct cpu_backend {
    int n_threads; /* OpenMP team size; resolved from 0 = all cores at creation */
} cpu_backend;

struct kiln_compiled {
    const kiln_plan *plan;
    int n_threads;
    float **weights;          /* per slot id: float32 copy of a weight slot, else NULL */
    uint64_t *weight_version; /* per slot id: the kiln_weight version that copy was made from */
    unsigned char *arena;     /* plan->arena_bytes, 64-byte aligned */
    float *scratch;
    size_t scratch_floats;
    float **ptr;              /* per slot id, filled on each run */
    int *in_slots, *out_slots;
    int n_in, n_out;
};

static void cpu_free_compiled(kiln_compiled *c) {
    if (!c) return;
    if (c->weights)
        for (int i = 0; i < c->plan->n_slots; i++) free(c->weights[i]);
    free(c->weights);
    free(c->weight_version);
    free(c->arena);
    free(c->scratch);
    free(c->ptr);
    free(c->in_slots);
    free(c->out_slots);
    free(c);
}

/* 64-byte aligned allocation of at least one byte (so that a zero size still succeeds). */
static void *aligned_alloc64(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

/* (Re)converts to float32 every weight whose tensor is new or changed (a LoRA merge bumps
 * kiln_weight.version) since the last copy. Buffers are allocated first, one by one, so a
 * failure leaves nothing half done; the conversions then run in parallel. */
static int refresh_weights(kiln_compiled *c) {
    const kiln_plan *p = c->plan;
    int *todo = malloc(((size_t)p->n_slots + 1) * sizeof *todo), n = 0;
    if (!todo) return kiln_error(KILN_ENOMEM, "out of memory converting weights");
    for (int i = 0; i < p->n_slots; i++) {
        const kiln_weight *w = p->slots[i].weight;
        if (p->slots[i].kind != KILN_SLOT_WEIGHT) continue;
        if (c->weights[i] && c->weight_version[i] == w->version) continue;
        if (!w->data) {
            free(todo);
            return kiln_error(KILN_EINVAL, "weight %s has no data (a collected name, not a loaded tensor)", w->name);
        }
        if (!c->weights[i]) c->weights[i] = aligned_alloc64((size_t)kiln_weight_numel(w) * sizeof(float));
        if (!c->weights[i]) {
            free(todo);
            return kiln_error(KILN_ENOMEM, "out of memory converting weight %s (%lld values) to float32", w->name,
                              (long long)kiln_weight_numel(w));
        }
        todo[n++] = i;
    }
#pragma omp parallel for num_threads(c->n_threads) if (n > 1) schedule(dynamic)
    for (int j = 0; j < n; j++) kiln_weight_to_f32(p->slots[todo[j]].weight, c->weights[todo[j]]);
    for (int j = 0; j < n; j++) c->weight_version[todo[j]] = p->slots[todo[j]].weight->version;
    free(todo);
    return 0;
}

static int cpu_compile(kiln_backend *be, const kiln_plan *plan, kiln_compiled **out) {
    cpu_backend *cb = be->impl;
    if (plan->status) return kiln_error(plan->status, "cannot compile a plan that failed to build");
    int ns = plan->n_slots;
    kiln_compiled *c = calloc(1, sizeof *c);
    if (!c) return kiln_error(KILN_ENOMEM, "out of memory compiling a plan for the CPU");
    c->plan = plan;
    c->n_threads = cb->n_threads;
    c->weights = calloc((size_t)ns + 1, sizeof *c->weights);
    c->weight_version = calloc((size_t)ns + 1, sizeof *c->weight_version);
    c->ptr = calloc((size_t)ns + 1, sizeof *c->ptr);
    c->in_slots = malloc(((size_t)ns + 1) * sizeof *c->in_slots);
    c->out_slots = malloc(((size_t)ns + 1) * sizeof *c->out_slots);
    c->arena = aligned_alloc64(plan->arena_bytes);
    if (!c->weights || !c->weight_version || !c->ptr || !c->in_slots || !c->out_slots || !c->arena) {
        cpu_free_compiled(c);
        return kiln_error(KILN_ENOMEM, "out of memory compiling a plan for the CPU (arena %zu bytes)",
                          plan->arena_bytes);
    }
    kiln_plan_io_order(plan, c->in_slots, &c->n_in, c->out_slots, &c->n_out);

    int rc = refresh_weights(c);
    if (rc < 0) {
        cpu_free_compiled(c);
        return rc;
    }

    size_t scratch = 0;
    for (int o = 0; o < plan->n_ops; o++) {
        const kiln_op *op = &plan->ops[o];
        size_t need = 0;
        if (op->kind == KILN_OP_CONV2D) need = kiln_cpu_conv2d_scratch(plan, op);
        if (op->kind == KILN_OP_ATTENTION) need = kiln_cpu_attention_scratch(plan, op, c->n_threads);
        if (need > scratch) scratch = need;
    }
    c->scratch_floats = scratch;
    c->scratch = aligned_alloc64(scratch * sizeof(float));
    if (!c->scratch) {
        cpu_free_compiled(c);
        return kiln_error(KILN_ENOMEM, "out of memory allocating %zu bytes of CPU scratch", scratch * sizeof(float));
    }
    *out = c;
    return 0;
}

static void run_op(const kiln_cpu_exec *e, const kiln_op *op) {
    switch (op->kind) {
    case KILN_OP_CONV2D: kiln_cpu_conv2d(e, op); break;
    case KILN_OP_LINEAR: kiln_cpu_linear(e, op); break;
    case KILN_OP_GROUP_NORM: kiln_cpu_group_norm(e, op); break;
    case KILN_OP_LAYER_NORM: kiln_cpu_layer_norm(e, op); break;
    case KILN_OP_ACTIVATION: kiln_cpu_activation(e, op); break;
    case KILN_OP_GEGLU: kiln_cpu_geglu(e, op); break;
    case KILN_OP_ATTENTION: kiln_cpu_attention(e, op); break;
    case KILN_OP_UPSAMPLE_NEAREST: kiln_cpu_upsample_nearest(e, op); break;
    case KILN_OP_CONCAT_CHANNELS: kiln_cpu_concat_channels(e, op); break;
    case KILN_OP_ADD: kiln_cpu_add(e, op); break;
    case KILN_OP_ADD_CHANNEL: kiln_cpu_add_channel(e, op); break;
    case KILN_OP_SCALE: kiln_cpu_scale(e, op); break;
    case KILN_OP_TIMESTEP_EMBED: kiln_cpu_timestep_embed(e, op); break;
    case KILN_OP_NCHW_TO_NLC: kiln_cpu_nchw_to_nlc(e, op); break;
    case KILN_OP_NLC_TO_NCHW: kiln_cpu_nlc_to_nchw(e, op); break;
    case KILN_OP_SLICE_CHANNELS: kiln_cpu_slice_channels(e, op); break;
    default: break;
    }
}

static int cpu_run(kiln_compiled *c, const void *const *inputs, void *const *outputs) {
    const kiln_plan *p = c->plan;
    KILN_TRY(refresh_weights(c)); /* a LoRA merge may have changed some */
    for (int i = 0; i < p->n_slots; i++) {
        const kiln_slot *s = &p->slots[i];
        c->ptr[i] = s->kind == KILN_SLOT_WEIGHT ? c->weights[i] : (float *)(c->arena + s->arena_offset);
    }
    for (int i = 0; i < c->n_in; i++) {
        if (!inputs || !inputs[i])
            return kiln_error(KILN_EINVAL, "no buffer given for input %s", p->slots[c->in_slots[i]].name);
        c->ptr[c->in_slots[i]] = (float *)inputs[i]; /* ops only read inputs */
    }
    for (int i = 0; i < c->n_out; i++) {
        if (!outputs || !outputs[i])
            return kiln_error(KILN_EINVAL, "no buffer given for output %s", p->slots[c->out_slots[i]].name);
        c->ptr[c->out_slots[i]] = outputs[i];
    }
    kiln_cpu_exec e = {p, c->ptr, c->n_threads, c->scratch, c->scratch_floats};
    /* kernels split products across the OpenMP team themselves (see cpu_ops.h) */
    openblas_set_num_threads(1);
    for (int o = 0; o < p->n_ops; o++) run_op(&e, &p->ops[o]);
    return 0;
}

static void cpu_destroy(kiln_backend *be) {
    if (!be) return;
    free(be->impl);
    free(be);
}

static const kiln_backend_ops cpu_ops = {
    .name = "cpu",
    .compile = cpu_compile,
    .run = cpu_run,
    .free_compiled = cpu_free_compiled,
    .destroy = cpu_destroy,
    .refits_weights = 1, /* cpu_run re-converts weights whose version changed */
};

int kiln_backend_cpu_create(int n_threads, kiln_backend **out) {
    if (n_threads < 0) return kiln_error(KILN_EINVAL, "CPU backend: thread count %d must be >= 0", n_threads);
    kiln_backend *be = calloc(1, sizeof *be);
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!be || !cb) {
        free(be);
        free(cb);
        return kiln_error(KILN_ENOMEM, "out of memory creating the CPU backend");
    }
    cb->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    be->ops = &cpu_ops;
    be->impl = cb;
    *out = be;
    return 0;
}
