/* tests/api/test_form.c — api/form.c (urlencoded and multipart bodies, query strings) and the
 * authentication helpers of api/auth.c (constant-time compare, Basic credentials).
 *
 * Table-driven: each case is a Content-Type and a body, and the fields expected ("name=value"
 * lines, file fields as "name{filename;content type}=value") or the error status and a piece of
 * the message.  Every multipart case runs twice, as written (CRLF) and with every CRLF turned
 * into a bare LF. */
#include <glib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal_form.h"
#include "api/internal.h"
#include "check.h"
#include "util/limits.h"

/* The fields as text: one "name=value\n" per field; a file field "name{file;type}=value";
 * bytes outside printable ASCII as \xNN. */
static char *dump(const struct form *f)
{
    GString *out = g_string_new(NULL);
    for (size_t i = 0; i < f->n; i++) {
        const struct form_field *fld = &f->fields[i];
        g_string_append(out, fld->name);
        if (fld->filename || fld->content_type)
            g_string_append_printf(out, "{%s;%s}", fld->filename ? fld->filename : "-",
                                   fld->content_type ? fld->content_type : "-");
        g_string_append_c(out, '=');
        for (size_t k = 0; k < fld->len; k++) {
            unsigned char c = (unsigned char)fld->value[k];
            if (c >= 0x20 && c < 0x7f && c != '\\')
                g_string_append_c(out, (char)c);
            else
                g_string_append_printf(out, "\\x%02x", c);
        }
        if (fld->value[fld->len] != '\0') g_string_append(out, "<no NUL after the value>");
        g_string_append_c(out, '\n');
    }
    return g_string_free(out, FALSE);
}

struct form_case {
    const char *what;
    const char *ctype;
    const char *body;
    size_t len;              /* 0: strlen(body) */
    enum form_status status;
    const char *want;        /* fields (FORM_OK) or a substring of the error */
    bool lf_too;             /* multipart: run again with bare LF line ends */
};

#define MP "multipart/form-data; boundary=XyZ"

