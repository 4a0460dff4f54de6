/* test_plan.c — the plan IR: shape inference, error messages, the sticky error, I/O
 * order, FLOP counts, and the memory planner on random graphs. */
#include <stdint.h>

#include "core/error.h"
#include "plan/plan.h"
#include "test.h"

static uint32_t rng_state = 777u;

static uint32_t urand(uint32_t n) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return (rng_state >> 8) % n;
}

/* Adds a zero-filled float32 tensor to the store. */
static void add_zero(kiln_weights *ws, const char *name, int ndim, const int64_t *shape, const char *source) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    CHECK(kiln_weights_add_owned_f32(ws, name, ndim, shape, calloc((size_t)n, sizeof(float)), source) == 0);
}

static int same_shape(const kiln_slot *s, int ndim, const int64_t *shape) {
    if (s->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (s->shape[i] != shape[i]) return 0;
    return 1;
}

TEST(shape_inference) {
    kiln_weights *ws = kiln_weights_new();
    int64_t w3[4] = {8, 4, 3, 3}, w1[4] = {6, 8, 1, 1}, b8[1] = {8}, lw[2] = {10, 6}, g6[1] = {6};
    add_zero(ws, "c.weight", 4, w3, "m.safetensors");
    add_zero(ws, "c.bias", 1, b8, "m.safetensors");
    add_zero(ws, "p.weight", 4, w1, "m.safetensors");
    add_zero(ws, "fc.weight", 2, lw, "m.safetensors");
    add_zero(ws, "g", 1, g6, "m.safetensors");
    kiln_plan *p = kiln_plan_new(ws);
    int64_t xs[4] = {2, 4, 9, 7}, ts[1] = {2};
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
    int wc = kiln_plan_weight(p, "c.weight", 4, w3), bc = kiln_plan_weight(p, "c.bias", 1, b8);
    CHECK(kiln_plan_weight(p, "c.weight", 4, w3) == wc); /* one slot per tensor */

    int c1 = kiln_plan_conv2d(p, x, wc, bc, 2, 1);
    int64_t e1[4] = {2, 8, 5, 4};
    CHECK(same_shape(&p->slots[c1], 4, e1));
    int c2 = kiln_plan_conv2d_ex(p, x, wc, -1, 2, 0, 1); /* VAE downsampling: (9+1-3)/2+1 = 4, (7+1-3)/2+1 = 3 */
    int64_t e2[4] = {2, 8, 4, 3};
    CHECK(same_shape(&p->slots[c2], 4, e2));
    int pw = kiln_plan_conv2d(p, c1, kiln_plan_weight(p, "p.weight", 4, w1), -1, 1, 0);
    int64_t e3[4] = {2, 6, 5, 4};
    CHECK(same_shape(&p->slots[pw], 4, e3));

    int nlc = kiln_plan_nchw_to_nlc(p, pw);
    int64_t e4[3] = {2, 20, 6};
    CHECK(same_shape(&p->slots[nlc], 3, e4));
    int ln = kiln_plan_layer_norm(p, nlc, kiln_plan_weight(p, "g", 1, g6), kiln_plan_weight(p, "g", 1, g6), 1e-5f);
    int fc = kiln_plan_linear(p, ln, kiln_plan_weight(p, "fc.weight", 2, lw), -1);
    int64_t e5[3] = {2, 20, 10};
    CHECK(same_shape(&p->slots[fc], 3, e5));
    int gg = kiln_plan_geglu(p, fc);
    int64_t e6[3] = {2, 20, 5};
    CHECK(same_shape(&p->slots[gg], 3, e6));
    int at = kiln_plan_attention(p, gg, gg, gg, 5, 0);
    CHECK(same_shape(&p->slots[at], 3, e6));
    CHECK(p->ops[p->slots[at].producer].scale == 1.0f); /* head dim 1 */
    int back = kiln_plan_nlc_to_nchw(p, at, 5, 4);
    int64_t e7[4] = {2, 5, 5, 4};
    CHECK(same_shape(&p->slots[back], 4, e7));
    int up = kiln_plan_upsample_nearest(p, back, 10, 8);
    int64_t e8[4] = {2, 5, 10, 8};
    CHECK(same_shape(&p->slots[up], 4, e8));
    int cat = kiln_plan_concat_channels(p, c1, kiln_plan_slice_channels(p, back, 1, 3));
    int64_t e9[4] = {2, 11, 5, 4};
    CHECK(same_shape(&p->slots[cat], 4, e9));
    int te = kiln_plan_timestep_embed(p, kiln_plan_input(p, "t", KILN_SLOT_F32, 1, ts), 32, 10000.0f);
    int64_t e10[2] = {2, 32};
    CHECK(same_shape(&p->slots[te], 2, e10));
    int gn = kiln_plan_group_norm(p, pw, kiln_plan_weight(p, "g", 1, g6), kiln_plan_weight(p, "g", 1, g6), 3, 1e-5f,
                                  KILN_ACT_SILU);
    CHECK(same_shape(&p->slots[gn], 4, e3));
    CHECK(p->status == 0);

    /* attention scale = 1/sqrt(head_dim) */
    int64_t qs[3] = {1, 4, 40};
    int q = kiln_plan_input(p, "q", KILN_SLOT_F32, 3, qs);
    int a8 = kiln_plan_attention(p, q, q, q, 5, 1);
    CHECK_NEAR(p->ops[p->slots[a8].producer].scale, 1.0 / sqrt(8.0), 1e-7);
    CHECK(p->ops[p->slots[a8].producer].causal == 1);

    /* FLOPs: conv = 2 * N*O*Ho*Wo * C*kh*kw; attention = 4 * B*Lq*Lk*E; others = numel */
    CHECK_NEAR(kiln_op_flops(p, &p->ops[p->slots[c1].producer]), 2.0 * 2 * 8 * 5 * 4 * 4 * 3 * 3, 0);
    CHECK_NEAR(kiln_op_flops(p, &p->ops[p->slots[fc].producer]), 2.0 * 2 * 20 * 10 * 6, 0);
    CHECK_NEAR(kiln_op_flops(p, &p->ops[p->slots[a8].producer]), 4.0 * 4 * 4 * 40, 0);
    CHECK_NEAR(kiln_op_flops(p, &p->ops[p->slots[up].producer]), 2.0 * 5 * 10 * 8, 0);
    CHECK(!strcmp(kiln_op_name(KILN_OP_GROUP_NORM), "group_norm"));
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(weight_errors) {
    kiln_weights *ws = kiln_weights_new();
    int64_t have[4] = {4, 320, 3, 3}, want[4] = {4, 32, 3, 3};
    add_zero(ws, "model.diffusion_model.out.2.weight", 4, have, "sd15.safetensors");
    kiln_plan *p = kiln_plan_new(ws);
    CHECK(kiln_plan_weight(p, "model.diffusion_model.out.2.weight", 4, want) == -1);
    CHECK(p->status == KILN_EFORMAT);
    CHECK_MSG(strstr(kiln_last_error(),
                     "tensor model.diffusion_model.out.2.weight has shape [4, 320, 3, 3], expected [4, 32, 3, 3]"),
              "message: %s", kiln_last_error());
    kiln_plan_free(p);

    p = kiln_plan_new(ws);
    CHECK(kiln_plan_weight_optional(p, "missing.bias", 1, want) == -1);
    CHECK(p->status == 0); /* optional and absent is fine */
    CHECK(kiln_plan_weight(p, "missing.weight", 4, want) == -1);
    CHECK(p->status == KILN_ENOTFOUND);
    CHECK_MSG(!strcmp(kiln_last_error(), "tensor missing.weight not found in the checkpoint (from sd15.safetensors)"),
              "message: %s", kiln_last_error());
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(op_errors_name_the_label) {
    kiln_weights *ws = kiln_weights_new();
    int64_t w3[4] = {8, 4, 3, 3}, lw[2] = {10, 6};
    add_zero(ws, "c.weight", 4, w3, "m.safetensors");
    add_zero(ws, "fc.weight", 2, lw, "m.safetensors");
    int64_t xs[4] = {1, 3, 8, 8}, ls[3] = {2, 5, 7}, as[4] = {1, 2, 4, 4}, bs[4] = {1, 2, 4, 5};

    kiln_plan *p = kiln_plan_new(ws);
    kiln_plan_set_label(p, "model.diffusion_model.input_blocks.%d.0", 1);
    int y = kiln_plan_conv2d(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs), kiln_plan_weight(p, "c.weight", 4, w3),
                             -1, 1, 1);
    CHECK(y == -1 && p->status == KILN_EINVAL);
    CHECK_MSG(strstr(kiln_last_error(), "model.diffusion_model.input_blocks.1.0") &&
                  strstr(kiln_last_error(), "conv2d") && strstr(kiln_last_error(), "3 channels") &&
                  strstr(kiln_last_error(), "c.weight"),
              "message: %s", kiln_last_error());
    /* sticky: later calls do nothing and keep the first message */
    char first[1024];
    snprintf(first, sizeof first, "%s", kiln_last_error());
    int64_t ts[1] = {1};
    CHECK(kiln_plan_input(p, "t", KILN_SLOT_F32, 1, ts) == -1);
    CHECK(kiln_plan_scale(p, 0, 2.0f) == -1);
    CHECK(kiln_plan_finalize(p) == KILN_EINVAL);
    CHECK(!strcmp(first, kiln_last_error()));
    CHECK(p->n_ops == 0);
    kiln_plan_free(p);

    p = kiln_plan_new(ws);
    kiln_plan_set_label(p, "proj");
    CHECK(kiln_plan_linear(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 3, ls), kiln_plan_weight(p, "fc.weight", 2, lw),
                           -1) == -1);
    CHECK_MSG(strstr(kiln_last_error(), "op proj (linear)") && strstr(kiln_last_error(), "last dimension 7"),
              "message: %s", kiln_last_error());
    kiln_plan_free(p);

    p = kiln_plan_new(ws);
    kiln_plan_set_label(p, "cat");
    CHECK(kiln_plan_concat_channels(p, kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as),
                                    kiln_plan_input(p, "b", KILN_SLOT_F32, 4, bs)) == -1);
    CHECK_MSG(strstr(kiln_last_error(), "op cat (concat_channels)"), "message: %s", kiln_last_error());
    kiln_plan_free(p);

    /* a few more shape checks, each on a fresh plan */
    p = kiln_plan_new(NULL);
    int a = kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as);
    CHECK(kiln_plan_group_norm(p, a, -1, -1, 3, 1e-5f, KILN_ACT_NONE) == -1); /* missing gamma */
    kiln_plan_free(p);
    p = kiln_plan_new(NULL);
    a = kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as);
    int64_t g2[1] = {2};
    int g = kiln_plan_input(p, "g", KILN_SLOT_F32, 1, g2);
    CHECK(kiln_plan_group_norm(p, a, g, g, 3, 1e-5f, KILN_ACT_NONE) == -1);
    CHECK(strstr(kiln_last_error(), "do not split into 3 groups") != NULL);
    kiln_plan_free(p);
    p = kiln_plan_new(NULL);
    int q = kiln_plan_input(p, "q", KILN_SLOT_F32, 3, ls);
    CHECK(kiln_plan_attention(p, q, q, q, 2, 0) == -1); /* 7 does not split into 2 heads */
    kiln_plan_free(p);
    p = kiln_plan_new(NULL);
    a = kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as);
    int b = kiln_plan_input(p, "b", KILN_SLOT_F32, 4, bs);
    CHECK(kiln_plan_add(p, a, b) == -1);
    CHECK(kiln_plan_slice_channels(p, a, 1, 2) == -1); /* still failed from the add */
    kiln_plan_free(p);
    p = kiln_plan_new(NULL);
    a = kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as);
    CHECK(kiln_plan_slice_channels(p, a, 1, 2) == -1); /* channels 1..2 of 2 */
    kiln_plan_free(p);
    p = kiln_plan_new(NULL);
    a = kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as);
    CHECK(kiln_plan_nlc_to_nchw(p, a, 4, 4) == -1); /* needs 3-D */
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(io_names_and_order) {
    int64_t s1[1] = {4};
    kiln_plan *p = kiln_plan_new(NULL);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 1, s1);
    int ids = kiln_plan_input(p, "ids", KILN_SLOT_I32, 1, s1);
    int y = kiln_plan_scale(p, x, 2.0f);
    int z = kiln_plan_scale(p, y, 2.0f);
    CHECK(kiln_plan_output(p, z, "z") == z);
    CHECK(kiln_plan_output(p, y, "y") == y);
    CHECK(kiln_plan_find(p, "x") == x && kiln_plan_find(p, "ids") == ids && kiln_plan_find(p, "y") == y &&
          kiln_plan_find(p, "z") == z && kiln_plan_find(p, "w") == -1);
    int in[8], out[8], ni, no;
    kiln_plan_io_order(p, in, &ni, out, &no);
    CHECK(ni == 2 && in[0] == x && in[1] == ids);
    CHECK(no == 2 && out[0] == y && out[1] == z); /* slot-id order, not marking order */
    CHECK(kiln_plan_scale(p, ids, 1.0f) == -1);   /* ops take float32 */
    kiln_plan_free(p);

    p = kiln_plan_new(NULL);
    x = kiln_plan_input(p, "x", KILN_SLOT_F32, 1, s1);
    CHECK(kiln_plan_input(p, "x", KILN_SLOT_F32, 1, s1) == -1);
    CHECK(strstr(kiln_last_error(), "'x' is already used") != NULL);
    kiln_plan_free(p);

    p = kiln_plan_new(NULL);
    x = kiln_plan_input(p, "x", KILN_SLOT_F32, 1, s1);
    CHECK(kiln_plan_output(p, x, "out") == -1); /* an input is not an op result */
    kiln_plan_free(p);
}

