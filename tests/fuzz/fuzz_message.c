/* tests/fuzz/fuzz_message.c — the inbound path from bytes to JSON: message_parse, every accessor,
 * the decoded bytes of every attachment, message_to_json and json_dumps, the webhook POST bodies
 * in the three formats (message_post_new, plain and notify), message_stored_json and
 * message_body_mime, then free.
 *
 * Besides "no crash, no leak, no sanitizer report, no GLib critical" it aborts when the message model breaks its own
 * contract (message.h, SPEC §3/§5): a NULL or non-UTF-8 string from an accessor, an attachment
 * whose decoded bytes are not `size` bytes long, message_header_first disagreeing with the header
 * list, a NULL JSON document (NULL means only "out of memory"), or a document that does not carry
 * every field, msg_json_write (message/jsonw.c, the JSON POST body without a jansson tree) not
 * writing exactly the bytes of json_dumps(message_to_json(), JSON_COMPACT | JSON_PRESERVE_ORDER)
 * (or of the notify document, tests/message/jsonw_ref.h) for several option sets, a JSON POST whose
 * fixed part is not those bytes without the final "}", a POST whose segments do not add up to its
 * length, a JSON POST that does not parse back, an urlencoded POST with a byte outside its alphabet, a multipart POST that does not end
 * with its closing delimiter, or a body-mime of a non-UTF-8 message that is not 7-bit.
 * Built with libFuzzer when -DINLET_LIBFUZZER, otherwise as a program that runs every
 * file named on its command line ("-q": one summary line instead of one line per file).
 *
 * libFuzzer run: `./scripts/fuzz message SECONDS` (it reads the shared corpus too).
 * A crash's reproducer goes into message-seeds/ as a regression input (tests/fuzz/README.md). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "message/internal.h"
#include "message/jsonw_ref.h" /* tests/message/jsonw_ref.h */
#include "message/message.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz-message: %s: %s%s%s\n", fuzz_input_name, what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
static bool utf8_valid(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s;
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            s++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((s[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        s += n + 1;
    }
    return true;
}

static void check_str(const char *what, const char *s)
{
    if (!s) fail(what, "NULL string");
    if (!utf8_valid(s)) fail(what, "not valid UTF-8");
}

static void exercise_accessors(const struct message *m)
{
    check_str("from", message_from(m));
    check_str("subject", message_subject(m));
    check_str("message-id", message_message_id(m));
    check_str("body-plain", message_body_plain(m));
    check_str("body-html", message_body_html(m));
    check_str("stripped-text", message_stripped_text(m));
    check_str("stripped-signature", message_stripped_signature(m));
    check_str("stripped-html", message_stripped_html(m));

    const size_t nh = message_header_count(m);
    bool have_from = false;
    for (size_t i = 0; i < nh; i++) {
        const char *name = NULL, *value = NULL;
        message_header(m, i, &name, &value);
        check_str("header name", name);
        check_str("header value", value);
        (void)message_reserved_name(name);
        if (strcasecmp(name, "From") == 0) have_from = true;
        const char *first = message_header_first(m, name);
        if (!first) fail("message_header_first", "NULL for a header that is in the list");
        check_str("message_header_first", first);
    }
    if (have_from != (message_header_first(m, "from") != NULL))
        fail("message_header_first(\"from\")", "disagrees with the header list");
    if (message_header_first(m, "X-Fuzz-Surely-Absent-Header") && nh == 0)
        fail("message_header_first", "found a header in a message without headers");

    const size_t na = message_attachment_count(m);
    for (size_t i = 0; i < na; i++) {
        const struct message_attachment *a = message_attachment(m, i);
        if (!a) fail("message_attachment", "NULL for an index below the count");
        check_str("attachment name", a->name);
        check_str("attachment content-type", a->content_type);
        check_str("attachment content-id", a->content_id);
        check_str("attachment disposition", a->disposition);
        uint8_t *bytes = NULL;
        size_t len = 12345;
        if (message_attachment_bytes(m, i, &bytes, &len) == 0) {
            if (!bytes && len > 0) fail("message_attachment_bytes", "0 with NULL bytes");
            if (len != a->size) {
                char d[96];
                snprintf(d, sizeof d, "decoded %zu bytes, size says %zu", len, a->size);
                fail("message_attachment_bytes", d);
            }
            free(bytes);
        } else if (bytes) {
            fail("message_attachment_bytes", "-1 but *out is not NULL");
        }
    }
    const size_t nw = message_warning_count(m);
    for (size_t i = 0; i < nw; i++) check_str("parse-warning", message_warning(m, i));
}

static const char *const json_fields[] = {
    "recipient",     "sender",         "from",          "subject",
    "message-id",    "domain",         "body-plain",    "body-html",
    "stripped-text", "stripped-signature", "stripped-html", "message-headers",
    "attachments",   "content-id-map", "parse-warnings", "id",
};

/* msg_json_write against jansson (jsonw_ref.h) for option sets that take every path: inline budget
 * 0 / small / unlimited, attachments_url unset / set, empty, non-ASCII and invalid UTF-8 envelope
 * strings, and the notify document. */
static const struct message_json_options jsonw_sets[] = {
    {"Bob@Example.COM", "alice@example.org", "fuzz", 0, NULL},
    {"Bob@Example.COM", "alice@example.org", "fuzz", 4096, NULL},
    {"", "", "", SIZE_MAX, "http://127.0.0.1/v3/domains/example.com/messages/k/"},
    {"j\xc3\xb6rg@B\xc3\xbc" "cher.DE", "\"q\"@x\x01\x7f/", "\xff\xc3(", 4096, "http://h/\xfe"},
};

static void check_jsonw(const struct message *m)
{
    for (size_t k = 0; k < sizeof jsonw_sets / sizeof jsonw_sets[0] + 1; k++) {
        const bool notify = k == sizeof jsonw_sets / sizeof jsonw_sets[0];
        const struct message_json_options *o = &jsonw_sets[notify ? 1 : k];
        const char *murl = notify ? "http://127.0.0.1/v3/domains/example.com/messages/n" : NULL;
        char *want = jsonw_ref(m, o, murl);
        if (!want) fail("json_dumps", "NULL");
        size_t len;
        char *got = jsonw_new(m, o, murl, &len);
        char *d = jsonw_diff(got, len, want);
        if (d) {
            char what[64];
            snprintf(what, sizeof what, "msg_json_write != json_dumps (option set %zu%s)", k,
                     notify ? ", notify" : "");
            fail(what, d);
        }
        /* the JSON POST's fixed part is the same bytes without the final "}" */
        const struct message_post_options po = {.json = *o, .message_url = murl};
        struct message_post *p = message_post_new(m, NULL, 0, MESSAGE_POST_JSON, &po);
        if (!p) fail("message_post_new", "NULL");
        size_t at = 0;
        for (size_t i = 0; i < message_post_segment_count(p); i++) {
            struct message_post_segment sg = message_post_segment(p, i);
            if (at + sg.len > len || (sg.len && memcmp(want + at, sg.data, sg.len) != 0))
                fail("json post", "fixed part differs from json_dumps(message_to_json())");
            at += sg.len;
        }
        if (at + 1 != len || message_post_fixed_len(p) != at)
            fail("json post", "fixed part is not json_dumps(message_to_json()) without its \"}\"");
        message_post_free(p);
        g_free(got);
        free(want);
    }
}

/* fixed part + tail of one POST, checked as described at the top */
static void exercise_post(const struct message *m, const uint8_t *data, size_t size,
                          enum message_post_format f, const char *message_url)
{
    const struct message_post_options po = {
        .json = {.recipient = "Bob@Example.COM", .sender = "alice@example.org", .id = "fuzz",
                 .inline_attachments_max = 4096,
                 .attachments_url = "http://127.0.0.1/v3/domains/example.com/messages/k"},
        .message_url = message_url,
    };
    struct message_post *p = message_post_new(m, data, size, f, &po);
    if (!p) fail("message_post_new", "NULL");
    const char *ct = message_post_content_type(p);
    if (!ct) fail("message_post_content_type", "NULL");
    size_t n = message_post_fixed_len(p), sum = 0;
    for (size_t i = 0; i < message_post_segment_count(p); i++) {
        struct message_post_segment sg = message_post_segment(p, i);
        if (!sg.data && sg.len) fail("message_post_segment", "NULL data");
        sum += sg.len;
    }
    if (sum != n) fail("message_post", "segments do not add up to the fixed length");
    char tail[MESSAGE_POST_TAIL_MAX];
    size_t tl = message_post_tail(p, "1700000000", "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmn",
                                  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                  tail);
    if (tl == 0 || tl >= MESSAGE_POST_TAIL_MAX) fail("message_post_tail", "bad length");
    char *body = malloc(n + tl);
    if (!body) fail("malloc", NULL);
    size_t at = 0;
    for (size_t i = 0; i < message_post_segment_count(p); i++) {
        struct message_post_segment sg = message_post_segment(p, i);
        if (sg.len) memcpy(body + at, sg.data, sg.len);
        at += sg.len;
    }
    memcpy(body + at, tail, tl);
    at += tl;
    if (strcmp(ct, "application/json") == 0) {
        json_error_t e;
        json_t *j = json_loadb(body, at, 0, &e);
        if (!j || !json_object_get(j, "signature") || !json_object_get(j, "recipient"))
            fail("json post", "does not parse back");
        json_decref(j);
    } else if (strcmp(ct, "application/x-www-form-urlencoded") == 0) {
        for (size_t i = 0; i < at; i++)
            if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._+%&=",
                        body[i]) || !body[i])
                fail("urlencoded post", "byte outside the alphabet");
    } else {
        const char *b = strstr(ct, "boundary=");
        if (strncmp(ct, "multipart/form-data; ", 21) != 0 || !b) fail("multipart post", ct);
        char close[128];
        int cl = snprintf(close, sizeof close, "\r\n--%s--\r\n", b + 9);
        if (cl <= 0 || (size_t)cl > at || memcmp(body + at - (size_t)cl, close, (size_t)cl) != 0)
            fail("multipart post", "no closing delimiter at the end");
    }
    free(body);
    message_post_free(p);
}

