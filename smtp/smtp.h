/* smtp/smtp.h — the SMTP receiver (RFC 5321, SPEC §2).
 *
 * Two layers:
 *  - smtp_session_*: the protocol as a pure state machine.  Bytes in (smtp_session_feed), replies
 *    out (smtp_session_take_output), events through the ops callbacks.  No sockets, no clock but
 *    time(2) for the Received: date, so unit tests drive it directly.
 *  - smtp_server_*: listeners and connections on a libuv loop, timeouts, connection caps; it owns
 *    the sessions and hands each finished transaction to the engine.
 *
 * Uses only util/ (and libuv; STARTTLS through util/tls.h). */
#ifndef INLET_SMTP_H
#define INLET_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/id.h"

struct domain_set;

/* ---------------------------------------------------------------------------------------------
 * A finished transaction: everything the engine needs to commit a message. */
struct smtp_txn {
    char id[ID_LEN + 1];     /* message id: in Received: and in "250 2.0.0 Ok: queued as <id>" */
    char *sender;            /* MAIL FROM address without <>; "" for the null sender */
    char **rcpts;            /* accepted RCPT addresses without <>, de-duplicated, in order */
    size_t nrcpts;
    char *helo;              /* HELO/EHLO argument */
    char *peer_ip;           /* client address, printable */
    char *tls;               /* "none", or protocol and cipher after STARTTLS:
                                "TLSv1.3:TLS_AES_256_GCM_SHA384" */
    bool smtputf8;           /* MAIL FROM had SMTPUTF8 */
    int64_t received_at_ms;  /* when DATA ended */
    uint8_t *data;           /* our Received: header, then the message exactly as received
                                (dot-unstuffed, CRLFs kept, bare LF/CR kept); NULL when `sink`
                                holds them */
    size_t len;
    void *sink;              /* the message went to a sink as it arrived (ops.sink_open): all
                                `len` bytes are there; whoever takes the txn takes the sink */
    void (*sink_discard)(void *sink); /* what smtp_txn_free calls on a sink still here */
    size_t reserved;         /* bytes of the in-flight budget this txn holds (see ops.reserve) */
};
/* Frees every field and the struct.  NULL is fine. */
void smtp_txn_free(struct smtp_txn *txn);

enum smtp_commit_status {
    SMTP_COMMIT_OK,       /* 250 2.0.0 Ok: queued as <id> */
    SMTP_COMMIT_TEMPFAIL, /* 451 4.3.0 Error: queue file write error (storage unavailable) */
    SMTP_COMMIT_NOSPACE,  /* 452 4.3.1 Insufficient system storage */
    SMTP_COMMIT_SPF_FAIL, /* 550 5.7.23 SPF validation failed (RFC 7372; --spf-reject) */
    SMTP_COMMIT_DMARC_REJECT, /* 550 5.7.1 Rejected by the DMARC policy of the From: domain (--dmarc-reject) */
};

/* ---------------------------------------------------------------------------------------------
 * The session (pure). */
struct smtp_session;

struct smtp_session_config {
    const char *hostname;              /* greeting, EHLO reply, Received: "by" */
    const struct domain_set *domains;  /* hosted domains; not owned */
    size_t max_message_size;           /* bytes of message data (excluding our Received:) */
    unsigned max_recipients;
    unsigned max_hops;                 /* more Received: headers than this → 554 5.4.6 */
    size_t memory_per_message;         /* DATA bytes held in memory; past them (with ops.sink_open)
                                          the message goes to a sink as it arrives; 0: never */
};

