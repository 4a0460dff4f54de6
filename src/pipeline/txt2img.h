/* txt2img.h — the txt2img pipeline's internal steps, exposed so tests can compare each with the fixtures. */
#ifndef KILN_PIPELINE_TXT2IMG_H
#define KILN_PIPELINE_TXT2IMG_H

#include "pipeline/ctx.h"
#include "sample/sampler.h"
#include "sample/schedule.h"

/* What a sampling run resolved and used, for tests and infotext. */
typedef struct kiln_sample_trace {
    const kiln_sampler_info *sampler;
    const char *scheduler_label;   /* "Automatic", "Karras", ... as A1111 shows it */
    float *noise;                  /* the initial noise [batch, 4, h, w] (malloc'ed, may be NULL) */
    double *sigmas;                /* k-diffusion samplers: the sigma list (malloc'ed) */
    int n_sigmas;
    int n_calls;                   /* denoiser calls */
    double encode_s, sample_s;     /* wall-clock seconds: prompt encoding, sampling */
} kiln_sample_trace;
void kiln_sample_trace_free(kiln_sample_trace *t);

/* Monotonic wall-clock seconds. */
double kiln_now(void);

/* The step count A1111 builds prompt schedules for (processing.setup_conds): steps x 2 for second-order samplers
 * (Heun, DPM2, ...), whose denoiser makes two calls per step, since schedules are looked up by call count. */
int kiln_cond_total_steps(const kiln_gen_params *p, int steps);

/* Validates p (every field, with a message naming it). */
int kiln_gen_params_check(const kiln_ctx *ctx, const kiln_gen_params *p);

/* Samples one batch: seeds/subseeds [batch] (resolved); writes the final latents [batch, 4, H/8, W/8]. */
int kiln_txt2img_sample(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds,
                        int batch, int batch_index, kiln_progress_fn progress, void *user, float *latents,
                        kiln_sample_trace *trace);

/* Decodes latents [batch, 4, h, w] with the VAE: image (optional) [batch, 3, 8h, 8w] float, rgb (optional)
 * [batch, 8h, 8w, 3] as A1111 makes it: uint8(trunc(255 * clamp((x + 1) / 2, 0, 1))) in float32. */
int kiln_decode_latents(kiln_ctx *ctx, const float *latents, int batch, int h, int w, float *image, uint8_t *rgb);

#endif
