/* sample_run.h — one sampling run of the pipeline: from noise (txt2img) or from init latents (img2img, inpainting,
 * the hires-fix second pass). Resolves the sampler and scheduler as A1111 does, makes the ImageRNG noise and the
 * Brownian tree, slices the schedule, and drives the sampler over the CFG denoiser. */
#ifndef KILN_PIPELINE_SAMPLE_RUN_H
#define KILN_PIPELINE_SAMPLE_RUN_H

#include "pipeline/txt2img.h"

/* One sampling run over a batch. */
typedef struct kiln_sample_run {
    const float *init_latent;  /* [batch, 4, lat_h, lat_w]; NULL = txt2img (start from noise, the whole schedule) */
    const float *nmask;        /* inpainting: [batch, 4, lat_h, lat_w], 1 = repaint; NULL = none */
    int lat_h, lat_w;
    int steps;                 /* requested steps (p->steps; hires: hr_steps or steps) */
    int fixed_steps;           /* 1 = A1111's fixed-steps branch (the hires pass) */
    double denoising_strength; /* img2img only */
    int cond_steps;            /* prompt schedules: steps ... */
    int cond_hires_steps;      /*   ... and hires steps (0 = not a hires pass) */
} kiln_sample_run;

/* A1111 setup_img2img_steps: the schedule's step count and t_enc (the sampler runs t_enc + 1 steps over
 * sigmas[schedule_steps - t_enc - 1:]). fixed: the fixed-steps branch (hires pass, img2img_fix_steps):
 * exactly `steps` steps of a longer schedule. */
void kiln_img2img_steps(int steps, double strength, int fixed, int *schedule_steps, int *t_enc);

/* Samples: a fresh ImageRNG at the run's latent shape gives the noise (draw 0) and the sampler's draws. txt2img:
 * x = noise * sigmas[0] (DDIM & co.: the noise itself). img2img: x = init + noise * sigmas[slice start] (DDIM & co.:
 * init*sqrt(a) + noise*sqrt(1-a)); with a mask the denoised latents are blended after CFG and the result after
 * sampling. latents: [batch, 4, lat_h, lat_w]. */
int kiln_sample_latents(kiln_ctx *ctx, const kiln_gen_params *p, const kiln_sample_run *run, const int64_t *seeds,
                        const int64_t *subseeds, int batch, int batch_index, kiln_progress_fn progress, void *user,
                        float *latents, kiln_sample_trace *trace);

#endif
