/* storage/sqlite.c — the SQLite backend (default; SPEC §8).
 *
 * Four connections to one WAL database:
 *   - the write connection, used only by store.c's writer thread (prepared INSERTs);
 *   - a read connection (query_only) for counts, routes and message loads, behind its own mutex;
 *   - a probe connection for store_check_writable(), behind its own mutex, with a short busy
 *     timeout so that a health check never waits long behind a batch;
 *   - the checkpointer's connection, used only by the checkpointer thread.
 * Every read statement is reset right after its rows are read (a message's bytes are copied out
 * first), so no reader pins the WAL.
 *
 * Checkpoints.  SQLite's automatic checkpoint would run inside whichever COMMIT crosses 1000
 * frames, on the writer thread, and delay that batch's replies (measured: ~45% of the writer's
 * time at 64 KiB messages).  Instead the write connection's WAL hook only records the frame count
 * and, past SQLITE_CHECKPOINT_IDLE_BYTES, wakes the checkpointer thread, which runs PASSIVE
 * checkpoints on its own connection while the writer goes on committing (WAL allows a checkpoint
 * beside a writer; synchronous=FULL there too, so the database file is synced before the WAL
 * frames count as copied).  A PASSIVE checkpoint beside a busy writer rarely catches up with the
 * WAL's end, and SQLite restarts the WAL from its start only when it has, so under sustained load
 * the WAL would grow without bound; the safety valve: when a commit leaves more than
 * SQLITE_CHECKPOINT_FORCE_BYTES, the writer itself, after that batch's replies went out,
 * waits for a checkpointer run in progress and runs a RESTART checkpoint (nothing is being written
 * meanwhile, so it copies the rest and the next commit starts the WAL over; journal_size_limit
 * then cuts the file back to 16 MiB).  store_close stops and joins the checkpointer before the
 * final TRUNCATE checkpoint. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "storage/internal.h"
#include "storage/internal_sqlite.h"
#include "util/limits.h"
#include "util/log.h"

/* WAL checkpoints (see the top): the checkpointer thread is woken after a commit that leaves at
 * least IDLE_BYTES of frames in the WAL; past FORCE_BYTES (the journal_size_limit: what the WAL
 * adds to the database's size on disk under a steady load, measured by bench/soak) the writer runs
 * a RESTART checkpoint itself, waiting at most VALVE_BUSY_MS for readers to leave the WAL.  In
 * bytes, so that the page size (below) does not change how often a checkpoint runs; the frame
 * counts of this database are in be->idle_frames and be->force_frames. */
#define SQLITE_CHECKPOINT_IDLE_BYTES (4000 * 1024)
/* After SQLITE_CHECKPOINT_TRUNCATE_IDLE_MS (util/limits.h) without a commit the checkpointer copies
 * the whole WAL back and truncates the file, so an idle database is database + empty WAL. */
#define SQLITE_CHECKPOINT_FORCE_BYTES (16 * 1024 * 1024)
/* The page size of a new database (docs/internals/storage.md, "What a message costs in writes"):
 * every page a transaction changes is written whole to the WAL and again by the checkpoint, and a
 * message changes one page in each of ~16 b-trees, mostly a few bytes each; 1 KiB pages write a
 * quarter of what 4 KiB pages write (bench/bodies bytes, 2 KiB: 44-46 -> 23-26 KB per message).  A
 * database made with another page size keeps it (WAL mode cannot change it). */
#define SQLITE_NEW_PAGE_SIZE "1024"


enum store_status store_sqlite_status(sqlite3 *db, int rc)
{
    int sys = sqlite3_system_errno(db);

    if ((rc & 0xff) == SQLITE_FULL) return STORE_ERR_FULL;
    if ((rc & 0xff) == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT)) return STORE_ERR_FULL;
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) return STORE_ERR_BUSY;
    if (rc == SQLITE_NOMEM) return STORE_ERR_NOMEM;
    return STORE_ERR_IO;
}

const char *store_sqlite_error(sqlite3 *db, int rc)
{
    return rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(db);
}

/* Runs every statement in `sql`; the first column of the first row, if any, goes to out. */
enum store_status store_sqlite_exec(sqlite3 *db, const char *sql, char *out, size_t outsz, char **err)
{
    const char *tail = sql;
    bool got = false;

    if (out && outsz) out[0] = '\0';
    while (tail && *tail) {
        sqlite3_stmt *stmt = NULL;
        int rc = sqlite3_prepare_v2(db, tail, -1, &stmt, &tail);

        if (rc != SQLITE_OK) {
            store_set_err(err, "%s", store_sqlite_error(db, rc));
            return store_sqlite_status(db, rc);
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
            store_set_err(err, "%s", store_sqlite_error(db, rc));
            sqlite3_finalize(stmt);
            return store_sqlite_status(db, rc);
        }
        sqlite3_finalize(stmt);
    }
    return STORE_OK;
}

