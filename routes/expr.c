/* routes/expr.c — the expression grammar of SPEC §4:
 *
 *   expression := filter { "and" filter }          ("and" in any case)
 *   filter     := match_recipient(STRING) | match_header(STRING, STRING) | catch_all() | catchall()
 *
 * Function names are lower case as written here.  Nothing else is accepted: "or", "not" and
 * parentheses around filters are errors.  Errors read "expression: position N: ..." with N the
 * 0-based byte offset of the offending token (for a regex error, of the byte of the pattern
 * PCRE2 or the Python check points at). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "routes/internal.h"
#include "util/limits.h"

#define WHAT "expression"

/* The current token must be a STRING holding a regex: compiles it into f->re. */
static int parse_regex(struct route_parser *p, struct route_filter *f)
{
    if (p->tok.kind != TOK_STRING) return route_parser_expected(p, "a string");
    char msg[300];
    size_t off = 0;
    if (route_regex_compile(p->tok.str, p->tok.slen, &f->re, msg, sizeof msg, &off) < 0) {
        *p->err = route_errorf(WHAT, p->tok.map[off <= p->tok.slen ? off : p->tok.slen],
                               "bad regular expression: %s", msg);
        return -1;
    }
    if (f->kind == FILTER_RECIPIENT) {
        char *pfx = malloc(p->tok.slen + 1);
        if (!pfx) {
            *p->err = strdup("out of memory");
            return -1;
        }
        f->prefixlen = route_regex_literal_prefix(p->tok.str, p->tok.slen, pfx);
        if (f->prefixlen == 0) {
            free(pfx);
        } else {
            pfx[f->prefixlen] = '\0';
            f->prefix = pfx;
        }
        f->lits = malloc(p->tok.slen + 1);
        if (!f->lits) {
            *p->err = strdup("out of memory");
            return -1;
        }
        f->nruns = route_regex_literal_runs(p->tok.str, p->tok.slen, f->lits, f->runs, ROUTE_LITERAL_RUNS_MAX);
        if (f->nruns == 0) {
            free(f->lits);
            f->lits = NULL;
        }
    }
    return route_parser_advance(p);
}

static int parse_filter(struct route_parser *p, struct route_filter *f)
{
    char found[ROUTE_ERROR_QUOTE_MAX];
    f->pos = p->tok.pos;
    if (route_parser_is(p, "match_recipient")) {
        f->kind = FILTER_RECIPIENT;
    } else if (route_parser_is(p, "match_header")) {
        f->kind = FILTER_HEADER;
    } else if (route_parser_is(p, "catch_all") || route_parser_is(p, "catchall")) {
        f->kind = FILTER_CATCH_ALL;
    } else if (p->tok.kind == TOK_IDENT) {
        route_token_describe(&p->lx, &p->tok, found, sizeof found);
        *p->err = route_errorf(WHAT, p->tok.pos, "unknown function %s", found);
        return -1;
    } else {
        return route_parser_expected(p, "match_recipient, match_header or catch_all");
    }
    if (route_parser_advance(p) < 0 || route_parser_expect(p, TOK_LPAREN, "'('") < 0) return -1;
    if (f->kind == FILTER_HEADER) {
        if (p->tok.kind != TOK_STRING) return route_parser_expected(p, "a string");
        if (p->tok.slen == 0) {
            *p->err = route_errorf(WHAT, p->tok.pos, "empty header name");
            return -1;
        }
        f->header = strdup(p->tok.str);
        if (!f->header) {
            *p->err = strdup("out of memory");
            return -1;
        }
        if (route_parser_advance(p) < 0 || route_parser_expect(p, TOK_COMMA, "','") < 0) return -1;
    }
    if (f->kind != FILTER_CATCH_ALL && parse_regex(p, f) < 0) return -1;
    return route_parser_expect(p, TOK_RPAREN, "')'");
}

