/* api/events.c — GET /v3/<domain>/events (SPEC §7, extension in the shape of Mailgun's Events
 * API, which mailgun.js, mailgun-go and mailgun-python parse).
 *
 * Items: {"id", "event", "timestamp" (float seconds), "log-level", "recipient",
 * "recipient-domain", "message": {"headers": {"message-id"}}, "envelope": {"targets"} and
 * "delivery-status" {code, message, description, attempt-no, session-seconds} for delivered /
 * failed, "severity" and "reason" for failed, "storage" {key, url} for stored, "routes" /
 * "route_ids" from the event's detail (a stored copy's one "route_id" as a one-element
 * "route_ids"), "delivery-id" (extension) for deliveries.  Detail keys read (storage/ writes
 * them): key, route_id, route_ids, routes, attempt, status, error, target, duration_ms, reason.
 * message-id is inlet's message id (the `message-id` filter compares it): the events carry no
 * header of the message.
 *
 * Filters: event, message-id, recipient, begin, end (RFC 2822 dates, ISO 8601, or Unix seconds
 * with a fraction), ascending (yes/no, default no), limit (1..300, default 100).  The time range
 * follows Mailgun: with begin and end, begin > end means newest first; with one bound the
 * direction is `ascending`'s and the bound is the side the traversal starts from (begin) or
 * stops at (end).
 *
 * Paging: {"next", "previous", "first", "last"}, absolute URLs <public-url>/v3/<domain>/events/
 * <token>.  The token (base64url of a small JSON object) holds every filter, the limit, the
 * direction and the cursor (timestamp, event id) of the page boundary, so a paging URL is
 * complete by itself: filters in its query string are ignored.  `next` is always there (an
 * empty page ends a walk; asking again later shows what happened since, as with Mailgun);
 * `previous` goes back from the first item of the page; `first` and `last` are the two ends. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"
#include "storage/store.h"
#include "util/log.h"

struct events_query {
    char *event, *message_id, *recipient; /* NULL = any (g_malloc'd) */
    int64_t begin_ms, end_ms;             /* inclusive bounds, 0 = none */
    bool ascending;                       /* presentation order */
    size_t limit;
    /* The page: rows after the cursor in presentation order (backward: before it, read in the
     * opposite order and presented reversed). */
    bool backward;
    int64_t cursor_ts, cursor_id;         /* cursor_id 0 = no cursor */
};

static void query_clear(struct events_query *q)
{
    g_free(q->event);
    g_free(q->message_id);
    g_free(q->recipient);
    memset(q, 0, sizeof *q);
}

/* ---- times ---------------------------------------------------------------------------------- */

static int month_index(const char *s, size_t n)
{
    static const char *const months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                         "jul", "aug", "sep", "oct", "nov", "dec"};
    if (n < 3) return -1;
    for (int i = 0; i < 12; i++)
        if (g_ascii_strncasecmp(s, months[i], 3) == 0) return i + 1;
    return -1;
}

/* Reads digits into *v (at most `max` of them); the count read. */
static int digits(const char **p, int max, int *v)
{
    int n = 0;
    *v = 0;
    while (n < max && g_ascii_isdigit(**p)) {
        *v = *v * 10 + (**p - '0');
        (*p)++;
        n++;
    }
    return n;
}

