/* smtp/server.c — listeners and connections on a libuv loop (see smtp.h).
 *
 * The server owns one `struct conn` per client: its socket, its idle timer and its session.  All
 * reads go through one loop-wide buffer (SMTP_READ_CHUNK): libuv asks for a buffer only when a
 * socket is readable and hands the bytes to us at once, so an idle connection holds no buffer at
 * all — just the conn, the session and libuv's handles.
 *
 * A commit outlives its connection: `struct smtp_commit` keeps the in-flight budget reservation
 * and a pointer back to the conn that is cleared when the conn closes, so a 250 that arrives
 * after the client left is dropped, never written to a freed session.
 *
 * Clients: connections are counted, and message bytes, postmaster recipients and route-check
 * time rationed, per client — an address, or an IPv6 /N (util/net.h net_client_key) — in a
 * `struct client` that lives while it has a connection, a commit in flight or an allowance still
 * refilling, so that one client cannot take the whole DATA budget and leave others 452, nor the
 * loop's time by reconnecting.
 *
 * STARTTLS: the SSL_CTX is built once at start.  A connection gets its TLS state (tls.c, memory
 * BIOs) only when its client says STARTTLS, so a plaintext connection holds none.  From then on
 * socket bytes go through tls_pump(): ciphertext into the TLS object, plaintext out of it (one
 * loop-wide buffer again) into the session; the session's replies are encrypted on their way out.
 * The 220 to STARTTLS is the last plaintext written; every byte read after it is TLS. */
#include "smtp/smtp.h"

#include <errno.h>
#include <glib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "util/tls.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/net.h"

struct conn;

/* Accepts between two sweeps of the client table (client_sweep). */
#define CLIENT_SWEEP_EVERY 1024

/* One client (see the top). */
struct client {
    char key[NET_CLIENT_KEY_MAX];
    unsigned conns;           /* open connections, refused ones included until they close */
    unsigned commits;         /* commits in flight (they hold part of inflight_bytes) */
    int64_t inflight_bytes;   /* its part of the DATA budget */
    double postmaster_tokens; /* allowance: refills at postmaster_per_hour, at most that many */
    uint64_t postmaster_at_ms; /* loop time of the last refill */
    double rcpt_check_ms;     /* loop time left for its route checks (SMTP_RCPT_CHECK_BUDGET_MS) */
    uint64_t rcpt_check_at_ms; /* loop time of the last refill */
};

struct smtp_commit {
    struct smtp_server *srv;
    struct conn *conn;      /* NULL once the connection has closed */
    struct client *client;  /* outlives the conn while the commit holds bytes */
    size_t reserved;        /* in-flight bytes the txn held; given back when the commit ends */
};

/* A connection's TLS, once its client said STARTTLS. */
enum tls_phase {
    TLS_OFF,       /* plaintext (c->tls is NULL) */
    TLS_ARMED,     /* STARTTLS accepted: the 220 still goes out in plaintext */
    TLS_HANDSHAKE, /* 220 written: every byte read is the handshake */
    TLS_ON,        /* handshake done: plaintext ⇄ TLS records */
};

struct conn {
    struct conn *prev, *next;
    struct smtp_server *srv;
    uint64_t id;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int open_handles;
    struct smtp_session *session; /* NULL for a connection refused at accept */
    char ip[64];
    char *pending; /* input the session could not take yet (waiting for a commit or a write) */
    size_t pending_len;
    struct smtp_commit *commit;
    struct tls *tls; /* NULL until STARTTLS; freed with the conn */
    struct client *client; /* NULL only when accept failed */
    uint64_t data_deadline_ms; /* while in DATA: loop time by which it must end; else 0 */
    unsigned writes_in_flight;
    uint64_t write_progress_ms; /* loop time of the last write that completed, or of the first
                                   queued while none was in flight: a write stall is measured
                                   from it */
    bool reading, closing, in_feed;
    uint8_t tls_phase; /* enum tls_phase; in the padding: idle conns are counted by the thousand */
};

