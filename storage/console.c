/* storage/console.c — the web console's login sessions (SPEC §7.1; store.h), in the database so
 * that every node on one PostgreSQL knows every login (a console behind a load balancer), and a
 * restart logs nobody out.  Written once for every backend as portable statements (struct
 * store_backend's sql_read / sql_write: $1..$n, plain SQL both dialects take).
 *
 * A row holds the SHA-256 of a session cookie's token (hex), never a usable cookie, with the
 * session's CSRF token and its end.  At most `max` rows: a new login first drops the sessions that
 * ended, then, past `max`, the ones nearest their end, the oldest logins first (seq: the order of
 * the logins, which the seconds of expires_at do not tell apart); one operator's many logins must
 * never lock out the next one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage/internal.h"
#include "storage/store.h"

static void clear_err(char **err)
{
    if (err) *err = NULL;
}

enum store_status store_console_session_get(struct store *st, const char *digest, char **csrf,
                                            int64_t *expires_at, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);
    const struct store_param p[] = {STORE_P_TEXT(digest)};
    struct store_rows *r = NULL;
    enum store_status rc;

    clear_err(err);
    *csrf = NULL;
    *expires_at = 0;
    rc = ops->sql_read(be, "SELECT csrf, expires_at FROM console_sessions WHERE digest = $1", p, 1, &r, err);
    if (rc != STORE_OK) goto out;
    if (r->nrows == 0 || r->ncols != 2) {
        rc = STORE_ERR_NOT_FOUND;
        goto out;
    }
    const struct store_cell *c = &r->cells[0], *e = &r->cells[1];
    *csrf = strdup(c->type == STORE_CELL_TEXT && c->data ? c->data : "");
    *expires_at = e->type == STORE_CELL_INT ? e->i : e->type == STORE_CELL_TEXT ? strtoll(e->data, NULL, 10) : 0;
    if (!*csrf) {
        store_set_err(err, "cannot read a console session: out of memory");
        rc = STORE_ERR_NOMEM;
    }
out:
    store_rows_free(r);
    return rc;
}

/* A new session (a job, one transaction).  The strings are borrowed until the job's `done`. */
struct session_create {
    const char *digest, *csrf;
    int64_t expires_at, now, max;
};

static enum store_status run_create(const struct store_backend *ops, void *be, void *arg, char **err)
{
    const struct session_create *s = arg;
    const struct store_param ended[] = {STORE_P_INT(s->now)};
    const struct store_param row[] = {STORE_P_TEXT(s->digest), STORE_P_TEXT(s->csrf), STORE_P_INT(s->expires_at),
                                      STORE_P_INT(s->now)};
    const struct store_param keep[] = {STORE_P_INT(s->max)};
    enum store_status st;

    st = ops->sql_write(be, "DELETE FROM console_sessions WHERE expires_at <= $1", ended, 1, NULL, NULL, err);
    if (st == STORE_OK)
        st = ops->sql_write(be,
                            "INSERT INTO console_sessions (digest, csrf, expires_at, created_at, seq)"
                            " VALUES ($1, $2, $3, $4, (SELECT coalesce(max(seq), 0) + 1 FROM console_sessions))",
                            row, 4, NULL, NULL, err);
    if (st == STORE_OK)
        st = ops->sql_write(be,
                            "DELETE FROM console_sessions WHERE digest NOT IN (SELECT digest FROM"
                            " console_sessions ORDER BY expires_at DESC, seq DESC LIMIT $1)",
                            keep, 1, NULL, NULL, err);
    return st;
}

void store_console_session_create_async(struct store *st, const char *digest, const char *csrf,
                                        int64_t expires_at, int64_t now, size_t max,
                                        store_write_done_fn done, void *arg)
{
    const struct session_create s = {.digest = digest, .csrf = csrf, .expires_at = expires_at, .now = now,
                                     .max = max > INT64_MAX ? INT64_MAX : (int64_t)max};

    store_submit_copy(st, run_create, &s, sizeof s, done, arg);
}

struct session_delete {
    const char *digest;
};

static enum store_status run_delete(const struct store_backend *ops, void *be, void *arg, char **err)
{
    const struct session_delete *d = arg;
    const struct store_param p[] = {STORE_P_TEXT(d->digest)};

    return ops->sql_write(be, "DELETE FROM console_sessions WHERE digest = $1", p, 1, NULL, NULL, err);
}

void store_console_session_delete_async(struct store *st, const char *digest, store_write_done_fn done,
                                        void *arg)
{
    const struct session_delete d = {.digest = digest};

    store_submit_copy(st, run_delete, &d, sizeof d, done, arg);
}
