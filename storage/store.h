/* storage/store.h — durable state of inlet (SPEC §8).
 *
 * One interface; the backend is chosen by the database URL (SQLite file by default; PostgreSQL
 * comes with its own issue).  The schema is versioned: store_open() applies the ordered
 * migrations an older database lacks and refuses a database whose version is newer than this
 * binary knows.
 *
 * Writes go through one writer thread that batches them (group commit): every message that
 * arrives while the previous COMMIT is syncing goes into the next transaction, so one fsync
 * covers many messages.  A message's completion callback runs only after its batch's COMMIT
 * returned with synchronous=FULL, i.e. after the sync.
 *
 * Uses only util/. */
#ifndef INLET_STORAGE_STORE_H
#define INLET_STORAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/id.h"

struct store;
struct store_spool;
struct store_delivery;

/* The one error convention of storage/: every store_* function that can fail returns this (none
 * returns an int status or writes a status through an out-parameter).  Functions with a
 * `char **err` (may be NULL) set *err (malloc'd) exactly when the result is a failure (IO, FULL,
 * BUSY, NOMEM; NULL only when even that message could not be allocated), and NULL otherwise:
 * STORE_ERR_NOT_FOUND and STORE_ERR_QUOTA are answers, not failures, and carry no message.
 *
 * Allocation: everything that crosses this face is malloc'd by one side and free()d by the other
 * (strings with free(), structs with their store_*_free()); no other allocator is used. */
enum store_status {
    STORE_OK = 0,
    STORE_ERR_IO = -1,        /* storage unavailable or failed: SMTP 451 4.3.0 */
    STORE_ERR_FULL = -2,      /* disk full (SQLITE_FULL, ENOSPC): SMTP 452 4.3.1 */
    STORE_ERR_NOT_FOUND = -3, /* no such row (route id, message id, meta key, ...) */
    STORE_ERR_QUOTA = -4,     /* the routes table already holds --route-quota routes */
    STORE_ERR_BUSY = -5,      /* the database stayed locked past its timeout: like IO, 451 */
    STORE_ERR_NOMEM = -6,     /* out of memory: like IO, 451 */
    STORE_ERR_CONFLICT = -7,  /* the row exists already, or is locked (a mailbox in use) */
};

/* A short reason for logs and replies: "storage error", "disk full", "not found", ... */
const char *store_status_text(enum store_status status);
/* Whether `status` is a failure (IO, FULL, BUSY, NOMEM), as opposed to OK or an answer. */
bool store_status_failed(enum store_status status);

/* A message to commit.  The store takes ownership of the struct and every pointer in it (all
 * malloc'd) and frees them after the commit, on the writer thread. */
struct store_message {
    char id[ID_LEN + 1];
    int64_t received_at_ms;
    char *sender;        /* "" for the null sender */
    char **rcpts;
    size_t nrcpts;
    char *remote_ip;
    char *helo;
    char *tls;
    uint8_t *data;       /* the exact bytes, Received: included; bound without a copy
                            (NULL when `spool` holds them) */
    size_t len;
    /* Set by the store only: `data` points into a read-only mapping of the body's file (map,
     * map_len bytes), not into malloc'd memory; store_free_message unmaps it. */
    void *map;
    size_t map_len;
    /* The bytes were written to a spool while they arrived (store_spool_open): `data` is NULL
     * and `len` the spool's length.  The store takes the spool with the message; after the
     * commit (STORE_OK) the message comes back with `data` mapped from where it was written. */
    struct store_spool *spool;
};

/* The callback of a write queued without waiting (store_write_outcome_async,
 * store_record_attempt): runs on the writer thread once the batch committed (STORE_OK: durable,
 * or the write's own answer, e.g. STORE_ERR_NOT_FOUND) or the write failed (err malloc'd, owned
 * by the callee; NULL unless a failure). */
typedef void (*store_write_done_fn)(void *arg, enum store_status status, char *err);

/* Runs on the writer thread once the message's batch committed (STORE_OK) or failed; the caller
 * moves the result to its own thread.  Must not block.  On STORE_OK `msg` is the committed
 * message handed back (owned by the callee from now on: free with store_free_message), so the
 * pipeline parses the bytes it already has instead of reading them back; otherwise `msg` is
 * NULL (the store freed it). */
typedef void (*store_done_fn)(void *arg, enum store_status status, struct store_message *msg);

/* Opens (creating if needed) the database: `database` NULL/"" → SQLite file inlet.db in
 * `data_dir`; "sqlite:PATH" → that file.  Creates data_dir 0700 and the database 0600, sets WAL
 * and synchronous=FULL, migrates, starts the writer thread.  NULL with *err (malloc'd). */
struct store *store_open(const char *data_dir, const char *database, char **err);
/* Finishes every queued write (their callbacks run), stops the writer, closes. */
void store_close(struct store *st);

