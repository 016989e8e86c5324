/* storage/sqlite_queue.c — the SQLite backend's delivery queue, attempts, stored copies, events,
 * retention, gauges and backups (SPEC §5–§7; what each does: store.h; the table: internal.h).
 *
 * Every statement is prepared once at open (tables below, checked then).  Writes run inside a
 * job's savepoint on the write connection; reads take rmu, step, copy every value out, reset the
 * statement (which ends the read transaction) and let go of rmu.  Event detail
 * objects are built by SQLite's JSON functions, so escaping is SQLite's.
 *
 * Retention (store_sqlite_sweep) deletes in batches through the indexes of schema step 3: expired copies
 * (stored_expires), old events (events_ts), old delivered and failed deliveries with their
 * attempts (deliveries_state_updated), and the messages noted in purge_candidates by the schema's
 * triggers whenever something that kept them went away.  Then PRAGMA incremental_vacuum gives up
 * to SQ_SWEEP_VACUUM_PAGES free pages back to the file system.  It runs inside the sweep job's
 * savepoint (SQLite allows it in a transaction: the moved pages are written like any change, and
 * a rolled-back sweep takes them back too); the file shrinks when the checkpointer copies the
 * transaction into the database. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/internal_sqlite.h"
#include "util/log.h"

/* Free pages one sweeper pass gives back at most (16 MiB of 4 KiB pages): bounds the time the
 * pass holds the writer; `more` asks for another pass when pages are left. */
#define SQ_SWEEP_VACUUM_PAGES 4096
#define SQ_STR_(x) #x
#define SQ_STR(x) SQ_STR_(x)

#define DELIVERY_COLS                                                                              \
    "id, message_id, recipient, kind, target, format, route_ids, state, attempts,"                \
    " next_attempt_at, created_at, updated_at, last_status, last_error, copy_key"
/* The message's verdicts come from message_auth (one row per message, its primary key). */
#define EVENT_COLS                                                                                 \
    "id, ts, event, severity, message_id, recipient, domain, delivery_id, detail,"                 \
    " (SELECT authentication FROM message_auth a WHERE a.message_id = events.message_id)"
#define COPY_COLS                                                                                  \
    "s.key, s.message_id, s.recipient, s.domain, s.route_id, s.notify, s.format, s.expires_at,"   \
    " s.created_at, m.id IS NOT NULL"
/* A copy past its expires_at stays while a delivery that refers to it can still be attempted
 * (pending) or replayed (failed, until --failed-retention sweeps it): the attachment URLs and
 * the message-url in its payload must keep working (issue 14 item 10).  Uses the partial index
 * deliveries_copy_key (the literal copy_key <> '' lets the planner take it). */
#define COPY_HELD(key)                                                                             \
    "EXISTS (SELECT 1 FROM deliveries d WHERE d.copy_key = " key " AND d.copy_key <> ''"          \
    " AND d.state IN ('pending', 'failed'))"
/* The ids of the routes in a recipient's routes JSON (?6): the "id" of each element that has a
 * text one; [] when the JSON is not an array. */
#define ROUTE_IDS_OF_6                                                                             \
    "json((SELECT json_group_array(json_extract(j, fullkey || '.id')) FROM"                        \
    " (SELECT CASE WHEN json_valid(?6) THEN CASE json_type(?6) WHEN 'array' THEN ?6 ELSE '[]' END" \
    " ELSE '[]' END AS j), json_each(j) WHERE json_type(j, fullkey || '.id') = 'text'))"
/* Whether the mailbox of a copy is held by a POP3 session at `now` (its lock's lease). */
#define MAILBOX_HELD(mailbox, now)                                                                 \
    "EXISTS (SELECT 1 FROM mailboxes WHERE name = " mailbox " AND locked_until > " now ")"
#define INSERT_EVENT                                                                               \
    "INSERT INTO events (ts, event, severity, message_id, recipient, domain, delivery_id, detail) "

