/* test_image.c — PNG/JPEG/WebP encode/decode, A1111 text placement, fixture PNGs, atomic writes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "test.h"

#define CHECK_STR(a, b)                                                                              \
    do {                                                                                             \
        const char *sa_ = (a), *sb_ = (b);                                                           \
        CHECK_MSG(sa_ && sb_ && strcmp(sa_, sb_) == 0, "\n  got      [%s]\n  expected [%s]",         \
                  sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");                                       \
    } while (0)

static const char *INFOTEXT =
    "a photo of a cat, (masterpiece:1.2)\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 64x64, "
    "Lora hashes: \"x: 0123456789ab\"";
/* not latin-1: forces iTXt / exercises UTF-16 surrogates */
static const char *INFOTEXT_UTF8 = "\xe7\x8c\xab \xf0\x9f\x98\x80 caf\xc3\xa9\nSteps: 1, Seed: 2, Size: 7x5";

static char tmpdir[64];

static const char *tmp_path(const char *name) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

/* A smooth test pattern (JPEG-friendly) of any size. */
static void fill_pattern(kiln_image *img) {
    for (int y = 0; y < img->height; y++)
        for (int x = 0; x < img->width; x++)
            for (int c = 0; c < img->channels; c++)
                img->pixels[((size_t)y * img->width + x) * img->channels + c] =
                    (uint8_t)(x * 160 / (img->width > 1 ? img->width - 1 : 1) +
                              y * 60 / (img->height > 1 ? img->height - 1 : 1) + c * 10);
}

static size_t find_bytes(const uint8_t *hay, size_t n, const void *needle, size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0) return i;
    return (size_t)-1;
}

static int count_tmp_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp-")) n++;
    if (d) closedir(d);
    return n;
}

TEST(png_round_trip_text_chunks) {
    int sizes[][2] = {{1, 1}, {7, 5}, {64, 64}, {33, 2}};
    for (int s = 0; s < 4; s++) {
        for (int ch = 1; ch <= 3; ch += 2) {
            kiln_image img;
            CHECK(kiln_image_alloc(&img, sizes[s][0], sizes[s][1], ch) == 0);
            fill_pattern(&img);
            kiln_image_text extra[] = {{"latin", "caf\xc3\xa9 \xc2\xb0"}, {"utf8", (char *)INFOTEXT_UTF8}};
            uint8_t *buf = NULL;
            size_t n = 0;
            CHECK(kiln_image_encode(KILN_IMAGE_PNG, &img, INFOTEXT, extra, 2, NULL, &buf, &n) == 0);
            /* chunk types as Pillow writes them: tEXt for latin-1 (value in latin-1), iTXt otherwise;
             * all before IDAT */
            size_t at_params = find_bytes(buf, n, "tEXtparameters\0", 15);
            size_t at_latin = find_bytes(buf, n, "tEXtlatin\0caf\xe9 \xb0", 16);
            size_t at_utf8 = find_bytes(buf, n, "iTXtutf8\0\0\0\0\0", 13);
            size_t at_idat = find_bytes(buf, n, "IDAT", 4);
            CHECK(at_params != (size_t)-1 && at_latin != (size_t)-1 && at_utf8 != (size_t)-1);
            CHECK(at_params < at_latin && at_latin < at_utf8 && at_utf8 < at_idat);
            kiln_image out;
            kiln_image_texts texts;
            CHECK(kiln_image_decode(buf, n, "round trip", ch, &out, &texts) == 0);
            CHECK(out.width == img.width && out.height == img.height && out.channels == ch);
            CHECK(memcmp(out.pixels, img.pixels, (size_t)img.width * img.height * ch) == 0);
            CHECK(texts.n == 3);
            CHECK_STR(kiln_image_texts_get(&texts, "parameters"), INFOTEXT);
            CHECK_STR(kiln_image_texts_get(&texts, "latin"), "caf\xc3\xa9 \xc2\xb0");
            CHECK_STR(kiln_image_texts_get(&texts, "utf8"), INFOTEXT_UTF8);
            kiln_image_texts_free(&texts);
            kiln_image_free(&out);
            free(buf);
            kiln_image_free(&img);
        }
    }
}

