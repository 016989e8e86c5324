/* tests/check.h — a minimal TAP producer for the C unit tests (meson test protocol 'tap').
 *
 *   CHECK(cond, "what", ...)      one TAP line; on failure also prints the location
 *   CHECK_STR(got, want, "what")  exact string comparison with both shown on failure
 *   return check_done();          prints the plan and returns the exit status */
#ifndef INLET_TESTS_CHECK_H
#define INLET_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_count, check_failed;

#define CHECK(cond, ...)                                                                            \
    do {                                                                                            \
        int check_c_ = !!(cond);                                                                    \
        check_count++;                                                                              \
        if (check_c_) {                                                                                 \
            printf("ok %d - ", check_count);                                                        \
        } else {                                                                                    \
            check_failed++;                                                                         \
            printf("not ok %d - ", check_count);                                                    \
        }                                                                                           \
        printf(__VA_ARGS__);                                                                        \
        printf("\n");                                                                               \
        if (!check_c_) printf("#   at %s:%d: %s\n", __FILE__, __LINE__, #cond);                     \
    } while (0)

#define CHECK_STR(got, want, ...)                                                                   \
    do {                                                                                            \
        const char *check_g_ = (got), *check_w_ = (want);                                           \
        int check_ok_ = check_g_ && check_w_ && strcmp(check_g_, check_w_) == 0;                    \
        CHECK(check_ok_, __VA_ARGS__);                                                              \
        if (!check_ok_) {                                                                           \
            printf("#   got:  \"%s\"\n#   want: \"%s\"\n", check_g_ ? check_g_ : "(null)",          \
                   check_w_ ? check_w_ : "(null)");                                                 \
        }                                                                                           \
    } while (0)

static inline int check_done(void)
{
    printf("1..%d\n", check_count);
    return check_failed ? 1 : 0;
}

#endif
