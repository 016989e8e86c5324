/* api/internal.h — shared by the api/ sources only; not a face.
 *
 * How a request travels (api/server.c):
 *   1. libmicrohttpd reads the request line: on_uri() allocates the struct api_request (the
 *      request context, MHD's req_cls) and keeps the raw URI, query string included.
 *   2. Headers read, first call of the access handler: the path is matched against the endpoint
 *      table (api/server.c `endpoints[]`), path parameters taken, credentials checked when the
 *      endpoint needs them (before anything is reserved for the body), Content-Length checked
 *      against the endpoint's limit, the query string parsed (api/form.c, so repeated values stay
 *      in order).  Any failure is answered right there, before a byte of the body is read: 401,
 *      404, 405, 413, 400 (query), 414 (URI).
 *   3. The body is accumulated (bounded by API_BODY_MAX and, for all big_body requests together,
 *      API_BODIES_INFLIGHT_MAX; by API_SMALL_BODY_MAX for the others; closed when it comes slower
 *      than API_BODY_MIN_RATE), then parsed as a form when it has one of the form content types.
 *   4. The handler runs, on one of MHD's pool threads, and queues exactly one reply with
 *      api_reply_json()/api_reply_error().  It never waits for a commit: a handler that writes
 *      (an endpoint with `writes`, admitted in step 2 against API_WRITES_MAX and
 *      API_WRITES_PER_CLIENT_MAX, else 503) suspends the connection and queues its write without
 *      waiting (api/writes.c); the writer thread's callback resumes it, and MHD calls the access
 *      handler again, on a pool thread, which queues the reply.  Route writes also take turns
 *      (api_write_turn), waiting suspended too.
 *   5. MHD's completion callback frees the request (and a write's context: a client that left
 *      while suspended is freed there too, once its write ended). */
#ifndef INLET_API_INTERNAL_H
#define INLET_API_INTERNAL_H

#include <glib.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"
#include "api/internal_form.h"
#include "storage/store.h"
#include "util/limits.h"

#define API_AUTH_DIGEST_LEN 32

/* The expected credentials, kept only as an HMAC under a per-process random key (api/auth.c). */
struct api_auth {
    unsigned char hmac_key[API_AUTH_DIGEST_LEN];
    unsigned char want[API_AUTH_DIGEST_LEN];
};

struct api_server {
    struct MHD_Daemon *daemons[16];
    size_t ndaemons;
    struct api_config cfg;
    struct store *store;
    struct api_auth auth;
    struct route_registry *routes; /* cfg.routes, or the server's own (own_routes) */
    bool own_routes;
    char *public_url; /* cfg.public_url, or "http://<first listener>" when none was given (owned) */
    atomic_llong body_bytes; /* request body bytes held by every request (API_BODIES_INFLIGHT_MAX) */
    /* GET /healthz's last answer (api/health.c): when (monotonic microseconds, 0: never) and
     * the reason it was unhealthy (NULL: healthy; g_malloc'd), under health_mu. */
    pthread_mutex_t health_mu;
    int64_t health_at;
    char *health_reason;
    struct api_console *console; /* the web console (api/console.c) */
    struct api_writes *writes;   /* writes in flight (api/writes.c) */
    GThreadPool *hashers;        /* mailbox passwords (api/mailboxes.c), API_PASSWORD_HASHERS */
};

struct api_request;
struct api_writes;

/* An endpoint's handler: runs once the whole request is read and checked; must queue one reply
 * on req->conn (api_reply_json/api_reply_error) and return what that returned. */
typedef enum MHD_Result (*api_handler_fn)(struct api_server *api, struct api_request *req);

struct api_endpoint {
    const char *method;     /* "GET" (also answers HEAD), "POST", "PUT", "DELETE" */
    const char *pattern;    /* "/v3/routes/:id": literal segments and ":name" parameters; the
                             * first row that matches wins, so list "/v3/routes/match" before
                             * "/v3/routes/:id" */
    api_handler_fn handler;
    bool needs_auth;        /* false only for /healthz */
    bool big_body;          /* takes a body up to API_BODY_MAX (a route, a message, a resend),
                             * reserved from the shared API_BODIES_INFLIGHT_MAX once the
                             * credentials are checked; the others take at most
                             * API_SMALL_BODY_MAX bytes of form fields, not reserved (the
                             * connection limit bounds them) */
    bool writes;            /* writes to the store: admitted against the in-flight caps, and its
                             * handler suspends while the write commits (api/writes.c) */
};

