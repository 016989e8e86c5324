/* storage/postgres.c — the PostgreSQL backend (SPEC §8), on libpq, behind the same table as
 * SQLite (internal.h) and with the same schema (migrations.c).
 *
 * Two connections to the database named by a libpq URI (postgresql://user@host:port/db; the
 * password comes from the URI, PGPASSFILE or the environment, and is never logged):
 *   - the write connection, used only by store.c's writer thread: every batch and its jobs;
 *   - the read connection, behind `rmu`, for every read (each a single statement, so each sees one
 *     snapshot) and the health probe.
 * Both run with synchronous_commit=on, so a COMMIT that returned is on the server's disk (and on
 * its synchronous standbys, when it has some).
 *
 * Group commit.  A batch of messages is sent as one pipeline (libpq pipeline mode): BEGIN, one
 * INSERT per message (the body as a binary BYTEA parameter, never escaped) and, when the batch has
 * no job, COMMIT, then one sync: the whole batch costs one round trip.  Jobs need answers before
 * they go on (a job reads, then decides), so a batch with jobs runs them after the pipeline, each
 * under its own savepoint, then commits.  A duplicate message id is left out by ON CONFLICT DO
 * NOTHING and answered alone (the others commit), as on SQLite.
 *
 * Failures.  When the server is unreachable or a statement fails, the transaction is never
 * committed and the write connection is dropped (the server rolls back what it had); the next
 * batch connects again, so accepting resumes by itself when the database is back.  A batch that
 * finds its connection dead before anything ran reconnects and tries once more.  A read that finds
 * the read connection dead reconnects and runs once more (reads change nothing). */
#include <errno.h>
#include <glib.h>
#include <inttypes.h>
#include <libpq-events.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/internal.h"
#include "storage/internal_postgres.h"
#include "util/limits.h"
#include "util/log.h"

#define PG_CONNECT_TIMEOUT_S "5"
#define PG_MAX_PARAMS 16
/* pg_advisory_xact_lock key of the migrations: one node migrates at a time ("inlet" + 1). */
#define PG_MIGRATION_LOCK "7597386049893137"

/* Unix milliseconds of the server's clock: every lease is set and compared on this one clock, so
 * that the nodes' clocks need not agree. */
#define PG_SERVER_NOW "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
/* The same in seconds (maildrop locks). */
#define PG_SERVER_NOW_S "floor(extract(epoch FROM clock_timestamp()))::bigint"

struct pg_be {
    char *uri;
    char name[64];
    char node[NODE_ID_MAX + 1]; /* claimed_by of this node's claims (set_claims) */
    int64_t lease_ms;
    PGconn *w;            /* the writer thread's */
    pthread_mutex_t rmu;  /* guards r */
    PGconn *r;
    struct store_pg_listen *listen; /* route changes (postgres_listen.c); NULL until watched */
    pthread_mutex_t cmu;  /* guards c: claims and renewals, beside the reads */
    PGconn *c;
};

extern const struct store_backend store_postgres_backend;

/* ---- parameters and results ----------------------------------------------------------------- */

/* The parameters of one statement: text values, integers printed here, binary bytes. */
struct pg_params {
    int n;
    const char *v[PG_MAX_PARAMS];
    int len[PG_MAX_PARAMS];
    int fmt[PG_MAX_PARAMS];
    char num[PG_MAX_PARAMS][24];
};

static void p_text(struct pg_params *p, const char *s)
{
    p->v[p->n] = s; /* NULL: SQL NULL */
    p->len[p->n] = 0;
    p->fmt[p->n] = 0;
    p->n++;
}

static void p_int(struct pg_params *p, int64_t v)
{
    snprintf(p->num[p->n], sizeof p->num[p->n], "%" PRId64, v);
    p_text(p, p->num[p->n]);
}

static void p_bytes(struct pg_params *p, const void *data, size_t len)
{
    p->v[p->n] = len ? data : ""; /* never NULL: that would be SQL NULL */
    p->len[p->n] = (int)len;
    p->fmt[p->n] = 1;
    p->n++;
}

static const char *nz(const char *s, const char *dflt)
{
    return s ? s : dflt;
}

/* The status of a failed statement: disk full and out of memory as such, lock and serialization
 * trouble as busy, everything else (the connection above all) as an I/O failure. */
static enum store_status pg_status_of(PGconn *c, const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    if (PQstatus(c) != CONNECTION_OK || !state) return STORE_ERR_IO;
    if (!strcmp(state, "53100")) return STORE_ERR_FULL;
    if (!strcmp(state, "53200")) return STORE_ERR_NOMEM;
    if (!strncmp(state, "40", 2) || !strcmp(state, "55P03") || !strcmp(state, "57014"))
        return STORE_ERR_BUSY;
    return STORE_ERR_IO;
}

/* *err = "<what>: <the server's or libpq's message>" (one line); clears r; the status. */
static enum store_status pg_fail(PGconn *c, PGresult *r, char **err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum store_status pg_fail(PGconn *c, PGresult *r, char **err, const char *fmt, ...)
{
    enum store_status st = pg_status_of(c, r);
    const char *m = r && *PQresultErrorMessage(r) ? PQresultErrorMessage(r) : PQerrorMessage(c);
    char *what = NULL;
    va_list ap;
    int len;

    va_start(ap, fmt);
    if (vasprintf(&what, fmt, ap) < 0) what = NULL;
    va_end(ap);
    len = (int)strcspn(m ? m : "", "\n");
    store_set_err(err, "%s: %.*s", what ? what : "database error", len,
                  len ? m : "the database connection failed");
    free(what);
    PQclear(r);
    return st;
}

/* ---- prepared statements -------------------------------------------------------------------
 * Every statement is prepared once per connection and then only bound and executed: the server
 * parses, analyses and plans it once instead of on every execution (a third of its CPU per
 * message in the bench before this).  The cache hangs on the connection as libpq instance data,
 * so a new connection starts with an empty one and the cache goes with the connection it names.
 * Statements are looked up by their text; past STORE_PG_PREPARED_MAX distinct texts (dynamic SQL, e.g.
 * inlet migrate's per-table inserts) the rest run unprepared. */

struct pg_prepared {
    int n;
    char *sql[STORE_PG_PREPARED_MAX];
};

static int pg_prepared_event(PGEventId id, void *info, void *pass)
{
    (void)pass;
    if (id == PGEVT_CONNDESTROY || id == PGEVT_CONNRESET) {
        PGconn *c = id == PGEVT_CONNDESTROY ? ((PGEventConnDestroy *)info)->conn
                                            : ((PGEventConnReset *)info)->conn;
        struct pg_prepared *cache = PQinstanceData(c, pg_prepared_event);

        if (cache) {
            for (int i = 0; i < cache->n; i++) free(cache->sql[i]);
            cache->n = 0;
            if (id == PGEVT_CONNDESTROY) {
                free(cache);
                PQsetInstanceData(c, pg_prepared_event, NULL);
            }
        }
    }
    return 1;
}

/* Attaches an empty cache to a new connection (false: out of memory). */
static bool pg_prepared_attach(PGconn *c)
{
    struct pg_prepared *cache = calloc(1, sizeof *cache);

    if (!cache || !PQregisterEventProc(c, pg_prepared_event, "inlet-prepared", NULL) ||
        !PQsetInstanceData(c, pg_prepared_event, cache)) {
        free(cache);
        return false;
    }
    return true;
}

/* The name of `sql` prepared on c ("s<N>"), preparing it the first time (one round trip, never
 * in pipeline mode): true.  False when it is not to be prepared (the cache is full, pipeline mode,
 * no cache): the statement runs unprepared.  When the server refuses to prepare it, false with
 * *failed set to the server's answer: the statement's own error (the same SQLSTATE its execution
 * would give; running it again inside a transaction would only say the transaction is aborted). */
static bool pg_prepared_name(PGconn *c, const char *sql, int nparams, char name[16],
                             PGresult **failed)
{
    struct pg_prepared *cache = PQinstanceData(c, pg_prepared_event);
    PGresult *r;
    int i;

    *failed = NULL;
    if (!cache) return false;
    for (i = 0; i < cache->n; i++)
        if (!strcmp(cache->sql[i], sql)) break;
    snprintf(name, 16, "s%d", i);
    if (i < cache->n) return true;
    if (i == STORE_PG_PREPARED_MAX || PQpipelineStatus(c) != PQ_PIPELINE_OFF) return false;
    r = PQprepare(c, name, sql, nparams, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        if (r && PQstatus(c) == CONNECTION_OK && PQresultErrorField(r, PG_DIAG_SQLSTATE))
            *failed = r;
        else
            PQclear(r);
        return false;
    }
    PQclear(r);
    if (!(cache->sql[i] = strdup(sql))) {
        PQclear(PQexec(c, "DEALLOCATE ALL")); /* keeps the names in step with the cache */
        for (int j = 0; j < cache->n; j++) free(cache->sql[j]);
        cache->n = 0;
        return false;
    }
    cache->n++;
    return true;
}

static PGresult *pg_exec(PGconn *c, const char *sql, const struct pg_params *p)
{
    char name[16];
    PGresult *failed;
    int n = p ? p->n : 0;

    if (pg_prepared_name(c, sql, n, name, &failed))
        return PQexecPrepared(c, name, n, p ? p->v : NULL, p ? p->len : NULL,
                              p ? p->fmt : NULL, 0);
    if (failed) return failed;
    return PQexecParams(c, sql, n, NULL, p ? p->v : NULL, p ? p->len : NULL, p ? p->fmt : NULL,
                        0);
}

/* Runs a statement that returns no rows: STORE_OK with *changed (rows it changed; may be NULL),
 * or the failure. */
static enum store_status pg_cmd(PGconn *c, const char *sql, const struct pg_params *p,
                                int64_t *changed, char **err, const char *what)
{
    PGresult *r = pg_exec(c, sql, p);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        return pg_fail(c, r, err, "%s", what);
    if (changed) *changed = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return STORE_OK;
}

/* Runs a query on the write connection: STORE_OK with *res (the caller clears it), or the
 * failure. */
static enum store_status pg_rows(PGconn *c, const char *sql, const struct pg_params *p,
                                 PGresult **res, char **err, const char *what)
{
    PGresult *r = pg_exec(c, sql, p);

    *res = NULL;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) return pg_fail(c, r, err, "%s", what);
    *res = r;
    return STORE_OK;
}