struct smtp_server {
    uv_loop_t *loop;
    struct smtp_server_config cfg;
    const struct smtp_server_ops *ops;
    void *ctx;
    uv_tcp_t listeners[LIMIT_LISTENERS_MAX];
    size_t nlisteners, listeners_open;
    struct conn *conns;
    unsigned nconns;
    GHashTable *clients; /* client key → struct client (owned) */
    int64_t inflight_bytes;
    unsigned commits_in_flight;
    uint64_t next_conn_id;
    bool stopping, stopped_called, grace_timer_open;
    uv_timer_t grace_timer;
    struct tls_ctx *tls_ctx; /* NULL: STARTTLS not offered */
    struct smtp_session_ops session_ops; /* every session's (session_ops_init) */
    char *over_budget_reply;      /* the 421 of a client past SMTP_RCPT_CHECK_BUDGET_MS */
    char read_buf[SMTP_READ_CHUNK];
    bool read_buf_lent;
    char tls_plain[SMTP_TLS_PLAIN_CHUNK]; /* decrypted input, handed to one session at a time */
    /* Metrics (written on the loop, read by API threads). */
    atomic_ullong n_connections, n_open, n_tls;
    atomic_ullong n_replies[600];
};

/* Counts the final line of every reply in `out` (SMTP: "250 ...", not "250-..."). */
static void count_replies(struct smtp_server *srv, const char *out, size_t len)
{
    for (size_t i = 0; i < len;) {
        const char *line = out + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t n = nl ? (size_t)(nl - line) + 1 : len - i;
        if (n >= 4 && g_ascii_isdigit(line[0]) && g_ascii_isdigit(line[1]) && g_ascii_isdigit(line[2]) &&
            (line[3] == ' ' || line[3] == '\r')) {
            int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
            if (code >= 200 && code < 600) atomic_fetch_add_explicit(&srv->n_replies[code], 1, memory_order_relaxed);
        }
        i += n;
    }
}

void smtp_server_get_stats(struct smtp_server *srv, struct smtp_server_stats *out)
{
    out->connections = atomic_load_explicit(&srv->n_connections, memory_order_relaxed);
    out->connections_open = atomic_load_explicit(&srv->n_open, memory_order_relaxed);
    out->tls_started = atomic_load_explicit(&srv->n_tls, memory_order_relaxed);
    for (size_t i = 0; i < 600; i++) out->replies[i] = atomic_load_explicit(&srv->n_replies[i], memory_order_relaxed);
}

struct write_req {
    uv_write_t req;
    char *data;
    struct conn *conn;
};

static void conn_close(struct conn *c);
static void conn_flush(struct conn *c);
static void conn_resume(struct conn *c);

/* Replies (or TLS records) that libuv holds because the client does not read them.  Above
 * SMTP_OUTPUT_MAX the connection stops reading (conn_hold_input) until on_write sees them drain:
 * a client that pipelines commands and never reads the replies would otherwise make us queue
 * replies without bound (each read of 64 KiB of "EHLO x" makes 0.9 MiB of replies). */
static bool conn_output_full(const struct conn *c)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) > SMTP_OUTPUT_MAX;
}

