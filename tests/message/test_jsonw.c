/* tests/message/test_jsonw.c — message/jsonw.c (msg_json_write) against jansson, byte for byte.
 *
 *   test-jsonw DIR...     unit checks, then every *.eml of every DIR (golden/, post/)
 *   test-jsonw --corpus   every message of the shared corpus (the folder and the skip rule of
 *                         tests/corpus/corpuslib.py: $INLET_CORPUS, else $INLET_CORPUS_DEFAULT,
 *                         its messages/ subfolder if any; absent → TAP "1..0 # SKIP", or a
 *                         failure when $CI is set)
 *
 * For each message and each option set of OPTION_SETS (inline budget 0, small, large; attachments_url
 * NULL, set, non-ASCII, invalid UTF-8; empty, NULL, non-ASCII, escaped and invalid recipient /
 * sender / id) the bytes of msg_json_write must be those of
 * json_dumps(message_to_json(), JSON_COMPACT | JSON_PRESERVE_ORDER), and in the notify variant
 * those of the tree post.c used to edit (jsonw_ref.h); the fixed part of a JSON message_post must
 * be them without the final "}".  One TAP line per message (all its option sets), naming the first
 * difference on failure.
 *
 * The unit checks drive the string writer through the recipient (every byte 0x01..0xFF alone,
 * UTF-8 boundary code points, overlong / surrogate / truncated sequences, random strings) and
 * break the message model's own guarantees (invalid UTF-8 in header names and values, Content-IDs,
 * warnings, NULL fields) to check that the member jansson would drop is dropped here too. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "message/internal.h"
#include "message/jsonw_ref.h"
#include "message/message.h"

#define NOTIFY_URL "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY1"

static const struct message_json_options OPTION_SETS[] = {
    {"Bob@Example.COM", "alice@example.org", "id1", 0, NULL},
    {"Bob@Example.COM", "alice@example.org", "id1", 1000, NULL},
    {"Bob@Example.COM", "alice@example.org", "id1", 100u << 20, NULL},
    {"Bob@Example.COM", "alice@example.org", "id1", 0,
     "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY//"},
    {"Bob@Example.COM", "alice@example.org", "id1", 1000,
     "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY"},
    {"", "", "", 100u << 20, "http://h/m"},
    {NULL, NULL, NULL, 1000, NULL},
    {"jörg@Bücher.DE", "\"q\\\"\"@x\x01\x1f\x7f/\t\b\f\r\n", "ïd\xe2\x82\xac\xf0\x9f\x98\x80", 4096,
     "http://example.com/ü/"},
    {"\xff@\xc3\x28.COM", "\xed\xa0\x80@x\xc0\x80", "\xf5", 1000, "http://h/\xfe/"},
    {"a@b", "c@d", "e", SIZE_MAX, NULL},
};

/* 0 when every option set (and notify) gives the reference bytes; else 1 with *why set. */
static int compare_all(const struct message *m, char **why)
{
    *why = NULL;
    for (size_t k = 0; k < G_N_ELEMENTS(OPTION_SETS) + 2; k++) {
        const struct message_json_options *o = &OPTION_SETS[k < G_N_ELEMENTS(OPTION_SETS) ? k
                                                             : k == G_N_ELEMENTS(OPTION_SETS) ? 0 : 8];
        const char *murl = k < G_N_ELEMENTS(OPTION_SETS) ? NULL
                           : k == G_N_ELEMENTS(OPTION_SETS) ? NOTIFY_URL : "http://h/\xff/n\x01";
        char *want = jsonw_ref(m, o, murl);
        size_t len;
        char *got = jsonw_new(m, o, murl, &len);
        char *d = jsonw_diff(got, len, want);
        if (!d) { /* and the JSON POST's fixed part */
            const struct message_post_options po = {.json = *o, .message_url = murl};
            struct message_post *p = message_post_new(m, NULL, 0, MESSAGE_POST_JSON, &po);
            GString *fixed = g_string_new(NULL);
            for (size_t i = 0; p && i < message_post_segment_count(p); i++) {
                struct message_post_segment s = message_post_segment(p, i);
                g_string_append_len(fixed, (const char *)s.data, (gssize)s.len);
            }
            g_string_append_c(fixed, '}');
            if (!p || message_post_fixed_len(p) + 1 != fixed->len)
                d = g_strdup("message_post_new: NULL or a bad fixed length");
            else if ((d = jsonw_diff(fixed->str, fixed->len, want)) != NULL) {
                char *t = g_strdup_printf("message_post fixed part: %s", d);
                g_free(d);
                d = t;
            }
            g_string_free(fixed, TRUE);
            message_post_free(p);
        }
        free(want);
        g_free(got);
        if (d) {
            *why = g_strdup_printf("option set %zu%s: %s", k, murl ? " (notify)" : "", d);
            g_free(d);
            return 1;
        }
    }
    return 0;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    gchar *d = NULL;
    gsize n = 0;
    if (!g_file_get_contents(path, &d, &n, NULL)) return NULL;
    *len = n;
    return (uint8_t *)d;
}

