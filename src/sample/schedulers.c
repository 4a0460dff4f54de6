/* schedulers.c — A1111's schedule types (sd_schedulers.py, k-diffusion get_sigmas_*), each
 * re-typed with the reference's precision; see schedulers.h. */
#include "sample/schedulers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"

/* The reference rounds every product and sum separately: no fused multiply-adds. GCC does
 * not fuse in ISO C mode (-std=c11, as the build sets); clang needs the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static const kiln_scheduler_info scheduler_table[KILN_SCHED_COUNT] = {
    {KILN_SCHED_AUTOMATIC, "automatic", "Automatic", NULL, -1},
    {KILN_SCHED_UNIFORM, "uniform", "Uniform", NULL, -1},
    {KILN_SCHED_KARRAS, "karras", "Karras", NULL, 7.0},
    {KILN_SCHED_EXPONENTIAL, "exponential", "Exponential", NULL, -1},
    {KILN_SCHED_POLYEXPONENTIAL, "polyexponential", "Polyexponential", NULL, 1.0},
    {KILN_SCHED_SGM_UNIFORM, "sgm_uniform", "SGM Uniform", "SGMUniform", -1},
    {KILN_SCHED_KL_OPTIMAL, "kl_optimal", "KL Optimal", NULL, -1},
    {KILN_SCHED_ALIGN_YOUR_STEPS, "align_your_steps", "Align Your Steps", NULL, -1},
    {KILN_SCHED_SIMPLE, "simple", "Simple", NULL, -1},
    {KILN_SCHED_NORMAL, "normal", "Normal", NULL, -1},
    {KILN_SCHED_DDIM, "ddim", "DDIM", NULL, -1},
    {KILN_SCHED_BETA, "beta", "Beta", NULL, -1},
};

const kiln_scheduler_info *kiln_scheduler_list(int *count) {
    if (count) *count = KILN_SCHED_COUNT;
    return scheduler_table;
}

const kiln_scheduler_info *kiln_scheduler_get(kiln_scheduler id) {
    return (unsigned)id < KILN_SCHED_COUNT ? &scheduler_table[id] : NULL;
}

int kiln_scheduler_find(const char *name, kiln_scheduler *out) {
    if (name) {
        for (int i = 0; i < KILN_SCHED_COUNT; i++) {
            const kiln_scheduler_info *s = &scheduler_table[i];
            if (!strcasecmp(name, s->name) || !strcasecmp(name, s->label) || (s->alias && !strcasecmp(name, s->alias))) {
                *out = s->id;
                return KILN_OK;
            }
        }
    }
    return kiln_error(KILN_ENOTFOUND,
                      "scheduler '%s' not found (one of: Automatic, Uniform, Karras, Exponential, Polyexponential, "
                      "SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal, DDIM, Beta)",
                      name ? name : "(null)");
}

/* ---- helpers with the reference's rounding ------------------------------------ */

/* torch.linspace in float32: one float step; the first half counts up from start, the
 * second half down from end. */
static void linspace_f32(float start, float end, int n, float *out) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int halfway = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < halfway ? start + step * (float)i : end - step * (float)(n - 1 - i);
}

/* numpy.linspace(0, 1, n) in float64: i * (1 / (n - 1)), the last value exactly 1. */
static void np_linspace01(int n, double *out) {
    if (n == 1) {
        out[0] = 0.0;
        return;
    }
    double step = 1.0 / (double)(n - 1);
    for (int i = 0; i < n; i++) out[i] = (double)i * step;
    out[n - 1] = 1.0;
}

/* numpy.interp for increasing xp (as numpy computes it: slope * (x - xp[j]) + fp[j]). */
static double np_interp(double x, const double *xp, const double *fp, int n) {
    if (x < xp[0]) return fp[0];
    if (x >= xp[n - 1]) return fp[n - 1];
    int j = 0;
    while (j + 1 < n && xp[j + 1] <= x) j++;
    if (xp[j] == x) return fp[j];
    double slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    return slope * (x - xp[j]) + fp[j];
}

/* ---- the schedulers ------------------------------------------------------------- */

