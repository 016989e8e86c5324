/* api/messages.c — stored copies (SPEC §6, Mailgun's stored-message API):
 *
 *   GET    <storage url>                    the stored-message JSON (message_stored_json)
 *   GET    <storage url>  Accept: message/rfc2822   JSON {recipients, sender, from, subject, body-mime}
 *   GET    <storage url>  Accept: message/rfc822    the exact bytes (extension), as /raw
 *   GET    <storage url>/raw                the exact bytes, message/rfc822 (extension)
 *   GET    <storage url>/attachments/<n>    attachment n (0-based): decoded bytes, its type,
 *                                           Content-Disposition with the filename (RFC 6266)
 *   POST   <storage url>  to=...            resend through the relay: one delivery per address
 *   DELETE <storage url>                    (extension) the copy is gone
 *
 * <storage url> = <public-url>/v3/domains/<domain>/messages/<key>; the look-up uses the key alone
 * (the domain segment is not checked: Mailgun's SDKs build the path from a domain of their own).
 * Every read passes now = time(NULL) to the store, so a copy is gone exactly at its TTL.
 * Unknown, deleted or expired: 404 {"message": "Message not found"}. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/internal.h"
#include "message/message.h"
#include "storage/store.h"
#include "util/id.h"
#include "util/log.h"

static enum MHD_Result reply_not_found(struct api_request *req)
{
    return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Message not found");
}

/* <public-url>/v3/domains/<domain>/messages/<key> of `c` (g_malloc'd). */
static char *storage_url(const struct api_server *api, const struct store_copy *c)
{
    char *d = api_url_escape(c->domain), *k = api_url_escape(c->key);
    char *url = g_strdup_printf("%s/v3/domains/%s/messages/%s", api_server_public_url(api), d, k);
    g_free(d);
    g_free(k);
    return url;
}

/* The copy of the request's key with its message (msg may be NULL: the copy alone): true, or
 * false when the reply has been queued (404, 503) and *r is what queueing it returned. */
bool api_stored_load(struct api_server *api, struct api_request *req, struct store_copy **copy,
                     struct store_message **msg, enum MHD_Result *r)
{
    const char *key = api_param(req, "key");
    char *err = NULL;
    *copy = NULL;
    if (msg) *msg = NULL;
    /* Keys are at most 47 bytes (struct store_copy): anything longer cannot be one. */
    if (!key || !*key || strlen(key) >= sizeof((*copy)->key)) {
        *r = reply_not_found(req);
        return false;
    }
    enum store_status st = store_copy_get(api->store, key, (int64_t)time(NULL), copy, msg, &err);
    if (st == STORE_OK) return true;
    if (st == STORE_ERR_NOT_FOUND) {
        free(err);
        *r = reply_not_found(req);
    } else {
        *r = api_reply_store_error(req, "stored message read", st, err);
    }
    store_copy_free(*copy);
    *copy = NULL;
    if (msg) {
        store_free_message(*msg);
        *msg = NULL;
    }
    return false;
}

/* Whether the Accept header lists `type` (case-insensitive, parameters ignored) without q=0. */
static bool accepts(const char *accept, const char *type)
{
    if (!accept) return false;
    size_t tlen = strlen(type);
    const char *p = accept;
    while (*p) {
        const char *end = strchrnul(p, ',');
        const char *s = p, *e;
        while (s < end && (*s == ' ' || *s == '\t')) s++;
        e = s;
        while (e < end && *e != ';' && *e != ' ' && *e != '\t') e++;
        if ((size_t)(e - s) == tlen && g_ascii_strncasecmp(s, type, tlen) == 0) {
            /* q=0 means "not acceptable". */
            bool refused = false;
            for (const char *q = e; q < end; q++) {
                if (*q != ';') continue;
                q++;
                while (q < end && (*q == ' ' || *q == '\t')) q++;
                if (end - q >= 2 && (q[0] == 'q' || q[0] == 'Q') && q[1] == '=') {
                    const char *v = q + 2;
                    refused = v < end && *v == '0';
                    for (v++; refused && v < end && *v != ';'; v++)
                        if (*v != '0' && *v != '.' && *v != ' ') refused = false;
                }
            }
            if (!refused) return true;
        }
        p = *end ? end + 1 : end;
    }
    return false;
}

