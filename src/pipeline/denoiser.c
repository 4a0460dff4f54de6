/* denoiser.c — the CFG denoiser (see denoiser.h); follows A1111 v1.9.4 sd_samplers_cfg_denoiser.py. */
#include "pipeline/denoiser.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static void sched_cond_free(kiln_sched_cond *s) {
    for (int i = 0; i < s->n; i++) kiln_cond_free(&s->conds[i]);
    free(s->conds);
    free(s->end_at_step);
    memset(s, 0, sizeof *s);
}

static int encode_schedule(kiln_ctx *ctx, const char *prompt, float weight, int steps, int hires_steps, int clip_skip,
                           const kiln_ti_set *ti, kiln_sched_cond *out) {
    kiln_prompt_schedule_options so = {.steps = steps, .hires_steps = hires_steps};
    kiln_prompt_schedule sched = {0};
    KILN_TRY(kiln_prompt_get_schedule(prompt, &so, &sched));
    out->n = sched.n;
    out->weight = weight;
    out->end_at_step = calloc((size_t)sched.n, sizeof(int));
    out->conds = calloc((size_t)sched.n, sizeof(kiln_cond));
    int rc = out->end_at_step && out->conds ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    for (int i = 0; rc == KILN_OK && i < sched.n; i++) {
        out->end_at_step[i] = sched.items[i].end_at_step;
        rc = kiln_encode_prompt(ctx, sched.items[i].text, clip_skip, ti, &out->conds[i]);
    }
    kiln_prompt_schedule_free(&sched);
    return rc;
}

int kiln_cfg_denoiser_init(kiln_cfg_denoiser *d, kiln_ctx *ctx, const kiln_schedule *schedule, const char *prompt,
                           const char *negative, int steps, int hires_steps, int clip_skip, const kiln_ti_set *ti) {
    d->ctx = ctx;
    d->schedule = schedule;
    kiln_prompt_parts parts = {0};
    KILN_TRY(kiln_prompt_split_and(prompt, &parts));
    d->n_parts = parts.n;
    d->parts = calloc((size_t)parts.n, sizeof *d->parts);
    int rc = d->parts ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    for (int i = 0; rc == KILN_OK && i < parts.n; i++)
        rc = encode_schedule(ctx, parts.items[i].text, (float)parts.items[i].weight, steps, hires_steps, clip_skip, ti,
                             &d->parts[i]);
    kiln_prompt_parts_free(&parts);
    if (rc == KILN_OK) rc = encode_schedule(ctx, negative ? negative : "", 1.0f, steps, hires_steps, clip_skip, ti, &d->uncond);
    return rc;
}

void kiln_cfg_denoiser_free(kiln_cfg_denoiser *d) {
    for (int i = 0; i < 5; i++) {
        free(d->buf[i]);
        d->buf[i] = NULL;
        d->buf_n[i] = 0;
    }
    for (int i = 0; i < d->n_parts; i++) sched_cond_free(&d->parts[i]);
    free(d->parts);
    sched_cond_free(&d->uncond);
    d->parts = NULL;
    d->n_parts = 0;
}

/* The denoiser's reusable buffers (see kiln_cfg_denoiser.buf), one per use that lives at the same time. */
enum { BUF_SCALED_X, BUF_ROWS_OUT, BUF_GROUP_OUT, BUF_UNET_X, BUF_UNET_CONTEXT };

static float *buffer(kiln_cfg_denoiser *d, int which, size_t n) {
    if (d->buf_n[which] < n) {
        float *grown = realloc(d->buf[which], sizeof(float) * (n ? n : 1));
        if (!grown) return NULL;
        d->buf[which] = grown;
        d->buf_n[which] = n;
    }
    return d->buf[which];
}

/* A1111 reconstruct_cond_batch: the first entry with step <= end_at_step, else entry 0. */
static const kiln_cond *cond_at(const kiln_sched_cond *s, int step) {
    for (int i = 0; i < s->n; i++)
        if (step <= s->end_at_step[i]) return &s->conds[i];
    return &s->conds[0];
}

/* Runs the U-Net on `rows` (conds) x batch images sharing one token length, each row's images reading
 * x_scaled; writes model outputs for row r, image b at out + (r*batch + b)*latent_n. */
static int unet_rows(kiln_cfg_denoiser *d, const kiln_cond *const *rows, int n_rows, const float *x_scaled, float t,
                     float *out) {
    const int B = d->batch, N = n_rows * B, L = rows[0]->n_tokens, H = rows[0]->hidden;
    const size_t lat = (size_t)d->channels * d->lat_h * d->lat_w;
    kiln_cached_plan *cp = NULL;
    KILN_TRY(kiln_ctx_plan(d->ctx, KILN_NET_UNET, N, d->lat_h, d->lat_w, L, &cp));
    float *x_in = buffer(d, BUF_UNET_X, lat * N), *t_in = malloc(sizeof(float) * N),
          *c_in = buffer(d, BUF_UNET_CONTEXT, (size_t)L * H * N);
    int rc = x_in && t_in && c_in ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    for (int r = 0; rc == KILN_OK && r < n_rows; r++)
        for (int b = 0; b < B; b++) {
            int i = r * B + b;
            memcpy(x_in + lat * i, x_scaled + lat * b, sizeof(float) * lat);
            t_in[i] = t;
            memcpy(c_in + (size_t)L * H * i, rows[r]->data, sizeof(float) * (size_t)L * H);
        }
    if (rc == KILN_OK) {
        const char *names[4] = {"x", "t", "context", "out"};
        void *bufs[4] = {x_in, t_in, c_in, out};
        rc = kiln_ctx_run(d->ctx, cp, 4, names, bufs);
    }
    free(t_in);
    return rc;
}

