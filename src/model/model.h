/* model.h — the loaded model behind the public kiln_model handle, and the loaders' internal API.
 *
 * Every loader's job: put each tensor into the weight store under its canonical (LDM single-file)
 * name, keeping the files mapped, then fill the config from the store (infer_config.c), so both
 * layouts yield identical stores and identical configs. */
#ifndef KILN_MODEL_MODEL_H
#define KILN_MODEL_MODEL_H

#include "core/log.h"
#include "io/safetensors.h"
#include "model/model_config.h"
#include "model/weights.h"

#define KILN_MODEL_MAX_FILES 16

struct kiln_lora_backup; /* model/lora.c: the original tensors of LoRA-merged weights */

struct kiln_model {
    char *path;                            /* what the user gave (file or folder) */
    char *name;                            /* display name (file stem / folder name), A1111 "Model:" */
    kiln_model_config config;
    kiln_weights *weights;                 /* canonical names -> tensors */
    int n_files;
    kiln_st_file *files[KILN_MODEL_MAX_FILES]; /* mapped files the weights point into */
    int n_ckpt_files;
    struct kiln_ckpt_file *ckpt_files[KILN_MODEL_MAX_FILES]; /* .ckpt checkpoints the weights point into */
    int n_ignored;                         /* tensors skipped (EMA copies, optimizer state, int tensors) */
    char *vocab_dir;                       /* diffusers tokenizer/ folder, if any (NULL otherwise) */
    kiln_logger log;                       /* kiln_model_options.log */
    struct kiln_lora_backup *lora_backup;  /* originals of weights a LoRA changed (NULL = none changed) */
};

/* Frees the backup without restoring anything (model/lora.c); used by kiln_model_free. */
void kiln_lora_backup_free(struct kiln_lora_backup *b);

/* Opens a safetensors file and keeps it in model->files. */
int kiln_model_open_file(struct kiln_model *m, const char *path, kiln_st_file **out);

/* A1111/LDM single file (.safetensors, or a PyTorch .ckpt read without running any pickle code): every tensor under model.diffusion_model., first_stage_model.,
 * cond_stage_model. / conditioner. is added as is; CLIP keys lacking "text_model." are normalised. */
int kiln_load_single_file(struct kiln_model *m, const char *path);
/* A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/): tensors renamed to LDM names. */
int kiln_load_diffusers(struct kiln_model *m, const char *dir);
/* A separate VAE file (A1111 "SD VAE"): LDM names with or without "first_stage_model.", or diffusers VAE names;
 * replaces the checkpoint's first_stage_model.* tensors. */
int kiln_load_vae_file(struct kiln_model *m, const char *path);

/* Diffusers -> LDM name of one tensor. component: "unet", "vae" or "text_encoder". num_res_blocks is the UNet's
 * layers_per_block (needed for the block index arithmetic); attn_levels[i] is nonzero when down level i has
 * attention (decides output_blocks.N.1 vs .2 for upsamplers). Returns 0 and writes out, or KILN_ENOTFOUND when
 * the name has no LDM counterpart (the message names it). */
int kiln_diffusers_to_ldm(const char *component, const char *name, int num_res_blocks, int n_levels,
                          const int *attn_levels, char *out, size_t out_size);

/* Fills m->config from the tensor names and shapes in m->weights; reports missing or mis-shaped tensors by name. */
int kiln_infer_config(struct kiln_model *m);

#endif
