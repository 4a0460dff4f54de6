/* random_checkpoint.c — `kiln mkrandom`: a checkpoint of a real architecture with random weights.
 *
 * No weights can be downloaded where kiln is benchmarked, and speed does not depend on the values, so the
 * benchmark model is made here. The names and shapes come from the network builders themselves (a plan in
 * collect mode records every weight it asks for), so the file is exactly what the loader expects of an
 * A1111 single-file checkpoint. Values are scaled like a trained network's so activations stay finite in fp16:
 * weights N(0,1)/sqrt(fan_in), biases 0.02 N(0,1), norm gains 1 + 0.1 N(0,1), embeddings 0.3 N(0,1). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/model_config.h"
#include "net/net.h"

/* The architectures kiln can make. */
static int arch_config(const char *arch, kiln_model_config *c) {
    memset(c, 0, sizeof *c);
    int tiny;
    if (!strcmp(arch, "sd15")) tiny = 0;
    else if (!strcmp(arch, "tiny-sd15")) tiny = 1;
    else return kiln_error(KILN_EINVAL, "unknown architecture '%s' (known: sd15, tiny-sd15)", arch);
    c->family = KILN_FAMILY_SD1;
    kiln_unet_config *u = &c->unet;
    u->in_channels = u->out_channels = 4;
    u->model_channels = tiny ? 32 : 320;
    u->n_levels = 4;
    const int um[4] = {1, 2, 4, 4}, tm[4] = {1, 2, 4, 4};
    memcpy(u->channel_mult, tiny ? tm : um, sizeof um);
    u->num_res_blocks = 2;
    u->transformer_depth[0] = u->transformer_depth[1] = u->transformer_depth[2] = 1;
    u->mid_transformer_depth = 1;
    u->context_dim = tiny ? 128 : 768;
    u->num_heads = 8;
    u->time_embed_dim = u->model_channels * 4;
    u->groups = 32;
    kiln_vae_config *v = &c->vae;
    v->in_channels = 3;
    v->z_channels = 4;
    v->base_channels = tiny ? 32 : 128;
    v->n_levels = 4;
    const int vm[4] = {1, 2, 4, 4}, tvm[4] = {1, 1, 2, 2};
    memcpy(v->channel_mult, tiny ? tvm : vm, sizeof vm);
    v->num_res_blocks = 2;
    v->groups = 32;
    v->scaling_factor = 0.18215;
    c->n_text_encoders = 1;
    kiln_clip_config *t = &c->clip[0];
    t->prefix = "cond_stage_model.transformer.text_model.";
    t->vocab_size = 49408;
    t->max_positions = 77;
    t->hidden = tiny ? 128 : 768;
    t->mlp = tiny ? 256 : 3072;
    t->layers = tiny ? 3 : 12;
    t->heads = t->hidden / 64;
    t->act = KILN_CLIP_QUICK_GELU;
    t->eps = 1e-5f;
    return KILN_OK;
}

/* splitmix64: a small, well-mixed generator; Box-Muller for normals. */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float next_normal(uint64_t *s) {
    double u = ((next_u64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double v = (next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Fills one tensor (fp16) with values of the right scale for its role. */
static void fill(const kiln_weight *t, uint16_t *dst, uint64_t *rng) {
    int64_t n = kiln_weight_numel(t);
    int is_norm = t->ndim == 1 && (strstr(t->name, "norm") || strstr(t->name, "in_layers.0") ||
                                   strstr(t->name, "out_layers.0") || strstr(t->name, "out.0") ||
                                   strstr(t->name, "layer_norm"));
    double scale, offset = 0;
    if (strstr(t->name, "embedding")) {
        scale = 0.3;
    } else if (t->ndim >= 2) {
        int64_t fan_in = 1;
        for (int i = 1; i < t->ndim; i++) fan_in *= t->shape[i];
        scale = 1.0 / sqrt((double)fan_in);
    } else if (is_norm && ends_with(t->name, ".weight")) {
        scale = 0.1;
        offset = 1.0;
    } else {
        scale = 0.02;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = kiln_f32_to_f16((float)(offset + scale * next_normal(rng)));
}

int kiln_write_random_checkpoint(const char *arch, const char *path, uint64_t seed) {
    kiln_model_config c;
    KILN_TRY(arch_config(arch, &c));
    kiln_weights *store = kiln_weights_new();
    if (!store) return kiln_error(KILN_ENOMEM, "out of memory");
    /* Every builder in collect mode: the union of their weights is the checkpoint. */
    int rc = KILN_OK;
    for (int which = 0; which < 4 && rc == KILN_OK; which++) {
        kiln_plan *p = kiln_plan_new(store);
        p->collect = store;
        switch (which) {
        case 0: rc = kiln_build_clip(p, &c.clip[0], 1, 77, 1); break;
        case 1: rc = kiln_build_unet(p, &c.unet, 1, 8, 8, 77); break;
        case 2: rc = kiln_build_vae_decoder(p, &c.vae, 1, 8, 8); break;
        default: rc = kiln_build_vae_encoder(p, &c.vae, 1, 64, 64); break;
        }
        kiln_plan_free(p);
    }
    /* The CLIP token table is looked up on the host, not through a plan. */
    char tok[256];
    snprintf(tok, sizeof tok, "%sembeddings.token_embedding.weight", c.clip[0].prefix);
    const int64_t tok_shape[2] = {c.clip[0].vocab_size, c.clip[0].hidden};
    if (rc == KILN_OK) rc = kiln_weights_add_view(store, tok, KILN_F16, 2, tok_shape, NULL, "(collected)");

    size_t total = 0;
    for (int i = 0; i < store->n; i++) total += (size_t)kiln_weight_numel(&store->items[i]);
    uint16_t *data = rc == KILN_OK ? malloc(total * sizeof(uint16_t)) : NULL;
    kiln_st_write_tensor *ts = calloc((size_t)store->n + 1, sizeof *ts);
    if (rc == KILN_OK && (!data || !ts)) rc = kiln_error(KILN_ENOMEM, "out of memory for %zu parameters", total);
    if (rc == KILN_OK) {
        uint64_t rng = seed * 0x2545f4914f6cdd1dull + 1;
        size_t off = 0;
        for (int i = 0; i < store->n; i++) {
            const kiln_weight *t = &store->items[i];
            fill(t, data + off, &rng);
            ts[i] = (kiln_st_write_tensor){t->name, KILN_F16, t->ndim, t->shape, data + off};
            off += (size_t)kiln_weight_numel(t);
        }
        /* Real SD1 files carry CLIP's int64 position ids; so does this one. */
        static int64_t position_ids[77];
        for (int i = 0; i < 77; i++) position_ids[i] = i;
        static const int64_t pos_shape[2] = {1, 77};
        ts[store->n] = (kiln_st_write_tensor){"cond_stage_model.transformer.text_model.embeddings.position_ids",
                                              KILN_I64, 2, pos_shape, position_ids};
        const char *keys[2] = {"kiln_mkrandom_arch", "kiln_mkrandom_seed"};
        char seed_str[32];
        snprintf(seed_str, sizeof seed_str, "%llu", (unsigned long long)seed);
        const char *vals[2] = {arch, seed_str};
        rc = kiln_st_write(path, ts, store->n + 1, keys, vals, 2);
    }
    free(ts);
    free(data);
    kiln_weights_free(store);
    return rc;
}
