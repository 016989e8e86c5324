/* routes/regex.c — Python `re` patterns compiled with PCRE2 (SPEC §4 "Expression language").
 *
 * The pattern is checked and rewritten where Python and PCRE2 read the same text differently,
 * then compiled once with PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED | PCRE2_MATCH_INVALID_UTF
 * (Python's re.match: anchored at the start only; `$` matches at the end or before a final
 * newline in both).  The rewrite, outside character classes unless said otherwise:
 *
 *   {,n}  {,}        -> {0,n}  {0,}     (quantifiers; PCRE2 10.42 reads {,n} as literal text)
 *   \Z               -> \z              (Python's \Z is the very end; PCRE2's allows a final \n)
 *   \v (also in [])  -> \x0b            (Python: the VT character; PCRE2: any vertical space)
 *   \uXXXX \UXXXXXXXX (also in []) -> \x{...}
 *   [ inside []      -> \[              (Python: a literal '['; PCRE2: POSIX [:class:])
 *   leading (?aiLmsux) groups -> compile options: i CASELESS, m MULTILINE, s DOTALL,
 *                       x EXTENDED, u nothing (the default), a: no PCRE2_UCP (\w \d \s \b are
 *                       ASCII; case-insensitive matching of non-ASCII letters still folds
 *                       them, unlike Python: PCRE2 10.42 has no switch for that)
 *
 * and rejects, with Python's wording, what Python 3.11 rejects and PCRE2 would take with
 * another meaning: a global flag group anywhere but at the start ("global flags not at the start
 * of the expression", an error since Python 3.11), (?-i) without ':', (?L), (?au), an escape
 * of an ASCII letter Python does not know (\h \K \p \Q \R \X \G ...), \N{...} (named
 * characters: not supported), \x \u \U without their 2/4/8 hex digits, (*VERB) and (?...)
 * extensions Python lacks ((?<name>, (?R), (?|, (?&...)).  (?P<name>...), (?P=name), scoped
 * flags (?i:...), lookarounds, atomic groups, possessive quantifiers and conditionals are
 * passed through: PCRE2 reads them as Python does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/internal.h"
#include "util/limits.h"

struct rw {
    char *out;
    size_t *map;
    size_t n;
};

static void emit(struct rw *w, const char *s, size_t len, size_t src)
{
    for (size_t i = 0; i < len; i++) {
        w->out[w->n] = s[i];
        w->map[w->n++] = src;
    }
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool hex_run(const char *p, size_t avail, size_t n)
{
    if (avail < n) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_hex(p[i])) return false;
    return true;
}

static int fail(char *err, size_t errsz, size_t *erroff, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char *err, size_t errsz, size_t *erroff, size_t off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsz, fmt, ap);
    va_end(ap);
    *erroff = off;
    return -1;
}

/* Leading global flag groups: (?aiLmsux...) repeated.  Returns the offset after them. */
static int leading_flags(const char *pat, size_t len, uint32_t *options, size_t *after, char *err,
                         size_t errsz, size_t *erroff)
{
    size_t i = 0;
    bool a = false, u = false;
    *options = PCRE2_UCP;
    while (i + 2 < len && pat[i] == '(' && pat[i + 1] == '?') {
        size_t k = i + 2;
        while (k < len && strchr("aiLmsux", pat[k]) && pat[k]) k++;
        if (k == i + 2 || k >= len || pat[k] != ')') break;
        for (size_t j = i + 2; j < k; j++) {
            switch (pat[j]) {
            case 'i': *options |= PCRE2_CASELESS; break;
            case 'm': *options |= PCRE2_MULTILINE; break;
            case 's': *options |= PCRE2_DOTALL; break;
            case 'x': *options |= PCRE2_EXTENDED; break;
            case 'u': u = true; break;
            case 'a': a = true; break;
            default:
                return fail(err, errsz, erroff, j,
                            "bad inline flags: cannot use 'L' flag with a str pattern");
            }
        }
        i = k + 1;
    }
    if (a && u)
        return fail(err, errsz, erroff, 0, "bad inline flags: flags 'a', 'u' and 'L' are incompatible");
    if (a) *options &= ~(uint32_t)PCRE2_UCP;
    *after = i;
    return 0;
}

