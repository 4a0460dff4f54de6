/* test_lora.c — LoRA merging against the tiny-sd15 fixtures (lora_merged_0.8.safetensors, manifest
 * cases.lora), key mapping, restore, finding by name, and errors on synthetic files. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp */
#endif
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/model.h"
#include "net/net.h"
#include "test.h"

static kiln_model *load_model(void) {
    kiln_model *m = NULL;
    int rc = kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &m);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    return m;
}

static kiln_lora *load_tiny_lora(void) {
    kiln_lora *l = NULL;
    int rc = kiln_lora_load(test_fixture("tiny-sd15/lora/tiny_lora.safetensors"), &l);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    return l;
}

static char tmp_dir[256];

static const char *tmp_path(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmp_dir, name);
    return buf;
}

/* Compares every merged tensor of the fixture with the store: returns the number that differ in any bit. */
static int compare_with_merged(const kiln_model *m, double *max_diff, int *n_checked) {
    kiln_st_file *ref;
    int rc = kiln_st_open(test_fixture("tiny-sd15/lora_merged_0.8.safetensors"), &ref);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (rc) return -1;
    int n_inexact = 0;
    *max_diff = 0;
    *n_checked = 0;
    for (int i = 0; i < ref->n_tensors; i++) {
        const kiln_st_tensor *t = &ref->tensors[i];
        const kiln_weight *w = kiln_weights_find(m->weights, t->name);
        CHECK_MSG(w != NULL, "%s missing from the store", t->name);
        if (!w) continue;
        CHECK(w->dtype == KILN_F32);
        CHECK(w->ndim == t->ndim && !memcmp(w->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim));
        int64_t n = kiln_st_numel(t);
        float *a = malloc(sizeof *a * (size_t)n), *b = malloc(sizeof *b * (size_t)n);
        kiln_weight_to_f32(w, a);
        kiln_st_to_f32(t, b);
        double d = test_max_abs_diff(a, b, (size_t)n);
        if (d > *max_diff) *max_diff = d;
        if (memcmp(a, b, sizeof *a * (size_t)n)) n_inexact++;
        free(a);
        free(b);
        (*n_checked)++;
    }
    kiln_st_close(ref);
    return n_inexact;
}

TEST(merged_weights_match_fixture) {
    kiln_model *m = load_model();
    kiln_lora *l = load_tiny_lora();
    if (!m || !l) goto done;
    CHECK(l->n_modules == 23);
    CHECK(!strcmp(l->name, "tiny_lora"));
    CHECK(l->alias == NULL);
    kiln_lora_apply_info info;
    int rc = kiln_lora_apply_ex(m, l, 0.8f, 0.8f, &info);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, rc < 0 ? kiln_last_error() : info.unmatched);
    CHECK(info.n_applied == 23);
    CHECK(info.n_unmatched == 0);
    double max_diff;
    int n_checked;
    int n_inexact = compare_with_merged(m, &max_diff, &n_checked);
    CHECK(n_checked == 23);
    CHECK_NEAR(max_diff, 0.0, 1e-6); /* manifest cases.lora.tolerance.merged_atol */
    CHECK_MSG(n_inexact == 0, "%d of 23 merged tensors not bit-exact (max |diff| %.3g)", n_inexact, max_diff);
    printf("  merged: 23 tensors, max |diff| %.3g, %d not bit-exact\n", max_diff, n_inexact);
done:
    kiln_lora_free(l);
    kiln_model_free(m);
}

