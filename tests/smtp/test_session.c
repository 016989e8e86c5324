/* tests/smtp/test_session.c — the SMTP session state machine, driven without sockets.
 *
 * Each case is a script of steps (client bytes, commit completions, timeout, shutdown, state
 * checks) and the exact bytes the session must answer, "<ID>" standing for the message id.
 * Every case runs three times: each chunk fed whole, byte by byte, and in random splits; the
 * answer and the committed transactions must be the same every time. */
#include <errno.h>
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp.h"
#include "tests/check.h"
#include "util/domains.h"
#include "util/limits.h"
#include "util/log.h"

#define HOST "mx.example.net"
#define GREETING "220 " HOST " ESMTP inlet\r\n"
#define EHLO_REPLY                                                                                  \
    "250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"           \
    "250 ENHANCEDSTATUSCODES\r\n"
#define OK_MAIL "250 2.1.0 Ok\r\n"
#define OK_RCPT "250 2.1.5 Ok\r\n"
#define GO_AHEAD "354 End data with <CR><LF>.<CR><LF>\r\n"
#define QUEUED "250 2.0.0 Ok: queued as <ID>\r\n"
#define BYE "221 2.0.0 Bye\r\n"
#define OK "250 2.0.0 Ok\r\n"
#define R500 "500 5.5.2 Error: command not recognized\r\n"
#define R500_SYNTAX "500 5.5.2 Error: bad syntax\r\n"
#define R502 "502 5.5.1 Error: command not implemented\r\n"
#define NEED_MAIL "503 5.5.1 Error: need MAIL command\r\n"
#define NEED_RCPT "503 5.5.1 Error: need RCPT command\r\n"
#define MAIL_SYNTAX "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
#define RCPT_SYNTAX "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
#define BAD_SENDER "501 5.1.7 Bad sender address syntax\r\n"
#define BAD_RCPT "501 5.1.3 Bad recipient address syntax\r\n"
#define UNSUPPORTED "555 5.5.4 Unsupported parameter\r\n"
#define TOO_BIG "552 5.3.4 Message too big\r\n"
#define NEED_UTF8 "553 5.6.7 Must declare SMTPUTF8 to send unicode address\r\n"
#define DENIED "550 5.7.1 Relaying denied\r\n"
#define NO_STORAGE "452 4.3.1 Insufficient system storage\r\n"
#define SHUTTING "421 4.3.2 " HOST " Service shutting down\r\n"
#define NEED_HELO "503 5.5.1 Error: send HELO/EHLO first\r\n"
/* STARTTLS (RFC 3207) */
#define TLS_DESC "TLSv1.3:TLS_AES_256_GCM_SHA384"
#define EHLO_REPLY_TLS                                                                              \
    "250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"           \
    "250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
#define READY_TLS "220 2.0.0 Ready to start TLS\r\n"
#define TLS_SYNTAX "501 5.5.4 Syntax: STARTTLS\r\n"
#define TLS_IN_TXN "503 5.5.1 Error: MAIL transaction in progress\r\n"
#define TLS_ACTIVE "503 5.5.1 Error: TLS already active\r\n"
#define TLS_UNAVAILABLE "454 4.7.0 TLS not available due to temporary reason\r\n"

/* The usual start of a session: greeting, EHLO, one sender, one recipient. */
#define START_IN "EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\nRCPT TO:<bob@example.com>\r\n"
#define START_OUT GREETING EHLO_REPLY OK_MAIL OK_RCPT
/* MAIL and RCPT of that start, after a greeting. */
#define START_IN_TXN "MAIL FROM:<alice@sender.example>\r\nRCPT TO:<bob@example.com>\r\n"

enum step_kind {
    STEP_END, STEP_FEED, STEP_FILL, STEP_DONE, STEP_TIMEOUT, STEP_SHUTDOWN, STEP_STATE,
    STEP_TLS, /* the I/O layer finished the TLS handshake: smtp_session_tls_started(TLS_DESC) */
};

struct step {
    enum step_kind kind;
    const char *bytes; /* FEED: bytes; STATE: the expected state name */
    size_t len;        /* FEED: byte count; FILL: how many filler bytes */
    enum smtp_commit_status status;
};

#define FEED(str) {.kind = STEP_FEED, .bytes = (str), .len = sizeof(str) - 1}
#define FILL(n) {.kind = STEP_FILL, .len = (n)}
#define DONE(st) {.kind = STEP_DONE, .status = SMTP_COMMIT_##st}
#define TIMEOUT {.kind = STEP_TIMEOUT}
#define SHUTDOWN {.kind = STEP_SHUTDOWN}
#define STATE(name) {.kind = STEP_STATE, .bytes = (name)}
#define TLS_DONE {.kind = STEP_TLS}

struct want_txn {
    const char *sender; /* NULL: no more transactions expected */
    const char *rcpts;  /* joined with ',' */
    const char *helo;   /* as it must appear in Received: (default "client.example") */
    const char *proto;  /* default "ESMTP" */
    const char *tls;    /* txn->tls and Received: (TLS ...); default "none" */
    const char *data;   /* message bytes after our Received: (NULL: only check data_len) */
    size_t data_len;
    bool smtputf8;
};

struct session_case {
    const char *name;
    struct step steps[12];
    const char *want;      /* the whole output; "<ID>" for the id in "queued as" */
    const char *state;     /* state at the end (default: unchecked) */
    struct want_txn txns[3];
    const char *checked;   /* addresses passed to check_rcpt, each followed by ';' */
    const char *peer;      /* default 192.0.2.1 */
    size_t max_size;       /* default 1000 */
    unsigned max_rcpts;    /* default 3 */
    ssize_t reserve_limit; /* 0: unlimited */
    bool sync_commit;      /* ops.commit answers OK from inside the call */
    bool starttls;         /* STARTTLS offered (ops.starttls set) */
    bool tls_unavailable;  /* ops.starttls fails (-ENOMEM) */
    unsigned tls_calls;    /* how many times ops.starttls must have been called */
};

