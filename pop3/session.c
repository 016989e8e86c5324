/* pop3/session.c — the POP3 protocol as a pure state machine (pop3.h; RFC 1939, 2449, 2595, 5034).
 *
 * States: AUTHORIZATION (USER/PASS, AUTH PLAIN, STLS, CAPA, QUIT), TRANSACTION once the maildrop
 * is open, then closing.  A command that needs storage sets `req` and the session takes no more
 * input until the caller answers; replies are queued in `out`, which the caller drains.  Lines are
 * cut at CRLF (a bare LF is accepted), at most POP3_LINE_MAX bytes; verbs are matched ignoring
 * case.  Every reply text is SPEC §9's. */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3/pop3.h"
#include "util/limits.h"

enum state { ST_AUTH, ST_TRANS, ST_CLOSING };

struct pop3_session {
    struct pop3_session_config cfg;
    enum state state;
    enum pop3_request req;
    GString *out;
    char line[POP3_LINE_MAX + 1];
    size_t linelen;
    bool overflow;        /* the current line passed POP3_LINE_MAX */
    bool sasl_wait;       /* AUTH PLAIN sent "+ ": the next line is the response */
    unsigned commands, failed;
    char *user, *password;
    struct pop3_entry *entries;
    size_t n;
    bool *deleted, *retrieved;
    GPtrArray *deleted_uids, *retrieved_uids; /* views for the caller */
    size_t fetch_index;   /* 0-based message of a pending FETCH */
    long top_lines;       /* -1: RETR; else TOP's line count */
};

static void reply(struct pop3_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct pop3_session *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_string_append_vprintf(s->out, fmt, ap);
    va_end(ap);
    g_string_append(s->out, "\r\n");
}

static void forget_credentials(struct pop3_session *s)
{
    if (s->password) explicit_bzero(s->password, strlen(s->password));
    g_free(s->password);
    s->password = NULL;
    g_free(s->user);
    s->user = NULL;
}

struct pop3_session *pop3_session_new(const struct pop3_session_config *cfg)
{
    struct pop3_session *s = g_new0(struct pop3_session, 1);

    s->cfg = *cfg;
    s->out = g_string_new(NULL);
    s->deleted_uids = g_ptr_array_new();
    s->retrieved_uids = g_ptr_array_new();
    return s;
}

void pop3_session_free(struct pop3_session *s)
{
    if (!s) return;
    forget_credentials(s);
    g_string_free(s->out, TRUE);
    g_free(s->entries);
    g_free(s->deleted);
    g_free(s->retrieved);
    g_ptr_array_free(s->deleted_uids, TRUE);
    g_ptr_array_free(s->retrieved_uids, TRUE);
    g_free(s);
}

void pop3_session_start(struct pop3_session *s)
{
    reply(s, "+OK inlet POP3 server ready");
}

const char *pop3_session_output(const struct pop3_session *s, size_t *len)
{
    *len = s->out->len;
    return s->out->str;
}

void pop3_session_consumed(struct pop3_session *s, size_t n)
{
    g_string_erase(s->out, 0, (gssize)(n < s->out->len ? n : s->out->len));
}

bool pop3_session_closing(const struct pop3_session *s)
{
    return s->state == ST_CLOSING && s->req == POP3_REQ_NONE;
}

enum pop3_request pop3_session_request(const struct pop3_session *s)
{
    return s->req;
}

const char *pop3_session_user(const struct pop3_session *s)
{
    return s->user ? s->user : "";
}

const char *pop3_session_password(const struct pop3_session *s)
{
    return s->password ? s->password : "";
}

const char *pop3_session_fetch_id(const struct pop3_session *s)
{
    return s->req == POP3_REQ_FETCH ? s->entries[s->fetch_index].message_id : "";
}

unsigned pop3_session_failed_logins(const struct pop3_session *s)
{
    return s->failed;
}

bool pop3_session_has_maildrop(const struct pop3_session *s)
{
    return s->entries != NULL || s->deleted != NULL;
}

void pop3_session_timeout(struct pop3_session *s)
{
    if (s->state == ST_CLOSING) return;
    reply(s, "-ERR Autologout: idle for too long");
    s->state = ST_CLOSING;
}

