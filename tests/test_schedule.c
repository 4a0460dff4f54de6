/* test_schedule.c — the noise schedule (alphas_cumprod, sigmas, sigma <-> t) and every A1111
 * scheduler against schedule.safetensors, the txt2img fixtures' sigma lists, and lists
 * computed by A1111's scheduler code on PyTorch/numpy/scipy. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "kiln.h"
#include "sample/schedule.h"
#include "sample/schedulers.h"
#include "test.h"

/* manifest.json cases.schedule.tolerance */
#define SCHED_ATOL 1e-6
#define SCHED_RTOL 1e-6

static kiln_schedule model;

static int close_enough(double got, double want) { return fabs(got - want) <= SCHED_ATOL + SCHED_RTOL * fabs(want); }

/* Reads tensor `name` of a fixture file as float32 (malloc'ed); *n gets its length. */
static float *read_tensor(const char *file, const char *name, int64_t *n) {
    kiln_st_file *f = NULL;
    if (kiln_st_open(test_fixture(file), &f) != 0) {
        CHECK_MSG(0, "cannot open %s: %s", file, kiln_last_error());
        return NULL;
    }
    const kiln_st_tensor *t = kiln_st_find(f, name);
    CHECK_MSG(t != NULL, "%s: no tensor %s", file, name);
    float *v = NULL;
    if (t) {
        *n = kiln_st_numel(t);
        v = malloc((size_t)*n * sizeof *v);
        if (v) kiln_st_to_f32(t, v);
    }
    kiln_st_close(f);
    return v;
}

static void check_list(const char *what, const float *got, int n_got, const float *want, int n_want) {
    CHECK_MSG(n_got == n_want, "%s: %d values, want %d", what, n_got, n_want);
    for (int i = 0; i < n_got && i < n_want; i++)
        CHECK_MSG(close_enough(got[i], want[i]), "%s[%d] = %.9g, want %.9g", what, i, got[i], want[i]);
}

TEST(alphas_cumprod_and_sigmas) {
    int64_t n = 0;
    float *ac = read_tensor("tiny-sd15/schedule.safetensors", "alphas_cumprod", &n);
    CHECK(model.n_timesteps == 1000 && n == 1000);
    if (ac)
        for (int i = 0; i < 1000; i++) CHECK_MSG(close_enough(model.alphas_cumprod[i], ac[i]), "alphas_cumprod[%d]", i);
    free(ac);

    /* The float64 cumprod, before the cast. */
    kiln_st_file *f = NULL;
    if (kiln_st_open(test_fixture("tiny-sd15/schedule.safetensors"), &f) == 0) {
        const kiln_st_tensor *t = kiln_st_find(f, "alphas_cumprod_f64");
        CHECK(t && t->dtype == KILN_F64 && kiln_st_numel(t) == 1000);
        if (t && t->dtype == KILN_F64) {
            double worst = 0;
            for (int i = 0; i < 1000; i++) {
                double want;
                memcpy(&want, (const char *)t->data + 8 * i, 8);
                double rel = fabs(model.alphas_cumprod_f64[i] - want) / want;
                if (rel > worst) worst = rel;
            }
            CHECK_MSG(worst < 1e-13, "alphas_cumprod_f64 relative error %g", worst);
        }
        kiln_st_close(f);
    }

    float *sig = read_tensor("tiny-sd15/schedule.safetensors", "sigmas", &n);
    if (sig) check_list("sigmas", model.sigmas, 1000, sig, (int)n);
    free(sig);
    float *ls = read_tensor("tiny-sd15/schedule.safetensors", "log_sigmas", &n);
    if (ls) check_list("log_sigmas", model.log_sigmas, 1000, ls, (int)n);
    free(ls);
    /* README: sigmas[0] = 0.0291675, sigmas[999] = 14.614642. */
    CHECK_NEAR(model.sigma_min, 0.029167532920837402, 1e-9);
    CHECK_NEAR(model.sigma_max, 14.614642143249512, 1e-6);
}

TEST(sigma_t_probes) {
    int64_t n1 = 0, n2 = 0;
    float *ps = read_tensor("tiny-sd15/schedule.safetensors", "sigma_to_t_probe_sigma", &n1);
    float *pt = read_tensor("tiny-sd15/schedule.safetensors", "sigma_to_t_probe_t", &n2);
    CHECK(n1 == n2 && n1 > 0);
    if (ps && pt)
        for (int i = 0; i < n1; i++) {
            float t = kiln_sigma_to_t(&model, ps[i]);
            CHECK_MSG(close_enough(t, pt[i]), "sigma_to_t(%.9g) = %.9g, want %.9g", ps[i], t, pt[i]);
        }
    free(ps);
    free(pt);
    ps = read_tensor("tiny-sd15/schedule.safetensors", "t_to_sigma_probe_sigma", &n1);
    pt = read_tensor("tiny-sd15/schedule.safetensors", "t_to_sigma_probe_t", &n2);
    CHECK(n1 == n2 && n1 > 0);
    if (ps && pt)
        for (int i = 0; i < n1; i++) {
            float s = kiln_t_to_sigma(&model, pt[i]);
            CHECK_MSG(close_enough(s, ps[i]), "t_to_sigma(%.9g) = %.9g, want %.9g", pt[i], s, ps[i]);
        }
    free(ps);
    free(pt);
    /* Round trips on the table and clamping at both ends. */
    CHECK_NEAR(kiln_sigma_to_t(&model, model.sigmas[421]), 421.0, 1e-3);
    CHECK(kiln_sigma_to_t(&model, 1e-4f) == 0.0f);
    CHECK(kiln_sigma_to_t(&model, 100.0f) == 999.0f);
    CHECK_NEAR(kiln_t_to_sigma(&model, 0.0f), model.sigmas[0], 1e-7);
    CHECK(kiln_t_to_sigma(&model, 2000.0f) == kiln_t_to_sigma(&model, 999.0f));
}