static void conn_stop_reading(struct conn *c)
{
    if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* ---------------------------------------------------------------------------------------------
 * Session callbacks. */

static void session_commit(void *ctx, struct smtp_txn *txn)
{
    struct conn *c = ctx;
    struct smtp_server *srv = c->srv;
    struct smtp_commit *commit = g_new0(struct smtp_commit, 1);
    commit->srv = srv;
    commit->conn = c;
    commit->client = c->client;
    c->client->commits++;
    commit->reserved = txn->reserved;
    txn->reserved = 0; /* the commit holds it now */
    c->commit = commit;
    srv->commits_in_flight++;
    srv->ops->commit(srv->ctx, commit, txn);
}

/* A refilling allowance: `left` grows by `per_s` a second since `at`, up to `cap`. */
static double bucket_level(double left, uint64_t at, uint64_t now, double per_s, double cap)
{
    const double level = left + (double)(now - at) * per_s / 1000.0;
    return level < cap ? level : cap;
}

/* The engine's route check, timed against the client's allowance of loop time: a client that
 * has spent it is ended rather than allowed to stall everyone else (reconnecting does not help,
 * the allowance is the client's). */
static const char *session_check_rcpt(void *ctx, const char *addr)
{
    struct conn *c = ctx;
    struct smtp_server *srv = c->srv;
    struct client *cl = c->client;
    if (!srv->ops->check_rcpt) return NULL;
    const uint64_t now = uv_now(srv->loop);
    cl->rcpt_check_ms = bucket_level(cl->rcpt_check_ms, cl->rcpt_check_at_ms, now, SMTP_RCPT_CHECK_REFILL_MS,
                                     SMTP_RCPT_CHECK_BUDGET_MS);
    cl->rcpt_check_at_ms = now;
    if (cl->rcpt_check_ms <= 0) return srv->over_budget_reply;
    const uint64_t t0 = uv_hrtime();
    const char *refused = srv->ops->check_rcpt(srv->ctx, addr);
    cl->rcpt_check_ms -= (double)(uv_hrtime() - t0) / 1e6;
    if (cl->rcpt_check_ms <= 0)
        log_warn("smtp", "conn=%llu rcpt check budget spent ip=%s client=%s budget_ms=%d refill_ms_per_s=%d",
                 (unsigned long long)c->id, c->ip, cl->key, SMTP_RCPT_CHECK_BUDGET_MS, SMTP_RCPT_CHECK_REFILL_MS);
    return refused;
}

/* The DATA budget: the whole server's, and the client's share of it. */
static bool session_reserve(void *ctx, ssize_t delta)
{
    struct conn *c = ctx;
    struct smtp_server *srv = c->srv;
    struct client *cl = c->client;
    if (delta > 0 && srv->inflight_bytes + delta > srv->cfg.inflight_bytes_max) return false;
    if (delta > 0 && cl->inflight_bytes + delta > srv->cfg.inflight_bytes_per_client) {
        log_info("smtp", "conn=%llu client share full ip=%s client=%s held_bytes=%lld", (unsigned long long)c->id,
                 c->ip, cl->key, (long long)cl->inflight_bytes);
        return false;
    }
    srv->inflight_bytes += delta;
    cl->inflight_bytes += delta;
    return true;
}

/* Postmaster recipients skip the route check (RFC 5321 §4.5.1): a token bucket per client. */
static const char *session_check_postmaster(void *ctx)
{
    struct conn *c = ctx;
    struct client *cl = c->client;
    const double rate = c->srv->cfg.postmaster_per_hour;
    if (rate <= 0) return NULL;
    const uint64_t now = uv_now(c->srv->loop);
    cl->postmaster_tokens = bucket_level(cl->postmaster_tokens, cl->postmaster_at_ms, now, rate / 3600.0, rate);
    cl->postmaster_at_ms = now;
    if (cl->postmaster_tokens >= 1) {
        cl->postmaster_tokens -= 1;
        return NULL;
    }
    log_info("smtp", "conn=%llu postmaster rate reached ip=%s client=%s per_hour=%u", (unsigned long long)c->id,
             c->ip, cl->key, c->srv->cfg.postmaster_per_hour);
    return "450 4.7.1 Error: too much mail for postmaster from this client, try again later";
}

/* The session accepted STARTTLS: the TLS state is made now, used after the 220 is written. */
static int session_starttls(void *ctx)
{
    struct conn *c = ctx;
    if (!c->srv->tls_ctx || c->tls) return -ENOTSUP;
    c->tls = tls_new(c->srv->tls_ctx);
    if (!c->tls) return -ENOMEM;
    c->tls_phase = TLS_ARMED;
    return 0;
}

/* DATA past cfg.session.memory_per_message: the engine's sink. */
static void *session_sink_open(void *ctx)
{
    struct conn *c = ctx;
    return c->srv->ops->sink_open(c->srv->ctx);
}

static enum smtp_commit_status session_sink_write(void *ctx, void *sink, const void *p, size_t n)
{
    struct conn *c = ctx;
    return c->srv->ops->sink_write(c->srv->ctx, sink, p, n);
}

static void session_mail_from(void *ctx, const char *peer_ip, const char *helo, const char *sender)
{
    struct conn *c = ctx;
    c->srv->ops->mail_from(c->srv->ctx, peer_ip, helo, sender);
}

/* The sessions' ops (smtp_server_start): STARTTLS with a certificate, the sink when the engine
 * gives one, MAIL FROM when the engine asks. */
static void session_ops_init(struct smtp_server *srv)
{
    srv->session_ops = (struct smtp_session_ops){
        .commit = session_commit,
        .check_rcpt = session_check_rcpt,
        .check_postmaster = session_check_postmaster,
        .reserve = session_reserve,
        .starttls = srv->tls_ctx ? session_starttls : NULL,
        .mail_from = srv->ops->mail_from ? session_mail_from : NULL,
    };
    if (srv->ops->sink_open && srv->ops->sink_write && srv->ops->sink_discard) {
        srv->session_ops.sink_open = session_sink_open;
        srv->session_ops.sink_write = session_sink_write;
        srv->session_ops.sink_discard = srv->ops->sink_discard;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Clients. */

static struct client *client_get(struct smtp_server *srv, const char *key)
{
    struct client *cl = g_hash_table_lookup(srv->clients, key);
    if (cl) return cl;
    cl = g_new0(struct client, 1);
    snprintf(cl->key, sizeof cl->key, "%s", key);
    cl->postmaster_tokens = srv->cfg.postmaster_per_hour;
    cl->postmaster_at_ms = uv_now(srv->loop);
    cl->rcpt_check_ms = SMTP_RCPT_CHECK_BUDGET_MS;
    cl->rcpt_check_at_ms = cl->postmaster_at_ms;
    g_hash_table_insert(srv->clients, cl->key, cl);
    return cl;
}

/* Whether a client's allowances (postmaster, route-check time) have refilled by now: forgetting
 * it then loses nothing. */
static bool client_allowance_full(const struct smtp_server *srv, const struct client *cl)
{
    const uint64_t now = uv_now(srv->loop);
    if (bucket_level(cl->rcpt_check_ms, cl->rcpt_check_at_ms, now, SMTP_RCPT_CHECK_REFILL_MS,
                     SMTP_RCPT_CHECK_BUDGET_MS) < SMTP_RCPT_CHECK_BUDGET_MS)
        return false;
    const double rate = srv->cfg.postmaster_per_hour;
    return rate <= 0 || bucket_level(cl->postmaster_tokens, cl->postmaster_at_ms, now, rate / 3600.0, rate) >= rate;
}

/* Forgets a client with nothing open.  One whose allowances are still refilling stays
 * (reconnecting must not reset it) until client_sweep finds it full. */
static void client_release(struct smtp_server *srv, struct client *cl)
{
    if (!cl || cl->conns > 0 || cl->commits > 0) return;
    if (client_allowance_full(srv, cl)) g_hash_table_remove(srv->clients, cl->key);
}

static gboolean client_idle_and_full(gpointer key, gpointer value, gpointer srv)
{
    struct client *cl = value;
    return cl->conns == 0 && cl->commits == 0 && client_allowance_full(srv, cl);
}

/* Clients kept only for their allowances, dropped once they have refilled: run every so many
 * accepts, so the table stays within the clients seen in the last hour. */
static void client_sweep(struct smtp_server *srv)
{
    g_hash_table_foreach_remove(srv->clients, client_idle_and_full, srv);
}

/* ---------------------------------------------------------------------------------------------
 * Stopping. */

static void maybe_stopped(struct smtp_server *srv)
{
    if (!srv->stopping || srv->stopped_called) return;
    if (srv->nconns > 0 || srv->commits_in_flight > 0 || srv->listeners_open > 0) return;
    if (srv->grace_timer_open) {
        uv_timer_stop(&srv->grace_timer);
        uv_close((uv_handle_t *)&srv->grace_timer, NULL);
        srv->grace_timer_open = false;
    }
    srv->stopped_called = true;
    log_info("smtp", "stopped");
    if (srv->ops->stopped) srv->ops->stopped(srv->ctx);
}

void smtp_commit_done(struct smtp_commit *commit, enum smtp_commit_status status)
{
    struct smtp_server *srv = commit->srv;
    struct conn *c = commit->conn;
    srv->inflight_bytes -= (int64_t)commit->reserved;
    commit->client->inflight_bytes -= (int64_t)commit->reserved;
    commit->client->commits--;
    srv->commits_in_flight--;
    client_release(srv, commit->client);
    g_free(commit);
    if (c) {
        c->commit = NULL;
        smtp_session_commit_done(c->session, status);
        /* Inside feed (a synchronous commit) the caller flushes and resumes itself. */
        if (!c->in_feed) {
            conn_flush(c);
            conn_resume(c);
        }
    }
    maybe_stopped(srv);
}

/* ---------------------------------------------------------------------------------------------
 * Connection I/O. */

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0) return;
    struct smtp_server *srv = c->srv;
    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->nconns--;
    atomic_store_explicit(&srv->n_open, srv->nconns, memory_order_relaxed);
    log_debug("smtp", "conn=%llu disconnected ip=%s", (unsigned long long)c->id, c->ip);
    smtp_session_free(c->session); /* gives back its DATA reservation: before the client goes */
    if (c->client) {
        c->client->conns--;
        client_release(srv, c->client);
    }
    tls_free(c->tls);
    g_free(c->pending);
    g_free(c);
    maybe_stopped(srv);
}

static void conn_close(struct conn *c)
{
    if (c->open_handles == 0 || uv_is_closing((uv_handle_t *)&c->tcp)) return;
    if (c->commit) c->commit->conn = NULL; /* the reply, when it comes, has nowhere to go */
    c->commit = NULL;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->conn;
    g_free(w->data);
    g_free(w);
    c->writes_in_flight--;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    c->write_progress_ms = uv_now(c->srv->loop);
    if (status < 0 || (c->closing && c->writes_in_flight == 0)) {
        conn_close(c);
        return;
    }
    if (!c->reading && !conn_output_full(c)) conn_resume(c); /* backpressure may have stopped input */
}

/* Writes `take_data` (g_malloc'd or malloc'd: both end in free()) in order after what is queued.
 * Nothing queued (the common case: one reply batch per read): one write(2) now, which usually
 * takes it all, with no request to allocate and no change to the socket's epoll interest (a
 * queued uv_write re-arms it after every reply); what it does not take is queued.  Not while
 * input waits in c->pending: the session stopped taking it until its replies are out, and
 * on_write is what feeds it again. */
static void conn_write(struct conn *c, char *take_data, size_t len)
{
    if (c->writes_in_flight == 0) c->write_progress_ms = uv_now(c->srv->loop);
    if (c->writes_in_flight == 0 && !c->pending) {
        uv_buf_t now = uv_buf_init(take_data, (unsigned)len);
        const int n = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
        if (n == (int)len) {
            g_free(take_data);
            if (c->closing) conn_close(c); /* as on_write would: the last words are out */
            return;
        }
        if (n > 0) {
            memmove(take_data, take_data + n, len - (size_t)n);
            len -= (size_t)n;
        } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            g_free(take_data);
            conn_close(c);
            return;
        }
    }
    struct write_req *w = g_new0(struct write_req, 1);
    w->data = take_data;
    w->conn = c;
    uv_buf_t buf = uv_buf_init(take_data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write) < 0) {
        g_free(take_data);
        g_free(w);
        conn_close(c);
        return;
    }
    c->writes_in_flight++;
}

