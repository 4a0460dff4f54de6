/* fixture_cases.h — shared by the pipeline tests: a manifest run's settings as kiln_gen_params, and fixture
 * tensors as float32. */
#ifndef KILN_TEST_FIXTURE_CASES_H
#define KILN_TEST_FIXTURE_CASES_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "io/safetensors.h"
#include "kiln.h"
#include "test.h"

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

/* The pipeline tests' common start: the tiny-sd15 manifest, its model, and a CPU context on kiln's bundled CLIP
 * vocabulary (*opts is filled with the options used, for further contexts). 0, or -1 with the reason printed. */
static inline int fixture_cpu_setup(json_t **manifest, kiln_model **model, kiln_ctx_options *opts, kiln_ctx **ctx) {
    static char vocab[1024];
    json_error_t jerr;
    *manifest = json_load_file(test_fixture("tiny-sd15/manifest.json"), 0, &jerr);
    snprintf(vocab, sizeof vocab, "%s/data/bpe_simple_vocab_16e6.txt.gz", KILN_SOURCE_DIR);
    *opts = (kiln_ctx_options){.backend = "cpu", .vocab_path = vocab};
    if (!*manifest || kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, model) ||
        kiln_ctx_create(*model, opts, ctx)) {
        fprintf(stderr, "setup: %s\n", *manifest ? kiln_last_error() : jerr.text);
        return -1;
    }
    return 0;
}

#endif
