/* rng_philox.c — A1111's "NV" generator (modules/rng_philox.py): Philox4x32-10 keyed by
 * the seed, counter (call index, 0, element index, 0), and a Box-Muller transform of the
 * first two output words evaluated in double, one normal value per element. */
#include "sample/rng.h"

#include <math.h>

/* The reference rounds every product and sum separately: no fused multiply-adds. GCC does
 * not fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox_round(uint32_t c[4], const uint32_t k[2]) {
    uint64_t p0 = (uint64_t)c[0] * PHILOX_M0;
    uint64_t p1 = (uint64_t)c[2] * PHILOX_M1;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k[0];
    uint32_t n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

void kiln_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t k[2] = {key[0], key[1]};
    for (int r = 0; r < 9; r++) {
        philox_round(c, k);
        k[0] += PHILOX_W0;
        k[1] += PHILOX_W1;
    }
    philox_round(c, k);
    for (int i = 0; i < 4; i++) out[i] = c[i];
}

void kiln_philox_init(kiln_philox *g, uint64_t seed) {
    g->seed = seed;
    g->offset = 0;
}

void kiln_philox_randn(kiln_philox *g, float *out, size_t n) {
    /* rng_philox.py keeps these constants as float32 arrays and mixes them with uint32
     * words, which numpy promotes to float64: the constants are float-rounded, halved in
     * float, and everything after that is double. */
    const float c1 = (float)2.3283064e-10;
    const float c2 = (float)(2.3283064e-10 * 6.2831855);
    const double c1_half = (double)(c1 / 2.0f), c2_half = (double)(c2 / 2.0f);
    const uint32_t key[2] = {(uint32_t)(g->seed & 0xffffffffu), (uint32_t)(g->seed >> 32)};
    /* Elements are independent: large draws (a 1024 px latent is 65536 values, DPM++ SDE
     * makes thousands of them) are split over threads. */
    const long long count = (long long)n;
#pragma omp parallel for schedule(static) if (count >= 8192)
    for (long long ii = 0; ii < count; ii++) {
        size_t i = (size_t)ii;
        /* The reference puts the element index in a uint32 word, so it wraps past 2^32. */
        const uint32_t ctr[4] = {(uint32_t)g->offset, 0, (uint32_t)i, 0};
        uint32_t o[4];
        kiln_philox4x32_10(ctr, key, o);
        double u = (double)o[0] * (double)c1 + c1_half;
        double v = (double)o[1] * (double)c2 + c2_half;
        out[i] = (float)(sqrt(-2.0 * log(u)) * sin(v));
    }
    g->offset++;
}
