/* routes/eval.c — matching one recipient against the route table (SPEC §4 "Evaluation").
 *
 * The recipient is normalised once per call into the matcher's buffer: everything after the
 * last '@' is the domain, lower-cased, an IDN given as its Unicode U-label (util/domains.h); the
 * local part is kept as received.  A recipient without '@' is matched as it is.
 *
 * A PCRE2 failure other than "no match" (match limit, depth or heap limit, JIT stack) makes the
 * filter false for route_evaluate and route_match_address, with a warning in the result; for
 * route_could_match it counts as a possible match (an RCPT is not refused on a limit), and
 * route_matcher_hit_limit() then says so: the caller must not accept at RCPT a recipient that
 * routing would then drop on the same limit.
 *
 * All three walk only the candidates the table's prefilter leaves for the normalised recipient
 * (routes/internal.h, "The table and its prefilter"): a skipped route's key is not a prefix of
 * (or, for an inner key, a substring of) the recipient, so its match_recipient filter could not match and it would have added nothing,
 * which keeps catch_all() ("no earlier route matched") and stop() exactly as in a full walk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/internal.h"
#include "util/domains.h"
#include "util/limits.h"
#include "util/log.h"

struct cursor {
    const uint32_t *p, *end;
};

struct route_matcher {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
    char *rcpt;                 /* the normalised recipient */
    size_t rcptlen, rcptcap;
    struct route_capture caps[ROUTE_CAPTURES_MAX + 1];
    /* The candidate walk (below): a heap of cursors, one per candidate list (the always list, the
     * prefix buckets, the inner buckets found); grown only when a recipient needs more. */
    struct cursor *heap;
    size_t heapcap;
    /* The inner-key buckets found in the recipient (cand_begin); grown as needed. */
    const struct prefix_slot **found;
    size_t foundcap;
    size_t last_candidates;
    bool hit_limit;             /* the last route_could_match answered yes on a PCRE2 limit only */
};

struct route_matcher *route_matcher_new(void)
{
    struct route_matcher *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->md = pcre2_match_data_create(ROUTE_CAPTURES_MAX + 1, NULL);
    m->mc = pcre2_match_context_create(NULL);
    if (!m->md || !m->mc) goto bad;
    pcre2_set_match_limit(m->mc, ROUTE_MATCH_LIMIT);
    pcre2_set_depth_limit(m->mc, ROUTE_DEPTH_LIMIT);
    pcre2_set_heap_limit(m->mc, ROUTE_HEAP_LIMIT_KIB);
    if (route_jit_available()) {
        m->js = pcre2_jit_stack_create(ROUTE_JIT_STACK_START, ROUTE_JIT_STACK_MAX, NULL);
        if (!m->js) goto bad;
        pcre2_jit_stack_assign(m->mc, NULL, m->js);
    }
    return m;
bad:
    route_matcher_free(m);
    return NULL;
}

void route_matcher_free(struct route_matcher *m)
{
    if (!m) return;
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
    free(m->rcpt);
    free(m->heap);
    free(m->found);
    free(m);
}

static int set_rcpt(struct route_matcher *m, const char *recipient)
{
    const size_t len = strlen(recipient);
    const char *at = strrchr(recipient, '@');
    char *ulabel = NULL;
    size_t need = len;
    if (at) {
        const char *d = at + 1;
        bool plain = true;
        for (const char *p = d; *p && plain; p++) {
            plain = (unsigned char)*p < 0x80 &&
                    !((p == d || p[-1] == '.') && (p[0] | 0x20) == 'x' && (p[1] | 0x20) == 'n' && p[2] == '-' && p[3] == '-');
        }
        if (!plain) {
            ulabel = domain_to_ulabel(d, strlen(d));
            if (!ulabel) return -1;
            need = (size_t)(d - recipient) + strlen(ulabel);
        }
    }
    if (need + 1 > m->rcptcap) {
        char *n = realloc(m->rcpt, need + 1);
        if (!n) {
            free(ulabel);
            return -1;
        }
        m->rcpt = n;
        m->rcptcap = need + 1;
    }
    if (ulabel) {
        const size_t local = (size_t)(at + 1 - recipient);
        memcpy(m->rcpt, recipient, local);
        memcpy(m->rcpt + local, ulabel, strlen(ulabel) + 1); /* fits: see need */
        free(ulabel);
        ulabel = NULL;
    } else {
        memcpy(m->rcpt, recipient, len + 1);
    }
    if (at && !ulabel) {
        for (char *p = m->rcpt + (at + 1 - recipient); *p; p++)
            if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + ('a' - 'A'));
    }
    m->rcptlen = need;
    return 0;
}

