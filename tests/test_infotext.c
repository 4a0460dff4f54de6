/* test_infotext.c — A1111 infotext formatting/parsing, and the sha256-based model hashes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/sha256.h"
#include "io/atomic_file.h"
#include "io/infotext.h"
#include "test.h"

#define CHECK_STR(a, b)                                                                              \
    do {                                                                                             \
        const char *sa_ = (a), *sb_ = (b);                                                           \
        CHECK_MSG(sa_ && sb_ && strcmp(sa_, sb_) == 0, "\n  got      [%s]\n  expected [%s]",         \
                  sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");                                       \
    } while (0)

static kiln_infotext_params basic(void) {
    kiln_infotext_params p = {0};
    p.prompt = "a photo of a cat";
    p.negative_prompt = "blurry, lowres";
    p.steps = 20;
    p.sampler = "Euler a";
    p.schedule_type = "Karras";
    p.cfg_scale = 7;
    p.seed = 42;
    p.width = 512;
    p.height = 512;
    p.model_hash = "abcdef1234";
    p.model = "v1-5-pruned-emaonly";
    p.version = "v1.9.4";
    return p;
}

TEST(format_basic) {
    kiln_infotext_params p = basic();
    char *s = NULL;
    CHECK(kiln_infotext_format(&p, &s) == 0);
    CHECK_STR(s, "a photo of a cat\nNegative prompt: blurry, lowres\n"
                 "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, "
                 "Model hash: abcdef1234, Model: v1-5-pruned-emaonly, Version: v1.9.4");
    free(s);
    /* API style floats, no negative prompt: A1111 leaves the line out. */
    p.python_floats = 1;
    p.negative_prompt = "";
    p.cfg_scale = 7.5;
    p.version = NULL;
    CHECK(kiln_infotext_format(&p, &s) == 0);
    CHECK_STR(s, "a photo of a cat\nSteps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 42, "
                 "Size: 512x512, Model hash: abcdef1234, Model: v1-5-pruned-emaonly");
    free(s);
}

TEST(format_all_fields_in_order) {
    kiln_infotext_params p = basic();
    p.python_floats = 1;
    p.negative_prompt = NULL;
    p.image_cfg_scale = 1.5;
    p.face_restoration = "CodeFormer";
    p.vae_hash = "735e4c3a44";
    p.vae = "vae-ft-mse-840000-ema-pruned.safetensors";
    p.variation_seed = 7;
    p.variation_seed_strength = 0.25;
    p.seed_resize_from_w = 640;
    p.seed_resize_from_h = 448;
    p.has_denoising_strength = 1;
    p.denoising_strength = 0.75;
    p.has_conditional_mask_weight = 1;
    p.conditional_mask_weight = 1.0;
    p.clip_skip = 2;
    p.ensd = 31337;
    p.token_merging_ratio = 0.5;
    p.init_image_hash = "0123456789abcdef";
    p.rng = "CPU";
    p.tiling = 1;
    kiln_infotext_kv extra[] = {
        {"Hires upscale", "2.0"},
        {"Hires steps", "10"},
        {"Hires upscaler", "Latent"},
        {"Denoising strength", "0.55"}, /* a repeated key keeps its first slot, takes the new value */
        {"Lora hashes", "add_detail: 7c6bad76eb54, tiny: 0123456789ab"},
        {"TI hashes", "tiny_emb: 5b1c1b3d2a7f"},
        {"Hires prompt", NULL}, /* None: skipped */
    };
    p.extra = extra;
    p.n_extra = 7;
    p.user = "me";
    char *s = NULL;
    CHECK(kiln_infotext_format(&p, &s) == 0);
    CHECK_STR(s, "a photo of a cat\n"
                 "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.0, Image CFG scale: 1.5, Seed: 42, "
                 "Face restoration: CodeFormer, Size: 512x512, Model hash: abcdef1234, Model: v1-5-pruned-emaonly, "
                 "VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Variation seed: 7, "
                 "Variation seed strength: 0.25, Seed resize from: 640x448, Denoising strength: 0.55, "
                 "Conditional mask weight: 1.0, Clip skip: 2, ENSD: 31337, Token merging ratio: 0.5, "
                 "Init image hash: 0123456789abcdef, RNG: CPU, Tiling: True, Hires upscale: 2.0, Hires steps: 10, "
                 "Hires upscaler: Latent, Lora hashes: \"add_detail: 7c6bad76eb54, tiny: 0123456789ab\", "
                 "TI hashes: \"tiny_emb: 5b1c1b3d2a7f\", Version: v1.9.4, User: me");
    free(s);
    /* defaults A1111 omits */
    p = basic();
    p.rng = "GPU";
    p.clip_skip = 1;
    p.sampler = NULL;
    p.schedule_type = NULL;
    p.model = p.model_hash = p.version = NULL;
    CHECK(kiln_infotext_format(&p, &s) == 0);
    CHECK_STR(s, "a photo of a cat\nNegative prompt: blurry, lowres\nSteps: 20, CFG scale: 7, Seed: 42, Size: 512x512");
    free(s);
}

