/* chunker.c — A1111's tokenize_line: weighted prompt fragments -> 77-token CLIP chunks with
 * per-token multipliers and textual-inversion fixes (see chunker.h). */
#include "text/chunker.h"

#include "core/error.h"
#include "text/prompt_parser.h"

#include <stdlib.h>
#include <string.h>

void kiln_chunker_options_init(kiln_chunker_options *opts) {
    memset(opts, 0, sizeof *opts);
    opts->comma_padding_backtrack = 20;
}

/* The chunk being filled (A1111 PromptChunk without BOS/EOS). Holds up to 75 tokens. */
typedef struct cur_chunk {
    int32_t tokens[KILN_CHUNK_TOKENS];
    float mults[KILN_CHUNK_TOKENS];
    int n;
} cur_chunk;

typedef struct chunk_state {
    kiln_prompt_chunks *out;
    int cap_chunks, cap_fixes;
    cur_chunk cur;
    int last_comma;
} chunk_state;

/* next_chunk(): pad the current chunk, add BOS/EOS, append it to the output, start a new one. */
static int next_chunk(chunk_state *S, int is_last) {
    kiln_prompt_chunks *o = S->out;
    o->token_count += is_last ? S->cur.n : KILN_CHUNK_TOKENS;
    if (o->n_chunks == S->cap_chunks) {
        int cap = S->cap_chunks ? S->cap_chunks * 2 : 2;
        int32_t *t = realloc(o->tokens, (size_t)cap * KILN_CHUNK_LEN * sizeof *t);
        if (t) o->tokens = t;
        float *m = realloc(o->multipliers, (size_t)cap * KILN_CHUNK_LEN * sizeof *m);
        if (m) o->multipliers = m;
        if (!t || !m) return kiln_error(KILN_ENOMEM, "out of memory chunking a prompt");
        S->cap_chunks = cap;
    }
    int32_t *t = o->tokens + (size_t)o->n_chunks * KILN_CHUNK_LEN;
    float *m = o->multipliers + (size_t)o->n_chunks * KILN_CHUNK_LEN;
    t[0] = KILN_TOKEN_BOS;
    m[0] = 1.0f;
    for (int i = 0; i < KILN_CHUNK_TOKENS; i++) {
        t[1 + i] = i < S->cur.n ? S->cur.tokens[i] : KILN_TOKEN_EOS;
        m[1 + i] = i < S->cur.n ? S->cur.mults[i] : 1.0f;
    }
    t[KILN_CHUNK_LEN - 1] = KILN_TOKEN_EOS;
    m[KILN_CHUNK_LEN - 1] = 1.0f;
    o->n_chunks++;
    S->cur.n = 0;
    S->last_comma = -1;
    return 0;
}

static int add_fix(chunk_state *S, int embedding, int n_vectors) {
    kiln_prompt_chunks *o = S->out;
    if (o->n_fixes == S->cap_fixes) {
        int cap = S->cap_fixes ? S->cap_fixes * 2 : 4;
        kiln_chunk_fix *f = realloc(o->fixes, (size_t)cap * sizeof *f);
        if (!f) return kiln_error(KILN_ENOMEM, "out of memory chunking a prompt");
        o->fixes = f;
        S->cap_fixes = cap;
    }
    kiln_chunk_fix *f = &o->fixes[o->n_fixes++];
    f->chunk = o->n_chunks; /* the chunk being filled */
    f->offset = S->cur.n;
    f->embedding = embedding;
    f->n_vectors = n_vectors;
    return 0;
}

/* EmbeddingDatabase.find_embedding_at_position: the longest name (ties: first registered) whose ids
 * start at ids[pos]; -1 if none. order lists the embeddings longest name first. */
static int find_embedding(const kiln_chunker_options *opts, const int *order, const int32_t *ids, int n_ids,
                          int pos) {
    for (int k = 0; k < opts->n_embeddings; k++) {
        const kiln_embedding_ref *e = &opts->embeddings[order[k]];
        if (e->n_name_ids > n_ids - pos) continue;
        if (memcmp(ids + pos, e->name_ids, (size_t)e->n_name_ids * sizeof(int32_t)) == 0) return order[k];
    }
    return -1;
}