static void check_file(const char *path)
{
    size_t len;
    uint8_t *data = read_all(path, &len);
    if (!data) {
        CHECK(0, "%s: cannot read", path);
        return;
    }
    struct message *m = message_parse(data, len);
    char *why = NULL;
    int bad = m ? compare_all(m, &why) : 1;
    CHECK(!bad, "%s: msg_json_write == json_dumps(message_to_json) for %zu option sets + notify", path,
          G_N_ELEMENTS(OPTION_SETS));
    if (bad) printf("#   %s\n", why ? why : "message_parse returned NULL");
    g_free(why);
    message_free(m);
    g_free(data);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted paths of the regular files of dir (no dot files; `all`: every name, else *.eml only). */
static GPtrArray *list_dir(const char *dir, bool all)
{
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
    DIR *d = opendir(dir);
    if (!d) return files;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (all ? strcmp(e->d_name, "README.md") == 0 || strcmp(e->d_name, "MANIFEST.tsv") == 0
                : !g_str_has_suffix(e->d_name, ".eml"))
            continue;
        char *p = g_build_filename(dir, e->d_name, NULL);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            g_ptr_array_add(files, p);
        else
            g_free(p);
    }
    closedir(d);
    qsort(files->pdata, files->len, sizeof(gpointer), cmp_str);
    return files;
}

/* ---- unit checks ----------------------------------------------------------------------------- */

static const char SMALL[] =
    "From: A <a@example.com>\r\nTo: b@example.com\r\nSubject: s\r\nMessage-ID: <x@y>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=\"B\"\r\n\r\n"
    "--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi <img src=\"cid:a@x\"></p>\r\n"
    "--B\r\nContent-Type: image/png; name=\"a.png\"\r\nContent-ID: <a@x>\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
    "--B\r\nContent-Type: image/gif; name=\"b.gif\"\r\nContent-ID: <a@x>\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\nR0lGODlh\r\n"
    "--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=c.pdf\r\n"
    "Content-ID: <c@x>\r\n\r\n%PDF\r\n"
    "--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"\"\r\n\r\n"
    "\r\n--B--\r\n";

/* The recipient `r` through both writers (it lands in "recipient" and "domain"). */
static bool same_with_recipient(const struct message *m, const char *r, char **why)
{
    struct message_json_options o = {.recipient = r, .sender = r, .id = r,
                                     .inline_attachments_max = 3, .attachments_url = r};
    char *want = jsonw_ref(m, &o, NULL);
    size_t len;
    char *got = jsonw_new(m, &o, NULL, &len);
    *why = jsonw_diff(got, len, want);
    free(want);
    g_free(got);
    return *why == NULL;
}

static void check_strings(const struct message *m)
{
    char *why = NULL;
    /* every byte alone, and in the middle of text */
    int bad = 0;
    for (int c = 1; c < 256 && !bad; c++) {
        char s[8] = {(char)c, 0};
        char t[8] = {'a', (char)c, 'b', '@', 'c', (char)c, 0};
        bad = !same_with_recipient(m, s, &why) || !same_with_recipient(m, t, &why);
    }
    CHECK(!bad, "every byte 0x01..0xFF alone and inside text");
    if (why) printf("#   %s\n", why);
    g_free(why);
    why = NULL;

    static const char *const seqs[] = {
        "\x7f", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xee\x80\x80",
        "\xef\xbf\xbd", "\xef\xbf\xbe", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf",
        "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf",
        "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff",
        "\xe2\x82", "\xe2", "\xf0\x9f\x98", "\x80", "\xbf\xbf", "a\xe2\x82\xac\xe2\x82",
        "\"\\/\b\f\n\r\t\x1f\x0b", "</script>", "\xe2\x80\xa8\xe2\x80\xa9",
        "x\xc3(\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc", "\xf8\x88\x80\x80\x80", "\xfc\x84\x80\x80\x80\x80",
    };
    bad = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(seqs) && !bad; i++) {
        bad = !same_with_recipient(m, seqs[i], &why);
        if (bad) printf("#   sequence %zu\n", i);
    }
    CHECK(!bad, "UTF-8 boundary code points, overlong, surrogate, truncated, out-of-range sequences");
    if (why) printf("#   %s\n", why);
    g_free(why);
    why = NULL;

    /* random strings over an alphabet that makes every case likely */
    static const unsigned char alpha[] = {'a', '@', '.', 'Z', '"', '\\', '/', 0x01, 0x08, 0x09, 0x0a,
                                          0x0c, 0x0d, 0x1f, 0x20, 0x7f, 0x80, 0xa0, 0xbf, 0xc0,
                                          0xc2, 0xdf, 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff};
    GRand *rnd = g_rand_new_with_seed(12345);
    bad = 0;
    for (int n = 0; n < 3000 && !bad; n++) {
        char s[24];
        int l = g_rand_int_range(rnd, 0, (gint32)sizeof s);
        for (int i = 0; i < l; i++) s[i] = (char)alpha[g_rand_int_range(rnd, 0, sizeof alpha)];
        s[l] = 0;
        bad = !same_with_recipient(m, s, &why);
    }
    g_rand_free(rnd);
    CHECK(!bad, "3000 random strings");
    if (why) printf("#   %s\n", why);
    g_free(why);
}

