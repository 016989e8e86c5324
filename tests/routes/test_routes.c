/* tests/routes/test_routes.c — unit tests of routes/ that golden files do not show well: the
 * table's reference counting (a snapshot stays valid while a matcher holds it), ordering,
 * route_could_match and route_match_address, the copy route_compile makes, the rewrite. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "routes/internal.h"
#include "routes/routes.h"
#include "util/domains.h"
#include "util/limits.h"
#include "util/log.h"

static struct route *mk(const char *id, int32_t prio, int64_t seq, const char *expr, const char *action)
{
    const char *acts[] = {action};
    const struct route_def def = {.id = id, .priority = prio, .seq = seq, .description = "d",
                                  .expression = expr, .actions = acts, .nactions = action ? 1 : 0};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    if (!r) printf("# compile %s failed: %s\n", id, err);
    free(err);
    return r;
}

static void test_snapshot(void)
{
    struct route *rs[] = {
        mk("b", 0, 2, "match_recipient('^b@')", "forward('https://h.test/b')"),
        mk("a", 0, 1, "match_recipient('.*')", "forward('https://h.test/a')"),
        mk("c", -5, 3, "catch_all()", "store()"),
    };
    struct route_table *t = route_table_new(rs, 3);
    CHECK(route_table_count(t) == 3, "table holds three routes");
    CHECK_STR(route_get_def(route_table_at(t, 0))->id, "c", "priority -5 first");
    CHECK_STR(route_get_def(route_table_at(t, 1))->id, "a", "tie by seq: a (seq 1) before b");
    CHECK_STR(route_get_def(route_table_at(t, 2))->id, "b", "b last");
    CHECK(route_table_at(t, 3) == NULL, "past the end is NULL");

    /* A matcher's holder takes a ref; the engine swaps in a new table and drops its own. */
    struct route_table *held = route_table_ref(t);
    struct route_table *next = route_table_new(NULL, 0);
    route_table_unref(t); /* the engine's reference */
    struct route_matcher *m = route_matcher_new();
    struct route_result res;
    const struct route_message msg = {.recipient = "b@x.test"};
    CHECK(route_evaluate(held, m, &msg, &res) == 0, "evaluate on the held snapshot");
    CHECK(res.nhits == 3, "all three routes hit (catch_all first, nothing before it)");
    CHECK(res.ndeliveries == 2 && res.nstores == 1, "two deliveries, one store");
    route_result_clear(&res);
    CHECK(route_evaluate(next, m, &msg, &res) == 0 && res.nhits == 0, "the new empty table matches nothing");
    route_result_clear(&res);
    route_table_unref(held); /* the last reference frees the routes (ASan checks) */
    route_table_unref(next);
    route_table_unref(NULL);
    route_matcher_free(m);
}