typedef struct sched_args {
    const kiln_schedule *model;
    int n;             /* steps (after the discard-penultimate bump) */
    double sigma_min, sigma_max, rho, beta_a, beta_b;
    bool sdxl;
} sched_args;

/* k-diffusion DiscreteSchedule.get_sigmas(n): t_to_sigma(linspace(T-1, 0, n)) + [0]. */
static int model_uniform(const sched_args *a, float *out) {
    linspace_f32((float)(a->model->n_timesteps - 1), 0.0f, a->n, out);
    for (int i = 0; i < a->n; i++) out[i] = kiln_t_to_sigma(a->model, out[i]);
    out[a->n] = 0.0f;
    return a->n + 1;
}

static int karras(const sched_args *a, float *out) {
    double min_inv_rho = pow(a->sigma_min, 1.0 / a->rho);
    double max_inv_rho = pow(a->sigma_max, 1.0 / a->rho);
    linspace_f32(0.0f, 1.0f, a->n, out);
    float diff = (float)(min_inv_rho - max_inv_rho), base = (float)max_inv_rho, rho = (float)a->rho;
    for (int i = 0; i < a->n; i++) out[i] = powf(base + out[i] * diff, rho);
    out[a->n] = 0.0f;
    return a->n + 1;
}

static int exponential(const sched_args *a, float *out) {
    linspace_f32((float)log(a->sigma_max), (float)log(a->sigma_min), a->n, out);
    for (int i = 0; i < a->n; i++) out[i] = expf(out[i]);
    out[a->n] = 0.0f;
    return a->n + 1;
}

static int polyexponential(const sched_args *a, float *out) {
    linspace_f32(1.0f, 0.0f, a->n, out);
    float rho = (float)a->rho;
    float scale = (float)(log(a->sigma_max) - log(a->sigma_min)), shift = (float)log(a->sigma_min);
    for (int i = 0; i < a->n; i++) {
        float ramp = rho == 1.0f ? out[i] : powf(out[i], rho);
        out[i] = expf(ramp * scale + shift);
    }
    out[a->n] = 0.0f;
    return a->n + 1;
}

/* SGM Uniform (linspace over n + 1 points, last dropped) and Normal (over n points):
 * timesteps between sigma_to_t(sigma_max) and sigma_to_t(sigma_min). */
static int timestep_linear(const sched_args *a, float *out, int sgm) {
    float start = kiln_sigma_to_t(a->model, (float)a->sigma_max);
    float end = kiln_sigma_to_t(a->model, (float)a->sigma_min);
    float *ts = malloc((size_t)(a->n + 1) * sizeof *ts);
    if (!ts) return kiln_error(KILN_ENOMEM, "scheduler: out of memory for %d steps", a->n);
    linspace_f32(start, end, sgm ? a->n + 1 : a->n, ts);
    for (int i = 0; i < a->n; i++) out[i] = kiln_t_to_sigma(a->model, ts[i]);
    free(ts);
    out[a->n] = 0.0f;
    return a->n + 1;
}

static int kl_optimal(const sched_args *a, float *out) {
    float alpha_min = atanf((float)a->sigma_min), alpha_max = atanf((float)a->sigma_max);
    for (int i = 0; i <= a->n; i++) {
        float t = (float)i / (float)a->n;
        out[i] = tanf(t * alpha_min + (1.0f - t) * alpha_max);
    }
    return a->n + 1; /* ends in sigma_min: A1111 appends no 0 here */
}

static int align_your_steps(const sched_args *a, float *out) {
    static const double sd15[11] = {14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029};
    static const double sdxl[11] = {14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029};
    const double *table = a->sdxl ? sdxl : sd15;
    if (a->n == 11) {
        for (int i = 0; i < 11; i++) out[i] = (float)table[i];
    } else {
        /* loglinear_interp: interpolate log sigma (ascending) on [0, 1], then reverse. */
        double xs[11], ys[11];
        np_linspace01(11, xs);
        for (int i = 0; i < 11; i++) ys[i] = log(table[10 - i]);
        double *nx = malloc((size_t)a->n * sizeof *nx);
        if (!nx) return kiln_error(KILN_ENOMEM, "scheduler: out of memory for %d steps", a->n);
        np_linspace01(a->n, nx);
        for (int i = 0; i < a->n; i++) out[a->n - 1 - i] = (float)exp(np_interp(nx[i], xs, ys, 11));
        free(nx);
    }
    out[a->n] = 0.0f;
    return a->n + 1;
}

