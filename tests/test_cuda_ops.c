/* test_cuda_ops.c — every op of the CUDA backend against the CPU reference backend, on fresh random
 * inputs and weights of several shapes (odd sizes included), plus plans that chain ops (a resnet
 * block, a transformer block) so fusion, aliasing and arena reuse are exercised.
 *
 * Tolerances (relative L2 error ||gpu - cpu|| / ||cpu||), from fp16 storage (2^-11 relative
 * rounding per value) with fp32 accumulation:
 *   TOL_OP    2e-3  single GEMM / conv / norm / elementwise op
 *   TOL_ATTN  5e-3  attention (probabilities rounded to fp16 before P V)
 *   TOL_CHAIN 5e-3  chains of ops (roundings add up)
 * Everything runs a second time on a bf16 backend (kiln_backend_cuda_create_ex(0, 1)). bf16 keeps 8
 * mantissa bits to fp16's 11, so each stored value is rounded 8x more coarsely (2^-9 relative vs
 * 2^-12 unit roundoff) while the accumulation stays fp32: every error term above scales by 8, and
 * so do the limits (fp16 measured 2e-4 .. 9e-4 for single ops, i.e. ~1.6e-3 .. 7e-3 expected in
 * bf16, still 2x under the limit):
 *   TOL_OP    1.6e-2,  TOL_ATTN 4e-2,  TOL_CHAIN 4e-2.
 * The inputs are rounded to the GPU's 16-bit format first, for both backends: the GPU stores them so
 * anyway, and an op that cancels (a GroupNorm of 3 values around a mean of 3) would otherwise turn
 * the input rounding, not the kernel, into the error measured (up to 2.3e-2 in bf16, 3.4e-3 in
 * fp16 for that case). Weights are not rounded: their rounding is part of what is tested.
 * The fp16 limits are the same as before bf16 existed. NaN anywhere fails. Exits 77 (skipped) when
 * there is no usable GPU. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <stdint.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "test.h"

static kiln_backend *g_cpu, *g_gpu;
static int g_verbose;
static int g_bf16;  /* g_gpu computes in bf16: the bf16 limits apply */

#define TOL_OP (g_bf16 ? 1.6e-2 : 2e-3)
#define TOL_ATTN (g_bf16 ? 4e-2 : 5e-3)
#define TOL_CHAIN (g_bf16 ? 4e-2 : 5e-3)

static uint32_t rng_state = 2024u;
static float frand(float lo, float hi) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)((rng_state >> 8) * (1.0 / 16777216.0));
}

/* One test plan: its weights, inputs (random, kept for both backends) and the output "out". */
#define MAX_IO 8
typedef struct tcase {
    kiln_weights *ws;
    kiln_plan *p;
    int n_in;
    char names[MAX_IO][32];
    float *data[MAX_IO];
} tcase;

static void tc_begin(tcase *t) {
    memset(t, 0, sizeof *t);
    t->ws = kiln_weights_new();
    t->p = kiln_plan_new(t->ws);
}

static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static int tc_input(tcase *t, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d, float amp) {
    int64_t shape[4] = {a, b, c, d};
    int64_t n = numel(ndim, shape);
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = frand(-amp, amp);
    snprintf(t->names[t->n_in], sizeof t->names[0], "%s", name);
    t->data[t->n_in++] = x;
    return kiln_plan_input(t->p, name, KILN_SLOT_F32, ndim, shape);
}

/* Random weight with values in [lo, hi]. */
static int tc_weight(tcase *t, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d, float lo,
                     float hi) {
    int64_t shape[4] = {a, b, c, d};
    int64_t n = numel(ndim, shape);
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = frand(lo, hi);
    CHECK(kiln_weights_add_owned_f32(t->ws, name, ndim, shape, x, "test") == 0);
    return kiln_plan_weight(t->p, name, ndim, shape);
}

/* x rounded to the 16-bit format the GPU stores (ties to even): bf16 keeps 8 mantissa bits, fp16
 * 11 (values of the tests' magnitudes are fp16 normals, where dropping 13 bits is fp16's rounding). */
static float round_16bit(float x, int bf16) {
    union { float f; uint32_t u; } v = {x};
    if ((v.u & 0x7f800000u) == 0x7f800000u) return x;  /* inf, NaN */
    int drop = bf16 ? 16 : 13;
    uint32_t half = (1u << (drop - 1)) - 1u;
    v.u += half + ((v.u >> drop) & 1u);
    v.u &= ~((1u << drop) - 1u);
    return v.f;
}

