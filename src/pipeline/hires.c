/* hires.c — txt2img hires fix (see hires.h); follows A1111 v1.9.4 processing.py
 * (StableDiffusionProcessingTxt2Img.init / calculate_target_resolution / sample_hr_pass), PyTorch's
 * upsample kernels for the latent upscalers and modules/upscaler.py for the built-in image ones. */
#include "pipeline/hires.h"

#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "pipeline/mask.h"

typedef enum upscale_mode {
    UP_BILINEAR, UP_NEAREST, UP_NEAREST_EXACT, UP_BICUBIC, UP_BILINEAR_AA, UP_BICUBIC_AA, /* latent */
    UP_IMG_NONE, UP_IMG_LANCZOS, UP_IMG_NEAREST                                          /* image */
} upscale_mode;

/* shared.latent_upscale_modes, then the upscalers of shared.sd_upscalers that need no model. */
static const struct {
    const char *name;
    upscale_mode mode;
} upscalers[] = {
    {"Latent", UP_BILINEAR},
    {"Latent (antialiased)", UP_BILINEAR_AA},
    {"Latent (bicubic)", UP_BICUBIC},
    {"Latent (bicubic antialiased)", UP_BICUBIC_AA},
    {"Latent (nearest)", UP_NEAREST},
    {"Latent (nearest-exact)", UP_NEAREST_EXACT},
    {"None", UP_IMG_NONE},
    {"Lanczos", UP_IMG_LANCZOS},
    {"Nearest", UP_IMG_NEAREST},
};

static int find_upscaler(const char *name, upscale_mode *mode) {
    const char *n = name && *name ? name : "Latent";
    for (size_t i = 0; i < sizeof upscalers / sizeof upscalers[0]; i++)
        if (!strcasecmp(n, upscalers[i].name)) {
            *mode = upscalers[i].mode;
            return KILN_OK;
        }
    return kiln_error(KILN_EUNSUPPORTED,
                      "hr_upscaler: '%s' is not supported (kiln has Latent, Latent (antialiased), Latent (bicubic), "
                      "Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact), None, Lanczos, Nearest)",
                      n);
}

/* Python's // for the non-negative and negative ints calculate_target_resolution divides. */
static int floordiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* calculate_target_resolution: the upscale size and the latent rows/columns cut off afterwards. */
static int target(const kiln_gen_params *p, int *up_w, int *up_h, int *trunc_x, int *trunc_y) {
    const int rx = p->hr_resize_x, ry = p->hr_resize_y, W = p->width, H = p->height;
    *trunc_x = *trunc_y = 0;
    if (p->init_rgb || (!(p->hr_scale > 0) && rx <= 0 && ry <= 0)) return 0;
    if (rx <= 0 && ry <= 0) {
        *up_w = (int)(W * p->hr_scale);
        *up_h = (int)(H * p->hr_scale);
    } else if (ry <= 0) {
        *up_w = rx;
        *up_h = (int)((int64_t)rx * H / W);
    } else if (rx <= 0) {
        *up_w = (int)((int64_t)ry * W / H);
        *up_h = ry;
    } else {
        if ((double)W / H < (double)rx / ry) {
            *up_w = rx;
            *up_h = (int)((int64_t)rx * H / W);
        } else {
            *up_w = (int)((int64_t)ry * W / H);
            *up_h = ry;
        }
        *trunc_x = floordiv(*up_w - rx, 8);
        *trunc_y = floordiv(*up_h - ry, 8);
    }
    return !(*up_w == W && *up_h == H); /* A1111 disables hires fix when it would change nothing */
}

int kiln_hires_enabled(const kiln_gen_params *p, int *hr_width, int *hr_height) {
    int w, h, tx, ty;
    if (!target(p, &w, &h, &tx, &ty)) return 0;
    *hr_width = w;
    *hr_height = h;
    return 1;
}

