/* message/strip.c — see internal_strip.h.
 *
 * Everything here is a bounded scan: each line (plain text) or each tag and text run (HTML) is
 * looked at a constant number of times, with look-ahead of at most a few lines, so the time is
 * linear in the input.  Cuts happen only at line starts, at '<' or at an ASCII byte of a marker,
 * and trimming removes only ASCII white space and whole U+00A0 sequences, so a valid UTF-8 input
 * gives valid UTF-8 outputs.  Memory comes from GLib (g_malloc memory may be released with
 * free()), which aborts when memory runs out, like the rest of inlet. */
#include "message/internal_strip.h"

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "util/limits.h"

struct span {
    const char *p;
    size_t n;
};

/* ------------------------------------------------------------------------------------------ */
/* Byte helpers */

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static unsigned char lc(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* Length of a no-break space (U+00A0, U+202F, "&nbsp;", "&#160;") at p, or 0. */
static size_t nbsp_at(const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    if (n >= 2 && u[0] == 0xC2 && u[1] == 0xA0) return 2;
    if (n >= 3 && u[0] == 0xE2 && u[1] == 0x80 && u[2] == 0xAF) return 3;
    if (n >= 6 && memcmp(p, "&nbsp;", 6) == 0) return 6;
    if (n >= 6 && memcmp(p, "&#160;", 6) == 0) return 6;
    return 0;
}

/* Length of a no-break space that ends at p + n, or 0 (the entities count too). */
static size_t nbsp_before(const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    if (n >= 2 && u[n - 2] == 0xC2 && u[n - 1] == 0xA0) return 2;
    if (n >= 3 && u[n - 3] == 0xE2 && u[n - 2] == 0x80 && u[n - 1] == 0xAF) return 3;
    if (n >= 6 && (memcmp(p + n - 6, "&nbsp;", 6) == 0 || memcmp(p + n - 6, "&#160;", 6) == 0))
        return 6;
    return 0;
}

static struct span trim_left(struct span s)
{
    for (;;) {
        size_t k;
        if (s.n && is_ws((unsigned char)s.p[0])) k = 1;
        else if ((k = nbsp_at(s.p, s.n)) == 0) return s;
        s.p += k;
        s.n -= k;
    }
}

static struct span trim_right(struct span s)
{
    for (;;) {
        size_t k;
        if (s.n && is_ws((unsigned char)s.p[s.n - 1])) k = 1;
        else if ((k = nbsp_before(s.p, s.n)) == 0) return s;
        s.n -= k;
    }
}

static struct span trim(struct span s)
{
    return trim_right(trim_left(s));
}

static bool is_blank(struct span s)
{
    return trim_left(s).n == 0;
}

/* ASCII case-insensitive prefix; other bytes compare exactly. */
static bool has_prefix(struct span s, const char *lit)
{
    size_t i = 0;
    for (; lit[i]; i++)
        if (i == s.n || lc((unsigned char)s.p[i]) != lc((unsigned char)lit[i])) return false;
    return true;
}

/* Case-sensitive suffix. */
static bool has_suffix(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n >= n && memcmp(s.p + s.n - n, lit, n) == 0;
}

static bool contains(struct span s, const char *lit)
{
    return memmem(s.p, s.n, lit, strlen(lit)) != NULL;
}

static char *dup_span(const char *p, size_t n)
{
    char *r = g_malloc(n + 1);
    if (n) memcpy(r, p, n);
    r[n] = '\0';
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Line classification (also used on HTML text runs) */

static const char *const att_starts[] = {"On ", "Le ", "Am ", "El ", NULL};
static const char *const att_verbs[] = {"wrote", "\xC3\xA9" "crit", "schrieb",
                                        "escribi\xC3\xB3", NULL};

static const char *const hdr_from[] = {"From", "De", "Von", NULL};
static const char *const hdr_date[] = {"Sent", "Date", "Envoy\xC3\xA9", "Gesendet", "Enviado el",
                                       "Enviado", "Fecha", "Datum", NULL};
static const char *const hdr_to[] = {"To", "\xC3\x80", "A", "An", "Para", "Cc", "Subject",
                                     "Objet", "Betreff", "Asunto", NULL};

static const char *const orig_phrases[] = {"Original Message", "Reply Message",
                                           "Urspr\xC3\xBCngliche Nachricht", "Originalnachricht",
                                           "Message d'origine", "Mensaje original", NULL};
static const char *const fwd_phrases[] = {"Forwarded message", "Message transf\xC3\xA9r\xC3\xA9",
                                          "Weitergeleitete Nachricht", "Mensaje reenviado", NULL};
static const char *const fwd_lines[] = {"Begin forwarded message:",
                                        "D\xC3\xA9" "but du message r\xC3\xA9" "exp\xC3\xA9" "di\xC3\xA9",
                                        "Anfang der weitergeleiteten Nachricht",
                                        "Inicio del mensaje reenviado", NULL};

static const char *const sig_phrases[] = {"Sent from my ", "Sent from Outlook", "Get Outlook for ",
                                          "Sent from Mail for Windows", "Envoy\xC3\xA9 de mon ",
                                          "Envoy\xC3\xA9 depuis mon ", "Von meinem ",
                                          "Enviado desde mi ", NULL};

static bool any_prefix(struct span s, const char *const *lits)
{
    for (size_t i = 0; lits[i]; i++)
        if (has_prefix(s, lits[i])) return true;
    return false;
}

static bool any_contains(struct span s, const char *const *lits)
{
    for (size_t i = 0; lits[i]; i++)
        if (contains(s, lits[i])) return true;
    return false;
}

/* "-----Original Message-----", "---------- Forwarded message ---------" at s.p: at least two
 * dashes, optional spaces, a phrase (ASCII case-insensitive), optional spaces, a dash. */
static bool dash_marker_at(struct span s, const char *const *phrases)
{
    size_t i = 0;
    while (i < s.n && s.p[i] == '-') i++;
    if (i < 2) return false;
    while (i < s.n && s.p[i] == ' ') i++;
    struct span rest = {s.p + i, s.n - i};
    for (size_t k = 0; phrases[k]; k++) {
        if (!has_prefix(rest, phrases[k])) continue;
        size_t j = i + strlen(phrases[k]);
        while (j < s.n && s.p[j] == ' ') j++;
        if (j < s.n && s.p[j] == '-') return true;
    }
    return false;
}

/* Offset of the first dash marker of either kind in s (each dash run is tried once), or -1;
 * *forward tells which kind. */
static ptrdiff_t find_dash_marker(struct span s, bool *forward)
{
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] != '-' || (i > 0 && s.p[i - 1] == '-')) continue;
        struct span at = {s.p + i, s.n - i};
        if (dash_marker_at(at, orig_phrases)) {
            *forward = false;
            return (ptrdiff_t)i;
        }
        if (dash_marker_at(at, fwd_phrases)) {
            *forward = true;
            return (ptrdiff_t)i;
        }
    }
    return -1;
}

