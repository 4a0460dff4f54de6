/* load_single_file.c — A1111 / LDM single-file checkpoints (.safetensors).
 *
 * The file's own names are canonical, so most tensors go into the store as they are. Real
 * checkpoints carry extras that are skipped (and counted): model_ema.* copies, optimizer and
 * scheduler leftovers, non-float tensors such as CLIP's int64 position_ids. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "io/ckpt.h"
#include "model/model.h"

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* The prefixes that hold network weights; anything else is a leftover. */
static const char *const kept_prefixes[] = {
    "model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.",
};

/* Adds every network tensor of a checkpoint's tensor list under its canonical name. */
static int add_tensors(struct kiln_model *m, const kiln_st_tensor *tensors, int n, const char *source) {
    for (int i = 0; i < n; i++) {
        const kiln_st_tensor *t = &tensors[i];
        int kept = 0;
        for (size_t k = 0; k < sizeof kept_prefixes / sizeof *kept_prefixes; k++)
            if (starts_with(t->name, kept_prefixes[k])) kept = 1;
        if (!kept || (t->dtype != KILN_F32 && t->dtype != KILN_F16 && t->dtype != KILN_BF16)) {
            m->n_ignored++;
            continue;
        }
        /* Some SD1 files store CLIP as cond_stage_model.transformer.embeddings... (no text_model.). */
        char name[512];
        const char *clip = "cond_stage_model.transformer.";
        if (starts_with(t->name, clip) && !starts_with(t->name + strlen(clip), "text_model."))
            snprintf(name, sizeof name, "%stext_model.%s", clip, t->name + strlen(clip));
        else
            snprintf(name, sizeof name, "%s", t->name);
        KILN_TRY(kiln_weights_add_view(m->weights, name, t->dtype, t->ndim, t->shape, t->data, source));
    }
    return KILN_OK;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcasecmp(s + n - k, suffix);
}

int kiln_load_single_file(struct kiln_model *m, const char *path) {
    if (has_suffix(path, ".ckpt") || has_suffix(path, ".pt") || has_suffix(path, ".pth")) {
        if (m->n_ckpt_files >= KILN_MODEL_MAX_FILES) return kiln_error(KILN_EINVAL, "%s: too many checkpoint files", path);
        kiln_ckpt_file *f = NULL;
        KILN_TRY(kiln_ckpt_open(path, &f));
        m->ckpt_files[m->n_ckpt_files++] = f;
        return add_tensors(m, f->tensors, f->n_tensors, f->path);
    }
    kiln_st_file *f = NULL;
    KILN_TRY(kiln_model_open_file(m, path, &f));
    return add_tensors(m, f->tensors, f->n_tensors, f->path);
}
