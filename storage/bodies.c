/* storage/bodies.c — the body log of the SQLite backend (storage/internal_bodies.h; the design:
 * docs/internals/storage.md, "Bodies").
 *
 * Files in the directory: "<n>" (n decimal, 12 digits) are segments, "spool-<pid>-<k>" bodies
 * being received.  A segment is only ever appended to by the writer that created it; a restart
 * starts a new one, so a torn tail left by a crash is never written after, and garbage only
 * (no committed row points past the last sync). */
#include "storage/internal_bodies.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "util/limits.h"
#include "util/log.h"

#define SEGMENT_NAME_FMT "%012" PRId64
#define SPOOL_PREFIX "spool-"

struct store_bodies {
    char *dir;
    int dirfd;
    /* writer thread only */
    int fd;              /* open segment, -1 before the first append (or after a failure) */
    int64_t segment;     /* its number; the next new one is next */
    int64_t next;
    int64_t end;         /* bytes written to it */
    bool fd_dirty;       /* appended since the last sync */
    bool dir_dirty;      /* a file created or renamed since the last sync */
    int *adopted;        /* fds of spools adopted since the last sync */
    size_t nadopted, adopted_cap;
    /* any thread */
    atomic_int holds;
    atomic_uint_fast64_t spool_seq;
};

struct store_spool {
    struct store_bodies *b;
    char name[64];
    int fd;
    size_t len;
    uint32_t crc;
    bool adopted;
};

static enum store_status errno_status(int e)
{
    return e == ENOSPC || e == EDQUOT ? STORE_ERR_FULL : e == ENOMEM ? STORE_ERR_NOMEM : STORE_ERR_IO;
}

