/* Unit tests of util/: settings precedence and validation, hosted domains, listener addresses,
 * log escaping, dates and ids. */
#include <glib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "util/clock.h"
#include "util/config.h"
#include "util/dburl.h"
#include "util/domains.h"
#include "util/id.h"
#include "util/log.h"
#include "util/net.h"

static void clear_env(void)
{
    const char *vars[] = {"INLET_CONFIG", "INLET_SMTP_LISTEN", "INLET_HOSTNAME", "INLET_DOMAIN",
                          "INLET_MAX_RECIPIENTS", "INLET_LOG_LEVEL", "INLET_DATABASE"};
    for (size_t i = 0; i < G_N_ELEMENTS(vars); i++) unsetenv(vars[i]);
}

static int load(struct inlet_config *cfg, char **err, int argc, ...)
{
    char *argv[32];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++) argv[i] = va_arg(ap, char *);
    va_end(ap);
    *err = NULL;
    return config_load(cfg, argc, argv, err);
}

static void test_defaults(void)
{
    struct inlet_config cfg;
    char *err;
    clear_env();
    CHECK(load(&cfg, &err, 0) == 0, "defaults load");
    CHECK(cfg.smtp_listen.count == 1 && strcmp(cfg.smtp_listen.items[0], "127.0.0.1:2525") == 0,
          "default smtp-listen is 127.0.0.1:2525");
    CHECK_STR(cfg.http_listen.items[0], "127.0.0.1:8025", "default http-listen");
    CHECK_STR(cfg.data_dir, "./inlet-data", "default data dir");
    CHECK(cfg.max_message_size == 26214400, "default max-message-size 25 MiB");
    CHECK(cfg.max_recipients == 100 && cfg.max_hops == 50 && cfg.smtp_timeout == 300,
          "default recipients, hops, timeout");
    CHECK(cfg.max_connections == 1000 && cfg.max_connections_per_ip == 50, "default connection caps");
    CHECK(cfg.log_level_value == LOG_INFO, "default log level info");
    CHECK(cfg.hostname && *cfg.hostname, "hostname defaults to the host name");
    config_free(&cfg);
}

static void test_precedence(void)
{
    struct inlet_config cfg;
    char *err;
    char path[] = "/tmp/inlet-test-config-XXXXXX";
    int fd = mkstemp(path);
    const char *text = "[inlet]\nsmtp-listen = 127.0.0.1:1001, [::1]:1002\nhostname = from-file\n"
                       "max_recipients = 7\nlog-level = warn\ndomain = file.example\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "config file written");
    close(fd);
    clear_env();

    CHECK(load(&cfg, &err, 2, "--config", path) == 0, "file loads");
    CHECK(cfg.smtp_listen.count == 2 && strcmp(cfg.smtp_listen.items[1], "[::1]:1002") == 0,
          "file list is comma-separated");
    CHECK_STR(cfg.hostname, "from-file", "file beats default");
    CHECK(cfg.max_recipients == 7, "underscore key accepted in the file");
    config_free(&cfg);

    setenv("INLET_HOSTNAME", "from-env", 1);
    setenv("INLET_SMTP_LISTEN", "127.0.0.1:2001", 1);
    CHECK(load(&cfg, &err, 2, "--config", path) == 0, "file + env load");
    CHECK_STR(cfg.hostname, "from-env", "environment beats file");
    CHECK(cfg.smtp_listen.count == 1, "environment list replaces the file's list");
    CHECK(cfg.log_level_value == LOG_WARN, "file value kept where env is silent");
    config_free(&cfg);

    CHECK(load(&cfg, &err, 7, "--config", path, "--hostname=from-cli", "--smtp-listen",
               "127.0.0.1:3001", "--smtp-listen", "127.0.0.1:3002") == 0,
          "file + env + cli load");
    CHECK_STR(cfg.hostname, "from-cli", "command line beats environment");
    CHECK(cfg.smtp_listen.count == 2 && strcmp(cfg.smtp_listen.items[0], "127.0.0.1:3001") == 0 &&
              strcmp(cfg.smtp_listen.items[1], "127.0.0.1:3002") == 0,
          "repeated command-line list options accumulate and replace the env list");
    config_free(&cfg);

    setenv("INLET_CONFIG", path, 1);
    unsetenv("INLET_HOSTNAME");
    CHECK(load(&cfg, &err, 0) == 0 && strcmp(cfg.hostname, "from-file") == 0,
          "INLET_CONFIG names the file");
    config_free(&cfg);
    clear_env();
    unlink(path);
}

