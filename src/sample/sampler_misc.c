/* sampler_misc.c — the remaining k-diffusion-style samplers: LMS (linear multistep), DPM fast
 * and DPM adaptive (k-diffusion's DPMSolver class), A1111's Restart (sd_samplers_extra.py) and
 * LCM (sd_samplers_lcm.py), plus the LCM denoiser helpers. */
#include "sample/sampler_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- LMS ---- */

/* Integral over [t[i], t[i+1]] of the Lagrange basis polynomial j of the points t[i-k],
 * k < order (k-diffusion's linear_multistep_coeff; scipy's quad is exact on these cubics, and
 * so is 3-point Gauss-Legendre). The node differences are float32, as numpy computes them. */
static double lms_coeff(int order, const float *t, int i, int j) {
    static const double gx[3] = {-0.7745966692414834, 0.0, 0.7745966692414834};
    static const double gw[3] = {5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0};
    double a = t[i], b = t[i + 1], sum = 0;
    for (int g = 0; g < 3; g++) {
        double tau = 0.5 * (b - a) * gx[g] + 0.5 * (a + b), prod = 1;
        for (int k = 0; k < order; k++) {
            if (k == j) continue;
            prod *= (tau - t[i - k]) / (double)(float)(t[i - j] - t[i - k]);
        }
        sum += gw[g] * prod;
    }
    return 0.5 * (b - a) * sum;
}

int ks_sample_lms(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    enum { ORDER = 4 };
    float *b[2 + ORDER];
    KILN_TRY(ks_alloc(io, 2 + ORDER, b));
    float *denoised = b[0], *acc = b[1], *ds[ORDER]; /* ds[0] = newest */
    for (int k = 0; k < ORDER; k++) ds[k] = b[2 + k];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        if ((rc = ks_denoise(io, x, sigmas[i], denoised)) < 0) break;
        float *oldest = ds[ORDER - 1];
        memmove(ds + 1, ds, (ORDER - 1) * sizeof ds[0]);
        ds[0] = oldest;
        ks_to_d(n, x, denoised, sigmas[i], ds[0]);
        if ((rc = ks_step(io, i, steps, x, denoised)) < 0) break;
        int cur = i + 1 < ORDER ? i + 1 : ORDER;
        /* x + sum(coeff * d): Python's sum starts at 0 and adds in order */
        for (int j = 0; j < cur; j++) {
            float c = (float)lms_coeff(cur, sigmas, i, j);
            if (j == 0)
                for (size_t k = 0; k < n; k++) acc[k] = c * ds[0][k];
            else
                for (size_t k = 0; k < n; k++) acc[k] = acc[k] + c * ds[j][k];
        }
        for (size_t k = 0; k < n; k++) x[k] = x[k] + acc[k];
    }
    ks_free(b[0]);
    return rc;
}

/* ---- DPM-Solver (fast and adaptive), in t = -log(sigma) ---- */

typedef struct dpm_solver {
    kiln_sampler_io *io;
    float *eps, *eps_r1, *eps_r2, *u; /* eps cache of one step and a scratch input */
    int have_r1;
} dpm_solver;

static float dpm_sigma(float t) { return expf(-t); }
static float dpm_t(float sigma) { return -logf(sigma); }

/* eps = (x - D(x, sigma(t))) / sigma(t) */
static int dpm_eps(dpm_solver *ds, const float *x, float t, float *eps) {
    float sigma = dpm_sigma(t);
    KILN_TRY(ks_denoise(ds->io, x, sigma, eps));
    for (size_t k = 0; k < ds->io->n; k++) eps[k] = (x[k] - eps[k]) / sigma;
    return 0;
}

static void dpm_1_step(dpm_solver *ds, const float *x, float t, float t_next, float *out) {
    float h = t_next - t, a = dpm_sigma(t_next) * expm1f(h);
    for (size_t k = 0; k < ds->io->n; k++) out[k] = x[k] - a * ds->eps[k];
}

