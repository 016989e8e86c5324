/* storage/internal.h — what a storage backend provides to store.c (internal to storage/).
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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

struct store_backend;

/* WAL checkpoints since open (SQLite): runs of the checkpointer thread, what the last successful
 * one reported (frames in the WAL, frames of it checkpointed), and the writer's own RESTART
 * checkpoints when the WAL passed its cap (the safety valve), done or failed (busy). */
struct store_checkpoint_stats {
    uint64_t runs;
    uint64_t last_log_frames;
    uint64_t last_checkpointed_frames;
    uint64_t valves;
    uint64_t valve_failures;
};

/* A write other than a message (meta rows, routes, outcomes, deliveries), queued like a message
 * and run by the writer inside the next batch's transaction.  The backend runs each job under a
 * savepoint of its own: a job that fails is rolled back alone and the messages and other jobs of
 * its batch still commit.
 *
 * `run` returns the job's own answer: STORE_OK (written), or STORE_ERR_NOT_FOUND /
 * STORE_ERR_QUOTA (nothing written, not a failure: the savepoint is released); any other status
 * is a failure with *err (malloc'd), and the savepoint is rolled back.  `status` and `err` are
 * set by the writer once the batch ended: what `run` returned when the batch committed (durably),
 * else the batch's failure with its message. */
struct store_job {
    /* Runs on the write connection, inside the open transaction.  `ops` is the backend table, so
     * that a job calls a typed operation below. */
    enum store_status (*run)(const struct store_backend *ops, void *be, void *arg, char **err);
    void *arg;
    enum store_status status;
    char *err;
};

/* One sweeper pass (store_sweep). */
struct store_sweep_args {
    int64_t now, event_ttl, failed_retention; /* Unix seconds, seconds, seconds */
    size_t batch;                             /* rows of each kind, at most */
};

/* Every operation returns enum store_status (store.h): STORE_OK, STORE_ERR_NOT_FOUND or
 * STORE_ERR_QUOTA where store.h names them (then without *err), or a failure (IO, FULL, BUSY,
 * NOMEM) with *err (malloc'd; NULL only when even that allocation failed).  Out-parameters carry
 * values only, never a status; everything they return is malloc'd and freed by the caller with
 * free() or the store_*_free() of its type. */
/* Rows of one table on their way from one database to another (inlet migrate): the values as
 * the source holds them, row-major. */
enum store_cell_type { STORE_CELL_NULL, STORE_CELL_INT, STORE_CELL_TEXT, STORE_CELL_BLOB };
struct store_cell {
    enum store_cell_type type;
    int64_t i;   /* STORE_CELL_INT */
    char *data;  /* TEXT (NUL-terminated) or BLOB; malloc'd */
    size_t len;  /* bytes of data */
};
struct store_rows {
    size_t ncols, nrows;
    char **cols;              /* column names, ncols */
    struct store_cell *cells; /* nrows * ncols */
    int64_t last;             /* row key of the last row (the next page starts after it) */
};
void store_rows_free(struct store_rows *r);

/* A parameter of a portable statement (sql_read, sql_write): borrowed, not copied. */
struct store_param {
    enum store_cell_type type;
    int64_t i;        /* STORE_CELL_INT */
    const char *data; /* TEXT (NUL-terminated) */
};
#define STORE_P_TEXT(s) ((struct store_param){.type = (s) ? STORE_CELL_TEXT : STORE_CELL_NULL, .data = (s)})
#define STORE_P_INT(v) ((struct store_param){.type = STORE_CELL_INT, .i = (v)})

struct store_backend {
    const char *kind; /* "sqlite", "postgresql" */

    /* Opens the database at `location` (a file path for SQLite, a libpq URI for PostgreSQL),
     * applies settings and migrations.  NULL with *err (malloc'd). */
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
     * says why, status[] and the jobs' results are not set. */
    enum store_status (*write_batch)(void *be, struct store_message *const *msgs, size_t n,
                                     enum store_status *status, struct store_job *const *jobs,
                                     size_t njobs, char **err);

