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
/* An address as inlet checks or logs it whole: local part, "@", domain. */
#define SMTP_ADDRESS_MAX (SMTP_LOCAL_PART_MAX + 1 + SMTP_DOMAIN_MAX)
#define SMTP_HELO_MAX 255
/* Unknown or malformed commands, and recipients refused by the route check (550 5.1.1, 451 4.3.0),
 * tolerated in one session before 421 4.7.0. */
#define SMTP_MAX_BAD_COMMANDS 20
/* Event-loop time one client (an address or IPv6 /64, smtp/server.c) may spend in the RCPT-time
 * route check — regex matching runs on the loop, stalling every other session meanwhile: a bucket
 * of SMTP_RCPT_CHECK_BUDGET_MS refilling at SMTP_RCPT_CHECK_REFILL_MS per second, so a client
 * gets at most that share of the loop however many sessions it opens.  Empty, its next checked
 * RCPT ends the session with 421 4.7.0.  A recipient costs microseconds with sane routes; the
 * PCRE2 limits (ROUTE_MATCH_LIMIT, ~5-30 ms when hit) bound one match attempt, this their sum. */
#define SMTP_RCPT_CHECK_BUDGET_MS 500
#define SMTP_RCPT_CHECK_REFILL_MS 25
/* Replies buffered for a client that does not read them (pipelining): past this the session stops
 * consuming input until the output is written. */
#define SMTP_OUTPUT_MAX (64 * 1024)
/* One socket read; the loop shares one buffer of this size for all connections. */
#define SMTP_READ_CHUNK (64 * 1024)
/* Bytes reserved up front for the Received: header inlet prepends. */
#define SMTP_RECEIVED_MAX 512
/* STARTTLS and STLS (util/tls.c): plaintext taken from the TLS object in one step (one TLS record at most);
 * a drained memory BIO whose buffer grew past TLS_BIO_KEEP is replaced by an empty one;
 * "TLSv1.3:TLS_AES_256_GCM_SHA384": protocol and cipher, as txn->tls and Received: show them. */
#define SMTP_TLS_PLAIN_CHUNK (16 * 1024)
#define TLS_BIO_KEEP (4 * 1024)
#define SMTP_TLS_DESC_MAX 128
/* A client's key for per-client caps and shares (util/net.h net_client_key): an IPv4 address or
 * an IPv6 network with its prefix length, "ffff:...:ffff/128" at most. */
#define NET_CLIENT_KEY_MAX 56

/* Settings bounds (min, max) — checked by util/config.c. */
#define LIMIT_MESSAGE_SIZE_MIN 1024LL
/* SQLite keeps a value of at most 1,000,000,000 bytes: stay well below it. */
#define LIMIT_MESSAGE_SIZE_MAX (512LL * 1024 * 1024)
#define LIMIT_RECIPIENTS_MAX 10000
#define LIMIT_CONNECTIONS_MAX 100000
#define LIMIT_HOPS_MAX 500
#define LIMIT_TIMEOUT_MAX 3600
/* --data-timeout: a whole DATA phase at most a day. */
#define LIMIT_DATA_TIMEOUT_MAX (24 * 3600)
/* --postmaster-rate: postmaster recipients per client and hour. */
#define LIMIT_POSTMASTER_RATE_MAX 1000000
/* --retry-schedule: at most this many retries, each at most a week. */
#define LIMIT_RETRIES_MAX 50
#define LIMIT_RETRY_DELAY_MAX (7 * 24 * 3600)

/* Message bytes held in memory by all SMTP sessions together (DATA in progress and messages
 * waiting for their commit).  Above it a new DATA gets 452 4.3.1 instead of exhausting memory:
 * GLib aborts on allocation failure, so the budget is what keeps us from ever getting there. */
#define LIMIT_INFLIGHT_BYTES (1024LL * 1024 * 1024)
/* --smtp-memory (default LIMIT_INFLIGHT_BYTES) and --smtp-memory-per-client at most this. */
#define LIMIT_SMTP_MEMORY_MAX (64LL * 1024 * 1024 * 1024)

