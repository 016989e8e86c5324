/* api/console.c — the web console's server side (SPEC §7.1): its assets, its login session and
 * CSRF tokens.  Everything else the console shows or changes goes through the REST endpoints the
 * JavaScript calls (same origin, the session cookie instead of Basic credentials), so no logic is
 * written twice.
 *
 *   GET  /ui/                         index.html, no-cache, its asset URLs rewritten to
 *                                     /ui/assets/<content hash>/<name>
 *   GET  /ui/assets/<hash>/<name>     an asset, cached for a year (immutable): a new build has new
 *                                     hashes, so a browser never runs yesterday's script; another
 *                                     hash is 404
 *   POST /ui/login  key=<API key>     a session: Set-Cookie inlet_session (HttpOnly,
 *                                     SameSite=Strict, Path=/, Max-Age; Secure when --public-url
 *                                     is https) and {"csrf", "domains", "expires_in"}
 *   GET  /ui/session                  the session's {"csrf", "domains", "expires_in"}
 *   POST /ui/logout                   the session ends
 *   GET  /ui/html/<domain>/<key>      a stored copy's HTML body for the console's sandboxed frame,
 *                                     under a CSP of its own (no script, sandbox, images only
 *                                     data: unless ?images=1)
 *
 * The assets are compiled into the binary (ui/console.gresource.xml, GLib's GResource); their
 * hashes are computed once at start.  Sessions live in the database (storage/console.c), so that
 * every node on one PostgreSQL knows every login and a restart logs nobody out: at most
 * API_CONSOLE_SESSIONS_MAX rows, each the SHA-256 of its cookie's 256 random bits (the database
 * never holds a usable cookie), its CSRF token and its absolute expiry; login and logout are
 * writes that wait for their commit suspended (api/writes.c).  A request with the cookie is
 * authenticated like one with the API key (api/server.c begin()), by one read of its row; a
 * change (any method but GET and HEAD) also needs the header X-CSRF-Token, or 403.  The failed
 * logins are counted per process. */
#include <gio/gio.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/internal.h"
#include "message/message.h"
#include "util/id.h"
#include "util/log.h"
#include "util/net.h"

/* glib-compile-resources' accessor (api/meson.build, c_name api_console). */
GResource *api_console_get_resource(void);

#define RES_ROOT "/inlet/ui/"
#define COOKIE_NAME "inlet_session"
#define TOKEN_BYTES 32
#define HASH_HEX 16 /* hex digits of the SHA-256 in an asset's URL: 64 bits tell versions apart */

/* The console's own pages: the API's JSON only, plus a frame for the HTML body (api_console_html).
 * frame-ancestors: nobody frames the console (clickjacking). */
static const char console_csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'";

struct console_asset {
    char *name;       /* "app.js" */
    char *url;        /* "/ui/assets/<hash>/app.js" */
    char hash[HASH_HEX + 1];
    const char *type;
    GBytes *bytes;
};

struct api_console {
    struct console_asset *assets;
    size_t nassets;
    GBytes *index; /* index.html with the asset URLs */
    int64_t ttl;
    bool secure;
    pthread_mutex_t mu; /* guards failures */
    /* Failed logins per client (an IPv4 address or an IPv6 /64, util/net.h) in the current
     * minute: a table of API_CONSOLE_LOGIN_CLIENTS_MAX; a new client takes a free slot, a slot
     * of an older minute, or the one with the fewest failures. */
    struct console_failures {
        char client[NET_CLIENT_KEY_MAX];
        int64_t minute; /* Unix seconds / 60 */
        unsigned fails;
    } failures[API_CONSOLE_LOGIN_CLIENTS_MAX];
};

/* ---- assets --------------------------------------------------------------------------------- */

