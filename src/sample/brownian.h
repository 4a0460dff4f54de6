/* brownian.h — the Brownian-motion noise of DPM++ SDE, as A1111 produces it:
 * k-diffusion BrownianTreeNoiseSampler over torchsde 0.2.6 BrownianTree (a BrownianInterval
 * with halfway_tree, tol 1e-6, pool_size 24, entropy = the image's seed), whose Gaussian
 * draws A1111 replaces by a fresh generator of the selected source seeded with each tree
 * node's seed (sd_samplers_kdiffusion's torchsde_randn hijack -> randn_local).
 *
 * Tree: the root spans [round(sigma_min, 6), round(sigma_max, 6)] and holds
 * W = randn(seed_W) * sqrt(sigma_max - sigma_min) with seed_W = SeedSequence(entropy,
 * pool_size=24).generate_state(3)[0]. A node [s, e] splits at m = round((s + e) / 2, 6);
 * with h = e - s, its left child's increment is W * (m - s) / h + sqrt((m - s)(e - m) / h) *
 * randn(node seed), the right child's W - left. The node seed is
 * SeedSequence(entropy, spawn_key=(key, depth), pool_size=24).generate_state(4)[0] with
 * key 0 / depth 0 at the root and key 2k (left) or 2k + 1 (right), depth + 1 below. A query
 * [ta, tb] (sorted, clamped to the root, rounded to 6 decimals) is the sum, left to right,
 * of the tree nodes that tile it; the sampler returns that sum / sqrt(|t1 - t0|).
 * Every step is float32 in torch's order of operations; values agree with A1111 up to
 * the platform's sqrt/log/sin (the NV draws are bit-exact). */
#ifndef KILN_SAMPLE_BROWNIAN_H
#define KILN_SAMPLE_BROWNIAN_H

#include <stddef.h>
#include <stdint.h>

#include "sample/rng.h"

/* numpy SeedSequence(entropy, spawn_key=spawn, pool_size).generate_state(n_out) (uint32).
 * entropy / spawn are the uint32 words numpy assembles from Python ints: each int becomes
 * its little-endian 32-bit words ([0] for 0), spawn being the concatenation of its ints'
 * words. n_entropy >= 1; pool_size 1..64. Returns 0, or KILN_EINVAL on bad sizes. */
int kiln_seed_sequence(const uint32_t *entropy, int n_entropy, const uint32_t *spawn, int n_spawn, int pool_size,
                       uint32_t *out, int n_out);
/* The words numpy makes of a non-negative integer: 1 or 2 words. Returns the count. */
int kiln_int_to_words(uint64_t v, uint32_t words[2]);

/* Python round(x, 6) (round half even on the exact binary value). */
double kiln_round6(double x);

typedef struct kiln_brownian kiln_brownian;

/* BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds) for a batch of `batch`
 * images of numel values each: one tree per image, entropy = that image's seed (>= 0).
 * sigma_min < sigma_max are the float32 values A1111 passes (the smallest non-zero and the
 * largest sigma of the list). source picks the generator torchsde's draws are replaced by. */
int kiln_brownian_create(kiln_rng_source source, const int64_t *seeds, int batch, size_t numel, float sigma_min,
                         float sigma_max, kiln_brownian **out);
void kiln_brownian_free(kiln_brownian *b);
/* noise_sampler(sigma, sigma_next): writes batch x numel values, the normalised Brownian
 * increment between the two sigmas (either order; equal sigmas give zeros). */
int kiln_brownian_noise(kiln_brownian *b, float sigma, float sigma_next, float *out);

#endif
