/* zip.c — zip central-directory reader over a memory buffer (zip64 aware) and member extraction
 * with zlib. See zip.h. */
#include "io/zip.h"

#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "core/error.h"

enum {
    SIG_LOCAL = 0x04034b50,
    SIG_CENTRAL = 0x02014b50,
    SIG_EOCD = 0x06054b50,
    SIG_EOCD64 = 0x06064b50,
    SIG_EOCD64_LOCATOR = 0x07064b50,
};

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* [off, off+len) inside a buffer of size n? */
static int fits(uint64_t off, uint64_t len, size_t n) { return off <= n && len <= n - off; }

void kiln_zip_close(kiln_zip *z) {
    if (!z) return;
    for (int i = 0; i < z->n_entries; i++) free(z->entries[i].name);
    free(z->entries);
    memset(z, 0, sizeof *z);
}

int kiln_zip_open(const void *buf, size_t size, const char *name, kiln_zip *out) {
    const uint8_t *b = buf;
    memset(out, 0, sizeof *out);
    /* The end-of-central-directory record is in the last 22 + 65535 bytes. */
    if (size < 22) return kiln_error(KILN_EFORMAT, "%s: too small to be a zip archive (%zu bytes)", name, size);
    size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0, eocd = (size_t)-1;
    for (size_t i = size - 22 + 1; i-- > lo;)
        if (le32(b + i) == SIG_EOCD) {
            eocd = i;
            break;
        }
    if (eocd == (size_t)-1) return kiln_error(KILN_EFORMAT, "%s: not a zip archive (no end of central directory)", name);
    uint64_t n_entries = le16(b + eocd + 10), cd_size = le32(b + eocd + 12), cd_off = le32(b + eocd + 16);
    if (le16(b + eocd + 4) != 0 || le16(b + eocd + 6) != 0)
        return kiln_error(KILN_EUNSUPPORTED, "%s: multi-disk zip archives are not supported", name);
    /* zip64: a locator just before the EOCD points at the zip64 EOCD record with the real numbers. */
    if (eocd >= 20 && le32(b + eocd - 20) == SIG_EOCD64_LOCATOR) {
        uint64_t off64 = le64(b + eocd - 20 + 8);
        if (!fits(off64, 56, size) || le32(b + off64) != SIG_EOCD64)
            return kiln_error(KILN_EFORMAT, "%s: bad zip64 end of central directory record", name);
        n_entries = le64(b + off64 + 32);
        cd_size = le64(b + off64 + 40);
        cd_off = le64(b + off64 + 48);
    }
    if (!fits(cd_off, cd_size, size))
        return kiln_error(KILN_EFORMAT, "%s: central directory (offset %llu, %llu bytes) lies outside the file", name,
                          (unsigned long long)cd_off, (unsigned long long)cd_size);
    if (n_entries > cd_size / 46)
        return kiln_error(KILN_EFORMAT, "%s: %llu zip entries cannot fit a %llu-byte central directory", name,
                          (unsigned long long)n_entries, (unsigned long long)cd_size);
    kiln_zip z = {0};
    z.entries = calloc(n_entries ? (size_t)n_entries : 1, sizeof *z.entries);
    if (!z.entries) return kiln_error(KILN_ENOMEM, "%s: out of memory", name);
    const uint8_t *p = b + cd_off, *end = b + cd_off + cd_size;
    int rc = KILN_EFORMAT;
    for (uint64_t i = 0; i < n_entries; i++) {
        if (end - p < 46 || le32(p) != SIG_CENTRAL) {
            kiln_error(rc, "%s: zip central directory entry %llu is corrupt", name, (unsigned long long)i);
            goto fail;
        }
        uint16_t flags = le16(p + 8), method = le16(p + 10), nlen = le16(p + 28), xlen = le16(p + 30),
                 clen = le16(p + 32);
        uint64_t comp = le32(p + 20), usize = le32(p + 24), local = le32(p + 42);
        if ((size_t)(end - p) < 46u + nlen + xlen + clen) {
            kiln_error(rc, "%s: zip central directory entry %llu is truncated", name, (unsigned long long)i);
            goto fail;
        }
        kiln_zip_entry *e = &z.entries[z.n_entries];
        e->name = malloc((size_t)nlen + 1);
        if (!e->name) {
            rc = kiln_error(KILN_ENOMEM, "%s: out of memory", name);
            goto fail;
        }
        memcpy(e->name, p + 46, nlen);
        e->name[nlen] = 0;
        z.n_entries++;
        /* zip64 extra field (id 1): the 64-bit values of those fields stored as 0xFFFFFFFF, in order. */
        const uint8_t *x = p + 46 + nlen, *xend = x + xlen;
        while (xend - x >= 4) {
            uint16_t id = le16(x), len = le16(x + 2);
            if (xend - x - 4 < len) break;
            if (id == 1) {
                const uint8_t *v = x + 4, *vend = v + len;
                if (usize == 0xFFFFFFFFu && vend - v >= 8) usize = le64(v), v += 8;
                if (comp == 0xFFFFFFFFu && vend - v >= 8) comp = le64(v), v += 8;
                if (local == 0xFFFFFFFFu && vend - v >= 8) local = le64(v), v += 8;
            }
            x += 4 + len;
        }
        if (flags & 1) {
            rc = kiln_error(KILN_EUNSUPPORTED, "%s: zip member %s is encrypted", name, e->name);
            goto fail;
        }
        if (!fits(local, 30, size) || le32(b + local) != SIG_LOCAL) {
            kiln_error(rc, "%s: zip member %s: bad local header offset %llu", name, e->name, (unsigned long long)local);
            goto fail;
        }
        /* The data follows the local header, whose name/extra lengths may differ from the central ones. */
        uint64_t data_off = local + 30 + (uint64_t)le16(b + local + 26) + le16(b + local + 28);
        if (!fits(data_off, comp, size)) {
            kiln_error(rc, "%s: zip member %s (%llu bytes at %llu) runs past the end of the file", name, e->name,
                       (unsigned long long)comp, (unsigned long long)data_off);
            goto fail;
        }
        e->method = method;
        e->crc32 = le32(p + 16);
        e->comp_size = comp;
        e->size = usize;
        e->data = b + data_off;
        if (method == 0 && comp != usize) {
            kiln_error(rc, "%s: stored zip member %s has sizes %llu and %llu", name, e->name, (unsigned long long)comp,
                       (unsigned long long)usize);
            goto fail;
        }
        p += 46 + nlen + xlen + clen;
    }
    *out = z;
    return KILN_OK;
fail:
    kiln_zip_close(&z);
    return rc;
}

