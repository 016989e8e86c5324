/* storage/sqlite.c — the SQLite backend (default; SPEC §8).
 *
 * Three connections to one WAL database:
 *   - the write connection, used only by store.c's writer thread (one prepared INSERT);
 *   - a read connection (query_only) for counts, behind its own mutex;
 *   - a probe connection for store_check_writable(), behind its own mutex, with a short busy
 *     timeout so that a health check never waits long behind a batch.
 * Every read statement is reset right after its row is read, so no reader pins the WAL. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "storage/backend.h"
#include "util/log.h"

#define SQLITE_BUSY_TIMEOUT_MS 5000
#define SQLITE_PROBE_TIMEOUT_MS 2000
/* WAL checkpoints: when the writer is idle and the WAL holds this many frames (pages), or at once
 * inside a commit when it holds the larger number (so a writer that is never idle still bounds
 * the WAL; journal_size_limit then cuts the file back). */
#define SQLITE_CHECKPOINT_IDLE_FRAMES 1000
#define SQLITE_CHECKPOINT_FORCE_FRAMES 16384

struct sqlite_be {
    char *path;
    char *dir; /* directory of the database file (WAL and shm files live there) */
    char name[64];

    sqlite3 *wdb;
    sqlite3_stmt *insert;
    int wal_frames; /* frames in the WAL after the last commit (writer thread only) */

    pthread_mutex_t rmu;
    sqlite3 *rdb;
    sqlite3_stmt *count;

    pthread_mutex_t pmu;
    sqlite3 *pdb;
};

static void set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(char **err, const char *fmt, ...)
{
    va_list ap;

    if (!err) return;
    free(*err);
    va_start(ap, fmt);
    if (vasprintf(err, fmt, ap) < 0) *err = NULL;
    va_end(ap);
}

/* Runs every statement in `sql`; the first column of the first row, if any, goes to out. */
static int exec_sql(sqlite3 *db, const char *sql, char *out, size_t outsz, char **err)
{
    const char *tail = sql;
    bool got = false;

    if (out && outsz) out[0] = '\0';
    while (tail && *tail) {
        sqlite3_stmt *stmt = NULL;
        int rc = sqlite3_prepare_v2(db, tail, -1, &stmt, &tail);

        if (rc != SQLITE_OK) {
            set_err(err, "%s", sqlite3_errmsg(db));
            return -1;
        }
        if (!stmt) continue; /* whitespace or comment */
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
            if (!got && out && outsz) {
                const unsigned char *t = sqlite3_column_text(stmt, 0);

                snprintf(out, outsz, "%s", t ? (const char *)t : "");
                got = true;
            }
        }
        if (rc != SQLITE_DONE) {
            set_err(err, "%s", sqlite3_errmsg(db));
            sqlite3_finalize(stmt);
            return -1;
        }
        sqlite3_finalize(stmt);
    }
    return 0;
}

