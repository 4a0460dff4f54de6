/* infer_config.c — the model config from tensor names and shapes, the one place that knows families.
 *
 * Widths come from shapes, never from a fixed SD1.5 table, so narrow test models and real
 * checkpoints take the same path. Head conventions follow the families: SD1 has 8 heads,
 * SD2 and SDXL have 64-wide heads; CLIP heads are 64 wide. */
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "model/model.h"

#define UNET "model.diffusion_model."
#define VAE "first_stage_model."

/* Shape of a named tensor, or NULL. */
static const kiln_weight *get(const struct kiln_model *m, const char *fmt, ...) KILN_PRINTF(2, 3);
#include <stdarg.h>
static const kiln_weight *get(const struct kiln_model *m, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return kiln_weights_find(m->weights, name);
}

static int missing(const struct kiln_model *m, const char *what) {
    return kiln_error(KILN_EFORMAT, "%s: tensor %s not found; is this a Stable Diffusion checkpoint?", m->path, what);
}

/* Counts consecutive indices N for which fmt(N) names an existing tensor. */
static int count_indexed(const struct kiln_model *m, const char *fmt_prefix, const char *suffix) {
    int n = 0;
    for (;; n++) {
        char name[512];
        snprintf(name, sizeof name, "%s%d%s", fmt_prefix, n, suffix);
        if (!kiln_weights_find(m->weights, name)) return n;
    }
}

static int infer_unet(struct kiln_model *m, kiln_unet_config *u) {
    const kiln_weight *w = get(m, UNET "input_blocks.0.0.weight");
    if (!w || w->ndim != 4) return missing(m, UNET "input_blocks.0.0.weight");
    u->model_channels = (int)w->shape[0];
    u->in_channels = (int)w->shape[1];
    if (!(w = get(m, UNET "out.2.weight"))) return missing(m, UNET "out.2.weight");
    u->out_channels = (int)w->shape[0];
    if (!(w = get(m, UNET "time_embed.0.weight"))) return missing(m, UNET "time_embed.0.weight");
    u->time_embed_dim = (int)w->shape[0];
    u->groups = 32;

    /* input_blocks: conv_in, then per level num_res_blocks resnets and (but the last) a downsampler */
    int first_down = -1, n_input = 0;
    for (int i = 1; i < 64; i++) {
        if (get(m, UNET "input_blocks.%d.0.op.weight", i) && first_down < 0) first_down = i;
        if (get(m, UNET "input_blocks.%d.0.in_layers.0.weight", i) || get(m, UNET "input_blocks.%d.0.op.weight", i))
            n_input = i + 1;
    }
    if (first_down < 2) return kiln_error(KILN_EFORMAT, "%s: cannot find the UNet's first downsampler (input_blocks.N.0.op)", m->path);
    u->num_res_blocks = first_down - 1;
    if (u->num_res_blocks > 8)
        return kiln_error(KILN_EUNSUPPORTED, "%s: %d resnets per U-Net level (input_blocks.%d.0.op); kiln supports up to 8",
                          m->path, u->num_res_blocks, first_down);
    int per_level = u->num_res_blocks + 1;
    u->n_levels = n_input / per_level;
    if (u->n_levels < 1 || u->n_levels > KILN_MAX_LEVELS || 1 + u->n_levels * per_level - 1 != n_input)
        return kiln_error(KILN_EFORMAT, "%s: %d UNet input blocks do not form levels of %d resnets", m->path, n_input,
                          u->num_res_blocks);
    u->context_dim = 0;
    for (int l = 0; l < u->n_levels; l++) {
        int blk = 1 + l * per_level;
        if (!(w = get(m, UNET "input_blocks.%d.0.out_layers.3.weight", blk))) {
            char name[128];
            snprintf(name, sizeof name, UNET "input_blocks.%d.0.out_layers.3.weight", blk);
            return missing(m, name);
        }
        u->channel_mult[l] = (int)(w->shape[0] / u->model_channels);
        char prefix[128];
        snprintf(prefix, sizeof prefix, UNET "input_blocks.%d.1.transformer_blocks.", blk);
        u->transformer_depth[l] = count_indexed(m, prefix, ".attn1.to_q.weight");
        if (u->transformer_depth[l] && !u->context_dim) {
            const kiln_weight *k = get(m, UNET "input_blocks.%d.1.transformer_blocks.0.attn2.to_k.weight", blk);
            const kiln_weight *p = get(m, UNET "input_blocks.%d.1.proj_in.weight", blk);
            if (!k || !p) return missing(m, "a transformer's attn2.to_k / proj_in");
            u->context_dim = (int)k->shape[1];
            u->use_linear_proj = p->ndim == 2;
        }
    }
    u->mid_transformer_depth = count_indexed(m, UNET "middle_block.1.transformer_blocks.", ".attn1.to_q.weight");
    if ((w = get(m, UNET "label_emb.0.0.weight"))) u->adm_in_channels = (int)w->shape[1];
    return KILN_OK;
}

