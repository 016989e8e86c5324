/* util/log.h — one line per event on stderr: `<UTC time> <level> <topic> key=value ...`.
 *
 * Thread-safe (each line is one write(2)).  The level is checked before any formatting.
 * Client bytes never go into a log line raw: pass them through log_escape() first. */
#ifndef INLET_UTIL_LOG_H
#define INLET_UTIL_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
/* Parses "error", "warn", "info", "debug"; returns -1 for anything else. */
int log_level_parse(const char *name);

void log_write(enum log_level level, const char *topic, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
_Noreturn void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define log_error(topic, ...) log_write(LOG_ERROR, topic, __VA_ARGS__)
#define log_warn(topic, ...)                                                                        \
    do {                                                                                            \
        if (log_enabled(LOG_WARN)) log_write(LOG_WARN, topic, __VA_ARGS__);                         \
    } while (0)
#define log_info(topic, ...)                                                                        \
    do {                                                                                            \
        if (log_enabled(LOG_INFO)) log_write(LOG_INFO, topic, __VA_ARGS__);                         \
    } while (0)
#define log_debug(topic, ...)                                                                       \
    do {                                                                                            \
        if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, topic, __VA_ARGS__);                       \
    } while (0)

/* Names the calling thread (at most 15 bytes): what `top -H`, `ps -L`, gdb and perf show for it
 * instead of "inlet", so that an operator can tell the writer from the routing workers. */
void log_thread_name(const char *name);

/* Writes at most `max` bytes of `in` into `out` (size `outsz`) with everything outside printable
 * ASCII, and `"` and `\`, escaped as \xNN / \" / \\; appends "..." when cut.  Always terminates
 * `out` (outsz > 0).  Returns `out`, so it can be used inline as a printf argument. */
const char *log_escape(char *out, size_t outsz, const char *in, size_t len, size_t max);

#endif
