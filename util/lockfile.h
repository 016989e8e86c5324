/* util/lockfile.h — one `inlet serve` per data dir.
 *
 * Two engines on one data dir would both recover, route and deliver the same messages (twice, at
 * once).  The first takes a write lock (fcntl, F_SETLK) on <data-dir>/inlet.lock and holds it
 * until it exits — the kernel drops it then, even after SIGKILL, so a stale file never blocks a
 * start.  fcntl rather than flock: a refused lock tells us the holder's PID (F_GETLK), which the
 * second engine's error names.  The lock is per data dir whatever the database is. */
#ifndef INLET_UTIL_LOCKFILE_H
#define INLET_UTIL_LOCKFILE_H

#define LOCKFILE_NAME "inlet.lock"

/* Creates `dir` (0700) when it does not exist, then locks <dir>/inlet.lock and writes our PID
 * into it.  The open descriptor (holding the lock), or -1 with *err (malloc'd): "data directory
 * DIR is in use by another inlet (pid N)" when another process holds it. */
int lockfile_acquire(const char *dir, char **err);
/* Drops the lock (closes the descriptor); -1 is fine. */
void lockfile_release(int fd);

#endif
