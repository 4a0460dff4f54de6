/* ckpt_pickle.h — a restricted pickle reader for PyTorch checkpoints (private to io/ckpt.c).
 *
 * It builds a tree of plain values from the opcodes torch.save emits (protocols 2-5) and never
 * executes anything: a GLOBAL is only a name, and only names from a fixed list are accepted —
 * the tensor rebuild functions and storage types, which it interprets itself, and a few classes
 * found in Stable Diffusion checkpoints (numpy scalars, Lightning callbacks, ...) that become
 * inert placeholders. Any other global fails with a message naming it. */
#ifndef KILN_IO_CKPT_PICKLE_H
#define KILN_IO_CKPT_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"

typedef enum pk_kind {
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_FLOAT,
    PK_STR,     /* unicode text (UTF-8) */
    PK_BYTES,
    PK_TUPLE,
    PK_LIST,
    PK_DICT,    /* dict and OrderedDict: items[2k] = key, items[2k+1] = value */
    PK_SET,
    PK_GLOBAL,  /* an allowed global name, not yet called */
    PK_OPAQUE,  /* an object we do not model (numpy scalar, callback, ...) */
    PK_STORAGE, /* a persistent-id storage reference */
    PK_TENSOR,
    PK_MARK,    /* stack marker only */
} pk_kind;

/* Storage element types, as torch.*Storage names them. */
typedef enum pk_storage_type {
    PK_ST_FLOAT, PK_ST_HALF, PK_ST_BFLOAT16, PK_ST_DOUBLE, PK_ST_LONG, PK_ST_INT, PK_ST_SHORT,
    PK_ST_CHAR, PK_ST_BYTE, PK_ST_BOOL, PK_ST_COUNT
} pk_storage_type;

typedef struct pk_value pk_value;
struct pk_value {
    pk_kind kind;
    int64_t i;        /* BOOL, INT; GLOBAL: which global; STORAGE: numel */
    double f;         /* FLOAT */
    const char *s;    /* STR/BYTES bytes (NUL-terminated), STORAGE key */
    size_t len;
    pk_value **items; /* TUPLE/LIST/SET/DICT */
    size_t n, cap;
    /* STORAGE */
    pk_storage_type st_type;
    const uint8_t *data;   /* filled by io/ckpt.c once the storage's zip member is found */
    uint64_t data_size;
    /* TENSOR */
    pk_value *storage;
    int64_t offset;   /* in elements */
    int ndim;
    int64_t shape[KILN_MAX_DIMS], stride[KILN_MAX_DIMS];
};

typedef struct pk_arena pk_arena;

/* Unpickles data[0..size). On success *root is the top object; all values live in *arena, freed
 * with pk_arena_free (also after a failure). name is used in messages. */
int pk_load(const uint8_t *data, size_t size, const char *name, pk_arena **arena, pk_value **root);
void pk_arena_free(pk_arena *arena);

/* "torch.FloatStorage" etc.; element size in bytes. */
const char *pk_storage_name(pk_storage_type t);
size_t pk_storage_elsize(pk_storage_type t);

#endif
