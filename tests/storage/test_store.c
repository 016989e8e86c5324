/* tests/storage/test_store.c — storage/: files and modes, PRAGMAs, schema versions and the
 * migrations 1 → 3 (with the one-time VACUUM to auto_vacuum=INCREMENTAL), URLs, group commit
 * from several threads (rows read back byte for byte with sqlite3), draining on close,
 * per-message and per-batch failures, routes, routing outcomes (atomic, idempotent, failing alone
 * in a batch), message loads, the checkpointer thread and its safety valve, a read-only database,
 * a full disk.  Deliveries, copies, events and retention: test_deliveries.c.
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
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "storage/internal.h"
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
/* The bytes of a row of `db` whose body is in the body log (<database>-bodies/<segment>):
 * malloc'd, or NULL when the file is missing or short or the CRC-32 differs from the row's. */
static uint8_t *log_body(sqlite3 *db, int64_t segment, int64_t offset, size_t len, uint32_t crc)
{
    char path[4096];
    uint8_t *buf = malloc(len ? len : 1);
    int fd;

    snprintf(path, sizeof path, "%s-bodies/%012lld", sqlite3_db_filename(db, "main"), (long long)segment);
    fd = open(path, O_RDONLY);
    if (!buf || fd < 0 || pread(fd, buf, len, (off_t)offset) != (ssize_t)len ||
        (uint32_t)crc32(0, buf, (uInt)len) != crc) {
        free(buf);
        buf = NULL;
    }
    if (fd >= 0) close(fd);
    return buf;
}

