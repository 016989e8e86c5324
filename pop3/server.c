/* pop3/server.c — POP3 listeners and connections on the libuv loop (pop3.h; SPEC §9).
 *
 * A thin layer around pop3/session.c: bytes from the socket (through util/tls.h under STLS or
 * implicit TLS) go into the session, its replies go out, and its requests go to the storage hooks
 * engine/ wired, whose answers come back on the loop thread.  While a request is out, or the
 * output waiting to be written passes POP3_OUTPUT_MAX, or POP3_INPUT_MAX of pipelined input is
 * held, the socket is not read.  A connection that ends while a hook is out stays allocated
 * (unlinked, `dead`) until the hook answers; one that ends with its maildrop open releases it
 * through the close hook with no deletion.  Failed logins wait before their -ERR
 * (POP3_AUTH_DELAY_MS doubling per recent failure of the address or the mailbox). */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "pop3/pop3.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/net.h"
#include "util/tls.h"

enum tls_phase { TLS_NONE, TLS_HANDSHAKE, TLS_ON };

struct pop3_call {
    struct conn *c;
};

struct conn {
    struct pop3_call call;
    struct pop3_server *srv;
    struct conn *prev, *next;
    uint64_t id;
    char ip[64];
    uv_tcp_t tcp;
    uv_timer_t timer; /* once a second: idle time and session time */
    uv_timer_t delay; /* a failed login's -ERR waits here */
    int open_handles;
    struct pop3_session *session;
    struct tls *tls;
    enum tls_phase tls_phase;
    GByteArray *in;   /* plaintext not yet taken by the session */
    bool reading, busy, closing, dead, implicit_tls;
    bool finish;      /* the session said its last reply: close once it is written */
    uint64_t started_ms, active_ms;
    char mailbox[MAILBOX_NAME_MAX + 1]; /* the maildrop this connection holds, if any */
};

/* Failed logins of one address or mailbox, recently. */
struct failures {
    unsigned n;
    uint64_t last_ms;
};

struct pop3_server {
    uv_loop_t *loop;
    struct pop3_server_config cfg;
    struct tls_ctx *tls_ctx;
    uv_tcp_t listeners[2 * LIMIT_LISTENERS_MAX];
    bool listener_tls[2 * LIMIT_LISTENERS_MAX];
    char addrs[2 * LIMIT_LISTENERS_MAX][80];
    size_t nlisteners, listeners_open;
    struct conn *conns;
    size_t nconns, pending_calls;
    uint64_t next_id;
    GHashTable *per_ip;   /* ip → connections (GUINT_TO_POINTER) */
    GHashTable *failures; /* "ip:<ip>" / "mb:<name>" → struct failures */
    char read_buf[POP3_READ_CHUNK];
    char plain[POP3_READ_CHUNK];
    bool stopping;
    void (*stopped)(void *arg);
    void *stopped_arg;
};

static void conn_step(struct conn *c);
static void conn_close(struct conn *c);

/* ---- stopping --------------------------------------------------------------------------------- */

static void maybe_stopped(struct pop3_server *srv)
{
    if (!srv->stopping || srv->listeners_open || srv->nconns || srv->pending_calls || !srv->stopped) return;
    void (*done)(void *) = srv->stopped;
    srv->stopped = NULL;
    done(srv->stopped_arg);
}

static void conn_free(struct conn *c)
{
    struct pop3_server *srv = c->srv;

    pop3_session_free(c->session);
    if (c->tls) tls_free(c->tls);
    g_byte_array_free(c->in, TRUE);
    g_free(c);
    maybe_stopped(srv);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;

    if (--c->open_handles > 0) return;
    c->dead = true;
    if (!c->busy) conn_free(c);
}

static void unlink_conn(struct conn *c)
{
    struct pop3_server *srv = c->srv;
    gpointer n = g_hash_table_lookup(srv->per_ip, c->ip);

    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->nconns--;
    if (GPOINTER_TO_UINT(n) <= 1) g_hash_table_remove(srv->per_ip, c->ip);
    else g_hash_table_insert(srv->per_ip, g_strdup(c->ip), GUINT_TO_POINTER(GPOINTER_TO_UINT(n) - 1));
}

