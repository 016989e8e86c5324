/* storage/internal_sqlite.h — what sqlite.c and sqlite_queue.c share (internal to the SQLite backend).
 *
 * sqlite.c: connections, settings, migrations, group commit, checkpoints, messages, routes and
 * routing outcomes.  sqlite_queue.c: deliveries, attempts, stored copies, events, retention,
 * gauges and backups (SPEC §5–§7), with their prepared statements (tables wq[] and rq[] below).
 *
 * Threads as in internal.h: wdb and wq[] belong to the writer thread; rdb and rq[] are used under
 * rmu only; every read statement is reset before rmu is released. */
#ifndef INLET_STORAGE_SQLITE_INT_H
#define INLET_STORAGE_SQLITE_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>

#include "storage/internal.h"
#include "storage/internal_bodies.h"

/* Write statements of sqlite_queue.c (writer thread only). */
enum sqlite_wq {
    WQ_EV_ACCEPTED,      /* event "accepted" of one recipient (store_write_outcome) */
    WQ_EV_ACCEPTED_IDS,  /* the same, with the route ids given as JSON by the caller */
    WQ_EV_STORED,        /* event "stored" of one copy (store_write_outcome) */
    WQ_EV_ATTEMPT,       /* event "delivered" / "failed" of one attempt */
    WQ_ATTEMPT_DELIVERY, /* the delivery an attempt is about */
    WQ_INS_ATTEMPT,
    WQ_UPD_ATTEMPT,
    WQ_RETRY,
    WQ_COPY_DELETE,
    WQ_SWEEP_COPIES,
    WQ_SWEEP_EVENTS,
    WQ_SWEEP_ATTEMPTS,
    WQ_SWEEP_DELIVERIES,
    WQ_CANDIDATES,
    WQ_PURGE_MESSAGE,
    WQ_PURGE_RECIPIENTS,
    WQ_DROP_CANDIDATE,
    WQ_BODY_IN_USE,
    WQ_FREELIST,
    WQ_VACUUM,
    WQ_INS_AUTH,         /* a message's verdicts (store_outcome.authentication_json) */
    WQ_SWEEP_AUTH,
    WQ_NOTE_CANDIDATE,   /* a routed message nothing keeps, for the sweeper (migration 11) */
    WQ_COUNT
};

/* Read statements of sqlite_queue.c (under rmu). */
enum sqlite_rq {
    RQ_DUE,
    RQ_NEXT_DUE,
    RQ_DELIVERY,
    RQ_LIST_STATE,
    RQ_LIST_ANY,
    RQ_COPY,
    RQ_COPY_MESSAGE,
    RQ_EVENTS_ASC,
    RQ_EVENTS_DESC,
    RQ_GAUGES,
    RQ_COUNT
};

struct sqlite_be {
    char *path;
    char *dir; /* directory of the database file (WAL and shm files live there) */
    char name[64];
    struct store_bodies *bodies; /* the body log, <path>-bodies (internal_bodies.h) */

    sqlite3 *wdb;
    sqlite3_stmt *insert;
    sqlite3_stmt *sp_begin, *sp_release, *sp_rollback; /* a job's savepoint, prepared once */
    /* the outcome of one message (writer thread only) */
    sqlite3_stmt *route_msg, *msg_exists, *ins_rcpt, *ins_delivery, *ins_stored;
    sqlite3_stmt *wq[WQ_COUNT];
    int wal_frames; /* frames in the WAL after the last commit (writer thread only) */
    int idle_frames, force_frames; /* the checkpoint thresholds in frames of this page size */

    pthread_mutex_t rmu;
    sqlite3 *rdb;
    sqlite3_stmt *count, *routes, *unprocessed, *load;
    sqlite3_stmt *rq[RQ_COUNT];

    pthread_mutex_t pmu;
    sqlite3 *pdb;

    /* The checkpointer: cmu guards the flags and the counters below it. */
    sqlite3 *cdb;
    pthread_t ckpt;
    bool ckpt_started;
    pthread_mutex_t cmu;
    pthread_cond_t ckpt_cv;   /* the checkpointer waits here for work */
    pthread_cond_t ckpt_idle; /* the writer waits here for a run to end (valve) */
    bool ckpt_wanted;         /* a commit left IDLE_FRAMES frames more than the last run saw */
    int ckpt_last_log;        /* frames in the WAL at the end of the last run (or valve: 0) */
    bool ckpt_running;
    bool ckpt_hold;           /* the writer's valve is due or running: start no run */
    bool ckpt_stop;
    uint64_t commit_seq;      /* commits so far (the idle check compares it across a wait) */
    bool wal_dirty;           /* the WAL holds frames since the last TRUNCATE checkpoint */
    struct store_checkpoint_stats cstats;
};

/* ---- helpers (sqlite.c) ---- */
/* The store status of SQLite result `rc` on `db`: STORE_ERR_FULL (SQLITE_FULL, or an I/O error
 * from ENOSPC / EDQUOT), STORE_ERR_BUSY, STORE_ERR_NOMEM, else STORE_ERR_IO. */
