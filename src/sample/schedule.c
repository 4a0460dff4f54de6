/* schedule.c — alphas_cumprod, sigmas and the sigma <-> t maps; see schedule.h. The
 * float32 steps follow torch's order of operations one by one, so every intermediate is
 * rounded where the reference rounds it. */
#include "sample/schedule.h"

#include <math.h>

#include "core/error.h"

/* The reference rounds every product and sum separately: no fused multiply-adds. GCC does
 * not fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

int kiln_schedule_init(kiln_schedule *s, double linear_start, double linear_end, int n_timesteps,
                       kiln_prediction prediction) {
    if (n_timesteps < 2 || n_timesteps > KILN_SCHEDULE_MAX_T)
        return kiln_error(KILN_EINVAL, "schedule: %d timesteps (kiln handles 2..%d)", n_timesteps,
                          KILN_SCHEDULE_MAX_T);
    if (!(linear_start > 0 && linear_end > 0 && linear_start < 1 && linear_end < 1))
        return kiln_error(KILN_EINVAL, "schedule: betas %g..%g must lie in (0, 1)", linear_start, linear_end);
    s->n_timesteps = n_timesteps;
    s->prediction = prediction;
    /* torch.linspace(float64): the first half counts up from start, the second half down
     * from end, each from a step computed once. */
    double a = sqrt(linear_start), b = sqrt(linear_end);
    double step = (b - a) / (double)(n_timesteps - 1);
    int halfway = n_timesteps / 2;
    double ac = 1.0;
    for (int i = 0; i < n_timesteps; i++) {
        double r = i < halfway ? a + step * (double)i : b - step * (double)(n_timesteps - 1 - i);
        double beta = r * r;
        ac *= 1.0 - beta;
        s->alphas_cumprod_f64[i] = ac;
        s->alphas_cumprod[i] = (float)ac;
        float acf = s->alphas_cumprod[i];
        s->sigmas[i] = sqrtf((1.0f - acf) / acf);
        s->log_sigmas[i] = logf(s->sigmas[i]);
    }
    s->sigma_min = s->sigmas[0];
    s->sigma_max = s->sigmas[n_timesteps - 1];
    return KILN_OK;
}

void kiln_schedule_init_sd(kiln_schedule *s, kiln_prediction prediction) {
    (void)kiln_schedule_init(s, 0.00085, 0.012, 1000, prediction);
}

float kiln_sigma_to_t(const kiln_schedule *s, float sigma) {
    float log_sigma = logf(sigma);
    int n = s->n_timesteps;
    /* low_idx = dists.ge(0).cumsum(0).argmax(0): the last timestep whose log sigma is
     * <= log_sigma (0 when there is none), at most T-2. */
    int low = 0;
    for (int i = 0; i < n; i++)
        if (log_sigma - s->log_sigmas[i] >= 0.0f) low = i;
    if (low > n - 2) low = n - 2;
    int high = low + 1;
    float lo = s->log_sigmas[low], hi = s->log_sigmas[high];
    float w = (lo - log_sigma) / (lo - hi);
    if (w < 0.0f) w = 0.0f;
    if (w > 1.0f) w = 1.0f;
    if (w != w) w = 0.0f; /* sigma NaN; torch would give NaN, kiln returns a timestep */
    float t = (1.0f - w) * (float)low + w * (float)high;
    return t;
}

float kiln_t_to_sigma(const kiln_schedule *s, float t) {
    int n = s->n_timesteps;
    if (!(t >= 0.0f)) t = 0.0f;
    if (t > (float)(n - 1)) t = (float)(n - 1);
    int low = (int)floorf(t), high = (int)ceilf(t);
    float w = t - truncf(t);
    float log_sigma = (1.0f - w) * s->log_sigmas[low] + w * s->log_sigmas[high];
    return expf(log_sigma);
}

void kiln_schedule_scalings(const kiln_schedule *s, float sigma, float *c_skip, float *c_out, float *c_in) {
    float d = sigma * sigma + 1.0f;
    float root = sqrtf(d);
    *c_in = 1.0f / root;
    if (s->prediction == KILN_PREDICT_V) {
        *c_skip = 1.0f / d;
        *c_out = -sigma / root;
    } else {
        *c_skip = 1.0f;
        *c_out = -sigma;
    }
}