/* Runs the plan with output slot `out` on both backends and compares. */
static void tc_finish(tcase *t, int out, const char *what_op, double tol) {
    char what[160];
    for (int i = 0; i < t->n_in; i++) {
        int64_t n = kiln_slot_numel(&t->p->slots[kiln_plan_find(t->p, t->names[i])]);
        for (int64_t k = 0; k < n; k++) t->data[i][k] = round_16bit(t->data[i][k], g_bf16);
    }
    snprintf(what, sizeof what, "%s%s", g_bf16 ? "bf16 " : "", what_op);
    CHECK_MSG(out >= 0, "%s: building the plan failed: %s", what, kiln_last_error());
    if (out >= 0) kiln_plan_output(t->p, out, "out");
    int rc = kiln_plan_finalize(t->p);
    CHECK_MSG(rc == 0, "%s: finalize: %s", what, kiln_last_error());
    if (rc == 0) {
        int64_t n = kiln_slot_numel(&t->p->slots[out]);
        float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
        for (int64_t i = 0; i < n; i++) got[i] = NAN;  // poison: every element must be written
        const char *names[MAX_IO + 1];
        void *bufs[MAX_IO + 1];
        for (int i = 0; i < t->n_in; i++) names[i] = t->names[i], bufs[i] = t->data[i];
        names[t->n_in] = "out";
        bufs[t->n_in] = want;
        rc = kiln_backend_run_named(g_cpu, t->p, t->n_in + 1, names, bufs);
        CHECK_MSG(rc == 0, "%s: cpu: %s", what, kiln_last_error());
        bufs[t->n_in] = got;
        rc = kiln_backend_run_named(g_gpu, t->p, t->n_in + 1, names, bufs);
        CHECK_MSG(rc == 0, "%s: cuda: %s", what, kiln_last_error());
        double err = test_rel_l2(got, want, (size_t)n);
        CHECK_MSG(err < tol, "%s: relative L2 error %.3g >= %.3g (max abs diff %.3g)", what, err, tol,
                  test_max_abs_diff(got, want, (size_t)n));
        if (g_verbose) printf("  %-44s rel L2 %.2e\n", what, err);
        free(want);
        free(got);
    }
    for (int i = 0; i < t->n_in; i++) free(t->data[i]);
    kiln_plan_free(t->p);
    kiln_weights_free(t->ws);
}

/* ---- single ops ---- */

static void conv_case(int N, int C, int H, int W, int O, int k, int stride, int pad, int pad_end, int bias) {
    tcase t;
    tc_begin(&t);
    char what[128];
    snprintf(what, sizeof what, "conv %dx%dx%dx%d->%d k%d s%d p%d+%d%s", N, C, H, W, O, k, stride, pad, pad_end,
             bias ? " bias" : "");
    float s = 1.0f / sqrtf((float)(C * k * k));
    int x = tc_input(&t, "x", 4, N, C, H, W, 1.0f);
    int w = tc_weight(&t, "w", 4, O, C, k, k, -s, s);
    int b = bias ? tc_weight(&t, "b", 1, O, 0, 0, 0, -0.5f, 0.5f) : -1;
    tc_finish(&t, kiln_plan_conv2d_ex(t.p, x, w, b, stride, pad, pad_end), what, TOL_OP);
}

/* conv (symmetric padding), then optionally + another input of the output's shape: that add
 * fuses into the conv's epilogue as its residual. */
static void conv_res_case(int N, int C, int H, int W, int O, int k, int stride, int pad, int bias, int residual) {
    tcase t;
    tc_begin(&t);
    char what[128];
    snprintf(what, sizeof what, "conv %dx%dx%dx%d->%d k%d s%d p%d%s%s", N, C, H, W, O, k, stride, pad,
             bias ? " bias" : "", residual ? " +res" : "");
    float s = 1.0f / sqrtf((float)(C * k * k));
    int x = tc_input(&t, "x", 4, N, C, H, W, 1.0f);
    int w = tc_weight(&t, "w", 4, O, C, k, k, -s, s);
    int b = bias ? tc_weight(&t, "b", 1, O, 0, 0, 0, -0.5f, 0.5f) : -1;
    int y = kiln_plan_conv2d(t.p, x, w, b, stride, pad);
    if (residual) {
        int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
        y = kiln_plan_add(t.p, y, tc_input(&t, "r", 4, N, O, Ho, Wo, 1.0f));
    }
    tc_finish(&t, y, what, TOL_OP);
}

/* Shapes for the implicit-GEMM kernel (C, O multiples of 8): odd maps, stride 2, K not a multiple
 * of its 32/64-wide slices, O not a multiple of its column tiles, residual on and off. main() runs
 * them once with the default tactics and once with KILN_CUDA_FORCE_IGEMM=1. */
TEST(conv2d_igemm) {
    conv_res_case(2, 24, 7, 5, 40, 3, 1, 1, 1, 0);
    conv_res_case(2, 24, 7, 5, 40, 3, 1, 1, 1, 1);
    conv_res_case(2, 24, 7, 5, 40, 3, 2, 1, 1, 1);
    conv_res_case(1, 8, 9, 9, 16, 3, 1, 1, 0, 1);
    conv_res_case(2, 64, 16, 16, 136, 3, 1, 1, 1, 1);
    conv_res_case(2, 32, 13, 11, 64, 3, 2, 1, 1, 0);
    conv_res_case(1, 16, 6, 7, 24, 5, 1, 2, 1, 1);
    conv_res_case(2, 320, 8, 8, 320, 3, 1, 1, 1, 1);
    conv_res_case(1, 40, 5, 5, 8, 1, 2, 0, 1, 0);
    conv_res_case(3, 48, 19, 17, 72, 3, 1, 1, 1, 1);
}

/* Shapes the cuDNN graph path should handle beyond the ones above: asymmetric padding with a
 * residual-free bias, odd channel counts with a residual, stride 2 with a residual, no bias but a
 * residual (residual-only fused graph), 5x5. Run by default and with KILN_CUDA_FORCE_CUDNN_GRAPH=1. */
TEST(conv2d_graph) {
    conv_case(2, 16, 11, 9, 24, 3, 2, 0, 1, 1);     /* pad_end, stride 2, odd map */
    conv_case(1, 8, 7, 7, 8, 3, 1, 1, 0, 0);        /* no bias, no residual */
    conv_res_case(2, 3, 9, 7, 5, 3, 1, 1, 1, 1);    /* odd channels in and out, residual */
    conv_res_case(1, 16, 9, 9, 32, 3, 1, 1, 0, 1);  /* residual without bias */
    conv_res_case(2, 32, 15, 13, 48, 3, 2, 1, 1, 1);
    conv_res_case(1, 24, 10, 10, 16, 5, 1, 2, 1, 1);
    conv_res_case(2, 320, 16, 16, 320, 3, 1, 1, 1, 1);
}