/* Sender authentication (mailauth/, SPEC §2 "Sender authentication").  Worker threads that run the
 * checks: they wait on DNS, not on CPU, so more than cores; a message queued behind them still ends
 * at its deadline (--auth-budget). */
#define MAILAUTH_WORKERS 8
/* SPF checks started at MAIL FROM (to have their DNS answers cached by the end of DATA) waiting
 * for a worker; past it a new one is dropped (the check after DATA does the lookups itself). */
#define MAILAUTH_PREFETCH_MAX 256
/* Messages up to this size are checked on the SMTP loop when every DNS answer is cached
 * (mailauth_check_cached: no thread hand-off); larger ones always go to a worker, so that the loop
 * never hashes a large body while other sessions wait.  At the limit one rsa-sha256 signature costs
 * the loop ~0.25 ms (canonicalization and SHA-256; `dkim-oracle --time`), MAILAUTH_DKIM_SIGS_MAX of
 * them ~2 ms. */
#define MAILAUTH_CACHED_BYTES_MAX (256 * 1024)
/* libunbound's caches (bytes): answers kept for their TTL within these, least recently used go. */
#define MAILAUTH_DNS_MSG_CACHE (4 * 1024 * 1024)
#define MAILAUTH_DNS_RRSET_CACHE (8 * 1024 * 1024)
/* Our cache in front of libunbound's (mailauth/dns.c): answers kept, bytes of one answer's records
 * (bigger ones are left to libunbound's cache), and the longest time one is kept (a TTL beyond it
 * is cut: a changed record is seen within the hour). */
#define MAILAUTH_DNS_FRONT_ENTRIES 4096
#define MAILAUTH_DNS_FRONT_BYTES 4096
#define MAILAUTH_DNS_FRONT_TTL_MAX 3600
/* Records of one answer looked at (a TXT or MX set bigger than this is cut). */
#define MAILAUTH_DNS_RECORDS_MAX 64
/* RFC 7208 §4.6.4: terms that cause DNS lookups, void lookups, MX and PTR names per mechanism. */
#define SPF_LOOKUPS_MAX 10
#define SPF_VOID_LOOKUPS_MAX 2
#define SPF_MX_NAMES_MAX 10
#define SPF_PTR_NAMES_MAX 10
/* include/redirect nesting (the lookup limit ends loops first; this guards the stack). */
#define SPF_DEPTH_MAX 12
/* Terms of one record; one record's text (several TXT strings joined); a domain name; the parts a
 * macro is split into. */
#define SPF_TERMS_MAX 128
#define SPF_RECORD_MAX 8192
#define SPF_DOMAIN_MAX 253
#define SPF_MACRO_PARTS_MAX 128
/* A domain's explanation (exp=, RFC 7208 §6.2) after its macros: a longer one is dropped. */
#define SPF_EXP_MAX 512
/* DKIM signatures of one message that are verified (each costs a lookup and a hash); a selector. */
#define MAILAUTH_DKIM_SIGS_MAX 8
#define MAILAUTH_DKIM_SELECTOR_MAX 64
/* DKIM (mailauth/dkim.c): tags of a signature or key record; names in one h=; header fields of a
 * message looked through (a block of more is judged on its first ones); a key record's text; the
 * decoded keys kept (each an RSA or ed25519 public key, a few KiB at most); the RSA key size below
 * which a key is refused (libopendkim's default); seconds a t= may lie in the future. */
#define MAILAUTH_DKIM_TAGS_MAX 64
#define MAILAUTH_DKIM_SIGNED_FIELDS_MAX 128
#define MAILAUTH_DKIM_FIELDS_MAX 4096
#define MAILAUTH_DKIM_KEY_RECORD_MAX 4096
#define MAILAUTH_DKIM_KEYS_MAX 256
#define MAILAUTH_DKIM_RSA_BITS_MIN 1024
#define MAILAUTH_DKIM_CLOCK_DRIFT 300
/* A From: value read for DMARC (longer: no single address, DMARC permerror); a DMARC record. */
#define MAILAUTH_FROM_MAX 4096
#define MAILAUTH_DMARC_RECORD_MAX 2048
/* A DMARC record's rua= / ruf= as kept in the verdicts (reported, never used: inlet sends no
 * reports); longer lists are cut at a URI boundary. */
