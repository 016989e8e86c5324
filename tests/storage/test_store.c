/* tests/storage/test_store.c — storage/: files and modes, PRAGMAs, schema versions, URLs, group
 * commit from several threads (rows read back byte for byte with sqlite3), draining on close,
 * per-message and per-batch failures, a read-only database, a full disk.
 *
 * Every case gets its own directory under /tmp, removed afterwards.  The read-only and disk-full
 * cases need a private mount namespace (tmpfs, read-only bind) and run in a child process; without
 * the privilege for it they are skipped with the reason. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "storage/backend.h"
#include "storage/store.h"
#include "util/log.h"

/* ---- helpers -------------------------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static char *tmpdir_new(void)
{
    char *dir = strdup("/tmp/inlet-store-test-XXXXXX");

    if (!dir || !mkdtemp(dir)) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        exit(1);
    }
    return dir;
}

static void tmpdir_free(char *dir)
{
    chmod(dir, 0700);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static char *join(const char *a, const char *b)
{
    char *out;

    if (asprintf(&out, "%s/%s", a, b) < 0) exit(1);
    return out;
}

/* A result slot per message; the callback fills it and wakes the waiter. */
struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int called;
};

struct slot {
    struct waiter *w;
    int status;
    int calls;
};

static void waiter_init(struct waiter *w)
{
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->called = 0;
}

static void waiter_destroy(struct waiter *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void on_done(void *arg, enum store_status status, struct store_message *msg)
{
    store_free_message(msg);
    struct slot *s = arg;

    pthread_mutex_lock(&s->w->mu);
    s->status = status;
    s->calls++;
    s->w->called++;
    pthread_cond_broadcast(&s->w->cv);
    pthread_mutex_unlock(&s->w->mu);
}

/* Waits until `n` callbacks ran, at most `seconds`. */
static bool waiter_wait(struct waiter *w, int n, int seconds)
{
    struct timespec until;
    bool ok = true;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    pthread_mutex_lock(&w->mu);
    while (w->called < n && ok) ok = pthread_cond_timedwait(&w->cv, &w->mu, &until) == 0;
    ok = w->called >= n;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);

    if (!d) exit(1);
    return d;
}

static void make_id(char id[ID_LEN + 1], unsigned a, unsigned b)
{
    snprintf(id, ID_LEN + 1, "%08x%016x", a, b);
}

static size_t body_len(unsigned a, unsigned b)
{
    return (a * 7919u + b * 104729u) % 6000u + (b % 5 == 0 ? 0 : 1) * 10;
}

static uint8_t body_byte(unsigned a, unsigned b, size_t k)
{
    return (uint8_t)(k * 31u + a * 7u + b); /* includes NUL bytes */
}

static const char *const rcpt_fixed[] = {"a\"b\\c\x01\t@example.com", "\xc3\xbc@example.com"};

static struct store_message *make_msg(unsigned a, unsigned b, size_t len)
{
    struct store_message *m = calloc(1, sizeof *m);

    if (!m) exit(1);
    make_id(m->id, a, b);
    m->received_at_ms = 1700000000000LL + a * 100000LL + b;
    m->sender = xstrdup(b % 3 == 0 ? "" : "sender@example.org");
    m->nrcpts = 3;
    m->rcpts = calloc(3, sizeof *m->rcpts);
    if (!m->rcpts) exit(1);
    if (asprintf(&m->rcpts[0], "u%u.%u@example.com", a, b) < 0) exit(1);
    m->rcpts[1] = xstrdup(rcpt_fixed[0]);
    m->rcpts[2] = xstrdup(rcpt_fixed[1]);
    m->remote_ip = xstrdup("192.0.2.7");
    m->helo = xstrdup("mx.example.org");
    m->tls = xstrdup(b % 2 ? "TLSv1.3:TLS_AES_256_GCM_SHA384" : "none");
    m->len = len;
    if (len) {
        m->data = malloc(len);
        if (!m->data) exit(1);
        for (size_t k = 0; k < len; k++) m->data[k] = body_byte(a, b, k);
    }
    return m;
}

/* Checks one row against what make_msg(a, b, len) wrote.  Returns a description of the first
 * difference, or NULL. */
