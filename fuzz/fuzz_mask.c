/* fuzz_mask.c — libFuzzer target for the img2img / inpainting image steps: Pillow resampling (every filter,
 * boxes), resize_image modes, the OpenCV mask blur, the latent mask, masking.fill, the overlay and composites,
 * the latent and image upscalers, and the "only masked" crop / uncrop, on small images of any size the input
 * picks. Every call must succeed or fail with a status; outputs are checked for their documented ranges. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/hires.h"
#include "pipeline/img2img.h"
#include "pipeline/mask.h"

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static int take(reader *r, int lo, int hi) {
    int v = r->n ? r->p[0] : 0;
    if (r->n) r->p++, r->n--;
    return lo + v % (hi - lo + 1);
}

static void fill_bytes(reader *r, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = r->n ? r->p[i % r->n] : (uint8_t)(i * 37);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    const int w = take(&r, 1, 40), h = take(&r, 1, 40), ow = take(&r, 1, 40), oh = take(&r, 1, 40);
    const int ch = take(&r, 1, 4), mode = take(&r, 0, 3), blur = take(&r, 0, 12), filter = take(&r, 0, 2);
    uint8_t *src = malloc((size_t)w * h * 4), *dst = malloc((size_t)ow * oh * 4 + (size_t)w * h * 4);
    uint8_t *mask = malloc((size_t)w * h), *tmp = malloc((size_t)w * h * 4);
    float *fin = malloc(sizeof(float) * w * h), *fout = malloc(sizeof(float) * ow * oh);
    fill_bytes(&r, src, (size_t)w * h * 4);
    fill_bytes(&r, mask, (size_t)w * h);

    /* resampling with and without a box inside the image */
    float box[4] = {(float)take(&r, 0, w) * 0.5f, (float)take(&r, 0, h) * 0.5f, 0, 0};
    box[2] = box[0] + (float)take(&r, 0, w) * 0.5f;
    box[3] = box[1] + (float)take(&r, 0, h) * 0.5f;
    if (box[2] > w) box[2] = (float)w;
    if (box[3] > h) box[3] = (float)h;
    kiln_pil_resize_u8(src, w, h, ch, NULL, ow, oh, (kiln_pil_filter)filter, dst);
    kiln_pil_resize_u8(src, w, h, ch, box, ow, oh, (kiln_pil_filter)filter, dst);
    if (ch == 1 || ch == 3) kiln_resize_image(mode, src, w, h, ch, ow, oh, dst);

    /* mask blur, latent mask, overlay, composites, fill */
    if (kiln_mask_blur(mask, w, h, blur, blur, tmp, dst) == 0) {
        float nm[40 * 40];
        const int lw = take(&r, 1, 40), lh = take(&r, 1, 40);
        if (kiln_latent_mask(dst, w, h, lw, lh, 1, 1, NULL, nm) == 0)
            for (int i = 0; i < lw * lh; i++)
                if (nm[i] != 0.0f && nm[i] != 1.0f) abort(); /* rounded: 0 or 1 */
    }
    kiln_overlay_rgba(src, mask, w, h, tmp);
    kiln_alpha_composite_rgba(dst, tmp, w, h);
    kiln_alpha_composite_rgb(dst, tmp, w, h);
    kiln_pil_gaussian_blur4(src, w, h, (float)take(&r, 0, 300) / 4.0f, tmp);
    kiln_masking_fill(src, mask, w, h, tmp);

    /* upscalers */
    static const char *const latent[] = {"Latent", "Latent (antialiased)", "Latent (bicubic)",
                                         "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"};
    for (int i = 0; i < w * h; i++) fin[i] = (float)src[i] - 128.0f;
    kiln_latent_upscale(latent[take(&r, 0, 5)], fin, 1, h, w, oh, ow, fout);
    static const char *const image[] = {"None", "Lanczos", "Nearest"};
    uint8_t *big = malloc((size_t)ow * oh * 3);
    kiln_upscale_image(image[take(&r, 0, 2)], src, w, h, ow, oh, big);
    free(big);

    /* img2img preparation, "only masked" included, and the overlay back onto the init image */
    kiln_gen_params p;
    kiln_gen_params_init(&p);
    p.width = 8 * take(&r, 1, 5);
    p.height = 8 * take(&r, 1, 5);
    p.init_rgb = src;
    p.init_width = w;
    p.init_height = h;
    p.mask_l = take(&r, 0, 1) ? mask : NULL;
    p.mask_blur = blur;
    p.resize_mode = take(&r, 0, 2);
    p.inpaint_full_res = take(&r, 0, 1);
    p.inpaint_full_res_padding = take(&r, 0, 20);
    p.inpainting_fill = take(&r, 0, 3);
    kiln_img2img_prep pr;
    if (kiln_img2img_check(&p) == 0 && kiln_img2img_prepare(&p, &pr) == 0) {
        if (pr.crop[2] && (pr.crop[0] < 0 || pr.crop[1] < 0 || pr.crop[2] > w || pr.crop[3] > h)) abort();
        uint8_t *dec = calloc((size_t)p.width * p.height * 3, 1), *out = malloc((size_t)pr.out_w * pr.out_h * 3);
        kiln_img2img_apply_overlay(&pr, p.width, p.height, dec, out);
        free(dec), free(out);
        kiln_img2img_prep_free(&pr);
    }
    free(src), free(dst), free(mask), free(tmp), free(fin), free(fout);
    return 0;
}
