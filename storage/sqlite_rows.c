/* storage/sqlite_rows.c — whole tables in and out of SQLite, for `inlet migrate` (store_copy_into).
 *
 * Reads page by rowid on the read connection (rmu held for one page; the statement is finalized
 * before rmu is let go, which ends the read transaction).  Inserts run on the write connection
 * inside the writer's transaction, as a job: INSERT OR IGNORE keeps a row whose key is there
 * already, so a copy run again after an interruption goes on where it stopped.  AUTOINCREMENT
 * tables keep their sequence ahead of the copied keys by themselves. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/internal_sqlite.h"

/* Table names are interpolated into SQL: they come from store.c's fixed list, and are checked. */
static bool table_name_ok(const char *t)
{
    return *t && strspn(t, "abcdefghijklmnopqrstuvwxyz_") == strlen(t);
}

static enum store_status take_cell(sqlite3_stmt *s, int col, struct store_cell *c)
{
    int type = sqlite3_column_type(s, col);

    *c = (struct store_cell){.type = STORE_CELL_NULL};
    if (type == SQLITE_NULL) return STORE_OK;
    if (type == SQLITE_INTEGER) {
        c->type = STORE_CELL_INT;
        c->i = sqlite3_column_int64(s, col);
        return STORE_OK;
    }
    /* TEXT, BLOB (and REAL, which the schema has none of, as its text) */
    const void *p = type == SQLITE_BLOB ? sqlite3_column_blob(s, col) : (const void *)sqlite3_column_text(s, col);
    size_t len = (size_t)sqlite3_column_bytes(s, col);

    c->type = type == SQLITE_BLOB ? STORE_CELL_BLOB : STORE_CELL_TEXT;
    c->len = len;
    c->data = malloc(len + 1);
    if (!c->data) return STORE_ERR_NOMEM;
    if (len) memcpy(c->data, p, len);
    c->data[len] = '\0';
    return STORE_OK;
}

/* The columns of `s` after the leading rowid into r->cols. */
static enum store_status take_columns(sqlite3_stmt *s, struct store_rows *r)
{
    r->ncols = (size_t)sqlite3_column_count(s) - 1;
    r->cols = calloc(r->ncols ? r->ncols : 1, sizeof *r->cols);
    if (!r->cols) return STORE_ERR_NOMEM;
    for (size_t i = 0; i < r->ncols; i++) {
        r->cols[i] = strdup(sqlite3_column_name(s, (int)i + 1));
        if (!r->cols[i]) return STORE_ERR_NOMEM;
    }
    return STORE_OK;
}

/* One row of `s` appended to r (cells grown by doubling); *bytes grows by its size. */
static enum store_status take_row(sqlite3_stmt *s, struct store_rows *r, size_t *cap, size_t *bytes)
{
    if (r->nrows == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct store_cell *n = realloc(r->cells, ncap * r->ncols * sizeof *n + 1);

        if (!n) return STORE_ERR_NOMEM;
        r->cells = n;
        *cap = ncap;
    }
    struct store_cell *row = r->cells + r->nrows * r->ncols;

    r->nrows++;
    for (size_t i = 0; i < r->ncols; i++) row[i] = (struct store_cell){.type = STORE_CELL_NULL};
    for (size_t i = 0; i < r->ncols; i++) {
        if (take_cell(s, (int)i + 1, &row[i]) != STORE_OK) return STORE_ERR_NOMEM;
        *bytes += row[i].len + 8;
    }
    r->last = sqlite3_column_int64(s, 0);
    return STORE_OK;
}

/* The index of column `name` in r (every table read here has the columns asked for). */
static int col_index(const struct store_rows *r, const char *name)
{
    for (size_t i = 0; i < r->ncols; i++)
        if (strcmp(r->cols[i], name) == 0) return (int)i;
    return -1;
}

/* Rows of messages whose bytes are in the body log get them back in `raw` (body_segment and the
 * rest NULL): the target keeps them in its rows (PostgreSQL), or as rows written before the log. */
