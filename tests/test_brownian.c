/* test_brownian.c — numpy SeedSequence, Python round(x, 6), and the DPM++ SDE Brownian tree
 * noise against txt2img_dpmpp_sde_karras_6's brownian_noise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "kiln.h"
#include "sample/brownian.h"
#include "test.h"

static void check_state(uint64_t entropy, const uint64_t *spawn_ints, int n_spawn_ints, int pool, const uint32_t *want,
                        int n) {
    uint32_t ent[2], spawn[16], got[8];
    int ne = kiln_int_to_words(entropy, ent), ns = 0;
    for (int i = 0; i < n_spawn_ints; i++) ns += kiln_int_to_words(spawn_ints[i], spawn + ns);
    CHECK(kiln_seed_sequence(ent, ne, spawn, ns, pool, got, n) == 0);
    for (int i = 0; i < n; i++)
        CHECK_MSG(got[i] == want[i], "SeedSequence(%llu, pool %d) word %d = %u, want %u", (unsigned long long)entropy,
                  pool, i, got[i], want[i]);
}

TEST(seed_sequence_matches_numpy) {
    /* numpy 1.24: SeedSequence(0).generate_state(4) (numpy's documented default pool 4) */
    static const uint32_t s0[] = {2968811710u, 3677149159u, 745650761u, 2884920346u};
    check_state(0, NULL, 0, 4, s0, 4);
    /* SeedSequence(123456789, pool_size=4).generate_state(6): the pool cycles */
    static const uint32_t s1[] = {1315320158u, 1391606125u, 150704254u, 2614738243u, 1968368282u, 411294108u};
    check_state(123456789, NULL, 0, 4, s1, 6);
    /* torchsde's calls: SeedSequence(99, pool_size=24).generate_state(3) (root) and
     * SeedSequence(99, spawn_key=(0, 0), pool_size=24).generate_state(4) (root split) */
    static const uint32_t s2[] = {3918794789u, 1611461802u, 1548609232u};
    check_state(99, NULL, 0, 24, s2, 3);
    static const uint64_t k00[] = {0, 0};
    static const uint32_t s3[] = {1406712681u, 1646754902u, 3990858855u, 361180254u};
    check_state(99, k00, 2, 24, s3, 4);
    /* Multi-word entropy and spawn key: SeedSequence(2**40 + 5, spawn_key=(2**33 + 1, 7), pool_size=24) */
    static const uint64_t kbig[] = {(UINT64_C(1) << 33) + 1, 7};
    static const uint32_t s4[] = {293326118u, 915788752u, 574338893u, 4179391364u};
    check_state((UINT64_C(1) << 40) + 5, kbig, 2, 24, s4, 4);
    static const uint64_t k53[] = {5, 3};
    static const uint32_t s5[] = {648340268u, 1452704993u, 4287593032u, 3590813513u};
    check_state(4294967295u, k53, 2, 24, s5, 4);
    uint32_t e = 0, o;
    CHECK(kiln_seed_sequence(&e, 1, NULL, 0, 0, &o, 1) == KILN_EINVAL);
}

TEST(round6_like_python) {
    CHECK(kiln_round6(0.029167532920837402) == 0.029168);
    CHECK(kiln_round6(14.614642143249512) == 14.614642);
    CHECK(kiln_round6(0.0078125) == 0.007812); /* exact tie: half to even */
    CHECK(kiln_round6(0.0078135) == 0.007813 || kiln_round6(0.0078135) == 0.007814);
    CHECK(kiln_round6(-1.0000005) == -1.000001 || kiln_round6(-1.0000005) == -1.0);
    CHECK(kiln_round6(7.3218545) == 7.321855 || kiln_round6(7.3218545) == 7.321854);
    CHECK(kiln_round6(2.5) == 2.5);
}