static void test_could_match(void)
{
    struct route *rs[] = {
        mk("r1", 0, 1, "match_recipient('^sales@example\\.com$') and match_header('X-A', 'never')", "stop()"),
        mk("r2", 1, 2, "match_recipient('(?i)^support@')", "stop()"),
    };
    struct route_table *t = route_table_new(rs, 2);
    struct route_matcher *m = route_matcher_new();
    CHECK(route_could_match(t, m, "sales@example.com"), "header filter counts as true");
    CHECK(route_could_match(t, m, "sales@EXAMPLE.com"), "domain lower-cased before matching");
    CHECK(!route_could_match(t, m, "Sales@example.com"), "local part as received (case-sensitive)");
    CHECK(route_could_match(t, m, "SUPPORT@x.test"), "(?i) route");
    CHECK(!route_could_match(t, m, "nobody@example.com"), "no route could match");
    const struct route *r = route_match_address(t, m, "sales@example.com");
    CHECK(r && strcmp(route_get_def(r)->id, "r1") == 0, "match_address ignores the header filter");
    CHECK(route_match_address(t, m, "x@y") == NULL, "match_address: none");
    route_table_unref(t);

    struct route *rs2[] = {
        mk("h", 0, 1, "match_header('Subject', 'x')", "stop()"),
        mk("c", 1, 2, "catchall()", "stop()"),
        mk("r", 2, 3, "match_recipient('^z@')", "stop()"),
    };
    t = route_table_new(rs2, 3);
    CHECK(route_could_match(t, m, "anyone@anywhere.test"), "a header-only route could match anything");
    r = route_match_address(t, m, "z@q");
    CHECK(r && strcmp(route_get_def(r)->id, "r") == 0, "match_address skips header-only and catch-all routes");
    CHECK(route_match_address(t, m, "y@q") == NULL, "match_address: catch-all does not count");
    route_table_unref(t);

    struct route *rs3[] = {mk("p", 0, 1, "match_recipient('(a+)+$')", "stop()")};
    t = route_table_new(rs3, 1);
    CHECK(route_could_match(t, m, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"), "a match limit counts as could match");
    CHECK(route_matcher_hit_limit(m), "and says it was the limit");
    CHECK(route_match_address(t, m, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab") == NULL, "but not for match_address");
    CHECK(route_could_match(t, m, "aaa") && !route_matcher_hit_limit(m), "a real match is no limit");
    route_table_unref(t);
    /* A route that hits the limit, then one that matches outright: a match, not a limit. */
    struct route *rs4[] = {mk("p", 0, 1, "match_recipient('(a+)+$')", "stop()"),
                           mk("q", 1, 2, "match_recipient('^a+b')", "stop()")};
    t = route_table_new(rs4, 2);
    CHECK(route_could_match(t, m, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab") && !route_matcher_hit_limit(m),
          "a later real match wins over an earlier limit");
    route_table_unref(t);
    t = route_table_new(NULL, 0);
    CHECK(!route_could_match(t, m, "a@b"), "empty table: nothing could match");
    route_table_unref(t);
    route_matcher_free(m);
}

static void test_compile_copies(void)
{
    char expr[] = "match_recipient('x')";
    char act[] = "forward('a@b.test')";
    const char *acts[] = {act};
    const struct route_def def = {.id = "0123456789abcdef01234567", .priority = 7, .seq = 9,
                                  .description = "desc", .expression = expr, .actions = acts,
                                  .nactions = 1, .created_at = 1700000000};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    CHECK(r != NULL, "compiles");
    memset(expr, 'z', sizeof expr - 1);
    memset(act, 'z', sizeof act - 1);
    const struct route_def *d = route_get_def(r);
    CHECK_STR(d->expression, "match_recipient('x')", "expression copied verbatim");
    CHECK_STR(d->actions[0], "forward('a@b.test')", "action copied verbatim");
    CHECK(d->nactions == 1 && d->priority == 7 && d->seq == 9 && d->created_at == 1700000000, "fields copied");
    CHECK_STR(d->description, "desc", "description copied");
    route_free(r);

    const char *many[ROUTE_ACTIONS_MAX + 1];
    for (size_t i = 0; i <= ROUTE_ACTIONS_MAX; i++) many[i] = "stop()";
    const struct route_def big = {.id = "x", .expression = "catch_all()", .actions = many,
                                  .nactions = ROUTE_ACTIONS_MAX + 1};
    CHECK(route_compile(&big, &err) == NULL, "more than ROUTE_ACTIONS_MAX actions rejected");
    CHECK_STR(err, "actions: position 0: more than 16 actions", "its message");
    free(err);
}

static void test_rewrite(void)
{
    static const struct {
        const char *in, *out;
    } rows[] = {
        {"a{,3}", "a{0,3}"},
        {"a{,}", "a{0,}"},
        {"[{,3}]", "[{,3}]"},
        {"a\\{,3}", "a\\{,3}"},
        {"a\\Z", "a\\z"},
        {"a\\\\Z", "a\\\\Z"},
        {"[a\\]Z]{,2}", "[a\\]Z]{0,2}"},
        {"(?i)(?s)x", "x"},
        {"\\u00e9\\U0001F600", "\\x{00e9}\\x{0001F600}"},
        {"[[:a:]]", "[\\[:a:]]"},
        {"\\v", "\\x0b"},
        {"(?P<n>a)(?P=n)", "(?P<n>a)(?P=n)"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        size_t olen = 0, *map = NULL, off = 0;
        uint32_t opts = 0;
        char err[128];
        char *o = route_regex_rewrite(rows[i].in, strlen(rows[i].in), &olen, &opts, &map, err, sizeof err, &off);
        CHECK_STR(o, rows[i].out, "rewrite %s", rows[i].in);
        free(o);
        free(map);
    }
    static const char *const bad[] = {"[\\Z]", "a(?i)b", "\\p{L}", "(*UTF)a", "(?<n>a)", "(?L)a", "\\x4"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t olen = 0, *map = NULL, off = 0;
        uint32_t opts = 0;
        char err[128];
        char *o = route_regex_rewrite(bad[i], strlen(bad[i]), &olen, &opts, &map, err, sizeof err, &off);
        CHECK(o == NULL, "rejected like Python: %s (%s at %zu)", bad[i], err, off);
        free(o);
        free(map);
    }
}

static void test_ulabel(void)
{
    char *u = domain_to_ulabel("XN--BCHER-KVA.Example", 21);
    CHECK_STR(u, "bücher.example", "A-label to lower-case U-label");
    free(u);
    u = domain_to_ulabel("BÜCHER.example", strlen("BÜCHER.example"));
    CHECK_STR(u, "bücher.example", "upper-case U-label lower-cased");
    free(u);
    u = domain_to_ulabel("Example.COM", 11);
    CHECK_STR(u, "example.com", "ASCII lower-cased");
    free(u);
    u = domain_to_ulabel("xn--zz.EXAMPLE", 14);
    CHECK_STR(u, "xn--zz.example", "a bad A-label: ASCII lower-cased");
    free(u);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    test_snapshot();
    test_could_match();
    test_compile_copies();
    test_rewrite();
    test_ulabel();
    return check_done();
}
