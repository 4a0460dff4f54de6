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
} kiln_backend_ops;

struct kiln_backend {
    const kiln_backend_ops *ops;
    void *impl;
};

/* The CPU reference backend (fp32, OpenBLAS, OpenMP threads). n_threads 0 = all cores. */
int kiln_backend_cpu_create(int n_threads, kiln_backend **out);
/* The CUDA backend; fails with a clear message when there is no usable GPU. */
int kiln_backend_cuda_create(int device, kiln_backend **out);
/* By name: "cpu" or "cuda". */
int kiln_backend_create(const char *name, kiln_backend **out);
void kiln_backend_destroy(kiln_backend *be);

/* Convenience: compile + run + free with named host buffers.
 * names/bufs list every input and output by slot name. */
int kiln_backend_run_named(kiln_backend *be, const kiln_plan *plan, int n, const char *const *names,
                           void *const *bufs);

#endif
