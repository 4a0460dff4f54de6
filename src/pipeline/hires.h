/* hires.h — A1111's txt2img hires fix (webui v1.9.4 StableDiffusionProcessingTxt2Img.sample /
 * sample_hr_pass): a first txt2img pass; the latent upscaled with torch.nn.functional.interpolate (the
 * "Latent ..." upscalers) or decoded, upscaled as an 8-bit image and encoded again ("None", "Lanczos",
 * "Nearest"; the posterior noise as in img2img.h); a fresh ImageRNG at the new size, and an img2img pass
 * over the fixed-steps schedule slice, with the same sampler, scheduler and prompts. */
#ifndef KILN_PIPELINE_HIRES_H
#define KILN_PIPELINE_HIRES_H

#include "pipeline/img2img.h"

/* The size the first pass is upscaled to (A1111 hr_upscale_to_x/y): int(width * hr_scale) x
 * int(height * hr_scale), or from hr_resize_x/y keeping the aspect ratio (covering the requested size).
 * Returns 0 when hires fix is off or changes nothing (A1111 then turns it off). */
int kiln_hires_enabled(const kiln_gen_params *p, int *hr_width, int *hr_height);

/* The final image size: the upscaled latent (size // 8), less the rows and columns A1111 cuts off
 * (centred) to reach hr_resize_x x hr_resize_y when both are given; times 8. 0 when hires fix is off. */
int kiln_hires_output_size(const kiln_gen_params *p, int *w, int *h);

/* Validates hr_scale / hr_upscaler / hr_steps / denoising_strength. */
int kiln_hires_check(const kiln_gen_params *p);

/* F.interpolate(x, size=(out_h, out_w), mode, antialias) for an A1111 latent upscaler name: "Latent"
 * (bilinear), "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
 * "Latent (nearest-exact)" (align_corners False), on n planes of h x w, in float32 (PyTorch may differ by a
 * few ulp in the weights). KILN_EUNSUPPORTED lists the upscalers kiln has for any other name (the image
 * upscalers, which decode, upscale and re-encode, are kiln_upscale_image's). */
int kiln_latent_upscale(const char *upscaler, const float *in, int n, int h, int w, int out_h, int out_w, float *out);

/* images.resize_image(0, rgb, tw, th, upscaler) for the built-in image upscalers "None", "Lanczos",
 * "Nearest" (Pillow-exact). rgb: w x h RGB; out: tw x th RGB. */
int kiln_upscale_image(const char *upscaler, const uint8_t *rgb, int w, int h, int tw, int th, uint8_t *out);

/* Optional intermediate results of one batch. */
typedef struct kiln_hires_out {
    float *first_pass;         /* [batch, 4, h, w] */
    float *upscaled;           /* [batch, 4, out_h/8, out_w/8] (after the cut to hr_resize) */
    kiln_sample_trace *first;  /* the first pass's trace */
} kiln_hires_out;

/* Both passes for one batch: latents [batch, 4, out_h/8, out_w/8] (kiln_hires_output_size); trace = the
 * second pass's. */
int kiln_hires_sample(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds, int batch,
                      int batch_index, kiln_progress_fn progress, void *user, float *latents, kiln_hires_out *out,
                      kiln_sample_trace *trace);

#endif

/* ---- kiln_generate's hooks for img2img, inpainting and hires fix (generate.c) ---- */
#include "io/infotext.h"

/* 1 if p asks for img2img / inpainting / hires fix, with the output image size; 0 for plain txt2img. */
int kiln_generate_ext_size(const kiln_gen_params *p, int *out_w, int *out_h);
/* Validates those fields (called for every request). */
int kiln_generate_ext_check(const kiln_gen_params *p);
/* Samples and decodes one batch in that mode: rgb [batch][out_h][out_w][3]. */
int kiln_generate_ext_batch(kiln_ctx *ctx, const kiln_gen_params *p, const int64_t *seeds, const int64_t *subseeds,
                            int batch, int batch_index, kiln_progress_fn progress, void *user, uint8_t *rgb,
                            kiln_sample_trace *trace);
/* A1111's extra infotext: sets "Denoising strength" in ip and appends "Hires upscale", "Hires steps",
 * "Hires upscaler", "Mask blur", "Masked content" (A1111's order) to extra[ip->n_extra..cap-1].
 * bufs holds the formatted numbers; it must outlive the formatting. */
void kiln_generate_ext_infotext(const kiln_gen_params *p, kiln_infotext_params *ip, kiln_infotext_kv *extra, int cap,
                                char bufs[4][32]);
