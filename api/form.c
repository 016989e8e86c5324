/* api/form.c — urlencoded and multipart/form-data bodies (see internal_form.h). */
#include "api/internal_form.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/limits.h"

_Static_assert(FORM_FIELDS_MAX > 0 && FORM_NAME_MAX > 0 && FORM_PARTS_MAX > 0, "form bounds");
_Static_assert(FORM_BOUNDARY_MAX >= 70, "RFC 2046 allows 70-character boundaries");

static enum form_status fail(char **err, enum form_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum form_status fail(char **err, enum form_status st, const char *fmt, ...)
{
    va_list ap;

    if (err) {
        free(*err);
        va_start(ap, fmt);
        if (vasprintf(err, fmt, ap) < 0) *err = NULL;
        va_end(ap);
    }
    return st;
}

void api_form_free(struct form *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->fields[i].name);
        free(f->fields[i].value);
        free(f->fields[i].filename);
        free(f->fields[i].content_type);
    }
    free(f->fields);
    f->fields = NULL;
    f->n = f->cap = 0;
}

const struct form_field *api_form_get(const struct form *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->fields[i].name, name) == 0) return &f->fields[i];
    return NULL;
}

const char *api_form_value(const struct form *f, const char *name)
{
    const struct form_field *fld = api_form_get(f, name);

    return fld ? fld->value : NULL;
}

size_t api_form_count(const struct form *f, const char *name)
{
    size_t n = 0;

    for (size_t i = 0; i < f->n; i++) n += strcmp(f->fields[i].name, name) == 0;
    return n;
}

size_t api_form_name_normalised_len(const char *name, size_t len)
{
    size_t i;

    if (len < 3 || name[len - 1] != ']') return len;
    for (i = len - 1; i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9'; i--) {}
    /* name[i - 1] must be the '[' and something must come before it. */
    if (i >= 2 && name[i - 1] == '[') return i - 1;
    return len;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long api_form_percent_decode(char *out, const char *s, size_t len, int plus)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '%') {
            int hi, lo;

            if (len - i < 3) return -1;
            hi = hexval((unsigned char)s[i + 1]);
            lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus) {
            out[o++] = ' ';
        } else {
            out[o++] = (char)c;
        }
    }
    return (long)o;
}

/* Appends a field; takes nothing (copies name and value).  `name` is the raw (decoded) name. */
static enum form_status add_field(struct form *f, const char *name, size_t nlen, const char *value,
                                  size_t vlen, const char *filename, const char *ctype, char **err)
{
    struct form_field fld = {0};

    if (f->n >= FORM_FIELDS_MAX)
        return fail(err, FORM_ERR_LIMIT, "Too many fields (more than %d)", FORM_FIELDS_MAX);
    if (nlen > FORM_NAME_MAX)
        return fail(err, FORM_ERR_LIMIT, "Field name longer than %d bytes", FORM_NAME_MAX);
    if (memchr(name, '\0', nlen))
        return fail(err, FORM_ERR_SYNTAX, "Field name contains a NUL byte");
    nlen = api_form_name_normalised_len(name, nlen);
    if (nlen == 0) return fail(err, FORM_ERR_SYNTAX, "Field %zu has an empty name", f->n + 1);
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct form_field *nf;

        if (cap > FORM_FIELDS_MAX) cap = FORM_FIELDS_MAX;
        nf = realloc(f->fields, cap * sizeof *nf);
        if (!nf) return fail(err, FORM_ERR_NOMEM, "Out of memory");
        f->fields = nf;
        f->cap = cap;
    }
    fld.name = strndup(name, nlen);
    fld.value = malloc(vlen + 1);
    fld.filename = filename ? strdup(filename) : NULL;
    fld.content_type = ctype ? strdup(ctype) : NULL;
    if (!fld.name || !fld.value || (filename && !fld.filename) || (ctype && !fld.content_type)) {
        free(fld.name);
        free(fld.value);
        free(fld.filename);
        free(fld.content_type);
        return fail(err, FORM_ERR_NOMEM, "Out of memory");
    }
    if (vlen) memcpy(fld.value, value, vlen);
    fld.value[vlen] = '\0';
    fld.len = vlen;
    f->fields[f->n++] = fld;
    return FORM_OK;
}

