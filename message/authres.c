/* message/authres.c — the "authentication" member of the webhook JSON and the stored-message JSON
 * (SPEC §5, issue 15): inlet's sender-authentication verdicts, read back from the
 * Authentication-Results field that inlet wrote (mailauth/, SPEC §2 "Sender authentication").
 *
 * Written as compact JSON text straight away (jsonw.c's string writer), not as a jansson tree
 * then dumped: every checked message needs the text (its webhook payloads, the message_auth
 * row), and the tree cost a tenth of the parse of a small message; json.c and stored.c load the
 * text when they build a tree.  The text is what json_dumps(tree, JSON_COMPACT) gave for the tree
 * this file used to build: members in the order they were first set, a value set again replaced
 * in place, a member whose key or value jansson would refuse left out.
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
#include "util/limits.h"

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

/* ---- one JSON object: its members in order, each value's text in one buffer ------------------ */

/* A member: at most MSG_AUTHRES_MEMBERS_MAX of them ("result", "reason", dmarc's six, the
 * properties). */
struct member {
    char key[MSG_AUTHRES_KEY_MAX + 1];
    size_t key_off, key_len; /* the key as a JSON string, in obj.text */
    size_t off, len;         /* the value's JSON text, in obj.text */
};

struct obj {
    GString *text; /* every key and value written; a value set again is appended anew */
    size_t n;
    struct member m[MSG_AUTHRES_MEMBERS_MAX];
};

static struct member *find(struct obj *o, const char *key)
{
    for (size_t i = 0; i < o->n; i++)
        if (strcmp(o->m[i].key, key) == 0) return &o->m[i];
    return NULL;
}

/* Sets `key` to the value written in o->text from `mark` on (ok false: the writer refused it).
 * As json_object_set_new: a refused key or value changes nothing; a key set again keeps its place. */
static void set_written(struct obj *o, const char *key, size_t mark, bool ok)
{
    if (!ok) {
        g_string_truncate(o->text, mark);
        return;
    }
    const size_t value_len = o->text->len - mark;
    struct member *e = find(o, key);
    if (!e) {
        const size_t key_off = o->text->len;
        if (o->n == MSG_AUTHRES_MEMBERS_MAX || !msg_jsonw_string(o->text, key)) {
            g_string_truncate(o->text, mark);
            return;
        }
        e = &o->m[o->n++];
        g_strlcpy(e->key, key, sizeof e->key);
        e->key_off = key_off;
        e->key_len = o->text->len - key_off;
    }
    e->off = mark;
    e->len = value_len;
}

/* A string value of at most MSG_AUTHRES_VALUE_MAX bytes of p[0..len), repaired as msg_jstr(). */
static void set_str_len(struct obj *o, const char *key, const char *p, size_t len)
{
    char buf[MSG_AUTHRES_VALUE_MAX + 1];
    len = MIN(len, (size_t)MSG_AUTHRES_VALUE_MAX);
    memcpy(buf, p, len);
    buf[len] = '\0';
    size_t mark = o->text->len;
    set_written(o, key, mark, msg_jsonw_jstr(o->text, buf));
}

static void set_str(struct obj *o, const char *key, const char *s)
{
    set_str_len(o, key, s, strlen(s));
}

static void set_raw(struct obj *o, const char *key, const char *json)
{
    size_t mark = o->text->len;
    g_string_append(o->text, json);
    set_written(o, key, mark, true);
}

/* "a,b,c" (split at `sep`, at most `max` parts, empty ones dropped) → ["a","b","c"]. */
static void set_list(struct obj *o, const char *key, const char *text, const char *sep, int max)
{
    size_t mark = o->text->len;
    char **parts = g_strsplit(text, sep, max);
    bool first = true;
    g_string_append_c(o->text, '[');
    for (char **q = parts; *q; q++) {
        if (!**q) continue;
        size_t at = o->text->len;
        if (!first) g_string_append_c(o->text, ',');
        if (msg_jsonw_jstr(o->text, *q)) first = false;
        else g_string_truncate(o->text, at);
    }
    g_string_append_c(o->text, ']');
    g_strfreev(parts);
    set_written(o, key, mark, true);
}

/* The object's JSON text, appended to out. */
static void obj_write(const struct obj *o, GString *out)
{
    g_string_append_c(out, '{');
    for (size_t i = 0; i < o->n; i++) {
        if (i) g_string_append_c(out, ',');
        g_string_append_len(out, o->text->str + o->m[i].key_off, (gssize)o->m[i].key_len);
        g_string_append_c(out, ':');
        g_string_append_len(out, o->text->str + o->m[i].off, (gssize)o->m[i].len);
    }
    g_string_append_c(out, '}');
}

/* ---- the resinfos --------------------------------------------------------------------------- */

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

/* dmarc's comment as inlet writes it (mailauth.c): "p=reject pct=50 applied=quarantine
 * aligned=spf+dkim rua=mailto:a@x,mailto:b@y ruf=...". */
