/* prompt_parser.h — AUTOMATIC1111's prompt syntax (webui v1.9.4 modules/prompt_parser.py), by hand:
 *
 *  - composable prompts: "a cat AND a dog:0.5"           kiln_prompt_split_and()
 *  - prompt editing and alternation, per sampling step:
 *      [from:to:when] [to:when] [from::when] [a|b|c]     kiln_prompt_get_schedule()
 *  - attention / emphasis and BREAK:
 *      (a) x1.1, [a] /1.1, (a:1.3), \( \) \[ \] \\ literal,
 *      unbalanced brackets close at the end, BREAK      kiln_prompt_parse_attention()
 *
 * A1111 applies them in that order to each prompt (after cutting out <lora:...> tags, see
 * extra_networks.h): split on AND, compute each part's schedule, and for every distinct text of a
 * schedule parse the attention and chunk the tokens (chunker.h). Negative prompts get schedules
 * and attention but no AND split and no tag cutting (get_learned_conditioning).
 *
 * Strings are UTF-8; invalid UTF-8 is rejected with KILN_EINVAL. Results own their memory and are
 * released with the matching *_free (which accepts a zeroed or already freed struct). On failure the
 * output struct is left zeroed. */
#ifndef KILN_TEXT_PROMPT_PARSER_H
#define KILN_TEXT_PROMPT_PARSER_H

/* ---- attention ------------------------------------------------------------------------------- */

/* The weight A1111 gives a BREAK marker fragment (its text is "BREAK"). */
#define KILN_PROMPT_BREAK_WEIGHT (-1.0)

typedef struct kiln_prompt_fragment {
    char *text;    /* the fragment's text, escapes resolved (NUL-terminated, owned) */
    double weight; /* product of the bracket multipliers, as Python computes it (double) */
} kiln_prompt_fragment;

typedef struct kiln_prompt_fragments {
    kiln_prompt_fragment *items;
    int n; /* >= 1 after a successful parse ("" gives one fragment {"", 1.0}) */
} kiln_prompt_fragments;

/* parse_prompt_attention(text): the prompt as (text, weight) fragments, neighbouring fragments of
 * equal weight merged, BREAK markers as {"BREAK", -1}. Like A1111 it never rejects unbalanced
 * brackets. Errors (KILN_EINVAL): invalid UTF-8; a weight A1111 cannot convert ("(a:1.2.3)" — A1111
 * raises ValueError there); a weight that ends up infinite or NaN ("(a:1" + 400 zeros + ")"),
 * which A1111 would turn into a NaN image. */
int kiln_prompt_parse_attention(const char *text, kiln_prompt_fragments *out);
void kiln_prompt_fragments_free(kiln_prompt_fragments *f);
/* 1 if this fragment is a BREAK marker: text "BREAK" and weight exactly -1 (a BREAK inside
 * brackets gets its weight multiplied and is then plain text, as in A1111). */
int kiln_prompt_fragment_is_break(const kiln_prompt_fragment *f);

/* ---- composable prompts (AND) ----------------------------------------------------------------- */

typedef struct kiln_prompt_part {
    char *text;    /* the sub-prompt, its ":weight" suffix and trailing whitespace removed (owned) */
    double weight; /* the ":weight" suffix, 1.0 without one */
} kiln_prompt_part;

typedef struct kiln_prompt_parts {
    kiln_prompt_part *items;
    int n; /* >= 1 */
} kiln_prompt_parts;

/* get_multicond_prompt_list for one prompt: split on the word "AND" (upper case, whole word), each
 * part's trailing "\s*:\s*NUMBER\s*" taken as its weight. Parts are in prompt order and not
 * deduplicated (A1111 shares the conditioning of identical texts; the caller may too). */
int kiln_prompt_split_and(const char *prompt, kiln_prompt_parts *out);
void kiln_prompt_parts_free(kiln_prompt_parts *p);

/* ---- prompt editing schedules ------------------------------------------------------------------ */

typedef struct kiln_prompt_schedule_entry {
    int end_at_step; /* use this text for sampling steps (previous entry's end, end_at_step] (1-based) */
    char *text;      /* the prompt with every [from:to:when] / [a|b] resolved for those steps (owned) */
} kiln_prompt_schedule_entry;

typedef struct kiln_prompt_schedule {
    kiln_prompt_schedule_entry *items;
    int n; /* >= 1; the last entry's end_at_step is the step count */
} kiln_prompt_schedule;

typedef struct kiln_prompt_schedule_options {
    int steps;              /* the sampler's step count (A1111 base_steps), >= 1 */
    int hires_steps;        /* > 0: this is the hires-fix pass with that many steps (A1111 hires_steps) */
    int use_old_scheduling; /* A1111 option "use_old_scheduling" (default off) */
} kiln_prompt_schedule_options;

/* get_learned_conditioning_prompt_schedules([prompt], ...)[0]: the distinct prompt texts and the
 * step each stops at. `when` in [x:y:when] is a fraction of the steps if written with a '.', else
 * a step number; [a|b|c] cycles every step. A prompt that A1111's grammar rejects (a '|' outside
 * [a|b], a trailing backslash) gives one entry with the prompt unchanged, as in A1111.
 * Errors (KILN_EINVAL): invalid UTF-8, steps < 1, a `when` that is infinite ("[a:1e999]", where
 * A1111 raises OverflowError). Where A1111's parser (lark, Earley) is ambiguous its choice depends
 * on Python's string hashing and changes from run to run (e.g. "[a:2]]"); kiln always takes the
 * [from:to:when] / [a|b] reading. */
int kiln_prompt_get_schedule(const char *prompt, const kiln_prompt_schedule_options *opts, kiln_prompt_schedule *out);
void kiln_prompt_schedule_free(kiln_prompt_schedule *s);
/* The text of `s` for A1111's denoiser step counter `step` (CFGDenoiser.step: 0 on the first call,
 * +1 per call): the first entry whose end_at_step >= step, else the first entry, exactly as
 * reconstruct_cond_batch. (So [a:b:3] uses "a" on calls 0..3 — A1111's own off-by-one.) */
const char *kiln_prompt_schedule_at(const kiln_prompt_schedule *s, int step);

#endif