static const char *row_differs(sqlite3 *db, unsigned a, unsigned b, size_t len)
{
    static char why[128];
    char id[ID_LEN + 1], want_rcpts[256];
    sqlite3_stmt *s = NULL;
    const char *res = NULL;

    make_id(id, a, b);
    snprintf(want_rcpts, sizeof want_rcpts,
             "[\"u%u.%u@example.com\",\"a\\\"b\\\\c\\u0001\\t@example.com\",\"\xc3\xbc@example.com\"]",
             a, b);
    if (sqlite3_prepare_v2(db,
                           "SELECT received_at, sender, recipients, remote_ip, helo, tls, size, raw,"
                           " state FROM messages WHERE id = ?1",
                           -1, &s, NULL) != SQLITE_OK)
        return "prepare";
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) {
        res = "no row";
        goto out;
    }
    const void *raw = sqlite3_column_blob(s, 7);
    size_t rawlen = (size_t)sqlite3_column_bytes(s, 7);
    if (sqlite3_column_int64(s, 0) != 1700000000000LL + a * 100000LL + b) res = "received_at";
    else if (strcmp((const char *)sqlite3_column_text(s, 1), b % 3 == 0 ? "" : "sender@example.org"))
        res = "sender";
    else if (strcmp((const char *)sqlite3_column_text(s, 2), want_rcpts)) res = "recipients";
    else if (strcmp((const char *)sqlite3_column_text(s, 3), "192.0.2.7")) res = "remote_ip";
    else if (strcmp((const char *)sqlite3_column_text(s, 4), "mx.example.org")) res = "helo";
    else if (strcmp((const char *)sqlite3_column_text(s, 5),
                    b % 2 ? "TLSv1.3:TLS_AES_256_GCM_SHA384" : "none"))
        res = "tls";
    else if (sqlite3_column_int64(s, 6) != (sqlite3_int64)len) res = "size";
    else if (sqlite3_column_type(s, 7) != SQLITE_BLOB) res = "raw is not a blob";
    else if (rawlen != len) res = "raw length";
    else if (strcmp((const char *)sqlite3_column_text(s, 8), "accepted")) res = "state";
    else {
        for (size_t k = 0; k < len && !res; k++)
            if (((const uint8_t *)raw)[k] != body_byte(a, b, k)) {
                snprintf(why, sizeof why, "raw byte %zu", k);
                res = why;
            }
    }
out:
    sqlite3_finalize(s);
    return res;
}

