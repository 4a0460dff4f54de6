/* test_model_diffusers.c — diffusers folder and separate VAE file loading against the fixtures.
 *
 * The fixtures' weights_index.json pairs every diffusers tensor with its LDM name: it checks the name mapping.
 * The materializer scripts write the diffusers weight files (byte copies of model.safetensors tensors) into the
 * build tree; loading that folder must give the same store as the LDM file: same names, shapes and bytes. */
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "model/model.h"
#include "test.h"

#ifndef KILN_BUILD_DIR
#define KILN_BUILD_DIR "."
#endif
#define WORK KILN_BUILD_DIR "/test_model_diffusers.d"


/* main's model.c calls the tokenizer, which has not landed yet: weak stand-ins so this test links meanwhile
 * (the real functions replace them once they are in the library). */
__attribute__((weak)) int kiln_tokenizer_load(const char *path, kiln_tokenizer **out) {
    return kiln_error(KILN_EUNSUPPORTED, "%s: no tokenizer in this build", path ? path : "(default)");
}
__attribute__((weak)) void kiln_tokenizer_free(kiln_tokenizer *tok) { (void)tok; }

static void model_init(struct kiln_model *m) {
    memset(m, 0, sizeof *m);
    m->weights = kiln_weights_new();
}

static void model_done(struct kiln_model *m) {
    for (int i = 0; i < m->n_files; i++) kiln_st_close(m->files[i]);
    kiln_weights_free(m->weights);
    free(m->vocab_dir);
    memset(m, 0, sizeof *m);
}

static int sh(const char *cmd) {
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- name mapping against weights_index.json ---- */

typedef struct fixture_layout {
    const char *name;       /* fixture folder */
    int nrb, n_levels;        /* UNet */
    int attn[KILN_MAX_LEVELS];
    int vae_levels;
    const char *text_encoder; /* component string for text_encoder/ */
} fixture_layout;

static const fixture_layout SD15 = {"tiny-sd15", 2, 4, {1, 1, 1, 0}, 4, "text_encoder"};
static const fixture_layout SD21 = {"tiny-sd21", 2, 4, {1, 1, 1, 0}, 4, "text_encoder_sd2"};
static const fixture_layout SDXL = {"tiny-sdxl", 2, 3, {0, 1, 1, 0}, 4, "text_encoder_sdxl"};

static int check_index_names(const fixture_layout *fx) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/diffusers/weights_index.json", fx->name);
    json_error_t err;
    json_t *idx = json_load_file(test_fixture(rel), 0, &err);
    CHECK_MSG(idx != NULL, "%s: %s", rel, err.text);
    if (!idx) return 0;
    json_t *files = json_object_get(idx, "files");
    int n = 0, bad = 0;
    for (size_t i = 0; i < json_array_size(files); i++) {
        json_t *comp = json_array_get(files, i);
        const char *path = json_string_value(json_object_get(comp, "path"));
        const char *component = !strncmp(path, "unet/", 5)             ? "unet"
                                : !strncmp(path, "vae/", 4)            ? "vae"
                                : !strncmp(path, "text_encoder_2/", 15) ? "text_encoder_2"
                                                                       : fx->text_encoder;
        json_t *tensors = json_object_get(comp, "tensors");
        for (size_t k = 0; k < json_array_size(tensors); k++) {
            json_t *e = json_array_get(tensors, k);
            const char *name = json_string_value(json_object_get(e, "name"));
            const char *want = json_string_value(json_object_get(e, "source_name"));
            char got[512] = "";
            int levels = !strcmp(component, "vae") ? fx->vae_levels : fx->n_levels;
            int rc = kiln_diffusers_to_ldm(component, name, fx->nrb, levels, fx->attn, got, sizeof got);
            if (rc != 0 || strcmp(got, want)) {
                if (bad++ < 10)
                    fprintf(stderr, "%s %s: %s -> %s (rc %d: %s), want %s\n", fx->name, component, name, got, rc,
                            kiln_last_error(), want);
            }
            n++;
        }
    }
    json_decref(idx);
    CHECK_MSG(bad == 0, "%s: %d of %d names mapped wrongly", fx->name, bad, n);
    return n;
}

TEST(names_sd15) { CHECK(check_index_names(&SD15) == 982); }
TEST(names_sd21) { CHECK(check_index_names(&SD21) == 966); }
TEST(names_sdxl) { CHECK(check_index_names(&SDXL) == 985); }

