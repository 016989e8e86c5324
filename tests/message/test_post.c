/* tests/message/test_post.c — webhook POST bodies (message_post_*), the stored-message JSON
 * (message_stored_json), body-mime (message_body_mime) and the attachments_url option of
 * message_to_json.
 *
 *   test-post                        unit checks (TAP)
 *   test-post --write OUTDIR FILE... for each FILE (NAME.eml) writes into OUTDIR:
 *       NAME.parsed.json             message_to_json, every attachment inlined
 *       NAME.<fmt>.post, .ctype      fixed part + tail(TIMESTAMP, TOKEN, SIGNATURE) and the
 *                                    Content-Type, fmt = json, mailgun, mime, and notify-json,
 *                                    notify-mailgun, notify-mime (message_url = NOTIFY_URL)
 *       NAME.stored.json             message_stored_json(STORED_URL)
 *       NAME.body-mime               message_body_mime
 *     which test_post.py parses the way receivers do. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "message/internal.h"
#include "message/message.h"

#define TIMESTAMP "1700000000"
#define TOKEN "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmn"
#define SIGNATURE "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define RECIPIENT "Bob@Example.COM"
#define SENDER "alice@example.org"
#define NOTIFY_URL "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY1"
#define STORED_URL "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY2/"

/* fixed part + tail, malloc'd (NUL-terminated for convenience) */
static char *post_bytes(const struct message_post *p, size_t *len)
{
    char tail[MESSAGE_POST_TAIL_MAX];
    size_t tl = message_post_tail(p, TIMESTAMP, TOKEN, SIGNATURE, tail);
    size_t n = message_post_fixed_len(p), at = 0;
    char *out = g_malloc(n + tl + 1);
    for (size_t i = 0; i < message_post_segment_count(p); i++) {
        struct message_post_segment s = message_post_segment(p, i);
        if (at + s.len > n) break;
        memcpy(out + at, s.data, s.len);
        at += s.len;
    }
    memcpy(out + at, tail, tl);
    at += tl;
    out[at] = '\0';
    *len = at;
    return out;
}

static char *post_string(const struct message_post *p)
{
    size_t len;
    return post_bytes(p, &len);
}

/* ---- writer ---------------------------------------------------------------------------------- */

static int write_file(const char *dir, const char *name, const char *suffix, const void *d,
                      size_t n)
{
    char *path = g_strdup_printf("%s/%s%s", dir, name, suffix);
    GError *err = NULL;
    bool ok = g_file_set_contents(path, d, (gssize)n, &err);
    if (!ok) fprintf(stderr, "test-post: %s: %s\n", path, err->message);
    g_clear_error(&err);
    g_free(path);
    return ok ? 0 : -1;
}

/* A post built alone and one built with shared values: the same bytes once the (random)
 * multipart boundary of `b` is replaced by that of `a`; the shared post holds no more of its own. */
static int compare_shared(const char *name, const char *fmt, const struct message_post *a,
                          const struct message_post *b)
{
    size_t la, lb;
    char *xa = post_bytes(a, &la), *xb = post_bytes(b, &lb);
    const char *ba = strstr(message_post_content_type(a), "boundary=");
    const char *bb = strstr(message_post_content_type(b), "boundary=");
    if (ba && bb) {
        const size_t n = strlen(bb + 9);
        for (char *at = xb; (at = memmem(at, lb - (size_t)(at - xb), bb + 9, n)) != NULL; at += n)
            memcpy(at, ba + 9, n);
    }
    int rc = 0;
    if (la != lb || memcmp(xa, xb, la) != 0 || !!ba != !!bb) {
        fprintf(stderr, "test-post: %s%s: the post with shared values differs (%zu, %zu bytes)\n", name, fmt, la,
                lb);
        rc = -1;
    }
    if (message_post_own_len(b) > message_post_own_len(a)) {
        fprintf(stderr, "test-post: %s%s: the shared post owns more (%zu > %zu)\n", name, fmt,
                message_post_own_len(b), message_post_own_len(a));
        rc = -1;
    }
    g_free(xa);
    g_free(xb);
    return rc;
}

