/* storage/postgres_listen.c — route changes of other nodes on PostgreSQL (SPEC §8).
 *
 * Every change to the routes table runs a trigger (migration 7) that bumps routes_version and
 * sends NOTIFY inlet_routes with the new version; the server delivers it at COMMIT to every
 * connection that listens.  This file keeps one such connection per process, on a thread of its
 * own: the thread waits with poll() on the connection's socket and on a wake-up pipe (never on
 * the SMTP loop), and calls `changed` when a notification came.
 *
 * States of the thread:
 *   listening   — connected, LISTEN done: wait for notifications (or the pipe).
 *   down        — no connection: try again after a backoff (100 ms doubling to 5 s), and
 *                 meanwhile compare routes_version through the backend's read connection every
 *                 half second, so that a change still reaches this node within a second (the
 *                 bounded poll).
 * Going from down to listening reads the version on the new connection after LISTEN and calls
 * `changed` once: a notification sent while the connection was down is lost, the version is not.
 * Connecting, LISTEN and that read are non-blocking (PQconnectPoll, PQsendQuery) with a deadline,
 * so a stop never waits for a server that does not answer. */
#include "storage/internal_postgres.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/internal.h"
#include "util/clock.h"
#include "util/limits.h"
#include "util/log.h"

/* Connecting, LISTEN and the first version read, each at most this long (milliseconds). */
#define LISTEN_STEP_DEADLINE_MSEC 5000

struct store_pg_listen {
    char *uri;
    store_pg_version_fn version;
    void *be;
    store_routes_changed_fn changed;
    void *arg;
    int wake[2];          /* a byte on wake[1] stops the thread */
    atomic_bool stop;
    pthread_t thread;
    bool started;
    /* The thread's own. */
    PGconn *c;
    int64_t known;        /* last routes version seen; -1: none yet */
};

/* Waits until `fd` is ready for `events` or `ms` pass (fd < 0: only the time and the pipe).
 * 1: ready; 0: time is up; -1: stop asked. */
static int wait_fd(struct store_pg_listen *l, int fd, short events, int64_t ms)
{
    struct pollfd p[2] = {{.fd = l->wake[0], .events = POLLIN}, {.fd = fd, .events = events}};
    int n = fd >= 0 ? 2 : 1;

    if (ms < 0) ms = 0;
    for (;;) {
        int rc = poll(p, (nfds_t)n, (int)(ms > 60000 ? 60000 : ms));

        if (atomic_load(&l->stop) || (rc > 0 && p[0].revents)) return -1;
        if (rc > 0) return 1;
        if (rc == 0) return 0;
        if (errno != EINTR) return 0;
    }
}

/* `why` as a log value: escaped and cut (a server's message may hold quotes). */
static const char *esc(char *out, size_t outsz, const char *why)
{
    const char *w = why ? why : "out of memory";

    return log_escape(out, outsz, w, strlen(w), 300);
}

/* libpq's notices (e.g. the server's FATAL when it ends the connection) as debug lines, not on
 * stderr: the loss itself is logged once, as a warning, with its reason. */
static void on_notice(void *arg, const char *message)
{
    char e[1024];

    (void)arg;
    log_debug("storage", "routes listen notice=\"%s\"",
              log_escape(e, sizeof e, message, strcspn(message, "\n"), 300));
}

/* A connection, or NULL with *why (malloc'd). */
static PGconn *listen_connect(struct store_pg_listen *l, char **why)
{
    /* Keepalives: a connection whose peer vanished without a reset is noticed in about ten
     * seconds (the poll covers the routes meanwhile only once it is noticed). */
    const char *const keys[] = {"dbname", "application_name", "keepalives", "keepalives_idle",
                                "keepalives_interval", "keepalives_count", NULL};
    const char *const vals[] = {l->uri, "inlet-listen", "1", "5", "2", "2", NULL};
    int64_t deadline = clock_monotonic_ms() + LISTEN_STEP_DEADLINE_MSEC;
    PGconn *c = PQconnectStartParams(keys, vals, 1);
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;

    if (!c) {
        store_set_err(why, "out of memory");
        return NULL;
    }
    while (PQstatus(c) != CONNECTION_BAD && ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
        int w = wait_fd(l, PQsocket(c), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                        deadline - clock_monotonic_ms());

        if (w < 0) {
            store_set_err(why, "stopping");
            goto fail;
        }
        if (w == 0) {
            store_set_err(why, "no answer within %d ms", LISTEN_STEP_DEADLINE_MSEC);
            goto fail;
        }
        ps = PQconnectPoll(c);
    }
    if (PQstatus(c) == CONNECTION_OK && PQsetnonblocking(c, 1) == 0) {
        PQsetNoticeProcessor(c, on_notice, NULL);
        return c;
    }
    store_set_err(why, "%.*s", (int)strcspn(PQerrorMessage(c), "\n"), PQerrorMessage(c));
fail:
    PQfinish(c);
    return NULL;
}