TEST(format_quoting_and_strip) {
    kiln_infotext_kv kv[] = {
        {"Steps", "20"},
        {"Plain", "has \"quotes\" but no separator"},
        {"Colon", "a:b"},
        {"Newline", "line1\nline2"},
        {"Escapes", "back\\slash, tab\tctl\x01 \"q\" \xc3\xa9"},
        {"Same", "Same"},
    };
    char *s = NULL;
    CHECK(kiln_infotext_format_kv("  (masterpiece:1.2), girl\nsecond line  ", "", kv, 6, &s) == 0);
    CHECK_STR(s, "(masterpiece:1.2), girl\nsecond line  \n"
                 "Steps: 20, Plain: has \"quotes\" but no separator, Colon: \"a:b\", Newline: \"line1\\nline2\", "
                 "Escapes: \"back\\\\slash, tab\\tctl\\u0001 \\\"q\\\" \xc3\xa9\", Same");
    free(s);
    /* Nothing but an empty prompt and no pairs: the stripped result is empty. */
    CHECK(kiln_infotext_format_kv("", NULL, NULL, 0, &s) == 0);
    CHECK_STR(s, "");
    free(s);
}

TEST(hash_lists) {
    const char *names[] = {"add_detail", "we:ird,name", "nohash"};
    const char *hashes[] = {"7c6bad76eb54", "0123456789ab", ""};
    char *s = NULL;
    CHECK(kiln_infotext_hash_list(names, hashes, 3, &s) == 0);
    CHECK_STR(s, "add_detail: 7c6bad76eb54, weirdname: 0123456789ab");
    free(s);
    CHECK(kiln_infotext_hash_list(names + 2, hashes + 2, 1, &s) == 0 && s == NULL);
}

TEST(python_float_repr) {
    char b[32];
    CHECK_STR(kiln_infotext_float(7.0, 1, b), "7.0");
    CHECK_STR(kiln_infotext_float(7.0, 0, b), "7");
    CHECK_STR(kiln_infotext_float(0.75, 1, b), "0.75");
    CHECK_STR(kiln_infotext_float(0.1 + 0.2, 1, b), "0.30000000000000004");
    CHECK_STR(kiln_infotext_float(1e-5, 1, b), "1e-05");
    CHECK_STR(kiln_infotext_float(0.0001, 1, b), "0.0001");
    CHECK_STR(kiln_infotext_float(1e16, 1, b), "1e+16");
    CHECK_STR(kiln_infotext_float(1234567890123456.0, 1, b), "1234567890123456.0");
    CHECK_STR(kiln_infotext_float(-2.5, 0, b), "-2.5");
    CHECK_STR(kiln_infotext_float(1.5e-300, 1, b), "1.5e-300");
    CHECK_STR(kiln_infotext_float(0.8f, 1, b), "0.800000011920929"); /* a float32 widened, as numpy would */
    CHECK_STR(kiln_infotext_float(100, 1, b), "100.0");
    CHECK_STR(kiln_infotext_float(0, 1, b), "0.0");
}

TEST(parse_docstring_example) {
    const char *text =
        "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by "
        "Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
        "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly "
        "drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
    kiln_infotext it;
    CHECK(kiln_infotext_parse(text, &it) == 0);
    CHECK(strncmp(it.prompt, "girl with an artist's beret", 27) == 0);
    CHECK(strstr(it.prompt, "intricate") && !strchr(it.prompt, '\n'));
    CHECK(strncmp(it.negative_prompt, "ugly, fat", 9) == 0);
    CHECK(it.n_params == 7);
    CHECK_STR(kiln_infotext_get(&it, "Steps"), "20");
    CHECK_STR(kiln_infotext_get(&it, "Sampler"), "Euler a");
    CHECK_STR(kiln_infotext_get(&it, "CFG scale"), "7");
    CHECK_STR(kiln_infotext_get(&it, "Seed"), "965400086");
    CHECK_STR(kiln_infotext_get(&it, "Size-1"), "512");
    CHECK_STR(kiln_infotext_get(&it, "Size-2"), "512");
    CHECK(kiln_infotext_get(&it, "Size") == NULL);
    CHECK_STR(kiln_infotext_get(&it, "Model hash"), "45dee52b");
    CHECK(kiln_infotext_get(&it, "Clip skip") == NULL);
    CHECK(kiln_infotext_apply_defaults(&it) == 0);
    CHECK_STR(kiln_infotext_get(&it, "Clip skip"), "1");
    CHECK_STR(kiln_infotext_get(&it, "RNG"), "GPU");
    CHECK_STR(kiln_infotext_get(&it, "Schedule type"), "Automatic");
    CHECK_STR(kiln_infotext_get(&it, "Hires resize-1"), "0");
    CHECK(kiln_infotext_get(&it, "Cache FP16 weight for LoRA") == NULL);
    kiln_infotext_free(&it);
}

