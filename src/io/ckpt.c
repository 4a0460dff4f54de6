/* ckpt.c — PyTorch zip checkpoints to kiln_st_tensor lists: the zip layout, the choice of the
 * state dict, flattening, and binding each tensor to its storage bytes. See ckpt.h. */
#include "io/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/ckpt_pickle.h"
#include "io/zip.h"

typedef struct ckpt_priv {
    void **owned; /* decompressed members and contiguous copies */
    size_t n_owned, cap_owned;
} ckpt_priv;

typedef struct loader {
    const char *name;
    kiln_zip zip;
    const kiln_zip_entry **sorted; /* entries by name, for bsearch */
    char prefix[512];              /* "archive/" */
    ckpt_priv *priv;
    kiln_st_tensor *out;
    int n_out, cap_out;
    size_t visits;
} loader;

static int keep_owned(loader *L, void *p) {
    ckpt_priv *pv = L->priv;
    if (pv->n_owned == pv->cap_owned) {
        size_t cap = pv->cap_owned ? 2 * pv->cap_owned : 16;
        void **q = realloc(pv->owned, cap * sizeof *q);
        if (!q) {
            free(p);
            return kiln_error(KILN_ENOMEM, "%s: out of memory", L->name);
        }
        pv->owned = q;
        pv->cap_owned = cap;
    }
    pv->owned[pv->n_owned++] = p;
    return KILN_OK;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp((*(const kiln_zip_entry *const *)a)->name, (*(const kiln_zip_entry *const *)b)->name);
}

static const kiln_zip_entry *find_entry(loader *L, const char *name) {
    kiln_zip_entry key = {.name = (char *)name};
    const kiln_zip_entry *kp = &key;
    const kiln_zip_entry **hit = bsearch(&kp, L->sorted, (size_t)L->zip.n_entries, sizeof *L->sorted, cmp_entry);
    return hit ? *hit : NULL;
}

/* Reads a whole member (decompressing if needed; the copy is kept until close). */
static int member(loader *L, const kiln_zip_entry *e, const uint8_t **data) {
    void *owned = NULL;
    KILN_TRY(kiln_zip_read(e, L->name, data, &owned));
    return owned ? keep_owned(L, owned) : KILN_OK;
}

/* Finds and checks the bytes of a storage (once per storage). */
static int bind_storage(loader *L, pk_value *s) {
    if (s->data) return KILN_OK;
    char path[1024];
    if (snprintf(path, sizeof path, "%sdata/%s", L->prefix, s->s) >= (int)sizeof path)
        return kiln_error(KILN_EFORMAT, "%s: storage key too long", L->name);
    const kiln_zip_entry *e = find_entry(L, path);
    if (!e) return kiln_error(KILN_EFORMAT, "%s: storage %s is missing from the archive", L->name, path);
    size_t el = pk_storage_elsize(s->st_type);
    uint64_t need;
    if (__builtin_mul_overflow((uint64_t)s->i, (uint64_t)el, &need) || e->size < need)
        return kiln_error(KILN_EFORMAT, "%s: storage %s holds %llu bytes, fewer than %lld elements of %s", L->name,
                          path, (unsigned long long)e->size, (long long)s->i, pk_storage_name(s->st_type));
    KILN_TRY(member(L, e, &s->data));
    s->data_size = need;
    if (!s->data) s->data = (const uint8_t *)""; /* an empty stored member */
    return KILN_OK;
}