static char *col_dup(const PGresult *r, int row, int col)
{
    return strdup(PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}

static int64_t col_int(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static void col_copy(char *dst, size_t size, const PGresult *r, int row, int col)
{
    snprintf(dst, size, "%s", PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}

static bool col_true(const PGresult *r, int row, int col)
{
    return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A BYTEA column in text form (bytea_output = hex: "\x0a1b...") decoded into *out (malloc'd,
 * never NULL) and *len.  STORE_OK, STORE_ERR_NOMEM, or STORE_ERR_IO when it is not hex. */
static enum store_status col_bytes(const PGresult *r, int row, int col, uint8_t **out,
                                   size_t *len)
{
    const char *t = PQgetvalue(r, row, col);
    size_t n = (size_t)PQgetlength(r, row, col);

    *out = NULL;
    *len = 0;
    if (n < 2 || t[0] != '\\' || t[1] != 'x' || n % 2) return STORE_ERR_IO;
    n = (n - 2) / 2;
    if (!(*out = malloc(n ? n : 1))) return STORE_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(t[2 + 2 * i]), lo = hexval(t[3 + 2 * i]);

        if (hi < 0 || lo < 0) {
            free(*out);
            *out = NULL;
            return STORE_ERR_IO;
        }
        (*out)[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n;
    return STORE_OK;
}

/* ---- connections ---------------------------------------------------------------------------- */

static PGconn *pg_connect(const char *uri, char **err)
{
    /* A database host that vanishes without a reset (power loss, a partition) would otherwise
     * hold a group commit for the kernel's retransmission timeout, about 15 minutes: keepalives
     * find an idle peer gone in about 25 s, tcp_user_timeout one with data unacknowledged in 30 s.
     * The URL's own settings come after these and win. */
    const char *const keys[] = {"application_name", "connect_timeout", "keepalives",
                                "keepalives_idle", "keepalives_interval", "keepalives_count",
                                "tcp_user_timeout", "dbname", NULL};
    const char *const vals[] = {"inlet", PG_CONNECT_TIMEOUT_S, "1", "10", "5", "3", "30000",
                                uri, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    PGresult *r;

    if (!c) {
        store_set_err(err, "cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        const char *m = PQerrorMessage(c);

        store_set_err(err, "cannot connect to the database: %.*s", (int)strcspn(m, "\n"), m);
        PQfinish(c);
        return NULL;
    }
    if (!pg_prepared_attach(c)) {
        store_set_err(err, "cannot connect to the database: out of memory");
        PQfinish(c);
        return NULL;
    }
    /* COMMIT returns once the transaction is durable; bodies come back as hex text. */
    r = PQexec(c, "SET synchronous_commit = on; SET bytea_output = 'hex';"
                  " SET client_min_messages = warning; SET TIME ZONE 'UTC'");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pg_fail(c, r, err, "cannot set up the database connection");
        PQfinish(c);
        return NULL;
    }
    PQclear(r);
    return c;
}

/* A usable connection in *c: the one there, or a new one. */
static enum store_status pg_ready(struct pg_be *be, PGconn **c, char **err)
{
    if (*c && PQstatus(*c) == CONNECTION_OK) return STORE_OK;
    if (*c) {
        PQfinish(*c);
        *c = NULL;
        log_info("storage", "reconnect backend=postgresql");
    }
    *c = pg_connect(be->uri, err);
    return *c ? STORE_OK : STORE_ERR_IO;
}

/* Drops a connection that failed (the server rolls back its open transaction). */
static void pg_drop(PGconn **c)
{
    PQfinish(*c);
    *c = NULL;
}

/* One statement that returns rows on connection *conn (its mutex held by the caller): STORE_OK
 * with *res, or the failure.  A connection found dead is replaced and the statement run once
 * more (reads change nothing; a claim or renewal run twice claims or renews the same rows). */
static enum store_status pg_query_on(struct pg_be *be, PGconn **conn, const char *sql,
                                     const struct pg_params *p, PGresult **res, char **err,
                                     const char *what)
{
    for (int attempt = 0;; attempt++) {
        enum store_status st = pg_ready(be, conn, err);
        PGresult *r;

        if (st != STORE_OK) return st;
        r = pg_exec(*conn, sql, p);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            *res = r;
            return STORE_OK;
        }
        if (attempt == 0 && PQstatus(*conn) != CONNECTION_OK) {
            PQclear(r);
            continue;
        }
        st = pg_fail(*conn, r, err, "%s", what);
        if (PQstatus(*conn) != CONNECTION_OK) pg_drop(conn);
        return st;
    }
}

static enum store_status pg_read_locked(struct pg_be *be, const char *sql,
                                        const struct pg_params *p, PGresult **res, char **err,
                                        const char *what)
{
    return pg_query_on(be, &be->r, sql, p, res, err, what);
}

static enum store_status pg_read(struct pg_be *be, const char *sql, const struct pg_params *p,
                                 PGresult **res, char **err, const char *what)
{
    enum store_status st;

    *res = NULL;
    pthread_mutex_lock(&be->rmu);
    st = pg_read_locked(be, sql, p, res, err, what);
    pthread_mutex_unlock(&be->rmu);
    return st;
}

/* ---- schema --------------------------------------------------------------------------------- */

/* pg_cmd runs PQexecParams, which takes one statement; a migration step has many.  PQexec takes
 * many (simple protocol) but no parameters: the steps have none. */
static enum store_status pg_script(PGconn *c, const char *sql, char **err, const char *what)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        return pg_fail(c, r, err, "%s", what);
    PQclear(r);
    return STORE_OK;
}

/* The database's schema version (0 before the first step), read inside the open transaction. */
static enum store_status read_version(PGconn *c, int *version, char **err)
{
    PGresult *r;
    enum store_status st = pg_rows(c, "SELECT to_regclass('meta') IS NOT NULL", NULL, &r, err,
                                   "cannot read the schema version");
    char *end;
    long v;

    *version = 0;
    if (st != STORE_OK) return st;
    if (!col_true(r, 0, 0)) { /* a new database */
        PQclear(r);
        return STORE_OK;
    }
    PQclear(r);
    st = pg_rows(c, "SELECT coalesce((SELECT value FROM meta WHERE key = 'schema_version'), '0')",
                 NULL, &r, err, "cannot read the schema version");
    if (st != STORE_OK) return st;
    errno = 0;
    v = strtol(PQgetvalue(r, 0, 0), &end, 10);
    if (*end || errno || v < 0 || v > 1000000) {
        store_set_err(err, "database schema version \"%s\" is not a number", PQgetvalue(r, 0, 0));
        PQclear(r);
        return STORE_ERR_IO;
    }
    PQclear(r);
    *version = (int)v;
    return STORE_OK;
}

/* One transaction per step under an advisory lock, so that nodes starting together never both
 * apply a step; a newer schema than this binary knows is refused. */
static enum store_status migrate(PGconn *c, char **err)
{
    size_t count;
    const struct store_migration *steps = store_migrations(&count);
    const int latest = store_schema_version();
    enum store_status st;

    for (;;) {
        struct pg_params p = {0};
        int v = 0;

        st = pg_cmd(c, "BEGIN", NULL, NULL, err, "cannot begin a migration");
        if (st == STORE_OK)
            st = pg_cmd(c, "SELECT pg_advisory_xact_lock(" PG_MIGRATION_LOCK ")", NULL, NULL, err,
                        "cannot take the migration lock");
        if (st == STORE_OK) st = read_version(c, &v, err);
        if (st != STORE_OK) goto rollback;
        if (v > latest) {
            store_set_err(err,
                          "database schema version %d is newer than this inlet supports (%d); "
                          "upgrade inlet",
                          v, latest);
            st = STORE_ERR_IO;
            goto rollback;
        }
        if (v == latest) return pg_cmd(c, "COMMIT", NULL, NULL, err, "cannot end the migration");
        if ((size_t)v >= count || steps[v].version != v + 1 || !steps[v].postgres_sql) {
            store_set_err(err, "no migration from schema version %d", v);
            st = STORE_ERR_IO;
            goto rollback;
        }
        p_int(&p, v + 1);
        /* The simple protocol runs the step's many statements in one go. */
        st = pg_script(c, steps[v].postgres_sql, err, steps[v].description);
        if (st == STORE_OK)
            st = pg_cmd(c,
                        "INSERT INTO meta (key, value) VALUES ('schema_version', $1)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &p, NULL, err, "cannot record the schema version");
        if (st == STORE_OK) st = pg_cmd(c, "COMMIT", NULL, NULL, err, "cannot commit the migration");
        if (st != STORE_OK) goto rollback;
        log_info("storage", "migrated backend=postgresql schema=%d", v + 1);
    }

rollback:
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    return st;
}

/* ---- open / close --------------------------------------------------------------------------- */

static void pg_close(void *arg)
{
    struct pg_be *be = arg;

    if (!be) return;
    store_pg_listen_stop(be->listen); /* first: its poll reads through r */
    PQfinish(be->w);
    PQfinish(be->r);
    PQfinish(be->c);
    pthread_mutex_destroy(&be->rmu);
    pthread_mutex_destroy(&be->cmu);
    free(be->uri);
    free(be);
}

static void *pg_open(const char *uri, char **err)
{
    struct pg_be *be = calloc(1, sizeof *be);

    if (!be) {
        store_set_err(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&be->rmu, NULL);
    pthread_mutex_init(&be->cmu, NULL); /* be->c connects at the first claim */
    if (!(be->uri = strdup(uri))) {
        store_set_err(err, "out of memory");
        goto fail;
    }
    if (!PQisthreadsafe()) {
        store_set_err(err, "the libpq library was built without thread support");
        goto fail;
    }
    if (!(be->w = pg_connect(uri, err)) || migrate(be->w, err) != STORE_OK ||
        !(be->r = pg_connect(uri, err)))
        goto fail;
    snprintf(be->name, sizeof be->name, "postgresql %d.%d", PQserverVersion(be->w) / 10000,
             PQserverVersion(be->w) % 10000);
    return be;

fail:
    pg_close(be);
    return NULL;
}

static const char *pg_name(void *arg)
{
    struct pg_be *be = arg;

    return be->name;
}

/* ---- group commit --------------------------------------------------------------------------- */

/* The message is claimed by the accepting node (its pipeline routes it now; another node takes
 * it only once the lease ran out: store_claim_unprocessed). */
static const char insert_sql[] =
    "INSERT INTO messages (id, received_at, sender, recipients, remote_ip, helo, tls, size, raw,"
    " claimed_by, lease_until)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, " PG_SERVER_NOW " + $11)"
    " ON CONFLICT (id) DO NOTHING";

/* Queues the INSERT of one message in the pipeline. */
static bool send_insert(const struct pg_be *be, PGconn *c, const char *insert_name,
                        const struct store_message *m, char **rcpts)
{
    struct pg_params p = {0};

    *rcpts = store_json_string_array((const char *const *)m->rcpts, m->nrcpts);
    if (!*rcpts) return false;
    p_text(&p, m->id);
    p_int(&p, m->received_at_ms);
    p_text(&p, m->sender);
    p_text(&p, *rcpts);
    p_text(&p, m->remote_ip);
    p_text(&p, m->helo);
    p_text(&p, m->tls);
    p_int(&p, (int64_t)m->len);
    p_bytes(&p, m->data, m->len);
    p_text(&p, be->node);
    p_int(&p, be->lease_ms);
    return PQsendQueryPrepared(c, insert_name, p.n, p.v, p.len, p.fmt, 0) == 1;
}

/* The next query's result in the pipeline, with the NULL that ends it consumed. */
static PGresult *pipe_next(PGconn *c)
{
    PGresult *r = PQgetResult(c);

    if (r && PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
        PGresult *end = PQgetResult(c);

        PQclear(end); /* NULL unless the server sent more than one result */
    }
    return r;
}

/* Sends BEGIN, the inserts and (commit) COMMIT as one pipeline and reads the answers.  STORE_OK
 * with status[] set; else the failure, *begun saying whether BEGIN had run. */
static enum store_status pipeline_batch(struct pg_be *be, struct store_message *const *msgs,
                                        size_t n, enum store_status *status, bool commit,
                                        bool *begun, char **err)
{
    PGconn *c = be->w;
    PGresult *r;
    char insert_name[16];
    bool sent;

    *begun = false;
    /* Prepared before the pipeline starts (PQprepare waits for its answer). */
    if (!pg_prepared_name(c, insert_sql, 11, insert_name, &r))
        return pg_fail(c, r, err, "cannot prepare the insert");
    sent = PQenterPipelineMode(c) == 1 &&
           PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1;
    for (size_t i = 0; sent && i < n; i++) {
        char *rcpts = NULL;

        sent = send_insert(be, c, insert_name, msgs[i], &rcpts);
        free(rcpts); /* libpq copied the parameters into its buffer */
    }
    if (sent && commit) sent = PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1;
    if (!sent || PQpipelineSync(c) != 1) return pg_fail(c, NULL, err, "cannot send the batch");

    r = pipe_next(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) return pg_fail(c, r, err, "cannot begin the batch");
    PQclear(r);
    *begun = true;
    for (size_t i = 0; i < n; i++) {
        r = pipe_next(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            return pg_fail(c, r, err, "cannot insert message %s", msgs[i]->id);
        status[i] = strcmp(PQcmdTuples(r), "1") == 0 ? STORE_OK : STORE_ERR_IO;
        if (status[i] != STORE_OK)
            log_warn("storage", "insert failed id=%s error=\"duplicate message id\"", msgs[i]->id);
        PQclear(r);
    }
    if (commit) {
        r = pipe_next(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            return pg_fail(c, r, err, "cannot commit the batch");
        PQclear(r);
    }
    r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_PIPELINE_SYNC) return pg_fail(c, r, err, "batch out of step");
    PQclear(r);
    if (PQexitPipelineMode(c) != 1) return pg_fail(c, NULL, err, "cannot leave pipeline mode");
    return STORE_OK;
}

/* Runs one job under savepoint "job" (as sqlite.c's run_job): -1 only when the transaction
 * cannot go on. */
static int run_job(struct pg_be *be, struct store_job *job)
{
    char *jerr = NULL;
    enum store_status rc;

    if (pg_cmd(be->w, "SAVEPOINT job", NULL, NULL, NULL, "savepoint") != STORE_OK) return -1;
    rc = job->run(&store_postgres_backend, be, job->arg, &jerr);
    job->status = rc;
    if (!store_status_failed(rc)) {
        free(jerr);
        job->err = NULL;
        return pg_cmd(be->w, "RELEASE SAVEPOINT job", NULL, NULL, NULL, "release") == STORE_OK
                   ? 0
                   : -1;
    }
    job->err = jerr ? jerr : strdup("job failed");
    if (PQstatus(be->w) != CONNECTION_OK) return -1;
    if (pg_cmd(be->w, "ROLLBACK TO SAVEPOINT job", NULL, NULL, NULL, "rollback") != STORE_OK ||
        pg_cmd(be->w, "RELEASE SAVEPOINT job", NULL, NULL, NULL, "release") != STORE_OK)
        return -1;
    return 0;
}

static enum store_status pg_write_batch(void *arg, struct store_message *const *msgs, size_t n,
                                        enum store_status *status, struct store_job *const *jobs,
                                        size_t njobs, char **err)
{
    struct pg_be *be = arg;
    enum store_status st;
    bool begun = false;

    for (int attempt = 0;; attempt++) {
        st = pg_ready(be, &be->w, err);
        if (st != STORE_OK) return st;
        st = pipeline_batch(be, msgs, n, status, njobs == 0, &begun, err);
        if (st == STORE_OK) break;
        pg_drop(&be->w); /* nothing of the batch stays: the server rolls back */
        if (begun || attempt > 0) return st;
        /* The connection was dead before anything ran (e.g. the server restarted): again. */
        free(*err);
        *err = NULL;
    }
    if (njobs == 0) return STORE_OK;
    for (size_t i = 0; i < njobs; i++) {
        if (run_job(be, jobs[i]) < 0) {
            st = pg_fail(be->w, NULL, err, "a job of the batch failed");
            goto fail;
        }
    }
    st = pg_cmd(be->w, "COMMIT", NULL, NULL, err, "cannot commit the batch");
    if (st == STORE_OK) return STORE_OK;
fail:
    for (size_t i = 0; i < njobs; i++) {
        free(jobs[i]->err);
        jobs[i]->err = NULL;
    }
    pg_drop(&be->w);
    return st;
}

/* ---- meta rows and routes (jobs) ------------------------------------------------------------ */

static enum store_status pg_meta_set_if_absent(void *arg, const char *key, const char *value,
                                               char **winner, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    *winner = NULL;
    p_text(&p, key);
    p_text(&p, value);
    st = pg_cmd(be->w, "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &p, NULL, err, "cannot write a meta row");
    p.n = 1;
    if (st == STORE_OK)
        st = pg_rows(be->w, "SELECT value FROM meta WHERE key = $1", &p, &r, err,
                     "cannot read a meta row");
    if (st != STORE_OK) return st;
    if (PQntuples(r) == 1) *winner = col_dup(r, 0, 0);
    PQclear(r);
    if (*winner) return STORE_OK;
    store_set_err(err, "meta row %s: not there after the insert, or out of memory", key);
    return STORE_ERR_IO;
}

static enum store_status pg_route_insert(void *arg, const struct store_route *r,
                                         const char *actions_json, int64_t quota, int64_t *seq,
                                         char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *res;
    enum store_status st;

    /* The quota is checked inside the transaction; a lock on the table keeps two nodes from
     * both passing it. */
    st = pg_cmd(be->w, "LOCK TABLE routes IN SHARE ROW EXCLUSIVE MODE", NULL, NULL, err,
                "cannot lock the routes");
    if (st == STORE_OK)
        st = pg_rows(be->w, "SELECT count(*) FROM routes", NULL, &res, err, "cannot count routes");
    if (st != STORE_OK) return st;
    if (col_int(res, 0, 0) >= quota) {
        PQclear(res);
        return STORE_ERR_QUOTA;
    }
    PQclear(res);
    p_text(&p, r->id);
    p_int(&p, r->priority);
    p_text(&p, nz(r->description, ""));
    p_text(&p, nz(r->expression, ""));
    p_text(&p, actions_json);
    p_int(&p, r->created_at);
    st = pg_rows(be->w,
                 "INSERT INTO routes (id, priority, description, expression, actions, created_at)"
                 " VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                 &p, &res, err, "cannot insert a route");
    if (st != STORE_OK) return st;
    *seq = col_int(res, 0, 0);
    PQclear(res);
    return STORE_OK;
}

static enum store_status pg_route_update(void *arg, const struct store_route *r,
                                         const char *actions_json, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    int64_t changed = 0;
    enum store_status st;

    p_text(&p, r->id);
    p_int(&p, r->priority);
    p_text(&p, nz(r->description, ""));
    p_text(&p, nz(r->expression, ""));
    p_text(&p, actions_json);
    st = pg_cmd(be->w,
                "UPDATE routes SET priority = $2, description = $3, expression = $4, actions = $5"
                " WHERE id = $1",
                &p, &changed, err, "cannot update a route");
    return st != STORE_OK ? st : changed ? STORE_OK : STORE_ERR_NOT_FOUND;
}

static enum store_status pg_route_delete(void *arg, const char *id, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    int64_t changed = 0;
    enum store_status st;

    p_text(&p, id);
    st = pg_cmd(be->w, "DELETE FROM routes WHERE id = $1", &p, &changed, err,
                "cannot delete a route");
    return st != STORE_OK ? st : changed ? STORE_OK : STORE_ERR_NOT_FOUND;
}

/* ---- routing outcomes (job) ----------------------------------------------------------------- */

/* The lower-case domain of a recipient, as the events keep it: done by the server (lower()). */
#define PG_DOMAIN_OF(n) "lower(substring(" n " from '@([^@]*)$'))"

static enum store_status outcome_recipient(struct pg_be *be, const struct store_outcome *o,
                                           const struct store_recipient_outcome *r, char **err)
{
    struct pg_params p = {0};
    enum store_status st;

    p_text(&p, o->message_id);
    p_text(&p, r->recipient);
    p_text(&p, r->outcome);
    p_text(&p, nz(r->routes_json, "[]"));
    p_text(&p, nz(r->warnings_json, "[]"));
    st = pg_cmd(be->w,
                "INSERT INTO recipients (message_id, recipient, outcome, routes, warnings)"
                " VALUES ($1, $2, $3, $4, $5)",
                &p, NULL, err, "recipient row");
    if (st != STORE_OK) return st;
    p = (struct pg_params){0};
    p_int(&p, o->now_ms ? o->now_ms : o->now * 1000);
    p_text(&p, o->message_id);
    p_text(&p, r->recipient);
    p_text(&p, nz(r->outcome, ""));
    p_text(&p, r->route_ids_json ? r->route_ids_json : nz(r->routes_json, "[]"));
    p_text(&p, o->message_json); /* the events' "message" (NULL: none) */
    /* The route ids: given as JSON by the caller, or the "id" of each element of routes JSON.
     * Details are written as compact JSON, key for key as the SQLite backend writes them. */
    return pg_cmd(be->w,
                  r->route_ids_json
                      ? "INSERT INTO events (ts, event, message_id, recipient, domain, detail)"
                        " VALUES ($1, 'accepted', $2, $3, coalesce(" PG_DOMAIN_OF("$3") ", ''),"
                        " '{\"outcome\":' || to_json($4::text)::text || ',\"route_ids\":' || $5"
                        " || coalesce(',\"message\":' || $6::text, '') || '}')"
                      : "INSERT INTO events (ts, event, message_id, recipient, domain, detail)"
                        " VALUES ($1, 'accepted', $2, $3, coalesce(" PG_DOMAIN_OF("$3") ", ''),"
                        " '{\"outcome\":' || to_json($4::text)::text || ',\"route_ids\":' ||"
                        " inlet_route_ids($5) || coalesce(',\"message\":' || $6::text, '') || '}')",
                  &p, NULL, err, "accepted event");
}

static enum store_status outcome_delivery(struct pg_be *be, const char *message_id,
                                          const struct store_delivery_plan *d, int64_t now,
                                          char **err)
{
    struct pg_params p = {0};

    p_text(&p, d->id);
    p_text(&p, message_id);
    p_text(&p, d->recipient);
    p_text(&p, nz(d->route_ids_json, "[]"));
    p_text(&p, d->kind);
    p_text(&p, d->target);
    p_text(&p, nz(d->format, ""));
    p_int(&p, now);
    p_text(&p, nz(d->copy_key, ""));
    p_text(&p, be->node);
    p_int(&p, be->lease_ms);
    /* Claimed by the node that routed the message: it has the payloads built and delivers them
     * at once; the others take them only if its lease runs out. */
    return pg_cmd(be->w,
                  "INSERT INTO deliveries (id, message_id, recipient, route_ids, kind, target,"
                  " format, state, attempts, next_attempt_at, created_at, updated_at, copy_key,"
                  " claimed_by, lease_until)"
                  " VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $8, $9, $10, "
                  PG_SERVER_NOW " + $11)",
                  &p, NULL, err, "delivery row");
}

static enum store_status outcome_copy(struct pg_be *be, const struct store_outcome *o,
                                      const struct store_copy_plan *c, char **err)
{
    struct pg_params p = {0};
    enum store_status st;

    p_text(&p, c->key);
    p_text(&p, o->message_id);
    p_text(&p, c->recipient);
    p_text(&p, c->domain);
    p_text(&p, nz(c->route_id, ""));
    p_text(&p, c->notify);
    p_text(&p, nz(c->format, ""));
    p_int(&p, c->expires_at);
    p_int(&p, o->now);
    p_text(&p, c->mailbox);
    p_int(&p, c->mailbox_retention);
    /* $11 = 1: a mailbox copy that takes its mailbox's retention, if set. */
    st = pg_cmd(be->w,
                "INSERT INTO stored (key, message_id, recipient, domain, route_id, notify, format,"
                " expires_at, created_at, mailbox) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                " coalesce((SELECT $9::bigint + retention FROM mailboxes WHERE name = $10::text"
                " AND $11::int = 1), $8), $9, $10)",
                &p, NULL, err, "stored copy row");
    if (st != STORE_OK) return st;
    p = (struct pg_params){0};
    p_int(&p, o->now_ms ? o->now_ms : o->now * 1000);
    p_text(&p, o->message_id);
    p_text(&p, c->recipient);
    p_text(&p, c->key);
    p_text(&p, nz(c->route_id, ""));
    p_text(&p, o->message_json);
    p_text(&p, c->mailbox);
    return pg_cmd(be->w,
                  "INSERT INTO events (ts, event, message_id, recipient, domain, detail)"
                  " VALUES ($1, 'stored', $2, $3, coalesce(" PG_DOMAIN_OF("$3") ", ''),"
                  " '{\"key\":' || to_json($4::text)::text || ',\"route_id\":' ||"
                  " to_json($5::text)::text || ',\"expires_at\":' ||"
                  " (SELECT expires_at FROM stored WHERE key = $4::text) ||"
                  " coalesce(',\"mailbox\":' || to_json($7::text)::text, '') ||"
                  " coalesce(',\"message\":' || $6::text, '') || '}')",
                  &p, NULL, err, "stored event");
}

static enum store_status pg_write_outcome(void *arg, const struct store_outcome *o, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    int64_t changed = 0;
    enum store_status st;
    char *e = NULL;

    p_text(&p, o->message_id);
    p_text(&p, nz(o->parse_warnings_json, "[]"));
    p_text(&p, o->ncopies == 0 && o->ndeliveries == 0 ? "true" : "false");
    /* First the state: only an 'accepted' message gets an outcome, once.  A message that nothing
     * keeps (no copy, no delivery) is noted for the sweeper in the same round trip (migration
     * 11; a copy or a delivery notes it when it goes, by trigger). */
    st = pg_cmd(be->w,
                "WITH u AS (UPDATE messages SET state = 'routed', parse_warnings = $2"
                "   WHERE id = $1 AND state = 'accepted' RETURNING id),"
                " n AS (INSERT INTO purge_candidates (message_id) SELECT id FROM u WHERE $3::boolean"
                "   ON CONFLICT DO NOTHING)"
                " SELECT id FROM u",
                &p, &changed, &e, "message state");
    if (st == STORE_OK && !changed) return STORE_ERR_NOT_FOUND;
    for (size_t i = 0; st == STORE_OK && i < o->nrecipients; i++)
        st = outcome_recipient(be, o, &o->recipients[i], &e);
    for (size_t i = 0; st == STORE_OK && i < o->ndeliveries; i++)
        st = outcome_delivery(be, o->message_id, &o->deliveries[i], o->now, &e);
    for (size_t i = 0; st == STORE_OK && i < o->ncopies; i++)
        st = outcome_copy(be, o, &o->copies[i], &e);
    if (st == STORE_OK && o->authentication_json) {
        p = (struct pg_params){0};
        p_text(&p, o->message_id);
        p_text(&p, o->authentication_json);
        st = pg_cmd(be->w,
                    "INSERT INTO message_auth (message_id, authentication) VALUES ($1, $2)"
                    " ON CONFLICT (message_id) DO NOTHING",
                    &p, NULL, &e, "verdicts");
    }
    if (st != STORE_OK)
        store_set_err(err, "cannot write the outcome of message %s: %s", o->message_id,
                      e ? e : "out of memory");
    free(e);
    return st;
}

/* ---- deliveries, attempts, copies (jobs) ---------------------------------------------------- */

/* What an attempt's outcome means for its delivery and its event. */
struct attempt_effect {
    const char *state, *event, *severity;
    bool retry;
};

static int attempt_effect_of(const char *outcome, struct attempt_effect *e)
{
    if (outcome && strcmp(outcome, "delivered") == 0)
        *e = (struct attempt_effect){"delivered", "delivered", "", false};
    else if (outcome && strcmp(outcome, "retry") == 0)
        *e = (struct attempt_effect){"pending", "failed", "temporary", true};
    else if (outcome && strcmp(outcome, "failed") == 0)
        *e = (struct attempt_effect){"failed", "failed", "permanent", false};
    else
        return -1;
    return 0;
}

static void p_status(struct pg_params *p, int status)
{
    if (status) p_int(p, status);
    else p_text(p, NULL);
}

/* The attempts row, the delivery's new state and the event, in one statement: the delivery row
 * ($1, locked, still pending and claimed by this node, $12) gives n = attempts + 1 and the
 * event's fields.  The claim ends with the attempt: a retry is anyone's when it is due. */
static const char attempt_sql[] =
    "WITH d AS (SELECT id, message_id, recipient, route_ids, kind, target, attempts + 1 AS n"
    "   FROM deliveries WHERE id = $1 AND state = 'pending' AND claimed_by = $12 FOR UPDATE),"
    " a AS (INSERT INTO attempts (delivery_id, n, started_at, duration_ms, status, error, outcome)"
    "   SELECT id, n, $2::bigint, $3::bigint, $4::integer, $5::text, $6::text FROM d),"
    " u AS (UPDATE deliveries SET attempts = d.n, state = $7::text, last_status = $4::integer,"
    "   last_error = $5::text, updated_at = $8::bigint,"
    "   next_attempt_at = coalesce($9::bigint, deliveries.next_attempt_at),"
    "   claimed_by = NULL, lease_until = NULL FROM d WHERE deliveries.id = d.id),"
    " e AS (INSERT INTO events (ts, event, severity, message_id, recipient, domain, delivery_id,"
    "   detail) SELECT $2::bigint + $3::bigint, $10::text, $11::text, d.message_id, d.recipient,"
    "   coalesce(" PG_DOMAIN_OF("d.recipient") ", ''), d.id, '{\"attempt\":' || d.n ||"
    "   ',\"status\":' || coalesce($4::integer::text, 'null') || ',\"error\":' ||"
    "   to_json($5::text)::text || ',\"kind\":' || to_json(d.kind)::text || ',\"target\":' ||"
    "   to_json(d.target)::text || ',\"duration_ms\":' || $3::bigint || ',\"route_ids\":' ||"
    "   inlet_json_array(d.route_ids) || coalesce(',\"next_attempt_at\":' || $9::bigint, '')"
    "   || coalesce(',\"message\":' || (SELECT (ev.detail::jsonb -> 'message')::text"
    "   FROM events ev WHERE ev.message_id = d.message_id AND ev.event = 'accepted'"
    "   ORDER BY ev.id LIMIT 1), '') || '}' FROM d)"
    " SELECT count(*) FROM d";

/* An attempt refused: says so when the reason is another node's claim (the lease ran out and
 * it took the delivery), for the operator; a delivery gone or finished is not worth a line. */
static void log_lease_lost(struct pg_be *be, const char *id)
{
    struct pg_params p = {0};
    PGresult *r;
    char *holder = NULL;

    p_text(&p, id);
    if (pg_rows(be->w, "SELECT coalesce(claimed_by, '') FROM deliveries"
                       " WHERE id = $1 AND state = 'pending'",
                &p, &r, NULL, "claim holder") != STORE_OK)
        return;
    if (PQntuples(r) == 1) holder = col_dup(r, 0, 0);
    PQclear(r);
    if (holder)
        log_warn("storage", "attempt not recorded id=%s reason=\"lease lost\" node=%s holder=%s",
                 id, be->node, *holder ? holder : "-");
    free(holder);
}

static enum store_status pg_record_attempt(void *arg, const struct store_attempt *a, char **err)
{
    struct pg_be *be = arg;
    struct attempt_effect e;
    struct pg_params p = {0};
    const int64_t end_ms = a->started_at_ms + a->duration_ms;
    PGresult *r;
    enum store_status st;
    int64_t found;

    if (attempt_effect_of(a->outcome, &e) < 0) {
        store_set_err(err, "attempt of delivery %s: unknown outcome \"%s\"", a->delivery_id,
                      nz(a->outcome, "(null)"));
        return STORE_ERR_IO;
    }
    p_text(&p, a->delivery_id);
    p_int(&p, a->started_at_ms);
    p_int(&p, a->duration_ms);
    p_status(&p, a->status);
    p_text(&p, nz(a->error, ""));
    p_text(&p, a->outcome);
    p_text(&p, e.state);
    p_int(&p, end_ms / 1000 - (end_ms % 1000 < 0)); /* floor: the second it ended in */
    if (e.retry) p_int(&p, a->next_attempt_at);
    else p_text(&p, NULL);
    p_text(&p, e.event);
    p_text(&p, e.severity);
    p_text(&p, be->node);
    st = pg_rows(be->w, attempt_sql, &p, &r, err, "cannot record an attempt");
    if (st != STORE_OK) return st;
    found = col_int(r, 0, 0);
    PQclear(r);
    if (!found) log_lease_lost(be, a->delivery_id);
    return found ? STORE_OK : STORE_ERR_NOT_FOUND;
}

static enum store_status pg_delivery_retry(void *arg, const char *id, int64_t now, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    int64_t changed = 0;
    enum store_status st;

    p_text(&p, id);
    p_int(&p, now);
    st = pg_cmd(be->w,
                "UPDATE deliveries SET state = 'pending', next_attempt_at = $2, lease_until = NULL"
                " WHERE id = $1 AND state = 'failed'"
                " AND EXISTS (SELECT 1 FROM messages WHERE messages.id = deliveries.message_id)",
                &p, &changed, err, "cannot retry a delivery");
    return st != STORE_OK ? st : changed ? STORE_OK : STORE_ERR_NOT_FOUND;
}

static enum store_status pg_deliveries_add(void *arg, const char *message_id,
                                           const struct store_delivery_plan *plans, size_t n,
                                           int64_t now, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;
    bool exists;

    p_text(&p, message_id);
    st = pg_rows(be->w, "SELECT 1 FROM messages WHERE id = $1", &p, &r, err,
                 "cannot look the message up");
    if (st != STORE_OK) return st;
    exists = PQntuples(r) > 0;
    PQclear(r);
    if (!exists) return STORE_ERR_NOT_FOUND;
    for (size_t i = 0; st == STORE_OK && i < n; i++)
        st = outcome_delivery(be, message_id, &plans[i], now, err);
    return st;
}

/* A copy past its expires_at stays while a delivery that refers to it can still be attempted or
 * replayed (as in sqlite_queue.c, issue 14 item 10). */
#define PG_COPY_HELD(key)                                                                          \
    "EXISTS (SELECT 1 FROM deliveries d WHERE d.copy_key = " key " AND d.copy_key <> ''"          \
    " AND d.state IN ('pending', 'failed'))"

static enum store_status pg_copy_delete(void *arg, const char *key, int64_t now, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    int64_t changed = 0;
    enum store_status st;

    p_text(&p, key);
    p_int(&p, now);
    st = pg_cmd(be->w,
                "DELETE FROM stored WHERE key = $1 AND (expires_at > $2 OR "
                PG_COPY_HELD("stored.key") ")",
                &p, &changed, err, "cannot delete a stored copy");
    return st != STORE_OK ? st : changed ? STORE_OK : STORE_ERR_NOT_FOUND;
}

/* ---- retention (job) ------------------------------------------------------------------------ */

/* Runs one bounded DELETE of the sweep; *deleted its rows. */
static enum store_status sweep_step(struct pg_be *be, const char *sql, const int64_t *v, int nv,
                                    const char *state, uint64_t *deleted, char **err,
                                    const char *what)
{
    struct pg_params p = {0};
    int64_t n = 0;
    enum store_status st;

    if (state) p_text(&p, state);
    for (int i = 0; i < nv; i++) p_int(&p, v[i]);
    st = pg_cmd(be->w, sql, &p, &n, err, what);
    if (st == STORE_OK && deleted) *deleted = (uint64_t)n;
    return st;
}

/* The noted messages (at most $2) that nothing needs any more go, with their recipients rows; the
 * notes go either way.  One statement: one snapshot. */
static const char purge_sql[] =
    "WITH c AS (DELETE FROM purge_candidates WHERE message_id IN"
    "   (SELECT message_id FROM purge_candidates LIMIT $2) RETURNING message_id),"
    " gone AS (DELETE FROM messages m USING c WHERE m.id = c.message_id AND m.state <> 'accepted'"
    "   AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = m.id"
    "     AND state IN ('pending', 'failed'))"
    "   AND NOT EXISTS (SELECT 1 FROM stored WHERE message_id = m.id"
    "     AND (expires_at > $1 OR mailbox IS NOT NULL))"
    "   RETURNING m.id),"
    " r AS (DELETE FROM recipients WHERE message_id IN (SELECT id FROM gone))"
    " SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM gone)";

static enum store_status pg_sweep(void *arg, const struct store_sweep_args *a,
                                  struct store_sweep_result *out, char **err)
{
    struct pg_be *be = arg;
    const int64_t lim = a->batch > (size_t)INT64_MAX ? INT64_MAX : (int64_t)a->batch;
    const int64_t now = a->now;
    struct pg_params p = {0};
    uint64_t failed = 0, ignored = 0;
    PGresult *r;
    enum store_status st;

    *out = (struct store_sweep_result){0};
    /* One node sweeps at a time: the lock is the batch transaction's, released by its COMMIT. */
    st = pg_rows(be->w, "SELECT pg_try_advisory_xact_lock(" STORE_PG_SWEEP_LOCK ")", NULL, &r, err,
                 "sweep lock");
    if (st != STORE_OK) return st;
    out->skipped = !col_true(r, 0, 0);
    PQclear(r);
    if (out->skipped) return STORE_OK;
    st = sweep_step(be,
                    "DELETE FROM stored WHERE key IN (SELECT key FROM stored WHERE expires_at <= $1"
                    " AND NOT " PG_COPY_HELD("stored.key") " AND NOT EXISTS (SELECT 1 FROM"
                    " mailboxes WHERE name = stored.mailbox AND locked_until > " PG_SERVER_NOW_S ")"
                    " ORDER BY expires_at LIMIT $2)",
                    (const int64_t[]){now, lim}, 2, NULL, &out->copies, err,
                    "sweep failed: stored copies");
    if (st == STORE_OK)
        st = sweep_step(be,
                        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < $1"
                        " ORDER BY ts LIMIT $2)",
                        (const int64_t[]){(now - a->event_ttl) * 1000, lim}, 2, NULL,
                        &out->events, err, "sweep failed: events");
    if (st == STORE_OK) { /* a message's verdicts, once it and all of its events are gone */
        char cutoff[16];

        snprintf(cutoff, sizeof cutoff, "%08" PRIx32,
                 (uint32_t)(now > a->event_ttl ? now - a->event_ttl : 0));
        st = sweep_step(be,
                        "DELETE FROM message_auth WHERE message_id IN (SELECT message_id FROM"
                        " message_auth a WHERE message_id < $1"
                        " AND NOT EXISTS (SELECT 1 FROM events WHERE events.message_id = a.message_id)"
                        " AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.id = a.message_id)"
                        " ORDER BY message_id LIMIT $2)",
                        (const int64_t[]){lim}, 1, cutoff, NULL, err, "sweep failed: verdicts");
    }
    for (int k = 0; k < 2 && st == STORE_OK; k++) {
        const char *state = k == 0 ? "delivered" : "failed";
        const int64_t v[] = {now - (k == 0 ? a->event_ttl : a->failed_retention), lim};

        st = sweep_step(be,
                        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries"
                        " WHERE state = $1 AND updated_at < $2 ORDER BY updated_at, id LIMIT $3)",
                        v, 2, state, &ignored, err, "sweep failed: attempts");
        if (st == STORE_OK)
            st = sweep_step(be,
                            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                            " WHERE state = $1 AND updated_at < $2 ORDER BY updated_at, id"
                            " LIMIT $3)",
                            v, 2, state, k == 0 ? &out->deliveries : &failed, err,
                            "sweep failed: deliveries");
    }
    if (st != STORE_OK) return st;
    out->more = out->copies >= (uint64_t)lim || out->events >= (uint64_t)lim ||
                out->deliveries >= (uint64_t)lim || failed >= (uint64_t)lim;
    out->deliveries += failed;
    p_int(&p, now);
    p_int(&p, lim);
    st = pg_rows(be->w, purge_sql, &p, &r, err, "sweep failed: messages");
    if (st != STORE_OK) return st;
    if (col_int(r, 0, 0) >= lim) out->more = true; /* notes may be left */
    out->messages = (uint64_t)col_int(r, 0, 1);
    PQclear(r);
    return STORE_OK; /* free pages: the server's autovacuum gives them back */
}

/* ---- reads ---------------------------------------------------------------------------------- */

static enum store_status pg_meta_get(void *arg, const char *key, char **value, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    *value = NULL;
    p_text(&p, key);
    st = pg_read(be, "SELECT value FROM meta WHERE key = $1", &p, &r, err, "cannot read meta");
    if (st != STORE_OK) return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return STORE_ERR_NOT_FOUND;
    }
    *value = col_dup(r, 0, 0);
    PQclear(r);
    if (*value) return STORE_OK;
    store_set_err(err, "cannot read meta: out of memory");
    return STORE_ERR_NOMEM;
}

static enum store_status pg_count_unprocessed(void *arg, int64_t *count, char **err)
{
    struct pg_be *be = arg;
    PGresult *r;
    enum store_status st = pg_read(be, "SELECT count(*) FROM messages WHERE state = 'accepted'",
                                   NULL, &r, err, "cannot count unprocessed messages");

    if (st != STORE_OK) return st;
    *count = col_int(r, 0, 0);
    PQclear(r);
    return STORE_OK;
}

static enum store_status pg_routes_load(void *arg, struct store_route **out, size_t *n, char **err)
{
    struct pg_be *be = arg;
    struct store_route *v;
    PGresult *r;
    enum store_status st = pg_read(be,
                                   "SELECT id, priority, seq, description, expression, actions,"
                                   " created_at FROM routes ORDER BY priority, seq",
                                   NULL, &r, err, "cannot read the routes");
    int rows;

    if (st != STORE_OK) return st;
    rows = PQntuples(r);
    v = calloc(rows ? (size_t)rows : 1, sizeof *v);
    if (!v) st = STORE_ERR_NOMEM;
    for (int i = 0; st == STORE_OK && i < rows; i++) {
        struct store_route *rt = &v[i];

        col_copy(rt->id, sizeof rt->id, r, i, 0);
        rt->priority = (int32_t)col_int(r, i, 1);
        rt->seq = col_int(r, i, 2);
        rt->description = col_dup(r, i, 3);
        rt->expression = col_dup(r, i, 4);
        rt->created_at = col_int(r, i, 6);
        st = !rt->description || !rt->expression
                 ? STORE_ERR_NOMEM
                 : store_json_parse_string_array(PQgetvalue(r, i, 5), &rt->actions, &rt->nactions);
        if (st == STORE_ERR_IO)
            store_set_err(err, "route %s: actions are not a JSON array of strings", rt->id);
    }
    PQclear(r);
    if (st == STORE_ERR_NOMEM) store_set_err(err, "cannot read the routes: out of memory");
    if (st != STORE_OK) {
        store_routes_free(v, v ? (size_t)rows : 0);
        return st;
    }
    *out = v;
    *n = (size_t)rows;
    return STORE_OK;
}

static enum store_status id_rows(PGresult *r, char ***ids, size_t *n, char **err, const char *what);

static enum store_status pg_list_unprocessed(void *arg, char ***ids, size_t *n, size_t max,
                                             char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    p_int(&p, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
    st = pg_read(be,
                 "SELECT id FROM messages WHERE state = 'accepted' ORDER BY received_at, id LIMIT $1",
                 &p, &r, err, "cannot list unprocessed messages");
    return st != STORE_OK ? st : id_rows(r, ids, n, err, "cannot list unprocessed messages");
}

/* The first column of every row of r (cleared) into *ids (malloc'd strings; NULL when none). */
static enum store_status id_rows(PGresult *r, char ***ids, size_t *n, char **err, const char *what)
{
    int rows = PQntuples(r);
    char **v;

    v = calloc(rows ? (size_t)rows : 1, sizeof *v);
    for (int i = 0; v && i < rows; i++) {
        if (!(v[i] = col_dup(r, i, 0))) {
            for (int k = 0; k < i; k++) free(v[k]);
            free(v);
            v = NULL;
        }
    }
    PQclear(r);
    if (!v) {
        store_set_err(err, "%s: out of memory", what);
        return STORE_ERR_NOMEM;
    }
    if (rows == 0) {
        free(v);
        v = NULL;
    }
    *ids = v;
    *n = (size_t)rows;
    return STORE_OK;
}

/* The message columns of row 0 from column `first` on (received_at, sender, recipients,
 * remote_ip, helo, tls, raw) into *m (m->id set by the caller). */
static enum store_status read_message(const PGresult *r, int first, struct store_message *m,
                                      char **err)
{
    struct store_message_cols c = {
        .received_at_ms = col_int(r, 0, first),
        .sender = PQgetvalue(r, 0, first + 1),
        .rcpts_json = PQgetvalue(r, 0, first + 2),
        .remote_ip = PQgetvalue(r, 0, first + 3),
        .helo = PQgetvalue(r, 0, first + 4),
        .tls = PQgetvalue(r, 0, first + 5),
    };
    uint8_t *raw = NULL;
    enum store_status st = col_bytes(r, 0, first + 6, &raw, &c.len);

    if (st != STORE_OK) {
        store_set_err(err, "cannot load message %s: %s", m->id,
                      st == STORE_ERR_NOMEM ? "out of memory" : "its bytes are not hex");
        return st;
    }
    c.raw = raw;
    st = store_message_fill(m, &c, err);
    free(raw);
    return st;
}

#define PG_MESSAGE_COLS "received_at, sender, recipients, remote_ip, helo, tls, raw"

static enum store_status pg_load_message(void *arg, const char *id, struct store_message **out,
                                         char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    struct store_message *m;
    PGresult *r;
    enum store_status st;

    p_text(&p, id);
    st = pg_read(be, "SELECT " PG_MESSAGE_COLS " FROM messages WHERE id = $1", &p, &r, err,
                 "cannot load a message");
    if (st != STORE_OK) return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return STORE_ERR_NOT_FOUND;
    }
    if (!(m = calloc(1, sizeof *m))) {
        PQclear(r);
        store_set_err(err, "cannot load message %s: out of memory", id);
        return STORE_ERR_NOMEM;
    }
    snprintf(m->id, sizeof m->id, "%s", id);
    st = read_message(r, 0, m, err);
    PQclear(r);
    if (st != STORE_OK) {
        store_free_message(m);
        return st;
    }
    *out = m;
    return STORE_OK;
}

static enum store_status pg_check_writable(void *arg, char **reason)
{
    struct pg_be *be = arg;
    PGresult *r;
    char *err = NULL;
    enum store_status st = pg_read(be, "SELECT pg_is_in_recovery()", NULL, &r, &err,
                                   "database is not writable");

    if (st != STORE_OK) {
        store_set_err(reason, "%s", err ? err : "database is not writable");
        free(err);
        return st;
    }
    if (col_true(r, 0, 0)) {
        store_set_err(reason, "database is not writable: the server is a standby");
        st = STORE_ERR_IO;
    }
    PQclear(r);
    return st;
}

/* ---- route changes of other nodes (postgres_listen.c) ---------------------------------------- */

/* The fallback poll's read (store_pg_version_fn). */
static enum store_status pg_routes_version(void *arg, int64_t *version, char **err)
{
    struct pg_be *be = arg;
    PGresult *r;
    enum store_status st = pg_read(be, "SELECT version FROM routes_version WHERE id = 1", NULL, &r,
                                   err, "cannot read the routes version");

    if (st != STORE_OK) return st;
    if (PQntuples(r) != 1) {
        PQclear(r);
        store_set_err(err, "routes_version holds no row");
        return STORE_ERR_IO;
    }
    *version = col_int(r, 0, 0);
    PQclear(r);
    return STORE_OK;
}

static enum store_status pg_watch_routes(void *arg, store_routes_changed_fn changed, void *carg,
                                         char **err)
{
    struct pg_be *be = arg;

    if (be->listen) {
        store_set_err(err, "the routes are watched already");
        return STORE_ERR_IO;
    }
    be->listen = store_pg_listen_start(be->uri, pg_routes_version, be, changed, carg, err);
    return be->listen ? STORE_OK : STORE_ERR_IO;
}

#define PG_DELIVERY_COLS                                                                           \
    "id, message_id, recipient, kind, target, format, route_ids, state, attempts,"                \
    " next_attempt_at, created_at, updated_at, last_status, last_error, copy_key"

/* Every row of a delivery query into *out (malloc'd, store_deliveries_free) and *n. */
static enum store_status delivery_rows(PGresult *r, struct store_delivery **out, size_t *n,
                                       char **err)
{
    int rows = PQntuples(r);
    struct store_delivery *v = rows ? calloc((size_t)rows, sizeof *v) : NULL;
    bool ok = !rows || v;

    for (int i = 0; ok && i < rows; i++) {
        struct store_delivery *d = &v[i];

        col_copy(d->id, sizeof d->id, r, i, 0);
        col_copy(d->message_id, sizeof d->message_id, r, i, 1);
        d->recipient = col_dup(r, i, 2);
        d->kind = col_dup(r, i, 3);
        d->target = col_dup(r, i, 4);
        d->format = col_dup(r, i, 5);
        d->route_ids_json = col_dup(r, i, 6);
        d->state = col_dup(r, i, 7);
        d->attempts = col_int(r, i, 8);
        d->next_attempt_at = col_int(r, i, 9);
        d->created_at = col_int(r, i, 10);
        d->updated_at = col_int(r, i, 11);
        d->last_status = (int)col_int(r, i, 12);
        d->last_error = col_dup(r, i, 13);
        d->copy_key = col_dup(r, i, 14);
        ok = d->recipient && d->kind && d->target && d->format && d->route_ids_json && d->state &&
             d->last_error && d->copy_key;
    }
    PQclear(r);
    if (!ok) {
        store_deliveries_free(v, (size_t)rows);
        store_set_err(err, "cannot read deliveries: out of memory");
        return STORE_ERR_NOMEM;
    }
    *out = v;
    *n = (size_t)rows;
    return STORE_OK;
}

/* $1..$4 of the due scan and the claim: now, the cursor (next_attempt_at, id) the last page
 * ended at (none: from the start), and the page size. */
static void p_due_scan(struct pg_params *p, int64_t now, int64_t after_at, const char *after_id,
                       size_t max)
{
    const bool cursor = after_id && *after_id;

    p_int(p, now);
    p_int(p, cursor ? after_at : INT64_MIN);
    p_text(p, cursor ? after_id : "");
    p_int(p, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
}

static enum store_status pg_deliveries_due(void *arg, int64_t now, int64_t after_at,
                                           const char *after_id, size_t max,
                                           struct store_delivery **out, size_t *n, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    p_due_scan(&p, now, after_at, after_id, max);
    st = pg_read(be,
                 "SELECT " PG_DELIVERY_COLS " FROM deliveries WHERE state = 'pending'"
                 " AND next_attempt_at <= $1 AND next_attempt_at >= $2"
                 " AND (next_attempt_at > $2 OR id > $3) ORDER BY next_attempt_at, id LIMIT $4",
                 &p, &r, err, "cannot read due deliveries");
    return st != STORE_OK ? st : delivery_rows(r, out, n, err);
}

static enum store_status pg_deliveries_next_due(void *arg, int64_t after, int64_t *at,
                                                char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    p_int(&p, after);
    st = pg_read(be,
                 "SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending'"
                 " AND next_attempt_at > $1",
                 &p, &r, err, "cannot read the next due delivery");
    if (st != STORE_OK) return st;
    st = PQgetisnull(r, 0, 0) ? STORE_ERR_NOT_FOUND : STORE_OK;
    if (st == STORE_OK) *at = col_int(r, 0, 0);
    PQclear(r);
    return st;
}

/* ---- claims on shared work (store.h) -------------------------------------------------------- */

static void pg_set_claims(void *arg, const char *node_id, int64_t lease_ms)
{
    struct pg_be *be = arg;

    snprintf(be->node, sizeof be->node, "%s", node_id);
    be->lease_ms = lease_ms;
}

/* A claim or renewal on the claim connection: one statement, its own transaction (autocommit),
 * so that the rows it locks are let go at once and never wait for a group commit. */
static enum store_status pg_claim_query(struct pg_be *be, const char *sql,
                                        const struct pg_params *p, PGresult **res, char **err,
                                        const char *what)
{
    enum store_status st;

    *res = NULL;
    pthread_mutex_lock(&be->cmu);
    st = pg_query_on(be, &be->c, sql, p, res, err, what);
    pthread_mutex_unlock(&be->cmu);
    return st;
}

/* Due rows under no live lease of another node, in the due scan's order and from its cursor
 * (this node's own: those it left to a scan, e.g. deferred for memory, are found again at once;
 * those in hand are skipped by the deliverer); rows that another node is claiming now are
 * skipped (SKIP LOCKED), never waited for.  The locking SELECT is a CTE, run once: as
 * "UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)" the planner may make it
 * the inner side of a semi join and run it again per outer row, locking more than n rows. */
static enum store_status pg_deliveries_claim(void *arg, int64_t now, int64_t after_at,
                                             const char *after_id, size_t max,
                                             struct store_delivery **out, size_t *n, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    p_due_scan(&p, now, after_at, after_id, max);
    p_text(&p, be->node);
    p_int(&p, be->lease_ms);
    st = pg_claim_query(be,
                        "WITH p AS (SELECT id AS pid FROM deliveries WHERE state = 'pending'"
                        " AND next_attempt_at <= $1 AND next_attempt_at >= $2"
                        " AND (next_attempt_at > $2 OR id > $3)"
                        " AND (lease_until IS NULL OR lease_until < " PG_SERVER_NOW
                        " OR claimed_by = $5)"
                        " ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED),"
                        " c AS (UPDATE deliveries SET claimed_by = $5,"
                        " lease_until = " PG_SERVER_NOW " + $6 FROM p WHERE id = p.pid"
                        " RETURNING " PG_DELIVERY_COLS ")"
                        " SELECT * FROM c ORDER BY next_attempt_at, id",
                        &p, &r, err, "cannot claim due deliveries");
    return st != STORE_OK ? st : delivery_rows(r, out, n, err);
}

/* {"a","b"}: a text[] literal of ids, '"' and '\\' escaped. */
static char *id_array(const char *const *ids, size_t n)
{
    size_t size = 3, used = 0;
    char *out;

    for (size_t i = 0; i < n; i++) size += 2 * strlen(ids[i]) + 3;
    if (!(out = malloc(size))) return NULL;
    out[used++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i) out[used++] = ',';
        out[used++] = '"';
        for (const char *c = ids[i]; *c; c++) {
            if (*c == '"' || *c == '\\') out[used++] = '\\';
            out[used++] = *c;
        }
        out[used++] = '"';
    }
    out[used++] = '}';
    out[used] = '\0';
    return out;
}

static enum store_status pg_deliveries_renew(void *arg, const char *const *ids, size_t n,
                                             bool *renewed, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    char *arr = id_array(ids, n);
    PGresult *r;
    enum store_status st;
    GHashTable *back;

    if (!arr) {
        store_set_err(err, "cannot renew leases: out of memory");
        return STORE_ERR_NOMEM;
    }
    p_text(&p, arr);
    p_text(&p, be->node);
    p_int(&p, be->lease_ms);
    st = pg_claim_query(be,
                        "UPDATE deliveries SET lease_until = " PG_SERVER_NOW " + $3"
                        " WHERE id = ANY($1::text[]) AND claimed_by = $2 AND state = 'pending'"
                        " RETURNING id",
                        &p, &r, err, "cannot renew leases");
    free(arr);
    if (st != STORE_OK) return st;
    back = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < PQntuples(r); i++) g_hash_table_add(back, PQgetvalue(r, i, 0));
    for (size_t i = 0; i < n; i++) renewed[i] = g_hash_table_contains(back, ids[i]);
    g_hash_table_destroy(back);
    PQclear(r);
    return STORE_OK;
}

static enum store_status pg_release_claims(void *arg, const char *node_id, struct store_released *out,
                                           char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    enum store_status st;

    p_text(&p, node_id);
    st = pg_cmd(be->w, "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL"
                       " WHERE claimed_by = $1 AND state = 'pending'",
                &p, &out->deliveries, err, "cannot release claims on deliveries");
    if (st == STORE_OK)
        st = pg_cmd(be->w, "UPDATE messages SET claimed_by = NULL, lease_until = NULL"
                           " WHERE claimed_by = $1 AND state = 'accepted'",
                    &p, &out->messages, err, "cannot release claims on messages");
    /* A session's lock owner is "<node id>/<64 random bits>" (engine/mailboxes.c). */
    if (st == STORE_OK)
        st = pg_cmd(be->w, "UPDATE mailboxes SET locked_until = 0, lock_owner = ''"
                           " WHERE starts_with(lock_owner, $1::text || '/')",
                    &p, &out->mailboxes, err, "cannot release maildrop locks");
    return st;
}

/* Accepted messages nobody holds (no claim, or its lease ran out), or this node holds already. */
static enum store_status pg_claim_unprocessed(void *arg, char ***ids, size_t *n, size_t max,
                                              char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    p_int(&p, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
    p_text(&p, be->node);
    p_int(&p, be->lease_ms);
    st = pg_claim_query(be,
                        "WITH p AS (SELECT id AS pid FROM messages WHERE state = 'accepted'"
                        " AND (lease_until IS NULL OR lease_until < " PG_SERVER_NOW
                        " OR claimed_by = $2)"
                        " ORDER BY received_at, id LIMIT $1 FOR UPDATE SKIP LOCKED),"
                        " c AS (UPDATE messages SET claimed_by = $2,"
                        " lease_until = " PG_SERVER_NOW " + $3 FROM p WHERE id = p.pid"
                        " RETURNING id, received_at)"
                        " SELECT id FROM c ORDER BY received_at, id",
                        &p, &r, err, "cannot claim unprocessed messages");
    return st != STORE_OK ? st : id_rows(r, ids, n, err, "cannot claim unprocessed messages");
}

static enum store_status pg_delivery_get(void *arg, const char *id, struct store_delivery **out,
                                         char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    size_t n = 0;
    enum store_status st;

    p_text(&p, id);
    st = pg_read(be, "SELECT " PG_DELIVERY_COLS " FROM deliveries WHERE id = $1", &p, &r, err,
                 "cannot read a delivery");
    if (st == STORE_OK) st = delivery_rows(r, out, &n, err);
    return st == STORE_OK && n == 0 ? STORE_ERR_NOT_FOUND : st;
}

static enum store_status pg_deliveries_list(void *arg, const char *state,
                                            int64_t before_updated_at, const char *before_id,
                                            size_t max, struct store_delivery **out, size_t *n,
                                            char **err)
{
    struct pg_be *be = arg;
    const bool cursor = before_id && *before_id;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    p_text(&p, state);
    p_int(&p, cursor ? before_updated_at : INT64_MAX);
    p_text(&p, cursor ? before_id : "");
    p_int(&p, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
    st = pg_read(be,
                 "SELECT " PG_DELIVERY_COLS " FROM deliveries WHERE ($1::text IS NULL OR state ="
                 " $1) AND updated_at <= $2 AND (updated_at < $2 OR id < $3)"
                 " ORDER BY updated_at DESC, id DESC LIMIT $4",
                 &p, &r, err, "cannot list deliveries");
    return st != STORE_OK ? st : delivery_rows(r, out, n, err);
}

static enum store_status read_copy(const PGresult *r, struct store_copy *c)
{
    col_copy(c->key, sizeof c->key, r, 0, 0);
    col_copy(c->message_id, sizeof c->message_id, r, 0, 1);
    c->recipient = col_dup(r, 0, 2);
    c->domain = col_dup(r, 0, 3);
    c->route_id = col_dup(r, 0, 4);
    c->notify = PQgetisnull(r, 0, 5) ? NULL : col_dup(r, 0, 5);
    c->format = col_dup(r, 0, 6);
    c->expires_at = col_int(r, 0, 7);
    c->created_at = col_int(r, 0, 8);
    return c->recipient && c->domain && c->route_id && c->format &&
                   (c->notify || PQgetisnull(r, 0, 5))
               ? STORE_OK
               : STORE_ERR_NOMEM;
}

static enum store_status pg_copy_get(void *arg, const char *key, int64_t now,
                                     struct store_copy **copy, struct store_message **msg,
                                     char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    struct store_copy *c = NULL;
    struct store_message *m = NULL;
    PGresult *r;
    enum store_status st;

    p_text(&p, key);
    p_int(&p, now);
    st = pg_read(be,
                 msg ? "SELECT s.key, s.message_id, s.recipient, s.domain, s.route_id, s.notify,"
                       " s.format, s.expires_at, s.created_at, m.id IS NOT NULL, m.received_at,"
                       " m.sender, m.recipients, m.remote_ip, m.helo, m.tls, m.raw"
                       " FROM stored s LEFT JOIN messages m ON m.id = s.message_id"
                       " WHERE s.key = $1 AND (s.expires_at > $2 OR " PG_COPY_HELD("s.key") ")"
                     : "SELECT s.key, s.message_id, s.recipient, s.domain, s.route_id, s.notify,"
                       " s.format, s.expires_at, s.created_at, EXISTS (SELECT 1 FROM messages m"
                       " WHERE m.id = s.message_id) FROM stored s"
                       " WHERE s.key = $1 AND (s.expires_at > $2 OR " PG_COPY_HELD("s.key") ")",
                 &p, &r, err, "cannot read a stored copy");
    if (st != STORE_OK) return st;
    if (PQntuples(r) == 0 || !col_true(r, 0, 9)) {
        PQclear(r);
        return STORE_ERR_NOT_FOUND; /* no such unexpired copy, or its message is gone */
    }
    c = calloc(1, sizeof *c);
    m = msg ? calloc(1, sizeof *m) : NULL;
    st = !c || (msg && !m) ? STORE_ERR_NOMEM : read_copy(r, c);
    if (st == STORE_ERR_NOMEM) store_set_err(err, "cannot read stored copy %s: out of memory", key);
    if (st == STORE_OK && m) {
        snprintf(m->id, sizeof m->id, "%s", c->message_id);
        st = read_message(r, 10, m, err);
    }
    PQclear(r);
    if (st != STORE_OK) {
        store_copy_free(c);
        store_free_message(m);
        return st;
    }
    *copy = c;
    if (msg) *msg = m;
    return STORE_OK;
}

/* The message's verdicts, one row per message (migration 10). */
#define PG_EVENT_AUTH "(SELECT authentication FROM message_auth a WHERE a.message_id = events.message_id)"

static enum store_status pg_events_query(void *arg, const struct store_event_query *q,
                                         struct store_event **out, size_t *n, char **err)
{
    struct pg_be *be = arg;
    int64_t lo = q->begin_ms ? q->begin_ms : INT64_MIN, hi = q->end_ms ? q->end_ms : INT64_MAX;
    int64_t cts = q->ascending ? INT64_MIN : INT64_MAX, cid = q->ascending ? 0 : INT64_MAX;
    struct pg_params p = {0};
    struct store_event *v;
    PGresult *r;
    enum store_status st;
    int rows;

    if (q->after_id) { /* the cursor narrows the time range on its side */
        cts = q->after_ts_ms;
        cid = q->after_id;
        if (q->ascending && cts > lo) lo = cts;
        if (!q->ascending && cts < hi) hi = cts;
    }
    p_text(&p, nz(q->domain, ""));
    p_int(&p, lo);
    p_int(&p, hi);
    p_text(&p, q->event);
    p_text(&p, q->message_id);
    p_text(&p, q->recipient);
    p_int(&p, cts);
    p_int(&p, cid);
    p_int(&p, q->limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)q->limit);
    st = pg_read(be,
                 q->ascending
                     ? "SELECT id, ts, event, severity, message_id, recipient, domain, delivery_id,"
                       " detail, " PG_EVENT_AUTH " FROM events WHERE domain = lower($1) AND ts >= $2 AND ts <= $3"
                       " AND ($4::text IS NULL OR event = $4) AND ($5::text IS NULL OR message_id"
                       " = $5) AND ($6::text IS NULL OR lower(recipient) = lower($6))"
                       " AND (ts > $7 OR id > $8) ORDER BY ts, id LIMIT $9"
                     : "SELECT id, ts, event, severity, message_id, recipient, domain, delivery_id,"
                       " detail, " PG_EVENT_AUTH " FROM events WHERE domain = lower($1) AND ts >= $2 AND ts <= $3"
                       " AND ($4::text IS NULL OR event = $4) AND ($5::text IS NULL OR message_id"
                       " = $5) AND ($6::text IS NULL OR lower(recipient) = lower($6))"
                       " AND (ts < $7 OR id < $8) ORDER BY ts DESC, id DESC LIMIT $9",
                 &p, &r, err, "cannot read events");
    if (st != STORE_OK) return st;
    rows = PQntuples(r);
    v = rows ? calloc((size_t)rows, sizeof *v) : NULL;
    st = rows && !v ? STORE_ERR_NOMEM : STORE_OK;
    for (int i = 0; st == STORE_OK && i < rows; i++) {
        struct store_event *e = &v[i];

        e->id = col_int(r, i, 0);
        e->ts_ms = col_int(r, i, 1);
        e->event = col_dup(r, i, 2);
        e->severity = col_dup(r, i, 3);
        col_copy(e->message_id, sizeof e->message_id, r, i, 4);
        e->recipient = col_dup(r, i, 5);
        e->domain = col_dup(r, i, 6);
        e->delivery_id = col_dup(r, i, 7);
        e->detail_json = col_dup(r, i, 8);
        e->authentication_json = col_dup(r, i, 9);
        if (!e->event || !e->severity || !e->recipient || !e->domain || !e->delivery_id ||
            !e->detail_json || !e->authentication_json)
            st = STORE_ERR_NOMEM;
    }
    PQclear(r);
    if (st != STORE_OK) {
        store_events_free(v, v ? (size_t)rows : 0);
        store_set_err(err, "cannot read events: out of memory");
        return st;
    }
    *out = v;
    *n = (size_t)rows;
    return STORE_OK;
}

static enum store_status pg_gauges(void *arg, int64_t now, struct store_gauges *out, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r;
    enum store_status st;

    *out = (struct store_gauges){0};
    p_int(&p, now);
    /* One statement, one snapshot: the numbers agree with each other. */
    st = pg_read(be,
                 "SELECT (SELECT count(*) FROM deliveries WHERE state = 'pending'),"
                 " (SELECT count(*) FROM deliveries WHERE state = 'pending'"
                 "  AND next_attempt_at <= $1),"
                 " (SELECT count(*) FROM deliveries WHERE state = 'failed'),"
                 " (SELECT coalesce(min(next_attempt_at), 0) FROM deliveries"
                 "  WHERE state = 'pending' AND next_attempt_at <= $1),"
                 " (SELECT count(*) FROM stored WHERE expires_at > $1),"
                 " (SELECT coalesce(sum(size), 0) FROM messages WHERE id IN"
                 "  (SELECT message_id FROM stored WHERE expires_at > $1)),"
                 " (SELECT coalesce(min(created_at), 0) FROM stored WHERE expires_at > $1),"
                 " (SELECT count(*) FROM messages),"
                 " pg_database_size(current_database())",
                 &p, &r, err, "cannot read the gauges");
    if (st != STORE_OK) return st;
    int64_t *f[] = {&out->deliveries_pending, &out->deliveries_due, &out->deliveries_failed,
                    &out->oldest_due_at, &out->stored_copies, &out->stored_bytes,
                    &out->stored_oldest_at, &out->messages, &out->database_bytes};
    for (int i = 0; i < (int)(sizeof f / sizeof f[0]); i++) *f[i] = col_int(r, 0, i);
    PQclear(r);
    return STORE_OK;
}

static enum store_status pg_backup(void *arg, const char *path, char **err)
{
    store_set_err(err, "inlet backup copies a SQLite database; back a PostgreSQL database up with"
                       " its own tools (pg_dump, or continuous archiving)");
    return STORE_ERR_IO;
}

/* ---- inlet migrate: the target side ---------------------------------------------------------- */

/* Table and column names are put into SQL: they come from store.c's fixed list and the source's
 * schema, and are checked. */
static bool name_ok(const char *t)
{
    return *t && strspn(t, "abcdefghijklmnopqrstuvwxyz_") == strlen(t);
}

/* "INSERT INTO t (c1, ...) OVERRIDING SYSTEM VALUE VALUES ($1, ...) ON CONFLICT DO NOTHING"
 * (malloc'd; NULL when out of memory or a name is not a plain one): a row whose key is there
 * already is kept, identity columns take the copied keys. */
static char *rows_insert_sql(const char *table, const struct store_rows *rows)
{
    size_t cap = 96 + strlen(table), n;
    char *sql;

    for (size_t i = 0; i < rows->ncols; i++) {
        if (!name_ok(rows->cols[i])) return NULL;
        cap += strlen(rows->cols[i]) + 16;
    }
    if (!(sql = malloc(cap))) return NULL;
    n = (size_t)snprintf(sql, cap, "INSERT INTO %s (", table);
    for (size_t i = 0; i < rows->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, "%s%s", i ? ", " : "", rows->cols[i]);
    n += (size_t)snprintf(sql + n, cap - n, ") OVERRIDING SYSTEM VALUE VALUES (");
    for (size_t i = 0; i < rows->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, "%s$%zu", i ? ", " : "", i + 1);
    snprintf(sql + n, cap - n, ") ON CONFLICT DO NOTHING");
    return sql;
}

/* One row's cells as parameters: integers printed into num (ncols * 24 bytes). */
static void row_params(const struct store_cell *row, size_t ncols, const char **v, int *len,
                       int *fmt, char *num)
{
    for (size_t i = 0; i < ncols; i++) {
        const struct store_cell *c = &row[i];

        len[i] = 0;
        fmt[i] = 0;
        v[i] = NULL;
        if (c->type == STORE_CELL_INT) {
            snprintf(num + 24 * i, 24, "%" PRId64, c->i);
            v[i] = num + 24 * i;
        } else if (c->type == STORE_CELL_TEXT) {
            v[i] = c->data;
        } else if (c->type == STORE_CELL_BLOB) {
            v[i] = c->len ? c->data : "";
            len[i] = (int)c->len;
            fmt[i] = 1;
        }
    }
}

static enum store_status pg_rows_insert(void *arg, const char *table,
                                        const struct store_rows *rows, char **err)
{
    struct pg_be *be = arg;
    const size_t nc = rows->ncols ? rows->ncols : 1;
    const char **v = calloc(nc, sizeof *v);
    int *len = calloc(nc, sizeof *len), *fmt = calloc(nc, sizeof *fmt);
    char *num = calloc(nc, 24), *sql = NULL;
    enum store_status st = STORE_OK;

    if (!name_ok(table)) {
        store_set_err(err, "no such table \"%s\"", table);
        st = STORE_ERR_IO;
        goto out;
    }
    if (rows->nrows == 0) goto out;
    if (!v || !len || !fmt || !num || !(sql = rows_insert_sql(table, rows))) {
        store_set_err(err, "writing %s: out of memory, or a column name that is not plain", table);
        st = STORE_ERR_NOMEM;
        goto out;
    }
    for (size_t r = 0; st == STORE_OK && r < rows->nrows; r++) {
        PGresult *res;

        row_params(rows->cells + r * rows->ncols, rows->ncols, v, len, fmt, num);
        res = PQexecParams(be->w, sql, (int)rows->ncols, NULL, v, len, fmt, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) st = pg_fail(be->w, res, err, "writing %s", table);
        else PQclear(res);
    }
    /* New routes and events get keys after the copied ones. */
    if (st == STORE_OK && (!strcmp(table, "routes") || !strcmp(table, "events"))) {
        char q[256];

        snprintf(q, sizeof q,
                 "SELECT setval(pg_get_serial_sequence('%s', '%s'), (SELECT coalesce(max(%s), 0)"
                 " + 1 FROM %s), false)",
                 table, !strcmp(table, "routes") ? "seq" : "id",
                 !strcmp(table, "routes") ? "seq" : "id", table);
        st = pg_cmd(be->w, q, NULL, NULL, err, "cannot move a key sequence on");
    }
out:
    free(sql);
    free(v);
    free(len);
    free(fmt);
    free(num);
    return st;
}

static enum store_status pg_holds_data(void *arg, bool *has, char **err)
{
    struct pg_be *be = arg;
    PGresult *r;
    enum store_status st = pg_read(be,
                                   "SELECT EXISTS (SELECT 1 FROM meta WHERE key <> 'schema_version')"
                                   " OR EXISTS (SELECT 1 FROM routes) OR EXISTS (SELECT 1 FROM"
                                   " messages) OR EXISTS (SELECT 1 FROM deliveries) OR EXISTS"
                                   " (SELECT 1 FROM stored) OR EXISTS (SELECT 1 FROM events)"
                                   " OR EXISTS (SELECT 1 FROM mailboxes)",
                                   NULL, &r, err, "cannot look at the database");

    *has = false;
    if (st != STORE_OK) return st;
    *has = col_true(r, 0, 0);
    PQclear(r);
    return STORE_OK;
}

/* ---- portable statements ---------------------------------------------------------------------- */

/* The parameters as text (the server infers their types from the statement). */
static enum store_status sql_params(const struct store_param *params, size_t n, struct pg_params *p,
                                    char **err)
{
    if (n > PG_MAX_PARAMS) {
        store_set_err(err, "a statement with %zu parameters (at most %d)", n, PG_MAX_PARAMS);
        return STORE_ERR_IO;
    }
    for (size_t i = 0; i < n; i++) {
        if (params[i].type == STORE_CELL_INT) p_int(p, params[i].i);
        else p_text(p, params[i].type == STORE_CELL_TEXT ? params[i].data : NULL);
    }
    return STORE_OK;
}

/* The rows of `r` as store_rows: integer and boolean columns as INT, the rest as TEXT. */
static enum store_status sql_result(const PGresult *r, struct store_rows **out)
{
    struct store_rows *rows = calloc(1, sizeof *rows);
    int nc = PQnfields(r), nr = PQntuples(r);

    if (!rows) return STORE_ERR_NOMEM;
    rows->ncols = (size_t)nc;
    rows->cols = calloc(nc ? (size_t)nc : 1, sizeof *rows->cols);
    rows->cells = calloc(nr && nc ? (size_t)nr * (size_t)nc : 1, sizeof *rows->cells);
    if (!rows->cols || !rows->cells) goto nomem;
    for (int c = 0; c < nc; c++)
        if (!(rows->cols[c] = strdup(PQfname(r, c)))) goto nomem;
    for (int i = 0; i < nr; i++, rows->nrows++) {
        for (int c = 0; c < nc; c++) {
            struct store_cell *cell = &rows->cells[(size_t)i * (size_t)nc + (size_t)c];
            Oid t = PQftype(r, c);

            if (PQgetisnull(r, i, c)) continue; /* calloc: STORE_CELL_NULL */
            if (t == 20 || t == 21 || t == 23 || t == 16) { /* int8, int2, int4, bool */
                cell->type = STORE_CELL_INT;
                cell->i = t == 16 ? col_true(r, i, c) : col_int(r, i, c);
                continue;
            }
            cell->type = STORE_CELL_TEXT;
            cell->len = (size_t)PQgetlength(r, i, c);
            if (!(cell->data = strdup(PQgetvalue(r, i, c)))) goto nomem;
        }
    }
    *out = rows;
    return STORE_OK;
nomem:
    store_rows_free(rows);
    return STORE_ERR_NOMEM;
}

static enum store_status pg_sql_read(void *arg, const char *sql, const struct store_param *params,
                                     size_t nparams, struct store_rows **out, char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    PGresult *r = NULL;
    enum store_status st = sql_params(params, nparams, &p, err);

    if (out) *out = NULL;
    if (st == STORE_OK) st = pg_read(be, sql, &p, &r, err, "query failed");
    if (st == STORE_OK && out && (st = sql_result(r, out)) != STORE_OK) store_set_err(err, "out of memory");
    PQclear(r);
    return st;
}

static enum store_status pg_sql_write(void *arg, const char *sql, const struct store_param *params,
                                      size_t nparams, int64_t *changed, struct store_rows **out,
                                      char **err)
{
    struct pg_be *be = arg;
    struct pg_params p = {0};
    enum store_status st = sql_params(params, nparams, &p, err);
    PGresult *r;

    if (out) *out = NULL;
    if (st != STORE_OK) return st;
    r = pg_exec(be->w, sql, &p);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        return pg_fail(be->w, r, err, "statement failed");
    if (changed) *changed = strtoll(PQcmdTuples(r), NULL, 10);
    if (out && (st = sql_result(r, out)) != STORE_OK) store_set_err(err, "out of memory");
    PQclear(r);
    return st;
}

static enum store_status pg_writer_query(void *arg, const char *sql, char *out, size_t outsz)
{
    struct pg_be *be = arg;
    PGresult *r;
    enum store_status st;

    if (out && outsz) out[0] = '\0';
    st = pg_ready(be, &be->w, NULL);
    if (st != STORE_OK) return st;
    r = PQexec(be->w, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        return pg_fail(be->w, r, NULL, "test query");
    if (out && outsz && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, outsz, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return STORE_OK;
}

const struct store_backend store_postgres_backend = {
    .kind = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .name = pg_name,
    .write_batch = pg_write_batch,
    .meta_set_if_absent = pg_meta_set_if_absent,
    .route_insert = pg_route_insert,
    .route_update = pg_route_update,
    .route_delete = pg_route_delete,
    .write_outcome = pg_write_outcome,
    .record_attempt = pg_record_attempt,
    .delivery_retry = pg_delivery_retry,
    .deliveries_add = pg_deliveries_add,
    .copy_delete = pg_copy_delete,
    .sweep = pg_sweep,
    .after_batch = NULL,
    .meta_get = pg_meta_get,
    .count_unprocessed = pg_count_unprocessed,
    .routes_load = pg_routes_load,
    .list_unprocessed = pg_list_unprocessed,
    .load_message = pg_load_message,
    .check_writable = pg_check_writable,
    .watch_routes = pg_watch_routes,
    .deliveries_due = pg_deliveries_due,
    .set_claims = pg_set_claims,
    .deliveries_claim = pg_deliveries_claim,
    .deliveries_renew = pg_deliveries_renew,
    .claim_unprocessed = pg_claim_unprocessed,
    .release_claims = pg_release_claims,
    .deliveries_next_due = pg_deliveries_next_due,
    .delivery_get = pg_delivery_get,
    .deliveries_list = pg_deliveries_list,
    .copy_get = pg_copy_get,
    .events_query = pg_events_query,
    .gauges = pg_gauges,
    .backup = pg_backup,
    .rows_read = NULL, /* a PostgreSQL database is a target of inlet migrate, not a source */
    .rows_insert = pg_rows_insert,
    .holds_data = pg_holds_data,
    .sql_read = pg_sql_read,
    .sql_write = pg_sql_write,
    .now_seconds_sql = PG_SERVER_NOW_S,
    .writer_query = pg_writer_query,
    .checkpoint_stats = NULL,
};
