/* tests/routes/test_prefilter.c — the route table's literal-prefix prefilter (routes/table.c,
 * routes/eval.c) must never change a result.
 *
 *   - route_regex_literal_prefix on a table of patterns with the prefix each must give (or none);
 *   - the index at work: a large table of prefixed routes considers only a few candidates;
 *   - a randomized differential test: tables of a few hundred routes whose patterns come from a
 *     small grammar (literal prefixes, escapes, quantifiers, groups, classes, alternations,
 *     (?i), scoped flags, comments, lookarounds, .*, \Z, catastrophic backtracking), catch_all()
 *     and stop() and store() mixed in, match_header filters before and after; many recipients
 *     (upper-case and IDN domains, no '@', near misses).  Each recipient is evaluated with the
 *     prefilter and with it turned off (route_table_set_prefilter) and the results must be
 *     identical: hits with captures and resolved actions, deliveries, stores, warnings; so must
 *     route_could_match and route_match_address.
 *
 * INLET_PREFILTER_SEED=N reruns the differential test with another seed; INLET_PREFILTER_ROUNDS
 * sets the number of tables (default 16). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "routes/internal.h"
#include "routes/routes.h"
#include "util/log.h"

/* ---------------------------------------------------------------------------------------------
 * The extractor. */

static void test_extractor(void)
{
    static const struct {
        const char *pat, *want; /* want "" : no prefix */
    } rows[] = {
        {"^user1-(\\d+)@example\\.com$", "user1-"},
        {"user1-(\\d+)", "user1-"},
        {"^abc", "abc"},
        {"abc$", "abc"},
        {"^abc\\Z", "abc"},
        {"^ab?c", "a"},
        {"^ab*c", "a"},
        {"^ab+c", "a"},
        {"^ab{2}c", "a"},
        {"^ab{,2}", "a"},
        {"^ab+?", "a"},
        {"^ab*+", "a"},
        {"a?", ""},
        {"^\\.foo", ".foo"},
        {"^a\\.b\\-c\\@d\\+e", "a.b-c@d+e"},
        {"^a\\.+", "a"},
        {"^a\\-?", "a"},
        {"^a\\d", "a"},
        {"^a\\w+", "a"},
        {"^a\\bc", "a"},
        {"^a\\x41", "a"},
        {"^a\\u00e9", "a"},
        {"^ab\\Ac", "ab"},
        {"^a\\tb", "a"},
        {"^a\\0", "a"},
        {"^a\\ b", "a"},
        {"^a\\(b", "a(b"},
        {"^a\\\\b", "a\\b"},
        {"^a\\|b", "a|b"},
        {"^\\@x", "@x"},
        {"^abc\\-", "abc-"},
        {"@example\\.com$", "@example.com"},
        {"^a b", "a b"},
        {"^a.b", "a"},
        {".*foo", ""},
        {"^.*foo", ""},
        {".+@x", ""},
        {"^[ab]c", ""},
        {"^a[bc]", "a"},
        {"^a[|]b", "a"},
        {"^a[]|]b", "a"},
        {"^a[^]|]b", "a"},
        {"^a[\\]|]b", "a"},
        {"^ab[", ""},
        {"^(ab)c", ""},
        {"^(a|b)", ""},
        {"^a(b|c)d", "a"},
        {"^a(b(c|d)|e)f", "a"},
        {"^a(?P<x>b)", "a"},
        {"^ab|cd", ""},
        {"^a(b)|c", ""},
        {"^ab|", ""},
        {"|ab", ""},
        {"(?i)^abc", ""},
        {"(?i)abc", ""},
        {"^a(?i:b)c", ""},
        {"^a(?-i:b)c", ""},
        {"(?s)^a.b", ""},
        {"(?x)^a b", ""},
        {"(?a)^ab", ""},
        {"(?m)^ab", ""},
        {"^a(?#comment|x)b", ""},
        {"^ab(?#c)*", "a"},
        {"^ab(?#c)d", "a"},
        {"^a(?#(|)x|y", ""},
        {"^ab(?=c)", "ab"},
        {"^ab(?!c)", "ab"},
        {"^ab(?<=b)c", "ab"},
        {"^ab(?:c|d)", "ab"},
        {"^ab$", "ab"},
        {"^^ab", ""},
        {"^a^b", "a"},
        {"^b\xc3\xbc" "cher", "b"},
        {"^a{", ""},
        {"^a}b", "a"},
        {"^a]b", "a"},
        {"^a)", ""},
        {"^ab\\", ""},
        {"", ""},
        {"^", ""},
        {"$", ""},
    };
    const size_t nrows = sizeof rows / sizeof rows[0];
    CHECK(nrows >= 40, "at least 40 extractor cases (%zu)", nrows);
    for (size_t i = 0; i < nrows; i++) {
        const size_t len = strlen(rows[i].pat);
        char *out = malloc(len + 1);
        const size_t n = route_regex_literal_prefix(rows[i].pat, len, out);
        out[n] = '\0';
        CHECK_STR(out, rows[i].want, "prefix of %s", rows[i].pat);
        free(out);
    }
}

