/* test_cpu_ops.c — every CPU backend op against a naive double-precision reference on odd
 * shapes, plus multi-op plans (arena reuse), weight refresh and backend selection. */
#include <stdint.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "test.h"

#define TOL 1e-5

/* ---- helpers ---- */

static uint32_t rng_state = 12345u;

static float frand(float lo, float hi) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)((rng_state >> 8) * (1.0 / 16777216.0));
}

static float *rnd(int64_t n, float lo, float hi) {
    float *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = frand(lo, hi);
    return p;
}

static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* Adds a random float32 weight to the store; returns a copy the test keeps for its reference. */
static float *add_weight(kiln_weights *ws, const char *name, int ndim, const int64_t *shape, float lo, float hi) {
    int64_t n = numel(ndim, shape);
    float *data = rnd(n, lo, hi), *copy = malloc((size_t)n * sizeof *copy);
    memcpy(copy, data, (size_t)n * sizeof *copy);
    CHECK(kiln_weights_add_owned_f32(ws, name, ndim, shape, data, "test") == 0);
    return copy;
}

static kiln_backend *cpu(void) {
    static kiln_backend *be;
    if (!be) CHECK(kiln_backend_cpu_create(0, &be) == 0);
    return be;
}

/* Runs plan p (finalizing it) with one input "x" (and optional "y") and one output "out". */
static int run_plan(kiln_plan *p, int n, const char *const *names, void *const *bufs) {
    int rc = kiln_plan_finalize(p);
    if (rc) {
        fprintf(stderr, "finalize: %s\n", kiln_last_error());
        return rc;
    }
    rc = kiln_backend_run_named(cpu(), p, n, names, bufs);
    if (rc) fprintf(stderr, "run: %s\n", kiln_last_error());
    return rc;
}

static void check_close(const char *what, const float *got, const float *want, int64_t n) {
    double err = test_rel_l2(got, want, (size_t)n);
    CHECK_MSG(err < TOL, "%s: relative L2 error %.3g", what, err);
}

/* Reference results are computed in double and stored as float for the comparison. */
static float *ref_alloc(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(float)); }

/* ---- the vectorisable exp behind softmax and the sigmoids ---- */

TEST(fast_expf) {
    double worst = 0;
    for (int i = 0; i <= 2000000; i++) {
        float x = -87.0f + 175.0f * (float)i / 2000000.0f;
        double want = exp((double)x), got = kiln_cpu_expf(x);
        double rel = fabs(got - want) / want;
        if (rel > worst) worst = rel;
    }
    CHECK_MSG(worst < 3.6e-7, "max relative error %.3g (3 ulp = 3.6e-7)", worst);
    CHECK(kiln_cpu_expf(0.0f) == 1.0f);
    CHECK(kiln_cpu_expf(-1000.0f) < 1e-37f && kiln_cpu_expf(-1000.0f) >= 0.0f);
    CHECK(isinf(kiln_cpu_expf(1000.0f)));
}

/* ---- conv2d ---- */

static void ref_conv(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t c, int64_t h,
                     int64_t wd, int64_t o, int64_t kh, int64_t kw, int stride, int pad, int64_t ho, int64_t wo) {
    for (int64_t bi = 0; bi < n; bi++)
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t oy = 0; oy < ho; oy++)
                for (int64_t ox = 0; ox < wo; ox++) {
                    double acc = b ? b[oc] : 0;
                    for (int64_t ci = 0; ci < c; ci++)
                        for (int64_t ky = 0; ky < kh; ky++)
                            for (int64_t kx = 0; kx < kw; kx++) {
                                int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                acc += (double)x[((bi * c + ci) * h + iy) * wd + ix] *
                                       w[((oc * c + ci) * kh + ky) * kw + kx];
                            }
                    y[((bi * o + oc) * ho + oy) * wo + ox] = (float)acc;
                }
}

