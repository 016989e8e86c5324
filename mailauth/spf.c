/* mailauth/spf.c — SPF (RFC 7208): check_host() over mailauth/dns.c.
 *
 * Written here rather than taken from libspf2: libspf2's lookups block in the system resolver
 * (no deadline but res_query's retries), it has had remotely triggerable memory errors in its
 * macro expansion (CVE-2021-20314, CVE-2021-33912/33913) and is barely maintained upstream.  The
 * evaluator is a few hundred lines over bounded buffers; every DNS wait goes through our resolver
 * and the job's deadline.
 *
 * Limits of RFC 7208 §4.6.4: 10 terms that cause DNS lookups (include, a, mx, ptr, exists,
 * redirect) per check, counted across includes and redirects; 2 void lookups (NXDOMAIN or no
 * answer); 10 MX or PTR names looked up per mechanism.  Past them: permerror. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mailauth/internal.h"
#include "util/limits.h"

enum { T_A = 1, T_PTR = 12, T_MX = 15, T_TXT = 16, T_AAAA = 28 };

struct spf {
    struct mailauth_dns *dns;
    const struct mailauth_spf_input *in;
    const char *local;  /* %{l} */
    const char *sender_domain; /* %{o} */
    int family;         /* AF_INET or AF_INET6 */
    uint8_t ip[16];
    int lookups, voids, depth;
    int64_t deadline_ms;
    char *explain;
    size_t explainsz;
    char *exp;          /* the explanation (exp=) on fail; expsz 0: not wanted */
    size_t expsz;
    int in_include;     /* §6.2: an included record's exp= is not used */
    char p_domain[SPF_DOMAIN_MAX + 1]; /* %{p} last computed for this domain */
    char p_name[SPF_DOMAIN_MAX + 1];
};

/* What a mechanism gave: no match, match, or an error that ends the check. */
enum mres { NOMATCH, MATCH, ERR_TEMP, ERR_PERM };