static const char *type_of(const char *name)
{
    static const struct { const char *ext, *type; } types[] = {
        {".js", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".html", "text/html; charset=utf-8"}, {".svg", "image/svg+xml"},
        {".txt", "text/plain; charset=utf-8"}, {".png", "image/png"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(types); i++)
        if (g_str_has_suffix(name, types[i].ext)) return types[i].type;
    return "application/octet-stream";
}

/* index.html with every "{{name}}" of an asset replaced by its URL. */
static GBytes *make_index(const struct api_console *c, GBytes *raw)
{
    gsize n;
    const char *p = g_bytes_get_data(raw, &n);
    GString *out = g_string_sized_new(n + 256);
    const char *end = p + n;
    while (p < end) {
        const char *open = g_strstr_len(p, end - p, "{{");
        if (!open) break;
        const char *close = g_strstr_len(open, end - open, "}}");
        if (!close) break;
        g_string_append_len(out, p, open - p);
        const char *url = NULL;
        for (size_t i = 0; i < c->nassets && !url; i++)
            if (strlen(c->assets[i].name) == (size_t)(close - open - 2) &&
                memcmp(c->assets[i].name, open + 2, (size_t)(close - open - 2)) == 0)
                url = c->assets[i].url;
        if (url) g_string_append(out, url);
        else g_string_append_len(out, open, close + 2 - open);
        p = close + 2;
    }
    g_string_append_len(out, p, end - p);
    return g_string_free_to_bytes(out);
}

static int load_assets(struct api_console *c, char **err)
{
    GResource *res = api_console_get_resource();
    GError *gerr = NULL;
    char **names = g_resource_enumerate_children(res, RES_ROOT, 0, &gerr);
    if (!names) {
        *err = g_strdup_printf("console assets: %s", gerr ? gerr->message : "none");
        g_clear_error(&gerr);
        return -1;
    }
    size_t n = g_strv_length(names);
    c->assets = g_new0(struct console_asset, n);
    GBytes *index = NULL;
    for (size_t i = 0; i < n; i++) {
        char *path = g_strconcat(RES_ROOT, names[i], NULL);
        GBytes *b = g_resource_lookup_data(res, path, 0, NULL);
        g_free(path);
        if (!b) continue;
        if (strcmp(names[i], "index.html") == 0) {
            index = b;
            continue;
        }
        struct console_asset *a = &c->assets[c->nassets++];
        char *sum = g_compute_checksum_for_bytes(G_CHECKSUM_SHA256, b);
        g_strlcpy(a->hash, sum, sizeof a->hash);
        g_free(sum);
        a->name = g_strdup(names[i]);
        a->url = g_strdup_printf("/ui/assets/%s/%s", a->hash, a->name);
        a->type = type_of(a->name);
        a->bytes = b;
    }
    g_strfreev(names);
    if (!index) {
        *err = g_strdup("console assets: no index.html");
        return -1;
    }
    c->index = make_index(c, index);
    g_bytes_unref(index);
    return 0;
}

struct api_console *api_console_new(const struct api_config *cfg, const char *public_url,
                                    char **err)
{
    struct api_console *c = g_new0(struct api_console, 1);
    pthread_mutex_init(&c->mu, NULL);
    c->ttl = cfg->console_session_ttl > 0 ? cfg->console_session_ttl : 43200;
    c->secure = public_url && g_ascii_strncasecmp(public_url, "https:", 6) == 0;
    if (load_assets(c, err) < 0) {
        api_console_free(c);
        return NULL;
    }
    return c;
}

void api_console_free(struct api_console *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->nassets; i++) {
        g_free(c->assets[i].name);
        g_free(c->assets[i].url);
        g_bytes_unref(c->assets[i].bytes);
    }
    g_free(c->assets);
    if (c->index) g_bytes_unref(c->index);
    pthread_mutex_destroy(&c->mu);
    g_free(c);
}

/* The headers every console answer carries. */
static void security_headers(struct MHD_Response *resp, const char *csp)
{
    MHD_add_response_header(resp, "Content-Security-Policy", csp);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
}

/* Queues `bytes` (kept alive by the console for the server's lifetime: no copy). */
static enum MHD_Result reply_static(struct MHD_Connection *conn, GBytes *bytes, const char *type,
                                    const char *cache)
{
    gsize n;
    const void *data = g_bytes_get_data(bytes, &n);
    /* MHD 0.9.75 takes a non-const pointer even for PERSISTENT buffers, which it never writes. */
    void *buf;
    memcpy(&buf, &data, sizeof buf);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, buf, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, cache);
    security_headers(resp, console_csp);
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

enum MHD_Result api_console_index(struct api_server *api, struct api_request *req)
{
    /* no-cache: always revalidated, so a new build's asset hashes reach the browser at once. */
    return reply_static(req->conn, api->console->index, "text/html; charset=utf-8", "no-cache");
}

