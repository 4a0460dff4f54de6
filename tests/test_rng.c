/* test_rng.c — the NV (Philox) generator against rng.safetensors bit for bit, A1111's
 * ImageRNG, the torch CPU generator against values printed by PyTorch, and seeds. */
#include <stdint.h>
#include <string.h>

#include "io/safetensors.h"
#include "kiln.h"
#include "sample/rng.h"
#include "sample/seeds.h"
#include "test.h"

static kiln_st_file *rng_file;

/* Reads a float tensor of the fixture into a static buffer (the largest is 512 floats). */
static const float *fixture(const char *name, int64_t want_numel) {
    static float buf[4096];
    const kiln_st_tensor *t = kiln_st_find(rng_file, name);
    CHECK_MSG(t != NULL, "tensor %s missing", name);
    if (!t) return NULL;
    CHECK_MSG(kiln_st_numel(t) == want_numel, "%s: %lld values", name, (long long)kiln_st_numel(t));
    if (kiln_st_numel(t) != want_numel || want_numel > 4096) return NULL;
    kiln_st_to_f32(t, buf);
    return buf;
}

static int count_bit_diffs(const float *a, const float *b, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) bad++;
    return bad;
}

static const uint64_t fixture_seeds[] = {0, 42, 1234567, 4294967295u};

TEST(philox_draws_bit_exact) {
    for (size_t k = 0; k < sizeof fixture_seeds / sizeof fixture_seeds[0]; k++) {
        uint64_t seed = fixture_seeds[k];
        char name[64];
        float got[256];
        kiln_philox g;
        kiln_philox_init(&g, seed);
        kiln_philox_randn(&g, got, 256);
        CHECK(g.offset == 1);
        snprintf(name, sizeof name, "seed%llu_draw0", (unsigned long long)seed);
        const float *want = fixture(name, 256);
        if (want) CHECK_MSG(count_bit_diffs(got, want, 256) == 0, "%s", name);

        kiln_philox_randn(&g, got, 256);
        CHECK(g.offset == 2);
        snprintf(name, sizeof name, "seed%llu_draw1", (unsigned long long)seed);
        want = fixture(name, 256);
        if (want) CHECK_MSG(count_bit_diffs(got, want, 256) == 0, "%s", name);

        /* Element i depends only on (offset, i): a large (threaded) draw starts with the
         * same 256 values. */
        static float big[20000];
        kiln_philox_init(&g, seed);
        kiln_philox_randn(&g, big, 20000);
        snprintf(name, sizeof name, "seed%llu_draw0", (unsigned long long)seed);
        want = fixture(name, 256);
        if (want) CHECK_MSG(count_bit_diffs(big, want, 256) == 0, "%s (in a draw of 20000)", name);

        /* A fresh generator's (2,3) draw is the first 6 values of draw 0. */
        kiln_philox_init(&g, seed);
        kiln_philox_randn(&g, got, 6);
        snprintf(name, sizeof name, "seed%llu_draw0_shape2x3", (unsigned long long)seed);
        want = fixture(name, 6);
        if (want) CHECK_MSG(count_bit_diffs(got, want, 6) == 0, "%s", name);
    }
}

TEST(philox_offset_advances_once_per_call) {
    /* A tiny call still consumes a whole offset: the next call starts at offset 1. */
    kiln_philox a, b;
    float x[256], y[256], one;
    kiln_philox_init(&a, 42);
    kiln_philox_randn(&a, &one, 1);
    kiln_philox_randn(&a, x, 256);
    kiln_philox_init(&b, 42);
    kiln_philox_randn(&b, y, 256);
    kiln_philox_randn(&b, y, 256);
    CHECK(count_bit_diffs(x, y, 256) == 0);
    kiln_philox_init(&b, 42);
    kiln_philox_randn(&b, y, 1);
    CHECK(memcmp(&one, &y[0], sizeof one) == 0);
    /* Zero elements is still a call. */
    kiln_philox_randn(&b, y, 0);
    CHECK(b.offset == 2);
}