static const char *const wq_sql[WQ_COUNT] = {
    /* ?7: store_outcome.message_json.  json_patch with {"message": null} (the caller gave
     * none) adds nothing (RFC 7396). */
    [WQ_EV_ACCEPTED] = INSERT_EVENT "VALUES (?1, 'accepted', '', ?2, ?3, ?4, '',"
                                    " json_patch(json_object('outcome', ?5, 'route_ids', " ROUTE_IDS_OF_6 "),"
                                    " json_object('message', json(?7))))",
    /* The detail made here from JSON the caller made: no JSON parsing on the writer thread. */
    [WQ_EV_ACCEPTED_IDS] = INSERT_EVENT "VALUES (?1, 'accepted', '', ?2, ?3, ?4, '',"
                                        " '{\"outcome\":' || json_quote(?5) || ',\"route_ids\":' || ?6"
                                        " || coalesce(',\"message\":' || ?7, '') || '}')",
    /* expires_at as the copy row has it (a mailbox's retention may have set it); "mailbox"
     * only for a mailbox copy. */
    [WQ_EV_STORED] = INSERT_EVENT "VALUES (?1, 'stored', '', ?2, ?3, ?4, '',"
                                  " json_patch(json_patch(json_object('key', ?5, 'route_id', ?6,"
                                  " 'expires_at', (SELECT expires_at FROM stored WHERE key = ?5)),"
                                  " CASE WHEN ?9 IS NULL THEN '{}' ELSE json_object('mailbox', ?9) END),"
                                  " json_object('message', json(?8))))",
    /* "message" comes from the message's "accepted" event (events_message index). */
    [WQ_EV_ATTEMPT] =
        INSERT_EVENT "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, json_patch(json_patch(json_object("
                     "'attempt', ?8, 'status', ?9, 'error', ?10, 'kind', ?11, 'target', ?12,"
                     " 'duration_ms', ?13,"
                     " 'route_ids', CASE WHEN json_valid(?14) THEN json(?14) ELSE json('[]') END),"
                     " json_object('message', json((SELECT json_extract(detail, '$.message')"
                     " FROM events WHERE message_id = ?4 AND event = 'accepted' ORDER BY id"
                     " LIMIT 1)))),"
                     " CASE WHEN ?15 IS NULL THEN '{}' ELSE json_object('next_attempt_at', ?15)"
                     " END))",
    [WQ_ATTEMPT_DELIVERY] = "SELECT message_id, recipient, route_ids, kind, target, attempts, state"
                            " FROM deliveries WHERE id = ?1",
    [WQ_INS_ATTEMPT] = "INSERT INTO attempts (delivery_id, n, started_at, duration_ms, status,"
                       " error, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [WQ_UPD_ATTEMPT] = "UPDATE deliveries SET attempts = ?2, state = ?3, last_status = ?4,"
                       " last_error = ?5, updated_at = ?6,"
                       " next_attempt_at = coalesce(?7, next_attempt_at), lease_until = NULL"
                       " WHERE id = ?1",
    [WQ_RETRY] = "UPDATE deliveries SET state = 'pending', next_attempt_at = ?2, lease_until = NULL"
                 " WHERE id = ?1 AND state = 'failed'"
                 " AND EXISTS (SELECT 1 FROM messages WHERE messages.id = deliveries.message_id)",
    [WQ_COPY_DELETE] = "DELETE FROM stored WHERE key = ?1 AND (expires_at > ?2 OR " COPY_HELD("stored.key") ")",
    /* A mailbox copy stays while a POP3 session holds its mailbox (SPEC §9). */
    [WQ_SWEEP_COPIES] = "DELETE FROM stored WHERE key IN (SELECT key FROM stored"
                        " WHERE expires_at <= ?1 AND NOT " COPY_HELD("stored.key")
                        " AND NOT " MAILBOX_HELD("stored.mailbox", "?1")
                        " ORDER BY expires_at LIMIT ?2)",
    [WQ_SWEEP_EVENTS] = "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ?1"
                        " ORDER BY ts LIMIT ?2)",
    /* A message's verdicts go once its row and all of its events are gone; ?1: the id prefix of
     * the events' cutoff second (ids start with their arrival second in hex, util/id.h). */
    [WQ_SWEEP_AUTH] = "DELETE FROM message_auth WHERE message_id IN (SELECT message_id FROM message_auth a"
                      " WHERE message_id < ?1"
                      " AND NOT EXISTS (SELECT 1 FROM events WHERE events.message_id = a.message_id)"
                      " AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.id = a.message_id)"
                      " ORDER BY message_id LIMIT ?2)",
    [WQ_NOTE_CANDIDATE] = "INSERT OR IGNORE INTO purge_candidates (message_id) VALUES (?1)",
    [WQ_INS_AUTH] = "INSERT OR IGNORE INTO message_auth (message_id, authentication) VALUES (?1, ?2)",
    [WQ_SWEEP_ATTEMPTS] = "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries"
                          " WHERE state = ?1 AND updated_at < ?2 ORDER BY updated_at, id LIMIT ?3)",
    [WQ_SWEEP_DELIVERIES] = "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                            " WHERE state = ?1 AND updated_at < ?2 ORDER BY updated_at, id"
                            " LIMIT ?3)",
    [WQ_CANDIDATES] = "SELECT message_id FROM purge_candidates LIMIT 1",
    /* The state test comes last: reading it walks past the message's bytes. */
    [WQ_PURGE_MESSAGE] = "DELETE FROM messages WHERE id = ?1"
                         " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?1"
                         "  AND state IN ('pending', 'failed'))"
                         " AND NOT EXISTS (SELECT 1 FROM stored WHERE message_id = ?1"
                         "  AND (expires_at > ?2 OR mailbox IS NOT NULL))"
                         " AND state <> 'accepted'",
    [WQ_PURGE_RECIPIENTS] = "DELETE FROM recipients WHERE message_id = ?1",
    [WQ_DROP_CANDIDATE] = "DELETE FROM purge_candidates WHERE message_id = ?1",
    [WQ_BODY_IN_USE] = "SELECT 1 FROM messages WHERE body_segment = ?1 LIMIT 1",
    [WQ_FREELIST] = "PRAGMA freelist_count",
    [WQ_VACUUM] = "PRAGMA incremental_vacuum(" SQ_STR(SQ_SWEEP_VACUUM_PAGES) ")",
};

static const char *const rq_sql[RQ_COUNT] = {
    /* INDEXED BY: without statistics the planner would take deliveries_state_updated. */
    [RQ_DUE] = "SELECT " DELIVERY_COLS " FROM deliveries INDEXED BY deliveries_due"
               " WHERE state = 'pending' AND next_attempt_at <= ?1 AND next_attempt_at >= ?2"
               " AND (next_attempt_at > ?2 OR id > ?3) ORDER BY next_attempt_at, id LIMIT ?4",
    [RQ_NEXT_DUE] = "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due"
                    " WHERE state = 'pending' AND next_attempt_at > ?1 ORDER BY next_attempt_at LIMIT 1",
    [RQ_DELIVERY] = "SELECT " DELIVERY_COLS " FROM deliveries WHERE id = ?1",
    [RQ_LIST_STATE] = "SELECT " DELIVERY_COLS " FROM deliveries WHERE state = ?1"
                      " AND updated_at <= ?2 AND (updated_at < ?2 OR id < ?3)"
                      " ORDER BY updated_at DESC, id DESC LIMIT ?4",
    [RQ_LIST_ANY] = "SELECT " DELIVERY_COLS " FROM deliveries WHERE ?1 IS NULL"
                    " AND updated_at <= ?2 AND (updated_at < ?2 OR id < ?3)"
                    " ORDER BY updated_at DESC, id DESC LIMIT ?4",
    [RQ_COPY] = "SELECT " COPY_COLS " FROM stored s LEFT JOIN messages m ON m.id = s.message_id"
                " WHERE s.key = ?1 AND (s.expires_at > ?2 OR " COPY_HELD("s.key") ")",
    [RQ_COPY_MESSAGE] = "SELECT " COPY_COLS ", " SQLITE_MESSAGE_COLS("m.")
                        " FROM stored s LEFT JOIN messages m ON m.id = s.message_id"
                        " WHERE s.key = ?1 AND (s.expires_at > ?2 OR " COPY_HELD("s.key") ")",
    /* ?2..?3: the time range, already narrowed to the cursor's side. */
    [RQ_EVENTS_ASC] = "SELECT " EVENT_COLS " FROM events WHERE domain = ?1 AND ts >= ?2"
                      " AND ts <= ?3 AND (?4 IS NULL OR event = ?4)"
                      " AND (?5 IS NULL OR message_id = ?5)"
                      " AND (?6 IS NULL OR recipient = ?6 COLLATE NOCASE)"
                      " AND (ts > ?7 OR id > ?8) ORDER BY ts, id LIMIT ?9",
    [RQ_EVENTS_DESC] = "SELECT " EVENT_COLS " FROM events WHERE domain = ?1 AND ts >= ?2"
                       " AND ts <= ?3 AND (?4 IS NULL OR event = ?4)"
                       " AND (?5 IS NULL OR message_id = ?5)"
                       " AND (?6 IS NULL OR recipient = ?6 COLLATE NOCASE)"
                       " AND (ts < ?7 OR id < ?8) ORDER BY ts DESC, id DESC LIMIT ?9",
    /* One statement, one read transaction: the numbers agree with each other. */
    [RQ_GAUGES] =
        "SELECT (SELECT count(*) FROM deliveries INDEXED BY deliveries_due"
        "  WHERE state = 'pending'),"
        " (SELECT count(*) FROM deliveries INDEXED BY deliveries_due"
        "  WHERE state = 'pending' AND next_attempt_at <= ?1),"
        " (SELECT count(*) FROM deliveries WHERE state = 'failed'),"
        " (SELECT coalesce(min(next_attempt_at), 0) FROM deliveries INDEXED BY deliveries_due"
        "  WHERE state = 'pending' AND next_attempt_at <= ?1),"
        " (SELECT count(*) FROM stored WHERE expires_at > ?1),"
        " (SELECT coalesce(sum(size), 0) FROM messages WHERE id IN"
        "  (SELECT message_id FROM stored WHERE expires_at > ?1)),"
        " (SELECT coalesce(min(created_at), 0) FROM stored WHERE expires_at > ?1),"
        " (SELECT count(*) FROM messages)",
};