TEST(conv2d) {
    conv_case(2, 8, 9, 9, 16, 3, 1, 1, 0, 1);
    conv_case(1, 4, 8, 8, 24, 3, 1, 1, 0, 1);     /* 4 latent channels in (U-Net conv_in) */
    conv_case(2, 32, 8, 8, 4, 3, 1, 1, 0, 1);     /* 4 channels out (conv_out) */
    conv_case(2, 16, 16, 16, 16, 3, 2, 1, 0, 1);  /* downsample */
    conv_case(1, 8, 10, 10, 8, 3, 2, 0, 1, 1);    /* VAE asymmetric downsample */
    conv_case(2, 32, 7, 5, 20, 1, 1, 0, 0, 1);    /* 1x1 (GEMM path) */
    conv_case(1, 3, 7, 6, 5, 3, 1, 1, 0, 0);      /* odd channels, no bias */
    conv_case(2, 64, 16, 16, 64, 3, 1, 1, 0, 1);
}

static void linear_case(int B, int L, int K, int N, int bias) {
    tcase t;
    tc_begin(&t);
    char what[128];
    snprintf(what, sizeof what, "linear [%d,%d,%d]->%d%s", B, L, K, N, bias ? " bias" : "");
    float s = 1.0f / sqrtf((float)K);
    int x = tc_input(&t, "x", 3, B, L, K, 0, 1.0f);
    int w = tc_weight(&t, "w", 2, N, K, 0, 0, -s, s);
    int b = bias ? tc_weight(&t, "b", 1, N, 0, 0, 0, -0.5f, 0.5f) : -1;
    tc_finish(&t, kiln_plan_linear(t.p, x, w, b), what, TOL_OP);
}

TEST(linear) {
    linear_case(2, 13, 40, 24, 1);
    linear_case(3, 17, 33, 19, 0);  /* odd K and N */
    linear_case(2, 77, 768, 320, 0);
    linear_case(1, 64, 320, 1280, 1);
}

static void group_norm_case(int ndim, int N, int C, int H, int W, int G, int silu) {
    tcase t;
    tc_begin(&t);
    char what[128];
    snprintf(what, sizeof what, "group_norm %dD [%d,%d,%d,%d] G%d%s", ndim, N, C, H, W, G, silu ? " silu" : "");
    int x = ndim == 4 ? tc_input(&t, "x", 4, N, C, H, W, 2.0f) : tc_input(&t, "x", 3, N, C, H * W, 0, 2.0f);
    /* shift the input so the mean is far from 0: the statistics must not cancel */
    for (int64_t i = 0; i < (int64_t)N * C * H * W; i++) t.data[0][i] += 3.0f;
    int g = tc_weight(&t, "g", 1, C, 0, 0, 0, 0.5f, 1.5f);
    int b = tc_weight(&t, "b", 1, C, 0, 0, 0, -0.5f, 0.5f);
    tc_finish(&t, kiln_plan_group_norm(t.p, x, g, b, G, 1e-5f, silu ? KILN_ACT_SILU : KILN_ACT_NONE), what, TOL_OP);
}

TEST(group_norm) {
    group_norm_case(4, 2, 64, 8, 8, 32, 1);
    group_norm_case(4, 2, 320, 16, 16, 32, 0);
    group_norm_case(4, 1, 40, 5, 7, 8, 1);   /* 5 channels per group: generic kernel */
    group_norm_case(3, 2, 32, 5, 10, 8, 0);  /* [N, C, L] layout */
    group_norm_case(4, 1, 2560, 4, 4, 32, 1);
    group_norm_case(4, 1, 6, 5, 5, 3, 0);    /* C % 8 != 0: scalar apply */
    group_norm_case(4, 2, 320, 64, 64, 32, 1);  /* SD level 0: 256 partial ranges per image */
    group_norm_case(4, 2, 64, 1, 3, 64, 1);     /* 1 channel per group; fewer pixels than cluster blocks */
    group_norm_case(4, 1, 1280, 3, 5, 32, 0);   /* 40 channels per group, odd map */
    group_norm_case(4, 1, 128, 330, 330, 32, 1); /* a block's share exceeds shared memory: three kernels */
}

static void layer_norm_case(int B, int L, int C) {
    tcase t;
    tc_begin(&t);
    char what[128];
    snprintf(what, sizeof what, "layer_norm [%d,%d,%d]", B, L, C);
    int x = tc_input(&t, "x", 3, B, L, C, 0, 2.0f);
    int g = tc_weight(&t, "g", 1, C, 0, 0, 0, 0.5f, 1.5f);
    int b = tc_weight(&t, "b", 1, C, 0, 0, 0, -0.5f, 0.5f);
    tc_finish(&t, kiln_plan_layer_norm(t.p, x, g, b, 1e-5f), what, TOL_OP);
}

TEST(layer_norm) {
    layer_norm_case(2, 77, 768);
    layer_norm_case(3, 5, 33);   /* C % 8 != 0: block-per-row kernel */
    layer_norm_case(2, 64, 1280);
    layer_norm_case(1, 9, 320);
    layer_norm_case(1, 3, 2048);
}

