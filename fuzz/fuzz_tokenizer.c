/* fuzz_tokenizer.c — libFuzzer target for the CLIP tokenizer: arbitrary bytes (valid UTF-8 or
 * not) must tokenize or be refused cleanly, never crash, leak or read out of bounds.
 * The vocabulary is loaded once, from $KILN_CLIP_VOCAB or the repository's data/ copy.
 * Also checks invariants: the id count does not depend on the output capacity, the ids are in
 * the vocabulary, and the result is the same when the word cache is warm. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "text/tokenizer.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

static kiln_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *path = getenv("KILN_CLIP_VOCAB");
    if (!path || !*path) path = KILN_SOURCE_DIR "/data/bpe_simple_vocab_16e6.txt.gz";
    if (kiln_tokenizer_load(path, &tok) != KILN_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", kiln_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    enum { CAP = 64 };
    int32_t ids[CAP];
    size_t n = 0;
    int rc = kiln_tokenize_n(tok, (const char *)data, size, ids, CAP, &n);
    if (rc != KILN_OK) {
        if (rc != KILN_EINVAL || strstr(kiln_last_error(), "byte offset") == NULL) abort();
        return 0;
    }
    const kiln_vocab *v = kiln_tokenizer_vocab(tok);
    for (size_t i = 0; i < n && i < CAP; i++)
        if (ids[i] < 0 || ids[i] >= v->n_ids) abort();

    /* Again with room for every id (and a warm cache): same count, same prefix. */
    int32_t *all = malloc((n + 1) * sizeof *all);
    size_t n2 = 0;
    if (!all) return 0;
    if (kiln_tokenize_n(tok, (const char *)data, size, all, n + 1, &n2) != KILN_OK || n2 != n) abort();
    for (size_t i = 0; i < n && i < CAP; i++)
        if (all[i] != ids[i]) abort();
    free(all);

    /* The NUL-terminated entry point agrees on text without NUL bytes. */
    if (size < 4096 && memchr(data, 0, size) == NULL) {
        char *s = malloc(size + 1);
        if (!s) return 0;
        memcpy(s, data, size);
        s[size] = '\0';
        size_t n3 = 0;
        if (kiln_tokenize(tok, s, NULL, 0, &n3) != KILN_OK || n3 != n) abort();
        free(s);
    }
    return 0;
}
