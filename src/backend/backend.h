/* backend.h — the small vtable every compute backend implements.
 *
 * A backend compiles a finalized plan into an executable form once (choosing kernels,
 * laying out and converting weights), then runs it many times. Inputs and outputs
 * cross the boundary as host float32/int32 arrays in the plan's logical layout, so a
 * sampler or test never needs to know which backend ran. */
#ifndef KILN_BACKEND_BACKEND_H
#define KILN_BACKEND_BACKEND_H

#include "plan/plan.h"

typedef struct kiln_backend kiln_backend;
typedef struct kiln_compiled kiln_compiled;

typedef struct kiln_backend_ops {
    const char *name;
    /* Compiles plan (finalized) for this backend. The plan and its weight store must
     * outlive the compiled form. */
    int (*compile)(kiln_backend *be, const kiln_plan *plan, kiln_compiled **out);
    /* Runs once. inputs[i] / outputs[i] are host buffers for the plan's input slots and
     * output slots, in slot-id order (see kiln_plan_io_order). */
    int (*run)(kiln_compiled *c, const void *const *inputs, void *const *outputs);
    void (*free_compiled)(kiln_compiled *c);
    void (*destroy)(kiln_backend *be);
    /* 1: run() notices weights whose values changed since compile (kiln_weight.version: a LoRA
     * merged or restored) and uses the new values, without compiling again. */
    int refits_weights;
} kiln_backend_ops;

struct kiln_backend {
    const kiln_backend_ops *ops;
    void *impl;
};

/* The CPU reference backend (fp32, OpenBLAS, OpenMP threads). n_threads 0 = all cores. */
int kiln_backend_cpu_create(int n_threads, kiln_backend **out);
/* The CUDA backend; fails with a clear message when there is no usable GPU. Computes in fp16
 * unless the environment has KILN_CUDA_BF16=1 (then as kiln_backend_cuda_create_ex with bf16 = 1). */
int kiln_backend_cuda_create(int device, kiln_backend **out);
/* The CUDA backend with its 16-bit element type chosen: bf16 = 0 fp16 (activations and weights in
 * IEEE half), 1 bfloat16 (fp32's exponent range, 8 mantissa bits: no overflow, ~8x coarser
 * rounding). Accumulation is fp32 either way. The environment is not read. */
int kiln_backend_cuda_create_ex(int device, int bf16, kiln_backend **out);
/* Whether KILN_CUDA_BF16 asks for bf16 (set and not "0"): the default of kiln_backend_cuda_create. */
int kiln_cuda_env_bf16(void);
/* By name: "cpu", "cuda" (fp16, or bf16 per KILN_CUDA_BF16), "cuda:fp16" or "cuda:bf16". */
int kiln_backend_create(const char *name, kiln_backend **out);
void kiln_backend_destroy(kiln_backend *be);

/* Convenience: compile + run + free with named host buffers.
 * names/bufs list every input and output by slot name. */
int kiln_backend_run_named(kiln_backend *be, const kiln_plan *plan, int n, const char *const *names,
                           void *const *bufs);

#endif
