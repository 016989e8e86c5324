/* util/id.c — see id.h. */
#include "util/id.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "util/log.h"

void util_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            /* No entropy means no unguessable ids or keys: there is no safe way to go on. */
            log_fatal("getrandom failed: errno=%d", errno);
        }
        p += r;
        n -= (size_t)r;
    }
}

/* The pool: getrandom(2) 256 bytes at a time per thread instead of one call per id.  Each byte is
 * handed out once and then cleared; the bytes are the kernel's CSPRNG output either way. */
#define POOL_BYTES 256
static _Thread_local unsigned char pool[POOL_BYTES];
static _Thread_local size_t pool_left;

void util_random_bytes_pooled(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        if (pool_left == 0) {
            util_random_bytes(pool, sizeof pool);
            pool_left = sizeof pool;
        }
        const size_t take = n < pool_left ? n : pool_left;
        unsigned char *from = pool + sizeof pool - pool_left;
        memcpy(p, from, take);
        memset(from, 0, take);
        pool_left -= take;
        p += take;
        n -= take;
    }
}

void util_hex_encode(char *out, const void *in, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * n] = '\0';
}

void id_generate(char out[ID_LEN + 1])
{
    unsigned char raw[ID_LEN / 2];
    uint32_t secs = (uint32_t)time(NULL);
    raw[0] = (unsigned char)(secs >> 24);
    raw[1] = (unsigned char)(secs >> 16);
    raw[2] = (unsigned char)(secs >> 8);
    raw[3] = (unsigned char)secs;
    util_random_bytes_pooled(raw + 4, sizeof raw - 4);
    util_hex_encode(out, raw, sizeof raw);
}
