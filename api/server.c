/* api/server.c — libmicrohttpd daemons, the request plumbing (see internal.h), dispatch by
 * method and path through the endpoint table, and JSON replies. */
#include <errno.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/internal.h"
#include "routes/routes.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/net.h"

_Static_assert(API_BODY_MAX <= API_BODIES_INFLIGHT_MAX, "one body fits the in-flight budget");

static enum MHD_Result api_root(struct api_server *api, struct api_request *req);

/* Every endpoint.  The first row whose pattern matches the path and whose method matches the
 * request's wins; a path that matches rows of other methods only gets 405 with Allow. */
static const struct api_endpoint endpoints[] = {
    {"GET", "/healthz", api_health, false, false, false},
    {"GET", "/", api_root, true, false, false},
    /* The web console (api/console.c): its page and assets need no credentials (they hold
     * none); everything it shows comes from the endpoints below, through its session. */
    {"GET", "/ui", api_console_redirect, false, false, false},
    {"GET", "/ui/", api_console_index, false, false, false},
    {"GET", "/ui/assets/:hash/:name", api_console_asset, false, false, false},
    {"POST", "/ui/login", api_console_login, false, false, true},
    {"GET", "/ui/session", api_console_session, true, false, false},
    {"POST", "/ui/logout", api_console_logout, true, false, true},
    {"GET", "/ui/html/:domain/:key", api_console_html, true, false, false},
    {"GET", "/v3/routes", api_routes_list, true, false, false},
    {"POST", "/v3/routes", api_routes_create, true, true, true},
    /* Before "/v3/routes/:id", which would take "match" and "test" as ids. */
    {"GET", "/v3/routes/match", api_routes_match, true, false, false},
    {"POST", "/v3/routes/test", api_routes_test, true, true, false},
    {"POST", "/v3/routes/check", api_routes_check, true, true, false},
    {"GET", "/v3/routes/:id", api_routes_get, true, false, false},
    {"PUT", "/v3/routes/:id", api_routes_update, true, true, true},
    {"DELETE", "/v3/routes/:id", api_routes_delete, true, false, true},
    /* Stored copies (SPEC §6): looked up by key alone, whatever the domain segment says. */
    {"GET", "/v3/domains/:domain/messages/:key", api_stored_get, true, false, false},
    {"POST", "/v3/domains/:domain/messages/:key", api_stored_resend, true, true, true},
    {"DELETE", "/v3/domains/:domain/messages/:key", api_stored_delete, true, false, true},
    {"GET", "/v3/domains/:domain/messages/:key/raw", api_stored_raw, true, false, false},
    {"GET", "/v3/domains/:domain/messages/:key/attachments/:n", api_stored_attachment, true, false, false},
    /* Events (Mailgun's shape): the page token of the paging URLs is a path segment. */
    {"GET", "/v3/:domain/events", api_events_list, true, false, false},
    {"GET", "/v3/:domain/events/:page", api_events_list, true, false, false},
    /* The dead-letter list and its replay. */
    {"GET", "/v3/deliveries", api_deliveries_list, true, false, false},
    {"POST", "/v3/deliveries/:id/retry", api_deliveries_retry, true, false, true},
    /* Mailboxes for POP3 pollers (SPEC §9). */
    {"GET", "/v3/mailboxes", api_mailboxes_list, true, false, false},
    {"POST", "/v3/mailboxes", api_mailboxes_create, true, false, true},
    {"GET", "/v3/mailboxes/:name", api_mailboxes_get, true, false, false},
    {"PUT", "/v3/mailboxes/:name", api_mailboxes_update, true, false, true},
    {"DELETE", "/v3/mailboxes/:name", api_mailboxes_delete, true, false, true},
    {"GET", "/metrics", api_metrics, true, false, false},
};

enum { STAGE_NEW, STAGE_BODY, STAGE_REPLIED };

/* ---- replies -------------------------------------------------------------------------------- */

