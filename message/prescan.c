/* message/prescan.c — one bounded, linear look at the raw bytes before GMime parses them.
 *
 * GMime has no limit on parts or headers (it holds about 1.3 KiB per part: a 25 MiB message of
 * empty parts would take gigabytes), and it silently drops a line that is not a header field
 * where the header block should end.  So before GMime sees the bytes, this scan decides which
 * byte ranges GMime is given (not copied: parse.c splices them with GMimeStreamCat):
 *
 *  - top-level header block: it starts after a byte order mark and lines of white space only;
 *    a line that is neither a field ("Name:") nor a continuation ends it, unless the next line
 *    is a field again (then GMime drops the stray line, as it does anyway); GMime then gets an
 *    empty line inserted there, so that line and the rest are the body (the "no empty line after
 *    the header" case, and input that is not a message at all).
 *    Past LIMIT_HEADER_COUNT fields or LIMIT_HEADER_BYTES bytes, the remaining fields are left
 *    out and the body kept.  A leading mbox "From " line is left to GMime (which skips it).
 *  - the rest: lines "--boundary" for every boundary= declared in a header block seen so far
 *    are delimiters; the input is cut before the delimiter that would open part
 *    LIMIT_MIME_PARTS + 1, or before a part header line that brings all part header blocks
 *    together over LIMIT_HEADER_COUNT / LIMIT_HEADER_BYTES.  A part header block (after a
 *    delimiter, or the header of a message/rfc822 part) ends like the top-level one: at a line
 *    that is neither a field nor a continuation (unless the next line is a field again); when no
 *    empty line is there, GMime gets one inserted (a split): without it, GMime 3.2.13 takes the
 *    body for more header lines and drops them, or loses the whole part and everything after it.
 *  - any header field (top level or part) over LIMIT_HEADER_FIELD_BYTES: GMime gets its first
 *    bytes only (cut at white space or a fold when one is near, never inside a UTF-8 sequence),
 *    then a line end; the rest of the field is left out.  GMime 3.2.13 is quadratic in the
 *    length of some fields (see util/limits.h).
 * Each cut adds a parse warning. */
#include <string.h>

#include "message/internal.h"
#include "util/limits.h"

struct scan {
    const uint8_t *d;
    size_t len;
    GHashTable *boundaries; /* char * -> itself */
    bool inner_message;     /* the header block just read announced message/rfc822 ... */
    bool inner_encoded;     /* ... and base64 or quoted-printable: its body is no header block */
};

/* End of the line at pos without its CR LF; *next is the start of the following line. */
static size_t line_end(const struct scan *s, size_t pos, size_t *next)
{
    const uint8_t *nl = memchr(s->d + pos, '\n', s->len - pos);
    size_t e = nl ? (size_t)(nl - s->d) : s->len;
    *next = nl ? e + 1 : s->len;
    if (e > pos && s->d[e - 1] == '\r') e--;
    return e;
}

/* "Name:" — the name printable ASCII or 8-bit (GMime drops 8-bit names itself), white space
 * allowed before the colon (RFC 5322 §4.5 obsolete syntax). */
static bool is_field(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n && p[i] > 32 && p[i] != 127 && p[i] != ':') i++;
    if (i == 0) return false;
    while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
    return i < n && p[i] == ':';
}

static bool is_wsp(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* `needle` is lowercase and starts with a letter.  Its first byte is compared here (`| 0x20`
 * lowers a capital; the few other bytes it lets through only cost the full compare): most
 * positions of a header line fail on it, and each line is searched six times per message. */
static const uint8_t *find_ci(const uint8_t *p, size_t n, const char *needle)
{
    const size_t k = strlen(needle);
    const uint8_t first = (uint8_t)needle[0];
    for (size_t i = 0; i + k <= n; i++)
        if ((p[i] | 0x20) == first && g_ascii_strncasecmp((const char *)p + i, needle, k) == 0) return p + i;
    return NULL;
}

/* Notes boundary= values and message/rfc822 announcements in one header line. */
static void header_line(struct scan *s, const uint8_t *p, size_t n)
{
    if (find_ci(p, n, "message/rfc822") || find_ci(p, n, "message/global"))
        s->inner_message = true;
    if (find_ci(p, n, "content-transfer-encoding") &&
        (find_ci(p, n, "base64") || find_ci(p, n, "quoted-printable")))
        s->inner_encoded = true;
    const uint8_t *b = find_ci(p, n, "boundary");
    if (!b) return;
    const uint8_t *e = p + n, *q = b + 8;
    while (q < e && is_wsp(*q)) q++;
    if (q >= e || *q != '=') return;
    for (q++; q < e && is_wsp(*q); q++) {}
    const uint8_t *v = q;
    if (q < e && *q == '"') {
        for (v = ++q; q < e && *q != '"'; q++) {}
    } else {
        while (q < e && *q != ';' && !is_wsp(*q)) q++;
    }
    size_t vlen = (size_t)(q - v);
    if (vlen == 0 || vlen > LIMIT_MIME_BOUNDARY_MAX || g_hash_table_size(s->boundaries) > LIMIT_MIME_PARTS)
        return;
    char *key = g_strndup((const char *)v, vlen);
    g_hash_table_add(s->boundaries, key);
}

/* 0: not a delimiter; 1: opens a part; 2: closes a multipart. */
static int delimiter(const struct scan *s, const uint8_t *p, size_t n)
{
    if (n < 3 || p[0] != '-' || p[1] != '-' || g_hash_table_size(s->boundaries) == 0) return 0;
    p += 2, n -= 2;
    while (n > 0 && is_wsp(p[n - 1])) n--;
    char buf[LIMIT_MIME_BOUNDARY_MAX + 3];
    if (n == 0 || n > LIMIT_MIME_BOUNDARY_MAX + 2) return 0;
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (n <= LIMIT_MIME_BOUNDARY_MAX && g_hash_table_contains(s->boundaries, buf)) return 1;
    if (n > 2 && buf[n - 1] == '-' && buf[n - 2] == '-') {
        buf[n - 2] = '\0';
        if (g_hash_table_contains(s->boundaries, buf)) return 2;
    }
    return 0;
}

/* Position of the first empty line at or after pos, or len. */
static size_t next_empty_line(const struct scan *s, size_t pos)
{
    while (pos < s->len) {
        size_t next, e = line_end(s, pos, &next);
        if (e == pos) return pos;
        pos = next;
    }
    return s->len;
}

/* Only SP/HT, at least one. */
static bool is_blank(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_wsp(p[i])) return false;
    return n > 0;
}

