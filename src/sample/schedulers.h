/* schedulers.h — A1111's "Schedule type" list (modules/sd_schedulers.py): the sigma list a
 * k-diffusion sampler walks, usually steps + 1 values ending in 0.
 *
 * Names and labels are A1111's (name "karras", label "Karras", ...); lookups accept the
 * name, the label or an alias, in any case. "Automatic" means the model's own uniform
 * list (k-diffusion get_sigmas: t_to_sigma(linspace(T-1, 0, steps)) + [0]); a sampler
 * that has a scheduler of its own (the old "DPM++ 2M Karras" names) resolves Automatic
 * to that scheduler before calling here.
 *
 * Precision follows the reference: torch float32 tensor arithmetic for Uniform, Karras,
 * Exponential, Polyexponential, SGM Uniform, Normal and KL Optimal; numpy/scipy float64
 * rounded to float32 at the end for Align Your Steps and Beta; table lookups for Simple
 * and DDIM. Quirks kept from A1111: KL Optimal returns steps + 1 values ending in
 * sigma_min, not 0; DDIM returns ceil(999 / max(1000 // steps, 1)) + 1 values, which is
 * more than steps + 1 when 1000 is not a multiple of steps. */
#ifndef KILN_SAMPLE_SCHEDULERS_H
#define KILN_SAMPLE_SCHEDULERS_H

#include <stdbool.h>

#include "sample/schedule.h"

typedef enum kiln_scheduler {
    KILN_SCHED_AUTOMATIC = 0,
    KILN_SCHED_UNIFORM,
    KILN_SCHED_KARRAS,
    KILN_SCHED_EXPONENTIAL,
    KILN_SCHED_POLYEXPONENTIAL,
    KILN_SCHED_SGM_UNIFORM,
    KILN_SCHED_KL_OPTIMAL,
    KILN_SCHED_ALIGN_YOUR_STEPS,
    KILN_SCHED_SIMPLE,
    KILN_SCHED_NORMAL,
    KILN_SCHED_DDIM,
    KILN_SCHED_BETA,
    KILN_SCHED_COUNT
} kiln_scheduler;

typedef struct kiln_scheduler_info {
    kiln_scheduler id;
    const char *name;   /* A1111 Scheduler.name, e.g. "sgm_uniform" */
    const char *label;  /* A1111 Scheduler.label (what the UI and infotext show), e.g. "SGM Uniform" */
    const char *alias;  /* another accepted spelling, or NULL ("SGMUniform") */
    double default_rho; /* -1 = takes no rho; Karras 7, Polyexponential 1 */
} kiln_scheduler_info;

/* The table, in A1111's order; *count receives KILN_SCHED_COUNT. */
const kiln_scheduler_info *kiln_scheduler_list(int *count);
const kiln_scheduler_info *kiln_scheduler_get(kiln_scheduler id);
/* Case-insensitive lookup by name, label or alias. KILN_ENOTFOUND lists the valid labels. */
int kiln_scheduler_find(const char *name, kiln_scheduler *out);

/* A1111's settings that change the list; zero-initialise for the defaults. */
typedef struct kiln_sigma_opts {
    double sigma_min;     /* opts.sigma_min: 0 = the model's sigmas[0] */
    double sigma_max;     /* opts.sigma_max: 0 = the model's sigmas[T-1] */
    double rho;           /* opts.rho: 0 = the scheduler's default_rho */
    double beta_alpha;    /* opts.beta_dist_alpha: 0 = 0.6 */
    double beta_beta;     /* opts.beta_dist_beta: 0 = 0.6 */
    bool old_karras_sigmas;   /* opts.use_old_karras_scheduler_sigmas: min/max 0.1 / 10 */
    bool discard_penultimate; /* the sampler's discard_next_to_last_sigma (DPM2, DPM2 a) or
                                 opts.always_discard_next_to_last_sigma: steps + 1 are made and
                                 the next-to-last sigma dropped */
    bool sdxl;            /* Align Your Steps: the SDXL table instead of SD 1.5's */
} kiln_sigma_opts;

/* The sigma list for `steps` sampler steps (steps >= 1): *out is malloc'ed (caller frees),
 * *n_out its length. opts may be NULL. KILN_EINVAL for steps < 1 or a bad option. */
int kiln_scheduler_sigmas(kiln_scheduler id, const kiln_schedule *model, int steps, const kiln_sigma_opts *opts,
                          float **out, int *n_out);

/* scipy.stats.beta.ppf(p, a, b): the inverse of the regularized incomplete beta function,
 * to about 1e-15. p outside [0, 1] or a, b <= 0 give NaN. */
double kiln_beta_ppf(double p, double a, double b);

#endif