__attribute__((format(printf, 2, 3))) static void say(struct spf *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->explain, s->explainsz, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------ */
/* Macros (RFC 7208 §7). */

static bool append(char *out, size_t outsz, size_t *o, const char *src, size_t n)
{
    if (*o + n >= outsz) return false;
    memcpy(out + *o, src, n);
    *o += n;
    out[*o] = '\0';
    return true;
}

static void ip_text(const struct spf *s, bool dotted_nibbles, char *out, size_t outsz)
{
    if (s->family == AF_INET) {
        inet_ntop(AF_INET, s->ip, out, (socklen_t)outsz);
        return;
    }
    if (!dotted_nibbles) {
        inet_ntop(AF_INET6, s->ip, out, (socklen_t)outsz);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16 && o + 4 < outsz; i++) {
        out[o++] = hex[s->ip[i] >> 4];
        out[o++] = '.';
        out[o++] = hex[s->ip[i] & 15];
        out[o++] = '.';
    }
    out[o ? o - 1 : 0] = '\0';
}

static bool valid_domain(const char *d);
static enum mres match_addr(struct spf *s, const char *name, int v4, int v6, bool count_void);
static void reverse_name(const struct spf *s, char *out, size_t outsz);
static bool subdomain_of(const char *name, const char *target);

/* %{p} (§7.3): a name of the client that its PTR gives and whose address lookup gives the client
 * back; `domain` itself first, then one of its subdomains, then any; "unknown" when none is.  At
 * most SPF_PTR_NAMES_MAX names looked up; not counted as a DNS mechanism (it is none). */
static const char *validated_name(struct spf *s, const char *domain)
{
    if (strcasecmp(s->p_domain, domain) == 0 && s->p_name[0]) return s->p_name;
    snprintf(s->p_domain, sizeof s->p_domain, "%s", domain);
    snprintf(s->p_name, sizeof s->p_name, "unknown");
    char rev[80];
    reverse_name(s, rev, sizeof rev);
    struct mailauth_dns_answer a;
    mailauth_dns_query(s->dns, rev, T_PTR, s->deadline_ms, &a);
    int best = 0; /* 3: domain itself, 2: a subdomain, 1: any */
    for (size_t i = 0; i < a.count && i < SPF_PTR_NAMES_MAX && best < 3; i++) {
        char name[SPF_DOMAIN_MAX + 2];
        size_t off = 0;
        if (!mailauth_dns_name(a.data[i], a.len[i], &off, name, sizeof name) || !valid_domain(name)) continue;
        int rank = strcasecmp(name, domain) == 0 ? 3 : subdomain_of(name, domain) ? 2 : 1;
        if (rank <= best || match_addr(s, name, 32, 128, false) != MATCH) continue;
        best = rank;
        snprintf(s->p_name, sizeof s->p_name, "%.*s", SPF_DOMAIN_MAX, name);
    }
    mailauth_dns_answer_free(&a);
    return s->p_name;
}

/* One macro's value, before its transformers.  c, r and t only in an explanation (`explain`). */
static bool macro_value(struct spf *s, char letter, const char *domain, bool explain, char *out, size_t outsz)
{
    const char *v = NULL;
    const char lower = (char)tolower((unsigned char)letter);
    if ((lower == 's' || lower == 'l') && s->in->sender_macros) *s->in->sender_macros = true;
    switch (lower) {
    case 's':
        if (*s->in->sender) v = s->in->sender;
        else {
            snprintf(out, outsz, "postmaster@%s", s->in->helo);
            return true;
        }
        break;
    case 'l': v = s->local; break;
    case 'o': v = s->sender_domain; break;
    case 'd': v = domain; break;
    case 'i': ip_text(s, true, out, outsz); return true;
    case 'p': v = validated_name(s, domain); break; /* §7.3: SHOULD NOT be used, but may be */
    case 'v': v = s->family == AF_INET ? "in-addr" : "ip6"; break;
    case 'h': v = s->in->helo; break;
    case 'c':
        if (!explain) return false;
        ip_text(s, false, out, outsz);
        return true;
    case 'r':
        if (!explain) return false;
        v = s->in->receiver && *s->in->receiver ? s->in->receiver : "unknown";
        break;
    case 't':
        if (!explain) return false;
        snprintf(out, outsz, "%lld", (long long)time(NULL));
        return true;
    default: return false;
    }
    snprintf(out, outsz, "%s", v);
    return true;
}

/* Splits `val` on `delims`, keeps the rightmost `keep` parts (0: all), reversed when asked,
 * joins with '.'. */
static bool transform(const char *val, const char *delims, int keep, bool reverse, char *out,
                      size_t outsz, size_t *o)
{
    const char *parts[SPF_MACRO_PARTS_MAX];
    size_t lens[SPF_MACRO_PARTS_MAX];
    int n = 0;
    const char *p = val;
    for (;;) {
        size_t len = strcspn(p, delims);
        if (n == SPF_MACRO_PARTS_MAX) return false;
        parts[n] = p;
        lens[n++] = len;
        if (!p[len]) break;
        p += len + 1;
    }
    if (reverse) {
        for (int i = 0; i < n / 2; i++) {
            const char *tp = parts[i];
            size_t tl = lens[i];
            parts[i] = parts[n - 1 - i];
            lens[i] = lens[n - 1 - i];
            parts[n - 1 - i] = tp;
            lens[n - 1 - i] = tl;
        }
    }
    int first = keep > 0 && keep < n ? n - keep : 0;
    for (int i = first; i < n; i++) {
        if (i > first && !append(out, outsz, o, ".", 1)) return false;
        if (!append(out, outsz, o, parts[i], lens[i])) return false;
    }
    return true;
}

/* §7.3: an upper-case macro letter's value is URL-escaped: all but ALPHA DIGIT - . _ ~. */
static bool url_escape(const char *v, size_t n, char *out, size_t outsz, size_t *o)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (isalnum(c) || strchr("-._~", c)) {
            if (!append(out, outsz, o, (const char *)&v[i], 1)) return false;
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            if (!append(out, outsz, o, e, 3)) return false;
        }
    }
    return true;
}

/* Expands a domain-spec, or with `explain` an explanation (spaces allowed, c r t macros, no
 * length cut).  false: a syntax error (permerror), or it does not fit. */
