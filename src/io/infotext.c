/* infotext.c — formats and parses A1111's "parameters" text the way A1111 v1.9 does. See infotext.h.
 *
 * Python semantics matter here because other tools parse what we write and users paste what A1111
 * wrote: str.strip() and the regex classes \s and \w are Unicode-aware (utf8proc categories stand in
 * for Python's tables), json.dumps/json.loads quote and unquote values, and a dict keeps the first
 * position of a repeated key. */
#include "io/infotext.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "core/error.h"
#include "core/strbuf.h"

/* ---- growing string ---- */
/* Appends whose failure the caller checks once, through b->oom. */
static void sb_add(kiln_strbuf *b, const char *s, size_t n) { kiln_strbuf_add(b, s, n); }
static void sb_str(kiln_strbuf *b, const char *s) { kiln_strbuf_add(b, s, strlen(s)); }

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- Unicode classes as Python's re and str see them ---- */

/* Decodes one code point at s[i] (i < n); invalid bytes decode as themselves with length 1 and
 * code point -1 (neither space nor word). */
static int32_t cp_at(const char *s, size_t n, size_t i, size_t *len) {
    utf8proc_int32_t cp = -1;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
    if (k <= 0) {
        *len = 1;
        return -1;
    }
    *len = (size_t)k;
    return cp;
}

/* str.isspace(): bidi whitespace/separators and category Z*. */
static int py_space(int32_t c) {
    if (c < 0) return 0;
    if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f) || c == 0x85) return 1;
    if (c < 0x80) return 0;
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

/* re's \w for str patterns: letters, numbers and '_'. */
static int py_word(int32_t c) {
    if (c < 0) return 0;
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    utf8proc_category_t cat = utf8proc_category(c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* Skips Python whitespace from i forward. */
static size_t skip_space(const char *s, size_t n, size_t i) {
    while (i < n) {
        size_t k;
        if (!py_space(cp_at(s, n, i, &k))) break;
        i += k;
    }
    return i;
}

/* Python str.strip() bounds of s[0..n): [*b, *e). */
static void strip_bounds(const char *s, size_t n, size_t *b, size_t *e) {
    size_t first = n, end = 0;
    for (size_t i = 0; i < n;) {
        size_t k;
        if (!py_space(cp_at(s, n, i, &k))) {
            if (first == n) first = i;
            end = i + k;
        }
        i += k;
    }
    if (first == n) first = end = 0;
    *b = first;
    *e = end;
}

/* ---- formatting ---- */

char *kiln_infotext_float(double x, int python_float, char buf[32]) {
    if (isnan(x)) {
        strcpy(buf, "nan");
        return buf;
    }
    if (isinf(x)) {
        strcpy(buf, x < 0 ? "-inf" : "inf");
        return buf;
    }
    if (x == 0) {
        strcpy(buf, signbit(x) ? (python_float ? "-0.0" : "-0") : (python_float ? "0.0" : "0"));
        return buf;
    }
    /* Shortest digit string that reads back as x (Python's repr rule). */
    char e[40];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    /* e = "[-]d.ddde[+-]XX": collect the digits and the exponent. */
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *p = e + neg;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1; /* digits d1 d2 ... with the point after decpt of them */
    char *o = buf;
    if (neg) *o++ = '-';
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -decpt; i++) *o++ = '0';
            for (int i = 0; i < nd; i++) *o++ = digits[i];
        } else {
            for (int i = 0; i < decpt; i++) *o++ = i < nd ? digits[i] : '0';
            if (nd > decpt) {
                *o++ = '.';
                for (int i = decpt; i < nd; i++) *o++ = digits[i];
            } else if (python_float) {
                *o++ = '.';
                *o++ = '0';
            }
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++) *o++ = digits[i];
        }
        int ae = exp10 < 0 ? -exp10 : exp10; /* at most 324 */
        *o++ = 'e';
        *o++ = exp10 < 0 ? '-' : '+';
        if (ae >= 100) *o++ = (char)('0' + ae / 100);
        *o++ = (char)('0' + ae / 10 % 10);
        *o++ = (char)('0' + ae % 10);
        *o = 0;
    }
    return buf;
}