static bool ascii_caseeq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z') x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z') y = (char)(y + 32);
        if (x != y) return false;
        if (!x) return true;
    }
}

/* ---------------------------------------------------------------------------------------------
 * The candidates for m->rcpt, in evaluation order (see "The table and its prefilter" in
 * routes/internal.h): the table's always list merged with the prefix bucket of every key length
 * that is a prefix of the recipient and the inner bucket of every key found in it.  The lists are disjoint and each ascending; a binary heap of
 * their cursors yields the positions in order (one list, the common case, costs no sifting).
 * Without the prefilter (turned off, or no memory for the heap) every route is a candidate. */

struct cand {
    const struct route_table *t;
    bool full;
    size_t i;                /* full: the next position */
    struct cursor *h;
    size_t k;                /* cursors in the heap */
};

static void sift_down(struct cursor *h, size_t k, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, min = i;
        if (l < k && *h[l].p < *h[min].p) min = l;
        if (l + 1 < k && *h[l + 1].p < *h[min].p) min = l + 1;
        if (min == i) return;
        const struct cursor tmp = h[i];
        h[i] = h[min];
        h[min] = tmp;
        i = min;
    }
}

/* Makes room for `n` cursors in m->heap; false when memory ran out. */
static bool heap_reserve(struct route_matcher *m, size_t n)
{
    if (n <= m->heapcap) return true;
    size_t cap = m->heapcap ? m->heapcap : 16;
    while (cap < n) cap *= 2;
    struct cursor *nh = realloc(m->heap, cap * sizeof *nh);
    if (!nh) return false;
    m->heap = nh;
    m->heapcap = cap;
    return true;
}

static int cmp_slot(const void *a, const void *b)
{
    const struct prefix_slot *x = *(const struct prefix_slot *const *)a, *y = *(const struct prefix_slot *const *)b;
    return x < y ? -1 : x > y;
}

/* The inner buckets whose key occurs in m->rcpt, each once, into m->found; how many, or
 * SIZE_MAX when memory ran out.  Every position is probed once per distinct key length (at most
 * ROUTE_INNER_KEY_MAX of them). */
static size_t find_inner(struct route_matcher *m, const struct key_map *map)
{
    size_t nfound = 0;
    for (size_t i = 0; map->nlens && i + map->lens[0] <= m->rcptlen; i++) {
        uint64_t h = route_prefix_hash_init();
        size_t hashed = 0;
        for (size_t j = 0; j < map->nlens && i + map->lens[j] <= m->rcptlen; j++) {
            const size_t len = map->lens[j];
            while (hashed < len) h = route_prefix_hash_step(h, (unsigned char)m->rcpt[i + hashed++]);
            const struct prefix_slot *s = route_index_find(map, h, m->rcpt + i, len);
            if (!s) continue;
            if (nfound == m->foundcap) {
                const size_t cap = m->foundcap ? 2 * m->foundcap : 16;
                const struct prefix_slot **nf = realloc(m->found, cap * sizeof *nf);
                if (!nf) return SIZE_MAX;
                m->found = nf;
                m->foundcap = cap;
            }
            m->found[nfound++] = s;
        }
    }
    /* A key found at several positions is one bucket: keep it once (the lists must be disjoint). */
    if (nfound > 1) qsort(m->found, nfound, sizeof *m->found, cmp_slot);
    size_t k = 0;
    for (size_t i = 0; i < nfound; i++)
        if (k == 0 || m->found[k - 1] != m->found[i]) m->found[k++] = m->found[i];
    return k;
}