static bool expand(struct spf *s, const char *spec, size_t speclen, const char *domain, bool explain, char *out,
                   size_t outsz)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < speclen; i++) {
        char c = spec[i];
        if (c != '%') {
            if ((unsigned char)c < (explain ? ' ' : '!') || (unsigned char)c > '~' || !append(out, outsz, &o, &c, 1))
                return false;
            continue;
        }
        if (++i >= speclen) return false;
        c = spec[i];
        if (c == '%') { if (!append(out, outsz, &o, "%", 1)) return false; continue; }
        if (c == '_') { if (!append(out, outsz, &o, " ", 1)) return false; continue; }
        if (c == '-') { if (!append(out, outsz, &o, "%20", 3)) return false; continue; }
        if (c != '{' || ++i >= speclen) return false;
        char letter = spec[i++];
        int keep = 0;
        bool digits = false;
        while (i < speclen && isdigit((unsigned char)spec[i])) {
            keep = keep * 10 + (spec[i++] - '0');
            digits = true;
            if (keep > 128) return false;
        }
        if (digits && keep == 0) return false;
        bool reverse = false;
        if (i < speclen && (spec[i] == 'r' || spec[i] == 'R')) { reverse = true; i++; }
        char delims[8] = "";
        size_t nd = 0;
        while (i < speclen && spec[i] && strchr(".-+,/_=", spec[i]) && nd + 1 < sizeof delims) delims[nd++] = spec[i++];
        delims[nd] = '\0';
        if (i >= speclen || spec[i] != '}') return false;
        char val[SPF_DOMAIN_MAX * 2], part[SPF_DOMAIN_MAX * 2];
        size_t pn = 0;
        part[0] = '\0';
        if (!macro_value(s, letter, domain, explain, val, sizeof val)) return false;
        if (!transform(val, nd ? delims : ".", keep, reverse, part, sizeof part, &pn)) return false;
        if (isupper((unsigned char)letter) ? !url_escape(part, pn, out, outsz, &o) : !append(out, outsz, &o, part, pn))
            return false;
    }
    if (explain) return true;
    /* §7.3: longer than 253 octets → leftmost labels dropped. */
    size_t len = strlen(out);
    while (len > 253) {
        char *dot = strchr(out, '.');
        if (!dot) return false;
        memmove(out, dot + 1, strlen(dot + 1) + 1);
        len = strlen(out);
    }
    return true;
}

/* §7.1: a macro-string's syntax, without expanding it (records are checked whole before anything
 * is evaluated, §4.6).  *ends_in_macro: its last token is a macro-expand. */
static bool macro_string_ok(const char *p, size_t len, bool *ends_in_macro)
{
    *ends_in_macro = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        *ends_in_macro = false;
        if (c != '%') {
            if (c < '!' || c > '~') return false;
            continue;
        }
        *ends_in_macro = true;
        if (++i >= len) return false;
        if (p[i] == '%' || p[i] == '_' || p[i] == '-') continue;
        if (p[i] != '{' || ++i >= len || !strchr("slodipvhSLODIPVH", p[i]) || !p[i]) return false;
        i++;
        size_t digits = 0;
        while (i < len && isdigit((unsigned char)p[i])) {
            if (++digits > 3) return false;
            i++;
        }
        if (i < len && (p[i] == 'r' || p[i] == 'R')) i++;
        while (i < len && p[i] && strchr(".-+,/_=", p[i])) i++;
        if (i >= len || p[i] != '}') return false;
    }
    return true;
}

/* §7.1: domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) /
 * macro-expand; toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" )
 * alphanum ). */
static bool domain_spec_ok(const char *p, size_t len)
{
    bool macro_end;
    if (len == 0 || !macro_string_ok(p, len, &macro_end)) return false;
    if (macro_end) return true;
    if (p[len - 1] == '.') len--;
    size_t dot = len;
    while (dot > 0 && p[dot - 1] != '.') dot--;
    if (dot == 0 || dot == len) return false; /* no "." before it, or an empty top label */
    const char *top = p + dot;
    size_t tl = len - dot;
    bool alpha = false, dash = false;
    for (size_t i = 0; i < tl; i++) {
        if (top[i] == '-') dash = true;
        else if (isalpha((unsigned char)top[i])) alpha = true;
        else if (!isdigit((unsigned char)top[i])) return false;
    }
    if (dash) return top[0] != '-' && top[tl - 1] != '-';
    return alpha;
}

/* A name we may look up: labels of 1..63, a top label that is not all digits. */
static bool valid_domain(const char *d)
{
    size_t len = strlen(d);
    if (len > 0 && d[len - 1] == '.') len--;
    if (len == 0 || len > 253) return false;
    size_t label = 0;
    bool alpha = false;
    for (size_t i = 0; i < len; i++) {
        if (d[i] == '.') {
            if (label == 0) return false;
            label = 0;
            alpha = false;
            continue;
        }
        if (++label > 63) return false;
        if (!isdigit((unsigned char)d[i])) alpha = true;
    }
    return label > 0 && alpha && memchr(d, '.', len) != NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Addresses and CIDR. */

static bool prefix_match(const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)bytes) != 0) return false;
    if (rest == 0) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