/* json.dumps(s, ensure_ascii=False). */
static void json_quote(kiln_strbuf *b, const char *s) {
    sb_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        case '\b': sb_add(b, "\\b", 2); break;
        case '\f': sb_add(b, "\\f", 2); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                sb_add(b, esc, 6);
            } else {
                sb_add(b, (const char *)p, 1);
            }
        }
    }
    sb_add(b, "\"", 1);
}

/* infotext_utils.quote: JSON-quote only values with ',', '\n' or ':'. */
static void add_value(kiln_strbuf *b, const char *v) {
    if (strpbrk(v, ",\n:"))
        json_quote(b, v);
    else
        sb_str(b, v);
}

int kiln_infotext_format_kv(const char *prompt, const char *negative_prompt, const kiln_infotext_kv *kv, int n_kv,
                            char **out) {
    kiln_strbuf b = {0};
    sb_str(&b, prompt ? prompt : "");
    if (negative_prompt && *negative_prompt) {
        sb_str(&b, "\nNegative prompt: ");
        sb_str(&b, negative_prompt);
    }
    sb_str(&b, "\n");
    int first = 1;
    for (int i = 0; i < n_kv; i++) {
        if (!kv[i].key || !kv[i].value) continue;
        if (!first) sb_str(&b, ", ");
        first = 0;
        sb_str(&b, kv[i].key);
        if (strcmp(kv[i].key, kv[i].value) != 0) {
            sb_str(&b, ": ");
            add_value(&b, kv[i].value);
        }
    }
    if (b.oom || !b.s) {
        free(b.s);
        return kiln_error(KILN_ENOMEM, "infotext: out of memory");
    }
    size_t s, e;
    strip_bounds(b.s, b.len, &s, &e);
    memmove(b.s, b.s + s, e - s);
    b.s[e - s] = 0;
    *out = b.s;
    return KILN_OK;
}

/* An ordered key list with Python dict assignment semantics. Values point into `text`. */
enum { MAX_STD = 40, TEXT_CAP = 48 };
typedef struct kvlist {
    kiln_infotext_kv *kv;
    int n, cap;
    char (*text)[TEXT_CAP]; /* storage for formatted numbers */
    int n_text;
} kvlist;

static void kv_set(kvlist *l, const char *key, const char *value) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->kv[i].key, key) == 0) {
            l->kv[i].value = value;
            return;
        }
    if (l->n < l->cap) l->kv[l->n++] = (kiln_infotext_kv){key, value};
}
static const char *kv_num(kvlist *l, const char *fmt_i64, int64_t v) {
    char *t = l->text[l->n_text++];
    snprintf(t, TEXT_CAP, fmt_i64, (long long)v);
    return t;
}
static const char *kv_float(kvlist *l, double v, int py) {
    char *t = l->text[l->n_text++];
    kiln_infotext_float(v, py, t);
    return t;
}

