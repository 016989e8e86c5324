/* routes/lex.c — tokens of the expression and action languages (SPEC §4).
 *
 * Whitespace (space, tab, CR, LF) separates tokens and is otherwise ignored.  An identifier is
 * [A-Za-z_][A-Za-z0-9_]*.  A STRING is '...' or "...": a backslash before the enclosing quote
 * yields that quote; every other backslash is kept together with the byte after it, so "\\"
 * is the two bytes \\ (a regex's literal backslash) and cannot end up escaping the closing
 * quote.  The parser helpers at the end (advance, expect, "expected X, found Y") serve both
 * parsers, expr.c and actions.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/internal.h"
#include "util/limits.h"

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_ident(char c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9');
}

void route_token_clear(struct token *tok)
{
    free(tok->str);
    free(tok->map);
    memset(tok, 0, sizeof *tok);
}

static int lex_string(struct lexer *lx, struct token *tok)
{
    const char q = lx->src[lx->pos];
    size_t i = lx->pos + 1;
    /* First pass: find the end, so that both buffers are allocated once. */
    size_t n = 0;
    for (;;) {
        if (i >= lx->len) {
            tok->kind = TOK_BAD;
            return 0;
        }
        if (lx->src[i] == q) break;
        if (lx->src[i] == '\\' && i + 1 < lx->len) {
            n += lx->src[i + 1] == q ? 1 : 2;
            i += 2;
            continue;
        }
        n++;
        i++;
    }
    tok->str = malloc(n + 1);
    tok->map = malloc((n + 1) * sizeof *tok->map);
    if (!tok->str || !tok->map) return -1;
    size_t o = 0;
    for (size_t j = lx->pos + 1; j < i;) {
        if (lx->src[j] == '\\' && lx->src[j + 1] == q) {
            tok->map[o] = j;
            tok->str[o++] = q;
            j += 2;
        } else if (lx->src[j] == '\\') {
            tok->map[o] = j;
            tok->str[o++] = '\\';
            tok->map[o] = j + 1;
            tok->str[o++] = lx->src[j + 1];
            j += 2;
        } else {
            tok->map[o] = j;
            tok->str[o++] = lx->src[j++];
        }
    }
    tok->str[o] = '\0';
    tok->map[o] = i;
    tok->slen = o;
    tok->kind = TOK_STRING;
    tok->len = i + 1 - lx->pos;
    lx->pos = i + 1;
    return 0;
}

int route_lex_next(struct lexer *lx, struct token *tok)
{
    route_token_clear(tok);
    while (lx->pos < lx->len && is_space(lx->src[lx->pos])) lx->pos++;
    tok->pos = lx->pos;
    if (lx->pos >= lx->len) {
        tok->kind = TOK_END;
        return 0;
    }
    const char c = lx->src[lx->pos];
    tok->len = 1;
    switch (c) {
    case '(': tok->kind = TOK_LPAREN; break;
    case ')': tok->kind = TOK_RPAREN; break;
    case ',': tok->kind = TOK_COMMA; break;
    case '=': tok->kind = TOK_EQUALS; break;
    case '"':
    case '\'': return lex_string(lx, tok);
    default:
        if (is_ident_start(c)) {
            size_t e = lx->pos;
            while (e < lx->len && is_ident(lx->src[e])) e++;
            tok->kind = TOK_IDENT;
            tok->len = e - lx->pos;
        } else {
            tok->kind = TOK_BAD;
        }
    }
    lx->pos += tok->len;
    return 0;
}

void route_token_describe(const struct lexer *lx, const struct token *tok, char *out, size_t outsz)
{
    switch (tok->kind) {
    case TOK_END: snprintf(out, outsz, "end of input"); return;
    case TOK_STRING: snprintf(out, outsz, "a string"); return;
    case TOK_IDENT:
        if (tok->len > 40) {
            snprintf(out, outsz, "'%.40s...'", lx->src + tok->pos);
        } else {
            snprintf(out, outsz, "'%.*s'", (int)tok->len, lx->src + tok->pos);
        }
        return;
    default: {
        unsigned char b = (unsigned char)lx->src[tok->pos];
        if (b >= 0x21 && b < 0x7f) {
            snprintf(out, outsz, "'%c'", b);
        } else {
            snprintf(out, outsz, "byte 0x%02x", b);
        }
    }
    }
}

char *route_errorf(const char *what, size_t pos, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = strlen(what) + strlen(msg) + 48;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s: position %zu: %s", what, pos, msg);
    return out;
}

/* ---- the parser helpers expr.c and actions.c share ------------------------------------------ */

int route_parser_advance(struct route_parser *p)
{
    if (route_lex_next(&p->lx, &p->tok) < 0) {
        *p->err = strdup("out of memory");
        return -1;
    }
    return 0;
}

bool route_parser_is(const struct route_parser *p, const char *word)
{
    return p->tok.kind == TOK_IDENT && p->tok.len == strlen(word) &&
           strncmp(p->lx.src + p->tok.pos, word, p->tok.len) == 0;
}

int route_parser_expected(struct route_parser *p, const char *what)
{
    char found[ROUTE_ERROR_QUOTE_MAX];
    if (p->tok.kind == TOK_BAD && (p->lx.src[p->tok.pos] == '"' || p->lx.src[p->tok.pos] == '\'')) {
        *p->err = route_errorf(p->what, p->tok.pos, "missing closing quote");
        return -1;
    }
    route_token_describe(&p->lx, &p->tok, found, sizeof found);
    *p->err = route_errorf(p->what, p->tok.pos, "expected %s, found %s", what, found);
    return -1;
}

int route_parser_expect(struct route_parser *p, enum tok_kind kind, const char *what)
{
    if (p->tok.kind != kind) return route_parser_expected(p, what);
    return route_parser_advance(p);
}
