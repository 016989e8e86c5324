/* mailauth/mailauth.c — the jobs: a queue, MAILAUTH_WORKERS threads, and per message SPF, then
 * DKIM, then DMARC (which needs both), all against one deadline; then the header fields that say
 * the verdicts (RFC 8601 Authentication-Results, Mailgun's X-Mailgun-Spf and
 * X-Mailgun-Dkim-Check-Result).
 *
 * The deadline is set when the job is queued, so time spent waiting for a worker counts: a job
 * taken after its deadline is answered at once with temperror.  Workers wait on DNS, not on CPU,
 * so there are more of them than cores. */
#include <glib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailauth/internal.h"
#include "util/limits.h"
#include "util/log.h"

struct job {
    struct mailauth_request req;
    char *copy[3]; /* a prefetch's own ip, helo, sender (req points at them) */
    int64_t started_ms, deadline_ms;
    mailauth_done_fn done;
    void *arg;
    struct job *next;
};

struct mailauth {
    char *authserv_id;
    unsigned budget_ms;
    struct mailauth_dns *dns;
    struct mailauth_dkim *dkim;
    struct mailauth_psl *psl;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *head, *tail;
    struct job *pre_head, *pre_tail; /* prefetches: taken only when no message waits */
    size_t npre, running_pre;
    bool stopping;
    pthread_t workers[MAILAUTH_WORKERS];
    size_t nworkers;
    atomic_uint_fast64_t checks_cached, checks_async; /* for GET /metrics */
};

struct mailauth_result {
    enum mailauth_verdict spf;
    char spf_identity[9];          /* "mailfrom" or "helo" */
    char spf_subject[SMTP_ADDRESS_MAX + 16];
    char spf_reason[96];
    /* The HELO identity (RFC 7208 §2.3), checked besides a MAIL FROM (for the null sender spf is
     * already HELO's); helo_checked false: not checked (the null sender, an address literal). */
    bool helo_checked;
    bool spf_sender_macros; /* the MAIL FROM check expanded %{s} or %{l} */
    enum mailauth_verdict spf_helo;
    char helo[SMTP_DOMAIN_MAX + 1];
    char spf_helo_reason[96];
    struct mailauth_dkim_sig sigs[MAILAUTH_DKIM_SIGS_MAX];
    size_t nsigs;
    char from_domain[SPF_DOMAIN_MAX + 1];
    struct mailauth_dmarc dmarc;
    int64_t elapsed_ms;
    char *authserv_id;             /* the module's, not owned */
    const char *path;              /* "cached" or "async": which pass gave it */
    char summary[96];
};

const char *mailauth_verdict_name(enum mailauth_verdict v)
{
    switch (v) {
    case MAILAUTH_NONE: return "none";
    case MAILAUTH_PASS: return "pass";
    case MAILAUTH_FAIL: return "fail";
    case MAILAUTH_SOFTFAIL: return "softfail";
    case MAILAUTH_NEUTRAL: return "neutral";
    case MAILAUTH_TEMPERROR: return "temperror";
    case MAILAUTH_PERMERROR: return "permerror";
    }
    return "none";
}

/* ------------------------------------------------------------------------------------------ */

static void check_spf(struct mailauth *a, const struct mailauth_request *q, int64_t deadline, struct mailauth_result *r)
{
    struct mailauth_spf_input in = {.ip = q->ip, .helo = q->helo, .sender = q->sender, .receiver = a->authserv_id,
                                    .sender_macros = &r->spf_sender_macros};
    if (*q->sender && strrchr(q->sender, '@')) {
        mailauth_copy(r->spf_identity, sizeof r->spf_identity, "mailfrom");
        mailauth_copy(r->spf_subject, sizeof r->spf_subject, q->sender);
    } else {
        /* RFC 7208 §2.4: the null sender is checked as postmaster@<HELO>. */
        mailauth_copy(r->spf_identity, sizeof r->spf_identity, "helo");
        mailauth_copy(r->spf_subject, sizeof r->spf_subject, q->helo);
    }
    r->spf = mailauth_spf_mailfrom(a->dns, &in, deadline, r->spf_reason, sizeof r->spf_reason, NULL, 0);
}