/* One conv case: input [n,c,h,w], weight [o,c,kh,kw], optional bias. */
static void conv_case(const char *what, int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw,
                      int stride, int pad, int pad_end, int with_bias) {
    kiln_weights *ws = kiln_weights_new();
    int64_t xs[4] = {n, c, h, w}, wsh[4] = {o, c, kh, kw}, bs[1] = {o};
    float *wt = add_weight(ws, "conv.weight", 4, wsh, -0.5f, 0.5f);
    float *bias = with_bias ? add_weight(ws, "conv.bias", 1, bs, -1, 1) : NULL;
    kiln_plan *p = kiln_plan_new(ws);
    kiln_plan_set_label(p, "conv");
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
    int wi = kiln_plan_weight(p, "conv.weight", 4, wsh);
    int bi = with_bias ? kiln_plan_weight(p, "conv.bias", 1, bs) : -1;
    int y = kiln_plan_conv2d_ex(p, x, wi, bi, stride, pad, pad_end);
    kiln_plan_output(p, y, "out");
    CHECK(p->status == 0);
    int64_t ho = (h + 2 * pad + pad_end - kh) / stride + 1, wo = (w + 2 * pad + pad_end - kw) / stride + 1;
    CHECK(p->slots[y].shape[2] == ho && p->slots[y].shape[3] == wo);
    float *xv = rnd(numel(4, xs), -1, 1), *out = ref_alloc(n * o * ho * wo), *want = ref_alloc(n * o * ho * wo);
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    /* pad_end zeros sit past the input's end, where the reference reads zeros anyway */
    ref_conv(xv, wt, bias, want, n, c, h, w, o, kh, kw, stride, pad, ho, wo);
    check_close(what, out, want, n * o * ho * wo);
    free(xv), free(out), free(want), free(wt), free(bias);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(conv2d_3x3_stride2) { conv_case("conv 3x3 s2 p1", 2, 3, 7, 5, 5, 3, 3, 2, 1, 0, 1); }
TEST(conv2d_3x3_stride1) { conv_case("conv 3x3 s1 p1", 1, 4, 6, 9, 7, 3, 3, 1, 1, 0, 1); }
TEST(conv2d_1x1) { conv_case("conv 1x1", 2, 6, 5, 3, 4, 1, 1, 1, 0, 0, 0); }
TEST(conv2d_rect_kernel) { conv_case("conv 3x2 p1", 1, 3, 5, 4, 2, 3, 2, 1, 1, 0, 1); }
TEST(conv2d_pad_end) { conv_case("conv 3x3 s2 pad_end", 1, 3, 7, 6, 4, 3, 3, 2, 0, 1, 1); }
TEST(conv2d_1x1_stride2) { conv_case("conv 1x1 s2", 1, 5, 7, 7, 3, 1, 1, 2, 0, 0, 1); }
/* K * Ho * Wo above the im2col band limit: the output is built in several row bands */
TEST(conv2d_banded) { conv_case("conv banded", 1, 64, 96, 96, 4, 3, 3, 1, 1, 0, 1); }

/* float16 weights are converted at compile time */
TEST(conv2d_f16_weights) {
    kiln_weights *ws = kiln_weights_new();
    int64_t xs[4] = {1, 3, 5, 5}, wsh[4] = {2, 3, 3, 3};
    uint16_t wh[54];
    float wf[54];
    for (int i = 0; i < 54; i++) {
        wh[i] = kiln_f32_to_f16(frand(-1, 1));
        wf[i] = kiln_f16_to_f32(wh[i]);
    }
    CHECK(kiln_weights_add_view(ws, "w16", KILN_F16, 4, wsh, wh, "test") == 0);
    kiln_plan *p = kiln_plan_new(ws);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
    int y = kiln_plan_conv2d(p, x, kiln_plan_weight(p, "w16", 4, wsh), -1, 1, 1);
    kiln_plan_output(p, y, "out");
    float *xv = rnd(75, -1, 1), out[50], want[50];
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    ref_conv(xv, wf, NULL, want, 1, 3, 5, 5, 2, 3, 3, 1, 1, 5, 5);
    check_close("conv f16", out, want, 50);
    free(xv);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

/* ---- linear ---- */

static void linear_case(const char *what, int ndim, const int64_t *xs, int64_t nout, int with_bias) {
    int64_t k = xs[ndim - 1], m = numel(ndim, xs) / k;
    kiln_weights *ws = kiln_weights_new();
    int64_t wsh[2] = {nout, k}, bs[1] = {nout};
    float *wt = add_weight(ws, "fc.weight", 2, wsh, -0.5f, 0.5f);
    float *bias = with_bias ? add_weight(ws, "fc.bias", 1, bs, -1, 1) : NULL;
    kiln_plan *p = kiln_plan_new(ws);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, ndim, xs);
    int y = kiln_plan_linear(p, x, kiln_plan_weight(p, "fc.weight", 2, wsh),
                             with_bias ? kiln_plan_weight(p, "fc.bias", 1, bs) : -1);
    kiln_plan_output(p, y, "out");
    CHECK(p->status == 0 && p->slots[y].ndim == ndim && p->slots[y].shape[ndim - 1] == nout);
    float *xv = rnd(m * k, -1, 1), *out = ref_alloc(m * nout), *want = ref_alloc(m * nout);
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < nout; j++) {
            double acc = bias ? bias[j] : 0;
            for (int64_t t = 0; t < k; t++) acc += (double)xv[i * k + t] * wt[j * k + t];
            want[i * nout + j] = (float)acc;
        }
    check_close(what, out, want, m * nout);
    free(xv), free(out), free(want), free(wt), free(bias);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(linear_3d) {
    int64_t xs[3] = {3, 5, 7};
    linear_case("linear [3,5,7]->4", 3, xs, 4, 1);
}
TEST(linear_2d_nobias) {
    int64_t xs[2] = {9, 33};
    linear_case("linear [9,33]->17", 2, xs, 17, 0);
}

TEST(linear_big) {
    int64_t xs[3] = {3, 100, 300};
    linear_case("linear [3,100,300]->200", 3, xs, 200, 1);
}

/* The tiled sgemm against one plain cblas_sgemm call, for every transpose combination and
 * team sizes that do and do not divide the matrix sides. */
TEST(tiled_sgemm) {
    int m = 257, n = 250, k = 131;
    float *a = rnd((int64_t)m * k, -1, 1), *b = rnd((int64_t)k * n, -1, 1);
    float *c0 = rnd((int64_t)m * n, -1, 1), *c1 = malloc((size_t)m * n * sizeof *c1), *c2 = malloc((size_t)m * n * sizeof *c2);
    int teams[4] = {2, 3, 7, 16};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int t = 0; t < 4; t++) {
                CBLAS_TRANSPOSE tA = ta ? CblasTrans : CblasNoTrans, tB = tb ? CblasTrans : CblasNoTrans;
                int lda = ta ? m : k, ldb = tb ? k : n;
                memcpy(c1, c0, (size_t)m * n * sizeof *c1);
                memcpy(c2, c0, (size_t)m * n * sizeof *c2);
                cblas_sgemm(CblasRowMajor, tA, tB, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c1, n);
                kiln_cpu_sgemm(teams[t], tA, tB, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c2, n);
                CHECK_MSG(test_max_abs_diff(c2, c1, (size_t)m * n) < 1e-4, "trans %d %d, %d threads", ta, tb,
                          teams[t]);
            }
    free(a), free(b), free(c0), free(c1), free(c2);
}

