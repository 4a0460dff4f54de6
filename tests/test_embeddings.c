/* test_embeddings.c — textual-inversion loading: the tiny-sd15 embedding (manifest
 * cases.textual_inversion), A1111's skip rules on synthetic files, and the chunker fed from it. */
#define _GNU_SOURCE /* mkdtemp */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/embeddings.h"
#include "text/chunker.h"
#include "test.h"

static char tmp_dir[256];
static kiln_tokenizer *tok;

static const char *tmp_path(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmp_dir, name);
    return buf;
}

typedef struct syn_tensor {
    const char *name;
    kiln_dtype dtype; /* F32 or F16 */
    int ndim;
    int64_t shape[2];
} syn_tensor;

/* Value k of tensor i in the synthetic files. */
static float syn_value(int i, int64_t k) { return (float)((k * 37 + i * 11) % 101 - 50) / 64.0f; }

static int write_file(const char *rel, const syn_tensor *ts, int n) {
    kiln_st_write_tensor wt[4];
    void *bufs[4];
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) numel *= ts[i].shape[d];
        if (ts[i].dtype == KILN_F16) {
            uint16_t *h = malloc(2 * (size_t)numel);
            for (int64_t k = 0; k < numel; k++) h[k] = kiln_f32_to_f16(syn_value(i, k));
            bufs[i] = h;
        } else {
            float *f = malloc(4 * (size_t)numel);
            for (int64_t k = 0; k < numel; k++) f[k] = syn_value(i, k);
            bufs[i] = f;
        }
        wt[i] = (kiln_st_write_tensor){ts[i].name, ts[i].dtype, ts[i].ndim, ts[i].shape, bufs[i]};
    }
    int rc = kiln_st_write(tmp_path(rel), wt, n, NULL, NULL, 0);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return rc;
}

TEST(tiny_emb_loads) {
    kiln_embeddings *db = NULL;
    int rc = kiln_embeddings_load_dir(test_fixture("tiny-sd15/embeddings"), 128, tok, &db);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (!db) return;
    CHECK(db->n == 1);
    CHECK(db->n_skipped_width == 0 && db->n_failed == 0 && db->n_unsupported == 0);
    const kiln_embedding *e = kiln_embeddings_find(db, "tiny_emb");
    CHECK(e != NULL);
    if (e) {
        CHECK(e->n_vectors == 2 && e->width == 128);
        static const int32_t want_ids[] = {5591, 318, 908, 321};
        CHECK(e->n_name_ids == 4 && !memcmp(e->name_ids, want_ids, sizeof want_ids));
        kiln_st_file *f;
        CHECK(kiln_st_open(test_fixture("tiny-sd15/embeddings/tiny_emb.safetensors"), &f) == 0);
        const kiln_st_tensor *t = kiln_st_find(f, "emb_params");
        CHECK(t && t->dtype == KILN_F32 && !memcmp(t->data, e->vectors, 2 * 128 * sizeof(float)));
        kiln_st_close(f);
    }
    CHECK(kiln_embeddings_find(db, "tiny") == NULL);
    kiln_embeddings_free(db);
}