static sqlite3 *raw_open(const char *path)
{
    sqlite3 *db = NULL;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static bool raw_query(sqlite3 *db, const char *sql, char *out, size_t outsz)
{
    sqlite3_stmt *s = NULL;
    bool ok = false;

    out[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return false;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        snprintf(out, outsz, "%s", t ? (const char *)t : "");
        ok = true;
    } else if (rc == SQLITE_DONE) {
        ok = true;
    }
    sqlite3_finalize(s);
    return ok;
}

static bool starts_with(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---- cases ---------------------------------------------------------------------------------- */

static void test_json(void)
{
    static const struct {
        const char *in[3];
        size_t n;
        const char *want;
    } cases[] = {
        {.in = {NULL}, .n = 0, .want = "[]"},
        {.in = {"a@b.example"}, .n = 1, .want = "[\"a@b.example\"]"},
        {.in = {"x\"y", "back\\slash", ""}, .n = 3, .want = "[\"x\\\"y\",\"back\\\\slash\",\"\"]"},
        {.in = {"\n\r\t\b\f\x01\x1f\x7f"}, .n = 1, .want = "[\"\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f\"]"},
        {.in = {"\xe2\x82\xac@\xc3\xa9.example"}, .n = 1, .want = "[\"\xe2\x82\xac@\xc3\xa9.example\"]"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = store_json_string_array(cases[i].in, cases[i].n);
        CHECK_STR(got, cases[i].want, "json array case %zu", i);
        free(got);
    }
}

static void test_open_modes_pragmas(void)
{
    char *tmp = tmpdir_new(), *data = join(tmp, "data"), *dbpath = join(data, "inlet.db");
    char *err = NULL, buf[64];
    struct stat sb;
    mode_t old = umask(0277); /* would strip owner bits: modes must not depend on it */
    struct store *st = store_open(data, NULL, &err);

    umask(old);
    CHECK(st != NULL, "open a new data dir (%s)", err ? err : "ok");
    if (!st) goto out;
    CHECK(stat(data, &sb) == 0 && (sb.st_mode & 07777) == 0700, "data dir is 0700 (%o)",
          (unsigned)(sb.st_mode & 07777));
    CHECK(stat(dbpath, &sb) == 0 && (sb.st_mode & 07777) == 0600, "database is 0600 (%o)",
          (unsigned)(sb.st_mode & 07777));
    char *wal = join(data, "inlet.db-wal"), *shm = join(data, "inlet.db-shm");
    CHECK(stat(wal, &sb) == 0 && (sb.st_mode & 07777) == 0600, "WAL file is 0600");
    CHECK(stat(shm, &sb) == 0 && (sb.st_mode & 07777) == 0600, "shm file is 0600");
    free(wal);
    free(shm);
    CHECK_STR(store_path(st), dbpath, "store_path");
    CHECK(starts_with(store_backend_name(st), "sqlite 3."), "backend name \"%s\"",
          store_backend_name(st));

    static const struct {
        const char *sql, *want;
    } pragmas[] = {
        {"PRAGMA journal_mode", "wal"},
        {"PRAGMA synchronous", "2"},
        {"PRAGMA auto_vacuum", "2"},
        {"PRAGMA busy_timeout", "5000"},
        {"PRAGMA journal_size_limit", "67108864"},
        {"PRAGMA foreign_keys", "1"},
    };
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++) {
        int rc = store_test_writer_query(st, pragmas[i].sql, buf, sizeof buf);
        CHECK(rc == 0, "writer: %s runs", pragmas[i].sql);
        CHECK_STR(buf, pragmas[i].want, "writer: %s", pragmas[i].sql);
    }

    /* (CHECK evaluates its condition twice on failure: side effects go before it.) */
    sqlite3 *db = raw_open(dbpath);
    bool q = db && raw_query(db, "PRAGMA journal_mode", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "wal"), "another connection sees journal_mode wal (%s)", buf);
    char want[16];
    snprintf(want, sizeof want, "%d", store_schema_version());
    q = db && raw_query(db, "SELECT value FROM meta WHERE key = 'schema_version'", buf, sizeof buf);
    CHECK(q && !strcmp(buf, want), "meta.schema_version is %s (%s)", want, buf);
    q = db && raw_query(db, "SELECT count(*) FROM messages", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "0"), "messages table exists and is empty");
    sqlite3_close(db);

    char *reason = NULL;
    int rc = store_check_writable(st, &reason);
    CHECK(rc == 0, "fresh store is writable (%s)", reason ? reason : "ok");
    free(reason);
    int64_t n = -1;
    rc = store_count_unprocessed(st, &n);
    CHECK(rc == 0 && n == 0, "nothing unprocessed");
    store_close(st);

    /* Opening again keeps the directory and the file as they are. */
    chmod(data, 0750);
    st = store_open(data, "", &err);
    CHECK(st != NULL, "reopen with database \"\"");
    CHECK(stat(data, &sb) == 0 && (sb.st_mode & 07777) == 0750, "existing dir left as it is");
    store_close(st);
out:
    free(err);
    free(dbpath);
    free(data);
    tmpdir_free(tmp);
}