enum MHD_Result api_console_redirect(struct api_server *api, struct api_request *req)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, "/ui/");
    enum MHD_Result r = MHD_queue_response(req->conn, MHD_HTTP_MOVED_PERMANENTLY, resp);
    MHD_destroy_response(resp);
    return r;
}

enum MHD_Result api_console_asset(struct api_server *api, struct api_request *req)
{
    const char *hash = api_param(req, "hash"), *name = api_param(req, "name");
    const struct api_console *c = api->console;
    for (size_t i = 0; i < c->nassets; i++) {
        const struct console_asset *a = &c->assets[i];
        if (strcmp(a->name, name) == 0 && strcmp(a->hash, hash) == 0)
            return reply_static(req->conn, a->bytes, a->type, "public, max-age=31536000, immutable");
    }
    return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Not found");
}

/* ---- sessions ------------------------------------------------------------------------------- */

/* The hex SHA-256 of a cookie's token: the session's key in the database. */
#define DIGEST_HEX_LEN 64

static void token_digest(const char *token, char out[DIGEST_HEX_LEN + 1])
{
    gchar *hex = g_compute_checksum_for_string(G_CHECKSUM_SHA256, token, -1);
    g_strlcpy(out, hex, DIGEST_HEX_LEN + 1);
    g_free(hex);
}

static char *random_token(void)
{
    unsigned char raw[TOKEN_BYTES];
    util_random_bytes(raw, sizeof raw);
    char *t = api_b64url_encode(raw, sizeof raw);
    memset(raw, 0, sizeof raw);
    return t;
}

/* A session that ended is deleted when it is next shown (then "Invalid credentials", as for a
 * session never made); nobody waits for that write. */
static void ended_deleted(void *arg, enum store_status status, char *err)
{
    if (status != STORE_OK) log_warn("http", "console session delete failed error=\"%s\"", err ? err : "?");
    free(err);
    g_free(arg);
}

/* The session of the request's cookie: API_CONSOLE_OK (csrf and *expires filled), _NONE (no
 * cookie, or not a session the database knows), _EXPIRED (it was one and ended; it is deleted),
 * _UNAVAILABLE (the database could not be read). */
enum api_console_auth api_console_check(struct api_server *api, struct MHD_Connection *conn,
                                        char csrf[48], int64_t *expires)
{
    const char *token = MHD_lookup_connection_value(conn, MHD_COOKIE_KIND, COOKIE_NAME);
    if (!api->console || !token || !*token || strlen(token) > API_CONSOLE_COOKIE_MAX) return API_CONSOLE_NONE;
    char d[DIGEST_HEX_LEN + 1], *got = NULL, *err = NULL;
    int64_t until = 0;
    token_digest(token, d);
    enum store_status st = store_console_session_get(api->store, d, &got, &until, &err);
    enum api_console_auth res = API_CONSOLE_NONE;
    if (st == STORE_OK && until <= (int64_t)time(NULL)) {
        res = API_CONSOLE_EXPIRED;
        char *key = g_strdup(d); /* the job's, until ended_deleted */
        store_console_session_delete_async(api->store, key, ended_deleted, key);
    } else if (st == STORE_OK) {
        g_strlcpy(csrf, got, 48);
        *expires = until;
        res = API_CONSOLE_OK;
    } else if (st != STORE_ERR_NOT_FOUND) {
        log_error("http", "console session read failed error=\"%s\"", err ? err : store_status_text(st));
        res = API_CONSOLE_UNAVAILABLE;
    }
    free(got);
    free(err);
    return res;
}

bool api_console_csrf_ok(struct MHD_Connection *conn, const char *csrf)
{
    const char *got = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-CSRF-Token");
    size_t n = strlen(csrf);
    return got && n > 0 && strlen(got) == n && api_ct_equal(got, csrf, n);
}

static json_t *session_json(const struct api_server *api, const char *csrf, int64_t expires)
{
    json_t *domains = json_array();
    for (size_t i = 0; domains && i < api->cfg.ndomains; i++)
        json_array_append_new(domains, api_jstr(api->cfg.domains[i]));
    int64_t left = expires - (int64_t)time(NULL);
    return json_pack("{s:s, s:o*, s:I}", "csrf", csrf, "domains", domains, "expires_in",
                     (json_int_t)(left > 0 ? left : 0));
}