#define MAILAUTH_DMARC_URIS_MAX 256
/* About the bytes of the header fields inlet prepends (A-R with 8 signatures, Mailgun's two). */
#define MAILAUTH_HEADERS_MAX 4096
/* --auth-budget bounds, milliseconds. */
#define LIMIT_AUTH_BUDGET_MIN 100
#define LIMIT_AUTH_BUDGET_MAX 60000

/* Group commit: one batch holds at most this many messages or bytes. */
#define STORE_BATCH_MAX_MESSAGES 1024
#define STORE_BATCH_MAX_BYTES (64LL * 1024 * 1024)
/* Distinct statements the PostgreSQL backend prepares per connection (it has about sixty). */
#define STORE_PG_PREPARED_MAX 128
/* SQLite (storage/sqlite.c): how long a statement waits for a lock another connection holds
 * (busy_timeout), and how long /healthz's write probe may wait; a checkpointer that found no commit
 * for TRUNCATE_IDLE_MS truncates the WAL; the writer's RESTART checkpoint (the WAL cap's valve)
 * waits at most VALVE_BUSY_MS for readers to leave the WAL. */
#define SQLITE_BUSY_TIMEOUT_MS 5000
#define SQLITE_PROBE_TIMEOUT_MS 2000
#define SQLITE_CHECKPOINT_TRUNCATE_IDLE_MS 1000
#define SQLITE_CHECKPOINT_VALVE_BUSY_MS 250
/* The SQLite backend's body log (storage/bodies.c): a segment file takes messages until it holds
 * this many bytes, then the next one starts (a larger message gets a segment of its own).  A
 * segment is deleted once no row refers to it, so the space held beyond the live bodies is at most
 * one partly-dead segment per long-lived message: small segments waste less, large ones cost fewer
 * files. */
#define STORE_BODY_SEGMENT_BYTES (8LL * 1024 * 1024)
/* PostgreSQL route changes (storage/postgres_listen.c, SPEC §8): while the LISTEN connection is
 * down the routes version is compared every ROUTES_POLL_MS (half a second, so that a change still
 * reaches every node within a second), and the connection is tried again after RETRY_MIN_MS,
 * doubling up to RETRY_MAX_MS. */
#define STORE_ROUTES_POLL_MS 500
#define STORE_LISTEN_RETRY_MIN_MS 100
#define STORE_LISTEN_RETRY_MAX_MS 5000

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
/* Threads that hash mailbox passwords for the API (yescrypt: tens of milliseconds each, on
 * purpose), so that a burst of mailbox writes never holds the API_THREADS that answer reads. */
#define API_PASSWORD_HASHERS 2
/* API writes in flight (api/writes.c): a request that writes (routes, resends, deletes, retries,
 * mailboxes) waits for its group commit suspended, holding no pool thread.  Admitted before its
 * body is read: at most API_WRITES_MAX at once in all and API_WRITES_PER_CLIENT_MAX from one
 * client address; past either, 503 with Retry-After: API_WRITES_RETRY_AFTER_SECONDS. */
#define API_WRITES_MAX 64
#define API_WRITES_PER_CLIENT_MAX 16
#define API_WRITES_RETRY_AFTER_SECONDS 1
/* A request body (SPEC §7): 413 above it, checked on Content-Length before any byte is read and
 * again while the body streams in. */
#define API_BODY_MAX (50LL * 1024 * 1024)
/* Request body bytes held in memory by every API request together; above it a request is
 * answered 503 before its body is read (Content-Length known) or closed (chunked). */
#define API_BODIES_INFLIGHT_MAX (256LL * 1024 * 1024)
/* The body of an endpoint that takes only form fields (every one but POST/PUT /v3/routes,
 * POST /v3/routes/test and a resend): 413 above it.  Not counted in API_BODIES_INFLIGHT_MAX:
 * API_CONNECTIONS_MAX of them are 16 MiB. */