static const char *row_differs(sqlite3 *db, unsigned a, unsigned b, size_t len)
{
    static char why[128];
    char id[ID_LEN + 1], want_rcpts[256];
    sqlite3_stmt *s = NULL;
    const char *res = NULL;
    uint8_t *body = NULL;

    make_id(id, a, b);
    snprintf(want_rcpts, sizeof want_rcpts,
             "[\"u%u.%u@example.com\",\"a\\\"b\\\\c\\u0001\\t@example.com\",\"\xc3\xbc@example.com\"]",
             a, b);
    if (sqlite3_prepare_v2(db,
                           "SELECT received_at, sender, recipients, remote_ip, helo, tls, size, raw,"
                           " state, body_segment, body_offset, body_crc FROM messages WHERE id = ?1",
                           -1, &s, NULL) != SQLITE_OK)
        return "prepare";
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) {
        res = "no row";
        goto out;
    }
    /* The bytes are in the body log when the row says where (then raw is empty), else in raw. */
    const bool logged = sqlite3_column_type(s, 9) != SQLITE_NULL;
    body = logged ? log_body(db, sqlite3_column_int64(s, 9), sqlite3_column_int64(s, 10), len,
                               (uint32_t)sqlite3_column_int64(s, 11))
                    : NULL;
    const void *raw = logged ? body : sqlite3_column_blob(s, 7);
    size_t rawlen = logged ? (body ? len : 0) : (size_t)sqlite3_column_bytes(s, 7);
    if (logged && sqlite3_column_bytes(s, 7) != 0) res = "raw not empty beside a logged body";
    else if (logged && !body) res = "body log: missing, short or CRC mismatch";
    else if (len > 0 && !logged) res = "body not in the log";
    if (res) goto out;
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
    free(body);
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
        {"PRAGMA journal_size_limit", "16777216"},
        {"PRAGMA foreign_keys", "1"},
        /* docs/internals/storage.md, "What a message costs in writes": a new database has 1 KiB
         * pages, and statement journals stay in memory (2: MEMORY). */
        {"PRAGMA page_size", "1024"},
        {"PRAGMA temp_store", "2"},
    };
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++) {
        enum store_status rc = store_test_writer_query(st, pragmas[i].sql, buf, sizeof buf);
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
    enum store_status rc = store_check_writable(st, &reason);
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

    /* A PostgreSQL URL goes to the PostgreSQL backend; nobody listens on port 1 of loopback. */
    st = store_open(data, "postgresql://inlet:s3cret@127.0.0.1:1/inlet", &err);
    CHECK(!st && err && starts_with(err, "cannot connect to the database"),
          "postgresql URL: the server is tried (%s)", err ? err : "opened");
    CHECK(err && !strstr(err, "s3cret"), "... and the password is not in the message");
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
    CHECK(s[3].status == STORE_ERR_BUSY, "locked batch: STORE_ERR_BUSY (%d)", s[3].status);
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
    CHECK(store_get_meta(st, "api_key", &v) == STORE_ERR_NOT_FOUND && !v, "absent key: not found");
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
static enum store_status job_sleep(const struct store_backend *ops, void *be, void *arg,
                                   char **err)
{
    struct timespec ts = {0, 300 * 1000 * 1000};

    nanosleep(&ts, NULL);
    return STORE_OK;
}

static enum store_status job_fail(const struct store_backend *ops, void *be, void *arg, char **err)
{
    char *w = NULL;

    if (ops->meta_set_if_absent(be, "job_fail_wrote", "x", &w, err) == STORE_OK) free(w);
    *err = strdup("this job fails on purpose");
    return STORE_ERR_IO;
}

static enum store_status job_ok(const struct store_backend *ops, void *be, void *arg, char **err)
{
    char *w = NULL;
    enum store_status rc = ops->meta_set_if_absent(be, "job_ok_wrote", "y", &w, err);

    free(w);
    return rc;
}

struct job_thread {
    struct store *st;
    struct store_job job;
    enum store_status status;
    char *err;
    pthread_t t;
};

static void *job_thread_main(void *arg)
{
    struct job_thread *j = arg;

    j->status = store_run_job(j->st, &j->job, &j->err);
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
    CHECK(j[0].status == STORE_OK, "sleeping job ok");
    CHECK(after.batches - before.batches == 2, "the messages and jobs queued meanwhile formed one "
          "batch (%llu batches)", (unsigned long long)(after.batches - before.batches));
    CHECK(j[1].status == STORE_ERR_IO && j[1].err &&
              !strcmp(j[1].err, "this job fails on purpose"),
          "failing job: its error (%s)", j[1].err ? j[1].err : "(null)");
    CHECK(j[2].status == STORE_OK && !j[2].err, "the job after it commits");
    CHECK(s[0].status == STORE_OK && s[1].status == STORE_OK && s[2].status == STORE_OK,
          "the messages of the same batch commit (%d %d %d)", s[0].status, s[1].status,
          s[2].status);
    CHECK(store_get_meta(st, "job_fail_wrote", &v) == STORE_ERR_NOT_FOUND,
          "the failing job's write rolled back");
    free(v);
    v = NULL;
    CHECK(store_get_meta(st, "job_ok_wrote", &v) == STORE_OK, "the other job's write is there");
    CHECK_STR(v, "y", "its value");
    free(v);
    free(j[1].err);
    free(j[2].err);
    free(j[0].err);
    int64_t n = -1;
    CHECK(store_count_unprocessed(st, &n) == 0 && n == 3, "three messages (%lld)", (long long)n);
    store_close(st);
    waiter_destroy(&w);
out:
    free(err);
    tmpdir_free(tmp);
}

/* ---- JSON arrays read back ------------------------------------------------------------------ */

static void test_json_parse(void)
{
    static const char *const round[][4] = {
        {"a@b.example", NULL},
        {"x\"y", "back\\slash", "", NULL},
        {"\n\r\t\b\f\x01\x1f\x7f", "\xe2\x82\xac@\xc3\xa9.example", "\xff\xfe raw bytes", NULL},
        {"forward(\"http://h.example/\\1?a=b&c\")", "stop()", NULL},
    };
    for (size_t i = 0; i < sizeof round / sizeof round[0]; i++) {
        size_t n = 0, got_n = 99;
        char **got = NULL;

        while (round[i][n]) n++;
        char *json = store_json_string_array(round[i], n);
        enum store_status rc = store_json_parse_string_array(json, &got, &got_n);
        bool same = rc == 0 && got_n == n;
        for (size_t k = 0; same && k < n; k++) same = !strcmp(got[k], round[i][k]);
        CHECK(same, "json round trip case %zu (%s)", i, json);
        for (size_t k = 0; rc == 0 && k < got_n; k++) free(got[k]);
        free(got);
        free(json);
    }

    static const struct {
        const char *in;
        size_t n;
        const char *first, *last;
    } ok[] = {
        {"[]", 0, NULL, NULL},
        {" [ ] ", 0, NULL, NULL},
        {" [ \"a\" ,\t\"b\"\n] ", 2, "a", "b"},
        {"[\"\\/\\u00e9\\u20AC\\ud83d\\ude00\"]", 1, "/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", NULL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char **got = NULL;
        size_t n = 99;
        enum store_status rc = store_json_parse_string_array(ok[i].in, &got, &n);

        char *shown = g_strescape(ok[i].in, NULL); /* one TAP line: no raw newlines */
        CHECK(rc == 0 && n == ok[i].n && (n == 0) == (got == NULL), "json parse ok %zu: %s", i,
              shown);
        g_free(shown);
        if (rc == 0 && n && ok[i].first) CHECK_STR(got[0], ok[i].first, "json parse %zu first", i);
        if (rc == 0 && n > 1 && ok[i].last) CHECK_STR(got[n - 1], ok[i].last, "json parse %zu last", i);
        for (size_t k = 0; rc == 0 && k < n; k++) free(got[k]);
        free(got);
    }

    static const char *const bad[] = {
        "", "[", "]", "[\"a\"", "[\"a\",]", "[,]", "[\"a\" \"b\"]", "[\"a\"] x", "[1]",
        "[\"\\u0000\"]", "[\"\\ud800\"]", "[\"\\udc00\"]", "[\"\\ud800\\u0041\"]", "[\"\\x41\"]",
        "[\"\\u12\"]", "[\"raw\ncontrol\"]", "{\"a\":1}", "[\"a\\",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char **got = (char **)1;
        size_t n = 99;
        enum store_status rc = store_json_parse_string_array(bad[i], &got, &n);

        char *shown = g_strescape(bad[i], NULL);
        CHECK(rc == STORE_ERR_IO && !got && n == 0, "json parse refuses %zu: %s", i, shown);
        g_free(shown);
    }
    char **got = NULL;
    size_t n = 0;
    CHECK(store_json_parse_string_array(NULL, &got, &n) == STORE_ERR_IO, "json parse refuses NULL");
}

/* ---- migrations ----------------------------------------------------------------------------- */

/* The schema of version 1 exactly as released (migrations.c step 1). */
static const char v1_schema[] =
    "PRAGMA journal_mode = WAL;"
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE messages (id TEXT PRIMARY KEY, received_at INTEGER NOT NULL,"
    " sender TEXT NOT NULL, recipients TEXT NOT NULL, remote_ip TEXT NOT NULL,"
    " helo TEXT NOT NULL, tls TEXT NOT NULL, size INTEGER NOT NULL, raw BLOB NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'accepted');"
    "CREATE INDEX messages_accepted ON messages (received_at) WHERE state = 'accepted';"
    "INSERT INTO meta VALUES ('schema_version', '1'), ('api_key', 'k1');"
    "INSERT INTO messages (id, received_at, sender, recipients, remote_ip, helo, tls, size, raw)"
    " VALUES ('0000000100000000000000aa', 1700000000000, 'old@example.org',"
    " '[\"a@example.com\",\"b\\\"q@example.com\"]', '192.0.2.1', 'mx', 'none', 3, x'00ff41');";

/* Column names of `table` joined by commas (PRAGMA table_info order). */
static void table_columns(sqlite3 *db, const char *table, char *out, size_t outsz)
{
    char sql[128];
    sqlite3_stmt *s = NULL;
    size_t used = 0;

    out[0] = '\0';
    snprintf(sql, sizeof sql, "PRAGMA table_info(%s)", table);
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return;
    while (sqlite3_step(s) == SQLITE_ROW && used < outsz) {
        int w = snprintf(out + used, outsz - used, "%s%s", used ? "," : "",
                         (const char *)sqlite3_column_text(s, 1));
        if (w < 0) break;
        used += (size_t)w;
    }
    sqlite3_finalize(s);
}

static void test_migration_v1(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, buf[512];
    sqlite3 *db = NULL;

    int rc = sqlite3_open(dbpath, &db);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, v1_schema, NULL, NULL, NULL);
    CHECK(rc == SQLITE_OK, "build a version 1 database by hand (%s)", db ? sqlite3_errmsg(db) : "");
    sqlite3_close(db);
    chmod(dbpath, 0600);

    struct store *st = store_open(tmp, NULL, &err);
    CHECK(st != NULL, "open a version 1 database (%s)", err ? err : "ok");
    if (!st) goto out;
    CHECK(store_schema_version() == 13, "this binary writes schema 13");

    db = raw_open(dbpath);
    bool q = db && raw_query(db, "SELECT value FROM meta WHERE key = 'schema_version'", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "13"), "upgraded to schema_version 13 (%s)", buf);
    q = db && raw_query(db, "PRAGMA auto_vacuum", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "2"), "auto_vacuum 0 became incremental (one VACUUM at open): %s", buf);
    q = db && raw_query(db, "PRAGMA page_size", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "4096"), "a database made with 4 KiB pages keeps them: %s", buf);
    q = db && raw_query(db, "SELECT value FROM meta WHERE key = 'api_key'", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "k1"), "meta rows kept");
    static const struct {
        const char *table, *cols;
    } tables[] = {
        {"routes", "seq,id,priority,description,expression,actions,created_at"},
        {"recipients", "message_id,recipient,outcome,routes,warnings"},
        {"deliveries", "id,message_id,recipient,route_ids,kind,target,format,state,attempts,"
                       "next_attempt_at,lease_until,last_status,last_error,created_at,updated_at,"
                       "copy_key,claimed_by"},
        {"attempts", "delivery_id,n,started_at,duration_ms,status,error,outcome"},
        {"events", "id,ts,event,severity,message_id,recipient,domain,delivery_id,detail"},
        {"purge_candidates", "message_id"},
        {"stored", "key,message_id,recipient,domain,route_id,notify,format,expires_at,created_at,"
                   "mailbox"},
        {"message_auth", "message_id,authentication"},
        {"console_sessions", "digest,csrf,expires_at,created_at,seq"},
        {"mailboxes", "name,password_hash,retention,locked_until,created_at,updated_at,lock_owner"},
        {"messages", "id,received_at,sender,recipients,remote_ip,helo,tls,size,raw,state,"
                     "parse_warnings,body_segment,body_offset,body_crc,claimed_by,lease_until"},
    };
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        table_columns(db, tables[i].table, buf, sizeof buf);
        CHECK_STR(buf, tables[i].cols, "table %s columns", tables[i].table);
    }
    q = db && raw_query(db,
                        "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master"
                        " WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name)",
                        buf, sizeof buf);
    CHECK_STR(buf, "deliveries_copy_key,deliveries_due,deliveries_message,deliveries_state_updated,events_domain_ts,"
                   "events_message,events_ts,messages_accepted,messages_body_segment,routes_order,stored_expires,"
                   "stored_mailbox,stored_message", "indexes");
    /* Migration 11: the routing outcome notes a message for the purge itself, no trigger. */
    q = db && raw_query(db,
                        "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master"
                        " WHERE type = 'trigger' ORDER BY name)",
                        buf, sizeof buf);
    CHECK_STR(buf, "purge_on_copy_gone,purge_on_delivery_end,purge_on_delivery_gone,routes_changed_delete,"
                   "routes_changed_insert,routes_changed_update", "triggers");
    q = db && raw_query(db, "SELECT sql FROM sqlite_master WHERE name = 'deliveries_due'", buf,
                        sizeof buf);
    CHECK(q && strstr(buf, "WHERE state = 'pending'"), "deliveries_due is partial (%s)", buf);
    q = db && raw_query(db, "SELECT parse_warnings || state FROM messages", buf, sizeof buf);
    CHECK(q && !strcmp(buf, "[]accepted"), "the old message: parse_warnings '[]' (%s)", buf);
    sqlite3_close(db);

    /* The old row reads back through the new code. */
    struct store_message *m = NULL;
    enum store_status ls = store_load_message(st, "0000000100000000000000aa", &m, &err);
    CHECK(ls == STORE_OK && m, "load the version 1 message");
    if (m) {
        CHECK(m->nrcpts == 2 && !strcmp(m->rcpts[0], "a@example.com") &&
                  !strcmp(m->rcpts[1], "b\"q@example.com"),
              "its recipients");
        CHECK(m->len == 3 && !memcmp(m->data, "\x00\xff\x41", 3), "its bytes");
    }
    store_free_message(m);
    char **ids = NULL;
    size_t n = 0;
    rc = store_list_unprocessed(st, &ids, &n, 10, &err);
    CHECK(rc == 0 && n == 1 && !strcmp(ids[0], "0000000100000000000000aa"), "listed unprocessed");
    for (size_t i = 0; i < n; i++) free(ids[i]);
    free(ids);
    store_close(st);

    /* A second open finds version 3 and changes nothing. */
    st = store_open(tmp, NULL, &err);
    CHECK(st != NULL, "reopen at version 3");
    store_close(st);
