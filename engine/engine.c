/* engine/engine.c — `inlet serve`: storage, routes, SMTP, HTTP, signals, and the path from a
 * finished SMTP transaction to its durable commit, back to the 250 and on to the pipeline.
 *
 * Threads: the libuv loop (SMTP I/O, the RCPT-time route check, signals, commit completions), the
 * storage writer (group commit), the pipeline's workers (parse and route, engine/internal_pipeline.h) and
 * libmicrohttpd's pool.  A commit completes on the writer thread; it is queued here under a mutex
 * and uv_async_send() wakes the loop, which answers the client and hands the committed message
 * to the pipeline.
 *
 * Shutdown (SIGTERM/SIGINT): the API stops, then SMTP (transactions in flight finish within
 * --shutdown-grace), then the pipeline (messages in a worker's hands finish, queued ones stay
 * 'accepted' for the next start), then the store. */
#include "engine/engine.h"

#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "api/api.h"
#include "deliver/deliver.h"
#include "engine/internal_keys.h"
#include "engine/internal_mailboxes.h"
#include "engine/internal_metrics.h"
#include "engine/internal_sweeper.h"
#include "engine/internal_pipeline.h"
#include "mailauth/mailauth.h"
#include "message/message.h"
#include "routes/routes.h"
#include "smtp/smtp.h"
#include "storage/store.h"
#include "util/config.h"
#include "util/limits.h"
#include "util/lockfile.h"
#include "util/log.h"

struct engine {
    struct inlet_config *cfg;
    int lock_fd; /* <data-dir>/inlet.lock, held while we run (util/lockfile.h) */
    uv_loop_t loop;
    struct store *store;
    struct smtp_server *smtp;
    struct pop3_server *pop3; /* NULL without --pop3-listen / --pop3s-listen */
    struct engine_mailboxes mailboxes;
    struct api_server *api;
    struct engine_keys keys;
    struct route_registry *routes;
    struct route_matcher *rcpt_matcher; /* the loop's, for the RCPT-time check */
    struct pipeline *pipeline;
    struct deliverer *deliver;
    struct sweeper *sweeper;
    struct mailauth *mailauth; /* NULL unless --sender-auth */
    struct metrics_auth_outcomes auth_outcomes; /* counted on the loop, read by GET /metrics */
    uv_async_t auth_async;
    struct pending_auth *auth_done; /* checked by a mailauth worker, under done_lock */
    atomic_bool smtp_ready;
    int64_t recovered;
    uv_signal_t sigterm, sigint, sighup;
    uv_async_t commits_async;
    pthread_mutex_t done_lock;
    struct pending_commit *done; /* completed by the writer, not yet answered */
};

/* One message between the end of DATA and its reply. */
struct pending_commit {
    struct engine *engine;
    struct smtp_commit *commit;
    enum store_status status;
    struct store_message *msg; /* committed: for the pipeline */
    char id[ID_LEN + 1];
    size_t size, nrcpts;
    struct pending_commit *next;
};

/* One message between the end of DATA and the end of its checks (--sender-auth). */
struct pending_auth {
    struct engine *engine;
    struct smtp_commit *commit;
    struct smtp_txn *txn;
    struct mailauth_result *result;
    struct pending_auth *next;
};

/* Writer thread. */
static void on_stored(void *arg, enum store_status status, struct store_message *msg)
{
    struct pending_commit *p = arg;
    struct engine *e = p->engine;
    p->status = status;
    p->msg = msg; /* the loop hands it to the pipeline */
    pthread_mutex_lock(&e->done_lock);
    p->next = e->done;
    e->done = p;
    pthread_mutex_unlock(&e->done_lock);
    uv_async_send(&e->commits_async);
}

static enum smtp_commit_status smtp_status(enum store_status st)
{
    switch (st) {
    case STORE_OK: return SMTP_COMMIT_OK;
    case STORE_ERR_FULL: return SMTP_COMMIT_NOSPACE;
    case STORE_ERR_IO:
    case STORE_ERR_BUSY:
    case STORE_ERR_NOMEM:
    case STORE_ERR_NOT_FOUND:
    case STORE_ERR_QUOTA:
    case STORE_ERR_CONFLICT: break;
    }
    return SMTP_COMMIT_TEMPFAIL;
}

