/* conditioning.h — a prompt (one AND-part, schedules resolved) to the U-Net's context tensor, as A1111's
 * FrozenCLIPEmbedderWithCustomWords does: 75-token chunks, each encoded alone, emphasis multipliers with
 * "Original" mean renormalisation, textual-inversion vectors, chunks concatenated along the tokens. */
#ifndef KILN_PIPELINE_CONDITIONING_H
#define KILN_PIPELINE_CONDITIONING_H

#include "pipeline/ctx.h"
#include "text/chunker.h"

typedef struct kiln_cond {
    int n_tokens;   /* 77 x chunks */
    int hidden;
    float *data;    /* [n_tokens, hidden], malloc'ed */
} kiln_cond;

/* Textual-inversion embeddings available to prompts: refs for the chunker, vectors[i] = [n_vectors, hidden]. */
typedef struct kiln_ti_set {
    int n;
    const kiln_embedding_ref *refs;
    const float *const *vectors;
} kiln_ti_set;

int kiln_encode_prompt(kiln_ctx *ctx, const char *prompt, int clip_skip, const kiln_ti_set *ti, kiln_cond *out);
/* Encodes already-chunked tokens (the chunker's output): exposed for tests. */
int kiln_encode_chunks(kiln_ctx *ctx, const kiln_prompt_chunks *chunks, int clip_skip, const kiln_ti_set *ti,
                       kiln_cond *out);
void kiln_cond_free(kiln_cond *c);

#endif
