/* bench/route_eval.c — cost of route_evaluate for one recipient (a benchmark, not a test).
 *
 *   build/bench/route-eval [ITERATIONS] [MAX_ROUTES]
 *
 * For N = 1,000, 10,000 and 100,000 routes `match_recipient("^userK-(\d+)@example\.com$")`
 * (K = 0..N-1, each with forward("https://app.test/in/\1")), prints the microseconds per
 * recipient when only the last route matches, when none matches and a catch_all() route at the
 * end takes it, when the first matches, and for a mixed table where every tenth route has a
 * pattern without a literal prefix (`[u]serK-...`: the prefilter files it under an inner literal,
 * "serK-") and the last route matches; for a table whose routes share one prefix and differ in
 * their domain (`^user-(\d+)@tK\.example\.org$`: filed under "@tK.exam"); and for a mixed table
 * whose every tenth pattern has no literal at all (every character a class: `[u][s][e][r]...`),
 * which the prefilter cannot index, so that each of them costs one PCRE2 match per recipient.  ITERATIONS (default 200) is for 1,000 routes; larger tables run
 * proportionally fewer (at least 5).  MAX_ROUTES (default 100000) skips larger sizes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "routes/routes.h"
#include "util/log.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

enum shape { PLAIN, MIXED, TENANTS, NO_LITERAL };

/* `s` with every character inside a class of its own ("ab." -> "[a][b][.]"). */
static void classes(char *out, size_t outsz, const char *s)
{
    size_t n = 0;
    for (; *s && n + 4 < outsz; s++) {
        out[n++] = '[';
        out[n++] = *s;
        out[n++] = ']';
    }
    out[n] = '\0';
}

/* MIXED, NO_LITERAL: every tenth route (K % 10 == 5) has no literal prefix, or no literal. */
static struct route_table *build(size_t n, bool catch_all, enum shape shape)
{
    struct route **rs = calloc(n + 1, sizeof *rs);
    char id[32], expr[512];
    const char *fwd[] = {"forward(\"https://app.test/in/\\1\")"};
    const char *store[] = {"store()"};
    size_t k = 0;
    for (; k < n; k++) {
        snprintf(id, sizeof id, "%024zx", k);
        if (shape == MIXED && k % 10 == 5) {
            snprintf(expr, sizeof expr, "match_recipient(\"[u]ser%zu-(\\d+)@example\\.com$\")", k);
        } else if (shape == NO_LITERAL && k % 10 == 5) {
            char lit[32], a[128], b[128];
            snprintf(lit, sizeof lit, "user%zu-", k);
            classes(a, sizeof a, lit);
            classes(b, sizeof b, "@example.com");
            snprintf(expr, sizeof expr, "match_recipient(\"%s(\\d+)%s$\")", a, b);
        } else if (shape == TENANTS) {
            snprintf(expr, sizeof expr, "match_recipient(\"^user-(\\d+)@t%zu\\.example\\.org$\")", k);
        } else {
            snprintf(expr, sizeof expr, "match_recipient(\"^user%zu-(\\d+)@example\\.com$\")", k);
        }
        const struct route_def def = {.id = id, .priority = 0, .seq = (int64_t)k, .expression = expr,
                                      .actions = fwd, .nactions = 1};
        char *err = NULL;
        rs[k] = route_compile(&def, &err);
        if (!rs[k]) {
            fprintf(stderr, "compile: %s\n", err);
            exit(1);
        }
    }
    if (catch_all) {
        const struct route_def def = {.id = "ffffffffffffffffffffffff", .priority = 1, .seq = (int64_t)k,
                                      .expression = "catch_all()", .actions = store, .nactions = 1};
        char *err = NULL;
        rs[k++] = route_compile(&def, &err);
    }
    struct route_table *t = route_table_new(rs, k);
    free(rs);
    return t;
}

static double run(struct route_table *t, const char *rcpt, int iters, size_t *hits)
{
    struct route_matcher *m = route_matcher_new();
    const struct route_message msg = {.recipient = rcpt};
    struct route_result res;
    route_evaluate(t, m, &msg, &res); /* warm-up */
    route_result_clear(&res);
    const double t0 = now();
    for (int i = 0; i < iters; i++) {
        route_evaluate(t, m, &msg, &res);
        *hits = res.nhits;
        route_result_clear(&res);
    }
    const double us = (now() - t0) * 1e6 / iters;
    route_matcher_free(m);
    return us;
}

int main(int argc, char **argv)
{
    log_set_level(LOG_ERROR);
    const int iters = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 200;
    const size_t maxn = argc > 2 ? (size_t)strtoull(argv[2], NULL, 10) : 100000;
    char ver[64];
    route_lib_version(ver, sizeof ver);
    printf("%s, %d iterations for 1,000 routes\n", ver, iters);
    const size_t sizes[] = {1000, 10000, 100000};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes && sizes[s] <= maxn; s++) {
        const size_t n = sizes[s];
        int it = (int)((double)iters * 1000.0 / (double)n);
        if (it < 5) it = 5;
        char last[64];
        snprintf(last, sizeof last, "user%zu-42@example.com", n - 1);
        struct route_table *t = build(n, false, PLAIN);
        size_t hits = 0;
        const double a = run(t, last, it, &hits);
        printf("%6zu routes, last one matches:           %10.2f us/recipient (hits %zu)\n", n, a, hits);
        route_table_unref(t);
        t = build(n, true, PLAIN);
        const double b = run(t, "nobody@example.com", it, &hits);
        printf("%6zu routes + catch_all at the end:      %10.2f us/recipient (hits %zu)\n", n, b, hits);
        const double c = run(t, "user0-42@EXAMPLE.COM", it, &hits);
        printf("%6zu routes, first of them matches:      %10.2f us/recipient (hits %zu)\n", n, c, hits);
        route_table_unref(t);
        t = build(n, false, MIXED);
        const double d = run(t, last, it, &hits);
        printf("%6zu routes, 10%% unprefixed, last matches: %8.2f us/recipient (hits %zu)\n", n, d, hits);
        route_table_unref(t);
        t = build(n, false, TENANTS);
        char tenant[64];
        snprintf(tenant, sizeof tenant, "user-42@t%zu.example.org", n - 1);
        const double e = run(t, tenant, it, &hits);
        printf("%6zu routes, one prefix, last tenant:     %8.2f us/recipient (hits %zu)\n", n, e, hits);
        route_table_unref(t);
        t = build(n, false, NO_LITERAL);
        const double f = run(t, last, it, &hits);
        printf("%6zu routes, 10%% without literal, last:  %8.2f us/recipient (hits %zu)\n", n, f, hits);
        route_table_unref(t);
    }
    return 0;
}
