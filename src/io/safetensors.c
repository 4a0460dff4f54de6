/* safetensors.c — mmap reader and atomic writer for .safetensors files.
 *
 * Every number in the header is distrusted: the header length must fit in the file,
 * each tensor's data_offsets must lie inside the data section, their length must equal
 * numel x dtype size (with overflow checks), and no two tensors may overlap. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

/* A header above this is refused: real files have headers of a few hundred KiB. */
#define KILN_ST_MAX_HEADER (100u << 20)

static const char *const dtype_names[KILN_DTYPE_COUNT] = {"F32", "F16", "BF16", "I64", "I32", "U8", "F64"};
static const size_t dtype_sizes[KILN_DTYPE_COUNT] = {4, 2, 2, 8, 4, 1, 8};

const char *kiln_dtype_name(kiln_dtype dtype) {
    return (unsigned)dtype < KILN_DTYPE_COUNT ? dtype_names[dtype] : "?";
}
size_t kiln_dtype_size(kiln_dtype dtype) { return (unsigned)dtype < KILN_DTYPE_COUNT ? dtype_sizes[dtype] : 0; }

static int dtype_from_name(const char *s, kiln_dtype *out) {
    for (int i = 0; i < KILN_DTYPE_COUNT; i++)
        if (!strcmp(s, dtype_names[i])) {
            *out = (kiln_dtype)i;
            return 1;
        }
    return 0;
}

/* ---- half-precision conversions ---- */
float kiln_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kiln_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* may carry into the exponent: correct */
    return (uint16_t)half;
}

float kiln_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kiln_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

int64_t kiln_st_numel(const kiln_st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void kiln_st_to_f32(const kiln_st_tensor *t, float *dst) {
    int64_t n = kiln_st_numel(t);
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case KILN_F32: memcpy(dst, p, (size_t)n * 4); break;
    case KILN_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = kiln_f16_to_f32(h);
        }
        break;
    case KILN_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = kiln_bf16_to_f32(h);
        }
        break;
    case KILN_I32:
        for (int64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = (float)v;
        }
        break;
    case KILN_I64:
        for (int64_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    case KILN_U8:
        for (int64_t i = 0; i < n; i++) dst[i] = p[i];
        break;
    case KILN_F64:
        for (int64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    default: break;
    }
}

/* ---- reader ---- */
static int cmp_by_offset(const void *a, const void *b) {
    const kiln_st_tensor *x = a, *y = b;
    const uint8_t *px = x->data, *py = y->data;
    return px < py ? -1 : px > py ? 1 : 0;
}

static void free_contents(kiln_st_file *f) {
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
}

/* Parses one tensor entry; data_base/data_size describe the data section. */
static int parse_tensor(const char *path, const char *name, json_t *entry, const uint8_t *data_base, size_t data_size,
                        kiln_st_tensor *t) {
    if (!json_is_object(entry)) return kiln_error(KILN_EFORMAT, "%s: tensor '%s': header entry is not an object", path, name);
    json_t *jd = json_object_get(entry, "dtype"), *js = json_object_get(entry, "shape"),
           *jo = json_object_get(entry, "data_offsets");
    if (!json_is_string(jd)) return kiln_error(KILN_EFORMAT, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!dtype_from_name(json_string_value(jd), &t->dtype))
        return kiln_error(KILN_EUNSUPPORTED,
                          "%s: tensor '%s': dtype %s is not supported (kiln reads F32, F16, BF16, F64, I64, I32, U8)",
                          path, name, json_string_value(jd));
    if (!json_is_array(js)) return kiln_error(KILN_EFORMAT, "%s: tensor '%s': missing \"shape\"", path, name);
    if (json_array_size(js) > KILN_MAX_DIMS)
        return kiln_error(KILN_EFORMAT, "%s: tensor '%s': %zu dimensions (at most %d)", path, name,
                          json_array_size(js), KILN_MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return kiln_error(KILN_EFORMAT, "%s: tensor '%s': shape entry %d is not a non-negative integer", path, name, i);
        t->shape[i] = (int64_t)json_integer_value(d);
        if (t->shape[i] != 0 && numel > UINT64_MAX / 16 / (uint64_t)t->shape[i])
            return kiln_error(KILN_EFORMAT, "%s: tensor '%s': shape is absurdly large", path, name);
        numel *= (uint64_t)t->shape[i];
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return kiln_error(KILN_EFORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", path, name);
    json_int_t begin = json_integer_value(json_array_get(jo, 0)), end = json_integer_value(json_array_get(jo, 1));
    if (begin < 0 || end < begin || (uint64_t)end > data_size)
        return kiln_error(KILN_EFORMAT,
                          "%s: tensor '%s': data_offsets [%lld, %lld] lie outside the data section (%zu bytes; file "
                          "truncated?)",
                          path, name, (long long)begin, (long long)end, data_size);
    uint64_t want = numel * dtype_sizes[t->dtype];
    if ((uint64_t)(end - begin) != want)
        return kiln_error(KILN_EFORMAT, "%s: tensor '%s': %lld bytes stored but dtype %s and shape need %llu", path,
                          name, (long long)(end - begin), dtype_names[t->dtype], (unsigned long long)want);
    t->data = data_base + begin;
    t->nbytes = (size_t)want;
    t->name = strdup(name);
    return t->name ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
}

static int parse_metadata(const char *path, json_t *meta, kiln_st_file *f) {
    if (!json_is_object(meta)) return kiln_error(KILN_EFORMAT, "%s: \"__metadata__\" is not an object", path);
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof(char *));
    f->meta_values = calloc(n ? n : 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_values) return kiln_error(KILN_ENOMEM, "out of memory");
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val)) continue; /* the format says strings; tolerate and skip others */
        f->meta_keys[f->n_meta] = strdup(key);
        f->meta_values[f->n_meta] = strdup(json_string_value(val));
        f->n_meta++;
    }
    return KILN_OK;
}

