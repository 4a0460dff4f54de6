/* brownian.c — numpy's SeedSequence, Python's round(x, 6) and torchsde's halfway Brownian
 * tree as A1111 uses it for DPM++ SDE; see brownian.h. */
#include "sample/brownian.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* The reference rounds every product and sum separately: no fused multiply-adds. GCC does
 * not fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- numpy.random.SeedSequence (bit_generator.pyx) ---------------------------- */

#define SS_INIT_A 0x43b0d7e5u
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_MULT_L 0xca01f9ddu
#define SS_MIX_MULT_R 0x4973f715u
#define SS_XSHIFT 16
#define SS_MAX_POOL 64
#define SS_MAX_WORDS 256

static uint32_t ss_hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= SS_MULT_A;
    value *= *hash_const;
    value ^= value >> SS_XSHIFT;
    return value;
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t r = SS_MIX_MULT_L * x - SS_MIX_MULT_R * y;
    r ^= r >> SS_XSHIFT;
    return r;
}

int kiln_int_to_words(uint64_t v, uint32_t words[2]) {
    words[0] = (uint32_t)v;
    if (v >> 32) {
        words[1] = (uint32_t)(v >> 32);
        return 2;
    }
    return 1;
}

int kiln_seed_sequence(const uint32_t *entropy, int n_entropy, const uint32_t *spawn, int n_spawn, int pool_size,
                       uint32_t *out, int n_out) {
    if (n_entropy < 1 || n_spawn < 0 || pool_size < 1 || pool_size > SS_MAX_POOL || n_out < 0 ||
        n_entropy + n_spawn + pool_size > SS_MAX_WORDS)
        return kiln_error(KILN_EINVAL, "SeedSequence: %d entropy words, %d spawn words, pool %d out of range",
                          n_entropy, n_spawn, pool_size);
    /* get_assembled_entropy: with a spawn key, the run entropy is zero-padded to the pool
     * size first (numpy >= 1.19). */
    uint32_t words[SS_MAX_WORDS];
    int n = 0;
    for (int i = 0; i < n_entropy; i++) words[n++] = entropy[i];
    if (n_spawn > 0)
        while (n < pool_size) words[n++] = 0;
    for (int i = 0; i < n_spawn; i++) words[n++] = spawn[i];

    uint32_t pool[SS_MAX_POOL];
    uint32_t hc = SS_INIT_A;
    for (int i = 0; i < pool_size; i++) pool[i] = ss_hashmix(i < n ? words[i] : 0u, &hc);
    for (int src = 0; src < pool_size; src++)
        for (int dst = 0; dst < pool_size; dst++)
            if (src != dst) pool[dst] = ss_mix(pool[dst], ss_hashmix(pool[src], &hc));
    for (int src = pool_size; src < n; src++)
        for (int dst = 0; dst < pool_size; dst++) pool[dst] = ss_mix(pool[dst], ss_hashmix(words[src], &hc));

    uint32_t hb = SS_INIT_B;
    for (int i = 0; i < n_out; i++) {
        uint32_t v = pool[i % pool_size];
        v ^= hb;
        hb *= SS_MULT_B;
        v *= hb;
        v ^= v >> SS_XSHIFT;
        out[i] = v;
    }
    return KILN_OK;
}

double kiln_round6(double x) {
    /* printf's %.6f is the exactly rounded decimal (ties to even, as Python's round), and
     * strtod returns the double nearest to it, as Python does. */
    if (!isfinite(x) || fabs(x) >= 1e15) return x;
    char buf[64];
    snprintf(buf, sizeof buf, "%.6f", x);
    return strtod(buf, NULL);
}

/* ---- the tree -------------------------------------------------------------------- */

#define BT_POOL 24
#define BT_MAX_DEPTH 62
#define BT_CACHE 48 /* node increments kept (torchsde keeps an LRU of 45) */

typedef struct bt_node {
    double start, end; /* rounded */
    uint64_t key;      /* torchsde _spawn_key */
    int depth;
} bt_node;

typedef struct bt_cache_slot {
    uint64_t key;
    int depth; /* -1 = empty */
    uint64_t used;
    float *w;
} bt_cache_slot;

typedef struct bt_tree {
    uint32_t entropy[2];
    int n_entropy;
    float *root_w;
    bt_cache_slot cache[BT_CACHE];
} bt_tree;

struct kiln_brownian {
    kiln_rng_source source;
    int batch;
    size_t numel;
    double t0, t1;       /* the tree's float(sigma_min), float(sigma_max) */
    double start, end;   /* rounded to 6 decimals */
    bt_tree *trees;      /* [batch] */
    float *noise, *acc, *part; /* scratch, numel each */
    uint64_t clock;
};