TEST(philox_first_values_from_manifest) {
    /* manifest.json rng.seeds[0].first_64_values, first four, as printed by numpy. */
    kiln_philox g;
    float v[4];
    kiln_philox_init(&g, 0);
    kiln_philox_randn(&g, v, 4);
    CHECK(v[0] == (float)-0.9246624112129211);
    CHECK(v[1] == (float)-0.42534396052360535);
    CHECK(v[2] == (float)-2.643845796585083);
    CHECK(v[3] == (float)0.14518387615680695);
}

TEST(imagerng_batch2) {
    /* rng.ImageRNG((4,8,8), [42, 1234567]).next() twice: one generator per image. */
    int64_t seeds[2] = {42, 1234567};
    kiln_image_rng_opts o = {.source = KILN_RNG_NV, .batch = 2, .channels = 4, .height = 8, .width = 8,
                             .seeds = seeds};
    kiln_image_rng *r = NULL;
    CHECK(kiln_image_rng_create(&o, &r) == 0);
    if (!r) return;
    CHECK(kiln_image_rng_numel(r) == 512);
    float got[512];
    kiln_image_rng_next(r, got);
    const float *want = fixture("imagerng_batch2_next0", 512);
    if (want) CHECK(count_bit_diffs(got, want, 512) == 0);
    kiln_image_rng_next(r, got);
    want = fixture("imagerng_batch2_next1", 512);
    if (want) CHECK(count_bit_diffs(got, want, 512) == 0);
    kiln_image_rng_free(r);
}

TEST(imagerng_ensd_and_variation) {
    int64_t seeds[1] = {42}, subseeds[1] = {7};
    float got[256], want[256], sub[256];
    kiln_philox g;

    /* ENSD: the initial noise is unchanged, later draws restart from seed + delta. */
    kiln_image_rng_opts o = {.source = KILN_RNG_NV, .batch = 1, .channels = 4, .height = 8, .width = 8,
                             .seeds = seeds, .eta_noise_seed_delta = 31337};
    kiln_image_rng *r = NULL;
    CHECK(kiln_image_rng_create(&o, &r) == 0);
    if (!r) return;
    kiln_image_rng_next(r, got);
    kiln_philox_init(&g, 42);
    kiln_philox_randn(&g, want, 256);
    CHECK(count_bit_diffs(got, want, 256) == 0);
    kiln_image_rng_next(r, got);
    kiln_philox_init(&g, 42 + 31337);
    kiln_philox_randn(&g, want, 256);
    CHECK(count_bit_diffs(got, want, 256) == 0);
    kiln_image_rng_free(r);

    /* Variation seed at strength 0.3: slerp(0.3, noise(42), noise(7)), then draws go on
     * from offset 1 of the image's own generator. */
    o.eta_noise_seed_delta = 0;
    o.subseeds = subseeds;
    o.n_subseeds = 1;
    o.subseed_strength = 0.3;
    CHECK(kiln_image_rng_create(&o, &r) == 0);
    if (!r) return;
    kiln_image_rng_next(r, got);
    kiln_philox_init(&g, 42);
    kiln_philox_randn(&g, want, 256);
    kiln_philox_init(&g, 7);
    kiln_philox_randn(&g, sub, 256);
    kiln_slerp(0.3, want, sub, 4, 8, 8, want);
    CHECK(count_bit_diffs(got, want, 256) == 0);
    kiln_image_rng_next(r, got);
    kiln_philox_init(&g, 42);
    kiln_philox_randn(&g, want, 256);
    kiln_philox_randn(&g, want, 256);
    CHECK(count_bit_diffs(got, want, 256) == 0);
    kiln_image_rng_free(r);
}