/* One request (libmicrohttpd's req_cls).  Everything a handler reads is here. */
struct api_request {
    struct MHD_Connection *conn;
    const char *method;                 /* as received, e.g. "POST" (MHD's, valid during the request) */
    char *uri;                          /* the raw request target, query included */
    char *path;                         /* the raw path (no query, not decoded) */
    const struct api_endpoint *endpoint;
    size_t nparams;                     /* path parameters (use api_param()) */
    char param_names[API_PARAMS_MAX][32];
    char *param_values[API_PARAMS_MAX]; /* percent-decoded, no NUL inside */
    struct form query;                  /* the query string's fields, in order */
    struct form body;                   /* a form body's fields, in order (empty otherwise) */
    const char *content_type;           /* the Content-Type header, or NULL */
    uint8_t *raw;                       /* the body's bytes (NULL when empty) */
    size_t len;

    /* Plumbing (api/server.c). */
    size_t cap;         /* bytes allocated at raw: grown as the body arrives */
    size_t announced;   /* the Content-Length (0: none, or chunked) */
    long long reserved; /* bytes of api->body_bytes this request holds */
    int64_t body_started; /* monotonic microseconds when the headers were read */
    int stage;
    bool uri_too_long;
    /* Writes (api/writes.c). */
    bool admitted;            /* counted in the in-flight caps (begin(), for a `writes` endpoint) */
    uint8_t client[17];       /* the client's address (family byte, then 4 or 16 bytes) */
    bool suspended;           /* suspended now: the next call of the access handler is a resume */
    bool held;                /* suspended at least once: api_writes_drain waits until it is freed */
    int turn;                 /* route writes' turn: none, waiting, held */
    struct api_request *turn_next; /* the queue of requests waiting their turn */
    struct api_write *write;  /* the write in flight or ended, until the request is freed */
    /* Authenticated by a console session cookie (not Basic credentials): its CSRF token and
     * expiry (Unix seconds), for GET /ui/session. */
    bool session;
    char csrf[48];
    int64_t session_expires;
};

/* ---- writes (api/writes.c) ------------------------------------------------------------------
 *
 * A handler that writes never waits for the group commit on its pool thread: it prepares
 * everything the write needs in a context of its own whose first member is a struct api_write,
 * then
 *     if (!api_write_suspend(api, req, &ctx->w, &ret)) return ret;
 *     store_xxx_async(api->store, ..., api_write_done, req);
 *     return MHD_YES;
 * The writer thread's callback (api_write_done) keeps the status and resumes the connection; MHD
 * calls the access handler again, on a pool thread: `settle` runs (what the write changes in this
 * process: the route table published, the deliverer nudged), then `reply` queues the answer.  A
 * client that closed the connection meanwhile may never get that call: then `settle` runs when
 * the request is freed (MHD's completed callback), so that it runs exactly once either way. */
struct api_write {
    /* Set by the handler. */
    void (*settle)(struct api_server *api, struct api_write *w); /* may be NULL */
    enum MHD_Result (*reply)(struct api_server *api, struct api_request *req, struct api_write *w);
    void (*free)(struct api_write *w); /* frees the handler's context (w is its first member) */
    /* Set by the plumbing once the write ended (read them in settle and reply). */
    enum store_status status;
    char *err;                         /* malloc'd, NULL unless a failure; a reply may take it */
    /* Plumbing. */
    struct api_server *api;
    bool settled;
};

/* Starts and stops the bookkeeping of writes (api_server_start/stop).  api_writes_drain: no new
 * write is admitted or suspended from now on (503), and it waits until every suspended request
 * was resumed, so that MHD_stop_daemon finds none suspended, then (bounded) until each was
 * answered and freed, so that it does not close them before their replies left. */
struct api_writes *api_writes_new(void);
void api_writes_drain(struct api_writes *ws);
void api_writes_free(struct api_writes *ws);
/* Admits a request to a `writes` endpoint (begin(), before its body): false when a cap is reached
 * or the server is stopping, and the 503 with Retry-After is queued in *r. */
bool api_write_admit(struct api_server *api, struct api_request *req, enum MHD_Result *r);
/* Runs the request's handler (the whole request read, or its turn come). */
enum MHD_Result api_write_run(struct api_server *api, struct api_request *req);
/* The access handler called for a suspended request: the write ended (settle, reply), or its turn
 * came (the handler again). */
