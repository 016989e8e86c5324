/* tests/routes/bench_eval.c — cost of route_evaluate for one recipient (built, not a test).
 *
 *   routes-bench-eval [ITERATIONS]
 *
 * For N = 1,000 and 10,000 routes `match_recipient("^userK-(\d+)@example\.com$")`
 * (K = 0..N-1, each with forward("https://app.test/in/\1")), prints the microseconds per
 * recipient when only the last route matches, when none matches and a catch_all() route at the
 * end takes it, and with JIT on (when available). */
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

static struct route_table *build(size_t n, bool catch_all)
{
    struct route **rs = calloc(n + 1, sizeof *rs);
    char id[32], expr[128];
    const char *fwd[] = {"forward(\"https://app.test/in/\\1\")"};
    const char *store[] = {"store()"};
    size_t k = 0;
    for (; k < n; k++) {
        snprintf(id, sizeof id, "%024zx", k);
        snprintf(expr, sizeof expr, "match_recipient(\"^user%zu-(\\d+)@example\\.com$\")", k);
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
    const int iters = argc > 1 ? atoi(argv[1]) : 200;
    char ver[64];
    route_lib_version(ver, sizeof ver);
    printf("%s, %d iterations each\n", ver, iters);
    const size_t sizes[] = {1000, 10000};
    for (size_t s = 0; s < 2; s++) {
        const size_t n = sizes[s];
        char last[64];
        snprintf(last, sizeof last, "user%zu-42@example.com", n - 1);
        struct route_table *t = build(n, false);
        size_t hits = 0;
        const double a = run(t, last, iters, &hits);
        printf("%6zu routes, last one matches:        %9.2f us/recipient (hits %zu)\n", n, a, hits);
        route_table_unref(t);
        t = build(n, true);
        const double b = run(t, "nobody@example.com", iters, &hits);
        printf("%6zu routes + catch_all at the end:   %9.2f us/recipient (hits %zu)\n", n, b, hits);
        const double c = run(t, "user0-42@EXAMPLE.COM", iters, &hits);
        printf("%6zu routes, first of them matches:      %9.2f us/recipient (hits %zu)\n", n, c, hits);
        route_table_unref(t);
    }
    return 0;
}