/* format -> parse gives back what went in, quoted values included. */
TEST(round_trip) {
    kiln_infotext_params p = basic();
    p.prompt = "line one, (emphasis:1.3)\n  line two with \"quotes\"\nNegative-ish: not a negative";
    p.negative_prompt = "worst quality\nsecond negative line";
    p.clip_skip = 2;
    kiln_infotext_kv extra[] = {
        {"Hires prompt", "a \"hires\" prompt,\nwith: everything"},
        {"Lora hashes", "add_detail: 7c6bad76eb54, tiny: 0123456789ab"},
        {"Emoji", "\xf0\x9f\x98\x80 caf\xc3\xa9"},
        {"Hires resize", "1024x768"},
    };
    p.extra = extra;
    p.n_extra = 4;
    char *s = NULL;
    CHECK(kiln_infotext_format(&p, &s) == 0);
    kiln_infotext it;
    CHECK(kiln_infotext_parse(s, &it) == 0);
    CHECK_STR(it.prompt, "line one, (emphasis:1.3)\nline two with \"quotes\"\nNegative-ish: not a negative");
    CHECK_STR(it.negative_prompt, "worst quality\nsecond negative line");
    CHECK_STR(kiln_infotext_get(&it, "Steps"), "20");
    CHECK_STR(kiln_infotext_get(&it, "Schedule type"), "Karras");
    CHECK_STR(kiln_infotext_get(&it, "Clip skip"), "2");
    CHECK_STR(kiln_infotext_get(&it, "Hires prompt"), "a \"hires\" prompt,\nwith: everything");
    CHECK_STR(kiln_infotext_get(&it, "Lora hashes"), "add_detail: 7c6bad76eb54, tiny: 0123456789ab");
    CHECK_STR(kiln_infotext_get(&it, "Emoji"), "\xf0\x9f\x98\x80 caf\xc3\xa9");
    CHECK_STR(kiln_infotext_get(&it, "Hires resize-1"), "1024");
    CHECK_STR(kiln_infotext_get(&it, "Hires resize-2"), "768");
    CHECK_STR(kiln_infotext_get(&it, "Version"), "v1.9.4");
    /* the keys come back in A1111's order */
    const char *order[] = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2",
                           "Model hash", "Model", "Clip skip", "Hires prompt", "Lora hashes", "Emoji",
                           "Hires resize-1", "Hires resize-2", "Version"};
    CHECK(it.n_params == 16);
    for (int i = 0; i < 16 && i < it.n_params; i++) CHECK_STR(it.params[i].key, order[i]);
    kiln_infotext_free(&it);
    free(s);
}

