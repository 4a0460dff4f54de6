/* load_diffusers.c — loads a diffusers pipeline folder into the weight store under LDM names.
 *
 * Reads model_index.json and each component's config.json (for the UNet's block layout and which text encoders
 * there are), maps every tensor with kiln_diffusers_to_ldm and adds it as a view into the mapped file. Three
 * tensors need more than a rename, so the store looks exactly as if the LDM single file had been loaded:
 *   - VAE mid-block attention q/k/v/proj_out weights are Linear [C,C] in diffusers, 1x1 convs [C,C,1,1] in LDM
 *     (same bytes, new shape);
 *   - OpenCLIP (SD2, SDXL's second encoder) q_proj/k_proj/v_proj are stacked back into attn.in_proj_weight/bias;
 *   - OpenCLIP text_projection.weight is the transpose of LDM's text_projection (used as x @ P). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "model/model.h"

/* The UNet block arithmetic kiln_diffusers_to_ldm needs, from unet/config.json and vae/config.json. */
typedef struct layout {
    int nrb;                          /* layers_per_block */
    int n_levels;                     /* len(block_out_channels) */
    int attn[KILN_MAX_LEVELS];        /* down level i has cross-attention */
    int vae_levels;
} layout;

/* One OpenCLIP fused tensor being assembled from its q, k, v row blocks. */
typedef struct fused {
    char name[512];                   /* LDM name (attn.in_proj_weight / in_proj_bias) */
    const kiln_st_tensor *part[3];    /* q, k, v */
    const char *source;
} fused;

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int read_json(const char *dir, const char *rel, json_t **out) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    if (!is_file(path)) return kiln_error(KILN_ENOTFOUND, "diffusers folder %s: no %s", dir, rel);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return kiln_error(KILN_EFORMAT, "%s: line %d: %s", path, err.line, err.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return kiln_error(KILN_EFORMAT, "%s: not a JSON object", path);
    }
    *out = root;
    return KILN_OK;
}

/* model_index.json lists a component as "name": ["library", "Class"], or [null, null] when absent. */
static int has_component(json_t *index, const char *name) {
    json_t *v = json_object_get(index, name);
    return json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 1));
}

static int read_unet_layout(const char *dir, layout *L) {
    json_t *cfg;
    KILN_TRY(read_json(dir, "unet/config.json", &cfg));
    int rc = KILN_OK;
    json_t *boc = json_object_get(cfg, "block_out_channels");
    json_t *types = json_object_get(cfg, "down_block_types");
    json_t *lpb = json_object_get(cfg, "layers_per_block");
    L->n_levels = json_is_array(boc) ? (int)json_array_size(boc) : 0;
    if (L->n_levels < 1 || L->n_levels > KILN_MAX_LEVELS) {
        rc = kiln_error(KILN_EUNSUPPORTED, "%s/unet/config.json: block_out_channels has %d entries (1..%d supported)",
                        dir, L->n_levels, KILN_MAX_LEVELS);
        goto done;
    }
    if (!json_is_array(types) || (int)json_array_size(types) != L->n_levels) {
        rc = kiln_error(KILN_EFORMAT, "%s/unet/config.json: down_block_types does not list %d block types", dir,
                        L->n_levels);
        goto done;
    }
    for (int i = 0; i < L->n_levels; i++) {
        const char *t = json_string_value(json_array_get(types, (size_t)i));
        L->attn[i] = t && strstr(t, "Attn") != NULL;
    }
    /* layers_per_block may be a list (one per level); SD models use one value for all. */
    if (json_is_integer(lpb)) {
        L->nrb = (int)json_integer_value(lpb);
    } else if (json_is_array(lpb) && json_array_size(lpb) > 0) {
        L->nrb = (int)json_integer_value(json_array_get(lpb, 0));
        for (size_t i = 1; i < json_array_size(lpb); i++)
            if ((int)json_integer_value(json_array_get(lpb, i)) != L->nrb) {
                rc = kiln_error(KILN_EUNSUPPORTED, "%s/unet/config.json: layers_per_block differs between levels",
                                dir);
                goto done;
            }
    } else {
        L->nrb = 0;
    }
    if (L->nrb < 1 || L->nrb > 16)
        rc = kiln_error(KILN_EFORMAT, "%s/unet/config.json: layers_per_block missing or out of range", dir);
done:
    json_decref(cfg);
    return rc;
}