/* ---- norms ---- */

static void group_norm_case(const char *what, kiln_activation act) {
    int64_t xs[4] = {2, 24, 5, 3}, cs[1] = {24};
    int groups = 6;
    float eps = 1e-5f;
    kiln_weights *ws = kiln_weights_new();
    float *gamma = add_weight(ws, "gn.weight", 1, cs, 0.5f, 1.5f), *beta = add_weight(ws, "gn.bias", 1, cs, -1, 1);
    kiln_plan *p = kiln_plan_new(ws);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
    int y = kiln_plan_group_norm(p, x, kiln_plan_weight(p, "gn.weight", 1, cs), kiln_plan_weight(p, "gn.bias", 1, cs),
                                 groups, eps, act);
    kiln_plan_output(p, y, "out");
    int64_t n = numel(4, xs), hw = 15, cg = 4;
    /* a large common offset tests that the variance does not cancel away */
    float *xv = rnd(n, 99, 101), *out = ref_alloc(n), *want = ref_alloc(n);
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    for (int64_t b = 0; b < 2; b++)
        for (int g = 0; g < groups; g++) {
            const float *xg = xv + (b * 24 + g * cg) * hw;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < cg * hw; i++) mean += xg[i];
            mean /= (double)(cg * hw);
            for (int64_t i = 0; i < cg * hw; i++) var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)(cg * hw);
            for (int64_t i = 0; i < cg * hw; i++) {
                int64_t ch = g * cg + i / hw;
                double v = (xg[i] - mean) / sqrt(var + eps) * gamma[ch] + beta[ch];
                if (act == KILN_ACT_SILU) v = v / (1 + exp(-v));
                want[(b * 24 + g * cg) * hw + i] = (float)v;
            }
        }
    check_close(what, out, want, n);
    free(xv), free(out), free(want), free(gamma), free(beta);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(group_norm) { group_norm_case("group norm", KILN_ACT_NONE); }
TEST(group_norm_silu) { group_norm_case("group norm + silu", KILN_ACT_SILU); }