static void cand_begin(struct cand *c, const struct route_table *t, struct route_matcher *m)
{
    *c = (struct cand){.t = t, .full = true};
    m->last_candidates = 0;
    if (!t || !t->prefilter) return;
    const struct route_index *idx = &t->idx;
    const bool inner_ok = m->rcptlen <= ROUTE_INNER_SUBJECT_MAX;
    const size_t ninner = inner_ok ? find_inner(m, &idx->inner) : 1;
    if (ninner == SIZE_MAX || !heap_reserve(m, 1 + idx->prefix.nlens + ninner)) return;
    c->h = m->heap;
    if (idx->nalways) c->h[c->k++] = (struct cursor){idx->always, idx->always + idx->nalways};
    const struct key_map *pm = &idx->prefix;
    uint64_t h = route_prefix_hash_init();
    size_t hashed = 0;
    for (size_t j = 0; j < pm->nlens && pm->lens[j] <= m->rcptlen; j++) {
        const size_t len = pm->lens[j];
        while (hashed < len) h = route_prefix_hash_step(h, (unsigned char)m->rcpt[hashed++]);
        const struct prefix_slot *s = route_index_find(pm, h, m->rcpt, len);
        if (s) c->h[c->k++] = (struct cursor){pm->positions + s->start, pm->positions + s->start + s->count};
    }
    const struct key_map *im = &idx->inner;
    if (!inner_ok && idx->ninner_all)
        c->h[c->k++] = (struct cursor){idx->inner_all, idx->inner_all + idx->ninner_all};
    for (size_t j = 0; inner_ok && j < ninner; j++) {
        const struct prefix_slot *s = m->found[j];
        c->h[c->k++] = (struct cursor){im->positions + s->start, im->positions + s->start + s->count};
    }
    for (size_t i = c->k / 2; i-- > 0;) sift_down(c->h, c->k, i);
    c->full = false;
}

/* The next candidate's position, or SIZE_MAX. */
static size_t cand_next(struct cand *c, struct route_matcher *m)
{
    if (c->full) {
        if (c->i >= route_table_count(c->t)) return SIZE_MAX;
        m->last_candidates++;
        return c->i++;
    }
    if (c->k == 0) return SIZE_MAX;
    struct cursor *top = &c->h[0];
    const size_t v = *top->p++;
    if (top->p == top->end) {
        c->h[0] = c->h[--c->k];
        sift_down(c->h, c->k, 0);
    } else if (c->k > 1) {
        sift_down(c->h, c->k, 0);
    }
    m->last_candidates++;
    return v;
}

size_t route_matcher_last_candidates(const struct route_matcher *m)
{
    return m->last_candidates;
}

/* ---------------------------------------------------------------------------------------------
 * Results. */

static int push_str(char ***arr, size_t *n, const char *s)
{
    char **na = realloc(*arr, (*n + 1) * sizeof *na);
    if (!na) return -1;
    *arr = na;
    na[*n] = strdup(s);
    if (!na[*n]) return -1;
    (*n)++;
    return 0;
}

static int warnf(struct route_result *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int warnf(struct route_result *out, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_debug("route", "%s", buf);
    return out ? push_str(&out->warnings, &out->nwarnings, buf) : 0;
}

static const char *filter_name(const struct route_filter *f)
{
    return f->kind == FILTER_RECIPIENT ? "match_recipient" : f->kind == FILTER_HEADER ? "match_header" : "catch_all";
}

/* Copies this filter's groups from the match data into m->caps. */
static void take_captures(struct route_matcher *m, const struct route_filter *f, const char *subject)
{
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
    for (uint32_t k = 1; k <= f->re.ncaptures; k++) {
        struct route_capture *c = &m->caps[f->first_group + k - 1];
        if (ov[2 * k] == PCRE2_UNSET || ov[2 * k + 1] < ov[2 * k]) {
            c->s = NULL;
            c->len = 0;
        } else {
            c->s = subject + ov[2 * k];
            c->len = ov[2 * k + 1] - ov[2 * k];
        }
    }
}

enum fres { F_NO, F_YES, F_LIMIT };

/* One regex against one subject; on F_LIMIT adds a warning (when `out`). */
static enum fres run(struct route_matcher *m, const struct route *r, const struct route_filter *f,
                     const char *subject, size_t len, struct route_result *out, int *oom)
{
    const int rc = route_regex_match(&f->re, m->md, m->mc, subject, len);
    if (rc > 0) {
        take_captures(m, f, subject);
        return F_YES;
    }
    if (rc == PCRE2_ERROR_NOMATCH) return F_NO;
    PCRE2_UCHAR msg[128];
    if (pcre2_get_error_message(rc, msg, sizeof msg) < 0) snprintf((char *)msg, sizeof msg, "error %d", rc);
    if (warnf(out, "route %s: %s at position %zu: %s: treated as no match", r->def.id, filter_name(f), f->pos,
              (const char *)msg) < 0)
        *oom = 1;
    return F_LIMIT;
}

static enum fres eval_filter(struct route_matcher *m, const struct route *r, const struct route_filter *f,
                             const struct route_message *msg, bool matched_any, struct route_result *out,
                             int *oom)
{
    switch (f->kind) {
    case FILTER_CATCH_ALL: return matched_any ? F_NO : F_YES;
    case FILTER_RECIPIENT: return run(m, r, f, m->rcpt, m->rcptlen, out, oom);
    case FILTER_HEADER:
        for (size_t h = 0; msg && h < msg->nheaders; h++) {
            if (!msg->header_names[h] || !msg->header_values[h] || !ascii_caseeq(msg->header_names[h], f->header))
                continue;
            enum fres res = run(m, r, f, msg->header_values[h], strlen(msg->header_values[h]), out, oom);
            if (res != F_NO) return res;
        }
        return F_NO;
    }
    return F_NO;
}

/* ---------------------------------------------------------------------------------------------
 * Running a matched route's actions. */

struct sbuf {
    char *s;
    size_t n, cap;
    bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t len)
{
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + len + 1) cap *= 2;
        char *n = realloc(b->s, cap);
        if (!n) {
            b->oom = true;
            return;
        }
        b->s = n;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, len);
    b->n += len;
    b->s[b->n] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* A value inside a "..." of a resolved action: '"' and '\' escaped. */
