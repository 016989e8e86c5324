/* routes/routes.h — the route expression language, PCRE2 matching and the route table (SPEC §4).
 *
 * This issue brings only the regex engine's identity (for --version and a start-up check that
 * the JIT is there); the parser, evaluation and table come with the routes issue.
 * Uses only util/. */
#ifndef INLET_ROUTES_H
#define INLET_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

/* "PCRE2 10.42 (JIT: yes)" */
void route_lib_version(char *out, size_t outsz);
bool route_jit_available(void);

#endif