static struct MHD_Response *json_response(json_t *body)
{
    /* Reals are the events' timestamps (seconds with milliseconds): 16 digits print them
     * exactly, without %.17g's noise ("1700000000.1229999"). */
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(16)) : NULL;
    json_decref(body);
    if (!text) text = strdup("{\"message\": \"Internal error\"}");
    if (!text) return NULL;
    size_t len = strlen(text);
    /* JSON answers end with a newline so that curl output stays readable. */
    char *withnl = realloc(text, len + 2);
    if (withnl) {
        withnl[len++] = '\n';
        withnl[len] = '\0';
        text = withnl;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return resp;
}

static enum MHD_Result queue(struct MHD_Connection *conn, unsigned status,
                             struct MHD_Response *resp)
{
    if (!resp) return MHD_NO;
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

enum MHD_Result api_reply_json(struct MHD_Connection *conn, unsigned status, json_t *body)
{
    return queue(conn, status, json_response(body));
}

enum MHD_Result api_reply_json_headers(struct MHD_Connection *conn, unsigned status, json_t *body,
                                       const char *name, const char *value)
{
    struct MHD_Response *resp = json_response(body);
    if (resp) MHD_add_response_header(resp, name, value);
    return queue(conn, status, resp);
}

enum MHD_Result api_reply_error(struct MHD_Connection *conn, unsigned status, const char *message)
{
    return api_reply_json(conn, status, json_pack("{s:s}", "message", message));
}

/* The console's requests (X-Inlet-Console) get no WWW-Authenticate: a browser would answer it
 * with its own password dialog instead of letting the console show its login form. */
static enum MHD_Result reply_unauthorized(struct MHD_Connection *conn, const char *message)
{
    struct MHD_Response *resp = json_response(json_pack("{s:s}", "message", message));
    if (resp && !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Inlet-Console"))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"inlet\"");
    return queue(conn, MHD_HTTP_UNAUTHORIZED, resp);
}

/* Credentials: the API key (Basic), else a console session cookie; a change made through a
 * session also needs its CSRF token (SPEC §7.1).  True when the request may go on, else
 * the reply is queued in *r. */
static bool authenticate(struct api_server *api, struct api_request *req, enum MHD_Result *r)
{
    struct MHD_Connection *conn = req->conn;
    const char *authz = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_AUTHORIZATION);
    if (authz) {
        if (api_auth_check(&api->auth, authz)) return true;
        *r = reply_unauthorized(conn, "Invalid credentials");
        return false;
    }
    switch (api_console_check(api, conn, req->csrf, &req->session_expires)) {
    case API_CONSOLE_OK: break;
    case API_CONSOLE_EXPIRED:
        *r = reply_unauthorized(conn, "Session expired");
        return false;
    case API_CONSOLE_NONE:
        *r = reply_unauthorized(conn, "Invalid credentials");
        return false;
    case API_CONSOLE_UNAVAILABLE: /* not a 401: the browser's session is still good */
        *r = api_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "Storage unavailable: cannot read the console session");
        return false;
    }
    req->session = true;
    bool safe = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (!safe && !api_console_csrf_ok(conn, req->csrf)) {
        log_info("http", "console request refused reason=\"CSRF token missing or wrong\" method=%s",
                 req->method);
        *r = api_reply_error(conn, MHD_HTTP_FORBIDDEN, "Missing or invalid CSRF token");
        return false;
    }
    return true;
}

static enum MHD_Result reply_not_allowed(struct MHD_Connection *conn, const char *allow)
{
    struct MHD_Response *resp = json_response(json_pack("{s:s}", "message", "Method not allowed"));
    if (resp) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    return queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
}

/* GET / : a small JSON answer (not Mailgun's "Mailgun Magnificent API" text, which mailgun.js
 * turns into an error). */
static enum MHD_Result api_root(struct api_server *api, struct api_request *req)
{
    return api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:s}", "message", "inlet"));
}

const char *api_param(const struct api_request *req, const char *name)
{
    for (size_t i = 0; i < req->nparams; i++)
        if (strcmp(req->param_names[i], name) == 0) return req->param_values[i];
    return NULL;
}

/* ---- routing -------------------------------------------------------------------------------- */

static void clear_params(struct api_request *req)
{
    for (size_t i = 0; i < req->nparams; i++) free(req->param_values[i]);
    req->nparams = 0;
}

