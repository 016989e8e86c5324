/* engine/pipeline.c — see internal_pipeline.h.
 *
 * State, under one mutex:
 *   live     messages handed over by the loop after their commit (bytes in memory);
 *   ids      ids of the current scan page, loaded from the store by the worker that takes one;
 *   inflight every id in `live`, in `ids` or in a worker's hands, so that a scan never queues a
 *            message twice (a scan may still meet a message whose commit callback is on its way
 *            to the loop; writing its outcome twice is harmless: store_write_outcome leaves a
 *            message that is no longer 'accepted' as it is).
 *
 * A scan ("pass") claims the oldest 'accepted' ids (store_claim_unprocessed: on a shared
 * PostgreSQL those nobody holds, or this node holds, under a lease; on SQLite simply the
 * oldest), PIPELINE_SCAN_PAGE at a time, skipping those in flight; the next page is listed when
 * the workers have taken the previous one.  A pass ends when a page comes back short, or after a
 * failure (storage trouble: the retry timer starts a new pass PIPELINE_RETRY_SECONDS later, so a
 * failing database is not hammered).  When several nodes share the database, a pass also runs
 * every half lease (claim_timer): what a dead node had accepted and not routed is routed by
 * another once its lease ran out.  That pass is one indexed statement that finds nothing most of
 * the time. */
#include "engine/internal_pipeline.h"

#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "deliver/deliver.h"
#include "engine/internal_plan.h"
#include "message/message.h"
#include "routes/routes.h"
#include "storage/store.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/limits.h"

struct pipeline {
    struct store *store;
    struct route_registry *routes;
    struct deliverer *deliver;
    int64_t store_ttl;
    int64_t mailbox_ttl;
    size_t inline_attachments_max;
    bool default_json;
    int64_t recovered;
    unsigned retry_seconds;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_cond_t first_cond; /* the first workers': a message in `first`, or the stop */
    GQueue first;              /* struct first_entry *: not committed yet, routed first */
    size_t first_bytes;
    GQueue live;               /* struct store_message * */
    size_t live_bytes;
    GQueue ids;                /* char * (g_malloc'd) */
    GHashTable *inflight;      /* id → itself (owned) */
    bool stopping, paused;

    bool need_pass;            /* start a pass as soon as a worker is free */
    bool retry_wanted;         /* a write failed: the retry timer starts a pass */
    bool pass_active, more_pages, listing, pass_failed, initial_pass;
    size_t pass_pending;       /* ids of this pass queued or in a worker's hands */
    size_t pass_routed, pass_failures;
    int64_t pass_started_ms;
    bool overflow_logged;

    size_t outcomes_inflight;  /* messages taken by a worker whose outcome is not committed yet */
    atomic_ullong n_routed, n_rcpt_routed, n_rcpt_dropped, n_failures;

    struct worker {
        struct pipeline *p;
        bool first;            /* routes messages before their commit only, at normal priority */
        pthread_t thread;
    } workers[PIPELINE_FIRST_WORKERS + PIPELINE_WORKERS];
    size_t nthreads;
    size_t exited;             /* workers that left their loop */

    /* Loop side. */
    uv_loop_t *loop;
    uv_timer_t retry_timer, grace_timer, claim_timer;
    uv_async_t exited_async;
    uv_signal_t resume_signal; /* test hook: SIGUSR1 ends the pause */
    int handles_open;
    void (*stopped)(void *);
    void *stopped_arg;
};

/* ---------------------------------------------------------------------------------------------
 * Routing one message.  A worker parses, evaluates and plans, builds the deliveries' payloads,
 * then queues the outcome write and takes the next message at once: it does not wait for the
 * commit (one fsync away), so two workers keep many outcomes in one group commit.  The commit's
 * callback (writer thread) hands the payloads to the deliverer and ends the message's routing. */

