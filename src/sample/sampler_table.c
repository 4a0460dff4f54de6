/* sampler_table.c — A1111 v1.9.4's sampler list (names, aliases, per-sampler defaults), name
 * lookup including the old "sampler + scheduler" combined names, and the two entry points that
 * dispatch to the update rules in sampler_euler.c, sampler_dpm.c, sampler_dpmpp.c,
 * sampler_misc.c and sampler_timesteps.c. */
#include "sample/sampler_internal.h"

#include "core/error.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A1111's order: k-diffusion samplers, then the timestep samplers, then LCM. The flags are A1111's
 * options dicts; uses_rng says whether k-diffusion's code calls randn_like (so the generator
 * advances), which A1111 does not record but which the fixtures pin down. */
static const kiln_sampler_info table[KILN_SAMPLER_COUNT] = {
    /* id, name, function, aliases, default scheduler, discard, 2nd order, rng, brownian, ensd, timestep, lcm */
    {KILN_SAMPLER_DPMPP_2M, "DPM++ 2M", "sample_dpmpp_2m", {"k_dpmpp_2m", NULL}, "karras", 0, 0, 0, 0, 0, 0, 0},
    {KILN_SAMPLER_DPMPP_SDE, "DPM++ SDE", "sample_dpmpp_sde", {"k_dpmpp_sde", NULL}, "karras", 0, 1, 0, 1, 0, 0, 0},
    {KILN_SAMPLER_DPMPP_2M_SDE, "DPM++ 2M SDE", "sample_dpmpp_2m_sde", {"k_dpmpp_2m_sde", NULL}, "exponential", 0, 0,
     0, 1, 0, 0, 0},
    {KILN_SAMPLER_DPMPP_2M_SDE_HEUN, "DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", {"k_dpmpp_2m_sde_heun", NULL},
     "exponential", 0, 0, 0, 1, 0, 0, 0},
    {KILN_SAMPLER_DPMPP_2S_A, "DPM++ 2S a", "sample_dpmpp_2s_ancestral", {"k_dpmpp_2s_a", NULL}, "karras", 0, 1, 1, 0,
     1, 0, 0},
    {KILN_SAMPLER_DPMPP_3M_SDE, "DPM++ 3M SDE", "sample_dpmpp_3m_sde", {"k_dpmpp_3m_sde", NULL}, "exponential", 1, 0,
     0, 1, 0, 0, 0},
    {KILN_SAMPLER_EULER_A, "Euler a", "sample_euler_ancestral", {"k_euler_a", "k_euler_ancestral", NULL}, "uniform",
     0, 0, 1, 0, 1, 0, 0},
    {KILN_SAMPLER_EULER, "Euler", "sample_euler", {"k_euler", NULL}, "uniform", 0, 0, 1, 0, 0, 0, 0},
    {KILN_SAMPLER_LMS, "LMS", "sample_lms", {"k_lms", NULL}, "uniform", 0, 0, 0, 0, 0, 0, 0},
    {KILN_SAMPLER_HEUN, "Heun", "sample_heun", {"k_heun", NULL}, "uniform", 0, 1, 1, 0, 0, 0, 0},
    {KILN_SAMPLER_DPM2, "DPM2", "sample_dpm_2", {"k_dpm_2", NULL}, "karras", 1, 1, 1, 0, 0, 0, 0},
    {KILN_SAMPLER_DPM2_A, "DPM2 a", "sample_dpm_2_ancestral", {"k_dpm_2_a", NULL}, "karras", 1, 1, 1, 0, 1, 0, 0},
    {KILN_SAMPLER_DPM_FAST, "DPM fast", "sample_dpm_fast", {"k_dpm_fast", NULL}, "uniform", 0, 0, 1, 0, 1, 0, 0},
    {KILN_SAMPLER_DPM_ADAPTIVE, "DPM adaptive", "sample_dpm_adaptive", {"k_dpm_ad", NULL}, "uniform", 0, 0, 1, 0, 1,
     0, 0},
    {KILN_SAMPLER_RESTART, "Restart", "restart_sampler", {"restart", NULL}, "karras", 0, 1, 1, 0, 0, 0, 0},
    {KILN_SAMPLER_DDIM, "DDIM", "ddim", {"ddim", NULL}, NULL, 0, 0, 1, 0, 0, 1, 0},
    {KILN_SAMPLER_PLMS, "PLMS", "plms", {"plms", NULL}, NULL, 0, 0, 0, 0, 0, 1, 0},
    {KILN_SAMPLER_UNIPC, "UniPC", "unipc", {"unipc", NULL}, NULL, 0, 0, 0, 0, 0, 1, 0},
    {KILN_SAMPLER_LCM, "LCM", "sample_lcm", {"k_lcm", NULL}, "uniform", 0, 0, 1, 0, 0, 0, 1},
};

