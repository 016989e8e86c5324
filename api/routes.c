/* api/routes.c — the routes endpoints of SPEC §7 (Mailgun's Routes API), the dry run
 * POST /v3/routes/test, and loading the stored routes at start.
 *
 * Every change follows one path, one change at a time (api_write_turn: route writes take turns in
 * arrival order, waiting suspended, holding no pool thread):
 *     compile the changed route (400 with route_compile's text, which names the position)
 *  -> queue its store write without waiting and suspend the request (api/writes.c)
 *  -> once committed, under the registry's lock, build the next table from the current one:
 *     every other route is shared (route_ref), never recompiled; the changed one is added,
 *     replaced or left out
 *  -> publish it -> unlock -> answer -> the next route write's turn.
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

/* ---- route writes: POST /v3/routes, PUT and DELETE /v3/routes/:id -------------------------- */

/* One route write, from its turn (api_write_turn) to its reply: everything the store write and
 * the table to publish need, kept while the request waits, suspended, for the commit. */
struct route_op {
    struct api_write w;        /* first (api/internal.h) */
    enum { OP_CREATE, OP_UPDATE, OP_DELETE } op;
    struct route_input in;     /* the fields (strings in the request's forms) */
    char id[ID_LEN + 1];
    struct route_def def;      /* create, update: the route written */
    struct route *r;           /* create, update: def compiled; taken by the published table */
    struct store_route sr;     /* the store's view of def (create: the stored seq comes back) */
    struct route_table *old;   /* update: the table def's unchanged fields point into */
};

static void route_op_free(struct api_write *w)
{
    struct route_op *o = (struct route_op *)w;

    route_free(o->r);
    if (o->old) route_table_unref(o->old);
    g_free(o);
}

/* What a committed write changes in this process: the next table, built from the current one
 * under the registry's lock (every route but this id, plus the new version of it when there is
 * one: a table another node's change reloaded meanwhile may hold this id already).  Published
 * before the reply, so a change the API answered 200 for is in the table the next message is
 * evaluated against. */
static void route_op_settle(struct api_server *api, struct api_write *w)
{
    struct route_op *o = (struct route_op *)w;
    bool ok = w->status == STORE_OK || (o->op == OP_DELETE && w->status == STORE_ERR_NOT_FOUND);
    char *err = NULL;

    if (!ok) return;
    if (o->op == OP_CREATE && o->sr.seq != o->def.seq) {
        /* The store's seq differs from the guess (e.g. after deletions of the last routes): the
         * order uses the stored value. */
        o->def.seq = o->sr.seq;
        route_free(o->r);
        o->r = route_compile(&o->def, &err); /* compiled a moment ago: only memory can fail */
        g_free(err);
        if (!o->r) {
            log_error("http", "routes: out of memory compiling route id=%s; the change is stored "
                              "and takes effect at the next start", o->id);
            return;
        }
    }
    route_registry_lock(api->routes);
    struct route_table *cur = route_registry_current(api->routes);
    publish(api, route_table_derive(cur, o->id, o->r));
    o->r = NULL; /* taken by the table (or freed with it) */
    route_table_unref(cur);
    route_registry_unlock(api->routes);
    log_info("http", "route %s id=%s", o->op == OP_CREATE ? "created" : o->op == OP_UPDATE ? "updated" : "deleted",
             o->id);
}

/* A store error (not QUOTA / NOT_FOUND, which the replies answer themselves); takes w->err. */
static enum MHD_Result reply_write_failed(struct api_request *req, struct api_write *w)
{
    char *err = w->err;

    w->err = NULL;
    return reply_store_error(req, w->status, err);
}

static enum MHD_Result route_op_reply(struct api_server *api, struct api_request *req,
                                      struct api_write *w)
{
    struct route_op *o = (struct route_op *)w;

    switch (o->op) {
    case OP_CREATE:
        if (w->status == STORE_ERR_QUOTA) return reply_quota(api, req);
        if (w->status != STORE_OK) return reply_write_failed(req, w);
        return api_reply_json(req->conn, MHD_HTTP_OK,
                              json_pack("{s:s, s:o}", "message", "Route has been created", "route",
                                        route_json(&o->def)));
    case OP_UPDATE: {
        if (w->status == STORE_ERR_NOT_FOUND) return reply_not_found(req);
        if (w->status != STORE_OK) return reply_write_failed(req, w);
        json_t *body = route_json(&o->def);
        json_object_set_new(body, "message", json_string("Route has been updated"));
        json_object_set_new(body, "route", route_json(&o->def));
        return api_reply_json(req->conn, MHD_HTTP_OK, body);
    }
    case OP_DELETE:
        /* NOT_FOUND: another node deleted it; it went from this table too (settle). */
        if (w->status != STORE_OK && w->status != STORE_ERR_NOT_FOUND) return reply_write_failed(req, w);
        return api_reply_json(req->conn, MHD_HTTP_OK,
                              json_pack("{s:s, s:o}", "message", "Route has been deleted", "id",
                                        jstr(o->id)));
    }
    return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal error");
}