    /* ---- typed operations for jobs (write connection, inside the job's savepoint) ---- */
    /* Inserts meta row (key, value) unless `key` exists; *winner (malloc'd) = the value stored
     * now, ours or the one that was there. */
    enum store_status (*meta_set_if_absent)(void *be, const char *key, const char *value,
                                            char **winner, char **err);
    /* Routes.  `actions_json` is r's actions as store_json_string_array() wrote them.  Insert:
     * STORE_OK with *seq, or STORE_ERR_QUOTA; update and delete: STORE_OK or
     * STORE_ERR_NOT_FOUND. */
    enum store_status (*route_insert)(void *be, const struct store_route *r,
                                      const char *actions_json, int64_t quota, int64_t *seq,
                                      char **err);
    enum store_status (*route_update)(void *be, const struct store_route *r,
                                      const char *actions_json, char **err);
    enum store_status (*route_delete)(void *be, const char *id, char **err);
    /* The outcome of one message (store_write_outcome): STORE_OK, or STORE_ERR_NOT_FOUND (no
     * such message, or no longer 'accepted': nothing written). */
    enum store_status (*write_outcome)(void *be, const struct store_outcome *o, char **err);
    /* STORE_OK, or STORE_ERR_NOT_FOUND when nothing was written (store.h says when). */
    enum store_status (*record_attempt)(void *be, const struct store_attempt *a, char **err);
    enum store_status (*delivery_retry)(void *be, const char *id, int64_t now, char **err);
    enum store_status (*deliveries_add)(void *be, const char *message_id,
                                        const struct store_delivery_plan *plans, size_t n,
                                        int64_t now, char **err);
    enum store_status (*copy_delete)(void *be, const char *key, int64_t now, char **err);
    /* One sweeper pass, including the giving back of free pages. */
    enum store_status (*sweep)(void *be, const struct store_sweep_args *args,
                               struct store_sweep_result *out, char **err);

    /* ---- claims on shared work (store.h; NULL for a backend whose claims are in-process:
     * the face then answers with the reads below) ---- */
    /* This node's id and lease in milliseconds, before the store is used. */
    void (*set_claims)(void *be, const char *node_id, int64_t lease_ms);
    enum store_status (*deliveries_claim)(void *be, int64_t now, int64_t after_at,
                                          const char *after_id, size_t max,
                                          struct store_delivery **out, size_t *n, char **err);
    enum store_status (*deliveries_renew)(void *be, const char *const *ids, size_t n,
                                          bool *renewed, char **err);
    enum store_status (*claim_unprocessed)(void *be, char ***ids, size_t *n, size_t max,
                                           char **err);
    /* A job: store_release_claims. */
    enum store_status (*release_claims)(void *be, const char *node_id, struct store_released *out,
                                        char **err);

    /* Called by the writer after every batch, once the batch's callbacks ran (write lock of
     * store.c held): housekeeping that must not delay a reply (SQLite: the WAL safety valve).
     * May be NULL. */
    void (*after_batch)(void *be);