/* ---- helpers -------------------------------------------------------------------------------- */

static enum store_status prepare_table(struct sqlite_be *be, sqlite3 *db, const char *const *sql,
                                       sqlite3_stmt **out, size_t n, char **err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &out[i], NULL);

        if (rc != SQLITE_OK) {
            store_set_err(err, "cannot prepare statement %zu of the delivery queue on %s: %s", i,
                          be->path, store_sqlite_error(db, rc));
            return store_sqlite_status(db, rc);
        }
    }
    return STORE_OK;
}

enum store_status store_sqlite_queue_prepare_writer(struct sqlite_be *be, char **err)
{
    return prepare_table(be, be->wdb, wq_sql, be->wq, WQ_COUNT, err);
}

enum store_status store_sqlite_queue_prepare_reader(struct sqlite_be *be, char **err)
{
    return prepare_table(be, be->rdb, rq_sql, be->rq, RQ_COUNT, err);
}

void store_sqlite_queue_finalize(struct sqlite_be *be)
{
    for (size_t i = 0; i < WQ_COUNT; i++) {
        sqlite3_finalize(be->wq[i]);
        be->wq[i] = NULL;
    }
    for (size_t i = 0; i < RQ_COUNT; i++) {
        sqlite3_finalize(be->rq[i]);
        be->rq[i] = NULL;
    }
}

static void finish(sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

/* Steps the write statement `s` once if its binds went in (rc is the last bind's result), then
 * resets it and clears its bindings either way: SQLITE_DONE, or the error code. */
static int step_bound(sqlite3_stmt *s, int rc)
{
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    finish(s);
    return rc;
}

static int64_t clamp_limit(size_t n)
{
    return n > (size_t)INT64_MAX ? INT64_MAX : (int64_t)n;
}

/* Binds ?first.. from 64-bit integers. */
static int bind_ints(sqlite3_stmt *s, int first, const int64_t *v, int n)
{
    int rc = SQLITE_OK;

    for (int i = 0; i < n && rc == SQLITE_OK; i++) rc = sqlite3_bind_int64(s, first + i, v[i]);
    return rc;
}

static void copy_col(char *dst, size_t size, sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);

    snprintf(dst, size, "%s", t ? (const char *)t : "");
}

/* A malloc'd copy of `s` in ASCII lower case (NULL when out of memory). */
static char *lower_dup(const char *s)
{
    char *d = strdup(s);

    for (char *p = d; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
    return d;
}

/* The recipient's domain (after the last '@'), lower case, malloc'd ("" without '@'). */
static char *domain_of(const char *rcpt)
{
    const char *at = rcpt ? strrchr(rcpt, '@') : NULL;

    return lower_dup(at ? at + 1 : "");
}


/* ---- events of a routing outcome ------------------------------------------------------------ */

static int event_accepted(struct sqlite_be *be, const struct store_outcome *o,
                          const struct store_recipient_outcome *r)
{
    sqlite3_stmt *s = be->wq[r->route_ids_json ? WQ_EV_ACCEPTED_IDS : WQ_EV_ACCEPTED];
    char *domain = domain_of(r->recipient);
    const char *t[] = {o->message_id, r->recipient, domain, store_sqlite_nz(r->outcome, ""),
                       r->route_ids_json ? r->route_ids_json : store_sqlite_nz(r->routes_json, "[]")};
    int rc;

    if (!domain) return SQLITE_NOMEM;
    rc = sqlite3_bind_int64(s, 1, o->now_ms ? o->now_ms : o->now * 1000);
    if (rc == SQLITE_OK) rc = store_sqlite_bind_texts(s, 2, t, 5);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 7, o->message_json, -1, SQLITE_STATIC);
    rc = step_bound(s, rc);
    free(domain);
    return rc;
}

static int event_stored(struct sqlite_be *be, const struct store_outcome *o,
                        const struct store_copy_plan *c)
{
    sqlite3_stmt *s = be->wq[WQ_EV_STORED];
    char *domain = domain_of(c->recipient);
    const char *t[] = {o->message_id, c->recipient, domain, c->key, store_sqlite_nz(c->route_id, "")};
    int rc;

    if (!domain) return SQLITE_NOMEM;
    rc = sqlite3_bind_int64(s, 1, o->now_ms ? o->now_ms : o->now * 1000);
    if (rc == SQLITE_OK) rc = store_sqlite_bind_texts(s, 2, t, 5);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 7, c->expires_at);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 8, o->message_json, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 9, c->mailbox, -1, SQLITE_STATIC);
    rc = step_bound(s, rc);
    free(domain);
    return rc;
}

int store_sqlite_outcome_events(struct sqlite_be *be, const struct store_outcome *o, const char **what,
                      const char **which)
{
    int rc = SQLITE_DONE;

    *what = "accepted event";
    for (size_t i = 0; i < o->nrecipients && rc == SQLITE_DONE; i++) {
        *which = store_sqlite_nz(o->recipients[i].recipient, "(null)");
        rc = event_accepted(be, o, &o->recipients[i]);
    }
    *what = "stored event";
    for (size_t i = 0; i < o->ncopies && rc == SQLITE_DONE; i++) {
        *which = o->copies[i].key;
        rc = event_stored(be, o, &o->copies[i]);
    }
    if (o->authentication_json && rc == SQLITE_DONE) {
        sqlite3_stmt *s = be->wq[WQ_INS_AUTH];
        const char *t[] = {o->message_id, o->authentication_json};

        *what = "verdicts";
        *which = o->message_id;
        rc = step_bound(s, store_sqlite_bind_texts(s, 1, t, 2));
    }
    return rc;
}

/* ---- attempts ------------------------------------------------------------------------------- */

/* The delivery an attempt is about, copied out of its row. */
struct attempt_target {
    char message_id[ID_LEN + 1];
    char *recipient, *route_ids, *kind, *target;
    int64_t attempts;
    bool pending;
};

static void attempt_target_free(struct attempt_target *t)
{
    free(t->recipient);
    free(t->route_ids);
    free(t->kind);
    free(t->target);
}

