/* lora.c — loading kohya-ss LoRA / LoCon files, merging them into a model's weights in float32 as
 * A1111 --no-half does, undoing the merge, and finding a LoRA file by name. See lora.h. */
#include "model/lora.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

/* The merge rounds every product and sum separately, as the float32 reference does. GCC does not
 * fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- loading ---- */

static char *file_stem(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, base, n);
        s[n] = '\0';
    }
    return s;
}

/* A scalar tensor (shape [] or [1]) as Python's tensor.item() gives it: a double. */
static int read_scalar(const kiln_lora *l, const kiln_st_tensor *t, double *value) {
    if (kiln_st_numel(t) != 1)
        return kiln_error(KILN_EFORMAT, "%s: %s should be a scalar but has %lld values", l->path, t->name,
                          (long long)kiln_st_numel(t));
    if (t->dtype == KILN_F64) {
        memcpy(value, t->data, sizeof *value);
    } else if (t->dtype == KILN_F32 || t->dtype == KILN_F16 || t->dtype == KILN_BF16) {
        float f;
        kiln_st_to_f32(t, &f);
        *value = f;
    } else {
        return kiln_error(KILN_EFORMAT, "%s: %s has dtype %s, not a float", l->path, t->name, kiln_dtype_name(t->dtype));
    }
    return KILN_OK;
}

static kiln_lora_module *module_for(kiln_lora *l, const char *key, size_t key_len) {
    /* Tensors of one module are usually adjacent: search from the end. */
    for (int i = l->n_modules - 1; i >= 0; i--)
        if (strlen(l->modules[i].key) == key_len && !strncmp(l->modules[i].key, key, key_len)) return &l->modules[i];
    kiln_lora_module *md = &l->modules[l->n_modules];
    memset(md, 0, sizeof *md);
    if (!(md->key = strndup(key, key_len))) return NULL;
    l->n_modules++;
    return md;
}

static int fill_modules(kiln_lora *l) {
    const kiln_st_file *f = l->file;
    l->modules = calloc((size_t)(f->n_tensors ? f->n_tensors : 1), sizeof *l->modules);
    if (!l->modules) return kiln_error(KILN_ENOMEM, "out of memory");
    for (int i = 0; i < f->n_tensors; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        const char *dot = strchr(t->name, '.');
        if (!strncmp(t->name, "bundle_emb.", 11)) { /* embeddings bundled in the LoRA: not handled */
            l->n_ignored++;
            continue;
        }
        if (!dot || dot == t->name)
            return kiln_error(KILN_EFORMAT, "%s: tensor %s is not KEY.PART (a LoRA file has KEY.lora_up.weight, ...)",
                              l->path, t->name);
        const char *part = dot + 1;
        kiln_lora_module *md = module_for(l, t->name, (size_t)(dot - t->name));
        if (!md) return kiln_error(KILN_ENOMEM, "out of memory");
        const kiln_st_tensor **slot = NULL;
        if (!strcmp(part, "lora_up.weight") || !strcmp(part, "lora_B.weight")) {
            slot = &md->up;
        } else if (!strcmp(part, "lora_down.weight") || !strcmp(part, "lora_A.weight")) {
            slot = &md->down;
        } else if (!strcmp(part, "alpha")) {
            KILN_TRY(read_scalar(l, t, &md->alpha));
            md->has_alpha = 1;
        } else if (!strcmp(part, "scale")) {
            KILN_TRY(read_scalar(l, t, &md->scale));
            md->has_scale = 1;
        } else {
            return kiln_error(KILN_EUNSUPPORTED,
                              "%s: module %s has a \"%s\" tensor: only LoRA/LoCon modules (lora_up, lora_down, "
                              "alpha) are supported, not other LyCORIS types",
                              l->path, md->key, part);
        }
        if (slot) {
            if (*slot) return kiln_error(KILN_EFORMAT, "%s: module %s has two %s tensors", l->path, md->key, part);
            if (t->dtype != KILN_F32 && t->dtype != KILN_F16 && t->dtype != KILN_BF16)
                return kiln_error(KILN_EFORMAT, "%s: %s has dtype %s, not a float", l->path, t->name,
                                  kiln_dtype_name(t->dtype));
            if (t->ndim != 2 && t->ndim != 4)
                return kiln_error(KILN_EFORMAT, "%s: %s has %d dimensions (2 or 4 expected)", l->path, t->name,
                                  t->ndim);
            if (t->shape[0] < 1 || kiln_st_numel(t) < 1)
                return kiln_error(KILN_EFORMAT, "%s: %s is empty", l->path, t->name);
            *slot = t;
        }
    }
    for (int i = 0; i < l->n_modules; i++) {
        const kiln_lora_module *md = &l->modules[i];
        if (!md->up || !md->down)
            return kiln_error(KILN_EFORMAT, "%s: module %s lacks its %s tensor", l->path, md->key,
                              md->up ? "lora_down.weight" : "lora_up.weight");
    }
    return KILN_OK;
}