/* Matches `path` against `pattern`; on a match the parameters are in req (decoded). */
static bool match_path(struct api_request *req, const char *pattern, const char *path)
{
    const char *p = pattern, *s = path;

    clear_params(req);
    while (*p && *s) {
        const char *pe = strchrnul(p, '/'), *se = strchrnul(s, '/');
        size_t plen = (size_t)(pe - p), slen = (size_t)(se - s);

        if (p[0] == ':' && plen > 1) {
            char *v;
            long n;

            if (slen == 0 || req->nparams == API_PARAMS_MAX) goto no;
            v = malloc(slen + 1);
            if (!v) goto no;
            n = api_form_percent_decode(v, s, slen, 0);
            if (n < 0 || memchr(v, '\0', (size_t)n)) {
                free(v);
                goto no;
            }
            v[n] = '\0';
            snprintf(req->param_names[req->nparams], sizeof req->param_names[0], "%.*s",
                     (int)(plen - 1), p + 1);
            req->param_values[req->nparams++] = v;
        } else if (plen != slen || memcmp(p, s, plen) != 0) {
            goto no;
        }
        p = pe;
        s = se;
        if (*p == '/' && *s == '/') {
            p++;
            s++;
        } else if (*p || *s) {
            goto no;
        }
    }
    if (!*p && !*s) return true;
no:
    clear_params(req);
    return false;
}

static bool method_matches(const char *want, const char *got)
{
    return strcmp(want, got) == 0 || (strcmp(want, "GET") == 0 && strcmp(got, "HEAD") == 0);
}

/* Finds the endpoint.  *known: the path matched some row (of another method, maybe); allow:
 * the methods of those rows ("GET, POST"); *auth: whether the answer needs credentials. */
static const struct api_endpoint *route(struct api_request *req, const char *method, bool *known,
                                        char *allow, size_t allowsz, bool *auth)
{
    const struct api_endpoint *found = NULL;
    size_t alen = 0;

    *known = false;
    *auth = true;
    allow[0] = '\0';
    for (size_t i = 0; i < G_N_ELEMENTS(endpoints) && !found; i++) {
        const struct api_endpoint *ep = &endpoints[i];
        if (!match_path(req, ep->pattern, req->path)) continue;
        if (method_matches(ep->method, method)) {
            found = ep;
            break;
        }
        if (!*known) *auth = false;
        *known = true;
        *auth = *auth || ep->needs_auth;
        if (!strstr(allow, ep->method)) {
            int n = snprintf(allow + alen, allowsz - alen, "%s%s", alen ? ", " : "", ep->method);
            if (n > 0 && (size_t)n < allowsz - alen) alen += (size_t)n;
        }
    }
    if (found) *auth = found->needs_auth;
    else clear_params(req);
    return found;
}

/* ---- request life cycle --------------------------------------------------------------------- */

/* Called by MHD with the raw request target, before anything else: creates the request. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct api_request *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    size_t len = strlen(uri);
    if (len > API_URI_MAX) {
        req->uri_too_long = true;
        len = 0;
    }
    req->uri = strndup(uri, len);
    if (!req->uri) {
        free(req);
        return NULL;
    }
    size_t plen = strcspn(req->uri, "?#");
    req->path = strndup(req->uri, plen);
    if (!req->path) {
        free(req->uri);
        free(req);
        return NULL;
    }
    return req;
}

static void request_free(struct api_server *api, struct api_request *req)
{
    if (!req) return;
    api_write_release(api, req); /* first: a write's context may point into the forms */
    if (req->reserved) atomic_fetch_sub(&api->body_bytes, req->reserved);
    clear_params(req);
    api_form_free(&req->query);
    api_form_free(&req->body);
    free(req->raw);
    free(req->path);
    free(req->uri);
    free(req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    request_free(cls, *req_cls);
    *req_cls = NULL;
}

/* Takes `n` bytes of the in-flight body budget for this request. */
static bool reserve(struct api_server *api, struct api_request *req, long long n)
{
    long long before = atomic_fetch_add(&api->body_bytes, n);
    if (before + n > API_BODIES_INFLIGHT_MAX) {
        atomic_fetch_sub(&api->body_bytes, n);
        return false;
    }
    req->reserved += n;
    return true;
}

