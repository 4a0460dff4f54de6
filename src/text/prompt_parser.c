/* prompt_parser.c — A1111 prompt syntax: attention weights and BREAK (parse_prompt_attention),
 * composable "AND" prompts (get_multicond_prompt_list) and prompt-editing schedules
 * (get_learned_conditioning_prompt_schedules), written by hand to give the results of A1111's
 * regular expressions and lark grammar (webui v1.9.4, modules/prompt_parser.py). */
#include "text/prompt_parser.h"

#include "core/error.h"
#include "core/strbuf.h"
#include "text/pytext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- small growable buffers ------------------------------------------------------------------ */


static char *str_dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Byte length of the code point at s[i] in valid UTF-8 (the input is checked up front). */
static size_t cp_len(const char *s, size_t len, size_t i, int32_t *cp) {
    int n = kiln_py_utf8_next(s + i, len - i, cp);
    if (n == 0) {
        *cp = (unsigned char)s[i];
        return 1;
    }
    return (size_t)n;
}

static int is_word_at(const char *s, size_t len, size_t i) {
    int32_t cp;
    cp_len(s, len, i, &cp);
    return kiln_py_isword(cp);
}

/* A regex \b-delimited occurrence of the ASCII word `w` at s[i] within s[lo..hi). */
static int word_at(const char *s, size_t lo, size_t hi, size_t i, const char *w) {
    size_t n = strlen(w);
    if (i + n > hi || memcmp(s + i, w, n) != 0) return 0;
    if (i > lo && kiln_py_isword(kiln_py_prev_cp(s, i))) return 0;
    if (i + n < hi && is_word_at(s, hi, i + n)) return 0;
    return 1;
}

/* ---- attention --------------------------------------------------------------------------------- */

typedef struct frag_list {
    kiln_prompt_fragment *items;
    int n, cap;
    long long work; /* weight multiplications done so far */
} frag_list;

#define MAX_WEIGHT_UPDATES 100000000

static int frag_push(frag_list *l, const char *s, size_t n, double w) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        kiln_prompt_fragment *p = realloc(l->items, (size_t)cap * sizeof *p);
        if (!p) return kiln_error(KILN_ENOMEM, "out of memory parsing a prompt");
        l->items = p;
        l->cap = cap;
    }
    char *t = str_dup_n(s, n);
    if (!t) return kiln_error(KILN_ENOMEM, "out of memory parsing a prompt");
    l->items[l->n].text = t;
    l->items[l->n].weight = w;
    l->n++;
    return 0;
}

/* A1111 splits every plain-text match on re_break = \s*\bBREAK\b\s* and puts a {"BREAK", -1}
 * fragment between the parts. */