TEST(activations) {
    kiln_activation acts[3] = {KILN_ACT_SILU, KILN_ACT_GELU, KILN_ACT_QUICK_GELU};
    for (int a = 0; a < 3; a++) {
        tcase t;
        tc_begin(&t);
        char what[64];
        snprintf(what, sizeof what, "activation %d [3,7,13]", (int)acts[a]);
        int x = tc_input(&t, "x", 3, 3, 7, 13, 0, 4.0f);
        tc_finish(&t, kiln_plan_activation(t.p, x, acts[a]), what, TOL_OP);
    }
    tcase t;
    tc_begin(&t);
    int x = tc_input(&t, "x", 4, 2, 5, 3, 3, 4.0f);
    tc_finish(&t, kiln_plan_scale(t.p, x, 0.18215f), "scale [2,5,3,3]", TOL_OP);
    if (g_bf16) {  /* bf16 has fp32's exponent range: values past fp16's 65504 stay finite */
        tc_begin(&t);
        x = tc_input(&t, "x", 3, 2, 9, 17, 0, 3.0e5f);
        tc_finish(&t, kiln_plan_scale(t.p, kiln_plan_activation(t.p, x, KILN_ACT_SILU), 0.5f),
                  "silu + scale of values up to 3e5", TOL_OP);
    }
}

TEST(geglu) {
    int shapes[2][3] = {{2, 10, 24}, {1, 7, 5}};
    for (int i = 0; i < 2; i++) {
        tcase t;
        tc_begin(&t);
        char what[64];
        snprintf(what, sizeof what, "geglu [%d,%d,2x%d]", shapes[i][0], shapes[i][1], shapes[i][2]);
        int x = tc_input(&t, "x", 3, shapes[i][0], shapes[i][1], 2 * shapes[i][2], 0, 3.0f);
        tc_finish(&t, kiln_plan_geglu(t.p, x), what, TOL_OP);
    }
}

static void attention_case(int B, int H, int Lq, int Lk, int D, int causal) {
    tcase t;
    tc_begin(&t);
    char what[128];
    snprintf(what, sizeof what, "attention B%d H%d Lq%d Lk%d D%d%s", B, H, Lq, Lk, D, causal ? " causal" : "");
    int q = tc_input(&t, "q", 3, B, Lq, H * D, 0, 2.0f);
    int k = tc_input(&t, "k", 3, B, Lk, H * D, 0, 2.0f);
    int v = tc_input(&t, "v", 3, B, Lk, H * D, 0, 1.0f);
    tc_finish(&t, kiln_plan_attention(t.p, q, k, v, H, causal), what, TOL_ATTN);
}

TEST(attention) {
    attention_case(2, 8, 300, 300, 40, 0);  /* SD1.5 level-0 self-attention head size */
    attention_case(1, 2, 1030, 1030, 40, 0); /* long rows: many kv tiles, a partial last one */
    attention_case(2, 8, 130, 77, 40, 0);   /* cross-attention to 77 tokens */
    attention_case(1, 8, 100, 100, 80, 0);
    attention_case(2, 8, 70, 77, 160, 0);
    attention_case(2, 5, 129, 129, 64, 0);  /* SD2 / SDXL head size */
    attention_case(2, 12, 77, 77, 64, 1);   /* CLIP causal */
    attention_case(1, 1, 100, 100, 512, 0); /* VAE: fallback path */
    attention_case(2, 3, 33, 20, 24, 1);    /* unsupported head size: fallback, causal */
}

TEST(layout_ops) {
    {
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 2, 16, 5, 7, 1.0f);
        tc_finish(&t, kiln_plan_upsample_nearest(t.p, x, 10, 14), "upsample [2,16,5,7]x2", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 1, 3, 4, 3, 1.0f);
        tc_finish(&t, kiln_plan_upsample_nearest(t.p, x, 7, 5), "upsample [1,3,4,3]->7x5", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int a = tc_input(&t, "a", 4, 2, 8, 5, 5, 1.0f), b = tc_input(&t, "b", 4, 2, 16, 5, 5, 1.0f);
        tc_finish(&t, kiln_plan_concat_channels(t.p, a, b), "concat 8+16", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int a = tc_input(&t, "a", 4, 1, 3, 4, 4, 1.0f), b = tc_input(&t, "b", 4, 1, 5, 4, 4, 1.0f);
        tc_finish(&t, kiln_plan_concat_channels(t.p, a, b), "concat 3+5", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 1, 8, 4, 4, 1.0f);
        tc_finish(&t, kiln_plan_slice_channels(t.p, x, 3, 4), "slice 3..7 of 8", TOL_OP);
    }
    {   /* NCHW -> NLC -> linear -> NCHW: the layout ops are free aliases on the GPU */
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 2, 16, 3, 5, 1.0f);
        int w = tc_weight(&t, "w", 2, 12, 16, 0, 0, -0.25f, 0.25f);
        int l = kiln_plan_nchw_to_nlc(t.p, x);
        int y = kiln_plan_linear(t.p, l, w, -1);
        tc_finish(&t, kiln_plan_nlc_to_nchw(t.p, y, 3, 5), "nchw->nlc->linear->nchw", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 2, 16, 3, 5, 1.0f);
        tc_finish(&t, kiln_plan_nchw_to_nlc(t.p, x), "nchw->nlc as output", TOL_OP);
    }
}