static int dpm_2_step(dpm_solver *ds, const float *x, float t, float t_next, double r1, float *out) {
    size_t n = ds->io->n;
    float h = t_next - t;
    if (!ds->have_r1) {
        float s1 = t + (float)r1 * h, a = dpm_sigma(s1) * expm1f((float)r1 * h);
        for (size_t k = 0; k < n; k++) ds->u[k] = x[k] - a * ds->eps[k];
        KILN_TRY(dpm_eps(ds, ds->u, s1, ds->eps_r1));
        ds->have_r1 = 1;
    }
    float a = dpm_sigma(t_next) * expm1f(h), b = dpm_sigma(t_next) / (float)(2 * r1) * expm1f(h);
    for (size_t k = 0; k < n; k++) out[k] = x[k] - a * ds->eps[k] - b * (ds->eps_r1[k] - ds->eps[k]);
    return 0;
}

static int dpm_3_step(dpm_solver *ds, const float *x, float t, float t_next, float *out) {
    size_t n = ds->io->n;
    const double r1 = 1.0 / 3, r2 = 2.0 / 3;
    float h = t_next - t;
    float s1 = t + (float)r1 * h, s2 = t + (float)r2 * h;
    if (!ds->have_r1) {
        float a = dpm_sigma(s1) * expm1f((float)r1 * h);
        for (size_t k = 0; k < n; k++) ds->u[k] = x[k] - a * ds->eps[k];
        KILN_TRY(dpm_eps(ds, ds->u, s1, ds->eps_r1));
        ds->have_r1 = 1;
    }
    float r2h = (float)r2 * h;
    float a2 = dpm_sigma(s2) * expm1f(r2h);
    float b2 = dpm_sigma(s2) * (float)(r2 / r1) * (expm1f(r2h) / r2h - 1);
    for (size_t k = 0; k < n; k++) ds->u[k] = x[k] - a2 * ds->eps[k] - b2 * (ds->eps_r1[k] - ds->eps[k]);
    KILN_TRY(dpm_eps(ds, ds->u, s2, ds->eps_r2));
    float a = dpm_sigma(t_next) * expm1f(h), c = dpm_sigma(t_next) / (float)r2 * (expm1f(h) / h - 1);
    for (size_t k = 0; k < n; k++) out[k] = x[k] - a * ds->eps[k] - c * (ds->eps_r2[k] - ds->eps[k]);
    return 0;
}

/* Ancestral variant: the deterministic target t_next_ and the noise amplitude su. */
static void dpm_ancestral(double eta, float t, float t_next, float t_end, float *t_next_, float *su) {
    if (eta == 0) {
        *t_next_ = t_next;
        *su = 0;
        return;
    }
    float sd, up;
    ks_ancestral_step(dpm_sigma(t), dpm_sigma(t_next), eta, &sd, &up);
    float td = dpm_t(sd);
    *t_next_ = t_end < td ? t_end : td;
    float a = dpm_sigma(t_next), b = dpm_sigma(*t_next_);
    *su = sqrtf(a * a - b * b);
}

