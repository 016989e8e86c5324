/* api/routes.c — the routes endpoints of SPEC §7 (Mailgun's Routes API), the dry run
 * POST /v3/routes/test, and loading the stored routes at start.
 *
 * Every change follows one path, under the registry's writer lock:
 *     compile the changed route (400 with route_compile's text, which names the position)
 *  -> write it to the store (a writer job: blocks this pool thread until its batch committed)
 *  -> build the next table from the current one: every other route is shared (route_ref), never
 *     recompiled; the changed one is added, replaced or left out
 *  -> publish it -> unlock -> answer.
 * So a change the API answered 200 for is in the table the next message is evaluated against,
 * and two changes never build on the same old table.  Reads (list, get, match, test) take the
 * current table with a reference and never wait for a writer.
 *
 * Route JSON (Mailgun's shape): {"id", "priority" (integer), "description", "expression",
 * "actions" [...], "created_at" (RFC 1123, "Wed, 15 Feb 2012 13:03:31 GMT")}; expression and
 * actions exactly as given.  Fields are read from the body (urlencoded or multipart), and from
 * the query string when the body does not have them (some clients put PUT fields there). */
#include <errno.h>
#include <glib.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/internal.h"
#include "message/message.h"
#include "routes/routes.h"
#include "storage/store.h"
#include "util/id.h"
#include "util/limits.h"
#include "util/log.h"

/* ---- formatting ----------------------------------------------------------------------------- */