TEST(slerp_properties) {
    /* Strength 0 gives low, strength 1 gives high (slerp path, independent noise). */
    float low[4 * 8 * 8], high[4 * 8 * 8], out[4 * 8 * 8];
    kiln_philox g;
    kiln_philox_init(&g, 1);
    kiln_philox_randn(&g, low, 256);
    kiln_philox_init(&g, 2);
    kiln_philox_randn(&g, high, 256);
    kiln_slerp(0.0, low, high, 4, 8, 8, out);
    CHECK(test_max_abs_diff(out, low, 256) < 1e-5);
    kiln_slerp(1.0, low, high, 4, 8, 8, out);
    CHECK(test_max_abs_diff(out, high, 256) < 1e-5);
    /* Identical inputs take A1111's linear fallback: low * val + high * (1 - val) = low. */
    kiln_slerp(0.25, low, low, 4, 8, 8, out);
    CHECK(test_max_abs_diff(out, low, 256) < 1e-6);
}

TEST(imagerng_seed_resize) {
    /* Resize seed from 32x48 px (latent 4x6) into an 8x8 latent: centre paste of the
     * resized-seed noise into the image generator's own first draw. */
    int64_t seeds[1] = {5};
    kiln_image_rng_opts o = {.source = KILN_RNG_NV, .batch = 1, .channels = 4, .height = 8, .width = 8,
                             .seeds = seeds, .seed_resize_from_w = 48, .seed_resize_from_h = 32};
    kiln_image_rng *r = NULL;
    CHECK(kiln_image_rng_create(&o, &r) == 0);
    if (!r) return;
    float got[256], base[256], small[4 * 4 * 6];
    kiln_image_rng_next(r, got);
    kiln_philox g;
    kiln_philox_init(&g, 5);
    kiln_philox_randn(&g, base, 256);
    kiln_philox_init(&g, 5);
    kiln_philox_randn(&g, small, 96);
    int bad = 0;
    for (int c = 0; c < 4; c++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                float want = base[(c * 8 + y) * 8 + x];
                if (y >= 2 && y < 6 && x >= 1 && x < 7) want = small[(c * 4 + (y - 2)) * 6 + (x - 1)];
                if (got[(c * 8 + y) * 8 + x] != want) bad++;
            }
    CHECK(bad == 0);
    kiln_image_rng_free(r);
}

TEST(seeds_expand) {
    int64_t s[4], ss[4];
    kiln_seeds_expand(100, 7, 0.0, 4, s, ss);
    CHECK(s[0] == 100 && s[1] == 101 && s[3] == 103);
    CHECK(ss[0] == 7 && ss[3] == 10);
    kiln_seeds_expand(100, 7, 0.5, 4, s, ss);
    CHECK(s[0] == 100 && s[3] == 100); /* variation: same seed, subseeds count up */
    CHECK(ss[2] == 9);
    int64_t v = 0;
    CHECK(kiln_seed_resolve(-1, &v) == 0 && v >= 0 && v < 4294967294LL);
    CHECK(kiln_seed_resolve(12, &v) == 0 && v == 12);
    CHECK(kiln_seed_resolve(-5, &v) < 0);
}

TEST(rng_source_names) {
    kiln_rng_source s;
    CHECK(kiln_rng_source_parse("nv", &s) == 0 && s == KILN_RNG_NV);
    CHECK(kiln_rng_source_parse("GPU", &s) == 0 && s == KILN_RNG_GPU);
    CHECK(kiln_rng_source_parse("Cpu", &s) == 0 && s == KILN_RNG_CPU);
    CHECK(kiln_rng_source_parse("tpu", &s) < 0);
}

/* torch CPU references: printed by PyTorch 1.13.1 (Debian build, CPU capability AVX2)
 * as float.hex(); torch.manual_seed(0); torch.randn(4) = [1.5410, -0.2934, -2.1788,
 * 0.5684] and torch.randn(2, 3) = [[1.5410, -0.2934, -2.1788], [0.5684, -1.0845, -1.3986]]
 * are also PyTorch's widely quoted values. */
static void check_hex(const float *got, const double *want, int n, const char *what) {
    for (int i = 0; i < n; i++) CHECK_MSG(got[i] == (float)want[i], "%s[%d] = %a, want %a", what, i, got[i], want[i]);
}