/* SQLITE_ROW with *t filled, SQLITE_DONE when there is no such delivery, or the error code. */
static int attempt_target_load(struct sqlite_be *be, const char *id, struct attempt_target *t)
{
    sqlite3_stmt *s = be->wq[WQ_ATTEMPT_DELIVERY];
    int rc = sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);

    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *state = sqlite3_column_text(s, 6);

        copy_col(t->message_id, sizeof t->message_id, s, 0);
        t->recipient = store_sqlite_col_strdup(s, 1);
        t->route_ids = store_sqlite_col_strdup(s, 2);
        t->kind = store_sqlite_col_strdup(s, 3);
        t->target = store_sqlite_col_strdup(s, 4);
        t->attempts = sqlite3_column_int64(s, 5);
        t->pending = state && strcmp((const char *)state, "pending") == 0;
        if (!t->recipient || !t->route_ids || !t->kind || !t->target) rc = SQLITE_NOMEM;
    }
    finish(s);
    return rc;
}

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

static int bind_status(sqlite3_stmt *s, int idx, int status)
{
    return status ? sqlite3_bind_int(s, idx, status) : sqlite3_bind_null(s, idx);
}

static int insert_attempt_row(struct sqlite_be *be, const struct store_attempt *a, int64_t n)
{
    sqlite3_stmt *s = be->wq[WQ_INS_ATTEMPT];
    const int64_t v[] = {n, a->started_at_ms, a->duration_ms};
    const char *t[] = {store_sqlite_nz(a->error, ""), a->outcome};
    int rc = sqlite3_bind_text(s, 1, a->delivery_id, -1, SQLITE_STATIC);

    if (rc == SQLITE_OK) rc = bind_ints(s, 2, v, 3);
    if (rc == SQLITE_OK) rc = bind_status(s, 5, a->status);
    if (rc == SQLITE_OK) rc = store_sqlite_bind_texts(s, 6, t, 2);
    rc = step_bound(s, rc);
    return rc;
}

static int update_delivery_row(struct sqlite_be *be, const struct store_attempt *a, int64_t n,
                               const struct attempt_effect *e, int64_t end_s)
{
    sqlite3_stmt *s = be->wq[WQ_UPD_ATTEMPT];
    const char *t[] = {a->delivery_id};
    int rc = store_sqlite_bind_texts(s, 1, t, 1);

    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, n);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 3, e->state, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = bind_status(s, 4, a->status);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 5, store_sqlite_nz(a->error, ""), -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 6, end_s);
    if (rc == SQLITE_OK && e->retry) rc = sqlite3_bind_int64(s, 7, a->next_attempt_at);
    rc = step_bound(s, rc);
    return rc;
}

static int insert_attempt_event(struct sqlite_be *be, const struct store_attempt *a, int64_t n,
                                const struct attempt_effect *e, const struct attempt_target *t)
{
    sqlite3_stmt *s = be->wq[WQ_EV_ATTEMPT];
    char *domain = domain_of(t->recipient);
    const char *t1[] = {e->event, e->severity, t->message_id, t->recipient, domain,
                        a->delivery_id};
    const char *t2[] = {store_sqlite_nz(a->error, ""), t->kind, t->target};
    int rc;

    if (!domain) return SQLITE_NOMEM;
    rc = sqlite3_bind_int64(s, 1, a->started_at_ms + a->duration_ms);
    if (rc == SQLITE_OK) rc = store_sqlite_bind_texts(s, 2, t1, 6);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 8, n);
    if (rc == SQLITE_OK) rc = bind_status(s, 9, a->status);
    if (rc == SQLITE_OK) rc = store_sqlite_bind_texts(s, 10, t2, 3);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 13, a->duration_ms);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 14, t->route_ids, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && e->retry) rc = sqlite3_bind_int64(s, 15, a->next_attempt_at);
    rc = step_bound(s, rc);
    free(domain);
    return rc;
}

enum store_status store_sqlite_record_attempt(void *arg, const struct store_attempt *a, char **err)
{
    struct sqlite_be *be = arg;
    struct attempt_target t = {.attempts = 0};
    struct attempt_effect e;
    const char *step = "delivery";
    int64_t end_ms = a->started_at_ms + a->duration_ms, n;
    enum store_status ret = STORE_OK;
    int rc;

    if (attempt_effect_of(a->outcome, &e) < 0) {
        store_set_err(err, "attempt of delivery %s: unknown outcome \"%s\"", a->delivery_id,
                      store_sqlite_nz(a->outcome, "(null)"));
        return STORE_ERR_IO;
    }
    rc = attempt_target_load(be, a->delivery_id, &t);
    if (rc == SQLITE_DONE || (rc == SQLITE_ROW && !t.pending)) {
        ret = STORE_ERR_NOT_FOUND;
        goto out;
    }
    if (rc != SQLITE_ROW) goto fail;
    n = t.attempts + 1;
    step = "attempts row";
    if ((rc = insert_attempt_row(be, a, n)) != SQLITE_DONE) goto fail;
    step = "delivery update";
    /* Floor division: the second in which the attempt ended. */
    if ((rc = update_delivery_row(be, a, n, &e, end_ms / 1000 - (end_ms % 1000 < 0))) !=
        SQLITE_DONE)
        goto fail;
    step = "event";
    if ((rc = insert_attempt_event(be, a, n, &e, &t)) != SQLITE_DONE) goto fail;
    goto out;

fail:
    store_set_err(err, "cannot record an attempt of delivery %s: %s: %s", a->delivery_id, step,
                  store_sqlite_error(be->wdb, rc));
    ret = store_sqlite_status(be->wdb, rc);
out:
    attempt_target_free(&t);
    return ret;
}

/* ---- other delivery writes ------------------------------------------------------------------ */

/* Runs the write statement `s` with ?1 = key and ?2 = now: STORE_OK when it changed a row,
 * STORE_ERR_NOT_FOUND when it changed none, or the failure ("cannot <what> <key>: ..."). */
static enum store_status change_by_key(struct sqlite_be *be, sqlite3_stmt *s, const char *key,
                                       int64_t now, const char *what, char **err)
{
    int rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);

    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, now);
    rc = step_bound(s, rc);
    if (rc != SQLITE_DONE) {
        store_set_err(err, "cannot %s %s: %s", what, key, store_sqlite_error(be->wdb, rc));
        return store_sqlite_status(be->wdb, rc);
    }
    return sqlite3_changes(be->wdb) ? STORE_OK : STORE_ERR_NOT_FOUND;
}

enum store_status store_sqlite_delivery_retry(void *arg, const char *id, int64_t now, char **err)
{
    struct sqlite_be *be = arg;

    return change_by_key(be, be->wq[WQ_RETRY], id, now, "retry delivery", err);
}

enum store_status store_sqlite_deliveries_add(void *arg, const char *message_id,
                                        const struct store_delivery_plan *plans, size_t n,
                                        int64_t now, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->ins_delivery;
    const char *which = message_id;
    int rc = store_sqlite_message_exists(be, message_id);

    if (rc == SQLITE_DONE) return STORE_ERR_NOT_FOUND;
    if (rc != SQLITE_ROW) goto fail;
    rc = SQLITE_DONE;
    for (size_t i = 0; i < n && rc == SQLITE_DONE; i++) {
        const struct store_delivery_plan *d = &plans[i];
        const char *t[] = {d->id, message_id, d->recipient, store_sqlite_nz(d->route_ids_json, "[]"),
                           d->kind, d->target, store_sqlite_nz(d->format, "")};

        which = d->id;
        rc = store_sqlite_bind_texts(s, 1, t, 7);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 8, now);
        if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 9, store_sqlite_nz(d->copy_key, ""), -1, SQLITE_STATIC);
        rc = step_bound(s, rc);
    }
    if (rc != SQLITE_DONE) goto fail;
    return STORE_OK;