out:
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

/* ---- routes --------------------------------------------------------------------------------- */

static void route_fill(struct store_route *r, unsigned k, int32_t priority, char **actions,
                       size_t nactions)
{
    *r = (struct store_route){.priority = priority, .actions = actions, .nactions = nactions,
                              .created_at = 1700000000 + k};
    snprintf(r->id, sizeof r->id, "%024x", 0xa00000u + k);
    if (asprintf(&r->description, "route %u \"quoted\" \\ é", k) < 0) exit(1);
    if (asprintf(&r->expression, "match_recipient(\"r%u@.*\\\\.example\")", k) < 0) exit(1);
}

/* "id,id,..." of the loaded routes, in order. */
static void route_order(struct store *st, char *out, size_t outsz, size_t *n_out)
{
    struct store_route *v = NULL;
    size_t n = 0, used = 0;
    char *err = NULL;

    out[0] = '\0';
    if (store_routes_load(st, &v, &n, &err) != STORE_OK) {
        snprintf(out, outsz, "error: %s", err ? err : "?");
        free(err);
        return;
    }
    for (size_t i = 0; i < n; i++)
        used += (size_t)snprintf(out + used, outsz - used, "%s%s", i ? "," : "", v[i].id + 18);
    if (n_out) *n_out = n;
    store_routes_free(v, n);
}

