/* test_ckpt.c — PyTorch zip checkpoints: hand-built pickles and zips in the shapes torch.save writes
 * (no torch here), read back through kiln_ckpt_*; refusal of foreign globals; corrupt inputs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "io/atomic_file.h"
#include "io/ckpt.h"
#include "io/safetensors.h"
#include "test.h"
#include "torch_writer.h"

/* ---- an LDM-style checkpoint ---- */
static float s1[4] = {10, 11, 12, 13};
static float s2[6] = {0, 1, 2, 3, 4, 5};
static uint16_t s0[6] = {0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600}; /* 1..6 in fp16 */
static uint16_t s3[4] = {0x3f80, 0x4000, 0x4040, 0xbf80};                 /* 1, 2, 3, -1 in bf16 */
static int64_t s4[4] = {0, 1, 2, -7};
static double s5[2] = {0.5, -1e10};
static float s6[1] = {42};

static buf ldm_pickle(const char *extra_global_mod, const char *extra_global_name) {
    buf b = {0};
    p_begin(&b);
    p_op(&b, '}');
    p_memo(&b);
    p_op(&b, '(');
    /* "epoch": 6, "global_step": numpy.int64 scalar, like Lightning checkpoints */
    p_str(&b, "epoch");
    p_int(&b, 6);
    p_str(&b, "global_step");
    p_global(&b, "numpy.core.multiarray", "scalar");
    p_global(&b, "numpy", "dtype");
    p_str(&b, "i8");
    put8(&b, 0x89);
    put8(&b, 0x88);
    put8(&b, 0x87); /* TUPLE3 */
    p_op(&b, 'R');
    p_memo(&b);
    p_op(&b, '(');
    p_int(&b, 3);
    p_str(&b, "<");
    p_op(&b, 'N');
    p_op(&b, 'N');
    p_op(&b, 'N');
    p_int(&b, -1);
    p_int(&b, -1);
    p_int(&b, 0);
    p_op(&b, 't');
    p_op(&b, 'b'); /* BUILD the dtype's state */
    p_global(&b, "_codecs", "encode");
    p_str(&b, "\xc2\x80\x1a\x06");
    p_str(&b, "latin1");
    put8(&b, 0x86);
    p_op(&b, 'R');
    put8(&b, 0x86);
    p_op(&b, 'R');
    p_memo(&b);
    p_str(&b, "callbacks");
    p_op(&b, '}');
    p_str(&b, "ModelCheckpoint");
    p_global(&b, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint");
    p_op(&b, ')');
    put8(&b, 0x81); /* NEWOBJ */
    p_op(&b, '}');
    p_str(&b, "best_model_score");
    p_op(&b, 'N');
    p_op(&b, 's');
    p_op(&b, 'b');
    p_op(&b, 's');
    if (extra_global_mod) {
        p_str(&b, "evil");
        p_global(&b, extra_global_mod, extra_global_name);
        p_str(&b, "echo pwned");
        put8(&b, 0x85);
        p_op(&b, 'R');
    }
    /* "ema": a tensor outside state_dict is not reported */
    p_str(&b, "ema");
    long long one[1] = {1}, d1[1] = {1};
    p_tensor(&b, "FloatStorage", "1", 4, 0, one, d1, 1);
    p_str(&b, "state_dict");
    p_empty_ordered_dict(&b);
    p_op(&b, '(');
    long long sh23[2] = {2, 3}, st23[2] = {3, 1}, sh3[1] = {3}, sh2[1] = {2}, sh32[2] = {3, 2}, st32[2] = {1, 3},
              sh4[1] = {4}, sh14[2] = {1, 4}, st14[2] = {4, 1};
    p_str(&b, "model.diffusion_model.w16");
    p_tensor(&b, "HalfStorage", "0", 6, 0, sh23, st23, 2);
    p_str(&b, "model.diffusion_model.b32");
    p_tensor(&b, "FloatStorage", "1", 4, 0, sh3, d1, 1);
    p_str(&b, "model.view");
    p_tensor(&b, "FloatStorage", "1", 4, 1, sh2, d1, 1); /* a view sharing storage "1" */
    p_str(&b, "model.t");
    p_tensor(&b, "FloatStorage", "2", 6, 0, sh32, st32, 2); /* transposed: non-contiguous */
    p_str(&b, "model.bf");
    p_tensor(&b, "BFloat16Storage", "3", 4, 0, sh4, d1, 1);
    p_str(&b, "cond_stage_model.position_ids");
    p_tensor(&b, "LongStorage", "4", 4, 0, sh14, st14, 2);
    p_str(&b, "model.dbl");
    p_tensor(&b, "DoubleStorage", "5", 2, 0, sh2, d1, 1);
    p_str(&b, "model.param"); /* torch.nn.Parameter, 0-dim */
    p_global(&b, "torch._utils", "_rebuild_parameter");
    p_tensor(&b, "FloatStorage", "6", 1, 0, NULL, NULL, 0);
    put8(&b, 0x88);
    p_empty_ordered_dict(&b);
    put8(&b, 0x87);
    p_op(&b, 'R');
    p_memo(&b);
    p_op(&b, 'u');                  /* SETITEMS into the OrderedDict */
    p_op(&b, '}');                  /* its state {'_metadata': {}} via BUILD, as torch writes it */
    p_memo(&b);
    p_str(&b, "_metadata");
    p_op(&b, '}');
    p_op(&b, 's');
    p_op(&b, 'b');
    p_op(&b, 'u'); /* SETITEMS into the top dict */
    p_op(&b, '.');
    return b;
}

/* The archive torch.save would write for ldm_pickle(): data.pkl, data/0..6, byteorder, version. */
static const char *byteorder = "little";
static buf ldm_zip(const buf *pkl, const char *prefix, int zip64, int deflate_pickle) {
    static char names[10][64];
    const char *leaf[] = {"data.pkl", "byteorder", "data/0", "data/1", "data/2", "data/3", "data/4",
                          "data/5", "data/6", "version"};
    for (int i = 0; i < 10; i++) snprintf(names[i], sizeof names[i], "%s/%s", prefix, leaf[i]);
    zmember m[10] = {
        {names[0], pkl->p, pkl->n, deflate_pickle},
        {names[1], byteorder, strlen(byteorder), 0},
        {names[2], s0, sizeof s0, 0},
        {names[3], s1, sizeof s1, 0},
        {names[4], s2, sizeof s2, 0},
        {names[5], s3, sizeof s3, 1}, /* deflated storage */
        {names[6], s4, sizeof s4, 0},
        {names[7], s5, sizeof s5, 0},
        {names[8], s6, sizeof s6, 0},
        {names[9], "3\n", 2, 0},
    };
    return make_zip(m, 10, zip64);
}

static void check_ldm(const kiln_ckpt_file *f, const buf *zip, int pickle_deflated) {
    (void)pickle_deflated;
    CHECK(f->n_tensors == 8);
    const char *order[] = {"model.diffusion_model.w16", "model.diffusion_model.b32", "model.view", "model.t",
                           "model.bf", "cond_stage_model.position_ids", "model.dbl", "model.param"};
    for (int i = 0; i < 8 && i < f->n_tensors; i++) CHECK(strcmp(f->tensors[i].name, order[i]) == 0);
    CHECK(kiln_ckpt_find(f, "ema") == NULL);
    const kiln_st_tensor *t = kiln_ckpt_find(f, "model.diffusion_model.w16");
    CHECK(t && t->dtype == KILN_F16 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->nbytes == 12);
    if (t) {
        CHECK(memcmp(t->data, s0, 12) == 0);
        /* stored and contiguous: no copy, the bytes inside the archive, 64-byte aligned as torch writes */
        CHECK((const uint8_t *)t->data >= zip->p && (const uint8_t *)t->data < zip->p + zip->n);
        CHECK(((const uint8_t *)t->data - zip->p) % 64 == 0);
        float v[6];
        kiln_st_to_f32(t, v);
        CHECK(v[0] == 1 && v[5] == 6);
    }
    const kiln_st_tensor *b32 = kiln_ckpt_find(f, "model.diffusion_model.b32");
    const kiln_st_tensor *view = kiln_ckpt_find(f, "model.view");
    CHECK(b32 && b32->dtype == KILN_F32 && b32->nbytes == 12 && memcmp(b32->data, s1, 12) == 0);
    CHECK(view && view->nbytes == 8 && b32 && (const float *)view->data == (const float *)b32->data + 1);
    const kiln_st_tensor *tt = kiln_ckpt_find(f, "model.t");
    CHECK(tt && tt->ndim == 2 && tt->shape[0] == 3 && tt->shape[1] == 2);
    if (tt) {
        const float want[6] = {0, 3, 1, 4, 2, 5};
        CHECK(memcmp(tt->data, want, sizeof want) == 0);
    }
    const kiln_st_tensor *bf = kiln_ckpt_find(f, "model.bf");
    CHECK(bf && bf->dtype == KILN_BF16 && bf->nbytes == 8 && memcmp(bf->data, s3, 8) == 0);
    const kiln_st_tensor *pos = kiln_ckpt_find(f, "cond_stage_model.position_ids");
    CHECK(pos && pos->dtype == KILN_I64 && pos->shape[0] == 1 && pos->shape[1] == 4 &&
          memcmp(pos->data, s4, 32) == 0);
    const kiln_st_tensor *dbl = kiln_ckpt_find(f, "model.dbl");
    CHECK(dbl && dbl->dtype == KILN_F32 && dbl->nbytes == 8);
    if (dbl) {
        float d[2];
        memcpy(d, dbl->data, 8);
        CHECK(d[0] == 0.5f && d[1] == -1e10f);
    }
    const kiln_st_tensor *par = kiln_ckpt_find(f, "model.param");
    CHECK(par && par->ndim == 0 && par->nbytes == 4 && par->dtype == KILN_F32 && *(const float *)par->data == 42);
}

TEST(ldm_checkpoint) {
    buf pkl = ldm_pickle(NULL, NULL);
    const char *dump = getenv("KILN_CKPT_DUMP"); /* for checking the bytes with Python's pickletools */
    for (int variant = 0; variant < 4; variant++) {
        int zip64 = variant & 1, defl = variant >> 1;
        buf zip = ldm_zip(&pkl, variant ? "v1-5-pruned-emaonly" : "archive", zip64, defl);
        if (dump && (variant == 0 || variant == 3)) {
            char dpath[512];
            snprintf(dpath, sizeof dpath, "%s%s", dump, variant ? ".z64" : "");
            kiln_atomic_write(dpath, zip.p, zip.n, 0);
        }
        CHECK(kiln_ckpt_sniff(zip.p, zip.n) == 1);
        kiln_ckpt_file *f = NULL;
        int rc = kiln_ckpt_open_memory(zip.p, zip.n, "ldm.ckpt", &f);
        CHECK_MSG(rc == 0, "variant %d: %s", variant, kiln_last_error());
        if (f) check_ldm(f, &zip, defl);
        kiln_ckpt_close(f);
        free(zip.p);
    }
    /* through a file (mmap) */
    char path[] = "/tmp/kiln_test_ckpt_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    buf zip = ldm_zip(&pkl, "archive", 0, 0);
    CHECK(kiln_atomic_write(path, zip.p, zip.n, 0) == 0);
    kiln_ckpt_file *f = NULL;
    CHECK(kiln_ckpt_open(path, &f) == 0);
    CHECK(f && f->n_tensors == 8 && f->map_size == zip.n);
    if (f) {
        const kiln_st_tensor *t = kiln_ckpt_find(f, "model.t");
        const float want[6] = {0, 3, 1, 4, 2, 5};
        CHECK(t && memcmp(t->data, want, sizeof want) == 0);
    }
    kiln_ckpt_close(f);
    unlink(path);
    CHECK(kiln_ckpt_open("/nonexistent/model.ckpt", &f) == KILN_EIO);
    CHECK(strstr(kiln_last_error(), "/nonexistent/model.ckpt") != NULL);
    free(zip.p);
    free(pkl.p);
}

/* A textual-inversion .pt: no state_dict, nested dicts flattened, non-tensors skipped. */
TEST(embedding_pt) {
    buf b = {0};
    p_begin(&b);
    p_op(&b, '}');
    p_memo(&b);
    p_op(&b, '(');
    p_str(&b, "string_to_token");
    p_op(&b, '}');
    p_str(&b, "*");
    p_int(&b, 265);
    p_op(&b, 's');
    p_str(&b, "string_to_param");
    p_op(&b, '}');
    p_str(&b, "*");
    /* a Parameter as torch 2 pickles tensor subclasses: _rebuild_from_type_v2(func, type, args, state) */
    long long sh[2] = {1, 4}, st[2] = {4, 1};
    p_global(&b, "torch._tensor", "_rebuild_from_type_v2");
    p_op(&b, '(');
    p_global(&b, "torch._utils", "_rebuild_tensor_v2");
    p_global(&b, "torch.nn.parameter", "Parameter");
    p_tensor_args(&b, "FloatStorage", "0", 4, 0, sh, st, 2);
    p_op(&b, '}');
    p_op(&b, 't');
    p_op(&b, 'R');
    p_op(&b, 's');
    p_str(&b, "name");
    p_str(&b, "tiny_emb");
    p_str(&b, "step");
    p_int(&b, 100000);
    p_op(&b, 'u');
    p_op(&b, '.');
    zmember m[2] = {{"tiny_emb/data.pkl", b.p, b.n, 0}, {"tiny_emb/data/0", s1, sizeof s1, 0}};
    buf zip = make_zip(m, 2, 0);
    kiln_ckpt_file *f = NULL;
    CHECK(kiln_ckpt_open_memory(zip.p, zip.n, "tiny_emb.pt", &f) == 0);
    CHECK(f && f->n_tensors == 1);
    if (f && f->n_tensors == 1) {
        CHECK(strcmp(f->tensors[0].name, "string_to_param.*") == 0);
        CHECK(f->tensors[0].shape[0] == 1 && f->tensors[0].shape[1] == 4 && memcmp(f->tensors[0].data, s1, 16) == 0);
    }
    kiln_ckpt_close(f);
    free(zip.p);
    free(b.p);
}

static int open_with_pickle(const buf *pkl, kiln_ckpt_file **f) {
    buf zip = ldm_zip(pkl, "archive", 0, 0);
    int rc = kiln_ckpt_open_memory(zip.p, zip.n, "evil.ckpt", f);
    free(zip.p);
    return rc;
}

TEST(refuses_foreign_globals) {
    const char *bad[][2] = {{"os", "system"}, {"builtins", "eval"}, {"posix", "system"}, {"torch", "load"},
                            {"subprocess", "Popen"}, {"collections", "namedtuple"}};
    for (int i = 0; i < 6; i++) {
        buf pkl = ldm_pickle(bad[i][0], bad[i][1]);
        kiln_ckpt_file *f = NULL;
        int rc = open_with_pickle(&pkl, &f);
        CHECK(rc == KILN_EUNSUPPORTED && f == NULL);
        char want[64];
        snprintf(want, sizeof want, "'%s.%s'", bad[i][0], bad[i][1]);
        CHECK_MSG(strstr(kiln_last_error(), want) != NULL, "%s", kiln_last_error());
        free(pkl.p);
    }
    /* protocol 4 STACK_GLOBAL and the INST/OBJ opcodes are refused too */
    buf b = {0};
    put8(&b, 0x80);
    put8(&b, 4);
    put8(&b, 0x8c);
    put8(&b, 8);
    put(&b, "builtins", 8);
    put8(&b, 0x8c);
    put8(&b, 4);
    put(&b, "exec", 4);
    put8(&b, 0x93);
    put8(&b, '.');
    kiln_ckpt_file *f = NULL;
    CHECK(open_with_pickle(&b, &f) == KILN_EUNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "'builtins.exec'") != NULL);
    b.n = 0;
    put(&b, "(ios\nsystem\n.", 13); /* INST */
    CHECK(open_with_pickle(&b, &f) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "opcode not allowed") != NULL);
    free(b.p);
}

