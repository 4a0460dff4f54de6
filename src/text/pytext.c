/* pytext.c — Python-compatible character classes and float(str) for the prompt parsers
 * (see pytext.h for why these exist). */
#include "text/pytext.h"

#include "core/error.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

int kiln_py_utf8_next(const char *s, size_t len, int32_t *cp) {
    if (len == 0) return 0;
    utf8proc_int32_t c;
    utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)(len > 4 ? 4 : len), &c);
    if (n <= 0 || c < 0) return 0;
    *cp = c;
    return (int)n;
}

int kiln_py_check_utf8(const char *s, size_t len, const char *what) {
    size_t i = 0;
    while (i < len) {
        int32_t cp;
        int n = kiln_py_utf8_next(s + i, len - i, &cp);
        if (n == 0)
            return kiln_error(KILN_EINVAL, "%s is not valid UTF-8 (bad byte 0x%02x at offset %zu)", what,
                              (unsigned)(unsigned char)s[i], i);
        if (cp == 0) return kiln_error(KILN_EINVAL, "%s contains a NUL character at offset %zu", what, i);
        i += (size_t)n;
    }
    return 0;
}

int32_t kiln_py_prev_cp(const char *s, size_t end) {
    size_t start = end - 1;
    /* step back over continuation bytes (at most 3) */
    while (start > 0 && end - start < 4 && ((unsigned char)s[start] & 0xC0) == 0x80) start--;
    int32_t cp = 0;
    if (kiln_py_utf8_next(s + start, end - start, &cp) == 0) return (unsigned char)s[end - 1];
    return cp;
}

int kiln_py_isspace(int32_t cp) {
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int kiln_py_isword(int32_t cp) {
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

int kiln_py_digit(int32_t cp) {
    if (cp >= '0' && cp <= '9') return cp - '0';
    if (cp < 0x80 || utf8proc_category(cp) != UTF8PROC_CATEGORY_ND) return -1;
    /* Unicode lays every decimal digit set out as runs of ten, 0 first, sometimes back to back
     * (the mathematical digits): the value is the distance from the start of the run, mod 10. */
    int32_t start = cp;
    while (cp - start < 100 && utf8proc_category(start - 1) == UTF8PROC_CATEGORY_ND) start--;
    return (int)((cp - start) % 10);
}

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static void c_locale_init(void) { c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

static int ascii_ieq(const char *a, size_t n, const char *b) {
    if (strlen(b) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != b[i]) return 0;
    }
    return 1;
}

static int float_fail(const char *s, size_t len) {
    return kiln_error(KILN_EINVAL, "could not convert string to float: '%.*s'", (int)(len > 64 ? 64 : len), s);
}

int kiln_py_float(const char *s, size_t len, double *out) {
    /* Python first maps Unicode digits to ASCII and Unicode spaces to ' '; anything else
     * outside ASCII is an error. */
    char *buf = malloc(len + 1);
    if (!buf) return kiln_error(KILN_ENOMEM, "out of memory parsing a number");
    size_t n = 0, i = 0;
    while (i < len) {
        int32_t cp;
        int k = kiln_py_utf8_next(s + i, len - i, &cp);
        if (k == 0) { free(buf); return float_fail(s, len); }
        i += (size_t)k;
        if (kiln_py_isspace(cp)) buf[n++] = ' ';
        else if (kiln_py_digit(cp) >= 0) buf[n++] = (char)('0' + kiln_py_digit(cp));
        else if (cp < 0x80 && cp != 0) buf[n++] = (char)cp;
        else { free(buf); return float_fail(s, len); }
    }
    size_t a = 0, b = n;
    while (a < b && buf[a] == ' ') a++;
    while (b > a && buf[b - 1] == ' ') b--;
    /* '_' is allowed only between two digits; drop it after checking. */
    size_t m = 0;
    for (size_t j = a; j < b; j++) {
        if (buf[j] == '_') {
            int ok = j > a && j + 1 < b && buf[j - 1] >= '0' && buf[j - 1] <= '9' && buf[j + 1] >= '0' && buf[j + 1] <= '9';
            if (!ok) { free(buf); return float_fail(s, len); }
            continue;
        }
        buf[m++] = buf[j];
    }
    buf[m] = '\0';
    const char *p = buf;
    size_t q = 0;
    if (p[q] == '+' || p[q] == '-') q++;
    int valid = 0;
    if (ascii_ieq(p + q, m - q, "inf") || ascii_ieq(p + q, m - q, "infinity") || ascii_ieq(p + q, m - q, "nan")) {
        valid = 1;
    } else {
        size_t int_digits = 0, frac_digits = 0;
        while (p[q] >= '0' && p[q] <= '9') { q++; int_digits++; }
        if (p[q] == '.') {
            q++;
            while (p[q] >= '0' && p[q] <= '9') { q++; frac_digits++; }
        }
        valid = int_digits + frac_digits > 0;
        if (valid && (p[q] == 'e' || p[q] == 'E')) {
            q++;
            if (p[q] == '+' || p[q] == '-') q++;
            size_t exp_digits = 0;
            while (p[q] >= '0' && p[q] <= '9') { q++; exp_digits++; }
            valid = exp_digits > 0;
        }
        valid = valid && q == m;
    }
    if (!valid) { free(buf); return float_fail(s, len); }
    pthread_once(&c_locale_once, c_locale_init);
    double v;
    if (c_locale) v = strtod_l(buf, NULL, c_locale);
    else v = strtod(buf, NULL);
    free(buf);
    *out = v;
    return 0;
}

int kiln_py_int(const char *s, size_t len, int *out) {
    size_t i = 0;
    int32_t cp;
    int n;
    while (i < len && (n = kiln_py_utf8_next(s + i, len - i, &cp)) > 0 && kiln_py_isspace(cp)) i += (size_t)n;
    int neg = 0;
    if (i < len && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    long long v = 0;
    int digits = 0, prev_digit = 0, ok = 1;
    while (i < len && ok) {
        n = kiln_py_utf8_next(s + i, len - i, &cp);
        if (n == 0) { ok = 0; break; }
        int d = kiln_py_digit(cp);
        if (d >= 0) {
            v = v * 10 + d;
            if (v > 2147483648LL) ok = 0;
            digits++;
            prev_digit = 1;
        } else if (cp == '_' && prev_digit) {
            prev_digit = 0;
            /* must be followed by a digit */
            int32_t nx;
            int m = kiln_py_utf8_next(s + i + 1, len - i - 1, &nx);
            if (m == 0 || kiln_py_digit(nx) < 0) ok = 0;
        } else {
            break;
        }
        i += (size_t)n;
    }
    while (ok && i < len && (n = kiln_py_utf8_next(s + i, len - i, &cp)) > 0 && kiln_py_isspace(cp)) i += (size_t)n;
    if (!ok || digits == 0 || i != len || (!neg && v > 2147483647LL))
        return kiln_error(KILN_EINVAL, "invalid literal for int() with base 10: '%.*s'", (int)(len > 64 ? 64 : len), s);
    *out = (int)(neg ? -v : v);
    return 0;
}