bool mailauth_dmarc_sampled(const char *id, int pct)
{
    uint32_t h = 2166136261u; /* FNV-1a, 32 bits */
    for (const char *p = id ? id : ""; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return (int)(h % 100) < pct;
}

/* RFC 7489 §6.6.4: a failing message outside the pct= sample gets the next milder policy. */
static void apply_policy(struct mailauth_dmarc *d, const char *id)
{
    const char *p = d->verdict == MAILAUTH_FAIL && d->policy[0] ? d->policy : "none";
    if (strcmp(p, "none") != 0 && !mailauth_dmarc_sampled(id, d->pct))
        p = strcmp(p, "reject") == 0 ? "quarantine" : "none";
    mailauth_copy(d->applied, sizeof d->applied, p);
}

/* The HELO identity when the MAIL FROM one was the sender's and the HELO is a name, not an address
 * literal.  Run last of a message's checks: it has what is left of the budget and cannot make
 * DKIM or DMARC late.  Its verdict goes only into Authentication-Results (X-Mailgun-Spf, DMARC and
 * --spf-reject keep MAIL FROM's). */
static void check_helo(struct mailauth *a, const struct mailauth_request *q, int64_t deadline, struct mailauth_result *r)
{
    const char *at = strrchr(q->sender, '@');
    if (!*q->sender || !at || !*q->helo || q->helo[0] == '[') return;
    struct mailauth_spf_input in = {.ip = q->ip, .helo = q->helo, .sender = q->sender, .receiver = a->authserv_id};
    r->helo_checked = true;
    mailauth_copy(r->helo, sizeof r->helo, q->helo);
    /* The usual case: the HELO name is the sender's domain.  Its check would then ask the same
     * records the same questions (the identities differ only in the local-part, which %{s} and
     * %{l} alone show) and come to MAIL FROM's verdict and reason: take them.  A temperror is
     * asked again, with what is left of the budget. */
    if (strcmp(at + 1, q->helo) == 0 && !r->spf_sender_macros && r->spf != MAILAUTH_TEMPERROR) {
        r->spf_helo = r->spf;
        _Static_assert(sizeof r->spf_helo_reason == sizeof r->spf_reason, "same reasons");
        memcpy(r->spf_helo_reason, r->spf_reason, sizeof r->spf_helo_reason);
        return;
    }
    r->spf_helo = mailauth_spf_helo(a->dns, &in, deadline, r->spf_helo_reason, sizeof r->spf_helo_reason, NULL, 0);
}

/* The checks of one message, on the calling thread: a worker's job, or the loop's cache-only pass
 * (mailauth_check_cached), which stops at the first DNS answer that is not cached (the pass is then
 * thrown away: in a worker the flag never rises). */
static void run_checks(struct mailauth *a, const struct mailauth_request *q, int64_t deadline, struct mailauth_result *r)
{
    check_spf(a, q, deadline, r);
    if (mailauth_dns_cache_missed()) return;
    r->nsigs = mailauth_dkim_check(a->dkim, a->dns, q->data, q->len, deadline, r->sigs, MAILAUTH_DKIM_SIGS_MAX);
    if (mailauth_dns_cache_missed()) return;
    int from = mailauth_from_domain(q->data, q->len, r->from_domain, sizeof r->from_domain);
    if (from == 1) {
        const char *at = strrchr(q->sender, '@');
        const char *spf_domain = *q->sender && at ? at + 1 : q->helo;
        mailauth_dmarc_check(a->dns, a->psl, r->from_domain, r->spf, spf_domain, r->sigs, r->nsigs, deadline,
                             &r->dmarc);
        bool temp = r->spf == MAILAUTH_TEMPERROR;
        for (size_t i = 0; i < r->nsigs; i++) temp |= r->sigs[i].verdict == MAILAUTH_TEMPERROR;
        if (r->dmarc.verdict == MAILAUTH_FAIL && temp) { /* it might have passed */
            r->dmarc.verdict = MAILAUTH_TEMPERROR;
            snprintf(r->dmarc.reason, sizeof r->dmarc.reason, "SPF or DKIM temperror");
        }
        apply_policy(&r->dmarc, q->id);
    } else {
        r->dmarc.verdict = from == 0 ? MAILAUTH_NONE : MAILAUTH_PERMERROR;
        snprintf(r->dmarc.reason, sizeof r->dmarc.reason, "%s",
                 from == 0 ? "no From: field" : "no single From: address with a domain");
    }
    if (mailauth_dns_cache_missed()) return;
    check_helo(a, q, deadline, r);
}

/* What the log and the caller read once the checks are done. */
static void finish_result(struct mailauth_result *r, int64_t started_ms, const char *path)
{
    r->elapsed_ms = mailauth_now_ms() - started_ms;
    r->path = path;
    struct mailauth_buf b; /* "spf=%s spf_helo=%s dkim=%s dmarc=%s" */
    mailauth_buf_init(&b, r->summary, sizeof r->summary);
    mailauth_buf_str(&b, "spf=");
    mailauth_buf_str(&b, mailauth_verdict_name(r->spf));
    mailauth_buf_str(&b, " spf_helo=");
    mailauth_buf_str(&b, r->helo_checked ? mailauth_verdict_name(r->spf_helo) : "-");
    mailauth_buf_str(&b, " dkim=");
    mailauth_buf_str(&b, mailauth_verdict_name(mailauth_result_dkim(r)));
    mailauth_buf_str(&b, " dmarc=");
    mailauth_buf_str(&b, mailauth_verdict_name(r->dmarc.verdict));
}

static struct mailauth_result *result_new(struct mailauth *a)
{
    struct mailauth_result *r = calloc(1, sizeof *r);
    if (r) r->authserv_id = a->authserv_id;
    return r;
}

static void job_free(struct job *j)
{
    for (size_t i = 0; i < G_N_ELEMENTS(j->copy); i++) free(j->copy[i]);
    free(j);
}

/* A prefetch: the SPF check for its answers only. */
static void run_prefetch(struct mailauth *a, struct job *j)
{
    struct mailauth_result *r = result_new(a);
    if (r) {
        check_spf(a, &j->req, j->deadline_ms, r);
        check_helo(a, &j->req, j->deadline_ms, r);
        char esc[LOG_CLIENT_BYTES_MAX * 4 + 8];
        log_debug("mailauth", "prefetched spf=%s spf_helo=%s subject=\"%s\" ms=%lld", mailauth_verdict_name(r->spf),
                  r->helo_checked ? mailauth_verdict_name(r->spf_helo) : "-",
                  log_escape(esc, sizeof esc, r->spf_subject, strlen(r->spf_subject), LOG_CLIENT_BYTES_MAX),
                  (long long)(mailauth_now_ms() - j->started_ms));
    }
    mailauth_result_free(r);
    job_free(j);
}

static void *worker_main(void *arg)
{
    struct mailauth *a = arg;
    log_thread_name("mailauth");
    for (;;) {
        pthread_mutex_lock(&a->lock);
        /* Prefetches take at most half the workers: with a slow DNS they must not leave the
         * messages' checks waiting for a worker until their deadline. */
#define CAN_PREFETCH (a->pre_head && !a->stopping && a->running_pre < MAILAUTH_WORKERS / 2)
        while (!a->head && !CAN_PREFETCH && !a->stopping) pthread_cond_wait(&a->cond, &a->lock);
        struct job *j = a->head;
        if (!j && CAN_PREFETCH) {
            j = a->pre_head;
            a->pre_head = j->next;
            if (!a->pre_head) a->pre_tail = NULL;
            a->npre--;
            a->running_pre++;
            pthread_mutex_unlock(&a->lock);
            run_prefetch(a, j);
            pthread_mutex_lock(&a->lock);
            a->running_pre--;
            pthread_cond_signal(&a->cond);
            pthread_mutex_unlock(&a->lock);
            continue;
        }
#undef CAN_PREFETCH
        if (!j) {
            pthread_mutex_unlock(&a->lock);
            return NULL;
        }
        a->head = j->next;
        if (!a->head) a->tail = NULL;
        pthread_mutex_unlock(&a->lock);

        struct mailauth_result *r = result_new(a);
        if (r) {
            run_checks(a, &j->req, j->deadline_ms, r);
            finish_result(r, j->started_ms, "async");
        }
        j->done(j->arg, r); /* r NULL: out of memory, the message goes without verdicts */
        job_free(j);
    }
}

struct mailauth *mailauth_start(const struct mailauth_config *cfg, char **err)
{
    struct mailauth *a = calloc(1, sizeof *a);
    *err = NULL;
    if (!a) {
        *err = strdup("mailauth: out of memory");
        return NULL;
    }
    a->authserv_id = strdup(cfg->authserv_id);
    a->budget_ms = cfg->budget_ms;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    a->psl = mailauth_psl_load(cfg->psl_file, err);
    if (!a->psl) goto fail;
    a->dns = mailauth_dns_new(cfg->dns_server ? cfg->dns_server : "", err);
    if (!a->dns) goto fail;
    a->dkim = mailauth_dkim_new(err);
    if (!a->dkim) goto fail;
    for (size_t i = 0; i < MAILAUTH_WORKERS; i++) {
        if (pthread_create(&a->workers[i], NULL, worker_main, a) != 0) break;
        a->nworkers++;
    }
    if (a->nworkers == 0) {
        *err = strdup("mailauth: cannot start its workers");
        goto fail;
    }
    log_info("mailauth", "ready dns=%s budget_ms=%u workers=%zu ed25519=%s", cfg->dns_server && *cfg->dns_server
             ? cfg->dns_server : "resolv.conf", a->budget_ms, a->nworkers, mailauth_dkim_ed25519(a->dkim) ? "yes" : "no");
    return a;
fail:
    mailauth_stop(a);
    return NULL;
}

void mailauth_stop(struct mailauth *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->lock);
    a->stopping = true;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    for (size_t i = 0; i < a->nworkers; i++) pthread_join(a->workers[i], NULL);
    while (a->pre_head) { /* prefetches nobody waits for */
        struct job *j = a->pre_head;
        a->pre_head = j->next;
        job_free(j);
    }
    mailauth_dkim_free(a->dkim);
    mailauth_dns_free(a->dns);
    mailauth_psl_free(a->psl);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
    free(a->authserv_id);
    free(a);
}

