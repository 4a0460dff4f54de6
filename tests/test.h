/* test.h — a tiny test harness: each test file is one executable run by CTest.
 *
 *   TEST(name) { CHECK(cond); CHECK_NEAR(a, b, tol); }
 *   int main(void) { RUN(name); return test_summary(); }
 *
 * A failed CHECK prints file:line and the expression and marks the test failed
 * (the test goes on, so one run shows every failure). */
#ifndef KILN_TEST_H
#define KILN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures_total = 0, test_failed_current = 0, tests_run = 0, tests_failed = 0;

#define TEST(name) static void name(void)

#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                 \
            test_failed_current = 1;                                                                 \
            test_failures_total++;                                                                   \
        }                                                                                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                         \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);                 \
            fprintf(stderr, __VA_ARGS__);                                                            \
            fprintf(stderr, "\n");                                                                   \
            test_failed_current = 1;                                                                 \
            test_failures_total++;                                                                   \
        }                                                                                            \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                        \
    do {                                                                                             \
        double test_a_ = (double)(a), test_b_ = (double)(b);                                         \
        if (!(fabs(test_a_ - test_b_) <= (tol))) {                                                   \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g, tol %.3g\n", __FILE__,  \
                    __LINE__, #a, test_a_, #b, test_b_, (double)(tol));                              \
            test_failed_current = 1;                                                                 \
            test_failures_total++;                                                                   \
        }                                                                                            \
    } while (0)

#define RUN(name)                                                                                    \
    do {                                                                                             \
        test_failed_current = 0;                                                                     \
        name();                                                                                      \
        tests_run++;                                                                                 \
        if (test_failed_current) tests_failed++;                                                     \
        printf("%s %s\n", test_failed_current ? "FAIL" : "ok  ", #name);                             \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", tests_run - tests_failed, tests_failed);
    return tests_failed ? 1 : 0;
}

/* Directory of ../shared/fixtures, from the KILN_FIXTURES environment variable or the
 * compile-time default the build sets. */
static inline const char *test_fixtures_dir(void) {
    const char *env = getenv("KILN_FIXTURES");
    if (env && *env) return env;
#ifdef KILN_FIXTURES_DIR
    return KILN_FIXTURES_DIR;
#else
    return "../shared/fixtures";
#endif
}

/* Joins the fixture dir and a relative path into a static buffer (one at a time). */
static inline const char *test_fixture(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", test_fixtures_dir(), rel);
    return buf;
}

/* Largest |a-b| over n floats; NaN anywhere gives INFINITY. */
static inline double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

/* Relative L2 error ||a-b|| / ||b||; NaN anywhere gives INFINITY. */
static inline double test_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (num != num) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
