/* weights.c — the named weight store: an array of tensors plus an open-addressing hash index. */
#include "model/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

kiln_weights *kiln_weights_new(void) { return calloc(1, sizeof(kiln_weights)); }

void kiln_weights_free(kiln_weights *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->items[i].name);
        free(w->items[i].owned);
    }
    free(w->items);
    free(w->hash);
    free(w);
}

static int find_index(const kiln_weights *w, const char *name) {
    if (!w->hash_cap) return -1;
    for (uint64_t h = hash_str(name) & (uint64_t)(w->hash_cap - 1);; h = (h + 1) & (uint64_t)(w->hash_cap - 1)) {
        int i = w->hash[h];
        if (i < 0) return -1;
        if (!strcmp(w->items[i].name, name)) return i;
    }
}

static int rehash(kiln_weights *w, int cap) {
    int *h = malloc(sizeof(int) * (size_t)cap);
    if (!h) return kiln_error(KILN_ENOMEM, "out of memory");
    memset(h, 0xff, sizeof(int) * (size_t)cap);
    for (int i = 0; i < w->n; i++) {
        uint64_t k = hash_str(w->items[i].name) & (uint64_t)(cap - 1);
        while (h[k] >= 0) k = (k + 1) & (uint64_t)(cap - 1);
        h[k] = i;
    }
    free(w->hash);
    w->hash = h;
    w->hash_cap = cap;
    return KILN_OK;
}

static int add(kiln_weights *w, const char *name, kiln_dtype dtype, int ndim, const int64_t *shape, const void *data,
               void *owned, const char *source) {
    if (ndim < 0 || ndim > KILN_MAX_DIMS) {
        free(owned);
        return kiln_error(KILN_EINVAL, "tensor %s: %d dimensions", name, ndim);
    }
    int i = find_index(w, name);
    if (i >= 0) { /* replace in place: keeps indices stable */
        kiln_weight *t = &w->items[i];
        free(t->owned);
        t->dtype = dtype;
        t->ndim = ndim;
        memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
        t->data = data;
        t->owned = owned;
        t->source = source;
        t->version++;
        return KILN_OK;
    }
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 256;
        kiln_weight *items = realloc(w->items, sizeof *items * (size_t)cap);
        if (!items) {
            free(owned);
            return kiln_error(KILN_ENOMEM, "out of memory");
        }
        w->items = items;
        w->cap = cap;
    }
    kiln_weight *t = &w->items[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    t->data = data;
    t->owned = owned;
    t->source = source;
    w->n++;
    if (w->n * 2 > w->hash_cap) return rehash(w, w->hash_cap ? w->hash_cap * 2 : 1024);
    uint64_t k = hash_str(name) & (uint64_t)(w->hash_cap - 1);
    while (w->hash[k] >= 0) k = (k + 1) & (uint64_t)(w->hash_cap - 1);
    w->hash[k] = w->n - 1;
    return KILN_OK;
}

int kiln_weights_add_view(kiln_weights *w, const char *name, kiln_dtype dtype, int ndim, const int64_t *shape,
                          const void *data, const char *source) {
    if (dtype != KILN_F32 && dtype != KILN_F16 && dtype != KILN_BF16)
        return kiln_error(KILN_EUNSUPPORTED, "tensor %s: dtype %s is not a weight dtype", name, kiln_dtype_name(dtype));
    return add(w, name, dtype, ndim, shape, data, NULL, source);
}

int kiln_weights_add_owned_f32(kiln_weights *w, const char *name, int ndim, const int64_t *shape, float *data,
                               const char *source) {
    return add(w, name, KILN_F32, ndim, shape, data, data, source);
}

int kiln_weights_add_owned(kiln_weights *w, const char *name, kiln_dtype dtype, int ndim, const int64_t *shape,
                           void *data, const char *source) {
    if (dtype != KILN_F32 && dtype != KILN_F16 && dtype != KILN_BF16) {
        free(data);
        return kiln_error(KILN_EUNSUPPORTED, "tensor %s: dtype %s is not a weight dtype", name, kiln_dtype_name(dtype));
    }
    return add(w, name, dtype, ndim, shape, data, data, source);
}

const kiln_weight *kiln_weights_find(const kiln_weights *w, const char *name) {
    int i = find_index(w, name);
    return i >= 0 ? &w->items[i] : NULL;
}

int64_t kiln_weight_numel(const kiln_weight *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void kiln_weight_to_f32(const kiln_weight *t, float *dst) {
    kiln_st_tensor st = {.dtype = t->dtype, .ndim = t->ndim, .data = t->data};
    memcpy(st.shape, t->shape, sizeof st.shape);
    kiln_st_to_f32(&st, dst);
}

const char *kiln_shape_str(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t pos = 0;
    pos += (size_t)snprintf(buf + pos, size - pos, "[");
    for (int i = 0; i < ndim && pos < size; i++)
        pos += (size_t)snprintf(buf + pos, size - pos, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (pos < size) snprintf(buf + pos, size - pos, "]");
    return buf;
}
