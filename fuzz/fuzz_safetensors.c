/* fuzz_safetensors.c — libFuzzer target for the safetensors header parser and validator.
 * Any input must be either accepted (and then every tensor readable within bounds) or refused with a
 * message; never a crash, leak or out-of-bounds read. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_st_file *f = NULL;
    if (kiln_st_open_memory(data, size, "fuzz.safetensors", &f) != 0) return 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        int64_t n = kiln_st_numel(t);
        if (n > 0 && n < (1 << 20) && (t->dtype == KILN_F32 || t->dtype == KILN_F16 || t->dtype == KILN_BF16)) {
            float *buf = malloc((size_t)n * sizeof(float));
            kiln_st_to_f32(t, buf); /* reads every byte the header promised */
            free(buf);
        }
    }
    kiln_st_close(f);
    return 0;
}
