/* message/authres.c — the "authentication" member of the webhook JSON and the stored-message JSON
 * (SPEC §5, issue 15): inlet's sender-authentication verdicts, read back from the
 * Authentication-Results field that inlet wrote (mailauth/, SPEC §2 "Sender authentication").
 *
 * Which field is inlet's: the message's first header field, when it is an Authentication-Results.
 * inlet writes its own Received: first of all, and with --sender-auth its Authentication-Results
 * above that, after removing any incoming field that claimed its authserv-id; so a sender's field
 * can never be first.  Nothing else is trusted.
 *
 * RFC 8601 grammar, bounded: "authserv-id; method=result (comment) ptype.prop=value ...; ...".
 * spf and dmarc become objects (the first of each), dkim an array with one entry per signature:
 *   {"authserv-id": "...",
 *    "spf": {"result": "pass", "reason": "...", "mailfrom": "a@b"},   (or "helo")
 *    "spf-helo": {"result": "none", "reason": "...", "helo": "mx.b"},  (the first spf with smtp.helo:
 *                the HELO identity, RFC 7208 §2.3; for the null sender the same check as "spf";
 *                null when the HELO was not checked)
 *    "dkim": [{"result": "pass", "reason": "", "domain": "d", "selector": "s", "algorithm": "..."}],
 *    "dmarc": {"result": "fail", "reason": "", "policy": "reject", "aligned": [], "pct": 50,
 *              "applied": "quarantine", "rua": ["mailto:a@d"], "ruf": [], "from": "d"}}
 * dmarc's "applied" is the policy applied to this message after pct= sampling (RFC 7489 §6.6.4,
 * "none" unless it failed); rua/ruf are the record's report addresses (inlet sends no reports). */
#include <string.h>

#include "message/internal.h"

/* One token: a comment "(...)" (nested, with quoted-pairs) or a word up to blank, '(' or ';'.
 * Returns false at the end of the resinfo (';' or the end). */
struct tok {
    const char *p;
    size_t len;
    bool comment;
};

static bool next_tok(const char **s, struct tok *t)
{
    const char *p = *s;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    if (!*p || *p == ';') {
        *s = p;
        return false;
    }
    if (*p == '(') {
        int depth = 0;
        const char *start = p + 1;
        for (; *p; p++) {
            if (*p == '\\' && p[1]) p++;
            else if (*p == '(') depth++;
            else if (*p == ')' && --depth == 0) break;
        }
        *t = (struct tok){.p = start, .len = (size_t)(p - start), .comment = true};
        *s = *p ? p + 1 : p;
        return true;
    }
    const char *start = p;
    bool quoted = false;
    for (; *p; p++) {
        if (*p == '"') quoted = !quoted;
        else if (!quoted && (*p == ' ' || *p == '\t' || *p == '(' || *p == ';' || *p == '\r' || *p == '\n')) break;
    }
    *t = (struct tok){.p = start, .len = (size_t)(p - start)};
    *s = p;
    return true;
}

static json_t *jstr_len(const char *p, size_t len)
{
    char *s = g_strndup(p, MIN(len, (size_t)MSG_AUTHRES_VALUE_MAX));
    json_t *j = msg_jstr(s);
    g_free(s);
    return j;
}

