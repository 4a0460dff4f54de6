/* sampler_dpm.c — k-diffusion's DPM2 and DPM2 ancestral samplers: a midpoint (DPM-Solver-2
 * style) step in log sigma, with a plain Euler step onto sigma 0. */
#include "sample/sampler_internal.h"

/* exp(lerp(log a, log b, 0.5)) as torch computes it: lerp with weight 0.5 takes the
 * "end - (end - self) * (1 - w)" branch. */
static float log_midpoint(float a, float b) {
    float la = logf(a), lb = logf(b);
    return expf(lb - (lb - la) * 0.5f);
}

/* x += d2 * dt_2 where d2 is the derivative at the midpoint x + d * dt_1. */
static int midpoint_step(kiln_sampler_io *io, float *x, const float *d, float sigma, float sigma_mid,
                         float sigma_to, float *x2, float *denoised, float *d2) {
    size_t n = io->n;
    float dt_1 = sigma_mid - sigma, dt_2 = sigma_to - sigma;
    for (size_t k = 0; k < n; k++) x2[k] = x[k] + d[k] * dt_1;
    KILN_TRY(ks_denoise(io, x2, sigma_mid, denoised));
    ks_to_d(n, x2, denoised, sigma_mid, d2);
    ks_axpy(n, x, d2, dt_2);
    return 0;
}

int ks_sample_dpm_2(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[5];
    KILN_TRY(ks_alloc(io, 5, b));
    float *denoised = b[0], *d = b[1], *eps = b[2], *x2 = b[3], *d2 = b[4];
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        float sigma_hat;
        if ((rc = ks_churn(io, sigmas, n_sigmas, i, x, eps, &sigma_hat)) < 0) break;
        if ((rc = ks_denoise(io, x, sigma_hat, denoised)) < 0) break;
        ks_to_d(io->n, x, denoised, sigma_hat, d);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        if (sigmas[i + 1] == 0) {
            ks_axpy(io->n, x, d, sigmas[i + 1] - sigma_hat);
            continue;
        }
        float sigma_mid = log_midpoint(sigma_hat, sigmas[i + 1]);
        if ((rc = midpoint_step(io, x, d, sigma_hat, sigma_mid, sigmas[i + 1], x2, denoised, d2)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}

int ks_sample_dpm_2_ancestral(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[5];
    KILN_TRY(ks_alloc(io, 5, b));
    float *denoised = b[0], *d = b[1], *noise = b[2], *x2 = b[3], *d2 = b[4];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        float sigma_down, sigma_up;
        ks_ancestral_step(sigmas[i], sigmas[i + 1], io->eta, &sigma_down, &sigma_up);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        ks_to_d(n, x, denoised, sigmas[i], d);
        if (sigma_down == 0) {
            ks_axpy(n, x, d, sigma_down - sigmas[i]);
            continue;
        }
        float sigma_mid = log_midpoint(sigmas[i], sigma_down);
        if ((rc = midpoint_step(io, x, d, sigmas[i], sigma_mid, sigma_down, x2, denoised, d2)) < 0) break;
        /* the noise is added inside the midpoint branch only (k-diffusion ab527a9) */
        if ((rc = ks_add_noise(io, x, noise, sigma_up)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}