/* "/24", "//64", "/24//64" or "" after a domain-spec; -1 on a syntax error. */
static int parse_dual_cidr(const char *p, size_t len, int *v4, int *v6)
{
    *v4 = 32;
    *v6 = 128;
    size_t i = 0;
    if (i < len && p[i] == '/' && !(i + 1 < len && p[i + 1] == '/')) {
        i++;
        int n = 0, digits = 0;
        while (i < len && isdigit((unsigned char)p[i]) && digits < 3) { n = n * 10 + (p[i++] - '0'); digits++; }
        if (!digits || n > 32 || (digits > 1 && p[i - digits] == '0')) return -1;
        *v4 = n;
    }
    if (i + 1 < len && p[i] == '/' && p[i + 1] == '/') {
        i += 2;
        int n = 0, digits = 0;
        while (i < len && isdigit((unsigned char)p[i]) && digits < 3) { n = n * 10 + (p[i++] - '0'); digits++; }
        if (!digits || n > 128 || (digits > 1 && p[i - digits] == '0')) return -1;
        *v6 = n;
    }
    return i == len ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */

static enum mailauth_verdict check_host(struct spf *s, const char *domain);

static enum mres count_lookup(struct spf *s)
{
    if (++s->lookups > SPF_LOOKUPS_MAX) {
        say(s, "%s", "more than 10 DNS lookups");
        return ERR_PERM;
    }
    return NOMATCH;
}

/* An answer that may be void: NXDOMAIN or empty counts, the third is a permerror. */
static enum mres answer_status(struct spf *s, enum mailauth_dns_status st)
{
    if (st == MAILAUTH_DNS_TEMP) {
        say(s, "%s", "DNS timeout or failure");
        return ERR_TEMP;
    }
    if (st != MAILAUTH_DNS_OK && ++s->voids > SPF_VOID_LOOKUPS_MAX) {
        say(s, "%s", "more than 2 void lookups");
        return ERR_PERM;
    }
    return NOMATCH;
}

/* Does `name` have an address of the client's family within the prefix?  count_void: the lookup
 * is the mechanism's own (a, exists), not one of mx's or ptr's per-name lookups. */
static enum mres match_addr(struct spf *s, const char *name, int v4, int v6, bool count_void)
{
    struct mailauth_dns_answer a;
    mailauth_dns_query(s->dns, name, s->family == AF_INET ? T_A : T_AAAA, s->deadline_ms, &a);
    enum mres r = NOMATCH;
    if (a.status == MAILAUTH_DNS_TEMP) r = answer_status(s, a.status);
    else if (count_void) r = answer_status(s, a.status);
    if (r != NOMATCH) goto out;
    size_t want = s->family == AF_INET ? 4 : 16;
    for (size_t i = 0; i < a.count; i++)
        if (a.len[i] == want && prefix_match(a.data[i], s->ip, s->family == AF_INET ? v4 : v6)) {
            r = MATCH;
            break;
        }
out:
    mailauth_dns_answer_free(&a);
    return r;
}

static enum mres mech_mx(struct spf *s, const char *target, int v4, int v6)
{
    struct mailauth_dns_answer a;
    mailauth_dns_query(s->dns, target, T_MX, s->deadline_ms, &a);
    enum mres r = answer_status(s, a.status);
    if (r != NOMATCH) goto out;
    if (a.count > SPF_MX_NAMES_MAX) {
        say(s, "%s", "more than 10 MX names");
        r = ERR_PERM;
        goto out;
    }
    for (size_t i = 0; i < a.count && r == NOMATCH; i++) {
        char name[SPF_DOMAIN_MAX + 2];
        size_t off = 2;
        if (a.len[i] < 3 || !mailauth_dns_name(a.data[i], a.len[i], &off, name, sizeof name)) continue;
        if (!name[0]) continue; /* RFC 7505's null MX: "." */
        r = match_addr(s, name, v4, v6, false);
    }
out:
    mailauth_dns_answer_free(&a);
    return r;
}

static void reverse_name(const struct spf *s, char *out, size_t outsz)
{
    if (s->family == AF_INET) {
        snprintf(out, outsz, "%u.%u.%u.%u.in-addr.arpa", s->ip[3], s->ip[2], s->ip[1], s->ip[0]);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 15; i >= 0; i--) {
        out[o++] = hex[s->ip[i] & 15];
        out[o++] = '.';
        out[o++] = hex[s->ip[i] >> 4];
        out[o++] = '.';
    }
    snprintf(out + o, outsz - o, "ip6.arpa");
}

static bool subdomain_of(const char *name, const char *target)
{
    size_t n = strlen(name), t = strlen(target);
    if (n < t) return false;
    if (strcasecmp(name + n - t, target) != 0) return false;
    return n == t || name[n - t - 1] == '.';
}

/* §5.5: validated names of the client (forward lookup gives its address back) that end in target. */
static enum mres mech_ptr(struct spf *s, const char *target)
{
    char rev[80];
    reverse_name(s, rev, sizeof rev);
    struct mailauth_dns_answer a;
    mailauth_dns_query(s->dns, rev, T_PTR, s->deadline_ms, &a);
    enum mres r = NOMATCH;
    if (a.status == MAILAUTH_DNS_TEMP) goto out; /* §5.5: a failed PTR lookup is no match */
    for (size_t i = 0; i < a.count && i < SPF_PTR_NAMES_MAX && r == NOMATCH; i++) {
        char name[SPF_DOMAIN_MAX + 2];
        size_t off = 0;
        if (!mailauth_dns_name(a.data[i], a.len[i], &off, name, sizeof name)) continue;
        if (!subdomain_of(name, target)) continue;
        enum mres m = match_addr(s, name, s->family == AF_INET ? 32 : 0, 128, false);
        if (m == MATCH) r = MATCH;
    }
out:
    mailauth_dns_answer_free(&a);
    return r;
}

/* One term of a record, cut into its parts. */
struct term {
    char qualifier;        /* + - ~ ? (0 for modifiers) */
    const char *name;      /* mechanism or modifier name */
    size_t name_len;
    const char *arg;       /* after ':' or '=' (or the cidr for "a/24"), may be empty */
    size_t arg_len;
    bool modifier;
    bool colon;            /* "name:arg" (an empty domain-spec after it is a syntax error) */
};

static bool name_is(const struct term *t, const char *n)
{
    return t->name_len == strlen(n) && strncasecmp(t->name, n, t->name_len) == 0;
}

static bool parse_term(const char *p, size_t len, struct term *t)
{
    memset(t, 0, sizeof *t);
    size_t i = 0;
    t->qualifier = '+';
    if (len && strchr("+-~?", p[0])) t->qualifier = p[i++];
    t->name = p + i;
    while (i < len && (isalnum((unsigned char)p[i]) || p[i] == '-' || p[i] == '_' || p[i] == '.')) i++;
    t->name_len = (size_t)(p + i - t->name);
    if (t->name_len == 0 || !isalpha((unsigned char)t->name[0])) return false;
    if (i < len && p[i] == '=') {
        if (t->name != p) return false; /* a qualifier on a modifier */
        t->modifier = true;
        t->qualifier = 0;
        i++;
    } else if (i < len && p[i] == ':') {
        t->colon = true;
        i++;
    } else if (i < len && p[i] != '/') {
        return false;
    }
    t->arg = p + i;
    t->arg_len = len - i;
    return true;
}

/* Splits "domain-spec/cidr": the cidr starts at the last '/' that is followed only by digits and
 * slashes. */
static size_t spec_len(const char *arg, size_t len)
{
    size_t i = len;
    while (i > 0 && (isdigit((unsigned char)arg[i - 1]) || arg[i - 1] == '/')) i--;
    while (i < len && arg[i] != '/') i++;
    return i;
}

/* "ip4:192.0.2.0/24", "ip6:2001:db8::/32" → the network and its prefix length.  false: a syntax
 * error. */
static bool parse_ip(const struct term *t, bool six, uint8_t net[16], int *bits)
{
    char addr[64];
    size_t alen = t->arg_len;
    const char *slash = memchr(t->arg, '/', t->arg_len);
    *bits = six ? 128 : 32;
    if (!t->colon) return false;
    if (slash) {
        alen = (size_t)(slash - t->arg);
        size_t dl = t->arg_len - alen - 1;
        if (dl == 0 || dl > 3) return false;
        *bits = 0;
        for (size_t i = 0; i < dl; i++) {
            if (!isdigit((unsigned char)slash[1 + i])) return false;
            *bits = *bits * 10 + (slash[1 + i] - '0');
        }
        if (dl > 1 && slash[1] == '0') return false;
        if (*bits > (six ? 128 : 32)) return false;
    }
    if (alen == 0 || alen >= sizeof addr) return false;
    memcpy(addr, t->arg, alen);
    addr[alen] = '\0';
    return inet_pton(six ? AF_INET6 : AF_INET, addr, net) == 1;
}

/* §4.6, §5, §6, §7.1: one term's syntax, checked for the whole record before any is evaluated. */
static bool term_ok(const struct term *t)
{
    int v4, v6;
    uint8_t net[16];
    bool macro_end;
    if (t->modifier) {
        if (name_is(t, "redirect") || name_is(t, "exp")) return domain_spec_ok(t->arg, t->arg_len);
        return macro_string_ok(t->arg, t->arg_len, &macro_end); /* §6: unknown ones are ignored */
    }
    if (name_is(t, "all")) return t->arg_len == 0 && !t->colon;
    if (name_is(t, "ip4") || name_is(t, "ip6")) return parse_ip(t, name_is(t, "ip6"), net, &v4);
    if (name_is(t, "include") || name_is(t, "exists")) return t->colon && domain_spec_ok(t->arg, t->arg_len);
    if (name_is(t, "ptr")) return t->colon ? domain_spec_ok(t->arg, t->arg_len) : t->arg_len == 0;
    if (name_is(t, "a") || name_is(t, "mx")) {
        size_t sl = t->colon ? spec_len(t->arg, t->arg_len) : 0;
        if (t->colon && !domain_spec_ok(t->arg, sl)) return false;
        return parse_dual_cidr(t->arg + sl, t->arg_len - sl, &v4, &v6) == 0;
    }
    return false; /* unknown mechanism */
}

/* A mechanism's domain-spec expanded, or `domain` without one.  false: it does not expand. */
static bool target_of(struct spf *s, const char *spec, size_t len, const char *domain, char *out, size_t outsz)
{
    if (len == 0) {
        snprintf(out, outsz, "%s", domain);
        return true;
    }
    return expand(s, spec, len, domain, false, out, outsz);
}

static enum mres run_mechanism(struct spf *s, const struct term *t, const char *domain)
{
    char target[SPF_DOMAIN_MAX * 2];
    int v4 = 32, v6 = 128;
    if (name_is(t, "all")) return MATCH;
    if (name_is(t, "ip4") || name_is(t, "ip6")) {
        bool six = name_is(t, "ip6");
        uint8_t net[16];
        int bits;
        if (!parse_ip(t, six, net, &bits)) return ERR_PERM;
        if ((s->family == AF_INET6) != six) return NOMATCH;
        return prefix_match(net, s->ip, bits) ? MATCH : NOMATCH;
    }
    /* Every other mechanism is a DNS one (§4.6.4).  A name that its macros make invalid (a HELO
     * that is no domain in %{h}) matches nothing, like a name that does not exist. */
    if (count_lookup(s) != NOMATCH) return ERR_PERM;
    bool is_a = name_is(t, "a"), is_mx = name_is(t, "mx");
    if (is_a || is_mx) {
        size_t sl = t->colon ? spec_len(t->arg, t->arg_len) : 0;
        if (parse_dual_cidr(t->arg + sl, t->arg_len - sl, &v4, &v6) < 0) return ERR_PERM;
        if (!target_of(s, t->arg, sl, domain, target, sizeof target)) return ERR_PERM;
        if (!valid_domain(target)) return NOMATCH;
        return is_a ? match_addr(s, target, v4, v6, true) : mech_mx(s, target, v4, v6);
    }
    if (name_is(t, "ptr")) {
        if (!target_of(s, t->arg, t->arg_len, domain, target, sizeof target)) return ERR_PERM;
        return valid_domain(target) ? mech_ptr(s, target) : NOMATCH;
    }
    if (name_is(t, "include") || name_is(t, "exists")) {
        if (!expand(s, t->arg, t->arg_len, domain, false, target, sizeof target)) return ERR_PERM;
        if (name_is(t, "exists")) {
            if (!valid_domain(target)) return NOMATCH;
            struct mailauth_dns_answer a;
            mailauth_dns_query(s->dns, target, T_A, s->deadline_ms, &a);
            enum mres r = answer_status(s, a.status);
            if (r == NOMATCH && a.count > 0) r = MATCH;
            mailauth_dns_answer_free(&a);
            return r;
        }
        s->in_include++;
        enum mailauth_verdict v = check_host(s, target);
        s->in_include--;
        switch (v) {
        case MAILAUTH_PASS: return MATCH;
        case MAILAUTH_FAIL:
        case MAILAUTH_SOFTFAIL:
        case MAILAUTH_NEUTRAL: return NOMATCH;
        case MAILAUTH_TEMPERROR: return ERR_TEMP;
        default:
            if (v == MAILAUTH_NONE) say(s, "include:%s has no SPF record", target);
            return ERR_PERM;
        }
    }
    return ERR_PERM; /* unknown mechanism */
}

static enum mailauth_verdict qualified(char q)
{
    switch (q) {
    case '-': return MAILAUTH_FAIL;
    case '~': return MAILAUTH_SOFTFAIL;
    case '?': return MAILAUTH_NEUTRAL;
    default: return MAILAUTH_PASS;
    }
}

/* The text of TXT rdata rd (its strings concatenated): its length, and its first outsz - 1 bytes
 * in out (NUL-terminated); -1 when malformed or SPF_RECORD_MAX bytes or more (such a record is
 * skipped, as one mailauth_dns_txt cannot read).  Finds the SPF record among a name's TXT records
 * without copying the others whole. */
static ssize_t txt_head(const uint8_t *rd, size_t len, char *out, size_t outsz)
{
    size_t total = 0, o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = rd[i++];
        if (n > len - i) return -1;
        for (size_t j = 0; j < n && o + 1 < outsz; j++) out[o++] = (char)rd[i + j];
        total += n;
        i += n;
    }
    out[o] = '\0';
    return total < SPF_RECORD_MAX ? (ssize_t)total : -1;
}