/* The chunker fed from the database reproduces the fixture's placement (manifest ti_* cases). */
TEST(chunker_with_loaded_embedding) {
    kiln_embeddings *db = NULL;
    if (kiln_embeddings_load_dir(test_fixture("tiny-sd15/embeddings"), 128, tok, &db)) {
        CHECK_MSG(0, "%s", kiln_last_error());
        return;
    }
    kiln_embedding_ref refs[1];
    kiln_embeddings_refs(db, refs);
    CHECK(!strcmp(refs[0].name, "tiny_emb") && refs[0].n_vectors == 2 && refs[0].n_name_ids == 4);
    kiln_chunker_options opts;
    kiln_chunker_options_init(&opts);
    opts.embeddings = refs;
    opts.n_embeddings = 1;
    kiln_st_file *ref;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/conditioning_embedding.safetensors"), &ref) == 0);
    static const struct {
        const char *name, *prompt;
        int offset;
    } cases[] = {
        {"ti_plain", "a photo of tiny_emb on a tiny table", 3},
        {"ti_weighted", "(tiny_emb:1.3), masterpiece", 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kiln_prompt_chunks ch;
        CHECK(kiln_prompt_chunk(tok, cases[c].prompt, &opts, &ch) == 0);
        CHECK(ch.n_chunks == 1 && ch.n_fixes == 1);
        CHECK(ch.fixes[0].offset == cases[c].offset && ch.fixes[0].n_vectors == 2 && ch.fixes[0].embedding == 0);
        char key[64];
        snprintf(key, sizeof key, "%s_tokens", cases[c].name);
        const kiln_st_tensor *t = kiln_st_find(ref, key);
        CHECK(t && t->dtype == KILN_I32 && kiln_st_numel(t) == 77);
        if (t) CHECK(!memcmp(t->data, ch.tokens, 77 * sizeof(int32_t)));
        kiln_prompt_chunks_free(&ch);
    }
    kiln_st_close(ref);
    kiln_embeddings_free(db);
}

TEST(skip_rules) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tmp_path("emb"));
    mkdir(dir, 0700);
    snprintf(dir, sizeof dir, "%s", tmp_path("emb/sub"));
    mkdir(dir, 0700);
    /* kept: one [3,128] F16 tensor; a 1-D [128] tensor (one vector); a "string_to_param.*" key in a
     * safetensors file is just one tensor (A1111's string_to_param branch is for .pt dicts) */
    syn_tensor good[] = {{"emb_params", KILN_F16, 2, {3, 128}}};
    syn_tensor one_d[] = {{"learned_embeds", KILN_F32, 1, {128}}};
    syn_tensor stp[] = {{"string_to_param.*", KILN_F32, 2, {1, 128}}};
    CHECK(write_file("emb/good.safetensors", good, 1) == 0);
    CHECK(write_file("emb/sub/one_d.safetensors", one_d, 1) == 0);
    CHECK(write_file("emb/stp.safetensors", stp, 1) == 0);
    /* skipped: another model's width; two tensors ("multiple terms"); a same-named file in a subfolder;
     * an SDXL pair on an SD1-width database; an image; ignored: a preview image, other files, empty files */
    syn_tensor wide[] = {{"emb_params", KILN_F32, 2, {2, 768}}};
    syn_tensor two[] = {{"a", KILN_F32, 2, {1, 128}}, {"b", KILN_F32, 2, {1, 128}}};
    syn_tensor xl[] = {{"clip_g", KILN_F32, 2, {2, 64}}, {"clip_l", KILN_F32, 2, {2, 128}}};
    CHECK(write_file("emb/wide.safetensors", wide, 1) == 0);
    CHECK(write_file("emb/two.safetensors", two, 2) == 0);
    CHECK(write_file("emb/sub/good.safetensors", one_d, 1) == 0);
    CHECK(write_file("emb/xl.safetensors", xl, 2) == 0);
    FILE *f = fopen(tmp_path("emb/picture.png"), "wb");
    if (f) fclose(f), f = NULL; /* empty: ignored like any zero-size file */
    f = fopen(tmp_path("emb/pic2.png"), "wb");
    if (f) fputs("not really a png", f), fclose(f);
    f = fopen(tmp_path("emb/good.preview.png"), "wb");
    if (f) fputs("preview", f), fclose(f);
    f = fopen(tmp_path("emb/notes.txt"), "wb");
    if (f) fputs("hello", f), fclose(f);

    kiln_embeddings *db = NULL;
    CHECK_MSG(kiln_embeddings_load_dir(tmp_path("emb"), 128, tok, &db) == 0, "%s", kiln_last_error());
    if (!db) return;
    CHECK_MSG(db->n == 3, "n %d, log: %s", db->n, db->log);
    CHECK(db->n_skipped_width == 2); /* wide, xl */
    CHECK(db->n_failed == 1);        /* two */
    CHECK(db->n_unsupported == 2);   /* sub/good (duplicate), pic2.png */
    CHECK(strstr(db->log, "multiple terms") && strstr(db->log, "wide") && strstr(db->log, "xl") &&
          strstr(db->log, "pic2"));
    const kiln_embedding *e = kiln_embeddings_find(db, "good");
    CHECK(e && e->n_vectors == 3 && e->width == 128 && strstr(e->path, "emb/good.safetensors"));
    if (e) {
        int bad = 0;
        for (int k = 0; k < 3 * 128; k++) bad += e->vectors[k] != kiln_f16_to_f32(kiln_f32_to_f16(syn_value(0, k)));
        CHECK(bad == 0);
    }
    e = kiln_embeddings_find(db, "one_d");
    CHECK(e && e->n_vectors == 1 && e->width == 128 && e->vectors[5] == syn_value(0, 5));
    e = kiln_embeddings_find(db, "stp");
    CHECK(e && e->n_vectors == 1);
    /* load order = sorted walk: good, one_d (sub/), stp */
    CHECK(!strcmp(db->items[0].name, "good") && !strcmp(db->items[1].name, "stp") &&
          !strcmp(db->items[2].name, "one_d"));
    kiln_embeddings_free(db);

    /* One file at a time: return values. */
    CHECK(kiln_embeddings_new(128, tok, &db) == 0);
    CHECK(kiln_embeddings_add_file(db, tmp_path("emb/two.safetensors")) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "multiple terms") != NULL);
    CHECK(kiln_embeddings_add_file(db, tmp_path("emb/wide.safetensors")) == 0);
    CHECK(kiln_embeddings_add_file(db, tmp_path("emb/good.safetensors")) == 1);
    CHECK(kiln_embeddings_add_file(db, tmp_path("emb/missing.safetensors")) < 0);
    CHECK(db->n == 1);
    kiln_embeddings_free(db);

    /* An SDXL pair on an SDXL-width database: rows are clip_l then clip_g. */
    CHECK(kiln_embeddings_new(192, tok, &db) == 0);
    CHECK(kiln_embeddings_add_file(db, tmp_path("emb/xl.safetensors")) == 1);
    e = kiln_embeddings_find(db, "xl");
    CHECK(e && e->n_vectors == 2 && e->width == 192);
    if (e) {
        /* tensors are written in the order given: clip_g is tensor 0, clip_l tensor 1 */
        CHECK(e->vectors[0] == syn_value(1, 0) && e->vectors[127] == syn_value(1, 127));
        CHECK(e->vectors[128] == syn_value(0, 0) && e->vectors[192 + 128 + 1] == syn_value(0, 64 + 1));
        CHECK(e->vectors[192] == syn_value(1, 128));
    }
    kiln_embeddings_free(db);

    CHECK(kiln_embeddings_load_dir(tmp_path("no_such_dir"), 128, tok, &db) == KILN_ENOTFOUND);
    CHECK(strstr(kiln_last_error(), "no_such_dir") != NULL);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/kiln_test_emb_XXXXXX");
    if (!mkdtemp(tmp_dir)) return 1;
    if (kiln_tokenizer_load(test_fixture("tiny-sd15/diffusers/tokenizer"), &tok)) {
        fprintf(stderr, "tokenizer: %s\n", kiln_last_error());
        return 1;
    }
    RUN(tiny_emb_loads);
    RUN(chunker_with_loaded_embedding);
    RUN(skip_rules);
    kiln_tokenizer_free(tok);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return test_summary();
}
