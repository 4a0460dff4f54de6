/* img2img.c — A1111 v1.9.4 img2img and inpainting (see img2img.h): processing.py
 * StableDiffusionProcessingImg2Img.init/sample, sd_samplers_kdiffusion.py / sd_samplers_timesteps.py
 * sample_img2img, sd_samplers_common.setup_img2img_steps. */
#include "pipeline/img2img.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/embeddings.h"
#include "pipeline/denoiser.h"
#include "pipeline/hires.h"
#include "pipeline/mask.h"
#include "sample/brownian.h"
#include "sample/rng.h"
#include "sample/schedulers.h"
#include "sample/seeds.h"

int kiln_vae_encode(kiln_ctx *ctx, const uint8_t *rgb, int width, int height, float *mean, float *logvar) {
    if (width < 8 || height < 8 || width % 8 || height % 8)
        return kiln_error(KILN_EINVAL, "vae encode: %dx%d is not a multiple of 8", width, height);
    const int z = ctx->model->config.vae.z_channels;
    const size_t hw = (size_t)width * height, nl = (size_t)z * (height / 8) * (width / 8);
    kiln_cached_plan *cp = NULL;
    KILN_TRY(kiln_ctx_plan(ctx, KILN_NET_VAE_ENCODER, 1, height, width, 0, &cp));
    float *img = malloc(sizeof(float) * 3 * hw);
    if (!img) return kiln_error(KILN_ENOMEM, "out of memory encoding a %dx%d image", width, height);
    /* A1111: np.float32(u8) / 255, then image * 2 - 1 (float32) */
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < hw; i++) img[c * hw + i] = (float)rgb[i * 3 + c] / 255.0f * 2.0f - 1.0f;
    const char *names[3] = {"image", "mean", "logvar"};
    void *bufs[3] = {img, mean, logvar};
    int rc = kiln_ctx_run(ctx, cp, 3, names, bufs);
    free(img);
    for (size_t i = 0; rc == KILN_OK && i < nl; i++) logvar[i] = logvar[i] < -30.0f ? -30.0f : logvar[i] > 20.0f ? 20.0f : logvar[i];
    return rc;
}

void kiln_vae_posterior_sample(double scale, const float *mean, const float *logvar, const float *eps, size_t n,
                               float *latent) {
    const float s = (float)scale;
    for (size_t i = 0; i < n; i++) latent[i] = s * (mean[i] + expf(0.5f * logvar[i]) * eps[i]);
}

void kiln_vae_posterior_noise(int64_t seed, size_t n, float *eps) {
    kiln_torch_cpu g;
    kiln_torch_cpu_init(&g, (uint64_t)seed);
    kiln_torch_cpu_randn(&g, eps, n);
}

int kiln_img2img_check(const kiln_gen_params *p) {
    if (!(p->denoising_strength >= 0 && p->denoising_strength <= 1))
        return kiln_error(KILN_EINVAL, "denoising_strength: %g is not between 0 and 1", p->denoising_strength);
    if (!p->init_rgb) {
        if (p->mask_l) return kiln_error(KILN_EINVAL, "mask: inpainting needs an init image");
        return KILN_OK;
    }
    if (p->init_width < 1 || p->init_height < 1 || p->init_width > 16384 || p->init_height > 16384)
        return kiln_error(KILN_EINVAL, "init image: bad size %dx%d", p->init_width, p->init_height);
    if (p->resize_mode < 0 || p->resize_mode > 3)
        return kiln_error(KILN_EINVAL,
                          "resize_mode: %d is not 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3 "
                          "(just resize, latent upscale)",
                          p->resize_mode);
    if (p->resize_mode == 3 && (p->init_width % 8 || p->init_height % 8))
        return kiln_error(KILN_EUNSUPPORTED, "resize_mode: 3 encodes the init image as it is; %dx%d is not a multiple of 8",
                          p->init_width, p->init_height);
    if (p->resize_mode == 3 && p->mask_l && !p->inpaint_full_res &&
        (p->init_width != p->width || p->init_height != p->height))
        return kiln_error(KILN_EINVAL,
                          "resize_mode: 3 with a mask needs the init image at %dx%d, not %dx%d (A1111 fails to paste "
                          "the overlay there)",
                          p->width, p->height, p->init_width, p->init_height);
    if (p->hr_scale > 0) return kiln_error(KILN_EINVAL, "hr_scale: hires fix is a txt2img option, not img2img's");
    if (p->mask_l) {
        if (p->mask_blur < 0 || p->mask_blur > 64) return kiln_error(KILN_EINVAL, "mask_blur: %d is not between 0 and 64", p->mask_blur);
        if (p->inpainting_fill < 0 || p->inpainting_fill > 3)
            return kiln_error(KILN_EINVAL,
                              "inpainting_fill: %d is not 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)",
                              p->inpainting_fill);
        if (p->inpaint_full_res_padding < 0 || p->inpaint_full_res_padding > 4096)
            return kiln_error(KILN_EINVAL, "inpaint_full_res_padding: %d is not between 0 and 4096",
                              p->inpaint_full_res_padding);
    }
    return KILN_OK;
}