static unsigned form_http_status(enum form_status st)
{
    switch (st) {
    case FORM_OK: break;
    case FORM_ERR_SYNTAX:
    case FORM_ERR_LIMIT: return MHD_HTTP_BAD_REQUEST;
    case FORM_ERR_TYPE: return MHD_HTTP_UNSUPPORTED_MEDIA_TYPE;
    case FORM_ERR_NOMEM: return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    return MHD_HTTP_OK;
}

static enum MHD_Result reply_form_error(struct api_request *req, enum form_status st, char *err,
                                        const char *where)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", where, err ? err : "malformed");
    free(err);
    return api_reply_error(req->conn, form_http_status(st), msg);
}

/* The body's announced length: 0 when none (or chunked), -1 when it is not a number or over
 * API_BODY_MAX. */
static long long announced_length(struct MHD_Connection *conn)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl) return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (errno || end == cl || *end || n > (unsigned long long)API_BODY_MAX) return -1;
    return (long long)n;
}

/* The most body bytes `ep` takes. */
static long long body_max(const struct api_endpoint *ep)
{
    return ep->big_body ? API_BODY_MAX : API_SMALL_BODY_MAX;
}

/* First call, headers read: everything that can be answered before the body.  The order matters
 * for hostile clients: the credentials are checked before anything is reserved for the body,
 * and only endpoints that take a large body reserve from the shared budget. */
static enum MHD_Result begin(struct api_server *api, struct api_request *req)
{
    struct MHD_Connection *conn = req->conn;
    char allow[64];
    bool known, auth;

    req->stage = STAGE_REPLIED; /* unless we get to the end */
    if (req->uri_too_long) return api_reply_error(conn, MHD_HTTP_URI_TOO_LONG, "URI too long");
    req->endpoint = route(req, req->method, &known, allow, sizeof allow, &auth);
    enum MHD_Result refused;
    if (auth && !authenticate(api, req, &refused)) return refused;
    long long n = announced_length(conn);
    if (n < 0) return api_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "Request body too large");
    if (!req->endpoint) {
        if (known) return reply_not_allowed(conn, allow);
        return api_reply_error(conn, MHD_HTTP_NOT_FOUND, "Not found");
    }
    if (n > body_max(req->endpoint))
        return api_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "Request body too large");
    if (req->endpoint->writes && !api_write_admit(api, req, &refused)) return refused;
    /* The announced length is reserved now, but no memory is taken for it before its bytes come
     * (take_body): what a client only announces must cost the pool thread nothing. */
    if (n > 0 && req->endpoint->big_body && !reserve(api, req, n))
        return api_reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                               "Too many request bodies in progress; retry later");
    req->announced = (size_t)n;

    const char *q = strchr(req->uri, '?');
    if (q) {
        char *err = NULL;
        size_t qlen = strcspn(q + 1, "#");
        enum form_status st = api_form_parse_urlencoded(&req->query, (const uint8_t *)q + 1, qlen, &err);
        if (st != FORM_OK) return reply_form_error(req, st, err, "Query string");
    }
    req->content_type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_CONTENT_TYPE);
    req->body_started = g_get_monotonic_time();
    req->stage = STAGE_BODY;
    return MHD_YES;
}

/* True when the body comes slower than API_BODY_MIN_RATE bytes a second on average, once
 * API_BODY_GRACE_SECONDS have passed since the headers: a client trickling a byte now and
 * then (MHD's idle timeout never fires) must not hold a connection and its reserved budget. */
static bool too_slow(struct api_request *req, size_t more)
{
    int64_t now = g_get_monotonic_time();
    int64_t elapsed_us = now - req->body_started;
    if (elapsed_us <= (int64_t)API_BODY_GRACE_SECONDS * G_USEC_PER_SEC) return false;
    long double owed = (long double)(elapsed_us - (int64_t)API_BODY_GRACE_SECONDS * G_USEC_PER_SEC) *
                       API_BODY_MIN_RATE / G_USEC_PER_SEC;
    return (long double)(req->len + more) < owed;
}

