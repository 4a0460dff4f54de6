/* log.c — formatting log messages for the caller's callback. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>

void kiln_log(const kiln_logger *log, kiln_log_level level, const char *fmt, ...) {
    if (!log || !log->fn) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log->fn(log->user, level, msg);
}
