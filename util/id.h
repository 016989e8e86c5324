/* util/id.h — identifiers and randomness.
 *
 * Message ids are 24 lowercase hex characters: 4 bytes of Unix seconds (so ids sort roughly by
 * arrival, which keeps B-tree inserts local) and 8 random bytes from getrandom(2). */
#ifndef INLET_UTIL_ID_H
#define INLET_UTIL_ID_H

#include <stddef.h>

#define ID_LEN 24

/* Fills out[0..ID_LEN-1] and terminates it. */
void id_generate(char out[ID_LEN + 1]);
/* Fills buf with n cryptographically random bytes; aborts only if the kernel cannot provide them. */
void util_random_bytes(void *buf, size_t n);
/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void util_hex_encode(char *out, const void *in, size_t n);

#endif
