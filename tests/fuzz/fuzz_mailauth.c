/* tests/fuzz/fuzz_mailauth.c — the header reading that mailauth/ does itself (mailauth/header.c):
 * the end of the header block, its fields, the From: domain DMARC judges, and the authserv-id of
 * an Authentication-Results value (the field inlet removes when it claims inlet's id).  DKIM's
 * header parsing is libopendkim's.
 *
 * Checks besides "no crash, no leak": the fields tile [0, end of block) without gaps or overlaps;
 * a From: domain is non-empty, lower case, without '@', ' ' or '<'; an authserv-id has no ';',
 * blank or '('. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzz_main.h"
#include "mailauth/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t hend = mailauth_header_end(data, size);
    if (hend > size) abort();
    size_t pos = 0, start, end, expect = 0, fields = 0;
    while (mailauth_header_next(data, hend, &pos, &start, &end)) {
        if (start != expect || end <= start || end > hend) abort();
        expect = end;
        if (++fields > size + 1) abort();
        size_t v = mailauth_header_is(data, start, end, "Authentication-Results");
        if (v) {
            if (v <= start || v > end) abort();
            char id[SPF_DOMAIN_MAX + 1];
            if (mailauth_authres_id((const char *)data + v, end - v, id, sizeof id)) {
                if (!id[0] || strpbrk(id, "; \t(\r\n")) abort();
            }
        }
    }
    if (hend > 0 && expect != hend) abort();

    char dom[SPF_DOMAIN_MAX + 1];
    int r = mailauth_from_domain(data, size, dom, sizeof dom);
    if (r < -1 || r > 1) abort();
    if (r == 1) {
        if (!dom[0] || strpbrk(dom, "@ <>\t")) abort();
        for (const char *c = dom; *c; c++)
            if (isupper((unsigned char)*c)) abort();
    }
    return 0;
}