/* ---- urlencoded ----------------------------------------------------------------------------- */

enum form_status api_form_parse_urlencoded(struct form *f, const uint8_t *s, size_t len, char **err)
{
    const char *p = (const char *)s, *end = p + len;
    enum form_status st = FORM_OK;
    char *buf = NULL;
    size_t bufcap = 0;

    while (p < end && st == FORM_OK) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        const char *nend = eq ? eq : stop;
        const char *v = eq ? eq + 1 : stop;
        size_t nraw = (size_t)(nend - p), vraw = (size_t)(stop - v);
        long nlen, vlen;

        if (stop == p) { /* empty piece: "a=1&&b=2", a trailing '&' */
            p = stop + 1;
            continue;
        }
        if (nraw > 3 * (size_t)FORM_NAME_MAX) {
            st = fail(err, FORM_ERR_LIMIT, "Field name longer than %d bytes", FORM_NAME_MAX);
            break;
        }
        if (nraw + vraw + 1 > bufcap) {
            char *nb = realloc(buf, nraw + vraw + 1);

            if (!nb) {
                st = fail(err, FORM_ERR_NOMEM, "Out of memory");
                break;
            }
            buf = nb;
            bufcap = nraw + vraw + 1;
        }
        nlen = api_form_percent_decode(buf, p, nraw, 1);
        vlen = nlen < 0 ? -1 : api_form_percent_decode(buf + nlen, v, vraw, 1);
        if (nlen < 0 || vlen < 0) {
            st = fail(err, FORM_ERR_SYNTAX, "Invalid percent-encoding in field %zu", f->n + 1);
            break;
        }
        st = add_field(f, buf, (size_t)nlen, buf + nlen, (size_t)vlen, NULL, NULL, err);
        p = stop + 1;
    }
    free(buf);
    return st;
}

/* ---- header parameters ---------------------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* The value of parameter `name` in a header value `type; a=b; c="d;e"` into out (outsz bytes, NUL
 * terminated).  In a quoted value, \" and \\ are a quote and a backslash; any other backslash is
 * kept (browsers send Windows paths unescaped).  1 found, 0 absent, -1 malformed or too long. */
static int header_param(const char *value, const char *name, char *out, size_t outsz)
{
    const char *p = strchr(value, ';');
    size_t nlen = strlen(name);

    while (p && *p == ';') {
        const char *pn, *pe;
        size_t o = 0;
        bool match;

        p++;
        while (is_ws(*p)) p++;
        pn = p;
        while (*p && *p != '=' && *p != ';') p++;
        pe = p;
        while (pe > pn && is_ws(pe[-1])) pe--;
        match = (size_t)(pe - pn) == nlen && strncasecmp(pn, name, nlen) == 0;
        if (*p != '=') continue; /* a parameter without a value: skip it */
        p++;
        while (is_ws(*p)) p++;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
                if (match) {
                    if (o + 1 >= outsz) return -1;
                    out[o++] = *p;
                }
            }
            if (*p != '"') return -1; /* unterminated */
            p++;
            while (*p && *p != ';') {
                if (!is_ws(*p)) return -1; /* text after the closing quote */
                p++;
            }
        } else {
            const char *vs = p, *ve;

            while (*p && *p != ';') p++;
            ve = p;
            while (ve > vs && is_ws(ve[-1])) ve--;
            if (match) {
                if ((size_t)(ve - vs) + 1 > outsz) return -1;
                memcpy(out, vs, (size_t)(ve - vs));
                o = (size_t)(ve - vs);
            }
        }
        if (match) {
            out[o] = '\0';
            return 1;
        }
    }
    return 0;
}

/* The media type of a header value, lower-cased, into out: "multipart/form-data". */
static void media_type(const char *value, char *out, size_t outsz)
{
    size_t o = 0;

    while (is_ws(*value)) value++;
    for (; *value && *value != ';' && !is_ws(*value) && o + 1 < outsz; value++)
        out[o++] = (char)((*value >= 'A' && *value <= 'Z') ? *value + 32 : *value);
    out[o] = '\0';
}

/* ---- multipart ------------------------------------------------------------------------------ */

struct delim {
    size_t start;  /* where the delimiter line starts ("--boundary") */
    size_t cend;   /* where the content before it ends (its CRLF or LF removed) */
    size_t after;  /* first byte after the delimiter line */
    bool close;    /* "--boundary--" */
};