/* Queues `msg` for the next batch.  `done` is always called exactly once. */
void store_accept(struct store *st, struct store_message *msg, store_done_fn done, void *arg);

/* A message body written while it arrives (SMTP DATA past its in-memory size), so that memory
 * holds none of it: a file beside the database (SQLite's body log), handed to the store with the
 * message (store_message.spool), never copied again.  Any one thread per spool.
 * store_spool_open: STORE_ERR_NOT_FOUND (no *err) when the backend keeps bodies in its rows
 * (PostgreSQL): the caller then keeps the bytes in memory.  Writes: STORE_ERR_FULL on a full
 * disk, else STORE_ERR_IO (*err says why).  store_spool_discard deletes what was written (a
 * transaction that ends without a commit). */
enum store_status store_spool_begin(struct store *st, struct store_spool **out, char **err);
enum store_status store_spool_append(struct store_spool *sp, const void *p, size_t len, char **err);
void store_spool_discard(struct store_spool *sp);

/* Meta rows: settings every node shares, e.g. "api_key" and "signing_key" (SPEC §1).
 *
 * store_get_meta: STORE_OK with *value (malloc'd), STORE_ERR_NOT_FOUND when there is no such row
 * (*value NULL), or a failure (logged).  Any thread; reads what has been committed.
 *
 * store_set_meta_if_absent: writes (key, value) unless the key exists, through the writer thread
 * (a job in the next batch, under its own savepoint) and waits for the durable commit; STORE_OK
 * with *winner (malloc'd) = the value now stored: `value`, or the one another writer (another
 * node, or an earlier start) put there first; or a failure (logged), e.g. STORE_ERR_FULL.
 * Blocks the calling thread for one group commit; never call it from a store callback. */
enum store_status store_get_meta(struct store *st, const char *key, char **value);
enum store_status store_set_meta_if_absent(struct store *st, const char *key, const char *value,
                                           char **winner);

/* Whether the database named by (data_dir, database) as for store_open() exists already (for
 * SQLite: the file), so that a read-only command does not create one.  True for a URL it cannot
 * tell about (store_open() then says what is wrong). */
bool store_exists(const char *data_dir, const char *database);

/* Messages committed but not yet processed (state 'accepted'): found again at start-up.  A
 * failure is logged. */
enum store_status store_count_unprocessed(struct store *st, int64_t *count);
/* STORE_OK when the database can take a write now; else a failure and *reason (malloc'd). */
enum store_status store_check_writable(struct store *st, char **reason);

/* ---------------------------------------------------------------------------------------------
 * Claims on shared work (SPEC §8).  Several `inlet serve` nodes may share one PostgreSQL
 * database: a delivery, and an accepted message not routed yet, is taken by one node at a time
 * with a claim (this store's node id) that lasts a lease (until the database server's clock
 * passes lease_until) unless renewed.  A node that dies leaves its claims to run out; then the
 * others take the work.  Claims are written only where nodes share the database
 * (store_claims_shared): on SQLite one process owns the data dir (its lock file), the deliverer's
 * and the pipeline's in-memory sets are the claims, and claiming costs no write and no fsync. */

/* This store's node id and lease.  `node_id` NULL or "": the default made at open,
 * "<hostname>:<pid>:<8 random hex>".  Call it before the store is used (no lock). */
void store_set_claims(struct store *st, const char *node_id, int64_t lease_seconds);
/* The node id in this store's claims (valid until store_close). */
const char *store_node_id(const struct store *st);
/* The lease in milliseconds (20 s unless store_set_claims said otherwise). */
int64_t store_lease_ms(const struct store *st);
/* Whether claims are written to the database (PostgreSQL), i.e. other nodes may share it. */
bool store_claims_shared(const struct store *st);

/* Claims due deliveries as store_deliveries_due lists them (same order, cursor and answers):
 * pending, next_attempt_at <= now, and under no live lease of another node (nobody's, the lease
 * ran out, or this node's own: the caller skips those it has in hand); each row returned is
 * claimed by this node until now + lease (the database's clock).  Rows
 * another node is claiming at this instant are skipped (FOR UPDATE SKIP LOCKED), never waited
 * for.  Any thread; one short statement (autocommit), not through the writer.  SQLite: the due
 * read itself (the deliverer's in-memory set is the claim). */
enum store_status store_deliveries_claim(struct store *st, int64_t now, int64_t after_at,
                                         const char *after_id, size_t max,
                                         struct store_delivery **out, size_t *n, char **err);
/* Renews this node's claims on the deliveries `ids` (n of them) for another lease: renewed[i]
 * says whether ids[i] was still pending and claimed by this node (false: the lease was lost,
 * e.g. another node took it after it ran out, or the delivery is no longer pending).  On a
 * failure (the database unreachable) nothing is known: renewed[] is all false.  Any thread (it
 * may block: not the loop); SQLite: every id renewed, nothing written. */
