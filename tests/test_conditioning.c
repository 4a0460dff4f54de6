/* test_conditioning.c — A1111 prompt -> conditioning (chunks, emphasis, BREAK, long prompts, clip skip,
 * textual inversion) on the CPU backend against conditioning*.safetensors. */
#include <jansson.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "pipeline/conditioning.h"
#include "fixture_cases.h"
#include "test.h"

static kiln_model *model;
static kiln_ctx *ctx;

static void check_cases(const char *file, json_t *cases, const kiln_ti_set *ti) {
    kiln_st_file *f = NULL;
    char rel[256];
    snprintf(rel, sizeof rel, "tiny-sd15/%s", file);
    CHECK(kiln_st_open(test_fixture(rel), &f) == 0);
    if (!f) return;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        json_t *cs = json_object_get(c, "clip_skip");
        int clip_skip = cs ? (int)json_integer_value(cs) : 1;
        double atol = json_number_value(json_object_get(json_object_get(c, "tolerance"), "atol"));
        char tname[128];
        snprintf(tname, sizeof tname, "%s_cond", name);
        const kiln_st_tensor *t = kiln_st_find(f, tname);
        CHECK_MSG(t != NULL, "%s", tname);
        if (!t) continue;
        kiln_cond cond = {0};
        int rc = kiln_encode_prompt(ctx, prompt, clip_skip, ti, &cond);
        CHECK_MSG(rc == 0, "%s: %s", name, kiln_last_error());
        if (rc) continue;
        size_t n = (size_t)kiln_st_numel(t);
        CHECK_MSG((size_t)cond.n_tokens * cond.hidden == n, "%s: %d tokens", name, cond.n_tokens);
        if ((size_t)cond.n_tokens * cond.hidden == n) {
            float *want = malloc(n * sizeof(float));
            kiln_st_to_f32(t, want);
            double err = test_max_abs_diff(cond.data, want, n);
            printf("  %-28s chunks %d  max abs err %.3g (atol %.3g)\n", name, cond.n_tokens / 77, err, atol);
            CHECK_MSG(err <= atol, "%s", name);
            free(want);
        }
        kiln_cond_free(&cond);
    }
    kiln_st_close(f);
}

static json_t *manifest;

TEST(conditioning_cases) {
    json_t *cases = json_object_get(json_object_get(json_object_get(manifest, "cases"), "conditioning"), "cases");
    CHECK(json_array_size(cases) >= 11);
    check_cases("conditioning.safetensors", cases, NULL);
}

TEST(textual_inversion_cases) {
    /* The embedding file: one float32 tensor emb_params [2, 128]. */
    kiln_st_file *ef = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/embeddings/tiny_emb.safetensors"), &ef) == 0);
    if (!ef) return;
    const kiln_st_tensor *et = kiln_st_find(ef, "emb_params");
    CHECK(et && et->dtype == KILN_F32 && et->shape[0] == 2);
    int32_t ids[16];
    size_t n_ids = 0;
    CHECK(kiln_tokenize(ctx->tokenizer, "tiny_emb", ids, 16, &n_ids) == 0);
    kiln_embedding_ref ref = {"tiny_emb", 2, ids, (int)n_ids};
    const float *vec = et->data;
    kiln_ti_set ti = {1, &ref, &vec};
    json_t *cases = json_object_get(json_object_get(json_object_get(manifest, "cases"), "textual_inversion"),
                                    "conditioning_cases");
    CHECK(json_array_size(cases) == 4);
    check_cases("conditioning_embedding.safetensors", cases, &ti);
    kiln_st_close(ef);
}

int main(void) {
    kiln_ctx_options opts;
    if (fixture_cpu_setup(&manifest, &model, &opts, &ctx)) return 1;
    RUN(conditioning_cases);
    RUN(textual_inversion_cases);
    kiln_ctx_free(ctx);
    kiln_model_free(model);
    json_decref(manifest);
    return test_summary();
}
