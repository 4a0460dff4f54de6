/* test_img2img.c — A1111 img2img, hires fix and inpainting on the CPU backend against the tiny-sd15 fixtures:
 * the VAE posterior sample (init latent), the t_enc schedule slices, noise, denoiser calls, final latents
 * (manifest tolerances), the PNG bytes (|diff| <= 1 on at most 1% of values); the inpainting mask steps
 * (OpenCV blur, Pillow resize, overlay, composite) bit-exact; kiln_generate end to end; bad values refused. */
#include <jansson.h>
#include <math.h>

#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "pipeline/hires.h"
#include "pipeline/img2img.h"
#include "pipeline/mask.h"
#include "fixture_cases.h"
#include "test.h"

static kiln_model *model;
static kiln_ctx *ctx;
static json_t *manifest;

static float *tensor_f32(kiln_st_file *f, const char *name, size_t *n) {
    const kiln_st_tensor *t = kiln_st_find(f, name);
    if (!t) return NULL;
    size_t m = (size_t)kiln_st_numel(t);
    if (n) *n = m;
    float *v = malloc(m * sizeof(float));
    kiln_st_to_f32(t, v);
    return v;
}

static const uint8_t *tensor_u8(kiln_st_file *f, const char *name) {
    const kiln_st_tensor *t = kiln_st_find(f, name);
    return t ? (const uint8_t *)t->data : NULL;
}

static json_t *runs(const char *kind) {
    return json_object_get(json_object_get(json_object_get(manifest, "cases"), kind), "runs");
}

static double tol(json_t *c, const char *key) { return json_number_value(json_object_get(json_object_get(c, "tolerance"), key)); }

static kiln_st_file *open_run(json_t *c) {
    char rel[256];
    snprintf(rel, sizeof rel, "tiny-sd15/%s", json_string_value(json_object_get(c, "file")));
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture(rel), &f) == 0);
    return f;
}

static void params_from(json_t *c, kiln_gen_params *p) {
    kiln_gen_params_init(p);
    p->prompt = json_string_value(json_object_get(c, "prompt"));
    p->negative_prompt = json_string_value(json_object_get(c, "negative"));
    p->sampler = json_string_value(json_object_get(c, "sampler"));
    p->steps = (int)json_integer_value(json_object_get(c, "steps"));
    p->cfg_scale = json_number_value(json_object_get(c, "cfg"));
    p->seed = json_integer_value(json_object_get(c, "seed"));
    p->width = (int)json_integer_value(json_object_get(c, "width"));
    p->height = (int)json_integer_value(json_object_get(c, "height"));
    p->denoising_strength = json_number_value(json_object_get(c, "denoising"));
    p->rng = "NV";
}

/* |diff| <= 1 on at most 1% of the bytes. */
static int png_close(const char *what, const uint8_t *got, const uint8_t *want, size_t n) {
    int max_diff = 0;
    size_t n_diff = 0;
    for (size_t i = 0; want && i < n; i++) {
        int d = abs((int)got[i] - (int)want[i]);
        if (d > max_diff) max_diff = d;
        n_diff += d != 0;
    }
    printf("    %-14s max diff %d, %zu of %zu values differ\n", what, max_diff, n_diff, n);
    return want && max_diff <= 1 && n_diff <= n / 100;
}

static void check_sigmas(const char *name, const kiln_sample_trace *tr, json_t *sig) {
    CHECK_MSG((size_t)tr->n_sigmas == json_array_size(sig), "%s: %d sigmas, want %zu", name, tr->n_sigmas,
              json_array_size(sig));
    for (int i = 0; i < tr->n_sigmas && i < (int)json_array_size(sig); i++)
        CHECK_NEAR(tr->sigmas[i], json_number_value(json_array_get(sig, (size_t)i)), 1e-6);
}

/* ---- the mask steps, bit-exact ---------------------------------------------------------------- */

TEST(mask_pipeline) {
    json_t *c = json_array_get(runs("inpaint"), 0);
    kiln_st_file *f = open_run(c);
    if (!f) return;
    int k[21];
    CHECK(kiln_gaussian_kernel_q8(21, 4.0, k) == 0);
    json_t *kq = json_object_get(c, "mask_blur_kernel_q8");
    for (int i = 0; i < 21; i++) CHECK_MSG(k[i] == json_integer_value(json_array_get(kq, (size_t)i)), "tap %d: %d", i, k[i]);

    const uint8_t *mask = tensor_u8(f, "mask_input_u8"), *init = tensor_u8(f, "init_image_u8");
    uint8_t bx[64 * 64], blurred[64 * 64], ov[64 * 64], rgba[64 * 64 * 4], small[64], comp[64 * 64 * 3];
    float nmask[4 * 64], *want_nmask = tensor_f32(f, "latent_mask", NULL);
    CHECK(kiln_mask_blur(mask, 64, 64, 4, 4, bx, blurred) == 0);
    CHECK(memcmp(bx, tensor_u8(f, "mask_blur_x_u8"), sizeof bx) == 0);
    CHECK(memcmp(blurred, tensor_u8(f, "mask_blurred_u8"), sizeof blurred) == 0);
    kiln_mask_for_overlay(blurred, sizeof blurred, ov);
    CHECK(memcmp(ov, tensor_u8(f, "mask_for_overlay_u8"), sizeof ov) == 0);
    kiln_overlay_rgba(init, ov, 64, 64, rgba);
    CHECK(memcmp(rgba, tensor_u8(f, "overlay_rgba_u8"), sizeof rgba) == 0);
    CHECK(kiln_latent_mask(blurred, 64, 64, 8, 8, 4, 1, small, nmask) == 0);
    CHECK(memcmp(small, tensor_u8(f, "latent_mask_resized_u8"), sizeof small) == 0);
    CHECK(want_nmask && memcmp(nmask, want_nmask, sizeof nmask) == 0);
    /* the composite of A1111's own decoded image with its overlay */
    memcpy(comp, tensor_u8(f, "image_u8"), sizeof comp);
    kiln_alpha_composite_rgb(comp, tensor_u8(f, "overlay_rgba_u8"), 64, 64);
    CHECK(memcmp(comp, tensor_u8(f, "composited_u8"), sizeof comp) == 0);
    /* the mask PNG decodes to the same bytes */
    kiln_image m = {0};
    CHECK(kiln_image_load(test_fixture("tiny-sd15/inpaint_euler_a_10_mask.png"), 1, &m, NULL) == 0);
    CHECK(m.width == 64 && m.height == 64 && m.pixels && memcmp(m.pixels, mask, 64 * 64) == 0);
    kiln_image_free(&m);
    free(want_nmask);
    kiln_st_close(f);
}