void api_rfc1123(char *out, size_t outsz, int64_t unix_seconds)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)unix_seconds;
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    snprintf(out, outsz, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* A JSON string of `s` (len bytes); bytes that are not UTF-8 become U+FFFD (captures of an
 * address or header with invalid UTF-8). */
static json_t *jstrn(const char *s, size_t len)
{
    if (g_utf8_validate(s, (gssize)len, NULL)) return json_stringn(s, len);
    char *valid = g_utf8_make_valid(s, (gssize)len);
    json_t *j = json_string(valid);
    g_free(valid);
    return j;
}

static json_t *jstr(const char *s)
{
    return jstrn(s ? s : "", s ? strlen(s) : 0);
}

static json_t *route_json(const struct route_def *d)
{
    char date[40];
    api_rfc1123(date, sizeof date, d->created_at);
    json_t *actions = json_array();
    for (size_t i = 0; i < d->nactions; i++) json_array_append_new(actions, jstr(d->actions[i]));
    return json_pack("{s:o, s:I, s:o, s:o, s:o, s:s}", "id", jstr(d->id), "priority",
                     (json_int_t)d->priority, "description", jstr(d->description), "expression",
                     jstr(d->expression), "actions", actions, "created_at", date);
}

static enum MHD_Result reply_errorf(struct api_request *req, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum MHD_Result reply_errorf(struct api_request *req, unsigned status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    enum MHD_Result r = api_reply_error(req->conn, status, msg);
    g_free(msg);
    return r;
}

static enum MHD_Result reply_quota(struct api_server *api, struct api_request *req)
{
    return reply_errorf(req, MHD_HTTP_BAD_REQUEST, "Routes quota (%lld) is exceeded",
                        (long long)api->cfg.route_quota);
}

static enum MHD_Result reply_not_found(struct api_request *req)
{
    return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Route not found");
}

/* A store error (not QUOTA / NOT_FOUND, which the callers answer themselves). */
static enum MHD_Result reply_store_error(struct api_request *req, enum store_status st, char *err)
{
    const char *why = err && *err ? err : st == STORE_ERR_FULL ? "disk full" : "write failed";
    log_error("http", "route write failed: %s", why);
    enum MHD_Result r = reply_errorf(req, MHD_HTTP_SERVICE_UNAVAILABLE, "Storage unavailable: %s", why);
    free(err);
    return r;
}

/* ---- request fields ------------------------------------------------------------------------- */

/* The body's field `name`, else the query string's, else NULL. */
static const struct form_field *field(const struct api_request *req, const char *name)
{
    const struct form_field *f = api_form_get(&req->body, name);
    return f ? f : api_form_get(&req->query, name);
}

/* Every `name` field of the body (or, when the body has none, of the query string). */
static size_t fields(const struct api_request *req, const char *name,
                     const struct form_field **out, size_t max)
{
    const struct form *f = api_form_count(&req->body, name) ? &req->body : &req->query;
    size_t n = 0;
    for (size_t i = 0; i < f->n && n < max; i++)
        if (strcmp(f->fields[i].name, name) == 0) out[n++] = &f->fields[i];
    return n;
}

/* Text the API stores and returns as JSON: no NUL, UTF-8, at most `max` bytes.  NULL when fine,
 * else the message of the 400. */
static char *check_text(const struct form_field *f, const char *what, size_t max)
{
    if (memchr(f->value, '\0', f->len)) return g_strdup_printf("'%s' must not contain NUL bytes", what);
    if (!g_utf8_validate(f->value, (gssize)f->len, NULL))
        return g_strdup_printf("'%s' is not valid UTF-8", what);
    if (f->len > max) return g_strdup_printf("'%s' is longer than %zu bytes", what, max);
    return NULL;
}

/* Decimal int32 with an optional sign, nothing else. */
static bool parse_int32(const char *s, int32_t *out)
{
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (*p < '0' || *p > '9') return false;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < INT32_MIN || v > INT32_MAX) return false;
    *out = (int32_t)v;
    return true;
}

/* skip/limit: decimal digits only.  1 fine, 0 not digits, -1 too large for long long. */
static int parse_count(const char *s, long long *out)
{
    if (!*s) return 0;
    for (const char *q = s; *q; q++)
        if (*q < '0' || *q > '9') return 0;
    errno = 0;
    *out = strtoll(s, NULL, 10);
    return errno ? -1 : 1;
}

/* What POST and PUT may carry; `has_*` say which were given. */
struct route_input {
    bool has_priority, has_description, has_expression;
    int32_t priority;
    const char *description;
    const char *expression;
    size_t nactions;               /* 0: not given */
    const char *actions[ROUTE_ACTIONS_MAX + 1];
};

/* Reads and checks the fields.  NULL when fine, else the message of the 400 (g_malloc'd). */
static char *read_input(const struct api_request *req, struct route_input *in)
{
    memset(in, 0, sizeof *in);
    const struct form_field *f = field(req, "priority");
    if (f) {
        if (memchr(f->value, '\0', f->len) || !parse_int32(f->value, &in->priority))
            return g_strdup("Invalid 'priority' parameter: an integer from -2147483648 to 2147483647 is expected");
        in->has_priority = true;
    }
    f = field(req, "description");
    if (f) {
        char *e = check_text(f, "description", ROUTE_DESCRIPTION_MAX);
        if (e) return e;
        in->description = f->value;
        in->has_description = true;
    }
    f = field(req, "expression");
    if (f) {
        if (f->len == 0) return g_strdup("Expression is missing");
        /* Its length is route_compile's to refuse: its message names the position. */
        char *e = check_text(f, "expression", SIZE_MAX);
        if (e) return e;
        in->expression = f->value;
        in->has_expression = true;
    }
    const struct form_field *acts[ROUTE_ACTIONS_MAX + 1];
    size_t n = fields(req, "action", acts, ROUTE_ACTIONS_MAX + 1);
    if (n > ROUTE_ACTIONS_MAX) return g_strdup_printf("More than %d actions", ROUTE_ACTIONS_MAX);
    for (size_t i = 0; i < n; i++) {
        char what[32];
        snprintf(what, sizeof what, "action[%zu]", i);
        char *e = check_text(acts[i], what, SIZE_MAX);
        if (e) return e;
        in->actions[i] = acts[i]->value;
    }
    in->nactions = n;
    return NULL;
}

/* ---- tables --------------------------------------------------------------------------------- */

static struct route *find_route(const struct route_table *t, const char *id, size_t *at)
{
    for (size_t i = 0; i < route_table_count(t); i++) {
        struct route *r = route_table_get(t, i);
        if (strcmp(route_get_def(r)->id, id) == 0) {
            if (at) *at = i;
            return r;
        }
    }
    return NULL;
}

/* A store_route for `d` (strings borrowed: never freed through it). */
static struct store_route store_view(const struct route_def *d)
{
    struct store_route sr = {.priority = d->priority, .seq = d->seq, .nactions = d->nactions,
                             .created_at = d->created_at};
    snprintf(sr.id, sizeof sr.id, "%s", d->id);
    /* The store only reads these; its struct has no const. */
    sr.description = (char *)(uintptr_t)d->description;
    sr.expression = (char *)(uintptr_t)d->expression;
    sr.actions = (char **)(uintptr_t)d->actions;
    return sr;
}

/* Publishes `next` (or, NULL after an out-of-memory, keeps the old table and says so). */
static bool publish(struct api_server *api, struct route_table *next)
{
    if (!next) {
        log_error("http", "routes: out of memory building the new table; the change is stored "
                          "and takes effect at the next start");
        return false;
    }
    route_registry_publish(api->routes, next);
    return true;
}

/* ---- GET /v3/routes ------------------------------------------------------------------------- */

enum MHD_Result api_routes_list(struct api_server *api, struct api_request *req)
{
    long long skip = 0, limit = API_ROUTES_LIMIT_DEFAULT;
    const char *s = api_form_value(&req->query, "skip"), *l = api_form_value(&req->query, "limit");
    if (l) {
        int r = parse_count(l, &limit);
        if (r == 0)
            return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                                   "The 'limit' parameter must be a non-negative integer");
        if (r < 0 || limit > API_ROUTES_LIMIT_MAX)
            return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                                   "The 'limit' parameter can't be larger than 1000");
    }
    if (s) {
        int r = parse_count(s, &skip);
        if (r == 0)
            return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                                   "The 'skip' parameter must be a non-negative integer");
        if (r < 0) skip = LLONG_MAX;
    }
    struct route_table *t = route_registry_current(api->routes);
    size_t n = route_table_count(t);
    json_t *items = json_array();
    for (size_t i = (size_t)skip < n ? (size_t)skip : n; i < n && (long long)json_array_size(items) < limit; i++)
        json_array_append_new(items, route_json(route_get_def(route_table_at(t, i))));
    route_table_unref(t);
    return api_reply_json(req->conn, MHD_HTTP_OK,
                          json_pack("{s:I, s:o}", "total_count", (json_int_t)n, "items", items));
}

