/* tests/fuzz/fuzz_prefilter.c — the prefilter's claim under arbitrary patterns and subjects.
 *
 * Input: a Python pattern, then NUL-separated subjects (none: a fixed list).  When the pattern
 * compiles:
 *   1. every subject the compiled regex matches starts with route_regex_literal_prefix(pattern);
 *   2. a table of match_recipient(pattern) (when the pattern can be written as a STRING) plus a
 *      catch_all() route gives identical results for every subject as a recipient with the
 *      prefilter on and off (hits, captures, warnings), and so do route_could_match and
 *      route_match_address.
 * Aborts otherwise.  Built with libFuzzer when -DINLET_LIBFUZZER, otherwise as a program that
 * runs every file named on its command line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/internal.h"
#include "routes/routes.h"
#include "util/limits.h"
#include "util/log.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const struct route_result *a, const struct route_result *b)
{
    if (a->nhits != b->nhits || a->nwarnings != b->nwarnings || a->ndeliveries != b->ndeliveries ||
        a->nstores != b->nstores)
        return false;
    for (size_t i = 0; i < a->nhits; i++) {
        const struct route_hit *x = &a->hits[i], *y = &b->hits[i];
        if (strcmp(x->route_id, y->route_id) != 0 || x->ncaptures != y->ncaptures) return false;
        for (size_t k = 0; k < x->ncaptures; k++)
            if (strcmp(x->capture_values[k], y->capture_values[k]) != 0) return false;
    }
    for (size_t i = 0; i < a->nwarnings; i++)
        if (strcmp(a->warnings[i], b->warnings[i]) != 0) return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct route_matcher *m;
    static pcre2_match_data *md;
    static pcre2_match_context *mc;
    if (!m) {
        log_set_level(LOG_ERROR);
        m = route_matcher_new();
        md = pcre2_match_data_create(ROUTE_CAPTURES_MAX + 1, NULL);
        mc = pcre2_match_context_create(NULL);
        if (!m || !md || !mc) abort();
        pcre2_set_match_limit(mc, 100000);
        pcre2_set_depth_limit(mc, ROUTE_DEPTH_LIMIT);
    }
    if (size > ROUTE_EXPRESSION_MAX) return 0;
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    const char *subj[9];
    size_t nsubj = 0;
    const size_t patlen = strlen(buf);
    for (char *p = buf + patlen; p < buf + size && nsubj < 8;) {
        subj[nsubj++] = ++p;
        p += strlen(p);
    }
    static const char *const fixed[] = {"user1-42@example.com", "a@b", "", "abc", "ab", "aaaaaaaaaaaaaaaaaaaaaab",
                                        "x\xff@\xfe"};
    const char *const *subjects = nsubj ? subj : fixed;
    if (!nsubj) nsubj = sizeof fixed / sizeof *fixed;

    struct route_regex re;
    char err[256];
    size_t off = 0;
    if (route_regex_compile(buf, patlen, &re, err, sizeof err, &off) < 0) {
        free(buf);
        return 0;
    }
    char *pfx = malloc(patlen + 1);
    if (!pfx) abort();
    const size_t n = route_regex_literal_prefix(buf, patlen, pfx);
    if (n > patlen) abort();
    for (size_t i = 0; i < nsubj; i++) {
        const size_t len = strlen(subjects[i]);
        const int rc = route_regex_match(&re, md, mc, subjects[i], len);
        if (rc > 0 && (len < n || memcmp(subjects[i], pfx, n) != 0)) {
            fprintf(stderr, "pattern %s matched %s without its prefix %.*s\n", buf, subjects[i], (int)n, pfx);
            abort();
        }
    }
    route_regex_free(&re);
    free(pfx);

    /* The table: the pattern as a '...' STRING (a quote escaped; a final backslash would escape
     * the closing quote, so such a pattern is not tried). */
    if (patlen && buf[patlen - 1] == '\\') {
        free(buf);
        return 0;
    }
    char *expr = malloc(2 * patlen + 32);
    if (!expr) abort();
    size_t e = (size_t)snprintf(expr, 2 * patlen + 32, "match_recipient('");
    for (size_t i = 0; i < patlen; i++) {
        if (buf[i] == '\'') expr[e++] = '\\';
        expr[e++] = buf[i];
    }
    memcpy(expr + e, "')", 3);
    const char *acts[] = {"forward('a@b.test')"};
    const char *tail_acts[] = {"store()"};
    const struct route_def d1 = {.id = "fuzz", .seq = 1, .expression = expr, .actions = acts, .nactions = 1};
    const struct route_def d2 = {.id = "tail", .priority = 1, .seq = 2, .expression = "catch_all()",
                                 .actions = tail_acts, .nactions = 1};
    char *cerr = NULL;
    struct route *rs[2] = {route_compile(&d1, &cerr), NULL};
    free(cerr);
    cerr = NULL;
    free(expr);
    if (!rs[0]) { /* e.g. a quote the STRING reads differently */
        free(buf);
        return 0;
    }
    rs[1] = route_compile(&d2, &cerr);
    if (!rs[1]) abort();
    struct route_table *t = route_table_new(rs, 2);
    if (!t) abort();
    for (size_t i = 0; i < nsubj; i++) {
        const struct route_message msg = {.recipient = subjects[i]};
        struct route_result on, off_;
        route_table_set_prefilter(t, true);
        if (route_evaluate(t, m, &msg, &on) < 0) abort();
        const bool could_on = route_could_match(t, m, subjects[i]);
        const struct route *addr_on = route_match_address(t, m, subjects[i]);
        route_table_set_prefilter(t, false);
        if (route_evaluate(t, m, &msg, &off_) < 0) abort();
        const bool could_off = route_could_match(t, m, subjects[i]);
        const struct route *addr_off = route_match_address(t, m, subjects[i]);
        if (!same(&on, &off_) || could_on != could_off || addr_on != addr_off) {
            fprintf(stderr, "pattern %s, recipient %s: the prefilter changed the result\n", buf, subjects[i]);
            abort();
        }
        route_result_clear(&on);
        route_result_clear(&off_);
    }
    route_table_unref(t);
    free(buf);
    return 0;
}