/* RFC 2822 (and RFC 850-ish): "[Day,] D Mon YYYY HH:MM[:SS] [+hhmm|-hhmm|GMT|UT|UTC|Z|EST...]". */
static bool parse_rfc2822(const char *s, int64_t *ms)
{
    const char *p = s;
    while (*p == ' ') p++;
    const char *comma = strchr(p, ',');
    if (comma && comma - p <= 10) p = comma + 1;
    while (*p == ' ') p++;
    int day, year, hh, mm, ss = 0;
    if (digits(&p, 2, &day) < 1) return false;
    while (*p == ' ' || *p == '-') p++;
    const char *mon = p;
    while (g_ascii_isalpha(*p)) p++;
    int month = month_index(mon, (size_t)(p - mon));
    if (month < 0) return false;
    while (*p == ' ' || *p == '-') p++;
    int yd = digits(&p, 4, &year);
    if (yd == 2) year += year < 50 ? 2000 : 1900;
    else if (yd != 4) return false;
    while (*p == ' ') p++;
    if (digits(&p, 2, &hh) < 1 || *p++ != ':' || digits(&p, 2, &mm) != 2) return false;
    if (*p == ':') {
        p++;
        if (digits(&p, 2, &ss) != 2) return false;
    }
    while (*p == ' ') p++;
    int offset_min = 0;
    if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, hhmm;
        if (digits(&p, 4, &hhmm) != 4) return false;
        offset_min = sign * ((hhmm / 100) * 60 + hhmm % 100);
    } else if (*p) {
        static const struct { const char *name; int minutes; } zones[] = {
            {"GMT", 0}, {"UTC", 0}, {"UT", 0}, {"Z", 0}, {"EST", -300}, {"EDT", -240},
            {"CST", -360}, {"CDT", -300}, {"MST", -420}, {"MDT", -360}, {"PST", -480},
            {"PDT", -420}};
        const char *z = p;
        while (g_ascii_isalpha(*p)) p++;
        size_t zl = (size_t)(p - z);
        bool found = false;
        for (size_t i = 0; i < G_N_ELEMENTS(zones) && !found; i++)
            if (strlen(zones[i].name) == zl && g_ascii_strncasecmp(z, zones[i].name, zl) == 0) {
                offset_min = zones[i].minutes;
                found = true;
            }
        if (!found) return false;
    }
    while (*p == ' ') p++;
    if (*p) return false;
    if (day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60) return false;
    GDateTime *dt = g_date_time_new_utc(year, month, day, hh, mm, ss == 60 ? 59 : ss);
    if (!dt) return false;
    *ms = (g_date_time_to_unix(dt) - (int64_t)offset_min * 60) * 1000;
    g_date_time_unref(dt);
    return true;
}

/* Unix seconds (a fraction allowed), an RFC 2822 date, or ISO 8601 → Unix milliseconds. */
static bool parse_time(const char *s, int64_t *ms)
{
    if (!*s || strlen(s) > API_EVENTS_TIME_MAX) return false;
    if (g_ascii_isdigit(s[0])) {
        const char *p = s;
        while (g_ascii_isdigit(*p)) p++;
        if (*p == '.') {
            p++;
            while (g_ascii_isdigit(*p)) p++;
        }
        if (!*p) {
            double v = g_ascii_strtod(s, NULL);
            if (!(v >= 0 && v < 1e13)) return false;
            *ms = (int64_t)(v * 1000.0 + 0.5);
            return true;
        }
    }
    if (parse_rfc2822(s, ms)) return true;
    GTimeZone *utc = g_time_zone_new_utc();
    GDateTime *dt = g_date_time_new_from_iso8601(s, utc);
    g_time_zone_unref(utc);
    if (!dt) return false;
    *ms = g_date_time_to_unix(dt) * 1000 + g_date_time_get_microsecond(dt) / 1000;
    g_date_time_unref(dt);
    return true;
}

/* ---- the request ---------------------------------------------------------------------------- */

/* A filter's value from the query string: NULL when absent; *bad when it is unusable. */
static char *filter(const struct api_request *req, const char *name, const char **bad)
{
    const struct form_field *f = api_form_get(&req->query, name);
    if (!f || f->len == 0) return NULL;
    if (f->len > API_EVENTS_FILTER_MAX || memchr(f->value, '\0', f->len) ||
        !g_utf8_validate(f->value, (gssize)f->len, NULL)) {
        *bad = name;
        return NULL;
    }
    return g_strndup(f->value, f->len);
}

/* The query from the query string.  NULL when fine, else the message of the 400 (g_malloc'd). */
static char *query_from_params(const struct api_request *req, struct events_query *q)
{
    const char *bad = NULL;
    q->event = filter(req, "event", &bad);
    q->message_id = filter(req, "message-id", &bad);
    q->recipient = filter(req, "recipient", &bad);
    if (bad) return g_strdup_printf("Invalid '%s' parameter", bad);

    const char *asc = api_form_value(&req->query, "ascending");
    bool asc_given = asc && *asc;
    if (asc_given) {
        if (!g_ascii_strcasecmp(asc, "yes") || !g_ascii_strcasecmp(asc, "true")) q->ascending = true;
        else if (!g_ascii_strcasecmp(asc, "no") || !g_ascii_strcasecmp(asc, "false")) q->ascending = false;
        else return g_strdup("Invalid 'ascending' parameter: 'yes' or 'no' is expected");
    }
    const char *b = api_form_value(&req->query, "begin"), *e = api_form_value(&req->query, "end");
    int64_t begin = 0, end = 0;
    bool has_b = b && *b, has_e = e && *e;
    if (has_b && !parse_time(b, &begin))
        return g_strdup("Invalid 'begin' parameter: an RFC 2822 date or Unix seconds are expected");
    if (has_e && !parse_time(e, &end))
        return g_strdup("Invalid 'end' parameter: an RFC 2822 date or Unix seconds are expected");
    if (has_b && has_e) {
        q->ascending = begin <= end;
        q->begin_ms = MIN(begin, end);
        q->end_ms = MAX(begin, end);
    } else if (has_b) {
        if (q->ascending) q->begin_ms = begin;
        else q->end_ms = begin;
    } else if (has_e) {
        if (q->ascending) q->end_ms = end;
        else q->begin_ms = end;
    }

    long long limit = API_EVENTS_LIMIT_DEFAULT;
    const char *l = api_form_value(&req->query, "limit");
    if (l && *l) {
        int r = api_parse_count(l, &limit);
        if (r != 1 || limit < 1 || limit > API_EVENTS_LIMIT_MAX)
            return g_strdup_printf("Invalid 'limit' parameter: an integer from 1 to %d is expected",
                                   API_EVENTS_LIMIT_MAX);
    }
    q->limit = (size_t)limit;
    return NULL;
}