/* A body's first buffer; it doubles as the bytes come. */
enum { BODY_FIRST_ALLOC = 16384 };

/* Grows the body's buffer to hold at least `need` bytes (need <= max), doubling, so that the
 * memory taken follows the bytes received (at most twice them), never past the announced length
 * (MHD passes no more than Content-Length) nor `max`.  Not the announced length at once: an
 * allocator may touch what it gives (glibc under MALLOC_PERTURB_, which meson sets for every
 * test, fills it: ~0.2 s of the pool thread per 50 MiB), and a client that announces 50 MiB and
 * sends a byte must not cost that.  A large-body endpoint's buffer stays within its share of
 * the in-flight budget: an announced length reserved it whole in begin(), a chunked body
 * reserves as it grows. */
static bool grow_body(struct api_server *api, struct api_request *req, size_t need, size_t max)
{
    size_t cap = req->cap ? req->cap : BODY_FIRST_ALLOC;
    while (cap < need) cap *= 2;
    if (req->announced >= need && cap > req->announced) cap = req->announced;
    if (cap > max) cap = max;
    if (req->endpoint->big_body && (long long)cap > req->reserved &&
        !reserve(api, req, (long long)cap - req->reserved)) {
        log_info("http", "request body over the in-flight budget: connection closed size=%zu", cap);
        return false;
    }
    uint8_t *nb = realloc(req->raw, cap);
    if (!nb) {
        log_warn("http", "request body: out of memory, connection closed size=%zu", cap);
        return false;
    }
    req->raw = nb;
    req->cap = cap;
    return true;
}

/* A chunk of the body.  MHD_NO closes the connection: a body that grows past the endpoint's
 * limit (only possible without Content-Length, i.e. chunked) is not read further, nor one that
 * comes too slowly (too_slow).  libmicrohttpd 0.9.75 cannot queue a reply while the body is
 * being received, so that client gets no 413, only the close; a body announced too large by
 * Content-Length gets its 413 before a byte is read. */
static enum MHD_Result take_body(struct api_server *api, struct api_request *req, const char *data,
                                 size_t n)
{
    const size_t max = (size_t)body_max(req->endpoint);
    if (req->len + n > max) {
        log_info("http", "request body over the limit: connection closed limit=%zu", max);
        return MHD_NO;
    }
    if (too_slow(req, n)) {
        log_info("http", "request body too slow: connection closed received=%zu min_rate=%d",
                 req->len + n, API_BODY_MIN_RATE);
        return MHD_NO;
    }
    if (req->len + n > req->cap && !grow_body(api, req, req->len + n, max)) return MHD_NO;
    memcpy(req->raw + req->len, data, n);
    req->len += n;
    return MHD_YES;
}

/* Last call, the whole body read: parse it and run the handler. */
static enum MHD_Result finish(struct api_server *api, struct api_request *req)
{
    req->stage = STAGE_REPLIED;
    /* An empty body is no form at all, whatever its Content-Type says (some clients send
     * multipart/form-data on a GET); the handler then sees no fields. */
    if (req->len > 0) {
        char *err = NULL;
        enum form_status st = api_form_parse(&req->body, req->content_type, req->raw, req->len, &err);
        if (st != FORM_OK) return reply_form_error(req, st, err, "Request body");
    }
    return api_write_run(api, req);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct api_server *api = cls;
    struct api_request *req = *req_cls;

    if (!req) return MHD_NO; /* on_uri could not allocate: close */
    if (req->suspended) return api_write_resumed(api, req); /* its write ended, or its turn came */
    switch (req->stage) {
    case STAGE_NEW:
        req->conn = conn;
        req->method = method;
        return begin(api, req);
    case STAGE_BODY:
        if (*upload_data_size > 0) {
            size_t n = *upload_data_size;
            *upload_data_size = 0;
            return take_body(api, req, upload_data, n);
        }
        return finish(api, req);
    default:
        *upload_data_size = 0; /* answered already: whatever still comes is dropped */
        return MHD_YES;
    }
}

/* ---- daemons -------------------------------------------------------------------------------- */

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    g_strchomp(line);
    log_warn("http", "libmicrohttpd: %s", line);
}

