/* storage/mailbox.c — mailboxes for POP3 pollers (SPEC §9; store.h): the mailbox rows and the
 * maildrop of a POP3 session, written once for every backend as portable statements
 * (struct store_backend's sql_read / sql_write: $1..$n, plain SQL both dialects take).
 *
 * A mailbox message is a stored copy with a mailbox name (migrations.c step 5); its key is the
 * POP3 UID.  Writes are jobs that wait for their group commit, as every write is. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/internal.h"
#include "storage/store.h"

#define MB_COLS                                                                                    \
    "b.name, b.password_hash, coalesce(b.retention, 0), b.created_at, b.updated_at,"              \
    " (SELECT count(*) FROM stored s WHERE s.mailbox = b.name),"                                   \
    " (SELECT coalesce(sum(m.size), 0) FROM stored s JOIN messages m ON m.id = s.message_id"      \
    "  WHERE s.mailbox = b.name)"

static void clear_err(char **err)
{
    if (err) *err = NULL;
}

void store_mailboxes_free(struct store_mailbox *m, size_t n)
{
    if (!m) return;
    for (size_t i = 0; i < n; i++) {
        free(m[i].name);
        free(m[i].password_hash);
    }
    free(m);
}

static const struct store_cell *cell(const struct store_rows *r, size_t row, size_t col)
{
    return &r->cells[row * r->ncols + col];
}

static int64_t cell_int(const struct store_rows *r, size_t row, size_t col)
{
    const struct store_cell *c = cell(r, row, col);

    if (c->type == STORE_CELL_INT) return c->i;
    return c->type == STORE_CELL_TEXT ? strtoll(c->data, NULL, 10) : 0;
}

static char *cell_dup(const struct store_rows *r, size_t row, size_t col)
{
    const struct store_cell *c = cell(r, row, col);

    return strdup(c->type == STORE_CELL_TEXT && c->data ? c->data : "");
}

/* Rows of MB_COLS into a malloc'd array. */
static enum store_status mailboxes_of(const struct store_rows *r, struct store_mailbox **out, size_t *n,
                                      char **err)
{
    struct store_mailbox *m = calloc(r->nrows ? r->nrows : 1, sizeof *m);

    *out = NULL;
    *n = 0;
    if (!m || r->ncols != 7) goto nomem;
    for (size_t i = 0; i < r->nrows; i++) {
        m[i].name = cell_dup(r, i, 0);
        m[i].password_hash = cell_dup(r, i, 1);
        if (!m[i].name || !m[i].password_hash) {
            store_mailboxes_free(m, i + 1);
            m = NULL;
            goto nomem;
        }
        m[i].retention = cell_int(r, i, 2);
        m[i].created_at = cell_int(r, i, 3);
        m[i].updated_at = cell_int(r, i, 4);
        m[i].messages = cell_int(r, i, 5);
        m[i].bytes = cell_int(r, i, 6);
    }
    *out = m;
    *n = r->nrows;
    return STORE_OK;
nomem:
    free(m);
    store_set_err(err, "cannot read mailboxes: out of memory");
    return STORE_ERR_NOMEM;
}

/* ---- jobs ------------------------------------------------------------------------------------- */

/* One portable statement run as a job: its *changed, and its answer when nothing changed.  The
 * parameters are kept inside (their strings are borrowed), so that a copy of the struct is the
 * whole job (store_submit_copy). */
/* The most parameters any of these statements takes: a size of the struct, not a limit on input. */
#define STMT_PARAM_SLOTS 4
struct stmt_job {
    const char *sql;
    struct store_param params[STMT_PARAM_SLOTS];
    size_t nparams;
    enum store_status if_unchanged; /* STORE_OK: changing nothing is fine */
};

static enum store_status run_stmt(const struct store_backend *ops, void *be, void *arg, char **err)
{
    const struct stmt_job *j = arg;
    int64_t changed = 0;
    enum store_status st = ops->sql_write(be, j->sql, j->params, j->nparams, &changed, NULL, err);