TEST(bad_archives) {
    kiln_ckpt_file *f = NULL;
    /* legacy torch format (a bare pickle stream) */
    CHECK(kiln_ckpt_open_memory("\x80\x02\x8a\x0a", 4, "old.ckpt", &f) == KILN_EUNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "legacy") != NULL);
    CHECK(kiln_ckpt_open_memory("hello world, not a zip at all", 29, "x.ckpt", &f) == KILN_EFORMAT);
    /* a zip without data.pkl */
    zmember m[1] = {{"readme.txt", "hi", 2, 0}};
    buf zip = make_zip(m, 1, 0);
    CHECK(kiln_ckpt_open_memory(zip.p, zip.n, "x.zip", &f) == KILN_EFORMAT);
    CHECK(strstr(kiln_last_error(), "data.pkl") != NULL);
    free(zip.p);
    /* a storage member missing, or too short for the tensor */
    buf pkl = ldm_pickle(NULL, NULL);
    zip = ldm_zip(&pkl, "archive", 0, 0);
    size_t at = 0;
    for (size_t i = 0; i + 14 <= zip.n; i++)
        if (memcmp(zip.p + i, "archive/data/2", 14) == 0) at = i; /* the last one: central directory */
    zip.p[at + 13] = '9';
    CHECK(kiln_ckpt_open_memory(zip.p, zip.n, "x.ckpt", &f) == KILN_EFORMAT);
    CHECK_MSG(strstr(kiln_last_error(), "archive/data/2") != NULL, "%s", kiln_last_error());
    free(zip.p);
    /* big-endian archives are refused */
    byteorder = "big";
    zip = ldm_zip(&pkl, "archive", 0, 0);
    byteorder = "little";
    CHECK(kiln_ckpt_open_memory(zip.p, zip.n, "x.ckpt", &f) == KILN_EUNSUPPORTED);
    CHECK(strstr(kiln_last_error(), "big-endian") != NULL);
    free(zip.p);
    /* a tensor whose view runs past its storage */
    buf b = {0};
    p_begin(&b);
    p_op(&b, '}');
    p_str(&b, "w");
    long long sh[1] = {4}, st[1] = {1};
    p_tensor(&b, "FloatStorage", "1", 4, 1, sh, st, 1); /* offset 1 + 4 elements > 4 */
    p_op(&b, 's');
    p_op(&b, '.');
    zip = ldm_zip(&b, "archive", 0, 0);
    CHECK(kiln_ckpt_open_memory(zip.p, zip.n, "x.ckpt", &f) == KILN_EFORMAT);
    CHECK_MSG(strstr(kiln_last_error(), "tensor w") != NULL, "%s", kiln_last_error());
    free(zip.p);
    free(b.p);
    free(pkl.p);
}

