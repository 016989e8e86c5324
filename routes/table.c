/* routes/table.c — compiling one route, and the immutable reference-counted route table with
 * its literal-prefix index (the prefilter: routes/internal.h, "The table and its prefilter"). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/internal.h"
#include "util/limits.h"

static char *dup_or_empty(const char *s, bool *oom)
{
    char *d = strdup(s ? s : "");
    if (!d) *oom = true;
    return d;
}

static int copy_def(struct route *r, const struct route_def *src)
{
    bool oom = false;
    r->def = *src;
    r->def.id = r->own_id = dup_or_empty(src->id, &oom);
    r->def.description = r->own_description = dup_or_empty(src->description, &oom);
    r->def.expression = r->own_expression = dup_or_empty(src->expression, &oom);
    r->def.nactions = 0;
    r->own_actions = calloc(src->nactions ? src->nactions : 1, sizeof *r->own_actions);
    r->def.actions = (const char *const *)r->own_actions;
    if (!r->own_actions) return -1;
    for (size_t i = 0; i < src->nactions; i++) {
        r->own_actions[i] = dup_or_empty(src->actions[i], &oom);
        r->def.nactions = i + 1;
    }
    return oom ? -1 : 0;
}

static void free_def(struct route *r)
{
    free(r->own_id);
    free(r->own_description);
    free(r->own_expression);
    if (r->own_actions) {
        for (size_t i = 0; i < r->def.nactions; i++) free(r->own_actions[i]);
        free(r->own_actions);
    }
}

/* "1".."ngroups" then every distinct name. */
static int build_capnames(struct route *r)
{
    const size_t n = r->expr.ngroups + r->expr.nnames;
    r->capnames = calloc(n ? n : 1, sizeof *r->capnames);
    r->capgroups = calloc(n ? n : 1, sizeof *r->capgroups);
    if (!r->capnames || !r->capgroups) return -1;
    for (uint32_t g = 1; g <= r->expr.ngroups; g++) {
        char num[16];
        snprintf(num, sizeof num, "%u", g);
        r->capnames[r->ncapnames] = strdup(num);
        if (!r->capnames[r->ncapnames]) return -1;
        r->capgroups[r->ncapnames++] = g;
    }
    for (size_t i = 0; i < r->expr.nnames; i++) {
        r->capnames[r->ncapnames] = strdup(r->expr.names[i]);
        if (!r->capnames[r->ncapnames]) return -1;
        r->capgroups[r->ncapnames++] = r->expr.name_groups[i];
    }
    return 0;
}

struct route *route_compile(const struct route_def *def, char **err)
{
    *err = NULL;
    struct route *r = calloc(1, sizeof *r);
    if (!r) goto oom;
    atomic_init(&r->refs, 1);
    if (copy_def(r, def) < 0) goto oom;
    if (def->nactions > ROUTE_ACTIONS_MAX) {
        *err = route_errorf("actions", 0, "more than %d actions", ROUTE_ACTIONS_MAX);
        goto bad;
    }
    if (route_expr_parse(r->def.expression, &r->expr, err) < 0) goto bad;
    for (size_t i = 0; i < r->expr.nfilters; i++)
        r->has_recipient_filter |= r->expr.filters[i].kind == FILTER_RECIPIENT;
    for (size_t i = 0; i < r->expr.nfilters; i++) {
        const struct route_filter *f = &r->expr.filters[i];
        if (f->kind == FILTER_CATCH_ALL) continue;
        if (f->kind == FILTER_RECIPIENT && f->prefixlen > 0 && f->prefixlen <= UINT32_MAX) {
            r->key = f->prefix;
            r->keylen = f->prefixlen;
        }
        break;
    }
    r->actions = calloc(def->nactions ? def->nactions : 1, sizeof *r->actions);
    if (!r->actions) goto oom;
    size_t store_at = SIZE_MAX;
    for (size_t i = 0; i < def->nactions; i++) {
        if (route_action_parse(r->def.actions[i], i, &r->expr, &r->actions[i], err) < 0) goto bad;
        r->nactions++;
        if (r->actions[i].kind == ACTION_STOP) r->has_stop = true;
        if (r->actions[i].kind == ACTION_STORE) {
            if (store_at != SIZE_MAX) {
                char what[32];
                snprintf(what, sizeof what, "actions[%zu]", i);
                *err = route_errorf(what, 0, "store() already given in actions[%zu]", store_at);
                goto bad;
            }
            store_at = i;
        }
    }
    if (build_capnames(r) < 0) goto oom;
    return r;
oom:
    if (!*err) *err = strdup("out of memory");
bad:
    route_free(r);
    return NULL;
}

