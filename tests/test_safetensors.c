/* test_safetensors.c — the safetensors reader/writer: round trip, the fixture model, and every kind of
 * corrupt file refused with a message naming the file and tensor. */
#include <stdint.h>
#include <unistd.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "test.h"

/* Builds an in-memory file from a header string and n data bytes. */
static size_t make_file(uint8_t *buf, const char *header, size_t data_bytes) {
    size_t h = strlen(header);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, 0, data_bytes);
    return 8 + h + data_bytes;
}

static int open_bad(const char *header, size_t data_bytes, const char *expect_in_msg) {
    static uint8_t buf[4096];
    size_t n = make_file(buf, header, data_bytes);
    kiln_st_file *f = NULL;
    int rc = kiln_st_open_memory(buf, n, "bad.safetensors", &f);
    if (rc == 0) {
        kiln_st_close(f);
        fprintf(stderr, "accepted: %s\n", header);
        return 0;
    }
    const char *msg = kiln_last_error();
    if (!strstr(msg, "bad.safetensors") || !strstr(msg, expect_in_msg)) {
        fprintf(stderr, "message '%s' lacks '%s'\n", msg, expect_in_msg);
        return 0;
    }
    return 1;
}

TEST(refuses_corrupt_files) {
    CHECK(open_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "'a'"));   /* truncated data */
    CHECK(open_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "need 8")); /* size mismatch */
    CHECK(open_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "Q4"));     /* unknown dtype */
    CHECK(open_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   12, "overlap"));
    CHECK(open_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-4,4]}}", 8, "'a'"));  /* negative */
    CHECK(open_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape"));
    CHECK(open_bad("{\"a\": [1,2]", 8, "JSON"));
    CHECK(open_bad("[1,2]", 8, "object"));
    /* header length past the end of the file */
    uint8_t buf[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open_memory(buf, 10, "short.safetensors", &f) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "short.safetensors") && strstr(kiln_last_error(), "past the end"));
    CHECK(kiln_st_open_memory(buf, 5, "tiny.safetensors", &f) == KILN_EFORMAT);
    CHECK(kiln_st_open("/nonexistent/x.safetensors", &f) == KILN_EIO);
    CHECK(strstr(kiln_last_error(), "/nonexistent/x.safetensors") != NULL);
}

TEST(write_read_round_trip) {
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, 65504};
    uint16_t h[3] = {kiln_f32_to_f16(1.5f), kiln_f32_to_f16(-0.25f), kiln_f32_to_f16(1e-7f)};
    int64_t sa[2] = {2, 3}, sh[1] = {3};
    kiln_st_write_tensor ts[2] = {{"a", KILN_F32, 2, sa, a}, {"h", KILN_F16, 1, sh, h}};
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    char path[256];
    snprintf(path, sizeof path, "%s/test_rt.safetensors", KILN_BUILD_DIR);
    CHECK(kiln_st_write(path, ts, 2, mk, mv, 1) == 0);
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(path, &f) == 0);
    if (!f) return;
    CHECK(f->n_tensors == 2);
    CHECK(kiln_st_meta(f, "format") && !strcmp(kiln_st_meta(f, "format"), "pt"));
    const kiln_st_tensor *ta = kiln_st_find(f, "a"), *th = kiln_st_find(f, "h");
    CHECK(ta && ta->ndim == 2 && ta->shape[1] == 3 && !memcmp(ta->data, a, sizeof a));
    float hf[3];
    if (th) kiln_st_to_f32(th, hf);
    CHECK(th && hf[0] == 1.5f && hf[1] == -0.25f);
    CHECK(hf[2] == 2.0f / 16777216.0f); /* 1e-7 rounds to the subnormal half 2 x 2^-24 */
    kiln_st_close(f);
    unlink(path);
}

TEST(half_conversions) {
    CHECK(kiln_f16_to_f32(0x3c00) == 1.0f);
    CHECK(kiln_f16_to_f32(0xc000) == -2.0f);
    CHECK(kiln_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(kiln_f32_to_f16(65520.0f) == 0x7c00); /* rounds to inf */
    CHECK(kiln_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00); /* tie to even */
    CHECK(kiln_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);
    for (uint32_t h = 0; h < 0x7c00; h++) CHECK(kiln_f32_to_f16(kiln_f16_to_f32((uint16_t)h)) == h);
    CHECK(kiln_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(kiln_f32_to_bf16(1.0f) == 0x3f80);
}

TEST(reads_fixture_model) {
    kiln_st_file *f = NULL;
    CHECK(kiln_st_open(test_fixture("tiny-sd15/model.safetensors"), &f) == 0);
    if (!f) return;
    CHECK(f->n_tensors == 983);
    const kiln_st_tensor *t = kiln_st_find(f, "cond_stage_model.transformer.text_model.embeddings.position_ids");
    CHECK(t && t->dtype == KILN_I64 && t->shape[1] == 77);
    t = kiln_st_find(f, "model.diffusion_model.input_blocks.0.0.weight");
    CHECK(t && t->dtype == KILN_F16 && t->ndim == 4 && t->shape[0] == 32 && t->shape[1] == 4);
    kiln_st_close(f);
}

int main(void) {
    RUN(refuses_corrupt_files);
    RUN(write_read_round_trip);
    RUN(half_conversions);
    RUN(reads_fixture_model);
    return test_summary();
}