struct mailauth_result *mailauth_check_cached(struct mailauth *a, const struct mailauth_request *req)
{
    /* The loop hashes the body: a large one would hold every other session back. */
    if (req->len > MAILAUTH_CACHED_BYTES_MAX) return NULL;
    struct mailauth_result *r = result_new(a);
    if (!r) return NULL;
    const int64_t started = mailauth_now_ms();
    mailauth_dns_cache_only(true);
    run_checks(a, req, started + a->budget_ms, r);
    const bool missed = mailauth_dns_cache_missed();
    mailauth_dns_cache_only(false);
    if (missed) {
        mailauth_result_free(r);
        return NULL;
    }
    finish_result(r, started, "cached");
    atomic_fetch_add_explicit(&a->checks_cached, 1, memory_order_relaxed);
    return r;
}

void mailauth_get_stats(struct mailauth *a, struct mailauth_stats *out)
{
    out->checks_cached = atomic_load_explicit(&a->checks_cached, memory_order_relaxed);
    out->checks_async = atomic_load_explicit(&a->checks_async, memory_order_relaxed);
}

int mailauth_submit(struct mailauth *a, const struct mailauth_request *req, mailauth_done_fn done, void *arg)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j) return -1;
    atomic_fetch_add_explicit(&a->checks_async, 1, memory_order_relaxed);
    j->req = *req;
    j->started_ms = mailauth_now_ms();
    j->deadline_ms = j->started_ms + a->budget_ms;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&a->lock);
    if (a->tail) a->tail->next = j;
    else a->head = j;
    a->tail = j;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
    return 0;
}

