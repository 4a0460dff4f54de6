/* bench.h — `kiln bench`: timings of the U-Net step and of whole txt2img runs. Measures; asserts nothing. */
#ifndef KILN_PIPELINE_BENCH_H
#define KILN_PIPELINE_BENCH_H

#include <stddef.h>
#include <stdio.h>

#include "kiln.h"

typedef struct kiln_bench_opts {
    const char *backend;          /* "cpu" or "cuda" */
    const char *precision;        /* cuda: "fp16" or "bf16" (NULL = the default: kiln_ctx_options.precision) */
    int threads;                  /* CPU threads (0 = all) */
    int width, height, batch;     /* image size and batch size (the U-Net runs 2 x batch: CFG) */
    int steps;                    /* txt2img steps */
    const char *sampler;          /* txt2img sampler ("Euler a") */
    int warmup, iters;            /* U-Net step timing */
    int runs;                     /* timed whole-image runs (after one warm-up run) */
    double peak_tflops;           /* the card's matrix peak, for the achieved fraction (0 = not shown) */
    int profile;                  /* CUDA: print the time per op kind */
    FILE *log;                    /* where the profile goes */
} kiln_bench_opts;

typedef struct kiln_bench_result {
    double unet_gflop;            /* one U-Net call at batch 2 x batch */
    double kind_gflop[32];        /* of which per op kind (kiln_op_kind) */
    double unet_median_ms, unet_min_ms; /* wall clock per call, host copies included */
    double unet_gpu_median_ms;    /* CUDA: graph replay time alone (0 on CPU) */
    double encode_ms, sampling_ms, decode_ms, total_ms; /* one whole txt2img (median of runs) */
    double sampling_net_ms;        /* of sampling_ms: inside U-Net calls (the rest is host-side sampler work) */
    size_t weights_bytes;         /* the checkpoint's tensors as stored */
    size_t device_bytes;          /* CUDA: device memory in use after the runs (0 on CPU), context included */
    size_t context_bytes;         /* CUDA: of which a bare CUDA context (driver, runtime, kernel images) */
    const char *precision;        /* what the backend computed in: "fp32" (cpu), "fp16" or "bf16" (cuda) */
} kiln_bench_result;

/* The op kind's name (kiln_op_name) for bench reports. */
const char *kiln_bench_op_name(int kind);

int kiln_bench_run(kiln_model *model, const kiln_bench_opts *opts, kiln_bench_result *out);

#endif