/* ---- page tokens ---------------------------------------------------------------------------- */

static char *token_encode(const struct events_query *q, bool backward, int64_t ts, int64_t id)
{
    json_t *j = json_pack("{s:i, s:b, s:I, s:b, s:I, s:I, s:I, s:I}", "v", 1, "a",
                          (int)q->ascending, "l", (json_int_t)q->limit, "k", (int)backward,
                          "b", (json_int_t)q->begin_ms, "n", (json_int_t)q->end_ms, "t",
                          (json_int_t)ts, "i", (json_int_t)id);
    if (!j) return NULL;
    if (q->event) json_object_set_new(j, "e", json_string(q->event));
    if (q->message_id) json_object_set_new(j, "m", json_string(q->message_id));
    if (q->recipient) json_object_set_new(j, "r", json_string(q->recipient));
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text) return NULL;
    char *tok = api_b64url_encode(text, strlen(text));
    free(text);
    return tok;
}

static bool token_string(json_t *j, const char *key, char **out)
{
    json_t *v = json_object_get(j, key);
    if (!v) return true;
    if (!json_is_string(v) || json_string_length(v) > API_EVENTS_FILTER_MAX ||
        memchr(json_string_value(v), '\0', json_string_length(v)))
        return false;
    *out = g_strdup(json_string_value(v));
    return true;
}

static bool token_decode(const char *tok, struct events_query *q)
{
    size_t n = 0;
    uint8_t *raw = api_b64url_decode(tok, &n);
    if (!raw) return false;
    json_t *j = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, NULL);
    g_free(raw);
    if (!json_is_object(j)) {
        json_decref(j);
        return false;
    }
    json_int_t v = 0, limit = 0, b = 0, e = 0, ts = 0, id = 0;
    int asc = 0, back = 0;
    bool ok = json_unpack(j, "{s:I, s:b, s:I, s:b, s:I, s:I, s:I, s:I}", "v", &v, "a", &asc,
                          "l", &limit, "k", &back, "b", &b, "n", &e, "t", &ts, "i", &id) == 0 &&
              v == 1 && limit >= 1 && limit <= API_EVENTS_LIMIT_MAX && b >= 0 && e >= 0 && id >= 0 &&
              token_string(j, "e", &q->event) && token_string(j, "m", &q->message_id) &&
              token_string(j, "r", &q->recipient);
    json_decref(j);
    if (!ok) return false;
    q->ascending = asc;
    q->backward = back;
    q->limit = (size_t)limit;
    q->begin_ms = b;
    q->end_ms = e;
    q->cursor_ts = ts;
    q->cursor_id = id;
    return true;
}

/* ---- items ---------------------------------------------------------------------------------- */

/* The first of `keys` (NULL-terminated) that `detail` has. */
static json_t *detail_get(json_t *detail, const char *const *keys)
{
    for (; *keys; keys++) {
        json_t *v = json_object_get(detail, *keys);
        if (v && !json_is_null(v)) return v;
    }
    return NULL;
}

static const char *log_level(const struct store_event *e)
{
    if (strcmp(e->event, "failed") != 0) return "info";
    return strcmp(e->severity, "permanent") == 0 ? "error" : "warn";
}

