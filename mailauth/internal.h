/* mailauth/internal.h — what the files of mailauth/ share: the DNS client (dns.c), the SPF
 * evaluator (spf.c), DKIM (dkim.c, dkim_canon.c), DMARC (dmarc.c), the organizational domain
 * (psl.c) and the header block helpers (header.c).  Private to the module. */
#ifndef INLET_MAILAUTH_INTERNAL_H
#define INLET_MAILAUTH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "mailauth/mailauth.h"
#include "util/limits.h"

/* ---------------------------------------------------------------------------------------------
 * Text into fixed buffers, for what every message's checks write (names to look up, reasons, the
 * summary): snprintf's "%s" without its format parsing, which cost more than the copies. */
struct mailauth_buf {
    char *p;
    size_t size, len; /* size > 0; p[len] is always the NUL */
    bool cut;         /* something did not fit */
};
static inline void mailauth_buf_init(struct mailauth_buf *b, char *p, size_t size)
{
    *b = (struct mailauth_buf){.p = p, .size = size};
    p[0] = '\0';
}
static inline void mailauth_buf_add(struct mailauth_buf *b, const char *s, size_t n)
{
    if (n > b->size - 1 - b->len) {
        n = b->size - 1 - b->len;
        b->cut = true;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}
static inline void mailauth_buf_str(struct mailauth_buf *b, const char *s)
{
    mailauth_buf_add(b, s, strlen(s));
}
/* snprintf(dst, dstsz, "%s", src). */
static inline void mailauth_copy(char *dst, size_t dstsz, const char *src)
{
    struct mailauth_buf b;
    mailauth_buf_init(&b, dst, dstsz);
    mailauth_buf_str(&b, src);
}

/* ---------------------------------------------------------------------------------------------
 * DNS (dns.c): libunbound's asynchronous resolver with its TTL cache, and a deadline per query. */
struct mailauth_dns;
struct mailauth_psl;

enum mailauth_dns_status {
    MAILAUTH_DNS_OK,       /* answers present */
    MAILAUTH_DNS_NODATA,   /* the name exists, no record of the type (a "void lookup") */
    MAILAUTH_DNS_NXDOMAIN, /* no such name (a "void lookup") */
    MAILAUTH_DNS_TEMP,     /* SERVFAIL, REFUSED, timeout, deadline passed, resolver error */
};

/* One answer: rdata of each record, as libunbound gives it (uncompressed wire format). */
struct mailauth_dns_answer {
    enum mailauth_dns_status status;
    size_t count;
    const uint8_t **data;
    const size_t *len;
    void *owner; /* one allocation that len and data point into */
};

/* `server`: "" for /etc/resolv.conf, or "IP" / "IP:PORT" / "[IPv6]:PORT".  NULL with *err. */
struct mailauth_dns *mailauth_dns_new(const char *server, char **err);
void mailauth_dns_free(struct mailauth_dns *d);
/* Resolves `name` (type: 1 A, 12 PTR, 15 MX, 16 TXT, 28 AAAA) and waits at most until
 * `deadline_ms` (mailauth_now_ms() clock); past it the status is TEMP.  Any thread. */
void mailauth_dns_query(struct mailauth_dns *d, const char *name, int type, int64_t deadline_ms,
                        struct mailauth_dns_answer *out);
void mailauth_dns_answer_free(struct mailauth_dns_answer *a);
/* Cache-only mode for the calling thread (on: from now; off: back to normal), which also clears
 * the miss flag: while on, mailauth_dns_query answers from the front cache only, and a miss sends
 * no query, gives TEMP and sets the flag (mailauth_dns_cache_missed).  For mailauth_check_cached. */
void mailauth_dns_cache_only(bool on);
bool mailauth_dns_cache_missed(void);
/* An answer for (name, type) is in the front cache and fresh: asking now costs no DNS. */
bool mailauth_dns_cached(struct mailauth_dns *d, const char *name, int type);
/* TXT rdata → its strings concatenated into out (NUL-terminated, at most outsz - 1 bytes).
 * false when it does not fit or is malformed. */
bool mailauth_dns_txt(const uint8_t *rd, size_t len, char *out, size_t outsz);
/* A domain name in wire format at rd[*off] → dotted text without the final dot.  false when
 * malformed. */
bool mailauth_dns_name(const uint8_t *rd, size_t len, size_t *off, char *out, size_t outsz);
/* Queries made, answered from cache or server, timed out: for the log. */
int64_t mailauth_now_ms(void);

/* ---------------------------------------------------------------------------------------------
 * SPF (spf.c, RFC 7208). */
struct mailauth_spf_input {
    const char *ip;     /* connecting client, printable */
    const char *helo;
    const char *sender; /* MAIL FROM without <>, "" for the null sender */
    const char *receiver; /* our host name, for %{r} */
    bool *sender_macros;  /* NULL, or set when a record expanded %{s} or %{l}: the verdict then
                             depends on the sender's local-part, not only on the domain */
};
/* The MAIL FROM identity (RFC 7208 §2.4, §4.3): the domain of `in->sender` with its local-part
 * ("postmaster" when it has none), or postmaster@HELO for the null sender.  *reason: a short reason
 * for the log and the A-R comment ("matched ip4:192.0.2.0/24", "more than 10 DNS lookups").
 * exp (NULL: not wanted): on fail, the domain's explanation (exp=, §6.2), else "". */
enum mailauth_verdict mailauth_spf_mailfrom(struct mailauth_dns *d, const struct mailauth_spf_input *in,
                                            int64_t deadline_ms, char *reason, size_t reasonsz, char *exp,
                                            size_t expsz);
/* The HELO identity (§2.3): postmaster@HELO.  none without any lookup when the HELO is not a
 * domain name (an address literal, a single label). */
enum mailauth_verdict mailauth_spf_helo(struct mailauth_dns *d, const struct mailauth_spf_input *in,
                                        int64_t deadline_ms, char *reason, size_t reasonsz, char *exp,
                                        size_t expsz);

/* ---------------------------------------------------------------------------------------------
 * DKIM (dkim.c: RFC 6376 and RFC 8463 verification over OpenSSL, with a cache of decoded keys). */
struct mailauth_dkim;
struct mailauth_dkim_sig {
    enum mailauth_verdict verdict;
    char domain[SPF_DOMAIN_MAX + 1];           /* d= */
    char selector[MAILAUTH_DKIM_SELECTOR_MAX]; /* s= */
    char algorithm[24];                        /* a= */
    char b[9];                                 /* the first 8 characters of b= (RFC 6008) */
    char reason[64];
};
struct mailauth_dkim *mailauth_dkim_new(char **err);
void mailauth_dkim_free(struct mailauth_dkim *k);
/* OpenSSL verifies ed25519-sha256 (it always does since 1.1.1; kept for the startup log). */
bool mailauth_dkim_ed25519(const struct mailauth_dkim *k);
/* Verifies every signature of the message (at most `max`, MAILAUTH_DKIM_SIGS_MAX): returns how
 * many were written to out.  Keys through mailauth/dns.c. */
size_t mailauth_dkim_check(struct mailauth_dkim *k, struct mailauth_dns *dns, const uint8_t *data, size_t len,
                           int64_t deadline_ms, struct mailauth_dkim_sig *out, size_t max);
/* The same with another key source (tests): `lookup` puts the TXT record of `name`
 * ("sel._domainkey.domain") into txt and says how it went; `now` is the time x= and t= are
 * judged against. */
enum mailauth_dkim_key_status {
    MAILAUTH_DKIM_KEY_FOUND,
    MAILAUTH_DKIM_KEY_NONE,    /* NXDOMAIN or no TXT record */
    MAILAUTH_DKIM_KEY_TEMP,    /* the lookup failed or timed out */
    MAILAUTH_DKIM_KEY_CORRUPT, /* a record that is not text or does not fit */
};
typedef enum mailauth_dkim_key_status (*mailauth_dkim_lookup_fn)(void *ctx, const char *name, char *txt,
                                                                  size_t txtsz);
size_t mailauth_dkim_verify(struct mailauth_dkim *k, mailauth_dkim_lookup_fn lookup, void *ctx, const uint8_t *data,
                            size_t len, int64_t now_s, int64_t deadline_ms, struct mailauth_dkim_sig *out, size_t max);
/* Decoded keys in the cache now (tests). */
size_t mailauth_dkim_cached_keys(struct mailauth_dkim *k);

/* dkim_canon.c: the tag-list parser and the canonicalizations (RFC 6376 §3.2, §3.4). */
struct mailauth_dkim_tag {
    size_t name, name_len;   /* offsets into the parsed text */
    size_t value, value_len; /* the value without the blanks around it (inner FWS kept) */
};
/* Parses the tag-list v[0..len) into out: the number of tags, or -1 when it is not a tag-list
 * (a bad name, no '=', a byte outside VALCHAR, a tag twice, more than max tags). */
int mailauth_dkim_tags(const uint8_t *v, size_t len, struct mailauth_dkim_tag *out, size_t max);
const struct mailauth_dkim_tag *mailauth_dkim_tag_find(const uint8_t *v, const struct mailauth_dkim_tag *tags,
                                                       size_t n, const char *name);
/* Base64 with FWS anywhere: bytes written, or -1 when malformed or longer than outsz. */
ssize_t mailauth_dkim_base64(const uint8_t *in, size_t len, uint8_t *out, size_t outsz);
/* Where canonical text goes: in blocks to write(), the first `limit` bytes only (l=), all counted. */
typedef void (*mailauth_dkim_write_fn)(void *ctx, const uint8_t *p, size_t n);
struct mailauth_dkim_sink {
    mailauth_dkim_write_fn write;
    void *ctx;
    uint64_t limit, total;
    size_t used;
    uint8_t buf[4096];
};
void mailauth_dkim_sink_init(struct mailauth_dkim_sink *s, uint64_t limit, mailauth_dkim_write_fn write, void *ctx);
/* Hands on what is buffered; returns the bytes counted. */
uint64_t mailauth_dkim_sink_end(struct mailauth_dkim_sink *s);
/* A header field f[0..len) (name, ':', value, line end) canonicalized; with line_end, CRLF after. */
void mailauth_dkim_canon_header(const uint8_t *f, size_t len, bool relaxed, bool line_end,
                                struct mailauth_dkim_sink *s);
/* The body b[0..len) canonicalized into s (then flushed): its canonical length. */
uint64_t mailauth_dkim_canon_body(const uint8_t *b, size_t len, bool relaxed, struct mailauth_dkim_sink *s);

/* ---------------------------------------------------------------------------------------------
 * DMARC (dmarc.c, RFC 7489). */
struct mailauth_dmarc {
    enum mailauth_verdict verdict;
    char policy[16];     /* "none", "quarantine", "reject"; "" without a record */
    int pct;             /* pct= (RFC 7489 §6.3), 0..100; 100 without the tag */
    char applied[16];    /* the policy applied to this message after pct= sampling (§6.6.4):
                            "" until mailauth.c samples it */
    char rua[MAILAUTH_DMARC_URIS_MAX], ruf[MAILAUTH_DMARC_URIS_MAX]; /* as published, "" without */
    bool spf_aligned, dkim_aligned;
    char reason[64];
};
void mailauth_dmarc_check(struct mailauth_dns *dns, const struct mailauth_psl *psl, const char *from_domain,
                          enum mailauth_verdict spf, const char *spf_domain, const struct mailauth_dkim_sig *sigs,
                          size_t nsigs, int64_t deadline_ms, struct mailauth_dmarc *out);

/* ---------------------------------------------------------------------------------------------
 * Organizational domain (psl.c, RFC 7489 §3.2 with the Public Suffix List). */
/* NULL with *err when the file cannot be read. */
struct mailauth_psl *mailauth_psl_load(const char *path, char **err);
void mailauth_psl_free(struct mailauth_psl *p);
/* The organizational domain of `domain` (lower case, no trailing dot) into out. */
void mailauth_psl_org(const struct mailauth_psl *p, const char *domain, char *out, size_t outsz);

/* ---------------------------------------------------------------------------------------------
 * Header block (header.c): inlet's own parsing of what it needs, bounded. */
/* The end of the header block of data[0..len): the offset just past the empty line, or len. */
size_t mailauth_header_end(const uint8_t *data, size_t len);
/* The next field of the block at *pos: [*start, *end) with its line ends; false at hend. */
bool mailauth_header_next(const uint8_t *data, size_t hend, size_t *pos, size_t *start, size_t *end);
/* Field [start, end) is named `name` (case-insensitive): the offset of its value, else 0. */
size_t mailauth_header_is(const uint8_t *data, size_t start, size_t end, const char *name);
/* The domain of the single address in the From: header(s).  Returns 1 with the domain (lower
 * case) in out, 0 when there is no From:, -1 when there are several From: fields or addresses, or
 * the address has no domain. */
int mailauth_from_domain(const uint8_t *data, size_t len, char *out, size_t outsz);
/* The authserv-id of an Authentication-Results value (the first token, before ';' or space). */
bool mailauth_authres_id(const char *value, size_t len, char *out, size_t outsz);

#endif