/* ---- memory planner ---- */

/* Checks the planner's result against lifetimes computed here from the op list. */
static void check_no_overlap(const kiln_plan *p) {
    int n = p->n_slots;
    int *first = malloc((size_t)n * sizeof *first), *last = malloc((size_t)n * sizeof *last);
    for (int i = 0; i < n; i++) {
        const kiln_slot *s = &p->slots[i];
        first[i] = s->kind == KILN_SLOT_INPUT ? -1 : s->producer;
        last[i] = first[i];
    }
    for (int o = 0; o < p->n_ops; o++)
        for (int j = 0; j < p->ops[o].n_in; j++)
            if (p->ops[o].in[j] >= 0 && last[p->ops[o].in[j]] < o) last[p->ops[o].in[j]] = o;
    for (int i = 0; i < n; i++)
        if (p->slots[i].kind == KILN_SLOT_INPUT || p->slots[i].is_output) last[i] = p->n_ops;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const kiln_slot *a = &p->slots[i];
        if (a->kind == KILN_SLOT_WEIGHT) continue;
        size_t asz = (size_t)kiln_slot_numel(a) * 4;
        if (a->arena_offset % 256 || a->arena_offset + asz > p->arena_bytes) bad++;
        for (int j = i + 1; j < n; j++) {
            const kiln_slot *b = &p->slots[j];
            if (b->kind == KILN_SLOT_WEIGHT) continue;
            if (first[i] > last[j] || first[j] > last[i]) continue; /* never live together */
            size_t bsz = (size_t)kiln_slot_numel(b) * 4;
            if (a->arena_offset < b->arena_offset + bsz && b->arena_offset < a->arena_offset + asz) bad++;
        }
    }
    CHECK_MSG(bad == 0, "%d overlapping or misplaced slots", bad);
    free(first);
    free(last);
}

