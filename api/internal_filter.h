/* api/internal_filter.h — Mailgun's event filter expressions (the value of `event=`, `from=`, `size=`, ...
 * on GET /v3/<domain>/events): a pure, bounded parser and its evaluation.  Used by api/events.c;
 * no dependency beyond GLib, so the fuzz target links it alone.
 *
 * Grammar (Mailgun's "Filter Expression" table; operators in capitals):
 *
 *     expr    := and ( "OR" and )*
 *     and     := unary ( [ "AND" ] unary )*          juxtaposition is AND: `foo bar`
 *     unary   := ( "NOT" | "-" ) unary | primary      `NOT foo`, `foo -bar`
 *     primary := "(" expr ")" | TERM | "\"" PHRASE "\"" | ( ">" | "<" ) NUMBER
 *
 * TERM is a run of characters other than white space, parentheses and '"'; a lower-case "and",
 * "or", "not" is a term.  Precedence: NOT, then AND, then OR.  Comparisons (`>10000 <20000`)
 * apply to numeric fields only, terms and phrases to the others.
 *
 * Matching, by the kind of field (a field may have several values, e.g. the recipients or the
 * attachments' names: a term matches when it matches one of them):
 *  - API_FILTER_KEYWORD: the whole value, ignoring ASCII case (event names, severities, addresses);
 *  - API_FILTER_EXACT: the whole value, case kept (message ids; "<id>" counts as "id");
 *  - API_FILTER_TEXT: a term or phrase matches a value that contains it, ignoring case, starting and
 *    ending on a word boundary (the character before and after is not a letter or digit): `alice`
 *    and `example.com` match "Alice <alice@example.com>", `ali` does not;
 *  - API_FILTER_NUMBER: `>N`, `<N` compare, a plain number is equality.
 * A field with no value (an event that has no severity) matches only NOT-something.
 *
 * Limits (util/limits.h; parse errors, never a silent no-match): API_EVENTS_FILTER_MAX bytes, API_FILTER_NODES_MAX terms
 * and operators, API_FILTER_DEPTH_MAX nested parentheses or NOTs. */
#ifndef INLET_API_INTERNAL_FILTER_H
#define INLET_API_INTERNAL_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/limits.h"

enum api_filter_kind { API_FILTER_KEYWORD, API_FILTER_EXACT, API_FILTER_TEXT, API_FILTER_NUMBER };

struct api_filter;

/* Parses `expr` (len bytes, UTF-8) for a field of `kind`.  `allowed` (NULL-terminated, may be
 * NULL): the only values a keyword term may name (e.g. the event names), anything else is an
 * error.  NULL with *err (g_malloc'd, says what and where) when the expression is malformed,
 * over a limit or uses what the field does not support. */
struct api_filter *api_filter_parse(const char *expr, size_t len, enum api_filter_kind kind,
                            const char *const *allowed, char **err);
void api_filter_free(struct api_filter *f);

/* The single value of an expression that is one term or phrase (for a look-up by index), else
 * NULL.  Valid until api_filter_free. */
const char *api_filter_single_term(const struct api_filter *f);

/* Whether the field's values (`n` strings; n = 0: no value) satisfy the expression. */
bool api_filter_match_text(const struct api_filter *f, const char *const *values, size_t n);
/* The same for a numeric field; has_value false: no value. */
bool api_filter_match_number(const struct api_filter *f, bool has_value, int64_t value);

#endif