/* "From:", "*From:*", "De :", "De&nbsp;:" ... at the start of s (already left-trimmed). */
static bool header_key(struct span s, const char *const *keys)
{
    if (s.n && s.p[0] == '*') {
        s.p++;
        s.n--;
    }
    for (size_t k = 0; keys[k]; k++) {
        if (!has_prefix(s, keys[k])) continue;
        size_t i = strlen(keys[k]);
        for (;;) {
            size_t w = (i < s.n && (s.p[i] == ' ' || s.p[i] == '\t')) ? 1
                                                                       : nbsp_at(s.p + i, s.n - i);
            if (!w) break;
            i += w;
        }
        if (i < s.n && s.p[i] == ':') return true;
    }
    return false;
}

static bool is_underscores(struct span t)
{
    if (t.n < 8) return false;
    for (size_t i = 0; i < t.n; i++)
        if (t.p[i] != '_') return false;
    return true;
}

/* "Alice wrote:", "... a écrit :", "... schrieb:", "... escribió:" */
static bool ends_with_verb_colon(struct span t)
{
    if (!t.n || t.p[t.n - 1] != ':') return false;
    t.n--;
    t = trim_right(t);
    for (size_t i = 0; att_verbs[i]; i++)
        if (has_suffix(t, att_verbs[i])) return true;
    return false;
}

/* An attribution line, possibly wrapped onto a second line b (b.n == 0 when not wrapped);
 * a and b are trimmed. */
static bool is_attribution(struct span a, struct span b)
{
    if (a.n + b.n > STRIP_ATT_MAX || a.n == 0) return false;
    struct span last = b.n ? b : a;
    if (!last.n || last.p[last.n - 1] != ':') return false;
    bool start = any_prefix(a, att_starts);
    if (b.n && !start) return false;
    if (ends_with_verb_colon(last)) return true;
    if (start && (any_contains(a, att_verbs) || any_contains(b, att_verbs))) return true;
    return contains(a, " wrote on ");
}