/* Finds the next delimiter line at or after `from`: "--boundary" at the start of the body or
 * right after a LF, followed by "--" (close), or by optional spaces and tabs and a line end. */
static bool find_delim(const uint8_t *b, size_t len, size_t from, const char *d, size_t dlen,
                       struct delim *out)
{
    while (from < len) {
        const uint8_t *q = memmem(b + from, len - from, d, dlen);
        size_t p, t;

        if (!q) return false;
        p = (size_t)(q - b);
        from = p + 1;
        if (p > 0 && b[p - 1] != '\n') continue;
        t = p + dlen;
        if (t + 1 < len && b[t] == '-' && b[t + 1] == '-') {
            out->close = true;
            out->after = t + 2;
        } else {
            while (t < len && is_ws((char)b[t])) t++;
            if (t < len && b[t] == '\n')
                out->after = t + 1;
            else if (t + 1 < len && b[t] == '\r' && b[t + 1] == '\n')
                out->after = t + 2;
            else
                continue; /* "--boundaryX": content that starts like a delimiter */
            out->close = false;
        }
        out->start = p;
        out->cend = p;
        if (p > 0) {
            out->cend = p - 1;
            if (p > 1 && b[p - 2] == '\r') out->cend = p - 2;
        }
        return true;
    }
    return false;
}

struct part_headers {
    char name[FORM_NAME_MAX + 1];
    char filename[FORM_FILENAME_MAX + 1];
    char ctype[FORM_FILENAME_MAX + 1];
    bool has_name, has_filename, has_ctype;
};

/* One unfolded header line of a part. */
static enum form_status part_header(const char *line, size_t partno, struct part_headers *h,
                                    char **err)
{
    const char *colon = strchr(line, ':');
    const char *v;
    char type[64];
    int r;

    if (!colon || colon == line)
        return fail(err, FORM_ERR_SYNTAX, "Part %zu has a malformed header line", partno);
    v = colon + 1;
    while (is_ws(*v)) v++;
    if ((size_t)(colon - line) == 19 && strncasecmp(line, "Content-Disposition", 19) == 0) {
        media_type(v, type, sizeof type);
        if (strcmp(type, "form-data") != 0)
            return fail(err, FORM_ERR_SYNTAX, "Part %zu is not form-data", partno);
        r = header_param(v, "name", h->name, sizeof h->name);
        if (r < 0)
            return fail(err, FORM_ERR_SYNTAX, "Part %zu has a malformed or too long name", partno);
        h->has_name = r == 1;
        r = header_param(v, "filename", h->filename, sizeof h->filename);
        if (r < 0)
            return fail(err, FORM_ERR_SYNTAX, "Part %zu has a malformed or too long filename",
                        partno);
        h->has_filename = r == 1;
    } else if ((size_t)(colon - line) == 12 && strncasecmp(line, "Content-Type", 12) == 0) {
        size_t n = strlen(v);

        while (n > 0 && is_ws(v[n - 1])) n--;
        if (n > FORM_FILENAME_MAX)
            return fail(err, FORM_ERR_LIMIT, "Part %zu has a Content-Type longer than %d bytes",
                        partno, FORM_FILENAME_MAX);
        memcpy(h->ctype, v, n);
        h->ctype[n] = '\0';
        h->has_ctype = true;
    }
    return FORM_OK;
}

/* Parses the header block of a part starting at b[pos], which must end (blank line) before
 * `limit` (the next delimiter) or run into it.  *content = where the part's content starts. */
static enum form_status part_headers(const uint8_t *b, size_t pos, size_t limit, size_t partno,
                                     struct part_headers *h, size_t *content, char **err)
{
    char block[FORM_PART_HEADERS_MAX + 1];
    size_t blen = 0;
    enum form_status st;

