/* strbuf.c — the growable string (see strbuf.h). */
#include "core/strbuf.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

int kiln_strbuf_add(kiln_strbuf *b, const char *s, size_t n) {
    if (b->oom) return KILN_ENOMEM;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return kiln_error(KILN_ENOMEM, "out of memory building a %zu-byte string", b->len + n);
        }
        b->s = p;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    return KILN_OK;
}

int kiln_strbuf_str(kiln_strbuf *b, const char *s) { return kiln_strbuf_add(b, s, strlen(s)); }