static const char *map(const char *component, const char *name, int nrb, int n_levels, const int *attn) {
    static char out[512];
    strcpy(out, "<error>");
    if (kiln_diffusers_to_ldm(component, name, nrb, n_levels, attn, out, sizeof out) != 0) return "<error>";
    return out;
}

/* Other block counts than the fixtures': the arithmetic, not a table. */
TEST(names_other_layouts) {
    static const int attn3[4] = {1, 1, 0, 0};
    /* 1 resnet per level, 3 levels: input_blocks 1 (res), 2 (down), 3 (res), 4 (down), 5 (res). */
    CHECK(!strcmp(map("unet", "down_blocks.1.resnets.0.conv1.weight", 1, 3, attn3),
                  "model.diffusion_model.input_blocks.3.0.in_layers.2.weight"));
    CHECK(!strcmp(map("unet", "down_blocks.0.downsamplers.0.conv.bias", 1, 3, attn3),
                  "model.diffusion_model.input_blocks.2.0.op.bias"));
    CHECK(!strcmp(map("unet", "down_blocks.2.resnets.0.conv_shortcut.weight", 1, 3, attn3),
                  "model.diffusion_model.input_blocks.5.0.skip_connection.weight"));
    /* up block 0 = level 2 (no attention): upsampler in output_blocks.1.1; up block 1 = level 1: .2 */
    CHECK(!strcmp(map("unet", "up_blocks.0.upsamplers.0.conv.weight", 1, 3, attn3),
                  "model.diffusion_model.output_blocks.1.1.conv.weight"));
    CHECK(!strcmp(map("unet", "up_blocks.1.upsamplers.0.conv.weight", 1, 3, attn3),
                  "model.diffusion_model.output_blocks.3.2.conv.weight"));
    CHECK(!strcmp(map("unet", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight", 1, 3, attn3),
                  "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"));
    /* 3 resnets per level (4 per up block) */
    CHECK(!strcmp(map("unet", "down_blocks.1.attentions.2.proj_in.weight", 3, 4, SD15.attn),
                  "model.diffusion_model.input_blocks.7.1.proj_in.weight"));
    CHECK(!strcmp(map("unet", "up_blocks.1.resnets.3.time_emb_proj.bias", 3, 4, SD15.attn),
                  "model.diffusion_model.output_blocks.7.0.emb_layers.1.bias"));
    CHECK(!strcmp(map("unet", "up_blocks.1.upsamplers.0.conv.bias", 3, 4, SD15.attn),
                  "model.diffusion_model.output_blocks.7.2.conv.bias"));
    CHECK(!strcmp(map("unet", "add_embedding.linear_2.weight", 2, 3, SDXL.attn),
                  "model.diffusion_model.label_emb.0.2.weight"));
    /* old diffusers VAE attention names */
    CHECK(!strcmp(map("vae", "decoder.mid_block.attentions.0.proj_attn.weight", 0, 4, NULL),
                  "first_stage_model.decoder.mid.attn_1.proj_out.weight"));
    CHECK(!strcmp(map("vae", "encoder.mid_block.attentions.0.query.bias", 0, 4, NULL),
                  "first_stage_model.encoder.mid.attn_1.q.bias"));
    CHECK(!strcmp(map("vae", "decoder.up_blocks.0.upsamplers.0.conv.weight", 0, 3, NULL),
                  "first_stage_model.decoder.up.2.upsample.conv.weight"));
    CHECK(!strcmp(map("text_encoder_2", "text_model.encoder.layers.5.self_attn.v_proj.bias", 0, 0, NULL),
                  "conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_bias"));
    CHECK(!strcmp(map("text_encoder_sd2", "text_projection.weight", 0, 0, NULL),
                  "cond_stage_model.model.text_projection"));
}

TEST(names_without_counterpart) {
    char out[512];
    /* past the last level / resnet, downsampler of the last level, attention at a level without one */
    static const char *const bad_unet[] = {
        "down_blocks.4.resnets.0.conv1.weight", "down_blocks.0.resnets.2.conv1.weight",
        "down_blocks.3.downsamplers.0.conv.weight", "up_blocks.0.attentions.0.norm.weight",
        "up_blocks.3.upsamplers.0.conv.weight", "up_blocks.1.resnets.3.conv1.weight",
        "mid_block.resnets.2.conv1.weight", "down_blocks.0.resnets.0.bogus.weight", "foo.weight",
        "down_blocks.x.resnets.0.conv1.weight", "conv_in", "mid_block.attentions.0.",
    };
    for (size_t i = 0; i < sizeof bad_unet / sizeof bad_unet[0]; i++) {
        int rc = kiln_diffusers_to_ldm("unet", bad_unet[i], 2, 4, SD15.attn, out, sizeof out);
        CHECK_MSG(rc == KILN_ENOTFOUND, "%s -> rc %d (%s)", bad_unet[i], rc, rc ? "" : out);
        if (rc == KILN_ENOTFOUND) CHECK(strstr(kiln_last_error(), bad_unet[i]) != NULL);
    }
    CHECK(kiln_diffusers_to_ldm("vae", "encoder.up_blocks.0.resnets.0.conv1.weight", 0, 4, NULL, out, sizeof out) ==
          KILN_ENOTFOUND);
    CHECK(kiln_diffusers_to_ldm("text_encoder", "vision_model.x.weight", 0, 0, NULL, out, sizeof out) ==
          KILN_ENOTFOUND);
    CHECK(kiln_diffusers_to_ldm("text_encoder_2", "text_model.embeddings.position_ids", 0, 0, NULL, out,
                                sizeof out) == KILN_ENOTFOUND);
    CHECK(kiln_diffusers_to_ldm("transformer", "x.weight", 2, 4, SD15.attn, out, sizeof out) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "transformer") != NULL);
    /* too small an output buffer is an error, never a truncated name */
    CHECK(kiln_diffusers_to_ldm("unet", "conv_in.weight", 2, 4, SD15.attn, out, 10) == KILN_EINVAL);
}

