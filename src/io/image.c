/* image.c — format-independent image code: buffers, texts, pixel conversion, format dispatch,
 * loading from and saving to files. The codecs live in image_png.c, image_jpeg.c, image_webp.c. */
#include "io/image.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "io/atomic_file.h"

int kiln_image_alloc(kiln_image *img, int width, int height, int channels) {
    memset(img, 0, sizeof *img);
    if (width <= 0 || height <= 0 || width > KILN_IMAGE_MAX_SIDE || height > KILN_IMAGE_MAX_SIDE)
        return kiln_error(KILN_EINVAL, "image size %dx%d is out of range (1..%d a side)", width, height,
                          KILN_IMAGE_MAX_SIDE);
    if (channels != 1 && channels != 3)
        return kiln_error(KILN_EINVAL, "image channels %d: only 1 (L) or 3 (RGB) are supported", channels);
    size_t n = (size_t)width * (size_t)height * (size_t)channels;
    img->pixels = calloc(n, 1);
    if (!img->pixels) return kiln_error(KILN_ENOMEM, "image %dx%dx%d: out of memory", width, height, channels);
    img->width = width;
    img->height = height;
    img->channels = channels;
    return KILN_OK;
}

void kiln_image_free(kiln_image *img) {
    if (!img) return;
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

void kiln_image_texts_free(kiln_image_texts *texts) {
    if (!texts) return;
    for (int i = 0; i < texts->n; i++) {
        free(texts->items[i].key);
        free(texts->items[i].value);
    }
    free(texts->items);
    memset(texts, 0, sizeof *texts);
}

const char *kiln_image_texts_get(const kiln_image_texts *texts, const char *key) {
    if (!texts) return NULL;
    /* the last one wins, as in Pillow's info dict */
    for (int i = texts->n - 1; i >= 0; i--)
        if (strcmp(texts->items[i].key, key) == 0) return texts->items[i].value;
    return NULL;
}

int kiln_image_texts_add(kiln_image_texts *texts, const char *key, const char *value, size_t vlen) {
    kiln_image_text *items = realloc(texts->items, (size_t)(texts->n + 1) * sizeof *items);
    if (!items) return kiln_error(KILN_ENOMEM, "image text: out of memory");
    texts->items = items;
    size_t klen = strlen(key);
    char *k = malloc(klen + 1), *v = malloc(vlen + 1);
    if (!k || !v) {
        free(k);
        free(v);
        return kiln_error(KILN_ENOMEM, "image text: out of memory");
    }
    memcpy(k, key, klen + 1);
    memcpy(v, value, vlen);
    v[vlen] = 0;
    items[texts->n++] = (kiln_image_text){k, v};
    return KILN_OK;
}

/* Pillow's ITU-R 601-2 luma in 16-bit fixed point (Convert.c L24). */
static inline uint8_t luma(const uint8_t *rgb) {
    return (uint8_t)(((uint32_t)rgb[0] * 19595 + (uint32_t)rgb[1] * 38470 + (uint32_t)rgb[2] * 7471 + 0x8000) >> 16);
}

void kiln_image_convert_row(const uint8_t *src, int sc, uint8_t *dst, int dc, int width) {
    for (int x = 0; x < width; x++, src += sc) {
        if (dc == 3) {
            if (sc >= 3) {
                dst[0] = src[0];
                dst[1] = src[1];
                dst[2] = src[2];
            } else {
                dst[0] = dst[1] = dst[2] = src[0];
            }
            dst += 3;
        } else {
            *dst++ = sc >= 3 ? luma(src) : src[0];
        }
    }
}

int kiln_image_sniff(const void *data, size_t size) {
    const uint8_t *p = data;
    if (size >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) return KILN_IMAGE_PNG;
    if (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return KILN_IMAGE_JPEG;
    if (size >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0) return KILN_IMAGE_WEBP;
    return -1;
}

int kiln_image_format_from_path(const char *path) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) return -1;
    if (strcasecmp(dot, ".png") == 0) return KILN_IMAGE_PNG;
    if (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0) return KILN_IMAGE_JPEG;
    if (strcasecmp(dot, ".webp") == 0) return KILN_IMAGE_WEBP;
    return -1;
}

int kiln_image_format_supported(kiln_image_format fmt) {
#ifdef KILN_HAVE_WEBP
    if (fmt == KILN_IMAGE_WEBP) return 1;
#endif
    return fmt == KILN_IMAGE_PNG || fmt == KILN_IMAGE_JPEG;
}