static int read_vae_levels(const char *dir, layout *L) {
    json_t *cfg;
    KILN_TRY(read_json(dir, "vae/config.json", &cfg));
    json_t *boc = json_object_get(cfg, "block_out_channels");
    L->vae_levels = json_is_array(boc) ? (int)json_array_size(boc) : 0;
    json_decref(cfg);
    if (L->vae_levels < 1 || L->vae_levels > 8)
        return kiln_error(KILN_EFORMAT, "%s/vae/config.json: block_out_channels missing or out of range", dir);
    return KILN_OK;
}

/* Finds a component's weight files: BASE.safetensors, else BASE.fp16.safetensors, else a sharded
 * BASE[.fp16].safetensors.index.json (its weight_map names the shard files). Opens them into m->files. */
static int open_component_files(struct kiln_model *m, const char *dir, const char *sub, const char *base,
                                kiln_st_file **files, int *n_files, int max_files) {
    char path[4096];
    static const char *const singles[] = {"%s/%s/%s.safetensors", "%s/%s/%s.fp16.safetensors"};
    *n_files = 0;
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, singles[i], dir, sub, base);
        if (is_file(path)) {
            KILN_TRY(kiln_model_open_file(m, path, &files[0]));
            *n_files = 1;
            return KILN_OK;
        }
    }
    static const char *const indexes[] = {"%s.safetensors.index.json", "%s.fp16.safetensors.index.json"};
    for (int i = 0; i < 2; i++) {
        char rel[512], name[256];
        snprintf(name, sizeof name, indexes[i], base);
        snprintf(rel, sizeof rel, "%s/%s", sub, name);
        snprintf(path, sizeof path, "%s/%s", dir, rel);
        if (!is_file(path)) continue;
        json_t *idx;
        KILN_TRY(read_json(dir, rel, &idx));
        json_t *map = json_object_get(idx, "weight_map");
        int rc = KILN_OK;
        if (!json_is_object(map)) rc = kiln_error(KILN_EFORMAT, "%s: no weight_map object", path);
        const char *key;
        json_t *val;
        json_object_foreach(map, key, val) {
            if (rc < 0) break;
            const char *shard = json_string_value(val);
            if (!shard || strchr(shard, '/')) {
                rc = kiln_error(KILN_EFORMAT, "%s: tensor %s: shard name is not a plain file name", path, key);
                break;
            }
            char shard_path[4096];
            snprintf(shard_path, sizeof shard_path, "%s/%s/%s", dir, sub, shard);
            int seen = 0;
            for (int k = 0; k < *n_files; k++) seen |= !strcmp(files[k]->path, shard_path);
            if (seen) continue;
            if (*n_files == max_files) {
                rc = kiln_error(KILN_EUNSUPPORTED, "%s: more than %d shard files", path, max_files);
                break;
            }
            rc = kiln_model_open_file(m, shard_path, &files[*n_files]);
            if (rc >= 0) (*n_files)++;
        }
        json_decref(idx);
        if (rc >= 0 && *n_files == 0) rc = kiln_error(KILN_EFORMAT, "%s: weight_map names no files", path);
        return rc;
    }
    snprintf(path, sizeof path, "%s/%s/%s.bin", dir, sub, base);
    if (is_file(path))
        return kiln_error(KILN_EUNSUPPORTED, "diffusers folder %s: %s/%s.bin is a pickle file; kiln reads only "
                          "%s.safetensors", dir, sub, base, base);
    return kiln_error(KILN_ENOTFOUND, "diffusers folder %s: missing %s/%s.safetensors (nor .fp16.safetensors)", dir,
                      sub, base);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int is_float(kiln_dtype d) { return d == KILN_F32 || d == KILN_F16 || d == KILN_BF16; }

/* Which of q/k/v (0..2) a diffusers OpenCLIP attention tensor is, or -1. */
static int qkv_part(const char *name) {
    static const char *const parts[] = {".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj."};
    for (int i = 0; i < 3; i++)
        if (strstr(name, parts[i])) return i;
    return -1;
}

