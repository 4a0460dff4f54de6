/* seeds.c — A1111 seeds, variation seeds (slerp), seed resize and ENSD for the per-image
 * noise generators; see seeds.h. */
#include "sample/seeds.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/error.h"

/* The reference rounds every product and sum separately: no fused multiply-adds. GCC does
 * not fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

int kiln_seed_resolve(int64_t seed, int64_t *out) {
    if (seed == -1) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r = (uint64_t)time(NULL) * 2654435761u;
        *out = (int64_t)(r % 4294967294u);
        return KILN_OK;
    }
    if (seed < 0) return kiln_error(KILN_EINVAL, "seed %lld: must be -1 (random) or >= 0", (long long)seed);
    *out = seed;
    return KILN_OK;
}

void kiln_seeds_expand(int64_t seed, int64_t subseed, double subseed_strength, int n, int64_t *seeds,
                       int64_t *subseeds) {
    for (int k = 0; k < n; k++) {
        if (seeds) seeds[k] = seed + (subseed_strength == 0 ? k : 0);
        if (subseeds) subseeds[k] = subseed + k;
    }
}

void kiln_slerp(double val, const float *low, const float *high, int c, int h, int w, float *out) {
    /* Mirrors the tensor expressions of A1111's slerp in float32, reducing in double.
     * low_norm = low / |low| along h; dot[c][x] = sum_y low_norm * high_norm. */
    size_t nd = (size_t)c * w;
    double *dot = malloc(nd * sizeof *dot);
    float *nl = malloc(nd * sizeof *nl), *nh = malloc(nd * sizeof *nh);
    if (!dot || !nl || !nh) { /* tiny allocations; fall back to the linear blend */
        free(dot), free(nl), free(nh);
        for (size_t i = 0; i < (size_t)c * h * w; i++)
            out[i] = low[i] * (float)val + high[i] * (float)(1.0 - val);
        return;
    }
    for (int ch = 0; ch < c; ch++)
        for (int x = 0; x < w; x++) {
            double sl = 0, sh = 0;
            for (int y = 0; y < h; y++) {
                size_t i = ((size_t)ch * h + y) * w + x;
                sl += (double)low[i] * low[i];
                sh += (double)high[i] * high[i];
            }
            nl[(size_t)ch * w + x] = (float)sqrt(sl);
            nh[(size_t)ch * w + x] = (float)sqrt(sh);
        }
    double mean = 0;
    for (int ch = 0; ch < c; ch++)
        for (int x = 0; x < w; x++) {
            double d = 0;
            for (int y = 0; y < h; y++) {
                size_t i = ((size_t)ch * h + y) * w + x;
                d += (double)(low[i] / nl[(size_t)ch * w + x]) * (double)(high[i] / nh[(size_t)ch * w + x]);
            }
            dot[(size_t)ch * w + x] = (float)d;
            mean += (float)d;
        }
    mean /= (double)nd;
    if (mean > 0.9995) {
        /* A1111's fallback weights low by val (the reverse of the slerp path); kept as is. */
        for (size_t i = 0; i < (size_t)c * h * w; i++)
            out[i] = low[i] * (float)val + high[i] * (float)(1.0 - val);
    } else {
        for (int ch = 0; ch < c; ch++)
            for (int x = 0; x < w; x++) {
                float omega = acosf((float)dot[(size_t)ch * w + x]);
                float so = sinf(omega);
                float a = sinf((float)(1.0 - val) * omega) / so;
                float b = sinf((float)val * omega) / so;
                for (int y = 0; y < h; y++) {
                    size_t i = ((size_t)ch * h + y) * w + x;
                    out[i] = a * low[i] + b * high[i];
                }
            }
    }
    free(dot), free(nl), free(nh);
}

struct kiln_image_rng {
    kiln_image_rng_opts o;   /* the arrays below replace the caller's pointers */
    int64_t *seeds, *subseeds;
    kiln_generator *gens;    /* [batch] */
    int is_first;
};