/* ---- loading whole folders ---- */

/* Writes the complete diffusers folder of a fixture under WORK/<fixture>/diffusers (once per build tree). The
 * SD2/SDXL materializers write next to themselves, so they run from a copy with model.safetensors linked. */
static const char *materialize(const fixture_layout *fx) {
    static char dir[1024];
    char cmd[16384], src[1024], marker[1100];
    snprintf(dir, sizeof dir, "%s/%s/diffusers", WORK, fx->name);
    snprintf(marker, sizeof marker, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    if (exists(marker)) return dir;
    snprintf(src, sizeof src, "%s", test_fixture(fx->name));
    if (!strcmp(fx->name, "tiny-sd15")) {
        snprintf(cmd, sizeof cmd, "mkdir -p %s && python3 %s/diffusers/materialize_diffusers_weights.py --out %s >/dev/null",
                 dir, src, dir);
    } else {
        snprintf(cmd, sizeof cmd,
                 "rm -rf %s/%s && mkdir -p %s/%s && cp -r %s/diffusers %s/%s/ && chmod -R u+w %s && "
                 "ln -s %s/model.safetensors %s/%s/model.safetensors && "
                 "python3 %s/materialize_diffusers_weights.py >/dev/null",
                 WORK, fx->name, WORK, fx->name, src, WORK, fx->name, dir, src, WORK, fx->name, dir);
    }
    return sh(cmd) == 0 && exists(marker) ? dir : NULL;
}

/* LDM tensors a diffusers folder does not have: SD2's text encoder stops before the last OpenCLIP block (which
 * SD2 never runs) and drops text_projection; no folder has logit_scale; position_ids are int buffers. */
static int absent_from_diffusers(const fixture_layout *fx, const char *name) {
    if (strstr(name, "logit_scale") || strstr(name, "position_ids")) return 1;
    if (fx == &SD21)
        return strstr(name, "cond_stage_model.model.transformer.resblocks.2.") ||
               !strcmp(name, "cond_stage_model.model.text_projection");
    return 0;
}

/* Every tensor of the LDM file (but the known absentees) is in the store with the same dtype, shape and bytes,
 * and the store has nothing else. */
static void check_same_as_ldm(const fixture_layout *fx, const kiln_weights *w) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/model.safetensors", fx->name);
    kiln_st_file *ldm;
    CHECK(kiln_st_open(test_fixture(rel), &ldm) == 0);
    if (!ldm) return;
    int expected = 0, bad = 0;
    for (int i = 0; i < ldm->n_tensors; i++) {
        const kiln_st_tensor *t = &ldm->tensors[i];
        if (absent_from_diffusers(fx, t->name)) {
            CHECK_MSG(!kiln_weights_find(w, t->name), "%s should be absent", t->name);
            continue;
        }
        expected++;
        const kiln_weight *s = kiln_weights_find(w, t->name);
        int ok = s && s->dtype == t->dtype && s->ndim == t->ndim &&
                 !memcmp(s->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) &&
                 !memcmp(s->data, t->data, t->nbytes);
        if (!ok && bad++ < 10) fprintf(stderr, "%s: %s %s\n", fx->name, t->name, s ? "differs" : "missing");
    }
    CHECK_MSG(bad == 0, "%s: %d tensors differ", fx->name, bad);
    CHECK_MSG(w->n == expected, "%s: store has %d tensors, expected %d", fx->name, w->n, expected);
    kiln_st_close(ldm);
}