static bool is_sig_phrase(struct span t)
{
    if (t.n == 0 || t.n > STRIP_SIG_PHRASE_MAX || !any_prefix(t, sig_phrases)) return false;
    if (has_prefix(t, "Von meinem ")) return has_suffix(t, "gesendet");
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Plain text */

struct line {
    size_t start, end, next; /* content [start, end), line break [end, next) */
};

struct text {
    const char *s;
    struct line *l;
    size_t n;
};

static void split_lines(struct text *t, size_t len)
{
    size_t cap = 64, i = 0;
    t->l = g_new(struct line, cap);
    t->n = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && t->s[i] != '\n' && t->s[i] != '\r') i++;
        size_t end = i;
        if (i < len) i += (t->s[i] == '\r' && i + 1 < len && t->s[i + 1] == '\n') ? 2 : 1;
        if (t->n == cap) t->l = g_renew(struct line, t->l, cap *= 2);
        t->l[t->n++] = (struct line){start, end, i};
    }
}

static struct span line_span(const struct text *t, size_t i)
{
    return (struct span){t->s + t->l[i].start, t->l[i].end - t->l[i].start};
}

static struct span line_trim(const struct text *t, size_t i)
{
    return trim(line_span(t, i));
}

static bool line_is_quote(const struct text *t, size_t i)
{
    return t->l[i].end > t->l[i].start && t->s[t->l[i].start] == '>';
}

static bool line_is_blank(const struct text *t, size_t i)
{
    return is_blank(line_span(t, i));
}

static bool line_is_original(const struct text *t, size_t i)
{
    return dash_marker_at(line_trim(t, i), orig_phrases);
}

static bool line_is_forward(const struct text *t, size_t i)
{
    struct span s = line_trim(t, i);
    return dash_marker_at(s, fwd_phrases) || any_prefix(s, fwd_lines);
}

/* From: followed within a few lines (no blank line between) by Sent:/Date: and To:/Subject:. */
static bool line_is_header_block(const struct text *t, size_t i)
{
    if (!header_key(line_trim(t, i), hdr_from)) return false;
    bool date = false, to = false;
    for (size_t j = i + 1; j < t->n && j <= i + STRIP_HDR_LINES_MAX; j++) {
        struct span s = line_trim(t, j);
        if (!s.n) break;
        date = date || header_key(s, hdr_date);
        to = to || header_key(s, hdr_to);
    }
    return date && to;
}

/* The next non-blank line at or after i, skipping at most `gap` blank lines, or t->n. */
static size_t next_nonblank(const struct text *t, size_t i, size_t gap)
{
    for (size_t k = 0; i < t->n && k <= gap; i++, k++)
        if (!line_is_blank(t, i)) return i;
    return t->n;
}

/* Lines taken by an attribution at i (1 or 2) when quoted text follows it, else 0. */
static size_t attribution_lines(const struct text *t, size_t i)
{
    struct span a = line_trim(t, i), none = {a.p, 0};
    size_t lines = 0;
    if (is_attribution(a, none)) lines = 1;
    else if (i + 1 < t->n && is_attribution(a, line_trim(t, i + 1))) lines = 2;
    if (!lines) return 0;
    size_t k = next_nonblank(t, i + lines, STRIP_ATT_GAP_MAX);
    if (k == t->n) return 0;
    return line_is_quote(t, k) || line_is_original(t, k) || line_is_header_block(t, k) ? lines : 0;
}

enum cut { CUT_NONE, CUT_QUOTE, CUT_BLOCK, CUT_FORWARD };

/* The first line where the quoted part starts, in line order. */
static enum cut find_cut(const struct text *t, size_t *at)
{
    for (size_t i = 0; i < t->n; i++) {
        *at = i;
        if (line_is_quote(t, i)) return CUT_QUOTE;
        struct span s = line_trim(t, i);
        if (!s.n) continue;
        if (line_is_forward(t, i)) return CUT_FORWARD;
        if (line_is_original(t, i)) return CUT_BLOCK;
        if (is_underscores(s)) {
            size_t k = next_nonblank(t, i + 1, 1);
            if (k < t->n && line_is_header_block(t, k)) return CUT_BLOCK;
            continue;
        }
        if (line_is_header_block(t, i)) return CUT_BLOCK;
        if (attribution_lines(t, i)) return CUT_QUOTE;
    }
    return CUT_NONE;
}

