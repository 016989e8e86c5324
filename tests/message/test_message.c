/* tests/message/test_message.c — html2text, the reserved-name rule, UTF-8 sanitizing, limits
 * (deep nesting, many parts, many headers), the attachment-bytes accessor and the JSON encoding,
 * RFC 2047 header decoding, undeclared 8-bit header text, part headers without an empty line,
 * the top-level header list (Content-* included, in order). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "message/internal_html2text.h"
#include "message/internal.h"
#include "message/message.h"
#include "util/limits.h"

static void test_html2text(void)
{
    static const struct {
        const char *html, *text, *what;
    } cases[] = {
        {.html = "", .text = "", .what = "empty"},
        {.html = "plain words", .text = "plain words", .what = "no tags"},
        {.html = "<p>a</p><p>b</p>", .text = "a\n\nb", .what = "paragraphs: one blank line"},
        {.html = "a<br>b<br/>c<br><br><br><br>d", .text = "a\nb\nc\n\nd", .what = "br, at most one blank line"},
        {.html = "<div>a</div><div>b</div>", .text = "a\nb", .what = "div ends a line"},
        {.html = "<ul><li>x</li><li>y</li></ul>after", .text = "x\ny\n\nafter", .what = "list items"},
        {.html = "<h1>T</h1>body", .text = "T\n\nbody", .what = "heading"},
        {.html = "<table><tr><td>a</td><td>b</td></tr><tr><th>c</th></tr></table>",
         .text = "a b\nc", .what = "table cells and rows"},
        {.html = "<blockquote>q</blockquote>t", .text = "q\n\nt", .what = "blockquote"},
        {.html = "  lots \r\n\t of   space  ", .text = "lots of space", .what = "whitespace collapsed"},
        {.html = "<script>var a = '<p>x</p>';</script>ok<style>p{}</style>!", .text = "ok!",
         .what = "script and style dropped"},
        {.html = "<SCRIPT type=x>bad()</ScRiPt>ok", .text = "ok", .what = "case-insensitive close"},
        {.html = "<title>T</title>text", .text = "text", .what = "title dropped"},
        {.html = "a<!-- <p>c</p> -->b", .text = "ab", .what = "comment dropped"},
        {.html = "<!DOCTYPE html><?xml x?>t", .text = "t", .what = "declarations dropped"},
        {.html = "&amp;&lt;&gt;&quot;&apos;", .text = "&<>\"'", .what = "basic entities"},
        {.html = "caf&eacute; &Uuml;ber &szlig; &copy;", .text = "café Über ß ©", .what = "latin-1 entities"},
        {.html = "&hellip;&mdash;&rsquo;&euro;", .text = "…—’€", .what = "typographic entities"},
        {.html = "&#233;&#xE9;&#X1F600;", .text = "éé😀", .what = "numeric entities"},
        {.html = "&#0;&#xD800;&#x110000;", .text = "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD",
         .what = "invalid code points"},
        {.html = "a&nbsp;&nbsp;b", .text = "a  b", .what = "nbsp kept as spaces"},
        {.html = "AT&T &unknown; & x", .text = "AT&T &unknown; & x", .what = "not entities"},
        {.html = "1 < 2 and 3 > 2", .text = "1 < 2 and 3 > 2", .what = "bare < and >"},
        {.html = "<a href=\"x>y\" title='>'>link</a>", .text = "link", .what = "quoted > in attributes"},
        {.html = "<pre>  a\n    b</pre>c", .text = "  a\n    b\n\nc", .what = "pre keeps white space"},
        {.html = "x&shy;y", .text = "xy", .what = "soft hyphen dropped"},
        {.html = "<p>unterminated <b", .text = "unterminated", .what = "tag cut at the end"},
        {.html = "<script>never closed", .text = "", .what = "script cut at the end"},
        {.html = "&#", .text = "&#", .what = "lone &#"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        char *t = msg_html_to_text(cases[i].html, strlen(cases[i].html));
        CHECK_STR(t, cases[i].text, "html2text: %s", cases[i].what);
        g_free(t);
    }
}

static void test_reserved(void)
{
    static const struct {
        const char *name;
        bool reserved;
    } cases[] = {
        {"recipient", true},      {"Recipient", true},       {"SENDER", true},
        {"from", true},           {"subject", true},         {"message-id", true},
        /* the parsed fields' headers go beside them in another case, as Mailgun posts them */
        {"From", false},          {"Subject", false},        {"Message-Id", false},
        {"FROM", false},          {"Message-ID", false},     {"Body-Foo", true},
        {"body-plain", true},     {"Body-HTML", true},       {"stripped-text", true},
        {"stripped-signature", true}, {"stripped-html", true}, {"message-headers", true},
        {"attachments", true},    {"content-id-map", true},  {"parse-warnings", true},
        {"timestamp", true},      {"Token", true},           {"signature", true},
        {"domain", true},         {"recipients", true},      {"message-url", true},
        {"attachment-count", true}, {"attachment-1", true},  {"Attachment-42", true},
        {"attachment-007", true}, {"body-mime", true},       {"attachment-", true},
        {"attachment-1a", true},  {"attachment-x", true},    {"attachment", false},
        {"To", false},            {"X-Mailer", false},       {"Received", false},
        {"Content-Type", false},  {"recipient ", false},     {"froms", false},
        {"", false},              {"signatures", false},     {"message-id-x", false},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
        CHECK(message_reserved_name(cases[i].name) == cases[i].reserved, "reserved \"%s\" = %d",
              cases[i].name, cases[i].reserved);
    CHECK(!message_reserved_name(NULL), "reserved NULL = 0");
}

