/* vae.c — the LDM AutoencoderKL decoder and encoder, under "first_stage_model.".
 *
 * Decoder: post_quant_conv, decoder.conv_in, mid (block_1, attn_1, block_2), up levels from the widest
 * (up.{n-1}) to up.0 with num_res_blocks+1 ResNets each and an upsampler on all but up.0, norm_out+SiLU,
 * conv_out. Encoder: the mirror image, with asymmetric-padded stride-2 downsamplers, then quant_conv. */
#include <stdio.h>

#include "net/net.h"

#define P "first_stage_model."
#define VAE_EPS 1e-6f

/* ResnetBlock without time embedding: GN+SiLU, conv, GN+SiLU, conv, + (nin_shortcut) x. */
static int resnet(kiln_plan *p, const kiln_vae_config *c, int x, const char *pre, int64_t out_ch) {
    kiln_plan_set_label(p, "%s", pre);
    int64_t in_ch = kiln_net_channels(p, x);
    char n[256];
    snprintf(n, sizeof n, "%s.norm1", pre);
    int h = kiln_net_group_norm(p, x, n, in_ch, c->groups, VAE_EPS, KILN_ACT_SILU);
    snprintf(n, sizeof n, "%s.conv1", pre);
    h = kiln_net_conv(p, h, n, in_ch, out_ch, 3, 1, 1);
    snprintf(n, sizeof n, "%s.norm2", pre);
    h = kiln_net_group_norm(p, h, n, out_ch, c->groups, VAE_EPS, KILN_ACT_SILU);
    snprintf(n, sizeof n, "%s.conv2", pre);
    h = kiln_net_conv(p, h, n, out_ch, out_ch, 3, 1, 1);
    if (in_ch != out_ch) {
        snprintf(n, sizeof n, "%s.nin_shortcut", pre);
        x = kiln_net_conv(p, x, n, in_ch, out_ch, 1, 1, 0);
    }
    return kiln_plan_add(p, x, h);
}

/* AttnBlock: single-head self-attention over H*W with 1x1-conv q/k/v/proj_out, + x. */
static int attn_block(kiln_plan *p, const kiln_vae_config *c, int x, const char *pre) {
    kiln_plan_set_label(p, "%s", pre);
    const kiln_slot *s = kiln_plan_slot(p, x);
    int64_t ch = s->shape[1];
    int h_ = (int)s->shape[2], w_ = (int)s->shape[3];
    char n[256];
    snprintf(n, sizeof n, "%s.norm", pre);
    int h = kiln_net_group_norm(p, x, n, ch, c->groups, VAE_EPS, KILN_ACT_NONE);
    snprintf(n, sizeof n, "%s.q", pre);
    int q = kiln_plan_nchw_to_nlc(p, kiln_net_conv(p, h, n, ch, ch, 1, 1, 0));
    snprintf(n, sizeof n, "%s.k", pre);
    int k = kiln_plan_nchw_to_nlc(p, kiln_net_conv(p, h, n, ch, ch, 1, 1, 0));
    snprintf(n, sizeof n, "%s.v", pre);
    int v = kiln_plan_nchw_to_nlc(p, kiln_net_conv(p, h, n, ch, ch, 1, 1, 0));
    int a = kiln_plan_nlc_to_nchw(p, kiln_plan_attention(p, q, k, v, 1, 0), h_, w_);
    snprintf(n, sizeof n, "%s.proj_out", pre);
    return kiln_plan_add(p, x, kiln_net_conv(p, a, n, ch, ch, 1, 1, 0));
}

static int mid(kiln_plan *p, const kiln_vae_config *c, int x, const char *coder, int64_t ch) {
    char n[256];
    snprintf(n, sizeof n, P "%s.mid.block_1", coder);
    x = resnet(p, c, x, n, ch);
    snprintf(n, sizeof n, P "%s.mid.attn_1", coder);
    x = attn_block(p, c, x, n);
    snprintf(n, sizeof n, P "%s.mid.block_2", coder);
    return resnet(p, c, x, n, ch);
}

