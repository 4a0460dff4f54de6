/* test_txt2img.c — whole A1111 txt2img runs on the CPU backend against the tiny-sd15 fixtures: initial noise,
 * sigmas, denoiser call count, final latents (samples_atol) and the decoded PNG bytes (|diff| <= 1 on at most
 * 1% of values), for Euler a, Euler, DPM++ 2M Karras, Heun, DDIM and DPM++ SDE Karras. */
#include <jansson.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "pipeline/txt2img.h"
#include "fixture_cases.h"
#include "test.h"

static kiln_model *model;
static kiln_ctx *ctx, *ctx_extra; /* ctx_extra: with the fixture's LoRA and embedding folders */
static json_t *manifest;

/* Runs one manifest case (with optional overrides of the prompt) and checks it. */
static void run_case_ctx(kiln_ctx *ctx, json_t *c, const char *prompt_override) {
    const char *name = json_string_value(json_object_get(c, "name"));
    char rel[256];
    snprintf(rel, sizeof rel, "tiny-sd15/%s", json_string_value(json_object_get(c, "file")));
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture(rel), &f) == 0);
    if (!f) return;
    kiln_gen_params p;
    fixture_gen_params(c, &p);
    if (prompt_override) p.prompt = prompt_override;
    json_t *tol = json_object_get(c, "tolerance");
    double samples_atol = json_number_value(json_object_get(tol, "samples_atol"));
    CHECK(kiln_gen_params_check(ctx, &p) == 0);

    float latents[4 * 8 * 8];
    kiln_sample_trace trace = {0};
    int64_t seed = p.seed, subseed = 0;
    int rc = kiln_txt2img_sample(ctx, &p, &seed, &subseed, 1, 0, NULL, NULL, latents, &trace);
    CHECK_MSG(rc == 0, "%s: %s", name, kiln_last_error());
    if (rc) {
        kiln_st_close(f);
        return;
    }
    size_t n;
    float *noise = fixture_tensor_f32(f, "noise", &n), *samples = fixture_tensor_f32(f, "samples", &n);
    CHECK(noise && test_max_abs_diff(trace.noise, noise, 256) == 0.0);
    int want_calls = (int)json_integer_value(json_object_get(c, "n_denoiser_calls"));
    CHECK_MSG(trace.n_calls == want_calls, "%s: %d denoiser calls, want %d", name, trace.n_calls, want_calls);
    json_t *sig = json_object_get(c, "sigmas");
    if (sig && trace.sigmas) {
        CHECK((size_t)trace.n_sigmas == json_array_size(sig));
        for (int i = 0; i < trace.n_sigmas && i < (int)json_array_size(sig); i++)
            CHECK_NEAR(trace.sigmas[i], json_number_value(json_array_get(sig, (size_t)i)), 1e-6);
    }
    double err = test_max_abs_diff(latents, samples, 256);
    /* the decoded PNG bytes */
    uint8_t rgb[64 * 64 * 3];
    CHECK(kiln_decode_latents(ctx, latents, 1, 8, 8, NULL, rgb) == 0);
    const kiln_st_tensor *u8 = kiln_st_find(f, "image_u8");
    int max_diff = 0, n_diff = 0;
    for (int i = 0; u8 && i < 64 * 64 * 3; i++) {
        int d = abs((int)rgb[i] - (int)((const uint8_t *)u8->data)[i]);
        if (d > max_diff) max_diff = d;
        n_diff += d != 0;
    }
    printf("  %-22s calls %2d  samples max err %.3g (atol %.3g)  png: max diff %d, %d of %d values differ\n", name,
           trace.n_calls, err, samples_atol, max_diff, n_diff, 64 * 64 * 3);
    CHECK_MSG(err <= samples_atol, "%s", name);
    CHECK_MSG(max_diff <= 1 && n_diff <= 64 * 64 * 3 / 100, "%s", name);
    free(noise), free(samples);
    kiln_sample_trace_free(&trace);
    kiln_st_close(f);
}

static void run_case(json_t *c, const char *prompt_override) { run_case_ctx(ctx, c, prompt_override); }

TEST(textual_inversion_run) {
    json_t *runs = json_object_get(json_object_get(json_object_get(manifest, "cases"), "textual_inversion"), "runs");
    CHECK(json_array_size(runs) == 1);
    run_case_ctx(ctx_extra, json_array_get(runs, 0), NULL);
}

/* The LoRA run goes through kiln_generate, which cuts the <lora:...> tag, merges the LoRA for the request and
 * restores the weights afterwards. */
/* Plans compiled by ctx_extra (its log callback counts them). */
static int n_compiles;
static void count_compiles(void *user, kiln_log_level level, const char *msg) {
    (void)user, (void)level;
    if (strstr(msg, "compil")) n_compiles++;
}

