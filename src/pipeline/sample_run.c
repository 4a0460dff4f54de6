/* sample_run.c — one sampling run (see sample_run.h): A1111's processing + sampler glue for txt2img, img2img,
 * inpainting and the hires pass (webui v1.9.4 processing.py, sd_samplers_kdiffusion.py, sd_samplers_timesteps.py). */
#include "pipeline/sample_run.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/embeddings.h"
#include "pipeline/denoiser.h"
#include "sample/brownian.h"
#include "sample/rng.h"
#include "sample/schedulers.h"
#include "sample/seeds.h"

void kiln_img2img_steps(int steps, double strength, int fixed, int *schedule_steps, int *t_enc) {
    double s = strength < 0.999 ? strength : 0.999;
    if (fixed) {
        *schedule_steps = strength > 0 ? (int)(steps / s) : 0;
        *t_enc = steps - 1;
    } else {
        *schedule_steps = steps;
        *t_enc = (int)(s * steps);
    }
}


/* The sampler and scheduler as A1111 resolves them: an explicit scheduler wins over a combined name's suffix,
 * "Automatic" becomes the sampler's default. */
static int resolve(const kiln_gen_params *p, const kiln_sampler_info **s, kiln_scheduler *sched, int *automatic) {
    char from_name[32];
    KILN_TRY(kiln_sampler_lookup(p->sampler ? p->sampler : "DPM++ 2M", s, from_name, sizeof from_name));
    const char *want = p->scheduler && *p->scheduler ? p->scheduler : "Automatic";
    KILN_TRY(kiln_scheduler_find(want, sched));
    if (*sched == KILN_SCHED_AUTOMATIC && from_name[0]) KILN_TRY(kiln_scheduler_find(from_name, sched));
    *automatic = *sched == KILN_SCHED_AUTOMATIC;
    if (*automatic && (*s)->default_scheduler) KILN_TRY(kiln_scheduler_find((*s)->default_scheduler, sched));
    return KILN_OK;
}

typedef struct run_state {
    kiln_cfg_denoiser *denoiser;
    kiln_image_rng *rng;
    kiln_brownian *brownian;
    kiln_progress_fn progress;
    void *progress_user;
    int batch_index;
} run_state;

static int cb_denoise(void *u, const float *x, double s, float *d) { return kiln_cfg_denoise(((run_state *)u)->denoiser, x, s, d); }
static int cb_eps(void *u, const float *x, double t, float *e) { return kiln_cfg_eps(((run_state *)u)->denoiser, x, t, e); }
static int cb_randn(void *u, float *out) {
    kiln_image_rng_next(((run_state *)u)->rng, out);
    return KILN_OK;
}
static int cb_brownian(void *u, double s, double sn, float *out) {
    return kiln_brownian_noise(((run_state *)u)->brownian, (float)s, (float)sn, out);
}
static int cb_step(void *u, int step, int total, const float *x, const float *den) {
    (void)x, (void)den;
    run_state *r = u;
    return r->progress ? r->progress(r->progress_user, r->batch_index, step + 1, total) : 0;
}