static const struct session_case cases[] = {
    /* --- greeting, EHLO/HELO ------------------------------------------------------------ */
    {.name = "greeting then QUIT",
     .steps = {FEED("QUIT\r\n")},
     .want = GREETING BYE,
     .state = "closing"},
    {.name = "EHLO lists the extensions",
     .steps = {FEED("EHLO client.example\r\n")},
     .want = GREETING EHLO_REPLY,
     .state = "greeted"},
    {.name = "HELO",
     .steps = {FEED("HELO client.example\r\n")},
     .want = GREETING "250 " HOST "\r\n",
     .state = "greeted"},
    {.name = "EHLO/HELO without argument",
     .steps = {FEED("EHLO\r\nHELO   \r\nehlo \r\n")},
     .want = GREETING "501 5.5.4 Syntax: EHLO hostname\r\n501 5.5.4 Syntax: HELO hostname\r\n"
                      "501 5.5.4 Syntax: EHLO hostname\r\n",
     .state = "connected"},
    {.name = "verbs are case-insensitive, bare LF lines accepted",
     .steps = {FEED("eHlO client.example\nmail from:<alice@sender.example>\r\n"
                    "rCpT tO:<bob@example.com>\nnoop\r\n")},
     .want = GREETING EHLO_REPLY OK_MAIL OK_RCPT OK,
     .state = "rcpt"},

    /* --- MAIL ----------------------------------------------------------------------------- */
    {.name = "MAIL before HELO",
     .steps = {FEED("MAIL FROM:<alice@sender.example>\r\n")},
     .want = GREETING "503 5.5.1 Error: send HELO/EHLO first\r\n",
     .state = "connected"},
    {.name = "nested MAIL",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n"
                    "MAIL FROM:<b@sender.example>\r\nRCPT TO:<bob@example.com>\r\n"
                    "MAIL FROM:<b@sender.example>\r\n")},
     .want = GREETING EHLO_REPLY OK_MAIL "503 5.5.1 Error: nested MAIL command\r\n" OK_RCPT
                      "503 5.5.1 Error: nested MAIL command\r\n",
     .state = "rcpt"},
    {.name = "MAIL syntax errors",
     .steps = {FEED("EHLO client.example\r\nMAIL\r\nMAIL FROM a@b.example\r\n"
                    "MAIL TO:<a@b.example>\r\nMAIL FROM:a@b.example\r\nMAIL FROM:<a@b.example\r\n"
                    "MAIL FROM:<a@b.example>x\r\nMAIL FROM:<a@b.example> SIZE=\r\n"
                    "MAIL FROM:<a@b.example> SIZE=12k\r\n")},
     .want = GREETING EHLO_REPLY MAIL_SYNTAX MAIL_SYNTAX MAIL_SYNTAX MAIL_SYNTAX MAIL_SYNTAX
                 MAIL_SYNTAX MAIL_SYNTAX MAIL_SYNTAX,
     .state = "greeted"},
    {.name = "bad sender addresses",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<alice>\r\nMAIL FROM:<@b.example>\r\n"
                    "MAIL FROM:<a@>\r\nMAIL FROM:<a@b..example>\r\nMAIL FROM:<a b@c.example>\r\n"
                    "MAIL FROM:<postmaster>\r\nMAIL FROM:<a@b.exa(mple>\r\nMAIL FROM:<\"a@b.example>\r\n"
                    "MAIL FROM:<a@[]>\r\nMAIL FROM:<.@>\r\n")},
     .want = GREETING EHLO_REPLY BAD_SENDER BAD_SENDER BAD_SENDER BAD_SENDER BAD_SENDER BAD_SENDER
                 BAD_SENDER MAIL_SYNTAX BAD_SENDER BAD_SENDER,
     .state = "greeted"},
    {.name = "null sender, space after colon, source route, quoted local part",
     .steps = {FEED(START_IN "DATA\r\n.\r\nMAIL FROM: <>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n.\r\n"
                             "MAIL FROM:<@relay.example,@b.example:carol@sender.example>\r\n"
                             "RCPT TO:<bob@example.com>\r\nDATA\r\n.\r\n"
                             "MAIL FROM:<\"dave <x> smith\"@sender.example>\r\n")},
     .sync_commit = true,
     .want = START_OUT GO_AHEAD QUEUED OK_MAIL OK_RCPT GO_AHEAD QUEUED OK_MAIL OK_RCPT GO_AHEAD
                 QUEUED OK_MAIL,
     .state = "mail",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = ""},
              {.sender = "", .rcpts = "bob@example.com", .data = ""},
              {.sender = "carol@sender.example", .rcpts = "bob@example.com", .data = ""}}},
    {.name = "MAIL parameters",
     .steps = {FEED("EHLO client.example\r\n"
                    "MAIL FROM:<a@b.example> SIZE=1001\r\n"
                    "MAIL FROM:<a@b.example> SIZE=99999999999999999999999999\r\n"
                    "MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"
                    "MAIL FROM:<a@b.example> FOO=bar\r\n"
                    "MAIL FROM:<a@b.example> SMTPUTF8=yes\r\n"
                    "MAIL FROM:<a@b.example> size=1000 body=8bitmime smtputf8\r\n"
                    "RSET\r\nMAIL FROM:<a@b.example>   BODY=7BIT   SIZE=0\r\n")},
     .want = GREETING EHLO_REPLY TOO_BIG TOO_BIG UNSUPPORTED UNSUPPORTED UNSUPPORTED OK_MAIL OK
                 OK_MAIL,
     .state = "mail"},
    {.name = "SMTPUTF8: required for unicode addresses, which must be valid UTF-8",
     .steps = {FEED("EHLO client.example\r\n"
                    "MAIL FROM:<j\xc3\xb6rg@sender.example>\r\n"
                    "MAIL FROM:<j\xff@sender.example> SMTPUTF8\r\n"
                    "MAIL FROM:<alice@sender.example>\r\n"
                    "RCPT TO:<b\xc3\xb8\x62@example.com>\r\n"
                    "RSET\r\n"
                    "MAIL FROM:<j\xc3\xb6rg@s\xc3\xa9nder.example> SMTPUTF8\r\n"
                    "RCPT TO:<b\xc3\xb8\x62@example.com>\r\n"
                    "RCPT TO:<b\xc3@example.com>\r\n"
                    "DATA\r\n.\r\n")},
     .sync_commit = true,
     .want = GREETING EHLO_REPLY NEED_UTF8 BAD_SENDER OK_MAIL NEED_UTF8 OK OK_MAIL OK_RCPT BAD_RCPT
                 GO_AHEAD QUEUED,
     .txns = {{.sender = "j\xc3\xb6rg@s\xc3\xa9nder.example", .rcpts = "b\xc3\xb8\x62@example.com",
               .proto = "UTF8SMTP", .smtputf8 = true, .data = ""}}},

    /* --- RCPT ----------------------------------------------------------------------------- */
    {.name = "RCPT before MAIL",
     .steps = {FEED("RCPT TO:<bob@example.com>\r\nEHLO client.example\r\nRCPT TO:<bob@example.com>\r\n")},
     .want = GREETING NEED_MAIL EHLO_REPLY NEED_MAIL},
    {.name = "RCPT syntax, bad addresses, parameters",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\n"
                    "RCPT TO bob@example.com\r\nRCPT FROM:<bob@example.com>\r\nRCPT TO:<bob@example.com\r\n"
                    "RCPT TO:<>\r\nRCPT TO:<bob>\r\nRCPT TO:<bob@>\r\nRCPT TO:<@example.com>\r\n"
                    "RCPT TO:<bob@example.com> NOTIFY=NEVER\r\nDATA\r\n")},
     .want = GREETING EHLO_REPLY OK_MAIL RCPT_SYNTAX RCPT_SYNTAX RCPT_SYNTAX BAD_RCPT BAD_RCPT BAD_RCPT
                 BAD_RCPT UNSUPPORTED NEED_RCPT,
     .state = "mail"},
    {.name = "relaying denied for domains not hosted",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\n"
                    "RCPT TO:<bob@other.example>\r\nRCPT TO:<bob@[192.0.2.1]>\r\n"
                    "RCPT TO:<bob@example.org>\r\nRCPT TO:<bob@sub.example.org>\r\n"
                    "RCPT TO:<bob@example.com.evil>\r\nRCPT TO:<postmaster@other.example>\r\n"
                    "RCPT TO:<bob@a.sub.example.org>\r\nRCPT TO:<carol@EXAMPLE.COM.>\r\n"
                    "DATA\r\n.\r\n")},
     .sync_commit = true,
     .want = GREETING EHLO_REPLY OK_MAIL DENIED DENIED DENIED DENIED DENIED DENIED OK_RCPT OK_RCPT
                 GO_AHEAD QUEUED,
     .checked = "bob@a.sub.example.org;carol@EXAMPLE.COM;",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@a.sub.example.org,carol@EXAMPLE.COM",
               .data = ""}}},
    {.name = "duplicates count once; too many recipients",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\n"
                    "RCPT TO:<a@example.com>\r\nRCPT TO:<a@EXAMPLE.com>\r\nRCPT TO:<A@example.com>\r\n"
                    "RCPT TO:<a@example.com.>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                    "RCPT TO:<postmaster>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n.\r\n")},
     .sync_commit = true,
     .want = GREETING EHLO_REPLY OK_MAIL OK_RCPT OK_RCPT OK_RCPT OK_RCPT OK_RCPT
                 "452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n" OK_RCPT GO_AHEAD
                     QUEUED,
     .txns = {{.sender = "alice@sender.example", .rcpts = "a@example.com,A@example.com,b@example.com",
               .data = ""}}},
    {.name = "check_rcpt refuses; postmaster is never asked",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\n"
                    "RCPT TO:<nobody@example.com>\r\nDATA\r\nRCPT TO:<Postmaster>\r\n"
                    "RCPT TO:<POSTMASTER>\r\nRCPT TO:<PostMaster@Example.COM>\r\n"
                    "RCPT TO:<bob@example.com>\r\nDATA\r\n.\r\n")},
     .sync_commit = true,
     .max_rcpts = 10,
     .want = GREETING EHLO_REPLY OK_MAIL "550 5.1.1 No such recipient\r\n" NEED_RCPT OK_RCPT OK_RCPT
                 OK_RCPT OK_RCPT GO_AHEAD QUEUED,
     .checked = "nobody@example.com;bob@example.com;",
     .txns = {{.sender = "alice@sender.example",
               .rcpts = "Postmaster,PostMaster@Example.COM,bob@example.com",
               .data = ""}}},

    /* --- DATA and commit ------------------------------------------------------------------ */
    {.name = "DATA out of sequence and with an argument",
     .steps = {FEED("DATA\r\nEHLO client.example\r\nDATA\r\nMAIL FROM:<alice@sender.example>\r\n"
                    "DATA\r\nRCPT TO:<bob@example.com>\r\nDATA now\r\n")},
     .want = GREETING NEED_MAIL EHLO_REPLY NEED_MAIL OK_MAIL NEED_RCPT OK_RCPT
                 "501 5.5.4 Syntax: DATA\r\n",
     .state = "rcpt"},
    {.name = "a message, committed later",
     .steps = {FEED(START_IN "DATA\r\n"), STATE("data"),
               FEED("Subject: hi\r\n\r\nHello\r\n.\r\n"), STATE("committing"), DONE(OK),
               STATE("greeted"), FEED("QUIT\r\n")},
     .want = START_OUT GO_AHEAD QUEUED BYE,
     .state = "closing",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com",
               .data = "Subject: hi\r\n\r\nHello\r\n"}}},
    {.name = "HELO gives proto SMTP; IPv6 peer",
     .steps = {FEED("HELO client.example\r\nMAIL FROM:<a@sender.example>\r\n"
                    "RCPT TO:<bob@example.com>\r\nDATA\r\nx\r\n.\r\n"),
               DONE(OK)},
     .peer = "2001:db8::25",
     .want = GREETING "250 " HOST "\r\n" OK_MAIL OK_RCPT GO_AHEAD QUEUED,
     .txns = {{.sender = "a@sender.example", .rcpts = "bob@example.com", .proto = "SMTP",
               .data = "x\r\n"}}},
    {.name = "HELO name sanitized in Received:",
     .steps = {FEED("EHLO a(b)[c];d\\e\xc3\xa9\xe2\x82\xac\xff\"x\r\nMAIL FROM:<a@sender.example>\r\n"
                    "RCPT TO:<bob@example.com>\r\nDATA\r\nx\r\n.\r\n"),
               DONE(OK)},
     .want = GREETING "250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
                      "250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n" OK_MAIL OK_RCPT GO_AHEAD QUEUED,
     .txns = {{.sender = "a@sender.example", .rcpts = "bob@example.com",
               .helo = "a?b??c??d?e\xc3\xa9????\"x", .data = "x\r\n"}}},
    {.name = "commit TEMPFAIL and NOSPACE, then a new transaction",
     .steps = {FEED(START_IN "DATA\r\nx\r\n.\r\n"), DONE(TEMPFAIL),
               FEED("MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\ny\r\n.\r\n"),
               DONE(NOSPACE), FEED("RCPT TO:<bob@example.com>\r\n")},
     .want = START_OUT GO_AHEAD "451 4.3.0 Error: queue file write error\r\n" OK_MAIL OK_RCPT GO_AHEAD
                 NO_STORAGE NEED_MAIL,
     .state = "greeted",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n"},
              {.sender = "a@sender.example", .rcpts = "bob@example.com", .data = "y\r\n"}}},
    {.name = "pipelining: everything in one chunk, commit later, the rest after",
     .steps = {FEED("EHLO client.example\r\nMAIL FROM:<alice@sender.example>\r\nRCPT TO:<bob@example.com>\r\n"
                    "RCPT TO:<carol@example.com>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n"
                    "MAIL FROM:<x@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
                    "second\r\n.\r\nQUIT\r\n"),
               STATE("committing"), DONE(OK), STATE("committing"), DONE(OK)},
     .want = GREETING EHLO_REPLY OK_MAIL OK_RCPT OK_RCPT GO_AHEAD QUEUED OK_MAIL OK_RCPT GO_AHEAD
                 QUEUED BYE,
     .state = "closing",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com,carol@example.com",
               .data = "Subject: s\r\n\r\nbody\r\n"},
              {.sender = "x@sender.example", .rcpts = "bob@example.com", .data = "second\r\n"}}},
    {.name = "dot-stuffing",
     .steps = {FEED(START_IN "DATA\r\n..leading\r\n...\r\n.x\r\nmid.dle\r\n..\r\n.\r\n"), DONE(OK)},
     .want = START_OUT GO_AHEAD QUEUED,
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com",
               .data = ".leading\r\n..\r\nx\r\nmid.dle\r\n.\r\n"}}},
    {.name = "smuggling: LF.LF, LF.CRLF, CRLF.LF, CR.CR, CRLF.CR never end the data",
     .steps = {FEED(START_IN "DATA\r\nA\n.\nMAIL FROM:<evil@x.example>\nB\n.\r\nC\r.\rD\r\n.\n"
                             "E\r\n.\rF\r\nG\rH\nI\r\r\n"),
               STATE("data"), FEED(".\r\n"), STATE("committing"), DONE(OK)},
     .want = START_OUT GO_AHEAD QUEUED,
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com",
               .data = "A\n.\nMAIL FROM:<evil@x.example>\nB\n.\r\nC\r.\rD\r\n.\nE\r\n.\rF\r\nG\rH\nI\r\r\n"}}},
    {.name = "empty message; the start of DATA counts as after CRLF",
     .steps = {FEED(START_IN "DATA\r\n.\r\n"), DONE(OK)},
     .want = START_OUT GO_AHEAD QUEUED,
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = ""}}},
    {.name = "data without a final CRLF before the dot stays in DATA",
     .steps = {FEED(START_IN "DATA\r\nno end.\r\n\n.\r\n"), STATE("data")},
     .want = START_OUT GO_AHEAD,
     .state = "data"},
    {.name = "message exactly at the size limit",
     .steps = {FEED(START_IN "DATA\r\n"), FILL(998), FEED("\r\n.\r\n"), DONE(OK)},
     .want = START_OUT GO_AHEAD QUEUED,
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data_len = 1000}}},
    {.name = "message over the size limit: 552 after the dot, nothing committed",
     .steps = {FEED(START_IN "DATA\r\n"), FILL(999), FEED("\r\n"), STATE("data"), FEED(".\r\n"),
               FEED("NOOP\r\n")},
     .want = START_OUT GO_AHEAD TOO_BIG OK,
     .state = "greeted"},
    {.name = "hops: exactly max_hops Received: fields is fine",
     .steps = {FEED(START_IN "DATA\r\nReceived: a\r\nreceived : b\r\nX-Received: c\r\n"
                             "RECEIVED:d\r\n\r\nReceived: in the body\r\n.\r\n"),
               DONE(OK)},
     .want = START_OUT GO_AHEAD QUEUED,
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com",
               .data = "Received: a\r\nreceived : b\r\nX-Received: c\r\nRECEIVED:d\r\n\r\n"
                       "Received: in the body\r\n"}}},
    {.name = "hops: one more is a loop",
     .steps = {FEED(START_IN "DATA\r\nReceived: a\r\nReceived: b\r\n Received: folded\r\n"
                             "Received: c\r\nReceived\t: d\r\n\r\nbody\r\n.\r\nNOOP\r\n")},
     .want = START_OUT GO_AHEAD "554 5.4.6 Mail loop detected\r\n" OK,
     .state = "greeted"},
    {.name = "hops: bare LF header lines count too",
     .steps = {FEED(START_IN "DATA\r\nReceived: a\nReceived: b\nReceived: c\nReceived: d\n\nbody\r\n.\r\n"
                             "NOOP\r\n")},
     .want = START_OUT GO_AHEAD "554 5.4.6 Mail loop detected\r\n" OK},
    {.name = "reserve refusing the first buffer",
     .steps = {FEED(START_IN "DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n")},
     .reserve_limit = 100,
     .want = START_OUT GO_AHEAD NO_STORAGE OK,
     .state = "greeted"},
    {.name = "reserve refusing growth",
     .steps = {FEED(START_IN "DATA\r\n"), FILL(20000), FEED("\r\n.\r\n")},
     .max_size = 100000,
     .reserve_limit = 10000,
     .want = GREETING "250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
                      "250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n" OK_MAIL OK_RCPT GO_AHEAD NO_STORAGE},
    {.name = "commit answered from inside ops.commit, pipelined commands go on",
     .steps = {FEED(START_IN "DATA\r\nx\r\n.\r\nNOOP\r\nQUIT\r\n")},
     .sync_commit = true,
     .want = START_OUT GO_AHEAD QUEUED OK BYE,
     .state = "closing",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n"}}},

    /* --- other commands ------------------------------------------------------------------- */
    {.name = "RSET, NOOP, HELP, VRFY, not implemented, unknown",
     .steps = {FEED("RSET\r\nNOOP\r\nNOOP with args\r\nHELP\r\nVRFY bob\r\nEXPN list\r\nTURN\r\nETRN x\r\n"
                    "BDAT 10\r\nAUTH PLAIN\r\nSTARTTLS\r\nFOO\r\nMAILFROM:<a@b.example>\r\n")},
     .want = GREETING OK OK OK "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY\r\n"
                      "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
                      R502 R502 R502 R502 R502 R502 R500 R500,
     .state = "connected"},

    /* --- STARTTLS (RFC 3207) ------------------------------------------------------------- */
    {.name = "EHLO advertises STARTTLS when offered",
     .steps = {FEED("EHLO client.example\r\n")},
     .starttls = true,
     .want = GREETING EHLO_REPLY_TLS,
     .state = "greeted"},
    {.name = "STARTTLS: 220, handshake, the session starts over under TLS",
     .steps = {FEED("EHLO client.example\r\nSTARTTLS\r\n"), STATE("starttls"), TLS_DONE, STATE("connected"),
               FEED("MAIL FROM:<a@sender.example>\r\nEHLO client.example\r\n" START_IN_TXN "DATA\r\nx\r\n.\r\n"),
               DONE(OK)},
     .starttls = true,
     .tls_calls = 1,
     .want = GREETING EHLO_REPLY_TLS READY_TLS NEED_HELO EHLO_REPLY OK_MAIL OK_RCPT GO_AHEAD QUEUED,
     .state = "greeted",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n",
               .proto = "ESMTPS", .tls = TLS_DESC}}},
    {.name = "plaintext pipelined after STARTTLS is discarded, never answered (CVE-2011-0411)",
     .steps = {FEED("EHLO client.example\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@sender.example>\r\nNOOP"),
               STATE("starttls"), FEED("\r\nQUIT\r\n"), STATE("starttls"), TLS_DONE,
               FEED("RCPT TO:<bob@example.com>\r\nNOOP\r\n")},
     .starttls = true,
     .tls_calls = 1,
     .want = GREETING EHLO_REPLY_TLS READY_TLS NEED_MAIL OK,
     .state = "connected"},
    {.name = "STARTTLS: syntax, sequence, already active",
     .steps = {FEED("STARTTLS\r\nEHLO client.example\r\nSTARTTLS now\r\nMAIL FROM:<a@sender.example>\r\n"
                    "STARTTLS\r\nRCPT TO:<bob@example.com>\r\nstarttls\r\nRSET\r\nStartTLS\r\n"),
               TLS_DONE, FEED("EHLO client.example\r\nSTARTTLS\r\nNOOP\r\n")},
     .starttls = true,
     .tls_calls = 1,
     .want = GREETING NEED_HELO EHLO_REPLY_TLS TLS_SYNTAX OK_MAIL TLS_IN_TXN OK_RCPT TLS_IN_TXN OK
                 READY_TLS EHLO_REPLY TLS_ACTIVE OK,
     .state = "greeted"},
    {.name = "STARTTLS not offered: 502 whatever the state",
     .steps = {FEED("STARTTLS\r\nEHLO client.example\r\nSTARTTLS\r\nSTARTTLS x\r\n"
                    "MAIL FROM:<a@sender.example>\r\nSTARTTLS\r\n")},
     .want = GREETING R502 EHLO_REPLY R502 R502 OK_MAIL R502,
     .state = "mail"},
    {.name = "TLS unavailable: 454 and the session goes on in plaintext",
     .steps = {FEED("EHLO client.example\r\nSTARTTLS\r\nNOOP\r\n" START_IN_TXN "DATA\r\nx\r\n.\r\n"),
               DONE(OK)},
     .starttls = true,
     .tls_unavailable = true,
     .tls_calls = 1,
     .want = GREETING EHLO_REPLY_TLS TLS_UNAVAILABLE OK OK_MAIL OK_RCPT GO_AHEAD QUEUED,
     .state = "greeted",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n"}}},
    {.name = "timeout during the handshake closes without a plaintext word",
     .steps = {FEED("EHLO client.example\r\nSTARTTLS\r\n"), TIMEOUT, FEED("NOOP\r\n")},
     .starttls = true,
     .tls_calls = 1,
     .want = GREETING EHLO_REPLY_TLS READY_TLS,
     .state = "closing"},
    {.name = "shutdown during the handshake waits for its end",
     .steps = {FEED("EHLO client.example\r\nSTARTTLS\r\n"), SHUTDOWN, STATE("starttls"), TLS_DONE},
     .starttls = true,
     .tls_calls = 1,
     .want = GREETING EHLO_REPLY_TLS READY_TLS SHUTTING,
     .state = "closing"},
    {.name = "HELO and SMTPUTF8 under TLS: protocol names",
     .steps = {FEED("EHLO client.example\r\nSTARTTLS\r\n"), TLS_DONE,
               FEED("HELO client.example\r\n" START_IN_TXN "DATA\r\nx\r\n.\r\n"), DONE(OK),
               FEED("EHLO client.example\r\nMAIL FROM:<b@sender.example> SMTPUTF8\r\n"
                    "RCPT TO:<bob@example.com>\r\nDATA\r\ny\r\n.\r\n"),
               DONE(OK)},
     .starttls = true,
     .tls_calls = 1,
     .want = GREETING EHLO_REPLY_TLS READY_TLS "250 " HOST "\r\n" OK_MAIL OK_RCPT GO_AHEAD QUEUED
                 EHLO_REPLY OK_MAIL OK_RCPT GO_AHEAD QUEUED,
     .state = "greeted",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n",
               .proto = "SMTP", .tls = TLS_DESC},
              {.sender = "b@sender.example", .rcpts = "bob@example.com", .data = "y\r\n",
               .proto = "UTF8SMTPS", .tls = TLS_DESC, .smtputf8 = true}}},

    {.name = "RSET and EHLO end the transaction",
     .steps = {FEED(START_IN "RSET\r\nRCPT TO:<bob@example.com>\r\nMAIL FROM:<a@sender.example>\r\n"
                             "EHLO again.example\r\nRCPT TO:<bob@example.com>\r\n")},
     .want = START_OUT OK NEED_MAIL OK_MAIL EHLO_REPLY NEED_MAIL,
     .state = "greeted"},
    {.name = "control bytes and empty lines are syntax errors",
     .steps = {FEED("NOOP\0\r\nNO\x01OP\r\nNOOP\r\r\n\r\n  \r\nNOOP\x7f\r\nNOOP\t\r\n")},
     .want = GREETING R500_SYNTAX R500_SYNTAX R500_SYNTAX R500_SYNTAX R500_SYNTAX R500_SYNTAX OK},
    {.name = "too many bad commands: 421 and nothing more is read",
     .steps = {FEED("FOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\n"
                    "FOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nFOO\r\nNOOP\r\nEHLO\r\n"
                    "MAIL FROM:<a@b.example>\r\nBAR\r\nNOOP\r\n")},
     .want = GREETING R500 R500 R500 R500 R500 R500 R500 R500 R500 R500 R500 R500 R500 R500 R500 R500
                 R500 R500 OK "501 5.5.4 Syntax: EHLO hostname\r\n"
                 "503 5.5.1 Error: send HELO/EHLO first\r\n" R500
                 "421 4.7.0 " HOST " Error: too many errors\r\n",
     .state = "closing"},

    /* --- timeout and shutdown ------------------------------------------------------------- */
    {.name = "timeout when idle",
     .steps = {FEED("EHLO client.example\r\n"), TIMEOUT, FEED("NOOP\r\n")},
     .want = GREETING EHLO_REPLY "421 4.4.2 " HOST " Error: timeout exceeded\r\n",
     .state = "closing"},
    {.name = "timeout in DATA drops the transaction",
     .steps = {FEED(START_IN "DATA\r\nhalf a mess"), TIMEOUT},
     .want = START_OUT GO_AHEAD "421 4.4.2 " HOST " Error: timeout exceeded\r\n",
     .state = "closing"},
    {.name = "timeout while committing; the late commit reply is dropped",
     .steps = {FEED(START_IN "DATA\r\nx\r\n.\r\n"), TIMEOUT, DONE(OK)},
     .want = START_OUT GO_AHEAD "421 4.4.2 " HOST " Error: timeout exceeded\r\n",
     .state = "closing",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n"}}},
    {.name = "shutdown when idle",
     .steps = {FEED("EHLO client.example\r\n"), SHUTDOWN, FEED("NOOP\r\n")},
     .want = GREETING EHLO_REPLY SHUTTING,
     .state = "closing"},
    {.name = "shutdown in a transaction waits for its end",
     .steps = {FEED(START_IN), SHUTDOWN, STATE("rcpt"), FEED("NOOP\r\nDATA\r\nx\r\n.\r\n"),
               STATE("committing"), DONE(OK), FEED("NOOP\r\n")},
     .want = START_OUT OK GO_AHEAD QUEUED SHUTTING,
     .state = "closing",
     .txns = {{.sender = "alice@sender.example", .rcpts = "bob@example.com", .data = "x\r\n"}}},
    {.name = "shutdown in a transaction, ended by RSET",
     .steps = {FEED(START_IN), SHUTDOWN, FEED("RSET\r\nNOOP\r\n")},
     .want = START_OUT OK SHUTTING,
     .state = "closing"},
    {.name = "shutdown in DATA, ended by an error",
     .steps = {FEED(START_IN "DATA\r\n"), SHUTDOWN, FILL(1200), FEED("\r\n.\r\nNOOP\r\n")},
     .want = START_OUT GO_AHEAD TOO_BIG SHUTTING,
     .state = "closing"},
};

