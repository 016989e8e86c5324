/* mailauth/dns.c — DNS for SPF, DKIM and DMARC: libunbound's resolver, asynchronous, with its
 * TTL cache (bounded: MAILAUTH_DNS_MSG_CACHE / MAILAUTH_DNS_RRSET_CACHE), and a deadline that the
 * asking thread enforces itself.
 *
 * Why libunbound: it caches every answer for its TTL within a fixed memory, falls back to TCP for
 * truncated answers, and its asynchronous interface lets a caller stop waiting at any time
 * (ub_cancel), which is what a time budget needs; the blocking resolvers (res_query, libspf2's
 * and libopendmarc's lookups) give no deadline but the resolver's own retries (up to a minute).
 *
 * One ub_ctx, threaded (ub_ctx_async(1)), for every worker: the cache is shared.  A thread of
 * ours waits on ub_fd() and runs ub_process(), which calls on_answer() for every finished query.
 * A worker asks with ub_resolve_async() and waits on its query's condition variable until the
 * answer or its deadline.  A query both sides may still touch is freed by the last one: the
 * waiter when it cancels in time (ub_cancel() == 0: the callback will never run), otherwise the
 * callback (q->abandoned).
 *
 * In front of it, a small cache of our own (MAILAUTH_DNS_FRONT_ENTRIES answers of at most
 * MAILAUTH_DNS_FRONT_BYTES, each for its TTL, oldest out first): an answer from libunbound's cache
 * still crosses two threads and two pipes (its background thread, our process thread), which cost
 * about as much as the checks themselves for a warm domain (bench/senderauth).
 *
 * Cache-only mode (mailauth_dns_cache_only): a thread that must not wait (the SMTP loop, for
 * mailauth_check_cached) asks the front cache alone; a miss sends no query, answers TEMP and is
 * remembered, so the caller throws the pass's verdicts away and hands the message to a worker.
 * The mode is the thread's (thread-local), so the checks in spf.c, dkim.c and dmarc.c run
 * unchanged in both modes. */
#include <errno.h>
#include <glib.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <unbound.h>

#include "mailauth/internal.h"
#include "util/limits.h"
#include "util/log.h"

struct mailauth_dns {
    struct ub_ctx *ctx;
    pthread_t thread;
    int stop_pipe[2];
    pthread_mutex_t front_lock;
    GHashTable *front;  /* "type/name" → struct front_entry */
    GQueue *order;      /* keys, oldest first (the key strings are the table's) */
};

/* A packed answer: lens[count], data pointers[count], then the bytes (one allocation). */
struct front_entry {
    enum mailauth_dns_status status;
    size_t count;
    int64_t expires_ms;
    void *packed;
};

/* This thread's cache-only pass: on while it runs, missed once a lookup found no fresh answer. */
static _Thread_local struct {
    bool on, missed;
} cache_only;

struct query {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done, abandoned;
    int err;
    struct ub_result *result;
};

int64_t mailauth_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *process_main(void *arg)
{
    struct mailauth_dns *d = arg;
    log_thread_name("mailauth-dns");
    struct pollfd p[2] = {{.fd = ub_fd(d->ctx), .events = POLLIN}, {.fd = d->stop_pipe[0], .events = POLLIN}};
    for (;;) {
        int n = poll(p, 2, 1000);
        if (n < 0 && errno != EINTR) break;
        if (p[1].revents) break;
        if (n > 0 && p[0].revents) ub_process(d->ctx);
    }
    return NULL;
}

static void query_free(struct query *q)
{
    if (q->result) ub_resolve_free(q->result);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}

