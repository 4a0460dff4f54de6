/* prompt_schedule.c — A1111 prompt editing ([from:to:when]) and alternation ([a|b]):
 * get_learned_conditioning_prompt_schedules of webui v1.9.4, by hand.
 *
 * A1111 parses the prompt with this lark grammar (Earley parser):
 *
 *   !start: (prompt | /[][():]/+)*
 *   prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
 *   !emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
 *   scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
 *   alternate: "[" prompt ("|" [prompt])+ "]"
 *   WHITESPACE: /\s+/            plain: /([^\\\[\]():|]|\\.)+/        NUMBER: SIGNED_NUMBER
 *
 * and prints the tree back for each step, replacing every scheduled/alternate node by its choice.
 * Inside a `prompt` every bracket must belong to a well-formed construct; only at the top level may
 * stray brackets and colons stand as text. So a construct starting at a given '(' or '[' has at most
 * one reading, found by recursive descent; at the top level a bracket that starts no valid
 * construct is a stray character. A '|' outside a valid alternation, or a backslash at the end or
 * before a newline, makes the whole parse fail, and A1111 then uses the prompt unchanged. */
#include "core/error.h"
#include "core/strbuf.h"
#include "text/prompt_parser.h"
#include "text/pytext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { N_TEXT, N_SCHED, N_ALT };

typedef struct node node;

typedef struct seq { /* a `prompt`: a sequence of nodes */
    node *v;
    int n, cap;
} seq;

struct node {
    int kind;
    size_t a, b;       /* N_TEXT: the verbatim text s[a..b) */
    seq *subs;         /* N_SCHED: subs[0] = before, subs[1] = after; N_ALT: the options */
    int n_subs;
    int has_before;    /* N_SCHED: "[from:to:when]" rather than "[to:when]" */
    size_t num_a, num_b; /* N_SCHED: the NUMBER token */
    int when;          /* N_SCHED: the step, once computed */
};

/* Nesting deeper than this is treated as stray brackets; A1111 itself fails with Python's
 * RecursionError well before it. */
#define MAX_DEPTH 256

typedef struct parser {
    const char *s;
    size_t len;
    unsigned char *failed; /* failed[i]: the construct at s[i] is known not to parse */
    int depth, depth_hits;
} parser;

static void seq_clear(seq *q);

static void node_free(node *nd) {
    for (int i = 0; i < nd->n_subs; i++) seq_clear(&nd->subs[i]);
    free(nd->subs);
}

static void seq_clear(seq *q) {
    for (int i = 0; i < q->n; i++) node_free(&q->v[i]);
    free(q->v);
    memset(q, 0, sizeof *q);
}

static void seq_truncate(seq *q, int n) {
    for (int i = n; i < q->n; i++) node_free(&q->v[i]);
    q->n = n;
}

static node *seq_push(seq *q, int kind) {
    if (q->n == q->cap) {
        int cap = q->cap ? q->cap * 2 : 8;
        node *p = realloc(q->v, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        q->v = p;
        q->cap = cap;
    }
    node *nd = &q->v[q->n++];
    memset(nd, 0, sizeof *nd);
    nd->kind = kind;
    return nd;
}

static int push_text(seq *q, size_t a, size_t b) {
    node *nd = seq_push(q, N_TEXT);
    if (!nd) return kiln_error(KILN_ENOMEM, "out of memory parsing a prompt schedule");
    nd->a = a;
    nd->b = b;
    return 1;
}

static size_t next_cp(const parser *P, size_t i, int32_t *cp) {
    int n = kiln_py_utf8_next(P->s + i, P->len - i, cp);
    if (n == 0) {
        *cp = (unsigned char)P->s[i];
        return 1;
    }
    return (size_t)n;
}

static size_t skip_space(const parser *P, size_t i) {
    int32_t cp;
    while (i < P->len) {
        size_t n = next_cp(P, i, &cp);
        if (!kiln_py_isspace(cp)) break;
        i += n;
    }
    return i;
}

/* ":" already read; matches [WHITESPACE] SIGNED_NUMBER [WHITESPACE] "]" at s[i]. */
static int match_number_tail(const parser *P, size_t i, size_t *num_a, size_t *num_b, size_t *end) {
    const char *s = P->s;
    size_t len = P->len, j = skip_space(P, i), a = j;
    if (j < len && (s[j] == '+' || s[j] == '-')) j++;
    size_t int_digits = 0, frac_digits = 0;
    while (j < len && s[j] >= '0' && s[j] <= '9') j++, int_digits++;
    if (j < len && s[j] == '.') {
        size_t k = j + 1;
        while (k < len && s[k] >= '0' && s[k] <= '9') k++, frac_digits++;
        if (int_digits + frac_digits > 0) j = k;
    }
    if (int_digits + frac_digits == 0) return 0;
    if (j < len && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < len && (s[k] == '+' || s[k] == '-')) k++;
        size_t e = k;
        while (k < len && s[k] >= '0' && s[k] <= '9') k++;
        if (k > e) j = k;
    }
    size_t b = j;
    j = skip_space(P, j);
    if (j >= len || s[j] != ']') return 0;
    *num_a = a;
    *num_b = b;
    *end = j + 1;
    return 1;
}

