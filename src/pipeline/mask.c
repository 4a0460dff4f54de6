/* mask.c — OpenCV / Pillow integer image steps of A1111 inpainting and resize_image (see mask.h).
 * Each routine follows the library's own fixed-point arithmetic, because A1111's results (a mask value
 * of 127 vs 128 decides a latent-mask pixel) depend on it. */
#include "pipeline/mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "kiln.h"

/* ---- OpenCV GaussianBlur, 8-bit fixed-point path ---------------------------------------------- */

int kiln_gaussian_kernel_q8(int ksize, double sigma, int *k) {
    if (ksize < 1 || ksize > 511 || ksize % 2 == 0)
        return kiln_error(KILN_EINVAL, "gaussian kernel: size %d is not odd and between 1 and 511", ksize);
    if (!(sigma > 0)) return kiln_error(KILN_EINVAL, "gaussian kernel: sigma %g is not positive", sigma);
    /* getGaussianKernelBitExact: exp(-x^2 / (2 sigma^2)) for the taps left of the centre, normalised
       by the sum (centre weight 1), in double as OpenCV's softdouble computes it */
    const int half = (ksize - 1) / 2;
    double vals[256], sum = 0.0;
    const double scale2 = -0.125 / (sigma * sigma);
    for (int i = 0, x = 1 - ksize; i < half; i++, x += 2) {
        vals[i] = exp((double)(x * x) * scale2);
        sum += vals[i];
    }
    sum = sum * 2.0 + 1.0;
    const double mul = 1.0 / sum;
    /* getGaussianKernelFixedPoint_ED with 8 fraction bits: round each tap with the error carried on;
       the centre gets 256 minus the rest */
    double err = 0.0;
    int total = 0;
    for (int i = 0; i < half; i++) {
        double adj = vals[i] * mul * 256.0 + err;
        int v = (int)nearbyint(adj); /* cvRound on softdouble: nearest, ties to even */
        err = adj - (double)v;
        k[i] = k[ksize - 1 - i] = v;
        total += v;
    }
    k[half] = 256 - 2 * total;
    return KILN_OK;
}

/* cv::borderInterpolate with BORDER_REFLECT_101 (reflects as often as needed). */
static int reflect101(int p, int len) {
    if (len == 1) return 0;
    while (p < 0 || p >= len) p = p < 0 ? -p : 2 * (len - 1) - p;
    return p;
}

int kiln_gaussian_blur_u8(const uint8_t *src, int w, int h, int ksize_x, int ksize_y, double sigma, uint8_t *dst) {
    if (w < 1 || h < 1) return kiln_error(KILN_EINVAL, "gaussian blur: empty %dx%d image", w, h);
    if (ksize_x > 1 && ksize_y > 1)
        return kiln_error(KILN_EUNSUPPORTED, "gaussian blur: only one axis at a time (got %dx%d)", ksize_x, ksize_y);
    const int horizontal = ksize_x > 1, n = horizontal ? ksize_x : ksize_y;
    int k[511];
    KILN_TRY(kiln_gaussian_kernel_q8(n, sigma, k));
    const int r = n / 2;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int acc = 128;
            for (int j = 0; j < n; j++) {
                int sx = horizontal ? reflect101(x + j - r, w) : x, sy = horizontal ? y : reflect101(y + j - r, h);
                acc += k[j] * src[(size_t)sy * w + sx];
            }
            dst[(size_t)y * w + x] = (uint8_t)(acc >> 8);
        }
    return KILN_OK;
}