/* Where the header block really starts: after a UTF-8 byte order mark and lines of white space
 * only (both seen in the wild before the first field; GMime gives up on them). */
static size_t head_start(const struct scan *s)
{
    size_t pos = 0, next;
    if (s->len >= 3 && memcmp(s->d, "\xEF\xBB\xBF", 3) == 0) pos = 3;
    while (pos < s->len) {
        size_t e = line_end(s, pos, &next);
        if (!is_blank(s->d + pos, e - pos)) break;
        pos = next;
    }
    return pos;
}

/* A line that is not a field inside the header block: dropped (as GMime does) when the next line
 * is a field again, else the body starts there.  A "--" line always starts the body: it is the
 * first delimiter of a multipart whose header block lacks its empty line. */
static bool line_starts_body(const struct scan *s, size_t pos, size_t next)
{
    if (s->len - pos >= 2 && s->d[pos] == '-' && s->d[pos + 1] == '-') return true;
    if (next >= s->len) return true;
    size_t after, e = line_end(s, next, &after);
    return !is_field(s->d + next, e - next);
}

/* ---- over-long fields ------------------------------------------------------------------------ */

/* Start of the first line at or after pos that does not continue the field (or len). */
static size_t field_end(const struct scan *s, size_t pos)
{
    size_t next;
    while (pos < s->len && is_wsp(s->d[pos])) line_end(s, pos, &next), pos = next;
    return pos;
}

/* Where a field starting at fs is cut: at most fs + LIMIT_HEADER_FIELD_BYTES, at white space or a
 * line end within the slack when there is one (before the CR LF of a fold), else not inside a
 * UTF-8 sequence. */
static size_t field_cut(const struct scan *s, size_t fs)
{
    size_t max = fs + LIMIT_HEADER_FIELD_BYTES, low = max - LIMIT_HEADER_FIELD_CUT_SLACK;
    const uint8_t *d = s->d;
    for (size_t c = max; c > low; c--) {
        if (is_wsp(d[c]) || d[c] == '\r' || d[c] == '\n') {
            while (c > fs && (d[c - 1] == '\r' || d[c - 1] == '\n')) c--;
            return c;
        }
    }
    size_t c = max;
    while (c > low && (d[c] & 0xC0) == 0x80) c--;
    return c;
}

/* A field [fs, ..) whose line [pos, e) takes it over LIMIT_HEADER_FIELD_BYTES: records the cut
 * and returns where the next field starts. */
static size_t cut_field(struct message *m, const struct scan *s, struct prescan *out, size_t fs,
                        size_t next)
{
    struct prescan_cut c = {.at = field_cut(s, fs), .resume = field_end(s, next)};
    g_array_append_val(out->cuts, c);
    size_t n = 0;
    while (n < LIMIT_WARNING_NAME_MAX && s->d[fs + n] != ':' && !is_wsp(s->d[fs + n])) n++;
    char *name = msg_text_sanitize((const char *)s->d + fs, n, NULL);
    message_warn(m, "header %s longer than %d bytes: cut", name, LIMIT_HEADER_FIELD_BYTES);
    g_free(name);
    return c.resume;
}

static void cut_headers(struct message *m, const struct scan *s, struct prescan *out,
                        size_t fields, size_t field_start, size_t pos)
{
    if (fields > LIMIT_HEADER_COUNT)
        message_warn(m, "header count limit %d reached: later headers ignored", LIMIT_HEADER_COUNT);
    else
        message_warn(m, "header bytes limit %d reached: later headers ignored", LIMIT_HEADER_BYTES);
    out->head_end = field_start;
    out->body_start = next_empty_line(s, pos);
}

