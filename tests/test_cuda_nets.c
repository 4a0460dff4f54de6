/* test_cuda_nets.c — CLIP, U-Net and VAE on the CUDA backend against the tiny-sd15 fixtures
 * (A1111/diffusers/transformers in fp32). The CUDA backend computes in fp16 with fp32
 * accumulation, so the check is the relative L2 error against the fixture, below TOL_NET = 5e-3
 * (fp16 storage rounds each value by up to 2^-11 relative; a few dozen ops in a row stay well under
 * 5e-3), plus no NaN. Then all of it again on a bf16 backend, below TOL_NET_BF16 = 4e-2: bf16 rounds
 * each stored value 8x more coarsely than fp16 (8 mantissa bits to 11; unit roundoff 2^-9 vs 2^-12)
 * with the same fp32 accumulation, so the error of the same chain of ops is ~8x fp16's (measured
 * fp16: 6e-4 .. 2.1e-3, i.e. ~5e-3 .. 1.7e-2 expected), and the limit is 8x the fp16 one. Exits 77
 * (skipped) without a usable GPU or without the fixtures. */
#include "fixture_nets.h"

#define TOL_NET 5e-3
#define TOL_NET_BF16 4e-2

static kiln_model *model;
static kiln_backend *gpu;
static int bf16;  /* gpu computes in bf16 */

/* Relative L2 error below the fp16 or bf16 limit (the manifest's atol is for fp32 backends). */
static void check_rel_l2(const char *what, const float *got, const float *want, size_t n, double atol) {
    (void)atol;
    double err = test_rel_l2(got, want, n), mx = test_max_abs_diff(got, want, n), tol = bf16 ? TOL_NET_BF16 : TOL_NET;
    printf("  %s %-28s rel L2 %.3g, max abs diff %.3g\n", bf16 ? "bf16" : "fp16", what, err, mx);
    CHECK_MSG(err < tol, "%s%s: relative L2 %.3g >= %.3g", bf16 ? "bf16 " : "", what, err, tol);
}

TEST(text_encoder) { fixture_nets_text_encoder(gpu, model, NULL, check_rel_l2); }
TEST(unet) { fixture_nets_unet(gpu, model, NULL, check_rel_l2); }
TEST(vae_decode) { fixture_nets_vae_decode(gpu, model, NULL, check_rel_l2); }

int main(void) {
    if (kiln_backend_cuda_create_ex(0, 0, &gpu) != 0) {
        printf("skipped: %s\n", kiln_last_error());
        return 77;
    }
    if (kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &model) != 0) {
        printf("skipped: fixtures not found (%s)\n", kiln_last_error());
        kiln_backend_destroy(gpu);
        return 77;
    }
    RUN(text_encoder);
    RUN(unet);
    RUN(vae_decode);
    kiln_backend_destroy(gpu);
    gpu = NULL;
    bf16 = 1;
    if (kiln_backend_cuda_create_ex(0, 1, &gpu) == 0) {
        RUN(text_encoder);
        RUN(unet);
        RUN(vae_decode);
        kiln_backend_destroy(gpu);
    } else {
        CHECK_MSG(0, "bf16 cuda backend: %s", kiln_last_error());
    }
    kiln_model_free(model);
    return test_summary();
}
