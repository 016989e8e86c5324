/* engine/metrics.c — see internal_metrics.h.  Names follow Prometheus conventions: inlet_ prefix, _total
 * for counters, base units (seconds, bytes). */
#include "engine/internal_metrics.h"

#include <glib.h>
#include <inttypes.h>
#include <math.h>

#include "deliver/deliver.h"
#include "engine/internal_pipeline.h"
#include "mailauth/mailauth.h"
#include "smtp/smtp.h"
#include "storage/store.h"
#include "util/clock.h"

static void family(GString *out, const char *name, const char *type, const char *help)
{
    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric(GString *out, const char *name, const char *type, const char *help, double value)
{
    family(out, name, type, help);
    g_string_append_printf(out, "%s %.17g\n", name, value);
}

static void histogram(GString *out, const char *name, const char *help, const double *bounds,
                      const uint64_t *counts, size_t n, double sum, uint64_t count)
{
    family(out, name, "histogram", help);
    for (size_t i = 0; i < n; i++) {
        if (isinf(bounds[i]))
            g_string_append_printf(out, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, counts[i]);
        else
            g_string_append_printf(out, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], counts[i]);
    }
    g_string_append_printf(out, "%s_sum %.17g\n%s_count %" PRIu64 "\n", name, sum, name, count);
}

static void smtp_part(GString *out, struct smtp_server *srv)
{
    struct smtp_server_stats *s = g_new0(struct smtp_server_stats, 1);
    smtp_server_get_stats(srv, s);
    metric(out, "inlet_smtp_connections_total", "counter", "SMTP connections accepted (refused ones included).",
           (double)s->connections);
    metric(out, "inlet_smtp_connections", "gauge", "SMTP connections open now.", (double)s->connections_open);
    metric(out, "inlet_smtp_tls_started_total", "counter", "STARTTLS handshakes completed.", (double)s->tls_started);
    family(out, "inlet_smtp_replies_total", "counter", "SMTP replies by code.");
    for (size_t code = 200; code < 600; code++)
        if (s->replies[code])
            g_string_append_printf(out, "inlet_smtp_replies_total{code=\"%zu\"} %" PRIu64 "\n", code, s->replies[code]);
    g_free(s);
}

_Static_assert(MAILAUTH_PERMERROR + 1 == METRICS_AUTH_VERDICTS, "a counter per mailauth verdict");

static void mailauth_part(GString *out, struct mailauth *a, const struct metrics_auth_outcomes *o)
{
    struct mailauth_stats s;
    mailauth_get_stats(a, &s);
    family(out, "inlet_mailauth_checks_total", "counter",
           "Messages whose sender authentication checks ran, by path: cached (on the SMTP loop, every DNS "
           "answer cached) or async (a worker).");
    g_string_append_printf(out, "inlet_mailauth_checks_total{path=\"cached\"} %" PRIu64 "\n", s.checks_cached);
    g_string_append_printf(out, "inlet_mailauth_checks_total{path=\"async\"} %" PRIu64 "\n", s.checks_async);
    if (!o) return;
    static const char *const checks[METRICS_AUTH_CHECKS] = {"spf", "dkim", "dmarc"};
    family(out, "inlet_mailauth_verdicts_total", "counter",
           "Verdicts of the checked messages: spf (MAIL FROM), dkim (pass when a signature passed, as "
           "X-Mailgun-Dkim-Check-Result) and dmarc, by result.");
    for (int c = 0; c < METRICS_AUTH_CHECKS; c++)
        for (int v = 0; v < METRICS_AUTH_VERDICTS; v++)
            g_string_append_printf(out, "inlet_mailauth_verdicts_total{check=\"%s\",result=\"%s\"} %llu\n",
                                   checks[c], mailauth_verdict_name((enum mailauth_verdict)v),
                                   atomic_load_explicit(&o->verdicts[c][v], memory_order_relaxed));
    family(out, "inlet_mailauth_refused_total", "counter",
           "Messages refused with 550 by --spf-reject (policy spf) or --dmarc-reject (policy dmarc).");
    g_string_append_printf(out, "inlet_mailauth_refused_total{policy=\"spf\"} %llu\n",
                           atomic_load_explicit(&o->refused_spf, memory_order_relaxed));
    g_string_append_printf(out, "inlet_mailauth_refused_total{policy=\"dmarc\"} %llu\n",
                           atomic_load_explicit(&o->refused_dmarc, memory_order_relaxed));
}

static void store_part(GString *out, struct store *st)
{
    struct store_stats s;
    store_get_stats(st, &s);
    metric(out, "inlet_store_commits_total", "counter", "Group commits (one fsync each).", (double)s.batches);
    metric(out, "inlet_store_committed_messages_total", "counter", "Messages made durable.", (double)s.messages);
    metric(out, "inlet_store_committed_bytes_total", "counter", "Message bytes made durable.", (double)s.bytes);
    metric(out, "inlet_store_failed_commits_total", "counter", "Group commits that failed (451/452 answered).",
           (double)s.failed_batches);
    struct store_histograms h;
    store_get_histograms(st, &h);
    histogram(out, "inlet_store_commit_batch_entries", "Messages and other writes per group commit.",
              h.batch_bounds, h.batch_counts, STORE_BATCH_BUCKETS, h.batch_sum, h.count);
    histogram(out, "inlet_store_commit_seconds", "Time of a group commit, its fsync included.", h.latency_bounds,
              h.latency_counts, STORE_LATENCY_BUCKETS, h.latency_sum, h.count);

}