/* ---- GET /v3/routes/:id --------------------------------------------------------------------- */

enum MHD_Result api_routes_get(struct api_server *api, struct api_request *req)
{
    struct route_table *t = route_registry_current(api->routes);
    const struct route *r = find_route(t, api_param(req, "id"), NULL);
    json_t *body = r ? json_pack("{s:o}", "route", route_json(route_get_def(r))) : NULL;
    route_table_unref(t);
    if (!body) return reply_not_found(req);
    return api_reply_json(req->conn, MHD_HTTP_OK, body);
}

/* ---- POST /v3/routes ------------------------------------------------------------------------ */

enum MHD_Result api_routes_create(struct api_server *api, struct api_request *req)
{
    struct route_input in;
    char *msg = read_input(req, &in);
    if (!msg && !in.has_expression) msg = g_strdup("Expression is missing");
    if (!msg && in.nactions == 0) msg = g_strdup("'action' parameter is missing");
    if (msg) {
        enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
        g_free(msg);
        return r;
    }

    route_registry_lock(api->routes);
    struct route_table *cur = route_registry_current(api->routes);
    enum MHD_Result ret;
    char *err = NULL;
    size_t n = route_table_count(cur);
    if ((int64_t)n >= api->cfg.route_quota) {
        ret = reply_quota(api, req);
        goto out;
    }

    /* The store assigns the hidden sequence; the route is compiled with the next one this table
     * would give it (the largest so far + 1) and recompiled in the rare case the store says
     * otherwise (e.g. after deletions of the last routes), so ordering always uses the stored
     * value. */
    int64_t seq = 1;
    for (size_t i = 0; i < n; i++) {
        int64_t s = route_get_def(route_table_at(cur, i))->seq;
        if (s >= seq) seq = s + 1;
    }
    char id[ID_LEN + 1];
    id_generate(id);
    struct route_def def = {.id = id, .priority = in.has_priority ? in.priority : 0, .seq = seq,
                            .description = in.has_description ? in.description : "",
                            .expression = in.expression, .actions = in.actions,
                            .nactions = in.nactions, .created_at = (int64_t)time(NULL)};
    struct route *r = route_compile(&def, &err);
    if (!r) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, err);
        goto out;
    }
    struct store_route sr = store_view(&def);
    enum store_status st = store_route_insert(api->store, &sr, api->cfg.route_quota, &err);
    if (st != STORE_OK) {
        route_free(r);
        if (st == STORE_ERR_QUOTA) {
            free(err);
            err = NULL;
            ret = reply_quota(api, req);
        } else {
            ret = reply_store_error(req, st, err);
            err = NULL;
        }
        goto out;
    }
    if (sr.seq != seq) {
        def.seq = sr.seq;
        route_free(r);
        r = route_compile(&def, &err);
        if (!r) { /* compiled a moment ago: only memory can fail */
            ret = api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
            goto out;
        }
    }
    json_t *rj = route_json(route_get_def(r));
    publish(api, route_table_derive(cur, NULL, r));
    log_info("http", "route created id=%s", id);
    ret = api_reply_json(req->conn, MHD_HTTP_OK,
                         json_pack("{s:s, s:o}", "message", "Route has been created", "route", rj));