int kiln_image_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                      kiln_image_texts *texts) {
    if (!name) name = "image";
    if (channels != 1 && channels != 3)
        return kiln_error(KILN_EINVAL, "%s: asked for %d channels; only 1 (L) or 3 (RGB) are supported", name,
                          channels);
    kiln_image_texts local = {0};
    kiln_image img = {0};
    int rc;
    switch (kiln_image_sniff(data, size)) {
    case KILN_IMAGE_PNG: rc = kiln_png_decode(data, size, name, channels, &img, &local); break;
    case KILN_IMAGE_JPEG: rc = kiln_jpeg_decode(data, size, name, channels, &img, &local); break;
    case KILN_IMAGE_WEBP:
#ifdef KILN_HAVE_WEBP
        rc = kiln_webp_decode(data, size, name, channels, &img, &local);
#else
        rc = kiln_error(KILN_EUNSUPPORTED, "%s: WebP support was not built (KILN_WEBP=OFF)", name);
#endif
        break;
    default: rc = kiln_error(KILN_EFORMAT, "%s: not a PNG, JPEG or WebP image", name);
    }
    if (rc < 0) {
        kiln_image_free(&img);
        kiln_image_texts_free(&local);
        return rc;
    }
    *out = img;
    if (texts)
        *texts = local;
    else
        kiln_image_texts_free(&local);
    return KILN_OK;
}

int kiln_image_load(const char *path, int channels, kiln_image *out, kiln_image_texts *texts) {
    void *data;
    size_t size;
    KILN_TRY(kiln_read_file(path, (size_t)1 << 30, &data, &size));
    int rc = kiln_image_decode(data, size, path, channels, out, texts);
    free(data);
    return rc;
}

static int check_image(const kiln_image *img) {
    if (!img || !img->pixels || img->width <= 0 || img->height <= 0 || img->width > KILN_IMAGE_MAX_SIDE ||
        img->height > KILN_IMAGE_MAX_SIDE || (img->channels != 1 && img->channels != 3))
        return kiln_error(KILN_EINVAL, "image to encode is invalid (%dx%d, %d channels)", img ? img->width : 0,
                          img ? img->height : 0, img ? img->channels : 0);
    return KILN_OK;
}

int kiln_image_encode(kiln_image_format fmt, const kiln_image *img, const char *parameters,
                      const kiln_image_text *extra, int n_extra, const kiln_image_save_options *opts,
                      uint8_t **data, size_t *size) {
    static const kiln_image_save_options defaults = {0};
    if (!opts) opts = &defaults;
    KILN_TRY(check_image(img));
    int quality = opts->quality > 0 ? opts->quality : 80;
    if (quality > 100) quality = 100;
    switch (fmt) {
    case KILN_IMAGE_PNG: {
        kiln_image_text *texts = calloc((size_t)n_extra + 1, sizeof *texts);
        if (!texts) return kiln_error(KILN_ENOMEM, "PNG encode: out of memory");
        int n = 0;
        if (parameters) texts[n++] = (kiln_image_text){(char *)"parameters", (char *)parameters};
        for (int i = 0; i < n_extra; i++) texts[n++] = extra[i];
        int level = opts->png_level >= 1 && opts->png_level <= 9 ? opts->png_level : 6;
        int rc = kiln_png_encode(img, texts, n, level, data, size);
        free(texts);
        return rc;
    }
    case KILN_IMAGE_JPEG: return kiln_jpeg_encode(img, parameters, quality, data, size);
    case KILN_IMAGE_WEBP:
#ifdef KILN_HAVE_WEBP
        return kiln_webp_encode(img, parameters, quality, opts->lossless, data, size);
#else
        return kiln_error(KILN_EUNSUPPORTED, "WebP support was not built (KILN_WEBP=OFF)");
#endif
    }
    return kiln_error(KILN_EINVAL, "unknown image format %d", (int)fmt);
}

int kiln_image_save(const char *path, const kiln_image *img, const char *parameters,
                    const kiln_image_save_options *opts) {
    int fmt = kiln_image_format_from_path(path);
    if (fmt < 0)
        return kiln_error(KILN_EINVAL, "%s: unknown image extension (use .png, .jpg, .jpeg or .webp)", path);
    uint8_t *data = NULL;
    size_t size = 0;
    int rc = kiln_image_encode((kiln_image_format)fmt, img, parameters, NULL, 0, opts, &data, &size);
    if (rc < 0) return kiln_error_context(rc, "writing %s", path);
    rc = kiln_atomic_write(path, data, size, opts && opts->no_replace ? KILN_ATOMIC_NO_REPLACE : 0);
    free(data);
    return rc;
}
