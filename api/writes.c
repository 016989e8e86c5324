/* api/writes.c — API writes that wait for their commit without holding a pool thread.
 *
 * With API_THREADS pool threads, a handler that sat through a group commit (SQLite's fsync, or
 * PostgreSQL's round trips) held one of them: a burst of route writes or resends took them all
 * and reads waited behind.  Now the handler suspends the connection (MHD_suspend_connection) and
 * queues its write without waiting (store.h, "Writes without waiting"); the writer thread's
 * callback resumes it (MHD_resume_connection is thread-safe) and the reply is queued when MHD
 * calls the access handler again, on a pool thread.  internal.h says what a handler does.
 *
 * Bounded: a write request is admitted before its body is read, at most API_WRITES_MAX in all
 * and API_WRITES_PER_CLIENT_MAX per client address; past either, 503 with Retry-After (a client
 * that retries later loses nothing; nothing queues without bound).  Suspended connections still
 * count against MHD's connection limits, and they do not time out while suspended.
 *
 * Route writes take turns (one at a time, in arrival order), waiting suspended too: each derives
 * the next table from the one the previous write published, and a PUT's absent fields keep the
 * values the previous write left.
 *
 * Shutdown: MHD_stop_daemon must find no connection suspended (it panics), and would close a
 * resumed one before its reply left, so api_writes_drain() refuses new writes and suspensions,
 * waits until every suspended request was resumed (the store's writer, still running, ends every
 * write it was given), then, for at most API_TIMEOUT_SECONDS, until every request that was
 * suspended has been answered and freed.
 *
 * Locks: ws->mu guards the counters, the client table and the turn queue.  MHD functions are
 * never called under it. */
#include <errno.h>
#include <glib.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "api/internal.h"
#include "util/limits.h"
#include "util/log.h"

enum { TURN_NONE, TURN_WAITING, TURN_HELD };

/* A client address with write requests in flight, and how many. */
struct write_client {
    uint8_t addr[17];
    unsigned n;
};

struct api_writes {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* signalled when `suspended` or `held` drops to 0 (monotonic clock) */
    bool stopping;
    unsigned admitted;      /* write requests admitted, not yet freed */
    unsigned suspended;     /* requests suspended now */
    unsigned held;          /* requests suspended at least once, not yet freed */
    uint64_t refused;       /* 503s past a cap (metrics) */
    /* Every admitted request's client has a row (admitted <= API_WRITES_MAX); n == 0: free. */
    struct write_client clients[API_WRITES_MAX];
    bool turn_busy;                        /* a route write holds the turn */
    struct api_request *turn_head, **turn_tail; /* route writes waiting, oldest first */
};

struct api_writes *api_writes_new(void)
{
    struct api_writes *ws = g_new0(struct api_writes, 1);

    pthread_condattr_t attr;

    pthread_mutex_init(&ws->mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&ws->cv, &attr);
    pthread_condattr_destroy(&attr);
    ws->turn_tail = &ws->turn_head;
    return ws;
}