TEST(key_mapping_matches_manifest) {
    json_error_t err;
    json_t *man = json_load_file(test_fixture("tiny-sd15/manifest.json"), 0, &err);
    CHECK_MSG(man != NULL, "%s", err.text);
    kiln_model *m = load_model();
    kiln_lora_layers *layers = NULL;
    if (!man || !m || kiln_lora_layers_build(m, &layers)) goto done;
    json_t *mods = json_object_get(json_object_get(json_object_get(man, "cases"), "lora"), "modules");
    CHECK(json_array_size(mods) == 23);
    for (size_t i = 0; i < json_array_size(mods); i++) {
        json_t *md = json_array_get(mods, i);
        const char *kohya = json_string_value(json_object_get(md, "kohya"));
        const char *layer = json_string_value(json_object_get(md, "a1111_network_layer"));
        const char *weight = json_string_value(json_object_get(md, "ldm_weight"));
        const char *from = json_string_value(json_object_get(md, "multiplier_from"));
        char conv[512];
        CHECK(kiln_lora_convert_key(&m->config, kohya, conv, sizeof conv) == 0);
        CHECK_MSG(!strcmp(conv, layer), "%s -> %s, expected %s", kohya, conv, layer);
        kiln_lora_target t;
        CHECK_MSG(kiln_lora_resolve(layers, &m->config, kohya, &t) == 0, "%s unresolved", kohya);
        CHECK_MSG(!strcmp(t.weight, weight), "%s -> %s, expected %s", kohya, t.weight, weight);
        CHECK(!strcmp(t.layer, layer));
        CHECK(t.row_block == -1);
        CHECK_MSG(t.is_text_encoder == !strcmp(from, "te_multiplier"), "%s: multiplier_from %s", kohya, from);
    }
    /* More rules of A1111's convert_diffusers_name_to_compvis on this SD1 layout. */
    static const char *const cases[][2] = {
        {"lora_unet_conv_in", "diffusion_model_input_blocks_0_0"},
        {"lora_unet_conv_out", "diffusion_model_out_2"},
        {"lora_unet_time_embedding_linear_1", "diffusion_model_time_embed_0"},
        {"lora_unet_time_embedding_linear_2", "diffusion_model_time_embed_2"},
        {"lora_unet_down_blocks_2_resnets_1_conv2", "diffusion_model_input_blocks_8_0_out_layers_3"},
        {"lora_unet_down_blocks_2_downsamplers_0_conv", "diffusion_model_input_blocks_9_0_op"},
        {"lora_unet_mid_block_resnets_1_conv1", "diffusion_model_middle_block_2_in_layers_2"},
        {"lora_unet_up_blocks_0_upsamplers_0_conv", "diffusion_model_output_blocks_2_1_conv"},
        {"lora_unet_up_blocks_1_upsamplers_0_conv", "diffusion_model_output_blocks_5_2_conv"},
        {"lora_unet_up_blocks_1_resnets_2_norm1", "diffusion_model_output_blocks_5_0_in_layers_0"},
        {"lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_k",
         "diffusion_model_output_blocks_5_1_transformer_blocks_0_attn2_to_k"},
        {"lora_te_text_model_encoder_layers_2_self_attn_out_proj",
         "transformer_text_model_encoder_layers_2_self_attn_out_proj"},
        {"lora_unet_something_else", "lora_unet_something_else"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char conv[512];
        CHECK(kiln_lora_convert_key(&m->config, cases[i][0], conv, sizeof conv) == 0);
        CHECK_MSG(!strcmp(conv, cases[i][1]), "%s -> %s, expected %s", cases[i][0], conv, cases[i][1]);
    }
    /* Keys already in LDM form, and SDXL-style te1 keys on an SD1 model (A1111's fallbacks). */
    kiln_lora_target t;
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_unet_input_blocks_1_1_proj_in", &t) == 0);
    CHECK(!strcmp(t.weight, "model.diffusion_model.input_blocks.1.1.proj_in.weight"));
    CHECK(!strcmp(t.layer, "diffusion_model_input_blocks_1_1_proj_in"));
    CHECK(!t.is_text_encoder);
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_te1_text_model_encoder_layers_1_mlp_fc2", &t) == 0);
    CHECK(!strcmp(t.weight, "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"));
    CHECK(t.is_text_encoder);
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_unet_up_blocks_0_upsamplers_0_conv", &t) == 0);
    CHECK(!strcmp(t.weight, "model.diffusion_model.output_blocks.2.1.conv.weight"));
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_unet_down_blocks_3_resnets_1_time_emb_proj", &t) == 0);
    CHECK(!strcmp(t.weight, "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight"));
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_unet_down_blocks_3_attentions_0_proj_in", &t) ==
          KILN_ENOTFOUND); /* the lowest level has no attention */
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_te_text_model_encoder_layers_3_mlp_fc1", &t) ==
          KILN_ENOTFOUND); /* 3 layers */
    CHECK(kiln_lora_resolve(layers, &m->config, "lora_unet_vae_thing", &t) == KILN_ENOTFOUND);
done:
    kiln_lora_layers_free(layers);
    kiln_model_free(m);
    json_decref(man);
}

/* End to end on the CPU backend: the text encoder with the merged LoRA gives the fixture's cond and uncond
 * for <lora:tiny_lora:0.8> (txt2img_lora_euler_a_6; no emphasis, so the conditioning is the CLIP output);
 * the same compiled plan sees the new weights (version bump) and, after a restore, the old ones. */
