/* smtp/session.c — the SMTP protocol as a pure state machine (SPEC §2).
 *
 * Bytes come in through smtp_session_feed(), replies go out through smtp_session_take_output(),
 * a finished transaction goes to ops.commit.  No sockets, no timers: the server (server.c) owns
 * those.  The protocol is data: `enum smtp_state`, the command table `commands[]` (with the 503
 * reply for every state a verb is not allowed in), and one enter_state() that logs transitions.
 *
 * Memory: an idle session is this struct plus a few short strings.  The command line buffer
 * (SMTP_LINE_MAX) exists only while a partial line is pending; the message buffer only during
 * DATA, grown geometrically and paid for through ops.reserve. */
#include "smtp/smtp.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>

#include "util/clock.h"
#include "util/domains.h"
#include "util/limits.h"
#include "util/log.h"

/* What Received: and txn->tls say without STARTTLS. */
#define TLS_NONE "none"

enum smtp_state {
    SMTP_STATE_CONNECTED,  /* before HELO/EHLO */
    SMTP_STATE_GREETED,    /* after HELO/EHLO, no transaction */
    SMTP_STATE_MAIL,       /* MAIL accepted, no recipient yet */
    SMTP_STATE_RCPT,       /* at least one recipient accepted */
    SMTP_STATE_DATA,       /* reading message bytes up to <CRLF>.<CRLF> */
    SMTP_STATE_COMMITTING, /* ops.commit called, waiting for smtp_session_commit_done() */
    SMTP_STATE_STARTTLS,   /* 220 to STARTTLS queued: input discarded until the handshake ends */
    SMTP_STATE_CLOSING,    /* 221 or 421 queued: nothing more is read */
    SMTP_STATE_COUNT
};

static const char *const state_names[SMTP_STATE_COUNT] = {
    [SMTP_STATE_CONNECTED] = "connected", [SMTP_STATE_GREETED] = "greeted",
    [SMTP_STATE_MAIL] = "mail",           [SMTP_STATE_RCPT] = "rcpt",
    [SMTP_STATE_DATA] = "data",           [SMTP_STATE_COMMITTING] = "committing",
    [SMTP_STATE_STARTTLS] = "starttls",   [SMTP_STATE_CLOSING] = "closing",
};

/* Where the DATA scanner is relative to the <CRLF>.<CRLF> terminator. */
enum data_state {
    DATA_TEXT,   /* inside a line */
    DATA_CR,     /* just stored a CR */
    DATA_BOL,    /* just after CRLF (or at the start of DATA): a '.' here is special */
    DATA_DOT,    /* CRLF '.' seen, dot not stored yet */
    DATA_DOT_CR, /* CRLF '.' CR seen, neither stored yet */
};

/* The first error found during DATA; answered once after the final dot. */
enum data_error { DATA_OK, DATA_TOO_BIG, DATA_LOOP, DATA_NOSPACE, DATA_WRITE };

/* Counts "Received:" fields in the client's header section, across any chunking. */
struct hop_scan {
    bool done;          /* the empty line that ends the header section was seen */
    int match;          /* 0..8: bytes of "received" matched; 9: after the name; -1: not it */
    size_t line_len;    /* bytes of the current line so far, saturating at 2 */
    bool first_was_cr;  /* the line so far is a lone CR (CRLF empty line in progress) */
    unsigned hops;
};

struct transaction {
    char *sender;            /* NULL until MAIL is accepted */
    char **rcpts;
    size_t nrcpts, rcpts_cap;
    bool smtputf8;
    char id[ID_LEN + 1];
    uint8_t *data;           /* Received: + message bytes; NULL outside DATA or after an error */
    size_t len, cap;
    size_t received_len;     /* bytes of our Received: header at the start of data */
    size_t message_bytes;    /* client bytes stored (after dot-unstuffing) */
    size_t reserved;         /* bytes taken from ops.reserve for `data` */
    /* Past cfg.memory_per_message the bytes go to a sink (ops.sink_open): `data` is then a
     * buffer of what is not written yet, data[0 .. len - flushed); `len` counts them all. */
    void *sink;
    size_t flushed;
    enum data_error error;
    enum data_state dstate;
    struct hop_scan hop;
};

struct smtp_session {
    struct smtp_session_config cfg; /* cfg.hostname points at `hostname` */
    char *hostname;
    char *peer_ip;
    char tag[20];           /* the connection's id in log lines (a uint64 in decimal, cut) */
    enum smtp_state state;
    struct smtp_session_ops ops;
    void *ctx;

    char *helo;
    char *tls;              /* NULL in plaintext; "TLSv1.3:<cipher>" after STARTTLS */

    char *line;             /* partial command line, SMTP_LINE_MAX bytes, only while pending */
    size_t line_len;

    char *out;              /* queued replies, NUL-terminated */
    size_t out_len, out_cap;

    struct transaction txn;
    char committed_id[ID_LEN + 1]; /* the id the pending commit reply names */
    /* Last, in the padding after committed_id: an idle session is allocated by the thousand. */
    uint16_t bad_commands;  /* up to SMTP_MAX_BAD_COMMANDS */
    bool esmtp;             /* EHLO rather than HELO */
    bool shutdown_pending;  /* 421 as soon as no transaction is in progress */
    bool commit_in_flight;  /* ops.commit called, commit_done not yet */
    bool discarding;        /* skipping the rest of an over-long command line */
};

_Static_assert(SMTP_MAX_BAD_COMMANDS < UINT16_MAX, "bad_commands is a uint16_t");

/* ------------------------------------------------------------------------------------------
 * Small helpers */

/* Small allocations (replies, command lines, envelope strings) abort on failure, as GLib does:
 * they are bounded by the limits above.  The one big buffer, the message, fails softly. */
static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) abort();
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

static void enter_state(struct smtp_session *s, enum smtp_state next)
{
    if (s->state == next) return;
    log_debug("smtp", "conn=%s state %s -> %s", s->tag, state_names[s->state],
              state_names[next]);
    s->state = next;
}

