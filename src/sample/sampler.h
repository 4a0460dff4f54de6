/* sampler.h — the samplers A1111 v1.9.4 lists, driven through callbacks.
 *
 * A sampler sees a denoiser, never a U-Net: the caller supplies
 *   denoise(x, sigma) -> denoised      (k-diffusion samplers; CFG already applied), or
 *   eps_at(x, t) -> eps                (timestep samplers DDIM/PLMS/UniPC; CFG already applied),
 * plus the image's random generator (randn) and, for the SDE samplers, a Brownian-tree noise
 * source. The update rules are k-diffusion's at A1111's pinned commit ab527a9 and A1111's own
 * (sd_samplers_timesteps_impl.py, sd_samplers_extra.py, sd_samplers_lcm.py), computed in
 * float32 in the same operation order as the PyTorch originals so that replaying A1111's
 * denoiser outputs reproduces its latents to float32 rounding.
 *
 * Typical use:
 *   const kiln_sampler_info *s; char sched[32];
 *   kiln_sampler_lookup("DPM++ 2M Karras", &s, sched, sizeof sched);   // s = DPM++ 2M, sched = "karras"
 *   kiln_sampler_io io; kiln_sampler_io_defaults(s, &io); io.n = ...; io.denoise = ...; ...
 *   kiln_sample(s, &io, sigmas, n_sigmas, x);                          // x: noise*sigmas[0] in, latent out
 */
#ifndef KILN_SAMPLE_SAMPLER_H
#define KILN_SAMPLE_SAMPLER_H

#include <stddef.h>

typedef enum kiln_sampler_id {
    KILN_SAMPLER_DPMPP_2M,
    KILN_SAMPLER_DPMPP_SDE,
    KILN_SAMPLER_DPMPP_2M_SDE,
    KILN_SAMPLER_DPMPP_2M_SDE_HEUN,
    KILN_SAMPLER_DPMPP_2S_A,
    KILN_SAMPLER_DPMPP_3M_SDE,
    KILN_SAMPLER_EULER_A,
    KILN_SAMPLER_EULER,
    KILN_SAMPLER_LMS,
    KILN_SAMPLER_HEUN,
    KILN_SAMPLER_DPM2,
    KILN_SAMPLER_DPM2_A,
    KILN_SAMPLER_DPM_FAST,
    KILN_SAMPLER_DPM_ADAPTIVE,
    KILN_SAMPLER_RESTART,
    KILN_SAMPLER_DDIM,
    KILN_SAMPLER_PLMS,
    KILN_SAMPLER_UNIPC,
    KILN_SAMPLER_LCM,
    KILN_SAMPLER_COUNT
} kiln_sampler_id;

/* One row of A1111's sampler table (sd_samplers_kdiffusion.py, sd_samplers_timesteps.py,
 * sd_samplers_lcm.py), in A1111's order; the first row (DPM++ 2M) is A1111's default. */
typedef struct kiln_sampler_info {
    kiln_sampler_id id;
    const char *name;              /* exactly as A1111 spells it: "DPM++ 2M SDE Heun" */
    const char *function;          /* k-diffusion / A1111 function: "sample_dpmpp_2m_sde", "ddim" */
    const char *aliases[3];        /* A1111 aliases ("k_dpmpp_2m"), NULL-terminated */
    const char *default_scheduler; /* what A1111's "Automatic" resolves to: "karras", "exponential",
                                      or "uniform" (k-diffusion's model.get_sigmas); NULL for the
                                      timestep samplers, which take timesteps, not sigmas. For LCM,
                                      "uniform" means the LCM denoiser's own get_sigmas
                                      (kiln_lcm_sigmas), and karras & co. take sigma_min/max from its
                                      50 valid timesteps (sigma(19), sigma(999)) */
    int discard_penultimate_sigma; /* A1111 'discard_next_to_last_sigma' default */
    int second_order;              /* A1111 "second_order": two denoiser calls per step */
    int uses_rng;                  /* draws from the image generator (io.randn), even if it ignores it */
    int brownian_noise;            /* takes its noise from io.brownian (A1111 "brownian_noise") */
    int uses_ensd;                 /* A1111 "uses_ensd": eta noise seed delta applies */
    int timestep_sampler;          /* DDIM/PLMS/UniPC: run with kiln_sample_timesteps */
    int needs_lcm_denoiser;        /* LCM: the denoiser must be A1111's LCMCompVisDenoiser
                                      (see kiln_lcm_* below), not the plain CompVis one */
} kiln_sampler_info;

