/* routes/actions.c — the actions of SPEC §4 and their capture templates.
 *
 *   forward(STRING [, format=STRING])          format: "json" or "mailgun"
 *   store([notify=STRING] [, format=STRING] [, mailbox=STRING] [, ttl=SECONDS])
 *                                              format= only together with notify= (the POST);
 *                                              ttl= (digits, bare or quoted) only with mailbox=
 *   stop()
 *
 * Keyword arguments in any order, each at most once; the STRING rules are the expression's.
 * forward's string is split on commas first; each destination is trimmed of whitespace and is
 * either a URL (a scheme "http" or "https" in any case, then "://" and a host) or an address
 * (no scheme, a '@').  Anything with another scheme ("ftp:", "mailto:") or without '@' is an
 * error, so is an empty destination.  A notify string is one URL (not split).
 *
 * Templates follow Python's re.sub: \1..\99 (two digits are always read as one group number
 * when two follow, so \10 is group 10, never group 1 then '0'), \g<1>, \g<name>.  A reference to
 * a group the expression lacks, group 0 (\0, \g<0>) and octal escapes are errors; \\ is one
 * backslash; any other backslash is kept with the byte after it.  A reference inside a URL's
 * scheme://host[:port] is an error ("captures cannot be used in a URL's host"): substitution
 * never reaches the host.  Values substituted into a URL (path, query or fragment alike) are
 * percent-encoded as UTF-8 bytes, only RFC 3986 unreserved bytes (A-Z a-z 0-9 - . _ ~) kept,
 * so a value can never add a path segment, a query parameter or a fragment.  Into an address
 * they go as they are; eval.c skips a resolved address that is not one (control bytes, space,
 * ',', '<', '>', '"', or no "local@domain" shape) with a warning.
 *
 * format= applies to the URLs of a forward(); its addresses always get ROUTE_FORMAT_DEFAULT.
 * Without format= a delivery's format is ROUTE_FORMAT_DEFAULT (the engine's --webhook-format),
 * kept distinct from an explicit "json" when deliveries are de-duplicated.  A route may hold at
 * most one store().
 *
 * Errors read "actions[I]: position N: ..." (I the 0-based index in the route's action list,
 * N the 0-based byte offset in that action string). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "routes/internal.h"
#include "util/limits.h"

const char *route_format_name(enum route_format f)
{
    switch (f) {
    case ROUTE_FORMAT_JSON: return "json";
    case ROUTE_FORMAT_MAILGUN: return "mailgun";
    case ROUTE_FORMAT_DEFAULT: break;
    }
    return "";
}

/* ---------------------------------------------------------------------------------------------
 * Templates. */

static int add_part(struct route_tmpl *t, uint32_t group, const char *lit, size_t len)
{
    if (group == 0 && len == 0) return 0;
    if (group == 0 && t->nparts > 0 && t->parts[t->nparts - 1].group == 0) {
        struct tmpl_part *last = &t->parts[t->nparts - 1];
        char *n = realloc(last->lit, last->len + len + 1);
        if (!n) return -1;
        memcpy(n + last->len, lit, len);
        last->len += len;
        n[last->len] = '\0';
        last->lit = n;
        return 0;
    }
    struct tmpl_part *np = realloc(t->parts, (t->nparts + 1) * sizeof *np);
    if (!np) return -1;
    t->parts = np;
    struct tmpl_part *part = &t->parts[t->nparts];
    memset(part, 0, sizeof *part);
    part->group = group;
    if (group == 0) {
        part->lit = malloc(len + 1);
        if (!part->lit) return -1;
        memcpy(part->lit, lit, len);
        part->lit[len] = '\0';
        part->len = len;
    }
    t->nparts++;
    return 0;
}