static int parse(const uint8_t *buf, size_t size, const char *path, kiln_st_file *f) {
    if (size < 8) return kiln_error(KILN_EFORMAT, "%s: file is %zu bytes, too short for a safetensors header", path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > size - 8)
        return kiln_error(KILN_EFORMAT, "%s: header length %llu runs past the end of the file (%zu bytes; truncated?)",
                          path, (unsigned long long)hlen, size);
    if (hlen > KILN_ST_MAX_HEADER)
        return kiln_error(KILN_EFORMAT, "%s: header length %llu is larger than any real checkpoint's", path,
                          (unsigned long long)hlen);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return kiln_error(KILN_EFORMAT, "%s: header is not valid JSON: %s (at byte %d)", path, jerr.text, jerr.position);
    int rc = KILN_OK;
    if (!json_is_object(root)) {
        rc = kiln_error(KILN_EFORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    const uint8_t *data_base = buf + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    size_t n = json_object_size(root);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    if (!f->tensors) {
        rc = kiln_error(KILN_ENOMEM, "out of memory");
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            rc = parse_metadata(path, val, f);
        } else {
            rc = parse_tensor(path, key, val, data_base, data_size, &f->tensors[f->n_tensors]);
            if (rc == KILN_OK) f->n_tensors++;
        }
        if (rc) goto done;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_by_offset);
    for (int i = 1; i < f->n_tensors; i++) {
        const kiln_st_tensor *a = &f->tensors[i - 1], *b = &f->tensors[i];
        if ((const uint8_t *)a->data + a->nbytes > (const uint8_t *)b->data) {
            rc = kiln_error(KILN_EFORMAT, "%s: tensors '%s' and '%s' overlap in the data section", path, a->name, b->name);
            goto done;
        }
    }
done:
    json_decref(root);
    return rc;
}

int kiln_st_open_memory(const void *buf, size_t size, const char *name, kiln_st_file **out) {
    kiln_st_file *f = calloc(1, sizeof *f);
    if (!f) return kiln_error(KILN_ENOMEM, "out of memory");
    f->path = strdup(name ? name : "<memory>");
    int rc = parse(buf, size, f->path, f);
    if (rc) {
        free_contents(f);
        free(f);
        return rc;
    }
    *out = f;
    return KILN_OK;
}

int kiln_st_open(const char *path, kiln_st_file **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kiln_error(KILN_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kiln_error(KILN_EIO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return kiln_error(KILN_EIO, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd);
    kiln_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        if (map) munmap(map, size);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    f->path = strdup(path);
    f->map = map;
    f->map_size = size;
    int rc = parse(map ? map : (const void *)"", size, path, f);
    if (rc) {
        kiln_st_close(f);
        return rc;
    }
    *out = f;
    return KILN_OK;
}

void kiln_st_close(kiln_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    free_contents(f);
    free(f);
}

const kiln_st_tensor *kiln_st_find(const kiln_st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char *kiln_st_meta(const kiln_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_values[i];
    return NULL;
}

/* ---- writer ---- */
static int write_all(FILE *fp, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, fp) == n; }

int kiln_st_write(const char *path, const kiln_st_write_tensor *tensors, int n_tensors, const char *const *meta_keys,
                  const char *const *meta_values, int n_meta) {
    json_t *root = json_object();
    uint64_t offset = 0;
    for (int i = 0; i < n_tensors; i++) {
        const kiln_st_write_tensor *t = &tensors[i];
        json_t *shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            json_array_append_new(shape, json_integer(t->shape[d]));
            numel *= (uint64_t)t->shape[d];
        }
        uint64_t nbytes = numel * kiln_dtype_size(t->dtype);
        json_t *entry = json_pack("{s:s, s:o, s:[I,I]}", "dtype", kiln_dtype_name(t->dtype), "shape", shape,
                                  "data_offsets", (json_int_t)offset, (json_int_t)(offset + nbytes));
        json_object_set_new(root, t->name, entry);
        offset += nbytes;
    }
    if (n_meta > 0) {
        json_t *meta = json_object();
        for (int i = 0; i < n_meta; i++) json_object_set_new(meta, meta_keys[i], json_string(meta_values[i]));
        json_object_set_new(root, "__metadata__", meta);
    }
    char *header = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!header) return kiln_error(KILN_ENOMEM, "%s: cannot build the header", path);
    size_t hlen = strlen(header), padded = (hlen + 7) & ~(size_t)7; /* 8-byte aligned data section */

    size_t tmp_len = strlen(path) + 16;
    char *tmp = malloc(tmp_len);
    snprintf(tmp, tmp_len, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int e = errno;
        free(header);
        free(tmp);
        return kiln_error(KILN_EIO, "%s: cannot create: %s", path, strerror(e));
    }
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = write_all(fp, lenbuf, 8) && write_all(fp, header, hlen) && write_all(fp, "        ", padded - hlen);
    for (int i = 0; ok && i < n_tensors; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++) numel *= (uint64_t)tensors[i].shape[d];
        ok = write_all(fp, tensors[i].data, numel * kiln_dtype_size(tensors[i].dtype));
    }
    free(header);
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        free(tmp);
        return kiln_error(KILN_EIO, "%s: write failed: %s", path, strerror(e));
    }
    free(tmp);
    return KILN_OK;
}
