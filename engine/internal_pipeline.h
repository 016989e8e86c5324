/* engine/internal_pipeline.h — from a committed message to its routing outcome (SPEC §4; DESIGN "Accept
 * fast, route after").  Internal to engine/.
 *
 *   committed message ─▶ parse (GMime) ─▶ evaluate each envelope recipient against the current
 *   route table ─▶ store_write_outcome(): one transaction, state accepted → routed
 *
 * Threads.  PIPELINE_WORKERS worker threads take messages from one bounded queue; each owns its
 * route_matcher, parses, evaluates and writes on its own (a GMime object never leaves the thread
 * that parsed it).  The libuv loop thread only enqueues (engine_pipeline_submit) and runs two timers.
 *
 * Nothing is lost: a message is 'accepted' in the database until its outcome commits, and every
 * 'accepted' message that is not in the pipeline's hands is found again by a *scan*
 * (store_claim_unprocessed, a page at a time; each message loaded by a worker when its turn
 * comes).  A scan runs at start-up (recovery), when the queue was full and a message had to be
 * left to it, every PIPELINE_RETRY_SECONDS after an outcome could not be written, and, when
 * several nodes share a PostgreSQL database, every half lease: a message is claimed by the node
 * that accepted it, and another node routes it once that claim's lease ran out (the node died).
 * Two nodes routing one message is harmless: only the first outcome is written
 * (store_write_outcome answers NOT_FOUND to the second, whose plan is dropped). */
#ifndef INLET_ENGINE_INTERNAL_PIPELINE_H
#define INLET_ENGINE_INTERNAL_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "storage/store.h"

struct pipeline;
struct deliverer;
struct route_registry;
struct store;
struct store_message;

/* The workers' nice value (per thread; Linux): parse and route yield to SMTP and the writer. */
#define PIPELINE_WORKER_NICE 10

struct pipeline_config {
    struct store *store;
    struct route_registry *routes;
    struct deliverer *deliver;  /* takes the payloads of planned deliveries (NULL: the due scan does) */
    int64_t store_ttl;          /* seconds: expires_at of stored copies */
    int64_t mailbox_ttl;        /* seconds: a mailbox copy without ttl= (SPEC §9) */
    size_t inline_attachments_max; /* --inline-attachments-max (plan_options) */
    bool default_json;          /* --webhook-format json */
    int64_t recovered;          /* 'accepted' messages counted at start (for the log) */
    bool paused;                /* test hook INLET_TEST_PAUSE_PIPELINE=1: workers take nothing
                                   until the process gets SIGUSR1 */
    unsigned retry_seconds;     /* 0: PIPELINE_RETRY_SECONDS (test hook INLET_TEST_RETRY_SECONDS) */
};

/* Starts the workers and the start-up scan (recovery).  Exits the process (fatal) when a worker
 * thread cannot be created: that happens before any listener, so nothing is lost. */
struct pipeline *engine_pipeline_start(uv_loop_t *loop, const struct pipeline_config *cfg);
/* Loop thread.  Takes `msg` (just committed, STORE_OK).  When the queue is full, or the pipeline
 * is stopping, the message is freed and stays 'accepted' for a scan or the next start. */
void engine_pipeline_submit(struct pipeline *p, struct store_message *msg);
/* Loop thread.  Takes `msg` (not committed yet, bytes in memory) when a worker can route it at
 * once: the worker routes it and commits it with its outcome in one transaction
 * (store_accept_routed), and `accepted(arg, status, NULL)` runs on the writer thread as
 * store_accept's callback would (always exactly once; NULL msg: the pipeline keeps it).  False,
 * `msg` untouched, when it cannot (paused, stopping, PIPELINE_FIRST_MAX waiting, or the bytes
 * are in a spool): the caller commits it alone (store_accept) and submits it after. */
bool engine_pipeline_route_first(struct pipeline *p, struct store_message *msg, store_done_fn accepted,
                                 void *arg);
/* Loop thread.  Workers finish the message in hand (up to `grace_seconds`), queued messages are
 * left 'accepted'; then the workers are joined and `stopped(arg)` runs on the loop.  If a worker
 * is still busy after the grace, the process exits 0 at once (its message stays 'accepted'). */
void engine_pipeline_stop(struct pipeline *p, unsigned grace_seconds, void (*stopped)(void *), void *arg);
/* After `stopped` ran. */
void engine_pipeline_free(struct pipeline *p);

/* Counters since start, for GET /metrics (any thread). */
struct pipeline_stats {
    uint64_t messages_routed;      /* outcomes written */
    uint64_t recipients_routed, recipients_dropped;
    uint64_t outcome_failures;     /* outcomes that could not be written (retried) */
    uint64_t queued;               /* messages waiting for a worker now */
};
void engine_pipeline_get_stats(struct pipeline *p, struct pipeline_stats *out);

#endif