/* What may follow "(?" in Python 3.11.  Returns 0, or -1 with the error set. */
static int check_extension(const char *pat, size_t len, size_t i, char *err, size_t errsz,
                           size_t *erroff)
{
    size_t k = i + 2;
    if (k >= len) return fail(err, errsz, erroff, i, "unexpected end of pattern");
    const char c = pat[k];
    if (c == ':' || c == '=' || c == '!' || c == '#' || c == '(' || c == '>') return 0;
    if (c == 'P' && k + 1 < len && (pat[k + 1] == '<' || pat[k + 1] == '=')) return 0;
    if (c == '<' && k + 1 < len && (pat[k + 1] == '=' || pat[k + 1] == '!')) return 0;
    if (c == '-' || strchr("aiLmsux", c)) {
        size_t e = k;
        while (e < len && pat[e] && strchr("aiLmsux-", pat[e])) e++;
        if (e < len && pat[e] == ':') return 0;
        if (e < len && pat[e] == ')') {
            if (memchr(pat + k, '-', e - k)) return fail(err, errsz, erroff, e, "missing :");
            return fail(err, errsz, erroff, i, "global flags not at the start of the expression");
        }
        return fail(err, errsz, erroff, e, "missing -, : or )");
    }
    if ((c == 'P' || c == '<') && k + 1 < len && (unsigned char)pat[k + 1] >= 0x21 && (unsigned char)pat[k + 1] < 0x7f)
        return fail(err, errsz, erroff, k, "unknown extension ?%c%c", c, pat[k + 1]);
    if ((unsigned char)c >= 0x21 && (unsigned char)c < 0x7f)
        return fail(err, errsz, erroff, k, "unknown extension ?%c", c);
    return fail(err, errsz, erroff, k, "unknown extension");
}