static int simple(const sched_args *a, float *out) {
    int T = a->model->n_timesteps;
    double ss = (double)T / (double)a->n;
    for (int x = 0; x < a->n; x++) out[x] = a->model->sigmas[T - 1 - (int)((double)x * ss)];
    out[a->n] = 0.0f;
    return a->n + 1;
}

static int ddim(const sched_args *a, float *out) {
    int T = a->model->n_timesteps;
    int ss = T / a->n > 1 ? T / a->n : 1;
    int count = 0;
    for (int x = 1; x < T; x += ss) count++;
    int k = count;
    for (int x = 1; x < T; x += ss) out[--k] = a->model->sigmas[x];
    out[count] = 0.0f;
    return count + 1;
}

static int beta(const sched_args *a, float *out) {
    double *ts = malloc((size_t)a->n * sizeof *ts);
    if (!ts) return kiln_error(KILN_ENOMEM, "scheduler: out of memory for %d steps", a->n);
    np_linspace01(a->n, ts);
    for (int i = 0; i < a->n; i++) {
        double x = kiln_beta_ppf(1.0 - ts[i], a->beta_a, a->beta_b);
        out[i] = (float)(a->sigma_min + x * (a->sigma_max - a->sigma_min));
    }
    free(ts);
    out[a->n] = 0.0f;
    return a->n + 1;
}

int kiln_scheduler_sigmas(kiln_scheduler id, const kiln_schedule *model, int steps, const kiln_sigma_opts *opts,
                          float **out, int *n_out) {
    static const kiln_sigma_opts defaults = {0};
    if (!opts) opts = &defaults;
    const kiln_scheduler_info *info = kiln_scheduler_get(id);
    if (!info) return kiln_error(KILN_EINVAL, "scheduler id %d is not valid", (int)id);
    if (steps < 1 || steps > 100000)
        return kiln_error(KILN_EINVAL, "scheduler %s: %d steps (must be 1..100000)", info->label, steps);

    sched_args a = {.model = model, .n = steps + (opts->discard_penultimate ? 1 : 0), .sdxl = opts->sdxl};
    /* sd_samplers_kdiffusion.get_sigmas: the model's range as Python floats, optionally
     * replaced by the old fixed range, then by the user's settings where they differ. */
    double m_min = model->sigma_min, m_max = model->sigma_max;
    a.sigma_min = opts->old_karras_sigmas ? 0.1 : m_min;
    a.sigma_max = opts->old_karras_sigmas ? 10.0 : m_max;
    if (opts->sigma_min != 0 && opts->sigma_min != m_min) a.sigma_min = opts->sigma_min;
    if (opts->sigma_max != 0 && opts->sigma_max != m_max) a.sigma_max = opts->sigma_max;
    a.rho = (info->default_rho != -1 && opts->rho != 0) ? opts->rho : info->default_rho;
    a.beta_a = opts->beta_alpha != 0 ? opts->beta_alpha : 0.6;
    a.beta_b = opts->beta_beta != 0 ? opts->beta_beta : 0.6;
    if (!(a.sigma_min > 0 && a.sigma_max > a.sigma_min))
        return kiln_error(KILN_EINVAL, "scheduler %s: sigma range %g..%g is not increasing and positive", info->label,
                          a.sigma_min, a.sigma_max);
    if (!(a.beta_a > 0 && a.beta_b > 0))
        return kiln_error(KILN_EINVAL, "scheduler Beta: alpha %g and beta %g must be positive", a.beta_a, a.beta_b);

    /* Every list has at most n + 1 values except DDIM's (at most T). */
    int cap = (a.n + 1 > model->n_timesteps ? a.n + 1 : model->n_timesteps) + 1;
    float *s = malloc((size_t)cap * sizeof *s);
    if (!s) return kiln_error(KILN_ENOMEM, "scheduler %s: out of memory for %d steps", info->label, steps);
    int n;
    switch (id) {
    case KILN_SCHED_AUTOMATIC:
    case KILN_SCHED_UNIFORM: n = model_uniform(&a, s); break;
    case KILN_SCHED_KARRAS: n = karras(&a, s); break;
    case KILN_SCHED_EXPONENTIAL: n = exponential(&a, s); break;
    case KILN_SCHED_POLYEXPONENTIAL: n = polyexponential(&a, s); break;
    case KILN_SCHED_SGM_UNIFORM: n = timestep_linear(&a, s, 1); break;
    case KILN_SCHED_KL_OPTIMAL: n = kl_optimal(&a, s); break;
    case KILN_SCHED_ALIGN_YOUR_STEPS: n = align_your_steps(&a, s); break;
    case KILN_SCHED_SIMPLE: n = simple(&a, s); break;
    case KILN_SCHED_NORMAL: n = timestep_linear(&a, s, 0); break;
    case KILN_SCHED_DDIM: n = ddim(&a, s); break;
    case KILN_SCHED_BETA: n = beta(&a, s); break;
    default: n = KILN_EINVAL; break;
    }
    if (n < 0) {
        free(s);
        return n;
    }
    if (opts->discard_penultimate && n >= 2) {
        s[n - 2] = s[n - 1];
        n--;
    }
    *out = s;
    *n_out = n;
    return KILN_OK;
}

