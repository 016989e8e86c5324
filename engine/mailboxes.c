/* engine/mailboxes.c — the POP3 server's storage hooks (internal_mailboxes.h; SPEC §9).
 *
 * Each hook queues one piece of work on libuv's threadpool, whose threads may block: the password
 * check (yescrypt, tens of milliseconds on purpose), the maildrop's open and close (writer jobs
 * that wait for their commit), a message's bytes (a read).  The answer is handed to pop3/ in the
 * after-work callback, on the loop thread.  A login for a mailbox that does not exist checks the
 * password against a fixed hash all the same, so that its answer takes as long.
 *
 * A session's maildrop lock names it (a token: this node's id and 64 random bits) and lasts
 * --lease-seconds; `held` lists the sessions holding one, and every third of the lease one job
 * renews them all (queued to the store's writer directly, not on the thread pool: a renewal never
 * waits behind the password checks of a flood of logins).  A session whose lock was taken
 * meanwhile (its lease ran out: the database was unreachable, or this process stalled) is logged,
 * and its QUIT commits nothing (the store checks the token). */
#include <glib.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal_mailboxes.h"
#include "util/clock.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/password.h"

enum work_kind { W_LOGIN, W_FETCH, W_CLOSE };

/* A session holding its maildrop's lock. */
struct held_lock {
    char *name, *owner;
    bool lost; /* logged once */
};

struct work {
    uv_work_t req;
    enum work_kind kind;
    struct engine_mailboxes *mb;
    struct pop3_call *call;
    char *name, *password, *message_id, *owner;
    char **retrieved, **deleted;
    size_t nretrieved, ndeleted;
    /* results */
    enum pop3_login_result login;
    struct store_maildrop_entry *entries;
    size_t n;
    struct store_message *msg;
    enum pop3_close_result close;
    bool ok;
};


/* A yescrypt hash of a password nobody has: the time a wrong password costs. */
static const char dummy_hash[] = "$y$j9T$rZzyCNAlG.WI8VfbOWgXW0$jUErdpMlxaeqKaDO1i6uvlVNWASTdIFePfvQN3pZy.4";

static void do_login(struct work *w)
{
    struct store_mailbox *m = NULL;
    char *err = NULL;
    enum store_status st = store_mailbox_get(w->mb->store, w->name, &m, &err);
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
    st = store_maildrop_open(w->mb->store, w->name, w->owner, now, w->mb->lease_seconds, POP3_MAILDROP_MAX,
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
    enum store_status st = store_load_message(w->mb->store, w->message_id, &w->msg, &err);

    if (st != STORE_OK) {
        log_warn("pop3", "message read failed id=%s error=\"%s\"", w->message_id, err ? err : store_status_text(st));
        w->msg = NULL;
    }
    free(err);
}

static void do_close(struct work *w)
{
    char *err = NULL;
    enum store_status st = store_maildrop_close(w->mb->store, w->name, w->owner, clock_now_ms(),
                                                (const char *const *)w->retrieved, w->nretrieved,
                                                (const char *const *)w->deleted, w->ndeleted, &err);

    w->close = st == STORE_OK ? POP3_CLOSE_OK : st == STORE_ERR_CONFLICT ? POP3_CLOSE_LOCK_LOST : POP3_CLOSE_UNAVAILABLE;
    if (st != STORE_OK)
        log_warn("pop3", "maildrop close failed mailbox=%s deleted=0 error=\"%s\"", w->name,
                 err ? err : store_status_text(st));
    free(err);
}

static void on_work(uv_work_t *req)
{
    struct work *w = req->data;

    if (w->kind == W_LOGIN) do_login(w);
    else if (w->kind == W_FETCH) do_fetch(w);
    else do_close(w);
}

static void held_free(void *p)
{
    struct held_lock *h = p;

    g_free(h->name);
    g_free(h->owner);
    g_free(h);
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
        const enum pop3_login_result r = status == 0 ? w->login : POP3_LOGIN_UNAVAILABLE;
        if (r == POP3_LOGIN_OK) { /* before the answer: a client already gone closes at once */
            struct held_lock *h = g_new0(struct held_lock, 1);
            h->name = g_steal_pointer(&w->name);
            h->owner = g_steal_pointer(&w->owner);
            g_hash_table_insert(w->mb->held, w->call, h);
        }
        pop3_call_login_done(w->call, r, e, w->n);
        g_free(e);
    } else if (w->kind == W_FETCH) {
        pop3_call_fetch_done(w->call, w->msg ? w->msg->data : NULL, w->msg ? w->msg->len : 0);
    } else {
        pop3_call_close_done(w->call, status == 0 ? w->close : POP3_CLOSE_UNAVAILABLE);
    }
    g_free(w->name);
    g_free(w->password);
    g_free(w->message_id);
    g_free(w->owner);
    g_strfreev(w->retrieved);
    g_strfreev(w->deleted);
    free(w->entries);
    store_free_message(w->msg);
    g_free(w);
}

static void queue(struct engine_mailboxes *mb, struct work *w)
{
    w->mb = mb;
    w->req.data = w;
    if (uv_queue_work(mb->loop, &w->req, on_work, on_done) < 0) on_done(&w->req, -1);
}

/* A token no other session has: this node's id and 64 random bits. */
static char *new_owner(const struct engine_mailboxes *mb)
{
    return g_strdup_printf("%s/%08x%08x", store_node_id(mb->store), g_random_int(), g_random_int());
}