TEST(layer_norm) {
    int64_t xs[3] = {3, 4, 13}, cs[1] = {13};
    float eps = 1e-5f;
    kiln_weights *ws = kiln_weights_new();
    float *gamma = add_weight(ws, "ln.weight", 1, cs, 0.5f, 1.5f), *beta = add_weight(ws, "ln.bias", 1, cs, -1, 1);
    kiln_plan *p = kiln_plan_new(ws);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 3, xs);
    int y = kiln_plan_layer_norm(p, x, kiln_plan_weight(p, "ln.weight", 1, cs), kiln_plan_weight(p, "ln.bias", 1, cs),
                                 eps);
    kiln_plan_output(p, y, "out");
    float *xv = rnd(156, -3, 5), out[156], want[156];
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    for (int r = 0; r < 12; r++) {
        double mean = 0, var = 0;
        for (int i = 0; i < 13; i++) mean += xv[r * 13 + i];
        mean /= 13;
        for (int i = 0; i < 13; i++) var += (xv[r * 13 + i] - mean) * (xv[r * 13 + i] - mean);
        var /= 13;
        for (int i = 0; i < 13; i++)
            want[r * 13 + i] = (float)((xv[r * 13 + i] - mean) / sqrt(var + eps) * gamma[i] + beta[i]);
    }
    check_close("layer norm", out, want, 156);
    free(xv), free(gamma), free(beta);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

/* ---- pointwise ---- */

static double ref_act(double x, kiln_activation act) {
    switch (act) {
    case KILN_ACT_SILU: return x / (1 + exp(-x));
    case KILN_ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case KILN_ACT_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    default: return x;
    }
}

TEST(activations) {
    kiln_activation acts[3] = {KILN_ACT_SILU, KILN_ACT_GELU, KILN_ACT_QUICK_GELU};
    int64_t xs[2] = {7, 143};
    for (int a = 0; a < 3; a++) {
        kiln_plan *p = kiln_plan_new(NULL);
        int y = kiln_plan_activation(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 2, xs), acts[a]);
        kiln_plan_output(p, y, "out");
        float *xv = rnd(1001, -12, 12), out[1001], want[1001];
        xv[0] = -200, xv[1] = 200, xv[2] = 0; /* saturation must not give NaN */
        const char *names[2] = {"x", "out"};
        void *bufs[2] = {xv, out};
        CHECK(run_plan(p, 2, names, bufs) == 0);
        for (int i = 0; i < 1001; i++) want[i] = (float)ref_act(xv[i], acts[a]);
        check_close("activation", out, want, 1001);
        CHECK(out[0] == 0.0f && out[1] == 200.0f && out[2] == 0.0f);
        free(xv);
        kiln_plan_free(p);
    }
}

TEST(geglu) {
    int64_t xs[3] = {2, 3, 10};
    kiln_plan *p = kiln_plan_new(NULL);
    int y = kiln_plan_geglu(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 3, xs));
    kiln_plan_output(p, y, "out");
    CHECK(p->slots[y].shape[2] == 5);
    float *xv = rnd(60, -4, 4), out[30], want[30];
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    for (int r = 0; r < 6; r++)
        for (int j = 0; j < 5; j++) want[r * 5 + j] = (float)(xv[r * 10 + j] * ref_act(xv[r * 10 + 5 + j], KILN_ACT_GELU));
    check_close("geglu", out, want, 30);
    free(xv);
    kiln_plan_free(p);
}

TEST(add_broadcast_channel_scale) {
    int64_t as[3] = {2, 3, 4}, bs[1] = {4}, b2[2] = {1, 4}, xs[4] = {2, 3, 4, 5}, es[2] = {2, 3};
    kiln_plan *p = kiln_plan_new(NULL);
    int a = kiln_plan_input(p, "a", KILN_SLOT_F32, 3, as), b = kiln_plan_input(p, "b", KILN_SLOT_F32, 1, bs);
    int c = kiln_plan_input(p, "c", KILN_SLOT_F32, 3, as), d = kiln_plan_input(p, "d", KILN_SLOT_F32, 2, b2);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs), e = kiln_plan_input(p, "e", KILN_SLOT_F32, 2, es);
    kiln_plan_output(p, kiln_plan_add(p, a, b), "ab");
    kiln_plan_output(p, kiln_plan_add(p, a, c), "ac");
    kiln_plan_output(p, kiln_plan_add(p, a, d), "ad");
    kiln_plan_output(p, kiln_plan_add_channel(p, x, e), "xe");
    kiln_plan_output(p, kiln_plan_scale(p, x, -0.37f), "xs");
    float *av = rnd(24, -1, 1), *bv = rnd(4, -1, 1), *cv = rnd(24, -1, 1), *dv = rnd(4, -1, 1);
    float *xv = rnd(120, -1, 1), *ev = rnd(6, -1, 1);
    float ab[24], ac[24], ad[24], xe[120], xsc[120], w1[24], w2[24], w3[24], w4[120], w5[120];
    const char *names[11] = {"a", "b", "c", "d", "x", "e", "ab", "ac", "ad", "xe", "xs"};
    void *bufs[11] = {av, bv, cv, dv, xv, ev, ab, ac, ad, xe, xsc};
    CHECK(run_plan(p, 11, names, bufs) == 0);
    for (int i = 0; i < 24; i++) {
        w1[i] = av[i] + bv[i % 4];
        w2[i] = av[i] + cv[i];
        w3[i] = av[i] + dv[i % 4];
    }
    for (int i = 0; i < 120; i++) {
        w4[i] = xv[i] + ev[i / 20];
        w5[i] = (float)(xv[i] * (double)-0.37f);
    }
    check_close("add broadcast", ab, w1, 24);
    check_close("add", ac, w2, 24);
    check_close("add [1,4]", ad, w3, 24);
    check_close("add_channel", xe, w4, 120);
    check_close("scale", xsc, w5, 120);
    free(av), free(bv), free(cv), free(dv), free(xv), free(ev);
    kiln_plan_free(p);
}