/* The process thread. */
static void on_answer(void *arg, int err, struct ub_result *result)
{
    struct query *q = arg;
    pthread_mutex_lock(&q->lock);
    if (q->abandoned) {
        pthread_mutex_unlock(&q->lock);
        if (result) ub_resolve_free(result);
        query_free(q);
        return;
    }
    q->err = err;
    q->result = result;
    q->done = true;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* "127.0.0.1:5353" → "127.0.0.1@5353"; "[::1]:53" → "::1@53"; "192.0.2.1" as it is. */
static bool forwarder(const char *server, char *out, size_t outsz)
{
    const char *host = server, *port = NULL;
    size_t hlen;
    if (server[0] == '[') {
        const char *end = strchr(server, ']');
        if (!end) return false;
        host = server + 1;
        hlen = (size_t)(end - host);
        if (end[1] == ':') port = end + 2;
        else if (end[1]) return false;
    } else {
        const char *colon = strchr(server, ':');
        if (colon && strchr(colon + 1, ':')) { /* a bare IPv6 address */
            hlen = strlen(server);
        } else if (colon) {
            hlen = (size_t)(colon - server);
            port = colon + 1;
        } else {
            hlen = strlen(server);
        }
    }
    int n = port ? snprintf(out, outsz, "%.*s@%s", (int)hlen, host, port)
                 : snprintf(out, outsz, "%.*s", (int)hlen, host);
    return n > 0 && (size_t)n < outsz;
}

static bool set_option(struct ub_ctx *ctx, const char *opt, const char *val, char **err)
{
    int rc = ub_ctx_set_option(ctx, opt, val);
    if (rc == 0) return true;
    if (asprintf(err, "dns: cannot set %s %s: %s", opt, val, ub_strerror(rc)) < 0) *err = NULL;
    return false;
}

/* One allocation holding the answer's records; out's pointers into it.  false: out of memory. */
static bool pack(enum mailauth_dns_status st, size_t count, const uint8_t *const *data, const size_t *len,
                 struct mailauth_dns_answer *out)
{
    size_t bytes = 0;
    for (size_t i = 0; i < count; i++) bytes += len[i];
    void *blob = malloc(count * (sizeof(size_t) + sizeof(uint8_t *)) + bytes + 1);
    if (!blob) return false;
    size_t *lens = blob;
    const uint8_t **ptrs = (const uint8_t **)(lens + count);
    uint8_t *p = (uint8_t *)(ptrs + count);
    for (size_t i = 0; i < count; i++) {
        lens[i] = len[i];
        ptrs[i] = p;
        memcpy(p, data[i], len[i]);
        p += len[i];
    }
    *out = (struct mailauth_dns_answer){.status = st, .count = count, .data = ptrs, .len = lens, .owner = blob};
    return true;
}

static void front_entry_free(void *e)
{
    struct front_entry *f = e;
    free(f->packed);
    free(f);
}

static bool front_get(struct mailauth_dns *d, const char *key, struct mailauth_dns_answer *out)
{
    bool hit = false;
    pthread_mutex_lock(&d->front_lock);
    struct front_entry *f = g_hash_table_lookup(d->front, key);
    if (f && f->expires_ms > mailauth_now_ms()) {
        const size_t *lens = f->packed;
        const uint8_t *const *ptrs = (const uint8_t *const *)(lens + f->count);
        hit = pack(f->status, f->count, ptrs, lens, out);
    }
    pthread_mutex_unlock(&d->front_lock);
    return hit;
}

static void front_put(struct mailauth_dns *d, const char *key, const struct mailauth_dns_answer *a, int ttl)
{
    size_t bytes = 0;
    for (size_t i = 0; i < a->count; i++) bytes += a->len[i];
    if (ttl <= 0 || bytes > MAILAUTH_DNS_FRONT_BYTES) return;
    struct front_entry *f = calloc(1, sizeof *f);
    struct mailauth_dns_answer copy;
    if (!f || !pack(a->status, a->count, a->data, a->len, &copy)) {
        free(f);
        return;
    }
    f->status = a->status;
    f->count = a->count;
    f->packed = copy.owner;
    f->expires_ms = mailauth_now_ms() + 1000LL * (ttl < MAILAUTH_DNS_FRONT_TTL_MAX ? ttl : MAILAUTH_DNS_FRONT_TTL_MAX);
    pthread_mutex_lock(&d->front_lock);
    if (g_hash_table_contains(d->front, key)) {
        /* Refreshed (an expired one, or two threads missed at once): insert keeps the table's key,
         * which the order holds, and frees the new one. */
        g_hash_table_insert(d->front, g_strdup(key), f);
    } else {
        while (g_hash_table_size(d->front) >= MAILAUTH_DNS_FRONT_ENTRIES && !g_queue_is_empty(d->order))
            g_hash_table_remove(d->front, g_queue_pop_head(d->order));
        char *k = g_strdup(key);
        g_hash_table_insert(d->front, k, f);
        g_queue_push_tail(d->order, k);
    }
    pthread_mutex_unlock(&d->front_lock);
}

struct mailauth_dns *mailauth_dns_new(const char *server, char **err)
{
    struct mailauth_dns *d = calloc(1, sizeof *d);
    char fwd[128];
    char num[32];
    *err = NULL;
    if (!d) goto oom;
    d->stop_pipe[0] = d->stop_pipe[1] = -1;
    pthread_mutex_init(&d->front_lock, NULL);
    d->front = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, front_entry_free);
    d->order = g_queue_new();
    d->ctx = ub_ctx_create();
    if (!d->ctx) goto oom;
    snprintf(num, sizeof num, "%d", MAILAUTH_DNS_MSG_CACHE);
    if (!set_option(d->ctx, "msg-cache-size:", num, err)) goto fail;
    snprintf(num, sizeof num, "%d", MAILAUTH_DNS_RRSET_CACHE);
    if (!set_option(d->ctx, "rrset-cache-size:", num, err)) goto fail;
    /* Our own deadline bounds every wait; these keep the resolver from retrying for long too. */
    if (!set_option(d->ctx, "do-not-query-localhost:", "no", err)) goto fail;
    /* The reverse zones of private networks (RFC 1918) go to the server too: libunbound would
     * answer NXDOMAIN for them itself, so a ptr mechanism or %{p} for a client on an internal
     * network (a relay at 10.x) would never see the PTR that the site's resolver holds. */
    if (!set_option(d->ctx, "unblock-lan-zones:", "yes", err)) goto fail;
    if (!set_option(d->ctx, "insecure-lan-zones:", "yes", err)) goto fail;
    int rc;
    if (server && *server) {
        if (!forwarder(server, fwd, sizeof fwd)) {
            if (asprintf(err, "dns: bad --dns-server %s (IP, IP:PORT or [IPv6]:PORT)", server) < 0) *err = NULL;
            goto fail;
        }
        rc = ub_ctx_set_fwd(d->ctx, fwd); /* asked with RD: a recursive resolver, or an
                                              authoritative server for the names in question */
    } else {
        rc = ub_ctx_resolvconf(d->ctx, NULL);
    }
    if (rc != 0) {
        if (asprintf(err, "dns: cannot use %s: %s", server && *server ? server : "/etc/resolv.conf",
                     ub_strerror(rc)) < 0)
            *err = NULL;
        goto fail;
    }
    rc = ub_ctx_async(d->ctx, 1);
    if (rc != 0) {
        if (asprintf(err, "dns: %s", ub_strerror(rc)) < 0) *err = NULL;
        goto fail;
    }
    /* Likewise the documentation networks' reverse zones (RFC 5737, RFC 3849), which no real
     * client has: what the server says about them is what the RFC 7208 test suite's ptr cases ask
     * (tests/mailauth).  After ub_ctx_async: removing a zone finalizes the context. */
    static const char *const doc_zones[] = {"2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.",
                                            "113.0.203.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa."};
    for (size_t i = 0; i < sizeof doc_zones / sizeof doc_zones[0]; i++)
        (void)ub_ctx_zone_remove(d->ctx, doc_zones[i]); /* UB_NOERROR, or absent in this version */
    if (pipe(d->stop_pipe) < 0 || pthread_create(&d->thread, NULL, process_main, d) != 0) {
        if (asprintf(err, "dns: cannot start its thread: %s", strerror(errno)) < 0) *err = NULL;
        if (d->stop_pipe[0] >= 0) close(d->stop_pipe[0]);
        if (d->stop_pipe[1] >= 0) close(d->stop_pipe[1]);
        d->stop_pipe[0] = d->stop_pipe[1] = -1;
        goto fail;
    }
    return d;
oom:
    *err = strdup("dns: out of memory");
fail:
    if (d && d->ctx) ub_ctx_delete(d->ctx);
    if (d) {
        g_hash_table_destroy(d->front);
        g_queue_free(d->order);
        pthread_mutex_destroy(&d->front_lock);
    }
    free(d);
    return NULL;
}