fail:
    store_set_err(err, "cannot add deliveries to message %s: %s: %s", message_id, which,
                  store_sqlite_error(be->wdb, rc));
    return store_sqlite_status(be->wdb, rc);
}

enum store_status store_sqlite_copy_delete(void *arg, const char *key, int64_t now, char **err)
{
    struct sqlite_be *be = arg;

    return change_by_key(be, be->wq[WQ_COPY_DELETE], key, now, "delete stored copy", err);
}

/* ---- retention ------------------------------------------------------------------------------ */

/* Runs a bound DELETE; *deleted = rows it deleted (not counting its triggers' rows). */
static int run_delete(struct sqlite_be *be, sqlite3_stmt *s, uint64_t *deleted)
{
    int rc = step_bound(s, SQLITE_OK);

    if (rc == SQLITE_DONE) *deleted = (uint64_t)sqlite3_changes(be->wdb);
    return rc;
}

/* Deliveries in `state` last updated before `before`, with their attempts. */
static int sweep_deliveries(struct sqlite_be *be, const char *state, int64_t before, int64_t lim,
                            uint64_t *deleted)
{
    sqlite3_stmt *s[] = {be->wq[WQ_SWEEP_ATTEMPTS], be->wq[WQ_SWEEP_DELIVERIES]};
    uint64_t ignored;
    int rc = SQLITE_DONE;

    for (int i = 0; i < 2 && rc == SQLITE_DONE; i++) {
        const int64_t v[] = {before, lim};

        rc = sqlite3_bind_text(s[i], 1, state, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = bind_ints(s[i], 2, v, 2);
        rc = rc == SQLITE_OK ? run_delete(be, s[i], i == 0 ? &ignored : deleted) : rc;
        finish(s[i]);
    }
    return rc;
}

/* Checks one noted message and purges it (row and recipients rows) when nothing needs it; the
 * note goes either way.  SQLITE_DONE (*purged set), SQLITE_EMPTY when no note is left, or the
 * error code. */
static int purge_one(struct sqlite_be *be, int64_t now, bool *purged)
{
    sqlite3_stmt *s = be->wq[WQ_CANDIDATES];
    char *id = NULL;
    uint64_t n = 0, ignored;
    int rc = sqlite3_step(s);

    if (rc == SQLITE_ROW && !(id = store_sqlite_col_strdup(s, 0))) rc = SQLITE_NOMEM;
    finish(s);
    if (rc == SQLITE_DONE) return SQLITE_EMPTY;
    if (rc != SQLITE_ROW) return rc;
    s = be->wq[WQ_PURGE_MESSAGE];
    rc = sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, now);
    rc = rc == SQLITE_OK ? run_delete(be, s, &n) : rc;
    if (rc == SQLITE_DONE && n) {
        s = be->wq[WQ_PURGE_RECIPIENTS];
        rc = sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
        rc = rc == SQLITE_OK ? run_delete(be, s, &ignored) : rc;
    }
    if (rc == SQLITE_DONE) {
        s = be->wq[WQ_DROP_CANDIDATE];
        rc = sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
        rc = rc == SQLITE_OK ? run_delete(be, s, &ignored) : rc;
    }
    finish(s);
    free(id);
    *purged = n > 0;
    return rc;
}

static int freelist_count(struct sqlite_be *be, int64_t *pages)
{
    sqlite3_stmt *s = be->wq[WQ_FREELIST];
    int rc = sqlite3_step(s);

    if (rc == SQLITE_ROW) {
        *pages = sqlite3_column_int64(s, 0);
        rc = SQLITE_DONE;
    }
    finish(s);
    return rc;
}

/* Gives up to SQ_SWEEP_VACUUM_PAGES free pages back; *left: free pages that remain. */
static int give_pages_back(struct sqlite_be *be, uint64_t *freed, int64_t *left)
{
    int64_t before = 0;
    int rc = freelist_count(be, &before);

    *left = before;
    if (rc != SQLITE_DONE || before == 0) return rc;
    while ((rc = sqlite3_step(be->wq[WQ_VACUUM])) == SQLITE_ROW) {}
    finish(be->wq[WQ_VACUUM]);
    if (rc == SQLITE_DONE) rc = freelist_count(be, left);
    if (rc == SQLITE_DONE && *left < before) *freed = (uint64_t)(before - *left);
    return rc;
}

/* Whether a row of the writer's transaction points into body segment `segment` (an error counts
 * as in use: nothing is deleted on doubt). */
static bool body_in_use(void *arg, int64_t segment)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->wq[WQ_BODY_IN_USE];
    int rc = sqlite3_bind_int64(s, 1, segment);

    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    finish(s);
    return rc != SQLITE_DONE;
}

/* Body segments no row points at any more, deleted.  First thing in a sweep: the transaction then
 * holds every committed row plus the rows of its own batch (new bodies are only ever in the open
 * segment or in segments adopted by this batch), and none of the deletions of this sweep, which
 * might still roll back: a segment they free goes at the next sweep. */
static enum store_status sweep_bodies(struct sqlite_be *be, struct store_sweep_result *out, char **err)
{
    return store_bodies_collect(be->bodies, body_in_use, be, &out->body_segments, &out->body_bytes, err);
}

enum store_status store_sqlite_sweep(void *arg, const struct store_sweep_args *a,
                               struct store_sweep_result *out, char **err)
{
    struct sqlite_be *be = arg;
    const int64_t lim = clamp_limit(a->batch), now = a->now;
    const char *step = "stored copies";
    uint64_t failed = 0;
    int64_t left = 0;
    int rc;

