/* log.h — messages to the caller's log callback (kiln_log_fn, per model or context; never a global). */
#ifndef KILN_CORE_LOG_H
#define KILN_CORE_LOG_H

#include "core/error.h"
#include "kiln.h"

/* A sink: the callback and its user pointer; fn NULL = silent. */
typedef struct kiln_logger {
    kiln_log_fn fn;
    void *user;
} kiln_logger;

/* Formats and sends one message (no trailing newline) to the logger, if it has a callback. */
void kiln_log(const kiln_logger *log, kiln_log_level level, const char *fmt, ...) KILN_PRINTF(3, 4);

#endif