const kiln_zip_entry *kiln_zip_find(const kiln_zip *z, const char *name) {
    for (int i = 0; i < z->n_entries; i++)
        if (strcmp(z->entries[i].name, name) == 0) return &z->entries[i];
    return NULL;
}

int kiln_zip_read(const kiln_zip_entry *e, const char *name, const uint8_t **data, void **owned) {
    *owned = NULL;
    if (e->method == 0) {
        *data = e->data;
        return KILN_OK;
    }
    if (e->method != 8)
        return kiln_error(KILN_EUNSUPPORTED, "%s: zip member %s uses compression method %d (only stored and deflate)",
                          name, e->name, e->method);
    /* A deflate stream expands at most ~1032x; a larger claim is a lie. */
    if (e->size > (uint64_t)SIZE_MAX - 1 || e->size / 1032 > e->comp_size + 1)
        return kiln_error(KILN_EFORMAT, "%s: zip member %s claims an impossible size %llu", name, e->name,
                          (unsigned long long)e->size);
    uint8_t *buf = malloc(e->size ? (size_t)e->size : 1);
    if (!buf)
        return kiln_error(KILN_ENOMEM, "%s: out of memory inflating %s (%llu bytes)", name, e->name,
                          (unsigned long long)e->size);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
        free(buf);
        return kiln_error(KILN_ENOMEM, "%s: zlib init failed", name);
    }
    uint64_t in_left = e->comp_size, out_done = 0;
    const uint8_t *in = e->data;
    int zr;
    /* zlib counts in uInt: feed and drain in chunks so members over 4 GiB work. */
    for (;;) {
        if (zs.avail_in == 0 && in_left) {
            uInt n = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
            zs.next_in = (Bytef *)in;
            zs.avail_in = n;
            in += n;
            in_left -= n;
        }
        uint64_t room = e->size - out_done;
        zs.next_out = buf + out_done;
        zs.avail_out = room > (1u << 30) ? (1u << 30) : (uInt)room;
        uInt before = zs.avail_out;
        zr = inflate(&zs, Z_NO_FLUSH);
        out_done += before - zs.avail_out;
        if (zr == Z_STREAM_END || (zr != Z_OK && zr != Z_BUF_ERROR)) break;
        /* no progress possible: the input ran out, or the data wants more room than promised */
        if (zr == Z_BUF_ERROR && ((zs.avail_in == 0 && in_left == 0) || out_done == e->size)) break;
    }
    inflateEnd(&zs);
    if (zr != Z_STREAM_END || out_done != e->size) {
        free(buf);
        return kiln_error(KILN_EFORMAT, "%s: zip member %s: corrupt deflate data (%llu of %llu bytes)", name, e->name,
                          (unsigned long long)out_done, (unsigned long long)e->size);
    }
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t off = 0; off < e->size;) {
        uInt n = e->size - off > (1u << 30) ? (1u << 30) : (uInt)(e->size - off);
        crc = crc32(crc, buf + off, n);
        off += n;
    }
    if ((uint32_t)crc != e->crc32) {
        free(buf);
        return kiln_error(KILN_EFORMAT, "%s: zip member %s: CRC mismatch", name, e->name);
    }
    *data = buf;
    *owned = buf;
    return KILN_OK;
}