/* OpenCV / Pillow edge cases that follow from their definitions. */
TEST(mask_edges) {
    /* a blur kernel always sums to 256; sigma 1 ksize 7 */
    int k[255], sum = 0;
    CHECK(kiln_gaussian_kernel_q8(7, 1.0, k) == 0);
    for (int i = 0; i < 7; i++) sum += k[i];
    CHECK(sum == 256 && k[0] == k[6] && k[3] >= k[2]);
    CHECK(kiln_gaussian_kernel_q8(4, 1.0, k) == KILN_EINVAL);
    /* a blur kernel wider than the image reflects more than once and keeps a flat image flat */
    uint8_t flat[3 * 2], out[3 * 2];
    memset(flat, 77, sizeof flat);
    CHECK(kiln_gaussian_blur_u8(flat, 3, 2, 21, 1, 4.0, out) == 0);
    CHECK(memcmp(out, flat, sizeof out) == 0);
    CHECK(kiln_gaussian_blur_u8(flat, 3, 2, 1, 21, 4.0, out) == 0);
    CHECK(memcmp(out, flat, sizeof out) == 0);
    /* a 1-pixel-wide image */
    uint8_t col[5] = {0, 255, 0, 255, 0}, col_out[5];
    CHECK(kiln_gaussian_blur_u8(col, 1, 5, 3, 1, 1.0, col_out) == 0 && memcmp(col, col_out, 5) == 0);
    /* resizes of a flat image stay flat at odd sizes, both filters, with boxes */
    uint8_t src[7 * 5 * 3], dst[13 * 3 * 3];
    memset(src, 200, sizeof src);
    CHECK(kiln_pil_resize_u8(src, 7, 5, 3, NULL, 13, 3, KILN_PIL_LANCZOS, dst) == 0);
    int flat_ok = 1;
    for (size_t i = 0; i < sizeof dst; i++) flat_ok &= dst[i] == 200;
    CHECK(flat_ok);
    float box[4] = {0, 5, 7, 5};
    CHECK(kiln_pil_resize_u8(src, 7, 5, 3, box, 7, 2, KILN_PIL_BICUBIC, dst) == 0 && dst[0] == 200);
    float bad[4] = {0, 0, 8, 5};
    CHECK(kiln_pil_resize_u8(src, 7, 5, 3, bad, 7, 2, KILN_PIL_BICUBIC, dst) == KILN_EINVAL);
    /* same size: a copy */
    uint8_t ramp[5 * 4], ramp_out[5 * 4];
    for (int i = 0; i < 20; i++) ramp[i] = (uint8_t)(i * 13);
    CHECK(kiln_pil_resize_u8(ramp, 5, 4, 1, NULL, 5, 4, KILN_PIL_BICUBIC, ramp_out) == 0 && !memcmp(ramp, ramp_out, 20));
    /* resize_image: crop keeps the centre, fill pads; mode 3 and others refused */
    uint8_t wide[16 * 8];
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 16; x++) wide[y * 16 + x] = (uint8_t)(x < 4 || x >= 12 ? 0 : 255);
    uint8_t sq[8 * 8];
    CHECK(kiln_resize_image(1, wide, 16, 8, 1, 8, 8, sq) == 0 && sq[3 * 8 + 4] == 255 && sq[3 * 8 + 0] == 255);
    CHECK(kiln_resize_image(2, wide, 16, 8, 1, 8, 8, sq) == 0 && sq[4 * 8 + 4] > 200 && sq[0] < 60);
    uint8_t sq2[8 * 8];
    CHECK(kiln_resize_image(3, wide, 16, 8, 1, 8, 8, sq2) == 0 && !memcmp(sq, sq2, sizeof sq));
    CHECK(kiln_resize_image(4, wide, 16, 8, 1, 8, 8, sq) == KILN_EINVAL);
    /* overlay: an opaque mask pixel (0) keeps the image, a full one (255) is transparent */
    uint8_t rgb[2 * 3] = {10, 20, 30, 40, 50, 60}, mo[2] = {0, 255}, ov[2 * 4];
    kiln_overlay_rgba(rgb, mo, 2, 1, ov);
    CHECK(ov[0] == 10 && ov[1] == 20 && ov[2] == 30 && ov[3] == 255 && ov[7] == 0);
    uint8_t base[2 * 3] = {1, 2, 3, 4, 5, 6};
    kiln_alpha_composite_rgb(base, ov, 2, 1);
    CHECK(base[0] == 10 && base[1] == 20 && base[2] == 30 && base[3] == 4 && base[5] == 6);
}

/* Expected bytes from Pillow 9.4 (Image.resize, A1111's resize_image) and OpenCV 4.6 (GaussianBlur) on a
 * 10x6 L image, as printed by those libraries. */
TEST(pillow_opencv_cases) {
    static const uint8_t src[60] = {
        0, 37, 74, 111, 148, 185, 222, 8, 45, 82, 119, 156, 193, 230, 16, 53, 90, 127, 164, 201, 238, 24, 61, 98,
        135, 172, 209, 246, 32, 69, 106, 143, 180, 217, 3, 40, 77, 114, 151, 188, 225, 11, 48, 85, 122, 159, 196,
        233, 19, 56, 93, 130, 167, 204, 241, 27, 64, 101, 138, 175};
    static const uint8_t want_m1[64] = {
        43, 68, 98, 146, 174, 223, 229, 37, 145, 176, 202, 86, 49, 112, 125, 70, 110, 168, 190, 84, 53, 101, 130,
        198, 10, 78, 101, 123, 148, 174, 206, 244, 150, 194, 217, 60, 9, 61, 84, 113, 50, 107, 129, 61, 75, 138,
        161, 206, 39, 88, 113, 179, 158, 118, 163, 207, 162, 183, 212, 255, 130, 0, 55, 82};
    static const uint8_t want_m2[64] = {
        25, 97, 150, 109, 154, 111, 48, 132, 25, 97, 150, 109, 154, 111, 48, 132, 41, 97, 151, 107, 148, 119, 58,
        131, 170, 96, 163, 94, 101, 180, 141, 121, 147, 79, 146, 71, 99, 168, 119, 104, 130, 90, 145, 195, 86, 137,
        115, 114, 128, 91, 145, 211, 84, 133, 115, 115, 128, 91, 145, 211, 84, 133, 115, 115};
    static const uint8_t want_lanczos[12] = {
        94, 132, 126, 107, 137, 101, 132, 136, 112, 139, 120, 119};
    static const uint8_t want_bicubic_up[91] = {
        0, 18, 49, 77, 106, 140, 172, 206, 222, 34, 12, 56, 80, 87, 123, 160, 191, 220, 72, 37, 80, 106, 96, 126,
        167, 190, 221, 112, 65, 108, 137, 107, 115, 147, 177, 226, 132, 72, 110, 176, 111, 91, 130, 159, 87, 80,
        116, 145, 181, 127, 98, 131, 142, 114, 115, 151, 180, 58, 39, 85, 113, 146, 126, 122, 151, 217, 84, 24, 68,
        97, 141, 149, 150, 182, 224, 106, 31, 71, 86, 116, 150, 178, 207, 253, 134, 14, 61, 89, 123, 157, 181};
    static const uint8_t want_blur[60] = {
        127, 90, 127, 164, 79, 112, 149, 135, 98, 135, 133, 89, 126, 163, 81, 111, 148, 141, 97, 134, 144, 85, 122,
        159, 88, 108, 145, 152, 93, 130, 153, 82, 119, 156, 97, 104, 141, 161, 90, 127, 160, 78, 115, 152, 108, 101,
        138, 168, 86, 123, 162, 77, 114, 151, 114, 100, 137, 170, 85, 122};
    uint8_t out[128];
    CHECK(kiln_resize_image(1, src, 10, 6, 1, 8, 8, out) == 0 && !memcmp(out, want_m1, 64));
    CHECK(kiln_resize_image(2, src, 10, 6, 1, 8, 8, out) == 0 && !memcmp(out, want_m2, 64));
    CHECK(kiln_pil_resize_u8(src, 10, 6, 1, NULL, 4, 3, KILN_PIL_LANCZOS, out) == 0 && !memcmp(out, want_lanczos, 12));
    CHECK(kiln_pil_resize_u8(src, 10, 6, 1, NULL, 13, 7, KILN_PIL_BICUBIC, out) == 0 && !memcmp(out, want_bicubic_up, 91));
    CHECK(kiln_gaussian_blur_u8(src, 10, 6, 1, 11, 2.0, out) == 0 && !memcmp(out, want_blur, 60));
}