    if (st == STORE_OK && changed == 0) return j->if_unchanged;
    return st;
}

/* Runs `j` through the writer and waits. */
static enum store_status stmt(struct store *st, const struct stmt_job *j, char **err)
{
    struct store_job job = {.run = run_stmt, .arg = (void *)(uintptr_t)j};

    clear_err(err);
    return store_run_job(st, &job, err);
}

static struct stmt_job mailbox_create_job(const char *name, const char *password_hash,
                                          int64_t retention, int64_t now)
{
    return (struct stmt_job){
        .sql = "INSERT INTO mailboxes (name, password_hash, retention, locked_until, created_at,"
               " updated_at) VALUES ($1, $2, CASE WHEN $3 > 0 THEN $3 END, 0, $4, $4)"
               " ON CONFLICT (name) DO NOTHING",
        .params = {STORE_P_TEXT(name), STORE_P_TEXT(password_hash), STORE_P_INT(retention),
                   STORE_P_INT(now)},
        .nparams = 4,
        .if_unchanged = STORE_ERR_CONFLICT};
}

static struct stmt_job mailbox_update_job(const char *name, const char *password_hash,
                                          int64_t retention, int64_t now)
{
    return (struct stmt_job){
        .sql = "UPDATE mailboxes SET password_hash = coalesce($2, password_hash),"
               " retention = CASE WHEN $3 < 0 THEN retention WHEN $3 = 0 THEN NULL ELSE $3 END,"
               " updated_at = $4 WHERE name = $1",
        .params = {STORE_P_TEXT(name), STORE_P_TEXT(password_hash), STORE_P_INT(retention),
                   STORE_P_INT(now)},
        .nparams = 4,
        .if_unchanged = STORE_ERR_NOT_FOUND};
}

enum store_status store_mailbox_create(struct store *st, const char *name, const char *password_hash,
                                       int64_t retention, int64_t now, char **err)
{
    const struct stmt_job j = mailbox_create_job(name, password_hash, retention, now);

    return stmt(st, &j, err);
}

void store_mailbox_create_async(struct store *st, const char *name, const char *password_hash,
                                int64_t retention, int64_t now, store_write_done_fn done, void *arg)
{
    const struct stmt_job j = mailbox_create_job(name, password_hash, retention, now);

    store_submit_copy(st, run_stmt, &j, sizeof j, done, arg);
}

enum store_status store_mailbox_update(struct store *st, const char *name, const char *password_hash,
                                       int64_t retention, int64_t now, char **err)
{
    const struct stmt_job j = mailbox_update_job(name, password_hash, retention, now);

    return stmt(st, &j, err);
}

void store_mailbox_update_async(struct store *st, const char *name, const char *password_hash,
                                int64_t retention, int64_t now, store_write_done_fn done, void *arg)
{
    const struct stmt_job j = mailbox_update_job(name, password_hash, retention, now);

    store_submit_copy(st, run_stmt, &j, sizeof j, done, arg);
}

/* The mailbox row, then its messages (their bytes go with the sweeper's next purge).  `arg`: a
 * struct mailbox_delete. */
struct mailbox_delete {
    const char *name;
};

static enum store_status run_delete(const struct store_backend *ops, void *be, void *arg, char **err)
{
    const struct mailbox_delete *d = arg;
    const struct store_param p[] = {STORE_P_TEXT(d->name)};
    int64_t changed = 0;
    enum store_status st = ops->sql_write(be, "DELETE FROM mailboxes WHERE name = $1", p, 1, &changed,
                                          NULL, err);

    if (st != STORE_OK) return st;
    if (changed == 0) return STORE_ERR_NOT_FOUND;
    return ops->sql_write(be, "DELETE FROM stored WHERE mailbox = $1", p, 1, NULL, NULL, err);
}

enum store_status store_mailbox_delete(struct store *st, const char *name, char **err)
{
    struct mailbox_delete d = {.name = name};
    struct store_job job = {.run = run_delete, .arg = &d};

