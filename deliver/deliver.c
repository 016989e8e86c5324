/* deliver/deliver.c — see deliver.h.
 *
 * A delivery in memory is a `struct task`.  Its life, all on the loop thread but the preparing:
 *
 *   PREPARING  payload being built: by a pipeline worker (deliver_prepare) or on libuv's threadpool
 *              for deliveries found by a due scan (load the bytes, parse, build); when the
 *              held-bytes budget has no room for it (budget_take) the task is dropped instead,
 *              'deferred': the row stays pending and due, and a later scan takes it;
 *   READY      in d->ready, waiting for a transfer slot (DELIVER_ACTIVE_MAX, per host
 *              DELIVER_HOST_ACTIVE_MAX);
 *   ACTIVE     a curl easy handle in the multi;
 *   RECORDING  the outcome is on its way to the database (store_record_attempt);
 *   then freed.
 *
 * d->known maps the id of every task from READY to RECORDING (and of those being prepared for a
 * scan) to the task, so that a delivery is never in hand twice: a scan skips known ids, and a
 * payload that a worker built for a delivery that a scan already took is dropped.  d->recent
 * remembers the last ids that finished, for the same reason (a worker's payload arriving after
 * the scan's copy was delivered and recorded).
 *
 * Claims (SPEC §8).  Every task holds its delivery's claim: taken by the due scan
 * (store_deliveries_claim) or, for a routing outcome, written with the delivery rows by this node.
 * When several nodes share the database the claim is a lease in the database, and t->lease_end
 * is where this node knows it ends: the monotonic time at which the claim (or its last renewal)
 * was *sent*, plus the lease (the database's lease starts later, so this is on the safe side of
 * it).  The lease timer renews the leases of every task in hand (off the loop, on libuv's
 * threadpool) every third of a lease, and ends every task whose lease has less than
 * 1/LEASE_MARGIN_PARTS of itself left: a transfer in flight is aborted, its row left to whoever
 * claims it next.  So a node whose database is unreachable stops POSTing before any other node may
 * claim the same delivery, and no two nodes ever POST one X-Inlet-Delivery at once.  A renewal
 * that comes back without a task's id means its lease was lost: the task ends at once.  On SQLite
 * (one process per database) the in-memory set is the claim: no lease, no timer. */
#include "deliver/deliver.h"

#include <curl/curl.h>
#include <glib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "message/message.h"
#include "storage/store.h"
#include "util/clock.h"
#include "util/id.h"
#include "util/log.h"
#include "util/limits.h"

/* What the payloads of one message share: its bytes (MIME posts send them as they are, SMTP
 * forwards in canonical lines: on_read_smtp) and the values its posts have in common
 * (message_post_shared).  Counted once in the held-bytes budget, given back with the last
 * reference. */
struct dmsg {
    atomic_int refs;
    struct deliverer *d;
    struct store_message *sm;
    struct message_post_shared *shared; /* NULL when the message did not parse */
    size_t charged;                 /* held bytes: the message's and the shared values' */
    size_t built;                   /* posts built (by the one preparing thread) */
};

enum task_state { TASK_PREPARING, TASK_READY, TASK_ACTIVE, TASK_RECORDING };

struct task {
    struct deliverer *d;
    enum task_state state;
    char id[ID_LEN + 1];
    char message_id[ID_LEN + 1];
    char *recipient, *kind, *target, *format;
    char *copy_key;                 /* "" when none: see store_delivery_plan */
    int64_t attempts;               /* before this one */
    char host[DELIVER_HOST_MAX + 1];                /* per-host cap key */

    struct dmsg *msg;               /* NULL until prepared */
    struct message_post *post;      /* url kinds */
    size_t bytes;                   /* held payload bytes (accounting): the post's own */
    char *prepare_error;            /* set when the payload could not be built */
    bool deferred;                  /* not built: no room in the budget (left to a later scan) */

    /* The transfer. */
    CURL *easy;
    struct curl_slist *headers, *rcpts;
    struct message_post_segment *segs; /* this attempt's body: the post's segments and the tail */
    size_t nsegs, total, pos;       /* read position over the segments (SMTP: over the raw bytes) */
    bool after_cr, lf_owed;         /* SMTP line-end state: see on_read_smtp */
    char tail[MESSAGE_POST_TAIL_MAX];
    char errbuf[CURL_ERROR_SIZE];
    int64_t started_wall_ms, started_mono_ms;

    int64_t lease_end;              /* monotonic ms: see "Claims" above; INT64_MAX in-process */
    bool lost;                      /* the lease ran short while being prepared: dropped then */
};

/* Preparing the deliveries of one message found by a scan (threadpool). */
struct prep {
    uv_work_t req;
    struct deliverer *d;
    char message_id[ID_LEN + 1];
    GPtrArray *tasks;
    enum store_status status;
    char *err;
};

/* A committed (or failed) attempt record, from the writer thread back to the loop. */
struct record {
    struct task *task;
    enum store_status status;
    char *err;
    int64_t next_attempt_at;        /* for a retry: when to scan for it */
};

/* One renewal of the leases in hand (threadpool), and its answer. */
struct renewal {
    uv_work_t req;
    struct deliverer *d;
    int64_t sent;                   /* monotonic ms when the ids were taken */
    char **ids;
    bool *renewed;
    size_t n;
    enum store_status status;
    char *err;
};

struct deliverer {
    struct deliver_config cfg;
    char *public_url;               /* cfg.public_url points here */
    bool relay_tls_all;             /* STARTTLS required (CURLUSESSL_ALL): see deliver_relay_tls */
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer, scan_timer, grace_timer, lease_timer;
    bool shared;                    /* claims are leases in a shared database (store_claims_shared) */
    int64_t lease_ms;               /* store_lease_ms */
    int64_t renew_sent;             /* monotonic ms of the last renewal sent */
    bool scanning, rescan;          /* a due scan is on the threadpool; another one is wanted */
    bool renewing;                  /* a renewal is on the threadpool */
    uv_async_t async;
    int handles_open;
    bool scan_armed;
    uint64_t scan_due_ms;           /* loop time the scan timer fires at */

    /* Between threads, under `mu`. */
    pthread_mutex_t mu;
    GQueue inbox;                   /* prepared struct task * from workers */
    GQueue records;                 /* struct record * from the writer */
    bool kicked, scan_wanted;
    size_t held;                    /* tasks in memory, any state (incl. workers' in the making) */
    size_t held_bytes;              /* payloads' own bytes and their messages' (struct dmsg) */
    size_t held_bytes_max;          /* --delivery-memory-max */

    /* Loop only. */
    GHashTable *known;              /* id → struct task * */
    GHashTable *recent;             /* id → finish number (GSIZE_TO_POINTER): finished lately */
    GQueue recent_order;
    gsize finishes;                 /* attempts recorded so far: the finish numbers */
    GQueue ready;
    GHashTable *host_active;        /* host → GINT count */
    size_t active, recording, preparing;
    bool stopping, aborted;
    void (*stopped)(void *);
    void *stopped_arg;

    struct {
        atomic_ullong delivered, retry, failed, record_failures;
    } stats;
};

static void pump(struct deliverer *d);
static void schedule_scan(struct deliverer *d, uint64_t delay_ms);
static void maybe_finish_stop(struct deliverer *d);

/* Monotonic ms at which a claim sent at `sent` runs out, as this node counts it. */
static int64_t lease_end_from(const struct deliverer *d, int64_t sent)
{
    return d->shared ? sent + d->lease_ms : INT64_MAX;
}

/* Whether t's lease has too little left for t to go on: it must end before its lease does. */
static bool lease_short(const struct deliverer *d, const struct task *t, int64_t now)
{
    return d->shared && now >= t->lease_end - d->lease_ms / LEASE_MARGIN_PARTS;
}

/* The safety-net period of due scans: with shared claims, half a lease, so that what a dead node
 * held is taken soon after its leases ran out. */
