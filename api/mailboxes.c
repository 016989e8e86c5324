/* api/mailboxes.c — mailboxes for POP3 pollers (SPEC §9, §7):
 *
 *   POST   /v3/mailboxes          name, password, [retention]   creates one
 *   GET    /v3/mailboxes?limit=100&after=<name>                 {"items": [mailbox...]} by name
 *   GET    /v3/mailboxes/<name>                                 {"mailbox": mailbox}
 *   PUT    /v3/mailboxes/<name>   [password], [retention]       rotates the password, sets the
 *                                                               retention (0: the default)
 *   DELETE /v3/mailboxes/<name>                                 the mailbox and its messages
 *
 * A mailbox: {"name", "retention" (seconds, null: --mailbox-ttl), "messages", "size" (bytes),
 * "created_at", "updated_at"}.  The password is hashed here (util/password.h, yescrypt) before it
 * reaches storage/, on one of API_PASSWORD_HASHERS threads of the API's own while the request
 * waits suspended (a hash takes tens of milliseconds: on a pool thread, a burst of mailbox writes
 * would hold the threads that answer everything else); neither the password nor its hash is ever
 * answered or logged. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"
#include "routes/routes.h"
#include "storage/store.h"
#include "util/clock.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/password.h"

static json_t *date_json(int64_t t)
{
    char buf[40];
    api_rfc1123(buf, sizeof buf, t);
    return json_string(buf);
}

static json_t *mailbox_json(const struct store_mailbox *m)
{
    return json_pack("{s:o, s:o, s:I, s:I, s:o, s:o}", "name", api_jstr(m->name), "retention",
                     m->retention > 0 ? json_integer(m->retention) : json_null(), "messages",
                     (json_int_t)m->messages, "size", (json_int_t)m->bytes, "created_at",
                     date_json(m->created_at), "updated_at", date_json(m->updated_at));
}

static enum MHD_Result reply_not_found(struct api_request *req)
{
    return api_reply_error(req->conn, MHD_HTTP_NOT_FOUND, "Mailbox not found");
}

/* The retention field: absent → *out = -1 (kept / the default); else 0 (the default) or
 * 1..MAILBOX_TTL_MAX seconds.  False when it is something else. */
static bool parse_retention(const struct api_request *req, int64_t *out)
{
    const char *v = api_form_value(&req->body, "retention");
    long long n = 0;

    *out = -1;
    if (!v) return true;
    if (api_parse_count(v, &n) != 1 || n > MAILBOX_TTL_MAX) return false;
    *out = n;
    return true;
}

/* The request's password field, when it is acceptable (g_malloc'd: the hasher wipes it); NULL
 * when absent (*present false) or not acceptable (*bad). */
static char *given_password(const struct api_request *req, bool *present, bool *bad)
{
    const struct form_field *f = api_form_get(&req->body, "password");

    *present = f != NULL;
    *bad = f && !password_acceptable(f->value, f->len);
    return f && !*bad ? g_strndup(f->value, f->len) : NULL;
}

static enum MHD_Result reply_mailbox(struct api_server *api, struct api_request *req, const char *name,
                                     const char *message)
{
    struct store_mailbox *m = NULL;
    char *err = NULL;
    enum store_status st = store_mailbox_get(api->store, name, &m, &err);

    if (st == STORE_ERR_NOT_FOUND) return reply_not_found(req);
    if (st != STORE_OK) return api_reply_store_error(req, "mailbox read", st, err);
    json_t *j = mailbox_json(m);
    store_mailboxes_free(m, 1);
    if (message) return api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:s, s:o}", "message", message, "mailbox", j));
    return api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:o}", "mailbox", j));
}

/* ---- writes (api/writes.c): the request waits for the commit suspended ---------------------- */

/* One mailbox write: its name and hash kept while the request waits, and what to answer. */
struct mailbox_op {
    struct api_write w; /* first (api/internal.h) */
    enum { MB_CREATE, MB_UPDATE, MB_DELETE } op;
    struct api_server *api;
    struct api_request *req; /* suspended until the write ended */
    char *name;         /* g_malloc'd */
    char *plain;        /* the password until hashed (g_malloc'd, wiped), NULL: none given */
    char *hash;         /* malloc'd; NULL: kept (update) */
    bool hash_failed;   /* out of memory or entropy: 500, nothing written */
    bool password;      /* update: a password was given */
    int64_t retention;  /* update: < 0 kept */
};