/* Stops reading; the connection closes once what is queued has been written. */
static void conn_close_after_writes(struct conn *c)
{
    c->closing = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
    if (c->writes_in_flight == 0) conn_close(c);
}

/* Sends whatever ciphertext the TLS object has produced (handshake, records, alerts). */
static void tls_send(struct conn *c)
{
    size_t len = 0;
    char *out = tls_take_output(c->tls, &len);
    if (out) conn_write(c, out, len);
}

static void tls_failed(struct conn *c, const char *what, const char *why)
{
    log_info("smtp", "conn=%llu tls %s failed ip=%s reason=\"%s\"", (unsigned long long)c->id, what,
             c->ip, why);
    tls_send(c); /* the alert, if OpenSSL made one */
    conn_close_after_writes(c);
}

static void conn_flush(struct conn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp) || c->closing) return;
    size_t len = 0;
    char *out = smtp_session_take_output(c->session, &len);
    if (out) count_replies(c->srv, out, len);
    if (out && c->tls_phase == TLS_ON) {
        char why[256];
        int rc = tls_write(c->tls, out, len, why, sizeof why);
        free(out);
        if (rc < 0) {
            tls_failed(c, "write", why);
            return;
        }
        tls_send(c);
    } else if (out && c->tls_phase == TLS_HANDSHAKE) {
        free(out); /* the session says nothing during the handshake; never plaintext now */
    } else if (out) {
        conn_write(c, out, len);
    }
    /* The 220 to STARTTLS has just been queued in plaintext: what is read from now on is TLS. */
    if (c->tls_phase == TLS_ARMED) c->tls_phase = TLS_HANDSHAKE;
    if (smtp_session_closing(c->session)) {
        if (c->tls_phase == TLS_ON) {
            tls_shutdown(c->tls);
            tls_send(c);
        }
        conn_close_after_writes(c);
    }
}