static void test_urls(void)
{
    char *tmp = tmpdir_new(), *data = join(tmp, "data"), *other = join(tmp, "other.db");
    char *url, *err = NULL;
    struct store *st;
    struct stat sb;

    st = store_open(data, "postgresql://inlet@db.example/inlet", &err);
    CHECK(!st, "postgresql URL refused");
    CHECK_STR(err, "PostgreSQL backend is not available in this build yet", "postgresql message");
    free(err);
    err = NULL;

    st = store_open(data, "mysql://db.example/inlet", &err);
    CHECK(!st && err && strstr(err, "mysql://db.example/inlet"), "unknown URL named (%s)",
          err ? err : "(null)");
    free(err);
    err = NULL;

    st = store_open(data, "sqlite:", &err);
    CHECK(!st && err, "sqlite: without a path refused (%s)", err ? err : "(null)");
    free(err);
    err = NULL;

    if (asprintf(&url, "sqlite:%s", other) < 0) exit(1);
    st = store_open(data, url, &err);
    CHECK(st != NULL, "sqlite:PATH opens (%s)", err ? err : "ok");
    CHECK(st && !strcmp(store_path(st), other), "sqlite:PATH path");
    CHECK(stat(other, &sb) == 0 && (sb.st_mode & 07777) == 0600, "sqlite:PATH file is 0600");
    CHECK(stat(data, &sb) == 0 && S_ISDIR(sb.st_mode), "data dir created with sqlite:PATH too");
    store_close(st);
    free(url);
    free(err);
    free(other);
    free(data);
    tmpdir_free(tmp);
}

