/* vocab.c — loading the CLIP BPE vocabulary, from OpenAI's bpe_simple_vocab_16e6.txt(.gz)
 * or from a diffusers tokenizer/ folder (vocab.json + merges.txt), into the id tables the
 * tokenizer uses: token string <-> id, and (left id, right id) -> merge rank and merged id.
 *
 * Both sources describe the same 49408 tokens. From the .txt.gz the vocabulary is built the way
 * CLIP and transformers build it: the 256 byte characters of bytes_to_unicode (in its order),
 * the same with "</w>", then the concatenation of each of the first 48894 merges (lines
 * 1..48894 after the "#version" header), then <|startoftext|> and <|endoftext|>. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/error.h"
#include "text/tokenizer.h"

/* CLIP uses the first 49152 - 256 - 2 lines after the header as merges. */
#define CLIP_N_MERGES (49152 - 256 - 2)
#define VOCAB_MAX_FILE (256u << 20) /* refuse absurd files instead of exhausting memory */
#define VOCAB_MAX_IDS (1 << 20) /* CLIP has 49408; refuse ids that would need huge tables */

/* ---- the byte <-> character map of GPT-2/CLIP (bytes_to_unicode) --------------------------- */

/* Printable Latin-1 bytes stand for themselves; the other 68 bytes take the characters
 * U+0100.. in byte order. The vocabulary lists the printable ones first, then the others. */
static int byte_is_printable(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* Fills order[i] = the byte of vocabulary position i and ch[b] = the character of byte b. */
static void bytes_to_unicode(int order[256], uint32_t ch[256]) {
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if (byte_is_printable(b)) order[n++] = b, ch[b] = (uint32_t)b;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b)) order[n++] = b, ch[b] = 256u + (uint32_t)extra++;
}

/* ---- hash tables ------------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 30; /* splitmix64 finaliser */
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int32_t kiln_vocab_lookup(const kiln_vocab *v, const char *s, size_t len) {
    size_t mask = v->str_cap - 1;
    for (size_t i = hash_bytes(s, len) & mask;; i = (i + 1) & mask) {
        uint32_t slot = v->str_slots[i];
        if (slot == 0) return -1;
        const char *p = v->pieces[slot - 1];
        if (strlen(p) == len && memcmp(p, s, len) == 0) return (int32_t)(slot - 1);
    }
}

/* Maps the string of id to id; a string already present is re-pointed to this later id, as a
 * Python dict built from the list in order would do. */
static void str_insert(kiln_vocab *v, int32_t id) {
    const char *s = v->pieces[id];
    size_t len = strlen(s), mask = v->str_cap - 1;
    for (size_t i = hash_bytes(s, len) & mask;; i = (i + 1) & mask) {
        uint32_t slot = v->str_slots[i];
        if (slot == 0 || strcmp(v->pieces[slot - 1], s) == 0) {
            v->str_slots[i] = (uint32_t)id + 1;
            return;
        }
    }
}

int kiln_vocab_merge(const kiln_vocab *v, int32_t left, int32_t right, int32_t *rank, int32_t *result) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t mask = v->merge_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        const struct kiln_merge_slot *s = &v->merge_slots[i];
        if (s->key == UINT64_MAX) return 0;
        if (s->key == key) {
            *rank = s->rank;
            *result = s->result;
            return 1;
        }
    }
}

/* Sets the merge of a pair; a pair seen again takes the new rank (see add_merges). */
static void merge_insert(kiln_vocab *v, int32_t left, int32_t right, int32_t rank, int32_t result) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t mask = v->merge_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        struct kiln_merge_slot *s = &v->merge_slots[i];
        if (s->key == UINT64_MAX || s->key == key) {
            s->key = key;
            s->rank = rank;
            s->result = result;
            return;
        }
    }
}

void kiln_vocab_free(kiln_vocab *v) {
    if (!v) return;
    if (v->pieces)
        for (int32_t i = 0; i < v->n_ids; i++) free(v->pieces[i]);
    free(v->pieces);
    free(v->str_slots);
    free(v->merge_slots);
    free(v);
}

/* ---- reading files ---------------------------------------------------------------------------- */