struct routing {
    struct pipeline *p;
    struct store_message *sm;      /* the plan points into it: kept until the commit */
    char id[ID_LEN + 1];
    struct plan plan;
    struct deliver_batch *batch;   /* payloads, handed over once the outcome committed */
    bool from_scan;
    bool first;                    /* routed before its commit (engine_pipeline_route_first) */
    store_done_fn accepted;        /* first: the caller's callback for the message's commit */
    void *accepted_arg;
    enum store_status accepted_status; /* first: the message's own status, known before on_outcome */
    int64_t t0;                    /* monotonic microseconds */
};

/* A message not committed yet, waiting for a worker to route it (engine_pipeline_route_first). */
struct first_entry {
    struct store_message *msg;
    store_done_fn accepted;
    void *arg;
};

static void end_pass(struct pipeline *p);

/* The end of one message's routing (any thread; takes the lock): it leaves the in-flight set,
 * frees its slot, and counts for the scan pass it came from. */
static void routing_done(struct pipeline *p, const char *id, bool from_scan, enum store_status st)
{
    pthread_mutex_lock(&p->lock);
    g_hash_table_remove(p->inflight, id);
    p->outcomes_inflight--;
    if (!from_scan) {
        if (st != STORE_OK) p->retry_wanted = true;
    } else {
        if (st == STORE_OK) {
            p->pass_routed++;
        } else {
            /* Storage trouble: the pass stops here (its other ids stay 'accepted' for the
             * retry), so a failing database gets one attempt per period, not a page of them. */
            p->pass_failures++;
            p->pass_failed = true;
            p->retry_wanted = true;
            p->more_pages = false;
            char *left;
            while ((left = g_queue_pop_head(&p->ids))) {
                g_hash_table_remove(p->inflight, left);
                g_free(left);
                p->pass_pending--;
            }
        }
        if (--p->pass_pending == 0 && !p->more_pages && !p->listing) end_pass(p);
    }
    pthread_cond_broadcast(&p->cond);
    if (p->stopping) pthread_cond_broadcast(&p->first_cond);
    pthread_mutex_unlock(&p->lock);
}

static void log_routed(const struct routing *r)
{
    const struct plan *plan = &r->plan;
    for (size_t i = 0; i < plan->outcome.nrecipients; i++) {
        const struct store_recipient_outcome *o = &plan->outcome.recipients[i];
        if (strcmp(o->outcome, "dropped") != 0) continue;
        char esc[400];
        log_info("engine", "dropped id=%s rcpt=%s", r->id, log_escape(esc, sizeof esc, o->recipient, strlen(o->recipient), SMTP_ADDRESS_MAX));
    }
    log_info("engine", "routed id=%s rcpts=%zu deliveries=%zu stored=%zu dropped=%zu ms=%.1f%s", r->id,
             plan->outcome.nrecipients, plan->outcome.ndeliveries, plan->outcome.ncopies, plan->ndropped,
             (double)(g_get_monotonic_time() - r->t0) / 1000.0, r->from_scan ? " via=scan" : "");
}

/* Writer thread: the outcome's batch committed (or failed).  Must not block. */
static void on_outcome(void *arg, enum store_status st, char *err)
{
    struct routing *r = arg;
    struct pipeline *p = r->p;
    if (st == STORE_OK) {
        atomic_fetch_add(&p->n_routed, 1);
        atomic_fetch_add(&p->n_rcpt_routed, r->plan.nrouted);
        atomic_fetch_add(&p->n_rcpt_dropped, r->plan.ndropped);
        log_routed(r);
    } else if (r->first && r->accepted_status != STORE_OK) {
        /* The message itself was not stored (its sender gets a 4xx): nothing to retry. */
        log_debug("engine", "not routed id=%s reason=not-stored", r->id);
        st = STORE_ERR_NOT_FOUND;
    } else if (st == STORE_ERR_NOT_FOUND) {
        /* Deleted meanwhile, or routed already by a scan that met it while this routing was
         * committing: nothing was written, so nothing is delivered from this plan. */
        log_debug("engine", "not routed id=%s reason=gone-or-routed-already", r->id);
    } else {
        atomic_fetch_add(&p->n_failures, 1);
        log_warn("engine", "not routed id=%s reason=%s error=\"%s\" (stays accepted; retried in %ds)", r->id,
                 st == STORE_ERR_FULL ? "disk-full" : "storage-error", err ? err : "", p->retry_seconds);
    }
    free(err);
    engine_plan_clear(&r->plan); /* before the batch goes: the plan points into the message's bytes */
    if (st == STORE_OK) deliver_commit(p->deliver, r->batch);
    else deliver_discard(p->deliver, r->batch);
    store_free_message(r->sm); /* NULL when the batch took it */
    routing_done(p, r->id, r->from_scan, st == STORE_ERR_NOT_FOUND ? STORE_OK : st);
    g_free(r);
}