static int parse_square(parser *P, size_t i, seq *out, size_t *end);
static int parse_round(parser *P, size_t i, seq *out, size_t *end);

/* A `prompt` from s[i] up to the next ':', '|', ']', ')' or the end. Returns 1 and the stop
 * position, 0 if it does not parse, or a negative error. */
static int parse_prompt(parser *P, size_t i, seq *out, size_t *end) {
    const char *s = P->s;
    while (i < P->len) {
        char c = s[i];
        int r;
        size_t j;
        if (c == ':' || c == '|' || c == ']' || c == ')') break;
        if (c == '(' || c == '[') {
            r = c == '(' ? parse_round(P, i, out, &j) : parse_square(P, i, out, &j);
            if (r != 1) return r;
            i = j;
        } else if (c == '\\') {
            int32_t cp;
            if (i + 1 >= P->len || s[i + 1] == '\n') return 0;
            j = i + 1 + next_cp(P, i + 1, &cp);
            if ((r = push_text(out, i, j)) != 1) return r;
            i = j;
        } else {
            j = i;
            while (j < P->len && !strchr("\\[]():|", s[j])) j++;
            if ((r = push_text(out, i, j)) != 1) return r;
            i = j;
        }
    }
    *end = i;
    return 1;
}

/* Bookkeeping shared by the two construct parsers: depth limit and the memo of failures. */
static int enter(parser *P, size_t i) {
    if (P->failed[i]) return 0;
    if (P->depth >= MAX_DEPTH) {
        P->depth_hits++;
        return 0;
    }
    P->depth++;
    return 1;
}

static int leave(parser *P, size_t i, int r, int hits_before, seq *out, int n_before) {
    P->depth--;
    if (r != 1) {
        seq_truncate(out, n_before);
        if (r == 0 && P->depth_hits == hits_before) P->failed[i] = 1;
    }
    return r;
}

/* "(" prompt ")" | "(" prompt ":" prompt ")": kept verbatim (schedules inside still resolved). */
static int parse_round(parser *P, size_t i, seq *out, size_t *end) {
    if (!enter(P, i)) return 0;
    int hits = P->depth_hits, n0 = out->n, r;
    size_t j;
    if ((r = push_text(out, i, i + 1)) != 1) goto done;
    if ((r = parse_prompt(P, i + 1, out, &j)) != 1) goto done;
    if (j < P->len && P->s[j] == ':') {
        if ((r = push_text(out, j, j + 1)) != 1) goto done;
        if ((r = parse_prompt(P, j + 1, out, &j)) != 1) goto done;
    }
    r = 0;
    if (j < P->len && P->s[j] == ')') {
        r = push_text(out, j, j + 1);
        *end = j + 1;
    }
done:
    return leave(P, i, r, hits, out, n0);
}