TEST(adds) {
    {
        tcase t;
        tc_begin(&t);
        int a = tc_input(&t, "a", 4, 2, 8, 5, 3, 1.0f), b = tc_input(&t, "b", 4, 2, 8, 5, 3, 1.0f);
        tc_finish(&t, kiln_plan_add(t.p, a, b), "add same shape", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int a = tc_input(&t, "a", 4, 2, 8, 4, 3, 1.0f);
        int b = tc_weight(&t, "b", 3, 8, 4, 3, 0, -1.0f, 1.0f);
        tc_finish(&t, kiln_plan_add(t.p, a, b), "add 4-D + trailing [C,H,W] weight", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int a = tc_input(&t, "a", 3, 2, 77, 64, 0, 1.0f);
        int b = tc_weight(&t, "pos", 2, 77, 64, 0, 0, -1.0f, 1.0f);
        tc_finish(&t, kiln_plan_add(t.p, a, b), "add [2,77,64] + [77,64]", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 2, 32, 6, 5, 1.0f), e = tc_input(&t, "e", 2, 2, 32, 0, 0, 1.0f);
        tc_finish(&t, kiln_plan_add_channel(t.p, x, e), "add_channel [2,32,6,5]", TOL_OP);
    }
    {
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 4, 1, 5, 3, 3, 1.0f), e = tc_input(&t, "e", 2, 1, 5, 0, 0, 1.0f);
        tc_finish(&t, kiln_plan_add_channel(t.p, x, e), "add_channel odd C", TOL_OP);
    }
}

TEST(timestep_embed) {
    tcase t;
    tc_begin(&t);
    int ts = tc_input(&t, "t", 1, 3, 0, 0, 0, 1.0f);
    t.data[0][0] = 999.0f, t.data[0][1] = 500.25f, t.data[0][2] = 1.5f;  /* fractional timesteps too */
    tc_finish(&t, kiln_plan_timestep_embed(t.p, ts, 320, 10000.0f), "timestep_embed 320", TOL_OP);
}

/* ---- chains ---- */

TEST(resnet_block) {
    /* GN+SiLU -> conv3x3 (+ time embedding) -> GN+SiLU -> conv3x3, + 1x1 skip conv: the skip
     * add fuses into the second conv's epilogue. */
    tcase t;
    tc_begin(&t);
    int N = 2, C = 64, O = 96, H = 12, W = 10, T = 128;
    int x = tc_input(&t, "x", 4, N, C, H, W, 1.0f);
    int temb = tc_input(&t, "temb", 2, N, T, 0, 0, 1.0f);
    float s1 = 1.0f / sqrtf(9.0f * C), s2 = 1.0f / sqrtf(9.0f * O);
    int h = kiln_plan_group_norm(t.p, x, tc_weight(&t, "n1.g", 1, C, 0, 0, 0, 0.5f, 1.5f),
                                 tc_weight(&t, "n1.b", 1, C, 0, 0, 0, -0.2f, 0.2f), 32, 1e-5f, KILN_ACT_SILU);
    h = kiln_plan_conv2d(t.p, h, tc_weight(&t, "c1.w", 4, O, C, 3, 3, -s1, s1),
                         tc_weight(&t, "c1.b", 1, O, 0, 0, 0, -0.1f, 0.1f), 1, 1);
    int e = kiln_plan_activation(t.p, temb, KILN_ACT_SILU);
    e = kiln_plan_linear(t.p, e, tc_weight(&t, "emb.w", 2, O, T, 0, 0, -0.1f, 0.1f),
                         tc_weight(&t, "emb.b", 1, O, 0, 0, 0, -0.1f, 0.1f));
    h = kiln_plan_add_channel(t.p, h, e);
    h = kiln_plan_group_norm(t.p, h, tc_weight(&t, "n2.g", 1, O, 0, 0, 0, 0.5f, 1.5f),
                             tc_weight(&t, "n2.b", 1, O, 0, 0, 0, -0.2f, 0.2f), 32, 1e-5f, KILN_ACT_SILU);
    h = kiln_plan_conv2d(t.p, h, tc_weight(&t, "c2.w", 4, O, O, 3, 3, -s2, s2),
                         tc_weight(&t, "c2.b", 1, O, 0, 0, 0, -0.1f, 0.1f), 1, 1);
    float s3 = 1.0f / sqrtf((float)C);
    int skip = kiln_plan_conv2d(t.p, x, tc_weight(&t, "skip.w", 4, O, C, 1, 1, -s3, s3),
                                tc_weight(&t, "skip.b", 1, O, 0, 0, 0, -0.1f, 0.1f), 1, 0);
    tc_finish(&t, kiln_plan_add(t.p, skip, h), "resnet block", TOL_CHAIN);
}

TEST(transformer_block) {
    /* SD-style basic transformer block on a [N, C, H, W] map: proj_in, self-attention,
     * cross-attention to a context, GEGLU feed-forward, proj_out, residuals. */
    tcase t;
    tc_begin(&t);
    int N = 2, C = 80, H = 9, W = 11, heads = 2, Lc = 77, Cc = 96, F = 4 * C;
    int x = tc_input(&t, "x", 4, N, C, H, W, 1.0f);
    int ctx = tc_input(&t, "ctx", 3, N, Lc, Cc, 0, 1.0f);
    float sc = 1.0f / sqrtf((float)C);
#define LIN(name, out_f, in_f, bias) \
    tc_weight(&t, name ".w", 2, out_f, in_f, 0, 0, -1.0f / sqrtf((float)(in_f)), 1.0f / sqrtf((float)(in_f))), \
        (bias) ? tc_weight(&t, name ".b", 1, out_f, 0, 0, 0, -0.1f, 0.1f) : -1
#define NORM(name, c) tc_weight(&t, name ".g", 1, c, 0, 0, 0, 0.5f, 1.5f), tc_weight(&t, name ".b", 1, c, 0, 0, 0, -0.1f, 0.1f)
    int h = kiln_plan_group_norm(t.p, x, NORM("gn", C), 16, 1e-6f, KILN_ACT_NONE);
    h = kiln_plan_conv2d(t.p, h, tc_weight(&t, "proj_in.w", 4, C, C, 1, 1, -sc, sc),
                         tc_weight(&t, "proj_in.b", 1, C, 0, 0, 0, -0.1f, 0.1f), 1, 0);
    h = kiln_plan_nchw_to_nlc(t.p, h);
    int n1 = kiln_plan_layer_norm(t.p, h, NORM("ln1", C), 1e-5f);
    int q = kiln_plan_linear(t.p, n1, LIN("q1", C, C, 0));
    int k = kiln_plan_linear(t.p, n1, LIN("k1", C, C, 0));
    int v = kiln_plan_linear(t.p, n1, LIN("v1", C, C, 0));
    int a = kiln_plan_attention(t.p, q, k, v, heads, 0);
    h = kiln_plan_add(t.p, kiln_plan_linear(t.p, a, LIN("o1", C, C, 1)), h);
    int n2 = kiln_plan_layer_norm(t.p, h, NORM("ln2", C), 1e-5f);
    q = kiln_plan_linear(t.p, n2, LIN("q2", C, C, 0));
    k = kiln_plan_linear(t.p, ctx, LIN("k2", C, Cc, 0));
    v = kiln_plan_linear(t.p, ctx, LIN("v2", C, Cc, 0));
    a = kiln_plan_attention(t.p, q, k, v, heads, 0);
    h = kiln_plan_add(t.p, kiln_plan_linear(t.p, a, LIN("o2", C, C, 1)), h);
    int n3 = kiln_plan_layer_norm(t.p, h, NORM("ln3", C), 1e-5f);
    int ff = kiln_plan_geglu(t.p, kiln_plan_linear(t.p, n3, LIN("ff1", 2 * F, C, 1)));
    h = kiln_plan_add(t.p, kiln_plan_linear(t.p, ff, LIN("ff2", C, F, 1)), h);
    h = kiln_plan_nlc_to_nchw(t.p, h, H, W);
    h = kiln_plan_conv2d(t.p, h, tc_weight(&t, "proj_out.w", 4, C, C, 1, 1, -sc, sc),
                         tc_weight(&t, "proj_out.b", 1, C, 0, 0, 0, -0.1f, 0.1f), 1, 0);
    tc_finish(&t, kiln_plan_add(t.p, h, x), "transformer block", TOL_CHAIN);
#undef LIN
#undef NORM
}

TEST(shared_input_linears) {
    /* Linears that read the same input and feed only attention / add_channel run as one GEMM
     * writing column ranges of one buffer. */
    {   /* q/k/v of a self-attention (no bias) */
        tcase t;
        tc_begin(&t);
        int x = tc_input(&t, "x", 3, 2, 37, 64, 0, 1.0f);
        float s = 1.0f / 8.0f;
        int q = kiln_plan_linear(t.p, x, tc_weight(&t, "q.w", 2, 64, 64, 0, 0, -s, s), -1);
        int k = kiln_plan_linear(t.p, x, tc_weight(&t, "k.w", 2, 64, 64, 0, 0, -s, s), -1);
        int v = kiln_plan_linear(t.p, x, tc_weight(&t, "v.w", 2, 64, 64, 0, 0, -s, s), -1);
        tc_finish(&t, kiln_plan_attention(t.p, q, k, v, 4, 0), "fused q/k/v -> attention", TOL_ATTN);
    }
    {   /* time-embedding projections (with bias) read by add_channel; a third linear on the same
         * input feeds an activation, so it must stay outside the group */
        tcase t;
        tc_begin(&t);
        int temb = tc_input(&t, "temb", 2, 2, 48, 0, 0, 1.0f);
        int m = tc_input(&t, "m", 4, 2, 24, 3, 5, 1.0f);
        float s = 1.0f / sqrtf(48.0f);
        int e1 = kiln_plan_linear(t.p, temb, tc_weight(&t, "e1.w", 2, 24, 48, 0, 0, -s, s),
                                  tc_weight(&t, "e1.b", 1, 24, 0, 0, 0, -0.1f, 0.1f));
        int e2 = kiln_plan_linear(t.p, temb, tc_weight(&t, "e2.w", 2, 24, 48, 0, 0, -s, s),
                                  tc_weight(&t, "e2.b", 1, 24, 0, 0, 0, -0.1f, 0.1f));
        int e3 = kiln_plan_linear(t.p, temb, tc_weight(&t, "e3.w", 2, 24, 48, 0, 0, -s, s),
                                  tc_weight(&t, "e3.b", 1, 24, 0, 0, 0, -0.1f, 0.1f));
        int h1 = kiln_plan_add_channel(t.p, m, e1), h2 = kiln_plan_add_channel(t.p, m, e2);
        int h3 = kiln_plan_add_channel(t.p, m, kiln_plan_activation(t.p, e3, KILN_ACT_SILU));
        tc_finish(&t, kiln_plan_add(t.p, kiln_plan_add(t.p, h1, h2), h3), "fused time-embedding linears", TOL_CHAIN);
    }
}

/* One compiled plan run again and again, with another plan run in between (both share the backend's
 * work buffer) and with an input changed or unchanged: the backend skips re-sending an unchanged
 * input only while the work buffer still holds it. */
static kiln_plan *linear_plan(kiln_weights *ws, const char *wname, int M, int K, int N, float *w) {
    for (int i = 0; i < N * K; i++) w[i] = frand(-0.5f, 0.5f);
    int64_t wshape[2] = {N, K}, xshape[2] = {M, K};
    CHECK(kiln_weights_add_owned_f32(ws, wname, 2, wshape, w, "test") == 0);
    kiln_plan *p = kiln_plan_new(ws);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 2, xshape);
    kiln_plan_output(p, kiln_plan_linear(p, x, kiln_plan_weight(p, wname, 2, wshape), -1), "out");
    CHECK(kiln_plan_finalize(p) == 0);
    return p;
}