const kiln_sampler_info *kiln_sampler_table(void) { return table; }

const kiln_sampler_info *kiln_sampler_get(kiln_sampler_id id) {
    if ((int)id < 0 || id >= KILN_SAMPLER_COUNT) return NULL;
    return &table[id];
}

/* A1111 sd_schedulers.schedulers: name, label, aliases. The combined-name parser strips any of
 * these from the end of a sampler name. */
static const struct {
    const char *name, *label, *alias;
} schedulers[] = {
    {"automatic", "Automatic", NULL},
    {"uniform", "Uniform", NULL},
    {"karras", "Karras", NULL},
    {"exponential", "Exponential", NULL},
    {"polyexponential", "Polyexponential", NULL},
    {"sgm_uniform", "SGM Uniform", "SGMUniform"},
    {"kl_optimal", "KL Optimal", NULL},
    {"align_your_steps", "Align Your Steps", NULL},
    {"simple", "Simple", NULL},
    {"normal", "Normal", NULL},
    {"ddim", "DDIM", NULL},
    {"beta", "Beta", NULL},
};

static int ieq(const char *a, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])) return 0;
    return 1;
}

/* Does name[0..len) end with " " + suffix (case-insensitively)? */
static int ends_with_word(const char *name, size_t len, const char *suffix) {
    size_t s = strlen(suffix);
    if (len < s + 2) return 0;
    return name[len - s - 1] == ' ' && ieq(name + len - s, suffix, s);
}

static const kiln_sampler_info *find_exact(const char *name, size_t len) {
    for (int i = 0; i < KILN_SAMPLER_COUNT; i++) {
        const kiln_sampler_info *s = &table[i];
        if (strlen(s->name) == len && ieq(s->name, name, len)) return s;
    }
    for (int i = 0; i < KILN_SAMPLER_COUNT; i++) {
        const kiln_sampler_info *s = &table[i];
        for (int a = 0; a < 3 && s->aliases[a]; a++)
            if (strlen(s->aliases[a]) == len && ieq(s->aliases[a], name, len)) return s;
    }
    /* The function name last: DPM++ 2M SDE and its Heun variant share one, the first wins. */
    for (int i = 0; i < KILN_SAMPLER_COUNT; i++) {
        const kiln_sampler_info *s = &table[i];
        if (strlen(s->function) == len && ieq(s->function, name, len)) return s;
    }
    return NULL;
}

size_t kiln_sampler_names(char *buf, size_t size) {
    size_t len = 0;
    for (int i = 0; i < KILN_SAMPLER_COUNT; i++) {
        int w = snprintf(buf ? buf + (len < size ? len : size) : NULL, len < size ? size - len : 0, "%s%s",
                         i ? ", " : "", table[i].name);
        if (w > 0) len += (size_t)w;
    }
    return len;
}

int kiln_sampler_lookup(const char *name, const kiln_sampler_info **out, char *scheduler, size_t scheduler_size) {
    if (!name || !out) return kiln_error(KILN_EINVAL, "sampler lookup: no name given");
    size_t len = strlen(name);
    while (len && isspace((unsigned char)name[len - 1])) len--;
    while (len && isspace((unsigned char)*name)) name++, len--;
    const char *found_scheduler = "";
    const kiln_sampler_info *s = find_exact(name, len);
    if (!s) {
        /* A1111 get_sampler_and_scheduler: strip a scheduler label, name or alias from the end.
           A1111 takes the first scheduler in its list that matches, which turns "Euler SGM Uniform"
           into sampler "Euler SGM" + Uniform (and then its default sampler); the longest match
           gives what the user meant. */
        size_t best = 0;
        for (size_t k = 0; k < sizeof schedulers / sizeof schedulers[0]; k++) {
            const char *opts[3] = {schedulers[k].label, schedulers[k].name, schedulers[k].alias};
            for (int o = 0; o < 3; o++) {
                if (opts[o] && strlen(opts[o]) > best && ends_with_word(name, len, opts[o])) {
                    found_scheduler = schedulers[k].name;
                    best = strlen(opts[o]);
                }
            }
        }
        if (best) s = find_exact(name, len - best - 1);
    }
    if (!s) {
        char names[1024];
        kiln_sampler_names(names, sizeof names);
        return kiln_error(KILN_ENOTFOUND, "unknown sampler '%.*s'; valid samplers: %s (optionally followed by a "
                                          "scheduler: Karras, Exponential, ...)",
                          (int)len, name, names);
    }
    if (scheduler && scheduler_size) snprintf(scheduler, scheduler_size, "%s", found_scheduler);
    *out = s;
    return 0;
}