static void hook_login(void *arg, struct pop3_call *call, const char *name, const char *password)
{
    struct work *w = g_new0(struct work, 1);

    w->kind = W_LOGIN;
    w->call = call;
    w->name = g_strdup(name);
    w->password = g_strdup(password);
    w->owner = new_owner(arg);
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
    struct engine_mailboxes *mb = arg;
    struct work *w = g_new0(struct work, 1);
    struct held_lock *h = g_hash_table_lookup(mb->held, call);

    w->kind = W_CLOSE;
    w->call = call;
    w->name = g_strdup(name);
    /* No held lock: never (a close follows a login that took one); the store then commits nothing. */
    w->owner = g_strdup(h ? h->owner : "");
    g_hash_table_remove(mb->held, call);
    w->retrieved = copy_strv(retrieved, nretrieved);
    w->nretrieved = nretrieved;
    w->deleted = copy_strv(deleted, ndeleted);
    w->ndeleted = ndeleted;
    queue(arg, w);
}

struct pop3_hooks engine_mailbox_hooks(struct engine_mailboxes *mb)
{
    return (struct pop3_hooks){.arg = mb, .login = hook_login, .fetch = hook_fetch, .close = hook_close};
}

/* ---- renewals ------------------------------------------------------------------------------------ */

/* One renewal of every held lock, on its way through the writer: calls[i] held names[i] as
 * owners[i] when it was queued. */
struct renewal {
    struct engine_mailboxes *mb;
    struct pop3_call **calls;
    char **names, **owners;
    size_t n;
    bool *renewed;
    enum store_status status;
    char *err;
};

static void renewal_free(struct renewal *r)
{
    g_free(r->calls);
    g_strfreev(r->names);
    g_strfreev(r->owners);
    g_free(r->renewed);
    free(r->err);
    g_free(r);
}

/* Writer thread (or the loop, when the store is closing): back to the loop. */
static void on_renewed(void *arg, enum store_status status, char *err)
{
    struct renewal *r = arg;

    r->status = status;
    r->err = err;
    atomic_store(&r->mb->renew_done, r);
    uv_async_send(&r->mb->renew_async);
}

static void close_handles(struct engine_mailboxes *mb)
{
    uv_close((uv_handle_t *)&mb->renew_timer, NULL);
    uv_close((uv_handle_t *)&mb->renew_async, NULL);
}

/* Loop thread: the renewal's answer.  A lock that was not renewed while its session still holds it
 * is lost (logged once); the session finds out at QUIT. */
static void on_renew_async(uv_async_t *h)
{
    struct engine_mailboxes *mb = h->data;
    struct renewal *r = atomic_exchange(&mb->renew_done, NULL);

    if (!r) return;
    mb->renewing = false;
    if (r->status != STORE_OK)
        log_warn("pop3", "maildrop locks not renewed sessions=%zu error=\"%s\" (retried in %llds)", r->n,
                 r->err ? r->err : store_status_text(r->status), (long long)(mb->lease_seconds / 3));
    for (size_t i = 0; r->status == STORE_OK && i < r->n; i++) {
        struct held_lock *held = g_hash_table_lookup(mb->held, r->calls[i]);
        if (r->renewed[i] || !held || held->lost || strcmp(held->owner, r->owners[i]) != 0) continue;
        held->lost = true;
        log_warn("pop3", "maildrop lock lost mailbox=%s (its lease ran out and another session took it: "
                 "this session's deletions will not be committed)", held->name);
    }
    renewal_free(r);
    if (mb->stopped) close_handles(mb);
}

/* Loop thread, every third of the lease: one writer job renews every held lock. */
static void on_renew_timer(uv_timer_t *t)
{
    struct engine_mailboxes *mb = t->data;
    const size_t n = g_hash_table_size(mb->held);

    if (mb->renewing || n == 0) return;
    struct renewal *r = g_new0(struct renewal, 1);
    r->mb = mb;
    r->calls = g_new0(struct pop3_call *, n);
    r->names = g_new0(char *, n + 1);
    r->owners = g_new0(char *, n + 1);
    r->renewed = g_new0(bool, n);
    GHashTableIter it;
    gpointer key, value;
    g_hash_table_iter_init(&it, mb->held);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        const struct held_lock *held = value;
        r->calls[r->n] = key;
        r->names[r->n] = g_strdup(held->name);
        r->owners[r->n++] = g_strdup(held->owner);
    }
    mb->renewing = true;
    store_maildrop_renew_async(mb->store, (const char *const *)r->names, (const char *const *)r->owners, r->n,
                               mb->lease_seconds, r->renewed, on_renewed, r);
}

void engine_mailboxes_start(struct engine_mailboxes *mb, uv_loop_t *loop, struct store *store, int64_t lease_seconds)
{
    *mb = (struct engine_mailboxes){.store = store, .loop = loop, .lease_seconds = lease_seconds};
    mb->held = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, held_free);
    uv_timer_init(loop, &mb->renew_timer);
    mb->renew_timer.data = mb;
    uv_async_init(loop, &mb->renew_async, on_renew_async);
    mb->renew_async.data = mb;
    const uint64_t every_ms = (uint64_t)lease_seconds * 1000 / 3;
    uv_timer_start(&mb->renew_timer, on_renew_timer, every_ms, every_ms);
}

void engine_mailboxes_stop(struct engine_mailboxes *mb)
{
    if (!mb->held || mb->stopped) return;
    mb->stopped = true;
    uv_timer_stop(&mb->renew_timer);
    if (!mb->renewing) close_handles(mb); /* else once its answer came (on_renew_async) */
}

void engine_mailboxes_free(struct engine_mailboxes *mb)
{
    if (mb->held) g_hash_table_destroy(mb->held);
    mb->held = NULL;
}