static void test_routes(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, buf[256];
    struct store *st = store_open(tmp, NULL, &err);
    static char a0[] = "forward(\"http://h.example/\\1\")", a1[] = "store(notify=\"https://n.example/x\")",
                a2[] = "stop()", a3[] = "w\x01\xc3\xa9\"\\";
    char *acts[] = {a0, a1, a2, a3};
    struct store_route r[6];
    enum store_status rc;

    CHECK(st != NULL, "open");
    if (!st) goto out;
    struct store_route *v = (struct store_route *)1;
    size_t n = 99;
    CHECK(store_routes_load(st, &v, &n, &err) == 0 && n == 0, "no routes at first");
    store_routes_free(v, n);

    /* Priorities 5, 0, 5, -1: seq gives the tie order. */
    static const int32_t prio[] = {5, 0, 5, -1, 0, 7};
    for (unsigned k = 0; k < 4; k++) {
        route_fill(&r[k], k, prio[k], k == 1 ? NULL : acts, k == 1 ? 0 : 4 - k % 3);
        rc = store_route_insert(st, &r[k], 4, &err);
        CHECK(rc == STORE_OK && !err, "insert route %u (quota 4): %d", k, rc);
    }
    CHECK(r[0].seq > 0 && r[1].seq > r[0].seq && r[2].seq > r[1].seq && r[3].seq > r[2].seq,
          "seq assigned in insertion order (%lld %lld %lld %lld)", (long long)r[0].seq,
          (long long)r[1].seq, (long long)r[2].seq, (long long)r[3].seq);
    route_fill(&r[4], 4, prio[4], acts, 1);
    int64_t seq_before = r[4].seq;
    rc = store_route_insert(st, &r[4], 4, &err);
    CHECK(rc == STORE_ERR_QUOTA && !err && r[4].seq == seq_before, "the fifth at quota 4: QUOTA");
    rc = store_route_insert(st, &r[4], 5, &err);
    CHECK(rc == STORE_OK, "with quota 5 it fits exactly");
    route_fill(&r[5], 5, prio[5], acts, 2);
    rc = store_route_insert(st, &r[5], 5, &err);
    CHECK(rc == STORE_ERR_QUOTA, "quota 5 full");
    rc = store_route_insert(st, &r[5], 0, &err);
    CHECK(rc == STORE_ERR_QUOTA, "quota 0: QUOTA");

    size_t nr = 0;
    route_order(st, buf, sizeof buf, &nr);
    CHECK_STR(buf, "a00003,a00001,a00004,a00000,a00002", "evaluation order: priority, then seq");

    /* Fields read back exactly. */
    v = NULL;
    n = 0;
    CHECK(store_routes_load(st, &v, &n, &err) == 0 && n == 5, "load 5");
    bool same = n == 5;
    for (size_t i = 0; same && i < n; i++) {
        const struct store_route *want = NULL;
        for (unsigned k = 0; k < 5; k++)
            if (!strcmp(r[k].id, v[i].id)) want = &r[k];
        same = want && want->priority == v[i].priority && want->seq == v[i].seq &&
               want->created_at == v[i].created_at &&
               !strcmp(want->description, v[i].description) &&
               !strcmp(want->expression, v[i].expression) && want->nactions == v[i].nactions &&
               (v[i].nactions == 0) == (v[i].actions == NULL);
        for (size_t a = 0; same && a < v[i].nactions; a++)
            same = !strcmp(want->actions[a], v[i].actions[a]);
    }
    CHECK(same, "every field reads back as written");
    store_routes_free(v, n);

    sqlite3 *db = raw_open(dbpath);
    bool q = db && raw_query(db, "SELECT actions FROM routes WHERE id = '000000000000000000a00000'",
                             buf, sizeof buf);
    char *want_json = store_json_string_array((const char *const *)acts, 4);
    CHECK(q && !strcmp(buf, want_json), "actions column is the JSON array (%s)", buf);
    free(want_json);
    q = db && raw_query(db, "SELECT actions FROM routes WHERE id = '000000000000000000a00001'", buf,
                        sizeof buf);
    CHECK(q && !strcmp(buf, "[]"), "no actions: [] (%s)", buf);
    sqlite3_close(db);

    /* A duplicate id is a storage error, with a message. */
    struct store_route dup = r[0];
    rc = store_route_insert(st, &dup, 100, &err);
    CHECK(rc == STORE_ERR_IO && err && strstr(err, "UNIQUE"), "duplicate id: IO (%s)",
          err ? err : "(null)");
    free(err);
    err = NULL;

    /* Update: priority and fields change, seq and created_at stay; the order follows. */
    struct store_route up = r[2];
    up.priority = -5;
    up.created_at = 1;
    static char changed[] = "changed", catch_all[] = "catch_all()", stop[] = "stop()";
    up.description = changed;
    up.expression = catch_all;
    char *one[] = {stop};
    up.actions = one;
    up.nactions = 1;
    rc = store_route_update(st, &up, &err);
    CHECK(rc == STORE_OK && !err, "update route 2");
    route_order(st, buf, sizeof buf, NULL);
    CHECK_STR(buf, "a00002,a00003,a00001,a00004,a00000", "order after the update");
    v = NULL;
    CHECK(store_routes_load(st, &v, &n, &err) == 0 && n == 5, "reload");
    if (n == 5)
        CHECK(v[0].priority == -5 && v[0].seq == r[2].seq && v[0].created_at == r[2].created_at &&
                  !strcmp(v[0].description, "changed") && !strcmp(v[0].expression, "catch_all()") &&
                  v[0].nactions == 1 && !strcmp(v[0].actions[0], "stop()"),
              "updated fields; seq and created_at kept");
    store_routes_free(v, n);
    /* Same values again: still found (a row matched, nothing changed). */
    rc = store_route_update(st, &up, &err);
    CHECK(rc == STORE_OK, "update with the same values: OK");

    struct store_route ghost = r[5];
    snprintf(ghost.id, sizeof ghost.id, "%s", "ffffffffffffffffffffffff");
    rc = store_route_update(st, &ghost, &err);
    CHECK(rc == STORE_ERR_NOT_FOUND && !err, "update unknown: NOT_FOUND");
    rc = store_route_delete(st, "ffffffffffffffffffffffff", &err);
    CHECK(rc == STORE_ERR_NOT_FOUND && !err, "delete unknown: NOT_FOUND");

    rc = store_route_delete(st, r[4].id, &err);
    CHECK(rc == STORE_OK, "delete the last one");
    rc = store_route_delete(st, r[4].id, &err);
    CHECK(rc == STORE_ERR_NOT_FOUND, "delete it again: NOT_FOUND");
    /* Room again under quota 5; a deleted seq is never reused. */
    rc = store_route_insert(st, &r[5], 5, &err);
    CHECK(rc == STORE_OK && r[5].seq > r[4].seq, "insert after a delete: new seq %lld > %lld",
          (long long)r[5].seq, (long long)r[4].seq);
    store_close(st);

    st = store_open(tmp, NULL, &err);
    route_order(st, buf, sizeof buf, &nr);
    CHECK_STR(buf, "a00002,a00003,a00001,a00000,a00005", "the same order after reopen");
    store_close(st);
out:
    for (unsigned k = 0; k < 6; k++) {
        free(r[k].description);
        free(r[k].expression);
    }
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

/* ---- routing outcomes ----------------------------------------------------------------------- */

/* Checks the message handed back by the done callback against make_msg(a, b, len). */
struct back_slot {
    struct waiter *w;
    unsigned a, b;
    size_t len;
    int status;
    bool got_msg, bytes_ok;
};

static void on_done_back(void *arg, enum store_status status, struct store_message *msg)
{
    struct back_slot *s = arg;
    char id[ID_LEN + 1];
    bool ok = msg != NULL;

    make_id(id, s->a, s->b);
    ok = ok && !strcmp(msg->id, id) && msg->len == s->len && msg->nrcpts == 3 &&
         !strcmp(msg->rcpts[1], rcpt_fixed[0]);
    for (size_t k = 0; ok && k < s->len; k++) ok = msg->data[k] == body_byte(s->a, s->b, k);
    store_free_message(msg);
    pthread_mutex_lock(&s->w->mu);
    s->status = status;
    s->got_msg = msg != NULL;
    s->bytes_ok = ok;
    s->w->called++;
    pthread_cond_broadcast(&s->w->cv);
    pthread_mutex_unlock(&s->w->mu);
}

static int64_t count_rows(sqlite3 *db, const char *sql)
{
    char buf[32];

    if (!raw_query(db, sql, buf, sizeof buf)) return -1;
    return strtoll(buf, NULL, 10);
}

static void test_outcome(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, buf[512];
    struct store *st = store_open(tmp, NULL, &err);
    struct back_slot s[6];
    struct waiter w;
    char id[6][ID_LEN + 1];

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    /* received_at: 3 and 1 tie, 4 and 0 tie; list order: (1,3 by id), 5, (0,4 by id), 2. */
    static const int64_t at[] = {2000, 1000, 3000, 1000, 2000, 1500};
    for (unsigned b = 0; b < 6; b++) {
        size_t len = b == 5 ? 0 : 1000 + b * 333;
        struct store_message *m = make_msg(21, b, len);

        m->received_at_ms = at[b];
        if (b == 5) { /* the null sender */
            free(m->sender);
            m->sender = xstrdup("");
        }
        make_id(id[b], 21, b);
        s[b] = (struct back_slot){.w = &w, .a = 21, .b = b, .len = len, .status = 99};
        store_accept(st, m, on_done_back, &s[b]);
    }
    /* A duplicate: fails, and its callback gets no message. */
    struct back_slot dup = {.w = &w, .a = 21, .b = 0, .len = 5, .status = 99};
    store_accept(st, make_msg(21, 0, 5), on_done_back, &dup);
    CHECK(waiter_wait(&w, 7, 30), "callbacks");
    bool all = true;
    for (unsigned b = 0; b < 6; b++) all = all && s[b].status == STORE_OK && s[b].got_msg && s[b].bytes_ok;
    CHECK(all, "STORE_OK hands back the committed message, bytes and envelope intact");
    CHECK(dup.status == STORE_ERR_IO && !dup.got_msg, "a failed message: no message handed back");

    char **ids = NULL;
    size_t n = 0;
    enum store_status rc = store_list_unprocessed(st, &ids, &n, 100, &err);
    char got[256] = "";
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t used = strlen(got);
        snprintf(got + used, sizeof got - used, "%s%s", i ? "," : "", ids[i] + 22);
    }
    CHECK(rc == 0 && n == 6, "six unprocessed");
    CHECK_STR(got, "01,03,05,00,04,02", "oldest first, ties by id");
    for (size_t i = 0; i < n; i++) free(ids[i]);
    free(ids);
    rc = store_list_unprocessed(st, &ids, &n, 2, &err);
    CHECK(rc == 0 && n == 2 && !strcmp(ids[0], id[1]) && !strcmp(ids[1], id[3]), "limit 2");
    for (size_t i = 0; i < n; i++) free(ids[i]);
    free(ids);
    rc = store_list_unprocessed(st, &ids, &n, 0, &err);
    CHECK(rc == 0 && n == 0 && !ids, "limit 0: nothing");

    /* load_message: byte for byte, and the envelope. */
    struct store_message *m = NULL;
    enum store_status ls = store_load_message(st, id[2], &m, &err);
    CHECK(ls == STORE_OK && m, "load message 2");
    if (m) {
        bool bytes = m->len == s[2].len;
        for (size_t k = 0; bytes && k < m->len; k++) bytes = m->data[k] == body_byte(21, 2, k);
        CHECK(bytes, "load: bytes exact (%zu)", m->len);
        CHECK(!strcmp(m->id, id[2]) && m->received_at_ms == 3000 &&
                  !strcmp(m->sender, "sender@example.org") && m->nrcpts == 3 &&
                  !strcmp(m->rcpts[0], "u21.2@example.com") && !strcmp(m->rcpts[1], rcpt_fixed[0]) &&
                  !strcmp(m->rcpts[2], rcpt_fixed[1]) && !strcmp(m->remote_ip, "192.0.2.7") &&
                  !strcmp(m->helo, "mx.example.org") && !strcmp(m->tls, "none"),
              "load: envelope exact");
    }
    store_free_message(m);
    m = NULL;
    ls = store_load_message(st, id[5], &m, &err);
    CHECK(ls == STORE_OK && m && m->len == 0 && m->data && !strcmp(m->sender, ""),
          "load: empty body, null sender");
    store_free_message(m);
    m = (struct store_message *)1;
    ls = store_load_message(st, "ffffffffffffffffffffffff", &m, &err);
    CHECK(ls == STORE_ERR_NOT_FOUND && !m && !err, "load unknown: NOT_FOUND");

    /* The outcome of message 1. */
    const struct store_recipient_outcome ro[] = {
        {.recipient = "u21.1@example.com", .outcome = "routed",
         .routes_json = "[{\"id\": \"r1\", \"captures\": {}, \"actions\": [\"stop()\"]}]",
         .warnings_json = "[]"},
        {.recipient = rcpt_fixed[0], .outcome = "dropped", .routes_json = "[]",
         .warnings_json = "[\"w \\\"1\\\"\"]"},
    };
    const struct store_delivery_plan dp[] = {
        {.id = "d00000000000000000000001", .recipient = "u21.1@example.com", .kind = "url",
         .target = "http://h.example/x", .format = "", .route_ids_json = "[\"r1\",\"r2\"]"},
        {.id = "d00000000000000000000002", .recipient = "u21.1@example.com", .kind = "address",
         .target = "a@b.example", .format = "mime", .route_ids_json = "[\"r1\"]"},
    };
    const struct store_copy_plan cp[] = {
        {.key = "KEYaaaaaaaaaaaaaaaaaaaaa", .recipient = "u21.1@example.com", .domain = "example.com",
         .route_id = "r1", .notify = NULL, .format = "", .expires_at = 1800000000},
        {.key = "KEYbbbbbbbbbbbbbbbbbbbbb", .recipient = "u21.1@example.com", .domain = "example.com",
         .route_id = "", .notify = "https://n.example/\xc3\xa9", .format = "json",
         .expires_at = 1800000001},
    };
    struct store_outcome o = {.message_id = id[1], .parse_warnings_json = "[\"bad header\"]",
                              .recipients = ro, .nrecipients = 2, .deliveries = dp,
                              .ndeliveries = 2, .copies = cp, .ncopies = 2, .now = 1750000000};
    enum store_status os = store_write_outcome(st, &o, &err);
    CHECK(os == STORE_OK && !err, "write the outcome (%s)", err ? err : "ok");

    sqlite3 *db = raw_open(dbpath);
    raw_query(db, "SELECT state || ' ' || parse_warnings FROM messages WHERE id = '000000150000000000000001'",
              buf, sizeof buf);
    CHECK_STR(buf, "routed [\"bad header\"]", "message routed, parse_warnings stored");
    raw_query(db, "SELECT group_concat(recipient || '|' || outcome || '|' || routes || '|' || warnings, '#')"
                  " FROM (SELECT * FROM recipients WHERE message_id = '000000150000000000000001' ORDER BY outcome DESC)",
              buf, sizeof buf);
    char want[512];
    snprintf(want, sizeof want, "u21.1@example.com|routed|%s|[]#%s|dropped|[]|%s", ro[0].routes_json,
             rcpt_fixed[0], ro[1].warnings_json);
    CHECK_STR(buf, want, "recipients rows");
    raw_query(db,
              "SELECT group_concat(id || '|' || message_id || '|' || recipient || '|' || route_ids"
              " || '|' || kind || '|' || target || '|' || format || '|' || state || '|' || attempts"
              " || '|' || next_attempt_at || '|' || created_at || '|' || typeof(lease_until) || '|'"
              " || typeof(last_status) || '|' || typeof(last_error), '#')"
              " FROM (SELECT * FROM deliveries ORDER BY id)",
              buf, sizeof buf);
    CHECK_STR(buf,
              "d00000000000000000000001|000000150000000000000001|u21.1@example.com|[\"r1\",\"r2\"]|url|"
              "http://h.example/x||pending|0|1750000000|1750000000|null|null|null#"
              "d00000000000000000000002|000000150000000000000001|u21.1@example.com|[\"r1\"]|address|"
              "a@b.example|mime|pending|0|1750000000|1750000000|null|null|null",
              "deliveries rows");
    raw_query(db,
              "SELECT group_concat(key || '|' || message_id || '|' || recipient || '|' || domain || '|'"
              " || route_id || '|' || coalesce(notify, 'NULL') || '|' || format || '|' || expires_at"
              " || '|' || created_at, '#') FROM (SELECT * FROM stored ORDER BY key)",
              buf, sizeof buf);
    CHECK_STR(buf,
              "KEYaaaaaaaaaaaaaaaaaaaaa|000000150000000000000001|u21.1@example.com|example.com|r1|"
              "NULL||1800000000|1750000000#"
              "KEYbbbbbbbbbbbbbbbbbbbbb|000000150000000000000001|u21.1@example.com|example.com||"
              "https://n.example/\xc3\xa9|json|1800000001|1750000000",
              "stored rows");

    /* Again, even with another plan: a no-op. */
    struct store_outcome o2 = o;
    o2.parse_warnings_json = "[\"other\"]";
    o2.ndeliveries = 1;
    o2.now = 1;
    os = store_write_outcome(st, &o2, &err);
    CHECK(os == STORE_ERR_NOT_FOUND && !err, "second outcome of the same message: NOT_FOUND, nothing to act on");
    CHECK(count_rows(db, "SELECT count(*) FROM recipients") == 2 &&
              count_rows(db, "SELECT count(*) FROM deliveries") == 2 &&
              count_rows(db, "SELECT count(*) FROM stored") == 2 &&
              count_rows(db, "SELECT count(*) FROM messages WHERE parse_warnings = '[\"bad header\"]'") == 1,
          "... and nothing written");
    struct store_outcome o3 = {.message_id = "ffffffffffffffffffffffff", .now = 1};
    os = store_write_outcome(st, &o3, &err);
    CHECK(os == STORE_ERR_NOT_FOUND && !err, "outcome of an unknown message: NOT_FOUND");

    /* A message that matched nothing: no rows but its recipients, still routed. */
    const struct store_recipient_outcome drop[] = {
        {.recipient = "u21.3@example.com", .outcome = "dropped", .routes_json = "[]",
         .warnings_json = "[]"}};
    struct store_outcome o4 = {.message_id = id[3], .parse_warnings_json = "[]",
                               .recipients = drop, .nrecipients = 1, .now = 5};
    os = store_write_outcome(st, &o4, &err);
    CHECK(os == STORE_OK, "dropped outcome");
    rc = store_list_unprocessed(st, &ids, &n, 100, &err);
    got[0] = '\0';
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t used = strlen(got);
        snprintf(got + used, sizeof got - used, "%s%s", i ? "," : "", ids[i] + 22);
        free(ids[i]);
    }
    free(ids);
    CHECK_STR(got, "05,00,04,02", "routed messages leave the unprocessed list");
    int64_t cnt = -1;
    CHECK(store_count_unprocessed(st, &cnt) == 0 && cnt == 4, "count_unprocessed 4");
    sqlite3_close(db);
    store_close(st);
    waiter_destroy(&w);
