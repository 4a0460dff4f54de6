/* test_net_golden.c — CLIP, U-Net and VAE on the CPU backend against the tiny-sd15 fixtures
 * (A1111/diffusers/transformers in fp32), within each case's manifest tolerance. */
#include <jansson.h>

#include "backend/backend.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "net/net.h"
#include "test.h"

static kiln_model *model;
static kiln_backend *cpu;
static json_t *manifest;

/* A fixture tensor as float32 (caller frees), with its element count. */
static float *fixture_f32(kiln_st_file *f, const char *name, size_t *n) {
    const kiln_st_tensor *t = kiln_st_find(f, name);
    if (!t) {
        fprintf(stderr, "fixture tensor %s missing\n", name);
        return NULL;
    }
    *n = (size_t)kiln_st_numel(t);
    float *v = malloc(*n * sizeof(float));
    kiln_st_to_f32(t, v);
    return v;
}

static double case_atol(const char *section, const char *case_name) {
    json_t *sec = json_object_get(json_object_get(manifest, "cases"), section);
    json_t *cases = json_object_get(sec, "cases");
    if (!cases) return json_number_value(json_object_get(json_object_get(sec, "tolerance"), "atol"));
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        if (!strcmp(json_string_value(json_object_get(c, "name")), case_name))
            return json_number_value(json_object_get(json_object_get(c, "tolerance"), "atol"));
    }
    return 0;
}

static int run_plan(kiln_plan *p, int n, const char *const *names, void *const *bufs) {
    int rc = kiln_backend_run_named(cpu, p, n, names, bufs);
    if (rc) fprintf(stderr, "run failed: %s\n", kiln_last_error());
    return rc;
}

TEST(text_encoder) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/text_encoder.safetensors"), &f) == 0);
    if (!f) return;
    const kiln_clip_config *c = &model->config.clip[0];
    const kiln_st_tensor *ids_t = kiln_st_find(f, "input_ids");
    int32_t ids[4 * 77];
    memcpy(ids, ids_t->data, sizeof ids);
    float *embeds = malloc(sizeof(float) * 4 * 77 * c->hidden);
    CHECK(kiln_clip_embed_tokens(model->weights, c, ids, 4 * 77, embeds) == 0);
    double atol = case_atol("text_encoder", "");
    const char *outs[2] = {"last_hidden_state", "clip_skip_2"};
    for (int skip = 1; skip <= 2; skip++) {
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_clip(p, c, 4, 77, skip) == 0);
        size_t n = 0;
        float *want = fixture_f32(f, outs[skip - 1], &n);
        float *got = calloc(n, sizeof(float));
        const char *names[2] = {"embeds", "hidden"};
        void *bufs[2] = {embeds, got};
        CHECK(run_plan(p, 2, names, bufs) == 0);
        double err = test_max_abs_diff(got, want, n);
        printf("  clip skip %d: max abs err %.3g (atol %.3g)\n", skip, err, atol);
        CHECK(err <= atol);
        free(want);
        free(got);
        kiln_plan_free(p);
    }
    free(embeds);
    kiln_st_close(f);
}

TEST(unet) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/unet.safetensors"), &f) == 0);
    if (!f) return;
    const char *cases[] = {"batch2", "nonsquare_h16_w8", "fractional_t", "context_154", "nonsquare_h8_w16"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char nx[64], nt[64], nc[64], ne[64];
        snprintf(nx, sizeof nx, "%s_x", cases[i]);
        snprintf(nt, sizeof nt, "%s_t", cases[i]);
        snprintf(nc, sizeof nc, "%s_context", cases[i]);
        snprintf(ne, sizeof ne, "%s_eps", cases[i]);
        const kiln_st_tensor *tx = kiln_st_find(f, nx), *tc = kiln_st_find(f, nc);
        CHECK(tx && tc);
        if (!tx || !tc) continue;
        size_t n = 0;
        float *x = fixture_f32(f, nx, &n), *t = fixture_f32(f, nt, &n), *ctx = fixture_f32(f, nc, &n);
        float *want = fixture_f32(f, ne, &n), *got = calloc(n, sizeof(float));
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_unet(p, &model->config.unet, (int)tx->shape[0], (int)tx->shape[2], (int)tx->shape[3],
                              (int)tc->shape[1]) == 0);
        const char *names[4] = {"x", "t", "context", "out"};
        void *bufs[4] = {x, t, ctx, got};
        CHECK(run_plan(p, 4, names, bufs) == 0);
        double err = test_max_abs_diff(got, want, n), atol = case_atol("unet", cases[i]);
        printf("  unet %s: max abs err %.3g (atol %.3g), rel L2 %.3g\n", cases[i], err, atol, test_rel_l2(got, want, n));
        CHECK(err <= atol);
        kiln_plan_free(p);
        free(x), free(t), free(ctx), free(want), free(got);
    }
    kiln_st_close(f);
}