/* ------------------------------------------------------------------------------------------
 * The fake engine */

struct fake {
    struct smtp_session *s;
    struct smtp_txn *txns[8];
    size_t ntxns;
    ssize_t reserved, reserve_limit;
    bool sync_commit;
    bool tls_unavailable;
    unsigned tls_calls;
    GString *checked;
};

static void fake_commit(void *ctx, struct smtp_txn *txn)
{
    struct fake *f = ctx;
    if (f->ntxns < G_N_ELEMENTS(f->txns)) f->txns[f->ntxns++] = txn;
    else smtp_txn_free(txn);
    if (f->sync_commit) smtp_session_commit_done(f->s, SMTP_COMMIT_OK);
}

static const char *fake_check_rcpt(void *ctx, const char *addr)
{
    struct fake *f = ctx;
    g_string_append_printf(f->checked, "%s;", addr);
    if (strncmp(addr, "limit", 5) == 0) return "451 4.3.0 Error: route matching limit reached for this recipient";
    if (strncmp(addr, "budget@", 7) == 0) return "421 4.7.0 " HOST " Error: too much time spent on recipients";
    return strncmp(addr, "nobody", 6) == 0 ? "550 5.1.1 No such recipient" : NULL;
}

static bool fake_reserve(void *ctx, ssize_t delta)
{
    struct fake *f = ctx;
    if (delta > 0 && f->reserve_limit && f->reserved + delta > f->reserve_limit) return false;
    f->reserved += delta;
    return true;
}