int kiln_mask_blur(const uint8_t *mask, int w, int h, int blur_x, int blur_y, uint8_t *after_x, uint8_t *out) {
    if (blur_x < 0 || blur_y < 0 || blur_x > 64 || blur_y > 64)
        return kiln_error(KILN_EINVAL, "mask_blur: %d x %d is not between 0 and 64", blur_x, blur_y);
    const size_t n = (size_t)w * h;
    uint8_t *tmp = malloc(n);
    if (!tmp) return kiln_error(KILN_ENOMEM, "out of memory blurring a %dx%d mask", w, h);
    int rc = KILN_OK;
    if (blur_x > 0) rc = kiln_gaussian_blur_u8(mask, w, h, 2 * (int)(2.5 * blur_x + 0.5) + 1, 1, blur_x, tmp);
    else memcpy(tmp, mask, n);
    if (rc == KILN_OK && after_x) memcpy(after_x, tmp, n);
    if (rc == KILN_OK && blur_y > 0) rc = kiln_gaussian_blur_u8(tmp, w, h, 1, 2 * (int)(2.5 * blur_y + 0.5) + 1, blur_y, out);
    else if (rc == KILN_OK) memcpy(out, tmp, n);
    free(tmp);
    return rc;
}

/* ---- overlay and composite (Pillow Paste.c, Convert.c, AlphaComposite.c) ---------------------- */

void kiln_mask_for_overlay(const uint8_t *mask, size_t n, uint8_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = mask[i] >= 128 ? 255 : (uint8_t)(2 * mask[i]);
}

/* Pillow's DIV255 rounding division of a product of two bytes. */
static unsigned div255(unsigned v) {
    v += 128;
    return ((v >> 8) + v) >> 8;
}

void kiln_overlay_rgba(const uint8_t *rgb, const uint8_t *mask_for_overlay, int w, int h, uint8_t *rgba) {
    for (size_t i = 0; i < (size_t)w * h; i++) {
        /* paste with mask m = invert(mask_for_overlay) into zeros: every premultiplied band is c*m/255 */
        unsigned m = 255u - mask_for_overlay[i], a = div255(255u * m);
        uint8_t *o = rgba + i * 4;
        for (int c = 0; c < 3; c++) {
            unsigned v = div255(rgb[i * 3 + c] * m);
            /* RGBa -> RGBA: un-premultiply where the alpha is partial */
            if (a != 0 && a != 255) {
                v = 255u * v / a;
                if (v > 255) v = 255;
            }
            o[c] = (uint8_t)v;
        }
        o[3] = (uint8_t)a;
    }
}

void kiln_alpha_composite_rgb(uint8_t *rgb, const uint8_t *overlay_rgba, int w, int h) {
    const unsigned dst_a = 255; /* the decoded image converted to RGBA */
    for (size_t i = 0; i < (size_t)w * h; i++) {
        const uint8_t *s = overlay_rgba + i * 4;
        unsigned a = s[3];
        if (a == 0) continue;
        unsigned blend = dst_a * (255u - a), outa255 = a * 255u + blend;
        unsigned coef1 = a * 255u * 255u * 128u / outa255, coef2 = 255u * 128u - coef1;
        for (int c = 0; c < 3; c++) {
            unsigned v = s[c] * coef1 + rgb[i * 3 + c] * coef2 + (0x80u << 7);
            rgb[i * 3 + c] = (uint8_t)((((v >> 8) + v) >> 8) >> 7);
        }
    }
}

void kiln_alpha_composite_rgba(uint8_t *dst, const uint8_t *src, int w, int h) {
    for (size_t i = 0; i < (size_t)w * h; i++) {
        const uint8_t *s = src + i * 4;
        uint8_t *d = dst + i * 4;
        unsigned a = s[3];
        if (a == 0) continue;
        unsigned blend = d[3] * (255u - a), outa255 = a * 255u + blend;
        unsigned coef1 = a * 255u * 255u * 128u / outa255, coef2 = 255u * 128u - coef1;
        for (int c = 0; c < 3; c++) {
            unsigned v = s[c] * coef1 + d[c] * coef2 + (0x80u << 7);
            d[c] = (uint8_t)((((v >> 8) + v) >> 8) >> 7);
        }
        unsigned v = outa255 + 0x80;
        d[3] = (uint8_t)(((v >> 8) + v) >> 8);
    }
}

