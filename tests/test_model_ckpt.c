/* test_model_ckpt.c — a PyTorch .ckpt of the fixture model (written by tests/tools/safetensors_to_ckpt.py with the
 * standard library only) loads into the same weight store, byte for byte, as the .safetensors original. */
#include "core/error.h"
#include "model/model.h"
#include "test.h"

TEST(ckpt_matches_safetensors) {
    char ckpt[1024], cmd[4096];
    snprintf(ckpt, sizeof ckpt, "%s/tiny-sd15-test.ckpt", KILN_BUILD_DIR);
    snprintf(cmd, sizeof cmd, "python3 %s/tests/tools/safetensors_to_ckpt.py %s %s", KILN_SOURCE_DIR,
             test_fixture("tiny-sd15/model.safetensors"), ckpt);
    CHECK(system(cmd) == 0);
    kiln_model *a = NULL, *b = NULL;
    CHECK(kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &a) == 0);
    int rc = kiln_model_load(ckpt, NULL, &b);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (a && b) {
        CHECK(a->weights->n == b->weights->n);
        CHECK(a->config.family == b->config.family && a->config.unet.model_channels == b->config.unet.model_channels);
        int same = 1;
        for (int i = 0; i < a->weights->n; i++) {
            const kiln_weight *x = &a->weights->items[i], *y = kiln_weights_find(b->weights, x->name);
            if (!y || y->dtype != x->dtype || y->ndim != x->ndim ||
                memcmp(x->data, y->data, (size_t)kiln_weight_numel(x) * kiln_dtype_size(x->dtype))) {
                fprintf(stderr, "differs: %s\n", x->name);
                same = 0;
            }
        }
        CHECK(same);
    }
    kiln_model_free(a);
    kiln_model_free(b);
    remove(ckpt);
}

TEST(bad_ckpt_is_refused) {
    char path[1024];
    snprintf(path, sizeof path, "%s/not-a-zip.ckpt", KILN_BUILD_DIR);
    FILE *f = fopen(path, "wb");
    fputs("this is not a checkpoint", f);
    fclose(f);
    kiln_model *m = NULL;
    CHECK(kiln_model_load(path, NULL, &m) < 0);
    CHECK(strstr(kiln_last_error(), "not-a-zip.ckpt") != NULL);
    remove(path);
}

int main(void) {
    RUN(ckpt_matches_safetensors);
    RUN(bad_ckpt_is_refused);
    return test_summary();
}