int kiln_image_rng_create(const kiln_image_rng_opts *opts, kiln_image_rng **out) {
    if (!opts || opts->batch <= 0 || opts->channels <= 0 || opts->height <= 0 || opts->width <= 0 || !opts->seeds)
        return kiln_error(KILN_EINVAL, "image rng: batch %d and shape %dx%dx%d must be positive, seeds given",
                          opts ? opts->batch : 0, opts ? opts->channels : 0, opts ? opts->height : 0,
                          opts ? opts->width : 0);
    kiln_image_rng *r = calloc(1, sizeof *r);
    if (!r) return kiln_error(KILN_ENOMEM, "image rng: out of memory");
    r->o = *opts;
    r->seeds = malloc((size_t)opts->batch * sizeof *r->seeds);
    r->gens = malloc((size_t)opts->batch * sizeof *r->gens);
    int nsub = opts->subseeds ? opts->n_subseeds : 0;
    r->subseeds = nsub > 0 ? malloc((size_t)nsub * sizeof *r->subseeds) : NULL;
    if (!r->seeds || !r->gens || (nsub > 0 && !r->subseeds)) {
        kiln_image_rng_free(r);
        return kiln_error(KILN_ENOMEM, "image rng: out of memory for %d images", opts->batch);
    }
    memcpy(r->seeds, opts->seeds, (size_t)opts->batch * sizeof *r->seeds);
    if (nsub > 0) memcpy(r->subseeds, opts->subseeds, (size_t)nsub * sizeof *r->subseeds);
    r->o.seeds = r->seeds;
    r->o.subseeds = r->subseeds;
    r->o.n_subseeds = nsub;
    for (int i = 0; i < opts->batch; i++) kiln_generator_init(&r->gens[i], opts->source, (uint64_t)r->seeds[i]);
    r->is_first = 1;
    *out = r;
    return KILN_OK;
}

void kiln_image_rng_free(kiln_image_rng *r) {
    if (!r) return;
    free(r->seeds);
    free(r->subseeds);
    free(r->gens);
    free(r);
}

size_t kiln_image_rng_numel(const kiln_image_rng *r) {
    return (size_t)r->o.batch * r->o.channels * r->o.height * r->o.width;
}

static int floordiv(int a, int b) {
    int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* A fresh generator's first draw: A1111's randn(seed, shape) without a generator. */
static void fresh_draw(kiln_rng_source src, int64_t seed, float *out, size_t n) {
    kiln_generator g;
    kiln_generator_init(&g, src, (uint64_t)seed);
    kiln_generator_randn(&g, out, n);
}

/* ImageRNG.first() for image i into out [C,H,W]; scratch holds 2 x C*nh*nw floats. */
static void first_noise(kiln_image_rng *r, int i, float *out) {
    const kiln_image_rng_opts *o = &r->o;
    int C = o->channels, H = o->height, W = o->width;
    int nh = H, nw = W;
    if (o->seed_resize_from_h > 0 && o->seed_resize_from_w > 0) {
        nh = o->seed_resize_from_h / 8;
        nw = o->seed_resize_from_w / 8;
    }
    int resized = nh != H || nw != W;
    size_t nn = (size_t)C * nh * nw;
    float *noise = resized ? malloc(nn * sizeof *noise) : out;
    int use_sub = o->subseeds != NULL && o->subseed_strength != 0;
    /* As A1111: no list (None) means no variation; a list shorter than the batch gives
     * subseed 0 to the images past its end. */
    float *subnoise = use_sub ? malloc(nn * sizeof *subnoise) : NULL;
    if ((resized && !noise) || (use_sub && !subnoise)) {
        /* Out of memory for a few KB: keep the plain noise rather than fail mid-sampling. */
        if (resized) free(noise);
        free(subnoise);
        kiln_generator_randn(&r->gens[i], out, (size_t)C * H * W);
        return;
    }
    if (use_sub) {
        int64_t subseed = i < o->n_subseeds ? o->subseeds[i] : 0;
        fresh_draw(o->source, subseed, subnoise, nn);
    }
    if (resized)
        fresh_draw(o->source, r->seeds[i], noise, nn);
    else
        kiln_generator_randn(&r->gens[i], noise, nn);
    if (use_sub) kiln_slerp(o->subseed_strength, noise, subnoise, C, nh, nw, noise);
    if (resized) {
        kiln_generator_randn(&r->gens[i], out, (size_t)C * H * W);
        int dx = floordiv(W - nw, 2), dy = floordiv(H - nh, 2);
        int w = dx >= 0 ? nw : nw + 2 * dx;
        int h = dy >= 0 ? nh : nh + 2 * dy;
        int tx = dx < 0 ? 0 : dx, ty = dy < 0 ? 0 : dy;
        dx = dx < 0 ? -dx : 0;
        dy = dy < 0 ? -dy : 0;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    out[((size_t)c * H + ty + y) * W + tx + x] = noise[((size_t)c * nh + dy + y) * nw + dx + x];
        free(noise);
    }
    free(subnoise);
}

void kiln_image_rng_next(kiln_image_rng *r, float *out) {
    size_t per = (size_t)r->o.channels * r->o.height * r->o.width;
    if (r->is_first) {
        r->is_first = 0;
        for (int i = 0; i < r->o.batch; i++) first_noise(r, i, out + (size_t)i * per);
        if (r->o.eta_noise_seed_delta != 0)
            for (int i = 0; i < r->o.batch; i++)
                kiln_generator_init(&r->gens[i], r->o.source, (uint64_t)(r->seeds[i] + r->o.eta_noise_seed_delta));
        return;
    }
    for (int i = 0; i < r->o.batch; i++) kiln_generator_randn(&r->gens[i], out + (size_t)i * per, per);
}