/* masking.fill and ImageFilter.GaussianBlur, expected bytes printed by Pillow 9.4. */
TEST(pillow_fill_cases) {
    static const uint8_t fill_rgb[90] = {
        0, 53, 106, 159, 212, 9, 62, 115, 168, 221, 18, 71, 124, 177, 230, 27, 80, 133, 186, 239, 36, 89, 142, 195,
        248, 45, 98, 151, 204, 1, 54, 107, 160, 213, 10, 63, 116, 169, 222, 19, 72, 125, 178, 231, 28, 81, 134, 187,
        240, 37, 90, 143, 196, 249, 46, 99, 152, 205, 2, 55, 108, 161, 214, 11, 64, 117, 170, 223, 20, 73, 126, 179,
        232, 29, 82, 135, 188, 241, 38, 91, 144, 197, 250, 47, 100, 153, 206, 3, 56, 109};
    static const uint8_t fill_mask[30] = {
        0, 0, 0, 0, 0, 0, 0, 0, 40, 200, 255, 0, 0, 0, 128, 255, 255, 0, 0, 0, 0, 90, 255, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t want_fill[90] = {
        0, 53, 106, 159, 212, 9, 62, 115, 168, 221, 18, 71, 124, 177, 230, 27, 80, 133, 186, 239, 36, 89, 142, 195,
        227, 57, 102, 125, 133, 102, 116, 108, 138, 213, 10, 63, 116, 169, 222, 19, 72, 125, 148, 175, 78, 114, 118,
        134, 111, 114, 140, 143, 196, 249, 46, 99, 152, 205, 2, 55, 108, 161, 214, 46, 83, 124, 103, 118, 141, 73,
        126, 179, 232, 29, 82, 135, 188, 241, 38, 91, 144, 197, 250, 47, 100, 153, 206, 3, 56, 109};
    static const uint8_t blur_rgba[120] = {
        0, 29, 58, 87, 116, 145, 174, 203, 232, 5, 34, 63, 92, 121, 150, 179, 208, 237, 10, 39, 68, 97, 126, 155,
        184, 213, 242, 15, 44, 73, 102, 131, 160, 189, 218, 247, 20, 49, 78, 107, 136, 165, 194, 223, 252, 25, 54,
        83, 112, 141, 170, 199, 228, 1, 30, 59, 88, 117, 146, 175, 204, 233, 6, 35, 64, 93, 122, 151, 180, 209, 238,
        11, 40, 69, 98, 127, 156, 185, 214, 243, 16, 45, 74, 103, 132, 161, 190, 219, 248, 21, 50, 79, 108, 137,
        166, 195, 224, 253, 26, 55, 84, 113, 142, 171, 200, 229, 2, 31, 60, 89, 118, 147, 176, 205, 234, 7, 36, 65,
        94, 123};
    static const uint8_t want_gblur[120] = {
        105, 103, 129, 118, 114, 104, 124, 125, 126, 110, 116, 131, 135, 118, 110, 129, 141, 124, 108, 124, 144,
        125, 109, 119, 111, 110, 128, 122, 118, 111, 123, 127, 126, 115, 117, 131, 134, 120, 113, 128, 140, 124,
        115, 122, 144, 125, 118, 116, 120, 123, 123, 125, 123, 122, 120, 128, 126, 123, 117, 130, 131, 124, 117,
        125, 137, 124, 123, 119, 141, 124, 128, 113, 129, 138, 111, 125, 128, 136, 110, 126, 128, 132, 113, 125,
        129, 128, 119, 119, 131, 125, 129, 114, 132, 122, 135, 110, 134, 149, 100, 123, 131, 145, 103, 122, 128,
        139, 109, 121, 127, 131, 119, 115, 125, 125, 131, 111, 124, 120, 138, 109};
    uint8_t out[120];
    CHECK(kiln_masking_fill(fill_rgb, fill_mask, 6, 5, out) == 0 && !memcmp(out, want_fill, 90));
    CHECK(kiln_pil_gaussian_blur4(blur_rgba, 6, 5, 1.5f, out) == 0 && !memcmp(out, want_gblur, 120));
}

/* ---- img2img --------------------------------------------------------------------------------- */

TEST(img2img_steps) {
    int ss, te;
    kiln_img2img_steps(10, 0.6, 0, &ss, &te);
    CHECK(ss == 10 && te == 6);
    kiln_img2img_steps(8, 0.35, 0, &ss, &te);
    CHECK(ss == 8 && te == 2);
    kiln_img2img_steps(5, 0.55, 1, &ss, &te);
    CHECK(ss == 9 && te == 4);
    kiln_img2img_steps(10, 1.0, 0, &ss, &te);
    CHECK(ss == 10 && te == 9);
    kiln_img2img_steps(10, 0.75, 0, &ss, &te);
    CHECK(ss == 10 && te == 7);
}

static void run_img2img_case(json_t *c, int inpaint) {
    const char *name = json_string_value(json_object_get(c, "name"));
    kiln_st_file *f = open_run(c);
    if (!f) return;
    kiln_gen_params p;
    params_from(c, &p);
    p.init_rgb = tensor_u8(f, "init_image_u8");
    p.init_width = p.init_height = 64;
    if (inpaint) {
        p.mask_l = tensor_u8(f, "mask_input_u8");
        p.mask_blur = (int)json_integer_value(json_object_get(c, "mask_blur"));
        p.inpainting_fill = (int)json_integer_value(json_object_get(c, "inpainting_fill"));
    }
    float *eps = tensor_f32(f, "vae_posterior_noise", NULL), *want_init = tensor_f32(f, "init_latent", NULL),
          *want_samples = tensor_f32(f, "samples", NULL), *want_noise = tensor_f32(f, "noise", NULL);
    /* kiln's default posterior noise is the fixtures' stand-in: torch.Generator("cpu").manual_seed(seed) */
    float def_eps[256];
    kiln_vae_posterior_noise(p.seed, 256, def_eps);
    CHECK_MSG(test_max_abs_diff(def_eps, eps, 256) == 0.0, "%s: default posterior noise", name);

    float init[256], samples[256], nmask[256];
    uint8_t rgb[64 * 64 * 3], decoded[64 * 64 * 3];
    kiln_img2img_out out = {.init_latent = init, .samples = samples, .nmask = nmask, .decoded = decoded};
    kiln_sample_trace tr = {0};
    int64_t seed = p.seed, subseed = 0;
    int rc = kiln_img2img_batch(ctx, &p, &seed, &subseed, 1, 0, NULL, NULL, eps, rgb, &out, &tr);
    CHECK_MSG(rc == 0, "%s: %s", name, kiln_last_error());
    if (rc == 0) {
        double e_init = test_max_abs_diff(init, want_init, 256), e_s = test_max_abs_diff(samples, want_samples, 256);
        int want_calls = (int)json_integer_value(json_object_get(c, "n_denoiser_calls"));
        printf("  %-26s init latent err %.3g (atol %.3g)  calls %d  samples err %.3g (atol %.3g)\n", name, e_init,
               tol(c, "init_latent_atol"), tr.n_calls, e_s, tol(c, "samples_atol"));
        CHECK(e_init <= tol(c, "init_latent_atol"));
        CHECK(test_max_abs_diff(tr.noise, want_noise, 256) == 0.0);
        CHECK_MSG(tr.n_calls == want_calls, "%s: %d calls, want %d", name, tr.n_calls, want_calls);
        check_sigmas(name, &tr, json_object_get(c, "sigmas"));
        CHECK_MSG(e_s <= tol(c, "samples_atol"), "%s", name);
        CHECK_MSG(png_close("image_u8", decoded, tensor_u8(f, "image_u8"), sizeof rgb), "%s", name);
        if (inpaint) {
            float *want_nmask = tensor_f32(f, "latent_mask", NULL);
            CHECK(want_nmask && memcmp(nmask, want_nmask, sizeof nmask) == 0);
            free(want_nmask);
            CHECK_MSG(png_close("composited_u8", rgb, tensor_u8(f, "composited_u8"), sizeof rgb), "%s", name);
        } else {
            CHECK(memcmp(rgb, decoded, sizeof rgb) == 0);
        }
    }
    kiln_sample_trace_free(&tr);
    free(eps), free(want_init), free(want_samples), free(want_noise);
    kiln_st_close(f);
}

TEST(img2img_cases) {
    json_t *r = runs("img2img"), *c;
    size_t i;
    CHECK(json_array_size(r) == 2);
    json_array_foreach(r, i, c) run_img2img_case(c, 0);
}

TEST(inpaint_cases) {
    json_t *r = runs("inpaint"), *c;
    size_t i;
    CHECK(json_array_size(r) == 1);
    json_array_foreach(r, i, c) run_img2img_case(c, 1);
}

/* ---- hires fix --------------------------------------------------------------------------------- */

TEST(latent_upscale_modes) {
    /* 2x: bilinear weights 0.25 / 0.75 with repeated edges; nearest-exact 2x2 blocks */
    float in[4] = {0, 4, 8, 12}, out[16];
    CHECK(kiln_latent_upscale("Latent", in, 1, 2, 2, 4, 4, out) == 0);
    CHECK_NEAR(out[0], 0, 0);
    CHECK_NEAR(out[1], 1, 0);
    CHECK_NEAR(out[2], 3, 0);
    CHECK_NEAR(out[5], 3, 0); /* (0.75*0.75*0 + 0.75*.25*4 + .25*.75*8 + .25*.25*12) */
    CHECK(kiln_latent_upscale("Latent (nearest-exact)", in, 1, 2, 2, 4, 4, out) == 0);
    CHECK(out[0] == 0 && out[1] == 0 && out[2] == 4 && out[10] == 12);
    /* 3 -> 4: nearest uses floor(dst * 3/4), nearest-exact floor((dst + 0.5) * 3/4) */
    float row[3] = {1, 2, 3}, o1[4], o2[4];
    CHECK(kiln_latent_upscale("Latent (nearest)", row, 1, 1, 3, 1, 4, o1) == 0);
    CHECK(kiln_latent_upscale("Latent (nearest-exact)", row, 1, 1, 3, 1, 4, o2) == 0);
    CHECK(o1[0] == 1 && o1[1] == 1 && o1[2] == 2 && o1[3] == 3);
    CHECK(o2[0] == 1 && o2[1] == 2 && o2[2] == 2 && o2[3] == 3);
    /* bicubic keeps constants */
    float cst[6] = {5, 5, 5, 5, 5, 5}, oc[12];
    CHECK(kiln_latent_upscale("Latent (bicubic)", cst, 1, 2, 3, 3, 4, oc) == 0);
    CHECK_NEAR(oc[5], 5, 1e-5);
    /* antialiased: at 2x the triangle filter gives bilinear's weights; a constant stays constant downscaled */
    float aa[16], bl[16];
    CHECK(kiln_latent_upscale("Latent (antialiased)", in, 1, 2, 2, 4, 4, aa) == 0);
    CHECK(kiln_latent_upscale("Latent", in, 1, 2, 2, 4, 4, bl) == 0 && test_max_abs_diff(aa, bl, 16) < 1e-6);
    CHECK(kiln_latent_upscale("Latent (bicubic antialiased)", cst, 1, 3, 2, 1, 1, oc) == 0);
    CHECK_NEAR(oc[0], 5, 1e-5);
    CHECK(kiln_latent_upscale("ESRGAN_4x", cst, 1, 2, 3, 3, 4, oc) == KILN_EUNSUPPORTED &&
          strstr(kiln_last_error(), "nearest-exact"));
}

/* The built-in image upscalers (A1111 resize_image with upscaler "Lanczos" / "Nearest"), expected bytes
 * printed by Pillow 9.4 running a transcription of A1111's Upscaler.upscale. */
TEST(image_upscalers) {
    static const uint8_t up_src[72] = {
        0, 41, 82, 123, 164, 205, 246, 31, 72, 113, 154, 195, 236, 21, 62, 103, 144, 185, 226, 11, 52, 93, 134, 175,
        216, 1, 42, 83, 124, 165, 206, 247, 32, 73, 114, 155, 196, 237, 22, 63, 104, 145, 186, 227, 12, 53, 94, 135,
        176, 217, 2, 43, 84, 125, 166, 207, 248, 33, 74, 115, 156, 197, 238, 23, 64, 105, 146, 187, 228, 13, 54, 95};
    static const uint8_t want_up_lanczos[351] = {
        0, 32, 61, 3, 79, 111, 51, 142, 181, 158, 148, 189, 240, 95, 131, 245, 54, 83, 170, 108, 136, 123, 149, 189,
        169, 81, 142, 222, 13, 84, 208, 27, 92, 133, 115, 161, 82, 175, 210, 29, 9, 59, 30, 61, 107, 68, 133, 176,
        152, 142, 183, 225, 82, 126, 238, 30, 80, 167, 81, 132, 118, 142, 184, 163, 111, 137, 216, 64, 80, 202, 66,
        88, 127, 120, 157, 76, 160, 205, 153, 0, 52, 123, 39, 99, 101, 112, 165, 131, 126, 171, 193, 65, 117, 223,
        5, 73, 160, 39, 122, 106, 126, 172, 150, 172, 126, 203, 174, 73, 189, 146, 80, 115, 129, 145, 64, 124, 191,
        244, 13, 24, 202, 48, 76, 126, 105, 145, 109, 120, 152, 159, 69, 96, 204, 15, 47, 148, 26, 100, 91, 115,
        154, 134, 213, 106, 186, 248, 48, 173, 214, 55, 99, 134, 126, 47, 88, 176, 255, 127, 0, 209, 124, 45, 123,
        120, 122, 95, 123, 132, 142, 119, 65, 190, 107, 6, 136, 85, 72, 78, 111, 138, 121, 197, 81, 173, 248, 10,
        160, 222, 18, 85, 129, 105, 33, 70, 168, 225, 241, 10, 172, 201, 49, 98, 136, 116, 83, 123, 123, 134, 171,
        65, 178, 210, 14, 122, 157, 71, 65, 105, 128, 108, 151, 77, 159, 206, 16, 147, 189, 23, 73, 113, 98, 21, 62,
        151, 196, 255, 102, 147, 211, 113, 77, 130, 127, 67, 112, 126, 121, 175, 113, 163, 230, 101, 105, 167, 111,
        48, 91, 120, 91, 124, 107, 142, 175, 93, 131, 166, 93, 58, 96, 105, 7, 48, 115, 192, 239, 229, 140, 186,
        195, 66, 109, 145, 54, 95, 133, 107, 151, 172, 150, 197, 206, 92, 139, 160, 35, 77, 115, 78, 118, 148, 130,
        170, 190, 118, 158, 179, 46, 84, 119, 0, 33, 77, 188, 216, 255, 136, 168, 221, 61, 100, 156, 48, 88, 140,
        101, 137, 196, 144, 175, 250, 87, 121, 182, 31, 70, 116, 74, 115, 169, 124, 166, 236, 110, 153, 222, 42, 78,
        127, 0, 27, 62};
    static const uint8_t want_up_nearest[351] = {
        1, 19, 60, 17, 80, 121, 85, 152, 193, 171, 131, 171, 231, 65, 107, 230, 46, 88, 143, 125, 165, 90, 182, 223,
        144, 120, 166, 219, 34, 87, 221, 25, 79, 140, 108, 153, 80, 172, 210, 21, 21, 54, 33, 80, 115, 87, 147, 187,
        165, 128, 165, 224, 68, 101, 225, 51, 82, 138, 120, 159, 83, 173, 217, 138, 124, 160, 213, 57, 81, 215, 51,
        73, 134, 112, 147, 74, 159, 204, 212, 0, 34, 171, 48, 94, 110, 122, 166, 133, 93, 144, 193, 25, 80, 205, 8,
        61, 122, 67, 138, 62, 145, 196, 117, 171, 139, 192, 201, 60, 194, 215, 52, 113, 150, 126, 53, 100, 183, 255,
        50, 20, 198, 77, 81, 107, 117, 154, 118, 99, 132, 178, 60, 67, 191, 51, 48, 111, 73, 126, 50, 121, 184, 105,
        168, 127, 180, 228, 47, 182, 243, 39, 101, 150, 114, 41, 77, 171, 216, 194, 13, 154, 167, 71, 81, 121, 137,
        101, 133, 117, 161, 172, 58, 173, 181, 41, 92, 121, 111, 32, 80, 164, 87, 127, 111, 162, 191, 39, 164, 194,
        32, 83, 121, 99, 23, 65, 151, 222, 255, 0, 158, 210, 43, 78, 123, 127, 95, 146, 102, 155, 218, 26, 168, 234,
        4, 86, 138, 96, 26, 63, 165, 81, 121, 97, 156, 200, 4, 158, 200, 0, 77, 118, 84, 16, 58, 152, 221, 247, 48,
        157, 189, 79, 78, 117, 133, 95, 132, 114, 155, 186, 62, 168, 197, 46, 86, 122, 108, 26, 69, 155, 81, 122,
        108, 156, 196, 43, 158, 199, 36, 77, 118, 96, 18, 58, 143, 194, 236, 239, 130, 172, 193, 51, 93, 131, 68,
        110, 146, 128, 170, 194, 141, 184, 204, 61, 101, 136, 1, 40, 86, 55, 95, 131, 129, 171, 193, 131, 172, 194,
        50, 91, 127, 0, 31, 76, 190, 231, 254, 126, 167, 207, 47, 88, 131, 64, 105, 152, 124, 165, 217, 136, 178,
        232, 57, 96, 142, 0, 36, 75, 51, 91, 136, 124, 166, 219, 127, 168, 221, 46, 87, 132, 0, 27, 66};
    uint8_t out[13 * 9 * 3];
    CHECK(kiln_upscale_image("Lanczos", up_src, 6, 4, 13, 9, out) == 0 && !memcmp(out, want_up_lanczos, sizeof out));
    CHECK(kiln_upscale_image("Nearest", up_src, 6, 4, 13, 9, out) == 0 && !memcmp(out, want_up_nearest, sizeof out));
    /* the hires pass with them runs at the target size and says which upscaler it used */
    json_t *c = json_array_get(runs("hires_fix"), 0);
    static const char *const names[] = {"None", "Lanczos", "Nearest"};
    for (int i = 0; i < 3; i++) {
        kiln_gen_params p;
        params_from(c, &p);
        p.steps = 3;
        p.hr_scale = 1.5;
        p.hr_upscaler = names[i];
        p.hr_steps = 2;
        kiln_gen_image *im = NULL;
        int n = 0, rc = kiln_generate(ctx, &p, NULL, NULL, &im, &n);
        CHECK_MSG(rc == 0, "%s: %s", names[i], kiln_last_error());
        if (rc == 0) {
            char want[64];
            snprintf(want, sizeof want, "Hires upscaler: %s,", names[i]);
            CHECK(im[0].width == 96 && im[0].height == 96 && strstr(im[0].infotext, want));
        }
        kiln_gen_images_free(im, n);
    }
    kiln_gen_params p;
    params_from(c, &p);
    p.hr_scale = 1.3; /* 83 px: not a multiple of 8, which a re-encode needs */
    p.hr_upscaler = "Lanczos";
    CHECK(kiln_hires_check(&p) == KILN_EUNSUPPORTED && strstr(kiln_last_error(), "multiple of 8"));
}

/* hr_resize_x/y (A1111 calculate_target_resolution): the upscale covers the requested size keeping the
 * aspect ratio, then the latent is cut (centred) to it. */
TEST(hires_resize) {
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    p.width = p.height = 64;
    int w, h;
    p.hr_resize_x = 128;
    CHECK(kiln_hires_enabled(&p, &w, &h) && w == 128 && h == 128 && kiln_hires_output_size(&p, &w, &h) && h == 128);
    p.hr_resize_x = 0, p.hr_resize_y = 96;
    CHECK(kiln_hires_enabled(&p, &w, &h) && w == 96 && h == 96);
    p.hr_resize_x = 128, p.hr_resize_y = 96;
    CHECK(kiln_hires_enabled(&p, &w, &h) && w == 128 && h == 128);
    CHECK(kiln_hires_output_size(&p, &w, &h) && w == 128 && h == 96);
    p.width = 64, p.height = 48, p.hr_resize_x = 100, p.hr_resize_y = 100;
    CHECK(kiln_hires_enabled(&p, &w, &h) && w == 133 && h == 100);
    CHECK(kiln_hires_output_size(&p, &w, &h) && w == 96 && h == 96);
    p.hr_resize_x = 64, p.hr_resize_y = 48; /* the same size: off */
    CHECK(!kiln_hires_enabled(&p, &w, &h));

    /* a run: the upscaled latent is the centre rows of the 16x16 upscale */
    json_t *c = json_array_get(runs("hires_fix"), 0);
    params_from(c, &p);
    p.steps = 3;
    p.hr_steps = 2;
    p.hr_resize_x = 128, p.hr_resize_y = 96;
    float first[256], up[4 * 12 * 16], full[1024], samples[4 * 12 * 16];
    kiln_hires_out out = {.first_pass = first, .upscaled = up};
    int64_t seed = p.seed, sub = 0;
    kiln_sample_trace tr = {0};
    CHECK(kiln_hires_sample(ctx, &p, &seed, &sub, 1, 0, NULL, NULL, samples, &out, &tr) == 0);
    CHECK(kiln_latent_upscale("Latent", first, 4, 8, 8, 16, 16, full) == 0);
    int same = 1;
    for (int c4 = 0; c4 < 4; c4++)
        for (int y = 0; y < 12; y++) same &= !memcmp(up + (c4 * 12 + y) * 16, full + (c4 * 16 + y + 2) * 16, 16 * sizeof(float));
    CHECK(same);
    CHECK(tr.noise != NULL); /* drawn at 4x12x16 */
    kiln_sample_trace_free(&tr);
    kiln_gen_image *im = NULL;
    int n = 0;
    CHECK(kiln_generate(ctx, &p, NULL, NULL, &im, &n) == 0);
    CHECK(n == 1 && im[0].width == 128 && im[0].height == 96 && strstr(im[0].infotext, "Hires resize: 128x96, Hires steps: 2"));
    kiln_gen_images_free(im, n);
}

static void run_hires_case(json_t *c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    kiln_st_file *f = open_run(c);
    if (!f) return;
    kiln_gen_params p;
    params_from(c, &p);
    p.hr_scale = json_number_value(json_object_get(c, "hr_scale"));
    p.hr_upscaler = json_string_value(json_object_get(c, "hr_upscaler"));
    p.hr_steps = (int)json_integer_value(json_object_get(c, "hr_second_pass_steps"));
    json_t *hr = json_object_get(c, "hr");
    int hw = 0, hh = 0;
    CHECK(kiln_hires_enabled(&p, &hw, &hh) && hw == 128 && hh == 128);
    float first[256], up[1024], samples[1024];
    kiln_sample_trace tr1 = {0}, tr2 = {0};
    kiln_hires_out out = {.first_pass = first, .upscaled = up, .first = &tr1};
    int64_t seed = p.seed, subseed = 0;
    int rc = kiln_hires_sample(ctx, &p, &seed, &subseed, 1, 0, NULL, NULL, samples, &out, &tr2);
    CHECK_MSG(rc == 0, "%s: %s", name, kiln_last_error());
    if (rc == 0) {
        float *w_first = tensor_f32(f, "samples_first_pass", NULL), *w_up = tensor_f32(f, "latent_upscaled", NULL),
              *w_noise = tensor_f32(f, "hr_noise", NULL), *w_samples = tensor_f32(f, "samples", NULL);
        double e1 = test_max_abs_diff(first, w_first, 256), e2 = test_max_abs_diff(up, w_up, 1024),
               e3 = test_max_abs_diff(samples, w_samples, 1024);
        /* the upscale alone, on A1111's own first-pass latent */
        float up_own[1024];
        CHECK(kiln_latent_upscale(p.hr_upscaler, w_first, 4, 8, 8, 16, 16, up_own) == 0);
        double e_own = test_max_abs_diff(up_own, w_up, 1024);
        printf("  %-36s first pass err %.3g (atol %.3g)  upscale err %.3g (own %.3g, atol %.3g)  calls %d+%d  "
               "samples err %.3g (atol %.3g)\n",
               name, e1, tol(c, "samples_first_pass_atol"), e2, e_own, tol(c, "latent_upscaled_atol"), tr1.n_calls,
               tr2.n_calls, e3, tol(c, "samples_atol"));
        CHECK(e1 <= tol(c, "samples_first_pass_atol"));
        CHECK(e2 <= tol(c, "latent_upscaled_atol"));
        CHECK(e_own <= 1e-5);
        CHECK(test_max_abs_diff(tr2.noise, w_noise, 1024) == 0.0);
        CHECK(tr1.n_calls == (int)json_integer_value(json_object_get(c, "n_denoiser_calls")));
        CHECK(tr2.n_calls == (int)json_integer_value(json_object_get(hr, "n_denoiser_calls")));
        check_sigmas(name, &tr1, json_object_get(c, "sigmas"));
        check_sigmas(name, &tr2, json_object_get(hr, "sigmas"));
        CHECK_MSG(e3 <= tol(c, "samples_atol"), "%s", name);
        uint8_t *rgb = malloc(128 * 128 * 3);
        CHECK(kiln_decode_latents(ctx, samples, 1, 16, 16, NULL, rgb) == 0);
        CHECK_MSG(png_close("image_u8", rgb, tensor_u8(f, "image_u8"), 128 * 128 * 3), "%s", name);
        free(rgb), free(w_first), free(w_up), free(w_noise), free(w_samples);
    }
    kiln_sample_trace_free(&tr1);
    kiln_sample_trace_free(&tr2);
    kiln_st_close(f);
}

TEST(hires_cases) {
    json_t *r = runs("hires_fix"), *c;
    size_t i;
    CHECK(json_array_size(r) == 2);
    json_array_foreach(r, i, c) run_hires_case(c);
}

/* ---- kiln_generate end to end ------------------------------------------------------------------- */

static void generate_case(const char *kind, const char *png_key) {
    json_t *c = json_array_get(runs(kind), 0);
    kiln_st_file *f = open_run(c);
    if (!f) return;
    kiln_gen_params p;
    params_from(c, &p);
    int side = 64;
    if (!strcmp(kind, "hires_fix")) {
        p.hr_scale = json_number_value(json_object_get(c, "hr_scale"));
        p.hr_upscaler = json_string_value(json_object_get(c, "hr_upscaler"));
        p.hr_steps = (int)json_integer_value(json_object_get(c, "hr_second_pass_steps"));
        side = 128;
    } else {
        p.init_rgb = tensor_u8(f, "init_image_u8");
        p.init_width = p.init_height = 64;
        if (!strcmp(kind, "inpaint")) p.mask_l = tensor_u8(f, "mask_input_u8");
    }
    kiln_gen_image *im = NULL;
    int n = 0, rc = kiln_generate(ctx, &p, NULL, NULL, &im, &n);
    CHECK_MSG(rc == 0, "%s: %s", kind, kiln_last_error());
    if (rc == 0) {
        CHECK(n == 1 && im[0].width == side && im[0].height == side);
        CHECK(png_close(png_key, im[0].rgb, tensor_u8(f, png_key), (size_t)side * side * 3));
        printf("    infotext: %s\n", im[0].infotext);
        char ds[64];
        snprintf(ds, sizeof ds, "Denoising strength: %g,", p.denoising_strength);
        CHECK(strstr(im[0].infotext, ds) != NULL);
        if (p.hr_scale > 0) CHECK(strstr(im[0].infotext, "Hires upscale: 2, Hires steps: 5, Hires upscaler: Latent"));
        if (p.mask_l) CHECK(strstr(im[0].infotext, "Mask blur: 4"));
    }
    kiln_gen_images_free(im, n);
    kiln_st_close(f);
}

TEST(generate_img2img) { generate_case("img2img", "image_u8"); }
TEST(generate_inpaint) { generate_case("inpaint", "composited_u8"); }
TEST(generate_hires) { generate_case("hires_fix", "image_u8"); }

/* inpainting "only masked" end to end: the crop around the blurred mask is sampled at 64x64 and pasted back;
 * outside the crop the output is the init image, and the infotext says so. (The crop and paste steps match
 * Pillow / OpenCV and a transcription of A1111's code byte for byte; no A1111 run pins the sampling.) */
TEST(generate_only_masked) {
    json_t *c = json_array_get(runs("inpaint"), 0);
    kiln_st_file *f = open_run(c);
    if (!f) return;
    kiln_gen_params p;
    params_from(c, &p);
    p.init_rgb = tensor_u8(f, "init_image_u8");
    p.init_width = p.init_height = 64;
    p.mask_l = tensor_u8(f, "mask_input_u8");
    p.inpaint_full_res = 1;
    p.inpaint_full_res_padding = 0;
    kiln_img2img_prep pr;
    CHECK(kiln_img2img_prepare(&p, &pr) == 0);
    CHECK_MSG(pr.crop[0] == 2 && pr.crop[1] == 2 && pr.crop[2] == 60 && pr.crop[3] == 60, "crop %d %d %d %d", pr.crop[0],
              pr.crop[1], pr.crop[2], pr.crop[3]);
    kiln_img2img_prep_free(&pr);
    kiln_gen_image *im = NULL;
    int n = 0, rc = kiln_generate(ctx, &p, NULL, NULL, &im, &n);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (rc == 0) {
        CHECK(im[0].width == 64 && im[0].height == 64);
        int same = 1;
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 64; x++)
                if (x < 2 || y < 2 || x >= 60 || y >= 60) same &= !memcmp(im[0].rgb + (y * 64 + x) * 3, p.init_rgb + (y * 64 + x) * 3, 3);
        CHECK(same);
        CHECK(strstr(im[0].infotext, "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 0") != NULL);
    }
    kiln_gen_images_free(im, n);
    /* resize mode 3 at the same size: the latent interpolation is a copy, so it equals mode 0 */
    {
        kiln_gen_params q;
        params_from(c, &q);
        q.init_rgb = p.init_rgb;
        q.init_width = q.init_height = 64;
        q.steps = 3;
        uint8_t a[64 * 64 * 3], b[64 * 64 * 3], r3[128 * 64 * 3];
        int64_t seed = 3, sub = 0;
        CHECK(kiln_img2img_batch(ctx, &q, &seed, &sub, 1, 0, NULL, NULL, NULL, a, NULL, NULL) == 0);
        q.resize_mode = 3;
        CHECK(kiln_img2img_batch(ctx, &q, &seed, &sub, 1, 0, NULL, NULL, NULL, b, NULL, NULL) == 0);
        CHECK(!memcmp(a, b, sizeof a));
        /* to another size: encoded at 64x64, the latent stretched to 16x8 */
        q.width = 128;
        CHECK(kiln_img2img_batch(ctx, &q, &seed, &sub, 1, 0, NULL, NULL, NULL, r3, NULL, NULL) == 0);
        q.mask_l = p.mask_l;
        CHECK(kiln_img2img_check(&q) == KILN_EINVAL && strstr(kiln_last_error(), "resize_mode"));
    }
    /* masked content fill / latent noise / latent nothing run and say so */
    static const char *const contents[4] = {"Masked content: fill", NULL, "Masked content: latent noise",
                                            "Masked content: latent nothing"};
    for (int fill = 0; fill < 4; fill++) {
        if (fill == 1) continue;
        p.inpaint_full_res = 0;
        p.inpainting_fill = fill;
        p.steps = 2;
        im = NULL, n = 0;
        rc = kiln_generate(ctx, &p, NULL, NULL, &im, &n);
        CHECK_MSG(rc == 0 && strstr(im[0].infotext, contents[fill]), "fill %d: %s", fill, rc ? kiln_last_error() : im[0].infotext);
        kiln_gen_images_free(im, n);
    }
    /* a blank mask falls back to img2img */
    uint8_t blank[64 * 64] = {0};
    p.mask_l = blank;
    int w, h, only = 1;
    CHECK(kiln_img2img_output_size(&p, &w, &h, &only) == 0 && !only && w == 64);
    kiln_st_close(f);
}

