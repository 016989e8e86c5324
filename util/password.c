/* util/password.c — yescrypt hashes of mailbox passwords (password.h). */
#include "util/password.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include "util/limits.h"

bool password_acceptable(const char *pw, size_t len)
{
    return len >= PASSWORD_MIN && len <= PASSWORD_MAX && !memchr(pw, '\0', len) && !memchr(pw, '\r', len) &&
           !memchr(pw, '\n', len);
}

char *password_hash(const char *pw)
{
    struct crypt_data *cd = calloc(1, sizeof *cd);
    char *out = NULL;

    if (!cd) return NULL;
    /* count 0: libxcrypt's default cost for yescrypt; the salt from the kernel's random. */
    if (crypt_gensalt_rn("$y$", 0, NULL, 0, cd->setting, sizeof cd->setting)) {
        const char *h = crypt_r(pw, cd->setting, cd);

        if (h && h[0] == '$') out = strdup(h);
    }
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    return out;
}

bool password_verify(const char *pw, const char *hash)
{
    struct crypt_data *cd = calloc(1, sizeof *cd);
    bool ok = false;

    if (!cd) return false;
    const char *h = hash[0] == '$' ? crypt_r(pw, hash, cd) : NULL;
    if (h && h[0] == '$') {
        size_t n = strlen(hash), m = strlen(h);
        unsigned char diff = (unsigned char)(n != m);

        for (size_t i = 0; i < n && i < m; i++) diff |= (unsigned char)(h[i] ^ hash[i]);
        ok = diff == 0;
    }
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    return ok;
}
