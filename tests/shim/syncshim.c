/* tests/shim/syncshim.c — LD_PRELOAD shim for the black-box tests.
 *
 * Records, in one global order, the syncs of files and the reads and writes of sockets, so that a
 * test can prove that a "250 2.0.0 Ok: queued as" reply left only after a sync of the database that
 * followed the end of that message's data.  Optionally makes writes and syncs of the files under
 * the data dir fail with ENOSPC.
 *
 * Environment (nothing is recorded or injected unless the variables are set):
 *   INLET_SHIM_LOG      file the events are appended to (opened once, O_APPEND, one write per line)
 *   INLET_SHIM_DATADIR  absolute, canonical path of the data dir (prefix of the files concerned)
 *   INLET_SHIM_ENOSPC   while a file of this name exists, writes and syncs of regular files under
 *                       INLET_SHIM_DATADIR fail with ENOSPC
 *   INLET_SHIM_HOLD     while a file of this name exists, syncs of regular files under
 *                       INLET_SHIM_DATADIR wait (polled every 2 ms, HOLD_MAX_MS at most): a test
 *                       holds a group commit in flight for as long as it needs, with no timing
 *   INLET_SHIM_CRYPT_HOLD  while a file of this name exists, crypt_r() (a password's hash or its
 *                       check) waits before hashing (polled every 2 ms, HOLD_MAX_MS at most): a
 *                       test holds password work in flight, with no timing
 *
 * Lines (fields separated by one space, the escaped data last):
 *   <seq> SYNC tid=<tid> fd=<fd> call=fsync|fdatasync rc=<rc> path=<path>
 *   <seq> READ tid=<tid> fd=<fd> rc=<rc> tail=<last 32 bytes, escaped>
 *   <seq> WRITE tid=<tid> fd=<fd> rc=<rc> head=<first 80 bytes, escaped>
 *   <seq> FWRITE tid=<tid> fd=<fd> call=pwrite|pwrite64|pwritev|pwritev64 path=<path>
 *   <seq> ENOSPC tid=<tid> fd=<fd> call=<name> path=<path>
 *   <seq> CRYPT tid=<tid>                 (a crypt_r() call begins: before INLET_SHIM_CRYPT_HOLD)
 * <seq> comes from one atomic counter: for SYNC and READ it is taken after the call returned, for
 * WRITE and FWRITE before the call, so "sync seq < write seq" means the sync had finished before the reply
 * was handed to the kernel.  Reads and writes are recorded for sockets only; FWRITE records the
 * positioned writes (SQLite's) of regular files under INLET_SHIM_DATADIR, with the thread that made
 * them, so that a test can tell which thread's sync completes which commit.  Escaping: bytes
 * outside 0x21..0x7e, and '\\', as \r \n \t \\ or \xHH; a space is \x20. */
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* The banned functions, poisoned after the C library headers above (see util/banned.h). */
#undef INLET_BANNED_LATER
#include "../../util/banned.h"

#define HEAD_BYTES 80
#define HOLD_MAX_MS 120000
#define TAIL_BYTES 32

/* Prototypes of the exported hooks (the project builds with -Wmissing-prototypes; the libc
 * headers declare most of them already, these cover the 64-bit variants on every libc). */
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off);
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off);
int ftruncate64(int fd, off64_t len);
int fallocate64(int fd, int mode, off64_t off, off64_t len);

typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef ssize_t (*recv_fn)(int, void *, size_t, int);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev64_fn)(int, const struct iovec *, int, off64_t);
typedef int (*sync_fn)(int);
typedef int (*ftruncate_fn)(int, off_t);
typedef int (*ftruncate64_fn)(int, off64_t);
typedef int (*fallocate_fn)(int, int, off_t, off_t);
typedef int (*fallocate64_fn)(int, int, off64_t, off64_t);

static struct {
    read_fn read;
    write_fn write;
    writev_fn writev;
    send_fn send;
    sendmsg_fn sendmsg;
    recv_fn recv;
    recvmsg_fn recvmsg;
    pwrite_fn pwrite;
    pwrite64_fn pwrite64;
    pwritev_fn pwritev;
    pwritev64_fn pwritev64;
    sync_fn fsync;
    sync_fn fdatasync;
    ftruncate_fn ftruncate;
    ftruncate64_fn ftruncate64;
    fallocate_fn fallocate;
    fallocate64_fn fallocate64;
} real;

static int log_fd = -1;             /* INLET_SHIM_LOG, or -1: record nothing */
static char datadir[PATH_MAX];      /* INLET_SHIM_DATADIR, or "" */
static size_t datadir_len;
static char enospc_flag[PATH_MAX];  /* INLET_SHIM_ENOSPC, or "" */
static char hold_flag[PATH_MAX];    /* INLET_SHIM_HOLD, or "" */
static char crypt_hold_flag[PATH_MAX]; /* INLET_SHIM_CRYPT_HOLD, or "" */
static unsigned long seq_counter;   /* atomic */
static _Thread_local int in_hook;        /* our own calls (logging, readlink) pass straight through */