static int fake_starttls(void *ctx)
{
    struct fake *f = ctx;
    f->tls_calls++;
    return f->tls_unavailable ? -ENOMEM : 0;
}

static struct domain_set *hosted;

static const struct smtp_session_ops fake_ops = {
    .commit = fake_commit, .check_rcpt = fake_check_rcpt, .reserve = fake_reserve};
/* STARTTLS offered. */
static const struct smtp_session_ops fake_ops_tls = {
    .commit = fake_commit, .check_rcpt = fake_check_rcpt, .reserve = fake_reserve,
    .starttls = fake_starttls};

static struct smtp_session_config test_config(const struct session_case *c)
{
    return (struct smtp_session_config){
        .hostname = HOST,
        .domains = hosted,
        .max_message_size = c->max_size ? c->max_size : 1000,
        .max_recipients = c->max_rcpts ? c->max_rcpts : 3,
        .max_hops = 3,
    };
}

/* ------------------------------------------------------------------------------------------
 * The driver: plays the I/O layer */

enum mode { MODE_WHOLE, MODE_BYTES, MODE_RANDOM };
static const char *const mode_names[] = {"whole", "byte by byte", "random splits"};

struct run {
    struct fake f;
    GString *out;     /* everything the session said */
    GString *pending; /* client bytes not consumed yet */
    uint32_t rng;
};