static int push_text_split_break(frag_list *l, const char *s, size_t a, size_t b) {
    size_t seg = a, i = a;
    while (i + 5 <= b) {
        if (!word_at(s, a, b, i, "BREAK")) {
            i++;
            continue;
        }
        size_t left = i, right = i + 5;
        while (left > seg) { /* the leading \s* of the match */
            int32_t cp = kiln_py_prev_cp(s, left);
            if (!kiln_py_isspace(cp)) break;
            size_t k = left - 1;
            while (k > seg && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
            left = k;
        }
        while (right < b) { /* the trailing \s* */
            int32_t cp;
            size_t n = cp_len(s, b, right, &cp);
            if (!kiln_py_isspace(cp)) break;
            right += n;
        }
        KILN_TRY(frag_push(l, s + seg, left - seg, 1.0));
        KILN_TRY(frag_push(l, "BREAK", 5, KILN_PROMPT_BREAK_WEIGHT));
        seg = i = right;
    }
    return frag_push(l, s + seg, b - seg, 1.0);
}

/* re_attention's weighted close ":\s*([+-]?[.\d]+)\s*\)" at s[i] == ':'. On a match returns the
 * end of the match and the span of the number. */
static int match_weight_close(const char *s, size_t len, size_t i, size_t *num_a, size_t *num_b, size_t *end) {
    size_t j = i + 1;
    int32_t cp;
    while (j < len) {
        size_t n = cp_len(s, len, j, &cp);
        if (!kiln_py_isspace(cp)) break;
        j += n;
    }
    size_t a = j;
    if (j < len && (s[j] == '+' || s[j] == '-')) j++;
    size_t digits_from = j;
    while (j < len) {
        size_t n = cp_len(s, len, j, &cp);
        if (cp != '.' && kiln_py_digit(cp) < 0) break;
        j += n;
    }
    if (j == digits_from) return 0;
    size_t b = j;
    while (j < len) {
        size_t n = cp_len(s, len, j, &cp);
        if (!kiln_py_isspace(cp)) break;
        j += n;
    }
    if (j >= len || s[j] != ')') return 0;
    *num_a = a;
    *num_b = b;
    *end = j + 1;
    return 1;
}

typedef struct pos_stack {
    int *v;
    int n, cap;
} pos_stack;

static int stack_push(pos_stack *st, int x) {
    if (st->n == st->cap) {
        int cap = st->cap ? st->cap * 2 : 16;
        int *p = realloc(st->v, (size_t)cap * sizeof *p);
        if (!p) return kiln_error(KILN_ENOMEM, "out of memory parsing a prompt");
        st->v = p;
        st->cap = cap;
    }
    st->v[st->n++] = x;
    return 0;
}

/* A1111 multiplies every fragment from the bracket's opening position on, one bracket at a time;
 * doing the same keeps the doubles bit-identical (1.1 * 1.1 * 1.3 != 1.3 * 1.21). */
static int multiply_range(frag_list *l, int from, double m) {
    /* That is quadratic for prompts like "(a(a(a(a..." (as in A1111); refuse absurd ones instead of
     * stalling for minutes. */
    l->work += l->n - from;
    if (l->work > MAX_WEIGHT_UPDATES)
        return kiln_error(KILN_EINVAL, "prompt: too many nested brackets (over %d weight updates)", MAX_WEIGHT_UPDATES);
    for (int p = from; p < l->n; p++) l->items[p].weight *= m;
    return 0;
}

static int parse_attention(const char *s, size_t len, frag_list *res) {
    pos_stack round = {0}, square = {0};
    const double round_mult = 1.1, square_mult = 1 / 1.1;
    int rc = 0;
    size_t i = 0;
    while (i < len && rc == 0) {
        char c = s[i];
        if (c == '\\') {
            /* \( \) \[ \] \\ give the character; a lone backslash gives an empty fragment */
            if (i + 1 < len && strchr("()[]\\", s[i + 1])) {
                rc = frag_push(res, s + i + 1, 1, 1.0);
                i += 2;
            } else {
                rc = frag_push(res, "", 0, 1.0);
                i += 1;
            }
        } else if (c == '(') {
            rc = stack_push(&round, res->n);
            i++;
        } else if (c == '[') {
            rc = stack_push(&square, res->n);
            i++;
        } else if (c == ':') {
            size_t na, nb, end;
            if (match_weight_close(s, len, i, &na, &nb, &end)) {
                if (round.n > 0) {
                    double w;
                    rc = kiln_py_float(s + na, nb - na, &w);
                    if (rc == 0) rc = multiply_range(res, round.v[--round.n], w);
                    else rc = kiln_error_context(rc, "prompt weight at byte %zu", i);
                } else {
                    rc = push_text_split_break(res, s, i, end);
                }
                i = end;
            } else {
                rc = frag_push(res, ":", 1, 1.0);
                i++;
            }
        } else if (c == ')') {
            if (round.n > 0) rc = multiply_range(res, round.v[--round.n], round_mult);
            else rc = frag_push(res, ")", 1, 1.0);
            i++;
        } else if (c == ']') {
            if (square.n > 0) rc = multiply_range(res, square.v[--square.n], square_mult);
            else rc = frag_push(res, "]", 1, 1.0);
            i++;
        } else {
            size_t j = i;
            while (j < len && !strchr("\\()[]:", s[j])) j++;
            rc = push_text_split_break(res, s, i, j);
            i = j;
        }
    }
    if (rc == 0) {
        /* unclosed brackets close at the end, in the order they were opened */
        for (int k = 0; rc == 0 && k < round.n; k++) rc = multiply_range(res, round.v[k], round_mult);
        for (int k = 0; rc == 0 && k < square.n; k++) rc = multiply_range(res, square.v[k], square_mult);
    }
    free(round.v);
    free(square.v);
    return rc;
}

int kiln_prompt_parse_attention(const char *text, kiln_prompt_fragments *out) {
    memset(out, 0, sizeof *out);
    if (!text) return kiln_error(KILN_EINVAL, "prompt is NULL");
    size_t len = strlen(text);
    KILN_TRY(kiln_py_check_utf8(text, len, "prompt"));
    frag_list res = {0};
    int rc = parse_attention(text, len, &res);
    if (rc == 0 && res.n == 0) rc = frag_push(&res, "", 0, 1.0);
    for (int k = 0; rc == 0 && k < res.n; k++) {
        if (!isfinite(res.items[k].weight))
            rc = kiln_error(KILN_EINVAL, "prompt: the attention weight of \"%.40s\" is %g (not a finite number)",
                            res.items[k].text, res.items[k].weight);
    }
    /* merge runs of identical weights, in one pass (merging never changes a weight) */
    int w = 0, k = 0;
    while (rc == 0 && k < res.n) {
        int e = k + 1;
        while (e < res.n && res.items[e].weight == res.items[k].weight) e++;
        if (e > k + 1) {
            kiln_strbuf b = {0};
            for (int j = k; rc == 0 && j < e; j++) rc = kiln_strbuf_add(&b, res.items[j].text, strlen(res.items[j].text));
            if (rc) {
                free(b.s);
                break;
            }
            for (int j = k; j < e; j++) free(res.items[j].text);
            res.items[k].text = b.s;
        }
        res.items[w++] = res.items[k];
        k = e;
    }
    if (rc) { /* items [0, w) and [k, n) still own their texts */
        for (int j = 0; j < w; j++) free(res.items[j].text);
        for (int j = k; j < res.n; j++) free(res.items[j].text);
        free(res.items);
        return rc;
    }
    res.n = w;
    out->items = res.items;
    out->n = res.n;
    if (rc) kiln_prompt_fragments_free(out);
    return rc;
}

void kiln_prompt_fragments_free(kiln_prompt_fragments *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->items[i].text);
    free(f->items);
    f->items = NULL;
    f->n = 0;
}

