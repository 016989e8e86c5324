/* message/jsonw.c — the webhook JSON written straight into a GString, without a jansson tree.
 *
 * msg_json_write() appends exactly the bytes of
 *     json_dumps(message_to_json(m, opts), JSON_COMPACT | JSON_PRESERVE_ORDER)
 * (jansson 2.14, dump.c), which tests/message/test_jsonw.c and tests/fuzz/fuzz_message.c check on
 * every golden, post and corpus message.  What that takes, from json.c and jansson:
 *
 *  - Compact: "," between members and elements, ":" after a key, no white space; [] and {} when
 *    empty.  Keys in insertion order (the order of json.c).
 *  - Strings (dump_string): '"' '\\' as \" \\; \b \f \n \r \t; every other code point below U+0020
 *    as \u00XX with upper-case hex (jansson's "\\u%04X"); '/' and U+007F and everything non-ASCII
 *    as they are (no JSON_ESCAPE_SLASH, no JSON_ENSURE_ASCII).
 *  - UTF-8 validity is jansson's (utf8.c): lead bytes C2..F4, continuation bytes 80..BF, no
 *    overlong form, no surrogate, nothing above U+10FFFF.  Where json.c calls msg_jstr(), a string
 *    jansson would refuse is replaced by msg_text_sanitize()'s copy; where jansson refuses a value with
 *    no repair (json_pack "[ss]" of message-headers, a content-id-map key), or the repaired copy
 *    is refused too, json.c's json_object_set_new / json_array_append_new drop the member or
 *    element: so does this writer (it truncates the GString back to where the member started).
 *  - Integers: json_integer((json_int_t)x) printed with "%" JSON_INTEGER_FORMAT.
 *  - Inlined attachments: base64 without line breaks (the bytes of g_base64_encode), encoded
 *    straight into the GString by a table encoder (put_base64); base64 needs no escaping.
 *
 * With message_url (notify, post.c): "attachments" is [{size, url, name, content-type}] and no
 * content is decoded, every content-id-map entry gets "url" after "index", and "message-url" comes
 * last: the bytes post.c used to get from editing message_to_json()'s tree. */
#include <limits.h>
#include <string.h>

#include "message/internal.h"
#include "util/limits.h"

/* Byte classes of the string scanner. */
enum { C_PLAIN, C_ESCAPE, C_HIGH, C_END };

#define P C_PLAIN
#define X C_ESCAPE
#define H C_HIGH
#define E C_END
static const uint8_t byte_class[256] = {
    E, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    P, P, X, P, P, P, P, P, P, P, P, P, P, P, P, P,
    P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P,
    P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P,
    P, P, P, P, P, P, P, P, P, P, P, P, X, P, P, P,
    P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P,
    P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
};
#undef P
#undef X
#undef H
#undef E

/* Length of the valid UTF-8 sequence (jansson's utf8_check_first + utf8_check_full) at p, whose
 * first byte is >= 0x80; 0 when invalid.  The string is NUL-terminated, and NUL is never a
 * continuation byte, so reading stops at the terminator. */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000)) return 0; /* n == 2: C2.. excludes it */
    return n;
}

/* Appends n bytes; inline for the common case where the GString has room (GString's fields are
 * public API; the NUL after the content is kept). */
static inline void put_len(GString *out, const void *d, size_t n)
{
    if (out->len + n < out->allocated_len) {
        memcpy(out->str + out->len, d, n);
        out->len += n;
        out->str[out->len] = '\0';
    } else {
        g_string_append_len(out, d, (gssize)n);
    }
}

static inline void put_c(GString *out, char c)
{
    if (out->len + 1 < out->allocated_len) {
        out->str[out->len++] = c;
        out->str[out->len] = '\0';
    } else {
        g_string_append_c(out, c);
    }
}