static const char *const *uid_view(GPtrArray *view, const struct pop3_session *s, const bool *marks, size_t *n)
{
    g_ptr_array_set_size(view, 0);
    for (size_t i = 0; marks && i < s->n; i++)
        if (marks[i]) g_ptr_array_add(view, s->entries[i].uid);
    *n = view->len;
    return (const char *const *)view->pdata;
}

const char *const *pop3_session_deleted(const struct pop3_session *s, size_t *n)
{
    return uid_view(s->deleted_uids, s, s->deleted, n);
}

const char *const *pop3_session_retrieved(const struct pop3_session *s, size_t *n)
{
    return uid_view(s->retrieved_uids, s, s->retrieved, n);
}

/* ---- the maildrop ------------------------------------------------------------------------------ */

static void maildrop_totals(const struct pop3_session *s, size_t *count, int64_t *octets)
{
    *count = 0;
    *octets = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->deleted[i]) continue;
        (*count)++;
        *octets += s->entries[i].size;
    }
}

/* "N" of a command argument: a message number that exists and is not deleted, as a 0-based index;
 * else the -ERR is said and false returned. */
static bool message_arg(struct pop3_session *s, const char *arg, size_t *index)
{
    char *end = NULL;
    unsigned long v = arg && *arg >= '0' && *arg <= '9' ? strtoul(arg, &end, 10) : 0;

    if (!end || *end || v == 0 || v > s->n) {
        reply(s, "-ERR No such message");
        return false;
    }
    if (s->deleted[v - 1]) {
        reply(s, "-ERR Message %lu is deleted", v);
        return false;
    }
    *index = v - 1;
    return true;
}

void pop3_session_login_done(struct pop3_session *s, enum pop3_login_result r, const struct pop3_entry *entries,
                             size_t n)
{
    if (s->req != POP3_REQ_LOGIN) return;
    s->req = POP3_REQ_NONE;
    if (s->password) explicit_bzero(s->password, strlen(s->password));
    g_free(s->password);
    s->password = NULL;
    if (r != POP3_LOGIN_OK) {
        g_free(s->user);
        s->user = NULL;
        if (r == POP3_LOGIN_IN_USE) {
            reply(s, "-ERR [IN-USE] Mailbox is in use by another session");
        } else if (r == POP3_LOGIN_UNAVAILABLE) {
            reply(s, "-ERR [SYS/TEMP] Storage unavailable, try again later");
        } else {
            s->failed++;
            reply(s, "-ERR [AUTH] Invalid login");
            if (s->failed >= POP3_AUTH_FAILURES_MAX) {
                reply(s, "-ERR [AUTH] Too many failed logins, closing");
                s->state = ST_CLOSING;
            }
        }
        return;
    }
    s->n = n;
    s->entries = g_new0(struct pop3_entry, n ? n : 1);
    if (n) memcpy(s->entries, entries, n * sizeof *entries);
    s->deleted = g_new0(bool, n ? n : 1);
    s->retrieved = g_new0(bool, n ? n : 1);
    s->state = ST_TRANS;
    size_t count;
    int64_t octets;
    maildrop_totals(s, &count, &octets);
    reply(s, "+OK Maildrop has %zu messages (%lld octets)", count, (long long)octets);
}

/* The message's lines, dot-stuffed, each ending in CRLF (a bare LF becomes CRLF; a last line
 * without one gets it), then ".": all of it for RETR (top < 0), else the headers, the blank line
 * and `top` lines of the body. */
static void put_message(struct pop3_session *s, const uint8_t *data, size_t len, long top)
{
    bool in_body = false;
    long body_lines = 0;
    size_t i = 0;

    while (i < len) {
        const uint8_t *nl = memchr(data + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - data) : len, stop = end;

        if (stop > i && data[stop - 1] == '\r') stop--;
        if (in_body && top >= 0 && body_lines++ >= top) break;
        if (stop > i && data[i] == '.') g_string_append_c(s->out, '.');
        g_string_append_len(s->out, (const char *)data + i, (gssize)(stop - i));
        g_string_append(s->out, "\r\n");
        if (!in_body && stop == i) in_body = true;
        i = nl ? end + 1 : len;
    }
    g_string_append(s->out, ".\r\n");
}