/* Stacks q, k, v (each [W, ...]) into one [3W, ...] tensor the store owns. */
static int add_fused(kiln_weights *w, const fused *f) {
    static const char qkv[] = "qkv";
    for (int i = 0; i < 3; i++)
        if (!f->part[i])
            return kiln_error(KILN_ENOTFOUND, "%s: %c_proj missing, cannot build %s", f->source, qkv[i], f->name);
    const kiln_st_tensor *q = f->part[0];
    for (int i = 1; i < 3; i++) {
        const kiln_st_tensor *t = f->part[i];
        if (t->dtype != q->dtype || t->ndim != q->ndim || t->nbytes != q->nbytes ||
            memcmp(t->shape, q->shape, sizeof(int64_t) * (size_t)q->ndim))
            return kiln_error(KILN_EFORMAT, "%s: %s and %s differ in dtype or shape", f->source, q->name, t->name);
    }
    if (q->ndim < 1 || q->ndim > 2)
        return kiln_error(KILN_EFORMAT, "%s: %s has %d dimensions (1 or 2 expected)", f->source, q->name, q->ndim);
    char *data = malloc(3 * q->nbytes + 1);
    if (!data) return kiln_error(KILN_ENOMEM, "out of memory building %s", f->name);
    for (int i = 0; i < 3; i++) memcpy(data + (size_t)i * q->nbytes, f->part[i]->data, q->nbytes);
    int64_t shape[KILN_MAX_DIMS];
    memcpy(shape, q->shape, sizeof(int64_t) * (size_t)q->ndim);
    shape[0] *= 3;
    return kiln_weights_add_owned(w, f->name, q->dtype, q->ndim, shape, data, f->source);
}

/* Adds the transpose of a 2-D tensor, owned by the store. */
static int add_transposed(kiln_weights *w, const char *name, const kiln_st_tensor *t, const char *source) {
    if (t->ndim != 2 || !is_float(t->dtype))
        return kiln_error(KILN_EFORMAT, "%s: %s is not a 2-D float tensor", source, t->name);
    size_t es = kiln_dtype_size(t->dtype);
    int64_t r = t->shape[0], c = t->shape[1];
    char *data = malloc(t->nbytes + 1);
    if (!data) return kiln_error(KILN_ENOMEM, "out of memory transposing %s", t->name);
    const char *src = t->data;
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) memcpy(data + (size_t)(j * r + i) * es, src + (size_t)(i * c + j) * es, es);
    int64_t shape[2] = {c, r};
    return kiln_weights_add_owned(w, name, t->dtype, 2, shape, data, source);
}

/* Maps and adds every tensor of one component (all its shard files). */
static int load_component(struct kiln_model *m, const char *dir, const char *sub, const char *component,
                          const char *base, const layout *L) {
    kiln_st_file *files[KILN_MODEL_MAX_FILES];
    int n_files = 0;
    KILN_TRY(open_component_files(m, dir, sub, base, files, &n_files, KILN_MODEL_MAX_FILES));
    int open_clip = !strcmp(component, "text_encoder_sd2") || !strcmp(component, "text_encoder_2");
    int is_vae = !strcmp(component, "vae");
    fused *fz = NULL;
    int n_fz = 0, cap_fz = 0, rc = KILN_OK;
    for (int fi = 0; fi < n_files && rc >= 0; fi++) {
        const kiln_st_file *f = files[fi];
        for (int ti = 0; ti < f->n_tensors && rc >= 0; ti++) {
            const kiln_st_tensor *t = &f->tensors[ti];
            /* transformers keeps CLIP's position_ids (0..76, int64) as a buffer; it is not a weight. */
            if (!is_float(t->dtype) && ends_with(t->name, "position_ids")) {
                m->n_ignored++;
                continue;
            }
            char ldm[512];
            rc = kiln_diffusers_to_ldm(component, t->name, L->nrb, is_vae ? L->vae_levels : L->n_levels, L->attn,
                                       ldm, sizeof ldm);
            if (rc < 0) {
                rc = kiln_error_context(rc, "%s", f->path);
                break;
            }
            if (!is_float(t->dtype)) {
                rc = kiln_error(KILN_EUNSUPPORTED, "%s: tensor %s has dtype %s, not a weight dtype", f->path,
                                t->name, kiln_dtype_name(t->dtype));
                break;
            }
            int part = open_clip ? qkv_part(t->name) : -1;
            const kiln_weight *dup = part < 0 ? kiln_weights_find(m->weights, ldm) : NULL;
            if (dup) {
                rc = kiln_error(KILN_EFORMAT, "%s: tensor %s maps to %s, already given by another tensor of %s",
                                f->path, t->name, ldm, dup->source ? dup->source : "this folder");
                break;
            }
            if (part >= 0) {
                int k = 0;
                while (k < n_fz && strcmp(fz[k].name, ldm)) k++;
                if (k == n_fz) {
                    if (n_fz == cap_fz) {
                        int cap = cap_fz ? cap_fz * 2 : 32;
                        fused *nf = realloc(fz, sizeof *nf * (size_t)cap);
                        if (!nf) {
                            rc = kiln_error(KILN_ENOMEM, "out of memory");
                            break;
                        }
                        fz = nf;
                        cap_fz = cap;
                    }
                    memset(&fz[k], 0, sizeof fz[k]);
                    snprintf(fz[k].name, sizeof fz[k].name, "%s", ldm);
                    fz[k].source = f->path;
                    n_fz++;
                }
                fz[k].part[part] = t;
            } else if (open_clip && !strcmp(t->name, "text_projection.weight")) {
                rc = add_transposed(m->weights, ldm, t, f->path);
            } else if (is_vae && t->ndim == 2 && strstr(ldm, ".mid.attn_1.") && ends_with(ldm, ".weight") &&
                       !strstr(ldm, ".norm.")) {
                int64_t shape[4] = {t->shape[0], t->shape[1], 1, 1};
                rc = kiln_weights_add_view(m->weights, ldm, t->dtype, 4, shape, t->data, f->path);
            } else {
                rc = kiln_weights_add_view(m->weights, ldm, t->dtype, t->ndim, t->shape, t->data, f->path);
            }
        }
    }
    for (int k = 0; k < n_fz && rc >= 0; k++) rc = add_fused(m->weights, &fz[k]);
    free(fz);
    return rc;
}