static bool is_sig_delim(struct span s, bool *space)
{
    if (s.n < 2 || s.p[0] != '-' || s.p[1] != '-') return false;
    for (size_t i = 2; i < s.n; i++)
        if (s.p[i] != ' ' && s.p[i] != '\t') return false;
    *space = s.n > 2;
    return true;
}

/* In lines [first, end) (no trailing blank lines), the first signature line; *text_end is
 * where the text ends.  Returns end when there is no signature. */
static size_t find_signature(const struct text *t, size_t first, size_t end, size_t *text_end)
{
    size_t dash = end, bare = end;
    for (size_t i = first; i < end; i++) {
        bool space;
        if (!is_sig_delim(line_span(t, i), &space)) continue;
        if (space) dash = i;
        else if (end - i <= STRIP_SIG_BARE_LINES_MAX) bare = i;
    }
    if (dash == end) dash = bare;
    if (dash < end) {
        /* Mailgun's stripped-signature keeps the delimiter line ("--\r\nSignature block"). */
        *text_end = dash;
        return dash;
    }
    size_t sig = end;
    for (size_t i = end; i > first; i--) {
        struct span s = line_trim(t, i - 1);
        if (!s.n) continue;
        if (!is_sig_phrase(s)) break;
        sig = i - 1;
    }
    *text_end = sig;
    return sig;
}

/* Bytes of lines [a, b), without the final line break, trailing white space trimmed. */
static char *copy_lines(const struct text *t, size_t a, size_t b)
{
    if (a >= b) return dup_span("", 0);
    struct span s = {t->s + t->l[a].start, t->l[b - 1].end - t->l[a].start};
    s = trim_right(s);
    return dup_span(s.p, s.n);
}

/* An inline reply: text between quote blocks after the cut at `at`.  talon (Mailgun's
 * stripper) then keeps the whole message, since cutting at the first quote would lose answers. */
static bool interleaved(const struct text *t, size_t at)
{
    bool seen_quote = false, text_after_quote = false;
    for (size_t i = at; i < t->n; i++) {
        if (line_is_quote(t, i)) {
            if (text_after_quote) return true;
            seen_quote = true;
        } else if (seen_quote && !line_is_blank(t, i)) {
            text_after_quote = true;
        }
    }
    return false;
}

void msg_strip_text(const char *plain, char **text, char **signature)
{
    struct text t = {.s = plain};
    split_lines(&t, strlen(plain));
    size_t at = 0, first = 0, end = t.n;
    enum cut cut = find_cut(&t, &at);
    if (cut == CUT_FORWARD) {
        /* A forward: the forwarded message is the content (talon keeps it whole too). */
        *text = copy_lines(&t, 0, t.n);
        *signature = dup_span("", 0);
        g_free(t.l);
        return;
    }
    if (cut != CUT_NONE && !(cut == CUT_QUOTE && interleaved(&t, at))) end = at;
    while (first < end && line_is_blank(&t, first)) first++;
    if (first == end && cut == CUT_QUOTE) {
        /* Nothing before the quote: a bottom-posted reply is the text after the last '>' line. */
        size_t last = at;
        for (size_t i = at; i < t.n; i++)
            if (line_is_quote(&t, i)) last = i;
        first = last + 1;
        end = t.n;
        while (first < end && line_is_blank(&t, first)) first++;
    }
    while (end > first && line_is_blank(&t, end - 1)) end--;
    size_t text_end = end;
    size_t sig = find_signature(&t, first, end, &text_end);
    *text = copy_lines(&t, first, text_end);
    *signature = copy_lines(&t, sig, end);
    g_free(t.l);
}

/* ------------------------------------------------------------------------------------------ */
/* HTML */

enum elem_kind { ELEM_PLAIN, ELEM_CITE_PREFIX };

struct elem {
    size_t name, name_len; /* tag name in the input */
    size_t out;            /* output length before its start tag */
    enum elem_kind kind;
};

enum html_mode {
    MODE_SCAN, /* looking for the quote */
    MODE_DONE, /* quote handled (or a forward): copy, still dropping signatures */
    MODE_TAIL, /* cutting to the end: only the end tags of the open ancestors are kept */
};