/* k-diffusion samplers: sigmas(schedule_steps)[schedule_steps - t_enc - 1:], x = init + noise * sigmas[0]. */
static int sample_kdiffusion(const kiln_sampler_info *s, kiln_scheduler sched_id,
                             const kiln_schedule *schedule, kiln_rng_source src, const int64_t *seeds, int batch,
                             int schedule_steps, int t_enc, const float *init, const float *noise, kiln_sampler_io *io,
                             run_state *st, float *x, double **sigmas_out, int *n_out) {
    kiln_sigma_opts so = {.discard_penultimate = s->discard_penultimate_sigma != 0};
    float *full = NULL;
    int n_full = 0;
    KILN_TRY(kiln_scheduler_sigmas(sched_id, schedule, schedule_steps, &so, &full, &n_full));
    /* with a discarded penultimate sigma the list has schedule_steps + 1 entries all the same */
    int start = schedule_steps - t_enc - 1;
    if (start < 0) start = 0;
    if (start > n_full - 2) start = n_full - 2;
    const int n = n_full - start;
    double *sigmas = malloc(sizeof(double) * (size_t)n);
    int rc = sigmas ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    for (int i = 0; rc == KILN_OK && i < n; i++) sigmas[i] = full[start + i];
    if (rc == KILN_OK && s->brownian_noise) {
        /* create_noise_sampler spans the whole schedule's nonzero sigmas, not the slice */
        float smin = full[0], smax = full[0];
        for (int i = 0; i < n_full; i++) {
            if (full[i] > 0 && full[i] < smin) smin = full[i];
            if (full[i] > smax) smax = full[i];
        }
        rc = kiln_brownian_create(src, seeds, batch, io->n / (size_t)batch, smin, smax, &st->brownian);
    }
    if (rc == KILN_OK) {
        const float s0 = full[start];
        if (init) {
            /* DPM fast / adaptive, img2img: sigma_min = sigma_sched[-2], sigma_max = sigma_sched[0] */
            io->dpm_sigma_min = n >= 2 ? sigmas[n - 2] : 0;
            io->dpm_sigma_max = sigmas[0];
            for (size_t i = 0; i < io->n; i++) x[i] = init[i] + noise[i] * s0;
        } else {
            /* txt2img: the model's whole sigma range, x = noise * sigmas[0] */
            io->dpm_sigma_min = schedule->sigma_min;
            io->dpm_sigma_max = schedule->sigma_max;
            for (size_t i = 0; i < io->n; i++) x[i] = noise[i] * s0;
        }
        rc = kiln_sample(s, io, sigmas, n, x);
    }
    free(full);
    if (rc == KILN_OK) {
        *sigmas_out = sigmas;
        *n_out = n;
    } else {
        free(sigmas);
    }
    return rc;
}

/* DDIM / PLMS / UniPC: timesteps[:t_enc], x = init * sqrt(a) + noise * sqrt(1 - a) at timesteps[t_enc]. */
static int sample_timesteps(const kiln_sampler_info *s, const kiln_schedule *schedule, int schedule_steps, int t_enc,
                            const float *init, const float *noise, kiln_sampler_io *io, float *x) {
    int *ts = malloc(sizeof(int) * (size_t)(schedule_steps + 2));
    if (!ts) return kiln_error(KILN_ENOMEM, "out of memory");
    int nt = kiln_sampler_timesteps(schedule_steps, s->discard_penultimate_sigma, ts, schedule_steps + 2);
    int rc = nt < 0 ? nt : KILN_OK;
    if (rc == KILN_OK && !init) { /* txt2img: the unscaled noise through every timestep */
        memcpy(x, noise, sizeof(float) * io->n);
        rc = kiln_sample_timesteps(s, io, ts, nt, x);
        free(ts);
        return rc;
    }
    if (rc == KILN_OK && t_enc >= nt) t_enc = nt - 1;
    if (rc == KILN_OK) {
        const float a = schedule->alphas_cumprod[ts[t_enc]];
        const float sa = sqrtf(a), s1a = sqrtf(1.0f - a);
        for (size_t i = 0; i < io->n; i++) x[i] = init[i] * sa + noise[i] * s1a;
        io->is_img2img = 1;
        if (t_enc >= 1) rc = kiln_sample_timesteps(s, io, ts, t_enc, x);
    }
    free(ts);
    return rc;
}