enum store_status store_deliveries_renew(struct store *st, const char *const *ids, size_t n,
                                         bool *renewed, char **err);
/* Claims 'accepted' messages for routing: those under no live lease, or claimed by this node
 * already (a message it left to a scan), oldest first, at most `max` ids (as
 * store_list_unprocessed).  store_accept() claims every message it commits for the node that
 * accepted it, so this finds a dead node's messages once their lease ran out.  Any thread; one
 * short statement.  SQLite: store_list_unprocessed. */
enum store_status store_claim_unprocessed(struct store *st, char ***ids, size_t *n, size_t max,
                                          char **err);

/* Lets go of every claim node `node_id` holds (pending deliveries, accepted messages) and of the
 * maildrop locks of its POP3 sessions (owners "<node_id>/..."): what a previous run of this node
 * held, known to be dead (engine: the data dir's lock file), goes back to everyone at once instead
 * of when its leases run out.  Waits for the commit; *out: how many of each.  SQLite: nothing to
 * do (STORE_OK, all 0: store_maildrop_unlock_stale releases every lock there). */
struct store_released {
    int64_t deliveries, messages, mailboxes;
};
enum store_status store_release_claims(struct store *st, const char *node_id, struct store_released *out,
                                       char **err);

/* Schema version this binary writes. */
int store_schema_version(void);
/* "sqlite 3.40.1" */
const char *store_backend_name(const struct store *st);
const char *store_path(const struct store *st);

/* Every batch: how many messages and bytes, and how long BEGIN..COMMIT took (for logs and
 * metrics).  Counters since open. */
struct store_stats {
    uint64_t batches;
    uint64_t messages;
    uint64_t bytes;
    uint64_t failed_batches;
};
void store_get_stats(struct store *st, struct store_stats *out);

/* Histograms of committed batches (GET /metrics): entries (messages and jobs) per batch and
 * seconds from BEGIN to the end of COMMIT (the fsync included).  Cumulative counts per upper
 * bound, Prometheus style; the last bucket is +Inf. */
#define STORE_BATCH_BUCKETS 8
#define STORE_LATENCY_BUCKETS 10
struct store_histograms {
    double batch_bounds[STORE_BATCH_BUCKETS];     /* 1, 2, 4, ..., +Inf */
    uint64_t batch_counts[STORE_BATCH_BUCKETS];
    double batch_sum;
    double latency_bounds[STORE_LATENCY_BUCKETS]; /* 0.0005 s ... +Inf */
    uint64_t latency_counts[STORE_LATENCY_BUCKETS];
    double latency_sum;
    uint64_t count;
};
void store_get_histograms(struct store *st, struct store_histograms *out);

void store_free_message(struct store_message *msg);

/* ---------------------------------------------------------------------------------------------
 * Routes (SPEC §4, §7).  Writes go through the writer (a job in the next batch); the caller
 * blocks until its batch committed.  `char **err` as for every function here (see enum
 * store_status). */
struct store_route {
    char id[ID_LEN + 1];
    int32_t priority;
    int64_t seq;          /* creation order; assigned by store_route_insert */
    char *description;
    char *expression;
    char **actions;
    size_t nactions;
    int64_t created_at;   /* Unix seconds */
};
void store_routes_free(struct store_route *routes, size_t n);
/* Every route in evaluation order (priority, then seq). */
enum store_status store_routes_load(struct store *st, struct store_route **out, size_t *n, char **err);
/* Inserts `r` (id, fields and created_at set by the caller) and writes its seq back, unless the
 * table already holds `quota` routes (STORE_ERR_QUOTA; checked inside the same transaction). */
enum store_status store_route_insert(struct store *st, struct store_route *r, int64_t quota,
                                     char **err);
/* Replaces priority, description, expression and actions of route r->id (seq and created_at are
 * kept).  STORE_ERR_NOT_FOUND when there is no such route. */
enum store_status store_route_update(struct store *st, const struct store_route *r, char **err);
enum store_status store_route_delete(struct store *st, const char *id, char **err);

/* Route changes made by other nodes (SPEC §8: several nodes on one PostgreSQL).  Starts a
 * watcher that calls `changed(arg, why)` on a thread of its own whenever the routes table may
 * have changed under this process; the callee reloads the whole table (store_routes_load) and
 * publishes it.  `why` (for logs): "notify" (the database's NOTIFY, sent at the writer's COMMIT),
 * "reconnect" (the notification connection is back: what was sent while it was down is lost),
 * "poll" (the routes version moved, seen by the fallback poll every STORE_ROUTES_POLL_MS while that
 * connection is down).  `changed` may block on reads; it must not close the store.  On SQLite
 * (one process owns the database) nothing is watched.  STORE_OK, or a failure with *err (e.g.
 * out of memory; a database that is down is not one: the watcher keeps trying).  At most one
 * watcher per store; store_close() stops it first. */
