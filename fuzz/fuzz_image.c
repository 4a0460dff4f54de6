/* fuzz_image.c — libFuzzer target for image decoding (PNG/JPEG/WebP via the system codecs, our EXIF
 * and text handling around them). Any input is decoded or refused with a message; never a crash. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_image img;
    kiln_image_texts texts;
    /* the last byte picks L or RGB output so both conversion paths run */
    int channels = size && (data[size - 1] & 1) ? 1 : 3;
    if (kiln_image_decode(data, size, "fuzz", channels, &img, &texts) == 0) {
        volatile uint8_t sum = 0;
        size_t n = (size_t)img.width * (size_t)img.height * (size_t)img.channels;
        for (size_t i = 0; i < n; i++) sum += img.pixels[i];
        for (int i = 0; i < texts.n; i++) sum += (uint8_t)strlen(texts.items[i].value);
        (void)sum;
        kiln_image_texts_free(&texts);
        kiln_image_free(&img);
    }
    /* the EXIF reader on its own */
    char *comment = NULL;
    if (kiln_exif_read_user_comment(data, size, &comment) == 0 && comment) {
        volatile size_t n = strlen(comment);
        (void)n;
    }
    free(comment);
    return 0;
}
