/* storage/store_queue.c — the storage face for deliveries, attempts, stored copies, events,
 * retention, gauges and backups (SPEC §5–§7; store.h).  Thin: writes become jobs for the writer
 * thread (store_run_job waits for the commit; store_record_attempt uses store_submit_job and does
 * not), reads go straight to the backend, which serialises them on its read connection. */
#include <stdlib.h>
#include <string.h>

#include "storage/internal.h"
#include "storage/store.h"
#include "util/log.h"

static void clear_err(char **err)
{
    if (err) *err = NULL;
}

static void log_failure(const char *what, const char *e)
{
    char esc[512];

    e = e ? e : "out of memory";
    log_warn("storage", "%s failed error=\"%s\"", what,
             log_escape(esc, sizeof esc, e, strlen(e), 400));
}

/* ---- free functions ------------------------------------------------------------------------- */

void store_deliveries_free(struct store_delivery *d, size_t n)
{
    if (!d) return;
    for (size_t i = 0; i < n; i++) {
        free(d[i].recipient);
        free(d[i].kind);
        free(d[i].target);
        free(d[i].format);
        free(d[i].route_ids_json);
        free(d[i].state);
        free(d[i].last_error);
        free(d[i].copy_key);
    }
    free(d);
}

void store_copy_free(struct store_copy *c)
{
    if (!c) return;
    free(c->recipient);
    free(c->domain);
    free(c->route_id);
    free(c->notify);
    free(c->format);
    free(c);
}

void store_events_free(struct store_event *e, size_t n)
{
    if (!e) return;
    for (size_t i = 0; i < n; i++) {
        free(e[i].event);
        free(e[i].severity);
        free(e[i].recipient);
        free(e[i].domain);
        free(e[i].delivery_id);
        free(e[i].detail_json);
        free(e[i].authentication_json);
    }
    free(e);
}

/* ---- writes the caller waits for ------------------------------------------------------------ */

struct queue_write {
    enum { QW_RETRY, QW_ADD, QW_COPY_DELETE, QW_SWEEP, QW_RELEASE } op;
    const char *id; /* delivery id, message id or copy key */
    int64_t now;
    const struct store_delivery_plan *plans;
    size_t nplans;
    const struct store_sweep_args *sweep;
    struct store_sweep_result *swept;
    struct store_released *released; /* QW_RELEASE */
};

static enum store_status run_queue_write(const struct store_backend *ops, void *be, void *arg,
                                         char **err)
{
    struct queue_write *w = arg;

    switch (w->op) {
    case QW_RETRY: return ops->delivery_retry(be, w->id, w->now, err);
    case QW_ADD: return ops->deliveries_add(be, w->id, w->plans, w->nplans, w->now, err);
    case QW_COPY_DELETE: return ops->copy_delete(be, w->id, w->now, err);
    case QW_SWEEP: return ops->sweep(be, w->sweep, w->swept, err);
    case QW_RELEASE: return ops->release_claims(be, w->id, w->released, err);
    }
    return STORE_ERR_IO;
}

/* Runs `w` through the writer and waits: the status the caller gets. */
static enum store_status queue_write_run(struct store *st, struct queue_write *w, char **err)
{
    struct store_job job = {.run = run_queue_write, .arg = w};

    return store_run_job(st, &job, err);
}

enum store_status store_delivery_retry(struct store *st, const char *id, int64_t now, char **err)
{
    struct queue_write w = {.op = QW_RETRY, .id = id, .now = now};

    return queue_write_run(st, &w, err);
}

enum store_status store_deliveries_add(struct store *st, const char *message_id,
                                       const struct store_delivery_plan *plans, size_t n,
                                       int64_t now, char **err)
{
    struct queue_write w = {.op = QW_ADD, .id = message_id, .now = now, .plans = plans,
                            .nplans = n};

    return queue_write_run(st, &w, err);
}

enum store_status store_copy_delete(struct store *st, const char *key, int64_t now, char **err)
{
    struct queue_write w = {.op = QW_COPY_DELETE, .id = key, .now = now};