static void test_errors(void)
{
    struct inlet_config cfg;
    char *err;
    clear_env();
    CHECK(load(&cfg, &err, 2, "--max-recipients", "0") < 0 && strstr(err, "out of range"),
          "int below min rejected: %s", err ? err : "");
    g_free(err);
    config_free(&cfg);
    CHECK(load(&cfg, &err, 2, "--max-message-size", "12x") < 0 && strstr(err, "whole number"),
          "non-number rejected");
    g_free(err);
    config_free(&cfg);
    CHECK(load(&cfg, &err, 1, "--bogus=1") < 0 && strstr(err, "unknown option \"--bogus\""), "unknown option named in full");
    g_free(err);
    config_free(&cfg);
    CHECK(load(&cfg, &err, 1, "--domain") < 0 && strstr(err, "needs a value"), "missing value");
    g_free(err);
    config_free(&cfg);
    CHECK(load(&cfg, &err, 4, "--smtp-listen", "nonsense", "--domain", "bad..name") < 0 &&
              strstr(err, "smtp-listen") && strstr(err, "bad..name"),
          "every problem is reported at once");
    g_free(err);
    config_free(&cfg);
    CHECK(load(&cfg, &err, 2, "--log-level", "loud") < 0 && strstr(err, "log-level"), "bad log level");
    g_free(err);
    config_free(&cfg);
    setenv("INLET_MAX_RECIPIENTS", "-3", 1);
    CHECK(load(&cfg, &err, 0) < 0 && strstr(err, "INLET_MAX_RECIPIENTS"),
          "an environment error names the variable");
    g_free(err);
    config_free(&cfg);
    clear_env();
}

/* --database: the three forms, and a password never shown (util/dburl.h). */
static void test_database_url(void)
{
    static const struct {
        const char *url, *shown;
        enum dburl_kind kind;
    } cases[] = {
        {"", "", DBURL_SQLITE},
        {"sqlite:/var/lib/inlet/inlet.db", "sqlite:/var/lib/inlet/inlet.db", DBURL_SQLITE},
        {"sqlite:", "sqlite:", DBURL_INVALID},
        {"mysql://u:pw@h/db", "mysql://u:***@h/db", DBURL_INVALID},
        {"postgressql://u:pw@h/db", "postgressql://u:***@h/db", DBURL_INVALID},
        {"postgresql://", "postgresql://", DBURL_POSTGRES},
        {"postgresql://db.internal/inlet", "postgresql://db.internal/inlet", DBURL_POSTGRES},
        {"postgresql://inlet@db.internal:5433/inlet", "postgresql://inlet@db.internal:5433/inlet", DBURL_POSTGRES},
        {"postgresql://inlet:s3cr%40t@db:5432/inlet", "postgresql://inlet:***@db:5432/inlet", DBURL_POSTGRES},
        {"postgres://inlet:pw@[::1]:5432/x?sslmode=require", "postgres://inlet:***@[::1]:5432/x?sslmode=require",
         DBURL_POSTGRES},
        {"postgresql://inlet:p@ss@db/x", "postgresql://inlet:***@db/x", DBURL_POSTGRES},
        {"postgresql://:pw@db", "postgresql://:***@db", DBURL_POSTGRES},
        {"postgresql://h1:5432,h2:5432/x?target_session_attrs=read-write&password=pw&x=1",
         "postgresql://h1:5432,h2:5432/x?target_session_attrs=read-write&password=***&x=1", DBURL_POSTGRES},
        {"postgresql://u@h/x?PASSWORD=pw#frag", "postgresql://u@h/x?password=***#frag", DBURL_POSTGRES},
        {"postgresql://u@h?password=a/b@c", "postgresql://u@h?password=***", DBURL_POSTGRES},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        CHECK(dburl_kind(cases[i].url) == cases[i].kind, "kind of %s", cases[i].url);
        char *shown = dburl_redact(cases[i].url);
        CHECK_STR(shown, cases[i].shown, "%s shown as %s", cases[i].url, cases[i].shown);
        g_free(shown);
    }

    struct inlet_config cfg;
    char *err;
    clear_env();
    CHECK(load(&cfg, &err, 2, "--database", "postgresql://inlet:hunter2@db/inlet") == 0,
          "a postgresql:// URL is accepted: %s", err ? err : "");
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    config_print(&cfg, mem);
    fclose(mem);
    CHECK(strstr(text, "\ndatabase=postgresql://inlet:***@db/inlet\n") && !strstr(text, "hunter2"),
          "check-config shows the URL without its password");
    free(text);
    config_free(&cfg);
    CHECK(load(&cfg, &err, 2, "--database", "mysql://root:hunter2@db/x") < 0 &&
              strstr(err, "--database") && strstr(err, "\"mysql://root:***@db/x\"") && !strstr(err, "hunter2"),
          "another scheme is refused, named without its password: %s", err ? err : "");
    g_free(err);
    config_free(&cfg);
    setenv("INLET_DATABASE", "postgres://inlet:hunter2@db/inlet?sslmode=nope&password=hunter2", 1);
    CHECK(load(&cfg, &err, 0) == 0 && strcmp(cfg.database, getenv("INLET_DATABASE")) == 0,
          "INLET_DATABASE gives the URL (and its password) outside the process list");
    config_free(&cfg);
    clear_env();
}

