/* bench/mailauth_bench.c — what the sender-authentication checks cost on the SMTP loop per message
 * with a warm DNS cache (issue 15's cost target), in process: thread CPU time, no SMTP clients.
 *
 *   mailauth-bench [-n N] [-r ROUNDS] DNS_PORT MESSAGE
 *
 * Run through bench/mailauth, which starts NSD with the records of bench/senderauth (SPF ip4 pass,
 * a 2048-bit rsa-sha256 DKIM key, DMARC p=reject) and signs MESSAGE with Debian's python3-dkim.
 * The program starts mailauth (mailauth/mailauth.h, its public face only) against that server,
 * warms its DNS cache with one worker job (mailauth_submit), checks that the cached pass gives
 * spf=pass dkim=pass dmarc=pass, then, ROUNDS times, N times each on this thread:
 *   check_cached  mailauth_check_cached + mailauth_result_free: what the loop runs after DATA;
 *   rewrite       mailauth_rewrite + free of one result: the header block prepended to the message;
 *   prefetch      mailauth_prefetch of the same sender: what MAIL FROM costs once cached.
 * Prints microseconds of this thread's CPU per call for each round, their median and minimum.
 * No project library but mailauth and what it uses (util). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailauth/mailauth.h"

#define ROUNDS_MAX 64

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) goto out;
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) goto out;
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    *len = (size_t)n;
out:
    fclose(f);
    return buf;
}

/* The warm-up job's end, handed from a mailauth worker. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} warm = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};

static void warm_done(void *arg, struct mailauth_result *r)
{
    (void)arg;
    mailauth_result_free(r);
    pthread_mutex_lock(&warm.lock);
    warm.done = true;
    pthread_cond_signal(&warm.cond);
    pthread_mutex_unlock(&warm.lock);
}

/* Fills the DNS cache with one worker job; then the cached pass must give a full result. */
static struct mailauth_result *warm_up(struct mailauth *a, const struct mailauth_request *req)
{
    for (int tries = 0; tries < 5; tries++) {
        struct mailauth_result *r = mailauth_check_cached(a, req);
        if (r) return r;
        warm.done = false;
        if (mailauth_submit(a, req, warm_done, NULL) != 0) return NULL;
        pthread_mutex_lock(&warm.lock);
        while (!warm.done) pthread_cond_wait(&warm.cond, &warm.lock); /* the job ends at its budget */
        pthread_mutex_unlock(&warm.lock);
    }
    return NULL;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static void report(const char *what, double *us, int rounds)
{
    printf("%-13s", what);
    for (int i = 0; i < rounds; i++) printf(" %7.2f", us[i]);
    qsort(us, (size_t)rounds, sizeof *us, cmp_double);
    printf("   median %7.2f  min %7.2f us\n", us[rounds / 2], us[0]);
}

int main(int argc, char **argv)
{
    long n = 2000;
    int rounds = 5, rc = 1;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (strcmp(argv[i], "-n") == 0) n = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "-r") == 0) rounds = (int)strtol(argv[i + 1], NULL, 10);
        else break;
    }
    if (argc - i != 2 || n <= 0 || rounds <= 0 || rounds > ROUNDS_MAX) {
        fprintf(stderr, "usage: mailauth-bench [-n N] [-r ROUNDS<=%d] DNS_PORT MESSAGE\n", ROUNDS_MAX);
        return 2;
    }
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%s", argv[i]);
    size_t len = 0;
    uint8_t *msg = slurp(argv[i + 1], &len);
    if (!msg) {
        fprintf(stderr, "mailauth-bench: cannot read %s\n", argv[i + 1]);
        return 2;
    }
    const struct mailauth_config cfg = {.authserv_id = "mx.bench.example", .dns_server = server,
                                        .psl_file = "/usr/share/publicsuffix/public_suffix_list.dat",
                                        .budget_ms = 5000};
    char *err = NULL;
    struct mailauth *a = mailauth_start(&cfg, &err);
    struct mailauth_result *r = NULL;
    if (!a) {
        fprintf(stderr, "mailauth-bench: %s\n", err ? err : "cannot start");
        goto out;
    }
    const struct mailauth_request req = {.ip = "127.0.0.1", .helo = "bench.example", .sender = "a@bench.example",
                                         .data = msg, .len = len, .id = "bench-message-id"};
    r = warm_up(a, &req);
    if (!r) {
        fprintf(stderr, "mailauth-bench: the DNS cache does not warm up (is the server on port %s?)\n", argv[i]);
        goto out;
    }
    printf("message %zu bytes; verdicts: %s\n", len, mailauth_result_summary(r));
    if (mailauth_result_spf(r) != MAILAUTH_PASS || mailauth_result_dkim(r) != MAILAUTH_PASS ||
        mailauth_result_dmarc(r) != MAILAUTH_PASS) {
        fprintf(stderr, "mailauth-bench: expected spf, dkim and dmarc to pass\n");
        goto out;
    }
    double check[ROUNDS_MAX], rewrite[ROUNDS_MAX], prefetch[ROUNDS_MAX];
    for (int k = 0; k < rounds; k++) {
        double t0 = cpu_us();
        for (long j = 0; j < n; j++) {
            struct mailauth_result *x = mailauth_check_cached(a, &req);
            if (!x) {
                fprintf(stderr, "mailauth-bench: a cached pass missed the cache\n");
                goto out;
            }
            mailauth_result_free(x);
        }
        double t1 = cpu_us();
        for (long j = 0; j < n; j++) {
            size_t out_len;
            free(mailauth_rewrite(r, msg, len, &out_len));
        }
        double t2 = cpu_us();
        for (long j = 0; j < n; j++) mailauth_prefetch(a, req.ip, req.helo, req.sender);
        double t3 = cpu_us();
        check[k] = (t1 - t0) / (double)n;
        rewrite[k] = (t2 - t1) / (double)n;
        prefetch[k] = (t3 - t2) / (double)n;
    }
    printf("us per call, %d rounds of %ld (this thread's CPU time):\n", rounds, n);
    report("check_cached", check, rounds);
    report("rewrite", rewrite, rounds);
    report("prefetch", prefetch, rounds);
    rc = 0;
out:
    mailauth_result_free(r);
    mailauth_stop(a);
    free(err);
    free(msg);
    return rc;
}