static void drain(struct run *r)
{
    size_t len;
    char *out = smtp_session_take_output(r->f.s, &len);
    if (out) g_string_append_len(r->out, out, (gssize)len);
    free(out);
}

/* Feeds what is pending, in the mode's chunks, until it is all consumed or the session stops
 * taking bytes (a commit in flight, closing). */
static void pump(struct run *r, enum mode mode)
{
    while (r->pending->len > 0) {
        size_t chunk = r->pending->len;
        if (mode == MODE_BYTES) chunk = 1;
        if (mode == MODE_RANDOM) {
            r->rng = r->rng * 1103515245u + 12345u;
            chunk = 1 + (r->rng >> 16) % 17;
            if (chunk > r->pending->len) chunk = r->pending->len;
        }
        size_t n = smtp_session_feed(r->f.s, r->pending->str, chunk);
        drain(r);
        g_string_erase(r->pending, 0, (gssize)n);
        if (n < chunk) break;
    }
}

static void fill(GString *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) g_string_append_c(buf, i % 100 == 98 ? '\r' : i % 100 == 99 ? '\n' : 'x');
}

/* "queued as <24 hex>" → "queued as <ID>". */
static void normalize_ids(GString *out)
{
    static const char tag[] = "queued as ";
    for (char *p = strstr(out->str, tag); p; p = strstr(p, tag)) {
        p += sizeof tag - 1;
        size_t pos = (size_t)(p - out->str);
        if (out->len - pos >= ID_LEN && strspn(p, "0123456789abcdef") >= ID_LEN) {
            g_string_erase(out, (gssize)pos, ID_LEN);
            g_string_insert(out, (gssize)pos, "<ID>");
            p = out->str + pos;
        }
    }
}

