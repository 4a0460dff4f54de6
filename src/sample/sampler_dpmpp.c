/* sampler_dpmpp.c — k-diffusion's DPM-Solver++ family: 2S ancestral, 2M, SDE (the stochastic
 * single-step one), 2M SDE (midpoint and Heun variants) and 3M SDE. All work in
 * t = -log(sigma); scalars are float32 as k-diffusion's 0-d tensors are. */
#include "sample/sampler_internal.h"

#include <string.h>

static float t_fn(float sigma) { return -logf(sigma); }
static float sigma_fn(float t) { return expf(-t); }

int ks_sample_dpmpp_2s_ancestral(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[4];
    KILN_TRY(ks_alloc(io, 4, b));
    float *denoised = b[0], *d = b[1], *x2 = b[2], *noise = b[3];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        float sigma_down, sigma_up;
        ks_ancestral_step(sigmas[i], sigmas[i + 1], io->eta, &sigma_down, &sigma_up);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        if (sigma_down == 0) {
            ks_to_d(n, x, denoised, sigmas[i], d);
            ks_axpy(n, x, d, sigma_down - sigmas[i]);
        } else {
            float t = t_fn(sigmas[i]), t_next = t_fn(sigma_down);
            float h = t_next - t, s = t + 0.5f * h;
            float a1 = sigma_fn(s) / sigma_fn(t), c1 = expm1f(-h * 0.5f);
            for (size_t k = 0; k < n; k++) x2[k] = a1 * x[k] - c1 * denoised[k];
            if ((rc = ks_denoise(io, x2, sigma_fn(s), denoised)) < 0) break;
            float a2 = sigma_fn(t_next) / sigma_fn(t), c2 = expm1f(-h);
            for (size_t k = 0; k < n; k++) x[k] = a2 * x[k] - c2 * denoised[k];
        }
        if (sigmas[i + 1] > 0 && (rc = ks_add_noise(io, x, noise, sigma_up)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}

int ks_sample_dpmpp_sde(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[5];
    KILN_TRY(ks_alloc(io, 5, b));
    float *denoised = b[0], *d = b[1], *x2 = b[2], *denoised2 = b[3], *noise = b[4];
    size_t n = io->n;
    const float r = 0.5f, fac = 1.0f; /* fac = 1 / (2 r) */
    float s_noise = (float)io->s_noise;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        if (sigmas[i + 1] == 0) {
            ks_to_d(n, x, denoised, sigmas[i], d);
            ks_axpy(n, x, d, sigmas[i + 1] - sigmas[i]);
            continue;
        }
        float t = t_fn(sigmas[i]), t_next = t_fn(sigmas[i + 1]);
        float h = t_next - t, s = t + h * r;
        float sig_t = sigma_fn(t), sig_s = sigma_fn(s);

        /* step 1: ancestral half step to s */
        float sd, su;
        ks_ancestral_step(sig_t, sig_s, io->eta, &sd, &su);
        float s_ = t_fn(sd);
        float a1 = sigma_fn(s_) / sig_t, c1 = expm1f(t - s_);
        for (size_t k = 0; k < n; k++) x2[k] = a1 * x[k] - c1 * denoised[k];
        if ((rc = ks_brownian(io, sig_t, sig_s, noise)) < 0) break;
        for (size_t k = 0; k < n; k++) x2[k] = x2[k] + noise[k] * s_noise * su;
        if ((rc = ks_denoise(io, x2, sig_s, denoised2)) < 0) break;

        /* step 2: full step with the blended denoised */
        ks_ancestral_step(sig_t, sigma_fn(t_next), io->eta, &sd, &su);
        float t_next_ = t_fn(sd);
        float a2 = sigma_fn(t_next_) / sig_t, c2 = expm1f(t - t_next_);
        for (size_t k = 0; k < n; k++) {
            float dd = (1 - fac) * denoised[k] + fac * denoised2[k];
            x[k] = a2 * x[k] - c2 * dd;
        }
        if ((rc = ks_brownian(io, sig_t, sigma_fn(t_next), noise)) < 0) break;
        for (size_t k = 0; k < n; k++) x[k] = x[k] + noise[k] * s_noise * su;
    }
    ks_free(b[0]);
    return rc;
}

int ks_sample_dpmpp_2m(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[2];
    KILN_TRY(ks_alloc(io, 2, b));
    float *base = b[0], *denoised = b[0], *old = b[1];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0, have_old = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        float t = t_fn(sigmas[i]), t_next = t_fn(sigmas[i + 1]);
        float h = t_next - t;
        float a = sigma_fn(t_next) / sigma_fn(t), c = expm1f(-h);
        if (!have_old || sigmas[i + 1] == 0) {
            /* onto sigma 0: t_next = inf, a = 0, c = -1, so x becomes denoised */
            for (size_t k = 0; k < n; k++) x[k] = a * x[k] - c * denoised[k];
        } else {
            float h_last = t - t_fn(sigmas[i - 1]);
            float r = h_last / h;
            float w_old = 1 / (2 * r), w_new = 1 + 1 / (2 * r);
            for (size_t k = 0; k < n; k++) {
                float dd = w_new * denoised[k] - w_old * old[k];
                x[k] = a * x[k] - c * dd;
            }
        }
        float *tmp = old;
        old = denoised;
        denoised = tmp;
        have_old = 1;
    }
    ks_free(base);
    return rc;
}