static void check_folder(const fixture_layout *fx) {
    const char *dir = materialize(fx);
    CHECK_MSG(dir != NULL, "materializing %s", fx->name);
    if (!dir) return;
    struct kiln_model m;
    model_init(&m);
    int rc = kiln_load_diffusers(&m, dir);
    CHECK_MSG(rc == 0, "%s: %s", dir, kiln_last_error());
    if (rc == 0) check_same_as_ldm(fx, m.weights);
    CHECK(m.vocab_dir && strstr(m.vocab_dir, "/tokenizer") && exists(m.vocab_dir));
    CHECK(m.n_ignored == 0);
    if (fx == &SD21) CHECK(m.config.prediction == KILN_PREDICT_V);
    if (fx != &SD21) CHECK(m.config.prediction == KILN_PREDICT_EPS);
    CHECK_NEAR(m.config.vae.scaling_factor, fx == &SDXL ? 0.13025 : 0.18215, 1e-12);
    model_done(&m);
}

TEST(folder_sd15) { check_folder(&SD15); }
TEST(folder_sd21) { check_folder(&SD21); }
TEST(folder_sdxl) { check_folder(&SDXL); }

/* A copy of the SD1.5 folder to break: configs copied, weight files linked. */
static const char *scratch_folder(const char *name) {
    static char dir[1024];
    const char *good = materialize(&SD15);
    if (!good) return NULL;
    char cmd[4096];
    snprintf(dir, sizeof dir, "%s/%s", WORK, name);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -rs %s %s", dir, good, dir);
    return sh(cmd) == 0 ? dir : NULL;
}

TEST(folder_fp16_variant_and_position_ids) {
    const char *dir = scratch_folder("variant");
    CHECK(dir != NULL);
    if (!dir) return;
    char cmd[4096], path[1200];
    snprintf(cmd, sizeof cmd, "mv %s/unet/diffusion_pytorch_model.safetensors %s/unet/diffusion_pytorch_model.fp16.safetensors",
             dir, dir);
    CHECK(sh(cmd) == 0);
    /* a text encoder with transformers' position_ids buffer, as real ones often have */
    kiln_st_file *te;
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", materialize(&SD15));
    CHECK(kiln_st_open(path, &te) == 0);
    if (!te) return;
    kiln_st_write_tensor *wt = calloc((size_t)te->n_tensors + 1, sizeof *wt);
    for (int i = 0; i < te->n_tensors; i++)
        wt[i] = (kiln_st_write_tensor){te->tensors[i].name, te->tensors[i].dtype, te->tensors[i].ndim,
                                       te->tensors[i].shape, te->tensors[i].data};
    int64_t ids[77], ids_shape[2] = {1, 77};
    for (int i = 0; i < 77; i++) ids[i] = i;
    wt[te->n_tensors] = (kiln_st_write_tensor){"text_model.embeddings.position_ids", KILN_I64, 2, ids_shape, ids};
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", dir);
    unlink(path);
    CHECK(kiln_st_write(path, wt, te->n_tensors + 1, NULL, NULL, 0) == 0);
    free(wt);
    kiln_st_close(te);

    struct kiln_model m;
    model_init(&m);
    int rc = kiln_load_diffusers(&m, dir);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (rc == 0) check_same_as_ldm(&SD15, m.weights);
    CHECK(m.n_ignored == 1);
    model_done(&m);
}

TEST(folder_sharded_unet) {
    const char *dir = scratch_folder("sharded");
    CHECK(dir != NULL);
    if (!dir) return;
    char path[1200];
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", materialize(&SD15));
    kiln_st_file *u;
    CHECK(kiln_st_open(path, &u) == 0);
    if (!u) return;
    /* two shards, and an index naming each tensor's shard */
    int half = u->n_tensors / 2;
    kiln_st_write_tensor *wt = calloc((size_t)u->n_tensors, sizeof *wt);
    json_t *map = json_object();
    for (int i = 0; i < u->n_tensors; i++) {
        wt[i] = (kiln_st_write_tensor){u->tensors[i].name, u->tensors[i].dtype, u->tensors[i].ndim,
                                       u->tensors[i].shape, u->tensors[i].data};
        json_object_set_new(map, u->tensors[i].name,
                            json_string(i < half ? "diffusion_pytorch_model-00001-of-00002.safetensors"
                                                 : "diffusion_pytorch_model-00002-of-00002.safetensors"));
    }
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model-00001-of-00002.safetensors", dir);
    CHECK(kiln_st_write(path, wt, half, NULL, NULL, 0) == 0);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model-00002-of-00002.safetensors", dir);
    CHECK(kiln_st_write(path, wt + half, u->n_tensors - half, NULL, NULL, 0) == 0);
    json_t *idx = json_object();
    json_object_set_new(idx, "weight_map", map);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors.index.json", dir);
    CHECK(json_dump_file(idx, path, 0) == 0);
    json_decref(idx);
    free(wt);
    kiln_st_close(u);

    struct kiln_model m;
    model_init(&m);
    int rc = kiln_load_diffusers(&m, dir);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (rc == 0) check_same_as_ldm(&SD15, m.weights);
    model_done(&m);
}

