/* test_prompt.c — A1111 prompt syntax (attention, BREAK, AND, [from:to:when], [a|b]), extra-network
 * tags and the 75-token chunker, against A1111's own doc-tests, behaviour of A1111's code checked
 * by hand, and the tiny-sd15 fixtures (manifest.json parsed_attention, conditioning*.safetensors
 * NAME_tokens / NAME_multipliers, txt2img runs' cond/uncond tokens). */
#include "test.h"

#include "io/safetensors.h"
#include "kiln.h"
#include "text/chunker.h"
#include "text/extra_networks.h"
#include "text/prompt_parser.h"
#include "text/pytext.h"

#include <jansson.h>

/* ---- helpers ------------------------------------------------------------------------------------ */

typedef struct fw {
    const char *text;
    double weight;
} fw;

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* parse_prompt_attention(prompt) == expected (weights compared exactly: A1111's doubles) */
static int attention_is(const char *prompt, const fw *exp, int n) {
    kiln_prompt_fragments f;
    int rc = kiln_prompt_parse_attention(prompt, &f);
    if (rc) {
        fprintf(stderr, "  parse_attention(%s) failed: %s\n", prompt, kiln_last_error());
        return 0;
    }
    int ok = f.n == n;
    for (int i = 0; ok && i < n; i++) ok = strcmp(f.items[i].text, exp[i].text) == 0 && f.items[i].weight == exp[i].weight;
    if (!ok) {
        fprintf(stderr, "  parse_attention(\"%s\") gave:", prompt);
        for (int i = 0; i < f.n; i++) fprintf(stderr, " [\"%s\", %.17g]", f.items[i].text, f.items[i].weight);
        fprintf(stderr, "\n");
    }
    kiln_prompt_fragments_free(&f);
    return ok;
}
#define CHECK_ATTN(prompt, ...)                                                                      \
    do {                                                                                             \
        static const fw exp_[] = {__VA_ARGS__};                                                     \
        CHECK_MSG(attention_is(prompt, exp_, N_OF(exp_)), "%s", prompt);                           \
    } while (0)

typedef struct st {
    int step;
    const char *text;
} st;

static int schedule_is(const char *prompt, int steps, int hires, const st *exp, int n) {
    kiln_prompt_schedule s;
    kiln_prompt_schedule_options o = {steps, hires, 0};
    if (kiln_prompt_get_schedule(prompt, &o, &s)) {
        fprintf(stderr, "  schedule(%s) failed: %s\n", prompt, kiln_last_error());
        return 0;
    }
    int ok = s.n == n;
    for (int i = 0; ok && i < n; i++) ok = s.items[i].end_at_step == exp[i].step && strcmp(s.items[i].text, exp[i].text) == 0;
    if (!ok) {
        fprintf(stderr, "  schedule(\"%s\", %d) gave:", prompt, steps);
        for (int i = 0; i < s.n; i++) fprintf(stderr, " [%d, \"%s\"]", s.items[i].end_at_step, s.items[i].text);
        fprintf(stderr, "\n");
    }
    kiln_prompt_schedule_free(&s);
    return ok;
}
#define CHECK_SCHED(prompt, steps, hires, ...)                                                       \
    do {                                                                                             \
        static const st exp_[] = {__VA_ARGS__};                                                     \
        CHECK_MSG(schedule_is(prompt, steps, hires, exp_, N_OF(exp_)), "%s", prompt);              \
    } while (0)

static int and_is(const char *prompt, const fw *exp, int n) {
    kiln_prompt_parts p;
    if (kiln_prompt_split_and(prompt, &p)) return 0;
    int ok = p.n == n;
    for (int i = 0; ok && i < n; i++) ok = strcmp(p.items[i].text, exp[i].text) == 0 && p.items[i].weight == exp[i].weight;
    if (!ok) {
        fprintf(stderr, "  split_and(\"%s\") gave:", prompt);
        for (int i = 0; i < p.n; i++) fprintf(stderr, " [\"%s\", %.17g]", p.items[i].text, p.items[i].weight);
        fprintf(stderr, "\n");
    }
    kiln_prompt_parts_free(&p);
    return ok;
}
#define CHECK_AND(prompt, ...)                                                                       \
    do {                                                                                             \
        static const fw exp_[] = {__VA_ARGS__};                                                     \
        CHECK_MSG(and_is(prompt, exp_, N_OF(exp_)), "%s", prompt);                                 \
    } while (0)

/* ---- A1111 doc-tests ------------------------------------------------------------------------------ */

TEST(attention_docstring) {
    CHECK_ATTN("normal text", {"normal text", 1.0});
    CHECK_ATTN("an (important) word", {"an ", 1.0}, {"important", 1.1}, {" word", 1.0});
    CHECK_ATTN("(unbalanced", {"unbalanced", 1.1});
    CHECK_ATTN("\\(literal\\]", {"(literal]", 1.0});
    CHECK_ATTN("(unnecessary)(parens)", {"unnecessaryparens", 1.1});
    CHECK_ATTN("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", {"a ", 1.0}, {"house", 1.5730000000000004},
               {" ", 1.1}, {"on", 1.0}, {" a ", 1.1}, {"hill", 0.55}, {", sun, ", 1.1}, {"sky", 1.4641000000000006},
               {".", 1.1});
}

/* Behaviour of A1111's parse_prompt_attention on odd input (values printed by A1111's function). */
TEST(attention_edge_cases) {
    CHECK_ATTN("", {"", 1.0});
    CHECK_ATTN("()", {"", 1.0});
    CHECK_ATTN("BREAK", {"", 1.0}, {"BREAK", -1}, {"", 1.0});
    CHECK_ATTN("a BREAK BREAK b", {"a", 1.0}, {"BREAK", -1}, {"", 1.0}, {"BREAK", -1}, {"b", 1.0});
    CHECK_ATTN("a,BREAK,b", {"a,", 1.0}, {"BREAK", -1}, {",b", 1.0});
    CHECK_ATTN("xBREAK BREAKy", {"xBREAK BREAKy", 1.0});
    /* BREAK inside brackets gets its weight multiplied and is no longer a BREAK */
    CHECK_ATTN("a (b BREAK c)", {"a ", 1.0}, {"b", 1.1}, {"BREAK", -1.1}, {"c", 1.1});
    CHECK_ATTN("(BREAK:-1)", {"", -1.0}, {"BREAK", 1.0}, {"", -1.0});
    CHECK_ATTN("a\\\\b\\x", {"a\\bx", 1.0}); /* a lone backslash vanishes */
    CHECK_ATTN("(a:1e999)", {"a:1e999", 1.1}); /* not a weight: plain text, A1111 is lenient */
    CHECK_ATTN("((a)", {"a", 1.2100000000000002});
    CHECK_ATTN("a]b)c", {"a]b)c", 1.0});
    CHECK_ATTN("(a:-1.5) (b: 0.5 )", {"a", -1.5}, {" ", 1.0}, {"b", 0.5});
    CHECK_ATTN("[[a]:1.2]", {"a", 0.8264462809917354}, {":1.2", 0.9090909090909091});
    CHECK_ATTN("a (b:2) c", {"a ", 1.0}, {"b", 2.0}, {" c", 1.0});
    CHECK_ATTN("\xe3\x80\x80" "BREAK\xe3\x80\x80" "x", {"", 1.0}, {"BREAK", -1}, {"x", 1.0}); /* U+3000 is \s */
    CHECK_ATTN("caf\xc3\xa9" "BREAK", {"caf\xc3\xa9" "BREAK", 1.0});                  /* é is \w */
    CHECK_ATTN("(a:\xd9\xa3)", {"a", 3.0}); /* Arabic-Indic digit three: Python's \d and float() take it */

    kiln_prompt_fragments f;
    CHECK(kiln_prompt_parse_attention("(a:1.2.3)", &f) == KILN_EINVAL); /* A1111: ValueError */
    CHECK(strstr(kiln_last_error(), "1.2.3") != NULL);
    CHECK(kiln_prompt_parse_attention("(a:.)", &f) == KILN_EINVAL);
    char huge[600];
    strcpy(huge, "(a:1");
    for (int i = 0; i < 400; i++) strcat(huge, "0");
    strcat(huge, ")");
    CHECK(kiln_prompt_parse_attention(huge, &f) == KILN_EINVAL); /* 1e400 = inf */
    CHECK(strstr(kiln_last_error(), "finite") != NULL);
    CHECK(kiln_prompt_parse_attention("bad \xff utf8", &f) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "UTF-8") != NULL);
    CHECK(kiln_prompt_parse_attention("overlong \xc0\xaf", &f) == KILN_EINVAL);
    CHECK(f.n == 0 && f.items == NULL);
    kiln_prompt_fragments_free(&f);
    kiln_prompt_fragments_free(NULL);

    /* thousands of unclosed brackets: A1111 accepts them */
    size_t n = 3000;
    char *deep = malloc(2 * n + 2);
    for (size_t i = 0; i < n; i++) deep[2 * i] = '(', deep[2 * i + 1] = 'a';
    deep[2 * n] = '\0';
    CHECK(kiln_prompt_parse_attention(deep, &f) == 0);
    CHECK(f.n == (int)n);
    kiln_prompt_fragments_free(&f);
    free(deep);

    /* ... but an absurd amount of nesting is refused rather than taking minutes */
    n = 30000;
    deep = malloc(2 * n + 2);
    for (size_t i = 0; i < n; i++) deep[2 * i] = '(', deep[2 * i + 1] = 'a';
    deep[2 * n] = '\0';
    CHECK(kiln_prompt_parse_attention(deep, &f) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "nested") != NULL);
    free(deep);

    /* 100000 escaped brackets merge into one fragment (in linear time) */
    n = 100000;
    char *esc = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) esc[2 * i] = '\\', esc[2 * i + 1] = '(';
    esc[2 * n] = '\0';
    CHECK(kiln_prompt_parse_attention(esc, &f) == 0);
    CHECK(f.n == 1 && strlen(f.items[0].text) == n && f.items[0].text[n - 1] == '(');
    kiln_prompt_fragments_free(&f);
    free(esc);
}