void pop3_session_fetch_done(struct pop3_session *s, const uint8_t *data, size_t len)
{
    if (s->req != POP3_REQ_FETCH) return;
    s->req = POP3_REQ_NONE;
    if (!data) {
        reply(s, "-ERR [SYS/TEMP] Message cannot be read now, try again later");
        return;
    }
    const struct pop3_entry *e = &s->entries[s->fetch_index];
    if (s->top_lines < 0) reply(s, "+OK %lld octets", (long long)e->size);
    else reply(s, "+OK Top of message follows");
    put_message(s, data, len, s->top_lines);
    s->retrieved[s->fetch_index] = true;
}

void pop3_session_close_done(struct pop3_session *s, enum pop3_close_result r)
{
    size_t deleted = 0;

    if (s->req != POP3_REQ_CLOSE) return;
    s->req = POP3_REQ_NONE;
    for (size_t i = 0; i < s->n; i++) deleted += s->deleted[i];
    if (r == POP3_CLOSE_OK) reply(s, "+OK Bye, %zu messages deleted", deleted);
    else if (r == POP3_CLOSE_LOCK_LOST) reply(s, "-ERR [SYS/TEMP] Maildrop lock lost: no message was deleted");
    else reply(s, "-ERR [SYS/TEMP] Storage unavailable: no message was deleted");
    g_free(s->entries);
    s->entries = NULL;
    g_free(s->deleted);
    s->deleted = NULL;
    s->n = 0;
    s->state = ST_CLOSING;
}

void pop3_session_tls_started(struct pop3_session *s)
{
    if (s->req != POP3_REQ_TLS) return;
    s->req = POP3_REQ_NONE;
    s->cfg.tls_active = true;
    forget_credentials(s); /* RFC 2595: what was said before TLS is forgotten */
    s->linelen = 0;
    s->overflow = false;
}

/* ---- commands ----------------------------------------------------------------------------------- */

static bool login_allowed(const struct pop3_session *s)
{
    return s->cfg.tls_active || s->cfg.plaintext_ok;
}

static void cmd_capa(struct pop3_session *s)
{
    reply(s, "+OK Capability list follows");
    reply(s, "TOP");
    reply(s, "UIDL");
    reply(s, "RESP-CODES");
    reply(s, "AUTH-RESP-CODE");
    reply(s, "PIPELINING");
    if (s->state == ST_AUTH && login_allowed(s)) {
        reply(s, "USER");
        reply(s, "SASL PLAIN");
    }
    if (s->state == ST_AUTH && s->cfg.tls_available && !s->cfg.tls_active) reply(s, "STLS");
    reply(s, "IMPLEMENTATION inlet");
    reply(s, ".");
}

static bool refuse_plaintext(struct pop3_session *s)
{
    if (login_allowed(s)) return false;
    reply(s, "-ERR [AUTH] Plaintext login refused%s", s->cfg.tls_available ? ": use STLS first" : "");
    return true;
}

static void start_login(struct pop3_session *s, const char *user, size_t ulen, const char *pw, size_t plen)
{
    g_free(s->user);
    s->user = g_ascii_strdown(user, (gssize)ulen);
    g_free(s->password);
    s->password = g_strndup(pw, plen);
    s->req = POP3_REQ_LOGIN;
}

static void cmd_user(struct pop3_session *s, const char *arg)
{
    if (refuse_plaintext(s)) return;
    if (!arg || !*arg) {
        reply(s, "-ERR USER needs a mailbox name");
        return;
    }
    g_free(s->user);
    s->user = g_ascii_strdown(arg, -1);
    reply(s, "+OK Send PASS");
}

static void cmd_pass(struct pop3_session *s, const char *arg)
{
    if (refuse_plaintext(s)) return;
    if (!s->user) {
        reply(s, "-ERR USER first");
        return;
    }
    char *user = g_strdup(s->user);
    start_login(s, user, strlen(user), arg ? arg : "", arg ? strlen(arg) : 0);
    g_free(user);
}

