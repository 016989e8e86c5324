/* api/filter.c — see filter.h: Mailgun's event filter expressions, parsed by recursive descent
 * into a fixed array of nodes (bounded by API_FILTER_NODES_MAX and API_FILTER_DEPTH_MAX) and evaluated
 * against one field's values. */
#include "api/internal_filter.h"

#include <glib.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum node_op { N_TERM, N_LT, N_GT, N_EQ, N_NOT, N_AND, N_OR };

struct node {
    enum node_op op;
    int a, b;   /* operands (N_NOT: a; N_AND, N_OR: a and b) */
    char *text; /* N_TERM: the term or phrase (lower case unless API_FILTER_EXACT), g_malloc'd */
    int64_t num; /* N_LT, N_GT, N_EQ */
};

struct api_filter {
    enum api_filter_kind kind;
    struct node nodes[API_FILTER_NODES_MAX];
    int n;
    int root;
};

struct parser {
    const char *s;
    size_t len, pos;
    struct api_filter *f;
    const char *const *allowed;
    int depth;
    char *err; /* the first error (g_malloc'd) */
};

/* ---- tokens --------------------------------------------------------------------------------- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_word_char(char c)
{
    return !is_space(c) && c != '(' && c != ')' && c != '"';
}

static void skip_space(struct parser *p)
{
    while (p->pos < p->len && is_space(p->s[p->pos])) p->pos++;
}

/* Length of the word at p->pos (0 when none starts there). */
static size_t word_len(const struct parser *p)
{
    size_t n = 0;
    while (p->pos + n < p->len && is_word_char(p->s[p->pos + n])) n++;
    return n;
}

/* Whether the next token is the operator `kw` (capitals, a whole word). */
static bool next_is(struct parser *p, const char *kw)
{
    skip_space(p);
    size_t n = word_len(p);
    return n == strlen(kw) && memcmp(p->s + p->pos, kw, n) == 0;
}