typedef void (*store_routes_changed_fn)(void *arg, const char *why);
enum store_status store_watch_routes(struct store *st, store_routes_changed_fn changed, void *arg,
                                     char **err);

/* ---------------------------------------------------------------------------------------------
 * The outcome of routing one message (SPEC §4), written in one transaction with the message's
 * state going from 'accepted' to 'routed': a crash before it leaves the message to be routed
 * again at start-up; after it, the plan is durable.  JSON fields are ready-made JSON text. */
struct store_recipient_outcome {
    const char *recipient;
    const char *outcome;        /* "routed" (some route matched) or "dropped" */
    const char *routes_json;    /* [{"id": ..., "captures": {...}, "actions": [...]}, ...] */
    const char *warnings_json;  /* ["...", ...] */
    const char *route_ids_json; /* ["<route id>", ...] of routes_json, for the "accepted" event;
                                   NULL: the store reads them out of routes_json itself */
};
struct store_delivery_plan {
    char id[ID_LEN + 1];        /* X-Inlet-Delivery: stays the same across retries */
    const char *recipient;
    const char *kind;           /* "url", "notify" (a store's notify POST) or "address" */
    const char *target;
    const char *format;         /* "json", "mailgun", "mime" or "" for the default */
    const char *route_ids_json; /* ["<route id>", ...] */
    const char *copy_key;       /* NULL, or the stored copy this delivery refers to: the copy a
                                   notify POST announces (kind "notify"), or the copy whose
                                   attachment URLs a JSON POST gives for attachments past
                                   --inline-attachments-max (kind "url") */
};
struct store_copy_plan {
    char key[48];               /* storage key: URL-safe, >= 128 random bits */
    const char *recipient;
    const char *domain;         /* recipient's domain, lower case */
    const char *route_id;       /* "" for a postmaster copy no route asked for */
    const char *notify;         /* notify URL or NULL */
    const char *format;         /* notify format, "" for the default */
    int64_t expires_at;         /* Unix seconds */
    const char *mailbox;        /* NULL, or the mailbox this copy is filed into (SPEC §9) */
    bool mailbox_retention;     /* with a mailbox: expires at `now` + the mailbox's retention
                                   when it has one (the route gave no ttl=), else expires_at */
};
struct store_outcome {
    const char *message_id;
    const char *parse_warnings_json;
    const struct store_recipient_outcome *recipients;
    size_t nrecipients;
    const struct store_delivery_plan *deliveries;
    size_t ndeliveries;
    const struct store_copy_plan *copies;
    size_t ncopies;
    int64_t now;                /* Unix seconds: created_at, and next_attempt_at of deliveries */
    int64_t now_ms;             /* Unix milliseconds of the events' timestamps (0: now * 1000) */
    const char *message_json;   /* the message as its events show it (Mailgun's event "message":
                                   {"headers": {...}, "size", "attachments", "recipients"}),
                                   ready-made JSON kept in every event's detail under "message"
                                   (the delivered / failed ones copy it from the "accepted"
                                   event); NULL: none */
    const char *authentication_json; /* the message's sender-authentication verdicts (message/
                                   authres.c's "authentication" object), ready-made JSON kept
                                   once per message (not per event) and shown by every event of
                                   it; NULL: none (no --sender-auth) */
};
/* Idempotent: only an 'accepted' message gets an outcome, once.  STORE_ERR_NOT_FOUND (nothing
 * written) when there is no message o->message_id, or when it is no longer 'accepted' (routed
 * already, e.g. by a scan that met it while its first routing was committing): either way the
 * caller must not act on this outcome's plan.  Atomic with
 * nothing else: a row that cannot be written (e.g. a delivery id already used) fails this outcome
 * alone (STORE_ERR_IO, nothing of it written, the message stays 'accepted') while the rest of its
 * batch commits.  NULL JSON fields are written as "[]", a NULL format as "", a NULL notify as SQL
 * NULL. */
enum store_status store_write_outcome(struct store *st, const struct store_outcome *o, char **err);
/* The same, queued without waiting: `done(arg, status, err)` runs on the writer thread once the
 * batch committed (status: STORE_OK, or STORE_ERR_NOT_FOUND as above) or failed.  `o` and
 * everything it points to must stay valid until `done` runs. */
void store_write_outcome_async(struct store *st, const struct store_outcome *o, store_write_done_fn done,
                               void *arg);
/* store_accept and store_write_outcome_async of the same message in one transaction: a single
 * commit makes the message and its outcome durable together (the routing done before the
 * commit, engine/pipeline.c).  The caller keeps `msg` (the outcome points into it): on the writer
 * thread `accepted(arg, status, NULL)` runs first, as store_accept's callback, then `routed`, as
 * store_write_outcome_async's (STORE_ERR_NOT_FOUND when the message alone could not be stored).
 * `msg`, `o` and what they point to must stay valid until `routed` ran.  Each callback runs
 * exactly once. */