/* Against the fixture: the UNet's sinusoidal embedding of t = [999, 421], width 32. */
TEST(timestep_embed_fixture) {
    kiln_st_file *f = NULL;
    if (kiln_st_open(test_fixture("tiny-sd15/unet.safetensors"), &f) != 0) {
        fprintf(stderr, "fixture: %s\n", kiln_last_error());
        CHECK(0);
        return;
    }
    const kiln_st_tensor *t = kiln_st_find(f, "batch2_t"), *ref = kiln_st_find(f, "batch2_debug_time_proj");
    CHECK(t && ref);
    if (!t || !ref) return;
    float tv[2], want[64], out[64];
    kiln_st_to_f32(t, tv);
    kiln_st_to_f32(ref, want);
    int64_t ts[1] = {2};
    kiln_plan *p = kiln_plan_new(NULL);
    int y = kiln_plan_timestep_embed(p, kiln_plan_input(p, "t", KILN_SLOT_F32, 1, ts), 32, 10000.0f);
    kiln_plan_output(p, y, "out");
    const char *names[2] = {"t", "out"};
    void *bufs[2] = {tv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    /* manifest: unet batch2 tolerance atol 3e-5 */
    double d = test_max_abs_diff(out, want, 64);
    CHECK_MSG(d <= 3e-5, "time_proj max abs diff %.3g", d);
    if (getenv("KILN_TEST_VERBOSE")) printf("time_proj max abs diff %.3g\n", d);
    kiln_plan_free(p);
    kiln_st_close(f);
}

/* ---- attention ---- */

static void attention_case(const char *what, int64_t b, int64_t lq, int64_t lk, int heads, int64_t d, int causal) {
    int64_t e = heads * d, qs[3] = {b, lq, e}, ks[3] = {b, lk, e};
    kiln_plan *p = kiln_plan_new(NULL);
    int q = kiln_plan_input(p, "q", KILN_SLOT_F32, 3, qs), k = kiln_plan_input(p, "k", KILN_SLOT_F32, 3, ks);
    int v = kiln_plan_input(p, "v", KILN_SLOT_F32, 3, ks);
    int y = kiln_plan_attention(p, q, k, v, heads, causal);
    kiln_plan_output(p, y, "out");
    CHECK(p->status == 0);
    float *qv = rnd(b * lq * e, -2, 2), *kv = rnd(b * lk * e, -2, 2), *vv = rnd(b * lk * e, -1, 1);
    float *out = ref_alloc(b * lq * e), *want = ref_alloc(b * lq * e);
    double *s = malloc((size_t)lk * sizeof *s);
    const char *names[4] = {"q", "k", "v", "out"};
    void *bufs[4] = {qv, kv, vv, out};
    CHECK(run_plan(p, 4, names, bufs) == 0);
    double scale = 1.0 / sqrt((double)d);
    for (int64_t bi = 0; bi < b; bi++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < lq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < lk; j++) {
                    double acc = 0;
                    for (int64_t t = 0; t < d; t++)
                        acc += (double)qv[(bi * lq + i) * e + h * d + t] * kv[(bi * lk + j) * e + h * d + t];
                    s[j] = (causal && j > i) ? -INFINITY : acc * scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t j = 0; j < lk; j++) sum += (s[j] = exp(s[j] - mx));
                for (int64_t t = 0; t < d; t++) {
                    double acc = 0;
                    for (int64_t j = 0; j < lk; j++) acc += s[j] / sum * vv[(bi * lk + j) * e + h * d + t];
                    want[(bi * lq + i) * e + h * d + t] = (float)acc;
                }
            }
    check_close(what, out, want, b * lq * e);
    free(qv), free(kv), free(vv), free(out), free(want), free(s);
    kiln_plan_free(p);
}