    /* ---- reads (any thread; each serialises itself, ends its read transaction before
     * returning and copies every value out) ---- */
    /* Meta row `key` into *value: STORE_OK or STORE_ERR_NOT_FOUND. */
    enum store_status (*meta_get)(void *be, const char *key, char **value, char **err);
    enum store_status (*count_unprocessed)(void *be, int64_t *count, char **err);
    /* Every route in evaluation order: *out (store_routes_free) and *n. */
    enum store_status (*routes_load)(void *be, struct store_route **out, size_t *n, char **err);
    /* Ids of 'accepted' messages, oldest first (received_at, then id), at most max. */
    enum store_status (*list_unprocessed)(void *be, char ***ids, size_t *n, size_t max,
                                          char **err);
    /* STORE_OK with *out, or STORE_ERR_NOT_FOUND. */
    enum store_status (*load_message)(void *be, const char *id, struct store_message **out,
                                      char **err);
    /* STORE_OK when a write could go through now; else why, in *reason. */
    enum store_status (*check_writable)(void *be, char **reason);
    enum store_status (*deliveries_due)(void *be, int64_t now, int64_t after_at,
                                        const char *after_id, size_t max,
                                        struct store_delivery **out, size_t *n, char **err);
    /* STORE_OK with *at, or STORE_ERR_NOT_FOUND. */
    enum store_status (*deliveries_next_due)(void *be, int64_t after, int64_t *at, char **err);
    enum store_status (*delivery_get)(void *be, const char *id, struct store_delivery **out,
                                      char **err);
    enum store_status (*deliveries_list)(void *be, const char *state, int64_t before_updated_at,
                                         const char *before_id, size_t max,
                                         struct store_delivery **out, size_t *n, char **err);
    enum store_status (*copy_get)(void *be, const char *key, int64_t now,
                                  struct store_copy **copy, struct store_message **msg,
                                  char **err);
    enum store_status (*events_query)(void *be, const struct store_event_query *q,
                                      struct store_event **out, size_t *n, char **err);
    enum store_status (*gauges)(void *be, int64_t now, struct store_gauges *out, char **err);
    /* A new spool for a body that arrives (store_spool_begin).  May be NULL: the backend keeps
     * bodies in its rows (the store answers STORE_ERR_NOT_FOUND). */
    enum store_status (*spool_open)(void *be, struct store_spool **out, char **err);
    /* A consistent copy of the database into `path`, created here (O_EXCL, 0600). */
    enum store_status (*backup)(void *be, const char *path, char **err);

    /* ---- inlet migrate (store_copy_into) ---- */
    /* Source side (a read): the rows of `table` whose row key is above `after`, in key order, at
     * most `max_rows` and about `max_bytes` (at least one row): *out (store_rows_free), with no
     * rows past the end.  May be NULL: the backend cannot be a source. */
    enum store_status (*rows_read)(void *be, const char *table, int64_t after, size_t max_rows,
                                   size_t max_bytes, struct store_rows **out, char **err);
    /* Target side (a job): inserts `rows` into `table` as they are, keeping any row whose key is
     * there already (a copy run again after an interruption), and keeps the table's generated
     * keys (route seq, event id) ahead of the copied ones. */
    enum store_status (*rows_insert)(void *be, const char *table, const struct store_rows *rows,
                                     char **err);
    /* *has: whether the database holds anything of its own: a row in any table, or a meta row
     * other than schema_version (a read). */
    enum store_status (*holds_data)(void *be, bool *has, char **err);

    /* ---- portable statements (mailbox.c: SQL written once for every backend) ---- */
    /* `sql` is one statement with parameters $1..$n, each first written in that order (SQLite
     * takes them as named parameters, PostgreSQL as typed ones: INT is bigint, TEXT text, BLOB
     * bytea).  The result rows (when `out` is not NULL) as store_rows, integers as INT, text as TEXT
     * (no bytes: a parameter is an integer or text).  sql_read runs on the read connection (any thread); sql_write on the
     * write connection inside a job, with *changed (may be NULL) = rows it changed. */
    enum store_status (*sql_read)(void *be, const char *sql, const struct store_param *params,
                                  size_t nparams, struct store_rows **out, char **err);
    enum store_status (*sql_write)(void *be, const char *sql, const struct store_param *params,
                                   size_t nparams, int64_t *changed, struct store_rows **out,
                                   char **err);
    /* The database's clock in Unix seconds, as an SQL expression for portable statements: on a
     * shared database the server's, so that the nodes' clocks need not agree (leases). */
    const char *now_seconds_sql;

    /* ---- several nodes ---- */
    /* Starts watching route changes made through other connections (store_watch_routes); the
     * watcher stops in close.  May be NULL: one process owns the database (SQLite). */
    enum store_status (*watch_routes)(void *be, store_routes_changed_fn changed, void *arg,
                                      char **err);

    /* ---- for tests ---- */
    /* Runs `sql` on the write connection and copies the first column of the first row, as text,
     * into out (PRAGMA values that only the write connection can tell). */
    enum store_status (*writer_query)(void *be, const char *sql, char *out, size_t outsz);
    /* Checkpoint counters since open.  May be NULL. */
    void (*checkpoint_stats)(void *be, struct store_checkpoint_stats *out);
};


extern const struct store_backend store_sqlite_backend;
extern const struct store_backend store_postgres_backend;

