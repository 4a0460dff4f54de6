/* schedule.h — the model's noise schedule: LDM's alphas_cumprod and k-diffusion's
 * discrete sigma table (CompVisDenoiser / DiscreteSchedule) with its fractional
 * sigma <-> timestep maps.
 *
 * LDM register_schedule: betas = linspace(sqrt(linear_start), sqrt(linear_end), T, float64)^2,
 * alphas_cumprod = cumprod(1 - betas) in float64, stored as float32. k-diffusion then works in
 * float32: sigmas = sqrt((1 - ac) / ac) (ascending, index = timestep), log_sigmas = log(sigmas).
 * SD 1.x, SD 2.x and SDXL all use linear_start 0.00085, linear_end 0.012, T = 1000. */
#ifndef KILN_SAMPLE_SCHEDULE_H
#define KILN_SAMPLE_SCHEDULE_H

#include "model/model_config.h" /* kiln_prediction */

#define KILN_SCHEDULE_MAX_T 1000

typedef struct kiln_schedule {
    int n_timesteps;                                /* T (1000) */
    kiln_prediction prediction;                     /* eps, or v for SD 2.x v-models */
    double alphas_cumprod_f64[KILN_SCHEDULE_MAX_T]; /* before the float32 cast */
    float alphas_cumprod[KILN_SCHEDULE_MAX_T];      /* what the model holds */
    float sigmas[KILN_SCHEDULE_MAX_T];              /* sqrt((1-ac)/ac), ascending */
    float log_sigmas[KILN_SCHEDULE_MAX_T];
    float sigma_min, sigma_max;                     /* sigmas[0], sigmas[T-1] */
} kiln_schedule;

/* Builds the schedule of an LDM "linear" beta schedule. KILN_EINVAL for T outside
 * [2, KILN_SCHEDULE_MAX_T] or betas outside (0, 1). */
int kiln_schedule_init(kiln_schedule *s, double linear_start, double linear_end, int n_timesteps,
                       kiln_prediction prediction);
/* The Stable Diffusion schedule (0.00085, 0.012, 1000). */
void kiln_schedule_init_sd(kiln_schedule *s, kiln_prediction prediction);

/* k-diffusion DiscreteSchedule.sigma_to_t(sigma, quantize=False): piecewise linear in
 * log sigma between neighbouring timesteps, clamped to [0, T-1], in float32. */
float kiln_sigma_to_t(const kiln_schedule *s, float sigma);
/* DiscreteSchedule.t_to_sigma(t): exp of the linear interpolation of log_sigmas, float32.
 * t is clamped to [0, T-1]. */
float kiln_t_to_sigma(const kiln_schedule *s, float t);

/* k-diffusion's denoiser scalings at sigma (sigma_data = 1), float32:
 *  eps (CompVisDenoiser):        c_skip = 1,               c_out = -sigma,
 *  v (DiscreteVDDPMDenoiser):    c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1),
 *  both:                         c_in = 1 / sqrt(sigma^2 + 1).
 * The denoiser is out = UNet(x * c_in, sigma_to_t(sigma)); eps: denoised = x + out * c_out;
 * v: denoised = out * c_out + x * c_skip (k-diffusion's operand order). */
void kiln_schedule_scalings(const kiln_schedule *s, float sigma, float *c_skip, float *c_out, float *c_in);

#endif