/* One backslash escape at pat[i] == '\\'.  Returns the bytes consumed, or 0 with the error set. */
static size_t rewrite_escape(const char *pat, size_t len, size_t i, bool in_class, struct rw *w,
                             char *err, size_t errsz, size_t *erroff)
{
    if (i + 1 >= len) {
        fail(err, errsz, erroff, i, "bad escape (end of pattern)");
        return 0;
    }
    const char d = pat[i + 1];
    char buf[16];
    switch (d) {
    case 'Z':
        if (in_class) break;
        emit(w, "\\z", 2, i);
        return 2;
    case 'v':
        emit(w, "\\x0b", 4, i);
        return 2;
    case 'x':
        if (!hex_run(pat + i + 2, len - i - 2, 2)) {
            fail(err, errsz, erroff, i, "incomplete escape \\x");
            return 0;
        }
        emit(w, pat + i, 4, i);
        return 4;
    case 'u':
    case 'U': {
        size_t n = d == 'u' ? 4 : 8;
        if (!hex_run(pat + i + 2, len - i - 2, n)) {
            fail(err, errsz, erroff, i, "incomplete escape \\%c", d);
            return 0;
        }
        snprintf(buf, sizeof buf, "\\x{%.*s}", (int)n, pat + i + 2);
        emit(w, buf, strlen(buf), i);
        return 2 + n;
    }
    case 'N':
        fail(err, errsz, erroff, i, "bad escape \\N: named characters are not supported");
        return 0;
    default: break;
    }
    if ((d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z')) {
        const char *known = in_class ? "abfnrtdDsSwW" : "abfnrtdDsSwWABZ";
        if (!strchr(known, d)) {
            fail(err, errsz, erroff, i, "bad escape \\%c", d);
            return 0;
        }
    }
    emit(w, pat + i, 2, i);
    return 2;
}

char *route_regex_rewrite(const char *pat, size_t len, size_t *outlen, uint32_t *options, size_t **mapp,
                          char *err, size_t errsz, size_t *erroff)
{
    struct rw w = {.out = malloc(2 * len + 16), .map = malloc((2 * len + 16) * sizeof(size_t))};
    if (!w.out || !w.map) {
        fail(err, errsz, erroff, 0, "out of memory");
        goto bad;
    }
    size_t i = 0;
    if (leading_flags(pat, len, options, &i, err, errsz, erroff) < 0) goto bad;
    const bool verbose = *options & PCRE2_EXTENDED;
    bool in_class = false;
    while (i < len) {
        const char c = pat[i];
        if (c == '\\') {
            size_t n = rewrite_escape(pat, len, i, in_class, &w, err, errsz, erroff);
            if (n == 0) goto bad;
            i += n;
        } else if (in_class) {
            if (c == ']') in_class = false;
            if (c == '[') {
                emit(&w, "\\[", 2, i);
            } else {
                emit(&w, &c, 1, i);
            }
            i++;
        } else if (c == '[') {
            in_class = true;
            emit(&w, &c, 1, i++);
            if (i < len && pat[i] == '^') emit(&w, pat + i, 1, i), i++;
            if (i < len && pat[i] == ']') emit(&w, pat + i, 1, i), i++;
        } else if (c == '{' && i + 1 < len && pat[i + 1] == ',') {
            size_t j = i + 2;
            while (j < len && pat[j] >= '0' && pat[j] <= '9') j++;
            if (j < len && pat[j] == '}') {
                emit(&w, "{0,", 3, i);
                emit(&w, pat + i + 2, j + 1 - (i + 2), i + 2);
                i = j + 1;
            } else {
                emit(&w, &c, 1, i++);
            }
        } else if (c == '(' && i + 1 < len && pat[i + 1] == '*') {
            fail(err, errsz, erroff, i + 1, "nothing to repeat");
            goto bad;
        } else if (c == '(' && i + 1 < len && pat[i + 1] == '?') {
            if (check_extension(pat, len, i, err, errsz, erroff) < 0) goto bad;
            emit(&w, "(?", 2, i);
            i += 2;
        } else if (c == '#' && verbose) {
            while (i < len && pat[i] != '\n') emit(&w, pat + i, 1, i), i++;
        } else {
            emit(&w, &c, 1, i++);
        }
    }
    w.out[w.n] = '\0';
    w.map[w.n] = len;
    *outlen = w.n;
    *mapp = w.map;
    return w.out;
bad:
    free(w.out);
    free(w.map);
    return NULL;
}

static int cmp_group(const void *a, const void *b)
{
    const uint8_t *x = *(const uint8_t *const *)a, *y = *(const uint8_t *const *)b;
    return (int)((x[0] << 8) | x[1]) - (int)((y[0] << 8) | y[1]);
}

static int read_names(struct route_regex *re)
{
    uint32_t count = 0, entry = 0;
    PCRE2_SPTR table = NULL;
    pcre2_pattern_info(re->code, PCRE2_INFO_NAMECOUNT, &count);
    if (count == 0) return 0;
    pcre2_pattern_info(re->code, PCRE2_INFO_NAMEENTRYSIZE, &entry);
    pcre2_pattern_info(re->code, PCRE2_INFO_NAMETABLE, &table);
    const uint8_t **rows = malloc(count * sizeof *rows);
    re->names = calloc(count, sizeof *re->names);
    re->name_groups = calloc(count, sizeof *re->name_groups);
    if (!rows || !re->names || !re->name_groups) {
        free(rows);
        return -1;
    }
    for (uint32_t k = 0; k < count; k++) rows[k] = table + (size_t)k * entry;
    qsort(rows, count, sizeof *rows, cmp_group);
    for (uint32_t k = 0; k < count; k++) {
        re->name_groups[k] = ((uint32_t)rows[k][0] << 8) | rows[k][1];
        re->names[k] = strdup((const char *)rows[k] + 2);
        if (!re->names[k]) {
            free(rows);
            return -1;
        }
        re->nnames = k + 1;
    }
    free(rows);
    return 0;
}

int route_regex_compile(const char *pat, size_t len, struct route_regex *out, char *err, size_t errsz,
                        size_t *erroff)
{
    memset(out, 0, sizeof *out);
    uint32_t flags = 0;
    size_t rlen = 0, *map = NULL;
    char *rw = route_regex_rewrite(pat, len, &rlen, &flags, &map, err, errsz, erroff);
    if (!rw) return -1;

    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        free(rw);
        free(map);
        return fail(err, errsz, erroff, 0, "out of memory");
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    pcre2_set_bsr(cc, PCRE2_BSR_UNICODE);
    int ec = 0;
    PCRE2_SIZE eo = 0;
    out->code = pcre2_compile((PCRE2_SPTR)rw, rlen,
                              flags | PCRE2_UTF | PCRE2_ANCHORED | PCRE2_MATCH_INVALID_UTF |
                                  PCRE2_NEVER_BACKSLASH_C,
                              &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    if (!out->code) {
        PCRE2_UCHAR msg[256];
        if (pcre2_get_error_message(ec, msg, sizeof msg) < 0) snprintf((char *)msg, sizeof msg, "error %d", ec);
        fail(err, errsz, erroff, eo <= rlen ? map[eo] : len, "%s", (const char *)msg);
        free(rw);
        free(map);
        return -1;
    }
    free(rw);
    free(map);
    if (route_jit_available()) pcre2_jit_compile(out->code, PCRE2_JIT_COMPLETE);
    pcre2_pattern_info(out->code, PCRE2_INFO_CAPTURECOUNT, &out->ncaptures);
    if (out->ncaptures > ROUTE_CAPTURES_MAX) {
        route_regex_free(out);
        return fail(err, errsz, erroff, 0, "more than %d groups", ROUTE_CAPTURES_MAX);
    }
    if (read_names(out) < 0) {
        route_regex_free(out);
        return fail(err, errsz, erroff, 0, "out of memory");
    }
    return 0;
}

void route_regex_free(struct route_regex *re)
{
    if (!re) return;
    pcre2_code_free(re->code);
    for (size_t i = 0; i < re->nnames; i++) free(re->names[i]);
    free(re->names);
    free(re->name_groups);
    memset(re, 0, sizeof *re);
}

int route_regex_match(const struct route_regex *re, pcre2_match_data *md, pcre2_match_context *mc,
                      const char *subject, size_t len)
{
    return pcre2_match(re->code, (PCRE2_SPTR)subject, len, 0, 0, md, mc);
}

/* ---------------------------------------------------------------------------------------------
 * The required literal prefix (the route table's prefilter, routes/table.c).
 *
 * Conservative by design: any doubt gives no prefix, and no prefix only costs speed. */

/* Whether the pattern has an alternation at the top level (outside every group and class), or
 * a structure this scan does not follow (unbalanced parentheses, an unterminated class): both
 * mean "no prefix".  Classes follow Python: after '[' an optional '^', then a ']' first is
 * literal; a (?#...) comment runs to the first ')'. */
static bool top_level_alternation_or_odd(const char *p, size_t len)
{
    size_t depth = 0, i = 0;
    while (i < len) {
        const char c = p[i];
        if (c == '\\') {
            i += 2;
        } else if (c == '[') {
            i++;
            if (i < len && p[i] == '^') i++;
            if (i < len && p[i] == ']') i++;
            while (i < len && p[i] != ']') i += p[i] == '\\' ? 2 : 1;
            if (i >= len) return true;
            i++;
        } else if (c == '(' && i + 2 < len && p[i + 1] == '?' && p[i + 2] == '#') {
            const char *e = memchr(p + i, ')', len - i);
            if (!e) return true;
            i = (size_t)(e - p) + 1;
        } else if (c == '(') {
            depth++;
            i++;
        } else if (c == ')') {
            if (depth == 0) return true;
            depth--;
            i++;
        } else if (c == '|' && depth == 0) {
            return true;
        } else {
            i++;
        }
    }
    return depth != 0 || i != len;
}

/* A character that stands for itself outside a class in Python and in PCRE2 (no flags). */
static bool plain_literal(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && !strchr("\\.^$*+?{}[]()|", c);
}

size_t route_regex_literal_prefix(const char *pat, size_t len, char *out)
{
    /* Any flag, global or scoped ((?i) (?x) (?i:...) (?-i:...)), changes what a literal
     * matches (case, verbose whitespace): no prefix. */
    for (size_t i = 0; i + 2 < len; i++)
        if (pat[i] == '(' && pat[i + 1] == '?' && strchr("aiLmsux-", pat[i + 2]) && pat[i + 2]) return 0;
    if (memchr(pat, '\0', len)) return 0;
    if (top_level_alternation_or_odd(pat, len)) return 0;
    size_t i = 0, n = 0;
    if (i < len && pat[i] == '^') i++;
    while (i < len) {
        char c;
        size_t adv;
        const unsigned char u = (unsigned char)pat[i];
        if (plain_literal(u)) {
            c = (char)u;
            adv = 1;
        } else if (u == '\\' && i + 1 < len && (unsigned char)pat[i + 1] > 0x20 && (unsigned char)pat[i + 1] < 0x7f &&
                   !((pat[i + 1] >= '0' && pat[i + 1] <= '9') || ((pat[i + 1] | 0x20) >= 'a' && (pat[i + 1] | 0x20) <= 'z'))) {
            c = pat[i + 1];
            adv = 2;
        } else {
            break;
        }
        /* A quantified literal is not required: drop it and stop.  A (?#...) comment between
         * an item and its quantifier is skipped by both Python and PCRE2: treat it as one. */
        if (i + adv < len && strchr("?*+{", pat[i + adv])) break;
        if (i + adv + 2 < len && pat[i + adv] == '(' && pat[i + adv + 1] == '?' && pat[i + adv + 2] == '#') break;
        out[n++] = c;
        i += adv;
    }
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * The literal runs every match must contain (the prefilter's inner keys, routes/table.c).
 *
 * The same conservative reading as the prefix, carried past the first non-literal item: at the
 * top level (no top-level '|', no flag group) the pattern is a sequence whose every item must
 * match, so every maximal run of plain literals between other items is a substring of any match.
 * Items this scan can step over: '.', '^', '$', a class, a group (skipped whole: its content may
 * be optional or alternative), the escapes \d \D \s \S \w \W \b \B \A \Z; each may carry a
 * quantifier (? * + and their lazy / possessive forms).  Anything else ('{', a (?#...) comment,
 * any other escape, a non-ASCII byte) ends the scan: the runs found before it still hold. */

/* The offset just past the class or group that starts at p[i] ('[' or '('), or 0 when it does
 * not end (the compiled pattern is valid, so that means this scan misread it: give up). */
static size_t skip_class(const char *p, size_t len, size_t i)
{
    i++;
    if (i < len && p[i] == '^') i++;
    if (i < len && p[i] == ']') i++;
    while (i < len && p[i] != ']') i += p[i] == '\\' ? 2 : 1;
    return i < len ? i + 1 : 0;
}

static size_t skip_group(const char *p, size_t len, size_t i)
{
    size_t depth = 0;
    while (i < len) {
        if (p[i] == '\\') {
            i += 2;
        } else if (p[i] == '[') {
            i = skip_class(p, len, i);
            if (i == 0) return 0;
        } else if (p[i] == '(' && i + 2 < len && p[i + 1] == '?' && p[i + 2] == '#') {
            const char *e = memchr(p + i, ')', len - i);
            if (!e) return 0;
            i = (size_t)(e - p) + 1;
        } else if (p[i] == '(') {
            depth++;
            i++;
        } else if (p[i] == ')') {
            i++;
            if (--depth == 0) return i;
        } else {
            i++;
        }
    }
    return 0;
}

/* Steps over the quantifier characters after an item; false when a '{' follows (read as the end
 * of the scan: it may be a quantifier or a literal). */
static bool skip_quantifier(const char *p, size_t len, size_t *i)
{
    while (*i < len && (p[*i] == '?' || p[*i] == '*' || p[*i] == '+')) (*i)++;
    return !(*i < len && p[*i] == '{');
}

struct runs {
    char *buf;
    size_t n, start;                 /* bytes in buf; where the open run began */
    struct route_literal *out;
    size_t nout, max;
};

static void close_run(struct runs *r)
{
    if (r->n > r->start && r->nout < r->max) {
        r->out[r->nout++] = (struct route_literal){(uint32_t)r->start, (uint32_t)(r->n - r->start)};
    } else {
        r->n = r->start;
    }
    r->start = r->n;
}

/* The literal character at pat[i] (a plain one or an escaped ASCII punctuation mark) with its
 * length in *adv, or 0 when pat[i] starts no literal. */
static size_t literal_at(const char *pat, size_t len, size_t i, char *c)
{
    const unsigned char u = (unsigned char)pat[i];
    if (plain_literal(u)) {
        *c = (char)u;
        return 1;
    }
    if (u == '\\' && i + 1 < len && (unsigned char)pat[i + 1] > 0x20 && (unsigned char)pat[i + 1] < 0x7f &&
        !((pat[i + 1] >= '0' && pat[i + 1] <= '9') || ((pat[i + 1] | 0x20) >= 'a' && (pat[i + 1] | 0x20) <= 'z'))) {
        *c = pat[i + 1];
        return 2;
    }
    return 0;
}

/* Whether PCRE2 can only backtrack polynomially, and little, over this pattern: no '|' outside
 * classes, no quantified group, at most two variable quantifiers ((? * + {m,n}).  A match
 * attempt then takes at most about L^2 steps over a subject of L bytes, under ROUTE_MATCH_LIMIT
 * for any recipient up to ROUTE_INNER_SUBJECT_MAX: it fails without a limit warning when a
 * required literal is absent, so skipping it adds nothing.  (A prefix needs no such care: the
 * anchored match fails at the first byte.) */
static bool backtracking_bounded(const char *p, size_t len)
{
    size_t variable = 0;
    bool after_open = false; /* the previous byte is an unescaped '(' */
    for (size_t i = 0; i < len;) {
        const char c = p[i];
        const bool opened = after_open;
        after_open = c == '(';
        if (c == '\\') {
            i += 2;
            continue;
        }
        if (c == '[') {
            i = skip_class(p, len, i);
            if (i == 0) return false;
            continue;
        }
        if (c == '|') return false;
        if (c == ')' && i + 1 < len && strchr("?*+{", p[i + 1])) return false;
        i++;
        if (strchr("?*+{", c) && c) {
            /* A '?' right after '(' opens an extension, not a quantifier; a lazy or possessive
             * mark after a quantifier is part of it. */
            if (c == '?' && opened) continue;
            if (c == '{') {
                size_t k = i, commas = 0;
                while (k < len && ((p[k] >= '0' && p[k] <= '9') || p[k] == ',')) commas += p[k++] == ',';
                if (k >= len || p[k] != '}') continue; /* a literal '{' */
                i = k + 1;
                if (commas == 0) continue;              /* {m}: fixed */
            }
            if (++variable > 2) return false;
            while (i < len && (p[i] == '?' || p[i] == '+')) i++;
        }
    }
    return true;
}

size_t route_regex_literal_runs(const char *pat, size_t len, char *buf, struct route_literal *out, size_t max)
{
    if (!backtracking_bounded(pat, len)) return 0;
    for (size_t i = 0; i + 2 < len; i++)
        if (pat[i] == '(' && pat[i + 1] == '?' && strchr("aiLmsux-", pat[i + 2]) && pat[i + 2]) return 0;
    if (memchr(pat, '\0', len) || top_level_alternation_or_odd(pat, len)) return 0;
    struct runs r = {.buf = buf, .out = out, .max = max};
    size_t i = 0;
    while (i < len && r.nout < max) {
        char c;
        const size_t adv = literal_at(pat, len, i, &c);
        const char u = pat[i];
        if (adv) {
            const size_t next = i + adv;
            if (next < len && strchr("?*+{", pat[next])) {
                close_run(&r);
                i = next;
                if (!skip_quantifier(pat, len, &i)) break;
                continue;
            }
            if (next + 2 < len && pat[next] == '(' && pat[next + 1] == '?' && pat[next + 2] == '#') break;
            r.buf[r.n++] = c;
            i = next;
            continue;
        }
        close_run(&r);
        if (u == '.' || u == '^' || u == '$') {
            i++;
        } else if (u == '\\' && i + 1 < len && strchr("dDsSwWbBAZ", pat[i + 1]) && pat[i + 1]) {
            i += 2;
        } else if (u == '[') {
            i = skip_class(pat, len, i);
        } else if (u == '(' && !(i + 2 < len && pat[i + 1] == '?' && pat[i + 2] == '#')) {
            i = skip_group(pat, len, i);
        } else {
            break;
        }
        if (i == 0 || !skip_quantifier(pat, len, &i)) break;
    }
    close_run(&r);
    return r.nout;
}