static void check_fixture_list(kiln_scheduler id, int steps, const char *file, const char *tensor) {
    int64_t n = 0;
    float *want = read_tensor(file, tensor, &n);
    float *got = NULL;
    int ng = 0;
    CHECK(kiln_scheduler_sigmas(id, &model, steps, NULL, &got, &ng) == 0);
    char what[160];
    snprintf(what, sizeof what, "%s %s (%d steps)", file, tensor, steps);
    if (want && got) check_list(what, got, ng, want, (int)n);
    free(want);
    free(got);
}

TEST(uniform_and_karras_fixture_lists) {
    static const int ns[] = {5, 6, 8, 10, 20};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        char name[64];
        snprintf(name, sizeof name, "get_sigmas_uniform_%d", ns[k]);
        check_fixture_list(KILN_SCHED_AUTOMATIC, ns[k], "tiny-sd15/schedule.safetensors", name);
        check_fixture_list(KILN_SCHED_UNIFORM, ns[k], "tiny-sd15/schedule.safetensors", name);
        snprintf(name, sizeof name, "get_sigmas_karras_%d", ns[k]);
        check_fixture_list(KILN_SCHED_KARRAS, ns[k], "tiny-sd15/schedule.safetensors", name);
    }
}

TEST(txt2img_fixture_lists) {
    /* Euler, Euler a, Heun: Automatic = the model's uniform list; the Karras samplers. */
    check_fixture_list(KILN_SCHED_AUTOMATIC, 8, "tiny-sd15/txt2img_euler_a_8.safetensors", "sigmas");
    check_fixture_list(KILN_SCHED_AUTOMATIC, 10, "tiny-sd15/txt2img_euler_10.safetensors", "sigmas");
    check_fixture_list(KILN_SCHED_AUTOMATIC, 5, "tiny-sd15/txt2img_heun_5.safetensors", "sigmas");
    check_fixture_list(KILN_SCHED_KARRAS, 6, "tiny-sd15/txt2img_dpmpp_2m_karras_6.safetensors", "sigmas");
    check_fixture_list(KILN_SCHED_KARRAS, 6, "tiny-sd15/txt2img_dpmpp_sde_karras_6.safetensors", "sigmas");
    check_fixture_list(KILN_SCHED_AUTOMATIC, 6, "tiny-sd15/txt2img_lora_euler_a_6.safetensors", "sigmas");
    check_fixture_list(KILN_SCHED_AUTOMATIC, 8, "tiny-sd15/txt2img_ti_euler_8.safetensors", "sigmas");
    /* img2img / inpaint: the full steps + 1 list before slicing; hires: 9-step schedule. */
    check_fixture_list(KILN_SCHED_AUTOMATIC, 10, "tiny-sd15/img2img_euler_a_10.safetensors", "sigmas_full");
    check_fixture_list(KILN_SCHED_KARRAS, 8, "tiny-sd15/img2img_dpmpp_2m_karras_8.safetensors", "sigmas_full");
    check_fixture_list(KILN_SCHED_AUTOMATIC, 10, "tiny-sd15/inpaint_euler_a_10.safetensors", "sigmas_full");
    check_fixture_list(KILN_SCHED_AUTOMATIC, 9, "tiny-sd15/hires_latent_euler_a_6.safetensors", "hr_sigmas_full");
}

/* Lists printed by A1111 v1.10's sd_schedulers.py functions and k-diffusion's get_sigmas_*
 * (re-typed verbatim) on PyTorch 1.13.1 CPU, numpy 1.24, scipy 1.10 with this schedule's
 * sigma_min / sigma_max; float32 values as float.hex(). */
typedef struct ref_list {
    const char *name;
    int steps, n;
    double v[40];
} ref_list;

