/* backend.c — choosing a backend by name and the compile-run-free convenience call. */
#include "backend/backend.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"

#ifndef KILN_HAVE_CUDA
/* Without the CUDA build the entry point still exists, so callers need no #ifdefs. */
int kiln_backend_cuda_create_ex(int device, int bf16, kiln_backend **out) {
    (void)device;
    (void)bf16;
    (void)out;
    return kiln_error(KILN_EUNSUPPORTED, "kiln was built without the CUDA backend");
}
#endif

int kiln_cuda_env_bf16(void) {
    const char *e = getenv("KILN_CUDA_BF16");
    return e && *e && strcmp(e, "0") != 0;
}

int kiln_backend_cuda_create(int device, kiln_backend **out) {
    return kiln_backend_cuda_create_ex(device, kiln_cuda_env_bf16(), out);
}

int kiln_backend_create(const char *name, kiln_backend **out) {
    if (name && !strcasecmp(name, "cpu")) return kiln_backend_cpu_create(0, out);
    if (name && !strcasecmp(name, "cuda")) return kiln_backend_cuda_create(0, out);
    if (name && !strcasecmp(name, "cuda:fp16")) return kiln_backend_cuda_create_ex(0, 0, out);
    if (name && !strcasecmp(name, "cuda:bf16")) return kiln_backend_cuda_create_ex(0, 1, out);
    return kiln_error(KILN_EINVAL, "unknown backend '%s' (expected cpu, cuda, cuda:fp16 or cuda:bf16)",
                      name ? name : "(null)");
}

void kiln_backend_destroy(kiln_backend *be) {
    if (be && be->ops && be->ops->destroy) be->ops->destroy(be);
}

/* Index of name in names[0..n), or -1. */
static int find_name(int n, const char *const *names, const char *name) {
    for (int i = 0; i < n; i++)
        if (names[i] && !strcmp(names[i], name)) return i;
    return -1;
}

int kiln_backend_run_named(kiln_backend *be, const kiln_plan *plan, int n, const char *const *names,
                           void *const *bufs) {
    if (plan->status) return kiln_error(plan->status, "cannot run a plan that failed to build");
    for (int i = 0; i < n; i++)
        if (!names[i] || kiln_plan_find(plan, names[i]) < 0)
            return kiln_error(KILN_EINVAL, "the plan has no input or output named '%s'",
                              names[i] ? names[i] : "(null)");
    int ns = plan->n_slots;
    int *in_slots = malloc(((size_t)ns + 1) * sizeof *in_slots), *out_slots = malloc(((size_t)ns + 1) * sizeof *out_slots);
    const void **inputs = malloc(((size_t)ns + 1) * sizeof *inputs);
    void **outputs = malloc(((size_t)ns + 1) * sizeof *outputs);
    int rc = 0, n_in = 0, n_out = 0;
    if (!in_slots || !out_slots || !inputs || !outputs) {
        rc = kiln_error(KILN_ENOMEM, "out of memory running a plan");
        goto done;
    }
    kiln_plan_io_order(plan, in_slots, &n_in, out_slots, &n_out);
    for (int i = 0; i < n_in + n_out && rc == 0; i++) {
        int slot = i < n_in ? in_slots[i] : out_slots[i - n_in];
        int at = find_name(n, names, plan->slots[slot].name);
        if (at < 0 || !bufs[at]) {
            rc = kiln_error(KILN_EINVAL, "no buffer given for %s %s", i < n_in ? "input" : "output",
                            plan->slots[slot].name);
        } else if (i < n_in) {
            inputs[i] = bufs[at];
        } else {
            outputs[i - n_in] = bufs[at];
        }
    }
    if (rc == 0) {
        kiln_compiled *c = NULL;
        rc = be->ops->compile(be, plan, &c);
        if (rc == 0) {
            rc = be->ops->run(c, (const void *const *)inputs, (void *const *)outputs);
            be->ops->free_compiled(c);
        }
    }
done:
    free(in_slots);
    free(out_slots);
    free(inputs);
    free(outputs);
    return rc;
}