static void add_delivery_status(json_t *item, json_t *detail, const struct store_event *e)
{
    static const char *const k_code[] = {"status", "code", "last_status", NULL};
    static const char *const k_msg[] = {"error", "message", "last_error", NULL};
    static const char *const k_attempt[] = {"attempt", "attempt_no", "attempt-no", "attempts", NULL};
    static const char *const k_dur[] = {"duration_ms", NULL};
    static const char *const k_target[] = {"target", NULL};
    json_t *code = detail_get(detail, k_code), *msg = detail_get(detail, k_msg);
    json_t *att = detail_get(detail, k_attempt), *dur = detail_get(detail, k_dur);
    json_t *target = detail_get(detail, k_target);
    const char *text = json_is_string(msg) ? json_string_value(msg) : "";
    json_t *ds = json_pack("{s:I, s:o, s:o, s:I}", "code",
                           (json_int_t)(json_is_integer(code) ? json_integer_value(code) : 0),
                           "message", api_jstr(text), "description", api_jstr(text), "attempt-no",
                           (json_int_t)(json_is_integer(att) ? json_integer_value(att) : 1));
    if (ds && json_is_number(dur)) json_object_set_new(ds, "session-seconds",
                                                       json_real(json_number_value(dur) / 1000.0));
    else if (ds) json_object_set_new(ds, "session-seconds", json_real(0));
    if (ds) json_object_set_new(item, "delivery-status", ds);
    if (json_is_string(target))
        json_object_set_new(item, "envelope", json_pack("{s:O}", "targets", target));
    if (*e->delivery_id) json_object_set_new(item, "delivery-id", api_jstr(e->delivery_id));
}

static json_t *event_json(const struct api_server *api, const struct store_event *e)
{
    json_t *detail = e->detail_json ? json_loads(e->detail_json, 0, NULL) : NULL;
    if (!json_is_object(detail)) {
        json_decref(detail);
        detail = json_object();
    }
    char id[32];
    snprintf(id, sizeof id, "%lld", (long long)e->id);
    json_t *item = json_pack(
        "{s:s, s:o, s:f, s:s, s:o, s:o, s:{s:{s:o}}, s:[], s:[], s:{}}", "id", id, "event",
        api_jstr(e->event), "timestamp", (double)e->ts_ms / 1000.0, "log-level", log_level(e),
        "recipient", api_jstr(e->recipient), "recipient-domain", api_jstr(e->domain), "message",
        "headers", "message-id", api_jstr(e->message_id), "tags", "campaigns", "user-variables");
    if (!item) {
        json_decref(detail);
        return NULL;
    }
    static const char *const k_key[] = {"key", "storage_key", NULL};
    json_t *key = detail_get(detail, k_key);
    if (strcmp(e->event, "stored") == 0 && json_is_string(key)) {
        char *d = api_url_escape(e->domain), *k = api_url_escape(json_string_value(key));
        char *url = g_strdup_printf("%s/v3/domains/%s/messages/%s", api_server_public_url(api), d, k);
        json_object_set_new(item, "storage", json_pack("{s:O, s:s}", "key", key, "url", url));
        g_free(url);
        g_free(d);
        g_free(k);
    }
    if (strcmp(e->event, "delivered") == 0 || strcmp(e->event, "failed") == 0)
        add_delivery_status(item, detail, e);
    if (strcmp(e->event, "failed") == 0) {
        static const char *const k_reason[] = {"reason", NULL};
        json_t *reason = detail_get(detail, k_reason);
        json_object_set_new(item, "severity", api_jstr(*e->severity ? e->severity : "permanent"));
        json_object_set_new(item, "reason", json_is_string(reason) ? json_incref(reason)
                                                                   : json_string("generic"));
    }
    json_t *v;
    /* accepted (extension): whether some route matched the recipient ("routed") or none did
     * ("dropped": nothing is delivered or stored for it). */
    if (strcmp(e->event, "accepted") == 0 && json_is_string(v = json_object_get(detail, "outcome")))
        json_object_set(item, "outcome", v);
    if ((v = json_object_get(detail, "routes"))) json_object_set(item, "routes", v);
    if ((v = json_object_get(detail, "route_ids"))) {
        json_object_set(item, "route_ids", v);
    } else if ((v = json_object_get(detail, "route_id")) && json_is_string(v) &&
               json_string_length(v) > 0) {
        /* A stored copy names the one route that asked for it ("" for a postmaster copy). */
        json_object_set_new(item, "route_ids", json_pack("[O]", v));
    }
    json_decref(detail);
    return item;
}

/* ---- the handler ---------------------------------------------------------------------------- */