/* ---- scipy.stats.beta.ppf ---------------------------------------------------------- */

/* Continued fraction of the incomplete beta function (modified Lentz). */
static double beta_cf(double a, double b, double x) {
    const double tiny = 1e-300, eps = 1e-17;
    double qab = a + b, qap = a + 1.0, qam = a - 1.0;
    double c = 1.0, d = 1.0 - qab * x / qap;
    if (fabs(d) < tiny) d = tiny;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= 10000; m++) {
        double m2 = 2.0 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < eps) break;
    }
    return h;
}

/* Regularized incomplete beta I_x(a, b), evaluated on the side where the fraction converges. */
static double ibeta(double a, double b, double x, double lbeta) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    double front = exp(a * log(x) + b * log1p(-x) - lbeta);
    if (x < (a + 1.0) / (a + b + 2.0)) return front * beta_cf(a, b, x) / a;
    return 1.0 - front * beta_cf(b, a, 1.0 - x) / b;
}

/* Solves I_x(a, b) = p for p <= 1/2 by Newton steps kept inside a shrinking bracket. */
static double ibeta_inv_lower(double p, double a, double b) {
    double lbeta = lgamma(a) + lgamma(b) - lgamma(a + b);
    double lo = 0.0, hi = 1.0;
    /* For small x, I_x ~ x^a / (a B(a, b)). */
    double x = exp((log(p) + log(a) + lbeta) / a);
    if (!(x > 0 && x < 1)) x = 0.5;
    for (int it = 0; it < 300; it++) {
        double f = ibeta(a, b, x, lbeta) - p;
        if (f == 0) return x;
        if (f < 0)
            lo = x;
        else
            hi = x;
        double pdf = exp((a - 1.0) * log(x) + (b - 1.0) * log1p(-x) - lbeta);
        double xn = x - f / pdf;
        if (!(xn > lo && xn < hi)) xn = 0.5 * (lo + hi);
        if (fabs(xn - x) <= 1e-16 * xn || hi - lo <= 1e-300) return xn;
        x = xn;
    }
    return x;
}

double kiln_beta_ppf(double p, double a, double b) {
    if (!(p >= 0 && p <= 1) || !(a > 0) || !(b > 0)) return NAN;
    if (p == 0) return 0;
    if (p == 1) return 1;
    /* I_x(a, b) = 1 - I_{1-x}(b, a): solve in the lower tail, where p keeps its digits. */
    if (p > 0.5) return 1.0 - ibeta_inv_lower(1.0 - p, b, a);
    return ibeta_inv_lower(p, a, b);
}