void api_writes_drain(struct api_writes *ws)
{
    if (!ws) return;
    pthread_mutex_lock(&ws->mu);
    ws->stopping = true;
    if (ws->suspended > 0)
        log_info("http", "stopping: waiting for suspended writes suspended=%u", ws->suspended);
    while (ws->suspended > 0) pthread_cond_wait(&ws->cv, &ws->mu);
    /* Resumed: their replies leave from the pool threads, which still run.  Bounded: a reply
     * that cannot be sent is MHD's connection timeout's. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += API_TIMEOUT_SECONDS;
    while (ws->held > 0 && pthread_cond_timedwait(&ws->cv, &ws->mu, &deadline) != ETIMEDOUT) {}
    if (ws->held > 0) log_warn("http", "stopping: replies not sent held=%u", ws->held);
    pthread_mutex_unlock(&ws->mu);
}

void api_writes_free(struct api_writes *ws)
{
    if (!ws) return;
    pthread_cond_destroy(&ws->cv);
    pthread_mutex_destroy(&ws->mu);
    g_free(ws);
}

/* ---- suspension ----------------------------------------------------------------------------- */

/* Counts one more suspended request unless the server is stopping (then nothing may suspend:
 * api_writes_drain may have seen none left). */
static bool reserve_suspension(struct api_writes *ws, struct api_request *req)
{
    bool ok;

    pthread_mutex_lock(&ws->mu);
    ok = !ws->stopping;
    if (ok) {
        ws->suspended++;
        if (!req->held) ws->held++;
        req->held = true;
    }
    pthread_mutex_unlock(&ws->mu);
    return ok;
}

/* Resumes `conn` (suspended, its suspension counted), then counts it out.  The request may be
 * handled, and freed, by a pool thread as soon as MHD_resume_connection returns: not touched
 * after it. */
static void resume(struct api_writes *ws, struct MHD_Connection *conn)
{
    MHD_resume_connection(conn);
    pthread_mutex_lock(&ws->mu);
    if (--ws->suspended == 0) pthread_cond_broadcast(&ws->cv);
    pthread_mutex_unlock(&ws->mu);
}

static enum MHD_Result reply_unavailable(struct api_request *req, const char *message)
{
    char after[24];
    json_t *body = json_pack("{s:s}", "message", message);

    snprintf(after, sizeof after, "%d", API_WRITES_RETRY_AFTER_SECONDS);
    return api_reply_json_headers(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, body,
                                  MHD_HTTP_HEADER_RETRY_AFTER, after);
}

static enum MHD_Result reply_stopping(struct api_request *req)
{
    return reply_unavailable(req, "The server is shutting down; retry later");
}

bool api_write_suspend(struct api_server *api, struct api_request *req, struct api_write *w,
                       enum MHD_Result *r)
{
    if (!reserve_suspension(api->writes, req)) {
        w->free(w);
        *r = reply_stopping(req);
        return false;
    }
    w->api = api;
    w->status = STORE_ERR_IO;
    w->err = NULL;
    w->settled = false;
    req->write = w;
    req->suspended = true;
    MHD_suspend_connection(req->conn);
    return true;
}

void api_write_done(void *arg, enum store_status status, char *err)
{
    struct api_request *req = arg;
    struct api_write *w = req->write;

    w->status = status;
    w->err = err;
    resume(w->api->writes, req->conn);
}

static void settle(struct api_write *w)
{
    if (w->settled) return;
    w->settled = true;
    if (w->settle) w->settle(w->api, w);
}

/* ---- turns of route writes ------------------------------------------------------------------ */

bool api_write_turn(struct api_server *api, struct api_request *req, enum MHD_Result *r)
{
    struct api_writes *ws = api->writes;
    bool mine;

    if (req->turn == TURN_HELD) return true;
    pthread_mutex_lock(&ws->mu);
    mine = !ws->turn_busy;
    if (mine) ws->turn_busy = true;
    pthread_mutex_unlock(&ws->mu);
    if (mine) {
        req->turn = TURN_HELD;
        return true;
    }
    if (!reserve_suspension(ws, req)) {
        *r = reply_stopping(req);
        return false;
    }
    /* Suspended before it is queued, so that whoever takes it off the queue resumes a suspended
     * connection; the turn may have been given up meanwhile: then it is this one's at once. */
    req->turn = TURN_WAITING;
    req->suspended = true;
    MHD_suspend_connection(req->conn);
    pthread_mutex_lock(&ws->mu);
    mine = !ws->turn_busy;
    if (mine) {
        ws->turn_busy = true;
        req->turn = TURN_HELD;
    } else {
        req->turn_next = NULL;
        *ws->turn_tail = req;
        ws->turn_tail = &req->turn_next;
    }
    pthread_mutex_unlock(&ws->mu);
    if (mine) resume(ws, req->conn);
    *r = MHD_YES;
    return false;
}

/* Gives the turn to the oldest waiting request (resumed: its handler runs again), or frees it. */
static void turn_leave(struct api_writes *ws, struct api_request *req)
{
    struct api_request *next;

    if (req->turn != TURN_HELD) return;
    req->turn = TURN_NONE;
    pthread_mutex_lock(&ws->mu);
    next = ws->turn_head;
    if (next) {
        ws->turn_head = next->turn_next;
        if (!ws->turn_head) ws->turn_tail = &ws->turn_head;
        next->turn_next = NULL;
        next->turn = TURN_HELD;
    } else {
        ws->turn_busy = false;
    }
    pthread_mutex_unlock(&ws->mu);
    if (next) resume(ws, next->conn);
}

/* ---- the request's life --------------------------------------------------------------------- */

/* The client's address as a key: family byte, then the 4 or 16 address bytes (port left out). */
static void client_key(struct MHD_Connection *conn, uint8_t key[17])
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    memset(key, 0, 17);
    if (sa && sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa && sa->sa_family == AF_INET6) {
        key[0] = 6;
        memcpy(key + 1, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    }
}

/* The row of `key`, or a free one to take (NULL: none, which admitted <= API_WRITES_MAX rules
 * out).  Under ws->mu. */
static struct write_client *client_row(struct api_writes *ws, const uint8_t key[17])
{
    struct write_client *free_row = NULL;

    for (size_t i = 0; i < G_N_ELEMENTS(ws->clients); i++) {
        struct write_client *c = &ws->clients[i];
        if (c->n > 0 && memcmp(c->addr, key, 17) == 0) return c;
        if (c->n == 0 && !free_row) free_row = c;
    }
    return free_row;
}

bool api_write_admit(struct api_server *api, struct api_request *req, enum MHD_Result *r)
{
    struct api_writes *ws = api->writes;
    const char *refused = NULL;
    struct write_client *c;

    client_key(req->conn, req->client);
    pthread_mutex_lock(&ws->mu);
    c = client_row(ws, req->client);
    if (ws->stopping)
        refused = "The server is shutting down; retry later";
    else if (ws->admitted >= API_WRITES_MAX || !c)
        refused = "Too many writes in progress; retry later";
    else if (c->n >= API_WRITES_PER_CLIENT_MAX)
        refused = "Too many writes in progress from this client; retry later";
    if (refused) {
        ws->refused++;
    } else {
        if (c->n == 0) memcpy(c->addr, req->client, 17);
        c->n++;
        ws->admitted++;
        req->admitted = true;
    }
    pthread_mutex_unlock(&ws->mu);
    if (!refused) return true;
    log_info("http", "write refused: %s", refused);
    *r = reply_unavailable(req, refused);
    return false;
}

enum MHD_Result api_write_run(struct api_server *api, struct api_request *req)
{
    enum MHD_Result r = req->endpoint->handler(api, req);

    /* Answered without suspending (a 400, a 404, ...): the turn goes on now. */
    if (!req->suspended) turn_leave(api->writes, req);
    return r;
}

enum MHD_Result api_write_resumed(struct api_server *api, struct api_request *req)
{
    struct api_write *w = req->write;
    enum MHD_Result r;

    req->suspended = false;
    if (!w) return api_write_run(api, req); /* its turn came: the handler again */
    settle(w);
    r = w->reply(api, req, w);
    turn_leave(api->writes, req);
    return r;
}

void api_write_release(struct api_server *api, struct api_request *req)
{
    struct api_writes *ws = api->writes;
    struct api_write *w = req->write;

    if (w) {
        settle(w); /* the client left before its reply: the write's effect still happens */
        free(w->err);
        w->free(w);
        req->write = NULL;
    }
    turn_leave(ws, req);
    if (!req->admitted && !req->held) return;
    pthread_mutex_lock(&ws->mu);
    if (req->admitted) {
        struct write_client *c = client_row(ws, req->client);
        if (c && c->n > 0) c->n--;
        ws->admitted--;
    }
    if (req->held && --ws->held == 0) pthread_cond_broadcast(&ws->cv);
    pthread_mutex_unlock(&ws->mu);
    req->admitted = false;
    req->held = false;
}

char *api_writes_metrics(struct api_server *api)
{
    struct api_writes *ws = api->writes;
    unsigned admitted, suspended;
    uint64_t refused;

    pthread_mutex_lock(&ws->mu);
    admitted = ws->admitted;
    suspended = ws->suspended;
    refused = ws->refused;
    pthread_mutex_unlock(&ws->mu);
    return g_strdup_printf(
        "# HELP inlet_api_writes_in_flight API write requests admitted and not yet answered.\n"
        "# TYPE inlet_api_writes_in_flight gauge\n"
        "inlet_api_writes_in_flight %u\n"
        "# HELP inlet_api_requests_suspended API requests waiting, suspended (no thread held), "
        "for their write's commit or their turn.\n"
        "# TYPE inlet_api_requests_suspended gauge\n"
        "inlet_api_requests_suspended %u\n"
        "# HELP inlet_api_writes_refused_total API writes answered 503 past the in-flight caps.\n"
        "# TYPE inlet_api_writes_refused_total counter\n"
        "inlet_api_writes_refused_total %llu\n",
        admitted, suspended, (unsigned long long)refused);
}