static const ref_list ref_lists[] = {
    {"uniform", 1, 2, {0x1.d3ab28p+3, 0x0.0p+0}},
    {"uniform", 7, 8, {0x1.d3ab28p+3, 0x1.7cbac4p+2, 0x1.758b16p+1, 0x1.9d96acp+0, 0x1.dd5e06p-1, 0x1.f9659ep-2, 0x1.dde184p-6, 0x0.0p+0}},
    {"uniform", 11, 12, {0x1.d3ab28p+3, 0x1.09d45cp+3, 0x1.45ea02p+2, 0x1.a99bdcp+1, 0x1.23ce36p+1, 0x1.9d96acp+0, 0x1.29b17ep+0, 0x1.a9ecaap-1, 0x1.2472e0p-1, 0x1.5ff42cp-2, 0x1.dde184p-6, 0x0.0p+0}},
    {"uniform", 20, 21, {0x1.d3ab28p+3, 0x1.57e5c8p+3, 0x1.029bcep+3, 0x1.8d1da8p+2, 0x1.36c302p+2, 0x1.eec4b8p+1, 0x1.8fd76ap+1, 0x1.47513ap+1, 0x1.0ecddep+1, 0x1.c3cb64p+0, 0x1.7b0754p+0, 0x1.3eed9cp+0, 0x1.0c5308p+0, 0x1.c1c154p-1, 0x1.759daep-1, 0x1.315fbcp-1, 0x1.e4f368p-2, 0x1.6c141cp-2, 0x1.db78ecp-3, 0x1.dde184p-6, 0x0.0p+0}},
    {"karras", 1, 2, {0x1.d3ab28p+3, 0x0.0p+0}},
    {"karras", 7, 8, {0x1.d3ab28p+3, 0x1.c60afap+2, 0x1.9594fep+1, 0x1.462bbep+0, 0x1.c9a5aep-2, 0x1.0adf54p-3, 0x1.dde186p-6, 0x0.0p+0}},
    {"karras", 11, 12, {0x1.d3ab28p+3, 0x1.31dd56p+3, 0x1.85421ap+2, 0x1.e0295ap+1, 0x1.1db774p+1, 0x1.462bbep+0, 0x1.62990cp-1, 0x1.6bb58ep-2, 0x1.5baa10p-3, 0x1.3097eap-4, 0x1.dde186p-6, 0x0.0p+0}},
    {"karras", 20, 21, {0x1.d3ab28p+3, 0x1.773638p+3, 0x1.2ae2fcp+3, 0x1.d88d5ap+2, 0x1.7285e0p+2, 0x1.1ffd70p+2, 0x1.bb7d14p+1, 0x1.520744p+1, 0x1.fdacfcp+0, 0x1.7bb41ap+0, 0x1.173e0ep+0, 0x1.94f754p-1, 0x1.212396p-1, 0x1.95e7dcp-2, 0x1.1797bcp-2, 0x1.792dcap-3, 0x1.f104cap-4, 0x1.3eeafap-4, 0x1.8d29eap-5, 0x1.dde186p-6, 0x0.0p+0}},
    {"exponential", 1, 2, {0x1.d3ab28p+3, 0x0.0p+0}},
    {"exponential", 7, 8, {0x1.d3ab28p+3, 0x1.4be264p+2, 0x1.d70c56p+0, 0x1.4e4864p-1, 0x1.da73cap-3, 0x1.50b2ccp-4, 0x1.dde184p-6, 0x0.0p+0}},
    {"exponential", 11, 12, {0x1.d3ab28p+3, 0x1.f6519cp+2, 0x1.0dc4a0p+2, 0x1.21c168p+1, 0x1.37394cp+0, 0x1.4e485ep-1, 0x1.670cd4p-2, 0x1.81a70ep-3, 0x1.9e39dcp-4, 0x1.bcea9cp-5, 0x1.dde184p-6, 0x0.0p+0}},
    {"exponential", 20, 21, {0x1.d3ab28p+3, 0x1.512984p+3, 0x1.e6262ap+2, 0x1.5e7c46p+2, 0x1.f95c16p+1, 0x1.6c55d6p+1, 0x1.06aa2ep+1, 0x1.7abb7cp+0, 0x1.110b54p+0, 0x1.89b2cap-1, 0x1.1bd57ap-1, 0x1.99417ep-2, 0x1.270cc6p-2, 0x1.a96d94p-3, 0x1.32b588p-3, 0x1.ba3d3ep-4, 0x1.3ed43cp-4, 0x1.cbb6f8p-5, 0x1.4b6d8ap-5, 0x1.dde184p-6, 0x0.0p+0}},
    {"polyexponential", 1, 2, {0x1.d3ab28p+3, 0x0.0p+0}},
    {"polyexponential", 7, 8, {0x1.d3ab28p+3, 0x1.4be268p+2, 0x1.d70c4ep+0, 0x1.4e4862p-1, 0x1.da73cap-3, 0x1.50b2ccp-4, 0x1.dde184p-6, 0x0.0p+0}},
    {"polyexponential", 11, 12, {0x1.d3ab28p+3, 0x1.f6518cp+2, 0x1.0dc4a4p+2, 0x1.21c166p+1, 0x1.37394cp+0, 0x1.4e4862p-1, 0x1.670cd8p-2, 0x1.81a710p-3, 0x1.9e39e2p-4, 0x1.bceaa4p-5, 0x1.dde184p-6, 0x0.0p+0}},
    {"polyexponential", 20, 21, {0x1.d3ab28p+3, 0x1.512988p+3, 0x1.e6262ap+2, 0x1.5e7c46p+2, 0x1.f95c0ep+1, 0x1.6c55d6p+1, 0x1.06aa2cp+1, 0x1.7abb7cp+0, 0x1.110b54p+0, 0x1.89b2ccp-1, 0x1.1bd578p-1, 0x1.99417cp-2, 0x1.270cc6p-2, 0x1.a96d90p-3, 0x1.32b588p-3, 0x1.ba3d3ep-4, 0x1.3ed43cp-4, 0x1.cbb6f8p-5, 0x1.4b6d8ap-5, 0x1.dde184p-6, 0x0.0p+0}},
    {"sgm_uniform", 1, 2, {0x1.d3ab28p+3, 0x0.0p+0}},
    {"sgm_uniform", 7, 8, {0x1.d3ab28p+3, 0x1.ab6458p+2, 0x1.c2d2c2p+1, 0x1.07c31ap+1, 0x1.46de78p+0, 0x1.952002p-1, 0x1.c237bcp-2, 0x0.0p+0}},
    {"sgm_uniform", 11, 12, {0x1.d3ab28p+3, 0x1.16eb0ep+3, 0x1.626f5cp+2, 0x1.db7804p+1, 0x1.4d2b64p+1, 0x1.e233eep+0, 0x1.63e58ep+0, 0x1.081be6p+0, 0x1.82cb76p-1, 0x1.0e9180p-1, 0x1.4adf2ep-2, 0x0.0p+0}},
    {"sgm_uniform", 20, 21, {0x1.d3ab28p+3, 0x1.5d08bep+3, 0x1.09d45cp+3, 0x1.9ca6f2p+2, 0x1.45ea02p+2, 0x1.05825ap+2, 0x1.a99bdcp+1, 0x1.5e9a44p+1, 0x1.23ce36p+1, 0x1.e9c824p+0, 0x1.9d96aep+0, 0x1.5ea0f4p+0, 0x1.29b180p+0, 0x1.f8cf24p-1, 0x1.a9ecaap-1, 0x1.63eaa8p-1, 0x1.2472e0p-1, 0x1.d2ac60p-2, 0x1.5ff42cp-2, 0x1.cdb9f4p-3, 0x0.0p+0}},
    {"kl_optimal", 1, 2, {0x1.d3ab12p+3, 0x1.dde180p-6}},
    {"kl_optimal", 7, 8, {0x1.d3ab12p+3, 0x1.bf2a82p+1, 0x1.e0ccc0p+0, 0x1.301810p+0, 0x1.8dd7d6p-1, 0x1.eec8c0p-2, 0x1.f46256p-3, 0x1.dde180p-6}},
    {"kl_optimal", 11, 12, {0x1.d3ab12p+3, 0x1.381a92p+2, 0x1.6e475cp+1, 0x1.f7ce44p+0, 0x1.72f1f0p+0, 0x1.197d94p+0, 0x1.ae3ef2p-1, 0x1.448320p-1, 0x1.d6d5c4p-2, 0x1.396fecp-2, 0x1.510454p-3, 0x1.dde180p-6}},
    {"kl_optimal", 20, 21, {0x1.d3ab12p+3, 0x1.bfb8c4p+2, 0x1.242996p+2, 0x1.ae0268p+1, 0x1.51027cp+1, 0x1.12455ap+1, 0x1.c95486p+0, 0x1.835e0ap+0, 0x1.4b75e8p+0, 0x1.1d4e52p+0, 0x1.ec5552p-1, 0x1.a86daep-1, 0x1.6c5a62p-1, 0x1.3645dep-1, 0x1.04d2aap-1, 0x1.ade9a0p-2, 0x1.57b168p-2, 0x1.05a438p-2, 0x1.6d411cp-3, 0x1.a6a9aep-4, 0x1.dde180p-6}},
    {"align_your_steps", 1, 2, {0x1.db22d0p-6, 0x0.0p+0}},
    {"align_your_steps", 7, 8, {0x1.d3ae14p+3, 0x1.25947ap+2, 0x1.326a72p+1, 0x1.656042p+0, 0x1.7c2b5cp-1, 0x1.282f5ep-2, 0x1.db22d0p-6, 0x0.0p+0}},
    {"align_your_steps", 11, 12, {0x1.d3ae14p+3, 0x1.9e6666p+2, 0x1.ee3540p+1, 0x1.59374cp+1, 0x1.e2d0e6p+0, 0x1.656042p+0, 0x1.ed0e56p-1, 0x1.4dd2f2p-1, 0x1.989374p-2, 0x1.374bc6p-3, 0x1.db22d0p-6, 0x0.0p+0}},
    {"align_your_steps", 20, 21, {0x1.d3ae14p+3, 0x1.30b1e0p+3, 0x1.934688p+2, 0x1.333382p+2, 0x1.dbe42ep+1, 0x1.8a0062p+1, 0x1.464288p+1, 0x1.0e4672p+1, 0x1.c52f3cp+0, 0x1.82d1dap+0, 0x1.441b76p+0, 0x1.0a9298p+0, 0x1.b3ebe4p-1, 0x1.6306f4p-1, 0x1.16934ap-1, 0x1.ae407ep-2, 0x1.1024a4p-2, 0x1.478430p-3, 0x1.1c0ff0p-4, 0x1.db22d0p-6, 0x0.0p+0}},
    {"simple", 1, 2, {0x1.d3ab26p+3, 0x0.0p+0}},
    {"simple", 7, 8, {0x1.d3ab26p+3, 0x1.ace77ep+2, 0x1.c39c2ap+1, 0x1.07e4d4p+1, 0x1.46b758p+0, 0x1.9482e0p-1, 0x1.c09342p-2, 0x0.0p+0}},
    {"simple", 11, 12, {0x1.d3ab26p+3, 0x1.182318p+3, 0x1.637de8p+2, 0x1.dc5d10p+1, 0x1.4d81dep+1, 0x1.e25a6ap+0, 0x1.63ca58p+0, 0x1.07dec8p+0, 0x1.822988p-1, 0x1.0dcfb8p-1, 0x1.48f688p-2, 0x0.0p+0}},
    {"simple", 20, 21, {0x1.d3ab26p+3, 0x1.5cef7ep+3, 0x1.09b092p+3, 0x1.9c5960p+2, 0x1.459de8p+2, 0x1.053b0ep+2, 0x1.a91940p+1, 0x1.5e23dap+1, 0x1.236324p+1, 0x1.e90632p+0, 0x1.9ce61cp+0, 0x1.5dff0ap+0, 0x1.291baap+0, 0x1.f7b6e6p-1, 0x1.a8e35ap-1, 0x1.62ebc2p-1, 0x1.237950p-1, 0x1.d0b5d0p-2, 0x1.5ddfc2p-2, 0x1.c8b5d8p-3, 0x0.0p+0}},
    {"normal", 1, 2, {0x1.d3ab28p+3, 0x0.0p+0}},
    {"normal", 7, 8, {0x1.d3ab28p+3, 0x1.7cbac4p+2, 0x1.758b16p+1, 0x1.9d96acp+0, 0x1.dd5e06p-1, 0x1.f9659ep-2, 0x1.dde184p-6, 0x0.0p+0}},
    {"normal", 11, 12, {0x1.d3ab28p+3, 0x1.09d45cp+3, 0x1.45ea02p+2, 0x1.a99bdcp+1, 0x1.23ce36p+1, 0x1.9d96acp+0, 0x1.29b17ep+0, 0x1.a9ecaap-1, 0x1.2472e0p-1, 0x1.5ff42cp-2, 0x1.dde184p-6, 0x0.0p+0}},
    {"normal", 20, 21, {0x1.d3ab28p+3, 0x1.57e5c8p+3, 0x1.029bcep+3, 0x1.8d1da8p+2, 0x1.36c302p+2, 0x1.eec4b8p+1, 0x1.8fd76ap+1, 0x1.47513ap+1, 0x1.0ecddep+1, 0x1.c3cb64p+0, 0x1.7b0754p+0, 0x1.3eed9cp+0, 0x1.0c5308p+0, 0x1.c1c154p-1, 0x1.759daep-1, 0x1.315fbcp-1, 0x1.e4f368p-2, 0x1.6c141cp-2, 0x1.db78ecp-3, 0x1.dde184p-6, 0x0.0p+0}},
    {"ddim", 1, 2, {0x1.5272bep-5, 0x0.0p+0}},
    {"ddim", 7, 9, {0x1.c87bc6p+3, 0x1.a48586p+2, 0x1.be2362p+1, 0x1.060e50p+1, 0x1.45a5ecp+0, 0x1.9482e0p-1, 0x1.c2e05ep-2, 0x1.5272bep-5, 0x0.0p+0}},
    {"ddim", 11, 13, {0x1.bda08ep+3, 0x1.0c807cp+3, 0x1.5815dep+2, 0x1.d0b93ep+1, 0x1.476186p+1, 0x1.dbcaa0p+0, 0x1.604d42p+0, 0x1.061ff8p+0, 0x1.80c5bap-1, 0x1.0dcfb8p-1, 0x1.4b4c26p-2, 0x1.5272bep-5, 0x0.0p+0}},
    {"ddim", 20, 21, {0x1.60e818p+3, 0x1.0c807cp+3, 0x1.a068d2p+2, 0x1.489a84p+2, 0x1.0777f4p+2, 0x1.ac8384p+1, 0x1.60cb06p+1, 0x1.257c3cp+1, 0x1.ec66c8p+0, 0x1.9faa4ap+0, 0x1.604d42p+0, 0x1.2b1034p+0, 0x1.fb16e0p-1, 0x1.abdaaep-1, 0x1.659470p-1, 0x1.25e9ecp-1, 0x1.d55528p-2, 0x1.627ec8p-2, 0x1.d33e96p-3, 0x1.5272bep-5, 0x0.0p+0}},
    {"beta", 1, 2, {0x1.d3ab26p+3, 0x0.0p+0}},
    {"beta", 7, 8, {0x1.d3ab26p+3, 0x1.a8f7ecp+3, 0x1.531f9cp+3, 0x1.d49a16p+2, 0x1.02f4f6p+2, 0x1.5d1158p+0, 0x1.dde180p-6, 0x0.0p+0}},
    {"beta", 11, 12, {0x1.d3ab26p+3, 0x1.c13170p+3, 0x1.9a4bf0p+3, 0x1.6671d0p+3, 0x1.2a621cp+3, 0x1.d49a16p+2, 0x1.546ff6p+2, 0x1.b8a11cp+1, 0x1.d27130p+0, 0x1.368a6ep-1, 0x1.dde180p-6, 0x0.0p+0}},
    {"beta", 20, 21, {0x1.d3ab26p+3, 0x1.cd49acp+3, 0x1.bf8ff2p+3, 0x1.ac914ep+3, 0x1.955baep+3, 0x1.7abc70p+3, 0x1.5d655cp+3, 0x1.3dfa3cp+3, 0x1.1d1724p+3, 0x1.f6a7d0p+2, 0x1.b28c5ep+2, 0x1.6f05e6p+2, 0x1.2d3fb6p+2, 0x1.dcd2eap+1, 0x1.67769ep+1, 0x1.f9f34ap+0, 0x1.404642p+0, 0x1.50a240p-1, 0x1.d41acep-3, 0x1.dde180p-6, 0x0.0p+0}},
    {"karras_rho3", 8, 9, {0x1.d3ab24p+3, 0x1.3970a6p+3, 0x1.8b00b2p+2, 0x1.c98e80p+1, 0x1.d51e4cp+0, 0x1.8ca2acp-1, 0x1.d806d8p-3, 0x1.dde148p-6, 0x0.0p+0}},
    {"karras_min0.1_max10", 8, 9, {0x1.4p+3, 0x1.846432p+2, 0x1.c5a4f4p+1, 0x1.faa690p+0, 0x1.0c5690p+0, 0x1.0abf0ap-1, 0x1.eab550p-3, 0x1.99999ap-4, 0x0.0p+0}},
    {"polyexponential_rho2", 8, 9, {0x1.d3ab28p+3, 0x1.678084p+1, 0x1.642ce4p-1, 0x1.c6ce3ep-3, 0x1.763f14p-4, 0x1.8ce836p-5, 0x1.0f4326p-5, 0x1.dde184p-6, 0x0.0p+0}},
    {"beta_a0.5_b0.7", 8, 9, {0x1.d3ab26p+3, 0x1.95a574p+3, 0x1.384378p+3, 0x1.ae1570p+2, 0x1.fe946ep+1, 0x1.d99c26p+0, 0x1.f944e2p-2, 0x1.dde180p-6, 0x0.0p+0}},
    {"ays_sdxl", 8, 9, {0x1.d3ae14p+3, 0x1.440866p+2, 0x1.2de1cap+1, 0x1.2ebca2p+0, 0x1.424082p-1, 0x1.6b1482p-2, 0x1.3c26e6p-3, 0x1.db22d0p-6, 0x0.0p+0}},
};