/* ---- one batch of img2img / inpainting ---------------------------------------------------------- */

void kiln_img2img_prep_free(kiln_img2img_prep *pr) {
    free(pr->image), free(pr->mask), free(pr->overlay);
    memset(pr, 0, sizeof *pr);
}

/* Image.getbbox of nonzero pixels: 0 if there are none. */
static int mask_bbox(const uint8_t *m, int w, int h, int box[4]) {
    int x1 = w, y1 = h, x2 = 0, y2 = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (m[(size_t)y * w + x]) {
                if (x < x1) x1 = x;
                if (y < y1) y1 = y;
                if (x + 1 > x2) x2 = x + 1;
                if (y + 1 > y2) y2 = y + 1;
            }
    if (x2 == 0) return 0;
    box[0] = x1, box[1] = y1, box[2] = x2, box[3] = y2;
    return 1;
}

/* Python floor division, as expand_crop_region's // on possibly negative ints. */
static int floordiv2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

/* masking.get_crop_region_v2 (bbox + padding, clipped) and expand_crop_region (grow one axis to the
 * processing aspect ratio, shifted back inside the image). */
static void crop_region(const int bbox[4], int pad, int proc_w, int proc_h, int img_w, int img_h, int r[4]) {
    int x1 = bbox[0], y1 = bbox[1], x2 = bbox[2], y2 = bbox[3];
    if (pad) {
        x1 = x1 - pad > 0 ? x1 - pad : 0;
        y1 = y1 - pad > 0 ? y1 - pad : 0;
        x2 = x2 + pad < img_w ? x2 + pad : img_w;
        y2 = y2 + pad < img_h ? y2 + pad : img_h;
    }
    double ratio_crop = (double)(x2 - x1) / (y2 - y1), ratio_proc = (double)proc_w / proc_h;
    if (ratio_crop > ratio_proc) {
        double desired_h = (x2 - x1) / ratio_proc;
        int diff = (int)(desired_h - (y2 - y1));
        y1 -= floordiv2(diff);
        y2 += diff - floordiv2(diff);
        if (y2 >= img_h) y1 -= y2 - img_h, y2 = img_h;
        if (y1 < 0) y2 -= y1, y1 = 0;
        if (y2 >= img_h) y2 = img_h;
    } else {
        double desired_w = (y2 - y1) * ratio_proc;
        int diff = (int)(desired_w - (x2 - x1));
        x1 -= floordiv2(diff);
        x2 += diff - floordiv2(diff);
        if (x2 >= img_w) x1 -= x2 - img_w, x2 = img_w;
        if (x1 < 0) x2 -= x1, x1 = 0;
        if (x2 >= img_w) x2 = img_w;
    }
    r[0] = x1, r[1] = y1, r[2] = x2, r[3] = y2;
}

/* Image.crop(box): pixels outside the image are zeros. */
static uint8_t *crop_image(const uint8_t *src, int w, int h, int c, const int box[4]) {
    const int cw = box[2] - box[0], ch = box[3] - box[1];
    uint8_t *out = calloc((size_t)cw * ch * c, 1);
    if (!out) return NULL;
    for (int y = 0; y < ch; y++)
        for (int x = 0; x < cw; x++) {
            int sx = x + box[0], sy = y + box[1];
            if (sx >= 0 && sy >= 0 && sx < w && sy < h)
                memcpy(out + ((size_t)y * cw + x) * c, src + ((size_t)sy * w + sx) * c, (size_t)c);
        }
    return out;
}