static int check_embeddings(const kiln_chunker_options *opts) {
    for (int i = 0; i < opts->n_embeddings; i++) {
        const kiln_embedding_ref *e = &opts->embeddings[i];
        const char *name = e->name ? e->name : "(unnamed)";
        if (e->n_vectors < 1 || e->n_vectors > KILN_CHUNK_TOKENS)
            return kiln_error(KILN_EINVAL, "embedding '%s' has %d vectors; a prompt chunk holds 1 to %d", name,
                              e->n_vectors, KILN_CHUNK_TOKENS);
        if (e->n_name_ids < 1 || !e->name_ids)
            return kiln_error(KILN_EINVAL, "embedding '%s': its name has no token ids", name);
    }
    return 0;
}

static int chunk_all(chunk_state *S, const kiln_token_fragment *frags, int n_frags, const kiln_chunker_options *opts,
                     const int *order) {
    cur_chunk *c = &S->cur;
    for (int f = 0; f < n_frags; f++) {
        if (frags[f].is_break) {
            KILN_TRY(next_chunk(S, 0));
            continue;
        }
        const int32_t *ids = frags[f].ids;
        int n_ids = frags[f].n_ids, pos = 0;
        float w = (float)frags[f].weight;
        while (pos < n_ids) {
            int32_t token = ids[pos];
            if (token == KILN_TOKEN_COMMA) {
                S->last_comma = c->n;
            } else if (opts->comma_padding_backtrack != 0 && c->n == KILN_CHUNK_TOKENS && S->last_comma != -1 &&
                       c->n - S->last_comma <= opts->comma_padding_backtrack) {
                /* move the tokens after the last comma to the next chunk. As in A1111, embedding fixes
                 * already recorded stay with the old chunk. */
                int from = S->last_comma + 1, n_move = c->n - from;
                int32_t tok_move[KILN_CHUNK_TOKENS];
                float mult_move[KILN_CHUNK_TOKENS];
                memcpy(tok_move, c->tokens + from, (size_t)n_move * sizeof *tok_move);
                memcpy(mult_move, c->mults + from, (size_t)n_move * sizeof *mult_move);
                c->n = from;
                KILN_TRY(next_chunk(S, 0));
                memcpy(c->tokens, tok_move, (size_t)n_move * sizeof *tok_move);
                memcpy(c->mults, mult_move, (size_t)n_move * sizeof *mult_move);
                c->n = n_move;
            }
            if (c->n == KILN_CHUNK_TOKENS) KILN_TRY(next_chunk(S, 0));

            int e = opts->n_embeddings > 0 ? find_embedding(opts, order, ids, n_ids, pos) : -1;
            if (e < 0) {
                c->tokens[c->n] = token;
                c->mults[c->n] = w;
                c->n++;
                pos++;
                continue;
            }
            int n_vec = opts->embeddings[e].n_vectors;
            if (c->n + n_vec > KILN_CHUNK_TOKENS) KILN_TRY(next_chunk(S, 0));
            KILN_TRY(add_fix(S, e, n_vec));
            for (int k = 0; k < n_vec; k++) {
                c->tokens[c->n] = 0;
                c->mults[c->n] = w;
                c->n++;
            }
            pos += opts->embeddings[e].n_name_ids;
        }
    }
    if (c->n > 0 || S->out->n_chunks == 0) KILN_TRY(next_chunk(S, 1));
    return 0;
}