/* The scheduler's prediction type is the one model fact the weights cannot tell (SD 2.x v vs eps). */
static void read_prediction(struct kiln_model *m, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    if (!is_file(path)) return;
    json_t *cfg = json_load_file(path, 0, NULL);
    const char *p = json_string_value(json_object_get(cfg, "prediction_type"));
    if (p && !strcmp(p, "v_prediction")) m->config.prediction = KILN_PREDICT_V;
    json_decref(cfg);
}

static void read_scaling_factor(struct kiln_model *m, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    json_t *v = json_object_get(cfg, "scaling_factor");
    if (json_is_number(v)) m->config.vae.scaling_factor = json_number_value(v);
    json_decref(cfg);
}

/* SD1 and SD2 folders look alike; the text encoder tells them apart: OpenAI CLIP (SD1) uses quick_gelu,
 * OpenCLIP (SD2) exact GELU. */
static int text_encoder_kind(const char *dir, const char **component) {
    json_t *cfg;
    KILN_TRY(read_json(dir, "text_encoder/config.json", &cfg));
    const char *act = json_string_value(json_object_get(cfg, "hidden_act"));
    *component = act && !strcmp(act, "gelu") ? "text_encoder_sd2" : "text_encoder";
    json_decref(cfg);
    return KILN_OK;
}

int kiln_load_diffusers(struct kiln_model *m, const char *dir) {
    if (!m || !m->weights || !dir) return kiln_error(KILN_EINVAL, "kiln_load_diffusers: no model or folder");
    char path[4096];
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    if (!is_file(path)) return kiln_error(KILN_ENOTFOUND, "%s: not a diffusers folder (no model_index.json)", dir);
    json_t *index;
    int rc = read_json(dir, "model_index.json", &index);
    KILN_TRY(rc);
    int sdxl = has_component(index, "text_encoder_2");
    static const char *const required[] = {"unet", "vae", "text_encoder"};
    for (int i = 0; i < 3 && rc >= 0; i++)
        if (!has_component(index, required[i]))
            rc = kiln_error(KILN_EUNSUPPORTED, "diffusers folder %s: model_index.json has no %s component", dir,
                            required[i]);
    json_decref(index);
    KILN_TRY(rc);

    layout L;
    memset(&L, 0, sizeof L);
    KILN_TRY(read_unet_layout(dir, &L));
    KILN_TRY(read_vae_levels(dir, &L));
    const char *te = "text_encoder_sdxl";
    if (!sdxl) KILN_TRY(text_encoder_kind(dir, &te));

    KILN_TRY(load_component(m, dir, "unet", "unet", "diffusion_pytorch_model", &L));
    KILN_TRY(load_component(m, dir, "vae", "vae", "diffusion_pytorch_model", &L));
    KILN_TRY(load_component(m, dir, "text_encoder", te, "model", &L));
    if (sdxl) KILN_TRY(load_component(m, dir, "text_encoder_2", "text_encoder_2", "model", &L));

    read_prediction(m, dir);
    read_scaling_factor(m, dir);
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    if (is_dir(path)) {
        char *v = strdup(path);
        if (!v) return kiln_error(KILN_ENOMEM, "out of memory");
        free(m->vocab_dir);
        m->vocab_dir = v;
    }
    return KILN_OK;
}