/* ---- Pillow GaussianBlur (BoxBlur.c) and A1111 masking.fill ----------------------------------- */

/* _gaussian_blur_radius: the box radius whose 3 passes approximate sigma = radius (float math). */
static float box_radius(float radius, int passes) {
    float sigma2 = radius * radius / passes;
    float L = (float)sqrt(12.0 * sigma2 + 1.0);
    float l = (float)floor((L - 1.0) / 2.0);
    float a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
    a /= 6 * (sigma2 - (l + 1) * (l + 1));
    return l + a;
}

/* ImagingLineBoxBlur32 on one line of n 4-byte pixels spaced `step` pixels apart (in and out separate). */
static void box_line(const uint8_t *in, uint8_t *out, int n, size_t step, int radius, uint32_t ww, uint32_t fw) {
    const int lastx = n - 1, edge_a = radius + 1 < n ? radius + 1 : n, edge_b = n - radius - 1 > 0 ? n - radius - 1 : 0;
#define PX(i, c) in[(size_t)(i) * step * 4 + (c)]
    for (int c = 0; c < 4; c++) {
        uint32_t acc = PX(0, c) * (uint32_t)(radius + 1);
        for (int x = 0; x < edge_a - 1; x++) acc += PX(x, c);
        acc += PX(lastx, c) * (uint32_t)(radius - edge_a + 1);
        for (int x = 0; x <= lastx; x++) {
            /* the window moves on: drop the pixel leaving on the left, add the one entering on the right,
               both clamped to the line's ends, in Pillow's three ranges; the two pixels just outside the
               window get the fractional weight fw */
            int sub, add, far;
            if (edge_a <= edge_b) {
                if (x < edge_a) sub = 0, add = x + radius, far = x + radius + 1;
                else if (x < edge_b) sub = x - radius - 1, add = x + radius, far = x + radius + 1;
                else sub = x - radius - 1, add = lastx, far = lastx;
            } else {
                if (x < edge_b) sub = 0, add = x + radius, far = x + radius + 1;
                else if (x < edge_a) sub = 0, add = lastx, far = lastx;
                else sub = x - radius - 1, add = lastx, far = lastx;
            }
            acc += (uint32_t)((int)PX(add, c) - (int)PX(sub, c));
            uint32_t bulk = acc * ww + (uint32_t)(PX(sub, c) + PX(far, c)) * fw;
            out[(size_t)x * step * 4 + c] = (uint8_t)((bulk + (1u << 23)) >> 24);
        }
    }
#undef PX
}

/* ImagingHorizontalBoxBlur over rows (vertical = 0) or, as Pillow does on the transposed image, columns. */
static int box_pass(uint8_t *img, int w, int h, float fradius, int vertical) {
    const int radius = (int)fradius;
    const uint32_t ww = (uint32_t)((float)(1 << 24) / (fradius * 2 + 1));
    const uint32_t fw = ((1u << 24) - (uint32_t)(radius * 2 + 1) * ww) / 2;
    const int n = vertical ? h : w, lines = vertical ? w : h;
    const size_t step = vertical ? (size_t)w : 1;
    uint8_t *line = malloc((size_t)n * 4), *res = malloc((size_t)n * 4);
    if (!line || !res) {
        free(line), free(res);
        return kiln_error(KILN_ENOMEM, "out of memory blurring a %dx%d image", w, h);
    }
    for (int l = 0; l < lines; l++) {
        uint8_t *base = img + (vertical ? (size_t)l * 4 : (size_t)l * w * 4);
        for (int i = 0; i < n; i++) memcpy(line + (size_t)i * 4, base + (size_t)i * step * 4, 4);
        box_line(line, res, n, 1, radius, ww, fw);
        for (int i = 0; i < n; i++) memcpy(base + (size_t)i * step * 4, res + (size_t)i * 4, 4);
    }
    free(line), free(res);
    return KILN_OK;
}

