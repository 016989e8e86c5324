/* tests/fuzz/fuzz_mailauth.c — the text that mailauth/ reads itself: the header block
 * (mailauth/header.c: its end, its fields, the From: domain DMARC judges, the authserv-id of an
 * Authentication-Results value) and DKIM (mailauth/dkim_canon.c and dkim.c: the input as a
 * tag-list and as base64, its fields and body through both canonicalizations, and the whole
 * verification of its DKIM-Signature fields against a fixed ed25519 key record).
 *
 * Checks besides "no crash, no leak": the fields tile [0, end of block) without gaps or overlaps;
 * a From: domain is non-empty, lower case, without '@', ' ' or '<'; an authserv-id has no ';',
 * blank or '('; tags lie inside the input, named by a letter, values without blanks at their ends;
 * a relaxed body has no blank runs, no blank before a line end, no empty lines at its end, and
 * canonicalizing it again changes nothing (simple likewise); l= writes exactly min(l, length)
 * bytes; a verdict is one of those DKIM gives, with a reason unless it is a pass. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzz_main.h"
#include "mailauth/internal.h"

/* Canonical text collected (up to a bound: fuzz inputs are small). */
struct collect {
    uint8_t buf[1 << 16];
    size_t len;
    bool cut;
};

static void collect_write(void *ctx, const uint8_t *p, size_t n)
{
    struct collect *c = ctx;
    if (n > sizeof c->buf - c->len) {
        c->cut = true;
        n = sizeof c->buf - c->len;
    }
    memcpy(c->buf + c->len, p, n);
    c->len += n;
}

static struct collect canon1, canon2;

static void check_body(const uint8_t *body, size_t len, bool relaxed)
{
    struct mailauth_dkim_sink s;
    canon1.len = 0;
    canon1.cut = false;
    mailauth_dkim_sink_init(&s, UINT64_MAX, collect_write, &canon1);
    uint64_t total = mailauth_dkim_canon_body(body, len, relaxed, &s);
    if (canon1.cut) return;
    if (total != canon1.len) abort();
    const uint8_t *b = canon1.buf;
    size_t n = canon1.len;
    if (n == 0 ? !relaxed : (n < 2 || b[n - 2] != '\r' || b[n - 1] != '\n')) abort();
    if (n >= 4 && memcmp(b + n - 4, "\r\n\r\n", 4) == 0) abort(); /* empty lines at the end */
    if (relaxed)
        for (size_t i = 0; i + 1 < n; i++)
            if (b[i] == '\t' || (b[i] == ' ' && (b[i + 1] == ' ' || (b[i + 1] == '\r' && i + 2 < n && b[i + 2] == '\n')))) abort();
    /* Canonical text is its own canonical form. */
    canon2.len = 0;
    canon2.cut = false;
    mailauth_dkim_sink_init(&s, UINT64_MAX, collect_write, &canon2);
    mailauth_dkim_canon_body(canon1.buf, canon1.len, relaxed, &s);
    if (canon2.len != canon1.len || memcmp(canon1.buf, canon2.buf, canon1.len) != 0) abort();
    /* l=: the first `limit` bytes exactly. */
    uint64_t limit = n / 2;
    canon2.len = 0;
    mailauth_dkim_sink_init(&s, limit, collect_write, &canon2);
    if (mailauth_dkim_canon_body(body, len, relaxed, &s) != total || canon2.len != limit ||
        memcmp(canon1.buf, canon2.buf, (size_t)limit) != 0)
        abort();
}

static void check_tags(const uint8_t *v, size_t len)
{
    struct mailauth_dkim_tag tags[MAILAUTH_DKIM_TAGS_MAX];
    int n = mailauth_dkim_tags(v, len, tags, MAILAUTH_DKIM_TAGS_MAX);
    if (n < -1 || n > MAILAUTH_DKIM_TAGS_MAX) abort();
    for (int i = 0; i < n; i++) {
        const struct mailauth_dkim_tag *t = &tags[i];
        if (t->name_len == 0 || t->name + t->name_len > len || t->value + t->value_len > len) abort();
        if (!isalpha(v[t->name])) abort();
        if (t->value_len && (isspace(v[t->value]) || isspace(v[t->value + t->value_len - 1]))) abort();
        if (memchr(v + t->value, ';', t->value_len)) abort();
    }
    uint8_t out[1024];
    ssize_t b = mailauth_dkim_base64(v, len, out, sizeof out);
    if (b < -1 || b > (ssize_t)sizeof out) abort();
}

/* Selector "sel": the RSA key that signed the seeds 10-12 (so that the fuzzer starts from
 * signatures that pass); "none": no key; "temp": a failed lookup; any other: an ed25519 key. */