/* ---- GET ------------------------------------------------------------------------------------ */

static enum MHD_Result reply_raw(struct api_request *req, struct store_message *msg)
{
    void *data = msg->data;
    size_t len = msg->len;
    msg->data = NULL; /* handed to MHD: no copy */
    store_free_message(msg);
    enum MHD_Result r = api_reply_bytes(req->conn, MHD_HTTP_OK, "message/rfc822", data, len);
    return r;
}

/* Accept: message/rfc2822: still JSON (Mailgun's SDKs decode it), body-mime = the message. */
static json_t *mime_json(const struct store_copy *c, const struct store_message *msg,
                         const struct message *m)
{
    size_t blen = 0;
    char *body = message_body_mime(msg->data, msg->len, &blen);
    if (!body) return NULL;
    json_t *j = json_pack("{s:o, s:o, s:o, s:o, s:o}", "recipients", api_jstr(c->recipient),
                          "sender", api_jstr(msg->sender), "from", api_jstr(message_from(m)),
                          "subject", api_jstr(message_subject(m)), "body-mime",
                          api_jstrn(body, blen));
    free(body);
    return j;
}

static enum MHD_Result stored_get(struct api_server *api, struct api_request *req, bool raw)
{
    struct store_copy *c;
    struct store_message *msg;
    enum MHD_Result r;
    if (!api_stored_load(api, req, &c, &msg, &r)) return r;
    const char *accept = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_ACCEPT);
    bool want_mime = !raw && accepts(accept, "message/rfc2822");
    if (raw || (!want_mime && accepts(accept, "message/rfc822"))) {
        store_copy_free(c);
        return reply_raw(req, msg);
    }
    struct message *m = message_parse(msg->data, msg->len);
    json_t *body = NULL;
    if (m) {
        if (want_mime) {
            body = mime_json(c, msg, m);
        } else {
            char *url = storage_url(api, c);
            body = message_stored_json(m, c->recipient, msg->sender, url);
            g_free(url);
        }
    }
    message_free(m);
    store_copy_free(c);
    store_free_message(msg);
    if (!body) return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
    return api_reply_json(req->conn, MHD_HTTP_OK, body);
}

enum MHD_Result api_stored_get(struct api_server *api, struct api_request *req)
{
    return stored_get(api, req, false);
}

enum MHD_Result api_stored_raw(struct api_server *api, struct api_request *req)
{
    return stored_get(api, req, true);
}

/* ---- GET .../attachments/<n> ---------------------------------------------------------------- */

/* A Content-Type we can put in a header: "type/subtype" of token characters; else octet-stream. */
static const char *safe_content_type(const char *ct)
{
    static const char tchars[] = "!#$%&'*+-.^_`|~";
    size_t slashes = 0, n = 0;
    if (!ct || !*ct) return "application/octet-stream";
    for (const char *p = ct; *p; p++, n++) {
        if (*p == '/') slashes++;
        else if (!g_ascii_isalnum(*p) && !strchr(tchars, *p)) return "application/octet-stream";
    }
    if (slashes != 1 || ct[0] == '/' || ct[n - 1] == '/' || n > API_CONTENT_TYPE_MAX) return "application/octet-stream";
    return ct;
}