/* "[" prompt "]" (verbatim) | scheduled | alternate */
static int parse_square(parser *P, size_t i, seq *out, size_t *end) {
    if (!enter(P, i)) return 0;
    int hits = P->depth_hits, n0 = out->n, r;
    size_t j, na, nb, e;
    seq first = {0};
    node *nd = NULL;
    if ((r = parse_prompt(P, i + 1, &first, &j)) != 1) goto done;
    r = 0;
    if (j >= P->len) goto done;
    char c = P->s[j];
    if (c == ']') { /* emphasized: "[" + its prompt + "]" */
        if ((r = push_text(out, i, i + 1)) != 1) goto done;
        for (int k = 0; k < first.n; k++) {
            node *dst = seq_push(out, first.v[k].kind);
            if (!dst) { r = kiln_error(KILN_ENOMEM, "out of memory parsing a prompt schedule"); goto done; }
            *dst = first.v[k]; /* moves the node's children */
        }
        first.n = 0;
        r = push_text(out, j, j + 1);
        *end = j + 1;
    } else if (c == '|') {
        if (!(nd = seq_push(out, N_ALT))) { r = kiln_error(KILN_ENOMEM, "out of memory"); goto done; }
        int cap = 0;
        seq opt = first;
        memset(&first, 0, sizeof first);
        for (;;) {
            if (nd->n_subs == cap) {
                cap = cap ? cap * 2 : 4;
                seq *p = realloc(nd->subs, (size_t)cap * sizeof *p);
                if (!p) { seq_clear(&opt); r = kiln_error(KILN_ENOMEM, "out of memory"); goto done; }
                nd->subs = p;
            }
            nd->subs[nd->n_subs++] = opt;
            memset(&opt, 0, sizeof opt);
            if (j >= P->len || P->s[j] != '|') break;
            if ((r = parse_prompt(P, j + 1, &opt, &j)) != 1) { seq_clear(&opt); goto done; }
        }
        r = 0;
        if (j < P->len && P->s[j] == ']') {
            r = 1;
            *end = j + 1;
        }
    } else if (c == ':') {
        if (!(nd = seq_push(out, N_SCHED)) || !(nd->subs = calloc(2, sizeof(seq)))) {
            r = kiln_error(KILN_ENOMEM, "out of memory parsing a prompt schedule");
            goto done;
        }
        nd->n_subs = 2;
        if (match_number_tail(P, j + 1, &na, &nb, &e)) { /* [to:when] */
            nd->subs[1] = first;
        } else { /* [from:to:when] */
            nd->has_before = 1;
            nd->subs[0] = first;
            if ((r = parse_prompt(P, j + 1, &nd->subs[1], &j)) != 1) { memset(&first, 0, sizeof first); goto done; }
            r = 0;
            if (!(j < P->len && P->s[j] == ':' && match_number_tail(P, j + 1, &na, &nb, &e))) {
                memset(&first, 0, sizeof first);
                goto done;
            }
        }
        memset(&first, 0, sizeof first);
        nd->num_a = na;
        nd->num_b = nb;
        r = 1;
        *end = e;
    }
done:
    seq_clear(&first);
    return leave(P, i, r, hits, out, n0);
}

/* The `start` rule. Returns 1, 0 when the prompt does not parse, or a negative error. */
static int parse_start(parser *P, seq *out) {
    const char *s = P->s;
    size_t i = 0, j;
    int r;
    while (i < P->len) {
        char c = s[i];
        if (c == '(' || c == '[') {
            r = c == '(' ? parse_round(P, i, out, &j) : parse_square(P, i, out, &j);
            if (r < 0) return r;
            if (r == 0) j = i + 1; /* a stray bracket */
            if (r == 0 && (r = push_text(out, i, j)) != 1) return r;
        } else if (c == ')' || c == ']' || c == ':') {
            j = i + 1;
            if ((r = push_text(out, i, j)) != 1) return r;
        } else if (c == '|') {
            return 0;
        } else if (c == '\\') {
            int32_t cp;
            if (i + 1 >= P->len || s[i + 1] == '\n') return 0;
            j = i + 1 + next_cp(P, i + 1, &cp);
            if ((r = push_text(out, i, j)) != 1) return r;
        } else {
            j = i;
            while (j < P->len && !strchr("\\[]():|", s[j])) j++;
            if ((r = push_text(out, i, j)) != 1) return r;
        }
        i = j;
    }
    return 1;
}

/* ---- steps ------------------------------------------------------------------------------------ */

typedef struct sched_ctx {
    int steps, int_offset, use_old;
    double flt_offset;
    unsigned char *used; /* used[t] for t in 1..steps */
} sched_ctx;

static int collect(const parser *P, seq *q, sched_ctx *C) {
    for (int k = 0; k < q->n; k++) {
        node *nd = &q->v[k];
        if (nd->kind == N_SCHED) {
            const char *num = P->s + nd->num_a;
            size_t n = nd->num_b - nd->num_a;
            double v;
            KILN_TRY(kiln_py_float(num, n, &v));
            if (C->use_old) {
                if (v < 1) v *= C->steps;
            } else if (memchr(num, '.', n)) {
                v = (v - C->flt_offset) * C->steps;
            } else {
                v = v - C->int_offset;
            }
            if (!isfinite(v))
                return kiln_error(KILN_EINVAL, "prompt: the step '%.*s' of a [from:to:when] edit is not finite",
                                  (int)(n > 40 ? 40 : n), num);
            if (v >= C->steps) nd->when = C->steps;
            else if (v <= -1e9) nd->when = -1000000000;
            else nd->when = (int)v; /* Python int(): truncation toward zero */
            if (nd->when >= 1) C->used[nd->when] = 1;
        } else if (nd->kind == N_ALT) {
            for (int t = 1; t <= C->steps; t++) C->used[t] = 1;
        }
        for (int i = 0; i < nd->n_subs; i++) KILN_TRY(collect(P, &nd->subs[i], C));
    }
    return 0;
}


