/* image_png.c — PNG encode/decode with libpng, text chunks as Pillow writes and reads them. */
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/image.h"

/* ---- libpng plumbing: errors as messages, I/O to and from memory ---- */

typedef struct png_ctx {
    const char *name;
    char msg[200];
    /* writing */
    uint8_t *out;
    size_t len, cap;
    int oom;
    /* reading */
    const uint8_t *in;
    size_t in_size, pos;
    uint8_t *raw;    /* decoded rows */
    png_bytep *rows;
} png_ctx;

static void on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}
static void on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void write_fn(png_structp png, png_bytep data, size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 65536;
        while (cap < c->len + n) cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p) {
            c->oom = 1;
            png_error(png, "out of memory");
        }
        c->out = p;
        c->cap = cap;
    }
    memcpy(c->out + c->len, data, n);
    c->len += n;
}
static void flush_fn(png_structp png) { (void)png; }

static void read_fn(png_structp png, png_bytep data, size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->in_size - c->pos) png_error(png, "file is truncated");
    memcpy(data, c->in + c->pos, n);
    c->pos += n;
}

/* ---- text encodings: Pillow writes tEXt in latin-1, iTXt in UTF-8 ---- */

/* UTF-8 -> latin-1 if every code point is < 256 (PngInfo.add_text's test); NULL otherwise. */
static char *utf8_to_latin1(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            out[o++] = (char)c;
            i++;
        } else if ((c == 0xC2 || c == 0xC3) && i + 1 < n && ((unsigned char)s[i + 1] & 0xC0) == 0x80) {
            out[o++] = (char)(((c & 0x1F) << 6) | ((unsigned char)s[i + 1] & 0x3F));
            i += 2;
        } else {
            free(out);
            return NULL;
        }
    }
    out[o] = 0;
    return out;
}

static char *latin1_to_utf8(const char *s, size_t n) {
    char *out = malloc(2 * n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            out[o++] = (char)c;
        } else {
            out[o++] = (char)(0xC0 | (c >> 6));
            out[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[o] = 0;
    return out;
}

/* ---- encode ---- */

/* The libpng part of encoding; kept apart so no local changes between setjmp and longjmp. */
static int png_write_all(png_ctx *c, const kiln_image *img, png_text *pt, int n_texts, int level) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        return kiln_error(KILN_ENOMEM, "PNG encode: out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return kiln_error(c->oom ? KILN_ENOMEM : KILN_EFORMAT, "PNG encode: %s", c->msg);
    }
    png_set_write_fn(png, c, write_fn, flush_fn);
    png_set_compression_level(png, level);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 img->channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_texts > 0) png_set_text(png, info, pt, n_texts); /* before IDAT, as Pillow puts them */
    png_write_info(png, info);
    size_t stride = (size_t)img->width * (size_t)img->channels;
    for (int y = 0; y < img->height; y++) png_write_row(png, img->pixels + (size_t)y * stride);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return KILN_OK;
}

int kiln_png_encode(const kiln_image *img, const kiln_image_text *texts, int n_texts, int level, uint8_t **data,
                    size_t *size) {
    png_ctx c = {.name = "PNG"};
    int rc = KILN_OK;
    png_text *pt = NULL;
    char **keys = NULL, **vals = NULL; /* latin-1 copies owned here */
    if (n_texts > 0) {
        pt = calloc((size_t)n_texts, sizeof *pt);
        keys = calloc((size_t)n_texts, sizeof *keys);
        vals = calloc((size_t)n_texts, sizeof *vals);
        if (!pt || !keys || !vals) {
            rc = kiln_error(KILN_ENOMEM, "PNG encode: out of memory");
            goto done;
        }
    }
    for (int i = 0; i < n_texts; i++) {
        size_t klen = strlen(texts[i].key);
        keys[i] = utf8_to_latin1(texts[i].key);
        if (klen < 1 || klen > 79 || !keys[i]) {
            rc = kiln_error(KILN_EINVAL, "PNG text key \"%s\": must be 1-79 latin-1 characters", texts[i].key);
            goto done;
        }
        vals[i] = utf8_to_latin1(texts[i].value);
        pt[i].key = keys[i];
        if (vals[i]) {
            pt[i].compression = PNG_TEXT_COMPRESSION_NONE; /* tEXt */
            pt[i].text = vals[i];
            pt[i].text_length = strlen(vals[i]);
        } else {
            pt[i].compression = PNG_ITXT_COMPRESSION_NONE; /* iTXt, UTF-8, no language */
            pt[i].text = texts[i].value;
            pt[i].itxt_length = strlen(texts[i].value);
        }
    }
    rc = png_write_all(&c, img, pt, n_texts, level);
done:
    for (int i = 0; i < n_texts && keys && vals; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    free(keys);
    free(vals);
    free(pt);
    if (rc < 0) {
        free(c.out);
        return rc;
    }
    *data = c.out;
    *size = c.len;
    return KILN_OK;
}

/* ---- decode ---- */

static int collect_texts(png_structp png, png_infop info, kiln_image_texts *texts) {
    png_textp t = NULL;
    int n = 0;
    png_get_text(png, info, &t, &n);
    for (int i = 0; i < n; i++) {
        char *key = latin1_to_utf8(t[i].key, strlen(t[i].key));
        if (!key) return kiln_error(KILN_ENOMEM, "PNG text: out of memory");
        int rc;
        if (t[i].compression == PNG_ITXT_COMPRESSION_NONE || t[i].compression == PNG_ITXT_COMPRESSION_zTXt) {
            rc = kiln_image_texts_add(texts, key, t[i].text ? t[i].text : "", t[i].text ? t[i].itxt_length : 0);
        } else { /* tEXt / zTXt are latin-1 */
            char *v = latin1_to_utf8(t[i].text ? t[i].text : "", t[i].text ? t[i].text_length : 0);
            rc = v ? kiln_image_texts_add(texts, key, v, strlen(v))
                   : kiln_error(KILN_ENOMEM, "PNG text: out of memory");
            free(v);
        }
        free(key);
        if (rc < 0) return rc;
    }
#ifdef PNG_eXIf_SUPPORTED
    /* Pillow exposes an eXIf chunk as info["exif"]; A1111 prefers its UserComment over "parameters". */
    png_bytep exif = NULL;
    png_uint_32 exif_len = 0;
    if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif && exif_len > 0) {
        char *comment = NULL;
        KILN_TRY(kiln_exif_read_user_comment(exif, exif_len, &comment));
        if (comment) {
            int replaced = 0;
            for (int i = 0; i < texts->n; i++)
                if (strcmp(texts->items[i].key, "parameters") == 0) {
                    free(texts->items[i].value);
                    texts->items[i].value = comment;
                    replaced = 1;
                    break;
                }
            if (!replaced) {
                int rc = kiln_image_texts_add(texts, "parameters", comment, strlen(comment));
                free(comment);
                if (rc < 0) return rc;
            }
        }
    }
#endif
    return KILN_OK;
}