static void test_sanitize(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"ok", "ok"},
        {"\xC3\xA9", "\xC3\xA9"},
        {"a\xFF" "b", "a\xEF\xBF\xBD" "b"},
        {"\xE2\x82", "\xEF\xBF\xBD"},                       /* truncated: one U+FFFD */
        {"\xE2\x82x", "\xEF\xBF\xBDx"},
        {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},           /* overlong: one per byte */
        {"\xF0\x9F\x98", "\xEF\xBF\xBD"},
        {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        bool replaced = false;
        char *s = msg_text_sanitize(cases[i].in, strlen(cases[i].in), &replaced);
        CHECK_STR(s, cases[i].out, "sanitize case %zu", i);
        CHECK(replaced == (strcmp(cases[i].in, cases[i].out) != 0), "sanitize case %zu: replaced flag", i);
        g_free(s);
    }
    bool replaced = false;
    char *s = msg_text_sanitize("a\0b", 3, &replaced);
    CHECK_STR(s, "a\xEF\xBF\xBD" "b", "NUL becomes U+FFFD");
    g_free(s);
    bool unknown = false;
    s = msg_text_to_utf8("caf\xE9", 4, "no-such-charset-x", &unknown, &replaced);
    CHECK(unknown, "unknown charset reported");
    CHECK_STR(s, "caf\xC3\xA9", "unknown charset read as windows-1252");
    g_free(s);
    s = msg_text_to_utf8("\x1B$B$\"\x1B(B", 8, "iso-2022-jp", &unknown, &replaced);
    CHECK(!unknown, "iso-2022-jp known");
    CHECK_STR(s, "\xE3\x81\x82", "iso-2022-jp via iconv");
    g_free(s);
    replaced = false;
    s = msg_text_to_utf8("\x1B$B$", 4, "iso-2022-jp", &unknown, &replaced);
    CHECK(replaced && g_utf8_validate(s, -1, NULL), "truncated iso-2022-jp: U+FFFD, valid UTF-8");
    g_free(s);
}

static bool has_warning(const struct message *m, const char *prefix)
{
    for (size_t i = 0; i < message_warning_count(m); i++)
        if (strncmp(message_warning(m, i), prefix, strlen(prefix)) == 0) return true;
    return false;
}

static struct message *parse_string(GString *s)
{
    return message_parse((const uint8_t *)s->str, s->len);
}

static void test_deep_nesting(void)
{
    GString *s = g_string_new("Subject: deep\r\n");
    for (int i = 0; i < 100000; i++)
        g_string_append_printf(s, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i);
    g_string_append(s, "Content-Type: text/plain\r\n\r\nbottom\r\n");
    for (int i = 99999; i >= 0; i--) g_string_append_printf(s, "--b%d--\r\n", i);
    struct message *m = parse_string(s);
    CHECK(m != NULL, "100,000 nested multiparts: parsed");
    CHECK(has_warning(m, "mime depth limit 32 reached"), "100,000 nested multiparts: depth warning");
    CHECK(has_warning(m, "mime part limit 1000 reached"), "100,000 nested multiparts: the pre-scan cut");
    CHECK_STR(message_body_plain(m), "", "100,000 nested multiparts: the bottom body is too deep");
    CHECK_STR(message_subject(m), "deep", "100,000 nested multiparts: headers kept");
    message_free(m);
    g_string_free(s, TRUE);

    s = g_string_new("");
    for (int i = 0; i < 100000; i++) g_string_append(s, "Subject: x\r\nContent-Type: message/rfc822\r\n\r\n");
    g_string_append(s, "Content-Type: text/plain\r\n\r\nbottom\r\n");
    m = parse_string(s);
    CHECK(m != NULL && message_attachment_count(m) == 1, "100,000 nested message/rfc822: one attachment");
    message_free(m);
    g_string_free(s, TRUE);
}