TEST(text_encoder_with_lora_matches_fixture) {
    kiln_model *m = load_model();
    kiln_lora *l = load_tiny_lora();
    kiln_backend *cpu = NULL;
    kiln_st_file *f = NULL;
    kiln_plan *p = NULL;
    CHECK(kiln_backend_cpu_create(0, &cpu) == 0);
    CHECK(kiln_st_open(test_fixture("tiny-sd15/txt2img_lora_euler_a_6.safetensors"), &f) == 0);
    if (!m || !l || !cpu || !f) goto done;
    const kiln_clip_config *c = &m->config.clip[0];
    int32_t ids[2 * 77];
    memcpy(ids, kiln_st_find(f, "cond_tokens")->data, 77 * sizeof(int32_t));
    memcpy(ids + 77, kiln_st_find(f, "uncond_tokens")->data, 77 * sizeof(int32_t));
    size_t n = 2 * 77 * (size_t)c->hidden;
    float *embeds = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
    float *before = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n), *after = malloc(sizeof(float) * n);
    kiln_st_to_f32(kiln_st_find(f, "cond"), want);
    kiln_st_to_f32(kiln_st_find(f, "uncond"), want + n / 2);
    p = kiln_plan_new(m->weights);
    CHECK(kiln_build_clip(p, c, 2, 77, 1) == 0);
    const char *names[2] = {"embeds", "hidden"};
    CHECK(kiln_clip_embed_tokens(m->weights, c, ids, 2 * 77, embeds) == 0);
    void *bufs[2] = {embeds, before};
    CHECK(kiln_backend_run_named(cpu, p, 2, names, bufs) == 0);
    double err_before = test_max_abs_diff(before, want, n);

    CHECK(kiln_lora_apply(m, l, 0.8f, 0.8f) == 0);
    CHECK(kiln_clip_embed_tokens(m->weights, c, ids, 2 * 77, embeds) == 0);
    bufs[1] = got;
    CHECK(kiln_backend_run_named(cpu, p, 2, names, bufs) == 0);
    double err = test_max_abs_diff(got, want, n);
    printf("  cond+uncond with LoRA: max |diff| %.3g (atol 2e-5; %.3g without the LoRA)\n", err, err_before);
    CHECK(err <= 2e-5); /* manifest cases.lora.runs[0].tolerance.cond_atol */
    CHECK(err_before > 1e-3);

    /* The first UNet call of that run, with the merged UNet, on the fixture's [cond, uncond]. */
    {
        kiln_plan *u = kiln_plan_new(m->weights);
        CHECK(kiln_build_unet(u, &m->config.unet, 2, 8, 8, 77) == 0);
        float x[2 * 4 * 8 * 8], eps[2 * 4 * 8 * 8], want_eps[2 * 4 * 8 * 8], t_all[6], t[2];
        kiln_st_to_f32(kiln_st_find(f, "unet_calls_x_scaled_first"), x);
        kiln_st_to_f32(kiln_st_find(f, "unet_calls_eps_first"), want_eps);
        kiln_st_to_f32(kiln_st_find(f, "unet_calls_t"), t_all);
        t[0] = t[1] = t_all[0];
        const char *unames[4] = {"x", "t", "context", "out"};
        void *ubufs[4] = {x, t, want, eps};
        CHECK(kiln_backend_run_named(cpu, u, 4, unames, ubufs) == 0);
        double e = test_max_abs_diff(eps, want_eps, sizeof eps / sizeof eps[0]);
        printf("  first UNet call with LoRA: max |diff| %.3g (atol 3e-5, the unet cases' tolerance)\n", e);
        CHECK(e <= 3e-5);
        kiln_plan_free(u);
    }

    CHECK(kiln_model_restore_weights(m) == 23);
    bufs[1] = after;
    CHECK(kiln_backend_run_named(cpu, p, 2, names, bufs) == 0);
    CHECK(!memcmp(after, before, sizeof(float) * n));
    free(embeds);
    free(want);
    free(before);
    free(got);
    free(after);
done:
    kiln_plan_free(p);
    kiln_st_close(f);
    kiln_backend_destroy(cpu);
    kiln_lora_free(l);
    kiln_model_free(m);
}

TEST(restore_gives_back_originals) {
    kiln_model *m = load_model();
    kiln_lora *l = load_tiny_lora();
    if (!m || !l) goto done;
    const char *name = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    const char *te_name = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
    const kiln_weight *w = kiln_weights_find(m->weights, name);
    const void *orig_data = w->data;
    kiln_dtype orig_dtype = w->dtype;
    size_t nbytes = (size_t)kiln_weight_numel(w) * kiln_dtype_size(w->dtype);
    void *orig_bytes = malloc(nbytes);
    memcpy(orig_bytes, w->data, nbytes);
    uint64_t v0 = w->version;
    int n_before = m->weights->n;

    CHECK(kiln_lora_apply(m, l, 0.8f, 0.8f) == 0);
    w = kiln_weights_find(m->weights, name);
    CHECK(w->dtype == KILN_F32 && w->data != orig_data && w->version != v0);
    uint64_t v1 = w->version;
    /* Applying twice adds twice; one restore undoes both. */
    CHECK(kiln_lora_apply(m, l, 0.8f, 0.8f) == 0);
    CHECK(kiln_model_restore_weights(m) == 23);
    w = kiln_weights_find(m->weights, name);
    CHECK(w->dtype == orig_dtype && w->data == orig_data);
    CHECK(!memcmp(w->data, orig_bytes, nbytes));
    CHECK(w->version != v1 && w->version != v0); /* backends see a change again */
    CHECK(m->weights->n == n_before);
    CHECK(m->lora_backup == NULL);
    CHECK(kiln_model_restore_weights(m) == 0);

    /* After a restore the fixture result is reproduced again. */
    CHECK(kiln_lora_apply(m, l, 0.8f, 0.8f) == 0);
    double max_diff;
    int n_checked;
    CHECK(compare_with_merged(m, &max_diff, &n_checked) == 0);

    /* te multiplier 0 leaves the text encoder's values as they were (widened to float32). */
    CHECK(kiln_model_restore_weights(m) == 23);
    CHECK(kiln_lora_apply(m, l, 0.0f, 0.8f) == 0);
    w = kiln_weights_find(m->weights, te_name);
    int64_t n = kiln_weight_numel(w);
    float *got = malloc(sizeof *got * (size_t)n);
    kiln_weight_to_f32(w, got);
    kiln_model_restore_weights(m);
    w = kiln_weights_find(m->weights, te_name);
    float *want = malloc(sizeof *want * (size_t)n);
    kiln_weight_to_f32(w, want);
    CHECK(!memcmp(got, want, sizeof *got * (size_t)n));
    free(got);
    free(want);
    free(orig_bytes);
done:
    kiln_lora_free(l);
    kiln_model_free(m);
}

