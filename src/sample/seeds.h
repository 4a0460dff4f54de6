/* seeds.h — A1111's per-image seeds and per-image noise (modules/processing.py seeds,
 * modules/rng.py ImageRNG and slerp).
 *
 * A job of batch_size x batch_count images gets seeds[k] = seed + k (every image keeps
 * the same seed when subseed_strength != 0; the variation seeds then count up instead),
 * subseeds[k] = subseed + k. Seed -1 means "pick one at random". Each image has its own
 * generator (kiln_generator, created from its seed): its first draw is the initial noise,
 * later draws are what the sampler gets in place of torch.randn_like. */
#ifndef KILN_SAMPLE_SEEDS_H
#define KILN_SAMPLE_SEEDS_H

#include <stdint.h>

#include "sample/rng.h"

/* A1111 get_fixed_seed: -1 becomes a random seed in [0, 4294967294); any other value
 * >= 0 is kept. Other negative values are rejected (KILN_EINVAL). */
int kiln_seed_resolve(int64_t seed, int64_t *out);

/* p.all_seeds / p.all_subseeds for n images (n = batch_size * batch_count; image k of
 * batch b is index b * batch_size + k). seed and subseed must already be resolved. */
void kiln_seeds_expand(int64_t seed, int64_t subseed, double subseed_strength, int n, int64_t *seeds,
                       int64_t *subseeds);

/* A1111 slerp(val, low, high) on one image's noise [c, h, w]. Like A1111 it normalises
 * along dim 1 (rows, h) and interpolates each (channel, column) vector separately, and
 * falls back to low * val + high * (1 - val) when the mean cosine exceeds 0.9995.
 * out may alias low or high. */
void kiln_slerp(double val, const float *low, const float *high, int c, int h, int w, float *out);

typedef struct kiln_image_rng_opts {
    kiln_rng_source source;
    int batch;                         /* images, one generator each */
    int channels, height, width;       /* latent shape of one image */
    const int64_t *seeds;              /* [batch] */
    const int64_t *subseeds;           /* [n_subseeds] variation seeds, or NULL; missing ones are 0 */
    int n_subseeds;
    double subseed_strength;           /* variation strength, 0 = off */
    int seed_resize_from_w;            /* "resize seed from" width / height in pixels; */
    int seed_resize_from_h;            /*  <= 0 = off */
    int64_t eta_noise_seed_delta;      /* ENSD: after the initial noise the generators restart
                                          from seed + delta (0 = keep going) */
} kiln_image_rng_opts;

typedef struct kiln_image_rng kiln_image_rng;

/* Copies what it needs from opts (the arrays too). */
int kiln_image_rng_create(const kiln_image_rng_opts *opts, kiln_image_rng **out);
void kiln_image_rng_free(kiln_image_rng *r);
/* ImageRNG.next(): writes batch x channels x height x width values. The first call is the
 * initial noise (with variation seeds, seed resize and ENSD applied as A1111 does); every
 * later call is one more draw of each image's generator. */
void kiln_image_rng_next(kiln_image_rng *r, float *out);
/* Elements of one call's output. */
size_t kiln_image_rng_numel(const kiln_image_rng *r);

#endif
