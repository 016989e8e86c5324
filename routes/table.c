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
        if (f->kind == FILTER_RECIPIENT && f->nruns > 0) r->inner = f;
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

const struct prefix_slot *route_index_find(const struct key_map *map, uint64_t hash, const char *key,
                                           size_t keylen)
{
    if (!map->slots) return NULL;
    for (size_t i = (size_t)hash & map->mask;; i = (i + 1) & map->mask) {
        const struct prefix_slot *s = &map->slots[i];
        if (!s->key) return NULL;
        if (s->hash == hash && s->keylen == keylen && memcmp(s->key, key, keylen) == 0) return s;
    }
}

/* The slot of (key, keylen) in `slots` (mask + 1 of them, never full): its own, or the empty one
 * where it goes. */
static struct prefix_slot *slot_for(struct prefix_slot *slots, size_t mask, uint64_t h, const char *key,
                                    size_t keylen)
{
    size_t k = (size_t)h & mask;
    while (slots[k].key && !(slots[k].hash == h && slots[k].keylen == keylen && memcmp(slots[k].key, key, keylen) == 0))
        k = (k + 1) & mask;
    return &slots[k];
}

static size_t slots_for(size_t nkeys)
{
    size_t nslots = 16;
    while (nslots < 2 * nkeys) nslots *= 2;
    return nslots;
}

static void map_free(struct key_map *map)
{
    free(map->positions);
    free(map->slots);
    free(map->lens);
    memset(map, 0, sizeof *map);
}

static void index_free(struct route_index *idx)
{
    free(idx->always);
    free(idx->inner_all);
    map_free(&idx->prefix);
    map_free(&idx->inner);
    memset(idx, 0, sizeof *idx);
}

/* One key a route may be filed under. */
enum key_kind { KEY_NONE, KEY_PREFIX, KEY_INNER };
struct key_choice {
    enum key_kind kind;
    const char *key;
    uint32_t len;
};

/* Builds `map` from the routes whose choice is of `kind`.  -1 when memory ran out. */
static int map_build(struct key_map *map, const struct key_choice *ch, size_t n, enum key_kind kind)
{
    size_t nkeyed = 0, maxlen = 0;
    for (size_t i = 0; i < n; i++) {
        if (ch[i].kind != kind) continue;
        nkeyed++;
        if (ch[i].len > maxlen) maxlen = ch[i].len;
    }
    if (nkeyed == 0) return 0;
    const size_t nslots = slots_for(nkeyed);
    map->slots = calloc(nslots, sizeof *map->slots);
    map->positions = malloc(nkeyed * sizeof *map->positions);
    uint32_t *slot_of = malloc(n * sizeof *slot_of);
    bool *len_seen = calloc(maxlen + 1, sizeof *len_seen);
    if (!map->slots || !map->positions || !slot_of || !len_seen) goto oom;
    map->mask = nslots - 1;
    /* Pass 1: each keyed route's slot, the counts, the key lengths. */
    size_t ndistinct = 0;
    for (size_t i = 0; i < n; i++) {
        if (ch[i].kind != kind) continue;
        const uint64_t h = prefix_hash(ch[i].key, ch[i].len);
        struct prefix_slot *s = slot_for(map->slots, map->mask, h, ch[i].key, ch[i].len);
        if (!s->key) {
            s->hash = h;
            s->key = ch[i].key;
            s->keylen = ch[i].len;
        }
        s->count++;
        slot_of[i] = (uint32_t)(s - map->slots);
        if (!len_seen[ch[i].len]) {
            len_seen[ch[i].len] = true;
            ndistinct++;
        }
    }
    /* Pass 2: bucket starts, then the positions in ascending order within each bucket. */
    uint32_t next = 0;
    for (size_t k = 0; k <= map->mask; k++) {
        map->slots[k].start = next;
        next += map->slots[k].count;
        map->slots[k].count = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (ch[i].kind != kind) continue;
        struct prefix_slot *s = &map->slots[slot_of[i]];
        map->positions[s->start + s->count++] = (uint32_t)i;
    }
    map->lens = malloc(ndistinct * sizeof *map->lens);
    if (!map->lens) goto oom;
    for (size_t l = 1; l <= maxlen; l++)
        if (len_seen[l]) map->lens[map->nlens++] = (uint32_t)l;
    free(slot_of);
    free(len_seen);
    return 0;
oom:
    free(slot_of);
    free(len_seen);
    map_free(map);
    return -1;
}

/* The keys route `r` may be filed under: its prefix, then the first and the last
 * ROUTE_INNER_KEY_MAX bytes of each literal run.  How many (at most 1 + 2 * ROUTE_LITERAL_RUNS_MAX). */
