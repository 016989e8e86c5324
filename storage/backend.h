/* storage/backend.h — what a storage backend provides to store.c (internal to storage/).
 *
 * store.c owns everything that does not depend on the database: the URL, the data directory, the
 * write queue and the writer thread (group commit), statistics, logging.  A backend is a table of
 * functions over an opaque handle; today there is `store_sqlite_backend`, and a PostgreSQL one
 * plugs in beside it with the same table and the same schema (migrations.c).
 *
 * Threads: `write_batch`, the jobs' typed operations and `writer_query` are only ever called by
 * one thread at a time (the writer thread, or a test holding store.c's writer lock);
 * `count_unprocessed`, `meta_get` and `check_writable` may be called from any thread and
 * serialise themselves. */
#ifndef INLET_STORAGE_BACKEND_H
#define INLET_STORAGE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

struct store_backend;

/* A write other than a message (meta rows today; routes and deliveries later), queued like a
 * message and run by the writer inside the next batch's transaction.  The backend runs each job
 * under a savepoint of its own: a job that fails is rolled back alone and the messages and other
 * jobs of its batch still commit.  `status` and `err` are set by the writer: STORE_OK only once
 * the batch committed (durably). */
struct store_job {
    /* Runs on the write connection, inside the open transaction.  0, or -1 with *err (malloc'd).
     * `ops` is the backend table, so that a job calls a typed operation below. */
    int (*run)(const struct store_backend *ops, void *be, void *arg, char **err);
    void *arg;
    enum store_status status;
    char *err;
};

struct store_backend {
    const char *kind; /* "sqlite" */

    /* Opens the database at `location` (a file path for SQLite), applies settings and
     * migrations.  NULL with *err (malloc'd). */
    void *(*open)(const char *location, char **err);
    /* Closes every connection; nothing may be in flight. */
    void (*close)(void *be);
    /* "sqlite 3.40.1"; valid until close. */
    const char *(*name)(void *be);

    /* Writes `n` messages, then `njobs` jobs (see struct store_job), in one transaction and makes
     * it durable.  Returns STORE_OK when the transaction committed; then status[i] says, per
     * message, whether its row is in it (a message that alone cannot be stored, e.g. a duplicate
     * id or a body above the backend's size limit, is left out and gets STORE_ERR_IO while the
     * others commit), and jobs[i]->status/err say the same per job (each runs under its own
     * savepoint, rolled back alone when it fails).  Any other return: nothing was written, *err
     * (malloc'd) says why, status[] and the jobs' results are not set. */
    enum store_status (*write_batch)(void *be, struct store_message *const *msgs, size_t n,
                                     enum store_status *status, struct store_job *const *jobs,
                                     size_t njobs, char **err);

    /* Typed operations for jobs (write connection, inside the job's savepoint). */
    /* Inserts meta row (key, value) unless `key` exists; *winner (malloc'd) = the value stored
     * now, ours or the one that was there.  0 or -1 with *err. */
    int (*meta_set_if_absent)(void *be, const char *key, const char *value, char **winner,
                              char **err);

    /* Reads (any thread): meta row `key` into *value (malloc'd): 0, -ENOENT when there is no such
     * row, or -EIO with *err. */
    int (*meta_get)(void *be, const char *key, char **value, char **err);

    /* Called by the writer when the queue is empty after a batch: time for housekeeping that
     * would otherwise delay a commit (the SQLite WAL checkpoint).  May be NULL. */
    void (*idle)(void *be);

    int (*count_unprocessed)(void *be, int64_t *count, char **err);
    /* 0, or -1 with *reason (malloc'd). */
    int (*check_writable)(void *be, char **reason);

    /* Runs `sql` on the write connection and copies the first column of the first row, as text,
     * into out.  For tests (PRAGMA values that only the write connection can tell). */
    int (*writer_query)(void *be, const char *sql, char *out, size_t outsz);
};

extern const struct store_backend store_sqlite_backend;

/* migrations.c: the ordered schema steps, shared by every backend.  Step i (0-based) brings a
 * database from version i to version i + 1; each backend has its own dialect of the SQL (NULL
 * where a backend does not exist yet). */
struct store_migration {
    int version;
    const char *description;
    const char *sqlite_sql;
    const char *postgres_sql;
};
const struct store_migration *store_migrations(size_t *count);

/* Test hook (store.c): runs backend->writer_query while holding the writer lock, so it never
 * races a batch.  0 or -1. */
int store_test_writer_query(struct store *st, const char *sql, char *out, size_t outsz);

/* Queues `job` for the next batch and waits (condition variable) until its batch committed or
 * failed; then job->status and job->err (malloc'd, the caller frees it) are set.  Blocks the
 * calling thread for one commit; must not be called from the writer thread (a job's run). */
void store_run_job(struct store *st, struct store_job *job);

/* JSON array of strings, e.g. ["a@b.example","c@d.example"]: `"`, `\` and control characters
 * escaped (\" \\ \n \r \t \b \f, else \u00XX); every other byte, UTF-8 included, kept as is.
 * Returns a malloc'd string or NULL when out of memory. */
char *store_json_string_array(const char *const *items, size_t n);

#endif