static void ref_opts(const char *name, char *base, kiln_sigma_opts *o) {
    memset(o, 0, sizeof *o);
    strcpy(base, name);
    if (!strcmp(name, "karras_rho3")) strcpy(base, "karras"), o->rho = 3;
    if (!strcmp(name, "karras_min0.1_max10")) strcpy(base, "karras"), o->sigma_min = 0.1, o->sigma_max = 10;
    if (!strcmp(name, "polyexponential_rho2")) strcpy(base, "polyexponential"), o->rho = 2;
    if (!strcmp(name, "beta_a0.5_b0.7")) strcpy(base, "beta"), o->beta_alpha = 0.5, o->beta_beta = 0.7;
    if (!strcmp(name, "ays_sdxl")) strcpy(base, "align_your_steps"), o->sdxl = true;
}

TEST(every_scheduler_matches_reference) {
    for (size_t k = 0; k < sizeof ref_lists / sizeof ref_lists[0]; k++) {
        const ref_list *r = &ref_lists[k];
        char base[64], what[96];
        kiln_sigma_opts o;
        kiln_scheduler id;
        ref_opts(r->name, base, &o);
        CHECK_MSG(kiln_scheduler_find(base, &id) == 0, "%s", base);
        float *got = NULL;
        int n = 0;
        CHECK(kiln_scheduler_sigmas(id, &model, r->steps, &o, &got, &n) == 0);
        float want[40];
        for (int i = 0; i < r->n; i++) want[i] = (float)r->v[i];
        snprintf(what, sizeof what, "%s(%d)", r->name, r->steps);
        if (got) check_list(what, got, n, want, r->n);
        free(got);
    }
}