TEST(schedule_docstring) {
    CHECK_SCHED("test", 10, 0, {10, "test"});
    CHECK_SCHED("a [b:3]", 10, 0, {3, "a "}, {10, "a b"});
    CHECK_SCHED("a [b: 3]", 10, 0, {3, "a "}, {10, "a b"});
    CHECK_SCHED("a [[[b]]:2]", 10, 0, {2, "a "}, {10, "a [[b]]"});
    CHECK_SCHED("[(a:2):3]", 10, 0, {3, ""}, {10, "(a:2)"});
    CHECK_SCHED("a [b : c : 1] d", 10, 0, {1, "a b  d"}, {10, "a  c  d"});
    CHECK_SCHED("a[b:[c:d:2]:1]e", 10, 0, {1, "abe"}, {2, "ace"}, {10, "ade"});
    CHECK_SCHED("a [unbalanced", 10, 0, {10, "a [unbalanced"});
    CHECK_SCHED("a [b:.5] c", 10, 0, {5, "a  c"}, {10, "a b c"});
    /* A1111's doc-test says [[5, 'a  c'], [10, 'a {b|d{ c']], written before '|' became special; the
     * v1.9.4 grammar rejects the prompt and A1111 keeps it unchanged (checked with lark). */
    CHECK_SCHED("a [{b|d{:.5] c", 10, 0, {10, "a [{b|d{:.5] c"});
    CHECK_SCHED("((a][:b:c [d:3]", 10, 0, {3, "((a][:b:c "}, {10, "((a][:b:c d"});
    CHECK_SCHED("[a|(b:1.1)]", 10, 0, {1, "a"}, {2, "(b:1.1)"}, {3, "a"}, {4, "(b:1.1)"}, {5, "a"}, {6, "(b:1.1)"},
                {7, "a"}, {8, "(b:1.1)"}, {9, "a"}, {10, "(b:1.1)"});
    CHECK_SCHED("[fe|]male", 10, 0, {1, "female"}, {2, "male"}, {3, "female"}, {4, "male"}, {5, "female"}, {6, "male"},
                {7, "female"}, {8, "male"}, {9, "female"}, {10, "male"});
    CHECK_SCHED("[fe|||]male", 10, 0, {1, "female"}, {2, "male"}, {3, "male"}, {4, "male"}, {5, "female"}, {6, "male"},
                {7, "male"}, {8, "male"}, {9, "female"}, {10, "male"});
    /* hires pass: get_learned_conditioning_prompt_schedules([p], 10, 10) */
    CHECK_SCHED("a [b:.5] c", 10, 10, {10, "a b c"});
    CHECK_SCHED("a [b:1.5] c", 10, 10, {5, "a  c"}, {10, "a b c"});
    /* the comment at the top of prompt_parser.py (100 steps) */
    CHECK_SCHED("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
                "[ in background:0.25] [shoddy:masterful:0.5]",
                100, 0, {25, "fantasy landscape with a mountain and an oak in foreground shoddy"},
                {50, "fantasy landscape with a lake and an oak in foreground in background shoddy"},
                {60, "fantasy landscape with a lake and an oak in foreground in background masterful"},
                {75, "fantasy landscape with a lake and an oak in background masterful"},
                {100, "fantasy landscape with a lake and a christmas tree in background masterful"});
}