/* Runs `sql` (one statement) without blocking past the deadline: STORE_OK with *res (the last
 * result, NULL for none) or a failure with *why. */
static enum store_status listen_query(struct store_pg_listen *l, const char *sql, PGresult **res,
                                      char **why)
{
    int64_t deadline = clock_monotonic_ms() + LISTEN_STEP_DEADLINE_MSEC;
    PGresult *r, *last = NULL;

    *res = NULL;
    if (!PQsendQuery(l->c, sql)) goto conn_failed;
    for (;;) { /* flush what libpq could not send at once */
        int f = PQflush(l->c);

        if (f == 0) break;
        if (f < 0 || wait_fd(l, PQsocket(l->c), POLLOUT, deadline - clock_monotonic_ms()) <= 0)
            goto conn_failed;
    }
    for (;;) {
        while (PQisBusy(l->c)) {
            if (wait_fd(l, PQsocket(l->c), POLLIN, deadline - clock_monotonic_ms()) <= 0 ||
                !PQconsumeInput(l->c))
                goto conn_failed;
        }
        if (!(r = PQgetResult(l->c))) break;
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
            const char *m = PQresultErrorMessage(r);

            store_set_err(why, "%s: %.*s", sql, (int)strcspn(m, "\n"), m);
            PQclear(r);
            PQclear(last);
            return STORE_ERR_IO;
        }
        PQclear(last);
        last = r;
    }
    *res = last;
    return STORE_OK;

conn_failed:
    store_set_err(why, "%s: %.*s", sql, (int)strcspn(PQerrorMessage(l->c), "\n"),
                  *PQerrorMessage(l->c) ? PQerrorMessage(l->c) : "no answer");
    PQclear(last);
    return STORE_ERR_IO;
}

/* down → listening: connect, LISTEN, read the version.  STORE_OK, or a failure with *why. */
static enum store_status listen_up(struct store_pg_listen *l, char **why)
{
    PGresult *r = NULL;
    enum store_status st;

    if (!(l->c = listen_connect(l, why))) return STORE_ERR_IO;
    st = listen_query(l, "LISTEN " STORE_PG_ROUTES_CHANNEL, &r, why);
    PQclear(r);
    if (st == STORE_OK)
        st = listen_query(l, "SELECT version FROM routes_version WHERE id = 1", &r, why);
    if (st == STORE_OK && (!r || PQntuples(r) != 1)) {
        store_set_err(why, "routes_version holds no row");
        st = STORE_ERR_IO;
    }
    if (st == STORE_OK) l->known = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    if (st != STORE_OK) {
        PQfinish(l->c);
        l->c = NULL;
    }
    return st;
}

/* Listening: takes what arrived.  Returns false when the connection is gone (*why set). */
static bool listen_take(struct store_pg_listen *l, bool *notified, char **why)
{
    PGnotify *n;

    if (!PQconsumeInput(l->c)) {
        const char *m = PQerrorMessage(l->c);

        store_set_err(why, "%.*s", (int)strcspn(m, "\n"), *m ? m : "connection closed");
        return false;
    }
    while ((n = PQnotifies(l->c))) {
        int64_t v = strtoll(n->extra, NULL, 10);

        if (v > l->known) l->known = v;
        *notified = true;
        PQfreemem(n);
    }
    return PQstatus(l->c) == CONNECTION_OK;
}

/* Down: one fallback poll of the version through the backend's read connection. */
static void listen_poll(struct store_pg_listen *l)
{
    int64_t v = 0;
    char *err = NULL;

    if (l->version(l->be, &v, &err) != STORE_OK) {
        char e[1024];

        log_debug("storage", "routes poll failed error=\"%s\"", esc(e, sizeof e, err));
        free(err);
        return;
    }
    if (l->known >= 0 && v == l->known) return;
    log_info("storage", "routes changed version=%lld seen_by=poll", (long long)v);
    l->known = v;
    l->changed(l->arg, "poll");
}

