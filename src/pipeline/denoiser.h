/* denoiser.h — A1111's CFG denoiser around the U-Net plan: prompt schedules and AND-parts, one U-Net batch
 * [cond parts..., uncond] when their token lengths match, "negative guidance minimum sigma", CFG on the
 * denoised latents (k-diffusion samplers) or on eps (timestep samplers), optional inpainting blend. */
#ifndef KILN_PIPELINE_DENOISER_H
#define KILN_PIPELINE_DENOISER_H

#include "pipeline/conditioning.h"
#include "sample/schedule.h"
#include "text/prompt_parser.h"

/* A prompt whose text changes over the steps: one encoded cond per schedule entry. */
typedef struct kiln_sched_cond {
    int n;
    int *end_at_step;   /* [n] (A1111 ScheduledPromptConditioning.end_at_step) */
    kiln_cond *conds;   /* [n] */
    float weight;       /* AND weight (1 for the negative prompt) */
} kiln_sched_cond;

typedef struct kiln_cfg_denoiser {
    kiln_ctx *ctx;
    const kiln_schedule *schedule;
    int batch, channels, lat_h, lat_w;  /* latent shape: images x 4 x h x w */
    int n_parts;
    kiln_sched_cond *parts;             /* the positive prompt's AND-parts */
    kiln_sched_cond uncond;             /* the negative prompt */
    double cfg_scale;
    double s_min_uncond;                /* skip the uncond pass on odd calls below this sigma (0 = off) */
    int step;                           /* denoiser calls so far (A1111 CFGDenoiser.step) */
    /* inpainting: after CFG, denoised = denoised * nmask + init_latent * (1 - nmask); NULL = off */
    const float *init_latent, *nmask;
    /* Buffers reused from call to call (grown as needed, freed with the denoiser): a fresh large
     * allocation every step would be fresh pages, and page faults, every step. */
    float *buf[5];
    size_t buf_n[5];
} kiln_cfg_denoiser;

/* Encodes the prompts (schedules for `steps` sampler steps, AND-parts) into d. */
int kiln_cfg_denoiser_init(kiln_cfg_denoiser *d, kiln_ctx *ctx, const kiln_schedule *schedule, const char *prompt,
                           const char *negative, int steps, int hires_steps, int clip_skip, const kiln_ti_set *ti);
void kiln_cfg_denoiser_free(kiln_cfg_denoiser *d);

/* k-diffusion denoiser callback: user = kiln_cfg_denoiser. */
int kiln_cfg_denoise(void *user, const float *x, double sigma, float *denoised);
/* timestep-sampler callback (DDIM, PLMS, UniPC): eps with CFG at timestep t. */
int kiln_cfg_eps(void *user, const float *x, double t, float *eps);

#endif
