/* mailauth/dmarc.c — DMARC (RFC 7489): the From: domain's policy record (or its organizational
 * domain's, where sp= applies), and the verdict: pass when SPF passed for an aligned MAIL FROM
 * domain or a DKIM signature passed for an aligned d=, else fail.
 *
 * Written here rather than taken from libopendmarc: its lookups use the blocking system resolver
 * (no deadline), and what remains once DNS is ours is this file: a tag list and two comparisons.
 * pct= is read here and sampled by mailauth.c (it needs the message's id); rua= and ruf= are kept
 * for the verdicts but no report is ever sent.  inlet reports the verdict and the policy, and
 * rejects only when asked (--dmarc-reject). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mailauth/internal.h"
#include "util/limits.h"

struct record {
    char p[16], sp[16];
    int pct;
    char rua[MAILAUTH_DMARC_URIS_MAX], ruf[MAILAUTH_DMARC_URIS_MAX];
    bool strict_spf, strict_dkim;
};

/* pct=: an integer 0..100; anything else leaves the default (100: every message). */
static int parse_pct(const char *v, size_t vl)
{
    int n = 0;
    if (vl == 0 || vl > 3) return 100;
    for (size_t i = 0; i < vl; i++) {
        if (!isdigit((unsigned char)v[i])) return 100;
        n = n * 10 + (v[i] - '0');
    }
    return n <= 100 ? n : 100;
}

/* rua= / ruf=: the URI list as published, cut at the last ',' that fits. */
static void keep_uris(char *out, size_t outsz, const char *v, size_t vl)
{
    if (vl >= outsz) {
        vl = outsz - 1;
        while (vl > 0 && v[vl] != ',') vl--;
    }
    memcpy(out, v, vl);
    out[vl] = '\0';
}

/* "v=DMARC1; p=reject; sp=none; adkim=s" → record.  false: not a valid DMARC record. */
static bool parse_record(const char *txt, struct record *r)
{
    memset(r, 0, sizeof *r);
    r->pct = 100;
    bool first = true, version = false;
    for (const char *p = txt; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ';') p++;
        if (!*p) break;
        size_t len = strcspn(p, ";");
        const char *eq = memchr(p, '=', len);
        if (!eq) return false;
        size_t nl = (size_t)(eq - p);
        while (nl && (p[nl - 1] == ' ' || p[nl - 1] == '\t')) nl--;
        const char *v = eq + 1;
        while (*v == ' ' || *v == '\t') v++;
        size_t vl = (size_t)(p + len - v);
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
        if (first) {
            if (!(nl == 1 && p[0] == 'v' && vl == 6 && strncmp(v, "DMARC1", 6) == 0)) return false;
            version = true;
        } else if (nl == 1 && p[0] == 'p' && vl < sizeof r->p) {
            memcpy(r->p, v, vl);
            r->p[vl] = '\0';
        } else if (nl == 2 && strncmp(p, "sp", 2) == 0 && vl < sizeof r->sp) {
            memcpy(r->sp, v, vl);
            r->sp[vl] = '\0';
        } else if (nl == 5 && strncmp(p, "adkim", 5) == 0) {
            r->strict_dkim = vl == 1 && v[0] == 's';
        } else if (nl == 4 && strncmp(p, "aspf", 4) == 0) {
            r->strict_spf = vl == 1 && v[0] == 's';
        } else if (nl == 3 && strncmp(p, "pct", 3) == 0) {
            r->pct = parse_pct(v, vl);
        } else if (nl == 3 && strncmp(p, "rua", 3) == 0) {
            keep_uris(r->rua, sizeof r->rua, v, vl);
        } else if (nl == 3 && strncmp(p, "ruf", 3) == 0) {
            keep_uris(r->ruf, sizeof r->ruf, v, vl);
        }
        first = false;
        p += len;
    }
    if (!version) return false;
    /* §6.6.3: p= is required; an unknown value makes the record unusable. */
    for (char *c = r->p; *c; c++) *c = (char)tolower((unsigned char)*c);
    for (char *c = r->sp; *c; c++) *c = (char)tolower((unsigned char)*c);
    if (strcmp(r->p, "none") != 0 && strcmp(r->p, "quarantine") != 0 && strcmp(r->p, "reject") != 0) return false;
    if (r->sp[0] && strcmp(r->sp, "none") != 0 && strcmp(r->sp, "quarantine") != 0 && strcmp(r->sp, "reject") != 0)
        r->sp[0] = '\0';
    return true;
}