static void gauges_part(GString *out, struct store *st)
{
    struct store_gauges g;
    const int64_t now = clock_now_ms() / 1000;
    if (store_gauges(st, now, &g, NULL) != STORE_OK) {
        metric(out, "inlet_store_gauges_up", "gauge", "Whether the store's gauges could be read.", 0);
        return;
    }
    metric(out, "inlet_store_gauges_up", "gauge", "Whether the store's gauges could be read.", 1);
    metric(out, "inlet_deliveries_pending", "gauge", "Deliveries waiting for an attempt.", (double)g.deliveries_pending);
    metric(out, "inlet_deliveries_due", "gauge", "Pending deliveries whose attempt is due now.", (double)g.deliveries_due);
    metric(out, "inlet_deliveries_failed", "gauge", "Failed deliveries kept for replay (dead letters).",
           (double)g.deliveries_failed);
    metric(out, "inlet_deliveries_oldest_due_age_seconds", "gauge", "How late the oldest due delivery is.",
           g.oldest_due_at ? (double)(now - g.oldest_due_at) : 0);
    metric(out, "inlet_stored_copies", "gauge", "Stored copies that can be fetched.", (double)g.stored_copies);
    metric(out, "inlet_stored_bytes", "gauge", "Message bytes of the stored copies.", (double)g.stored_bytes);
    metric(out, "inlet_stored_oldest_age_seconds", "gauge", "Age of the oldest stored copy.",
           g.stored_oldest_at ? (double)(now - g.stored_oldest_at) : 0);
    metric(out, "inlet_messages", "gauge", "Messages in the database.", (double)g.messages);
    metric(out, "inlet_database_bytes", "gauge", "Size of the database and its WAL.", (double)g.database_bytes);
}

static void pipeline_part(GString *out, struct pipeline *p)
{
    struct pipeline_stats s;
    engine_pipeline_get_stats(p, &s);
    metric(out, "inlet_messages_routed_total", "counter", "Messages whose routing outcome was written.",
           (double)s.messages_routed);
    family(out, "inlet_recipients_total", "counter", "Envelope recipients by routing outcome.");
    g_string_append_printf(out, "inlet_recipients_total{outcome=\"routed\"} %" PRIu64 "\n", s.recipients_routed);
    g_string_append_printf(out, "inlet_recipients_total{outcome=\"dropped\"} %" PRIu64 "\n", s.recipients_dropped);
    metric(out, "inlet_routing_failures_total", "counter", "Routing outcomes that could not be written (retried).",
           (double)s.outcome_failures);
    metric(out, "inlet_routing_queue", "gauge", "Committed messages waiting to be routed.", (double)s.queued);
}

static void deliver_part(GString *out, struct deliverer *d)
{
    struct deliver_stats s;
    deliver_get_stats(d, &s);
    family(out, "inlet_delivery_attempts_total", "counter", "Delivery attempts by outcome.");
    g_string_append_printf(out, "inlet_delivery_attempts_total{outcome=\"delivered\"} %" PRIu64 "\n", s.attempts_delivered);
    g_string_append_printf(out, "inlet_delivery_attempts_total{outcome=\"retry\"} %" PRIu64 "\n", s.attempts_retry);
    g_string_append_printf(out, "inlet_delivery_attempts_total{outcome=\"failed\"} %" PRIu64 "\n", s.attempts_failed);
    metric(out, "inlet_deliveries_in_flight", "gauge", "Transfers running now.", (double)s.in_flight);
    metric(out, "inlet_deliveries_held", "gauge", "Deliveries in memory (prepared, waiting or in flight).",
           (double)s.held);
    metric(out, "inlet_deliveries_held_bytes", "gauge",
           "Bytes of the payloads in memory and of their messages (at most about --delivery-memory-max).",
           (double)s.held_bytes);
    metric(out, "inlet_delivery_record_failures_total", "counter",
           "Attempt results that could not be written (the attempt is made again).", (double)s.record_failures);
}

char *engine_metrics_render(const struct metrics_sources *src)
{
    GString *out = g_string_sized_new(8192);
    if (src->smtp) smtp_part(out, src->smtp);
    if (src->mailauth) mailauth_part(out, src->mailauth, src->auth);
    if (src->store) store_part(out, src->store);
    if (src->pipeline) pipeline_part(out, src->pipeline);
    if (src->deliver) deliver_part(out, src->deliver);
    if (src->store) gauges_part(out, src->store);
    return g_string_free(out, FALSE);
}