static void reply(struct smtp_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends one reply line plus CRLF to the output buffer. */
static void reply(struct smtp_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t need = s->out_len + (size_t)n + 3;
    if (need > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 256;
        while (cap < need) cap *= 2;
        s->out = xrealloc(s->out, cap);
        s->out_cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(s->out + s->out_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->out_len += (size_t)n;
    memcpy(s->out + s->out_len, "\r\n", 3);
    s->out_len += 2;
}

/* Says the last word ("421 <code> <host> <text>") and stops reading. */
static void reply_close(struct smtp_session *s, const char *code, const char *text)
{
    reply(s, "%s %s %s", code, s->hostname, text);
    enter_state(s, SMTP_STATE_CLOSING);
}

/* A reply to an unknown or malformed command: after SMTP_MAX_BAD_COMMANDS of them the client is
 * probably not speaking SMTP at all, so we stop listening (Postfix smtpd_hard_error_limit). */
static void reply_bad(struct smtp_session *s, const char *line)
{
    reply(s, "%s", line);
    if (++s->bad_commands >= SMTP_MAX_BAD_COMMANDS)
        reply_close(s, "421 4.7.0", "Error: too many errors");
}

/* 501s are syntax errors and count as bad commands; policy refusals (5xx/4xx) do not. */
static void reply_refusal(struct smtp_session *s, const char *line)
{
    if (strncmp(line, "501", 3) == 0) reply_bad(s, line);
    else reply(s, "%s", line);
}

static bool state_in_transaction(enum smtp_state st)
{
    return st == SMTP_STATE_MAIL || st == SMTP_STATE_RCPT || st == SMTP_STATE_DATA ||
           st == SMTP_STATE_COMMITTING;
}

/* A shutdown waits for the transaction in progress; called wherever one can end. */
static void maybe_finish_shutdown(struct smtp_session *s)
{
    /* During the handshake nothing can be said: the 421 waits for its end (or the grace timer). */
    if (s->shutdown_pending && s->state != SMTP_STATE_CLOSING && s->state != SMTP_STATE_STARTTLS &&
        !state_in_transaction(s->state))
        reply_close(s, "421 4.3.2", "Service shutting down");
}

/* ------------------------------------------------------------------------------------------
 * The transaction and its message buffer */

static void data_drop(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    free(t->data);
    t->data = NULL;
    t->len = t->cap = 0;
    if (t->sink) s->ops.sink_discard(t->sink);
    t->sink = NULL;
    t->flushed = 0;
    if (t->reserved && s->ops.reserve) s->ops.reserve(s->ctx, -(ssize_t)t->reserved);
    t->reserved = 0;
}

static void txn_reset(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    data_drop(s);
    free(t->sender);
    for (size_t i = 0; i < t->nrcpts; i++) free(t->rcpts[i]);
    free(t->rcpts);
    memset(t, 0, sizeof *t);
}

/* Records the first DATA error; the buffer is given back at once since nothing will be
 * committed, but the bytes up to the final dot are still read. */
static void data_fail(struct smtp_session *s, enum data_error e)
{
    if (s->txn.error != DATA_OK) return;
    s->txn.error = e;
    data_drop(s);
}

/* Makes room for `extra` more bytes: doubling, capped at the largest message we accept, every
 * growth paid for through ops.reserve. */
static bool data_reserve(struct smtp_session *s, size_t extra)
{
    struct transaction *t = &s->txn;
    size_t need = t->len + extra;
    if (need <= t->cap) return true;
    size_t limit = t->received_len + s->cfg.max_message_size;
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    if (cap > limit) cap = limit;
    if (cap < need) cap = need;
    size_t delta = cap - t->cap;
    if (s->ops.reserve && !s->ops.reserve(s->ctx, (ssize_t)delta)) return false;
    uint8_t *p = realloc(t->data, cap);
    if (!p) {
        if (s->ops.reserve) s->ops.reserve(s->ctx, -(ssize_t)delta);
        return false;
    }
    if (s->ops.reserve) t->reserved += delta;
    t->data = p;
    t->cap = cap;
    return true;
}

/* Hop counting: feeds stored header bytes through a tiny per-line matcher for
 * `Received` [WSP] `:` at the start of a line. */
static void hop_scan(struct smtp_session *s, const uint8_t *p, size_t n)
{
    struct hop_scan *h = &s->txn.hop;
    for (size_t i = 0; i < n && !h->done; i++) {
        uint8_t c = p[i];
        if (c == '\n') {
            if (h->line_len == 0 || (h->line_len == 1 && h->first_was_cr)) h->done = true;
            h->match = 0;
            h->line_len = 0;
            h->first_was_cr = false;
            continue;
        }
        if (h->line_len == 0) h->first_was_cr = c == '\r';
        if (h->line_len < 2) h->line_len++;
        if (h->match < 0) {
            /* Not a Received line: skip to its end in one step. */
            const uint8_t *lf = memchr(p + i, '\n', n - i);
            if (!lf) return;
            i = (size_t)(lf - p) - 1;
            continue;
        }
        if (h->match < 8) {
            h->match = g_ascii_tolower(c) == "received"[h->match] ? h->match + 1 : -1;
        } else if (c == ':') {
            h->match = -1;
            if (++h->hops > s->cfg.max_hops) {
                data_fail(s, DATA_LOOP); /* the rest of the message is only read now */
                return;
            }
        } else {
            h->match = (c == ' ' || c == '\t') ? 9 : -1;
        }
    }
}

/* Writes the buffered bytes out to the sink.  False (the error recorded) when the sink failed. */
static bool sink_flush(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    const size_t held = t->len - t->flushed;
    if (held == 0) return true;
    enum smtp_commit_status st = s->ops.sink_write(s->ctx, t->sink, t->data, held);
    if (st != SMTP_COMMIT_OK) {
        data_fail(s, st == SMTP_COMMIT_NOSPACE ? DATA_NOSPACE : DATA_WRITE);
        return false;
    }
    t->flushed += held;
    return true;
}

/* The message is about to pass cfg.memory_per_message: from now on its bytes go to a sink, through
 * the buffer it has (no larger: the memory a message holds stays bounded).  False when there is
 * no sink (then the message stays in memory). */
static bool sink_start(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    if (!s->ops.sink_open || s->cfg.memory_per_message == 0) return false;
    t->sink = s->ops.sink_open(s->ctx);
    return t->sink != NULL;
}

/* Sink mode: `n` bytes through the buffer (flushed when full; a chunk larger than the buffer
 * goes straight through). */
static void sink_append(struct smtp_session *s, const char *p, size_t n)
{
    struct transaction *t = &s->txn;
    if (t->len - t->flushed + n > t->cap && !sink_flush(s)) return;
    if (n > t->cap) {
        enum smtp_commit_status st = s->ops.sink_write(s->ctx, t->sink, p, n);
        if (st != SMTP_COMMIT_OK) {
            data_fail(s, st == SMTP_COMMIT_NOSPACE ? DATA_NOSPACE : DATA_WRITE);
            return;
        }
        t->flushed += n;
    } else {
        memcpy(t->data + (t->len - t->flushed), p, n);
    }
    t->len += n;
}

/* Stores client message bytes (already dot-unstuffed).  One copy, from the caller's chunk: into
 * memory, or past cfg.memory_per_message through a bounded buffer into the sink. */
static void data_append(struct smtp_session *s, const char *p, size_t n)
{
    struct transaction *t = &s->txn;
    if (t->error != DATA_OK || n == 0) return;
    if (n > s->cfg.max_message_size - t->message_bytes) {
        data_fail(s, DATA_TOO_BIG);
        return;
    }
    if (t->sink || (t->len + n > s->cfg.memory_per_message && t->len + n > t->cap && sink_start(s))) {
        sink_append(s, p, n);
    } else if (!data_reserve(s, n)) {
        data_fail(s, DATA_NOSPACE);
        return;
    } else {
        memcpy(t->data + t->len, p, n);
        t->len += n;
    }
    if (t->error != DATA_OK) return;
    t->message_bytes += n;
    if (!t->hop.done) hop_scan(s, (const uint8_t *)p, n);
}

/* ------------------------------------------------------------------------------------------
 * Addresses */

struct path {
    char addr[SMTP_PATH_MAX + 1]; /* without <>, source route and the domain's trailing dot */
    bool null;                    /* <> */
    bool postmaster;              /* <postmaster>, no domain */
    bool literal;                 /* the domain is an address literal [..] */
    bool non_ascii;
    size_t local_len;             /* addr[local_len] is the '@' */
    const char *domain;           /* into addr */
    size_t domain_len;
};

enum path_status { PATH_OK, PATH_SYNTAX, PATH_BAD };

static bool is_atext(unsigned char c)
{
    return g_ascii_isalnum(c) || c >= 0x80 || (c && strchr("!#$%&'*+-/=?^_`{|}~.", c));
}

/* The end of a local part starting at `p`, or NULL when it is malformed. */
static const char *scan_local_part(const char *p, const char *end)
{
    if (p < end && *p == '"') {
        for (p++; p < end; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '"') return p + 1;
            if (c == '\\') {
                if (++p >= end || (unsigned char)*p < 0x20) return NULL;
            } else if (c < 0x20 || c == 0x7f) {
                return NULL;
            }
        }
        return NULL;
    }
    const char *start = p;
    while (p < end && is_atext((unsigned char)*p)) p++;
    return p > start ? p : NULL;
}

/* Whether [p, end) is a domain: dot-separated labels, or an address literal. */
static bool valid_domain(const char *p, const char *end, bool *literal)
{
    *literal = p < end && *p == '[';
    if (*literal) {
        if (end - p < 3 || end[-1] != ']') return false;
        for (const char *c = p + 1; c < end - 1; c++)
            if (*c < 0x21 || *c > 0x7e || *c == '[' || *c == ']' || *c == '\\') return false;
        return true;
    }
    size_t label = 0;
    for (const char *c = p; c < end; c++) {
        unsigned char ch = (unsigned char)*c;
        if (ch == '.') {
            if (label == 0) return false;
            label = 0;
        } else if (g_ascii_isalnum(ch) || ch == '-' || ch == '_' || ch >= 0x80) {
            label++;
        } else {
            return false;
        }
    }
    return label > 0;
}

/* Checks the text inside <> and fills `out`.  Source routes (@a,@b:) are dropped. */
static enum path_status parse_mailbox(const char *p, const char *end, struct path *out)
{
    if (p == end) {
        out->null = true;
        return PATH_OK;
    }
    if (*p == '@') {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (!colon) return PATH_BAD;
        for (const char *c = p; c < colon; c++)
            if (!g_ascii_isalnum(*c) && !strchr(".-_@,[]", *c)) return PATH_BAD;
        p = colon + 1;
    }
    if (end - p == 10 && g_ascii_strncasecmp(p, "postmaster", 10) == 0) {
        memcpy(out->addr, p, 10);
        out->addr[10] = '\0';
        out->postmaster = true;
        return PATH_OK;
    }
    const char *at = scan_local_part(p, end);
    if (!at || at >= end || *at != '@') return PATH_BAD;
    size_t local_len = (size_t)(at - p);
    const char *dom = at + 1;
    if (end > dom + 1 && end[-1] == '.' && *dom != '[') end--; /* one trailing dot */
    size_t dom_len = (size_t)(end - dom);
    if (local_len > SMTP_LOCAL_PART_MAX || dom_len > SMTP_DOMAIN_MAX) return PATH_BAD;
    if (!valid_domain(dom, end, &out->literal)) return PATH_BAD;
    memcpy(out->addr, p, local_len + 1 + dom_len);
    out->addr[local_len + 1 + dom_len] = '\0';
    out->local_len = local_len;
    out->domain = out->addr + local_len + 1;
    out->domain_len = dom_len;
    return PATH_OK;
}

/* Parses "<path>" at `in`; `*rest` gets what follows '>' (parameters).  PATH_SYNTAX when there
 * is no <...> at all, PATH_BAD when the address inside is wrong. */
static enum path_status parse_path(const char *in, struct path *out, const char **rest)
{
    memset(out, 0, sizeof *out);
    if (*in != '<') return PATH_SYNTAX;
    const char *start = in + 1, *close = NULL;
    bool quoted = false;
    for (const char *c = start; *c; c++) {
        if (quoted && *c == '\\' && c[1]) {
            c++;
        } else if (*c == '"') {
            quoted = !quoted;
        } else if (*c == '>' && !quoted) {
            close = c;
            break;
        }
    }
    if (!close || (close[1] != '\0' && close[1] != ' ' && close[1] != '\t')) return PATH_SYNTAX;
    *rest = close + 1;
    if ((size_t)(close - in + 1) > SMTP_PATH_MAX) return PATH_BAD;
    enum path_status st = parse_mailbox(start, close, out);
    if (st != PATH_OK) return st;
    for (const char *c = out->addr; *c; c++)
        if ((unsigned char)*c >= 0x80) out->non_ascii = true;
    return PATH_OK;
}

/* RFC 6531: a UTF-8 address needs SMTPUTF8 on MAIL, and must then be valid UTF-8.
 * Returns the refusal, or NULL. */
static const char *utf8_refusal(const struct path *p, bool smtputf8, const char *bad_reply)
{
    if (!p->non_ascii) return NULL;
    if (!smtputf8) return "553 5.6.7 Must declare SMTPUTF8 to send unicode address";
    if (!g_utf8_validate(p->addr, -1, NULL)) return bad_reply;
    return NULL;
}

static const char *next_word(const char *p, const char **word, size_t *len)
{
    while (*p == ' ' || *p == '\t') p++;
    *word = p;
    while (*p && *p != ' ' && *p != '\t') p++;
    *len = (size_t)(p - *word);
    return p;
}

/* ------------------------------------------------------------------------------------------
 * Commands */

#define R_MAIL_SYNTAX "501 5.5.4 Syntax: MAIL FROM:<address>"
#define R_RCPT_SYNTAX "501 5.5.4 Syntax: RCPT TO:<address>"
#define R_BAD_SENDER "501 5.1.7 Bad sender address syntax"
#define R_BAD_RCPT "501 5.1.3 Bad recipient address syntax"
#define R_UNSUPPORTED "555 5.5.4 Unsupported parameter"
#define R_TOO_BIG "552 5.3.4 Message too big"
#define R_NO_STORAGE "452 4.3.1 Insufficient system storage"

/* If `arg` starts with `keyword` (e.g. "FROM:"), returns the text after it and any spaces (we
 * tolerate "MAIL FROM: <a@b>"); NULL otherwise. */
static const char *after_keyword(const char *arg, const char *keyword)
{
    size_t n = strlen(keyword);
    if (g_ascii_strncasecmp(arg, keyword, n) != 0) return NULL;
    arg += n;
    while (*arg == ' ') arg++;
    return arg;
}

static void cmd_helo_ehlo(struct smtp_session *s, const char *arg, bool esmtp)
{
    if (!*arg || strlen(arg) > SMTP_HELO_MAX) {
        reply_bad(s, esmtp ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname");
        return;
    }
    /* A new greeting resets any transaction (RFC 5321 §4.1.4). */
    txn_reset(s);
    free(s->helo);
    s->helo = xstrdup(arg);
    s->esmtp = esmtp;
    enter_state(s, SMTP_STATE_GREETED);
    if (!esmtp) {
        reply(s, "250 %s", s->hostname);
        return;
    }
    reply(s, "250-%s", s->hostname);
    reply(s, "250-PIPELINING");
    reply(s, "250-SIZE %zu", s->cfg.max_message_size);
    reply(s, "250-8BITMIME");
    reply(s, "250-SMTPUTF8");
    if (s->ops.starttls && !s->tls) reply(s, "250-STARTTLS");
    reply(s, "250 ENHANCEDSTATUSCODES");
}

static void cmd_ehlo(struct smtp_session *s, const char *arg)
{
    cmd_helo_ehlo(s, arg, true);
}

static void cmd_helo(struct smtp_session *s, const char *arg)
{
    cmd_helo_ehlo(s, arg, false);
}

/* MAIL parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8).  Returns the refusal or
 * NULL, and sets *smtputf8. */
static const char *mail_params(const struct smtp_session *s, const char *p, bool *smtputf8)
{
    const char *w;
    size_t n;
    for (p = next_word(p, &w, &n); n > 0; p = next_word(p, &w, &n)) {
        if (n >= 5 && g_ascii_strncasecmp(w, "SIZE=", 5) == 0) {
            unsigned long long size = 0;
            if (n == 5) return R_MAIL_SYNTAX;
            for (size_t i = 5; i < n; i++) {
                if (!g_ascii_isdigit(w[i])) return R_MAIL_SYNTAX;
                if (size <= s->cfg.max_message_size) size = size * 10 + (unsigned)(w[i] - '0');
            }
            if (size > s->cfg.max_message_size) return R_TOO_BIG;
        } else if ((n == 9 && g_ascii_strncasecmp(w, "BODY=7BIT", 9) == 0) ||
                   (n == 13 && g_ascii_strncasecmp(w, "BODY=8BITMIME", 13) == 0)) {
            continue;
        } else if (n == 8 && g_ascii_strncasecmp(w, "SMTPUTF8", 8) == 0) {
            *smtputf8 = true;
        } else {
            return R_UNSUPPORTED;
        }
    }
    return NULL;
}

static void cmd_mail(struct smtp_session *s, const char *arg)
{
    const char *p = after_keyword(arg, "FROM:"), *params = NULL;
    struct path path;
    enum path_status st = p ? parse_path(p, &path, &params) : PATH_SYNTAX;
    if (st == PATH_SYNTAX) {
        reply_bad(s, R_MAIL_SYNTAX);
        return;
    }
    bool smtputf8 = false;
    const char *refusal = mail_params(s, params, &smtputf8);
    if (!refusal && (st == PATH_BAD || path.postmaster)) refusal = R_BAD_SENDER;
    if (!refusal) refusal = utf8_refusal(&path, smtputf8, R_BAD_SENDER);
    if (refusal) {
        reply_refusal(s, refusal);
        return;
    }
    s->txn.sender = xstrdup(path.null ? "" : path.addr);
    s->txn.smtputf8 = smtputf8;
    char esc[LOG_CLIENT_BYTES_MAX * 4 + 8];
    log_debug("smtp", "conn=%s mail from=<%s>%s", s->tag,
              log_escape(esc, sizeof esc, s->txn.sender, strlen(s->txn.sender),
                         LOG_CLIENT_BYTES_MAX),
              smtputf8 ? " smtputf8" : "");
    enter_state(s, SMTP_STATE_MAIL);
    reply(s, "250 2.1.0 Ok");
    if (s->ops.mail_from) s->ops.mail_from(s->ctx, s->peer_ip, s->helo ? s->helo : "", s->txn.sender);
}

static bool same_recipient(const char *a, const char *b)
{
    const char *at_a = strrchr(a, '@'), *at_b = strrchr(b, '@');
    if (!at_a || !at_b) return !at_a && !at_b && g_ascii_strcasecmp(a, b) == 0; /* postmaster */
    return at_a - a == at_b - b && memcmp(a, b, (size_t)(at_a - a)) == 0 &&
           g_ascii_strcasecmp(at_a, at_b) == 0;
}

/* Whether this recipient is ours at all (never an open relay) and RFC 5321 §4.5.1's postmaster. */
static bool rcpt_hosted(const struct smtp_session *s, const struct path *p, bool *postmaster)
{
    *postmaster = p->postmaster;
    if (p->postmaster) return true;
    if (p->literal || !s->cfg.domains ||
        !domain_set_hosts(s->cfg.domains, p->domain, p->domain_len))
        return false;
    *postmaster = p->local_len == 10 && g_ascii_strncasecmp(p->addr, "postmaster", 10) == 0;
    return true;
}

static void rcpt_add(struct smtp_session *s, const char *addr)
{
    struct transaction *t = &s->txn;
    if (t->nrcpts == t->rcpts_cap) {
        t->rcpts_cap = t->rcpts_cap ? t->rcpts_cap * 2 : 4;
        t->rcpts = xrealloc(t->rcpts, t->rcpts_cap * sizeof *t->rcpts);
    }
    t->rcpts[t->nrcpts++] = xstrdup(addr);
    enter_state(s, SMTP_STATE_RCPT);
}

static void cmd_rcpt(struct smtp_session *s, const char *arg)
{
    const char *p = after_keyword(arg, "TO:"), *params = NULL;
    struct path path;
    enum path_status st = p ? parse_path(p, &path, &params) : PATH_SYNTAX;
    if (st == PATH_SYNTAX) {
        reply_bad(s, R_RCPT_SYNTAX);
        return;
    }
    if (st == PATH_BAD || path.null) {
        reply_bad(s, R_BAD_RCPT);
        return;
    }
    const char *w;
    size_t n;
    next_word(params, &w, &n);
    const char *refusal = n ? R_UNSUPPORTED : utf8_refusal(&path, s->txn.smtputf8, R_BAD_RCPT);
    if (refusal) {
        reply_refusal(s, refusal);
        return;
    }
    bool postmaster;
    if (!rcpt_hosted(s, &path, &postmaster)) {
        reply_bad(s, "550 5.7.1 Relaying denied"); /* probing counts as an error */
        return;
    }
    for (size_t i = 0; i < s->txn.nrcpts; i++) {
        if (same_recipient(s->txn.rcpts[i], path.addr)) {
            reply(s, "250 2.1.5 Ok"); /* a duplicate counts once */
            return;
        }
    }
    if (s->txn.nrcpts >= s->cfg.max_recipients) {
        reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    const char *rationed = postmaster && s->ops.check_postmaster ? s->ops.check_postmaster(s->ctx) : NULL;
    if (rationed) {
        reply(s, "%s", rationed);
        return;
    }
    const char *refused = (!postmaster && s->ops.check_rcpt)
                              ? s->ops.check_rcpt(s->ctx, path.addr) : NULL;
    if (refused && strncmp(refused, "421", 3) == 0) { /* the checker's last word */
        reply(s, "%s", refused);
        enter_state(s, SMTP_STATE_CLOSING);
        return;
    }
    if (refused) {
        /* Guessing recipients costs a route match each: counted like a bad command, so a
         * client gets SMTP_MAX_BAD_COMMANDS of them per session (Postfix counts them too). */
        reply_bad(s, refused);
        return;
    }
    rcpt_add(s, path.addr);
    reply(s, "250 2.1.5 Ok");
}

/* Copies the HELO name for the Received: header with everything that could break the header or
 * fake a comment or a literal replaced by '?'. */
static char *sanitize_helo(const char *helo)
{
    char *out = xstrdup(helo);
    for (char *c = out; *c;) {
        unsigned char ch = (unsigned char)*c;
        if (ch >= 0x80) {
            gunichar u = g_utf8_get_char_validated(c, -1);
            if (u != (gunichar)-1 && u != (gunichar)-2 && g_unichar_isalpha(u)) {
                c = g_utf8_next_char(c);
                continue;
            }
            *c++ = '?'; /* one byte; the following bytes of a bad sequence follow suit */
            continue;
        }
        if (ch < 0x20 || ch > 0x7e || strchr("()[];\\", ch)) *c = '?';
        c++;
    }
    return out;
}

/* Writes our Received: header (SPEC §2) as the first bytes of the message buffer. */
static bool write_received(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    char date[64];
    clock_rfc5322(date, sizeof date, time(NULL));
    char *helo = sanitize_helo(s->helo);
    /* RFC 3848 / RFC 6531 protocol names; "S" when the session is under TLS. */
    const char *proto = !s->esmtp ? "SMTP"
                        : t->smtputf8 ? (s->tls ? "UTF8SMTPS" : "UTF8SMTP")
                                      : (s->tls ? "ESMTPS" : "ESMTP");
    const char *tls = s->tls ? s->tls : TLS_NONE;
    bool v6 = strchr(s->peer_ip, ':') != NULL;
#define RECEIVED_FMT                                                                                \
    "Received: from %s ([%s%s])\r\n\tby %s (inlet) with %s id %s\r\n\t(TLS %s);\r\n\t%s\r\n"
    int n = snprintf(NULL, 0, RECEIVED_FMT, helo, v6 ? "IPv6:" : "", s->peer_ip, s->hostname, proto,
                     t->id, tls, date);
    bool ok = n > 0;
    t->received_len = ok ? (size_t)n : 0;
    if (ok && !data_reserve(s, (size_t)n + 1)) {
        data_fail(s, DATA_NOSPACE);
        ok = false;
    }
    if (ok) {
        snprintf((char *)t->data, (size_t)n + 1, RECEIVED_FMT, helo, v6 ? "IPv6:" : "", s->peer_ip,
                 s->hostname, proto, t->id, tls, date);
        t->len = (size_t)n;
    }
    free(helo);
    return ok;
}

static void cmd_data(struct smtp_session *s, const char *arg)
{
    if (*arg) {
        reply_bad(s, "501 5.5.4 Syntax: DATA");
        return;
    }
    struct transaction *t = &s->txn;
    id_generate(t->id);
    t->dstate = DATA_BOL; /* the start of DATA counts as just after a CRLF */
    write_received(s);    /* on failure the error is recorded and answered after the dot */
    log_debug("smtp", "conn=%s data id=%s rcpts=%zu", s->tag, t->id, t->nrcpts);
    enter_state(s, SMTP_STATE_DATA);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_rset(struct smtp_session *s, const char *arg)
{
    txn_reset(s);
    if (s->state != SMTP_STATE_CONNECTED) enter_state(s, SMTP_STATE_GREETED);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct smtp_session *s, const char *arg)
{
    reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct smtp_session *s, const char *arg)
{
    txn_reset(s);
    reply(s, "221 2.0.0 Bye");
    enter_state(s, SMTP_STATE_CLOSING);
}

static void cmd_help(struct smtp_session *s, const char *arg)
{
    reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY");
}

static void cmd_vrfy(struct smtp_session *s, const char *arg)
{
    reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

#define R_NOT_IMPLEMENTED "502 5.5.1 Error: command not implemented"

static void cmd_not_implemented(struct smtp_session *s, const char *arg)
{
    reply(s, R_NOT_IMPLEMENTED);
}

/* RFC 3207.  The table has already refused it before HELO/EHLO and inside a transaction. */
static void cmd_starttls(struct smtp_session *s, const char *arg)
{
    if (*arg) {
        reply_bad(s, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    if (s->tls) {
        reply(s, "503 5.5.1 Error: TLS already active");
        return;
    }
    int rc = s->ops.starttls(s->ctx); /* offered: set */
    if (rc < 0) {
        log_warn("smtp", "conn=%s starttls unavailable error=\"%s\"", s->tag, g_strerror(-rc));
        reply(s, "454 4.7.0 TLS not available due to temporary reason");
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    enter_state(s, SMTP_STATE_STARTTLS);
}

static bool starttls_offered(const struct smtp_session *s)
{
    return s->ops.starttls != NULL;
}

#define R_NEED_HELO "503 5.5.1 Error: send HELO/EHLO first"
#define R_NESTED "503 5.5.1 Error: nested MAIL command"
#define R_NEED_MAIL "503 5.5.1 Error: need MAIL command"
#define R_NEED_RCPT "503 5.5.1 Error: need RCPT command"
#define R_IN_TXN "503 5.5.1 Error: MAIL transaction in progress"

/* The protocol as data.  `offered`, when set, says whether this session offers the verb at all
 * (502 5.5.1 when not, before any other check).  `refuse[state]` is the 503 reply for a state the
 * verb is not allowed in; a state without one allows the verb.  Only the command states
 * (connected, greeted, mail, rcpt) ever look commands up. */
struct smtp_command {
    const char *verb;
    void (*handler)(struct smtp_session *s, const char *arg);
    bool (*offered)(const struct smtp_session *s);
    const char *refuse[SMTP_STATE_COUNT];
};

static const struct smtp_command commands[] = {
    {.verb = "EHLO", .handler = cmd_ehlo},
    {.verb = "HELO", .handler = cmd_helo},
    {.verb = "MAIL",
     .handler = cmd_mail,
     .refuse = {[SMTP_STATE_CONNECTED] = R_NEED_HELO,
                [SMTP_STATE_MAIL] = R_NESTED,
                [SMTP_STATE_RCPT] = R_NESTED}},
    {.verb = "RCPT",
     .handler = cmd_rcpt,
     .refuse = {[SMTP_STATE_CONNECTED] = R_NEED_MAIL, [SMTP_STATE_GREETED] = R_NEED_MAIL}},
    {.verb = "DATA",
     .handler = cmd_data,
     .refuse = {[SMTP_STATE_CONNECTED] = R_NEED_MAIL,
                [SMTP_STATE_GREETED] = R_NEED_MAIL,
                [SMTP_STATE_MAIL] = R_NEED_RCPT}},
    {.verb = "RSET", .handler = cmd_rset},
    {.verb = "NOOP", .handler = cmd_noop},
    {.verb = "QUIT", .handler = cmd_quit},
    {.verb = "HELP", .handler = cmd_help},
    {.verb = "VRFY", .handler = cmd_vrfy},
    {.verb = "EXPN", .handler = cmd_not_implemented},
    {.verb = "TURN", .handler = cmd_not_implemented},
    {.verb = "ETRN", .handler = cmd_not_implemented},
    {.verb = "BDAT", .handler = cmd_not_implemented},
    {.verb = "AUTH", .handler = cmd_not_implemented},
    {.verb = "STARTTLS",
     .handler = cmd_starttls,
     .offered = starttls_offered,
     .refuse = {[SMTP_STATE_CONNECTED] = R_NEED_HELO,
                [SMTP_STATE_MAIL] = R_IN_TXN,
                [SMTP_STATE_RCPT] = R_IN_TXN}},
};

/* One complete command line, its CRLF or LF still attached. */
static void process_line(struct smtp_session *s, const char *raw, size_t n)
{
    char line[SMTP_LINE_MAX + 1];
    n--; /* the LF */
    if (n > 0 && raw[n - 1] == '\r') n--;
    memcpy(line, raw, n);
    line[n] = '\0';

    char esc[LOG_CLIENT_BYTES_MAX * 4 + 8];
    log_debug("smtp", "conn=%s cmd=\"%s\"", s->tag,
              log_escape(esc, sizeof esc, line, n, LOG_CLIENT_BYTES_MAX));

    /* NUL, CR, other controls: never part of a well-formed command (and never let a NUL cut a
     * line short on its way into C strings). */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            reply_bad(s, "500 5.5.2 Error: bad syntax");
            return;
        }
    }
    while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = '\0';
    const char *verb, *arg = next_word(line, &verb, &n);
    while (*arg == ' ' || *arg == '\t') arg++;
    if (n == 0) {
        reply_bad(s, "500 5.5.2 Error: bad syntax");
        return;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct smtp_command *cmd = &commands[i];
        if (strlen(cmd->verb) != n || g_ascii_strncasecmp(cmd->verb, verb, n) != 0) continue;
        if (cmd->offered && !cmd->offered(s)) reply(s, R_NOT_IMPLEMENTED);
        else if (cmd->refuse[s->state]) reply(s, "%s", cmd->refuse[s->state]);
        else cmd->handler(s, arg);
        maybe_finish_shutdown(s);
        return;
    }
    reply_bad(s, "500 5.5.2 Error: command not recognized");
}

/* ------------------------------------------------------------------------------------------
 * Input */

static void line_too_long(struct smtp_session *s)
{
    free(s->line);
    s->line = NULL;
    s->line_len = 0;
    log_debug("smtp", "conn=%s command line too long", s->tag);
    reply_bad(s, "500 5.5.2 Line too long");
}

/* Consumes at most one command line (or the start of one) and returns the bytes consumed. */
static size_t feed_command(struct smtp_session *s, const char *p, size_t len)
{
    const char *lf = memchr(p, '\n', len);
    size_t n = lf ? (size_t)(lf - p) + 1 : len;
    if (s->discarding) { /* the tail of a line already answered with "Line too long" */
        if (lf) s->discarding = false;
        return n;
    }
    if (lf && s->line_len == 0) { /* the usual case: a whole line in the chunk, no copy */
        if (n > SMTP_LINE_MAX) line_too_long(s);
        else process_line(s, p, n);
        return n;
    }
    if (s->line_len + n > SMTP_LINE_MAX || (!lf && s->line_len + n == SMTP_LINE_MAX)) {
        /* Without its LF a line of SMTP_LINE_MAX bytes can only get longer. */
        line_too_long(s);
        s->discarding = !lf;
        return n;
    }
    if (!s->line) s->line = xrealloc(NULL, SMTP_LINE_MAX);
    memcpy(s->line + s->line_len, p, n);
    s->line_len += n;
    if (lf) {
        /* process_line may queue replies but never touches s->line. */
        process_line(s, s->line, s->line_len);
        free(s->line);
        s->line = NULL;
        s->line_len = 0;
    }
    return n;
}

static void end_of_data(struct smtp_session *s);

/* Message bytes: stored as they come, dot-unstuffed, until <CRLF>.<CRLF>.  Returns the bytes
 * consumed; stops right after the terminator. */
static size_t feed_data(struct smtp_session *s, const char *p, size_t len)
{
    struct transaction *t = &s->txn;
    size_t i = 0;
    while (i < len) {
        switch (t->dstate) {
        case DATA_TEXT: { /* copy through the next CR in one go */
            const char *cr = memchr(p + i, '\r', len - i);
            size_t n = cr ? (size_t)(cr - (p + i)) + 1 : len - i;
            data_append(s, p + i, n);
            i += n;
            if (cr) t->dstate = DATA_CR;
            break;
        }
        case DATA_CR:
            if (p[i] == '\n') t->dstate = DATA_BOL;
            else if (p[i] != '\r') t->dstate = DATA_TEXT;
            data_append(s, p + i, 1);
            i++;
            break;
        case DATA_BOL:
            if (p[i] == '.') {
                t->dstate = DATA_DOT;
                i++;
            } else {
                t->dstate = DATA_TEXT;
            }
            break;
        case DATA_DOT:
            if (p[i] == '\r') {
                t->dstate = DATA_DOT_CR;
                i++;
            } else if (p[i] == '\n') {
                /* CRLF.LF: not an end (no smuggling); kept as sent. */
                data_append(s, ".\n", 2);
                t->dstate = DATA_TEXT;
                i++;
            } else {
                t->dstate = DATA_TEXT; /* a stuffed dot: dropped */
            }
            break;
        case DATA_DOT_CR:
            if (p[i] == '\n') {
                end_of_data(s);
                return i + 1;
            }
            /* CRLF.CR followed by something else: kept as sent, the byte is read after a CR. */
            data_append(s, ".\r", 2);
            t->dstate = DATA_CR;
            break;
        }
    }
    return i;
}

/* After our 220 to STARTTLS and before the handshake ends, client bytes are not commands: the
 * I/O layer hands everything after that 220 to TLS, so what reaches us here is plaintext the
 * client pipelined behind STARTTLS, which must end a pipelined group (RFC 2920 §3.1) — the
 * command injection of CVE-2011-0411.  Swallowed, never answered. */
static size_t discard_after_starttls(struct smtp_session *s, size_t len)
{
    log_warn("smtp", "conn=%s discarded bytes=%zu pipelined after STARTTLS", s->tag, len);
    return len;
}

size_t smtp_session_feed(struct smtp_session *s, const char *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        if (s->state == SMTP_STATE_STARTTLS) {
            done += discard_after_starttls(s, len - done);
            break;
        }
        if (s->state == SMTP_STATE_COMMITTING || s->state == SMTP_STATE_CLOSING) break;
        /* Backpressure: a client that does not read its replies stops being read. */
        if (s->out_len > SMTP_OUTPUT_MAX) break;
        if (s->state == SMTP_STATE_DATA) done += feed_data(s, data + done, len - done);
        else done += feed_command(s, data + done, len - done);
    }
    return done;
}

/* ------------------------------------------------------------------------------------------
 * End of data and commit */

static void reply_data_error(struct smtp_session *s)
{
    switch (s->txn.error) {
    case DATA_TOO_BIG: reply(s, R_TOO_BIG); break;
    case DATA_LOOP: reply(s, "554 5.4.6 Mail loop detected"); break;
    case DATA_NOSPACE: reply(s, R_NO_STORAGE); break;
    case DATA_WRITE: reply(s, "451 4.3.0 Error: queue file write error"); break;
    case DATA_OK: break;
    }
}

/* Moves the transaction into a txn for ops.commit; the reservation goes with it. */
static struct smtp_txn *txn_handover(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    struct smtp_txn *txn = xrealloc(NULL, sizeof *txn);
    memcpy(txn->id, t->id, sizeof txn->id);
    txn->sender = t->sender;
    txn->rcpts = t->rcpts;
    txn->nrcpts = t->nrcpts;
    txn->helo = xstrdup(s->helo);
    txn->peer_ip = xstrdup(s->peer_ip);
    txn->tls = xstrdup(s->tls ? s->tls : TLS_NONE);
    txn->smtputf8 = t->smtputf8;
    txn->received_at_ms = clock_now_ms();
    txn->sink = t->sink;
    txn->sink_discard = s->ops.sink_discard;
    if (t->sink) { /* everything is in the sink (end_of_data flushed it): the buffer goes */
        free(t->data);
        t->data = NULL;
        if (t->reserved && s->ops.reserve) s->ops.reserve(s->ctx, -(ssize_t)t->reserved);
        t->reserved = 0;
    }
    /* Give back the slack of the last doubling: the txn may wait a while for its commit. */
    uint8_t *shrunk = t->len && t->data ? realloc(t->data, t->len) : NULL;
    if (shrunk) {
        if (t->reserved && s->ops.reserve) s->ops.reserve(s->ctx, -(ssize_t)(t->cap - t->len));
        if (t->reserved) t->reserved = t->len;
        t->data = shrunk;
    }
    txn->data = t->data;
    txn->len = t->len;
    txn->reserved = t->reserved;
    memset(t, 0, sizeof *t);
    return txn;
}

static void end_of_data(struct smtp_session *s)
{
    struct transaction *t = &s->txn;
    log_debug("smtp", "conn=%s end of data id=%s bytes=%zu hops=%u error=%d", s->tag, t->id,
              t->message_bytes, t->hop.hops, (int)t->error);
    if (t->error == DATA_OK && t->sink) sink_flush(s);
    if (t->error != DATA_OK) {
        reply_data_error(s);
        txn_reset(s);
        enter_state(s, SMTP_STATE_GREETED);
        maybe_finish_shutdown(s);
        return;
    }
    memcpy(s->committed_id, t->id, sizeof s->committed_id);
    struct smtp_txn *txn = txn_handover(s);
    enter_state(s, SMTP_STATE_COMMITTING);
    s->commit_in_flight = true;
    s->ops.commit(s->ctx, txn); /* may call smtp_session_commit_done() right away */
}

void smtp_session_commit_done(struct smtp_session *s, enum smtp_commit_status status)
{
    if (!s->commit_in_flight) return;
    s->commit_in_flight = false;
    log_debug("smtp", "conn=%s commit id=%s status=%d", s->tag, s->committed_id,
              (int)status);
    if (s->state != SMTP_STATE_COMMITTING) return; /* timed out meanwhile: already said 421 */
    switch (status) {
    case SMTP_COMMIT_OK: reply(s, "250 2.0.0 Ok: queued as %s", s->committed_id); break;
    case SMTP_COMMIT_TEMPFAIL: reply(s, "451 4.3.0 Error: queue file write error"); break;
    case SMTP_COMMIT_NOSPACE: reply(s, R_NO_STORAGE); break;
    case SMTP_COMMIT_SPF_FAIL: reply(s, "550 5.7.23 SPF validation failed"); break;
    case SMTP_COMMIT_DMARC_REJECT: reply(s, "550 5.7.1 Rejected by the DMARC policy of the From: domain"); break;
    }
    enter_state(s, SMTP_STATE_GREETED);
    maybe_finish_shutdown(s);
}

/* ------------------------------------------------------------------------------------------
 * Life cycle */

struct smtp_session *smtp_session_new(const struct smtp_session_config *cfg, const char *peer_ip,
                                      const struct smtp_session_ops *ops, void *ctx)
{
    struct smtp_session *s = xrealloc(NULL, sizeof *s);
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->hostname = xstrdup(cfg->hostname ? cfg->hostname : "localhost");
    s->cfg.hostname = s->hostname;
    s->peer_ip = xstrdup(peer_ip ? peer_ip : "unknown");
    s->ops = *ops;
    s->ctx = ctx;
    s->state = SMTP_STATE_CONNECTED;
    snprintf(s->tag, sizeof s->tag, "-");
    return s;
}

void smtp_session_set_log_tag(struct smtp_session *s, const char *tag)
{
    snprintf(s->tag, sizeof s->tag, "%s", tag);
}

void smtp_session_free(struct smtp_session *s)
{
    if (!s) return;
    txn_reset(s);
    free(s->helo);
    free(s->tls);
    free(s->line);
    free(s->out);
    free(s->peer_ip);
    free(s->hostname);
    free(s);
}

void smtp_session_start(struct smtp_session *s)
{
    reply(s, "220 %s ESMTP inlet", s->hostname);
}

void smtp_session_tls_started(struct smtp_session *s, const char *tls)
{
    if (s->state != SMTP_STATE_STARTTLS) return;
    /* RFC 3207 §4.2: forget everything the client said before; no new greeting.  The error count
     * is ours, not the client's knowledge, and stays. */
    txn_reset(s);
    free(s->helo);
    s->helo = NULL;
    s->esmtp = false;
    free(s->line);
    s->line = NULL;
    s->line_len = 0;
    s->discarding = false;
    free(s->tls);
    s->tls = xstrdup(tls && *tls ? tls : "unknown");
    log_debug("smtp", "conn=%s tls=%s", s->tag, s->tls);
    enter_state(s, SMTP_STATE_CONNECTED);
    maybe_finish_shutdown(s);
}

void smtp_session_timeout(struct smtp_session *s)
{
    if (s->state == SMTP_STATE_CLOSING) return;
    if (s->state == SMTP_STATE_STARTTLS) { /* mid-handshake: no plaintext reply possible */
        enter_state(s, SMTP_STATE_CLOSING);
        return;
    }
    txn_reset(s); /* a commit in flight is not ours any more; its reply will be dropped */
    reply_close(s, "421 4.4.2", "Error: timeout exceeded");
}

void smtp_session_shutdown(struct smtp_session *s)
{
    s->shutdown_pending = true;
    maybe_finish_shutdown(s);
}

char *smtp_session_take_output(struct smtp_session *s, size_t *len)
{
    char *out = s->out;
    *len = s->out_len;
    if (s->out_len == 0) {
        *len = 0;
        return NULL;
    }
    s->out = NULL;
    s->out_len = s->out_cap = 0;
    return out;
}

bool smtp_session_closing(const struct smtp_session *s)
{
    return s->state == SMTP_STATE_CLOSING;
}

bool smtp_session_in_transaction(const struct smtp_session *s)
{
    return state_in_transaction(s->state) || s->commit_in_flight;
}

bool smtp_session_in_data(const struct smtp_session *s)
{
    return s->state == SMTP_STATE_DATA;
}

bool smtp_session_committing(const struct smtp_session *s)
{
    return s->commit_in_flight;
}

const char *smtp_session_state_name(const struct smtp_session *s)
{
    return state_names[s->state];
}

void smtp_txn_free(struct smtp_txn *txn)
{
    if (!txn) return;
    free(txn->sender);
    for (size_t i = 0; i < txn->nrcpts; i++) free(txn->rcpts[i]);
    free(txn->rcpts);
    free(txn->helo);
    free(txn->peer_ip);
    free(txn->tls);
    free(txn->data);
    if (txn->sink && txn->sink_discard) txn->sink_discard(txn->sink);
    free(txn);
}