int kiln_chunk_fragments(const kiln_token_fragment *frags, int n_frags, const kiln_chunker_options *opts,
                         kiln_prompt_chunks *out) {
    memset(out, 0, sizeof *out);
    kiln_chunker_options defaults;
    if (!opts) {
        kiln_chunker_options_init(&defaults);
        opts = &defaults;
    }
    if (n_frags < 0 || (n_frags > 0 && !frags)) return kiln_error(KILN_EINVAL, "chunker: no fragments given");
    KILN_TRY(check_embeddings(opts));
    /* lookup order: longest name first, ties in the order given (A1111 sorts stably) */
    int *order = malloc((size_t)(opts->n_embeddings > 0 ? opts->n_embeddings : 1) * sizeof *order);
    if (!order) return kiln_error(KILN_ENOMEM, "out of memory chunking a prompt");
    for (int i = 0; i < opts->n_embeddings; i++) {
        int j = i;
        while (j > 0 && opts->embeddings[order[j - 1]].n_name_ids < opts->embeddings[i].n_name_ids) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    chunk_state S = {.out = out, .last_comma = -1};
    int rc = chunk_all(&S, frags, n_frags, opts, order);
    free(order);
    if (rc) kiln_prompt_chunks_free(out);
    return rc;
}

int kiln_prompt_chunk(const kiln_tokenizer *tok, const char *prompt, const kiln_chunker_options *opts,
                      kiln_prompt_chunks *out) {
    memset(out, 0, sizeof *out);
    if (!tok || !prompt) return kiln_error(KILN_EINVAL, "kiln_prompt_chunk: tokenizer or prompt is NULL");
    kiln_chunker_options defaults;
    if (!opts) {
        kiln_chunker_options_init(&defaults);
        opts = &defaults;
    }
    kiln_prompt_fragments parsed = {0};
    int rc;
    if (opts->emphasis_none) {
        /* A1111 emphasis "None": [[line, 1.0]], no BREAK handling either */
        parsed.items = calloc(1, sizeof *parsed.items);
        if (parsed.items) parsed.items[0].text = strdup(prompt);
        if (!parsed.items || !parsed.items[0].text) {
            kiln_prompt_fragments_free(&(kiln_prompt_fragments){parsed.items, parsed.items ? 1 : 0});
            return kiln_error(KILN_ENOMEM, "out of memory chunking a prompt");
        }
        parsed.items[0].weight = 1.0;
        parsed.n = 1;
    } else {
        KILN_TRY(kiln_prompt_parse_attention(prompt, &parsed));
    }
    kiln_token_fragment *frags = calloc((size_t)parsed.n, sizeof *frags);
    rc = frags ? 0 : kiln_error(KILN_ENOMEM, "out of memory chunking a prompt");
    for (int i = 0; rc == 0 && i < parsed.n; i++) {
        frags[i].weight = parsed.items[i].weight;
        frags[i].is_break = !opts->emphasis_none && kiln_prompt_fragment_is_break(&parsed.items[i]);
        if (frags[i].is_break) continue;
        /* a token takes at least one byte of the cleaned text; retry in the rare case ftfy or
         * lowercasing made the text longer than the guess */
        size_t cap = 2 * strlen(parsed.items[i].text) + 16, n = 0;
        int32_t *ids = NULL;
        for (int attempt = 0; rc == 0 && attempt < 2; attempt++) {
            int32_t *p = realloc(ids, cap * sizeof *ids);
            if (!p) {
                rc = kiln_error(KILN_ENOMEM, "out of memory chunking a prompt");
                break;
            }
            ids = p;
            rc = kiln_tokenize(tok, parsed.items[i].text, ids, cap, &n);
            if (rc == 0 && n <= cap) break;
            cap = n;
        }
        if (rc == 0 && n > (size_t)1 << 30) rc = kiln_error(KILN_EINVAL, "prompt is too long (%zu tokens)", n);
        frags[i].ids = ids;
        frags[i].n_ids = (int)n;
    }
    if (rc == 0) rc = kiln_chunk_fragments(frags, parsed.n, opts, out);
    if (frags)
        for (int i = 0; i < parsed.n; i++) free((void *)frags[i].ids);
    free(frags);
    kiln_prompt_fragments_free(&parsed);
    return rc;
}

void kiln_prompt_chunks_free(kiln_prompt_chunks *c) {
    if (!c) return;
    free(c->tokens);
    free(c->multipliers);
    free(c->fixes);
    memset(c, 0, sizeof *c);
}