    memset(h, 0, sizeof *h);
    *content = limit;
    while (pos < limit) {
        const uint8_t *nl = memchr(b + pos, '\n', limit - pos);
        size_t lend = nl ? (size_t)(nl - b) : limit, next = nl ? lend + 1 : limit;
        size_t l = lend - pos;

        if (l > 0 && b[lend - 1] == '\r') l--;
        if (l == 0) { /* the blank line: the content follows */
            *content = next;
            break;
        }
        if (memchr(b + pos, '\0', l))
            return fail(err, FORM_ERR_SYNTAX, "Part %zu has a NUL byte in its headers", partno);
        if (is_ws((char)b[pos]) && blen > 0) {
            /* A folded line continues the previous header. */
        } else if (blen > 0) {
            block[blen] = '\0';
            if ((st = part_header(block, partno, h, err)) != FORM_OK) return st;
            blen = 0;
        }
        if (blen + l > FORM_PART_HEADERS_MAX)
            return fail(err, FORM_ERR_LIMIT, "Part %zu has more than %d bytes of headers", partno,
                        FORM_PART_HEADERS_MAX);
        memcpy(block + blen, b + pos, l);
        blen += l;
        pos = next;
    }
    if (blen > 0) {
        block[blen] = '\0';
        if ((st = part_header(block, partno, h, err)) != FORM_OK) return st;
    }
    if (!h->has_name)
        return fail(err, FORM_ERR_SYNTAX, "Part %zu has no Content-Disposition name", partno);
    return FORM_OK;
}

enum form_status api_form_parse_multipart(struct form *f, const char *boundary, const uint8_t *body,
                                          size_t len, char **err)
{
    size_t blen = strlen(boundary), nparts = 0;
    char d[FORM_BOUNDARY_MAX + 3];
    struct delim cur, next;
    enum form_status st;

    if (blen == 0 || blen > FORM_BOUNDARY_MAX)
        return fail(err, FORM_ERR_TYPE, "The multipart boundary is empty or longer than %d bytes",
                    FORM_BOUNDARY_MAX);
    d[0] = d[1] = '-';
    memcpy(d + 2, boundary, blen);
    if (!find_delim(body, len, 0, d, blen + 2, &cur))
        return fail(err, FORM_ERR_SYNTAX, "The multipart body does not contain its boundary");
    while (!cur.close) {
        struct part_headers *h;
        size_t content, cend;

        if (!find_delim(body, len, cur.after, d, blen + 2, &next))
            return fail(err, FORM_ERR_SYNTAX, "The multipart body has no closing boundary");
        if (++nparts > FORM_PARTS_MAX)
            return fail(err, FORM_ERR_LIMIT, "Too many parts (more than %d)", FORM_PARTS_MAX);
        h = malloc(sizeof *h);
        if (!h) return fail(err, FORM_ERR_NOMEM, "Out of memory");
        st = part_headers(body, cur.after, next.start, nparts, h, &content, err);
        cend = next.cend > content ? next.cend : content;
        if (st == FORM_OK)
            st = add_field(f, h->name, strlen(h->name), (const char *)body + content,
                           cend - content, h->has_filename ? h->filename : NULL,
                           h->has_ctype ? h->ctype : NULL, err);
        free(h);
        if (st != FORM_OK) return st;
        cur = next;
    }
    return FORM_OK;
}

/* ---- dispatch by content type --------------------------------------------------------------- */

enum form_status api_form_parse(struct form *f, const char *content_type, const uint8_t *body,
                                size_t len, char **err)
{
    char type[64], boundary[FORM_BOUNDARY_MAX + 1];
    int r;

    if (!content_type || !*content_type) {
        if (len == 0) return FORM_OK;
        return fail(err, FORM_ERR_TYPE,
                    "A request body needs Content-Type application/x-www-form-urlencoded or "
                    "multipart/form-data");
    }
    media_type(content_type, type, sizeof type);
    if (strcmp(type, "application/x-www-form-urlencoded") == 0)
        return api_form_parse_urlencoded(f, body, len, err);
    if (strcmp(type, "multipart/form-data") == 0) {
        r = header_param(content_type, "boundary", boundary, sizeof boundary);
        if (r != 1 || !boundary[0])
            return fail(err, FORM_ERR_TYPE,
                        "multipart/form-data needs a boundary parameter of 1 to %d bytes",
                        FORM_BOUNDARY_MAX);
        return api_form_parse_multipart(f, boundary, body, len, err);
    }
    if (len == 0) return FORM_OK;
    return fail(err, FORM_ERR_TYPE,
                "Unsupported Content-Type: use application/x-www-form-urlencoded or "
                "multipart/form-data");
}