/* Other behaviour of A1111's parser (each the same under every Python hash seed tried). */
TEST(schedule_edge_cases) {
    CHECK_SCHED("[a [b:2]:3]", 10, 0, {2, ""}, {3, ""}, {10, "a b"});
    CHECK_SCHED("[a [b:2] :x]", 10, 0, {2, "[a  :x]"}, {10, "[a b :x]"});
    CHECK_SCHED("[[a|b:3]|c]", 10, 0, {10, "[[a|b:3]|c]"});
    CHECK_SCHED("[a|[b:2]]", 10, 0, {1, "a"}, {2, ""}, {3, "a"}, {4, "b"}, {5, "a"}, {6, "b"}, {7, "a"}, {8, "b"},
                {9, "a"}, {10, "b"});
    CHECK_SCHED("(a [b:2] ) ]", 10, 0, {2, "(a  ) ]"}, {10, "(a b ) ]"});
    CHECK_SCHED("[[a:2]", 10, 0, {2, "["}, {10, "[a"});
    CHECK_SCHED("[a|b", 10, 0, {10, "[a|b"});
    CHECK_SCHED("a|b", 10, 0, {10, "a|b"});
    CHECK_SCHED("\\", 10, 0, {10, "\\"});
    CHECK_SCHED("a \\\n[b:3]", 10, 0, {10, "a \\\n[b:3]"}); /* backslash-newline: no parse */
    CHECK_SCHED("[a:b:1e3]", 10, 0, {10, "a"});
    CHECK_SCHED("[a:b:-1]", 10, 0, {10, "b"});
    CHECK_SCHED("[a:b:1.5e-1]", 10, 0, {1, "a"}, {10, "b"});
    CHECK_SCHED("[ a : b : 3 ]", 10, 0, {3, " a "}, {10, " b "});
    CHECK_SCHED("[a:b:\n3]", 10, 0, {3, "a"}, {10, "b"});
    CHECK_SCHED("[(a]:3)", 10, 0, {10, "[(a]:3)"});
    CHECK_SCHED("[a:(b:3)]", 10, 0, {10, "[a:(b:3)]"});
    CHECK_SCHED("(a:[b:c:3])", 10, 0, {3, "(a:b)"}, {10, "(a:c)"});
    CHECK_SCHED("[a:b:0.3]", 10, 0, {3, "a"}, {10, "b"}); /* int(0.3 * 10) = int(3.0000000000000004) */
    CHECK_SCHED("", 10, 0, {10, ""});

    kiln_prompt_schedule s;
    kiln_prompt_schedule_options o = {10, 0, 0};
    CHECK(kiln_prompt_get_schedule("[a:1e999]", &o, &s) == KILN_EINVAL); /* A1111: OverflowError */
    CHECK(strstr(kiln_last_error(), "1e999") != NULL);
    CHECK(kiln_prompt_get_schedule("a \xfe", &o, &s) == KILN_EINVAL);
    o.steps = 0;
    CHECK(kiln_prompt_get_schedule("a", &o, &s) == KILN_EINVAL);
    CHECK(s.n == 0);
    kiln_prompt_schedule_free(&s);

    /* use_old_scheduling: a fraction only below 1, else a step number */
    kiln_prompt_schedule_options old = {10, 10, 1};
    CHECK(kiln_prompt_get_schedule("a [b:1.5] c", &old, &s) == 0);
    CHECK(s.n == 2 && s.items[0].end_at_step == 1 && strcmp(s.items[1].text, "a b c") == 0);
    kiln_prompt_schedule_free(&s);

    /* reconstruct_cond_batch: the first entry whose end_at_step >= the denoiser step */
    o.steps = 10;
    CHECK(kiln_prompt_get_schedule("[a:b:3]", &o, &s) == 0);
    CHECK(strcmp(kiln_prompt_schedule_at(&s, 0), "a") == 0);
    CHECK(strcmp(kiln_prompt_schedule_at(&s, 3), "a") == 0);
    CHECK(strcmp(kiln_prompt_schedule_at(&s, 4), "b") == 0);
    CHECK(strcmp(kiln_prompt_schedule_at(&s, 11), "a") == 0);
    kiln_prompt_schedule_free(&s);

    /* deep nesting and many unclosed brackets stay fast and keep the text */
    size_t n = 20000;
    char *deep = malloc(n + 8);
    for (size_t i = 0; i < n; i++) deep[i] = i % 2 ? '(' : '[';
    strcpy(deep + n, "[x:2]");
    CHECK(kiln_prompt_get_schedule(deep, &o, &s) == 0);
    CHECK(s.n == 2 && strlen(s.items[1].text) == n + 1 && s.items[1].text[n] == 'x');
    kiln_prompt_schedule_free(&s);
    free(deep);
}

