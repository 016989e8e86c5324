/* tests/engine/test_deliver.c — the pure parts of the deliverer (deliver/deliver.c): the token, the
 * signature (RFC 4231 test vectors, split at arbitrary points as timestamp + token), and the retry
 * delays with their jitter. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "deliver/deliver.h"

static void test_token(void)
{
    char a[51], b[51];
    deliver_token(a);
    deliver_token(b);
    CHECK(strlen(a) == 50, "token has 50 characters");
    CHECK(strspn(a, "abcdefghijklmnopqrstuvwxyz0123456789") == 50, "token is [a-z0-9] only: %s", a);
    CHECK(strcmp(a, b) != 0, "two tokens differ");
    /* Every character of the alphabet turns up over many tokens (no modulo hole). */
    bool seen[256] = {false};
    for (int i = 0; i < 200; i++) {
        deliver_token(a);
        for (const char *p = a; *p; p++) seen[(unsigned char)*p] = true;
    }
    size_t distinct = 0;
    for (size_t i = 0; i < 256; i++) distinct += seen[i];
    CHECK(distinct == 36, "all 36 characters appear over 10000 draws (%zu)", distinct);
}

static void test_signature(void)
{
    char sig[65];
    /* RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?". */
    deliver_signature("Jefe", "what do ya want ", "for nothing?", sig);
    CHECK_STR(sig, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 case 2");
    deliver_signature("Jefe", "", "what do ya want for nothing?", sig);
    CHECK_STR(sig, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "the split does not matter");
    deliver_signature("key", "1700000000", "abc", sig);
    char other[65];
    deliver_signature("key", "1700000001", "abc", other);
    CHECK(strcmp(sig, other) != 0, "another timestamp gives another signature");
    CHECK(strspn(sig, "0123456789abcdef") == 64, "lowercase hex, 64 characters");
}

static void test_retry_delay(void)
{
    const int64_t schedule[] = {600, 10, 1};
    CHECK(deliver_retry_delay_ms(schedule, 3, 0) == -1, "attempt 0 is not an attempt");
    CHECK(deliver_retry_delay_ms(schedule, 3, 4) == -1, "after 1 + 3 attempts the delivery fails");
    CHECK(deliver_retry_delay_ms(schedule, 0, 1) == -1, "an empty schedule means one attempt");
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < 2000; i++) {
        int64_t d = deliver_retry_delay_ms(schedule, 3, 1);
        lo = MIN(lo, d);
        hi = MAX(hi, d);
    }
    CHECK(lo >= 540000 && hi <= 660000, "600 s with ±10 %% jitter stays in [540, 660] s: [%lld, %lld] ms",
          (long long)lo, (long long)hi);
    CHECK(hi - lo > 60000, "the jitter spreads retries: [%lld, %lld]", (long long)lo, (long long)hi);
    int64_t d2 = deliver_retry_delay_ms(schedule, 3, 2);
    CHECK(d2 >= 9000 && d2 <= 11000, "second delay from the second entry: %lld ms", (long long)d2);
    int64_t d3 = deliver_retry_delay_ms(schedule, 3, 3);
    CHECK(d3 >= 900 && d3 <= 1100, "a 1 s delay: %lld ms", (long long)d3);
}

int main(void)
{
    test_token();
    test_signature();
    test_retry_delay();
    return check_done();
}