/* Every sampler runs img2img and the hires pass at odd strengths without failing, with finite output. */
TEST(samplers_smoke) {
    json_t *c = json_array_get(runs("img2img"), 0);
    kiln_st_file *f = open_run(c);
    if (!f) return;
    static const char *const samplers[] = {"Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a",
                                           "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM fast",
                                           "DPM adaptive", "Restart", "DDIM", "PLMS", "UniPC", "LCM"};
    static const double strengths[] = {0.05, 0.5, 1.0};
    for (size_t si = 0; si < sizeof samplers / sizeof samplers[0]; si++)
        for (int k = 0; k < 3; k++) {
            kiln_gen_params p;
            params_from(c, &p);
            p.sampler = samplers[si];
            p.steps = 8; /* UniPC's order 3 needs more than 3 steps after the t_enc cut, as in A1111 */
            p.denoising_strength = strengths[k];
            p.init_rgb = tensor_u8(f, "init_image_u8");
            p.init_width = p.init_height = 64;
            float samples[256];
            uint8_t rgb[64 * 64 * 3];
            kiln_img2img_out out = {.samples = samples};
            int64_t seed = 1, subseed = 0;
            int rc = kiln_img2img_batch(ctx, &p, &seed, &subseed, 1, 0, NULL, NULL, NULL, rgb, &out, NULL);
            int finite = 1;
            for (int i = 0; rc == 0 && i < 256; i++) finite &= isfinite(samples[i]);
            CHECK_MSG(rc == 0 && finite, "img2img %s strength %g: %s", samplers[si], strengths[k], rc ? kiln_last_error() : "not finite");
        }
    kiln_st_close(f);
}