/* Reads a whole file, gunzipping it if it is gzip (zlib reads plain files as they are). */
static int read_file(const char *path, char **out, size_t *out_len) {
    gzFile f = gzopen(path, "rb");
    if (!f) return kiln_error(KILN_EIO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        gzclose(f);
        return kiln_error(KILN_ENOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (len == cap) {
            if (cap >= VOCAB_MAX_FILE) {
                free(buf);
                gzclose(f);
                return kiln_error(KILN_EFORMAT, "%s: larger than %u MiB, not a CLIP vocabulary", path,
                                  VOCAB_MAX_FILE >> 20);
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                gzclose(f);
                return kiln_error(KILN_ENOMEM, "%s: out of memory", path);
            }
            buf = nb, cap *= 2;
        }
        int got = gzread(f, buf + len, (unsigned)(cap - len));
        if (got < 0) {
            int zerr = 0;
            const char *msg = gzerror(f, &zerr);
            int rc = kiln_error(KILN_EFORMAT, "%s: read failed: %s", path, msg ? msg : "unknown zlib error");
            free(buf);
            gzclose(f);
            return rc;
        }
        if (got == 0) break;
        len += (size_t)got;
    }
    gzclose(f);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return KILN_OK;
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- building the tables ---------------------------------------------------------------------- */

static int vocab_alloc(kiln_vocab **out, int32_t n_ids, size_t n_merges) {
    kiln_vocab *v = calloc(1, sizeof *v);
    if (!v) return kiln_error(KILN_ENOMEM, "out of memory for the vocabulary");
    v->n_ids = n_ids;
    v->pieces = calloc((size_t)n_ids, sizeof *v->pieces);
    v->str_cap = pow2_at_least((size_t)n_ids * 2);
    v->str_slots = calloc(v->str_cap, sizeof *v->str_slots);
    v->merge_cap = pow2_at_least(n_merges * 2);
    v->merge_slots = malloc(v->merge_cap * sizeof *v->merge_slots);
    if (!v->pieces || !v->str_slots || !v->merge_slots) {
        kiln_vocab_free(v);
        return kiln_error(KILN_ENOMEM, "out of memory for the vocabulary");
    }
    for (size_t i = 0; i < v->merge_cap; i++) v->merge_slots[i].key = UINT64_MAX;
    *out = v;
    return KILN_OK;
}

/* One merge line "left right" (Python's line.split(): whitespace-separated, exactly two parts
 * for a usable merge). Sets the two parts as NUL-terminated strings inside line. */
static int split_merge_line(char *line, char **left, char **right) {
    char *parts[3] = {0};
    int n = 0;
    for (char *p = line; *p;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f') p++;
        if (!*p) break;
        if (n == 3) return 0;
        parts[n++] = p;
        while (*p && !(*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f')) p++;
        if (*p) *p++ = '\0';
    }
    if (n != 2) return 0;
    *left = parts[0];
    *right = parts[1];
    return 1;
}

/* Adds the merges (n lines of text) to v, whose pieces are complete. The string of each part
 * and of their concatenation must be tokens of the vocabulary: a merge whose result is not a
 * token would leave BPE with a symbol that has no id, which no real CLIP file does. */
static int add_merges(kiln_vocab *v, const char *path, char **lines, size_t n, size_t first_line_no) {
    char joined[1024];
    for (size_t i = 0; i < n; i++) {
        char *left, *right;
        if (!split_merge_line(lines[i], &left, &right))
            return kiln_error(KILN_EFORMAT, "%s: line %zu: a merge must be two tokens separated by a space",
                              path, first_line_no + i);
        size_t ll = strlen(left), lr = strlen(right);
        if (ll + lr >= sizeof joined)
            return kiln_error(KILN_EFORMAT, "%s: line %zu: merge too long", path, first_line_no + i);
        memcpy(joined, left, ll);
        memcpy(joined + ll, right, lr + 1);
        int32_t a = kiln_vocab_lookup(v, left, ll), b = kiln_vocab_lookup(v, right, lr);
        int32_t r = kiln_vocab_lookup(v, joined, ll + lr);
        if (a < 0 || b < 0 || r < 0)
            return kiln_error(KILN_EFORMAT, "%s: line %zu: merge \"%s %s\": \"%s\" is not in the vocabulary",
                              path, first_line_no + i, left, right, a < 0 ? left : b < 0 ? right : joined);
        /* transformers: dict(zip(merges, range(len(merges)))): a repeated pair keeps its last rank. */
        merge_insert(v, a, b, (int32_t)i, r);
    }
    v->n_merges = (int32_t)n;
    return KILN_OK;
}

/* Finds the byte tokens and the two special tokens; every CLIP vocabulary has them. */
static int find_fixed_ids(kiln_vocab *v, const char *path) {
    int order[256];
    uint32_t ch[256];
    bytes_to_unicode(order, ch);
    for (int b = 0; b < 256; b++) {
        char s[8] = {0};
        size_t n = kiln_utf8_encode(ch[b], s);
        memcpy(s + n, "</w>", 5);
        v->byte_id[b] = kiln_vocab_lookup(v, s, n);
        v->byte_end_id[b] = kiln_vocab_lookup(v, s, n + 4);
        if (v->byte_id[b] < 0 || v->byte_end_id[b] < 0)
            return kiln_error(KILN_EFORMAT, "%s: the token for byte 0x%02x%s (U+%04X) is missing", path, (unsigned)b,
                              v->byte_id[b] < 0 ? "" : " + </w>", (unsigned)ch[b]);
    }
    v->bos_id = kiln_vocab_lookup(v, "<|startoftext|>", 15);
    v->eos_id = kiln_vocab_lookup(v, "<|endoftext|>", 13);
    if (v->bos_id < 0 || v->eos_id < 0)
        return kiln_error(KILN_EFORMAT, "%s: the special token %s is missing", path,
                          v->bos_id < 0 ? "<|startoftext|>" : "<|endoftext|>");
    return KILN_OK;
}

/* Splits buf in place into lines at '\n'. Returns a malloc'd array of line starts. */
static char **split_lines(char *buf, size_t len, size_t *n_lines) {
    size_t n = 1;
    for (size_t i = 0; i < len; i++) n += buf[i] == '\n';
    char **lines = malloc(n * sizeof *lines);
    if (!lines) return NULL;
    size_t k = 0;
    lines[k++] = buf;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\n') buf[i] = '\0', lines[k++] = buf + i + 1;
    *n_lines = n;
    return lines;
}

/* Python's str.strip() on the ASCII whitespace a text file can hold: bounds of the content. */
static void strip_ascii(char *buf, size_t *start, size_t *len) {
    size_t s = 0, e = *len;
    while (s < e && (buf[s] == ' ' || (buf[s] >= '\t' && buf[s] <= '\r'))) s++;
    while (e > s && (buf[e - 1] == ' ' || (buf[e - 1] >= '\t' && buf[e - 1] <= '\r'))) e--;
    *start = s;
    *len = e - s;
}

static int check_utf8(const char *path, const char *buf, size_t len) {
    uint32_t *cps;
    size_t n;
    int rc = kiln_utf8_decode(buf, len, &cps, &n);
    if (rc < 0) return kiln_error_context(rc, "%s", path);
    free(cps);
    return KILN_OK;
}

/* OpenAI's bpe_simple_vocab_16e6.txt(.gz): a header line, then one merge per line. */
static int load_bpe_simple(const char *path, kiln_vocab **out) {
    char *buf;
    size_t len, n_lines;
    KILN_TRY(read_file(path, &buf, &len));
    int rc = check_utf8(path, buf, len);
    char **lines = rc < 0 ? NULL : split_lines(buf, len, &n_lines);
    kiln_vocab *v = NULL;
    if (rc < 0 || !lines) {
        free(buf);
        return rc < 0 ? rc : kiln_error(KILN_ENOMEM, "%s: out of memory", path);
    }
    if (n_lines < 1 + CLIP_N_MERGES) {
        rc = kiln_error(KILN_EFORMAT, "%s: %zu lines, a CLIP vocabulary needs a header line and %d merges",
                        path, n_lines, CLIP_N_MERGES);
        goto done;
    }
    rc = vocab_alloc(&v, 256 * 2 + CLIP_N_MERGES + 2, CLIP_N_MERGES);
    if (rc < 0) goto done;
    int order[256];
    uint32_t ch[256];
    bytes_to_unicode(order, ch);
    int32_t id = 0;
    for (int suffix = 0; suffix < 2 && rc == 0; suffix++)
        for (int i = 0; i < 256; i++) {
            char s[8] = {0};
            size_t n = kiln_utf8_encode(ch[order[i]], s);
            if (suffix) memcpy(s + n, "</w>", 5);
            if (!(v->pieces[id++] = strdup(s))) rc = kiln_error(KILN_ENOMEM, "%s: out of memory", path);
        }
    /* The merge lines give the merged tokens' strings; the ids follow the line order. */
    for (int i = 0; i < CLIP_N_MERGES && rc == 0; i++) {
        char *line = lines[1 + i];
        size_t l = strlen(line);
        char *s = malloc(l + 1);
        if (!s) {
            rc = kiln_error(KILN_ENOMEM, "%s: out of memory", path);
            break;
        }
        size_t k = 0;
        for (size_t j = 0; j < l; j++) /* "".join(line.split()) for a two-part line */
            if (!(line[j] == ' ' || line[j] == '\t' || line[j] == '\r' || line[j] == '\v' || line[j] == '\f'))
                s[k++] = line[j];
        s[k] = '\0';
        v->pieces[id++] = s;
    }
    if (rc == 0 && (!(v->pieces[id++] = strdup("<|startoftext|>")) || !(v->pieces[id++] = strdup("<|endoftext|>"))))
        rc = kiln_error(KILN_ENOMEM, "%s: out of memory", path);
    if (rc == 0) {
        for (int32_t i = 0; i < v->n_ids; i++) str_insert(v, i);
        rc = add_merges(v, path, lines + 1, CLIP_N_MERGES, 2);
    }
    if (rc == 0) rc = find_fixed_ids(v, path);
    if (rc < 0)
        kiln_vocab_free(v);
    else
        *out = v;
done:
    free(lines);
    free(buf);
    return rc;
}

/* A diffusers/transformers tokenizer: vocab.json ({"token": id}) and merges.txt. */
static int load_diffusers(const char *vocab_path, const char *merges_path, kiln_vocab **out) {
    json_error_t jerr;
    json_t *root = json_load_file(vocab_path, 0, &jerr);
    if (!root) {
        if (!is_file(vocab_path)) return kiln_error(KILN_EIO, "%s: cannot open: no such file", vocab_path);
        return kiln_error(KILN_EFORMAT, "%s: line %d: %s", vocab_path, jerr.line, jerr.text);
    }
    if (!json_is_object(root) || json_object_size(root) == 0) {
        json_decref(root);
        return kiln_error(KILN_EFORMAT, "%s: expected a JSON object of token -> id", vocab_path);
    }
    const char *key;
    json_t *val;
    json_int_t max_id = -1;
    json_object_foreach(root, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= VOCAB_MAX_IDS) {
            json_decref(root);
            return kiln_error(KILN_EFORMAT, "%s: token \"%s\": the id must be an integer in [0, %d)",
                              vocab_path, key, VOCAB_MAX_IDS);
        }
        if (id > max_id) max_id = id;
    }

    char *buf = NULL, **lines = NULL;
    size_t len, n_lines = 0;
    kiln_vocab *v = NULL;
    int rc = read_file(merges_path, &buf, &len);
    if (rc == 0) rc = check_utf8(merges_path, buf, len);
    size_t start = 0, n_merges = 0;
    if (rc == 0) {
        /* transformers: merges_handle.read().strip().split("\n")[1:49152-256-2+1] */
        strip_ascii(buf, &start, &len);
        buf[start + len] = '\0';
        lines = split_lines(buf + start, len, &n_lines);
        if (!lines) rc = kiln_error(KILN_ENOMEM, "%s: out of memory", merges_path);
        n_merges = n_lines > 1 ? n_lines - 1 : 0;
        if (n_merges > CLIP_N_MERGES) n_merges = CLIP_N_MERGES;
    }
    if (rc == 0) rc = vocab_alloc(&v, (int32_t)max_id + 1, n_merges);
    if (rc == 0) {
        json_object_foreach(root, key, val) {
            json_int_t id = json_integer_value(val);
            if (v->pieces[id]) {
                rc = kiln_error(KILN_EFORMAT, "%s: id %lld is used by \"%s\" and \"%s\"", vocab_path,
                                (long long)id, v->pieces[id], key);
                break;
            }
            if (!(v->pieces[id] = strdup(key))) {
                rc = kiln_error(KILN_ENOMEM, "%s: out of memory", vocab_path);
                break;
            }
        }
    }
    if (rc == 0) {
        for (int32_t i = 0; i < v->n_ids; i++)
            if (v->pieces[i]) str_insert(v, i);
        rc = add_merges(v, merges_path, lines + 1, n_merges, 2);
    }
    if (rc == 0) rc = find_fixed_ids(v, vocab_path);
    if (rc < 0)
        kiln_vocab_free(v);
    else
        *out = v;
    free(lines);
    free(buf);
    json_decref(root);
    return rc;
}

/* ---- choosing the source ---------------------------------------------------------------------- */

static int load_path(const char *path, kiln_vocab **out) {
    char a[4096], b[4096];
    if (is_dir(path)) {
        /* A tokenizer folder, or a diffusers model folder that holds one. */
        snprintf(a, sizeof a, "%s/vocab.json", path);
        snprintf(b, sizeof b, "%s/merges.txt", path);
        if (is_file(a)) return load_diffusers(a, b, out);
        snprintf(a, sizeof a, "%s/tokenizer/vocab.json", path);
        snprintf(b, sizeof b, "%s/tokenizer/merges.txt", path);
        if (is_file(a)) return load_diffusers(a, b, out);
        snprintf(a, sizeof a, "%s/bpe_simple_vocab_16e6.txt.gz", path);
        if (is_file(a)) return load_bpe_simple(a, out);
        return kiln_error(KILN_ENOTFOUND,
                          "%s: a folder without vocab.json + merges.txt, tokenizer/ or bpe_simple_vocab_16e6.txt.gz",
                          path);
    }
    if (!is_file(path)) return kiln_error(KILN_ENOTFOUND, "CLIP vocabulary %s: no such file", path);
    size_t n = strlen(path);
    if (n >= 5 && strcmp(path + n - 5, ".json") == 0) {
        /* vocab.json given directly: merges.txt is beside it. */
        const char *slash = strrchr(path, '/');
        int dir_len = slash ? (int)(slash - path) : 1;
        snprintf(b, sizeof b, "%.*s/merges.txt", dir_len, slash ? path : ".");
        return load_diffusers(path, b, out);
    }
    return load_bpe_simple(path, out);
}

#ifndef KILN_DATA_DIR
#define KILN_DATA_DIR "/usr/local/share/kiln"
#endif

int kiln_vocab_load(const char *path, kiln_vocab **out) {
    if (!out) return kiln_error(KILN_EINVAL, "kiln_vocab_load: out is NULL");
    if (path) return load_path(path, out);

    /* The default places, in order; the first that exists is used. */
    char tried[3][4096];
    int n = 0;
    const char *env = getenv("KILN_CLIP_VOCAB");
    if (env && *env) snprintf(tried[n++], sizeof tried[0], "%s", env);
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(tried[n++], sizeof tried[0], "%s/kiln/bpe_simple_vocab_16e6.txt.gz", xdg);
    else if (home && *home)
        snprintf(tried[n++], sizeof tried[0], "%s/.local/share/kiln/bpe_simple_vocab_16e6.txt.gz", home);
    snprintf(tried[n++], sizeof tried[0], "%s/bpe_simple_vocab_16e6.txt.gz", KILN_DATA_DIR);
    for (int i = 0; i < n; i++)
        if (is_file(tried[i]) || is_dir(tried[i])) return load_path(tried[i], out);
    return kiln_error(KILN_ENOTFOUND,
                      "no CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz) found; looked at: %s%s%s%s%s "
                      "(set KILN_CLIP_VOCAB or pass a path)",
                      tried[0], n > 1 ? ", " : "", n > 1 ? tried[1] : "", n > 2 ? ", " : "", n > 2 ? tried[2] : "");
}