static int write_one(const char *dir, const char *file)
{
    gchar *raw = NULL;
    gsize raw_len = 0;
    GError *err = NULL;
    if (!g_file_get_contents(file, &raw, &raw_len, &err)) {
        fprintf(stderr, "test-post: %s: %s\n", file, err->message);
        g_clear_error(&err);
        return -1;
    }
    char *base = g_path_get_basename(file);
    char *dot = strrchr(base, '.');
    if (dot) *dot = '\0';
    struct message *m = message_parse((const uint8_t *)raw, raw_len);
    int rc = 0;

    struct message_json_options jo = {.recipient = RECIPIENT, .sender = SENDER, .id = base,
                                      .inline_attachments_max = SIZE_MAX};
    json_t *j = message_to_json(m, &jo);
    char *s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    rc |= write_file(dir, base, ".parsed.json", s, strlen(s));
    free(s);
    json_decref(j);

    static const struct {
        const char *suffix;
        enum message_post_format f;
        bool notify;
    } fmts[] = {
        {".json", MESSAGE_POST_JSON, false},
        {".mailgun", MESSAGE_POST_MAILGUN, false},
        {".mime", MESSAGE_POST_MIME, false},
        {".notify-json", MESSAGE_POST_JSON, true},
        {".notify-mailgun", MESSAGE_POST_MAILGUN, true},
        {".notify-mime", MESSAGE_POST_MIME, true},
    };
    /* The posts are built with values shared between them (message_post_shared), as deliver/
     * does, and must be byte for byte those built without (the multipart boundary aside). */
    struct message_post_shared *sh = message_post_shared_new(m);
    for (size_t i = 0; i < G_N_ELEMENTS(fmts); i++) {
        struct message_post_options po = {.json = jo, .message_url = NULL};
        if (fmts[i].notify) po.message_url = NOTIFY_URL;
        struct message_post *alone = message_post_new(m, (const uint8_t *)raw, raw_len, fmts[i].f, &po);
        po.shared = sh;
        struct message_post *first = message_post_new(m, (const uint8_t *)raw, raw_len, fmts[i].f, &po);
        const size_t shared_after_first = message_post_shared_bytes(sh);
        struct message_post *p = message_post_new(m, (const uint8_t *)raw, raw_len, fmts[i].f, &po);
        message_post_free(first);
        rc |= compare_shared(base, fmts[i].suffix, alone, p);
        if (message_post_shared_bytes(sh) != shared_after_first) {
            fprintf(stderr, "test-post: %s%s: the second post added shared bytes\n", base, fmts[i].suffix);
            rc = -1;
        }
        message_post_free(alone);
        size_t len;
        char *b = post_bytes(p, &len);
        char *suffix = g_strconcat(fmts[i].suffix, ".post", NULL);
        rc |= write_file(dir, base, suffix, b, len);
        g_free(suffix);
        suffix = g_strconcat(fmts[i].suffix, ".ctype", NULL);
        const char *ct = message_post_content_type(p);
        rc |= write_file(dir, base, suffix, ct, strlen(ct));
        g_free(suffix);
        g_free(b);
        message_post_free(p);
    }
    message_post_shared_unref(sh);

    j = message_stored_json(m, RECIPIENT, SENDER, STORED_URL);
    s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    rc |= write_file(dir, base, ".stored.json", s, strlen(s));
    free(s);
    json_decref(j);

    size_t bl;
    char *bm = message_body_mime((const uint8_t *)raw, raw_len, &bl);
    rc |= write_file(dir, base, ".body-mime", bm, bl);
    g_free(bm);

    message_free(m);
    g_free(base);
    g_free(raw);
    return rc;
}

/* ---- unit checks ----------------------------------------------------------------------------- */