static void wipe_plain(struct mailbox_op *o)
{
    if (o->plain) memset(o->plain, 0, strlen(o->plain));
    g_free(o->plain);
    o->plain = NULL;
}

static void mailbox_op_free(struct api_write *w)
{
    struct mailbox_op *o = (struct mailbox_op *)w;

    wipe_plain(o);
    g_free(o->name);
    free(o->hash);
    g_free(o);
}

static enum MHD_Result mailbox_op_reply(struct api_server *api, struct api_request *req, struct api_write *w)
{
    struct mailbox_op *o = (struct mailbox_op *)w;
    static const char *const what[] = {"mailbox create", "mailbox update", "mailbox delete"};

    if (o->hash_failed) return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Cannot hash the password");
    if (o->op == MB_CREATE && w->status == STORE_ERR_CONFLICT)
        return api_reply_error(req->conn, MHD_HTTP_CONFLICT, "Mailbox already exists");
    if (o->op != MB_CREATE && w->status == STORE_ERR_NOT_FOUND) return reply_not_found(req);
    if (w->status != STORE_OK) {
        char *err = w->err;
        w->err = NULL;
        return api_reply_store_error(req, what[o->op], w->status, err);
    }
    switch (o->op) {
    case MB_CREATE:
        log_info("http", "mailbox created name=%s", o->name);
        return reply_mailbox(api, req, o->name, "Mailbox has been created");
    case MB_UPDATE:
        log_info("http", "mailbox updated name=%s password=%s retention=%s", o->name,
                 o->password ? "changed" : "kept", o->retention < 0 ? "kept" : "set");
        return reply_mailbox(api, req, o->name, "Mailbox has been updated");
    case MB_DELETE:
        log_info("http", "mailbox deleted name=%s", o->name);
        return api_reply_json(req->conn, MHD_HTTP_OK,
                              json_pack("{s:s, s:o}", "message", "Mailbox has been deleted", "name", api_jstr(o->name)));
    }
    return api_reply_error(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal error");
}

/* Queues the write of a suspended request (its password hashed already, if any). */
static void mailbox_op_write(struct mailbox_op *o)
{
    struct store *st = o->api->store;
    int64_t now = clock_now_ms() / 1000;

    switch (o->op) {
    case MB_CREATE:
        store_mailbox_create_async(st, o->name, o->hash, o->retention < 0 ? 0 : o->retention, now,
                                   api_write_done, o->req);
        break;
    case MB_UPDATE:
        store_mailbox_update_async(st, o->name, o->hash, o->retention, now, api_write_done, o->req);
        break;
    case MB_DELETE: store_mailbox_delete_async(st, o->name, api_write_done, o->req); break;
    }
}

/* A hasher thread (api->hashers): the password of a suspended request, then its write; a hash
 * that fails resumes the request with nothing written. */
static void hash_then_write(gpointer data, gpointer user_data)
{
    struct mailbox_op *o = data;

    (void)user_data;
    log_thread_name("password");
    o->hash = password_hash(o->plain);
    wipe_plain(o);
    if (!o->hash) {
        o->hash_failed = true;
        api_write_done(o->req, STORE_ERR_NOMEM, NULL);
        return;
    }
    mailbox_op_write(o);
}

GThreadPool *api_mailboxes_hashers_new(char **err)
{
    GError *gerr = NULL;
    GThreadPool *pool = g_thread_pool_new(hash_then_write, NULL, API_PASSWORD_HASHERS, FALSE, &gerr);

    if (!pool) {
        *err = g_strdup_printf("cannot start the password hashers: %s", gerr ? gerr->message : "?");
        g_clear_error(&gerr);
    }
    return pool;
}

/* Suspends the request, then hashes its password (plain: g_malloc'd, NULL: none) on a hasher and
 * queues the write; takes name and plain. */
static enum MHD_Result mailbox_op_submit(struct api_server *api, struct api_request *req, int op, char *name,
                                         char *plain, bool password, int64_t retention)
{
    struct mailbox_op *o = g_new0(struct mailbox_op, 1);
    enum MHD_Result ret;

    *o = (struct mailbox_op){.w = {.reply = mailbox_op_reply, .free = mailbox_op_free}, .op = op, .api = api,
                             .req = req, .name = name, .plain = plain, .password = password,
                             .retention = retention};
    if (!api_write_suspend(api, req, &o->w, &ret)) return ret;
    if (!o->plain) {
        mailbox_op_write(o);
        return MHD_YES;
    }
    GError *gerr = NULL;
    if (!g_thread_pool_push(api->hashers, o, &gerr)) { /* no thread could be started */
        log_error("http", "cannot hash a password: %s", gerr ? gerr->message : "?");
        g_clear_error(&gerr);
        wipe_plain(o);
        o->hash_failed = true;
        api_write_done(req, STORE_ERR_NOMEM, NULL);
    }
    return MHD_YES;
}

#define PASSWORD_RULE "a password of 8 to 256 bytes without CR, LF or NUL is expected"

enum MHD_Result api_mailboxes_create(struct api_server *api, struct api_request *req)
{
    const char *given = api_form_value(&req->body, "name");
    char *name = given ? g_ascii_strdown(given, -1) : NULL, *plain = NULL;
    bool present, bad;
    int64_t retention;
    enum MHD_Result ret;

