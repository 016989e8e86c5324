/* mailauth/dkim.c — DKIM verification (RFC 6376, RFC 8463 ed25519-sha256) with OpenDKIM's
 * libopendkim: canonicalization, body hashes with l= tags, x= expiry, the key's syntax and type,
 * RSA and ed25519 signatures are its work.  The key lookup is ours (dkim_set_key_lookup): through
 * mailauth/dns.c, so that it is cached and ends at the job's deadline; libopendkim's own resolver
 * would block in res_query without one.
 *
 * One DKIM_LIB for the process (libopendkim's handles are per message, the library is shared
 * between threads).  At most MAILAUTH_DKIM_SIGS_MAX signatures of a message are verified (a
 * prescreen callback ignores the rest): each costs a lookup and a hash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <opendkim/dkim.h>

#include "mailauth/internal.h"
#include "util/limits.h"

struct mailauth_dkim {
    DKIM_LIB *lib;
    bool ed25519;
};

/* Per message: what the key lookup needs. */
struct lookup_ctx {
    struct mailauth_dns *dns;
    int64_t deadline_ms;
};

static DKIM_CBSTAT key_lookup(DKIM *dkim, DKIM_SIGINFO *sig, u_char *buf, size_t buflen)
{
    struct lookup_ctx *c = dkim_get_user_context(dkim);
    const char *sel = (const char *)dkim_sig_getselector(sig);
    const char *dom = (const char *)dkim_sig_getdomain(sig);
    char name[MAILAUTH_DKIM_SELECTOR_MAX + SPF_DOMAIN_MAX + 16];
    if (!c || !sel || !dom) return DKIM_CBSTAT_ERROR;
    int n = snprintf(name, sizeof name, "%s._domainkey.%s", sel, dom);
    if (n < 0 || (size_t)n >= sizeof name) return DKIM_CBSTAT_NOTFOUND;
    struct mailauth_dns_answer a;
    mailauth_dns_query(c->dns, name, 16, c->deadline_ms, &a);
    DKIM_CBSTAT r = DKIM_CBSTAT_NOTFOUND;
    if (a.status == MAILAUTH_DNS_TEMP) r = DKIM_CBSTAT_ERROR;
    else if (a.status == MAILAUTH_DNS_OK && a.count > 0)
        r = mailauth_dns_txt(a.data[0], a.len[0], (char *)buf, buflen) ? DKIM_CBSTAT_CONTINUE : DKIM_CBSTAT_ERROR;
    mailauth_dns_answer_free(&a);
    return r;
}

static DKIM_CBSTAT prescreen(DKIM *dkim, DKIM_SIGINFO **sigs, int nsigs)
{
    (void)dkim;
    for (int i = MAILAUTH_DKIM_SIGS_MAX; i < nsigs; i++) dkim_sig_ignore(sigs[i]);
    return DKIM_CBSTAT_CONTINUE;
}

