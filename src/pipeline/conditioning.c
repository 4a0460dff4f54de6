/* conditioning.c — prompt text to U-Net context (see conditioning.h). */
#include "pipeline/conditioning.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "net/net.h"

void kiln_cond_free(kiln_cond *c) {
    if (!c) return;
    free(c->data);
    c->data = NULL;
}

/* Mean of n floats as torch's float32 mean reports it (accumulated in double, rounded once). */
static float mean_f32(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    return (float)(s / (double)n);
}

int kiln_encode_chunks(kiln_ctx *ctx, const kiln_prompt_chunks *ch, int clip_skip, const kiln_ti_set *ti,
                       kiln_cond *out) {
    const kiln_clip_config *cc = &ctx->model->config.clip[0];
    const int L = cc->max_positions, H = cc->hidden, n = ch->n_chunks;
    if (L != KILN_CHUNK_LEN)
        return kiln_error(KILN_EUNSUPPORTED, "text encoder has %d positions; A1111 chunking needs %d", L, KILN_CHUNK_LEN);
    const size_t chunk_floats = (size_t)L * H;
    float *embeds = malloc(sizeof(float) * chunk_floats * n), *z = malloc(sizeof(float) * chunk_floats * n);
    if (!embeds || !z) {
        free(embeds), free(z);
        return kiln_error(KILN_ENOMEM, "out of memory encoding %d prompt chunks", n);
    }
    int rc = kiln_clip_embed_tokens(ctx->model->weights, cc, ch->tokens, n * L, embeds);
    /* textual inversion: the vectors replace the token embeddings after BOS + offset */
    for (int f = 0; rc == KILN_OK && f < ch->n_fixes; f++) {
        const kiln_chunk_fix *fx = &ch->fixes[f];
        if (!ti || fx->embedding < 0 || fx->embedding >= ti->n) {
            rc = kiln_error(KILN_EINVAL, "prompt uses embedding #%d that was not provided", fx->embedding);
            break;
        }
        float *dst = embeds + (size_t)fx->chunk * chunk_floats + (size_t)(fx->offset + 1) * H;
        memcpy(dst, ti->vectors[fx->embedding], sizeof(float) * (size_t)fx->n_vectors * H);
    }
    kiln_cached_plan *cp = NULL;
    if (rc == KILN_OK) rc = kiln_ctx_plan(ctx, KILN_NET_CLIP, n, 0, 0, clip_skip < 1 ? 1 : clip_skip, &cp);
    if (rc == KILN_OK) {
        const char *names[2] = {"embeds", "hidden"};
        void *bufs[2] = {embeds, z};
        rc = kiln_ctx_run(ctx, cp, 2, names, bufs);
    }
    /* emphasis "Original": z *= multipliers, then restore the chunk's mean */
    for (int c = 0; rc == KILN_OK && c < n; c++) {
        float *zc = z + (size_t)c * chunk_floats;
        float original_mean = mean_f32(zc, chunk_floats);
        for (int t = 0; t < L; t++) {
            float m = ch->multipliers[c * L + t];
            for (int k = 0; k < H; k++) zc[t * H + k] *= m;
        }
        float new_mean = mean_f32(zc, chunk_floats);
        float ratio = original_mean / new_mean;
        for (size_t i = 0; i < chunk_floats; i++) zc[i] *= ratio;
    }
    free(embeds);
    if (rc) {
        free(z);
        return rc;
    }
    out->n_tokens = n * L;
    out->hidden = H;
    out->data = z;
    return KILN_OK;
}

int kiln_encode_prompt(kiln_ctx *ctx, const char *prompt, int clip_skip, const kiln_ti_set *ti, kiln_cond *out) {
    kiln_chunker_options opts;
    kiln_chunker_options_init(&opts);
    if (ti) {
        opts.embeddings = ti->refs;
        opts.n_embeddings = ti->n;
    }
    kiln_prompt_chunks ch;
    memset(&ch, 0, sizeof ch);
    KILN_TRY(kiln_prompt_chunk(ctx->tokenizer, prompt, &opts, &ch));
    int rc = kiln_encode_chunks(ctx, &ch, clip_skip, ti, out);
    kiln_prompt_chunks_free(&ch);
    return rc;
}