/* Room for n more bytes without a reallocation. */
static void reserve(GString *out, size_t n)
{
    if (out->len + n < out->allocated_len) return;
    size_t len = out->len;
    g_string_set_size(out, len + n);
    g_string_truncate(out, len);
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Whether the 8 bytes at p are all printable ASCII other than '"' and '\\' (bytes 0x20..0x7F):
 * the "has a byte less than n" and "has a zero byte" tricks, exact as a yes/no answer. */
static inline bool plain8(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    uint64_t q = v ^ (ONES * '"'), b = v ^ (ONES * '\\');
    uint64_t bad = v | ((v - ONES * 0x20) & ~v) | ((q - ONES) & ~q) | ((b - ONES) & ~b);
    return (bad & HIGHS) == 0;
}

/* A JSON string of s as jansson dumps it; false (and nothing appended) when s is not valid UTF-8
 * by jansson's rules. */
static bool put_string(GString *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    const size_t start = out->len;
    const size_t n = strlen(s);
    const unsigned char *p = (const unsigned char *)s, *run = p, *const end = p + n;
    reserve(out, n + 2);
    put_c(out, '"');
    for (;;) {
        /* the common case: a run of printable ASCII, 8 bytes at a time, then byte by byte */
        while (end - p >= 8 && plain8(p)) p += 8;
        while (byte_class[*p] == C_PLAIN) p++;
        unsigned c = *p;
        if (byte_class[c] == C_HIGH) {
            size_t k = utf8_seq(p);
            if (k == 0) {
                g_string_truncate(out, start);
                return false;
            }
            p += k;
            continue;
        }
        if (p > run) put_len(out, run, (size_t)(p - run));
        if (p == end) break; /* c == 0: the terminator (s has no other NUL) */
        char e[6] = {'\\', 0, '0', '0', 0, 0};
        size_t el = 2;
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            e[1] = 'u';
            e[4] = hex[c >> 4];
            e[5] = hex[c & 15];
            el = 6;
            break;
        }
        put_len(out, e, el);
        run = ++p;
    }
    put_c(out, '"');
    return true;
}

/* msg_jstr(): NULL as "", a string jansson refuses repaired by msg_text_sanitize(); false (nothing
 * appended) only when the repaired copy is refused too. */
static bool put_jstr(GString *out, const char *s)
{
    if (!s) s = "";
    if (put_string(out, s)) return true;
    char *valid = msg_text_sanitize(s, strlen(s), NULL);
    bool ok = put_string(out, valid);
    g_free(valid);
    return ok;
}

bool msg_jsonw_string(GString *out, const char *s)
{
    return put_string(out, s);
}

bool msg_jsonw_jstr(GString *out, const char *s)
{
    return put_jstr(out, s);
}

static void put_int(GString *out, size_t v)
{
    g_string_append_printf(out, "%" JSON_INTEGER_FORMAT, (json_int_t)v);
}

/* ---- containers: a member or element is written after its separator and taken back when its
 * value is refused (json_object_set_new / json_array_append_new with NULL) ----------------------- */

struct container {
    GString *out;
    bool first;
    size_t mark; /* where the current member started */
    bool mark_first;
};

static void open_c(struct container *c, GString *out, char bracket)
{
    *c = (struct container){.out = out, .first = true};
    put_c(out, bracket);
}

static void close_c(struct container *c, char bracket)
{
    put_c(c->out, bracket);
}

/* Starts an element (key NULL) or a member "key": (key: a literal that needs no escaping). */
static void begin(struct container *c, const char *key)
{
    c->mark = c->out->len;
    c->mark_first = c->first;
    if (!c->first) put_c(c->out, ',');
    c->first = false;
    if (key) {
        put_c(c->out, '"');
        put_len(c->out, key, strlen(key));
        put_len(c->out, "\":", 2);
    }
}

static void undo(struct container *c)
{
    g_string_truncate(c->out, c->mark);
    c->first = c->mark_first;
}

static void member_jstr(struct container *c, const char *key, const char *v)
{
    begin(c, key);
    if (!put_jstr(c->out, v)) undo(c);
}

static void member_int(struct container *c, const char *key, size_t v)
{
    begin(c, key);
    put_int(c->out, v);
}

/* ---- shared values (message_post_shared): written once per message, spliced into each post ---- */

struct share {
    struct message_post_shared *sh;
    GArray *splices; /* struct msg_json_splice */
};

/* A shared value into the post: referenced, or copied when short (a segment costs more). */
static void splice(const struct share *s, GString *out, const struct msg_shared_value *v)
{
    if (v->len < POST_SEGMENT_COPY_MAX) {
        put_len(out, v->data, v->len);
        return;
    }
    struct msg_json_splice sp = {.at = out->len, .data = v->data, .len = v->len};
    g_array_append_val(s->splices, sp);
}

/* A member whose string value may be long: shared when `s` is set (dropped when refused, as
 * member_jstr's undo does). */
