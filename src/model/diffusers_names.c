/* diffusers_names.c — renames one diffusers tensor to its LDM single-file (canonical) name.
 *
 * The mapping is computed from the block arithmetic of the UNet (resnets per level, levels, which levels have
 * attention), not looked up in a table, so any SD1/SD2/SDXL width or depth maps. Components:
 *   "unet"              -> model.diffusion_model.*
 *   "vae"               -> first_stage_model.*
 *   "text_encoder"      -> cond_stage_model.transformer.text_model.*        (SD1 CLIP, transformers names)
 *   "text_encoder_sd2"  -> cond_stage_model.model.*                         (SD2 OpenCLIP, open_clip names)
 *   "text_encoder_sdxl" -> conditioner.embedders.0.transformer.text_model.* (SDXL CLIP-L)
 *   "text_encoder_2"    -> conditioner.embedders.1.model.*                  (SDXL OpenCLIP bigG)
 * For the OpenCLIP encoders, q_proj/k_proj/v_proj map to the fused attn.in_proj_weight/in_proj_bias (the loader
 * stacks the three row blocks) and text_projection.weight maps to text_projection (the loader transposes it). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/model.h"

/* If *s starts with prefix, moves *s past it and returns 1. */
static int eat(const char **s, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(*s, prefix, n) != 0) return 0;
    *s += n;
    return 1;
}

/* Reads a decimal index followed by '.', as in "3.conv1.weight"; moves *s past the dot. */
static int eat_index(const char **s, int *value) {
    const char *p = *s;
    int v = 0, digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 6) {
        v = v * 10 + (*p - '0');
        p++;
        digits++;
    }
    if (!digits || *p != '.') return 0;
    *value = v;
    *s = p + 1;
    return 1;
}

/* Appends formatted text at out[*pos]; returns 0, or -1 when out is too small. */
static int put(char *out, size_t size, size_t *pos, const char *fmt, ...) KILN_PRINTF(4, 5);
static int put(char *out, size_t size, size_t *pos, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *pos, size > *pos ? size - *pos : 0, fmt, ap);
    va_end(ap);
    if (n < 0 || *pos + (size_t)n >= size) return -1;
    *pos += (size_t)n;
    return 0;
}

