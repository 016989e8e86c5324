/* storage/sqlite_walbuf.c — a VFS for the write connection that gathers a commit's WAL writes
 * into one write.
 *
 * SQLite writes each WAL frame as two pwrite()s, its 24-byte header and its page, so a commit
 * that changes 20 pages of 1 KiB makes 40 system calls, and the writer thread, the one thread
 * every message waits on, spent most of its time in the kernel doing them (22.5 write calls per
 * 2 KiB message; docs/internals/storage.md, "What a message costs in writes").  This VFS wraps
 * the default one and, for the WAL file only, keeps a run of contiguous writes in a buffer,
 * written out in one pwrite() before anything that needs the bytes in the file: xSync (every
 * commit: the write connection runs synchronous=FULL), a read, a write elsewhere in the file, the
 * file's size or truncation, a file control, close, or a full buffer.  Every other file (the
 * database, its shared-memory index, journals) is opened by the default VFS itself, untouched.
 *
 * Why it is safe.  Other connections (readers, the checkpointer) see a commit's frames only once
 * the wal-index header names them, and SQLite updates that header after the commit's xSync when
 * the connection runs synchronous=FULL (or EXTRA): by then the frames are in the file.  With
 * synchronous=NORMAL a commit makes no xSync, so the frames could be named while still here:
 * only a connection that runs FULL may use this VFS (setup_writer checks the setting).  Until
 * xSync SQLite promises nothing about the bytes (a crash may tear any of them; recovery reads
 * frames by their checksums), so holding them in memory changes no promise.  A write that fails
 * drops the buffer: those frames were never in the file, and SQLite rolls the transaction back
 * and writes its next one from the same offset.  A write before the end of the run (SQLite
 * rewriting a frame of the transaction in place) first writes the run out, so every byte reaches
 * the file in the order SQLite wrote it.
 *
 * One connection owns each file object (the writer thread's), so nothing here takes a lock. */
#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "storage/internal_sqlite.h"

/* What one buffer holds before it is written out: a commit of a few messages (~20 KiB of frames
 * at 1 KiB pages) fits; a bigger one is written in several pieces of this size.  Under 128 KiB:
 * the unix VFS masks the length of one write to 17 bits (seekAndWriteFd: nBuf &= 0x1ffff), so a
 * longer write would be cut, and a write of a multiple of 128 KiB reported as a full disk. */
#define WALBUF_BYTES (64 * 1024)

struct walbuf_file {
    sqlite3_file base;  /* pMethods: walbuf_methods */
    sqlite3_file *real; /* the default VFS's file, in the same allocation, after this struct */
    unsigned char *buf; /* WALBUF_BYTES, allocated at the first write */
    sqlite3_int64 start; /* file offset of buf[0] */
    size_t len;          /* bytes held */
};

static sqlite3_vfs walbuf_vfs;
static sqlite3_vfs *default_vfs;

/* The bytes held, written where they go; the buffer is empty afterwards whatever the result. */
static int walbuf_flush(struct walbuf_file *f)
{
    int rc;

    if (f->len == 0) return SQLITE_OK;
    rc = f->real->pMethods->xWrite(f->real, f->buf, (int)f->len, f->start);
    f->len = 0;
    return rc;
}

static int walbuf_close(sqlite3_file *file)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc = walbuf_flush(f), rc2 = f->real->pMethods->xClose(f->real);

    free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

static int walbuf_read(sqlite3_file *file, void *p, int n, sqlite3_int64 off)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc = walbuf_flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, p, n, off);
}

static int walbuf_write(sqlite3_file *file, const void *p, int n, sqlite3_int64 off)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc;

    if (f->len > 0 && (off != f->start + (sqlite3_int64)f->len || f->len + (size_t)n > WALBUF_BYTES)) {
        rc = walbuf_flush(f);
        if (rc != SQLITE_OK) return rc;
    }
    if ((size_t)n > WALBUF_BYTES) return f->real->pMethods->xWrite(f->real, p, n, off);
    if (!f->buf) {
        f->buf = malloc(WALBUF_BYTES);
        if (!f->buf) return f->real->pMethods->xWrite(f->real, p, n, off);
    }
    if (f->len == 0) f->start = off;
    memcpy(f->buf + f->len, p, (size_t)n);
    f->len += (size_t)n;
    return SQLITE_OK;
}

static int walbuf_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc = walbuf_flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int walbuf_sync(sqlite3_file *file, int flags)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc = walbuf_flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int walbuf_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc = walbuf_flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int walbuf_lock(sqlite3_file *file, int level)
{
    struct walbuf_file *f = (struct walbuf_file *)file;

    return f->real->pMethods->xLock(f->real, level);
}

static int walbuf_unlock(sqlite3_file *file, int level)
{
    struct walbuf_file *f = (struct walbuf_file *)file;

    return f->real->pMethods->xUnlock(f->real, level);
}

