/* tokenizer.h — internal interface of the CLIP BPE tokenizer (src/text/): the vocabulary
 * (vocab.c), the text clean-up that A1111's tokenizer applies before splitting (tokenizer.c)
 * and lower-level entry points used by tests, the fuzzer and the prompt parser.
 * The public API (kiln_tokenizer_load / kiln_tokenize / kiln_tokenizer_free) is in kiln.h. */
#ifndef KILN_TEXT_TOKENIZER_H
#define KILN_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

/* The CLIP vocabulary: token strings, their ids and the BPE merge ranks.
 * Immutable after kiln_vocab_load, so it can be shared between threads. */
typedef struct kiln_vocab {
    int32_t n_ids;          /* ids are 0 .. n_ids-1 (49408 for CLIP) */
    char **pieces;          /* id -> NUL-terminated UTF-8 token string; NULL for an id no string uses */
    uint32_t *str_slots;    /* open-addressing hash set of ids keyed by their string; 0 = empty, else id+1 */
    size_t str_cap;         /* slots in str_slots, a power of two */
    struct kiln_merge_slot {
        uint64_t key;       /* (left id << 32) | right id; UINT64_MAX = empty */
        int32_t rank;       /* line of the merge in merges.txt, 0 = applied first */
        int32_t result;     /* id of the merged string */
    } *merge_slots;
    size_t merge_cap;       /* slots in merge_slots, a power of two */
    int32_t n_merges;
    int32_t byte_id[256];     /* id of the one-byte token for each byte (bytes_to_unicode char) */
    int32_t byte_end_id[256]; /* the same with "</w>" appended (last symbol of a word) */
    int32_t bos_id;           /* "<|startoftext|>" */
    int32_t eos_id;           /* "<|endoftext|>" */
} kiln_vocab;

/* Loads a vocabulary. path: a bpe_simple_vocab_16e6.txt(.gz) file, a diffusers tokenizer
 * folder (vocab.json + merges.txt), a model folder holding tokenizer/, or a vocab.json file
 * (merges.txt beside it). path NULL: the default search ($KILN_CLIP_VOCAB,
 * ${XDG_DATA_HOME:-$HOME/.local/share}/kiln/, KILN_DATA_DIR); the error lists each place tried. */
int kiln_vocab_load(const char *path, kiln_vocab **out);
void kiln_vocab_free(kiln_vocab *vocab);
/* Id of the token string s (len bytes), or -1. */
int32_t kiln_vocab_lookup(const kiln_vocab *vocab, const char *s, size_t len);
/* Looks up the merge of the pair (left, right): returns 1 and sets *rank and *result, or 0. */
int kiln_vocab_merge(const kiln_vocab *vocab, int32_t left, int32_t right, int32_t *rank, int32_t *result);

/* Like kiln_tokenize, for text of len bytes (which may contain NUL bytes; they are control
 * characters that the ftfy step removes). */
int kiln_tokenize_n(const kiln_tokenizer *tok, const char *text, size_t len, int32_t *ids, size_t cap,
                    size_t *n_ids);
/* The token string of an id (e.g. "cat</w>"), or NULL when id is out of range. */
const char *kiln_tokenizer_piece(const kiln_tokenizer *tok, int32_t id);
/* The vocabulary a tokenizer uses. */
const kiln_vocab *kiln_tokenizer_vocab(const kiln_tokenizer *tok);

/* The text A1111's tokenizer splits into words: ftfy.fix_text, whitespace runs -> one space,
 * strip, Python str.lower(). Ignores special tokens (it cleans the whole text as one piece).
 * *out is a malloc'd NUL-terminated UTF-8 string (free it); *out_len its length.
 * Fails with KILN_EINVAL on invalid UTF-8. */
int kiln_tokenizer_clean_text(const char *text, size_t len, char **out, size_t *out_len);

/* Strict UTF-8 decoding (no overlong forms, surrogates or values above U+10FFFF).
 * On success *out is a malloc'd array of *out_n code points (non-NULL even when empty).
 * On failure returns KILN_EINVAL with a message giving the byte offset of the bad sequence. */
int kiln_utf8_decode(const char *text, size_t len, uint32_t **out, size_t *out_n);
/* Appends the UTF-8 form of code point c (a valid scalar value) to buf; returns the byte count (1-4). */
size_t kiln_utf8_encode(uint32_t c, char *buf);

#endif