void store_accept_routed(struct store *st, struct store_message *msg, store_done_fn accepted, void *arg,
                         const struct store_outcome *o, store_write_done_fn routed, void *routed_arg);
/* Ids of messages still 'accepted', oldest first, at most `max` (malloc'd array of malloc'd
 * strings; free each and the array). */
enum store_status store_list_unprocessed(struct store *st, char ***ids, size_t *n, size_t max,
                                         char **err);
/* Loads one message with its envelope and bytes (copied out: the read transaction ends before
 * this returns; data is never NULL, even for an empty body).  STORE_ERR_NOT_FOUND when absent. */
enum store_status store_load_message(struct store *st, const char *id, struct store_message **out,
                                     char **err);

/* ---------------------------------------------------------------------------------------------
 * Writes without waiting: the twins of the waiting writes a caller must not block a thread for
 * (the HTTP API: a pool thread must not sit through a group commit).  Each queues the same job as
 * its twin and returns at once; `done(arg, status, err)` (store_write_done_fn) runs exactly once,
 * on the writer thread once the batch committed or failed, or at once on the calling thread when
 * the store is closing or memory ran out.  The statuses are the twin's.  Every argument passed by
 * pointer (and what it points to) must stay valid until `done` ran; store_route_insert_async
 * writes r->seq before `done` runs with STORE_OK. */
void store_route_insert_async(struct store *st, struct store_route *r, int64_t quota,
                              store_write_done_fn done, void *arg);
void store_route_update_async(struct store *st, const struct store_route *r,
                              store_write_done_fn done, void *arg);
void store_route_delete_async(struct store *st, const char *id, store_write_done_fn done, void *arg);
void store_delivery_retry_async(struct store *st, const char *id, int64_t now,
                                store_write_done_fn done, void *arg);
void store_deliveries_add_async(struct store *st, const char *message_id,
                                const struct store_delivery_plan *plans, size_t n, int64_t now,
                                store_write_done_fn done, void *arg);
void store_copy_delete_async(struct store *st, const char *key, int64_t now,
                             store_write_done_fn done, void *arg);
void store_mailbox_create_async(struct store *st, const char *name, const char *password_hash,
                                int64_t retention, int64_t now, store_write_done_fn done, void *arg);
void store_mailbox_update_async(struct store *st, const char *name, const char *password_hash,
                                int64_t retention, int64_t now, store_write_done_fn done, void *arg);
void store_mailbox_delete_async(struct store *st, const char *name, store_write_done_fn done,
                                void *arg);

/* ---------------------------------------------------------------------------------------------
 * Deliveries (SPEC §5): the durable retry queue.  Rows are planned by store_write_outcome()
 * (state 'pending', next_attempt_at = the outcome's `now`); every attempt is recorded with
 * store_record_attempt().  States: pending → delivered | failed; failed → pending again only by
 * store_delivery_retry() (the dead-letter replay, SPEC §7). */
struct store_delivery {
    char id[ID_LEN + 1];
    char message_id[ID_LEN + 1];
    char *recipient;
    char *kind;             /* "url", "notify" or "address" */
    char *target;
    char *format;           /* "json", "mailgun", "mime" or "" (the default) */
    char *route_ids_json;
    char *state;            /* "pending", "delivered", "failed" */
    int64_t attempts;
    int64_t next_attempt_at; /* Unix seconds */
    int64_t created_at;      /* Unix seconds */
    int64_t updated_at;      /* Unix seconds: the end of the last attempt, or created_at */
    int last_status;         /* HTTP status or SMTP reply code of the last attempt; 0 for none */
    char *last_error;        /* "" when none */
    char *copy_key;          /* "" when none (see store_delivery_plan) */
};
void store_deliveries_free(struct store_delivery *d, size_t n);

/* Pending deliveries with next_attempt_at <= now, ordered by (next_attempt_at, id), starting
 * strictly after the cursor (after_at, after_id) (after_id "" = from the start), at most `max`.
 * A read (any thread; short).  STORE_OK with *out (malloc'd array; NULL when none) and *n. */
enum store_status store_deliveries_due(struct store *st, int64_t now, int64_t after_at,
                                       const char *after_id, size_t max,
                                       struct store_delivery **out, size_t *n, char **err);
/* The smallest next_attempt_at of a pending delivery that is later than `after` (deliveries due
 * already are the due scan's): STORE_OK with *at, STORE_ERR_NOT_FOUND when there is none, or a
 * failure (logged). */
enum store_status store_deliveries_next_due(struct store *st, int64_t after, int64_t *at);
/* One delivery by id: STORE_OK with *out (free with store_deliveries_free(out, 1)),
 * STORE_ERR_NOT_FOUND, or STORE_ERR_IO with *err. */
enum store_status store_delivery_get(struct store *st, const char *id, struct store_delivery **out,
                                     char **err);