enum MHD_Result api_write_resumed(struct api_server *api, struct api_request *req);
/* Suspends `req` until its write ends, with `w` (taken: freed with w->free whatever happens).
 * True: submit the write now, with api_write_done and `req` as its callback and argument; false:
 * the server is stopping, and the 503 is queued in *r. */
bool api_write_suspend(struct api_server *api, struct api_request *req, struct api_write *w,
                       enum MHD_Result *r);
/* store_write_done_fn for the write of a suspended request (arg: the request).  Any thread. */
void api_write_done(void *arg, enum store_status status, char *err);
/* Route writes take turns, in arrival order, as they did when each held the registry's lock
 * across its commit: each builds on the table the previous one published.  True: it is this
 * request's turn (held until its reply is queued or it is freed); false: *r is what the handler
 * returns: MHD_YES, suspended until its turn comes (the handler is then called again), or a 503
 * when the server is stopping. */
bool api_write_turn(struct api_server *api, struct api_request *req, enum MHD_Result *r);
/* What the request ends with (MHD's completed callback): settles and frees its write, gives up
 * its turn, and its place in the caps. */
void api_write_release(struct api_server *api, struct api_request *req);
/* The Prometheus lines of the writes (GET /metrics; g_malloc'd). */
char *api_writes_metrics(struct api_server *api);

/* The value of path parameter `name` (":name" in the pattern), or NULL. */
const char *api_param(const struct api_request *req, const char *name);

/* Queues `body` (taken; its reference is dropped) as the JSON answer with `status`. */
enum MHD_Result api_reply_json(struct MHD_Connection *conn, unsigned status, json_t *body);
/* The same with one more header (name, value). */
enum MHD_Result api_reply_json_headers(struct MHD_Connection *conn, unsigned status, json_t *body,
                                       const char *name, const char *value);
/* {"message": message} with `status`. */
enum MHD_Result api_reply_error(struct MHD_Connection *conn, unsigned status, const char *message);

/* api/auth.c */
void api_auth_init(struct api_auth *auth, const char *api_key);
/* True when `authorization` (the header's value, may be NULL) is Basic with user "api" and the
 * API key as the password.  Compares digests in constant time. */
bool api_auth_check(const struct api_auth *auth, const char *authorization);
/* a[0..n-1] == b[0..n-1], in time that depends only on n. */
bool api_ct_equal(const void *a, const void *b, size_t n);

/* Endpoints. */
enum MHD_Result api_health(struct api_server *api, struct api_request *req);
/* api/routes.c: /v3/routes (SPEC §7). */
enum MHD_Result api_routes_list(struct api_server *api, struct api_request *req);
enum MHD_Result api_routes_create(struct api_server *api, struct api_request *req);
enum MHD_Result api_routes_get(struct api_server *api, struct api_request *req);
enum MHD_Result api_routes_update(struct api_server *api, struct api_request *req);
enum MHD_Result api_routes_delete(struct api_server *api, struct api_request *req);
enum MHD_Result api_routes_match(struct api_server *api, struct api_request *req);
enum MHD_Result api_routes_test(struct api_server *api, struct api_request *req);
/* POST /v3/routes/check: compiles a route as POST /v3/routes would, stores nothing. */
enum MHD_Result api_routes_check(struct api_server *api, struct api_request *req);
/* "Wed, 15 Feb 2012 13:03:31 GMT" (RFC 1123, fixed English names); out holds >= 32 bytes. */
void api_rfc1123(char *out, size_t outsz, int64_t unix_seconds);

/* api/messages.c: stored copies at <public-url>/v3/domains/<domain>/messages/<key> (SPEC §6). */
enum MHD_Result api_stored_get(struct api_server *api, struct api_request *req);
enum MHD_Result api_stored_raw(struct api_server *api, struct api_request *req);
enum MHD_Result api_stored_attachment(struct api_server *api, struct api_request *req);
enum MHD_Result api_stored_resend(struct api_server *api, struct api_request *req);
enum MHD_Result api_stored_delete(struct api_server *api, struct api_request *req);
/* RFC 6266 Content-Disposition for attachment `index` named `name` (UTF-8; "" gives
 * "attachment-<index>"): attachment; filename="<ASCII fallback>" and, when the fallback is not
 * the name itself, filename*=UTF-8''<percent-encoded>.  The fallback keeps printable ASCII but
 * quote, backslash, slash and percent (one '_' per other character).  g_malloc'd. */
