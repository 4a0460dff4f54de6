/* rng_torch_cpu.c — A1111's "CPU" generator: torch.randn on torch.Generator("cpu") seeded
 * with manual_seed(seed), reproduced bit for bit.
 *
 * torch's CPU generator is a plain mt19937. torch.randn (ATen normal_kernel) then takes
 * one of two paths:
 *  - float32 tensors of >= 16 contiguous elements: every element first gets a uniform
 *    (u & 0xffffff) / 2^24 from one 32-bit output; then each block of 16 is turned into
 *    normals by Box-Muller, lane j pairing u[j] and u[j+8]: r = sqrt(-2 log(1 - u[j])),
 *    th = 2 pi u[j+8], out[j] = r cos th, out[j+8] = r sin th. A tail that is not a whole
 *    block draws 16 fresh uniforms into the last 16 slots and redoes them as one block.
 *    On x86-64 this runs as normal_fill_16_AVX2 (the AVX-512 build is told not to
 *    override it), whose log and sincos are the Cephes-style polynomials of
 *    ATen/native/cpu/avx_mathfun.h in float, compiled by GCC with fused multiply-adds.
 *    avx_log / avx_sincos below evaluate those polynomials lane by lane with the same
 *    roundings (fmaf where GCC fused a multiply into the following add).
 *  - fewer than 16 elements: at::normal_distribution<double> per element: two 53-bit
 *    uniforms, r = sqrt(-2 log1p(-u2)), th = 2 pi u1, value r cos th, and r sin th is
 *    cached in the generator for the next scalar draw.
 * This file is compiled as ISO C11, so the compiler does not contract a*b+c on its own:
 * every fused operation below is an explicit fmaf. */
#include "sample/rng.h"

#include <math.h>
#include <string.h>

/* The reference rounds every product and sum separately: no fused multiply-adds. GCC does
 * not fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- mt19937 ------------------------------------------------------------- */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void kiln_torch_cpu_init(kiln_torch_cpu *g, uint64_t seed) {
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < KILN_MT19937_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
    g->next = KILN_MT19937_N; /* regenerate on the first draw */
    g->has_next_normal = false;
    g->next_normal = 0.0;
}