/* vfs: NULL for the default. */
static int open_conn(const char *path, sqlite3 **db, const char *vfs, char **err)
{
    int rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, vfs);

    if (rc != SQLITE_OK) {
        store_set_err(err, "cannot open database %s: %s", path,
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
        store_set_err(err, "database %s is read-only", path);
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    return 0;
}

static int pragma(sqlite3 *db, const char *path, const char *sql, const char *want, char **err)
{
    char got[64];

    if (store_sqlite_exec(db, sql, got, sizeof got, err) < 0) {
        char *e = *err;

        *err = NULL;
        store_set_err(err, "%s on %s failed: %s", sql, path, e ? e : "out of memory");
        free(e);
        return -1;
    }
    if (want && strcmp(got, want) != 0) {
        store_set_err(err, "%s on %s returned \"%s\", not \"%s\"", sql, path, got, want);
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

    if (store_sqlite_exec(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                 buf, sizeof buf, err) < 0)
        return -1;
    if (strcmp(buf, "0") == 0) {
        *version = 0;
        return 0;
    }
    if (store_sqlite_exec(db, "SELECT value FROM meta WHERE key = 'schema_version'", buf, sizeof buf,
                 err) < 0)
        return -1;
    errno = 0;
    v = strtol(buf, &end, 10);
    if (!buf[0] || *end || errno || v < 0 || v > INT_MAX) {
        store_set_err(err, "database schema version \"%s\" is not a number", buf);
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
    if (rc != SQLITE_DONE) store_set_err(err, "%s", sqlite3_errmsg(db));
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

        if (store_sqlite_exec(db, "BEGIN IMMEDIATE", NULL, 0, err) < 0 || read_version(db, &v, err) < 0) {
            char *e = *err;

            *err = NULL;
            store_set_err(err, "cannot read the schema version of %s: %s", path, e ? e : "out of memory");
            free(e);
            goto rollback;
        }
        if (v > latest) {
            store_set_err(err,
                    "database schema version %d is newer than this inlet supports (%d); "
                    "upgrade inlet",
                    v, latest);
            goto rollback;
        }
        if (v == latest) {
            store_sqlite_exec(db, "ROLLBACK", NULL, 0, NULL);
            *version_out = v;
            return 0;
        }
        if ((size_t)v >= count || steps[v].version != v + 1 || !steps[v].sqlite_sql) {
            store_set_err(err, "no migration from schema version %d", v);
            goto rollback;
        }
        if (store_sqlite_exec(db, steps[v].sqlite_sql, NULL, 0, err) < 0 ||
            set_version(db, v + 1, err) < 0 || store_sqlite_exec(db, "COMMIT", NULL, 0, err) < 0) {
            char *e = *err;

            *err = NULL;
            store_set_err(err, "migration to schema version %d (%s) failed: %s", v + 1,
                    steps[v].description, e ? e : "out of memory");
            free(e);
            goto rollback;
        }
        log_info("storage", "migrated path=%s schema=%d", path, v + 1);
    }

rollback:
    if (!sqlite3_get_autocommit(db)) store_sqlite_exec(db, "ROLLBACK", NULL, 0, NULL);
    return -1;
}

/* ---- open / close --------------------------------------------------------------------------- */

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Replaces SQLite's automatic checkpoint (see the top).  Runs on the writer thread after each
 * commit, with the write lock already released: records the frame count and wakes the
 * checkpointer; never checkpoints itself. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct sqlite_be *be = arg;

    (void)db, (void)name;
    be->wal_frames = frames;
    if (be->ckpt_started) {
        pthread_mutex_lock(&be->cmu);
        be->commit_seq++;
        if (!be->wal_dirty) {
            be->wal_dirty = true;
            pthread_cond_signal(&be->ckpt_cv); /* start the idle clock */
        }
        pthread_mutex_unlock(&be->cmu);
    }
    if (frames >= be->idle_frames && be->ckpt_started) {
        pthread_mutex_lock(&be->cmu);
        /* Each run copies at least idle_frames new frames (fewer, larger runs: fewer syncs);
         * frames below the last count mean the WAL started over. */
        if (!be->ckpt_wanted && (frames < be->ckpt_last_log ||
                                 frames - be->ckpt_last_log >= be->idle_frames)) {
            be->ckpt_wanted = true;
            pthread_cond_signal(&be->ckpt_cv);
        }
        pthread_mutex_unlock(&be->cmu);
    }
    return SQLITE_OK;
}

static void *checkpointer_main(void *arg)
{
    struct sqlite_be *be = arg;
    log_thread_name("checkpointer");

    pthread_mutex_lock(&be->cmu);
    for (;;) {
        struct timespec t0;
        int log_frames = 0, done_frames = 0, rc;
        double ms;

        bool truncate = false;
        while (!be->ckpt_stop && (!be->ckpt_wanted || be->ckpt_hold)) {
            if (!be->wal_dirty || be->ckpt_hold) {
                pthread_cond_wait(&be->ckpt_cv, &be->cmu);
                continue;
            }
            const uint64_t seq = be->commit_seq;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (long)SQLITE_CHECKPOINT_TRUNCATE_IDLE_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            if (pthread_cond_timedwait(&be->ckpt_cv, &be->cmu, &until) == ETIMEDOUT && seq == be->commit_seq &&
                be->wal_dirty && !be->ckpt_hold && !be->ckpt_stop) {
                truncate = true;
                break;
            }
        }
        if (be->ckpt_stop) break;
        be->ckpt_wanted = false;
        be->ckpt_running = true;
        const uint64_t seq_before = be->commit_seq;
        pthread_mutex_unlock(&be->cmu);

        clock_gettime(CLOCK_MONOTONIC, &t0);
        rc = sqlite3_wal_checkpoint_v2(be->cdb, NULL,
                                       truncate ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_PASSIVE,
                                       &log_frames, &done_frames);
        ms = ms_since(&t0);
        /* BUSY: another checkpoint (another process's) holds the checkpoint lock; the next
         * commit wakes us again. */
        if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
            log_warn("storage", "checkpoint failed error=\"%s\"", sqlite3_errmsg(be->cdb));
        else
            log_debug("storage", "checkpoint frames=%d copied=%d ms=%.1f", log_frames,
                      done_frames, ms);

        pthread_mutex_lock(&be->cmu);
        be->ckpt_running = false;
        be->cstats.runs++;
        if (rc == SQLITE_OK && truncate && be->commit_seq == seq_before) {
            be->wal_dirty = false; /* empty until the next commit */
            be->ckpt_last_log = 0;
        } else if (rc == SQLITE_OK) {
            be->ckpt_last_log = log_frames;
            be->cstats.last_log_frames = (uint64_t)log_frames;
            be->cstats.last_checkpointed_frames = (uint64_t)done_frames;
        }
        pthread_cond_broadcast(&be->ckpt_idle);
    }
    pthread_mutex_unlock(&be->cmu);
    return NULL;
}

/* The safety valve (writer thread, after a batch's replies): the WAL passed its cap, which the
 * checkpointer alone cannot prevent while commits keep coming.  Holds the checkpointer off, waits
 * for its run in progress, then checkpoints the rest with RESTART, so that the next commit starts
 * the WAL over from its beginning. */
static void sqlite_after_batch(void *arg)
{
    struct sqlite_be *be = arg;
    struct timespec t0;
    int log_frames = 0, done_frames = 0, rc;
    double ms;

    if (be->wal_frames < be->force_frames) return;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_mutex_lock(&be->cmu);
    be->ckpt_hold = true;
    while (be->ckpt_running) pthread_cond_wait(&be->ckpt_idle, &be->cmu);
    pthread_mutex_unlock(&be->cmu);

    /* RESTART waits (busy handler) for readers still on the WAL: briefly, as commits wait. */
    sqlite3_busy_timeout(be->wdb, SQLITE_CHECKPOINT_VALVE_BUSY_MS);
    rc = sqlite3_wal_checkpoint_v2(be->wdb, NULL, SQLITE_CHECKPOINT_RESTART, &log_frames,
                                   &done_frames);
    sqlite3_busy_timeout(be->wdb, SQLITE_BUSY_TIMEOUT_MS);
    ms = ms_since(&t0);
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
        log_warn("storage", "checkpoint failed mode=restart error=\"%s\"", sqlite3_errmsg(be->wdb));
    else
        log_debug("storage", "checkpoint mode=restart frames=%d copied=%d ms=%.1f%s", log_frames,
                  done_frames, ms, rc == SQLITE_OK ? "" : " busy=1");
    /* Until the next commit says otherwise (a failed valve is tried again after the next batch). */
    be->wal_frames = 0;

    pthread_mutex_lock(&be->cmu);
    be->ckpt_hold = false;
    if (rc == SQLITE_OK) {
        be->cstats.valves++;
        be->ckpt_wanted = false; /* everything is copied; the next commit starts the WAL over */
        be->ckpt_last_log = 0;
    } else {
        be->cstats.valve_failures++;
    }
    pthread_cond_signal(&be->ckpt_cv);
    pthread_mutex_unlock(&be->cmu);
}

static void sqlite_checkpoint_stats(void *arg, struct store_checkpoint_stats *out)
{
    struct sqlite_be *be = arg;

    pthread_mutex_lock(&be->cmu);
    *out = be->cstats;
    pthread_mutex_unlock(&be->cmu);
}

static int prepare_w(struct sqlite_be *be, sqlite3 *db, const char *sql, sqlite3_stmt **stmt,
                     const char *what, char **err)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) == SQLITE_OK)
        return 0;
    store_set_err(err, "cannot prepare the %s on %s: %s", what, be->path, sqlite3_errmsg(db));
    return -1;
}

