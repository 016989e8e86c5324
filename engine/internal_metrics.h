/* engine/internal_metrics.h — the Prometheus text of GET /metrics (SPEC §7): counters of every part of the
 * engine and gauges read from the store.  Internal to engine/. */
#ifndef INLET_ENGINE_INTERNAL_METRICS_H
#define INLET_ENGINE_INTERNAL_METRICS_H

struct deliverer;
struct mailauth;
struct pipeline;
struct smtp_server;
struct store;

struct metrics_sources {
    struct store *store;
    struct pipeline *pipeline;
    struct deliverer *deliver;
    struct smtp_server *smtp;
    struct mailauth *mailauth; /* NULL without --sender-auth */
};

/* Text exposition format 0.0.4 (malloc'd), or NULL when memory ran out.  Any thread. */
char *engine_metrics_render(const struct metrics_sources *src);

#endif