static void sb_quoted(struct sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\') sb_add(b, "\\", 1);
        sb_add(b, p, 1);
    }
    sb_add(b, "\"", 1);
}

static bool address_ok(const char *a)
{
    for (const unsigned char *p = (const unsigned char *)a; *p; p++) {
        if (*p < 0x20 || *p == 0x7f || *p == ' ' || *p == ',' || *p == '<' || *p == '>' || *p == '"') return false;
    }
    const char *at = strrchr(a, '@');
    return at && at != a && at[1] != '\0';
}

static int add_delivery(struct route_result *out, enum route_dest_kind kind, char *take_target,
                        enum route_format format, const char *route_id)
{
    for (size_t i = 0; i < out->ndeliveries; i++) {
        struct route_delivery *d = &out->deliveries[i];
        if (d->format != format || d->kind != kind || strcmp(d->target, take_target) != 0) continue;
        free(take_target);
        for (size_t k = 0; k < d->nroute_ids; k++)
            if (strcmp(d->route_ids[k], route_id) == 0) return 0;
        return push_str(&d->route_ids, &d->nroute_ids, route_id);
    }
    struct route_delivery *nd = realloc(out->deliveries, (out->ndeliveries + 1) * sizeof *nd);
    if (!nd) {
        free(take_target);
        return -1;
    }
    out->deliveries = nd;
    struct route_delivery *d = &nd[out->ndeliveries++];
    memset(d, 0, sizeof *d);
    d->kind = kind;
    d->target = take_target;
    d->format = format;
    return push_str(&d->route_ids, &d->nroute_ids, route_id);
}

static int run_forward(const struct route *r, const struct route_action *a, const struct route_capture *caps,
                       struct route_result *out, struct sbuf *text)
{
    char esc[160];
    sb_str(text, "forward(\"");  /* the targets' '"' and '\\' escaped as in sb_quoted */
    bool first = true;
    for (size_t i = 0; i < a->ndests; i++) {
        const struct route_dest *d = &a->dests[i];
        bool too_long;
        char *target = route_tmpl_resolve(&d->t, d->kind == ROUTE_DEST_URL, caps, &too_long);
        if (!target && !too_long) return -1;
        if (!target || (d->kind == ROUTE_DEST_ADDRESS && !address_ok(target))) {
            const char *why = target ? "not an address after substitution" : "longer than the limit after substitution";
            const char *shown = target ? target : d->t.text;
            int rc = warnf(out, "route %s: destination \"%s\" skipped: %s", r->def.id,
                           log_escape(esc, sizeof esc, shown, strlen(shown), 100), why);
            free(target);
            if (rc < 0) return -1;
            continue;
        }
        if (!first) sb_str(text, ", ");
        first = false;
        for (const char *p = target; *p; p++) {
            if (*p == '"' || *p == '\\') sb_add(text, "\\", 1);
            sb_add(text, p, 1);
        }
        const enum route_format f = d->kind == ROUTE_DEST_URL ? a->format : ROUTE_FORMAT_DEFAULT;
        if (add_delivery(out, d->kind, target, f, r->def.id) < 0) return -1;
    }
    sb_str(text, "\"");
    if (a->format != ROUTE_FORMAT_DEFAULT) {
        sb_str(text, ", format=\"");
        sb_str(text, route_format_name(a->format));
        sb_str(text, "\"");
    }
    sb_str(text, ")");
    return 0;
}