static void linear_ref(const float *x, const float *w, int M, int K, int N, float *y) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
            y[m * N + n] = (float)acc;
        }
}

TEST(rerun_inputs) {
    enum { M = 24, K = 40, N = 16 };
    kiln_weights *ws = kiln_weights_new();
    float *wa = malloc(sizeof(float) * N * K), *wb = malloc(sizeof(float) * N * K);
    kiln_plan *pa = linear_plan(ws, "wa", M, K, N, wa), *pb = linear_plan(ws, "wb", M, K, N, wb);
    kiln_compiled *ca = NULL, *cb = NULL;
    CHECK(g_gpu->ops->compile(g_gpu, pa, &ca) == 0 && g_gpu->ops->compile(g_gpu, pb, &cb) == 0);
    float x[M * K], xb[M * K], got[M * N], want[M * N];
    for (int i = 0; i < M * K; i++) x[i] = frand(-1, 1), xb[i] = frand(-1, 1);
    for (int round = 0; ca && cb && round < 4; round++) {
        if (round == 3) x[5] += 0.75f;  /* one element changed: must be sent again */
        const void *in[1] = {x};
        void *out[1] = {got};
        CHECK(g_gpu->ops->run(ca, in, out) == 0);
        linear_ref(x, wa, M, K, N, want);
        double err = test_rel_l2(got, want, M * N);
        CHECK_MSG(err < TOL_OP, "rerun round %d: relative L2 %.3g", round, err);
        if (round == 1) {  /* the other plan overwrites the shared work buffer's inputs */
            const void *inb[1] = {xb};
            CHECK(g_gpu->ops->run(cb, inb, out) == 0);
            linear_ref(xb, wb, M, K, N, want);
            CHECK(test_rel_l2(got, want, M * N) < TOL_OP);
        }
    }
    if (ca) g_gpu->ops->free_compiled(ca);
    if (cb) g_gpu->ops->free_compiled(cb);
    kiln_plan_free(pa);
    kiln_plan_free(pb);
    kiln_weights_free(ws);
}