/* The libpng part of decoding; buffers live in c so a longjmp can free them. */
static int png_read_all(png_ctx *c, int channels, kiln_image *img, kiln_image_texts *texts) {
    const char *name = c->name;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_infop end_info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || !end_info) {
        png_destroy_read_struct(&png, &info, &end_info);
        return kiln_error(KILN_ENOMEM, "%s: out of memory", name);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, &end_info);
        return kiln_error(KILN_EFORMAT, "%s: bad PNG: %s", name, c->msg);
    }
    png_set_user_limits(png, KILN_IMAGE_MAX_SIDE, KILN_IMAGE_MAX_SIDE);
    png_set_read_fn(png, c, read_fn);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int color = png_get_color_type(png, info);
    /* To 8-bit L, LA, RGB or RGBA: 16-bit keeps the high byte (Pillow's RGB;16B), palettes and
     * low-depth gray expand, transparency (tRNS) is ignored since alpha is dropped anyway. */
    png_set_strip_16(png);
    png_set_packing(png);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY) png_set_expand_gray_1_2_4_to_8(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int src_ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    int rc = KILN_OK;
    if (src_ch < 1 || src_ch > 4 || rowbytes != (size_t)w * (size_t)src_ch) {
        rc = kiln_error(KILN_EUNSUPPORTED, "%s: unexpected PNG layout (%d channels, %zu bytes a row)", name, src_ch,
                        rowbytes);
        goto done;
    }
    rc = kiln_image_alloc(img, (int)w, (int)h, channels);
    if (rc < 0) goto done;
    if (png_get_interlace_type(png, info) == PNG_INTERLACE_NONE) {
        /* One row at a time: no full-size intermediate buffer. */
        c->raw = malloc(rowbytes);
        if (!c->raw) {
            rc = kiln_error(KILN_ENOMEM, "%s: out of memory", name);
            goto done;
        }
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(png, c->raw, NULL);
            kiln_image_convert_row(c->raw, src_ch, img->pixels + (size_t)y * w * (size_t)channels, channels, (int)w);
        }
    } else {
        /* Adam7 fills rows over several passes: read the whole image first. */
        c->raw = malloc(rowbytes * h);
        c->rows = malloc(sizeof(png_bytep) * h);
        if (!c->raw || !c->rows) {
            rc = kiln_error(KILN_ENOMEM, "%s: out of memory (%ux%u)", name, (unsigned)w, (unsigned)h);
            goto done;
        }
        for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->raw + (size_t)y * rowbytes;
        png_read_image(png, c->rows);
        for (png_uint_32 y = 0; y < h; y++)
            kiln_image_convert_row(c->rows[y], src_ch, img->pixels + (size_t)y * w * (size_t)channels, channels,
                                   (int)w);
    }
    png_read_end(png, end_info);
    if (texts) {
        /* Text chunks can sit before or after IDAT; libpng splits them between info and end_info. */
        rc = collect_texts(png, info, texts);
        if (rc == KILN_OK) rc = collect_texts(png, end_info, texts);
    }
done:
    png_destroy_read_struct(&png, &info, &end_info);
    return rc;
}

int kiln_png_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                    kiln_image_texts *texts) {
    png_ctx c = {.name = name, .in = data, .in_size = size};
    kiln_image img = {0};
    int rc = png_read_all(&c, channels, &img, texts);
    free(c.raw);
    free(c.rows);
    if (rc < 0) {
        kiln_image_free(&img);
        return rc;
    }
    *out = img;
    return KILN_OK;
}