static int walbuf_check_reserved(sqlite3_file *file, int *out)
{
    struct walbuf_file *f = (struct walbuf_file *)file;

    return f->real->pMethods->xCheckReservedLock(f->real, out);
}

/* A file control may look at the file (its size, its descriptor): the bytes go first. */
static int walbuf_file_control(sqlite3_file *file, int op, void *arg)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc = walbuf_flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

static int walbuf_sector_size(sqlite3_file *file)
{
    struct walbuf_file *f = (struct walbuf_file *)file;

    return f->real->pMethods->xSectorSize(f->real);
}

static int walbuf_device_characteristics(sqlite3_file *file)
{
    struct walbuf_file *f = (struct walbuf_file *)file;

    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

/* Version 1: a WAL file has no shared memory and is never memory-mapped by SQLite. */
static const sqlite3_io_methods walbuf_methods = {
    .iVersion = 1,
    .xClose = walbuf_close,
    .xRead = walbuf_read,
    .xWrite = walbuf_write,
    .xTruncate = walbuf_truncate,
    .xSync = walbuf_sync,
    .xFileSize = walbuf_file_size,
    .xLock = walbuf_lock,
    .xUnlock = walbuf_unlock,
    .xCheckReservedLock = walbuf_check_reserved,
    .xFileControl = walbuf_file_control,
    .xSectorSize = walbuf_sector_size,
    .xDeviceCharacteristics = walbuf_device_characteristics,
};

/* The default VFS's file object sits after ours, aligned for anything it holds. */
static size_t real_offset(void)
{
    const size_t align = _Alignof(max_align_t);

    return (sizeof(struct walbuf_file) + align - 1) / align * align;
}

static int walbuf_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags, int *out_flags)
{
    struct walbuf_file *f = (struct walbuf_file *)file;
    int rc;

    (void)vfs;
    if (!(flags & SQLITE_OPEN_WAL)) return default_vfs->xOpen(default_vfs, name, file, flags, out_flags);
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)((unsigned char *)file + real_offset());
    rc = default_vfs->xOpen(default_vfs, name, f->real, flags, out_flags);
    /* xClose is called even when xOpen fails, if pMethods is set: only a file that opened gets
     * ours (SQLite's own convention for VFS shims). */
    if (rc == SQLITE_OK && f->real->pMethods) f->base.pMethods = &walbuf_methods;
    return rc;
}

/* Everything but xOpen is the default VFS's. */
static int walbuf_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
    (void)v;
    return default_vfs->xDelete(default_vfs, name, sync_dir);
}

static int walbuf_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    (void)v;
    return default_vfs->xAccess(default_vfs, name, flags, out);
}

static int walbuf_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    (void)v;
    return default_vfs->xFullPathname(default_vfs, name, n, out);
}

static void *walbuf_dlopen(sqlite3_vfs *v, const char *name)
{
    (void)v;
    return default_vfs->xDlOpen(default_vfs, name);
}

static void walbuf_dlerror(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    default_vfs->xDlError(default_vfs, n, out);
}

static void (*walbuf_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return default_vfs->xDlSym(default_vfs, h, sym);
}

static void walbuf_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    default_vfs->xDlClose(default_vfs, h);
}

static int walbuf_randomness(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return default_vfs->xRandomness(default_vfs, n, out);
}

static int walbuf_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return default_vfs->xSleep(default_vfs, us);
}

static int walbuf_current_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return default_vfs->xCurrentTime(default_vfs, out);
}

static int walbuf_last_error(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return default_vfs->xGetLastError ? default_vfs->xGetLastError(default_vfs, n, out) : 0;
}

static int walbuf_current_time_int64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return default_vfs->xCurrentTimeInt64(default_vfs, out);
}

static int register_rc = SQLITE_ERROR;

static void walbuf_register(void)
{
    default_vfs = sqlite3_vfs_find(NULL);
    if (!default_vfs || default_vfs->iVersion < 2 || !default_vfs->xCurrentTimeInt64) return;
    walbuf_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)(real_offset() + (size_t)default_vfs->szOsFile),
        .mxPathname = default_vfs->mxPathname,
        .zName = STORE_SQLITE_WALBUF_VFS,
        .xOpen = walbuf_open,
        .xDelete = walbuf_delete,
        .xAccess = walbuf_access,
        .xFullPathname = walbuf_full_pathname,
        .xDlOpen = walbuf_dlopen,
        .xDlError = walbuf_dlerror,
        .xDlSym = walbuf_dlsym,
        .xDlClose = walbuf_dlclose,
        .xRandomness = walbuf_randomness,
        .xSleep = walbuf_sleep,
        .xCurrentTime = walbuf_current_time,
        .xGetLastError = walbuf_last_error,
        .xCurrentTimeInt64 = walbuf_current_time_int64,
    };
    register_rc = sqlite3_vfs_register(&walbuf_vfs, 0);
}

int store_sqlite_walbuf_register(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    pthread_once(&once, walbuf_register);
    return register_rc;
}