/* RGB read as L uses Pillow's luma; L read as RGB replicates. */
TEST(png_channel_conversion) {
    kiln_image img;
    CHECK(kiln_image_alloc(&img, 4, 1, 3) == 0);
    const uint8_t px[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 200, 99};
    memcpy(img.pixels, px, 12);
    uint8_t *buf;
    size_t n;
    CHECK(kiln_image_encode(KILN_IMAGE_PNG, &img, NULL, NULL, 0, NULL, &buf, &n) == 0);
    kiln_image l;
    CHECK(kiln_image_decode(buf, n, "rgb", 1, &l, NULL) == 0);
    /* (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 */
    CHECK(l.pixels[0] == 76 && l.pixels[1] == 150 && l.pixels[2] == 29);
    CHECK(l.pixels[3] == (uint8_t)((10 * 19595 + 200 * 38470 + 99 * 7471 + 0x8000) >> 16));
    free(buf);
    CHECK(kiln_image_encode(KILN_IMAGE_PNG, &l, NULL, NULL, 0, NULL, &buf, &n) == 0);
    kiln_image rgb;
    CHECK(kiln_image_decode(buf, n, "l", 3, &rgb, NULL) == 0);
    CHECK(rgb.pixels[0] == 76 && rgb.pixels[1] == 76 && rgb.pixels[2] == 76 && rgb.pixels[11] == l.pixels[3]);
    free(buf);
    kiln_image_free(&rgb);
    kiln_image_free(&l);
    kiln_image_free(&img);
}

/* Writes a PNG of any libpng color type/depth (test input other encoders would make). */
static int write_png_raw(const char *path, int w, int h, int color, int depth, uint8_t *raw, int interlace) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(fp);
        return -1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 128, 255}, {7, 8, 9}};
        png_set_PLTE(png, info, pal, 4);
        png_byte trns[4] = {255, 0, 128, 255};
        png_set_tRNS(png, info, trns, 4, NULL);
    }
    png_text t = {0};
    t.compression = PNG_TEXT_COMPRESSION_zTXt;
    t.key = (char *)"parameters";
    t.text = (char *)"zipped\xe9";
    t.text_length = 7;
    png_set_text(png, info, &t, 1);
    png_write_info(png, info);
    int ch = png_get_channels(png, info);
    size_t rowbytes = ((size_t)w * ch * depth + 7) / 8;
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++) png_write_row(png, raw + (size_t)y * rowbytes);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    fclose(fp);
    return 0;
}

TEST(png_other_layouts) {
    /* 16-bit RGBA, interlaced: high bytes kept, alpha dropped */
    enum { W = 5, H = 3 };
    uint8_t raw16[W * H * 8];
    for (int i = 0; i < W * H * 4; i++) {
        raw16[2 * i] = (uint8_t)(i * 7);      /* high byte */
        raw16[2 * i + 1] = (uint8_t)(255 - i); /* low byte */
    }
    CHECK(write_png_raw(tmp_path("rgba16.png"), W, H, PNG_COLOR_TYPE_RGB_ALPHA, 16, raw16, 1) == 0);
    kiln_image img;
    kiln_image_texts texts;
    CHECK(kiln_image_load(tmp_path("rgba16.png"), 3, &img, &texts) == 0);
    int ok = 1;
    for (int p = 0; p < W * H; p++)
        for (int c = 0; c < 3; c++) ok &= img.pixels[p * 3 + c] == (uint8_t)((p * 4 + c) * 7);
    CHECK(ok);
    CHECK_STR(kiln_image_texts_get(&texts, "parameters"), "zipped\xc3\xa9"); /* zTXt, latin-1 -> UTF-8 */
    kiln_image_texts_free(&texts);
    kiln_image_free(&img);
    /* 2-bit palette with tRNS */
    uint8_t rawp[H * 2] = {0x1B, 0x00, 0xE4, 0x40, 0x55, 0xC0}; /* indices 0,1,2,3 | 0 ; 3,2,1,0 | 1 ; ... */
    CHECK(write_png_raw(tmp_path("pal.png"), W, H, PNG_COLOR_TYPE_PALETTE, 2, rawp, 0) == 0);
    CHECK(kiln_image_load(tmp_path("pal.png"), 3, &img, NULL) == 0);
    CHECK(img.pixels[0] == 0 && img.pixels[3] == 255 && img.pixels[4] == 0 && img.pixels[6] == 0 &&
          img.pixels[7] == 128 && img.pixels[8] == 255 && img.pixels[9] == 7);
    CHECK(img.pixels[(W + 0) * 3] == 7 && img.pixels[(W + 4) * 3 + 0] == 255); /* row 1: 3,2,1,0,1 */
    kiln_image_free(&img);
    /* 1-bit gray -> 0/255 */
    uint8_t raw1[H] = {0xA8, 0x50, 0xF8};
    CHECK(write_png_raw(tmp_path("g1.png"), W, H, PNG_COLOR_TYPE_GRAY, 1, raw1, 0) == 0);
    CHECK(kiln_image_load(tmp_path("g1.png"), 1, &img, NULL) == 0);
    CHECK(img.pixels[0] == 255 && img.pixels[1] == 0 && img.pixels[2] == 255 && img.pixels[5] == 0 &&
          img.pixels[6] == 255 && img.pixels[14] == 255);
    kiln_image_free(&img);
    unlink(tmp_path("rgba16.png"));
    unlink(tmp_path("pal.png"));
    unlink(tmp_path("g1.png"));
}

