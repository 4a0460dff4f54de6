/* tokenizer.c — CLIP BPE tokenization exactly as AUTOMATIC1111 gets it from transformers' slow
 * CLIPTokenizer with ftfy installed (tokenizer(text, add_special_tokens=False)):
 *
 *  1. The raw text is cut at the literal special tokens "<|startoftext|>" / "<|endoftext|>"
 *     (transformers' added-token split); those become their ids, the pieces between are
 *     tokenized on their own.
 *  2. Each piece: ftfy.fix_text (ftfy.c), whitespace runs -> one space and strip, Python
 *     str.lower() (full lower-casing: U+0130 -> "i" U+0307, final sigma).
 *  3. Words: regex.findall(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *     [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", text, IGNORECASE), written out by hand.
 *  4. Each word's UTF-8 bytes become the byte tokens (the last one with "</w>") and are merged
 *     by BPE, lowest merge rank first. Results are cached per word.
 * Unicode properties (categories, case mappings, normalisation) come from utf8proc. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "text/ftfy.h"
#include "text/tokenizer.h"

#define CACHE_MAX_ENTRIES 16384 /* the cache is emptied when it holds this many words */
#define CACHE_MAX_WORD 128      /* longer words are not cached */
#define CACHE_BUCKETS 4096

/* One cached word: its bytes and ids, in one allocation. */
typedef struct cache_entry {
    struct cache_entry *next;
    uint64_t hash;
    uint32_t len;   /* bytes of the word */
    uint32_t n_ids; /* ids that follow */
    int32_t ids[];  /* then the word's bytes */
} cache_entry;

struct kiln_tokenizer {
    kiln_vocab *vocab;
    pthread_mutex_t lock; /* guards the cache: kiln_tokenize may run on several threads at once */
    cache_entry *buckets[CACHE_BUCKETS];
    size_t cache_entries;
};

/* ---- UTF-8 ------------------------------------------------------------------------------------ */

int kiln_utf8_decode(const char *text, size_t len, uint32_t **out, size_t *out_n) {
    const unsigned char *s = (const unsigned char *)text;
    uint32_t *cps = malloc((len + 1) * sizeof *cps);
    if (!cps) return kiln_error(KILN_ENOMEM, "out of memory decoding %zu bytes of text", len);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        uint32_t cp, min;
        size_t k;
        if (c < 0x80) {
            cps[n++] = c;
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            cp = c & 0x1F, k = 1, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            cp = c & 0x0F, k = 2, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            cp = c & 0x07, k = 3, min = 0x10000;
        } else {
            free(cps);
            return kiln_error(KILN_EINVAL, "invalid UTF-8 at byte offset %zu (byte 0x%02x cannot start a character)",
                              i, c);
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= len || (s[i + j] & 0xC0) != 0x80) {
                free(cps);
                return kiln_error(KILN_EINVAL, "invalid UTF-8 at byte offset %zu (truncated %zu-byte sequence)", i,
                                  k + 1);
            }
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            free(cps);
            return kiln_error(KILN_EINVAL, "invalid UTF-8 at byte offset %zu (%s U+%04X)", i,
                              cp < min ? "overlong encoding of" : "encoded surrogate or out-of-range value", cp);
        }
        cps[n++] = cp;
        i += k + 1;
    }
    *out = cps;
    *out_n = n;
    return KILN_OK;
}