static uint64_t scan_period_ms(const struct deliverer *d)
{
    const uint64_t net = (uint64_t)DELIVER_SCAN_SECONDS * 1000;
    return d->shared && (uint64_t)d->lease_ms / 2 < net ? (uint64_t)d->lease_ms / 2 : net;
}

/* ---------------------------------------------------------------------------------------------
 * Pure helpers. */

void deliver_token(char out[51])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    size_t n = 0;
    while (n < 50) {
        unsigned char buf[64];
        util_random_bytes_pooled(buf, sizeof buf);
        /* 252 = 7 * 36: rejecting above it keeps every character equally likely. */
        for (size_t i = 0; i < sizeof buf && n < 50; i++)
            if (buf[i] < 252) out[n++] = alphabet[buf[i] % 36];
    }
    out[50] = '\0';
}

void deliver_signature(const char *key, const char *timestamp, const char *token, char out[65])
{
    GString *data = g_string_new(timestamp);
    g_string_append(data, token);
    gchar *hex = g_compute_hmac_for_data(G_CHECKSUM_SHA256, (const guchar *)key, strlen(key),
                                         (const guchar *)data->str, data->len);
    g_strlcpy(out, hex, 65);
    g_free(hex);
    g_string_free(data, TRUE);
}

int64_t deliver_retry_delay_ms(const int64_t *schedule, size_t count, int64_t attempt)
{
    if (attempt < 1 || (uint64_t)attempt > count) return -1;
    const double base = (double)schedule[attempt - 1] * 1000.0;
    uint32_t r;
    util_random_bytes_pooled(&r, sizeof r);
    const double jitter = 0.9 + 0.2 * ((double)r / (double)UINT32_MAX); /* ±10 % */
    return (int64_t)llround(base * jitter);
}

/* ---------------------------------------------------------------------------------------------
 * Tasks and their payloads. */

/* ---------------------------------------------------------------------------------------------
 * The held-bytes budget (--delivery-memory-max): taken before a payload is built, from its
 * estimate, and set to what was built after; on every path (workers, scans, the first scan after
 * a start).  Any thread. */

/* Takes `bytes`, when they fit, or when no more than `alone` is held (the caller's own message:
 * a message and its first payload go even when bigger than the whole budget, alone).  Otherwise
 * the caller leaves the delivery in the database and a scan takes it once memory is free. */
static bool budget_take(struct deliverer *d, size_t bytes, size_t alone)
{
    pthread_mutex_lock(&d->mu);
    const bool ok = d->held_bytes <= alone || (d->held_bytes < d->held_bytes_max &&
                                               bytes <= d->held_bytes_max - d->held_bytes);
    if (ok) d->held_bytes += bytes;
    else d->scan_wanted = true;
    pthread_mutex_unlock(&d->mu);
    return ok;
}

/* `taken` bytes become `now` (the estimate replaced by what was built, or given back). */
static void budget_set(struct deliverer *d, size_t taken, size_t now)
{
    pthread_mutex_lock(&d->mu);
    d->held_bytes = d->held_bytes - MIN(d->held_bytes, taken) + now;
    pthread_mutex_unlock(&d->mu);
}

static bool budget_full(struct deliverer *d)
{
    pthread_mutex_lock(&d->mu);
    const bool full = d->held_bytes >= d->held_bytes_max;
    pthread_mutex_unlock(&d->mu);
    return full;
}

/* NULL when the message's bytes do not fit the budget (*sm is kept then).  Else takes *sm; `m`
 * (its parse, NULL when it failed) sizes the shared values. */
static struct dmsg *dmsg_new(struct deliverer *d, struct store_message **sm, const struct message *m)
{
    if (!budget_take(d, (*sm)->len, 0)) return NULL;
    struct dmsg *msg = g_new0(struct dmsg, 1);
    atomic_init(&msg->refs, 1);
    msg->d = d;
    msg->sm = *sm;
    *sm = NULL;
    msg->charged = msg->sm->len;
    msg->shared = m ? message_post_shared_new(m) : NULL;
    return msg;
}

static struct dmsg *dmsg_ref(struct dmsg *m)
{
    atomic_fetch_add(&m->refs, 1);
    return m;
}

static void dmsg_unref(struct dmsg *m)
{
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1) return;
    budget_set(m->d, m->charged, 0);
    message_post_shared_unref(m->shared);
    store_free_message(m->sm);
    g_free(m);
}