/* Route-wide numbering and the name map (a later group of the same name wins). */
static int number_groups(struct route_expr *e, char **err)
{
    uint32_t next = 1;
    size_t cap = 0;
    for (size_t i = 0; i < e->nfilters; i++) {
        struct route_filter *f = &e->filters[i];
        f->first_group = next;
        next += f->re.ncaptures;
        if (next - 1 > ROUTE_CAPTURES_MAX) {
            *err = route_errorf(WHAT, f->pos, "more than %d groups in one route", ROUTE_CAPTURES_MAX);
            return -1;
        }
        for (size_t k = 0; k < f->re.nnames; k++) {
            const char *name = f->re.names[k];
            const uint32_t g = f->first_group + f->re.name_groups[k] - 1;
            size_t j = 0;
            while (j < e->nnames && strcmp(e->names[j], name) != 0) j++;
            if (j == e->nnames) {
                if (e->nnames == cap) {
                    cap = cap ? 2 * cap : 8;
                    char **nn = realloc(e->names, cap * sizeof *nn);
                    if (nn) e->names = nn;
                    uint32_t *ng = realloc(e->name_groups, cap * sizeof *ng);
                    if (ng) e->name_groups = ng;
                    if (!nn || !ng) goto oom;
                }
                e->names[j] = strdup(name);
                if (!e->names[j]) goto oom;
                e->nnames++;
            }
            e->name_groups[j] = g;
        }
    }
    e->ngroups = next - 1;
    return 0;
oom:
    *err = strdup("out of memory");
    return -1;
}

int route_expr_parse(const char *src, struct route_expr *out, char **err)
{
    memset(out, 0, sizeof *out);
    *err = NULL;
    const size_t len = strlen(src);
    if (len > ROUTE_EXPRESSION_MAX) {
        *err = route_errorf(WHAT, ROUTE_EXPRESSION_MAX, "longer than %d bytes", ROUTE_EXPRESSION_MAX);
        return -1;
    }
    struct route_parser p = {.lx = {.src = src, .len = len}, .what = WHAT, .err = err};
    if (route_parser_advance(&p) < 0) goto bad;
    if (p.tok.kind == TOK_END) {
        *err = route_errorf(WHAT, p.tok.pos, "empty expression");
        goto bad;
    }
    out->filters = calloc(ROUTE_FILTERS_MAX, sizeof *out->filters);
    if (!out->filters) {
        *err = strdup("out of memory");
        goto bad;
    }
    for (;;) {
        if (out->nfilters == ROUTE_FILTERS_MAX) {
            *err = route_errorf(WHAT, p.tok.pos, "more than %d filters", ROUTE_FILTERS_MAX);
            goto bad;
        }
        if (parse_filter(&p, &out->filters[out->nfilters++]) < 0) goto bad;
        if (p.tok.kind == TOK_END) break;
        if (p.tok.kind == TOK_IDENT && p.tok.len == 3 && strncasecmp(src + p.tok.pos, "and", 3) == 0) {
            if (route_parser_advance(&p) < 0) goto bad;
            continue;
        }
        route_parser_expected(&p, "'and' or end of expression");
        goto bad;
    }
    route_token_clear(&p.tok);
    if (number_groups(out, err) < 0) {
        route_expr_free(out);
        return -1;
    }
    return 0;
bad:
    route_token_clear(&p.tok);
    route_expr_free(out);
    if (!*err) *err = strdup("out of memory");
    return -1;
}

void route_expr_free(struct route_expr *e)
{
    if (!e) return;
    for (size_t i = 0; i < e->nfilters; i++) {
        free(e->filters[i].header);
        free(e->filters[i].prefix);
        free(e->filters[i].lits);
        route_regex_free(&e->filters[i].re);
    }
    free(e->filters);
    for (size_t i = 0; i < e->nnames; i++) free(e->names[i]);
    free(e->names);
    free(e->name_groups);
    memset(e, 0, sizeof *e);
}

uint32_t route_expr_group_by_name(const struct route_expr *e, const char *name, size_t len)
{
    for (size_t i = 0; i < e->nnames; i++) {
        if (strlen(e->names[i]) == len && memcmp(e->names[i], name, len) == 0) return e->name_groups[i];
    }
    return 0;
}