/* The domain's single "v=spf1" record into rec (recsz > SPF_RECORD_MAX + 2), "v=spf1" and all.  A
 * verdict when there is none or an error. */
static bool fetch_record(struct spf *s, const char *domain, char *rec, size_t recsz, enum mailauth_verdict *v)
{
    struct mailauth_dns_answer a;
    mailauth_dns_query(s->dns, domain, T_TXT, s->deadline_ms, &a);
    bool ok = false;
    int found = 0;
    if (a.status == MAILAUTH_DNS_TEMP) {
        say(s, "%s", "DNS timeout or failure");
        *v = MAILAUTH_TEMPERROR;
        goto out;
    }
    for (size_t i = 0; i < a.count; i++) {
        char head[8];
        ssize_t total = txt_head(a.data[i], a.len[i], head, sizeof head);
        if (total < 0 || strncasecmp(head, "v=spf1", 6) != 0 || (head[6] && head[6] != ' ')) continue;
        if (found++ > 0 || !mailauth_dns_txt(a.data[i], a.len[i], rec, recsz)) continue;
        /* A NUL octet in the record (which would end our string early): a character no term may
         * have, so the record is a syntax error (§7.1 "a-null"). */
        size_t l = strlen(rec);
        if (l < (size_t)total) memcpy(rec + l, " \x01", 3);
    }
    if (found == 0) {
        say(s, "%s has no SPF record", domain);
        *v = MAILAUTH_NONE;
    } else if (found > 1) {
        say(s, "%s has several SPF records", domain);
        *v = MAILAUTH_PERMERROR;
    } else {
        ok = true;
    }
out:
    mailauth_dns_answer_free(&a);
    return ok;
}

