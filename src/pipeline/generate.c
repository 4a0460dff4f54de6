/* generate.c — kiln_generate: batches of txt2img with A1111's seeds, RGB images and their infotext. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/sha256.h"
#include "io/image.h"
#include "io/infotext.h"
#include "model/lora.h"
#include "pipeline/hires.h"
#include "text/extra_networks.h"
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

/* The LoRAs a request uses: <lora:NAME:TE:UNET> prompt tags (found in ctx->lora_dir) and p->loras files. */
typedef struct lora_set {
    int n;
    char names[16][128];
    char hashes[16][16];
} lora_set;

static int apply_lora_file(kiln_ctx *ctx, const char *path, const char *name, double te, double unet, lora_set *ls) {
    if (ls->n >= 16) return kiln_error(KILN_EINVAL, "more than 16 LoRAs in one request");
    kiln_lora *l = NULL;
    KILN_TRY(kiln_lora_load(path, &l));
    kiln_lora_apply_info info;
    int rc = kiln_lora_apply_ex(ctx->model, l, (float)te, (float)unet, &info);
    kiln_lora_free(l);
    if (rc < 0) return kiln_error_context(rc, "LoRA %s", path);
    kiln_log(&ctx->log, KILN_LOG_INFO, "LoRA %s (te %g, unet %g): %d modules merged", name, te, unet, info.n_applied);
    if (info.n_unmatched)
        kiln_log(&ctx->log, KILN_LOG_WARN, "LoRA %s: %d modules match no layer of this model and were skipped: %s", name,
                 info.n_unmatched, info.unmatched);
    snprintf(ls->names[ls->n], sizeof ls->names[0], "%s", name);
    char hex[65];
    ls->hashes[ls->n][0] = '\0';
    if (kiln_hash_addnet_safetensors(path, hex) == KILN_OK) snprintf(ls->hashes[ls->n], sizeof ls->hashes[0], "%.12s", hex);
    ls->n++;
    return KILN_OK;
}

/* Cuts the extra-network tags out of the prompt (*clean, malloc'ed) and merges every LoRA into the model. */
static int apply_loras(kiln_ctx *ctx, const kiln_gen_params *p, char **clean, lora_set *ls) {
    kiln_extra_networks en = {0};
    KILN_TRY(kiln_extra_networks_parse(p->prompt, clean, &en));
    int rc = KILN_OK;
    for (int i = 0; rc == KILN_OK && i < en.n; i++) {
        if (strcmp(en.items[i].type, "lora")) continue; /* A1111 ignores networks it does not know */
        kiln_lora_request req;
        rc = kiln_extra_network_lora(&en.items[i], &req);
        if (rc) break;
        if (!ctx->lora_dir) {
            rc = kiln_error(KILN_EINVAL, "prompt uses <lora:%s> but no LoRA directory was given (--lora-dir)", req.name);
            break;
        }
        char path[4096];
        rc = kiln_lora_find(ctx->lora_dir, req.name, path, sizeof path);
        if (rc) break;
        rc = apply_lora_file(ctx, path, req.name, req.te_multiplier, req.unet_multiplier, ls);
    }
    kiln_extra_networks_free(&en);
    for (int i = 0; rc == KILN_OK && i < p->n_loras; i++) {
        /* "FILE" or "FILE:WEIGHT" (the last ':' when what follows is a number) */
        char path[4096];
        snprintf(path, sizeof path, "%s", p->loras[i]);
        double w = 1.0;
        char *colon = strrchr(path, ':'), *end = NULL;
        if (colon) {
            double v = strtod(colon + 1, &end);
            if (end != colon + 1 && *end == '\0') {
                w = v;
                *colon = '\0';
            }
        }
        const char *base = strrchr(path, '/');
        char name[128];
        snprintf(name, sizeof name, "%s", base ? base + 1 : path);
        char *dot = strrchr(name, '.');
        if (dot) *dot = '\0';
        rc = apply_lora_file(ctx, path, name, w, w, ls);
    }
    return rc;
}