static int bind_tensor(loader *L, const char *name, pk_value *t) {
    pk_value *s = t->storage;
    kiln_dtype dtype;
    switch (s->st_type) {
    case PK_ST_FLOAT: dtype = KILN_F32; break;
    case PK_ST_HALF: dtype = KILN_F16; break;
    case PK_ST_BFLOAT16: dtype = KILN_BF16; break;
    case PK_ST_DOUBLE: dtype = KILN_F32; break; /* converted below */
    case PK_ST_LONG: dtype = KILN_I64; break;
    case PK_ST_INT: dtype = KILN_I32; break;
    case PK_ST_BYTE:
    case PK_ST_BOOL: dtype = KILN_U8; break;
    default:
        return kiln_error(KILN_EUNSUPPORTED, "%s: tensor %s has unsupported element type %s", L->name, name,
                          pk_storage_name(s->st_type));
    }
    KILN_TRY(bind_storage(L, s));
    size_t el = pk_storage_elsize(s->st_type);
    /* numel and the furthest element the view reaches, with overflow checks */
    uint64_t numel = 1, last = (uint64_t)t->offset;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t span;
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
            return kiln_error(KILN_EFORMAT, "%s: tensor %s: shape overflows", L->name, name);
        if (t->shape[d] > 0 &&
            (__builtin_mul_overflow((uint64_t)(t->shape[d] - 1), (uint64_t)t->stride[d], &span) ||
             __builtin_add_overflow(last, span, &last)))
            return kiln_error(KILN_EFORMAT, "%s: tensor %s: strides overflow", L->name, name);
    }
    if (numel > 0 && last >= (uint64_t)s->i)
        return kiln_error(KILN_EFORMAT, "%s: tensor %s reaches element %llu of a %lld-element storage", L->name, name,
                          (unsigned long long)last, (long long)s->i);
    int contiguous = 1;
    uint64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && (uint64_t)t->stride[d] != expect) contiguous = 0;
        expect *= (uint64_t)t->shape[d];
    }
    size_t out_el = kiln_dtype_size(dtype);
    uint64_t nbytes = numel * out_el;
    if (nbytes > SIZE_MAX / 2) return kiln_error(KILN_EFORMAT, "%s: tensor %s is too large", L->name, name);
    const uint8_t *base = s->data;
    const void *data;
    if (contiguous && s->st_type != PK_ST_DOUBLE) {
        data = numel ? base + (uint64_t)t->offset * el : base;
    } else {
        /* Gather into a contiguous copy, walking the index in row-major order. */
        uint8_t *copy = malloc(nbytes ? (size_t)nbytes : 1);
        if (!copy) return kiln_error(KILN_ENOMEM, "%s: out of memory copying tensor %s", L->name, name);
        int64_t idx[KILN_MAX_DIMS] = {0};
        for (uint64_t i = 0; i < numel; i++) {
            uint64_t src = (uint64_t)t->offset;
            for (int d = 0; d < t->ndim; d++) src += (uint64_t)idx[d] * (uint64_t)t->stride[d];
            if (s->st_type == PK_ST_DOUBLE) {
                double x;
                memcpy(&x, base + src * 8, 8);
                float f = (float)x;
                memcpy(copy + i * 4, &f, 4);
            } else {
                memcpy(copy + i * el, base + src * el, el);
            }
            for (int d = t->ndim - 1; d >= 0; d--) {
                if (++idx[d] < t->shape[d]) break;
                idx[d] = 0;
            }
        }
        KILN_TRY(keep_owned(L, copy));
        data = copy;
    }
    if (L->n_out == L->cap_out) {
        int cap = L->cap_out ? 2 * L->cap_out : 64;
        kiln_st_tensor *q = realloc(L->out, (size_t)cap * sizeof *q);
        if (!q) return kiln_error(KILN_ENOMEM, "%s: out of memory", L->name);
        L->out = q;
        L->cap_out = cap;
    }
    kiln_st_tensor *o = &L->out[L->n_out];
    memset(o, 0, sizeof *o);
    o->name = strdup(name);
    if (!o->name) return kiln_error(KILN_ENOMEM, "%s: out of memory", L->name);
    o->dtype = dtype;
    o->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) o->shape[d] = t->shape[d];
    o->data = data;
    o->nbytes = (size_t)nbytes;
    L->n_out++;
    return KILN_OK;
}

/* Tensors of a dict, nested dicts joined with ".". */
static int flatten(loader *L, const pk_value *dict, const char *prefix, int depth) {
    if (depth > 8) return KILN_OK; /* deeper nesting is not weights (and may be a cycle) */
    for (size_t i = 0; i + 1 < dict->n; i += 2) {
        if (++L->visits > ((size_t)1 << 22))
            return kiln_error(KILN_EFORMAT, "%s: the checkpoint's dicts nest or repeat too much", L->name);
        const pk_value *k = dict->items[i], *v = dict->items[i + 1];
        if (k->kind != PK_STR || (v->kind != PK_TENSOR && v->kind != PK_DICT)) continue;
        size_t pl = strlen(prefix);
        char *name = malloc(pl + k->len + 2);
        if (!name) return kiln_error(KILN_ENOMEM, "%s: out of memory", L->name);
        memcpy(name, prefix, pl);
        if (pl) name[pl++] = '.';
        memcpy(name + pl, k->s, k->len + 1);
        int rc = v->kind == PK_TENSOR ? bind_tensor(L, name, (pk_value *)v) : flatten(L, v, name, depth + 1);
        free(name);
        KILN_TRY(rc);
    }
    return KILN_OK;
}

static const pk_value *dict_get(const pk_value *d, const char *key) {
    for (size_t i = 0; i + 1 < d->n; i += 2)
        if (d->items[i]->kind == PK_STR && strcmp(d->items[i]->s, key) == 0) return d->items[i + 1];
    return NULL;
}

static void free_priv(ckpt_priv *pv) {
    if (!pv) return;
    for (size_t i = 0; i < pv->n_owned; i++) free(pv->owned[i]);
    free(pv->owned);
    free(pv);
}