enum store_status store_sqlite_status(sqlite3 *db, int rc);
/* SQLite's message for `rc` on `db` ("out of memory" for SQLITE_NOMEM). */
const char *store_sqlite_error(sqlite3 *db, int rc);
/* Runs every statement in `sql`; the first column of the first row, if any, goes to out. */
enum store_status store_sqlite_exec(sqlite3 *db, const char *sql, char *out, size_t outsz, char **err);
const char *store_sqlite_nz(const char *s, const char *dflt);
/* Binds ?first.. in order from text values (NULL binds SQL NULL); SQLITE_OK or the error. */
int store_sqlite_bind_texts(sqlite3_stmt *stmt, int first, const char *const *v, int n);
/* Steps a write statement once, resets it and clears its bindings: SQLITE_DONE or the error. */
int store_sqlite_step_reset(sqlite3_stmt *stmt);
/* Copies column `col` as text (NULL → ""); NULL when out of memory. */
char *store_sqlite_col_strdup(sqlite3_stmt *stmt, int col);
/* The message columns of the row `s` stands on, from column `first` on (SQLITE_MESSAGE_COLS:
 * received_at, sender, recipients, remote_ip, helo, tls, raw, body_segment, body_offset, size,
 * body_crc), into *m (store_message_fill) and *ref: ref->segment 0 when the bytes were in the
 * row (then in m->data), else where they are in the body log, for store_sqlite_load_body() once
 * the read transaction has ended. */
#define SQLITE_MESSAGE_COLS(m)                                                                     \
    m "received_at, " m "sender, " m "recipients, " m "remote_ip, " m "helo, " m "tls, " m "raw, " \
    m "body_segment, " m "body_offset, " m "size, " m "body_crc"
enum store_status store_sqlite_read_message(sqlite3_stmt *s, int first, struct store_message *m,
                                            struct store_body_ref *ref, char **err);
/* The body at `ref` (when ref->segment is set) read into m->data, its CRC checked. */
enum store_status store_sqlite_load_body(struct sqlite_be *be, struct store_message *m,
                                         const struct store_body_ref *ref, char **err);
/* SQLITE_ROW when message `id` exists, SQLITE_DONE when not, or the error code (writer). */
int store_sqlite_message_exists(struct sqlite_be *be, const char *id);

/* ---- sqlite_queue.c ---- */
/* Prepares wq[] on be->wdb and rq[] on be->rdb (after the migrations). */
enum store_status store_sqlite_queue_prepare_writer(struct sqlite_be *be, char **err);
enum store_status store_sqlite_queue_prepare_reader(struct sqlite_be *be, char **err);
void store_sqlite_queue_finalize(struct sqlite_be *be);
/* The events of one routing outcome (inside write_outcome's savepoint): SQLITE_DONE, or the
 * error code with *what / *which naming the row. */
int store_sqlite_outcome_events(struct sqlite_be *be, const struct store_outcome *o, const char **what,
                          const char **which);

/* Backend operations (internal.h says what each returns). */
enum store_status store_sqlite_record_attempt(void *be, const struct store_attempt *a, char **err);
enum store_status store_sqlite_delivery_retry(void *be, const char *id, int64_t now, char **err);
enum store_status store_sqlite_deliveries_add(void *be, const char *message_id,
                                        const struct store_delivery_plan *plans, size_t n,
                                        int64_t now, char **err);
enum store_status store_sqlite_copy_delete(void *be, const char *key, int64_t now, char **err);
enum store_status store_sqlite_sweep(void *be, const struct store_sweep_args *args,
                               struct store_sweep_result *out, char **err);
enum store_status store_sqlite_deliveries_due(void *be, int64_t now, int64_t after_at,
                                        const char *after_id, size_t max,
                                        struct store_delivery **out, size_t *n, char **err);
enum store_status store_sqlite_deliveries_next_due(void *be, int64_t after, int64_t *at, char **err);
enum store_status store_sqlite_delivery_get(void *be, const char *id, struct store_delivery **out,
                                      char **err);
enum store_status store_sqlite_deliveries_list(void *be, const char *state, int64_t before_updated_at,
                                         const char *before_id, size_t max,
                                         struct store_delivery **out, size_t *n, char **err);
enum store_status store_sqlite_copy_get(void *be, const char *key, int64_t now,
                                  struct store_copy **copy, struct store_message **msg,
                                  char **err);
enum store_status store_sqlite_events_query(void *be, const struct store_event_query *q,
                                      struct store_event **out, size_t *n, char **err);
enum store_status store_sqlite_gauges(void *be, int64_t now, struct store_gauges *out, char **err);
enum store_status store_sqlite_backup(void *be, const char *path, char **err);
enum store_status store_sqlite_spool_open(void *be, struct store_spool **out, char **err);

/* sqlite_walbuf.c: the VFS of the write connection, which gathers a commit's WAL writes into one
 * write (only for a connection that runs synchronous=FULL: see the file).  Registered once, not as
 * the default; SQLITE_OK when it can be used. */
#define STORE_SQLITE_WALBUF_VFS "inlet-walbuf"
int store_sqlite_walbuf_register(void);

/* sqlite_rows.c: whole tables in and out (inlet migrate; struct store_backend's rows_read,
 * rows_insert, holds_data). */
enum store_status store_sqlite_rows_read(void *be, const char *table, int64_t after, size_t max_rows,
                                   size_t max_bytes, struct store_rows **out, char **err);
enum store_status store_sqlite_rows_insert(void *be, const char *table, const struct store_rows *rows,
                                     char **err);
enum store_status store_sqlite_holds_data(void *be, bool *has, char **err);
/* Portable statements (struct store_backend's sql_read, sql_write). */
enum store_status store_sqlite_sql_read(void *be, const char *sql, const struct store_param *params,
                                        size_t nparams, struct store_rows **out, char **err);
enum store_status store_sqlite_sql_write(void *be, const char *sql, const struct store_param *params,
                                         size_t nparams, int64_t *changed, struct store_rows **out,
                                         char **err);

#endif
