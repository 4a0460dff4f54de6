/* error.c — the thread-local last-error message and status-code names. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define KILN_ERRMSG_SIZE 1024
static _Thread_local char errmsg[KILN_ERRMSG_SIZE];

int kiln_error(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return status;
}

int kiln_error_context(int status, const char *fmt, ...) {
    char prefix[KILN_ERRMSG_SIZE], old[KILN_ERRMSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, errmsg, sizeof old);
    /* prefix + ": " + old, truncated to the buffer */
    size_t n = strlen(prefix);
    if (n > sizeof errmsg - 3) n = sizeof errmsg - 3;
    memcpy(errmsg, prefix, n);
    memcpy(errmsg + n, ": ", 2);
    size_t room = sizeof errmsg - n - 3, m = strlen(old);
    if (m > room) m = room;
    memcpy(errmsg + n + 2, old, m);
    errmsg[n + 2 + m] = '\0';
    return status;
}

void kiln_error_clear(void) { errmsg[0] = '\0'; }

const char *kiln_last_error(void) { return errmsg; }

const char *kiln_status_str(int status) {
    switch (status) {
    case KILN_OK: return "ok";
    case KILN_EINVAL: return "invalid argument";
    case KILN_ENOMEM: return "out of memory";
    case KILN_EIO: return "I/O error";
    case KILN_EFORMAT: return "bad file format";
    case KILN_EUNSUPPORTED: return "unsupported";
    case KILN_ENOTFOUND: return "not found";
    case KILN_EBACKEND: return "backend failure";
    case KILN_ECANCELLED: return "cancelled";
    default: return "unknown status";
    }
}

const char *kiln_version(void) { return "0.1.0"; }