static int compare_fixture(const char *png, const char *st, const char *tensor, int channels) {
    char png_path[4200], st_path[4200];
    snprintf(png_path, sizeof png_path, "%s", test_fixture(png));
    snprintf(st_path, sizeof st_path, "%s", test_fixture(st));
    kiln_image img;
    if (kiln_image_load(png_path, channels, &img, NULL) != 0) {
        fprintf(stderr, "%s\n", kiln_last_error());
        return 0;
    }
    kiln_st_file *f = NULL;
    int ok = kiln_st_open(st_path, &f) == 0;
    const kiln_st_tensor *t = ok ? kiln_st_find(f, tensor) : NULL;
    size_t n = (size_t)img.width * img.height * channels;
    ok = t && t->dtype == KILN_U8 && t->nbytes == n && t->shape[0] == img.height && t->shape[1] == img.width &&
         memcmp(t->data, img.pixels, n) == 0;
    if (!ok) fprintf(stderr, "fixture mismatch: %s vs %s:%s\n", png, st, tensor);
    kiln_st_close(f);
    kiln_image_free(&img);
    return ok;
}

TEST(fixture_pngs) {
    const char *runs[] = {"txt2img_euler_a_8",       "txt2img_euler_10",         "txt2img_ddim_10",
                          "txt2img_heun_5",          "txt2img_dpmpp_2m_karras_6", "txt2img_dpmpp_sde_karras_6",
                          "txt2img_lora_euler_a_6",  "txt2img_ti_euler_8",        "img2img_euler_a_10",
                          "img2img_dpmpp_2m_karras_8", "hires_latent_euler_a_6",  "hires_latent_nearest_exact_euler_a_6"};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char png[128], st[128];
        snprintf(png, sizeof png, "tiny-sd15/%s.png", runs[i]);
        snprintf(st, sizeof st, "tiny-sd15/%s.safetensors", runs[i]);
        CHECK_MSG(compare_fixture(png, st, "image_u8", 3), "%s", runs[i]);
    }
    /* the inpainting PNG is the composited result; its mask is an L-mode PNG */
    CHECK(compare_fixture("tiny-sd15/inpaint_euler_a_10.png", "tiny-sd15/inpaint_euler_a_10.safetensors",
                          "composited_u8", 3));
    CHECK(compare_fixture("tiny-sd15/inpaint_euler_a_10_mask.png", "tiny-sd15/inpaint_euler_a_10.safetensors",
                          "mask_input_u8", 1));
    CHECK(compare_fixture("tiny-sd15/vae_encode_input.png", "tiny-sd15/img2img_euler_a_10.safetensors",
                          "init_image_u8", 3));
    /* the mask: 255 inside x 18..43, y 12..49 */
    kiln_image m;
    CHECK(kiln_image_load(test_fixture("tiny-sd15/inpaint_euler_a_10_mask.png"), 1, &m, NULL) == 0);
    CHECK(m.width == 64 && m.height == 64 && m.channels == 1);
    CHECK(m.pixels[12 * 64 + 18] == 255 && m.pixels[49 * 64 + 43] == 255 && m.pixels[11 * 64 + 18] == 0 &&
          m.pixels[12 * 64 + 44] == 0);
    kiln_image_free(&m);
}

