/* api/internal_form.h — request bodies and query strings as ordered lists of fields (SPEC §7).
 *
 * A pure module: bytes and a Content-Type in, fields out; no I/O, no libmicrohttpd, so the unit
 * tests and the fuzz target drive it directly.  Two encodings:
 *
 *   application/x-www-form-urlencoded  `a=1&b=x+y&b=%7E`: fields split on '&' (empty pieces
 *       skipped), name and value split on the first '=' (none: empty value), '+' is a space,
 *       %XX is a byte; a '%' not followed by two hex digits is an error.  Query strings too.
 *   multipart/form-data  RFC 7578 / RFC 2046: the boundary parameter may be quoted; delimiter
 *       lines end in CRLF or a bare LF (both are sent in practice), transport padding after a
 *       delimiter is ignored, so are the preamble and the epilogue; the closing delimiter is
 *       required.  Each part needs Content-Disposition with a name; a part with a filename is a
 *       file field (its bytes as they are, the filename and the part's Content-Type kept).
 *
 * Repeated names are kept, in order.  A name ending in `[]` or `[N]` (N decimal digits) is
 * normalised to the name without it, so `action[]=a&action[1]=b` gives two `action` fields (the
 * forms PHP-style clients send; mailgun.js sends plain repeated names).  Any other bracket stays.
 *
 * Bounds (util/limits.h): FORM_FIELDS_MAX fields, FORM_NAME_MAX bytes per name, FORM_PARTS_MAX
 * parts, FORM_PART_HEADERS_MAX bytes of headers per part, FORM_BOUNDARY_MAX bytes of boundary,
 * FORM_FILENAME_MAX bytes of filename or part content type.  The total size is the caller's
 * (API_BODY_MAX). */
#ifndef INLET_API_INTERNAL_FORM_H
#define INLET_API_INTERNAL_FORM_H

#include <stddef.h>
#include <stdint.h>

enum form_status {
    FORM_OK = 0,
    FORM_ERR_SYNTAX = -1, /* malformed: 400 */
    FORM_ERR_LIMIT = -2,  /* a bound above exceeded: 400 (the message says which) */
    FORM_ERR_TYPE = -3,   /* not a form content type, or multipart without a boundary: 415 */
    FORM_ERR_NOMEM = -4,  /* 500 */
};

struct form_field {
    char *name;         /* normalised; NUL-terminated, never contains a NUL byte */
    char *value;        /* the value's bytes followed by a NUL (not counted in len); may hold NULs */
    size_t len;
    char *filename;     /* a multipart file part: its filename (maybe ""); else NULL */
    char *content_type; /* a multipart part's Content-Type when it has one; else NULL */
};

struct form {
    struct form_field *fields;
    size_t n, cap;
};

/* A zeroed struct form is an empty form; api_form_free() empties one (it can be reused). */
void api_form_free(struct form *f);

/* Parses `body` according to `content_type` (the header's value; NULL or "" with an empty body is
 * an empty form) and appends its fields to `f`.  On an error *err (malloc'd) says what is wrong
 * in a sentence fit for a 400 answer, and `f` holds what was parsed before it (free it). */
enum form_status api_form_parse(struct form *f, const char *content_type, const uint8_t *body,
                                size_t len, char **err);
enum form_status api_form_parse_urlencoded(struct form *f, const uint8_t *s, size_t len, char **err);
enum form_status api_form_parse_multipart(struct form *f, const char *boundary, const uint8_t *body,
                                          size_t len, char **err);

/* The first field named `name`, or NULL. */
const struct form_field *api_form_get(const struct form *f, const char *name);
/* Its value, or NULL. */
const char *api_form_value(const struct form *f, const char *name);
/* How many fields are named `name`. */
size_t api_form_count(const struct form *f, const char *name);

/* Length of `name` (len bytes) once a trailing "[]" or "[digits]" is cut. */
size_t api_form_name_normalised_len(const char *name, size_t len);

/* Percent-decodes s[0..len-1] into out (at least len bytes): %XX is a byte, and '+' a space when
 * `plus` is true.  Returns the decoded length, or -1 for a '%' without two hex digits. */
long api_form_percent_decode(char *out, const char *s, size_t len, int plus);

#endif
