/* message/message.c — see message.h. */
#include "message/message.h"

#include <gmime/gmime.h>
#include <stdio.h>

void message_lib_init(void)
{
    g_mime_init();
}

void message_lib_shutdown(void)
{
    g_mime_shutdown();
}

void message_lib_version(char *out, size_t outsz)
{
    snprintf(out, outsz, "GMime %u.%u.%u", gmime_major_version, gmime_minor_version,
             gmime_micro_version);
}