TEST(errors) {
    /* kiln_backend_cuda_create on a device that does not exist fails with a message */
    kiln_backend *be = NULL;
    int rc = kiln_backend_cuda_create(999, &be);
    CHECK(rc < 0 && be == NULL);
    CHECK(strstr(kiln_last_error(), "999") != NULL);
    be = NULL;
    rc = kiln_backend_cuda_create_ex(999, 1, &be);
    CHECK(rc < 0 && be == NULL);
    /* by name: "cuda:bf16" is the bf16 backend */
    CHECK(kiln_backend_create("cuda:bf16", &be) == 0 && be && !strcmp(be->ops->name, "cuda"));
    kiln_backend_destroy(be);
}

/* Every op and op chain on g_gpu against the CPU backend. */
static void run_every_op(void) {
    RUN(conv2d);
    RUN(conv2d_igemm);
    RUN(linear);
    RUN(group_norm);
    RUN(layer_norm);
    RUN(activations);
    RUN(geglu);
    RUN(attention);
    RUN(layout_ops);
    RUN(adds);
    RUN(timestep_embed);
    RUN(resnet_block);
    RUN(transformer_block);
    RUN(shared_input_linears);
}

/* GroupNorm once more in each of its forms, whichever the tuner would pick: three kernels (what GPUs
 * before sm_90 and large maps use), two kernels, one kernel with each cluster size. */
static void run_group_norm_forms(void) {
    static const char *forms[] = {"-1", "-2", "1", "2", "4", "8"};
    for (int i = 0; i < 6; i++) {
        setenv("KILN_CUDA_GN_CLUSTER", forms[i], 1);
        RUN(group_norm);
        RUN(resnet_block);
    }
    unsetenv("KILN_CUDA_GN_CLUSTER");
}

