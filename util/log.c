/* util/log.c — see log.h. */
#include "util/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/limits.h"

static atomic_int current_level = LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
    atomic_store(&current_level, (int)level);
}

bool log_enabled(enum log_level level)
{
    return (int)level <= atomic_load(&current_level);
}

int log_level_parse(const char *name)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
        if (strcmp(name, level_names[i]) == 0) return (int)i;
    return -1;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ".  The part up to the seconds is formatted once per second and
 * thread (gmtime_r and strftime cost more than the rest of a line). */
static size_t format_time(char *out, size_t outsz)
{
    static _Thread_local time_t cached_sec = (time_t)-1;
    static _Thread_local char cached[32];
    static _Thread_local size_t cached_len;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        cached_len = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    if (cached_len + 6 > outsz) return 0;
    memcpy(out, cached, cached_len);
    const unsigned ms = (unsigned)(ts.tv_nsec / 1000000);
    char *p = out + cached_len;
    p[0] = '.';
    p[1] = (char)('0' + ms / 100);
    p[2] = (char)('0' + ms / 10 % 10);
    p[3] = (char)('0' + ms % 10);
    p[4] = 'Z';
    return cached_len + 5;
}

__attribute__((format(printf, 3, 0)))
static void vlog(const char *level, const char *topic, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    size_t n = format_time(line, sizeof line);
    const size_t ll = strlen(level), tl = strlen(topic);
    int m;
    if (n + ll + tl + 3 < sizeof line) { /* " level topic " */
        line[n++] = ' ';
        memcpy(line + n, level, ll);
        n += ll;
        line[n++] = ' ';
        memcpy(line + n, topic, tl);
        n += tl;
        line[n++] = ' ';
    }
    if (n < sizeof line) {
        m = vsnprintf(line + n, sizeof line - n, fmt, ap);
        if (m > 0) n += (size_t)m;
    }
    if (n >= sizeof line - 1) { /* cut: mark it so an operator knows */
        n = sizeof line - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    }
    line[n++] = '\n';
    /* One write per line so that lines from several threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

void log_write(enum log_level level, const char *topic, const char *fmt, ...)
{
    if (!log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level_names[level], topic, fmt, ap);
    va_end(ap);
}

void log_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog("fatal", "inlet", fmt, ap);
    va_end(ap);
    exit(1);
}

const char *log_escape(char *out, size_t outsz, const char *in, size_t len, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    if (outsz == 0) return out;
    for (; i < len && i < max; i++) {
        unsigned char c = (unsigned char)in[i];
        char esc[4];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            esc[k++] = '\\';
            esc[k++] = 'x';
            esc[k++] = hex[c >> 4];
            esc[k++] = hex[c & 15];
        } else {
            esc[k++] = (char)c;
        }
        if (o + k + 4 > outsz) break; /* keep room for "..." and NUL */
        memcpy(out + o, esc, k);
        o += k;
    }
    if (i < len && o + 4 <= outsz) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

void log_thread_name(const char *name)
{
    /* Linux refuses names of 16 bytes or more: the caller's are short literals. */
    (void)pthread_setname_np(pthread_self(), name);
}