/* store(mailbox=...)'s name with captures substituted, lower case; NULL with *bad when it is not
 * a mailbox name (the copy is then not made: a warning says so), NULL alone when out of memory. */
static char *resolve_mailbox(const struct route *r, const struct route_action *a,
                             const struct route_capture *caps, struct route_result *out, bool *bad)
{
    bool too_long;
    char *name = route_tmpl_resolve(&a->mailbox, false, caps, &too_long);

    *bad = false;
    if (!name && !too_long) return NULL;
    for (char *c = name; c && *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    if (name && route_mailbox_name_ok(name)) return name;
    free(name);
    *bad = true;
    if (warnf(out, "route %s: mailbox name not valid after substitution (1 to %d of a-z 0-9 . _ + - @): "
                   "not filed", r->def.id, MAILBOX_NAME_MAX) < 0)
        *bad = false; /* out of memory */
    return NULL;
}

static int run_store(const struct route *r, const struct route_action *a, const struct route_capture *caps,
                     struct route_result *out, struct sbuf *text)
{
    char *notify = NULL, *mailbox = NULL;
    if (a->has_mailbox) {
        bool bad;
        mailbox = resolve_mailbox(r, a, caps, out, &bad);
        if (!mailbox) {
            if (!bad) return -1;
            sb_str(text, "store()");
            return 0;
        }
    }
    if (a->has_notify) {
        bool too_long;
        notify = route_tmpl_resolve(&a->notify, true, caps, &too_long);
        if (!notify && !too_long) {
            free(mailbox);
            return -1;
        }
        if (!notify && warnf(out, "route %s: notify URL longer than the limit after substitution: stored "
                                  "without notify", r->def.id) < 0)
            return -1;
    }
    struct route_store *ns = realloc(out->stores, (out->nstores + 1) * sizeof *ns);
    if (!ns) {
        free(notify);
        free(mailbox);
        return -1;
    }
    out->stores = ns;
    struct route_store *s = &ns[out->nstores++];
    s->notify = notify;
    s->format = a->format;
    s->mailbox = mailbox;
    s->ttl = a->ttl;
    s->route_id = strdup(r->def.id);
    if (!s->route_id) return -1;
    sb_str(text, "store(");
    if (notify) {
        sb_str(text, "notify=");
        sb_quoted(text, notify);
        if (a->format != ROUTE_FORMAT_DEFAULT) {
            sb_str(text, ", format=\"");
            sb_str(text, route_format_name(a->format));
            sb_str(text, "\"");
        }
    }
    if (mailbox) {
        char ttl[32];
        sb_str(text, notify ? ", mailbox=" : "mailbox=");
        sb_quoted(text, mailbox);
        snprintf(ttl, sizeof ttl, ", ttl=%lld", (long long)a->ttl);
        if (a->ttl) sb_str(text, ttl);
    }
    sb_str(text, ")");
    return 0;
}

static int record_hit(struct route_matcher *m, const struct route *r, struct route_result *out)
{
    struct route_hit *nh = realloc(out->hits, (out->nhits + 1) * sizeof *nh);
    if (!nh) return -1;
    out->hits = nh;
    struct route_hit *h = &nh[out->nhits++];
    memset(h, 0, sizeof *h);
    h->stop = r->has_stop;
    h->route_id = strdup(r->def.id);
    h->capture_names = calloc(r->ncapnames ? r->ncapnames : 1, sizeof *h->capture_names);
    h->capture_values = calloc(r->ncapnames ? r->ncapnames : 1, sizeof *h->capture_values);
    h->actions = calloc(r->nactions ? r->nactions : 1, sizeof *h->actions);
    if (!h->route_id || !h->capture_names || !h->capture_values || !h->actions) return -1;
    for (size_t i = 0; i < r->ncapnames; i++) {
        const struct route_capture *c = &m->caps[r->capgroups[i]];
        h->ncaptures = i + 1;
        h->capture_names[i] = strdup(r->capnames[i]);
        h->capture_values[i] = c->s ? strndup(c->s, c->len) : strdup("");
        if (!h->capture_names[i] || !h->capture_values[i]) return -1;
    }
    for (size_t i = 0; i < r->nactions; i++) {
        const struct route_action *a = &r->actions[i];
        struct sbuf text = {0};
        int rc = 0;
        if (a->kind == ACTION_FORWARD) {
            rc = run_forward(r, a, m->caps, out, &text);
        } else if (a->kind == ACTION_STORE) {
            rc = run_store(r, a, m->caps, out, &text);
        } else {
            sb_str(&text, "stop()");
        }
        h->actions[h->nactions++] = text.s;
        if (rc < 0 || text.oom) return -1;
    }
    log_debug("route", "route=%s matched", r->def.id);
    return 0;
}

int route_evaluate(const struct route_table *t, struct route_matcher *m, const struct route_message *msg,
                   struct route_result *out)
{
    memset(out, 0, sizeof *out);
    if (set_rcpt(m, msg->recipient ? msg->recipient : "") < 0) return -1;
    int oom = 0;
    bool matched_any = false;
    struct cand c;
    cand_begin(&c, t, m);
    for (size_t i; (i = cand_next(&c, m)) != SIZE_MAX;) {
        const struct route *r = route_table_at(t, i);
        bool all = true;
        for (size_t k = 0; k < r->expr.nfilters && all; k++)
            all = eval_filter(m, r, &r->expr.filters[k], msg, matched_any, out, &oom) == F_YES;
        if (oom) return -1;
        if (!all) continue;
        matched_any = true;
        if (record_hit(m, r, out) < 0) return -1;
        if (r->has_stop) break;
    }
    return 0;
}

void route_result_clear(struct route_result *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->nhits; i++) {
        struct route_hit *h = &r->hits[i];
        free(h->route_id);
        for (size_t k = 0; k < h->ncaptures; k++) {
            free(h->capture_names[k]);
            free(h->capture_values[k]);
        }
        free(h->capture_names);
        free(h->capture_values);
        for (size_t k = 0; k < h->nactions; k++) free(h->actions[k]);
        free(h->actions);
    }
    free(r->hits);
    for (size_t i = 0; i < r->ndeliveries; i++) {
        free(r->deliveries[i].target);
        for (size_t k = 0; k < r->deliveries[i].nroute_ids; k++) free(r->deliveries[i].route_ids[k]);
        free(r->deliveries[i].route_ids);
    }
    free(r->deliveries);
    for (size_t i = 0; i < r->nstores; i++) {
        free(r->stores[i].route_id);
        free(r->stores[i].notify);
        free(r->stores[i].mailbox);
    }
    free(r->stores);
    for (size_t i = 0; i < r->nwarnings; i++) free(r->warnings[i]);
    free(r->warnings);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------------------------
 * Address-only checks. */

/* Whether every match_recipient filter of `r` matches m->rcpt: F_NO when one does not, else
 * F_LIMIT when one hit a PCRE2 limit, else F_YES.  A route without such filters answers `empty`. */
static enum fres recipient_filters_match(struct route_matcher *m, const struct route *r, enum fres empty)
{
    if (!r->has_recipient_filter) return empty;
    int oom = 0;
    enum fres all = F_YES;
    for (size_t k = 0; k < r->expr.nfilters; k++) {
        const struct route_filter *f = &r->expr.filters[k];
        if (f->kind != FILTER_RECIPIENT) continue;
        const enum fres res = run(m, r, f, m->rcpt, m->rcptlen, NULL, &oom);
        if (res == F_NO) return F_NO;
        if (res == F_LIMIT) all = F_LIMIT;
    }
    return all;
}

bool route_could_match(const struct route_table *t, struct route_matcher *m, const char *recipient)
{
    m->hit_limit = false;
    /* Out of memory: say yes, the message is then routed (or dropped) after DATA. */
    if (set_rcpt(m, recipient) < 0) return true;
    struct cand c;
    cand_begin(&c, t, m);
    /* A route that could match only by a limit is remembered; a later real match wins. */
    bool limited = false;
    for (size_t i; (i = cand_next(&c, m)) != SIZE_MAX;) {
        const enum fres res = recipient_filters_match(m, route_table_at(t, i), F_YES);
        if (res == F_YES) return true;
        if (res == F_LIMIT) limited = true;
    }
    m->hit_limit = limited;
    return limited;
}

bool route_matcher_hit_limit(const struct route_matcher *m)
{
    return m->hit_limit;
}

const struct route *route_match_address(const struct route_table *t, struct route_matcher *m, const char *address)
{
    if (set_rcpt(m, address) < 0) return NULL;
    struct cand c;
    cand_begin(&c, t, m);
    for (size_t i; (i = cand_next(&c, m)) != SIZE_MAX;) {
        const struct route *r = route_table_at(t, i);
        if (recipient_filters_match(m, r, F_NO) == F_YES) return r;
    }
    return NULL;
}
