/* unet.c — the LDM U-Net (openaimodel.UNetModel) for SD1.x-style configs, under "model.diffusion_model.".
 *
 * Structure (names as in the checkpoint):
 *   time_embed.{0,2}            timestep embedding MLP
 *   input_blocks.0.0            conv_in
 *   input_blocks.k.{0,1}        per level: num_res_blocks x (ResBlock [+ SpatialTransformer]), then a
 *   input_blocks.k.0.op         stride-2 downsampler (all levels but the last)
 *   middle_block.{0,1,2}        ResBlock, SpatialTransformer, ResBlock
 *   output_blocks.k.{0,1,2}     per level, reversed: num_res_blocks+1 x (concat skip, ResBlock [+ transformer]),
 *                               the last one with an upsampler (all levels but the first)
 *   out.{0,2}                   GroupNorm+SiLU, conv_out */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "net/net.h"

#define P "model.diffusion_model."

typedef struct unet_builder {
    kiln_plan *p;
    const kiln_unet_config *c;
    int emb_silu;     /* SiLU(time embedding) [N, time_embed_dim], shared by every ResBlock */
    int context;      /* [N, ctx_len, context_dim] */
    int skips[64];    /* input-block outputs, consumed in reverse by the output blocks */
    int n_skips;
} unet_builder;

static void name(char *buf, size_t n, const char *fmt, int a, int b) { snprintf(buf, n, fmt, a, b); }

/* LDM ResBlock: GN+SiLU, conv3x3, + emb projection, GN+SiLU, conv3x3, + skip (1x1 conv if widths differ). */
static int res_block(unet_builder *u, int x, const char *pre, int64_t out_ch) {
    kiln_plan *p = u->p;
    kiln_plan_set_label(p, "%s", pre);
    int64_t in_ch = kiln_net_channels(p, x);
    char n[256];
    snprintf(n, sizeof n, "%s.in_layers.0", pre);
    int h = kiln_net_group_norm(p, x, n, in_ch, u->c->groups, 1e-5f, KILN_ACT_SILU);
    snprintf(n, sizeof n, "%s.in_layers.2", pre);
    h = kiln_net_conv(p, h, n, in_ch, out_ch, 3, 1, 1);
    snprintf(n, sizeof n, "%s.emb_layers.1", pre);
    int e = kiln_net_linear(p, u->emb_silu, n, u->c->time_embed_dim, out_ch, 1); /* [N, out_ch] */
    h = kiln_plan_add_channel(p, h, e);
    snprintf(n, sizeof n, "%s.out_layers.0", pre);
    h = kiln_net_group_norm(p, h, n, out_ch, u->c->groups, 1e-5f, KILN_ACT_SILU);
    snprintf(n, sizeof n, "%s.out_layers.3", pre);
    h = kiln_net_conv(p, h, n, out_ch, out_ch, 3, 1, 1);
    int skip = x;
    if (in_ch != out_ch) {
        snprintf(n, sizeof n, "%s.skip_connection", pre);
        skip = kiln_net_conv(p, x, n, in_ch, out_ch, 1, 1, 0);
    }
    return kiln_plan_add(p, skip, h);
}

/* Multi-head attention with to_q/to_k/to_v (no bias) and to_out.0; x [N, L, C], ctx [N, Lk, ctx_dim]. */
static int attention(unet_builder *u, int x, int ctx, const char *pre, int64_t ch, int64_t ctx_dim) {
    kiln_plan *p = u->p;
    int heads = u->c->num_heads ? u->c->num_heads : (int)(ch / u->c->head_dim);
    char n[256];
    snprintf(n, sizeof n, "%s.to_q", pre);
    int q = kiln_net_linear(p, x, n, ch, ch, 0);
    snprintf(n, sizeof n, "%s.to_k", pre);
    int k = kiln_net_linear(p, ctx, n, ctx_dim, ch, 0);
    snprintf(n, sizeof n, "%s.to_v", pre);
    int v = kiln_net_linear(p, ctx, n, ctx_dim, ch, 0);
    int a = kiln_plan_attention(p, q, k, v, heads, 0);
    snprintf(n, sizeof n, "%s.to_out.0", pre);
    return kiln_net_linear(p, a, n, ch, ch, 1);
}

/* BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward, each pre-LayerNorm + residual. */
static int transformer_block(unet_builder *u, int x, const char *pre, int64_t ch) {
    kiln_plan *p = u->p;
    int64_t ctx_dim = u->c->context_dim, inner = ch * 4;
    char n[256];
    snprintf(n, sizeof n, "%s.norm1", pre);
    int h = kiln_net_layer_norm(p, x, n, ch, 1e-5f);
    snprintf(n, sizeof n, "%s.attn1", pre);
    x = kiln_plan_add(p, x, attention(u, h, h, n, ch, ch));
    snprintf(n, sizeof n, "%s.norm2", pre);
    h = kiln_net_layer_norm(p, x, n, ch, 1e-5f);
    snprintf(n, sizeof n, "%s.attn2", pre);
    x = kiln_plan_add(p, x, attention(u, h, u->context, n, ch, ctx_dim));
    snprintf(n, sizeof n, "%s.norm3", pre);
    h = kiln_net_layer_norm(p, x, n, ch, 1e-5f);
    snprintf(n, sizeof n, "%s.ff.net.0.proj", pre);
    h = kiln_plan_geglu(p, kiln_net_linear(p, h, n, ch, inner * 2, 1)); /* [N, L, inner] */
    snprintf(n, sizeof n, "%s.ff.net.2", pre);
    return kiln_plan_add(p, x, kiln_net_linear(p, h, n, inner, ch, 1));
}

/* SpatialTransformer: GroupNorm, proj_in, transformer blocks over the H*W tokens, proj_out, + input. */
static int spatial_transformer(unet_builder *u, int x, const char *pre, int depth) {
    kiln_plan *p = u->p;
    kiln_plan_set_label(p, "%s", pre);
    const kiln_slot *s = kiln_plan_slot(p, x);
    int64_t ch = s->shape[1];
    int h_ = (int)s->shape[2], w_ = (int)s->shape[3];
    char n[256];
    snprintf(n, sizeof n, "%s.norm", pre);
    int h = kiln_net_group_norm(p, x, n, ch, u->c->groups, 1e-6f, KILN_ACT_NONE);
    snprintf(n, sizeof n, "%s.proj_in", pre);
    if (u->c->use_linear_proj) {
        h = kiln_net_linear(p, kiln_plan_nchw_to_nlc(p, h), n, ch, ch, 1);
    } else {
        h = kiln_plan_nchw_to_nlc(p, kiln_net_conv(p, h, n, ch, ch, 1, 1, 0)); /* [N, H*W, C] */
    }
    for (int d = 0; d < depth; d++) {
        snprintf(n, sizeof n, "%s.transformer_blocks.%d", pre, d);
        kiln_plan_set_label(p, "%s", n);
        h = transformer_block(u, h, n, ch);
    }
    kiln_plan_set_label(p, "%s", pre);
    snprintf(n, sizeof n, "%s.proj_out", pre);
    if (u->c->use_linear_proj) {
        h = kiln_plan_nlc_to_nchw(p, kiln_net_linear(p, h, n, ch, ch, 1), h_, w_);
    } else {
        h = kiln_net_conv(p, kiln_plan_nlc_to_nchw(p, h, h_, w_), n, ch, ch, 1, 1, 0);
    }
    return kiln_plan_add(p, x, h);
}