static void test_domains(void)
{
    struct domain_set *set = domain_set_new();
    char *err = NULL;
    CHECK(domain_set_add(set, "Example.COM", &err) == 0, "add exact");
    CHECK(domain_set_add(set, "*.sub.example.org", &err) == 0, "add wildcard");
    CHECK(domain_set_add(set, "bücher.example", &err) == 0, "add IDN");
    CHECK(domain_set_add(set, "not a domain", &err) < 0, "spaces rejected");
    g_free(err);
    err = NULL;
    CHECK(domain_set_add(set, "-bad.example", &err) < 0, "leading hyphen rejected");
    g_free(err);
    struct {
        const char *domain;
        bool hosted;
    } cases[] = {
        {"example.com", true},          {"EXAMPLE.com", true},     {"example.com.", true},
        {"a.example.com", false},       {"sub.example.org", false}, {"a.sub.example.org", true},
        {"x.y.sub.example.org", true},  {"bücher.example", true},   {"BÜCHER.example", true},
        {"xn--bcher-kva.example", true}, {"example.co", false},     {"", false},
        {"[127.0.0.1]", false},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
        CHECK(domain_set_hosts(set, cases[i].domain, strlen(cases[i].domain)) == cases[i].hosted,
              "hosts(\"%s\") == %d", cases[i].domain, cases[i].hosted);
    CHECK(domain_set_count(set) == 3, "count");
    domain_set_free(set);
}

static void test_net(void)
{
    struct sockaddr_storage ss;
    char *err = NULL, out[80];
    CHECK(net_parse_listen("127.0.0.1:2525", &ss, &err) == 0, "ipv4");
    net_format((struct sockaddr *)&ss, out, sizeof out);
    CHECK_STR(out, "127.0.0.1:2525", "ipv4 round trip");
    CHECK(net_parse_listen("[::1]:25", &ss, &err) == 0, "ipv6");
    net_format((struct sockaddr *)&ss, out, sizeof out);
    CHECK_STR(out, "[::1]:25", "ipv6 round trip");
    CHECK(net_parse_listen("*:25", &ss, &err) == 0 && net_is_wildcard((struct sockaddr *)&ss), "wildcard");
    CHECK(net_parse_listen("[::]:25", &ss, &err) == 0 && net_is_wildcard((struct sockaddr *)&ss), "ipv6 wildcard");
    const char *bad[] = {"127.0.0.1", "127.0.0.1:99999", "host.example:25", "[::1:25", "1.2.3.4:-1", ":"};
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        err = NULL;
        CHECK(net_parse_listen(bad[i], &ss, &err) < 0 && err, "rejects \"%s\"", bad[i]);
        g_free(err);
    }
}

