/* api/deliveries.c — the dead-letter list and its replay (SPEC §7, extension):
 *
 *   GET  /v3/deliveries?state=failed&limit=100&page=<token>
 *        {"items": [delivery...], "paging": {"next": <absolute URL or null>}}
 *        state pending | delivered | failed (default failed); newest update first; limit 1..300
 *        (default 100); `next` is null once a page comes back short (nothing older is left).
 *   POST /v3/deliveries/<id>/retry
 *        a failed delivery is due again now: {"message": "Delivery queued", "id": <id>};
 *        404 {"message": "Delivery not found"} when there is no such failed delivery (or its
 *        message bytes are gone, past --failed-retention).
 *
 * A delivery: {"id", "message_id", "recipient", "kind", "target", "format", "route_ids" (array),
 * "state", "attempts", "last_status" (0: none), "last_error", "next_attempt_at" (RFC 1123; null
 * unless pending), "created_at", "updated_at"}. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/internal.h"
#include "storage/store.h"
#include "util/log.h"

static json_t *date_json(int64_t t)
{
    char buf[40];
    api_rfc1123(buf, sizeof buf, t);
    return json_string(buf);
}

static json_t *delivery_json(const struct store_delivery *d)
{
    json_t *ids = d->route_ids_json ? json_loads(d->route_ids_json, 0, NULL) : NULL;
    if (!json_is_array(ids)) {
        json_decref(ids);
        ids = json_array();
    }
    bool pending = d->state && strcmp(d->state, "pending") == 0;
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:o, s:o, s:o}",
                     "id", d->id, "message_id", d->message_id, "recipient", api_jstr(d->recipient),
                     "kind", api_jstr(d->kind), "target", api_jstr(d->target), "format",
                     api_jstr(d->format), "route_ids", ids, "state", api_jstr(d->state),
                     "attempts", (json_int_t)d->attempts, "last_status",
                     (json_int_t)d->last_status, "last_error", api_jstr(d->last_error),
                     "next_attempt_at", pending ? date_json(d->next_attempt_at) : json_null(),
                     "created_at", date_json(d->created_at), "updated_at",
                     date_json(d->updated_at));
}

/* Page token: base64url of {"u": updated_at, "i": "<id>"} of the last delivery shown. */
static char *token_encode(const struct store_delivery *d)
{
    json_t *j = json_pack("{s:I, s:s}", "u", (json_int_t)d->updated_at, "i", d->id);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) return NULL;
    char *tok = api_b64url_encode(text, strlen(text));
    free(text);
    return tok;
}

static bool token_decode(const char *tok, int64_t *updated_at, char id[ID_LEN + 1])
{
    size_t n = 0;
    uint8_t *raw = api_b64url_decode(tok, &n);
    if (!raw) return false;
    json_t *j = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, NULL);
    g_free(raw);
    json_int_t u = 0;
    const char *s = NULL;
    bool ok = j && json_unpack(j, "{s:I, s:s}", "u", &u, "i", &s) == 0 && strlen(s) <= ID_LEN &&
              *s;
    if (ok) {
        *updated_at = u;
        snprintf(id, ID_LEN + 1, "%s", s);
    }
    json_decref(j);
    return ok;
}

enum MHD_Result api_deliveries_list(struct api_server *api, struct api_request *req)
{
    const char *state = api_form_value(&req->query, "state");
    if (!state || !*state) state = "failed";
    if (strcmp(state, "failed") != 0 && strcmp(state, "pending") != 0 &&
        strcmp(state, "delivered") != 0)
        return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                               "Invalid 'state' parameter: pending, delivered or failed is expected");
    long long limit = API_DELIVERIES_LIMIT_DEFAULT;
    const char *l = api_form_value(&req->query, "limit");
    if (l && *l) {
        if (api_parse_count(l, &limit) != 1 || limit < 1 || limit > API_DELIVERIES_LIMIT_MAX)
            return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                                   "Invalid 'limit' parameter: an integer from 1 to 300 is expected");
    }
    int64_t before_at = 0;
    char before_id[ID_LEN + 1] = "";
    const char *page = api_form_value(&req->query, "page");
    if (page && *page && !token_decode(page, &before_at, before_id))
        return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "Invalid 'page' parameter");

    struct store_delivery *ds = NULL;
    size_t n = 0;
    char *err = NULL;
    enum store_status st = store_deliveries_list(api->store, state, before_at, before_id,
                                                 (size_t)limit, &ds, &n, &err);
    if (st != STORE_OK) return api_reply_store_error(req, "deliveries list", st, err);
    size_t total = n;
    if (n > (size_t)limit) n = (size_t)limit;
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *it = delivery_json(&ds[i]);
        if (it) json_array_append_new(items, it);
    }
    json_t *next = json_null();
    if (n == (size_t)limit && n > 0) {
        char *tok = token_encode(&ds[n - 1]);
        if (tok) {
            json_decref(next);
            next = json_sprintf("%s/v3/deliveries?state=%s&limit=%lld&page=%s",
                                api_server_public_url(api), state, limit, tok);
            if (!next) next = json_null();
            g_free(tok);
        }
    }
    store_deliveries_free(ds, total);
    return api_reply_json(req->conn, MHD_HTTP_OK,
                          json_pack("{s:o, s:{s:o}}", "items", items, "paging", "next", next));
}

/* A retry, kept while the request waits, suspended, for the commit (api/writes.c). */
struct retry_op {
    struct api_write w; /* first (api/internal.h) */
    char id[ID_LEN + 1];
};

static void retry_free(struct api_write *w)
{
    g_free(w);
}

/* The delivery is due now: the deliverer hears of it without waiting for its scan. */
static void retry_settle(struct api_server *api, struct api_write *w)
{
    struct retry_op *o = (struct retry_op *)w;

    if (w->status != STORE_OK) return;
    log_info("http", "delivery retry queued id=%s", o->id);
    if (api->cfg.deliveries_due) api->cfg.deliveries_due(api->cfg.hooks_arg);
}

static enum MHD_Result retry_reply(struct api_server *api, struct api_request *req, struct api_write *w)
{
    struct retry_op *o = (struct retry_op *)w;
    char *err = w->err;

    w->err = NULL;
    if (w->status == STORE_ERR_NOT_FOUND) {
        free(err);
        return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Delivery not found");
    }
    if (w->status != STORE_OK) return api_reply_store_error(req, "delivery retry", w->status, err);
    return api_reply_json(req->conn, MHD_HTTP_OK,
                          json_pack("{s:s, s:o}", "message", "Delivery queued", "id", api_jstr(o->id)));
}

enum MHD_Result api_deliveries_retry(struct api_server *api, struct api_request *req)
{
    const char *id = api_param(req, "id");
    if (!id || !*id || strlen(id) > ID_LEN)
        return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Delivery not found");
    struct retry_op *o = g_new0(struct retry_op, 1);
    o->w.settle = retry_settle;
    o->w.reply = retry_reply;
    o->w.free = retry_free;
    snprintf(o->id, sizeof o->id, "%s", id);
    enum MHD_Result r;
    if (!api_write_suspend(api, req, &o->w, &r)) return r;
    store_delivery_retry_async(api->store, o->id, (int64_t)time(NULL), api_write_done, req);
    return MHD_YES;
}
