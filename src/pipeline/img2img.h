/* img2img.h — A1111's img2img and inpainting (StableDiffusionProcessingImg2Img, webui v1.9.4): the init
 * image resized (resize_image), encoded with the VAE and *sampled* from its posterior, the t_enc slice of
 * the sigma schedule, x = init + noise * sigma, the txt2img sampler and CFG denoiser, the inpainting blend
 * and overlay. The hires-fix second pass (hires.c) runs through kiln_img2img_sample too.
 *
 * The posterior noise: A1111 draws eps from torch's global CPU generator, which it never seeds from the
 * job, so its img2img is not reproducible from the settings. kiln draws eps for image b from
 * torch.Generator("cpu").manual_seed(seeds[b]) (its first randn([1, 4, h, w])) — deterministic, the same
 * stand-in the tiny-sd15 fixtures use. Callers may pass eps themselves instead. */
#ifndef KILN_PIPELINE_IMG2IMG_H
#define KILN_PIPELINE_IMG2IMG_H

#include "pipeline/txt2img.h"

/* Encodes one RGB8 image [height][width][3] (multiples of 8): u8/255*2-1 -> VAE encoder -> mean and
 * logvar [z, height/8, width/8], logvar clamped to [-30, 20] as LDM's DiagonalGaussianDistribution. */
int kiln_vae_encode(kiln_ctx *ctx, const uint8_t *rgb, int width, int height, float *mean, float *logvar);

/* get_first_stage_encoding(posterior.sample()): scale * (mean + exp(0.5 * logvar) * eps), float32. */
void kiln_vae_posterior_sample(double scale, const float *mean, const float *logvar, const float *eps, size_t n,
                               float *latent);

/* kiln's default posterior noise (see above): the first torch.randn(n) of a CPU generator seeded with seed. */
void kiln_vae_posterior_noise(int64_t seed, size_t n, float *eps);

/* A1111 setup_img2img_steps: the schedule's step count and t_enc (the sampler runs t_enc + 1 steps over
 * sigmas[schedule_steps - t_enc - 1:]). fixed: the fixed-steps branch (hires pass, img2img_fix_steps):
 * exactly `steps` steps of a longer schedule. */
void kiln_img2img_steps(int steps, double strength, int fixed, int *schedule_steps, int *t_enc);

/* One img2img sampling run over a batch of init latents. */
typedef struct kiln_img2img_run {
    const float *init_latent;  /* [batch, 4, lat_h, lat_w] */
    const float *nmask;        /* inpainting: [batch, 4, lat_h, lat_w], 1 = repaint; NULL = none */
    int lat_h, lat_w;
    int steps;                 /* requested steps (p->steps; hires: hr_steps or steps) */
    int fixed_steps;           /* 1 = A1111's fixed-steps branch (the hires pass) */
    double denoising_strength;
    int cond_steps;            /* prompt schedules: steps ... */
    int cond_hires_steps;      /*   ... and hires steps (0 = not a hires pass) */
} kiln_img2img_run;

/* Samples: a fresh ImageRNG at the run's latent shape gives the noise (draw 0) and the sampler's draws;
 * x = init + noise * sigmas[0] (DDIM & co.: init*sqrt(a) + noise*sqrt(1-a)); with a mask the denoised
 * latents are blended after CFG and the result after sampling. latents: [batch, 4, lat_h, lat_w]. */
int kiln_img2img_sample(kiln_ctx *ctx, const kiln_gen_params *p, const kiln_img2img_run *run, const int64_t *seeds,
                        const int64_t *subseeds, int batch, int batch_index, kiln_progress_fn progress, void *user,
                        float *latents, kiln_sample_trace *trace);

/* A1111 SamplerData.total_steps, the step count prompt schedules are made for: second-order samplers
 * count two model calls per step. */
int kiln_cond_total_steps(const kiln_gen_params *p, int steps);

/* Validates the img2img / inpainting fields of p (with a message naming the field). */
int kiln_img2img_check(const kiln_gen_params *p);

/* What one batch of img2img produced, for tests (every pointer optional, sized for the batch). */
typedef struct kiln_img2img_out {
    float *init_latent;        /* [batch, 4, h, w] */
    float *nmask;              /* [4, h, w] */
    float *samples;            /* [batch, 4, h, w] (after the inpainting blend) */
    uint8_t *decoded;          /* [batch, H, W, 3] before the overlay */
} kiln_img2img_out;

/* The whole of A1111 img2img / inpainting for one batch at p->width x p->height: rgb [batch][H][W][3].
 * eps (optional, [batch, 4, h, w]) replaces kiln's posterior noise. */
int kiln_img2img_batch(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds, int batch,
                       int batch_index, kiln_progress_fn progress, void *user, const float *eps, uint8_t *rgb,
                       kiln_img2img_out *out, kiln_sample_trace *trace);

#endif