void kiln_sampler_io_defaults(const kiln_sampler_info *s, kiln_sampler_io *io) {
    memset(io, 0, sizeof *io);
    io->eta = (s && s->timestep_sampler) ? 0.0 : 1.0;
    io->s_churn = 0.0;
    io->s_tmin = 0.0;
    io->s_tmax = INFINITY;
    io->s_noise = 1.0;
    io->unipc_order = 3;
    io->unipc_variant = 1;
    io->unipc_skip_type = 0;
    io->unipc_lower_order_final = 1;
}

int kiln_sampler_timesteps(int steps, int discard_penultimate, int *out, int cap) {
    if (steps < 1) return kiln_error(KILN_EINVAL, "timesteps: steps must be >= 1, got %d", steps);
    if (discard_penultimate) steps++;
    int stride = 1000 / steps;
    if (stride < 1) return kiln_error(KILN_EINVAL, "timesteps: %d steps exceed the model's 1000 timesteps", steps);
    int count = 0;
    for (int t = 0; t < 1000; t += stride) {
        int v = t + 1 > 999 ? 999 : t + 1;
        if (count < cap) out[count] = v;
        count++;
    }
    return count;
}

int kiln_sampler_calls_for_steps(const kiln_sampler_info *s, int steps) {
    if (!s || steps < 1) return 0;
    switch (s->id) {
    case KILN_SAMPLER_DPM_ADAPTIVE:
        return -1;
    case KILN_SAMPLER_RESTART:
        /* from 20 steps on, restart segments replace main-schedule steps one for one: still
           `steps` Heun steps, the last an Euler step onto 0 */
        return 2 * steps - 1;
    case KILN_SAMPLER_DDIM:
        return steps - 1;
    case KILN_SAMPLER_PLMS:
        return steps; /* len(timesteps) - 1 steps, the first with two calls */
    case KILN_SAMPLER_UNIPC:
        return steps;
    case KILN_SAMPLER_DPM_FAST:
        return steps; /* nfe = n */
    default:
        /* second-order samplers take a plain Euler step onto sigma 0 */
        return s->second_order ? 2 * steps - 1 : steps;
    }
}