/* Loop thread: answer every commit the writer finished. */
static void on_commits_done(uv_async_t *h)
{
    struct engine *e = h->data;
    pthread_mutex_lock(&e->done_lock);
    struct pending_commit *list = e->done;
    e->done = NULL;
    pthread_mutex_unlock(&e->done_lock);
    while (list) {
        struct pending_commit *p = list;
        list = p->next;
        if (p->status == STORE_OK)
            log_info("smtp", "queued id=%s size=%zu rcpts=%zu", p->id, p->size, p->nrcpts);
        else
            log_warn("smtp", "not queued id=%s size=%zu reason=%s", p->id, p->size,
                     p->status == STORE_ERR_FULL ? "disk-full" : "storage-error");
        smtp_commit_done(p->commit, smtp_status(p->status)); /* its session may be gone: fine */
        /* A spooled body whose mapping failed (logged): the pipeline's scan loads it later. */
        if (p->msg && !p->msg->data) store_free_message(g_steal_pointer(&p->msg));
        if (p->msg) engine_pipeline_submit(e->pipeline, p->msg);
        g_free(p);
    }
}

/* Loop thread: hand the bytes of a finished transaction to the writer without copying them (the
 * pointers move from the txn to the store message). */
static void commit_store(struct engine *e, struct smtp_commit *commit, struct smtp_txn *txn)
{
    struct pending_commit *p = g_new0(struct pending_commit, 1);
    p->engine = e;
    p->commit = commit;
    memcpy(p->id, txn->id, sizeof p->id);
    p->size = txn->len;
    p->nrcpts = txn->nrcpts;

    struct store_message *m = g_new0(struct store_message, 1);
    memcpy(m->id, txn->id, sizeof m->id);
    m->received_at_ms = txn->received_at_ms;
    m->sender = g_steal_pointer(&txn->sender);
    m->rcpts = g_steal_pointer(&txn->rcpts);
    m->nrcpts = txn->nrcpts;
    txn->nrcpts = 0;
    m->remote_ip = g_steal_pointer(&txn->peer_ip);
    m->helo = g_steal_pointer(&txn->helo);
    m->tls = g_steal_pointer(&txn->tls);
    m->data = g_steal_pointer(&txn->data);
    m->spool = g_steal_pointer(&txn->sink); /* the bytes went to a spool as they arrived */
    m->len = txn->len;
    smtp_txn_free(txn);
    /* One commit for the message and its outcome when a worker can route it now; else two. */
    if (e->pipeline && engine_pipeline_route_first(e->pipeline, m, on_stored, p)) return;
    store_accept(e->store, m, on_stored, p);
}

/* Loop thread: DATA past --smtp-memory-per-message goes to a spool of the store (SQLite's body
 * log; it becomes the message's segment at the commit, no second copy).  NULL keeps the message
 * in memory: PostgreSQL (bodies in its rows), --sender-auth (its checks read the whole message),
 * or a spool that cannot be made (logged; the budget still bounds memory). */
static void *on_sink_open(void *ctx)
{
    struct engine *e = ctx;
    struct store_spool *sp = NULL;
    char *err = NULL;
    if (e->mailauth) return NULL;
    enum store_status st = store_spool_begin(e->store, &sp, &err);
    if (st != STORE_OK && st != STORE_ERR_NOT_FOUND)
        log_warn("smtp", "cannot spool a message, kept in memory error=\"%s\"", err ? err : "?");
    free(err);
    return sp;
}

static enum smtp_commit_status on_sink_write(void *ctx, void *sink, const void *p, size_t n)
{
    (void)ctx;
    char *err = NULL;
    enum store_status st = store_spool_append(sink, p, n, &err);
    if (st != STORE_OK) log_warn("smtp", "spool write failed error=\"%s\"", err ? err : "?");
    free(err);
    return smtp_status(st);
}

static void on_sink_discard(void *sink)
{
    store_spool_discard(sink);
}

/* A mailauth worker: the checks of one message are done (r NULL: out of memory). */
static void on_checked(void *arg, struct mailauth_result *r)
{
    struct pending_auth *p = arg;
    struct engine *e = p->engine;
    p->result = r;
    pthread_mutex_lock(&e->done_lock);
    p->next = e->auth_done;
    e->auth_done = p;
    pthread_mutex_unlock(&e->done_lock);
    uv_async_send(&e->auth_async);
}

