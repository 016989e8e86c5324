/* api/auth.c — HTTP Basic authentication of API requests (SPEC §7).
 *
 * User `api`, password = the API key.  The password is never compared as a string: both the
 * expected key and the given password go through HMAC-SHA-256 under a random key drawn at start,
 * and the two 32-byte digests are compared with a loop that always reads every byte.  So the time
 * taken does not depend on where the password differs from the key nor on its length (the length
 * only changes the HMAC input, which is hashed in full either way), and the random HMAC key means
 * nobody can precompute digests. */
#include <glib.h>
#include <string.h>
#include <strings.h>

#include "api/internal.h"
#include "util/id.h"
#include "util/limits.h"

bool api_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char diff = 0;

    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(x[i] ^ y[i]);
    return diff == 0;
}

static void digest(const unsigned char key[API_AUTH_DIGEST_LEN], const void *data, size_t len,
                   unsigned char out[API_AUTH_DIGEST_LEN])
{
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, key, API_AUTH_DIGEST_LEN);
    gsize n = API_AUTH_DIGEST_LEN;

    g_hmac_update(h, data, (gssize)len);
    g_hmac_get_digest(h, out, &n);
    g_hmac_unref(h);
}

void api_auth_init(struct api_auth *auth, const char *api_key)
{
    util_random_bytes(auth->hmac_key, sizeof auth->hmac_key);
    digest(auth->hmac_key, api_key, strlen(api_key), auth->want);
}

bool api_auth_check(const struct api_auth *auth, const char *authorization)
{
    unsigned char got[API_AUTH_DIGEST_LEN];
    const char *p = authorization;
    char token[API_AUTH_HEADER_MAX + 1];
    size_t n = 0;
    guchar *raw;
    gsize rawlen = 0;
    bool ok = false;

    if (!p || strlen(p) > API_AUTH_HEADER_MAX) return false;
    while (*p == ' ' || *p == '\t') p++;
    if (strncasecmp(p, "Basic", 5) != 0 || (p[5] != ' ' && p[5] != '\t')) return false;
    for (p += 5; *p == ' ' || *p == '\t'; p++) {}
    /* Strict base64 alphabet: g_base64_decode itself skips anything it does not know. */
    for (; *p && *p != ' ' && *p != '\t'; p++) {
        if (!g_ascii_isalnum(*p) && *p != '+' && *p != '/' && *p != '=') return false;
        token[n++] = *p;
    }
    while (*p == ' ' || *p == '\t') p++;
    if (*p || n == 0 || n % 4 != 0) return false;
    token[n] = '\0';
    raw = g_base64_decode(token, &rawlen);
    if (!raw) return false;
    const char *colon = memchr(raw, ':', rawlen);
    if (colon && !memchr(raw, '\0', rawlen) && (size_t)(colon - (const char *)raw) == 3 &&
        memcmp(raw, "api", 3) == 0) {
        const char *pass = colon + 1;
        size_t plen = rawlen - 4;

        digest(auth->hmac_key, pass, plen, got);
        ok = api_ct_equal(got, auth->want, sizeof got);
    }
    memset(raw, 0, rawlen);
    g_free(raw);
    memset(token, 0, sizeof token);
    return ok;
}
