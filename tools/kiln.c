/* kiln.c — the command-line interface: info, tokenize (and, as they land, generate, build, bench, serve).
 *
 * Contract (DESIGN.md): exit 0 on success, 1 on a user error with a one-line message on stderr. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "io/image.h"
#include "io/infotext.h"
#include "pipeline/bench.h"
#include "kiln.h"

static int fail(const char *what) {
    fprintf(stderr, "kiln: %s%s%s\n", what, *kiln_last_error() ? ": " : "", kiln_last_error());
    return 1;
}

/* The CLI's log sink: warnings always, information with -v/--verbose. */
static int verbose;
static void log_to_stderr(void *user, kiln_log_level level, const char *message) {
    (void)user;
    if (level <= KILN_LOG_WARN || verbose)
        fprintf(stderr, "kiln: %s%s\n", level == KILN_LOG_ERROR ? "error: " : level == KILN_LOG_WARN ? "warning: " : "",
                message);
}

static int usage(FILE *f) {
    fprintf(f, "usage: kiln <command> [options]\n"
               "commands:\n"
               "  info MODEL                describe a checkpoint (.safetensors) or diffusers folder\n"
               "  tokenize [--vocab FILE | -m MODEL] PROMPT\n"
               "                            print the CLIP token ids (BOS/EOS included) as a JSON array\n"
               "  generate -m MODEL -p PROMPT [options]   txt2img (kiln generate --help lists the options)\n"
               "  bench -m MODEL [--backend cpu|cuda] [--precision fp16|bf16]\n"
               "        [-W 512 -H 512 --batch-size 1 --steps 20 --iters 20 --profile]\n"
               "                            time the U-Net step and whole txt2img runs\n"
               "  pnginfo IMAGE             print an image's A1111 parameters as JSON\n"
               "  mkrandom [--arch sd15|tiny-sd15] [--seed N] -o FILE.safetensors\n"
               "                            write a checkpoint with random weights (for benchmarks)\n"
               "  version                   print the version\n");
    return f == stderr ? 1 : 0;
}

static int cmd_info(int argc, char **argv) {
    if (argc != 1) {
        fprintf(stderr, "kiln info: expected one MODEL argument\n");
        return 1;
    }
    kiln_model *m = NULL;
    if (kiln_model_load(argv[0], NULL, &m)) return fail("info");
    size_t need = kiln_model_describe(m, NULL, 0) + 1;
    char *buf = malloc(need);
    kiln_model_describe(m, buf, need);
    fputs(buf, stdout);
    free(buf);
    kiln_model_free(m);
    return 0;
}

static int cmd_tokenize(int argc, char **argv) {
    const char *vocab = NULL, *model_path = NULL, *prompt = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--vocab") && i + 1 < argc) {
            vocab = argv[++i];
        } else if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) {
            model_path = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0' && !prompt) {
            fprintf(stderr, "kiln tokenize: unknown option '%s'\n", argv[i]);
            return 1;
        } else if (!prompt) {
            prompt = argv[i];
        } else {
            fprintf(stderr, "kiln tokenize: more than one PROMPT given (quote the prompt)\n");
            return 1;
        }
    }
    if (!prompt) {
        fprintf(stderr, "kiln tokenize: missing PROMPT\n");
        return 1;
    }
    kiln_tokenizer *tok = NULL;
    if (model_path) {
        kiln_model *m = NULL;
        if (kiln_model_load(model_path, NULL, &m)) return fail("tokenize");
        int rc = kiln_model_tokenizer(m, &tok);
        kiln_model_free(m);
        if (rc) return fail("tokenize");
    } else if (kiln_tokenizer_load(vocab, &tok)) {
        return fail("tokenize");
    }
    size_t n = 0;
    if (kiln_tokenize(tok, prompt, NULL, 0, &n)) {
        kiln_tokenizer_free(tok);
        return fail("tokenize");
    }
    int32_t *ids = malloc(sizeof(int32_t) * (n + 1));
    kiln_tokenize(tok, prompt, ids, n, &n);
    printf("[%d", KILN_TOKEN_BOS);
    for (size_t i = 0; i < n; i++) printf(", %d", ids[i]);
    printf(", %d]\n", KILN_TOKEN_EOS);
    free(ids);
    kiln_tokenizer_free(tok);
    return 0;
}

