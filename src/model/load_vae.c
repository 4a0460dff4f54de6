/* load_vae.c — a separate VAE file (A1111's "SD VAE" setting) replacing the checkpoint's own VAE.
 *
 * VAE files come in three namings: LDM with the "first_stage_model." prefix, LDM without it (the usual
 * vae-ft-mse-840000-ema-pruned.safetensors style), and diffusers AutoencoderKL names (e.g. sdxl_vae.safetensors).
 * Training leftovers (model_ema.*, loss.*) are skipped. As A1111's strict load_state_dict does, the file must
 * provide every VAE tensor the checkpoint has, with the same shapes; otherwise nothing sensible can run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "model/model.h"

static const char VAE_PREFIX[] = "first_stage_model.";

static int starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

static int is_float(kiln_dtype d) { return d == KILN_F32 || d == KILN_F16 || d == KILN_BF16; }

/* diffusers names have "down_blocks"/"up_blocks"/"mid_block"; LDM names "down.N"/"up.N"/"mid." */
static int is_diffusers_name(const char *name) {
    return strstr(name, "down_blocks.") || strstr(name, "up_blocks.") || strstr(name, "mid_block.");
}

/* Number of VAE levels in a diffusers-named file: 1 + the largest down_blocks / up_blocks index. */
static int diffusers_levels(const kiln_st_file *f) {
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const char *p = strstr(f->tensors[i].name, "_blocks.");
        if (!p) continue;
        int b = atoi(p + 8);
        if (b + 1 > n) n = b + 1;
    }
    return n;
}

/* Tensors a VAE file may carry that are not part of the autoencoder. */
static int is_training_leftover(const char *name) {
    return starts_with(name, "model_ema.") || starts_with(name, "loss.") ||
           starts_with(name, "first_stage_model.model_ema.") || starts_with(name, "first_stage_model.loss.");
}

/* The LDM name of one VAE-file tensor, or an error naming it. */
static int canonical_name(const kiln_st_file *f, const char *name, int diffusers, int levels, char *out,
                          size_t size) {
    if (starts_with(name, VAE_PREFIX)) {
        if ((size_t)snprintf(out, size, "%s", name) >= size) return kiln_error(KILN_EINVAL, "%s: name too long", name);
        return KILN_OK;
    }
    if (diffusers) {
        int rc = kiln_diffusers_to_ldm("vae", name, 0, levels, NULL, out, size);
        return rc < 0 ? kiln_error_context(rc, "VAE file %s", f->path) : rc;
    }
    static const char *const roots[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++)
        if (starts_with(name, roots[i])) {
            if ((size_t)snprintf(out, size, "%s%s", VAE_PREFIX, name) >= size)
                return kiln_error(KILN_EINVAL, "%s: name too long", name);
            return KILN_OK;
        }
    return kiln_error(KILN_ENOTFOUND, "VAE file %s: tensor %s is not a VAE tensor", f->path, name);
}

/* mid.attn_1 q/k/v/proj_out weights are canonical as 1x1 convs; diffusers (and some converted files) store
 * them as Linear [C,C]. Same bytes either way. */
static int is_vae_attn_weight(const char *ldm) {
    return strstr(ldm, ".mid.attn_1.") && !strstr(ldm, ".norm.") && strstr(ldm, ".weight");
}

int kiln_load_vae_file(struct kiln_model *m, const char *path) {
    if (!m || !m->weights || !path) return kiln_error(KILN_EINVAL, "kiln_load_vae_file: no model or path");
    static const char *const pickles[] = {".pt", ".ckpt", ".pth", ".bin"};
    size_t len = strlen(path);
    for (size_t i = 0; i < sizeof pickles / sizeof pickles[0]; i++) {
        size_t k = strlen(pickles[i]);
        if (len >= k && !strcasecmp(path + len - k, pickles[i]))
            return kiln_error(KILN_EUNSUPPORTED, "VAE file %s: pickle files are not supported; use a .safetensors VAE",
                              path);
    }
    kiln_st_file *f;
    KILN_TRY(kiln_model_open_file(m, path, &f));

    int had_vae = 0;
    for (int i = 0; i < m->weights->n; i++) had_vae |= starts_with(m->weights->items[i].name, VAE_PREFIX);
    int diffusers = 0;
    for (int i = 0; i < f->n_tensors; i++) diffusers |= is_diffusers_name(f->tensors[i].name);
    int levels = diffusers ? diffusers_levels(f) : 0;

    int added = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const kiln_st_tensor *t = &f->tensors[i];
        if (is_training_leftover(t->name)) {
            m->n_ignored++;
            continue;
        }
        char ldm[512];
        KILN_TRY(canonical_name(f, t->name, diffusers, levels, ldm, sizeof ldm));
        if (!is_float(t->dtype))
            return kiln_error(KILN_EUNSUPPORTED, "VAE file %s: tensor %s has dtype %s, not a weight dtype", path,
                              t->name, kiln_dtype_name(t->dtype));
        int ndim = t->ndim;
        int64_t shape[KILN_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (ndim == 2 && is_vae_attn_weight(ldm)) {
            shape[2] = shape[3] = 1;
            ndim = 4;
        }
        const kiln_weight *old = kiln_weights_find(m->weights, ldm);
        if (old && old->source == f->path)
            return kiln_error(KILN_EFORMAT, "VAE file %s: two tensors map to %s (%s is the second)", path, ldm, t->name);
        if (had_vae) {
            if (!old)
                return kiln_error(KILN_ENOTFOUND, "VAE file %s: tensor %s (%s) does not exist in the checkpoint's VAE",
                                  path, t->name, ldm);
            if (old->ndim != ndim || memcmp(old->shape, shape, sizeof(int64_t) * (size_t)ndim)) {
                char a[96], b[96];
                return kiln_error(KILN_EINVAL, "VAE file %s: tensor %s has shape %s, the checkpoint's %s is %s", path,
                                  t->name, kiln_shape_str(ndim, shape, a, sizeof a), ldm,
                                  kiln_shape_str(old->ndim, old->shape, b, sizeof b));
            }
        }
        KILN_TRY(kiln_weights_add_view(m->weights, ldm, t->dtype, ndim, shape, t->data, f->path));
        added++;
    }
    if (!added) return kiln_error(KILN_ENOTFOUND, "VAE file %s holds no VAE tensors", path);
    /* Every VAE tensor must now come from this file: a partial VAE would mix two autoencoders. */
    for (int i = 0; i < m->weights->n; i++) {
        const kiln_weight *w = &m->weights->items[i];
        if (starts_with(w->name, VAE_PREFIX) && w->source != f->path)
            return kiln_error(KILN_ENOTFOUND, "VAE file %s lacks %s, which the checkpoint's VAE has", path, w->name);
    }
    return KILN_OK;
}