void mailauth_dns_free(struct mailauth_dns *d)
{
    if (!d) return;
    if (write(d->stop_pipe[1], "x", 1) != 1) { /* the thread then ends at its next poll timeout */ }
    pthread_join(d->thread, NULL);
    close(d->stop_pipe[0]);
    close(d->stop_pipe[1]);
    /* Queries abandoned in flight are freed with the context (their callbacks do not run). */
    ub_ctx_delete(d->ctx);
    g_hash_table_destroy(d->front);
    g_queue_free(d->order);
    pthread_mutex_destroy(&d->front_lock);
    free(d);
}

static struct query *query_new(void)
{
    struct query *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    pthread_mutex_init(&q->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    return q;
}

/* libunbound's result → out (packed; r is freed).  false: not to be cached. */
static bool fill(struct mailauth_dns_answer *out, struct ub_result *r)
{
    enum mailauth_dns_status st = MAILAUTH_DNS_OK;
    size_t n = 0;
    size_t lens[MAILAUTH_DNS_RECORDS_MAX] = {0};
    if (r->rcode == 3 || r->nxdomain) st = MAILAUTH_DNS_NXDOMAIN;
    else if (r->rcode != 0) st = MAILAUTH_DNS_TEMP;
    else if (!r->havedata) st = MAILAUTH_DNS_NODATA;
    else
        for (; r->data[n] && n < MAILAUTH_DNS_RECORDS_MAX; n++) lens[n] = (size_t)r->len[n];
    bool ok = pack(st, n, (const uint8_t *const *)r->data, lens, out);
    ub_resolve_free(r);
    if (!ok) out->status = MAILAUTH_DNS_TEMP;
    return ok && st != MAILAUTH_DNS_TEMP;
}

/* The front cache's key of (name, type): "TYPE/name" in lower case; false when too long.  Built by
 * hand: it is made for every lookup of every message (four with a usual signed one). */
static bool front_key(const char *name, int type, char *key, size_t keysz)
{
    char digits[12];
    size_t nd = 0, o = 0;
    unsigned t = type < 0 ? 0 : (unsigned)type;
    do digits[nd++] = (char)('0' + t % 10);
    while ((t /= 10) && nd < sizeof digits);
    if (nd + 2 > keysz) return false;
    while (nd) key[o++] = digits[--nd];
    key[o++] = '/';
    for (const char *c = name; *c; c++) {
        if (o + 1 >= keysz) return false;
        key[o++] = g_ascii_tolower(*c);
    }
    key[o] = '\0';
    return true;
}

bool mailauth_dns_cached(struct mailauth_dns *d, const char *name, int type)
{
    char key[SPF_DOMAIN_MAX + 16];
    if (!front_key(name, type, key, sizeof key)) return false;
    pthread_mutex_lock(&d->front_lock);
    struct front_entry *f = g_hash_table_lookup(d->front, key);
    bool fresh = f && f->expires_ms > mailauth_now_ms();
    pthread_mutex_unlock(&d->front_lock);
    return fresh;
}

void mailauth_dns_query(struct mailauth_dns *d, const char *name, int type, int64_t deadline_ms,
                        struct mailauth_dns_answer *out)
{
    memset(out, 0, sizeof *out);
    out->status = MAILAUTH_DNS_TEMP;
    char key[SPF_DOMAIN_MAX + 16];
    if (!front_key(name, type, key, sizeof key)) return;
    if (front_get(d, key, out)) return;
    if (cache_only.on) { /* no query from this thread: the pass is void, the caller goes async */
        cache_only.missed = true;
        return;
    }
    if (mailauth_now_ms() >= deadline_ms) return;
    struct query *q = query_new();
    if (!q) return;
    int id = 0;
    if (ub_resolve_async(d->ctx, name, type, 1, q, on_answer, &id) != 0) {
        query_free(q);
        return;
    }
    struct timespec until = {.tv_sec = deadline_ms / 1000, .tv_nsec = (deadline_ms % 1000) * 1000000};
    pthread_mutex_lock(&q->lock);
    while (!q->done) {
        if (pthread_cond_timedwait(&q->cond, &q->lock, &until) == ETIMEDOUT && !q->done) break;
    }
    if (!q->done) {
        q->abandoned = true;
        pthread_mutex_unlock(&q->lock);
        /* 0: cancelled before its callback, which will never run; otherwise the callback frees q. */
        if (ub_cancel(d->ctx, id) == 0) query_free(q);
        return;
    }
    pthread_mutex_unlock(&q->lock);
    struct ub_result *r = q->result;
    q->result = NULL;
    int err = q->err;
    query_free(q);
    if (err != 0 || !r) {
        if (r) ub_resolve_free(r);
        return;
    }
    const int ttl = r->ttl;
    if (fill(out, r)) front_put(d, key, out, ttl);
}

void mailauth_dns_cache_only(bool on)
{
    cache_only.on = on;
    cache_only.missed = false;
}

bool mailauth_dns_cache_missed(void)
{
    return cache_only.missed;
}

void mailauth_dns_answer_free(struct mailauth_dns_answer *a)
{
    free(a->owner); /* the packed answer: len and data point into it */
    memset(a, 0, sizeof *a);
}

bool mailauth_dns_txt(const uint8_t *rd, size_t len, char *out, size_t outsz)
{
    size_t o = 0, i = 0;
    while (i < len) {
        size_t n = rd[i++];
        if (n > len - i || o + n >= outsz) return false;
        memcpy(out + o, rd + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
    return true;
}

bool mailauth_dns_name(const uint8_t *rd, size_t len, size_t *off, char *out, size_t outsz)
{
    size_t i = *off, o = 0;
    for (int labels = 0; labels < 128; labels++) {
        if (i >= len) return false;
        size_t n = rd[i++];
        if (n == 0) {
            if (o == 0 && outsz > 0) out[o] = '\0';
            else out[o - 1] = '\0'; /* the last dot */
            if (o == 0) out[0] = '\0';
            *off = i;
            return true;
        }
        if (n > 63 || n > len - i || o + n + 1 >= outsz) return false; /* no compression here */
        memcpy(out + o, rd + i, n);
        o += n;
        out[o++] = '.';
        i += n;
    }
    return false;
}