static void count_verdicts(struct metrics_auth_outcomes *o, const struct mailauth_result *r)
{
    const enum mailauth_verdict v[METRICS_AUTH_CHECKS] = {mailauth_result_spf(r), mailauth_result_dkim(r),
                                                          mailauth_result_dmarc(r)};
    for (int c = 0; c < METRICS_AUTH_CHECKS; c++)
        if ((unsigned)v[c] < METRICS_AUTH_VERDICTS)
            atomic_fetch_add_explicit(&o->verdicts[c][v[c]], 1, memory_order_relaxed);
}

/* Loop thread: the verdicts go in front of the message (one copy of its bytes, bounded by
 * --max-message-size), or the policy refuses it. */
static void finish_checked(struct engine *e, struct pending_auth *p)
{
    struct smtp_txn *txn = p->txn;
    struct mailauth_result *r = p->result;
    if (r) {
        const bool spf_fail = e->cfg->spf_reject && mailauth_result_spf(r) == MAILAUTH_FAIL;
        /* p=reject applies to the messages in its pct= sample only (RFC 7489 §6.6.4). */
        const bool dmarc_reject = e->cfg->dmarc_reject && mailauth_result_dmarc(r) == MAILAUTH_FAIL &&
                                  strcmp(mailauth_result_dmarc_applied(r), "reject") == 0;
        log_info("mailauth", "checked id=%s %s dmarc_policy=%s dmarc_applied=%s path=%s ms=%lld%s", txn->id,
                 mailauth_result_summary(r),
                 *mailauth_result_dmarc_policy(r) ? mailauth_result_dmarc_policy(r) : "-",
                 mailauth_result_dmarc_applied(r), mailauth_result_path(r),
                 (long long)mailauth_result_elapsed_ms(r),
                 spf_fail ? " refused=spf" : dmarc_reject ? " refused=dmarc" : "");
        count_verdicts(&e->auth_outcomes, r);
        if (spf_fail || dmarc_reject) {
            atomic_fetch_add_explicit(spf_fail ? &e->auth_outcomes.refused_spf : &e->auth_outcomes.refused_dmarc, 1,
                                      memory_order_relaxed);
            smtp_commit_done(p->commit, spf_fail ? SMTP_COMMIT_SPF_FAIL : SMTP_COMMIT_DMARC_REJECT);
            smtp_txn_free(txn);
            goto out;
        }
        size_t len = 0;
        uint8_t *data = mailauth_rewrite(r, txn->data, txn->len, &len);
        if (data) {
            free(txn->data);
            txn->data = data;
            txn->len = len;
        }
    }
    commit_store(e, p->commit, txn);
out:
    mailauth_result_free(r);
    g_free(p);
}

static void on_auth_done(uv_async_t *h)
{
    struct engine *e = h->data;
    pthread_mutex_lock(&e->done_lock);
    struct pending_auth *list = e->auth_done;
    e->auth_done = NULL;
    pthread_mutex_unlock(&e->done_lock);
    while (list) {
        struct pending_auth *p = list;
        list = p->next;
        finish_checked(e, p);
    }
}

/* Loop thread: a transaction ended with the final dot.  With --sender-auth its checks run first:
 * here when every DNS answer they need is cached and the message is small (no hand-off to a worker
 * and back, which costs more than the checks), else on mailauth's workers within --auth-budget. */
static void on_smtp_commit(void *ctx, struct smtp_commit *commit, struct smtp_txn *txn)
{
    struct engine *e = ctx;
    if (!e->mailauth || !txn->data) { /* no data: spooled (never with --sender-auth, on_sink_open) */
        commit_store(e, commit, txn);
        return;
    }
    struct pending_auth *p = g_new0(struct pending_auth, 1);
    p->engine = e;
    p->commit = commit;
    p->txn = txn;
    struct mailauth_request req = {
        .ip = txn->peer_ip, .helo = txn->helo ? txn->helo : "", .sender = txn->sender,
        .data = txn->data, .len = txn->len, .id = txn->id,
    };
    p->result = mailauth_check_cached(e->mailauth, &req);
    if (p->result) {
        finish_checked(e, p);
        return;
    }
    if (mailauth_submit(e->mailauth, &req, on_checked, p) < 0) {
        g_free(p);
        commit_store(e, commit, txn);
    }
}

static void on_sweeper_stopped(void *ctx)
{
    struct engine *e = ctx;
    /* Nothing else keeps the loop running. */
    uv_close((uv_handle_t *)&e->commits_async, NULL);
    uv_close((uv_handle_t *)&e->auth_async, NULL);
    uv_close((uv_handle_t *)&e->sigterm, NULL);
    uv_close((uv_handle_t *)&e->sigint, NULL);
    uv_close((uv_handle_t *)&e->sighup, NULL);
}

