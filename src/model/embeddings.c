/* embeddings.c — loading textual-inversion embeddings the way A1111's EmbeddingDatabase does.
 * See embeddings.h for the file layouts and the skip rules. */
#include "model/embeddings.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/ckpt.h"
#include "io/safetensors.h"
#include "model/weights.h"

int kiln_embedding_width(const kiln_model_config *cfg) {
    if (cfg->n_text_encoders == 2) return cfg->clip[0].hidden + cfg->clip[1].hidden;
    return cfg->clip[0].hidden;
}

int kiln_embeddings_new(int expected_width, const kiln_tokenizer *tok, kiln_embeddings **out) {
    if (!tok || !out || expected_width < 1)
        return kiln_error(KILN_EINVAL, "kiln_embeddings_new: a tokenizer and a width >= 1 are required");
    kiln_embeddings *db = calloc(1, sizeof *db);
    if (!db) return kiln_error(KILN_ENOMEM, "out of memory");
    db->expected_width = expected_width;
    db->tok = tok;
    *out = db;
    return KILN_OK;
}

static void free_embedding(kiln_embedding *e) {
    free(e->name);
    free(e->path);
    free(e->vectors);
    free(e->name_ids);
}

void kiln_embeddings_free(kiln_embeddings *db) {
    if (!db) return;
    for (int i = 0; i < db->n; i++) free_embedding(&db->items[i]);
    free(db->items);
    free(db);
}

/* Appends "what; " to db->log, ending in "..." once full. */
static void note(kiln_embeddings *db, const char *fmt, ...) KILN_PRINTF(2, 3);
static void note(kiln_embeddings *db, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t pos = strlen(db->log);
    if (pos >= 3 && !strcmp(db->log + pos - 3, "...")) return;
    if (pos + strlen(line) + 3 + 4 >= sizeof db->log) {
        snprintf(db->log + pos, sizeof db->log - pos, "%s...", pos ? "; " : "");
        return;
    }
    snprintf(db->log + pos, sizeof db->log - pos, "%s%s", pos ? "; " : "", line);
}

static char *file_stem(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    return strndup(base, n);
}

static int has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), k = strlen(ext);
    return n > k && !strcasecmp(path + n - k, ext);
}

static int is_float(kiln_dtype t) { return t == KILN_F32 || t == KILN_F16 || t == KILN_BF16 || t == KILN_F64; }

/* create_embedding_from_data on the file's tensors: picks the vector tensor(s) (*g set for SDXL). */
static int pick_tensors(const char *path, const kiln_st_tensor *ts, int n, int from_pickle, const kiln_st_tensor **l,
                        const kiln_st_tensor **g) {
    *l = *g = NULL;
    if (from_pickle) { /* 'string_to_param' in data: A1111's own .pt files */
        int count = 0;
        for (int i = 0; i < n; i++)
            if (!strncmp(ts[i].name, "string_to_param.", 16)) {
                if (!count) *l = &ts[i];
                count++;
            }
        if (count > 1) return kiln_error(KILN_EFORMAT, "%s: embedding file has multiple terms in it", path);
        if (count == 1) return KILN_OK;
    }
    const kiln_st_tensor *cl = NULL, *cg = NULL;
    for (int i = 0; i < n; i++) {
        if (!strcmp(ts[i].name, "clip_l")) cl = &ts[i];
        if (!strcmp(ts[i].name, "clip_g")) cg = &ts[i];
    }
    if (cl && cg) { /* SDXL */
        *l = cl;
        *g = cg;
        return KILN_OK;
    }
    if (n > 1)
        return kiln_error(KILN_EFORMAT, "%s: embedding file has multiple terms in it (%d tensors: %s, %s%s)", path, n,
                          ts[0].name, ts[1].name, n > 2 ? ", ..." : "");
    if (n == 0)
        return kiln_error(KILN_EFORMAT,
                          "%s: couldn't identify it as neither textual inversion embedding nor diffuser concept "
                          "(no tensors)",
                          path);
    *l = &ts[0]; /* "diffuser concepts": the one tensor */
    return KILN_OK;
}

/* rows x cols of a vector tensor: [H] is one vector. */
static int vector_shape(const char *path, const kiln_st_tensor *t, int64_t *rows, int64_t *cols) {
    if (!is_float(t->dtype))
        return kiln_error(KILN_EFORMAT, "%s: tensor %s has dtype %s, not float", path, t->name,
                          kiln_dtype_name(t->dtype));
    if (t->ndim == 1) {
        *rows = 1;
        *cols = t->shape[0];
    } else if (t->ndim == 2) {
        *rows = t->shape[0];
        *cols = t->shape[1];
    } else {
        char s[96];
        return kiln_error(KILN_EFORMAT, "%s: tensor %s has shape %s; [n, width] expected", path, t->name,
                          kiln_shape_str(t->ndim, t->shape, s, sizeof s));
    }
    if (*rows < 1 || *cols < 1) return kiln_error(KILN_EFORMAT, "%s: tensor %s is empty", path, t->name);
    return KILN_OK;
}