TEST(parse_edge_cases) {
    kiln_infotext it;
    /* Fewer than 3 pairs on the last line: it is prompt text. */
    CHECK(kiln_infotext_parse("just a prompt\nSteps: 20, Seed: 1", &it) == 0);
    CHECK_STR(it.prompt, "just a prompt\nSteps: 20, Seed: 1");
    CHECK(it.n_params == 0);
    kiln_infotext_free(&it);
    /* Only a parameter line: empty prompt. */
    CHECK(kiln_infotext_parse("Steps: 20, Sampler: Euler, Seed: 3", &it) == 0);
    CHECK_STR(it.prompt, "");
    CHECK_STR(it.negative_prompt, "");
    CHECK(it.n_params == 3);
    kiln_infotext_free(&it);
    /* Empty text. */
    CHECK(kiln_infotext_parse("  \n ", &it) == 0);
    CHECK_STR(it.prompt, "");
    CHECK(it.n_params == 0);
    kiln_infotext_free(&it);
    /* Empty value dropped; a bad JSON quote kept as written; one-char key not a key; a repeated key keeps its
     * first slot; a quoted value followed by more text is not a quoted value; junk before the first key. */
    CHECK(kiln_infotext_parse("p\njunk, Steps: 20, Empty: , A: x, Bad: \"a\\qb\", Model: \"a\"b, Steps: 30, "
                              "Ok: \"x, y\"",
                              &it) == 0);
    CHECK_STR(it.prompt, "p");
    CHECK_STR(kiln_infotext_get(&it, "Steps"), "30");
    CHECK(it.n_params >= 1 && strcmp(it.params[0].key, "Steps") == 0);
    CHECK(kiln_infotext_get(&it, "Empty") == NULL);
    CHECK(kiln_infotext_get(&it, "A") == NULL);
    CHECK_STR(kiln_infotext_get(&it, "Bad"), "\"a\\qb\"");
    CHECK_STR(kiln_infotext_get(&it, "Model"), "\"a\"b");
    CHECK_STR(kiln_infotext_get(&it, "Ok"), "x, y");
    kiln_infotext_free(&it);
    /* Windows line ends: prompt lines are stripped; the last line keeps what the regex leaves. */
    CHECK(kiln_infotext_parse("cat\r\nNegative prompt:  dog \r\nSteps: 5, Seed: 1, Size: 64x64\r\n", &it) == 0);
    CHECK_STR(it.prompt, "cat");
    CHECK_STR(it.negative_prompt, "dog");
    CHECK_STR(kiln_infotext_get(&it, "Size-2"), "64");
    kiln_infotext_free(&it);
    /* "Negative prompt:" anywhere after the first line switches for good; later lines stay negative. */
    CHECK(kiln_infotext_parse("a\n\nb\nNegative prompt:\nc\nSteps: 1, Seed: 2, CFG scale: 3", &it) == 0);
    CHECK_STR(it.prompt, "a\n\nb");
    CHECK_STR(it.negative_prompt, "c");
    kiln_infotext_free(&it);
}

/* sha256 of a file against sha256sum; AutoV2 and the addnet (AutoV3) hash of a safetensors file. */
TEST(sha256_files) {
    char dir[] = "/tmp/kiln_test_sha_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/blob.bin", dir);
    /* 3 MiB + 5 bytes: crosses the 1 MiB chunk size. */
    size_t n = (3u << 20) + 5;
    unsigned char *buf = malloc(n);
    for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    CHECK(kiln_atomic_write(path, buf, n, 0) == 0);
    uint8_t d[32], d2[32];
    char hex[65], cmd[512], expect[65] = {0};
    CHECK(kiln_sha256_file(path, 0, d) == 0);
    kiln_sha256_hex(d, hex);
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *pp = popen(cmd, "r");
    CHECK(pp && fscanf(pp, "%64s", expect) == 1);
    if (pp) pclose(pp);
    CHECK_STR(hex, expect);
    CHECK(kiln_sha256(buf, n, d2) == 0);
    CHECK(memcmp(d, d2, 32) == 0);
    char v2[11];
    CHECK(kiln_hash_autov2(path, v2) == 0);
    CHECK(strlen(v2) == 10 && strncmp(v2, expect, 10) == 0);
    /* A safetensors-shaped file: u64 header length 16, a 16-byte header, then data. */
    memcpy(buf, "\x10\0\0\0\0\0\0\0{\"__metadata__\":{}", 8 + 16); /* (only the length matters) */
    CHECK(kiln_atomic_write(path, buf, n, 0) == 0);
    char addnet[65];
    CHECK(kiln_hash_addnet_safetensors(path, addnet) == 0);
    CHECK(kiln_sha256(buf + 24, n - 24, d2) == 0);
    kiln_sha256_hex(d2, hex);
    CHECK_STR(addnet, hex);
    /* the empty known answer */
    CHECK(kiln_sha256("", 0, d) == 0);
    kiln_sha256_hex(d, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* errors name the file */
    CHECK(kiln_sha256_file("/nonexistent/model.safetensors", 0, d) == KILN_EIO);
    CHECK(strstr(kiln_last_error(), "/nonexistent/model.safetensors") != NULL);
    CHECK(kiln_sha256_file(path, n + 1, d) == KILN_EFORMAT);
    unlink(path);
    rmdir(dir);
    free(buf);
}

int main(void) {
    RUN(format_basic);
    RUN(format_all_fields_in_order);
    RUN(format_quoting_and_strip);
    RUN(hash_lists);
    RUN(python_float_repr);
    RUN(parse_docstring_example);
    RUN(round_trip);
    RUN(parse_edge_cases);
    RUN(sha256_files);
    return test_summary();
}
