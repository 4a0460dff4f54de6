/* atomic_file.c — write-to-temporary-then-rename file output, and whole-file reads. See atomic_file.h. */
#include "io/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* A suffix unique enough across threads and processes; O_EXCL catches the rare collision. */
static void make_suffix(char out[7]) {
    static uint64_t counter = 0;
    uint64_t n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_nsec * 0xBF58476D1CE4E5B9ull ^
                 n * 0x94D049BB133111EBull ^ (uint64_t)(uintptr_t)out;
    x ^= x >> 31;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int i = 0; i < 6; i++) {
        out[i] = alphabet[x % 36];
        x /= 36;
    }
    out[6] = 0;
}

int kiln_atomic_open(const char *path, int flags, kiln_atomic_file *af) {
    memset(af, 0, sizeof *af);
    if (!path || !*path) return kiln_error(KILN_EINVAL, "atomic write: empty output path");
    size_t len = strlen(path);
    char *tmp = malloc(len + 16);
    char *final_path = dup_str(path);
    if (!tmp || !final_path) {
        free(tmp);
        free(final_path);
        return kiln_error(KILN_ENOMEM, "writing %s: out of memory", path);
    }
    int fd = -1, err = 0;
    for (int attempt = 0; attempt < 100; attempt++) {
        char suffix[7];
        make_suffix(suffix);
        snprintf(tmp, len + 16, "%s.tmp-%s", path, suffix);
        /* 0666 so the final file gets the usual umask-derived permissions. */
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST) break;
    }
    if (fd < 0) {
        err = errno;
        free(tmp);
        free(final_path);
        return kiln_error(KILN_EIO, "writing %s: cannot create a temporary file next to it: %s", path,
                          strerror(err));
    }
    FILE *fp = fdopen(fd, "wb");
    if (!fp) {
        err = errno;
        close(fd);
        unlink(tmp);
        free(tmp);
        free(final_path);
        return kiln_error(KILN_EIO, "writing %s: %s", path, strerror(err));
    }
    af->fp = fp;
    af->path = final_path;
    af->tmp_path = tmp;
    af->flags = flags;
    return KILN_OK;
}

int kiln_atomic_write_all(kiln_atomic_file *af, const void *data, size_t size) {
    if (!af->fp || af->failed) return KILN_EIO;
    if (size && fwrite(data, 1, size, af->fp) != size) {
        af->failed = errno ? errno : EIO;
        return kiln_error(KILN_EIO, "writing %s: %s", af->path, strerror(af->failed));
    }
    return KILN_OK;
}

static void release(kiln_atomic_file *af) {
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}

void kiln_atomic_abort(kiln_atomic_file *af) {
    if (!af) return;
    if (af->fp) fclose(af->fp);
    if (af->tmp_path) unlink(af->tmp_path);
    release(af);
}

int kiln_atomic_commit(kiln_atomic_file *af) {
    if (!af->fp) {
        release(af);
        return kiln_error(KILN_EINVAL, "atomic write: commit on a file that is not open");
    }
    int err = af->failed;
    if (!err && (fflush(af->fp) != 0 || ferror(af->fp))) err = errno ? errno : EIO;
    /* fsync before rename: otherwise a crash can leave the new name pointing at empty data. */
    if (!err && fsync(fileno(af->fp)) != 0 && errno != EINVAL && errno != EROFS) err = errno;
    if (fclose(af->fp) != 0 && !err) err = errno ? errno : EIO;
    af->fp = NULL;
    if (err) {
        int rc = kiln_error(KILN_EIO, "writing %s: %s", af->path, strerror(err));
        kiln_atomic_abort(af);
        return rc;
    }
    if (af->flags & KILN_ATOMIC_NO_REPLACE) {
        /* link() fails with EEXIST if the target appeared meanwhile: check and create in one step. */
        if (link(af->tmp_path, af->path) != 0) {
            err = errno;
            int rc = err == EEXIST ? kiln_error(KILN_EIO, "writing %s: the file exists (not replacing it)", af->path)
                                   : kiln_error(KILN_EIO, "writing %s: %s", af->path, strerror(err));
            kiln_atomic_abort(af);
            return rc;
        }
        unlink(af->tmp_path);
    } else if (rename(af->tmp_path, af->path) != 0) {
        err = errno;
        int rc = kiln_error(KILN_EIO, "writing %s: cannot rename %s into place: %s", af->path, af->tmp_path,
                            strerror(err));
        kiln_atomic_abort(af);
        return rc;
    }
    release(af);
    return KILN_OK;
}

int kiln_atomic_write(const char *path, const void *data, size_t size, int flags) {
    kiln_atomic_file af;
    KILN_TRY(kiln_atomic_open(path, flags, &af));
    int rc = kiln_atomic_write_all(&af, data, size);
    if (rc < 0) {
        kiln_atomic_abort(&af);
        return rc;
    }
    return kiln_atomic_commit(&af);
}

int kiln_read_file(const char *path, size_t max_size, void **data, size_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return kiln_error(KILN_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return kiln_error(KILN_EIO, "cannot read %s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)max_size) {
        fclose(fp);
        return kiln_error(KILN_EFORMAT, "%s: file too large (%lld bytes, limit %zu)", path, (long long)st.st_size,
                          max_size);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return kiln_error(KILN_ENOMEM, "reading %s: out of memory (%zu bytes)", path, n);
    }
    size_t got = n ? fread(buf, 1, n, fp) : 0;
    int bad = got != n || ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return kiln_error(KILN_EIO, "reading %s: short read (%zu of %zu bytes)", path, got, n);
    }
    buf[n] = 0;
    *data = buf;
    *size = n;
    return KILN_OK;
}