/* The mask blurred at its own size; *region = 1 and r = the "only masked" crop region when that applies
 * (A1111 falls back to plain img2img when the blurred mask is empty). */
static int blurred_mask(const kiln_gen_params *p, uint8_t **blurred, int *region, int r[4]) {
    const int iw = p->init_width, ih = p->init_height;
    *region = 0;
    *blurred = malloc((size_t)iw * ih);
    if (!*blurred) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = kiln_mask_blur(p->mask_l, iw, ih, p->mask_blur, p->mask_blur, NULL, *blurred);
    int bbox[4];
    if (rc == KILN_OK && p->inpaint_full_res && mask_bbox(*blurred, iw, ih, bbox)) {
        crop_region(bbox, p->inpaint_full_res_padding, p->width, p->height, iw, ih, r);
        *region = r[2] > r[0] && r[3] > r[1];
    }
    if (rc) free(*blurred), *blurred = NULL;
    return rc;
}

int kiln_img2img_output_size(const kiln_gen_params *p, int *w, int *h, int *only_masked) {
    *w = p->width;
    *h = p->height;
    if (only_masked) *only_masked = 0;
    if (!p->init_rgb || !p->mask_l || !p->inpaint_full_res) return KILN_OK;
    uint8_t *blurred = NULL;
    int region = 0, r[4];
    KILN_TRY(blurred_mask(p, &blurred, &region, r));
    free(blurred);
    if (region) *w = p->init_width, *h = p->init_height;
    if (only_masked) *only_masked = region;
    return KILN_OK;
}

int kiln_img2img_prepare(const kiln_gen_params *p, kiln_img2img_prep *pr) {
    const int iw = p->init_width, ih = p->init_height, W = p->width, H = p->height;
    const size_t npx = (size_t)W * H;
    memset(pr, 0, sizeof *pr);
    pr->out_w = W, pr->out_h = H;
    pr->img_w = W, pr->img_h = H;
    uint8_t *blurred = NULL, *tmp = NULL, *for_overlay = NULL;
    int region = 0, rc = KILN_OK;
    pr->image = malloc(npx * 3);
    if (!pr->image) return kiln_error(KILN_ENOMEM, "out of memory");
    if (p->mask_l) rc = blurred_mask(p, &blurred, &region, pr->crop);
    if (rc == KILN_OK && region) {
        /* only masked: the crop of mask and image, fitted into width x height (resize mode 2); the overlay
           is the whole init image under the blurred (not doubled) mask */
        const int cw = pr->crop[2] - pr->crop[0], ch = pr->crop[3] - pr->crop[1];
        pr->out_w = iw, pr->out_h = ih;
        pr->mask = malloc(npx);
        pr->overlay = malloc((size_t)iw * ih * 4);
        rc = pr->mask && pr->overlay ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
        if (rc == KILN_OK) rc = (tmp = crop_image(blurred, iw, ih, 1, pr->crop)) ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
        if (rc == KILN_OK) rc = kiln_resize_image(2, tmp, cw, ch, 1, W, H, pr->mask);
        free(tmp), tmp = NULL;
        if (rc == KILN_OK) kiln_overlay_rgba(p->init_rgb, blurred, iw, ih, pr->overlay);
        if (rc == KILN_OK) rc = (tmp = crop_image(p->init_rgb, iw, ih, 3, pr->crop)) ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
        if (rc == KILN_OK) rc = kiln_resize_image(2, tmp, cw, ch, 3, W, H, pr->image);
    } else if (rc == KILN_OK) {
        memset(pr->crop, 0, sizeof pr->crop);
        /* images.resize_image(resize_mode, init image, width, height); resize mode 3 encodes the image as it
           is and resizes the latent instead */
        if (p->resize_mode == 3) {
            free(pr->image);
            pr->image = malloc((size_t)iw * ih * 3);
            rc = pr->image ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
            if (rc == KILN_OK) memcpy(pr->image, p->init_rgb, (size_t)iw * ih * 3);
            pr->img_w = iw, pr->img_h = ih;
        } else {
            rc = kiln_resize_image(p->resize_mode, p->init_rgb, iw, ih, 3, W, H, pr->image);
        }
        if (rc == KILN_OK && blurred && !p->inpaint_full_res) {
            /* the blurred mask resized like the image; the overlay keeps where 2 * mask < 255 */
            pr->mask = malloc(npx);
            pr->overlay = malloc(npx * 4);
            for_overlay = malloc(npx);
            rc = pr->mask && pr->overlay && for_overlay ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
            if (rc == KILN_OK) rc = kiln_resize_image(p->resize_mode, blurred, iw, ih, 1, W, H, pr->mask);
            if (rc == KILN_OK) kiln_mask_for_overlay(pr->mask, npx, for_overlay);
            if (rc == KILN_OK) kiln_overlay_rgba(pr->image, for_overlay, W, H, pr->overlay);
        }
    }
    /* masked content other than "original": the image is filled (masking.fill) before it is encoded */
    if (rc == KILN_OK && pr->mask && p->inpainting_fill != 1)
        rc = kiln_masking_fill(pr->image, pr->mask, pr->img_w, pr->img_h, pr->image);
    free(blurred), free(tmp), free(for_overlay);
    if (rc) kiln_img2img_prep_free(pr);
    return rc;
}

