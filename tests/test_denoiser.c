/* test_denoiser.c — A1111's CFG denoiser rules that the fixtures do not exercise: "negative guidance minimum sigma"
 * (s_min_uncond: on odd calls below that sigma the uncond pass is skipped and the cond stands in, CFG scale 1), and
 * prompt-editing schedules switching the cond by call count. */
#include "core/error.h"
#include "pipeline/denoiser.h"
#include "pipeline/txt2img.h"
#include "test.h"

static kiln_model *model;
static kiln_ctx *ctx;
static kiln_schedule sched;

static int init(kiln_cfg_denoiser *d, const char *prompt, const char *neg, double s_min_uncond) {
    memset(d, 0, sizeof *d);
    int rc = kiln_cfg_denoiser_init(d, ctx, &sched, prompt, neg, 10, 0, 1, NULL);
    d->batch = 1, d->channels = 4, d->lat_h = 8, d->lat_w = 8;
    d->cfg_scale = 7;
    d->s_min_uncond = s_min_uncond;
    return rc;
}

TEST(s_min_uncond_skips_uncond_on_odd_calls) {
    float x[256], r_skip[256], r_same[256], r_even[256];
    for (int i = 0; i < 256; i++) x[i] = (float)((i * 37) % 23) / 7.0f - 1.5f;
    kiln_cfg_denoiser a, b;
    CHECK(init(&a, "a red car", "blurry", 5.0) == 0);
    CHECK(init(&b, "a red car", "a red car", 0.0) == 0); /* uncond == cond: CFG returns the cond exactly */
    a.step = b.step = 1;                                 /* an odd call */
    CHECK(kiln_cfg_denoise(&a, x, 2.0, r_skip) == 0);
    CHECK(kiln_cfg_denoise(&b, x, 2.0, r_same) == 0);
    /* equal up to float rounding: b runs cond and uncond as one U-Net batch of 2 (a the cond alone), and its CFG
     * multiplies their rounding difference by 7 */
    double skip_err = test_max_abs_diff(r_skip, r_same, 256);
    a.step = 2; /* even: full CFG even below the sigma */
    CHECK(kiln_cfg_denoise(&a, x, 2.0, r_even) == 0);
    double even_diff = test_max_abs_diff(r_even, r_same, 256);
    a.step = 3; /* odd but above the sigma: full CFG */
    CHECK(kiln_cfg_denoise(&a, x, 6.0, r_even) == 0);
    b.step = 3;
    CHECK(kiln_cfg_denoise(&b, x, 6.0, r_same) == 0);
    double above_diff = test_max_abs_diff(r_even, r_same, 256);
    printf("  skipped uncond vs cond alone: %.3g; full CFG vs cond alone: %.3g (even call), %.3g (above sigma)\n",
           skip_err, even_diff, above_diff);
    CHECK(skip_err < 1e-3);
    CHECK(even_diff > 1e-2 && above_diff > 1e-2);
    kiln_cfg_denoiser_free(&a);
    kiln_cfg_denoiser_free(&b);
}

TEST(prompt_editing_switches_by_call) {
    /* [a cat:a dog:3] with 10 steps: "a cat" up to call 3, then "a dog"; compared with fixed prompts */
    float x[256], r[256], cat[256], dog[256];
    for (int i = 0; i < 256; i++) x[i] = (float)((i * 13) % 17) / 5.0f - 1.5f;
    kiln_cfg_denoiser e, c, d;
    CHECK(init(&e, "[a cat:a dog:3]", "", 0) == 0);
    CHECK(init(&c, "a cat", "", 0) == 0);
    CHECK(init(&d, "a dog", "", 0) == 0);
    CHECK(e.parts[0].n == 2);
    e.step = c.step = d.step = 3;
    CHECK(kiln_cfg_denoise(&e, x, 3.0, r) == 0);
    CHECK(kiln_cfg_denoise(&c, x, 3.0, cat) == 0);
    CHECK(memcmp(r, cat, sizeof r) == 0);
    CHECK(kiln_cfg_denoise(&e, x, 3.0, r) == 0); /* call 4 */
    d.step = 4;
    CHECK(kiln_cfg_denoise(&d, x, 3.0, dog) == 0);
    CHECK(memcmp(r, dog, sizeof r) == 0);
    CHECK(test_max_abs_diff(cat, dog, 256) > 1e-3); /* the two prompts really differ */
    kiln_cfg_denoiser_free(&e);
    kiln_cfg_denoiser_free(&c);
    kiln_cfg_denoiser_free(&d);
}

TEST(schedules_span_second_order_calls) {
    /* A1111 builds prompt schedules for steps x 2 with second-order samplers (two denoiser calls per step) */
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    p.sampler = "Heun";
    CHECK(kiln_cond_total_steps(&p, 5) == 10);
    p.sampler = "DPM2 a";
    CHECK(kiln_cond_total_steps(&p, 20) == 40);
    p.sampler = "Euler a";
    CHECK(kiln_cond_total_steps(&p, 20) == 20);
    p.sampler = "DPM++ 2M Karras";
    CHECK(kiln_cond_total_steps(&p, 7) == 7);
}

int main(void) {
    char vocab[1024];
    snprintf(vocab, sizeof vocab, "%s/data/bpe_simple_vocab_16e6.txt.gz", KILN_SOURCE_DIR);
    kiln_ctx_options o = {.backend = "cpu", .vocab_path = vocab};
    if (kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &model) || kiln_ctx_create(model, &o, &ctx)) {
        fprintf(stderr, "setup: %s\n", kiln_last_error());
        return 1;
    }
    kiln_schedule_init_sd(&sched, KILN_PREDICT_EPS);
    RUN(s_min_uncond_skips_uncond_on_odd_calls);
    RUN(prompt_editing_switches_by_call);
    RUN(schedules_span_second_order_calls);
    kiln_ctx_free(ctx);
    kiln_model_free(model);
    return test_summary();
}