/* How the sampler reaches the model, the noise and the progress display. Every callback
 * returns 0 or a negative KILN_E* status (with kiln_error set), which the sampler returns. */
typedef struct kiln_sampler_io {
    size_t n; /* latent element count (batch x 4 x h x w) */

    /* k-diffusion denoiser: denoised = D(x, sigma), CFG already applied. sigma is the float32
       value k-diffusion passes, widened. */
    int (*denoise)(void *user, const float *x, double sigma, float *denoised);
    /* timestep samplers: eps of the unscaled x at UNet timestep t, CFG already applied. t is an
       integer for DDIM/PLMS and fractional for UniPC ((t_cont - 1/1000) * 1000). */
    int (*eps_at)(void *user, const float *x, double t, float *eps);
    /* the next draw of the image's generator (A1111 replaces torch.randn_like by it): n floats.
       A draw is taken wherever k-diffusion calls randn_like, including where it then multiplies
       it by 0, so that later draws keep their positions. */
    int (*randn)(void *user, float *out);
    /* Brownian-tree noise between sigma and sigma_next, already normalised as k-diffusion's
       BrownianTreeNoiseSampler returns it: n floats. */
    int (*brownian)(void *user, double sigma, double sigma_next, float *out);
    /* progress after each step (k-diffusion's callback: x at the start of step `step` and the
       step's denoised; DDIM/PLMS/UniPC: x after the step and pred_x0). total = the step count
       (DPM adaptive: 0, unknown). May be NULL. Return nonzero to cancel (KILN_ECANCELLED). */
    int (*on_step)(void *user, int step, int total, const float *x, const float *denoised);
    void *user;

    /* A1111 settings; kiln_sampler_io_defaults sets A1111 v1.9.4's defaults. */
    double eta;     /* ancestral/SDE eta (A1111 eta_ancestral 1.0; DDIM: eta_ddim 0.0) */
    double s_churn; /* Euler/Heun/DPM2 churn (0) */
    double s_tmin;  /* (0) */
    double s_tmax;  /* (inf: A1111 maps its 0 to inf) */
    double s_noise; /* (1) */
    /* DPM fast / DPM adaptive: the sigma range they integrate over. A1111 txt2img passes the
       model's sigma_min/sigma_max (sigmas[0], sigmas[999]); img2img passes sigmas[-2], sigmas[0]
       of its schedule slice. 0 = take sigmas[n_sigmas-2] and sigmas[0]. */
    double dpm_sigma_min, dpm_sigma_max;

    /* timestep samplers */
    const float *alphas_cumprod; /* [1000] float32, the model's (LDM register_schedule) */
    int is_img2img;              /* UniPC: A1111 starts img2img at t = timesteps[-1]/1000 + 1/1000 */
    int unipc_order;             /* A1111 uni_pc_order (3) */
    int unipc_variant;           /* 1 = "bh1" (A1111 default), 2 = "bh2" */
    int unipc_skip_type;         /* 0 = "time_uniform" (default), 1 = "time_quadratic", 2 = "logSNR" */
    int unipc_lower_order_final; /* (1) */

    /* out: denoiser (or eps) calls made by the last kiln_sample / kiln_sample_timesteps */
    int n_calls;
} kiln_sampler_io;

/* The table: KILN_SAMPLER_COUNT rows in A1111's order. */
const kiln_sampler_info *kiln_sampler_table(void);
const kiln_sampler_info *kiln_sampler_get(kiln_sampler_id id);

