/* tests/routes/test_registry.c — the route registry and per-route reference counting:
 *   - a new registry holds an empty table;
 *   - a reader that took the current table keeps it (and its routes) alive across a publish;
 *   - a new table built from the old one's routes (route_ref each) shares them: dropping the old
 *     table frees only the route that was replaced or removed;
 *   - readers evaluating while writers add, replace and remove routes under the writer lock, on
 *     threads: every table a reader sees is consistent, and the last table holds what the writers
 *     did.  Run under ASan (use after free, leaks) and, when it builds, under TSan (races). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "routes/routes.h"
#include "util/log.h"

static struct route *mk(const char *id, int32_t prio, int64_t seq, const char *expr,
                        const char *action)
{
    const char *acts[] = {action};
    const struct route_def def = {.id = id, .priority = prio, .seq = seq, .description = "",
                                  .expression = expr, .actions = acts, .nactions = 1,
                                  .created_at = 1329311011};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    if (!r) printf("# compile %s failed: %s\n", id, err);
    free(err);
    return r;
}

static size_t hits(const struct route_table *t, const char *rcpt)
{
    struct route_matcher *m = route_matcher_new();
    struct route_result res;
    const struct route_message msg = {.recipient = rcpt};
    size_t n = route_evaluate(t, m, &msg, &res) == 0 ? res.nhits : (size_t)-1;
    route_result_clear(&res);
    route_matcher_free(m);
    return n;
}

static void test_empty(void)
{
    struct route_registry *reg = route_registry_new();
    CHECK(reg != NULL, "registry created");
    struct route_table *t = route_registry_current(reg);
    CHECK(t != NULL && route_table_count(t) == 0, "a new registry holds an empty table");
    route_table_unref(t);
    route_registry_free(reg);
    route_registry_free(NULL);
}

static void test_reader_keeps_old(void)
{
    struct route_registry *reg = route_registry_new();
    struct route *a = mk("aaaaaaaaaaaaaaaaaaaaaaaa", 0, 1, "match_recipient('a@.*')", "forward('https://h.test/a')");
    struct route *b = mk("bbbbbbbbbbbbbbbbbbbbbbbb", 0, 2, "match_recipient('b@.*')", "forward('https://h.test/b')");

    route_registry_lock(reg);
    struct route_table *cur = route_registry_current(reg);
    struct route_table *t1 = route_table_derive(cur, NULL, a);
    route_table_unref(cur);
    cur = route_registry_current(reg);
    route_table_unref(cur);
    route_registry_publish(reg, t1);
    route_registry_unlock(reg);

    /* A reader (a message being routed) takes the table. */
    struct route_table *held = route_registry_current(reg);
    CHECK(route_table_count(held) == 1, "the reader sees the published table");

    /* A writer replaces a (same id, new priority) and adds b; a is recompiled, b new. */
    route_registry_lock(reg);
    cur = route_registry_current(reg);
    struct route *a2 = mk("aaaaaaaaaaaaaaaaaaaaaaaa", 5, 1, "match_recipient('x@.*')", "stop()");
    struct route_table *t2 = route_table_derive(cur, "aaaaaaaaaaaaaaaaaaaaaaaa", a2);
    route_table_unref(cur);
    cur = t2;
    struct route_table *t3 = route_table_derive(cur, NULL, b);
    route_table_unref(t2);
    route_registry_publish(reg, t3);
    route_registry_unlock(reg);

    /* The held table is the old one, whole: its route a still matches "a@", and is still the
     * original a (the registry dropped its reference to it). */
    CHECK(route_table_count(held) == 1, "the held table still has one route");
    CHECK(route_table_at(held, 0) == a, "and it is the original route a");
    CHECK(hits(held, "a@x.test") == 1, "the old route a still evaluates on the held table");
    CHECK(route_get_def(route_table_at(held, 0))->priority == 0, "with its old priority");

    struct route_table *now = route_registry_current(reg);
    CHECK(route_table_count(now) == 2, "the current table has two routes");
    CHECK(hits(now, "a@x.test") == 0 && hits(now, "x@x.test") == 1, "the new a matches x@, not a@");
    CHECK(route_table_at(now, 0) == b && route_table_at(now, 1) == a2,
          "order: b (priority 0) then a (priority 5)");
    route_table_unref(held); /* the last reference to the old a: freed now (ASan) */
    CHECK(hits(now, "b@x.test") == 1, "b unaffected by the old table going away");

    /* Removing b: a table without it; b lives while `now` holds it. */
    route_registry_lock(reg);
    cur = route_registry_current(reg);
    struct route_table *t4 = route_table_derive(cur, "bbbbbbbbbbbbbbbbbbbbbbbb", NULL);
    route_table_unref(cur);
    route_registry_publish(reg, t4);
    route_registry_unlock(reg);
    CHECK(hits(now, "b@x.test") == 1, "a removed route still evaluates in a held table");
    route_table_unref(now);
    struct route_table *last = route_registry_current(reg);
    CHECK(route_table_count(last) == 1 && route_table_at(last, 0) == a2, "only a remains");
    route_table_unref(last);
    route_registry_free(reg);
}