/* Feeds bytes to the session; whatever it cannot take now is kept in c->pending and reading
 * stops until conn_resume(). */
/* --data-timeout: the 354 starts the clock, and bytes trickling in (which keep the idle timer
 * quiet) do not stop it.  Otherwise one byte every few seconds holds a DATA buffer — and the
 * client's share of the budget — for as long as the client likes. */
static void conn_track_data(struct conn *c)
{
    if (!smtp_session_in_data(c->session)) c->data_deadline_ms = 0;
    else if (c->data_deadline_ms == 0)
        c->data_deadline_ms = uv_now(c->srv->loop) + (uint64_t)c->srv->cfg.data_timeout_seconds * 1000;
}

static bool conn_data_expired(struct conn *c)
{
    if (c->data_deadline_ms == 0 || uv_now(c->srv->loop) < c->data_deadline_ms) return false;
    log_info("smtp", "conn=%llu data timeout ip=%s seconds=%u", (unsigned long long)c->id, c->ip,
             c->srv->cfg.data_timeout_seconds);
    c->data_deadline_ms = 0;
    smtp_session_timeout(c->session); /* 421 4.4.2; the buffer and its reservation go */
    conn_flush(c);
    return true;
}

static void conn_feed(struct conn *c, const char *data, size_t len)
{
    c->in_feed = true;
    size_t used = smtp_session_feed(c->session, data, len);
    c->in_feed = false;
    conn_track_data(c);
    if (used < len && !smtp_session_closing(c->session)) {
        char *rest = g_malloc(len - used);
        memcpy(rest, data + used, len - used);
        g_free(c->pending);
        c->pending = rest;
        c->pending_len = len - used;
        conn_stop_reading(c);
    }
    conn_flush(c);
    if (conn_output_full(c)) conn_stop_reading(c); /* on_write resumes */
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void tls_pump(struct conn *c);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    struct smtp_server *srv = c->srv;
    /* One read at a time on this loop, consumed before the next alloc: one buffer serves all. */
    srv->read_buf_lent = true;
    *buf = uv_buf_init(srv->read_buf, sizeof srv->read_buf);
}

