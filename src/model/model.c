/* model.c — kiln_model_load: picks the loader for the path, applies a separate VAE, infers the config. */
#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/ckpt.h"

const char *kiln_family_name(kiln_family f) {
    switch (f) {
    case KILN_FAMILY_SD1: return "SD1.x";
    case KILN_FAMILY_SD2: return "SD2.x";
    case KILN_FAMILY_SDXL: return "SDXL";
    default: return "unknown";
    }
}

int kiln_model_open_file(struct kiln_model *m, const char *path, kiln_st_file **out) {
    if (m->n_files >= KILN_MODEL_MAX_FILES) return kiln_error(KILN_EINVAL, "%s: too many weight files", path);
    kiln_st_file *f = NULL;
    KILN_TRY(kiln_st_open(path, &f));
    m->files[m->n_files++] = f;
    *out = f;
    return KILN_OK;
}

/* "dir/name.safetensors" -> "name"; "dir/folder/" -> "folder". */
static char *display_name(const char *path) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/') start--;
    size_t end = len;
    for (size_t i = len; i > start; i--)
        if (path[i - 1] == '.') {
            end = i - 1;
            break;
        }
    if (end == start) end = len;
    char *s = malloc(end - start + 1);
    if (s) {
        memcpy(s, path + start, end - start);
        s[end - start] = '\0';
    }
    return s;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcasecmp(s + n - k, suffix);
}

int kiln_model_load(const char *path, const kiln_model_options *opts, kiln_model **out) {
    if (!path || !out) return kiln_error(KILN_EINVAL, "kiln_model_load: path and out are required");
    struct stat st;
    if (stat(path, &st) != 0) return kiln_error(KILN_EIO, "%s: cannot open model: %s", path, strerror(errno));
    kiln_model *m = calloc(1, sizeof *m);
    if (!m) return kiln_error(KILN_ENOMEM, "out of memory");
    m->path = strdup(path);
    m->name = display_name(path);
    m->weights = kiln_weights_new();
    if (opts) m->log = (kiln_logger){opts->log, opts->log_user};
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = kiln_load_diffusers(m, path);
    } else if (has_suffix(path, ".safetensors") || has_suffix(path, ".ckpt") || has_suffix(path, ".pt") ||
               has_suffix(path, ".pth")) {
        rc = kiln_load_single_file(m, path);
    } else {
        rc = kiln_error(KILN_EFORMAT, "%s: not a .safetensors checkpoint or a diffusers folder", path);
    }
    if (rc == KILN_OK && opts && opts->vae_path) rc = kiln_load_vae_file(m, opts->vae_path);
    if (rc == KILN_OK) rc = kiln_infer_config(m);
    if (rc) {
        kiln_model_free(m);
        return rc;
    }
    kiln_log(&m->log, KILN_LOG_INFO, "%s: %s, %d tensors (%d ignored: EMA copies, optimizer state, int buffers)", path,
             kiln_family_name(m->config.family), m->weights->n, m->n_ignored);
    *out = m;
    return KILN_OK;
}

void kiln_model_free(kiln_model *m) {
    if (!m) return;
    kiln_lora_backup_free(m->lora_backup);
    kiln_weights_free(m->weights);
    for (int i = 0; i < m->n_files; i++) kiln_st_close(m->files[i]);
    for (int i = 0; i < m->n_ckpt_files; i++) kiln_ckpt_close(m->ckpt_files[i]);
    free(m->path);
    free(m->name);
    free(m->vocab_dir);
    free(m);
}

/* Appends formatted text to buf at *pos, counting what would be written even past size. */
static void put(char *buf, size_t size, size_t *pos, const char *fmt, ...) KILN_PRINTF(4, 5);
#include <stdarg.h>
static void put(char *buf, size_t size, size_t *pos, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*pos < size ? buf + *pos : NULL, *pos < size ? size - *pos : 0, fmt, ap);
    va_end(ap);
    if (n > 0) *pos += (size_t)n;
}

static void put_list(char *buf, size_t size, size_t *pos, const int *v, int n) {
    put(buf, size, pos, "[");
    for (int i = 0; i < n; i++) put(buf, size, pos, "%s%d", i ? ", " : "", v[i]);
    put(buf, size, pos, "]");
}

size_t kiln_model_describe(const kiln_model *m, char *buf, size_t size) {
    size_t pos = 0;
    if (size) buf[0] = '\0';
    const kiln_model_config *c = &m->config;
    const kiln_unet_config *u = &c->unet;
    int counts[KILN_DTYPE_COUNT] = {0};
    for (int i = 0; i < m->weights->n; i++) counts[m->weights->items[i].dtype]++;
    put(buf, size, &pos, "model: %s\nfamily: %s\nprediction: %s\n", m->path, kiln_family_name(c->family),
        c->prediction == KILN_PREDICT_V ? "v" : "epsilon");
    put(buf, size, &pos, "tensors: %d (", m->weights->n);
    int first = 1;
    for (int d = 0; d < KILN_DTYPE_COUNT; d++)
        if (counts[d]) {
            put(buf, size, &pos, "%s%s %d", first ? "" : ", ", kiln_dtype_name((kiln_dtype)d), counts[d]);
            first = 0;
        }
    put(buf, size, &pos, "), ignored: %d\n", m->n_ignored);
    put(buf, size, &pos, "unet: in %d, out %d, channels %d, mult ", u->in_channels, u->out_channels, u->model_channels);
    put_list(buf, size, &pos, u->channel_mult, u->n_levels);
    put(buf, size, &pos, ", res blocks %d, transformer depth ", u->num_res_blocks);
    put_list(buf, size, &pos, u->transformer_depth, u->n_levels);
    put(buf, size, &pos, ", mid depth %d, context %d, %s %d, proj %s, time embed %d", u->mid_transformer_depth,
        u->context_dim, u->num_heads ? "heads" : "head dim", u->num_heads ? u->num_heads : u->head_dim,
        u->use_linear_proj ? "linear" : "conv", u->time_embed_dim);
    if (u->adm_in_channels) put(buf, size, &pos, ", adm %d", u->adm_in_channels);
    put(buf, size, &pos, "\nvae: channels %d, mult ", c->vae.base_channels);
    put_list(buf, size, &pos, c->vae.channel_mult, c->vae.n_levels);
    put(buf, size, &pos, ", res blocks %d, latent %d, scaling %g\n", c->vae.num_res_blocks, c->vae.z_channels,
        (double)c->vae.scaling_factor);
    for (int i = 0; i < c->n_text_encoders; i++) {
        const kiln_clip_config *t = &c->clip[i];
        put(buf, size, &pos, "text encoder %d: hidden %d, layers %d, heads %d, mlp %d, vocab %d, positions %d, %s\n",
            i, t->hidden, t->layers, t->heads, t->mlp, t->vocab_size, t->max_positions,
            t->act == KILN_CLIP_QUICK_GELU ? "quick_gelu" : "gelu");
    }
    return pos;
}

int kiln_model_tokenizer(const kiln_model *m, kiln_tokenizer **out) {
    return kiln_tokenizer_load(m->vocab_dir, out);
}