static void check_txn(const struct session_case *c, const char *what, size_t i,
                      const struct smtp_txn *t, const struct want_txn *w)
{
    const char *peer = c->peer ? c->peer : "192.0.2.1";
    CHECK_STR(t->sender, w->sender, "%s [%s]: txn %zu sender", c->name, what, i);
    GString *rcpts = g_string_new(NULL);
    for (size_t k = 0; k < t->nrcpts; k++) g_string_append_printf(rcpts, "%s%s", k ? "," : "", t->rcpts[k]);
    CHECK_STR(rcpts->str, w->rcpts, "%s [%s]: txn %zu rcpts", c->name, what, i);
    g_string_free(rcpts, TRUE);
    CHECK(t->smtputf8 == w->smtputf8, "%s [%s]: txn %zu smtputf8", c->name, what, i);
    CHECK(strlen(t->id) == ID_LEN, "%s [%s]: txn %zu id", c->name, what, i);
    const char *tls = w->tls ? w->tls : "none";
    CHECK_STR(t->tls, tls, "%s [%s]: txn %zu tls", c->name, what, i);
    CHECK_STR(t->peer_ip, peer, "%s [%s]: txn %zu peer", c->name, what, i);
    CHECK(t->received_at_ms > 0, "%s [%s]: txn %zu received_at", c->name, what, i);

    /* Received: our header, exactly, with the date checked for shape. */
    char *head = g_strdup_printf("Received: from %s ([%s%s])\r\n\tby " HOST " (inlet) with %s id %s\r\n"
                                 "\t(TLS %s);\r\n\t",
                                 w->helo ? w->helo : "client.example", strchr(peer, ':') ? "IPv6:" : "",
                                 peer, w->proto ? w->proto : "ESMTP", t->id, tls);
    size_t hl = strlen(head);
    bool head_ok = t->len >= hl && memcmp(t->data, head, hl) == 0;
    CHECK(head_ok, "%s [%s]: txn %zu Received: header", c->name, what, i);
    if (!head_ok) printf("#   got: %.*s\n#  want: %s\n", (int)(t->len < hl ? t->len : hl), t->data, head);
    const uint8_t *date = t->data + hl;
    const uint8_t *eol = head_ok ? memchr(date, '\r', t->len - hl) : NULL;
    bool date_ok = eol && eol - date == 31 && memcmp(eol - 6, " +0000\r\n", 8) == 0;
    CHECK(date_ok, "%s [%s]: txn %zu Received: date", c->name, what, i);
    if (date_ok) {
        const char *body = (const char *)eol + 2;
        size_t blen = t->len - (size_t)(body - (const char *)t->data);
        size_t want_len = w->data ? strlen(w->data) : w->data_len;
        CHECK(blen == want_len, "%s [%s]: txn %zu data length %zu (want %zu)", c->name, what, i, blen, want_len);
        if (w->data) {
            bool same = blen == want_len && memcmp(body, w->data, blen) == 0;
            CHECK(same, "%s [%s]: txn %zu data", c->name, what, i);
        }
    }
    g_free(head);
}

static void run_case(const struct session_case *c, enum mode mode)
{
    const char *what = mode_names[mode];
    struct run r = {.out = g_string_new(NULL), .pending = g_string_new(NULL), .rng = 42};
    r.f.reserve_limit = c->reserve_limit;
    r.f.sync_commit = c->sync_commit;
    r.f.tls_unavailable = c->tls_unavailable;
    r.f.checked = g_string_new(NULL);
    struct smtp_session_config cfg = test_config(c);
    r.f.s = smtp_session_new(&cfg, c->peer ? c->peer : "192.0.2.1", c->starttls ? &fake_ops_tls : &fake_ops,
                             &r.f);
    smtp_session_start(r.f.s);
    drain(&r);

    for (const struct step *st = c->steps; st->kind != STEP_END; st++) {
        switch (st->kind) {
        case STEP_FEED: g_string_append_len(r.pending, st->bytes, (gssize)st->len); break;
        case STEP_FILL: fill(r.pending, st->len); break;
        case STEP_DONE: smtp_session_commit_done(r.f.s, st->status); break;
        case STEP_TIMEOUT: smtp_session_timeout(r.f.s); break;
        case STEP_SHUTDOWN: smtp_session_shutdown(r.f.s); break;
        case STEP_TLS: smtp_session_tls_started(r.f.s, TLS_DESC); break;
        case STEP_STATE:
            CHECK_STR(smtp_session_state_name(r.f.s), st->bytes, "%s [%s]: state at step %d", c->name,
                      what, (int)(st - c->steps));
            break;
        case STEP_END: break;
        }
        drain(&r);
        pump(&r, mode);
    }
    normalize_ids(r.out);
    CHECK_STR(r.out->str, c->want, "%s [%s]: replies", c->name, what);
    if (c->state) CHECK_STR(smtp_session_state_name(r.f.s), c->state, "%s [%s]: final state", c->name, what);
    if (c->checked) CHECK_STR(r.f.checked->str, c->checked, "%s [%s]: check_rcpt calls", c->name, what);
    CHECK(r.f.tls_calls == c->tls_calls, "%s [%s]: ops.starttls called %u times (want %u)", c->name, what,
          r.f.tls_calls, c->tls_calls);

    size_t want_n = 0;
    while (want_n < G_N_ELEMENTS(c->txns) && c->txns[want_n].sender) want_n++;
    CHECK(r.f.ntxns == want_n, "%s [%s]: %zu commits (want %zu)", c->name, what, r.f.ntxns, want_n);
    ssize_t held = 0;
    for (size_t i = 0; i < r.f.ntxns; i++) {
        if (i < want_n) check_txn(c, what, i, r.f.txns[i], &c->txns[i]);
        held += (ssize_t)r.f.txns[i]->reserved;
    }
    /* Outside DATA the session itself holds nothing: every reserved byte is in a txn. */
    bool in_data = strcmp(smtp_session_state_name(r.f.s), "data") == 0;
    CHECK(in_data ? r.f.reserved > held : r.f.reserved == held,
          "%s [%s]: reservation held by txns (%zd vs %zd)", c->name, what, r.f.reserved, held);
    smtp_session_free(r.f.s);
    for (size_t i = 0; i < r.f.ntxns; i++) {
        r.f.reserved -= (ssize_t)r.f.txns[i]->reserved;
        smtp_txn_free(r.f.txns[i]);
    }
    CHECK(r.f.reserved == 0, "%s [%s]: every reserved byte given back", c->name, what);
    g_string_free(r.out, TRUE);
    g_string_free(r.pending, TRUE);
    g_string_free(r.f.checked, TRUE);
}

/* ------------------------------------------------------------------------------------------
 * Cases that need computed input */

static struct smtp_session *new_session(struct fake *f, const struct session_case *c)
{
    memset(f, 0, sizeof *f);
    f->checked = g_string_new(NULL);
    struct smtp_session_config cfg = test_config(c);
    f->s = smtp_session_new(&cfg, "192.0.2.1", &fake_ops, f);
    return f->s;
}

static void end_session(struct fake *f)
{
    smtp_session_free(f->s);
    for (size_t i = 0; i < f->ntxns; i++) {
        f->reserved -= (ssize_t)f->txns[i]->reserved;
        smtp_txn_free(f->txns[i]);
    }
    g_string_free(f->checked, TRUE);
}

/* Feeds all of `in` (nothing must be held back) and returns the replies. */
static char *say(struct smtp_session *s, const char *in, size_t len)
{
    size_t n = smtp_session_feed(s, in, len);
    CHECK(n == len, "all %zu bytes consumed (got %zu)", len, n);
    size_t olen;
    char *out = smtp_session_take_output(s, &olen);
    return out ? out : g_strdup("");
}