static int make_infotext(kiln_ctx *ctx, const kiln_gen_params *p, const kiln_sample_trace *tr, int64_t seed,
                         int64_t subseed, const lora_set *ls, char **out) {
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
    char smu[32], *lora_hashes = NULL;
    kiln_infotext_kv extra[8];
    /* A1111 order: NGMS is a fixed key; then extra_generation_params as inserted: the img2img / hires keys
       (set before sampling), then the Lora hashes (set when the networks are activated) */
    if (p->s_min_uncond > 0) {
        extra[ip.n_extra++] = (kiln_infotext_kv){"NGMS", kiln_infotext_float(p->s_min_uncond, 0, smu)};
    }
    char ext_bufs[4][32];
    kiln_generate_ext_infotext(p, &ip, extra, 7, ext_bufs); /* img2img / inpainting / hires fix keys */
    if (ls && ls->n) {
        const char *names[16], *hashes[16];
        for (int i = 0; i < ls->n; i++) names[i] = ls->names[i], hashes[i] = ls->hashes[i];
        KILN_TRY(kiln_infotext_hash_list(names, hashes, ls->n, &lora_hashes));
        if (lora_hashes) extra[ip.n_extra++] = (kiln_infotext_kv){"Lora hashes", lora_hashes};
    }
    ip.version = "kiln 0.1.0";
    ip.extra = extra;
    int rc = kiln_infotext_format(&ip, out);
    free(lora_hashes);
    return rc;
}

int kiln_generate(kiln_ctx *ctx, const kiln_gen_params *p, kiln_progress_fn progress, void *user,
                  kiln_gen_image **images, int *n_images) {
    if (!ctx || !p || !images || !n_images) return kiln_error(KILN_EINVAL, "kiln_generate: missing argument");
    KILN_TRY(kiln_gen_params_check(ctx, p));
    KILN_TRY(kiln_generate_ext_check(p));
    int out_w = p->width, out_h = p->height;
    const int ext = kiln_generate_ext_size(p, &out_w, &out_h); /* img2img, inpainting or hires fix */
    const int total = p->batch_size * p->batch_count, B = p->batch_size;
    int64_t seed, subseed;
    KILN_TRY(kiln_seed_resolve(p->seed, &seed));
    KILN_TRY(kiln_seed_resolve(p->subseed, &subseed));
    int64_t *seeds = malloc(sizeof(int64_t) * (size_t)total), *subseeds = malloc(sizeof(int64_t) * (size_t)total);
    kiln_gen_image *out = calloc((size_t)total, sizeof *out);
    const int h = p->height / 8, w = p->width / 8, C = ctx->model->config.unet.in_channels;
    float *latents = malloc(sizeof(float) * (size_t)B * C * h * w);
    uint8_t *rgb = malloc((size_t)B * out_w * out_h * 3);
    int rc = seeds && subseeds && out && latents && rgb ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    if (rc == KILN_OK) kiln_seeds_expand(seed, subseed, p->subseed_strength, total, seeds, subseeds);
    /* LoRAs are merged for this request and taken out again at the end, as A1111 does */
    char *clean_prompt = NULL;
    lora_set loras = {0};
    if (rc == KILN_OK) rc = apply_loras(ctx, p, &clean_prompt, &loras);
    kiln_gen_params sp = *p;
    if (clean_prompt) sp.prompt = clean_prompt;
    for (int b = 0; rc == KILN_OK && b < p->batch_count; b++) {
        kiln_sample_trace tr = {0};
        if (ext) {
            rc = kiln_generate_ext_batch(ctx, &sp, seeds + b * B, subseeds + b * B, B, b, progress, user, rgb, &tr);
        } else {
            rc = kiln_txt2img_sample(ctx, &sp, seeds + b * B, subseeds + b * B, B, b, progress, user, latents, &tr);
            if (rc == KILN_OK) rc = kiln_decode_latents(ctx, latents, B, h, w, NULL, rgb);
        }
        for (int i = 0; rc == KILN_OK && i < B; i++) {
            kiln_gen_image *im = &out[b * B + i];
            im->width = out_w;
            im->height = out_h;
            im->seed = seeds[b * B + i];
            im->subseed = subseeds[b * B + i];
            size_t bytes = (size_t)out_w * out_h * 3;
            im->rgb = malloc(bytes);
            if (!im->rgb) {
                rc = kiln_error(KILN_ENOMEM, "out of memory");
                break;
            }
            memcpy(im->rgb, rgb + bytes * i, bytes);
            rc = make_infotext(ctx, p, &tr, im->seed, im->subseed, &loras, &im->infotext);
        }
        kiln_sample_trace_free(&tr);
    }
    kiln_model_restore_weights(ctx->model);
    free(clean_prompt);
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