static int node_seed(const bt_tree *t, uint64_t key, int depth, uint32_t *seed) {
    uint32_t spawn[4];
    int ns = kiln_int_to_words(key, spawn);
    ns += kiln_int_to_words((uint64_t)depth, spawn + ns);
    uint32_t st[4] = {0};
    KILN_TRY(kiln_seed_sequence(t->entropy, t->n_entropy, spawn, ns, BT_POOL, st, 4));
    *seed = st[0]; /* _W_seed; H and Levy-area seeds unused without Levy area */
    return KILN_OK;
}

static void draw(const kiln_brownian *b, uint32_t seed, float *out) {
    kiln_generator g;
    kiln_generator_init(&g, b->source, seed);
    kiln_generator_randn(&g, out, b->numel);
}

static bt_cache_slot *cache_find(bt_tree *t, uint64_t key, int depth) {
    for (int i = 0; i < BT_CACHE; i++)
        if (t->cache[i].depth == depth && t->cache[i].key == key) return &t->cache[i];
    return NULL;
}

static void cache_put(kiln_brownian *b, bt_tree *t, uint64_t key, int depth, const float *w) {
    bt_cache_slot *victim = &t->cache[0];
    for (int i = 0; i < BT_CACHE; i++) {
        if (t->cache[i].depth < 0) {
            victim = &t->cache[i];
            break;
        }
        if (t->cache[i].used < victim->used) victim = &t->cache[i];
    }
    victim->key = key;
    victim->depth = depth;
    victim->used = ++b->clock;
    memcpy(victim->w, w, b->numel * sizeof *w);
}

/* The increment W of `target` into out: from the deepest cached ancestor (or the root)
 * down the path of target's key bits, one split per level. */
static int node_increment(kiln_brownian *b, bt_tree *t, const bt_node *target, float *out) {
    /* Find the deepest cached node on the path. */
    int from = 0;
    for (int d = target->depth; d >= 1; d--) {
        bt_cache_slot *s = cache_find(t, target->key >> (target->depth - d), d);
        if (s) {
            from = d;
            s->used = ++b->clock;
            memcpy(out, s->w, b->numel * sizeof *out);
            break;
        }
    }
    if (from == 0) memcpy(out, t->root_w, b->numel * sizeof *out);
    /* Recompute the interval of the node at depth `from` by walking the splits. */
    bt_node n = {b->start, b->end, 0, 0};
    for (int d = 0; d < target->depth; d++) {
        double mid = kiln_round6(0.5 * (n.end + n.start));
        int right = (int)((target->key >> (target->depth - 1 - d)) & 1u);
        if (d >= from) {
            uint32_t seed;
            KILN_TRY(node_seed(t, n.key, n.depth, &seed));
            double left_diff = mid - n.start, right_diff = n.end - mid;
            double h_reciprocal = 1.0 / (n.end - n.start);
            double var = left_diff * right_diff * h_reciprocal;
            float fl = (float)left_diff, fh = (float)h_reciprocal, fs = (float)sqrt(var);
            draw(b, seed, b->noise);
            for (size_t i = 0; i < b->numel; i++) {
                float mean = (out[i] * fl) * fh;
                float left_w = mean + b->noise[i] * fs;
                out[i] = right ? out[i] - left_w : left_w;
            }
        }
        n.key = 2 * n.key + (uint64_t)right;
        n.depth = d + 1;
        if (right)
            n.start = mid;
        else
            n.end = mid;
        if (d >= from) cache_put(b, t, n.key, n.depth, out);
    }
    return KILN_OK;
}

/* Appends to `list` the tree nodes tiling [ta, tb] inside node n (torchsde _loc_inner). */
static int locate(const bt_node *n, double ta, double tb, bt_node *list, int *count, int cap) {
    if (ta == n->start && tb == n->end) {
        if (*count >= cap) return kiln_error(KILN_EINVAL, "brownian tree: query needs more than %d pieces", cap);
        list[(*count)++] = *n;
        return KILN_OK;
    }
    if (n->depth >= BT_MAX_DEPTH)
        return kiln_error(KILN_EINVAL, "brownian tree: [%.9g, %.9g] does not resolve within %d levels", ta, tb,
                          BT_MAX_DEPTH);
    double mid = kiln_round6(0.5 * (n->end + n->start));
    bt_node left = {n->start, mid, 2 * n->key, n->depth + 1};
    bt_node right = {mid, n->end, 2 * n->key + 1, n->depth + 1};
    if (tb <= mid) return locate(&left, ta, tb, list, count, cap);
    if (ta >= mid) return locate(&right, ta, tb, list, count, cap);
    KILN_TRY(locate(&left, ta, mid, list, count, cap));
    return locate(&right, mid, tb, list, count, cap);
}