static void test_many_parts(void)
{
    GString *s = g_string_new("Subject: many\nContent-Type: multipart/mixed; boundary=p\n\n");
    for (int i = 0; i < 50000; i++) g_string_append(s, "--p\nContent-Type: image/gif\n\nx\n");
    g_string_append(s, "--p--\n");
    struct message *m = parse_string(s);
    CHECK(message_attachment_count(m) == LIMIT_MIME_PARTS - 1,
          "50,000 parts: the multipart and %d leaves kept (%zu)", LIMIT_MIME_PARTS - 1,
          message_attachment_count(m));
    CHECK(has_warning(m, "mime part limit 1000 reached: later parts ignored"), "50,000 parts: warning");
    message_free(m);
    g_string_free(s, TRUE);

    /* multipart/alternative with parts on the walker's side of the limit (no pre-scan cut) */
    s = g_string_new("Subject: nest\nContent-Type: multipart/mixed; boundary=p\n\n");
    for (int i = 0; i < 600; i++)
        g_string_append(s, "--p\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\nx\n--q--\n");
    g_string_append(s, "--p--\n");
    m = parse_string(s);
    CHECK(has_warning(m, "mime part limit 1000 reached"), "600 multiparts of one part each: walker limit");
    message_free(m);
    g_string_free(s, TRUE);
}

static void test_header_limits(void)
{
    GString *s = g_string_new("From: a@example.org\r\n");
    for (int i = 0; i < LIMIT_HEADER_COUNT + 5; i++) g_string_append_printf(s, "X-H: %d\r\n", i);
    g_string_append(s, "Subject: after the limit\r\n\r\nbody\r\n");
    struct message *m = parse_string(s);
    CHECK(message_header_count(m) == LIMIT_HEADER_COUNT, "header count capped (%zu)",
          message_header_count(m));
    CHECK(has_warning(m, "header count limit 10000 reached"), "header count warning");
    CHECK_STR(message_body_plain(m), "body\r\n", "header count limit: body kept");
    CHECK_STR(message_subject(m), "", "header count limit: later Subject ignored");
    message_free(m);
    g_string_free(s, TRUE);

    s = g_string_new("From: a@example.org\r\n");
    for (int f = 0; f < 20; f++) {
        g_string_append(s, "X-Big: ");
        /* 400 folded lines: 26,812 bytes a field, under the per-field cap. */
        for (int i = 0; i < 400; i++) g_string_append(s, "0123456789012345678901234567890123456789012345678901234567890123\r\n ");
        g_string_append(s, "end\r\n");
    }
    g_string_append(s, "Subject: s\r\n\r\nbody\r\n");
    m = parse_string(s);
    CHECK(message_header_count(m) == 1 + LIMIT_HEADER_BYTES / (400 * 67 + 12),
          "header bytes: the fields past the limit ignored (%zu)", message_header_count(m));
    CHECK_STR(message_subject(m), "", "header bytes limit: later Subject ignored");
    CHECK(has_warning(m, "header bytes limit 262144 reached"), "header bytes warning");
    CHECK_STR(message_body_plain(m), "body\r\n", "header bytes limit: body kept");
    message_free(m);
    g_string_free(s, TRUE);

    s = g_string_new("Subject: parts\nContent-Type: multipart/mixed; boundary=p\n\n--p\n");
    for (int i = 0; i < LIMIT_HEADER_COUNT + 1; i++) g_string_append(s, "X-P: y\n");
    g_string_append(s, "\nbody\n--p--\n");
    m = parse_string(s);
    CHECK(has_warning(m, "part header limit"), "part header count limit");
    message_free(m);
    g_string_free(s, TRUE);
}

static const char attach_msg[] =
    "From: =?utf-8?q?Ren=C3=A9?= <r@example.org>\r\n"
    "Subject: attachments\r\n"
    "Message-ID: <a1@example.org>\r\n"
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
    "Content-Type: IMAGE/PNG\r\n"
    "Content-ID: <img@x>\r\n"
    "Content-Disposition: inline\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "png=00=FF\r\n"
    "--z\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "Subject: in\r\n"
    "\r\n"
    "inner\r\n"
    "--z--\r\n";