TEST(vae) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/vae.safetensors"), &f) == 0);
    if (!f) return;
    const char *cases[] = {"decode_8x8", "decode_h16_w8"};
    for (int i = 0; i < 2; i++) {
        char nl[64], ni[64];
        snprintf(nl, sizeof nl, "%s_latent", cases[i]);
        snprintf(ni, sizeof ni, "%s_image", cases[i]);
        const kiln_st_tensor *tl = kiln_st_find(f, nl);
        size_t n = 0;
        float *lat = fixture_f32(f, nl, &n), *want = fixture_f32(f, ni, &n), *got = calloc(n, sizeof(float));
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_vae_decoder(p, &model->config.vae, 1, (int)tl->shape[2], (int)tl->shape[3]) == 0);
        const char *names[2] = {"latent", "image"};
        void *bufs[2] = {lat, got};
        CHECK(run_plan(p, 2, names, bufs) == 0);
        double err = test_max_abs_diff(got, want, n), atol = case_atol("vae", cases[i]);
        printf("  vae %s: max abs err %.3g (atol %.3g)\n", cases[i], err, atol);
        CHECK(err <= atol);
        kiln_plan_free(p);
        free(lat), free(want), free(got);
    }
    /* encode: u8 image [64,64,3] -> [-1,1] NCHW -> mean, logvar (clamped) */
    const kiln_st_tensor *tu = kiln_st_find(f, "encode_64x64_input_u8");
    CHECK(tu != NULL);
    if (tu) {
        const uint8_t *u8 = tu->data;
        float *img = malloc(sizeof(float) * 3 * 64 * 64);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++) img[(c * 64 + y) * 64 + x] = (float)u8[(y * 64 + x) * 3 + c] / 255.0f * 2 - 1;
        size_t n = 0;
        float *mean = fixture_f32(f, "encode_64x64_mean", &n), *logvar = fixture_f32(f, "encode_64x64_logvar", &n);
        float *gm = calloc(n, sizeof(float)), *gl = calloc(n, sizeof(float));
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_vae_encoder(p, &model->config.vae, 1, 64, 64) == 0);
        const char *names[3] = {"image", "mean", "logvar"};
        void *bufs[3] = {img, gm, gl};
        CHECK(run_plan(p, 3, names, bufs) == 0);
        for (size_t i = 0; i < n; i++) gl[i] = gl[i] < -30 ? -30 : gl[i] > 20 ? 20 : gl[i];
        double atol = case_atol("vae", "encode_64x64");
        double e1 = test_max_abs_diff(gm, mean, n), e2 = test_max_abs_diff(gl, logvar, n);
        printf("  vae encode: mean err %.3g, logvar err %.3g (atol %.3g)\n", e1, e2, atol);
        CHECK(e1 <= atol && e2 <= atol);
        kiln_plan_free(p);
        free(img), free(mean), free(logvar), free(gm), free(gl);
    }
    kiln_st_close(f);
}

int main(void) {
    json_error_t jerr;
    manifest = json_load_file(test_fixture("tiny-sd15/manifest.json"), 0, &jerr);
    if (!manifest || kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &model) ||
        kiln_backend_cpu_create(0, &cpu)) {
        fprintf(stderr, "setup failed: %s\n", kiln_last_error());
        return 1;
    }
    printf("A1111 single file:\n");
    RUN(text_encoder);
    RUN(unet);
    RUN(vae);
    kiln_model_free(model);

    /* The same weights in the diffusers layout must give the same numbers. */
    char dir[1024], cmd[4096];
    snprintf(dir, sizeof dir, "%s/golden-diffusers", KILN_BUILD_DIR);
    snprintf(cmd, sizeof cmd, "rm -rf %s && python3 %s/diffusers/materialize_diffusers_weights.py --out %s >/dev/null",
             dir, test_fixture("tiny-sd15"), dir);
    model = NULL;
    if (system(cmd) != 0 || kiln_model_load(dir, NULL, &model)) {
        fprintf(stderr, "diffusers layout: %s\n", kiln_last_error());
        return 1;
    }
    printf("diffusers folder:\n");
    RUN(text_encoder);
    RUN(unet);
    RUN(vae);
    kiln_model_free(model);
    kiln_backend_destroy(cpu);
    json_decref(manifest);
    return test_summary();
}
