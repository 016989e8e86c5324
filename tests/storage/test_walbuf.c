/* tests/storage/test_walbuf.c — the write connection's VFS (storage/sqlite_walbuf.c): a commit's
 * WAL frames reach the file in one write, and nothing a reader or a crash may see changes.
 *
 * Real SQLite files in a temporary directory: a connection on the VFS writes, connections on the
 * default VFS read, as the store's writer and readers do; a child process killed right after its
 * commits shows that a commit the VFS answered is in the file. */
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "storage/internal_sqlite.h"

static char dir[] = "/tmp/inlet-test-walbuf-XXXXXX";

static sqlite3 *open_db(const char *name, const char *vfs)
{
    char path[256];
    sqlite3 *db = NULL;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs) != SQLITE_OK) {
        fprintf(stderr, "# open %s: %s\n", path, db ? sqlite3_errmsg(db) : "?");
        exit(1);
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

    if (rc != SQLITE_OK) fprintf(stderr, "# %s: %s\n", sql, msg ? msg : "?");
    sqlite3_free(msg);
    return rc;
}

static long long query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s = NULL;
    long long v = -1;

    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

/* The writer's settings (storage/sqlite.c, setup_writer), on a new file. */
static sqlite3 *open_writer(const char *name, const char *vfs)
{
    sqlite3 *db = open_db(name, vfs);

    if (exec(db, "PRAGMA synchronous = FULL; PRAGMA page_size = 1024; PRAGMA journal_mode = WAL;"
                 " CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)") != SQLITE_OK)
        exit(1);
    return db;
}

/* One commit of `rows` rows of `size` bytes each (and their index entries): several pages. */
static int commit_rows(sqlite3 *db, int first, int rows, int size)
{
    sqlite3_stmt *s = NULL;
    int rc = exec(db, "BEGIN");

    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, "INSERT INTO t (id, k, v) VALUES (?1, ?2, zeroblob(?3))", -1, &s, NULL);
    for (int i = first; rc == SQLITE_OK && i < first + rows; i++) {
        char k[32];

        snprintf(k, sizeof k, "key-%08d", i);
        sqlite3_bind_int(s, 1, i);
        sqlite3_bind_text(s, 2, k, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(s, 3, size);
        rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        sqlite3_reset(s);
    }
    sqlite3_finalize(s);
    return rc == SQLITE_OK ? exec(db, "COMMIT") : rc;
}

/* write(2)-family calls of this process so far (/proc/self/io syscw). */
static long long write_calls(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    long long v = -1;

    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "syscw: ", 7) == 0) {
            v = strtoll(line + 7, NULL, 10);
            break;
        }
    if (f) fclose(f);
    return v;
}

static void test_registered(void)
{
    CHECK(store_sqlite_walbuf_register() == SQLITE_OK, "the VFS registers");
    CHECK(store_sqlite_walbuf_register() == SQLITE_OK, "registering again is harmless");
    sqlite3_vfs *v = sqlite3_vfs_find(STORE_SQLITE_WALBUF_VFS), *def = sqlite3_vfs_find(NULL);
    CHECK(v != NULL, "sqlite3_vfs_find finds " STORE_SQLITE_WALBUF_VFS);
    CHECK(def != NULL && def != v, "it is not the default VFS (other connections keep theirs)");
}

/* After every commit, a reader on the default VFS sees exactly what was committed: the frames
 * were in the file before the wal-index named them. */
static void test_readers_see_each_commit(void)
{
    sqlite3 *w = open_writer("seen.db", STORE_SQLITE_WALBUF_VFS), *r = open_db("seen.db", NULL);
    int bad = 0, n = 0;

    for (int i = 0; i < 150; i++) {
        int rows = 1 + i % 7, size = 100 + (i * 37) % 900;
        if (commit_rows(w, n, rows, size) != SQLITE_OK) {
            bad++;
            break;
        }
        n += rows;
        if (query_int(r, "SELECT count(*) FROM t") != n || query_int(r, "SELECT max(id) FROM t") != n - 1) bad++;
    }
    CHECK(bad == 0, "a reader saw every one of 150 commits as soon as it returned (%d wrong)", bad);
    /* One commit bigger than the buffer (64 KiB): written in pieces, read back whole. */
    CHECK(commit_rows(w, n, 40, 3000) == SQLITE_OK, "a 120 KiB commit");
    CHECK(query_int(r, "SELECT count(*) FROM t WHERE length(v) = 3000") == 40, "the reader sees all of it");
    /* A rolled-back transaction leaves nothing behind for the next commit to trip on. */
    CHECK(exec(w, "BEGIN; INSERT INTO t (id, k, v) VALUES (-1, 'gone', zeroblob(5000)); ROLLBACK") == SQLITE_OK,
          "a rolled-back transaction");
    CHECK(commit_rows(w, n + 40, 3, 500) == SQLITE_OK, "then a commit");
    CHECK(query_int(r, "SELECT count(*) FROM t") == n + 43 && query_int(r, "SELECT count(*) FROM t WHERE id = -1") == 0,
          "the reader sees the commit and not the rolled-back row");
    CHECK(exec(w, "PRAGMA wal_checkpoint(TRUNCATE)") == SQLITE_OK, "a TRUNCATE checkpoint through the VFS");
    CHECK(commit_rows(w, n + 43, 2, 500) == SQLITE_OK, "a commit into the restarted WAL (its header at offset 0)");
    CHECK(query_int(r, "SELECT count(*) FROM t") == n + 45, "the reader sees it");
    sqlite3_close(r);
    sqlite3_close(w);
    r = open_db("seen.db", NULL);
    CHECK(query_int(r, "SELECT count(*) FROM t") == n + 45, "all rows are there after the writer closed");
    sqlite3_stmt *s = NULL;
    sqlite3_prepare_v2(r, "PRAGMA integrity_check", -1, &s, NULL);
    CHECK(s && sqlite3_step(s) == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(s, 0), "ok") == 0,
          "integrity_check: ok");
    sqlite3_finalize(s);
    sqlite3_close(r);
}