/* ---- threads ------------------------------------------------------------------------------- */

enum { READERS = 4, WRITERS = 2, ROUNDS = 150 };

struct shared {
    struct route_registry *reg;
    atomic_int stop;
    atomic_long reads;
    atomic_int bad;
    atomic_long seq;
};

/* Every table has routes whose ids are "w<writer>-<n>": consistent means strictly ordered by
 * (priority, seq) and each route's definition readable. */
static void *reader(void *arg)
{
    struct shared *sh = arg;
    struct route_matcher *m = route_matcher_new();
    while (!atomic_load(&sh->stop)) {
        struct route_table *t = route_registry_current(sh->reg);
        size_t n = route_table_count(t);
        for (size_t i = 1; i < n; i++) {
            const struct route_def *p = route_get_def(route_table_at(t, i - 1));
            const struct route_def *q = route_get_def(route_table_at(t, i));
            if (p->priority > q->priority || (p->priority == q->priority && p->seq >= q->seq))
                atomic_store(&sh->bad, 1);
            if (strlen(q->id) < 3 || q->nactions != 1) atomic_store(&sh->bad, 1);
        }
        struct route_result res;
        const struct route_message msg = {.recipient = "user@example.com"};
        if (route_evaluate(t, m, &msg, &res) != 0 || res.nhits != n) atomic_store(&sh->bad, 1);
        route_result_clear(&res);
        route_table_unref(t);
        atomic_fetch_add(&sh->reads, 1);
    }
    route_matcher_free(m);
    return NULL;
}

struct writer_arg {
    struct shared *sh;
    int w;
    size_t mine; /* routes of this writer in the table at the end */
};

static void *writer(void *arg)
{
    struct writer_arg *wa = arg;
    struct shared *sh = wa->sh;
    char id[32], oldest[32];
    long first = 0, next = 0;
    for (int r = 0; r < ROUNDS; r++) {
        route_registry_lock(sh->reg);
        struct route_table *cur = route_registry_current(sh->reg);
        struct route_table *t;
        if (r % 3 == 2 && first < next) {
            snprintf(oldest, sizeof oldest, "w%d-%ld", wa->w, first++);
            t = route_table_derive(cur, oldest, NULL); /* remove this writer's oldest route */
        } else {
            snprintf(id, sizeof id, "w%d-%ld", wa->w, next++);
            long seq = atomic_fetch_add(&sh->seq, 1);
            struct route *nr = mk(id, (int32_t)(seq % 7) - 3, seq, "match_recipient('(?P<u>[^@]+)@example\\.com')",
                                  "forward('https://h.test/\\g<u>')");
            t = route_table_derive(cur, NULL, nr);
        }
        route_table_unref(cur);
        route_registry_publish(sh->reg, t);
        route_registry_unlock(sh->reg);
    }
    wa->mine = (size_t)(next - first);
    return NULL;
}

static void test_threads(void)
{
    struct shared sh = {.reg = route_registry_new()};
    atomic_init(&sh.stop, 0);
    atomic_init(&sh.reads, 0);
    atomic_init(&sh.bad, 0);
    atomic_init(&sh.seq, 1);
    pthread_t rt[READERS], wt[WRITERS];
    struct writer_arg wa[WRITERS];
    for (int i = 0; i < READERS; i++) pthread_create(&rt[i], NULL, reader, &sh);
    for (int i = 0; i < WRITERS; i++) {
        wa[i] = (struct writer_arg){.sh = &sh, .w = i};
        pthread_create(&wt[i], NULL, writer, &wa[i]);
    }
    for (int i = 0; i < WRITERS; i++) pthread_join(wt[i], NULL);
    atomic_store(&sh.stop, 1);
    for (int i = 0; i < READERS; i++) pthread_join(rt[i], NULL);

    CHECK(!atomic_load(&sh.bad), "every table a reader saw was ordered and evaluated whole");
    CHECK(atomic_load(&sh.reads) > 0, "readers ran (%ld reads)", (long)atomic_load(&sh.reads));
    struct route_table *t = route_registry_current(sh.reg);
    size_t want = 0;
    for (int i = 0; i < WRITERS; i++) want += wa[i].mine;
    CHECK(route_table_count(t) == want, "no change lost under the writer lock: %zu routes (want %zu)",
          route_table_count(t), want);
    route_table_unref(t);
    route_registry_free(sh.reg);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    test_empty();
    test_reader_keeps_old();
    test_threads();
    return check_done();
}
