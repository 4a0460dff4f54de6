/* cuda_unet_bench.c — one SD 1.5 U-Net step on the CUDA backend with random weights: compile time,
 * graph replay time (CUDA events, median), device memory (weights + arena), and optionally the
 * output against the CPU backend (--check, slow).
 *
 * Usage: cuda_unet_bench [--batch N] [--size PX] [--iters N] [--check] [--describe] [--bf16]
 * Default: batch 2 (CFG), 512x512 (64x64 latent), context 77x768, fp16 (--bf16 or KILN_CUDA_BF16=1: bf16). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "net/net.h"

static uint32_t rng = 99u;
static float frand(void) { /* uniform [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static double rel_l2(const float *a, const float *b, size_t n, double *max_abs) {
    double num = 0, den = 0;
    *max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d, den += (double)b[i] * b[i];
        if (!(fabs(d) <= *max_abs)) *max_abs = fabs(d);  /* NaN propagates */
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static kiln_unet_config sd15(void) {
    kiln_unet_config c;
    memset(&c, 0, sizeof c);
    c.in_channels = 4, c.out_channels = 4, c.model_channels = 320, c.n_levels = 4;
    c.channel_mult[0] = 1, c.channel_mult[1] = 2, c.channel_mult[2] = 4, c.channel_mult[3] = 4;
    c.num_res_blocks = 2;
    c.transformer_depth[0] = c.transformer_depth[1] = c.transformer_depth[2] = 1;
    c.mid_transformer_depth = 1, c.context_dim = 768, c.num_heads = 8, c.time_embed_dim = 1280, c.groups = 32;
    return c;
}

/* Replaces every collected weight with random values scaled like a trained network's
 * (norm gains near 1, small biases, matrices ~ 1/sqrt(fan_in)). Returns the parameter count. */
static double randomize(kiln_weights *ws) {
    double params = 0;
    for (int i = 0; i < ws->n; i++) {
        kiln_weight *w = &ws->items[i];
        int64_t n = kiln_weight_numel(w);
        float *d = malloc((size_t)n * sizeof *d);
        int64_t fan_in = 1;
        for (int k = 1; k < w->ndim; k++) fan_in *= w->shape[k];
        int is_norm = strstr(w->name, "norm") != NULL || strstr(w->name, "in_layers.0") != NULL ||
                      strstr(w->name, "out_layers.0") != NULL || strstr(w->name, "out.0") != NULL;
        for (int64_t j = 0; j < n; j++) {
            if (w->ndim == 1) d[j] = is_norm && strstr(w->name, "weight") ? 1.0f + 0.1f * frand() : 0.05f * frand();
            else d[j] = frand() * sqrtf(3.0f / (float)fan_in);
        }
        char *name = strdup(w->name);
        int ndim = w->ndim;
        int64_t shape[KILN_MAX_DIMS];
        memcpy(shape, w->shape, sizeof shape);
        kiln_weights_add_owned_f32(ws, name, ndim, shape, d, "random");
        free(name);
        params += (double)n;
    }
    return params;
}

