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
/* --retry-schedule: at most this many retries, each at most a week. */
#define LIMIT_RETRIES_MAX 50
#define LIMIT_RETRY_DELAY_MAX (7 * 24 * 3600)

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
/* A request body (SPEC §7): 413 above it, checked on Content-Length before any byte is read and
 * again while the body streams in. */
#define API_BODY_MAX (50LL * 1024 * 1024)
/* Request body bytes held in memory by every API request together; above it a request is
 * answered 503 before its body is read (Content-Length known) or closed (chunked). */
#define API_BODIES_INFLIGHT_MAX (256LL * 1024 * 1024)
/* Bytes of a request's URI (path and query) we look at; MHD's memory pool bounds it anyway. */
#define API_URI_MAX 8192
/* Path parameters (`:id`) in one endpoint pattern. */
#define API_PARAMS_MAX 4
/* The Authorization header we decode (Basic, base64 of "api:KEY"). */
#define API_AUTH_HEADER_MAX 1024

/* Request bodies and query strings (api/form.c): fields in one form (query or body), bytes of a
 * field name, multipart parts, the header block of one part, and a multipart boundary. */
#define FORM_FIELDS_MAX 1000
#define FORM_NAME_MAX 256
#define FORM_PARTS_MAX 1000
#define FORM_PART_HEADERS_MAX 8192
#define FORM_BOUNDARY_MAX 200
/* The filename and content type of a file part. */
#define FORM_FILENAME_MAX 1024

/* API and signing keys given by a setting: visible ASCII, this many bytes at most. */
#define KEY_MAX 512
/* Generated keys: random bytes (64 lowercase hex characters). */
#define KEY_RANDOM_BYTES 32

_Static_assert(API_BODY_MAX < LIMIT_INFLIGHT_BYTES, "a request body fits the memory budget");

/* Routes (SPEC §4).  The expression and each action are at most 4 KiB (Mailgun's limit). */
#define ROUTE_EXPRESSION_MAX 4096
#define ROUTE_ACTION_MAX 4096
/* A route's description (Mailgun: "arbitrary string"; inlet bounds it like the others). */
#define ROUTE_DESCRIPTION_MAX 4096
/* --route-quota: routes in the table at most (0 refuses every new route, as Mailgun's free plan). */
#define ROUTE_QUOTA_MAX 1000000
/* The API's dry run (POST /v3/routes/test): recipients of one request. */
#define ROUTE_TEST_RECIPIENTS_MAX 1000
/* Filters joined by "and" in one expression. */
#define ROUTE_FILTERS_MAX 32
/* Actions of one route, destinations of one forward(). */
#define ROUTE_ACTIONS_MAX 16
#define ROUTE_DESTINATIONS_MAX 64
/* Capture groups of one route, counted across all its filters (templates reach \99 at most). */
#define ROUTE_CAPTURES_MAX 100
/* PCRE2 match context: backtracking steps and depth per match attempt, heap for the
 * interpreter (KiB); the JIT ignores the depth limit, so its stack is bounded instead
 * (start and maximum size, bytes, one stack per matcher). */
#define ROUTE_MATCH_LIMIT 1000000
#define ROUTE_DEPTH_LIMIT 10000
#define ROUTE_HEAP_LIMIT_KIB (20 * 1024)
#define ROUTE_JIT_STACK_START (32 * 1024)
#define ROUTE_JIT_STACK_MAX (512 * 1024)
/* A resolved destination or notify URL after capture substitution. */
#define ROUTE_TARGET_MAX 8192

/* MIME parsing (message/, SPEC §3).  Over any of these the message is still parsed up to the limit
 * and parse-warnings says what was cut. */
/* Nesting of multiparts; GMime has its own guard (1024 levels) below which it recurses. */
#define LIMIT_MIME_DEPTH 32
/* MIME parts (multiparts and leaves) of one message.  GMime holds ~1.3 KiB per part, so a
 * pre-scan cuts the input at the delimiter line that would open part LIMIT_MIME_PARTS + 1. */
#define LIMIT_MIME_PARTS 1000
/* Header fields and bytes of the top-level header block, and again of all part header blocks
 * together.  256 KiB is far above real mail (the corpus's largest header block of real mail is
 * under 11 KiB) and, with the per-field cap below, bounds GMime's quadratic header paths to about
 * a second of parse time for the worst layout (8 fields of 32 KiB). */
#define LIMIT_HEADER_COUNT 10000
#define LIMIT_HEADER_BYTES (256 * 1024)
/* Bytes of one header field, from its name to the end of its last line (folds included, the final
 * line ending not): the excess is cut (at white space or a fold within the last
 * LIMIT_HEADER_FIELD_CUT_SLACK bytes when there is one, never inside a UTF-8 sequence).  GMime
 * 3.2.13 is quadratic in the length of some fields (a Subject of unclosed "=?" words: 64 KiB takes
 * 0.6 s, 32 KiB 0.09 s, 1 MiB 80 s; a Content-Type name= of them: 32 KiB 0.18 s); real long
 * fields (References, DKIM-Signature, To/Cc with hundreds of addresses) stay well under 32 KiB. */
#define LIMIT_HEADER_FIELD_BYTES (32 * 1024)
#define LIMIT_HEADER_FIELD_CUT_SLACK 1024
/* Decoded bytes of all parts together (bodies after conversion to UTF-8, attachments). */
#define LIMIT_MIME_DECODED_BYTES (256LL * 1024 * 1024)

#endif