    return queue_write_run(st, &w, err);
}

enum store_status store_sweep(struct store *st, int64_t now, int64_t event_ttl,
                              int64_t failed_retention, size_t batch,
                              struct store_sweep_result *out, char **err)
{
    const struct store_sweep_args args = {.now = now, .event_ttl = event_ttl,
                                          .failed_retention = failed_retention, .batch = batch};
    struct store_sweep_result r = {0};
    struct queue_write w = {.op = QW_SWEEP, .sweep = &args, .swept = &r};
    enum store_status rc = queue_write_run(st, &w, err);

    /* A rolled-back pass deleted nothing. */
    *out = rc == STORE_OK ? r : (struct store_sweep_result){0};
    return rc; /* the caller logs what was removed */
}

enum store_status store_release_claims(struct store *st, const char *node_id, struct store_released *out,
                                       char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);
    struct store_released n = {0};
    struct queue_write w = {.op = QW_RELEASE, .id = node_id, .released = &n};
    enum store_status rc = STORE_OK;

    clear_err(err);
    if (ops->release_claims) rc = queue_write_run(st, &w, err);
    *out = rc == STORE_OK ? n : (struct store_released){0};
    return rc;
}

/* ---- the same writes without waiting (store.h: "Writes without waiting") ------------------- */

static void queue_write_submit(struct store *st, const struct queue_write *w,
                               store_write_done_fn done, void *arg)
{
    store_submit_copy(st, run_queue_write, w, sizeof *w, done, arg);
}

void store_delivery_retry_async(struct store *st, const char *id, int64_t now,
                                store_write_done_fn done, void *arg)
{
    const struct queue_write w = {.op = QW_RETRY, .id = id, .now = now};

    queue_write_submit(st, &w, done, arg);
}

void store_deliveries_add_async(struct store *st, const char *message_id,
                                const struct store_delivery_plan *plans, size_t n, int64_t now,
                                store_write_done_fn done, void *arg)
{
    const struct queue_write w = {.op = QW_ADD, .id = message_id, .now = now, .plans = plans,
                                  .nplans = n};

    queue_write_submit(st, &w, done, arg);
}

void store_copy_delete_async(struct store *st, const char *key, int64_t now,
                             store_write_done_fn done, void *arg)
{
    const struct queue_write w = {.op = QW_COPY_DELETE, .id = key, .now = now};

    queue_write_submit(st, &w, done, arg);
}

/* ---- attempts: written without waiting ------------------------------------------------------ */

/* One queued attempt: a copy of the caller's struct and strings, and whom to tell. */
struct attempt_job {
    struct store_attempt a;
    char *delivery_id, *error, *outcome;
    store_write_done_fn done;
    void *arg;
};

static void attempt_job_free(struct attempt_job *j)
{
    if (!j) return;
    free(j->delivery_id);
    free(j->error);
    free(j->outcome);
    free(j);
}

static enum store_status run_attempt(const struct store_backend *ops, void *be, void *arg,
                                     char **err)
{
    struct attempt_job *j = arg;

    return ops->record_attempt(be, &j->a, err);
}

/* Writer thread (or the caller's, when the job could not be queued). */
static void attempt_done(void *arg, enum store_status status, char *err)
{
    struct attempt_job *j = arg;

    if (store_status_failed(status)) log_failure("attempt record", err);
    if (j->done) j->done(j->arg, status, err);
    else free(err);
    attempt_job_free(j);
}

void store_record_attempt(struct store *st, const struct store_attempt *a, store_write_done_fn done,
                          void *arg)
{
    struct attempt_job *j = calloc(1, sizeof *j);
    struct store_job *job = calloc(1, sizeof *job);

    if (!j || !job) goto oom;
    j->delivery_id = strdup(a->delivery_id ? a->delivery_id : "");
    j->error = strdup(a->error ? a->error : "");
    j->outcome = strdup(a->outcome ? a->outcome : "");
    if (!j->delivery_id || !j->error || !j->outcome) goto oom;
    j->a = *a;
    j->a.delivery_id = j->delivery_id;
    j->a.error = j->error;
    j->a.outcome = j->outcome;
    j->done = done;
    j->arg = arg;
    *job = (struct store_job){.run = run_attempt, .arg = j};
    store_submit_job(st, job, attempt_done, j); /* owns job from here on */
    return;

oom:
    attempt_job_free(j);
    free(job);
    if (done) done(arg, STORE_ERR_NOMEM, strdup("cannot queue an attempt: out of memory"));
}