static int count_progress(void *user, int batch_index, int step, int total) {
    int *last = user;
    (void)batch_index;
    if (step != last[0] + 1 || (last[1] && total != last[1])) last[2] = 1; /* steps must count up to one total */
    last[0] = step;
    last[1] = total;
    return 0;
}

/* A batch of two: each image has its own generator and posterior noise, so the first equals a run of one;
 * hires progress counts both passes against one total. */
TEST(batches_and_progress) {
    json_t *c = json_array_get(runs("inpaint"), 0);
    kiln_st_file *f = open_run(c);
    if (!f) return;
    kiln_gen_params p;
    params_from(c, &p);
    p.steps = 4;
    p.init_rgb = tensor_u8(f, "init_image_u8");
    p.init_width = p.init_height = 64;
    p.mask_l = tensor_u8(f, "mask_input_u8");
    kiln_gen_image *one = NULL, *two = NULL;
    int n1 = 0, n2 = 0;
    CHECK(kiln_generate(ctx, &p, NULL, NULL, &one, &n1) == 0);
    p.batch_size = 2;
    CHECK(kiln_generate(ctx, &p, NULL, NULL, &two, &n2) == 0);
    if (n1 == 1 && n2 == 2) {
        CHECK(two[1].seed == two[0].seed + 1 && two[0].seed == one[0].seed);
        CHECK(png_close("batch[0]", two[0].rgb, one[0].rgb, 64 * 64 * 3));
        CHECK(memcmp(two[0].rgb, two[1].rgb, 64 * 64 * 3) != 0);
    }
    kiln_gen_images_free(one, n1);
    kiln_gen_images_free(two, n2);
    kiln_st_close(f);

    json_t *h = json_array_get(runs("hires_fix"), 0);
    params_from(h, &p);
    p.steps = 3;
    p.hr_scale = 2;
    p.hr_steps = 2;
    int st[3] = {0, 0, 0};
    kiln_gen_image *im = NULL;
    int n = 0;
    CHECK(kiln_generate(ctx, &p, count_progress, st, &im, &n) == 0);
    CHECK_MSG(st[0] == 5 && st[1] == 5 && !st[2], "progress ended at %d of %d (order broken: %d)", st[0], st[1], st[2]);
    kiln_gen_images_free(im, n);
}