static const struct form_case cases[] = {
    /* ---- urlencoded ---- */
    {"urlencoded: simple", "application/x-www-form-urlencoded", "a=1&b=2", 0, FORM_OK,
     "a=1\nb=2\n", false},
    {"urlencoded: repeated in order", "application/x-www-form-urlencoded",
     "action=forward(%22http%3A%2F%2Fx%2F%22)&action=stop()&priority=1", 0, FORM_OK,
     "action=forward(\"http://x/\")\naction=stop()\npriority=1\n", false},
    {"urlencoded: a[] and a[N]", "application/x-www-form-urlencoded",
     "action[]=one&action[0]=two&action%5B12%5D=three&a[b]=kept&[]=x&c[x1]=y", 0, FORM_OK,
     "action=one\naction=two\naction=three\na[b]=kept\n[]=x\nc[x1]=y\n", false},
    {"urlencoded: + is a space, %2B a plus", "application/x-www-form-urlencoded; charset=UTF-8",
     "description=hello+world+%2B+more&x+y=1", 0, FORM_OK, "description=hello world + more\nx y=1\n", false},
    {"urlencoded: empty values and pieces", "application/x-www-form-urlencoded",
     "a=&b&&c=3&", 0, FORM_OK, "a=\nb=\nc=3\n", false},
    {"urlencoded: value with = inside", "application/x-www-form-urlencoded", "e=a=b==c", 0,
     FORM_OK, "e=a=b==c\n", false},
    {"urlencoded: UTF-8 and NUL in a value", "application/x-www-form-urlencoded",
     "d=%C3%BC%00z", 0, FORM_OK, "d=\\xc3\\xbc\\x00z\n", false},
    {"urlencoded: %zz", "application/x-www-form-urlencoded", "a=1&b=%zz", 0, FORM_ERR_SYNTAX,
     "Invalid percent-encoding in field 2", false},
    {"urlencoded: truncated %", "application/x-www-form-urlencoded", "a=%4", 0, FORM_ERR_SYNTAX,
     "percent-encoding", false},
    {"urlencoded: % at the end", "application/x-www-form-urlencoded", "a=%", 0, FORM_ERR_SYNTAX,
     "percent-encoding", false},
    {"urlencoded: NUL in a name", "application/x-www-form-urlencoded", "a%00b=1", 0,
     FORM_ERR_SYNTAX, "NUL", false},
    {"urlencoded: empty name", "application/x-www-form-urlencoded", "=1", 0, FORM_ERR_SYNTAX,
     "empty name", false},
    {"empty body, no type", NULL, "", 0, FORM_OK, "", false},
    {"empty body, urlencoded", "application/x-www-form-urlencoded", "", 0, FORM_OK, "", false},
    {"body without a type", NULL, "a=1", 0, FORM_ERR_TYPE, "Content-Type", false},
    {"JSON body", "application/json", "{}", 0, FORM_ERR_TYPE, "Unsupported Content-Type", false},
    {"type is case-insensitive", "Application/X-WWW-Form-URLEncoded", "a=1", 0, FORM_OK, "a=1\n", false},

    /* ---- multipart ---- */
    {"multipart: two fields and a repeat", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"expression\"\r\n\r\ncatch_all()\r\n"
     "--XyZ\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nstop()\r\n"
     "--XyZ\r\ncontent-disposition: form-data; name=action\r\n\r\nforward(\"a@b.c\")\r\n"
     "--XyZ--\r\n",
     0, FORM_OK, "expression=catch_all()\naction=stop()\naction=forward(\"a@b.c\")\n", true},
    {"multipart: quoted boundary with specials", "multipart/form-data; boundary=\"a:b c=d\"",
     "--a:b c=d\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--a:b c=d--", 0,
     FORM_OK, "x=1\n", true},
    {"multipart: boundary parameter among others", "multipart/form-data; charset=utf-8; BOUNDARY=XyZ",
     "--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--XyZ--\r\n", 0, FORM_OK,
     "x=1\n", true},
    {"multipart: preamble, epilogue, transport padding", MP,
     "This is the preamble.\r\n--XyZ \t\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n"
     "A\r\n--XyZ--\r\nthe epilogue\r\n--XyZ\r\nignored\r\n",
     0, FORM_OK, "a=A\n", true},
    {"multipart: empty value and empty part body", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n\r\n"
     "--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n--XyZ--",
     0, FORM_OK, "e=\nf=\n", true},
    {"multipart: file part, filename and type kept", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"message\"; filename=\"m.eml\"\r\n"
     "Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n--XyZ\r\n"
     "Content-Disposition: form-data; name=\"recipient\"\r\n\r\nx@example.com\r\n--XyZ--\r\n",
     0, FORM_OK,
     "message{m.eml;message/rfc822}=Subject: hi\\x0d\\x0a\\x0d\\x0abody\nrecipient=x@example.com\n", false},
    {"multipart: binary content with CR, LF, NUL and boundary look-alikes", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"bin\"; filename=\"\"\r\n\r\n"
     "\x00\r\n\r--XyZa\n--XyZx\r\n--Xy\r\n\x00\r\n--XyZ--",
     /* strlen would stop at the NUL */
     sizeof "--XyZ\r\nContent-Disposition: form-data; name=\"bin\"; filename=\"\"\r\n\r\n"
            "\x00\r\n\r--XyZa\n--XyZx\r\n--Xy\r\n\x00\r\n--XyZ--" - 1,
     FORM_OK, "bin{;-}=\\x00\\x0d\\x0a\\x0d--XyZa\\x0a--XyZx\\x0d\\x0a--Xy\\x0d\\x0a\\x00\n", false},
    {"multipart: quoted name and filename with escapes", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"a;b\"; filename=\"C:\\dir\\\"q\\\".txt\"\r\n\r\n"
     "v\r\n--XyZ--",
     0, FORM_OK, "a;b{C:\\dir\"q\".txt;-}=v\n", false},
    {"multipart: action[] and action[1]", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"action[]\"\r\n\r\nx\r\n"
     "--XyZ\r\nContent-Disposition: form-data; name=\"action[1]\"\r\n\r\ny\r\n--XyZ--",
     0, FORM_OK, "action=x\naction=y\n", true},
    {"multipart: folded header", MP,
     "--XyZ\r\nContent-Disposition: form-data;\r\n name=\"folded\"\r\n\r\nv\r\n--XyZ--",
     0, FORM_OK, "folded=v\n", true},
    {"multipart: no closing boundary", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nA\r\n", 0, FORM_ERR_SYNTAX,
     "no closing boundary", true},
    {"multipart: cut inside the last part", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nA\r\n--XyZ\r\n"
     "Content-Disposition: form-data; name=\"b\"\r\n\r\nB", 0, FORM_ERR_SYNTAX,
     "no closing boundary", true},
    {"multipart: boundary never appears", MP, "hello", 0, FORM_ERR_SYNTAX,
     "does not contain its boundary", false},
    {"multipart: only the closing delimiter", MP, "--XyZ--\r\n", 0, FORM_OK, "", true},
    {"multipart: no boundary parameter", "multipart/form-data", "--x--", 0, FORM_ERR_TYPE,
     "boundary", false},
    {"multipart: part without a name", MP,
     "--XyZ\r\nContent-Type: text/plain\r\n\r\nA\r\n--XyZ--", 0, FORM_ERR_SYNTAX,
     "Part 1 has no Content-Disposition name", true},
    {"multipart: not form-data", MP,
     "--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nA\r\n--XyZ--", 0,
     FORM_ERR_SYNTAX, "not form-data", false},
    {"multipart: header line without a colon", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nbogus\r\n\r\nA\r\n--XyZ--", 0,
     FORM_ERR_SYNTAX, "malformed header line", false},
    {"multipart: unterminated quoted name", MP,
     "--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\nA\r\n--XyZ--", 0, FORM_ERR_SYNTAX,
     "malformed or too long name", false},
};