static void test_attachments_and_json(void)
{
    struct message *m = message_parse((const uint8_t *)attach_msg, sizeof attach_msg - 1);
    CHECK_STR(message_from(m), "René <r@example.org>", "from decoded");
    CHECK_STR(message_message_id(m), "a1@example.org", "message-id without <>");
    CHECK_STR(message_header_first(m, "subject"), "attachments", "header_first ignores case");
    CHECK(message_header_first(m, "X-None") == NULL, "header_first: absent is NULL");
    CHECK(message_attachment_count(m) == 3, "three attachments");
    uint8_t *b = NULL;
    size_t len = 0;
    CHECK(message_attachment_bytes(m, 0, &b, &len) == 0 && len == 5 &&
              memcmp(b, "\x00\x01\x02\x03\x04", 5) == 0, "base64 attachment bytes");
    free(b);
    const struct message_attachment *a = message_attachment(m, 1);
    CHECK_STR(a->content_type, "image/png", "content type lower case");
    CHECK_STR(a->content_id, "<img@x>", "content-id with brackets");
    CHECK_STR(a->disposition, "inline", "disposition inline");
    CHECK_STR(message_attachment(m, 0)->disposition, "attachment", "disposition attachment");
    CHECK(message_attachment_bytes(m, 1, &b, &len) == 0 && len == 5 && a->size == 5 &&
              memcmp(b, "png\x00\xFF", 5) == 0, "quoted-printable attachment bytes, binary kept");
    free(b);
    a = message_attachment(m, 2);
    CHECK_STR(a->name, "in.eml", "forwarded message named after its subject");
    CHECK(message_attachment_bytes(m, 2, &b, &len) == 0 && len == a->size &&
              len == strlen("Subject: in\r\n\r\ninner") &&
              memcmp(b, "Subject: in\r\n\r\ninner", len) == 0, "forwarded message bytes");
    free(b);
    CHECK(message_attachment_bytes(m, 3, &b, &len) == -1 && b == NULL, "out of range: -1, NULL");

    struct message_json_options o = {.recipient = "Bob@Example.COM", .sender = "s\xFF@x",
                                     .id = "id1", .inline_attachments_max = 6};
    json_t *j = message_to_json(m, &o);
    char *d1 = json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT);
    json_t *j2 = message_to_json(m, &o);
    char *d2 = json_dumps(j2, JSON_PRESERVE_ORDER | JSON_COMPACT);
    CHECK(d1 && d2 && strcmp(d1, d2) == 0, "same JSON bytes twice");
    CHECK_STR(json_string_value(json_object_get(j, "domain")), "example.com", "domain lower case");
    CHECK_STR(json_string_value(json_object_get(j, "sender")), "s\xEF\xBF\xBD@x", "invalid UTF-8 option sanitized");
    json_t *atts = json_object_get(j, "attachments");
    CHECK(json_is_string(json_object_get(json_array_get(atts, 0), "content")), "first attachment inlined");
    CHECK(json_is_null(json_object_get(json_array_get(atts, 1), "content")), "past the budget: content null");
    CHECK(json_is_null(json_object_get(json_array_get(atts, 2), "content")), "after the budget ran out: null");
    json_t *cid = json_object_get(json_object_get(j, "content-id-map"), "<img@x>");
    CHECK(json_integer_value(json_object_get(cid, "index")) == 1, "content-id-map index");
    static const char *const keys[] = {"recipient", "sender", "from", "subject", "message-id",
                                       "domain", "body-plain", "body-html", "stripped-text",
                                       "stripped-signature", "stripped-html", "message-headers",
                                       "attachments", "content-id-map", "parse-warnings", "id"};
    const char *p = d1;
    bool ordered = json_object_size(j) == G_N_ELEMENTS(keys);
    for (size_t i = 0; i < G_N_ELEMENTS(keys) && ordered; i++) {
        char *k = g_strdup_printf("\"%s\":", keys[i]);
        const char *at = strstr(p, k);
        ordered = at != NULL;
        if (at) p = at;
        g_free(k);
    }
    CHECK(ordered, "every key present, in SPEC §5 order");
    free(d1);
    free(d2);
    json_decref(j);
    json_decref(j2);
    message_free(m);
}