/* Worker thread: parses `sm` and builds its plan and its deliveries' payloads into `r`.  False
 * when memory runs out. */
static bool plan_message(struct pipeline *p, struct route_matcher *matcher, struct routing *r)
{
    struct message *m = message_parse(r->sm->data, r->sm->len);
    struct route_table *t = route_registry_current(p->routes);
    const int64_t now_ms = clock_now_ms();
    const struct plan_options opts = {
        .store_ttl = p->store_ttl,
        .mailbox_ttl = p->mailbox_ttl,
        .inline_attachments_max = p->inline_attachments_max,
        .default_json = p->default_json,
    };
    const bool planned = m && engine_plan_build(&r->plan, r->sm, m, t, matcher, now_ms / 1000, &opts) == 0;
    route_table_unref(t);
    if (!planned) {
        engine_plan_clear(&r->plan);
        message_free(m);
        return false;
    }
    r->plan.outcome.now_ms = now_ms;
    /* The message is parsed here and now: the payloads are built from it before it is freed
     * (a GMime object stays on the thread that made it). */
    r->batch = deliver_prepare(p->deliver, &r->plan.outcome, m, &r->sm);
    message_free(m);
    return true;
}

static struct routing *routing_new(struct pipeline *p, struct store_message *sm, bool from_scan)
{
    struct routing *r = g_new0(struct routing, 1);
    r->p = p;
    r->sm = sm;
    r->from_scan = from_scan;
    r->t0 = g_get_monotonic_time();
    memcpy(r->id, sm->id, sizeof r->id);
    return r;
}

/* Worker thread: routes `sm` (taken, committed).  Ends through on_outcome(), or at once when the
 * message cannot even be planned (out of memory: it stays 'accepted' for a later scan). */
static void route_message(struct pipeline *p, struct route_matcher *matcher, struct store_message *sm,
                          bool from_scan)
{
    struct routing *r = routing_new(p, sm, from_scan);
    if (!plan_message(p, matcher, r)) {
        log_warn("engine", "not routed id=%s reason=out-of-memory (stays accepted)", r->id);
        store_free_message(r->sm);
        routing_done(p, r->id, from_scan, STORE_ERR_IO);
        g_free(r);
        return;
    }
    store_write_outcome_async(p->store, &r->plan.outcome, on_outcome, r);
}

/* Writer thread: the message of a routing done first committed or failed; its outcome's
 * callback (on_outcome) comes next. */
static void on_first_accepted(void *arg, enum store_status st, struct store_message *msg)
{
    struct routing *r = arg;
    r->accepted_status = st;
    r->accepted(r->accepted_arg, st, msg);
}

/* Worker thread: routes a message that is not committed yet, then commits it with its outcome in
 * one transaction (store_accept_routed).  When it cannot be planned (out of memory) it is
 * committed alone, as store_accept would have, and routed after. */
