/* sha256.c — streamed SHA-256 over files via OpenSSL EVP, and A1111's short model hashes. */
#include "core/sha256.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/error.h"

int kiln_sha256(const void *data, size_t size, uint8_t digest[KILN_SHA256_LEN]) {
    unsigned int len = 0;
    if (!EVP_Digest(data, size, digest, &len, EVP_sha256(), NULL) || len != KILN_SHA256_LEN)
        return kiln_error(KILN_ENOMEM, "sha256: OpenSSL digest failed");
    return KILN_OK;
}

int kiln_sha256_file(const char *path, uint64_t offset, uint8_t digest[KILN_SHA256_LEN]) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return kiln_error(KILN_EIO, "sha256: cannot open %s: %s", path, strerror(errno));
    int rc = KILN_OK;
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!buf || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = kiln_error(KILN_ENOMEM, "sha256 of %s: out of memory", path);
        goto done;
    }
    if (offset) {
        if (fseeko(fp, 0, SEEK_END) != 0) {
            rc = kiln_error(KILN_EIO, "sha256: cannot seek in %s: %s", path, strerror(errno));
            goto done;
        }
        off_t end = ftello(fp);
        if (end < 0 || (uint64_t)end < offset) {
            rc = kiln_error(KILN_EFORMAT, "sha256 of %s: offset %llu is past the end of the file (%lld bytes)", path,
                            (unsigned long long)offset, (long long)end);
            goto done;
        }
        if (fseeko(fp, (off_t)offset, SEEK_SET) != 0) {
            rc = kiln_error(KILN_EIO, "sha256: cannot seek in %s: %s", path, strerror(errno));
            goto done;
        }
    }
    for (;;) {
        size_t n = fread(buf, 1, CHUNK, fp);
        if (n && !EVP_DigestUpdate(ctx, buf, n)) {
            rc = kiln_error(KILN_ENOMEM, "sha256 of %s: OpenSSL update failed", path);
            goto done;
        }
        if (n < CHUNK) break;
    }
    if (ferror(fp)) {
        rc = kiln_error(KILN_EIO, "sha256: read error in %s", path);
        goto done;
    }
    unsigned int len = 0;
    if (!EVP_DigestFinal_ex(ctx, digest, &len) || len != KILN_SHA256_LEN)
        rc = kiln_error(KILN_ENOMEM, "sha256 of %s: OpenSSL final failed", path);
done:
    EVP_MD_CTX_free(ctx);
    free(buf);
    fclose(fp);
    return rc;
}

void kiln_sha256_hex(const uint8_t digest[KILN_SHA256_LEN], char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < KILN_SHA256_LEN; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = 0;
}

int kiln_hash_autov2(const char *path, char out[11]) {
    uint8_t d[KILN_SHA256_LEN];
    char hex[65];
    KILN_TRY(kiln_sha256_file(path, 0, d));
    kiln_sha256_hex(d, hex);
    memcpy(out, hex, 10);
    out[10] = 0;
    return KILN_OK;
}

int kiln_hash_addnet_safetensors(const char *path, char hex[65]) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return kiln_error(KILN_EIO, "addnet hash: cannot open %s: %s", path, strerror(errno));
    unsigned char h[8];
    size_t got = fread(h, 1, 8, fp);
    fclose(fp);
    if (got != 8) return kiln_error(KILN_EFORMAT, "addnet hash: %s is shorter than a safetensors header", path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | h[i];
    if (n > UINT64_MAX - 8) return kiln_error(KILN_EFORMAT, "addnet hash: %s: header length %llu is absurd", path,
                                              (unsigned long long)n);
    uint8_t d[KILN_SHA256_LEN];
    KILN_TRY(kiln_sha256_file(path, n + 8, d));
    kiln_sha256_hex(d, hex);
    return KILN_OK;
}