static void host_of(const char *kind, const char *target, char *out, size_t outsz)
{
    g_strlcpy(out, "relay", outsz);
    if (strcmp(kind, "address") == 0) return;
    const char *p = strstr(target, "://");
    p = p ? p + 3 : target;
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n); /* userinfo is not the host */
    if (at) {
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    if (n >= outsz) n = outsz - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

static bool is_http(const struct task *t)
{
    return strcmp(t->kind, "address") != 0; /* "url" and "notify" */
}

static struct task *task_new(struct deliverer *d, const char *id, const char *message_id, const char *recipient,
                             const char *kind, const char *target, const char *format, const char *copy_key,
                             int64_t attempts)
{
    struct task *t = g_new0(struct task, 1);
    t->d = d;
    g_strlcpy(t->id, id, sizeof t->id);
    g_strlcpy(t->message_id, message_id, sizeof t->message_id);
    t->recipient = g_strdup(recipient);
    t->kind = g_strdup(kind);
    t->target = g_strdup(target);
    t->format = g_strdup(format ? format : "");
    t->copy_key = g_strdup(copy_key ? copy_key : "");
    t->attempts = attempts;
    host_of(kind, target, t->host, sizeof t->host);
    return t;
}

static void task_free_payload(struct task *t)
{
    g_free(t->segs);
    t->segs = NULL;
    t->nsegs = 0;
    message_post_free(t->post);
    t->post = NULL;
    dmsg_unref(t->msg);
    t->msg = NULL;
}

static void task_free(struct task *t)
{
    if (!t) return;
    task_free_payload(t);
    if (t->easy) curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    curl_slist_free_all(t->rcpts);
    g_free(t->recipient);
    g_free(t->kind);
    g_free(t->target);
    g_free(t->format);
    g_free(t->copy_key);
    g_free(t->prepare_error);
    g_free(t);
}

static enum message_post_format post_format(const struct deliverer *d, const char *format)
{
    if (strcmp(format, "mime") == 0) return MESSAGE_POST_MIME;
    if (!*format) format = d->cfg.default_format;
    return strcmp(format, "mailgun") == 0 ? MESSAGE_POST_MAILGUN : MESSAGE_POST_JSON;
}

/* SPEC §6: <public-url>/v3/domains/<recipient's domain, lower case>/messages/<key>. */
static char *storage_url(const struct deliverer *d, const char *recipient, const char *key)
{
    const char *at = strrchr(recipient, '@');
    const char *dom = at ? at + 1 : "";
    char *lower = g_utf8_validate(dom, -1, NULL) ? g_utf8_strdown(dom, -1) : g_ascii_strdown(dom, -1);
    char *esc = g_uri_escape_string(lower, "", FALSE);
    char *url = g_strdup_printf("%s/v3/domains/%s/messages/%s", d->cfg.public_url ? d->cfg.public_url : "", esc, key);
    g_free(esc);
    g_free(lower);
    return url;
}

/* Builds t's payload from the parsed message (the thread that prepares msg's tasks, one at a
 * time: msg->shared fills up as they are built).  False when the budget has no room for it (t
 * is deferred, nothing built).  On failure t->prepare_error says why; the task still goes on, to
 * be recorded as a failed attempt. */
static bool task_prepare(struct task *t, const struct message *m, struct dmsg *msg)
{
    const struct store_message *sm = msg->sm;
    if (!is_http(t)) { /* an address gets the bytes (canonical lines: on_read_smtp) */
        t->msg = dmsg_ref(msg);
        return true;
    }
    char *copy_url = *t->copy_key ? storage_url(t->d, t->recipient, t->copy_key) : NULL;
    const bool notify = strcmp(t->kind, "notify") == 0;
    struct message_post_options opts = {
        .json = {
            .recipient = t->recipient,
            .sender = sm->sender ? sm->sender : "",
            .id = t->message_id,
            .inline_attachments_max = t->d->cfg.inline_attachments_max,
            .attachments_url = notify ? NULL : copy_url,
        },
        .message_url = notify ? copy_url : NULL,
        .shared = msg->shared,
    };
    /* A notify POST never gets the raw variant: it announces a URL, not the bytes. */
    enum message_post_format f = post_format(t->d, t->format);
    if (notify && f == MESSAGE_POST_MIME) f = MESSAGE_POST_MAILGUN;
    const size_t estimate = message_post_estimate(m, f, &opts);
    if (!budget_take(t->d, estimate, msg->built ? 0 : msg->charged)) {
        g_free(copy_url);
        t->deferred = true;
        return false;
    }
    const size_t shared_before = message_post_shared_bytes(msg->shared);
    t->post = message_post_new(m, sm->data, sm->len, f, &opts);
    g_free(copy_url);
    const size_t grown = message_post_shared_bytes(msg->shared) - shared_before;
    msg->charged += grown;
    t->bytes = t->post ? message_post_own_len(t->post) : 0;
    budget_set(t->d, estimate, t->bytes + grown);
    msg->built++;
    t->msg = dmsg_ref(msg);
    if (!t->post) t->prepare_error = g_strdup("out of memory building the payload");
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * From the workers (deliver_prepare) and the threadpool to the loop. */

/* Payloads built for one routing outcome that is not committed yet. */
struct deliver_batch {
    GQueue tasks;
    struct dmsg *msg;   /* keeps the message's bytes (and what points into them) alive */
};

struct deliver_batch *deliver_prepare(struct deliverer *d, const struct store_outcome *o, const struct message *m,
                                      struct store_message **sm)
{
    if (!d || o->ndeliveries == 0) return NULL;
    pthread_mutex_lock(&d->mu);
    const bool room = d->held + o->ndeliveries <= DELIVER_HELD_MAX && d->held_bytes < d->held_bytes_max;
    if (room) d->held += o->ndeliveries;
    else d->scan_wanted = true;
    pthread_mutex_unlock(&d->mu);
    struct dmsg *msg = room ? dmsg_new(d, sm, m) : NULL;
    if (!msg) {
        /* Once committed, 'pending' and due: a scan takes them when memory is free. */
        if (room) {
            pthread_mutex_lock(&d->mu);
            d->held -= o->ndeliveries;
            pthread_mutex_unlock(&d->mu);
        }
        uv_async_send(&d->async);
        return NULL;
    }
    struct deliver_batch *b = g_new0(struct deliver_batch, 1);
    g_queue_init(&b->tasks);
    b->msg = msg;
    size_t deferred = 0;
    /* The outcome (with this node's claim on its deliveries) is written after this. */
    const int64_t claimed = clock_monotonic_ms();
    for (size_t i = 0; i < o->ndeliveries; i++) {
        const struct store_delivery_plan *p = &o->deliveries[i];
        struct task *t = task_new(d, p->id, o->message_id, p->recipient, p->kind, p->target, p->format, p->copy_key, 0);
        t->lease_end = lease_end_from(d, claimed);
        if (deferred || !task_prepare(t, m, b->msg)) { /* the rest too: keep their order */
            deferred++;
            task_free(t);
            continue;
        }
        g_queue_push_tail(&b->tasks, t);
    }
    if (deferred) {
        pthread_mutex_lock(&d->mu);
        d->held -= deferred;
        d->scan_wanted = true;
        pthread_mutex_unlock(&d->mu);
        log_debug("deliver", "deferred=%zu message=%s reason=memory (a scan takes them)", deferred, o->message_id);
    }
    return b;
}

void deliver_commit(struct deliverer *d, struct deliver_batch *b)
{
    if (!b) return;
    pthread_mutex_lock(&d->mu);
    struct task *t;
    while ((t = g_queue_pop_head(&b->tasks))) g_queue_push_tail(&d->inbox, t);
    pthread_mutex_unlock(&d->mu);
    dmsg_unref(b->msg);
    g_free(b);
    uv_async_send(&d->async);
}

static void release(struct deliverer *d, struct task *t, bool whole);

void deliver_discard(struct deliverer *d, struct deliver_batch *b)
{
    if (!b) return;
    struct task *t;
    while ((t = g_queue_pop_head(&b->tasks))) {
        release(d, t, true);
        task_free(t);
    }
    dmsg_unref(b->msg);
    g_free(b);
}

void deliver_kick(struct deliverer *d)
{
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    d->kicked = true;
    pthread_mutex_unlock(&d->mu);
    uv_async_send(&d->async);
}

/* Loop: gives back what a task held (it leaves memory, or its payload does). */
static void release(struct deliverer *d, struct task *t, bool whole)
{
    pthread_mutex_lock(&d->mu);
    d->held_bytes -= MIN(d->held_bytes, t->bytes);
    if (whole) d->held--;
    pthread_mutex_unlock(&d->mu);
    t->bytes = 0;
}

static void remember_finished(struct deliverer *d, const char *id)
{
    gpointer kept;
    const gsize n = ++d->finishes;
    if (g_hash_table_lookup_extended(d->recent, id, &kept, NULL)) {
        g_hash_table_insert(d->recent, kept, GSIZE_TO_POINTER(n)); /* the key stays recent_order's */
        return;
    }
    char *copy = g_strdup(id); /* owned by recent_order; the table borrows it */
    g_hash_table_insert(d->recent, copy, GSIZE_TO_POINTER(n));
    g_queue_push_tail(&d->recent_order, copy);
    if (g_queue_get_length(&d->recent_order) > DELIVER_RECENT_MAX) {
        char *old = g_queue_pop_head(&d->recent_order);
        g_hash_table_remove(d->recent, old);
        g_free(old);
    }
}

/* Loop: a prepared task enters the ready queue, unless the same delivery is in hand already. */
static void admit(struct deliverer *d, struct task *t)
{
    if (d->stopping || g_hash_table_contains(d->known, t->id) || g_hash_table_contains(d->recent, t->id)) {
        release(d, t, true);
        task_free(t);
        return;
    }
    t->state = TASK_READY;
    g_hash_table_insert(d->known, t->id, t);
    g_queue_push_tail(&d->ready, t);
}

/* ---------------------------------------------------------------------------------------------
 * Transfers. */

/* SMTP DATA (issue 14 item 4): the stored bytes are kept as received, bare LF and bare CR
 * included, but a relay must get canonical lines, or one that ends DATA at "LF . CRLF" runs what
 * follows as commands in inlet's (authenticated) session.  Streamed without a copy: every CR, LF
 * or CR LF goes out as CR LF.  libcurl then dot-stuffs every line that starts with '.' (it
 * escapes "CR LF ." in what this returns), so lone "." lines cannot end the data either. */
static size_t on_read_smtp(struct task *t, char *buf, size_t want)
{
    const uint8_t *in = t->segs[0].data;
    const size_t len = t->segs[0].len;
    size_t done = 0;
    if (t->lf_owed && done < want) {
        buf[done++] = '\n';
        t->lf_owed = false;
    }
    while (t->pos < len && done < want) {
        const uint8_t c = in[t->pos++];
        if (c == '\n' && t->after_cr) { /* the LF of a CR LF already sent */
            t->after_cr = false;
            continue;
        }
        t->after_cr = c == '\r';
        if (c != '\r' && c != '\n') {
            buf[done++] = (char)c;
            continue;
        }
        buf[done++] = '\r';
        if (done < want) buf[done++] = '\n';
        else t->lf_owed = true;
    }
    return done;
}

/* Bytes on the wire for SMTP (CURLOPT_INFILESIZE: the SIZE parameter, and curl's end of the
 * upload): on_read_smtp's output plus the '.' that libcurl adds to every line after the first
 * that starts with one.  Exact, so that curl never counts the upload as complete early (the
 * stored bytes start with inlet's Received: header, never with a '.'). */
static size_t smtp_wire_len(const uint8_t *in, size_t len)
{
    size_t n = 0;
    bool after_cr = false, line_start = false;
    for (size_t i = 0; i < len; i++) {
        const uint8_t c = in[i];
        if (c == '\n' && after_cr) {
            after_cr = false;
            continue;
        }
        after_cr = c == '\r';
        if (c == '\r' || c == '\n') {
            n += 2;
            line_start = true;
            continue;
        }
        n += 1 + (c == '.' && line_start);
        line_start = false;
    }
    return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg)
{
    struct task *t = arg;
    if (!is_http(t)) return on_read_smtp(t, buf, size * nitems);
    size_t want = size * nitems, done = 0, skip = t->pos;
    for (size_t i = 0; i < t->nsegs && done < want; i++) {
        const struct message_post_segment *s = &t->segs[i];
        if (skip >= s->len) {
            skip -= s->len;
            continue;
        }
        size_t n = MIN(s->len - skip, want - done);
        memcpy(buf + done, s->data + skip, n);
        done += n;
        skip = 0;
    }
    t->pos += done;
    return done;
}

/* curl rewinds when it must send the body again (a reused connection that the server closed). */
static int on_seek(void *arg, curl_off_t offset, int origin)
{
    struct task *t = arg;
    if (origin != SEEK_SET || offset < 0 || (size_t)offset > t->total) return CURL_SEEKFUNC_CANTSEEK;
    if (!is_http(t)) { /* the SMTP stream is transformed: only from the start again */
        if (offset != 0) return CURL_SEEKFUNC_CANTSEEK;
        t->after_cr = t->lf_owed = false;
    }
    t->pos = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

/* The answer's body is not used: read and dropped (the transfer's timeout bounds it). */
static size_t on_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    (void)ptr;
    (void)arg;
    return size * nmemb;
}

/* segs has room: task_segments sized it. */
static void add_segment(struct task *t, const void *data, size_t len)
{
    t->segs[t->nsegs++] = (struct message_post_segment){data, len};
    t->total += len;
}

/* The body of this attempt: the post's fixed part and a tail signed now; or the raw message. */
static bool task_segments(struct task *t)
{
    t->nsegs = t->total = t->pos = 0;
    t->after_cr = t->lf_owed = false;
    g_free(t->segs);
    const size_t n = t->post ? message_post_segment_count(t->post) : 0;
    t->segs = g_new(struct message_post_segment, n + 1);
    if (!t->post) {
        add_segment(t, t->msg->sm->data, t->msg->sm->len);
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        struct message_post_segment s = message_post_segment(t->post, i);
        add_segment(t, s.data, s.len);
    }
    char ts[32], token[51], sig[65];
    snprintf(ts, sizeof ts, "%lld", (long long)(clock_now_ms() / 1000));
    deliver_token(token);
    deliver_signature(t->d->cfg.signing_key, ts, token, sig);
    size_t tl = message_post_tail(t->post, ts, token, sig, t->tail);
    add_segment(t, t->tail, tl);
    return true;
}

static void common_options(struct task *t, CURL *e)
{
    const struct deliver_config *c = &t->d->cfg;
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)c->connect_timeout);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, (long)c->timeout);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, t);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
}