static char *crlf_to_lf(const char *s, size_t len, size_t *outlen)
{
    char *out = malloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n') continue;
        out[o++] = s[i];
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

static void run_case(const struct form_case *c, const char *body, size_t len, const char *how)
{
    struct form f = {0};
    char *err = NULL;
    enum form_status st = api_form_parse(&f, c->ctype, (const uint8_t *)body, len, &err);
    if (c->status == FORM_OK) {
        char *got = dump(&f);
        CHECK(st == FORM_OK, "%s%s: parses (%s)", c->what, how, err ? err : "");
        CHECK_STR(got, c->want, "%s%s: fields", c->what, how);
        g_free(got);
    } else {
        CHECK(st == c->status, "%s%s: status %d (got %d)", c->what, how, c->status, st);
        CHECK(err && strstr(err, c->want), "%s%s: message has \"%s\" (%s)", c->what, how, c->want,
              err ? err : "(null)");
    }
    free(err);
    api_form_free(&f);
}

static void test_cases(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        const struct form_case *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->body);
        run_case(c, c->body, len, "");
        if (c->lf_too) {
            size_t lflen;
            char *lf = crlf_to_lf(c->body, len, &lflen);
            run_case(c, lf, lflen, " (LF only)");
            free(lf);
        }
    }
}

/* A NUL inside a multipart body given with an explicit length (the table uses strlen). */
static void test_multipart_nul_value(void)
{
    static const char body[] = "--b\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\na\0b\r\n--b--";
    struct form f = {0};
    char *err = NULL;
    enum form_status st = api_form_parse(&f, "multipart/form-data; boundary=b", (const uint8_t *)body,
                                         sizeof body - 1, &err);
    CHECK(st == FORM_OK && f.n == 1 && f.fields[0].len == 3 && memcmp(f.fields[0].value, "a\0b", 3) == 0,
          "multipart: NUL inside a value kept, len 3");
    free(err);
    api_form_free(&f);
}

