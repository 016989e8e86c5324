/* engine/plan.c — see internal_plan.h. */
#include "engine/internal_plan.h"

#include <glib.h>
#include <jansson.h>
#include <string.h>

#include "message/message.h"
#include "routes/routes.h"
#include "util/id.h"
#include "util/limits.h"

bool engine_plan_is_postmaster(const char *rcpt)
{
    const char *at = strrchr(rcpt, '@');
    size_t local = at ? (size_t)(at - rcpt) : strlen(rcpt);
    return local == 10 && g_ascii_strncasecmp(rcpt, "postmaster", 10) == 0;
}

bool engine_plan_url_is_mime(const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    p += strcspn(p, "/?#"); /* past the authority */
    size_t len = strcspn(p, "?#");
    return len >= 4 && memcmp(p + len - 4, "mime", 4) == 0;
}

void engine_plan_storage_key(char out[25])
{
    static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[18];
    util_random_bytes_pooled(raw, sizeof raw);
    for (size_t i = 0, o = 0; i < sizeof raw; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    out[24] = '\0';
}

/* Keeps `s` (malloc'd; NULL means out of memory) for the plan's lifetime. */
static const char *keep(struct plan *p, char *s)
{
    if (s) g_ptr_array_add(p->strings, s);
    return s;
}

static const char *keep_json(struct plan *p, json_t *j)
{
    if (!j) return NULL;
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return keep(p, s);
}

/* A JSON string of `s`, invalid UTF-8 repaired (U+FFFD): captures and addresses carry client
 * bytes.  NULL only when memory ran out. */
static json_t *jstr(const char *s)
{
    if (g_utf8_validate(s, -1, NULL)) return json_string(s);
    char *valid = g_utf8_make_valid(s, -1);
    json_t *j = json_string(valid);
    g_free(valid);
    return j;
}

static json_t *string_array(char *const *items, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        if (json_array_append_new(a, jstr(items[i])) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* [{"id", "captures": {name: value}, "actions": [resolved]}, ...] */
static json_t *routes_json(const struct route_result *r)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < r->nhits; i++) {
        const struct route_hit *h = &r->hits[i];
        json_t *caps = json_object();
        for (size_t k = 0; caps && k < h->ncaptures; k++) {
            if (json_object_set_new(caps, h->capture_names[k], jstr(h->capture_values[k])) < 0) {
                json_decref(caps);
                caps = NULL;
            }
        }
        json_t *actions = string_array(h->actions, h->nactions);
        json_t *o = json_object();
        /* set_new takes the value even when it fails. */
        bool ok = o && caps && actions;
        if (o) {
            ok = json_object_set_new(o, "id", jstr(h->route_id)) == 0 && ok;
            ok = json_object_set_new(o, "captures", caps ? caps : json_null()) == 0 && ok;
            ok = json_object_set_new(o, "actions", actions ? actions : json_null()) == 0 && ok;
        } else {
            json_decref(caps);
            json_decref(actions);
        }
        if (!ok || json_array_append_new(a, o) < 0) {
            if (ok) o = NULL; /* append_new took it */
            json_decref(o);
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* The recipient's domain, lower case ("" without '@'). */
static char *rcpt_domain(const char *rcpt)
{
    const char *at = strrchr(rcpt, '@');
    if (!at) return g_strdup("");
    return g_utf8_validate(at + 1, -1, NULL) ? g_utf8_strdown(at + 1, -1) : g_ascii_strdown(at + 1, -1);
}

/* Growable arrays of the outcome. */
struct vec {
    size_t n, cap;
};
static void *vec_push(void *arr, struct vec *v, size_t elem)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4;
        arr = g_realloc_n(arr, v->cap, elem);
    }
    memset((char *)arr + v->n * elem, 0, elem);
    v->n++;
    return arr;
}

struct builder {
    struct plan *p;
    struct vec rcpts, deliveries, copies;
    int64_t expires_at;
    const struct plan_options *opts;
    size_t attachment_bytes;    /* decoded bytes of every attachment of the message */
};

static int add_deliveries(struct builder *b, const char *rcpt, const struct route_result *r)
{
    struct plan *p = b->p;
    const size_t first = b->deliveries.n; /* this recipient's deliveries start here */
    for (size_t i = 0; i < r->ndeliveries; i++) {
        const struct route_delivery *d = &r->deliveries[i];
        const bool url = d->kind == ROUTE_DEST_URL;
        const char *format = url && engine_plan_url_is_mime(d->target) ? "mime" : route_format_name(d->format);
        /* Two formats of one URL can both become "mime": one delivery, every route id. */
        struct store_delivery_plan *same = NULL;
        for (size_t k = first; k < b->deliveries.n && !same; k++) {
            struct store_delivery_plan *x = &p->deliveries[k];
            if (strcmp(x->kind, url ? "url" : "address") == 0 && strcmp(x->target, d->target) == 0 &&
                strcmp(x->format, format) == 0)
                same = x;
        }
        if (same) {
            json_t *ids = json_loads(same->route_ids_json, 0, NULL);
            if (!ids) return -1;
            for (size_t k = 0; k < d->nroute_ids; k++) {
                bool have = false;
                for (size_t j = 0; j < json_array_size(ids) && !have; j++)
                    have = strcmp(json_string_value(json_array_get(ids, j)), d->route_ids[k]) == 0;
                if (!have) json_array_append_new(ids, jstr(d->route_ids[k]));
            }
            if (!(same->route_ids_json = keep_json(p, ids))) return -1;
            continue;
        }
        p->deliveries = vec_push(p->deliveries, &b->deliveries, sizeof *p->deliveries);
        struct store_delivery_plan *x = &p->deliveries[b->deliveries.n - 1];
        id_generate(x->id);
        x->recipient = rcpt;
        x->kind = url ? "url" : "address";
        x->format = format;
        x->target = keep(p, g_strdup(d->target));
        x->route_ids_json = keep_json(p, string_array(d->route_ids, d->nroute_ids));
        if (!x->target || !x->route_ids_json) return -1;
    }
    return 0;
}

/* Adds a stored copy; *key_out (may be NULL) = its key, kept by the plan. */
static int add_copy(struct builder *b, const char *rcpt, const char *domain, const char *route_id,
                    const char *notify, enum route_format format, const char **key_out)
{
    struct plan *p = b->p;
    p->copies = vec_push(p->copies, &b->copies, sizeof *p->copies);
    struct store_copy_plan *c = &p->copies[b->copies.n - 1];
    engine_plan_storage_key(c->key);
    c->recipient = rcpt;
    c->domain = domain;
    c->route_id = keep(p, g_strdup(route_id));
    c->notify = notify ? keep(p, g_strdup(notify)) : NULL;
    c->format = route_format_name(format);
    c->expires_at = b->expires_at;
    /* A copy of the key: the array moves when it grows. */
    const char *key = keep(p, g_strdup(c->key));
    if (key_out) *key_out = key;
    return c->route_id && (!notify || c->notify) && key ? 0 : -1;
}

/* SPEC §9: the copy just added goes into a mailbox, for ttl= seconds, else for the mailbox's
 * retention when it has one (the store decides, it knows the mailbox), else --mailbox-ttl. */
static int file_copy(struct builder *b, const struct route_store *s)
{
    struct store_copy_plan *c = &b->p->copies[b->copies.n - 1];

    c->mailbox = keep(b->p, g_strdup(s->mailbox));
    c->mailbox_retention = s->ttl == 0;
    c->expires_at = b->p->outcome.now + (s->ttl ? s->ttl : b->opts->mailbox_ttl);
    return c->mailbox ? 0 : -1;
}

/* SPEC §6: the notify POST of a stored copy is a delivery like a forward (signed, retried), in
 * the store's format; it is never merged with a forward to the same URL. */
static int add_notify(struct builder *b, const char *rcpt, const char *route_id, const char *url,
                      enum route_format format, const char *key)
{
    struct plan *p = b->p;
    p->deliveries = vec_push(p->deliveries, &b->deliveries, sizeof *p->deliveries);
    struct store_delivery_plan *x = &p->deliveries[b->deliveries.n - 1];
    id_generate(x->id);
    x->recipient = rcpt;
    x->kind = "notify";
    x->format = route_format_name(format);
    x->target = keep(p, g_strdup(url));
    json_t *ids = json_array();
    if (ids) json_array_append_new(ids, jstr(route_id));
    x->route_ids_json = keep_json(p, ids);
    x->copy_key = key;
    return x->target && x->route_ids_json ? 0 : -1;
}

/* SPEC §6: a JSON POST gives attachments past the inline budget by URL, from a stored copy kept
 * for the store TTL.  One copy per recipient serves all its JSON deliveries. */
static int add_attachment_copy(struct builder *b, const char *rcpt, const char *domain, size_t first)
{
    struct plan *p = b->p;
    if (b->attachment_bytes <= b->opts->inline_attachments_max) return 0;
    const char *key = NULL;
    for (size_t k = first; k < b->deliveries.n; k++) {
        struct store_delivery_plan *x = &p->deliveries[k];
        const bool json = strcmp(x->format, "json") == 0 || (!*x->format && b->opts->default_json);
        if (strcmp(x->kind, "url") != 0 || !json) continue;
        if (!key && add_copy(b, rcpt, domain, "", NULL, ROUTE_FORMAT_DEFAULT, &key) < 0) return -1;
        p->deliveries[k].copy_key = key; /* add_copy grew the copies, not the deliveries */
    }
    return 0;
}

static int plan_recipient(struct builder *b, const char *rcpt, struct route_message *rm,
                          const struct route_table *t, struct route_matcher *matcher)
{
    struct plan *p = b->p;
    struct route_result r;
    rm->recipient = rcpt;
    int rc = route_evaluate(t, matcher, rm, &r);
    if (rc == 0) {
        p->rcpts = vec_push(p->rcpts, &b->rcpts, sizeof *p->rcpts);
        struct store_recipient_outcome *o = &p->rcpts[b->rcpts.n - 1];
        const bool postmaster_copy = r.nhits == 0 && engine_plan_is_postmaster(rcpt);
        o->recipient = rcpt;
        /* A postmaster copy that no route asked for is kept, so it is not dropped either. */
        o->outcome = r.nhits > 0 || postmaster_copy ? "routed" : "dropped";
        o->routes_json = keep_json(p, routes_json(&r));
        json_t *ids = json_array();
        for (size_t i = 0; ids && i < r.nhits; i++) json_array_append_new(ids, jstr(r.hits[i].route_id));
        o->route_ids_json = keep_json(p, ids);
        o->warnings_json = keep_json(p, string_array(r.warnings, r.nwarnings));
        const char *domain = keep(p, rcpt_domain(rcpt));
        if (!o->routes_json || !o->warnings_json || !o->route_ids_json || !domain) rc = -1;
        const size_t first = b->deliveries.n;
        if (rc == 0) rc = add_deliveries(b, rcpt, &r);
        if (rc == 0) rc = add_attachment_copy(b, rcpt, domain, first);
        for (size_t i = 0; rc == 0 && i < r.nstores; i++) {
            const char *key = NULL;
            rc = add_copy(b, rcpt, domain, r.stores[i].route_id, r.stores[i].notify, r.stores[i].format, &key);
            if (rc == 0 && r.stores[i].mailbox) rc = file_copy(b, &r.stores[i]);
            if (rc == 0 && r.stores[i].notify)
                rc = add_notify(b, rcpt, r.stores[i].route_id, r.stores[i].notify, r.stores[i].format, key);
        }
        if (rc == 0 && postmaster_copy) rc = add_copy(b, rcpt, domain, "", NULL, ROUTE_FORMAT_DEFAULT, NULL);
        if (strcmp(o->outcome, "dropped") == 0)
            p->ndropped++;
        else
            p->nrouted++;
    }
    route_result_clear(&r);
    return rc;
}

/* A header value for the events' summary: at most EVENT_MESSAGE_HEADER_MAX bytes, not cutting a
 * UTF-8 sequence (invalid bytes are repaired by jstr). */
static json_t *summary_value(const char *s)
{
    size_t n = strlen(s ? s : "");
    if (n <= EVENT_MESSAGE_HEADER_MAX) return jstr(s ? s : "");
    n = EVENT_MESSAGE_HEADER_MAX;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    char *cut = g_strndup(s, n);
    json_t *j = jstr(cut);
    g_free(cut);
    return j;
}

/* The message as its events show it (Mailgun's event "message"): headers to, from, subject and
 * message-id (the Message-Id header without angle brackets: a receiver looks the message up by
 * the id it got), size (the stored bytes), attachments [{filename, content-type, size}] and the
 * envelope recipients.  The events API adds inlet's own id ("inlet-id"). */
static json_t *message_summary(const struct store_message *sm, const struct message *m)
{
    const char *to = message_header_first(m, "To");
    json_t *atts = json_array(), *rcpts = json_array();
    for (size_t i = 0; atts && i < message_attachment_count(m) && i < EVENT_MESSAGE_ATTACHMENTS_MAX; i++) {
        const struct message_attachment *at = message_attachment(m, i);
        json_array_append_new(atts, json_pack("{s:o, s:o, s:I}", "filename", summary_value(at->name),
                                              "content-type", summary_value(at->content_type),
                                              "size", (json_int_t)at->size));
    }
    for (size_t i = 0; rcpts && i < sm->nrcpts; i++) json_array_append_new(rcpts, jstr(sm->rcpts[i]));
    return json_pack("{s:{s:o, s:o, s:o, s:o}, s:I, s:o, s:o}", "headers", "to",
                     summary_value(to), "from", summary_value(message_from(m)), "subject",
                     summary_value(message_subject(m)), "message-id",
                     summary_value(message_message_id(m)), "size", (json_int_t)sm->len,
                     "attachments", atts, "recipients", rcpts);
}

int engine_plan_build(struct plan *p, const struct store_message *sm, const struct message *m,
                      const struct route_table *t, struct route_matcher *matcher, int64_t now,
                      const struct plan_options *opts)
{
    memset(p, 0, sizeof *p);
    GPtrArray *strings = g_ptr_array_new_with_free_func(free);
    p->strings = strings;
    struct builder b = {.p = p, .expires_at = now + opts->store_ttl, .opts = opts};
    p->outcome.now = now; /* file_copy() reads it */
    for (size_t i = 0; i < message_attachment_count(m); i++) b.attachment_bytes += message_attachment(m, i)->size;

    const size_t nh = message_header_count(m);
    const char **names = g_new0(const char *, nh + 1), **values = g_new0(const char *, nh + 1);
    for (size_t i = 0; i < nh; i++) message_header(m, i, &names[i], &values[i]);
    struct route_message rm = {.nheaders = nh, .header_names = names, .header_values = values};

    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sm->nrcpts; i++)
        rc = plan_recipient(&b, sm->rcpts[i], &rm, t, matcher);
    g_free(names);
    g_free(values);

    json_t *warnings = json_array();
    for (size_t i = 0; warnings && i < message_warning_count(m); i++)
        json_array_append_new(warnings, jstr(message_warning(m, i)));
    struct store_outcome *o = &p->outcome;
    o->message_id = sm->id;
    o->parse_warnings_json = keep_json(p, warnings);
    o->message_json = keep_json(p, message_summary(sm, m));
    const char *auth = message_authentication_json(m); /* the plan outlives m: a copy */
    o->authentication_json = auth ? keep(p, strdup(auth)) : NULL;
    if (auth && !o->authentication_json) rc = -1;
    if (!o->parse_warnings_json || !o->message_json) rc = -1;
    o->recipients = p->rcpts;
    o->nrecipients = b.rcpts.n;
    o->deliveries = p->deliveries;
    o->ndeliveries = b.deliveries.n;
    o->copies = p->copies;
    o->ncopies = b.copies.n;
    o->now = now;
    return rc;
}

void engine_plan_clear(struct plan *p)
{
    g_free(p->rcpts);
    g_free(p->deliveries);
    g_free(p->copies);
    if (p->strings) g_ptr_array_free(p->strings, TRUE);
    memset(p, 0, sizeof *p);
}