static void on_deliver_stopped(void *ctx)
{
    struct engine *e = ctx;
    if (e->sweeper)
        engine_sweeper_stop(e->sweeper, on_sweeper_stopped, e);
    else
        on_sweeper_stopped(e);
}

static void on_pipeline_stopped(void *ctx)
{
    struct engine *e = ctx;
    /* No worker offers deliveries any more: deliveries in flight finish within the grace. */
    if (e->deliver)
        deliver_stop(e->deliver, (unsigned)e->cfg->shutdown_grace, on_deliver_stopped, e);
    else
        on_deliver_stopped(e);
}

static void on_smtp_stopped(void *ctx)
{
    struct engine *e = ctx;
    /* Every commit has been answered and handed to the pipeline: let it finish. */
    if (e->pipeline)
        engine_pipeline_stop(e->pipeline, (unsigned)e->cfg->shutdown_grace, on_pipeline_stopped, e);
    else
        on_pipeline_stopped(e);
}

/* Loop thread: SPEC §2/§4 "could match".  Postmaster is never asked (the session accepts it). */
static const char *on_check_rcpt(void *ctx, const char *addr)
{
    struct engine *e = ctx;
    if (!e->cfg->reject_unrouted) return NULL;
    struct route_table *t = route_registry_current(e->routes);
    const bool could = route_could_match(t, e->rcpt_matcher, addr);
    const bool limit = could && route_matcher_hit_limit(e->rcpt_matcher);
    route_table_unref(t);
    /* Routing would treat the filter that hit the limit as no match and drop the recipient:
     * say so now, as a temporary failure (the operator may fix the route), not 250. */
    if (limit) {
        char esc[LOG_CLIENT_BYTES_MAX * 4 + 8];
        log_warn("engine", "rcpt match limit rcpt=\"%s\" reason=\"a match_recipient regex hit the PCRE2 limit\"",
                 log_escape(esc, sizeof esc, addr, strlen(addr), LOG_CLIENT_BYTES_MAX));
        return "451 4.3.0 Error: route matching limit reached for this recipient";
    }
    return could ? NULL : "550 5.1.1 No such recipient";
}

/* Loop thread: with --sender-auth, SPF's lookups start now, while the client sends the message
 * (the answers are cached: the check after the final dot finds them). */
static void on_mail_from(void *ctx, const char *peer_ip, const char *helo, const char *sender)
{
    struct engine *e = ctx;
    if (e->mailauth) mailauth_prefetch(e->mailauth, peer_ip, helo, sender);
}

static const struct smtp_server_ops smtp_ops = {
    .commit = on_smtp_commit,
    .check_rcpt = on_check_rcpt,
    .mail_from = on_mail_from,
    .stopped = on_smtp_stopped,
    .sink_open = on_sink_open,
    .sink_write = on_sink_write,
    .sink_discard = on_sink_discard,
};

/* Settings are read once, at start: a SIGHUP (a habit of operators and of some supervisors) must
 * not kill the engine, and says so. */
static void on_sighup(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    log_warn("engine", "SIGHUP ignored: settings are read at start; restart inlet to apply changes");
}

/* The API stops after SMTP's listeners have closed: MHD_stop_daemon waits for its pool threads,
 * and until SMTP has stopped listening a client that connects meanwhile would wait for a
 * greeting instead of being refused. */
static void on_pop3_stopped(void *ctx)
{
    struct engine *e = ctx;

    engine_mailboxes_stop(&e->mailboxes); /* every session has closed */
    smtp_server_stop(e->smtp, (unsigned)e->cfg->shutdown_grace);
    api_server_stop(e->api);
    e->api = NULL;
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct engine *e = h->data;
    if (!e->smtp) return;
    log_info("engine", "stopping signal=%s grace=%llds", signum == SIGTERM ? "SIGTERM" : "SIGINT",
             (long long)e->cfg->shutdown_grace);
    uv_signal_stop(&e->sigterm);
    uv_signal_stop(&e->sigint);
    if (e->pop3) pop3_server_stop(e->pop3, on_pop3_stopped, e); /* maildrops released first */
    else on_pop3_stopped(e);
}

/* First of all: a second engine on this data dir would deliver everything twice. */
static int start_lock(struct engine *e)
{
    char *err = NULL;
    e->lock_fd = lockfile_acquire(e->cfg->data_dir, &err);
    if (e->lock_fd < 0) {
        log_error("engine", "%s", err);
        g_free(err);
        return -1;
    }
    return 0;
}