TEST(jpeg_round_trip_exif) {
    kiln_image img;
    CHECK(kiln_image_alloc(&img, 37, 21, 3) == 0);
    fill_pattern(&img);
    kiln_image_save_options opts = {.quality = 95};
    uint8_t *buf;
    size_t n;
    CHECK(kiln_image_encode(KILN_IMAGE_JPEG, &img, INFOTEXT_UTF8, NULL, 0, &opts, &buf, &n) == 0);
    /* SOI, then APP1 "Exif\0\0" + big-endian TIFF, no JFIF APP0 (piexif.insert's result) */
    CHECK(n > 60 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF && buf[3] == 0xE1);
    CHECK(memcmp(buf + 6, "Exif\0\0MM\0\x2a\0\0\0\x08", 14) == 0);
    CHECK(find_bytes(buf, n, "JFIF", 4) == (size_t)-1);
    /* piexif.dump layout: IFD0 {ExifTag -> 26}, Exif IFD {UserComment, UNDEFINED, n, -> 40}, "UNICODE\0" */
    const uint8_t *tiff = buf + 12;
    CHECK(memcmp(tiff + 8, "\0\x01\x87\x69\0\x04\0\0\0\x01\0\0\0\x1a\0\0\0\0", 18) == 0);
    CHECK(memcmp(tiff + 26, "\0\x01\x92\x86\0\x07", 6) == 0 && memcmp(tiff + 36, "\0\0\0\x28", 4) == 0);
    CHECK(memcmp(tiff + 40, "UNICODE\0\x73\x2b\0\x20\xd8\x3d\xde\x00", 16) == 0); /* 猫 space U+1F600 */
    kiln_image out;
    kiln_image_texts texts;
    CHECK(kiln_image_decode(buf, n, "jpeg", 3, &out, &texts) == 0);
    CHECK(out.width == 37 && out.height == 21);
    int maxd = 0;
    for (size_t i = 0; i < (size_t)37 * 21 * 3; i++) {
        int d = abs((int)out.pixels[i] - (int)img.pixels[i]);
        if (d > maxd) maxd = d;
    }
    CHECK_MSG(maxd <= 12, "max diff %d", maxd); /* lossy (quality 95, 4:2:0 chroma) on a smooth pattern */
    CHECK_STR(kiln_image_texts_get(&texts, "parameters"), INFOTEXT_UTF8);
    kiln_image_texts_free(&texts);
    kiln_image_free(&out);
    free(buf);
    /* gray JPEG, default quality, through the file API */
    kiln_image g;
    CHECK(kiln_image_alloc(&g, 16, 9, 1) == 0);
    fill_pattern(&g);
    CHECK(kiln_image_save(tmp_path("g.jpg"), &g, INFOTEXT, NULL) == 0);
    CHECK(kiln_image_load(tmp_path("g.jpg"), 1, &out, &texts) == 0);
    CHECK(out.channels == 1 && out.width == 16);
    CHECK_STR(kiln_image_texts_get(&texts, "parameters"), INFOTEXT);
    kiln_image_texts_free(&texts);
    kiln_image_free(&out);
    /* without text: a plain JFIF JPEG, no texts read back */
    CHECK(kiln_image_encode(KILN_IMAGE_JPEG, &g, NULL, NULL, 0, NULL, &buf, &n) == 0);
    CHECK(find_bytes(buf, 20, "JFIF", 4) != (size_t)-1);
    CHECK(kiln_image_decode(buf, n, "jpeg", 3, &out, &texts) == 0 && texts.n == 0);
    kiln_image_texts_free(&texts);
    kiln_image_free(&out);
    free(buf);
    unlink(tmp_path("g.jpg"));
    kiln_image_free(&g);
    kiln_image_free(&img);
}

TEST(exif_reader_variants) {
    /* little-endian, ASCII prefix, value in another order of IFD entries */
    uint8_t le[64] = {'I', 'I', 42, 0, 8, 0, 0, 0,
                      /* IFD0 @8: 2 entries */ 2, 0,
                      /* junk tag */ 0x0f, 0x01, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                      /* ExifTag */ 0x69, 0x87, 4, 0, 1, 0, 0, 0, 38, 0, 0, 0,
                      /* next */ 0, 0, 0, 0,
                      /* Exif IFD @38: 1 entry */ 1, 0, 0x86, 0x92, 7, 0, 11, 0, 0, 0, 52, 0, 0, 0,
                      /* @52 */ 'A', 'S', 'C', 'I', 'I', 0, 0, 0, 'h', 'i', '!'};
    char *s = NULL;
    CHECK(kiln_exif_read_user_comment(le, 63, &s) == 0);
    CHECK_STR(s, "hi!");
    free(s);
    /* truncated: no comment, no failure */
    CHECK(kiln_exif_read_user_comment(le, 55, &s) == 0 && s == NULL);
    /* our own writer, read back; odd UTF-16 tail -> U+FFFD */
    uint8_t *ex;
    size_t n;
    CHECK(kiln_exif_build_user_comment("ab", &ex, &n) == 0);
    CHECK(n == 40 + 8 + 4);
    CHECK(kiln_exif_read_user_comment(ex, n, &s) == 0);
    CHECK_STR(s, "ab");
    free(s);
    ex[35] = 11; /* count 11: "UNICODE\0" + 3 bytes */
    CHECK(kiln_exif_read_user_comment(ex, n, &s) == 0);
    CHECK_STR(s, "a\xef\xbf\xbd");
    free(s);
    free(ex);
}

