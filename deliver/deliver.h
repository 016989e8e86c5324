/* deliver/deliver.h — the delivery engine (SPEC §5): every planned delivery reaches its target at
 * least once.  The outbound half; engine/ wires it.  Uses util/, message/ and storage/.
 *
 *   pipeline worker ──(payload built from the parsed message; handed over once the ────┐
 *                     outcome committed)                                             │
 *   due scan (start-up, retry times, resends, a full queue) ──(threadpool: load,   │
 *                                     parse, build)────────────────────────────────┤
 *                                                                                  ▼
 *   loop: ready queue ─▶ libcurl multi (HTTP POST, or SMTP to the relay) ─▶ outcome
 *         ─▶ store_record_attempt() (attempt row, new state, event; group commit)
 *
 * Durability: a delivery is a row in the database from the routing commit on.  The deliverer
 * only ever holds copies: whatever is in memory when the process dies is still 'pending' and due,
 * so the first scan after the next start delivers it again (at least once; the receiver sees the
 * same X-Inlet-Delivery).
 *
 * Claims (SPEC §8): a delivery is in hand only under this node's claim (store_deliveries_claim,
 * or the routing outcome written by this node).  When nodes share a PostgreSQL database the
 * claim is a lease, renewed while the delivery is in hand (every third of --lease-seconds); an
 * attempt whose lease could not be renewed is aborted before the lease runs out, so no two
 * nodes ever POST one X-Inlet-Delivery at once, and an attempt lasts at most --webhook-timeout
 * and at most as long as its lease is renewed.  With SQLite (one process per database) the
 * in-memory set of deliveries in hand is the claim: nothing is written for it.
 *
 * Threads: everything but deliver_prepare/commit/discard/kick runs on the loop thread.  All curl_multi_* calls are on
 * the loop thread. */
#ifndef INLET_DELIVER_DELIVER_H
#define INLET_DELIVER_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct deliverer;
struct message;
struct store;
struct store_message;
struct store_outcome;

/* STARTTLS towards the relay (--relay-tls).  OPPORTUNISTIC uses it when offered and, when the
 * relay has credentials (a password, or a user in its URL), requires it: AUTH never goes out in
 * clear text unless the operator said CLEARTEXT_AUTH (warned at start). */
enum deliver_relay_tls {
    DELIVER_RELAY_TLS_OPPORTUNISTIC,
    DELIVER_RELAY_TLS_REQUIRE,
    DELIVER_RELAY_TLS_CLEARTEXT_AUTH,
};

struct deliver_config {
    struct store *store;
    const char *signing_key;
    const char *default_format;   /* "json" or "mailgun" (--webhook-format) */
    const int64_t *retry_schedule;/* seconds; retry_count entries */
    size_t retry_count;
    int64_t timeout, connect_timeout; /* seconds */
    size_t inline_attachments_max;
    size_t held_bytes_max;        /* payload bytes in memory at most (0: DELIVER_HELD_BYTES_MAX) */
    const char *public_url;       /* base of storage URLs */
    const char *relay;            /* "" or NULL: forward("address") fails permanently */
    const char *relay_password;   /* NULL when none */
    enum deliver_relay_tls relay_tls;
    const char *bounce_address;   /* "" or NULL: the original sender */
    const char *hostname;         /* EHLO name towards the relay */
};

/* Starts the curl multi handle on `loop` and the first due scan (deliveries left by the last
 * run).  NULL when curl cannot be initialised. */
struct deliverer *deliver_start(uv_loop_t *loop, const struct deliver_config *cfg);

/* Any thread (a pipeline worker), before the outcome `o` is committed: builds the payloads of its
 * deliveries now, while `m` (the parsed message) is at hand.  NULL when there are none, or when
 * the deliverer holds too much already (the due scan takes them once committed); a batch may
 * hold only the first ones when the byte budget (held_bytes_max, taken per payload before it is
 * built) has no room for the others (a scan takes them likewise).  Takes *sm (sets
 * it to NULL) when it returns a batch: the bytes live as long as a payload needs them, and at
 * least until deliver_commit() or deliver_discard() returned. */
struct deliver_batch;
struct deliver_batch *deliver_prepare(struct deliverer *d, const struct store_outcome *o, const struct message *m,
                                      struct store_message **sm);
/* Any thread: the outcome committed; the batch goes to the loop (NULL is fine). */
void deliver_commit(struct deliverer *d, struct deliver_batch *b);
/* Any thread: the outcome was not written; the payloads are dropped (NULL is fine). */
void deliver_discard(struct deliverer *d, struct deliver_batch *b);

/* Any thread: deliveries became due now (a resend, a dead-letter retry): scan soon. */
void deliver_kick(struct deliverer *d);

/* Counters for GET /metrics (any thread; relaxed reads). */
struct deliver_stats {
    uint64_t attempts_delivered, attempts_retry, attempts_failed;
    uint64_t in_flight, held, held_bytes;
    uint64_t record_failures;     /* attempt results that could not be written */
};
void deliver_get_stats(struct deliverer *d, struct deliver_stats *out);

/* Loop thread: stop starting transfers; those in flight get `grace_seconds` to finish (their
 * results are written), then are abandoned (still 'pending': due again at the next start).
 * `stopped(arg)` runs on the loop once every handle is closed and every result written. */
void deliver_stop(struct deliverer *d, unsigned grace_seconds, void (*stopped)(void *), void *arg);
void deliver_free(struct deliverer *d);

/* Pure helpers (exposed for tests). */
/* 50 random characters [a-z0-9] and the terminating NUL. */
void deliver_token(char out[51]);
/* lowercase hex HMAC-SHA256(key, timestamp + token): 64 characters and NUL. */
void deliver_signature(const char *key, const char *timestamp, const char *token, char out[65]);
/* Milliseconds until the next attempt after attempt number `attempt` (1-based) failed: -1 when
 * the schedule is exhausted (the delivery fails), else the delay with ±10 % jitter. */
int64_t deliver_retry_delay_ms(const int64_t *schedule, size_t count, int64_t attempt);

#endif