int main(int argc, char **argv) {
    int batch = 2, size = 512, iters = 30, check = 0, describe = 0, bf16 = kiln_cuda_env_bf16();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--check")) check = 1;
        else if (!strcmp(argv[i], "--describe")) describe = 1;
        else if (!strcmp(argv[i], "--bf16")) bf16 = 1;
    }
    kiln_backend *gpu = NULL;
    if (kiln_backend_cuda_create_ex(0, bf16, &gpu) != 0) {
        fprintf(stderr, "%s\n", kiln_last_error());
        return 77;
    }
    size_t mem0 = kiln_cuda_mem_used();
    kiln_unet_config cfg = sd15();
    int h = size / 8, w = size / 8;
    kiln_weights *ws = kiln_weights_new();
    kiln_plan *collect = kiln_plan_new(ws);
    collect->collect = ws;
    if (kiln_build_unet(collect, &cfg, batch, h, w, 77) < 0 || collect->status) {
        fprintf(stderr, "collect: %s\n", kiln_last_error());
        return 1;
    }
    kiln_plan_free(collect);
    double params = randomize(ws);
    kiln_plan *p = kiln_plan_new(ws);
    if (kiln_build_unet(p, &cfg, batch, h, w, 77) < 0 || kiln_plan_finalize(p) != 0) {
        fprintf(stderr, "build: %s\n", kiln_last_error());
        return 1;
    }
    double flops = 0;
    for (int i = 0; i < p->n_ops; i++) flops += kiln_op_flops(p, &p->ops[i]);
    printf("SD1.5 U-Net batch %d, %dx%d (latent %dx%d), ctx 77x768, %s: %d ops, %.0fM params, %.3f TFLOP\n", batch,
           size, size, h, w, kiln_cuda_precision(gpu), p->n_ops, params / 1e6, flops / 1e12);

    double t0 = now();
    kiln_compiled *c = NULL;
    if (gpu->ops->compile(gpu, p, &c) != 0) {
        fprintf(stderr, "compile: %s\n", kiln_last_error());
        return 1;
    }
    double t_compile = now() - t0;
    if (describe) {
        kiln_cuda_describe(c, stdout);
        kiln_cuda_profile(c, stdout);
    }
    size_t mem1 = kiln_cuda_mem_used();
    float med = 0, mn = 0;
    if (kiln_cuda_time(c, 5, iters, &med, &mn) != 0) {
        fprintf(stderr, "time: %s\n", kiln_last_error());
        return 1;
    }
    printf("compile (upload + tuning + graph): %.2f s\n", t_compile);
    printf("device memory: %.0f MiB for weights (%s) + arena, process total %.0f MiB over the context\n",
           (mem1 - mem0) / 1048576.0, kiln_cuda_precision(gpu), mem1 / 1048576.0);
    printf("U-Net step: median %.3f ms, min %.3f ms over %d graph replays -> %.0f TFLOP/s\n", med, mn, iters,
           flops / (med * 1e-3) / 1e12);

    if (check) {
        int64_t nx = (int64_t)batch * 4 * h * w, nc = (int64_t)batch * 77 * 768;
        float *x = malloc(nx * sizeof *x), *ctx = malloc(nc * sizeof *ctx), *t = malloc(batch * sizeof *t);
        float *out_g = malloc(nx * sizeof *out_g), *out_c = malloc(nx * sizeof *out_c);
        for (int64_t i = 0; i < nx; i++) x[i] = 1.5f * frand();
        for (int64_t i = 0; i < nc; i++) ctx[i] = frand();
        for (int i = 0; i < batch; i++) t[i] = 981.5f - 100.0f * i;
        const char *names[4] = {"x", "t", "context", "out"};
        void *bufs[4] = {x, t, ctx, out_g};
        /* run the compiled plan that was just replayed many times (its graph, its buffers) */
        int ins[8], outs[8], n_in = 0, n_out = 0, rc = 0;
        kiln_plan_io_order(p, ins, &n_in, outs, &n_out);
        const void *in_bufs[8];
        for (int i = 0; i < n_in; i++)
            for (int k = 0; k < 3; k++)
                if (!strcmp(p->slots[ins[i]].name, names[k])) in_bufs[i] = bufs[k];
        void *out_bufs[1] = {out_g};
        rc = gpu->ops->run(c, in_bufs, out_bufs);
        kiln_backend *cpu = NULL;
        if (rc == 0) rc = kiln_backend_cpu_create(0, &cpu);
        bufs[3] = out_c;
        double tc = now();
        if (rc == 0) rc = kiln_backend_run_named(cpu, p, 4, names, bufs);
        if (rc) {
            fprintf(stderr, "check: %s\n", kiln_last_error());
            return 1;
        }
        double max_abs, err = rel_l2(out_g, out_c, (size_t)nx, &max_abs);
        printf("check vs CPU fp32 (%.1f s on CPU): relative L2 %.3g, max abs diff %.3g\n", now() - tc, err, max_abs);
        kiln_backend_destroy(cpu);
    }
    gpu->ops->free_compiled(c);
    kiln_plan_free(p);
    kiln_backend_destroy(gpu);
    kiln_weights_free(ws);
    return 0;
}