int kiln_hires_output_size(const kiln_gen_params *p, int *w, int *h) {
    int uw, uh, tx, ty;
    if (!target(p, &uw, &uh, &tx, &ty)) return 0;
    *w = (uw / 8 - tx) * 8;
    *h = (uh / 8 - ty) * 8;
    return 1;
}

int kiln_hires_check(const kiln_gen_params *p) {
    if (p->hr_scale < 0 || isnan(p->hr_scale)) return kiln_error(KILN_EINVAL, "hr_scale: %g is negative", p->hr_scale);
    if (p->hr_resize_x < 0 || p->hr_resize_y < 0 || p->hr_resize_x > 16384 || p->hr_resize_y > 16384)
        return kiln_error(KILN_EINVAL, "hr_resize: %dx%d is not between 0 and 16384", p->hr_resize_x, p->hr_resize_y);
    if (!(p->hr_scale > 0) && p->hr_resize_x <= 0 && p->hr_resize_y <= 0) return KILN_OK;
    if (p->init_rgb) return kiln_error(KILN_EINVAL, "hr_scale: hires fix is a txt2img option, not img2img's");
    if (!(p->hr_scale <= 16) && p->hr_resize_x <= 0 && p->hr_resize_y <= 0)
        return kiln_error(KILN_EINVAL, "hr_scale: %g is not between 0 and 16", p->hr_scale);
    upscale_mode m = UP_BILINEAR;
    KILN_TRY(find_upscaler(p->hr_upscaler, &m));
    int tw, th;
    if (m >= UP_IMG_NONE && kiln_hires_enabled(p, &tw, &th) && (tw % 8 || th % 8))
        return kiln_error(KILN_EUNSUPPORTED,
                          "hr_scale: the %s upscaler re-encodes the image, and %dx%d is not a multiple of 8",
                          p->hr_upscaler, tw, th);
    if (p->hr_steps < 0 || p->hr_steps > 10000) return kiln_error(KILN_EINVAL, "hr_steps: %d is not between 0 and 10000", p->hr_steps);
    if (!(p->denoising_strength > 0 && p->denoising_strength <= 1))
        return kiln_error(KILN_EINVAL, "denoising_strength: %g is not in (0, 1] (the hires pass needs steps)",
                          p->denoising_strength);
    int hw, hh, ow, oh;
    if (kiln_hires_enabled(p, &hw, &hh) && (hw < 8 || hh < 8 || hw > 16384 || hh > 16384))
        return kiln_error(KILN_EINVAL, "hr_scale: %g gives %dx%d, not between 8 and 16384", p->hr_scale, hw, hh);
    if (kiln_hires_output_size(p, &ow, &oh) && (ow < 8 || oh < 8))
        return kiln_error(KILN_EINVAL, "hr_resize: %dx%d leaves no image", p->hr_resize_x, p->hr_resize_y);
    return KILN_OK;
}

/* PyTorch's cubic convolution weights (A = -0.75) for a fraction t. */
static void cubic_weights(float t, float c[4]) {
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = 1.0f - t, x3 = x2 + 1.0f;
    c[0] = ((A * x1 - 5 * A) * x1 + 8 * A) * x1 - 4 * A;
    c[1] = ((A + 2) * t - (A + 3)) * t * t + 1;
    c[2] = ((A + 2) * x2 - (A + 3)) * x2 * x2 + 1;
    c[3] = ((A * x3 - 5 * A) * x3 + 8 * A) * x3 - 4 * A;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The filters of PyTorch's antialiased interpolation: triangle, and cubic with a = -0.5 (Pillow's). */
static float aa_filter(int cubic, float x) {
    if (x < 0) x = -x;
    if (!cubic) return x < 1.0f ? 1.0f - x : 0.0f;
    const float a = -0.5f;
    if (x < 1.0f) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2.0f) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
    return 0.0f;
}

/* One axis of PyTorch's separable antialiased resampling (_upsample_*2d_aa, align_corners False):
 * out[i] = sum_j w_j * in[xmin + j] with Pillow-style normalised weights, float32. n_lines lines of
 * in_len values spaced `stride` apart (line starts `line_step` apart), written the same way. */