TEST(webp_round_trip_exif) {
    if (!kiln_image_format_supported(KILN_IMAGE_WEBP)) {
        printf("(WebP not built)\n");
        return;
    }
    kiln_image img;
    CHECK(kiln_image_alloc(&img, 31, 17, 3) == 0);
    fill_pattern(&img);
    for (int lossless = 1; lossless >= 0; lossless--) {
        kiln_image_save_options opts = {.lossless = lossless, .quality = 90};
        uint8_t *buf;
        size_t n;
        CHECK(kiln_image_encode(KILN_IMAGE_WEBP, &img, INFOTEXT_UTF8, NULL, 0, &opts, &buf, &n) == 0);
        CHECK(kiln_image_sniff(buf, n) == KILN_IMAGE_WEBP);
        CHECK(find_bytes(buf, n, "VP8X", 4) == 12);
        size_t at = find_bytes(buf, n, "EXIF", 4); /* chunk without the "Exif\0\0" prefix, as piexif */
        CHECK(at != (size_t)-1 && at + 10 <= n && memcmp(buf + at + 8, "MM", 2) == 0);
        kiln_image out;
        kiln_image_texts texts;
        CHECK(kiln_image_decode(buf, n, "webp", 3, &out, &texts) == 0);
        CHECK(out.width == 31 && out.height == 17);
        int maxd = 0;
        for (size_t i = 0; i < (size_t)31 * 17 * 3; i++) {
            int d = abs((int)out.pixels[i] - (int)img.pixels[i]);
            if (d > maxd) maxd = d;
        }
        if (lossless)
            CHECK_MSG(maxd == 0, "lossless max diff %d", maxd);
        else
            CHECK_MSG(maxd <= 20, "lossy max diff %d", maxd);
        CHECK_STR(kiln_image_texts_get(&texts, "parameters"), INFOTEXT_UTF8);
        kiln_image_texts_free(&texts);
        kiln_image_free(&out);
        free(buf);
    }
    CHECK(kiln_image_save(tmp_path("x.webp"), &img, NULL, NULL) == 0);
    kiln_image out;
    kiln_image_texts texts;
    CHECK(kiln_image_load(tmp_path("x.webp"), 1, &out, &texts) == 0 && texts.n == 0 && out.channels == 1);
    kiln_image_texts_free(&texts);
    kiln_image_free(&out);
    unlink(tmp_path("x.webp"));
    kiln_image_free(&img);
}