int kiln_sample(const kiln_sampler_info *s, kiln_sampler_io *io, const double *sigmas, int n_sigmas, float *x) {
    if (!s || !io || !x) return kiln_error(KILN_EINVAL, "kiln_sample: NULL sampler, io or x");
    if (s->timestep_sampler)
        return kiln_error(KILN_EINVAL, "sampler %s takes timesteps: use kiln_sample_timesteps", s->name);
    if (!sigmas || n_sigmas < 2)
        return kiln_error(KILN_EINVAL, "sampler %s: needs at least 2 sigmas, got %d", s->name, n_sigmas);
    if (!io->denoise) return kiln_error(KILN_EINVAL, "sampler %s: io.denoise is NULL", s->name);
    if (io->n == 0) return kiln_error(KILN_EINVAL, "sampler %s: io.n is 0", s->name);
    for (int i = 0; i < n_sigmas; i++)
        if (!(sigmas[i] >= 0) || isinf(sigmas[i]))
            return kiln_error(KILN_EINVAL, "sampler %s: sigmas[%d] = %g is not a finite value >= 0", s->name, i,
                              sigmas[i]);
    float *sg = malloc((size_t)n_sigmas * sizeof *sg);
    if (!sg) return kiln_error(KILN_ENOMEM, "sampler %s: out of memory for %d sigmas", s->name, n_sigmas);
    /* k-diffusion holds sigmas as a float32 tensor */
    for (int i = 0; i < n_sigmas; i++) sg[i] = (float)sigmas[i];
    io->n_calls = 0;
    int rc;
    switch (s->id) {
    case KILN_SAMPLER_EULER_A: rc = ks_sample_euler_ancestral(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_EULER: rc = ks_sample_euler(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_HEUN: rc = ks_sample_heun(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_LMS: rc = ks_sample_lms(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPM2: rc = ks_sample_dpm_2(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPM2_A: rc = ks_sample_dpm_2_ancestral(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPMPP_2S_A: rc = ks_sample_dpmpp_2s_ancestral(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPMPP_2M: rc = ks_sample_dpmpp_2m(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPMPP_SDE: rc = ks_sample_dpmpp_sde(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPMPP_2M_SDE: rc = ks_sample_dpmpp_2m_sde(io, sg, n_sigmas, x, 0); break;
    case KILN_SAMPLER_DPMPP_2M_SDE_HEUN: rc = ks_sample_dpmpp_2m_sde(io, sg, n_sigmas, x, 1); break;
    case KILN_SAMPLER_DPMPP_3M_SDE: rc = ks_sample_dpmpp_3m_sde(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_RESTART: rc = ks_sample_restart(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_LCM: rc = ks_sample_lcm(io, sg, n_sigmas, x); break;
    case KILN_SAMPLER_DPM_FAST:
    case KILN_SAMPLER_DPM_ADAPTIVE: {
        /* A1111: sigma_min/max from the model (txt2img) or the schedule slice (img2img). */
        float smin = io->dpm_sigma_min > 0 ? (float)io->dpm_sigma_min : (n_sigmas >= 2 ? sg[n_sigmas - 2] : 0);
        float smax = io->dpm_sigma_max > 0 ? (float)io->dpm_sigma_max : sg[0];
        if (!(smin > 0) || !(smax > 0)) {
            rc = kiln_error(KILN_EINVAL, "sampler %s: sigma_min (%g) and sigma_max (%g) must not be 0", s->name,
                            (double)smin, (double)smax);
            break;
        }
        if (s->id == KILN_SAMPLER_DPM_FAST)
            rc = ks_sample_dpm_fast(io, smin, smax, n_sigmas - 1, x);
        else
            rc = ks_sample_dpm_adaptive(io, smin, smax, x);
        break;
    }
    default: rc = kiln_error(KILN_EINVAL, "sampler %s: not a k-diffusion sampler", s->name); break;
    }
    free(sg);
    return rc;
}

int kiln_sample_timesteps(const kiln_sampler_info *s, kiln_sampler_io *io, const int *timesteps, int n_timesteps,
                          float *x) {
    if (!s || !io || !x) return kiln_error(KILN_EINVAL, "kiln_sample_timesteps: NULL sampler, io or x");
    if (!s->timestep_sampler)
        return kiln_error(KILN_EINVAL, "sampler %s takes sigmas: use kiln_sample", s->name);
    /* one timestep is zero DDIM/PLMS steps (A1111 img2img with t_enc = 1 returns its input) */
    if (!timesteps || n_timesteps < 1)
        return kiln_error(KILN_EINVAL, "sampler %s: needs at least 1 timestep, got %d", s->name, n_timesteps);
    if (!io->eps_at) return kiln_error(KILN_EINVAL, "sampler %s: io.eps_at is NULL", s->name);
    if (!io->alphas_cumprod) return kiln_error(KILN_EINVAL, "sampler %s: io.alphas_cumprod is NULL", s->name);
    if (io->n == 0) return kiln_error(KILN_EINVAL, "sampler %s: io.n is 0", s->name);
    for (int i = 0; i < n_timesteps; i++) {
        if (timesteps[i] < 0 || timesteps[i] > 999)
            return kiln_error(KILN_EINVAL, "sampler %s: timesteps[%d] = %d is outside 0..999", s->name, i,
                              timesteps[i]);
        if (i && timesteps[i] <= timesteps[i - 1])
            return kiln_error(KILN_EINVAL, "sampler %s: timesteps must ascend (timesteps[%d] = %d after %d)",
                              s->name, i, timesteps[i], timesteps[i - 1]);
    }
    io->n_calls = 0;
    switch (s->id) {
    case KILN_SAMPLER_DDIM: return ks_sample_ddim(io, timesteps, n_timesteps, x);
    case KILN_SAMPLER_PLMS: return ks_sample_plms(io, timesteps, n_timesteps, x);
    case KILN_SAMPLER_UNIPC: return ks_sample_unipc(io, timesteps, n_timesteps, x);
    default: return kiln_error(KILN_EINVAL, "sampler %s: not a timestep sampler", s->name);
    }
}