static int aa_axis(int cubic, const float *in, int in_len, int out_len, int n_lines, size_t line_step_in,
                   size_t line_step_out, size_t stride, float *out) {
    const float scale = (float)in_len / (float)out_len;
    const float support = (cubic ? 2.0f : 1.0f) * (scale >= 1.0f ? scale : 1.0f);
    const float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
    const int ksize = (int)ceilf(support) * 2 + 1;
    float *w = malloc(sizeof(float) * (size_t)ksize * out_len);
    int *lo = malloc(sizeof(int) * 2 * (size_t)out_len);
    if (!w || !lo) {
        free(w), free(lo);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    for (int i = 0; i < out_len; i++) {
        float center = scale * (i + 0.5f), total = 0.0f;
        int xmin = (int)(center - support + 0.5f), xmax = (int)(center + support + 0.5f);
        if (xmin < 0) xmin = 0;
        if (xmax > in_len) xmax = in_len;
        float *wi = w + (size_t)i * ksize;
        for (int j = 0; j < xmax - xmin; j++) {
            wi[j] = aa_filter(cubic, (j + xmin - center + 0.5f) * invscale);
            total += wi[j];
        }
        for (int j = 0; total != 0.0f && j < xmax - xmin; j++) wi[j] /= total;
        lo[2 * i] = xmin;
        lo[2 * i + 1] = xmax - xmin;
    }
    for (int l = 0; l < n_lines; l++) {
        const float *src = in + line_step_in * l;
        float *dst = out + line_step_out * l;
        for (int i = 0; i < out_len; i++) {
            const float *wi = w + (size_t)i * ksize, *s = src + stride * lo[2 * i];
            float acc = s[0] * wi[0];
            for (int j = 1; j < lo[2 * i + 1]; j++) acc += s[stride * j] * wi[j];
            dst[stride * i] = acc;
        }
    }
    free(w), free(lo);
    return KILN_OK;
}

/* Antialiased resize of one h x w plane: width first, then height (each only if its size changes). */
static int aa_resize(int cubic, const float *in, int h, int w, int out_h, int out_w, float *out) {
    float *tmp = malloc(sizeof(float) * (size_t)h * out_w);
    if (!tmp) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = KILN_OK;
    if (out_w != w) rc = aa_axis(cubic, in, w, out_w, h, (size_t)w, (size_t)out_w, 1, tmp);
    else memcpy(tmp, in, sizeof(float) * (size_t)h * w);
    if (rc == KILN_OK && out_h != h) rc = aa_axis(cubic, tmp, h, out_h, out_w, 1, 1, (size_t)out_w, out);
    else if (rc == KILN_OK) memcpy(out, tmp, sizeof(float) * (size_t)h * out_w);
    free(tmp);
    return rc;
}

int kiln_latent_upscale(const char *upscaler, const float *in, int n, int h, int w, int out_h, int out_w, float *out) {
    upscale_mode mode = UP_BILINEAR;
    KILN_TRY(find_upscaler(upscaler, &mode));
    if (h < 1 || w < 1 || out_h < 1 || out_w < 1) return kiln_error(KILN_EINVAL, "latent upscale: empty size");
    /* align_corners False with an output size: scale = in / out in float32 */
    const float sy = (float)h / (float)out_h, sx = (float)w / (float)out_w;
    if (mode >= UP_IMG_NONE)
        return kiln_error(KILN_EINVAL, "latent upscale: '%s' is an image upscaler", upscaler ? upscaler : "");
    if (mode == UP_BILINEAR_AA || mode == UP_BICUBIC_AA) {
        for (int p = 0; p < n; p++)
            KILN_TRY(aa_resize(mode == UP_BICUBIC_AA, in + (size_t)p * h * w, h, w, out_h, out_w,
                               out + (size_t)p * out_h * out_w));
        return KILN_OK;
    }
    for (int p = 0; p < n; p++) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * out_h * out_w;
        for (int oy = 0; oy < out_h; oy++)
            for (int ox = 0; ox < out_w; ox++) {
                float v;
                if (mode == UP_NEAREST || mode == UP_NEAREST_EXACT) {
                    float off = mode == UP_NEAREST_EXACT ? 0.5f : 0.0f;
                    int iy = (int)floorf((oy + off) * sy), ix = (int)floorf((ox + off) * sx);
                    v = src[(size_t)(iy < h - 1 ? iy : h - 1) * w + (ix < w - 1 ? ix : w - 1)];
                } else if (mode == UP_BILINEAR) {
                    float fy = sy * (oy + 0.5f) - 0.5f, fx = sx * (ox + 0.5f) - 0.5f;
                    if (fy < 0) fy = 0;
                    if (fx < 0) fx = 0;
                    int y0 = (int)fy, x0 = (int)fx;
                    int y1 = y0 + (y0 < h - 1), x1 = x0 + (x0 < w - 1);
                    float ly1 = fy - y0, lx1 = fx - x0;
                    if (ly1 > 1) ly1 = 1;
                    if (lx1 > 1) lx1 = 1;
                    float ly0 = 1.0f - ly1, lx0 = 1.0f - lx1;
                    v = ly0 * (lx0 * src[(size_t)y0 * w + x0] + lx1 * src[(size_t)y0 * w + x1]) +
                        ly1 * (lx0 * src[(size_t)y1 * w + x0] + lx1 * src[(size_t)y1 * w + x1]);
                } else {
                    float fy = sy * (oy + 0.5f) - 0.5f, fx = sx * (ox + 0.5f) - 0.5f;
                    int iy = (int)floorf(fy), ix = (int)floorf(fx);
                    float cy[4], cx[4], rows[4];
                    cubic_weights(fy - iy, cy);
                    cubic_weights(fx - ix, cx);
                    for (int j = 0; j < 4; j++) {
                        const float *r = src + (size_t)clampi(iy - 1 + j, 0, h - 1) * w;
                        rows[j] = r[clampi(ix - 1, 0, w - 1)] * cx[0] + r[clampi(ix, 0, w - 1)] * cx[1] +
                                  r[clampi(ix + 1, 0, w - 1)] * cx[2] + r[clampi(ix + 2, 0, w - 1)] * cx[3];
                    }
                    v = rows[0] * cy[0] + rows[1] * cy[1] + rows[2] * cy[2] + rows[3] * cy[3];
                }
                dst[(size_t)oy * out_w + ox] = v;
            }
    }
    return KILN_OK;
}