void kiln_lora_free(kiln_lora *l) {
    if (!l) return;
    for (int i = 0; i < l->n_modules; i++) free(l->modules[i].key);
    free(l->modules);
    kiln_st_close(l->file);
    free(l->path);
    free(l->name);
    free(l->alias);
    free(l);
}

/* Takes over the opened file f (closed on failure) and reads its modules. */
static int finish_load(kiln_st_file *f, const char *path, kiln_lora **out) {
    kiln_lora *l = calloc(1, sizeof *l);
    if (!l) {
        kiln_st_close(f);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    l->file = f;
    l->path = strdup(path);
    l->name = file_stem(path);
    const char *alias = kiln_st_meta(f, "ss_output_name");
    if (alias) l->alias = strdup(alias);
    int rc;
    if (!l->path || !l->name || (alias && !l->alias))
        rc = kiln_error(KILN_ENOMEM, "out of memory");
    else
        rc = fill_modules(l);
    if (rc) {
        kiln_lora_free(l);
        return rc;
    }
    *out = l;
    return KILN_OK;
}

int kiln_lora_load(const char *path, kiln_lora **out) {
    if (!path || !out) return kiln_error(KILN_EINVAL, "kiln_lora_load: path and out are required");
    kiln_st_file *f;
    int rc = kiln_st_open(path, &f);
    if (rc) return kiln_error_context(rc, "loading LoRA: ");
    return finish_load(f, path, out);
}

int kiln_lora_load_memory(const void *buf, size_t size, const char *name, kiln_lora **out) {
    if (!buf || !name || !out) return kiln_error(KILN_EINVAL, "kiln_lora_load_memory: buffer, name and out are required");
    kiln_st_file *f;
    int rc = kiln_st_open_memory(buf, size, name, &f);
    if (rc) return kiln_error_context(rc, "loading LoRA: ");
    return finish_load(f, name, out);
}

/* ---- the backup of original tensors ---- */

typedef struct backup_entry {
    char *name;
    kiln_dtype dtype;
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    const void *data;
    void *owned;          /* the store's buffer, taken over so replacing the tensor does not free it */
    const char *source;
} backup_entry;

struct kiln_lora_backup {
    int n, cap;
    backup_entry *items;
};

void kiln_lora_backup_free(struct kiln_lora_backup *b) {
    if (!b) return;
    for (int i = 0; i < b->n; i++) {
        free(b->items[i].name);
        free(b->items[i].owned);
    }
    free(b->items);
    free(b);
}

/* Records weight `name` before its first change since the last restore. */
static int backup_weight(struct kiln_model *m, kiln_weight *t) {
    struct kiln_lora_backup *b = m->lora_backup;
    if (!b && !(b = m->lora_backup = calloc(1, sizeof *b))) return kiln_error(KILN_ENOMEM, "out of memory");
    for (int i = 0; i < b->n; i++)
        if (!strcmp(b->items[i].name, t->name)) return KILN_OK;
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 64;
        backup_entry *items = realloc(b->items, sizeof *items * (size_t)cap);
        if (!items) return kiln_error(KILN_ENOMEM, "out of memory");
        b->items = items;
        b->cap = cap;
    }
    backup_entry *e = &b->items[b->n];
    if (!(e->name = strdup(t->name))) return kiln_error(KILN_ENOMEM, "out of memory");
    e->dtype = t->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->data = t->data;
    e->owned = t->owned;
    e->source = t->source;
    t->owned = NULL;
    b->n++;
    return KILN_OK;
}

int kiln_model_restore_weights(struct kiln_model *m) {
    struct kiln_lora_backup *b = m ? m->lora_backup : NULL;
    if (!b) return 0;
    int n = b->n, rc = KILN_OK;
    for (int i = 0; i < b->n; i++) {
        backup_entry *e = &b->items[i];
        int r = e->owned ? kiln_weights_add_owned(m->weights, e->name, e->dtype, e->ndim, e->shape, e->owned, e->source)
                         : kiln_weights_add_view(m->weights, e->name, e->dtype, e->ndim, e->shape, e->data, e->source);
        e->owned = NULL; /* the store has it now (add_owned frees it even on failure) */
        if (r && !rc) rc = r;
    }
    kiln_lora_backup_free(b);
    m->lora_backup = NULL;
    return rc ? rc : n;
}