/* Model outputs for every row (parts..., then uncond unless skipped), grouping rows of equal token length
 * into one U-Net batch as A1111 does when cond and uncond lengths match. out: [n_rows][batch][latent]. */
static int run_rows(kiln_cfg_denoiser *d, const kiln_cond *const *rows, int n_rows, const float *x_scaled, float t,
                    float *out) {
    const size_t per_row = (size_t)d->batch * d->channels * d->lat_h * d->lat_w;
    int done[64] = {0};
    if (n_rows > 64) return kiln_error(KILN_EINVAL, "too many AND-parts (%d)", n_rows - 1);
    for (int r = 0; r < n_rows; r++) {
        if (done[r]) continue;
        const kiln_cond *group[64];
        int idx[64], n = 0;
        for (int k = r; k < n_rows; k++)
            if (!done[k] && rows[k]->n_tokens == rows[r]->n_tokens) {
                group[n] = rows[k];
                idx[n++] = k;
                done[k] = 1;
            }
        float *tmp = buffer(d, BUF_GROUP_OUT, per_row * n);
        if (!tmp) return kiln_error(KILN_ENOMEM, "out of memory");
        KILN_TRY(unet_rows(d, group, n, x_scaled, t, tmp));
        for (int k = 0; k < n; k++) memcpy(out + per_row * idx[k], tmp + per_row * k, sizeof(float) * per_row);
    }
    return KILN_OK;
}

/* denoised (or eps) = uncond + sum_i (cond_i - uncond) * (w_i * scale), in float32 like torch. */
static void combine(const kiln_cfg_denoiser *d, const float *rows, const float *uncond, double scale, size_t n,
                    float *result) {
    memcpy(result, uncond, sizeof(float) * n);
    for (int p = 0; p < d->n_parts; p++) {
        const float *c = rows + n * p;
        float w = (float)(d->parts[p].weight * scale);
        for (size_t i = 0; i < n; i++) result[i] += (c[i] - uncond[i]) * w;
    }
}

/* Shared by both callbacks: model outputs for all rows at (x_model, t), CFG-combined into result.
 * to_denoised(row output) is applied per row before combining (k-diffusion) or not (eps). */
static int cfg_step(kiln_cfg_denoiser *d, const float *x_model, float t, double sigma, const float *x, int eps_mode,
                    float *result) {
    const size_t n = (size_t)d->batch * d->channels * d->lat_h * d->lat_w;
    /* A1111: on odd calls below s_min_uncond the uncond pass is skipped and the cond stands in for it */
    int skip_uncond = (d->step % 2) && d->s_min_uncond > 0 && sigma < d->s_min_uncond;
    int n_rows = d->n_parts + (skip_uncond ? 0 : 1);
    const kiln_cond *rows[65];
    for (int p = 0; p < d->n_parts; p++) rows[p] = cond_at(&d->parts[p], d->step);
    if (!skip_uncond) rows[d->n_parts] = cond_at(&d->uncond, d->step);
    float *out = buffer(d, BUF_ROWS_OUT, n * (size_t)n_rows);
    if (!out) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = run_rows(d, rows, n_rows, x_model, t, out);
    if (rc == KILN_OK && !eps_mode) {
        /* CompVis denoiser: denoised = x * c_skip + out * c_out (eps: c_skip 1, c_out -sigma) */
        float c_skip, c_out, c_in;
        kiln_schedule_scalings(d->schedule, (float)sigma, &c_skip, &c_out, &c_in);
        for (int r = 0; r < n_rows; r++) {
            float *o = out + n * r;
            if (c_skip == 1.0f)
                for (size_t i = 0; i < n; i++) o[i] = x[i] + o[i] * c_out;
            else
                for (size_t i = 0; i < n; i++) o[i] = x[i] * c_skip + o[i] * c_out;
        }
    }
    if (rc == KILN_OK) {
        const float *uncond = skip_uncond ? out : out + n * d->n_parts;
        combine(d, out, uncond, skip_uncond ? 1.0 : d->cfg_scale, n, result);
        if (d->nmask && !eps_mode)
            for (size_t i = 0; i < n; i++) result[i] = d->init_latent[i] * (1.0f - d->nmask[i]) + d->nmask[i] * result[i];
    }
    d->step++;
    return rc;
}

int kiln_cfg_denoise(void *user, const float *x, double sigma, float *denoised) {
    kiln_cfg_denoiser *d = user;
    const size_t n = (size_t)d->batch * d->channels * d->lat_h * d->lat_w;
    float c_skip, c_out, c_in;
    kiln_schedule_scalings(d->schedule, (float)sigma, &c_skip, &c_out, &c_in);
    float *xs = buffer(d, BUF_SCALED_X, n);
    if (!xs) return kiln_error(KILN_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) xs[i] = x[i] * c_in;
    float t = kiln_sigma_to_t(d->schedule, (float)sigma);
    return cfg_step(d, xs, t, sigma, x, 0, denoised);
}

int kiln_cfg_eps(void *user, const float *x, double t, float *eps) {
    kiln_cfg_denoiser *d = user;
    /* sigma of this timestep, for s_min_uncond */
    float sigma = kiln_t_to_sigma(d->schedule, (float)t);
    return cfg_step(d, x, (float)t, sigma, x, 1, eps);
}
