/* weights.h — a store of named weight tensors, the bridge between files and plans.
 *
 * Loaders fill it under canonical names: the LDM / A1111 single-file names
 * ("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.bias",
 * "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"), whatever
 * layout the files had. Data either points into a mapped file (not owned) or into a
 * buffer the store owns (converted, reshaped or LoRA-merged tensors). */
#ifndef KILN_MODEL_WEIGHTS_H
#define KILN_MODEL_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"

typedef struct kiln_weight {
    char *name;          /* canonical name */
    kiln_dtype dtype;    /* F32, F16 or BF16 */
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    const void *data;    /* little-endian values */
    void *owned;         /* non-NULL when the store owns data (freed with the store) */
    const char *source;  /* file it came from, for messages (not owned) */
    uint64_t version;    /* bumped when the values change (LoRA merge): backends re-upload */
} kiln_weight;

typedef struct kiln_weights {
    int n, cap;
    kiln_weight *items;
    int *hash;           /* open-addressing index into items, size hash_cap */
    int hash_cap;
} kiln_weights;

kiln_weights *kiln_weights_new(void);
void kiln_weights_free(kiln_weights *w);
/* Adds (or replaces) a tensor that points into memory the caller keeps alive. */
int kiln_weights_add_view(kiln_weights *w, const char *name, kiln_dtype dtype, int ndim, const int64_t *shape,
                          const void *data, const char *source);
/* Adds (or replaces) a float32 tensor; the store takes ownership of data (malloc'd). */
int kiln_weights_add_owned_f32(kiln_weights *w, const char *name, int ndim, const int64_t *shape, float *data,
                               const char *source);
/* Adds (or replaces) a tensor of any weight dtype whose data (malloc'd) the store takes over, even on failure.
 * Used for tensors a loader had to build (fused q/k/v, transposed projections). */
int kiln_weights_add_owned(kiln_weights *w, const char *name, kiln_dtype dtype, int ndim, const int64_t *shape,
                           void *data, const char *source);
const kiln_weight *kiln_weights_find(const kiln_weights *w, const char *name);
int64_t kiln_weight_numel(const kiln_weight *t);
/* Converts the tensor to float32 into dst (numel floats). */
void kiln_weight_to_f32(const kiln_weight *t, float *dst);
/* "[320, 4, 3, 3]" into buf. */
const char *kiln_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);

#endif
