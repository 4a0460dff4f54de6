/* sampler_internal.h — what the sampler files share: checked callback wrappers, scratch
 * buffers, and the float32 scalar helpers that mirror k-diffusion's 0-d tensor arithmetic.
 * Private to src/sample/sampler_*.c. */
#ifndef KILN_SAMPLE_SAMPLER_INTERNAL_H
#define KILN_SAMPLE_SAMPLER_INTERNAL_H

#include "core/error.h"
#include "sample/sampler.h"

#include <math.h>
#include <stddef.h>

/* Callback wrappers: count calls, catch a NULL callback, turn a cancel into KILN_ECANCELLED. */
int ks_denoise(kiln_sampler_io *io, const float *x, float sigma, float *denoised);
int ks_eps(kiln_sampler_io *io, const float *x, double t, float *eps);
int ks_randn(kiln_sampler_io *io, float *out);
int ks_brownian(kiln_sampler_io *io, float sigma, float sigma_next, float *out);
int ks_step(kiln_sampler_io *io, int step, int total, const float *x, const float *denoised);

/* count scratch vectors of io->n floats in one allocation (bufs[0..count-1]); free with
 * ks_free(bufs[0]). Returns KILN_ENOMEM with a message on failure. */
int ks_alloc(const kiln_sampler_io *io, int count, float **bufs);
void ks_free(float *first);

/* k-diffusion's get_ancestral_step in float32: sigma_down, sigma_up for eta. */
void ks_ancestral_step(float sigma_from, float sigma_to, double eta, float *sigma_down, float *sigma_up);
/* The ancestral samplers' noise: x += randn_like(x) * s_noise * sigma_up (draws the next generator value into noise). */
int ks_add_noise(kiln_sampler_io *io, float *x, float *noise, float sigma_up);

/* torch.linspace(start, end, steps) in float32 (same halfway split as PyTorch's CPU kernel). */
void ks_linspace_f32(float start, float end, int steps, float *out);

/* k-diffusion's get_sigmas_karras(n, sigma_min, sigma_max, rho) with its trailing 0: n + 1
 * values, float32 as torch computes them (Restart builds its own schedules). */
void ks_karras_f32(int n, double sigma_min, double sigma_max, double rho, float *out);

/* x + d * dt, elementwise (k-diffusion's Euler update). */
static inline void ks_axpy(size_t n, float *x, const float *d, float dt) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] + d[i] * dt;
}

/* d = (x - denoised) / sigma (k-diffusion's to_d). */
static inline void ks_to_d(size_t n, const float *x, const float *denoised, float sigma, float *d) {
    for (size_t i = 0; i < n; i++) d[i] = (x[i] - denoised[i]) / sigma;
}

/* The start of a churned Euler/Heun/DPM2 step: draw eps (always, as k-diffusion at ab527a9
 * does, so the generator advances), raise sigma to sigma_hat and add the matching noise. */
int ks_churn(kiln_sampler_io *io, const float *sigmas, int n_sigmas, int i, float *x, float *eps, float *sigma_hat);

/* Per-sampler entry points (sigmas already converted to float32). */
int ks_sample_euler(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_euler_ancestral(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_heun(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpm_2(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpm_2_ancestral(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpmpp_2s_ancestral(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpmpp_2m(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpmpp_sde(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpmpp_2m_sde(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x, int heun);
int ks_sample_dpmpp_3m_sde(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_lms(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_dpm_fast(kiln_sampler_io *io, float sigma_min, float sigma_max, int n, float *x);
int ks_sample_dpm_adaptive(kiln_sampler_io *io, float sigma_min, float sigma_max, float *x);
int ks_sample_restart(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_lcm(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x);
int ks_sample_ddim(kiln_sampler_io *io, const int *timesteps, int n_timesteps, float *x);
int ks_sample_plms(kiln_sampler_io *io, const int *timesteps, int n_timesteps, float *x);
int ks_sample_unipc(kiln_sampler_io *io, const int *timesteps, int n_timesteps, float *x);

#endif
