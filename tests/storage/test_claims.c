/* tests/storage/test_claims.c — claims on shared work (SPEC §8; store.h "Claims"): two store
 * handles on one PostgreSQL database play two nodes, A and B, with a short lease.
 *
 *   - a routing outcome's deliveries are A's (claimed at insert): B cannot claim them while the
 *     lease lives; a lease A renews stays A's; one A does not renew is B's once it ran out;
 *   - the attempt of a delivery is recorded only from the node holding its claim (A's, after B
 *     took it: refused, NOT_FOUND); A's renewal tells it the lease was lost;
 *   - two nodes claiming the same due rows at once never get the same row, and a claim skips a
 *     row another transaction holds locked instead of waiting for it (SKIP LOCKED);
 *   - a message accepted by A is A's: B's scan does not take it until its lease ran out, then
 *     does; A's own scan finds it meanwhile; only the first routing outcome is written;
 *   - a node's claims released at once (its next run on the same data dir does this);
 *   - the sweeper runs on one node at a time: B's pass is skipped while A holds the lock;
 *   - on SQLite claims are in-process: a claim is the due read, a renewal always holds.
 *
 * The PostgreSQL cases need INLET_TEST_PG_URL (a database this test may empty) and are skipped
 * without it; the lease is real time (LEASE_S), so this test sleeps a few seconds. */
#include <ftw.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "storage/internal.h"
#include "storage/store.h"
#include "util/log.h"

#define LEASE_S 2
#define FAR_FUTURE INT64_MAX /* `now` of the claims: every delivery is due */

static const char *pg_url;

static char *xstrdup(const char *s)
{
    char *d = strdup(s);

    if (!d) exit(1);
    return d;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&t, NULL);
}

/* ---- the test's own connection -------------------------------------------------------------- */

static PGconn *raw_open(void)
{
    PGconn *c = PQconnectdb(pg_url);

    if (PQstatus(c) != CONNECTION_OK) {
        printf("Bail out! cannot connect to %s: %s", pg_url, PQerrorMessage(c));
        exit(1);
    }
    return c;
}