/* Loads dir expecting failure; the message must contain every given fragment. */
static void expect_load_error(const char *dir, int want_rc, const char *frag1, const char *frag2) {
    struct kiln_model m;
    model_init(&m);
    int rc = kiln_load_diffusers(&m, dir);
    printf("  expected error: %s\n", kiln_last_error());
    CHECK_MSG(rc == want_rc, "%s: rc %d, want %d (%s)", dir, rc, want_rc, kiln_last_error());
    CHECK_MSG(frag1 == NULL || strstr(kiln_last_error(), frag1), "message \"%s\" lacks \"%s\"", kiln_last_error(),
              frag1);
    CHECK_MSG(frag2 == NULL || strstr(kiln_last_error(), frag2), "message \"%s\" lacks \"%s\"", kiln_last_error(),
              frag2);
    model_done(&m);
}

TEST(folder_errors) {
    char cmd[4096], path[1200];
    const char *dir = scratch_folder("missing_vae");
    CHECK(dir != NULL);
    if (!dir) return;
    snprintf(cmd, sizeof cmd, "rm %s/vae/diffusion_pytorch_model.safetensors", dir);
    CHECK(sh(cmd) == 0);
    expect_load_error(dir, KILN_ENOTFOUND, "vae/diffusion_pytorch_model.safetensors", "missing_vae");

    dir = scratch_folder("pickle_unet");
    snprintf(cmd, sizeof cmd, "mv %s/unet/diffusion_pytorch_model.safetensors %s/unet/diffusion_pytorch_model.bin",
             dir, dir);
    CHECK(sh(cmd) == 0);
    expect_load_error(dir, KILN_EUNSUPPORTED, "unet/diffusion_pytorch_model.bin", NULL);

    dir = scratch_folder("no_index");
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    CHECK(unlink(path) == 0);
    expect_load_error(dir, KILN_ENOTFOUND, "model_index.json", "no_index");

    dir = scratch_folder("bad_config");
    snprintf(cmd, sizeof cmd, "rm %s/unet/config.json && echo '{\"block_out_channels\": [1,2' > %s/unet/config.json",
             dir, dir);
    CHECK(sh(cmd) == 0);
    expect_load_error(dir, KILN_EFORMAT, "unet/config.json", NULL);

    /* a tensor with no LDM counterpart: the message names it and the file */
    dir = scratch_folder("unmappable");
    float v[2] = {1, 2};
    int64_t shape[1] = {2};
    kiln_st_write_tensor wt[2] = {{"encoder.conv_in.bias", KILN_F32, 1, shape, v},
                                  {"encoder.frobnicator.weight", KILN_F32, 1, shape, v}};
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    unlink(path);
    CHECK(kiln_st_write(path, wt, 2, NULL, NULL, 0) == 0);
    expect_load_error(dir, KILN_ENOTFOUND, "encoder.frobnicator.weight", "unmappable/vae/diffusion_pytorch_model");
}

/* Rewrites one component file of a scratch folder: the good file's tensors without `drop`, plus `extra`. */
static int rewrite_component(const char *good_dir, const char *dir, const char *rel, const char *drop,
                             const kiln_st_write_tensor *extra) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", good_dir, rel);
    kiln_st_file *f = NULL;
    if (kiln_st_open(path, &f) != 0) return -1;
    kiln_st_write_tensor *wt = calloc((size_t)f->n_tensors + 1, sizeof *wt);
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        wt[n++] = (kiln_st_write_tensor){t->name, t->dtype, t->ndim, t->shape, t->data};
    }
    if (extra) wt[n++] = *extra;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    unlink(path);
    int rc = kiln_st_write(path, wt, n, NULL, NULL, 0);
    free(wt);
    kiln_st_close(f);
    return rc;
}