/* ---- merging ---- */

/* One module's plan: where it goes and the matrix shapes of the product. */
typedef struct merge_plan {
    const kiln_lora_module *md;
    kiln_lora_target target;
    int64_t rows, cols;   /* updown is [rows, cols] = up [rows, r] @ down [r, cols] */
    int64_t r;
    int64_t row_offset;   /* first row of W it adds to (q/k/v blocks of a fused in_proj) */
    int64_t pad_in;       /* inpainting conv_in: W has pad_in input channels, updown 4 (A1111 pads with 0) */
    int skip;             /* an incomplete q/k/v/out set of a MultiheadAttention: not applied, as A1111 */
} merge_plan;

static const char *st_shape(const kiln_st_tensor *t, char *buf, size_t n) { return kiln_shape_str(t->ndim, t->shape, buf, n); }

/* Checks that module md fits weight w and fills the product's shape. */
static int plan_module(const kiln_lora *l, const kiln_weight *w, merge_plan *p) {
    const kiln_lora_module *md = p->md;
    char ws[96], us[96], ds[96];
    kiln_shape_str(w->ndim, w->shape, ws, sizeof ws);
    st_shape(md->up, us, sizeof us);
    st_shape(md->down, ds, sizeof ds);
    if ((w->ndim != 2 && w->ndim != 4) || kiln_weight_numel(w) < 1)
        return kiln_error(KILN_EUNSUPPORTED, "LoRA %s: module %s targets %s %s, which is neither Linear nor Conv2d",
                          l->name, md->key, w->name, ws);
    int64_t r = md->down->shape[0];
    int64_t up_rows = md->up->shape[0];
    if (kiln_st_numel(md->up) != up_rows * r)
        return kiln_error(KILN_EINVAL, "LoRA %s: module %s: lora_up %s does not match lora_down %s (rank %lld)",
                          l->name, md->key, us, ds, (long long)r);
    if (md->up->ndim == 4 && (md->up->shape[2] != 1 || md->up->shape[3] != 1))
        return kiln_error(KILN_EUNSUPPORTED, "LoRA %s: module %s: lora_up %s is not 1x1", l->name, md->key, us);
    int64_t cols = kiln_st_numel(md->down) / r;
    int64_t w_rows = w->shape[0], w_cols = kiln_weight_numel(w) / w->shape[0];
    p->r = r;
    p->rows = up_rows;
    p->cols = cols;
    p->row_offset = 0;
    p->pad_in = 0;
    if (p->target.row_block >= 0) { /* q, k or v rows of in_proj_weight [3H, H] */
        if (w_rows % 3)
            return kiln_error(KILN_EINVAL, "LoRA %s: module %s: fused projection %s %s has no q/k/v thirds",
                              l->name, md->key, w->name, ws);
        w_rows /= 3;
        p->row_offset = p->target.row_block * w_rows;
    }
    int ok = up_rows == w_rows && cols == w_cols;
    if (!ok && w->ndim == 4 && w->shape[1] == 9 && up_rows == w_rows && cols * 9 == w_cols * 4) {
        /* An inpainting model's conv_in (9 input channels) with a LoRA for 4: A1111 zero-pads updown. */
        ok = 1;
        p->pad_in = 9;
    }
    if (!ok)
        return kiln_error(KILN_EINVAL,
                          "LoRA %s: module %s (lora_up %s, lora_down %s) does not fit %s %s%s", l->name, md->key, us,
                          ds, w->name, ws, p->target.row_block >= 0 ? " (one third of its rows)" : "");
    return KILN_OK;
}