/* Image.resize to (w, h) with a filter into a fresh buffer that replaces *img. */
static int resize_owned(uint8_t **img, int *cw, int *ch, int w, int h, kiln_pil_filter f) {
    uint8_t *out = malloc((size_t)w * h * 3);
    if (!out) return kiln_error(KILN_ENOMEM, "out of memory upscaling to %dx%d", w, h);
    int rc = kiln_pil_resize_u8(*img, *cw, *ch, 3, NULL, w, h, f, out);
    if (rc) {
        free(out);
        return rc;
    }
    free(*img);
    *img = out, *cw = w, *ch = h;
    return KILN_OK;
}

/* images.resize_image(0, im, tw, th, upscaler_name) with a built-in upscaler: "None" is a LANCZOS resize;
 * Lanczos / Nearest run Upscaler.upscale (up to 3 do_upscale passes by the scale, then LANCZOS to the
 * multiple of 8 below, then LANCZOS to the target). *img (w x h RGB, malloc'ed) is replaced. */
static int upscale_image(upscale_mode mode, uint8_t **img, int w, int h, int tw, int th) {
    int cw = w, ch = h;
    if (mode != UP_IMG_NONE) {
        const double scale = fmax((double)tw / w, (double)th / h);
        if (scale > 1.0) {
            const int dest_w = (int)(floor(w * scale / 8) * 8), dest_h = (int)(floor(h * scale / 8) * 8);
            for (int i = 0; i < 3; i++) {
                if (cw >= dest_w && ch >= dest_h && (i > 0 || scale != 1)) break;
                const int pw = cw, ph = ch;
                KILN_TRY(resize_owned(img, &cw, &ch, (int)(cw * scale), (int)(ch * scale),
                                      mode == UP_IMG_NEAREST ? KILN_PIL_NEAREST : KILN_PIL_LANCZOS));
                if (pw == cw && ph == ch) break;
            }
            if (cw != dest_w || ch != dest_h) KILN_TRY(resize_owned(img, &cw, &ch, dest_w, dest_h, KILN_PIL_LANCZOS));
        }
    }
    if (cw != tw || ch != th) KILN_TRY(resize_owned(img, &cw, &ch, tw, th, KILN_PIL_LANCZOS));
    return KILN_OK;
}