out:
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

struct outcome_thread {
    struct store *st;
    const struct store_outcome *o;
    enum store_status status;
    char *err;
    pthread_t t;
};

static void *outcome_thread_main(void *arg)
{
    struct outcome_thread *ot = arg;

    ot->status = store_write_outcome(ot->st, ot->o, &ot->err);
    return NULL;
}

/* A failing outcome job (a duplicate delivery id in its plan) writes nothing and leaves the
 * message 'accepted', while a message and a good outcome in the same batch commit. */
static void test_outcome_fails_alone(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *err = NULL, buf[128];
    struct store *st = store_open(tmp, NULL, &err);
    struct slot s[3];
    struct waiter w;
    char id[3][ID_LEN + 1];
    struct store_stats before, after;
    struct timespec ts = {0, 50 * 1000 * 1000};

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    for (unsigned b = 0; b < 3; b++) {
        s[b] = (struct slot){.w = &w, .status = 99};
        make_id(id[b], 23, b);
    }
    store_accept(st, make_msg(23, 0, 100), on_done, &s[0]);
    store_accept(st, make_msg(23, 1, 100), on_done, &s[1]);
    CHECK(waiter_wait(&w, 2, 30), "two messages committed");

    const struct store_recipient_outcome ro[] = {
        {.recipient = "u23.0@example.com", .outcome = "routed", .routes_json = "[]",
         .warnings_json = "[]"}};
    const struct store_delivery_plan dp[] = {
        {.id = "dddddddddddddddddddddddd", .recipient = "u23.0@example.com", .kind = "url",
         .target = "http://a.example/", .format = "", .route_ids_json = "[\"r\"]"},
        {.id = "dddddddddddddddddddddddd", .recipient = "u23.0@example.com", .kind = "url",
         .target = "http://b.example/", .format = "", .route_ids_json = "[\"r\"]"},
    };
    const struct store_copy_plan cp[] = {
        {.key = "K0", .recipient = "u23.0@example.com", .domain = "example.com", .route_id = "r",
         .format = "", .expires_at = 9}};
    struct store_outcome bad = {.message_id = id[0], .parse_warnings_json = "[]", .recipients = ro,
                                .nrecipients = 1, .deliveries = dp, .ndeliveries = 2,
                                .copies = cp, .ncopies = 1, .now = 7};
    const struct store_recipient_outcome ro1[] = {
        {.recipient = "u23.1@example.com", .outcome = "routed", .routes_json = "[]",
         .warnings_json = "[]"}};
    struct store_outcome good = {.message_id = id[1], .parse_warnings_json = "[]",
                                 .recipients = ro1, .nrecipients = 1, .deliveries = dp,
                                 .ndeliveries = 1, .now = 7};

    /* Hold the writer in a sleeping job so that what comes next forms one batch. */
    struct job_thread sleeper = {.st = st, .job = {.run = job_sleep}};
    struct outcome_thread ob = {.st = st, .o = &bad, .status = 99};
    struct outcome_thread og = {.st = st, .o = &good, .status = 99};
    pthread_create(&sleeper.t, NULL, job_thread_main, &sleeper);
    nanosleep(&ts, NULL);
    store_get_stats(st, &before);
    pthread_create(&ob.t, NULL, outcome_thread_main, &ob);
    nanosleep(&ts, NULL);
    store_accept(st, make_msg(23, 2, 100), on_done, &s[2]);
    pthread_create(&og.t, NULL, outcome_thread_main, &og);
    pthread_join(sleeper.t, NULL);
    pthread_join(ob.t, NULL);
    pthread_join(og.t, NULL);
    CHECK(waiter_wait(&w, 3, 30), "the third message answered");
    store_get_stats(st, &after);
    CHECK(after.batches - before.batches == 2, "one batch after the sleeper (%llu batches)",
          (unsigned long long)(after.batches - before.batches));
    CHECK(ob.status == STORE_ERR_IO && ob.err && strstr(ob.err, "dddddddddddddddddddddddd") &&
              strstr(ob.err, "UNIQUE"),
          "the failing outcome: STORE_ERR_IO naming the delivery (%s)", ob.err ? ob.err : "(null)");
    CHECK(og.status == STORE_OK && !og.err, "the good outcome in the same batch: OK");
    CHECK(s[2].status == STORE_OK, "the message in the same batch commits");

    sqlite3 *db = raw_open(dbpath);
    raw_query(db, "SELECT state || parse_warnings FROM messages WHERE id = '000000170000000000000000'",
              buf, sizeof buf);
    CHECK_STR(buf, "accepted[]", "the failed outcome's message is still accepted");
    CHECK(count_rows(db, "SELECT count(*) FROM recipients WHERE message_id = '000000170000000000000000'") == 0 &&
              count_rows(db, "SELECT count(*) FROM deliveries WHERE message_id = '000000170000000000000000'") == 0 &&
              count_rows(db, "SELECT count(*) FROM stored") == 0,
          "... and none of its rows is there");
    CHECK(count_rows(db, "SELECT count(*) FROM deliveries WHERE message_id = '000000170000000000000001'") == 1 &&
              count_rows(db, "SELECT count(*) FROM messages WHERE state = 'routed'") == 1,
          "the good outcome's rows are");
    CHECK(count_rows(db, "SELECT count(*) FROM messages WHERE id = '000000170000000000000002'") == 1,
          "the message of the batch is there");
    sqlite3_close(db);

    /* Fixed, it goes through. */
    bad.ndeliveries = 1;
    struct store_delivery_plan dp2 = dp[0];
    dp2.id[0] = 'e';
    bad.deliveries = &dp2;
    enum store_status os = store_write_outcome(st, &bad, &err);
    CHECK(os == STORE_OK, "the same message with a good plan: OK");
    int64_t cnt = -1;
    CHECK(store_count_unprocessed(st, &cnt) == 0 && cnt == 1, "one left unprocessed");
    free(ob.err);
    free(og.err);
    free(sleeper.job.err);
    store_close(st);
    waiter_destroy(&w);
out:
    free(err);
    free(dbpath);
    tmpdir_free(tmp);
}

