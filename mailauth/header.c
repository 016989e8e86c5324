/* mailauth/header.c — the little of a header block that sender authentication reads itself:
 * where it ends, the From: domain (DMARC's subject), the authserv-id of an Authentication-Results
 * field.  Bounded, never failing on input: a field it cannot understand gives "no domain".
 * DKIM's own header handling is in dkim.c and dkim_canon.c.  Driven by the mailauth fuzz target. */
#include <ctype.h>
#include <string.h>

#include "mailauth/internal.h"
#include "util/limits.h"

size_t mailauth_header_end(const uint8_t *data, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(data + i, '\n', len - i);
        if (!nl) return len;
        size_t line = (size_t)(nl - (data + i));
        if (line == 0 || (line == 1 && data[i] == '\r')) return (size_t)(nl - data) + 1;
        i = (size_t)(nl - data) + 1;
    }
    return len;
}

/* The next field of the block from *pos: [*start, *end) the whole field with its line ends. */
bool mailauth_header_next(const uint8_t *data, size_t hend, size_t *pos, size_t *start, size_t *end)
{
    size_t i = *pos;
    if (i >= hend) return false;
    *start = i;
    for (;;) {
        const uint8_t *nl = memchr(data + i, '\n', hend - i);
        i = nl ? (size_t)(nl - data) + 1 : hend;
        if (i >= hend || (data[i] != ' ' && data[i] != '\t')) break;
    }
    *end = i;
    *pos = i;
    return true;
}

/* Field [start, end) is named `name`: the value's offset, or 0. */
size_t mailauth_header_is(const uint8_t *data, size_t start, size_t end, const char *name)
{
    size_t n = strlen(name);
    if (end - start <= n) return 0;
    if (strncasecmp((const char *)data + start, name, n) != 0) return 0;
    size_t i = start + n;
    while (i < end && (data[i] == ' ' || data[i] == '\t')) i++;
    return i < end && data[i] == ':' ? i + 1 : 0;
}

/* The value unfolded into out (CR/LF dropped), at most outsz - 1 bytes; false when cut. */
static bool unfold(const uint8_t *v, size_t len, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '\r' || v[i] == '\n') continue;
        if (o + 1 >= outsz) return false;
        out[o++] = v[i] ? (char)v[i] : ' ';
    }
    out[o] = '\0';
    return true;
}

/* Skips a comment "(...)" with nesting and quoted-pairs; returns the index after it. */
static size_t skip_comment(const char *s, size_t i)
{
    int depth = 0;
    for (; s[i]; i++) {
        if (s[i] == '\\' && s[i + 1]) i++;
        else if (s[i] == '(') depth++;
        else if (s[i] == ')' && --depth == 0) return i + 1;
    }
    return i;
}

/* The address list of a From: value: exactly one address with a domain, whose domain goes into
 * out.  Quoted strings and comments are skipped; groups and several addresses give -1. */
static int one_domain(const char *v, char *out, size_t outsz)
{
    const char *addr = NULL;
    size_t addr_len = 0;
    int count = 0;
    const char *tok = NULL; /* the current bare token (an address without <>) */
    for (size_t i = 0;;) {
        char c = v[i];
        if (c == '"') {
            for (i++; v[i] && v[i] != '"'; i++)
                if (v[i] == '\\' && v[i + 1]) i++;
            if (v[i]) i++;
            tok = NULL;
            continue;
        }
        if (c == '(') { i = skip_comment(v, i); continue; }
        if (c == '<') {
            const char *end = strchr(v + i, '>');
            if (!end) return -1;
            addr = v + i + 1;
            addr_len = (size_t)(end - addr);
            count++;
            tok = NULL;
            i = (size_t)(end - v) + 1;
            continue;
        }
        if (c == ',' || c == '\0') {
            if (tok) { /* a bare addr-spec */
                const char *p = tok;
                while (*p == ' ' || *p == '\t') p++;
                size_t l = (size_t)((v + i) - p);
                while (l && (p[l - 1] == ' ' || p[l - 1] == '\t')) l--;
                if (l) { addr = p; addr_len = l; count++; }
            }
            tok = NULL;
            if (c == '\0') break;
            i++;
            continue;
        }
        if (c == ':' || c == ';') return -1; /* a group */
        if (!tok && c != ' ' && c != '\t') tok = v + i;
        i++;
    }
    if (count != 1) return count == 0 ? 0 : -1;
    const char *at = NULL;
    for (size_t i = 0; i < addr_len; i++)
        if (addr[i] == '@') at = addr + i;
    if (!at) return -1;
    const char *d = at + 1;
    size_t dl = addr_len - (size_t)(d - addr);
    while (dl && (d[dl - 1] == ' ' || d[dl - 1] == '.')) dl--;
    if (dl == 0 || dl >= outsz) return -1;
    for (size_t i = 0; i < dl; i++) {
        unsigned char ch = (unsigned char)d[i];
        if (!(isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch >= 0x80)) return -1;
        out[i] = (char)tolower(ch);
    }
    out[dl] = '\0';
    return 1;
}

int mailauth_from_domain(const uint8_t *data, size_t len, char *out, size_t outsz)
{
    size_t hend = mailauth_header_end(data, len), pos = 0, start, end;
    int found = 0;
    char value[MAILAUTH_FROM_MAX];
    while (mailauth_header_next(data, hend, &pos, &start, &end)) {
        size_t v = mailauth_header_is(data, start, end, "From");
        if (!v) continue;
        if (found++) return -1; /* RFC 7489 §6.6.1: several From: fields */
        if (!unfold(data + v, end - v, value, sizeof value)) return -1;
    }
    if (!found) return 0;
    int r = one_domain(value, out, outsz);
    return r == 0 ? -1 : r;
}

bool mailauth_authres_id(const char *value, size_t len, char *out, size_t outsz)
{
    size_t i = 0;
    for (;;) { /* CFWS before the id */
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == '\r' || value[i] == '\n')) i++;
        if (i < len && value[i] == '(') {
            int depth = 0;
            for (; i < len; i++) {
                if (value[i] == '\\' && i + 1 < len) i++;
                else if (value[i] == '(') depth++;
                else if (value[i] == ')' && --depth == 0) { i++; break; }
            }
            continue;
        }
        break;
    }
    /* The id ends at any control byte too (NUL included): a reader in C sees it end there, so
     * "inlet-id<NUL>junk" must count as inlet's id (and be removed), and "<NUL>inlet-id" as none. */
    size_t o = 0;
    while (i < len && value[i] != ';' && value[i] != ' ' && value[i] != '(' &&
           (unsigned char)value[i] >= 0x20 && (unsigned char)value[i] != 0x7f) {
        if (o + 1 >= outsz) return false;
        out[o++] = value[i++];
    }
    out[o] = '\0';
    return o > 0;
}