/* §6.2: the explanation of a fail, from the TXT record that exp= names, its macros expanded.
 * When the name does not expand, has no single TXT record, or its text does not expand, there is
 * none (not an error).  Asked only when the caller wants it (expsz): inlet does not post it. */
static void explanation(struct spf *s, const struct term *exp, const char *domain)
{
    if (s->expsz == 0) return;
    char target[SPF_DOMAIN_MAX * 2];
    if (!expand(s, exp->arg, exp->arg_len, domain, false, target, sizeof target) || !valid_domain(target)) return;
    struct mailauth_dns_answer a;
    mailauth_dns_query(s->dns, target, T_TXT, s->deadline_ms, &a);
    char *txt = malloc(SPF_RECORD_MAX);
    size_t n;
    if (txt && a.status == MAILAUTH_DNS_OK && a.count == 1 && mailauth_dns_txt(a.data[0], a.len[0], txt, SPF_RECORD_MAX)
        && (n = strlen(txt)) > 0 && !expand(s, txt, n, domain, true, s->exp, s->expsz))
        s->exp[0] = '\0';
    free(txt);
    mailauth_dns_answer_free(&a);
}

static enum mailauth_verdict check_host(struct spf *s, const char *domain)
{
    if (!valid_domain(domain)) return MAILAUTH_NONE;
    if (++s->depth > SPF_DEPTH_MAX) { /* include loops end at the lookup limit; this is a guard */
        say(s, "%s", "includes nested too deep");
        return MAILAUTH_PERMERROR;
    }
    enum mailauth_verdict v = MAILAUTH_PERMERROR;
    const size_t recsz = SPF_RECORD_MAX + 8; /* room for " \x01" after the longest record */
    char *rec = malloc(recsz);
    if (!rec) return MAILAUTH_TEMPERROR;
    if (!fetch_record(s, domain, rec, recsz, &v)) goto out;