static bool setup_http(struct task *t, CURL *e)
{
    curl_easy_setopt(e, CURLOPT_URL, t->target);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->total);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "inlet/" INLET_VERSION);
    char h[512];
    snprintf(h, sizeof h, "Content-Type: %s", message_post_content_type(t->post));
    t->headers = curl_slist_append(t->headers, h);
    snprintf(h, sizeof h, "X-Inlet-Delivery: %s", t->id);
    t->headers = curl_slist_append(t->headers, h);
    /* No "Expect: 100-continue" round trip before the body. */
    t->headers = curl_slist_append(t->headers, "Expect:");
    if (!t->headers) return false;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    return true;
}

/* "<addr>" for curl's MAIL FROM / RCPT TO; "<>" for the null sender. */
static char *angle(const char *addr)
{
    return g_strdup_printf("<%s>", addr ? addr : "");
}

static bool setup_smtp(struct task *t, CURL *e)
{
    const struct deliver_config *c = &t->d->cfg;
    /* The URL's path is the EHLO name curl sends. */
    const char *rest = strstr(c->relay, "://");
    const bool has_path = rest && strchr(rest + 3, '/');
    char *url = has_path ? g_strdup(c->relay) : g_strdup_printf("%s/%s", c->relay, c->hostname);
    curl_easy_setopt(e, CURLOPT_URL, url);
    g_free(url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)smtp_wire_len(t->segs[0].data, t->segs[0].len));
    curl_easy_setopt(e, CURLOPT_USE_SSL, t->d->relay_tls_all ? (long)CURLUSESSL_ALL : (long)CURLUSESSL_TRY);
    if (c->relay_password) curl_easy_setopt(e, CURLOPT_PASSWORD, c->relay_password);
    const char *from = c->bounce_address && *c->bounce_address ? c->bounce_address : t->msg->sm->sender;
    char *mail_from = angle(from);
    curl_easy_setopt(e, CURLOPT_MAIL_FROM, mail_from);
    g_free(mail_from);
    char *rcpt = angle(t->target);
    t->rcpts = curl_slist_append(NULL, rcpt);
    g_free(rcpt);
    if (!t->rcpts) return false;
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT, t->rcpts);
    return true;
}

/* The target as logged: no query string or user info (webhook URLs often carry secrets). */
static void log_target(const struct task *t, char *out, size_t outsz)
{
    char esc[600];
    size_t n = strcspn(t->target, "?#");
    log_escape(esc, sizeof esc, t->target, n, 400);
    g_strlcpy(out, esc, outsz);
    if (t->target[n]) g_strlcat(out, "?...", outsz);
}

static void finish(struct task *t, int status, const char *error, bool permanent);

static void host_count(struct deliverer *d, const char *host, int delta)
{
    int n = GPOINTER_TO_INT(g_hash_table_lookup(d->host_active, host)) + delta;
    if (n <= 0) g_hash_table_remove(d->host_active, host);
    else g_hash_table_insert(d->host_active, g_strdup(host), GINT_TO_POINTER(n));
}

static void start(struct deliverer *d, struct task *t)
{
    t->state = TASK_ACTIVE;
    t->started_wall_ms = clock_now_ms();
    t->started_mono_ms = clock_monotonic_ms();
    t->errbuf[0] = '\0';
    d->active++;
    host_count(d, t->host, +1);
    if (t->prepare_error) {
        finish(t, 0, t->prepare_error, true);
        return;
    }
    const bool url = is_http(t);
    if (!url && (!d->cfg.relay || !*d->cfg.relay)) {
        finish(t, 0, "no relay configured", true);
        return;
    }
    CURL *e = curl_easy_init();
    bool ok = e && task_segments(t);
    if (ok) {
        t->easy = e;
        common_options(t, e);
        ok = url ? setup_http(t, e) : setup_smtp(t, e);
    }
    if (!ok || curl_multi_add_handle(d->multi, e) != CURLM_OK) {
        if (e && !t->easy) curl_easy_cleanup(e);
        finish(t, 0, "cannot start the transfer (out of memory)", false);
    }
}

/* Loop: start what the caps allow, oldest first; tasks for a busy host wait their turn. */
static void pump(struct deliverer *d)
{
    if (d->stopping) return;
    for (GList *l = d->ready.head; l && d->active < DELIVER_ACTIVE_MAX;) {
        GList *next = l->next;
        struct task *t = l->data;
        if (lease_short(d, t, clock_monotonic_ms())) { /* never start what may outlive its lease */
            g_queue_delete_link(&d->ready, l);
            log_warn("deliver", "lease ending id=%s state=ready: not started (left to the next claim)", t->id);
            g_hash_table_remove(d->known, t->id);
            release(d, t, true);
            task_free(t);
        } else if (GPOINTER_TO_INT(g_hash_table_lookup(d->host_active, t->host)) < DELIVER_HOST_ACTIVE_MAX) {
            g_queue_delete_link(&d->ready, l);
            start(d, t);
        }
        l = next;
    }
}

