/* tests/fuzz/fuzz_filter.c — api/filter.c (Mailgun's event filter expressions) under arbitrary
 * bytes.
 *
 * Input: one byte choosing the field kind (keyword with the event names, exact, text, number),
 * then the expression.  A parse must either fail with a message or give a filter that evaluates
 * on a few fixed values without crashing; an expression longer than API_EVENTS_FILTER_MAX is
 * always refused, and the parse is deterministic (a second parse agrees).  Built with libFuzzer
 * when -DINLET_LIBFUZZER, otherwise as a program that runs every file named on its command line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "api/internal_filter.h"
#include "util/limits.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const events[] = {"accepted", "stored", "delivered", "failed", NULL};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    enum api_filter_kind kind = (enum api_filter_kind)(data[0] % 4);
    const char *expr = (const char *)data + 1;
    size_t len = size - 1;
    char *err = NULL, *err2 = NULL;
    struct api_filter *f = api_filter_parse(expr, len, kind, kind == API_FILTER_KEYWORD ? events : NULL, &err);
    struct api_filter *g = api_filter_parse(expr, len, kind, kind == API_FILTER_KEYWORD ? events : NULL, &err2);
    if ((f == NULL) != (err != NULL) || (f == NULL) != (g == NULL)) abort();
    if (len > API_EVENTS_FILTER_MAX && f) abort();
    if (f) {
        static const char *const values[] = {"accepted", "Alice <alice@example.com>", "<id@host>",
                                             "Invoice March", ""};
        for (size_t n = 0; n <= G_N_ELEMENTS(values); n++) {
            bool a = api_filter_match_text(f, values, n), b = api_filter_match_text(g, values, n);
            if (a != b) abort();
        }
        if (api_filter_match_number(f, true, 12345) != api_filter_match_number(g, true, 12345)) abort();
        api_filter_match_number(f, false, 0);
        const char *t = api_filter_single_term(f);
        if (t && strlen(t) > len) abort();
    } else if (!*err) {
        abort(); /* an error says what is wrong */
    }
    api_filter_free(f);
    api_filter_free(g);
    g_free(err);
    g_free(err2);
    return 0;
}