static int start_daemon(struct api_server *api, const char *spec, char **err)
{
    int fd;
    if (net_listen(spec, &fd, err) < 0) return -1;
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
            MHD_ALLOW_SUSPEND_RESUME, /* writes wait for their commit suspended (api/writes.c) */
        0, NULL, NULL,
        on_request, api,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, /* first, or MHD logs on its own */
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)API_THREADS,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)API_CONNECTIONS_MAX,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)API_CONNECTIONS_PER_IP_MAX,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)API_TIMEOUT_SECONDS,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, api,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, api,
        MHD_OPTION_END);
    if (!d) {
        close(fd);
        *err = g_strdup_printf("cannot start the HTTP server on %s", spec);
        return -1;
    }
    api->daemons[api->ndaemons++] = d;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char addr[80] = "?";
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) net_format((struct sockaddr *)&ss, addr, sizeof addr);
    log_info("http", "listening addr=%s", addr);
    /* No --public-url: the first listener as bound (its real port, also with port 0). */
    if (!api->public_url) api->public_url = g_strdup_printf("http://%s", addr);
    return 0;
}

struct api_server *api_server_start(const struct api_config *cfg, struct store *store, char **err)
{
    if (!cfg->api_key || !*cfg->api_key) {
        *err = g_strdup("no API key: the API is never served without one");
        return NULL;
    }
    struct api_server *api = g_new0(struct api_server, 1);
    api->cfg = *cfg;
    api->cfg.api_key = NULL; /* kept only as a digest */
    api->store = store;
    if (cfg->public_url && *cfg->public_url) {
        api->public_url = g_strdup(cfg->public_url);
        /* Paths are appended to it: no trailing '/'. */
        size_t n = strlen(api->public_url);
        while (n > 0 && api->public_url[n - 1] == '/') api->public_url[--n] = '\0';
    }
    atomic_init(&api->body_bytes, 0);
    api->writes = api_writes_new();
    pthread_mutex_init(&api->health_mu, NULL);
    api_auth_init(&api->auth, cfg->api_key);
    api->routes = cfg->routes;
    if (!api->routes) {
        api->routes = route_registry_new();
        api->own_routes = true;
        size_t n = 0;
        if (!api->routes) {
            *err = g_strdup("out of memory");
            goto fail;
        }
        if (api_routes_load(api->routes, store, &n, err) < 0) goto fail;
        log_info("http", "routes loaded=%zu registry=own", n);
    }
    api->console = api_console_new(cfg, api->public_url, err);
    if (!api->console) goto fail;
    api->hashers = api_mailboxes_hashers_new(err);
    if (!api->hashers) goto fail;
    if (cfg->nlisten > G_N_ELEMENTS(api->daemons)) {
        *err = g_strdup("too many HTTP listeners");
        goto fail;
    }
    for (size_t i = 0; i < cfg->nlisten; i++)
        if (start_daemon(api, cfg->listen[i], err) < 0) goto fail;
    return api;
fail:
    api_server_stop(api);
    return NULL;
}

const char *api_server_public_url(const struct api_server *api)
{
    return api->public_url ? api->public_url : "";
}

void api_server_stop(struct api_server *api)
{
    if (!api) return;
    /* MHD_stop_daemon must find no connection suspended: the writes in flight end first (the
     * store's writer is still running), and nothing suspends any more. */
    api_writes_drain(api->writes);
    /* Every request a hasher had was resumed: its task ran.  The threads go. */
    if (api->hashers) g_thread_pool_free(api->hashers, FALSE, TRUE);
    /* MHD_stop_daemon closes the listening socket too, even one given with LISTEN_SOCKET. */
    for (size_t i = 0; i < api->ndaemons; i++) MHD_stop_daemon(api->daemons[i]);
    api_writes_free(api->writes);
    if (api->own_routes) route_registry_free(api->routes);
    api_console_free(api->console);
    memset(&api->auth, 0, sizeof api->auth);
    g_free(api->public_url);
    g_free(api->health_reason);
    pthread_mutex_destroy(&api->health_mu);
    g_free(api);
}
