/* ftfy.c — the subset of ftfy.fix_text (ftfy 6.x defaults) that changes prompts before A1111's
 * CLIP tokenizer sees them, re-done on code point arrays so that kiln gets the same token ids.
 *
 * ftfy.fix_text cuts the text after each "\n" (and every 1,000,000 code points) and fixes each
 * segment on its own, repeating its fixers until the segment stops changing:
 *   unescape_html, [fix_encoding], fix_c1_controls, fix_latin_ligatures, fix_character_width,
 *   uncurl_quotes, fix_line_breaks, fix_surrogates, remove_terminal_escapes,
 *   remove_control_chars, then NFC normalisation.
 * HTML entities are only decoded while no segment so far contained '<' (unescape_html="auto").
 * fix_encoding (mojibake repair driven by ftfy's "badness" heuristics and several legacy code
 * pages) is not reproduced: it leaves ASCII text and text without mojibake alone, which is what
 * prompts are. fix_surrogates has nothing to do: valid UTF-8 holds no surrogates, and the HTML
 * decoder turns surrogate references into U+FFFD as Python's html.unescape does. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "kiln.h"
#include "text/ftfy.h"
#include "text/tokenizer.h"

#include "text/ftfy_entities.inc"

#define FTFY_MAX_SEGMENT 1000000 /* ftfy's max_decode_length */

/* A growable array of code points. */
typedef struct cpbuf {
    uint32_t *v;
    size_t n, cap;
} cpbuf;

static int cp_reserve(cpbuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) cap *= 2;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) return KILN_ENOMEM;
    b->v = v, b->cap = cap;
    return 0;
}

static int cp_push(cpbuf *b, uint32_t c) {
    if (b->n == b->cap && cp_reserve(b, 1)) return KILN_ENOMEM;
    b->v[b->n++] = c;
    return 0;
}

static int cp_push_n(cpbuf *b, const uint32_t *c, size_t n) {
    if (n == 0) return 0;
    if (cp_reserve(b, n)) return KILN_ENOMEM;
    memcpy(b->v + b->n, c, n * sizeof *c);
    b->n += n;
    return 0;
}

/* Appends a UTF-8 string known to be valid (table data). */
static int cp_push_utf8(cpbuf *b, const char *s) {
    uint32_t *cps;
    size_t n;
    if (kiln_utf8_decode(s, strlen(s), &cps, &n) < 0) return KILN_ENOMEM;
    int rc = cp_push_n(b, cps, n);
    free(cps);
    return rc;
}

/* ---- unescape_html ---------------------------------------------------------------------------- */

static int is_ascii_alnum(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int entity_cmp(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const struct ftfy_entity *)elem)->name);
}

/* Windows-1252 for bytes 0x80-0x9F, with the five undefined bytes standing for themselves
 * (ftfy's "sloppy-windows-1252"; Python's html module maps numeric references the same way). */