static int fail(struct parser *p, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static int fail(struct parser *p, const char *fmt, ...)
{
    if (!p->err) {
        va_list ap;
        va_start(ap, fmt);
        char *what = g_strdup_vprintf(fmt, ap);
        va_end(ap);
        p->err = g_strdup_printf("%s (at byte %zu)", what, p->pos);
        g_free(what);
    }
    return -1;
}

static int new_node(struct parser *p, enum node_op op, int a, int b)
{
    if (p->f->n >= API_FILTER_NODES_MAX)
        return fail(p, "more than %d terms and operators", API_FILTER_NODES_MAX);
    struct node *nd = &p->f->nodes[p->f->n];
    *nd = (struct node){.op = op, .a = a, .b = b};
    return p->f->n++;
}

/* ---- grammar -------------------------------------------------------------------------------- */

static int parse_or(struct parser *p);

static bool allowed_value(const struct parser *p, const char *v)
{
    if (!p->allowed) return true;
    for (const char *const *a = p->allowed; *a; a++)
        if (strcmp(*a, v) == 0) return true;
    return false;
}

/* A term or phrase of `n` bytes at `s`. */
static int term(struct parser *p, const char *s, size_t n)
{
    if (p->f->kind == API_FILTER_NUMBER) {
        int64_t v = 0;
        size_t i = 0;
        for (; i < n && g_ascii_isdigit(s[i]) && v < INT64_MAX / 10 - 9; i++) v = v * 10 + (s[i] - '0');
        if (i != n || n == 0) return fail(p, "a number or a comparison (>N, <N) is expected");
        int k = new_node(p, N_EQ, -1, -1);
        if (k >= 0) p->f->nodes[k].num = v;
        return k;
    }
    if (p->f->kind == API_FILTER_EXACT && n >= 2 && s[0] == '<' && s[n - 1] == '>') {
        s++;
        n -= 2;
    }
    if (n == 0) return fail(p, "empty term");
    int k = new_node(p, N_TERM, -1, -1);
    if (k < 0) return -1;
    char *t = p->f->kind == API_FILTER_EXACT ? g_strndup(s, n) : g_ascii_strdown(s, (gssize)n);
    p->f->nodes[k].text = t;
    if (p->f->kind == API_FILTER_KEYWORD && !allowed_value(p, t))
        return fail(p, "unknown value '%s'", t);
    return k;
}

static int comparison(struct parser *p, size_t n)
{
    const char *s = p->s + p->pos;
    if (p->f->kind != API_FILTER_NUMBER)
        return fail(p, "comparisons (>N, <N) apply to numeric fields only");
    enum node_op op = s[0] == '>' ? N_GT : N_LT;
    p->pos += n;
    int64_t v = 0;
    size_t i = 1;
    for (; i < n && g_ascii_isdigit(s[i]) && v < INT64_MAX / 10 - 9; i++) v = v * 10 + (s[i] - '0');
    if (i != n || n == 1) return fail(p, "a number must follow '%c'", s[0]);
    int k = new_node(p, op, -1, -1);
    if (k >= 0) p->f->nodes[k].num = v;
    return k;
}

static int parse_primary(struct parser *p)
{
    skip_space(p);
    if (p->pos >= p->len) return fail(p, "a term is expected");
    char c = p->s[p->pos];
    if (c == '(') {
        if (++p->depth > API_FILTER_DEPTH_MAX) return fail(p, "nested deeper than %d", API_FILTER_DEPTH_MAX);
        p->pos++;
        int k = parse_or(p);
        skip_space(p);
        if (k < 0) return -1;
        if (p->pos >= p->len || p->s[p->pos] != ')') return fail(p, "')' is expected");
        p->pos++;
        p->depth--;
        return k;
    }
    if (c == ')') return fail(p, "unexpected ')'");
    if (c == '"') {
        const char *start = p->s + p->pos + 1;
        const char *end = memchr(start, '"', p->len - p->pos - 1);
        if (!end) return fail(p, "unterminated quoted phrase");
        p->pos = (size_t)(end - p->s) + 1;
        return term(p, start, (size_t)(end - start));
    }
    size_t n = word_len(p);
    /* A message id may come in its angle brackets: "<id@host>" is a term there. */
    if ((c == '>' || c == '<') && p->f->kind != API_FILTER_EXACT) return comparison(p, n);
    const char *s = p->s + p->pos;
    if ((n == 3 && (!memcmp(s, "AND", 3) || !memcmp(s, "NOT", 3))) || (n == 2 && !memcmp(s, "OR", 2)))
        return fail(p, "a term is expected before '%.*s'", (int)n, s);
    p->pos += n;
    return term(p, s, n);
}

static int parse_unary(struct parser *p)
{
    skip_space(p);
    bool neg = false;
    if (next_is(p, "NOT")) {
        p->pos += 3;
        neg = true;
    } else if (p->pos + 1 < p->len && p->s[p->pos] == '-' && is_word_char(p->s[p->pos + 1])) {
        p->pos += 1;
        neg = true;
    }
    if (!neg) return parse_primary(p);
    if (++p->depth > API_FILTER_DEPTH_MAX) return fail(p, "nested deeper than %d", API_FILTER_DEPTH_MAX);
    int a = parse_unary(p);
    p->depth--;
    return a < 0 ? -1 : new_node(p, N_NOT, a, -1);
}

/* Whether an operand starts here (implicit AND): anything but the end, ')' and OR. */
static bool operand_follows(struct parser *p)
{
    skip_space(p);
    return p->pos < p->len && p->s[p->pos] != ')' && !next_is(p, "OR");
}

static int parse_and(struct parser *p)
{
    int a = parse_unary(p);
    while (a >= 0 && operand_follows(p)) {
        if (next_is(p, "AND")) p->pos += 3;
        int b = parse_unary(p);
        a = b < 0 ? -1 : new_node(p, N_AND, a, b);
    }
    return a;
}

static int parse_or(struct parser *p)
{
    int a = parse_and(p);
    while (a >= 0 && next_is(p, "OR")) {
        p->pos += 2;
        int b = parse_and(p);
        a = b < 0 ? -1 : new_node(p, N_OR, a, b);
    }
    return a;
}

struct api_filter *api_filter_parse(const char *expr, size_t len, enum api_filter_kind kind,
                            const char *const *allowed, char **err)
{
    *err = NULL;
    if (len > API_EVENTS_FILTER_MAX) {
        *err = g_strdup_printf("longer than %d bytes", API_EVENTS_FILTER_MAX);
        return NULL;
    }
    if (memchr(expr, '\0', len) || !g_utf8_validate(expr, (gssize)len, NULL)) {
        *err = g_strdup("not UTF-8 text");
        return NULL;
    }
    struct api_filter *f = g_new0(struct api_filter, 1);
    f->kind = kind;
    struct parser p = {.s = expr, .len = len, .f = f, .allowed = allowed};
    f->root = parse_or(&p);
    skip_space(&p);
    if (f->root >= 0 && p.pos < p.len) fail(&p, "unexpected '%c'", p.s[p.pos]);
    if (p.err || f->root < 0) {
        *err = p.err ? p.err : g_strdup("malformed");
        api_filter_free(f);
        return NULL;
    }
    return f;
}

void api_filter_free(struct api_filter *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) g_free(f->nodes[i].text);
    g_free(f);
}