/* <data-dir>/node-id names the node that ran on this data dir last.  The lock file (start_lock)
 * says that process is gone: whatever it held in the shared database is let go now, so that this
 * run (or another node) takes it at once instead of when its leases run out.  Then the file names
 * this run. */
static void take_over_claims(struct engine *e)
{
    g_autofree char *path = g_build_filename(e->cfg->data_dir, "node-id", NULL);
    g_autofree char *prev = NULL;
    GError *gerr = NULL;
    const char *id = store_node_id(e->store);
    if (store_claims_shared(e->store) && g_file_get_contents(path, &prev, NULL, NULL)) {
        struct store_released n = {0};
        char *err = NULL;
        g_strstrip(prev);
        if (*prev && store_release_claims(e->store, prev, &n, &err) == STORE_OK)
            log_info("engine", "released claims of node=%s (the last run on this data dir) deliveries=%lld "
                               "messages=%lld mailboxes=%lld", prev, (long long)n.deliveries,
                     (long long)n.messages, (long long)n.mailboxes);
        else if (*prev)
            log_warn("engine", "cannot release the claims of node=%s: %s (they run out with their leases)", prev,
                     err ? err : "?");
        free(err);
    }
    g_autofree char *line = g_strdup_printf("%s\n", id);
    if (!g_file_set_contents_full(path, line, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &gerr)) {
        log_warn("engine", "cannot write %s: %s", path, gerr->message);
        g_error_free(gerr);
    }
}

static int start_storage(struct engine *e)
{
    char *err = NULL;
    e->store = store_open(e->cfg->data_dir, e->cfg->database, &err);
    if (!e->store) {
        log_error("engine", "cannot open storage: %s", err);
        free(err);
        return -1;
    }
    store_set_claims(e->store, e->cfg->node_id, e->cfg->lease_seconds);
    log_info("engine", "node id=%s lease=%llds claims=%s", store_node_id(e->store), (long long)e->cfg->lease_seconds,
             store_claims_shared(e->store) ? "shared" : "in-process");
    take_over_claims(e);
    if (store_count_unprocessed(e->store, &e->recovered) != STORE_OK) {
        log_error("engine", "cannot count unprocessed messages");
        return -1;
    }
    /* Committed before this start and not routed yet: the pipeline's first scan routes them. */
    log_info("engine", "recovered=%lld", (long long)e->recovered);
    return 0;
}

/* The watcher's thread (store_watch_routes): another node changed the routes; the whole table is
 * read again and swapped in, as the API does after its own changes.  A failed reload keeps the
 * table (the next change, or the watcher's reconnect, tries again). */
static void on_routes_changed(void *arg, const char *why)
{
    struct engine *e = arg;
    char *err = NULL;
    size_t loaded = 0;
    if (api_routes_load(e->routes, e->store, &loaded, &err) < 0) {
        char esc[1024];
        const char *m = err ? err : "?";
        log_warn("engine", "routes reload failed seen_by=%s error=\"%s\"", why,
                 log_escape(esc, sizeof esc, m, strlen(m), 300));
        g_free(err);
        return;
    }
    log_info("engine", "routes reloaded loaded=%zu seen_by=%s", loaded, why);
}

/* The route table from the store, shared by the API (which replaces it on every change), the
 * pipeline and the RCPT check; then the pipeline, whose first scan is the recovery. */
static int start_routing(struct engine *e)
{
    char *err = NULL;
    size_t loaded = 0;
    e->routes = route_registry_new();
    e->rcpt_matcher = route_matcher_new();
    if (!e->routes || !e->rcpt_matcher) {
        log_error("engine", "out of memory");
        return -1;
    }
    if (api_routes_load(e->routes, e->store, &loaded, &err) < 0) {
        log_error("engine", "cannot load the routes: %s", err ? err : "?");
        g_free(err);
        return -1;
    }
    log_info("engine", "routes loaded=%zu reject_unrouted=%s", loaded, e->cfg->reject_unrouted ? "yes" : "no");
    /* Other nodes' changes (PostgreSQL; nothing on SQLite): the watcher stops in store_close. */
    if (store_watch_routes(e->store, on_routes_changed, e, &err) != STORE_OK) {
        log_error("engine", "cannot watch the routes: %s", err ? err : "?");
        free(err);
        return -1;
    }
    if (loaded == 0 && e->cfg->reject_unrouted && e->cfg->domains.count > 0)
        log_warn("engine", "no routes yet: every recipient but postmaster is refused (550 5.1.1) until a route "
                           "is created (POST /v3/routes) or --reject-unrouted no is given");
    return 0;
}