/* Releases a maildrop the session still holds (no QUIT): events for what was retrieved, nothing
 * deleted. */
static void release_maildrop(struct conn *c)
{
    size_t nr = 0;
    const char *const *r;

    if (c->busy || !pop3_session_has_maildrop(c->session) || !c->mailbox[0]) return;
    r = pop3_session_retrieved(c->session, &nr);
    log_info("pop3", "conn=%llu released mailbox=%s retrieved=%zu deleted=0 reason=\"no QUIT\"",
             (unsigned long long)c->id, c->mailbox, nr);
    c->busy = true;
    c->srv->pending_calls++;
    c->srv->cfg.hooks.close(c->srv->cfg.hooks.arg, &c->call, c->mailbox, r, nr, NULL, 0);
    c->mailbox[0] = '\0';
}

static void conn_close(struct conn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    c->closing = true;
    release_maildrop(c);
    unlink_conn(c);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->delay, on_handle_closed);
}

/* ---- writing ---------------------------------------------------------------------------------- */

static size_t queued_bytes(const struct conn *c)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

struct write_req {
    uv_write_t req;
    struct conn *c;
    char *data;
    bool close_after;
};

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->c;

    g_free(w->data);
    if (w->close_after || status < 0 || (c->finish && queued_bytes(c) == 0)) conn_close(c);
    else if (!c->closing) conn_step(c);
    g_free(w);
}

static void conn_write(struct conn *c, char *take, size_t len, bool close_after)
{
    struct write_req *w = g_new0(struct write_req, 1);
    uv_buf_t buf = uv_buf_init(take, (unsigned)len);

    w->c = c;
    w->data = take;
    w->close_after = close_after;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write) < 0) {
        g_free(take);
        g_free(w);
        conn_close(c);
    }
}

/* TLS records made so far, to the socket. */
static void tls_send(struct conn *c, bool close_after)
{
    size_t len = 0;
    char *out = c->tls ? tls_take_output(c->tls, &len) : NULL;

    if (out) conn_write(c, out, len, close_after);
    else if (close_after) conn_close(c);
}

static size_t queued(const struct conn *c)
{
    return queued_bytes(c);
}

/* The session's replies, to the socket (encrypted under TLS). */
static void conn_flush(struct conn *c)
{
    size_t len = 0;
    const char *out = pop3_session_output(c->session, &len);
    char why[256];

    if (!len || c->closing || c->tls_phase == TLS_HANDSHAKE) return; /* never plaintext now */
    if (c->tls_phase == TLS_ON) {
        if (tls_write(c->tls, out, len, why, sizeof why) < 0) {
            log_info("pop3", "conn=%llu tls write failed ip=%s reason=\"%s\"", (unsigned long long)c->id, c->ip, why);
            pop3_session_consumed(c->session, len);
            conn_close(c);
            return;
        }
        tls_send(c, false);
    } else {
        conn_write(c, g_memdup2(out, len), len, false);
    }
    pop3_session_consumed(c->session, len);
}

/* ---- failed logins ---------------------------------------------------------------------------- */

static struct failures *failures_of(struct pop3_server *srv, const char *kind, const char *what, bool create)
{
    char *key = g_strdup_printf("%s:%s", kind, what);
    struct failures *f = g_hash_table_lookup(srv->failures, key);
    uint64_t now = uv_now(srv->loop);

    if (f && now - f->last_ms > (uint64_t)POP3_AUTH_WINDOW_SECONDS * 1000) f->n = 0;
    if (!f && create) {
        if (g_hash_table_size(srv->failures) >= POP3_AUTH_TRACKED_MAX) {
            /* Forget the oldest: a flood of names cannot grow the table. */
            GHashTableIter it;
            gpointer k, v, oldest = NULL;
            uint64_t at = UINT64_MAX;
            g_hash_table_iter_init(&it, srv->failures);
            while (g_hash_table_iter_next(&it, &k, &v))
                if (((struct failures *)v)->last_ms < at) at = ((struct failures *)v)->last_ms, oldest = k;
            if (oldest) g_hash_table_remove(srv->failures, oldest);
        }
        f = g_new0(struct failures, 1);
        g_hash_table_insert(srv->failures, key, f);
        key = NULL;
    }
    g_free(key);
    return f;
}