int kiln_build_unet(kiln_plan *p, const kiln_unet_config *c, int batch, int h, int w, int ctx_len) {
    unet_builder u = {.p = p, .c = c};
    if (c->n_levels < 1 || c->n_levels > KILN_MAX_LEVELS || c->num_res_blocks < 1 ||
        1 + c->n_levels * (c->num_res_blocks + 1) > (int)(sizeof u.skips / sizeof *u.skips))
        return p->status = kiln_error(KILN_EUNSUPPORTED, "U-Net with %d levels of %d resnets is not supported",
                                      c->n_levels, c->num_res_blocks);
    const int64_t xs[4] = {batch, c->in_channels, h, w}, ts[1] = {batch}, cs[3] = {batch, ctx_len, c->context_dim};
    int x = kiln_plan_input(p, "x", KILN_SLOT_F32, 4, xs);
    int t = kiln_plan_input(p, "t", KILN_SLOT_F32, 1, ts);
    u.context = kiln_plan_input(p, "context", KILN_SLOT_F32, 3, cs);
    const int64_t mc = c->model_channels, ted = c->time_embed_dim;
    char n[256];

    /* time embedding: sinusoid [N, mc] -> Linear -> SiLU -> Linear -> [N, ted]; ResBlocks use SiLU of it */
    kiln_plan_set_label(p, P "time_embed");
    int emb = kiln_plan_timestep_embed(p, t, (int)mc, 10000.0f);
    emb = kiln_plan_activation(p, kiln_net_linear(p, emb, P "time_embed.0", mc, ted, 1), KILN_ACT_SILU);
    emb = kiln_net_linear(p, emb, P "time_embed.2", ted, ted, 1);
    u.emb_silu = kiln_plan_activation(p, emb, KILN_ACT_SILU);

    kiln_plan_set_label(p, P "input_blocks.0");
    x = kiln_net_conv(p, x, P "input_blocks.0.0", c->in_channels, mc, 3, 1, 1);
    u.skips[u.n_skips++] = x;
    int blk = 1;
    for (int l = 0; l < c->n_levels; l++) {
        int64_t ch = mc * c->channel_mult[l];
        for (int j = 0; j < c->num_res_blocks; j++, blk++) {
            name(n, sizeof n, P "input_blocks.%d.0", blk, 0);
            x = res_block(&u, x, n, ch);
            if (c->transformer_depth[l]) {
                name(n, sizeof n, P "input_blocks.%d.1", blk, 0);
                x = spatial_transformer(&u, x, n, c->transformer_depth[l]);
            }
            u.skips[u.n_skips++] = x;
        }
        if (l != c->n_levels - 1) {
            name(n, sizeof n, P "input_blocks.%d.0.op", blk, 0);
            kiln_plan_set_label(p, "%s", n);
            x = kiln_net_conv(p, x, n, ch, ch, 3, 2, 1);
            u.skips[u.n_skips++] = x;
            blk++;
        }
    }

    int64_t ch = mc * c->channel_mult[c->n_levels - 1];
    x = res_block(&u, x, P "middle_block.0", ch);
    if (c->mid_transformer_depth) x = spatial_transformer(&u, x, P "middle_block.1", c->mid_transformer_depth);
    x = res_block(&u, x, P "middle_block.2", ch);

    blk = 0;
    for (int l = c->n_levels - 1; l >= 0; l--) {
        ch = mc * c->channel_mult[l];
        for (int j = 0; j <= c->num_res_blocks; j++, blk++) {
            x = kiln_plan_concat_channels(p, x, u.skips[--u.n_skips]);
            name(n, sizeof n, P "output_blocks.%d.0", blk, 0);
            x = res_block(&u, x, n, ch);
            int sub = 1;
            if (c->transformer_depth[l]) {
                name(n, sizeof n, P "output_blocks.%d.1", blk, 0);
                x = spatial_transformer(&u, x, n, c->transformer_depth[l]);
                sub = 2;
            }
            if (l != 0 && j == c->num_res_blocks) {
                /* nearest upsample to the size of the skip it will be concatenated with (odd sizes included) */
                const kiln_slot *skip = kiln_plan_slot(p, u.skips[u.n_skips - 1]);
                name(n, sizeof n, P "output_blocks.%d.%d.conv", blk, sub);
                kiln_plan_set_label(p, "%s", n);
                x = kiln_plan_upsample_nearest(p, x, (int)skip->shape[2], (int)skip->shape[3]);
                x = kiln_net_conv(p, x, n, ch, ch, 3, 1, 1);
            }
        }
    }
    kiln_plan_set_label(p, P "out");
    x = kiln_net_group_norm(p, x, P "out.0", mc, c->groups, 1e-5f, KILN_ACT_SILU);
    x = kiln_net_conv(p, x, P "out.2", mc, c->out_channels, 3, 1, 1);
    kiln_plan_output(p, x, "out");
    return kiln_plan_finalize(p);
}
