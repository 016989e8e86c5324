/* tests/fuzz/fuzz_routes.c — the route language under arbitrary bytes.
 *
 * The input is split at NUL bytes: the first piece is the expression, the next ones (at most
 * ROUTE_ACTIONS_MAX + 1) are actions.  The route is compiled; when it compiles it is put in a
 * table with a catch_all() route and evaluated for a few fixed recipients against a small fixed
 * message, and route_could_match / route_match_address run too.  Aborts on any inconsistency
 * the API relies on (an error without a message, a result that names an unknown route).
 * Built with libFuzzer when -DINLET_LIBFUZZER, otherwise as a program that runs every file named
 * on its command line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "routes/routes.h"
#include "util/limits.h"
#include "util/log.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_result(const struct route_result *res)
{
    for (size_t i = 0; i < res->nhits; i++) {
        const struct route_hit *h = &res->hits[i];
        if (strcmp(h->route_id, "fuzz") != 0 && strcmp(h->route_id, "tail") != 0) abort();
        for (size_t k = 0; k < h->ncaptures; k++)
            if (!h->capture_names[k] || !h->capture_values[k]) abort();
        for (size_t k = 0; k < h->nactions; k++)
            if (!h->actions[k]) abort();
    }
    for (size_t i = 0; i < res->ndeliveries; i++) {
        const struct route_delivery *d = &res->deliveries[i];
        if (!d->target || d->nroute_ids == 0 || strlen(d->target) > ROUTE_TARGET_MAX) abort();
        for (size_t k = 0; k < i; k++) {
            if (res->deliveries[k].format == d->format && res->deliveries[k].kind == d->kind &&
                strcmp(res->deliveries[k].target, d->target) == 0)
                abort(); /* not de-duplicated */
        }
        if (d->kind == ROUTE_DEST_URL && strncasecmp(d->target, "http", 4) != 0) abort();
        if (d->kind == ROUTE_DEST_ADDRESS && strpbrk(d->target, "\r\n ,<>")) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct route_matcher *m;
    if (!m) {
        log_set_level(LOG_ERROR);
        m = route_matcher_new();
        if (!m) abort();
    }
    if (size > 3 * ROUTE_EXPRESSION_MAX) return 0;
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    const char *pieces[ROUTE_ACTIONS_MAX + 2];
    size_t n = 0;
    for (char *p = buf; n < ROUTE_ACTIONS_MAX + 2;) {
        pieces[n++] = p;
        char *z = memchr(p, '\0', (size_t)(buf + size - p));
        if (!z || z == buf + size) break;
        p = z + 1;
    }
    const struct route_def def = {.id = "fuzz", .priority = 0, .seq = 1, .expression = pieces[0],
                                  .actions = pieces + 1, .nactions = n - 1};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    if (!r) {
        if (!err || !*err) abort();
        free(err);
        free(buf);
        return 0;
    }
    if (err) abort();
    if (strcmp(route_get_def(r)->expression, pieces[0]) != 0) abort();

    const char *tail_actions[] = {"store()"};
    const struct route_def tail = {.id = "tail", .priority = 1, .seq = 2, .expression = "catch_all()",
                                   .actions = tail_actions, .nactions = 1};
    struct route *routes[2] = {r, route_compile(&tail, &err)};
    if (!routes[1]) abort();
    struct route_table *t = route_table_new(routes, 2);
    if (!t) abort();

    static const char *const names[] = {"Subject", "From", "X-Tag", "subject", "To"};
    static const char *const values[] = {"Hello wörld: ticket 123", "Alice <alice@example.org>", "a\xff\xfe b",
                                         "second subject", "bob+tag@example.com, Carol <c@x.test>"};
    static const char *const rcpts[] = {"bob+tag@example.com", "Alice@XN--BCHER-KVA.Example", "aaaaaaaaaaaaaaaaaaaaaaaaaab",
                                        "\xff@\xfe", ""};
    for (size_t i = 0; i < sizeof rcpts / sizeof rcpts[0]; i++) {
        const struct route_message msg = {.recipient = rcpts[i], .nheaders = 5, .header_names = names,
                                          .header_values = values};
        struct route_result res;
        if (route_evaluate(t, m, &msg, &res) < 0) abort();
        check_result(&res);
        if (res.nhits == 0) abort(); /* the catch_all tail always matches when nothing else did */
        route_result_clear(&res);
        route_could_match(t, m, rcpts[i]);
        const struct route *hit = route_match_address(t, m, rcpts[i]);
        if (hit && hit != route_table_at(t, 0) && hit != route_table_at(t, 1)) abort();
    }
    route_table_unref(t);
    free(buf);
    return 0;
}
