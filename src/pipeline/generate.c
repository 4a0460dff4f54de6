/* generate.c — kiln_generate: batches of txt2img with A1111's seeds, RGB images and their infotext. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/sha256.h"
#include "io/image.h"
#include "io/infotext.h"
#include "pipeline/txt2img.h"
#include "sample/rng.h"
#include "sample/seeds.h"

void kiln_gen_images_free(kiln_gen_image *images, int n) {
    if (!images) return;
    for (int i = 0; i < n; i++) {
        free(images[i].rgb);
        free(images[i].infotext);
    }
    free(images);
}

/* A1111's "Model hash": first 10 hex digits of the checkpoint file's sha256 (a folder has none). */
static const char *model_hash(kiln_ctx *ctx) {
    if (!ctx->model_hash_done) {
        ctx->model_hash_done = 1;
        if (kiln_hash_autov2(ctx->model->path, ctx->model_hash) != KILN_OK) ctx->model_hash[0] = '\0';
    }
    return ctx->model_hash[0] ? ctx->model_hash : NULL;
}

static int make_infotext(kiln_ctx *ctx, const kiln_gen_params *p, const kiln_sample_trace *tr, int64_t seed,
                         int64_t subseed, char **out) {
    kiln_infotext_params ip;
    memset(&ip, 0, sizeof ip);
    ip.prompt = p->prompt;
    ip.negative_prompt = p->negative_prompt;
    ip.steps = p->steps;
    ip.sampler = tr->sampler->name;
    ip.schedule_type = tr->scheduler_label;
    ip.cfg_scale = p->cfg_scale;
    ip.seed = seed;
    ip.width = p->width;
    ip.height = p->height;
    ip.model_hash = model_hash(ctx);
    ip.model = ctx->model->name;
    if (p->subseed_strength > 0) {
        ip.variation_seed = subseed;
        ip.variation_seed_strength = p->subseed_strength;
    }
    ip.seed_resize_from_w = p->seed_resize_from_w;
    ip.seed_resize_from_h = p->seed_resize_from_h;
    ip.clip_skip = p->clip_skip;
    ip.ensd = tr->sampler->uses_ensd ? p->ensd : 0;
    kiln_rng_source src = KILN_RNG_GPU;
    kiln_rng_source_parse(p->rng ? p->rng : "GPU", &src);
    ip.rng = kiln_rng_source_name(src); /* "NV"/"CPU" as A1111 spells them; "GPU" is omitted */
    char smu[32];
    kiln_infotext_kv extra[2];
    if (p->s_min_uncond > 0) {
        extra[ip.n_extra++] = (kiln_infotext_kv){"NGMS", kiln_infotext_float(p->s_min_uncond, 0, smu)};
    }
    ip.version = "kiln 0.1.0";
    ip.extra = extra;
    return kiln_infotext_format(&ip, out);
}

int kiln_generate(kiln_ctx *ctx, const kiln_gen_params *p, kiln_progress_fn progress, void *user,
                  kiln_gen_image **images, int *n_images) {
    if (!ctx || !p || !images || !n_images) return kiln_error(KILN_EINVAL, "kiln_generate: missing argument");
    KILN_TRY(kiln_gen_params_check(ctx, p));
    const int total = p->batch_size * p->batch_count, B = p->batch_size;
    int64_t seed, subseed;
    KILN_TRY(kiln_seed_resolve(p->seed, &seed));
    KILN_TRY(kiln_seed_resolve(p->subseed, &subseed));
    int64_t *seeds = malloc(sizeof(int64_t) * (size_t)total), *subseeds = malloc(sizeof(int64_t) * (size_t)total);
    kiln_gen_image *out = calloc((size_t)total, sizeof *out);
    const int h = p->height / 8, w = p->width / 8, C = ctx->model->config.unet.in_channels;
    float *latents = malloc(sizeof(float) * (size_t)B * C * h * w);
    uint8_t *rgb = malloc((size_t)B * p->width * p->height * 3);
    int rc = seeds && subseeds && out && latents && rgb ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    if (rc == KILN_OK) kiln_seeds_expand(seed, subseed, p->subseed_strength, total, seeds, subseeds);
    for (int b = 0; rc == KILN_OK && b < p->batch_count; b++) {
        kiln_sample_trace tr = {0};
        rc = kiln_txt2img_sample(ctx, p, seeds + b * B, subseeds + b * B, B, b, progress, user, latents, &tr);
        if (rc == KILN_OK) rc = kiln_decode_latents(ctx, latents, B, h, w, NULL, rgb);
        for (int i = 0; rc == KILN_OK && i < B; i++) {
            kiln_gen_image *im = &out[b * B + i];
            im->width = p->width;
            im->height = p->height;
            im->seed = seeds[b * B + i];
            im->subseed = subseeds[b * B + i];
            size_t bytes = (size_t)p->width * p->height * 3;
            im->rgb = malloc(bytes);
            if (!im->rgb) {
                rc = kiln_error(KILN_ENOMEM, "out of memory");
                break;
            }
            memcpy(im->rgb, rgb + bytes * i, bytes);
            rc = make_infotext(ctx, p, &tr, im->seed, im->subseed, &im->infotext);
        }
        kiln_sample_trace_free(&tr);
    }
    free(seeds), free(subseeds), free(latents), free(rgb);
    if (rc) {
        kiln_gen_images_free(out, total);
        return rc;
    }
    *images = out;
    *n_images = total;
    return KILN_OK;
}

int kiln_gen_image_save(const kiln_gen_image *image, const char *path) {
    kiln_image img = {.width = image->width, .height = image->height, .channels = 3, .pixels = image->rgb};
    return kiln_image_save(path, &img, image->infotext, NULL);
}