/* The JSON name of a property we know, else NULL (the property is kept as written). */
static const char *prop_name(const char *method, const char *prop, size_t len)
{
    static const struct {
        const char *method, *prop, *name;
    } known[] = {
        {"spf", "smtp.mailfrom", "mailfrom"}, {"spf", "smtp.helo", "helo"},
        {"dkim", "header.d", "domain"},        {"dkim", "header.s", "selector"},
        {"dkim", "header.a", "algorithm"},     {"dkim", "header.b", "b"},
        {"dmarc", "header.from", "from"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(known); i++)
        if (strcmp(known[i].method, method) == 0 && strlen(known[i].prop) == len &&
            g_ascii_strncasecmp(known[i].prop, prop, len) == 0)
            return known[i].name;
    return NULL;
}

/* "a,b,c" (split at `sep`, at most `max` parts, empty ones dropped) → ["a", "b", "c"]. */
static json_t *split_list(const char *text, const char *sep, int max)
{
    json_t *a = json_array();
    char **parts = g_strsplit(text, sep, max);
    for (char **q = parts; *q; q++)
        if (**q) json_array_append_new(a, msg_jstr(*q));
    g_strfreev(parts);
    return a;
}

/* dmarc's comment as inlet writes it (mailauth.c): "p=reject pct=50 applied=quarantine
 * aligned=spf+dkim rua=mailto:a@x,mailto:b@y ruf=...". */
static void dmarc_comment(json_t *o, const struct tok *c)
{
    char *text = g_strndup(c->p, MIN(c->len, (size_t)MSG_AUTHRES_VALUE_MAX));
    char **words = g_strsplit_set(text, " \t", -1);
    for (char **w = words; *w; w++) {
        if (g_str_has_prefix(*w, "p=")) json_object_set_new(o, "policy", msg_jstr(*w + 2));
        else if (g_str_has_prefix(*w, "aligned=")) json_object_set_new(o, "aligned", split_list(*w + 8, "+", 3));
        else if (g_str_has_prefix(*w, "applied=")) json_object_set_new(o, "applied", msg_jstr(*w + 8));
        else if (g_str_has_prefix(*w, "rua=") || g_str_has_prefix(*w, "ruf="))
            json_object_set_new(o, (*w)[2] == 'a' ? "rua" : "ruf", split_list(*w + 4, ",", MSG_AUTHRES_URIS_MAX));
        else if (g_str_has_prefix(*w, "pct=")) {
            gint64 pct = 0;
            if (g_ascii_string_to_signed(*w + 4, 10, 0, 100, &pct, NULL))
                json_object_set_new(o, "pct", json_integer(pct));
        }
    }
    g_strfreev(words);
    g_free(text);
}

/* One resinfo "method=result (comment) props..." → its object, or NULL when it is not one. */
static json_t *resinfo(const char **s, char *method, size_t methodsz)
{
    struct tok t;
    if (!next_tok(s, &t) || t.comment) return NULL;
    const char *eq = memchr(t.p, '=', t.len);
    if (!eq || (size_t)(eq - t.p) >= methodsz) return NULL;
    size_t ml = (size_t)(eq - t.p);
    for (size_t i = 0; i < ml; i++) method[i] = g_ascii_tolower(t.p[i]);
    method[ml] = '\0';
    json_t *o = json_object();
    json_object_set_new(o, "result", jstr_len(eq + 1, t.len - ml - 1));
    json_object_set_new(o, "reason", msg_jstr(""));
    if (strcmp(method, "dmarc") == 0) { /* the comment's words, when it has them */
        json_object_set_new(o, "policy", msg_jstr(""));
        json_object_set_new(o, "aligned", json_array());
        json_object_set_new(o, "pct", json_integer(100));
        json_object_set_new(o, "applied", msg_jstr("none"));
        json_object_set_new(o, "rua", json_array());
        json_object_set_new(o, "ruf", json_array());
    }
    for (int n = 0; n < MSG_AUTHRES_PROPS_MAX && next_tok(s, &t); n++) {
        if (t.comment) {
            if (strcmp(method, "dmarc") == 0) dmarc_comment(o, &t);
            else json_object_set_new(o, "reason", jstr_len(t.p, t.len));
            continue;
        }
        const char *peq = memchr(t.p, '=', t.len);
        if (!peq) continue;
        size_t pl = (size_t)(peq - t.p);
        const char *name = prop_name(method, t.p, pl);
        char *key = name ? g_strdup(name) : g_ascii_strdown(t.p, (gssize)MIN(pl, (size_t)64));
        json_object_set_new(o, key, jstr_len(peq + 1, t.len - pl - 1));
        g_free(key);
    }
    return o;
}

json_t *msg_authres_json(const struct message *m)
{
    if (message_header_count(m) == 0) return NULL;
    const char *name, *value;
    message_header(m, 0, &name, &value);
    if (g_ascii_strcasecmp(name, "Authentication-Results") != 0) return NULL;
    const char *s = value;
    struct tok t;
    if (!next_tok(&s, &t) || t.comment) return NULL;
    json_t *o = json_object();
    json_object_set_new(o, "authserv-id", jstr_len(t.p, t.len));
    json_t *dkim = json_array();
    json_t *spf = NULL, *spf_helo = NULL, *dmarc = NULL;
    while (*s && json_array_size(dkim) < MSG_AUTHRES_RESULTS_MAX) {
        s = strchr(s, ';'); /* skips what is left of the previous resinfo */
        if (!s) break;
        s++;
        char method[16];
        json_t *r = resinfo(&s, method, sizeof method);
        if (!r) continue;
        if (strcmp(method, "spf") == 0 && !spf_helo && json_object_get(r, "helo"))
            spf_helo = json_deep_copy(r);
        if (strcmp(method, "spf") == 0 && !spf) spf = r;
        else if (strcmp(method, "dmarc") == 0 && !dmarc) dmarc = r;
        else if (strcmp(method, "dkim") == 0) json_array_append_new(dkim, r);
        else json_decref(r);
    }
    json_object_set_new(o, "spf", spf ? spf : json_null());
    json_object_set_new(o, "spf-helo", spf_helo ? spf_helo : json_null());
    json_object_set_new(o, "dkim", dkim);
    json_object_set_new(o, "dmarc", dmarc ? dmarc : json_null());
    return o;
}