/* auto_vacuum=INCREMENTAL takes effect only on a database without tables (setup_writer sets it
 * first thing, so a new database has it).  A database made before (auto_vacuum 0) is rebuilt
 * once with VACUUM, which needs no transaction open and, for a while, room for a second copy. */
static int ensure_incremental_vacuum(struct sqlite_be *be, char **err)
{
    struct timespec t0;
    char mode[16];

    if (store_sqlite_exec(be->wdb, "PRAGMA auto_vacuum", mode, sizeof mode, err) < 0) return -1;
    if (strcmp(mode, "0") != 0) return 0;
    log_info("storage", "vacuum path=%s reason=\"auto_vacuum=incremental, once\"", be->path);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (pragma(be->wdb, be->path, "PRAGMA auto_vacuum = INCREMENTAL", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "VACUUM", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA auto_vacuum", "2", err) < 0)
        return -1;
    log_info("storage", "vacuumed path=%s auto_vacuum=incremental ms=%.1f", be->path,
             ms_since(&t0));
    return 0;
}

static int setup_writer(struct sqlite_be *be, char **err)
{
    static const char insert_sql[] =
        "INSERT INTO messages (id, received_at, sender, recipients, remote_ip, helo, tls, size, raw,"
        " body_segment, body_offset, body_crc)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
    char ps[32];
    long page_size;
    int version;

    /* The WAL's writes gathered per commit (sqlite_walbuf.c), which needs synchronous=FULL: set
     * and checked before anything is written, and never changed on this connection. */
    if (open_conn(be->path, &be->wdb, store_sqlite_walbuf_register() == SQLITE_OK ? STORE_SQLITE_WALBUF_VFS : NULL,
                  err) < 0)
        return -1;
    if (pragma(be->wdb, be->path, "PRAGMA synchronous = FULL", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA synchronous", "2", err) < 0)
        return -1;
    /* Order matters: page_size and auto_vacuum only take effect before the first table exists. */
    if (pragma(be->wdb, be->path, "PRAGMA page_size = " SQLITE_NEW_PAGE_SIZE, NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA auto_vacuum = INCREMENTAL", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA journal_mode = WAL", "wal", err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA busy_timeout = 5000", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA journal_size_limit = 16777216", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA foreign_keys = ON", NULL, err) < 0 ||
        pragma(be->wdb, be->path, "PRAGMA temp_store = MEMORY", NULL, err) < 0)
        return -1;
    if (migrate(be->wdb, be->path, &version, err) < 0 || ensure_incremental_vacuum(be, err) < 0)
        return -1;
    if (store_sqlite_exec(be->wdb, "PRAGMA page_size", ps, sizeof ps, err) < 0) return -1;
    page_size = strtol(ps, NULL, 10);
    if (page_size < 512) page_size = 4096;
    be->idle_frames = (int)(SQLITE_CHECKPOINT_IDLE_BYTES / page_size);
    be->force_frames = (int)(SQLITE_CHECKPOINT_FORCE_BYTES / page_size);
    sqlite3_wal_hook(be->wdb, wal_hook, be);
    if (prepare_w(be, be->wdb, insert_sql, &be->insert, "message insert", err) < 0 ||
        prepare_w(be, be->wdb,
                  "UPDATE messages SET state = 'routed', parse_warnings = ?2"
                  " WHERE id = ?1 AND state = 'accepted'",
                  &be->route_msg, "message update", err) < 0 ||
        prepare_w(be, be->wdb, "SELECT 1 FROM messages WHERE id = ?1", &be->msg_exists,
                  "message lookup", err) < 0 ||
        prepare_w(be, be->wdb,
                  "INSERT INTO recipients (message_id, recipient, outcome, routes, warnings)"
                  " VALUES (?1, ?2, ?3, ?4, ?5)",
                  &be->ins_rcpt, "recipient insert", err) < 0 ||
        prepare_w(be, be->wdb,
                  "INSERT INTO deliveries (id, message_id, recipient, route_ids, kind, target,"
                  " format, state, attempts, next_attempt_at, created_at, updated_at, copy_key)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, ?8, ?8, ?9)",
                  &be->ins_delivery, "delivery insert", err) < 0 ||
        prepare_w(be, be->wdb,
                  /* ?11 = 1: a mailbox copy that takes its mailbox's retention, if set. */
                  "INSERT INTO stored (key, message_id, recipient, domain, route_id, notify,"
                  " format, expires_at, created_at, mailbox) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
                  " coalesce((SELECT ?9 + retention FROM mailboxes WHERE name = ?10 AND ?11 = 1),"
                  " ?8), ?9, ?10)",
                  &be->ins_stored, "stored copy insert", err) < 0 ||
        prepare_w(be, be->wdb, "SAVEPOINT job", &be->sp_begin, "savepoint", err) < 0 ||
        prepare_w(be, be->wdb, "RELEASE job", &be->sp_release, "savepoint release", err) < 0 ||
        prepare_w(be, be->wdb, "ROLLBACK TO job", &be->sp_rollback, "savepoint rollback", err) < 0)
        return -1;
    return store_sqlite_queue_prepare_writer(be, err) == STORE_OK ? 0 : -1;
}

static int setup_reader(struct sqlite_be *be, char **err)
{
    if (open_conn(be->path, &be->rdb, NULL, err) < 0) return -1;
    if (pragma(be->rdb, be->path, "PRAGMA journal_mode = WAL", "wal", err) < 0 ||
        pragma(be->rdb, be->path, "PRAGMA busy_timeout = 5000", NULL, err) < 0 ||
        pragma(be->rdb, be->path, "PRAGMA query_only = ON", NULL, err) < 0)
        return -1;
    if (prepare_w(be, be->rdb, "SELECT count(*) FROM messages WHERE state = 'accepted'",
                  &be->count, "count", err) < 0 ||
        prepare_w(be, be->rdb,
                  "SELECT id, priority, seq, description, expression, actions, created_at"
                  " FROM routes ORDER BY priority, seq",
                  &be->routes, "routes query", err) < 0 ||
        prepare_w(be, be->rdb,
                  "SELECT id FROM messages WHERE state = 'accepted' ORDER BY received_at, id"
                  " LIMIT ?1",
                  &be->unprocessed, "unprocessed query", err) < 0 ||
        prepare_w(be, be->rdb,
                  "SELECT " SQLITE_MESSAGE_COLS("") " FROM messages WHERE id = ?1",
                  &be->load, "message query", err) < 0)
        return -1;

    if (open_conn(be->path, &be->pdb, NULL, err) < 0) return -1;
    sqlite3_busy_timeout(be->pdb, SQLITE_PROBE_TIMEOUT_MS);
    if (store_sqlite_queue_prepare_reader(be, err) != STORE_OK) return -1;
    return pragma(be->pdb, be->path, "PRAGMA journal_mode = WAL", "wal", err);
}

/* The checkpointer's connection and thread. */
static int setup_checkpointer(struct sqlite_be *be, char **err)
{
    sigset_t all, old;
    int rc;

    if (open_conn(be->path, &be->cdb, NULL, err) < 0) return -1;
    /* synchronous=FULL: the database file is synced before the copied frames count as copied
     * (and before the WAL may start over).  A first read opens the WAL. */
    if (pragma(be->cdb, be->path, "PRAGMA journal_mode = WAL", "wal", err) < 0 ||
        pragma(be->cdb, be->path, "PRAGMA synchronous = FULL", NULL, err) < 0 ||
        pragma(be->cdb, be->path, "PRAGMA synchronous", "2", err) < 0 ||
        pragma(be->cdb, be->path, "SELECT count(*) FROM sqlite_master", NULL, err) < 0)
        return -1;
    /* The thread takes no signals: they belong to the thread that set up their handling. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&be->ckpt, NULL, checkpointer_main, be);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        store_set_err(err, "cannot start the storage checkpointer thread: %s", strerror(rc));
        return -1;
    }
    be->ckpt_started = true;
    return 0;
}

static void sqlite_close(void *arg)
{
    struct sqlite_be *be = arg;

    if (!be) return;
    if (be->ckpt_started) {
        pthread_mutex_lock(&be->cmu);
        be->ckpt_stop = true;
        pthread_cond_signal(&be->ckpt_cv);
        pthread_mutex_unlock(&be->cmu);
        pthread_join(be->ckpt, NULL);
        be->ckpt_started = false;
    }
    sqlite3_close(be->cdb);
    store_sqlite_queue_finalize(be); /* before the connections: a close with statements left fails */
    sqlite3_finalize(be->count);
    sqlite3_finalize(be->routes);
    sqlite3_finalize(be->unprocessed);
    sqlite3_finalize(be->load);
    sqlite3_close(be->rdb);
    sqlite3_close(be->pdb);
    sqlite3_finalize(be->insert);
    sqlite3_finalize(be->sp_begin);
    sqlite3_finalize(be->sp_release);
    sqlite3_finalize(be->sp_rollback);
    sqlite3_finalize(be->route_msg);
    sqlite3_finalize(be->msg_exists);
    sqlite3_finalize(be->ins_rcpt);
    sqlite3_finalize(be->ins_delivery);
    sqlite3_finalize(be->ins_stored);
    if (be->wdb) {
        char *err = NULL;

        /* Fold the WAL into the database and cut it to zero while nothing else reads. */
        if (store_sqlite_exec(be->wdb, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, 0, &err) < 0)
            log_warn("storage", "checkpoint failed error=\"%s\"", err ? err : "out of memory");
        free(err);
        sqlite3_close(be->wdb);
    }
    store_bodies_close(be->bodies);
    pthread_mutex_destroy(&be->rmu);
    pthread_mutex_destroy(&be->pmu);
    pthread_mutex_destroy(&be->cmu);
    pthread_cond_destroy(&be->ckpt_cv);
    pthread_cond_destroy(&be->ckpt_idle);
    free(be->path);
    free(be->dir);
    free(be);
}

static void *sqlite_open(const char *path, char **err)
{
    struct sqlite_be *be;
    const char *slash;
    char *bodies = NULL;

    if (!sqlite3_threadsafe()) {
        store_set_err(err, "the SQLite library was built without thread support");
        return NULL;
    }
    be = calloc(1, sizeof *be);
    if (!be) {
        store_set_err(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&be->rmu, NULL);
    pthread_mutex_init(&be->pmu, NULL);
    pthread_mutex_init(&be->cmu, NULL);
    pthread_cond_init(&be->ckpt_cv, NULL);
    pthread_cond_init(&be->ckpt_idle, NULL);
    snprintf(be->name, sizeof be->name, "sqlite %s", sqlite3_libversion());
    slash = strrchr(path, '/');
    be->path = strdup(path);
    be->dir = !slash ? strdup(".") : strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (!be->path || !be->dir) {
        store_set_err(err, "out of memory");
        goto fail;
    }
    if (asprintf(&bodies, "%s-bodies", path) < 0) {
        store_set_err(err, "out of memory");
        goto fail;
    }
    be->bodies = store_bodies_open(bodies, err);
    free(bodies);
    if (!be->bodies) goto fail;
    if (setup_writer(be, err) < 0 || setup_reader(be, err) < 0 || setup_checkpointer(be, err) < 0)
        goto fail;
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

/* Binds and runs the INSERT of one message whose bytes are at `ref` in the body log (ref->segment
 * 0: in the row).  Returns SQLITE_DONE, or the error code. */
static int insert_one(struct sqlite_be *be, const struct store_message *m, const struct store_body_ref *ref)
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
    /* The body is in the log (the row says where), or bound in place, never copied by us. */
    if (ref->segment > 0) {
        if ((rc = sqlite3_bind_zeroblob(s, 9, 0)) != SQLITE_OK ||
            (rc = sqlite3_bind_int64(s, 10, ref->segment)) != SQLITE_OK ||
            (rc = sqlite3_bind_int64(s, 11, ref->offset)) != SQLITE_OK ||
            (rc = sqlite3_bind_int64(s, 12, (sqlite3_int64)ref->crc)) != SQLITE_OK)
            goto out;
    } else if (m->len == 0) {
        rc = sqlite3_bind_zeroblob(s, 9, 0);
    } else {
        rc = sqlite3_bind_blob64(s, 9, m->data, (sqlite3_uint64)m->len, SQLITE_STATIC);
    }
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
/* One statement of a job's savepoint: SQLITE_DONE expected. */
static bool savepoint_step(sqlite3_stmt *s)
{
    const int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE;
}

static int run_job(struct sqlite_be *be, struct store_job *job)
{
    char *jerr = NULL;
    enum store_status rc;

    if (!savepoint_step(be->sp_begin)) return -1;
    rc = job->run(&store_sqlite_backend, be, job->arg, &jerr);
    if (!store_status_failed(rc)) { /* written, or an answer (not found, quota) */
        free(jerr);
        if (!savepoint_step(be->sp_release)) return -1;
        job->status = rc;
        job->err = NULL;
        return 0;
    }
    job->status = rc;
    job->err = jerr ? jerr : strdup("job failed");
    if (sqlite3_get_autocommit(be->wdb)) return -1; /* the whole transaction went */
    if (!savepoint_step(be->sp_rollback) || !savepoint_step(be->sp_release)) return -1;
    return 0;
}

/* The bodies of a batch into the log, then one sync: before BEGIN, so that the COMMIT that makes
 * the rows durable comes after the bytes they point at are.  refs[i] says where msgs[i] went
 * (segment 0: an empty body, kept in its row).  A failure fails the whole batch: nothing of it
 * is in a row, and what reached the log is garbage the sweeper takes back. */
static enum store_status write_bodies(struct sqlite_be *be, struct store_message *const *msgs, size_t n,
                                      struct store_body_ref *refs, char **err)
{
    enum store_status st = STORE_OK;

    for (size_t i = 0; i < n && st == STORE_OK; i++) {
        const struct store_message *m = msgs[i];

        refs[i] = (struct store_body_ref){0};
        if (m->spool)
            st = store_bodies_adopt(be->bodies, m->spool, &refs[i], err);
        else if (m->len > 0)
            st = store_bodies_append(be->bodies, m->data, m->len, &refs[i], err);
    }
    return st == STORE_OK ? store_bodies_sync(be->bodies, err) : st;
}

/* After the COMMIT: a message whose bytes were spooled goes back with them mapped from the
 * segment it became, for the pipeline to parse without a copy in memory.  A mapping that fails
 * leaves data NULL: the pipeline's scan loads the message later. */
static void map_spooled(struct sqlite_be *be, struct store_message *const *msgs, size_t n,
                        const enum store_status *status, const struct store_body_ref *refs)
{
    for (size_t i = 0; i < n; i++) {
        struct store_message *m = msgs[i];
        char *err = NULL;

        if (!m->spool || status[i] != STORE_OK) continue;
        if (store_bodies_map(be->bodies, &refs[i], m->id, &m->data, &m->map, &m->map_len, &err) != STORE_OK) {
            log_warn("storage", "cannot map a spooled body id=%s error=\"%s\"", m->id, err ? err : "?");
            m->data = NULL;
        }
        free(err);
    }
}

static enum store_status sqlite_write_batch(void *arg, struct store_message *const *msgs, size_t n,
                                            enum store_status *status,
                                            struct store_job *const *jobs, size_t njobs,
                                            char **err)
{
    struct sqlite_be *be = arg;
    struct store_body_ref *refs = n ? calloc(n, sizeof *refs) : NULL;
    enum store_status ret;
    int rc;

    if (n && !refs) {
        store_set_err(err, "out of memory");
        return STORE_ERR_NOMEM;
    }
    if (n && (ret = write_bodies(be, msgs, n, refs, err)) != STORE_OK) {
        free(refs);
        return ret;
    }
    rc = sqlite3_exec(be->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) goto fail;
    for (size_t i = 0; i < n; i++) {
        rc = insert_one(be, msgs[i], &refs[i]);
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
    map_spooled(be, msgs, n, status, refs);
    free(refs);
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
    ret = store_sqlite_status(be->wdb, rc);
    store_set_err(err, "%s", sqlite3_errmsg(be->wdb));
    if (!sqlite3_get_autocommit(be->wdb)) sqlite3_exec(be->wdb, "ROLLBACK", NULL, NULL, NULL);
    free(refs);
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

static enum store_status sqlite_meta_set_if_absent(void *arg, const char *key, const char *value,
                                                   char **winner, char **err)
{
    struct sqlite_be *be = arg;
    int rc;

    *winner = NULL;
    rc = meta_stmt(be->wdb,
                   "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                   key, value, NULL);
    if (rc == SQLITE_DONE)
        rc = meta_stmt(be->wdb, "SELECT value FROM meta WHERE key = ?1", key, NULL, winner);
    if (rc == SQLITE_DONE && *winner) return STORE_OK;
    store_set_err(err, "%s", rc == SQLITE_DONE ? "the row is not there after the insert"
                                              : store_sqlite_error(be->wdb, rc));
    free(*winner);
    *winner = NULL;
    return rc == SQLITE_DONE ? STORE_ERR_IO : store_sqlite_status(be->wdb, rc);
}

static enum store_status sqlite_meta_get(void *arg, const char *key, char **value, char **err)
{
    struct sqlite_be *be = arg;
    enum store_status ret;
    int rc;

    *value = NULL;
    pthread_mutex_lock(&be->rmu);
    rc = meta_stmt(be->rdb, "SELECT value FROM meta WHERE key = ?1", key, NULL, value);
    if (rc != SQLITE_DONE) store_set_err(err, "%s", store_sqlite_error(be->rdb, rc));
    ret = rc == SQLITE_DONE ? STORE_OK : store_sqlite_status(be->rdb, rc);
    pthread_mutex_unlock(&be->rmu);
    if (ret != STORE_OK) {
        free(*value);
        *value = NULL;
        return ret;
    }
    return *value ? STORE_OK : STORE_ERR_NOT_FOUND;
}

/* ---- routes -------------------------------------------------------------------------------- */

const char *store_sqlite_nz(const char *s, const char *dflt)
{
    return s ? s : dflt;
}

/* Binds ?1..?n of `stmt` in order from a list of text values (NULL binds SQL NULL) */
int store_sqlite_bind_texts(sqlite3_stmt *stmt, int first, const char *const *v, int n)
{
    int rc = SQLITE_OK;

    for (int i = 0; i < n && rc == SQLITE_OK; i++)
        rc = v[i] ? sqlite3_bind_text(stmt, first + i, v[i], -1, SQLITE_STATIC)
                  : sqlite3_bind_null(stmt, first + i);
    return rc;
}

/* Steps a write statement once and resets it.  SQLITE_DONE, or the error code. */
int store_sqlite_step_reset(sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);

    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

static enum store_status sqlite_route_insert(void *arg, const struct store_route *r,
                                             const char *actions_json, int64_t quota, int64_t *seq,
                                             char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *stmt = NULL;
    int64_t count = 0;
    int rc;

    rc = sqlite3_prepare_v2(be->wdb, "SELECT count(*) FROM routes", -1, &stmt, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        count = sqlite3_column_int64(stmt, 0);
        rc = SQLITE_DONE;
    }
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (rc != SQLITE_DONE) goto fail;
    if (count >= quota) return STORE_ERR_QUOTA;
    rc = sqlite3_prepare_v2(be->wdb,
                            "INSERT INTO routes (id, priority, description, expression, actions,"
                            " created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            -1, &stmt, NULL);
    if (rc == SQLITE_OK) {
        const char *t[] = {store_sqlite_nz(r->description, ""), store_sqlite_nz(r->expression, ""), actions_json};

        if ((rc = sqlite3_bind_text(stmt, 1, r->id, -1, SQLITE_STATIC)) == SQLITE_OK &&
            (rc = sqlite3_bind_int(stmt, 2, r->priority)) == SQLITE_OK &&
            (rc = store_sqlite_bind_texts(stmt, 3, t, 3)) == SQLITE_OK &&
            (rc = sqlite3_bind_int64(stmt, 6, r->created_at)) == SQLITE_OK)
            rc = sqlite3_step(stmt);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) goto fail;
    *seq = sqlite3_last_insert_rowid(be->wdb);
    return STORE_OK;

fail:
    store_set_err(err, "cannot insert route %s: %s", r->id, store_sqlite_error(be->wdb, rc));
    return store_sqlite_status(be->wdb, rc);
}

static enum store_status sqlite_route_update(void *arg, const struct store_route *r,
                                             const char *actions_json, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *stmt = NULL;
    int rc;

    rc = sqlite3_prepare_v2(be->wdb,
                            "UPDATE routes SET priority = ?2, description = ?3, expression = ?4,"
                            " actions = ?5 WHERE id = ?1",
                            -1, &stmt, NULL);
    if (rc == SQLITE_OK) {
        const char *t[] = {store_sqlite_nz(r->description, ""), store_sqlite_nz(r->expression, ""), actions_json};

        if ((rc = sqlite3_bind_text(stmt, 1, r->id, -1, SQLITE_STATIC)) == SQLITE_OK &&
            (rc = sqlite3_bind_int(stmt, 2, r->priority)) == SQLITE_OK &&
            (rc = store_sqlite_bind_texts(stmt, 3, t, 3)) == SQLITE_OK)
            rc = sqlite3_step(stmt);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
        store_set_err(err, "cannot update route %s: %s", r->id, store_sqlite_error(be->wdb, rc));
        return store_sqlite_status(be->wdb, rc);
    }
    return sqlite3_changes(be->wdb) == 0 ? STORE_ERR_NOT_FOUND : STORE_OK;
}

static enum store_status sqlite_route_delete(void *arg, const char *id, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *stmt = NULL;
    int rc;

    rc = sqlite3_prepare_v2(be->wdb, "DELETE FROM routes WHERE id = ?1", -1, &stmt, NULL);
    if (rc == SQLITE_OK) {
        if ((rc = sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC)) == SQLITE_OK)
            rc = sqlite3_step(stmt);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
        store_set_err(err, "cannot delete route %s: %s", id, store_sqlite_error(be->wdb, rc));
        return store_sqlite_status(be->wdb, rc);
    }
    return sqlite3_changes(be->wdb) == 0 ? STORE_ERR_NOT_FOUND : STORE_OK;
}

/* Copies column `col` as text (NULL → ""). */
char *store_sqlite_col_strdup(sqlite3_stmt *stmt, int col)
{
    const unsigned char *t = sqlite3_column_text(stmt, col);

    return strdup(t ? (const char *)t : "");
}

static enum store_status sqlite_routes_load(void *arg, struct store_route **out, size_t *n,
                                            char **err)
{
    struct sqlite_be *be = arg;
    struct store_route *v = NULL;
    size_t count = 0, cap = 0;
    enum store_status ret = STORE_OK;
    int rc;

    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&be->rmu);
    while (ret == STORE_OK && (rc = sqlite3_step(be->routes)) == SQLITE_ROW) {
        struct store_route *r;
        const unsigned char *id = sqlite3_column_text(be->routes, 0);
        const unsigned char *actions = sqlite3_column_text(be->routes, 5);

        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct store_route *nv = realloc(v, ncap * sizeof *nv);

            if (!nv) {
                ret = STORE_ERR_NOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        r = &v[count];
        *r = (struct store_route){0};
        snprintf(r->id, sizeof r->id, "%s", id ? (const char *)id : "");
        r->priority = (int32_t)sqlite3_column_int(be->routes, 1);
        r->seq = sqlite3_column_int64(be->routes, 2);
        r->created_at = sqlite3_column_int64(be->routes, 6);
        r->description = store_sqlite_col_strdup(be->routes, 3);
        r->expression = store_sqlite_col_strdup(be->routes, 4);
        count++; /* from here on store_routes_free frees what r holds */
        if (!r->description || !r->expression) ret = STORE_ERR_NOMEM;
        else
            ret = store_json_parse_string_array(actions ? (const char *)actions : "", &r->actions,
                                                &r->nactions);
        if (ret == STORE_ERR_IO)
            store_set_err(err, "route %s: actions are not a JSON array of strings", r->id);
    }
    if (ret == STORE_ERR_NOMEM) {
        store_set_err(err, "cannot read the routes: out of memory");
    } else if (ret == STORE_OK && rc != SQLITE_DONE) {
        store_set_err(err, "cannot read the routes: %s", store_sqlite_error(be->rdb, rc));
        ret = store_sqlite_status(be->rdb, rc);
    }
    sqlite3_reset(be->routes);
    pthread_mutex_unlock(&be->rmu);
    if (ret != STORE_OK) {
        store_routes_free(v, count);
        return ret;
    }
    *out = v;
    *n = count;
    return STORE_OK;
}

/* ---- routing outcomes ----------------------------------------------------------------------- */

static enum store_status sqlite_write_outcome(void *arg, const struct store_outcome *o,
                                              char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s;
    const char *what = "message";
    const char *which = o->message_id;
    int rc;

    /* First the state: only an 'accepted' message gets an outcome, once. */
    s = be->route_msg;
    {
        const char *t[] = {o->message_id, store_sqlite_nz(o->parse_warnings_json, "[]")};

        rc = store_sqlite_bind_texts(s, 1, t, 2);
        if (rc == SQLITE_OK) {
            rc = store_sqlite_step_reset(s);
        } else {
            sqlite3_reset(s);
            sqlite3_clear_bindings(s);
        }
    }
    if (rc != SQLITE_DONE) goto fail;
    if (sqlite3_changes(be->wdb) == 0) {
        /* Routed already, or no such message: nothing written, nothing to act on. */
        rc = store_sqlite_message_exists(be, o->message_id);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE) return STORE_ERR_NOT_FOUND;
        goto fail;
    }

    what = "recipient";
    for (size_t i = 0; i < o->nrecipients; i++) {
        const struct store_recipient_outcome *r = &o->recipients[i];
        const char *t[] = {o->message_id, r->recipient, r->outcome, store_sqlite_nz(r->routes_json, "[]"),
                           store_sqlite_nz(r->warnings_json, "[]")};

        which = store_sqlite_nz(r->recipient, "(null)");
        rc = store_sqlite_bind_texts(be->ins_rcpt, 1, t, 5);
        rc = rc == SQLITE_OK ? store_sqlite_step_reset(be->ins_rcpt) : rc;
        if (rc != SQLITE_DONE) goto fail_reset;
    }
    what = "delivery";
    for (size_t i = 0; i < o->ndeliveries; i++) {
        const struct store_delivery_plan *d = &o->deliveries[i];
        const char *t[] = {d->id, o->message_id, d->recipient, store_sqlite_nz(d->route_ids_json, "[]"),
                           d->kind, d->target, store_sqlite_nz(d->format, "")};

        which = d->id;
        rc = store_sqlite_bind_texts(be->ins_delivery, 1, t, 7);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(be->ins_delivery, 8, o->now);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(be->ins_delivery, 9, store_sqlite_nz(d->copy_key, ""), -1, SQLITE_STATIC);
        rc = rc == SQLITE_OK ? store_sqlite_step_reset(be->ins_delivery) : rc;
        if (rc != SQLITE_DONE) goto fail_reset;
    }
    what = "stored copy";
    for (size_t i = 0; i < o->ncopies; i++) {
        const struct store_copy_plan *c = &o->copies[i];
        const char *t[] = {c->key, o->message_id, c->recipient, c->domain, store_sqlite_nz(c->route_id, ""),
                           c->notify, store_sqlite_nz(c->format, "")};

        which = c->key;
        rc = store_sqlite_bind_texts(be->ins_stored, 1, t, 7);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(be->ins_stored, 8, c->expires_at);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(be->ins_stored, 9, o->now);
        if (rc == SQLITE_OK) rc = sqlite3_bind_text(be->ins_stored, 10, c->mailbox, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(be->ins_stored, 11, c->mailbox_retention);
        rc = rc == SQLITE_OK ? store_sqlite_step_reset(be->ins_stored) : rc;
        if (rc != SQLITE_DONE) goto fail_reset;
    }
    if (o->ncopies == 0 && o->ndeliveries == 0) {
        /* Nothing keeps the message: the sweeper purges it (a copy or a delivery notes it when
         * it goes, by trigger; migration 11). */
        what = "purge note";
        which = o->message_id;
        rc = sqlite3_bind_text(be->wq[WQ_NOTE_CANDIDATE], 1, o->message_id, -1, SQLITE_STATIC);
        rc = rc == SQLITE_OK ? store_sqlite_step_reset(be->wq[WQ_NOTE_CANDIDATE]) : rc;
        if (rc != SQLITE_DONE) {
            sqlite3_reset(be->wq[WQ_NOTE_CANDIDATE]);
            sqlite3_clear_bindings(be->wq[WQ_NOTE_CANDIDATE]);
            goto fail;
        }
    }
    rc = store_sqlite_outcome_events(be, o, &what, &which);
    if (rc != SQLITE_DONE) goto fail;
    return STORE_OK;

fail_reset:
    /* A bind that failed left its statement bound: clear every one (harmless for the others). */
    sqlite3_reset(be->ins_rcpt);
    sqlite3_clear_bindings(be->ins_rcpt);
    sqlite3_reset(be->ins_delivery);
    sqlite3_clear_bindings(be->ins_delivery);
    sqlite3_reset(be->ins_stored);
    sqlite3_clear_bindings(be->ins_stored);
fail:
    store_set_err(err, "cannot write the outcome of message %s: %s %s: %s", o->message_id, what,
                  which ? which : "(null)", store_sqlite_error(be->wdb, rc));
    return store_sqlite_status(be->wdb, rc);
}

static enum store_status sqlite_list_unprocessed(void *arg, char ***ids, size_t *n, size_t max,
                                                 char **err)
{
    struct sqlite_be *be = arg;
    char **v = NULL;
    size_t count = 0, cap = 0;
    bool oom = false;
    int rc;

    *ids = NULL;
    *n = 0;
    pthread_mutex_lock(&be->rmu);
    sqlite3_bind_int64(be->unprocessed, 1, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
    while ((rc = sqlite3_step(be->unprocessed)) == SQLITE_ROW) {
        char *id;

        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **nv = realloc(v, ncap * sizeof *nv);

            if (!nv) {
                oom = true;
                break;
            }
            v = nv;
            cap = ncap;
        }
        if (!(id = store_sqlite_col_strdup(be->unprocessed, 0))) {
            oom = true;
            break;
        }
        v[count++] = id;
    }
    if (oom) store_set_err(err, "cannot list unprocessed messages: out of memory");
    else if (rc != SQLITE_DONE)
        store_set_err(err, "cannot list unprocessed messages: %s", store_sqlite_error(be->rdb, rc));
    sqlite3_reset(be->unprocessed);
    sqlite3_clear_bindings(be->unprocessed);
    pthread_mutex_unlock(&be->rmu);
    if (oom || rc != SQLITE_DONE) {
        for (size_t i = 0; i < count; i++) free(v[i]);
        free(v);
        return oom ? STORE_ERR_NOMEM : store_sqlite_status(be->rdb, rc);
    }
    *ids = v;
    *n = count;
    return STORE_OK;
}

enum store_status store_sqlite_read_message(sqlite3_stmt *s, int first, struct store_message *m,
                                            struct store_body_ref *ref, char **err)
{
    const bool logged = sqlite3_column_type(s, first + 7) != SQLITE_NULL;
    *ref = (struct store_body_ref){0};
    if (logged)
        *ref = (struct store_body_ref){
            .segment = sqlite3_column_int64(s, first + 7),
            .offset = sqlite3_column_int64(s, first + 8),
            .len = sqlite3_column_int64(s, first + 9),
            .crc = (uint32_t)sqlite3_column_int64(s, first + 10),
        };
    const struct store_message_cols c = {
        .received_at_ms = sqlite3_column_int64(s, first),
        .sender = (const char *)sqlite3_column_text(s, first + 1),
        .rcpts_json = (const char *)sqlite3_column_text(s, first + 2),
        .remote_ip = (const char *)sqlite3_column_text(s, first + 3),
        .helo = (const char *)sqlite3_column_text(s, first + 4),
        .tls = (const char *)sqlite3_column_text(s, first + 5),
        .raw = logged ? NULL : sqlite3_column_blob(s, first + 6),
        .len = logged ? 0 : (size_t)sqlite3_column_bytes(s, first + 6),
    };

    return store_message_fill(m, &c, err);
}

enum store_status store_sqlite_load_body(struct sqlite_be *be, struct store_message *m,
                                         const struct store_body_ref *ref, char **err)
{
    uint8_t *data = NULL;
    enum store_status st;

    if (ref->segment <= 0) return STORE_OK;
    st = store_bodies_read(be->bodies, ref, m->id, &data, err);
    if (st != STORE_OK) return st;
    free(m->data);
    m->data = data;
    m->len = (size_t)ref->len;
    return STORE_OK;
}

int store_sqlite_message_exists(struct sqlite_be *be, const char *id)
{
    sqlite3_stmt *s = be->msg_exists;
    int rc = sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);

    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc;
}

static enum store_status sqlite_load_message(void *arg, const char *id, struct store_message **out,
                                             char **err)
{
    struct sqlite_be *be = arg;
    struct store_message *m = calloc(1, sizeof *m);
    sqlite3_stmt *s = be->load;
    struct store_body_ref ref = {0};
    enum store_status ret;
    int rc;

    *out = NULL;
    if (!m) {
        store_set_err(err, "cannot load message %s: out of memory", id);
        return STORE_ERR_NOMEM;
    }
    snprintf(m->id, sizeof m->id, "%s", id);
    pthread_mutex_lock(&be->rmu);
    rc = sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        ret = store_sqlite_read_message(s, 0, m, &ref, err);
    } else if (rc == SQLITE_DONE) {
        ret = STORE_ERR_NOT_FOUND;
    } else {
        store_set_err(err, "cannot load message %s: %s", id, store_sqlite_error(be->rdb, rc));
        ret = store_sqlite_status(be->rdb, rc);
    }
    /* Ends the read transaction: the columns are ours now; the body is read after it. */
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    pthread_mutex_unlock(&be->rmu);
    if (ret == STORE_OK) ret = store_sqlite_load_body(be, m, &ref, err);
    if (ret != STORE_OK) {
        store_free_message(m);
        return ret;
    }
    *out = m;
    return STORE_OK;
}

enum store_status store_sqlite_spool_open(void *arg, struct store_spool **out, char **err)
{
    struct sqlite_be *be = arg;

    return store_spool_open(be->bodies, out, err);
}

/* ---- reads and checks ----------------------------------------------------------------------- */

static enum store_status sqlite_count_unprocessed(void *arg, int64_t *count, char **err)
{
    struct sqlite_be *be = arg;
    enum store_status ret = STORE_OK;
    int rc;

    pthread_mutex_lock(&be->rmu);
    rc = sqlite3_step(be->count);
    if (rc == SQLITE_ROW) {
        *count = sqlite3_column_int64(be->count, 0);
    } else {
        store_set_err(err, "%s", store_sqlite_error(be->rdb, rc));
        ret = store_sqlite_status(be->rdb, rc);
    }
    sqlite3_reset(be->count);
    pthread_mutex_unlock(&be->rmu);
    return ret;
}

static int check_access(const char *path, bool must_exist, char **reason)
{
    if (faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) == 0) return 0;
    if (errno == ENOENT && !must_exist) return 0;
    store_set_err(reason, "database is not writable: %s: %s", path, strerror(errno));
    return -1;
}

static enum store_status sqlite_check_writable(void *arg, char **reason)
{
    struct sqlite_be *be = arg;
    struct statvfs sv;
    char *wal = NULL, *err = NULL;
    enum store_status ret = STORE_ERR_IO;

    if (reason) *reason = NULL;
    /* Permissions first: the connections keep descriptors opened for writing, so SQLite alone
     * would not notice a file or directory turned read-only (or a file system remounted so). */
    if (check_access(be->dir, true, reason) < 0 || check_access(be->path, true, reason) < 0)
        goto out;
    if (asprintf(&wal, "%s-wal", be->path) < 0) {
        wal = NULL;
        store_set_err(reason, "database is not writable: out of memory");
        ret = STORE_ERR_NOMEM;
        goto out;
    }
    if (check_access(wal, false, reason) < 0) goto out;
    if (statvfs(be->dir, &sv) == 0 && (geteuid() == 0 ? sv.f_bfree : sv.f_bavail) == 0) {
        store_set_err(reason, "database is not writable: %s: %s", be->dir, strerror(ENOSPC));
        ret = STORE_ERR_FULL;
        goto out;
    }

    /* Then the lock: BEGIN IMMEDIATE takes the write lock (SQLITE_READONLY on a read-only
     * database, SQLITE_BUSY when someone holds it longer than the probe's timeout). */
    pthread_mutex_lock(&be->pmu);
    ret = store_sqlite_exec(be->pdb, "BEGIN IMMEDIATE", NULL, 0, &err);
    if (ret == STORE_OK) {
        store_sqlite_exec(be->pdb, "ROLLBACK", NULL, 0, NULL);
    } else {
        store_set_err(reason, "database is not writable: %s", err ? err : "out of memory");
    }
    pthread_mutex_unlock(&be->pmu);

out:
    free(wal);
    free(err);
    return ret;
}

static enum store_status sqlite_writer_query(void *arg, const char *sql, char *out, size_t outsz)
{
    struct sqlite_be *be = arg;
    char *err = NULL;
    enum store_status rc = store_sqlite_exec(be->wdb, sql, out, outsz, &err);

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
    .route_insert = sqlite_route_insert,
    .route_update = sqlite_route_update,
    .route_delete = sqlite_route_delete,
    .write_outcome = sqlite_write_outcome,
    .meta_get = sqlite_meta_get,
    .after_batch = sqlite_after_batch,
    .count_unprocessed = sqlite_count_unprocessed,
    .routes_load = sqlite_routes_load,
    .list_unprocessed = sqlite_list_unprocessed,
    .load_message = sqlite_load_message,
    .check_writable = sqlite_check_writable,
    .writer_query = sqlite_writer_query,
    .checkpoint_stats = sqlite_checkpoint_stats,
    .record_attempt = store_sqlite_record_attempt,
    .delivery_retry = store_sqlite_delivery_retry,
    .deliveries_add = store_sqlite_deliveries_add,
    .copy_delete = store_sqlite_copy_delete,
    .sweep = store_sqlite_sweep,
    .deliveries_due = store_sqlite_deliveries_due,
    .deliveries_next_due = store_sqlite_deliveries_next_due,
    .delivery_get = store_sqlite_delivery_get,
    .deliveries_list = store_sqlite_deliveries_list,
    .copy_get = store_sqlite_copy_get,
    .events_query = store_sqlite_events_query,
    .gauges = store_sqlite_gauges,
    .backup = store_sqlite_backup,
    .spool_open = store_sqlite_spool_open,
    .rows_read = store_sqlite_rows_read,
    .rows_insert = store_sqlite_rows_insert,
    .holds_data = store_sqlite_holds_data,
    .sql_read = store_sqlite_sql_read,
    .sql_write = store_sqlite_sql_write,
    .now_seconds_sql = "CAST(strftime('%s', 'now') AS INTEGER)",
};
