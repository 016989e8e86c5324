/* engine/mailboxes.c — the POP3 server's storage hooks (internal_mailboxes.h; SPEC §9).
 *
 * Each hook queues one piece of work on libuv's threadpool, whose threads may block: the password
 * check (yescrypt, tens of milliseconds on purpose), the maildrop's open and close (writer jobs
 * that wait for their commit), a message's bytes (a read).  The answer is handed to pop3/ in the
 * after-work callback, on the loop thread.  A login for a mailbox that does not exist checks the
 * password against a fixed hash all the same, so that its answer takes as long. */
#include <glib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal_mailboxes.h"
#include "util/clock.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/password.h"

enum work_kind { W_LOGIN, W_FETCH, W_CLOSE };

struct work {
    uv_work_t req;
    enum work_kind kind;
    struct store *store;
    struct pop3_call *call;
    char *name, *password, *message_id;
    char **retrieved, **deleted;
    size_t nretrieved, ndeleted;
    /* results */
    enum pop3_login_result login;
    struct store_maildrop_entry *entries;
    size_t n;
    struct store_message *msg;
    bool ok;
};


/* A yescrypt hash of a password nobody has: the time a wrong password costs. */
static const char dummy_hash[] = "$y$j9T$rZzyCNAlG.WI8VfbOWgXW0$jUErdpMlxaeqKaDO1i6uvlVNWASTdIFePfvQN3pZy.4";

static void do_login(struct work *w)
{
    struct store_mailbox *m = NULL;
    char *err = NULL;
    enum store_status st = store_mailbox_get(w->store, w->name, &m, &err);
    int64_t now = clock_now_ms() / 1000;

    if (st != STORE_OK && st != STORE_ERR_NOT_FOUND) {
        log_warn("pop3", "login failed mailbox=%s error=\"%s\"", w->name, err ? err : store_status_text(st));
        w->login = POP3_LOGIN_UNAVAILABLE;
        goto out;
    }
    const bool good = password_verify(w->password, m ? m->password_hash : dummy_hash);
    if (!m || !good) {
        w->login = POP3_LOGIN_BAD;
        goto out;
    }
    free(err);
    err = NULL;
    st = store_maildrop_open(w->store, w->name, now, now + POP3_SESSION_MAX_SECONDS + 60, POP3_MAILDROP_MAX,
                             &w->entries, &w->n, &err);
    if (st == STORE_OK) w->login = POP3_LOGIN_OK;
    else if (st == STORE_ERR_CONFLICT) w->login = POP3_LOGIN_IN_USE;
    else if (st == STORE_ERR_NOT_FOUND) w->login = POP3_LOGIN_BAD; /* deleted meanwhile */
    else {
        log_warn("pop3", "maildrop open failed mailbox=%s error=\"%s\"", w->name, err ? err : store_status_text(st));
        w->login = POP3_LOGIN_UNAVAILABLE;
    }
out:
    free(err);
    store_mailboxes_free(m, m ? 1 : 0);
    explicit_bzero(w->password, strlen(w->password));
}

static void do_fetch(struct work *w)
{
    char *err = NULL;
    enum store_status st = store_load_message(w->store, w->message_id, &w->msg, &err);

    if (st != STORE_OK) {
        log_warn("pop3", "message read failed id=%s error=\"%s\"", w->message_id, err ? err : store_status_text(st));
        w->msg = NULL;
    }
    free(err);
}

static void do_close(struct work *w)
{
    char *err = NULL;
    enum store_status st = store_maildrop_close(w->store, w->name, clock_now_ms(), (const char *const *)w->retrieved,
                                                w->nretrieved, (const char *const *)w->deleted, w->ndeleted, &err);

    w->ok = st == STORE_OK;
    if (!w->ok)
        log_warn("pop3", "maildrop close failed mailbox=%s error=\"%s\"", w->name, err ? err : store_status_text(st));
    free(err);
}

static void on_work(uv_work_t *req)
{
    struct work *w = req->data;

    if (w->kind == W_LOGIN) do_login(w);
    else if (w->kind == W_FETCH) do_fetch(w);
    else do_close(w);
}

static void on_done(uv_work_t *req, int status)
{
    struct work *w = req->data;

    if (w->kind == W_LOGIN) {
        struct pop3_entry *e = g_new0(struct pop3_entry, w->n ? w->n : 1);
        for (size_t i = 0; i < w->n; i++) {
            memcpy(e[i].uid, w->entries[i].key, sizeof e[i].uid);
            memcpy(e[i].message_id, w->entries[i].message_id, sizeof e[i].message_id);
            e[i].size = w->entries[i].size;
        }
        pop3_call_login_done(w->call, status == 0 ? w->login : POP3_LOGIN_UNAVAILABLE, e, w->n);
        g_free(e);
    } else if (w->kind == W_FETCH) {
        pop3_call_fetch_done(w->call, w->msg ? w->msg->data : NULL, w->msg ? w->msg->len : 0);
    } else {
        pop3_call_close_done(w->call, status == 0 && w->ok);
    }
    g_free(w->name);
    g_free(w->password);
    g_free(w->message_id);
    g_strfreev(w->retrieved);
    g_strfreev(w->deleted);
    free(w->entries);
    store_free_message(w->msg);
    g_free(w);
}

static void queue(const struct engine_mailboxes *mb, struct work *w)
{
    w->store = mb->store;
    w->req.data = w;
    if (uv_queue_work(mb->loop, &w->req, on_work, on_done) < 0) on_done(&w->req, -1);
}

static void hook_login(void *arg, struct pop3_call *call, const char *name, const char *password)
{
    struct work *w = g_new0(struct work, 1);

    w->kind = W_LOGIN;
    w->call = call;
    w->name = g_strdup(name);
    w->password = g_strdup(password);
    queue(arg, w);
}

static void hook_fetch(void *arg, struct pop3_call *call, const char *message_id)
{
    struct work *w = g_new0(struct work, 1);

    w->kind = W_FETCH;
    w->call = call;
    w->message_id = g_strdup(message_id);
    queue(arg, w);
}

static char **copy_strv(const char *const *v, size_t n)
{
    char **out = g_new0(char *, n + 1);

    for (size_t i = 0; i < n; i++) out[i] = g_strdup(v[i]);
    return out;
}

static void hook_close(void *arg, struct pop3_call *call, const char *name, const char *const *retrieved,
                       size_t nretrieved, const char *const *deleted, size_t ndeleted)
{
    struct work *w = g_new0(struct work, 1);

    w->kind = W_CLOSE;
    w->call = call;
    w->name = g_strdup(name);
    w->retrieved = copy_strv(retrieved, nretrieved);
    w->nretrieved = nretrieved;
    w->deleted = copy_strv(deleted, ndeleted);
    w->ndeleted = ndeleted;
    queue(arg, w);
}

struct pop3_hooks engine_mailbox_hooks(const struct engine_mailboxes *mb)
{
    /* The hooks only read mb: the casts drop a const the pop3_hooks signature does not carry. */
    return (struct pop3_hooks){.arg = (void *)(uintptr_t)mb, .login = hook_login, .fetch = hook_fetch,
                               .close = hook_close};
}
