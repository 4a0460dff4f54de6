/* model_config.h — the one description of a Stable Diffusion model: family and every hyper-parameter.
 *
 * Filled in one place (src/model/infer_config.c from tensor names and shapes; the diffusers loader from its
 * config.json files) so that network builders never test "is this SDXL?": they read these fields. */
#ifndef KILN_MODEL_CONFIG_H
#define KILN_MODEL_CONFIG_H

#define KILN_MAX_LEVELS 4

typedef enum kiln_family { KILN_FAMILY_UNKNOWN, KILN_FAMILY_SD1, KILN_FAMILY_SD2, KILN_FAMILY_SDXL } kiln_family;
typedef enum kiln_prediction { KILN_PREDICT_EPS, KILN_PREDICT_V } kiln_prediction;

typedef struct kiln_unet_config {
    int in_channels, out_channels;     /* 4, 4 (9 for inpainting models) */
    int model_channels;                /* base width (SD1.5: 320) */
    int n_levels;                      /* resolution levels (SD1: 4, SDXL: 3) */
    int channel_mult[KILN_MAX_LEVELS]; /* width of level i = model_channels * channel_mult[i] */
    int num_res_blocks;                /* resnets per level on the way down (up: one more) */
    int transformer_depth[KILN_MAX_LEVELS]; /* transformer blocks per attention at level i; 0 = no attention */
    int mid_transformer_depth;         /* transformer blocks in the middle block's attention */
    int context_dim;                   /* cross-attention context width (SD1: 768) */
    int num_heads;                     /* fixed head count (SD1: 8), or 0 when head_dim is fixed */
    int head_dim;                      /* fixed head size (SD2/SDXL: 64), or 0 when num_heads is fixed */
    int use_linear_proj;               /* transformer proj_in/out are Linear (SD2/SDXL) rather than 1x1 conv */
    int time_embed_dim;                /* model_channels * 4 */
    int adm_in_channels;               /* SDXL "label_emb" input width (pooled + size embeddings), 0 = none */
    int groups;                        /* GroupNorm groups (32) */
} kiln_unet_config;

typedef struct kiln_vae_config {
    int in_channels;                   /* image channels (3) */
    int z_channels;                    /* latent channels (4) */
    int base_channels;                 /* ch (SD: 128) */
    int n_levels;
    int channel_mult[KILN_MAX_LEVELS];
    int num_res_blocks;                /* per level in the encoder; the decoder has one more */
    int groups;                        /* GroupNorm groups (32) */
    double scaling_factor;             /* 0.18215 (SDXL: 0.13025); double, as Python computes 1/scale */
} kiln_vae_config;

typedef enum kiln_clip_act { KILN_CLIP_QUICK_GELU, KILN_CLIP_GELU } kiln_clip_act;

typedef struct kiln_clip_config {
    const char *prefix;                /* canonical weight-name prefix ending in '.', e.g.
                                          "cond_stage_model.transformer.text_model." */
    int vocab_size, max_positions;     /* 49408, 77 */
    int hidden, mlp, layers, heads;    /* SD1: 768, 3072, 12, 12 */
    kiln_clip_act act;
    float eps;                         /* LayerNorm eps 1e-5 */
    int has_projection;                /* a text_projection exists (SDXL's second encoder: pooled output) */
    int projection_dim;
} kiln_clip_config;

typedef struct kiln_model_config {
    kiln_family family;
    kiln_prediction prediction;
    kiln_unet_config unet;
    kiln_vae_config vae;
    int n_text_encoders;               /* SD1/SD2: 1, SDXL: 2 */
    kiln_clip_config clip[2];
} kiln_model_config;

const char *kiln_family_name(kiln_family f);

#endif