/* <public-url>/v3/<domain>/events/<token> (g_malloc'd); NULL when memory ran out. */
static char *page_url(const struct api_server *api, const char *domain,
                      const struct events_query *q, bool backward, int64_t ts, int64_t id)
{
    char *tok = token_encode(q, backward, ts, id);
    if (!tok) return NULL;
    char *d = api_url_escape(domain);
    char *url = g_strdup_printf("%s/v3/%s/events/%s", api_server_public_url(api), d, tok);
    g_free(d);
    g_free(tok);
    return url;
}

/* The cursor that includes the row (ts, id) itself when reading in order `asc`: rows strictly
 * after (ts, id - 1) ascending, strictly before (ts, id + 1) descending. */
static int64_t inclusive_id(bool asc, int64_t id)
{
    return asc ? id - 1 : id + 1;
}

static json_t *paging_json(const struct api_server *api, const char *domain,
                           const struct events_query *q, const struct store_event *first,
                           const struct store_event *last)
{
    int64_t nts = q->cursor_ts, nid = q->cursor_id; /* next: forward */
    int64_t pts = q->cursor_ts, pid = q->cursor_id; /* previous: backward */
    if (last) {
        nts = last->ts_ms;
        nid = last->id;
        pts = first->ts_ms;
        pid = first->id;
    } else if (q->backward) {
        /* Nothing before the cursor: next starts at the cursor's own row. */
        if (q->cursor_id) nid = inclusive_id(q->ascending, q->cursor_id);
    } else {
        /* Nothing after the cursor: previous ends with the cursor's own row. */
        if (q->cursor_id) pid = inclusive_id(!q->ascending, q->cursor_id);
    }
    char *next = page_url(api, domain, q, false, nts, nid);
    char *prev = page_url(api, domain, q, true, pts, pid);
    char *first_url = page_url(api, domain, q, false, 0, 0);
    char *last_url = page_url(api, domain, q, true, 0, 0);
    json_t *j = NULL;
    if (next && prev && first_url && last_url)
        j = json_pack("{s:s, s:s, s:s, s:s}", "next", next, "previous", prev, "first", first_url,
                      "last", last_url);
    g_free(next);
    g_free(prev);
    g_free(first_url);
    g_free(last_url);
    return j;
}

enum MHD_Result api_events_list(struct api_server *api, struct api_request *req)
{
    const char *dom = api_param(req, "domain");
    const char *page = api_param(req, "page");
    if (!dom || !*dom || strlen(dom) > SMTP_DOMAIN_MAX || !g_utf8_validate(dom, -1, NULL))
        return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Domain not found");
    struct events_query q = {0};
    if (page) {
        if (!token_decode(page, &q)) {
            query_clear(&q);
            return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "Invalid page token");
        }
    } else {
        char *msg = query_from_params(req, &q);
        if (msg) {
            enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
            g_free(msg);
            query_clear(&q);
            return r;
        }
    }
    char *domain = g_ascii_strdown(dom, -1);
    struct store_event_query sq = {
        .domain = domain, .event = q.event, .message_id = q.message_id, .recipient = q.recipient,
        .begin_ms = q.begin_ms, .end_ms = q.end_ms, .ascending = q.ascending != q.backward,
        .after_ts_ms = q.cursor_ts, .after_id = q.cursor_id, .limit = q.limit};
    struct store_event *evs = NULL;
    size_t n = 0;
    char *err = NULL;
    enum MHD_Result r;
    enum store_status st = store_events_query(api->store, &sq, &evs, &n, &err);
    if (st != STORE_OK) {
        r = api_reply_store_error(req, "events query", st, err);
        goto out;
    }
    size_t total = n;
    if (n > q.limit) n = q.limit; /* never more than asked for, whatever the backend did */
    json_t *items = json_array();
    /* A backward page was read in the opposite order: present it in the query's order. */
    for (size_t i = 0; i < n; i++) {
        const struct store_event *e = &evs[q.backward ? n - 1 - i : i];
        json_t *it = event_json(api, e);
        if (it) json_array_append_new(items, it);
    }
    const struct store_event *first = n ? &evs[q.backward ? n - 1 : 0] : NULL;
    const struct store_event *last = n ? &evs[q.backward ? 0 : n - 1] : NULL;
    json_t *paging = paging_json(api, domain, &q, first, last);
    store_events_free(evs, total);
    r = api_reply_json(req->conn, MHD_HTTP_OK,
                       json_pack("{s:o, s:o*}", "items", items, "paging", paging));
out:
    g_free(domain);
    query_clear(&q);
    return r;
}