/* Deliveries for the dead-letter view (SPEC §7): state `state` ("failed", "pending",
 * "delivered"; NULL = any), newest update first, starting strictly after the cursor
 * (before_updated_at, before_id) (before_id "" = from the newest), at most `max`. */
enum store_status store_deliveries_list(struct store *st, const char *state,
                                        int64_t before_updated_at, const char *before_id,
                                        size_t max, struct store_delivery **out, size_t *n,
                                        char **err);

/* One finished attempt of a delivery, and what follows from it.  Written in one transaction:
 * the attempts row, the delivery's new state (attempts + 1, last_status, last_error,
 * updated_at = the attempt's end, next_attempt_at for a retry) and the event (SPEC §7):
 * "delivered", or "failed" with severity "temporary" (a retry follows) or "permanent". */
struct store_attempt {
    const char *delivery_id;
    int64_t started_at_ms;   /* Unix milliseconds */
    int64_t duration_ms;
    int status;              /* HTTP status or SMTP reply code; 0 when there was none */
    const char *error;       /* why it failed ("" when delivered): e.g. "HTTP 500", "timed out" */
    const char *outcome;     /* "delivered", "retry" or "failed" */
    int64_t next_attempt_at; /* Unix seconds, for "retry" */
};
/* Queued, not waited for (store_write_done_fn above; the struct and its strings are copied).
 * STORE_ERR_NOT_FOUND when the delivery does not exist or is not 'pending', or (claims shared)
 * when this node no longer holds its claim (its lease ran out and another node took it; logged
 * as "lease lost"): nothing written.  A recorded attempt ends the claim (a retry is anyone's). */
void store_record_attempt(struct store *st, const struct store_attempt *a, store_write_done_fn done,
                          void *arg);

/* The dead-letter replay: a 'failed' delivery becomes 'pending', due at `now` (attempts kept, so
 * the deliverer, which retries while attempts <= the schedule's length, makes one attempt and
 * fails it again if that attempt fails).  Waits for the commit.  STORE_ERR_NOT_FOUND
 * when there is no such failed delivery, or its message bytes are gone (past
 * --failed-retention). */
enum store_status store_delivery_retry(struct store *st, const char *id, int64_t now, char **err);

/* New deliveries that are not the routing outcome of a message: a stored message resent to
 * addresses (SPEC §6 POST <storage url>).  Rows as store_write_outcome() writes them
 * (next_attempt_at = now; kind, target, format and route_ids from each plan).  No event is
 * written for them here.  Waits for the commit.  STORE_ERR_NOT_FOUND when there is no such
 * message. */
enum store_status store_deliveries_add(struct store *st, const char *message_id,
                                       const struct store_delivery_plan *plans, size_t n,
                                       int64_t now, char **err);

/* ---------------------------------------------------------------------------------------------
 * Stored copies (SPEC §6). */
struct store_copy {
    char key[48];
    char message_id[ID_LEN + 1];
    char *recipient;
    char *domain;
    char *route_id;
    char *notify;            /* NULL when none */
    char *format;
    int64_t expires_at;      /* Unix seconds */
    int64_t created_at;
};
void store_copy_free(struct store_copy *c);
/* The copy `key` unless it expired (expires_at <= now) or was deleted: STORE_OK with *copy and,
 * when msg is not NULL, *msg (its message, bytes copied out as store_load_message does);
 * STORE_ERR_NOT_FOUND; STORE_ERR_IO with *err. */
enum store_status store_copy_get(struct store *st, const char *key, int64_t now,
                                 struct store_copy **copy, struct store_message **msg, char **err);
/* Deletes copy `key` (waits for the commit): STORE_OK, or STORE_ERR_NOT_FOUND when there was no
 * such unexpired copy. */
enum store_status store_copy_delete(struct store *st, const char *key, int64_t now, char **err);

/* ---------------------------------------------------------------------------------------------
 * Events (SPEC §7): one row per thing that happened to a (message, recipient).  Written by the
 * store itself: "accepted" per envelope recipient (detail {"outcome": "routed" | "dropped",
 * "route_ids": [...]}) and "stored" per copy (detail {"key", "route_id", "expires_at"}), by
 * store_write_outcome(); "delivered" / "failed" by store_record_attempt().  Ids increase in the
 * order the rows were written. */
