/* bench.c — `kiln bench` (see bench.h). The U-Net step is timed on its compiled plan with fixed random inputs;
 * whole images go through kiln_generate, so what is timed is what users run. */
#include "pipeline/bench.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "pipeline/txt2img.h"
#ifdef KILN_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int time_unet(kiln_ctx *ctx, const kiln_bench_opts *o, kiln_bench_result *r) {
    const kiln_model_config *mc = &ctx->model->config;
    const int N = 2 * o->batch, h = o->height / 8, w = o->width / 8, L = mc->clip[0].max_positions;
    kiln_cached_plan *cp = NULL;
    KILN_TRY(kiln_ctx_plan(ctx, KILN_NET_UNET, N, h, w, L, &cp));
    r->unet_gflop = 0;
    for (int i = 0; i < cp->plan->n_ops; i++) {
        double g = kiln_op_flops(cp->plan, &cp->plan->ops[i]) * 1e-9;
        r->unet_gflop += g;
        if ((int)cp->plan->ops[i].kind < 32) r->kind_gflop[cp->plan->ops[i].kind] += g;
    }
    size_t nx = (size_t)N * mc->unet.in_channels * h * w, nc = (size_t)N * L * mc->unet.context_dim;
    float *x = malloc(sizeof(float) * nx), *c = malloc(sizeof(float) * nc), *out = malloc(sizeof(float) * nx);
    float t[64];
    double *times = malloc(sizeof(double) * (size_t)(o->iters > 0 ? o->iters : 1));
    int rc = x && c && out && times ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    uint32_t s = 12345;
    for (size_t i = 0; rc == KILN_OK && i < nx; i++) x[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (size_t i = 0; rc == KILN_OK && i < nc; i++) c[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (int i = 0; i < N && i < 64; i++) t[i] = 500.0f;
    const char *names[4] = {"x", "t", "context", "out"};
    void *bufs[4] = {x, t, c, out};
    for (int i = 0; rc == KILN_OK && i < o->warmup; i++) rc = kiln_ctx_run(ctx, cp, 4, names, bufs);
    for (int i = 0; rc == KILN_OK && i < o->iters; i++) {
        double t0 = kiln_now();
        rc = kiln_ctx_run(ctx, cp, 4, names, bufs);
        times[i] = (kiln_now() - t0) * 1e3;
    }
    if (rc == KILN_OK && o->iters > 0) {
        r->unet_median_ms = median(times, o->iters);
        r->unet_min_ms = times[0];
    }
#ifdef KILN_HAVE_CUDA
    if (rc == KILN_OK && !strcmp(o->backend, "cuda")) {
        float med = 0, mn = 0;
        rc = kiln_cuda_time(cp->compiled, o->warmup, o->iters > 0 ? o->iters : 1, &med, &mn);
        r->unet_gpu_median_ms = med;
        if (rc == KILN_OK && o->profile) rc = kiln_cuda_profile(cp->compiled, o->log ? o->log : stderr);
    }
#endif
    free(x), free(c), free(out), free(times);
    return rc;
}

static int time_images(kiln_ctx *ctx, const kiln_bench_opts *o, kiln_bench_result *r) {
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    p.prompt = "a photograph of an astronaut riding a horse, highly detailed";
    p.negative_prompt = "blurry, lowres";
    p.sampler = o->sampler ? o->sampler : "Euler a";
    p.steps = o->steps;
    p.width = o->width;
    p.height = o->height;
    p.seed = 1;
    p.batch_size = o->batch;
    const int h = p.height / 8, w = p.width / 8, runs = o->runs > 0 ? o->runs : 1;
    const size_t n = (size_t)p.batch_size * ctx->model->config.unet.in_channels * h * w;
    float *lat = malloc(sizeof(float) * n);
    double *enc = calloc((size_t)runs, sizeof(double)), *smp = calloc((size_t)runs, sizeof(double)),
           *dec = calloc((size_t)runs, sizeof(double)), *tot = calloc((size_t)runs, sizeof(double)),
           *net = calloc((size_t)runs, sizeof(double));
    int rc = lat && enc && smp && dec && tot && net ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory");
    int64_t seeds[64], subseeds[64];
    for (int i = 0; i < 64; i++) seeds[i] = subseeds[i] = i + 1;
    for (int run = -1; rc == KILN_OK && run < runs; run++) { /* run -1: warm-up (plan builds) */
        kiln_sample_trace tr = {0};
        double t0 = kiln_now(), net0 = ctx->run_seconds;
        rc = kiln_txt2img_sample(ctx, &p, seeds, subseeds, p.batch_size, 0, NULL, NULL, lat, &tr);
        double t1 = kiln_now(), net1 = ctx->run_seconds;
        if (rc == KILN_OK) rc = kiln_decode_latents(ctx, lat, p.batch_size, h, w, NULL, NULL);
        double t2 = kiln_now();
        if (run >= 0) {
            enc[run] = tr.encode_s * 1e3;
            smp[run] = tr.sample_s * 1e3;
            net[run] = (net1 - net0) * 1e3 - enc[run];  /* text encoder calls are inside too */
            dec[run] = (t2 - t1) * 1e3;
            tot[run] = (t2 - t0) * 1e3;
        }
        kiln_sample_trace_free(&tr);
    }
    if (rc == KILN_OK) {
        r->encode_ms = median(enc, runs);
        r->sampling_ms = median(smp, runs);
        r->sampling_net_ms = median(net, runs);
        r->decode_ms = median(dec, runs);
        r->total_ms = median(tot, runs);
    }
    free(lat), free(enc), free(smp), free(dec), free(tot), free(net);
    return rc;
}

int kiln_bench_run(kiln_model *model, const kiln_bench_opts *o, kiln_bench_result *r) {
    memset(r, 0, sizeof *r);
    if (o->batch < 1 || o->batch > 32) return kiln_error(KILN_EINVAL, "batch size %d is not between 1 and 32", o->batch);
    if (o->width % 8 || o->height % 8 || o->width < 8 || o->height < 8)
        return kiln_error(KILN_EINVAL, "size %dx%d is not a multiple of 8", o->width, o->height);
    for (int i = 0; i < model->weights->n; i++)
        r->weights_bytes += (size_t)kiln_weight_numel(&model->weights->items[i]) * kiln_dtype_size(model->weights->items[i].dtype);
    kiln_ctx_options co = {.backend = o->backend, .precision = o->precision, .threads = o->threads};
    kiln_ctx *ctx = NULL;
    KILN_TRY(kiln_ctx_create(model, &co, &ctx));
    r->precision = "fp32";
#ifdef KILN_HAVE_CUDA
    if (!strcmp(ctx->backend->ops->name, "cuda")) r->precision = kiln_cuda_precision(ctx->backend);
#endif
    int rc = time_unet(ctx, o, r);
    if (rc == KILN_OK && o->steps > 0) rc = time_images(ctx, o, r);
#ifdef KILN_HAVE_CUDA
    if (rc == KILN_OK && !strcmp(o->backend, "cuda")) {
        r->device_bytes = kiln_cuda_mem_used();
        r->context_bytes = kiln_cuda_mem_context();
    }
#endif
    kiln_ctx_free(ctx);
    return rc;
}

const char *kiln_bench_op_name(int kind) { return kind >= 0 && kind < KILN_OP_COUNT ? kiln_op_name((kiln_op_kind)kind) : "?"; }
