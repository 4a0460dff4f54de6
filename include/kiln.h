/* kiln.h — the one public C API of kiln, a Stable Diffusion inference engine.
 *
 * Conventions (see DESIGN.md):
 *  - Every fallible function returns int: KILN_OK (0) or a negative KILN_E* code.
 *    On failure a message naming the file, tensor, field or shape involved is
 *    available from kiln_last_error() (thread-local: it describes the last failure
 *    on the calling thread and stays valid until the next kiln call on that thread).
 *  - Handles are opaque. The creator of a handle frees it; every *_free(NULL) is a no-op.
 *  - Output parameters are written only on success.
 *  - A handle may be used by one thread at a time unless a function says otherwise.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ---------------------------------------------------------- */
enum {
    KILN_OK = 0,
    KILN_EINVAL = -1,       /* invalid argument or value (a field, a shape, a name) */
    KILN_ENOMEM = -2,       /* out of host or device memory */
    KILN_EIO = -3,          /* a file could not be opened, read or written */
    KILN_EFORMAT = -4,      /* a file is corrupt, truncated or not of the expected format */
    KILN_EUNSUPPORTED = -5, /* valid input that kiln does not handle (dtype, architecture) */
    KILN_ENOTFOUND = -6,    /* a named thing (tensor, file, sampler) does not exist */
    KILN_EBACKEND = -7,     /* the compute backend failed (no GPU, driver error) */
    KILN_ECANCELLED = -8,   /* a callback asked to stop */
};

/* A short constant name for a status code ("invalid argument", ...). */
const char *kiln_status_str(int status);
/* The message of the last failure on this thread ("" if none). */
const char *kiln_last_error(void);
/* The library version, "MAJOR.MINOR.PATCH". */
const char *kiln_version(void);

/* ---- logging ----------------------------------------------------------------- */
typedef enum kiln_log_level { KILN_LOG_ERROR, KILN_LOG_WARN, KILN_LOG_INFO, KILN_LOG_DEBUG } kiln_log_level;
typedef void (*kiln_log_fn)(void *user, kiln_log_level level, const char *message);

/* ---- models -------------------------------------------------------------------- */
typedef struct kiln_model kiln_model;

typedef struct kiln_model_options {
    const char *vae_path;   /* optional separate VAE file (A1111 "SD VAE"); NULL = the checkpoint's own */
    kiln_log_fn log;        /* optional log sink; NULL = silent */
    void *log_user;         /* passed to log */
} kiln_model_options;

/* Loads an A1111/LDM single-file checkpoint (.safetensors) or a diffusers folder.
 * opts may be NULL. The file stays memory-mapped until kiln_model_free. */
int kiln_model_load(const char *path, const kiln_model_options *opts, kiln_model **out);
void kiln_model_free(kiln_model *model);
/* Writes a human-readable description (family, hyper-parameters, tensor count, dtypes)
 * into buf (always NUL-terminated, truncated to size). Returns the full length needed. */
size_t kiln_model_describe(const kiln_model *model, char *buf, size_t size);

/* ---- generation context ----------------------------------------------------------
 * A kiln_ctx binds a model to a compute backend and keeps the plans it compiles (one per network
 * and shape), so repeated requests at the same size build nothing. The model must outlive it. */
typedef struct kiln_ctx kiln_ctx;

typedef struct kiln_ctx_options {
    const char *backend;        /* "cpu" (default) or "cuda" */
    const char *precision;      /* cuda: "fp16" (default) or "bf16" (activations and weights in bfloat16; fp32
                                   accumulation either way); NULL = the default (KILN_CUDA_BF16=1 in the
                                   environment makes it bf16). The cpu backend computes in fp32: "bf16" is
                                   an error there */
    int threads;                /* CPU threads, 0 = all cores */
    const char *vocab_path;     /* CLIP vocabulary; NULL = the model's tokenizer/ or the default */
    const char *embeddings_dir; /* textual-inversion embeddings used by name in prompts; NULL = none */
    const char *lora_dir;       /* where <lora:NAME:W> prompt tags find NAME.safetensors; NULL = none */
    kiln_log_fn log;            /* optional log sink (plans compiled, LoRA modules skipped, embeddings skipped) */
    void *log_user;             /* passed to log */
} kiln_ctx_options;

int kiln_ctx_create(kiln_model *model, const kiln_ctx_options *opts, kiln_ctx **out);
void kiln_ctx_free(kiln_ctx *ctx);