int kiln_infotext_format(const kiln_infotext_params *p, char **out) {
    if (p->n_extra < 0 || (p->n_extra > 0 && !p->extra))
        return kiln_error(KILN_EINVAL, "infotext: n_extra %d with extra %p", p->n_extra, (const void *)p->extra);
    int cap = MAX_STD + p->n_extra;
    kvlist l = {0};
    l.cap = cap;
    l.kv = calloc((size_t)cap, sizeof *l.kv);
    l.text = calloc(MAX_STD, sizeof *l.text);
    if (!l.kv || !l.text) {
        free(l.kv);
        free(l.text);
        return kiln_error(KILN_ENOMEM, "infotext: out of memory");
    }
    int py = p->python_floats;
    kv_set(&l, "Steps", kv_num(&l, "%lld", p->steps));
    kv_set(&l, "Sampler", p->sampler);
    kv_set(&l, "Schedule type", p->schedule_type);
    kv_set(&l, "CFG scale", kv_float(&l, p->cfg_scale, py));
    kv_set(&l, "Image CFG scale", p->image_cfg_scale > 0 ? kv_float(&l, p->image_cfg_scale, py) : NULL);
    kv_set(&l, "Seed", kv_num(&l, "%lld", p->seed));
    kv_set(&l, "Face restoration", p->face_restoration);
    char *size = l.text[l.n_text++];
    snprintf(size, TEXT_CAP, "%dx%d", p->width, p->height);
    kv_set(&l, "Size", size);
    kv_set(&l, "Model hash", p->model_hash);
    kv_set(&l, "Model", p->model);
    kv_set(&l, "FP8 weight", p->fp8_weight);
    kv_set(&l, "Cache FP16 weight for LoRA", p->cache_fp16_weight);
    kv_set(&l, "VAE hash", p->vae_hash);
    kv_set(&l, "VAE", p->vae);
    int var = p->variation_seed_strength != 0;
    kv_set(&l, "Variation seed", var ? kv_num(&l, "%lld", p->variation_seed) : NULL);
    kv_set(&l, "Variation seed strength", var ? kv_float(&l, p->variation_seed_strength, py) : NULL);
    const char *resize = NULL;
    if (p->seed_resize_from_w > 0 && p->seed_resize_from_h > 0) {
        char *t = l.text[l.n_text++];
        snprintf(t, TEXT_CAP, "%dx%d", p->seed_resize_from_w, p->seed_resize_from_h);
        resize = t;
    }
    kv_set(&l, "Seed resize from", resize);
    kv_set(&l, "Denoising strength", p->has_denoising_strength ? kv_float(&l, p->denoising_strength, py) : NULL);
    kv_set(&l, "Conditional mask weight",
           p->has_conditional_mask_weight ? kv_float(&l, p->conditional_mask_weight, py) : NULL);
    kv_set(&l, "Clip skip", p->clip_skip > 1 ? kv_num(&l, "%lld", p->clip_skip) : NULL);
    kv_set(&l, "ENSD", p->ensd != 0 ? kv_num(&l, "%lld", p->ensd) : NULL);
    kv_set(&l, "Token merging ratio", p->token_merging_ratio != 0 ? kv_float(&l, p->token_merging_ratio, py) : NULL);
    kv_set(&l, "Token merging ratio hr",
           p->token_merging_ratio_hr != 0 ? kv_float(&l, p->token_merging_ratio_hr, py) : NULL);
    kv_set(&l, "Init image hash", p->init_image_hash);
    kv_set(&l, "RNG", p->rng && strcmp(p->rng, "GPU") != 0 ? p->rng : NULL);
    kv_set(&l, "Tiling", p->tiling ? "True" : NULL);
    for (int i = 0; i < p->n_extra; i++)
        if (p->extra[i].key) kv_set(&l, p->extra[i].key, p->extra[i].value);
    kv_set(&l, "Version", p->version);
    kv_set(&l, "User", p->user);
    int rc = kiln_infotext_format_kv(p->prompt, p->negative_prompt, l.kv, l.n, out);
    free(l.kv);
    free(l.text);
    return rc;
}

int kiln_infotext_hash_list(const char *const *names, const char *const *hashes, int n, char **out) {
    kiln_strbuf b = {0};
    for (int i = 0; i < n; i++) {
        if (!hashes[i] || !*hashes[i]) continue;
        if (b.len) sb_str(&b, ", ");
        for (const char *p = names[i] ? names[i] : ""; *p; p++)
            if (*p != ':' && *p != ',') sb_add(&b, p, 1);
        sb_str(&b, ": ");
        sb_str(&b, hashes[i]);
    }
    if (b.oom) {
        free(b.s);
        return kiln_error(KILN_ENOMEM, "infotext: out of memory");
    }
    *out = b.s; /* NULL when nothing was added */
    return KILN_OK;
}

/* ---- parsing ---- */

/* One match of re_param = \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$) searched from *pos.
 * On a match fills key/value spans and moves *pos past it; returns 0 when no match remains. */