    *out = (struct store_sweep_result){0};
    enum store_status bst = sweep_bodies(be, out, err);
    if (bst != STORE_OK) return bst;
    rc = bind_ints(be->wq[WQ_SWEEP_COPIES], 1, (const int64_t[]){now, lim}, 2);
    rc = rc == SQLITE_OK ? run_delete(be, be->wq[WQ_SWEEP_COPIES], &out->copies) : rc;
    if (rc != SQLITE_DONE) goto fail;
    step = "events";
    rc = bind_ints(be->wq[WQ_SWEEP_EVENTS], 1,
                   (const int64_t[]){(now - a->event_ttl) * 1000, lim}, 2);
    rc = rc == SQLITE_OK ? run_delete(be, be->wq[WQ_SWEEP_EVENTS], &out->events) : rc;
    if (rc != SQLITE_DONE) goto fail;
    step = "verdicts";
    {
        char cutoff[16];
        uint64_t ignored = 0;

        snprintf(cutoff, sizeof cutoff, "%08" PRIx32, (uint32_t)(now > a->event_ttl ? now - a->event_ttl : 0));
        rc = sqlite3_bind_text(be->wq[WQ_SWEEP_AUTH], 1, cutoff, -1, SQLITE_TRANSIENT);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(be->wq[WQ_SWEEP_AUTH], 2, lim);
        rc = rc == SQLITE_OK ? run_delete(be, be->wq[WQ_SWEEP_AUTH], &ignored) : rc;
    }
    if (rc != SQLITE_DONE) goto fail;
    step = "deliveries";
    rc = sweep_deliveries(be, "delivered", now - a->event_ttl, lim, &out->deliveries);
    if (rc == SQLITE_DONE)
        rc = sweep_deliveries(be, "failed", now - a->failed_retention, lim, &failed);
    if (rc != SQLITE_DONE) goto fail;
    out->more = out->copies >= (uint64_t)lim || out->events >= (uint64_t)lim ||
                out->deliveries >= (uint64_t)lim || failed >= (uint64_t)lim;
    out->deliveries += failed;
    step = "messages";
    for (int64_t i = 0; i < lim; i++) {
        bool purged = false;

        rc = purge_one(be, now, &purged);
        if (rc == SQLITE_EMPTY) break;
        if (rc != SQLITE_DONE) goto fail;
        out->messages += purged;
        if (i + 1 == lim) out->more = true; /* notes may be left */
    }
    step = "incremental vacuum";
    rc = give_pages_back(be, &out->pages_freed, &left);
    if (rc != SQLITE_DONE) goto fail;
    if (left > 0) out->more = true;
    return STORE_OK;

fail:
    finish(be->wq[WQ_SWEEP_COPIES]);
    finish(be->wq[WQ_SWEEP_EVENTS]);
    finish(be->wq[WQ_SWEEP_AUTH]);
    store_set_err(err, "sweep failed: %s: %s", step, store_sqlite_error(be->wdb, rc));
    return store_sqlite_status(be->wdb, rc);
}

/* ---- reads ---------------------------------------------------------------------------------- */

typedef int (*row_fn)(sqlite3_stmt *s, void *elem);

/* Steps the statement `s` (rmu held) once its binds went in (rc: the last bind's result) and
 * appends one zeroed element of `size` bytes per row, filled by `fn` (0, or -1 when out of
 * memory), to *v.  Resets `s` (the read transaction ends).  Either way *v and *n hold the
 * elements read so far (the caller frees them). */
static enum store_status collect(sqlite3 *db, sqlite3_stmt *s, int rc, size_t size, row_fn fn,
                                 void **v, size_t *n, const char *what, char **err)
{
    size_t cap = 0;
    bool oom = false;

    while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            void *nv = realloc(*v, ncap * size);

            if (!nv) {
                oom = true;
                break;
            }
            *v = nv;
            cap = ncap;
        }
        void *elem = (char *)*v + *n * size;

        memset(elem, 0, size);
        (*n)++;
        if (fn(s, elem) < 0) {
            oom = true;
            break;
        }
        rc = SQLITE_OK;
    }
    finish(s);
    if (oom) {
        store_set_err(err, "cannot read %s: out of memory", what);
        return STORE_ERR_NOMEM;
    }
    if (rc != SQLITE_DONE) {
        store_set_err(err, "cannot read %s: %s", what, store_sqlite_error(db, rc));
        return store_sqlite_status(db, rc);
    }
    return STORE_OK;
}

static int read_delivery(sqlite3_stmt *s, void *elem)
{
    struct store_delivery *d = elem;

    copy_col(d->id, sizeof d->id, s, 0);
    copy_col(d->message_id, sizeof d->message_id, s, 1);
    d->recipient = store_sqlite_col_strdup(s, 2);
    d->kind = store_sqlite_col_strdup(s, 3);
    d->target = store_sqlite_col_strdup(s, 4);
    d->format = store_sqlite_col_strdup(s, 5);
    d->route_ids_json = store_sqlite_col_strdup(s, 6);
    d->state = store_sqlite_col_strdup(s, 7);
    d->attempts = sqlite3_column_int64(s, 8);
    d->next_attempt_at = sqlite3_column_int64(s, 9);
    d->created_at = sqlite3_column_int64(s, 10);
    d->updated_at = sqlite3_column_int64(s, 11);
    d->last_status = sqlite3_column_int(s, 12);
    d->last_error = store_sqlite_col_strdup(s, 13);
    d->copy_key = store_sqlite_col_strdup(s, 14);
    return d->recipient && d->kind && d->target && d->format && d->route_ids_json && d->state &&
                   d->last_error && d->copy_key
               ? 0
               : -1;
}

/* Runs a delivery query (rmu held; rc: its last bind's result) into *out / *n. */
static enum store_status delivery_rows(struct sqlite_be *be, sqlite3_stmt *s, int rc,
                                       struct store_delivery **out, size_t *n, char **err)
{
    void *v = NULL;
    enum store_status ret = collect(be->rdb, s, rc, sizeof **out, read_delivery, &v, n,
                                    "deliveries", err);

    if (ret != STORE_OK) {
        store_deliveries_free(v, *n);
        v = NULL;
        *n = 0;
    }
    *out = v;
    return ret;
}

enum store_status store_sqlite_deliveries_due(void *arg, int64_t now, int64_t after_at,
                                        const char *after_id, size_t max,
                                        struct store_delivery **out, size_t *n, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->rq[RQ_DUE];
    bool cursor = after_id && *after_id;
    const int64_t v[] = {now, cursor ? after_at : INT64_MIN};
    enum store_status ret;
    int rc;

    pthread_mutex_lock(&be->rmu);
    rc = bind_ints(s, 1, v, 2);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 3, cursor ? after_id : "", -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 4, clamp_limit(max));
    ret = delivery_rows(be, s, rc, out, n, err);
    pthread_mutex_unlock(&be->rmu);
    return ret;
}

enum store_status store_sqlite_deliveries_next_due(void *arg, int64_t after, int64_t *at, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->rq[RQ_NEXT_DUE];
    enum store_status ret = STORE_OK;
    int rc;

    pthread_mutex_lock(&be->rmu);
    rc = sqlite3_bind_int64(s, 1, after);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *at = sqlite3_column_int64(s, 0);
    } else if (rc == SQLITE_DONE) {
        ret = STORE_ERR_NOT_FOUND;
    } else {
        store_set_err(err, "cannot read the next due delivery: %s", store_sqlite_error(be->rdb, rc));
        ret = store_sqlite_status(be->rdb, rc);
    }
    finish(s);
    pthread_mutex_unlock(&be->rmu);
    return ret;
}

enum store_status store_sqlite_delivery_get(void *arg, const char *id, struct store_delivery **out,
                                      char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->rq[RQ_DELIVERY];
    size_t n = 0;
    enum store_status ret;

    pthread_mutex_lock(&be->rmu);
    ret = delivery_rows(be, s, sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC), out, &n, err);
    pthread_mutex_unlock(&be->rmu);
    return ret == STORE_OK && n == 0 ? STORE_ERR_NOT_FOUND : ret;
}