static void test_limits(void)
{
    GString *b = g_string_new(NULL);
    struct form f = {0};
    char *err = NULL;

    for (int i = 0; i < FORM_FIELDS_MAX; i++) g_string_append_printf(b, "f%d=%d&", i, i);
    CHECK(api_form_parse_urlencoded(&f, (const uint8_t *)b->str, b->len, &err) == FORM_OK &&
              f.n == FORM_FIELDS_MAX,
          "urlencoded: %d fields accepted", FORM_FIELDS_MAX);
    api_form_free(&f);
    g_string_append(b, "one=more");
    CHECK(api_form_parse_urlencoded(&f, (const uint8_t *)b->str, b->len, &err) == FORM_ERR_LIMIT &&
              err && strstr(err, "Too many fields"),
          "urlencoded: %d + 1 fields refused (%s)", FORM_FIELDS_MAX, err ? err : "");
    api_form_free(&f);
    free(err);
    err = NULL;

    g_string_truncate(b, 0);
    for (int i = 0; i < FORM_NAME_MAX; i++) g_string_append_c(b, 'n');
    g_string_append(b, "=v");
    CHECK(api_form_parse_urlencoded(&f, (const uint8_t *)b->str, b->len, &err) == FORM_OK,
          "name of %d bytes accepted", FORM_NAME_MAX);
    api_form_free(&f);
    g_string_insert_c(b, 0, 'n');
    CHECK(api_form_parse_urlencoded(&f, (const uint8_t *)b->str, b->len, &err) == FORM_ERR_LIMIT &&
              err && strstr(err, "Field name longer"),
          "name of %d bytes refused", FORM_NAME_MAX + 1);
    api_form_free(&f);
    free(err);
    err = NULL;

    /* A name that is long only once percent-encoded is fine. */
    g_string_truncate(b, 0);
    for (int i = 0; i < FORM_NAME_MAX; i++) g_string_append(b, "%41");
    CHECK(api_form_parse_urlencoded(&f, (const uint8_t *)b->str, b->len, &err) == FORM_OK,
          "percent-encoded name of %d bytes accepted", FORM_NAME_MAX);
    api_form_free(&f);

    /* Parts. */
    g_string_truncate(b, 0);
    for (int i = 0; i <= FORM_PARTS_MAX; i++)
        g_string_append(b, "--B\r\nContent-Disposition: form-data; name=p\r\n\r\nv\r\n");
    g_string_append(b, "--B--\r\n");
    CHECK(api_form_parse(&f, "multipart/form-data; boundary=B", (const uint8_t *)b->str, b->len,
                         &err) == FORM_ERR_LIMIT && err &&
              (strstr(err, "Too many parts") || strstr(err, "Too many fields")),
          "multipart: %d parts refused (%s)", FORM_PARTS_MAX + 1, err ? err : "");
    api_form_free(&f);
    free(err);
    err = NULL;

    /* Part headers. */
    g_string_truncate(b, 0);
    g_string_append(b, "--B\r\nContent-Disposition: form-data; name=p\r\nX-Big: ");
    for (int i = 0; i < FORM_PART_HEADERS_MAX; i++) g_string_append_c(b, 'x');
    g_string_append(b, "\r\n\r\nv\r\n--B--");
    CHECK(api_form_parse(&f, "multipart/form-data; boundary=B", (const uint8_t *)b->str, b->len,
                         &err) == FORM_ERR_LIMIT && err && strstr(err, "bytes of headers"),
          "multipart: headers over %d bytes refused", FORM_PART_HEADERS_MAX);
    api_form_free(&f);
    free(err);
    err = NULL;

    /* Boundary length. */
    g_string_assign(b, "multipart/form-data; boundary=");
    for (int i = 0; i <= FORM_BOUNDARY_MAX; i++) g_string_append_c(b, 'b');
    CHECK(api_form_parse(&f, b->str, (const uint8_t *)"x", 1, &err) == FORM_ERR_TYPE,
          "boundary over %d bytes refused", FORM_BOUNDARY_MAX);
    api_form_free(&f);
    free(err);
    g_string_free(b, TRUE);
}