static struct message *parse_str(const char *s)
{
    return message_parse((const uint8_t *)s, strlen(s));
}

static const char attach_msg[] =
    "From: a@example.org\r\n"
    "Subject: attachments\r\n"
    "Recipients: evil@x\r\n"
    "Sender: evil@x\r\n"
    "X-Custom: one\r\n"
    "x-custom: two\r\n"
    "Content-Type: multipart/mixed; boundary=z\r\n"
    "\r\n"
    "--z\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "hi\r\n"
    "--z\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Disposition: attachment; filename=a.bin\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "AAECAwQ=\r\n"
    "--z\r\n"
    "Content-Type: image/png\r\n"
    "Content-ID: <img@x>\r\n"
    "Content-Disposition: inline; filename=p.png\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "iVBORw0KGgo=\r\n"
    "--z--\r\n";

static void test_attachments_url(void)
{
    struct message *m = parse_str(attach_msg);
    struct message_json_options o = {.recipient = "b@example.com", .sender = "",
                                     .id = "x", .inline_attachments_max = 5,
                                     .attachments_url = "http://h/v3/domains/d/messages/k/"};
    json_t *j = message_to_json(m, &o);
    json_t *a0 = json_array_get(json_object_get(j, "attachments"), 0);
    json_t *a1 = json_array_get(json_object_get(j, "attachments"), 1);
    CHECK(json_is_string(json_object_get(a0, "content")) && !json_object_get(a0, "url"),
          "attachments_url: within the budget: content, no url");
    CHECK(!json_object_get(a1, "content"), "attachments_url: past the budget: no content key");
    CHECK_STR(json_string_value(json_object_get(a1, "url")),
              "http://h/v3/domains/d/messages/k/attachments/1",
              "attachments_url: url of attachment 1 (0-based, one slash)");
    json_decref(j);
    o.attachments_url = NULL;
    j = message_to_json(m, &o);
    a1 = json_array_get(json_object_get(j, "attachments"), 1);
    CHECK(json_is_null(json_object_get(a1, "content")) && !json_object_get(a1, "url"),
          "without attachments_url: content null as before");
    json_decref(j);
    message_free(m);
}