static void test_newer_schema(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, want[128];
    struct store *st = store_open(tmp, NULL, &err);

    CHECK(st != NULL, "open");
    store_close(st);
    sqlite3 *db = raw_open(dbpath);
    int rc = db ? sqlite3_exec(db, "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                               NULL, NULL, NULL)
                : SQLITE_CANTOPEN;
    CHECK(rc == SQLITE_OK, "set schema_version 99");
    sqlite3_close(db);

    st = store_open(tmp, NULL, &err);
    snprintf(want, sizeof want,
             "database schema version 99 is newer than this inlet supports (%d); upgrade inlet",
             store_schema_version());
    CHECK(!st, "newer schema refused");
    CHECK_STR(err, want, "newer schema message");
    store_close(st);
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

#define THREADS 4
#define PER_THREAD 250

struct producer {
    struct store *st;
    unsigned a;
    struct slot slots[PER_THREAD];
};

static void *produce(void *arg)
{
    struct producer *p = arg;

    for (unsigned b = 0; b < PER_THREAD; b++)
        store_accept(p->st, make_msg(p->a, b, body_len(p->a, b)), on_done, &p->slots[b]);
    return NULL;
}

static void test_group_commit(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL;
    static struct producer prod[THREADS];
    pthread_t th[THREADS];
    struct waiter w;
    struct store_stats stats;
    struct store *st = store_open(tmp, NULL, &err);
    int ok = 0, once = 0;

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    for (unsigned t = 0; t < THREADS; t++) {
        prod[t].st = st;
        prod[t].a = t;
        for (unsigned b = 0; b < PER_THREAD; b++) prod[t].slots[b] = (struct slot){.w = &w};
        pthread_create(&th[t], NULL, produce, &prod[t]);
    }
    for (unsigned t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    bool all = waiter_wait(&w, THREADS * PER_THREAD, 60);
    CHECK(all, "every callback ran");
    for (unsigned t = 0; t < THREADS; t++)
        for (unsigned b = 0; b < PER_THREAD; b++) {
            ok += prod[t].slots[b].status == STORE_OK;
            once += prod[t].slots[b].calls == 1;
        }
    CHECK(ok == THREADS * PER_THREAD, "all STORE_OK (%d)", ok);
    CHECK(once == THREADS * PER_THREAD, "each callback exactly once (%d)", once);
    store_get_stats(st, &stats);
    CHECK(stats.messages == THREADS * PER_THREAD, "stats.messages %llu",
          (unsigned long long)stats.messages);
    CHECK(stats.batches >= 1 && stats.batches < THREADS * PER_THREAD,
          "batches %llu < messages %d", (unsigned long long)stats.batches, THREADS * PER_THREAD);
    CHECK(stats.failed_batches == 0, "no failed batch");
    uint64_t bytes = 0;
    for (unsigned t = 0; t < THREADS; t++)
        for (unsigned b = 0; b < PER_THREAD; b++) bytes += body_len(t, b);
    CHECK(stats.bytes == bytes, "stats.bytes %llu", (unsigned long long)stats.bytes);

    /* Read back while the store is open (another connection, as an operator would). */
    sqlite3 *db = raw_open(dbpath);
    const char *diff = NULL;
    unsigned bad_a = 0, bad_b = 0;
    for (unsigned t = 0; t < THREADS && !diff; t++)
        for (unsigned b = 0; b < PER_THREAD && !diff; b++)
            if ((diff = row_differs(db, t, b, body_len(t, b)))) bad_a = t, bad_b = b;
    CHECK(!diff, "rows byte for byte (%s at %u.%u)", diff ? diff : "none", bad_a, bad_b);
    sqlite3_close(db);
    store_close(st);
    waiter_destroy(&w);

    st = store_open(tmp, NULL, &err);
    int64_t n = -1;
    int rc = st ? store_count_unprocessed(st, &n) : -1;
    CHECK(rc == 0 && n == THREADS * PER_THREAD, "reopen: count_unprocessed %lld", (long long)n);
    store_close(st);
out:
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

static void test_close_drains(void)
{
    enum { N = 300 };
    char *tmp = tmpdir_new(), *err = NULL;
    static struct slot slots[N];
    struct waiter w;
    struct store *st = store_open(tmp, NULL, &err);
    int ok = 0;

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    for (unsigned b = 0; b < N; b++) {
        slots[b] = (struct slot){.w = &w};
        store_accept(st, make_msg(9, b, 100000), on_done, &slots[b]);
    }
    store_close(st); /* with most of them still queued */
    CHECK(w.called == N, "close ran every callback (%d)", w.called);
    for (unsigned b = 0; b < N; b++) ok += slots[b].status == STORE_OK && slots[b].calls == 1;
    CHECK(ok == N, "all committed (%d)", ok);
    waiter_destroy(&w);

    st = store_open(tmp, NULL, &err);
    int64_t n = -1;
    int rc = st ? store_count_unprocessed(st, &n) : -1;
    CHECK(rc == 0 && n == N, "all there after reopen (%lld)", (long long)n);
    store_close(st);
out:
    free(err);
    tmpdir_free(tmp);
}

static void test_failures(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, *reason = NULL;
    struct slot s[5];
    struct waiter w;
    struct store_stats stats;
    struct store *st = store_open(tmp, NULL, &err);

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    for (int i = 0; i < 5; i++) s[i] = (struct slot){.w = &w, .status = 99};

    /* A duplicate id fails that message only. */
    store_accept(st, make_msg(7, 1, 10), on_done, &s[0]);
    store_accept(st, make_msg(7, 1, 20), on_done, &s[1]);
    store_accept(st, make_msg(7, 2, 30), on_done, &s[2]);
    bool got = waiter_wait(&w, 3, 30);
    CHECK(got, "three callbacks");
    CHECK(s[0].status == STORE_OK && s[1].status == STORE_ERR_IO && s[2].status == STORE_OK,
          "duplicate id: only that message fails (%d %d %d)", s[0].status, s[1].status,
          s[2].status);

    /* Someone else holds the write lock past the busy timeout: the batch fails, the probe says
     * so, and the next batch works. */
    sqlite3 *db = raw_open(dbpath);
    int rc = db ? sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) : SQLITE_CANTOPEN;
    CHECK(rc == SQLITE_OK, "hold the write lock");
    store_accept(st, make_msg(7, 3, 40), on_done, &s[3]);
    rc = store_check_writable(st, &reason);
    CHECK(rc < 0 && starts_with(reason, "database is not writable"), "locked: not writable (%s)",
          reason ? reason : "(null)");
    got = waiter_wait(&w, 4, 30);
    CHECK(got, "locked batch answered");
    CHECK(s[3].status == STORE_ERR_IO, "locked batch: STORE_ERR_IO (%d)", s[3].status);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    store_accept(st, make_msg(7, 4, 50), on_done, &s[4]);
    got = waiter_wait(&w, 5, 30);
    CHECK(got && s[4].status == STORE_OK, "next batch commits (%d)", s[4].status);
    store_get_stats(st, &stats);
    CHECK(stats.failed_batches == 1 && stats.messages == 3, "stats: failed %llu messages %llu",
          (unsigned long long)stats.failed_batches, (unsigned long long)stats.messages);
    int64_t n = -1;
    rc = store_count_unprocessed(st, &n);
    CHECK(rc == 0 && n == 3, "three rows (%lld)", (long long)n);
    store_close(st);
    waiter_destroy(&w);
out:
    free(reason);
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

/* ---- meta rows and jobs -------------------------------------------------------------------- */

static void test_meta(void)
{
    char *tmp = tmpdir_new(), *err = NULL, *v = NULL, *winner = NULL;
    char *other = join(tmp, "other");

    CHECK(!store_exists(tmp, NULL), "store_exists: not before the first open");
    CHECK(!store_exists(NULL, "sqlite:/nonexistent/dir/x.db"), "store_exists: sqlite URL, no file");
    struct store *st = store_open(tmp, NULL, &err);
    CHECK(st != NULL, "open");
    if (!st) goto out;
    CHECK(store_exists(tmp, NULL), "store_exists after open");
    CHECK(store_get_meta(st, "api_key", &v) == -ENOENT && !v, "absent key: -ENOENT");
    CHECK(store_set_meta_if_absent(st, "api_key", "first", &winner) == 0, "set if absent");
    CHECK_STR(winner, "first", "the first value wins");
    free(winner);
    winner = NULL;
    CHECK(store_set_meta_if_absent(st, "api_key", "second", &winner) == 0, "set again");
    CHECK_STR(winner, "first", "a second writer gets the stored value");
    free(winner);
    winner = NULL;
    CHECK(store_get_meta(st, "api_key", &v) == 0, "get");
    CHECK_STR(v, "first", "get reads the stored value");
    free(v);
    v = NULL;
    CHECK(store_get_meta(st, "schema_version", &v) == 0 && v && strtol(v, NULL, 10) == store_schema_version(),
          "schema_version is a meta row too");
    free(v);
    v = NULL;
    store_close(st);

    st = store_open(tmp, NULL, &err);
    CHECK(st && store_get_meta(st, "api_key", &v) == 0, "get after reopen");
    CHECK_STR(v, "first", "durable across reopen");
    free(v);
    v = NULL;
    store_close(st);
out:
    free(err);
    free(other);
    tmpdir_free(tmp);
}

/* Test jobs: one that sleeps (holding the writer so that what comes next forms one batch), one
 * that fails after writing (its write must be rolled back), one that writes a meta row. */
static int job_sleep(const struct store_backend *ops, void *be, void *arg, char **err)
{
    struct timespec ts = {0, 300 * 1000 * 1000};

    nanosleep(&ts, NULL);
    return 0;
}

static int job_fail(const struct store_backend *ops, void *be, void *arg, char **err)
{
    char *w = NULL;

    if (ops->meta_set_if_absent(be, "job_fail_wrote", "x", &w, err) == 0) free(w);
    *err = strdup("this job fails on purpose");
    return -1;
}

static int job_ok(const struct store_backend *ops, void *be, void *arg, char **err)
{
    char *w = NULL;
    int rc = ops->meta_set_if_absent(be, "job_ok_wrote", "y", &w, err);

    free(w);
    return rc;
}

struct job_thread {
    struct store *st;
    struct store_job job;
    pthread_t t;
};

static void *job_thread_main(void *arg)
{
    struct job_thread *j = arg;

    store_run_job(j->st, &j->job);
    return NULL;
}

static void test_jobs_savepoint(void)
{
    char *tmp = tmpdir_new(), *err = NULL, *v = NULL;
    struct store *st = store_open(tmp, NULL, &err);
    struct job_thread j[3] = {
        {.job = {.run = job_sleep}}, {.job = {.run = job_fail}}, {.job = {.run = job_ok}}};
    struct slot s[4];
    struct waiter w;
    struct store_stats before, after;
    struct timespec ts = {0, 50 * 1000 * 1000};

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    for (int i = 0; i < 4; i++) s[i] = (struct slot){.w = &w, .status = 99};
    for (int i = 0; i < 3; i++) j[i].st = st;
    pthread_create(&j[0].t, NULL, job_thread_main, &j[0]);
    nanosleep(&ts, NULL); /* the writer is now inside job_sleep */
    store_get_stats(st, &before);
    store_accept(st, make_msg(11, 1, 10), on_done, &s[0]);
    store_accept(st, make_msg(11, 2, 10), on_done, &s[1]);
    pthread_create(&j[1].t, NULL, job_thread_main, &j[1]);
    pthread_create(&j[2].t, NULL, job_thread_main, &j[2]);
    nanosleep(&ts, NULL);
    store_accept(st, make_msg(11, 3, 10), on_done, &s[2]);
    for (int i = 0; i < 3; i++) pthread_join(j[i].t, NULL);
    CHECK(waiter_wait(&w, 3, 30), "message callbacks");
    store_get_stats(st, &after);
    CHECK(j[0].job.status == STORE_OK, "sleeping job ok");
    CHECK(after.batches - before.batches == 2, "the messages and jobs queued meanwhile formed one "
          "batch (%llu batches)", (unsigned long long)(after.batches - before.batches));
    CHECK(j[1].job.status == STORE_ERR_IO && j[1].job.err &&
              !strcmp(j[1].job.err, "this job fails on purpose"),
          "failing job: its error (%s)", j[1].job.err ? j[1].job.err : "(null)");
    CHECK(j[2].job.status == STORE_OK && !j[2].job.err, "the job after it commits");
    CHECK(s[0].status == STORE_OK && s[1].status == STORE_OK && s[2].status == STORE_OK,
          "the messages of the same batch commit (%d %d %d)", s[0].status, s[1].status,
          s[2].status);
    CHECK(store_get_meta(st, "job_fail_wrote", &v) == -ENOENT, "the failing job's write rolled back");
    free(v);
    v = NULL;
    CHECK(store_get_meta(st, "job_ok_wrote", &v) == 0, "the other job's write is there");
    CHECK_STR(v, "y", "its value");
    free(v);
    free(j[1].job.err);
    free(j[2].job.err);
    free(j[0].job.err);
    int64_t n = -1;
    CHECK(store_count_unprocessed(st, &n) == 0 && n == 3, "three messages (%lld)", (long long)n);
    store_close(st);
    waiter_destroy(&w);
out:
    free(err);
    tmpdir_free(tmp);
}

/* Root ignores file modes; dropping the capabilities that let it (for this thread only, from the
 * effective set, so they can be taken back) makes the chmod count. */
static int set_dac_caps(bool on)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    const unsigned mask = (1u << CAP_DAC_OVERRIDE) | (1u << CAP_DAC_READ_SEARCH) | (1u << CAP_FOWNER);

    if (syscall(SYS_capget, &hdr, data) < 0) return -1;
    if (on)
        data[0].effective |= mask & data[0].permitted;
    else
        data[0].effective &= ~mask;
    return (int)syscall(SYS_capset, &hdr, data);
}

static void test_readonly_modes(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, *reason = NULL;
    struct store *st = store_open(tmp, NULL, &err);
    bool root = geteuid() == 0;

    CHECK(st != NULL, "open");
    if (!st) goto out;
    if (root && set_dac_caps(false) < 0) {
        printf("ok %d - # SKIP read-only modes: cannot drop CAP_DAC_OVERRIDE: %s\n", ++check_count,
               strerror(errno));
        store_close(st);
        goto out;
    }
    chmod(dbpath, 0400);
    chmod(tmp, 0500);
    int rc = store_check_writable(st, &reason);
    CHECK(rc < 0 && starts_with(reason, "database is not writable"),
          "file 0400, dir 0500: not writable (%s)", reason ? reason : "(null)");
    free(reason);
    reason = NULL;
    store_close(st);
    st = store_open(tmp, NULL, &err);
    CHECK(!st && err, "open a read-only database fails (%s)", err ? err : "(opened)");
    store_close(st);
    chmod(tmp, 0700);
    chmod(dbpath, 0600);
    if (root) set_dac_caps(true);
out:
    free(reason);
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

/* ---- cases in a private mount namespace (child process) -------------------------------------- */

#define CHILD_SKIP 77

static int child_fail(const char *what, const char *detail)
{
    printf("# child: %s: %s\n", what, detail ? detail : "");
    fflush(stdout);
    return 1;
}

static int mount_tmpfs(const char *dir, const char *opts)
{
    if (unshare(CLONE_NEWNS) < 0) return -1;
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return -1;
    return mount("tmpfs", dir, "tmpfs", 0, opts);
}

static int child_readonly_mount(const char *tmp)
{
    char *a = join(tmp, "a"), *b = join(tmp, "b"), *url, *err = NULL, *reason = NULL;
    struct store *st;
    int rc = 0;

    if (mount_tmpfs(tmp, "size=4m,mode=0700") < 0) return CHILD_SKIP;
    mkdir(b, 0700);
    st = store_open(a, NULL, &err);
    if (!st) return child_fail("open", err);
    store_close(st);
    if (mount(a, b, NULL, MS_BIND, NULL) < 0 ||
        mount(NULL, b, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
        return child_fail("read-only bind", strerror(errno));
    if (asprintf(&url, "sqlite:%s/inlet.db", b) < 0) return 1;
    st = store_open(b, url, &err);
    if (st) {
        /* If it opened, it must at least say it cannot write. */
        if (store_check_writable(st, &reason) == 0) rc = child_fail("read-only mount", "writable");
        store_close(st);
    } else {
        printf("# child: read-only mount refused: %s\n", err ? err : "(null)");
    }
    free(reason);
    free(url);
    free(err);
    free(a);
    free(b);
    return rc;
}

static int child_disk_full(const char *tmp)
{
    char *data = join(tmp, "data"), *filler = join(tmp, "filler"), *err = NULL, *reason = NULL;
    struct slot s[3];
    struct waiter w;
    struct store *st;
    static uint8_t chunk[65536];
    int fd, rc = 0;

    if (mount_tmpfs(tmp, "size=2m,mode=0700") < 0) return CHILD_SKIP;
    st = store_open(data, NULL, &err);
    if (!st) return child_fail("open", err);
    waiter_init(&w);
    for (int i = 0; i < 3; i++) s[i] = (struct slot){.w = &w, .status = 99};

    /* Fill the file system to the last block. */
    fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (size_t sz = sizeof chunk; fd >= 0 && sz > 0;) {
        if (write(fd, chunk, sz) < 0) sz /= 2;
    }
    close(fd);

    store_accept(st, make_msg(5, 1, 300000), on_done, &s[0]);
    if (!waiter_wait(&w, 1, 30)) rc = child_fail("full", "no callback");
    else if (s[0].status != STORE_ERR_FULL) rc = child_fail("full", "status is not STORE_ERR_FULL");
    if (store_check_writable(st, &reason) == 0) rc = child_fail("full", "check_writable says ok");
    else printf("# child: full: %s\n", reason);

    unlink(filler); /* space returns: accepting resumes by itself */
    store_accept(st, make_msg(5, 2, 300000), on_done, &s[1]);
    if (!waiter_wait(&w, 2, 30) || s[1].status != STORE_OK)
        rc = child_fail("after freeing space", "not STORE_OK");
    free(reason);
    reason = NULL;
    if (store_check_writable(st, &reason) < 0) rc = child_fail("after freeing space", reason);
    int64_t n = -1;
    if (store_count_unprocessed(st, &n) < 0 || n != 1) rc = child_fail("count", "not 1");
    store_close(st);
    waiter_destroy(&w);
    free(reason);
    free(err);
    free(data);
    free(filler);
    return rc;
}

static void run_child(const char *what, int (*fn)(const char *tmp))
{
    char *tmp = tmpdir_new();
    int status = 0;
    pid_t pid;

    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int rc = fn(tmp);

        fflush(stdout);
        _exit(rc);
    }
    if (pid < 0 || waitpid(pid, &status, 0) < 0) status = -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_SKIP)
        printf("ok %d - %s # SKIP no private mount namespace with tmpfs (needs CAP_SYS_ADMIN)\n",
               ++check_count, what);
    else
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", what);
    tmpdir_free(tmp);
}

int main(void)
{
    /* The commit log lines are part of what the black-box tests count; show them here too. */
    log_set_level(getenv("INLET_TEST_DEBUG") ? LOG_DEBUG : LOG_WARN);

    test_json();
    test_open_modes_pragmas();
    test_urls();
    test_newer_schema();
    test_group_commit();
    test_close_drains();
    test_failures();
    test_meta();
    test_jobs_savepoint();
    test_readonly_modes();
    run_child("read-only mount: open fails or reports not writable", child_readonly_mount);
    run_child("disk full: STORE_ERR_FULL, then accepting resumes", child_disk_full);
    return check_done();
}
