/* chunker.h — a prompt (one schedule text, after extra-network tags are cut out) -> the CLIP
 * inputs A1111 builds for it: FrozenCLIPEmbedderWithCustomWords.tokenize_line of webui v1.9.4
 * (modules/sd_hijack_clip.py), including textual-inversion placement (EmbeddingsWithFixes).
 *
 *  1. parse_prompt_attention (prompt_parser.h) -> fragments with weights, BREAK markers;
 *  2. each fragment tokenized on its own (kiln_tokenize: no BOS/EOS), its tokens keep its weight;
 *  3. tokens fill chunks of 75; a full chunk whose last comma (",</w>") is at most
 *     comma_padding_backtrack tokens back moves the tokens after that comma to the next chunk;
 *     BREAK closes the chunk; an embedding name (its token ids) becomes n_vectors placeholder ids 0
 *     that never straddle two chunks;
 *  4. each chunk = BOS + 75 tokens (padded with EOS) + EOS, multiplier 1.0 on BOS/EOS/padding.
 *     An empty prompt is one chunk [BOS, EOS x 76].
 *
 * The encoder then runs each 77-token chunk separately, writes every fix's vectors over the token
 * embeddings at positions offset+1 .. offset+n_vectors of its chunk (before position embeddings),
 * multiplies the output by the multipliers and restores the mean (A1111 emphasis "Original").
 * A1111's other emphasis modes differ only there: "Ignore" skips the multiplication, "No norm"
 * skips the mean restoration; "None" also skips the attention syntax (emphasis_none below). */
#ifndef KILN_TEXT_CHUNKER_H
#define KILN_TEXT_CHUNKER_H

#include <stdint.h>

#include "kiln.h"

#define KILN_CHUNK_TOKENS 75 /* prompt tokens per chunk */
#define KILN_CHUNK_LEN 77    /* with BOS and EOS */
#define KILN_TOKEN_COMMA 267 /* ",</w>" in the CLIP vocabulary */

/* A textual-inversion embedding as the chunker sees it. */
typedef struct kiln_embedding_ref {
    const char *name;         /* the name typed in prompts (file stem) */
    int n_vectors;            /* rows of its [n, hidden] tensor, 1 .. 75 */
    const int32_t *name_ids;  /* the name tokenized like prompt text (kiln_tokenize, no BOS/EOS) */
    int n_name_ids;           /* >= 1 */
} kiln_embedding_ref;

typedef struct kiln_chunker_options {
    int comma_padding_backtrack; /* A1111 "comma_padding_backtrack", default 20; 0 = off */
    int emphasis_none;           /* A1111 emphasis "None": no attention syntax, whole line at 1.0 */
    const kiln_embedding_ref *embeddings; /* may be NULL when n_embeddings == 0 */
    int n_embeddings;
} kiln_chunker_options;

/* Where an embedding's vectors go: chunk `chunk`, token positions offset+1 .. offset+n_vectors. */
typedef struct kiln_chunk_fix {
    int chunk;
    int offset;    /* among the chunk's 75 prompt tokens (A1111 PromptChunkFix.offset) */
    int embedding; /* index into kiln_chunker_options.embeddings */
    int n_vectors;
} kiln_chunk_fix;

typedef struct kiln_prompt_chunks {
    int n_chunks;         /* >= 1 */
    int32_t *tokens;      /* [n_chunks * 77] */
    float *multipliers;   /* [n_chunks * 77] (float32, as A1111's torch tensor) */
    int n_fixes;
    kiln_chunk_fix *fixes; /* in prompt order */
    int token_count;      /* A1111's token_count: 75 per full chunk + the last chunk's length */
} kiln_prompt_chunks;

/* Options as A1111's defaults: backtrack 20, emphasis "Original", no embeddings. */
void kiln_chunker_options_init(kiln_chunker_options *opts);

/* The whole path: attention parse, tokenization, chunking. opts NULL = defaults.
 * Errors: those of kiln_prompt_parse_attention and kiln_tokenize (invalid UTF-8 ...), and
 * KILN_EINVAL for an embedding with n_vectors outside 1..75 or no name ids. */
int kiln_prompt_chunk(const kiln_tokenizer *tok, const char *prompt, const kiln_chunker_options *opts,
                      kiln_prompt_chunks *out);

/* Step 3-4 alone, for fragments already tokenized (tests, or callers with their own tokenizer). */
typedef struct kiln_token_fragment {
    const int32_t *ids;
    int n_ids;
    double weight;
    int is_break; /* a BREAK marker (kiln_prompt_fragment_is_break); ids ignored */
} kiln_token_fragment;

int kiln_chunk_fragments(const kiln_token_fragment *frags, int n_frags, const kiln_chunker_options *opts,
                         kiln_prompt_chunks *out);

void kiln_prompt_chunks_free(kiln_prompt_chunks *c);

#endif