TEST(and_split) {
    CHECK_AND("a cat AND a dog:0.5", {"a cat", 1.0}, {" a dog", 0.5});
    CHECK_AND("a:1.5 AND  b AND c : -2 ", {"a", 1.5}, {"  b", 1.0}, {" c", -2.0});
    CHECK_AND("ANDROID AND", {"ANDROID", 1.0}, {"", 1.0});
    CHECK_AND("red:.5", {"red", 0.5});
    CHECK_AND("a: 2.", {"a", 2.0});
    CHECK_AND("a (b:1.2)", {"a (b:1.2)", 1.0});
    CHECK_AND("cat ANDdog", {"cat ANDdog", 1.0});
    CHECK_AND("a\nAND\nb:3", {"a", 1.0}, {"\nb", 3.0});
    CHECK_AND("", {"", 1.0});
    CHECK_AND("AND", {"", 1.0}, {"", 1.0});
}

/* Python float()/int() as A1111's weights and LoRA multipliers go through them (values from Python 3.11) */
TEST(python_numbers) {
    static const struct { const char *s; int ok; double v; } fl[] = {
        {"1_000.5", 1, 1000.5}, {"1__0", 0, 0}, {"_1", 0, 0}, {"1_", 0, 0}, {" 1.5 ", 1, 1.5}, {"1e5", 1, 1e5},
        {"1e", 0, 0}, {".e1", 0, 0}, {"\xd9\xa1\xd9\xa2", 1, 12.0}, {"1.2.3", 0, 0}, {"0x10", 0, 0}, {"in f", 0, 0},
        {"5.", 1, 5.0}, {".5", 1, 0.5}, {"1_0e1_0", 1, 1e11}, {"\xc2\xa0" "1\xe3\x80\x80", 1, 1.0}, {"1e-400", 1, 0.0},
        {"1.5_", 0, 0}, {"", 0, 0}, {"0.1", 1, 0.1}, {"-2.5e-3", 1, -2.5e-3}, {"a", 0, 0},
    };
    for (int i = 0; i < N_OF(fl); i++) {
        double v = -99;
        int rc = kiln_py_float(fl[i].s, strlen(fl[i].s), &v);
        CHECK_MSG(fl[i].ok ? rc == 0 && v == fl[i].v : rc == KILN_EINVAL, "float('%s') rc %d v %.17g", fl[i].s, rc, v);
    }
    double v;
    CHECK(kiln_py_float("+inf", 4, &v) == 0 && isinf(v) && v > 0);
    CHECK(kiln_py_float("Infinity", 8, &v) == 0 && isinf(v));
    CHECK(kiln_py_float("-nan", 4, &v) == 0 && isnan(v));
    static const struct { const char *s; int ok; int v; } in[] = {
        {"8", 1, 8}, {" -3 ", 1, -3}, {"1_0", 1, 10}, {"1.0", 0, 0}, {"", 0, 0}, {"+", 0, 0},
        {"999999999999", 0, 0}, {"\xd9\xa3", 1, 3}, {"1__0", 0, 0},
    };
    for (int i = 0; i < N_OF(in); i++) {
        int x = -99;
        int rc = kiln_py_int(in[i].s, strlen(in[i].s), &x);
        CHECK_MSG(in[i].ok ? rc == 0 && x == in[i].v : rc == KILN_EINVAL, "int('%s') rc %d v %d", in[i].s, rc, x);
    }
}

/* ---- extra networks ------------------------------------------------------------------------------ */

TEST(extra_network_tags) {
    char *rest;
    kiln_extra_networks en;
    /* the manifest's LoRA run */
    CHECK(kiln_extra_networks_parse("a watercolor landscape, <lora:tiny_lora:0.8> mountains and a lake", &rest, &en) == 0);
    CHECK(strcmp(rest, "a watercolor landscape,  mountains and a lake") == 0);
    CHECK(en.n == 1 && strcmp(en.items[0].type, "lora") == 0 && en.items[0].n_items == 2);
    CHECK(strcmp(en.items[0].items[0], "tiny_lora") == 0 && strcmp(en.items[0].items[1], "0.8") == 0);
    kiln_lora_request lr;
    CHECK(kiln_extra_network_lora(&en.items[0], &lr) == 0);
    CHECK(strcmp(lr.name, "tiny_lora") == 0 && lr.te_multiplier == 0.8 && lr.unet_multiplier == 0.8 && lr.dyn_dim == -1);
    free(rest);
    kiln_extra_networks_free(&en);

    CHECK(kiln_extra_networks_parse("<lora:a:0.5:0.25:8>x<hypernet:h:k=v=w><lora:b:te=0.3:unet=1_0>", &rest, &en) == 0);
    CHECK(strcmp(rest, "x") == 0 && en.n == 3);
    CHECK(kiln_extra_network_lora(&en.items[0], &lr) == 0);
    CHECK(lr.te_multiplier == 0.5 && lr.unet_multiplier == 0.25 && lr.dyn_dim == 8);
    CHECK(strcmp(en.items[1].type, "hypernet") == 0 && en.items[1].n_positional == 2 && en.items[1].n_named == 0);
    CHECK(strcmp(en.items[1].positional[1], "k=v=w") == 0); /* two '=': positional (split('=', 2)) */
    CHECK(kiln_extra_network_lora(&en.items[2], &lr) == 0);
    CHECK(strcmp(lr.name, "b") == 0 && lr.te_multiplier == 0.3 && lr.unet_multiplier == 10.0);
    CHECK(en.items[2].n_positional == 1 && en.items[2].n_named == 2);
    CHECK(strcmp(kiln_extra_network_named(&en.items[2], "te"), "0.3") == 0);
    CHECK(kiln_extra_network_named(&en.items[2], "dyn") == NULL);
    free(rest);
    kiln_extra_networks_free(&en);

    /* not tags: no name, a non-word name, empty args, no '>' */
    const char *kept = "<:x> <a b:c> <lora:> <lora:x";
    CHECK(kiln_extra_networks_parse(kept, &rest, &en) == 0);
    CHECK(strcmp(rest, kept) == 0 && en.n == 0);
    free(rest);
    kiln_extra_networks_free(&en);
    /* [^>]+ runs to the first '>', taking a '<' with it */
    CHECK(kiln_extra_networks_parse("<a:<lora:x:1> y", &rest, &en) == 0);
    CHECK(strcmp(rest, " y") == 0 && en.n == 1 && strcmp(en.items[0].type, "a") == 0 && en.items[0].n_items == 3);
    free(rest);
    kiln_extra_networks_free(&en);

    CHECK(kiln_extra_networks_parse("<lora:te=1>", &rest, &en) == 0);
    CHECK(kiln_extra_network_lora(&en.items[0], &lr) == KILN_EINVAL);
    free(rest);
    kiln_extra_networks_free(&en);
    CHECK(kiln_extra_networks_parse("<lora:x:abc>", &rest, &en) == 0);
    CHECK(kiln_extra_network_lora(&en.items[0], &lr) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "abc") != NULL);
    free(rest);
    kiln_extra_networks_free(&en);
    CHECK(kiln_extra_networks_parse("<lora:x:1:inf>", &rest, &en) == 0);
    CHECK(kiln_extra_network_lora(&en.items[0], &lr) == KILN_EINVAL);
    free(rest);
    kiln_extra_networks_free(&en);
    CHECK(kiln_extra_networks_parse("<lora:\xff:1>", &rest, &en) == KILN_EINVAL);
    CHECK(rest == NULL && en.n == 0);
}

