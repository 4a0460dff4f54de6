/* mask.h — the 8-bit image steps of A1111 inpainting, bit-exact with the libraries A1111 calls:
 * OpenCV's fixed-point GaussianBlur (mask blur), Pillow's integer resampling (resize_image, the latent
 * mask), Pillow's premultiplied paste (the overlay) and Image.alpha_composite (apply_overlay).
 * Images are row-major, channels interleaved, no padding. */
#ifndef KILN_PIPELINE_MASK_H
#define KILN_PIPELINE_MASK_H

#include <stddef.h>
#include <stdint.h>

/* The 8-bit kernel cv::GaussianBlur uses for an 8-bit image: getGaussianKernel(ksize, sigma) in double,
 * quantised to Q8 by error diffusion (the centre tap takes what is left of 256). ksize odd, 1..511. */
int kiln_gaussian_kernel_q8(int ksize, double sigma, int *k);

/* cv::GaussianBlur(src, (ksize_x, ksize_y), sigma) on an 8-bit one-channel image, BORDER_REFLECT_101.
 * Only one of ksize_x, ksize_y may exceed 1 (A1111 blurs one axis at a time). dst may not alias src. */
int kiln_gaussian_blur_u8(const uint8_t *src, int w, int h, int ksize_x, int ksize_y, double sigma, uint8_t *dst);

/* A1111's mask blur: horizontal pass with sigma blur_x (kernel 2*int(2.5*blur_x+0.5)+1) if blur_x > 0,
 * then the vertical one with blur_y. after_x (optional) receives the image after the first pass. */
int kiln_mask_blur(const uint8_t *mask, int w, int h, int blur_x, int blur_y, uint8_t *after_x, uint8_t *out);

/* mask_for_overlay = clip(2 * mask, 0, 255). */
void kiln_mask_for_overlay(const uint8_t *mask, size_t n, uint8_t *out);

/* The overlay A1111 pastes back: the init image with alpha 255 - mask_for_overlay, made the way Pillow
 * does (paste into a transparent premultiplied "RGBa" image, then convert to "RGBA"). rgba: w*h*4. */
void kiln_overlay_rgba(const uint8_t *rgb, const uint8_t *mask_for_overlay, int w, int h, uint8_t *rgba);

/* Image.alpha_composite(dst as RGBA with alpha 255, overlay) converted back to RGB, in place on rgb. */
void kiln_alpha_composite_rgb(uint8_t *rgb, const uint8_t *overlay_rgba, int w, int h);

/* Image.alpha_composite(dst, src) on RGBA images of any alpha, in place on dst (Pillow's integer code). */
void kiln_alpha_composite_rgba(uint8_t *dst, const uint8_t *src, int w, int h);

/* ImageFilter.GaussianBlur(radius) on a 4-band 8-bit image (Pillow's three-pass extended box blur with
 * 24-bit fixed-point weights, horizontal passes then vertical ones). dst may equal src. */
int kiln_pil_gaussian_blur4(const uint8_t *src, int w, int h, float radius, uint8_t *dst);

/* A1111 masking.fill (masked content "fill", and the image behind "latent noise"/"latent nothing"):
 * the image with the masked part made transparent, blurred at radii 256, 64, 16, 4, 2, 0 and composited
 * over itself, as Pillow does it. rgb and out: w x h RGB (may be the same); mask: L, 255 = masked. */
int kiln_masking_fill(const uint8_t *rgb, const uint8_t *mask, int w, int h, uint8_t *out);

/* Pillow resampling filters. */
typedef enum kiln_pil_filter { KILN_PIL_BICUBIC, KILN_PIL_LANCZOS, KILN_PIL_NEAREST } kiln_pil_filter;

/* Image.resize((out_w, out_h), filter, box) on 8-bit data of `channels` channels (1..4, no alpha
 * premultiplication): Pillow's two-pass integer resampler (22-bit coefficients, horizontal pass first,
 * each pass rounded to uint8); NEAREST: Pillow's scale-affine pixel picking. box = {x0, y0, x1, y1} in
 * source pixels, NULL = the whole image. */
int kiln_pil_resize_u8(const uint8_t *src, int w, int h, int channels, const float *box, int out_w, int out_h,
                       kiln_pil_filter filter, uint8_t *dst);

/* A1111's latent mask from the blurred mask: Pillow bicubic resize to lat_w x lat_h (resized, optional,
 * gets those bytes), / 255 in float32, rounded with np.around if round_mask; nmask (1 = repaint)
 * is written as `channels` copies [channels, lat_h, lat_w]. */
int kiln_latent_mask(const uint8_t *mask, int w, int h, int lat_w, int lat_h, int channels, int round_mask,
                     uint8_t *resized, float *nmask);

/* images.resize_image(mode, im, width, height) for an RGB8 or L8 image, with no upscaler model
 * (A1111 default): 0 = stretch, 1 = crop to fill (centred on a black canvas), 2 = fit and fill the bars
 * with the edge rows/columns stretched; any other mode (A1111's 3, "latent upscale", for masks) takes
 * mode 2's branch, as resize_image's else does. Resizes use Pillow's LANCZOS, except mode 2's bars, which A1111
 * makes with Image.resize's default filter (BICUBIC). */
int kiln_resize_image(int mode, const uint8_t *src, int w, int h, int channels, int out_w, int out_h, uint8_t *dst);

#endif
