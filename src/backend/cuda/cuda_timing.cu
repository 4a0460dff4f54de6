// cuda_timing.cu — the one timer the tuner measures every candidate with (GEMM algorithms, conv
// methods, GroupNorm forms, attention tactics), so that their times compare.
#include <stdlib.h>

#include "backend/cuda/cuda_internal.h"

int kc_cmp_float(const void *a, const void *b) {
    float p = *(const float *)a, q = *(const float *)b;
    return (p > q) - (p < q);
}

// Median of 5 measurements of 4 back-to-back launches each, after one warm-up launch (module
// loading, caches). Back-to-back runs measure the kernels, not the launch gaps between them.
int kc_time_launches(cudaStream_t s, int (*launch)(void *ctx), void *ctx, float *ms) {
    cudaEvent_t e0 = NULL, e1 = NULL;
    KC_CUDA(cudaEventCreate(&e0));
    if (cudaEventCreate(&e1) != cudaSuccess) {
        cudaEventDestroy(e0);
        return kiln_error(KILN_EBACKEND, "timing: cudaEventCreate: %s", cudaGetErrorString(cudaGetLastError()));
    }
    float t[5] = {0, 0, 0, 0, 0};
    int rc = launch(ctx);
    for (int i = 0; i < 5 && rc == 0; i++) {
        cudaEventRecord(e0, s);
        for (int k = 0; k < 4 && rc == 0; k++) rc = launch(ctx);
        cudaEventRecord(e1, s);
        if (rc == 0 && cudaEventSynchronize(e1) != cudaSuccess)
            rc = kiln_error(KILN_EBACKEND, "timing: %s", cudaGetErrorString(cudaGetLastError()));
        if (rc == 0) {
            cudaEventElapsedTime(&t[i], e0, e1);
            t[i] /= 4.0f;
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (rc) return rc;
    qsort(t, 5, sizeof t[0], kc_cmp_float);
    *ms = t[2];
    return 0;
}