static const uint16_t cp1252_high[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

/* Python's html.unescape on "&#DIGITS;" / "&#xHEX;": value -> replacement (0 or 1 code point).
 * Returns the number of code points written to *out. */
static int numeric_reference(uint64_t num, uint32_t *out) {
    if (num == 0) return *out = 0xFFFD, 1;
    if (num == 0x0D) return *out = '\r', 1;
    if (num >= 0x80 && num <= 0x9F) return *out = cp1252_high[num - 0x80], 1;
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return *out = 0xFFFD, 1;
    /* html's _invalid_codepoints decode to nothing. */
    if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) || num == 0x7F ||
        (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
        return 0;
    return *out = (uint32_t)num, 1;
}

/* Decodes "&#...;" the way ftfy does: html.unescape the match, and keep the original text when
 * that left a ';' (only part of it was a reference). d..end is the part between "&#" and ";".
 * Returns 1 and the replacement when it decodes. */
static int decode_numeric(const uint32_t *d, size_t len, uint32_t *out, int *out_n) {
    int hex = d[0] == 'x' || d[0] == 'X';
    size_t start = hex ? 1 : 0;
    if (start == len) return 0;
    uint64_t num = 0;
    for (size_t i = start; i < len; i++) {
        uint32_t c = d[i];
        int digit;
        if (c >= '0' && c <= '9')
            digit = (int)(c - '0');
        else if (hex && c >= 'a' && c <= 'f')
            digit = (int)(c - 'a' + 10);
        else if (hex && c >= 'A' && c <= 'F')
            digit = (int)(c - 'A' + 10);
        else
            return 0; /* html.unescape stops early and leaves the ';': ftfy keeps the text */
        num = num * (hex ? 16 : 10) + (uint64_t)digit;
        if (num > 0x10FFFF) num = 0x110000; /* any larger value decodes the same way */
    }
    int n = numeric_reference(num, out);
    if (n == 1 && *out == ';') return 0; /* "&#59;" -> ";" still contains ';': kept as text */
    *out_n = n;
    return 1;
}

/* ftfy.fixes.unescape_html: every match of &#?[0-9A-Za-z]{1,24}; that names an entity of the
 * table, or is a complete numeric reference, is replaced; the text is scanned once. */
static int unescape_html(const cpbuf *in, cpbuf *out) {
    out->n = 0;
    size_t n = in->n;
    const uint32_t *t = in->v;
    for (size_t i = 0; i < n;) {
        if (t[i] != '&') {
            if (cp_push(out, t[i])) return KILN_ENOMEM;
            i++;
            continue;
        }
        size_t k = i + 1;
        int hash = k < n && t[k] == '#';
        k += (size_t)hash;
        size_t run = 0;
        while (k + run < n && run <= 24 && is_ascii_alnum(t[k + run])) run++;
        if (run < 1 || run > 24 || k + run >= n || t[k + run] != ';') {
            if (cp_push(out, '&')) return KILN_ENOMEM;
            i++;
            continue;
        }
        size_t end = k + run + 1; /* one past the ';' */
        int done = 0;
        if (!hash) {
            char name[32];
            for (size_t j = 0; j < run; j++) name[j] = (char)t[k + j];
            name[run] = '\0';
            const struct ftfy_entity *e = bsearch(name, ftfy_entities, sizeof ftfy_entities / sizeof ftfy_entities[0],
                                                  sizeof ftfy_entities[0], entity_cmp);
            if (e) {
                if (cp_push_utf8(out, e->value)) return KILN_ENOMEM;
                done = 1;
            }
        } else {
            uint32_t c;
            int cn = 0;
            if (decode_numeric(t + k, run, &c, &cn)) {
                if (cn && cp_push(out, c)) return KILN_ENOMEM;
                done = 1;
            }
        }
        if (!done && cp_push_n(out, t + i, end - i)) return KILN_ENOMEM;
        i = end;
    }
    return 0;
}

/* ---- the character-by-character fixers -------------------------------------------------------- */

/* fix_latin_ligatures: ftfy's table of Latin ligatures and legacy digraphs. */
static const char *ligature(uint32_t c) {
    switch (c) {
    case 0x0132: return "IJ";
    case 0x0133: return "ij";
    case 0x0149: return "\312\274n"; /* U+02BC + n */
    case 0x01F1: return "DZ";
    case 0x01F2: return "Dz";
    case 0x01F3: return "dz";
    case 0x01C4: return "D\305\275"; /* D + U+017D */
    case 0x01C5: return "D\305\276";
    case 0x01C6: return "d\305\276";
    case 0x01C7: return "LJ";
    case 0x01C8: return "Lj";
    case 0x01C9: return "lj";
    case 0x01CA: return "NJ";
    case 0x01CB: return "Nj";
    case 0x01CC: return "nj";
    case 0xFB00: return "ff";
    case 0xFB01: return "fi";
    case 0xFB02: return "fl";
    case 0xFB03: return "ffi";
    case 0xFB04: return "ffl";
    case 0xFB05: return "\305\277t"; /* U+017F + t */
    case 0xFB06: return "st";
    default: return NULL;
    }
}

/* fix_character_width: U+3000 -> space; U+FF01..U+FFEF -> their NFKC form where it differs. */
static int width_fix(uint32_t c, cpbuf *out) {
    if (c == 0x3000) return cp_push(out, ' ');
    char s[8];
    size_t len = kiln_utf8_encode(c, s);
    utf8proc_uint8_t *m = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &m,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    if (r < 0) return cp_push(out, c); /* unassigned or invalid: no NFKC change */
    int rc = cp_push_utf8(out, (const char *)m);
    free(m);
    return rc;
}

static int is_removed_control(uint32_t c) {
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
           c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes: one pass each would
 * give the same result as one combined pass, because no fixer's output is another's input
 * (C1 -> Windows-1252 gives no ligature or fullwidth form; ligatures and width forms give no
 * curly quote except U+02BC from U+0149, which uncurl_quotes, running after, straightens). */
static int map_chars(const cpbuf *in, cpbuf *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->v[i];
        if (c >= 0x80 && c <= 0x9F) c = cp1252_high[c - 0x80];
        const char *lig = ligature(c);
        int rc;
        if (lig) {
            size_t start = out->n;
            rc = cp_push_utf8(out, lig);
            for (size_t j = start; j < out->n; j++) /* U+02BC from U+0149 is uncurled */
                if (out->v[j] == 0x02BC) out->v[j] = '\'';
        } else if (c == 0x3000 || (c >= 0xFF01 && c <= 0xFFEF)) {
            rc = width_fix(c, out);
        } else if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) {
            rc = cp_push(out, '\'');
        } else if (c >= 0x201C && c <= 0x201F) {
            rc = cp_push(out, '"');
        } else {
            rc = cp_push(out, c);
        }
        if (rc) return rc;
    }
    return 0;
}