/* Finds a sampler by A1111 name or alias, case-insensitively. Old combined names with a
 * scheduler suffix ("DPM++ 2M Karras", "Euler a Exponential", "DPM++ 2M SGM Uniform") are split
 * the way A1111's get_sampler_and_scheduler does: the scheduler label ("Karras", "SGM Uniform"),
 * name ("karras", "sgm_uniform") or alias ("SGMUniform") is removed from the end and its A1111
 * name ("karras") written to scheduler (size >= 32); otherwise scheduler gets "" (Automatic).
 * Unknown names fail with KILN_ENOTFOUND and a message listing the valid names. */
int kiln_sampler_lookup(const char *name, const kiln_sampler_info **out, char *scheduler, size_t scheduler_size);

/* Writes "Euler a, Euler, ..." (every A1111 name) into buf; returns the full length. */
size_t kiln_sampler_names(char *buf, size_t size);

/* Fills io's settings with A1111 v1.9.4's defaults for this sampler (eta 1 for k-diffusion
 * samplers, 0 for DDIM; s_churn 0, s_tmin 0, s_tmax inf, s_noise 1; UniPC bh1/time_uniform/
 * order 3/lower order final); callbacks, n and alphas_cumprod are zeroed. */
void kiln_sampler_io_defaults(const kiln_sampler_info *s, kiln_sampler_io *io);

/* Runs a k-diffusion-style sampler over sigmas[0..n_sigmas-1] (the last normally 0).
 * x holds x_init = noise * sigmas[0] (img2img: init + noise * sigmas[0]) on entry and the
 * result on exit. Fails with KILN_EINVAL for a timestep sampler, too few sigmas or missing
 * callbacks; with a callback's status if one fails. */
int kiln_sample(const kiln_sampler_info *s, kiln_sampler_io *io, const double *sigmas, int n_sigmas, float *x);

/* Runs DDIM, PLMS or UniPC (A1111's CompVis-style samplers) over ascending integer timesteps
 * (A1111: kiln_sampler_timesteps). x holds the unscaled noise (img2img: init*sqrt(a) +
 * noise*sqrt(1-a) at the first skipped timestep) on entry and the result on exit. */
int kiln_sample_timesteps(const kiln_sampler_info *s, kiln_sampler_io *io, const int *timesteps, int n_timesteps,
                          float *x);

/* A1111's CompVisSampler.get_timesteps: clip(range(0, 1000, 1000 // steps) + 1, 0, 999), with
 * one more step when discard_penultimate is set. Writes up to cap values; returns the count
 * (steps, or one more when steps does not divide 1000), or KILN_EINVAL for steps < 1. */
int kiln_sampler_timesteps(int steps, int discard_penultimate, int *out, int cap);

/* Denoiser calls a sampler makes for `steps` steps over a schedule ending in 0 (as A1111 counts
 * them: Heun 5 steps = 9, DDIM 10 = 9 with timesteps 1..901); -1 where it is not fixed
 * (DPM adaptive). For timestep samplers `steps` is the number of timesteps. */
int kiln_sampler_calls_for_steps(const kiln_sampler_info *s, int steps);

/* ---- LCM (A1111 sd_samplers_lcm.LCMCompVisDenoiser) ----
 * A1111's LCM sampler wraps the model in a denoiser of its own: 50 "valid" timesteps
 * 19, 39, ..., 999 (alphas_cumprod[999 - 20k]); sigma_to_t snaps to the nearest valid sigma
 * (in log space); the output is c_out * (x - sigma * eps) + c_skip * x with the consistency
 * scalings of sigma_data 0.5 at 10 * t. These helpers let the caller build that denoiser and
 * A1111's "Automatic" LCM schedule. */
/* The UNet timestep LCM uses at sigma (19 + 20k). */
int kiln_lcm_sigma_to_t(const float *alphas_cumprod, double sigma);
/* c_skip, c_out of LCMCompVisDenoiser.get_scaled_out at timestep t. */
void kiln_lcm_scalings(int t, double *c_skip, double *c_out);
/* LCMCompVisDenoiser.get_sigmas(steps): steps sigmas from t 999 down to 19, then 0
 * (steps + 1 values written to out). */
int kiln_lcm_sigmas(const float *alphas_cumprod, int steps, double *out);

#endif