/* A random DAG of same-shaped float tensors: each op reads one or two earlier tensors
 * (recent ones more often, so there are chains, diamonds and long skips). */
static kiln_plan *random_graph(int n_ops, int n_inputs) {
    kiln_plan *p = kiln_plan_new(NULL);
    int *ids = malloc((size_t)(n_ops + n_inputs) * sizeof *ids), n = 0;
    char name[32];
    for (int i = 0; i < n_inputs; i++) {
        int64_t shape[2] = {1 + urand(4), 16 + urand(200)};
        snprintf(name, sizeof name, "in%d", i);
        ids[n++] = kiln_plan_input(p, name, KILN_SLOT_F32, 2, shape);
    }
    for (int o = 0; o < n_ops; o++) {
        int a = ids[urand(4) ? n - 1 - (int)urand(n < 3 ? n : 3) : (int)urand(n)];
        int y;
        switch (urand(4)) {
        case 0: y = kiln_plan_scale(p, a, 0.5f); break;
        case 1: y = kiln_plan_activation(p, a, KILN_ACT_SILU); break;
        case 2: { /* a join (diamond) when the shapes allow it */
            int b = ids[urand((uint32_t)n)];
            y = p->slots[b].ndim == p->slots[a].ndim && p->slots[b].shape[0] == p->slots[a].shape[0] &&
                        p->slots[b].shape[1] == p->slots[a].shape[1]
                    ? kiln_plan_add(p, a, b)
                    : kiln_plan_scale(p, a, 2.0f);
            break;
        }
        default:
            y = p->slots[a].shape[1] % 2 == 0 ? kiln_plan_geglu(p, a) : kiln_plan_scale(p, a, 3.0f);
            break;
        }
        ids[n++] = y;
        if (urand(10) == 0) {
            snprintf(name, sizeof name, "out%d", o);
            kiln_plan_output(p, y, name);
        }
    }
    if (!p->slots[ids[n - 1]].is_output) kiln_plan_output(p, ids[n - 1], "final");
    free(ids);
    return p;
}