/* Writer thread. */
static void on_recorded(void *arg, enum store_status status, char *err)
{
    struct record *r = arg;
    r->status = status;
    r->err = err;
    struct deliverer *d = r->task->d;
    pthread_mutex_lock(&d->mu);
    g_queue_push_tail(&d->records, r);
    pthread_mutex_unlock(&d->mu);
    uv_async_send(&d->async);
}

/* Loop: the attempt ended (or could not start).  Decides the outcome and records it. */
static void finish(struct task *t, int status, const char *error, bool permanent)
{
    struct deliverer *d = t->d;
    const int64_t now_ms = clock_now_ms();
    const int64_t attempt = t->attempts + 1;
    const bool delivered = error == NULL;
    int64_t delay = delivered || permanent ? -1 : deliver_retry_delay_ms(d->cfg.retry_schedule, d->cfg.retry_count, attempt);
    const char *outcome = delivered ? "delivered" : delay >= 0 ? "retry" : "failed";
    struct record *r = g_new0(struct record, 1);
    r->task = t;
    /* The queue keeps whole seconds: rounded up, so that a retry never comes before its delay
     * (counted from the end of the failed attempt), at most a second after. */
    r->next_attempt_at = delay >= 0 ? (now_ms + delay + 999) / 1000 : 0;
    struct store_attempt a = {
        .delivery_id = t->id,
        .started_at_ms = t->started_wall_ms,
        .duration_ms = clock_monotonic_ms() - t->started_mono_ms,
        .status = status,
        .error = error ? error : "",
        .outcome = outcome,
        .next_attempt_at = r->next_attempt_at,
    };
    char target[512], esc[400];
    log_target(t, target, sizeof target);
    log_info("deliver", "attempt id=%s message=%s rcpt=%s kind=%s target=%s n=%lld status=%d outcome=%s ms=%lld%s%s%s",
             t->id, t->message_id, log_escape(esc, sizeof esc, t->recipient, strlen(t->recipient), SMTP_ADDRESS_MAX), t->kind,
             target, (long long)attempt, status, outcome, (long long)a.duration_ms, error ? " error=\"" : "",
             error ? error : "", error ? "\"" : "");
    atomic_fetch_add(delivered ? &d->stats.delivered : delay >= 0 ? &d->stats.retry : &d->stats.failed, 1);

    d->active--;
    host_count(d, t->host, -1);
    t->state = TASK_RECORDING;
    d->recording++;
    release(d, t, false);
    task_free_payload(t); /* only the record's small part stays */
    store_record_attempt(d->cfg.store, &a, on_recorded, r);
}

static void http_outcome(struct task *t, CURLcode rc, long code)
{
    char err[CURL_ERROR_SIZE + 64];
    if (rc != CURLE_OK) {
        snprintf(err, sizeof err, "%s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
        finish(t, (int)code, err, false);
    } else if (code >= 200 && code < 300) {
        finish(t, (int)code, NULL, false);
    } else if (code == 406) {
        finish(t, (int)code, "HTTP 406: rejected by the receiver", true);
    } else {
        snprintf(err, sizeof err, "HTTP %ld%s", code, code >= 300 && code < 400 ? " (redirects are not followed)" : "");
        finish(t, (int)code, err, false);
    }
}

/* SPEC §5: 5xx from the relay fails the delivery; 4xx and connection errors are retried. */
static void smtp_outcome(struct task *t, CURLcode rc, long code)
{
    char err[CURL_ERROR_SIZE + 64];
    if (rc == CURLE_OK) {
        finish(t, (int)code, NULL, false);
        return;
    }
    snprintf(err, sizeof err, "%s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
    finish(t, (int)code, err, code >= 500 && code < 600);
}

static void check_done(struct deliverer *d)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(d->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *e = msg->easy_handle;
        const CURLcode rc = msg->data.result;
        struct task *t = NULL;
        long code = 0;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&t);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(d->multi, e);
        curl_easy_cleanup(e);
        t->easy = NULL;
        if (is_http(t)) http_outcome(t, rc, code);
        else smtp_outcome(t, rc, code);
    }
}

/* ---------------------------------------------------------------------------------------------
 * libcurl on the libuv loop (curl's multi-uv example). */

struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct deliverer *d;
};

static void on_sock_closed(uv_handle_t *h)
{
    g_free(h->data);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock *s = h->data;
    struct deliverer *d = s->d;
    int flags = 0, running;
    if (status < 0) flags |= CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(d->multi, s->fd, flags, &running);
    check_done(d);
    pump(d);
    maybe_finish_stop(d);
}