static bool utf8_without_nul(const uint8_t *d, size_t n)
{
    if (memchr(d, 0, n)) return false;
    char *s = malloc(n + 1);
    if (!s) fail("malloc", NULL);
    if (n) memcpy(s, d, n);
    s[n] = 0;
    bool ok = utf8_valid(s);
    free(s);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool inited;
    if (!inited) {
        message_lib_init();
        /* A GLib critical is a library told it was misused (GMime handed a NULL): a finding too. */
        g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
        inited = true;
    }
    struct message *m = message_parse(data, size);
    if (!m) fail("message_parse", "NULL");
    exercise_accessors(m);

    /* A small inline budget, so that both "content" paths (inlined and null) run. */
    const struct message_json_options opts = {
        .recipient = "Bob@Example.COM",
        .sender = "alice@example.org",
        .id = "fuzz",
        .inline_attachments_max = 4096,
    };
    json_t *j = message_to_json(m, &opts);
    if (!j) fail("message_to_json", "NULL");
    if (!json_is_object(j)) fail("message_to_json", "not an object");
    for (size_t i = 0; i < sizeof json_fields / sizeof json_fields[0]; i++)
        if (!json_object_get(j, json_fields[i])) fail("message_to_json: field missing", json_fields[i]);
    char *s = json_dumps(j, JSON_COMPACT);
    if (!s) fail("json_dumps", "NULL");
    if (!utf8_valid(s)) fail("json_dumps", "output is not valid UTF-8");
    free(s);
    json_decref(j);
    check_jsonw(m);

    static const enum message_post_format formats[] = {MESSAGE_POST_JSON, MESSAGE_POST_MAILGUN,
                                                       MESSAGE_POST_MIME};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        exercise_post(m, data, size, formats[i], NULL);
        exercise_post(m, data, size, formats[i], "http://127.0.0.1/v3/domains/example.com/messages/n");
    }

    j = message_stored_json(m, "bob@example.com", "alice@example.org",
                            "http://127.0.0.1/v3/domains/example.com/messages/k");
    if (!j || !json_object_get(j, "recipients") || !json_object_get(j, "content-id-map"))
        fail("message_stored_json", "NULL or a key missing");
    s = json_dumps(j, JSON_COMPACT);
    if (!s || !utf8_valid(s)) fail("message_stored_json", "does not dump as UTF-8");
    free(s);
    json_decref(j);
    message_free(m);

    size_t bl = 0;
    char *bm = message_body_mime(data, size, &bl);
    if (!bm) fail("message_body_mime", "NULL");
    if (bm[bl] != 0) fail("message_body_mime", "not NUL-terminated");
    if (utf8_without_nul(data, size)) {
        if (bl != size || (size && memcmp(bm, data, size) != 0))
            fail("message_body_mime", "UTF-8 message changed");
    } else {
        for (size_t i = 0; i < bl; i++)
            if ((unsigned char)bm[i] >= 0x80 || bm[i] == 0) fail("message_body_mime", "not 7-bit");
    }
    free(bm);
    return 0;
}