int kiln_brownian_create(kiln_rng_source source, const int64_t *seeds, int batch, size_t numel, float sigma_min,
                         float sigma_max, kiln_brownian **out) {
    if (batch < 1 || numel < 1 || !seeds)
        return kiln_error(KILN_EINVAL, "brownian tree: batch %d of %zu values", batch, numel);
    if (!(sigma_min < sigma_max) || !(sigma_min >= 0))
        return kiln_error(KILN_EINVAL, "brownian tree: sigma range %g..%g is not increasing", sigma_min, sigma_max);
    for (int i = 0; i < batch; i++)
        if (seeds[i] < 0) return kiln_error(KILN_EINVAL, "brownian tree: seed %lld is negative", (long long)seeds[i]);
    kiln_brownian *b = calloc(1, sizeof *b);
    if (!b) return kiln_error(KILN_ENOMEM, "brownian tree: out of memory");
    b->source = source;
    b->batch = batch;
    b->numel = numel;
    b->t0 = sigma_min;
    b->t1 = sigma_max;
    b->start = kiln_round6(b->t0);
    b->end = kiln_round6(b->t1);
    b->trees = calloc((size_t)batch, sizeof *b->trees);
    b->noise = malloc(numel * sizeof(float));
    b->acc = malloc(numel * sizeof(float));
    b->part = malloc(numel * sizeof(float));
    int ok = b->trees && b->noise && b->acc && b->part;
    for (int i = 0; ok && i < batch; i++) {
        bt_tree *t = &b->trees[i];
        t->n_entropy = kiln_int_to_words((uint64_t)seeds[i], t->entropy);
        t->root_w = malloc(numel * sizeof(float));
        ok = t->root_w != NULL;
        for (int k = 0; ok && k < BT_CACHE; k++) {
            t->cache[k].depth = -1;
            t->cache[k].w = malloc(numel * sizeof(float));
            ok = t->cache[k].w != NULL;
        }
        if (!ok) break;
        /* initial_W_seed, initial_H_seed, top_a_seed = generate_state(3) */
        uint32_t st[3];
        if (kiln_seed_sequence(t->entropy, t->n_entropy, NULL, 0, BT_POOL, st, 3) != 0) {
            kiln_brownian_free(b);
            return KILN_EINVAL;
        }
        draw(b, st[0], t->root_w);
        float scale = (float)sqrt(b->t1 - b->t0);
        for (size_t k = 0; k < numel; k++) t->root_w[k] = t->root_w[k] * scale;
    }
    if (!ok) {
        kiln_brownian_free(b);
        return kiln_error(KILN_ENOMEM, "brownian tree: out of memory for %d x %zu values", batch, numel);
    }
    *out = b;
    return KILN_OK;
}

void kiln_brownian_free(kiln_brownian *b) {
    if (!b) return;
    if (b->trees)
        for (int i = 0; i < b->batch; i++) {
            free(b->trees[i].root_w);
            for (int k = 0; k < BT_CACHE; k++) free(b->trees[i].cache[k].w);
        }
    free(b->trees);
    free(b->noise);
    free(b->acc);
    free(b->part);
    free(b);
}

int kiln_brownian_noise(kiln_brownian *b, float sigma, float sigma_next, float *out) {
    /* BatchedBrownianTree: sort the pair, remember the sign. */
    float lo = sigma, hi = sigma_next;
    float sign = 1.0f;
    if (!(lo < hi)) {
        lo = sigma_next;
        hi = sigma;
        sign = -1.0f;
    }
    float denom = sqrtf(fabsf(sigma_next - sigma));
    /* BrownianInterval.__call__: float(), clamp to the (rounded) root, then round. */
    double ta = lo, tb = hi;
    if (ta < b->start) ta = b->start;
    if (tb < b->start) tb = b->start;
    if (ta > b->end) ta = b->end;
    if (tb > b->end) tb = b->end;
    size_t total = (size_t)b->batch * b->numel;
    if (ta == tb) { /* k-diffusion would return 0 / 0 here; zeros keep the sampler finite */
        for (size_t i = 0; i < total; i++) out[i] = 0.0f;
        return KILN_OK;
    }
    ta = kiln_round6(ta);
    tb = kiln_round6(tb);
    if (ta == tb) { /* torchsde would recurse forever here */
        for (size_t i = 0; i < total; i++) out[i] = 0.0f;
        return KILN_OK;
    }
    bt_node pieces[2 * BT_MAX_DEPTH + 2];
    int count = 0;
    bt_node root = {b->start, b->end, 0, 0};
    KILN_TRY(locate(&root, ta, tb, pieces, &count, (int)(sizeof pieces / sizeof pieces[0])));
    for (int i = 0; i < b->batch; i++) {
        bt_tree *t = &b->trees[i];
        for (int p = 0; p < count; p++) {
            if (pieces[p].depth == 0) {
                memcpy(p == 0 ? b->acc : b->part, t->root_w, b->numel * sizeof(float));
            } else {
                KILN_TRY(node_increment(b, t, &pieces[p], p == 0 ? b->acc : b->part));
            }
            if (p > 0)
                for (size_t k = 0; k < b->numel; k++) b->acc[k] = b->acc[k] + b->part[k];
        }
        float *o = out + (size_t)i * b->numel;
        for (size_t k = 0; k < b->numel; k++) o[k] = (b->acc[k] * sign) / denom;
    }
    return KILN_OK;
}