static void conn_resume(struct conn *c)
{
    if (c->closing || uv_is_closing((uv_handle_t *)&c->tcp) || conn_output_full(c)) return;
    if (c->pending) {
        char *data = c->pending;
        size_t len = c->pending_len;
        c->pending = NULL;
        c->pending_len = 0;
        conn_feed(c, data, len); /* may put part of it back into c->pending */
        g_free(data);
        if (c->pending || c->closing || conn_output_full(c)) return;
    }
    if (c->tls_phase == TLS_ON) {
        tls_pump(c); /* records already received but not yet decrypted */
        if (c->pending || c->closing || conn_output_full(c)) return;
    }
    if (!c->reading && !smtp_session_committing(c->session)) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = true;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    c->srv->read_buf_lent = false;
    if (nread == 0) return;
    if (nread < 0) {
        if (c->tls_phase == TLS_HANDSHAKE)
            log_info("smtp", "conn=%llu tls handshake failed ip=%s reason=\"%s\"", (unsigned long long)c->id,
                     c->ip, uv_strerror((int)nread));
        else
            log_debug("smtp", "conn=%llu read ended: %s", (unsigned long long)c->id, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    uv_timer_again(&c->timer);
    if (conn_data_expired(c)) return;
    if (c->tls_phase == TLS_HANDSHAKE || c->tls_phase == TLS_ON) {
        if (tls_push(c->tls, buf->base, (size_t)nread) < 0) {
            tls_failed(c, "read", "out of memory");
            return;
        }
        tls_pump(c);
        return;
    }
    conn_feed(c, buf->base, (size_t)nread);
}

/* The handshake is done: the session starts over under TLS (RFC 3207 §4.2). */
static void tls_established(struct conn *c)
{
    char desc[SMTP_TLS_DESC_MAX];
    tls_describe(c->tls, desc, sizeof desc);
    c->tls_phase = TLS_ON;
    atomic_fetch_add_explicit(&c->srv->n_tls, 1, memory_order_relaxed);
    log_info("smtp", "conn=%llu tls started ip=%s tls=%s", (unsigned long long)c->id, c->ip, desc);
    smtp_session_tls_started(c->session, desc);
}

/* Moves TLS input on: the handshake while it lasts, then decrypted records into the session,
 * until the TLS object needs more ciphertext or the session cannot take more (c->pending, which
 * stops reading the socket: the ciphertext left in the TLS object is then at most one read). */
static void tls_pump(struct conn *c)
{
    char why[256];
    struct smtp_server *srv = c->srv;
    if (c->tls_phase == TLS_HANDSHAKE) {
        int rc = tls_handshake(c->tls, why, sizeof why);
        if (rc < 0) {
            tls_failed(c, "handshake", why);
            return;
        }
        tls_send(c);
        if (rc == 0) return;
        tls_established(c);
    }
    while (!c->pending && !c->closing && !smtp_session_committing(c->session) &&
           !conn_output_full(c) && !uv_is_closing((uv_handle_t *)&c->tcp)) {
        ssize_t n = tls_read(c->tls, srv->tls_plain, sizeof srv->tls_plain, why, sizeof why);
        if (n == 0) break;
        if (n < 0) {
            log_debug("smtp", "conn=%llu tls read ended: %s", (unsigned long long)c->id, why);
            tls_send(c);
            conn_close_after_writes(c);
            return;
        }
        conn_feed(c, srv->tls_plain, (size_t)n); /* flushes the replies, encrypted */
    }
    if (c->closing) return;
    conn_flush(c);
    if (!c->closing) tls_send(c); /* session tickets, a key update, with no reply to carry them */
    /* While a commit is in flight or the output is full nothing is decrypted: stop reading, so
     * that the ciphertext waiting in the TLS object stays within one read (conn_resume and
     * on_write start again). */
    if (smtp_session_committing(c->session) || conn_output_full(c)) conn_stop_reading(c);
}

/* Whether our writes have made no progress for a whole timeout: the client stopped reading.  A
 * 421 would only queue behind them, so the connection is closed at once instead. */
static bool conn_write_stalled(const struct conn *c, uint64_t timeout_ms)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) > 0 &&
           uv_now(c->srv->loop) - c->write_progress_ms >= timeout_ms;
}