int kiln_sample_latents(kiln_ctx *ctx, const kiln_gen_params *p, const kiln_sample_run *run, const int64_t *seeds,
                        const int64_t *subseeds, int batch, int batch_index, kiln_progress_fn progress, void *user,
                        float *latents, kiln_sample_trace *trace) {
    const kiln_model_config *mc = &ctx->model->config;
    const kiln_sampler_info *s;
    kiln_scheduler sched_id;
    int automatic;
    KILN_TRY(resolve(p, &s, &sched_id, &automatic));
    if (run->nmask && s->timestep_sampler)
        return kiln_error(KILN_EUNSUPPORTED, "sampler: inpainting with %s is not supported (use a k-diffusion sampler)",
                          s->name);
    kiln_rng_source src;
    KILN_TRY(kiln_rng_source_parse(p->rng ? p->rng : "GPU", &src));
    kiln_schedule schedule;
    kiln_schedule_init_sd(&schedule, mc->prediction);
    int schedule_steps = run->steps, t_enc = run->steps - 1; /* txt2img: the whole schedule */
    if (run->init_latent)
        kiln_img2img_steps(run->steps, run->denoising_strength, run->fixed_steps, &schedule_steps, &t_enc);
    if (schedule_steps < 1)
        return kiln_error(KILN_EINVAL, "denoising_strength: 0 leaves the hires pass no steps (A1111 fails there too)");

    const int C = mc->unet.in_channels, h = run->lat_h, w = run->lat_w;
    const size_t n = (size_t)batch * C * h * w;
    kiln_image_rng_opts ro = {.source = src, .batch = batch, .channels = C, .height = h, .width = w, .seeds = seeds,
                              .subseeds = subseeds, .n_subseeds = batch, .subseed_strength = p->subseed_strength,
                              .seed_resize_from_w = p->seed_resize_from_w, .seed_resize_from_h = p->seed_resize_from_h,
                              .eta_noise_seed_delta = p->ensd};
    kiln_cfg_denoiser den = {0};
    run_state st = {.denoiser = &den, .progress = progress, .progress_user = user, .batch_index = batch_index};
    double *sigmas = NULL;
    int n_sigmas = 0;
    float *noise = malloc(sizeof(float) * n);
    int rc = noise ? kiln_image_rng_create(&ro, &st.rng) : kiln_error(KILN_ENOMEM, "out of memory");
    if (rc == KILN_OK) kiln_image_rng_next(st.rng, noise); /* draw 0 */
    double t0 = kiln_now(), t1 = t0;
    if (rc == KILN_OK) {
        kiln_ti_set ti = {ctx->embeddings ? ctx->embeddings->n : 0, ctx->ti_refs, ctx->ti_vectors};
        rc = kiln_cfg_denoiser_init(&den, ctx, &schedule, p->prompt, p->negative_prompt, run->cond_steps,
                                    run->cond_hires_steps, p->clip_skip, ti.n ? &ti : NULL);
        t1 = kiln_now();
        den.batch = batch;
        den.channels = C;
        den.lat_h = h;
        den.lat_w = w;
        den.cfg_scale = p->cfg_scale;
        den.s_min_uncond = p->s_min_uncond;
        den.init_latent = run->nmask ? run->init_latent : NULL;
        den.nmask = run->nmask;
    }
    kiln_sampler_io io;
    kiln_sampler_io_defaults(s, &io);
    io.n = n;
    io.denoise = cb_denoise;
    io.eps_at = cb_eps;
    io.randn = cb_randn;
    io.brownian = cb_brownian;
    io.on_step = cb_step;
    io.user = &st;
    io.alphas_cumprod = schedule.alphas_cumprod;
    if (p->eta >= 0) io.eta = p->eta;
    if (rc == KILN_OK && s->timestep_sampler)
        rc = sample_timesteps(s, &schedule, schedule_steps, t_enc, run->init_latent, noise, &io, latents);
    else if (rc == KILN_OK)
        rc = sample_kdiffusion(s, sched_id, &schedule, src, seeds, batch, schedule_steps, t_enc, run->init_latent,
                               noise, &io, &st, latents, &sigmas, &n_sigmas);
    if (rc == KILN_OK && run->nmask) /* StableDiffusionProcessingImg2Img.sample: samples*nmask + init*mask */
        for (size_t i = 0; i < n; i++)
            latents[i] = latents[i] * run->nmask[i] + run->init_latent[i] * (1.0f - run->nmask[i]);
    if (trace) {
        trace->encode_s = t1 - t0;
        trace->sample_s = kiln_now() - t1;
        trace->sampler = s;
        trace->scheduler_label = kiln_scheduler_get(automatic ? KILN_SCHED_AUTOMATIC : sched_id)->label;
        trace->noise = noise;
        noise = NULL;
        trace->sigmas = sigmas;
        trace->n_sigmas = n_sigmas;
        trace->n_calls = io.n_calls;
        sigmas = NULL;
    }
    free(noise);
    free(sigmas);
    kiln_cfg_denoiser_free(&den);
    kiln_image_rng_free(st.rng);
    kiln_brownian_free(st.brownian);
    return rc;
}

