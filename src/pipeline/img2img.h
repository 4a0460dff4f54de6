/* img2img.h — A1111's img2img and inpainting (StableDiffusionProcessingImg2Img, webui v1.9.4): the init
 * image resized (resize_image), encoded with the VAE and *sampled* from its posterior, the t_enc slice of
 * the sigma schedule, x = init + noise * sigma, the txt2img sampler and CFG denoiser, the inpainting blend
 * and overlay. The sampling itself is sample_run.c's, shared with txt2img and the hires-fix second pass.
 *
 * The posterior noise: A1111 draws eps from torch's global CPU generator, which it never seeds from the
 * job, so its img2img is not reproducible from the settings. kiln draws eps for image b from
 * torch.Generator("cpu").manual_seed(seeds[b]) (its first randn([1, 4, h, w])) — deterministic, the same
 * stand-in the tiny-sd15 fixtures use. Callers may pass eps themselves instead. */
#ifndef KILN_PIPELINE_IMG2IMG_H
#define KILN_PIPELINE_IMG2IMG_H

#include "pipeline/sample_run.h"

/* Encodes one RGB8 image [height][width][3] (multiples of 8): u8/255*2-1 -> VAE encoder -> mean and
 * logvar [z, height/8, width/8], logvar clamped to [-30, 20] as LDM's DiagonalGaussianDistribution. */
int kiln_vae_encode(kiln_ctx *ctx, const uint8_t *rgb, int width, int height, float *mean, float *logvar);

/* get_first_stage_encoding(posterior.sample()): scale * (mean + exp(0.5 * logvar) * eps), float32. */
void kiln_vae_posterior_sample(double scale, const float *mean, const float *logvar, const float *eps, size_t n,
                               float *latent);

/* kiln's default posterior noise (see above): the first torch.randn(n) of a CPU generator seeded with seed. */
void kiln_vae_posterior_noise(int64_t seed, size_t n, float *eps);

/* Validates the img2img / inpainting fields of p (with a message naming the field). */
int kiln_img2img_check(const kiln_gen_params *p);

/* What one batch of img2img produced, for tests (every pointer optional, sized for the batch). */
typedef struct kiln_img2img_out {
    float *init_latent;        /* [batch, 4, h, w] */
    float *nmask;              /* [4, h, w] */
    float *samples;            /* [batch, 4, h, w] (after the inpainting blend) */
    uint8_t *decoded;          /* [batch, H, W, 3] before the overlay (at width x height) */
} kiln_img2img_out;

/* What StableDiffusionProcessingImg2Img.init makes of the init image and the mask. */
typedef struct kiln_img2img_prep {
    uint8_t *image;       /* img_w x img_h RGB: what is encoded */
    int img_w, img_h;     /* width x height, or the init image's size with resize mode 3 */
    uint8_t *mask;        /* width x height L: the latent mask's source (NULL = no mask) */
    uint8_t *overlay;     /* out_w x out_h RGBA pasted back over the result (NULL = none) */
    int out_w, out_h;     /* the output image (the init image's size for "only masked") */
    int crop[4];          /* "only masked": x1, y1, x2, y2 of the region sampled; crop[2] == 0 = none */
} kiln_img2img_prep;

/* The init image resized (resize_image), the mask blurred and resized, the overlay; for "only masked"
 * (inpaint_full_res) the crop region around the blurred mask (get_crop_region_v2 + padding,
 * expand_crop_region to the width:height ratio), mask and image cropped and fitted (resize mode 2).
 * A blank blurred mask with "only masked" falls back to plain img2img, as in A1111. */
int kiln_img2img_prepare(const kiln_gen_params *p, kiln_img2img_prep *pr);
void kiln_img2img_prep_free(kiln_img2img_prep *pr);
/* apply_overlay for one decoded image: rgb (width x height) becomes out (out_w x out_h). "Only masked"
 * uncrops first: the result fitted to the crop (resize mode 1) on a transparent canvas of the init
 * image's size, the overlay composited over it. */
int kiln_img2img_apply_overlay(const kiln_img2img_prep *pr, int W, int H, const uint8_t *rgb, uint8_t *out);

/* The size of img2img's output images: width x height, or the init image's size when inpainting "only
 * masked" (inpaint_full_res) applies (*only_masked = 1, optional). */
int kiln_img2img_output_size(const kiln_gen_params *p, int *w, int *h, int *only_masked);

/* The whole of A1111 img2img / inpainting for one batch, sampled at p->width x p->height: rgb
 * [batch][out_h][out_w][3] (kiln_img2img_output_size). eps (optional, [batch, 4, h, w]) replaces kiln's
 * posterior noise. */
int kiln_img2img_batch(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds, int batch,
                       int batch_index, kiln_progress_fn progress, void *user, const float *eps, uint8_t *rgb,
                       kiln_img2img_out *out, kiln_sample_trace *trace);

#endif
