/* image_exif.c — the one EXIF field A1111 uses: UserComment holding the infotext.
 *
 * Writing reproduces piexif.dump({"Exif": {UserComment: b"UNICODE\0" + text.encode("utf_16_be")}})
 * byte for byte: big-endian TIFF header; IFD0 with one entry (ExifIFDPointer) and a zero next-IFD
 * link; the Exif IFD with one entry (UserComment, UNDEFINED) and no next-IFD link (piexif omits it);
 * then the comment bytes. Reading accepts any byte order and IFD layout, bounds-checked. */
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "core/error.h"
#include "io/image.h"

enum { TAG_EXIF_IFD = 0x8769, TAG_USER_COMMENT = 0x9286, TYPE_LONG = 4, TYPE_UNDEFINED = 7 };

static void be16(uint8_t *p, unsigned v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int kiln_exif_build_user_comment(const char *text, uint8_t **data, size_t *size) {
    size_t n = strlen(text);
    /* UTF-16 never needs more than 2 bytes per UTF-8 byte. */
    size_t cap = 40 + 8 + 2 * n;
    uint8_t *buf = malloc(cap);
    if (!buf) return kiln_error(KILN_ENOMEM, "EXIF: out of memory");
    uint8_t *c = buf + 48; /* UTF-16BE body after the 8-byte prefix */
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) { /* invalid UTF-8: one replacement character per bad byte */
            cp = 0xFFFD;
            k = 1;
        }
        i += (size_t)k;
        if (cp >= 0x10000) {
            uint32_t v = (uint32_t)cp - 0x10000;
            be16(c + o, 0xD800 + (v >> 10));
            be16(c + o + 2, 0xDC00 + (v & 0x3FF));
            o += 4;
        } else {
            be16(c + o, (unsigned)cp);
            o += 2;
        }
    }
    uint32_t count = (uint32_t)(8 + o);
    memcpy(buf, "MM\0\x2a\0\0\0\x08", 8);
    /* IFD0 at 8: 1 entry, ExifIFDPointer -> 26, next IFD 0 */
    be16(buf + 8, 1);
    be16(buf + 10, TAG_EXIF_IFD);
    be16(buf + 12, TYPE_LONG);
    be32(buf + 14, 1);
    be32(buf + 18, 26);
    be32(buf + 22, 0);
    /* Exif IFD at 26: 1 entry, UserComment -> 40 */
    be16(buf + 26, 1);
    be16(buf + 28, TAG_USER_COMMENT);
    be16(buf + 30, TYPE_UNDEFINED);
    be32(buf + 32, count);
    be32(buf + 36, 40);
    memcpy(buf + 40, "UNICODE\0", 8);
    *data = buf;
    *size = 40 + count;
    return KILN_OK;
}

typedef struct tiff {
    const uint8_t *p;
    size_t n;
    int le;
} tiff;

static int rd16(const tiff *t, size_t off, unsigned *v) {
    if (off > t->n || t->n - off < 2) return 0;
    const uint8_t *p = t->p + off;
    *v = t->le ? (unsigned)(p[0] | p[1] << 8) : (unsigned)(p[0] << 8 | p[1]);
    return 1;
}
static int rd32(const tiff *t, size_t off, uint32_t *v) {
    if (off > t->n || t->n - off < 4) return 0;
    const uint8_t *p = t->p + off;
    *v = t->le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
               : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
    return 1;
}

/* Finds tag in the IFD at off; gives the entry's offset. */
static int find_tag(const tiff *t, uint32_t off, unsigned tag, size_t *entry) {
    unsigned count;
    if (!rd16(t, off, &count)) return 0;
    for (unsigned i = 0; i < count; i++) {
        size_t e = (size_t)off + 2 + (size_t)i * 12;
        unsigned tg;
        if (!rd16(t, e, &tg) || e + 12 > t->n) return 0;
        if (tg == tag) {
            *entry = e;
            return 1;
        }
    }
    return 0;
}