/* Set-Cookie for `token` ("" and Max-Age=0 ends it). */
static char *cookie(const struct api_console *c, const char *token, int64_t max_age)
{
    return g_strdup_printf(COOKIE_NAME "=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Strict%s",
                           token, (long long)max_age, c->secure ? "; Secure" : "");
}

static enum MHD_Result reply_with_cookie(struct MHD_Connection *conn, unsigned status, json_t *body,
                                         char *take_cookie)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        g_free(take_cookie);
        return MHD_NO;
    }
    size_t len = strlen(text);
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (!resp) {
        free(text);
        g_free(take_cookie);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, take_cookie);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    g_free(take_cookie);
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* The client key of the connection's peer ("" when unknown: all such share one slot). */
static void client_of(struct MHD_Connection *conn, char out[NET_CLIENT_KEY_MAX])
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = '\0';
    if (ci && ci->client_addr) net_client_key(ci->client_addr, 64, out, NET_CLIENT_KEY_MAX);
}

/* Whether `client` may still fail a login this minute; with count, one more failure is
 * counted.  Per client, so that one client failing cannot lock the others out. */
static bool login_failure_allowed(struct api_console *c, const char *client, bool count)
{
    int64_t minute = (int64_t)time(NULL) / 60;
    pthread_mutex_lock(&c->mu);
    struct console_failures *slot = NULL, *spare = &c->failures[0];
    for (size_t i = 0; i < API_CONSOLE_LOGIN_CLIENTS_MAX; i++) {
        struct console_failures *f = &c->failures[i];
        if (f->minute == minute && strcmp(f->client, client) == 0) {
            slot = f;
            break;
        }
        if (f->minute != minute) spare = f; /* free, or of another minute */
        else if (spare->minute == minute && f->fails < spare->fails) spare = f;
    }
    unsigned fails = slot ? slot->fails : 0;
    bool ok = fails < API_CONSOLE_LOGIN_FAILURES_MAX;
    if (count && ok) {
        if (!slot) {
            slot = spare;
            g_strlcpy(slot->client, client, sizeof slot->client);
            slot->minute = minute;
            slot->fails = 0;
        }
        slot->fails++;
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* A login or a logout: the session's row written, then the reply with its cookie. */
struct session_write {
    struct api_write w; /* first: api/writes.c hands it back */
    char *token, *csrf; /* login: the cookie's token and the CSRF token (g_malloc'd) */
    char digest[DIGEST_HEX_LEN + 1];
    int64_t expires;
};

static void session_write_free(struct api_write *w)
{
    struct session_write *s = (struct session_write *)w;
    if (s->token) memset(s->token, 0, strlen(s->token));
    g_free(s->token);
    g_free(s->csrf);
    g_free(s);
}

static enum MHD_Result login_reply(struct api_server *api, struct api_request *req, struct api_write *w)
{
    struct session_write *s = (struct session_write *)w;
    struct api_console *c = api->console;
    if (w->status != STORE_OK) {
        char *err = w->err;
        w->err = NULL;
        return api_reply_store_error(req, "console login", w->status, err);
    }
    log_info("http", "console login ttl=%lld", (long long)c->ttl);
    return reply_with_cookie(req->conn, MHD_HTTP_OK, session_json(api, s->csrf, s->expires),
                             cookie(c, s->token, c->ttl));
}

static enum MHD_Result logout_reply(struct api_server *api, struct api_request *req, struct api_write *w)
{
    if (w->status != STORE_OK) {
        char *err = w->err;
        w->err = NULL;
        return api_reply_store_error(req, "console logout", w->status, err);
    }
    return reply_with_cookie(req->conn, MHD_HTTP_OK, json_pack("{s:s}", "message", "Logged out"),
                             cookie(api->console, "", 0));
}

enum MHD_Result api_console_login(struct api_server *api, struct api_request *req)
{
    struct api_console *c = api->console;
    /* A form on another site cannot send this header (it would need CORS, which inlet never
     * grants): no login CSRF into an attacker's key. */
    if (!MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Inlet-Console"))
        return api_reply_error(req->conn, MHD_HTTP_FORBIDDEN, "The X-Inlet-Console header is missing");
    char client[NET_CLIENT_KEY_MAX];
    client_of(req->conn, client);
    if (!login_failure_allowed(c, client, false))
        return api_reply_error(req->conn, MHD_HTTP_TOO_MANY_REQUESTS,
                               "Too many failed logins; retry in a minute");
    const struct form_field *key = api_form_get(&req->body, "key");
    bool ok = false;
    if (key && key->len > 0 && !memchr(key->value, '\0', key->len)) {
        char *basic = g_strdup_printf("api:%s", key->value);
        char *b64 = g_base64_encode((const guchar *)basic, strlen(basic));
        char *header = g_strdup_printf("Basic %s", b64);
        ok = api_auth_check(&api->auth, header);
        memset(basic, 0, strlen(basic));
        memset(b64, 0, strlen(b64));
        memset(header, 0, strlen(header));
        g_free(basic);
        g_free(b64);
        g_free(header);
    }
    if (!ok) {
        login_failure_allowed(c, client, true);
        log_info("http", "console login refused reason=\"wrong key\" client=%s", client);
        return api_reply_error(req->conn, MHD_HTTP_UNAUTHORIZED, "Invalid API key");
    }
    struct session_write *s = g_new0(struct session_write, 1);
    enum MHD_Result ret;
    *s = (struct session_write){.w = {.reply = login_reply, .free = session_write_free},
                                .token = random_token(), .csrf = random_token(),
                                .expires = (int64_t)time(NULL) + c->ttl};
    token_digest(s->token, s->digest);
    if (!api_write_suspend(api, req, &s->w, &ret)) return ret;
    store_console_session_create_async(api->store, s->digest, s->csrf, s->expires, s->expires - c->ttl,
                                       API_CONSOLE_SESSIONS_MAX, api_write_done, req);
    return MHD_YES;
}

enum MHD_Result api_console_session(struct api_server *api, struct api_request *req)
{
    if (!req->session) /* Basic credentials: there is no session to describe */
        return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "No console session");
    return api_reply_json(req->conn, MHD_HTTP_OK,
                          session_json(api, req->csrf, req->session_expires));
}

enum MHD_Result api_console_logout(struct api_server *api, struct api_request *req)
{
    const char *token = MHD_lookup_connection_value(req->conn, MHD_COOKIE_KIND, COOKIE_NAME);
    if (!token || !*token || strlen(token) > API_CONSOLE_COOKIE_MAX) /* Basic credentials: no session */
        return reply_with_cookie(req->conn, MHD_HTTP_OK, json_pack("{s:s}", "message", "Logged out"),
                                 cookie(api->console, "", 0));
    struct session_write *s = g_new0(struct session_write, 1);
    enum MHD_Result ret;
    *s = (struct session_write){.w = {.reply = logout_reply, .free = session_write_free}};
    token_digest(token, s->digest);
    if (!api_write_suspend(api, req, &s->w, &ret)) return ret;
    store_console_session_delete_async(api->store, s->digest, api_write_done, req);
    return MHD_YES;
}

/* ---- a stored copy's HTML body -------------------------------------------------------------- */

enum MHD_Result api_console_html(struct api_server *api, struct api_request *req)
{
    struct store_copy *copy;
    struct store_message *msg;
    enum MHD_Result r;
    if (!api_stored_load(api, req, &copy, &msg, &r)) return r;
    store_copy_free(copy);
    struct message *m = message_parse(msg->data, msg->len);
    if (!m) {
        store_free_message(msg);
        return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
    }
    const char *html = message_body_html(m);
    char *body = g_strdup(html ? html : "");
    message_free(m);
    store_free_message(msg);
    const struct form_field *img = api_form_get(&req->query, "images");
    bool images = img && strcmp(img->value, "1") == 0;
    /* The sender's HTML: no script at all, an opaque origin (sandbox: even opened on its own it
     * reaches no cookie and no API), its own inline styles, images only when asked. */
    char *csp = g_strdup_printf("default-src 'none'; style-src 'unsafe-inline'; font-src data:; "
                                "img-src data:%s; sandbox; frame-ancestors 'self'; base-uri 'none'; "
                                "form-action 'none'",
                                images ? " http: https:" : "");
    size_t len = strlen(body);
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, body, g_free);
    if (!resp) {
        g_free(body);
        g_free(csp);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(resp, "Content-Security-Policy", csp);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    g_free(csp);
    r = MHD_queue_response(req->conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}