out:
    route_table_unref(cur);
    route_registry_unlock(api->routes);
    free(err);
    return ret;
}

/* ---- POST /v3/routes/check ------------------------------------------------------------------ */

/* Compiles `expression` (and the actions, when given) exactly as POST /v3/routes would, and
 * stores nothing: the console checks a route as it is typed with the API's own compiler. */
enum MHD_Result api_routes_check(struct api_server *api, struct api_request *req)
{
    struct route_input in;
    char *msg = read_input(req, &in);
    if (!msg && !in.has_expression) msg = g_strdup("Expression is missing");
    if (msg) {
        enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
        g_free(msg);
        return r;
    }
    /* No action given: check the expression with a harmless one. */
    const char *stop[] = {"stop()"};
    struct route_def def = {.id = "check", .priority = in.priority, .seq = 1, .description = "",
                            .expression = in.expression,
                            .actions = in.nactions ? in.actions : stop,
                            .nactions = in.nactions ? in.nactions : 1,
                            .created_at = (int64_t)time(NULL)};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    if (!r) {
        enum MHD_Result ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, err);
        free(err);
        return ret;
    }
    route_free(r);
    return api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:s}", "message", "Route is valid"));
}

/* ---- PUT /v3/routes/:id --------------------------------------------------------------------- */

enum MHD_Result api_routes_update(struct api_server *api, struct api_request *req)
{
    struct route_input in;
    char *msg = read_input(req, &in);
    if (msg) {
        enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
        g_free(msg);
        return r;
    }
    const char *id = api_param(req, "id");
    route_registry_lock(api->routes);
    struct route_table *cur = route_registry_current(api->routes);
    enum MHD_Result ret;
    char *err = NULL;
    const struct route *old = find_route(cur, id, NULL);
    if (!old) {
        ret = reply_not_found(req);
        goto out;
    }
    /* Absent fields keep their values; given actions replace the whole list. */
    const struct route_def *od = route_get_def(old);
    struct route_def def = *od;
    if (in.has_priority) def.priority = in.priority;
    if (in.has_description) def.description = in.description;
    if (in.has_expression) def.expression = in.expression;
    if (in.nactions) {
        def.actions = in.actions;
        def.nactions = in.nactions;
    }
    struct route *r = route_compile(&def, &err);
    if (!r) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, err);
        goto out;
    }
    struct store_route sr = store_view(&def);
    enum store_status st = store_route_update(api->store, &sr, &err);
    if (st != STORE_OK) {
        route_free(r);
        if (st == STORE_ERR_NOT_FOUND) {
            ret = reply_not_found(req);
        } else {
            ret = reply_store_error(req, st, err);
            err = NULL;
        }
        goto out;
    }
    const struct route_def *nd = route_get_def(r);
    json_t *body = route_json(nd);
    json_object_set_new(body, "message", json_string("Route has been updated"));
    json_object_set_new(body, "route", route_json(nd));
    publish(api, route_table_derive(cur, id, r));
    log_info("http", "route updated id=%s", id);
    ret = api_reply_json(req->conn, MHD_HTTP_OK, body);
out:
    route_table_unref(cur);
    route_registry_unlock(api->routes);
    free(err);
    return ret;
}

/* ---- DELETE /v3/routes/:id ------------------------------------------------------------------ */