/* After the deliverer, which takes the deliveries the workers plan. */
static int start_pipeline(struct engine *e)
{
    /* Test hooks (tests/blackbox): hold the workers, so that messages stay 'accepted'; a shorter
     * retry period than PIPELINE_RETRY_SECONDS.  Not settings: nothing in production uses them. */
    const char *pause = getenv("INLET_TEST_PAUSE_PIPELINE");
    const char *retry = getenv("INLET_TEST_RETRY_SECONDS");
    struct pipeline_config pc = {
        .store = e->store,
        .routes = e->routes,
        .deliver = e->deliver,
        .inline_attachments_max = (size_t)e->cfg->inline_attachments_max,
        .default_json = strcmp(e->cfg->webhook_format, "json") == 0,
        .store_ttl = e->cfg->store_ttl,
        .mailbox_ttl = e->cfg->mailbox_ttl,
        .recovered = e->recovered,
        .paused = pause && strcmp(pause, "1") == 0,
        .retry_seconds = retry ? (unsigned)g_ascii_strtoull(retry, NULL, 10) % 3600 : 0,
    };
    e->pipeline = engine_pipeline_start(&e->loop, &pc);
    return 0;
}

/* The keys (SPEC §1): generated into the database on first start unless both are given by
 * settings; the database's are mirrored into <data-dir>/keys.  Only the path is logged. */
static int start_keys(struct engine *e)
{
    char *err = NULL, *path = NULL;
    if (engine_keys_resolve(e->store, e->cfg, true, &e->keys, &err) < 0) {
        log_error("engine", "%s", err);
        g_free(err);
        return -1;
    }
    if (!e->keys.stored_api) {
        log_info("engine", "keys source=settings");
        return 0;
    }
    if (engine_keys_write_file(e->cfg->data_dir, &e->keys, &path, &err) < 0) {
        log_error("engine", "%s", err);
        g_free(err);
        return -1;
    }
    log_info("engine", "keys file=%s", path);
    g_free(path);
    return 0;
}

/* Before the pipeline, which hands it the deliveries it plans. */
static int start_deliveries(struct engine *e)
{
    const struct inlet_config *c = e->cfg;
    struct deliver_config dc = {
        .store = e->store,
        .signing_key = e->keys.signing_key,
        .default_format = c->webhook_format,
        .retry_schedule = c->retry_schedule,
        .retry_count = c->retry_count,
        .timeout = c->webhook_timeout,
        .connect_timeout = c->webhook_connect_timeout,
        .inline_attachments_max = (size_t)c->inline_attachments_max,
        .held_bytes_max = (size_t)c->delivery_memory_max,
        .public_url = api_server_public_url(e->api),
        .relay = c->relay,
        .relay_password = c->relay_password,
        .relay_tls = strcmp(c->relay_tls, "require") == 0          ? DELIVER_RELAY_TLS_REQUIRE
                     : strcmp(c->relay_tls, "cleartext-auth") == 0 ? DELIVER_RELAY_TLS_CLEARTEXT_AUTH
                                                                   : DELIVER_RELAY_TLS_OPPORTUNISTIC,
        .bounce_address = c->bounce_address,
        .hostname = c->hostname,
    };
    e->deliver = deliver_start(&e->loop, &dc);
    if (!e->deliver) {
        log_error("engine", "cannot start the deliveries (libcurl)");
        return -1;
    }
    /* Test hook: a shorter sweep period than SWEEP_SECONDS. */
    const char *period = getenv("INLET_TEST_SWEEP_SECONDS");
    struct sweeper_config sc = {
        .store = e->store,
        .event_ttl = c->event_ttl,
        .failed_retention = c->failed_retention,
        .period_seconds = period ? (unsigned)g_ascii_strtoull(period, NULL, 10) % 3600 : 0,
    };
    e->sweeper = engine_sweeper_start(&e->loop, &sc);
    return 0;
}

static char *hook_metrics(void *arg)
{
    struct engine *e = arg;
    struct metrics_sources src = {
        .store = e->store,
        .pipeline = e->pipeline,
        .deliver = e->deliver,
        .smtp = atomic_load(&e->smtp_ready) ? e->smtp : NULL,
        .mailauth = atomic_load(&e->smtp_ready) ? e->mailauth : NULL, /* set before SMTP starts */
        .auth = &e->auth_outcomes,
    };
    return engine_metrics_render(&src);
}