static enum store_status inline_bodies(struct sqlite_be *be, struct store_rows *r, char **err)
{
    const int raw = col_index(r, "raw"), seg = col_index(r, "body_segment"), off = col_index(r, "body_offset"),
              size = col_index(r, "size"), crc = col_index(r, "body_crc"), id = col_index(r, "id");

    if (raw < 0 || seg < 0 || off < 0 || size < 0 || crc < 0 || id < 0) return STORE_OK;
    for (size_t i = 0; i < r->nrows; i++) {
        struct store_cell *row = r->cells + i * r->ncols;
        if (row[seg].type != STORE_CELL_INT) continue;
        const struct store_body_ref ref = {
            .segment = row[seg].i, .offset = row[off].i, .len = row[size].i, .crc = (uint32_t)row[crc].i};
        uint8_t *data = NULL;
        enum store_status st = store_bodies_read(be->bodies, &ref, row[id].data ? row[id].data : "?", &data, err);
        if (st == STORE_ERR_NOT_FOUND) {
            store_set_err(err, "message %s: its body segment is gone", row[id].data ? row[id].data : "?");
            st = STORE_ERR_IO;
        }
        if (st != STORE_OK) return st;
        free(row[raw].data);
        row[raw] = (struct store_cell){.type = STORE_CELL_BLOB, .data = (char *)data, .len = (size_t)ref.len};
        row[seg] = row[off] = row[crc] = (struct store_cell){.type = STORE_CELL_NULL};
    }
    return STORE_OK;
}

enum store_status store_sqlite_rows_read(void *arg, const char *table, int64_t after, size_t max_rows,
                                   size_t max_bytes, struct store_rows **out, char **err)
{
    struct sqlite_be *be = arg;
    struct store_rows *r = calloc(1, sizeof *r);
    sqlite3_stmt *s = NULL;
    enum store_status st = STORE_ERR_NOMEM;
    size_t cap = 0, bytes = 0;
    char sql[160];
    int rc;

    *out = NULL;
    if (!r) goto nomem;
    if (!table_name_ok(table)) {
        store_set_err(err, "no such table \"%s\"", table);
        st = STORE_ERR_IO;
        goto fail;
    }
    snprintf(sql, sizeof sql, "SELECT rowid, * FROM %s WHERE rowid > ?1 ORDER BY rowid LIMIT ?2", table);
    pthread_mutex_lock(&be->rmu);
    rc = sqlite3_prepare_v2(be->rdb, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 1, after);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 2, (sqlite3_int64)max_rows);
    if (rc == SQLITE_OK) st = take_columns(s, r);
    while (rc == SQLITE_OK && st == STORE_OK && bytes < max_bytes) {
        int step = sqlite3_step(s);

        if (step == SQLITE_DONE) break;
        if (step != SQLITE_ROW) {
            rc = step;
            break;
        }
        st = take_row(s, r, &cap, &bytes);
        /* A body in the log counts for its size: the page holds it once the bodies are in. */
        if (st == STORE_OK && strcmp(table, "messages") == 0)
            bytes += (size_t)sqlite3_column_int64(s, 1 + col_index(r, "size"));
    }
    if (rc != SQLITE_OK) {
        store_set_err(err, "reading %s: %s", table, store_sqlite_error(be->rdb, rc));
        st = store_sqlite_status(be->rdb, rc);
    }
    sqlite3_finalize(s);
    pthread_mutex_unlock(&be->rmu);
    if (st == STORE_OK && strcmp(table, "messages") == 0) st = inline_bodies(be, r, err);
    if (st == STORE_ERR_NOMEM) goto nomem;
    if (st != STORE_OK) goto fail;
    *out = r;
    return STORE_OK;
nomem:
    store_set_err(err, "reading %s: out of memory", table);
    st = STORE_ERR_NOMEM;
fail:
    store_rows_free(r);
    return st;
}

