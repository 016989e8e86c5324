/* storage/store.c — the storage face: database URL, data directory, and the group-commit writer.
 *
 * store_accept() appends to a queue (mutex + condition variable).  One writer thread takes
 * everything queued, up to STORE_BATCH_MAX_MESSAGES messages or STORE_BATCH_MAX_BYTES bytes (at
 * least one message, however large), and hands it to the backend as one transaction.  While that
 * COMMIT and its sync run, new messages pile up in the queue and form the next batch: under load
 * one fsync covers many messages, and an idle store commits a lone message at once.
 *
 * A failed batch (disk full, I/O error, database locked too long) gets its status in every
 * message's callback and nothing of it is in the database; the writer goes on with the next
 * batch, so accepting resumes by itself when the cause goes away.  A message that alone cannot be
 * stored (duplicate id: should never happen; a body above the backend's size limit) fails alone
 * and the rest of its batch commits (see internal.h).
 *
 * Locks: `mu` guards the queue, `stopping` and the statistics; `write_mu` is held by the writer
 * around each batch (uncontended; it lets a test look at the write connection safely).  No lock
 * is held while a callback runs. */
#include "storage/store.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage/internal.h"
#include "util/dburl.h"
#include "util/id.h"
#include "util/limits.h"
#include "util/log.h"

_Static_assert(STORE_BATCH_MAX_MESSAGES > 0, "a batch holds at least one message");
_Static_assert(STORE_BATCH_MAX_BYTES > 0, "a batch holds at least one byte");

#define STORE_DB_FILE "inlet.db"

/* One queued write: a message (msg, done, arg), a job someone waits for (job, waiter), a job
 * nobody waits for (job, job_done, job_arg; store_submit_job: the entry owns the job), or a
 * message and the job of its outcome together (store_accept_routed: both, in one batch, the
 * message borrowed from the caller). */
struct store_entry {
    struct store_message *msg;
    store_done_fn done;
    void *arg;
    bool borrowed; /* msg stays the caller's: never freed, never handed back */
    struct store_job *job;
    struct job_waiter *waiter;
    store_write_done_fn job_done;
    void *job_arg;
    struct store_entry *next;
};

/* Where the thread that queued a job sleeps until the writer finished it. */
struct job_waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

struct store {
    const struct store_backend *ops;
    void *be;
    char *path;
    char node_id[NODE_ID_MAX + 1]; /* claims (store_set_claims) */
    int64_t lease_ms;

    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct store_entry *head, **tail;
    bool stopping;
    struct store_stats stats;
    struct store_histograms hist;

    pthread_mutex_t write_mu;
    pthread_t writer;
    bool writer_started;

    /* The batch being written; only the writer thread touches these.  batch[] holds message and
     * job entries together, msgs[] and jobs[] the ones of each kind. */
    struct store_entry *batch[STORE_BATCH_MAX_MESSAGES];
    struct store_message *msgs[STORE_BATCH_MAX_MESSAGES];
    enum store_status status[STORE_BATCH_MAX_MESSAGES];
    struct store_job *jobs[STORE_BATCH_MAX_MESSAGES];
};

void store_set_err(char **err, const char *fmt, ...)
{
    va_list ap;

    if (!err) return;
    free(*err);
    va_start(ap, fmt);
    if (vasprintf(err, fmt, ap) < 0) *err = NULL;
    va_end(ap);
}

const char *store_status_text(enum store_status status)
{
    switch (status) {
    case STORE_OK: return "ok";
    case STORE_ERR_IO: return "storage error";
    case STORE_ERR_FULL: return "disk full";
    case STORE_ERR_NOT_FOUND: return "not found";
    case STORE_ERR_QUOTA: return "quota reached";
    case STORE_ERR_BUSY: return "storage busy";
    case STORE_ERR_NOMEM: return "out of memory";
    case STORE_ERR_CONFLICT: return "conflict";
    }
    return "storage error";
}

bool store_status_failed(enum store_status status)
{
    return status != STORE_OK && status != STORE_ERR_NOT_FOUND && status != STORE_ERR_QUOTA &&
           status != STORE_ERR_CONFLICT;
}

/* A message's columns as a backend read them, copied into m (store_message_fill in internal.h). */
enum store_status store_message_fill(struct store_message *m, const struct store_message_cols *c,
                                     char **err)
{
    enum store_status rc;

    m->received_at_ms = c->received_at_ms;
    m->sender = strdup(c->sender ? c->sender : "");
    m->remote_ip = strdup(c->remote_ip ? c->remote_ip : "");
    m->helo = strdup(c->helo ? c->helo : "");
    m->tls = strdup(c->tls ? c->tls : "");
    m->len = c->len;
    m->data = malloc(c->len ? c->len : 1); /* never NULL, even for an empty body */
    if (m->data && c->len) memcpy(m->data, c->raw, c->len);
    if (!m->sender || !m->remote_ip || !m->helo || !m->tls || !m->data) {
        store_set_err(err, "cannot load message %s: out of memory", m->id);
        return STORE_ERR_NOMEM;
    }
    rc = store_json_parse_string_array(c->rcpts_json ? c->rcpts_json : "", &m->rcpts, &m->nrcpts);
    if (rc == STORE_ERR_NOMEM)
        store_set_err(err, "cannot load message %s: out of memory", m->id);
    else if (rc != STORE_OK)
        store_set_err(err, "cannot load message %s: its recipients are not a JSON array of strings",
                      m->id);
    return rc;
}