    /* §4.6: any syntax error anywhere is a permerror before anything is evaluated. */
    struct term terms[SPF_TERMS_MAX];
    size_t nterms = 0;
    const struct term *redirect = NULL, *exp = NULL;
    for (const char *p = rec + 6; *p;) { /* after "v=spf1" */
        while (*p == ' ') p++;
        if (!*p) break;
        size_t len = strcspn(p, " ");
        if (nterms == SPF_TERMS_MAX || !parse_term(p, len, &terms[nterms]) || !term_ok(&terms[nterms])) {
            say(s, "syntax error in the SPF record of %s", domain);
            v = MAILAUTH_PERMERROR;
            goto out;
        }
        struct term *t = &terms[nterms++];
        if (t->modifier && name_is(t, "redirect")) {
            if (redirect) { say(s, "two redirect= in %s", domain); v = MAILAUTH_PERMERROR; goto out; }
            redirect = t;
        } else if (t->modifier && name_is(t, "exp")) {
            if (exp) { say(s, "two exp= in %s", domain); v = MAILAUTH_PERMERROR; goto out; }
            exp = t;
        }
        p += len;
    }
    for (size_t i = 0; i < nterms; i++) {
        const struct term *t = &terms[i];
        if (t->modifier) continue;
        enum mres r = run_mechanism(s, t, domain);
        if (r == ERR_TEMP) { v = MAILAUTH_TEMPERROR; goto out; }
        if (r == ERR_PERM) {
            if (!s->explain[0]) say(s, "bad mechanism in the SPF record of %s", domain);
            v = MAILAUTH_PERMERROR;
            goto out;
        }
        if (r == MATCH) { /* "matched %.80s" */
            size_t tl = (size_t)(t->arg + t->arg_len - t->name);
            struct mailauth_buf b;
            mailauth_buf_init(&b, s->explain, s->explainsz);
            mailauth_buf_str(&b, "matched ");
            mailauth_buf_add(&b, t->name, tl < 80 ? tl : 80);
            v = qualified(t->qualifier);
            if (v == MAILAUTH_FAIL && exp && !s->in_include) explanation(s, exp, domain);
            goto out;
        }
    }
    if (redirect) {
        char target[SPF_DOMAIN_MAX * 2];
        if (!expand(s, redirect->arg, redirect->arg_len, domain, false, target, sizeof target) ||
            !valid_domain(target)) {
            v = MAILAUTH_PERMERROR;
            goto out;
        }
        if (count_lookup(s) != NOMATCH) { v = MAILAUTH_PERMERROR; goto out; }
        v = check_host(s, target);
        if (v == MAILAUTH_NONE) v = MAILAUTH_PERMERROR;
        goto out;
    }
    say(s, "%s", "no mechanism matched");
    v = MAILAUTH_NEUTRAL;
out:
    s->depth--;
    free(rec);
    return v;
}

