/* image_jpeg.c — JPEG encode/decode with libjpeg(-turbo); the infotext travels as EXIF UserComment
 * in an APP1 segment right after SOI, with no JFIF APP0 (what piexif.insert leaves in A1111's files). */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "core/error.h"
#include "io/image.h"

typedef struct jerr {
    struct jpeg_error_mgr mgr;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jerr;

static void on_error(j_common_ptr cinfo) {
    jerr *e = (jerr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jmp, 1);
}
static void on_message(j_common_ptr cinfo) { (void)cinfo; }

int kiln_jpeg_encode(const kiln_image *img, const char *parameters, int quality, uint8_t **data, size_t *size) {
    uint8_t *exif = NULL;
    size_t exif_size = 0;
    if (parameters) {
        KILN_TRY(kiln_exif_build_user_comment(parameters, &exif, &exif_size));
        if (exif_size + 6 > 65533) {
            free(exif);
            return kiln_error(KILN_EINVAL,
                              "JPEG: the parameters text is too long for an EXIF segment (%zu bytes, max 65527)",
                              exif_size);
        }
    }
    struct jpeg_compress_struct cinfo;
    jerr err;
    unsigned char *volatile buf = NULL;
    unsigned long len = 0;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = on_error;
    err.mgr.output_message = on_message;
    if (setjmp(err.jmp)) {
        jpeg_destroy_compress(&cinfo);
        free(buf);
        free(exif);
        return kiln_error(KILN_EFORMAT, "JPEG encode: %s", err.msg);
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, (unsigned char **)&buf, &len);
    cinfo.image_width = (JDIMENSION)img->width;
    cinfo.image_height = (JDIMENSION)img->height;
    cinfo.input_components = img->channels;
    cinfo.in_color_space = img->channels == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&cinfo); /* 4:2:0, baseline, ISLOW DCT: Pillow's defaults too */
    jpeg_set_quality(&cinfo, quality, TRUE);
    if (exif) cinfo.write_JFIF_header = FALSE;
    jpeg_start_compress(&cinfo, TRUE);
    if (exif) {
        /* APP1 payload = "Exif\0\0" + TIFF block */
        unsigned char *app1 = malloc(exif_size + 6);
        if (!app1) {
            jpeg_destroy_compress(&cinfo);
            free(buf);
            free(exif);
            return kiln_error(KILN_ENOMEM, "JPEG encode: out of memory");
        }
        memcpy(app1, "Exif\0\0", 6);
        memcpy(app1 + 6, exif, exif_size);
        jpeg_write_marker(&cinfo, JPEG_APP0 + 1, app1, (unsigned)(exif_size + 6));
        free(app1);
    }
    size_t stride = (size_t)img->width * (size_t)img->channels;
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(img->pixels + (size_t)cinfo.next_scanline * stride);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    free(exif);
    /* jpeg_mem_dest buffers come from malloc, so the caller can free() them. */
    *data = buf;
    *size = len;
    return KILN_OK;
}

/* State that must survive a longjmp out of libjpeg: it lives in the caller's frame. */
typedef struct jread {
    kiln_image img;
    uint8_t *row;
} jread;

static int jpeg_read_all(const void *data, size_t size, const char *name, int channels, jread *st,
                         kiln_image_texts *texts) {
    struct jpeg_decompress_struct cinfo;
    jerr err;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = on_error;
    err.mgr.output_message = on_message;
    if (setjmp(err.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        return kiln_error(KILN_EFORMAT, "%s: bad JPEG: %s", name, err.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)data, (unsigned long)size);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    int rc = KILN_OK;
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        rc = kiln_error(KILN_EUNSUPPORTED, "%s: CMYK JPEGs are not supported", name);
        goto done;
    }
    if (cinfo.image_width > KILN_IMAGE_MAX_SIDE || cinfo.image_height > KILN_IMAGE_MAX_SIDE) {
        rc = kiln_error(KILN_EUNSUPPORTED, "%s: %ux%u is larger than %d a side", name, cinfo.image_width,
                        cinfo.image_height, KILN_IMAGE_MAX_SIDE);
        goto done;
    }
    /* Decode colour to RGB and convert to L ourselves: Pillow converts RGB with its own luma
     * weights, which differ from taking the JPEG's Y channel. */
    cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    int sc = cinfo.output_components;
    rc = kiln_image_alloc(&st->img, (int)cinfo.output_width, (int)cinfo.output_height, channels);
    if (rc < 0) goto done;
    st->row = malloc((size_t)cinfo.output_width * (size_t)sc);
    if (!st->row) {
        rc = kiln_error(KILN_ENOMEM, "%s: out of memory", name);
        goto done;
    }
    size_t out_stride = (size_t)st->img.width * (size_t)channels;
    while (cinfo.output_scanline < cinfo.output_height) {
        size_t y = cinfo.output_scanline;
        JSAMPROW r = st->row;
        jpeg_read_scanlines(&cinfo, &r, 1);
        kiln_image_convert_row(st->row, sc, st->img.pixels + y * out_stride, channels, st->img.width);
    }
    if (texts) {
        for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
            if (m->marker != JPEG_APP0 + 1 || m->data_length < 6 || memcmp(m->data, "Exif\0\0", 6) != 0) continue;
            char *comment = NULL;
            rc = kiln_exif_read_user_comment(m->data + 6, m->data_length - 6, &comment);
            if (rc == KILN_OK && comment) rc = kiln_image_texts_add(texts, "parameters", comment, strlen(comment));
            free(comment);
            break; /* Pillow keeps only the first Exif segment */
        }
        if (rc < 0) goto done;
    }
    jpeg_finish_decompress(&cinfo);
done:
    jpeg_destroy_decompress(&cinfo);
    return rc;
}

int kiln_jpeg_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                     kiln_image_texts *texts) {
    jread st = {0};
    int rc = jpeg_read_all(data, size, name, channels, &st, texts);
    free(st.row);
    if (rc < 0) {
        kiln_image_free(&st.img);
        return rc;
    }
    *out = st.img;
    return KILN_OK;
}