/* A resnet's own path: diffusers ResnetBlock2D -> LDM ResBlock. Returns NULL when unknown. */
static const char *unet_resnet_part(const char **s) {
    static const char *const pairs[][2] = {
        {"norm1.", "in_layers.0."},   {"conv1.", "in_layers.2."},  {"time_emb_proj.", "emb_layers.1."},
        {"norm2.", "out_layers.0."},  {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (eat(s, pairs[i][0])) return pairs[i][1];
    return NULL;
}

/* Writes the UNet name without the "model.diffusion_model." prefix; 0 or -1 (no counterpart / too long). */
static int map_unet(const char *s, int nrb, int n_levels, const int *attn_levels, char *out, size_t size,
                    size_t *pos) {
    int b, j;
    const char *part;
    if (eat(&s, "time_embedding.linear_1.")) return put(out, size, pos, "time_embed.0.%s", s);
    if (eat(&s, "time_embedding.linear_2.")) return put(out, size, pos, "time_embed.2.%s", s);
    if (eat(&s, "add_embedding.linear_1.")) return put(out, size, pos, "label_emb.0.0.%s", s);
    if (eat(&s, "add_embedding.linear_2.")) return put(out, size, pos, "label_emb.0.2.%s", s);
    if (eat(&s, "conv_in.")) return put(out, size, pos, "input_blocks.0.0.%s", s);
    if (eat(&s, "conv_norm_out.")) return put(out, size, pos, "out.0.%s", s);
    if (eat(&s, "conv_out.")) return put(out, size, pos, "out.2.%s", s);

    if (eat(&s, "down_blocks.")) {
        /* Down level b holds nrb resnet(+attention) blocks, then (except the last level) one downsampler:
         * nrb + 1 input_blocks per level after input_blocks.0 (conv_in). */
        if (!eat_index(&s, &b) || b >= n_levels) return -1;
        int first = 1 + b * (nrb + 1);
        if (eat(&s, "resnets.")) {
            if (!eat_index(&s, &j) || j >= nrb || !(part = unet_resnet_part(&s))) return -1;
            return put(out, size, pos, "input_blocks.%d.0.%s%s", first + j, part, s);
        }
        if (eat(&s, "attentions.")) {
            if (!eat_index(&s, &j) || j >= nrb || !attn_levels[b] || !*s) return -1;
            return put(out, size, pos, "input_blocks.%d.1.%s", first + j, s);
        }
        if (eat(&s, "downsamplers.0.conv.")) {
            if (b >= n_levels - 1) return -1;
            return put(out, size, pos, "input_blocks.%d.0.op.%s", first + nrb, s);
        }
        return -1;
    }
    if (eat(&s, "mid_block.")) {
        if (eat(&s, "resnets.")) {
            if (!eat_index(&s, &j) || j > 1 || !(part = unet_resnet_part(&s))) return -1;
            return put(out, size, pos, "middle_block.%d.%s%s", 2 * j, part, s);
        }
        if (eat(&s, "attentions.0.") && *s) return put(out, size, pos, "middle_block.1.%s", s);
        return -1;
    }
    if (eat(&s, "up_blocks.")) {
        /* Up block b mirrors down level n_levels-1-b and holds nrb+1 resnets; its upsampler sits in the last
         * output block, after the resnet (.0) and, when the level has attention, the transformer (.1). */
        if (!eat_index(&s, &b) || b >= n_levels) return -1;
        int first = b * (nrb + 1);
        int has_attn = attn_levels[n_levels - 1 - b] != 0;
        if (eat(&s, "resnets.")) {
            if (!eat_index(&s, &j) || j > nrb || !(part = unet_resnet_part(&s))) return -1;
            return put(out, size, pos, "output_blocks.%d.0.%s%s", first + j, part, s);
        }
        if (eat(&s, "attentions.")) {
            if (!eat_index(&s, &j) || j > nrb || !has_attn || !*s) return -1;
            return put(out, size, pos, "output_blocks.%d.1.%s", first + j, s);
        }
        if (eat(&s, "upsamplers.0.conv.")) {
            if (b >= n_levels - 1) return -1;
            return put(out, size, pos, "output_blocks.%d.%d.conv.%s", first + nrb, has_attn ? 2 : 1, s);
        }
        return -1;
    }
    return -1;
}

/* VAE resnet: same names except the shortcut. Returns the LDM part or NULL. */
static const char *vae_resnet_part(const char **s) {
    static const char *const pairs[][2] = {
        {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."},
        {"conv2.", "conv2."}, {"conv_shortcut.", "nin_shortcut."},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (eat(s, pairs[i][0])) return pairs[i][1];
    return NULL;
}

/* Writes the VAE name without "first_stage_model."; 0 or -1. */
static int map_vae(const char *s, int n_levels, char *out, size_t size, size_t *pos) {
    int i, j;
    const char *part;
    if (eat(&s, "quant_conv.")) return put(out, size, pos, "quant_conv.%s", s);
    if (eat(&s, "post_quant_conv.")) return put(out, size, pos, "post_quant_conv.%s", s);
    int encoder = eat(&s, "encoder.");
    if (!encoder && !eat(&s, "decoder.")) return -1;
    const char *side = encoder ? "encoder" : "decoder";
    if (eat(&s, "conv_in.")) return put(out, size, pos, "%s.conv_in.%s", side, s);
    if (eat(&s, "conv_out.")) return put(out, size, pos, "%s.conv_out.%s", side, s);
    if (eat(&s, "conv_norm_out.")) return put(out, size, pos, "%s.norm_out.%s", side, s);
    if (encoder && eat(&s, "down_blocks.")) {
        if (!eat_index(&s, &i) || i >= n_levels) return -1;
        if (eat(&s, "resnets.")) {
            if (!eat_index(&s, &j) || !(part = vae_resnet_part(&s))) return -1;
            return put(out, size, pos, "encoder.down.%d.block.%d.%s%s", i, j, part, s);
        }
        if (eat(&s, "downsamplers.0.conv.")) return put(out, size, pos, "encoder.down.%d.downsample.conv.%s", i, s);
        return -1;
    }
    if (!encoder && eat(&s, "up_blocks.")) {
        /* diffusers counts decoder levels from the bottom (smallest image) up; LDM from the top down. */
        if (!eat_index(&s, &i) || i >= n_levels) return -1;
        int level = n_levels - 1 - i;
        if (eat(&s, "resnets.")) {
            if (!eat_index(&s, &j) || !(part = vae_resnet_part(&s))) return -1;
            return put(out, size, pos, "decoder.up.%d.block.%d.%s%s", level, j, part, s);
        }
        if (eat(&s, "upsamplers.0.conv.")) return put(out, size, pos, "decoder.up.%d.upsample.conv.%s", level, s);
        return -1;
    }
    if (eat(&s, "mid_block.resnets.")) {
        if (!eat_index(&s, &j) || j > 1 || !(part = vae_resnet_part(&s))) return -1;
        return put(out, size, pos, "%s.mid.block_%d.%s%s", side, j + 1, part, s);
    }
    if (eat(&s, "mid_block.attentions.0.")) {
        /* Current diffusers names first, then the pre-0.14 ones still found in older VAE files. */
        static const char *const pairs[][2] = {
            {"group_norm.", "norm."}, {"to_q.", "q."},   {"to_k.", "k."},   {"to_v.", "v."},
            {"to_out.0.", "proj_out."}, {"query.", "q."}, {"key.", "k."},   {"value.", "v."},
            {"proj_attn.", "proj_out."},
        };
        for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
            if (eat(&s, pairs[k][0])) return put(out, size, pos, "%s.mid.attn_1.%s%s", side, pairs[k][1], s);
        return -1;
    }
    return -1;
}

/* OpenCLIP (open_clip names) from transformers CLIPTextModel names; without the component prefix. */
static int map_open_clip(const char *s, char *out, size_t size, size_t *pos) {
    int i;
    if (eat(&s, "text_projection.")) return strcmp(s, "weight") ? -1 : put(out, size, pos, "text_projection");
    if (!eat(&s, "text_model.")) return -1;
    if (!strcmp(s, "embeddings.token_embedding.weight")) return put(out, size, pos, "token_embedding.weight");
    if (!strcmp(s, "embeddings.position_embedding.weight")) return put(out, size, pos, "positional_embedding");
    if (eat(&s, "final_layer_norm.")) return put(out, size, pos, "ln_final.%s", s);
    if (!eat(&s, "encoder.layers.") || !eat_index(&s, &i)) return -1;
    static const char *const pairs[][2] = {
        {"layer_norm1.", "ln_1."},        {"layer_norm2.", "ln_2."},   {"self_attn.out_proj.", "attn.out_proj."},
        {"mlp.fc1.", "mlp.c_fc."},        {"mlp.fc2.", "mlp.c_proj."},
    };
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
        if (eat(&s, pairs[k][0])) return put(out, size, pos, "transformer.resblocks.%d.%s%s", i, pairs[k][1], s);
    if (eat(&s, "self_attn.q_proj.") || eat(&s, "self_attn.k_proj.") || eat(&s, "self_attn.v_proj.")) {
        if (!strcmp(s, "weight")) return put(out, size, pos, "transformer.resblocks.%d.attn.in_proj_weight", i);
        if (!strcmp(s, "bias")) return put(out, size, pos, "transformer.resblocks.%d.attn.in_proj_bias", i);
    }
    return -1;
}

int kiln_diffusers_to_ldm(const char *component, const char *name, int num_res_blocks, int n_levels,
                          const int *attn_levels, char *out, size_t out_size) {
    char buf[1024];
    size_t pos = 0;
    int rc = -1;
    if (!component || !name) return kiln_error(KILN_EINVAL, "diffusers name mapping: no component or name");
    if (!strcmp(component, "unet")) {
        static const int no_attn[KILN_MAX_LEVELS] = {0};
        if (num_res_blocks < 1 || n_levels < 1 || n_levels > KILN_MAX_LEVELS)
            return kiln_error(KILN_EINVAL, "diffusers UNet tensor %s: %d levels of %d resnets is not a SD UNet", name,
                              n_levels, num_res_blocks);
        rc = put(buf, sizeof buf, &pos, "model.diffusion_model.");
        if (!rc) rc = map_unet(name, num_res_blocks, n_levels, attn_levels ? attn_levels : no_attn, buf, sizeof buf, &pos);
    } else if (!strcmp(component, "vae")) {
        rc = put(buf, sizeof buf, &pos, "first_stage_model.");
        if (!rc) rc = map_vae(name, n_levels, buf, sizeof buf, &pos);
    } else if (!strcmp(component, "text_encoder") || !strcmp(component, "text_encoder_sdxl")) {
        /* The LDM files keep the transformers names of CLIP-L under a prefix. */
        const char *prefix = !strcmp(component, "text_encoder") ? "cond_stage_model.transformer."
                                                                 : "conditioner.embedders.0.transformer.";
        if (!strncmp(name, "text_model.", 11)) rc = put(buf, sizeof buf, &pos, "%s%s", prefix, name);
    } else if (!strcmp(component, "text_encoder_sd2") || !strcmp(component, "text_encoder_2")) {
        rc = put(buf, sizeof buf, &pos, "%s",
                 !strcmp(component, "text_encoder_sd2") ? "cond_stage_model.model." : "conditioner.embedders.1.model.");
        if (!rc) rc = map_open_clip(name, buf, sizeof buf, &pos);
    } else {
        return kiln_error(KILN_EINVAL, "diffusers tensor %s: unknown component \"%s\"", name, component);
    }
    if (rc < 0) return kiln_error(KILN_ENOTFOUND, "diffusers %s tensor %s has no LDM counterpart", component, name);
    if (pos + 1 > out_size)
        return kiln_error(KILN_EINVAL, "diffusers %s tensor %s: LDM name %s longer than %zu bytes", component, name,
                          buf, out_size);
    memcpy(out, buf, pos + 1);
    return KILN_OK;
}
