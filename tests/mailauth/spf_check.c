/* tests/mailauth/spf_check.c — inlet's SPF checker (mailauth/spf.c over mailauth/dns.c) on the
 * command line, for the RFC 7208 test suite (tests/mailauth/rfc7208_suite.py).
 *
 *   spf_check --dns-server IP:PORT [--budget-ms N] [--helo]
 *
 * Reads one check per line on stdin, "IP<TAB>HELO<TAB>MAIL-FROM" (MAIL-FROM may be empty: the null
 * sender), and answers each with one line "RESULT<TAB>EXPLANATION<TAB>REASON" on stdout (the
 * explanation is the domain's exp= text on fail, else empty).  The identity checked is the one
 * inlet checks at receipt: mailauth_spf_mailfrom() (postmaster@HELO for the null sender), or with
 * --helo mailauth_spf_helo().  Each line gets a resolver of its own (an empty cache, no memory of
 * a server that did not answer): the checks are independent, as the suite's cases are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailauth/internal.h"

static void clean(char *s)
{
    for (; *s; s++)
        if (*s == '\t' || *s == '\n' || *s == '\r') *s = ' ';
}

int main(int argc, char **argv)
{
    const char *server = NULL;
    long budget = 2000;
    bool helo_identity = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dns-server") == 0 && i + 1 < argc) server = argv[++i];
        else if (strcmp(argv[i], "--budget-ms") == 0 && i + 1 < argc) budget = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--helo") == 0) helo_identity = true;
        else {
            fprintf(stderr, "usage: spf_check --dns-server IP:PORT [--budget-ms N] [--helo]\n");
            return 2;
        }
    }
    if (!server || budget <= 0 || budget > 60000) {
        fprintf(stderr, "spf_check: --dns-server is required, --budget-ms 1..60000\n");
        return 2;
    }
    char line[4096];
    int rc = 0;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *helo = strchr(line, '\t');
        char *from = helo ? strchr(helo + 1, '\t') : NULL;
        if (!from) {
            fprintf(stderr, "spf_check: want IP<TAB>HELO<TAB>MAIL-FROM, got \"%s\"\n", line);
            rc = 2;
            break;
        }
        *helo++ = '\0';
        *from++ = '\0';
        char *err = NULL;
        struct mailauth_dns *dns = mailauth_dns_new(server, &err);
        if (!dns) {
            fprintf(stderr, "spf_check: %s\n", err ? err : "out of memory");
            free(err);
            rc = 1;
            break;
        }
        struct mailauth_spf_input in = {.ip = line, .helo = helo, .sender = from, .receiver = "mx.inlet.example"};
        char reason[128], exp[SPF_EXP_MAX];
        int64_t deadline = mailauth_now_ms() + budget;
        enum mailauth_verdict v = helo_identity
            ? mailauth_spf_helo(dns, &in, deadline, reason, sizeof reason, exp, sizeof exp)
            : mailauth_spf_mailfrom(dns, &in, deadline, reason, sizeof reason, exp, sizeof exp);
        clean(reason);
        clean(exp);
        mailauth_dns_free(dns);
        printf("%s\t%s\t%s\n", mailauth_verdict_name(v), exp, reason);
        fflush(stdout);
    }
    return rc;
}