int kiln_pil_gaussian_blur4(const uint8_t *src, int w, int h, float radius, uint8_t *dst) {
    if (w < 1 || h < 1) return kiln_error(KILN_EINVAL, "gaussian blur: empty %dx%d image", w, h);
    if (dst != src) memcpy(dst, src, (size_t)w * h * 4);
    if (radius == 0) return KILN_OK; /* ImageFilter.GaussianBlur(0) copies */
    const int passes = 3;
    const float r = box_radius(radius, passes);
    if (r == 0) return KILN_OK;
    for (int i = 0; i < passes; i++) KILN_TRY(box_pass(dst, w, h, r, 0));
    for (int i = 0; i < passes; i++) KILN_TRY(box_pass(dst, w, h, r, 1));
    return KILN_OK;
}

/* "RGBa" -> "RGBA": un-premultiply where the alpha is partial (Convert.c). */
static void unpremultiply(uint8_t *px, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = px + i * 4;
        unsigned a = p[3];
        if (a == 0 || a == 255) continue;
        for (int c = 0; c < 3; c++) {
            unsigned v = 255u * p[c] / a;
            p[c] = (uint8_t)(v > 255 ? 255 : v);
        }
    }
}

int kiln_masking_fill(const uint8_t *rgb, const uint8_t *mask, int w, int h, uint8_t *out) {
    const size_t n = (size_t)w * h;
    uint8_t *masked = malloc(n * 4), *blurred = malloc(n * 4), *mod = calloc(n * 4, 1);
    int rc = masked && blurred && mod ? KILN_OK : kiln_error(KILN_ENOMEM, "out of memory filling a %dx%d image", w, h);
    /* paste the opaque image into a transparent RGBa one through invert(mask): premultiplied by 255 - mask */
    for (size_t i = 0; rc == KILN_OK && i < n; i++) {
        unsigned m = 255u - mask[i];
        for (int c = 0; c < 3; c++) masked[i * 4 + c] = (uint8_t)div255(rgb[i * 3 + c] * m);
        masked[i * 4 + 3] = (uint8_t)div255(255u * m);
    }
    static const struct {
        float radius;
        int repeats;
    } rounds[] = {{256, 1}, {64, 1}, {16, 2}, {4, 4}, {2, 2}, {0, 1}};
    for (size_t r = 0; rc == KILN_OK && r < sizeof rounds / sizeof rounds[0]; r++) {
        rc = kiln_pil_gaussian_blur4(masked, w, h, rounds[r].radius, blurred);
        if (rc) break;
        unpremultiply(blurred, n);
        for (int k = 0; k < rounds[r].repeats; k++) kiln_alpha_composite_rgba(mod, blurred, w, h);
    }
    for (size_t i = 0; rc == KILN_OK && i < n; i++) memcpy(out + i * 3, mod + i * 4, 3);
    free(masked), free(blurred), free(mod);
    return rc;
}

/* ---- Pillow resampling (Resample.c, 8 bits per channel) ---------------------------------------- */

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc_filter(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

/* precompute_coeffs + normalize_coeffs_8bpc: per output pixel the first tap, the tap count and
 * ksize fixed-point weights. */
typedef struct pil_coeffs {
    int ksize;
    int *bounds; /* [out][2]: xmin, count */
    int *k;      /* [out][ksize] */
} pil_coeffs;

static int pil_coeffs_make(int in_size, float in0, float in1, int out_size, kiln_pil_filter f, pil_coeffs *c) {
    double (*filter)(double) = f == KILN_PIL_LANCZOS ? lanczos_filter : bicubic_filter;
    const double fsupport = f == KILN_PIL_LANCZOS ? 3.0 : 2.0;
    double scale = (double)(in1 - in0) / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = fsupport * filterscale;
    c->ksize = (int)ceil(support) * 2 + 1;
    c->bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    c->k = calloc((size_t)out_size * c->ksize, sizeof(int));
    double *kk = malloc(sizeof(double) * (size_t)c->ksize);
    if (!c->bounds || !c->k || !kk) {
        free(kk);
        return kiln_error(KILN_ENOMEM, "out of memory resizing to %d px", out_size);
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            kk[x] = filter((x + xmin - center + 0.5) * ss);
            ww += kk[x];
        }
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? kk[x] / ww : kk[x];
            c->k[(size_t)xx * c->ksize + x] = v < 0 ? (int)(-0.5 + v * (1 << PIL_PRECISION_BITS))
                                                    : (int)(0.5 + v * (1 << PIL_PRECISION_BITS));
        }
        c->bounds[xx * 2] = xmin;
        c->bounds[xx * 2 + 1] = xmax;
    }
    free(kk);
    return KILN_OK;
}