TEST(attention) { attention_case("attention 3x5 Lq7 Lk11", 2, 7, 11, 3, 5, 0); }
TEST(attention_causal) { attention_case("causal attention Lq7 Lk11", 2, 7, 11, 3, 5, 1); }
TEST(attention_causal_square) { attention_case("causal attention 9x9", 1, 9, 9, 2, 8, 1); }
TEST(attention_single_head) { attention_case("attention 1 head", 1, 16, 16, 1, 32, 0); }
/* Lq * Lk above the score band limit: the queries are processed in several bands */
TEST(attention_banded_causal) { attention_case("attention banded causal", 1, 2100, 2000, 1, 4, 1); }

/* ---- layout ---- */

static void upsample_case(int64_t h, int64_t w, int oh, int ow) {
    int64_t xs[4] = {2, 3, h, w};
    kiln_plan *p = kiln_plan_new(NULL);
    int y = kiln_plan_upsample_nearest(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs), oh, ow);
    kiln_plan_output(p, y, "out");
    float *xv = rnd(6 * h * w, -1, 1), *out = ref_alloc(6 * oh * ow), *want = ref_alloc(6 * oh * ow);
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    for (int64_t pl = 0; pl < 6; pl++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++)
                want[(pl * oh + i) * ow + j] = xv[(pl * h + (int64_t)floor((double)i * h / oh)) * w +
                                                  (int64_t)floor((double)j * w / ow)];
    CHECK(test_max_abs_diff(out, want, (size_t)(6 * oh * ow)) == 0);
    free(xv), free(out), free(want);
    kiln_plan_free(p);
}

TEST(upsample_nearest) {
    upsample_case(3, 5, 6, 10);
    upsample_case(4, 4, 7, 5);
    upsample_case(5, 3, 2, 9);
}

TEST(concat_slice_transpose) {
    int64_t as[4] = {2, 3, 4, 5}, bs[4] = {2, 2, 4, 5};
    kiln_plan *p = kiln_plan_new(NULL);
    int a = kiln_plan_input(p, "a", KILN_SLOT_F32, 4, as), b = kiln_plan_input(p, "b", KILN_SLOT_F32, 4, bs);
    int cat = kiln_plan_concat_channels(p, a, b);
    int nlc = kiln_plan_nchw_to_nlc(p, cat);
    int back = kiln_plan_nlc_to_nchw(p, nlc, 4, 5);
    int sl = kiln_plan_slice_channels(p, back, 2, 2);
    kiln_plan_output(p, cat, "cat");
    kiln_plan_output(p, nlc, "nlc");
    kiln_plan_output(p, sl, "slice");
    CHECK(p->slots[nlc].ndim == 3 && p->slots[nlc].shape[1] == 20 && p->slots[nlc].shape[2] == 5);
    float *av = rnd(120, -1, 1), *bv = rnd(80, -1, 1), cv[200], nv[200], sv[80], wc[200], wn[200], wsl[80];
    const char *names[5] = {"a", "b", "cat", "nlc", "slice"};
    void *bufs[5] = {av, bv, cv, nv, sv};
    CHECK(run_plan(p, 5, names, bufs) == 0);
    for (int n = 0; n < 2; n++)
        for (int c = 0; c < 5; c++)
            for (int i = 0; i < 20; i++) {
                float v = c < 3 ? av[(n * 3 + c) * 20 + i] : bv[(n * 2 + c - 3) * 20 + i];
                wc[(n * 5 + c) * 20 + i] = v;
                wn[(n * 20 + i) * 5 + c] = v;
                if (c >= 2 && c < 4) wsl[(n * 2 + c - 2) * 20 + i] = v;
            }
    CHECK(test_max_abs_diff(cv, wc, 200) == 0);
    CHECK(test_max_abs_diff(nv, wn, 200) == 0);
    CHECK(test_max_abs_diff(sv, wsl, 80) == 0);
    free(av), free(bv);
    kiln_plan_free(p);
}

/* A transpose bigger than one 32x32 tile in both directions, with ragged edges. */
TEST(transpose_tiles) {
    int64_t xs[4] = {1, 37, 9, 7};
    kiln_plan *p = kiln_plan_new(NULL);
    int y = kiln_plan_nchw_to_nlc(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs));
    kiln_plan_output(p, y, "out");
    float *xv = rnd(37 * 63, -1, 1), out[37 * 63], want[37 * 63];
    const char *names[2] = {"x", "out"};
    void *bufs[2] = {xv, out};
    CHECK(run_plan(p, 2, names, bufs) == 0);
    for (int c = 0; c < 37; c++)
        for (int l = 0; l < 63; l++) want[l * 37 + c] = xv[c * 63 + l];
    CHECK(test_max_abs_diff(out, want, 37 * 63) == 0);
    free(xv);
    kiln_plan_free(p);
}

