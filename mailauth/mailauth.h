/* mailauth/mailauth.h — sender authentication at receipt: SPF (RFC 7208), DKIM (RFC 6376) and
 * DMARC (RFC 7489) verdicts, written as an Authentication-Results header (RFC 8601) and Mailgun's
 * X-Mailgun-Spf / X-Mailgun-Dkim-Check-Result (SPEC §2 "Sender authentication").
 *
 * Named mailauth, not auth: api/auth.c is the HTTP API's Basic authentication.
 *
 * Checks run on the module's own worker threads and never block the caller: mailauth_submit()
 * queues a job and returns; the callback runs on a worker thread when the job is done, at the
 * latest at its deadline (the time budget from the submit): whatever is not known by then is
 * "temperror".  mailauth_check_cached() runs the same checks on the caller's thread when every DNS
 * answer they need is cached, and gives up at the first one that is not.  DNS goes through libunbound (answers cached for their TTL, bounded).
 * Uses only util/ (plus libunbound, OpenSSL). */
#ifndef INLET_MAILAUTH_H
#define INLET_MAILAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mailauth_verdict {
    MAILAUTH_NONE,
    MAILAUTH_PASS,
    MAILAUTH_FAIL,
    MAILAUTH_SOFTFAIL,  /* SPF only */
    MAILAUTH_NEUTRAL,   /* SPF; DKIM: a signature that could not be processed */
    MAILAUTH_TEMPERROR, /* DNS failure or timeout, budget spent */
    MAILAUTH_PERMERROR, /* a broken record, key or signature */
};
/* "none", "pass", "fail", "softfail", "neutral", "temperror", "permerror" (RFC 8601 result names). */
const char *mailauth_verdict_name(enum mailauth_verdict v);

struct mailauth_config {
    const char *authserv_id;  /* our host name: the A-R header's first token */
    const char *dns_server;   /* "" or NULL: /etc/resolv.conf; else IP, IP:PORT or [IPv6]:PORT */
    const char *psl_file;     /* the Public Suffix List (Debian's publicsuffix package) */
    unsigned budget_ms;       /* each message's checks end by then */
};
struct mailauth;
/* Starts the workers and the resolver.  NULL with *err (malloc'd) when the resolver or the
 * suffix list cannot be set up. */
struct mailauth *mailauth_start(const struct mailauth_config *cfg, char **err);
/* Lets queued jobs finish (each within its budget), joins the workers, frees.  NULL is fine. */
void mailauth_stop(struct mailauth *a);

/* What a message's checks need.  Every pointer must stay valid until the callback ran. */
struct mailauth_request {
    const char *ip;      /* client address, printable */
    const char *helo;
    const char *sender;  /* MAIL FROM without <>, "" for the null sender */
    const uint8_t *data; /* the message as received (inlet's Received: first is fine) */
    size_t len;
    const char *id;      /* the message's id: DMARC's pct= sampling is drawn from it */
};

/* The verdicts of one message.  Owned by the callback's receiver; free with mailauth_result_free. */
struct mailauth_result;
typedef void (*mailauth_done_fn)(void *arg, struct mailauth_result *r);

/* Queues the checks; `done` runs on a worker thread.  -1 when memory runs out (done never runs). */
int mailauth_submit(struct mailauth *a, const struct mailauth_request *req, mailauth_done_fn done, void *arg);

/* The same checks on the calling thread, from cached DNS answers only (the front cache of
 * mailauth/dns.c): the result, exactly as a worker would have made it, or NULL the moment an answer
 * it needs is not cached (no query is sent, nothing waits), when the message is larger than
 * MAILAUTH_CACHED_BYTES_MAX (its hash would hold the caller up), or when memory runs out; then the
 * caller submits the message.  Saves the two thread hand-offs of a job, which with a warm cache
 * cost more than the checks (bench/senderauth).  `req` need not outlive the call. */
struct mailauth_result *mailauth_check_cached(struct mailauth *a, const struct mailauth_request *req);

/* Messages checked by each path since the start (GET /metrics).  Any thread. */
struct mailauth_stats {
    uint64_t checks_cached, checks_async;
};
void mailauth_get_stats(struct mailauth *a, struct mailauth_stats *out);

/* At MAIL FROM: runs the SPF check of (ip, helo, sender) on a worker when one is free, so that its
 * DNS answers are cached when the message's checks run; the verdict itself is not kept.  Copies the
 * strings; drops the work when MAILAUTH_PREFETCH_MAX are waiting.  Never blocks. */
void mailauth_prefetch(struct mailauth *a, const char *ip, const char *helo, const char *sender);

void mailauth_result_free(struct mailauth_result *r);
enum mailauth_verdict mailauth_result_spf(const struct mailauth_result *r);
/* The DKIM verdict Mailgun posts: pass when any signature passed. */
enum mailauth_verdict mailauth_result_dkim(const struct mailauth_result *r);
enum mailauth_verdict mailauth_result_dmarc(const struct mailauth_result *r);
/* The DMARC policy that applies to the From: domain ("none", "quarantine", "reject"), "" when
 * there is no record. */
const char *mailauth_result_dmarc_policy(const struct mailauth_result *r);
/* The DMARC policy applied to this message (RFC 7489 §6.6.4): "none" unless DMARC failed; then the
 * policy when the message is in the pct= sample, else the next milder one (reject → quarantine,
 * quarantine → none).  The sample is deterministic: the message is in it when
 * FNV-1a-32(its id) mod 100 < pct, so pct=0 never applies the policy and pct=100 always does. */
const char *mailauth_result_dmarc_applied(const struct mailauth_result *r);
/* The sampling itself: whether message `id` is in a pct= sample. */
bool mailauth_dmarc_sampled(const char *id, int pct);
/* Milliseconds the checks took. */
int64_t mailauth_result_elapsed_ms(const struct mailauth_result *r);
/* "spf=pass dkim=pass dmarc=pass" for the log. */
const char *mailauth_result_summary(const struct mailauth_result *r);
/* "cached" (mailauth_check_cached) or "async" (a worker's job). */
const char *mailauth_result_path(const struct mailauth_result *r);

/* The message with the verdicts in front: Authentication-Results, X-Mailgun-Spf,
 * X-Mailgun-Dkim-Check-Result, then `data` without the header fields that would pass for ours
 * (any Authentication-Results claiming our authserv-id, any X-Mailgun-Spf or
 * X-Mailgun-Dkim-Check-Result).  malloc'd, *out_len bytes; NULL when memory runs out. */
uint8_t *mailauth_rewrite(const struct mailauth_result *r, const uint8_t *data, size_t len, size_t *out_len);

#endif
