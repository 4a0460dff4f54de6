/* error.h — setting and reading the thread-local error message behind kiln_last_error(). */
#ifndef KILN_CORE_ERROR_H
#define KILN_CORE_ERROR_H

#include "kiln.h"

#if defined(__GNUC__)
#define KILN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define KILN_PRINTF(a, b)
#endif

/* Records a formatted message for kiln_last_error() and returns status, so that
 * fallible code reads `return kiln_error(KILN_EFORMAT, "%s: ...", path);`. */
int kiln_error(int status, const char *fmt, ...) KILN_PRINTF(2, 3);
/* Prefixes the current message with more context ("loading model X: " + old message)
 * and returns status unchanged. */
int kiln_error_context(int status, const char *fmt, ...) KILN_PRINTF(2, 3);
/* Clears the message. */
void kiln_error_clear(void);

/* Propagate a failing status: KILN_TRY(f(x)); */
#define KILN_TRY(expr)                                                                              \
    do {                                                                                             \
        int kiln_try_rc_ = (expr);                                                                   \
        if (kiln_try_rc_ < 0) return kiln_try_rc_;                                                   \
    } while (0)

#endif
