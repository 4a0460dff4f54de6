/* infotext.h — A1111's "parameters" text (infotext): formatting and parsing.
 *
 * The text A1111 v1.9 stores in a PNG "parameters" chunk / JPEG-WebP EXIF UserComment:
 *
 *   a photo of a cat, <lora:x:0.8>
 *   Negative prompt: blurry
 *   Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: ...
 *
 * Formatting follows processing.py create_infotext: the prompt, then "\nNegative prompt: NEG" only when
 * NEG is not empty, then "\n" and the "key: value" pairs joined by ", " (a pair whose value equals its
 * key prints the key alone; a value containing ',', ':' or a newline is JSON-quoted as
 * infotext_utils.quote does), and the whole text stripped of surrounding whitespace.
 * Parsing follows infotext_utils.parse_generation_parameters (see kiln_infotext_parse).
 * All strings are UTF-8. */
#ifndef KILN_IO_INFOTEXT_H
#define KILN_IO_INFOTEXT_H

#include <stddef.h>

#include "kiln.h"
#include <stdint.h>

/* One "key: value" pair. A NULL value is skipped when formatting (A1111's None). */
typedef struct kiln_infotext_kv {
    const char *key;
    const char *value;
} kiln_infotext_kv;

/* Formats prompt, negative prompt and pairs (in the given order) as A1111 does. *out is malloc'ed. */
int kiln_infotext_format_kv(const char *prompt, const char *negative_prompt, const kiln_infotext_kv *kv, int n_kv,
                            char **out);

/* The fields create_infotext prints, in its order. Each says when A1111 leaves it out; a zeroed
 * struct plus prompt/steps/sampler/cfg/seed/size gives a plain txt2img infotext. */
typedef struct kiln_infotext_params {
    const char *prompt;
    const char *negative_prompt;    /* NULL or "" -> no "Negative prompt:" line */
    int steps;                      /* "Steps", always */
    const char *sampler;            /* "Sampler" ("Euler a"); NULL omits */
    const char *schedule_type;      /* "Schedule type" ("Karras", "Automatic"); NULL omits */
    double cfg_scale;               /* "CFG scale", always */
    double image_cfg_scale;         /* "Image CFG scale" (instruct-pix2pix); <= 0 omits */
    int64_t seed;                   /* "Seed", always */
    const char *face_restoration;   /* "Face restoration" model name; NULL omits */
    int width, height;              /* "Size: WxH", always */
    const char *model_hash;         /* "Model hash" (10 hex, kiln_hash_autov2); NULL omits */
    const char *model;              /* "Model" (checkpoint file stem); NULL omits */
    const char *fp8_weight;         /* "FP8 weight"; NULL omits */
    const char *cache_fp16_weight;  /* "Cache FP16 weight for LoRA"; NULL omits */
    const char *vae_hash;           /* "VAE hash"; NULL omits */
    const char *vae;                /* "VAE" (file name); NULL omits */
    int64_t variation_seed;         /* "Variation seed", with "Variation seed strength"; */
    double variation_seed_strength; /*   both omitted when the strength is 0 */
    int seed_resize_from_w;         /* "Seed resize from: WxH"; omitted unless both > 0 */
    int seed_resize_from_h;
    int has_denoising_strength;     /* "Denoising strength" (img2img; txt2img with hires fix) */
    double denoising_strength;
    int has_conditional_mask_weight; /* "Conditional mask weight" (inpainting-conditioned models) */
    double conditional_mask_weight;
    int clip_skip;                  /* "Clip skip"; <= 1 omits */
    int64_t ensd;                   /* "ENSD" (eta noise seed delta, samplers that use it); 0 omits */
    double token_merging_ratio;     /* "Token merging ratio"; 0 omits */
    double token_merging_ratio_hr;  /* "Token merging ratio hr"; 0 omits */
    const char *init_image_hash;    /* "Init image hash"; NULL omits */
    const char *rng;                /* "RNG" ("CPU", "NV"); NULL or "GPU" omits */
    int tiling;                     /* "Tiling: True"; 0 omits */
    const kiln_infotext_kv *extra;  /* p.extra_generation_params in insertion order: "Hires upscale", */
    int n_extra;                    /*   "Hires steps", "Hires upscaler", "Lora hashes", "TI hashes", ... */
    const char *version;            /* "Version" ("v1.9.4" or kiln's); NULL omits */
    const char *user;               /* "User"; NULL omits */
    /* Float style: 0 prints integral floats as integers ("CFG scale: 7", what the A1111 web UI
     * writes), 1 as Python floats ("CFG scale: 7.0", what the A1111 HTTP API writes). */
    int python_floats;
} kiln_infotext_params;

/* Formats params as create_infotext does. *out is malloc'ed. A key in extra that repeats a standard
 * key replaces its value in place (Python dict semantics), as "Denoising strength" does in A1111. */
int kiln_infotext_format(const kiln_infotext_params *params, char **out);

/* The "Lora hashes" / "TI hashes" value: "name: hash, name2: hash2", with ':' and ',' removed from
 * each name as A1111 does (hashes: kiln_hash_addnet_safetensors()[0:12] for LoRAs, the file's
 * sha256[0:12] for embeddings). Entries with an empty hash are left out, as A1111 skips them;
 * *out is NULL when nothing remains (leave the key out then). *out is malloc'ed. */
int kiln_infotext_hash_list(const char *const *names, const char *const *hashes, int n, char **out);

/* Python's repr of a float ("7.0", "0.75", "1e-05"); with python_float 0 an integral value prints
 * without ".0". buf needs 32 bytes. Returns buf. */
char *kiln_infotext_float(double x, int python_float, char buf[32]);

/* ---- parsing ---- */
typedef struct kiln_infotext_pair {
    char *key;
    char *value;
} kiln_infotext_pair;

typedef struct kiln_infotext {
    char *prompt;          /* "" if none */
    char *negative_prompt; /* "" if none */
    int n_params;
    kiln_infotext_pair *params; /* in order of first appearance; a repeated key keeps its first slot */
} kiln_infotext;

/* Parses an infotext exactly as parse_generation_parameters does (without styles or settings):
 * the text is stripped and split on "\n"; the last line holds the parameters if the re_param regex
 * finds at least 3 pairs in it, else it is part of the prompt; the lines before are stripped each and
 * go to the prompt until one starts with "Negative prompt:", from which on they go to the negative
 * prompt; a value in double quotes is JSON-decoded (kept as written if that fails); a value like
 * "512x512" becomes two keys "K-1" and "K-2" ("Size-1" = width, "Size-2" = height); an empty value
 * is dropped. Never fails on odd text (only KILN_ENOMEM). Free with kiln_infotext_free. */
int kiln_infotext_parse(const char *text, kiln_infotext *out);
/* Adds A1111's values for keys the text leaves out ("Clip skip" "1", "RNG" "GPU", "Schedule type"
 * "Automatic", "Hires resize-1" "0", ..., as parse_generation_parameters does). */
int kiln_infotext_apply_defaults(kiln_infotext *it);
/* The value of key, or NULL. */
const char *kiln_infotext_get(const kiln_infotext *it, const char *key);
void kiln_infotext_free(kiln_infotext *it);

#endif