struct mailauth_dkim *mailauth_dkim_new(char **err)
{
    struct mailauth_dkim *k = calloc(1, sizeof *k);
    if (!k) goto oom;
    k->lib = dkim_init(NULL, NULL);
    if (!k->lib) goto oom;
    unsigned int flags = DKIM_LIBFLAGS_BADSIGHANDLES | DKIM_LIBFLAGS_FIXCRLF;
    dkim_options(k->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
    dkim_set_key_lookup(k->lib, key_lookup);
    dkim_set_prescreen(k->lib, prescreen);
    k->ed25519 = dkim_libfeature(k->lib, DKIM_FEATURE_ED25519);
    return k;
oom:
    free(k);
    *err = strdup("dkim: cannot initialise libopendkim");
    return NULL;
}

void mailauth_dkim_free(struct mailauth_dkim *k)
{
    if (!k) return;
    dkim_close(k->lib);
    free(k);
}

bool mailauth_dkim_ed25519(const struct mailauth_dkim *k)
{
    return k->ed25519;
}

static void copy(char *out, size_t outsz, const u_char *s)
{
    snprintf(out, outsz, "%s", s ? (const char *)s : "");
}

/* RFC 8601 §2.7.1 result of one signature. */
static enum mailauth_verdict sig_verdict(DKIM_SIGINFO *sig, const char **reason)
{
    int err = dkim_sig_geterror(sig);
    *reason = err == DKIM_SIGERROR_OK ? "" : dkim_sig_geterrorstr(err);
    if (!*reason) *reason = "";
    if ((dkim_sig_getflags(sig) & DKIM_SIGFLAG_PASSED) && dkim_sig_getbh(sig) == DKIM_SIGBH_MATCH) return MAILAUTH_PASS;
    switch (err) {
    case DKIM_SIGERROR_KEYFAIL: return MAILAUTH_TEMPERROR;
    case DKIM_SIGERROR_OK: /* processed, hashes differ */
        if (dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH) *reason = "body hash did not verify";
        else if (!(dkim_sig_getflags(sig) & DKIM_SIGFLAG_PROCESSED)) {
            *reason = "not verified";
            return MAILAUTH_NEUTRAL;
        } else *reason = "signature did not verify";
        return MAILAUTH_FAIL;
    case DKIM_SIGERROR_BADSIG:
    case DKIM_SIGERROR_EXPIRED:
    case DKIM_SIGERROR_FUTURE:
    case DKIM_SIGERROR_TIMESTAMPS:
    case DKIM_SIGERROR_TOOLARGE_L:
    case DKIM_SIGERROR_SUBDOMAIN:
    case DKIM_SIGERROR_KEYHASHMISMATCH:
        return MAILAUTH_FAIL;
    default: return MAILAUTH_PERMERROR;
    }
}

static bool has_signature(const uint8_t *data, size_t len)
{
    size_t hend = mailauth_header_end(data, len), pos = 0, start, end;
    while (mailauth_header_next(data, hend, &pos, &start, &end))
        if (mailauth_header_is(data, start, end, "DKIM-Signature")) return true;
    return false;
}

size_t mailauth_dkim_check(struct mailauth_dkim *k, struct mailauth_dns *dns, const uint8_t *data, size_t len,
                           int64_t deadline_ms, struct mailauth_dkim_sig *out, size_t max)
{
    struct lookup_ctx ctx = {.dns = dns, .deadline_ms = deadline_ms};
    DKIM_STAT st;
    DKIM *dkim = dkim_verify(k->lib, (const unsigned char *)"inlet", NULL, &st);
    size_t n = 0;
    if (!dkim) return 0;
    dkim_set_user_context(dkim, &ctx);
    /* libopendkim takes a non-const pointer and only reads it. */
    st = dkim_chunk(dkim, (u_char *)(uintptr_t)data, len);
    if (st == DKIM_STAT_OK) st = dkim_chunk(dkim, NULL, 0);
    if (st == DKIM_STAT_OK || st == DKIM_STAT_NOSIG) st = dkim_eom(dkim, NULL);
    DKIM_SIGINFO **sigs = NULL;
    int nsigs = 0;
    if (dkim_getsiglist(dkim, &sigs, &nsigs) != DKIM_STAT_OK) goto out;
    for (int i = 0; i < nsigs && n < max; i++) {
        DKIM_SIGINFO *sig = sigs[i];
        if (i >= MAILAUTH_DKIM_SIGS_MAX) break; /* ignored by prescreen() */
        struct mailauth_dkim_sig *o = &out[n++];
        const char *reason = "";
        o->verdict = sig_verdict(sig, &reason);
        if (o->verdict != MAILAUTH_PASS && mailauth_now_ms() >= deadline_ms && o->verdict != MAILAUTH_FAIL) {
            o->verdict = MAILAUTH_TEMPERROR;
            reason = "time budget spent";
        }
        copy(o->domain, sizeof o->domain, dkim_sig_getdomain(sig));
        copy(o->selector, sizeof o->selector, dkim_sig_getselector(sig));
        copy(o->algorithm, sizeof o->algorithm, dkim_sig_getalgorithm(sig));
        copy(o->reason, sizeof o->reason, (const u_char *)reason);
        const u_char *b = dkim_sig_gettagvalue(sig, false, (u_char *)(uintptr_t)"b");
        copy(o->b, sizeof o->b, b);
    }
out:
    dkim_free(dkim);
    if (n == 0 && max > 0 && has_signature(data, len)) {
        /* Signed, yet libopendkim listed nothing: its key lookups failed (budget spent, DNS
         * down) before it kept the signatures, or it gave up on their syntax. */
        struct mailauth_dkim_sig *o = &out[n++];
        memset(o, 0, sizeof *o);
        const bool late = mailauth_now_ms() >= deadline_ms;
        o->verdict = late || st == DKIM_STAT_KEYFAIL ? MAILAUTH_TEMPERROR : MAILAUTH_PERMERROR;
        copy(o->reason, sizeof o->reason, (const u_char *)(late ? "time budget spent" : "not verifiable"));
    }
    return n;
}