enum MHD_Result api_routes_delete(struct api_server *api, struct api_request *req)
{
    const char *id = api_param(req, "id");
    route_registry_lock(api->routes);
    struct route_table *cur = route_registry_current(api->routes);
    enum MHD_Result ret;
    char *err = NULL;
    if (!find_route(cur, id, NULL)) {
        ret = reply_not_found(req);
        goto out;
    }
    enum store_status st = store_route_delete(api->store, id, &err);
    if (st != STORE_OK && st != STORE_ERR_NOT_FOUND) {
        ret = reply_store_error(req, st, err);
        err = NULL;
        goto out;
    }
    /* NOT_FOUND: another node deleted it; it goes from this table too. */
    publish(api, route_table_derive(cur, id, NULL));
    log_info("http", "route deleted id=%s", id);
    ret = api_reply_json(req->conn, MHD_HTTP_OK,
                         json_pack("{s:s, s:o}", "message", "Route has been deleted", "id", jstr(id)));
out:
    route_table_unref(cur);
    route_registry_unlock(api->routes);
    free(err);
    return ret;
}

/* ---- GET /v3/routes/match ------------------------------------------------------------------- */

enum MHD_Result api_routes_match(struct api_server *api, struct api_request *req)
{
    const struct form_field *a = api_form_get(&req->query, "address");
    if (!a) a = api_form_get(&req->body, "address");
    if (!a || a->len == 0)
        return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "'address' parameter is missing");
    if (memchr(a->value, '\0', a->len))
        return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                               "'address' must not contain NUL bytes");
    struct route_matcher *m = route_matcher_new();
    if (!m) return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
    struct route_table *t = route_registry_current(api->routes);
    const struct route *r = route_match_address(t, m, a->value);
    json_t *body = r ? json_pack("{s:o}", "route", route_json(route_get_def(r))) : NULL;
    route_table_unref(t);
    route_matcher_free(m);
    if (!body) return reply_not_found(req);
    return api_reply_json(req->conn, MHD_HTTP_OK, body);
}

/* ---- POST /v3/routes/test (extension: a dry run) -------------------------------------------- */

static json_t *result_json(const char *rcpt, const struct route_result *res)
{
    json_t *routes = json_array(), *deliveries = json_array(), *warnings = json_array();
    for (size_t i = 0; i < res->nhits; i++) {
        const struct route_hit *h = &res->hits[i];
        json_t *caps = json_object(), *acts = json_array();
        for (size_t c = 0; c < h->ncaptures; c++)
            json_object_set_new(caps, h->capture_names[c], jstr(h->capture_values[c]));
        for (size_t a = 0; a < h->nactions; a++) json_array_append_new(acts, jstr(h->actions[a]));
        json_array_append_new(routes, json_pack("{s:o, s:o, s:o}", "id", jstr(h->route_id),
                                                "captures", caps, "actions", acts));
    }
    for (size_t i = 0; i < res->ndeliveries; i++) {
        const struct route_delivery *d = &res->deliveries[i];
        json_t *ids = json_array();
        for (size_t k = 0; k < d->nroute_ids; k++) json_array_append_new(ids, jstr(d->route_ids[k]));
        json_array_append_new(deliveries,
                              json_pack("{s:s, s:o, s:s, s:o}", "kind",
                                        d->kind == ROUTE_DEST_URL ? "url" : "address", "target",
                                        jstr(d->target), "format", route_format_name(d->format),
                                        "route_ids", ids));
    }
    for (size_t i = 0; i < res->nwarnings; i++) json_array_append_new(warnings, jstr(res->warnings[i]));
    return json_pack("{s:o, s:o, s:o, s:I, s:o}", "recipient", jstr(rcpt), "routes", routes,
                     "deliveries", deliveries, "stored", (json_int_t)res->nstores, "warnings",
                     warnings);
}