    clear_err(err);
    return store_run_job(st, &job, err);
}

void store_mailbox_delete_async(struct store *st, const char *name, store_write_done_fn done,
                                void *arg)
{
    const struct mailbox_delete d = {.name = name};

    store_submit_copy(st, run_delete, &d, sizeof d, done, arg);
}

enum store_status store_mailbox_get(struct store *st, const char *name, struct store_mailbox **out,
                                    char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);
    const struct store_param p[] = {STORE_P_TEXT(name)};
    struct store_rows *r = NULL;
    size_t n = 0;
    enum store_status rc;

    clear_err(err);
    *out = NULL;
    rc = ops->sql_read(be, "SELECT " MB_COLS " FROM mailboxes b WHERE b.name = $1", p, 1, &r, err);
    if (rc == STORE_OK) rc = mailboxes_of(r, out, &n, err);
    store_rows_free(r);
    if (rc == STORE_OK && n == 0) {
        store_mailboxes_free(*out, 0);
        *out = NULL;
        return STORE_ERR_NOT_FOUND;
    }
    return rc;
}

enum store_status store_mailboxes_list(struct store *st, const char *after, size_t max,
                                       struct store_mailbox **out, size_t *n, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);
    const struct store_param p[] = {STORE_P_TEXT(after ? after : ""),
                                    STORE_P_INT(max > INT64_MAX ? INT64_MAX : (int64_t)max)};
    struct store_rows *r = NULL;
    enum store_status rc;

    clear_err(err);
    *out = NULL;
    *n = 0;
    rc = ops->sql_read(be, "SELECT " MB_COLS " FROM mailboxes b WHERE b.name > $1 ORDER BY b.name LIMIT $2",
                       p, 2, &r, err);
    if (rc == STORE_OK) rc = mailboxes_of(r, out, n, err);
    store_rows_free(r);
    return rc;
}

/* ---- maildrops -------------------------------------------------------------------------------- */

struct open_job {
    const char *name, *owner;
    int64_t now, lease_seconds, max;
    struct store_rows *rows;
};

/* A maildrop lock's statement: `parts` joined by the database's clock (leases are read and
 * written by that clock, as the claims are: the nodes' clocks need not agree).  malloc'd; NULL
 * when memory runs out. */
static char *lock_sql(const struct store_backend *ops, const char *const *parts, size_t n)
{
    const size_t nowlen = strlen(ops->now_seconds_sql);
    size_t len = 1;

    for (size_t i = 0; i < n; i++) len += strlen(parts[i]) + (i + 1 < n ? nowlen : 0);
    char *sql = malloc(len), *p = sql;
    if (!sql) return NULL;
    for (size_t i = 0; i < n; i++) {
        p = stpcpy(p, parts[i]);
        if (i + 1 < n) p = stpcpy(p, ops->now_seconds_sql);
    }
    return sql;
}

static enum store_status run_open(const struct store_backend *ops, void *be, void *arg, char **err)
{
    struct open_job *j = arg;
    const struct store_param p[] = {STORE_P_TEXT(j->name), STORE_P_INT(j->now)};
    const struct store_param lock[] = {STORE_P_TEXT(j->name), STORE_P_INT(j->lease_seconds),
                                       STORE_P_TEXT(j->owner)};
    int64_t changed = 0;
    enum store_status st;
    static const char *const parts[] = {"UPDATE mailboxes SET locked_until = ",
                                        " + $2, lock_owner = $3 WHERE name = $1 AND locked_until <= ", ""};
    char *sql = lock_sql(ops, parts, 3);