/* ---- checkpoints ---------------------------------------------------------------------------- */

static off_t file_size(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* A job that writes `arg` (a size in bytes, as a pointer-sized integer) of random bytes into a
 * meta row of its own: WAL frames in bulk, now that message bodies go to the body log. */
static enum store_status job_pad(const struct store_backend *ops, void *be, void *arg, char **err)
{
    static atomic_uint n;
    char sql[160], out[8];

    snprintf(sql, sizeof sql, "INSERT INTO meta (key, value) VALUES ('pad-%u', randomblob(%zu))",
             atomic_fetch_add(&n, 1), (size_t)(uintptr_t)arg);
    return ops->writer_query(be, sql, out, sizeof out);
}

static void on_job_done(void *arg, enum store_status status, char *err)
{
    struct slot *s = arg;

    free(err);
    pthread_mutex_lock(&s->w->mu);
    s->status = status;
    s->calls++;
    s->w->called++;
    pthread_cond_broadcast(&s->w->cv);
    pthread_mutex_unlock(&s->w->mu);
}

static void submit_pad(struct store *st, size_t bytes, struct slot *slot)
{
    struct store_job *job = calloc(1, sizeof *job);

    job->run = job_pad;
    job->arg = (void *)(uintptr_t)bytes;
    store_submit_job(st, job, on_job_done, slot);
}

static void test_checkpointer(void)
{
    char *tmp = tmpdir_new(), *dbpath = join(tmp, "inlet.db"), *walpath = join(tmp, "inlet.db-wal");
    char *err = NULL;
    struct store *st = store_open(tmp, NULL, &err);
    struct store_checkpoint_stats cs;
    /* 14 x 4 MiB: one batch of jobs (messages count against STORE_BATCH_MAX_BYTES, jobs do not)
     * with more frames than the WAL's cap by itself. */
    enum { BIG = 14, BIG_LEN = 4 * 1024 * 1024 };
    static struct slot slots[BIG + 20];
    struct waiter w;
    int ok = 0;

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    /* 1,200+ frames in one commit: the checkpointer wakes, although the writer keeps no idle
     * time for it. */
    slots[0] = (struct slot){.w = &w};
    submit_pad(st, 5 * 1024 * 1024, &slots[0]);
    CHECK(waiter_wait(&w, 1, 30) && slots[0].status == STORE_OK, "a 5 MiB row");
    store_test_checkpoint_stats(st, &cs);
    for (int i = 0; i < 100 && cs.runs == 0; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        store_test_checkpoint_stats(st, &cs);
    }
    CHECK(cs.runs >= 1 && cs.last_checkpointed_frames >= 1000 &&
              cs.last_checkpointed_frames == cs.last_log_frames && cs.valves == 0,
          "the checkpointer thread ran (runs %llu, checkpointed %llu of %llu frames)",
          (unsigned long long)cs.runs, (unsigned long long)cs.last_checkpointed_frames,
          (unsigned long long)cs.last_log_frames);

    /* 56 MiB more, queued while a job holds the writer, so that the next batch is a full one
     * (more frames than the cap by itself): the WAL passes its cap; the writer's valve bounds
     * it. */
    struct job_thread sleeper = {.st = st, .job = {.run = job_sleep}};
    struct timespec ts = {0, 50 * 1000 * 1000};
    pthread_create(&sleeper.t, NULL, job_thread_main, &sleeper);
    nanosleep(&ts, NULL);
    for (unsigned b = 1; b <= BIG; b++) {
        slots[b] = (struct slot){.w = &w};
        submit_pad(st, BIG_LEN, &slots[b]);
    }
    pthread_join(sleeper.t, NULL);
    free(sleeper.job.err);
    CHECK(waiter_wait(&w, 1 + BIG, 120), "the big rows answered");
    for (unsigned b = 0; b <= BIG; b++) ok += slots[b].status == STORE_OK;
    CHECK(ok == 1 + BIG, "all committed (%d)", ok);
    /* The valve runs after the batch's callbacks (it never delays a reply). */
    store_test_checkpoint_stats(st, &cs);
    for (int i = 0; i < 100 && cs.valves == 0; i++) {
        nanosleep(&ts, NULL);
        store_test_checkpoint_stats(st, &cs);
    }
    CHECK(cs.valves >= 1, "the safety valve ran (%llu valves, %llu failed, %llu runs)",
          (unsigned long long)cs.valves, (unsigned long long)cs.valve_failures,
          (unsigned long long)cs.runs);
    off_t wal = file_size(walpath);
    /* Cap (4096 frames) plus at most one batch (56 MiB), 4 KiB pages plus 24-byte headers. */
    CHECK(wal >= 0 && wal <= (off_t)(4096 + 14336 + 64) * (4096 + 24) + 32,
          "WAL bounded while busy (%lld bytes)", (long long)wal);
    /* A small commit after the valve starts the WAL over, cut to journal_size_limit. */
    slots[BIG + 1] = (struct slot){.w = &w};
    store_accept(st, make_msg(31, BIG + 1, 100), on_done, &slots[BIG + 1]);
    CHECK(waiter_wait(&w, BIG + 2, 30) && slots[BIG + 1].status == STORE_OK, "a small one");
    wal = file_size(walpath);
    CHECK(wal >= 0 && wal <= 16777216 + 64 * (4096 + 24), "WAL back under 16 MiB (%lld bytes)",
          (long long)wal);

    /* Rows intact, and the WAL folded away on close. */
    sqlite3 *db = raw_open(dbpath);
    char buf[64] = "";
    bool q = db && raw_query(db, "SELECT count(*) || ',' || sum(length(value)) FROM meta WHERE key LIKE 'pad-%'",
                             buf, sizeof buf);
    char want[64];
    snprintf(want, sizeof want, "%d,%lld", BIG + 1, (long long)BIG * BIG_LEN + 5 * 1024 * 1024);
    CHECK(q && !strcmp(buf, want), "big rows all there (%s, want %s)", buf, want);
    const char *diff = row_differs(db, 31, BIG + 1, 100);
    CHECK(!diff, "the small message byte for byte (%s)", diff ? diff : "none");
    sqlite3_close(db);
    store_close(st);
    CHECK(file_size(walpath) <= 0, "close: WAL truncated (%lld)", (long long)file_size(walpath));
    st = store_open(tmp, NULL, &err);
    int64_t n = -1;
    CHECK(st && store_count_unprocessed(st, &n) == 0 && n == 1, "reopen: all there (%lld)", (long long)n);
    store_close(st);
    waiter_destroy(&w);
out:
    free(err);
    free(walpath);
    free(dbpath);
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
    enum store_status rc = store_check_writable(st, &reason);
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
    if (store_check_writable(st, &reason) != STORE_OK) rc = child_fail("after freeing space", reason);
    int64_t n = -1;
    if (store_count_unprocessed(st, &n) != STORE_OK || n != 1) rc = child_fail("count", "not 1");
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

/* ---- writes without waiting (store.h): the twins the HTTP API uses ----------------------------- */

/* One write's answer: status, err, and whether it came on a thread other than the caller's. */
struct wslot {
    struct waiter *w;
    enum store_status status;
    char *err;
    bool other_thread;
    pthread_t caller;
};

static void on_write_done(void *arg, enum store_status status, char *err)
{
    struct wslot *s = arg;

    pthread_mutex_lock(&s->w->mu);
    s->status = status;
    s->err = err;
    s->other_thread = !pthread_equal(pthread_self(), s->caller);
    s->w->called++;
    pthread_cond_broadcast(&s->w->cv);
    pthread_mutex_unlock(&s->w->mu);
}

/* Waits for the answer of the write just queued with `s` (armed by wslot_arm). */
static enum store_status wslot_wait(struct wslot *s, const char *what)
{
    bool ok = waiter_wait(s->w, 1, 30);

    CHECK(ok, "%s: answered", what);
    CHECK(s->other_thread, "%s: answered on the writer thread", what);
    CHECK(store_status_failed(s->status) == (s->err != NULL), "%s: err exactly with a failure (%s)", what,
          s->err ? s->err : "none");
    free(s->err);
    s->err = NULL;
    return ok ? s->status : STORE_ERR_IO;
}

static void wslot_arm(struct wslot *s, struct waiter *w)
{
    waiter_destroy(w);
    waiter_init(w);
    *s = (struct wslot){.w = w, .status = STORE_ERR_IO, .caller = pthread_self()};
}

static void test_async_writes(void)
{
    char *tmp = tmpdir_new(), *err = NULL;
    struct store *st = store_open(tmp, NULL, &err);
    static char stop[] = "stop()";
    char *acts[] = {stop};
    struct store_route r[2] = {0};
    struct waiter w;
    struct wslot s;

    CHECK(st != NULL, "open");
    if (!st) goto out;
    waiter_init(&w);
    route_fill(&r[0], 0, 1, acts, 1);
    route_fill(&r[1], 1, 1, acts, 1);
    wslot_arm(&s, &w);
    store_route_insert_async(st, &r[0], 1, on_write_done, &s);
    CHECK(wslot_wait(&s, "route insert") == STORE_OK && r[0].seq > 0,
          "async route insert: OK, seq written back before done (%lld)", (long long)r[0].seq);
    wslot_arm(&s, &w);
    store_route_insert_async(st, &r[1], 1, on_write_done, &s);
    CHECK(wslot_wait(&s, "route insert past quota") == STORE_ERR_QUOTA, "async route insert past the quota: QUOTA");
    wslot_arm(&s, &w);
    store_route_update_async(st, &r[1], on_write_done, &s);
    CHECK(wslot_wait(&s, "route update") == STORE_ERR_NOT_FOUND, "async update of a missing route: NOT_FOUND");
    wslot_arm(&s, &w);
    store_route_delete_async(st, r[0].id, on_write_done, &s);
    CHECK(wslot_wait(&s, "route delete") == STORE_OK, "async route delete: OK");
    struct store_route *v = NULL;
    size_t n = 99;
    CHECK(store_routes_load(st, &v, &n, &err) == STORE_OK && n == 0, "no route left");
    store_routes_free(v, n);

    /* The mailbox jobs' arguments are copied from the caller's stack (store_submit_copy). */
    wslot_arm(&s, &w);
    store_mailbox_create_async(st, "box", "$y$hash", 0, 1700000000, on_write_done, &s);
    CHECK(wslot_wait(&s, "mailbox create") == STORE_OK, "async mailbox create: OK");
    wslot_arm(&s, &w);
    store_mailbox_create_async(st, "box", "$y$hash", 0, 1700000000, on_write_done, &s);
    CHECK(wslot_wait(&s, "mailbox create again") == STORE_ERR_CONFLICT, "async mailbox create again: CONFLICT");
    wslot_arm(&s, &w);
    store_mailbox_update_async(st, "box", NULL, 3600, 1700000001, on_write_done, &s);
    CHECK(wslot_wait(&s, "mailbox update") == STORE_OK, "async mailbox update: OK");
    struct store_mailbox *m = NULL;
    CHECK(store_mailbox_get(st, "box", &m, &err) == STORE_OK && m && m->retention == 3600 &&
              !strcmp(m->password_hash, "$y$hash") && m->updated_at == 1700000001,
          "the update is read back (hash kept, retention set)");
    store_mailboxes_free(m, 1);
    wslot_arm(&s, &w);
    store_mailbox_delete_async(st, "box", on_write_done, &s);
    CHECK(wslot_wait(&s, "mailbox delete") == STORE_OK, "async mailbox delete: OK");
    wslot_arm(&s, &w);
    store_mailbox_delete_async(st, "box", on_write_done, &s);
    CHECK(wslot_wait(&s, "mailbox delete again") == STORE_ERR_NOT_FOUND, "async mailbox delete again: NOT_FOUND");

    /* The queue writes: answers of their waiting twins. */
    wslot_arm(&s, &w);
    store_copy_delete_async(st, "nokey", 1700000000, on_write_done, &s);
    CHECK(wslot_wait(&s, "copy delete") == STORE_ERR_NOT_FOUND, "async copy delete of no copy: NOT_FOUND");
    wslot_arm(&s, &w);
    store_delivery_retry_async(st, "nodelivery", 1700000000, on_write_done, &s);
    CHECK(wslot_wait(&s, "delivery retry") == STORE_ERR_NOT_FOUND, "async retry of no delivery: NOT_FOUND");
    struct store_delivery_plan plan = {.recipient = "a@example.com", .kind = "address",
                                       .target = "b@example.org", .format = "", .route_ids_json = "[]"};
    snprintf(plan.id, sizeof plan.id, "%s", "d00000000000000000000001");
    wslot_arm(&s, &w);
    store_deliveries_add_async(st, "m00000000000000000000001", &plan, 1, 1700000000, on_write_done, &s);
    CHECK(wslot_wait(&s, "deliveries add") == STORE_ERR_NOT_FOUND, "async resend of no message: NOT_FOUND");
    waiter_destroy(&w);
out:
    store_close(st);
    for (unsigned k = 0; k < 2; k++) {
        free(r[k].description);
        free(r[k].expression);
    }
    free(err);
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
    test_json_parse();
    test_migration_v1();
    test_routes();
    test_async_writes();
    test_outcome();
    test_outcome_fails_alone();
    test_checkpointer();
    test_readonly_modes();
    run_child("read-only mount: open fails or reports not writable", child_readonly_mount);
    run_child("disk full: STORE_ERR_FULL, then accepting resumes", child_disk_full);
    return check_done();
}
