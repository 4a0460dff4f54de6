/* cuda_bench.c — times the CUDA backend's conv, GEMM, attention and norm ops at SD 1.5 512x512
 * shapes (CFG batch 2, 64x64 latent, context 77x768) and prints achieved TFLOP/s.
 *
 * Each case is a plan of R chained copies of one op; it is compiled (tuned, captured as a CUDA
 * graph) and its graph replays are timed with CUDA events (warm-up, then the median of many).
 * The time of R = 1 is subtracted from R = 1 + REPS, so the I/O conversions at the plan's edges
 * cancel and what remains is REPS ops back to back, as in the U-Net.
 * Usage: cuda_bench [filter-substring]   (KILN_CUDA_BF16=1 times the bf16 kernels) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

#define REPS 10

static uint32_t rng = 7u;
static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static int add_weight(kiln_weights *ws, kiln_plan *p, const char *name, int ndim, const int64_t *shape, float amp) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = amp * frand();
    kiln_weights_add_owned_f32(ws, name, ndim, shape, d, "bench");
    return kiln_plan_weight(p, name, ndim, shape);
}

typedef enum { B_CONV, B_LINEAR, B_ATTN, B_GN, B_LN, B_SCALE } bench_kind;
typedef struct bench_case {
    const char *name;
    bench_kind kind;
    int a, b, c, d, e, f;  /* conv: N C H W O k; linear: M K N; attn: B H Lq Lk D; gn, scale: N C H W; ln: rows C */
} bench_case;

/* Builds the plan with `reps` chained ops; returns the FLOPs of one op through *flops. */
static kiln_plan *build(const bench_case *bc, int reps, kiln_weights *ws, double *flops) {
    kiln_plan *p = kiln_plan_new(ws);
    int x = -1, op_idx = -1;
    switch (bc->kind) {
    case B_CONV: {
        int64_t xs[4] = {bc->a, bc->b, bc->c, bc->d}, ws_[4] = {bc->e, bc->b, bc->f, bc->f}, bs[1] = {bc->e};
        int64_t ws2[4] = {bc->b, bc->e, bc->f, bc->f}, bs2[1] = {bc->b};
        x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
        int w1 = add_weight(ws, p, "w1", 4, ws_, 1.0f / sqrtf((float)bc->b * bc->f * bc->f));
        int b1 = add_weight(ws, p, "b1", 1, bs, 0.1f);
        int w2 = add_weight(ws, p, "w2", 4, ws2, 1.0f / sqrtf((float)bc->e * bc->f * bc->f));
        int b2 = add_weight(ws, p, "b2", 1, bs2, 0.1f);
        for (int r = 0; r < reps; r++) {  /* C -> O -> C -> ... (same op when C == O) */
            op_idx = p->n_ops;
            x = (r % 2 == 0) ? kiln_plan_conv2d(p, x, w1, b1, 1, bc->f / 2) : kiln_plan_conv2d(p, x, w2, b2, 1, bc->f / 2);
        }
        break;
    }
    case B_LINEAR: {
        int64_t xs[2] = {bc->a, bc->b}, w1s[2] = {bc->c, bc->b}, w2s[2] = {bc->b, bc->c};
        x = kiln_plan_input(p, "x", KILN_SLOT_F32, 2, xs);
        int w1 = add_weight(ws, p, "w1", 2, w1s, 1.0f / sqrtf((float)bc->b));
        int w2 = add_weight(ws, p, "w2", 2, w2s, 1.0f / sqrtf((float)bc->c));
        for (int r = 0; r < reps; r++) {
            op_idx = p->n_ops;
            x = kiln_plan_linear(p, x, r % 2 == 0 ? w1 : w2, -1);
        }
        break;
    }
    case B_ATTN: {
        int64_t qs[3] = {bc->a, bc->c, (int64_t)bc->b * bc->e}, ks[3] = {bc->a, bc->d, (int64_t)bc->b * bc->e};
        x = kiln_plan_input(p, "q", KILN_SLOT_F32, 3, qs);
        int k = kiln_plan_input(p, "k", KILN_SLOT_F32, 3, ks), v = kiln_plan_input(p, "v", KILN_SLOT_F32, 3, ks);
        for (int r = 0; r < reps; r++) {
            op_idx = p->n_ops;
            x = kiln_plan_attention(p, x, k, v, bc->b, 0);
        }
        break;
    }
    case B_GN: {
        int64_t xs[4] = {bc->a, bc->b, bc->c, bc->d}, cs[1] = {bc->b};
        x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
        int g = add_weight(ws, p, "g", 1, cs, 1.0f), b = add_weight(ws, p, "b", 1, cs, 0.1f);
        for (int r = 0; r < reps; r++) {
            op_idx = p->n_ops;
            x = kiln_plan_group_norm(p, x, g, b, 32, 1e-5f, KILN_ACT_SILU);
        }
        break;
    }
    case B_SCALE: {  /* the floor for a memory-bound op: one read, one write */
        int64_t xs[4] = {bc->a, bc->b, bc->c, bc->d};
        x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
        for (int r = 0; r < reps; r++) {
            op_idx = p->n_ops;
            x = kiln_plan_scale(p, x, 0.5f);
        }
        break;
    }
    case B_LN: {
        int64_t xs[2] = {bc->a, bc->b}, cs[1] = {bc->b};
        x = kiln_plan_input(p, "x", KILN_SLOT_F32, 2, xs);
        int g = add_weight(ws, p, "g", 1, cs, 1.0f), b = add_weight(ws, p, "b", 1, cs, 0.1f);
        for (int r = 0; r < reps; r++) {
            op_idx = p->n_ops;
            x = kiln_plan_layer_norm(p, x, g, b, 1e-5f);
        }
        break;
    }
    }
    kiln_plan_output(p, x, "out");
    if (kiln_plan_finalize(p) != 0) {
        fprintf(stderr, "%s: %s\n", bc->name, kiln_last_error());
        kiln_plan_free(p);
        return NULL;
    }
    *flops = kiln_op_flops(p, &p->ops[op_idx]);
    return p;
}