int kiln_upscale_image(const char *upscaler, const uint8_t *rgb, int w, int h, int tw, int th, uint8_t *out) {
    upscale_mode mode = UP_BILINEAR;
    KILN_TRY(find_upscaler(upscaler, &mode));
    if (mode < UP_IMG_NONE) return kiln_error(KILN_EINVAL, "upscale image: '%s' is a latent upscaler", upscaler);
    uint8_t *img = malloc((size_t)w * h * 3);
    if (!img) return kiln_error(KILN_ENOMEM, "out of memory");
    memcpy(img, rgb, (size_t)w * h * 3);
    int rc = upscale_image(mode, &img, w, h, tw, th);
    if (rc == KILN_OK) memcpy(out, img, (size_t)tw * th * 3);
    free(img);
    return rc;
}

/* The non-latent path of sample_hr_pass: decode the first pass to 8-bit images, upscale them, encode them
 * again (sampling the posterior, as img2img does). up: [batch, 4, th/8, tw/8]. */
static int image_upscale_pass(kiln_ctx *ctx, upscale_mode mode, const float *first, const int64_t *seeds, int batch,
                              int h, int w, int th, int tw, float *up) {
    const int C = ctx->model->config.unet.in_channels;
    const size_t npx = (size_t)64 * h * w, per = (size_t)C * (th / 8) * (tw / 8);
    uint8_t *rgb = malloc(npx * 3 * batch);
    float *mean = malloc(sizeof(float) * per), *logvar = malloc(sizeof(float) * per), *eps = malloc(sizeof(float) * per);
    int rc = rgb && mean && logvar && eps ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    if (rc == KILN_OK) rc = kiln_decode_latents(ctx, first, batch, h, w, NULL, rgb);
    for (int b = 0; rc == KILN_OK && b < batch; b++) {
        uint8_t *img = malloc(npx * 3);
        rc = img ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
        if (rc == KILN_OK) memcpy(img, rgb + npx * 3 * b, npx * 3);
        if (rc == KILN_OK) rc = upscale_image(mode, &img, 8 * w, 8 * h, tw, th);
        if (rc == KILN_OK) rc = kiln_vae_encode(ctx, img, tw, th, mean, logvar);
        if (rc == KILN_OK) {
            kiln_vae_posterior_noise(seeds[b], per, eps);
            kiln_vae_posterior_sample(ctx->model->config.vae.scaling_factor, mean, logvar, eps, per, up + per * b);
        }
        free(img);
    }
    free(rgb), free(mean), free(logvar), free(eps);
    return rc;
}

/* Progress over both passes, as A1111 counts them: steps + hires steps. */
typedef struct hires_progress {
    kiln_progress_fn fn;
    void *user;
    int offset, total;
} hires_progress;

static int on_hires_progress(void *user, int batch_index, int step, int total) {
    (void)total;
    hires_progress *hp = user;
    return hp->fn(hp->user, batch_index, hp->offset + step, hp->total);
}

