/* util/limits.h — every bound on what the network can make inlet hold, in one place.
 *
 * Settings (util/config.h) give the operator-tunable ones their defaults and their min/max; the
 * rest are fixed here.  Any buffer fed by the network gets its maximum from this header when it is
 * created. */
#ifndef INLET_UTIL_LIMITS_H
#define INLET_UTIL_LIMITS_H

/* SMTP command line, including its CRLF (RFC 5321 asks for 512; extensions make lines longer). */
#define SMTP_LINE_MAX 2048
/* RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets (we allow a few more for <> and
 * source routes, which are stripped). */
#define SMTP_LOCAL_PART_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 512
#define SMTP_HELO_MAX 255
/* Unknown or malformed commands tolerated in one session before 421. */
#define SMTP_MAX_BAD_COMMANDS 20
/* Replies buffered for a client that does not read them (pipelining): past this the session stops
 * consuming input until the output is written. */
#define SMTP_OUTPUT_MAX (64 * 1024)
/* One socket read; the loop shares one buffer of this size for all connections. */
#define SMTP_READ_CHUNK (64 * 1024)
/* Bytes reserved up front for the Received: header inlet prepends. */
#define SMTP_RECEIVED_MAX 512

/* Settings bounds (min, max) — checked by util/config.c. */
#define LIMIT_MESSAGE_SIZE_MIN 1024LL
/* SQLite keeps a value of at most 1,000,000,000 bytes: stay well below it. */
#define LIMIT_MESSAGE_SIZE_MAX (512LL * 1024 * 1024)
#define LIMIT_RECIPIENTS_MAX 10000
#define LIMIT_CONNECTIONS_MAX 100000
#define LIMIT_HOPS_MAX 500
#define LIMIT_TIMEOUT_MAX 3600

/* Message bytes held in memory by all SMTP sessions together (DATA in progress and messages
 * waiting for their commit).  Above it a new DATA gets 452 4.3.1 instead of exhausting memory:
 * GLib aborts on allocation failure, so the budget is what keeps us from ever getting there. */
#define LIMIT_INFLIGHT_BYTES (1024LL * 1024 * 1024)

/* Group commit: one batch holds at most this many messages or bytes. */
#define STORE_BATCH_MAX_MESSAGES 1024
#define STORE_BATCH_MAX_BYTES (64LL * 1024 * 1024)

/* Listeners per protocol. */
#define LIMIT_LISTENERS_MAX 16
/* Hosted domains. */
#define LIMIT_DOMAINS_MAX 10000

/* A log line, after which it is cut; client bytes in a log line are escaped and cut to this. */
#define LOG_LINE_MAX 2048
#define LOG_CLIENT_BYTES_MAX 100

/* HTTP API. */
#define API_CONNECTIONS_MAX 256
#define API_CONNECTIONS_PER_IP_MAX 32
#define API_TIMEOUT_SECONDS 30
#define API_THREADS 2

#endif