static void *listen_main(void *arg)
{
    struct store_pg_listen *l = arg;
    log_thread_name("pg-listen");
    int64_t backoff = STORE_LISTEN_RETRY_MIN_MS, next_try = 0, next_poll = 0;
    bool ever = false, warned = false;

    while (!atomic_load(&l->stop)) {
        int64_t now = clock_monotonic_ms();
        char *why = NULL;

        if (!l->c && now >= next_try) {
            if (listen_up(l, &why) == STORE_OK) {
                log_info("storage", "routes listen connected version=%lld%s", (long long)l->known,
                         ever ? " reload=yes" : "");
                /* Changes committed while nobody listened (or before the first LISTEN, after
                 * the engine's own load): one reload covers them all. */
                l->changed(l->arg, ever ? "reconnect" : "listen");
                ever = true;
                warned = false;
                backoff = STORE_LISTEN_RETRY_MIN_MS;
                continue;
            }
            if (atomic_load(&l->stop)) {
                free(why);
                break;
            }
            char e[1024];

            if (!warned)
                log_warn("storage",
                         "routes listen unavailable error=\"%s\" fallback=poll period_ms=%d",
                         esc(e, sizeof e, why), STORE_ROUTES_POLL_MS);
            else
                log_debug("storage", "routes listen retry failed error=\"%s\"",
                          esc(e, sizeof e, why));
            free(why);
            why = NULL;
            warned = true;
            next_try = now + backoff;
            backoff = backoff * 2 > STORE_LISTEN_RETRY_MAX_MS ? STORE_LISTEN_RETRY_MAX_MS
                                                              : backoff * 2;
        }
        if (!l->c) {
            if (now >= next_poll) {
                listen_poll(l);
                next_poll = clock_monotonic_ms() + STORE_ROUTES_POLL_MS;
            }
            int64_t until = next_try < next_poll ? next_try : next_poll;
            if (wait_fd(l, -1, 0, until - clock_monotonic_ms()) < 0) break;
            continue;
        }
        int w = wait_fd(l, PQsocket(l->c), POLLIN, 60000);
        bool notified = false;

        if (w < 0) break;
        if (w == 0) continue;
        if (!listen_take(l, &notified, &why)) {
            char e[1024];

            log_warn("storage", "routes listen lost error=\"%s\" fallback=poll period_ms=%d",
                     esc(e, sizeof e, why), STORE_ROUTES_POLL_MS);
            free(why);
            PQfinish(l->c);
            l->c = NULL;
            warned = true;
            next_try = clock_monotonic_ms() + backoff;
            next_poll = 0; /* at once: a change may have come with the loss */
            continue;
        }
        if (notified) {
            log_debug("storage", "routes changed version=%lld seen_by=notify", (long long)l->known);
            l->changed(l->arg, "notify");
        }
    }
    PQfinish(l->c);
    l->c = NULL;
    return NULL;
}

struct store_pg_listen *store_pg_listen_start(const char *uri, store_pg_version_fn version,
                                              void *be, store_routes_changed_fn changed, void *arg,
                                              char **err)
{
    struct store_pg_listen *l = calloc(1, sizeof *l);

    if (!l || !(l->uri = strdup(uri))) {
        free(l);
        store_set_err(err, "out of memory");
        return NULL;
    }
    l->version = version;
    l->be = be;
    l->changed = changed;
    l->arg = arg;
    l->known = -1;
    atomic_init(&l->stop, false);
    if (pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        store_set_err(err, "cannot make a pipe: %s", strerror(errno));
        l->wake[0] = l->wake[1] = -1;
        goto fail;
    }
    if (pthread_create(&l->thread, NULL, listen_main, l) != 0) {
        store_set_err(err, "cannot start the routes listener thread");
        goto fail;
    }
    l->started = true;
    return l;
fail:
    store_pg_listen_stop(l);
    return NULL;
}

void store_pg_listen_stop(struct store_pg_listen *l)
{
    if (!l) return;
    atomic_store(&l->stop, true);
    if (l->wake[1] >= 0) {
        ssize_t n = write(l->wake[1], "x", 1);
        (void)n; /* the flag is enough when the pipe is full */
    }
    if (l->started) pthread_join(l->thread, NULL);
    if (l->wake[0] >= 0) close(l->wake[0]);
    if (l->wake[1] >= 0) close(l->wake[1]);
    free(l->uri);
    free(l);
}