char *api_content_disposition(const char *name, size_t index)
{
    char *valid = g_utf8_make_valid(name ? name : "", -1);
    if (!*valid) {
        g_free(valid);
        return g_strdup_printf("attachment; filename=\"attachment-%zu\"", index);
    }
    GString *fb = g_string_new(NULL);
    bool exact = true;
    for (char *p = valid; *p; p = g_utf8_next_char(p)) {
        unsigned char c = (unsigned char)*p;
        bool keep = c >= 0x20 && c < 0x7f && !strchr("\"\\/%", c);
        if (!keep) exact = false;
        if (fb->len < API_DISPOSITION_FALLBACK_MAX) g_string_append_c(fb, keep ? (char)c : '_');
        else exact = false;
    }
    GString *out = g_string_new("attachment; filename=\"");
    g_string_append(out, fb->str);
    g_string_append_c(out, '"');
    if (!exact) {
        /* RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"; everything else %XX. */
        static const char attr[] = "!#$&+-.^_`|~";
        g_string_append(out, "; filename*=UTF-8''");
        for (const unsigned char *p = (const unsigned char *)valid; *p; p++) {
            if (g_ascii_isalnum(*p) || strchr(attr, *p)) g_string_append_c(out, (char)*p);
            else g_string_append_printf(out, "%%%02X", *p);
        }
    }
    g_string_free(fb, TRUE);
    g_free(valid);
    return g_string_free(out, FALSE);
}

enum MHD_Result api_stored_attachment(struct api_server *api, struct api_request *req)
{
    long long idx = -1;
    if (api_parse_count(api_param(req, "n"), &idx) != 1) idx = -1;
    struct store_copy *c;
    struct store_message *msg;
    enum MHD_Result r;
    if (!api_stored_load(api, req, &c, &msg, &r)) return r;
    store_copy_free(c);
    struct message *m = message_parse(msg->data, msg->len);
    if (!m) {
        store_free_message(msg);
        return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory");
    }
    if (idx < 0 || (unsigned long long)idx >= message_attachment_count(m)) {
        message_free(m);
        store_free_message(msg);
        return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Attachment not found");
    }
    const struct message_attachment *a = message_attachment(m, (size_t)idx);
    uint8_t *bytes = NULL;
    size_t len = 0;
    if (message_attachment_bytes(m, (size_t)idx, &bytes, &len) < 0) {
        message_free(m);
        store_free_message(msg);
        return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                               "The attachment cannot be decoded");
    }
    char *disposition = api_content_disposition(a->name, (size_t)idx);
    char *ctype = g_strdup(safe_content_type(a->content_type));
    message_free(m);
    store_free_message(msg);

    if (!bytes) bytes = malloc(1); /* MHD wants a buffer even for 0 bytes */
    struct MHD_Response *resp =
        bytes ? MHD_create_response_from_buffer_with_free_callback(len, bytes, free) : NULL;
    if (!resp) {
        free(bytes);
        g_free(disposition);
        g_free(ctype);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_DISPOSITION, disposition);
    /* The bytes are the sender's: a browser must not guess a more active type. */
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    g_free(disposition);
    g_free(ctype);
    r = MHD_queue_response(req->conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

/* ---- POST: resend --------------------------------------------------------------------------- */

/* An addr-spec we send to: local@domain, no spaces, controls or specials, sane lengths; UTF-8
 * (SMTPUTF8, IDN) allowed. */
static bool valid_address(const char *a)
{
    size_t len = strlen(a);
    const char *at = strrchr(a, '@');
    if (!at || at == a || !at[1] || len > SMTP_ADDRESS_MAX) return false;
    if (!g_utf8_validate(a, (gssize)len, NULL)) return false;
    size_t local = (size_t)(at - a);
    if (local > SMTP_LOCAL_PART_MAX || strlen(at + 1) > SMTP_DOMAIN_MAX) return false;
    for (const char *p = a; p < at; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c == 0x7f || strchr("()<>[]:;@\\,\"", c)) return false;
    }
    const char *d = at + 1;
    if (*d == '.' || d[strlen(d) - 1] == '.' || strstr(d, "..")) return false;
    for (const char *p = d; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (!(c >= 0x80 || g_ascii_isalnum(c) || c == '-' || c == '.')) return false;
    }
    return true;
}

/* Splits one `to` value into addresses: commas outside quotes and <...> separate them; a piece
 * with <addr> gives addr ("Bob <bob@x>"), else the piece itself.  Appends each (g_malloc'd) to
 * `out`, skipping empty pieces.  NULL when fine, else the message of the 400 (g_malloc'd). */
