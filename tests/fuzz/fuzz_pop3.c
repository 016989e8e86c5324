/* tests/fuzz/fuzz_pop3.c — the POP3 session state machine (pop3/session.c) under arbitrary client
 * bytes.
 *
 * The first byte of the input picks a separator; the rest is split into chunks at every
 * occurrence of it, so the fuzzer controls both the bytes and how they arrive.  The second byte
 * chooses the session's settings (TLS available / active, plaintext allowed) and how requests are
 * answered: a login succeeds (with a maildrop of three messages), fails, or finds the mailbox in
 * use; a fetch returns a message with dot lines and bare LFs, or nothing; a close commits or not.
 * Checks, besides "no crash, no leak": feed never consumes more than it was given, nothing is
 * consumed while a request is pending, the output always ends at a CRLF, a login request carries
 * a user and a password, a fetch a message id of ours, a close at most the maildrop's UIDs.
 * Built with libFuzzer when -DINLET_LIBFUZZER, otherwise as a program that runs every file named
 * on its command line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3/pop3.h"
#include "util/log.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t msg[] = "Received: by fuzz\r\nSubject: x\r\n\r\n.dot\r\nbare\nlast";

static void answer(struct pop3_session *s, uint8_t mode)
{
    static const struct pop3_entry entries[3] = {
        {"uid-one", "000000010000000000000001", 10},
        {"uid-two", "000000010000000000000002", 20},
        {"uid-three", "000000010000000000000003", 30},
    };
    size_t n;

    switch (pop3_session_request(s)) {
    case POP3_REQ_LOGIN:
        if (!pop3_session_user(s) || !pop3_session_password(s)) abort();
        pop3_session_login_done(s, (enum pop3_login_result)((mode >> 3) % 4), entries, 3);
        break;
    case POP3_REQ_FETCH:
        if (strlen(pop3_session_fetch_id(s)) != 24) abort();
        if (mode & 32) pop3_session_fetch_done(s, NULL, 0);
        else pop3_session_fetch_done(s, msg, sizeof msg - 1);
        break;
    case POP3_REQ_CLOSE:
        pop3_session_deleted(s, &n);
        if (n > 3) abort();
        pop3_session_retrieved(s, &n);
        if (n > 3) abort();
        pop3_session_close_done(s, (enum pop3_close_result)((mode >> 6) % 3));
        break;
    case POP3_REQ_TLS:
        pop3_session_tls_started(s);
        break;
    case POP3_REQ_NONE:
        break;
    }
}

/* Every line of the output ends in CRLF. */
static void drain(struct pop3_session *s)
{
    size_t len = 0;
    const char *out = pop3_session_output(s, &len);

    if (len && (len < 2 || out[len - 2] != '\r' || out[len - 1] != '\n')) abort();
    pop3_session_consumed(s, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    const uint8_t sep = data[0], mode = data[1];
    const struct pop3_session_config cfg = {
        .tls_available = mode & 1, .tls_active = mode & 2, .plaintext_ok = mode & 4};
    struct pop3_session *s = pop3_session_new(&cfg);
    size_t i = 2;

    pop3_session_start(s);
    drain(s);
    while (i <= size && !pop3_session_closing(s)) {
        const uint8_t *end = memchr(data + i, sep, size - i);
        size_t len = end ? (size_t)(end - (data + i)) : size - i, off = 0;

        for (int rounds = 0; off < len && rounds < 64 && !pop3_session_closing(s); rounds++) {
            const bool waiting = pop3_session_request(s) != POP3_REQ_NONE;
            size_t used = pop3_session_feed(s, (const char *)data + i + off, len - off);

            if (used > len - off || (waiting && used)) abort();
            off += used;
            drain(s);
            answer(s, mode);
            drain(s);
        }
        i += len + 1;
    }
    pop3_session_timeout(s);
    drain(s);
    pop3_session_free(s);
    return 0;
}