struct route *route_ref(struct route *r)
{
    if (r) atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

/* Drops one reference; the last one frees.  acq_rel: every use of the route by a thread that
 * dropped its reference happens before the free. */
void route_free(struct route *r)
{
    if (!r) return;
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) return;
    route_expr_free(&r->expr);
    for (size_t i = 0; i < r->nactions; i++) route_action_free(&r->actions[i]);
    free(r->actions);
    for (size_t i = 0; i < r->ncapnames; i++) free(r->capnames[i]);
    free(r->capnames);
    free(r->capgroups);
    free_def(r);
    free(r);
}

const struct route_def *route_get_def(const struct route *r)
{
    return &r->def;
}

/* ---------------------------------------------------------------------------------------------
 * The table. */

static int cmp_route(const void *a, const void *b)
{
    const struct route *x = *(struct route *const *)a, *y = *(struct route *const *)b;
    if (x->def.priority != y->def.priority) return x->def.priority < y->def.priority ? -1 : 1;
    if (x->def.seq != y->def.seq) return x->def.seq < y->def.seq ? -1 : 1;
    return 0;
}

/* FNV-1a, 64 bits: fed one byte at a time so that the evaluation hashes every prefix length of
 * the recipient in one pass. */
uint64_t route_prefix_hash_init(void)
{
    return 0xcbf29ce484222325ull;
}

uint64_t route_prefix_hash_step(uint64_t h, unsigned char c)
{
    return (h ^ c) * 0x100000001b3ull;
}

static uint64_t prefix_hash(const char *s, size_t len)
{
    uint64_t h = route_prefix_hash_init();
    for (size_t i = 0; i < len; i++) h = route_prefix_hash_step(h, (unsigned char)s[i]);
    return h;
}

const struct prefix_slot *route_index_find(const struct route_index *idx, uint64_t hash, const char *key,
                                           size_t keylen)
{
    if (!idx->slots) return NULL;
    for (size_t i = (size_t)hash & idx->mask;; i = (i + 1) & idx->mask) {
        const struct prefix_slot *s = &idx->slots[i];
        if (!s->key) return NULL;
        if (s->hash == hash && s->keylen == keylen && memcmp(s->key, key, keylen) == 0) return s;
    }
}

static void index_free(struct route_index *idx)
{
    free(idx->always);
    free(idx->positions);
    free(idx->slots);
    free(idx->lens);
    memset(idx, 0, sizeof *idx);
}

