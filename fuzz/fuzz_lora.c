/* fuzz_lora.c — libFuzzer target for LoRA files: module grouping, key mapping and the merge into a small
 * model with linear, 1x1/3x3 conv, 9-channel conv and fused OpenCLIP attention weights. Any input must be
 * refused with a message or merged; afterwards a restore must give back every original tensor. Seeds:
 * shared/fixtures/tiny-sd15/lora/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/lora.h"
#include "model/model.h"

typedef struct fake_weight {
    const char *name;
    int ndim;
    int64_t shape[4];
} fake_weight;

static const fake_weight fake[] = {
    {"model.diffusion_model.input_blocks.0.0.weight", 4, {8, 4, 3, 3}},
    {"model.diffusion_model.input_blocks.1.1.proj_in.weight", 4, {8, 8, 1, 1}},
    {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", 2, {8, 8}},
    {"model.diffusion_model.input_blocks.1.1.norm.weight", 1, {8}},
    {"model.diffusion_model.out.2.weight", 4, {4, 9, 3, 3}},
    {"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", 2, {16, 8}},
    {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", 2, {24, 8}},
    {"conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight", 2, {8, 8}},
};
#define N_FAKE (int)(sizeof fake / sizeof fake[0])

static struct kiln_model *model;
static const void *original[N_FAKE];

static void setup(void) {
    model = calloc(1, sizeof *model);
    model->weights = kiln_weights_new();
    model->config.family = KILN_FAMILY_SD1;
    model->config.n_text_encoders = 1;
    model->config.unet.num_res_blocks = 2;
    model->config.unet.n_levels = 4;
    for (int l = 0; l < 3; l++) model->config.unet.transformer_depth[l] = 1;
    for (int i = 0; i < N_FAKE; i++) {
        int64_t n = 1;
        for (int d = 0; d < fake[i].ndim; d++) n *= fake[i].shape[d];
        float *v = malloc(sizeof(float) * (size_t)n); /* lives as long as the process, like a mapped file */
        for (int64_t k = 0; k < n; k++) v[k] = (float)(k % 7) * 0.125f;
        kiln_weights_add_view(model->weights, fake[i].name, KILN_F32, fake[i].ndim, fake[i].shape, v, "fuzz");
        original[i] = v;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model) setup();
    kiln_lora *l = NULL;
    if (kiln_lora_load_memory(data, size, "fuzz.safetensors", &l) != 0) return 0;
    kiln_lora_apply_info info;
    kiln_lora_apply_ex(model, l, 0.5f, 1.5f, &info);
    kiln_model_restore_weights(model);
    for (int i = 0; i < N_FAKE; i++)
        if (kiln_weights_find(model->weights, fake[i].name)->data != original[i]) abort();
    kiln_lora_free(l);
    return 0;
}