/* 1 found, 0 none, -1 temporary failure. */
static int fetch(struct mailauth_dns *dns, const char *domain, int64_t deadline_ms, struct record *r)
{
    char name[SPF_DOMAIN_MAX + 16];
    struct mailauth_buf b;
    mailauth_buf_init(&b, name, sizeof name);
    mailauth_buf_str(&b, "_dmarc.");
    mailauth_buf_str(&b, domain);
    if (b.cut) return 0;
    struct mailauth_dns_answer a;
    mailauth_dns_query(dns, name, 16, deadline_ms, &a);
    int found = 0;
    if (a.status == MAILAUTH_DNS_TEMP) {
        mailauth_dns_answer_free(&a);
        return -1;
    }
    char txt[MAILAUTH_DMARC_RECORD_MAX];
    for (size_t i = 0; i < a.count; i++) {
        struct record tmp;
        if (!mailauth_dns_txt(a.data[i], a.len[i], txt, sizeof txt) || strncmp(txt, "v=DMARC1", 8) != 0) continue;
        if (!parse_record(txt, &tmp)) continue;
        if (found++ == 0) *r = tmp;
    }
    mailauth_dns_answer_free(&a);
    return found == 1 ? 1 : 0; /* §6.6.3: several records: as if none */
}

static bool aligned(const struct mailauth_psl *psl, const char *a, const char *from, bool strict)
{
    if (!a || !*a) return false;
    if (strcasecmp(a, from) == 0) return true;
    if (strict) return false;
    char oa[SPF_DOMAIN_MAX + 1], of[SPF_DOMAIN_MAX + 1];
    mailauth_psl_org(psl, a, oa, sizeof oa);
    mailauth_psl_org(psl, from, of, sizeof of);
    return strcasecmp(oa, of) == 0;
}

void mailauth_dmarc_check(struct mailauth_dns *dns, const struct mailauth_psl *psl, const char *from_domain,
                          enum mailauth_verdict spf, const char *spf_domain, const struct mailauth_dkim_sig *sigs,
                          size_t nsigs, int64_t deadline_ms, struct mailauth_dmarc *out)
{
    memset(out, 0, sizeof *out);
    out->pct = 100;
    struct record r;
    int got = fetch(dns, from_domain, deadline_ms, &r);
    bool sub = false;
    char org[SPF_DOMAIN_MAX + 1];
    if (got == 0) {
        mailauth_psl_org(psl, from_domain, org, sizeof org);
        if (strcasecmp(org, from_domain) != 0) {
            got = fetch(dns, org, deadline_ms, &r);
            sub = true;
        }
    }
    if (got < 0) {
        out->verdict = MAILAUTH_TEMPERROR;
        snprintf(out->reason, sizeof out->reason, "DNS timeout or failure");
        return;
    }
    if (got == 0) {
        out->verdict = MAILAUTH_NONE;
        snprintf(out->reason, sizeof out->reason, "no DMARC record");
        return;
    }
    mailauth_copy(out->policy, sizeof out->policy, sub && r.sp[0] ? r.sp : r.p);
    out->pct = r.pct;
    memcpy(out->rua, r.rua, sizeof out->rua);
    memcpy(out->ruf, r.ruf, sizeof out->ruf);
    out->spf_aligned = spf == MAILAUTH_PASS && aligned(psl, spf_domain, from_domain, r.strict_spf);
    for (size_t i = 0; i < nsigs && !out->dkim_aligned; i++)
        out->dkim_aligned = sigs[i].verdict == MAILAUTH_PASS && aligned(psl, sigs[i].domain, from_domain, r.strict_dkim);
    out->verdict = out->spf_aligned || out->dkim_aligned ? MAILAUTH_PASS : MAILAUTH_FAIL;
    if (out->verdict == MAILAUTH_FAIL)
        snprintf(out->reason, sizeof out->reason, "no aligned SPF or DKIM pass");
}
