/* test_tokenizer.c — the CLIP BPE tokenizer against tiny-sd15/tokenizer.json (A1111's ids for 46
 * prompts), both vocabulary sources, and edge cases: invalid UTF-8, empty and long prompts,
 * special tokens, ftfy details, missing vocabulary files. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "test.h"
#include "text/tokenizer.h"

static const char *gz_path(void) { return KILN_SOURCE_DIR "/data/bpe_simple_vocab_16e6.txt.gz"; }

static kiln_tokenizer *tok_gz, *tok_diffusers;
static json_t *fixture;

static size_t tokenize(kiln_tokenizer *tok, const char *text, int32_t *ids, size_t cap) {
    size_t n = 0;
    int rc = kiln_tokenize(tok, text, ids, cap, &n);
    CHECK_MSG(rc == KILN_OK, "kiln_tokenize(\"%s\") = %d: %s", text, rc, kiln_last_error());
    return n;
}

/* ids of text compared with an expected list. */
static void check_ids(kiln_tokenizer *tok, const char *text, const int32_t *want, size_t n_want) {
    int32_t ids[256];
    size_t n = tokenize(tok, text, ids, 256);
    int same = n == n_want;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        fprintf(stderr, "  \"%s\": got", text);
        for (size_t i = 0; i < n && i < 256; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "; want");
        for (size_t i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    CHECK_MSG(same, "ids of \"%s\"", text);
}

TEST(load_both_sources) {
    int rc = kiln_tokenizer_load(gz_path(), &tok_gz);
    CHECK_MSG(rc == KILN_OK, "%s", kiln_last_error());
    rc = kiln_tokenizer_load(test_fixture("tiny-sd15/diffusers/tokenizer"), &tok_diffusers);
    CHECK_MSG(rc == KILN_OK, "%s", kiln_last_error());
    json_error_t err;
    fixture = json_load_file(test_fixture("tiny-sd15/tokenizer.json"), 0, &err);
    CHECK_MSG(fixture != NULL, "tokenizer.json: %s", err.text);
    if (!tok_gz || !tok_diffusers || !fixture) exit(1);
}

/* Both sources describe the same vocabulary: same size, strings, merges and special ids. */
TEST(sources_identical) {
    const kiln_vocab *a = kiln_tokenizer_vocab(tok_gz), *b = kiln_tokenizer_vocab(tok_diffusers);
    CHECK(a->n_ids == 49408 && b->n_ids == 49408);
    CHECK(a->n_merges == 48894 && b->n_merges == 48894);
    CHECK(a->bos_id == KILN_TOKEN_BOS && b->bos_id == KILN_TOKEN_BOS);
    CHECK(a->eos_id == KILN_TOKEN_EOS && b->eos_id == KILN_TOKEN_EOS);
    int differ = 0;
    for (int32_t i = 0; i < a->n_ids && i < b->n_ids; i++)
        if (!a->pieces[i] || !b->pieces[i] || strcmp(a->pieces[i], b->pieces[i]) != 0) differ++;
    CHECK_MSG(differ == 0, "%d ids have other strings", differ);
    CHECK(strcmp(a->pieces[320], "a</w>") == 0);
    CHECK(strcmp(a->pieces[0], "!") == 0);
    CHECK(strcmp(a->pieces[49405], b->pieces[49405]) == 0);
    int32_t rank, result;
    CHECK(kiln_vocab_merge(a, a->byte_id['i'], a->byte_id['n'], &rank, &result) && rank == 0);
    CHECK(strcmp(a->pieces[result], "in") == 0);
}

/* Every fixture prompt, with both sources, gives A1111's ids; the cleaned text matches too. */
TEST(fixture_prompts) {
    json_t *prompts = json_object_get(fixture, "prompts");
    CHECK(json_array_size(prompts) == 46);
    size_t i;
    json_t *p;
    int checked = 0;
    json_array_foreach(prompts, i, p) {
        const char *text = json_string_value(json_object_get(p, "prompt"));
        size_t text_len = json_string_length(json_object_get(p, "prompt"));
        json_t *want = json_object_get(p, "ids");
        size_t n_want = json_array_size(want);
        int32_t expect[512];
        CHECK(n_want <= 512);
        for (size_t k = 0; k < n_want && k < 512; k++) expect[k] = (int32_t)json_integer_value(json_array_get(want, k));
        check_ids(tok_gz, text, expect, n_want);
        check_ids(tok_diffusers, text, expect, n_want);

        char *clean = NULL;
        size_t clean_len = 0;
        int rc = kiln_tokenizer_clean_text(text, text_len, &clean, &clean_len);
        const char *want_clean = json_string_value(json_object_get(p, "cleaned_text"));
        CHECK_MSG(rc == KILN_OK && strcmp(clean, want_clean) == 0, "prompt %zu: cleaned \"%s\", want \"%s\"", i,
                  clean ? clean : "(error)", want_clean);
        free(clean);

        /* ids_with_special = BOS + ids + EOS, with the special tokens written in the text. */
        char buf[4096];
        snprintf(buf, sizeof buf, "<|startoftext|>%s<|endoftext|>", text);
        int32_t with[514];
        with[0] = KILN_TOKEN_BOS;
        memcpy(with + 1, expect, n_want * sizeof *expect);
        with[n_want + 1] = KILN_TOKEN_EOS;
        if (strlen(text) < 2000) check_ids(tok_gz, buf, with, n_want + 2);
        checked++;
    }
    CHECK(checked == 46);
}

/* The pieces of the ids spell the fixture's bpe_pieces. */
TEST(fixture_pieces) {
    json_t *p = json_array_get(json_object_get(fixture, "prompts"), 45);
    json_t *pieces = json_object_get(p, "bpe_pieces");
    const char *text = json_string_value(json_object_get(p, "prompt"));
    int32_t ids[512];
    size_t n = tokenize(tok_gz, text, ids, 512);
    CHECK(n == 139 && n == json_array_size(pieces));
    for (size_t i = 0; i < n && i < json_array_size(pieces); i++)
        CHECK(strcmp(kiln_tokenizer_piece(tok_gz, ids[i]), json_string_value(json_array_get(pieces, i))) == 0);
}

TEST(count_beyond_cap) {
    int32_t ids[2] = {-1, -1};
    size_t n = 0;
    CHECK(kiln_tokenize(tok_gz, "a photo of a cat", ids, 2, &n) == KILN_OK);
    CHECK(n == 5 && ids[0] == 320 && ids[1] == 1125);
    CHECK(kiln_tokenize(tok_gz, "a photo of a cat", NULL, 0, &n) == KILN_OK && n == 5);
}

TEST(empty_and_blank) {
    int32_t ids[4];
    CHECK(tokenize(tok_gz, "", ids, 4) == 0);
    CHECK(tokenize(tok_gz, " \t\r\n\u3000 ", ids, 4) == 0);
    CHECK(tokenize(tok_gz, "\x01\x02\x7f", ids, 4) == 0);
}

TEST(invalid_utf8) {
    static const char *bad[] = {"abc\xff", "\xc3", "ok \xe2\x82", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                "a\x80"};
    static const size_t offset[] = {3, 0, 3, 0, 0, 0, 1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t ids[8];
        size_t n = 12345;
        int rc = kiln_tokenize(tok_gz, bad[i], ids, 8, &n);
        CHECK(rc == KILN_EINVAL);
        CHECK(n == 12345); /* output untouched on failure */
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", offset[i]);
        CHECK_MSG(strstr(kiln_last_error(), want) != NULL, "message \"%s\" lacks \"%s\"", kiln_last_error(), want);
    }
}

/* A long prompt: the 120-word fixture prompt repeated many times tokenizes to as many copies. */
TEST(long_prompt) {
    const char *text =
        json_string_value(json_object_get(json_array_get(json_object_get(fixture, "prompts"), 45), "prompt"));
    size_t len = strlen(text), copies = 200;
    char *big = malloc((len + 1) * copies + 1);
    size_t k = 0;
    for (size_t i = 0; i < copies; i++) {
        memcpy(big + k, text, len);
        k += len;
        big[k++] = ' ';
    }
    big[k] = '\0';
    int32_t *ids = malloc(139 * copies * sizeof *ids);
    size_t n = tokenize(tok_gz, big, ids, 139 * copies);
    CHECK(n == 139 * copies);
    int32_t one[139];
    tokenize(tok_gz, text, one, 139);
    for (size_t i = 0; i < n && i < 139 * copies; i++)
        if (ids[i] != one[i % 139]) {
            CHECK_MSG(0, "copy %zu differs at %zu", i / 139, i % 139);
            break;
        }
    free(ids);
    free(big);

    /* One 100000-letter word: BPE on a long symbol list stays correct (a CLIP word of 40 a's is
     * in the fixtures; here only the count is known: every piece is a run of a's). */
    size_t nlong = 100000;
    char *word = malloc(nlong + 1);
    memset(word, 'a', nlong);
    word[nlong] = '\0';
    size_t total = 0;
    int32_t *wids = malloc(nlong * sizeof *wids);
    n = tokenize(tok_gz, word, wids, nlong);
    for (size_t i = 0; i < n; i++) {
        const char *piece = kiln_tokenizer_piece(tok_gz, wids[i]);
        size_t pl = strlen(piece);
        if (pl > 4 && strcmp(piece + pl - 4, "</w>") == 0) pl -= 4;
        total += pl;
    }
    CHECK(total == nlong);
    free(wids);
    free(word);
}

TEST(special_tokens) {
    int32_t want1[] = {49406, 320, 2368, 49407};
    check_ids(tok_gz, "<|startoftext|>a cat<|endoftext|>", want1, 4);
    /* Upper case: not split before ftfy, but lower() makes them match the word regex. */
    check_ids(tok_gz, "<|STARTOFTEXT|>a cat<|EndOfText|>", want1, 4);
    int32_t want2[] = {320, 49407, 2368};
    check_ids(tok_gz, "a<|endoftext|>cat", want2, 3);
}

/* ftfy per piece: HTML entities are decoded only while no line so far contains '<'. */
TEST(ftfy_html_rules) {
    char *c = NULL;
    size_t n;
    struct {
        const char *in, *out;
    } cases[] = {
        {"&amp;amp; &lt;", "& <"},           /* repeated until stable */
        {"x<y &amp;", "x<y &amp;"},          /* '<' in the line: no decoding */
        {"&amp;\nx<y\n&amp;", "& x<y &amp;"}, /* lines before the '<' are decoded, after it not */
        {"&#65;&#x42;&#X43;&#59;&#0;", "abc&#59;\xef\xbf\xbd"},
        {"&#12ab; &#xZZ; &#; &unknown; &NTILDE; &SZLIG;", "&#12ab; &#xzz; &#; &unknown; \xc3\xb1 ss"},
        {"&#128; &#150; &#1; &#xD800; &#x110000;", "\xe2\x82\xac \xe2\x80\x93 \xef\xbf\xbd \xef\xbf\xbd"},
        {"\xef\xac\x81 \xef\xbc\xa1\xef\xbd\xa1 \xe2\x80\x9cq\xe2\x80\x9d \xc5\x89", "fi a\xe3\x80\x82 \"q\" 'n"},
        {"a\x1b[31;1mred\x1b[0m b\xc2\x85""c", "ared b\xe2\x80\xa6""c"},
        {"\xce\xa3\xce\x91\xce\xa3 \xce\xa3", "\xcf\x83\xce\xb1\xcf\x82 \xcf\x83"}, /* final sigma */
        {"\xc4\xb0stanbul", "i\xcc\x87stanbul"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = kiln_tokenizer_clean_text(cases[i].in, strlen(cases[i].in), &c, &n);
        CHECK_MSG(rc == KILN_OK && strcmp(c, cases[i].out) == 0, "clean(\"%s\") = \"%s\", want \"%s\"", cases[i].in,
                  rc == KILN_OK ? c : kiln_last_error(), cases[i].out);
        if (rc == KILN_OK) free(c);
    }
}

static void check_loads_cat(const char *path) {
    kiln_tokenizer *t = NULL;
    int rc = kiln_tokenizer_load(path, &t);
    CHECK_MSG(rc == KILN_OK, "%s: %s", path, kiln_last_error());
    if (rc != KILN_OK) return;
    int32_t want[] = {320, 1125, 539, 320, 2368};
    check_ids(t, "a photo of a cat", want, 5);
    kiln_tokenizer_free(t);
}

/* Other ways to name a vocabulary: the diffusers model folder, vocab.json itself, an
 * uncompressed .txt; and broken files give a format error naming the file. */
TEST(vocab_forms) {
    char path[4096];
    snprintf(path, sizeof path, "%s", test_fixture("tiny-sd15/diffusers"));
    check_loads_cat(path);
    snprintf(path, sizeof path, "%s", test_fixture("tiny-sd15/diffusers/tokenizer/vocab.json"));
    check_loads_cat(path);

    /* A plain copy of the .txt.gz, and copies cut short or with a broken merge line. */
    char *text = NULL;
    size_t len = 0;
    {
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "gzip -dc '%s'", gz_path());
        FILE *f = popen(cmd, "r");
        CHECK(f != NULL);
        if (!f) return;
        size_t cap = 4 << 20;
        text = malloc(cap);
        len = fread(text, 1, cap, f);
        pclose(f);
    }
    CHECK(len > 1000000);
    const char *dir = KILN_BUILD_DIR;
    snprintf(path, sizeof path, "%s/test_tokenizer_vocab.txt", dir);
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, len, f);
    fclose(f);
    check_loads_cat(path);

    /* Only the header and 1000 merges. */
    size_t cut = 0;
    for (int lines = 0; cut < len && lines < 1001; cut++) lines += text[cut] == '\n';
    f = fopen(path, "wb");
    fwrite(text, 1, cut, f);
    fclose(f);
    kiln_tokenizer *t = NULL;
    CHECK(kiln_tokenizer_load(path, &t) == KILN_EFORMAT && t == NULL);
    CHECK(strstr(kiln_last_error(), "test_tokenizer_vocab.txt") != NULL);

    /* Merge line 3 ("t h") made into one part, " xh". */
    char *second = strchr(strchr(text, '\n') + 1, '\n') + 1;
    CHECK(second[0] == 't' && second[1] == ' ' && second[2] == 'h');
    second[1] = 'x', second[0] = ' ';
    f = fopen(path, "wb");
    fwrite(text, 1, len, f);
    fclose(f);
    CHECK(kiln_tokenizer_load(path, &t) == KILN_EFORMAT);
    CHECK_MSG(strstr(kiln_last_error(), "line 3") != NULL, "%s", kiln_last_error());
    remove(path);
    free(text);
}