static void pil_coeffs_free(pil_coeffs *c) {
    free(c->bounds);
    free(c->k);
}

static uint8_t clip8(int64_t v) {
    if (v >= ((int64_t)1 << PIL_PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PIL_PRECISION_BITS);
}

/* NEAREST: Pillow's ImagingScaleAffine, source coordinates accumulated in double from the pixel centres. */
static void resize_nearest(const uint8_t *src, int w, int h, int channels, const float b[4], int out_w, int out_h,
                           uint8_t *dst) {
    const double a0 = (double)(b[2] - b[0]) / out_w, a4 = (double)(b[3] - b[1]) / out_h;
    double xo = b[0] + a0 * 0.5, yo = b[1] + a4 * 0.5;
    for (int x = 0; x < out_w; x++, xo += a0) {
        int xin = xo < 0.0 ? -1 : (int)xo;
        if (xin >= w) xin = -1;
        double y = yo;
        for (int yy = 0; yy < out_h; yy++, y += a4) {
            int yin = y < 0.0 ? -1 : (int)y;
            uint8_t *o = dst + ((size_t)yy * out_w + x) * channels;
            if (xin < 0 || yin < 0 || yin >= h) memset(o, 0, (size_t)channels);
            else memcpy(o, src + ((size_t)yin * w + xin) * channels, (size_t)channels);
        }
    }
}

int kiln_pil_resize_u8(const uint8_t *src, int w, int h, int channels, const float *box, int out_w, int out_h,
                       kiln_pil_filter filter, uint8_t *dst) {
    if (w < 1 || h < 1 || out_w < 1 || out_h < 1 || channels < 1 || channels > 4)
        return kiln_error(KILN_EINVAL, "resize: bad size %dx%dx%d -> %dx%d", w, h, channels, out_w, out_h);
    float b[4] = {0, 0, (float)w, (float)h};
    if (box) memcpy(b, box, sizeof b);
    if (b[0] < 0 || b[1] < 0 || b[2] > w || b[3] > h || b[2] < b[0] || b[3] < b[1])
        return kiln_error(KILN_EINVAL, "resize: box (%g, %g, %g, %g) is outside the %dx%d image", b[0], b[1], b[2], b[3], w,
                          h);
    if (filter == KILN_PIL_NEAREST) {
        resize_nearest(src, w, h, channels, b, out_w, out_h, dst);
        return KILN_OK;
    }
    const int need_h = out_w != w || b[0] != 0 || b[2] != out_w, need_v = out_h != h || b[1] != 0 || b[3] != out_h;
    pil_coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL;
    int rc = KILN_OK;
    if (need_h) rc = pil_coeffs_make(w, b[0], b[2], out_w, filter, &ch);
    if (rc == KILN_OK && need_v) rc = pil_coeffs_make(h, b[1], b[3], out_h, filter, &cv);
    const int tw = need_h ? out_w : w;
    if (rc == KILN_OK) {
        tmp = malloc((size_t)tw * h * channels);
        if (!tmp) rc = kiln_error(KILN_ENOMEM, "out of memory resizing a %dx%d image", w, h);
    }
    if (rc == KILN_OK && need_h) {
        for (int y = 0; y < h; y++)
            for (int xx = 0; xx < out_w; xx++) {
                const int xmin = ch.bounds[xx * 2], xmax = ch.bounds[xx * 2 + 1];
                const int *k = ch.k + (size_t)xx * ch.ksize;
                for (int c = 0; c < channels; c++) {
                    int64_t ss = (int64_t)1 << (PIL_PRECISION_BITS - 1);
                    for (int x = 0; x < xmax; x++) ss += (int64_t)src[((size_t)y * w + x + xmin) * channels + c] * k[x];
                    tmp[((size_t)y * out_w + xx) * channels + c] = clip8(ss);
                }
            }
    } else if (rc == KILN_OK) {
        memcpy(tmp, src, (size_t)w * h * channels);
    }
    if (rc == KILN_OK && need_v) {
        for (int yy = 0; yy < out_h; yy++) {
            const int ymin = cv.bounds[yy * 2], ymax = cv.bounds[yy * 2 + 1];
            const int *k = cv.k + (size_t)yy * cv.ksize;
            for (int xx = 0; xx < tw; xx++)
                for (int c = 0; c < channels; c++) {
                    int64_t ss = (int64_t)1 << (PIL_PRECISION_BITS - 1);
                    for (int y = 0; y < ymax; y++) ss += (int64_t)tmp[((size_t)(y + ymin) * tw + xx) * channels + c] * k[y];
                    dst[((size_t)yy * tw + xx) * channels + c] = clip8(ss);
                }
        }
    } else if (rc == KILN_OK) {
        memcpy(dst, tmp, (size_t)tw * h * channels);
    }
    free(tmp);
    pil_coeffs_free(&ch);
    pil_coeffs_free(&cv);
    return rc;
}

int kiln_latent_mask(const uint8_t *mask, int w, int h, int lat_w, int lat_h, int channels, int round_mask,
                     uint8_t *resized, float *nmask) {
    uint8_t *small = malloc((size_t)lat_w * lat_h);
    if (!small) return kiln_error(KILN_ENOMEM, "out of memory");
    /* A1111 resizes an RGB copy of the L mask; every band of it is this one */
    int rc = kiln_pil_resize_u8(mask, w, h, 1, NULL, lat_w, lat_h, KILN_PIL_BICUBIC, small);
    if (rc == KILN_OK) {
        if (resized) memcpy(resized, small, (size_t)lat_w * lat_h);
        for (size_t i = 0; i < (size_t)lat_w * lat_h; i++) {
            float v = (float)small[i] / 255.0f;
            if (round_mask) v = nearbyintf(v); /* np.around: halves to even (v = 0.5 cannot occur) */
            for (int c = 0; c < channels; c++) nmask[(size_t)c * lat_w * lat_h + i] = v;
        }
    }
    free(small);
    return rc;
}

/* ---- images.resize_image ----------------------------------------------------------------------- */

/* Image.paste(im, (x, y)) of an ow x oh image into a w x h one, clipped. */
static void paste(uint8_t *dst, int w, int h, const uint8_t *im, int ow, int oh, int x0, int y0, int channels) {
    for (int y = 0; y < oh; y++) {
        int dy = y + y0;
        if (dy < 0 || dy >= h) continue;
        for (int x = 0; x < ow; x++) {
            int dx = x + x0;
            if (dx < 0 || dx >= w) continue;
            memcpy(dst + ((size_t)dy * w + dx) * channels, im + ((size_t)y * ow + x) * channels, (size_t)channels);
        }
    }
}

/* Image.resize(w, h, LANCZOS), or a copy when the size is unchanged (Pillow returns a copy then). */
static int lanczos(const uint8_t *src, int w, int h, int channels, const float *box, int out_w, int out_h, uint8_t *dst) {
    return kiln_pil_resize_u8(src, w, h, channels, box, out_w, out_h, KILN_PIL_LANCZOS, dst);
}

int kiln_resize_image(int mode, const uint8_t *src, int w, int h, int channels, int out_w, int out_h, uint8_t *dst) {
    if (mode < 0 || mode > 3)
        return kiln_error(KILN_EINVAL, "resize_image: mode %d is not 0..3", mode);
    if (mode == 0) return lanczos(src, w, h, channels, NULL, out_w, out_h, dst);
    const double ratio = (double)out_w / out_h, src_ratio = (double)w / h;
    int src_w, src_h;
    if (mode == 1) {
        src_w = ratio > src_ratio ? out_w : w * out_h / h;
        src_h = ratio <= src_ratio ? out_h : h * out_w / w;
    } else {
        src_w = ratio < src_ratio ? out_w : w * out_h / h;
        src_h = ratio >= src_ratio ? out_h : h * out_w / w;
    }
    if (src_w < 1) src_w = 1;
    if (src_h < 1) src_h = 1;
    uint8_t *resized = malloc((size_t)src_w * src_h * channels);
    if (!resized) return kiln_error(KILN_ENOMEM, "out of memory resizing to %dx%d", src_w, src_h);
    int rc = lanczos(src, w, h, channels, NULL, src_w, src_h, resized);
    memset(dst, 0, (size_t)out_w * out_h * channels);
    if (rc == KILN_OK) paste(dst, out_w, out_h, resized, src_w, src_h, out_w / 2 - src_w / 2, out_h / 2 - src_h / 2, channels);
    if (rc == KILN_OK && mode >= 2) {
        /* fill the bars with the first/last row (column) stretched, as A1111 does with a zero-height box and
           Image.resize's default filter (BICUBIC) */
        uint8_t *bar = NULL;
        if (ratio < src_ratio) {
            int fill = out_h / 2 - src_h / 2;
            if (fill > 0 && (bar = malloc((size_t)out_w * fill * channels))) {
                float top[4] = {0, 0, (float)out_w, 0}, bottom[4] = {0, (float)src_h, (float)out_w, (float)src_h};
                rc = kiln_pil_resize_u8(resized, src_w, src_h, channels, top, out_w, fill, KILN_PIL_BICUBIC, bar);
                if (rc == KILN_OK) paste(dst, out_w, out_h, bar, out_w, fill, 0, 0, channels);
                if (rc == KILN_OK) rc = kiln_pil_resize_u8(resized, src_w, src_h, channels, bottom, out_w, fill, KILN_PIL_BICUBIC, bar);
                if (rc == KILN_OK) paste(dst, out_w, out_h, bar, out_w, fill, 0, fill + src_h, channels);
            } else if (fill > 0) {
                rc = kiln_error(KILN_ENOMEM, "out of memory");
            }
        } else if (ratio > src_ratio) {
            int fill = out_w / 2 - src_w / 2;
            if (fill > 0 && (bar = malloc((size_t)fill * out_h * channels))) {
                float left[4] = {0, 0, 0, (float)out_h}, right[4] = {(float)src_w, 0, (float)src_w, (float)out_h};
                rc = kiln_pil_resize_u8(resized, src_w, src_h, channels, left, fill, out_h, KILN_PIL_BICUBIC, bar);
                if (rc == KILN_OK) paste(dst, out_w, out_h, bar, fill, out_h, 0, 0, channels);
                if (rc == KILN_OK) rc = kiln_pil_resize_u8(resized, src_w, src_h, channels, right, fill, out_h, KILN_PIL_BICUBIC, bar);
                if (rc == KILN_OK) paste(dst, out_w, out_h, bar, fill, out_h, fill + src_w, 0, channels);
            } else if (fill > 0) {
                rc = kiln_error(KILN_ENOMEM, "out of memory");
            }
        }
        free(bar);
    }
    free(resized);
    return rc;
}
