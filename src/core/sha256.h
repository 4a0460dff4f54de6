/* sha256.h — SHA-256 of files and buffers (OpenSSL), and the short hashes A1111 prints.
 *
 * A1111 names files by hash in its infotext:
 *  - "Model hash" / "VAE hash" ("AutoV2"): sha256 of the whole file, first 10 hex digits.
 *  - LoRA "Lora hashes" ("AutoV3", addnet_hash_safetensors): for a .safetensors file, sha256 of
 *    everything after the header (bytes 8+N .. end, N = the little-endian u64 at offset 0),
 *    first 12 hex digits. (A LoRA whose metadata has "sshs_model_hash" uses that instead: the caller's job.)
 *  - Textual inversion "TI hashes": sha256 of the whole file, first 12 hex digits.
 * Files are streamed in 1 MiB chunks; nothing is mapped or held in memory. */
#ifndef KILN_CORE_SHA256_H
#define KILN_CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

#define KILN_SHA256_LEN 32

/* sha256 of size bytes. Cannot fail except for an OpenSSL failure (KILN_ENOMEM). */
int kiln_sha256(const void *data, size_t size, uint8_t digest[KILN_SHA256_LEN]);
/* sha256 of a file from byte offset to its end (offset 0: the whole file). Fails with KILN_EIO
 * (message names the path) if it cannot be read, KILN_EFORMAT if offset is past the end. */
int kiln_sha256_file(const char *path, uint64_t offset, uint8_t digest[KILN_SHA256_LEN]);
/* Lower-case hex of a digest: 64 characters and a NUL. */
void kiln_sha256_hex(const uint8_t digest[KILN_SHA256_LEN], char hex[65]);

/* A1111 "Model hash" (AutoV2): the first 10 hex digits of the file's sha256. */
int kiln_hash_autov2(const char *path, char out[11]);
/* A1111 addnet_hash_safetensors (AutoV3): the full 64-digit hash of the data after the safetensors
 * header; LoRA "Lora hashes" print its first 12 digits (out[12] = 0 gives that). */
int kiln_hash_addnet_safetensors(const char *path, char hex[65]);

#endif
