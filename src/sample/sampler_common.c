/* sampler_common.c — helpers every sampler uses: callback wrappers that check and count,
 * scratch buffers, and float32 versions of k-diffusion's small scalar helpers
 * (get_ancestral_step, torch.linspace, get_sigmas_karras). */
#include "sample/sampler_internal.h"

#include "core/error.h"

#include <stdlib.h>

int ks_denoise(kiln_sampler_io *io, const float *x, float sigma, float *denoised) {
    io->n_calls++;
    int rc = io->denoise(io->user, x, (double)sigma, denoised);
    if (rc < 0) return kiln_error_context(rc, "denoiser call %d (sigma %g)", io->n_calls, (double)sigma);
    return 0;
}

int ks_eps(kiln_sampler_io *io, const float *x, double t, float *eps) {
    io->n_calls++;
    int rc = io->eps_at(io->user, x, t, eps);
    if (rc < 0) return kiln_error_context(rc, "model call %d (timestep %g)", io->n_calls, t);
    return 0;
}

int ks_randn(kiln_sampler_io *io, float *out) {
    if (!io->randn) return kiln_error(KILN_EINVAL, "sampler needs random noise but io.randn is NULL");
    int rc = io->randn(io->user, out);
    if (rc < 0) return kiln_error_context(rc, "drawing sampler noise");
    return 0;
}

int ks_brownian(kiln_sampler_io *io, float sigma, float sigma_next, float *out) {
    if (!io->brownian) return kiln_error(KILN_EINVAL, "SDE sampler needs Brownian noise but io.brownian is NULL");
    int rc = io->brownian(io->user, (double)sigma, (double)sigma_next, out);
    if (rc < 0) return kiln_error_context(rc, "Brownian noise (%g -> %g)", (double)sigma, (double)sigma_next);
    return 0;
}

int ks_step(kiln_sampler_io *io, int step, int total, const float *x, const float *denoised) {
    if (!io->on_step) return 0;
    if (io->on_step(io->user, step, total, x, denoised))
        return kiln_error(KILN_ECANCELLED, "sampling cancelled at step %d of %d", step + 1, total);
    return 0;
}

int ks_alloc(const kiln_sampler_io *io, int count, float **bufs) {
    float *p = malloc(io->n * (size_t)count * sizeof *p);
    if (!p) return kiln_error(KILN_ENOMEM, "sampler: out of memory for %d buffers of %zu floats", count, io->n);
    for (int i = 0; i < count; i++) bufs[i] = p + io->n * (size_t)i;
    return 0;
}

void ks_free(float *first) { free(first); }

int ks_add_noise(kiln_sampler_io *io, float *x, float *noise, float sigma_up) {
    KILN_TRY(ks_randn(io, noise));
    const float s_noise = (float)io->s_noise;
    for (size_t k = 0; k < io->n; k++) x[k] = x[k] + noise[k] * s_noise * sigma_up;
    return KILN_OK;
}

void ks_ancestral_step(float sigma_from, float sigma_to, double eta, float *sigma_down, float *sigma_up) {
    if (eta == 0) {
        *sigma_down = sigma_to;
        *sigma_up = 0;
        return;
    }
    /* min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5) */
    float from2 = sigma_from * sigma_from, to2 = sigma_to * sigma_to;
    float up = (float)eta * sqrtf(to2 * (from2 - to2) / from2);
    if (sigma_to < up) up = sigma_to;
    *sigma_up = up;
    *sigma_down = sqrtf(to2 - up * up);
}

void ks_linspace_f32(float start, float end, int steps, float *out) {
    if (steps <= 0) return;
    if (steps == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(steps - 1);
    int halfway = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < halfway ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

void ks_karras_f32(int n, double sigma_min, double sigma_max, double rho, float *out) {
    /* sigma_min/max arrive as Python floats: the 1/rho powers are double, the ramp float32. */
    double min_inv_rho = pow(sigma_min, 1.0 / rho), max_inv_rho = pow(sigma_max, 1.0 / rho);
    float span = (float)(min_inv_rho - max_inv_rho), base = (float)max_inv_rho;
    ks_linspace_f32(0.0f, 1.0f, n, out);
    for (int i = 0; i < n; i++) out[i] = powf(base + out[i] * span, (float)rho);
    out[n] = 0.0f;
}