/* ---- generation ------------------------------------------------------------------ */
typedef struct kiln_gen_params {
    const char *prompt;            /* A1111 prompt syntax: (emphasis:1.2), [from:to:when], [a|b], AND, BREAK,
                                      <lora:NAME:W>, embedding names */
    const char *negative_prompt;   /* "" = none */
    int64_t seed;                  /* -1 = random */
    int64_t subseed;               /* variation seed (-1 = random) */
    double subseed_strength;       /* variation strength, 0 = off */
    int seed_resize_from_w, seed_resize_from_h; /* 0 = off */
    const char *sampler;           /* A1111 name ("Euler a", "DPM++ 2M", old "DPM++ 2M Karras" too); default "DPM++ 2M" */
    const char *scheduler;         /* "Automatic" (default), "Karras", "Exponential", ... */
    int steps;                     /* 20 */
    double cfg_scale;              /* 7 */
    int width, height;             /* 512 x 512, multiples of 8 */
    int batch_size;                /* images sampled together (1) */
    int batch_count;               /* batches one after another, seeds counting on (1) */
    int clip_skip;                 /* 1 */
    const char *rng;               /* "GPU" (default; computed as "NV"), "NV" or "CPU" (torch CPU generator) */
    double eta;                    /* < 0 = the sampler's A1111 default */
    double s_min_uncond;           /* A1111 "negative guidance minimum sigma" (0 = off) */
    int64_t ensd;                  /* eta noise seed delta (0) */
    const char *const *loras;      /* extra LoRA files for this request, "FILE" or "FILE:WEIGHT" (weight 1) */
    int n_loras;
    /* img2img and inpainting (A1111 StableDiffusionProcessingImg2Img); init_rgb NULL = txt2img */
    const uint8_t *init_rgb;       /* init image, RGB8 [init_height][init_width][3]; resized to width x height */
    int init_width, init_height;
    const uint8_t *mask_l;         /* inpainting mask, L8 [init_height][init_width], 255 = repaint; NULL = none */
    double denoising_strength;     /* 0.75; img2img, inpainting and the hires pass */
    int resize_mode;               /* 0 just resize (default), 1 crop and resize, 2 resize and fill,
                                      3 just resize (latent upscale: the init image is encoded at its own size,
                                      a multiple of 8, and its latent resized bilinearly) */
    int mask_blur;                 /* Gaussian mask blur sigma in px (4) */
    int inpainting_fill;           /* masked content: 0 fill, 1 original (default), 2 latent noise,
                                      3 latent nothing */
    int inpaint_full_res;          /* 0 whole picture; 1 only masked: sample the region around the mask at
                                      width x height and paste it back into the init image (output at the
                                      init image's size) */
    /* hires fix (txt2img enable_hr with latent upscalers) */
    double hr_scale;               /* 0 = off (unless hr_resize_x/y are set); else the second pass runs at
                                      int(width*hr_scale) x int(height*hr_scale) */
    const char *hr_upscaler;       /* A1111's latent upscalers: "Latent" (default), "Latent (antialiased)",
                                      "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
                                      "Latent (nearest-exact)"; or the image upscalers "None", "Lanczos",
                                      "Nearest" (decode, upscale, encode again; the size a multiple of 8) */
    int hr_steps;                  /* hires steps (A1111 hr_second_pass_steps); 0 = steps */
    int inpaint_full_res_padding;  /* only masked: pixels added around the mask's bounding box (32) */
    int hr_resize_x, hr_resize_y;  /* hires fix to this size instead of hr_scale (A1111 "Resize width/height
                                      to"; 0 = follow the other one's aspect); both 0 = use hr_scale */
} kiln_gen_params;

/* Fills p with A1111's txt2img defaults (prompt "" and the values in the comments above). */
void kiln_gen_params_init(kiln_gen_params *p);

/* One generated image: RGB8, row-major, with its seed and A1111 "parameters" infotext. */
typedef struct kiln_gen_image {
    int width, height;
    uint8_t *rgb;                  /* height * width * 3 */
    int64_t seed, subseed;
    char *infotext;
} kiln_gen_image;

/* Progress: called after every sampler step; return nonzero to cancel (KILN_ECANCELLED). */
typedef int (*kiln_progress_fn)(void *user, int batch_index, int step, int total_steps);

/* txt2img (with hires fix when hr_scale > 0), img2img (init_rgb set) or inpainting (init_rgb and mask_l
 * set): generates batch_size x batch_count images into *images (an array of *n_images, freed with
 * kiln_gen_images_free). Fails with a message naming the offending field for invalid parameters. */
int kiln_generate(kiln_ctx *ctx, const kiln_gen_params *params, kiln_progress_fn progress, void *user,
                  kiln_gen_image **images, int *n_images);
void kiln_gen_images_free(kiln_gen_image *images, int n);

/* Writes an image as PNG, JPEG or WebP (by extension) with its infotext, atomically: a temporary file is
 * renamed into place, so an existing file is never left half-written. */
int kiln_gen_image_save(const kiln_gen_image *image, const char *path);

/* Writes a checkpoint of a known architecture ("sd15", "tiny-sd15") with random fp16 weights, in the A1111
 * single-file layout, atomically. For benchmarks: speed does not depend on the values. */
int kiln_write_random_checkpoint(const char *arch, const char *path, uint64_t seed);

/* ---- tokenizer ---------------------------------------------------------------- */
typedef struct kiln_tokenizer kiln_tokenizer;

/* Loads the CLIP BPE vocabulary: a bpe_simple_vocab_16e6.txt(.gz) file, or a diffusers
 * tokenizer/ folder (vocab.json + merges.txt; a diffusers model folder holding tokenizer/ works too).
 * path NULL = the default location: $KILN_CLIP_VOCAB, else
 * ${XDG_DATA_HOME:-$HOME/.local/share}/kiln/bpe_simple_vocab_16e6.txt.gz, else the installed data
 * directory; the error message lists every place tried. */
int kiln_tokenizer_load(const char *path, kiln_tokenizer **out);
void kiln_tokenizer_free(kiln_tokenizer *tok);
/* Tokenizes UTF-8 text exactly as A1111 (HF slow CLIPTokenizer with ftfy) does, without
 * BOS/EOS. Writes up to cap ids; *n_ids receives the full count (may exceed cap).
 * Fails with KILN_EINVAL on text that is not valid UTF-8 (the message gives the byte offset).
 * Thread-safe: several threads may tokenize with one tokenizer at once. */
int kiln_tokenize(const kiln_tokenizer *tok, const char *text, int32_t *ids, size_t cap, size_t *n_ids);

/* The tokenizer that belongs to a model: a diffusers folder's tokenizer/, else the default vocabulary. */
int kiln_model_tokenizer(const kiln_model *model, kiln_tokenizer **out);

#define KILN_TOKEN_BOS 49406
#define KILN_TOKEN_EOS 49407

#ifdef __cplusplus
}
#endif
#endif