static void member_big(struct container *c, const struct share *s, enum msg_shared_slot slot,
                       const char *key, const char *v)
{
    if (!s) {
        member_jstr(c, key, v);
        return;
    }
    struct msg_shared_value *val = &s->sh->slot[slot];
    if (!val->done) {
        GString *t = g_string_new(NULL);
        bool ok = put_jstr(t, v);
        size_t len = t->len;
        msg_shared_set(s->sh, val, ok ? (uint8_t *)g_string_free(t, FALSE) : NULL, len);
        if (!ok) g_string_free(t, TRUE);
    }
    if (val->refused) return;
    begin(c, key);
    splice(s, c->out, val);
}

/* ---- the fields ------------------------------------------------------------------------------ */

/* message-headers: json_pack("[ss]", name, value), which refuses NULL and invalid UTF-8 (no
 * repair): the pair is then left out. */
static void put_headers(GString *out, const struct message *m)
{
    struct container a;
    open_c(&a, out, '[');
    for (size_t i = 0; i < message_header_count(m); i++) {
        const char *name, *value;
        message_header(m, i, &name, &value);
        begin(&a, NULL);
        put_c(out, '[');
        if (!name || !value || !put_string(out, name)) {
            undo(&a);
            continue;
        }
        put_c(out, ',');
        if (!put_string(out, value)) {
            undo(&a);
            continue;
        }
        put_c(out, ']');
    }
    close_c(&a, ']');
}

static void put_headers_big(GString *out, const struct share *s, const struct message *m)
{
    if (!s) {
        put_headers(out, m);
        return;
    }
    struct msg_shared_value *val = &s->sh->slot[MSG_SHARED_JSON_HEADERS];
    if (!val->done) {
        GString *t = g_string_new(NULL);
        put_headers(t, m);
        size_t len = t->len;
        msg_shared_set(s->sh, val, (uint8_t *)g_string_free(t, FALSE), len);
    }
    splice(s, out, val);
}

/* base64 (RFC 4648 alphabet, '=' padding, no line breaks: g_base64_encode's bytes) of len bytes
 * as a JSON string, encoded in place at the end of the GString.  Two output characters per 12
 * input bits from a 4096-entry table. */
static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static char b64_pairs[4096][2];

static void b64_init(void)
{
    static gsize done;
    if (g_once_init_enter(&done)) {
        for (unsigned i = 0; i < 4096; i++) {
            b64_pairs[i][0] = b64_alphabet[i >> 6];
            b64_pairs[i][1] = b64_alphabet[i & 63];
        }
        g_once_init_leave(&done, 1);
    }
}

static void put_base64(GString *out, const uint8_t *in, size_t len)
{
    const size_t b64_len = (len + 2) / 3 * 4;
    reserve(out, b64_len + 2);
    put_c(out, '"');
    char *o = out->str + out->len;
    size_t i = 0;
    if (len >= 3) {
        b64_init();
        for (; i + 3 <= len; i += 3, o += 4) {
            uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
            memcpy(o, b64_pairs[v >> 12], 2);
            memcpy(o + 2, b64_pairs[v & 0xFFF], 2);
        }
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 63];
        o[2] = o[3] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        o[0] = b64_alphabet[v >> 18];
        o[1] = b64_alphabet[(v >> 12) & 63];
        o[2] = b64_alphabet[(v >> 6) & 63];
        o[3] = '=';
    }
    out->len += b64_len;
    out->str[out->len] = '\0';
    put_c(out, '"');
}

/* The content of inlined attachment i as a JSON string: shared (decoded and encoded once per
 * message) or written; false when its bytes cannot be had. */
static bool put_content(GString *out, const struct share *s, const struct message *m, size_t i)
{
    struct msg_shared_value *val = s && i < s->sh->natt ? &s->sh->b64[i] : NULL;
    if (val && val->done) {
        if (val->refused) return false;
        splice(s, out, val);
        return true;
    }
    uint8_t *bytes = NULL;
    size_t len = 0;
    const bool ok = message_attachment_bytes(m, i, &bytes, &len) == 0;
    if (ok && !val) put_base64(out, bytes, len);
    if (val) {
        GString *t = NULL;
        if (ok) {
            t = g_string_new(NULL);
            put_base64(t, bytes, len);
        }
        size_t tl = t ? t->len : 0;
        msg_shared_set(s->sh, val, t ? (uint8_t *)g_string_free(t, FALSE) : NULL, tl);
        if (ok) splice(s, out, val);
    }
    g_free(bytes);
    return ok;
}

