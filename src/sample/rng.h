/* rng.h — the random number generators A1111 draws its noise from.
 *
 * A1111's setting "Random number generator source" (randn_source) picks one of:
 *  - "NV":  modules/rng_philox.py, a numpy re-creation of CUDA's Philox-based torch.randn,
 *           so that CPU and GPU users get the same images (kiln_philox);
 *  - "GPU": torch.randn on a seeded CUDA generator. CUDA computes the same Philox
 *           stream with fast float math; kiln uses the NV generator for it (the two
 *           agree to about 2.5e-6), so "GPU" and "NV" give the same numbers here;
 *  - "CPU": torch.randn on a CPU generator seeded with manual_seed(seed): mt19937
 *           plus torch's own normal-distribution code (kiln_torch_cpu).
 * kiln_generator wraps one of them, like A1111's create_generator(seed).
 *
 * All draws are float32 standard normal values, written to out[0..n-1] in
 * row-major order of the requested shape (only the element count matters).
 * Generators are plain structs, not thread-safe, and need no freeing. */
#ifndef KILN_SAMPLE_RNG_H
#define KILN_SAMPLE_RNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- "NV": Philox4x32-10 + Box-Muller in double --------------------------- */

typedef struct kiln_philox {
    uint64_t seed;   /* key = (seed & 0xffffffff, seed >> 32) */
    uint64_t offset; /* number of randn calls so far; counter word 0 of the next call */
} kiln_philox;

/* One Philox4x32-10 block: ten rounds on counter ctr with key (bumped after rounds 1-9). */
void kiln_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
void kiln_philox_init(kiln_philox *g, uint64_t seed);
/* One Generator.randn(shape) call with n = prod(shape) elements: element i uses counter
 * (offset, 0, i, 0); afterwards offset grows by exactly 1, whatever n is. */
void kiln_philox_randn(kiln_philox *g, float *out, size_t n);

/* ---- "CPU": torch.Generator("cpu").manual_seed(seed) + torch.randn ------- */

#define KILN_MT19937_N 624

typedef struct kiln_torch_cpu {
    uint32_t state[KILN_MT19937_N]; /* mt19937 state */
    int next;                       /* index of the next state word to temper */
    bool has_next_normal;           /* torch caches the second Box-Muller value of */
    double next_normal;             /* its scalar normal path (size < 16) here */
} kiln_torch_cpu;

/* manual_seed(seed): mt19937 seeded with the low 32 bits, the normal cache cleared. */
void kiln_torch_cpu_init(kiln_torch_cpu *g, uint64_t seed);
/* The next raw 32-bit mt19937 output (torch's generator->random()). */
uint32_t kiln_torch_cpu_random(kiln_torch_cpu *g);
/* torch.randn(n, dtype=float32, generator=g) on CPU. n >= 16 takes torch's vectorised
 * Box-Muller over blocks of 16 (the AVX2 kernel every x86-64 build dispatches to;
 * uniforms from 24-bit outputs, log/sincos from its avx_mathfun polynomials); n < 16
 * takes the scalar double path (53-bit uniforms, cached second value). */
void kiln_torch_cpu_randn(kiln_torch_cpu *g, float *out, size_t n);

/* ---- one generator of either kind ------------------------------------------ */

typedef enum kiln_rng_source {
    KILN_RNG_NV = 0, /* A1111 default */
    KILN_RNG_GPU,    /* computed as NV (see above) */
    KILN_RNG_CPU,
} kiln_rng_source;

/* "NV", "GPU", "CPU" in any case (also "philox", "cuda"). KILN_EINVAL names the text. */
int kiln_rng_source_parse(const char *name, kiln_rng_source *out);
const char *kiln_rng_source_name(kiln_rng_source src);

typedef struct kiln_generator {
    kiln_rng_source source;
    union {
        kiln_philox philox;  /* NV, GPU */
        kiln_torch_cpu cpu;  /* CPU */
    } u;
} kiln_generator;

/* A1111 create_generator(seed) for the given source. */
void kiln_generator_init(kiln_generator *g, kiln_rng_source src, uint64_t seed);
/* One randn(shape) call of n = prod(shape) values. */
void kiln_generator_randn(kiln_generator *g, float *out, size_t n);

#endif
