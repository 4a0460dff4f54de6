/* lora.h — kohya-ss LoRA / LoCon files merged into a model's weights, as A1111 v1.9.4's built-in
 * Lora extension does it (extensions-builtin/Lora: networks.py, network.py, network_lora.py) with
 * --no-half, i.e. every step in float32.
 *
 * File: per module KEY.lora_down.weight, KEY.lora_up.weight and optionally KEY.alpha (a scalar) and
 * KEY.scale; KEY is everything before the first '.'. PEFT-style KEY.lora_A.weight / KEY.lora_B.weight
 * are accepted as down / up (A1111 does the same). Other LyCORIS module types (LoHa, LoKr, OFT, CP
 * "lora_mid", DoRA) are refused with a message naming the key. "bundle_emb.*" tensors (embeddings
 * shipped inside a LoRA) are counted and ignored.
 *
 * Key -> model layer (networks.py convert_diffusers_name_to_compvis and load_network): the kohya key
 * becomes an A1111 "network layer name" (the LDM module path with '.' -> '_', e.g.
 * diffusion_model_input_blocks_1_1_proj_in, transformer_text_model_encoder_layers_0_mlp_fc1), looked
 * up among the layers of the loaded model. The block arithmetic uses the model's num_res_blocks and
 * attention levels instead of A1111's hard-coded SD1 numbers (identical for SD1/SD2). Keys already in
 * LDM form (lora_unet_input_blocks_...), SDXL lora_te1_ / lora_te2_ keys and SD2/SDXL OpenCLIP q/k/v
 * projections (rows of the fused in_proj_weight) follow A1111's fallbacks. A module whose key matches
 * no layer is skipped and counted, as A1111 logs and skips it.
 *
 * Merge (NetworkModuleLora.calc_updown + network_apply_weights), per module:
 *   updown = (up.reshape(out, r) @ down.reshape(r, -1)).reshape(W.shape)
 *   scale  = alpha / r (1.0 without alpha; KEY.scale wins when present)
 *   m      = te multiplier when the layer name has "transformer" in its first 20 characters, else unet
 *   W'     = W + (updown * scale) * m
 * The product sums over the rank in order 0..r-1 with separate multiply and add (rows in parallel, so
 * the thread count never changes a bit); with float16 factors every product is exact in float32 and this
 * reproduces the fixture (numpy/BLAS) bit for bit. An inpainting model's 9-channel conv_in takes a
 * 4-channel update in its first 4 input channels (A1111 zero-pads).
 * W' is stored as float32 in the weight store (kiln_weights_add_owned_f32, which bumps the tensor's
 * version so backends re-upload it). The original tensors are kept so kiln_model_restore_weights
 * can undo every merge (A1111 restores and re-applies its network list per request). */
#ifndef KILN_MODEL_LORA_H
#define KILN_MODEL_LORA_H

#include <stddef.h>

#include "io/safetensors.h"
#include "model/model.h"

typedef struct kiln_lora_module {
    char *key;                  /* kohya key without the part, e.g. "lora_unet_mid_block_attentions_0_proj_in" */
    const kiln_st_tensor *up;   /* [out, r] or [out, r, 1, 1] */
    const kiln_st_tensor *down; /* [r, in] or [r, in, kh, kw] */
    int has_alpha;
    double alpha;               /* KEY.alpha as a double (Python's tensor.item()) */
    int has_scale;
    double scale;               /* KEY.scale, rare */
} kiln_lora_module;

typedef struct kiln_lora {
    char *path;
    char *name;                 /* file stem: what <lora:NAME:...> uses */
    char *alias;                /* the file's ss_output_name metadata, or NULL */
    kiln_st_file *file;         /* the tensors point into it */
    int n_modules;
    kiln_lora_module *modules;  /* in the file's order */
    int n_ignored;              /* tensors of no module (bundle_emb.*) */
} kiln_lora;

/* Reads a LoRA .safetensors. Errors name the file and, for a malformed module, the key. */
int kiln_lora_load(const char *path, kiln_lora **out);
/* The same from memory (not copied: buf must outlive the LoRA); name stands for the path. For fuzzing. */
int kiln_lora_load_memory(const void *buf, size_t size, const char *name, kiln_lora **out);
void kiln_lora_free(kiln_lora *l);

/* What one kiln_lora_apply did. */
typedef struct kiln_lora_apply_info {
    int n_applied;              /* modules merged into a weight */
    int n_unmatched;            /* modules whose key matches no layer of this model (skipped, as A1111) */
    char unmatched[512];        /* the first unmatched keys, ", "-separated (for a log line) */
} kiln_lora_apply_info;

/* Merges l into m's weights with the two multipliers. Returns the number of unmatched (skipped)
 * modules, >= 0, or a negative KILN_E* status: a target whose shape does not fit the LoRA
 * (the message names the key and both shapes), a module on a layer that is neither Linear nor
 * Conv2d. On error nothing of this LoRA stays applied. info may be NULL. Applying several LoRAs
 * one after the other gives A1111's per-layer sum in its order. */
int kiln_lora_apply_ex(struct kiln_model *m, const kiln_lora *l, float te_multiplier, float unet_multiplier,
                       kiln_lora_apply_info *info);
int kiln_lora_apply(struct kiln_model *m, const kiln_lora *l, float te_multiplier, float unet_multiplier);

/* Puts back the tensors every kiln_lora_apply since the last restore changed (each one's version is
 * bumped again, so backends re-upload). Returns the number of tensors restored. */
int kiln_model_restore_weights(struct kiln_model *m);

/* Resolves a <lora:NAME> name in dir (searched recursively, .safetensors only): a file whose stem is
 * NAME, else one whose ss_output_name metadata is NAME (A1111's alias). Writes the path to path_out.
 * KILN_ENOTFOUND names the directory and the name. */
int kiln_lora_find(const char *dir, const char *name, char *path_out, size_t size);

/* ---- key mapping (lora_keys.c), exposed for tests ---- */

/* A1111 convert_diffusers_name_to_compvis on a kohya key (no part suffix), generalised to the model's
 * block counts: writes the A1111 network layer name, or the key unchanged when no rule matches. */
int kiln_lora_convert_key(const kiln_model_config *cfg, const char *key, char *out, size_t size);

/* Which weight of the model a kohya key changes. */
typedef struct kiln_lora_target {
    char layer[256];            /* A1111's sd_key: the converted key that matched (decides the multiplier) */
    char weight[256];           /* canonical weight name, e.g. model.diffusion_model.middle_block.1.proj_in.weight */
    int row_block;              /* -1: the whole weight; 0/1/2: the q/k/v rows of a fused in_proj_weight */
    int is_text_encoder;        /* "transformer" within the first 20 characters of layer */
} kiln_lora_target;

typedef struct kiln_lora_layers kiln_lora_layers; /* the model's layer-name index */

int kiln_lora_layers_build(const struct kiln_model *m, kiln_lora_layers **out);
void kiln_lora_layers_free(kiln_lora_layers *t);
/* 0 and *target, or KILN_ENOTFOUND (no message set: an unmatched key is not an error). */
int kiln_lora_resolve(const kiln_lora_layers *t, const kiln_model_config *cfg, const char *key,
                      kiln_lora_target *target);

#endif