static void hook_deliveries_due(void *arg)
{
    struct engine *e = arg;
    deliver_kick(e->deliver);
}

static int start_api(struct engine *e)
{
    struct inlet_config *cfg = e->cfg;
    char *err = NULL;
    struct api_config api_cfg = {
        .listen = (const char *const *)cfg->http_listen.items,
        .nlisten = cfg->http_listen.count,
        .data_dir = cfg->data_dir,
        .min_free_disk = cfg->min_free_disk,
        .api_key = e->keys.api_key,
        .routes = e->routes,
        .route_quota = cfg->route_quota,
        .public_url = cfg->public_url,
        .console_session_ttl = cfg->console_session_ttl,
        .domains = (const char *const *)cfg->domains.items,
        .ndomains = cfg->domains.count,
        .hooks_arg = e,
        .deliveries_due = hook_deliveries_due,
        .metrics = hook_metrics,
    };
    e->api = api_server_start(&api_cfg, e->store, &err);
    if (!e->api) {
        log_error("engine", "%s", err);
        g_free(err);
        return -1;
    }
    return 0;
}

/* Before SMTP: every message's checks run on its workers. */
static int start_mailauth(struct engine *e)
{
    const struct inlet_config *c = e->cfg;
    if (!c->sender_auth) return 0;
    char *err = NULL;
    struct mailauth_config mc = {
        .authserv_id = c->hostname,
        .dns_server = c->dns_server,
        .psl_file = c->public_suffix_list,
        .budget_ms = (unsigned)c->auth_budget,
    };
    e->mailauth = mailauth_start(&mc, &err);
    if (!e->mailauth) {
        log_error("engine", "cannot start sender authentication: %s", err ? err : "out of memory");
        free(err);
        return -1;
    }
    return 0;
}

/* Mailboxes for POP3 pollers (SPEC §9), when a listener is given.  Locks left by a process that
 * died are released first where no other node can hold one (store_maildrop_unlock_stale); a
 * session's lock is a lease of --lease-seconds, renewed while it lives (engine/mailboxes.c). */
static int start_pop3(struct engine *e)
{
    struct inlet_config *cfg = e->cfg;
    char *err = NULL;

    if (!cfg->pop3_listen.count && !cfg->pop3s_listen.count) return 0;
    if (store_maildrop_unlock_stale(e->store, &err) != STORE_OK) goto fail;
    engine_mailboxes_start(&e->mailboxes, &e->loop, e->store, cfg->lease_seconds);
    struct pop3_server_config pc = {
        .listen = (const char *const *)cfg->pop3_listen.items,
        .nlisten = cfg->pop3_listen.count,
        .listen_tls = (const char *const *)cfg->pop3s_listen.items,
        .nlisten_tls = cfg->pop3s_listen.count,
        .tls_cert = cfg->tls_cert && *cfg->tls_cert ? cfg->tls_cert : NULL,
        .tls_key = cfg->tls_key && *cfg->tls_key ? cfg->tls_key : NULL,
        .plaintext_login = cfg->pop3_plaintext_login,
        .idle_timeout_s = (unsigned)cfg->pop3_timeout,
        .hooks = engine_mailbox_hooks(&e->mailboxes),
    };
    e->pop3 = pop3_server_start(&e->loop, &pc, &err);
    if (e->pop3) return 0;
fail:
    log_error("engine", "pop3: %s", err ? err : "cannot start");
    g_free(err);
    return -1;
}