static void put_utf8(char *out, size_t *o, int32_t cp) {
    *o += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out + *o);
}

/* bytes.decode("utf_16_be", errors="replace") */
static char *utf16be_to_utf8(const uint8_t *p, size_t n) {
    char *out = malloc(n / 2 * 3 + 4 + 1);
    if (!out) return NULL;
    size_t o = 0, i = 0;
    while (i + 1 < n) {
        uint32_t u = (uint32_t)p[i] << 8 | p[i + 1];
        i += 2;
        if (u >= 0xD800 && u < 0xDC00 && i + 1 < n) {
            uint32_t lo = (uint32_t)p[i] << 8 | p[i + 1];
            if (lo >= 0xDC00 && lo < 0xE000) {
                put_utf8(out, &o, (int32_t)(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)));
                i += 2;
                continue;
            }
        }
        put_utf8(out, &o, u >= 0xD800 && u < 0xE000 ? 0xFFFD : (int32_t)u);
    }
    if (i < n) put_utf8(out, &o, 0xFFFD); /* odd trailing byte */
    out[o] = 0;
    return out;
}

/* bytes.decode("ascii", errors="replace") */
static char *ascii_to_utf8(const uint8_t *p, size_t n) {
    char *out = malloc(n * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x80)
            out[o++] = (char)p[i];
        else
            put_utf8(out, &o, 0xFFFD);
    }
    out[o] = 0;
    return out;
}

/* bytes.decode("utf8", errors="ignore"), NUL bytes dropped too (a C string cannot hold them). */
static char *utf8_ignore(const uint8_t *p, size_t n) {
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) {
            i++;
            continue;
        }
        if (cp != 0) {
            memcpy(out + o, p + i, (size_t)k);
            o += (size_t)k;
        }
        i += (size_t)k;
    }
    out[o] = 0;
    return out;
}

int kiln_exif_read_user_comment(const uint8_t *data, size_t size, char **text) {
    *text = NULL;
    tiff t = {data, size, 0};
    if (size < 8) return KILN_OK;
    if (memcmp(data, "II", 2) == 0)
        t.le = 1;
    else if (memcmp(data, "MM", 2) != 0)
        return KILN_OK;
    unsigned magic;
    uint32_t ifd0, exif_ifd, count, off;
    size_t e;
    if (!rd16(&t, 2, &magic) || magic != 42 || !rd32(&t, 4, &ifd0)) return KILN_OK;
    if (!find_tag(&t, ifd0, TAG_EXIF_IFD, &e) || !rd32(&t, e + 8, &exif_ifd)) return KILN_OK;
    if (!find_tag(&t, exif_ifd, TAG_USER_COMMENT, &e) || !rd32(&t, e + 4, &count)) return KILN_OK;
    /* Values of up to 4 bytes sit in the entry itself (UNDEFINED/ASCII: 1 byte per count). */
    if (count <= 4)
        off = (uint32_t)(e + 8);
    else if (!rd32(&t, e + 8, &off))
        return KILN_OK;
    if (off > size || size - off < count) return KILN_OK;
    const uint8_t *c = data + off;
    char *s;
    /* piexif.helper.UserComment.load; on its ValueError A1111 decodes the whole field as UTF-8. */
    if (count >= 8 && memcmp(c, "UNICODE\0", 8) == 0)
        s = utf16be_to_utf8(c + 8, count - 8);
    else if (count >= 8 && memcmp(c, "ASCII\0\0\0", 8) == 0)
        s = ascii_to_utf8(c + 8, count - 8);
    else
        s = utf8_ignore(c, count);
    if (!s) return kiln_error(KILN_ENOMEM, "EXIF UserComment: out of memory");
    if (!*s) { /* A1111 keeps an earlier "parameters" when the comment is empty */
        free(s);
        return KILN_OK;
    }
    *text = s;
    return KILN_OK;
}