/* Writes a LoRA file of the given tensors (all float32) and metadata. */
typedef struct syn_tensor {
    const char *name;
    int ndim;
    int64_t shape[4];
} syn_tensor;

static int write_lora(const char *path, const syn_tensor *ts, int n, const char *alias) {
    kiln_st_write_tensor wt[16];
    float *bufs[16];
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) numel *= ts[i].shape[d];
        bufs[i] = malloc(sizeof(float) * (size_t)numel);
        for (int64_t k = 0; k < numel; k++) /* arbitrary non-trivial float32 values */
            bufs[i][k] = (float)((double)((k * 7919 + i * 104729) % 2001 - 1000) / 997.0);
        if (strstr(ts[i].name, ".alpha")) bufs[i][0] = 1.0f;
        wt[i] = (kiln_st_write_tensor){ts[i].name, KILN_F32, ts[i].ndim, ts[i].shape, bufs[i]};
    }
    const char *keys[] = {"ss_output_name"};
    const char *values[] = {alias};
    int rc = kiln_st_write(path, wt, n, keys, values, alias ? 1 : 0);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return rc;
}

TEST(synthetic_rank3_alpha_and_no_alpha) {
    /* Rank 3 with alpha 1 (scale = float(1/3)) on a Linear, rank 3 without alpha on a 1x1 conv given
     * 2-D factors, rank 64 with alpha 1, checked against the formula evaluated here in the same float32
     * order. */
    syn_tensor ts[] = {
        {"lora_te_text_model_encoder_layers_2_mlp_fc2.lora_down.weight", 2, {3, 256}},
        {"lora_te_text_model_encoder_layers_2_mlp_fc2.lora_up.weight", 2, {128, 3}},
        {"lora_te_text_model_encoder_layers_2_mlp_fc2.alpha", 0, {0}},
        {"lora_unet_mid_block_attentions_0_proj_out.lora_down.weight", 2, {3, 128}},
        {"lora_unet_mid_block_attentions_0_proj_out.lora_up.weight", 2, {128, 3}},
        /* rank 64: large enough for the threaded path */
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", 2, {64, 128}},
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", 2, {256, 64}},
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", 0, {0}},
    };
    const char *path = tmp_path("syn.safetensors");
    CHECK_MSG(write_lora(path, ts, 8, NULL) == 0, "%s", kiln_last_error());
    kiln_model *m = load_model();
    kiln_lora *l = NULL;
    CHECK_MSG(kiln_lora_load(path, &l) == 0, "%s", kiln_last_error());
    if (!m || !l) goto done;
    CHECK(l->n_modules == 3);
    const char *names[3] = {"cond_stage_model.transformer.text_model.encoder.layers.2.mlp.fc2.weight",
                            "model.diffusion_model.middle_block.1.proj_out.weight",
                            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"};
    float *orig[3];
    for (int k = 0; k < 3; k++) {
        const kiln_weight *w = kiln_weights_find(m->weights, names[k]);
        orig[k] = malloc(sizeof(float) * (size_t)kiln_weight_numel(w));
        kiln_weight_to_f32(w, orig[k]);
    }
    const float te = 0.7f, unet = 1.3f;
    CHECK(kiln_lora_apply(m, l, te, unet) == 0);
    for (int k = 0; k < 3; k++) {
        const kiln_lora_module *md = &l->modules[k];
        const int rank = (int)md->down->shape[0];
        const kiln_weight *w = kiln_weights_find(m->weights, names[k]);
        int64_t out = w->shape[0], in = kiln_weight_numel(w) / out;
        float *up = malloc(sizeof(float) * (size_t)(out * rank)), *down = malloc(sizeof(float) * (size_t)(rank * in));
        kiln_st_to_f32(md->up, up);
        kiln_st_to_f32(md->down, down);
        float *got = malloc(sizeof(float) * (size_t)(out * in));
        kiln_weight_to_f32(w, got);
        float scale = md->has_alpha ? (float)(1.0 / rank) : 1.0f, mult = k == 1 ? unet : te;
        CHECK(md->has_alpha == (k != 1));
        CHECK(rank == (k == 2 ? 64 : 3));
        int bad = 0;
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < in; i++) {
                float s = 0.0f;
                for (int r = 0; r < rank; r++) {
                    float p = up[o * rank + r] * down[r * in + i];
                    s = s + p;
                }
                float v = s * scale;
                v = v * mult;
                float want = orig[k][o * in + i] + v;
                if (memcmp(&want, &got[o * in + i], sizeof want)) bad++;
            }
        CHECK_MSG(bad == 0, "%s: %d values differ", names[k], bad);
        free(up);
        free(down);
        free(got);
        free(orig[k]);
    }
done:
    kiln_lora_free(l);
    kiln_model_free(m);
}

/* kiln_model_load does not take SD2/SDXL files yet: a model with their weights as views and the
 * config fields the LoRA code reads (family, levels, resnets per level, attention levels). */
