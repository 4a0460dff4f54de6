/* test_model_quirks.c — what real single-file checkpoints carry and the loader must take in its stride: fp32, fp16
 * and bf16 tensors mixed in one file, model_ema.* copies and optimizer leftovers (ignored), CLIP keys without the
 * "text_model." prefix, the int64 position_ids; and a missing or mis-shaped tensor reported by name. */
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "net/net.h"
#include "test.h"

/* Writes a copy of the fixture checkpoint with the quirks applied; returns 0 on success. */
static int write_quirky(const char *path, const char *drop, const char *reshape) {
    kiln_st_file *f = NULL;
    if (kiln_st_open(test_fixture("tiny-sd15/model.safetensors"), &f)) return -1;
    int n = f->n_tensors;
    kiln_st_write_tensor *ts = calloc((size_t)n + 2, sizeof *ts);
    char **names = calloc((size_t)n, sizeof *names);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    int64_t *shapes = calloc((size_t)n * KILN_MAX_DIMS, sizeof *shapes);
    int k = 0;
    for (int i = 0; i < n; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        names[k] = strdup(t->name);
        /* CLIP without "text_model." as some SD1 files store it */
        const char *clip = "cond_stage_model.transformer.text_model.";
        if (!strncmp(t->name, clip, strlen(clip))) {
            free(names[k]);
            names[k] = malloc(strlen(t->name) + 1);
            sprintf(names[k], "cond_stage_model.transformer.%s", t->name + strlen(clip));
        }
        memcpy(shapes + (size_t)k * KILN_MAX_DIMS, t->shape, sizeof t->shape);
        if (reshape && !strcmp(t->name, reshape)) shapes[(size_t)k * KILN_MAX_DIMS] += 1; /* wrong first dim */
        ts[k] = (kiln_st_write_tensor){names[k], t->dtype, t->ndim, shapes + (size_t)k * KILN_MAX_DIMS, t->data};
        if (t->dtype == KILN_F16) {
            int64_t numel = kiln_st_numel(t);
            if (reshape && !strcmp(t->name, reshape)) numel = numel / t->shape[0] * (t->shape[0] + 1);
            float *v = malloc(sizeof(float) * (size_t)(numel > kiln_st_numel(t) ? numel : kiln_st_numel(t)));
            memset(v, 0, sizeof(float) * (size_t)numel);
            kiln_st_to_f32(t, v);
            if (strstr(t->name, "first_stage_model.")) { /* the VAE in fp32: exact */
                bufs[k] = v;
                ts[k].dtype = KILN_F32;
                ts[k].data = v;
            } else if (strstr(t->name, "output_blocks.")) { /* some U-Net tensors in bf16 */
                uint16_t *b = malloc(sizeof(uint16_t) * (size_t)numel);
                for (int64_t j = 0; j < numel; j++) b[j] = kiln_f32_to_bf16(v[j]);
                free(v);
                bufs[k] = b;
                ts[k].dtype = KILN_BF16;
                ts[k].data = b;
            } else if (reshape && !strcmp(t->name, reshape)) {
                uint16_t *h = malloc(sizeof(uint16_t) * (size_t)numel);
                for (int64_t j = 0; j < numel; j++) h[j] = kiln_f32_to_f16(v[j]);
                free(v);
                bufs[k] = h;
                ts[k].data = h;
            } else {
                free(v);
            }
        }
        k++;
    }
    /* leftovers real files have: an EMA copy and optimizer state */
    static float ema[4] = {1, 2, 3, 4};
    static const int64_t ema_shape[1] = {4};
    ts[k++] = (kiln_st_write_tensor){"model_ema.diffusion_modelinput_blocks00weight", KILN_F32, 1, ema_shape, ema};
    ts[k++] = (kiln_st_write_tensor){"optimizer.state.0.exp_avg", KILN_F32, 1, ema_shape, ema};
    int rc = kiln_st_write(path, ts, k, NULL, NULL, 0);
    for (int i = 0; i < n; i++) free(names[i]), free(bufs[i]);
    free(names), free(bufs), free(shapes), free(ts);
    kiln_st_close(f);
    return rc;
}