/* Every truncation and many single-byte corruptions: refused or read, never a crash (run under ASan
 * by the sanitizer build; fuzz/fuzz_ckpt.c goes further). */
TEST(corrupt_inputs) {
    buf pkl = ldm_pickle(NULL, NULL);
    for (int defl = 0; defl < 2; defl++) {
        buf zip = ldm_zip(&pkl, "archive", defl, defl);
        uint8_t *copy = malloc(zip.n);
        for (size_t cut = 0; cut < zip.n; cut += (cut < 200 ? 1 : 13)) {
            kiln_ckpt_file *f = NULL;
            if (kiln_ckpt_open_memory(zip.p, cut, "cut.ckpt", &f) == 0) kiln_ckpt_close(f);
        }
        for (size_t i = 0; i < zip.n; i += 3) {
            memcpy(copy, zip.p, zip.n);
            copy[i] ^= (uint8_t)(0x41 + i % 7);
            kiln_ckpt_file *f = NULL;
            if (kiln_ckpt_open_memory(copy, zip.n, "flip.ckpt", &f) == 0) {
                for (int t = 0; t < f->n_tensors; t++) { /* every byte promised must be readable */
                    volatile uint8_t sum = 0;
                    for (size_t k = 0; k < f->tensors[t].nbytes; k++) sum += ((const uint8_t *)f->tensors[t].data)[k];
                    (void)sum;
                }
                kiln_ckpt_close(f);
            }
        }
        free(copy);
        free(zip.p);
    }
    free(pkl.p);
    CHECK(1);
}

int main(void) {
    RUN(ldm_checkpoint);
    RUN(embedding_pt);
    RUN(refuses_foreign_globals);
    RUN(bad_archives);
    RUN(corrupt_inputs);
    return test_summary();
}