struct store_event {
    int64_t id;
    int64_t ts_ms;           /* Unix milliseconds */
    char *event;             /* "accepted", "stored", "delivered", "failed" */
    char *severity;          /* "temporary" / "permanent" for "failed", else "" */
    char message_id[ID_LEN + 1];
    char *recipient;
    char *domain;            /* recipient's domain, lower case */
    char *delivery_id;       /* "" when none */
    char *detail_json;       /* JSON object: route ids, target, status, error, attempt, key... */
    char *authentication_json; /* the message's verdicts (store_outcome.authentication_json),
                                  "" when it has none */
};
void store_events_free(struct store_event *e, size_t n);
struct store_event_query {
    const char *domain;      /* required */
    const char *event;       /* NULL = any */
    const char *message_id;  /* NULL = any */
    const char *recipient;   /* NULL = any; compared case-insensitively */
    int64_t begin_ms, end_ms; /* inclusive bounds on ts_ms; 0 = unbounded */
    bool ascending;          /* order by (ts_ms, id) ascending, else descending */
    int64_t after_ts_ms;     /* cursor: rows strictly after (ascending) or before (descending) */
    int64_t after_id;        /*   (after_ts_ms, after_id); after_id 0 = no cursor */
    size_t limit;
};
enum store_status store_events_query(struct store *st, const struct store_event_query *q,
                                     struct store_event **out, size_t *n, char **err);

/* ---------------------------------------------------------------------------------------------
 * Retention (SPEC §6).  One pass of the sweeper, as a job (waits for its commit; call it from a
 * thread that may block): deletes at most `batch` rows of each kind: expired stored copies;
 * events and delivered/pending-less history older than event_ttl; failed deliveries (and their
 * attempts) older than failed_retention; messages whose bytes nothing needs any more (not
 * 'accepted', no pending delivery, no unexpired copy, no failed delivery kept); then gives free
 * pages back (incremental vacuum).  *more = true when some kind hit `batch` (run again soon). */
struct store_sweep_result {
    uint64_t copies, events, deliveries, messages, pages_freed;
    uint64_t body_segments, body_bytes; /* body log segments deleted (SQLite), and their bytes */
    bool more;
    bool skipped; /* another node is sweeping (PostgreSQL advisory lock): nothing done */
};
enum store_status store_sweep(struct store *st, int64_t now, int64_t event_ttl, int64_t failed_retention,
                              size_t batch, struct store_sweep_result *out, char **err);

/* Gauges for GET /metrics (a read; any thread). */
struct store_gauges {
    int64_t deliveries_pending, deliveries_due, deliveries_failed;
    int64_t oldest_due_at;          /* Unix seconds of the oldest due pending delivery, 0 if none */
    int64_t stored_copies, stored_bytes, stored_oldest_at; /* unexpired copies; bytes of their messages */
    int64_t messages, database_bytes; /* messages rows; size of the database plus WAL */
};
enum store_status store_gauges(struct store *st, int64_t now, struct store_gauges *out,
                               char **err);

/* ---------------------------------------------------------------------------------------------
 * Web console sessions (SPEC §7.1; storage/console.c): shared by every node on one database and
 * kept across restarts.  `digest`: the hex SHA-256 of the session cookie's token (the database
 * never holds a usable cookie).  Times in Unix seconds. */
/* The session of `digest`: STORE_OK with *csrf (malloc'd) and *expires_at (it may have ended:
 * the caller compares), or STORE_ERR_NOT_FOUND.  A read. */
enum store_status store_console_session_get(struct store *st, const char *digest, char **csrf,
                                            int64_t *expires_at, char **err);
/* A new session, queued without waiting: the sessions that ended by `now` go first, then, past
 * `max`, those nearest their end.  The strings stay valid until `done` ran. */
void store_console_session_create_async(struct store *st, const char *digest, const char *csrf,
                                        int64_t expires_at, int64_t now, size_t max,
                                        store_write_done_fn done, void *arg);
/* Ends a session (none: nothing changes, STORE_OK), queued without waiting. */
void store_console_session_delete_async(struct store *st, const char *digest, store_write_done_fn done,
                                        void *arg);

/* ---------------------------------------------------------------------------------------------
 * Mailboxes for POP3 pollers (SPEC §9).  A mailbox message is a stored copy filed into a mailbox
 * by a store(mailbox=...) action: its key is the POP3 UID.  Names are lower case (the caller
 * checks them).  Writes wait for their commit. */
struct store_mailbox {
    char *name;
    char *password_hash;     /* crypt(3) string */
    int64_t retention;       /* seconds; 0: the --mailbox-ttl setting */
    int64_t created_at, updated_at; /* Unix seconds */
    int64_t messages, bytes; /* messages filed in it now, and their size */
};
void store_mailboxes_free(struct store_mailbox *m, size_t n);
/* STORE_OK, or STORE_ERR_CONFLICT when a mailbox of that name exists. */
enum store_status store_mailbox_create(struct store *st, const char *name, const char *password_hash,
                                       int64_t retention, int64_t now, char **err);
/* Sets the password hash (NULL: kept) and the retention (< 0: kept).  STORE_ERR_NOT_FOUND. */
enum store_status store_mailbox_update(struct store *st, const char *name, const char *password_hash,
                                       int64_t retention, int64_t now, char **err);
/* Deletes the mailbox and every message filed in it.  STORE_ERR_NOT_FOUND. */
enum store_status store_mailbox_delete(struct store *st, const char *name, char **err);
/* One mailbox with its counts (a read): STORE_OK with *out (store_mailboxes_free(out, 1)), or
 * STORE_ERR_NOT_FOUND. */