static void put_attachments(GString *out, const struct share *s, const struct message *m, size_t budget,
                            const char *url)
{
    struct container a;
    open_c(&a, out, '[');
    size_t used = 0;
    bool inlining = true;
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        begin(&a, NULL);
        struct container o;
        open_c(&o, out, '{');
        member_jstr(&o, "name", at->name);
        member_jstr(&o, "content-type", at->content_type);
        member_int(&o, "size", at->size);
        member_jstr(&o, "content-id", at->content_id);
        inlining = inlining && at->size <= budget - used;
        begin(&o, "content");
        if (inlining && put_content(out, s, m, i)) {
            used += at->size;
        } else if (url) {
            undo(&o);
            char *u = msg_attachment_url(url, i);
            member_jstr(&o, "url", u);
            g_free(u);
        } else {
            put_len(out, "null", 4);
        }
        close_c(&o, '}');
    }
    close_c(&a, ']');
}

/* The notify list of post.c: [{size, url, name, content-type}]. */
static void put_notify_attachments(GString *out, const struct message *m, const char *message_url)
{
    struct container a;
    open_c(&a, out, '[');
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        begin(&a, NULL);
        struct container o;
        open_c(&o, out, '{');
        char *url = msg_attachment_url(message_url, i);
        member_int(&o, "size", at->size);
        member_jstr(&o, "url", url);
        member_jstr(&o, "name", at->name);
        member_jstr(&o, "content-type", at->content_type);
        g_free(url);
        close_c(&o, '}');
    }
    close_c(&a, ']');
}

/* content-id-map: the first attachment per Content-ID; jansson refuses a key that is not valid
 * UTF-8 (json_object_set_new), so such an entry is left out, and never "seen". */
static void put_cid_map(GString *out, const struct message *m, const char *message_url)
{
    struct container map;
    open_c(&map, out, '{');
    GHashTable *seen = NULL;
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        const char *cid = at->content_id;
        if (!*cid || (seen && g_hash_table_contains(seen, cid))) continue;
        begin(&map, NULL);
        if (!put_string(out, cid)) {
            undo(&map);
            continue;
        }
        if (!seen) seen = g_hash_table_new(g_str_hash, g_str_equal);
        g_hash_table_add(seen, (gpointer)(uintptr_t)cid);
        put_c(out, ':');
        struct container o;
        open_c(&o, out, '{');
        member_jstr(&o, "name", at->name);
        member_jstr(&o, "content-type", at->content_type);
        member_int(&o, "size", at->size);
        member_int(&o, "index", i);
        if (message_url) {
            char *url = msg_attachment_url(message_url, i);
            member_jstr(&o, "url", url);
            g_free(url);
        }
        close_c(&o, '}');
    }
    if (seen) g_hash_table_unref(seen);
    close_c(&map, '}');
}

static size_t len0(const char *s)
{
    return s ? strlen(s) : 0;
}

/* What put_string adds to an escaped byte's one: "\n" is one more, "\u0001" five. */
static inline size_t escape_extra(unsigned c)
{
    switch (c) {
    case '"': case '\\': case '\b': case '\f': case '\n': case '\r': case '\t': return 1;
    default: return 5;
    }
}

/* The bytes put_string() writes for s when s is valid UTF-8 (NULL as ""): exact, without
 * writing.  It walks the big fields of every payload before put_string walks them again, so it
 * skips plain runs 8 bytes at a time as put_string does (byte by byte, with a strchr per escaped
 * byte, it was the top of inlet's own code in bench/ingest's end-to-end profile at 64 KiB). */
static size_t json_string_len(const char *s)
{
    const size_t n = len0(s);
    const unsigned char *p = (const unsigned char *)(s ? s : ""), *const end = p + n;
    size_t extra = 0;
    for (;;) {
        while (end - p >= 8 && plain8(p)) p += 8;
        if (p == end) break;
        if (byte_class[*p] == C_ESCAPE) extra += escape_extra(*p);
        p++;
    }
    return 2 + n + extra;
}

/* About the size of the document (a little more when there is little to escape), so that the
 * GString is allocated once instead of doubling through the big fields; what `sh` holds already
 * is not counted (it is spliced, not written). */