/* The recipients of every `recipient` field, each split on commas and trimmed. */
static char *collect_recipients(const struct api_request *req, GPtrArray *out)
{
    const struct form *forms[] = {&req->body, &req->query};
    for (size_t fi = 0; fi < 2 && out->len == 0; fi++) {
        const struct form *f = forms[fi];
        for (size_t i = 0; i < f->n; i++) {
            if (strcmp(f->fields[i].name, "recipient") != 0) continue;
            if (memchr(f->fields[i].value, '\0', f->fields[i].len))
                return g_strdup("'recipient' must not contain NUL bytes");
            char **parts = g_strsplit(f->fields[i].value, ",", -1);
            for (char **p = parts; *p; p++) {
                g_strstrip(*p);
                if (!**p) continue;
                if (out->len >= ROUTE_TEST_RECIPIENTS_MAX) {
                    g_strfreev(parts);
                    return g_strdup_printf("More than %d recipients", ROUTE_TEST_RECIPIENTS_MAX);
                }
                g_ptr_array_add(out, g_strdup(*p));
            }
            g_strfreev(parts);
        }
    }
    return out->len ? NULL : g_strdup("'recipient' parameter is missing");
}

enum MHD_Result api_routes_test(struct api_server *api, struct api_request *req)
{
    const struct form_field *mf = api_form_get(&req->body, "message");
    if (!mf) return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "'message' parameter is missing");
    GPtrArray *rcpts = g_ptr_array_new_with_free_func(g_free);
    char *msg = collect_recipients(req, rcpts);
    if (msg) {
        enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
        g_free(msg);
        g_ptr_array_unref(rcpts);
        return r;
    }

    /* The headers as routes see them: unfolded and decoded by the same parser as the pipeline. */
    struct message *m = message_parse((const uint8_t *)mf->value, mf->len);
    struct route_matcher *rm = route_matcher_new();
    size_t nh = m ? message_header_count(m) : 0;
    const char **names = g_new0(const char *, nh + 1), **values = g_new0(const char *, nh + 1);
    for (size_t i = 0; i < nh; i++) message_header(m, i, &names[i], &values[i]);
    enum MHD_Result ret;
    if (!m || !rm) {
        ret = api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
        goto out;
    }
    struct route_table *t = route_registry_current(api->routes);
    json_t *list = json_array();
    bool oom = false;
    for (guint i = 0; i < rcpts->len && !oom; i++) {
        const struct route_message rmsg = {.recipient = g_ptr_array_index(rcpts, i),
                                           .nheaders = nh, .header_names = names,
                                           .header_values = values};
        struct route_result res;
        oom = route_evaluate(t, rm, &rmsg, &res) < 0;
        if (!oom) json_array_append_new(list, result_json(rmsg.recipient, &res));
        route_result_clear(&res);
    }
    route_table_unref(t);
    if (oom) {
        json_decref(list);
        ret = api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
    } else {
        ret = api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:o}", "recipients", list));
    }
out:
    g_free(names);
    g_free(values);
    route_matcher_free(rm);
    message_free(m);
    g_ptr_array_unref(rcpts);
    return ret;
}

/* ---- start-up ------------------------------------------------------------------------------- */

int api_routes_load(struct route_registry *reg, struct store *st, size_t *loaded, char **err)
{
    struct store_route *srs = NULL;
    size_t n = 0, k = 0;
    if (loaded) *loaded = 0;
    /* Read and publish under the writers' lock: a reload (another node's change, SPEC §8) must
     * not publish a table read before a change of this node's API that published in between. */
    route_registry_lock(reg);
    if (store_routes_load(st, &srs, &n, err) != STORE_OK) {
        route_registry_unlock(reg);
        return -1;
    }
    struct route **rs = calloc(n ? n : 1, sizeof *rs);
    if (!rs) {
        route_registry_unlock(reg);
        store_routes_free(srs, n);
        *err = g_strdup("out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const struct route_def def = {
            .id = srs[i].id, .priority = srs[i].priority, .seq = srs[i].seq,
            .description = srs[i].description, .expression = srs[i].expression,
            .actions = (const char *const *)srs[i].actions, .nactions = srs[i].nactions,
            .created_at = srs[i].created_at};
        char *cerr = NULL;
        struct route *r = route_compile(&def, &cerr);
        if (r) {
            rs[k++] = r;
        } else {
            log_error("engine", "stored route skipped id=%s: %s", srs[i].id, cerr ? cerr : "?");
            free(cerr);
        }
    }
    store_routes_free(srs, n);
    struct route_table *t = route_table_new(rs, k);
    free(rs);
    if (!t) {
        route_registry_unlock(reg);
        *err = g_strdup("out of memory");
        return -1;
    }
    route_registry_publish(reg, t);
    route_registry_unlock(reg);
    if (loaded) *loaded = k;
    return 0;
}