TEST(folder_errors_fused_and_duplicates) {
    /* SD2: a k_proj missing, so in_proj_weight cannot be stacked */
    const char *good = materialize(&SD21);
    CHECK(good != NULL);
    if (!good) return;
    char gbuf[1024], dir[1200], cmd[4096];
    snprintf(gbuf, sizeof gbuf, "%s", good);
    snprintf(dir, sizeof dir, "%s/sd21_no_k", WORK);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -rs %s %s", dir, gbuf, dir);
    CHECK(sh(cmd) == 0);
    CHECK(rewrite_component(gbuf, dir, "text_encoder/model.safetensors",
                            "text_model.encoder.layers.1.self_attn.k_proj.weight", NULL) == 0);
    expect_load_error(dir, KILN_ENOTFOUND, "k_proj missing", "resblocks.1.attn.in_proj_weight");

    /* two diffusers names for one LDM tensor (new and old VAE attention names) */
    const char *d2 = scratch_folder("vae_dup");
    CHECK(d2 != NULL);
    if (!d2) return;
    snprintf(dir, sizeof dir, "%s", d2);
    float v[32] = {0};
    int64_t shape[1] = {32};
    kiln_st_write_tensor extra = {"encoder.mid_block.attentions.0.query.bias", KILN_F32, 1, shape, v};
    CHECK(rewrite_component(materialize(&SD15), dir, "vae/diffusion_pytorch_model.safetensors", NULL, &extra) == 0);
    expect_load_error(dir, KILN_EFORMAT, "encoder.mid.attn_1.q.bias", NULL);
}

/* ---- separate VAE files ---- */

/* The SD1.5 LDM file's float tensors in a store, as the single-file loader would leave them. */
static int load_ldm(struct kiln_model *m) {
    kiln_st_file *f = NULL;
    KILN_TRY(kiln_model_open_file(m, test_fixture("tiny-sd15/model.safetensors"), &f));
    for (int i = 0; i < f->n_tensors; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        if (t->dtype == KILN_F16 || t->dtype == KILN_F32)
            KILN_TRY(kiln_weights_add_view(m->weights, t->name, t->dtype, t->ndim, t->shape, t->data, f->path));
    }
    return KILN_OK;
}

/* Writes a VAE file from the checkpoint's first_stage_model.* tensors with every fp16 value negated (so a
 * replaced tensor is told apart from the original). prefix: keep "first_stage_model."; extra: add model_ema and
 * loss tensors; drop: leave out the tensor of that name. Returns the number of VAE tensors written. */
static int write_vae(const char *path, const kiln_st_file *ldm, int prefix, int extra, const char *drop) {
    kiln_st_write_tensor *wt = calloc((size_t)ldm->n_tensors + 2, sizeof *wt);
    void **bufs = calloc((size_t)ldm->n_tensors, sizeof *bufs);
    int n = 0;
    for (int i = 0; i < ldm->n_tensors; i++) {
        const kiln_st_tensor *t = &ldm->tensors[i];
        if (strncmp(t->name, "first_stage_model.", 18) || (drop && !strcmp(t->name, drop))) continue;
        uint16_t *d = malloc(t->nbytes);
        memcpy(d, t->data, t->nbytes);
        for (size_t k = 0; k < t->nbytes / 2; k++) d[k] ^= 0x8000;
        bufs[i] = d;
        wt[n++] = (kiln_st_write_tensor){prefix ? t->name : t->name + 18, t->dtype, t->ndim, t->shape, d};
    }
    int written = n;
    static const float decay = 0.9999f, logvar = 0.0f;
    static const int64_t scalar_shape[1] = {1};
    if (extra) {
        wt[n++] = (kiln_st_write_tensor){"model_ema.decay", KILN_F32, 0, scalar_shape, &decay};
        wt[n++] = (kiln_st_write_tensor){"loss.logvar", KILN_F32, 0, scalar_shape, &logvar};
    }
    int rc = kiln_st_write(path, wt, n, NULL, NULL, 0);
    for (int i = 0; i < ldm->n_tensors; i++) free(bufs[i]);
    free(bufs);
    free(wt);
    return rc == 0 ? written : -1;
}

