/* util/id.c — see id.h. */
#include "util/id.h"

#include <errno.h>
#include <stdint.h>
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
    util_random_bytes(raw + 4, sizeof raw - 4);
    util_hex_encode(out, raw, sizeof raw);
}