static char *split_addresses(const char *v, GPtrArray *out)
{
    const char *p = v;
    while (*p) {
        const char *start = p, *lt = NULL, *gt = NULL;
        bool quoted = false;
        int angle = 0;
        for (; *p; p++) {
            if (quoted) {
                if (*p == '\\' && p[1]) p++;
                else if (*p == '"') quoted = false;
            } else if (*p == '"') {
                quoted = true;
            } else if (*p == '<') {
                if (angle++ == 0) lt = p;
            } else if (*p == '>' && angle > 0) {
                if (--angle == 0) gt = p;
            } else if (*p == ',' && angle == 0) {
                break;
            }
        }
        const char *end = p;
        if (*p == ',') p++;
        char *addr;
        if (lt && gt && gt > lt) {
            addr = g_strndup(lt + 1, (size_t)(gt - lt - 1));
        } else {
            addr = g_strndup(start, (size_t)(end - start));
        }
        g_strstrip(addr);
        bool blank = !*addr && !lt; /* "a@b, " : nothing between the commas */
        if (!blank && !valid_address(addr)) {
            char *piece = g_strndup(start, (size_t)(end - start));
            g_strstrip(piece);
            char *valid = g_utf8_make_valid(piece, -1);
            char *shown = g_utf8_substring(valid, 0, MIN(g_utf8_strlen(valid, -1), 100));
            char *msg = g_strdup_printf("'to' parameter is not a valid address: %s", shown);
            g_free(shown);
            g_free(valid);
            g_free(piece);
            g_free(addr);
            return msg;
        }
        if (blank) g_free(addr);
        else g_ptr_array_add(out, addr);
    }
    return NULL;
}

/* Every address of every `to` field (body, else query), in order, duplicates dropped. */
static char *collect_to(const struct api_request *req, GPtrArray *out)
{
    const struct form *f = api_form_count(&req->body, "to") ? &req->body : &req->query;
    GPtrArray *all = g_ptr_array_new_with_free_func(g_free);
    char *msg = NULL;
    for (size_t i = 0; i < f->n && !msg; i++) {
        const struct form_field *fl = &f->fields[i];
        if (strcmp(fl->name, "to") != 0) continue;
        if (memchr(fl->value, '\0', fl->len)) msg = g_strdup("'to' must not contain NUL bytes");
        else msg = split_addresses(fl->value, all);
        if (!msg && all->len > API_RESEND_RECIPIENTS_MAX * 4) break; /* bounded before dedup */
    }
    for (guint i = 0; i < all->len && !msg; i++) {
        const char *a = g_ptr_array_index(all, i);
        bool dup = false;
        for (guint k = 0; k < out->len && !dup; k++)
            dup = g_ascii_strcasecmp(g_ptr_array_index(out, k), a) == 0;
        if (dup) continue;
        if (out->len >= API_RESEND_RECIPIENTS_MAX) {
            msg = g_strdup_printf("Too many recipients: at most %d", API_RESEND_RECIPIENTS_MAX);
            break;
        }
        g_ptr_array_add(out, g_strdup(a));
    }
    g_ptr_array_unref(all);
    if (!msg && out->len == 0) msg = g_strdup("'to' parameter is missing");
    return msg;
}

/* A resend or a delete, kept while the request waits, suspended, for the commit (api/writes.c). */
struct stored_op {
    struct api_write w;                 /* first (api/internal.h) */
    struct store_copy *copy;            /* resend: the stored copy */
    GPtrArray *to;                      /* resend: the addresses (the plans' targets) */
    struct store_delivery_plan *plans;  /* resend: one per address */
    char *answer_id;                    /* resend: the answer's id */
    char key[48];                       /* delete: the copy's key */
};

static void stored_op_free(struct api_write *w)
{
    struct stored_op *o = (struct stored_op *)w;

    store_copy_free(o->copy);
    if (o->to) g_ptr_array_unref(o->to);
    g_free(o->plans);
    g_free(o->answer_id);
    g_free(o);
}