#define API_SMALL_BODY_MAX (64 * 1024)
/* A request body must come at API_BODY_MIN_RATE bytes a second on average once
 * API_BODY_GRACE_SECONDS have passed since its first byte, or the connection is closed (a body
 * that stops altogether meets API_TIMEOUT_SECONDS first). */
#define API_BODY_GRACE_SECONDS 10
#define API_BODY_MIN_RATE (16 * 1024)
/* The message summary every event of a message keeps (engine/plan.c, Mailgun's event "message"):
 * bytes of one header value (to, from, subject, message-id; cut on a UTF-8 boundary) and
 * attachments listed at most. */
#define EVENT_MESSAGE_HEADER_MAX 1024
#define EVENT_MESSAGE_ATTACHMENTS_MAX 100
/* An event filter expression (api/internal_filter.h; API_EVENTS_FILTER_MAX bytes): terms and
 * operators, nesting. */
#define API_FILTER_NODES_MAX 64
#define API_FILTER_DEPTH_MAX 16
/* Events GET /v3/<domain>/events reads at most for one page when filters are evaluated by the
 * API (api/events.c): a page may then hold fewer items than asked, its `next` goes on from the
 * last event read. */
#define API_EVENTS_SCAN_MAX 20000
/* GET /healthz answers from a check at most this old (it needs no credentials, and the check
 * takes the database's write lock). */
#define API_HEALTH_CACHE_MS 1000
/* Bytes of a request's URI (path and query) we look at; MHD's memory pool bounds it anyway. */
#define API_URI_MAX 8192
/* Path parameters (`:id`) in one endpoint pattern. */
#define API_PARAMS_MAX 4
/* The Authorization header we decode (Basic, base64 of "api:KEY"). */
#define API_AUTH_HEADER_MAX 1024
/* List endpoints: items per page when `limit` is not given, and the most `limit` may ask. */
#define API_EVENTS_LIMIT_DEFAULT 100
#define API_EVENTS_LIMIT_MAX 300
#define API_DELIVERIES_LIMIT_DEFAULT 100
#define API_DELIVERIES_LIMIT_MAX 300
/* GET /v3/mailboxes: mailboxes per page. */
#define API_MAILBOXES_LIMIT_DEFAULT 100
#define API_MAILBOXES_LIMIT_MAX 1000
#define API_ROUTES_LIMIT_DEFAULT 100
#define API_ROUTES_LIMIT_MAX 1000
/* GET /v3/{domain}/events: bytes of a filter value (an address, a message id, an event name) and
 * of a time bound (`begin`, `end`: Unix seconds, RFC 2822 or ISO 8601). */
#define API_EVENTS_FILTER_MAX 512
#define API_EVENTS_TIME_MAX 64
/* Bytes of a page token (base64url) we decode. */
#define API_PAGE_TOKEN_MAX 4096
/* POST <storage url> (resend): addresses in one request. */
#define API_RESEND_RECIPIENTS_MAX 100
/* GET <storage url>/attachments/N: bytes of the ASCII filename fallback in Content-Disposition,
 * and of a stored content type sent back as it is (longer ones become application/octet-stream). */
#define API_DISPOSITION_FALLBACK_MAX 200
#define API_CONTENT_TYPE_MAX 255

/* The web console (api/console.c, SPEC §7.1).  Sessions held at once (a login past it ends the
 * oldest: one operator's many tabs and logins must never lock out the next login), and the
 * bounds of --console-session-ttl.  Failed logins: at most API_CONSOLE_LOGIN_FAILURES_MAX a
 * minute per client (an address, an IPv6 /64; then 429 until the minute is over), counted for
 * the last API_CONSOLE_LOGIN_CLIENTS_MAX clients that failed, so one client guessing keys
 * cannot lock the others out. */
#define API_CONSOLE_SESSIONS_MAX 64
#define LIMIT_CONSOLE_SESSION_TTL_MIN 1
#define LIMIT_CONSOLE_SESSION_TTL_MAX (7 * 86400)
#define API_CONSOLE_LOGIN_FAILURES_MAX 10
#define API_CONSOLE_LOGIN_CLIENTS_MAX 256
/* Bytes of the Cookie header we look at for the session cookie. */
#define API_CONSOLE_COOKIE_MAX 4096