static int cmd_mkrandom(int argc, char **argv) {
    const char *arch = "sd15", *out = NULL;
    unsigned long long seed = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc) {
            arch = argv[++i];
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            char *end;
            seed = strtoull(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "kiln mkrandom: --seed wants a non-negative integer, not '%s'\n", argv[i]);
                return 1;
            }
        } else {
            fprintf(stderr, "kiln mkrandom: unknown argument '%s'\n", argv[i]);
            return 1;
        }
    }
    if (!out) {
        fprintf(stderr, "kiln mkrandom: -o FILE.safetensors is required\n");
        return 1;
    }
    if (kiln_write_random_checkpoint(arch, out, seed)) return fail("mkrandom");
    return 0;
}

/* ---- pnginfo: A1111's "PNG Info" tab ---- */
static int cmd_pnginfo(int argc, char **argv) {
    if (argc != 1) {
        fprintf(stderr, "kiln pnginfo: expected one IMAGE argument\n");
        return 1;
    }
    kiln_image img = {0};
    kiln_image_texts texts = {0};
    if (kiln_image_load(argv[0], 3, &img, &texts)) return fail("pnginfo");
    const char *params = kiln_image_texts_get(&texts, "parameters");
    int status = 0;
    if (!params) {
        fprintf(stderr, "kiln pnginfo: %s has no A1111 \"parameters\" text\n", argv[0]);
        status = 1;
    } else {
        kiln_infotext it;
        if (kiln_infotext_parse(params, &it)) {
            status = fail("pnginfo");
        } else {
            json_t *o = json_object();
            json_object_set_new(o, "prompt", json_string(it.prompt));
            json_object_set_new(o, "negative_prompt", json_string(it.negative_prompt));
            for (int i = 0; i < it.n_params; i++) json_object_set_new(o, it.params[i].key, json_string(it.params[i].value));
            char *js = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("%s\n", js);
            free(js);
            json_decref(o);
            kiln_infotext_free(&it);
        }
    }
    kiln_image_texts_free(&texts);
    kiln_image_free(&img);
    return status;
}

/* ---- generate ---- */

static int parse_int(const char *opt, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "kiln generate: %s wants an integer between %lld and %lld, not '%s'\n", opt, lo, hi, v);
        return 0;
    }
    *out = x;
    return 1;
}

static int parse_float(const char *opt, const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
        fprintf(stderr, "kiln generate: %s wants a number, not '%s'\n", opt, v);
        return 0;
    }
    *out = x;
    return 1;
}

