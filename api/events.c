/* api/events.c — GET /v3/<domain>/events (SPEC §7, extension in the shape of Mailgun's Events
 * API, which mailgun.js, mailgun-go and mailgun-python parse).
 *
 * Items: {"id", "event", "timestamp" (float seconds), "log-level", "recipient",
 * "recipient-domain", "message", "envelope": {"targets"} and "delivery-status" {code, message,
 * description, attempt-no, session-seconds} for delivered / failed, "severity" and "reason" for
 * failed, "storage" {key, url} for stored, "routes" / "route_ids" from the event's detail (a
 * stored copy's one "route_id" as a one-element "route_ids"), "delivery-id" (extension) for
 * deliveries.  "message" is the summary every event of a message keeps in its detail
 * (engine/plan.c writes it, storage/ copies it into the delivered / failed events), as Mailgun
 * shows it: "headers" {to, from, subject, message-id (the Message-Id header without angle
 * brackets)}, "size", "attachments" [{filename, content-type, size}], "recipients"; plus
 * "inlet-id", inlet's own message id (extension).  Detail keys read: key, route_id, route_ids,
 * routes, attempt, status, error, target, duration_ms, reason, message, mailbox (SPEC §9:
 * "mailbox" on stored, retrieved and deleted events, and "uid" on the last two).  "authentication"
 * (extension): the message's sender-authentication verdicts (the payload's object), on every
 * event of a message checked at receipt (--sender-auth), from the store's one row per message.
 *
 * Filters (query parameters; each value a Mailgun filter expression, api/internal_filter.h):
 * event, severity, recipient, recipients, message-id (the header), inlet-id (extension), from,
 * to, subject, attachment, size; `list` and `tags` are 400 (inlet has neither), as is an
 * expression that does not parse.  The store narrows its reading by the filters it can apply
 * (one event name, one recipient, one inlet id); the others are evaluated here on each item,
 * reading at most API_EVENTS_SCAN_MAX events for a page.  Also begin, end (RFC 2822 dates, ISO
 * 8601, or Unix seconds with a fraction), ascending (yes/no, default no), limit (1..300, default
 * 100).  The time range follows Mailgun: with begin and end, begin > end means newest first;
 * with one bound the direction is `ascending`'s and the bound is the side the traversal starts
 * from (begin) or stops at (end).
 *
 * Paging: {"next", "previous", "first", "last"}, absolute URLs <public-url>/v3/<domain>/events/
 * <token>.  The token (base64url of a small JSON object, version 2; version 1 tokens still read)
 * holds every filter expression, the limit, the
 * direction and the cursor (timestamp, event id) of the page boundary, so a paging URL is
 * complete by itself: filters in its query string are ignored.  `next` is always there (an
 * empty page ends a walk; asking again later shows what happened since, as with Mailgun);
 * `previous` goes back from the first item of the page; `first` and `last` are the two ends. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"
#include "api/internal_filter.h"
#include "storage/store.h"
#include "util/log.h"

/* The filter fields (query parameters), how their values match (api/internal_filter.h) and
 * where an item keeps them. */
enum ev_field {
    F_EVENT, F_SEVERITY, F_RECIPIENT, F_RECIPIENTS, F_MESSAGE_ID, F_INLET_ID, F_FROM, F_TO,
    F_SUBJECT, F_ATTACHMENT, F_SIZE, F_COUNT
};
/* Mailgun's event names: inlet writes accepted, stored, delivered and failed; the others are
 * valid filters that match nothing.  Extension: retrieved and deleted, a mailbox message's POP3
 * RETR (or TOP) and its DELE committed at QUIT (SPEC §9). */
static const char *const event_names[] = {
    "accepted", "rejected", "delivered", "failed", "opened", "clicked", "unsubscribed",
    "complained", "stored", "list_member_uploaded", "list_member_upload_error", "list_uploaded",
    "retrieved", "deleted", NULL};
static const char *const severities[] = {"temporary", "permanent", NULL};
static const struct {
    const char *name;
    enum api_filter_kind kind;
    const char *const *allowed;
} fields[F_COUNT] = {
    [F_EVENT] = {"event", API_FILTER_KEYWORD, event_names},
    [F_SEVERITY] = {"severity", API_FILTER_KEYWORD, severities},
    [F_RECIPIENT] = {"recipient", API_FILTER_KEYWORD, NULL},
    [F_RECIPIENTS] = {"recipients", API_FILTER_KEYWORD, NULL},
    [F_MESSAGE_ID] = {"message-id", API_FILTER_EXACT, NULL},
    [F_INLET_ID] = {"inlet-id", API_FILTER_EXACT, NULL},
    [F_FROM] = {"from", API_FILTER_TEXT, NULL},
    [F_TO] = {"to", API_FILTER_TEXT, NULL},
    [F_SUBJECT] = {"subject", API_FILTER_TEXT, NULL},
    [F_ATTACHMENT] = {"attachment", API_FILTER_TEXT, NULL},
    [F_SIZE] = {"size", API_FILTER_NUMBER, NULL},
};
/* Mailgun's filters that inlet's events have nothing for: a 400, never an empty answer. */
static const char *const unsupported_fields[] = {"list", "tags"};