/* Request bodies and query strings (api/form.c): fields in one form (query or body), bytes of a
 * field name, multipart parts, the header block of one part, and a multipart boundary. */
#define FORM_FIELDS_MAX 1000
#define FORM_NAME_MAX 256
#define FORM_PARTS_MAX 1000
#define FORM_PART_HEADERS_MAX 8192
#define FORM_BOUNDARY_MAX 200
/* The filename and content type of a file part. */
#define FORM_FILENAME_MAX 1024

/* API and signing keys given by a setting: visible ASCII, this many bytes at most; a key file
 * (--api-key-file, --signing-key-file) is read only up to KEY_FILE_MAX bytes. */
#define KEY_MAX 512
#define KEY_FILE_MAX (64 * 1024)
/* Generated keys: random bytes (64 lowercase hex characters). */
#define KEY_RANDOM_BYTES 32

_Static_assert(API_BODY_MAX < LIMIT_INFLIGHT_BYTES, "a request body fits the memory budget");
_Static_assert(API_WRITES_PER_CLIENT_MAX <= API_WRITES_MAX, "a client's writes fit the total");
_Static_assert(API_WRITES_PER_CLIENT_MAX < API_CONNECTIONS_PER_IP_MAX,
               "one client reaches its write cap (503) before MHD's connection limit (a close)");

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
/* Bytes of the input quoted in a parse error ("expected ..., found '...'"). */
#define ROUTE_ERROR_QUOTE_MAX 64
/* At most this many literal runs per filter are kept, and an inner key is at most this long
 * (the first or last ROUTE_INNER_KEY_MAX bytes of a run): the evaluation probes every position
 * of the recipient once per distinct key length, so few lengths keep it cheap. */
#define ROUTE_LITERAL_RUNS_MAX 8
#define ROUTE_INNER_KEY_MAX 8
/* Inner keys serve recipients up to this length (longer ones, which SMTP never gives: see
 * SMTP_PATH_MAX, consider every inner-keyed route): the patterns that get inner keys backtrack
 * at most about L^2 / 2 times over L bytes, under ROUTE_MATCH_LIMIT up to here. */
#define ROUTE_INNER_SUBJECT_MAX 1000

/* Mailboxes for POP3 pollers (SPEC §9).  A name is 1..64 bytes of a-z 0-9 . _ + - @ (a
 * local part or an address fits; it is the POP3 USER and appears in URLs unescaped).  ttl= of
 * store(mailbox=...) and a mailbox's retention: one second to ten years. */
#define MAILBOX_NAME_MAX 64
#define MAILBOX_TTL_MAX (10LL * 366 * 24 * 3600)
/* POP3 (pop3/, SPEC §9).  A command line: RFC 2449 allows 255 octets; an AUTH PLAIN response
 * carries base64 of a name, a password (PASSWORD_MAX) and a NUL each, so 1 KiB.  Replies queued
 * before the session stops taking input (a RETR's message is queued whole, once).  Commands per
 * session: draining 10,000 messages takes about 4 each.  A session lasts at most an hour (its
 * maildrop lock is a lease of --lease-seconds, renewed while it lives).  Messages listed per session: the rest
 * waits for the next one (RFC 1939 lets a server show part of a maildrop). */
#define POP3_LINE_MAX 1024
#define POP3_OUTPUT_MAX (64 * 1024)
#define POP3_COMMANDS_MAX 50000
#define POP3_SESSION_MAX_SECONDS 3600
#define POP3_MAILDROP_MAX 10000
/* One socket read; unconsumed input held per connection (pipelined commands) before reading
 * stops. */
#define POP3_READ_CHUNK (16 * 1024)
#define POP3_INPUT_MAX (16 * 1024)
/* Connections at once, and per client address. */
#define POP3_CONNECTIONS_MAX 256
#define POP3_CONNECTIONS_PER_IP_MAX 16
/* Failed logins: a session ends after 3; each failure's -ERR waits 250 ms doubled per earlier
 * failure of the same address or mailbox within 15 minutes, up to 8 s; at most 4,096 addresses
 * and mailboxes are remembered (the oldest is forgotten first). */