static void generate_help(FILE *f) {
    fprintf(f, "usage: kiln generate -m MODEL -p PROMPT [options]\n"
               "  -m, --model FILE|DIR      .safetensors checkpoint or diffusers folder\n"
               "  -p, --prompt TEXT         prompt (A1111 syntax)\n"
               "  -n, --negative TEXT       negative prompt\n"
               "  --seed N                  seed (-1 = random; default -1)\n"
               "  --subseed N, --subseed-strength F   variation seed and strength\n"
               "  --sampler NAME            A1111 sampler name (default \"DPM++ 2M\")\n"
               "  --scheduler NAME          Automatic (default), Karras, Exponential, ...\n"
               "  --steps N                 sampling steps (20)\n"
               "  --cfg-scale F             classifier-free guidance scale (7)\n"
               "  -W, --width N / -H, --height N   image size, multiples of 8 (512)\n"
               "  --batch-size N, --batch-count N  images per batch, batches (1, 1)\n"
               "  --clip-skip N             (1)\n"
               "  --rng gpu|nv|cpu          noise source (gpu = A1111's default, computed as nv)\n"
               "  --eta F, --s-min-uncond F, --ensd N   sampler eta, negative guidance minimum sigma, ENSD\n"
               "  --vae FILE                separate VAE (A1111 \"SD VAE\")\n"
               "  --lora-dir DIR            where <lora:NAME:W> prompt tags find NAME.safetensors\n"
               "  --lora FILE[:W]           apply a LoRA file with weight W (1); repeatable\n"
               "  --embeddings-dir DIR      textual-inversion embeddings, used by name in prompts\n"
               "  --vocab FILE              CLIP vocabulary (default: the model's or the installed one)\n"
               "  --backend cpu|cuda        compute backend (cpu)\n"
               "  --precision fp16|bf16     cuda: 16-bit type of activations and weights (fp16; bf16 trades\n"
               "                            3 mantissa bits for fp32's range, no overflow)\n"
               "  --threads N               CPU threads (all)\n"
               "  -o, --output FILE         .png/.jpg/.webp (default kiln-SEED.png); several images get -N suffixes\n"
               "  -q, --quiet               no progress bar\n"
               "img2img / inpainting / hires fix (A1111 API names):\n"
               "  --init-image FILE         img2img from this image (size: -W/-H, default the image's down to a multiple of 8)\n"
               "  --mask FILE               inpainting mask, same size as the init image (white = repaint)\n"
               "  --denoising-strength F    0..1 (0.75); also the hires pass's\n"
               "  --resize-mode N           0 just resize, 1 crop and resize, 2 resize and fill,\n"
               "                            3 just resize (latent upscale) (0)\n"
               "  --mask-blur N             (4)\n"
               "  --inpainting-fill N       masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing (1)\n"
               "  --inpaint-full-res 0|1    inpaint area: 0 whole picture, 1 only masked (0)\n"
               "  --inpaint-full-res-padding N   only masked: padding around the mask in px (32)\n"
               "  --hr-scale F              hires fix: second pass at F times the size (off)\n"
               "  --hr-upscaler NAME        Latent (default), Latent (antialiased), Latent (bicubic),\n"
               "                            Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact),\n"
               "                            None, Lanczos, Nearest\n"
               "  --hr-resize-x N, --hr-resize-y N   hires fix to this size instead of --hr-scale (0 = by aspect)\n"
               "  --hr-steps N              hires steps (0 = --steps)\n");
}

/* Loads --init-image / --mask into p; the init image's size is the default output size. */
static int load_init_images(const char *init, const char *mask, int have_w, int have_h, kiln_gen_params *p,
                            kiln_image *ii, kiln_image *mi) {
    if (mask && !init) {
        fprintf(stderr, "kiln generate: --mask needs --init-image\n");
        return 0;
    }
    if (!init) return 1;
    if (kiln_image_load(init, 3, ii, NULL)) return !fail("generate: --init-image");
    p->init_rgb = ii->pixels;
    p->init_width = ii->width;
    p->init_height = ii->height;
    /* the default size is the image's, down to a multiple of 8 (A1111 sizes step by 8) */
    if (!have_w) p->width = ii->width >= 8 ? ii->width / 8 * 8 : 8;
    if (!have_h) p->height = ii->height >= 8 ? ii->height / 8 * 8 : 8;
    if (mask) {
        if (kiln_image_load(mask, 1, mi, NULL)) return !fail("generate: --mask");
        if (mi->width != ii->width || mi->height != ii->height) {
            fprintf(stderr, "kiln generate: --mask is %dx%d but --init-image is %dx%d; they must match\n", mi->width,
                    mi->height, ii->width, ii->height);
            return 0;
        }
        p->mask_l = mi->pixels;
    }
    return 1;
}

typedef struct progress_state {
    int enabled, total_batches;
    struct timespec start;
} progress_state;