/* pg_try_advisory_xact_lock key of the sweeper on PostgreSQL: one node sweeps at a time (tests
 * hold it to see a pass skipped). */
#define STORE_PG_SWEEP_LOCK "7597386049893138"


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
 * races a batch. */
enum store_status store_test_writer_query(struct store *st, const char *sql, char *out,
                                          size_t outsz);

/* Test hook (store.c): the backend's checkpoint counters (all zero when it keeps none). */
void store_test_checkpoint_stats(struct store *st, struct store_checkpoint_stats *out);

/* Queues `job` for the next batch and waits (condition variable) until its batch ended; returns
 * job->status and hands job->err to *err (malloc'd; freed when err is NULL).  Blocks the calling
 * thread for one commit; must not be called from the writer thread (a job's run). */
enum store_status store_run_job(struct store *st, struct store_job *job, char **err);

/* store_submit_job: queues `job` for the next batch like store_run_job, but returns at once.
 * Ownership: `job` must be malloc'd; the store owns the struct from this call on and free()s it
 * after `done` returned (job->arg stays the caller's: `done` is where to free it).  `done(arg,
 * status, err)` runs exactly once: on the writer thread once the batch ended (status =
 * job->status: what the job's run returned when the batch committed, else the batch's failure;
 * err malloc'd, owned by the callee, NULL with STORE_OK), or at once on the calling thread when
 * the store is closing or out of memory (STORE_ERR_IO / STORE_ERR_NOMEM, err set).  `done` must
 * not block, nor call store_run_job() (it would wait for its own thread); it may submit further
 * jobs. */
void store_submit_job(struct store *st, struct store_job *job, store_write_done_fn done,
                      void *arg);

/* store_submit_job for a waiting write's job argument (`size` bytes at `arg`, usually a struct on
 * the waiting caller's stack): copies it, shallowly (what it points to stays the caller's until
 * `done` ran), into one allocation with the job, so that the same `run` serves the write's twin
 * that does not wait (store.h, "Writes without waiting").  `done` as for store_submit_job; out of
 * memory: done(done_arg, STORE_ERR_NOMEM, err) at once. */
void store_submit_copy(struct store *st,
                       enum store_status (*run)(const struct store_backend *ops, void *be,
                                                void *arg, char **err),
                       const void *arg, size_t size, store_write_done_fn done, void *done_arg);

/* The backend table and handle of an open store (for the face's files beside store.c). */
const struct store_backend *store_backend_of(struct store *st, void **be);

/* Replaces *err (freed first; err may be NULL) with a formatted message. */
void store_set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* JSON array of strings, e.g. ["a@b.example","c@d.example"]: `"`, `\` and control characters
 * escaped (\" \\ \n \r \t \b \f, else \u00XX); every other byte, UTF-8 included, kept as is.
 * Returns a malloc'd string or NULL when out of memory. */
char *store_json_string_array(const char *const *items, size_t n);

/* Parses a JSON array of strings (what store_json_string_array writes; any JSON array of strings
 * is read: whitespace, every escape, \uXXXX with surrogate pairs).  STORE_OK with *items
 * (malloc'd array of malloc'd strings; NULL when the array is empty) and *n; STORE_ERR_IO when
 * `json` is not such an array or a string holds \u0000 or a lone surrogate (what the database
 * holds is damaged); STORE_ERR_NOMEM.  Nothing to free unless STORE_OK. */
enum store_status store_json_parse_string_array(const char *json, char ***items, size_t *n);

/* A stored message's envelope and bytes, from the columns the backend read (the recipients as
 * their JSON text): fills *m (id, received_at_ms and the columns), copying `raw` (data is never
 * NULL, even for an empty body).  STORE_OK, STORE_ERR_NOMEM or STORE_ERR_IO (recipients not a
 * JSON array of strings), with *err naming message `m->id`; m is the caller's either way. */
struct store_message_cols {
    int64_t received_at_ms;
    const char *sender, *rcpts_json, *remote_ip, *helo, *tls;
    const void *raw;
    size_t len;
};
enum store_status store_message_fill(struct store_message *m, const struct store_message_cols *c,
                                     char **err);

#endif
