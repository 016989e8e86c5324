/* engine/internal_sweeper.h — retention (SPEC §6): expired stored copies, old events and history, failed
 * deliveries past --failed-retention, and message bytes nothing needs any more are removed in
 * small batches, and the free pages given back.  Internal to engine/.
 *
 * Each pass is a store_sweep() job on libuv's threadpool: it waits for a group commit like any
 * write, so it never holds the writer for long and SMTP commits go on between its batches.  Every
 * node runs a sweeper; on a shared PostgreSQL one pass runs at a time (the store's advisory lock:
 * a node that finds another one sweeping skips its pass quietly and tries again next period). */
#ifndef INLET_ENGINE_INTERNAL_SWEEPER_H
#define INLET_ENGINE_INTERNAL_SWEEPER_H

#include <stdint.h>

#include <uv.h>

struct store;
struct sweeper;

struct sweeper_config {
    struct store *store;
    int64_t event_ttl, failed_retention; /* seconds */
    unsigned period_seconds;             /* 0: SWEEP_SECONDS (test hook INLET_TEST_SWEEP_SECONDS) */
};

struct sweeper *engine_sweeper_start(uv_loop_t *loop, const struct sweeper_config *cfg);
/* Loop thread: no new pass; `stopped(arg)` once a pass in progress ended and the timer closed. */
void engine_sweeper_stop(struct sweeper *s, void (*stopped)(void *), void *arg);
void engine_sweeper_free(struct sweeper *s);

#endif
