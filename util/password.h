/* util/password.h — mailbox passwords (SPEC §9): a slow salted hash (yescrypt, through
 * libxcrypt's crypt(3)), checked in constant time.  Plain passwords are never kept nor logged;
 * the hash is what storage/ keeps.
 *
 * Both calls take tens of milliseconds on purpose: never on the event loop. */
#ifndef INLET_UTIL_PASSWORD_H
#define INLET_UTIL_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>

/* Whether `pw` (len bytes) can be a password: PASSWORD_MIN..PASSWORD_MAX bytes, no NUL, CR or
 * LF (a POP3 line cannot carry them). */
bool password_acceptable(const char *pw, size_t len);
/* A "$y$..." hash of `pw` with a fresh salt (malloc'd), or NULL (out of memory, no entropy). */
char *password_hash(const char *pw);
/* Whether `pw` matches `hash`.  False for a hash crypt(3) cannot read. */
bool password_verify(const char *pw, const char *hash);

#endif