/* ---- chunker on synthetic token ids --------------------------------------------------------------- */

static int32_t *rep(int32_t *dst, int32_t id, int n) {
    for (int i = 0; i < n; i++) dst[i] = id;
    return dst + n;
}

/* chunk c, token position p (0 = BOS) */
#define TOK(ch, c, p) ((ch).tokens[(c) * KILN_CHUNK_LEN + (p)])
#define MUL(ch, c, p) ((ch).multipliers[(c) * KILN_CHUNK_LEN + (p)])

TEST(chunker_synthetic) {
    kiln_prompt_chunks ch;
    int32_t ids[200];
    kiln_token_fragment fr[4];
    memset(fr, 0, sizeof fr);

    /* empty: one chunk BOS + EOS x 76 */
    CHECK(kiln_chunk_fragments(NULL, 0, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 1 && ch.token_count == 0 && TOK(ch, 0, 0) == KILN_TOKEN_BOS && TOK(ch, 0, 1) == KILN_TOKEN_EOS);
    kiln_prompt_chunks_free(&ch);

    /* 80 tokens, no comma: 75 + 5 */
    rep(ids, 100, 80);
    fr[0] = (kiln_token_fragment){ids, 80, 1.1, 0};
    CHECK(kiln_chunk_fragments(fr, 1, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 2 && ch.token_count == 80);
    CHECK(TOK(ch, 0, 75) == 100 && TOK(ch, 0, 76) == KILN_TOKEN_EOS && TOK(ch, 1, 5) == 100 && TOK(ch, 1, 6) == KILN_TOKEN_EOS);
    CHECK(MUL(ch, 0, 0) == 1.0f && MUL(ch, 0, 1) == (float)1.1 && MUL(ch, 1, 5) == (float)1.1 && MUL(ch, 1, 6) == 1.0f);
    kiln_prompt_chunks_free(&ch);

    /* comma 15 back from the end of a full chunk: the 14 tokens after it move on */
    int32_t *p = rep(ids, 100, 60);
    p = rep(p, KILN_TOKEN_COMMA, 1);
    rep(p, 101, 20);
    fr[0] = (kiln_token_fragment){ids, 81, 1.0, 0};
    CHECK(kiln_chunk_fragments(fr, 1, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 2 && ch.token_count == 95);
    CHECK(TOK(ch, 0, 61) == KILN_TOKEN_COMMA && TOK(ch, 0, 62) == KILN_TOKEN_EOS);
    CHECK(TOK(ch, 1, 1) == 101 && TOK(ch, 1, 20) == 101 && TOK(ch, 1, 21) == KILN_TOKEN_EOS);
    kiln_prompt_chunks_free(&ch);
    /* ... not with backtracking off */
    kiln_chunker_options o;
    kiln_chunker_options_init(&o);
    CHECK(o.comma_padding_backtrack == 20);
    o.comma_padding_backtrack = 0;
    CHECK(kiln_chunk_fragments(fr, 1, &o, &ch) == 0);
    CHECK(ch.n_chunks == 2 && TOK(ch, 0, 62) == 101 && TOK(ch, 1, 6) == 101 && TOK(ch, 1, 7) == KILN_TOKEN_EOS);
    kiln_prompt_chunks_free(&ch);

    /* comma exactly 20 back moves; 21 back does not */
    for (int back = 20; back <= 21; back++) {
        p = rep(ids, 100, 75 - back);
        p = rep(p, KILN_TOKEN_COMMA, 1);
        rep(p, 101, back - 1 + 3);
        fr[0] = (kiln_token_fragment){ids, 75 + 3, 1.0, 0};
        CHECK(kiln_chunk_fragments(fr, 1, NULL, &ch) == 0);
        int moved = back == 20;
        CHECK_MSG(TOK(ch, 0, 75) == (moved ? KILN_TOKEN_EOS : 101), "back %d", back);
        CHECK_MSG(ch.token_count == 75 + (moved ? back - 1 + 3 : 3), "back %d: %d", back, ch.token_count);
        kiln_prompt_chunks_free(&ch);
    }

    /* a comma arriving when the chunk is full starts the next chunk */
    p = rep(ids, 100, 75);
    rep(p, KILN_TOKEN_COMMA, 1);
    fr[0] = (kiln_token_fragment){ids, 76, 1.0, 0};
    CHECK(kiln_chunk_fragments(fr, 1, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 2 && TOK(ch, 1, 1) == KILN_TOKEN_COMMA && ch.token_count == 76);
    kiln_prompt_chunks_free(&ch);

    /* BREAK first: an empty first chunk; BREAK last: no extra chunk */
    int32_t one = 320;
    fr[0] = (kiln_token_fragment){NULL, 0, -1, 1};
    fr[1] = (kiln_token_fragment){&one, 1, 1.0, 0};
    CHECK(kiln_chunk_fragments(fr, 2, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 2 && TOK(ch, 0, 1) == KILN_TOKEN_EOS && TOK(ch, 1, 1) == 320 && ch.token_count == 76);
    kiln_prompt_chunks_free(&ch);
    fr[0] = (kiln_token_fragment){&one, 1, 1.0, 0};
    fr[1] = (kiln_token_fragment){NULL, 0, -1, 1};
    CHECK(kiln_chunk_fragments(fr, 2, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 1 && ch.token_count == 75);
    kiln_prompt_chunks_free(&ch);

    /* embeddings: longest name first, partial names do not match, never straddle chunks */
    int32_t n_short[] = {5, 6}, n_long[] = {5, 6, 7};
    kiln_embedding_ref embs[] = {{"short", 1, n_short, 2}, {"long", 3, n_long, 3}};
    o.comma_padding_backtrack = 20;
    o.embeddings = embs;
    o.n_embeddings = 2;
    int32_t q[] = {9, 5, 6, 7, 5, 6, 5};
    fr[0] = (kiln_token_fragment){q, 7, 1.3, 0};
    CHECK(kiln_chunk_fragments(fr, 1, &o, &ch) == 0);
    CHECK(ch.n_chunks == 1 && ch.n_fixes == 2 && ch.token_count == 1 + 3 + 1 + 1);
    CHECK(ch.fixes[0].embedding == 1 && ch.fixes[0].offset == 1 && ch.fixes[0].n_vectors == 3);
    CHECK(ch.fixes[1].embedding == 0 && ch.fixes[1].offset == 4 && ch.fixes[1].n_vectors == 1);
    CHECK(TOK(ch, 0, 2) == 0 && TOK(ch, 0, 4) == 0 && TOK(ch, 0, 5) == 0 && TOK(ch, 0, 6) == 5 && MUL(ch, 0, 3) == (float)1.3);
    kiln_prompt_chunks_free(&ch);
    p = rep(ids, 100, 73);
    memcpy(p, n_long, sizeof n_long);
    fr[0] = (kiln_token_fragment){ids, 76, 1.0, 0};
    CHECK(kiln_chunk_fragments(fr, 1, &o, &ch) == 0);
    CHECK(ch.n_chunks == 2 && ch.n_fixes == 1 && ch.fixes[0].chunk == 1 && ch.fixes[0].offset == 0);
    CHECK(TOK(ch, 0, 74) == KILN_TOKEN_EOS && TOK(ch, 1, 1) == 0 && TOK(ch, 1, 3) == 0 && TOK(ch, 1, 4) == KILN_TOKEN_EOS);
    kiln_prompt_chunks_free(&ch);

    /* A1111 quirk kept: comma back-tracking moves an embedding's placeholders to the next chunk but
     * its fix stays with the old chunk and offset */
    p = rep(ids, 100, 60);
    p = rep(p, KILN_TOKEN_COMMA, 1);
    p = rep(p, 101, 10);
    memcpy(p, n_long, sizeof n_long); /* placeholders at 71..73 */
    p = rep(p + 3, 102, 3);
    fr[0] = (kiln_token_fragment){ids, 60 + 1 + 10 + 3 + 3, 1.0, 0};
    CHECK(kiln_chunk_fragments(fr, 1, &o, &ch) == 0);
    CHECK(ch.n_chunks == 2 && ch.n_fixes == 1 && ch.fixes[0].chunk == 0 && ch.fixes[0].offset == 71);
    CHECK(TOK(ch, 0, 62) == KILN_TOKEN_EOS && TOK(ch, 1, 11) == 0 && TOK(ch, 1, 14) == 102);
    kiln_prompt_chunks_free(&ch);

    embs[1].n_vectors = 76;
    CHECK(kiln_chunk_fragments(fr, 1, &o, &ch) == KILN_EINVAL);
    CHECK(strstr(kiln_last_error(), "long") != NULL);
}

/* ---- fixtures --------------------------------------------------------------------------------------- */

static kiln_tokenizer *fixture_tokenizer(void) {
    kiln_tokenizer *tok = NULL;
    if (kiln_tokenizer_load(test_fixture("tiny-sd15/diffusers/tokenizer"), &tok)) {
        fprintf(stderr, "tokenizer: %s\n", kiln_last_error());
        return NULL;
    }
    return tok;
}

static json_t *manifest_cases(void) {
    json_error_t e;
    json_t *m = json_load_file(test_fixture("tiny-sd15/manifest.json"), 0, &e);
    if (!m) fprintf(stderr, "manifest.json: %s\n", e.text);
    return m;
}

/* parsed_attention of a manifest case equals ours (weights exact; -1 written as an integer) */
static int parsed_attention_matches(json_t *c) {
    const char *prompt = json_string_value(json_object_get(c, "prompt"));
    json_t *pa = json_object_get(c, "parsed_attention");
    kiln_prompt_fragments f;
    if (!prompt || kiln_prompt_parse_attention(prompt, &f)) return 0;
    int ok = (size_t)f.n == json_array_size(pa);
    for (int i = 0; ok && i < f.n; i++) {
        json_t *item = json_array_get(pa, (size_t)i);
        ok = strcmp(json_string_value(json_array_get(item, 0)), f.items[i].text) == 0 &&
             json_number_value(json_array_get(item, 1)) == f.items[i].weight;
    }
    kiln_prompt_fragments_free(&f);
    return ok;
}

/* Our chunks for prompt equal NAME_tokens (exact) and NAME_multipliers (1e-6) in file f. */
static int chunks_match(kiln_tokenizer *tok, const char *prompt, const kiln_chunker_options *opts,
                        const kiln_st_file *f, const char *tokens_name, const char *mults_name, kiln_prompt_chunks *keep) {
    const kiln_st_tensor *tt = kiln_st_find(f, tokens_name), *mt = kiln_st_find(f, mults_name);
    if (!tt || !mt || tt->dtype != KILN_I32 || tt->ndim != 2 || tt->shape[1] != KILN_CHUNK_LEN) {
        fprintf(stderr, "  %s / %s missing or not int32 [n,77]\n", tokens_name, mults_name);
        return 0;
    }
    kiln_prompt_chunks ch;
    if (kiln_prompt_chunk(tok, prompt, opts, &ch)) {
        fprintf(stderr, "  chunking \"%s\": %s\n", prompt, kiln_last_error());
        return 0;
    }
    int ok = ch.n_chunks == tt->shape[0];
    int64_t n = (int64_t)ch.n_chunks * KILN_CHUNK_LEN;
    const int32_t *ref_t = tt->data;
    float *ref_m = malloc((size_t)(kiln_st_numel(mt) > 0 ? kiln_st_numel(mt) : 1) * sizeof(float));
    kiln_st_to_f32(mt, ref_m);
    ok = ok && kiln_st_numel(mt) == n;
    for (int64_t i = 0; ok && i < n; i++) {
        if (ch.tokens[i] != ref_t[i] || fabs((double)ch.multipliers[i] - ref_m[i]) > 1e-6) {
            fprintf(stderr, "  %s: chunk %d pos %d: token %d mult %.9g, expected %d %.9g\n", tokens_name,
                    (int)(i / KILN_CHUNK_LEN), (int)(i % KILN_CHUNK_LEN), ch.tokens[i], ch.multipliers[i], ref_t[i],
                    ref_m[i]);
            ok = 0;
        }
    }
    if (ch.n_chunks != tt->shape[0]) fprintf(stderr, "  %s: %d chunks, expected %d\n", tokens_name, ch.n_chunks, (int)tt->shape[0]);
    free(ref_m);
    if (keep) *keep = ch;
    else kiln_prompt_chunks_free(&ch);
    return ok;
}

TEST(fixture_conditioning) {
    kiln_tokenizer *tok = fixture_tokenizer();
    json_t *m = manifest_cases();
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/conditioning.safetensors"), &f) == 0);
    if (!tok || !m || !f) goto out;
    json_t *cases = json_object_get(json_object_get(json_object_get(m, "cases"), "conditioning"), "cases");
    CHECK(json_array_size(cases) == 11);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        CHECK_MSG(parsed_attention_matches(c), "case %s: parsed_attention", name);
        kiln_prompt_chunks ch;
        CHECK_MSG(chunks_match(tok, prompt, NULL, f, json_string_value(json_object_get(c, "tokens")),
                               json_string_value(json_object_get(c, "multipliers")), &ch),
                  "case %s: tokens/multipliers", name);
        CHECK_MSG(ch.n_chunks == json_integer_value(json_object_get(c, "n_chunks")), "case %s: n_chunks", name);
        CHECK_MSG(ch.token_count == json_integer_value(json_object_get(c, "token_count")), "case %s: token_count %d",
                  name, ch.token_count);
        CHECK(ch.n_fixes == 0);
        kiln_prompt_chunks_free(&ch);
    }
out:
    kiln_st_close(f);
    json_decref(m);
    kiln_tokenizer_free(tok);
}

TEST(fixture_textual_inversion) {
    kiln_tokenizer *tok = fixture_tokenizer();
    json_t *m = manifest_cases();
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/conditioning_embedding.safetensors"), &f) == 0);
    if (!tok || !m || !f) goto out;
    json_t *ti = json_object_get(json_object_get(m, "cases"), "textual_inversion");
    const char *emb_name = json_string_value(json_object_get(ti, "name"));
    json_t *jids = json_object_get(ti, "name_token_ids");
    int32_t name_ids[16];
    size_t n_ids = 0;
    CHECK(kiln_tokenize(tok, emb_name, name_ids, 16, &n_ids) == 0); /* the name tokenized like prompt text */
    CHECK(n_ids == json_array_size(jids));
    for (size_t k = 0; k < n_ids && k < json_array_size(jids); k++) CHECK(name_ids[k] == json_integer_value(json_array_get(jids, k)));
    int n_vectors = (int)json_integer_value(json_array_get(json_object_get(ti, "shape"), 0));
    CHECK(n_vectors == 2);
    kiln_embedding_ref emb = {emb_name, n_vectors, name_ids, (int)n_ids};
    kiln_chunker_options o;
    kiln_chunker_options_init(&o);
    o.embeddings = &emb;
    o.n_embeddings = 1;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(ti, "conditioning_cases"), i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        CHECK_MSG(parsed_attention_matches(c), "case %s: parsed_attention", name);
        kiln_prompt_chunks ch;
        CHECK_MSG(chunks_match(tok, prompt, &o, f, json_string_value(json_object_get(c, "tokens")),
                               json_string_value(json_object_get(c, "multipliers")), &ch),
                  "case %s: tokens/multipliers", name);
        CHECK_MSG(ch.token_count == json_integer_value(json_object_get(c, "token_count")), "case %s: token_count %d",
                  name, ch.token_count);
        /* fixes: per chunk a list of [offset, name, n] */
        json_t *fixes = json_object_get(c, "fixes");
        int expected = 0;
        for (size_t chunk = 0; chunk < json_array_size(fixes); chunk++) {
            json_t *list = json_array_get(fixes, chunk);
            for (size_t k = 0; k < json_array_size(list); k++, expected++) {
                json_t *fx = json_array_get(list, k);
                int ok = expected < ch.n_fixes && ch.fixes[expected].chunk == (int)chunk &&
                         ch.fixes[expected].offset == json_integer_value(json_array_get(fx, 0)) &&
                         ch.fixes[expected].embedding == 0 &&
                         ch.fixes[expected].n_vectors == json_integer_value(json_array_get(fx, 2));
                CHECK_MSG(ok, "case %s: fix %d", name, expected);
            }
        }
        CHECK_MSG(ch.n_fixes == expected, "case %s: %d fixes, expected %d", name, ch.n_fixes, expected);
        kiln_prompt_chunks_free(&ch);
    }
out:
    kiln_st_close(f);
    json_decref(m);
    kiln_tokenizer_free(tok);
}

/* Every complete run's cond/uncond tokens and multipliers: positive prompt with its extra-network
 * tags cut out (and the embedding known for the TI run), negative prompt as it is. */
TEST(fixture_runs) {
    kiln_tokenizer *tok = fixture_tokenizer();
    json_t *m = manifest_cases();
    if (!tok || !m) goto out;
    json_t *cases = json_object_get(m, "cases");
    int32_t name_ids[4] = {5591, 318, 908, 321};
    kiln_embedding_ref emb = {"tiny_emb", 2, name_ids, 4};
    const char *groups[] = {"txt2img", "lora", "textual_inversion", "img2img", "hires_fix", "inpaint"};
    int n_runs = 0;
    for (int g = 0; g < N_OF(groups); g++) {
        json_t *grp = json_object_get(cases, groups[g]);
        json_t *runs = json_object_get(grp, "runs");
        if (!runs) runs = json_object_get(grp, "cases");
        size_t i;
        json_t *r;
        json_array_foreach(runs, i, r) {
            const char *file = json_string_value(json_object_get(r, "file"));
            const char *prompt = json_string_value(json_object_get(r, "prompt"));
            const char *negative = json_string_value(json_object_get(r, "negative"));
            if (!file || !prompt || !negative) continue;
            char path[512];
            snprintf(path, sizeof path, "tiny-sd15/%s", file);
            kiln_st_file *f = NULL;
            CHECK_MSG(kiln_st_open(test_fixture(path), &f) == 0, "%s", file);
            if (!f) continue;
            char *positive = NULL;
            kiln_extra_networks en;
            CHECK(kiln_extra_networks_parse(prompt, &positive, &en) == 0);
            json_t *after = json_object_get(r, "prompt_after_extra_networks");
            if (after) {
                CHECK_MSG(strcmp(positive, json_string_value(after)) == 0, "%s: prompt after extra networks", file);
                /* extra_network_params: {"lora": [["tiny_lora", "0.8"]]} */
                json_t *params = json_object_get(json_object_get(r, "extra_network_params"), "lora");
                CHECK(en.n == (int)json_array_size(params));
                for (int k = 0; k < en.n && k < (int)json_array_size(params); k++) {
                    json_t *items = json_array_get(params, (size_t)k);
                    CHECK(strcmp(en.items[k].type, "lora") == 0 && en.items[k].n_items == (int)json_array_size(items));
                    for (int j = 0; j < en.items[k].n_items && j < (int)json_array_size(items); j++)
                        CHECK(strcmp(en.items[k].items[j], json_string_value(json_array_get(items, (size_t)j))) == 0);
                }
            } else {
                CHECK(en.n == 0);
            }
            kiln_chunker_options o;
            kiln_chunker_options_init(&o);
            if (strcmp(groups[g], "textual_inversion") == 0) {
                o.embeddings = &emb;
                o.n_embeddings = 1;
            }
            CHECK_MSG(chunks_match(tok, positive, &o, f, "cond_tokens", "cond_multipliers", NULL), "%s: cond", file);
            CHECK_MSG(chunks_match(tok, negative, &o, f, "uncond_tokens", "uncond_multipliers", NULL), "%s: uncond", file);
            n_runs++;
            free(positive);
            kiln_extra_networks_free(&en);
            kiln_st_close(f);
        }
    }
    CHECK(n_runs == 13);
out:
    json_decref(m);
    kiln_tokenizer_free(tok);
}

TEST(chunker_text_paths) {
    kiln_tokenizer *tok = fixture_tokenizer();
    if (!tok) return;
    kiln_prompt_chunks ch;
    /* emphasis "None": brackets are text and BREAK is a word */
    kiln_chunker_options o;
    kiln_chunker_options_init(&o);
    o.emphasis_none = 1;
    CHECK(kiln_prompt_chunk(tok, "(cat) BREAK dog", &o, &ch) == 0);
    CHECK(ch.n_chunks == 1 && MUL(ch, 0, 2) == 1.0f);
    kiln_prompt_chunks_free(&ch);
    CHECK(kiln_prompt_chunk(tok, "(cat) BREAK dog", NULL, &ch) == 0);
    CHECK(ch.n_chunks == 2 && MUL(ch, 0, 1) == (float)1.1);
    kiln_prompt_chunks_free(&ch);
    CHECK(kiln_prompt_chunk(tok, "a \xff", NULL, &ch) == KILN_EINVAL);
    CHECK(kiln_prompt_chunk(tok, "(a:1.2.3)", NULL, &ch) == KILN_EINVAL);
    CHECK(ch.n_chunks == 0 && ch.tokens == NULL);
    /* a long prompt: 1000 words -> 14 chunks (75 x 13 + 25) */
    char *longp = malloc(1000 * 4 + 1);
    longp[0] = '\0';
    for (int i = 0; i < 1000; i++) strcat(longp, "cat ");
    CHECK(kiln_prompt_chunk(tok, longp, NULL, &ch) == 0);
    CHECK(ch.n_chunks == 14 && ch.token_count == 1000);
    kiln_prompt_chunks_free(&ch);
    free(longp);
    kiln_tokenizer_free(tok);
}

int main(void) {
    RUN(attention_docstring);
    RUN(attention_edge_cases);
    RUN(schedule_docstring);
    RUN(schedule_edge_cases);
    RUN(and_split);
    RUN(python_numbers);
    RUN(extra_network_tags);
    RUN(chunker_synthetic);
    RUN(fixture_conditioning);
    RUN(fixture_textual_inversion);
    RUN(fixture_runs);
    RUN(chunker_text_paths);
    return test_summary();
}