/* ---- reads: straight to the backend --------------------------------------------------------- */

enum store_status store_deliveries_due(struct store *st, int64_t now, int64_t after_at,
                                       const char *after_id, size_t max,
                                       struct store_delivery **out, size_t *n, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    *out = NULL;
    *n = 0;
    if (max == 0) return STORE_OK;
    return ops->deliveries_due(be, now, after_at, after_id, max, out, n, err);
}

enum store_status store_deliveries_claim(struct store *st, int64_t now, int64_t after_at,
                                         const char *after_id, size_t max,
                                         struct store_delivery **out, size_t *n, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    if (!ops->deliveries_claim) /* in-process claims: the due read */
        return store_deliveries_due(st, now, after_at, after_id, max, out, n, err);
    clear_err(err);
    *out = NULL;
    *n = 0;
    if (max == 0) return STORE_OK;
    return ops->deliveries_claim(be, now, after_at, after_id, max, out, n, err);
}

enum store_status store_deliveries_renew(struct store *st, const char *const *ids, size_t n,
                                         bool *renewed, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);
    enum store_status rc;

    clear_err(err);
    for (size_t i = 0; i < n; i++) renewed[i] = !ops->deliveries_renew;
    if (!ops->deliveries_renew || n == 0) return STORE_OK;
    rc = ops->deliveries_renew(be, ids, n, renewed, err);
    if (rc != STORE_OK)
        for (size_t i = 0; i < n; i++) renewed[i] = false;
    return rc;
}

enum store_status store_claim_unprocessed(struct store *st, char ***ids, size_t *n, size_t max,
                                          char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    if (!ops->claim_unprocessed) return store_list_unprocessed(st, ids, n, max, err);
    clear_err(err);
    *ids = NULL;
    *n = 0;
    if (max == 0) return STORE_OK;
    return ops->claim_unprocessed(be, ids, n, max, err);
}

enum store_status store_deliveries_next_due(struct store *st, int64_t after, int64_t *at)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);
    char *err = NULL;
    enum store_status rc = ops->deliveries_next_due(be, after, at, &err);

    if (store_status_failed(rc)) log_failure("next due read", err);
    free(err);
    return rc;
}

enum store_status store_delivery_get(struct store *st, const char *id, struct store_delivery **out,
                                     char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    *out = NULL;
    return ops->delivery_get(be, id, out, err);
}

enum store_status store_deliveries_list(struct store *st, const char *state,
                                        int64_t before_updated_at, const char *before_id,
                                        size_t max, struct store_delivery **out, size_t *n,
                                        char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    *out = NULL;
    *n = 0;
    if (max == 0) return STORE_OK;
    return ops->deliveries_list(be, state, before_updated_at, before_id, max, out, n, err);
}

enum store_status store_copy_get(struct store *st, const char *key, int64_t now,
                                 struct store_copy **copy, struct store_message **msg, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    *copy = NULL;
    if (msg) *msg = NULL;
    return ops->copy_get(be, key, now, copy, msg, err);
}

enum store_status store_events_query(struct store *st, const struct store_event_query *q,
                                     struct store_event **out, size_t *n, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    *out = NULL;
    *n = 0;
    if (q->limit == 0) return STORE_OK;
    return ops->events_query(be, q, out, n, err);
}

enum store_status store_gauges(struct store *st, int64_t now, struct store_gauges *out,
                               char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    return ops->gauges(be, now, out, err);
}

enum store_status store_backup(struct store *st, const char *path, char **err)
{
    void *be;
    const struct store_backend *ops = store_backend_of(st, &be);

    clear_err(err);
    return ops->backup(be, path, err);
}