TEST(scheduler_list_properties) {
    static const int steps[] = {1, 2, 3, 5, 7, 10, 11, 20, 33, 50, 150};
    for (int id = 0; id < KILN_SCHED_COUNT; id++) {
        const kiln_scheduler_info *info = kiln_scheduler_get((kiln_scheduler)id);
        for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
            int N = steps[k], n = 0;
            float *s = NULL;
            CHECK(kiln_scheduler_sigmas((kiln_scheduler)id, &model, N, NULL, &s, &n) == 0);
            if (!s) continue;
            int want_n = N + 1;
            if (id == KILN_SCHED_DDIM) { /* ceil(999 / ss) + 1 with ss = max(1000 // N, 1) */
                int ss = 1000 / N > 1 ? 1000 / N : 1;
                want_n = (999 + ss - 1) / ss + 1;
            }
            CHECK_MSG(n == want_n, "%s(%d): %d values, want %d", info->label, N, n, want_n);
            for (int i = 0; i + 1 < n; i++)
                CHECK_MSG(s[i] > s[i + 1], "%s(%d): not decreasing at %d: %g %g", info->label, N, i, s[i], s[i + 1]);
            if (id == KILN_SCHED_KL_OPTIMAL)
                CHECK_MSG(close_enough(s[n - 1], model.sigma_min), "KL Optimal(%d) ends at %g", N, s[n - 1]);
            else
                CHECK_MSG(s[n - 1] == 0.0f, "%s(%d) ends at %g", info->label, N, s[n - 1]);
            /* The first sigma is the model's sigma_max except for the table-driven ones. */
            /* The first sigma is the model's sigma_max except for the table-driven ones;
             * KL Optimal's float32 tan(atan(sigma_max)) is 7e-7 off it; AYS(1) is its
             * interpolation at x = 0, the smallest table value. */
            if (id == KILN_SCHED_ALIGN_YOUR_STEPS)
                CHECK_NEAR(s[0], N == 1 ? 0.029 : 14.615, 1e-5);
            else if (id != KILN_SCHED_DDIM)
                CHECK_MSG(fabs(s[0] - model.sigma_max) < 2e-6 * model.sigma_max, "%s(%d) starts at %.9g", info->label,
                          N, s[0]);
            free(s);
        }
    }
}

