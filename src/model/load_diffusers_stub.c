/* load_diffusers.c — placeholder until the diffusers loader lands (branch model). */
#include "core/error.h"
#include "model/model.h"
int kiln_load_diffusers(struct kiln_model *m, const char *dir) {
    return kiln_error(KILN_EUNSUPPORTED, "%s: diffusers folders are not supported yet", dir);
}
int kiln_load_vae_file(struct kiln_model *m, const char *path) {
    return kiln_error(KILN_EUNSUPPORTED, "%s: separate VAE files are not supported yet", path);
}
