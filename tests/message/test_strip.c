/* tests/message/test_strip.c — reply stripping (message/internal_strip.h).
 *
 * argv[1] is tests/message/strip/: every NAME.txt is compared exactly with NAME.text.out and
 * NAME.signature.out, every NAME.html with NAME.html.out (see strip/README.md).  Then
 * table-driven small cases, odd input, and a large input that must finish (no timing assert). */
#include "message/internal_strip.h"

#include "check.h"

#include <glib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *dir, const char *name, const char *suffix)
{
    char *path = g_strdup_printf("%s/%s%s", dir, name, suffix);
    char *data = NULL;
    if (!g_file_get_contents(path, &data, NULL, NULL)) data = NULL;
    g_free(path);
    return data;
}

static void check_text_fixture(const char *dir, const char *base)
{
    char *in = read_file(dir, base, ".txt");
    char *want_text = read_file(dir, base, ".text.out");
    char *want_sig = read_file(dir, base, ".signature.out");
    CHECK(in && want_text && want_sig, "%s: .txt, .text.out and .signature.out present", base);
    if (in && want_text && want_sig) {
        char *text, *sig;
        msg_strip_text(in, &text, &sig);
        CHECK_STR(text, want_text, "%s: stripped-text", base);
        CHECK_STR(sig, want_sig, "%s: stripped-signature", base);
        free(text);
        free(sig);
    }
    g_free(in);
    g_free(want_text);
    g_free(want_sig);
}

static void check_html_fixture(const char *dir, const char *base)
{
    char *in = read_file(dir, base, ".html");
    char *want = read_file(dir, base, ".html.out");
    CHECK(in && want, "%s: .html and .html.out present", base);
    if (in && want) {
        char *got = msg_strip_html(in);
        CHECK_STR(got, want, "%s: stripped-html", base);
        free(got);
    }
    g_free(in);
    g_free(want);
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_fixtures(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    CHECK(d != NULL, "fixture directory %s opens", dir);
    if (!d) return;
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    const char *n;
    while ((n = g_dir_read_name(d)))
        if (g_str_has_suffix(n, ".txt") || g_str_has_suffix(n, ".html"))
            g_ptr_array_add(names, g_strdup(n));
    g_dir_close(d);
    qsort(names->pdata, names->len, sizeof(char *), compare_names);
    size_t text = 0, html = 0;
    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        bool is_txt = g_str_has_suffix(name, ".txt");
        char *base = g_strndup(name, strlen(name) - (is_txt ? 4 : 5));
        if (is_txt) {
            check_text_fixture(dir, base);
            text++;
        } else {
            check_html_fixture(dir, base);
            html++;
        }
        g_free(base);
    }
    CHECK(text >= 16 && html >= 10, "fixtures found: %zu text, %zu html", text, html);
    g_ptr_array_free(names, TRUE);
}

struct text_case {
    const char *name, *in, *text, *sig;
};