struct html {
    const char *in;
    size_t len;
    char *out;
    size_t olen;
    struct elem *st;
    size_t depth, cap;
    enum html_mode mode;
    size_t suppress;   /* 1 + stack index of an element being removed, 0 when none */
    bool suppress_quote; /* ... and it is a quote (not a signature) */
    bool after_quote;  /* a quote just ended: a <blockquote type="cite"> right after goes too */
    size_t gq_pending; /* 1 + stack index of a gmail_quote not yet known to be a quote */
    size_t cut_depth;  /* MODE_TAIL: st[0 .. cut_depth) are the ancestors kept */
    bool tail_ws;      /* MODE_TAIL: white space after a kept end tag is kept */
    bool hr_pending;   /* an <hr> that may start Outlook's reply header */
    size_t hr_out, hr_depth;
    bool last_valid;   /* an element closed and only white space and <br> followed it */
    size_t last_start, last_end;
    enum elem_kind last_kind;
};

struct tag {
    bool close, self_closing;
    size_t name, name_len;
    struct span class_, id, type, style;
};

static void emit(struct html *h, const char *p, size_t n)
{
    if (h->suppress || h->mode == MODE_TAIL || !n) return;
    memcpy(h->out + h->olen, p, n);
    h->olen += n;
}

static bool name_is(const struct html *h, size_t name, size_t name_len, const char *lit)
{
    struct span s = {h->in + name, name_len};
    return name_len == strlen(lit) && has_prefix(s, lit);
}

static bool is_void(const struct html *h, const struct tag *tg)
{
    static const char *const v[] = {"br", "hr", "img", "meta", "link", "input", "col", "area",
                                    "base", "wbr", "source", "track", "embed", "param", NULL};
    if (tg->self_closing) return true;
    for (size_t i = 0; v[i]; i++)
        if (name_is(h, tg->name, tg->name_len, v[i])) return true;
    return false;
}

static bool class_has(struct span cls, const char *token)
{
    size_t n = strlen(token), i = 0;
    while (i < cls.n) {
        while (i < cls.n && is_ws((unsigned char)cls.p[i])) i++;
        size_t s = i;
        while (i < cls.n && !is_ws((unsigned char)cls.p[i])) i++;
        if (i - s == n && memcmp(cls.p + s, token, n) == 0) return true;
    }
    return false;
}

static bool span_eq_ci(struct span s, const char *lit)
{
    return s.n == strlen(lit) && has_prefix(s, lit);
}

static bool span_contains_ci(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i + n <= s.n; i++) {
        if (lc((unsigned char)s.p[i]) != lc((unsigned char)lit[0])) continue;
        struct span at = {s.p + i, n};
        if (has_prefix(at, lit)) return true;
    }
    return false;
}

static void set_attr(struct tag *tg, struct span name, struct span value)
{
    if (span_eq_ci(name, "class")) tg->class_ = value;
    else if (span_eq_ci(name, "id")) tg->id = value;
    else if (span_eq_ci(name, "type")) tg->type = value;
    else if (span_eq_ci(name, "style")) tg->style = value;
}

/* Parses the tag at h->in[i] == '<' (a letter or '/' letter follows).  Returns the offset just
 * after its '>', or 0 when the tag never ends. */
static size_t parse_tag(const struct html *h, size_t i, struct tag *tg)
{
    const char *p = h->in;
    size_t n = h->len;
    *tg = (struct tag){0};
    i++;
    if (p[i] == '/') {
        tg->close = true;
        i++;
    }
    tg->name = i;
    while (i < n && !is_ws((unsigned char)p[i]) && p[i] != '>' && p[i] != '/') i++;
    tg->name_len = i - tg->name;
    for (;;) {
        while (i < n && (is_ws((unsigned char)p[i]) || p[i] == '/')) {
            tg->self_closing = p[i] == '/';
            i++;
        }
        if (i >= n) return 0;
        if (p[i] == '>') return i + 1;
        tg->self_closing = false;
        struct span an = {p + i, 0}, av = {p + i, 0};
        while (i < n && !is_ws((unsigned char)p[i]) && p[i] != '>' && p[i] != '=' && p[i] != '/') i++;
        an.n = (size_t)(p + i - an.p);
        while (i < n && is_ws((unsigned char)p[i])) i++;
        if (i < n && p[i] == '=') {
            i++;
            while (i < n && is_ws((unsigned char)p[i])) i++;
            if (i < n && (p[i] == '"' || p[i] == '\'')) {
                const char *q = memchr(p + i + 1, p[i], n - i - 1);
                if (!q) return 0;
                av = (struct span){p + i + 1, (size_t)(q - (p + i + 1))};
                i = (size_t)(q - p) + 1;
            } else {
                av.p = p + i;
                while (i < n && !is_ws((unsigned char)p[i]) && p[i] != '>') i++;
                av.n = (size_t)(p + i - av.p);
            }
        }
        set_attr(tg, an, av);
    }
}