/* header.c: RFC 2047 decoding of an unfolded value (see header.c for the rules). */
static void test_header_decode(void)
{
    static const struct {
        const char *in, *out, *what;
    } cases[] = {
        {"", "", "empty"},
        {"plain text", "plain text", "no encoded word"},
        {"=?utf-8?B?w6k=?= =?utf-8?B?w6g=?= =?utf-8?B?w6A=?=", "\xC3\xA9\xC3\xA8\xC3\xA0",
         "padded base64 words of one charset: each decoded on its own"},
        {"=?UTF-8?B?44CQ6YeN6KaB?= =?UTF-8?B?5Y+w6Zu7MTA1?=", "\xE3\x80\x90\xE9\x87\x8D\xE8\xA6\x81"
         "\xE5\x8F\xB0\xE9\x9B\xBB" "105", "unpadded words"},
        {"=?gb2312?B?1tA=?= =?gb2312?B?zsQ=?=", "\xE4\xB8\xAD\xE6\x96\x87", "gb2312, padded"},
        {"=?utf-8?B?4oI=?= =?utf-8?B?rA==?=", "\xE2\x82\xAC", "a character split across two words"},
        {"=?utf-8?q?=E2?= =?utf-8?q?=82=AC?=", "\xE2\x82\xAC", "split, Q"},
        {"=?utf-8?q?=E2?= =?iso-8859-1?q?=E9?=", "\xEF\xBF\xBD\xC3\xA9",
         "a cut character is not joined across charsets"},
        {"=?utf-8?q?a?= b =?utf-8?q?c?=\t =?utf-8?q?d?= e", "a b cd e",
         "white space only between two encoded words is dropped"},
        {"abc=?utf-8?q?d=C3=A9f?=ghi", "abcd\xC3\xA9" "fghi", "glued to other text"},
        {"=?utf-8?q?x?==?utf-8?q?y?=", "xy", "two words glued together"},
        {"\"=?utf-8?q?Ren=C3=A9e?= D\" <r@x>", "\"Ren\xC3\xA9" "e D\" <r@x>", "inside a quoted string"},
        {"=?utf-8?B?YQBi?=", "a\xEF\xBF\xBD" "b", "decoded NUL: U+FFFD, not the end"},
        {"=?utf-8?q?a=00b?=", "a\xEF\xBF\xBD" "b", "decoded NUL, Q"},
        {"=?unicodebig?B?AGEAAABi?=", "a\xEF\xBF\xBD" "b", "UTF-16 NUL (unicodebig)"},
        {"=?utf-16be?B?2D3eAA==?=", "\xF0\x9F\x98\x80", "UTF-16 surrogate pair"},
        {"=?utf-8?q?a=FFb?=", "a\xEF\xBF\xBD" "b", "invalid UTF-8 in a word"},
        {"=?utf-8?q?a_b=3F=?=", "a b?=", "Q: underscore, hex, a lone '='"},
        {"=?utf-8*en?q?hi?=", "hi", "RFC 2231 language suffix"},
        {"=?utf-8?x?abc?=", "=?utf-8?x?abc?=", "unknown encoding: literal"},
        {"=??q?abc?=", "=??q?abc?=", "empty charset: literal"},
        {"=?utf-8?q?a b?=", "=?utf-8?q?a b?=", "white space inside: literal"},
        {"=?utf-8?q?unterminated", "=?utf-8?q?unterminated", "unterminated: literal"},
        {"=?utf-8?B?", "=?utf-8?B?", "cut short"},
        {"=?", "=?", "just =?"},
        {"=?aaaaaaaa?q?xx=?b?q?yy =?utf-8?q?ok?=", "=?aaaaaaaa?q?xx=?b?q?yy ok",
         "words that never end, then one that does"},
        {"=?b?q?x=?aaaaaaaa?q?y =?utf-8?q?ok?=", "=?b?q?x=?aaaaaaaa?q?y ok",
         "a later start before the known dead end"},
        {"=?x-unknown?q?abc?=", "abc", "unknown charset: windows-1252"},
        {"=?x-mac-cyrillic?q?=8F=F0=E8?=", "\xD0\x9F\xD1\x80\xD0\xB8", "x-mac-cyrillic alias"},
        {"=?utf-8?B?w6k?=", "\xC3\xA9", "missing padding"},
        {"=?utf-8?B?w6!k=?=", "\xC3\xA9", "a character outside the alphabet is skipped"},
        {"\xD0\xAE\xD1\x80\xD0\xB8\xD0\xB9 \xD0", "\xD0\xAE\xD1\x80\xD0\xB8\xD0\xB9 \xEF\xBF\xBD",
         "raw, mostly UTF-8: U+FFFD for the bad byte"},
        {"Caf\xE9", "Caf\xC3\xA9", "raw latin-1: windows-1252"},
        {"\x93quoted\x94 =?utf-8?q?=C3=A9?=", "\xE2\x80\x9Cquoted\xE2\x80\x9D \xC3\xA9",
         "raw windows-1252 beside an encoded word"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        char *d = msg_header_decode_unfolded(cases[i].in, strlen(cases[i].in));
        CHECK_STR(d, cases[i].out, "header decode: %s", cases[i].what);
        g_free(d);
    }
    char *d = msg_header_decode(" =?utf-8?B?w6k=?=\r\n =?utf-8?B?w6g=?=\r\n");
    CHECK_STR(d, "\xC3\xA9\xC3\xA8", "msg_header_decode unfolds and trims");
    g_free(d);
    d = msg_header_decode(NULL);
    CHECK_STR(d, "", "msg_header_decode(NULL)");
    g_free(d);
    static const char folded[] = "From: a\r\nSUBJECT : =?utf-8?q?x?=\r\n y\r\n\r\nSubject: body";
    d = msg_header_subject_of_bytes((const uint8_t *)folded, sizeof folded - 1);
    CHECK_STR(d, "x y", "subject of bytes: folded, case-insensitive, obsolete space");
    g_free(d);
    static const char after[] = "From: a\n\nSubject: no";
    d = msg_header_subject_of_bytes((const uint8_t *)after, sizeof after - 1);
    CHECK_STR(d, "", "subject of bytes: only the header block");
    g_free(d);
}

static void test_mostly_utf8(void)
{
    static const struct {
        const char *in;
        bool utf8;
    } cases[] = {
        {"", true},
        {"ascii", true},
        {"\xC3\xA9t\xC3\xA9", true},
        {"\xD0\xAE\xD1\x80\xD0\xB8\xD0\xB9 \xD0", true}, /* 6 valid bytes, 1 invalid */
        {"\xC3\xA9 \xE9\xE8\xE0", false},                  /* 2 valid, 3 invalid */
        {"caf\xE9", false},                                /* no valid sequence */
        {"\xE2\x82\xAC\xFF", true},
        {"\xC3\xA9\xFF\xFE", false},                       /* 2 against 2: not a minority */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
        CHECK(msg_text_mostly_utf8(cases[i].in, strlen(cases[i].in)) == cases[i].utf8,
              "mostly utf-8 case %zu", i);
    char *s = msg_text_undeclared("Gr\xFC\xDF" "e", 5);
    CHECK_STR(s, "Gr\xC3\xBC\xC3\x9F" "e", "undeclared latin-1");
    g_free(s);
    bool unknown = true;
    s = msg_text_to_utf8("\x8F\xF0\xE8\xE2\xE5\xF2", 6, "x-mac-cyrillic", &unknown, NULL);
    CHECK(!unknown, "x-mac-cyrillic known (MAC-CYRILLIC)");
    CHECK_STR(s, "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", "x-mac-cyrillic decoded");
    g_free(s);
    s = msg_text_to_utf8("\x00\x61", 2, "unicodebig", &unknown, NULL);
    CHECK(!unknown, "unicodebig known");
    CHECK_STR(s, "a", "unicodebig decoded");
    g_free(s);
}

/* A field over LIMIT_HEADER_FIELD_BYTES is cut before GMime sees it (GMime 3.2.13 takes about
 * 80 s on a 1 MiB Subject of unclosed encoded words). */
static void test_long_field(void)
{
    GString *s = g_string_new("From: a@example.org\r\nSubject: ");
    for (int i = 0; i < 131072; i++) g_string_append(s, "=?a?q?x ");
    g_string_append(s, "\r\nTo: b@example.org\r\n\r\nbody\r\n");
    struct message *m = parse_string(s);
    char *w = g_strdup_printf("header Subject longer than %d bytes: cut", LIMIT_HEADER_FIELD_BYTES);
    CHECK(has_warning(m, w), "1 MiB Subject: cut warning");
    const char *subj = message_subject(m);
    size_t n = strlen(subj);
    CHECK(n > 0 && n <= LIMIT_HEADER_FIELD_BYTES - 9 &&
              strncmp(subj, s->str + strlen("From: a@example.org\r\nSubject: "), n) == 0,
          "1 MiB Subject: a prefix is kept (%zu bytes)", n);
    CHECK_STR(message_header_first(m, "To"), "b@example.org", "1 MiB Subject: the next field kept");
    CHECK_STR(message_body_plain(m), "body\r\n", "1 MiB Subject: body kept");
    message_free(m);
    g_free(w);
    g_string_free(s, TRUE);
}

/* message-headers is the whole top-level header block in its order: GMime 3 keeps the Content-*
 * fields of the top level on the MIME part, not on the message, and parse.c merges them back. */
struct want_header {
    const char *name, *value;
};

static void check_headers(const char *what, const char *msg, size_t len,
                          const struct want_header *want, size_t n)
{
    struct message *m = message_parse((const uint8_t *)msg, len);
    CHECK(message_header_count(m) == n, "%s: %zu headers (got %zu)", what, n,
          message_header_count(m));
    for (size_t i = 0; i < n && i < message_header_count(m); i++) {
        const char *name, *value;
        message_header(m, i, &name, &value);
        CHECK_STR(name, want[i].name, "%s: header %zu name", what, i);
        if (want[i].value)
            CHECK_STR(value, want[i].value, "%s: header %zu (%s) value", what, i, want[i].name);
        else /* GMime's raw value ends at a NUL byte (as for every header) */
            CHECK(g_str_has_prefix(value, "nul") && g_utf8_validate(value, -1, NULL),
                  "%s: header %zu (%s) value", what, i, want[i].name);
    }
    message_free(m);
}

static void test_top_level_headers(void)
{
    static const char msg[] =
        "Content-Type: multipart/mixed;\r\n boundary=\"outer\"\r\n"
        "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        "From: a@example.org\r\n"
        "Content-Description: =?utf-8?q?R=C3=A9sum=C3=A9?= and\r\n =?iso-8859-1?b?Y2Fm6Q==?=\r\n"
        "Received: from c by d; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "content-transfer-encoding: 7bit\r\n"
        "Subject: top\r\n"
        "Content-ID: <top@x>\r\n"
        "X-Repeat: one\r\n"
        "X-Repeat: two\r\n"
        "Content-Disposition: inline\r\n"
        "\r\n"
        "--outer\r\n"
        "Content-Type: text/plain\r\n"
        "Content-Description: inner\r\n"
        "X-Part: not top level\r\n"
        "\r\n"
        "hi\r\n"
        "--outer--\r\n";
    static const struct want_header want[] = {
        {"Content-Type", "multipart/mixed; boundary=\"outer\""},
        {"Received", "from a by b; Mon, 1 Jan 2024 00:00:00 +0000"},
        {"From", "a@example.org"},
        {"Content-Description", "Résumé and café"},
        {"Received", "from c by d; Mon, 1 Jan 2024 00:00:01 +0000"},
        {"MIME-Version", "1.0"},
        {"content-transfer-encoding", "7bit"},
        {"Subject", "top"},
        {"Content-ID", "<top@x>"},
        {"X-Repeat", "one"},
        {"X-Repeat", "two"},
        {"Content-Disposition", "inline"},
    };
    check_headers("multipart", msg, sizeof msg - 1, want, G_N_ELEMENTS(want));

    struct message *m = message_parse((const uint8_t *)msg, sizeof msg - 1);
    CHECK_STR(message_header_first(m, "content-type"), "multipart/mixed; boundary=\"outer\"",
              "header_first finds the top-level Content-Type");
    CHECK_STR(message_header_first(m, "Content-Description"), "Résumé and café",
              "header_first: the top-level Content-Description, not the part's");
    CHECK(message_header_first(m, "X-Part") == NULL, "part headers are not top-level headers");
    CHECK_STR(message_body_plain(m), "hi", "the body is still read");
    struct message_json_options o = {.recipient = "b@example.com", .sender = "", .id = "x"};
    json_t *j = message_to_json(m, &o);
    json_t *mh = json_object_get(j, "message-headers");
    CHECK(json_array_size(mh) == G_N_ELEMENTS(want), "JSON message-headers: every header");
    CHECK_STR(json_string_value(json_array_get(json_array_get(mh, 0), 0)), "Content-Type",
              "JSON message-headers: Content-Type first, as in the message");
    json_decref(j);
    message_free(m);

    /* a repeated Content-Type is kept twice, in place; the header of a body without a
     * Content-Type gets none made up */
    static const char twice[] = "Content-Type: text/plain\r\nSubject: s\r\n"
                                "Content-Type: text/html\r\n\r\nbody\r\n";
    static const struct want_header want_twice[] = {
        {"Content-Type", "text/plain"}, {"Subject", "s"}, {"Content-Type", "text/html"}};
    check_headers("repeated Content-Type", twice, sizeof twice - 1, want_twice, 3);
    static const char none[] = "Subject: s\r\nFrom: f@x\r\n\r\nbody\r\n";
    static const struct want_header want_none[] = {{"Subject", "s"}, {"From", "f@x"}};
    check_headers("no Content-*", none, sizeof none - 1, want_none, 2);

    /* header only: no empty line, no body */
    static const char head_only[] = "Content-Type: text/plain; charset=utf-8\r\nSubject: h";
    static const struct want_header want_head_only[] = {
        {"Content-Type", "text/plain; charset=utf-8"}, {"Subject", "h"}};
    check_headers("header only", head_only, sizeof head_only - 1, want_head_only, 2);

    /* not a message at all: no headers */
    static const char not_mime[] = "just text\r\nContent-Type: text/plain\r\n";
    check_headers("not MIME", not_mime, sizeof not_mime - 1, NULL, 0);

    /* no empty line after the header: the line after it and the rest are the body */
    static const char no_sep[] = "Subject: s\r\nContent-Type: text/plain\r\nbody line\r\n"
                                 "more body\r\nContent-ID: <in-body@x>\r\n";
    static const struct want_header want_no_sep[] = {{"Subject", "s"},
                                                     {"Content-Type", "text/plain"}};
    check_headers("no empty line", no_sep, sizeof no_sep - 1, want_no_sep, 2);

    /* malformed: a stray line (dropped, as GMime does), an 8-bit value, a NUL in a value, a
     * continuation line, white space before the colon, an mbox From line */
    static const char bad[] = "From x@y Mon Jan  1 00:00:00 2024\r\n"
                              "Subject: a\r\n"
                              "stray line without a colon\r\n"
                              "Content-Type : text/plain;\r\n\tcharset=\"utf-8\"\r\n"
                              "X-8bit: caf\xC3\xA9\r\n"
                              "Content-Description: nul\0here\r\n"
                              "X-Last: z\r\n"
                              "\r\nbody\r\n";
    static const struct want_header want_bad[] = {
        {"Subject", "a"},
        {"Content-Type", "text/plain;\tcharset=\"utf-8\""},
        {"X-8bit", "café"},
        {"Content-Description", NULL},
        {"X-Last", "z"},
    };
    check_headers("malformed", bad, sizeof bad - 1, want_bad, G_N_ELEMENTS(want_bad));

    /* message/rfc822 at the top level: its Content-* are top-level, the inner message's not */
    static const char fwd[] = "Subject: outer\r\nContent-Type: message/rfc822\r\n"
                              "X-After: 1\r\n\r\n"
                              "Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner body\r\n";
    static const struct want_header want_fwd[] = {
        {"Subject", "outer"}, {"Content-Type", "message/rfc822"}, {"X-After", "1"}};
    check_headers("message/rfc822", fwd, sizeof fwd - 1, want_fwd, 3);
}

/* A part whose header block has no empty line keeps its body (prescan inserts one for GMime). */
static void test_part_header_without_blank_line(void)
{
    static const char msg[] =
        "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"q\"\r\n\r\n"
        "--q\r\nContent-Type: text/plain\r\n\r\nOne.\r\n"
        "--q\r\nContent-Type: application/zip; name=\"z.zip\"\r\nContent-Transfer-Encoding: base64\r\n"
        "UEsDBA==\r\n\r\n--q--\r\n";
    struct message *m = message_parse((const uint8_t *)msg, sizeof msg - 1);
    CHECK(message_attachment_count(m) == 1, "the attachment is kept");
    if (message_attachment_count(m) == 1) {
        CHECK_STR(message_attachment(m, 0)->name, "z.zip", "its name");
        CHECK(message_attachment(m, 0)->size == 4, "its decoded size");
    }
    bool warned = false;
    for (size_t i = 0; i < message_warning_count(m); i++)
        warned |= strstr(message_warning(m, i), "no empty line after a part header") != NULL;
    CHECK(warned, "warning says what happened");
    message_free(m);
}

int main(void)
{
    message_lib_init();
    test_html2text();
    test_reserved();
    test_sanitize();
    test_header_decode();
    test_mostly_utf8();
    test_part_header_without_blank_line();
    test_top_level_headers();
    test_attachments_and_json();
    test_header_limits();
    test_long_field();
    test_many_parts();
    test_deep_nesting();
    message_lib_shutdown();
    return check_done();
}