static void test_line_lengths(void)
{
    static const struct session_case c = {.name = "line lengths"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    char line[3 * SMTP_LINE_MAX];

    /* "NOOP " + padding + CRLF: exactly SMTP_LINE_MAX is fine, one more is too long. */
    memset(line, 'a', sizeof line);
    memcpy(line, "NOOP ", 5);
    memcpy(line + SMTP_LINE_MAX - 2, "\r\n", 2);
    char *out = say(s, line, SMTP_LINE_MAX);
    CHECK_STR(out, OK, "a %d-byte line is accepted", SMTP_LINE_MAX);
    free(out);
    memset(line, 'a', sizeof line);
    memcpy(line, "NOOP ", 5);
    memcpy(line + SMTP_LINE_MAX - 1, "\n", 1);
    out = say(s, line, SMTP_LINE_MAX);
    CHECK_STR(out, OK, "a %d-byte line with bare LF is accepted", SMTP_LINE_MAX);
    free(out);

    memset(line, 'a', sizeof line);
    memcpy(line, "NOOP ", 5);
    memcpy(line + SMTP_LINE_MAX - 1, "\r\n", 2);
    out = say(s, line, SMTP_LINE_MAX + 1);
    CHECK_STR(out, "500 5.5.2 Line too long\r\n", "a %d-byte line is too long", SMTP_LINE_MAX + 1);
    free(out);

    /* Very long, fed in pieces: one reply, the rest discarded through the LF, session goes on. */
    memset(line, 'b', sizeof line);
    memcpy(line + sizeof line - 2, "\r\n", 2);
    GString *all = g_string_new(NULL);
    for (size_t i = 0; i < sizeof line; i += 100) {
        out = say(s, line + i, sizeof line - i < 100 ? sizeof line - i : 100);
        g_string_append(all, out);
        free(out);
    }
    out = say(s, "EHLO x\r\nHELO y\r\n", 16);
    g_string_append(all, out);
    free(out);
    CHECK_STR(all->str, "500 5.5.2 Line too long\r\n250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
                        "250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n250 " HOST "\r\n",
              "long line in pieces: one 500, then the session goes on");
    g_string_free(all, TRUE);
    CHECK_STR(smtp_session_state_name(s), "greeted", "state after long lines");

    /* Lines in DATA have no length limit but the message size. */
    static const char envelope[] = "MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n";
    out = say(s, envelope, sizeof envelope - 1);
    free(out);
    memset(line, 'c', 900);
    memcpy(line + 900, "\r\n.\r\n", 5);
    f.sync_commit = true;
    out = say(s, line, 905);
    CHECK(strncmp(out, "250 2.0.0 Ok: queued as ", 24) == 0, "a 900-byte line in DATA is fine: %s", out);
    free(out);
    end_session(&f);
}

static void test_address_lengths(void)
{
    static const struct session_case c = {.name = "address lengths"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    char buf[1024];
    char local64[65], local65[66], dom255[256], dom256[257], helo[SMTP_HELO_MAX + 2];
    memset(local64, 'l', 64);
    local64[64] = '\0';
    memset(local65, 'l', 65);
    local65[65] = '\0';
    /* 255 bytes: 63 "a"s + '.', three times, then 63 'b's. */
    for (int i = 0; i < 256; i++) dom255[i] = (i % 64 == 63) ? '.' : 'a';
    dom255[255] = '\0';
    memcpy(dom256, dom255, 255);
    memcpy(dom256 + 255, "b", 2);
    memset(helo, 'h', sizeof helo);
    helo[SMTP_HELO_MAX] = '\0';

    int n = snprintf(buf, sizeof buf, "EHLO %s\r\n", helo);
    char *out = say(s, buf, (size_t)n);
    CHECK(strncmp(out, "250-", 4) == 0, "EHLO with a %d-byte name", SMTP_HELO_MAX);
    free(out);
    helo[SMTP_HELO_MAX] = 'h';
    helo[SMTP_HELO_MAX + 1] = '\0';
    n = snprintf(buf, sizeof buf, "HELO %s\r\n", helo);
    out = say(s, buf, (size_t)n);
    CHECK_STR(out, "501 5.5.4 Syntax: HELO hostname\r\n", "HELO with a %d-byte name", SMTP_HELO_MAX + 1);
    free(out);

    struct { const char *cmd, *local, *domain, *want; } rows[] = {
        {"MAIL FROM:", local64, "b.example", OK_MAIL},
        {"RSET\r\nMAIL FROM:", local65, "b.example", OK BAD_SENDER},
        {"MAIL FROM:", "a", dom255, OK_MAIL},
        {"RSET\r\nMAIL FROM:", "a", dom256, OK BAD_SENDER},
        {"MAIL FROM:", "a", "b.example", OK_MAIL},
        {"RCPT TO:", local65, "example.com", BAD_RCPT},
        {"RCPT TO:", "a", dom256, BAD_RCPT},
        {"RCPT TO:", local64, "example.com", OK_RCPT},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        n = snprintf(buf, sizeof buf, "%s<%s@%s>\r\n", rows[i].cmd, rows[i].local, rows[i].domain);
        out = say(s, buf, (size_t)n);
        CHECK_STR(out, rows[i].want, "address length row %zu", i);
        free(out);
    }
    /* A source route may make the path long, but not beyond SMTP_PATH_MAX. */
    GString *route = g_string_new("RCPT TO:<");
    while (route->len < SMTP_PATH_MAX) g_string_append(route, "@relay.example,");
    g_string_append(route, "@r.example:bob@example.com>\r\n");
    out = say(s, route->str, route->len);
    CHECK_STR(out, BAD_RCPT, "path longer than SMTP_PATH_MAX");
    free(out);
    g_string_free(route, TRUE);
    end_session(&f);
}

/* The terminator and the dot-stuffing split across two feeds at every position. */
static void test_every_split(void)
{
    static const char msg[] = START_IN "DATA\r\n.a\r\n\n.\nb\r\n..\r\n.\r\nNOOP\r\n";
    static const char want_data[] = "a\r\n\n.\nb\r\n.\r\n";
    static const struct session_case c = {.name = "split"};
    bool all_ok = true;
    for (size_t cut = 0; cut <= sizeof msg - 1; cut++) {
        struct fake f;
        struct smtp_session *s = new_session(&f, &c);
        f.sync_commit = true;
        size_t n1 = smtp_session_feed(s, msg, cut);
        size_t n2 = smtp_session_feed(s, msg + cut, sizeof msg - 1 - cut);
        size_t olen;
        char *out = smtp_session_take_output(s, &olen);
        bool ok = n1 == cut && n2 == sizeof msg - 1 - cut && f.ntxns == 1 && out &&
                  strstr(out, "Ok: queued as") && g_str_has_suffix(out, OK);
        if (ok) {
            const struct smtp_txn *t = f.txns[0];
            size_t wl = sizeof want_data - 1;
            ok = t->len > wl && memcmp(t->data + t->len - wl, want_data, wl) == 0;
        }
        if (!ok) {
            all_ok = false;
            printf("# split at %zu failed\n", cut);
        }
        free(out);
        end_session(&f);
    }
    CHECK(all_ok, "a session split in two at every position gives the same message");
}

static void test_backpressure(void)
{
    static const struct session_case c = {.name = "backpressure"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    GString *in = g_string_new(NULL);
    size_t count = SMTP_OUTPUT_MAX / 10; /* 14-byte replies: well over the limit */
    for (size_t i = 0; i < count; i++) g_string_append(in, "NOOP\r\n");
    size_t n = smtp_session_feed(s, in->str, in->len);
    CHECK(n < in->len, "feed stops when the output is full (%zu of %zu)", n, in->len);
    CHECK(n % 6 == 0, "it stops at a line boundary");
    CHECK(smtp_session_feed(s, in->str + n, in->len - n) == 0, "and takes nothing until drained");
    size_t olen, total = 0;
    char *out = smtp_session_take_output(s, &olen);
    CHECK(olen > SMTP_OUTPUT_MAX && olen < SMTP_OUTPUT_MAX + 100, "output just over the limit (%zu)", olen);
    total += olen;
    free(out);
    size_t done = n;
    while (done < in->len) {
        size_t k = smtp_session_feed(s, in->str + done, in->len - done);
        done += k;
        out = smtp_session_take_output(s, &olen);
        total += olen;
        free(out);
        if (k == 0) break;
    }
    CHECK(done == in->len && total == count * strlen(OK), "every NOOP answered after draining");
    g_string_free(in, TRUE);
    end_session(&f);
}

/* Recipient probing (relay attempts) counts toward the error limit like a bad command. */
static void test_relay_probing_limited(void)
{
    static const struct session_case c = {.name = "relay probing"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    GString *in = g_string_new(START_IN);
    for (int i = 0; i < SMTP_MAX_BAD_COMMANDS + 5; i++)
        g_string_append_printf(in, "RCPT TO:<user%d@elsewhere.example>\r\n", i);
    smtp_session_feed(s, in->str, in->len);
    size_t olen;
    char *out = smtp_session_take_output(s, &olen);
    size_t denied = 0;
    for (const char *p = out; (p = strstr(p, "550 5.7.1 Relaying denied")); p++) denied++;
    CHECK(denied == SMTP_MAX_BAD_COMMANDS, "%zu relay denials before the limit", denied);
    CHECK(out && g_str_has_suffix(out, "421 4.7.0 " HOST " Error: too many errors\r\n"),
          "then 421 4.7.0 too many errors");
    CHECK(smtp_session_closing(s), "and the session closes");
    free(out);
    g_string_free(in, TRUE);
    end_session(&f);
}

/* Guessing recipients: every route-check refusal (550 5.1.1, or 451 4.3.0 on a match limit)
 * counts toward the error limit too, so one session gets SMTP_MAX_BAD_COMMANDS route matches
 * that find nothing; a 421 from the check (its time budget) ends the session at once. */
static void test_rcpt_guessing_limited(void)
{
    static const struct session_case c = {.name = "rcpt guessing"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    GString *in = g_string_new(START_IN);
    for (int i = 0; i < SMTP_MAX_BAD_COMMANDS + 5; i++)
        g_string_append_printf(in, "RCPT TO:<%s%d@example.com>\r\n", i % 2 ? "nobody" : "limit", i);
    smtp_session_feed(s, in->str, in->len);
    size_t olen;
    char *out = smtp_session_take_output(s, &olen);
    size_t refused = 0, limited = 0;
    for (const char *p = out; (p = strstr(p, "550 5.1.1 No such recipient\r\n")); p++) refused++;
    for (const char *p = out; (p = strstr(p, "451 4.3.0 Error: route matching limit")); p++) limited++;
    CHECK(refused + limited == SMTP_MAX_BAD_COMMANDS && limited == SMTP_MAX_BAD_COMMANDS / 2,
          "%zu refusals and %zu limits before the error limit", refused, limited);
    CHECK(out && g_str_has_suffix(out, "421 4.7.0 " HOST " Error: too many errors\r\n"),
          "then 421 4.7.0 too many errors");
    CHECK(smtp_session_closing(s), "and the session closes");
    free(out);
    end_session(&f);

    s = new_session(&f, &c);
    g_string_assign(in, START_IN "RCPT TO:<bob@example.com>\r\nRCPT TO:<budget@example.com>\r\nNOOP\r\n");
    smtp_session_feed(s, in->str, in->len);
    out = smtp_session_take_output(s, &olen);
    CHECK(out && g_str_has_suffix(out, "250 2.1.5 Ok\r\n421 4.7.0 " HOST " Error: too much time spent on recipients\r\n"),
          "a 421 from the check is the last word");
    CHECK(smtp_session_closing(s), "and the session closes");
    free(out);
    g_string_free(in, TRUE);
    end_session(&f);
}

static const char *ration_postmaster(void *ctx)
{
    struct fake *f = ctx;
    g_string_append(f->checked, "postmaster;");
    return "450 4.7.1 Error: too much mail for postmaster from this client, try again later";
}

/* Postmaster skips the route check but is asked of ops.check_postmaster; a refusal there is
 * policy, not a bad command.  smtp_session_in_data() is true from the 354 to the final dot. */
static void test_postmaster_rationed_and_in_data(void)
{
    static const struct session_case c = {.name = "postmaster rationed"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    smtp_session_free(s);
    struct smtp_session_ops ops = fake_ops;
    ops.check_postmaster = ration_postmaster;
    struct smtp_session_config cfg = test_config(&c);
    s = f.s = smtp_session_new(&cfg, "192.0.2.1", &ops, &f);
    GString *in = g_string_new("EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n");
    for (int i = 0; i < SMTP_MAX_BAD_COMMANDS + 2; i++) g_string_append(in, "RCPT TO:<Postmaster@example.com>\r\n");
    g_string_append(in, "RCPT TO:<bob@example.com>\r\nDATA\r\n");
    CHECK(smtp_session_feed(s, in->str, in->len) == in->len, "all consumed");
    size_t olen;
    char *out = smtp_session_take_output(s, &olen);
    size_t refused = 0;
    for (const char *p = out; p && (p = strstr(p, "450 4.7.1 Error: too much mail for postmaster")); p++) refused++;
    CHECK(refused == SMTP_MAX_BAD_COMMANDS + 2, "every postmaster RCPT rationed (%zu)", refused);
    CHECK(!smtp_session_closing(s), "not counted as bad commands");
    CHECK(out && g_str_has_suffix(out, "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
          "other recipients unaffected");
    CHECK(strstr(f.checked->str, "postmaster;bob@example.com;") != NULL, "the route check is not asked for postmaster");
    CHECK(smtp_session_in_data(s), "in DATA after the 354");
    smtp_session_feed(s, "x\r\n.\r\n", 6);
    CHECK(!smtp_session_in_data(s), "not after the final dot");
    free(out);
    g_string_free(in, TRUE);
    end_session(&f);
}

static void test_committing_takes_nothing(void)
{
    static const struct session_case c = {.name = "committing"};
    struct fake f;
    struct smtp_session *s = new_session(&f, &c);
    static const char in[] = START_IN "DATA\r\nx\r\n.\r\nNOOP\r\n";
    size_t n = smtp_session_feed(s, in, sizeof in - 1);
    CHECK(n == sizeof in - 1 - 6, "feed stops right after the final dot");
    CHECK(smtp_session_committing(s) && smtp_session_in_transaction(s), "committing, in transaction");
    CHECK(smtp_session_feed(s, "NOOP\r\n", 6) == 0, "nothing consumed while committing");
    smtp_session_commit_done(s, SMTP_COMMIT_OK);
    CHECK(!smtp_session_committing(s) && !smtp_session_in_transaction(s), "ready again");
    CHECK(smtp_session_feed(s, "NOOP\r\n", 6) == 6, "then the rest is consumed");
    size_t olen;
    char *out = smtp_session_take_output(s, &olen);
    CHECK(out && strstr(out, "250 2.0.0 Ok: queued as ") && g_str_has_suffix(out, OK),
          "queued, then NOOP");
    free(out);
    CHECK(smtp_session_take_output(s, &olen) == NULL && olen == 0, "no output: NULL");
    end_session(&f);
}

int main(void)
{
    char *err = NULL;
    /* INLET_TEST_DEBUG=1 runs everything with debug logging (the transition and command logs). */
    if (getenv("INLET_TEST_DEBUG")) log_set_level(LOG_DEBUG);
    hosted = domain_set_new();
    if (domain_set_add(hosted, "example.com", &err) != 0 ||
        domain_set_add(hosted, "*.sub.example.org", &err) != 0) {
        printf("Bail out! domain_set_add: %s\n", err ? err : "?");
        return 1;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
        for (enum mode m = MODE_WHOLE; m <= MODE_RANDOM; m++) run_case(&cases[i], m);
    test_line_lengths();
    test_address_lengths();
    test_every_split();
    test_backpressure();
    test_committing_takes_nothing();
    test_relay_probing_limited();
    test_rcpt_guessing_limited();
    test_postmaster_rationed_and_in_data();
    domain_set_free(hosted);
    return check_done();
}