static int infer_vae(struct kiln_model *m, kiln_vae_config *v) {
    const kiln_weight *w = get(m, VAE "encoder.conv_in.weight");
    if (!w) return missing(m, VAE "encoder.conv_in.weight");
    v->base_channels = (int)w->shape[0];
    v->in_channels = (int)w->shape[1];
    if (!(w = get(m, VAE "decoder.conv_in.weight"))) return missing(m, VAE "decoder.conv_in.weight");
    v->z_channels = (int)w->shape[1];
    v->n_levels = count_indexed(m, VAE "encoder.down.", ".block.0.conv1.weight");
    if (v->n_levels < 1 || v->n_levels > KILN_MAX_LEVELS)
        return kiln_error(KILN_EFORMAT, "%s: the VAE encoder has %d levels", m->path, v->n_levels);
    for (int l = 0; l < v->n_levels; l++) {
        if (!(w = get(m, VAE "encoder.down.%d.block.0.conv2.weight", l))) return missing(m, "encoder.down.N.block.0.conv2.weight");
        v->channel_mult[l] = (int)(w->shape[0] / v->base_channels);
    }
    v->num_res_blocks = count_indexed(m, VAE "encoder.down.0.block.", ".conv1.weight");
    v->groups = 32;
    v->scaling_factor = 0.18215;
    return KILN_OK;
}

static int infer_clip(struct kiln_model *m, const char *prefix, kiln_clip_config *c) {
    char name[512];
    snprintf(name, sizeof name, "%sembeddings.token_embedding.weight", prefix);
    const kiln_weight *w = kiln_weights_find(m->weights, name);
    if (!w) return missing(m, name);
    c->prefix = prefix;
    c->vocab_size = (int)w->shape[0];
    c->hidden = (int)w->shape[1];
    snprintf(name, sizeof name, "%sembeddings.position_embedding.weight", prefix);
    if (!(w = kiln_weights_find(m->weights, name))) return missing(m, name);
    c->max_positions = (int)w->shape[0];
    snprintf(name, sizeof name, "%sencoder.layers.", prefix);
    c->layers = count_indexed(m, name, ".mlp.fc1.weight");
    snprintf(name, sizeof name, "%sencoder.layers.0.mlp.fc1.weight", prefix);
    if (!(w = kiln_weights_find(m->weights, name))) return missing(m, name);
    c->mlp = (int)w->shape[0];
    c->heads = c->hidden / 64;
    if (c->heads < 1) c->heads = 1;
    c->act = KILN_CLIP_QUICK_GELU;
    c->eps = 1e-5f;
    return KILN_OK;
}

int kiln_infer_config(struct kiln_model *m) {
    kiln_model_config *c = &m->config;
    /* Loaders may already know what the tensors cannot tell (a diffusers scheduler_config.json's
     * prediction type, a vae/config.json scaling factor): keep those across the reset. */
    kiln_prediction prediction = c->prediction;
    double scaling = c->vae.scaling_factor;
    memset(c, 0, sizeof *c);
    KILN_TRY(infer_unet(m, &c->unet));
    KILN_TRY(infer_vae(m, &c->vae));
    if (c->unet.adm_in_channels) {
        return kiln_error(KILN_EUNSUPPORTED, "%s: SDXL checkpoints are not supported yet", m->path);
    } else if (c->unet.use_linear_proj) {
        return kiln_error(KILN_EUNSUPPORTED, "%s: SD2.x checkpoints are not supported yet", m->path);
    }
    c->family = KILN_FAMILY_SD1;
    c->prediction = prediction;
    if (scaling > 0) c->vae.scaling_factor = scaling;
    c->unet.num_heads = 8;
    c->n_text_encoders = 1;
    KILN_TRY(infer_clip(m, "cond_stage_model.transformer.text_model.", &c->clip[0]));
    return KILN_OK;
}