struct smtp_session_ops {
    /* End of DATA without error.  The callee takes `txn` (free it with smtp_txn_free) and must
     * later call smtp_session_commit_done() — possibly from inside this call.  Until then
     * smtp_session_feed() consumes nothing. */
    void (*commit)(void *ctx, struct smtp_txn *txn);
    /* Optional.  Extra check for a recipient in a hosted domain (postmaster is never asked).
     * Return NULL to accept, or a complete reply line without CRLF ("550 5.1.1 No such
     * recipient") to refuse it; a refusal counts as a bad command (SMTP_MAX_BAD_COMMANDS of them
     * end the session with 421 4.7.0).  A "421 ..." line is said and ends the session. */
    const char *(*check_rcpt)(void *ctx, const char *addr);
    /* Optional.  Take (delta > 0) or give back (delta < 0) bytes of the global in-flight message
     * budget.  Returns false when taking would exceed it: the transaction then fails with
     * 452 4.3.1 after the end of data.  A txn handed to commit() carries its reservation in
     * txn->reserved; whoever frees the txn gives it back. */
    bool (*reserve)(void *ctx, ssize_t delta);
    /* Optional.  Asked for every postmaster recipient (RFC 5321 §4.5.1 makes us accept them
     * without a route check, so they are rationed instead): NULL to accept, or a reply line
     * ("450 4.7.1 ...") to refuse this one; not counted as a bad command. */
    const char *(*check_postmaster)(void *ctx);
    /* Optional: set it to offer STARTTLS (RFC 3207; EHLO lists it until TLS is on), leave it NULL
     * and STARTTLS is 502 5.5.1.  Called when the client's STARTTLS is accepted: get TLS ready
     * and return 0, or a negative errno, which answers 454 4.7.0 and the session goes on in
     * plaintext.  After 0 the session queues "220 2.0.0 Ready to start TLS" and from then on
     * discards every byte it is fed (plaintext pipelined after STARTTLS is never a command:
     * CVE-2011-0411).  The caller writes that 220 in plaintext, runs the handshake on the bytes
     * that follow, and calls smtp_session_tls_started(). */
    int (*starttls)(void *ctx);
    /* Optional: DATA is about to pass cfg.memory_per_message bytes.  Return a sink that takes
     * this message's bytes from now on (those held so far are written to it first, and the
     * memory they held is given back), or NULL to keep the message in memory (within the
     * budget). */
    void *(*sink_open)(void *ctx);
    /* Appends bytes to the sink: SMTP_COMMIT_OK, or the failure the transaction is answered
     * with after the final dot (SMTP_COMMIT_NOSPACE: 452 4.3.1; otherwise 451 4.3.0). */
    enum smtp_commit_status (*sink_write)(void *ctx, void *sink, const void *p, size_t n);
    /* Drops a sink: its transaction ended without a commit.  Set whenever sink_open is. */
    void (*sink_discard)(void *sink);
    /* Optional.  MAIL FROM was accepted ("250 2.1.0 Ok" queued): the client, its HELO name ("" when
     * none) and the sender ("" for <>), for work that can start before the message comes (sender
     * authentication looks up the sender's SPF records meanwhile).  Must not block; copies what it
     * keeps. */
    void (*mail_from)(void *ctx, const char *peer_ip, const char *helo, const char *sender);
};

struct smtp_session *smtp_session_new(const struct smtp_session_config *cfg, const char *peer_ip,
                                      const struct smtp_session_ops *ops, void *ctx);
/* Frees the session and any transaction in progress (giving back its reservation). */
void smtp_session_free(struct smtp_session *s);
/* The connection id that the session's log lines carry (conn=<tag>); "-" until set. */
void smtp_session_set_log_tag(struct smtp_session *s, const char *tag);
/* Queues the 220 greeting. */
void smtp_session_start(struct smtp_session *s);
/* Consumes client bytes.  Returns how many were consumed; fewer than len means the session cannot
 * take more now (a commit is in flight, the output buffer is full, or the session is closing):
 * the caller keeps the rest and feeds it again after smtp_session_commit_done() or after writing
 * the output.  Partial lines are buffered inside the session (bounded by SMTP_LINE_MAX). */
size_t smtp_session_feed(struct smtp_session *s, const char *data, size_t len);
/* The commit of the transaction handed to ops.commit finished: queues the reply for `status`
 * (`id` is the txn's id) and returns to the ready state. */
void smtp_session_commit_done(struct smtp_session *s, enum smtp_commit_status status);
/* The TLS handshake after STARTTLS finished: `tls` describes it ("TLSv1.3:TLS_AES_256_GCM_SHA384",
 * copied).  The session is back in its initial state (RFC 3207 §4.2: HELO/EHLO and any transaction
 * forgotten, no new greeting); from now on its input and output are the TLS plaintext. */
void smtp_session_tls_started(struct smtp_session *s, const char *tls);
/* No input within the timeout: queues "421 4.4.2 <host> Error: timeout exceeded" and closes
 * (during the TLS handshake it only closes: nothing can be said in plaintext then). */
void smtp_session_timeout(struct smtp_session *s);
/* The server is stopping: when no transaction is in progress, queues
 * "421 4.3.2 <host> Service shutting down" and closes now; otherwise does so as soon as the
 * transaction in progress ends (after its 250, or at RSET/QUIT/error) or the TLS handshake in
 * progress ends. */