static double seconds_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static int on_progress(void *user, int batch, int step, int total) {
    progress_state *ps = user;
    if (!ps->enabled) return 0;
    if (step == 1 && batch == 0) clock_gettime(CLOCK_MONOTONIC, &ps->start);
    double el = seconds_since(&ps->start);
    int done = batch * total + step, all = total * ps->total_batches;
    double rate = el > 0 ? done / el : 0, eta = rate > 0 ? (all - done) / rate : 0;
    int bar = total > 0 ? 30 * step / total : 0;
    fprintf(stderr, "\r  batch %d/%d step %3d/%d [%.*s%*s] %6.2f it/s ETA %5.1fs", batch + 1, ps->total_batches,
            step, total, bar, "##############################", 30 - bar, "", rate, eta);
    if (step == total) fputc('\n', stderr);
    return 0;
}

/* "out.png" + image 2 of 3 -> "out-2.png"; one image keeps the name. */
static void output_name(const char *base, int index, int count, char *buf, size_t size) {
    if (count == 1) {
        snprintf(buf, size, "%s", base);
        return;
    }
    const char *dot = strrchr(base, '.'), *slash = strrchr(base, '/');
    if (!dot || (slash && dot < slash)) dot = base + strlen(base);
    snprintf(buf, size, "%.*s-%d%s", (int)(dot - base), base, index + 1, dot);
}

/* --precision: fp16 or bf16, and bf16 only with the cuda backend. */
static int check_precision(const char *cmd, const char *backend, const char *precision) {
    if (!precision) return 1;
    if (strcmp(precision, "fp16") && strcmp(precision, "bf16")) {
        fprintf(stderr, "kiln %s: --precision must be fp16 or bf16, not '%s'\n", cmd, precision);
        return 0;
    }
    if (!strcmp(precision, "bf16") && strcmp(backend, "cuda")) {
        fprintf(stderr, "kiln %s: --precision bf16 applies to the cuda backend (--backend cuda)\n", cmd);
        return 0;
    }
    return 1;
}