/* Reads the vectors (float32, rows of l then g) into e. Returns 1 when the width is not the model's. */
static int read_vectors(kiln_embeddings *db, const char *path, const kiln_st_tensor *l, const kiln_st_tensor *g,
                        kiln_embedding *e) {
    int64_t rows, cols, rows_g = 0, cols_g = 0;
    KILN_TRY(vector_shape(path, l, &rows, &cols));
    if (g) {
        KILN_TRY(vector_shape(path, g, &rows_g, &cols_g));
        if (rows_g != rows)
            return kiln_error(KILN_EFORMAT, "%s: clip_l has %lld vectors but clip_g %lld", path, (long long)rows,
                              (long long)rows_g);
    }
    int64_t width = cols + cols_g;
    if (width != db->expected_width) {
        e->width = (int)(width < 1 << 30 ? width : -1);
        return 1;
    }
    if (rows > KILN_CHUNK_TOKENS)
        return kiln_error(KILN_EUNSUPPORTED, "%s: %lld vectors; a prompt chunk holds at most %d", path,
                          (long long)rows, KILN_CHUNK_TOKENS);
    e->n_vectors = (int)rows;
    e->width = (int)width;
    float *tmp = malloc(sizeof(float) * (size_t)(rows * (cols > cols_g ? cols : cols_g)));
    e->vectors = malloc(sizeof(float) * (size_t)(rows * width));
    if (!tmp || !e->vectors) {
        free(tmp);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    kiln_st_to_f32(l, tmp);
    for (int64_t r = 0; r < rows; r++) memcpy(e->vectors + r * width, tmp + r * cols, sizeof(float) * (size_t)cols);
    if (g) {
        kiln_st_to_f32(g, tmp);
        for (int64_t r = 0; r < rows; r++)
            memcpy(e->vectors + r * width + cols, tmp + r * cols_g, sizeof(float) * (size_t)cols_g);
    }
    free(tmp);
    return KILN_OK;
}

static int tokenize_name(kiln_embeddings *db, kiln_embedding *e) {
    size_t n = 0, cap = strlen(e->name) + 8;
    e->name_ids = malloc(sizeof *e->name_ids * cap);
    if (!e->name_ids) return kiln_error(KILN_ENOMEM, "out of memory");
    KILN_TRY(kiln_tokenize(db->tok, e->name, e->name_ids, cap, &n));
    if (n > cap) { /* cannot happen with a byte-level BPE (at most one id per byte), kept for safety */
        int32_t *more = realloc(e->name_ids, sizeof *more * n);
        if (!more) return kiln_error(KILN_ENOMEM, "out of memory");
        e->name_ids = more;
        KILN_TRY(kiln_tokenize(db->tok, e->name, e->name_ids, n, &n));
    }
    if (n == 0) return kiln_error(KILN_EINVAL, "embedding name \"%s\" has no tokens", e->name);
    e->n_name_ids = (int)n;
    return KILN_OK;
}

const kiln_embedding *kiln_embeddings_find(const kiln_embeddings *db, const char *name) {
    for (int i = 0; db && i < db->n; i++)
        if (!strcmp(db->items[i].name, name)) return &db->items[i];
    return NULL;
}

int kiln_embeddings_add_file(kiln_embeddings *db, const char *path) {
    if (!db || !path) return kiln_error(KILN_EINVAL, "kiln_embeddings_add_file: database and path are required");
    kiln_embedding e = {0};
    int rc = KILN_OK, skipped_width = 0;
    kiln_st_file *sf = NULL;
    kiln_ckpt_file *cf = NULL;
    if (!(e.name = file_stem(path)) || !(e.path = strdup(path))) {
        free_embedding(&e);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    if (has_ext(path, ".png") || has_ext(path, ".webp") || has_ext(path, ".jxl") || has_ext(path, ".avif")) {
        db->n_unsupported++;
        note(db, "%s: embeddings stored in images are not supported", e.name);
        free_embedding(&e);
        return 0;
    }
    if (kiln_embeddings_find(db, e.name)) {
        db->n_unsupported++;
        note(db, "%s: another embedding of that name was loaded first (%s ignored)", e.name, path);
        free_embedding(&e);
        return 0;
    }
    const kiln_st_tensor *l = NULL, *g = NULL;
    if (has_ext(path, ".safetensors")) {
        rc = kiln_st_open(path, &sf);
        if (!rc) rc = pick_tensors(path, sf->tensors, sf->n_tensors, 0, &l, &g);
    } else if (has_ext(path, ".pt") || has_ext(path, ".bin")) {
        rc = kiln_ckpt_open(path, &cf);
        if (!rc) rc = pick_tensors(path, cf->tensors, cf->n_tensors, 1, &l, &g);
    } else {
        rc = kiln_error(KILN_EUNSUPPORTED, "%s: not an embedding file (.safetensors, .pt, .bin)", path);
    }
    if (!rc) {
        rc = read_vectors(db, path, l, g, &e);
        if (rc == 1) {
            skipped_width = 1;
            rc = KILN_OK;
        }
    }
    if (!rc && !skipped_width) rc = tokenize_name(db, &e);
    if (!rc && !skipped_width) {
        kiln_embedding *items = realloc(db->items, sizeof *items * (size_t)(db->n + 1));
        if (!items) {
            rc = kiln_error(KILN_ENOMEM, "out of memory");
        } else {
            db->items = items;
            db->items[db->n++] = e;
            memset(&e, 0, sizeof e);
        }
    }
    if (skipped_width) {
        db->n_skipped_width++;
        note(db, "%s: width %d, the model's text encoder takes %d", e.name, e.width, db->expected_width);
    }
    kiln_st_close(sf);
    kiln_ckpt_close(cf);
    free_embedding(&e);
    if (rc) return rc;
    return skipped_width ? 0 : 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int add_dir(kiln_embeddings *db, const char *dir, int depth) {
    if (depth > 16) return KILN_OK;
    DIR *d = opendir(dir);
    if (!d) return depth ? KILN_OK : kiln_error(KILN_EIO, "cannot read embeddings directory %s", dir);
    char **names = NULL;
    int n = 0, cap = 0, rc = KILN_OK;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, "..")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            char **grown = realloc(names, sizeof *names * (size_t)cap);
            if (!grown) {
                rc = kiln_error(KILN_ENOMEM, "out of memory");
                break;
            }
            names = grown;
        }
        if (!(names[n] = strdup(ent->d_name))) {
            rc = kiln_error(KILN_ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n && rc != KILN_ENOMEM; i++) {
        char path[4096];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path || stat(path, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            rc = add_dir(db, path, depth + 1);
            continue;
        }
        if (!S_ISREG(st.st_mode) || st.st_size == 0) continue;
        int known = has_ext(path, ".safetensors") || has_ext(path, ".pt") || has_ext(path, ".bin");
        int image = has_ext(path, ".png") || has_ext(path, ".webp") || has_ext(path, ".jxl") || has_ext(path, ".avif");
        if (image && strstr(names[i], ".preview.")) continue; /* A1111's preview pictures */
        if (!known && !image) continue;
        int r = kiln_embeddings_add_file(db, path);
        if (r == KILN_ENOMEM) {
            rc = r;
        } else if (r < 0) {
            db->n_failed++;
            note(db, "%s", kiln_last_error());
            kiln_error_clear();
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc == KILN_ENOMEM ? rc : KILN_OK;
}

int kiln_embeddings_add_dir(kiln_embeddings *db, const char *dir) {
    if (!db || !dir) return kiln_error(KILN_EINVAL, "kiln_embeddings_add_dir: database and directory are required");
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return kiln_error(KILN_ENOTFOUND, "embeddings directory %s does not exist", dir);
    return add_dir(db, dir, 0);
}

int kiln_embeddings_load_dir(const char *dir, int expected_width, const kiln_tokenizer *tok,
                             kiln_embeddings **out) {
    kiln_embeddings *db = NULL;
    KILN_TRY(kiln_embeddings_new(expected_width, tok, &db));
    int rc = kiln_embeddings_add_dir(db, dir);
    if (rc) {
        kiln_embeddings_free(db);
        return rc;
    }
    *out = db;
    return KILN_OK;
}

void kiln_embeddings_refs(const kiln_embeddings *db, kiln_embedding_ref *refs) {
    for (int i = 0; i < db->n; i++) {
        refs[i].name = db->items[i].name;
        refs[i].n_vectors = db->items[i].n_vectors;
        refs[i].name_ids = db->items[i].name_ids;
        refs[i].n_name_ids = db->items[i].n_name_ids;
    }
}

void kiln_embeddings_vectors(const kiln_embeddings *db, const float **vectors) {
    for (int i = 0; i < db->n; i++) vectors[i] = db->items[i].vectors;
}