static void push(struct html *h, const struct tag *tg, enum elem_kind kind, size_t out)
{
    if (h->depth == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 64;
        h->st = g_renew(struct elem, h->st, h->cap);
    }
    h->st[h->depth++] = (struct elem){tg->name, tg->name_len, out, kind};
}

static void enter_tail(struct html *h, size_t out, size_t depth)
{
    h->olen = out;
    h->cut_depth = depth;
    h->mode = MODE_TAIL;
    h->tail_ws = false;
    h->hr_pending = false;
}

/* The text of out[a, b) (tags removed, a few entities decoded) is an attribution line. */
static bool html_region_is_attribution(const struct html *h, size_t a, size_t b)
{
    if (b - a > STRIP_HTML_ATT_REGION_MAX) return false;
    char buf[STRIP_ATT_MAX + 1];
    size_t n = 0;
    bool in_tag = false;
    for (size_t i = a; i < b; i++) {
        char c = h->out[i];
        if (in_tag) {
            in_tag = c != '>';
            continue;
        }
        if (c == '<') {
            in_tag = true;
            c = ' ';
        } else if (c == '&') {
            static const struct { const char *ent; char c; } ents[] = {
                {"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&nbsp;", ' '},
                {"&#160;", ' '}};
            for (size_t k = 0; k < G_N_ELEMENTS(ents); k++) {
                size_t el = strlen(ents[k].ent);
                if (b - i >= el && memcmp(h->out + i, ents[k].ent, el) == 0) {
                    c = ents[k].c;
                    i += el - 1;
                    break;
                }
            }
        } else if (c == '\r' || c == '\n' || c == '\t') {
            c = ' ';
        }
        if (n == STRIP_ATT_MAX) return false;
        buf[n++] = c;
    }
    struct span s = trim((struct span){buf, n}), none = {s.p, 0};
    return is_attribution(s, none);
}

/* <blockquote type="cite"> or gmail_quote while scanning: remove it, with the attribution
 * element (moz-cite-prefix or "On ... wrote:") that ends just before it. */
static void start_quote(struct html *h, const struct tag *tg)
{
    size_t out = h->olen;
    if (h->last_valid &&
        (h->last_kind == ELEM_CITE_PREFIX ||
         html_region_is_attribution(h, h->last_start, h->last_end)))
        out = h->last_start;
    h->olen = out;
    push(h, tg, ELEM_PLAIN, out);
    h->suppress = h->depth;
    h->suppress_quote = true;
    h->mode = MODE_DONE;
}

static bool is_outlook_border(const struct tag *tg)
{
    return span_contains_ci(tg->style, "border:none") &&
           (span_contains_ci(tg->style, "border-top:solid #e1e1e1") ||
            span_contains_ci(tg->style, "border-top:solid #b5c4df"));
}

/* A start tag while scanning for the quote: true when it was handled (pushed or cut). */
static bool scan_start_tag(struct html *h, const struct tag *tg, size_t a, size_t b)
{
    bool div = name_is(h, tg->name, tg->name_len, "div");
    if (!is_void(h, tg) &&
        (class_has(tg->class_, "gmail_quote") || class_has(tg->class_, "gmail_quote_container"))) {
        push(h, tg, ELEM_PLAIN, h->olen);
        h->gq_pending = h->depth;
        emit(h, h->in + a, b - a);
        return true;
    }
    if (name_is(h, tg->name, tg->name_len, "blockquote") && span_eq_ci(tg->type, "cite")) {
        start_quote(h, tg);
        return true;
    }
    if (span_eq_ci(tg->id, "divRplyFwdMsg") || span_eq_ci(tg->id, "appendonsend") ||
        (div && is_outlook_border(tg))) {
        if (h->hr_pending) enter_tail(h, h->hr_out, h->hr_depth);
        else enter_tail(h, h->olen, h->depth);
        if (!is_void(h, tg)) push(h, tg, ELEM_PLAIN, h->olen);
        return true;
    }
    if (name_is(h, tg->name, tg->name_len, "hr")) {
        h->hr_pending = true;
        h->hr_out = h->olen;
        h->hr_depth = h->depth;
    }
    return false;
}

