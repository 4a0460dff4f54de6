/* strbuf.h — a growable NUL-terminated string, for code that builds text piece by piece (prompt rewriting,
 * infotext). Appends after a failed one are no-ops (the failure sticks in `oom`), so a builder may append many
 * pieces and check once. */
#ifndef KILN_CORE_STRBUF_H
#define KILN_CORE_STRBUF_H

#include <stddef.h>

typedef struct kiln_strbuf {
    char *s;        /* the text, NUL-terminated once anything was added (NULL before); malloc'ed, caller frees */
    size_t len;     /* bytes in s, without the NUL */
    size_t cap;     /* bytes allocated */
    int oom;        /* an append ran out of memory: the text is incomplete */
} kiln_strbuf;

/* Appends n bytes of s. Returns 0, or KILN_ENOMEM (with a message) now and for every later call once one failed. */
int kiln_strbuf_add(kiln_strbuf *b, const char *s, size_t n);
/* Appends a NUL-terminated string. */
int kiln_strbuf_str(kiln_strbuf *b, const char *s);

#endif