/* After loading a negated VAE: every VAE tensor is the negation of the original, the rest untouched. */
static void check_vae_replaced(const kiln_weights *w, const kiln_st_file *ldm) {
    int bad = 0, n_vae = 0;
    for (int i = 0; i < ldm->n_tensors; i++) {
        const kiln_st_tensor *t = &ldm->tensors[i];
        if (t->dtype != KILN_F16) continue;
        const kiln_weight *s = kiln_weights_find(w, t->name);
        if (!s || s->ndim != t->ndim || memcmp(s->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim)) {
            bad++;
            continue;
        }
        int vae = !strncmp(t->name, "first_stage_model.", 18);
        n_vae += vae;
        const uint16_t *a = s->data, *b = t->data;
        for (size_t k = 0; k < t->nbytes / 2; k++)
            if (a[k] != (uint16_t)(b[k] ^ (vae ? 0x8000 : 0))) {
                if (bad++ < 5) fprintf(stderr, "%s differs at %zu\n", t->name, k);
                break;
            }
    }
    CHECK(bad == 0);
    CHECK(n_vae == 244);
}

TEST(vae_file_ldm_names) {
    kiln_st_file *ldm;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/model.safetensors"), &ldm) == 0);
    if (!ldm) return;
    CHECK(sh("mkdir -p " WORK) == 0);
    for (int prefix = 0; prefix < 2; prefix++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/vae_%s.safetensors", WORK, prefix ? "prefixed" : "bare");
        CHECK(write_vae(path, ldm, prefix, !prefix, NULL) == 244);
        struct kiln_model m;
        model_init(&m);
        CHECK(load_ldm(&m) == 0);
        int n_before = m.weights->n;
        int rc = kiln_load_vae_file(&m, path);
        CHECK_MSG(rc == 0, "%s", kiln_last_error());
        CHECK(m.weights->n == n_before);
        CHECK(m.n_ignored == (prefix ? 0 : 2));
        check_vae_replaced(m.weights, ldm);
        model_done(&m);
    }
    kiln_st_close(ldm);
}

TEST(vae_file_diffusers_names) {
    /* the materialized diffusers VAE is a diffusers-named VAE file with the checkpoint's own values */
    const char *dir = materialize(&SD15);
    if (!dir) return;
    char path[1200];
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    struct kiln_model m;
    model_init(&m);
    CHECK(load_ldm(&m) == 0);
    int rc = kiln_load_vae_file(&m, path);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    int from_file = 0;
    for (int i = 0; i < m.weights->n; i++)
        from_file += m.weights->items[i].source == m.files[1]->path;
    CHECK(from_file == 244);
    /* same values as before: compare to the LDM file, mid attention back to [C,C,1,1] */
    kiln_st_file *ldm;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/model.safetensors"), &ldm) == 0);
    const kiln_weight *q = kiln_weights_find(m.weights, "first_stage_model.decoder.mid.attn_1.q.weight");
    const kiln_st_tensor *lq = kiln_st_find(ldm, "first_stage_model.decoder.mid.attn_1.q.weight");
    CHECK(q && lq && q->ndim == 4 && q->shape[2] == 1 && q->shape[3] == 1 && !memcmp(q->data, lq->data, lq->nbytes));
    kiln_st_close(ldm);
    model_done(&m);
}