static size_t key_options(const struct route *r, struct key_choice *out)
{
    size_t n = 0;
    if (r->key) out[n++] = (struct key_choice){KEY_PREFIX, r->key, (uint32_t)r->keylen};
    for (size_t k = 0; r->inner && k < r->inner->nruns; k++) {
        const struct route_literal *run = &r->inner->runs[k];
        const char *s = r->inner->lits + run->off;
        const uint32_t len = run->len < ROUTE_INNER_KEY_MAX ? run->len : ROUTE_INNER_KEY_MAX;
        out[n++] = (struct key_choice){KEY_INNER, s, len};
        if (run->len > len) out[n++] = (struct key_choice){KEY_INNER, s + run->len - len, len};
    }
    return n;
}

/* How many routes offer each key (a count per distinct (kind, key)), for choosing rare keys. */
struct key_count {
    struct prefix_slot slot; /* start: unused; count: the routes offering the key */
    enum key_kind kind;
};

static struct key_count *count_find(struct key_count *c, size_t mask, const struct key_choice *o, uint64_t h)
{
    size_t k = (size_t)h & mask;
    while (c[k].slot.key && !(c[k].kind == o->kind && c[k].slot.hash == h && c[k].slot.keylen == o->len &&
                              memcmp(c[k].slot.key, o->key, o->len) == 0))
        k = (k + 1) & mask;
    return &c[k];
}

static uint64_t option_hash(const struct key_choice *o)
{
    return prefix_hash(o->key, o->len) ^ (uint64_t)o->kind;
}

/* Chooses every route's key: of its options the one the fewest routes offer; on a tie the
 * prefix (it also fixes the position), then the longer.  -1 when memory ran out. */
static int choose_keys(const struct route_table *t, struct key_choice *ch)
{
    enum { OPTIONS = 1 + 2 * ROUTE_LITERAL_RUNS_MAX };
    struct key_choice opt[OPTIONS];
    size_t total = 0;
    for (size_t i = 0; i < t->n; i++) total += key_options(t->routes[i], opt);
    const size_t nslots = slots_for(total);
    struct key_count *counts = calloc(nslots, sizeof *counts);
    if (!counts) return -1;
    const size_t mask = nslots - 1;
    for (size_t i = 0; i < t->n; i++) {
        const size_t no = key_options(t->routes[i], opt);
        for (size_t k = 0; k < no; k++) {
            struct key_count *c = count_find(counts, mask, &opt[k], option_hash(&opt[k]));
            if (!c->slot.key) {
                c->slot = (struct prefix_slot){.hash = option_hash(&opt[k]), .key = opt[k].key, .keylen = opt[k].len};
                c->kind = opt[k].kind;
            }
            c->slot.count++;
        }
    }
    for (size_t i = 0; i < t->n; i++) {
        const size_t no = key_options(t->routes[i], opt);
        ch[i] = (struct key_choice){KEY_NONE, NULL, 0};
        uint32_t best = UINT32_MAX;
        for (size_t k = 0; k < no; k++) {
            const uint32_t cnt = count_find(counts, mask, &opt[k], option_hash(&opt[k]))->slot.count;
            const bool better = cnt < best || (cnt == best && ch[i].kind == KEY_INNER &&
                                               (opt[k].kind == KEY_PREFIX || opt[k].len > ch[i].len));
            if (better) {
                best = cnt;
                ch[i] = opt[k];
            }
        }
    }
    free(counts);
    return 0;
}

/* Builds t->idx over t->routes (in evaluation order).  -1 when memory ran out. */
static int index_build(struct route_table *t)
{
    struct route_index *idx = &t->idx;
    const size_t n = t->n;
    if (n > UINT32_MAX) return -1;
    struct key_choice *ch = malloc((n ? n : 1) * sizeof *ch);
    if (!ch || choose_keys(t, ch) < 0) goto oom;
    size_t nalways = 0, ninner = 0;
    for (size_t i = 0; i < n; i++) {
        nalways += ch[i].kind == KEY_NONE;
        ninner += ch[i].kind == KEY_INNER;
    }
    idx->always = malloc((nalways ? nalways : 1) * sizeof *idx->always);
    idx->inner_all = malloc((ninner ? ninner : 1) * sizeof *idx->inner_all);
    if (!idx->always || !idx->inner_all) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (ch[i].kind == KEY_NONE) idx->always[idx->nalways++] = (uint32_t)i;
        if (ch[i].kind == KEY_INNER) idx->inner_all[idx->ninner_all++] = (uint32_t)i;
    }
    if (map_build(&idx->prefix, ch, n, KEY_PREFIX) < 0 || map_build(&idx->inner, ch, n, KEY_INNER) < 0) goto oom;
    free(ch);
    return 0;
oom:
    free(ch);
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