int kiln_prompt_fragment_is_break(const kiln_prompt_fragment *f) {
    return f && f->weight == KILN_PROMPT_BREAK_WEIGHT && strcmp(f->text, "BREAK") == 0;
}

/* ---- AND ----------------------------------------------------------------------------------------- */

static int parts_push(kiln_prompt_parts *p, int *cap, const char *s, size_t n, double w) {
    if (p->n == *cap) {
        int c = *cap ? *cap * 2 : 4;
        kiln_prompt_part *q = realloc(p->items, (size_t)c * sizeof *q);
        if (!q) return kiln_error(KILN_ENOMEM, "out of memory splitting a prompt on AND");
        p->items = q;
        *cap = c;
    }
    char *t = str_dup_n(s, n);
    if (!t) return kiln_error(KILN_ENOMEM, "out of memory splitting a prompt on AND");
    p->items[p->n].text = t;
    p->items[p->n].weight = w;
    p->n++;
    return 0;
}

/* re_weight = ^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$ on s[a..b). */
static int split_weight(const char *s, size_t a, size_t b, size_t *text_end, double *w) {
    size_t e = b;
    while (e > a && kiln_py_isspace(kiln_py_prev_cp(s, e))) {
        e--;
        while (e > a && ((unsigned char)s[e] & 0xC0) == 0x80) e--;
    }
    *text_end = e;
    *w = 1.0;
    /* the number can hold no ':', so a weight suffix starts at the last ':' */
    size_t k = e;
    while (k > a && s[k - 1] != ':') k--;
    if (k == a) return 0;
    size_t colon = k - 1, j = k;
    int32_t cp;
    while (j < e) {
        size_t n = cp_len(s, e, j, &cp);
        if (!kiln_py_isspace(cp)) break;
        j += n;
    }
    size_t num = j;
    if (j < e && (s[j] == '+' || s[j] == '-')) j++;
    int digits = 0, dots = 0;
    while (j < e) {
        size_t n = cp_len(s, e, j, &cp);
        if (cp == '.') dots++;
        else if (kiln_py_digit(cp) >= 0) digits++;
        else break;
        j += n;
    }
    if (j != e || digits == 0 || dots > 1) return 0;
    KILN_TRY(kiln_py_float(s + num, e - num, w));
    size_t t = colon;
    while (t > a && kiln_py_isspace(kiln_py_prev_cp(s, t))) {
        t--;
        while (t > a && ((unsigned char)s[t] & 0xC0) == 0x80) t--;
    }
    *text_end = t;
    return 0;
}

int kiln_prompt_split_and(const char *prompt, kiln_prompt_parts *out) {
    memset(out, 0, sizeof *out);
    if (!prompt) return kiln_error(KILN_EINVAL, "prompt is NULL");
    size_t len = strlen(prompt);
    KILN_TRY(kiln_py_check_utf8(prompt, len, "prompt"));
    int cap = 0, rc = 0;
    size_t seg = 0, i = 0;
    for (;;) {
        size_t cut = len;
        while (i + 3 <= len) {
            if (word_at(prompt, 0, len, i, "AND")) {
                cut = i;
                break;
            }
            i++;
        }
        size_t text_end;
        double w;
        rc = split_weight(prompt, seg, cut, &text_end, &w);
        if (rc == 0) rc = parts_push(out, &cap, prompt + seg, text_end - seg, w);
        if (rc || cut == len) break;
        seg = i = cut + 3;
    }
    if (rc) kiln_prompt_parts_free(out);
    return rc;
}

void kiln_prompt_parts_free(kiln_prompt_parts *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) free(p->items[i].text);
    free(p->items);
    p->items = NULL;
    p->n = 0;
}