#define POP3_AUTH_FAILURES_MAX 3
#define POP3_AUTH_DELAY_MS 250
#define POP3_AUTH_DELAY_MAX_MS 8000
#define POP3_AUTH_WINDOW_SECONDS 900
#define POP3_AUTH_TRACKED_MAX 4096
/* A mailbox password: at least 8 bytes (guessing is slowed by the hash and the POP3 delays, not
 * prevented), at most 256 (a POP3 PASS line, a SASL PLAIN response). */
#define PASSWORD_MIN 8
#define PASSWORD_MAX 256

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
/* Bytes of a multipart boundary the pre-scan tracks (RFC 2046 allows 70). */
#define LIMIT_MIME_BOUNDARY_MAX 200
/* Bytes of a charset name (encoded words, Content-Type) looked up or quoted in a warning, and of a
 * header name quoted in a warning. */
#define LIMIT_CHARSET_MAX 64
#define LIMIT_WARNING_NAME_MAX 64

/* Quoted text and signature recognition (message/strip.c): bounds on the work done over a body
 * and the sizes the heuristics accept.  An attribution ("On ... wrote:") longer than
 * STRIP_ATT_MAX is ordinary text; STRIP_ATT_GAP_MAX blank lines may separate it from the quote;
 * an Outlook header block is From: then Sent:/To:/Subject: within STRIP_HDR_LINES_MAX lines; a
 * bare "--" is a signature delimiter only within the last STRIP_SIG_BARE_LINES_MAX lines; "Sent
 * from my iPhone"-like lines are at most STRIP_SIG_PHRASE_MAX bytes; a closing HTML tag is matched
 * against at most STRIP_HTML_MATCH_MAX open elements; an element before <blockquote type="cite">
 * is examined as an attribution up to STRIP_HTML_ATT_REGION_MAX bytes. */
#define STRIP_ATT_MAX 1000
#define STRIP_ATT_GAP_MAX 4
#define STRIP_HDR_LINES_MAX 6
#define STRIP_SIG_BARE_LINES_MAX 15
#define STRIP_SIG_PHRASE_MAX 80
#define STRIP_HTML_MATCH_MAX 64
#define STRIP_HTML_ATT_REGION_MAX 8192

/* Webhook bodies (message/post.c, SPEC §5). */
/* The largest urlencoded body (fixed part plus tail); bigger ones go multipart. */
#define POST_URLENCODED_MAX (100 * 1024)
/* Field values (and values shared by the posts of a message) at least this long are referenced
 * by a segment instead of copied. */
#define POST_SEGMENT_COPY_MAX 1024
/* Per-header form fields (distinct names) at most: PHP drops fields past max_input_vars = 1000
 * and Rack limits a multipart body to 4096 parts; every header stays in message-headers. */
#define POST_HEADER_FIELDS_MAX 500
/* A header name longer than this is not a form field (FORM_NAME_MAX is 256). */
#define POST_FIELD_NAME_MAX 256
/* Bytes of an attachment filename in a part header (cut on a UTF-8 character boundary). */
#define POST_FILENAME_MAX 255
/* The tail of one attempt (timestamp, token, signature and the closing bytes); its values are cut
 * at the lengths below so that it always fits (multipart: 3 × 86 + 23 + 20 + 64 + 64 + 43 = 472
 * bytes). */
#define MESSAGE_POST_TAIL_MAX 512
/* The "authentication" member (message/authres.c): bytes of one value, properties of one result,
 * results read from inlet's Authentication-Results field. */
#define MSG_AUTHRES_VALUE_MAX 512
#define MSG_AUTHRES_PROPS_MAX 16
#define MSG_AUTHRES_RESULTS_MAX 16
/* The longest parameter name that message_body_mime lets GMime's parameter formatter write (its
 * loop never ends for names of 70-72 bytes; message/stored.c); longer ones are written as text. */
