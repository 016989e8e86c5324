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

enum store_status {
    STORE_OK = 0,
    STORE_ERR_IO = -1,    /* storage unavailable or failed: SMTP 451 4.3.0 */
    STORE_ERR_FULL = -2,  /* disk full (SQLITE_FULL, ENOSPC): SMTP 452 4.3.1 */
};

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
    uint8_t *data;       /* the exact bytes, Received: included; bound without a copy */
    size_t len;
};

/* Runs on the writer thread once the message's batch committed (STORE_OK) or failed; the caller
 * moves the result to its own thread.  Must not block. */
typedef void (*store_done_fn)(void *arg, enum store_status status);

/* Opens (creating if needed) the database: `database` NULL/"" → SQLite file inlet.db in
 * `data_dir`; "sqlite:PATH" → that file.  Creates data_dir 0700 and the database 0600, sets WAL
 * and synchronous=FULL, migrates, starts the writer thread.  NULL with *err (malloc'd). */
struct store *store_open(const char *data_dir, const char *database, char **err);
/* Finishes every queued write (their callbacks run), stops the writer, closes. */
void store_close(struct store *st);

/* Queues `msg` for the next batch.  `done` is always called exactly once. */
void store_accept(struct store *st, struct store_message *msg, store_done_fn done, void *arg);

/* Meta rows: settings every node shares, e.g. "api_key" and "signing_key" (SPEC §1).
 *
 * store_get_meta: 0 with *value (malloc'd), -ENOENT when there is no such row (*value NULL), -EIO
 * on a storage error (logged).  Any thread; reads what has been committed.
 *
 * store_set_meta_if_absent: writes (key, value) unless the key exists, through the writer thread
 * (a job in the next batch, under its own savepoint) and waits for the durable commit; 0 with
 * *winner (malloc'd) = the value now stored: `value`, or the one another writer (another node, or
 * an earlier start) put there first.  -EIO or -ENOSPC (logged) when it could not be written.
 * Blocks the calling thread for one group commit; never call it from a store callback. */
int store_get_meta(struct store *st, const char *key, char **value);
int store_set_meta_if_absent(struct store *st, const char *key, const char *value, char **winner);

/* Whether the database named by (data_dir, database) as for store_open() exists already (for
 * SQLite: the file), so that a read-only command does not create one.  True for a URL it cannot
 * tell about (store_open() then says what is wrong). */
bool store_exists(const char *data_dir, const char *database);

/* Messages committed but not yet processed (state 'accepted'): found again at start-up. */
int store_count_unprocessed(struct store *st, int64_t *count);
/* 0 when the database can take a write now; else -1 and *reason (malloc'd). */
int store_check_writable(struct store *st, char **reason);

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

void store_free_message(struct store_message *msg);

#endif