int kiln_build_vae_decoder(kiln_plan *p, const kiln_vae_config *c, int batch, int h, int w) {
    const int64_t zs[4] = {batch, c->z_channels, h, w};
    int x = kiln_plan_input(p, "latent", KILN_SLOT_F32, 4, zs);
    const int64_t z = c->z_channels, top = (int64_t)c->base_channels * c->channel_mult[c->n_levels - 1];
    kiln_plan_set_label(p, P "post_quant_conv");
    x = kiln_plan_scale(p, x, (float)(1.0 / c->scaling_factor)); /* LDM: float32(1 / 0.18215 in double) */
    x = kiln_net_conv(p, x, P "post_quant_conv", z, z, 1, 1, 0);
    kiln_plan_set_label(p, P "decoder.conv_in");
    x = kiln_net_conv(p, x, P "decoder.conv_in", z, top, 3, 1, 1);
    x = mid(p, c, x, "decoder", top);
    char n[256];
    for (int l = c->n_levels - 1; l >= 0; l--) {
        int64_t ch = (int64_t)c->base_channels * c->channel_mult[l];
        for (int j = 0; j <= c->num_res_blocks; j++) {
            snprintf(n, sizeof n, P "decoder.up.%d.block.%d", l, j);
            x = resnet(p, c, x, n, ch);
        }
        if (l != 0) {
            snprintf(n, sizeof n, P "decoder.up.%d.upsample.conv", l);
            kiln_plan_set_label(p, "%s", n);
            const kiln_slot *s = kiln_plan_slot(p, x);
            x = kiln_plan_upsample_nearest(p, x, (int)s->shape[2] * 2, (int)s->shape[3] * 2);
            x = kiln_net_conv(p, x, n, ch, ch, 3, 1, 1);
        }
    }
    const int64_t ch0 = (int64_t)c->base_channels * c->channel_mult[0];
    kiln_plan_set_label(p, P "decoder.norm_out");
    x = kiln_net_group_norm(p, x, P "decoder.norm_out", ch0, c->groups, VAE_EPS, KILN_ACT_SILU);
    x = kiln_net_conv(p, x, P "decoder.conv_out", ch0, c->in_channels, 3, 1, 1);
    kiln_plan_output(p, x, "image");
    return kiln_plan_finalize(p);
}

int kiln_build_vae_encoder(kiln_plan *p, const kiln_vae_config *c, int batch, int h, int w) {
    const int64_t is[4] = {batch, c->in_channels, h, w};
    int x = kiln_plan_input(p, "image", KILN_SLOT_F32, 4, is);
    const int64_t z = c->z_channels, ch0 = c->base_channels;
    kiln_plan_set_label(p, P "encoder.conv_in");
    x = kiln_net_conv(p, x, P "encoder.conv_in", c->in_channels, ch0, 3, 1, 1);
    char n[256];
    int64_t ch = ch0;
    for (int l = 0; l < c->n_levels; l++) {
        ch = ch0 * c->channel_mult[l];
        for (int j = 0; j < c->num_res_blocks; j++) {
            snprintf(n, sizeof n, P "encoder.down.%d.block.%d", l, j);
            x = resnet(p, c, x, n, ch);
        }
        if (l != c->n_levels - 1) {
            snprintf(n, sizeof n, P "encoder.down.%d.downsample.conv", l);
            kiln_plan_set_label(p, "%s", n);
            int wt = kiln_net_weight(p, n, ".weight", 4, ch, ch, 3, 3);
            int b = kiln_net_weight(p, n, ".bias", 1, ch, 0, 0, 0);
            x = kiln_plan_conv2d_ex(p, x, wt, b, 2, 0, 1); /* pad (0,1,0,1), stride 2 */
        }
    }
    x = mid(p, c, x, "encoder", ch);
    kiln_plan_set_label(p, P "encoder.norm_out");
    x = kiln_net_group_norm(p, x, P "encoder.norm_out", ch, c->groups, VAE_EPS, KILN_ACT_SILU);
    x = kiln_net_conv(p, x, P "encoder.conv_out", ch, 2 * z, 3, 1, 1);
    kiln_plan_set_label(p, P "quant_conv");
    x = kiln_net_conv(p, x, P "quant_conv", 2 * z, 2 * z, 1, 1, 0);
    kiln_plan_output(p, kiln_plan_slice_channels(p, x, 0, (int)z), "mean");
    kiln_plan_output(p, kiln_plan_slice_channels(p, x, (int)z, (int)z), "logvar");
    return kiln_plan_finalize(p);
}