int kiln_hires_sample(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds, int batch,
                      int batch_index, kiln_progress_fn progress, void *user, float *latents, kiln_hires_out *out,
                      kiln_sample_trace *trace) {
    KILN_TRY(kiln_hires_check(p));
    int hr_w, hr_h, tx, ty;
    if (!target(p, &hr_w, &hr_h, &tx, &ty)) return kiln_error(KILN_EINVAL, "hr_scale: hires fix is off");
    const int C = ctx->model->config.unet.in_channels, h = p->height / 8, w = p->width / 8;
    const int UH = hr_h / 8, UW = hr_w / 8, H = UH - ty, W = UW - tx; /* upscaled, then cut to the target */
    float *first = malloc(sizeof(float) * batch * C * h * w), *up = malloc(sizeof(float) * batch * C * UH * UW);
    int rc = first && up ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    kiln_sample_trace tr1 = {0};
    const int hr_steps = p->hr_steps > 0 ? p->hr_steps : p->steps;
    hires_progress hp = {.fn = progress, .user = user, .offset = 0, .total = p->steps + hr_steps};
    kiln_progress_fn pf = progress ? on_hires_progress : NULL;
    if (rc == KILN_OK) rc = kiln_txt2img_sample(ctx, p, seeds, subseeds, batch, batch_index, pf, &hp, first, &tr1);
    hp.offset = p->steps;
    upscale_mode mode = UP_BILINEAR;
    if (rc == KILN_OK) rc = find_upscaler(p->hr_upscaler, &mode);
    if (rc == KILN_OK && mode >= UP_IMG_NONE)
        rc = image_upscale_pass(ctx, mode, first, seeds, batch, h, w, hr_h, hr_w, up);
    else if (rc == KILN_OK)
        rc = kiln_latent_upscale(p->hr_upscaler, first, batch * C, h, w, UH, UW, up);
    if (rc == KILN_OK && (tx || ty)) {
        /* samples[:, :, ty//2 : UH-(ty+1)//2, tx//2 : UW-(tx+1)//2], in place (rows only move forward) */
        for (int pl = 0; pl < batch * C; pl++)
            for (int y = 0; y < H; y++)
                memmove(up + ((size_t)pl * H + y) * W, up + ((size_t)pl * UH + y + ty / 2) * UW + tx / 2, sizeof(float) * W);
    }
    /* sample_img2img(steps = hr_second_pass_steps or steps) takes the fixed-steps branch; hr conds use
       firstpass_steps and the hires total steps for prompt schedules */
    kiln_sample_run run = {.init_latent = up, .lat_h = H, .lat_w = W, .steps = hr_steps, .fixed_steps = 1,
                            .denoising_strength = p->denoising_strength, .cond_steps = kiln_cond_total_steps(p, p->steps),
                            .cond_hires_steps = kiln_cond_total_steps(p, hr_steps)};
    if (rc == KILN_OK)
        rc = kiln_sample_latents(ctx, p, &run, seeds, subseeds, batch, batch_index, pf, &hp, latents, trace);
    if (rc == KILN_OK && out) {
        if (out->first_pass) memcpy(out->first_pass, first, sizeof(float) * batch * C * h * w);
        if (out->upscaled) memcpy(out->upscaled, up, sizeof(float) * batch * C * H * W);
    }
    if (out && out->first) *out->first = tr1;
    else kiln_sample_trace_free(&tr1);
    free(first), free(up);
    return rc;
}

/* ---- kiln_generate hooks ------------------------------------------------------------------------ */

int kiln_generate_ext_size(const kiln_gen_params *p, int *out_w, int *out_h) {
    int w, h;
    /* on a failure here (out of memory) img2img runs and reports it */
    if (p->init_rgb) return kiln_img2img_output_size(p, out_w, out_h, NULL) == KILN_OK ? 1 : -1;
    if (kiln_hires_output_size(p, &w, &h)) {
        *out_w = w;
        *out_h = h;
        return 1;
    }
    return 0;
}