static void route_first(struct pipeline *p, struct route_matcher *matcher, struct first_entry *f)
{
    struct store_message *sm = f->msg;
    struct routing *r = routing_new(p, sm, false);
    r->first = true;
    if (!plan_message(p, matcher, r)) {
        log_warn("engine", "not routed before the commit id=%s reason=out-of-memory (routed after it)", r->id);
        routing_done(p, r->id, false, STORE_OK);
        g_free(r);
        store_accept(p->store, sm, f->accepted, f->arg);
        g_free(f);
        return;
    }
    /* deliver_prepare may have moved sm into the batch (r->sm NULL): it stays alive until
     * on_outcome, which runs after the message's own callback. */
    r->accepted = f->accepted;
    r->accepted_arg = f->arg;
    store_accept_routed(p->store, sm, on_first_accepted, r, &r->plan.outcome, on_outcome, r);
    g_free(f);
}

/* ---------------------------------------------------------------------------------------------
 * Scans (worker thread, called and returning with the lock held). */

static void end_pass(struct pipeline *p)
{
    p->pass_active = false;
    if (p->initial_pass) {
        p->initial_pass = false;
        log_info("engine", "recovery finished routed=%zu failed=%zu ms=%lld", p->pass_routed, p->pass_failures,
                 (long long)(clock_monotonic_ms() - p->pass_started_ms));
    } else if (p->pass_routed || p->pass_failures) {
        log_info("engine", "scan finished routed=%zu failed=%zu", p->pass_routed, p->pass_failures);
    }
}

static void list_page(struct pipeline *p)
{
    const size_t skip = g_hash_table_size(p->inflight);
    const size_t max = PIPELINE_SCAN_PAGE + skip;
    p->listing = true;
    pthread_mutex_unlock(&p->lock);
    char **ids = NULL, *err = NULL;
    size_t n = 0;
    enum store_status rc = store_claim_unprocessed(p->store, &ids, &n, max, &err);
    pthread_mutex_lock(&p->lock);
    p->listing = false;
    if (rc != STORE_OK) {
        log_warn("engine", "cannot list unprocessed messages: %s (retried in %ds)", err ? err : "?",
                 p->retry_seconds);
        free(err);
        p->pass_failed = true;
        p->retry_wanted = true;
        p->more_pages = false;
    } else {
        size_t added = 0;
        for (size_t i = 0; i < n; i++) {
            if (!g_hash_table_contains(p->inflight, ids[i])) {
                char *id = g_strdup(ids[i]);
                g_hash_table_add(p->inflight, id);
                g_queue_push_tail(&p->ids, g_strdup(id));
                added++;
            }
            free(ids[i]);
        }
        free(ids);
        p->pass_pending += added;
        /* A full page may have more behind it; a page of nothing new ends the pass (whatever is
         * in flight is being routed anyway). */
        p->more_pages = !p->pass_failed && n == max && added > 0;
    }
    if (p->pass_pending == 0 && !p->more_pages) end_pass(p);
    pthread_cond_broadcast(&p->cond);
}

/* ---------------------------------------------------------------------------------------------
 * Workers. */

/* A worker's end, p->lock held: counted, its matcher freed, the loop told (on_worker_exited joins
 * them all once every one has ended). */
static void *worker_exit(struct pipeline *p, struct route_matcher *matcher)
{
    p->exited++;
    pthread_mutex_unlock(&p->lock);
    route_matcher_free(matcher);
    uv_async_send(&p->exited_async);
    return NULL;
}

/* A worker that routes messages before their commit: the SMTP reply waits for it, so it runs at
 * the loop's priority and takes nothing else (a backlog goes to the others, committed first). */
static void *first_worker_main(void *arg)
{
    log_thread_name("route-first");
    struct worker *w = arg;
    struct pipeline *p = w->p;
    struct route_matcher *matcher = route_matcher_new();
    if (!matcher) log_fatal("engine: cannot allocate a route matcher");
    pthread_mutex_lock(&p->lock);
    for (;;) {
        /* Even when stopping: SMTP waits for their commits, and stops only after. */
        struct first_entry *f = g_queue_pop_head(&p->first);
        if (f) {
            p->first_bytes -= f->msg->len;
            pthread_mutex_unlock(&p->lock);
            route_first(p, matcher, f);
            pthread_mutex_lock(&p->lock);
            continue;
        }
        if (p->stopping && p->outcomes_inflight == 0) break;
        pthread_cond_wait(&p->first_cond, &p->lock);
    }
    return worker_exit(p, matcher);
}