static void test_stored_json(void)
{
    struct message *m = parse_str(attach_msg);
    json_t *j = message_stored_json(m, "bob@example.com", "alice@example.org",
                                    "http://h/v3/domains/example.com/messages/K");
    static const char *const keys[] = {"recipients", "sender", "from", "subject", "body-plain",
                                       "stripped-text", "stripped-signature", "body-html",
                                       "stripped-html", "attachments", "message-headers",
                                       "content-id-map"};
    for (size_t i = 0; i < G_N_ELEMENTS(keys); i++)
        CHECK(json_object_get(j, keys[i]) != NULL, "stored: key %s present", keys[i]);
    CHECK(!json_object_get(j, "message-url"), "stored: no message-url");
    CHECK_STR(json_string_value(json_object_get(j, "recipients")), "bob@example.com",
              "stored: recipients is the recipient, not the Recipients header");
    CHECK_STR(json_string_value(json_object_get(j, "sender")), "alice@example.org",
              "stored: sender is the envelope sender, not the Sender header");
    CHECK(!json_object_get(j, "Recipients") && !json_object_get(j, "Sender"),
          "stored: reserved headers are not keys");
    CHECK_STR(json_string_value(json_object_get(j, "X-Custom")), "one",
              "stored: a header as its own key, first occurrence");
    CHECK(!json_object_get(j, "x-custom"), "stored: a repeat in another case is not a key");
    /* message-headers holds every top-level header, Content-Type included (GMime keeps it on
     * the MIME part, not on the message) */
    json_t *mh = json_object_get(j, "message-headers");
    CHECK(json_is_array(mh) && json_array_size(mh) == 9,
          "stored: message-headers is an array of every header and Mailgun's two");
    CHECK_STR(json_string_value(json_array_get(json_array_get(mh, 0), 0)), "X-Mailgun-Incoming",
              "stored: message-headers starts with X-Mailgun-Incoming");
    CHECK_STR(json_string_value(json_array_get(json_array_get(mh, 1), 1)), "<alice@example.org>",
              "stored: then X-Envelope-From: <sender>");
    CHECK_STR(json_string_value(json_object_get(j, "X-Envelope-From")), "<alice@example.org>",
              "stored: X-Envelope-From as its own key");
    CHECK_STR(json_string_value(json_array_get(json_array_get(mh, 8), 0)), "Content-Type",
              "stored: message-headers ends with the top-level Content-Type");
    CHECK_STR(json_string_value(json_object_get(j, "Content-Type")),
              "multipart/mixed; boundary=z", "stored: the top-level Content-Type as its own key");
    json_t *atts = json_object_get(j, "attachments");
    json_t *a1 = json_array_get(atts, 1);
    CHECK(json_array_size(atts) == 2 && json_object_size(a1) == 4, "stored: attachments");
    CHECK_STR(json_string_value(json_object_get(a1, "url")),
              "http://h/v3/domains/example.com/messages/K/attachments/1", "stored: attachment url");
    CHECK_STR(json_string_value(json_object_get(a1, "name")), "p.png", "stored: attachment name");
    CHECK_STR(json_string_value(json_object_get(a1, "content-type")), "image/png",
              "stored: attachment content-type");
    CHECK(json_integer_value(json_object_get(a1, "size")) == 8, "stored: attachment size");
    json_t *c = json_object_get(json_object_get(j, "content-id-map"), "<img@x>");
    CHECK(c && json_object_size(c) == 4 &&
              strcmp(json_string_value(json_object_get(c, "url")),
                     "http://h/v3/domains/example.com/messages/K/attachments/1") == 0 &&
              json_integer_value(json_object_get(c, "size")) == 8,
          "stored: content-id-map entry {url, content-type, name, size}");
    json_decref(j);
    message_free(m);
}

static bool all_7bit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80 || s[i] == 0) return false;
    return true;
}