static int on_socket(CURL *e, curl_socket_t fd, int action, void *userp, void *socketp)
{
    (void)e;
    struct deliverer *d = userp;
    struct sock *s = socketp;
    if (action == CURL_POLL_REMOVE) {
        /* Closed now, before curl closes the fd and the number can be reused. */
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
        }
        return 0;
    }
    if (!s) {
        s = g_new0(struct sock, 1);
        s->fd = fd;
        s->d = d;
        if (uv_poll_init_socket(d->loop, &s->poll, fd) != 0) {
            g_free(s);
            return -1;
        }
        s->poll.data = s;
        curl_multi_assign(d->multi, fd, s);
    }
    int events = 0;
    if (action & CURL_POLL_IN) events |= UV_READABLE;
    if (action & CURL_POLL_OUT) events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_curl_timer(uv_timer_t *h)
{
    struct deliverer *d = h->data;
    int running;
    curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(d);
    pump(d);
    maybe_finish_stop(d);
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct deliverer *d = userp;
    if (timeout_ms < 0) uv_timer_stop(&d->curl_timer);
    else uv_timer_start(&d->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Due scans. */

static void defer_all(struct prep *p)
{
    for (guint i = 0; i < p->tasks->len; i++) ((struct task *)g_ptr_array_index(p->tasks, i))->deferred = true;
}

/* Threadpool: the budget is asked before the message is loaded, for its bytes once loaded, and
 * per payload before it is built; what does not fit is deferred (prep_done). */
static void prep_work(uv_work_t *req)
{
    struct prep *p = req->data;
    struct store_message *sm = NULL;
    if (budget_full(p->d)) {
        p->status = STORE_OK;
        defer_all(p);
        return;
    }
    p->status = store_load_message(p->d->cfg.store, p->message_id, &sm, &p->err);
    if (p->status != STORE_OK) return;
    struct message *m = message_parse(sm->data, sm->len);
    struct dmsg *msg = dmsg_new(p->d, &sm, m);
    if (!msg) {
        store_free_message(sm);
        message_free(m);
        defer_all(p);
        return;
    }
    bool deferring = false;
    for (guint i = 0; i < p->tasks->len; i++) {
        struct task *t = g_ptr_array_index(p->tasks, i);
        if (deferring) t->deferred = true;
        else if (m) deferring = !task_prepare(t, m, msg);
        else t->prepare_error = g_strdup("out of memory parsing the message");
    }
    dmsg_unref(msg);
    message_free(m);
}

static void prep_done(uv_work_t *req, int status)
{
    (void)status;
    struct prep *p = req->data;
    struct deliverer *d = p->d;
    d->preparing--;
    size_t deferred = 0;
    for (guint i = 0; i < p->tasks->len; i++) {
        struct task *t = g_ptr_array_index(p->tasks, i);
        if (p->status == STORE_ERR_NOT_FOUND && !t->prepare_error)
            t->prepare_error = g_strdup("the message's bytes are gone");
        deferred += t->deferred;
        if ((p->status == STORE_OK || p->status == STORE_ERR_NOT_FOUND) && !d->stopping && !t->deferred && !t->lost) {
            t->state = TASK_READY;
            g_queue_push_tail(&d->ready, t);
            continue;
        }
        if (p->status != STORE_OK && p->status != STORE_ERR_NOT_FOUND)
            log_warn("deliver", "cannot load message id=%s for delivery id=%s: %s (retried by a later scan)",
                     p->message_id, t->id, p->err ? p->err : "?");
        g_hash_table_remove(d->known, t->id);
        release(d, t, true);
        task_free(t);
    }
    if (p->status != STORE_OK && p->status != STORE_ERR_NOT_FOUND) schedule_scan(d, scan_period_ms(d));
    if (deferred) {
        /* Still 'pending' and due: taken again once memory is free (on_async). */
        pthread_mutex_lock(&d->mu);
        d->scan_wanted = true;
        pthread_mutex_unlock(&d->mu);
        log_debug("deliver", "deferred=%zu message=%s reason=memory", deferred, p->message_id);
    }
    g_ptr_array_free(p->tasks, TRUE);
    free(p->err); /* the store's strings are malloc'd */
    g_free(p);
    pump(d);
    maybe_finish_stop(d);
}

static void queue_prep(struct deliverer *d, GHashTable *by_message)
{
    GHashTableIter it;
    gpointer key, value;
    g_hash_table_iter_init(&it, by_message);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        struct prep *p = g_new0(struct prep, 1);
        p->d = d;
        g_strlcpy(p->message_id, key, sizeof p->message_id);
        p->tasks = value;
        p->req.data = p;
        g_hash_table_iter_steal(&it);
        g_free(key);
        d->preparing++;
        uv_queue_work(d->loop, &p->req, prep_work, prep_done);
    }
}

/* A due scan.  Its claims go to the database on libuv's threadpool, never on the loop: when the
 * database is slow or away the loop must go on ending the attempts whose leases run short. */
struct claim_page {
    struct store_delivery *rows;
    size_t n;
    int64_t sent;                   /* monotonic ms when this page's claim was sent */
};

struct claim_scan {
    uv_work_t req;
    struct deliverer *d;
    int64_t now;                    /* Unix seconds: due up to it */
    size_t want;                    /* new deliveries at most (the memory bounds) */
    GHashTable *skip;               /* ids in hand when the scan began (own copies) */
    gsize finishes;                 /* d->finishes when the scan began */
    GArray *pages;                  /* struct claim_page */
    size_t fresh;                   /* rows not in `skip` */
    bool failed;
    char *err;
    enum store_status next_rc;      /* store_deliveries_next_due */
    int64_t next_at;
};

/* Threadpool: claims pages of due deliveries until `want` new ones (rows in hand, which the claim
 * finds again since they are this node's, do not count), then asks when the next one falls due. */
static void claim_work(uv_work_t *req)
{
    struct claim_scan *c = req->data;
    int64_t after_at = INT64_MIN;
    char after_id[ID_LEN + 1] = "";
    while (c->fresh < c->want) {
        struct claim_page pg = {.sent = clock_monotonic_ms()};
        const size_t page = MIN((size_t)DELIVER_SCAN_PAGE, c->want - c->fresh);
        if (store_deliveries_claim(c->d->cfg.store, c->now, after_at, after_id, page, &pg.rows, &pg.n, &c->err) !=
            STORE_OK) {
            c->failed = true;
            break;
        }
        for (size_t i = 0; i < pg.n; i++) {
            c->fresh += !g_hash_table_contains(c->skip, pg.rows[i].id);
            after_at = pg.rows[i].next_attempt_at;
            g_strlcpy(after_id, pg.rows[i].id, sizeof after_id);
        }
        g_array_append_val(c->pages, pg);
        if (pg.n < page) break;
    }
    c->next_rc = c->failed ? STORE_ERR_IO : store_deliveries_next_due(c->d->cfg.store, c->now, &c->next_at);
}

/* Loop: whether delivery `id` had an attempt recorded after finish number `since`.  The claim
 * scan reads on the threadpool, so a row it read while this node's attempt was in flight says
 * 'pending' with the old attempt count: taking it would make the attempt again (a 406 POSTed
 * twice).  Such a row is skipped; its claim is this node's, and the record cleared it anyway. */
static bool finished_since(struct deliverer *d, const char *id, gsize since)
{
    gpointer n;
    return g_hash_table_lookup_extended(d->recent, id, NULL, &n) && GPOINTER_TO_SIZE(n) > since;
}

/* Loop: the claimed rows that are not in hand become tasks (every row claimed is taken: a claim
 * left unused would keep it from everyone until its lease ran out). */
static size_t claim_take(struct deliverer *d, struct claim_scan *c)
{
    GHashTable *by_message = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    size_t taken = 0;
    for (guint p = 0; p < c->pages->len; p++) {
        const struct claim_page *pg = &g_array_index(c->pages, struct claim_page, p);
        for (size_t i = 0; i < pg->n && !d->stopping; i++) {
            const struct store_delivery *r = &pg->rows[i];
            if (g_hash_table_contains(d->known, r->id) || finished_since(d, r->id, c->finishes)) continue;
            struct task *t = task_new(d, r->id, r->message_id, r->recipient, r->kind, r->target, r->format,
                                      r->copy_key, r->attempts);
            t->lease_end = lease_end_from(d, pg->sent);
            t->state = TASK_PREPARING;
            g_hash_table_insert(d->known, t->id, t);
            GPtrArray *group = g_hash_table_lookup(by_message, r->message_id);
            if (!group) {
                group = g_ptr_array_new();
                g_hash_table_insert(by_message, g_strdup(r->message_id), group);
            }
            g_ptr_array_add(group, t);
            taken++;
        }
        store_deliveries_free(pg->rows, pg->n);
    }
    if (taken) {
        pthread_mutex_lock(&d->mu);
        d->held += taken;
        pthread_mutex_unlock(&d->mu);
        log_debug("deliver", "scan took=%zu", taken);
    }
    queue_prep(d, by_message);
    g_hash_table_destroy(by_message);
    return taken;
}

static void claim_done(uv_work_t *req, int status)
{
    (void)status;
    struct claim_scan *c = req->data;
    struct deliverer *d = c->d;
    d->scanning = false;
    if (c->failed)
        log_warn("deliver", "cannot claim due deliveries: %s (retried in %llus)", c->err ? c->err : "?",
                 (unsigned long long)(scan_period_ms(d) / 1000));
    claim_take(d, c);
    if (c->fresh >= c->want) {
        pthread_mutex_lock(&d->mu);
        d->scan_wanted = true; /* more when memory frees up */
        pthread_mutex_unlock(&d->mu);
    }
    /* Next: the earliest retry, at most the scan period away. */
    uint64_t delay_ms = scan_period_ms(d);
    const int64_t now_ms = clock_now_ms();
    if (c->next_rc == STORE_OK && (uint64_t)(c->next_at - c->now) * 1000 < delay_ms)
        delay_ms = c->next_at * 1000 > now_ms ? (uint64_t)(c->next_at * 1000 - now_ms) : 0;
    if (d->rescan) delay_ms = 0;
    d->rescan = false;
    schedule_scan(d, delay_ms);
    g_array_free(c->pages, TRUE);
    g_hash_table_destroy(c->skip);
    free(c->err);
    g_free(c);
    pump(d);
    maybe_finish_stop(d);
}

/* Loop: starts a due scan (claim_work), unless one is running (then another follows it). */
static void scan(struct deliverer *d)
{
    if (d->scanning) {
        d->rescan = true;
        return;
    }
    struct claim_scan *c = g_new0(struct claim_scan, 1);
    c->d = d;
    c->now = clock_now_ms() / 1000;
    pthread_mutex_lock(&d->mu);
    d->scan_wanted = false;
    c->want = d->held < DELIVER_HELD_MAX ? DELIVER_HELD_MAX - d->held : 0;
    if (d->held_bytes >= d->held_bytes_max) c->want = 0; /* the bytes are the bound: nothing now */
    pthread_mutex_unlock(&d->mu);
    c->skip = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    c->finishes = d->finishes;
    GHashTableIter it;
    gpointer key;
    g_hash_table_iter_init(&it, d->known);
    while (g_hash_table_iter_next(&it, &key, NULL)) g_hash_table_add(c->skip, g_strdup(key));
    c->pages = g_array_new(FALSE, FALSE, sizeof(struct claim_page));
    c->req.data = c;
    d->scanning = true;
    uv_queue_work(d->loop, &c->req, claim_work, claim_done);
}

static void on_scan_timer(uv_timer_t *h)
{
    struct deliverer *d = h->data;
    d->scan_armed = false;
    if (d->stopping) return;
    scan(d);
    pump(d);
}

/* Loop: the scan runs in `delay_ms` at the latest. */
static void schedule_scan(struct deliverer *d, uint64_t delay_ms)
{
    if (d->stopping) return;
    const uint64_t due = uv_now(d->loop) + delay_ms;
    if (d->scan_armed && d->scan_due_ms <= due) return;
    d->scan_armed = true;
    d->scan_due_ms = due;
    uv_timer_start(&d->scan_timer, on_scan_timer, delay_ms, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Leases (claims shared with other nodes): renewed every third of a lease, and a task whose lease
 * is running short (or was lost) ends before the lease does. */

static const char *task_state_name(enum task_state s)
{
    switch (s) {
    case TASK_PREPARING: return "preparing";
    case TASK_READY: return "ready";
    case TASK_ACTIVE: return "active";
    case TASK_RECORDING: return "recording";
    }
    return "?";
}

/* Loop: t (in d->known, through `it`) stops holding its delivery: a transfer in flight is
 * aborted, a waiting task dropped, one being prepared is dropped when its preparing ends.  The
 * row stays 'pending' and claimed until its lease runs out; then the next claim takes it (this
 * node's or another's).  A task being recorded is left alone: its attempt is over.  Whether t
 * was freed. */
static bool end_claim(struct deliverer *d, GHashTableIter *it, struct task *t, const char *why)
{
    if (t->state == TASK_RECORDING || t->lost) return false;
    log_warn("deliver", "%s id=%s state=%s: %s (left to the next claim)", why, t->id, task_state_name(t->state),
             t->state == TASK_ACTIVE ? "attempt aborted" : "dropped");
    if (t->state == TASK_PREPARING) {
        t->lost = true; /* prep_done drops it */
        return false;
    }
    if (t->state == TASK_ACTIVE) {
        if (t->easy) curl_multi_remove_handle(d->multi, t->easy);
        d->active--;
        host_count(d, t->host, -1);
    } else {
        g_queue_remove(&d->ready, t);
    }
    g_hash_table_iter_remove(it);
    release(d, t, true);
    task_free(t);
    return true;
}

/* Threadpool: one statement renewing every lease in hand. */
static void renew_work(uv_work_t *req)
{
    struct renewal *r = req->data;
    r->status = store_deliveries_renew(r->d->cfg.store, (const char *const *)r->ids, r->n, r->renewed, &r->err);
}

static void renew_done(uv_work_t *req, int status)
{
    (void)status;
    struct renewal *r = req->data;
    struct deliverer *d = r->d;
    size_t lost = 0;
    d->renewing = false;
    if (r->status != STORE_OK)
        log_warn("deliver", "cannot renew leases n=%zu: %s (attempts end before their leases do)", r->n,
                 r->err ? r->err : "?");
    for (size_t i = 0; r->status == STORE_OK && i < r->n; i++) {
        GHashTableIter it;
        gpointer key, value;
        struct task *t = g_hash_table_lookup(d->known, r->ids[i]);
        if (!t) continue; /* finished meanwhile */
        if (r->renewed[i]) {
            t->lease_end = MAX(t->lease_end, r->sent + d->lease_ms);
            continue;
        }
        g_hash_table_iter_init(&it, d->known);
        while (g_hash_table_iter_next(&it, &key, &value))
            if (value == t) {
                lost += end_claim(d, &it, t, "lease lost");
                break;
            }
    }
    for (size_t i = 0; i < r->n; i++) g_free(r->ids[i]);
    g_free(r->ids);
    g_free(r->renewed);
    free(r->err);
    g_free(r);
    if (lost) pump(d);
    maybe_finish_stop(d);
}

/* Loop: sends the renewal of every lease in hand (not those being recorded: their attempt is
 * over, and the record ends the claim). */
static void renew(struct deliverer *d, int64_t now)
{
    GHashTableIter it;
    gpointer key, value;
    const guint size = g_hash_table_size(d->known);
    d->renew_sent = now;
    if (size == 0) return;
    struct renewal *r = g_new0(struct renewal, 1);
    r->d = d;
    r->sent = now;
    r->ids = g_new0(char *, size);
    r->renewed = g_new0(bool, size);
    g_hash_table_iter_init(&it, d->known);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        const struct task *t = value;
        if (t->state != TASK_RECORDING && !t->lost) r->ids[r->n++] = g_strdup(t->id);
    }
    r->req.data = r;
    d->renewing = true;
    uv_queue_work(d->loop, &r->req, renew_work, renew_done);
}

static void on_lease_timer(uv_timer_t *h)
{
    struct deliverer *d = h->data;
    const int64_t now = clock_monotonic_ms();
    GHashTableIter it;
    gpointer key, value;
    size_t ended = 0;
    g_hash_table_iter_init(&it, d->known);
    while (g_hash_table_iter_next(&it, &key, &value))
        if (lease_short(d, value, now)) ended += end_claim(d, &it, value, "lease ending");
    if (!d->renewing && now - d->renew_sent >= d->lease_ms / 3) renew(d, now);
    if (ended) pump(d);
    maybe_finish_stop(d);
}

/* ---------------------------------------------------------------------------------------------
 * Loop: what other threads handed over. */

static void on_record(struct deliverer *d, struct record *r)
{
    struct task *t = r->task;
    d->recording--;
    if (r->status != STORE_OK && r->status != STORE_ERR_NOT_FOUND) {
        /* Still 'pending' and due in the database: a later scan makes the attempt again. */
        atomic_fetch_add(&d->stats.record_failures, 1);
        log_warn("deliver", "cannot record the attempt of delivery id=%s: %s (it will be made again)", t->id,
                 r->err ? r->err : "?");
        schedule_scan(d, scan_period_ms(d));
    } else {
        remember_finished(d, t->id);
        if (r->next_attempt_at) {
            const int64_t wait_ms = r->next_attempt_at * 1000 - clock_now_ms();
            schedule_scan(d, wait_ms > 0 ? (uint64_t)wait_ms : 0);
        }
    }
    g_hash_table_remove(d->known, t->id);
    release(d, t, true);
    task_free(t);
    free(r->err);
    g_free(r);
}

static void on_async(uv_async_t *h)
{
    struct deliverer *d = h->data;
    pthread_mutex_lock(&d->mu);
    GQueue inbox = d->inbox, records = d->records;
    g_queue_init(&d->inbox);
    g_queue_init(&d->records);
    const bool kicked = d->kicked;
    d->kicked = false;
    pthread_mutex_unlock(&d->mu);
    struct record *r;
    while ((r = g_queue_pop_head(&records))) on_record(d, r);
    struct task *t;
    while ((t = g_queue_pop_head(&inbox))) admit(d, t);
    pthread_mutex_lock(&d->mu);
    /* Half free, so that a full deliverer does not scan (and load messages) for every slot. */
    const bool wanted = d->scan_wanted && d->held < DELIVER_HELD_MAX / 2 && d->held_bytes <= d->held_bytes_max / 2;
    pthread_mutex_unlock(&d->mu);
    if (kicked) schedule_scan(d, 0);
    else if (wanted) schedule_scan(d, 100);
    pump(d);
    maybe_finish_stop(d);
}

/* ---------------------------------------------------------------------------------------------
 * Life cycle. */

/* A password, or a user in the URL's authority (curl sends AUTH for either). */
static bool relay_has_credentials(const struct deliver_config *cfg)
{
    if (!cfg->relay || !*cfg->relay) return false;
    if (cfg->relay_password) return true;
    const char *p = strstr(cfg->relay, "://");
    p = p ? p + 3 : cfg->relay;
    return memchr(p, '@', strcspn(p, "/?#")) != NULL;
}

/* Whether STARTTLS is required, said once in the log when credentials decide it. */
static bool relay_tls_all(const struct deliver_config *cfg)
{
    const bool creds = relay_has_credentials(cfg);
    switch (cfg->relay_tls) {
    case DELIVER_RELAY_TLS_REQUIRE: return true;
    case DELIVER_RELAY_TLS_CLEARTEXT_AUTH:
        if (creds)
            log_warn("deliver", "relay credentials may go out in clear text: TLS is used only when the relay "
                                "offers it (--relay-tls cleartext-auth)");
        return false;
    case DELIVER_RELAY_TLS_OPPORTUNISTIC: break;
    }
    if (creds) log_info("deliver", "relay tls=required reason=credentials (--relay-tls cleartext-auth allows clear text)");
    return creds;
}

struct deliverer *deliver_start(uv_loop_t *loop, const struct deliver_config *cfg)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
    struct deliverer *d = g_new0(struct deliverer, 1);
    d->cfg = *cfg;
    /* Ours: the API server that owns the original stops before the deliverer. */
    d->cfg.public_url = d->public_url = g_strdup(cfg->public_url ? cfg->public_url : "");
    d->loop = loop;
    d->relay_tls_all = relay_tls_all(cfg);
    d->held_bytes_max = cfg->held_bytes_max ? cfg->held_bytes_max : DELIVER_HELD_BYTES_MAX;
    d->multi = curl_multi_init();
    if (!d->multi) {
        g_free(d);
        return NULL;
    }
    curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, d);
    curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, d);
    curl_multi_setopt(d->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)DELIVER_ACTIVE_MAX);
    curl_multi_setopt(d->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)DELIVER_HOST_ACTIVE_MAX);
    curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long)DELIVER_ACTIVE_MAX);
    pthread_mutex_init(&d->mu, NULL);
    g_queue_init(&d->inbox);
    g_queue_init(&d->records);
    g_queue_init(&d->ready);
    g_queue_init(&d->recent_order);
    d->known = g_hash_table_new(g_str_hash, g_str_equal);
    d->recent = g_hash_table_new(g_str_hash, g_str_equal);
    d->host_active = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    uv_timer_init(loop, &d->curl_timer);
    uv_timer_init(loop, &d->scan_timer);
    uv_timer_init(loop, &d->grace_timer);
    uv_timer_init(loop, &d->lease_timer);
    uv_async_init(loop, &d->async, on_async);
    d->curl_timer.data = d->scan_timer.data = d->grace_timer.data = d->lease_timer.data = d->async.data = d;
    d->handles_open = 5;
    d->shared = store_claims_shared(cfg->store);
    d->lease_ms = store_lease_ms(cfg->store);
    d->renew_sent = clock_monotonic_ms();
    if (d->shared) { /* a tick small enough to end a task within its lease's margin */
        const uint64_t tick = (uint64_t)MAX(100, MIN(1000, d->lease_ms / (2 * LEASE_MARGIN_PARTS)));
        uv_timer_start(&d->lease_timer, on_lease_timer, tick, tick);
    }
    log_info("deliver", "started relay=%s format=%s retries=%zu timeout=%llds", cfg->relay && *cfg->relay ? "yes" : "no",
             cfg->default_format, cfg->retry_count, (long long)cfg->timeout);
    schedule_scan(d, 0); /* deliveries left by the last run */
    return d;
}

