/* lora_keys.c — which model weight a kohya LoRA key changes (A1111 networks.py:
 * convert_diffusers_name_to_compvis, assign_network_names_to_compvis_modules and the fallbacks in
 * load_network). See lora.h for the rules; the arithmetic here is the UNet's block layout. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/lora.h"

/* ---- kohya key -> A1111 network layer name ---- */

static int eat(const char **s, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(*s, prefix, n) != 0) return 0;
    *s += n;
    return 1;
}

/* \d+ : reads at least one digit (at most 6, which no real index exceeds). */
static int eat_num(const char **s, int *value) {
    const char *p = *s;
    int v = 0, digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (++digits > 6) return 0;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (!digits) return 0;
    *value = v;
    *s = p;
    return 1;
}

static int out_printf(char *out, size_t size, const char *fmt, ...) KILN_PRINTF(3, 4);
static int out_printf(char *out, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) return kiln_error(KILN_EINVAL, "LoRA layer name longer than %zu bytes", size);
    return KILN_OK;
}

/* A1111 suffix_conversion["resnets"]: the whole remainder of a resnet key, diffusers -> LDM. */
static const char *resnet_suffix(const char *rest) {
    static const char *const pairs[][2] = {
        {"conv1", "in_layers_2"},   {"conv2", "out_layers_3"},         {"norm1", "in_layers_0"},
        {"norm2", "out_layers_0"},  {"time_emb_proj", "emb_layers_1"}, {"conv_shortcut", "skip_connection"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (!strcmp(rest, pairs[i][0])) return pairs[i][1];
    return rest;
}

/* "(attentions|resnets)_(\d+)_(.+)": 1 on a match; *is_attn, *j and *rest set. */
static int eat_block_part(const char **s, int *is_attn, int *j, const char **rest) {
    const char *p = *s;
    if (eat(&p, "attentions_"))
        *is_attn = 1;
    else if (eat(&p, "resnets_"))
        *is_attn = 0;
    else
        return 0;
    if (!eat_num(&p, j) || !eat(&p, "_") || !*p) return 0;
    *rest = p;
    *s = p;
    return 1;
}

/* OpenCLIP names of one encoder layer's remainder (A1111's is_sd2 / lora_te2 branches). */
static int open_clip_layer(char *out, size_t size, const char *prefix, int i, const char *rest) {
    char buf[256];
    const char *from = NULL, *to = NULL;
    if (strstr(rest, "mlp_fc1"))
        from = "mlp_fc1", to = "mlp_c_fc";
    else if (strstr(rest, "mlp_fc2"))
        from = "mlp_fc2", to = "mlp_c_proj";
    else
        from = "self_attn", to = "attn";
    /* Python str.replace: every occurrence. */
    size_t pos = 0, nf = strlen(from), nt = strlen(to);
    for (const char *p = rest; *p;) {
        if (!strncmp(p, from, nf)) {
            if (pos + nt >= sizeof buf) return kiln_error(KILN_EINVAL, "LoRA key remainder %s too long", rest);
            memcpy(buf + pos, to, nt);
            pos += nt;
            p += nf;
        } else {
            if (pos + 1 >= sizeof buf) return kiln_error(KILN_EINVAL, "LoRA key remainder %s too long", rest);
            buf[pos++] = *p++;
        }
    }
    buf[pos] = '\0';
    return out_printf(out, size, "%smodel_transformer_resblocks_%d_%s", prefix, i, buf);
}

int kiln_lora_convert_key(const kiln_model_config *cfg, const char *key, char *out, size_t size) {
    const kiln_unet_config *u = &cfg->unet;
    int per_level = u->num_res_blocks + 1; /* A1111 hard-codes 3 (SD1/SD2/SDXL all have 2 resnets per level) */
    const char *s = key, *rest;
    int b, j, is_attn;

    if (eat(&s, "lora_unet_")) {
        const char *t = s;
        if (eat(&t, "conv_in")) return out_printf(out, size, "diffusion_model_input_blocks_0_0%s", t);
        t = s;
        if (eat(&t, "conv_out")) return out_printf(out, size, "diffusion_model_out_2%s", t);
        t = s;
        if (eat(&t, "time_embedding_linear_") && eat_num(&t, &b))
            return out_printf(out, size, "diffusion_model_time_embed_%d%s", b * 2 - 2, t);
        t = s;
        if (eat(&t, "down_blocks_") && eat_num(&t, &b) && eat(&t, "_") && eat_block_part(&t, &is_attn, &j, &rest))
            return out_printf(out, size, "diffusion_model_input_blocks_%d_%d_%s", 1 + b * per_level + j,
                              is_attn ? 1 : 0, is_attn ? rest : resnet_suffix(rest));
        t = s;
        if (eat(&t, "mid_block_") && eat_block_part(&t, &is_attn, &j, &rest))
            return out_printf(out, size, "diffusion_model_middle_block_%d_%s", is_attn ? 1 : j * 2,
                              is_attn ? rest : resnet_suffix(rest));
        t = s;
        if (eat(&t, "up_blocks_") && eat_num(&t, &b) && eat(&t, "_") && eat_block_part(&t, &is_attn, &j, &rest))
            return out_printf(out, size, "diffusion_model_output_blocks_%d_%d_%s", b * per_level + j, is_attn ? 1 : 0,
                              is_attn ? rest : resnet_suffix(rest));
        t = s;
        /* re.match anchors only the start: anything after "_conv" is ignored, as in A1111. */
        if (eat(&t, "down_blocks_") && eat_num(&t, &b) && eat(&t, "_downsamplers_0_conv"))
            return out_printf(out, size, "diffusion_model_input_blocks_%d_0_op", (b + 1) * per_level);
        t = s;
        if (eat(&t, "up_blocks_") && eat_num(&t, &b) && eat(&t, "_upsamplers_0_conv")) {
            /* A1111: ".2" when b > 0 else ".1" — i.e. whether the mirrored down level has attention (SD1). */
            int level = u->n_levels - 1 - b;
            int has_attn = level >= 0 && level < KILN_MAX_LEVELS && u->transformer_depth[level] > 0;
            return out_printf(out, size, "diffusion_model_output_blocks_%d_%d_conv", b * per_level + per_level - 1,
                              has_attn ? 2 : 1);
        }
        return out_printf(out, size, "%s", key);
    }
    if (eat(&s, "lora_te_text_model_encoder_layers_") && eat_num(&s, &b) && eat(&s, "_") && *s) {
        if (cfg->family == KILN_FAMILY_SD2) return open_clip_layer(out, size, "", b, s);
        return out_printf(out, size, "transformer_text_model_encoder_layers_%d_%s", b, s);
    }
    s = key;
    if (eat(&s, "lora_te2_text_model_encoder_layers_") && eat_num(&s, &b) && eat(&s, "_") && *s)
        return open_clip_layer(out, size, "1_", b, s);
    return out_printf(out, size, "%s", key);
}

/* ---- the model's layer names ---- */

typedef struct layer_entry {
    char *layer;   /* A1111 network layer name */
    char *weight;  /* canonical weight name */
    int is_mha;    /* an OpenCLIP MultiheadAttention: weight is its fused in_proj_weight */
} layer_entry;

struct kiln_lora_layers {
    int n;
    layer_entry *items; /* sorted by layer */
};

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const layer_entry *)a)->layer, ((const layer_entry *)b)->layer);
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* A1111 names modules of sd_model.model ("diffusion_model.…") and of the text encoder's wrapped
 * module ("transformer.text_model.…", SD2 "model.transformer.…", SDXL "<i>_" + either), '.' -> '_'.
 * The VAE has no network layers. Writes the layer of a canonical module path (no ".weight"). */