void store_free_message(struct store_message *msg)
{
    if (!msg) return;
    free(msg->sender);
    if (msg->rcpts) {
        for (size_t i = 0; i < msg->nrcpts; i++) free(msg->rcpts[i]);
        free(msg->rcpts);
    }
    free(msg->remote_ip);
    free(msg->helo);
    free(msg->tls);
    if (msg->map)
        munmap(msg->map, msg->map_len);
    else
        free(msg->data);
    store_spool_discard(msg->spool);
    free(msg);
}

enum store_status store_spool_begin(struct store *st, struct store_spool **out, char **err)
{
    *out = NULL;
    if (err) *err = NULL;
    if (!st->ops->spool_open) return STORE_ERR_NOT_FOUND;
    return st->ops->spool_open(st->be, out, err);
}

/* ---- JSON ----------------------------------------------------------------------------------- */

static size_t json_escaped_len(const char *s)
{
    size_t n = 0;

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\' || *p == '\n' || *p == '\r' || *p == '\t' || *p == '\b' ||
            *p == '\f')
            n += 2;
        else if (*p < 0x20 || *p == 0x7f)
            n += 6;
        else
            n += 1;
    }
    return n;
}

static char *json_escape_into(char *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': *out++ = '\\'; *out++ = '"'; break;
        case '\\': *out++ = '\\'; *out++ = '\\'; break;
        case '\n': *out++ = '\\'; *out++ = 'n'; break;
        case '\r': *out++ = '\\'; *out++ = 'r'; break;
        case '\t': *out++ = '\\'; *out++ = 't'; break;
        case '\b': *out++ = '\\'; *out++ = 'b'; break;
        case '\f': *out++ = '\\'; *out++ = 'f'; break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                /* DEL needs no escape in JSON; escaping it keeps the text printable. */
                memcpy(out, "\\u00", 4);
                out[4] = hex[*p >> 4];
                out[5] = hex[*p & 0xf];
                out += 6;
            } else {
                *out++ = (char)*p;
            }
        }
    }
    return out;
}

char *store_json_string_array(const char *const *items, size_t n)
{
    size_t len = 3; /* [ ] NUL */
    char *out, *p;

    for (size_t i = 0; i < n; i++) len += json_escaped_len(items[i] ? items[i] : "") + 3;
    out = malloc(len);
    if (!out) return NULL;
    p = out;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i) *p++ = ',';
        *p++ = '"';
        p = json_escape_into(p, items[i] ? items[i] : "");
        *p++ = '"';
    }
    *p++ = ']';
    *p = '\0';
    return out;
}

/* Appends the UTF-8 encoding of code point `c` (< 0x110000, not a surrogate). */
static char *utf8_put(char *out, unsigned long c)
{
    if (c < 0x80) {
        *out++ = (char)c;
    } else if (c < 0x800) {
        *out++ = (char)(0xc0 | (c >> 6));
        *out++ = (char)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
        *out++ = (char)(0xe0 | (c >> 12));
        *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *out++ = (char)(0x80 | (c & 0x3f));
    } else {
        *out++ = (char)(0xf0 | (c >> 18));
        *out++ = (char)(0x80 | ((c >> 12) & 0x3f));
        *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *out++ = (char)(0x80 | (c & 0x3f));
    }
    return out;
}

static int hex4(const char *p, unsigned long *out)
{
    unsigned long v = 0;

    for (int i = 0; i < 4; i++) {
        char c = p[i];

        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned long)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned long)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned long)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Parses the JSON string at *pp (at its opening quote) into a malloc'd C string; *pp moves past
 * the closing quote.  NULL when malformed (or out of memory: *oom set). */
static char *json_parse_string(const char **pp, bool *oom)
{
    const char *p = *pp + 1, *q;
    char *out, *o;

    /* An escape never yields more bytes than it takes, so the source length bounds the result. */
    for (q = p; *q && *q != '"'; q++)
        if (*q == '\\' && q[1]) q++;
    if (*q != '"') return NULL;
    out = malloc((size_t)(q - p) + 1);
    if (!out) {
        *oom = true;
        return NULL;
    }
    o = out;
    while (*p != '"') {
        unsigned char c = (unsigned char)*p;

        if (c < 0x20) goto bad; /* raw control character */
        if (c != '\\') {
            *o++ = (char)c;
            p++;
            continue;
        }
        p++;
        switch (*p) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned long cp, lo;

            if (hex4(p + 1, &cp) < 0) goto bad;
            p += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (p[1] != '\\' || p[2] != 'u' || hex4(p + 3, &lo) < 0 || lo < 0xdc00 ||
                    lo > 0xdfff)
                    goto bad;
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if ((cp >= 0xdc00 && cp <= 0xdfff) || cp == 0) {
                goto bad; /* lone low surrogate; NUL cannot be in a C string */
            }
            o = utf8_put(o, cp);
            break;
        }
        default: goto bad;
        }
        p++;
    }
    *o = '\0';
    *pp = p + 1;
    return out;

bad:
    free(out);
    return NULL;
}

static const char *json_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

enum store_status store_json_parse_string_array(const char *json, char ***items, size_t *n)
{
    const char *p;
    char **v = NULL;
    size_t count = 0, cap = 0;
    bool oom = false;