void deliver_get_stats(struct deliverer *d, struct deliver_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!d) return;
    out->attempts_delivered = atomic_load(&d->stats.delivered);
    out->attempts_retry = atomic_load(&d->stats.retry);
    out->attempts_failed = atomic_load(&d->stats.failed);
    out->record_failures = atomic_load(&d->stats.record_failures);
    pthread_mutex_lock(&d->mu);
    out->held = d->held;
    out->held_bytes = d->held_bytes;
    pthread_mutex_unlock(&d->mu);
    out->in_flight = d->active; /* a racy read of a counter: fine for a gauge */
}

static void on_handle_closed(uv_handle_t *h)
{
    struct deliverer *d = h->data;
    if (--d->handles_open == 0 && d->stopped) d->stopped(d->stopped_arg);
}

/* Loop: abandons the transfers still running (they stay 'pending': due at the next start). */
static void abort_active(struct deliverer *d)
{
    GHashTableIter it;
    gpointer key, value;
    g_hash_table_iter_init(&it, d->known);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        struct task *t = value;
        if (t->state != TASK_ACTIVE || !t->easy) continue;
        curl_multi_remove_handle(d->multi, t->easy);
        log_info("deliver", "abandoned id=%s at shutdown (stays pending)", t->id);
        g_hash_table_iter_remove(&it);
        d->active--;
        release(d, t, true);
        task_free(t);
    }
}