struct events_query {
    char *expr[F_COUNT];                  /* each filter's expression, NULL = any (g_malloc'd) */
    struct api_filter *filter[F_COUNT];       /* ... compiled */
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
    for (int i = 0; i < F_COUNT; i++) {
        g_free(q->expr[i]);
        api_filter_free(q->filter[i]);
    }
    memset(q, 0, sizeof *q);
}

/* Compiles q->expr[i]; NULL when fine, else the message of the 400 (g_malloc'd). */
static char *query_compile(struct events_query *q, int i)
{
    char *err = NULL;
    q->filter[i] = api_filter_parse(q->expr[i], strlen(q->expr[i]), fields[i].kind, fields[i].allowed,
                                &err);
    if (q->filter[i]) return NULL;
    char *msg = g_strdup_printf("Invalid '%s' filter: %s", fields[i].name, err);
    g_free(err);
    return msg;
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
    for (size_t i = 0; i < G_N_ELEMENTS(unsupported_fields); i++)
        if (api_form_get(&req->query, unsupported_fields[i]))
            return g_strdup_printf("Filter '%s' is not supported: inlet's events have no %s",
                                   unsupported_fields[i],
                                   strcmp(unsupported_fields[i], "tags") ? "mailing lists" : "tags");
    for (int i = 0; i < F_COUNT; i++) q->expr[i] = filter(req, fields[i].name, &bad);
    if (bad) return g_strdup_printf("Invalid '%s' parameter", bad);
    for (int i = 0; i < F_COUNT; i++) {
        char *msg = q->expr[i] ? query_compile(q, i) : NULL;
        if (msg) return msg;
    }

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
    json_t *j = json_pack("{s:i, s:b, s:I, s:b, s:I, s:I, s:I, s:I}", "v", 2, "a",
                          (int)q->ascending, "l", (json_int_t)q->limit, "k", (int)backward,
                          "b", (json_int_t)q->begin_ms, "n", (json_int_t)q->end_ms, "t",
                          (json_int_t)ts, "i", (json_int_t)id);
    if (!j) return NULL;
    json_t *f = json_object();
    for (int i = 0; f && i < F_COUNT; i++)
        if (q->expr[i]) json_object_set_new(f, fields[i].name, json_string(q->expr[i]));
    json_object_set_new(j, "f", f);
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
              (v == 1 || v == 2) && limit >= 1 && limit <= API_EVENTS_LIMIT_MAX && b >= 0 &&
              e >= 0 && id >= 0;
    if (ok && v == 1) {
        /* Tokens of older versions: event, inlet's message id (then called message-id),
         * recipient. */
        ok = token_string(j, "e", &q->expr[F_EVENT]) && token_string(j, "m", &q->expr[F_INLET_ID]) &&
             token_string(j, "r", &q->expr[F_RECIPIENT]);
    } else if (ok) {
        json_t *f = json_object_get(j, "f");
        ok = json_is_object(f);
        for (int i = 0; ok && i < F_COUNT; i++) ok = token_string(f, fields[i].name, &q->expr[i]);
    }
    for (int i = 0; ok && i < F_COUNT; i++) {
        char *msg = q->expr[i] ? query_compile(q, i) : NULL;
        ok = msg == NULL;
        g_free(msg);
    }
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

/* The item's "message": the summary the event's detail keeps (engine/plan.c: headers to, from,
 * subject, message-id; size; attachments; recipients), or only "headers": {} for an event
 * written before inlet kept one, and inlet's own id as "inlet-id" (extension). */
static json_t *message_json(json_t *detail, const struct store_event *e)
{
    json_t *m = json_object_get(detail, "message");
    m = json_is_object(m) ? json_deep_copy(m) : json_object();
    if (!m) return NULL;
    if (!json_is_object(json_object_get(m, "headers"))) json_object_set_new(m, "headers", json_object());
    json_object_set_new(m, "inlet-id", api_jstr(e->message_id));
    return m;
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
        "{s:s, s:o, s:f, s:s, s:o, s:o, s:o, s:[], s:[], s:{}}", "id", id, "event",
        api_jstr(e->event), "timestamp", (double)e->ts_ms / 1000.0, "log-level", log_level(e),
        "recipient", api_jstr(e->recipient), "recipient-domain", api_jstr(e->domain), "message",
        message_json(detail, e), "tags", "campaigns", "user-variables");
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
    /* A mailbox message's events (extension, SPEC §9): the mailbox, and its key for the POP3
     * events (their UIDL). */
    static const char *const k_mailbox[] = {"mailbox", NULL};
    json_t *mailbox = detail_get(detail, k_mailbox);
    if (json_is_string(mailbox)) {
        json_object_set(item, "mailbox", mailbox);
        if (strcmp(e->event, "stored") != 0 && json_is_string(key)) json_object_set(item, "uid", key);
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
    /* The message's sender-authentication verdicts (extension, SPEC §2 "Sender authentication"):
     * kept once per message by the store, the same object as the payload's "authentication". */
    json_t *auth = *e->authentication_json ? json_loads(e->authentication_json, 0, NULL) : NULL;
    if (json_is_object(auth)) json_object_set_new(item, "authentication", auth);
    else json_decref(auth);
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

/* A row's place in the order of events. */
struct cursor {
    int64_t ts, id;
    bool set;
};

/* first, last: the page's first and last items as presented; far: the last event read (in read
 * order), matched or not, so that `next` (`previous` for a backward page) goes on after the
 * events the filters skipped instead of reading them again. */
static json_t *paging_json(const struct api_server *api, const char *domain,
                           const struct events_query *q, struct cursor first, struct cursor last,
                           struct cursor far)
{
    int64_t nts = q->cursor_ts, nid = q->cursor_id; /* next: forward */
    int64_t pts = q->cursor_ts, pid = q->cursor_id; /* previous: backward */
    if (!q->backward) {
        if (far.set) {
            nts = far.ts;
            nid = far.id;
        }
        if (first.set) {
            pts = first.ts;
            pid = first.id;
        } else if (q->cursor_id) {
            /* Nothing after the cursor: previous ends with the cursor's own row. */
            pid = inclusive_id(!q->ascending, q->cursor_id);
        }
    } else {
        if (far.set) {
            pts = far.ts;
            pid = far.id;
        }
        if (last.set) {
            nts = last.ts;
            nid = last.id;
        } else if (q->cursor_id) {
            /* Nothing before the cursor: next starts at the cursor's own row. */
            nid = inclusive_id(q->ascending, q->cursor_id);
        }
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

/* ---- filters over items --------------------------------------------------------------------- */

/* The string values of field `f` in `item` (event_json's shape), at most `max`. */
static size_t item_values(json_t *item, enum ev_field f, const char **out, size_t max)
{
    json_t *msg = json_object_get(item, "message");
    json_t *hdr = json_object_get(msg, "headers");
    json_t *v = NULL;
    switch (f) {
    case F_EVENT: v = json_object_get(item, "event"); break;
    case F_SEVERITY: v = json_object_get(item, "severity"); break;
    case F_RECIPIENT: v = json_object_get(item, "recipient"); break;
    case F_MESSAGE_ID: v = json_object_get(hdr, "message-id"); break;
    case F_INLET_ID: v = json_object_get(msg, "inlet-id"); break;
    case F_FROM: v = json_object_get(hdr, "from"); break;
    case F_TO: v = json_object_get(hdr, "to"); break;
    case F_SUBJECT: v = json_object_get(hdr, "subject"); break;
    case F_RECIPIENTS:
    case F_ATTACHMENT: {
        json_t *a = json_object_get(msg, f == F_RECIPIENTS ? "recipients" : "attachments");
        size_t n = 0, i;
        json_t *el;
        json_array_foreach(a, i, el) {
            json_t *s = f == F_RECIPIENTS ? el : json_object_get(el, "filename");
            if (n < max && json_is_string(s)) out[n++] = json_string_value(s);
        }
        return n;
    }
    case F_SIZE:
    case F_COUNT: break;
    }
    if (!json_is_string(v) || max == 0) return 0;
    out[0] = json_string_value(v);
    return 1;
}

static bool item_matches(const struct events_query *q, json_t *item)
{
    for (int f = 0; f < F_COUNT; f++) {
        if (!q->filter[f]) continue;
        bool ok;
        if (f == F_SIZE) {
            json_t *size = json_object_get(json_object_get(item, "message"), "size");
            ok = api_filter_match_number(q->filter[f], json_is_integer(size),
                                     json_is_integer(size) ? json_integer_value(size) : 0);
        } else {
            const char *vals[EVENT_MESSAGE_ATTACHMENTS_MAX + 1];
            size_t n = item_values(item, (enum ev_field)f, vals, G_N_ELEMENTS(vals));
            ok = api_filter_match_text(q->filter[f], vals, n);
        }
        if (!ok) return false;
    }
    return true;
}

/* ---- the handler ---------------------------------------------------------------------------- */

/* What one page read: the matching items in read order, the first and last of them, and the
 * last event read. */
struct page {
    json_t *items;
    struct cursor first, last, far;
};

/* Reads events from the cursor on in batches, keeps those the filters match, until the page is
 * full, the events run out or API_EVENTS_SCAN_MAX were read.  The filters that the store can
 * apply itself (one event name, one recipient, one inlet id) narrow its reading; the others
 * are evaluated here on each item.  0, or -1 with *err (the store's, malloc'd). */
static int read_page(struct api_server *api, const char *domain, const struct events_query *q,
                     struct page *pg, char **err)
{
    const char *ev = api_filter_single_term(q->filter[F_EVENT]);
    const char *rcpt = api_filter_single_term(q->filter[F_RECIPIENT]);
    const char *iid = api_filter_single_term(q->filter[F_INLET_ID]);
    bool all_in_store = true;
    for (int f = 0; f < F_COUNT; f++)
        if (q->filter[f] && !((f == F_EVENT && ev) || (f == F_RECIPIENT && rcpt) || (f == F_INLET_ID && iid)))
            all_in_store = false;
    const size_t batch = all_in_store ? q->limit : API_EVENTS_LIMIT_MAX;
    struct store_event_query sq = {
        .domain = domain, .event = ev, .message_id = iid, .recipient = rcpt,
        .begin_ms = q->begin_ms, .end_ms = q->end_ms, .ascending = q->ascending != q->backward,
        .after_ts_ms = q->cursor_ts, .after_id = q->cursor_id, .limit = batch};
    size_t scanned = 0;
    pg->items = json_array();
    if (!pg->items) return -1;
    while (json_array_size(pg->items) < q->limit && scanned < API_EVENTS_SCAN_MAX) {
        struct store_event *evs = NULL;
        size_t n = 0;
        if (store_events_query(api->store, &sq, &evs, &n, err) != STORE_OK) return -1;
        size_t got = n;
        if (n > batch) n = batch; /* never more than asked for, whatever the backend did */
        for (size_t i = 0; i < n && json_array_size(pg->items) < q->limit; i++) {
            const struct store_event *e = &evs[i];
            scanned++;
            pg->far = (struct cursor){e->ts_ms, e->id, true};
            sq.after_ts_ms = e->ts_ms;
            sq.after_id = e->id;
            json_t *it = event_json(api, e);
            if (!it || !item_matches(q, it)) {
                json_decref(it);
                continue;
            }
            json_array_append_new(pg->items, it);
            if (!pg->first.set) pg->first = pg->far;
            pg->last = pg->far;
        }
        store_events_free(evs, got);
        if (n < batch) break; /* the events ran out */
    }
    return 0;
}

enum MHD_Result api_events_list(struct api_server *api, struct api_request *req)
{
    const char *dom = api_param(req, "domain");
    const char *page = api_param(req, "page");
    if (!dom || !*dom || strlen(dom) > 255 || !g_utf8_validate(dom, -1, NULL))
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
    struct page pg = {0};
    char *err = NULL;
    enum MHD_Result r;
    if (read_page(api, domain, &q, &pg, &err) < 0) {
        json_decref(pg.items);
        r = api_reply_store_error(req, "events query", STORE_ERR_IO, err);
        goto out;
    }
    /* A backward page was read in the opposite order: present it in the query's order. */
    json_t *items = pg.items;
    if (q.backward) {
        items = json_array();
        for (size_t i = json_array_size(pg.items); items && i > 0; i--)
            json_array_append(items, json_array_get(pg.items, i - 1));
        json_decref(pg.items);
    }
    struct cursor first = q.backward ? pg.last : pg.first, last = q.backward ? pg.first : pg.last;
    json_t *paging = paging_json(api, domain, &q, first, last, pg.far);
    r = api_reply_json(req->conn, MHD_HTTP_OK,
                       json_pack("{s:o, s:o*}", "items", items, "paging", paging));
out:
    g_free(domain);
    query_clear(&q);
    return r;
}