/* ---- whole plans ---- */

/* A resnet-like block: the arena reuses memory between ops, and results must not change. */
TEST(resnet_block_chain) {
    int64_t xs[4] = {1, 8, 6, 5}, ws3[4] = {8, 8, 3, 3}, cs[1] = {8}, es[2] = {1, 8};
    kiln_weights *ws = kiln_weights_new();
    float *g1 = add_weight(ws, "n1.w", 1, cs, 0.5f, 1.5f), *b1 = add_weight(ws, "n1.b", 1, cs, -1, 1);
    float *c1 = add_weight(ws, "c1.w", 4, ws3, -0.3f, 0.3f), *c1b = add_weight(ws, "c1.b", 1, cs, -1, 1);
    float *g2 = add_weight(ws, "n2.w", 1, cs, 0.5f, 1.5f), *b2 = add_weight(ws, "n2.b", 1, cs, -1, 1);
    float *c2 = add_weight(ws, "c2.w", 4, ws3, -0.3f, 0.3f);
    kiln_plan *p = kiln_plan_new(ws);
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs), e = kiln_plan_input(p, "emb", KILN_SLOT_F32, 2, es);
    int h = kiln_plan_group_norm(p, x, kiln_plan_weight(p, "n1.w", 1, cs), kiln_plan_weight(p, "n1.b", 1, cs), 2,
                                 1e-5f, KILN_ACT_SILU);
    h = kiln_plan_conv2d(p, h, kiln_plan_weight(p, "c1.w", 4, ws3), kiln_plan_weight(p, "c1.b", 1, cs), 1, 1);
    h = kiln_plan_add_channel(p, h, e);
    int mid = h;
    h = kiln_plan_group_norm(p, h, kiln_plan_weight(p, "n2.w", 1, cs), kiln_plan_weight(p, "n2.b", 1, cs), 4, 1e-6f,
                             KILN_ACT_SILU);
    h = kiln_plan_conv2d(p, h, kiln_plan_weight(p, "c2.w", 4, ws3), -1, 1, 1);
    h = kiln_plan_add(p, x, h);
    kiln_plan_output(p, mid, "mid");
    kiln_plan_output(p, h, "out");
    float *xv = rnd(240, -2, 2), *ev = rnd(8, -1, 1), mid_out[240], out[240];
    const char *names[4] = {"x", "emb", "mid", "out"};
    void *bufs[4] = {xv, ev, mid_out, out};
    CHECK(run_plan(p, 4, names, bufs) == 0);

    /* the same computation op by op, each in its own buffer */
    float t1[240], t2[240], t3[240], want[240];
    const float *gs[2] = {g1, g2}, *bs[2] = {b1, b2};
    int groups[2] = {2, 4};
    double eps[2] = {1e-5f, 1e-6f};
    for (int stage = 0; stage < 2; stage++) {
        const float *src = stage ? t2 : xv;
        int gcount = groups[stage], cg = 8 / gcount;
        for (int g = 0; g < gcount; g++) {
            double mean = 0, var = 0;
            for (int i = 0; i < cg * 30; i++) mean += src[g * cg * 30 + i];
            mean /= cg * 30;
            for (int i = 0; i < cg * 30; i++) var += pow(src[g * cg * 30 + i] - mean, 2);
            var /= cg * 30;
            for (int i = 0; i < cg * 30; i++) {
                int ch = g * cg + i / 30;
                double v = (src[g * cg * 30 + i] - mean) / sqrt(var + eps[stage]) * gs[stage][ch] + bs[stage][ch];
                t1[g * cg * 30 + i] = (float)(v / (1 + exp(-v)));
            }
        }
        if (stage == 0) {
            ref_conv(t1, c1, c1b, t2, 1, 8, 6, 5, 8, 3, 3, 1, 1, 6, 5);
            for (int i = 0; i < 240; i++) t2[i] += ev[i / 30];
        } else {
            ref_conv(t1, c2, NULL, t3, 1, 8, 6, 5, 8, 3, 3, 1, 1, 6, 5);
            for (int i = 0; i < 240; i++) want[i] = xv[i] + t3[i];
        }
    }
    check_close("resnet mid", mid_out, t2, 240);
    check_close("resnet out", out, want, 240);
    CHECK(p->arena_bytes > 0);
    free(xv), free(ev), free(g1), free(b1), free(c1), free(c1b), free(g2), free(b2), free(c2);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