static void test_body_mime(void)
{
    static const char utf8[] = "From: R\xC3\xA9n\xC3\xA9 <r@example.org>\r\nSubject: caf\xC3\xA9\r\n"
                               "\r\nbody \xE2\x82\xAC\r\n";
    size_t n;
    char *b = message_body_mime((const uint8_t *)utf8, sizeof utf8 - 1, &n);
    CHECK(n == sizeof utf8 - 1 && memcmp(b, utf8, n) == 0 && b[n] == 0,
          "body-mime: UTF-8 message is the exact bytes");
    g_free(b);
    b = message_body_mime((const uint8_t *)"", 0, &n);
    CHECK(n == 0 && b && b[0] == 0, "body-mime: empty");
    g_free(b);

    static const char latin1[] =
        "From: Fran\xE7ois <f@example.org>\r\n"
        "To: b@example.com\r\n"
        "Subject: Cr\xE8me br\xFBl\xE9" "e\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=q\r\n"
        "\r\n"
        "pr\xE9" "ambule\r\n"
        "--q\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Caf\xE9, cr\xE8me br\xFBl\xE9" "e.\r\n"
        "--q\r\n"
        "Content-Type: application/octet-stream; name=\"r\xE9sum\xE9.bin\"\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        "\r\n"
        "\x00\x01\xFF\xFE\r\n"
        "--q--\r\n";
    struct message *orig = message_parse((const uint8_t *)latin1, sizeof latin1 - 1);
    b = message_body_mime((const uint8_t *)latin1, sizeof latin1 - 1, &n);
    CHECK(all_7bit(b, n) && strlen(b) == n, "body-mime: latin-1 message re-encoded to 7 bit");
    CHECK(strstr(b, "\r\n") != NULL, "body-mime: CRLF kept");
    struct message *back = message_parse((const uint8_t *)b, n);
    CHECK_STR(message_subject(back), message_subject(orig), "body-mime: same subject");
    CHECK_STR(message_from(back), message_from(orig), "body-mime: same from");
    CHECK_STR(message_body_plain(back), message_body_plain(orig), "body-mime: same body text");
    CHECK(message_attachment_count(back) == 1 && message_attachment_count(orig) == 1,
          "body-mime: one attachment");
    if (message_attachment_count(back) == 1 && message_attachment_count(orig) == 1) {
        CHECK_STR(message_attachment(back, 0)->name, message_attachment(orig, 0)->name,
                  "body-mime: same attachment name");
        uint8_t *x, *y;
        size_t xl, yl;
        message_attachment_bytes(back, 0, &x, &xl);
        message_attachment_bytes(orig, 0, &y, &yl);
        CHECK(xl == yl && memcmp(x, y, xl) == 0, "body-mime: same attachment bytes (%zu)", xl);
        free(x);
        free(y);
    }
    message_free(back);
    message_free(orig);
    g_free(b);

    /* NUL in an otherwise ASCII message: not sent as it is */
    static const char nul[] = "Subject: n\n\nab\0cd\n";
    b = message_body_mime((const uint8_t *)nul, sizeof nul - 1, &n);
    CHECK(all_7bit(b, n), "body-mime: a NUL byte is re-encoded");
    back = message_parse((const uint8_t *)b, n);
    CHECK_STR(message_subject(back), "n", "body-mime: NUL message subject kept");
    message_free(back);
    g_free(b);

    /* An 8-bit Content-Type or Content-Disposition whose parameter needs RFC 2231 encoding and
     * has a name of 70-72 bytes: GMime 3.2.13's formatter never returns for it (gmime#165).  The
     * field is written as text instead, for every length around the bad ones. */
    for (size_t len = 60; len <= 80; len++) {
        for (int field = 0; field < 2; field++) {
            char *name = g_strnfill(len, 'x');
            char *raw = g_strdup_printf("Subject: s\r\n%s; %s=\"caf\xE9\"\r\n\r\nbody\r\n",
                                        field ? "Content-Disposition: attachment" : "Content-Type: text/plain",
                                        name);
            b = message_body_mime((const uint8_t *)raw, strlen(raw), &n);
            CHECK(b && all_7bit(b, n), "body-mime: %s with a %zu-byte parameter name",
                  field ? "Content-Disposition" : "Content-Type", len);
            g_free(b);
            g_free(raw);
            g_free(name);
        }
    }
    /* the fuzzer's find: 32 bytes 0xFF (64 in UTF-8) + "boundary" as a name */
    static const char ff_name[] = "Content-Type: multipart/alternative; "
                                  "\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF"
                                  "\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF"
                                  "boundary=\"inner-\xFF" "boundary=\"inner-boundarsu\r\n\r\nAAA\r\n\r\n";
    b = message_body_mime((const uint8_t *)ff_name, sizeof ff_name - 1, &n);
    CHECK(b && all_7bit(b, n), "body-mime: an 8-bit 72-byte parameter name");
    g_free(b);
    /* a short name keeps GMime's RFC 2231 form */
    static const char short_name[] = "Content-Type: text/plain; name=\"caf\xE9\"\r\n\r\nbody\r\n";
    b = message_body_mime((const uint8_t *)short_name, sizeof short_name - 1, &n);
    CHECK(b && strstr(b, "name*=") != NULL, "body-mime: a short parameter name keeps RFC 2231 (%s)", b ? b : "");
    g_free(b);

    /* not MIME at all, 8-bit */
    static const char junk[] = "\xFF\xFE garbage \xE9\n\n\xC3";
    b = message_body_mime((const uint8_t *)junk, sizeof junk - 1, &n);
    CHECK(b && all_7bit(b, n), "body-mime: non-MIME 8-bit junk gives 7-bit bytes");
    g_free(b);
}