/* The top-level header block; sets head_start, head_end, separator, body_start. */
static void scan_top(struct message *m, struct scan *s, struct prescan *out)
{
    size_t pos = out->head_start = head_start(s), field_start = pos, fields = 0, next, skipped = 0;
    if (s->len - pos >= 5 && memcmp(s->d + pos, "From ", 5) == 0) line_end(s, pos, &pos);
    for (;; pos = next) {
        if (pos >= s->len) {
            out->head_end = out->body_start = s->len;
            return;
        }
        size_t e = line_end(s, pos, &next);
        if (e == pos) {
            out->head_end = out->body_start = pos;
            return;
        }
        bool cont = is_wsp(s->d[pos]) && fields > 0;
        if (!cont && !is_field(s->d + pos, e - pos)) {
            if (fields > 0 && !line_starts_body(s, pos, next)) continue;
            out->head_end = out->body_start = pos;
            out->separator = true;
            if (fields == 0)
                message_warn(m, "not a MIME message: no header fields, the whole input is the body");
            else
                message_warn(m, "no empty line after the header: the rest is the body");
            return;
        }
        if (!cont) field_start = pos, fields++;
        bool over = e - field_start > LIMIT_HEADER_FIELD_BYTES;
        size_t upto = over ? field_start + LIMIT_HEADER_FIELD_BYTES : next;
        if (fields > LIMIT_HEADER_COUNT || upto - out->head_start - skipped > LIMIT_HEADER_BYTES) {
            cut_headers(m, s, out, fields, field_start, pos);
            return;
        }
        if (over) {
            header_line(s, s->d + pos, upto > pos ? upto - pos : 0);
            next = cut_field(m, s, out, field_start, next);
            const struct prescan_cut *c =
                &g_array_index(out->cuts, struct prescan_cut, out->cuts->len - 1);
            skipped += c->resume - c->at; /* GMime does not see them */
            continue;
        }
        header_line(s, s->d + pos, e - pos);
    }
}

/* Everything after the top-level header block; sets end. */
static void scan_body(struct message *m, struct scan *s, struct prescan *out)
{
    size_t pos = out->body_start, next, opens = 0, hcount = 0, hbytes = 0, field_start = pos;
    bool in_headers = s->inner_message && !s->inner_encoded, in_field = false;
    s->inner_message = s->inner_encoded = false;
    out->end = s->len;
    for (; pos < s->len; pos = next) {
        size_t e = line_end(s, pos, &next);
        int delim = delimiter(s, s->d + pos, e - pos);
        if (delim == 1 && ++opens > LIMIT_MIME_PARTS) {
            message_warn(m, "mime part limit %d reached: later parts ignored", LIMIT_MIME_PARTS);
            out->end = pos;
            return;
        }
        if (delim) {
            in_headers = delim == 1, in_field = false;
            s->inner_message = s->inner_encoded = false;
            continue;
        }
        if (!in_headers) continue;
        if (e == pos) { /* end of a part header block */
            in_headers = s->inner_message && !s->inner_encoded, in_field = false;
            s->inner_message = s->inner_encoded = false;
            continue;
        }
        bool cont = in_field && is_wsp(s->d[pos]);
        if (!cont) field_start = pos;
        if (!cont && !is_field(s->d + pos, e - pos)) {
            if (!line_starts_body(s, pos, next)) continue; /* a stray line: GMime drops it */
            g_array_append_val(out->splits, pos);
            message_warn(m, "no empty line after a part header: the rest of the part is its body");
            in_headers = false, s->inner_message = s->inner_encoded = false;
            continue;
        }
        in_field = true;
        hcount += !cont;
        bool over = e - field_start > LIMIT_HEADER_FIELD_BYTES;
        size_t upto = over ? field_start + LIMIT_HEADER_FIELD_BYTES : next;
        hbytes += upto > pos ? upto - pos : 0;
        if (hcount > LIMIT_HEADER_COUNT || hbytes > LIMIT_HEADER_BYTES) {
            message_warn(m, "part header limit (%d fields, %d bytes) reached: the rest of the "
                            "message ignored", LIMIT_HEADER_COUNT, LIMIT_HEADER_BYTES);
            out->end = pos;
            return;
        }
        if (over) {
            header_line(s, s->d + pos, upto > pos ? upto - pos : 0);
            next = cut_field(m, s, out, field_start, next);
            continue;
        }
        header_line(s, s->d + pos, e - pos);
    }
}

void msg_prescan_run(struct message *m, const uint8_t *data, size_t len, struct prescan *out)
{
    struct scan s = {.d = data, .len = len,
                     .boundaries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL)};
    *out = (struct prescan){.splits = g_array_new(FALSE, FALSE, sizeof(size_t)),
                             .cuts = g_array_new(FALSE, FALSE, sizeof(struct prescan_cut))};
    scan_top(m, &s, out);
    scan_body(m, &s, out);
    g_hash_table_destroy(s.boundaries);
}

void msg_prescan_free(struct prescan *ps)
{
    if (ps->splits) g_array_unref(ps->splits);
    if (ps->cuts) g_array_unref(ps->cuts);
    ps->splits = ps->cuts = NULL;
}
