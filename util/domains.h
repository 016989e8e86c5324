/* util/domains.h — the set of hosted domains.
 *
 * Entries are exact names or "*.example.com" (every subdomain of example.com, not example.com
 * itself).  Names are compared case-insensitively as IDNA A-labels: a UTF-8 domain is converted
 * with libidn2 both when added and when looked up. */
#ifndef INLET_UTIL_DOMAINS_H
#define INLET_UTIL_DOMAINS_H

#include <stdbool.h>
#include <stddef.h>

struct domain_set;

struct domain_set *domain_set_new(void);
void domain_set_free(struct domain_set *set);
/* 0, or -1 with *err (malloc'd) naming what is wrong with `pattern`. */
int domain_set_add(struct domain_set *set, const char *pattern, char **err);
/* Whether `domain` (len bytes, UTF-8 or ASCII, any case, no trailing dot needed) is hosted. */
bool domain_set_hosts(const struct domain_set *set, const char *domain, size_t len);
size_t domain_set_count(const struct domain_set *set);

/* The lower-case Unicode form of `domain` (len bytes, UTF-8 or ASCII, any case), as routes match
 * it: A-labels ("xn--...") become U-labels, upper case becomes lower case (UTS #46 mapping through
 * libidn2).  When the conversion fails (not a valid IDN), the domain with only its ASCII letters
 * lower-cased.  Pure ASCII without an "xn--" label costs no libidn2 call.  Malloc'd (free());
 * NULL only when memory ran out or `domain` holds a NUL byte. */
char *domain_to_ulabel(const char *domain, size_t len);

#endif