static void test_json_post(void)
{
    struct message *m = parse_str(attach_msg);
    struct message_post_options po = {
        .json = {.recipient = "Bob@Example.COM", .sender = "a@x", .id = "i1",
                 .inline_attachments_max = 1 << 20}};
    struct message_post *p = message_post_new(m, (const uint8_t *)attach_msg,
                                              sizeof attach_msg - 1, MESSAGE_POST_JSON, &po);
    CHECK_STR(message_post_content_type(p), "application/json", "json: content type");
    char *s = post_string(p);
    json_error_t e;
    json_t *got = json_loads(s, 0, &e);
    json_t *want = message_to_json(m, &po.json);
    json_object_set_new(want, "timestamp", json_string(TIMESTAMP));
    json_object_set_new(want, "token", json_string(TOKEN));
    json_object_set_new(want, "signature", json_string(SIGNATURE));
    CHECK(got && json_equal(got, want), "json: fixed part + tail = message_to_json + 3 fields");
    char *w = json_dumps(want, JSON_PRESERVE_ORDER | JSON_COMPACT);
    CHECK_STR(s, w, "json: byte for byte the compact dump");
    free(w);
    char tail[MESSAGE_POST_TAIL_MAX];
    size_t tl = message_post_tail(p, "1\"2", "t\\o\nk", "s}ig", tail);
    CHECK(tl < MESSAGE_POST_TAIL_MAX && strcmp(tail, ",\"timestamp\":\"12\",\"token\":\"tok\","
                                                     "\"signature\":\"sig\"}") == 0,
          "json: tail values reduced to safe characters");
    char longv[600];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    tl = message_post_tail(p, longv, longv, longv, tail);
    CHECK(tl < MESSAGE_POST_TAIL_MAX && strlen(tail) == tl, "json: overlong tail values cut");
    json_decref(got);
    json_decref(want);
    g_free(s);
    message_post_free(p);

    /* notify */
    po.message_url = "http://h/m/K";
    p = message_post_new(m, (const uint8_t *)attach_msg, sizeof attach_msg - 1,
                         MESSAGE_POST_JSON, &po);
    s = post_string(p);
    got = json_loads(s, 0, &e);
    CHECK_STR(json_string_value(json_object_get(got, "message-url")), "http://h/m/K",
              "notify json: message-url");
    json_t *a1 = json_array_get(json_object_get(got, "attachments"), 1);
    CHECK(json_object_size(a1) == 4 &&
              strcmp(json_string_value(json_object_get(a1, "url")), "http://h/m/K/attachments/1") ==
                  0 &&
              !json_object_get(a1, "content"),
          "notify json: attachments {size, url, name, content-type}, no content");
    json_t *c = json_object_get(json_object_get(got, "content-id-map"), "<img@x>");
    CHECK(c && json_string_value(json_object_get(c, "url")) &&
              strcmp(json_string_value(json_object_get(c, "url")), "http://h/m/K/attachments/1") ==
                  0,
          "notify json: content-id-map entry has the url");
    json_decref(got);
    g_free(s);
    message_post_free(p);
    message_free(m);
}