/* Writes all of p at off, through short writes and EINTR. */
static int pwrite_all(int fd, const void *p, size_t len, int64_t off)
{
    const uint8_t *q = p;
    while (len > 0) {
        ssize_t w = pwrite(fd, q, len, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        q += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

static uint32_t crc_update(uint32_t crc, const void *p, size_t len)
{
    const Bytef *q = p;
    while (len > 0) { /* zlib takes a uInt */
        uInt n = len > UINT_MAX ? UINT_MAX : (uInt)len;
        crc = (uint32_t)crc32(crc, q, n);
        q += n;
        len -= n;
    }
    return crc;
}

/* A segment's number from its file name, or -1 when the name is not a segment's. */
static int64_t segment_number(const char *name)
{
    if (strlen(name) != 12 || strspn(name, "0123456789") != 12) return -1;
    return strtoll(name, NULL, 10);
}

/* Scans the directory: the highest segment number (0 when none), spools of an earlier run
 * deleted (their transactions never committed). */
static int scan_dir(struct store_bodies *b, char **err)
{
    int fd = dup(b->dirfd);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    struct dirent *de;
    int64_t max = 0;

    if (!d) {
        if (fd >= 0) close(fd);
        store_set_err(err, "cannot read body directory %s: %s", b->dir, strerror(errno));
        return -1;
    }
    while ((de = readdir(d))) {
        int64_t n = segment_number(de->d_name);
        if (n > max) max = n;
        if (strncmp(de->d_name, SPOOL_PREFIX, strlen(SPOOL_PREFIX)) == 0 &&
            unlinkat(b->dirfd, de->d_name, 0) == 0)
            log_info("storage", "body spool removed name=%s reason=\"left by an earlier run\"", de->d_name);
    }
    closedir(d);
    b->next = max + 1;
    return 0;
}

struct store_bodies *store_bodies_open(const char *dir, char **err)
{
    struct store_bodies *b = calloc(1, sizeof *b);

    if (!b || !(b->dir = strdup(dir))) {
        store_set_err(err, "out of memory");
        goto fail;
    }
    b->fd = b->dirfd = -1;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        store_set_err(err, "cannot create body directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    b->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (b->dirfd < 0) {
        store_set_err(err, "cannot open body directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (scan_dir(b, err) < 0) goto fail;
    return b;
fail:
    store_bodies_close(b);
    return NULL;
}

void store_bodies_close(struct store_bodies *b)
{
    if (!b) return;
    if (b->fd >= 0) close(b->fd);
    for (size_t i = 0; i < b->nadopted; i++) close(b->adopted[i]);
    free(b->adopted);
    if (b->dirfd >= 0) close(b->dirfd);
    free(b->dir);
    free(b);
}

const char *store_bodies_dir(const struct store_bodies *b)
{
    return b->dir;
}

/* Drops the open segment: the next append starts a new one. */
static void abandon_segment(struct store_bodies *b)
{
    if (b->fd >= 0) close(b->fd);
    b->fd = -1;
    b->end = 0;
    b->fd_dirty = false;
}

static enum store_status start_segment(struct store_bodies *b, char **err)
{
    char name[32];

    abandon_segment(b);
    snprintf(name, sizeof name, SEGMENT_NAME_FMT, b->next);
    b->fd = openat(b->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (b->fd < 0) {
        int e = errno;
        store_set_err(err, "cannot create body segment %s/%s: %s", b->dir, name, strerror(e));
        return errno_status(e);
    }
    b->segment = b->next++;
    b->dir_dirty = true;
    return STORE_OK;
}

enum store_status store_bodies_append(struct store_bodies *b, const uint8_t *p, size_t len,
                                      struct store_body_ref *ref, char **err)
{
    enum store_status st;

    if (b->fd < 0 || (b->end > 0 && b->end + (int64_t)len > STORE_BODY_SEGMENT_BYTES)) {
        if ((st = start_segment(b, err)) != STORE_OK) return st;
    }
    if (pwrite_all(b->fd, p, len, b->end) < 0) {
        int e = errno;
        store_set_err(err, "cannot write body segment " SEGMENT_NAME_FMT " in %s: %s", b->segment,
                      b->dir, strerror(e));
        /* Cut the partial write off; if even that fails, leave the segment. */
        if (ftruncate(b->fd, (off_t)b->end) < 0) abandon_segment(b);
        return errno_status(e);
    }
    *ref = (struct store_body_ref){
        .segment = b->segment, .offset = b->end, .len = (int64_t)len, .crc = crc_update(0, p, len)};
    b->end += (int64_t)len;
    b->fd_dirty = true;
    return STORE_OK;
}

static void drop_adopted(struct store_bodies *b)
{
    for (size_t i = 0; i < b->nadopted; i++) close(b->adopted[i]);
    b->nadopted = 0;
}

enum store_status store_bodies_sync(struct store_bodies *b, char **err)
{
    int e = 0;
    const char *what = "";

    if (b->fd >= 0 && b->fd_dirty) {
        if (fdatasync(b->fd) < 0) {
            e = errno;
            what = "segment";
            abandon_segment(b); /* after a failed sync its pages cannot be trusted */
        } else {
            b->fd_dirty = false;
        }
    }
    for (size_t i = 0; !e && i < b->nadopted; i++) {
        if (fdatasync(b->adopted[i]) < 0) {
            e = errno;
            what = "spooled body";
        }
    }
    drop_adopted(b);
    if (!e && b->dir_dirty) {
        if (fsync(b->dirfd) < 0) {
            e = errno;
            what = "directory";
        } else {
            b->dir_dirty = false;
        }
    }
    if (!e) return STORE_OK;
    store_set_err(err, "cannot sync body %s in %s: %s", what, b->dir, strerror(e));
    return errno_status(e);
}

static int open_segment(struct store_bodies *b, int64_t segment)
{
    char name[32];

    snprintf(name, sizeof name, SEGMENT_NAME_FMT, segment);
    return openat(b->dirfd, name, O_RDONLY | O_CLOEXEC);
}

/* Opens the segment of `ref` and checks that it holds the whole body. */
static enum store_status open_checked(struct store_bodies *b, const struct store_body_ref *ref,
                                      const char *id, int *fdp, char **err)
{
    struct stat sb;
    int fd;

    *fdp = -1;
    if (ref->segment <= 0 || ref->offset < 0 || ref->len < 0) {
        store_set_err(err, "message %s: bad body reference", id);
        return STORE_ERR_IO;
    }
    fd = open_segment(b, ref->segment);
    if (fd < 0 && errno == ENOENT) return STORE_ERR_NOT_FOUND;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        store_set_err(err, "message %s: cannot open body segment " SEGMENT_NAME_FMT ": %s", id,
                      ref->segment, strerror(errno));
        if (fd >= 0) close(fd);
        return STORE_ERR_IO;
    }
    if ((int64_t)sb.st_size < ref->offset + ref->len) {
        store_set_err(err, "message %s: body segment " SEGMENT_NAME_FMT " is short (%lld < %lld)", id,
                      ref->segment, (long long)sb.st_size, (long long)(ref->offset + ref->len));
        close(fd);
        return STORE_ERR_IO;
    }
    *fdp = fd;
    return STORE_OK;
}

enum store_status store_bodies_read(struct store_bodies *b, const struct store_body_ref *ref,
                                    const char *id, uint8_t **out, char **err)
{
    enum store_status st;
    uint8_t *buf = NULL;
    size_t got = 0;
    int fd;

    *out = NULL;
    if ((st = open_checked(b, ref, id, &fd, err)) != STORE_OK) return st;
    buf = malloc(ref->len ? (size_t)ref->len : 1);
    if (!buf) {
        store_set_err(err, "message %s: out of memory for its body", id);
        st = STORE_ERR_NOMEM;
        goto out;
    }
    while (got < (size_t)ref->len) {
        ssize_t r = pread(fd, buf + got, (size_t)ref->len - got, (off_t)(ref->offset + (int64_t)got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            store_set_err(err, "message %s: cannot read its body: %s", id, r < 0 ? strerror(errno) : "end of file");
            st = STORE_ERR_IO;
            goto out;
        }
        got += (size_t)r;
    }
    if (crc_update(0, buf, got) != ref->crc) {
        store_set_err(err, "message %s: its body in segment " SEGMENT_NAME_FMT " is damaged (CRC)", id,
                      ref->segment);
        st = STORE_ERR_IO;
        goto out;
    }
    *out = buf;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return st;
}

enum store_status store_bodies_map(struct store_bodies *b, const struct store_body_ref *ref,
                                   const char *id, uint8_t **data, void **map,
                                   size_t *map_len, char **err)
{
    static uint8_t empty[1]; /* never written: the mapping's users only read */
    enum store_status st;
    int fd;

    *data = empty;
    *map = NULL;
    *map_len = 0;
    if ((st = open_checked(b, ref, id, &fd, err)) != STORE_OK) return st;
    if (ref->len == 0) {
        close(fd);
        return STORE_OK;
    }
    const long page = sysconf(_SC_PAGESIZE);
    const int64_t start = ref->offset - ref->offset % page;
    const size_t len = (size_t)(ref->offset + ref->len - start);
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)start);
    close(fd);
    if (m == MAP_FAILED) {
        store_set_err(err, "message %s: cannot map its body: %s", id, strerror(errno));
        return errno_status(errno);
    }
    *map = m;
    *map_len = len;
    *data = (uint8_t *)m + (ref->offset - start);
    return STORE_OK;
}

void store_bodies_hold(struct store_bodies *b, bool hold)
{
    atomic_fetch_add(&b->holds, hold ? 1 : -1);
}

/* Calls fn(b, segment number, name) for every segment file; stops at the first non-zero. */
static int each_segment(struct store_bodies *b, int (*fn)(struct store_bodies *, int64_t, const char *, void *),
                        void *arg)
{
    int fd = dup(b->dirfd);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    struct dirent *de;
    int rc = 0;

    if (!d) {
        if (fd >= 0) close(fd);
        return -1;
    }
    rewinddir(d);
    while (rc == 0 && (de = readdir(d))) {
        int64_t n = segment_number(de->d_name);
        if (n > 0) rc = fn(b, n, de->d_name, arg);
    }
    closedir(d);
    return rc < 0 ? -1 : 0;
}

struct collect_args {
    bool (*in_use)(void *, int64_t);
    void *arg;
    uint64_t freed, bytes;
};

static int collect_one(struct store_bodies *b, int64_t n, const char *name, void *arg)
{
    struct collect_args *c = arg;
    struct stat sb;

    if (c->in_use(c->arg, n)) return 0;
    /* The open segment too: the next append starts a new one. */
    if (b->fd >= 0 && n == b->segment) abandon_segment(b);
    if (fstatat(b->dirfd, name, &sb, 0) < 0) sb.st_size = 0;
    if (unlinkat(b->dirfd, name, 0) < 0) return 0; /* tried again next pass */
    c->freed++;
    c->bytes += (uint64_t)sb.st_size;
    b->dir_dirty = true; /* the deletion is made durable by the next sync */
    return 0;
}

enum store_status store_bodies_collect(struct store_bodies *b, bool (*in_use)(void *arg, int64_t segment),
                                       void *arg, uint64_t *freed, uint64_t *bytes, char **err)
{
    struct collect_args c = {.in_use = in_use, .arg = arg};

    *freed = *bytes = 0;
    if (atomic_load(&b->holds) > 0) return STORE_OK;
    if (each_segment(b, collect_one, &c) < 0) {
        store_set_err(err, "cannot read body directory %s: %s", b->dir, strerror(errno));
        return STORE_ERR_IO;
    }
    *freed = c.freed;
    *bytes = c.bytes;
    return STORE_OK;
}

static int size_one(struct store_bodies *b, int64_t n, const char *name, void *arg)
{
    struct stat sb;
    (void)n;
    if (fstatat(b->dirfd, name, &sb, 0) == 0) *(int64_t *)arg += (int64_t)sb.st_size;
    return 0;
}

int64_t store_bodies_size(struct store_bodies *b)
{
    int64_t total = 0;
    each_segment(b, size_one, &total);
    return total;
}

/* ---- spools ---------------------------------------------------------------------------------- */

enum store_status store_spool_open(struct store_bodies *b, struct store_spool **out, char **err)
{
    struct store_spool *sp = calloc(1, sizeof *sp);

    *out = NULL;
    if (!sp) {
        store_set_err(err, "out of memory");
        return STORE_ERR_NOMEM;
    }
    sp->b = b;
    snprintf(sp->name, sizeof sp->name, SPOOL_PREFIX "%ld-%" PRIuFAST64, (long)getpid(),
             (uint_fast64_t)atomic_fetch_add(&b->spool_seq, 1));
    sp->fd = openat(b->dirfd, sp->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (sp->fd < 0) {
        int e = errno;
        store_set_err(err, "cannot create body spool %s/%s: %s", b->dir, sp->name, strerror(e));
        free(sp);
        return errno_status(e);
    }
    *out = sp;
    return STORE_OK;
}

enum store_status store_spool_append(struct store_spool *sp, const void *p, size_t len, char **err)
{
    if (pwrite_all(sp->fd, p, len, (int64_t)sp->len) < 0) {
        int e = errno;
        store_set_err(err, "cannot write body spool %s/%s: %s", sp->b->dir, sp->name, strerror(e));
        return errno_status(e);
    }
    sp->crc = crc_update(sp->crc, p, len);
    sp->len += len;
    return STORE_OK;
}

size_t store_spool_len(const struct store_spool *sp)
{
    return sp->len;
}

enum store_status store_bodies_adopt(struct store_bodies *b, struct store_spool *sp,
                                     struct store_body_ref *ref, char **err)
{
    char name[32];
    int fd;

    if (b->nadopted == b->adopted_cap) {
        size_t ncap = b->adopted_cap ? b->adopted_cap * 2 : 16;
        int *n = realloc(b->adopted, ncap * sizeof *n);
        if (!n) {
            store_set_err(err, "out of memory");
            return STORE_ERR_NOMEM;
        }
        b->adopted = n;
        b->adopted_cap = ncap;
    }
    if ((fd = dup(sp->fd)) < 0) {
        store_set_err(err, "cannot adopt body spool %s: %s", sp->name, strerror(errno));
        return STORE_ERR_IO;
    }
    snprintf(name, sizeof name, SEGMENT_NAME_FMT, b->next);
    if (renameat(b->dirfd, sp->name, b->dirfd, name) < 0) {
        int e = errno;
        close(fd);
        store_set_err(err, "cannot adopt body spool %s as %s: %s", sp->name, name, strerror(e));
        return errno_status(e);
    }
    b->adopted[b->nadopted++] = fd;
    b->dir_dirty = true;
    sp->adopted = true;
    *ref = (struct store_body_ref){.segment = b->next++, .offset = 0, .len = (int64_t)sp->len, .crc = sp->crc};
    return STORE_OK;
}

void store_spool_discard(struct store_spool *sp)
{
    if (!sp) return;
    if (!sp->adopted) unlinkat(sp->b->dirfd, sp->name, 0);
    close(sp->fd);
    free(sp);
}