static void tmpl_free(struct route_tmpl *t)
{
    for (size_t i = 0; i < t->nparts; i++) free(t->parts[i].lit);
    free(t->parts);
    free(t->text);
    memset(t, 0, sizeof *t);
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_octal(char c)
{
    return c >= '0' && c <= '7';
}

/* Parses tok.str[s, e) into `t`; *first_ref is the offset (in tok.str) of the first reference,
 * or e when there is none. */
static int tmpl_parse(struct route_parser *p, size_t s, size_t e, struct route_tmpl *t, size_t *first_ref)
{
    const char *str = p->tok.str;
    const size_t *map = p->tok.map;
    *first_ref = e;
    t->text = strndup(str + s, e - s);
    if (!t->text) goto oom;
    size_t lit = s;
    for (size_t i = s; i < e;) {
        if (str[i] != '\\' || i + 1 >= e) {
            i++;
            continue;
        }
        const char c = str[i + 1];
        uint32_t group = 0;
        size_t end = i + 2;
        if (c == '\\') {
            if (add_part(t, 0, str + lit, i + 1 - lit) < 0) goto oom;
            i += 2;
            lit = i;
            continue;
        }
        if (c == '0' || (is_octal(c) && end + 1 < e && is_octal(str[end]) && is_octal(str[end + 1]))) {
            *p->err = route_errorf(p->what, map[i], "octal escapes and group 0 are not supported");
            return -1;
        }
        if (is_digit(c)) {
            group = (uint32_t)(c - '0');
            if (end < e && is_digit(str[end])) group = group * 10 + (uint32_t)(str[end++] - '0');
            if (group > p->expr->ngroups) {
                *p->err = route_errorf(p->what, map[i], "group %u is not defined in the expression",
                                       group);
                return -1;
            }
        } else if (c == 'g') {
            if (end >= e || str[end] != '<') {
                *p->err = route_errorf(p->what, map[i], "missing < after \\g");
                return -1;
            }
            const size_t ns = end + 1;
            const char *gt = memchr(str + ns, '>', e - ns);
            if (!gt) {
                *p->err = route_errorf(p->what, map[i], "missing >, unterminated name");
                return -1;
            }
            const size_t ne = (size_t)(gt - str);
            end = ne + 1;
            if (ne == ns) {
                *p->err = route_errorf(p->what, map[i], "missing group name");
                return -1;
            }
            bool numeric = true;
            for (size_t k = ns; k < ne; k++) numeric = numeric && is_digit(str[k]);
            if (numeric) {
                uint64_t n = 0;
                for (size_t k = ns; k < ne && n <= ROUTE_CAPTURES_MAX; k++) n = n * 10 + (uint64_t)(str[k] - '0');
                if (n == 0) {
                    *p->err = route_errorf(p->what, map[i], "octal escapes and group 0 are not supported");
                    return -1;
                }
                if (n > p->expr->ngroups) {
                    *p->err = route_errorf(p->what, map[i], "group %.*s is not defined in the expression",
                                           (int)(ne - ns), str + ns);
                    return -1;
                }
                group = (uint32_t)n;
            } else {
                group = route_expr_group_by_name(p->expr, str + ns, ne - ns);
                if (group == 0) {
                    *p->err = route_errorf(p->what, map[i], "group '%.*s' is not defined in the expression",
                                           (int)(ne - ns > ROUTE_ERROR_QUOTE_MAX ? ROUTE_ERROR_QUOTE_MAX : ne - ns), str + ns);
                    return -1;
                }
            }
        } else {
            i += 2; /* kept as written */
            continue;
        }
        if (add_part(t, 0, str + lit, i - lit) < 0 || add_part(t, group, NULL, 0) < 0) goto oom;
        if (*first_ref == e) *first_ref = i;
        i = end;
        lit = i;
    }
    if (add_part(t, 0, str + lit, e - lit) < 0) goto oom;
    return 0;
oom:
    *p->err = strdup("out of memory");
    return -1;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Length of a URI scheme followed by ':' at the start of s[0, len), or 0. */
static size_t scheme_len(const char *s, size_t len)
{
    if (len == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) return 0;
    for (size_t i = 1; i < len; i++) {
        const char c = s[i];
        if (c == ':') return i;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '+' ||
              c == '-' || c == '.'))
            return 0;
    }
    return 0;
}

