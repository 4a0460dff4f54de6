/* test_embeddings.c — textual-inversion loading: the tiny-sd15 embedding (manifest
 * cases.textual_inversion), A1111's skip rules on synthetic files, and the chunker fed from it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "backend/backend.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/embeddings.h"
#include "model/model.h"
#include "net/net.h"
#include "text/chunker.h"
#include "test.h"
#include "torch_writer.h"

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

/* torch._utils._rebuild_tensor_v2 of a float32 [rows, cols] tensor (or [cols] when one_d) stored in
 * member archive/data/<key> from its start. */
static void p_float_tensor(buf *b, const char *key, long long rows, long long cols, int one_d) {
    long long shape[2] = {rows, cols}, stride[2] = {cols, 1};
    p_tensor(b, "FloatStorage", key, rows * cols, 0, one_d ? shape + 1 : shape, one_d ? stride + 1 : stride,
             one_d ? 1 : 2);
}

/* kind 0: A1111 {"string_to_token": {"*": 265}, "string_to_param": {"*": [rows, 128]}, "name": .., "step": 7}
 * kind 1: the same with two terms in string_to_param
 * kind 2: diffusers learned_embeds.bin {"<tok>": [128]} */
static int write_pt(const char *path, int kind, unsigned rows) {
    static float data0[4 * 128], data1[128];
    for (int k = 0; k < 4 * 128; k++) data0[k] = syn_value(0, k);
    for (int k = 0; k < 128; k++) data1[k] = syn_value(1, k);
    buf b = {0};
    p_begin(&b);
    put8(&b, '}');
    p_memo(&b);
    put8(&b, '(');
    if (kind == 2) {
        p_str(&b, "<tok>");
        p_float_tensor(&b, "0", 1, 128, 1);
    } else {
        p_str(&b, "string_to_token");
        put8(&b, '}');
        p_memo(&b);
        p_str(&b, "*");
        p_int(&b, 265);
        put8(&b, 's');
        p_str(&b, "string_to_param");
        put8(&b, '}');
        p_memo(&b);
        put8(&b, '(');
        p_str(&b, "*");
        p_float_tensor(&b, "0", rows, 128, 0);
        if (kind == 1) {
            p_str(&b, "#");
            p_float_tensor(&b, "1", 1, 128, 0);
        }
        put8(&b, 'u');
        p_str(&b, "name");
        p_str(&b, "from_pickle");
        p_str(&b, "step");
        p_int(&b, 7);
    }
    put8(&b, 'u');
    put8(&b, '.');
    zmember m[4] = {{"archive/data.pkl", b.p, b.n, 0},
                    {"archive/data/0", kind == 2 ? (const void *)data1 : (const void *)data0,
                     kind == 2 ? sizeof data1 : rows * 128 * sizeof(float), 0},
                    {"archive/version", "3\n", 2, 0},
                    {"archive/data/1", data1, sizeof data1, 0}};
    buf z = make_zip(m, kind == 1 ? 4 : 3, 0);
    int rc = write_buf(path, &z);
    free(z.p);
    free(b.p);
    return rc;
}

TEST(pickled_embeddings) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tmp_path("pt"));
    mkdir(dir, 0700);
    CHECK(write_pt(tmp_path("pt/a1111.pt"), 0, 3) == 0);
    CHECK(write_pt(tmp_path("pt/two_terms.pt"), 1, 2) == 0);
    CHECK(write_pt(tmp_path("pt/learned_embeds.bin"), 2, 1) == 0);
    kiln_embeddings *db = NULL;
    CHECK_MSG(kiln_embeddings_load_dir(tmp_path("pt"), 128, tok, &db) == 0, "%s", kiln_last_error());
    if (!db) return;
    CHECK_MSG(db->n == 2 && db->n_failed == 1, "n %d failed %d: %s", db->n, db->n_failed, db->log);
    CHECK(strstr(db->log, "multiple terms") != NULL);
    const kiln_embedding *e = kiln_embeddings_find(db, "a1111"); /* the file stem, not the pickled "name" */
    CHECK(e && e->n_vectors == 3 && e->width == 128);
    if (e) CHECK(e->vectors[0] == syn_value(0, 0) && e->vectors[3 * 128 - 1] == syn_value(0, 3 * 128 - 1));
    e = kiln_embeddings_find(db, "learned_embeds");
    CHECK(e && e->n_vectors == 1 && e->width == 128);
    if (e) CHECK(e->vectors[7] == syn_value(1, 7));
    kiln_embeddings_free(db);
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

/* End to end on the CPU backend: chunker fixes + the loaded vectors written over the token embeddings give
 * the fixture's conditioning (cases without emphasis, so the conditioning is the CLIP output per chunk). */
