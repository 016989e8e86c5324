/* mailauth/dkim_canon.c — the text work of DKIM verification (RFC 6376), pure functions over
 * bounded inputs: the tag-list parser (§3.2; signatures and key records), base64, and the simple
 * and relaxed canonicalizations of header fields and of the body (§3.4) written through a sink
 * that hashes in blocks.  They never fail on input: a tag-list that does not parse is an error
 * the caller turns into a verdict.  Driven by the mailauth fuzz target.
 *
 * Line ends: a bare LF counts as CRLF (what libopendkim's FIXCRLF did, and what a message that
 * lost its CRs on the way was signed with). */
#include <string.h>

#include "mailauth/internal.h"

static bool is_wsp(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static bool is_fws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_alpha(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* ------------------------------------------------------------------------------------------ */

int mailauth_dkim_tags(const uint8_t *v, size_t len, struct mailauth_dkim_tag *out, size_t max)
{
    size_t n = 0, i = 0;
    while (i < len) {
        while (i < len && is_fws(v[i])) i++;
        if (i == len) break;
        if (v[i] == ';') { /* an empty tag-spec: tolerated, as by libopendkim */
            i++;
            continue;
        }
        if (!is_alpha(v[i])) return -1;
        size_t ns = i;
        while (i < len && (is_alpha(v[i]) || (v[i] >= '0' && v[i] <= '9') || v[i] == '_')) i++;
        size_t nl = i - ns;
        while (i < len && is_fws(v[i])) i++;
        if (i == len || v[i] != '=') return -1;
        i++;
        while (i < len && is_fws(v[i])) i++;
        /* The value runs to the next ';' (memchr: a b= or a key's p= is hundreds of bytes), every
         * byte VALCHAR (§3.2) or FWS; it ends after its last VALCHAR. */
        const uint8_t *semi = memchr(v + i, ';', len - i);
        const size_t vs = i, end = semi ? (size_t)(semi - v) : len;
        for (; i < end; i++)
            if ((v[i] < 0x21 || v[i] > 0x7e) && !is_fws(v[i])) return -1;
        size_t ve = end;
        while (ve > vs && is_fws(v[ve - 1])) ve--;
        if (i < len) i++; /* the ';' */
        for (size_t k = 0; k < n; k++) /* §3.2: a tag twice makes the list invalid */
            if (out[k].name_len == nl && memcmp(v + out[k].name, v + ns, nl) == 0) return -1;
        if (n == max) return -1;
        out[n++] = (struct mailauth_dkim_tag){.name = ns, .name_len = nl, .value = vs, .value_len = ve - vs};
    }
    return (int)n;
}

const struct mailauth_dkim_tag *mailauth_dkim_tag_find(const uint8_t *v, const struct mailauth_dkim_tag *tags,
                                                       size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (tags[i].name_len == nl && memcmp(v + tags[i].name, name, nl) == 0) return &tags[i];
    return NULL;
}

/* Each byte's base64 digit, or what else it is: a lookup, as every b=, bh= and p= of every message
 * is decoded (a chain of range tests cost twice the instructions). */
enum { XX = 0xff /* foreign */, FW = 0xfe /* FWS */, PD = 0xfd /* '=' */ };
static const uint8_t b64_table[256] = {
    XX, XX, XX, XX, XX, XX, XX, XX, XX, FW, FW, XX, XX, FW, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    FW, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62, XX, XX, XX, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, PD, XX, XX,
    XX,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, XX, XX, XX, XX, XX,
    XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
};

ssize_t mailauth_dkim_base64(const uint8_t *in, size_t len, uint8_t *out, size_t outsz)
{
    uint32_t acc = 0;
    size_t bits = 0, o = 0, pad = 0;
    for (size_t i = 0; i < len; i++) {
        const uint8_t d = b64_table[in[i]];
        if (d > 63) {
            if (d == FW) continue;
            if (d != PD) return -1; /* a foreign byte */
            pad++;
            continue;
        }
        if (pad) return -1; /* data after the padding */
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == outsz) return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* Leftover bits must be the zero fill of the last group, and padding at most two '='. */
    if (bits >= 6 || pad > 2 || (acc & ((1u << bits) - 1)) != 0) return -1;
    return (ssize_t)o;
}

/* ------------------------------------------------------------------------------------------ */

void mailauth_dkim_sink_init(struct mailauth_dkim_sink *s, uint64_t limit, mailauth_dkim_write_fn write, void *ctx)
{
    s->write = write;
    s->ctx = ctx;
    s->limit = limit;
    s->total = 0;
    s->used = 0;
}

static void sink_flush(struct mailauth_dkim_sink *s)
{
    if (s->used && s->write) s->write(s->ctx, s->buf, s->used);
    s->used = 0;
}

/* Counts every byte in total; hands on only the first `limit` (a signature's l=). */
static void sink_put(struct mailauth_dkim_sink *s, const uint8_t *p, size_t n)
{
    uint64_t room = s->total < s->limit ? s->limit - s->total : 0;
    size_t take = n < room ? n : (size_t)room;
    s->total += n;
    while (take) {
        size_t k = sizeof s->buf - s->used;
        if (k > take) k = take;
        memcpy(s->buf + s->used, p, k);
        s->used += k;
        p += k;
        take -= k;
        if (s->used == sizeof s->buf) sink_flush(s);
    }
}

uint64_t mailauth_dkim_sink_end(struct mailauth_dkim_sink *s)
{
    sink_flush(s);
    return s->total;
}

static const uint8_t CRLF[2] = {'\r', '\n'};

/* ------------------------------------------------------------------------------------------ */

void mailauth_dkim_canon_header(const uint8_t *f, size_t len, bool relaxed, bool line_end,
                                struct mailauth_dkim_sink *s)
{
    size_t end = len; /* the field without its last line end */
    if (end && f[end - 1] == '\n') end--;
    if (end && f[end - 1] == '\r') end--;
    if (!relaxed) {
        /* §3.4.1: as it is; a bare LF of a fold becomes CRLF. */
        size_t i = 0;
        while (i < end) {
            const uint8_t *nl = memchr(f + i, '\n', end - i);
            size_t stop = nl ? (size_t)(nl - f) : end;
            size_t text = stop > i && f[stop - 1] == '\r' ? stop - 1 : stop;
            sink_put(s, f + i, text - i);
            if (nl) sink_put(s, CRLF, 2);
            i = nl ? stop + 1 : end;
        }
        if (line_end) sink_put(s, CRLF, 2);
        return;
    }
    /* §3.4.2: name in lower case without the blanks before ':', the value unfolded, blank runs
     * made one SP, blanks around it dropped. */
    const uint8_t *colon = memchr(f, ':', end);
    size_t ne = colon ? (size_t)(colon - f) : end;
    while (ne && is_fws(f[ne - 1])) ne--;
    uint8_t lower[64];
    for (size_t i = 0; i < ne;) {
        size_t k = 0;
        for (; k < sizeof lower && i < ne; k++, i++) lower[k] = f[i] >= 'A' && f[i] <= 'Z' ? (uint8_t)(f[i] + 32) : f[i];
        sink_put(s, lower, k);
    }
    sink_put(s, (const uint8_t *)":", 1);
    bool blank = false, started = false;
    for (size_t i = colon ? (size_t)(colon - f) + 1 : end; i < end;) {
        if (f[i] == '\r' || f[i] == '\n') {
            i++;
            continue;
        }
        if (is_wsp(f[i])) {
            blank = true;
            i++;
            continue;
        }
        size_t j = i;
        while (j < end && !is_fws(f[j])) j++;
        if (blank && started) sink_put(s, (const uint8_t *)" ", 1);
        sink_put(s, f + i, j - i);
        started = true;
        blank = false;
        i = j;
    }
    if (line_end) sink_put(s, CRLF, 2);
}

/* One body line [p, p + n) without its line end. */
static void body_line(const uint8_t *p, size_t n, bool relaxed, uint64_t *empty, struct mailauth_dkim_sink *s)
{
    if (!relaxed) {
        if (n == 0) {
            (*empty)++;
            return;
        }
        for (; *empty; (*empty)--) sink_put(s, CRLF, 2);
        sink_put(s, p, n);
        sink_put(s, CRLF, 2);
        return;
    }
    /* §3.4.4: blank runs become one SP, blanks at the end of the line go; a line of blanks is
     * empty. */
    bool blank = false, started = false;
    for (size_t i = 0; i < n;) {
        if (is_wsp(p[i])) {
            blank = true;
            i++;
            continue;
        }
        if (!started) {
            for (; *empty; (*empty)--) sink_put(s, CRLF, 2);
            started = true;
        }
        size_t j = i;
        while (j < n && !is_wsp(p[j])) j++;
        if (blank) sink_put(s, (const uint8_t *)" ", 1);
        sink_put(s, p + i, j - i);
        blank = false;
        i = j;
    }
    if (started) sink_put(s, CRLF, 2);
    else (*empty)++;
}

uint64_t mailauth_dkim_canon_body(const uint8_t *b, size_t len, bool relaxed, struct mailauth_dkim_sink *s)
{
    uint64_t empty = 0; /* empty lines not written yet: §3.4.3 and §3.4.4 drop those at the end */
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(b + i, '\n', len - i);
        size_t stop = nl ? (size_t)(nl - b) : len;
        size_t text = nl && stop > i && b[stop - 1] == '\r' ? stop - 1 : stop;
        body_line(b + i, text - i, relaxed, &empty, s);
        i = stop + 1;
    }
    /* §3.4.3: an empty body is one CRLF in simple; nothing in relaxed. */
    if (!relaxed && s->total == 0) sink_put(s, CRLF, 2);
    return mailauth_dkim_sink_end(s);
}