int ks_sample_dpm_fast(kiln_sampler_io *io, float sigma_min, float sigma_max, int nfe, float *x) {
    float *b[7];
    KILN_TRY(ks_alloc(io, 7, b));
    dpm_solver ds = {io, b[0], b[1], b[2], b[3], 0};
    float *denoised = b[4], *xn = b[5], *noise = b[6];
    size_t n = io->n;
    float t_start = dpm_t(sigma_max), t_end = dpm_t(sigma_min);
    int m = nfe / 3 + 1, rc = 0;
    float *ts = malloc((size_t)(m + 1) * sizeof *ts);
    int *orders = malloc((size_t)m * sizeof *orders);
    if (!ts || !orders) {
        rc = kiln_error(KILN_ENOMEM, "DPM fast: out of memory");
        goto done;
    }
    ks_linspace_f32(t_start, t_end, m + 1, ts);
    int n_orders = 0;
    if (nfe % 3 == 0) {
        for (int i = 0; i < m - 2; i++) orders[n_orders++] = 3;
        orders[n_orders++] = 2;
        orders[n_orders++] = 1;
    } else {
        for (int i = 0; i < m - 1; i++) orders[n_orders++] = 3;
        orders[n_orders++] = nfe % 3;
    }
    for (int i = 0; i < n_orders; i++) {
        float t = ts[i], t_next = ts[i + 1], t_next_, su;
        dpm_ancestral(io->eta, t, t_next, t_end, &t_next_, &su);
        ds.have_r1 = 0;
        if ((rc = dpm_eps(&ds, x, t, ds.eps)) < 0) break;
        float sig = dpm_sigma(t);
        for (size_t k = 0; k < n; k++) denoised[k] = x[k] - sig * ds.eps[k];
        if ((rc = ks_step(io, i, n_orders, x, denoised)) < 0) break;
        if (orders[i] == 1)
            dpm_1_step(&ds, x, t, t_next_, xn);
        else if (orders[i] == 2)
            rc = dpm_2_step(&ds, x, t, t_next_, 0.5, xn);
        else
            rc = dpm_3_step(&ds, x, t, t_next_, xn);
        if (rc < 0) break;
        /* k-diffusion draws here even when eta is 0 (su = 0) */
        if ((rc = ks_randn(io, noise)) < 0) break;
        float amp = su * (float)io->s_noise;
        for (size_t k = 0; k < n; k++) x[k] = xn[k] + amp * noise[k];
    }
done:
    free(ts);
    free(orders);
    ks_free(b[0]);
    return rc;
}

