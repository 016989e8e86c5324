/* routes/internal.h — what the files of routes/ share; not a face: nothing outside routes/
 * includes it except the tests of routes/.
 *
 * Positions in error messages are 0-based byte offsets into the expression or the action string
 * as the API received it (Python's re.error counts the same way); actions are named by their
 * 0-based index in the route's action list: "actions[1]: position 8: ...". */
#ifndef INLET_ROUTES_INTERNAL_H
#define INLET_ROUTES_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "routes/routes.h"
#include "util/limits.h"

/* ---------------------------------------------------------------------------------------------
 * Lexer shared by the expression and the action parsers (routes/lex.c). */

enum tok_kind { TOK_END, TOK_IDENT, TOK_STRING, TOK_LPAREN, TOK_RPAREN, TOK_COMMA, TOK_EQUALS, TOK_BAD };

struct token {
    enum tok_kind kind;
    size_t pos;      /* offset of the token's first byte in the source */
    size_t len;      /* raw length in the source */
    /* TOK_STRING: the contents with only the enclosing quote unescaped, and for each byte of
     * `str` its offset in the source (map[slen] is the closing quote).  Malloc'd. */
    char *str;
    size_t slen;
    size_t *map;
};

struct lexer {
    const char *src;
    size_t len;
    size_t pos;
};

/* Next token; a TOK_STRING without its closing quote is TOK_BAD at the opening quote, a byte
 * that starts no token is TOK_BAD at that byte.  -1 only when memory ran out. */
int route_lex_next(struct lexer *lx, struct token *tok);
void route_token_clear(struct token *tok);
/* "'('", "end of input", "'foo'" (identifier), "string": for "expected X, found Y" messages. */
void route_token_describe(const struct lexer *lx, const struct token *tok, char *out, size_t outsz);

/* A recursive-descent parser's state over one source (an expression, or one action): expr.c and
 * actions.c share it and the helpers below. */
struct route_parser {
    struct lexer lx;
    struct token tok;                 /* the current token */
    char what[32];                    /* names the source in errors: "expression", "actions[2]" */
    const struct route_expr *expr;    /* actions only: the groups their templates may name */
    char **err;                       /* where an error goes (malloc'd) */
};
/* Reads the next token; -1 (and *p->err) only when memory ran out. */
int route_parser_advance(struct route_parser *p);
/* The current token is the identifier `word`. */
bool route_parser_is(const struct route_parser *p, const char *word);
/* Sets *p->err to "expected <what>, found <the current token>" (or "missing closing quote"); -1. */
int route_parser_expected(struct route_parser *p, const char *what);
/* The current token is `kind`: advances past it; otherwise route_parser_expected(). */
int route_parser_expect(struct route_parser *p, enum tok_kind kind, const char *what);