static int re_param_next(const char *s, size_t n, size_t *pos, size_t kspan[2], size_t vspan[2]) {
    size_t i = *pos;
    while (i < n) {
        size_t q = skip_space(s, n, i), k;
        if (q < n && py_word(cp_at(s, n, q, &k))) {
            size_t r = q + k;
            int count = 1;
            while (r < n) {
                int32_t c = cp_at(s, n, r, &k);
                if (!(py_word(c) || c == ' ' || c == '-' || c == '/')) break;
                r += k;
                count++;
            }
            if (count >= 2 && r < n && s[r] == ':') {
                kspan[0] = q;
                kspan[1] = r;
                size_t v = skip_space(s, n, r + 1);
                /* First alternative: a double-quoted string with backslash escapes, then ',' or end. */
                if (v < n && s[v] == '"') {
                    size_t j = v + 1;
                    int inner = 0;
                    while (j < n && s[j] != '"') {
                        if (s[j] == '\\') {
                            if (j + 1 >= n || s[j + 1] == '\n') break; /* '.' needs a non-newline char */
                            cp_at(s, n, j + 1, &k);
                            j += 1 + k;
                        } else {
                            cp_at(s, n, j, &k);
                            j += k;
                        }
                        inner++;
                    }
                    if (j < n && s[j] == '"' && inner > 0 && (j + 1 == n || s[j + 1] == ',')) {
                        vspan[0] = v;
                        vspan[1] = j + 1;
                        *pos = j + 1 < n ? j + 2 : n;
                        return 1;
                    }
                }
                /* Second alternative: everything up to the next ','. */
                size_t e = v;
                while (e < n && s[e] != ',') e++;
                vspan[0] = v;
                vspan[1] = e;
                *pos = e < n ? e + 1 : n;
                return 1;
            }
            /* Every start inside this run of key characters ends at the same r and fails the same way. */
            i = r;
            continue;
        }
        if (q > i) { /* every start inside the spaces reaches the same q */
            i = q;
            continue;
        }
        cp_at(s, n, i, &k);
        i += k;
    }
    return 0;
}

static void utf8_put(kiln_strbuf *b, uint32_t c) {
    utf8proc_uint8_t tmp[4];
    utf8proc_ssize_t k = utf8proc_encode_char((utf8proc_int32_t)c, tmp);
    sb_add(b, (const char *)tmp, (size_t)k);
}

static int hex4(const char *s, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return 0;
        *v = *v << 4 | (uint32_t)d;
    }
    return 1;
}