TEST(missing_vocab) {
    kiln_tokenizer *t = NULL;
    int rc = kiln_tokenizer_load("/nonexistent/dir/bpe_simple_vocab_16e6.txt.gz", &t);
    CHECK(rc == KILN_ENOTFOUND && t == NULL);
    CHECK(strstr(kiln_last_error(), "/nonexistent/dir/bpe_simple_vocab_16e6.txt.gz") != NULL);

    /* Default search: $KILN_CLIP_VOCAB first; every place tried is named when none exists. */
    setenv("KILN_CLIP_VOCAB", "/nonexistent/env.txt.gz", 1);
    setenv("XDG_DATA_HOME", "/nonexistent/xdg", 1);
    rc = kiln_tokenizer_load(NULL, &t);
    if (rc == KILN_OK) {
        kiln_tokenizer_free(t); /* an installed copy in KILN_DATA_DIR */
    } else {
        CHECK(rc == KILN_ENOTFOUND);
        CHECK(strstr(kiln_last_error(), "/nonexistent/env.txt.gz") != NULL);
        CHECK(strstr(kiln_last_error(), "/nonexistent/xdg/kiln/bpe_simple_vocab_16e6.txt.gz") != NULL);
    }
    setenv("KILN_CLIP_VOCAB", gz_path(), 1);
    rc = kiln_tokenizer_load(NULL, &t);
    CHECK_MSG(rc == KILN_OK, "%s", kiln_last_error());
    kiln_tokenizer_free(t);
    unsetenv("KILN_CLIP_VOCAB");

    /* A file that is not a vocabulary. */
    rc = kiln_tokenizer_load(test_fixture("tiny-sd15/README.md"), &t);
    CHECK(rc == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "README.md") != NULL);
    kiln_tokenizer_free(NULL);
}