TEST(discard_penultimate) {
    /* DPM2: 10 steps -> the 11-step list with its next-to-last sigma removed. */
    kiln_sigma_opts o = {.discard_penultimate = true};
    float *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 10, &o, &a, &na) == 0);
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 11, NULL, &b, &nb) == 0);
    CHECK(na == 11 && nb == 12);
    if (a && b) {
        for (int i = 0; i < 10; i++) CHECK(a[i] == b[i]);
        CHECK(a[10] == 0.0f && b[10] > 0.0f);
    }
    free(a);
    free(b);
}

TEST(sigma_overrides) {
    /* opts.sigma_min/max equal to the model's change nothing; old Karras range 0.1..10. */
    kiln_sigma_opts o = {.sigma_min = model.sigma_min, .sigma_max = model.sigma_max, .rho = 7};
    float *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 6, &o, &a, &na) == 0);
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 6, NULL, &b, &nb) == 0);
    if (a && b) CHECK(na == nb && memcmp(a, b, (size_t)na * sizeof *a) == 0);
    free(a);
    free(b);
    kiln_sigma_opts old = {.old_karras_sigmas = true};
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 6, &old, &a, &na) == 0);
    if (a) {
        CHECK_NEAR(a[0], 10.0, 1e-5);
        CHECK_NEAR(a[5], 0.1, 1e-7);
    }
    free(a);
    kiln_sigma_opts bad = {.sigma_min = 5, .sigma_max = 2};
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 6, &bad, &a, &na) == KILN_EINVAL);
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_KARRAS, &model, 0, NULL, &a, &na) == KILN_EINVAL);
}

