/* util/lockfile.c — the data dir's lock (see lockfile.h). */
#include "util/lockfile.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The store creates the dir too (storage/), but the lock comes first: nothing else may touch the
 * dir before we know it is ours. */
static int ensure_dir(const char *dir, char **err)
{
    if (mkdir(dir, 0700) == 0) {
        if (chmod(dir, 0700) == 0) return 0; /* whatever the umask */
        *err = g_strdup_printf("cannot set the mode of data directory %s: %s", dir, g_strerror(errno));
        return -1;
    }
    if (errno == EEXIST) return 0;
    *err = g_strdup_printf("cannot create data directory %s: %s", dir, g_strerror(errno));
    return -1;
}

/* The lock is held: who holds it (F_GETLK fills l_pid; 0 when it was released meanwhile). */
static long holder_pid(int fd)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_GETLK, &fl) < 0 || fl.l_type == F_UNLCK) return 0;
    return (long)fl.l_pid;
}

int lockfile_acquire(const char *dir, char **err)
{
    char *path = NULL;
    int fd = -1;
    if (ensure_dir(dir, err) < 0) goto fail;
    path = g_strdup_printf("%s/%s", dir, LOCKFILE_NAME);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        *err = g_strdup_printf("cannot open lock file %s: %s", path, g_strerror(errno));
        goto fail;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_SETLK, &fl) < 0) {
        if (errno == EACCES || errno == EAGAIN) {
            long pid = holder_pid(fd);
            *err = pid > 0 ? g_strdup_printf("data directory %s is in use by another inlet (pid %ld, lock %s)",
                                             dir, pid, path)
                           : g_strdup_printf("data directory %s is in use by another inlet (lock %s)", dir, path);
        } else {
            *err = g_strdup_printf("cannot lock %s: %s", path, g_strerror(errno));
        }
        goto fail;
    }
    /* For the operator who looks (`cat inlet.lock`); the lock itself is what counts. */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        *err = g_strdup_printf("cannot write lock file %s: %s", path, g_strerror(errno));
        goto fail;
    }
    g_free(path);
    return fd;
fail:
    if (fd >= 0) close(fd);
    g_free(path);
    return -1;
}

void lockfile_release(int fd)
{
    if (fd >= 0) close(fd);
}