/* The new deliveries are due now: the deliverer hears of them without waiting for its scan. */
static void resend_settle(struct api_server *api, struct api_write *w)
{
    struct stored_op *o = (struct stored_op *)w;

    if (w->status != STORE_OK) return;
    log_info("http", "stored message resent key=%s id=%s deliveries=%u", o->copy->key,
             o->copy->message_id, o->to->len);
    if (api->cfg.deliveries_due) api->cfg.deliveries_due(api->cfg.hooks_arg);
}

static enum MHD_Result stored_op_failed(struct api_request *req, struct api_write *w, const char *what)
{
    char *err = w->err;

    w->err = NULL;
    if (w->status == STORE_ERR_NOT_FOUND) {
        free(err);
        return reply_not_found(req);
    }
    return api_reply_store_error(req, what, w->status, err);
}

static enum MHD_Result resend_reply(struct api_server *api, struct api_request *req, struct api_write *w)
{
    struct stored_op *o = (struct stored_op *)w;

    if (w->status != STORE_OK) return stored_op_failed(req, w, "resend");
    return api_reply_json(req->conn, MHD_HTTP_OK,
                          json_pack("{s:o, s:s}", "id", api_jstr(o->answer_id), "message",
                                    "Queued. Thank you."));
}

enum MHD_Result api_stored_resend(struct api_server *api, struct api_request *req)
{
    GPtrArray *to = g_ptr_array_new_with_free_func(g_free);
    char *msg = collect_to(req, to);
    if (msg) {
        enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg);
        g_free(msg);
        g_ptr_array_unref(to);
        return r;
    }
    struct store_copy *c;
    struct store_message *smsg;
    enum MHD_Result r;
    if (!api_stored_load(api, req, &c, &smsg, &r)) {
        g_ptr_array_unref(to);
        return r;
    }
    struct stored_op *o = g_new0(struct stored_op, 1);
    o->w.settle = resend_settle;
    o->w.reply = resend_reply;
    o->w.free = stored_op_free;
    o->copy = c;
    o->to = to;
    /* The answer's id: the Message-Id header (without <>), or inlet's id when there is none. */
    struct message *m = message_parse(smsg->data, smsg->len);
    const char *mid = m ? message_message_id(m) : NULL;
    o->answer_id = g_strdup(mid && *mid ? mid : c->message_id);
    message_free(m);
    store_free_message(smsg);

    o->plans = g_new0(struct store_delivery_plan, to->len);
    for (guint i = 0; i < to->len; i++) {
        id_generate(o->plans[i].id);
        o->plans[i].recipient = c->recipient;
        o->plans[i].kind = "address";
        o->plans[i].target = g_ptr_array_index(to, i);
        o->plans[i].format = "";
        o->plans[i].route_ids_json = "[]";
    }
    if (!api_write_suspend(api, req, &o->w, &r)) return r;
    store_deliveries_add_async(api->store, c->message_id, o->plans, to->len, (int64_t)time(NULL),
                               api_write_done, req);
    return MHD_YES;
}

/* ---- DELETE --------------------------------------------------------------------------------- */

static enum MHD_Result delete_reply(struct api_server *api, struct api_request *req, struct api_write *w)
{
    struct stored_op *o = (struct stored_op *)w;

    if (w->status != STORE_OK) return stored_op_failed(req, w, "stored message delete");
    log_info("http", "stored message deleted key=%s", o->key);
    return api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:s}", "message", "Message has been deleted"));
}

enum MHD_Result api_stored_delete(struct api_server *api, struct api_request *req)
{
    const char *key = api_param(req, "key");
    if (!key || !*key || strlen(key) >= sizeof(((struct store_copy *)0)->key))
        return reply_not_found(req);
    struct stored_op *o = g_new0(struct stored_op, 1);
    o->w.reply = delete_reply;
    o->w.free = stored_op_free;
    snprintf(o->key, sizeof o->key, "%s", key);
    enum MHD_Result r;
    if (!api_write_suspend(api, req, &o->w, &r)) return r;
    store_copy_delete_async(api->store, o->key, (int64_t)time(NULL), api_write_done, req);
    return MHD_YES;
}