/* Builds t->idx over t->routes (in evaluation order).  -1 when memory ran out. */
static int index_build(struct route_table *t)
{
    struct route_index *idx = &t->idx;
    const size_t n = t->n;
    if (n > UINT32_MAX) return -1;
    size_t nkeyed = 0, maxlen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!t->routes[i]->key) continue;
        nkeyed++;
        if (t->routes[i]->keylen > maxlen) maxlen = t->routes[i]->keylen;
    }
    idx->always = malloc((n - nkeyed ? n - nkeyed : 1) * sizeof *idx->always);
    idx->positions = malloc((nkeyed ? nkeyed : 1) * sizeof *idx->positions);
    uint32_t *slot_of = malloc((n ? n : 1) * sizeof *slot_of);
    bool *len_seen = calloc(maxlen + 1, sizeof *len_seen);
    if (!idx->always || !idx->positions || !slot_of || !len_seen) goto oom;
    if (nkeyed) {
        size_t nslots = 16;
        while (nslots < 2 * nkeyed) nslots *= 2;
        idx->slots = calloc(nslots, sizeof *idx->slots);
        if (!idx->slots) goto oom;
        idx->mask = nslots - 1;
    }
    /* Pass 1: the always list, each keyed route's slot, the counts, the key lengths. */
    size_t ndistinct = 0;
    for (size_t i = 0; i < n; i++) {
        const struct route *r = t->routes[i];
        if (!r->key) {
            idx->always[idx->nalways++] = (uint32_t)i;
            continue;
        }
        const uint64_t h = prefix_hash(r->key, r->keylen);
        size_t k = (size_t)h & idx->mask;
        while (idx->slots[k].key &&
               !(idx->slots[k].hash == h && idx->slots[k].keylen == r->keylen &&
                 memcmp(idx->slots[k].key, r->key, r->keylen) == 0))
            k = (k + 1) & idx->mask;
        struct prefix_slot *s = &idx->slots[k];
        if (!s->key) {
            s->hash = h;
            s->key = r->key;
            s->keylen = (uint32_t)r->keylen;
        }
        s->count++;
        slot_of[i] = (uint32_t)k;
        if (!len_seen[r->keylen]) {
            len_seen[r->keylen] = true;
            ndistinct++;
        }
    }
    /* Pass 2: bucket starts, then the positions in ascending order within each bucket. */
    uint32_t next = 0;
    for (size_t k = 0; idx->slots && k <= idx->mask; k++) {
        idx->slots[k].start = next;
        next += idx->slots[k].count;
        idx->slots[k].count = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!t->routes[i]->key) continue;
        struct prefix_slot *s = &idx->slots[slot_of[i]];
        idx->positions[s->start + s->count++] = (uint32_t)i;
    }
    idx->lens = malloc((ndistinct ? ndistinct : 1) * sizeof *idx->lens);
    if (!idx->lens) goto oom;
    for (size_t l = 1; l <= maxlen; l++)
        if (len_seen[l]) idx->lens[idx->nlens++] = (uint32_t)l;
    free(slot_of);
    free(len_seen);
    return 0;
oom:
    free(slot_of);
    free(len_seen);
    index_free(idx);
    return -1;
}

struct route_table *route_table_new(struct route **take_routes, size_t n)
{
    struct route_table *t = calloc(1, sizeof *t);
    struct route **rs = calloc(n ? n : 1, sizeof *rs);
    if (!t || !rs) {
        free(t);
        free(rs);
        for (size_t i = 0; i < n; i++) route_free(take_routes[i]);
        return NULL;
    }
    if (n) memcpy(rs, take_routes, n * sizeof *rs);
    /* Equal (priority, seq) pairs do not happen (seq is unique); qsort is not stable, so such
     * routes would come in an unspecified order. */
    qsort(rs, n, sizeof *rs, cmp_route);
    t->routes = rs;
    t->n = n;
    /* Without the index (memory ran out) the table still works: every route is a candidate. */
    t->prefilter = index_build(t) == 0;
    atomic_init(&t->refs, 1);
    return t;
}

void route_table_set_prefilter(struct route_table *t, bool on)
{
    t->prefilter = on && t->idx.always != NULL;
}

bool route_table_prefilter(const struct route_table *t)
{
    return t->prefilter;
}

struct route_table *route_table_ref(struct route_table *t)
{
    if (t) atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void route_table_unref(struct route_table *t)
{
    if (!t) return;
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
    for (size_t i = 0; i < t->n; i++) route_free(t->routes[i]);
    free(t->routes);
    index_free(&t->idx);
    free(t);
}

size_t route_table_count(const struct route_table *t)
{
    return t ? t->n : 0;
}

const struct route *route_table_at(const struct route_table *t, size_t i)
{
    return t && i < t->n ? t->routes[i] : NULL;
}

struct route *route_table_get(const struct route_table *t, size_t i)
{
    return t && i < t->n ? t->routes[i] : NULL;
}

struct route_table *route_table_derive(const struct route_table *old, const char *drop_id,
                                       struct route *add)
{
    size_t n = route_table_count(old), k = 0;
    struct route **rs = malloc((n + 1) * sizeof *rs);
    if (!rs) {
        route_free(add);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        struct route *r = route_table_get(old, i);
        if (drop_id && strcmp(route_get_def(r)->id, drop_id) == 0) continue;
        rs[k++] = route_ref(r);
    }
    if (add) rs[k++] = add;
    struct route_table *t = route_table_new(rs, k);
    free(rs);
    return t;
}
