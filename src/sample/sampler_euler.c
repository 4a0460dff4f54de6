/* sampler_euler.c — k-diffusion's Euler, Euler ancestral and Heun samplers (Karras et al. 2022,
 * Algorithm 2), float32 in k-diffusion's operation order. */
#include "sample/sampler_internal.h"

/* Karras "churn": gamma for step i, k-diffusion's expression with Python doubles. */
static double churn_gamma(const kiln_sampler_io *io, float sigma, int n_steps) {
    if (io->s_tmin <= sigma && sigma <= io->s_tmax) {
        double g = io->s_churn / n_steps, cap = sqrt(2.0) - 1;
        return g < cap ? g : cap;
    }
    return 0.0;
}

int ks_churn(kiln_sampler_io *io, const float *sigmas, int n_sigmas, int i, float *x, float *eps, float *hat) {
    size_t n = io->n;
    double gamma = churn_gamma(io, sigmas[i], n_sigmas - 1);
    KILN_TRY(ks_randn(io, eps));
    if (io->s_noise != 1.0)
        for (size_t k = 0; k < n; k++) eps[k] = eps[k] * (float)io->s_noise;
    float sigma_hat = sigmas[i] * (float)(gamma + 1);
    if (gamma > 0) {
        float amp = sqrtf(sigma_hat * sigma_hat - sigmas[i] * sigmas[i]);
        for (size_t k = 0; k < n; k++) x[k] = x[k] + eps[k] * amp;
    }
    *hat = sigma_hat;
    return 0;
}

int ks_sample_euler(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[3];
    KILN_TRY(ks_alloc(io, 3, b));
    float *denoised = b[0], *d = b[1], *eps = b[2];
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps && rc == 0; i++) {
        float sigma_hat;
        if ((rc = ks_churn(io, sigmas, n_sigmas, i, x, eps, &sigma_hat)) < 0) break;
        if ((rc = ks_denoise(io, x, sigma_hat, denoised)) < 0) break;
        ks_to_d(io->n, x, denoised, sigma_hat, d);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        ks_axpy(io->n, x, d, sigmas[i + 1] - sigma_hat);
    }
    ks_free(b[0]);
    return rc;
}

int ks_sample_euler_ancestral(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[3];
    KILN_TRY(ks_alloc(io, 3, b));
    float *denoised = b[0], *d = b[1], *noise = b[2];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        float sigma_down, sigma_up;
        ks_ancestral_step(sigmas[i], sigmas[i + 1], io->eta, &sigma_down, &sigma_up);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        ks_to_d(n, x, denoised, sigmas[i], d);
        ks_axpy(n, x, d, sigma_down - sigmas[i]);
        if (sigmas[i + 1] > 0 && (rc = ks_add_noise(io, x, noise, sigma_up)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}

int ks_sample_heun(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[5];
    KILN_TRY(ks_alloc(io, 5, b));
    float *denoised = b[0], *d = b[1], *eps = b[2], *x2 = b[3], *d2 = b[4];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        float sigma_hat;
        if ((rc = ks_churn(io, sigmas, n_sigmas, i, x, eps, &sigma_hat)) < 0) break;
        if ((rc = ks_denoise(io, x, sigma_hat, denoised)) < 0) break;
        ks_to_d(n, x, denoised, sigma_hat, d);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        float dt = sigmas[i + 1] - sigma_hat;
        if (sigmas[i + 1] == 0) {
            ks_axpy(n, x, d, dt); /* Euler onto sigma 0 */
            continue;
        }
        for (size_t k = 0; k < n; k++) x2[k] = x[k] + d[k] * dt;
        if ((rc = ks_denoise(io, x2, sigmas[i + 1], denoised)) < 0) break;
        ks_to_d(n, x2, denoised, sigmas[i + 1], d2);
        for (size_t k = 0; k < n; k++) x[k] = x[k] + ((d[k] + d2[k]) / 2) * dt;
    }
    ks_free(b[0]);
    return rc;
}
