/* sampler_timesteps.c — A1111's CompVis-style timestep samplers (sd_samplers_timesteps_impl.py):
 * DDIM, PLMS and UniPC (A1111's uni_pc.py, multistep, data prediction, B(h) variants). They
 * see eps of the unscaled latent at a UNet timestep, and the model's alphas_cumprod. */
#include "sample/sampler_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- DDIM ---- */

int ks_sample_ddim(kiln_sampler_io *io, const int *ts, int n_ts, float *x) {
    const float *ac = io->alphas_cumprod;
    float *b[3];
    KILN_TRY(ks_alloc(io, 3, b));
    float *e_t = b[0], *pred_x0 = b[1], *noise = b[2];
    size_t n = io->n;
    int steps = n_ts - 1, rc = 0;
    for (int i = 0; i < steps; i++) {
        int index = n_ts - 1 - i;
        if ((rc = ks_eps(io, x, (double)ts[index], e_t)) < 0) break;
        float a_t = ac[ts[index]];
        float a_prev = ac[index > 0 ? ts[index - 1] : 0]; /* pad(timesteps[:-1], (1, 0)) -> ac[0] */
        float sqrt_one_minus_at = sqrtf(1 - a_t);
        /* eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)), in double as numpy does */
        float sigma_t = (float)(io->eta * sqrt((1.0 - a_prev) / (1.0 - (double)a_t) * (1.0 - (double)a_t / a_prev)));
        float sqrt_a_t = sqrtf(a_t), sqrt_a_prev = sqrtf(a_prev);
        float dir = sqrtf(1.0f - a_prev - sigma_t * sigma_t);
        /* A1111 draws the noise even when eta (so sigma_t) is 0 */
        if ((rc = ks_randn(io, noise)) < 0) break;
        for (size_t k = 0; k < n; k++) {
            pred_x0[k] = (x[k] - sqrt_one_minus_at * e_t[k]) / sqrt_a_t;
            x[k] = sqrt_a_prev * pred_x0[k] + dir * e_t[k] + sigma_t * noise[k];
        }
        if ((rc = ks_step(io, i, steps, x, pred_x0)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}

/* ---- PLMS ---- */

int ks_sample_plms(kiln_sampler_io *io, const int *ts, int n_ts, float *x) {
    const float *ac = io->alphas_cumprod;
    float *b[8];
    KILN_TRY(ks_alloc(io, 8, b));
    float *e_t = b[0], *e_next = b[1], *prime = b[2], *x_prev = b[3], *pred_x0 = b[4];
    float *old[3] = {b[5], b[6], b[7]}; /* old[0] = newest */
    size_t n = io->n;
    int steps = n_ts - 1, n_old = 0, rc = 0;
    for (int i = 0; i < steps; i++) {
        int index = n_ts - 1 - i;
        double t = ts[index], t_next = ts[index - 1 > 0 ? index - 1 : 0];
        float a_t = ac[ts[index]], a_prev = ac[index > 0 ? ts[index - 1] : 0];
        float sqrt_one_minus_at = sqrtf(1 - a_t), sqrt_a_t = sqrtf(a_t);
        float sqrt_a_prev = sqrtf(a_prev), dir = sqrtf(1.0f - a_prev);
        if ((rc = ks_eps(io, x, t, e_t)) < 0) break;
        if (n_old == 0) {
            /* pseudo improved Euler: a trial step, then the mean of both eps */
            for (size_t k = 0; k < n; k++) {
                float p0 = (x[k] - sqrt_one_minus_at * e_t[k]) / sqrt_a_t;
                x_prev[k] = sqrt_a_prev * p0 + dir * e_t[k];
            }
            if ((rc = ks_eps(io, x_prev, t_next, e_next)) < 0) break;
            for (size_t k = 0; k < n; k++) prime[k] = (e_t[k] + e_next[k]) / 2;
        } else if (n_old == 1) {
            for (size_t k = 0; k < n; k++) prime[k] = (3 * e_t[k] - old[0][k]) / 2;
        } else if (n_old == 2) {
            for (size_t k = 0; k < n; k++) prime[k] = (23 * e_t[k] - 16 * old[0][k] + 5 * old[1][k]) / 12;
        } else {
            for (size_t k = 0; k < n; k++)
                prime[k] = (55 * e_t[k] - 59 * old[0][k] + 37 * old[1][k] - 9 * old[2][k]) / 24;
        }
        for (size_t k = 0; k < n; k++) {
            pred_x0[k] = (x[k] - sqrt_one_minus_at * prime[k]) / sqrt_a_t;
            x[k] = sqrt_a_prev * pred_x0[k] + dir * prime[k];
        }
        /* old_eps keeps the last three raw eps */
        float *oldest = old[2];
        old[2] = old[1];
        old[1] = old[0];
        old[0] = oldest;
        memcpy(old[0], e_t, n * sizeof *e_t);
        if (n_old < 3) n_old++;
        if ((rc = ks_step(io, i, steps, x, pred_x0)) < 0) break;
    }
    ks_free(b[0]);
    return rc;
}

/* ---- UniPC ---- */

/* NoiseScheduleVP('discrete', alphas_cumprod): log alpha_t piecewise linear in t over t_k = k/1000. */
typedef struct vp_schedule {
    float t_array[1000], log_alpha[1000];
} vp_schedule;

/* A1111 uni_pc.interpolate_fn for ascending xp: linear between neighbours, extrapolated from the
 * outermost pair. */
static double interp(double x, const float *xp, const float *yp, int k_count) {
    int lo = 0, hi = k_count - 1;
    if (x <= xp[0]) {
        hi = 1;
    } else if (x >= xp[k_count - 1]) {
        lo = k_count - 2;
    } else {
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (xp[mid] <= x)
                lo = mid;
            else
                hi = mid;
        }
    }
    hi = lo + 1;
    return yp[lo] + (x - xp[lo]) * (yp[hi] - yp[lo]) / ((double)xp[hi] - xp[lo]);
}

static double vp_log_alpha(const vp_schedule *ns, double t) { return interp(t, ns->t_array, ns->log_alpha, 1000); }
static double vp_std(const vp_schedule *ns, double t) { return sqrt(1 - exp(2 * vp_log_alpha(ns, t))); }
static double vp_lambda(const vp_schedule *ns, double t) {
    double lm = vp_log_alpha(ns, t);
    return lm - 0.5 * log(1 - exp(2 * lm));
}
static double vp_inverse_lambda(const vp_schedule *ns, double lamb) {
    float xp[1000], yp[1000];
    for (int k = 0; k < 1000; k++) xp[k] = ns->log_alpha[999 - k], yp[k] = ns->t_array[999 - k];
    /* log_alpha = -0.5 * logaddexp(0, -2 lamb) */
    double m = -2 * lamb, lae = m > 0 ? m + log1p(exp(-m)) : log1p(exp(m));
    return interp(-0.5 * lae, xp, yp, 1000);
}

/* Solves the small dense system a x = rhs (n <= 16) by Gaussian elimination with pivoting. */
static int solve_small(int n, double *a, double *rhs, double *out) {
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[p * n + c])) p = r;
        if (a[p * n + c] == 0) return -1;
        if (p != c) {
            for (int k = 0; k < n; k++) {
                double t = a[c * n + k];
                a[c * n + k] = a[p * n + k];
                a[p * n + k] = t;
            }
            double t = rhs[c];
            rhs[c] = rhs[p];
            rhs[p] = t;
        }
        for (int r = c + 1; r < n; r++) {
            double f = a[r * n + c] / a[c * n + c];
            for (int k = c; k < n; k++) a[r * n + k] -= f * a[c * n + k];
            rhs[r] -= f * rhs[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double s = rhs[r];
        for (int k = r + 1; k < n; k++) s -= a[r * n + k] * out[k];
        out[r] = s / a[r * n + r];
    }
    return 0;
}

#define UNIPC_MAX_ORDER 8

typedef struct unipc {
    kiln_sampler_io *io;
    const vp_schedule *ns;
    int variant;  /* 1 = bh1, 2 = bh2 */
    float *noise; /* scratch for the model's eps */
} unipc;

/* data_prediction_fn: x0 = (x - sigma_t * eps) / alpha_t, eps from the model at the UNet time
 * (t - 1/1000) * 1000 (float32, as A1111's UniPCCFG computes it). */
static int unipc_model(unipc *u, const float *x, double t, float *x0) {
    float tf = (float)t;
    double t_input = (double)((tf - 0.001f) * 1000.0f);
    KILN_TRY(ks_eps(u->io, x, t_input, u->noise));
    float alpha = (float)exp(vp_log_alpha(u->ns, tf)), sigma = (float)vp_std(u->ns, tf);
    for (size_t k = 0; k < u->io->n; k++) x0[k] = (x[k] - sigma * u->noise[k]) / alpha;
    return 0;
}

/* multistep_uni_pc_bh_update, predict_x0: prev[0..] newest first, tprev likewise. Writes the new
 * x into x_out and, with the corrector, the model output at t into model_t. */
static int unipc_update(unipc *u, const float *x, float *const *prev, const double *tprev, double t, int order,
                        int use_corrector, float **d1s, float *x_t_, float *x_out, float *model_t) {
    size_t n = u->io->n;
    const vp_schedule *ns = u->ns;
    double lambda_prev_0 = vp_lambda(ns, tprev[0]), lambda_t = vp_lambda(ns, t);
    double sigma_prev_0 = vp_std(ns, tprev[0]), sigma_t = vp_std(ns, t);
    double alpha_t = exp(vp_log_alpha(ns, t));
    double h = lambda_t - lambda_prev_0;
    const float *m0 = prev[0];
    double rks[UNIPC_MAX_ORDER];
    int n_d1 = order - 1;
    for (int i = 1; i < order; i++) {
        double rk = (vp_lambda(ns, tprev[i]) - lambda_prev_0) / h;
        rks[i - 1] = rk;
        float rkf = (float)rk;
        for (size_t k = 0; k < n; k++) d1s[i - 1][k] = (prev[i][k] - m0[k]) / rkf;
    }
    rks[order - 1] = 1.0;
    double hh = -h, h_phi_1 = expm1(hh), h_phi_k = h_phi_1 / hh - 1, factorial = 1;
    double B_h = u->variant == 2 ? expm1(hh) : hh;
    double R[UNIPC_MAX_ORDER * UNIPC_MAX_ORDER], bv[UNIPC_MAX_ORDER];
    for (int i = 1; i <= order; i++) {
        for (int k = 0; k < order; k++) R[(i - 1) * order + k] = pow(rks[k], i - 1);
        bv[i - 1] = h_phi_k * factorial / B_h;
        factorial *= i + 1;
        h_phi_k = h_phi_k / hh - 1 / factorial;
    }
    double rhos_p[UNIPC_MAX_ORDER], rhos_c[UNIPC_MAX_ORDER];
    if (n_d1 > 0) {
        if (order == 2) {
            rhos_p[0] = 0.5;
        } else {
            double a[UNIPC_MAX_ORDER * UNIPC_MAX_ORDER], r[UNIPC_MAX_ORDER];
            int m = order - 1;
            for (int i = 0; i < m; i++) {
                for (int k = 0; k < m; k++) a[i * m + k] = R[i * order + k];
                r[i] = bv[i];
            }
            if (solve_small(m, a, r, rhos_p) < 0) return kiln_error(KILN_EINVAL, "UniPC: singular predictor system");
        }
    }
    if (use_corrector) {
        if (order == 1) {
            rhos_c[0] = 0.5;
        } else {
            double a[UNIPC_MAX_ORDER * UNIPC_MAX_ORDER], r[UNIPC_MAX_ORDER];
            memcpy(a, R, sizeof(double) * (size_t)(order * order));
            memcpy(r, bv, sizeof(double) * (size_t)order);
            if (solve_small(order, a, r, rhos_c) < 0)
                return kiln_error(KILN_EINVAL, "UniPC: singular corrector system");
        }
    }
    float c_x = (float)(sigma_t / sigma_prev_0), c_m = (float)(alpha_t * h_phi_1), c_b = (float)(alpha_t * B_h);
    for (size_t k = 0; k < n; k++) {
        x_t_[k] = c_x * x[k] - c_m * m0[k];
        float pred_res = 0;
        for (int j = 0; j < n_d1; j++) pred_res += (float)rhos_p[j] * d1s[j][k];
        x_out[k] = n_d1 > 0 ? x_t_[k] - c_b * pred_res : x_t_[k] - c_b * 0.0f;
    }
    if (use_corrector) {
        KILN_TRY(unipc_model(u, x_out, t, model_t));
        float rc_last = (float)rhos_c[order - 1];
        for (size_t k = 0; k < n; k++) {
            float corr_res = 0;
            for (int j = 0; j < n_d1; j++) corr_res += (float)rhos_c[j] * d1s[j][k];
            float d1_t = model_t[k] - m0[k];
            x_out[k] = x_t_[k] - c_b * (corr_res + rc_last * d1_t);
        }
    }
    return 0;
}

int ks_sample_unipc(kiln_sampler_io *io, const int *ts, int n_ts, float *x) {
    int order = io->unipc_order > 0 ? io->unipc_order : 3, steps = n_ts, rc = 0;
    if (order > UNIPC_MAX_ORDER)
        return kiln_error(KILN_EUNSUPPORTED, "UniPC: order %d is above the supported %d", order, UNIPC_MAX_ORDER);
    if (steps < order)
        return kiln_error(KILN_EINVAL, "UniPC order must be < sampling steps (order %d, %d steps)", order, steps);
    if (io->unipc_variant != 1 && io->unipc_variant != 2)
        return kiln_error(KILN_EUNSUPPORTED, "UniPC: variant %d (only bh1 = 1 and bh2 = 2)", io->unipc_variant);
    vp_schedule *ns = malloc(sizeof *ns);
    double *times = malloc((size_t)(steps + 1) * sizeof *times);
    float *tf = malloc((size_t)(steps + 1) * sizeof *tf);
    float *b[2 * UNIPC_MAX_ORDER + 4];
    int nb = 2 * order + 4;
    if (!ns || !times || !tf) {
        free(ns), free(times), free(tf);
        return kiln_error(KILN_ENOMEM, "UniPC: out of memory");
    }
    if ((rc = ks_alloc(io, nb, b)) < 0) {
        free(ns), free(times), free(tf);
        return rc;
    }
    float t_lin[1001];
    ks_linspace_f32(0.0f, 1.0f, 1001, t_lin);
    for (int k = 0; k < 1000; k++) {
        ns->t_array[k] = t_lin[k + 1];
        ns->log_alpha[k] = 0.5f * logf(io->alphas_cumprod[k]);
    }
    /* the continuous times: t_T = 1 (img2img: timesteps[-1]/1000 + 1/1000) down to t_0 = 1/1000 */
    double t_T = io->is_img2img ? ts[n_ts - 1] / 1000.0 + 1 / 1000.0 : 1.0, t_0 = 1.0 / 1000;
    if (io->unipc_skip_type == 1) {
        ks_linspace_f32((float)sqrt(t_T), (float)sqrt(t_0), steps + 1, tf);
        for (int i = 0; i <= steps; i++) times[i] = (double)(tf[i] * tf[i]);
    } else if (io->unipc_skip_type == 2) {
        ks_linspace_f32((float)vp_lambda(ns, t_T), (float)vp_lambda(ns, t_0), steps + 1, tf);
        for (int i = 0; i <= steps; i++) times[i] = (double)(float)vp_inverse_lambda(ns, tf[i]);
    } else {
        ks_linspace_f32((float)t_T, (float)t_0, steps + 1, tf);
        for (int i = 0; i <= steps; i++) times[i] = tf[i];
    }
    unipc u = {io, ns, io->unipc_variant, b[0]};
    float *prev[UNIPC_MAX_ORDER], *d1s[UNIPC_MAX_ORDER];
    for (int i = 0; i < order; i++) prev[i] = b[1 + i], d1s[i] = b[1 + order + i];
    float *x_t_ = b[1 + 2 * order], *x_new = b[2 + 2 * order], *model_t = b[3 + 2 * order];
    double tprev[UNIPC_MAX_ORDER];
    size_t n = io->n;
    int n_prev = 0, cb = 0;

    /* prev[0] is always the newest model output */
    if ((rc = unipc_model(&u, x, times[0], prev[0])) < 0) goto done;
    tprev[0] = times[0];
    n_prev = 1;
    for (int step = 1; step <= steps; step++) {
        int step_order = step < order ? step : order;
        if (step >= order && io->unipc_lower_order_final && steps + 1 - step < step_order)
            step_order = steps + 1 - step;
        int use_corrector = step != steps;
        if ((rc = unipc_update(&u, x, prev, tprev, times[step], step_order, use_corrector, d1s, x_t_, x_new,
                               model_t)) < 0)
            goto done;
        memcpy(x, x_new, n * sizeof *x);
        /* A1111 hands the callback the model output at t (none after the last step) */
        if ((rc = ks_step(io, cb++, steps, x, use_corrector ? model_t : x)) < 0) goto done;
        if (step == steps) break;
        /* shift: the oldest buffer takes the new model output */
        float *recycled = n_prev == order ? prev[order - 1] : prev[n_prev];
        for (int i = (n_prev == order ? order - 1 : n_prev); i > 0; i--) prev[i] = prev[i - 1], tprev[i] = tprev[i - 1];
        prev[0] = recycled;
        memcpy(prev[0], model_t, n * sizeof *x);
        tprev[0] = times[step];
        if (n_prev < order) n_prev++;
    }
done:
    ks_free(b[0]);
    free(ns), free(times), free(tf);
    return rc;
}