static enum mailauth_dkim_key_status fuzz_lookup(void *ctx, const char *name, char *txt, size_t txtsz)
{
    (void)ctx;
    if (strncmp(name, "none.", 5) == 0) return MAILAUTH_DKIM_KEY_NONE;
    if (strncmp(name, "temp.", 5) == 0) return MAILAUTH_DKIM_KEY_TEMP;
    if (strncmp(name, "sel.", 4) == 0) {
        snprintf(txt, txtsz, "v=DKIM1; k=rsa; p=%s",
                 "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDS3tTiiJFxNv88t65V92Ej+VsJ0ENclqLGnMCwvlLP"
                 "3+y629yUZq7NrgjV1Ci/3TwjFYkrIr6Tn8dKy4mfv5aqKG/AuEnFNEKuMowVcDOYeCA/SZ+QxACgZUyH7ymEdMROAAisiqZ2giAZxjODdxOZTS7bxEusGxgtJzsX9SK+dQIDAQAB");
        return MAILAUTH_DKIM_KEY_FOUND;
    }
    snprintf(txt, txtsz, "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    return MAILAUTH_DKIM_KEY_FOUND;
}

static struct mailauth_dkim *dkim;

static void check_dkim(const uint8_t *data, size_t size)
{
    if (!dkim) {
        char *err = NULL;
        dkim = mailauth_dkim_new(&err);
        if (!dkim) abort();
    }
    struct mailauth_dkim_sig sigs[MAILAUTH_DKIM_SIGS_MAX];
    size_t n = mailauth_dkim_verify(dkim, fuzz_lookup, NULL, data, size, 1800000000, INT64_MAX, sigs,
                                    MAILAUTH_DKIM_SIGS_MAX);
    if (n > MAILAUTH_DKIM_SIGS_MAX) abort();
    for (size_t i = 0; i < n; i++) {
        enum mailauth_verdict v = sigs[i].verdict;
        if (v == MAILAUTH_NONE || v == MAILAUTH_SOFTFAIL || v == MAILAUTH_NEUTRAL) abort();
        if ((v == MAILAUTH_PASS) != !sigs[i].reason[0]) abort(); /* a reason for all but a pass */
        if (!memchr(sigs[i].domain, '\0', sizeof sigs[i].domain) || !memchr(sigs[i].b, '\0', sizeof sigs[i].b)) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t hend = mailauth_header_end(data, size);
    if (hend > size) abort();
    size_t pos = 0, start, end, expect = 0, fields = 0;
    while (mailauth_header_next(data, hend, &pos, &start, &end)) {
        if (start != expect || end <= start || end > hend) abort();
        expect = end;
        if (++fields > size + 1) abort();
        size_t v = mailauth_header_is(data, start, end, "Authentication-Results");
        if (v) {
            if (v <= start || v > end) abort();
            char id[SPF_DOMAIN_MAX + 1];
            if (mailauth_authres_id((const char *)data + v, end - v, id, sizeof id)) {
                if (!id[0] || strpbrk(id, "; \t(\r\n")) abort();
            }
        }
    }
    if (hend > 0 && expect != hend) abort();

    /* DKIM: every field through both header canonicalizations, the body through both body ones. */
    pos = 0;
    while (mailauth_header_next(data, hend, &pos, &start, &end)) {
        for (int relaxed = 0; relaxed < 2; relaxed++) {
            struct mailauth_dkim_sink s;
            canon1.len = 0;
            canon1.cut = false;
            mailauth_dkim_sink_init(&s, UINT64_MAX, collect_write, &canon1);
            mailauth_dkim_canon_header(data + start, end - start, relaxed, true, &s);
            if (mailauth_dkim_sink_end(&s) != canon1.len && !canon1.cut) abort();
            if (canon1.len < 2 || canon1.buf[canon1.len - 1] != '\n' || canon1.buf[canon1.len - 2] != '\r') {
                if (!canon1.cut) abort();
            }
        }
        size_t v = mailauth_header_is(data, start, end, "DKIM-Signature");
        if (v) check_tags(data + v, end - v);
    }
    check_tags(data, size);
    check_body(data + hend, size - hend, false);
    check_body(data + hend, size - hend, true);
    check_dkim(data, size);

    char dom[SPF_DOMAIN_MAX + 1];
    int r = mailauth_from_domain(data, size, dom, sizeof dom);
    if (r < -1 || r > 1) abort();
    if (r == 1) {
        if (!dom[0] || strpbrk(dom, "@ <>\t")) abort();
        for (const char *c = dom; *c; c++)
            if (isupper((unsigned char)*c)) abort();
    }
    return 0;
}
