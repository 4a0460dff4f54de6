/* cuda_backend.h — extras of the CUDA backend beyond the backend vtable, for tests and benchmarks.
 * Only available when kiln is built with KILN_CUDA (KILN_HAVE_CUDA defined). */
#ifndef KILN_BACKEND_CUDA_BACKEND_H
#define KILN_BACKEND_CUDA_BACKEND_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backend/backend.h"

/* Prints each convolution / GEMM / attention step's chosen method and tuned times, the arena size
 * and whether the run is a CUDA graph. c must come from the CUDA backend. */
void kiln_cuda_describe(const kiln_compiled *c, FILE *f);
/* Replays the compiled run (without host copies) `iters` times after `warmup` replays, timing each
 * with CUDA events; writes the median and minimum in milliseconds. */
int kiln_cuda_time(kiln_compiled *c, int warmup, int iters, float *median_ms, float *min_ms);
/* Runs the plan op by op with CUDA events between the steps and prints the time per op kind. */
int kiln_cuda_profile(kiln_compiled *c, FILE *f);
/* "fp16" or "bf16": the element type the CUDA backend be computes in (be from kiln_backend_cuda_create*). */
const char *kiln_cuda_precision(const kiln_backend *be);
/* Device memory in use on the current device (total - free), bytes; for peak-memory reports. */
size_t kiln_cuda_mem_used(void);
/* Records (once) the memory a bare CUDA context uses, before kiln allocates anything; called by
 * kiln_backend_cuda_create. kiln_cuda_mem_context returns it (0 if never recorded). */
void kiln_cuda_note_context(void);
size_t kiln_cuda_mem_context(void);
/* How many convolutions were given a cuDNN graph-API plan (KC_CONV_CUDNN_GRAPH tuned, whether or not
 * it won) since the process started; -1 when kiln was built without cuDNN. For tests. */
int kiln_cuda_cudnn_graph_convs(void);

#ifdef __cplusplus
}
#endif
#endif
