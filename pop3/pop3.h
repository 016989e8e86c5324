/* pop3/pop3.h — the POP3 server of mailboxes (RFC 1939, CAPA RFC 2449, SASL PLAIN RFC 5034, STLS
 * RFC 2595; SPEC §9).
 *
 * Two layers, as smtp/ has them:
 *  - pop3_session_*: the protocol as a pure state machine.  Bytes in (pop3_session_feed), replies
 *    out (pop3_session_output / pop3_session_consumed).  When it needs storage (a login, a
 *    message's bytes, the end of a session) it stops and says so (pop3_session_request); the
 *    caller does the work and hands the answer back (pop3_session_*_done).  No sockets, no clock.
 *  - pop3_server_*: listeners and connections on a libuv loop, TLS (util/tls.h), timeouts,
 *    connection caps, failed-login delays; storage through the hooks engine/ wires.
 *
 * Uses only util/ (and libuv). */
#ifndef INLET_POP3_H
#define INLET_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/id.h"

/* One message of an open maildrop, in the order the session numbers them (1, 2, ...). */
struct pop3_entry {
    char uid[48];                /* UIDL: the stored copy's key */
    char message_id[ID_LEN + 1];
    int64_t size;                /* octets as stored */
};

/* ---------------------------------------------------------------------------------------------
 * The session (pure). */
struct pop3_session;

struct pop3_session_config {
    bool tls_available;  /* STLS can be offered (a certificate is set) */
    bool tls_active;     /* implicit TLS (pop3s): the session starts under TLS */
    bool plaintext_ok;   /* USER/PASS and AUTH PLAIN allowed without TLS (the setting) */
};

/* What the session waits for: nothing, or the caller's answer to one request. */
enum pop3_request {
    POP3_REQ_NONE,
    POP3_REQ_LOGIN, /* check pop3_session_user()/pop3_session_password() and open the maildrop;
                       answer with pop3_session_login_done() */
    POP3_REQ_FETCH, /* the bytes of message pop3_session_fetch_id(); pop3_session_fetch_done() */
    POP3_REQ_CLOSE, /* QUIT in TRANSACTION: commit the deletions (pop3_session_deleted()) and the
                       retrievals (pop3_session_retrieved()), release the maildrop;
                       pop3_session_close_done() */
    POP3_REQ_TLS,   /* +OK to STLS is out: once written, start TLS and call
                       pop3_session_tls_started() */
};

enum pop3_login_result {
    POP3_LOGIN_OK,       /* the maildrop is open and locked: pass its entries */
    POP3_LOGIN_BAD,      /* no such mailbox or a wrong password (never said which) */
    POP3_LOGIN_IN_USE,   /* another session holds the maildrop: -ERR [IN-USE] */
    POP3_LOGIN_UNAVAILABLE, /* storage failed: -ERR [SYS/TEMP] */
};

enum pop3_close_result {
    POP3_CLOSE_OK,          /* committed: +OK Bye */
    POP3_CLOSE_UNAVAILABLE, /* storage failed: -ERR [SYS/TEMP], nothing deleted */
    POP3_CLOSE_LOCK_LOST,   /* the session's lock ran out and another took it: -ERR [SYS/TEMP],
                               nothing deleted */
};

struct pop3_session *pop3_session_new(const struct pop3_session_config *cfg);
void pop3_session_free(struct pop3_session *s);
/* Queues the greeting. */
void pop3_session_start(struct pop3_session *s);
/* Feeds client bytes; returns how many it consumed.  It stops early (and consumes nothing more)
 * while a request is pending, while its output is larger than POP3_OUTPUT_MAX, or once it is
 * closing; the caller keeps the rest and feeds it again later.  Never fails. */
size_t pop3_session_feed(struct pop3_session *s, const char *data, size_t len);
/* The replies queued so far (not NUL-terminated); pop3_session_consumed() drops the first n. */
const char *pop3_session_output(const struct pop3_session *s, size_t *len);
void pop3_session_consumed(struct pop3_session *s, size_t n);
/* True once the session said its last reply: close after writing the output. */
bool pop3_session_closing(const struct pop3_session *s);
enum pop3_request pop3_session_request(const struct pop3_session *s);
/* The idle timer ran out: a last -ERR, then closing. */
void pop3_session_timeout(struct pop3_session *s);

