/* fuzz_prompt.c — libFuzzer target for the A1111 prompt syntax: arbitrary bytes go through the
 * extra-network tag cutter, AND splitting, prompt-editing schedules, the attention parser and the
 * chunker. Each must succeed or refuse with a message, never crash, leak or read out of bounds,
 * and the results must keep their invariants (a schedule ends at the step count, chunks are
 * BOS + 75 + EOS, fixes lie inside their chunk).
 * The vocabulary for the chunker is loaded once, from $KILN_CLIP_VOCAB or the repository's data/
 * copy; without it the chunker runs on one id per byte. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "text/chunker.h"
#include "text/extra_networks.h"
#include "text/prompt_parser.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

static kiln_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *path = getenv("KILN_CLIP_VOCAB");
    if (!path || !*path) path = KILN_SOURCE_DIR "/data/bpe_simple_vocab_16e6.txt.gz";
    if (kiln_tokenizer_load(path, &tok) != KILN_OK) tok = NULL;
    return 0;
}

static void check_chunks(const kiln_prompt_chunks *ch, int n_embeddings) {
    if (ch->n_chunks < 1) abort();
    for (int c = 0; c < ch->n_chunks; c++) {
        if (ch->tokens[c * KILN_CHUNK_LEN] != KILN_TOKEN_BOS) abort();
        if (ch->tokens[c * KILN_CHUNK_LEN + KILN_CHUNK_LEN - 1] != KILN_TOKEN_EOS) abort();
    }
    for (int i = 0; i < ch->n_fixes; i++) {
        const kiln_chunk_fix *f = &ch->fixes[i];
        if (f->chunk < 0 || f->chunk >= ch->n_chunks || f->offset < 0 || f->offset + f->n_vectors > KILN_CHUNK_TOKENS ||
            f->embedding < 0 || f->embedding >= n_embeddings)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096) return 0;
    int steps = 1 + data[0] % 40;
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0'; /* an embedded NUL just ends the prompt early */

    char *rest = NULL;
    kiln_extra_networks en;
    if (kiln_extra_networks_parse(text, &rest, &en) == 0) {
        for (int i = 0; i < en.n; i++) {
            kiln_lora_request lr;
            (void)kiln_extra_network_lora(&en.items[i], &lr);
        }
        kiln_extra_networks_free(&en);
    } else if (!*kiln_last_error()) {
        abort();
    }

    const char *prompt = rest ? rest : text;
    kiln_prompt_parts parts;
    if (kiln_prompt_split_and(prompt, &parts) == 0) {
        if (parts.n < 1) abort();
        kiln_prompt_parts_free(&parts);
    }

    kiln_prompt_schedule s;
    kiln_prompt_schedule_options so = {steps, data[0] & 0x80 ? steps / 2 : 0, (data[0] & 0x40) != 0};
    if (kiln_prompt_get_schedule(prompt, &so, &s) == 0) {
        if (s.n < 1) abort();
        int last = so.hires_steps > 0 && !so.use_old_scheduling ? so.hires_steps : so.steps;
        if (s.items[s.n - 1].end_at_step != last) abort();
        for (int i = 1; i < s.n; i++)
            if (s.items[i].end_at_step <= s.items[i - 1].end_at_step) abort();
        kiln_prompt_schedule_free(&s);
    }

    kiln_prompt_fragments f;
    if (kiln_prompt_parse_attention(prompt, &f) == 0) {
        if (f.n < 1) abort();
        /* chunk the fragments with one id per byte, commas as the CLIP comma, and an embedding */
        kiln_token_fragment *frags = calloc((size_t)f.n, sizeof *frags);
        for (int i = 0; i < f.n; i++) {
            size_t n = strlen(f.items[i].text);
            int32_t *ids = malloc((n + 1) * sizeof *ids);
            for (size_t k = 0; k < n; k++) ids[k] = f.items[i].text[k] == ',' ? KILN_TOKEN_COMMA : (unsigned char)f.items[i].text[k];
            frags[i] = (kiln_token_fragment){ids, (int)n, f.items[i].weight, kiln_prompt_fragment_is_break(&f.items[i])};
        }
        int32_t name[] = {'t', 'i'};
        kiln_embedding_ref emb = {"ti", 1 + data[0] % 7, name, 2};
        kiln_chunker_options o;
        kiln_chunker_options_init(&o);
        o.embeddings = &emb;
        o.n_embeddings = 1;
        kiln_prompt_chunks ch;
        if (kiln_chunk_fragments(frags, f.n, &o, &ch) == 0) {
            check_chunks(&ch, 1);
            kiln_prompt_chunks_free(&ch);
        }
        for (int i = 0; i < f.n; i++) free((void *)frags[i].ids);
        free(frags);
        kiln_prompt_fragments_free(&f);
    }

    if (tok) {
        kiln_prompt_chunks ch;
        if (kiln_prompt_chunk(tok, prompt, NULL, &ch) == 0) {
            check_chunks(&ch, 0);
            kiln_prompt_chunks_free(&ch);
        }
    }
    free(rest);
    free(text);
    return 0;
}
