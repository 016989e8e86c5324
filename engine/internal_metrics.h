/* engine/internal_metrics.h — the Prometheus text of GET /metrics (SPEC §7): counters of every part of the
 * engine and gauges read from the store.  Internal to engine/. */
#ifndef INLET_ENGINE_INTERNAL_METRICS_H
#define INLET_ENGINE_INTERNAL_METRICS_H

#include <stdatomic.h>

struct deliverer;
struct mailauth;
struct pipeline;
struct smtp_server;
struct store;

/* What the sender-authentication checks said (engine.c, on the SMTP loop): per check (spf for
 * MAIL FROM, dkim as Mailgun posts it, dmarc), a count per verdict in enum mailauth_verdict's
 * order; and the messages the --spf-reject / --dmarc-reject policies refused. */
enum { METRICS_AUTH_CHECKS = 3, METRICS_AUTH_VERDICTS = 7 };
struct metrics_auth_outcomes {
    atomic_ullong verdicts[METRICS_AUTH_CHECKS][METRICS_AUTH_VERDICTS];
    atomic_ullong refused_spf, refused_dmarc;
};

struct metrics_sources {
    struct store *store;
    struct pipeline *pipeline;
    struct deliverer *deliver;
    struct smtp_server *smtp;
    struct mailauth *mailauth; /* NULL without --sender-auth */
    const struct metrics_auth_outcomes *auth; /* with mailauth */
};

/* Text exposition format 0.0.4 (malloc'd), or NULL when memory ran out.  Any thread. */
char *engine_metrics_render(const struct metrics_sources *src);

#endif