static struct route_op *route_op_new(int op)
{
    struct route_op *o = g_new0(struct route_op, 1);

    o->w.settle = route_op_settle;
    o->w.reply = route_op_reply;
    o->w.free = route_op_free;
    o->op = op;
    return o;
}

/* Suspends the request and queues the write of `o` (taken). */
static enum MHD_Result route_op_submit(struct api_server *api, struct api_request *req,
                                       struct route_op *o)
{
    enum MHD_Result ret;

    if (o->op != OP_DELETE) o->sr = store_view(&o->def);
    if (!api_write_suspend(api, req, &o->w, &ret)) return ret;
    switch (o->op) {
    case OP_CREATE: store_route_insert_async(api->store, &o->sr, api->cfg.route_quota, api_write_done, req); break;
    case OP_UPDATE: store_route_update_async(api->store, &o->sr, api_write_done, req); break;
    case OP_DELETE: store_route_delete_async(api->store, o->id, api_write_done, req); break;
    }
    return MHD_YES;
}

/* A 400 with route_compile's or read_input's message (taken, freed with g_free). */
static enum MHD_Result reply_bad(struct api_request *req, struct route_op *o, char *msg)
{
    enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
    g_free(msg);
    route_op_free(&o->w);
    return r;
}

/* Create and update end alike: the new definition compiled (a 400 naming the position when it
 * does not), then its store write queued and the request suspended. */
static enum MHD_Result compile_and_submit(struct api_server *api, struct api_request *req,
                                          struct route_op *o)
{
    char *err = NULL;
    o->r = route_compile(&o->def, &err);
    if (!o->r) {
        char *msg = g_strdup(err ? err : "Invalid route");
        free(err);
        return reply_bad(req, o, msg);
    }
    return route_op_submit(api, req, o);
}

enum MHD_Result api_routes_create(struct api_server *api, struct api_request *req)
{
    enum MHD_Result ret;
    if (!api_write_turn(api, req, &ret)) return ret;
    struct route_op *o = route_op_new(OP_CREATE);
    char *msg = read_input(req, &o->in);
    if (!msg && !o->in.has_expression) msg = g_strdup("Expression is missing");
    if (!msg && o->in.nactions == 0) msg = g_strdup("'action' parameter is missing");
    if (msg) return reply_bad(req, o, msg);

    struct route_table *cur = route_registry_current(api->routes);
    size_t n = route_table_count(cur);
    /* The store assigns the hidden sequence; the route is compiled with the next one this table
     * would give it (the largest so far + 1) and recompiled in the rare case the store says
     * otherwise (route_op_settle).  The store checks the quota again, in its transaction. */
    int64_t seq = 1;
    for (size_t i = 0; i < n; i++) {
        int64_t s = route_get_def(route_table_at(cur, i))->seq;
        if (s >= seq) seq = s + 1;
    }
    route_table_unref(cur);
    if ((int64_t)n >= api->cfg.route_quota) {
        route_op_free(&o->w);
        return reply_quota(api, req);
    }
    id_generate(o->id);
    o->def = (struct route_def){.id = o->id, .priority = o->in.has_priority ? o->in.priority : 0,
                                .seq = seq,
                                .description = o->in.has_description ? o->in.description : "",
                                .expression = o->in.expression, .actions = o->in.actions,
                                .nactions = o->in.nactions, .created_at = (int64_t)time(NULL)};
    return compile_and_submit(api, req, o);
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
    enum MHD_Result ret;
    if (!api_write_turn(api, req, &ret)) return ret;
    struct route_op *o = route_op_new(OP_UPDATE);
    char *msg = read_input(req, &o->in);
    if (msg) return reply_bad(req, o, msg);
    snprintf(o->id, sizeof o->id, "%s", api_param(req, "id"));
    o->old = route_registry_current(api->routes);
    const struct route *old = find_route(o->old, api_param(req, "id"), NULL);
    if (!old) {
        route_op_free(&o->w);
        return reply_not_found(req);
    }
    /* Absent fields keep their values; given actions replace the whole list. */
    o->def = *route_get_def(old);
    o->def.id = o->id;
    if (o->in.has_priority) o->def.priority = o->in.priority;
    if (o->in.has_description) o->def.description = o->in.description;
    if (o->in.has_expression) o->def.expression = o->in.expression;
    if (o->in.nactions) {
        o->def.actions = o->in.actions;
        o->def.nactions = o->in.nactions;
    }
    return compile_and_submit(api, req, o);
}

/* ---- DELETE /v3/routes/:id ------------------------------------------------------------------ */

enum MHD_Result api_routes_delete(struct api_server *api, struct api_request *req)
{
    enum MHD_Result ret;
    if (!api_write_turn(api, req, &ret)) return ret;
    const char *id = api_param(req, "id");
    struct route_table *cur = route_registry_current(api->routes);
    bool known = find_route(cur, id, NULL) != NULL;
    route_table_unref(cur);
    if (!known) return reply_not_found(req);
    struct route_op *o = route_op_new(OP_DELETE);
    snprintf(o->id, sizeof o->id, "%s", id);
    return route_op_submit(api, req, o);
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
