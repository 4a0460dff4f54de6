/* safetensors.h — reading (mmap) and writing .safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "string", ...}}, then the data section.
 * The reader checks every offset against the file size, the byte count against
 * dtype x shape, and that no two tensors overlap; any failure names the file and tensor. */
#ifndef KILN_IO_SAFETENSORS_H
#define KILN_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum kiln_dtype {
    KILN_F32,
    KILN_F16,
    KILN_BF16,
    KILN_I64, /* read only so loaders can skip it (CLIP position_ids) */
    KILN_I32,
    KILN_U8,
    KILN_F64, /* read only (fixtures' float64 references) */
    KILN_DTYPE_COUNT
} kiln_dtype;

/* "F32", "F16", ... as safetensors spells them. */
const char *kiln_dtype_name(kiln_dtype dtype);
size_t kiln_dtype_size(kiln_dtype dtype);

#define KILN_MAX_DIMS 8

typedef struct kiln_st_tensor {
    char *name;                    /* tensor name as stored */
    kiln_dtype dtype;
    int ndim;                      /* 0 for a scalar */
    int64_t shape[KILN_MAX_DIMS];
    const void *data;              /* points into the mapped file (little-endian) */
    size_t nbytes;
} kiln_st_tensor;

typedef struct kiln_st_file {
    char *path;
    int n_tensors;
    kiln_st_tensor *tensors;       /* in data-offset order */
    int n_meta;
    char **meta_keys, **meta_values; /* __metadata__ string pairs */
    void *map;                     /* the mapping (private) */
    size_t map_size;
} kiln_st_file;

/* Opens and validates a file. On failure *out is untouched and the message names the file. */
int kiln_st_open(const char *path, kiln_st_file **out);
/* Same checks on an in-memory image (not copied: buf must outlive the handle). Used by the fuzzer. */
int kiln_st_open_memory(const void *buf, size_t size, const char *name, kiln_st_file **out);
void kiln_st_close(kiln_st_file *f);
/* The tensor of that name, or NULL. */
const kiln_st_tensor *kiln_st_find(const kiln_st_file *f, const char *name);
/* The metadata value of that key, or NULL. */
const char *kiln_st_meta(const kiln_st_file *f, const char *key);

/* Reads any float tensor (F32/F16/BF16) into float32. dst holds numel floats. */
void kiln_st_to_f32(const kiln_st_tensor *t, float *dst);
int64_t kiln_st_numel(const kiln_st_tensor *t);

/* Half-precision conversions (round to nearest even). */
float kiln_f16_to_f32(uint16_t h);
uint16_t kiln_f32_to_f16(float f);
float kiln_bf16_to_f32(uint16_t h);
uint16_t kiln_f32_to_bf16(float f);

/* ---- writer ---- */
typedef struct kiln_st_write_tensor {
    const char *name;
    kiln_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;              /* nbytes = numel x dtype size */
} kiln_st_write_tensor;

/* Writes tensors (and optional metadata pairs) to path atomically: to path.tmp, then rename,
 * so an existing file is never left half-written. */
int kiln_st_write(const char *path, const kiln_st_write_tensor *tensors, int n_tensors,
                  const char *const *meta_keys, const char *const *meta_values, int n_meta);

#endif