/* A transaction bigger than the writer's page cache spills frames into the WAL before its commit,
 * and a page changed again after its spill is rewritten in its frame, in place (before the end of
 * the run the VFS holds): the run goes out first, and the reader sees the last values. */
static void test_spilled_pages_rewritten(void)
{
    sqlite3 *w = open_writer("spill.db", STORE_SQLITE_WALBUF_VFS), *r = open_db("spill.db", NULL);

    CHECK(exec(w, "PRAGMA cache_size = 8") == SQLITE_OK, "a writer cache of 8 pages");
    int rc = exec(w, "BEGIN");
    for (int round = 0; rc == SQLITE_OK && round < 3; round++) {
        for (int i = 0; rc == SQLITE_OK && i < 200; i++) {
            char one[200];
            snprintf(one, sizeof one, "INSERT OR REPLACE INTO t (id, k, v) VALUES (%d, 'key-%d', zeroblob(%d))", i,
                     i, 400 + round * 100);
            rc = exec(w, one);
        }
    }
    CHECK(rc == SQLITE_OK && exec(w, "COMMIT") == SQLITE_OK, "200 rows written three times in one transaction");
    CHECK(query_int(r, "SELECT count(*) FROM t") == 200 && query_int(r, "SELECT min(length(v)) FROM t") == 600,
          "the reader sees 200 rows with their last values");
    CHECK(query_int(r, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") == 1,
          "integrity_check: ok");
    sqlite3_close(r);
    sqlite3_close(w);
}

/* Write calls per commit of ~10 pages: SQLite makes two per frame; through the VFS, one. */
static double calls_per_commit(const char *name, const char *vfs)
{
    sqlite3 *w = open_writer(name, vfs);
    const int commits = 50;

    commit_rows(w, 0, 4, 200); /* the WAL's header and first frames */
    long long before = write_calls();
    for (int i = 0; i < commits; i++) commit_rows(w, 4 + i * 4, 4, 700);
    long long after = write_calls();
    sqlite3_close(w);
    return before < 0 || after < 0 ? -1 : (double)(after - before) / commits;
}

static void test_one_write_per_commit(void)
{
    double plain = calls_per_commit("plain.db", NULL), gathered = calls_per_commit("gathered.db", STORE_SQLITE_WALBUF_VFS);

    CHECK(plain >= 10, "the default VFS: %.1f write calls per commit (two per frame)", plain);
    CHECK(gathered >= 0.9 && gathered <= 1.5, "the VFS: %.1f write calls per commit (the frames in one)", gathered);
}

/* A child commits through the VFS and is killed at once (SIGKILL: no close, no flush at exit):
 * every commit that returned is in the file; a transaction it had begun is not. */
static void test_kill_after_commit(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        sqlite3 *w = open_writer("killed.db", STORE_SQLITE_WALBUF_VFS);
        int rc = commit_rows(w, 0, 300, 200);
        if (rc == SQLITE_OK) rc = exec(w, "BEGIN; INSERT INTO t (id, k, v) VALUES (-1, 'open', zeroblob(30000))");
        raise(SIGKILL);
        _exit(rc);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child was killed after its commit");
    sqlite3 *r = open_db("killed.db", NULL);
    CHECK(query_int(r, "SELECT count(*) FROM t") == 300, "the 300 committed rows are there");
    CHECK(query_int(r, "SELECT count(*) FROM t WHERE id = -1") == 0, "the open transaction's row is not");
    sqlite3_close(r);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_registered();
    test_readers_see_each_commit();
    test_spilled_pages_rewritten();
    test_one_write_per_commit();
    test_kill_after_commit();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "# could not remove %s\n", dir);
    return check_done();
}