static int cmd_generate(int argc, char **argv) {
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    const char *model_path = NULL, *output = NULL, *vae = NULL, *vocab = NULL, *backend = "cpu", *precision = NULL;
    const char *lora_dir = NULL, *embeddings_dir = NULL, *loras[16];
    int n_loras = 0;
    long long v;
    double d;
    int threads = 0, quiet = 0, have_prompt = 0, have_w = 0, have_h = 0;
    const char *init_path = NULL, *mask_path = NULL;
    kiln_image init_img = {0}, mask_img = {0};
    char rng_buf[16];
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            generate_help(stdout);
            return 0;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kiln generate: %s %s\n", a, a[0] == '-' ? "needs a value" : "is not an option");
            return 1;
        }
        const char *val = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = val;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) p.prompt = val, have_prompt = 1;
        else if (!strcmp(a, "-n") || !strcmp(a, "--negative") || !strcmp(a, "--negative-prompt")) p.negative_prompt = val;
        else if (!strcmp(a, "--seed")) { if (!parse_int(a, val, -1, 18446744073709551LL, &v)) return 1; p.seed = v; }
        else if (!strcmp(a, "--subseed")) { if (!parse_int(a, val, -1, 18446744073709551LL, &v)) return 1; p.subseed = v; }
        else if (!strcmp(a, "--subseed-strength")) { if (!parse_float(a, val, &d)) return 1; p.subseed_strength = d; }
        else if (!strcmp(a, "--sampler")) p.sampler = val;
        else if (!strcmp(a, "--scheduler")) p.scheduler = val;
        else if (!strcmp(a, "--steps")) { if (!parse_int(a, val, 1, 10000, &v)) return 1; p.steps = (int)v; }
        else if (!strcmp(a, "--cfg-scale")) { if (!parse_float(a, val, &d)) return 1; p.cfg_scale = d; }
        else if (!strcmp(a, "-W") || !strcmp(a, "--width")) { if (!parse_int(a, val, 8, 16384, &v)) return 1; p.width = (int)v, have_w = 1; }
        else if (!strcmp(a, "-H") || !strcmp(a, "--height")) { if (!parse_int(a, val, 8, 16384, &v)) return 1; p.height = (int)v, have_h = 1; }
        else if (!strcmp(a, "--batch-size")) { if (!parse_int(a, val, 1, 64, &v)) return 1; p.batch_size = (int)v; }
        else if (!strcmp(a, "--batch-count")) { if (!parse_int(a, val, 1, 100000, &v)) return 1; p.batch_count = (int)v; }
        else if (!strcmp(a, "--clip-skip")) { if (!parse_int(a, val, 1, 64, &v)) return 1; p.clip_skip = (int)v; }
        else if (!strcmp(a, "--rng")) { snprintf(rng_buf, sizeof rng_buf, "%s", val); p.rng = rng_buf; }
        else if (!strcmp(a, "--eta")) { if (!parse_float(a, val, &d)) return 1; p.eta = d; }
        else if (!strcmp(a, "--s-min-uncond")) { if (!parse_float(a, val, &d)) return 1; p.s_min_uncond = d; }
        else if (!strcmp(a, "--ensd")) { if (!parse_int(a, val, 0, 4294967295LL, &v)) return 1; p.ensd = v; }
        else if (!strcmp(a, "--vae")) vae = val;
        else if (!strcmp(a, "--lora-dir")) lora_dir = val;
        else if (!strcmp(a, "--embeddings-dir")) embeddings_dir = val;
        else if (!strcmp(a, "--lora")) {
            if (n_loras == 16) {
                fprintf(stderr, "kiln generate: at most 16 --lora options\n");
                return 1;
            }
            loras[n_loras++] = val;
        }
        else if (!strcmp(a, "--vocab")) vocab = val;
        else if (!strcmp(a, "--backend")) backend = val;
        else if (!strcmp(a, "--precision")) precision = val;
        else if (!strcmp(a, "--threads")) { if (!parse_int(a, val, 0, 4096, &v)) return 1; threads = (int)v; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) output = val;
        else if (!strcmp(a, "--init-image")) init_path = val;
        else if (!strcmp(a, "--mask")) mask_path = val;
        else if (!strcmp(a, "--denoising-strength")) {
            if (!parse_float(a, val, &d)) return 1;
            if (d < 0 || d > 1) { fprintf(stderr, "kiln generate: --denoising-strength wants a number between 0 and 1, not '%s'\n", val); return 1; }
            p.denoising_strength = d;
        }
        else if (!strcmp(a, "--resize-mode")) { if (!parse_int(a, val, 0, 3, &v)) return 1; p.resize_mode = (int)v; }
        else if (!strcmp(a, "--mask-blur")) { if (!parse_int(a, val, 0, 64, &v)) return 1; p.mask_blur = (int)v; }
        else if (!strcmp(a, "--inpainting-fill")) { if (!parse_int(a, val, 0, 3, &v)) return 1; p.inpainting_fill = (int)v; }
        else if (!strcmp(a, "--hr-scale")) {
            if (!parse_float(a, val, &d)) return 1;
            if (d < 0 || d > 16) { fprintf(stderr, "kiln generate: --hr-scale wants a number between 0 and 16, not '%s'\n", val); return 1; }
            p.hr_scale = d;
        }
        else if (!strcmp(a, "--inpaint-full-res")) { if (!parse_int(a, val, 0, 1, &v)) return 1; p.inpaint_full_res = (int)v; }
        else if (!strcmp(a, "--inpaint-full-res-padding")) { if (!parse_int(a, val, 0, 4096, &v)) return 1; p.inpaint_full_res_padding = (int)v; }
        else if (!strcmp(a, "--hr-upscaler")) p.hr_upscaler = val;
        else if (!strcmp(a, "--hr-resize-x")) { if (!parse_int(a, val, 0, 16384, &v)) return 1; p.hr_resize_x = (int)v; }
        else if (!strcmp(a, "--hr-resize-y")) { if (!parse_int(a, val, 0, 16384, &v)) return 1; p.hr_resize_y = (int)v; }
        else if (!strcmp(a, "--hr-steps")) { if (!parse_int(a, val, 0, 10000, &v)) return 1; p.hr_steps = (int)v; }
        else {
            fprintf(stderr, "kiln generate: unknown option '%s' (see kiln generate --help)\n", a);
            return 1;
        }
    }
    if (!model_path || !have_prompt) {
        fprintf(stderr, "kiln generate: -m MODEL and -p PROMPT are required (see kiln generate --help)\n");
        return 1;
    }
    if (strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        fprintf(stderr, "kiln generate: --backend must be cpu or cuda, not '%s'\n", backend);
        return 1;
    }
    if (!check_precision("generate", backend, precision)) return 1;
    if (!load_init_images(init_path, mask_path, have_w, have_h, &p, &init_img, &mask_img)) {
        kiln_image_free(&init_img);
        kiln_image_free(&mask_img);
        return 1;
    }
    kiln_model_options mo = {.vae_path = vae, .log = log_to_stderr};
    kiln_model *m = NULL;
    if (kiln_model_load(model_path, &mo, &m)) {
        kiln_image_free(&init_img);
        kiln_image_free(&mask_img);
        return fail("generate");
    }
    p.loras = loras;
    p.n_loras = n_loras;
    kiln_ctx_options co = {.backend = backend, .precision = precision, .threads = threads, .vocab_path = vocab,
                           .lora_dir = lora_dir, .embeddings_dir = embeddings_dir, .log = log_to_stderr};
    kiln_ctx *ctx = NULL;
    if (kiln_ctx_create(m, &co, &ctx)) {
        kiln_model_free(m);
        kiln_image_free(&init_img);
        kiln_image_free(&mask_img);
        return fail("generate");
    }
    progress_state ps = {.enabled = !quiet && isatty(2), .total_batches = p.batch_count};
    kiln_gen_image *images = NULL;
    int n = 0, rc = kiln_generate(ctx, &p, on_progress, &ps, &images, &n);
    int status = 0;
    if (rc) {
        status = fail("generate");
    } else {
        for (int i = 0; i < n && status == 0; i++) {
            char name[4096], def[64];
            snprintf(def, sizeof def, "kiln-%lld.png", (long long)images[0].seed);
            output_name(output ? output : def, i, n, name, sizeof name);
            if (kiln_gen_image_save(&images[i], name)) {
                status = fail("generate");
            } else {
                printf("%s\n", name);
            }
        }
    }
    kiln_gen_images_free(images, n);
    kiln_ctx_free(ctx);
    kiln_model_free(m);
    kiln_image_free(&init_img);
    kiln_image_free(&mask_img);
    return status;
}