/* RFC 4616: [authzid] NUL authcid NUL passwd, base64; authzid empty or the authcid. */
static void sasl_plain(struct pop3_session *s, const char *b64)
{
    gsize n = 0;
    guchar *raw;

    if (strcmp(b64, "*") == 0) {
        reply(s, "-ERR Authentication cancelled");
        return;
    }
    if (!*b64 || strspn(b64, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != strlen(b64)) {
        reply(s, "-ERR [AUTH] Invalid SASL PLAIN response");
        return;
    }
    raw = g_base64_decode(b64, &n);
    const char *p = (const char *)raw, *end = p + n;
    const char *z1 = memchr(p, '\0', n), *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(end - z1 - 1)) : NULL;
    if (!z2 || (z1 != p && (z2 - z1 - 1 != z1 - p || memcmp(p, z1 + 1, (size_t)(z1 - p)) != 0))) {
        reply(s, "-ERR [AUTH] Invalid SASL PLAIN response");
    } else {
        start_login(s, z1 + 1, (size_t)(z2 - z1 - 1), z2 + 1, (size_t)(end - z2 - 1));
    }
    if (raw) explicit_bzero(raw, n);
    g_free(raw);
}

static void cmd_auth(struct pop3_session *s, const char *arg)
{
    char mech[16] = "";
    const char *sp = arg ? strchr(arg, ' ') : NULL;

    if (!arg || !*arg) {
        reply(s, "+OK Mechanisms follow");
        reply(s, "PLAIN");
        reply(s, ".");
        return;
    }
    snprintf(mech, sizeof mech, "%.*s", (int)(sp ? (size_t)(sp - arg) : strlen(arg)), arg);
    if (g_ascii_strcasecmp(mech, "PLAIN") != 0) {
        reply(s, "-ERR Unsupported authentication mechanism");
        return;
    }
    if (refuse_plaintext(s)) return;
    if (sp) {
        sasl_plain(s, sp + 1);
        return;
    }
    s->sasl_wait = true;
    reply(s, "+ ");
}

static void cmd_stls(struct pop3_session *s)
{
    if (!s->cfg.tls_available || s->cfg.tls_active) {
        reply(s, "-ERR %s", s->cfg.tls_active ? "TLS is already active" : "STLS is not available");
        return;
    }
    reply(s, "+OK Begin TLS negotiation");
    s->req = POP3_REQ_TLS;
}

static void cmd_list(struct pop3_session *s, const char *arg, bool uidl)
{
    size_t i;

    if (arg && *arg) {
        if (!message_arg(s, arg, &i)) return;
        if (uidl) reply(s, "+OK %zu %s", i + 1, s->entries[i].uid);
        else reply(s, "+OK %zu %lld", i + 1, (long long)s->entries[i].size);
        return;
    }
    size_t count;
    int64_t octets;
    maildrop_totals(s, &count, &octets);
    if (uidl) reply(s, "+OK Unique-ID listing follows");
    else reply(s, "+OK %zu messages (%lld octets)", count, (long long)octets);
    for (i = 0; i < s->n; i++) {
        if (s->deleted[i]) continue;
        if (uidl) reply(s, "%zu %s", i + 1, s->entries[i].uid);
        else reply(s, "%zu %lld", i + 1, (long long)s->entries[i].size);
    }
    reply(s, ".");
}

static void cmd_retr(struct pop3_session *s, const char *arg, bool top)
{
    char *rest = NULL;
    char num[24] = "";
    size_t i;
    long lines = -1;

    if (top) {
        const char *sp = arg ? strchr(arg, ' ') : NULL;
        if (!sp || sp[1] < '0' || sp[1] > '9' || (lines = strtol(sp + 1, &rest, 10)) < 0 || *rest) {
            reply(s, "-ERR TOP needs a message number and a count of lines");
            return;
        }
        snprintf(num, sizeof num, "%.*s", (int)(sp - arg < 23 ? sp - arg : 23), arg);
        arg = num;
    }
    if (!message_arg(s, arg, &i)) return;
    s->fetch_index = i;
    s->top_lines = lines;
    s->req = POP3_REQ_FETCH;
}

static void cmd_dele(struct pop3_session *s, const char *arg)
{
    size_t i;

    if (!message_arg(s, arg, &i)) return;
    s->deleted[i] = true;
    reply(s, "+OK Message %zu deleted", i + 1);
}

