/* torch_writer.h — hand-built files in the shapes torch.save writes (no torch needed): a growable byte
 * buffer, a protocol-2 pickle writer (memo puts and gets as the pickle module emits them, tensors as
 * torch._utils._rebuild_tensor_v2 calls) and a zip writer (stored or deflated members, torch's 64-byte
 * alignment padding, optional zip64 records). For the .ckpt and .pt/.bin embedding tests. */
#ifndef KILN_TEST_TORCH_WRITER_H
#define KILN_TEST_TORCH_WRITER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- a growable byte buffer ---- */
typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static inline void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static inline void put8(buf *b, unsigned v) {
    uint8_t c = (uint8_t)v;
    put(b, &c, 1);
}
static inline void put16(buf *b, unsigned v) {
    put8(b, v & 0xFF);
    put8(b, (v >> 8) & 0xFF);
}
static inline void put32(buf *b, uint32_t v) {
    put16(b, v & 0xFFFF);
    put16(b, v >> 16);
}
static inline void put64(buf *b, uint64_t v) {
    put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
}

/* ---- pickle writer (protocol 2 opcodes, as torch.save emits them) ---- */
static int memo_n;
static struct {
    char key[128];
    int slot;
} globals_seen[64];
static int n_globals_seen;
static inline void p_op(buf *b, char op) { put8(b, (uint8_t)op); }
static inline void p_memo(buf *b) { /* BINPUT after each object, like the pickle module */
    if (memo_n < 256) {
        put8(b, 'q');
        put8(b, (unsigned)memo_n);
    } else {
        put8(b, 'r');
        put32(b, (uint32_t)memo_n);
    }
    memo_n++;
}
static inline void p_get(buf *b, int slot) {
    if (slot < 256) {
        put8(b, 'h');
        put8(b, (unsigned)slot);
    } else {
        put8(b, 'j');
        put32(b, (uint32_t)slot);
    }
}
static inline void p_str(buf *b, const char *s) {
    put8(b, 'X');
    put32(b, (uint32_t)strlen(s));
    put(b, s, strlen(s));
    p_memo(b);
}
static inline void p_int(buf *b, long long v) {
    if (v >= 0 && v < 256) {
        put8(b, 'K');
        put8(b, (unsigned)v);
    } else if (v >= 0 && v < 65536) {
        put8(b, 'M');
        put16(b, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        put8(b, 'J');
        put32(b, (uint32_t)(int32_t)v);
    } else { /* LONG1 with 8 bytes */
        put8(b, 0x8a);
        put8(b, 8);
        put64(b, (uint64_t)v);
    }
}
/* A global already pickled is fetched from the memo (BINGET), as the pickle module does. */
static inline void p_global(buf *b, const char *mod, const char *name) {
    char key[128];
    snprintf(key, sizeof key, "%s\n%s", mod, name);
    for (int i = 0; i < n_globals_seen; i++)
        if (strcmp(globals_seen[i].key, key) == 0) {
            p_get(b, globals_seen[i].slot);
            return;
        }
    if (n_globals_seen < 64) {
        snprintf(globals_seen[n_globals_seen].key, sizeof globals_seen[0].key, "%s", key);
        globals_seen[n_globals_seen++].slot = memo_n;
    }
    put8(b, 'c');
    put(b, mod, strlen(mod));
    put8(b, '\n');
    put(b, name, strlen(name));
    put8(b, '\n');
    p_memo(b);
}
static inline void p_tuple_ints(buf *b, const long long *v, int n) {
    if (n == 0) {
        p_op(b, ')');
        return;
    }
    p_op(b, '(');
    for (int i = 0; i < n; i++) p_int(b, v[i]);
    p_op(b, 't');
    p_memo(b);
}
static inline void p_empty_ordered_dict(buf *b) {
    p_global(b, "collections", "OrderedDict");
    p_op(b, ')');
    p_op(b, 'R');
    p_memo(b);
}
/* torch._utils._rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel), offset, size, stride,
 * False, OrderedDict()) */
static inline void p_tensor_args(buf *b, const char *type, const char *key, long long numel, long long offset,
                          const long long *shape, const long long *stride, int ndim) {
    p_op(b, '(');
    p_op(b, '(');
    p_str(b, "storage");
    p_global(b, "torch", type);
    p_str(b, key);
    p_str(b, "cpu");
    p_int(b, numel);
    p_op(b, 't');
    p_memo(b);
    p_op(b, 'Q');
    p_int(b, offset);
    p_tuple_ints(b, shape, ndim);
    p_tuple_ints(b, stride, ndim);
    put8(b, 0x89); /* NEWFALSE */
    p_empty_ordered_dict(b);
    p_op(b, 't');
    p_memo(b);
}
static inline void p_tensor(buf *b, const char *type, const char *key, long long numel, long long offset,
                     const long long *shape, const long long *stride, int ndim) {
    p_global(b, "torch._utils", "_rebuild_tensor_v2");
    p_tensor_args(b, type, key, numel, offset, shape, stride, ndim);
    p_op(b, 'R');
    p_memo(b);
}

/* ---- zip writer: stored or deflated members, optional zip64 records ---- */
typedef struct zmember {
    const char *name;
    const void *data;
    size_t size;
    int deflate;
} zmember;

static inline buf make_zip(const zmember *m, int n, int zip64) {
    buf z = {0}, cd = {0};
    for (int i = 0; i < n; i++) {
        uLong crc = crc32(crc32(0, Z_NULL, 0), m[i].data, (uInt)m[i].size);
        buf body = {0};
        if (m[i].deflate) {
            z_stream s;
            memset(&s, 0, sizeof s);
            deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
            uLong bound = deflateBound(&s, (uLong)m[i].size);
            body.p = malloc(bound);
            s.next_in = (Bytef *)m[i].data;
            s.avail_in = (uInt)m[i].size;
            s.next_out = body.p;
            s.avail_out = (uInt)bound;
            deflate(&s, Z_FINISH);
            body.n = s.total_out;
            deflateEnd(&s);
        } else {
            put(&body, m[i].data, m[i].size);
        }
        size_t nl = strlen(m[i].name);
        uint64_t local = z.n;
        /* torch pads the local extra field so stored data starts on a 64-byte boundary */
        size_t pad = (64 - (z.n + 30 + nl + 4) % 64) % 64;
        put32(&z, 0x04034b50);
        put16(&z, zip64 ? 45 : 20);
        put16(&z, 0);
        put16(&z, m[i].deflate ? 8 : 0);
        put32(&z, 0);
        put32(&z, (uint32_t)crc);
        put32(&z, (uint32_t)body.n);
        put32(&z, (uint32_t)m[i].size);
        put16(&z, (unsigned)nl);
        put16(&z, (unsigned)(4 + pad));
        put(&z, m[i].name, nl);
        put16(&z, 0x4646); /* "FF" padding record, as PyTorch's writer does */
        put16(&z, (unsigned)pad);
        for (size_t k = 0; k < pad; k++) put8(&z, 'Z');
        put(&z, body.p, body.n);
        /* central directory entry; with zip64, sizes and offset go to the extra field */
        put32(&cd, 0x02014b50);
        put16(&cd, 45);
        put16(&cd, zip64 ? 45 : 20);
        put16(&cd, 0);
        put16(&cd, m[i].deflate ? 8 : 0);
        put32(&cd, 0);
        put32(&cd, (uint32_t)crc);
        put32(&cd, zip64 ? 0xFFFFFFFFu : (uint32_t)body.n);
        put32(&cd, zip64 ? 0xFFFFFFFFu : (uint32_t)m[i].size);
        put16(&cd, (unsigned)nl);
        put16(&cd, zip64 ? 28 : 0);
        put16(&cd, 0);
        put16(&cd, 0);
        put16(&cd, 0);
        put32(&cd, 0);
        put32(&cd, zip64 ? 0xFFFFFFFFu : (uint32_t)local);
        put(&cd, m[i].name, nl);
        if (zip64) {
            put16(&cd, 1);
            put16(&cd, 24);
            put64(&cd, m[i].size);
            put64(&cd, body.n);
            put64(&cd, local);
        }
        free(body.p);
    }
    uint64_t cd_off = z.n;
    put(&z, cd.p, cd.n);
    if (zip64) {
        uint64_t eocd64 = z.n;
        put32(&z, 0x06064b50);
        put64(&z, 44);
        put16(&z, 45);
        put16(&z, 45);
        put32(&z, 0);
        put32(&z, 0);
        put64(&z, (uint64_t)n);
        put64(&z, (uint64_t)n);
        put64(&z, cd.n);
        put64(&z, cd_off);
        put32(&z, 0x07064b50);
        put32(&z, 0);
        put64(&z, eocd64);
        put32(&z, 1);
    }
    put32(&z, 0x06054b50);
    put16(&z, 0);
    put16(&z, 0);
    put16(&z, zip64 ? 0xFFFF : (unsigned)n);
    put16(&z, zip64 ? 0xFFFF : (unsigned)n);
    put32(&z, (uint32_t)cd.n);
    put32(&z, zip64 ? 0xFFFFFFFFu : (uint32_t)cd_off);
    put16(&z, 0);
    free(cd.p);
    return z;
}

/* Starts a pickle: a fresh memo, then the PROTO 2 header. */
static inline void p_begin(buf *b) {
    memo_n = 0;
    n_globals_seen = 0;
    put8(b, 0x80);
    put8(b, 2);
}

/* Writes buffer z to path; 0 or -1. */
static inline int write_buf(const char *path, const buf *z) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(z->p, 1, z->n, f) == z->n;
    if (f) fclose(f);
    return ok ? 0 : -1;
}

#endif