static int open_conn(const char *path, sqlite3 **db, char **err)
{
    int rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);

    if (rc != SQLITE_OK) {
        set_err(err, "cannot open database %s: %s", path,
                *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_extended_result_codes(*db, 1);
    /* Also before the PRAGMAs, so that another process holding the file briefly (inlet keys)
     * does not fail the journal_mode switch. */
    sqlite3_busy_timeout(*db, SQLITE_BUSY_TIMEOUT_MS);
    if (sqlite3_db_readonly(*db, "main") == 1) {
        set_err(err, "database %s is read-only", path);
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    return 0;
}

static int pragma(sqlite3 *db, const char *path, const char *sql, const char *want, char **err)
{
    char got[64];

    if (exec_sql(db, sql, got, sizeof got, err) < 0) {
        char *e = *err;

        *err = NULL;
        set_err(err, "%s on %s failed: %s", sql, path, e ? e : "out of memory");
        free(e);
        return -1;
    }
    if (want && strcmp(got, want) != 0) {
        set_err(err, "%s on %s returned \"%s\", not \"%s\"", sql, path, got, want);
        return -1;
    }
    return 0;
}

/* ---- schema --------------------------------------------------------------------------------- */

static int read_version(sqlite3 *db, int *version, char **err)
{
    char buf[32];
    char *end;
    long v;

    if (exec_sql(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                 buf, sizeof buf, err) < 0)
        return -1;
    if (strcmp(buf, "0") == 0) {
        *version = 0;
        return 0;
    }
    if (exec_sql(db, "SELECT value FROM meta WHERE key = 'schema_version'", buf, sizeof buf,
                 err) < 0)
        return -1;
    errno = 0;
    v = strtol(buf, &end, 10);
    if (!buf[0] || *end || errno || v < 0 || v > INT_MAX) {
        set_err(err, "database schema version \"%s\" is not a number", buf);
        return -1;
    }
    *version = (int)v;
    return 0;
}

static int set_version(sqlite3 *db, int version, char **err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1) "
                                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                                -1, &stmt, NULL);

    if (rc == SQLITE_OK) {
        char v[16];

        snprintf(v, sizeof v, "%d", version);
        sqlite3_bind_text(stmt, 1, v, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(stmt);
    }
    if (rc != SQLITE_DONE) set_err(err, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(stmt);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* One transaction per step, each re-reading the version under the write lock, so two processes
 * starting together cannot both apply a step. */
static int migrate(sqlite3 *db, const char *path, int *version_out, char **err)
{
    size_t count;
    const struct store_migration *steps = store_migrations(&count);
    const int latest = store_schema_version();

    for (;;) {
        int v;

        if (exec_sql(db, "BEGIN IMMEDIATE", NULL, 0, err) < 0 || read_version(db, &v, err) < 0) {
            char *e = *err;

            *err = NULL;
            set_err(err, "cannot read the schema version of %s: %s", path, e ? e : "out of memory");
            free(e);
            goto rollback;
        }
        if (v > latest) {
            set_err(err,
                    "database schema version %d is newer than this inlet supports (%d); "
                    "upgrade inlet",
                    v, latest);
            goto rollback;
        }
        if (v == latest) {
            exec_sql(db, "ROLLBACK", NULL, 0, NULL);
            *version_out = v;
            return 0;
        }
        if ((size_t)v >= count || steps[v].version != v + 1 || !steps[v].sqlite_sql) {
            set_err(err, "no migration from schema version %d", v);
            goto rollback;
        }
        if (exec_sql(db, steps[v].sqlite_sql, NULL, 0, err) < 0 ||
            set_version(db, v + 1, err) < 0 || exec_sql(db, "COMMIT", NULL, 0, err) < 0) {
            char *e = *err;

            *err = NULL;
            set_err(err, "migration to schema version %d (%s) failed: %s", v + 1,
                    steps[v].description, e ? e : "out of memory");
            free(e);
            goto rollback;
        }
        log_info("storage", "migrated path=%s schema=%d", path, v + 1);
    }

rollback:
    if (!sqlite3_get_autocommit(db)) exec_sql(db, "ROLLBACK", NULL, 0, NULL);
    return -1;
}

/* ---- open / close --------------------------------------------------------------------------- */

/* Replaces SQLite's automatic checkpoint, which would run inside whichever COMMIT crosses 1000
 * frames and so delay that batch's replies. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct sqlite_be *be = arg;

    be->wal_frames = frames;
    if (frames >= SQLITE_CHECKPOINT_FORCE_FRAMES) {
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        be->wal_frames = 0;
    }
    return SQLITE_OK;
}

static void sqlite_idle(void *arg)
{
    struct sqlite_be *be = arg;
    struct timespec t0, t1;
    int log_frames = 0, done_frames = 0, rc;

    if (be->wal_frames < SQLITE_CHECKPOINT_IDLE_FRAMES) return;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = sqlite3_wal_checkpoint_v2(be->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_frames,
                                   &done_frames);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    be->wal_frames = 0;
    if (rc != SQLITE_OK)
        log_warn("storage", "checkpoint failed error=\"%s\"", sqlite3_errmsg(be->wdb));
    else
        log_debug("storage", "checkpoint frames=%d copied=%d ms=%.1f", log_frames, done_frames,
                  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
}

static int setup_writer(struct sqlite_be *be, char **err)
{
    static const char insert_sql[] =
        "INSERT INTO messages (id, received_at, sender, recipients, remote_ip, helo, tls, size, raw)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
    int version;

    if (open_conn(be->path, &be->wdb, err) < 0) return -1;
    /* Order matters: auto_vacuum only takes effect before the first table exists. */
    if (pragma(be->wdb, be->path, "PRAGMA auto_vacuum = INCREMENTAL", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA journal_mode = WAL", "wal", err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA synchronous = FULL", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA synchronous", "2", err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA busy_timeout = 5000", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA journal_size_limit = 67108864", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA foreign_keys = ON", NULL, err) < 0)
        return -1;
    if (migrate(be->wdb, be->path, &version, err) < 0) return -1;
    sqlite3_wal_hook(be->wdb, wal_hook, be);
    if (sqlite3_prepare_v3(be->wdb, insert_sql, -1, SQLITE_PREPARE_PERSISTENT, &be->insert,
                           NULL) != SQLITE_OK) {
        set_err(err, "cannot prepare the message insert: %s", sqlite3_errmsg(be->wdb));
        return -1;
    }
    return 0;
}

static int setup_reader(struct sqlite_be *be, char **err)
{
    if (open_conn(be->path, &be->rdb, err) < 0) return -1;
    if (pragma(be->rdb, be->path, "PRAGMA journal_mode = WAL", "wal", err) < 0 ||
        pragma(be->rdb, be->path, "PRAGMA busy_timeout = 5000", NULL, err) < 0 ||
        pragma(be->rdb, be->path, "PRAGMA query_only = ON", NULL, err) < 0)
        return -1;
    if (sqlite3_prepare_v3(be->rdb, "SELECT count(*) FROM messages WHERE state = 'accepted'", -1,
                           SQLITE_PREPARE_PERSISTENT, &be->count, NULL) != SQLITE_OK) {
        set_err(err, "cannot prepare the count: %s", sqlite3_errmsg(be->rdb));
        return -1;
    }

    if (open_conn(be->path, &be->pdb, err) < 0) return -1;
    sqlite3_busy_timeout(be->pdb, SQLITE_PROBE_TIMEOUT_MS);
    return pragma(be->pdb, be->path, "PRAGMA journal_mode = WAL", "wal", err);
}

static void sqlite_close(void *arg)
{
    struct sqlite_be *be = arg;

    if (!be) return;
    sqlite3_finalize(be->count);
    sqlite3_close(be->rdb);
    sqlite3_close(be->pdb);
    sqlite3_finalize(be->insert);
    if (be->wdb) {
        char *err = NULL;

        /* Fold the WAL into the database and cut it to zero while nothing else reads. */
        if (exec_sql(be->wdb, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, 0, &err) < 0)
            log_warn("storage", "checkpoint failed error=\"%s\"", err ? err : "out of memory");
        free(err);
        sqlite3_close(be->wdb);
    }
    pthread_mutex_destroy(&be->rmu);
    pthread_mutex_destroy(&be->pmu);
    free(be->path);
    free(be->dir);
    free(be);
}

static void *sqlite_open(const char *path, char **err)
{
    struct sqlite_be *be;
    const char *slash;

    if (!sqlite3_threadsafe()) {
        set_err(err, "the SQLite library was built without thread support");
        return NULL;
    }
    be = calloc(1, sizeof *be);
    if (!be) {
        set_err(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&be->rmu, NULL);
    pthread_mutex_init(&be->pmu, NULL);
    snprintf(be->name, sizeof be->name, "sqlite %s", sqlite3_libversion());
    slash = strrchr(path, '/');
    be->path = strdup(path);
    be->dir = !slash ? strdup(".") : strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (!be->path || !be->dir) {
        set_err(err, "out of memory");
        goto fail;
    }
    if (setup_writer(be, err) < 0 || setup_reader(be, err) < 0) goto fail;
    return be;

fail:
    sqlite_close(be);
    return NULL;
}

static const char *sqlite_name(void *arg)
{
    struct sqlite_be *be = arg;

    return be->name;
}

/* ---- writes --------------------------------------------------------------------------------- */

static enum store_status classify(sqlite3 *db, int rc)
{
    int sys = sqlite3_system_errno(db);

    if ((rc & 0xff) == SQLITE_FULL) return STORE_ERR_FULL;
    if ((rc & 0xff) == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT)) return STORE_ERR_FULL;
    return STORE_ERR_IO;
}

/* Binds and runs the INSERT of one message.  Returns SQLITE_DONE, or the error code. */
static int insert_one(struct sqlite_be *be, const struct store_message *m)
{
    sqlite3_stmt *s = be->insert;
    char *rcpts = store_json_string_array((const char *const *)m->rcpts, m->nrcpts);
    int rc;

    if (!rcpts) return SQLITE_NOMEM;
    if ((rc = sqlite3_bind_text(s, 1, m->id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(s, 2, m->received_at_ms)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(s, 3, m->sender, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(s, 4, rcpts, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(s, 5, m->remote_ip, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(s, 6, m->helo, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(s, 7, m->tls, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(s, 8, (sqlite3_int64)m->len)) != SQLITE_OK)
        goto out;
    /* The body is bound in place, never copied by us; SQLite reads it during the step. */
    if (m->len == 0)
        rc = sqlite3_bind_zeroblob(s, 9, 0);
    else
        rc = sqlite3_bind_blob64(s, 9, m->data, (sqlite3_uint64)m->len, SQLITE_STATIC);
    if (rc != SQLITE_OK) goto out;
    rc = sqlite3_step(s);

out:
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    free(rcpts);
    return rc;
}

/* A failure that concerns one message only: the statement was rolled back by itself (default
 * ABORT conflict resolution, or it never ran) and the transaction goes on. */
static bool message_only_error(int rc)
{
    return (rc & 0xff) == SQLITE_CONSTRAINT || rc == SQLITE_TOOBIG || rc == SQLITE_RANGE ||
           rc == SQLITE_NOMEM;
}

/* Runs one job under savepoint "job": RELEASE when it succeeds, ROLLBACK TO (then RELEASE) when
 * it fails, so that only its own changes go.  -1 only when the savepoint itself failed: then the
 * transaction cannot go on. */
static int run_job(struct sqlite_be *be, struct store_job *job)
{
    char *jerr = NULL;

    if (sqlite3_exec(be->wdb, "SAVEPOINT job", NULL, NULL, NULL) != SQLITE_OK) return -1;
    if (job->run(&store_sqlite_backend, be, job->arg, &jerr) == 0) {
        free(jerr);
        if (sqlite3_exec(be->wdb, "RELEASE job", NULL, NULL, NULL) != SQLITE_OK) return -1;
        job->status = STORE_OK;
        job->err = NULL;
        return 0;
    }
    job->status = STORE_ERR_IO;
    job->err = jerr ? jerr : strdup("job failed");
    if (sqlite3_get_autocommit(be->wdb)) return -1; /* the whole transaction went */
    if (sqlite3_exec(be->wdb, "ROLLBACK TO job", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(be->wdb, "RELEASE job", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    return 0;
}

static enum store_status sqlite_write_batch(void *arg, struct store_message *const *msgs, size_t n,
                                            enum store_status *status,
                                            struct store_job *const *jobs, size_t njobs,
                                            char **err)
{
    struct sqlite_be *be = arg;
    enum store_status ret;
    int rc;

    rc = sqlite3_exec(be->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto fail;
    for (size_t i = 0; i < n; i++) {
        rc = insert_one(be, msgs[i]);
        if (rc == SQLITE_DONE) {
            status[i] = STORE_OK;
            continue;
        }
        if (message_only_error(rc) && !sqlite3_get_autocommit(be->wdb)) {
            const char *e = rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(be->wdb);
            char esc[512];

            status[i] = STORE_ERR_IO;
            log_warn("storage", "insert failed id=%s error=\"%s\"", msgs[i]->id,
                     log_escape(esc, sizeof esc, e, strlen(e), 400));
            continue;
        }
        goto fail;
    }
    for (size_t i = 0; i < njobs; i++) {
        if (run_job(be, jobs[i]) < 0) goto fail_jobs;
    }
    rc = sqlite3_exec(be->wdb, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto fail_jobs;
    return STORE_OK;

fail_jobs:
    /* The jobs' results are not set on failure: drop what run_job left. */
    for (size_t i = 0; i < njobs; i++) {
        free(jobs[i]->err);
        jobs[i]->err = NULL;
    }
fail:
    /* Read the error before ROLLBACK replaces it. */
    rc = sqlite3_extended_errcode(be->wdb);
    ret = classify(be->wdb, rc);
    set_err(err, "%s", sqlite3_errmsg(be->wdb));
    if (!sqlite3_get_autocommit(be->wdb)) sqlite3_exec(be->wdb, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

/* ---- meta rows ------------------------------------------------------------------------------ */

/* Runs `sql` with text parameters ?1 (and ?2); the first column of the first row, if any, goes
 * to *out (malloc'd).  SQLITE_DONE, or the error code. */
static int meta_stmt(sqlite3 *db, const char *sql, const char *p1, const char *p2, char **out)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);

    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_text(stmt, 1, p1, -1, SQLITE_STATIC);
    if (p2) sqlite3_bind_text(stmt, 2, p2, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (out && !*out) {
            const unsigned char *t = sqlite3_column_text(stmt, 0);

            *out = strdup(t ? (const char *)t : "");
            if (!*out) {
                rc = SQLITE_NOMEM;
                break;
            }
        }
    }
    sqlite3_finalize(stmt);
    return rc;
}

static int sqlite_meta_set_if_absent(void *arg, const char *key, const char *value, char **winner,
                                     char **err)
{
    struct sqlite_be *be = arg;
    int rc;

    *winner = NULL;
    rc = meta_stmt(be->wdb,
                   "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                   key, value, NULL);
    if (rc == SQLITE_DONE)
        rc = meta_stmt(be->wdb, "SELECT value FROM meta WHERE key = ?1", key, NULL, winner);
    if (rc == SQLITE_DONE && *winner) return 0;
    set_err(err, "%s", rc == SQLITE_DONE ? "the row is not there after the insert"
                                         : sqlite3_errmsg(be->wdb));
    free(*winner);
    *winner = NULL;
    return -1;
}

static int sqlite_meta_get(void *arg, const char *key, char **value, char **err)
{
    struct sqlite_be *be = arg;
    int rc;

    *value = NULL;
    pthread_mutex_lock(&be->rmu);
    rc = meta_stmt(be->rdb, "SELECT value FROM meta WHERE key = ?1", key, NULL, value);
    if (rc != SQLITE_DONE) set_err(err, "%s", sqlite3_errmsg(be->rdb));
    pthread_mutex_unlock(&be->rmu);
    if (rc != SQLITE_DONE) {
        free(*value);
        *value = NULL;
        return -EIO;
    }
    return *value ? 0 : -ENOENT;
}

/* ---- reads and checks ----------------------------------------------------------------------- */

static int sqlite_count_unprocessed(void *arg, int64_t *count, char **err)
{
    struct sqlite_be *be = arg;
    int rc;

    pthread_mutex_lock(&be->rmu);
    rc = sqlite3_step(be->count);
    if (rc == SQLITE_ROW) *count = sqlite3_column_int64(be->count, 0);
    else set_err(err, "%s", sqlite3_errmsg(be->rdb));
    sqlite3_reset(be->count);
    pthread_mutex_unlock(&be->rmu);
    return rc == SQLITE_ROW ? 0 : -1;
}

static int check_access(const char *path, bool must_exist, char **reason)
{
    if (faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) == 0) return 0;
    if (errno == ENOENT && !must_exist) return 0;
    set_err(reason, "database is not writable: %s: %s", path, strerror(errno));
    return -1;
}

static int sqlite_check_writable(void *arg, char **reason)
{
    struct sqlite_be *be = arg;
    struct statvfs sv;
    char *wal = NULL, *err = NULL;
    int ret = -1;

    if (reason) *reason = NULL;
    /* Permissions first: the connections keep descriptors opened for writing, so SQLite alone
     * would not notice a file or directory turned read-only (or a file system remounted so). */
    if (check_access(be->dir, true, reason) < 0 || check_access(be->path, true, reason) < 0)
        goto out;
    if (asprintf(&wal, "%s-wal", be->path) < 0) {
        wal = NULL;
        set_err(reason, "database is not writable: out of memory");
        goto out;
    }
    if (check_access(wal, false, reason) < 0) goto out;
    if (statvfs(be->dir, &sv) == 0 && (geteuid() == 0 ? sv.f_bfree : sv.f_bavail) == 0) {
        set_err(reason, "database is not writable: %s: %s", be->dir, strerror(ENOSPC));
        goto out;
    }

    /* Then the lock: BEGIN IMMEDIATE takes the write lock (SQLITE_READONLY on a read-only
     * database, SQLITE_BUSY when someone holds it longer than the probe's timeout). */
    pthread_mutex_lock(&be->pmu);
    if (exec_sql(be->pdb, "BEGIN IMMEDIATE", NULL, 0, &err) == 0) {
        exec_sql(be->pdb, "ROLLBACK", NULL, 0, NULL);
        ret = 0;
    } else {
        set_err(reason, "database is not writable: %s", err ? err : "out of memory");
    }
    pthread_mutex_unlock(&be->pmu);

out:
    free(wal);
    free(err);
    return ret;
}

static int sqlite_writer_query(void *arg, const char *sql, char *out, size_t outsz)
{
    struct sqlite_be *be = arg;
    char *err = NULL;
    int rc = exec_sql(be->wdb, sql, out, outsz, &err);

    free(err);
    return rc;
}

const struct store_backend store_sqlite_backend = {
    .kind = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .name = sqlite_name,
    .write_batch = sqlite_write_batch,
    .meta_set_if_absent = sqlite_meta_set_if_absent,
    .meta_get = sqlite_meta_get,
    .idle = sqlite_idle,
    .count_unprocessed = sqlite_count_unprocessed,
    .check_writable = sqlite_check_writable,
    .writer_query = sqlite_writer_query,
};