/* W' = W + (updown * scale) * multiplier, all float32, into a new buffer. */
static int merge_one(struct kiln_model *m, const merge_plan *p, float te_mult, float unet_mult) {
    const kiln_lora_module *md = p->md;
    kiln_weight *w = (kiln_weight *)kiln_weights_find(m->weights, p->target.weight);
    int64_t n = kiln_weight_numel(w);
    float *out = malloc(sizeof *out * (size_t)n);
    float *up = malloc(sizeof *up * (size_t)(p->rows * p->r));
    float *down = malloc(sizeof *down * (size_t)(p->r * p->cols));
    if (!out || !up || !down) {
        free(out);
        free(up);
        free(down);
        return kiln_error(KILN_ENOMEM, "out of memory merging LoRA module %s", md->key);
    }
    kiln_weight_to_f32(w, out);
    kiln_st_to_f32(md->up, up);
    kiln_st_to_f32(md->down, down);
    /* network.py calc_scale(): Python doubles, then torch multiplies a float32 tensor by the scalar
     * cast to float32; the multiplier (a Python float) likewise. */
    double scale_d = md->has_scale ? md->scale : md->has_alpha ? md->alpha / (double)p->r : 1.0;
    float scale = (float)scale_d;
    float mult = p->target.is_text_encoder ? te_mult : unet_mult;
    int64_t w_cols = n / w->shape[0];
    const int64_t rows = p->rows, cols = p->cols, r = p->r;
    /* Rows are independent and each is summed over the rank in order 0..r-1 (no fused multiply-add),
     * so the result does not depend on the thread count. With pad_in, updown [o, 4, kh, kw] covers the
     * first 4 of W's 9 input channels, which start each row of W: the same column index. */
#pragma omp parallel for schedule(static) if (rows * cols * r > (1 << 18))
    for (int64_t i = 0; i < rows; i++) {
        float *dst = out + (p->row_offset + i) * w_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 256) {
            float acc[256];
            int64_t nc = cols - c0 < 256 ? cols - c0 : 256;
            for (int64_t c = 0; c < nc; c++) acc[c] = 0.0f;
            for (int64_t k = 0; k < r; k++) {
                float u = up[i * r + k];
                const float *d = down + k * cols + c0;
                for (int64_t c = 0; c < nc; c++) acc[c] += u * d[c];
            }
            for (int64_t c = 0; c < nc; c++) {
                float v = acc[c] * scale;
                v = v * mult;
                dst[c0 + c] = dst[c0 + c] + v;
            }
        }
    }
    free(up);
    free(down);
    int rc = backup_weight(m, w);
    if (rc) {
        free(out);
        return rc;
    }
    int64_t shape[KILN_MAX_DIMS];
    memcpy(shape, w->shape, sizeof shape);
    return kiln_weights_add_owned_f32(m->weights, w->name, w->ndim, shape, out, w->source);
}

/* Base of an OpenCLIP attention a target belongs to ("...attn"), or 0 when it is not one. */
static int mha_base(const kiln_weights *ws, const kiln_lora_target *t, char *base, size_t size) {
    const char *w = t->weight;
    size_t n = strlen(w);
    const char *suffix = t->row_block >= 0 ? ".in_proj_weight" : ".out_proj.weight";
    size_t k = strlen(suffix);
    if (n < k || strcmp(w + n - k, suffix) || n - k + 1 > size) return 0;
    memcpy(base, w, n - k);
    base[n - k] = '\0';
    if (t->row_block < 0) { /* an out_proj counts only when its attention has a fused in_proj */
        char in_proj[600];
        snprintf(in_proj, sizeof in_proj, "%s.in_proj_weight", base);
        if (!kiln_weights_find(ws, in_proj)) return 0;
    }
    return 1;
}

/* A1111 merges an OpenCLIP MultiheadAttention only when the LoRA has q, k, v and out for it. */
static void mark_incomplete_attention(const kiln_weights *ws, merge_plan *plans, int n) {
    for (int i = 0; i < n; i++) {
        char base[512], other[512];
        if (!mha_base(ws, &plans[i].target, base, sizeof base)) continue;
        int have = 0;
        for (int j = 0; j < n; j++) {
            if (!mha_base(ws, &plans[j].target, other, sizeof other) || strcmp(base, other)) continue;
            have |= plans[j].target.row_block >= 0 ? 1 << plans[j].target.row_block : 8;
        }
        if (have != 15) plans[i].skip = 1;
    }
}

static void note_unmatched(kiln_lora_apply_info *info, const char *key) {
    size_t pos = strlen(info->unmatched);
    if (pos + strlen(key) + 8 >= sizeof info->unmatched) {
        if (pos + 4 < sizeof info->unmatched && (pos < 3 || strcmp(info->unmatched + pos - 3, "...")))
            strcat(info->unmatched, pos ? ", ..." : "...");
        return;
    }
    snprintf(info->unmatched + pos, sizeof info->unmatched - pos, "%s%s", pos ? ", " : "", key);
}

