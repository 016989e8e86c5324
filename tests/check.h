/* tests/check.h — a minimal TAP producer for the C unit tests (meson test protocol 'tap').
 *
 *   CHECK(cond, "what", ...)      one TAP line; on failure also prints the location
 *   CHECK_STR(got, want, "what")  exact string comparison with both shown on failure
 *   return check_done();          prints the plan and returns the exit status */
#ifndef INLET_TESTS_CHECK_H
#define INLET_TESTS_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int check_count, check_failed;

/* Prints a description with CR and LF shown as \r and \n: a value with line breaks in it stays
 * on its TAP line (meson reports any other line as "Unknown TAP output"). */
__attribute__((format(printf, 1, 2))) static inline void check_print(const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (const char *p = buf; *p; p++) {
        if (*p == '\n') fputs("\\n", stdout);
        else if (*p == '\r') fputs("\\r", stdout);
        else putchar(*p);
    }
}

#define CHECK(cond, ...)                                                                            \
    do {                                                                                            \
        int check_c_ = !!(cond);                                                                    \
        check_count++;                                                                              \
        if (check_c_) {                                                                             \
            printf("ok %d - ", check_count);                                                        \
        } else {                                                                                    \
            check_failed++;                                                                         \
            printf("not ok %d - ", check_count);                                                    \
        }                                                                                           \
        check_print(__VA_ARGS__);                                                                   \
        printf("\n");                                                                               \
        if (!check_c_) printf("#   at %s:%d: %s\n", __FILE__, __LINE__, #cond);                     \
    } while (0)

#define CHECK_STR(got, want, ...)                                                                   \
    do {                                                                                            \
        const char *check_g_ = (got), *check_w_ = (want);                                           \
        int check_ok_ = check_g_ && check_w_ && strcmp(check_g_, check_w_) == 0;                    \
        CHECK(check_ok_, __VA_ARGS__);                                                              \
        if (!check_ok_) {                                                                           \
            check_print("#   got:  \"%s\"", check_g_ ? check_g_ : "(null)");                           \
            printf("\n");                                                                           \
            check_print("#   want: \"%s\"", check_w_ ? check_w_ : "(null)");                           \
            printf("\n");                                                                           \
        }                                                                                           \
    } while (0)

static inline int check_done(void)
{
    printf("1..%d\n", check_count);
    return check_failed ? 1 : 0;
}

#endif
