/* image_webp.c — WebP encode/decode with libwebp; the infotext goes in an EXIF chunk (extended
 * format, via libwebpmux), where piexif.insert puts it in A1111's files. Built only with KILN_WEBP. */
#include <stdlib.h>
#include <string.h>

#include <webp/decode.h>
#include <webp/demux.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include "core/error.h"
#include "io/image.h"

int kiln_webp_encode(const kiln_image *img, const char *parameters, int quality, int lossless, uint8_t **data,
                     size_t *size) {
    WebPConfig config;
    /* Pillow's settings: default preset at the quality, method 4; lossless uses quality as effort. */
    if (!WebPConfigPreset(&config, WEBP_PRESET_DEFAULT, (float)quality))
        return kiln_error(KILN_EUNSUPPORTED, "WebP encode: libwebp version mismatch");
    config.method = 4;
    config.lossless = lossless ? 1 : 0;
    WebPPicture pic;
    if (!WebPPictureInit(&pic)) return kiln_error(KILN_EUNSUPPORTED, "WebP encode: libwebp version mismatch");
    pic.width = img->width;
    pic.height = img->height;
    pic.use_argb = config.lossless;
    const uint8_t *rgb = img->pixels;
    uint8_t *expanded = NULL;
    if (img->channels == 1) { /* WebP has no gray mode: store it as RGB */
        expanded = malloc((size_t)img->width * (size_t)img->height * 3);
        if (!expanded) return kiln_error(KILN_ENOMEM, "WebP encode: out of memory");
        for (int y = 0; y < img->height; y++)
            kiln_image_convert_row(img->pixels + (size_t)y * (size_t)img->width, 1,
                                   expanded + (size_t)y * (size_t)img->width * 3, 3, img->width);
        rgb = expanded;
    }
    int ok = WebPPictureImportRGB(&pic, rgb, img->width * 3);
    free(expanded);
    if (!ok) {
        WebPPictureFree(&pic);
        return kiln_error(KILN_ENOMEM, "WebP encode: out of memory importing %dx%d", img->width, img->height);
    }
    WebPMemoryWriter writer;
    WebPMemoryWriterInit(&writer);
    pic.writer = WebPMemoryWrite;
    pic.custom_ptr = &writer;
    ok = WebPEncode(&config, &pic);
    int enc_err = pic.error_code;
    WebPPictureFree(&pic);
    if (!ok) {
        WebPMemoryWriterClear(&writer);
        return kiln_error(KILN_EFORMAT, "WebP encode failed (libwebp error %d)", enc_err);
    }
    if (!parameters) {
        /* Copy into a malloc'ed buffer so every encoder's output is freed the same way. */
        uint8_t *buf = malloc(writer.size ? writer.size : 1);
        if (buf) memcpy(buf, writer.mem, writer.size);
        size_t n = writer.size;
        WebPMemoryWriterClear(&writer);
        if (!buf) return kiln_error(KILN_ENOMEM, "WebP encode: out of memory");
        *data = buf;
        *size = n;
        return KILN_OK;
    }
    uint8_t *exif = NULL;
    size_t exif_size = 0;
    int rc = kiln_exif_build_user_comment(parameters, &exif, &exif_size);
    if (rc < 0) {
        WebPMemoryWriterClear(&writer);
        return rc;
    }
    WebPData bitstream = {writer.mem, writer.size}, exif_data = {exif, exif_size}, assembled = {NULL, 0};
    WebPMux *mux = WebPMuxCreate(&bitstream, 0);
    WebPMuxError merr = mux ? WebPMuxSetChunk(mux, "EXIF", &exif_data, 0) : WEBP_MUX_MEMORY_ERROR;
    if (merr == WEBP_MUX_OK) merr = WebPMuxAssemble(mux, &assembled);
    WebPMuxDelete(mux);
    WebPMemoryWriterClear(&writer);
    free(exif);
    if (merr != WEBP_MUX_OK) {
        WebPDataClear(&assembled);
        return kiln_error(KILN_EFORMAT, "WebP encode: adding the EXIF chunk failed (mux error %d)", (int)merr);
    }
    uint8_t *buf = malloc(assembled.size ? assembled.size : 1);
    if (!buf) {
        WebPDataClear(&assembled);
        return kiln_error(KILN_ENOMEM, "WebP encode: out of memory");
    }
    memcpy(buf, assembled.bytes, assembled.size);
    *size = assembled.size;
    *data = buf;
    WebPDataClear(&assembled);
    return KILN_OK;
}

int kiln_webp_decode(const void *data, size_t size, const char *name, int channels, kiln_image *out,
                     kiln_image_texts *texts) {
    int w = 0, h = 0;
    if (!WebPGetInfo(data, size, &w, &h)) return kiln_error(KILN_EFORMAT, "%s: bad WebP header", name);
    if (w > KILN_IMAGE_MAX_SIDE || h > KILN_IMAGE_MAX_SIDE)
        return kiln_error(KILN_EUNSUPPORTED, "%s: %dx%d is larger than %d a side", name, w, h, KILN_IMAGE_MAX_SIDE);
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(data, size, &features) != VP8_STATUS_OK)
        return kiln_error(KILN_EFORMAT, "%s: bad WebP header", name);
    if (features.has_animation) return kiln_error(KILN_EUNSUPPORTED, "%s: animated WebP is not supported", name);
    uint8_t *rgb = WebPDecodeRGB(data, size, &w, &h);
    if (!rgb) return kiln_error(KILN_EFORMAT, "%s: WebP decoding failed (corrupt or truncated)", name);
    kiln_image img;
    int rc = kiln_image_alloc(&img, w, h, channels);
    if (rc < 0) {
        WebPFree(rgb);
        return rc;
    }
    for (int y = 0; y < h; y++)
        kiln_image_convert_row(rgb + (size_t)y * (size_t)w * 3, 3, img.pixels + (size_t)y * (size_t)w * (size_t)channels,
                               channels, w);
    WebPFree(rgb);
    if (texts) {
        WebPData wd = {data, size};
        WebPDemuxer *demux = WebPDemux(&wd);
        WebPChunkIterator it;
        if (demux && WebPDemuxGetChunk(demux, "EXIF", 1, &it)) {
            const uint8_t *p = it.chunk.bytes;
            size_t n = it.chunk.size;
            /* Some writers keep the JPEG-style "Exif\0\0" prefix inside the chunk. */
            if (n >= 6 && memcmp(p, "Exif\0\0", 6) == 0) {
                p += 6;
                n -= 6;
            }
            char *comment = NULL;
            rc = kiln_exif_read_user_comment(p, n, &comment);
            if (rc == KILN_OK && comment) rc = kiln_image_texts_add(texts, "parameters", comment, strlen(comment));
            free(comment);
            WebPDemuxReleaseChunkIterator(&it);
        }
        WebPDemuxDelete(demux);
        if (rc < 0) {
            kiln_image_free(&img);
            return rc;
        }
    }
    *out = img;
    return KILN_OK;
}