TEST(torch_cpu_scalar_path) {
    static const double want4[] = {0x1.8a7eb8p+0, -0x1.2c78ap-2, -0x1.16e292p+1, 0x1.23096cp-1};
    static const double want6[] = {0x1.8a7eb8p+0, -0x1.2c78ap-2,   -0x1.16e292p+1,
                                   0x1.23096cp-1, -0x1.15a342p+0, -0x1.660a5ap+0};
    kiln_torch_cpu g;
    float v[6];
    kiln_torch_cpu_init(&g, 0);
    kiln_torch_cpu_randn(&g, v, 4);
    check_hex(v, want4, 4, "seed0 randn(4)");
    CHECK_NEAR(v[0], 1.5410, 1e-4);
    CHECK_NEAR(v[3], 0.5684, 1e-4);
    kiln_torch_cpu_init(&g, 0);
    kiln_torch_cpu_randn(&g, v, 6);
    check_hex(v, want6, 6, "seed0 randn(2,3)");
}

TEST(torch_cpu_vector_path) {
    /* torch.Generator().manual_seed(0); torch.randn(20): one block of 16 + a redone tail. */
    static const double want20[] = {
        -0x1.20370ap+0, -0x1.270114p+0, -0x1.0097acp-2, -0x1.bc4abap-2, 0x1.329b16p-1, -0x1.8e1ab6p+0,
        -0x1.5d8d94p-2, 0x1.da5e9cp+0,  0x1.df54aap-2,  -0x1.42febep-3, 0x1.7193b6p+0, 0x1.106f42p-2,
        0x1.63ad8p+0,   0x1.961ap+0,    0x1.e48138p-1,  -0x1.aff666p-1, 0x1.dd186p-1,  0x1.424e6ep+0,
        0x1.00a334p+1,  0x1.b83674p-5};
    /* Seed 42, torch.randn(4, 64, 64) (A1111's CPU noise for a 512x512 image): elements
     * 0..7, 1000..1003 and the last 8. */
    static const double first8[] = {0x1.ed4a52p+0, 0x1.7cbea6p+0,  0x1.cd2acep-1,  -0x1.0d81b6p+1,
                                     0x1.5b59aap-1, -0x1.3c0b22p+0, -0x1.60cf0cp-5, -0x1.9acb74p+0};
    static const double mid4[] = {-0x1.07474p+0, 0x1.9e264p-2, 0x1.124098p+1, -0x1.07dee4p-1};
    static const double last8[] = {0x1.fbebccp+0,  -0x1.1bc7ccp-1, 0x1.b76f2cp-2, 0x1.24ffb8p-4,
                                   -0x1.9f4e3ep-1, -0x1.458116p-1, 0x1.f2141ep-1, -0x1.2c72a6p-2};
    kiln_torch_cpu g;
    float v[20];
    kiln_torch_cpu_init(&g, 0);
    kiln_torch_cpu_randn(&g, v, 20);
    check_hex(v, want20, 20, "seed0 randn(20)");

    static float big[4 * 64 * 64];
    kiln_torch_cpu_init(&g, 42);
    kiln_torch_cpu_randn(&g, big, 4 * 64 * 64);
    check_hex(big, first8, 8, "seed42 randn(4,64,64)[0:8]");
    check_hex(big + 1000, mid4, 4, "seed42 randn(4,64,64)[1000:1004]");
    check_hex(big + 4 * 64 * 64 - 8, last8, 8, "seed42 randn(4,64,64)[-8:]");
    double sum = 0;
    for (int i = 0; i < 4 * 64 * 64; i++) sum += big[i];
    CHECK_NEAR(sum, 149.76480043913034, 1e-9);
}