static const struct text_case text_cases[] = {
    {.name = "empty", .in = "", .text = "", .sig = ""},
    {.name = "no trailing newline", .in = "hello", .text = "hello", .sig = ""},
    {.name = "only blank lines", .in = "\n \r\n\t\n", .text = "", .sig = ""},
    {.name = "only a quote", .in = "> a\n> b\n", .text = "", .sig = ""},
    {.name = "bottom-posted reply after the quote",
     .in = "On Tue, Nov 3, 2026 at 10:02 AM Alice <a@example.com> wrote:\n> q1\n> q2\n\nanswer\n\n"
           "-- \nBob\n",
     .text = "answer", .sig = "-- \nBob"},
    {.name = "CR-only line endings",
     .in = "Hi\r\rOn Tue, Nov 3, 2026 at 10:02 AM Alice <a@example.com> wrote:\r\r> q\r",
     .text = "Hi", .sig = ""},
    {.name = "bare -- delimiter", .in = "Hi\n--\nBob\n", .text = "Hi", .sig = "--\nBob"},
    {.name = "bare -- far from the end is text",
     .in = "a\n--\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n",
     .text = "a\n--\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15", .sig = ""},
    {.name = "last -- delimiter wins", .in = "a\n-- \nb\n-- \nc\n", .text = "a\n-- \nb", .sig = "-- \nc"},
    {.name = "Sent from my Android device", .in = "ok\n\nSent from my Android device\n",
     .text = "ok", .sig = "Sent from my Android device"},
    {.name = "Get Outlook for iOS", .in = "ok\r\n\r\nGet Outlook for iOS\r\n", .text = "ok",
     .sig = "Get Outlook for iOS"},
    {.name = "two phone lines", .in = "ok\n\nSent from my iPhone\nGet Outlook for iOS\n",
     .text = "ok", .sig = "Sent from my iPhone\nGet Outlook for iOS"},
    {.name = "Sent from my iPhone not last is text",
     .in = "Sent from my iPhone\nbut more text follows\n",
     .text = "Sent from my iPhone\nbut more text follows", .sig = ""},
    {.name = "Thunderbird 'wrote on'",
     .in = "ok\n\nAlice wrote on 03.11.2026 10:02:\n> q\n", .text = "ok", .sig = ""},
    {.name = "Thunderbird 'Alice wrote:'", .in = "ok\n\nAlice wrote:\n> q\n", .text = "ok", .sig = ""},
    {.name = "attribution without quote after it is text",
     .in = "On Tue, Alice wrote:\nnot quoted\n", .text = "On Tue, Alice wrote:\nnot quoted",
     .sig = ""},
    {.name = "wrapped inside the address",
     .in = "ok\n\nOn Tue, Nov 3, 2026 at 10:02 AM Alice Smith <\nalice@example.com> wrote:\n\n> q\n",
     .text = "ok", .sig = ""},
    {.name = "German header block",
     .in = "ok\n\nVon: Alice <a@example.de>\nGesendet: Dienstag, 3. November 2026 10:02\n"
           "An: Bob <b@example.de>\nBetreff: x\n\nalt\n",
     .text = "ok", .sig = ""},
    {.name = "bold header block from HTML",
     .in = "ok\n\n*From:* Alice <a@example.com>\n*Sent:* Tuesday\n*To:* Bob\n\nold\n",
     .text = "ok", .sig = ""},
    {.name = "a lone From: line is text", .in = "From: the team\nThanks\n",
     .text = "From: the team\nThanks", .sig = ""},
    {.name = "Apple forward kept whole",
     .in = "FYI\n\nBegin forwarded message:\n\n> From: Alice\n", 
     .text = "FYI\n\nBegin forwarded message:\n\n> From: Alice", .sig = ""},
    {.name = "trailing white space and NBSP trimmed", .in = "text \t\xC2\xA0\n\n\n",
     .text = "text", .sig = ""},
    {.name = "invalid UTF-8 passes through", .in = "\xff\xfe ok\n> q\n", .text = "\xff\xfe ok",
     .sig = ""},
    {.name = "Reply Message marker", .in = "ok\n---- Reply Message ----\nold\n", .text = "ok",
     .sig = ""},
};

struct html_case {
    const char *name, *in, *out;
};

static const struct html_case html_cases[] = {
    {.name = "empty", .in = "", .out = ""},
    {.name = "no tags", .in = "plain > text", .out = "plain > text"},
    {.name = "unterminated tag", .in = "<p>a <a href=\"x", .out = "<p>a <a href=\"x"},
    {.name = "lone < at the end", .in = "<p>a</p><", .out = "<p>a</p><"},
    {.name = "hr then From: text",
     .in = "<div>hi</div><hr><div>From: Alice<br>Sent: x</div>", .out = "<div>hi</div>"},
    {.name = "divRplyFwdMsg without hr",
     .in = "<body><p>ok</p>\n<div id=\"divRplyFwdMsg\"><b>From:</b> A</div><p>old</p>\n</body>\n",
     .out = "<body><p>ok</p>\n</body>\n"},
    {.name = "older Outlook border colour",
     .in = "<div><p>ok</p><div style=\"border:none;border-top:solid #B5C4DF 1.0pt;padding:3.0pt 0cm "
           "0cm 0cm\"><p>From: A</p></div><p>old</p></div>",
     .out = "<div><p>ok</p></div>"},
    {.name = "gmail_signature", .in = "<div>hi</div><div class=\"gmail_signature\">sig<div>x</div></div>!",
     .out = "<div>hi</div>!"},
    {.name = "unclosed quote runs to the end", .in = "<p>a</p><blockquote type=\"cite\">old",
     .out = "<p>a</p>"},
    {.name = "quote closed by its parent", .in = "<div><blockquote type=cite>q</div>after",
     .out = "<div></div>after"},
    {.name = "upper-case tags", .in = "<P>a</P><BLOCKQUOTE TYPE=\"CITE\">q</BLOCKQUOTE>b",
     .out = "<P>a</P>b"},
    {.name = "markers in a comment", .in = "<!-- <blockquote type=cite> -->x",
     .out = "<!-- <blockquote type=cite> -->x"},
    {.name = "Original Message inside a text run",
     .in = "<div>Thanks<br>\n-----Original Message-----<br>From: a</div>",
     .out = "<div>Thanks<br>\n</div>"},
    {.name = "only the first quote is removed",
     .in = "a<blockquote type=\"cite\">q1</blockquote>b<blockquote type=\"cite\">q2</blockquote>",
     .out = "ab<blockquote type=\"cite\">q2</blockquote>"},
    {.name = "gmail_quote without text", .in = "a<div class=\"gmail_quote\"><img src=x></div>b",
     .out = "ab"},
    {.name = "stray end tags kept", .in = "</span>a</div>", .out = "</span>a</div>"},
};

