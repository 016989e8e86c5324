/* api/common.c — small helpers the endpoint files share: byte replies without a copy, store
 * errors, JSON strings from untrusted bytes, base64url page tokens, URL escaping. */
#include <glib.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"
#include "util/log.h"

enum MHD_Result api_reply_bytes(struct MHD_Connection *conn, unsigned status,
                                const char *content_type, void *take_body, size_t len)
{
    /* MHD wants a non-NULL buffer even for an empty body. */
    if (!take_body) take_body = malloc(1);
    if (!take_body) return MHD_NO;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, take_body, free);
    if (!resp) {
        free(take_body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

enum MHD_Result api_reply_store_error(struct api_request *req, const char *what,
                                      enum store_status status, char *take_err)
{
    const char *why = take_err && *take_err ? take_err : store_status_text(status);
    log_error("http", "%s failed: %s", what, why);
    char *msg = g_strdup_printf("Storage unavailable: %s", why);
    enum MHD_Result r = api_reply_error(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
    g_free(msg);
    free(take_err);
    return r;
}

json_t *api_jstrn(const char *s, size_t len)
{
    if (g_utf8_validate(s, (gssize)len, NULL)) return json_stringn(s, len);
    char *valid = g_utf8_make_valid(s, (gssize)len);
    json_t *j = json_string(valid);
    g_free(valid);
    return j;
}

json_t *api_jstr(const char *s)
{
    return api_jstrn(s ? s : "", s ? strlen(s) : 0);
}

char *api_b64url_encode(const void *data, size_t n)
{
    char *b = g_base64_encode(data, n);
    size_t w = 0;
    for (size_t r = 0; b[r]; r++) {
        char c = b[r];
        if (c == '=') break;
        b[w++] = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    b[w] = '\0';
    return b;
}

uint8_t *api_b64url_decode(const char *s, size_t *n)
{
    size_t len = strlen(s);
    if (len == 0 || len % 4 == 1 || len > API_PAGE_TOKEN_MAX) return NULL;
    char *t = g_malloc(len + 4);
    size_t i;
    for (i = 0; i < len; i++) {
        char c = s[i];
        if (c == '-') c = '+';
        else if (c == '_') c = '/';
        else if (!g_ascii_isalnum(c)) {
            g_free(t);
            return NULL;
        }
        t[i] = c;
    }
    while (i % 4) t[i++] = '=';
    t[i] = '\0';
    gsize out = 0;
    uint8_t *d = g_base64_decode(t, &out);
    g_free(t);
    *n = out;
    return d;
}

char *api_url_escape(const char *s)
{
    return g_uri_escape_string(s ? s : "", NULL, FALSE);
}

int api_parse_count(const char *s, long long *out)
{
    if (!s || !*s) return 0;
    long long v = 0;
    for (const char *q = s; *q; q++) {
        if (*q < '0' || *q > '9') return 0;
        if (v > (LLONG_MAX - (*q - '0')) / 10) return -1;
        v = v * 10 + (*q - '0');
    }
    *out = v;
    return 1;
}