static void *worker_main(void *arg)
{
    log_thread_name("route");
    struct worker *w = arg;
    struct pipeline *p = w->p;
    /* Below the loop (SMTP replies) and the writer (commits): when the CPUs are short, accepting
     * mail comes first and routing catches up after; the messages wait durably meanwhile. */
    setpriority(PRIO_PROCESS, (id_t)gettid(), PIPELINE_WORKER_NICE);
    struct route_matcher *matcher = route_matcher_new();
    if (!matcher) log_fatal("engine: cannot allocate a route matcher");
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (p->stopping) {
            /* Outcomes on their way to the disk still call back into the pipeline. */
            if (p->outcomes_inflight == 0) break;
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        if (p->paused || p->outcomes_inflight >= PIPELINE_OUTCOMES_MAX) {
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        struct store_message *msg = g_queue_pop_head(&p->live);
        if (msg) {
            p->live_bytes -= msg->len;
            p->outcomes_inflight++;
            pthread_mutex_unlock(&p->lock);
            route_message(p, matcher, msg, false);
            pthread_mutex_lock(&p->lock);
            continue;
        }
        char *id = g_queue_pop_head(&p->ids);
        if (id) {
            p->outcomes_inflight++;
            pthread_mutex_unlock(&p->lock);
            struct store_message *sm = NULL;
            char *err = NULL;
            enum store_status st = store_load_message(p->store, id, &sm, &err);
            if (st == STORE_OK) {
                route_message(p, matcher, sm, true);
            } else {
                if (st != STORE_ERR_NOT_FOUND) /* NOT_FOUND: gone meanwhile, nothing to route */
                    log_warn("engine", "cannot load message id=%s: %s (stays accepted; retried in %ds)", id,
                             err ? err : "?", p->retry_seconds);
                routing_done(p, id, true, st == STORE_ERR_NOT_FOUND ? STORE_OK : st);
            }
            free(err);
            g_free(id);
            pthread_mutex_lock(&p->lock);
            continue;
        }
        if (!p->listing && p->pass_active && p->more_pages) {
            list_page(p);
            continue;
        }
        if (!p->listing && !p->pass_active && p->need_pass) {
            p->need_pass = false;
            p->pass_active = true;
            p->pass_failed = false;
            p->pass_routed = p->pass_failures = 0;
            p->pass_started_ms = clock_monotonic_ms();
            list_page(p);
            continue;
        }
        pthread_cond_wait(&p->cond, &p->lock);
    }
    return worker_exit(p, matcher);
}

/* ---------------------------------------------------------------------------------------------
 * Loop side. */

static void on_retry_timer(uv_timer_t *h)
{
    struct pipeline *p = h->data;
    pthread_mutex_lock(&p->lock);
    if (p->retry_wanted && !p->stopping) {
        p->retry_wanted = false;
        p->need_pass = true;
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
}

/* Claims shared: a pass every half lease (unless one is running), for a dead node's messages. */
static void on_claim_timer(uv_timer_t *h)
{
    struct pipeline *p = h->data;
    pthread_mutex_lock(&p->lock);
    if (!p->stopping && !p->pass_active) {
        p->need_pass = true;
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
}

static void on_resume_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    struct pipeline *p = h->data;
    uv_signal_stop(h);
    log_info("engine", "pipeline resumed (SIGUSR1)");
    pthread_mutex_lock(&p->lock);
    p->paused = false;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct pipeline *p = h->data;
    if (--p->handles_open == 0 && p->stopped) p->stopped(p->stopped_arg);
}

static void free_queues(struct pipeline *p)
{
    struct first_entry *f;
    while ((f = g_queue_pop_head(&p->first))) { /* none: SMTP waited for them before the stop */
        store_free_message(f->msg);
        g_free(f);
    }
    p->first_bytes = 0;
    struct store_message *msg;
    while ((msg = g_queue_pop_head(&p->live))) store_free_message(msg);
    p->live_bytes = 0;
    char *id;
    while ((id = g_queue_pop_head(&p->ids))) g_free(id);
}

static void on_worker_exited(uv_async_t *h)
{
    struct pipeline *p = h->data;
    pthread_mutex_lock(&p->lock);
    bool all = p->exited == p->nthreads;
    size_t left = g_queue_get_length(&p->live) + g_queue_get_length(&p->ids);
    pthread_mutex_unlock(&p->lock);
    if (!all || !p->stopping) return;
    for (size_t i = 0; i < p->nthreads; i++) pthread_join(p->workers[i].thread, NULL);
    p->nthreads = 0;
    free_queues(p);
    log_info("engine", "pipeline stopped left_accepted=%zu", left);
    uv_close((uv_handle_t *)&p->exited_async, on_handle_closed);
    uv_close((uv_handle_t *)&p->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->grace_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->claim_timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->resume_signal, on_handle_closed);
}

static void on_grace_timer(uv_timer_t *h)
{
    (void)h;
    /* A worker is stuck (a commit that does not return): its message is not committed, so it is
     * still 'accepted' and will be routed at the next start.  Leaving now loses nothing. */
    log_warn("engine", "pipeline still busy after the shutdown grace: exiting now (messages in progress stay "
                       "accepted)");
    _exit(0);
}

struct pipeline *engine_pipeline_start(uv_loop_t *loop, const struct pipeline_config *cfg)
{
    struct pipeline *p = g_new0(struct pipeline, 1);
    p->store = cfg->store;
    p->routes = cfg->routes;
    p->deliver = cfg->deliver;
    p->inline_attachments_max = cfg->inline_attachments_max;
    p->default_json = cfg->default_json;
    p->store_ttl = cfg->store_ttl;
    p->mailbox_ttl = cfg->mailbox_ttl;
    p->recovered = cfg->recovered;
    p->paused = cfg->paused;
    p->retry_seconds = cfg->retry_seconds ? cfg->retry_seconds : PIPELINE_RETRY_SECONDS;
    p->loop = loop;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    pthread_cond_init(&p->first_cond, NULL);
    g_queue_init(&p->first);
    g_queue_init(&p->live);
    g_queue_init(&p->ids);
    p->inflight = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    uv_timer_init(loop, &p->retry_timer);
    uv_timer_init(loop, &p->grace_timer);
    uv_timer_init(loop, &p->claim_timer);
    uv_async_init(loop, &p->exited_async, on_worker_exited);
    uv_signal_init(loop, &p->resume_signal);
    p->retry_timer.data = p->grace_timer.data = p->claim_timer.data = p->exited_async.data = p->resume_signal.data = p;
    p->handles_open = 5;
    /* The start-up pass is the recovery. */
    p->need_pass = true;
    p->initial_pass = true;
    if (p->paused) {
        log_warn("engine", "pipeline paused by INLET_TEST_PAUSE_PIPELINE (test hook): messages stay accepted "
                           "until SIGUSR1");
        uv_signal_start(&p->resume_signal, on_resume_signal, SIGUSR1);
    }
    for (size_t i = 0; i < PIPELINE_FIRST_WORKERS + PIPELINE_WORKERS; i++) {
        struct worker *w = &p->workers[i];
        w->p = p;
        w->first = i < PIPELINE_FIRST_WORKERS;
        int rc = pthread_create(&w->thread, NULL, w->first ? first_worker_main : worker_main, w);
        /* At start-up, before any listener: nothing is lost by giving up. */
        if (rc != 0) log_fatal("engine: cannot start a pipeline worker: %s", g_strerror(rc));
        p->nthreads++;
    }
    uv_timer_start(&p->retry_timer, on_retry_timer, (uint64_t)p->retry_seconds * 1000,
                   (uint64_t)p->retry_seconds * 1000);
    if (store_claims_shared(p->store)) {
        const uint64_t half = (uint64_t)store_lease_ms(p->store) / 2;
        uv_timer_start(&p->claim_timer, on_claim_timer, half, half);
    }
    log_info("engine", "pipeline started workers=%d first_workers=%d", PIPELINE_WORKERS, PIPELINE_FIRST_WORKERS);
    return p;
}

void engine_pipeline_submit(struct pipeline *p, struct store_message *msg)
{
    pthread_mutex_lock(&p->lock);
    const size_t n = g_queue_get_length(&p->live);
    const bool room = n == 0 || (n < PIPELINE_QUEUE_MAX && p->live_bytes + msg->len <= PIPELINE_QUEUE_BYTES_MAX);
    if (p->stopping || !room || g_hash_table_contains(p->inflight, msg->id)) {
        if (!p->stopping && !room) {
            /* Left to a scan as soon as a worker is free. */
            p->need_pass = true;
            if (!p->overflow_logged)
                log_warn("engine", "pipeline queue full: messages stay accepted and are routed by the next scan");
            p->overflow_logged = true;
        }
        pthread_mutex_unlock(&p->lock);
        store_free_message(msg);
        return;
    }
    p->overflow_logged = false;
    g_hash_table_add(p->inflight, g_strdup(msg->id));
    g_queue_push_tail(&p->live, msg);
    p->live_bytes += msg->len;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

bool engine_pipeline_route_first(struct pipeline *p, struct store_message *msg, store_done_fn accepted, void *arg)
{
    if (!msg->data) return false; /* spooled: its bytes are mapped after the commit */
    pthread_mutex_lock(&p->lock);
    const size_t n = g_queue_get_length(&p->first);
    const bool room = n < PIPELINE_FIRST_MAX && p->first_bytes + msg->len <= PIPELINE_FIRST_BYTES_MAX &&
                      p->outcomes_inflight < PIPELINE_OUTCOMES_MAX;
    if (p->stopping || p->paused || !room || g_hash_table_contains(p->inflight, msg->id)) {
        pthread_mutex_unlock(&p->lock);
        return false;
    }
    struct first_entry *f = g_new(struct first_entry, 1);
    *f = (struct first_entry){.msg = msg, .accepted = accepted, .arg = arg};
    g_hash_table_add(p->inflight, g_strdup(msg->id));
    p->outcomes_inflight++;
    g_queue_push_tail(&p->first, f);
    p->first_bytes += msg->len;
    pthread_cond_signal(&p->first_cond);
    pthread_mutex_unlock(&p->lock);
    return true;
}

void engine_pipeline_stop(struct pipeline *p, unsigned grace_seconds, void (*stopped)(void *), void *arg)
{
    p->stopped = stopped;
    p->stopped_arg = arg;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->cond);
    pthread_cond_broadcast(&p->first_cond);
    pthread_mutex_unlock(&p->lock);
    uv_timer_stop(&p->retry_timer);
    uv_timer_stop(&p->claim_timer);
    uv_signal_stop(&p->resume_signal);
    uv_timer_start(&p->grace_timer, on_grace_timer, (uint64_t)grace_seconds * 1000 + 1000, 0);
    uv_async_send(&p->exited_async); /* in case every worker is gone already */
}

void engine_pipeline_free(struct pipeline *p)
{
    if (!p) return;
    free_queues(p);
    g_hash_table_destroy(p->inflight);
    pthread_cond_destroy(&p->cond);
    pthread_cond_destroy(&p->first_cond);
    pthread_mutex_destroy(&p->lock);
    g_free(p);
}

void engine_pipeline_get_stats(struct pipeline *p, struct pipeline_stats *out)
{
    out->messages_routed = atomic_load(&p->n_routed);
    out->recipients_routed = atomic_load(&p->n_rcpt_routed);
    out->recipients_dropped = atomic_load(&p->n_rcpt_dropped);
    out->outcome_failures = atomic_load(&p->n_failures);
    pthread_mutex_lock(&p->lock);
    out->queued = g_queue_get_length(&p->live) + g_queue_get_length(&p->ids);
    pthread_mutex_unlock(&p->lock);
}