int kiln_img2img_apply_overlay(const kiln_img2img_prep *pr, int W, int H, const uint8_t *rgb, uint8_t *out) {
    const size_t n = (size_t)pr->out_w * pr->out_h;
    if (!pr->overlay) {
        memcpy(out, rgb, n * 3);
        return KILN_OK;
    }
    if (!pr->crop[2]) {
        memcpy(out, rgb, n * 3);
        kiln_alpha_composite_rgb(out, pr->overlay, W, H);
        return KILN_OK;
    }
    const int cw = pr->crop[2] - pr->crop[0], ch = pr->crop[3] - pr->crop[1];
    uint8_t *fit = malloc((size_t)cw * ch * 3), *canvas = calloc(n * 4, 1);
    int rc = fit && canvas ? kiln_resize_image(1, rgb, W, H, 3, cw, ch, fit) : kiln_error(KILN_ENOMEM, "out of memory");
    for (int y = 0; rc == KILN_OK && y < ch; y++)
        for (int x = 0; x < cw; x++) {
            int dx = x + pr->crop[0], dy = y + pr->crop[1];
            if (dx < 0 || dy < 0 || dx >= pr->out_w || dy >= pr->out_h) continue;
            uint8_t *d = canvas + ((size_t)dy * pr->out_w + dx) * 4;
            memcpy(d, fit + ((size_t)y * cw + x) * 3, 3);
            d[3] = 255;
        }
    if (rc == KILN_OK) {
        kiln_alpha_composite_rgba(canvas, pr->overlay, pr->out_w, pr->out_h);
        for (size_t i = 0; i < n; i++) memcpy(out + i * 3, canvas + i * 4, 3);
    }
    free(fit), free(canvas);
    return rc;
}