TEST(scheduler_names) {
    kiln_scheduler id;
    CHECK(kiln_scheduler_find("Karras", &id) == 0 && id == KILN_SCHED_KARRAS);
    CHECK(kiln_scheduler_find("karras", &id) == 0 && id == KILN_SCHED_KARRAS);
    CHECK(kiln_scheduler_find("SGM Uniform", &id) == 0 && id == KILN_SCHED_SGM_UNIFORM);
    CHECK(kiln_scheduler_find("sgmuniform", &id) == 0 && id == KILN_SCHED_SGM_UNIFORM);
    CHECK(kiln_scheduler_find("sgm_uniform", &id) == 0 && id == KILN_SCHED_SGM_UNIFORM);
    CHECK(kiln_scheduler_find("align your steps", &id) == 0 && id == KILN_SCHED_ALIGN_YOUR_STEPS);
    CHECK(kiln_scheduler_find("KL OPTIMAL", &id) == 0 && id == KILN_SCHED_KL_OPTIMAL);
    CHECK(kiln_scheduler_find("automatic", &id) == 0 && id == KILN_SCHED_AUTOMATIC);
    CHECK(kiln_scheduler_find("Beta", &id) == 0 && id == KILN_SCHED_BETA);
    CHECK(kiln_scheduler_find("ddim", &id) == 0 && id == KILN_SCHED_DDIM);
    CHECK(kiln_scheduler_find("Karras2", &id) == KILN_ENOTFOUND);
    CHECK(strstr(kiln_last_error(), "Karras2") != NULL);
    CHECK(kiln_scheduler_find(NULL, &id) == KILN_ENOTFOUND);
    int count = 0;
    const kiln_scheduler_info *list = kiln_scheduler_list(&count);
    CHECK(count == 12 && !strcmp(list[5].label, "SGM Uniform") && list[2].default_rho == 7.0);
}

TEST(beta_ppf_matches_scipy) {
    /* p, scipy.stats.beta.ppf(p, 0.6, 0.6), ppf(p, 0.5, 0.7), ppf(p, 2.5, 1.3) */
    static const double rows[][4] = {
        {0x1.19799812dea11p-40, 0x1.5e90f815d3611p-66, 0x1.e5d0a2a32066cp-80, 0x1.bb92bd19861e0p-17},
        {0x1.0c6f7a0b5ed8dp-20, 0x1.981ce502f9adcp-33, 0x1.b9d89d6859b8cp-40, 0x1.b35c30946ebd0p-9},
        {0x1.0624dd2f1a9fcp-10, 0x1.375d2ccbfa9cbp-16, 0x1.a5608fd21c661p-20, 0x1.b12018f240052p-5},
        {0x1.999999999999ap-4, 0x1.444683edeee80p-5, 0x1.00615f052fd0ep-6, 0x1.5fd9884168696p-2},
        {0x1.0000000000000p-2, 0x1.67cb1d46e5d46p-3, 0x1.89f089ee6151cp-4, 0x1.0324e4376f5fep-1},
        {0x1.0000000000000p-1, 0x1.0000000000001p-1, 0x1.71bffb380e2a4p-2, 0x1.60289be63148cp-1},
        {0x1.8000000000000p-1, 0x1.a60d38ae468aep-1, 0x1.7046351fc001fp-1, 0x1.abebca4bb178ep-1},
        {0x1.ccccccccccccdp-1, 0x1.ebbb97c121118p-1, 0x1.d67186a4cc5e7p-1, 0x1.d8e7bd2ab32dcp-1},
        {0x1.ff7ced916872bp-1, 0x1.fffd9145a6681p-1, 0x1.fff0d994debc4p-1, 0x1.feec4b77f66c1p-1},
        {0x1.fffffff768fa1p-1, 0x1.fffffffffffefp-1, 0x1.ffffffffff517p-1, 0x1.fffffe4a88bbdp-1},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        double p = rows[i][0];
        double got[3] = {kiln_beta_ppf(p, 0.6, 0.6), kiln_beta_ppf(p, 0.5, 0.7), kiln_beta_ppf(p, 2.5, 1.3)};
        for (int k = 0; k < 3; k++)
            CHECK_MSG(fabs(got[k] - rows[i][k + 1]) <= 1e-13 * rows[i][k + 1] + 1e-300, "ppf(%a) #%d = %a, want %a",
                      p, k, got[k], rows[i][k + 1]);
    }
    CHECK(kiln_beta_ppf(0.0, 0.6, 0.6) == 0.0 && kiln_beta_ppf(1.0, 0.6, 0.6) == 1.0);
    CHECK(fabs(kiln_beta_ppf(0.5, 0.6, 0.6) - 0.5) < 1e-15); /* symmetric */
    CHECK(isnan(kiln_beta_ppf(1.5, 0.6, 0.6)) && isnan(kiln_beta_ppf(0.5, -1, 0.6)));
}

