/* rng.c — the generator wrapper: A1111's randn_source names and create_generator(seed). */
#include "sample/rng.h"

#include <strings.h>

#include "core/error.h"

int kiln_rng_source_parse(const char *name, kiln_rng_source *out) {
    if (!name) return kiln_error(KILN_EINVAL, "rng source: no name given (expected NV, GPU or CPU)");
    if (!strcasecmp(name, "nv") || !strcasecmp(name, "philox")) {
        *out = KILN_RNG_NV;
    } else if (!strcasecmp(name, "gpu") || !strcasecmp(name, "cuda")) {
        *out = KILN_RNG_GPU;
    } else if (!strcasecmp(name, "cpu")) {
        *out = KILN_RNG_CPU;
    } else {
        return kiln_error(KILN_EINVAL, "rng source '%s' is not one of NV, GPU, CPU", name);
    }
    return KILN_OK;
}

const char *kiln_rng_source_name(kiln_rng_source src) {
    switch (src) {
    case KILN_RNG_NV: return "NV";
    case KILN_RNG_GPU: return "GPU";
    case KILN_RNG_CPU: return "CPU";
    }
    return "?";
}

void kiln_generator_init(kiln_generator *g, kiln_rng_source src, uint64_t seed) {
    g->source = src;
    if (src == KILN_RNG_CPU)
        kiln_torch_cpu_init(&g->u.cpu, seed);
    else
        kiln_philox_init(&g->u.philox, seed);
}

void kiln_generator_randn(kiln_generator *g, float *out, size_t n) {
    if (g->source == KILN_RNG_CPU)
        kiln_torch_cpu_randn(&g->u.cpu, out, n);
    else
        kiln_philox_randn(&g->u.philox, out, n);
}
