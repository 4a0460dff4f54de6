/* ckpt.h — reading PyTorch .ckpt/.pt/.pth checkpoints (the zip format of torch >= 1.6) without
 * Python and without running any code from them.
 *
 * The archive holds PREFIX/data.pkl (a pickle of the object that was saved) and PREFIX/data/KEY
 * (one raw little-endian storage per key). data.pkl is read by a restricted interpreter
 * (io/ckpt_pickle.c) that knows torch's tensor rebuild functions and storage types and refuses every
 * other global. The tensors come out as kiln_st_tensor records like a safetensors file's:
 *  - if the top object is a dict with a "state_dict" dict (Lightning/LDM checkpoints), that dict's
 *    tensors; otherwise the top dict's tensors;
 *  - nested dicts are flattened with "." ("string_to_param" -> {"*": t} gives "string_to_param.*");
 *    non-tensor values (ints, strings, numpy scalars, ...) are skipped;
 *  - data points into the mapped file when the member is stored and the tensor contiguous;
 *    otherwise (deflated member, non-contiguous strides) into a contiguous copy owned by the file;
 *  - dtypes: Float F32, Half F16, BFloat16 BF16, Long I64, Int I32, Byte/Bool U8, Double converted
 *    to F32; Short and Char (int8) tensors are refused with a message naming the tensor.
 * Legacy (pre-1.6, non-zip) torch files and big-endian archives are refused. */
#ifndef KILN_IO_CKPT_H
#define KILN_IO_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"
#include "kiln.h"

typedef struct kiln_ckpt_file {
    char *path;
    int n_tensors;
    kiln_st_tensor *tensors; /* in the pickle's (insertion) order; names owned by the file */
    void *map;               /* the mapping (private) */
    size_t map_size;
    void *priv;              /* copies and bookkeeping (private) */
} kiln_ckpt_file;

/* Opens, parses and validates a checkpoint file (mmap). On failure *out is untouched and the
 * message names the file and, where it applies, the tensor or pickle position. */
int kiln_ckpt_open(const char *path, kiln_ckpt_file **out);
/* Same from memory (not copied: buf must outlive the handle). Used by the fuzzer and tests. */
int kiln_ckpt_open_memory(const void *buf, size_t size, const char *name, kiln_ckpt_file **out);
void kiln_ckpt_close(kiln_ckpt_file *f);
/* The tensor of that name, or NULL. */
const kiln_st_tensor *kiln_ckpt_find(const kiln_ckpt_file *f, const char *name);
/* 1 if the bytes look like a torch zip checkpoint (a zip whose first member ends in data.pkl or
 * lives under a folder with one); a cheap check before kiln_ckpt_open. */
int kiln_ckpt_sniff(const void *buf, size_t size);

#endif