/* The delay of this failure: POP3_AUTH_DELAY_MS doubled per earlier recent failure of the
 * address or the mailbox, at most POP3_AUTH_DELAY_MAX_MS.  Counts the failure. */
static uint64_t failure_delay(struct conn *c, const char *mailbox)
{
    struct failures *ip = failures_of(c->srv, "ip", c->ip, true), *mb = failures_of(c->srv, "mb", mailbox, true);
    unsigned n = ip->n > mb->n ? ip->n : mb->n;
    uint64_t d = POP3_AUTH_DELAY_MS;

    for (unsigned i = 0; i < n && d < POP3_AUTH_DELAY_MAX_MS; i++) d *= 2;
    ip->n++;
    mb->n++;
    ip->last_ms = mb->last_ms = uv_now(c->srv->loop);
    return d < POP3_AUTH_DELAY_MAX_MS ? d : POP3_AUTH_DELAY_MAX_MS;
}

static void on_delay(uv_timer_t *t)
{
    struct conn *c = t->data;

    c->busy = false;
    c->srv->pending_calls--;
    pop3_session_login_done(c->session, POP3_LOGIN_BAD, NULL, 0);
    conn_step(c);
}

/* ---- the hooks' answers ----------------------------------------------------------------------- */

/* A hook answered: false when the connection went meanwhile.  Then the maildrop it left open
 * (the client dropped while its RETR was being read) is released now, and the connection is
 * freed once nothing is out any more. */
static bool answered(struct conn *c)
{
    c->busy = false;
    c->srv->pending_calls--;
    if (!c->closing) return true;
    release_maildrop(c);
    if (c->dead && !c->busy) conn_free(c);
    return false;
}

void pop3_call_login_done(struct pop3_call *call, enum pop3_login_result r, const struct pop3_entry *entries,
                          size_t n)
{
    struct conn *c = call->c;
    const char *name = pop3_session_user(c->session);

    if (r == POP3_LOGIN_OK) snprintf(c->mailbox, sizeof c->mailbox, "%s", name);
    if (c->dead || c->closing) {
        /* The client left while the maildrop was opening: release it. */
        c->busy = false;
        c->srv->pending_calls--;
        if (r == POP3_LOGIN_OK) {
            pop3_session_login_done(c->session, r, entries, n);
            release_maildrop(c);
        }
        if (c->dead && !c->busy) conn_free(c);
        return;
    }
    log_info("pop3", "conn=%llu login mailbox=%s ip=%s result=%s messages=%zu", (unsigned long long)c->id, name,
             c->ip, r == POP3_LOGIN_OK ? "ok" : r == POP3_LOGIN_BAD ? "refused" : r == POP3_LOGIN_IN_USE ? "in-use"
                                                                                           : "unavailable",
             n);
    if (r == POP3_LOGIN_BAD) {
        uint64_t d = failure_delay(c, name);
        uv_timer_start(&c->delay, on_delay, d, 0); /* still busy: nothing is read meanwhile */
        return;
    }
    if (r == POP3_LOGIN_OK) {
        struct failures *f = failures_of(c->srv, "ip", c->ip, false);
        if (f) f->n = 0;
        if ((f = failures_of(c->srv, "mb", name, false))) f->n = 0;
    }
    answered(c);
    pop3_session_login_done(c->session, r, entries, n);
    conn_step(c);
}

void pop3_call_fetch_done(struct pop3_call *call, const uint8_t *data, size_t len)
{
    struct conn *c = call->c;

    if (!answered(c)) return;
    pop3_session_fetch_done(c->session, data, len);
    conn_step(c);
}

void pop3_call_close_done(struct pop3_call *call, enum pop3_close_result r)
{
    struct conn *c = call->c;

    c->mailbox[0] = '\0';
    if (!answered(c)) return;
    pop3_session_close_done(c->session, r);
    conn_step(c);
}