TEST(vae_file_errors) {
    kiln_st_file *ldm;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/model.safetensors"), &ldm) == 0);
    if (!ldm) return;
    CHECK(sh("mkdir -p " WORK) == 0);
    char path[1200];
    struct kiln_model m;

    /* a tensor missing from the VAE file */
    snprintf(path, sizeof path, "%s/vae_partial.safetensors", WORK);
    CHECK(write_vae(path, ldm, 1, 0, "first_stage_model.decoder.conv_out.bias") == 243);
    model_init(&m);
    CHECK(load_ldm(&m) == 0);
    CHECK(kiln_load_vae_file(&m, path) == KILN_ENOTFOUND);
    CHECK(strstr(kiln_last_error(), "first_stage_model.decoder.conv_out.bias") != NULL);
    model_done(&m);

    /* a non-VAE tensor */
    float v[4] = {0};
    int64_t shape[4] = {2, 2, 1, 1};
    kiln_st_write_tensor bad = {"model.diffusion_model.out.2.bias", KILN_F32, 1, shape, v};
    snprintf(path, sizeof path, "%s/vae_not.safetensors", WORK);
    CHECK(kiln_st_write(path, &bad, 1, NULL, NULL, 0) == 0);
    model_init(&m);
    CHECK(load_ldm(&m) == 0);
    CHECK(kiln_load_vae_file(&m, path) == KILN_ENOTFOUND);
    CHECK(strstr(kiln_last_error(), "model.diffusion_model.out.2.bias") != NULL);
    model_done(&m);

    /* a shape that differs from the checkpoint's */
    kiln_st_write_tensor wrong = {"decoder.conv_out.bias", KILN_F32, 2, shape, v};
    snprintf(path, sizeof path, "%s/vae_shape.safetensors", WORK);
    CHECK(kiln_st_write(path, &wrong, 1, NULL, NULL, 0) == 0);
    model_init(&m);
    CHECK(load_ldm(&m) == 0);
    CHECK(kiln_load_vae_file(&m, path) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "decoder.conv_out.bias") && strstr(kiln_last_error(), "[2, 2]"));
    model_done(&m);

    /* nothing but training leftovers */
    kiln_st_write_tensor ema = {"model_ema.decay", KILN_F32, 1, shape, v};
    snprintf(path, sizeof path, "%s/vae_empty.safetensors", WORK);
    CHECK(kiln_st_write(path, &ema, 1, NULL, NULL, 0) == 0);
    model_init(&m);
    CHECK(load_ldm(&m) == 0);
    CHECK(kiln_load_vae_file(&m, path) == KILN_ENOTFOUND);
    CHECK(strstr(kiln_last_error(), "no VAE tensors") != NULL);
    model_done(&m);

    /* the same tensor twice, with and without the prefix */
    kiln_st_write_tensor twice[2] = {{"decoder.conv_out.bias", KILN_F32, 1, shape, v},
                                     {"first_stage_model.decoder.conv_out.bias", KILN_F32, 1, shape, v}};
    snprintf(path, sizeof path, "%s/vae_twice.safetensors", WORK);
    CHECK(kiln_st_write(path, twice, 2, NULL, NULL, 0) == 0);
    model_init(&m);
    CHECK(kiln_load_vae_file(&m, path) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "first_stage_model.decoder.conv_out.bias") != NULL);
    model_done(&m);

    /* pickle VAEs are refused by name */
    model_init(&m);
    CHECK(kiln_load_vae_file(&m, WORK "/vae-ft-mse.PT") == KILN_EUNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "vae-ft-mse.PT") != NULL);
    model_done(&m);

    /* a missing file names the path */
    model_init(&m);
    CHECK(kiln_load_vae_file(&m, WORK "/no_such_vae.safetensors") < 0);
    CHECK(strstr(kiln_last_error(), "no_such_vae.safetensors") != NULL);
    model_done(&m);
    kiln_st_close(ldm);
}

/* Through the public entry point: a folder and the single file give the same config and the same tensors;
 * a separate VAE file given in the options replaces the VAE. */
TEST(model_load_folder_and_vae_option) {
    const char *dir = materialize(&SD15);
    CHECK(dir != NULL);
    if (!dir) return;
    kiln_model *folder = NULL, *single = NULL, *with_vae = NULL;
    int rc = kiln_model_load(dir, NULL, &folder);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    rc = kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &single);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (folder && single) {
        CHECK(!memcmp(&folder->config, &single->config, sizeof folder->config));
        CHECK(folder->config.family == KILN_FAMILY_SD1);
        check_same_as_ldm(&SD15, folder->weights);
        CHECK(folder->vocab_dir != NULL);
    }
    /* the diffusers VAE (same values, other names) as the "SD VAE" of the single file */
    char vae[1200];
    snprintf(vae, sizeof vae, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    kiln_model_options opts = {.vae_path = vae};
    rc = kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), &opts, &with_vae);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (with_vae && single) {
        CHECK(!memcmp(&with_vae->config, &single->config, sizeof single->config));
        check_same_as_ldm(&SD15, with_vae->weights);
        const kiln_weight *w = kiln_weights_find(with_vae->weights, "first_stage_model.decoder.conv_in.weight");
        CHECK(w && w->source && strstr(w->source, "vae/diffusion_pytorch_model.safetensors"));
    }
    kiln_model_free(folder);
    kiln_model_free(single);
    kiln_model_free(with_vae);
}

int main(void) {
    RUN(names_sd15);
    RUN(names_sd21);
    RUN(names_sdxl);
    RUN(names_other_layouts);
    RUN(names_without_counterpart);
    RUN(folder_sd15);
    RUN(folder_sd21);
    RUN(folder_sdxl);
    RUN(folder_fp16_variant_and_position_ids);
    RUN(folder_sharded_unet);
    RUN(folder_errors);
    RUN(folder_errors_fused_and_duplicates);
    RUN(vae_file_ldm_names);
    RUN(vae_file_diffusers_names);
    RUN(vae_file_errors);
    RUN(model_load_folder_and_vae_option);
    return test_summary();
}
