/* engine/migrate.c — `inlet migrate` (see migrate.h).
 *
 * The copy itself is storage's (store_copy_into: every table, page by page, a row already in the
 * target kept).  What this file adds is the guard around it, kept in the target's meta rows:
 *   migrated_from   the source's database file (real path), written before the first row
 *   migration_done  Unix seconds, written after the last
 * A target that holds data without migrated_from, or from another source, is refused; one with
 * migrated_from of this source and no migration_done is an interrupted copy, resumed; with
 * migration_done it was finished before, and nothing is done.  The source is locked like a data
 * dir of `inlet serve` (util/lockfile.h), so a running single node cannot keep writing into it. */
#include "engine/migrate.h"

#include <errno.h>
#include <glib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "storage/store.h"
#include "util/dburl.h"
#include "util/lockfile.h"
#include "util/log.h"

#define META_FROM "migrated_from"
#define META_DONE "migration_done"

struct migration {
    const char *from_arg, *to_arg;
    char *data_dir;   /* the source's data dir (the folder of its database file) */
    char *source_id;  /* real path of the source's database file */
    char *to_shown;   /* the target URL without its password */
    int lock_fd;
    struct store *from, *to;
};

static void usage_error(const char *what)
{
    fprintf(stderr, "inlet migrate: %s (inlet migrate --from DATA-DIR|SQLITE-FILE --to postgresql://...)\n",
            what);
}

static int parse_args(struct migration *m, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char **slot = strcmp(argv[i], "--from") == 0 ? &m->from_arg
                            : strcmp(argv[i], "--to") == 0 ? &m->to_arg
                                                           : NULL;
        if (!slot || i + 1 >= argc || *slot) {
            usage_error(slot ? "--from and --to take one value each" : "unexpected argument");
            return -1;
        }
        *slot = argv[++i];
    }
    if (!m->from_arg || !*m->from_arg || !m->to_arg || !*m->to_arg) {
        usage_error("both --from and --to are needed");
        return -1;
    }
    if (dburl_kind(m->to_arg) == DBURL_INVALID || !*m->to_arg) {
        g_autofree char *shown = dburl_redact(m->to_arg);
        usage_error("--to is not a postgresql:// URL (or sqlite:PATH)");
        fprintf(stderr, "inlet migrate: --to was \"%s\"\n", shown);
        return -1;
    }
    return 0;
}

/* The source: a data dir (its inlet.db) or the database file itself; locked, then opened. */
static int open_source(struct migration *m)
{
    struct stat sb;
    g_autofree char *file = NULL;
    char real[PATH_MAX];
    char *err = NULL;

    if (stat(m->from_arg, &sb) < 0) {
        fprintf(stderr, "inlet migrate: --from %s: %s\n", m->from_arg, strerror(errno));
        return -1;
    }
    file = S_ISDIR(sb.st_mode) ? g_build_filename(m->from_arg, "inlet.db", NULL) : g_strdup(m->from_arg);
    if (!realpath(file, real)) {
        fprintf(stderr, "inlet migrate: --from %s: no inlet database there (%s)\n", m->from_arg,
                strerror(errno));
        return -1;
    }
    m->source_id = g_strdup(real);
    m->data_dir = g_path_get_dirname(real);
    m->lock_fd = lockfile_acquire(m->data_dir, &err);
    if (m->lock_fd < 0) {
        fprintf(stderr, "inlet migrate: %s; stop it first\n", err);
        free(err);
        return -1;
    }
    g_autofree char *url = g_strconcat("sqlite:", real, NULL);
    m->from = store_open(m->data_dir, url, &err);
    if (!m->from) {
        fprintf(stderr, "inlet migrate: cannot open %s: %s\n", real, err);
        free(err);
        return -1;
    }
    return 0;
}

/* 1: copy (fresh or resumed), 0: copied before, -1: refused or failed. */
static int check_target(struct migration *m)
{
    bool has = false;
    char *err = NULL, *value = NULL;

    if (store_holds_data(m->to, &has, &err) != STORE_OK) {
        fprintf(stderr, "inlet migrate: %s: %s\n", m->to_shown, err);
        free(err);
        return -1;
    }
    if (!has) {
        if (store_set_meta_if_absent(m->to, META_FROM, m->source_id, &value) != STORE_OK) {
            fprintf(stderr, "inlet migrate: %s: cannot mark the migration\n", m->to_shown);
            return -1;
        }
    } else if (store_get_meta(m->to, META_FROM, &value) != STORE_OK) {
        fprintf(stderr, "inlet migrate: %s already holds data (routes, messages or keys of its own): "
                        "refused; migrate into an empty database\n", m->to_shown);
        return -1;
    }
    int rc = strcmp(value, m->source_id) == 0 ? 1 : -1;
    if (rc < 0)
        fprintf(stderr, "inlet migrate: %s already holds a migration from %s: refused\n", m->to_shown, value);
    free(value);
    value = NULL;
    if (rc == 1 && store_get_meta(m->to, META_DONE, &value) == STORE_OK) {
        printf("%s was already migrated into %s; nothing to do\n", m->source_id, m->to_shown);
        rc = 0;
    } else if (rc == 1 && has) {
        printf("resuming the interrupted migration of %s into %s\n", m->source_id, m->to_shown);
    }
    free(value);
    return rc;
}

/* One line per page committed ("copied"), one per table done: a long copy shows it moves, and
 * what an interruption left is plain. */
static void on_progress(void *arg, const char *table, int64_t rows, bool done)
{
    (void)arg;
    printf("  %-10s %lld rows%s\n", table, (long long)rows, done ? "" : " copied");
    fflush(stdout);
}

static int copy(struct migration *m)
{
    char *err = NULL, *winner = NULL;
    char now[32];

    printf("copying %s into %s\n", m->source_id, m->to_shown);
    if (store_copy_into(m->from, m->to, on_progress, NULL, &err) != STORE_OK) {
        fprintf(stderr, "inlet migrate: %s; run the same command again to go on\n", err ? err : "failed");
        free(err);
        return -1;
    }
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    if (store_set_meta_if_absent(m->to, META_DONE, now, &winner) != STORE_OK) {
        fprintf(stderr, "inlet migrate: cannot mark the migration done; run the same command again\n");
        return -1;
    }
    free(winner);
    printf("migrated: start inlet serve --database %s on each node\n", m->to_shown);
    return 0;
}

int engine_migrate_command(int argc, char **argv)
{
    struct migration m = {.lock_fd = -1};
    char *err = NULL;
    int status = 1;

    if (parse_args(&m, argc, argv) < 0) return 2;
    log_set_level(LOG_WARN);
    m.to_shown = dburl_redact(m.to_arg);
    if (open_source(&m) < 0) goto out;
    m.to = store_open(m.data_dir, m.to_arg, &err);
    if (!m.to) {
        fprintf(stderr, "inlet migrate: cannot open %s: %s\n", m.to_shown, err);
        free(err);
        goto out;
    }
    int rc = check_target(&m);
    if (rc < 0) goto out;
    status = rc == 0 || copy(&m) == 0 ? 0 : 1;
out:
    store_close(m.to);
    store_close(m.from);
    lockfile_release(m.lock_fd);
    g_free(m.data_dir);
    g_free(m.source_id);
    g_free(m.to_shown);
    return status;
}
