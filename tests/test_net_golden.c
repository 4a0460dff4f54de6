/* test_net_golden.c — CLIP, U-Net and VAE on the CPU backend against the tiny-sd15 fixtures
 * (A1111/diffusers/transformers in fp32), within each case's manifest tolerance. */
#include "fixture_nets.h"

static kiln_model *model;
static kiln_backend *cpu;
static json_t *manifest;

/* Max abs error within the case's manifest tolerance. */
static void check_atol(const char *what, const float *got, const float *want, size_t n, double atol) {
    double err = test_max_abs_diff(got, want, n);
    printf("  %-24s max abs err %.3g (atol %.3g), rel L2 %.3g\n", what, err, atol, test_rel_l2(got, want, n));
    CHECK_MSG(err <= atol, "%s: max abs err %.3g > %.3g", what, err, atol);
}

TEST(text_encoder) { fixture_nets_text_encoder(cpu, model, manifest, check_atol); }
TEST(unet) { fixture_nets_unet(cpu, model, manifest, check_atol); }
TEST(vae) {
    fixture_nets_vae_decode(cpu, model, manifest, check_atol);
    fixture_nets_vae_encode(cpu, model, manifest, check_atol);
}

int main(void) {
    json_error_t jerr;
    manifest = json_load_file(test_fixture("tiny-sd15/manifest.json"), 0, &jerr);
    if (!manifest || kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &model) ||
        kiln_backend_cpu_create(0, &cpu)) {
        fprintf(stderr, "setup failed: %s\n", kiln_last_error());
        return 1;
    }
    printf("A1111 single file:\n");
    RUN(text_encoder);
    RUN(unet);
    RUN(vae);
    kiln_model_free(model);

    /* The same weights in the diffusers layout must give the same numbers. */
    char dir[1024], cmd[4096];
    snprintf(dir, sizeof dir, "%s/golden-diffusers", KILN_BUILD_DIR);
    snprintf(cmd, sizeof cmd, "rm -rf %s && python3 %s/diffusers/materialize_diffusers_weights.py --out %s >/dev/null",
             dir, test_fixture("tiny-sd15"), dir);
    model = NULL;
    if (system(cmd) != 0 || kiln_model_load(dir, NULL, &model)) {
        fprintf(stderr, "diffusers layout: %s\n", kiln_last_error());
        return 1;
    }
    printf("diffusers folder:\n");
    RUN(text_encoder);
    RUN(unet);
    RUN(vae);
    kiln_model_free(model);
    kiln_backend_destroy(cpu);
    json_decref(manifest);
    return test_summary();
}