TEST(mixed_dtypes_and_leftovers) {
    char path[1024];
    snprintf(path, sizeof path, "%s/quirky.safetensors", KILN_BUILD_DIR);
    CHECK(write_quirky(path, NULL, NULL) == 0);
    kiln_model *a = NULL, *b = NULL;
    CHECK(kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &a) == 0);
    int rc = kiln_model_load(path, NULL, &b);
    CHECK_MSG(rc == 0, "%s", kiln_last_error());
    if (a && b) {
        CHECK(b->weights->n == a->weights->n);
        CHECK(b->n_ignored == a->n_ignored + 2); /* EMA and optimizer leftovers */
        CHECK(b->config.unet.model_channels == a->config.unet.model_channels &&
              b->config.clip[0].layers == a->config.clip[0].layers);
        /* every tensor present; values equal (bf16 ones within bf16 rounding) */
        int ok = 1;
        for (int i = 0; i < a->weights->n && ok; i++) {
            const kiln_weight *x = &a->weights->items[i], *y = kiln_weights_find(b->weights, x->name);
            if (!y) {
                fprintf(stderr, "missing %s\n", x->name);
                ok = 0;
                break;
            }
            int64_t n = kiln_weight_numel(x);
            float *vx = malloc(sizeof(float) * (size_t)n), *vy = malloc(sizeof(float) * (size_t)n);
            kiln_weight_to_f32(x, vx);
            kiln_weight_to_f32(y, vy);
            double tol = y->dtype == KILN_BF16 ? 1e-2 : 0;
            for (int64_t j = 0; j < n; j++)
                if (fabs(vx[j] - vy[j]) > tol * fabs(vx[j])) ok = 0;
            free(vx), free(vy);
        }
        CHECK(ok);
    }
    kiln_model_free(a);
    kiln_model_free(b);
    remove(path);
}

TEST(missing_and_misshaped_tensors_are_named) {
    char path[1024];
    snprintf(path, sizeof path, "%s/missing.safetensors", KILN_BUILD_DIR);
    const char *gone = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
    CHECK(write_quirky(path, gone, NULL) == 0);
    kiln_model *m = NULL;
    CHECK(kiln_model_load(path, NULL, &m) == 0); /* the config does not need that tensor */
    if (m) {
        kiln_plan *p = kiln_plan_new(m->weights);
        CHECK(kiln_build_unet(p, &m->config.unet, 1, 8, 8, 77) < 0);
        CHECK(strstr(kiln_last_error(), gone) && strstr(kiln_last_error(), "missing.safetensors"));
        kiln_plan_free(p);
        kiln_model_free(m);
    }
    const char *bad = "model.diffusion_model.middle_block.1.proj_in.weight";
    CHECK(write_quirky(path, NULL, bad) == 0);
    m = NULL;
    CHECK(kiln_model_load(path, NULL, &m) == 0);
    if (m) {
        kiln_plan *p = kiln_plan_new(m->weights);
        CHECK(kiln_build_unet(p, &m->config.unet, 1, 8, 8, 77) < 0);
        CHECK(strstr(kiln_last_error(), bad) && strstr(kiln_last_error(), "[129, 128, 1, 1]") &&
              strstr(kiln_last_error(), "expected [128, 128, 1, 1]"));
        printf("  %s\n", kiln_last_error());
        kiln_plan_free(p);
        kiln_model_free(m);
    }
    remove(path);
}

static char logged[4096];
static void collect(void *user, kiln_log_level level, const char *msg) {
    (void)user;
    snprintf(logged + strlen(logged), sizeof logged - strlen(logged), "%d:%s\n", (int)level, msg);
}

TEST(loading_logs_through_the_callback) {
    kiln_model *m = NULL;
    kiln_model_options o = {.log = collect};
    logged[0] = '\0';
    CHECK(kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), &o, &m) == 0);
    CHECK(strstr(logged, "2:") && strstr(logged, "982 tensors (1 ignored"));
    kiln_model_free(m);
}

int main(void) {
    RUN(mixed_dtypes_and_leftovers);
    RUN(missing_and_misshaped_tensors_are_named);
    RUN(loading_logs_through_the_callback);
    return test_summary();
}