static kiln_model *load_other(const char *rel) {
    int sdxl = strstr(rel, "sdxl") != NULL;
    kiln_model *m = calloc(1, sizeof *m);
    kiln_st_file *f = NULL;
    int rc = kiln_st_open(test_fixture(rel), &f);
    CHECK_MSG(rc == 0, "%s: %s", rel, kiln_last_error());
    if (rc) {
        free(m);
        return NULL;
    }
    m->files[m->n_files++] = f;
    m->weights = kiln_weights_new();
    for (int i = 0; i < f->n_tensors; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        if (t->dtype == KILN_F16 || t->dtype == KILN_F32)
            kiln_weights_add_view(m->weights, t->name, t->dtype, t->ndim, t->shape, t->data, f->path);
    }
    kiln_model_config *c = &m->config;
    c->family = sdxl ? KILN_FAMILY_SDXL : KILN_FAMILY_SD2;
    c->n_text_encoders = sdxl ? 2 : 1;
    c->unet.num_res_blocks = 2;
    c->unet.n_levels = sdxl ? 3 : 4;
    for (int l = 0; l < c->unet.n_levels; l++)
        c->unet.transformer_depth[l] = sdxl ? (l > 0) : (l < 3);
    return m;
}

static void check_resolve(const kiln_model *m, const kiln_lora_layers *layers, const char *key, const char *weight,
                          int row_block, int is_te) {
    kiln_lora_target t;
    int rc = kiln_lora_resolve(layers, &m->config, key, &t);
    CHECK_MSG(rc == 0, "%s unresolved", key);
    if (rc) return;
    CHECK_MSG(!strcmp(t.weight, weight), "%s -> %s, expected %s", key, t.weight, weight);
    CHECK_MSG(t.row_block == row_block && t.is_text_encoder == is_te, "%s: row %d te %d", key, t.row_block,
              t.is_text_encoder);
}

