/* atomic_file.h — writing a file so that readers see either the old file or the complete new one.
 *
 * The data goes to "PATH.tmp-XXXXXX" in the same directory (so rename stays on one file system),
 * is flushed and fsync'ed, then renamed over PATH. On any failure the temporary file is removed
 * and PATH is left exactly as it was (absent, or the old contents).
 *
 *   kiln_atomic_file af;
 *   KILN_TRY(kiln_atomic_open(path, 0, &af));
 *   fwrite(..., af.fp);                       // or kiln_atomic_write_all(&af, buf, n)
 *   return kiln_atomic_commit(&af);           // or kiln_atomic_abort(&af) to give up
 *
 * Thread-safe: every call makes its own uniquely named temporary file. */
#ifndef KILN_IO_ATOMIC_FILE_H
#define KILN_IO_ATOMIC_FILE_H

#include <stddef.h>

#include "kiln.h"
#include <stdio.h>

/* Flags for kiln_atomic_open / kiln_atomic_write. */
enum {
    /* Fail at commit (KILN_EIO, "exists") instead of replacing an existing PATH; the check and
     * the final link are one atomic step, so two writers never both win. */
    KILN_ATOMIC_NO_REPLACE = 1,
};

typedef struct kiln_atomic_file {
    FILE *fp;        /* write here (binary mode) */
    char *path;      /* final path (owned) */
    char *tmp_path;  /* temporary path (owned) */
    int flags;
    int failed;      /* set by kiln_atomic_write_all on a short write; commit then aborts */
} kiln_atomic_file;

/* Creates the temporary file next to path. On failure nothing is created, *af is cleared and
 * the message names path and the OS error ("No such file or directory" for a missing folder). */
int kiln_atomic_open(const char *path, int flags, kiln_atomic_file *af);
/* fwrite that records failure in af (so a later commit refuses); returns 0 or KILN_EIO. */
int kiln_atomic_write_all(kiln_atomic_file *af, const void *data, size_t size);
/* Flushes, fsyncs, closes and renames into place. On failure the temporary file is removed.
 * Always releases af (it must not be used again, whatever the result). */
int kiln_atomic_commit(kiln_atomic_file *af);
/* Closes and removes the temporary file; PATH is untouched. Safe on a cleared af. */
void kiln_atomic_abort(kiln_atomic_file *af);

/* One-shot: writes size bytes to path atomically. */
int kiln_atomic_write(const char *path, const void *data, size_t size, int flags);

/* Reads a whole file into a malloc'ed buffer (*data, *size; a NUL byte is appended past the end
 * for convenience). The message names the path. */
int kiln_read_file(const char *path, size_t max_size, void **data, size_t *size);

#endif