/* ---- reading ---------------------------------------------------------------------------------- */

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;

    *buf = uv_buf_init(c->srv->read_buf, sizeof c->srv->read_buf);
}

static void tls_failed(struct conn *c, const char *why)
{
    log_info("pop3", "conn=%llu tls failed ip=%s reason=\"%s\"", (unsigned long long)c->id, c->ip, why);
    tls_send(c, true);
}

/* TLS input: the handshake, then plaintext into c->in. */
static void tls_pump(struct conn *c)
{
    char why[256];

    if (c->tls_phase == TLS_HANDSHAKE) {
        int rc = tls_handshake(c->tls, why, sizeof why);

        if (rc < 0) {
            tls_failed(c, why);
            return;
        }
        tls_send(c, false);
        if (rc == 0) return;
        c->tls_phase = TLS_ON;
        tls_describe(c->tls, why, sizeof why);
        log_info("pop3", "conn=%llu tls started ip=%s tls=%s", (unsigned long long)c->id, c->ip, why);
        if (!c->implicit_tls) pop3_session_tls_started(c->session);
    }
    while (c->in->len < POP3_INPUT_MAX && !c->closing) {
        ssize_t n = tls_read(c->tls, c->srv->plain, sizeof c->srv->plain, why, sizeof why);

        if (n == 0) break;
        if (n < 0) {
            conn_close(c);
            return;
        }
        g_byte_array_append(c->in, (const guint8 *)c->srv->plain, (guint)n);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;

    if (nread == 0) return;
    if (nread < 0) {
        log_debug("pop3", "conn=%llu read ended: %s", (unsigned long long)c->id, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->active_ms = uv_now(c->srv->loop);
    if (c->tls_phase != TLS_NONE) {
        if (tls_push(c->tls, buf->base, (size_t)nread) < 0) {
            tls_failed(c, "out of memory");
            return;
        }
        tls_pump(c);
    } else {
        g_byte_array_append(c->in, (const guint8 *)buf->base, (guint)nread);
    }
    if (!c->closing) conn_step(c);
}

static void set_reading(struct conn *c, bool on)
{
    if (on == c->reading || c->closing) return;
    if (on) c->reading = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
    else {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* Starts what the session asks for. */
static void do_request(struct conn *c)
{
    struct pop3_server *srv = c->srv;
    enum pop3_request r = pop3_session_request(c->session);

    if (r == POP3_REQ_NONE || c->busy) return;
    if (r == POP3_REQ_TLS) {
        if (queued(c) || c->tls_phase != TLS_NONE) return; /* the +OK goes out in plaintext first */
        c->tls = tls_new(srv->tls_ctx);
        if (!c->tls) {
            conn_close(c);
            return;
        }
        c->tls_phase = TLS_HANDSHAKE;
        g_byte_array_set_size(c->in, 0); /* RFC 2595: nothing pipelined past STLS is taken */
        set_reading(c, true);
        return;
    }
    c->busy = true;
    srv->pending_calls++;
    if (r == POP3_REQ_LOGIN) {
        srv->cfg.hooks.login(srv->cfg.hooks.arg, &c->call, pop3_session_user(c->session),
                             pop3_session_password(c->session));
    } else if (r == POP3_REQ_FETCH) {
        srv->cfg.hooks.fetch(srv->cfg.hooks.arg, &c->call, pop3_session_fetch_id(c->session));
    } else {
        size_t nr = 0, nd = 0;
        const char *const *rt = pop3_session_retrieved(c->session, &nr);
        const char *const *dl = pop3_session_deleted(c->session, &nd);
        log_info("pop3", "conn=%llu quit mailbox=%s retrieved=%zu deleted=%zu", (unsigned long long)c->id,
                 c->mailbox, nr, nd);
        srv->cfg.hooks.close(srv->cfg.hooks.arg, &c->call, c->mailbox, rt, nr, dl, nd);
    }
}

/* Moves the connection on as far as it can: input into the session, replies out, a request
 * started, reading on or off. */
static void conn_step(struct conn *c)
{
    if (c->closing) return;
    if (!c->busy && c->in->len && c->tls_phase != TLS_HANDSHAKE) {
        size_t used = pop3_session_feed(c->session, (const char *)c->in->data, c->in->len);
        g_byte_array_remove_range(c->in, 0, (guint)used);
    }
    conn_flush(c);
    if (c->closing) return;
    if (pop3_session_closing(c->session) && !c->busy) {
        c->finish = true;
        set_reading(c, false);
        if (c->tls_phase == TLS_ON) {
            tls_shutdown(c->tls);
            tls_send(c, false);
        }
        if (queued(c) == 0) conn_close(c); /* else on_write closes once all is out */
        return;
    }
    do_request(c);
    if (c->closing) return;
    if (c->tls_phase == TLS_ON && !c->busy && c->in->len == 0) tls_pump(c); /* records already in */
    set_reading(c, !c->busy && pop3_session_request(c->session) != POP3_REQ_TLS && c->in->len < POP3_INPUT_MAX &&
                       queued(c) <= POP3_OUTPUT_MAX);
    if (c->tls_phase == TLS_HANDSHAKE) set_reading(c, true);
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    uint64_t now = uv_now(c->srv->loop);

    if (c->busy || c->closing) return; /* waiting for our own storage is not the client's idleness */
    if (now - c->started_ms >= (uint64_t)POP3_SESSION_MAX_SECONDS * 1000 ||
        now - c->active_ms >= (uint64_t)c->srv->cfg.idle_timeout_s * 1000) {
        if (queued(c)) { /* the client does not read what we wrote: no last word */
            conn_close(c);
            return;
        }
        log_info("pop3", "conn=%llu timeout ip=%s", (unsigned long long)c->id, c->ip);
        pop3_session_timeout(c->session);
        conn_step(c);
    }
}

/* ---- accepting -------------------------------------------------------------------------------- */

static bool is_loopback(const char *ip)
{
    return g_str_has_prefix(ip, "127.") || strcmp(ip, "::1") == 0 || g_str_has_prefix(ip, "::ffff:127.");
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct pop3_server *srv = listener->data;
    size_t li = (size_t)((uv_tcp_t *)listener - srv->listeners);
    struct conn *c;

    if (status < 0) return;
    c = g_new0(struct conn, 1);
    c->call.c = c;
    c->srv = srv;
    c->id = ++srv->next_id;
    c->in = g_byte_array_new();
    c->implicit_tls = srv->listener_tls[li];
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    uv_timer_init(srv->loop, &c->delay);
    c->tcp.data = c->timer.data = c->delay.data = c;
    c->open_handles = 3;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    snprintf(c->ip, sizeof c->ip, "unknown");
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) == 0) {
        struct sockaddr_storage ss;
        int len = sizeof ss;
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
            net_format_ip((struct sockaddr *)&ss, c->ip, sizeof c->ip);
    }
    unsigned per_ip = GPOINTER_TO_UINT(g_hash_table_lookup(srv->per_ip, c->ip)) + 1;
    g_hash_table_insert(srv->per_ip, g_strdup(c->ip), GUINT_TO_POINTER(per_ip));
    const struct pop3_session_config scfg = {
        .tls_available = srv->tls_ctx != NULL,
        .tls_active = c->implicit_tls,
        .plaintext_ok = strcmp(srv->cfg.plaintext_login, "yes") == 0 ||
                        (strcmp(srv->cfg.plaintext_login, "loopback") == 0 && is_loopback(c->ip)),
    };
    c->session = pop3_session_new(&scfg);
    c->started_ms = c->active_ms = uv_now(srv->loop);
    if (srv->stopping || srv->nconns > POP3_CONNECTIONS_MAX || per_ip > POP3_CONNECTIONS_PER_IP_MAX) {
        log_warn("pop3", "conn=%llu refused ip=%s reason=\"%s\"", (unsigned long long)c->id, c->ip,
                 srv->nconns > POP3_CONNECTIONS_MAX ? "too many connections" : "too many connections from the address");
        if (!c->implicit_tls) {
            char *line = g_strdup("-ERR [SYS/TEMP] Too many connections, try again later\r\n");
            conn_write(c, line, strlen(line), true);
        } else {
            conn_close(c);
        }
        return;
    }
    log_debug("pop3", "conn=%llu connected ip=%s", (unsigned long long)c->id, c->ip);
    uv_timer_start(&c->timer, on_timer, 1000, 1000);
    pop3_session_start(c->session);
    if (c->implicit_tls) {
        c->tls = tls_new(srv->tls_ctx);
        if (!c->tls) {
            conn_close(c);
            return;
        }
        c->tls_phase = TLS_HANDSHAKE;
        set_reading(c, true);
        return; /* the greeting waits in the session until the handshake is done */
    }
    conn_step(c);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct pop3_server *srv = h->data;

    srv->listeners_open--;
    maybe_stopped(srv);
}

static void start_listener(struct pop3_server *srv, int fd, bool tls)
{
    size_t i = srv->nlisteners++;
    uv_tcp_t *l = &srv->listeners[i];
    struct sockaddr_storage ss;
    int len = sizeof ss;

    uv_tcp_init(srv->loop, l);
    l->data = srv;
    srv->listener_tls[i] = tls;
    srv->listeners_open++;
    uv_tcp_open(l, fd);
    uv_listen((uv_stream_t *)l, 128, on_connection);
    uv_tcp_getsockname(l, (struct sockaddr *)&ss, &len);
    net_format((struct sockaddr *)&ss, srv->addrs[i], sizeof srv->addrs[i]);
    log_info("pop3", "listening addr=%s tls=%s", srv->addrs[i], tls ? "implicit" : srv->tls_ctx ? "stls" : "none");
}

struct pop3_server *pop3_server_start(uv_loop_t *loop, const struct pop3_server_config *cfg, char **err)
{
    int fds[2 * LIMIT_LISTENERS_MAX];
    size_t nfds = 0, total = cfg->nlisten + cfg->nlisten_tls;
    struct tls_ctx *ctx = NULL;

    if (cfg->nlisten > LIMIT_LISTENERS_MAX || cfg->nlisten_tls > LIMIT_LISTENERS_MAX) {
        *err = g_strdup("too many POP3 listeners");
        return NULL;
    }
    if (cfg->tls_cert && cfg->tls_key && !(ctx = tls_ctx_new(cfg->tls_cert, cfg->tls_key, err))) return NULL;
    for (; nfds < total; nfds++) {
        const char *spec = nfds < cfg->nlisten ? cfg->listen[nfds] : cfg->listen_tls[nfds - cfg->nlisten];
        if (net_listen(spec, &fds[nfds], err) < 0) {
            while (nfds > 0) close(fds[--nfds]);
            if (ctx) tls_ctx_free(ctx);
            return NULL;
        }
    }
    struct pop3_server *srv = g_new0(struct pop3_server, 1);
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->tls_ctx = ctx;
    srv->per_ip = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    srv->failures = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    for (size_t i = 0; i < total; i++) start_listener(srv, fds[i], i >= cfg->nlisten);
    return srv;
}

const char *pop3_server_address(const struct pop3_server *srv, size_t i)
{
    return srv && i < srv->nlisteners ? srv->addrs[i] : NULL;
}

void pop3_server_stop(struct pop3_server *srv, void (*done)(void *arg), void *arg)
{
    srv->stopping = true;
    srv->stopped = done;
    srv->stopped_arg = arg;
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (!uv_is_closing((uv_handle_t *)&srv->listeners[i]))
            uv_close((uv_handle_t *)&srv->listeners[i], on_listener_closed);
    while (srv->conns) conn_close(srv->conns);
    maybe_stopped(srv);
}

void pop3_server_free(struct pop3_server *srv)
{
    if (!srv) return;
    if (srv->tls_ctx) tls_ctx_free(srv->tls_ctx);
    g_hash_table_destroy(srv->per_ip);
    g_hash_table_destroy(srv->failures);
    g_free(srv);
}
