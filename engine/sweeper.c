/* engine/sweeper.c — see internal_sweeper.h. */
#include "engine/internal_sweeper.h"

#include <glib.h>
#include <stdbool.h>
#include <string.h>

#include "storage/store.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/limits.h"

struct sweeper {
    struct sweeper_config cfg;
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_work_t work;
    bool running, stopping, timer_closed;
    struct store_sweep_result result;
    enum store_status status;
    char *err;
    void (*stopped)(void *);
    void *stopped_arg;
};

static void maybe_stopped(struct sweeper *s)
{
    if (s->stopping && !s->running && s->timer_closed && s->stopped) {
        void (*cb)(void *) = s->stopped;
        s->stopped = NULL;
        cb(s->stopped_arg);
    }
}

static void sweep_work(uv_work_t *req)
{
    struct sweeper *s = req->data;
    memset(&s->result, 0, sizeof s->result);
    s->status = store_sweep(s->cfg.store, clock_now_ms() / 1000, s->cfg.event_ttl, s->cfg.failed_retention,
                            SWEEP_BATCH, &s->result, &s->err);
}

static void on_timer(uv_timer_t *h);

static void sweep_done(uv_work_t *req, int status)
{
    (void)status;
    struct sweeper *s = req->data;
    s->running = false;
    const struct store_sweep_result *r = &s->result;
    if (s->status != STORE_OK) {
        log_warn("sweeper", "pass failed: %s (retried in %us)", s->err ? s->err : "?", s->cfg.period_seconds);
    } else if (r->skipped) {
        log_debug("sweeper", "pass skipped reason=\"another node is sweeping\"");
    } else if (r->copies || r->events || r->deliveries || r->messages || r->pages_freed || r->body_segments) {
        log_info("sweeper",
                 "removed copies=%llu events=%llu deliveries=%llu messages=%llu pages_freed=%llu body_segments=%llu "
                 "body_bytes=%llu%s",
                 (unsigned long long)r->copies, (unsigned long long)r->events, (unsigned long long)r->deliveries,
                 (unsigned long long)r->messages, (unsigned long long)r->pages_freed,
                 (unsigned long long)r->body_segments, (unsigned long long)r->body_bytes, r->more ? " more=yes" : "");
    }
    g_clear_pointer(&s->err, g_free);
    if (!s->stopping) {
        const bool more = s->status == STORE_OK && r->more;
        uv_timer_start(&s->timer, on_timer, more ? 1000 : (uint64_t)s->cfg.period_seconds * 1000, 0);
    }
    maybe_stopped(s);
}

static void on_timer(uv_timer_t *h)
{
    struct sweeper *s = h->data;
    if (s->stopping || s->running) return;
    s->running = true;
    uv_queue_work(s->loop, &s->work, sweep_work, sweep_done);
}

struct sweeper *engine_sweeper_start(uv_loop_t *loop, const struct sweeper_config *cfg)
{
    struct sweeper *s = g_new0(struct sweeper, 1);
    s->cfg = *cfg;
    if (!s->cfg.period_seconds) s->cfg.period_seconds = SWEEP_SECONDS;
    s->loop = loop;
    s->work.data = s;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_timer, (uint64_t)s->cfg.period_seconds * 1000, 0);
    return s;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct sweeper *s = h->data;
    s->timer_closed = true;
    maybe_stopped(s);
}

void engine_sweeper_stop(struct sweeper *s, void (*stopped)(void *), void *arg)
{
    s->stopping = true;
    s->stopped = stopped;
    s->stopped_arg = arg;
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

void engine_sweeper_free(struct sweeper *s)
{
    if (!s) return;
    g_free(s->err);
    g_free(s);
}
