/* util/clock.h — time in the forms inlet writes. */
#ifndef INLET_UTIL_CLOCK_H
#define INLET_UTIL_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

int64_t clock_now_ms(void);          /* wall clock, Unix milliseconds */
int64_t clock_monotonic_ms(void);
/* RFC 5322 date in UTC with fixed English names, e.g. "Sun, 22 Nov 2026 10:04:05 +0000".
 * out must hold at least 32 bytes. Never depends on the locale. */
void clock_rfc5322(char *out, size_t outsz, time_t t);

#endif
