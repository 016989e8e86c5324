/* util/net.h — listener addresses. */
#ifndef INLET_UTIL_NET_H
#define INLET_UTIL_NET_H

#include <stdbool.h>
#include <sys/socket.h>

#include "util/limits.h"

/* Parses "HOST:PORT" or "[IPv6]:PORT" (numeric host, or "localhost", or "*" / "0.0.0.0" / "[::]"
 * for wildcards) into `out`.  0, or -1 with *err (malloc'd). */
int net_parse_listen(const char *spec, struct sockaddr_storage *out, char **err);
/* "127.0.0.1:2525" / "[::1]:2525" into out (at least 64 bytes). */
void net_format(const struct sockaddr *sa, char *out, size_t outsz);
/* Just the address, no port (at least 48 bytes). */
void net_format_ip(const struct sockaddr *sa, char *out, size_t outsz);
bool net_is_wildcard(const struct sockaddr *sa);
/* The client an address belongs to, for per-client caps and shares: an IPv4 address (also one
 * mapped into IPv6) as itself; an IPv6 address as its /`v6_prefix` network ("2001:db8::/64"),
 * since one host is given a whole /64 and can speak from any address in it; /128 is the address
 * itself.  `out` at least NET_CLIENT_KEY_MAX bytes (util/limits.h). */
void net_client_key(const struct sockaddr *sa, unsigned v6_prefix, char *out, size_t outsz);
/* A non-blocking listening TCP socket bound to `spec` (IPv6 sockets are IPv6-only, so [::] and
 * 0.0.0.0 can both be given).  Plain sockets first, so that a failure is reported before any
 * event-loop handle exists.  0, or -1 with *err (malloc'd) naming the address and the reason. */
int net_listen(const char *spec, int *fd_out, char **err);

#endif