/* The literal runs (the inner keys' material): "|"-separated in `want`, "" for none. */
static void test_runs(void)
{
    static const struct {
        const char *pat, *want;
    } rows[] = {
        {"^user1-(\\d+)@example\\.com$", "user1-|@example.com"},
        {"[u]ser5-(\\d+)@example\\.com$", "ser5-|@example.com"},
        {".*@tenant\\.example\\.org", "@tenant.example.org"},
        {"\\w+-bounce@x", "-bounce@x"},
        {"ab*c", "a|c"},
        {"ab+?cd", "a|cd"},
        {"a.b.c", "a|b|c"},
        {"a[bc]d[^e]f", "a|d|f"},
        {"a[]b]c", "a|c"},
        {"a(?:b)d", "a|d"},
        {"a(?P<n>x)y.*z", "a|y|z"},
        {"a.*b.*c", "a|b|c"},
        {"a+?b*+c", "c"},
        {"x[ab]{2}y.*z.*w", "x"},
        /* Patterns PCRE2 may backtrack over much (a limit, and its warning, without the literal):
         * a '|', a quantified group, a third variable quantifier. */
        {"a(b|c)d", ""},
        {"a(b)*d", ""},
        {"a(?:x(y)z)?w", ""},
        {"a.*b.*c.*d", ""},
        {"a\\(?b.*c.*d", ""},
        {"x[ab]{2,}y.*z.*w", ""},
        {"a(?#c)b", ""},
        {"ab(?#c)*", ""},
        {"x(?#(|)y", ""},
        {"a\\db\\Wc\\bd\\Be\\Sf\\sg", "a|b|c|d|e|f|g"},
        {"a\\Ab\\Z", "a|b"},
        {"a\\xb", "a"},
        {"a\\1b", "a"},
        {"a\\tb", "a"},
        {"ab{2}cd", "a"},
        {"a{", ""},
        {"a|b", ""},
        {"(a|b)", ""},
        {"(?i)abc", ""},
        {"a(?i:b)c", ""},
        {"a(?=b)c", "a|c"},
        {"\\.a\\-b", ".a-b"},
        {"b\xc3\xbc" "cher", "b"},
        {"a)", ""},
        {"a(b", ""},
        {"a[b", ""},
        {"1.2.3.4.5.6.7.8.9.10", "1|2|3|4|5|6|7|8"},
        {"", ""},
        {"^$", ""},
    };
    const size_t nrows = sizeof rows / sizeof rows[0];
    for (size_t i = 0; i < nrows; i++) {
        const size_t len = strlen(rows[i].pat);
        char *buf = malloc(len + 1), got[256] = "";
        struct route_literal runs[ROUTE_LITERAL_RUNS_MAX];
        const size_t n = route_regex_literal_runs(rows[i].pat, len, buf, runs, ROUTE_LITERAL_RUNS_MAX);
        size_t g = 0;
        for (size_t k = 0; k < n; k++)
            g += (size_t)snprintf(got + g, sizeof got - g, "%s%.*s", k ? "|" : "", (int)runs[k].len, buf + runs[k].off);
        CHECK_STR(got, rows[i].want, "literal runs of %s", rows[i].pat);
        free(buf);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Helpers. */

static struct route *mk(const char *id, int32_t prio, int64_t seq, const char *expr, const char *const *acts,
                        size_t nacts)
{
    const struct route_def def = {.id = id, .priority = prio, .seq = seq, .description = "",
                                  .expression = expr, .actions = acts, .nactions = nacts};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    free(err);
    return r;
}

/* Whether two results are identical; on the first difference prints it (TAP comment). */
static bool same_result(const struct route_result *a, const struct route_result *b, const char *rcpt)
{
#define DIFF(...)                                                                                   \
    do {                                                                                            \
        printf("# %s: ", rcpt);                                                                     \
        printf(__VA_ARGS__);                                                                        \
        printf("\n");                                                                               \
        return false;                                                                               \
    } while (0)
    if (a->nhits != b->nhits) DIFF("%zu hits with the prefilter, %zu without", a->nhits, b->nhits);
    for (size_t i = 0; i < a->nhits; i++) {
        const struct route_hit *x = &a->hits[i], *y = &b->hits[i];
        if (strcmp(x->route_id, y->route_id) != 0) DIFF("hit %zu: %s vs %s", i, x->route_id, y->route_id);
        if (x->ncaptures != y->ncaptures || x->nactions != y->nactions || x->stop != y->stop)
            DIFF("hit %zu (%s): shape differs", i, x->route_id);
        for (size_t k = 0; k < x->ncaptures; k++)
            if (strcmp(x->capture_names[k], y->capture_names[k]) != 0 ||
                strcmp(x->capture_values[k], y->capture_values[k]) != 0)
                DIFF("hit %zu: capture %s=%s vs %s=%s", i, x->capture_names[k], x->capture_values[k],
                     y->capture_names[k], y->capture_values[k]);
        for (size_t k = 0; k < x->nactions; k++)
            if (strcmp(x->actions[k], y->actions[k]) != 0) DIFF("hit %zu: action %s vs %s", i, x->actions[k], y->actions[k]);
    }
    if (a->ndeliveries != b->ndeliveries) DIFF("%zu deliveries vs %zu", a->ndeliveries, b->ndeliveries);
    for (size_t i = 0; i < a->ndeliveries; i++) {
        const struct route_delivery *x = &a->deliveries[i], *y = &b->deliveries[i];
        if (x->kind != y->kind || x->format != y->format || strcmp(x->target, y->target) != 0 ||
            x->nroute_ids != y->nroute_ids)
            DIFF("delivery %zu: %s vs %s", i, x->target, y->target);
        for (size_t k = 0; k < x->nroute_ids; k++)
            if (strcmp(x->route_ids[k], y->route_ids[k]) != 0) DIFF("delivery %zu: route ids differ", i);
    }
    if (a->nstores != b->nstores) DIFF("%zu stores vs %zu", a->nstores, b->nstores);
    for (size_t i = 0; i < a->nstores; i++) {
        const struct route_store *x = &a->stores[i], *y = &b->stores[i];
        if (strcmp(x->route_id, y->route_id) != 0 || x->format != y->format ||
            (x->notify == NULL) != (y->notify == NULL) || (x->notify && strcmp(x->notify, y->notify) != 0))
            DIFF("store %zu: %s vs %s", i, x->route_id, y->route_id);
    }
    if (a->nwarnings != b->nwarnings) DIFF("%zu warnings vs %zu", a->nwarnings, b->nwarnings);
    for (size_t i = 0; i < a->nwarnings; i++)
        if (strcmp(a->warnings[i], b->warnings[i]) != 0) DIFF("warning %zu: %s vs %s", i, a->warnings[i], b->warnings[i]);
    return true;
#undef DIFF
}

/* ---------------------------------------------------------------------------------------------
 * The index at work. */

static void test_index_used(void)
{
    enum { N = 2000 };
    struct route **rs = calloc(N + 2, sizeof *rs);
    char id[32], expr[128];
    const char *fwd[] = {"forward('https://h.test/\\1')"};
    const char *store[] = {"store()"};
    size_t k = 0;
    for (; k < N; k++) {
        snprintf(id, sizeof id, "%024zx", k);
        snprintf(expr, sizeof expr, "match_recipient('^user%zu-(\\d+)@example\\.com$')", k);
        rs[k] = mk(id, 0, (int64_t)k, expr, fwd, 1);
    }
    rs[k] = mk("unprefixed", 0, (int64_t)k, "match_recipient('(?i)USER7-(\\d+)@')", fwd, 1);
    k++;
    rs[k] = mk("tail", 1, (int64_t)k, "catch_all()", store, 1);
    k++;
    struct route_table *t = route_table_new(rs, k);
    free(rs);
    CHECK(route_table_prefilter(t), "the index was built");
    struct route_matcher *m = route_matcher_new();
    struct route_result res;
    const struct route_message msg = {.recipient = "user7-42@EXAMPLE.com"};
    CHECK(route_evaluate(t, m, &msg, &res) == 0, "evaluate");
    CHECK(res.nhits == 2 && strcmp(res.hits[0].route_id, "000000000000000000000007") == 0 &&
              strcmp(res.hits[1].route_id, "unprefixed") == 0,
          "user7 and the unprefixed route hit, the catch_all does not");
    CHECK(res.nhits == 2 && strcmp(res.hits[0].capture_values[0], "42") == 0, "capture 42");
    CHECK(route_matcher_last_candidates(m) == 3, "three candidates: user7, unprefixed, tail (got %zu)",
          route_matcher_last_candidates(m));
    route_result_clear(&res);
    const struct route_message none = {.recipient = "nobody@example.com"};
    CHECK(route_evaluate(t, m, &none, &res) == 0 && res.nhits == 1 && strcmp(res.hits[0].route_id, "tail") == 0,
          "nobody: only the catch_all");
    CHECK(route_matcher_last_candidates(m) == 2, "two candidates (got %zu)", route_matcher_last_candidates(m));
    route_result_clear(&res);
    CHECK(route_could_match(t, m, "user1999-1@example.com"), "could match: the last route");
    CHECK(route_matcher_last_candidates(m) <= 3, "could match looked at few routes (%zu)",
          route_matcher_last_candidates(m));
    const struct route *r = route_match_address(t, m, "user1999-1@Example.COM");
    CHECK(r && strcmp(route_get_def(r)->id, "0000000000000000000007cf") == 0, "match_address: the last route");
    CHECK(route_match_address(t, m, "user1999-x@example.com") == NULL, "match_address: none");
    route_table_set_prefilter(t, false);
    CHECK(route_evaluate(t, m, &msg, &res) == 0 && res.nhits == 2, "without the prefilter: same two hits");
    CHECK(route_matcher_last_candidates(m) == N + 2, "without the prefilter every route is a candidate");
    route_result_clear(&res);
    route_table_unref(t);
    route_matcher_free(m);
}

/* Inner keys at work: routes without a literal prefix (a class first), and routes whose prefix
 * every route shares but whose domain is their own, consider only a few candidates. */
static void test_inner_used(void)
{
    enum { N = 3000 };
    struct route **rs = calloc(N + 1, sizeof *rs);
    char id[32], expr[160];
    const char *fwd[] = {"forward('https://h.test/\\1')"};
    const char *store[] = {"store()"};
    size_t k = 0;
    for (; k < N; k++) {
        snprintf(id, sizeof id, "%024zx", k);
        if (k % 2)
            snprintf(expr, sizeof expr, "match_recipient('[u]ser%zu-(\\d+)@example\\.com$')", k);
        else
            snprintf(expr, sizeof expr, "match_recipient('^user-(\\d+)@t%zu\\.example\\.org$')", k);
        rs[k] = mk(id, 0, (int64_t)k, expr, fwd, 1);
    }
    rs[k] = mk("tail", 1, (int64_t)k, "catch_all()", store, 1);
    k++;
    struct route_table *t = route_table_new(rs, k);
    free(rs);
    CHECK(t->idx.nalways == 1, "only the catch_all is an always candidate (%zu)", t->idx.nalways);
    struct route_matcher *m = route_matcher_new();
    struct route_result res;
    const struct route_message a = {.recipient = "user2999-7@example.com"};
    CHECK(route_evaluate(t, m, &a, &res) == 0 && res.nhits == 1 &&
              strcmp(res.hits[0].route_id, "000000000000000000000bb7") == 0 &&
              strcmp(res.hits[0].capture_values[0], "7") == 0,
          "[u]ser2999: the last unprefixed route hits, capture 7");
    CHECK(route_matcher_last_candidates(m) <= 4, "few candidates (got %zu)", route_matcher_last_candidates(m));
    route_result_clear(&res);
    const struct route_message b = {.recipient = "user-8@t2998.example.org"};
    CHECK(route_evaluate(t, m, &b, &res) == 0 && res.nhits == 1 &&
              strcmp(res.hits[0].route_id, "000000000000000000000bb6") == 0,
          "user-@t2998: its route hits");
    CHECK(route_matcher_last_candidates(m) <= 4, "filed under its domain, not under 'user-' (got %zu)",
          route_matcher_last_candidates(m));
    route_result_clear(&res);
    /* A key found twice in the recipient is one bucket: the route is evaluated (and hit) once. */
    const struct route_message c = {.recipient = "user1-ser1-2@example.com"};
    CHECK(route_evaluate(t, m, &c, &res) == 0 && res.nhits == 1 && strcmp(res.hits[0].route_id, "tail") == 0,
          "ser1- twice, no match: only the catch_all");
    route_result_clear(&res);
    CHECK(route_could_match(t, m, "user1-5@example.com") && route_matcher_last_candidates(m) <= 4,
          "could match, few candidates");
    CHECK(route_match_address(t, m, "user-1@t4.example.org") != NULL, "match_address by the inner key");
    route_table_unref(t);
    route_matcher_free(m);
}

/* ---------------------------------------------------------------------------------------------
 * The randomized differential test. */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static size_t pick(size_t n)
{
    return (size_t)(rnd() % n);
}

struct buf {
    char s[1024];
    size_t n;
};

static void add(struct buf *b, const char *s)
{
    const size_t l = strlen(s);
    if (b->n + l + 1 > sizeof b->s) return;
    memcpy(b->s + b->n, s, l + 1);
    b->n += l;
}

/* One atom of a pattern; the recipients use the same letters so that prefixes collide. */
static void gen_atom(struct buf *b, int depth)
{
    static const char *const lits[] = {"a", "b", "a", "b", "x", "-", "A", "1", "_"};
    static const char *const escs[] = {"\\.", "\\-", "\\@", "\\+", "\\_"};
    static const char *const other[] = {".", "\\d", "\\w", "\\b", "[ab]", "[^a]", "[]a]", "[|]", "[a\\]]",
                                        "\\x61", "(?#c)", "(?#(|)", "(?=a)", "(?!b)", "(?<=a)", "\\S"};
    const size_t r = pick(100);
    if (r < 45) {
        add(b, lits[pick(sizeof lits / sizeof *lits)]);
    } else if (r < 58) {
        add(b, escs[pick(sizeof escs / sizeof *escs)]);
    } else if (r < 64) {
        add(b, "@");
    } else if (r < 80) {
        add(b, other[pick(sizeof other / sizeof *other)]);
    } else if (depth < 2) {
        static const char *const open[] = {"(", "(?:", "(?P<n>", "(?i:", "(?-i:", "(?P<m>"};
        add(b, open[pick(sizeof open / sizeof *open)]);
        const size_t alts = 1 + pick(2);
        for (size_t a = 0; a < alts; a++) {
            if (a) add(b, "|");
            const size_t n = pick(3);
            for (size_t k = 0; k < n; k++) gen_atom(b, depth + 1);
        }
        add(b, ")");
    } else {
        add(b, "a");
    }
    /* Quantifiers, after anything (also a comment: it then applies to the item before it). */
    if (b->n) {
        static const char *const q[] = {"?", "*", "+", "{2}", "{,2}", "{1,2}", "+?", "??", "{0}"};
        if (pick(100) < 22) add(b, q[pick(sizeof q / sizeof *q)]);
    }
}

static void gen_pattern(struct buf *b)
{
    b->n = 0;
    b->s[0] = '\0';
    const size_t r = pick(100);
    if (r < 6) add(b, "(?i)");
    else if (r < 8) add(b, "(?s)");
    if (pick(100) < 60) add(b, "^");
    if (pick(100) < 6) add(b, ".*");
    else if (pick(100) < 12) add(b, pick(2) ? "[ab]" : "\\w*");
    const size_t n = pick(7);
    for (size_t k = 0; k < n; k++) gen_atom(b, 0);
    if (pick(100) < 8) {
        add(b, "|");
        const size_t n2 = pick(4);
        for (size_t k = 0; k < n2; k++) gen_atom(b, 0);
    }
    if (pick(100) < 25) add(b, "@");
    if (pick(100) < 10) add(b, "ex\\.com");
    const size_t e = pick(100);
    if (e < 15) add(b, "$");
    else if (e < 20) add(b, "\\Z");
}

/* A STRING of the expression language holding `pat` between single quotes. */
static void quote(struct buf *b, const char *pat)
{
    add(b, "'");
    for (const char *p = pat; *p; p++) {
        char c[3] = {*p, 0, 0};
        if (*p == '\'') {
            c[0] = '\\';
            c[1] = '\'';
        }
        add(b, c);
    }
    add(b, "'");
}

static void gen_expression(struct buf *e, bool *has_groups)
{
    struct buf pat;
    e->n = 0;
    e->s[0] = '\0';
    *has_groups = false;
    const size_t r = pick(100);
    if (r < 4) {
        add(e, "catch_all()");
        return;
    }
    if (r < 7) {
        add(e, "catch_all() and ");
    } else if (r < 10) {
        add(e, "match_header('X-Test', '(a+)+$') and ");
    } else if (r < 12) {
        add(e, "match_recipient('(a+)+$') and ");
    }
    gen_pattern(&pat);
    *has_groups = strchr(pat.s, '(') != NULL;
    add(e, "match_recipient(");
    quote(e, pat.s);
    add(e, ")");
    const size_t s = pick(100);
    if (s < 8) {
        gen_pattern(&pat);
        add(e, " and match_recipient(");
        quote(e, pat.s);
        add(e, ")");
    } else if (s < 12) {
        add(e, " and catch_all()");
    } else if (s < 15) {
        add(e, " and match_header('X-Test', '^h')");
    }
}

static void gen_recipient(struct buf *b)
{
    static const char *const pieces[] = {"a", "b", "ab", "ba", "x", "-", "A", "1", "_", ".", "+", "aa", "@", "|"};
    static const char *const domains[] = {"ex.com", "EX.Com", "b.c", ("b\xc3\xbc" "cher.example"),
                                          "XN--BCHER-KVA.example", "ex.com\n", ""};
    b->n = 0;
    b->s[0] = '\0';
    if (pick(100) < 2) {
        add(b, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"); /* catastrophic backtracking for (a+)+$ */
    } else {
        const size_t n = pick(6);
        for (size_t k = 0; k < n; k++) add(b, pieces[pick(sizeof pieces / sizeof *pieces)]);
    }
    if (pick(100) < 90) {
        add(b, "@");
        add(b, domains[pick(sizeof domains / sizeof *domains)]);
    }
}

static void test_differential(void)
{
    const char *seed_env = getenv("INLET_PREFILTER_SEED");
    const char *rounds_env = getenv("INLET_PREFILTER_ROUNDS");
    const uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : 20240601;
    const int rounds = rounds_env ? (int)strtol(rounds_env, NULL, 10) : 16;
    rng_state = seed ? seed : 1;
    printf("# differential seed %" PRIu64 ", %d tables\n", seed, rounds);
    enum { ROUTES = 300, RECIPIENTS = 200 };
    size_t compiled = 0, rejected = 0, keyed = 0, evals = 0, hits = 0, warnings = 0, stops = 0, diffs = 0;
    size_t cand_on = 0, cand_off = 0, could_diffs = 0, addr_diffs = 0, inner = 0;
    struct route_matcher *m = route_matcher_new();
    const char *hnames[] = {"X-Test", "X-Test"};
    const char *hvalues[] = {"hello", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"};
    for (int round = 0; round < rounds; round++) {
        struct route **rs = calloc(ROUTES, sizeof *rs);
        size_t n = 0;
        for (size_t k = 0; k < ROUTES; k++) {
            struct buf e;
            bool groups;
            gen_expression(&e, &groups);
            char id[32], fwd[96];
            snprintf(id, sizeof id, "%024zx", k);
            const char *acts[3];
            size_t na = 0;
            snprintf(fwd, sizeof fwd, groups && pick(2) ? "forward('https://h.test/%zu/\\1')" : "forward('r%zu@d.test')",
                     k % 37);
            acts[na++] = fwd;
            if (pick(100) < 20) acts[na++] = "store(notify='https://n.test/\\g<0>')";
            if (pick(100) < 3) acts[na++] = "stop()";
            struct route *r = mk(id, (int32_t)pick(7) - 3, (int64_t)(k * 7 % ROUTES), e.s, acts, na);
            if (!r && na > 1) r = mk(id, (int32_t)pick(7) - 3, (int64_t)(k * 7 % ROUTES), e.s, acts, 1);
            if (!r) {
                /* A pattern the grammar made invalid, or \1 / \g<0> without a group. */
                const char *plain[] = {"forward('z@d.test')"};
                r = mk(id, (int32_t)pick(7) - 3, (int64_t)(k * 7 % ROUTES), e.s, plain, 1);
            }
            if (!r) {
                rejected++;
                continue;
            }
            compiled++;
            keyed += r->key != NULL;
            rs[n++] = r;
        }
        struct route_table *t = route_table_new(rs, n);
        free(rs);
        for (size_t k = 0; t->idx.inner.slots && k <= t->idx.inner.mask; k++) inner += t->idx.inner.slots[k].count;
        for (size_t q = 0; q < RECIPIENTS; q++) {
            struct buf rc;
            gen_recipient(&rc);
            /* The header that hits the match limit is rare: each hit costs ROUTE_MATCH_LIMIT steps. */
            const struct route_message msg = {.recipient = rc.s, .nheaders = pick(100) < 4 ? 2 : 1,
                                              .header_names = hnames, .header_values = hvalues};
            struct route_result on, off;
            route_table_set_prefilter(t, true);
            const int a = route_evaluate(t, m, &msg, &on);
            cand_on += route_matcher_last_candidates(m);
            const bool could_on = route_could_match(t, m, rc.s);
            const struct route *addr_on = route_match_address(t, m, rc.s);
            route_table_set_prefilter(t, false);
            const int b = route_evaluate(t, m, &msg, &off);
            cand_off += route_matcher_last_candidates(m);
            const bool could_off = route_could_match(t, m, rc.s);
            const struct route *addr_off = route_match_address(t, m, rc.s);
            evals++;
            hits += off.nhits;
            warnings += off.nwarnings;
            stops += off.nhits && off.hits[off.nhits - 1].stop;
            if (a != b || !same_result(&on, &off, rc.s)) diffs++;
            if (could_on != could_off) {
                could_diffs++;
                printf("# could_match differs for %s\n", rc.s);
            }
            if (addr_on != addr_off) {
                addr_diffs++;
                printf("# match_address differs for %s\n", rc.s);
            }
            route_result_clear(&on);
            route_result_clear(&off);
        }
        route_table_unref(t);
    }
    route_matcher_free(m);
    printf("# %zu routes compiled (%zu keyed), %zu rejected; %zu evaluations, %zu hits, %zu warnings, %zu "
           "stopped; candidates %zu with the prefilter, %zu without; %zu routes filed under an inner key\n",
           compiled, keyed, rejected, evals, hits, warnings, stops, cand_on, cand_off, inner);
    CHECK(diffs == 0, "route_evaluate: identical with and without the prefilter (%zu differ)", diffs);
    CHECK(could_diffs == 0, "route_could_match: identical (%zu differ)", could_diffs);
    CHECK(addr_diffs == 0, "route_match_address: identical (%zu differ)", addr_diffs);
    /* The test means something only if the grammar exercises both sides. */
    CHECK(keyed > compiled / 5 && keyed < compiled, "both keyed and unkeyed routes (%zu of %zu)", keyed, compiled);
    CHECK(hits > evals / 2 && warnings > 0 && stops > 0, "hits, warnings and stops happen");
    CHECK(cand_on < cand_off, "the prefilter skipped routes");
    CHECK(inner > compiled / 10, "routes filed under an inner key (%zu of %zu)", inner, compiled);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    test_extractor();
    test_runs();
    test_index_used();
    test_inner_used();
    test_differential();
    return check_done();
}
