/* tests/fuzz/fuzz_smtp.c — the SMTP session state machine under arbitrary client bytes.
 *
 * The first byte of the input picks a separator; the rest is split into chunks at every
 * occurrence of it (the separator itself is dropped), so the fuzzer controls both the bytes and
 * how they arrive.  Output is drained after every feed, commits complete at once with OK (or, when
 * the second byte is odd, right after the feed returns, as the server would do from the loop).
 * Built with libFuzzer when -DINLET_LIBFUZZER, otherwise as a program that runs every file named
 * on its command line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp.h"
#include "util/domains.h"
#include "util/log.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_ctx {
    struct smtp_session *s;
    struct smtp_txn *pending;
    bool commit_inline;
    long reserved;
};

static void fuzz_commit(void *ctx, struct smtp_txn *txn)
{
    struct fuzz_ctx *f = ctx;
    if (f->pending) abort(); /* two commits in flight: a state machine bug */
    f->pending = txn;
    if (f->commit_inline) {
        f->pending = NULL;
        f->reserved -= (long)txn->reserved;
        smtp_txn_free(txn);
        smtp_session_commit_done(f->s, SMTP_COMMIT_OK);
    }
}

static const char *fuzz_check_rcpt(void *ctx, const char *addr)
{
    return strncmp(addr, "nobody@", 7) == 0 ? "550 5.1.1 No such recipient" : NULL;
}

static bool fuzz_reserve(void *ctx, ssize_t delta)
{
    struct fuzz_ctx *f = ctx;
    if (delta > 0 && f->reserved + delta > 256 * 1024) return false;
    f->reserved += (long)delta;
    if (f->reserved < 0) abort(); /* gave back more than it took */
    return true;
}

static void finish_commit(struct fuzz_ctx *f)
{
    if (!f->pending) return;
    f->reserved -= (long)f->pending->reserved;
    smtp_txn_free(f->pending);
    f->pending = NULL;
    smtp_session_commit_done(f->s, SMTP_COMMIT_OK);
}

static void drain(struct smtp_session *s)
{
    size_t len;
    char *out = smtp_session_take_output(s, &len);
    if (out && (len < 2 || out[len - 2] != '\r' || out[len - 1] != '\n')) abort();
    free(out);
}

/* Feeds one chunk the way the server does: again and again while the session makes progress. */
static void feed_chunk(struct fuzz_ctx *f, const char *p, size_t len)
{
    while (len > 0 && !smtp_session_closing(f->s)) {
        size_t n = smtp_session_feed(f->s, p, len);
        if (n > len) abort();
        drain(f->s);
        finish_commit(f);
        p += n;
        len -= n;
        if (n == 0 && !smtp_session_committing(f->s) && !smtp_session_closing(f->s)) {
            drain(f->s);
            if (smtp_session_feed(f->s, p, len) == 0) abort(); /* stuck with nothing to wait for */
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct domain_set *domains;
    if (!domains) {
        log_set_level(LOG_ERROR);
        domains = domain_set_new();
        char *err = NULL;
        if (domain_set_add(domains, "example.com", &err) != 0 ||
            domain_set_add(domains, "*.sub.example.org", &err) != 0)
            abort();
    }
    if (size < 2) return 0;
    const uint8_t sep = data[0];
    struct fuzz_ctx f = {.commit_inline = (data[1] & 1) == 0};
    const struct smtp_session_config cfg = {
        .hostname = "mx.example.net",
        .domains = domains,
        .max_message_size = 4096,
        .max_recipients = 5,
        .max_hops = 3,
    };
    const struct smtp_session_ops ops = {
        .commit = fuzz_commit, .check_rcpt = fuzz_check_rcpt, .reserve = fuzz_reserve};
    f.s = smtp_session_new(&cfg, (data[1] & 2) ? "2001:db8::1" : "192.0.2.7", &ops, &f);
    smtp_session_start(f.s);
    drain(f.s);

    const char *p = (const char *)data + 2, *end = (const char *)data + size;
    while (p < end) {
        const char *cut = memchr(p, sep, (size_t)(end - p));
        size_t n = cut ? (size_t)(cut - p) : (size_t)(end - p);
        feed_chunk(&f, p, n);
        p += n + (cut ? 1 : 0);
    }
    if (data[1] & 4) smtp_session_shutdown(f.s);
    if (data[1] & 8) smtp_session_timeout(f.s);
    drain(f.s);
    finish_commit(&f);
    smtp_session_free(f.s);
    if (f.reserved != 0) abort(); /* every reserved byte must come back */
    return 0;
}