static void on_timeout(uv_timer_t *t)
{
    struct conn *c = t->data;
    uint64_t timeout_ms = (uint64_t)c->srv->cfg.timeout_seconds * 1000;
    /* The last word was said a whole timeout ago and is still not written, or nothing we wrote
     * has moved for as long: the slot is given back now, not when the client reads. */
    if (c->closing || conn_write_stalled(c, timeout_ms)) {
        log_info("smtp", "conn=%llu closed ip=%s state=%s reason=\"%s\" queued_bytes=%zu",
                 (unsigned long long)c->id, c->ip, smtp_session_state_name(c->session),
                 c->closing ? "timeout while closing" : "write stalled",
                 uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp));
        conn_close(c);
        return;
    }
    /* Waiting for our own storage is not the client's idleness. */
    if (smtp_session_committing(c->session)) return;
    log_info("smtp", "conn=%llu timeout ip=%s state=%s", (unsigned long long)c->id, c->ip,
             smtp_session_state_name(c->session));
    smtp_session_timeout(c->session);
    conn_flush(c);
}

/* ---------------------------------------------------------------------------------------------
 * Accepting. */

static void refuse(struct conn *c, const char *why)
{
    char *line = g_strdup_printf("421 4.7.0 %s Error: too many connections\r\n", c->srv->cfg.session.hostname);
    log_warn("smtp", "conn=%llu refused ip=%s reason=\"%s\"", (unsigned long long)c->id, c->ip, why);
    count_replies(c->srv, line, strlen(line));
    c->closing = true;
    conn_write(c, line, strlen(line));
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct smtp_server *srv = listener->data;
    if (status < 0) {
        log_warn("smtp", "accept failed: %s", uv_strerror(status));
        return;
    }
    struct conn *c = g_new0(struct conn, 1);
    c->srv = srv;
    c->id = ++srv->next_conn_id;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    atomic_fetch_add_explicit(&srv->n_connections, 1, memory_order_relaxed);
    atomic_store_explicit(&srv->n_open, srv->nconns, memory_order_relaxed);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        snprintf(c->ip, sizeof c->ip, "unknown");
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    char key[NET_CLIENT_KEY_MAX] = "unknown";
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        net_format_ip((struct sockaddr *)&ss, c->ip, sizeof c->ip);
        net_client_key((struct sockaddr *)&ss, srv->cfg.ipv6_prefix, key, sizeof key);
    } else {
        snprintf(c->ip, sizeof c->ip, "unknown");
    }
    if (srv->next_conn_id % CLIENT_SWEEP_EVERY == 0) client_sweep(srv);
    c->client = client_get(srv, key);
    const unsigned per_ip = ++c->client->conns;
    uv_tcp_nodelay(&c->tcp, 1);
    if (srv->cfg.test_sndbuf > 0) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &srv->cfg.test_sndbuf, sizeof srv->cfg.test_sndbuf);
    }

    if (srv->nconns > srv->cfg.max_connections) {
        refuse(c, "max-connections");
        return;
    }
    if (per_ip > srv->cfg.max_connections_per_ip) {
        log_info("smtp", "conn=%llu client=%s connections=%u", (unsigned long long)c->id, c->client->key, per_ip);
        refuse(c, "max-connections-per-ip");
        return;
    }
    c->session = smtp_session_new(&srv->cfg.session, c->ip, &srv->session_ops, c);
    char tag[24];
    snprintf(tag, sizeof tag, "%llu", (unsigned long long)c->id);
    smtp_session_set_log_tag(c->session, tag);
    log_debug("smtp", "conn=%llu connected ip=%s", (unsigned long long)c->id, c->ip);
    uint64_t timeout_ms = (uint64_t)srv->cfg.timeout_seconds * 1000;
    uv_timer_start(&c->timer, on_timeout, timeout_ms, timeout_ms);
    smtp_session_start(c->session);
    conn_flush(c);
    conn_resume(c);
}