/* Last: from here on mail comes in. */
static int start_smtp(struct engine *e)
{
    struct inlet_config *cfg = e->cfg;
    char *err = NULL;
    struct smtp_server_config smtp_cfg = {
        .session = {
            .hostname = cfg->hostname,
            .domains = cfg->domain_set,
            .max_message_size = (size_t)cfg->max_message_size,
            .max_recipients = (unsigned)cfg->max_recipients,
            .max_hops = (unsigned)cfg->max_hops,
            .memory_per_message = (size_t)cfg->smtp_memory_per_message,
        },
        .listen = (const char *const *)cfg->smtp_listen.items,
        .nlisten = cfg->smtp_listen.count,
        .max_connections = (unsigned)cfg->max_connections,
        .max_connections_per_ip = (unsigned)cfg->max_connections_per_ip,
        .ipv6_prefix = (unsigned)cfg->ipv6_prefix_per_client,
        .timeout_seconds = (unsigned)cfg->smtp_timeout,
        .data_timeout_seconds = (unsigned)cfg->data_timeout,
        .inflight_bytes_max = cfg->smtp_memory,
        .inflight_bytes_per_client = cfg->smtp_memory_per_client,
        .postmaster_per_hour = (unsigned)cfg->postmaster_rate,
        .tls_cert = cfg->tls_cert && *cfg->tls_cert ? cfg->tls_cert : NULL,
        .tls_key = cfg->tls_key && *cfg->tls_key ? cfg->tls_key : NULL,
    };
    /* Test hook (tests/blackbox/test_smtp.py): a small socket send buffer. */
    const char *sndbuf = getenv("INLET_TEST_SMTP_SNDBUF");
    if (sndbuf) smtp_cfg.test_sndbuf = (int)(g_ascii_strtoull(sndbuf, NULL, 10) % (1u << 20));
    e->smtp = smtp_server_start(&e->loop, &smtp_cfg, &smtp_ops, e, &err);
    if (!e->smtp) goto fail;
    atomic_store(&e->smtp_ready, true); /* the metrics hook (API threads) may read it now */
    return 0;
fail:
    log_error("engine", "%s", err);
    g_free(err);
    return -1;
}

int engine_serve(struct inlet_config *cfg)
{
    struct engine e = {.cfg = cfg, .lock_fd = -1};
    int status = 1;
    /* A client that closes early must not kill us; libcurl (deliveries) wants it too. */
    signal(SIGPIPE, SIG_IGN);
    if (cfg->domains.count == 0)
        log_warn("engine", "no --domain given: every recipient will be refused (550 5.7.1)");
    message_lib_init(); /* before any thread that parses exists */
    pthread_mutex_init(&e.done_lock, NULL);
    uv_loop_init(&e.loop);
    uv_async_init(&e.loop, &e.commits_async, on_commits_done);
    e.commits_async.data = &e;
    uv_async_init(&e.loop, &e.auth_async, on_auth_done);
    e.auth_async.data = &e;
    uv_signal_init(&e.loop, &e.sigterm);
    uv_signal_init(&e.loop, &e.sigint);
    uv_signal_init(&e.loop, &e.sighup);
    e.sigterm.data = e.sigint.data = e.sighup.data = &e;
    uv_signal_start(&e.sighup, on_sighup, SIGHUP);

    /* The API is up before the deliverer, which builds storage URLs from its address. */
    if (start_lock(&e) < 0 || start_storage(&e) < 0 || start_keys(&e) < 0 || start_routing(&e) < 0 ||
        start_api(&e) < 0 || start_deliveries(&e) < 0 || start_pipeline(&e) < 0 || start_mailauth(&e) < 0 || start_pop3(&e) < 0 || start_smtp(&e) < 0) {
        api_server_stop(e.api);
        e.api = NULL;
        if (e.pop3) pop3_server_stop(e.pop3, NULL, NULL);
        engine_mailboxes_stop(&e.mailboxes);
        on_smtp_stopped(&e); /* SMTP is the last to start: it did not */
        uv_run(&e.loop, UV_RUN_DEFAULT);
        goto out;
    }
    uv_signal_start(&e.sigterm, on_signal, SIGTERM);
    uv_signal_start(&e.sigint, on_signal, SIGINT);
    log_info("engine", "ready version=%s domains=%zu", INLET_VERSION, cfg->domains.count);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    status = 0;
out:
    smtp_server_free(e.smtp);
    pop3_server_free(e.pop3);
    engine_mailboxes_free(&e.mailboxes);
    mailauth_stop(e.mailauth); /* every commit was answered: no job is left */
    engine_pipeline_free(e.pipeline); /* its workers are joined */
    deliver_free(e.deliver);
    engine_sweeper_free(e.sweeper);
    store_close(e.store); /* after the loop: every commit has been answered and routed or left */
    route_registry_free(e.routes); /* after the API and the workers */
    route_matcher_free(e.rcpt_matcher);
    engine_keys_clear(&e.keys);
    uv_loop_close(&e.loop);
    pthread_mutex_destroy(&e.done_lock);
    message_lib_shutdown();
    lockfile_release(e.lock_fd); /* last: the store is closed */
    if (status == 0) log_info("engine", "stopped");
    return status;
}
