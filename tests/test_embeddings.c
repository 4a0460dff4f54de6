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

/* ---- minimal torch.save zip files (stored members, protocol-2 pickle), for .pt/.bin embeddings ---- */
typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put8(buf *b, unsigned v) {
    uint8_t c = (uint8_t)v;
    put(b, &c, 1);
}
static void put16(buf *b, unsigned v) {
    put8(b, v & 0xFF);
    put8(b, (v >> 8) & 0xFF);
}
static void put32(buf *b, uint32_t v) {
    put16(b, v & 0xFFFF);
    put16(b, v >> 16);
}

static int memo_n;
static void p_memo(buf *b) {
    put8(b, 'q');
    put8(b, (unsigned)memo_n++);
}
static void p_str(buf *b, const char *s) {
    put8(b, 'X');
    put32(b, (uint32_t)strlen(s));
    put(b, s, strlen(s));
    p_memo(b);
}
static void p_int(buf *b, unsigned v) { /* 0 .. 65535 */
    put8(b, 'M');
    put16(b, v);
}
static void p_global(buf *b, const char *mod, const char *name) {
    put8(b, 'c');
    put(b, mod, strlen(mod));
    put8(b, '\n');
    put(b, name, strlen(name));
    put8(b, '\n');
    p_memo(b);
}
/* torch._utils._rebuild_tensor_v2(('storage', torch.FloatStorage, key, 'cpu', rows*cols), 0, (rows, cols)
 * or (cols,), strides, False, OrderedDict()) */
static void p_tensor(buf *b, const char *key, unsigned rows, unsigned cols, int one_d) {
    p_global(b, "torch._utils", "_rebuild_tensor_v2");
    put8(b, '(');
    put8(b, '(');
    p_str(b, "storage");
    p_global(b, "torch", "FloatStorage");
    p_str(b, key);
    p_str(b, "cpu");
    p_int(b, rows * cols);
    put8(b, 't');
    p_memo(b);
    put8(b, 'Q');
    p_int(b, 0);
    put8(b, '(');
    if (!one_d) p_int(b, rows);
    p_int(b, cols);
    put8(b, 't');
    put8(b, '(');
    if (!one_d) p_int(b, cols);
    p_int(b, 1);
    put8(b, 't');
    put8(b, 0x89); /* NEWFALSE */
    p_global(b, "collections", "OrderedDict");
    put8(b, ')');
    put8(b, 'R');
    put8(b, 't');
    put8(b, 'R');
    p_memo(b);
}

typedef struct zmember {
    char name[64];
    const void *data;
    size_t size;
} zmember;

static int write_zip(const char *path, const zmember *m, int n) {
    buf z = {0}, cd = {0};
    for (int i = 0; i < n; i++) {
        uint32_t crc = (uint32_t)crc32(crc32(0, Z_NULL, 0), m[i].data, (uInt)m[i].size);
        size_t nl = strlen(m[i].name);
        uint32_t local = (uint32_t)z.n;
        put32(&z, 0x04034b50);
        put16(&z, 20);
        put16(&z, 0);
        put16(&z, 0);
        put32(&z, 0);
        put32(&z, crc);
        put32(&z, (uint32_t)m[i].size);
        put32(&z, (uint32_t)m[i].size);
        put16(&z, (unsigned)nl);
        put16(&z, 0);
        put(&z, m[i].name, nl);
        put(&z, m[i].data, m[i].size);
        put32(&cd, 0x02014b50);
        put16(&cd, 20);
        put16(&cd, 20);
        put16(&cd, 0);
        put16(&cd, 0);
        put32(&cd, 0);
        put32(&cd, crc);
        put32(&cd, (uint32_t)m[i].size);
        put32(&cd, (uint32_t)m[i].size);
        put16(&cd, (unsigned)nl);
        put16(&cd, 0);
        put16(&cd, 0);
        put16(&cd, 0);
        put16(&cd, 0);
        put32(&cd, 0);
        put32(&cd, local);
        put(&cd, m[i].name, nl);
    }
    uint32_t cd_off = (uint32_t)z.n;
    put(&z, cd.p, cd.n);
    put32(&z, 0x06054b50);
    put16(&z, 0);
    put16(&z, 0);
    put16(&z, (unsigned)n);
    put16(&z, (unsigned)n);
    put32(&z, (uint32_t)cd.n);
    put32(&z, cd_off);
    put16(&z, 0);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(z.p, 1, z.n, f) == z.n;
    if (f) fclose(f);
    free(z.p);
    free(cd.p);
    return ok ? 0 : -1;
}

/* kind 0: A1111 {"string_to_token": {"*": 265}, "string_to_param": {"*": [rows, 128]}, "name": .., "step": 7}
 * kind 1: the same with two terms in string_to_param
 * kind 2: diffusers learned_embeds.bin {"<tok>": [128]} */
static int write_pt(const char *path, int kind, unsigned rows) {
    static float data0[4 * 128], data1[128];
    for (int k = 0; k < 4 * 128; k++) data0[k] = syn_value(0, k);
    for (int k = 0; k < 128; k++) data1[k] = syn_value(1, k);
    buf b = {0};
    memo_n = 0;
    put8(&b, 0x80);
    put8(&b, 2);
    put8(&b, '}');
    p_memo(&b);
    put8(&b, '(');
    if (kind == 2) {
        p_str(&b, "<tok>");
        p_tensor(&b, "0", 1, 128, 1);
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
        p_tensor(&b, "0", rows, 128, 0);
        if (kind == 1) {
            p_str(&b, "#");
            p_tensor(&b, "1", 1, 128, 0);
        }
        put8(&b, 'u');
        p_str(&b, "name");
        p_str(&b, "from_pickle");
        p_str(&b, "step");
        p_int(&b, 7);
    }
    put8(&b, 'u');
    put8(&b, '.');
    zmember m[4] = {{"archive/data.pkl", b.p, b.n},
                    {"archive/data/0", kind == 2 ? (const void *)data1 : (const void *)data0,
                     kind == 2 ? sizeof data1 : rows * 128 * sizeof(float)},
                    {"archive/version", "3\n", 2},
                    {"archive/data/1", data1, sizeof data1}};
    int rc = write_zip(path, m, kind == 1 ? 4 : 3);
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