/* dlsym() returns void *; converting it to a function pointer is what POSIX requires to work. */
#define RESOLVE(name)                                                           \
    do {                                                                        \
        if (!real.name) {                                                       \
            void *sym_ = dlsym(RTLD_NEXT, #name);                               \
            memcpy(&real.name, &sym_, sizeof real.name);                        \
        }                                                                       \
    } while (0)

static void resolve_all(void)
{
    RESOLVE(read);
    RESOLVE(write);
    RESOLVE(writev);
    RESOLVE(send);
    RESOLVE(sendmsg);
    RESOLVE(recv);
    RESOLVE(recvmsg);
    RESOLVE(pwrite);
    RESOLVE(pwrite64);
    RESOLVE(pwritev);
    RESOLVE(pwritev64);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(ftruncate);
    RESOLVE(ftruncate64);
    RESOLVE(fallocate);
    RESOLVE(fallocate64);
}

__attribute__((constructor)) static void shim_init(void)
{
    in_hook++;
    resolve_all();
    const char *v = getenv("INLET_SHIM_DATADIR");
    if (v && *v && strlen(v) < sizeof datadir) {
        memcpy(datadir, v, strlen(v) + 1);
        datadir_len = strlen(datadir);
        while (datadir_len > 1 && datadir[datadir_len - 1] == '/')
            datadir[--datadir_len] = '\0';
    }
    v = getenv("INLET_SHIM_ENOSPC");
    if (v && *v && strlen(v) < sizeof enospc_flag)
        memcpy(enospc_flag, v, strlen(v) + 1);
    v = getenv("INLET_SHIM_HOLD");
    if (v && *v && strlen(v) < sizeof hold_flag)
        memcpy(hold_flag, v, strlen(v) + 1);
    v = getenv("INLET_SHIM_CRYPT_HOLD");
    if (v && *v && strlen(v) < sizeof crypt_hold_flag)
        memcpy(crypt_hold_flag, v, strlen(v) + 1);
    v = getenv("INLET_SHIM_LOG");
    if (v && *v)
        log_fd = open(v, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (log_fd >= 0 && log_fd < 100) {
        /* Keep the log out of the way of the fd numbers the daemon uses and tests look at. */
        int hi = fcntl(log_fd, F_DUPFD_CLOEXEC, 900);
        if (hi >= 0) {
            close(log_fd);
            log_fd = hi;
        }
    }
    in_hook--;
}

static unsigned long next_seq(void)
{
    return __atomic_add_fetch(&seq_counter, 1, __ATOMIC_SEQ_CST);
}

static long tid(void)
{
    return (long)syscall(SYS_gettid);
}

static size_t escape(char *out, size_t cap, const unsigned char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned char c = p[i];
        if (c == '\r') { out[o++] = '\\'; out[o++] = 'r'; }
        else if (c == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else if (c == '\t') { out[o++] = '\\'; out[o++] = 't'; }
        else if (c == '\\') { out[o++] = '\\'; out[o++] = '\\'; }
        else if (c > 0x20 && c < 0x7f) out[o++] = (char)c;
        else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}

/* One line, one write(2), through the real write so that it is not recorded itself. */
__attribute__((format(printf, 1, 2))) static void emit(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)(sizeof line - 2);
    line[n++] = '\n';
    int saved = errno;
    RESOLVE(write);
    ssize_t w = real.write(log_fd, line, (size_t)n);
    (void)w;
    errno = saved;
}

static bool is_socket(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Path of fd when it is a regular file or a directory; false otherwise. */
static bool fd_path(int fd, char *out, size_t cap)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
        return false;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    if (n < 0)
        return false;
    out[n] = '\0';
    return true;
}

static bool under_datadir(const char *path)
{
    return datadir_len > 0 && strncmp(path, datadir, datadir_len) == 0 &&
           (path[datadir_len] == '/' || path[datadir_len] == '\0');
}

/* True when the call on fd must fail with ENOSPC now (and records that it did). */
static bool inject(int fd, const char *call)
{
    if (!enospc_flag[0] || !datadir_len || in_hook)
        return false;
    in_hook++;
    bool fail = false;
    char path[PATH_MAX];
    if (access(enospc_flag, F_OK) == 0 && fd_path(fd, path, sizeof path) && under_datadir(path)) {
        fail = true;
        if (log_fd >= 0)
            emit("%lu ENOSPC tid=%ld fd=%d call=%s path=%s", next_seq(), tid(), fd, call, path);
    }
    in_hook--;
    if (fail)
        errno = ENOSPC;
    return fail;
}

/* Waits while INLET_SHIM_HOLD exists, when fd is a file under the data dir (a sync). */
static void hold(int fd)
{
    if (!hold_flag[0] || !datadir_len || in_hook)
        return;
    in_hook++;
    char path[PATH_MAX];
    if (access(hold_flag, F_OK) == 0 && fd_path(fd, path, sizeof path) && under_datadir(path)) {
        const struct timespec tick = {0, 2 * 1000 * 1000};
        for (int i = 0; i < HOLD_MAX_MS / 2 && access(hold_flag, F_OK) == 0; i++)
            nanosleep(&tick, NULL);
    }
    in_hook--;
}

static bool recording(void)
{
    return log_fd >= 0 && !in_hook;
}

static void record_read(int fd, const void *buf, ssize_t rc)
{
    if (!recording())
        return;
    in_hook++;
    int saved = errno;
    if (is_socket(fd)) {
        char esc[TAIL_BYTES * 4 + 8];
        esc[0] = '\0';
        if (rc > 0) {
            size_t n = (size_t)rc;
            size_t k = n < TAIL_BYTES ? n : TAIL_BYTES;
            escape(esc, sizeof esc, (const unsigned char *)buf + (n - k), k);
        }
        emit("%lu READ tid=%ld fd=%d rc=%zd tail=%s", next_seq(), tid(), fd, rc, esc);
    }
    errno = saved;
    in_hook--;
}

/* Returns the sequence number taken (0 when not recording a socket write). */
static unsigned long write_seq(int fd)
{
    if (!recording())
        return 0;
    in_hook++;
    int saved = errno;
    unsigned long s = is_socket(fd) ? next_seq() : 0;
    errno = saved;
    in_hook--;
    return s;
}

static void record_write(unsigned long s, int fd, const struct iovec *iov, int cnt, ssize_t rc)
{
    if (!s)
        return;
    in_hook++;
    int saved = errno;
    unsigned char head[HEAD_BYTES];
    size_t h = 0;
    for (int i = 0; i < cnt && h < HEAD_BYTES; i++) {
        size_t k = iov[i].iov_len;
        if (k > HEAD_BYTES - h)
            k = HEAD_BYTES - h;
        memcpy(head + h, iov[i].iov_base, k);
        h += k;
    }
    char esc[HEAD_BYTES * 4 + 8];
    escape(esc, sizeof esc, head, h);
    emit("%lu WRITE tid=%ld fd=%d rc=%zd head=%s", s, tid(), fd, rc, esc);
    errno = saved;
    in_hook--;
}

/* Before a positioned write of a file under the data dir. */
static void record_fwrite(int fd, const char *call)
{
    if (!recording() || !datadir_len)
        return;
    in_hook++;
    int saved = errno;
    char path[PATH_MAX];
    if (fd_path(fd, path, sizeof path) && under_datadir(path))
        emit("%lu FWRITE tid=%ld fd=%d call=%s path=%s", next_seq(), tid(), fd, call, path);
    errno = saved;
    in_hook--;
}

static void record_sync(int fd, const char *call, int rc)
{
    if (!recording())
        return;
    in_hook++;
    int saved = errno;
    char path[PATH_MAX];
    if (!fd_path(fd, path, sizeof path))
        memcpy(path, "?", 2);
    emit("%lu SYNC tid=%ld fd=%d call=%s rc=%d path=%s", next_seq(), tid(), fd, call, rc, path);
    errno = saved;
    in_hook--;
}

/* ------------------------------------------------------------------------------------------- */

ssize_t read(int fd, void *buf, size_t n)
{
    RESOLVE(read);
    ssize_t rc = real.read(fd, buf, n);
    record_read(fd, buf, rc);
    return rc;
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    RESOLVE(recv);
    ssize_t rc = real.recv(fd, buf, n, flags);
    if (!(flags & MSG_PEEK))
        record_read(fd, buf, rc);
    return rc;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    RESOLVE(recvmsg);
    ssize_t rc = real.recvmsg(fd, msg, flags);
    if (rc >= 0 && recording() && !(flags & MSG_PEEK) && msg && msg->msg_iovlen > 0) {
        /* Gather the tail of what was received. */
        unsigned char tail[TAIL_BYTES];
        size_t total = (size_t)rc, have = 0;
        size_t skip = total > TAIL_BYTES ? total - TAIL_BYTES : 0, pos = 0;
        for (size_t i = 0; i < (size_t)msg->msg_iovlen && pos < total; i++) {
            size_t len = msg->msg_iov[i].iov_len;
            if (len > total - pos)
                len = total - pos;
            for (size_t j = 0; j < len; j++, pos++)
                if (pos >= skip && have < TAIL_BYTES)
                    tail[have++] = ((const unsigned char *)msg->msg_iov[i].iov_base)[j];
        }
        record_read(fd, tail, (ssize_t)have);
    } else if (rc < 0) {
        record_read(fd, NULL, rc);
    }
    return rc;
}

ssize_t write(int fd, const void *buf, size_t n)
{
    RESOLVE(write);
    if (inject(fd, "write"))
        return -1;
    unsigned long s = write_seq(fd);
    ssize_t rc = real.write(fd, buf, n);
    struct iovec iov = {.iov_base = (void *)(uintptr_t)buf, .iov_len = n};
    record_write(s, fd, &iov, 1, rc);
    return rc;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    RESOLVE(writev);
    if (inject(fd, "writev"))
        return -1;
    unsigned long s = write_seq(fd);
    ssize_t rc = real.writev(fd, iov, cnt);
    record_write(s, fd, iov, cnt, rc);
    return rc;
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    RESOLVE(send);
    unsigned long s = write_seq(fd);
    ssize_t rc = real.send(fd, buf, n, flags);
    struct iovec iov = {.iov_base = (void *)(uintptr_t)buf, .iov_len = n};
    record_write(s, fd, &iov, 1, rc);
    return rc;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    RESOLVE(sendmsg);
    unsigned long s = write_seq(fd);
    ssize_t rc = real.sendmsg(fd, msg, flags);
    record_write(s, fd, msg ? msg->msg_iov : NULL, msg ? (int)msg->msg_iovlen : 0, rc);
    return rc;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    RESOLVE(pwrite);
    if (inject(fd, "pwrite"))
        return -1;
    record_fwrite(fd, "pwrite");
    return real.pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    RESOLVE(pwrite64);
    if (inject(fd, "pwrite64"))
        return -1;
    record_fwrite(fd, "pwrite64");
    return real.pwrite64(fd, buf, n, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    RESOLVE(pwritev);
    if (inject(fd, "pwritev"))
        return -1;
    record_fwrite(fd, "pwritev");
    return real.pwritev(fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off)
{
    RESOLVE(pwritev64);
    if (inject(fd, "pwritev64"))
        return -1;
    record_fwrite(fd, "pwritev64");
    return real.pwritev64(fd, iov, cnt, off);
}

int fsync(int fd)
{
    RESOLVE(fsync);
    if (inject(fd, "fsync"))
        return -1;
    hold(fd);
    int rc = real.fsync(fd);
    record_sync(fd, "fsync", rc);
    return rc;
}

int fdatasync(int fd)
{
    RESOLVE(fdatasync);
    if (inject(fd, "fdatasync"))
        return -1;
    hold(fd);
    int rc = real.fdatasync(fd);
    record_sync(fd, "fdatasync", rc);
    return rc;
}

int ftruncate(int fd, off_t len)
{
    RESOLVE(ftruncate);
    if (inject(fd, "ftruncate"))
        return -1;
    return real.ftruncate(fd, len);
}

int ftruncate64(int fd, off64_t len)
{
    RESOLVE(ftruncate64);
    if (inject(fd, "ftruncate64"))
        return -1;
    return real.ftruncate64(fd, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    RESOLVE(fallocate);
    if (inject(fd, "fallocate"))
        return -1;
    return real.fallocate(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off64_t off, off64_t len)
{
    RESOLVE(fallocate64);
    if (inject(fd, "fallocate64"))
        return -1;
    return real.fallocate64(fd, mode, off, len);
}

/* crypt_r(): waits while INLET_SHIM_CRYPT_HOLD exists, then hashes (libcrypt's, found at the
 * first call: the shim does not link libcrypt, inlet does). */
typedef char *(*crypt_r_fn)(const char *, const char *, void *);

char *crypt_r(const char *phrase, const char *setting, void *data);
char *crypt_r(const char *phrase, const char *setting, void *data)
{
    static crypt_r_fn real_crypt_r;
    if (!real_crypt_r) {
        void *sym = dlsym(RTLD_NEXT, "crypt_r");
        memcpy(&real_crypt_r, &sym, sizeof real_crypt_r);
    }
    if (recording()) {
        in_hook++;
        emit("%lu CRYPT tid=%ld", next_seq(), tid());
        in_hook--;
    }
    if (crypt_hold_flag[0]) {
        const struct timespec tick = {0, 2 * 1000 * 1000};
        for (int i = 0; i < HOLD_MAX_MS / 2 && access(crypt_hold_flag, F_OK) == 0; i++)
            nanosleep(&tick, NULL);
    }
    if (!real_crypt_r) {
        errno = ENOSYS;
        return NULL;
    }
    return real_crypt_r(phrase, setting, data);
}