size_t msg_json_estimate(const struct message *m, const struct message_json_options *opts,
                         const char *message_url, const struct message_post_shared *sh)
{
    const char *const text[] = {opts->recipient, opts->sender, opts->id, m->from, m->subject,
                                m->message_id, message_url};
    const char *const big[] = {m->body_plain, m->body_html, m->stripped_text, m->stripped_signature,
                               m->stripped_html};
    size_t n = 1024 + len0(m->authentication_text);
    for (size_t i = 0; i < G_N_ELEMENTS(text); i++) {
        size_t l = len0(text[i]);
        n += l + l / 32;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(big); i++)
        n += sh && sh->slot[MSG_SHARED_JSON_BODY_PLAIN + i].done ? 0 : json_string_len(big[i]);
    for (size_t i = 0; !(sh && sh->slot[MSG_SHARED_JSON_HEADERS].done) && i < message_header_count(m); i++) {
        const char *name, *value;
        message_header(m, i, &name, &value);
        n += len0(name) + len0(value) + 8;
    }
    size_t used = 0, budget = message_url ? 0 : opts->inline_attachments_max;
    bool inlining = true;
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        n += 2 * (len0(at->name) + len0(at->content_type) + len0(at->content_id)) + 256 +
             len0(opts->attachments_url) + len0(message_url);
        inlining = inlining && at->size <= budget - used;
        if (inlining) {
            used += at->size;
            if (!(sh && i < sh->natt && sh->b64[i].done)) n += at->size / 3 * 4 + 4;
        }
    }
    return n;
}

static void write_doc(GString *out, const struct message *m, const struct message_json_options *opts,
                      const char *message_url, const struct share *s);

void msg_json_write(GString *out, const struct message *m, const struct message_json_options *opts,
                    const char *message_url)
{
    write_doc(out, m, opts, message_url, NULL);
}

void msg_json_write_shared(GString *out, const struct message *m, const struct message_json_options *opts,
                           const char *message_url, struct message_post_shared *sh, GArray *splices)
{
    const struct share s = {.sh = sh, .splices = splices};
    write_doc(out, m, opts, message_url, &s);
}

static void write_doc(GString *out, const struct message *m, const struct message_json_options *opts,
                      const char *message_url, const struct share *s)
{
    reserve(out, msg_json_estimate(m, opts, message_url, s ? s->sh : NULL));
    struct container o;
    open_c(&o, out, '{');
    char *domain = msg_domain_of(opts->recipient);
    member_jstr(&o, "recipient", opts->recipient);
    member_jstr(&o, "sender", opts->sender);
    member_jstr(&o, "from", m->from);
    member_jstr(&o, "subject", m->subject);
    member_jstr(&o, "message-id", m->message_id);
    member_jstr(&o, "domain", domain);
    member_big(&o, s, MSG_SHARED_JSON_BODY_PLAIN, "body-plain", m->body_plain);
    member_big(&o, s, MSG_SHARED_JSON_BODY_HTML, "body-html", m->body_html);
    member_big(&o, s, MSG_SHARED_JSON_STRIPPED_TEXT, "stripped-text", m->stripped_text);
    member_big(&o, s, MSG_SHARED_JSON_STRIPPED_SIGNATURE, "stripped-signature", m->stripped_signature);
    member_big(&o, s, MSG_SHARED_JSON_STRIPPED_HTML, "stripped-html", m->stripped_html);
    begin(&o, "message-headers");
    put_headers_big(out, s, m);
    begin(&o, "attachments");
    if (message_url)
        put_notify_attachments(out, m, message_url);
    else
        put_attachments(out, s, m, opts->inline_attachments_max, opts->attachments_url);
    begin(&o, "content-id-map");
    put_cid_map(out, m, message_url);
    begin(&o, "parse-warnings");
    struct container w;
    open_c(&w, out, '[');
    for (size_t i = 0; i < message_warning_count(m); i++) {
        begin(&w, NULL);
        if (!put_jstr(out, message_warning(m, i))) undo(&w);
    }
    close_c(&w, ']');
    member_jstr(&o, "id", opts->id);
    if (m->authentication_text) {
        begin(&o, "authentication");
        put_len(out, m->authentication_text, strlen(m->authentication_text));
    }
    if (message_url) member_jstr(&o, "message-url", message_url);
    g_free(domain);
    close_c(&o, '}');
}