int kiln_img2img_batch(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds, int batch,
                       int batch_index, kiln_progress_fn progress, void *user, const float *eps, uint8_t *rgb,
                       kiln_img2img_out *out, kiln_sample_trace *trace) {
    KILN_TRY(kiln_img2img_check(p));
    if (!p->init_rgb) return kiln_error(KILN_EINVAL, "init image: missing");
    const kiln_model_config *mc = &ctx->model->config;
    const int W = p->width, H = p->height, h = H / 8, w = W / 8, C = mc->unet.in_channels, Z = mc->vae.z_channels;
    if (C != Z)
        return kiln_error(KILN_EUNSUPPORTED, "img2img: a %d-channel U-Net (inpainting model) is not supported", C);
    const size_t per = (size_t)C * h * w, npx = (size_t)W * H;
    kiln_img2img_prep pr;
    KILN_TRY(kiln_img2img_prepare(p, &pr));
    const size_t nout = (size_t)pr.out_w * pr.out_h;
    uint8_t *decoded = malloc(npx * 3 * batch);
    /* what is encoded: width x height, or the init image itself with resize mode 3 */
    const int eh = pr.img_h / 8, ew = pr.img_w / 8;
    const size_t eper = (size_t)C * eh * ew;
    float *mean = malloc(sizeof(float) * eper), *logvar = malloc(sizeof(float) * eper),
          *init = malloc(sizeof(float) * per * batch), *e = malloc(sizeof(float) * eper),
          *enc = malloc(sizeof(float) * eper), *nmask = NULL, *latents = malloc(sizeof(float) * per * batch);
    int rc = decoded && mean && logvar && init && e && enc && latents ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    if (rc == KILN_OK && pr.mask) {
        nmask = malloc(sizeof(float) * per * batch);
        /* mask_round is on in A1111 by default */
        rc = nmask ? kiln_latent_mask(pr.mask, W, H, w, h, C, 1, NULL, nmask) : kiln_error(KILN_ENOMEM, "out of memory");
        for (int b = 1; rc == KILN_OK && b < batch; b++) memcpy(nmask + per * b, nmask, sizeof(float) * per);
    }
    /* one encode of the (same) init image; each image of the batch samples the posterior with its own eps */
    if (rc == KILN_OK) rc = kiln_vae_encode(ctx, pr.image, pr.img_w, pr.img_h, mean, logvar);
    for (int b = 0; rc == KILN_OK && b < batch; b++) {
        if (eps) memcpy(e, eps + eper * b, sizeof(float) * eper);
        else kiln_vae_posterior_noise(seeds[b], eper, e);
        kiln_vae_posterior_sample(mc->vae.scaling_factor, mean, logvar, e, eper, enc);
        /* resize mode 3: F.interpolate(init_latent, (height/8, width/8), "bilinear") */
        if (eper == per) memcpy(init + per * b, enc, sizeof(float) * per);
        else rc = kiln_latent_upscale("Latent", enc, C, eh, ew, h, w, init + per * b);
    }
    if (rc == KILN_OK && nmask && (p->inpainting_fill == 2 || p->inpainting_fill == 3)) {
        /* latent noise: create_random_tensors(shape, seeds) — a plain ImageRNG draw 0 with the batch's seeds;
           latent nothing: zeros */
        float *fill = calloc(per * batch, sizeof(float));
        kiln_image_rng *r = NULL;
        rc = fill ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
        if (rc == KILN_OK && p->inpainting_fill == 2) {
            kiln_rng_source src;
            kiln_rng_source_parse(p->rng ? p->rng : "GPU", &src);
            kiln_image_rng_opts ro = {.source = src, .batch = batch, .channels = C, .height = h, .width = w, .seeds = seeds};
            rc = kiln_image_rng_create(&ro, &r);
            if (rc == KILN_OK) kiln_image_rng_next(r, fill);
        }
        for (size_t i = 0; rc == KILN_OK && i < per * batch; i++)
            init[i] = init[i] * (1.0f - nmask[i]) + fill[i] * nmask[i];
        kiln_image_rng_free(r);
        free(fill);
    }
    kiln_sample_run run = {.init_latent = init, .nmask = nmask, .lat_h = h, .lat_w = w, .steps = p->steps,
                            .denoising_strength = p->denoising_strength,
                            .cond_steps = kiln_cond_total_steps(p, p->steps)};
    if (rc == KILN_OK)
        rc = kiln_sample_latents(ctx, p, &run, seeds, subseeds, batch, batch_index, progress, user, latents, trace);
    if (rc == KILN_OK) rc = kiln_decode_latents(ctx, latents, batch, h, w, NULL, decoded);
    if (rc == KILN_OK && out) {
        if (out->init_latent) memcpy(out->init_latent, init, sizeof(float) * per * batch);
        if (out->nmask && nmask) memcpy(out->nmask, nmask, sizeof(float) * per);
        if (out->samples) memcpy(out->samples, latents, sizeof(float) * per * batch);
        if (out->decoded) memcpy(out->decoded, decoded, npx * 3 * batch);
    }
    /* apply_overlay: the unmasked part of the init image goes back over the result */
    for (int b = 0; rc == KILN_OK && b < batch; b++) rc = kiln_img2img_apply_overlay(&pr, W, H, decoded + npx * 3 * b, rgb + nout * 3 * b);
    kiln_img2img_prep_free(&pr);
    free(decoded), free(mean), free(logvar), free(init), free(e), free(enc), free(nmask), free(latents);
    return rc;
}