static void test_form_choice(void)
{
    struct message_post_options po = {
        .json = {.recipient = "b@example.com", .sender = "a@x", .id = "i1"}};
    struct message *m = parse_str("Subject: small\r\n\r\nhello\r\n");
    struct message_post *p = message_post_new(m, NULL, 0, MESSAGE_POST_MAILGUN, &po);
    CHECK_STR(message_post_content_type(p), "application/x-www-form-urlencoded",
              "mailgun: small, no attachments: urlencoded");
    char *s = post_string(p);
    CHECK(g_str_has_prefix(s, "recipient=b%40example.com&sender=a%40x&from=&subject=small&"),
          "mailgun: urlencoded starts with recipient, sender, from, subject");
    CHECK(g_str_has_suffix(s, "&timestamp=" TIMESTAMP "&token=" TOKEN "&signature=" SIGNATURE),
          "mailgun: urlencoded tail");
    g_free(s);
    message_post_free(p);
    message_free(m);

    GString *big = g_string_new("Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    while (big->len < 40 * 1024) g_string_append(big, "\xC3\xA9t\xC3\xA9 ");
    g_string_append(big, "\r\n");
    m = message_parse((const uint8_t *)big->str, big->len);
    p = message_post_new(m, (const uint8_t *)big->str, big->len, MESSAGE_POST_MAILGUN, &po);
    CHECK(g_str_has_prefix(message_post_content_type(p), "multipart/form-data; boundary=inlet"),
          "mailgun: 40 KiB of non-ASCII text (over 100 KiB urlencoded): multipart");
    message_post_free(p);
    message_free(m);
    g_string_free(big, TRUE);

    m = parse_str(attach_msg);
    p = message_post_new(m, (const uint8_t *)attach_msg, sizeof attach_msg - 1,
                         MESSAGE_POST_MAILGUN, &po);
    const char *ct = message_post_content_type(p);
    CHECK(g_str_has_prefix(ct, "multipart/form-data; boundary=inlet") &&
              strlen(ct) == strlen("multipart/form-data; boundary=") + 37,
          "mailgun: with attachments: multipart, boundary inlet + 32 hex");
    struct message_post *p2 = message_post_new(m, (const uint8_t *)attach_msg,
                                               sizeof attach_msg - 1, MESSAGE_POST_MAILGUN, &po);
    CHECK(strcmp(ct, message_post_content_type(p2)) != 0, "mailgun: boundary random per post");
    size_t sum = 0;
    for (size_t i = 0; i < message_post_segment_count(p); i++)
        sum += message_post_segment(p, i).len;
    CHECK(sum == message_post_fixed_len(p), "segments add up to the fixed length");
    char tail[MESSAGE_POST_TAIL_MAX];
    char longv[600];
    memset(longv, '9', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    size_t tl = message_post_tail(p, longv, longv, longv, tail);
    const char *b = ct + strlen("multipart/form-data; boundary=");
    char *close = g_strdup_printf("\r\n--%s--\r\n", b);
    CHECK(tl < MESSAGE_POST_TAIL_MAX && g_str_has_suffix(tail, close),
          "multipart: overlong tail values cut, closing delimiter kept (%zu bytes)", tl);
    g_free(close);
    message_post_free(p2);
    message_post_free(p);

    /* MIME: body-mime references the raw bytes */
    p = message_post_new(m, (const uint8_t *)attach_msg, sizeof attach_msg - 1, MESSAGE_POST_MIME,
                         &po);
    bool referenced = false;
    for (size_t i = 0; i < message_post_segment_count(p); i++) {
        struct message_post_segment sg = message_post_segment(p, i);
        referenced |= sg.data == (const uint8_t *)attach_msg && sg.len == sizeof attach_msg - 1;
    }
    CHECK(referenced, "mime: body-mime is a segment referencing raw (no copy)");
    CHECK(g_str_has_prefix(message_post_content_type(p), "multipart/form-data; boundary=inlet"),
          "mime: multipart");
    message_post_free(p);
    message_free(m);
}

/* Issue 14 item 3: the posts of one message share its big values instead of copying them. */
static void test_shared_values(void)
{
    GString *raw = g_string_new("From: a@example.org\r\nTo: b@example.com\r\nSubject: big\r\n"
                                "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
                                "--XX\r\nContent-Type: text/plain\r\n\r\n");
    for (int i = 0; i < 2000; i++) g_string_append(raw, "a line of the body, long enough\r\n");
    g_string_append(raw, "--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                         "filename=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    for (int i = 0; i < 1000; i++) g_string_append(raw, "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n");
    g_string_append(raw, "--XX--\r\n");
    struct message *m = message_parse((const uint8_t *)raw->str, raw->len);
    struct message_post_shared *sh = message_post_shared_new(m);
    static const enum message_post_format fmts[] = {MESSAGE_POST_JSON, MESSAGE_POST_MAILGUN};
    for (size_t f = 0; f < G_N_ELEMENTS(fmts); f++) {
        const char *name = fmts[f] == MESSAGE_POST_JSON ? "json" : "mailgun";
        struct message_post_options po = {
            .json = {.recipient = "r0@example.com", .sender = SENDER, .id = "ID", .inline_attachments_max = SIZE_MAX},
            .shared = sh};
        const size_t before = message_post_shared_bytes(sh);
        const size_t est = message_post_estimate(m, fmts[f], &po);
        struct message_post *p0 = message_post_new(m, (const uint8_t *)raw->str, raw->len, fmts[f], &po);
        const size_t built = message_post_own_len(p0) + message_post_shared_bytes(sh) - before;
        CHECK(est >= built && est <= built + built / 4 + 8192, "%s: the estimate %zu is about the %zu bytes built",
              name, est, built);
        CHECK(message_post_shared_bytes(sh) - before > 60000, "%s: the body and the attachment are shared (%zu)",
              name, message_post_shared_bytes(sh) - before);
        const size_t shared = message_post_shared_bytes(sh);
        po.json.recipient = "r1@example.com";
        const size_t est1 = message_post_estimate(m, fmts[f], &po);
        struct message_post *p1 = message_post_new(m, (const uint8_t *)raw->str, raw->len, fmts[f], &po);
        CHECK(message_post_shared_bytes(sh) == shared, "%s: the second post adds nothing shared", name);
        CHECK(message_post_own_len(p1) < 16384 && message_post_fixed_len(p1) > 60000,
              "%s: it owns %zu of its %zu bytes", name, message_post_own_len(p1), message_post_fixed_len(p1));
        CHECK(est1 >= message_post_own_len(p1) && est1 < 32768, "%s: its estimate %zu counts its own part (%zu)",
              name, est1, message_post_own_len(p1));
        message_post_free(p0);
        message_post_free(p1);
    }
    message_post_shared_unref(sh);
    message_free(m);
    g_string_free(raw, TRUE);
}

/* The estimate is the delivery's memory budget admission: it must cover what is built when every
 * byte of the body needs an escape ("\u0001" is six bytes for one, "\"" two). */
static void test_estimate_escapes(void)
{
    GString *raw = g_string_new("From: a@example.org\r\nSubject: escapes\r\n"
                                "Content-Type: text/plain; charset=utf-8\r\n\r\n");
    for (int i = 0; i < 2000; i++) g_string_append(raw, "\x01\x02\"\\\x7f\x1b\t\r\n");
    struct message *m = message_parse((const uint8_t *)raw->str, raw->len);
    struct message_post_options po = {
        .json = {.recipient = "r@example.com", .sender = SENDER, .id = "ID", .inline_attachments_max = 0}};
    const size_t est = message_post_estimate(m, MESSAGE_POST_JSON, &po);
    struct message_post *p = message_post_new(m, (const uint8_t *)raw->str, raw->len, MESSAGE_POST_JSON, &po);
    const size_t built = message_post_own_len(p);
    CHECK(est >= built && est <= built + built / 4 + 8192,
          "json, every body byte escaped: the estimate %zu covers the %zu bytes built", est, built);
    message_post_free(p);
    message_free(m);
    g_string_free(raw, TRUE);
}

int main(int argc, char **argv)
{
    message_lib_init();
    if (argc >= 3 && strcmp(argv[1], "--write") == 0) {
        int rc = 0;
        for (int i = 3; i < argc; i++) rc |= write_one(argv[2], argv[i]);
        message_lib_shutdown();
        return rc ? 1 : 0;
    }
    test_attachments_url();
    test_stored_json();
    test_body_mime();
    test_json_post();
    test_form_choice();
    test_shared_values();
    test_estimate_escapes();
    message_lib_shutdown();
    return check_done();
}