const char *pop3_session_user(const struct pop3_session *s);     /* lower case */
const char *pop3_session_password(const struct pop3_session *s);
/* Answer to POP3_REQ_LOGIN; `entries` (n of them, copied) only with POP3_LOGIN_OK. */
void pop3_session_login_done(struct pop3_session *s, enum pop3_login_result r,
                             const struct pop3_entry *entries, size_t n);
const char *pop3_session_fetch_id(const struct pop3_session *s);
/* Answer to POP3_REQ_FETCH: the message's bytes (borrowed for the call), or data NULL when they
 * cannot be read (-ERR [SYS/TEMP]). */
void pop3_session_fetch_done(struct pop3_session *s, const uint8_t *data, size_t len);
/* The UIDs marked deleted, and the UIDs retrieved (RETR or TOP), each at most once; arrays owned
 * by the session, valid until it changes. */
const char *const *pop3_session_deleted(const struct pop3_session *s, size_t *n);
const char *const *pop3_session_retrieved(const struct pop3_session *s, size_t *n);
/* Whether a maildrop is open (logged in): a connection that ends without QUIT must still
 * release it (with no deletions). */
bool pop3_session_has_maildrop(const struct pop3_session *s);
/* Answer to POP3_REQ_CLOSE. */
void pop3_session_close_done(struct pop3_session *s, enum pop3_close_result r);
/* Answer to POP3_REQ_TLS: the handshake is done, the session starts over (RFC 2595). */
void pop3_session_tls_started(struct pop3_session *s);
/* Failed logins in this session so far. */
unsigned pop3_session_failed_logins(const struct pop3_session *s);

/* ---------------------------------------------------------------------------------------------
 * The server (libuv, loop thread). */
struct pop3_server;
struct pop3_call;

/* Storage, wired by engine/.  Each hook starts work and returns at once; its answer comes back on
 * the loop thread through the pop3_call_*_done function named, exactly once per call. */
struct pop3_hooks {
    void *arg;
    /* Checks (name, password) and opens the maildrop: pop3_call_login_done(). */
    void (*login)(void *arg, struct pop3_call *call, const char *name, const char *password);
    /* Loads a message's bytes: pop3_call_fetch_done(). */
    void (*fetch)(void *arg, struct pop3_call *call, const char *message_id);
    /* Ends a session of mailbox `name`: events for `retrieved`, deletion of `deleted` (none for
     * a dropped connection), the lock released: pop3_call_close_done().  Arrays are valid until
     * then. */
    void (*close)(void *arg, struct pop3_call *call, const char *name, const char *const *retrieved,
                  size_t nretrieved, const char *const *deleted, size_t ndeleted);
};
void pop3_call_login_done(struct pop3_call *call, enum pop3_login_result r, const struct pop3_entry *entries,
                          size_t n);
/* `data` is borrowed for the call (NULL: unreadable). */
void pop3_call_fetch_done(struct pop3_call *call, const uint8_t *data, size_t len);
void pop3_call_close_done(struct pop3_call *call, enum pop3_close_result r);

struct pop3_server_config {
    const char *const *listen;     /* plain POP3 (STLS when tls_cert is set) */
    size_t nlisten;
    const char *const *listen_tls; /* implicit TLS */
    size_t nlisten_tls;
    const char *tls_cert, *tls_key; /* NULL: no TLS */
    const char *plaintext_login;   /* "no", "loopback" or "yes" */
    unsigned idle_timeout_s;
    struct pop3_hooks hooks;
};

struct uv_loop_s;
/* Binds every listener; NULL with *err (g_malloc'd) when one cannot be bound or TLS cannot be
 * set up. */
struct pop3_server *pop3_server_start(struct uv_loop_s *loop, const struct pop3_server_config *cfg,
                                      char **err);
/* The address a listener is bound to ("127.0.0.1:1100"), for the ready log line; i counts plain
 * listeners first, then the TLS ones.  NULL past the end. */
const char *pop3_server_address(const struct pop3_server *srv, size_t i);
/* Closes the listeners and every connection (their maildrops are released as for a dropped
 * connection); `done` runs once everything is closed and every hook has answered. */
void pop3_server_stop(struct pop3_server *srv, void (*done)(void *arg), void *arg);
void pop3_server_free(struct pop3_server *srv);

#endif
