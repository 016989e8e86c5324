/* tests/mailauth/dkim_oracle.c — differential test of inlet's DKIM verifier (mailauth/dkim.c)
 * against OpenDKIM's libopendkim, which did the verification before and stays as the oracle.
 *
 *   dkim-oracle KEYS MESSAGE...
 *   dkim-oracle --time N KEYS MESSAGE   (CPU microseconds per verification, each verifier N times)
 *
 * KEYS: lines "NAME<TAB>TXT" (the key record of NAME, "sel._domainkey.domain"; TXT "-temp" for a
 * lookup that fails).  A name not listed has no key.  Each MESSAGE file is verified by both, twice
 * by ours (the second time its key comes from the cache of decoded keys); the verdicts of every
 * signature must agree.  Prints one line per disagreement and a summary of the verdicts seen;
 * exit 1 on any disagreement.  test_dkim_oracle.py makes the keys and the messages. */
#include <opendkim/dkim.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailauth/internal.h"

#define KEYS_MAX 512 /* test_dkim_oracle.py's table: its own selectors and 300 more */

struct keys {
    char *name[KEYS_MAX], *txt[KEYS_MAX];
    size_t n;
};

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *b = realloc(buf, 2 * cap + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static const char *key_of(const struct keys *k, const char *name)
{
    for (size_t i = 0; i < k->n; i++)
        if (strcasecmp(k->name[i], name) == 0) return k->txt[i];
    return NULL;
}

/* ---- ours ---- */
static enum mailauth_dkim_key_status our_lookup(void *ctx, const char *name, char *txt, size_t txtsz)
{
    const char *t = key_of(ctx, name);
    if (!t) return MAILAUTH_DKIM_KEY_NONE;
    if (strcmp(t, "-temp") == 0) return MAILAUTH_DKIM_KEY_TEMP;
    if (strlen(t) >= txtsz) return MAILAUTH_DKIM_KEY_CORRUPT;
    snprintf(txt, txtsz, "%s", t);
    return MAILAUTH_DKIM_KEY_FOUND;
}

/* ---- libopendkim, set up as mailauth/dkim.c had it ---- */
static DKIM_CBSTAT oracle_lookup(DKIM *dkim, DKIM_SIGINFO *sig, u_char *buf, size_t buflen)
{
    const struct keys *k = dkim_get_user_context(dkim);
    char name[512];
    snprintf(name, sizeof name, "%s._domainkey.%s", (const char *)dkim_sig_getselector(sig),
             (const char *)dkim_sig_getdomain(sig));
    const char *t = key_of(k, name);
    if (!t) return DKIM_CBSTAT_NOTFOUND;
    if (strcmp(t, "-temp") == 0 || strlen(t) >= buflen) return DKIM_CBSTAT_ERROR;
    snprintf((char *)buf, buflen, "%s", t);
    return DKIM_CBSTAT_CONTINUE;
}

static enum mailauth_verdict oracle_verdict(DKIM_SIGINFO *sig)
{
    int err = dkim_sig_geterror(sig);
    if ((dkim_sig_getflags(sig) & DKIM_SIGFLAG_PASSED) && dkim_sig_getbh(sig) == DKIM_SIGBH_MATCH) return MAILAUTH_PASS;
    switch (err) {
    case DKIM_SIGERROR_KEYFAIL: return MAILAUTH_TEMPERROR;
    case DKIM_SIGERROR_OK:
        return (dkim_sig_getflags(sig) & DKIM_SIGFLAG_PROCESSED) || dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH
                   ? MAILAUTH_FAIL : MAILAUTH_NEUTRAL;
    case DKIM_SIGERROR_BADSIG:
    case DKIM_SIGERROR_EXPIRED:
    case DKIM_SIGERROR_FUTURE:
    case DKIM_SIGERROR_TIMESTAMPS:
    case DKIM_SIGERROR_TOOLARGE_L:
    case DKIM_SIGERROR_SUBDOMAIN:
    case DKIM_SIGERROR_KEYHASHMISMATCH:
        return MAILAUTH_FAIL;
    default: return MAILAUTH_PERMERROR;
    }
}

static size_t oracle(DKIM_LIB *lib, struct keys *k, const uint8_t *data, size_t len, enum mailauth_verdict *out,
                     const char **reasons, size_t max)
{
    DKIM_STAT st;
    DKIM *dkim = dkim_verify(lib, (const unsigned char *)"oracle", NULL, &st);
    size_t n = 0;
    if (!dkim) return 0;
    dkim_set_user_context(dkim, k);
    st = dkim_chunk(dkim, (u_char *)(uintptr_t)data, len);
    if (st == DKIM_STAT_OK) st = dkim_chunk(dkim, NULL, 0);
    if (st == DKIM_STAT_OK || st == DKIM_STAT_NOSIG) dkim_eom(dkim, NULL);
    DKIM_SIGINFO **sigs = NULL;
    int nsigs = 0;
    if (dkim_getsiglist(dkim, &sigs, &nsigs) == DKIM_STAT_OK)
        for (int i = 0; i < nsigs && n < max; i++) {
            reasons[n] = dkim_sig_geterrorstr(dkim_sig_geterror(sigs[i]));
            out[n++] = oracle_verdict(sigs[i]);
        }
    dkim_free(dkim);
    return n;
}

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* What one verification costs each of them, warm (ours: its key from the cache after the first). */
static int time_both(DKIM_LIB *lib, struct mailauth_dkim *ours, struct keys *keys, const char *path, long n)
{
    size_t len;
    char *msg = slurp(path, &len);
    if (!msg || n <= 0) return 2;
    struct mailauth_dkim_sig sigs[MAILAUTH_DKIM_SIGS_MAX];
    enum mailauth_verdict theirs[MAILAUTH_DKIM_SIGS_MAX];
    const char *why[MAILAUTH_DKIM_SIGS_MAX];
    size_t n1 = 0, n2 = 0;
    double t0 = cpu_us();
    for (long i = 0; i < n; i++)
        n1 = mailauth_dkim_verify(ours, our_lookup, keys, (const uint8_t *)msg, len, (int64_t)time(NULL), INT64_MAX, sigs,
                             MAILAUTH_DKIM_SIGS_MAX);
    double t1 = cpu_us();
    for (long i = 0; i < n; i++) n2 = oracle(lib, keys, (const uint8_t *)msg, len, theirs, why, MAILAUTH_DKIM_SIGS_MAX);
    double t2 = cpu_us();
    printf("bytes=%zu runs=%ld ours_us=%.1f libopendkim_us=%.1f verdicts=%s/%s\n", len, n, (t1 - t0) / (double)n,
           (t2 - t1) / (double)n, n1 ? mailauth_verdict_name(sigs[0].verdict) : "-",
           n2 ? mailauth_verdict_name(theirs[0]) : "-");
    free(msg);
    return 0;
}

int main(int argc, char **argv)
{
    long timing = 0;
    if (argc > 2 && strcmp(argv[1], "--time") == 0) {
        timing = strtol(argv[2], NULL, 10);
        argv += 2;
        argc -= 2;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: dkim-oracle KEYS MESSAGE...\n");
        return 2;
    }
    struct keys keys = {0};
    size_t klen;
    char *ktext = slurp(argv[1], &klen);
    if (!ktext) return 2;
    for (char *line = strtok(ktext, "\n"); line && keys.n < KEYS_MAX; line = strtok(NULL, "\n")) {
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = '\0';
        keys.name[keys.n] = line;
        keys.txt[keys.n++] = tab + 1;
    }
    char *err = NULL;
    struct mailauth_dkim *ours = mailauth_dkim_new(&err);
    DKIM_LIB *lib = dkim_init(NULL, NULL);
    if (!ours || !lib) return 2;
    unsigned int flags = DKIM_LIBFLAGS_BADSIGHANDLES | DKIM_LIBFLAGS_FIXCRLF;
    dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
    dkim_set_key_lookup(lib, oracle_lookup);
    if (timing) {
        int rc = time_both(lib, ours, &keys, argv[2], timing);
        mailauth_dkim_free(ours);
        dkim_close(lib);
        free(ktext);
        return rc;
    }

    size_t seen[MAILAUTH_PERMERROR + 1] = {0}, mismatches = 0, sigs = 0;
    for (int a = 2; a < argc; a++) {
        size_t len;
        char *msg = slurp(argv[a], &len);
        if (!msg) {
            fprintf(stderr, "cannot read %s\n", argv[a]);
            return 2;
        }
        struct mailauth_dkim_sig mine[MAILAUTH_DKIM_SIGS_MAX], again[MAILAUTH_DKIM_SIGS_MAX];
        enum mailauth_verdict theirs[MAILAUTH_DKIM_SIGS_MAX];
        const char *why[MAILAUTH_DKIM_SIGS_MAX];
        int64_t now = (int64_t)time(NULL), forever = INT64_MAX;
        size_t n1 = mailauth_dkim_verify(ours, our_lookup, &keys, (const uint8_t *)msg, len, now, forever, mine,
                                         MAILAUTH_DKIM_SIGS_MAX);
        size_t n2 = mailauth_dkim_verify(ours, our_lookup, &keys, (const uint8_t *)msg, len, now, forever, again,
                                         MAILAUTH_DKIM_SIGS_MAX);
        size_t n3 = oracle(lib, &keys, (const uint8_t *)msg, len, theirs, why, MAILAUTH_DKIM_SIGS_MAX);
        bool same = n1 == n2 && n1 == n3;
        for (size_t i = 0; same && i < n1; i++)
            same = mine[i].verdict == again[i].verdict && mine[i].verdict == theirs[i];
        if (!same) {
            mismatches++;
            printf("MISMATCH %s:", argv[a]);
            for (size_t i = 0; i < n1; i++)
                printf(" ours=%s(%s)", mailauth_verdict_name(mine[i].verdict), mine[i].reason);
            for (size_t i = 0; i < n3; i++) printf(" libopendkim=%s(%s)", mailauth_verdict_name(theirs[i]), why[i]);
            printf("\n");
        }
        for (size_t i = 0; i < n1; i++) seen[mine[i].verdict]++;
        sigs += n1;
        free(msg);
    }
    printf("messages=%d signatures=%zu mismatches=%zu cached_keys=%zu cached_keys_max=%d", argc - 2, sigs, mismatches,
           mailauth_dkim_cached_keys(ours), MAILAUTH_DKIM_KEYS_MAX);
    for (int v = 0; v <= MAILAUTH_PERMERROR; v++) printf(" %s=%zu", mailauth_verdict_name((enum mailauth_verdict)v), seen[v]);
    printf("\n");
    mailauth_dkim_free(ours);
    dkim_close(lib);
    free(ktext);
    return mismatches ? 1 : 0;
}