TEST(schedule_init_and_prediction) {
    kiln_schedule s;
    CHECK(kiln_schedule_init(&s, 0.00085, 0.012, 1000, KILN_PREDICT_V) == 0);
    CHECK(s.prediction == KILN_PREDICT_V && memcmp(s.sigmas, model.sigmas, sizeof s.sigmas) == 0);
    CHECK(kiln_schedule_init(&s, 0.00085, 0.012, 1, KILN_PREDICT_EPS) == KILN_EINVAL);
    CHECK(kiln_schedule_init(&s, 0.00085, 0.012, 1001, KILN_PREDICT_EPS) == KILN_EINVAL);
    CHECK(kiln_schedule_init(&s, 0.0, 0.012, 1000, KILN_PREDICT_EPS) == KILN_EINVAL);
    /* A short schedule still works end to end. */
    CHECK(kiln_schedule_init(&s, 0.00085, 0.012, 50, KILN_PREDICT_EPS) == 0);
    float *l = NULL;
    int n = 0;
    CHECK(kiln_scheduler_sigmas(KILN_SCHED_DDIM, &s, 7, NULL, &l, &n) == 0);
    CHECK(n == 8 && l && l[n - 1] == 0.0f); /* ss = 50 // 7 = 7: x = 1, 8, ..., 43, then 0 */
    if (l && n == 8) CHECK(l[0] == s.sigmas[43] && l[6] == s.sigmas[1]);
    free(l);
}

TEST(other_fixture_schedules) {
    /* tiny-sd21 and tiny-sdxl use the same SD 1 table (README: "checked equal"). */
    static const char *dirs[] = {"tiny-sd21", "tiny-sdxl"};
    static const int ns[] = {5, 6, 8, 10};
    for (int d = 0; d < 2; d++) {
        char file[96], name[64];
        snprintf(file, sizeof file, "%s/schedule.safetensors", dirs[d]);
        int64_t n = 0;
        float *sig = read_tensor(file, "sigmas", &n);
        if (sig) check_list(file, model.sigmas, 1000, sig, (int)n);
        free(sig);
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "get_sigmas_uniform_%d", ns[k]);
            check_fixture_list(KILN_SCHED_AUTOMATIC, ns[k], file, name);
            snprintf(name, sizeof name, "get_sigmas_karras_%d", ns[k]);
            check_fixture_list(KILN_SCHED_KARRAS, ns[k], file, name);
        }
    }
}

TEST(v_prediction_scalings) {
    /* tiny-sd21 schedule.safetensors: DiscreteVDDPMDenoiser.get_scalings and sigma_to_t. */
    const char *file = "tiny-sd21/schedule.safetensors";
    int64_t n = 0, m = 0;
    float *ps = read_tensor(file, "v_scalings_probe_sigma", &n);
    float *skip = read_tensor(file, "v_scalings_c_skip", &m);
    float *out = read_tensor(file, "v_scalings_c_out", &m);
    float *in = read_tensor(file, "v_scalings_c_in", &m);
    float *t = read_tensor(file, "v_scalings_t", &m);
    kiln_schedule v;
    kiln_schedule_init_sd(&v, KILN_PREDICT_V);
    for (int i = 0; ps && skip && out && in && t && i < n; i++) {
        float cs, co, ci;
        kiln_schedule_scalings(&v, ps[i], &cs, &co, &ci);
        CHECK_MSG(close_enough(cs, skip[i]) && close_enough(co, out[i]) && close_enough(ci, in[i]),
                  "v scalings at sigma %.9g: %.9g %.9g %.9g", ps[i], cs, co, ci);
        CHECK_MSG(close_enough(kiln_sigma_to_t(&v, ps[i]), t[i]), "sigma_to_t(%.9g)", ps[i]);
    }
    free(ps), free(skip), free(out), free(in), free(t);
    float cs, co, ci;
    kiln_schedule_scalings(&model, 2.0f, &cs, &co, &ci); /* eps: x - sigma * eps */
    CHECK(cs == 1.0f && co == -2.0f && ci == 1.0f / sqrtf(5.0f));
}

int main(void) {
    kiln_schedule_init_sd(&model, KILN_PREDICT_EPS);
    RUN(alphas_cumprod_and_sigmas);
    RUN(sigma_t_probes);
    RUN(uniform_and_karras_fixture_lists);
    RUN(txt2img_fixture_lists);
    RUN(every_scheduler_matches_reference);
    RUN(scheduler_list_properties);
    RUN(discard_penultimate);
    RUN(sigma_overrides);
    RUN(scheduler_names);
    RUN(beta_ppf_matches_scipy);
    RUN(schedule_init_and_prediction);
    RUN(other_fixture_schedules);
    RUN(v_prediction_scalings);
    return test_summary();
}