/* Breaks the model's guarantees where jansson refuses a value without repair (or with). */
static void check_broken_model(void)
{
    struct message *m = message_parse((const uint8_t *)SMALL, sizeof SMALL - 1);
    CHECK(m && message_attachment_count(m) == 4 && message_header_count(m) >= 5,
          "the multipart/related test message parses (4 attachments)");
    if (!m || message_attachment_count(m) != 4 || message_header_count(m) < 5) {
        message_free(m);
        return;
    }
    char *why = NULL;
    CHECK(!compare_all(m, &why), "test message: same bytes for every option set");
    if (why) printf("#   %s\n", why);
    g_free(why);

    struct message_header_rec *h = &g_array_index(m->headers, struct message_header_rec, 0);
    g_free(h->value);
    h->value = g_strdup("bad \xff value");
    h = &g_array_index(m->headers, struct message_header_rec, 2);
    g_free(h->name);
    h->name = g_strdup("Bad\xc0\x80Name");
    h = &g_array_index(m->headers, struct message_header_rec, 3);
    g_free(h->value);
    h->value = g_strdup("ctl \x01\x1f \"q\" \\ \xe2\x82\xac");
    /* the first <a@x> now invalid: jansson drops it, and the second <a@x> is then the first */
    struct message_attachment_rec *a =
        &g_array_index(m->attachments, struct message_attachment_rec, 0);
    g_free(a->content_id);
    a->content_id = g_strdup("<a\xff@x>");
    a->pub.content_id = a->content_id;
    g_free(a->name);
    a->name = g_strdup("n\xed\xa0\x80.png");
    a->pub.name = a->name;
    a = &g_array_index(m->attachments, struct message_attachment_rec, 2);
    g_free(a->content_id);
    a->content_id = g_strdup("<\"c\"\\\x01@x\xe2\x82\xac>");
    a->pub.content_id = a->content_id;
    g_ptr_array_add(m->warnings, g_strdup("warning \xfe with bad byte"));
    g_ptr_array_add(m->warnings, g_strdup("\x01\x02"));
    g_free(m->subject);
    m->subject = NULL;
    g_free(m->body_plain);
    m->body_plain = g_strdup("plain \xf0\x28\x8c\x28 text\r\n");
    CHECK(!compare_all(m, &why),
          "invalid UTF-8 in a header name / value, Content-ID, filename, warning, NULL subject");
    if (why) printf("#   %s\n", why);
    g_free(why);

    /* a header with a NULL name and value: json_pack refuses NULL */
    h = &g_array_index(m->headers, struct message_header_rec, 1);
    char *keep = h->value;
    h->value = NULL;
    CHECK(!compare_all(m, &why), "a NULL header value is dropped like json_pack drops it");
    if (why) printf("#   %s\n", why);
    g_free(why);
    h->value = keep;
    message_free(m);
}

/* Attachments of 0..40 random bytes and a few bigger ones: every base64 tail (len % 3), the
 * inline budget crossed at different points. */
