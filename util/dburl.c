/* util/dburl.c — see dburl.h. */
#include "util/dburl.h"

#include <glib.h>
#include <string.h>

#define REDACTED "***"

static const char *postgres_rest(const char *url)
{
    if (g_str_has_prefix(url, "postgresql://")) return url + strlen("postgresql://");
    if (g_str_has_prefix(url, "postgres://")) return url + strlen("postgres://");
    return NULL;
}

enum dburl_kind dburl_kind(const char *url)
{
    if (!url || !*url) return DBURL_SQLITE;
    if (g_str_has_prefix(url, "sqlite:")) return url[strlen("sqlite:")] ? DBURL_SQLITE : DBURL_INVALID;
    if (postgres_rest(url)) return DBURL_POSTGRES;
    return DBURL_INVALID;
}

/* Appends the query string `q` (after '?', up to '#' or the end) with password values masked. */
static void append_query(GString *out, const char *q)
{
    while (*q && *q != '#') {
        size_t len = strcspn(q, "&#");
        if (len >= strlen("password=") && g_ascii_strncasecmp(q, "password=", strlen("password=")) == 0)
            g_string_append(out, "password=" REDACTED);
        else
            g_string_append_len(out, q, (gssize)len);
        q += len;
        if (*q == '&') g_string_append_c(out, *q++);
    }
    g_string_append(out, q);
}

/* After "scheme://" of any URL (a mistyped scheme must not print a password either); NULL when
 * `url` has no such prefix. */
static const char *authority(const char *url)
{
    size_t n = strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
    return n > 0 && strncmp(url + n, "://", 3) == 0 ? url + n + 3 : NULL;
}

char *dburl_redact(const char *url)
{
    const char *rest = authority(url ? url : "");
    if (!rest) return g_strdup(url ? url : "");
    GString *out = g_string_new_len(url, rest - url);
    /* The authority ends at the path, the query or the fragment.  Its user part ends at its last
     * '@' (a password with an unencoded '@' is still masked whole). */
    size_t alen = strcspn(rest, "/?#");
    const char *at = g_strrstr_len(rest, (gssize)alen, "@");
    if (at) {
        size_t ulen = strcspn(rest, ":@");
        g_string_append_len(out, rest, (gssize)ulen);
        if (rest + ulen < at) g_string_append(out, ":" REDACTED);
        rest = at; /* from the '@' on */
        alen = strcspn(rest, "/?#");
    }
    size_t plen = alen + strcspn(rest + alen, "?#");
    g_string_append_len(out, rest, (gssize)plen);
    rest += plen;
    if (*rest == '?') {
        g_string_append_c(out, '?');
        append_query(out, rest + 1);
    } else {
        g_string_append(out, rest);
    }
    return g_string_free(out, FALSE);
}