static void cmd_rset(struct pop3_session *s)
{
    size_t count;
    int64_t octets;

    memset(s->deleted, 0, s->n * sizeof *s->deleted);
    maildrop_totals(s, &count, &octets);
    reply(s, "+OK Maildrop has %zu messages (%lld octets)", count, (long long)octets);
}

static void cmd_stat(struct pop3_session *s)
{
    size_t count;
    int64_t octets;

    maildrop_totals(s, &count, &octets);
    reply(s, "+OK %zu %lld", count, (long long)octets);
}

static void cmd_quit(struct pop3_session *s)
{
    if (s->state == ST_TRANS) {
        s->req = POP3_REQ_CLOSE; /* UPDATE: the caller commits, then close_done says +OK */
        s->state = ST_CLOSING;
        return;
    }
    reply(s, "+OK Bye");
    s->state = ST_CLOSING;
}

/* The verbs, and the state each is valid in (TRANS verbs in AUTH and the reverse are -ERR). */
static void command(struct pop3_session *s, char *line)
{
    char *arg = strchr(line, ' ');

    if (arg) *arg++ = '\0';
    if (s->sasl_wait) {
        s->sasl_wait = false;
        if (arg) arg[-1] = ' ';
        sasl_plain(s, line);
        return;
    }
    const bool auth = s->state == ST_AUTH, trans = s->state == ST_TRANS;
    if (!g_ascii_strcasecmp(line, "CAPA")) cmd_capa(s);
    else if (!g_ascii_strcasecmp(line, "QUIT")) cmd_quit(s);
    else if (auth && !g_ascii_strcasecmp(line, "USER")) cmd_user(s, arg);
    else if (auth && !g_ascii_strcasecmp(line, "PASS")) cmd_pass(s, arg);
    else if (auth && !g_ascii_strcasecmp(line, "AUTH")) cmd_auth(s, arg);
    else if (auth && !g_ascii_strcasecmp(line, "STLS")) cmd_stls(s);
    else if (trans && !g_ascii_strcasecmp(line, "STAT")) cmd_stat(s);
    else if (trans && !g_ascii_strcasecmp(line, "LIST")) cmd_list(s, arg, false);
    else if (trans && !g_ascii_strcasecmp(line, "UIDL")) cmd_list(s, arg, true);
    else if (trans && !g_ascii_strcasecmp(line, "RETR")) cmd_retr(s, arg, false);
    else if (trans && !g_ascii_strcasecmp(line, "TOP")) cmd_retr(s, arg, true);
    else if (trans && !g_ascii_strcasecmp(line, "DELE")) cmd_dele(s, arg);
    else if (trans && !g_ascii_strcasecmp(line, "RSET")) cmd_rset(s);
    else if (trans && !g_ascii_strcasecmp(line, "NOOP")) reply(s, "+OK");
    else reply(s, "-ERR Unknown command or not valid now");
}

static void end_of_line(struct pop3_session *s)
{
    if (s->linelen && s->line[s->linelen - 1] == '\r') s->linelen--;
    s->line[s->linelen] = '\0';
    if (s->overflow) {
        reply(s, "-ERR Line too long");
        s->sasl_wait = false;
    } else if (++s->commands > POP3_COMMANDS_MAX) {
        reply(s, "-ERR Too many commands, closing");
        s->state = ST_CLOSING;
    } else if (memchr(s->line, '\0', s->linelen)) {
        reply(s, "-ERR Unknown command or not valid now");
    } else {
        command(s, s->line);
    }
    explicit_bzero(s->line, s->linelen);
    s->linelen = 0;
    s->overflow = false;
}

size_t pop3_session_feed(struct pop3_session *s, const char *data, size_t len)
{
    size_t i = 0;

    while (i < len && s->state != ST_CLOSING && s->req == POP3_REQ_NONE && s->out->len <= POP3_OUTPUT_MAX) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t take = nl ? (size_t)(nl - (data + i)) : len - i;
        size_t room = POP3_LINE_MAX - s->linelen;

        if (take > room) s->overflow = true;
        memcpy(s->line + s->linelen, data + i, take < room ? take : room);
        s->linelen += take < room ? take : room;
        i += take;
        if (!nl) break;
        i++; /* the LF */
        end_of_line(s);
    }
    return i;
}