enum store_status store_sqlite_deliveries_list(void *arg, const char *state, int64_t before_updated_at,
                                         const char *before_id, size_t max,
                                         struct store_delivery **out, size_t *n, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->rq[state ? RQ_LIST_STATE : RQ_LIST_ANY];
    bool cursor = before_id && *before_id;
    enum store_status ret;
    int rc;

    pthread_mutex_lock(&be->rmu);
    rc = state ? sqlite3_bind_text(s, 1, state, -1, SQLITE_STATIC) : sqlite3_bind_null(s, 1);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, cursor ? before_updated_at : INT64_MAX);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 3, cursor ? before_id : "", -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 4, clamp_limit(max));
    ret = delivery_rows(be, s, rc, out, n, err);
    pthread_mutex_unlock(&be->rmu);
    return ret;
}

/* ---- stored copies -------------------------------------------------------------------------- */

static int read_copy(sqlite3_stmt *s, struct store_copy *c)
{
    copy_col(c->key, sizeof c->key, s, 0);
    copy_col(c->message_id, sizeof c->message_id, s, 1);
    c->recipient = store_sqlite_col_strdup(s, 2);
    c->domain = store_sqlite_col_strdup(s, 3);
    c->route_id = store_sqlite_col_strdup(s, 4);
    c->notify = sqlite3_column_type(s, 5) == SQLITE_NULL ? NULL : store_sqlite_col_strdup(s, 5);
    c->format = store_sqlite_col_strdup(s, 6);
    c->expires_at = sqlite3_column_int64(s, 7);
    c->created_at = sqlite3_column_int64(s, 8);
    return c->recipient && c->domain && c->route_id && c->format &&
                   (c->notify || sqlite3_column_type(s, 5) == SQLITE_NULL)
               ? 0
               : -1;
}

/* Reads the copy row (rmu held) and, when m is not NULL, its message (RQ_COPY_MESSAGE: the
 * message's columns from column 10 on): STORE_OK, STORE_ERR_NOT_FOUND (no such unexpired copy,
 * or its message is gone), or a failure. */
static enum store_status copy_row(struct sqlite_be *be, const char *key, int64_t now,
                                  struct store_copy *c, struct store_message *m,
                                  struct store_body_ref *ref, char **err)
{
    sqlite3_stmt *s = be->rq[m ? RQ_COPY_MESSAGE : RQ_COPY];
    enum store_status ret = STORE_ERR_NOT_FOUND;
    int rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);

    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, now);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_int(s, 9)) {
        ret = STORE_OK;
        if (read_copy(s, c) < 0) {
            store_set_err(err, "cannot read stored copy %s: out of memory", key);
            ret = STORE_ERR_NOMEM;
        } else if (m) {
            copy_col(m->id, sizeof m->id, s, 1);
            ret = store_sqlite_read_message(s, 10, m, ref, err);
        }
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_set_err(err, "cannot read stored copy %s: %s", key, store_sqlite_error(be->rdb, rc));
        ret = store_sqlite_status(be->rdb, rc);
    }
    finish(s); /* ends the read transaction: the bytes are ours now */
    return ret;
}

enum store_status store_sqlite_copy_get(void *arg, const char *key, int64_t now,
                                  struct store_copy **copy, struct store_message **msg,
                                  char **err)
{
    struct sqlite_be *be = arg;
    struct store_copy *c = calloc(1, sizeof *c);
    struct store_message *m = msg ? calloc(1, sizeof *m) : NULL;
    struct store_body_ref ref = {0};
    enum store_status ret = STORE_ERR_NOMEM;

    if (!c || (msg && !m)) {
        store_set_err(err, "cannot read stored copy %s: out of memory", key);
        goto out;
    }
    pthread_mutex_lock(&be->rmu);
    ret = copy_row(be, key, now, c, m, &ref, err);
    pthread_mutex_unlock(&be->rmu);
    if (ret == STORE_OK && m) ret = store_sqlite_load_body(be, m, &ref, err);
    if (ret == STORE_OK) {
        *copy = c;
        c = NULL;
        if (msg) *msg = m;
        m = NULL;
    }
out:
    store_copy_free(c);
    store_free_message(m);
    return ret;
}

/* ---- events --------------------------------------------------------------------------------- */

static int read_event(sqlite3_stmt *s, void *elem)
{
    struct store_event *e = elem;

    e->id = sqlite3_column_int64(s, 0);
    e->ts_ms = sqlite3_column_int64(s, 1);
    e->event = store_sqlite_col_strdup(s, 2);
    e->severity = store_sqlite_col_strdup(s, 3);
    copy_col(e->message_id, sizeof e->message_id, s, 4);
    e->recipient = store_sqlite_col_strdup(s, 5);
    e->domain = store_sqlite_col_strdup(s, 6);
    e->delivery_id = store_sqlite_col_strdup(s, 7);
    e->detail_json = store_sqlite_col_strdup(s, 8);
    e->authentication_json = store_sqlite_col_strdup(s, 9);
    return e->event && e->severity && e->recipient && e->domain && e->delivery_id &&
                   e->detail_json && e->authentication_json
               ? 0
               : -1;
}

/* Binds RQ_EVENTS_* for `q`; the cursor narrows the time range on its side, so that the index
 * range starts at the cursor (deep pages stay cheap). */
static int bind_event_query(sqlite3_stmt *s, const struct store_event_query *q,
                            const char *domain)
{
    int64_t lo = q->begin_ms ? q->begin_ms : INT64_MIN, hi = q->end_ms ? q->end_ms : INT64_MAX;
    int64_t cts = q->ascending ? INT64_MIN : INT64_MAX, cid = q->ascending ? 0 : INT64_MAX;
    const char *t[] = {domain, q->event, q->message_id, q->recipient};
    int rc;

    if (q->after_id) {
        cts = q->after_ts_ms;
        cid = q->after_id;
        if (q->ascending && cts > lo) lo = cts;
        if (!q->ascending && cts < hi) hi = cts;
    }
    rc = store_sqlite_bind_texts(s, 1, t, 1);
    if (rc == SQLITE_OK) rc = bind_ints(s, 2, (const int64_t[]){lo, hi}, 2);
    if (rc == SQLITE_OK) rc = store_sqlite_bind_texts(s, 4, t + 1, 3);
    if (rc == SQLITE_OK) rc = bind_ints(s, 7, (const int64_t[]){cts, cid, clamp_limit(q->limit)}, 3);
    return rc;
}