static void start_tag(struct html *h, const struct tag *tg, size_t a, size_t b)
{
    bool is_br = name_is(h, tg->name, tg->name_len, "br");
    bool cite = name_is(h, tg->name, tg->name_len, "blockquote") && span_eq_ci(tg->type, "cite");
    if (!h->suppress && h->mode == MODE_DONE && h->after_quote && cite) {
        h->last_valid = false; /* iOS Mail: the attribution and the quote in two blockquotes */
        start_quote(h, tg);
        return;
    }
    if (!is_br) h->after_quote = false;
    if (!h->suppress && h->mode != MODE_TAIL) {
        if (h->mode == MODE_SCAN && !h->gq_pending && scan_start_tag(h, tg, a, b)) {
            h->last_valid = false;
            return;
        }
        if (!is_void(h, tg) &&
            (class_has(tg->class_, "gmail_signature") ||
             class_has(tg->class_, "gmail_signature_prefix") ||
             class_has(tg->class_, "moz-signature"))) {
            push(h, tg, ELEM_PLAIN, h->olen);
            h->suppress = h->depth;
            h->suppress_quote = false;
            h->last_valid = false;
            return;
        }
    }
    if (!is_br) h->last_valid = false;
    if (!is_void(h, tg))
        push(h, tg, class_has(tg->class_, "moz-cite-prefix") ? ELEM_CITE_PREFIX : ELEM_PLAIN,
             h->olen);
    emit(h, h->in + a, b - a);
}

static bool elem_named(const struct html *h, const struct elem *e, const struct tag *tg)
{
    return e->name_len == tg->name_len &&
           g_ascii_strncasecmp(h->in + e->name, h->in + tg->name, tg->name_len) == 0;
}

static void end_tag(struct html *h, const struct tag *tg, size_t a, size_t b)
{
    size_t k = h->depth, lim = h->depth > STRIP_HTML_MATCH_MAX ? h->depth - STRIP_HTML_MATCH_MAX : 0;
    while (k > lim && !elem_named(h, &h->st[k - 1], tg)) k--;
    if (k == lim) { /* no open element of that name: an end tag to keep as it is */
        emit(h, h->in + a, b - a);
        return;
    }
    k--; /* st[k] is the element closed */
    struct elem e = h->st[k];
    h->depth = k;
    if (h->mode == MODE_TAIL) {
        if (k < h->cut_depth) {
            memcpy(h->out + h->olen, h->in + a, b - a);
            h->olen += b - a;
            h->cut_depth = k;
            h->tail_ws = true;
        } else {
            h->tail_ws = false;
        }
        return;
    }
    bool own_removed = false;
    if (h->gq_pending && h->gq_pending > k) { /* a gmail_quote without text: still a quote */
        h->olen = h->st[h->gq_pending - 1].out;
        own_removed = h->gq_pending == k + 1;
        h->after_quote = true;
        h->gq_pending = 0;
        h->mode = MODE_DONE;
    }
    if (h->suppress && h->suppress > k) {
        own_removed = own_removed || h->suppress <= k + 1;
        h->after_quote = h->after_quote || h->suppress_quote;
        h->suppress = 0;
        if (own_removed) {
            h->last_valid = false;
            return;
        }
    }
    if (own_removed || h->suppress) {
        h->last_valid = false;
        return;
    }
    emit(h, h->in + a, b - a);
    h->last_valid = true;
    h->last_start = e.out;
    h->last_end = h->olen;
    h->last_kind = e.kind;
}

static bool all_ascii_ws(struct span s)
{
    for (size_t i = 0; i < s.n; i++)
        if (!is_ws((unsigned char)s.p[i])) return false;
    return true;
}

/* Text between tags. */
static void text_run(struct html *h, size_t a, size_t b)
{
    struct span s = {h->in + a, b - a}, t = trim(s);
    if (h->suppress) return;
    if (h->mode == MODE_TAIL) {
        if (h->tail_ws && all_ascii_ws(s)) {
            memcpy(h->out + h->olen, s.p, s.n);
            h->olen += s.n;
        } else {
            h->tail_ws = false;
        }
        return;
    }
    if (t.n == 0) {
        emit(h, s.p, s.n);
        return;
    }
    h->last_valid = false;
    h->after_quote = false;
    if (h->gq_pending) {
        bool fwd = false;
        if (find_dash_marker(t, &fwd) == 0 && fwd) {
            h->mode = MODE_DONE; /* a forward in gmail_quote: keep it all */
        } else {
            h->olen = h->st[h->gq_pending - 1].out;
            h->suppress = h->gq_pending;
            h->suppress_quote = true;
            h->mode = MODE_DONE;
        }
        h->gq_pending = 0;
        emit(h, s.p, s.n);
        return;
    }
    if (h->mode == MODE_SCAN && h->hr_pending) {
        if (header_key(t, hdr_from)) {
            enter_tail(h, h->hr_out, h->hr_depth);
            return;
        }
        h->hr_pending = false;
    }
    if (h->mode == MODE_SCAN) {
        bool fwd = false;
        ptrdiff_t at = find_dash_marker(s, &fwd);
        if (at >= 0 && fwd) {
            h->mode = MODE_DONE;
        } else if (at >= 0) {
            emit(h, s.p, (size_t)at);
            enter_tail(h, h->olen, h->depth);
            return;
        }
    }
    emit(h, s.p, s.n);
}