int ks_sample_dpmpp_2m_sde(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x, int heun) {
    float *b[3];
    KILN_TRY(ks_alloc(io, 3, b));
    float *base = b[0], *denoised = b[0], *old = b[1], *noise = b[2];
    size_t n = io->n;
    float eta = (float)io->eta, s_noise = (float)io->s_noise, h_last = 0;
    int steps = n_sigmas - 1, rc = 0, have_old = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        float h = h_last;
        if (sigmas[i + 1] == 0) {
            memcpy(x, denoised, n * sizeof *x); /* denoising step */
        } else {
            float t = -logf(sigmas[i]), s = -logf(sigmas[i + 1]);
            h = s - t;
            float eta_h = eta * h;
            float a = sigmas[i + 1] / sigmas[i] * expf(-eta_h);
            float c = -expm1f(-h - eta_h);
            for (size_t k = 0; k < n; k++) x[k] = a * x[k] + c * denoised[k];
            if (have_old) {
                float r = h_last / h, w;
                if (heun)
                    w = (-expm1f(-h - eta_h) / (-h - eta_h) + 1) * (1 / r);
                else
                    w = 0.5f * -expm1f(-h - eta_h) * (1 / r);
                for (size_t k = 0; k < n; k++) x[k] = x[k] + w * (denoised[k] - old[k]);
            }
            if (io->eta != 0) {
                if ((rc = ks_brownian(io, sigmas[i], sigmas[i + 1], noise)) < 0) break;
                float amp = sqrtf(-expm1f(-2 * eta_h));
                for (size_t k = 0; k < n; k++) x[k] = x[k] + noise[k] * sigmas[i + 1] * amp * s_noise;
            }
        }
        float *tmp = old;
        old = denoised;
        denoised = tmp;
        have_old = 1;
        h_last = h;
    }
    ks_free(base);
    return rc;
}

int ks_sample_dpmpp_3m_sde(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[4];
    KILN_TRY(ks_alloc(io, 4, b));
    float *base = b[0], *denoised = b[0], *den1 = b[1], *den2 = b[2], *noise = b[3];
    size_t n = io->n;
    float eta = (float)io->eta, s_noise = (float)io->s_noise;
    float h = 0, h_1 = 0, h_2 = 0;
    int have_h1 = 0, have_h2 = 0, have_h = 0;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        if (sigmas[i + 1] == 0) {
            memcpy(x, denoised, n * sizeof *x);
        } else {
            float t = -logf(sigmas[i]), s = -logf(sigmas[i + 1]);
            h = s - t;
            have_h = 1;
            float h_eta = h * (eta + 1);
            float a = expf(-h_eta), c = -expm1f(-h_eta);
            for (size_t k = 0; k < n; k++) x[k] = a * x[k] + c * denoised[k];
            if (have_h2) {
                float r0 = h_1 / h, r1 = h_2 / h;
                float phi_2 = expm1f(-h_eta) / h_eta + 1;
                float phi_3 = phi_2 / h_eta - 0.5f;
                for (size_t k = 0; k < n; k++) {
                    float d1_0 = (denoised[k] - den1[k]) / r0;
                    float d1_1 = (den1[k] - den2[k]) / r1;
                    float d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1);
                    float d2 = (d1_0 - d1_1) / (r0 + r1);
                    x[k] = x[k] + phi_2 * d1 - phi_3 * d2;
                }
            } else if (have_h1) {
                float r = h_1 / h;
                float phi_2 = expm1f(-h_eta) / h_eta + 1;
                for (size_t k = 0; k < n; k++) {
                    float d = (denoised[k] - den1[k]) / r;
                    x[k] = x[k] + phi_2 * d;
                }
            }
            if (io->eta != 0) {
                if ((rc = ks_brownian(io, sigmas[i], sigmas[i + 1], noise)) < 0) break;
                float amp = sqrtf(-expm1f(-2 * h * eta));
                for (size_t k = 0; k < n; k++) x[k] = x[k] + noise[k] * sigmas[i + 1] * amp * s_noise;
            }
        }
        /* rotate: denoised_1, denoised_2 = denoised, denoised_1; h_1, h_2 = h, h_1 (h keeps its
           last value on the final denoising step, as in k-diffusion) */
        float *tmp = den2;
        den2 = den1;
        den1 = denoised;
        denoised = tmp;
        h_2 = h_1;
        have_h2 = have_h1;
        h_1 = h;
        have_h1 = have_h;
    }
    ks_free(base);
    return rc;
}