/* One destination: tok.str[s, e) before trimming. */
static int parse_dest(struct route_parser *p, size_t s, size_t e, bool url_only, struct route_dest *d)
{
    const char *str = p->tok.str;
    const size_t *map = p->tok.map;
    while (s < e && is_space(str[s])) s++;
    while (e > s && is_space(str[e - 1])) e--;
    if (s == e) {
        *p->err = route_errorf(p->what, map[s], url_only ? "empty URL" : "empty destination");
        return -1;
    }
    for (size_t i = s; i < e; i++) {
        if (str[i] == '\\' && i + 1 < e) {
            /* A template reference is checked by tmpl_parse, not here. */
            const char *gt = str[i + 1] == 'g' && i + 2 < e && str[i + 2] == '<' ? memchr(str + i, '>', e - i) : NULL;
            const bool g = str[i + 1] == 'g' && i + 2 < e && str[i + 2] == '<';
            i = gt ? (size_t)(gt - str) : g ? e : i + 1;
            continue;
        }
        const unsigned char c = (unsigned char)str[i];
        if (c < 0x20 || c == 0x7f || c == ' ' || c == '<' || c == '>' || c == '"') {
            *p->err = route_errorf(p->what, map[i], "a destination cannot contain %s",
                                   c == ' ' ? "a space" : c == '"' ? "'\"'" : c == '<' ? "'<'" : c == '>' ? "'>'" : "control characters");
            return -1;
        }
    }
    const size_t sl = scheme_len(str + s, e - s);
    if (sl) {
        if (!((sl == 4 && strncasecmp(str + s, "http", 4) == 0) ||
              (sl == 5 && strncasecmp(str + s, "https", 5) == 0))) {
            *p->err = route_errorf(p->what, map[s], "unsupported URL scheme '%.*s' (only http and https)",
                                   (int)(sl > 32 ? 32 : sl), str + s);
            return -1;
        }
        const size_t hs = s + sl + 1;
        if (e - hs < 2 || str[hs] != '/' || str[hs + 1] != '/') {
            *p->err = route_errorf(p->what, map[s + sl], "expected '//' after '%.*s:'", (int)sl, str + s);
            return -1;
        }
        size_t he = hs + 2;
        while (he < e && str[he] != '/' && str[he] != '?' && str[he] != '#') he++;
        if (he == hs + 2) {
            *p->err = route_errorf(p->what, map[hs], "URL has no host");
            return -1;
        }
        for (size_t i = hs + 2; i < he; i++) {
            if (str[i] == '\\') {
                *p->err = route_errorf(p->what, map[i], "captures cannot be used in a URL's host");
                return -1;
            }
        }
        d->kind = ROUTE_DEST_URL;
    } else {
        if (url_only) {
            *p->err = route_errorf(p->what, map[s], "expected an http or https URL");
            return -1;
        }
        if (!memchr(str + s, '@', e - s)) {
            *p->err = route_errorf(p->what, map[s], "destination '%.*s' is neither an http(s) URL nor an address",
                                   (int)(e - s > ROUTE_ERROR_QUOTE_MAX ? ROUTE_ERROR_QUOTE_MAX : e - s), str + s);
            return -1;
        }
        d->kind = ROUTE_DEST_ADDRESS;
    }
    size_t first_ref;
    return tmpl_parse(p, s, e, &d->t, &first_ref);
}

static int parse_forward_string(struct route_parser *p, struct route_action *a)
{
    if (p->tok.kind != TOK_STRING) return route_parser_expected(p, "a string");
    size_t n = 1;
    for (size_t i = 0; i < p->tok.slen; i++) n += p->tok.str[i] == ',';
    if (n > ROUTE_DESTINATIONS_MAX) {
        *p->err = route_errorf(p->what, p->tok.pos, "more than %d destinations", ROUTE_DESTINATIONS_MAX);
        return -1;
    }
    a->dests = calloc(n, sizeof *a->dests);
    if (!a->dests) {
        *p->err = strdup("out of memory");
        return -1;
    }
    size_t s = 0;
    for (size_t i = 0; i <= p->tok.slen; i++) {
        if (i < p->tok.slen && p->tok.str[i] != ',') continue;
        if (parse_dest(p, s, i, false, &a->dests[a->ndests++]) < 0) return -1;
        s = i + 1;
    }
    return route_parser_advance(p);
}

/* ttl=SECONDS: digits, bare (which the lexer does not know: read here) or as a string. */
static int parse_ttl(struct route_parser *p, struct route_action *a)
{
    const char *d = p->tok.kind == TOK_STRING ? p->tok.str : p->lx.src + p->tok.pos;
    const size_t pos = p->tok.pos;
    size_t n = 0;
    int64_t v = 0;

    if (p->tok.kind != TOK_STRING && !(p->tok.kind == TOK_BAD && d[0] >= '0' && d[0] <= '9'))
        return route_parser_expected(p, "a number of seconds");
    while (d[n] >= '0' && d[n] <= '9' && v <= MAILBOX_TTL_MAX) v = v * 10 + (d[n++] - '0');
    if (p->tok.kind == TOK_STRING && d[n] != '\0') n = 0;
    if (n == 0 || v < 1 || v > MAILBOX_TTL_MAX) {
        *p->err = route_errorf(p->what, pos, "ttl must be a number of seconds from 1 to %lld",
                               (long long)MAILBOX_TTL_MAX);
        return -1;
    }
    a->ttl = v;
    if (p->tok.kind != TOK_STRING) p->lx.pos = pos + n; /* past the digits */
    return route_parser_advance(p);
}

