/* zip.h — a read-only view of a zip archive held in memory (an mmap'ed file), enough for PyTorch
 * checkpoints: stored and deflated members, zip64 sizes and offsets, no encryption, one disk.
 * Every offset and size is checked against the buffer; nothing is trusted. */
#ifndef KILN_IO_ZIP_H
#define KILN_IO_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

typedef struct kiln_zip_entry {
    char *name;             /* NUL-terminated copy of the member name */
    int method;             /* 0 stored, 8 deflate */
    uint32_t crc32;
    uint64_t comp_size;     /* bytes at data */
    uint64_t size;          /* uncompressed bytes */
    const uint8_t *data;    /* the member's (compressed) bytes inside the buffer */
} kiln_zip_entry;

typedef struct kiln_zip {
    int n_entries;
    kiln_zip_entry *entries; /* central directory order */
} kiln_zip;

/* Parses the central directory of buf[0..size). name is used in messages. The entries point into
 * buf, which must outlive the kiln_zip. */
int kiln_zip_open(const void *buf, size_t size, const char *name, kiln_zip *out);
void kiln_zip_close(kiln_zip *z);
/* The entry of that exact name, or NULL. */
const kiln_zip_entry *kiln_zip_find(const kiln_zip *z, const char *name);
/* The uncompressed bytes of e: for a stored member a pointer into the buffer (*owned = NULL),
 * for a deflated one a malloc'ed copy (*owned = that copy, the caller frees it), CRC-checked. */
int kiln_zip_read(const kiln_zip_entry *e, const char *name, const uint8_t **data, void **owned);

#endif