int kiln_lora_apply_ex(struct kiln_model *m, const kiln_lora *l, float te_multiplier, float unet_multiplier,
                       kiln_lora_apply_info *info) {
    kiln_lora_apply_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    if (!m || !l) return kiln_error(KILN_EINVAL, "kiln_lora_apply: model and LoRA are required");
    kiln_lora_layers *layers;
    KILN_TRY(kiln_lora_layers_build(m, &layers));
    merge_plan *plans = calloc((size_t)(l->n_modules ? l->n_modules : 1), sizeof *plans);
    if (!plans) {
        kiln_lora_layers_free(layers);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    int n = 0, rc = KILN_OK;
    /* Everything is checked before the first weight changes. */
    for (int i = 0; i < l->n_modules && !rc; i++) {
        merge_plan *p = &plans[n];
        p->md = &l->modules[i];
        if (kiln_lora_resolve(layers, &m->config, p->md->key, &p->target)) {
            info->n_unmatched++;
            note_unmatched(info, p->md->key);
            continue;
        }
        rc = plan_module(l, kiln_weights_find(m->weights, p->target.weight), p);
        n++;
    }
    kiln_lora_layers_free(layers);
    if (!rc) mark_incomplete_attention(m->weights, plans, n);
    for (int i = 0; i < n && !rc; i++) {
        if (plans[i].skip) {
            info->n_unmatched++;
            note_unmatched(info, plans[i].md->key);
            continue;
        }
        rc = merge_one(m, &plans[i], te_multiplier, unet_multiplier);
        if (!rc) info->n_applied++;
    }
    free(plans);
    return rc ? rc : info->n_unmatched;
}

int kiln_lora_apply(struct kiln_model *m, const kiln_lora *l, float te_multiplier, float unet_multiplier) {
    return kiln_lora_apply_ex(m, l, te_multiplier, unet_multiplier, NULL);
}

/* ---- finding a LoRA by name ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted entries of dir (without "." and ".."); *n = count. NULL with *n = -1 when unreadable. */
static char **list_dir(const char *dir, int *n) {
    *n = -1;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char **names = NULL;
    int count = 0, cap = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, "..")) continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 32;
            char **grown = realloc(names, sizeof *names * (size_t)cap);
            if (!grown) break;
            names = grown;
        }
        if (!(names[count] = strdup(ent->d_name))) break;
        count++;
    }
    closedir(d);
    if (count) qsort(names, (size_t)count, sizeof *names, cmp_str);
    *n = count;
    return names;
}

static int has_ext(const char *name, const char *ext) {
    size_t n = strlen(name), k = strlen(ext);
    return n > k && !strcasecmp(name + n - k, ext);
}

/* by_alias 0: a file whose stem is name; 1: one whose ss_output_name is name. First in sorted walk order. */
static int walk_find(const char *dir, const char *name, int by_alias, int depth, char *path_out, size_t size) {
    if (depth > 16) return 0;
    int n, found = 0;
    char **names = list_dir(dir, &n);
    for (int i = 0; i < n && !found; i++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) continue;
        struct stat st;
        if (stat(path, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            found = walk_find(path, name, by_alias, depth + 1, path_out, size);
            continue;
        }
        if (!S_ISREG(st.st_mode) || !has_ext(names[i], ".safetensors")) continue;
        int match = 0;
        if (!by_alias) {
            char *stem = file_stem(names[i]);
            match = stem && !strcmp(stem, name);
            free(stem);
        } else {
            kiln_st_file *f;
            if (!kiln_st_open(path, &f)) {
                const char *alias = kiln_st_meta(f, "ss_output_name");
                match = alias && !strcmp(alias, name);
                kiln_st_close(f);
            }
            kiln_error_clear();
        }
        if (match && strlen(path) < size) {
            strcpy(path_out, path);
            found = 1;
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return found;
}

int kiln_lora_find(const char *dir, const char *name, char *path_out, size_t size) {
    if (!dir || !name || !*name || !path_out || !size) return kiln_error(KILN_EINVAL, "kiln_lora_find: bad arguments");
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) return kiln_error(KILN_ENOTFOUND, "LoRA directory %s does not exist", dir);
    if (walk_find(dir, name, 0, 0, path_out, size) || walk_find(dir, name, 1, 0, path_out, size)) return KILN_OK;
    return kiln_error(KILN_ENOTFOUND, "LoRA \"%s\" not found in %s (no NAME.safetensors, no ss_output_name \"%s\")",
                      name, dir, name);
}
