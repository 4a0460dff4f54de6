/* txt2img.c — A1111's txt2img: seeds, initial noise, sigmas, the sampler over the CFG denoiser, VAE decode,
 * infotext. Follows webui v1.9.4 processing.py / sd_samplers_kdiffusion.py / sd_samplers_timesteps.py. */
#include "pipeline/txt2img.h"

#include "pipeline/sample_run.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/sha256.h"
#include "io/image.h"
#include "io/infotext.h"
#include "pipeline/sample_run.h"
#include "sample/rng.h"
#include "sample/schedulers.h"

void kiln_gen_params_init(kiln_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->negative_prompt = "";
    p->seed = -1;
    p->subseed = -1;
    p->sampler = "DPM++ 2M";
    p->scheduler = "Automatic";
    p->steps = 20;
    p->cfg_scale = 7.0;
    p->width = p->height = 512;
    p->batch_size = p->batch_count = 1;
    p->clip_skip = 1;
    p->rng = "GPU";
    p->eta = -1;
    p->denoising_strength = 0.75; /* img2img / inpainting / hires fix (img2img.c, hires.c) */
    p->mask_blur = 4;
    p->inpainting_fill = 1;
    p->hr_upscaler = "Latent";
    p->inpaint_full_res_padding = 32;
}

double kiln_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void kiln_sample_trace_free(kiln_sample_trace *t) {
    if (!t) return;
    free(t->noise);
    free(t->sigmas);
    t->noise = NULL;
    t->sigmas = NULL;
}

int kiln_cond_total_steps(const kiln_gen_params *p, int steps) {
    const kiln_sampler_info *s;
    char sched[32];
    if (kiln_sampler_lookup(p->sampler ? p->sampler : "DPM++ 2M", &s, sched, sizeof sched)) return steps;
    return s->second_order ? 2 * steps : steps;
}

int kiln_gen_params_check(const kiln_ctx *ctx, const kiln_gen_params *p) {
    if (!p->prompt) return kiln_error(KILN_EINVAL, "prompt: missing");
    if (p->width < 8 || p->width > 16384 || p->width % 8)
        return kiln_error(KILN_EINVAL, "width: %d is not a multiple of 8 between 8 and 16384", p->width);
    if (p->height < 8 || p->height > 16384 || p->height % 8)
        return kiln_error(KILN_EINVAL, "height: %d is not a multiple of 8 between 8 and 16384", p->height);
    if (p->steps < 1 || p->steps > 10000) return kiln_error(KILN_EINVAL, "steps: %d is not between 1 and 10000", p->steps);
    if (!isfinite(p->cfg_scale)) return kiln_error(KILN_EINVAL, "cfg_scale: not a finite number");
    if (p->batch_size < 1 || p->batch_size > 64)
        return kiln_error(KILN_EINVAL, "batch_size: %d is not between 1 and 64", p->batch_size);
    if (p->batch_count < 1 || p->batch_count > 100000)
        return kiln_error(KILN_EINVAL, "batch_count: %d is not between 1 and 100000", p->batch_count);
    int layers = ctx->model->config.clip[0].layers;
    if (p->clip_skip < 1 || p->clip_skip > layers)
        return kiln_error(KILN_EINVAL, "clip_skip: %d is not between 1 and %d (the text encoder's layers)", p->clip_skip,
                          layers);
    if (p->seed < -1) return kiln_error(KILN_EINVAL, "seed: %lld (use -1 for a random seed)", (long long)p->seed);
    if (!(p->subseed_strength >= 0 && p->subseed_strength <= 1))
        return kiln_error(KILN_EINVAL, "subseed_strength: %g is not between 0 and 1", p->subseed_strength);
    if (p->ensd < 0) return kiln_error(KILN_EINVAL, "ensd: %lld is negative", (long long)p->ensd);
    const kiln_sampler_info *s;
    char sched[32];
    KILN_TRY(kiln_sampler_lookup(p->sampler ? p->sampler : "DPM++ 2M", &s, sched, sizeof sched));
    kiln_scheduler id;
    if (p->scheduler && *p->scheduler && kiln_scheduler_find(p->scheduler, &id)) {
        int n = 0;
        const kiln_scheduler_info *list = kiln_scheduler_list(&n);
        char names[512] = "";
        for (int i = 0; i < n; i++) {
            strncat(names, list[i].label, sizeof names - strlen(names) - 1);
            if (i + 1 < n) strncat(names, ", ", sizeof names - strlen(names) - 1);
        }
        return kiln_error(KILN_EINVAL, "scheduler: unknown '%s' (valid: %s)", p->scheduler, names);
    }
    kiln_rng_source src;
    if (kiln_rng_source_parse(p->rng ? p->rng : "GPU", &src))
        return kiln_error(KILN_EINVAL, "rng: unknown '%s' (valid: GPU, NV, CPU)", p->rng);
    return KILN_OK;
}

int kiln_txt2img_sample(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds,
                        int batch, int batch_index, kiln_progress_fn progress, void *user, float *latents,
                        kiln_sample_trace *trace) {
    kiln_sample_run run = {.lat_h = p->height / 8, .lat_w = p->width / 8, .steps = p->steps,
                           .cond_steps = kiln_cond_total_steps(p, p->steps)};
    return kiln_sample_latents(ctx, p, &run, seeds, subseeds, batch, batch_index, progress, user, latents, trace);
}

/* Latents above this many positions (1024x1024 pixels) are decoded in overlapping tiles, so a 2048x2048 or larger
 * image needs no more memory than a 768x768 one. Below it the decode is whole, exactly as A1111's. */
