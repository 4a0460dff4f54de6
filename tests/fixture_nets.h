/* fixture_nets.h — the tiny-sd15 network fixture cases run on a backend: the text encoder (clip skip 1 and 2), the
 * five U-Net cases, the two VAE decodes and the VAE encode. Each result goes to the caller's check function with the
 * case's manifest tolerance (atol): test_net_golden compares max abs error with it on the CPU backend, test_cuda_nets
 * the relative L2 error with fp16/bf16 limits on the GPU. */
#ifndef KILN_TEST_FIXTURE_NETS_H
#define KILN_TEST_FIXTURE_NETS_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "fixture_cases.h"
#include "model/model.h"
#include "net/net.h"
#include "test.h"

typedef void (*fixture_net_check)(const char *what, const float *got, const float *want, size_t n, double atol);

/* The manifest's atol for a case of a section (the section's own tolerance when it lists no cases). */
static inline double fixture_net_atol(json_t *manifest, const char *section, const char *case_name) {
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

/* A fixture tensor as float32 (caller frees); NULL, with a message, when it is missing. */
static inline float *fixture_net_f32(kiln_st_file *f, const char *name, size_t *n) {
    float *v = fixture_tensor_f32(f, name, n);
    if (!v) fprintf(stderr, "fixture tensor %s missing\n", name);
    return v;
}

static inline int fixture_net_run(kiln_backend *be, kiln_plan *p, int n, const char *const *names, void *const *bufs) {
    int rc = kiln_backend_run_named(be, p, n, names, bufs);
    if (rc) fprintf(stderr, "run failed: %s\n", kiln_last_error());
    return rc;
}

static inline void fixture_nets_text_encoder(kiln_backend *be, const kiln_model *model, json_t *manifest,
                                             fixture_net_check check) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/text_encoder.safetensors"), &f) == 0);
    if (!f) return;
    const kiln_clip_config *c = &model->config.clip[0];
    const kiln_st_tensor *ids_t = kiln_st_find(f, "input_ids");
    int32_t ids[4 * 77];
    memcpy(ids, ids_t->data, sizeof ids);
    float *embeds = malloc(sizeof(float) * 4 * 77 * c->hidden);
    CHECK(kiln_clip_embed_tokens(model->weights, c, ids, 4 * 77, embeds) == 0);
    double atol = fixture_net_atol(manifest, "text_encoder", "");
    const char *outs[2] = {"last_hidden_state", "clip_skip_2"};
    for (int skip = 1; skip <= 2; skip++) {
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_clip(p, c, 4, 77, skip) == 0);
        size_t n = 0;
        float *want = fixture_net_f32(f, outs[skip - 1], &n), *got = calloc(n, sizeof(float));
        const char *names[2] = {"embeds", "hidden"};
        void *bufs[2] = {embeds, got};
        CHECK(fixture_net_run(be, p, 2, names, bufs) == 0);
        char what[64];
        snprintf(what, sizeof what, "clip skip %d", skip);
        check(what, got, want, n, atol);
        free(want);
        free(got);
        kiln_plan_free(p);
    }
    free(embeds);
    kiln_st_close(f);
}

static inline void fixture_nets_unet(kiln_backend *be, const kiln_model *model, json_t *manifest,
                                     fixture_net_check check) {
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
        float *x = fixture_net_f32(f, nx, &n), *t = fixture_net_f32(f, nt, &n), *ctx = fixture_net_f32(f, nc, &n);
        float *want = fixture_net_f32(f, ne, &n), *got = calloc(n, sizeof(float));
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_unet(p, &model->config.unet, (int)tx->shape[0], (int)tx->shape[2], (int)tx->shape[3],
                              (int)tc->shape[1]) == 0);
        const char *names[4] = {"x", "t", "context", "out"};
        void *bufs[4] = {x, t, ctx, got};
        CHECK(fixture_net_run(be, p, 4, names, bufs) == 0);
        char what[64];
        snprintf(what, sizeof what, "unet %s", cases[i]);
        check(what, got, want, n, fixture_net_atol(manifest, "unet", cases[i]));
        kiln_plan_free(p);
        free(x), free(t), free(ctx), free(want), free(got);
    }
    kiln_st_close(f);
}

static inline void fixture_nets_vae_decode(kiln_backend *be, const kiln_model *model, json_t *manifest,
                                           fixture_net_check check) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/vae.safetensors"), &f) == 0);
    if (!f) return;
    const char *cases[] = {"decode_8x8", "decode_h16_w8"};
    for (int i = 0; i < 2; i++) {
        char nl[64], ni[64];
        snprintf(nl, sizeof nl, "%s_latent", cases[i]);
        snprintf(ni, sizeof ni, "%s_image", cases[i]);
        const kiln_st_tensor *tl = kiln_st_find(f, nl);
        CHECK(tl != NULL);
        if (!tl) continue;
        size_t n = 0;
        float *lat = fixture_net_f32(f, nl, &n), *want = fixture_net_f32(f, ni, &n), *got = calloc(n, sizeof(float));
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_vae_decoder(p, &model->config.vae, 1, (int)tl->shape[2], (int)tl->shape[3]) == 0);
        const char *names[2] = {"latent", "image"};
        void *bufs[2] = {lat, got};
        CHECK(fixture_net_run(be, p, 2, names, bufs) == 0);
        char what[64];
        snprintf(what, sizeof what, "vae %s", cases[i]);
        check(what, got, want, n, fixture_net_atol(manifest, "vae", cases[i]));
        kiln_plan_free(p);
        free(lat), free(want), free(got);
    }
    kiln_st_close(f);
}

/* The VAE encode: u8 image [64,64,3] -> [-1,1] NCHW -> mean and logvar (logvar clamped as diffusers does). */
static inline void fixture_nets_vae_encode(kiln_backend *be, const kiln_model *model, json_t *manifest,
                                           fixture_net_check check) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/vae.safetensors"), &f) == 0);
    if (!f) return;
    const kiln_st_tensor *tu = kiln_st_find(f, "encode_64x64_input_u8");
    CHECK(tu != NULL);
    if (tu) {
        const uint8_t *u8 = tu->data;
        float *img = malloc(sizeof(float) * 3 * 64 * 64);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++) img[(c * 64 + y) * 64 + x] = (float)u8[(y * 64 + x) * 3 + c] / 255.0f * 2 - 1;
        size_t n = 0;
        float *mean = fixture_net_f32(f, "encode_64x64_mean", &n), *logvar = fixture_net_f32(f, "encode_64x64_logvar", &n);
        float *gm = calloc(n, sizeof(float)), *gl = calloc(n, sizeof(float));
        kiln_plan *p = kiln_plan_new(model->weights);
        CHECK(kiln_build_vae_encoder(p, &model->config.vae, 1, 64, 64) == 0);
        const char *names[3] = {"image", "mean", "logvar"};
        void *bufs[3] = {img, gm, gl};
        CHECK(fixture_net_run(be, p, 3, names, bufs) == 0);
        for (size_t i = 0; i < n; i++) gl[i] = gl[i] < -30 ? -30 : gl[i] > 20 ? 20 : gl[i];
        double atol = fixture_net_atol(manifest, "vae", "encode_64x64");
        check("vae encode mean", gm, mean, n, atol);
        check("vae encode logvar", gl, logvar, n, atol);
        kiln_plan_free(p);
        free(img), free(mean), free(logvar), free(gm), free(gl);
    }
    kiln_st_close(f);
}

#endif