    if (!sql) {
        store_set_err(err, "cannot open mailbox %s: out of memory", j->name);
        return STORE_ERR_NOMEM;
    }
    st = ops->sql_write(be, sql, lock, 3, &changed, NULL, err);
    free(sql);
    if (st != STORE_OK) return st;
    if (changed == 0) {
        struct store_rows *r = NULL;

        st = ops->sql_write(be, "SELECT 1 FROM mailboxes WHERE name = $1", p, 1, NULL, &r, err);
        if (st == STORE_OK) st = r->nrows ? STORE_ERR_CONFLICT : STORE_ERR_NOT_FOUND;
        store_rows_free(r);
        return st;
    }
    /* Expiry between sessions: what passed it goes now, never under a session. */
    st = ops->sql_write(be, "DELETE FROM stored WHERE mailbox = $1 AND expires_at <= $2", p, 2, NULL,
                        NULL, err);
    if (st != STORE_OK) return st;
    const struct store_param q[] = {STORE_P_TEXT(j->name), STORE_P_INT(j->max)};

    return ops->sql_write(be,
                          "SELECT s.key, s.message_id, m.size FROM stored s"
                          " JOIN messages m ON m.id = s.message_id WHERE s.mailbox = $1"
                          " ORDER BY s.created_at, s.key LIMIT $2",
                          q, 2, NULL, &j->rows, err);
}

enum store_status store_maildrop_open(struct store *st, const char *name, const char *owner, int64_t now,
                                      int64_t lease_seconds, size_t max, struct store_maildrop_entry **out,
                                      size_t *n, char **err)
{
    struct open_job j = {.name = name, .owner = owner, .now = now, .lease_seconds = lease_seconds,
                         .max = max > INT64_MAX ? INT64_MAX : (int64_t)max};
    struct store_job job = {.run = run_open, .arg = &j};
    enum store_status rc;

    clear_err(err);
    *out = NULL;
    *n = 0;
    rc = store_run_job(st, &job, err);
    if (rc == STORE_OK && j.rows && j.rows->nrows) {
        struct store_maildrop_entry *e = calloc(j.rows->nrows, sizeof *e);

        if (!e) {
            store_set_err(err, "cannot list mailbox %s: out of memory", name);
            rc = STORE_ERR_NOMEM;
        }
        for (size_t i = 0; e && i < j.rows->nrows; i++) {
            const struct store_cell *k = cell(j.rows, i, 0), *id = cell(j.rows, i, 1);

            snprintf(e[i].key, sizeof e[i].key, "%s", k->data ? k->data : "");
            snprintf(e[i].message_id, sizeof e[i].message_id, "%s", id->data ? id->data : "");
            e[i].size = cell_int(j.rows, i, 2);
        }
        if (e) {
            *out = e;
            *n = j.rows->nrows;
        }
    }
    store_rows_free(j.rows);
    return rc;
}

struct close_job {
    const char *name, *owner;
    int64_t now_ms;
    const char *const *retrieved, *const *deleted;
    size_t nretrieved, ndeleted;
};

/* An event of one mailbox message, with the copy's message, recipient and domain. */
static enum store_status close_event(const struct store_backend *ops, void *be, const struct close_job *j,
                                     const char *event, const char *key, char **err)
{
    const struct store_param p[] = {STORE_P_INT(j->now_ms), STORE_P_TEXT(event), STORE_P_TEXT(key),
                                    STORE_P_TEXT(j->name)};

    /* Names and keys are URL-safe (checked by the callers): JSON strings as they are. */
    return ops->sql_write(be,
                          "INSERT INTO events (ts, event, severity, message_id, recipient, domain,"
                          " delivery_id, detail) SELECT $1, $2, '', message_id, recipient, domain, '',"
                          " '{\"key\":\"' || key || '\",\"mailbox\":\"' || mailbox || '\"}'"
                          " FROM stored WHERE key = $3 AND mailbox = $4",
                          p, 4, NULL, NULL, err);
}