static enum mailauth_verdict run(struct mailauth_dns *d, const struct mailauth_spf_input *in, const char *local,
                                const char *domain, int64_t deadline_ms, char *reason, size_t reasonsz, char *exp,
                                size_t expsz)
{
    struct spf s = {.dns = d, .in = in, .local = local, .sender_domain = domain, .deadline_ms = deadline_ms,
                    .explain = reason, .explainsz = reasonsz, .exp = exp, .expsz = exp ? expsz : 0};
    reason[0] = '\0';
    if (exp && expsz) exp[0] = '\0';
    const char *ip = in->ip;
    if (strncasecmp(ip, "::ffff:", 7) == 0 && strchr(ip + 7, '.')) ip += 7; /* §5: IPv4-mapped */
    if (inet_pton(AF_INET, ip, s.ip) == 1) s.family = AF_INET;
    else if (inet_pton(AF_INET6, ip, s.ip) == 1) s.family = AF_INET6;
    else {
        say(&s, "%s", "client address not understood");
        return MAILAUTH_NONE;
    }
    if (domain[0] == '[') { /* §4.3: an address literal ("foo@[192.0.2.1]", "EHLO [192.0.2.1]") */
        say(&s, "%s", "an address literal, no domain to check");
        return MAILAUTH_NONE;
    }
    if (!valid_domain(domain)) {
        say(&s, "%s", "no valid domain to check");
        return MAILAUTH_NONE;
    }
    return check_host(&s, domain);
}

enum mailauth_verdict mailauth_spf_mailfrom(struct mailauth_dns *d, const struct mailauth_spf_input *in,
                                            int64_t deadline_ms, char *reason, size_t reasonsz, char *exp,
                                            size_t expsz)
{
    const char *at = strrchr(in->sender, '@');
    if (!*in->sender || !at) return mailauth_spf_helo(d, in, deadline_ms, reason, reasonsz, exp, expsz);
    char local[SMTP_LOCAL_PART_MAX + 1] = "postmaster"; /* §4.3: no local-part, "postmaster" */
    if (at > in->sender) {
        struct mailauth_buf b;
        mailauth_buf_init(&b, local, sizeof local);
        mailauth_buf_add(&b, in->sender, (size_t)(at - in->sender));
    }
    return run(d, in, local, at + 1, deadline_ms, reason, reasonsz, exp, expsz);
}

enum mailauth_verdict mailauth_spf_helo(struct mailauth_dns *d, const struct mailauth_spf_input *in,
                                        int64_t deadline_ms, char *reason, size_t reasonsz, char *exp,
                                        size_t expsz)
{
    /* %{s} is then postmaster@HELO (macro_value): the sender is not this identity's. */
    struct mailauth_spf_input h = *in;
    h.sender = "";
    return run(d, &h, "postmaster", in->helo, deadline_ms, reason, reasonsz, exp, expsz);
}