TEST(lora_run) {
    json_t *c = json_array_get(json_object_get(json_object_get(json_object_get(manifest, "cases"), "lora"), "runs"), 0);
    CHECK(c != NULL);
    if (!c) return;
    /* the plain case first, so that every plan the LoRA request needs is compiled with the plain weights: the
     * backend must then pick up the merged (and afterwards the restored) weights without compiling again */
    json_t *plain0 = json_array_get(json_object_get(json_object_get(json_object_get(manifest, "cases"), "txt2img"), "cases"), 0);
    run_case_ctx(ctx_extra, plain0, NULL);
    int compiles_before = n_compiles;
    kiln_gen_params p;
    fixture_gen_params(c, &p);
    const kiln_weight *w = kiln_weights_find(model->weights, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
    const void *before = w ? w->data : NULL;
    kiln_gen_image *im = NULL;
    int n = 0;
    int rc = kiln_generate(ctx_extra, &p, NULL, NULL, &im, &n);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    kiln_st_file *f = NULL;
    char rel[256];
    snprintf(rel, sizeof rel, "tiny-sd15/%s", json_string_value(json_object_get(c, "file")));
    CHECK(kiln_st_open(test_fixture(rel), &f) == 0);
    const kiln_st_tensor *u8 = f ? kiln_st_find(f, "image_u8") : NULL;
    if (rc == 0 && u8) {
        int max_diff = 0, n_diff = 0;
        for (int i = 0; i < 64 * 64 * 3; i++) {
            int d = abs((int)im[0].rgb[i] - (int)((const uint8_t *)u8->data)[i]);
            if (d > max_diff) max_diff = d;
            n_diff += d != 0;
        }
        printf("  lora_euler_a_6 (kiln_generate): png max diff %d, %d of %d values differ\n", max_diff, n_diff,
               64 * 64 * 3);
        CHECK(max_diff <= 1 && n_diff <= 64 * 64 * 3 / 100);
        CHECK(strstr(im[0].infotext, "Lora hashes: \"tiny_lora: ") != NULL);
        CHECK(strstr(im[0].infotext, "<lora:tiny_lora:0.8>") != NULL); /* the infotext keeps the tag */
    }
    w = kiln_weights_find(model->weights, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
    CHECK(w && w->data == before); /* weights restored after the request */
    kiln_gen_images_free(im, n);
    kiln_st_close(f);
    /* the same context without the LoRA gives A1111's plain image again: weights restored and picked up by the plan */
    json_t *plain = json_array_get(json_object_get(json_object_get(json_object_get(manifest, "cases"), "txt2img"), "cases"), 0);
    run_case_ctx(ctx_extra, plain, NULL);
    CHECK_MSG(n_compiles == compiles_before, "%d plans compiled again around a LoRA request", n_compiles - compiles_before);
    /* a tag naming a LoRA that does not exist is an error naming it */
    p.prompt = "a cat <lora:no_such_lora:1>";
    CHECK(kiln_generate(ctx_extra, &p, NULL, NULL, &im, &n) < 0 && strstr(kiln_last_error(), "no_such_lora"));
}

TEST(txt2img_cases) {
    json_t *cases = json_object_get(json_object_get(json_object_get(manifest, "cases"), "txt2img"), "cases");
    CHECK(json_array_size(cases) == 6);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) run_case(c, NULL);
}

TEST(bad_parameters_are_refused) {
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    p.width = 60;
    CHECK(kiln_gen_params_check(ctx, &p) == KILN_EINVAL && strstr(kiln_last_error(), "width"));
    kiln_gen_params_init(&p);
    p.steps = 0;
    CHECK(kiln_gen_params_check(ctx, &p) == KILN_EINVAL && strstr(kiln_last_error(), "steps"));
    kiln_gen_params_init(&p);
    p.sampler = "Euler b";
    CHECK(kiln_gen_params_check(ctx, &p) < 0 && strstr(kiln_last_error(), "Euler a"));
    kiln_gen_params_init(&p);
    p.scheduler = "Quadratic";
    CHECK(kiln_gen_params_check(ctx, &p) == KILN_EINVAL && strstr(kiln_last_error(), "Karras"));
    kiln_gen_params_init(&p);
    p.clip_skip = 7;
    CHECK(kiln_gen_params_check(ctx, &p) == KILN_EINVAL && strstr(kiln_last_error(), "clip_skip"));
    kiln_gen_params_init(&p);
    p.rng = "quantum";
    CHECK(kiln_gen_params_check(ctx, &p) == KILN_EINVAL && strstr(kiln_last_error(), "rng"));
}

int main(void) {
    kiln_ctx_options opts;
    if (fixture_cpu_setup(&manifest, &model, &opts, &ctx)) return 1;
    kiln_ctx_options extra = opts;
    char lora_dir[1024], emb_dir[1024];
    snprintf(lora_dir, sizeof lora_dir, "%s", test_fixture("tiny-sd15/lora"));
    snprintf(emb_dir, sizeof emb_dir, "%s", test_fixture("tiny-sd15/embeddings"));
    extra.lora_dir = lora_dir;
    extra.embeddings_dir = emb_dir;
    extra.log = count_compiles;
    if (kiln_ctx_create(model, &extra, &ctx_extra)) {
        fprintf(stderr, "setup: %s\n", kiln_last_error());
        return 1;
    }
    RUN(txt2img_cases);
    RUN(textual_inversion_run);
    RUN(lora_run);
    RUN(bad_parameters_are_refused);
    kiln_ctx_free(ctx);
    kiln_ctx_free(ctx_extra);
    kiln_model_free(model);
    json_decref(manifest);
    return test_summary();
}