TEST(bad_values_are_refused) {
    uint8_t img[16 * 16 * 3] = {0}, mask[16 * 16] = {0};
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    p.width = p.height = 16;
    p.init_rgb = img;
    p.init_width = p.init_height = 16;
    p.denoising_strength = 1.5;
    CHECK(kiln_img2img_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "denoising_strength"));
    p.denoising_strength = 0.5;
    p.resize_mode = 3;
    p.init_width = 12;
    CHECK(kiln_img2img_check(&p) == KILN_EUNSUPPORTED && strstr(kiln_last_error(), "resize_mode"));
    p.init_width = 16;
    p.resize_mode = 7;
    CHECK(kiln_img2img_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "resize_mode"));
    p.resize_mode = 0;
    p.mask_l = mask;
    p.inpainting_fill = 4;
    CHECK(kiln_img2img_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "inpainting_fill"));
    p.inpainting_fill = 1;
    p.inpaint_full_res = 1;
    p.inpaint_full_res_padding = -1;
    CHECK(kiln_img2img_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "inpaint_full_res_padding"));
    p.inpaint_full_res = 0;
    p.inpaint_full_res_padding = 32;
    p.mask_blur = -1;
    CHECK(kiln_img2img_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "mask_blur"));
    p.mask_blur = 4;
    CHECK(kiln_img2img_check(&p) == KILN_OK);
    p.hr_scale = 2;
    CHECK(kiln_img2img_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "hr_scale"));

    kiln_gen_params_init(&p);
    p.hr_scale = 2;
    p.hr_upscaler = "R-ESRGAN 4x+";
    CHECK(kiln_hires_check(&p) == KILN_EUNSUPPORTED && strstr(kiln_last_error(), "hr_upscaler"));
    p.hr_upscaler = "Latent";
    p.hr_steps = -2;
    CHECK(kiln_hires_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "hr_steps"));
    p.hr_steps = 0;
    p.denoising_strength = 0;
    CHECK(kiln_hires_check(&p) == KILN_EINVAL && strstr(kiln_last_error(), "denoising_strength"));
    /* kiln_generate refuses too, naming the field */
    kiln_gen_params_init(&p);
    p.width = p.height = 16;
    p.mask_l = mask;
    kiln_gen_image *im = NULL;
    int n = 0;
    CHECK(kiln_generate(ctx, &p, NULL, NULL, &im, &n) == KILN_EINVAL && strstr(kiln_last_error(), "mask"));
    /* hr_scale 1 changes nothing: A1111 turns hires fix off */
    kiln_gen_params_init(&p);
    p.hr_scale = 1.0;
    int hw, hh;
    CHECK(!kiln_hires_enabled(&p, &hw, &hh));
}

int main(void) {
    kiln_ctx_options opts;
    if (fixture_cpu_setup(&manifest, &model, &opts, &ctx)) return 1;
    RUN(mask_pipeline);
    RUN(mask_edges);
    RUN(pillow_opencv_cases);
    RUN(pillow_fill_cases);
    RUN(img2img_steps);
    RUN(latent_upscale_modes);
    RUN(img2img_cases);
    RUN(inpaint_cases);
    RUN(hires_cases);
    RUN(image_upscalers);
    RUN(hires_resize);
    RUN(generate_img2img);
    RUN(generate_inpaint);
    RUN(generate_hires);
    RUN(generate_only_masked);
    RUN(samplers_smoke);
    RUN(batches_and_progress);
    RUN(bad_values_are_refused);
    kiln_ctx_free(ctx);
    kiln_model_free(model);
    json_decref(manifest);
    return test_summary();
}