/* ---- bench ---- */
static int cmd_bench(int argc, char **argv) {
    kiln_bench_opts o = {.backend = "cpu", .width = 512, .height = 512, .batch = 1, .steps = 20, .sampler = "Euler a",
                         .warmup = 5, .iters = 20, .runs = 3, .log = stdout};
    const char *model_path = NULL;
    long long v;
    double d;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--profile")) {
            o.profile = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kiln bench: %s needs a value\n", a);
            return 1;
        }
        const char *val = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = val;
        else if (!strcmp(a, "--backend")) o.backend = val;
        else if (!strcmp(a, "--precision")) o.precision = val;
        else if (!strcmp(a, "--sampler")) o.sampler = val;
        else if (!strcmp(a, "-W") || !strcmp(a, "--width")) { if (!parse_int(a, val, 8, 16384, &v)) return 1; o.width = (int)v; }
        else if (!strcmp(a, "-H") || !strcmp(a, "--height")) { if (!parse_int(a, val, 8, 16384, &v)) return 1; o.height = (int)v; }
        else if (!strcmp(a, "--batch-size")) { if (!parse_int(a, val, 1, 32, &v)) return 1; o.batch = (int)v; }
        else if (!strcmp(a, "--steps")) { if (!parse_int(a, val, 0, 10000, &v)) return 1; o.steps = (int)v; }
        else if (!strcmp(a, "--iters")) { if (!parse_int(a, val, 1, 100000, &v)) return 1; o.iters = (int)v; }
        else if (!strcmp(a, "--warmup")) { if (!parse_int(a, val, 0, 100000, &v)) return 1; o.warmup = (int)v; }
        else if (!strcmp(a, "--runs")) { if (!parse_int(a, val, 1, 1000, &v)) return 1; o.runs = (int)v; }
        else if (!strcmp(a, "--threads")) { if (!parse_int(a, val, 0, 4096, &v)) return 1; o.threads = (int)v; }
        else if (!strcmp(a, "--peak-tflops")) { if (!parse_float(a, val, &d)) return 1; o.peak_tflops = d; }
        else {
            fprintf(stderr, "kiln bench: unknown option '%s'\n", a);
            return 1;
        }
    }
    if (!model_path) {
        fprintf(stderr, "kiln bench: -m MODEL is required (kiln mkrandom makes a benchmark model)\n");
        return 1;
    }
    if (!check_precision("bench", o.backend, o.precision)) return 1;
    kiln_model *m = NULL;
    if (kiln_model_load(model_path, NULL, &m)) return fail("bench");
    kiln_bench_result r;
    int rc = kiln_bench_run(m, &o, &r);
    kiln_model_free(m);
    if (rc) return fail("bench");
    double ms = r.unet_gpu_median_ms > 0 ? r.unet_gpu_median_ms : r.unet_median_ms;
    if (o.profile) {
        printf("GFLOP per op kind:");
        for (int k = 0; k < 32; k++)
            if (r.kind_gflop[k] >= 1.0) printf(" %s %.1f", kiln_bench_op_name(k), r.kind_gflop[k]);
        printf("\n");
    }
    printf("model            %s\n", model_path);
    printf("backend          %s (%s), %dx%d, batch %d (U-Net batch %d with CFG)\n", o.backend, r.precision, o.width,
           o.height, o.batch, 2 * o.batch);
    printf("unet step        %.3f ms median (wall, host copies included), %.3f ms min", r.unet_median_ms, r.unet_min_ms);
    if (r.unet_gpu_median_ms > 0) printf(", %.3f ms GPU replay", r.unet_gpu_median_ms);
    printf("\nunet rate        %.1f it/s, %.1f GFLOP per call, %.2f TFLOP/s", 1e3 / ms, r.unet_gflop,
           r.unet_gflop / ms);
    if (o.peak_tflops > 0) printf(" (%.0f%% of %.0f)", 100.0 * r.unet_gflop / ms / o.peak_tflops, o.peak_tflops);
    printf("\n");
    if (o.steps > 0)
        printf("txt2img          %.1f ms total (%d steps %s): text encode %.1f ms, sampling %.1f ms, VAE decode %.1f ms\n",
               r.total_ms, o.steps, o.sampler, r.encode_ms, r.sampling_ms, r.decode_ms);
    if (o.steps > 0)
        printf("sampling split   %.1f ms in U-Net calls (host copies included), %.1f ms sampler and conditioning on "
               "the host\n",
               r.sampling_net_ms, r.sampling_ms - r.sampling_net_ms);
    printf("weights          %.2f GiB as stored\n", (double)r.weights_bytes / (1u << 30));
    if (r.device_bytes)
        printf("device memory    %.2f GiB in use: %.2f GiB kiln (weights, arenas, library workspaces) + %.2f GiB CUDA "
               "context\n",
               (double)r.device_bytes / (1u << 30), (double)(r.device_bytes - r.context_bytes) / (1u << 30),
               (double)r.context_bytes / (1u << 30));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("kiln %s\n", kiln_version());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return usage(stdout);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "mkrandom")) return cmd_mkrandom(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "pnginfo")) return cmd_pnginfo(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 2, argv + 2);
    fprintf(stderr, "kiln: unknown command '%s' (try kiln help)\n", cmd);
    return 1;
}