static int layer_of_module(const char *module, char *out, size_t size) {
    const char *s = module;
    size_t pos = 0;
    if (eat(&s, "model.diffusion_model.")) {
        s = module + strlen("model.");
    } else if (eat(&s, "cond_stage_model.")) {
        /* s is the wrapped module's own path */
    } else if (eat(&s, "conditioner.embedders.")) {
        int i;
        if (!eat_num(&s, &i) || !eat(&s, ".")) return -1;
        pos = (size_t)snprintf(out, size, "%d_", i);
    } else {
        return -1;
    }
    size_t n = strlen(s);
    if (pos + n + 1 > size) return -1;
    for (size_t k = 0; k < n; k++) out[pos + k] = s[k] == '.' ? '_' : s[k];
    out[pos + n] = '\0';
    return 0;
}

void kiln_lora_layers_free(kiln_lora_layers *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        free(t->items[i].layer);
        free(t->items[i].weight);
    }
    free(t->items);
    free(t);
}

int kiln_lora_layers_build(const struct kiln_model *m, kiln_lora_layers **out) {
    const kiln_weights *w = m->weights;
    kiln_lora_layers *t = calloc(1, sizeof *t);
    if (!t || !(t->items = calloc((size_t)(w->n ? w->n : 1), sizeof *t->items))) {
        free(t);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    for (int i = 0; i < w->n; i++) {
        const char *name = w->items[i].name;
        char module[512], layer[512];
        int is_mha = 0;
        size_t n = strlen(name);
        if (n >= sizeof module) continue;
        if (has_suffix(name, ".in_proj_weight")) {
            is_mha = 1;
            n -= strlen(".in_proj_weight");
        } else if (has_suffix(name, ".weight")) {
            n -= strlen(".weight");
        } else {
            continue;
        }
        memcpy(module, name, n);
        module[n] = '\0';
        if (layer_of_module(module, layer, sizeof layer)) continue;
        layer_entry *e = &t->items[t->n];
        e->layer = strdup(layer);
        e->weight = strdup(name);
        e->is_mha = is_mha;
        if (!e->layer || !e->weight) {
            free(e->layer);
            free(e->weight);
            kiln_lora_layers_free(t);
            return kiln_error(KILN_ENOMEM, "out of memory");
        }
        t->n++;
    }
    qsort(t->items, (size_t)t->n, sizeof *t->items, cmp_entry);
    *out = t;
    return KILN_OK;
}

static const layer_entry *lookup(const kiln_lora_layers *t, const char *layer) {
    layer_entry probe = {.layer = (char *)layer};
    return bsearch(&probe, t->items, (size_t)t->n, sizeof *t->items, cmp_entry);
}

/* Python str.replace(old, new) into out; -1 when old does not occur or out is too small. */
static int replace_all(const char *s, const char *old, const char *new_text, char *out, size_t size) {
    size_t pos = 0, no = strlen(old), nn = strlen(new_text);
    int found = 0;
    while (*s) {
        if (!strncmp(s, old, no)) {
            if (pos + nn >= size) return -1;
            memcpy(out + pos, new_text, nn);
            pos += nn;
            s += no;
            found = 1;
        } else {
            if (pos + 1 >= size) return -1;
            out[pos++] = *s++;
        }
    }
    out[pos] = '\0';
    return found ? 0 : -1;
}

static int fill(kiln_lora_target *target, const char *sd_key, const layer_entry *e, int row_block) {
    if (strlen(sd_key) >= sizeof target->layer || strlen(e->weight) >= sizeof target->weight) return KILN_ENOTFOUND;
    strcpy(target->layer, sd_key);
    strcpy(target->weight, e->weight);
    target->row_block = row_block;
    /* network.py NetworkModule.multiplier(): 'transformer' in self.sd_key[:20] */
    char head[21];
    snprintf(head, sizeof head, "%s", sd_key);
    target->is_text_encoder = strstr(head, "transformer") != NULL;
    return KILN_OK;
}

int kiln_lora_resolve(const kiln_lora_layers *t, const kiln_model_config *cfg, const char *key,
                      kiln_lora_target *target) {
    char conv[512], alt[512];
    const layer_entry *e;
    if (kiln_lora_convert_key(cfg, key, conv, sizeof conv)) return KILN_ENOTFOUND;
    if ((e = lookup(t, conv)) && !e->is_mha) return fill(target, conv, e, -1);
    if (!e) {
        /* re_x_proj "(.*)_([qkv]_proj)$": q/k/v of an OpenCLIP MultiheadAttention */
        size_t n = strlen(conv);
        if (n > 7 && !strcmp(conv + n - 5, "_proj") && conv[n - 7] == '_' && strchr("qkv", conv[n - 6])) {
            memcpy(alt, conv, n - 7);
            alt[n - 7] = '\0';
            if ((e = lookup(t, alt))) {
                int row = e->is_mha ? (int)(strchr("qkv", conv[n - 6]) - "qkv") : -1;
                return fill(target, conv, e, row);
            }
        }
    }
    /* Keys already in LDM form (SDXL kohya files, some SD1 ones). */
    if (strstr(key, "lora_unet")) {
        if (!replace_all(key, "lora_unet", "diffusion_model", alt, sizeof alt) && (e = lookup(t, alt)) && !e->is_mha)
            return fill(target, alt, e, -1);
    } else if (strstr(key, "lora_te1_text_model")) {
        if (!replace_all(key, "lora_te1_text_model", "0_transformer_text_model", alt, sizeof alt) &&
            (e = lookup(t, alt)) && !e->is_mha)
            return fill(target, alt, e, -1);
        if (!replace_all(key, "lora_te1_text_model", "transformer_text_model", alt, sizeof alt) &&
            (e = lookup(t, alt)) && !e->is_mha)
            return fill(target, alt, e, -1);
    }
    return KILN_ENOTFOUND;
}