    *items = NULL;
    *n = 0;
    if (!json) return STORE_ERR_IO;
    p = json_ws(json);
    if (*p++ != '[') return STORE_ERR_IO;
    p = json_ws(p);
    if (*p == ']') {
        p = json_ws(p + 1);
        return *p ? STORE_ERR_IO : STORE_OK;
    }
    for (;;) {
        char *item;

        if (*p != '"') goto bad;
        item = json_parse_string(&p, &oom);
        if (!item) goto bad;
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            char **nv = realloc(v, ncap * sizeof *nv);

            if (!nv) {
                free(item);
                oom = true;
                goto bad;
            }
            v = nv;
            cap = ncap;
        }
        v[count++] = item;
        p = json_ws(p);
        if (*p == ',') {
            p = json_ws(p + 1);
            continue;
        }
        if (*p != ']') goto bad;
        p = json_ws(p + 1);
        if (*p) goto bad;
        break;
    }
    *items = v;
    *n = count;
    return STORE_OK;

bad:
    for (size_t i = 0; i < count; i++) free(v[i]);
    free(v);
    return oom ? STORE_ERR_NOMEM : STORE_ERR_IO;
}

/* ---- files ---------------------------------------------------------------------------------- */

/* Makes a new directory entry durable. */
static void fsync_parent(const char *path)
{
    size_t len = strlen(path);
    const char *slash;
    char *copy;
    int fd;

    while (len > 1 && path[len - 1] == '/') len--;
    slash = memrchr(path, '/', len);
    if (!slash)
        copy = strdup(".");
    else
        copy = strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (!copy) return;
    fd = open(copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(copy);
}

/* mkdir 0700 (whatever the umask), or leave an existing directory as it is. */
static int make_data_dir(const char *dir, char **err)
{
    struct stat sb;

    if (mkdir(dir, 0700) == 0) {
        if (chmod(dir, 0700) < 0) {
            store_set_err(err, "cannot set the mode of data directory %s: %s", dir, strerror(errno));
            return -1;
        }
        fsync_parent(dir);
        return 0;
    }
    if (errno != EEXIST) {
        store_set_err(err, "cannot create data directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
        store_set_err(err, "data directory %s exists and is not a directory", dir);
        return -1;
    }
    return 0;
}

/* Creates the database file 0600 before the backend opens it (SQLite would apply the umask); an
 * existing file is left as it is. */
static int make_db_file(const char *path, char **err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd < 0) {
        if (errno == EEXIST) return 0;
        store_set_err(err, "cannot create database %s: %s", path, strerror(errno));
        return -1;
    }
    if (fchmod(fd, 0600) < 0 || fsync(fd) < 0) {
        store_set_err(err, "cannot set up database %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    fsync_parent(path);
    return 0;
}

/* Picks the backend and its location from the database URL.  *location is malloc'd. */
static int parse_database(const char *data_dir, const char *database,
                          const struct store_backend **ops, char **location, char **err)
{
    *ops = NULL;
    *location = NULL;
    if (!database || !*database) {
        if (!data_dir || !*data_dir) {
            store_set_err(err, "no data directory and no database URL");
            return -1;
        }
        int len = (int)strlen(data_dir);

        while (len > 1 && data_dir[len - 1] == '/') len--;
        if (asprintf(location, "%.*s/%s", len, data_dir, STORE_DB_FILE) < 0) {
            *location = NULL;
            store_set_err(err, "out of memory");
            return -1;
        }
        *ops = &store_sqlite_backend;
        return 0;
    }
    if (strncmp(database, "sqlite:", 7) == 0) {
        if (!database[7]) {
            store_set_err(err, "database URL \"sqlite:\" names no file");
            return -1;
        }
        *location = strdup(database + 7);
        if (!*location) {
            store_set_err(err, "out of memory");
            return -1;
        }
        *ops = &store_sqlite_backend;
        return 0;
    }
    if (strncmp(database, "postgresql://", 13) == 0 || strncmp(database, "postgres://", 11) == 0) {
        *location = strdup(database);
        if (!*location) {
            store_set_err(err, "out of memory");
            return -1;
        }
        *ops = &store_postgres_backend;
        return 0;
    }
    store_set_err(err, "unsupported database URL \"%s\" (expected sqlite:PATH or postgresql://...)",
            database);
    return -1;
}

/* ---- writer --------------------------------------------------------------------------------- */

static double elapsed_ms(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e3 + (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

static void job_finish(struct store_entry *e)
{
    struct job_waiter *w = e->waiter;

    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    /* The waiter (on the caller's stack) may be gone from here on. */
}

/* Writes the batch[0..nentries-1] (messages and jobs) in one transaction, then answers each. */
static const double batch_bounds[STORE_BATCH_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, INFINITY};
static const double latency_bounds[STORE_LATENCY_BUCKETS] = {0.0005, 0.001, 0.002, 0.005, 0.01,
                                                             0.025, 0.05, 0.1, 0.5, INFINITY};

/* Under st->mu. */
static void observe_batch(struct store_histograms *h, size_t entries, double seconds)
{
    for (size_t i = 0; i < STORE_BATCH_BUCKETS; i++)
        if ((double)entries <= batch_bounds[i]) h->batch_counts[i]++;
    for (size_t i = 0; i < STORE_LATENCY_BUCKETS; i++)
        if (seconds <= latency_bounds[i]) h->latency_counts[i]++;
    h->batch_sum += (double)entries;
    h->latency_sum += seconds;
    h->count++;
}

void store_get_histograms(struct store *st, struct store_histograms *out)
{
    pthread_mutex_lock(&st->mu);
    *out = st->hist;
    pthread_mutex_unlock(&st->mu);
    memcpy(out->batch_bounds, batch_bounds, sizeof batch_bounds);
    memcpy(out->latency_bounds, latency_bounds, sizeof latency_bounds);
}

/* A message's callback.  A committed message goes back to the caller (the pipeline parses it
 * next) unless the caller kept it (store_accept_routed). */
static void message_done(struct store_entry *e, enum store_status status)
{
    if (e->borrowed) {
        e->done(e->arg, status, NULL);
    } else if (status == STORE_OK) {
        e->done(e->arg, status, e->msg);
    } else {
        store_free_message(e->msg);
        e->done(e->arg, status, NULL);
    }
}

static void run_batch(struct store *st, size_t nentries)
{
    struct timespec t0, t1;
    enum store_status rc;
    char *err = NULL;
    size_t n = 0, njobs = 0, ok = 0, ok_bytes = 0;

    /* Messages are inserted before every job runs: a message's own outcome job finds its row. */
    for (size_t i = 0; i < nentries; i++) {
        if (st->batch[i]->msg) st->msgs[n++] = st->batch[i]->msg;
        if (st->batch[i]->job) st->jobs[njobs++] = st->batch[i]->job;
    }

    pthread_mutex_lock(&st->write_mu);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = st->ops->write_batch(st->be, st->msgs, n, st->status, st->jobs, njobs, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_mutex_unlock(&st->write_mu);

    if (rc == STORE_OK) {
        for (size_t i = 0; i < n; i++) {
            if (st->status[i] != STORE_OK) continue;
            ok++;
            ok_bytes += st->msgs[i]->len;
        }
        log_debug("storage", "commit messages=%zu bytes=%zu jobs=%zu ms=%.1f", ok, ok_bytes, njobs,
                  elapsed_ms(&t0, &t1));
    } else {
        char esc[512];
        const char *e = err ? err : "out of memory";

        for (size_t i = 0; i < n; i++) st->status[i] = rc;
        for (size_t i = 0; i < njobs; i++) {
            st->jobs[i]->status = rc;
            st->jobs[i]->err = strdup(e);
        }
        log_warn("storage", "commit failed messages=%zu jobs=%zu error=\"%s\"", n, njobs,
                 log_escape(esc, sizeof esc, e, strlen(e), 400));
    }
    free(err);

    pthread_mutex_lock(&st->mu);
    if (rc == STORE_OK) {
        observe_batch(&st->hist, nentries, elapsed_ms(&t0, &t1) / 1000.0);
        st->stats.batches++;
        st->stats.messages += ok;
        st->stats.bytes += ok_bytes;
    } else {
        st->stats.failed_batches++;
    }
    pthread_mutex_unlock(&st->mu);

    for (size_t i = 0, m = 0; i < nentries; i++) {
        struct store_entry *e = st->batch[i];

        if (e->msg) message_done(e, st->status[m++]);
        if (e->job && e->waiter) {
            job_finish(e);
        } else if (e->job) {
            /* err goes to the callee; the job struct is ours (store_submit_job). */
            e->job_done(e->job_arg, e->job->status, e->job->err);
            free(e->job);
        }
        free(e);
        st->batch[i] = NULL;
    }
    for (size_t i = 0; i < n; i++) st->msgs[i] = NULL;
    for (size_t i = 0; i < njobs; i++) st->jobs[i] = NULL;
}

static size_t entry_bytes(const struct store_entry *e)
{
    return e->msg ? e->msg->len : 0;
}

static void *writer_main(void *arg)
{
    struct store *st = arg;
    log_thread_name("writer");

    pthread_mutex_lock(&st->mu);
    for (;;) {
        size_t n = 0, bytes = 0;

        while (!st->head && !st->stopping) pthread_cond_wait(&st->cond, &st->mu);
        if (!st->head) break; /* stopping and drained */
        while (st->head && n < STORE_BATCH_MAX_MESSAGES &&
               (n == 0 || bytes + entry_bytes(st->head) <= (size_t)STORE_BATCH_MAX_BYTES)) {
            struct store_entry *e = st->head;

            st->head = e->next;
            e->next = NULL;
            bytes += entry_bytes(e);
            st->batch[n++] = e;
        }
        if (!st->head) st->tail = &st->head;
        pthread_mutex_unlock(&st->mu);
        run_batch(st, n);
        /* After the callbacks, so that housekeeping never delays this batch's replies. */
        if (st->ops->after_batch) {
            pthread_mutex_lock(&st->write_mu);
            st->ops->after_batch(st->be);
            pthread_mutex_unlock(&st->write_mu);
        }
        pthread_mutex_lock(&st->mu);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

/* ---- face ----------------------------------------------------------------------------------- */

static void store_free(struct store *st)
{
    if (!st) return;
    if (st->be) st->ops->close(st->be);
    pthread_cond_destroy(&st->cond);
    pthread_mutex_destroy(&st->mu);
    pthread_mutex_destroy(&st->write_mu);
    free(st->path);
    free(st);
}

struct store *store_open(const char *data_dir, const char *database, char **err)
{
    const struct store_backend *ops;
    struct store *st = NULL;
    char *location = NULL, *redacted;
    sigset_t all, old;
    int rc;

    if (err) *err = NULL;
    if (parse_database(data_dir, database, &ops, &location, err) < 0) goto fail;
    if (data_dir && *data_dir && make_data_dir(data_dir, err) < 0) goto fail;
    if (ops == &store_sqlite_backend && make_db_file(location, err) < 0) goto fail;

    st = calloc(1, sizeof *st);
    if (!st) {
        store_set_err(err, "out of memory");
        goto fail;
    }
    st->ops = ops;
    st->tail = &st->head;
    pthread_mutex_init(&st->mu, NULL);
    pthread_mutex_init(&st->write_mu, NULL);
    pthread_cond_init(&st->cond, NULL);
    /* What logs and messages show: a URI's password never (util/dburl.h). */
    redacted = dburl_redact(location);
    st->path = redacted ? strdup(redacted) : NULL;
    g_free(redacted);
    if (!st->path) {
        store_set_err(err, "out of memory");
        goto fail;
    }

    st->be = ops->open(location, err);
    if (!st->be) goto fail;
    free(location);
    location = NULL;
    store_set_claims(st, NULL, LEASE_SECONDS_DEFAULT);

    /* The writer takes no signals: they belong to the thread that set up their handling. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&st->writer, NULL, writer_main, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        store_set_err(err, "cannot start the storage writer thread: %s", strerror(rc));
        goto fail;
    }
    st->writer_started = true;

    log_info("storage", "ready backend=%s path=%s schema=%d", ops->kind, st->path,
             store_schema_version());
    return st;

fail:
    free(location);
    store_free(st);
    return NULL;
}

/* "<hostname>:<pid>:<8 random hex>": unique per process, and says where it runs. */
static void default_node_id(char *out, size_t outsz)
{
    char host[64] = "", rnd[9];
    uint8_t b[4];

    if (gethostname(host, sizeof host - 1) != 0 || !*host) snprintf(host, sizeof host, "inlet");
    host[strcspn(host, " \"")] = '\0';
    util_random_bytes(b, sizeof b);
    util_hex_encode(rnd, b, sizeof b);
    snprintf(out, outsz, "%s:%ld:%s", host, (long)getpid(), rnd);
}

void store_set_claims(struct store *st, const char *node_id, int64_t lease_seconds)
{
    if (node_id && *node_id) snprintf(st->node_id, sizeof st->node_id, "%s", node_id);
    else if (!st->node_id[0]) default_node_id(st->node_id, sizeof st->node_id);
    st->lease_ms = lease_seconds * 1000;
    if (st->ops->set_claims) st->ops->set_claims(st->be, st->node_id, st->lease_ms);
}

const char *store_node_id(const struct store *st)
{
    return st->node_id;
}

int64_t store_lease_ms(const struct store *st)
{
    return st->lease_ms;
}

bool store_claims_shared(const struct store *st)
{
    return st->ops->deliveries_claim != NULL;
}

void store_close(struct store *st)
{
    if (!st) return;
    pthread_mutex_lock(&st->mu);
    st->stopping = true;
    pthread_cond_broadcast(&st->cond);
    pthread_mutex_unlock(&st->mu);
    if (st->writer_started) pthread_join(st->writer, NULL);
    store_free(st);
}

/* Appends `e` to the queue and wakes the writer; false when the store is closing (a caller bug:
 * a write after close began), and then nothing was queued. */
static bool enqueue(struct store *st, struct store_entry *e)
{
    pthread_mutex_lock(&st->mu);
    if (st->stopping) {
        pthread_mutex_unlock(&st->mu);
        return false;
    }
    *st->tail = e;
    st->tail = &e->next;
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->mu);
    return true;
}

void store_accept(struct store *st, struct store_message *msg, store_done_fn done, void *arg)
{
    struct store_entry *e = malloc(sizeof *e);

    if (!e) {
        log_warn("storage", "queue failed error=\"out of memory\"");
        store_free_message(msg);
        done(arg, STORE_ERR_IO, NULL);
        return;
    }
    *e = (struct store_entry){.msg = msg, .done = done, .arg = arg};
    if (!enqueue(st, e)) {
        free(e);
        store_free_message(msg);
        done(arg, STORE_ERR_IO, NULL); /* still answered exactly once */
    }
}

enum store_status store_run_job(struct store *st, struct store_job *job, char **err)
{
    struct job_waiter w = {.done = false};
    struct store_entry *e = malloc(sizeof *e);

    if (err) *err = NULL;
    job->status = STORE_ERR_NOMEM;
    job->err = NULL;
    if (!e) {
        store_set_err(err, "cannot queue a write: out of memory");
        return job->status;
    }
    *e = (struct store_entry){.job = job, .waiter = &w};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);

    if (!enqueue(st, e)) {
        free(e);
        job->status = STORE_ERR_IO;
        job->err = strdup("storage is closing");
    } else {
        pthread_mutex_lock(&w.mu);
        while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (err && store_status_failed(job->status)) *err = job->err;
    else free(job->err);
    job->err = NULL;
    return job->status;
}

void store_submit_job(struct store *st, struct store_job *job, store_write_done_fn done,
                      void *arg)
{
    struct store_entry *e = malloc(sizeof *e);
    const char *why = "out of memory";
    enum store_status why_status = STORE_ERR_NOMEM;

    job->status = STORE_ERR_IO;
    job->err = NULL;
    if (e) {
        *e = (struct store_entry){.job = job, .job_done = done, .job_arg = arg};
        if (enqueue(st, e)) return;
        free(e);
        why = "storage is closing";
        why_status = STORE_ERR_IO;
    }
    free(job);
    done(arg, why_status, strdup(why));
}

/* A job and a copy of its argument in one allocation (store_submit_job frees it with free()). */
struct copied_job {
    struct store_job job;
    max_align_t arg[];
};

void store_submit_copy(struct store *st,
                       enum store_status (*run)(const struct store_backend *ops, void *be,
                                                void *arg, char **err),
                       const void *arg, size_t size, store_write_done_fn done, void *done_arg)
{
    size_t units = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t);
    struct copied_job *j = malloc(sizeof *j + units * sizeof(max_align_t));

    if (!j) {
        done(done_arg, STORE_ERR_NOMEM, strdup("cannot queue a write: out of memory"));
        return;
    }
    memcpy(j->arg, arg, size);
    j->job = (struct store_job){.run = run, .arg = j->arg};
    store_submit_job(st, &j->job, done, done_arg);
}

const struct store_backend *store_backend_of(struct store *st, void **be)
{
    *be = st->be;
    return st->ops;
}

/* ---- meta rows ------------------------------------------------------------------------------ */

struct meta_set {
    const char *key, *value;
    char *winner;
};

static enum store_status run_meta_set(const struct store_backend *ops, void *be, void *arg,
                                      char **err)
{
    struct meta_set *m = arg;

    return ops->meta_set_if_absent(be, m->key, m->value, &m->winner, err);
}

static void log_store_error(const char *what, const char *key, const char *e)
{
    char esc[512];

    e = e ? e : "out of memory";
    log_warn("storage", "%s failed key=%s error=\"%s\"", what, key,
             log_escape(esc, sizeof esc, e, strlen(e), 400));
}

enum store_status store_get_meta(struct store *st, const char *key, char **value)
{
    char *err = NULL;
    enum store_status rc;

    *value = NULL;
    rc = st->ops->meta_get(st->be, key, value, &err);
    if (store_status_failed(rc)) log_store_error("meta read", key, err);
    free(err);
    return rc;
}

enum store_status store_set_meta_if_absent(struct store *st, const char *key, const char *value,
                                           char **winner)
{
    struct meta_set m = {.key = key, .value = value};
    struct store_job job = {.run = run_meta_set, .arg = &m};
    char *err = NULL;
    enum store_status rc = store_run_job(st, &job, &err);

    *winner = NULL;
    if (rc != STORE_OK) {
        /* A batch that failed as a whole left no winner; a job that failed alone may have one. */
        free(m.winner);
        log_store_error("meta write", key, err);
        free(err);
        return rc;
    }
    *winner = m.winner;
    return STORE_OK;
}

/* ---- routes -------------------------------------------------------------------------------- */

void store_routes_free(struct store_route *routes, size_t n)
{
    if (!routes) return;
    for (size_t i = 0; i < n; i++) {
        free(routes[i].description);
        free(routes[i].expression);
        if (routes[i].actions) {
            for (size_t k = 0; k < routes[i].nactions; k++) free(routes[i].actions[k]);
            free(routes[i].actions);
        }
    }
    free(routes);
}

enum store_status store_routes_load(struct store *st, struct store_route **out, size_t *n,
                                    char **err)
{
    if (err) *err = NULL;
    *out = NULL;
    *n = 0;
    return st->ops->routes_load(st->be, out, n, err);
}

/* One route write (insert, update or delete) as a job. */
struct route_write {
    enum { ROUTE_INSERT, ROUTE_UPDATE, ROUTE_DELETE } op;
    const struct store_route *r;
    const char *id;
    const char *actions_json;
    int64_t quota;
    int64_t seq;
};

static enum store_status run_route_write(const struct store_backend *ops, void *be, void *arg,
                                         char **err)
{
    struct route_write *w = arg;

    switch (w->op) {
    case ROUTE_INSERT:
        return ops->route_insert(be, w->r, w->actions_json, w->quota, &w->seq, err);
    case ROUTE_UPDATE: return ops->route_update(be, w->r, w->actions_json, err);
    case ROUTE_DELETE: return ops->route_delete(be, w->id, err);
    }
    return STORE_ERR_IO;
}

/* Runs `w` through the writer and waits: the status the caller gets. */
static enum store_status route_write_run(struct store *st, struct route_write *w, char **err)
{
    struct store_job job = {.run = run_route_write, .arg = w};

    return store_run_job(st, &job, err);
}

static char *route_actions_json(const struct store_route *r, char **err)
{
    char *json = store_json_string_array((const char *const *)r->actions, r->actions ? r->nactions : 0);

    if (!json) store_set_err(err, "out of memory");
    return json;
}

enum store_status store_route_insert(struct store *st, struct store_route *r, int64_t quota,
                                     char **err)
{
    struct route_write w = {.op = ROUTE_INSERT, .r = r, .quota = quota};
    char *json;
    enum store_status rc;

    if (err) *err = NULL;
    if (!(json = route_actions_json(r, err))) return STORE_ERR_NOMEM;
    w.actions_json = json;
    rc = route_write_run(st, &w, err);
    free(json);
    if (rc == STORE_OK) r->seq = w.seq;
    return rc;
}

enum store_status store_route_update(struct store *st, const struct store_route *r, char **err)
{
    struct route_write w = {.op = ROUTE_UPDATE, .r = r};
    char *json;
    enum store_status rc;

    if (err) *err = NULL;
    if (!(json = route_actions_json(r, err))) return STORE_ERR_NOMEM;
    w.actions_json = json;
    rc = route_write_run(st, &w, err);
    free(json);
    return rc;
}

enum store_status store_route_delete(struct store *st, const char *id, char **err)
{
    struct route_write w = {.op = ROUTE_DELETE, .id = id};

    if (err) *err = NULL;
    return route_write_run(st, &w, err);
}

/* A route write queued without waiting: the job's argument, its actions JSON, and whom to tell. */
struct route_async {
    struct route_write w;
    char *json;
    struct store_route *seq_to; /* insert: where the stored seq goes */
    store_write_done_fn done;
    void *arg;
};

/* Writer thread (or the caller's, when the job could not be queued). */
static void route_async_done(void *arg, enum store_status status, char *err)
{
    struct route_async *a = arg;

    if (status == STORE_OK && a->seq_to) a->seq_to->seq = a->w.seq;
    a->done(a->arg, status, err);
    free(a->json);
    free(a);
}

static void route_write_submit(struct store *st, const struct route_write *w,
                               struct store_route *seq_to, store_write_done_fn done, void *arg)
{
    struct route_async *a = calloc(1, sizeof *a);
    struct store_job *job = calloc(1, sizeof *job);

    if (!a || !job) goto oom;
    a->w = *w;
    if (w->r && !(a->json = route_actions_json(w->r, NULL))) goto oom;
    a->w.actions_json = a->json;
    a->seq_to = seq_to;
    a->done = done;
    a->arg = arg;
    *job = (struct store_job){.run = run_route_write, .arg = &a->w};
    store_submit_job(st, job, route_async_done, a); /* owns job from here on */
    return;

oom:
    if (a) free(a->json);
    free(a);
    free(job);
    done(arg, STORE_ERR_NOMEM, strdup("cannot queue a route write: out of memory"));
}

void store_route_insert_async(struct store *st, struct store_route *r, int64_t quota,
                              store_write_done_fn done, void *arg)
{
    const struct route_write w = {.op = ROUTE_INSERT, .r = r, .quota = quota};

    route_write_submit(st, &w, r, done, arg);
}

void store_route_update_async(struct store *st, const struct store_route *r,
                              store_write_done_fn done, void *arg)
{
    const struct route_write w = {.op = ROUTE_UPDATE, .r = r};

    route_write_submit(st, &w, NULL, done, arg);
}

void store_route_delete_async(struct store *st, const char *id, store_write_done_fn done, void *arg)
{
    const struct route_write w = {.op = ROUTE_DELETE, .id = id};

    route_write_submit(st, &w, NULL, done, arg);
}

enum store_status store_watch_routes(struct store *st, store_routes_changed_fn changed, void *arg,
                                     char **err)
{
    if (err) *err = NULL;
    if (!st->ops->watch_routes) return STORE_OK; /* one process owns the database */
    return st->ops->watch_routes(st->be, changed, arg, err);
}

/* ---- routing outcomes ----------------------------------------------------------------------- */

/* A job and the outcome it writes (the job first: store_submit_job frees the whole with free()). */
struct outcome_job {
    struct store_job job;
    const struct store_outcome *o;
};

static enum store_status run_outcome(const struct store_backend *ops, void *be, void *arg,
                                     char **err)
{
    const struct outcome_job *j = arg;

    return ops->write_outcome(be, j->o, err);
}

void store_write_outcome_async(struct store *st, const struct store_outcome *o,
                               store_write_done_fn done, void *arg)
{
    struct outcome_job *j = malloc(sizeof *j);

    if (!j) {
        done(arg, STORE_ERR_NOMEM, strdup("out of memory"));
        return;
    }
    *j = (struct outcome_job){.job = {.run = run_outcome, .arg = j}, .o = o};
    store_submit_job(st, &j->job, done, arg);
}

void store_accept_routed(struct store *st, struct store_message *msg, store_done_fn accepted, void *arg,
                         const struct store_outcome *o, store_write_done_fn routed, void *routed_arg)
{
    struct outcome_job *j = malloc(sizeof *j);
    struct store_entry *e = malloc(sizeof *e);

    if (!j || !e) {
        free(j);
        free(e);
        log_warn("storage", "queue failed error=\"out of memory\"");
        accepted(arg, STORE_ERR_NOMEM, NULL);
        routed(routed_arg, STORE_ERR_NOMEM, strdup("out of memory"));
        return;
    }
    *j = (struct outcome_job){.job = {.run = run_outcome, .arg = j, .status = STORE_ERR_IO}, .o = o};
    /* One entry, so that no batch boundary falls between the message and its outcome. */
    *e = (struct store_entry){.msg = msg, .done = accepted, .arg = arg, .borrowed = true,
                              .job = &j->job, .job_done = routed, .job_arg = routed_arg};
    if (!enqueue(st, e)) {
        free(e);
        free(j);
        accepted(arg, STORE_ERR_IO, NULL);
        routed(routed_arg, STORE_ERR_IO, strdup("storage is closing"));
    }
}

enum store_status store_write_outcome(struct store *st, const struct store_outcome *o, char **err)
{
    struct outcome_job j = {.job = {.run = run_outcome, .arg = &j}, .o = o};

    return store_run_job(st, &j.job, err);
}

enum store_status store_list_unprocessed(struct store *st, char ***ids, size_t *n, size_t max,
                                         char **err)
{
    if (err) *err = NULL;
    *ids = NULL;
    *n = 0;
    if (max == 0) return STORE_OK;
    return st->ops->list_unprocessed(st->be, ids, n, max, err);
}

enum store_status store_load_message(struct store *st, const char *id, struct store_message **out,
                                     char **err)
{
    if (err) *err = NULL;
    *out = NULL;
    return st->ops->load_message(st->be, id, out, err);
}

bool store_exists(const char *data_dir, const char *database)
{
    const struct store_backend *ops;
    char *location = NULL;
    bool exists;

    if (parse_database(data_dir, database, &ops, &location, NULL) < 0) return true; /* let open say why */
    exists = ops != &store_sqlite_backend || access(location, F_OK) == 0; /* a server: ask it */
    free(location);
    return exists;
}

enum store_status store_count_unprocessed(struct store *st, int64_t *count)
{
    char *err = NULL;
    enum store_status rc = st->ops->count_unprocessed(st->be, count, &err);

    if (rc != STORE_OK) {
        char esc[512];
        const char *e = err ? err : "out of memory";

        log_warn("storage", "count failed error=\"%s\"",
                 log_escape(esc, sizeof esc, e, strlen(e), 400));
    }
    free(err);
    return rc;
}

enum store_status store_check_writable(struct store *st, char **reason)
{
    if (reason) *reason = NULL;
    return st->ops->check_writable(st->be, reason);
}

const char *store_backend_name(const struct store *st)
{
    return st->ops->name(st->be);
}

const char *store_path(const struct store *st)
{
    return st->path;
}

void store_get_stats(struct store *st, struct store_stats *out)
{
    pthread_mutex_lock(&st->mu);
    *out = st->stats;
    pthread_mutex_unlock(&st->mu);
}

enum store_status store_test_writer_query(struct store *st, const char *sql, char *out,
                                          size_t outsz)
{
    enum store_status rc;

    pthread_mutex_lock(&st->write_mu);
    rc = st->ops->writer_query(st->be, sql, out, outsz);
    pthread_mutex_unlock(&st->write_mu);
    return rc;
}

void store_test_checkpoint_stats(struct store *st, struct store_checkpoint_stats *out)
{
    *out = (struct store_checkpoint_stats){0};
    if (st->ops->checkpoint_stats) st->ops->checkpoint_stats(st->be, out);
}

/* ---- inlet migrate ---------------------------------------------------------------------------- */

/* Every table a copy carries, in the order it copies them (purge_candidates is derived: the
 * sweeper finds what it needs again; console_sessions are logins, which a move to another
 * database ends). */
static const char *const copy_tables[] = {
    "meta", "routes", "messages", "recipients", "deliveries", "attempts", "stored", "events",
    "mailboxes", "message_auth",
};

void store_rows_free(struct store_rows *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->nrows * r->ncols; i++) free(r->cells[i].data);
    free(r->cells);
    for (size_t i = 0; r->cols && i < r->ncols; i++) free(r->cols[i]);
    free(r->cols);
    free(r);
}

enum store_status store_holds_data(struct store *st, bool *has, char **err)
{
    if (err) *err = NULL;
    *has = false;
    if (!st->ops->holds_data) {
        store_set_err(err, "a %s database cannot be the target of a copy", st->ops->kind);
        return STORE_ERR_IO;
    }
    return st->ops->holds_data(st->be, has, err);
}

struct rows_write {
    const char *table;
    const struct store_rows *rows;
};

static enum store_status run_rows_write(const struct store_backend *ops, void *be, void *arg, char **err)
{
    struct rows_write *w = arg;

    return ops->rows_insert(be, w->table, w->rows, err);
}

/* One table, page by page: read from `from`, written into `to` through its writer. */
static enum store_status copy_table(struct store *from, struct store *to, const char *table,
                                    store_copy_progress_fn progress, void *arg, char **err)
{
    int64_t after = 0, copied = 0;

    for (;;) {
        struct store_rows *rows = NULL;
        enum store_status st = from->ops->rows_read(from->be, table, after, STORE_COPY_PAGE_ROWS,
                                                    STORE_COPY_PAGE_BYTES, &rows, err);
        if (st != STORE_OK) return st;
        if (rows->nrows == 0) {
            store_rows_free(rows);
            if (progress) progress(arg, table, copied, true);
            return STORE_OK;
        }
        struct rows_write w = {.table = table, .rows = rows};
        struct store_job job = {.run = run_rows_write, .arg = &w};
        st = store_run_job(to, &job, err);
        after = rows->last;
        copied += (int64_t)rows->nrows;
        store_rows_free(rows);
        if (st != STORE_OK) return st;
        if (progress) progress(arg, table, copied, false);
    }
}

enum store_status store_copy_into(struct store *from, struct store *to, store_copy_progress_fn progress,
                                  void *arg, char **err)
{
    if (err) *err = NULL;
    if (!from->ops->rows_read) {
        store_set_err(err, "a %s database cannot be the source of a copy", from->ops->kind);
        return STORE_ERR_IO;
    }
    if (!to->ops->rows_insert) {
        store_set_err(err, "a %s database cannot be the target of a copy", to->ops->kind);
        return STORE_ERR_IO;
    }
    for (size_t i = 0; i < sizeof copy_tables / sizeof copy_tables[0]; i++) {
        enum store_status st = copy_table(from, to, copy_tables[i], progress, arg, err);
        if (st != STORE_OK) return st;
    }
    return STORE_OK;
}