TEST(conditioning_with_embedding_matches_fixture) {
    kiln_model *m = NULL;
    kiln_backend *cpu = NULL;
    kiln_embeddings *db = NULL;
    kiln_st_file *ref = NULL;
    CHECK(kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &m) == 0);
    CHECK(kiln_backend_cpu_create(0, &cpu) == 0);
    CHECK(kiln_st_open(test_fixture("tiny-sd15/conditioning_embedding.safetensors"), &ref) == 0);
    if (!m || !cpu || !ref) goto done;
    const kiln_clip_config *c = &m->config.clip[0];
    CHECK(kiln_embeddings_load_dir(test_fixture("tiny-sd15/embeddings"), kiln_embedding_width(&m->config), tok,
                                   &db) == 0);
    if (!db) goto done;
    kiln_embedding_ref refs[1];
    kiln_embeddings_refs(db, refs);
    kiln_chunker_options opts;
    kiln_chunker_options_init(&opts);
    opts.embeddings = refs;
    opts.n_embeddings = db->n;
    static const char *const cases[] = {"ti_plain", "ti_chunk_boundary"};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s_cond", cases[k]);
        const kiln_st_tensor *want_t = kiln_st_find(ref, key);
        snprintf(key, sizeof key, "%s_tokens", cases[k]);
        const kiln_st_tensor *tok_t = kiln_st_find(ref, key);
        CHECK(want_t && tok_t);
        if (!want_t || !tok_t) continue;
        int n_chunks = (int)(kiln_st_numel(tok_t) / 77);
        /* the manifest's prompts: ti_chunk_boundary is 74 one-token words, then "tiny_emb house" */
        const char *prompt = NULL;
        static char long_prompt[2048];
        if (k == 0) {
            prompt = "a photo of tiny_emb on a tiny table";
        } else {
            static const char *const words[] = {"cat", "dog", "red", "blue", "tree", "house", "sun", "moon", "star", "road"};
            long_prompt[0] = '\0';
            for (int w = 0; w < 74; w++) {
                strcat(long_prompt, words[w % 10]);
                strcat(long_prompt, " ");
            }
            strcat(long_prompt, "tiny_emb house");
            prompt = long_prompt;
        }
        kiln_prompt_chunks ch;
        CHECK(kiln_prompt_chunk(tok, prompt, &opts, &ch) == 0);
        CHECK(ch.n_chunks == n_chunks);
        if (ch.n_chunks != n_chunks) continue;
        CHECK(!memcmp(ch.tokens, tok_t->data, sizeof(int32_t) * 77 * (size_t)n_chunks));
        size_t per = 77 * (size_t)c->hidden, n = per * (size_t)n_chunks;
        float *embeds = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
        CHECK(kiln_clip_embed_tokens(m->weights, c, ch.tokens, 77 * n_chunks, embeds) == 0);
        const float *vectors[1];
        kiln_embeddings_vectors(db, vectors);
        for (int fx = 0; fx < ch.n_fixes; fx++) {
            const kiln_chunk_fix *fix = &ch.fixes[fx];
            CHECK(vectors[fix->embedding] == db->items[fix->embedding].vectors);
            memcpy(embeds + per * (size_t)fix->chunk + (size_t)(fix->offset + 1) * (size_t)c->hidden,
                   vectors[fix->embedding],
                   sizeof(float) * (size_t)fix->n_vectors * (size_t)c->hidden);
        }
        kiln_plan *p = kiln_plan_new(m->weights);
        CHECK(kiln_build_clip(p, c, n_chunks, 77, 1) == 0);
        const char *names[2] = {"embeds", "hidden"};
        void *bufs[2] = {embeds, got};
        CHECK(kiln_backend_run_named(cpu, p, 2, names, bufs) == 0);
        kiln_st_to_f32(want_t, want);
        double err = test_max_abs_diff(got, want, n);
        printf("  %s: %d chunk(s), max |diff| %.3g (atol %g)\n", cases[k], n_chunks, err, k ? 3e-5 : 2e-5);
        CHECK(err <= (k ? 3e-5 : 2e-5)); /* manifest tolerances of these cases */
        kiln_plan_free(p);
        kiln_prompt_chunks_free(&ch);
        free(embeds);
        free(got);
        free(want);
    }
done:
    kiln_embeddings_free(db);
    kiln_st_close(ref);
    kiln_backend_destroy(cpu);
    kiln_model_free(m);
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
    RUN(conditioning_with_embedding_matches_fixture);
    RUN(skip_rules);
    RUN(pickled_embeddings);
    kiln_tokenizer_free(tok);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp_dir);
    return test_summary();
}