/* mailbox=STRING: a template substituted as it is (eval.c checks the name it gives). */
static int parse_mailbox(struct route_parser *p, struct route_action *a)
{
    struct route_tmpl t = {0};
    size_t first_ref;

    if (p->tok.kind != TOK_STRING) return route_parser_expected(p, "a string");
    if (p->tok.slen == 0) {
        *p->err = route_errorf(p->what, p->tok.pos, "empty mailbox name");
        return -1;
    }
    if (tmpl_parse(p, 0, p->tok.slen, &t, &first_ref) < 0) {
        tmpl_free(&t);
        return -1;
    }
    a->mailbox = t;
    a->has_mailbox = true;
    return route_parser_advance(p);
}

/* store()'s mailbox= and ttl=; the current token is the name. */
static int parse_store_kwarg(struct route_parser *p, struct route_action *a, bool mailbox)
{
    if ((mailbox && a->has_mailbox) || (!mailbox && a->ttl)) {
        *p->err = route_errorf(p->what, p->tok.pos, "%s= given twice", mailbox ? "mailbox" : "ttl");
        return -1;
    }
    if (route_parser_advance(p) < 0 || route_parser_expect(p, TOK_EQUALS, "'='") < 0) return -1;
    return mailbox ? parse_mailbox(p, a) : parse_ttl(p, a);
}

/* name=STRING; the current token is the name. */
static int parse_kwarg(struct route_parser *p, struct route_action *a, bool *seen_notify, bool *seen_format)
{
    char found[ROUTE_ERROR_QUOTE_MAX];
    const size_t pos = p->tok.pos;
    const bool notify = route_parser_is(p, "notify"), format = route_parser_is(p, "format");
    if (a->kind == ACTION_STORE && (route_parser_is(p, "mailbox") || route_parser_is(p, "ttl")))
        return parse_store_kwarg(p, a, route_parser_is(p, "mailbox"));
    if (!(format || (notify && a->kind == ACTION_STORE))) {
        if (p->tok.kind != TOK_IDENT)
            return route_parser_expected(p, a->kind == ACTION_STORE ? "notify=, format=, mailbox= or ttl="
                                                                    : "format=");
        route_token_describe(&p->lx, &p->tok, found, sizeof found);
        *p->err = route_errorf(p->what, pos, "unknown argument %s", found);
        return -1;
    }
    if ((notify && *seen_notify) || (format && *seen_format)) {
        *p->err = route_errorf(p->what, pos, "%s= given twice", notify ? "notify" : "format");
        return -1;
    }
    if (route_parser_advance(p) < 0 || route_parser_expect(p, TOK_EQUALS, "'='") < 0) return -1;
    if (p->tok.kind != TOK_STRING) return route_parser_expected(p, "a string");
    if (notify) {
        *seen_notify = true;
        struct route_dest d = {0};
        if (parse_dest(p, 0, p->tok.slen, true, &d) < 0) {
            tmpl_free(&d.t);
            return -1;
        }
        a->notify = d.t;
        a->has_notify = true;
    } else {
        *seen_format = true;
        if (strcmp(p->tok.str, "json") == 0) {
            a->format = ROUTE_FORMAT_JSON;
        } else if (strcmp(p->tok.str, "mailgun") == 0) {
            a->format = ROUTE_FORMAT_MAILGUN;
        } else {
            *p->err = route_errorf(p->what, p->tok.pos, "format must be \"json\" or \"mailgun\"");
            return -1;
        }
    }
    return route_parser_advance(p);
}

static int parse_args(struct route_parser *p, struct route_action *a)
{
    bool seen_notify = false, seen_format = false;
    size_t format_pos = 0;
    if (a->kind == ACTION_FORWARD) {
        if (parse_forward_string(p, a) < 0) return -1;
        if (p->tok.kind == TOK_COMMA) {
            if (route_parser_advance(p) < 0) return -1;
            format_pos = p->tok.pos;
            if (parse_kwarg(p, a, &seen_notify, &seen_format) < 0) return -1;
        }
    } else if (a->kind == ACTION_STORE && p->tok.kind != TOK_RPAREN) {
        for (;;) {
            if (route_parser_is(p, "format")) format_pos = p->tok.pos;
            if (parse_kwarg(p, a, &seen_notify, &seen_format) < 0) return -1;
            if (p->tok.kind != TOK_COMMA) break;
            if (route_parser_advance(p) < 0) return -1;
        }
        if (seen_format && !seen_notify) {
            *p->err = route_errorf(p->what, format_pos, "format= needs notify=");
            return -1;
        }
        if (a->ttl && !a->has_mailbox) {
            *p->err = route_errorf(p->what, p->tok.pos, "ttl= needs mailbox=");
            return -1;
        }
    }
    if (p->tok.kind != TOK_RPAREN) {
        const char *what = a->kind == ACTION_STOP ? "')'"
                           : a->kind == ACTION_FORWARD ? (seen_format ? "')'" : "',' or ')'")
                           : "',' or ')'";
        return route_parser_expected(p, what);
    }
    return route_parser_advance(p);
}

