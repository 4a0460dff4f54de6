/* ctx.c — kiln_ctx: owns the backend and tokenizer, and caches compiled plans by network and shape so
 * that every sampling step replays a plan built once (the build-then-run idea at the request level). */
#include "pipeline/ctx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "model/embeddings.h"
#include "net/net.h"
#include "pipeline/txt2img.h"

int kiln_ctx_create(kiln_model *model, const kiln_ctx_options *opts, kiln_ctx **out) {
    if (!model || !out) return kiln_error(KILN_EINVAL, "kiln_ctx_create: model and out are required");
    kiln_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return kiln_error(KILN_ENOMEM, "out of memory");
    ctx->model = model;
    if (opts) ctx->log = (kiln_logger){opts->log, opts->log_user};
    const char *backend = opts && opts->backend ? opts->backend : "cpu";
    const char *precision = opts ? opts->precision : NULL;
    int rc;
    if (precision && strcmp(precision, "fp16") && strcmp(precision, "bf16"))
        rc = kiln_error(KILN_EINVAL, "unknown precision '%s' (expected fp16 or bf16)", precision);
    else if (precision && !strcmp(precision, "bf16") && strcmp(backend, "cuda"))
        rc = kiln_error(KILN_EINVAL, "precision bf16 applies to the cuda backend (backend '%s')", backend);
    else if (!strcmp(backend, "cpu"))
        rc = kiln_backend_cpu_create(opts ? opts->threads : 0, &ctx->backend);
    else if (!strcmp(backend, "cuda") && precision)
        rc = kiln_backend_cuda_create_ex(0, !strcmp(precision, "bf16"), &ctx->backend);
    else
        rc = kiln_backend_create(backend, &ctx->backend);
    if (rc == KILN_OK) {
        if (opts && opts->vocab_path)
            rc = kiln_tokenizer_load(opts->vocab_path, &ctx->tokenizer);
        else
            rc = kiln_model_tokenizer(model, &ctx->tokenizer);
    }
    if (rc == KILN_OK && opts && opts->embeddings_dir) {
        ctx->embeddings_dir = strdup(opts->embeddings_dir);
        rc = kiln_embeddings_load_dir(opts->embeddings_dir, kiln_embedding_width(&model->config), ctx->tokenizer,
                                      &ctx->embeddings);
        if (rc == KILN_OK && (ctx->embeddings->n_skipped_width || ctx->embeddings->n_failed))
            kiln_log(&ctx->log, KILN_LOG_WARN, "embeddings in %s skipped: %s", opts->embeddings_dir, ctx->embeddings->log);
        if (rc == KILN_OK)
            kiln_log(&ctx->log, KILN_LOG_INFO, "%d textual-inversion embeddings from %s", ctx->embeddings->n,
                     opts->embeddings_dir);
        if (rc == KILN_OK && ctx->embeddings->n > 0) {
            ctx->ti_refs = calloc((size_t)ctx->embeddings->n, sizeof *ctx->ti_refs);
            ctx->ti_vectors = calloc((size_t)ctx->embeddings->n, sizeof *ctx->ti_vectors);
            if (!ctx->ti_refs || !ctx->ti_vectors) rc = kiln_error(KILN_ENOMEM, "out of memory");
            else {
                kiln_embeddings_refs(ctx->embeddings, ctx->ti_refs);
                kiln_embeddings_vectors(ctx->embeddings, ctx->ti_vectors);
            }
        }
    }
    if (rc == KILN_OK && opts && opts->lora_dir) ctx->lora_dir = strdup(opts->lora_dir);
    if (rc) {
        kiln_ctx_free(ctx);
        return rc;
    }
    *out = ctx;
    return KILN_OK;
}

void kiln_ctx_free(kiln_ctx *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->n_plans; i++) {
        kiln_cached_plan *cp = &ctx->plans[i];
        if (cp->compiled) ctx->backend->ops->free_compiled(cp->compiled);
        kiln_plan_free(cp->plan);
        free(cp->in_slots);
        free(cp->out_slots);
    }
    free(ctx->plans);
    kiln_backend_destroy(ctx->backend);
    kiln_embeddings_free(ctx->embeddings);
    free(ctx->ti_refs);
    free(ctx->ti_vectors);
    kiln_tokenizer_free(ctx->tokenizer);
    free(ctx->embeddings_dir);
    free(ctx->lora_dir);
    free(ctx);
}

static int build(kiln_ctx *ctx, kiln_plan *p, kiln_net_kind kind, int batch, int h, int w, int extra) {
    const kiln_model_config *c = &ctx->model->config;
    switch (kind) {
    case KILN_NET_CLIP: return kiln_build_clip(p, &c->clip[0], batch, c->clip[0].max_positions, extra);
    case KILN_NET_UNET: return kiln_build_unet(p, &c->unet, batch, h, w, extra);
    case KILN_NET_VAE_DECODER: return kiln_build_vae_decoder(p, &c->vae, batch, h, w);
    case KILN_NET_VAE_ENCODER: return kiln_build_vae_encoder(p, &c->vae, batch, h, w);
    }
    return kiln_error(KILN_EINVAL, "unknown network kind %d", (int)kind);
}