const char *api_filter_single_term(const struct api_filter *f)
{
    return f && f->n == 1 && f->nodes[0].op == N_TERM ? f->nodes[0].text : NULL;
}

/* ---- evaluation ----------------------------------------------------------------------------- */

/* `lower` (a lower-case value) contains `t` starting and ending on word boundaries. */
static bool contains_term(const char *lower, const char *t)
{
    size_t n = strlen(lower), m = strlen(t);
    for (const char *hit = strstr(lower, t); hit; hit = strstr(hit + 1, t)) {
        size_t i = (size_t)(hit - lower);
        bool before = i == 0 || !g_ascii_isalnum(lower[i - 1]) || !g_ascii_isalnum(t[0]);
        bool after = i + m >= n || !g_ascii_isalnum(lower[i + m]) || !g_ascii_isalnum(t[m - 1]);
        if (before && after) return true;
    }
    return false;
}

static bool term_matches(const struct api_filter *f, const char *t, const char *const *values,
                         char *const *lower, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (f->kind) {
        case API_FILTER_KEYWORD:
            if (strcmp(lower[i], t) == 0) return true;
            break;
        case API_FILTER_EXACT: {
            const char *v = values[i];
            size_t vl = strlen(v), tl = strlen(t);
            if (vl >= 2 && v[0] == '<' && v[vl - 1] == '>' && vl - 2 == tl && !memcmp(v + 1, t, tl))
                return true;
            if (strcmp(v, t) == 0) return true;
            break;
        }
        case API_FILTER_TEXT:
            if (contains_term(lower[i], t)) return true;
            break;
        case API_FILTER_NUMBER: break;
        }
    }
    return false;
}

static bool eval(const struct api_filter *f, int k, const char *const *values, char *const *lower,
                 size_t n, bool has_num, int64_t num)
{
    const struct node *nd = &f->nodes[k];
    switch (nd->op) {
    case N_TERM: return term_matches(f, nd->text, values, lower, n);
    case N_LT: return has_num && num < nd->num;
    case N_GT: return has_num && num > nd->num;
    case N_EQ: return has_num && num == nd->num;
    case N_NOT: return !eval(f, nd->a, values, lower, n, has_num, num);
    case N_AND:
        return eval(f, nd->a, values, lower, n, has_num, num) &&
               eval(f, nd->b, values, lower, n, has_num, num);
    case N_OR:
        return eval(f, nd->a, values, lower, n, has_num, num) ||
               eval(f, nd->b, values, lower, n, has_num, num);
    }
    return false;
}

bool api_filter_match_text(const struct api_filter *f, const char *const *values, size_t n)
{
    char **lower = g_new0(char *, n + 1);
    for (size_t i = 0; i < n; i++) lower[i] = g_ascii_strdown(values[i] ? values[i] : "", -1);
    bool r = eval(f, f->root, values, lower, n, false, 0);
    g_strfreev(lower);
    return r;
}

bool api_filter_match_number(const struct api_filter *f, bool has_value, int64_t value)
{
    return eval(f, f->root, NULL, NULL, 0, has_value, value);
}