static void mt_twist(kiln_torch_cpu *g) {
    uint32_t *s = g->state;
    for (int i = 0; i < KILN_MT19937_N; i++) {
        uint32_t y = (s[i] & MT_UPPER) | (s[(i + 1) % KILN_MT19937_N] & MT_LOWER);
        s[i] = s[(i + MT_M) % KILN_MT19937_N] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    g->next = 0;
}

uint32_t kiln_torch_cpu_random(kiln_torch_cpu *g) {
    if (g->next >= KILN_MT19937_N) mt_twist(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits, exact in float. */
static float uniform24(kiln_torch_cpu *g) {
    return (float)((double)(kiln_torch_cpu_random(g) & 0xffffffu) * (1.0 / 16777216.0));
}

/* uniform_real_distribution<double>(0, 1): random64() = (first << 32) | second, 53 bits. */
static double uniform53(kiln_torch_cpu *g) {
    uint64_t hi = kiln_torch_cpu_random(g);
    uint64_t lo = kiln_torch_cpu_random(g);
    uint64_t v = (hi << 32) | lo;
    return (double)(v & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* ---- avx_mathfun.h, one lane at a time ------------------------------------------ */

static float bits_to_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint32_t float_to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* log256_ps for x in (0, 1] (1 - a 24-bit uniform). */
static float avx_log(float x) {
    const float sqrthf = (float)0.707106781186547524;
    const float p0 = (float)7.0376836292E-2, p1 = (float)-1.1514610310E-1, p2 = (float)1.1676998740E-1;
    const float p3 = (float)-1.2420140846E-1, p4 = (float)1.4249322787E-1, p5 = (float)-1.6668057665E-1;
    const float p6 = (float)2.0000714765E-1, p7 = (float)-2.4999993993E-1, p8 = (float)3.3333331174E-1;
    const float q1 = (float)-2.12194440e-4, q2 = (float)0.693359375;
    const float min_norm = bits_to_float(0x00800000u);

    if (x < min_norm) x = min_norm; /* _mm256_max_ps: denormals cut off */
    uint32_t b = float_to_bits(x);
    int32_t exponent = (int32_t)(b >> 23);
    x = bits_to_float((b & ~0x7f800000u) | float_to_bits(0.5f)); /* mantissa in [0.5, 1) */
    float e = (float)(exponent - 0x7f);
    e = e + 1.0f;
    float tmp = (x < sqrthf) ? x : 0.0f;
    float below = (x < sqrthf) ? 1.0f : 0.0f;
    x = x - 1.0f;
    e = e - below;
    x = x + tmp;

    float z = x * x;
    float y = fmaf(p0, x, p1);
    y = fmaf(y, x, p2);
    y = fmaf(y, x, p3);
    y = fmaf(y, x, p4);
    y = fmaf(y, x, p5);
    y = fmaf(y, x, p6);
    y = fmaf(y, x, p7);
    y = fmaf(y, x, p8);
    y = y * x;
    y = fmaf(y, z, e * q1);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, q2, x);
    return x;
}

/* sincos256_ps for x >= 0 (2 pi times a uniform). */
static void avx_sincos(float x, float *s, float *c) {
    const float fopi = (float)1.27323954473516;
    const float dp1 = (float)-0.78515625, dp2 = (float)-2.4187564849853515625e-4;
    const float dp3 = (float)-3.77489497744594108e-8;
    const float sp0 = (float)-1.9515295891E-4, sp1 = (float)8.3321608736E-3, sp2 = (float)-1.6666654611E-1;
    const float cp0 = (float)2.443315711809948E-005, cp1 = (float)-1.388731625493765E-003;
    const float cp2 = (float)4.166664568298827E-002;

    uint32_t sign_sin = float_to_bits(x) & 0x80000000u;
    x = fabsf(x);
    float y = x * fopi;
    int32_t j = (int32_t)y; /* truncation, as cvttps */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sin = ((uint32_t)j & 4u) << 29;
    int poly_sin = (j & 2) == 0; /* lanes where sin uses the sine polynomial */
    x = fmaf(y, dp1, x);
    x = fmaf(y, dp2, x);
    x = fmaf(y, dp3, x);
    uint32_t sign_cos = ((~(uint32_t)(j - 2)) & 4u) << 29;
    sign_sin ^= swap_sin;

    float z = x * x;
    float yc = fmaf(cp0, z, cp1);
    yc = fmaf(yc, z, cp2);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;

    float ys = fmaf(sp0, z, sp1);
    ys = fmaf(ys, z, sp2);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    float ysin2 = poly_sin ? ys : 0.0f;
    float ysin1 = poly_sin ? 0.0f : yc;
    ys = ys - ysin2;
    yc = yc - ysin1;
    float rs = ysin1 + ysin2;
    float rc = yc + ys;
    *s = bits_to_float(float_to_bits(rs) ^ sign_sin);
    *c = bits_to_float(float_to_bits(rc) ^ sign_cos);
}

/* normal_fill_16_AVX2 with mean 0, std 1 (its final fma(n, 1, 0) changes nothing). */
static void normal_fill_16(float *d) {
    const float two_pi = (float)(2.0f * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * avx_log(u1));
        float theta = two_pi * u2;
        float s, c;
        avx_sincos(theta, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

static double scalar_normal(kiln_torch_cpu *g) {
    if (g->has_next_normal) {
        g->has_next_normal = false;
        return g->next_normal;
    }
    double u1 = uniform53(g);
    double u2 = uniform53(g);
    double r = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_normal = r * sin(theta);
    g->has_next_normal = true;
    return r * cos(theta);
}

void kiln_torch_cpu_randn(kiln_torch_cpu *g, float *out, size_t n) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)scalar_normal(g);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform24(g);
    /* The uniforms are drawn in order above; the blocks are independent. */
    const long long blocks = (long long)(n / 16);
#pragma omp parallel for schedule(static) if (blocks >= 512)
    for (long long b = 0; b < blocks; b++) normal_fill_16(out + 16 * (size_t)b);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform24(g);
        normal_fill_16(tail);
    }
}
