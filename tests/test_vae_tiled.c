/* test_vae_tiled.c — images above 1024x1024 are VAE-decoded in overlapping, cross-faded tiles (bounded memory at
 * any size). The tiled decode must cover every pixel, stay finite, and stay close to the whole decode. */
#include <math.h>

#include "core/error.h"
#include "pipeline/txt2img.h"
#include "test.h"

TEST(tiled_matches_whole_decode) {
    kiln_model *m = NULL;
    kiln_ctx *ctx = NULL;
    char vocab[1024];
    snprintf(vocab, sizeof vocab, "%s/data/bpe_simple_vocab_16e6.txt.gz", KILN_SOURCE_DIR);
    kiln_ctx_options o = {.backend = "cpu", .vocab_path = vocab};
    CHECK(kiln_model_load(test_fixture("tiny-sd15/model.safetensors"), NULL, &m) == 0);
    CHECK(m && kiln_ctx_create(m, &o, &ctx) == 0);
    if (!ctx) return;
    const int h = 136, w = 136, n = 4 * h * w, H = 8 * h, W = 8 * w; /* 1088 x 1088: above the threshold */
    float *lat = malloc(sizeof(float) * n), *tiled = malloc(sizeof(float) * 3 * H * W),
          *whole = malloc(sizeof(float) * 3 * H * W);
    /* a smooth latent, like real ones */
    for (int c = 0; c < 4; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) lat[(c * h + y) * w + x] = 3.0f * sinf(0.07f * x + c) * cosf(0.05f * y - c);
    CHECK(kiln_decode_latents(ctx, lat, 1, h, w, tiled, NULL) == 0);
    kiln_cached_plan *cp = NULL;
    CHECK(kiln_ctx_plan(ctx, KILN_NET_VAE_DECODER, 1, h, w, 0, &cp) == 0);
    const char *names[2] = {"latent", "image"};
    void *bufs[2] = {lat, whole};
    CHECK(cp && kiln_ctx_run(ctx, cp, 2, names, bufs) == 0);
    int finite = 1;
    for (int i = 0; i < 3 * H * W; i++) finite &= isfinite(tiled[i]);
    double rel = test_rel_l2(tiled, whole, (size_t)3 * H * W);
    printf("  1088x1088 tiled vs whole decode: relative L2 %.3g\n", rel);
    CHECK(finite);
    CHECK(rel < 0.1);
    free(lat), free(tiled), free(whole);
    kiln_ctx_free(ctx);
    kiln_model_free(m);
}

int main(void) {
    RUN(tiled_matches_whole_decode);
    return test_summary();
}