uint64_t kiln_ctx_weights_stamp(const kiln_ctx *ctx) {
    uint64_t stamp = 0;
    const kiln_weights *w = ctx->model->weights;
    for (int i = 0; i < w->n; i++) stamp += w->items[i].version;
    return stamp;
}

int kiln_ctx_plan(kiln_ctx *ctx, kiln_net_kind kind, int batch, int h, int w, int extra, kiln_cached_plan **out) {
    for (int i = 0; i < ctx->n_plans; i++) {
        kiln_cached_plan *cp = &ctx->plans[i];
        if (cp->kind == kind && cp->batch == batch && cp->h == h && cp->w == w && cp->extra == extra) {
            *out = cp;
            return KILN_OK;
        }
    }
    if (ctx->n_plans == ctx->cap_plans) {
        int cap = ctx->cap_plans ? ctx->cap_plans * 2 : 8;
        kiln_cached_plan *plans = realloc(ctx->plans, sizeof *plans * (size_t)cap);
        if (!plans) return kiln_error(KILN_ENOMEM, "out of memory");
        ctx->plans = plans;
        ctx->cap_plans = cap;
    }
    kiln_cached_plan cp = {.kind = kind, .batch = batch, .h = h, .w = w, .extra = extra};
    cp.plan = kiln_plan_new(ctx->model->weights);
    if (!cp.plan) return kiln_error(KILN_ENOMEM, "out of memory");
    int rc = build(ctx, cp.plan, kind, batch, h, w, extra);
    if (rc == KILN_OK) {
        cp.in_slots = malloc(sizeof(int) * (size_t)cp.plan->n_slots);
        cp.out_slots = malloc(sizeof(int) * (size_t)cp.plan->n_slots);
        if (!cp.in_slots || !cp.out_slots) rc = kiln_error(KILN_ENOMEM, "out of memory");
    }
    if (rc == KILN_OK) {
        kiln_plan_io_order(cp.plan, cp.in_slots, &cp.n_in, cp.out_slots, &cp.n_out);
        cp.weights_stamp = kiln_ctx_weights_stamp(ctx);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rc = ctx->backend->ops->compile(ctx->backend, cp.plan, &cp.compiled);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        static const char *const kinds[] = {"text encoder", "U-Net", "VAE decoder", "VAE encoder"};
        char dims[32] = "";
        if (h > 0) snprintf(dims, sizeof dims, ", %dx%d latent", w, h);
        if (rc == KILN_OK)
            kiln_log(&ctx->log, KILN_LOG_INFO, "%s plan (batch %d%s) compiled on %s in %.0f ms: %d ops, %.1f MiB arena",
                     kinds[kind], batch, dims, ctx->backend->ops->name,
                     (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6, cp.plan->n_ops,
                     (double)cp.plan->arena_bytes / (1 << 20));
    }
    if (rc) {
        kiln_plan_free(cp.plan);
        free(cp.in_slots);
        free(cp.out_slots);
        return rc;
    }
    ctx->plans[ctx->n_plans] = cp;
    *out = &ctx->plans[ctx->n_plans++];
    return KILN_OK;
}

int kiln_ctx_run(kiln_ctx *ctx, kiln_cached_plan *cp, int n, const char *const *names, void *const *bufs) {
    uint64_t stamp = kiln_ctx_weights_stamp(ctx);
    /* weights changed since compile (LoRA): a backend that refits them itself keeps its tuned plan;
     * any other compiles again, so none runs with stale weights */
    if (stamp != cp->weights_stamp && !ctx->backend->ops->refits_weights) {
        kiln_log(&ctx->log, KILN_LOG_INFO, "weights changed (LoRA): compiling the plan again");
        if (cp->compiled) ctx->backend->ops->free_compiled(cp->compiled);
        cp->compiled = NULL;
        KILN_TRY(ctx->backend->ops->compile(ctx->backend, cp->plan, &cp->compiled));
        cp->weights_stamp = stamp;
    }
    const void *inputs[16];
    void *outputs[16];
    if (cp->n_in > 16 || cp->n_out > 16) return kiln_error(KILN_EINVAL, "plan has too many inputs/outputs");
    if (!cp->compiled) return kiln_error(KILN_EBACKEND, "plan could not be compiled");
    for (int i = 0; i < cp->n_in + cp->n_out; i++) {
        int slot = i < cp->n_in ? cp->in_slots[i] : cp->out_slots[i - cp->n_in];
        const char *name = cp->plan->slots[slot].name;
        int at = -1;
        for (int k = 0; k < n; k++)
            if (!strcmp(names[k], name)) at = k;
        if (at < 0) return kiln_error(KILN_EINVAL, "no buffer for plan slot '%s'", name);
        if (i < cp->n_in)
            inputs[i] = bufs[at];
        else
            outputs[i - cp->n_in] = bufs[at];
    }
    double t0 = kiln_now();
    int rc = ctx->backend->ops->run(cp->compiled, inputs, outputs);
    ctx->run_seconds += kiln_now() - t0;
    return rc;
}