/* json.loads of a whole "..." string; returns NULL (with *ok 0) if it is not exactly one JSON string. */
static char *json_unquote(const char *s, size_t n, int *ok) {
    *ok = 0;
    if (n < 2 || s[0] != '"') return NULL;
    kiln_strbuf b = {0};
    sb_add(&b, "", 0);
    size_t i = 1;
    for (;;) {
        if (i >= n) goto bad;
        unsigned char c = (unsigned char)s[i];
        if (c == '"') break;
        if (c < 0x20) goto bad; /* json.loads is strict about raw control characters */
        if (c != '\\') {
            sb_add(&b, s + i, 1);
            i++;
            continue;
        }
        if (i + 1 >= n) goto bad;
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case '"': sb_add(&b, "\"", 1); break;
        case '\\': sb_add(&b, "\\", 1); break;
        case '/': sb_add(&b, "/", 1); break;
        case 'b': sb_add(&b, "\b", 1); break;
        case 'f': sb_add(&b, "\f", 1); break;
        case 'n': sb_add(&b, "\n", 1); break;
        case 'r': sb_add(&b, "\r", 1); break;
        case 't': sb_add(&b, "\t", 1); break;
        case 'u': {
            uint32_t u;
            if (i + 4 > n || !hex4(s + i, &u)) goto bad;
            i += 4;
            if (u >= 0xD800 && u < 0xDC00 && i + 6 <= n && s[i] == '\\' && s[i + 1] == 'u') {
                uint32_t lo;
                if (hex4(s + i + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (u >= 0xD800 && u < 0xE000) u = 0xFFFD; /* a lone surrogate has no UTF-8 form */
            utf8_put(&b, u);
            break;
        }
        default: goto bad;
        }
    }
    /* the closing quote must end the value ("Extra data" otherwise; trailing whitespace is allowed) */
    if (skip_space(s, n, i + 1) != n) goto bad;
    if (b.oom) goto bad;
    *ok = 1;
    return b.s;
bad:
    free(b.s);
    return NULL;
}

static int it_set(kiln_infotext *it, const char *key, size_t klen, const char *val, size_t vlen) {
    for (int i = 0; i < it->n_params; i++)
        if (strlen(it->params[i].key) == klen && memcmp(it->params[i].key, key, klen) == 0) {
            char *v = dup_n(val, vlen);
            if (!v) return KILN_ENOMEM;
            free(it->params[i].value);
            it->params[i].value = v;
            return KILN_OK;
        }
    kiln_infotext_pair *np = realloc(it->params, (size_t)(it->n_params + 1) * sizeof *np);
    if (!np) return KILN_ENOMEM;
    it->params = np;
    char *k = dup_n(key, klen), *v = dup_n(val, vlen);
    if (!k || !v) {
        free(k);
        free(v);
        return KILN_ENOMEM;
    }
    it->params[it->n_params++] = (kiln_infotext_pair){k, v};
    return KILN_OK;
}

/* re_imagesize ^(\d+)x(\d+)$ ('$' also matches before one final newline). */
static int image_size(const char *v, size_t n, size_t *x_at, size_t *end2) {
    if (n && v[n - 1] == '\n') n--;
    size_t i = 0;
    while (i < n && v[i] >= '0' && v[i] <= '9') i++;
    if (i == 0 || i >= n || v[i] != 'x') return 0;
    size_t j = i + 1;
    while (j < n && v[j] >= '0' && v[j] <= '9') j++;
    if (j == i + 1 || j != n) return 0;
    *x_at = i;
    *end2 = j;
    return 1;
}

static int add_param(kiln_infotext *it, const char *key, size_t klen, const char *val, size_t vlen) {
    if (vlen == 0) return KILN_OK; /* v[0] raises IndexError in A1111, which then drops the pair */
    char *unq = NULL;
    if (val[0] == '"' && val[vlen - 1] == '"') {
        int ok;
        unq = json_unquote(val, vlen, &ok);
        if (ok) {
            val = unq;
            vlen = strlen(unq);
        }
    }
    int rc;
    size_t x, e2;
    if (image_size(val, vlen, &x, &e2)) {
        char k1[512];
        if (klen > sizeof k1 - 3) klen = sizeof k1 - 3;
        memcpy(k1, key, klen);
        memcpy(k1 + klen, "-1", 3);
        rc = it_set(it, k1, klen + 2, val, x);
        k1[klen + 1] = '2';
        if (rc == KILN_OK) rc = it_set(it, k1, klen + 2, val + x + 1, e2 - x - 1);
    } else {
        rc = it_set(it, key, klen, val, vlen);
    }
    free(unq);
    return rc;
}

static void append_line(kiln_strbuf *b, const char *s, size_t n) {
    if (b->len) sb_add(b, "\n", 1);
    sb_add(b, s, n);
}

int kiln_infotext_parse(const char *text, kiln_infotext *out) {
    memset(out, 0, sizeof *out);
    kiln_infotext it = {0};
    size_t tn = strlen(text), tb, te;
    strip_bounds(text, tn, &tb, &te);
    const char *s = text + tb;
    size_t n = te - tb;
    /* The last line (after the last '\n') is the parameter line if re_param finds >= 3 pairs. */
    size_t last = n;
    while (last > 0 && s[last - 1] != '\n') last--;
    const char *ll = s + last;
    size_t lln = n - last;
    int count = 0;
    size_t pos = 0, ks[2], vs[2];
    while (count < 3 && re_param_next(ll, lln, &pos, ks, vs)) count++;
    int has_params = count >= 3;

    kiln_strbuf prompt = {0}, neg = {0};
    sb_add(&prompt, "", 0);
    sb_add(&neg, "", 0);
    int done_with_prompt = 0;
    /* The prompt lines: all of s, or everything before the newline that starts the parameter line
     * (none at all when the parameter line is the only line). Python's split gives one more piece
     * than there are newlines. */
    int any_lines = !has_params || last > 0;
    size_t region = has_params ? (last > 0 ? last - 1 : 0) : n;
    for (size_t i = 0; any_lines;) {
        size_t j = i;
        while (j < region && s[j] != '\n') j++;
        size_t lb, le;
        strip_bounds(s + i, j - i, &lb, &le);
        const char *line = s + i + lb;
        size_t len = le - lb;
        if (len >= 16 && memcmp(line, "Negative prompt:", 16) == 0) {
            done_with_prompt = 1;
            strip_bounds(line + 16, len - 16, &lb, &le);
            line = line + 16 + lb;
            len = le - lb;
        }
        append_line(done_with_prompt ? &neg : &prompt, line, len);
        if (j >= region) break;
        i = j + 1;
    }
    int rc = (prompt.oom || neg.oom) ? KILN_ENOMEM : KILN_OK;
    it.prompt = prompt.s;
    it.negative_prompt = neg.s;
    if (has_params) {
        pos = 0;
        while (rc == KILN_OK && re_param_next(ll, lln, &pos, ks, vs))
            rc = add_param(&it, ll + ks[0], ks[1] - ks[0], ll + vs[0], vs[1] - vs[0]);
    }
    if (rc != KILN_OK) {
        kiln_infotext_free(&it);
        return kiln_error(KILN_ENOMEM, "infotext: out of memory");
    }
    *out = it;
    return KILN_OK;
}

const char *kiln_infotext_get(const kiln_infotext *it, const char *key) {
    for (int i = 0; i < it->n_params; i++)
        if (strcmp(it->params[i].key, key) == 0) return it->params[i].value;
    return NULL;
}

int kiln_infotext_apply_defaults(kiln_infotext *it) {
    /* parse_generation_parameters' fill-ins, in its order. */
    static const char *const defaults[][2] = {
        {"Clip skip", "1"},
        {"Hires resize-1", "0"},
        {"Hires resize-2", "0"},
        {"Hires sampler", "Use same sampler"},
        {"Hires checkpoint", "Use same checkpoint"},
        {"Hires prompt", ""},
        {"Hires negative prompt", ""},
        {"Mask mode", "Inpaint masked"},
        {"Masked content", "original"},
        {"Inpaint area", "Whole picture"},
        {"Masked area padding", "32"},
        {"RNG", "GPU"},
        {"Schedule type", "Automatic"},
        {"Schedule max sigma", "0"},
        {"Schedule min sigma", "0"},
        {"Schedule rho", "0"},
        {"VAE Encoder", "Full"},
        {"VAE Decoder", "Full"},
        {"FP8 weight", "Disable"},
    };
    const char *hypernet = kiln_infotext_get(it, "Hypernet");
    if (hypernet) {
        const char *strength = kiln_infotext_get(it, "Hypernet strength");
        kiln_strbuf b = {0};
        sb_str(&b, it->prompt);
        sb_str(&b, "<hypernet:");
        sb_str(&b, hypernet);
        sb_str(&b, ":");
        sb_str(&b, strength ? strength : "1.0");
        sb_str(&b, ">");
        if (b.oom) {
            free(b.s);
            return kiln_error(KILN_ENOMEM, "infotext: out of memory");
        }
        free(it->prompt);
        it->prompt = b.s;
    }
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (!kiln_infotext_get(it, defaults[i][0]) &&
            it_set(it, defaults[i][0], strlen(defaults[i][0]), defaults[i][1], strlen(defaults[i][1])) != KILN_OK)
            return kiln_error(KILN_ENOMEM, "infotext: out of memory");
    const char *fp8 = kiln_infotext_get(it, "FP8 weight");
    if (fp8 && strcmp(fp8, "Disable") != 0 && !kiln_infotext_get(it, "Cache FP16 weight for LoRA") &&
        it_set(it, "Cache FP16 weight for LoRA", 26, "False", 5) != KILN_OK)
        return kiln_error(KILN_ENOMEM, "infotext: out of memory");
    return KILN_OK;
}

void kiln_infotext_free(kiln_infotext *it) {
    if (!it) return;
    free(it->prompt);
    free(it->negative_prompt);
    for (int i = 0; i < it->n_params; i++) {
        free(it->params[i].key);
        free(it->params[i].value);
    }
    free(it->params);
    memset(it, 0, sizeof *it);
}
