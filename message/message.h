/* message/message.h — MIME parsing with GMime into inlet's message model (SPEC §3).
 *
 * This issue brings only the library's lifetime: GMime must be initialised once, before any
 * thread that parses starts.  The model, the parser and the JSON encodings come with the parse
 * issue.  Uses only util/. */
#ifndef INLET_MESSAGE_H
#define INLET_MESSAGE_H

#include <stddef.h>

/* Once per process, before any worker thread starts. */
void message_lib_init(void);
void message_lib_shutdown(void);
/* "GMime 3.2.13" */
void message_lib_version(char *out, size_t outsz);

#endif
