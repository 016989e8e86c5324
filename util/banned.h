/* util/banned.h — functions with no bound or no error report, banned from the whole code base by
 * the compiler (curl's CODE_STYLE bans the same).  meson.build force-includes this header into
 * every C translation unit (`-include util/banned.h`), so a use anywhere fails the build with
 * "attempt to use poisoned": use snprintf, memcpy with a known length, strtol/strtoull with an
 * end pointer and errno, or a real parser instead.
 *
 * The C library headers that declare them are included first: #pragma GCC poison also rejects a
 * later declaration, and their include guards keep them from being read again.  A file that must
 * include those headers itself first (tests/shim/syncshim.c undefines _FILE_OFFSET_BITS before
 * them) is compiled with -DINLET_BANNED_LATER, which makes the forced include a no-op, and includes
 * this header after its own includes with INLET_BANNED_LATER undefined. */
#ifndef INLET_BANNED_LATER
#ifndef INLET_UTIL_BANNED_H
#define INLET_UTIL_BANNED_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* With clang, glibc's _FORTIFY_SOURCE headers define sprintf as a macro (gcc gets an inline
 * function instead), and poisoning a defined macro is an error there: it goes first. */
#undef sprintf
#pragma GCC poison strcpy strcat sprintf vsprintf gets atoi atol atoll sscanf

#endif
#endif