static int time_plan(kiln_backend *be, kiln_plan *p, float *med, int describe) {
    kiln_compiled *c = NULL;
    if (be->ops->compile(be, p, &c) != 0) {
        fprintf(stderr, "compile: %s\n", kiln_last_error());
        return -1;
    }
    if (describe) kiln_cuda_describe(c, stdout);
    float mn;
    int rc = kiln_cuda_time(c, 5, 30, med, &mn);
    be->ops->free_compiled(c);
    return rc;
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    kiln_backend *be = NULL;
    if (kiln_backend_cuda_create(0, &be) != 0) {
        fprintf(stderr, "%s\n", kiln_last_error());
        return 77;
    }
    printf("precision %s (KILN_CUDA_BF16=1: bf16)\n", kiln_cuda_precision(be));
    static const bench_case cases[] = {
        {"conv3x3 2x320x64x64 ->320", B_CONV, 2, 320, 64, 64, 320, 3},
        {"conv3x3 2x640x32x32 ->640", B_CONV, 2, 640, 32, 32, 640, 3},
        {"conv3x3 2x1280x16x16 ->1280", B_CONV, 2, 1280, 16, 16, 1280, 3},
        {"conv3x3 2x1280x8x8 ->1280", B_CONV, 2, 1280, 8, 8, 1280, 3},
        {"conv3x3 2x960x64x64 ->320", B_CONV, 2, 960, 64, 64, 320, 3},
        {"conv3x3 2x2560x16x16 ->1280", B_CONV, 2, 2560, 16, 16, 1280, 3},
        {"conv1x1 2x320x64x64 ->320", B_CONV, 2, 320, 64, 64, 320, 1},
        {"linear 8192x320 ->320", B_LINEAR, 8192, 320, 320, 0, 0, 0},
        {"linear 8192x320 ->2560", B_LINEAR, 8192, 320, 2560, 0, 0, 0},
        {"linear 8192x1280 ->320", B_LINEAR, 8192, 1280, 320, 0, 0, 0},
        {"linear 2048x640 ->5120", B_LINEAR, 2048, 640, 5120, 0, 0, 0},
        {"linear 154x768 ->320", B_LINEAR, 154, 768, 320, 0, 0, 0},
        {"attn self 2x8 4096x4096 d40", B_ATTN, 2, 8, 4096, 4096, 40, 0},
        {"attn cross 2x8 4096x77 d40", B_ATTN, 2, 8, 4096, 77, 40, 0},
        {"attn self 2x8 1024x1024 d80", B_ATTN, 2, 8, 1024, 1024, 80, 0},
        {"attn self 2x8 256x256 d160", B_ATTN, 2, 8, 256, 256, 160, 0},
        {"attn self 2x10 4096x4096 d64", B_ATTN, 2, 10, 4096, 4096, 64, 0},
        {"groupnorm+silu 2x320x64x64", B_GN, 2, 320, 64, 64, 0, 0},
        {"groupnorm+silu 2x1280x16x16", B_GN, 2, 1280, 16, 16, 0, 0},
        {"layernorm 8192x320", B_LN, 8192, 320, 0, 0, 0, 0},
        {"scale 2x320x64x64", B_SCALE, 2, 320, 64, 64, 0, 0},
        {"scale 2x1280x16x16", B_SCALE, 2, 1280, 16, 16, 0, 0},
    };
    printf("%-32s %10s %10s %9s   (CUDA events, median of 30 graph replays, %d chained ops)\n", "case", "ms/op",
           "GFLOP", "TFLOP/s", REPS);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bench_case *bc = &cases[i];
        if (filter && !strstr(bc->name, filter)) continue;
        kiln_weights *ws1 = kiln_weights_new(), *ws2 = kiln_weights_new();
        double flops = 0;
        kiln_plan *p1 = build(bc, 1, ws1, &flops), *p2 = build(bc, 1 + REPS, ws2, &flops);
        float t1 = 0, t2 = 0;
        if (p1 && p2 && time_plan(be, p1, &t1, 0) == 0 && time_plan(be, p2, &t2, getenv("KILN_BENCH_DESCRIBE") != NULL) == 0) {
            double ms = (t2 - t1) / REPS;
            printf("%-32s %10.4f %10.2f %9.1f\n", bc->name, ms, flops / 1e9, ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0);
        } else {
            printf("%-32s failed: %s\n", bc->name, kiln_last_error());
        }
        fflush(stdout);
        kiln_plan_free(p1);
        kiln_plan_free(p2);
        kiln_weights_free(ws1);
        kiln_weights_free(ws2);
    }
    printf("device memory in use at exit: %.1f MiB\n", kiln_cuda_mem_used() / 1048576.0);
    kiln_backend_destroy(be);
    return 0;
}