int ks_sample_dpm_adaptive(kiln_sampler_io *io, float sigma_min, float sigma_max, float *x) {
    /* k-diffusion defaults: order 3, rtol 0.05, atol 0.0078, h_init 0.05, PID (0, 1, 0), safety 0.81 */
    const float rtol = 0.05f, atol = 0.0078f;
    const double accept_safety = 0.81, pid_eps = 1e-8;
    float *b[9];
    KILN_TRY(ks_alloc(io, 9, b));
    dpm_solver ds = {io, b[0], b[1], b[2], b[3], 0};
    float *denoised = b[4], *x_low = b[5], *x_high = b[6], *x_prev = b[7], *noise = b[8];
    size_t n = io->n;
    float t_start = dpm_t(sigma_max), t_end = dpm_t(sigma_min);
    double order = io->eta != 0 ? 1.5 : 3.0;
    double b1 = 1.0 / order, b2 = -0.0 / order, b3 = 0.0 / order; /* (p + i + d)/o, -(p + 2d)/o, d/o */
    double h = 0.05, errs[3] = {0, 0, 0};
    int have_errs = 0, steps = 0, rc = 0;
    float s = t_start;
    memcpy(x_prev, x, n * sizeof *x);
    while (s < t_end - 1e-5f) {
        float t = s + (float)h;
        if (t_end < t) t = t_end;
        float t_, su;
        dpm_ancestral(io->eta, s, t, t_end, &t_, &su);
        ds.have_r1 = 0;
        if ((rc = dpm_eps(&ds, x, s, ds.eps)) < 0) break;
        float sig = dpm_sigma(s);
        for (size_t k = 0; k < n; k++) denoised[k] = x[k] - sig * ds.eps[k];
        if ((rc = dpm_2_step(&ds, x, s, t_, 1.0 / 3, x_low)) < 0) break;
        if ((rc = dpm_3_step(&ds, x, s, t_, x_high)) < 0) break;
        double sq = 0;
        for (size_t k = 0; k < n; k++) {
            float m = fabsf(x_low[k]) > fabsf(x_prev[k]) ? fabsf(x_low[k]) : fabsf(x_prev[k]);
            float delta = rtol * m;
            if (delta < atol) delta = atol;
            float e = (x_low[k] - x_high[k]) / delta;
            sq += (double)e * e;
        }
        float error = (float)sqrt(sq) / (float)sqrt((double)n);
        /* PIDStepSizeController.propose_step (Python doubles) */
        double inv_error = 1.0 / ((double)error + pid_eps);
        if (!have_errs) errs[0] = errs[1] = errs[2] = inv_error, have_errs = 1;
        errs[0] = inv_error;
        double factor = pow(errs[0], b1) * pow(errs[1], b2) * pow(errs[2], b3);
        factor = 1 + atan(factor - 1);
        int accept = factor >= accept_safety;
        if (accept) {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        h *= factor;
        if (accept) {
            memcpy(x_prev, x_low, n * sizeof *x);
            /* k-diffusion draws on every accepted step, even with eta 0 (su = 0) */
            if ((rc = ks_randn(io, noise)) < 0) break;
            float amp = su * (float)io->s_noise;
            for (size_t k = 0; k < n; k++) x[k] = x_high[k] + amp * noise[k];
            s = t;
        }
        steps++;
        if ((rc = ks_step(io, steps - 1, 0, x, denoised)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}

/* ---- Restart (A1111 sd_samplers_extra.restart_sampler) ---- */

static int argmin_abs(const float *v, int n, float key) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (fabsf(v[i] - key) < fabsf(v[best] - key)) best = i;
    return best;
}

int ks_sample_restart(kiln_sampler_io *io, const float *sigmas_in, int n_sigmas, float *x) {
    int steps = n_sigmas - 1, rc = 0;
    int restart_steps = 0, restart_times = 0;
    /* the step list never exceeds `steps` pairs (restart segments replace main-schedule steps) */
    int cap = steps + 4;
    float *sig = malloc((size_t)(n_sigmas + 1) * sizeof *sig);
    float *pairs = malloc((size_t)(2 * cap) * sizeof *pairs);
    float *sr = NULL;
    if (!sig || !pairs) {
        free(sig);
        free(pairs);
        return kiln_error(KILN_ENOMEM, "Restart: out of memory");
    }
    int n_sig = n_sigmas;
    if (steps >= 20) {
        restart_steps = 9;
        restart_times = 1;
        if (steps >= 36) {
            restart_steps = steps / 4;
            restart_times = 2;
        }
        n_sig = steps - restart_steps * restart_times + 1;
        ks_karras_f32(n_sig - 1, sigmas_in[n_sigmas - 2], sigmas_in[0], 7.0, sig);
    } else {
        memcpy(sig, sigmas_in, (size_t)n_sigmas * sizeof *sig);
    }
    /* the step list: the main schedule, with restart segments inserted after the sigma nearest 0.1 */
    int restart_at = restart_times ? argmin_abs(sig, n_sig, 0.1f) : -1;
    int n_pairs = 0;
    for (int i = 0; i < n_sig - 1; i++) {
        if (n_pairs < cap) pairs[2 * n_pairs] = sig[i], pairs[2 * n_pairs + 1] = sig[i + 1], n_pairs++;
        if (i + 1 == restart_at) {
            int min_idx = i + 1, max_idx = argmin_abs(sig, n_sig, 2.0f);
            if (max_idx < min_idx) {
                int m = restart_steps + 1; /* A1111 stores restart_steps + 1 in its restart list */
                sr = malloc((size_t)(m + 1) * sizeof *sr);
                if (!sr) {
                    rc = kiln_error(KILN_ENOMEM, "Restart: out of memory");
                    goto done;
                }
                ks_karras_f32(m, sig[min_idx], sig[max_idx], 7.0, sr); /* [:-1] drops the 0 */
                for (int r = 0; r < restart_times; r++)
                    for (int k = 0; k + 1 < m && n_pairs < cap; k++)
                        pairs[2 * n_pairs] = sr[k], pairs[2 * n_pairs + 1] = sr[k + 1], n_pairs++;
            }
        }
    }
    float *b[5];
    if ((rc = ks_alloc(io, 5, b)) < 0) goto done;
    float *denoised = b[0], *d = b[1], *x2 = b[2], *d2 = b[3], *noise = b[4];
    size_t n = io->n;
    float last_sigma = 0;
    for (int p = 0; p < n_pairs; p++) {
        float old_sigma = pairs[2 * p], new_sigma = pairs[2 * p + 1];
        if (p == 0) {
            last_sigma = old_sigma;
        } else if (last_sigma < old_sigma) {
            /* restart: re-noise from last_sigma up to old_sigma */
            if ((rc = ks_randn(io, noise)) < 0) break;
            float amp = sqrtf(old_sigma * old_sigma - last_sigma * last_sigma), s_noise = (float)io->s_noise;
            for (size_t k = 0; k < n; k++) x[k] = x[k] + noise[k] * s_noise * amp;
        }
        /* heun_step */
        if ((rc = ks_denoise(io, x, old_sigma, denoised)) < 0) break;
        ks_to_d(n, x, denoised, old_sigma, d);
        if ((rc = ks_step(io, p, n_pairs, x, denoised)) < 0) break;
        float dt = new_sigma - old_sigma;
        if (new_sigma == 0) {
            ks_axpy(n, x, d, dt);
        } else {
            for (size_t k = 0; k < n; k++) x2[k] = x[k] + d[k] * dt;
            if ((rc = ks_denoise(io, x2, new_sigma, denoised)) < 0) break;
            ks_to_d(n, x2, denoised, new_sigma, d2);
            for (size_t k = 0; k < n; k++) x[k] = x[k] + ((d[k] + d2[k]) / 2) * dt;
        }
        last_sigma = new_sigma;
    }
    ks_free(b[0]);
done:
    free(sr);
    free(sig);
    free(pairs);
    return rc;
}

/* ---- LCM ---- */

int ks_sample_lcm(kiln_sampler_io *io, const float *sigmas, int n_sigmas, float *x) {
    float *b[1];
    KILN_TRY(ks_alloc(io, 1, b));
    float *noise = b[0];
    size_t n = io->n;
    int steps = n_sigmas - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        /* x = denoised: the denoiser writes straight into x after we hand it a copy */
        memcpy(noise, x, n * sizeof *x);
        if ((rc = ks_denoise(io, noise, sigmas[i], x)) < 0) break;
        if ((rc = ks_step(io, i, steps, noise, x)) < 0) break;
        if (sigmas[i + 1] > 0) {
            if ((rc = ks_randn(io, noise)) < 0) break;
            for (size_t k = 0; k < n; k++) x[k] += sigmas[i + 1] * noise[k];
        }
    }
    ks_free(b[0]);
    return rc;
}

/* log sigma of LCM's 50 valid timesteps 19 + 20k, float32 as the DiscreteEpsDDPMDenoiser holds them */
static void lcm_log_sigmas(const float *ac, float *log_sigmas) {
    for (int k = 0; k < 50; k++) {
        float a = ac[19 + 20 * k];
        log_sigmas[k] = logf(sqrtf((1 - a) / a));
    }
}

int kiln_lcm_sigma_to_t(const float *alphas_cumprod, double sigma) {
    float ls[50], l = logf((float)sigma);
    lcm_log_sigmas(alphas_cumprod, ls);
    int best = 0;
    for (int k = 1; k < 50; k++)
        if (fabsf(l - ls[k]) < fabsf(l - ls[best])) best = k;
    return best * 20 + 19;
}

void kiln_lcm_scalings(int t, double *c_skip, double *c_out) {
    const float sigma_data = 0.5f;
    float ts = (float)t * 10.0f;
    *c_skip = sigma_data * sigma_data / (ts * ts + sigma_data * sigma_data);
    *c_out = ts / sqrtf(ts * ts + sigma_data * sigma_data);
}

int kiln_lcm_sigmas(const float *alphas_cumprod, int steps, double *out) {
    if (steps < 1) return kiln_error(KILN_EINVAL, "LCM sigmas: steps must be >= 1, got %d", steps);
    float ls[50], *t = malloc((size_t)steps * sizeof *t);
    if (!t) return kiln_error(KILN_ENOMEM, "LCM sigmas: out of memory");
    lcm_log_sigmas(alphas_cumprod, ls);
    ks_linspace_f32(999.0f, 19.0f, steps, t);
    for (int i = 0; i < steps; i++) {
        float u = (t[i] - 19) / 20;
        if (u < 0) u = 0;
        if (u > 49) u = 49;
        int lo = (int)floorf(u), hi = (int)ceilf(u);
        float w = u - floorf(u);
        out[i] = expf((1 - w) * ls[lo] + w * ls[hi]);
    }
    out[steps] = 0;
    free(t);
    return 0;
}