    if (!name || !route_mailbox_name_ok(name)) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                              "Invalid 'name' parameter: 1 to 64 of a-z 0-9 . _ + - @ is expected");
        goto out;
    }
    if (!parse_retention(req, &retention)) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                              "Invalid 'retention' parameter: seconds from 0 to 316224000 are expected");
        goto out;
    }
    plain = given_password(req, &present, &bad);
    if (!plain) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "Invalid 'password' parameter: " PASSWORD_RULE);
        goto out;
    }
    ret = mailbox_op_submit(api, req, MB_CREATE, name, plain, true, retention);
    name = NULL; /* taken */
out:
    g_free(name);
    return ret;
}

enum MHD_Result api_mailboxes_update(struct api_server *api, struct api_request *req)
{
    char *name = g_ascii_strdown(api_param(req, "name"), -1), *plain = NULL;
    bool present, bad;
    int64_t retention;
    enum MHD_Result ret;

    if (!route_mailbox_name_ok(name)) {
        ret = reply_not_found(req);
        goto out;
    }
    if (!parse_retention(req, &retention)) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                              "Invalid 'retention' parameter: seconds from 0 to 316224000 are expected");
        goto out;
    }
    plain = given_password(req, &present, &bad);
    if (bad) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "Invalid 'password' parameter: " PASSWORD_RULE);
        goto out;
    }
    if (!present && retention < 0) {
        ret = api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "Nothing to change: 'password' or 'retention' is expected");
        goto out;
    }
    ret = mailbox_op_submit(api, req, MB_UPDATE, name, plain, present, retention);
    name = NULL; /* taken */
    plain = NULL;
out:
    if (plain) memset(plain, 0, strlen(plain));
    g_free(plain);
    g_free(name);
    return ret;
}

enum MHD_Result api_mailboxes_get(struct api_server *api, struct api_request *req)
{
    char *name = g_ascii_strdown(api_param(req, "name"), -1);
    enum MHD_Result ret = route_mailbox_name_ok(name) ? reply_mailbox(api, req, name, NULL) : reply_not_found(req);

    g_free(name);
    return ret;
}

enum MHD_Result api_mailboxes_delete(struct api_server *api, struct api_request *req)
{
    char *name = g_ascii_strdown(api_param(req, "name"), -1);
    enum MHD_Result ret;

    if (!route_mailbox_name_ok(name)) {
        ret = reply_not_found(req);
        goto out;
    }
    ret = mailbox_op_submit(api, req, MB_DELETE, name, NULL, false, -1);
    name = NULL; /* taken */
out:
    g_free(name);
    return ret;
}

enum MHD_Result api_mailboxes_list(struct api_server *api, struct api_request *req)
{
    const char *l = api_form_value(&req->query, "limit"), *after = api_form_value(&req->query, "after");
    long long limit = API_MAILBOXES_LIMIT_DEFAULT;
    struct store_mailbox *m = NULL;
    size_t n = 0;
    char *err = NULL;

    if (l && (api_parse_count(l, &limit) != 1 || limit < 1 || limit > API_MAILBOXES_LIMIT_MAX))
        return api_reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                               "Invalid 'limit' parameter: an integer from 1 to 1000 is expected");
    enum store_status st = store_mailboxes_list(api->store, after ? after : "", (size_t)limit, &m, &n, &err);
    if (st != STORE_OK) return api_reply_store_error(req, "mailbox list", st, err);
    json_t *items = json_array();
    for (size_t i = 0; items && i < n; i++) json_array_append_new(items, mailbox_json(&m[i]));
    store_mailboxes_free(m, n);
    return api_reply_json(req->conn, MHD_HTTP_OK, json_pack("{s:o}", "items", items));
}