char *api_content_disposition(const char *name, size_t index);
/* api/events.c: GET /v3/<domain>/events[/<page token>] (SPEC §7, Mailgun's Events API shape). */
enum MHD_Result api_events_list(struct api_server *api, struct api_request *req);
/* api/deliveries.c: the dead-letter list and its replay (SPEC §7). */
enum MHD_Result api_deliveries_list(struct api_server *api, struct api_request *req);
/* api/mailboxes.c: /v3/mailboxes (SPEC §9). */
enum MHD_Result api_mailboxes_list(struct api_server *api, struct api_request *req);
enum MHD_Result api_mailboxes_create(struct api_server *api, struct api_request *req);
enum MHD_Result api_mailboxes_get(struct api_server *api, struct api_request *req);
enum MHD_Result api_mailboxes_update(struct api_server *api, struct api_request *req);
enum MHD_Result api_mailboxes_delete(struct api_server *api, struct api_request *req);
/* The threads that hash mailbox passwords while their requests wait suspended; NULL with *err. */
GThreadPool *api_mailboxes_hashers_new(char **err);
enum MHD_Result api_deliveries_retry(struct api_server *api, struct api_request *req);
/* api/console.c: the web console (SPEC §7.1): assets, login sessions, CSRF. */
struct api_console;
enum api_console_auth { API_CONSOLE_NONE, API_CONSOLE_OK, API_CONSOLE_EXPIRED, API_CONSOLE_UNAVAILABLE };
/* Loads the assets compiled into the binary; NULL with *err (g_malloc'd). */
struct api_console *api_console_new(const struct api_config *cfg, const char *public_url, char **err);
void api_console_free(struct api_console *c);
/* The session of the request's cookie (see the enum); with API_CONSOLE_OK, csrf and *expires. */
enum api_console_auth api_console_check(struct api_server *api, struct MHD_Connection *conn,
                                        char csrf[48], int64_t *expires);
/* Whether the request's X-CSRF-Token header is `csrf` (compared in constant time). */
bool api_console_csrf_ok(struct MHD_Connection *conn, const char *csrf);
enum MHD_Result api_console_redirect(struct api_server *api, struct api_request *req);
enum MHD_Result api_console_index(struct api_server *api, struct api_request *req);
enum MHD_Result api_console_asset(struct api_server *api, struct api_request *req);
enum MHD_Result api_console_login(struct api_server *api, struct api_request *req);
enum MHD_Result api_console_logout(struct api_server *api, struct api_request *req);
enum MHD_Result api_console_session(struct api_server *api, struct api_request *req);
enum MHD_Result api_console_html(struct api_server *api, struct api_request *req);
/* api/messages.c: the stored copy of the request's :key and its message (both owned by the
 * caller); false when the reply (404, 503) is queued in *r. */
bool api_stored_load(struct api_server *api, struct api_request *req, struct store_copy **copy,
                     struct store_message **msg, enum MHD_Result *r);
/* api/metrics.c: GET /metrics (Prometheus text from the engine's hook). */
enum MHD_Result api_metrics(struct api_server *api, struct api_request *req);

/* Shared helpers (api/common.c). */
/* Queues `take_body` (len bytes, malloc'd; freed by MHD once sent, also on failure) with
 * `content_type` and `status`, without copying it. */
enum MHD_Result api_reply_bytes(struct MHD_Connection *conn, unsigned status,
                                const char *content_type, void *take_body, size_t len);
/* A store error answered as 503 {"message": "Storage unavailable: <why>"} (logged); takes err. */
enum MHD_Result api_reply_store_error(struct api_request *req, const char *what,
                                      enum store_status status, char *take_err);
/* A JSON string of `len` bytes; invalid UTF-8 becomes U+FFFD. */
json_t *api_jstrn(const char *s, size_t len);
/* The same for a NUL-terminated string (NULL gives ""). */
json_t *api_jstr(const char *s);
/* base64url without padding of n bytes (g_malloc'd), and back (NULL when not base64url). */
char *api_b64url_encode(const void *data, size_t n);
uint8_t *api_b64url_decode(const char *s, size_t *n);
/* A query-string value percent-encoded for a URL (g_malloc'd). */
char *api_url_escape(const char *s);
/* Decimal digits only, no sign, fits in long long: 1; not digits: 0; too large: -1. */
int api_parse_count(const char *s, long long *out);

#endif