/* "<what>: position <pos>: <message>", malloc'd. */
char *route_errorf(const char *what, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------------------------------------
 * One compiled regex (routes/regex.c). */

struct route_regex {
    pcre2_code *code;
    uint32_t ncaptures;      /* capture groups in this pattern */
    size_t nnames;
    char **names;            /* named groups, in the order of their group numbers */
    uint32_t *name_groups;   /* their numbers within this pattern */
};

/* Rewrites the Python pattern `pat` (len bytes) for PCRE2 and compiles it anchored, UTF, UCP
 * (unless (?a)), MATCH_INVALID_UTF, JIT when available.  0, or -1 with `err` (a message) and
 * *erroff (offset in `pat`). */
int route_regex_compile(const char *pat, size_t len, struct route_regex *out, char *err, size_t errsz,
                        size_t *erroff);
void route_regex_free(struct route_regex *re);
/* pcre2_match's answer: > 0 matched (captures in md), PCRE2_ERROR_NOMATCH, or another error
 * (match/depth/heap limit, JIT stack). */
int route_regex_match(const struct route_regex *re, pcre2_match_data *md, pcre2_match_context *mc,
                      const char *subject, size_t len);
/* The Python-to-PCRE2 rewrite alone (tests): malloc'd, with *options the compile options taken
 * from leading global flags; NULL with err/erroff on a pattern Python rejects. */
char *route_regex_rewrite(const char *pat, size_t len, size_t *outlen, uint32_t *options, size_t **map,
                          char *err, size_t errsz, size_t *erroff);
/* The literal text every match of the (compiled, valid) Python pattern `pat` must start with,
 * copied to `out` (room for `len` bytes, not NUL-terminated); its length, 0 when none is
 * certain.  Rules (conservative: in doubt, none): after an optional leading '^', ASCII
 * characters that stand for themselves and backslash-escaped ASCII punctuation ("\." -> "."),
 * up to the first other character (metacharacter, class, group, any other escape, non-ASCII);
 * a literal followed by a quantifier (? * + {) is dropped and ends the prefix.  No prefix at
 * all when the pattern has a top-level '|', or any inline flag group ((?i) (?x) (?i:...) ...),
 * or a structure the scan does not follow. */
size_t route_regex_literal_prefix(const char *pat, size_t len, char *out);

/* A literal run: `len` bytes at `off` of the buffer route_regex_literal_runs filled. */
struct route_literal {
    uint32_t off, len;
};
/* The literal runs every match of the (compiled, valid) Python pattern `pat` must contain,
 * somewhere: their bytes go to `buf` (room for `len` bytes), at most `max` of them to `out`, in
 * pattern order; how many.  Rules (conservative, as the prefix's: none at all with a top-level
 * '|', any flag group, or a structure the scan does not follow; none either when PCRE2 could
 * backtrack much over the pattern, which could then hit a limit, and add a warning, on a
 * recipient without the literal: a '|', a quantified group, or more than two variable
 * quantifiers anywhere): the top-level items are read
 * in order; runs of ASCII characters that stand for themselves and escaped ASCII punctuation are
 * kept; '.', '^', '$', classes, groups (whole) and \d \D \s \S \w \W \b \B \A \Z, each
 * perhaps quantified, end a run and are stepped over; a quantified literal is dropped and ends
 * its run; anything else ('{', a comment, another escape, non-ASCII) ends the scan. */
size_t route_regex_literal_runs(const char *pat, size_t len, char *buf, struct route_literal *out, size_t max);

/* ---------------------------------------------------------------------------------------------
 * The parsed expression (routes/expr.c). */

/* ROUTE_LITERAL_RUNS_MAX, ROUTE_INNER_KEY_MAX and ROUTE_INNER_SUBJECT_MAX: util/limits.h. */

enum filter_kind { FILTER_RECIPIENT, FILTER_HEADER, FILTER_CATCH_ALL };

struct route_filter {
    enum filter_kind kind;
    size_t pos;              /* of the function name in the expression */
    char *header;            /* FILTER_HEADER: the header name */
    struct route_regex re;   /* FILTER_RECIPIENT, FILTER_HEADER */
    uint32_t first_group;    /* route-wide number of this filter's group 1 */
    /* FILTER_RECIPIENT: route_regex_literal_prefix of the pattern (the table's prefilter); NULL and 0
     * when it has none. */
    char *prefix;
    size_t prefixlen;
    /* FILTER_RECIPIENT: route_regex_literal_runs of the pattern (the inner keys the table may
     * choose from); `lits` holds their bytes, NULL when there are none. */
    char *lits;
    struct route_literal runs[ROUTE_LITERAL_RUNS_MAX];
    size_t nruns;
};

struct route_expr {
    struct route_filter *filters;
    size_t nfilters;
    uint32_t ngroups;        /* groups across all filters: numbered 1..ngroups */
    size_t nnames;
    char **names;            /* distinct group names in order of first appearance */
    uint32_t *name_groups;   /* the route-wide group each name refers to (the last one wins) */
};

/* NULL with *err (malloc'd) on any error. */
int route_expr_parse(const char *src, struct route_expr *out, char **err);
void route_expr_free(struct route_expr *e);
/* Route-wide group of `name`, or 0. */
uint32_t route_expr_group_by_name(const struct route_expr *e, const char *name, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Actions (routes/actions.c). */

/* A string with capture references: literal pieces and group numbers. */
struct tmpl_part {
    uint32_t group;          /* 0: literal */
    char *lit;
    size_t len;
};

struct route_tmpl {
    struct tmpl_part *parts;
    size_t nparts;
    char *text;              /* the template as written (trimmed), for messages */
};

struct route_dest {
    enum route_dest_kind kind;
    struct route_tmpl t;
};

enum action_kind { ACTION_FORWARD, ACTION_STORE, ACTION_STOP };

struct route_action {
    enum action_kind kind;
    struct route_dest *dests;     /* ACTION_FORWARD */
    size_t ndests;
    enum route_format format;     /* ACTION_FORWARD, ACTION_STORE (the notify POST) */
    bool has_notify;              /* ACTION_STORE */
    struct route_tmpl notify;
    bool has_mailbox;             /* ACTION_STORE: store(mailbox="...") */
    struct route_tmpl mailbox;
    int64_t ttl;                  /* ACTION_STORE with mailbox=: seconds, 0 = the default */
};

int route_action_parse(const char *src, size_t index, const struct route_expr *e,
                       struct route_action *out, char **err);
void route_action_free(struct route_action *a);

/* Substitutes captures into `t`: URL templates percent-encode the values.  Malloc'd, or NULL
 * when memory ran out or the result is longer than ROUTE_TARGET_MAX (*too_long set). */
struct route_capture {
    const char *s;           /* NULL: did not participate */
    size_t len;
};
char *route_tmpl_resolve(const struct route_tmpl *t, bool url, const struct route_capture *caps,
                         bool *too_long);

/* ---------------------------------------------------------------------------------------------
 * The compiled route (routes/table.c). */

struct route {
    atomic_size_t refs;           /* route_ref / route_free (tables share routes) */
    struct route_def def;         /* deep copy: its strings are the own_* below */
    char *own_id, *own_description, *own_expression;
    char **own_actions;
    struct route_expr expr;
    struct route_action *actions;
    size_t nactions;
    bool has_stop;
    bool has_recipient_filter;
    /* The prefilter key (routes/table.c): the prefix of the route's first filter other than
     * catch_all() when that is a match_recipient with a literal prefix (points into it), else
     * NULL.  Only the first such filter may serve: a filter evaluated before the key could add a
     * warning (a PCRE2 limit) even when the key then fails, and a skipped route adds none. */
    const char *key;
    size_t keylen;
    /* The same filter's literal runs (every match contains each of them somewhere): the table
     * may key the route by one of them instead (routes/table.c); NULL and 0 when none. */
    const struct route_filter *inner;
    /* What a hit lists: "1".."ngroups", then every distinct name; the group each reads. */
    size_t ncapnames;
    char **capnames;
    uint32_t *capgroups;
};

/* ---------------------------------------------------------------------------------------------
 * The table and its prefilter (routes/table.c).
 *
 * A route with a key can only match a recipient that contains the key: at its start for a
 * prefix key (the route's `key`), anywhere for an inner key (one of its `inner` filter's literal
 * runs, at most ROUTE_INNER_KEY_MAX bytes of it).  The table gives each route one key: of the
 * ones it has, the one the fewest routes of the table share (ties: the prefix, then the longer),
 * so that `^user-(\d+)@tenantK\.example\.com$` is filed under its tenant, not under "user-".
 * Keyed routes sit in two hash maps (prefix keys, inner keys) from key to their positions
 * (ascending); every other route is an "always" candidate.  For one recipient the candidates
 * are the always list merged, in position order, with the prefix buckets of every key length
 * that is a prefix of the recipient and the inner buckets of every key that occurs in it; the
 * evaluation then runs over the candidates only.  Skipped routes could not have matched and
 * would have added nothing (no hit, no warning: their keyed filter is the first one evaluated
 * other than catch_all()), so results are those of the full walk. */

struct prefix_slot {
    uint64_t hash;
    const char *key;         /* NULL: empty slot */
    uint32_t keylen;
    uint32_t start, count;   /* its positions: map->positions[start .. start + count) */
};

struct key_map {
    uint32_t *positions;     /* the buckets' positions, bucket by bucket, each ascending */
    struct prefix_slot *slots;
    size_t mask;             /* slots: mask + 1 of them (a power of two); 0 slots when no keys */
    uint32_t *lens;          /* the distinct key lengths, ascending */
    size_t nlens;
};

struct route_index {
    uint32_t *always;        /* positions of the routes without a key, ascending */
    size_t nalways;
    struct key_map prefix, inner;
    uint32_t *inner_all;     /* positions of the routes with an inner key, ascending */
    size_t ninner_all;
};

struct route_table {
    atomic_size_t refs;
    size_t n;
    struct route **routes;   /* in evaluation order */
    bool prefilter;          /* idx is built and used */
    struct route_index idx;
};

uint64_t route_prefix_hash_init(void);
uint64_t route_prefix_hash_step(uint64_t h, unsigned char c);
/* The slot for (key, keylen, hash) or NULL. */
const struct prefix_slot *route_index_find(const struct key_map *map, uint64_t hash, const char *key,
                                           size_t keylen);

/* Test hooks.  route_table_set_prefilter(t, false) makes evaluation walk every route (the
 * reference the prefilter is checked against); true turns it back on when the index was built.
 * Not for use while other threads evaluate against `t`. */
void route_table_set_prefilter(struct route_table *t, bool on);
bool route_table_prefilter(const struct route_table *t);
/* How many routes the last route_evaluate / route_could_match / route_match_address on `m`
 * considered as candidates (the whole table without the prefilter). */
size_t route_matcher_last_candidates(const struct route_matcher *m);

#endif