size_t kiln_utf8_encode(uint32_t c, char *buf) {
    unsigned char *b = (unsigned char *)buf;
    if (c < 0x80) return b[0] = (unsigned char)c, 1;
    if (c < 0x800) {
        b[0] = (unsigned char)(0xC0 | (c >> 6));
        b[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (c >> 12));
        b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    b[0] = (unsigned char)(0xF0 | (c >> 18));
    b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    b[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---- Unicode properties ------------------------------------------------------------------------ */

static utf8proc_category_t category(uint32_t c) { return utf8proc_category((utf8proc_int32_t)c); }

/* The Unicode White_Space property, which is what the regex module's \s matches. */
static int is_white_space(uint32_t c) {
    if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return 1;
    utf8proc_category_t k = category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* Python's str.isspace() (used by str.strip()): White_Space plus U+001C..U+001F. */
static int is_py_space(uint32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

static int is_letter(uint32_t c) {
    utf8proc_category_t k = category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static int is_number(uint32_t c) {
    utf8proc_category_t k = category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

static uint32_t to_lower(uint32_t c) { return (uint32_t)utf8proc_tolower((utf8proc_int32_t)c); }
static uint32_t to_upper(uint32_t c) { return (uint32_t)utf8proc_toupper((utf8proc_int32_t)c); }
static uint32_t to_title(uint32_t c) { return (uint32_t)utf8proc_totitle((utf8proc_int32_t)c); }

/* [^\s\p{L}\p{N}] under IGNORECASE: the regex module tests a negated set against every case
 * variant of the character, so a non-letter whose other case is a letter (U+0345 COMBINING
 * GREEK YPOGEGRAMMENI, upper case U+0399) matches no alternative and is skipped. */
static int is_other(uint32_t c) {
    if (is_white_space(c) || is_letter(c) || is_number(c)) return 0;
    uint32_t v[3] = {to_lower(c), to_upper(c), to_title(c)};
    for (int i = 0; i < 3; i++)
        if (v[i] != c && (is_letter(v[i]) || is_number(v[i]))) return 0;
    return 1;
}

/* Case-insensitive match of c against an ASCII letter or symbol of the pattern (the regex
 * module's simple case folding: 's' also matches U+017F LATIN SMALL LETTER LONG S). */
static int ic_equal(uint32_t c, char pattern) {
    uint32_t p = (uint32_t)(unsigned char)pattern;
    if (c == p) return 1;
    if (!((p >= 'a' && p <= 'z') || (p >= 'A' && p <= 'Z'))) return 0;
    return to_lower(c) == to_lower(p) || to_upper(c) == to_upper(p);
}

/* Unicode Cased (Lowercase or Uppercase or Lt), from categories and case mappings, plus the
 * Other_Lowercase/Other_Uppercase characters that have neither a case mapping nor are
 * case-ignorable (where Cased is never asked): ordinal indicators and squared/negative-circled/
 * negative-squared Latin capitals (checked against Python's str.lower() on every code point). */
static int is_cased(uint32_t c) {
    utf8proc_category_t k = category(c);
    if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT) return 1;
    if (c == 0xAA || c == 0xBA || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
        (c >= 0x1F170 && c <= 0x1F189))
        return 1;
    return to_lower(c) != c || to_upper(c) != c || to_title(c) != c;
}

/* Unicode Case_Ignorable: Mn, Me, Cf, Lm, Sk, and the Word_Break classes MidLetter,
 * MidNumLet and Single_Quote (listed here: utf8proc has no word-break property). */
static int is_case_ignorable(uint32_t c) {
    utf8proc_category_t k = category(c);
    if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
        k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK)
        return 1;
    switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018:
    case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07:
    case 0xFF0E: case 0xFF1A:
        return 1;
    default:
        return 0;
    }
}

/* Python's str.lower() of t[i] == U+03A3: final sigma when a cased letter comes before it and
 * none after it (case-ignorable characters in between are skipped both ways). */
static uint32_t lower_sigma(const uint32_t *t, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && is_case_ignorable(t[j - 1])) j--;
    if (j == 0 || !is_cased(t[j - 1])) return 0x3C3;
    j = i + 1;
    while (j < n && is_case_ignorable(t[j])) j++;
    return (j < n && is_cased(t[j])) ? 0x3C3 : 0x3C2;
}

/* ---- text clean-up ----------------------------------------------------------------------------- */

/* ftfy, whitespace_clean (regex \s+ -> " ", strip) and lower() on one piece of text.
 * *out: a malloc'd array of *out_n code points. */
static int clean_piece(const uint32_t *in, size_t n, uint32_t **out, size_t *out_n) {
    uint32_t *fixed;
    size_t nf;
    if (kiln_ftfy_fix_text(in, n, &fixed, &nf) < 0) return kiln_error(KILN_ENOMEM, "out of memory cleaning text");
    size_t w = 0;
    int in_space = 0;
    for (size_t i = 0; i < nf; i++) { /* collapse, in place */
        if (!is_white_space(fixed[i]))
            fixed[w++] = fixed[i], in_space = 0;
        else if (!in_space)
            fixed[w++] = ' ', in_space = 1;
    }
    size_t s = 0, e = w;
    while (s < e && is_py_space(fixed[s])) s++;
    while (e > s && is_py_space(fixed[e - 1])) e--;
    uint32_t *low = malloc((2 * (e - s) + 1) * sizeof *low); /* U+0130 lower-cases to two */
    if (!low) {
        free(fixed);
        return kiln_error(KILN_ENOMEM, "out of memory cleaning text");
    }
    size_t m = 0;
    for (size_t i = s; i < e; i++) {
        uint32_t c = fixed[i];
        if (c == 0x130) {
            low[m++] = 'i';
            low[m++] = 0x307;
        } else if (c == 0x3A3) {
            low[m++] = lower_sigma(fixed + s, e - s, i - s);
        } else {
            low[m++] = to_lower(c);
        }
    }
    free(fixed);
    *out = low;
    *out_n = m;
    return KILN_OK;
}

int kiln_tokenizer_clean_text(const char *text, size_t len, char **out, size_t *out_len) {
    if (!text || !out || !out_len) return kiln_error(KILN_EINVAL, "kiln_tokenizer_clean_text: NULL argument");
    uint32_t *cps, *clean;
    size_t n, nc;
    KILN_TRY(kiln_utf8_decode(text, len, &cps, &n));
    int rc = clean_piece(cps, n, &clean, &nc);
    free(cps);
    if (rc < 0) return rc;
    char *s = malloc(nc * 4 + 1);
    if (!s) {
        free(clean);
        return kiln_error(KILN_ENOMEM, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < nc; i++) k += kiln_utf8_encode(clean[i], s + k);
    s[k] = '\0';
    free(clean);
    *out = s;
    *out_len = k;
    return KILN_OK;
}

/* ---- output ------------------------------------------------------------------------------------ */

/* Where ids go: the caller's buffer up to cap, the count always. */
typedef struct id_sink {
    int32_t *ids;
    size_t cap, n;
} id_sink;

static void emit(id_sink *out, int32_t id) {
    if (out->n < out->cap) out->ids[out->n] = id;
    out->n++;
}

/* ---- BPE --------------------------------------------------------------------------------------- */

/* Merges the symbols of one word (ids, in place) and returns the new count: the adjacent pair
 * with the lowest merge rank is merged everywhere, left to right, until no pair has a merge. */
static size_t bpe_merge(const kiln_vocab *v, int32_t *sym, size_t n) {
    while (n > 1) {
        int32_t best_rank = INT32_MAX, best_result = -1, best_left = 0, best_right = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            int32_t rank, result;
            if (kiln_vocab_merge(v, sym[i], sym[i + 1], &rank, &result) && rank < best_rank)
                best_rank = rank, best_result = result, best_left = sym[i], best_right = sym[i + 1];
        }
        if (best_result < 0) break;
        size_t w = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && sym[i] == best_left && sym[i + 1] == best_right) {
                sym[w++] = best_result;
                i += 2;
            } else {
                sym[w++] = sym[i++];
            }
        }
        n = w;
    }
    return n;
}

static uint64_t hash_word(const unsigned char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

static void cache_clear(kiln_tokenizer *tok) {
    for (size_t b = 0; b < CACHE_BUCKETS; b++) {
        cache_entry *e = tok->buckets[b];
        while (e) {
            cache_entry *next = e->next;
            free(e);
            e = next;
        }
        tok->buckets[b] = NULL;
    }
    tok->cache_entries = 0;
}

/* Tokenizes one word given as UTF-8 bytes and emits its ids. sym: scratch of >= len ids. */
static void bpe_word(kiln_tokenizer *tok, const unsigned char *word, size_t len, int32_t *sym, id_sink *out) {
    const kiln_vocab *v = tok->vocab;
    /* The word-split regex yields these two literally; transformers' BPE cache maps them to
     * themselves, i.e. to the special ids. */
    if (len == 15 && memcmp(word, "<|startoftext|>", 15) == 0) {
        emit(out, v->bos_id);
        return;
    }
    if (len == 13 && memcmp(word, "<|endoftext|>", 13) == 0) {
        emit(out, v->eos_id);
        return;
    }

    uint64_t h = hash_word(word, len);
    cache_entry **bucket = &tok->buckets[h % CACHE_BUCKETS];
    int cacheable = len <= CACHE_MAX_WORD;
    if (cacheable) {
        pthread_mutex_lock(&tok->lock);
        for (cache_entry *e = *bucket; e; e = e->next)
            if (e->hash == h && e->len == len && memcmp(e->ids + e->n_ids, word, len) == 0) {
                for (uint32_t i = 0; i < e->n_ids; i++) emit(out, e->ids[i]);
                pthread_mutex_unlock(&tok->lock);
                return;
            }
        pthread_mutex_unlock(&tok->lock);
    }
    for (size_t i = 0; i < len; i++) sym[i] = v->byte_id[word[i]];
    sym[len - 1] = v->byte_end_id[word[len - 1]];
    size_t n = bpe_merge(v, sym, len);
    for (size_t i = 0; i < n; i++) emit(out, sym[i]);
    if (!cacheable) return;
    cache_entry *e = malloc(sizeof *e + n * sizeof(int32_t) + len);
    if (!e) return; /* the cache is only a speed-up */
    e->hash = h;
    e->len = (uint32_t)len;
    e->n_ids = (uint32_t)n;
    memcpy(e->ids, sym, n * sizeof(int32_t));
    memcpy(e->ids + n, word, len);
    pthread_mutex_lock(&tok->lock);
    if (tok->cache_entries >= CACHE_MAX_ENTRIES) cache_clear(tok);
    e->next = *bucket;
    *bucket = e;
    tok->cache_entries++;
    pthread_mutex_unlock(&tok->lock);
}

/* ---- word split -------------------------------------------------------------------------------- */

/* Length of the case-insensitive match of the ASCII literal lit at t[i], or 0. */
static size_t match_literal(const uint32_t *t, size_t n, size_t i, const char *lit) {
    size_t len = strlen(lit);
    if (n - i < len) return 0;
    for (size_t j = 0; j < len; j++)
        if (!ic_equal(t[i + j], lit[j])) return 0;
    return len;
}

/* The length of the regex match starting at t[i], or 0 when no alternative matches there (the
 * character is skipped, as findall does). */
static size_t match_word(const uint32_t *t, size_t n, size_t i) {
    static const char *const literals[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve",
                                           "'m", "'ll", "'d"};
    for (size_t k = 0; k < sizeof literals / sizeof literals[0]; k++) {
        size_t m = match_literal(t, n, i, literals[k]);
        if (m) return m;
    }
    size_t j = i;
    if (is_letter(t[i])) {
        while (j < n && is_letter(t[j])) j++;
        return j - i;
    }
    if (is_number(t[i])) return 1;
    while (j < n && is_other(t[j])) j++;
    return j - i;
}

/* Tokenizes one piece of raw text between special tokens. */
static int tokenize_piece(kiln_tokenizer *tok, const uint32_t *raw, size_t n_raw, id_sink *out) {
    uint32_t *t;
    size_t n;
    KILN_TRY(clean_piece(raw, n_raw, &t, &n));
    /* Scratch for one word: its UTF-8 bytes, and as many symbol ids. */
    unsigned char *word = malloc(n * 4 + 1);
    int32_t *sym = malloc((n * 4 + 1) * sizeof *sym);
    if (!word || !sym) {
        free(word);
        free(sym);
        free(t);
        return kiln_error(KILN_ENOMEM, "out of memory tokenizing %zu characters", n);
    }
    for (size_t i = 0; i < n;) {
        size_t m = match_word(t, n, i);
        if (m == 0) {
            i++;
            continue;
        }
        size_t len = 0;
        for (size_t j = i; j < i + m; j++) len += kiln_utf8_encode(t[j], (char *)word + len);
        bpe_word(tok, word, len, sym, out);
        i += m;
    }
    free(word);
    free(sym);
    free(t);
    return KILN_OK;
}

/* Position of the next literal special token in t[from..n) and its id, or n. */
static size_t find_special(const kiln_vocab *v, const uint32_t *t, size_t n, size_t from, size_t *len, int32_t *id) {
    static const char bos[] = "<|startoftext|>", eos[] = "<|endoftext|>";
    for (size_t i = from; i + 13 <= n; i++) {
        if (t[i] != '<' || t[i + 1] != '|') continue;
        size_t j;
        for (j = 0; j < 15 && i + j < n && t[i + j] == (uint32_t)bos[j]; j++) {}
        if (j == 15) return *len = 15, *id = v->bos_id, i;
        for (j = 0; j < 13 && t[i + j] == (uint32_t)eos[j]; j++) {}
        if (j == 13) return *len = 13, *id = v->eos_id, i;
    }
    return n;
}

/* ---- public API -------------------------------------------------------------------------------- */

int kiln_tokenize_n(const kiln_tokenizer *ctok, const char *text, size_t len, int32_t *ids, size_t cap,
                    size_t *n_ids) {
    if (!ctok || !text || !n_ids || (!ids && cap > 0))
        return kiln_error(KILN_EINVAL, "kiln_tokenize: NULL %s", !ctok ? "tokenizer" : !text ? "text" : "ids");
    /* The cache is the only state that changes, behind its lock. */
    kiln_tokenizer *tok = (kiln_tokenizer *)ctok;
    uint32_t *t;
    size_t n;
    int rc = kiln_utf8_decode(text, len, &t, &n);
    if (rc < 0) return kiln_error_context(rc, "prompt");
    id_sink out = {ids, cap, 0};
    for (size_t pos = 0; pos < n && rc == 0;) {
        size_t slen = 0;
        int32_t sid = 0;
        size_t at = find_special(tok->vocab, t, n, pos, &slen, &sid);
        if (at > pos) rc = tokenize_piece(tok, t + pos, at - pos, &out);
        if (at < n && rc == 0) emit(&out, sid);
        pos = at + slen;
    }
    free(t);
    if (rc < 0) return rc;
    *n_ids = out.n;
    return KILN_OK;
}

int kiln_tokenize(const kiln_tokenizer *tok, const char *text, int32_t *ids, size_t cap, size_t *n_ids) {
    if (!text) return kiln_error(KILN_EINVAL, "kiln_tokenize: NULL text");
    return kiln_tokenize_n(tok, text, strlen(text), ids, cap, n_ids);
}

int kiln_tokenizer_load(const char *path, kiln_tokenizer **out) {
    if (!out) return kiln_error(KILN_EINVAL, "kiln_tokenizer_load: out is NULL");
    kiln_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return kiln_error(KILN_ENOMEM, "out of memory for the tokenizer");
    int rc = kiln_vocab_load(path, &tok->vocab);
    if (rc < 0) {
        free(tok);
        return rc;
    }
    if (pthread_mutex_init(&tok->lock, NULL) != 0) {
        kiln_vocab_free(tok->vocab);
        free(tok);
        return kiln_error(KILN_ENOMEM, "cannot create the tokenizer's lock");
    }
    *out = tok;
    return KILN_OK;
}

void kiln_tokenizer_free(kiln_tokenizer *tok) {
    if (!tok) return;
    cache_clear(tok);
    pthread_mutex_destroy(&tok->lock);
    kiln_vocab_free(tok->vocab);
    free(tok);
}

const char *kiln_tokenizer_piece(const kiln_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->vocab->n_ids) return NULL;
    return tok->vocab->pieces[id];
}

const kiln_vocab *kiln_tokenizer_vocab(const kiln_tokenizer *tok) { return tok ? tok->vocab : NULL; }