/* Replacing a weight in the store (LoRA merge) bumps its version; the next run sees it. */
TEST(weight_refresh) {
    int64_t xs[2] = {2, 3}, wsh[2] = {2, 3};
    kiln_weights *ws = kiln_weights_new();
    float *w0 = malloc(6 * sizeof *w0);
    for (int i = 0; i < 6; i++) w0[i] = (float)(i == 0 || i == 4); /* picks x0, x1 */
    CHECK(kiln_weights_add_owned_f32(ws, "w", 2, wsh, w0, "test") == 0);
    kiln_plan *p = kiln_plan_new(ws);
    int y = kiln_plan_linear(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 2, xs), kiln_plan_weight(p, "w", 2, wsh), -1);
    kiln_plan_output(p, y, "out");
    CHECK(kiln_plan_finalize(p) == 0);
    kiln_backend *be = cpu();
    kiln_compiled *c = NULL;
    CHECK(be->ops->compile(be, p, &c) == 0);
    float xv[6] = {1, 2, 3, 4, 5, 6}, out[4];
    const void *in[1] = {xv};
    void *outs[1] = {out};
    CHECK(be->ops->run(c, in, outs) == 0);
    CHECK(out[0] == 1 && out[1] == 2 && out[2] == 4 && out[3] == 5);
    float *w1 = malloc(6 * sizeof *w1);
    for (int i = 0; i < 6; i++) w1[i] = (float)(i == 2 || i == 3); /* picks x2, x0 */
    CHECK(kiln_weights_add_owned_f32(ws, "w", 2, wsh, w1, "test") == 0);
    CHECK(be->ops->run(c, in, outs) == 0);
    CHECK(out[0] == 3 && out[1] == 1 && out[2] == 6 && out[3] == 4);
    be->ops->free_compiled(c);
    kiln_plan_free(p);
    kiln_weights_free(ws);
}

TEST(run_named_errors) {
    int64_t xs[1] = {4};
    kiln_plan *p = kiln_plan_new(NULL);
    kiln_plan_output(p, kiln_plan_scale(p, kiln_plan_input(p, "x", KILN_SLOT_F32, 1, xs), 2), "out");
    CHECK(kiln_plan_finalize(p) == 0);
    float xv[4] = {1, 2, 3, 4}, out[4];
    const char *bad[2] = {"x", "nope"};
    void *bufs[2] = {xv, out};
    CHECK(kiln_backend_run_named(cpu(), p, 2, bad, bufs) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "nope") != NULL);
    const char *only_x[1] = {"x"};
    CHECK(kiln_backend_run_named(cpu(), p, 1, only_x, bufs) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "output out") != NULL);
    const char *names[2] = {"out", "x"}; /* any order */
    void *bufs2[2] = {out, xv};
    CHECK(kiln_backend_run_named(cpu(), p, 2, names, bufs2) == 0);
    CHECK(out[3] == 8);
    kiln_plan_free(p);
}

TEST(backend_by_name) {
    kiln_backend *be = NULL;
    CHECK(kiln_backend_create("cpu", &be) == 0 && be && !strcmp(be->ops->name, "cpu"));
    kiln_backend_destroy(be);
    kiln_backend_destroy(NULL);
    be = NULL;
    CHECK(kiln_backend_create("tpu", &be) == KILN_EINVAL && strstr(kiln_last_error(), "tpu"));
#ifndef KILN_HAVE_CUDA
    CHECK(kiln_backend_create("cuda", &be) == KILN_EUNSUPPORTED);
    CHECK(!strcmp(kiln_last_error(), "kiln was built without the CUDA backend"));
#endif
    CHECK(be == NULL);
}

int main(void) {
    RUN(fast_expf);
    RUN(conv2d_3x3_stride2);
    RUN(conv2d_3x3_stride1);
    RUN(conv2d_1x1);
    RUN(conv2d_rect_kernel);
    RUN(conv2d_pad_end);
    RUN(conv2d_1x1_stride2);
    RUN(conv2d_banded);
    RUN(conv2d_f16_weights);
    RUN(linear_3d);
    RUN(linear_2d_nobias);
    RUN(linear_big);
    RUN(tiled_sgemm);
    RUN(group_norm);
    RUN(group_norm_silu);
    RUN(layer_norm);
    RUN(activations);
    RUN(geglu);
    RUN(add_broadcast_channel_scale);
    RUN(timestep_embed_fixture);
    RUN(attention);
    RUN(attention_causal);
    RUN(attention_causal_square);
    RUN(attention_single_head);
    RUN(attention_banded_causal);
    RUN(upsample_nearest);
    RUN(concat_slice_transpose);
    RUN(transpose_tiles);
    RUN(resnet_block_chain);
    RUN(weight_refresh);
    RUN(run_named_errors);
    RUN(backend_by_name);
    kiln_backend_destroy(cpu());
    return test_summary();
}