enum store_status store_mailbox_get(struct store *st, const char *name, struct store_mailbox **out,
                                    char **err);
/* Mailboxes by name, strictly after `after` ("" from the first), at most `max`, with counts. */
enum store_status store_mailboxes_list(struct store *st, const char *after, size_t max,
                                       struct store_mailbox **out, size_t *n, char **err);

/* One message of an open maildrop. */
struct store_maildrop_entry {
    char key[48];                  /* the UID */
    char message_id[ID_LEN + 1];
    int64_t size;                  /* bytes as stored */
};
/* Opens a POP3 session's maildrop (a job): takes the mailbox's lock unless another session holds
 * it (its lease not over: STORE_ERR_CONFLICT) for session `owner` (a token unique to the session)
 * for `lease_seconds` (by the database's clock, as the claims; renewed by
 * store_maildrop_renew_async: a process that dies holding it frees it by then), deletes the
 * messages past their expiry at `now` (only here and in the sweeper of unlocked mailboxes: never
 * under a session), and lists the rest in filing order, at most `max` (*out malloc'd, NULL when
 * empty).  STORE_ERR_NOT_FOUND: no such mailbox. */
enum store_status store_maildrop_open(struct store *st, const char *name, const char *owner, int64_t now,
                                      int64_t lease_seconds, size_t max, struct store_maildrop_entry **out,
                                      size_t *n, char **err);
/* Extends the locks of n sessions (names[i], owners[i]) by `lease_seconds` from now (the
 * database's clock), queued without waiting
 * (one transaction; `done` as for store_write_outcome_async): renewed[i] false when session
 * owners[i] no longer holds mailbox names[i] (its lease ran out and another session took the
 * lock).  Every pointer stays valid until `done` ran.  Not on a thread pool: a renewal never
 * waits behind password checks. */
void store_maildrop_renew_async(struct store *st, const char *const *names, const char *const *owners, size_t n,
                                int64_t lease_seconds, bool *renewed, store_write_done_fn done, void *arg);
/* Ends session `owner` (a job, one transaction): an event "retrieved" per key in `retrieved`,
 * then, per key in `deleted`, an event "deleted" and the message removed from the mailbox; then
 * the lock released.  A dropped connection passes no deleted keys.  STORE_ERR_CONFLICT, nothing
 * written, when the session no longer holds the lock (its lease ran out and another took it). */
enum store_status store_maildrop_close(struct store *st, const char *name, const char *owner, int64_t now_ms,
                                       const char *const *retrieved, size_t nretrieved,
                                       const char *const *deleted, size_t ndeleted, char **err);
/* At start: releases the mailbox locks that a dead process left, where that is safe.  With
 * in-process claims (SQLite: the data-dir lock makes this process the database's only node) every
 * lock; on a shared database (PostgreSQL) none, since other nodes' live sessions hold theirs: a
 * dead node's locks end with their lease (--lease-seconds: its sessions no longer renew them), or
 * when it starts again on its data dir (store_release_claims). */
enum store_status store_maildrop_unlock_stale(struct store *st, char **err);

/* ---------------------------------------------------------------------------------------------
 * `inlet migrate` (SPEC §8): a single node's database copied into another (a PostgreSQL one). */

/* Whether `st` holds anything of its own (a route, message, delivery, stored copy or event, or a
 * meta row other than schema_version): STORE_OK with *has. */
enum store_status store_holds_data(struct store *st, bool *has, char **err);
/* Called after every page committed into the target (the table and its rows copied so far) and
 * once more when the table is done (`done`). */
typedef void (*store_copy_progress_fn)(void *arg, const char *table, int64_t rows, bool done);
/* Copies every row of every table of `from` into `to` (both open, so both at this binary's
 * schema version), table by table in pages of at most STORE_COPY_PAGE_ROWS rows or about
 * STORE_COPY_PAGE_BYTES, each page one transaction of `to`.  A row whose key `to` has already is
 * kept as it is: run again after an interruption, the copy completes what it began.  Ids,
 * states, times and bytes are copied unchanged (a route keeps its id and its place in the
 * order).  `from` must not be written meanwhile (stop its inlet serve).  `progress` may be NULL. */
enum store_status store_copy_into(struct store *from, struct store *to, store_copy_progress_fn progress,
                                  void *arg, char **err);
#define STORE_COPY_PAGE_ROWS 500
#define STORE_COPY_PAGE_BYTES (4 * 1024 * 1024)

/* `inlet backup FILE` (SPEC §7 operations): a consistent copy of the whole database into `path`
 * (SQLite: VACUUM INTO, from a read connection, while the writer goes on).  The file must not
 * exist. */
enum store_status store_backup(struct store *st, const char *path, char **err);

#endif