static int bind_cell(sqlite3_stmt *s, int i, const struct store_cell *c)
{
    switch (c->type) {
    case STORE_CELL_INT: return sqlite3_bind_int64(s, i, c->i);
    case STORE_CELL_TEXT: return sqlite3_bind_text(s, i, c->data, (int)c->len, SQLITE_STATIC);
    case STORE_CELL_BLOB: return sqlite3_bind_blob64(s, i, c->data, c->len, SQLITE_STATIC);
    case STORE_CELL_NULL: break;
    }
    return sqlite3_bind_null(s, i);
}

/* "INSERT OR IGNORE INTO t (c1, ...) VALUES (?, ...)" (malloc'd). */
static char *insert_sql(const char *table, const struct store_rows *rows)
{
    size_t cap = 64 + strlen(table);
    for (size_t i = 0; i < rows->ncols; i++) cap += strlen(rows->cols[i]) + 8;
    char *sql = malloc(cap);
    if (!sql) return NULL;
    size_t n = (size_t)snprintf(sql, cap, "INSERT OR IGNORE INTO %s (", table);
    for (size_t i = 0; i < rows->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, "%s\"%s\"", i ? ", " : "", rows->cols[i]);
    n += (size_t)snprintf(sql + n, cap - n, ") VALUES (");
    for (size_t i = 0; i < rows->ncols; i++) n += (size_t)snprintf(sql + n, cap - n, "%s?", i ? ", " : "");
    snprintf(sql + n, cap - n, ")");
    return sql;
}

enum store_status store_sqlite_rows_insert(void *arg, const char *table, const struct store_rows *rows,
                                     char **err)
{
    struct sqlite_be *be = arg;
    sqlite3_stmt *s = NULL;
    char *sql = NULL;
    int rc = SQLITE_OK;

    if (!table_name_ok(table)) {
        store_set_err(err, "no such table \"%s\"", table);
        return STORE_ERR_IO;
    }
    if (rows->nrows == 0) return STORE_OK;
    sql = insert_sql(table, rows);
    if (!sql) {
        store_set_err(err, "out of memory");
        return STORE_ERR_NOMEM;
    }
    rc = sqlite3_prepare_v2(be->wdb, sql, -1, &s, NULL);
    for (size_t r = 0; rc == SQLITE_OK && r < rows->nrows; r++) {
        const struct store_cell *row = rows->cells + r * rows->ncols;

        for (size_t i = 0; rc == SQLITE_OK && i < rows->ncols; i++) rc = bind_cell(s, (int)i + 1, &row[i]);
        if (rc == SQLITE_OK) rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) rc = sqlite3_reset(s);
    }
    free(sql);
    if (rc != SQLITE_OK) {
        store_set_err(err, "writing %s: %s", table, store_sqlite_error(be->wdb, rc));
        enum store_status st = store_sqlite_status(be->wdb, rc);
        sqlite3_finalize(s);
        return st;
    }
    sqlite3_finalize(s);
    return STORE_OK;
}

enum store_status store_sqlite_holds_data(void *arg, bool *has, char **err)
{
    struct sqlite_be *be = arg;
    static const char sql[] =
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key <> 'schema_version')"
        " OR EXISTS (SELECT 1 FROM routes) OR EXISTS (SELECT 1 FROM messages)"
        " OR EXISTS (SELECT 1 FROM deliveries) OR EXISTS (SELECT 1 FROM stored)"
        " OR EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM mailboxes)";
    sqlite3_stmt *s = NULL;
    enum store_status st = STORE_OK;

    *has = false;
    pthread_mutex_lock(&be->rmu);
    int rc = sqlite3_prepare_v2(be->rdb, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *has = sqlite3_column_int(s, 0) != 0;
    } else {
        store_set_err(err, "%s", store_sqlite_error(be->rdb, rc));
        st = store_sqlite_status(be->rdb, rc);
    }
    sqlite3_finalize(s);
    pthread_mutex_unlock(&be->rmu);
    return st;
}

/* ---- portable statements ---------------------------------------------------------------------- */