static void start_listener(struct smtp_server *srv, int fd)
{
    uv_tcp_t *l = &srv->listeners[srv->nlisteners++];
    uv_tcp_init(srv->loop, l);
    l->data = srv;
    srv->listeners_open++;
    uv_tcp_open(l, fd);
    uv_listen((uv_stream_t *)l, 511, on_connection);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(l, (struct sockaddr *)&ss, &len);
    char addr[80];
    net_format((struct sockaddr *)&ss, addr, sizeof addr);
    log_info("smtp", "listening addr=%s", addr);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct smtp_server *srv = h->data;
    srv->listeners_open--;
    maybe_stopped(srv);
}

static void close_listeners(struct smtp_server *srv)
{
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (!uv_is_closing((uv_handle_t *)&srv->listeners[i]))
            uv_close((uv_handle_t *)&srv->listeners[i], on_listener_closed);
}

struct smtp_server *smtp_server_start(uv_loop_t *loop, const struct smtp_server_config *cfg,
                                      const struct smtp_server_ops *ops, void *ctx, char **err)
{
    int fds[LIMIT_LISTENERS_MAX];
    size_t nfds = 0;
    if (cfg->nlisten > LIMIT_LISTENERS_MAX) {
        *err = g_strdup("too many SMTP listeners");
        return NULL;
    }
    for (; nfds < cfg->nlisten; nfds++) {
        if (net_listen(cfg->listen[nfds], &fds[nfds], err) < 0) {
            while (nfds > 0) close(fds[--nfds]);
            return NULL;
        }
    }
    struct tls_ctx *tls_ctx = NULL;
    if (cfg->tls_cert && cfg->tls_key) {
        tls_ctx = tls_ctx_new(cfg->tls_cert, cfg->tls_key, err);
        if (!tls_ctx) {
            while (nfds > 0) close(fds[--nfds]);
            return NULL;
        }
    }
    struct smtp_server *srv = g_new0(struct smtp_server, 1);
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->tls_ctx = tls_ctx;
    if (tls_ctx) log_info("smtp", "starttls offered cert=%s", cfg->tls_cert);
    srv->ops = ops;
    srv->ctx = ctx;
    session_ops_init(srv);
    srv->clients = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
    srv->over_budget_reply =
        g_strdup_printf("421 4.7.0 %s Error: too much time spent on recipients", cfg->session.hostname);
    for (size_t i = 0; i < nfds; i++) start_listener(srv, fds[i]);
    return srv;
}

static void on_grace_over(uv_timer_t *t)
{
    struct smtp_server *srv = t->data;
    for (struct conn *c = srv->conns; c; c = c->next) {
        log_warn("smtp", "conn=%llu closed at shutdown state=%s", (unsigned long long)c->id,
                 c->session ? smtp_session_state_name(c->session) : "refused");
        conn_close(c);
    }
}

void smtp_server_stop(struct smtp_server *srv, unsigned grace_seconds)
{
    if (srv->stopping) return;
    srv->stopping = true;
    close_listeners(srv);
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next; /* conn_flush may start closing c */
        if (!c->session || c->closing) continue;
        smtp_session_shutdown(c->session);
        conn_flush(c);
    }
    uv_timer_init(srv->loop, &srv->grace_timer);
    srv->grace_timer.data = srv;
    srv->grace_timer_open = true;
    uv_timer_start(&srv->grace_timer, on_grace_over, (uint64_t)grace_seconds * 1000, 0);
    maybe_stopped(srv);
}

void smtp_server_free(struct smtp_server *srv)
{
    if (!srv) return;
    g_hash_table_destroy(srv->clients);
    g_free(srv->over_budget_reply);
    tls_ctx_free(srv->tls_ctx);
    g_free(srv);
}