static void run_tables(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(text_cases); i++) {
        const struct text_case *c = &text_cases[i];
        char *text, *sig;
        msg_strip_text(c->in, &text, &sig);
        CHECK_STR(text, c->text, "text: %s", c->name);
        CHECK_STR(sig, c->sig, "signature: %s", c->name);
        free(text);
        free(sig);
    }
    for (size_t i = 0; i < G_N_ELEMENTS(html_cases); i++) {
        const struct html_case *c = &html_cases[i];
        char *got = msg_strip_html(c->in);
        CHECK_STR(got, c->out, "html: %s", c->name);
        free(got);
    }
}

static void append_n(GString *s, const char *piece, size_t n)
{
    for (size_t i = 0; i < n; i++) g_string_append(s, piece);
}

/* 5 MB with 100k nested tags, 100k '>' lines and patterns that would make a naive scanner
 * quadratic.  Only that it finishes and gives valid UTF-8 is asserted. */
static void run_large(void)
{
    GString *s = g_string_new(NULL);
    append_n(s, "<div class=\"x\">", 100000);
    append_n(s, "> quoted line \xC3\xA9\n", 100000);
    append_n(s, "On Tue, Alice wrote:\n\n\n\nFrom: a\nSent: b\n", 20000);
    append_n(s, "</span>", 100000);
    append_n(s, "-- ----- - ", 20000);
    append_n(s, "</div>", 100000);
    while (s->len < 5 * 1024 * 1024) g_string_append(s, "<hr><p>text \xE2\x82\xAC</p>\n");
    char *html = msg_strip_html(s->str);
    CHECK(g_utf8_validate(html, -1, NULL), "large html: valid UTF-8 (%zu -> %zu bytes)", s->len,
          strlen(html));
    char *text, *sig;
    msg_strip_text(s->str, &text, &sig);
    CHECK(g_utf8_validate(text, -1, NULL) && g_utf8_validate(sig, -1, NULL),
          "large text: valid UTF-8 (%zu bytes of text)", strlen(text));
    free(html);
    free(text);
    free(sig);

    /* One 4 MB line without a newline, and 1M blank lines. */
    g_string_truncate(s, 0);
    append_n(s, "On ", 1);
    append_n(s, "abcdefgh", 512 * 1024);
    append_n(s, "\n", 1000000);
    append_n(s, "> q", 1);
    msg_strip_text(s->str, &text, &sig);
    CHECK(strlen(text) == 3 + 8 * 512 * 1024 && sig[0] == '\0', "long line kept, blank lines trimmed");
    free(text);
    free(sig);
    html = msg_strip_html(s->str);
    CHECK(strcmp(html, s->str) == 0, "long text in HTML unchanged");
    free(html);
    g_string_free(s, TRUE);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("Bail out! usage: test-strip FIXTURE-DIR\n");
        return 1;
    }
    run_fixtures(argv[1]);
    run_tables();
    run_large();
    return check_done();
}
