/* routes/routes.c — see routes.h. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "routes/routes.h"

#include <pcre2.h>
#include <stdio.h>

bool route_jit_available(void)
{
    uint32_t jit = 0;
    return pcre2_config(PCRE2_CONFIG_JIT, &jit) >= 0 && jit;
}

void route_lib_version(char *out, size_t outsz)
{
    char ver[64] = "";
    pcre2_config(PCRE2_CONFIG_VERSION, ver);
    snprintf(out, outsz, "PCRE2 %s (JIT: %s)", ver, route_jit_available() ? "yes" : "no");
}