/* A1111's AtStep transformer: the text of the tree at `step`. */
static int render(const parser *P, const seq *q, int step, kiln_strbuf *b) {
    for (int k = 0; k < q->n; k++) {
        const node *nd = &q->v[k];
        if (nd->kind == N_TEXT) {
            KILN_TRY(kiln_strbuf_add(b, P->s + nd->a, nd->b - nd->a));
        } else if (nd->kind == N_SCHED) {
            if (step <= nd->when) {
                if (nd->has_before) KILN_TRY(render(P, &nd->subs[0], step, b));
            } else {
                KILN_TRY(render(P, &nd->subs[1], step, b));
            }
        } else {
            KILN_TRY(render(P, &nd->subs[(step - 1) % nd->n_subs], step, b));
        }
    }
    return 0;
}

static int entry_push(kiln_prompt_schedule *out, int end_at_step, char *text) {
    kiln_prompt_schedule_entry *p = realloc(out->items, (size_t)(out->n + 1) * sizeof *p);
    if (!p) {
        free(text);
        return kiln_error(KILN_ENOMEM, "out of memory building a prompt schedule");
    }
    out->items = p;
    p[out->n].end_at_step = end_at_step;
    p[out->n].text = text;
    out->n++;
    return 0;
}

int kiln_prompt_get_schedule(const char *prompt, const kiln_prompt_schedule_options *opts, kiln_prompt_schedule *out) {
    memset(out, 0, sizeof *out);
    if (!prompt || !opts) return kiln_error(KILN_EINVAL, "prompt schedule: prompt or options is NULL");
    if (opts->steps < 1) return kiln_error(KILN_EINVAL, "prompt schedule: steps must be >= 1, got %d", opts->steps);
    if (opts->hires_steps < 0)
        return kiln_error(KILN_EINVAL, "prompt schedule: hires_steps must be >= 0, got %d", opts->hires_steps);
    size_t len = strlen(prompt);
    KILN_TRY(kiln_py_check_utf8(prompt, len, "prompt"));

    sched_ctx C = {opts->steps, 0, opts->use_old_scheduling != 0, 0.0, NULL};
    if (opts->hires_steps > 0 && !opts->use_old_scheduling) {
        C.int_offset = opts->steps;
        C.flt_offset = 1.0;
        C.steps = opts->hires_steps;
    }
    parser P = {prompt, len, calloc(len + 1, 1), 0, 0};
    C.used = calloc((size_t)C.steps + 1, 1);
    seq tree = {0};
    int rc = (!P.failed || !C.used) ? kiln_error(KILN_ENOMEM, "out of memory parsing a prompt schedule") : 0;
    int parsed = 0;
    if (rc == 0) {
        rc = parse_start(&P, &tree);
        if (rc >= 0) {
            parsed = rc;
            rc = 0;
        }
    }
    if (rc == 0 && !parsed) { /* A1111 catches the parse error and keeps the prompt as it is */
        char *t = malloc(len + 1);
        if (!t) rc = kiln_error(KILN_ENOMEM, "out of memory");
        else {
            memcpy(t, prompt, len + 1);
            rc = entry_push(out, C.steps, t);
        }
    }
    if (rc == 0 && parsed) {
        C.used[C.steps] = 1;
        rc = collect(&P, &tree, &C);
        for (int t = 1; rc == 0 && t <= C.steps; t++) {
            if (!C.used[t]) continue;
            kiln_strbuf b = {0};
            rc = kiln_strbuf_add(&b, "", 0);
            if (rc == 0) rc = render(&P, &tree, t, &b);
            if (rc == 0) rc = entry_push(out, t, b.s);
            else free(b.s);
        }
    }
    seq_clear(&tree);
    free(P.failed);
    free(C.used);
    if (rc) kiln_prompt_schedule_free(out);
    return rc;
}

void kiln_prompt_schedule_free(kiln_prompt_schedule *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->items[i].text);
    free(s->items);
    s->items = NULL;
    s->n = 0;
}

const char *kiln_prompt_schedule_at(const kiln_prompt_schedule *s, int step) {
    if (!s || s->n == 0) return "";
    for (int i = 0; i < s->n; i++)
        if (step <= s->items[i].end_at_step) return s->items[i].text;
    return s->items[0].text;
}