TEST(torch_cpu_call_sequence) {
    /* g = manual_seed(3): randn(3), randn(17), randn(1), randn(2). The scalar path caches
     * the sine half of a Box-Muller pair across calls; the vector path leaves it alone. */
    static const double w3[] = {0x1.9b47p-1, 0x1.660f0cp-3, 0x1.6c744cp-4};
    static const double w17[] = {0x1.35f1dap-1,  0x1.38fc44p-1,  0x1.8551e4p-1, -0x1.139b08p-5, -0x1.611f22p-2,
                                 0x1.f98052p-2,  -0x1.3dc55p-4,  -0x1.ce2c5ep+0, -0x1.e774a8p-2, 0x1.a451ecp-3,
                                 0x1.5a8cecp-2,  0x1.5a4e16p+0,  0x1.7e9a46p-2, 0x1.b7a196p-7,  0x1.8c1ee4p-1,
                                 -0x1.bf7622p-4, -0x1.15b946p-2};
    static const double w1[] = {-0x1.3a394p-1};
    static const double w2[] = {-0x1.cda888p-1, 0x1.cb13b8p-2};
    kiln_torch_cpu g;
    float v[17];
    kiln_torch_cpu_init(&g, 3);
    kiln_torch_cpu_randn(&g, v, 3);
    check_hex(v, w3, 3, "randn(3)");
    kiln_torch_cpu_randn(&g, v, 17);
    check_hex(v, w17, 17, "randn(17)");
    kiln_torch_cpu_randn(&g, v, 1);
    check_hex(v, w1, 1, "randn(1)");
    kiln_torch_cpu_randn(&g, v, 2);
    check_hex(v, w2, 2, "randn(2)");
}

TEST(torch_cpu_seed_uses_low_32_bits) {
    /* manual_seed(2^32 + 7) seeds mt19937 with 7: randn(16) from torch for that seed. */
    static const double w[] = {-0x1.a3e8acp-1, 0x1.952056p-2,  0x1.cc3dbcp-1, -0x1.636e7p+0,
                               -0x1.560202p-3, 0x1.23fe5ap-2,  -0x1.483d26p-1, -0x1.c98d34p-1,
                               0x1.da63d8p-1,  -0x1.122ea8p-1, -0x1.28e36ep+0, -0x1.d7337p-2,
                               0x1.6ac5a2p-1,  0x1.0343fp+0,   0x1.d7da5p-3,  0x1.17151p+0};
    kiln_torch_cpu g;
    float v[16];
    kiln_torch_cpu_init(&g, (UINT64_C(1) << 32) + 7);
    kiln_torch_cpu_randn(&g, v, 16);
    check_hex(v, w, 16, "seed 2^32+7 randn(16)");
}

TEST(generator_wrapper) {
    kiln_generator g;
    kiln_philox p;
    float a[64], b[64];
    kiln_generator_init(&g, KILN_RNG_GPU, 42);
    kiln_generator_randn(&g, a, 64);
    kiln_philox_init(&p, 42);
    kiln_philox_randn(&p, b, 64);
    CHECK(count_bit_diffs(a, b, 64) == 0);
    kiln_torch_cpu t;
    kiln_generator_init(&g, KILN_RNG_CPU, 42);
    kiln_generator_randn(&g, a, 64);
    kiln_torch_cpu_init(&t, 42);
    kiln_torch_cpu_randn(&t, b, 64);
    CHECK(count_bit_diffs(a, b, 64) == 0);
}

int main(void) {
    if (kiln_st_open(test_fixture("tiny-sd15/rng.safetensors"), &rng_file) != 0) {
        fprintf(stderr, "cannot open rng.safetensors: %s\n", kiln_last_error());
        return 1;
    }
    RUN(philox_draws_bit_exact);
    RUN(philox_offset_advances_once_per_call);
    RUN(philox_first_values_from_manifest);
    RUN(imagerng_batch2);
    RUN(imagerng_ensd_and_variation);
    RUN(slerp_properties);
    RUN(imagerng_seed_resize);
    RUN(seeds_expand);
    RUN(rng_source_names);
    RUN(torch_cpu_scalar_path);
    RUN(torch_cpu_vector_path);
    RUN(torch_cpu_call_sequence);
    RUN(torch_cpu_seed_uses_low_32_bits);
    RUN(generator_wrapper);
    kiln_st_close(rng_file);
    return test_summary();
}