TEST(atomic_writes) {
    kiln_image img;
    CHECK(kiln_image_alloc(&img, 8, 8, 3) == 0);
    fill_pattern(&img);
    /* a missing directory: clear message naming the path, nothing created */
    int rc = kiln_image_save("/nonexistent-kiln-dir/sub/out.png", &img, INFOTEXT, NULL);
    CHECK(rc == KILN_EIO);
    CHECK(strstr(kiln_last_error(), "/nonexistent-kiln-dir/sub/out.png") != NULL);
    CHECK(strstr(kiln_last_error(), "No such file or directory") != NULL);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no-such-dir/out.png", tmpdir);
    CHECK(kiln_image_save(missing, &img, NULL, NULL) == KILN_EIO);
    struct stat st;
    CHECK(stat(missing, &st) != 0);
    CHECK(count_tmp_files() == 0);
    /* an existing file is replaced only by a complete new one */
    const char *path = tmp_path("keep.png");
    CHECK(kiln_atomic_write(path, "old contents", 12, 0) == 0);
    kiln_image bad = img;
    bad.channels = 2; /* invalid: encode fails before anything is written */
    CHECK(kiln_image_save(path, &bad, NULL, NULL) == KILN_EINVAL);
    void *data;
    size_t n;
    CHECK(kiln_read_file(path, 1 << 20, &data, &n) == 0 && n == 12 && memcmp(data, "old contents", 12) == 0);
    free(data);
    /* a failed commit (write error simulated) removes the temporary file and keeps the old one */
    kiln_atomic_file af;
    CHECK(kiln_atomic_open(path, 0, &af) == 0);
    CHECK(kiln_atomic_write_all(&af, "half", 4) == 0);
    af.failed = 5; /* as if a write had failed with EIO */
    CHECK(kiln_atomic_commit(&af) == KILN_EIO);
    CHECK(kiln_read_file(path, 1 << 20, &data, &n) == 0 && n == 12);
    free(data);
    CHECK(count_tmp_files() == 0);
    /* abort leaves nothing */
    CHECK(kiln_atomic_open(path, 0, &af) == 0);
    kiln_atomic_abort(&af);
    CHECK(count_tmp_files() == 0);
    /* no_replace refuses an existing file, writes a new one */
    kiln_image_save_options keep = {.no_replace = 1};
    CHECK(kiln_image_save(path, &img, NULL, &keep) == KILN_EIO);
    CHECK(strstr(kiln_last_error(), "exists") != NULL);
    CHECK(kiln_image_save(tmp_path("fresh.png"), &img, INFOTEXT, &keep) == 0);
    /* a normal save replaces, and the result reads back */
    CHECK(kiln_image_save(path, &img, INFOTEXT, NULL) == 0);
    kiln_image out;
    kiln_image_texts texts;
    CHECK(kiln_image_load(path, 3, &out, &texts) == 0);
    CHECK(memcmp(out.pixels, img.pixels, 8 * 8 * 3) == 0);
    CHECK_STR(kiln_image_texts_get(&texts, "parameters"), INFOTEXT);
    kiln_image_texts_free(&texts);
    kiln_image_free(&out);
    CHECK(count_tmp_files() == 0);
    /* unknown extension */
    CHECK(kiln_image_save(tmp_path("x.bmp"), &img, NULL, NULL) == KILN_EINVAL);
    unlink(path);
    unlink(tmp_path("fresh.png"));
    kiln_image_free(&img);
}

TEST(corrupt_inputs) {
    kiln_image img, out;
    CHECK(kiln_image_alloc(&img, 20, 20, 3) == 0);
    fill_pattern(&img);
    kiln_image_format fmts[] = {KILN_IMAGE_PNG, KILN_IMAGE_JPEG, KILN_IMAGE_WEBP};
    for (int f = 0; f < 3; f++) {
        if (!kiln_image_format_supported(fmts[f])) continue;
        uint8_t *buf;
        size_t n;
        CHECK(kiln_image_encode(fmts[f], &img, INFOTEXT, NULL, 0, NULL, &buf, &n) == 0);
        /* every truncation and a few flipped bytes: an error or an image, never a crash */
        for (size_t cut = 0; cut < n; cut += (cut < 64 ? 1 : 7)) {
            kiln_image_texts texts;
            if (kiln_image_decode(buf, cut, "cut", 3, &out, &texts) == 0) {
                kiln_image_free(&out);
                kiln_image_texts_free(&texts);
            }
        }
        for (size_t i = 0; i < n; i += 5) {
            uint8_t *c = malloc(n);
            memcpy(c, buf, n);
            c[i] ^= 0x5A;
            kiln_image_texts texts;
            if (kiln_image_decode(c, n, "flip", 1, &out, &texts) == 0) {
                kiln_image_free(&out);
                kiln_image_texts_free(&texts);
            }
            free(c);
        }
        free(buf);
    }
    CHECK(kiln_image_decode("GIF89a", 6, "x.gif", 3, &out, NULL) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "x.gif") != NULL);
    CHECK(kiln_image_decode("\x89PNG\r\n\x1a\n", 8, "t.png", 3, &out, NULL) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "t.png") != NULL);
    CHECK(kiln_image_load("/nonexistent/x.png", 3, &out, NULL) == KILN_EIO);
    kiln_image_free(&img);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln_test_image_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(png_round_trip_text_chunks);
    RUN(png_channel_conversion);
    RUN(png_other_layouts);
    RUN(fixture_pngs);
    RUN(jpeg_round_trip_exif);
    RUN(exif_reader_variants);
    RUN(webp_round_trip_exif);
    RUN(atomic_writes);
    RUN(corrupt_inputs);
    rmdir(tmpdir);
    return test_summary();
}