static int open_impl(const void *buf, size_t size, const char *name, kiln_ckpt_file *f) {
    loader L;
    memset(&L, 0, sizeof L);
    L.name = name;
    L.priv = calloc(1, sizeof *L.priv);
    if (!L.priv) return kiln_error(KILN_ENOMEM, "%s: out of memory", name);
    pk_arena *arena = NULL;
    int rc;
    if (size >= 2 && ((const uint8_t *)buf)[0] == 0x80) {
        rc = kiln_error(KILN_EUNSUPPORTED,
                        "%s: a legacy (torch < 1.6) pickle checkpoint; re-save it with a newer torch or convert "
                        "it to .safetensors",
                        name);
        goto done;
    }
    rc = kiln_zip_open(buf, size, name, &L.zip);
    if (rc < 0) goto done;
    /* data.pkl sits in one top folder ("archive/" or the file's stem). */
    const kiln_zip_entry *pkl = NULL;
    for (int i = 0; i < L.zip.n_entries && !pkl; i++) {
        const char *n = L.zip.entries[i].name, *slash = strchr(n, '/');
        if (strcmp(n, "data.pkl") == 0 || (slash && strcmp(slash + 1, "data.pkl") == 0)) pkl = &L.zip.entries[i];
    }
    if (!pkl) {
        rc = kiln_error(KILN_EFORMAT, "%s: a zip file without data.pkl: not a PyTorch checkpoint", name);
        goto done;
    }
    size_t plen = strlen(pkl->name) - strlen("data.pkl");
    if (plen >= sizeof L.prefix) {
        rc = kiln_error(KILN_EFORMAT, "%s: archive folder name too long", name);
        goto done;
    }
    memcpy(L.prefix, pkl->name, plen);
    L.prefix[plen] = 0;
    L.sorted = malloc((size_t)L.zip.n_entries * sizeof *L.sorted + 1);
    if (!L.sorted) {
        rc = kiln_error(KILN_ENOMEM, "%s: out of memory", name);
        goto done;
    }
    for (int i = 0; i < L.zip.n_entries; i++) L.sorted[i] = &L.zip.entries[i];
    qsort(L.sorted, (size_t)L.zip.n_entries, sizeof *L.sorted, cmp_entry);
    char bo_name[600];
    snprintf(bo_name, sizeof bo_name, "%sbyteorder", L.prefix);
    const kiln_zip_entry *bo = find_entry(&L, bo_name);
    if (bo) {
        const uint8_t *bytes;
        rc = member(&L, bo, &bytes);
        if (rc < 0) goto done;
        if (bo->size == 3 && memcmp(bytes, "big", 3) == 0) {
            rc = kiln_error(KILN_EUNSUPPORTED, "%s: a big-endian checkpoint is not supported", name);
            goto done;
        }
    }
    const uint8_t *pickle;
    rc = member(&L, pkl, &pickle);
    if (rc < 0) goto done;
    pk_value *root = NULL;
    rc = pk_load(pickle, (size_t)pkl->size, name, &arena, &root);
    if (rc < 0) goto done;
    if (root->kind != PK_DICT) {
        rc = kiln_error(KILN_EFORMAT, "%s: the checkpoint holds a single object, not a dict of tensors", name);
        goto done;
    }
    const pk_value *sd = dict_get(root, "state_dict");
    if (!sd || sd->kind != PK_DICT) sd = root; /* as A1111: pl_sd.pop("state_dict", pl_sd) */
    rc = flatten(&L, sd, "", 0);
    if (rc < 0) goto done;
    f->n_tensors = L.n_out;
    f->tensors = L.out;
    f->priv = L.priv;
    L.out = NULL;
    L.priv = NULL;
done:
    if (L.out) {
        for (int i = 0; i < L.n_out; i++) free(L.out[i].name);
        free(L.out);
    }
    free_priv(L.priv);
    free(L.sorted);
    kiln_zip_close(&L.zip);
    pk_arena_free(arena);
    return rc;
}

int kiln_ckpt_open_memory(const void *buf, size_t size, const char *name, kiln_ckpt_file **out) {
    if (!name) name = "checkpoint";
    kiln_ckpt_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name))) {
        free(f);
        return kiln_error(KILN_ENOMEM, "%s: out of memory", name);
    }
    int rc = open_impl(buf, size, name, f);
    if (rc < 0) {
        kiln_ckpt_close(f);
        return rc;
    }
    *out = f;
    return KILN_OK;
}

int kiln_ckpt_open(const char *path, kiln_ckpt_file **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kiln_error(KILN_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kiln_error(KILN_EIO, "cannot read %s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return kiln_error(KILN_EIO, "cannot map %s: %s", path, strerror(e));
        }
    }
    close(fd);
    kiln_ckpt_file *f = NULL;
    int rc = kiln_ckpt_open_memory(map ? map : "", size, path, &f);
    if (rc < 0) {
        if (map) munmap(map, size);
        return rc;
    }
    f->map = map;
    f->map_size = size;
    *out = f;
    return KILN_OK;
}

void kiln_ckpt_close(kiln_ckpt_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free_priv(f->priv);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

const kiln_st_tensor *kiln_ckpt_find(const kiln_ckpt_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

int kiln_ckpt_sniff(const void *buf, size_t size) {
    const uint8_t *p = buf;
    if (size < 30 || memcmp(p, "PK\x03\x04", 4) != 0) return 0;
    size_t n = (size_t)(p[26] | p[27] << 8);
    if (n < 8 || 30 + n > size) return 0;
    return memcmp(p + 30 + n - 8, "data.pkl", 8) == 0;
}