static void test_accessors(void)
{
    struct form f = {0};
    char *err = NULL;
    const char *q = "action=a&x=1&action[]=b";
    api_form_parse_urlencoded(&f, (const uint8_t *)q, strlen(q), &err);
    CHECK(api_form_count(&f, "action") == 2, "api_form_count");
    CHECK_STR(api_form_value(&f, "action"), "a", "api_form_value: the first");
    CHECK(api_form_value(&f, "nope") == NULL, "api_form_value: absent");
    CHECK(api_form_get(&f, "x") && api_form_get(&f, "x")->len == 1, "api_form_get");
    CHECK(api_form_name_normalised_len("a[]", 3) == 1 && api_form_name_normalised_len("a[10]", 5) == 1 &&
              api_form_name_normalised_len("[]", 2) == 2 && api_form_name_normalised_len("a[b]", 4) == 4 &&
              api_form_name_normalised_len("a]", 2) == 2,
          "api_form_name_normalised_len");
    /* Parsing appends: a second form goes after the first. */
    api_form_parse_urlencoded(&f, (const uint8_t *)"y=2", 3, &err);
    CHECK(f.n == 4 && strcmp(f.fields[3].name, "y") == 0, "parse appends");
    api_form_free(&f);
    CHECK(f.n == 0 && f.fields == NULL, "api_form_free empties");
    free(err);
}

static char *basic(const char *userpass)
{
    gchar *b64 = g_base64_encode((const guchar *)userpass, strlen(userpass));
    char *h = g_strdup_printf("Basic %s", b64);
    g_free(b64);
    return h;
}

static void test_auth(void)
{
    struct api_auth auth;
    static const char key[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    CHECK(api_ct_equal("abcd", "abcd", 4), "ct_equal: equal");
    CHECK(!api_ct_equal("abcd", "abce", 4), "ct_equal: last byte differs");
    CHECK(!api_ct_equal("xbcd", "abcd", 4), "ct_equal: first byte differs");
    CHECK(api_ct_equal("", "", 0), "ct_equal: empty");

    api_auth_init(&auth, key);
    struct {
        const char *header;
        bool ok;
    } hdrs[] = {
        {NULL, false},
        {"", false},
        {"Bearer x", false},
        {"Basic", false},
        {"Basic !!!!", false},
        {"Basic YXBp", false}, /* "api" without a colon */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(hdrs); i++)
        CHECK(api_auth_check(&auth, hdrs[i].header) == hdrs[i].ok, "auth: \"%s\"",
              hdrs[i].header ? hdrs[i].header : "(none)");
    char *h = basic("api:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    CHECK(api_auth_check(&auth, h), "auth: api and the key");
    g_free(h);
    h = basic("api:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    char *spaced = g_strdup_printf("  basic   %s  ", h + 6);
    g_free(h);
    h = spaced;
    CHECK(api_auth_check(&auth, h), "auth: scheme case-insensitive, spaces around");
    g_free(h);
    const char *bad[] = {
        "api:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeF",
        "api:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
        "api:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
        "API:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "user:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "api:",
        ":0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        h = basic(bad[i]);
        CHECK(!api_auth_check(&auth, h), "auth refused: %s", bad[i]);
        g_free(h);
    }
    /* A password holding a colon is fine (only the user cannot). */
    api_auth_init(&auth, "pa:ss");
    h = basic("api:pa:ss");
    CHECK(api_auth_check(&auth, h), "auth: password with a colon");
    g_free(h);
}

int main(void)
{
    test_cases();
    test_multipart_nul_value();
    test_limits();
    test_accessors();
    test_auth();
    return check_done();
}