int route_action_parse(const char *src, size_t index, const struct route_expr *e, struct route_action *out,
                       char **err)
{
    memset(out, 0, sizeof *out);
    *err = NULL;
    struct route_parser p = {.lx = {.src = src, .len = strlen(src)}, .expr = e, .err = err};
    snprintf(p.what, sizeof p.what, "actions[%zu]", index);
    if (p.lx.len > ROUTE_ACTION_MAX) {
        *err = route_errorf(p.what, ROUTE_ACTION_MAX, "longer than %d bytes", ROUTE_ACTION_MAX);
        return -1;
    }
    if (route_parser_advance(&p) < 0) goto bad;
    if (p.tok.kind == TOK_END) {
        *err = route_errorf(p.what, p.tok.pos, "empty action");
        goto bad;
    }
    if (route_parser_is(&p, "forward")) {
        out->kind = ACTION_FORWARD;
    } else if (route_parser_is(&p, "store")) {
        out->kind = ACTION_STORE;
    } else if (route_parser_is(&p, "stop")) {
        out->kind = ACTION_STOP;
    } else if (p.tok.kind == TOK_IDENT) {
        char found[ROUTE_ERROR_QUOTE_MAX];
        route_token_describe(&p.lx, &p.tok, found, sizeof found);
        *err = route_errorf(p.what, p.tok.pos, "unknown action %s", found);
        goto bad;
    } else {
        route_parser_expected(&p, "forward, store or stop");
        goto bad;
    }
    if (route_parser_advance(&p) < 0 || route_parser_expect(&p, TOK_LPAREN, "'('") < 0 ||
        parse_args(&p, out) < 0)
        goto bad;
    if (p.tok.kind != TOK_END) {
        route_parser_expected(&p, "end of action");
        goto bad;
    }
    route_token_clear(&p.tok);
    return 0;
bad:
    route_token_clear(&p.tok);
    route_action_free(out);
    if (!*err) *err = strdup("out of memory");
    return -1;
}

void route_action_free(struct route_action *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->ndests; i++) tmpl_free(&a->dests[i].t);
    free(a->dests);
    tmpl_free(&a->notify);
    tmpl_free(&a->mailbox);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------------------------------------
 * Substitution. */

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

char *route_tmpl_resolve(const struct route_tmpl *t, bool url, const struct route_capture *caps, bool *too_long)
{
    *too_long = false;
    size_t n = 0;
    for (size_t i = 0; i < t->nparts; i++) {
        const struct tmpl_part *part = &t->parts[i];
        if (part->group == 0) {
            n += part->len;
            continue;
        }
        const struct route_capture *c = &caps[part->group];
        if (!c->s) continue;
        if (!url) {
            n += c->len;
            continue;
        }
        for (size_t k = 0; k < c->len; k++) n += unreserved((unsigned char)c->s[k]) ? 1 : 3;
    }
    if (n > ROUTE_TARGET_MAX) {
        *too_long = true;
        return NULL;
    }
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < t->nparts; i++) {
        const struct tmpl_part *part = &t->parts[i];
        if (part->group == 0) {
            memcpy(o, part->lit, part->len);
            o += part->len;
            continue;
        }
        const struct route_capture *c = &caps[part->group];
        if (!c->s) continue;
        if (!url) {
            memcpy(o, c->s, c->len);
            o += c->len;
            continue;
        }
        for (size_t k = 0; k < c->len; k++) {
            const unsigned char b = (unsigned char)c->s[k];
            if (unreserved(b)) {
                *o++ = (char)b;
            } else {
                *o++ = '%';
                *o++ = hex[b >> 4];
                *o++ = hex[b & 15];
            }
        }
    }
    *o = '\0';
    return out;
}

bool route_mailbox_name_ok(const char *name)
{
    size_t n = strlen(name);

    return n >= 1 && n <= MAILBOX_NAME_MAX &&
           strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789._+-@") == n;
}