void mailauth_prefetch(struct mailauth *a, const char *ip, const char *helo, const char *sender)
{
    /* With the SPF records of the sender's domain and of the HELO name cached (seen within their
     * TTL) the prefetch would only cost two thread hand-offs per message, the most of what the
     * checks cost with a warm cache (bench/senderauth): skip it.  The check after DATA still does
     * every lookup it needs. */
    const char *at = strrchr(sender, '@');
    const char *domain = *sender && at ? at + 1 : helo;
    if (mailauth_dns_cached(a->dns, domain, 16) &&
        (!*helo || *helo == '[' || mailauth_dns_cached(a->dns, helo, 16))) {
        char esc[LOG_CLIENT_BYTES_MAX * 4 + 8];
        log_debug("mailauth", "prefetch skipped cached=\"%s\"",
                  log_escape(esc, sizeof esc, domain, strlen(domain), LOG_CLIENT_BYTES_MAX));
        return;
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j) return;
    j->copy[0] = strdup(ip);
    j->copy[1] = strdup(helo);
    j->copy[2] = strdup(sender);
    if (!j->copy[0] || !j->copy[1] || !j->copy[2]) {
        job_free(j);
        return;
    }
    j->req = (struct mailauth_request){.ip = j->copy[0], .helo = j->copy[1], .sender = j->copy[2]};
    j->started_ms = mailauth_now_ms();
    j->deadline_ms = j->started_ms + a->budget_ms;
    pthread_mutex_lock(&a->lock);
    if (a->npre >= MAILAUTH_PREFETCH_MAX || a->stopping) {
        pthread_mutex_unlock(&a->lock);
        job_free(j);
        return;
    }
    if (a->pre_tail) a->pre_tail->next = j;
    else a->pre_head = j;
    a->pre_tail = j;
    a->npre++;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

/* ------------------------------------------------------------------------------------------ */

void mailauth_result_free(struct mailauth_result *r)
{
    free(r);
}

enum mailauth_verdict mailauth_result_spf(const struct mailauth_result *r)
{
    return r->spf;
}

enum mailauth_verdict mailauth_result_dkim(const struct mailauth_result *r)
{
    if (r->nsigs == 0) return MAILAUTH_NONE;
    enum mailauth_verdict v = r->sigs[0].verdict;
    for (size_t i = 0; i < r->nsigs; i++)
        if (r->sigs[i].verdict == MAILAUTH_PASS) return MAILAUTH_PASS;
    return v;
}

enum mailauth_verdict mailauth_result_dmarc(const struct mailauth_result *r)
{
    return r->dmarc.verdict;
}

const char *mailauth_result_dmarc_policy(const struct mailauth_result *r)
{
    return r->dmarc.policy;
}

const char *mailauth_result_dmarc_applied(const struct mailauth_result *r)
{
    return r->dmarc.applied[0] ? r->dmarc.applied : "none";
}

int64_t mailauth_result_elapsed_ms(const struct mailauth_result *r)
{
    return r->elapsed_ms;
}

const char *mailauth_result_summary(const struct mailauth_result *r)
{
    return r->summary;
}

const char *mailauth_result_path(const struct mailauth_result *r)
{
    return r->path;
}

/* Printable ASCII but ( ) \\ ; " (and so no blank, CR or LF). */
static bool plain(unsigned char c)
{
    return c > ' ' && c < 127 && c != '(' && c != ')' && c != '\\' && c != ';' && c != '"';
}

/* Text safe inside an A-R comment or value: plain bytes as they are, a space as itself, any other
 * byte as '_'.  Copied by runs: the rewrite runs for every message. */
static void clean(GString *out, const char *s, size_t max)
{
    for (size_t i = 0; i < max && s[i];) {
        size_t run = i;
        while (run < max && s[run] && plain((unsigned char)s[run])) run++;
        g_string_append_len(out, s + i, (gssize)(run - i));
        if (run >= max || !s[run]) break;
        g_string_append_c(out, s[run] == ' ' ? ' ' : '_');
        i = run + 1;
    }
}

/* A URI list inside the comment: no blanks (they separate the comment's words), no ( ) \\ ; ". */
static void clean_uris(GString *out, const char *s)
{
    for (size_t i = 0; s[i] && i < MAILAUTH_DMARC_URIS_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t') continue;
        g_string_append_c(out, plain(c) ? (char)c : '_');
    }
}

static const char *mailgun_spf(enum mailauth_verdict v)
{
    switch (v) {
    case MAILAUTH_PASS: return "Pass";
    case MAILAUTH_FAIL: return "Fail";
    case MAILAUTH_SOFTFAIL: return "SoftFail";
    default: return "Neutral"; /* Mailgun posts only these four */
    }
}

/* "(p=reject pct=50 applied=quarantine aligned=spf rua=mailto:...)": pct= when not 100, applied=
 * when DMARC failed, rua= / ruf= when published (message/authres.c reads them back). */
static void dmarc_comment(const struct mailauth_result *r, GString *h)
{
    const struct mailauth_dmarc *d = &r->dmarc;
    g_string_append(h, " (p=");
    g_string_append(h, d->policy);
    if (d->pct != 100) g_string_append_printf(h, " pct=%d", d->pct);
    if (d->verdict == MAILAUTH_FAIL) {
        g_string_append(h, " applied=");
        g_string_append(h, mailauth_result_dmarc_applied(r));
    }
    g_string_append(h, d->spf_aligned && d->dkim_aligned ? " aligned=spf+dkim"
                       : d->spf_aligned                  ? " aligned=spf"
                       : d->dkim_aligned                 ? " aligned=dkim"
                                                         : "");
    const char *uris[] = {d->rua, d->ruf}, *names[] = {" rua=", " ruf="};
    for (size_t i = 0; i < 2; i++) {
        if (!*uris[i]) continue;
        g_string_append(h, names[i]);
        clean_uris(h, uris[i]);
    }
    g_string_append(h, ")");
}

static void write_headers(const struct mailauth_result *r, GString *h)
{
    g_string_append(h, "Authentication-Results: ");
    clean(h, r->authserv_id, SPF_DOMAIN_MAX);
    g_string_append(h, ";\r\n\tspf=");
    g_string_append(h, mailauth_verdict_name(r->spf));
    if (r->spf_reason[0]) {
        g_string_append(h, " (");
        clean(h, r->spf_reason, 90);
        g_string_append(h, ")");
    }
    g_string_append(h, " smtp.");
    g_string_append(h, r->spf_identity);
    g_string_append_c(h, '=');
    clean(h, r->spf_subject, SMTP_ADDRESS_MAX);
    if (r->helo_checked) { /* RFC 8601 §2.7.2: a second spf resinfo for the HELO identity */
        g_string_append(h, ";\r\n\tspf=");
        g_string_append(h, mailauth_verdict_name(r->spf_helo));
        if (r->spf_helo_reason[0]) {
            g_string_append(h, " (");
            clean(h, r->spf_helo_reason, 90);
            g_string_append(h, ")");
        }
        g_string_append(h, " smtp.helo=");
        clean(h, r->helo, SMTP_DOMAIN_MAX);
    }
    if (r->nsigs == 0) g_string_append(h, ";\r\n\tdkim=none");
    for (size_t i = 0; i < r->nsigs; i++) {
        const struct mailauth_dkim_sig *s = &r->sigs[i];
        g_string_append(h, ";\r\n\tdkim=");
        g_string_append(h, mailauth_verdict_name(s->verdict));
        if (s->reason[0] && s->verdict != MAILAUTH_PASS) {
            g_string_append(h, " (");
            clean(h, s->reason, 60);
            g_string_append(h, ")");
        }
        g_string_append(h, " header.d=");
        clean(h, s->domain[0] ? s->domain : "unknown", SPF_DOMAIN_MAX);
        g_string_append(h, " header.s=");
        clean(h, s->selector[0] ? s->selector : "unknown", MAILAUTH_DKIM_SELECTOR_MAX);
        if (s->algorithm[0]) {
            g_string_append(h, " header.a=");
            clean(h, s->algorithm, sizeof s->algorithm);
        }
        if (s->b[0]) {
            g_string_append(h, " header.b=");
            clean(h, s->b, 8);
        }
    }
    g_string_append(h, ";\r\n\tdmarc=");
    g_string_append(h, mailauth_verdict_name(r->dmarc.verdict));
    if (r->dmarc.policy[0])
        dmarc_comment(r, h);
    else if (r->dmarc.reason[0]) {
        g_string_append(h, " (");
        clean(h, r->dmarc.reason, 60);
        g_string_append(h, ")");
    }
    if (r->from_domain[0]) {
        g_string_append(h, " header.from=");
        clean(h, r->from_domain, SPF_DOMAIN_MAX);
    }
    g_string_append(h, "\r\nX-Mailgun-Spf: ");
    g_string_append(h, mailgun_spf(r->spf));
    g_string_append(h, "\r\nX-Mailgun-Dkim-Check-Result: ");
    g_string_append(h, mailauth_result_dkim(r) == MAILAUTH_PASS ? "Pass\r\n" : "Fail\r\n");
}

/* A field the sender may not bring: ours by name, or an A-R claiming our authserv-id. */
static bool impostor(const struct mailauth_result *r, const uint8_t *data, size_t start, size_t end)
{
    if (mailauth_header_is(data, start, end, "X-Mailgun-Spf") ||
        mailauth_header_is(data, start, end, "X-Mailgun-Dkim-Check-Result"))
        return true;
    size_t v = mailauth_header_is(data, start, end, "Authentication-Results");
    if (!v) return false;
    char id[SPF_DOMAIN_MAX + 1];
    return mailauth_authres_id((const char *)data + v, end - v, id, sizeof id) &&
           g_ascii_strcasecmp(id, r->authserv_id) == 0;
}

uint8_t *mailauth_rewrite(const struct mailauth_result *r, const uint8_t *data, size_t len, size_t *out_len)
{
    GString *h = g_string_sized_new(len + MAILAUTH_HEADERS_MAX);
    write_headers(r, h);
    size_t hend = mailauth_header_end(data, len), pos = 0, start, end;
    size_t copied = 0; /* data[0..copied) is in h */
    while (mailauth_header_next(data, hend, &pos, &start, &end)) {
        if (!impostor(r, data, start, end)) continue;
        g_string_append_len(h, (const char *)data + copied, (gssize)(start - copied));
        copied = end;
    }
    g_string_append_len(h, (const char *)data + copied, (gssize)(len - copied));
    *out_len = h->len;
    /* g_free and free are the same allocator since GLib 2.46. */
    return (uint8_t *)g_string_free(h, FALSE);
}