/* Several threads on one tokenizer (the word cache is shared) get the single-thread ids. */
static void *thread_body(void *arg) {
    json_t *prompts = json_object_get(fixture, "prompts");
    intptr_t bad = 0;
    for (int round = 0; round < 20; round++)
        for (size_t i = 0; i < json_array_size(prompts); i++) {
            size_t k = (i + (size_t)(intptr_t)arg * 7 + (size_t)round) % json_array_size(prompts);
            json_t *p = json_array_get(prompts, k), *want = json_object_get(p, "ids");
            int32_t ids[512];
            size_t n = 0;
            if (kiln_tokenize(tok_gz, json_string_value(json_object_get(p, "prompt")), ids, 512, &n) != KILN_OK ||
                n != json_array_size(want)) {
                bad++;
                continue;
            }
            for (size_t j = 0; j < n; j++) bad += ids[j] != (int32_t)json_integer_value(json_array_get(want, j));
        }
    return (void *)bad;
}

TEST(threads_share_tokenizer) {
    pthread_t th[4];
    for (intptr_t i = 0; i < 4; i++) CHECK(pthread_create(&th[i], NULL, thread_body, (void *)i) == 0);
    for (int i = 0; i < 4; i++) {
        void *bad = NULL;
        pthread_join(th[i], &bad);
        CHECK_MSG(bad == NULL, "thread %d: %ld wrong ids", i, (long)(intptr_t)bad);
    }
}

int main(void) {
    RUN(load_both_sources);
    RUN(sources_identical);
    RUN(fixture_prompts);
    RUN(fixture_pieces);
    RUN(count_beyond_cap);
    RUN(empty_and_blank);
    RUN(invalid_utf8);
    RUN(long_prompt);
    RUN(special_tokens);
    RUN(ftfy_html_rules);
    RUN(threads_share_tokenizer);
    RUN(vocab_forms);
    RUN(missing_vocab);
    kiln_tokenizer_free(tok_gz);
    kiln_tokenizer_free(tok_diffusers);
    json_decref(fixture);
    return test_summary();
}