enum store_status store_sqlite_events_query(void *arg, const struct store_event_query *q,
                                      struct store_event **out, size_t *n, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->rq[q->ascending ? RQ_EVENTS_ASC : RQ_EVENTS_DESC];
    char *domain = lower_dup(q->domain ? q->domain : "");
    void *v = NULL;
    enum store_status ret;

    if (!domain) {
        store_set_err(err, "cannot read events: out of memory");
        return STORE_ERR_NOMEM;
    }
    pthread_mutex_lock(&be->rmu);
    ret = collect(be->rdb, s, bind_event_query(s, q, domain), sizeof **out, read_event, &v, n,
                  "events", err);
    pthread_mutex_unlock(&be->rmu);
    free(domain);
    if (ret != STORE_OK) {
        store_events_free(v, *n);
        *n = 0;
        return ret;
    }
    *out = v;
    return STORE_OK;
}

/* ---- gauges and backups --------------------------------------------------------------------- */

static int64_t file_bytes(const char *path, const char *suffix)
{
    char *p = NULL;
    struct stat sb;
    int64_t size = 0;

    if (asprintf(&p, "%s%s", path, suffix) < 0) return 0;
    if (stat(p, &sb) == 0) size = (int64_t)sb.st_size;
    free(p);
    return size;
}

enum store_status store_sqlite_gauges(void *arg, int64_t now, struct store_gauges *out, char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = be->rq[RQ_GAUGES];
    enum store_status ret = STORE_OK;
    int rc;

    *out = (struct store_gauges){0};
    pthread_mutex_lock(&be->rmu);
    rc = sqlite3_bind_int64(s, 1, now);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        int64_t *f[] = {&out->deliveries_pending, &out->deliveries_due, &out->deliveries_failed,
                        &out->oldest_due_at, &out->stored_copies, &out->stored_bytes,
                        &out->stored_oldest_at, &out->messages};

        for (int i = 0; i < (int)(sizeof f / sizeof f[0]); i++) *f[i] = sqlite3_column_int64(s, i);
    } else {
        store_set_err(err, "cannot read the gauges: %s", store_sqlite_error(be->rdb, rc));
        ret = store_sqlite_status(be->rdb, rc);
    }
    finish(s);
    pthread_mutex_unlock(&be->rmu);
    if (ret == STORE_OK)
        out->database_bytes = file_bytes(be->path, "") + file_bytes(be->path, "-wal") +
                              store_bodies_size(be->bodies);
    return ret;
}

/* fsyncs `path`, then its directory. */
static int sync_file_and_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = !slash ? strdup(".") : strndup(path, slash == path ? 1 : (size_t)(slash - path));
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = -1;

    if (fd >= 0 && fsync(fd) == 0) rc = 0;
    if (fd >= 0) close(fd);
    fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd < 0 || fsync(fd) < 0) rc = -1;
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

/* VACUUM INTO from a connection of its own, opened read-only (the shared read connection is
 * query_only, which VACUUM INTO refuses, and must not be held for a whole copy). */
static enum store_status vacuum_into(const struct sqlite_be *be, const char *path, char **err)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    enum store_status ret;
    int rc = sqlite3_open_v2(be->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);

    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        rc = sqlite3_prepare_v2(db, "VACUUM INTO ?1", -1, &s, NULL);
    }
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(s, 1, path, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        store_set_err(err, "cannot back up %s into %s: %s", be->path, path,
                      db ? store_sqlite_error(db, rc) : sqlite3_errstr(rc));
    ret = rc == SQLITE_DONE ? STORE_OK : db ? store_sqlite_status(db, rc) : STORE_ERR_IO;
    sqlite3_finalize(s);
    sqlite3_close(db);
    return ret;
}

/* The backup's messages get their bytes back into `raw` from the body log (body_segment NULL),
 * so that the backup is one self-contained file: inlet reads such rows as it reads rows written
 * before the body log.  One body in memory at a time; one transaction, synced by the caller. */
static enum store_status inline_bodies(struct sqlite_be *be, const char *path, char **err)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *sel = NULL, *upd = NULL;
    enum store_status ret = STORE_OK;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);

    if (rc == SQLITE_OK) rc = sqlite3_exec(db, "PRAGMA synchronous = OFF; BEGIN", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "SELECT id, body_segment, body_offset, size, body_crc FROM messages"
                                    " WHERE body_segment IS NOT NULL", -1, &sel, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "UPDATE messages SET raw = ?2, body_segment = NULL,"
                                    " body_offset = NULL, body_crc = NULL WHERE id = ?1", -1, &upd, NULL);
    while (rc == SQLITE_OK && ret == STORE_OK && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
        char id[ID_LEN + 1];
        const struct store_body_ref ref = {
            .segment = sqlite3_column_int64(sel, 1), .offset = sqlite3_column_int64(sel, 2),
            .len = sqlite3_column_int64(sel, 3), .crc = (uint32_t)sqlite3_column_int64(sel, 4)};
        uint8_t *data = NULL;

        copy_col(id, sizeof id, sel, 0);
        ret = store_bodies_read(be->bodies, &ref, id, &data, err);
        if (ret == STORE_ERR_NOT_FOUND) {
            store_set_err(err, "message %s: its body segment is gone", id);
            ret = STORE_ERR_IO;
        }
        if (ret != STORE_OK) break;
        rc = sqlite3_bind_text(upd, 1, id, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = sqlite3_bind_blob64(upd, 2, data, (sqlite3_uint64)ref.len, SQLITE_STATIC);
        if (rc == SQLITE_OK) rc = store_sqlite_step_reset(upd);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        free(data);
    }
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    if (ret == STORE_OK && rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (ret == STORE_OK && rc != SQLITE_OK) {
        store_set_err(err, "cannot put the bodies into backup %s: %s", path,
                      db ? store_sqlite_error(db, rc) : sqlite3_errstr(rc));
        ret = db ? store_sqlite_status(db, rc) : STORE_ERR_IO;
    }
    sqlite3_close(db);
    return ret;
}

enum store_status store_sqlite_backup(void *arg, const char *path, char **err)
{
    struct sqlite_be *be = arg;
    enum store_status ret;
    /* Created here, empty and 0600 (the copy holds the keys); an existing file is refused. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd < 0) {
        store_set_err(err, "cannot create backup file %s: %s", path, strerror(errno));
        return errno == ENOSPC || errno == EDQUOT ? STORE_ERR_FULL : STORE_ERR_IO;
    }
    close(fd);
    /* Held from before the snapshot until the bodies are in: no segment it needs goes meanwhile. */
    store_bodies_hold(be->bodies, true);
    ret = vacuum_into(be, path, err);
    if (ret == STORE_OK) ret = inline_bodies(be, path, err);
    store_bodies_hold(be->bodies, false);
    if (ret == STORE_OK && sync_file_and_dir(path) < 0) {
        store_set_err(err, "cannot sync backup file %s: %s", path, strerror(errno));
        ret = errno == ENOSPC || errno == EDQUOT ? STORE_ERR_FULL : STORE_ERR_IO;
    }
    if (ret != STORE_OK) {
        unlink(path);
        return ret;
    }
    log_info("storage", "backup path=%s bytes=%lld", path, (long long)file_bytes(path, ""));
    return STORE_OK;
}