int kiln_generate_ext_check(const kiln_gen_params *p) {
    KILN_TRY(kiln_img2img_check(p));
    return kiln_hires_check(p);
}

int kiln_generate_ext_batch(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds,
                            int batch, int batch_index, kiln_progress_fn progress, void *user, uint8_t *rgb,
                            kiln_sample_trace *trace) {
    if (p->init_rgb)
        return kiln_img2img_batch(ctx, p, seeds, subseeds, batch, batch_index, progress, user, NULL, rgb, NULL, trace);
    int hr_w, hr_h;
    if (!kiln_hires_output_size(p, &hr_w, &hr_h)) return kiln_error(KILN_EINVAL, "kiln_generate_ext_batch: plain txt2img");
    const int C = ctx->model->config.unet.in_channels, H = hr_h / 8, W = hr_w / 8;
    float *lat = malloc(sizeof(float) * batch * C * H * W);
    if (!lat) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = kiln_hires_sample(ctx, p, seeds, subseeds, batch, batch_index, progress, user, lat, NULL, trace);
    if (rc == KILN_OK) rc = kiln_decode_latents(ctx, lat, batch, H, W, NULL, rgb);
    free(lat);
    return rc;
}

void kiln_generate_ext_infotext(const kiln_gen_params *p, kiln_infotext_params *ip, kiln_infotext_kv *extra, int cap,
                                char bufs[4][32]) {
    int hw, hh;
    const int hires = kiln_hires_enabled(p, &hw, &hh);
    if (!p->init_rgb && !hires) return;
    ip->has_denoising_strength = 1;
    ip->denoising_strength = p->denoising_strength;
    const int pf = ip->python_floats;
    if (hires && ip->n_extra + 3 <= cap) {
        if (p->hr_resize_x > 0 || p->hr_resize_y > 0) {
            snprintf(bufs[0], 32, "%dx%d", p->hr_resize_x, p->hr_resize_y);
            extra[ip->n_extra++] = (kiln_infotext_kv){"Hires resize", bufs[0]};
        } else {
            extra[ip->n_extra++] = (kiln_infotext_kv){"Hires upscale", kiln_infotext_float(p->hr_scale, pf, bufs[0])};
        }
        if (p->hr_steps > 0) {
            snprintf(bufs[1], 32, "%d", p->hr_steps);
            extra[ip->n_extra++] = (kiln_infotext_kv){"Hires steps", bufs[1]};
        }
        extra[ip->n_extra++] = (kiln_infotext_kv){"Hires upscaler", p->hr_upscaler && *p->hr_upscaler ? p->hr_upscaler : "Latent"};
    }
    if (p->init_rgb && p->mask_l && ip->n_extra + 4 <= cap) {
        snprintf(bufs[2], 32, "%d", p->mask_blur);
        extra[ip->n_extra++] = (kiln_infotext_kv){"Mask blur", bufs[2]};
        int ow, oh, only_masked = 0;
        if (p->inpaint_full_res && kiln_img2img_output_size(p, &ow, &oh, &only_masked) == KILN_OK && only_masked) {
            extra[ip->n_extra++] = (kiln_infotext_kv){"Inpaint area", "Only masked"};
            snprintf(bufs[3], 32, "%d", p->inpaint_full_res_padding);
            extra[ip->n_extra++] = (kiln_infotext_kv){"Masked area padding", bufs[3]};
        }
        if (p->inpainting_fill == 0) extra[ip->n_extra++] = (kiln_infotext_kv){"Masked content", "fill"};
        if (p->inpainting_fill == 2) extra[ip->n_extra++] = (kiln_infotext_kv){"Masked content", "latent noise"};
        if (p->inpainting_fill == 3) extra[ip->n_extra++] = (kiln_infotext_kv){"Masked content", "latent nothing"};
    }
}