/* Binds $1..$n by name: SQLite numbers named parameters in order of first appearance, and a
 * statement may leave some out (then it is not bound). */
static int bind_params(sqlite3_stmt *s, const struct store_param *p, size_t n)
{
    int rc = SQLITE_OK;

    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        char name[24];

        snprintf(name, sizeof name, "$%zu", i + 1);
        int at = sqlite3_bind_parameter_index(s, name);
        if (!at) continue;
        if (p[i].type == STORE_CELL_INT) rc = sqlite3_bind_int64(s, at, p[i].i);
        else if (p[i].type == STORE_CELL_TEXT) rc = sqlite3_bind_text(s, at, p[i].data, -1, SQLITE_STATIC);
        else rc = sqlite3_bind_null(s, at);
    }
    return rc;
}

/* Every row of `s` into *out (when out is not NULL; else stepped to the end). */
static int collect(sqlite3_stmt *s, struct store_rows **out, enum store_status *st)
{
    struct store_rows *r = NULL;
    size_t cap = 0;
    int rc;

    *st = STORE_OK;
    if (out) {
        r = calloc(1, sizeof *r);
        if (!r) {
            *st = STORE_ERR_NOMEM;
            return SQLITE_NOMEM;
        }
        r->ncols = (size_t)sqlite3_column_count(s);
        r->cols = calloc(r->ncols ? r->ncols : 1, sizeof *r->cols);
        if (!r->cols) *st = STORE_ERR_NOMEM;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW && r && *st == STORE_OK) {
        if (r->nrows == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct store_cell *n = realloc(r->cells, ncap * r->ncols * sizeof *n + 1);

            if (!n) {
                *st = STORE_ERR_NOMEM;
                break;
            }
            r->cells = n;
            cap = ncap;
        }
        struct store_cell *row = r->cells + r->nrows++ * r->ncols;

        for (size_t i = 0; i < r->ncols; i++) row[i] = (struct store_cell){.type = STORE_CELL_NULL};
        for (size_t i = 0; i < r->ncols && *st == STORE_OK; i++) *st = take_cell(s, (int)i, &row[i]);
    }
    if (*st != STORE_OK || (rc != SQLITE_DONE && rc != SQLITE_ROW)) {
        store_rows_free(r);
        return *st != STORE_OK ? SQLITE_NOMEM : rc;
    }
    if (out) *out = r;
    return SQLITE_DONE;
}

static enum store_status run_sql(sqlite3 *db, const char *sql, const struct store_param *params,
                                 size_t nparams, int64_t *changed, struct store_rows **out, char **err)
{
    sqlite3_stmt *s = NULL;
    enum store_status st = STORE_OK;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);

    if (out) *out = NULL;
    if (rc == SQLITE_OK) rc = bind_params(s, params, nparams);
    if (rc == SQLITE_OK) rc = collect(s, out, &st);
    if (rc == SQLITE_DONE) {
        if (changed) *changed = sqlite3_changes64(db);
        sqlite3_finalize(s);
        return STORE_OK;
    }
    if (st == STORE_ERR_NOMEM) store_set_err(err, "out of memory");
    else store_set_err(err, "%s", store_sqlite_error(db, rc));
    if (st == STORE_OK) st = store_sqlite_status(db, rc);
    sqlite3_finalize(s);
    return st;
}

enum store_status store_sqlite_sql_read(void *arg, const char *sql, const struct store_param *params,
                                        size_t nparams, struct store_rows **out, char **err)
{
    struct sqlite_be *be = arg;

    pthread_mutex_lock(&be->rmu);
    enum store_status st = run_sql(be->rdb, sql, params, nparams, NULL, out, err);
    pthread_mutex_unlock(&be->rmu);
    return st;
}

enum store_status store_sqlite_sql_write(void *arg, const char *sql, const struct store_param *params,
                                         size_t nparams, int64_t *changed, struct store_rows **out,
                                         char **err)
{
    struct sqlite_be *be = arg;

    return run_sql(be->wdb, sql, params, nparams, changed, out, err);
}