TEST(dpmpp_sde_fixture_noise) {
    kiln_st_file *f = NULL;
    if (kiln_st_open(test_fixture("tiny-sd15/txt2img_dpmpp_sde_karras_6.safetensors"), &f) != 0) {
        CHECK_MSG(0, "%s", kiln_last_error());
        return;
    }
    const kiln_st_tensor *tn = kiln_st_find(f, "brownian_noise"), *tp = kiln_st_find(f, "brownian_sigma_pairs"),
                         *ts = kiln_st_find(f, "sigmas");
    CHECK(tn && tp && ts);
    if (!tn || !tp || !ts) {
        kiln_st_close(f);
        return;
    }
    int npairs = (int)tp->shape[0];
    float *noise = malloc((size_t)kiln_st_numel(tn) * sizeof *noise);
    float *pairs = malloc((size_t)kiln_st_numel(tp) * sizeof *pairs);
    float sigmas[7];
    kiln_st_to_f32(tn, noise);
    kiln_st_to_f32(tp, pairs);
    kiln_st_to_f32(ts, sigmas);
    CHECK(npairs == 10 && kiln_st_numel(tn) == 10 * 256 && kiln_st_numel(ts) == 7);
    /* sigma_min = smallest non-zero sigma, sigma_max = the largest; seed = [99]. */
    int64_t seed = 99;
    kiln_brownian *b = NULL;
    CHECK(kiln_brownian_create(KILN_RNG_NV, &seed, 1, 256, sigmas[5], sigmas[0], &b) == 0);
    float got[256];
    double worst = 0;
    for (int p = 0; b && p < npairs; p++) {
        CHECK(kiln_brownian_noise(b, pairs[2 * p], pairs[2 * p + 1], got) == 0);
        double d = test_max_abs_diff(got, noise + 256 * p, 256);
        if (d > worst) worst = d;
        CHECK_MSG(d < 1e-5, "pair %d (%.9g, %.9g): max |diff| %g", p, pairs[2 * p], pairs[2 * p + 1], d);
    }
    printf("  brownian_noise max |diff| over %d pairs: %g\n", npairs, worst);
    /* Querying again (from the cache) gives the same values. */
    if (b) {
        CHECK(kiln_brownian_noise(b, pairs[0], pairs[1], got) == 0);
        CHECK(test_max_abs_diff(got, noise, 256) < 1e-5);
    }
    /* A fresh tree queried in another order gives the same noise (the tree only depends on
     * the seed). */
    kiln_brownian *b2 = NULL;
    CHECK(kiln_brownian_create(KILN_RNG_NV, &seed, 1, 256, sigmas[5], sigmas[0], &b2) == 0);
    for (int p = npairs - 1; b2 && p >= 0; p--) {
        CHECK(kiln_brownian_noise(b2, pairs[2 * p], pairs[2 * p + 1], got) == 0);
        CHECK_MSG(test_max_abs_diff(got, noise + 256 * p, 256) < 1e-5, "reverse order pair %d", p);
    }
    kiln_brownian_free(b2);
    kiln_brownian_free(b);
    free(noise);
    free(pairs);
    kiln_st_close(f);
}

TEST(brownian_batch_and_edges) {
    /* Batched trees: image k uses seed k alone, as if it ran by itself. */
    int64_t seeds[2] = {99, 5};
    kiln_brownian *both = NULL, *one = NULL;
    CHECK(kiln_brownian_create(KILN_RNG_NV, seeds, 2, 16, 0.03f, 14.6f, &both) == 0);
    CHECK(kiln_brownian_create(KILN_RNG_NV, seeds + 1, 1, 16, 0.03f, 14.6f, &one) == 0);
    if (!both || !one) return;
    float a[32], c[16], r[32];
    CHECK(kiln_brownian_noise(both, 5.0f, 2.0f, a) == 0);
    CHECK(kiln_brownian_noise(one, 5.0f, 2.0f, c) == 0);
    CHECK(memcmp(a + 16, c, sizeof c) == 0);
    /* Swapping the pair flips the sign. */
    CHECK(kiln_brownian_noise(both, 2.0f, 5.0f, r) == 0);
    for (int i = 0; i < 32; i++) CHECK(r[i] == -a[i]);
    /* Equal sigmas: zeros. The whole range: the root increment / sqrt(range), ~N(0, 1). */
    CHECK(kiln_brownian_noise(both, 3.0f, 3.0f, r) == 0);
    for (int i = 0; i < 32; i++) CHECK(r[i] == 0.0f);
    CHECK(kiln_brownian_noise(both, 14.6f, 0.03f, r) == 0);
    double ss = 0;
    for (int i = 0; i < 32; i++) ss += r[i] * r[i];
    CHECK(ss > 4 && ss < 100);
    kiln_brownian_free(both);
    kiln_brownian_free(one);
    kiln_brownian *bad = NULL;
    CHECK(kiln_brownian_create(KILN_RNG_NV, seeds, 1, 16, 2.0f, 1.0f, &bad) == KILN_EINVAL);
    int64_t neg = -3;
    CHECK(kiln_brownian_create(KILN_RNG_NV, &neg, 1, 16, 1.0f, 2.0f, &bad) == KILN_EINVAL);
}

int main(void) {
    RUN(seed_sequence_matches_numpy);
    RUN(round6_like_python);
    RUN(dpmpp_sde_fixture_noise);
    RUN(brownian_batch_and_edges);
    return test_summary();
}