static void check_base64(void)
{
    GRand *rnd = g_rand_new_with_seed(777);
    GString *eml = g_string_new("From: a@b\r\nSubject: b64\r\nMIME-Version: 1.0\r\n"
                                "Content-Type: multipart/mixed; boundary=\"Z\"\r\n\r\n"
                                "--Z\r\nContent-Type: text/plain\r\n\r\nbody\r\n");
    static const size_t big[] = {997, 998, 999, 3000, 4096, 65537};
    for (size_t k = 0; k < 41 + G_N_ELEMENTS(big); k++) {
        size_t n = k < 41 ? k : big[k - 41];
        guchar *d = g_malloc(n + 1);
        for (size_t i = 0; i < n; i++) d[i] = (guchar)g_rand_int_range(rnd, 0, 256);
        gchar *b = g_base64_encode(d, n);
        g_string_append_printf(eml, "--Z\r\nContent-Type: application/octet-stream\r\n"
                               "Content-Disposition: attachment; filename=\"f%zu.bin\"\r\n"
                               "Content-ID: <f%zu@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                               "%s\r\n", k, k % 7, b);
        g_free(b);
        g_free(d);
    }
    g_string_append(eml, "--Z--\r\n");
    g_rand_free(rnd);
    struct message *m = message_parse((const uint8_t *)eml->str, eml->len);
    size_t inlined_all = 0;
    for (size_t i = 0; m && i < message_attachment_count(m); i++)
        inlined_all += message_attachment(m, i)->size;
    CHECK(m && message_attachment_count(m) == 41 + G_N_ELEMENTS(big),
          "base64 test message: %zu attachments", m ? message_attachment_count(m) : 0);
    char *why = NULL;
    CHECK(m && !compare_all(m, &why), "attachments of 0..40 and 997..65537 bytes (every base64 tail)");
    if (why) printf("#   %s\n", why);
    g_free(why);
    why = NULL;
    /* budgets that end inlining at each attachment */
    int bad = 0;
    for (size_t b = 0, acc = 0; m && b < message_attachment_count(m) && !bad; b++) {
        acc += message_attachment(m, b)->size;
        for (int d = -1; d <= 1 && !bad; d++) {
            struct message_json_options o = {.recipient = "r@x", .sender = "s@y", .id = "i",
                                             .inline_attachments_max = acc + (size_t)d,
                                             .attachments_url = b % 2 ? "http://u/" : NULL};
            if (acc == 0 && d < 0) continue;
            char *want = jsonw_ref(m, &o, NULL);
            size_t len;
            char *got = jsonw_new(m, &o, NULL, &len);
            why = jsonw_diff(got, len, want);
            bad = why != NULL;
            free(want);
            g_free(got);
        }
    }
    CHECK(!bad, "inline budget ending at every attachment (total %zu bytes)", inlined_all);
    if (why) printf("#   %s\n", why);
    g_free(why);
    message_free(m);
    g_string_free(eml, TRUE);
}

/* ---- corpus ---------------------------------------------------------------------------------- */

static bool in_ci(void)
{
    const char *ci = getenv("CI");
    if (!ci) return false;
    char *t = g_ascii_strdown(g_strstrip(g_strdup(ci)), -1);
    bool yes = *t && strcmp(t, "0") != 0 && strcmp(t, "false") != 0 && strcmp(t, "no") != 0;
    g_free(t);
    return yes;
}

static int run_corpus(void)
{
    const char *root = getenv("INLET_CORPUS");
    if (!root || !*root) root = getenv("INLET_CORPUS_DEFAULT");
    char *fallback = NULL;
    if (!root || !*root) root = fallback = g_build_filename(SOURCE_ROOT, "..", "shared", "corpus", NULL);
    char *msgdir = g_build_filename(root, "messages", NULL);
    if (!g_file_test(msgdir, G_FILE_TEST_IS_DIR)) {
        g_free(msgdir);
        msgdir = g_strdup(root);
    }
    GPtrArray *files = list_dir(msgdir, true);
    int rc = 0;
    if (files->len == 0) {
        if (in_ci()) {
            printf("not ok 1 - jsonw-corpus: corpus not found at %s (no messages in %s); CI is set, "
                   "so a skipped corpus is a failure\n1..1\n", root, msgdir);
            rc = 1;
        } else {
            printf("1..0 # SKIP jsonw-corpus: corpus not found at %s (no messages in %s); set "
                   "INLET_CORPUS or -Dcorpus=PATH to run it\n", root, msgdir);
        }
    } else {
        for (guint i = 0; i < files->len; i++) check_file(g_ptr_array_index(files, i));
        rc = check_done();
    }
    g_ptr_array_unref(files);
    g_free(msgdir);
    g_free(fallback);
    return rc;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    message_lib_init();
    int rc;
    if (argc > 1 && strcmp(argv[1], "--corpus") == 0) {
        rc = run_corpus();
    } else {
        struct message *m = message_parse((const uint8_t *)SMALL, sizeof SMALL - 1);
        check_strings(m);
        message_free(m);
        check_broken_model();
        check_base64();
        for (int i = 1; i < argc; i++) {
            GPtrArray *files = list_dir(argv[i], false);
            CHECK(files->len > 0, "%s: has *.eml files", argv[i]);
            for (guint k = 0; k < files->len; k++) check_file(g_ptr_array_index(files, k));
            g_ptr_array_unref(files);
        }
        rc = check_done();
    }
    message_lib_shutdown();
    return rc;
}