#define KILN_VAE_TILE_THRESHOLD (128 * 128)
#define KILN_VAE_TILE 96    /* latent positions per tile side (768 px) */
#define KILN_VAE_OVERLAP 16 /* latent positions two neighbouring tiles share, cross-faded */

/* Tile starts along an axis of n positions: every KILN_VAE_TILE - KILN_VAE_OVERLAP, the last flush with the end. */
static int tile_starts(int n, int *starts) {
    int t = n < KILN_VAE_TILE ? n : KILN_VAE_TILE, k = 0;
    for (int s = 0;; s += KILN_VAE_TILE - KILN_VAE_OVERLAP) {
        if (s + t >= n) {
            starts[k++] = n - t;
            return k;
        }
        starts[k++] = s;
    }
}

/* Cross-fade weight of pixel i (of n) in a tile: ramps up over the overlap at sides that have a neighbour. */
static float ramp(int i, int n, int has_before, int has_after) {
    const int o = KILN_VAE_OVERLAP * 8;
    float w = 1.0f;
    if (has_before && i < o) w = (float)(i + 1) / (float)(o + 1);
    if (has_after && n - 1 - i < o) {
        float v = (float)(n - i) / (float)(o + 1);
        if (v < w) w = v;
    }
    return w;
}

/* Decodes one image's latent [C, h, w] into img [3, 8h, 8w], in tiles. */
static int decode_tiled(kiln_ctx *ctx, const float *lat, int C, int h, int w, float *img) {
    int ys[512], xs[512];
    int ny = tile_starts(h, ys), nx = tile_starts(w, xs);
    const int th = h < KILN_VAE_TILE ? h : KILN_VAE_TILE, tw = w < KILN_VAE_TILE ? w : KILN_VAE_TILE;
    const int H = 8 * h, W = 8 * w, TH = 8 * th, TW = 8 * tw;
    kiln_cached_plan *cp = NULL;
    KILN_TRY(kiln_ctx_plan(ctx, KILN_NET_VAE_DECODER, 1, th, tw, 0, &cp));
    float *tl = malloc(sizeof(float) * (size_t)C * th * tw), *ti = malloc(sizeof(float) * 3 * (size_t)TH * TW),
          *wsum = calloc((size_t)H * W, sizeof(float));
    int rc = tl && ti && wsum ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory decoding a %dx%d image", W, H);
    if (rc == KILN_OK) memset(img, 0, sizeof(float) * 3 * (size_t)H * W);
    for (int a = 0; rc == KILN_OK && a < ny; a++)
        for (int b = 0; rc == KILN_OK && b < nx; b++) {
            for (int c = 0; c < C; c++)
                for (int y = 0; y < th; y++)
                    memcpy(tl + ((size_t)c * th + y) * tw, lat + ((size_t)c * h + ys[a] + y) * w + xs[b], sizeof(float) * tw);
            const char *names[2] = {"latent", "image"};
            void *bufs[2] = {tl, ti};
            rc = kiln_ctx_run(ctx, cp, 2, names, bufs);
            for (int y = 0; rc == KILN_OK && y < TH; y++) {
                float wy = ramp(y, TH, a > 0, a < ny - 1);
                for (int x = 0; x < TW; x++) {
                    float wt = wy * ramp(x, TW, b > 0, b < nx - 1);
                    size_t o = (size_t)(8 * ys[a] + y) * W + 8 * xs[b] + x;
                    wsum[o] += wt;
                    for (int c = 0; c < 3; c++) img[(size_t)c * H * W + o] += wt * ti[((size_t)c * TH + y) * TW + x];
                }
            }
        }
    for (size_t i = 0; rc == KILN_OK && i < (size_t)H * W; i++)
        for (int c = 0; c < 3; c++) img[(size_t)c * H * W + i] /= wsum[i];
    free(tl), free(ti), free(wsum);
    return rc;
}

int kiln_decode_latents(kiln_ctx *ctx, const float *latents, int batch, int h, int w, float *image, uint8_t *rgb) {
    const int C = ctx->model->config.vae.z_channels, H = h * 8, W = w * 8;
    const int tiled = h * w > KILN_VAE_TILE_THRESHOLD;
    kiln_cached_plan *cp = NULL;
    if (!tiled) KILN_TRY(kiln_ctx_plan(ctx, KILN_NET_VAE_DECODER, 1, h, w, 0, &cp));
    float *img = malloc(sizeof(float) * 3 * H * W);
    if (!img) return kiln_error(KILN_ENOMEM, "out of memory decoding a %dx%d image", W, H);
    int rc = KILN_OK;
    for (int b = 0; rc == KILN_OK && b < batch; b++) {
        const float *lat = latents + (size_t)b * C * h * w;
        if (tiled) {
            rc = decode_tiled(ctx, lat, C, h, w, img);
        } else {
            const char *names[2] = {"latent", "image"};
            void *bufs[2] = {(void *)lat, img};
            rc = kiln_ctx_run(ctx, cp, 2, names, bufs);
        }
        if (rc) break;
        if (image) memcpy(image + (size_t)b * 3 * H * W, img, sizeof(float) * 3 * H * W);
        if (rgb) {
            uint8_t *dst = rgb + (size_t)b * H * W * 3;
            for (int c = 0; c < 3; c++)
                for (int i = 0; i < H * W; i++) {
                    float v = (img[(size_t)c * H * W + i] + 1.0f) / 2.0f;
                    v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                    dst[(size_t)i * 3 + c] = (uint8_t)(255.0f * v);
                }
        }
    }
    free(img);
    return rc;
}