static void on_grace_timer(uv_timer_t *h)
{
    struct deliverer *d = h->data;
    d->aborted = true;
    abort_active(d);
    maybe_finish_stop(d);
}

/* Loop: once nothing is in flight, being prepared or being recorded, close everything. */
static void maybe_finish_stop(struct deliverer *d)
{
    if (!d->stopping || d->handles_open != 5 || !d->stopped) return;
    if (d->active || d->preparing || d->recording || d->renewing || d->scanning) return;
    if (!uv_is_closing((uv_handle_t *)&d->async)) {
        curl_multi_cleanup(d->multi); /* closes cached connections; sockets reported removed */
        d->multi = NULL;
        uv_close((uv_handle_t *)&d->curl_timer, on_handle_closed);
        uv_close((uv_handle_t *)&d->scan_timer, on_handle_closed);
        uv_close((uv_handle_t *)&d->grace_timer, on_handle_closed);
        uv_close((uv_handle_t *)&d->lease_timer, on_handle_closed);
        uv_close((uv_handle_t *)&d->async, on_handle_closed);
        log_info("deliver", "stopped");
    }
}

void deliver_stop(struct deliverer *d, unsigned grace_seconds, void (*stopped)(void *), void *arg)
{
    d->stopping = true;
    d->stopped = stopped;
    d->stopped_arg = arg;
    uv_timer_stop(&d->scan_timer);
    /* Waiting deliveries stay 'pending' in the database. */
    struct task *t;
    while ((t = g_queue_pop_head(&d->ready))) {
        g_hash_table_remove(d->known, t->id);
        release(d, t, true);
        task_free(t);
    }
    if (d->active) {
        log_info("deliver", "stopping in_flight=%zu grace=%us", d->active, grace_seconds);
        uv_timer_start(&d->grace_timer, on_grace_timer, (uint64_t)grace_seconds * 1000, 0);
    }
    maybe_finish_stop(d);
}

void deliver_free(struct deliverer *d)
{
    if (!d) return;
    struct task *t;
    while ((t = g_queue_pop_head(&d->inbox))) task_free(t);
    struct record *r;
    while ((r = g_queue_pop_head(&d->records))) {
        task_free(r->task);
        free(r->err);
        g_free(r);
    }
    if (d->multi) curl_multi_cleanup(d->multi);
    g_hash_table_destroy(d->known);
    g_hash_table_destroy(d->recent);
    g_queue_clear_full(&d->recent_order, g_free);
    g_hash_table_destroy(d->host_active);
    pthread_mutex_destroy(&d->mu);
    g_free(d->public_url);
    g_free(d);
    curl_global_cleanup();
}