TEST(memory_planner_random_graphs) {
    for (int trial = 0; trial < 40; trial++) {
        kiln_plan *p = random_graph(20 + (int)urand(120), 1 + (int)urand(3));
        CHECK_MSG(p->status == 0, "%s", kiln_last_error());
        CHECK(kiln_plan_finalize(p) == 0);
        check_no_overlap(p);
        kiln_plan_free(p);
    }
}

TEST(memory_planner_chain_reuses) {
    int64_t s[2] = {64, 64};
    kiln_plan *p = kiln_plan_new(NULL);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 2, s), skip = -1;
    size_t sum = (size_t)kiln_slot_numel(&p->slots[x]) * 4;
    for (int i = 0; i < 50; i++) {
        x = kiln_plan_activation(p, x, KILN_ACT_SILU);
        if (i == 10) skip = x;
        if (i == 40) x = kiln_plan_add(p, x, skip); /* a long skip connection */
        sum += (size_t)kiln_slot_numel(&p->slots[x]) * 4;
    }
    kiln_plan_output(p, x, "out");
    CHECK(kiln_plan_finalize(p) == 0);
    check_no_overlap(p);
    /* input + output + skip + two in flight: far below the sum of all activations */
    CHECK_MSG(p->arena_bytes < sum / 4, "arena %zu bytes for %zu bytes of activations", p->arena_bytes, sum);
    CHECK(p->arena_bytes <= 5 * 64 * 64 * 4);
    kiln_plan_free(p);
}

/* Regression: an op's output shape was read from the slot table while the table grew
 * (realloc moved it), which crashed once a plan passed about a thousand slots. */
TEST(thousands_of_slots) {
    int64_t s[3] = {2, 3, 5};
    kiln_plan *p = kiln_plan_new(NULL);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 3, s);
    for (int i = 0; i < 5000; i++) x = kiln_plan_activation(p, x, KILN_ACT_SILU);
    kiln_plan_output(p, x, "out");
    CHECK(p->status == 0 && p->n_slots == 5001);
    int64_t want[3] = {2, 3, 5};
    CHECK(same_shape(&p->slots[x], 3, want));
    CHECK(kiln_plan_finalize(p) == 0);
    CHECK(p->arena_bytes <= 3 * 256); /* the input plus what one op reads and writes */
    kiln_plan_free(p);
}

int main(void) {
    RUN(shape_inference);
    RUN(weight_errors);
    RUN(op_errors_name_the_label);
    RUN(io_names_and_order);
    RUN(memory_planner_random_graphs);
    RUN(memory_planner_chain_reuses);
    RUN(thousands_of_slots);
    return test_summary();
}
