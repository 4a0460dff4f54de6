/* fixture_cases.h — shared by the pipeline tests: a manifest run's settings as kiln_gen_params, and fixture
 * tensors as float32. */
#ifndef KILN_TEST_FIXTURE_CASES_H
#define KILN_TEST_FIXTURE_CASES_H

#include <jansson.h>
#include <stdlib.h>

#include "io/safetensors.h"
#include "kiln.h"

/* A1111 txt2img settings of a manifest case/run (64x64, "NV" noise, as the fixtures were made). */
static inline void fixture_gen_params(json_t *c, kiln_gen_params *p) {
    kiln_gen_params_init(p);
    p->prompt = json_string_value(json_object_get(c, "prompt"));
    p->negative_prompt = json_string_value(json_object_get(c, "negative"));
    p->sampler = json_string_value(json_object_get(c, "sampler"));
    p->steps = (int)json_integer_value(json_object_get(c, "steps"));
    p->cfg_scale = json_number_value(json_object_get(c, "cfg"));
    p->seed = json_integer_value(json_object_get(c, "seed"));
    p->width = p->height = 64;
    p->rng = "NV";
}

/* A fixture tensor as float32 (malloc'ed) with its element count, or NULL. */
static inline float *fixture_tensor_f32(kiln_st_file *f, const char *name, size_t *n) {
    const kiln_st_tensor *t = kiln_st_find(f, name);
    if (!t) return NULL;
    *n = (size_t)kiln_st_numel(t);
    float *v = malloc(*n * sizeof(float));
    if (v) kiln_st_to_f32(t, v);
    return v;
}

#endif