void smtp_session_shutdown(struct smtp_session *s);

/* Replies queued so far, handed over to the caller (free() it); NULL when there are none. */
char *smtp_session_take_output(struct smtp_session *s, size_t *len);
/* True once the session has said its last word (221 or 421): write the output, then close. */
bool smtp_session_closing(const struct smtp_session *s);
/* True between MAIL FROM and the end of the transaction (incl. DATA and a commit in flight). */
bool smtp_session_in_transaction(const struct smtp_session *s);
/* True between the 354 and the end of data: message bytes are being read. */
bool smtp_session_in_data(const struct smtp_session *s);
/* True while a commit handed to ops.commit has not been answered. */
bool smtp_session_committing(const struct smtp_session *s);
const char *smtp_session_state_name(const struct smtp_session *s);

/* ---------------------------------------------------------------------------------------------
 * The server (libuv). */
struct smtp_server;
struct smtp_commit; /* a commit in flight; survives the connection closing */
typedef struct uv_loop_s uv_loop_t;

struct smtp_server_config {
    struct smtp_session_config session;
    const char *const *listen;   /* "HOST:PORT" strings, already validated */
    size_t nlisten;
    unsigned max_connections;
    unsigned max_connections_per_ip; /* per client: an address, or an IPv6 /ipv6_prefix */
    unsigned ipv6_prefix;
    unsigned timeout_seconds;
    unsigned data_timeout_seconds;   /* one DATA at most this long, however the bytes trickle */
    int64_t inflight_bytes_max;      /* message bytes held by every session together */
    int64_t inflight_bytes_per_client; /* ... of which one client's sessions may hold */
    unsigned postmaster_per_hour;    /* postmaster recipients per client and hour; 0: no limit */
    /* PEM certificate chain and private key: both set to offer STARTTLS, or both NULL.  Loaded once by smtp_server_start, which fails when they
     * cannot be loaded or do not match. */
    const char *tls_cert;
    const char *tls_key;
    /* Test hook (INLET_TEST_SMTP_SNDBUF): SO_SNDBUF of every accepted socket, so that the tests
     * see replies written partly at once and partly queued; 0: the kernel's. */
    int test_sndbuf;
};

struct smtp_server_ops {
    /* Commit `txn` (owned by the callee) durably, then call smtp_commit_done(c, status) on the
     * loop thread. */
    void (*commit)(void *ctx, struct smtp_commit *c, struct smtp_txn *txn);
    const char *(*check_rcpt)(void *ctx, const char *addr); /* optional, see session ops */
    void (*mail_from)(void *ctx, const char *peer_ip, const char *helo, const char *sender); /* optional, ditto */
    /* Called once after smtp_server_stop() when the last connection has closed. */
    void (*stopped)(void *ctx);
    /* Optional, all three or none: where DATA past cfg.session.memory_per_message goes (see
     * the session ops of the same names). */
    void *(*sink_open)(void *ctx);
    enum smtp_commit_status (*sink_write)(void *ctx, void *sink, const void *p, size_t n);
    void (*sink_discard)(void *sink);
};

/* Binds every listener and logs one line per listener when it is ready.  NULL with *err. */
struct smtp_server *smtp_server_start(uv_loop_t *loop, const struct smtp_server_config *cfg,
                                      const struct smtp_server_ops *ops, void *ctx, char **err);
/* Loop thread only.  The connection may have gone away meanwhile; the reply is then dropped. */
void smtp_commit_done(struct smtp_commit *c, enum smtp_commit_status status);
/* Stops accepting; idle sessions get 421 and close; sessions in a transaction finish it.  After
 * `grace_seconds` the rest are closed.  ops.stopped runs when no connection and no commit is left. */
void smtp_server_stop(struct smtp_server *srv, unsigned grace_seconds);
/* Frees a stopped server (after ops.stopped). */
void smtp_server_free(struct smtp_server *srv);

/* Counters since start, for GET /metrics.  Any thread (relaxed atomic reads). */
struct smtp_server_stats {
    uint64_t connections;        /* accepted (refused ones included) */
    uint64_t connections_open;   /* now */
    uint64_t tls_started;
    uint64_t replies[600];       /* final reply lines by code (index = code, 200..599) */
};
void smtp_server_get_stats(struct smtp_server *srv, struct smtp_server_stats *out);

#endif