TEST(sd2_and_sdxl_keys) {
    kiln_model *m = load_other("tiny-sd21/model.safetensors");
    kiln_lora_layers *layers = NULL;
    if (m && !kiln_lora_layers_build(m, &layers)) {
        const char *te = "cond_stage_model.model.transformer.resblocks.0.";
        char w[256];
        snprintf(w, sizeof w, "%smlp.c_fc.weight", te);
        check_resolve(m, layers, "lora_te_text_model_encoder_layers_0_mlp_fc1", w, -1, 1);
        snprintf(w, sizeof w, "%smlp.c_proj.weight", te);
        check_resolve(m, layers, "lora_te_text_model_encoder_layers_0_mlp_fc2", w, -1, 1);
        snprintf(w, sizeof w, "%sattn.in_proj_weight", te);
        check_resolve(m, layers, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", w, 0, 1);
        check_resolve(m, layers, "lora_te_text_model_encoder_layers_0_self_attn_v_proj", w, 2, 1);
        snprintf(w, sizeof w, "%sattn.out_proj.weight", te);
        check_resolve(m, layers, "lora_te_text_model_encoder_layers_0_self_attn_out_proj", w, -1, 1);
        check_resolve(m, layers, "lora_unet_down_blocks_1_attentions_1_proj_in",
                      "model.diffusion_model.input_blocks.5.1.proj_in.weight", -1, 0);
        check_resolve(m, layers, "lora_unet_up_blocks_0_upsamplers_0_conv",
                      "model.diffusion_model.output_blocks.2.1.conv.weight", -1, 0);
    }
    kiln_lora_layers_free(layers);
    layers = NULL;
    kiln_model_free(m);

    m = load_other("tiny-sdxl/model.safetensors");
    if (m && !kiln_lora_layers_build(m, &layers)) {
        /* SDXL kohya files name the UNet in LDM form and the encoders te1 / te2 */
        check_resolve(m, layers, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
                      "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", -1, 0);
        check_resolve(m, layers, "lora_unet_output_blocks_2_2_conv", "model.diffusion_model.output_blocks.2.2.conv.weight",
                      -1, 0);
        check_resolve(m, layers, "lora_te1_text_model_encoder_layers_0_self_attn_k_proj",
                      "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight", -1, 1);
        check_resolve(m, layers, "lora_te2_text_model_encoder_layers_0_mlp_fc2",
                      "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.weight", -1, 1);
        check_resolve(m, layers, "lora_te2_text_model_encoder_layers_0_self_attn_k_proj",
                      "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", 1, 1);
        /* diffusers-named UNet keys with SDXL's block layout (3 levels, attention on levels 1 and 2) */
        check_resolve(m, layers, "lora_unet_down_blocks_1_attentions_0_proj_in",
                      "model.diffusion_model.input_blocks.4.1.proj_in.weight", -1, 0);
        check_resolve(m, layers, "lora_unet_up_blocks_0_upsamplers_0_conv",
                      "model.diffusion_model.output_blocks.2.2.conv.weight", -1, 0);
        kiln_lora_target t;
        CHECK(kiln_lora_resolve(layers, &m->config, "lora_te_text_model_encoder_layers_0_mlp_fc1", &t) ==
              KILN_ENOTFOUND); /* SDXL has no cond_stage_model */
    }
    kiln_lora_layers_free(layers);
    kiln_model_free(m);
}

/* OpenCLIP q/k/v go into thirds of the fused in_proj_weight; A1111 merges them only as a set with out. */
TEST(sd2_fused_qkv_merge) {
    kiln_model *m = load_other("tiny-sd21/model.safetensors");
    if (!m) return;
    const char *in_name = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight";
    const char *out_name = "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight";
    syn_tensor ts[] = {
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", 2, {2, 64}},
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", 2, {64, 2}},
        {"lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight", 2, {2, 64}},
        {"lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight", 2, {64, 2}},
        {"lora_te_text_model_encoder_layers_0_self_attn_v_proj.lora_down.weight", 2, {2, 64}},
        {"lora_te_text_model_encoder_layers_0_self_attn_v_proj.lora_up.weight", 2, {64, 2}},
        {"lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_down.weight", 2, {2, 64}},
        {"lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight", 2, {64, 2}},
    };
    kiln_lora *l = NULL, *partial = NULL;
    CHECK(write_lora(tmp_path("qkv.safetensors"), ts, 8, NULL) == 0);
    CHECK(write_lora(tmp_path("qk.safetensors"), ts, 4, NULL) == 0);
    CHECK(kiln_lora_load(tmp_path("qkv.safetensors"), &l) == 0);
    CHECK(kiln_lora_load(tmp_path("qk.safetensors"), &partial) == 0);
    if (!l || !partial) goto done;
    float *orig = malloc(sizeof(float) * 192 * 64), *got = malloc(sizeof(float) * 192 * 64);
    kiln_weight_to_f32(kiln_weights_find(m->weights, in_name), orig);

    kiln_lora_apply_info info;
    CHECK(kiln_lora_apply_ex(m, partial, 0.5f, 1.0f, &info) == 2); /* q and k without v and out: skipped */
    CHECK(info.n_applied == 0 && strstr(info.unmatched, "q_proj") && strstr(info.unmatched, "k_proj"));
    CHECK(kiln_weights_find(m->weights, in_name)->dtype == KILN_F16);

    CHECK(kiln_lora_apply_ex(m, l, 0.5f, 1.0f, &info) == 0);
    CHECK(info.n_applied == 4);
    kiln_weight_to_f32(kiln_weights_find(m->weights, in_name), got);
    int bad = 0;
    for (int blk = 0; blk < 3; blk++) {
        const kiln_lora_module *md = NULL;
        const char *want_key[] = {"q_proj", "k_proj", "v_proj"};
        for (int i = 0; i < l->n_modules; i++)
            if (strstr(l->modules[i].key, want_key[blk])) md = &l->modules[i];
        float up[128], down[128];
        kiln_st_to_f32(md->up, up);
        kiln_st_to_f32(md->down, down);
        for (int o = 0; o < 64; o++)
            for (int c = 0; c < 64; c++) {
                float s = 0.0f;
                for (int r = 0; r < 2; r++) s = s + up[o * 2 + r] * down[r * 64 + c];
                float v = s * 1.0f;
                v = v * 0.5f;
                float want = orig[(blk * 64 + o) * 64 + c] + v;
                bad += memcmp(&want, &got[(blk * 64 + o) * 64 + c], sizeof want) != 0;
            }
    }
    CHECK_MSG(bad == 0, "%d in_proj values differ", bad);
    CHECK(kiln_weights_find(m->weights, out_name)->dtype == KILN_F32);
    CHECK(kiln_model_restore_weights(m) == 2);
    free(orig);
    free(got);
done:
    kiln_lora_free(l);
    kiln_lora_free(partial);
    kiln_model_free(m);
}

TEST(find_by_name_and_alias) {
    char path[1024];
    CHECK_MSG(kiln_lora_find(test_fixture("tiny-sd15/lora"), "tiny_lora", path, sizeof path) == 0, "%s",
              kiln_last_error());
    CHECK(strstr(path, "tiny-sd15/lora/tiny_lora.safetensors") != NULL);
    CHECK(kiln_lora_find(test_fixture("tiny-sd15/lora"), "nope", path, sizeof path) == KILN_ENOTFOUND);
    CHECK(strstr(kiln_last_error(), "nope") != NULL);
    CHECK(kiln_lora_find(tmp_path("no_such_dir"), "tiny_lora", path, sizeof path) == KILN_ENOTFOUND);

    /* A file in a subfolder whose ss_output_name differs from its stem. */
    char sub[512];
    snprintf(sub, sizeof sub, "%s", tmp_path("loras"));
    mkdir(sub, 0700);
    snprintf(sub, sizeof sub, "%s", tmp_path("loras/style"));
    mkdir(sub, 0700);
    syn_tensor ts[] = {
        {"lora_unet_conv_in.lora_down.weight", 4, {2, 4, 3, 3}},
        {"lora_unet_conv_in.lora_up.weight", 4, {32, 2, 1, 1}},
    };
    CHECK(write_lora(tmp_path("loras/style/file_v2.safetensors"), ts, 2, "watercolor") == 0);
    CHECK(kiln_lora_find(tmp_path("loras"), "watercolor", path, sizeof path) == 0);
    CHECK(strstr(path, "loras/style/file_v2.safetensors") != NULL);
    CHECK(kiln_lora_find(tmp_path("loras"), "file_v2", path, sizeof path) == 0);
    kiln_lora *l = NULL;
    CHECK(kiln_lora_load(path, &l) == 0);
    if (l) {
        CHECK(!strcmp(l->name, "file_v2") && l->alias && !strcmp(l->alias, "watercolor"));
        /* LoCon 3x3 down on conv_in [32, 4, 3, 3] fits. */
        kiln_model *m = load_model();
        if (m) {
            CHECK(kiln_lora_apply(m, l, 1.0f, 1.0f) == 0);
            const kiln_weight *w = kiln_weights_find(m->weights, "model.diffusion_model.input_blocks.0.0.weight");
            CHECK(w->dtype == KILN_F32);
        }
        kiln_model_free(m);
    }
    kiln_lora_free(l);
}

/* PEFT names (lora_A = down, lora_B = up) merge like kohya names; an inpainting model's 9-channel conv_in
 * takes a 4-channel LoRA in its first 4 input channels (A1111 zero-pads updown); bad factors are refused. */
TEST(peft_names_inpainting_and_bad_factors) {
    kiln_model *m = load_model();
    if (!m) return;
    syn_tensor kohya[] = {
        {"lora_unet_conv_in.lora_down.weight", 4, {2, 4, 3, 3}},
        {"lora_unet_conv_in.lora_up.weight", 4, {32, 2, 1, 1}},
    };
    syn_tensor peft[] = {
        {"lora_unet_conv_in.lora_A.weight", 4, {2, 4, 3, 3}},
        {"lora_unet_conv_in.lora_B.weight", 4, {32, 2, 1, 1}},
    };
    CHECK(write_lora(tmp_path("kohya.safetensors"), kohya, 2, NULL) == 0);
    CHECK(write_lora(tmp_path("peft.safetensors"), peft, 2, NULL) == 0);
    kiln_lora *a = NULL, *b = NULL;
    CHECK(kiln_lora_load(tmp_path("kohya.safetensors"), &a) == 0);
    CHECK(kiln_lora_load(tmp_path("peft.safetensors"), &b) == 0);
    const char *name = "model.diffusion_model.input_blocks.0.0.weight";
    float ka[32 * 4 * 9], kb[32 * 4 * 9], orig[32 * 4 * 9];
    kiln_weight_to_f32(kiln_weights_find(m->weights, name), orig);
    if (a && b) {
        CHECK(kiln_lora_apply(m, a, 1.0f, 0.6f) == 0);
        kiln_weight_to_f32(kiln_weights_find(m->weights, name), ka);
        kiln_model_restore_weights(m);
        CHECK(kiln_lora_apply(m, b, 1.0f, 0.6f) == 0);
        kiln_weight_to_f32(kiln_weights_find(m->weights, name), kb);
        kiln_model_restore_weights(m);
        CHECK(!memcmp(ka, kb, sizeof ka) && memcmp(ka, orig, sizeof ka));

        /* the same conv_in widened to 9 input channels (channels 4..8 = 0.25) */
        static float w9[32 * 9 * 9];
        for (int o = 0; o < 32; o++)
            for (int ch = 0; ch < 9; ch++)
                for (int k = 0; k < 9; k++) w9[(o * 9 + ch) * 9 + k] = ch < 4 ? orig[(o * 4 + ch) * 9 + k] : 0.25f;
        float *owned = malloc(sizeof w9);
        memcpy(owned, w9, sizeof w9);
        int64_t shape[4] = {32, 9, 3, 3};
        CHECK(kiln_weights_add_owned_f32(m->weights, name, 4, shape, owned, "test") == 0);
        CHECK(kiln_lora_apply(m, a, 1.0f, 0.6f) == 0);
        const kiln_weight *w = kiln_weights_find(m->weights, name);
        CHECK(w->shape[1] == 9);
        float got[32 * 9 * 9];
        kiln_weight_to_f32(w, got);
        int bad = 0;
        for (int o = 0; o < 32; o++)
            for (int ch = 0; ch < 9; ch++)
                for (int k = 0; k < 9; k++) {
                    float want = ch < 4 ? ka[(o * 4 + ch) * 9 + k] : 0.25f;
                    bad += memcmp(&want, &got[(o * 9 + ch) * 9 + k], sizeof want) != 0;
                }
        CHECK_MSG(bad == 0, "%d values differ", bad);
        CHECK(kiln_model_restore_weights(m) == 1);
        CHECK(!memcmp(kiln_weights_find(m->weights, name)->data, w9, sizeof w9)); /* the owned original is back */
    }
    kiln_lora_free(a);
    kiln_lora_free(b);
    a = NULL;

    /* rank of lora_up (3) differs from lora_down's (2); an alpha that is not a scalar */
    syn_tensor rank[] = {
        {"lora_unet_conv_in.lora_down.weight", 4, {2, 4, 3, 3}},
        {"lora_unet_conv_in.lora_up.weight", 4, {32, 3, 1, 1}},
    };
    CHECK(write_lora(tmp_path("rank.safetensors"), rank, 2, NULL) == 0);
    CHECK(kiln_lora_load(tmp_path("rank.safetensors"), &a) == 0);
    if (a) {
        CHECK(kiln_lora_apply(m, a, 1.0f, 1.0f) == KILN_EINVAL);
        CHECK(strstr(kiln_last_error(), "[32, 3, 1, 1]") && strstr(kiln_last_error(), "[2, 4, 3, 3]"));
    }
    kiln_lora_free(a);
    a = NULL;
    syn_tensor alpha[] = {
        {"lora_unet_conv_in.lora_down.weight", 4, {2, 4, 3, 3}},
        {"lora_unet_conv_in.lora_up.weight", 4, {32, 2, 1, 1}},
        {"lora_unet_conv_in.alpha", 1, {2}},
    };
    CHECK(write_lora(tmp_path("alpha.safetensors"), alpha, 3, NULL) == 0);
    CHECK(kiln_lora_load(tmp_path("alpha.safetensors"), &a) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "lora_unet_conv_in.alpha") != NULL);
    kiln_model_free(m);
}