/* First column of the first row into out ("" when none); false on an error. */
static bool raw_query(PGconn *c, const char *sql, char *out, size_t outsz)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK;

    out[0] = '\0';
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, outsz, "%s", PQgetvalue(r, 0, 0));
    if (!ok) printf("# %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

static void reset_database(void)
{
    PGconn *c = raw_open();
    char buf[8];

    if (!raw_query(c, "SET client_min_messages = warning;"
                      " DROP SCHEMA public CASCADE; CREATE SCHEMA public", buf, sizeof buf)) {
        printf("Bail out! cannot empty the PostgreSQL database %s\n", pg_url);
        exit(1);
    }
    PQfinish(c);
}

/* ---- nodes, messages, outcomes -------------------------------------------------------------- */

static struct store *open_node(const char *dir, const char *url, const char *name)
{
    char *err = NULL;
    struct store *st = store_open(dir, url, &err);

    if (!st) {
        printf("Bail out! store_open: %s\n", err ? err : "?");
        exit(1);
    }
    store_set_claims(st, name, LEASE_S);
    return st;
}

struct done_slot {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool called;
    int status;
};

static void slot_signal(struct done_slot *s, int status)
{
    pthread_mutex_lock(&s->mu);
    s->status = status;
    s->called = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int slot_wait(struct done_slot *s)
{
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&s->mu);
    while (!s->called && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0) {}
    pthread_mutex_unlock(&s->mu);
    return s->called ? s->status : 99;
}

static void on_accepted(void *arg, enum store_status status, struct store_message *msg)
{
    store_free_message(msg);
    slot_signal(arg, status);
}

static void on_written(void *arg, enum store_status status, char *err)
{
    free(err);
    slot_signal(arg, status);
}

static void msg_id(char id[ID_LEN + 1], unsigned k)
{
    snprintf(id, ID_LEN + 1, "m%023u", k);
}

/* Node `st` accepts message k (and so claims it). */
static void accept_msg(struct store *st, unsigned k)
{
    struct store_message *m = calloc(1, sizeof *m);
    struct done_slot s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

    if (!m || !(m->rcpts = calloc(1, sizeof *m->rcpts))) exit(1);
    msg_id(m->id, k);
    m->received_at_ms = 1700000000000LL + k;
    m->sender = xstrdup("sender@example.org");
    m->rcpts[0] = xstrdup("user@example.com");
    m->nrcpts = 1;
    m->remote_ip = xstrdup("192.0.2.9");
    m->helo = xstrdup("mx.example.org");
    m->tls = xstrdup("none");
    m->data = (uint8_t *)xstrdup("Subject: claims\r\n\r\nbody\r\n");
    m->len = strlen((char *)m->data);
    store_accept(st, m, on_accepted, &s);
    if (slot_wait(&s) != STORE_OK) {
        printf("Bail out! accept of message %u failed\n", k);
        exit(1);
    }
}

/* Node `st` writes message k's routing outcome with deliveries "<k>-0" .. "<k>-<nd-1>"
 * (claimed by `st` as they are inserted). */
static enum store_status route_msg(struct store *st, unsigned k, size_t nd)
{
    char id[ID_LEN + 1];
    struct store_delivery_plan d[8] = {0};
    const struct store_recipient_outcome ro = {
        .recipient = "user@example.com", .outcome = "routed",
        .routes_json = "[{\"id\": \"r1\", \"captures\": {}, \"actions\": []}]",
        .warnings_json = "[]"};
    struct store_outcome o = {.message_id = id, .parse_warnings_json = "[]", .recipients = &ro,
                              .nrecipients = 1, .deliveries = d, .ndeliveries = nd, .now = 1000};
    char *err = NULL;
    enum store_status rc;

    msg_id(id, k);
    for (size_t i = 0; i < nd && i < 8; i++) {
        d[i] = (struct store_delivery_plan){.recipient = "user@example.com", .kind = "url",
                                            .target = "http://127.0.0.1:9/hook", .format = "",
                                            .route_ids_json = "[\"r1\"]"};
        snprintf(d[i].id, sizeof d[i].id, "d%u-%zu", k, i);
    }
    rc = store_write_outcome(st, &o, &err);
    if (store_status_failed(rc)) printf("# outcome of %u: %s\n", k, err ? err : "?");
    free(err);
    return rc;
}

/* The ids `st` claims now (every due delivery), comma-separated, in claim order. */
static void claim_all(struct store *st, char *out, size_t outsz)
{
    struct store_delivery *d = NULL;
    size_t n = 0;
    char *err = NULL;
    enum store_status rc = store_deliveries_claim(st, FAR_FUTURE, INT64_MIN, "", 100, &d, &n, &err);

    out[0] = '\0';
    if (rc != STORE_OK) snprintf(out, outsz, "error: %s", err ? err : "?");
    for (size_t i = 0; i < n; i++)
        snprintf(out + strlen(out), outsz - strlen(out), "%s%s", i ? "," : "", d[i].id);
    store_deliveries_free(d, n);
    free(err);
}

/* The ids of 'accepted' messages that `st` claims now, comma-separated. */
static void claim_messages(struct store *st, char *out, size_t outsz)
{
    char **ids = NULL, *err = NULL;
    size_t n = 0;
    enum store_status rc = store_claim_unprocessed(st, &ids, &n, 100, &err);

    out[0] = '\0';
    if (rc != STORE_OK) snprintf(out, outsz, "error: %s", err ? err : "?");
    for (size_t i = 0; i < n; i++) {
        snprintf(out + strlen(out), outsz - strlen(out), "%s%s", i ? "," : "", ids[i]);
        free(ids[i]);
    }
    free(ids);
    free(err);
}

/* `st` records a delivered attempt of delivery `id`: the status the store answers. */
static enum store_status attempt(struct store *st, const char *id)
{
    const struct store_attempt a = {.delivery_id = id, .started_at_ms = 1000000,
                                    .duration_ms = 5, .status = 200, .error = "",
                                    .outcome = "delivered"};
    struct done_slot s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

    store_record_attempt(st, &a, on_written, &s);
    return (enum store_status)slot_wait(&s);
}

/* `st` renews its lease on delivery `id`: whether it still holds it (false on a failure). */
static bool renew_one(struct store *st, const char *id)
{
    bool renewed = false;
    const char *ids[] = {id};

    return store_deliveries_renew(st, ids, 1, &renewed, NULL) == STORE_OK && renewed;
}

/* ---- cases ---------------------------------------------------------------------------------- */

/* A routing outcome's deliveries are the routing node's; renewal keeps one, the other runs out
 * and goes to B; then only B may record its attempt. */
static void test_delivery_lease(struct store *a, struct store *b, PGconn *raw)
{
    char got[512], buf[128];

    accept_msg(a, 1);
    CHECK(route_msg(a, 1, 2) == STORE_OK, "A routes message 1: deliveries d1-0, d1-1");
    raw_query(raw, "SELECT string_agg(coalesce(claimed_by, '-'), ',' ORDER BY id) FROM deliveries",
              buf, sizeof buf);
    CHECK_STR(buf, "node-a,node-a", "the outcome's deliveries are claimed by A at insert");
    claim_all(b, got, sizeof got);
    CHECK_STR(got, "", "B claims nothing while A's leases live");

    /* A renews d1-0 twice over a time longer than the lease; d1-1 is left to run out. */
    for (int i = 0; i < 3; i++) {
        sleep_ms(LEASE_S * 1000 / 2);
        CHECK(renew_one(a, "d1-0"), "A renews its lease on d1-0 (%d)", i + 1);
    }
    claim_all(b, got, sizeof got);
    CHECK_STR(got, "d1-1", "past the lease, B claims d1-1 (ran out) and not d1-0 (renewed)");
    claim_all(a, got, sizeof got);
    CHECK_STR(got, "d1-0", "A's claim finds its own d1-0 again (the deliverer skips what it has in hand),"
                           " never B's d1-1");

    CHECK(attempt(a, "d1-1") == STORE_ERR_NOT_FOUND,
          "A's attempt of d1-1 is refused (the lease was lost to B): NOT_FOUND");
    CHECK(!renew_one(a, "d1-1"), "A's renewal of d1-1 says the lease was lost");
    raw_query(raw, "SELECT attempts || ' ' || state || ' ' || claimed_by FROM deliveries"
                   " WHERE id = 'd1-1'", buf, sizeof buf);
    CHECK_STR(buf, "0 pending node-b", "nothing of A's attempt was written; B holds it");
    CHECK(attempt(b, "d1-1") == STORE_OK, "B, the holder, records its attempt of d1-1");
    CHECK(attempt(a, "d1-0") == STORE_OK, "A records its attempt of d1-0 (renewed all along)");
    raw_query(raw, "SELECT string_agg(state || ':' || coalesce(claimed_by, '-'), ',' ORDER BY id)"
                   " FROM deliveries", buf, sizeof buf);
    CHECK_STR(buf, "delivered:-,delivered:-", "both delivered once; a recorded attempt ends the claim");
}

/* A retry is anyone's once due; two nodes claiming at once share the rows without overlap. */
static pthread_barrier_t claim_start;

struct claimer {
    struct store *st;
    char ids[256][ID_LEN + 1];
    size_t n;
    bool failed;
};

static void *claimer_main(void *arg)
{
    struct claimer *c = arg;

    int64_t after_at = INT64_MIN;
    char after_id[ID_LEN + 1] = "";

    /* Pages of 1 from a cursor, as the deliverer's scan; both claimers start together. */
    pthread_barrier_wait(&claim_start);
    for (int round = 0; round < 400 && c->n < 256; round++) {
        struct store_delivery *d = NULL;
        size_t n = 0;

        if (store_deliveries_claim(c->st, FAR_FUTURE, after_at, after_id, 1, &d, &n, NULL) != STORE_OK)
            c->failed = true;
        for (size_t i = 0; i < n && c->n < 256; i++) snprintf(c->ids[c->n++], ID_LEN + 1, "%s", d[i].id);
        if (n) {
            after_at = d[n - 1].next_attempt_at;
            snprintf(after_id, sizeof after_id, "%s", d[n - 1].id);
        }
        store_deliveries_free(d, n);
        if (n < 1) break;
    }
    return NULL;
}

static void test_concurrent_claims(struct store *a, struct store *b, PGconn *raw)
{
    char buf[64];
    struct claimer ca = {.st = a}, cb = {.st = b};
    pthread_t ta, tb;
    size_t both = 0;

    /* 200 due deliveries nobody holds (as a dead-letter replay or a resend leaves them). */
    for (unsigned k = 100; k < 125; k++) {
        accept_msg(a, k);
        route_msg(a, k, 8);
    }
    raw_query(raw, "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL"
                   " WHERE state = 'pending'", buf, sizeof buf);
    pthread_barrier_init(&claim_start, NULL, 2);
    pthread_create(&ta, NULL, claimer_main, &ca);
    pthread_create(&tb, NULL, claimer_main, &cb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&claim_start);
    for (size_t i = 0; i < ca.n; i++)
        for (size_t j = 0; j < cb.n; j++) both += strcmp(ca.ids[i], cb.ids[j]) == 0;
    CHECK(!ca.failed && !cb.failed, "both claimers ran without an error");
    CHECK(ca.n + cb.n == 200 && both == 0,
          "A and B claiming at once took the 200 rows between them, none twice (A %zu, B %zu, both %zu)",
          ca.n, cb.n, both);
}

/* A claim skips a row locked by another transaction (another node's claim in progress) instead
 * of waiting for it. */
struct blocked_claim {
    struct store *st;
    char got[256];
    volatile bool done;
};

static void *blocked_main(void *arg)
{
    struct blocked_claim *c = arg;

    claim_all(c->st, c->got, sizeof c->got);
    c->done = true;
    return NULL;
}

static void test_skip_locked(struct store *b, PGconn *raw)
{
    char buf[64];
    struct blocked_claim c = {.st = b};
    pthread_t t;
    int waited = 0;

    raw_query(raw, "DELETE FROM deliveries", buf, sizeof buf); /* the earlier cases' */
    accept_msg(b, 20);
    route_msg(b, 20, 2);
    raw_query(raw, "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL"
                   " WHERE message_id = 'm00000000000000000000020'", buf, sizeof buf);
    raw_query(raw, "BEGIN", buf, sizeof buf);
    raw_query(raw, "SELECT id FROM deliveries WHERE id = 'd20-0' FOR UPDATE", buf, sizeof buf);
    pthread_create(&t, NULL, blocked_main, &c);
    while (!c.done && waited++ < 40) sleep_ms(50);
    CHECK(c.done, "a claim does not wait for a row another transaction holds locked");
    raw_query(raw, "ROLLBACK", buf, sizeof buf);
    pthread_join(t, NULL);
    CHECK_STR(c.got, "d20-1", "it takes the unlocked row and skips the locked one");
    claim_all(b, c.got, sizeof c.got);
    CHECK_STR(c.got, "d20-0,d20-1", "the row let go is claimed by the next claim (and B's own d20-1 again)");
}

/* Messages: claimed by the accepting node; another node's scan takes them once the lease ran
 * out; only the first routing outcome is written. */
static void test_message_claims(struct store *a, struct store *b, PGconn *raw)
{
    char got[256], buf[64];

    accept_msg(a, 30);
    raw_query(raw, "SELECT claimed_by FROM messages WHERE id = 'm00000000000000000000030'", buf,
              sizeof buf);
    CHECK_STR(buf, "node-a", "an accepted message is claimed by the node that accepted it");
    claim_messages(b, got, sizeof got);
    CHECK_STR(got, "", "B's scan leaves A's message while A's lease lives");
    claim_messages(a, got, sizeof got);
    CHECK_STR(got, "m00000000000000000000030", "A's own scan finds it (left to a scan by A)");
    sleep_ms(LEASE_S * 1000 + 300);
    claim_messages(b, got, sizeof got);
    CHECK_STR(got, "m00000000000000000000030", "past the lease (A died), B's scan claims it");
    claim_messages(a, got, sizeof got);
    CHECK_STR(got, "", "then A's scan does not: B holds it");
    CHECK(route_msg(b, 30, 1) == STORE_OK, "B routes it");
    CHECK(route_msg(a, 30, 1) == STORE_ERR_NOT_FOUND,
          "a second routing outcome (A's, late) is not written: NOT_FOUND");
    raw_query(raw, "SELECT count(*) || ' ' || min(claimed_by) FROM deliveries"
                   " WHERE message_id = 'm00000000000000000000030'", buf, sizeof buf);
    CHECK_STR(buf, "1 node-b", "one delivery, B's");
}

/* A node started again on the same data dir lets go of what its dead previous run held. */
static void test_release(struct store *a, struct store *b, PGconn *raw)
{
    char got[256];
    struct store_released n = {-1, -1, -1};

    raw_query(raw, "DELETE FROM deliveries", got, sizeof got); /* the earlier cases' */
    /* Maildrop locks: A's session's, a node whose id starts with A's, B's. */
    raw_query(raw, "INSERT INTO mailboxes (name, password_hash, locked_until, created_at, updated_at, lock_owner)"
                   " VALUES ('ma', 'h', 9999999999, 1, 1, 'node-a/0123456789abcdef'),"
                   " ('mab', 'h', 9999999999, 1, 1, 'node-ab/0123456789abcdef'),"
                   " ('mb', 'h', 9999999999, 1, 1, 'node-b/0123456789abcdef')",
              got, sizeof got);
    accept_msg(a, 40);
    accept_msg(a, 41);
    CHECK(route_msg(a, 40, 1) == STORE_OK, "A accepts messages 40 and 41 and routes 40");
    claim_all(b, got, sizeof got);
    CHECK_STR(got, "", "B claims no delivery of A's");
    CHECK(store_release_claims(b, "node-a", &n, NULL) == STORE_OK && n.deliveries == 1 && n.messages == 1 &&
              n.mailboxes == 1,
          "A's claims released (its next run does this): 1 delivery, 1 message, 1 maildrop lock (%lld, %lld, %lld)",
          (long long)n.deliveries, (long long)n.messages, (long long)n.mailboxes);
    raw_query(raw, "SELECT string_agg(name || '=' || lock_owner, ',' ORDER BY name) FROM mailboxes", got, sizeof got);
    CHECK_STR(got, "ma=,mab=node-ab/0123456789abcdef,mb=node-b/0123456789abcdef",
              "only the locks of A's sessions (not node-ab's, not B's)");
    claim_all(b, got, sizeof got);
    CHECK_STR(got, "d40-0", "B claims the delivery at once");
    claim_messages(b, got, sizeof got);
    CHECK_STR(got, "m00000000000000000000041", "and the unrouted message");
}

/* One sweeper at a time. */
static void test_sweep_lock(struct store *a, struct store *b)
{
    char out[16];
    struct store_sweep_result r;
    char *err = NULL;
    enum store_status rc;

    rc = store_test_writer_query(a, "SELECT pg_advisory_lock(" STORE_PG_SWEEP_LOCK ")::text", out,
                                 sizeof out);
    CHECK(rc == STORE_OK, "A holds the sweeper's lock");
    rc = store_sweep(b, 2000000000, 3600, 3600, 100, &r, &err);
    CHECK(rc == STORE_OK && r.skipped, "B's sweep is skipped while A holds the lock (%s)",
          err ? err : "ok");
    free(err);
    err = NULL;
    rc = store_sweep(a, 2000000000, 3600, 3600, 100, &r, &err);
    CHECK(rc == STORE_OK && !r.skipped, "A's own sweep runs (%s)", err ? err : "ok");
    free(err);
    err = NULL;
    store_test_writer_query(a, "SELECT pg_advisory_unlock(" STORE_PG_SWEEP_LOCK ")::text", out,
                            sizeof out);
    rc = store_sweep(b, 2000000000, 3600, 3600, 100, &r, &err);
    CHECK(rc == STORE_OK && !r.skipped, "B sweeps once the lock is free (%s)", err ? err : "ok");
    free(err);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* SQLite: one node; the claim is the due read (nothing written), a renewal always holds. */
static void test_sqlite_in_process(void)
{
    char tmpl[] = "/tmp/inlet-claims-XXXXXX";
    char *dir = mkdtemp(tmpl);
    struct store *st;
    char got[256], again[256];

    if (!dir) exit(1);
    st = open_node(dir, NULL, "solo");
    CHECK(!store_claims_shared(st), "SQLite: claims are in-process");
    accept_msg(st, 1);
    route_msg(st, 1, 2);
    claim_all(st, got, sizeof got);
    claim_all(st, again, sizeof again);
    CHECK_STR(got, "d1-0,d1-1", "SQLite: a claim lists the due deliveries");
    CHECK_STR(again, got, "SQLite: and again (the deliverer's set is the claim)");
    CHECK(renew_one(st, "d1-0"), "SQLite: a renewal holds");
    CHECK(attempt(st, "d1-0") == STORE_OK, "SQLite: the attempt is recorded");
    store_close(st);
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    struct store *a, *b;
    PGconn *raw;

    log_set_level(getenv("INLET_TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR);
    test_sqlite_in_process();
    pg_url = getenv("INLET_TEST_PG_URL");
    if (!pg_url || !*pg_url) {
        printf("# SKIP the PostgreSQL cases: INLET_TEST_PG_URL is not set\n");
        return check_done();
    }
    printf("# backend: PostgreSQL %s\n", pg_url);
    reset_database();
    a = open_node(NULL, pg_url, "node-a");
    b = open_node(NULL, pg_url, "node-b");
    raw = raw_open();
    CHECK(store_claims_shared(a) && !strcmp(store_node_id(a), "node-a"), "PostgreSQL: claims shared");
    test_delivery_lease(a, b, raw);
    test_concurrent_claims(a, b, raw);
    test_skip_locked(b, raw);
    test_message_claims(a, b, raw);
    test_release(a, b, raw);
    test_sweep_lock(a, b);
    PQfinish(raw);
    store_close(b);
    store_close(a);
    return check_done();
}