#define MSG_PARAM_NAME_FORMAT_MAX 60
/* URIs of one rua= / ruf= list read back. */
#define MSG_AUTHRES_URIS_MAX 16
/* Bytes of a property's name kept as written (lower case); members of one result: "result",
 * "reason", dmarc's six, and the properties. */
#define MSG_AUTHRES_KEY_MAX 64
#define MSG_AUTHRES_MEMBERS_MAX (8 + MSG_AUTHRES_PROPS_MAX)
#define POST_TAIL_TIMESTAMP_MAX 20
#define POST_TAIL_TOKEN_MAX 64
#define POST_TAIL_SIGNATURE_MAX 64

/* Pipeline (engine/pipeline.c): worker threads (fixed: routing is cheap next to the commit it
 * waits for, so two workers keep the one writer busy while one parses; more would only hold more
 * messages in memory).  Messages waiting for a worker: at most PIPELINE_QUEUE_MAX and
 * PIPELINE_QUEUE_BYTES_MAX bytes (one message is always taken when the queue is empty); beyond it
 * a message is left 'accepted' for the next scan.  Messages whose outcome write is queued and not
 * committed yet: at most PIPELINE_OUTCOMES_MAX (the workers wait).  Ids listed per page of a scan;
 * after a failed outcome write, the next scan comes at most PIPELINE_RETRY_SECONDS later. */
#define PIPELINE_WORKERS 2
/* Messages routed before their commit (engine_pipeline_route_first) by their own workers, at the
 * loop's priority (the 250 waits for them): PIPELINE_FIRST_WORKERS of them, at most
 * PIPELINE_FIRST_MAX messages and PIPELINE_FIRST_BYTES_MAX bytes waiting; past either a message
 * is committed alone and routed after by the others, as under any backlog. */
#define PIPELINE_FIRST_WORKERS 2
#define PIPELINE_FIRST_MAX 64
#define PIPELINE_FIRST_BYTES_MAX (32 * 1024 * 1024)
#define PIPELINE_QUEUE_MAX 1000
#define PIPELINE_QUEUE_BYTES_MAX (128 * 1024 * 1024)
#define PIPELINE_OUTCOMES_MAX 256
#define PIPELINE_SCAN_PAGE 1000
#define PIPELINE_RETRY_SECONDS 30

/* Deliveries (deliver/deliver.c): transfers at once, in total and per destination host (the relay
 * counts as one host); deliveries held in memory (prepared, waiting or in flight) at most, and
 * the default of their payload bytes (--delivery-memory-max; beyond it a delivery stays in the
 * database for the next scan); rows asked
 * per page of a due scan; a scan at least every DELIVER_SCAN_SECONDS, whatever the timers say
 * (safety net); ids of deliveries finished lately remembered (a payload built for one of them is
 * dropped); bytes of a destination host name used as the per-host key. */
#define DELIVER_ACTIVE_MAX 64
#define DELIVER_HOST_ACTIVE_MAX 8
#define DELIVER_HELD_MAX 2000
#define DELIVER_HELD_BYTES_MAX (256 * 1024 * 1024)
#define DELIVER_SCAN_PAGE 200
#define DELIVER_SCAN_SECONDS 30
#define DELIVER_RECENT_MAX 4096
#define DELIVER_HOST_MAX 255

/* Claims on shared work (SPEC §8; --lease-seconds): the bounds of a lease, and of a node id
 * (--node-id, or hostname:pid:random).  A delivery in hand is renewed every third of its lease
 * and its attempt is aborted when less than LEASE_MARGIN_PARTS-th of the lease is left without a
 * renewal (so that it ends before another node may claim it). */
#define LEASE_SECONDS_MIN 3
#define LEASE_SECONDS_DEFAULT 20 /* --lease-seconds' default too */
#define LEASE_SECONDS_MAX 600
#define LEASE_MARGIN_PARTS 4
#define NODE_ID_MAX 128

/* Sweeper (engine/sweeper.c): rows of each kind per pass (a pass that hit it is followed by
 * another one second later), and the period between passes. */
#define SWEEP_BATCH 500
#define SWEEP_SECONDS 60

#endif