TEST(errors) {
    kiln_lora *l = NULL;
    /* from memory: the same modules; garbage is refused with a message */
    FILE *fp = fopen(test_fixture("tiny-sd15/lora/tiny_lora.safetensors"), "rb");
    static uint8_t bytes[1 << 17];
    size_t nb = fp ? fread(bytes, 1, sizeof bytes, fp) : 0;
    if (fp) fclose(fp);
    CHECK(nb > 1000 && nb < sizeof bytes);
    CHECK(kiln_lora_load_memory(bytes, nb, "mem/tiny_lora.safetensors", &l) == 0);
    CHECK(l && l->n_modules == 23 && !strcmp(l->name, "tiny_lora"));
    kiln_lora_free(l);
    l = NULL;
    CHECK(kiln_lora_load_memory(bytes, 100, "cut.safetensors", &l) < 0 && l == NULL);
    CHECK(strstr(kiln_last_error(), "cut.safetensors") != NULL);

    CHECK(kiln_lora_load(tmp_path("missing.safetensors"), &l) < 0);
    CHECK(strstr(kiln_last_error(), "missing.safetensors") != NULL);
    CHECK(l == NULL);

    /* A shape that does not fit: rank-2 factors for conv_in with 5 input channels. */
    syn_tensor bad[] = {
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, {2, 32}},
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 2, {32, 2}},
        {"lora_unet_conv_in.lora_down.weight", 2, {2, 5}},
        {"lora_unet_conv_in.lora_up.weight", 2, {32, 2}},
    };
    CHECK(write_lora(tmp_path("bad.safetensors"), bad, 4, NULL) == 0);
    kiln_model *m = load_model();
    CHECK(kiln_lora_load(tmp_path("bad.safetensors"), &l) == 0);
    if (m && l) {
        const kiln_weight *w = kiln_weights_find(m->weights, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
        uint64_t v = w->version;
        CHECK(kiln_lora_apply(m, l, 1.0f, 1.0f) == KILN_EINVAL);
        const char *msg = kiln_last_error();
        CHECK_MSG(strstr(msg, "lora_unet_conv_in") && strstr(msg, "[2, 5]") && strstr(msg, "[32, 4, 3, 3]") &&
                      strstr(msg, "input_blocks.0.0.weight"),
                  "%s", msg);
        w = kiln_weights_find(m->weights, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
        CHECK(w->version == v && w->dtype == KILN_F16); /* nothing applied */
        CHECK(m->lora_backup == NULL);
    }
    kiln_lora_free(l);
    l = NULL;

    /* Unknown keys are skipped and counted, the rest applied. */
    syn_tensor unk[] = {
        {"lora_unet_no_such_layer.lora_down.weight", 2, {2, 32}},
        {"lora_unet_no_such_layer.lora_up.weight", 2, {32, 2}},
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, {2, 32}},
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 2, {32, 2}},
    };
    CHECK(write_lora(tmp_path("unk.safetensors"), unk, 4, NULL) == 0);
    CHECK(kiln_lora_load(tmp_path("unk.safetensors"), &l) == 0);
    if (m && l) {
        kiln_lora_apply_info info;
        CHECK(kiln_lora_apply_ex(m, l, 1.0f, 1.0f, &info) == 1);
        CHECK(info.n_applied == 1 && info.n_unmatched == 1);
        CHECK(!strcmp(info.unmatched, "lora_unet_no_such_layer"));
    }
    kiln_lora_free(l);
    l = NULL;

    /* A module with only one factor, and a LyCORIS part kiln does not handle. */
    syn_tensor half[] = {{"lora_unet_conv_in.lora_down.weight", 2, {2, 4}}};
    CHECK(write_lora(tmp_path("half.safetensors"), half, 1, NULL) == 0);
    CHECK(kiln_lora_load(tmp_path("half.safetensors"), &l) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "lora_unet_conv_in") && strstr(kiln_last_error(), "lora_up.weight"));
    syn_tensor loha[] = {{"lora_unet_conv_in.hada_w1_a", 2, {2, 4}}};
    CHECK(write_lora(tmp_path("loha.safetensors"), loha, 1, NULL) == 0);
    CHECK(kiln_lora_load(tmp_path("loha.safetensors"), &l) == KILN_EUNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "hada_w1_a") != NULL);
    CHECK(l == NULL);
    kiln_model_free(m);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/kiln_test_lora_XXXXXX");
    if (!mkdtemp(tmp_dir)) return 1;
    RUN(merged_weights_match_fixture);
    RUN(key_mapping_matches_manifest);
    RUN(text_encoder_with_lora_matches_fixture);
    RUN(restore_gives_back_originals);
    RUN(synthetic_rank3_alpha_and_no_alpha);
    RUN(sd2_and_sdxl_keys);
    RUN(sd2_fused_qkv_merge);
    RUN(find_by_name_and_alias);
    RUN(peft_names_inpainting_and_bad_factors);
    RUN(errors);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return test_summary();
}
