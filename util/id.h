/* util/id.h — identifiers and randomness.
 *
 * Message ids are 24 lowercase hex characters: 4 bytes of Unix seconds (so ids sort roughly by
 * arrival, which keeps B-tree inserts local) and 8 random bytes from getrandom(2), drawn from a
 * per-thread pool (util_random_bytes_pooled) so that an id costs no system call. */
#ifndef INLET_UTIL_ID_H
#define INLET_UTIL_ID_H

#include <stddef.h>

#define ID_LEN 24

/* Fills out[0..ID_LEN-1] and terminates it. */
void id_generate(char out[ID_LEN + 1]);
/* Fills buf with n cryptographically random bytes; aborts only if the kernel cannot provide them. */
void util_random_bytes(void *buf, size_t n);
/* The same bytes, taken from a per-thread pool refilled by util_random_bytes 256 bytes at a time
 * (each byte handed out once): for ids and storage keys, made per message.  Secrets that live
 * long (signing and API keys) use util_random_bytes. */
void util_random_bytes_pooled(void *buf, size_t n);
/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void util_hex_encode(char *out, const void *in, size_t n);

#endif