int main(void) {
    /* without a GPU (or a build without CUDA, where the entry point reports so) the test is skipped */
    g_verbose = getenv("KILN_TEST_VERBOSE") != NULL;
    int no_cudnn_given = getenv("KILN_CUDA_NO_CUDNN") != NULL;
    if (kiln_backend_cuda_create_ex(0, 0, &g_gpu) != 0) {
        printf("skipped: %s\n", kiln_last_error());
        return 77;
    }
    if (kiln_backend_cpu_create(0, &g_cpu) != 0) {
        fprintf(stderr, "cpu backend: %s\n", kiln_last_error());
        return 1;
    }
    run_every_op();
    RUN(conv2d_graph);
    RUN(rerun_inputs);
    RUN(errors);
    run_group_norm_forms();
    if (getenv("KILN_CUDA_NO_CUDNN") == NULL && getenv("KILN_CUDA_NO_CUDNN_GRAPH") == NULL) {
        /* the same convolutions with cuDNN's backend (graph) API forced wherever it runs (fused
         * bias/residual graph or plain graph + kernel; KILN_CUDA_DEBUG_CUDNN_GRAPH=1 shows which) */
        kiln_backend_destroy(g_gpu);
        setenv("KILN_CUDA_FORCE_CUDNN_GRAPH", "1", 1);
        if (kiln_backend_cuda_create(0, &g_gpu) == 0) {
            int before = kiln_cuda_cudnn_graph_convs();
            RUN(conv2d);
            RUN(conv2d_igemm);
            int mid = kiln_cuda_cudnn_graph_convs();
            RUN(conv2d_graph);
            int after = kiln_cuda_cudnn_graph_convs();
            RUN(resnet_block);
            if (g_verbose) printf("  cuDNN graph plans: %d convs, %d of them in conv2d_graph\n", after - before, after - mid);
            /* five of conv2d_graph's seven shapes have C % 8 == O % 8 == 0 and symmetric padding:
             * cuDNN 9 runs those; -1: built without cuDNN */
            CHECK_MSG(before < 0 || after - mid >= 4, "only %d of conv2d_graph's convs ran on cuDNN's graph API",
                      after - mid);
        } else {
            g_gpu = NULL;
            CHECK_MSG(0, "cuda backend with KILN_CUDA_FORCE_CUDNN_GRAPH: %s", kiln_last_error());
        }
        unsetenv("KILN_CUDA_FORCE_CUDNN_GRAPH");
        if (g_gpu) kiln_backend_destroy(g_gpu);
        if (kiln_backend_cuda_create(0, &g_gpu) != 0) {
            fprintf(stderr, "cuda backend: %s\n", kiln_last_error());
            return 1;
        }
    }
    if (getenv("KILN_CUDA_NO_CUDNN") == NULL) {
        /* the same convolutions once more with cuDNN off: the im2col + cuBLASLt path */
        kiln_backend_destroy(g_gpu);
        setenv("KILN_CUDA_NO_CUDNN", "1", 1);
        if (kiln_backend_cuda_create_ex(0, 0, &g_gpu) == 0) {
            RUN(conv2d);
            RUN(resnet_block);
        }
    }
    /* and with the implicit-GEMM kernel (opt-in, off by default) forced wherever it applies (C, O
     * multiples of 8) */
    kiln_backend_destroy(g_gpu);
    g_gpu = NULL;
    setenv("KILN_CUDA_FORCE_IGEMM", "1", 1);
    if (kiln_backend_cuda_create_ex(0, 0, &g_gpu) == 0) {
        RUN(conv2d);
        RUN(conv2d_igemm);
        RUN(resnet_block);
    } else {
        CHECK_MSG(0, "cuda backend with KILN_CUDA_FORCE_IGEMM: %s", kiln_last_error());
    }
    /* and the attention tests with cuDNN's fused attention (graph API) used wherever it runs
     * instead of timed against kiln's flash kernel (same tolerances; shapes cuDNN refuses run on
     * kiln's kernels as before; KILN_CUDA_DEBUG_SDPA=1 shows which engine ran each case) */
    if (g_gpu) kiln_backend_destroy(g_gpu);
    g_gpu = NULL;
    unsetenv("KILN_CUDA_FORCE_IGEMM");
    if (!no_cudnn_given) unsetenv("KILN_CUDA_NO_CUDNN");
    setenv("KILN_CUDA_FORCE_CUDNN_SDPA", "1", 1);
    if (kiln_backend_cuda_create_ex(0, 0, &g_gpu) == 0) {
        RUN(attention);
        RUN(transformer_block);
        RUN(shared_input_linears);
    } else {
        CHECK_MSG(0, "cuda backend with KILN_CUDA_FORCE_CUDNN_SDPA: %s", kiln_last_error());
    }
    unsetenv("KILN_CUDA_FORCE_CUDNN_SDPA");
    if (g_gpu) kiln_backend_destroy(g_gpu);
    g_gpu = NULL;
    unsetenv("KILN_CUDA_FORCE_IGEMM");

    /* all of it again in bf16, with the bf16 limits; then the convolutions without cuDNN, and on the
     * implicit-GEMM kernel */
    g_bf16 = 1;
    if (!no_cudnn_given) unsetenv("KILN_CUDA_NO_CUDNN");
    if (kiln_backend_cuda_create_ex(0, 1, &g_gpu) == 0) {
        run_every_op();
        run_group_norm_forms();
        kiln_backend_destroy(g_gpu);
        g_gpu = NULL;
    } else {
        CHECK_MSG(0, "bf16 cuda backend: %s", kiln_last_error());
    }
    if (!no_cudnn_given) {
        setenv("KILN_CUDA_NO_CUDNN", "1", 1);
        if (kiln_backend_cuda_create_ex(0, 1, &g_gpu) == 0) {
            RUN(conv2d);
            RUN(resnet_block);
            kiln_backend_destroy(g_gpu);
            g_gpu = NULL;
        } else {
            CHECK_MSG(0, "bf16 cuda backend without cuDNN: %s", kiln_last_error());
        }
        unsetenv("KILN_CUDA_NO_CUDNN");
    }
    setenv("KILN_CUDA_FORCE_IGEMM", "1", 1);
    if (kiln_backend_cuda_create_ex(0, 1, &g_gpu) == 0) {
        RUN(conv2d);
        RUN(conv2d_igemm);
        RUN(resnet_block);
        kiln_backend_destroy(g_gpu);
        g_gpu = NULL;
    } else {
        CHECK_MSG(0, "bf16 cuda backend with KILN_CUDA_FORCE_IGEMM: %s", kiln_last_error());
    }
    kiln_backend_destroy(g_cpu);
    return test_summary();
}