/* fix_line_breaks, remove_terminal_escapes, remove_control_chars, in that order. */
static int fix_breaks_and_controls(const cpbuf *in, cpbuf *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) { /* fix_line_breaks */
        uint32_t c = in->v[i];
        if (c == '\r' && i + 1 < in->n && in->v[i + 1] == '\n') continue; /* CRLF -> LF */
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        if (cp_push(out, c)) return KILN_ENOMEM;
    }
    /* remove_terminal_escapes: ESC '[' (\d|;)* [A-Za-z], \d being any Unicode decimal digit
     * (Python's re on str), then remove_control_chars; done in place on out. */
    size_t w = 0;
    for (size_t i = 0; i < out->n;) {
        uint32_t c = out->v[i];
        if (c == 0x1B && i + 1 < out->n && out->v[i + 1] == '[') {
            size_t j = i + 2;
            while (j < out->n && (out->v[j] == ';' || utf8proc_category((utf8proc_int32_t)out->v[j]) == UTF8PROC_CATEGORY_ND))
                j++;
            if (j < out->n && ((out->v[j] | 0x20) >= 'a' && (out->v[j] | 0x20) <= 'z')) {
                i = j + 1;
                continue;
            }
        }
        out->v[w++] = c;
        i++;
    }
    out->n = w;
    w = 0;
    for (size_t i = 0; i < out->n; i++)
        if (!is_removed_control(out->v[i])) out->v[w++] = out->v[i];
    out->n = w;
    return 0;
}

/* unicodedata.normalize("NFC", text) through utf8proc. */
static int nfc(const cpbuf *in, cpbuf *out) {
    out->n = 0;
    int simple = 1; /* text below U+0300 has no decompositions or combining marks */
    for (size_t i = 0; i < in->n && simple; i++) simple = in->v[i] < 0x300;
    if (simple) return cp_push_n(out, in->v, in->n);
    size_t cap = in->n * 4 + 1;
    char *s = malloc(cap);
    if (!s) return KILN_ENOMEM;
    size_t len = 0;
    for (size_t i = 0; i < in->n; i++) len += kiln_utf8_encode(in->v[i], s + len);
    const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t need = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, NULL, 0, opt);
    int rc = 0;
    if (need < 0 || cp_reserve(out, (size_t)need + 1)) {
        rc = KILN_ENOMEM;
    } else {
        utf8proc_ssize_t got = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len,
                                                  (utf8proc_int32_t *)out->v, need, opt);
        if (got >= 0) got = utf8proc_normalize_utf32((utf8proc_int32_t *)out->v, got, opt);
        if (got < 0)
            rc = KILN_ENOMEM;
        else
            out->n = (size_t)got;
    }
    free(s);
    return rc;
}

/* fix_and_explain on one segment: the fixers in order until the text stops changing. */
static int fix_segment(const uint32_t *seg, size_t n, int unescape, cpbuf *result) {
    cpbuf a = {0}, b = {0}, orig = {0};
    int rc = cp_push_n(&a, seg, n);
    while (rc == 0) {
        orig.n = 0;
        if ((rc = cp_push_n(&orig, a.v, a.n))) break;
        if (unescape) {
            if ((rc = unescape_html(&a, &b))) break;
        } else {
            b.n = 0;
            if ((rc = cp_push_n(&b, a.v, a.n))) break;
        }
        if ((rc = map_chars(&b, &a))) break;
        if ((rc = fix_breaks_and_controls(&a, &b))) break;
        if ((rc = nfc(&b, &a))) break;
        if (a.n == orig.n && (a.n == 0 || memcmp(a.v, orig.v, a.n * sizeof *a.v) == 0)) break;
    }
    if (rc == 0) rc = cp_push_n(result, a.v, a.n);
    free(a.v);
    free(b.v);
    free(orig.v);
    return rc;
}

int kiln_ftfy_fix_text(const uint32_t *in, size_t n, uint32_t **out, size_t *out_n) {
    cpbuf result = {0};
    int rc = cp_reserve(&result, n + 1);
    int unescape = 1;
    for (size_t pos = 0; pos < n && rc == 0;) {
        size_t end = pos;
        while (end < n && in[end] != '\n') end++;
        end = end < n ? end + 1 : n; /* the segment keeps its "\n" */
        if (end - pos > FTFY_MAX_SEGMENT) end = pos + FTFY_MAX_SEGMENT;
        for (size_t i = pos; i < end && unescape; i++)
            if (in[i] == '<') unescape = 0; /* stays off for the rest of the text */
        rc = fix_segment(in + pos, end - pos, unescape, &result);
        pos = end;
    }
    if (rc) {
        free(result.v);
        return KILN_ENOMEM;
    }
    *out = result.v;
    *out_n = result.n;
    return 0;
}