/* One client per IPv4 address, per IPv6 /N (item 2 of issue 14: a host owns a /64). */
static void test_client_key(void)
{
    static const struct {
        const char *listen;
        unsigned prefix;
        const char *want;
    } cases[] = {
        {"192.0.2.7:25", 64, "192.0.2.7"},
        {"[::ffff:192.0.2.7]:25", 64, "192.0.2.7"},
        {"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:25", 64, "2001:db8:1:2::/64"},
        {"[2001:db8:1:2::1]:25", 64, "2001:db8:1:2::/64"},
        {"[2001:db8:1:3::1]:25", 64, "2001:db8:1:3::/64"},
        {"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:25", 48, "2001:db8:1::/48"},
        {"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:25", 60, "2001:db8:1::/60"},
        {"[2001:db8:1:ff:1::]:25", 57, "2001:db8:1:80::/57"},
        {"[2001:db8::1]:25", 128, "2001:db8::1"},
        {"[::1]:25", 64, "::/64"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        struct sockaddr_storage ss;
        char *err = NULL, out[NET_CLIENT_KEY_MAX];
        CHECK(net_parse_listen(cases[i].listen, &ss, &err) == 0, "parse %s", cases[i].listen);
        g_free(err);
        net_client_key((struct sockaddr *)&ss, cases[i].prefix, out, sizeof out);
        CHECK_STR(out, cases[i].want, "client of %s /%u", cases[i].listen, cases[i].prefix);
    }
}

static void test_log_escape(void)
{
    char out[64];
    CHECK_STR(log_escape(out, sizeof out, "a\r\n\"b\\", 6, 100), "a\\x0d\\x0a\\\"b\\\\", "escapes controls and quotes");
    CHECK_STR(log_escape(out, sizeof out, "abcdefgh", 8, 4), "abcd...", "cut at max");
    char small[8];
    log_escape(small, sizeof small, "\x01\x02\x03", 3, 100);
    CHECK(strlen(small) < sizeof small, "never overflows a small buffer");
}

static void test_clock_and_ids(void)
{
    char date[40];
    clock_rfc5322(date, sizeof date, 1700000000);
    CHECK_STR(date, "Tue, 14 Nov 2023 22:13:20 +0000", "RFC 5322 date in UTC");
    char a[ID_LEN + 1], b[ID_LEN + 1];
    id_generate(a);
    id_generate(b);
    CHECK(strlen(a) == ID_LEN && strspn(a, "0123456789abcdef") == ID_LEN, "id is 24 lowercase hex");
    CHECK(strcmp(a, b) != 0, "ids differ");
    /* The pooled bytes: 1,000 ids (8 random bytes each, so the pool is refilled many times)
     * all distinct, and their random halves not all alike in any hex position. */
    enum { N = 1000 };
    char(*ids)[ID_LEN + 1] = calloc(N, sizeof *ids);
    for (size_t i = 0; i < N; i++) id_generate(ids[i]);
    size_t dup = 0;
    for (size_t i = 0; i < N; i++)
        for (size_t k = i + 1; k < N; k++) dup += memcmp(ids[i] + 8, ids[k] + 8, 16) == 0;
    CHECK(dup == 0, "1,000 ids: the random parts all differ (%zu alike)", dup);
    size_t constant_positions = 0;
    for (size_t pos = 8; pos < ID_LEN; pos++) {
        bool same = true;
        for (size_t i = 1; i < N && same; i++) same = ids[i][pos] == ids[0][pos];
        constant_positions += same;
    }
    CHECK(constant_positions == 0, "no random hex position is constant (%zu)", constant_positions);
    free(ids);
}

/* One log line, read back through a pipe: "YYYY-MM-DDTHH:MM:SS.mmmZ level topic message\n", the
 * time that of the call (the seconds part is cached per second and thread). */
static void test_log_line(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    const int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    const time_t before = time(NULL);
    log_write(LOG_INFO, "topic", "key=%d word=%s", 42, "x");
    log_write(LOG_WARN, "t2", "second");
    const time_t after = time(NULL);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    char buf[512] = "";
    size_t n = 0;
    for (ssize_t r; n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0;) n += (size_t)r;
    close(fds[0]);
    buf[n] = '\0';
    char *second = strchr(buf, '\n');
    CHECK(second != NULL, "two lines: %s", buf);
    if (!second) return;
    *second++ = '\0';
    GRegex *re = g_regex_new("^(\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d)\\.\\d{3}Z info topic key=42 word=x$", 0, 0, NULL);
    GMatchInfo *mi = NULL;
    const bool ok = g_regex_match(re, buf, 0, &mi);
    CHECK(ok, "first line: %s", buf);
    if (ok) {
        gchar *stamp = g_match_info_fetch(mi, 1);
        char lo[32], hi[32];
        struct tm tm;
        gmtime_r(&before, &tm);
        strftime(lo, sizeof lo, "%Y-%m-%dT%H:%M:%S", &tm);
        gmtime_r(&after, &tm);
        strftime(hi, sizeof hi, "%Y-%m-%dT%H:%M:%S", &tm);
        CHECK(strcmp(stamp, lo) >= 0 && strcmp(stamp, hi) <= 0, "time of the call: %s in [%s, %s]", stamp, lo, hi);
        g_free(stamp);
    }
    g_match_info_free(mi);
    g_regex_unref(re);
    CHECK(g_regex_match_simple("^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z warn t2 second\n$", second, 0, 0),
          "second line: %s", second);
}

int main(void)
{
    test_defaults();
    test_precedence();
    test_errors();
    test_database_url();
    test_domains();
    test_net();
    test_client_key();
    test_log_escape();
    test_clock_and_ids();
    test_log_line();
    return check_done();
}