static void dmarc_comment(struct obj *o, const struct tok *c)
{
    char *text = g_strndup(c->p, MIN(c->len, (size_t)MSG_AUTHRES_VALUE_MAX));
    char **words = g_strsplit_set(text, " \t", -1);
    for (char **w = words; *w; w++) {
        if (g_str_has_prefix(*w, "p=")) set_str(o, "policy", *w + 2);
        else if (g_str_has_prefix(*w, "aligned=")) set_list(o, "aligned", *w + 8, "+", 3);
        else if (g_str_has_prefix(*w, "applied=")) set_str(o, "applied", *w + 8);
        else if (g_str_has_prefix(*w, "rua=") || g_str_has_prefix(*w, "ruf="))
            set_list(o, (*w)[2] == 'a' ? "rua" : "ruf", *w + 4, ",", MSG_AUTHRES_URIS_MAX);
        else if (g_str_has_prefix(*w, "pct=")) {
            gint64 pct = 0;
            char num[24];
            if (g_ascii_string_to_signed(*w + 4, 10, 0, 100, &pct, NULL)) {
                g_snprintf(num, sizeof num, "%" G_GINT64_FORMAT, pct);
                set_raw(o, "pct", num);
            }
        }
    }
    g_strfreev(words);
    g_free(text);
}

/* One resinfo "method=result (comment) props..." → its JSON object appended to out, its method
 * in `method`, whether it has a "helo" member in *helo; false (nothing appended) when it is not
 * one.  `scratch`: the object's working text. */
static bool resinfo(const char **s, char *method, size_t methodsz, GString *scratch, GString *out, bool *helo)
{
    struct tok t;
    if (!next_tok(s, &t) || t.comment) return false;
    const char *eq = memchr(t.p, '=', t.len);
    if (!eq || (size_t)(eq - t.p) >= methodsz) return false;
    size_t ml = (size_t)(eq - t.p);
    for (size_t i = 0; i < ml; i++) method[i] = g_ascii_tolower(t.p[i]);
    method[ml] = '\0';
    const bool dmarc = strcmp(method, "dmarc") == 0;
    g_string_truncate(scratch, 0);
    struct obj o = {.text = scratch};
    set_str_len(&o, "result", eq + 1, t.len - ml - 1);
    set_str(&o, "reason", "");
    if (dmarc) { /* the comment's words, when it has them */
        set_str(&o, "policy", "");
        set_raw(&o, "aligned", "[]");
        set_raw(&o, "pct", "100");
        set_str(&o, "applied", "none");
        set_raw(&o, "rua", "[]");
        set_raw(&o, "ruf", "[]");
    }
    for (int n = 0; n < MSG_AUTHRES_PROPS_MAX && next_tok(s, &t); n++) {
        if (t.comment) {
            if (dmarc) dmarc_comment(&o, &t);
            else set_str_len(&o, "reason", t.p, t.len);
            continue;
        }
        const char *peq = memchr(t.p, '=', t.len);
        if (!peq) continue;
        size_t pl = (size_t)(peq - t.p);
        const char *name = prop_name(method, t.p, pl);
        char key[MSG_AUTHRES_KEY_MAX + 1];
        if (name) {
            g_strlcpy(key, name, sizeof key);
        } else {
            size_t kl = MIN(pl, (size_t)MSG_AUTHRES_KEY_MAX);
            for (size_t i = 0; i < kl; i++) key[i] = g_ascii_tolower(t.p[i]);
            key[kl] = '\0';
        }
        set_str_len(&o, key, peq + 1, t.len - pl - 1);
    }
    *helo = find(&o, "helo") != NULL;
    obj_write(&o, out);
    return true;
}

char *msg_authres_text(const struct message *m)
{
    if (message_header_count(m) == 0) return NULL;
    const char *name, *value;
    message_header(m, 0, &name, &value);
    if (g_ascii_strcasecmp(name, "Authentication-Results") != 0) return NULL;
    const char *s = value;
    struct tok t;
    if (!next_tok(&s, &t) || t.comment) return NULL;
    GString *scratch = g_string_sized_new(512), *one = g_string_sized_new(256);
    GString *spf = NULL, *spf_helo = NULL, *dmarc = NULL, *dkim = g_string_new("[");
    size_t ndkim = 0;
    while (*s && ndkim < MSG_AUTHRES_RESULTS_MAX) {
        s = strchr(s, ';'); /* skips what is left of the previous resinfo */
        if (!s) break;
        s++;
        char method[16];
        g_string_truncate(one, 0);
        bool helo = false;
        if (!resinfo(&s, method, sizeof method, scratch, one, &helo)) continue;
        const bool is_spf = strcmp(method, "spf") == 0;
        if (is_spf && !spf_helo && helo) spf_helo = g_string_new(one->str); /* the HELO identity's */
        if (is_spf && !spf) spf = g_string_new(one->str);
        else if (strcmp(method, "dmarc") == 0 && !dmarc) dmarc = g_string_new(one->str);
        else if (strcmp(method, "dkim") == 0) {
            if (ndkim++) g_string_append_c(dkim, ',');
            g_string_append_len(dkim, one->str, (gssize)one->len);
        }
    }
    g_string_append_c(dkim, ']');

    struct obj o = {.text = scratch};
    g_string_truncate(scratch, 0);
    set_str_len(&o, "authserv-id", t.p, t.len);
    set_raw(&o, "spf", spf ? spf->str : "null");
    set_raw(&o, "spf-helo", spf_helo ? spf_helo->str : "null");
    set_raw(&o, "dkim", dkim->str);
    set_raw(&o, "dmarc", dmarc ? dmarc->str : "null");
    GString *out = g_string_sized_new(scratch->len + 16);
    obj_write(&o, out);
    for (GString **g = (GString *[]){spf, spf_helo, dmarc, dkim, one, scratch}, **end = g + 6; g < end; g++)
        if (*g) g_string_free(*g, TRUE);
    return g_string_free(out, FALSE);
}

json_t *msg_authres_tree(const struct message *m)
{
    return m->authentication_text ? json_loads(m->authentication_text, 0, NULL) : NULL;
}