/* <!-- ... -->, <!DOCTYPE ...>, <?xml ...?>: kept as they are.  Returns the end offset. */
static size_t markup_decl(struct html *h, size_t i)
{
    const char *end;
    size_t stop;
    if (h->len - i >= 4 && memcmp(h->in + i, "<!--", 4) == 0) {
        end = memmem(h->in + i + 4, h->len - i - 4, "-->", 3);
        stop = end ? (size_t)(end - h->in) + 3 : h->len;
    } else {
        end = memchr(h->in + i, '>', h->len - i);
        stop = end ? (size_t)(end - h->in) + 1 : h->len;
    }
    emit(h, h->in + i, stop - i);
    return stop;
}

/* Raw text of script/style/textarea/title up to its end tag.  Returns where the end tag starts. */
static size_t raw_text(struct html *h, const struct tag *tg, size_t i)
{
    size_t j = i;
    for (;;) {
        const char *lt = memchr(h->in + j, '<', h->len - j);
        if (!lt) {
            j = h->len;
            break;
        }
        j = (size_t)(lt - h->in);
        if (h->len - j >= tg->name_len + 2 && h->in[j + 1] == '/' &&
            g_ascii_strncasecmp(h->in + j + 2, h->in + tg->name, tg->name_len) == 0)
            break;
        j++;
    }
    if (h->mode != MODE_TAIL) emit(h, h->in + i, j - i);
    return j;
}

static bool is_raw_text(const struct html *h, const struct tag *tg)
{
    return name_is(h, tg->name, tg->name_len, "script") ||
           name_is(h, tg->name, tg->name_len, "style") ||
           name_is(h, tg->name, tg->name_len, "textarea") ||
           name_is(h, tg->name, tg->name_len, "title");
}

static bool tag_starts_at(const struct html *h, size_t i)
{
    size_t j = i + 1;
    if (j < h->len && h->in[j] == '/') j++;
    return j < h->len && g_ascii_isalpha(h->in[j]);
}

char *msg_strip_html(const char *html)
{
    struct html h = {.in = html, .len = strlen(html), .mode = MODE_SCAN};
    h.out = g_malloc(h.len + 1);
    size_t i = 0;
    while (i < h.len) {
        const char *lt = memchr(h.in + i, '<', h.len - i);
        size_t j = lt ? (size_t)(lt - h.in) : h.len;
        while (lt && j + 1 < h.len && !tag_starts_at(&h, j) && h.in[j + 1] != '!' &&
               h.in[j + 1] != '?') {
            lt = memchr(h.in + j + 1, '<', h.len - j - 1);
            j = lt ? (size_t)(lt - h.in) : h.len;
        }
        if (j + 1 >= h.len) j = h.len; /* a lone '<' at the very end is text */
        if (j > i) text_run(&h, i, j);
        if (j >= h.len) break;
        if (h.in[j + 1] == '!' || h.in[j + 1] == '?') {
            i = markup_decl(&h, j);
            continue;
        }
        struct tag tg;
        size_t e = parse_tag(&h, j, &tg);
        if (e == 0) { /* the tag never ends: the rest is text */
            text_run(&h, j, h.len);
            break;
        }
        if (tg.close) {
            end_tag(&h, &tg, j, e);
            i = e;
        } else {
            start_tag(&h, &tg, j, e);
            i = is_raw_text(&h, &tg) && !tg.self_closing ? raw_text(&h, &tg, e) : e;
        }
    }
    if (h.gq_pending) h.olen = h.st[h.gq_pending - 1].out; /* never decided: a quote */
    h.out[h.olen] = '\0';
    g_free(h.st);
    return h.out;
}