static enum store_status run_close(const struct store_backend *ops, void *be, void *arg, char **err)
{
    const struct close_job *j = arg;
    const struct store_param lock[] = {STORE_P_TEXT(j->name), STORE_P_TEXT(j->owner)};
    int64_t released = 0;
    /* First the lock: a session that lost it (its lease ran out, another took it) writes nothing. */
    enum store_status st = ops->sql_write(be,
                                          "UPDATE mailboxes SET locked_until = 0, lock_owner = ''"
                                          " WHERE name = $1 AND lock_owner = $2",
                                          lock, 2, &released, NULL, err);

    if (st == STORE_OK && released == 0) {
        store_set_err(err, "mailbox %s: this session's lock was lost (its lease ran out)", j->name);
        return STORE_ERR_CONFLICT;
    }
    for (size_t i = 0; st == STORE_OK && i < j->nretrieved; i++)
        st = close_event(ops, be, j, "retrieved", j->retrieved[i], err);
    for (size_t i = 0; st == STORE_OK && i < j->ndeleted; i++) {
        const struct store_param p[] = {STORE_P_TEXT(j->deleted[i]), STORE_P_TEXT(j->name)};

        st = close_event(ops, be, j, "deleted", j->deleted[i], err);
        if (st == STORE_OK)
            st = ops->sql_write(be, "DELETE FROM stored WHERE key = $1 AND mailbox = $2", p, 2, NULL,
                                NULL, err);
    }
    return st;
}

enum store_status store_maildrop_close(struct store *st, const char *name, const char *owner, int64_t now_ms,
                                       const char *const *retrieved, size_t nretrieved,
                                       const char *const *deleted, size_t ndeleted, char **err)
{
    struct close_job j = {.name = name, .owner = owner, .now_ms = now_ms, .retrieved = retrieved,
                          .nretrieved = nretrieved, .deleted = deleted, .ndeleted = ndeleted};
    struct store_job job = {.run = run_close, .arg = &j};

    clear_err(err);
    return store_run_job(st, &job, err);
}

struct renew_job {
    const char *const *names, *const *owners;
    size_t n;
    int64_t lease_seconds;
    bool *renewed;
};

static enum store_status run_renew(const struct store_backend *ops, void *be, void *arg, char **err)
{
    const struct renew_job *j = arg;
    enum store_status st = STORE_OK;
    /* Also past its lease: while nobody took the lock, it is still this session's. */
    static const char *const parts[] = {"UPDATE mailboxes SET locked_until = ",
                                        " + $3 WHERE name = $1 AND lock_owner = $2"};
    char *sql = lock_sql(ops, parts, 2);

    if (!sql) {
        store_set_err(err, "cannot renew maildrop locks: out of memory");
        return STORE_ERR_NOMEM;
    }
    for (size_t i = 0; st == STORE_OK && i < j->n; i++) {
        const struct store_param p[] = {STORE_P_TEXT(j->names[i]), STORE_P_TEXT(j->owners[i]),
                                        STORE_P_INT(j->lease_seconds)};
        int64_t changed = 0;

        st = ops->sql_write(be, sql, p, 3, &changed, NULL, err);
        j->renewed[i] = st == STORE_OK && changed > 0;
    }
    free(sql);
    return st;
}

void store_maildrop_renew_async(struct store *st, const char *const *names, const char *const *owners, size_t n,
                                int64_t lease_seconds, bool *renewed, store_write_done_fn done, void *arg)
{
    const struct renew_job j = {.names = names, .owners = owners, .n = n, .lease_seconds = lease_seconds,
                                .renewed = renewed};

    for (size_t i = 0; i < n; i++) renewed[i] = false;
    store_submit_copy(st, run_renew, &j, sizeof j, done, arg);
}

enum store_status store_maildrop_unlock_stale(struct store *st, char **err)
{
    const struct stmt_job j = {.sql = "UPDATE mailboxes SET locked_until = 0, lock_owner = '' WHERE locked_until <> 0",
                               .if_unchanged = STORE_OK};
    void *be;

    clear_err(err);
    if (store_backend_of(st, &be)->deliveries_claim) return STORE_OK; /* shared: leases only */
    return stmt(st, &j, err);
}
