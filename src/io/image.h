/* image.h — 8-bit images in and out of PNG, JPEG and WebP, with A1111's "parameters" text.
 *
 * Pixels are row-major, channels interleaved, no padding: RGB8 (3 channels) or L8 (1 channel).
 * Decoding converts whatever the file holds to the channel count asked for, as Pillow's
 * Image.convert("RGB") / convert("L") would: alpha is dropped (not composited), palettes are
 * expanded, 16-bit samples keep their high byte, gray -> RGB replicates, RGB -> L uses Pillow's
 * L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
 *
 * Text is stored where A1111 v1.9 stores it (modules/images.py save_image_with_geninfo):
 *  - PNG: one chunk per key via PngInfo.add_text: tEXt when the value is latin-1 encodable, else
 *    an uncompressed iTXt (UTF-8, empty language and translated keyword); before IDAT.
 *  - JPEG / WebP: the "parameters" text as EXIF UserComment ("UNICODE\0" + UTF-16BE), in the IFD
 *    layout piexif.dump writes; JPEG: an APP1 "Exif" segment right after SOI in place of the JFIF
 *    APP0 (piexif.insert replaces it); WebP: an extended-format EXIF chunk. Quality 80 by default
 *    (A1111 jpeg_quality), WebP lossy unless asked (webp_lossless off).
 * When reading, PNG yields all its tEXt/zTXt/iTXt chunks (values as UTF-8); JPEG and WebP yield the
 * EXIF UserComment as "parameters" (ASCII/UNICODE prefixes decoded; anything else read as UTF-8,
 * as A1111's read_info_from_image does).
 *
 * Writing to a path is atomic (io/atomic_file.h): an existing file is replaced only by a complete one. */
#ifndef KILN_IO_IMAGE_H
#define KILN_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

typedef struct kiln_image {
    int width, height;
    int channels;    /* 3 = RGB8, 1 = L8 */
    uint8_t *pixels; /* height * width * channels bytes, malloc'ed (kiln_image_free) */
} kiln_image;

typedef enum kiln_image_format {
    KILN_IMAGE_PNG,
    KILN_IMAGE_JPEG,
    KILN_IMAGE_WEBP,
} kiln_image_format;

/* A text chunk (PNG) or the EXIF comment (JPEG/WebP, key "parameters"). Both strings UTF-8. */
typedef struct kiln_image_text {
    char *key;
    char *value;
} kiln_image_text;

typedef struct kiln_image_texts {
    int n;
    kiln_image_text *items; /* malloc'ed, in file order */
} kiln_image_texts;

typedef struct kiln_image_save_options {
    int quality;     /* JPEG/WebP quality 1..100; 0 = 80 (A1111's default) */
    int lossless;    /* WebP: lossless (A1111 option webp_lossless) */
    int png_level;   /* zlib level 1..9; 0 = 6 (Pillow's default) */
    int no_replace;  /* fail instead of replacing an existing file */
} kiln_image_save_options;

/* Allocates pixels (zeroed) for a w x h image of 1 or 3 channels. */
int kiln_image_alloc(kiln_image *img, int width, int height, int channels);
/* Frees pixels and clears img; safe on a zeroed or already freed image. */
void kiln_image_free(kiln_image *img);
void kiln_image_texts_free(kiln_image_texts *texts);
/* The value of key (the last one if repeated, as Pillow's info dict keeps), or NULL. */
const char *kiln_image_texts_get(const kiln_image_texts *texts, const char *key);

/* The format of an encoded image from its first bytes; -1 if none of ours. */
int kiln_image_sniff(const void *data, size_t size);
/* From a file name's extension (.png, .jpg, .jpeg, .webp; any case); -1 if unknown. */
int kiln_image_format_from_path(const char *path);
/* 1 if this build can encode/decode the format (WebP needs KILN_WEBP). */
int kiln_image_format_supported(kiln_image_format fmt);

/* Decodes a PNG/JPEG/WebP held in memory to `channels` (1 or 3) channels. texts may be NULL.
 * name is used in messages (a path, or "request body"). Refuses images over 16384 px a side. */
int kiln_image_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                      kiln_image_texts *texts);
/* Reads and decodes a file (format from its content, not its name). */
int kiln_image_load(const char *path, int channels, kiln_image *out, kiln_image_texts *texts);

/* Encodes to a malloc'ed buffer. parameters (may be NULL) is the A1111 infotext. For PNG, extra
 * text chunks may be given too (written after "parameters"); JPEG/WebP hold only parameters. */
int kiln_image_encode(kiln_image_format fmt, const kiln_image *img, const char *parameters,
                      const kiln_image_text *extra, int n_extra, const kiln_image_save_options *opts,
                      uint8_t **data, size_t *size);
/* Encodes (format from the extension) and writes atomically. opts may be NULL. */
int kiln_image_save(const char *path, const kiln_image *img, const char *parameters,
                    const kiln_image_save_options *opts);

/* ---- per-format entry points (image_png.c, image_jpeg.c, image_webp.c) ---- */
int kiln_png_encode(const kiln_image *img, const kiln_image_text *texts, int n_texts, int level, uint8_t **data,
                    size_t *size);
int kiln_png_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                    kiln_image_texts *texts);
int kiln_jpeg_encode(const kiln_image *img, const char *parameters, int quality, uint8_t **data, size_t *size);
int kiln_jpeg_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                     kiln_image_texts *texts);
int kiln_webp_encode(const kiln_image *img, const char *parameters, int quality, int lossless, uint8_t **data,
                     size_t *size);
int kiln_webp_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                     kiln_image_texts *texts);

/* ---- helpers shared by the codecs (image.c, image_exif.c) ---- */
#define KILN_IMAGE_MAX_SIDE 16384
/* Converts src (src_channels 1..4: L, LA, RGB, RGBA) to dst (1 or 3 channels) as Pillow's convert. */
void kiln_image_convert_row(const uint8_t *src, int src_channels, uint8_t *dst, int dst_channels, int width);
/* Appends a text (copies both strings; value of vlen bytes). */
int kiln_image_texts_add(kiln_image_texts *texts, const char *key, const char *value, size_t vlen);
/* The EXIF block piexif.dump({"Exif": {UserComment: UNICODE + UTF-16BE(text)}}) makes, starting with
 * the TIFF header (no "Exif\0\0" prefix). malloc'ed. */
int kiln_exif_build_user_comment(const char *text, uint8_t **data, size_t *size);
/* Finds the Exif UserComment in a TIFF-headed EXIF block (either byte order) and decodes it to
 * UTF-8 as A1111 does. Returns 0 and *text = NULL if there is none; KILN_EFORMAT never: bad EXIF
 * is treated as "no comment". */
int kiln_exif_read_user_comment(const uint8_t *tiff, size_t size, char **text);

#endif
