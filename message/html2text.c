/* message/html2text.c — see internal_html2text.h.  One pass, state kept in struct h2t; everything bounded
 * by the input length (the output is at most a few bytes per input byte). */
#include "message/internal_html2text.h"

#include <glib.h>
#include <stdbool.h>
#include <string.h>

struct h2t {
    GString *out;
    int pending_nl;     /* line breaks owed before the next text */
    bool pending_space; /* a collapsed run of white space before the next text */
    int pre;            /* inside <pre> (nesting) */
};

/* HTML 4 Latin-1 entities, U+00A0 .. U+00FF in order. */
static const char *const latin1_entities[96] = {
    "nbsp",   "iexcl",  "cent",   "pound",  "curren", "yen",    "brvbar", "sect",   "uml",
    "copy",   "ordf",   "laquo",  "not",    "shy",    "reg",    "macr",   "deg",    "plusmn",
    "sup2",   "sup3",   "acute",  "micro",  "para",   "middot", "cedil",  "sup1",   "ordm",
    "raquo",  "frac14", "frac12", "frac34", "iquest", "Agrave", "Aacute", "Acirc",  "Atilde",
    "Auml",   "Aring",  "AElig",  "Ccedil", "Egrave", "Eacute", "Ecirc",  "Euml",   "Igrave",
    "Iacute", "Icirc",  "Iuml",   "ETH",    "Ntilde", "Ograve", "Oacute", "Ocirc",  "Otilde",
    "Ouml",   "times",  "Oslash", "Ugrave", "Uacute", "Ucirc",  "Uuml",   "Yacute", "THORN",
    "szlig",  "agrave", "aacute", "acirc",  "atilde", "auml",   "aring",  "aelig",  "ccedil",
    "egrave", "eacute", "ecirc",  "euml",   "igrave", "iacute", "icirc",  "iuml",   "eth",
    "ntilde", "ograve", "oacute", "ocirc",  "otilde", "ouml",   "divide", "oslash", "ugrave",
    "uacute", "ucirc",  "uuml",   "yacute", "thorn",  "yuml",
};

static const struct {
    const char *name;
    gunichar c;
} other_entities[] = {
    {"amp", '&'},       {"lt", '<'},         {"gt", '>'},        {"quot", '"'},
    {"apos", '\''},     {"hellip", 0x2026},  {"mdash", 0x2014},  {"ndash", 0x2013},
    {"lsquo", 0x2018},  {"rsquo", 0x2019},   {"sbquo", 0x201A},  {"ldquo", 0x201C},
    {"rdquo", 0x201D},  {"bdquo", 0x201E},   {"bull", 0x2022},   {"euro", 0x20AC},
    {"trade", 0x2122},  {"dagger", 0x2020},  {"Dagger", 0x2021}, {"permil", 0x2030},
    {"lsaquo", 0x2039}, {"rsaquo", 0x203A},  {"OElig", 0x0152},  {"oelig", 0x0153},
    {"Scaron", 0x0160}, {"scaron", 0x0161},  {"Yuml", 0x0178},   {"fnof", 0x0192},
    {"circ", 0x02C6},   {"tilde", 0x02DC},   {"ensp", 0x2002},   {"emsp", 0x2003},
    {"thinsp", 0x2009}, {"zwnj", 0x200C},    {"zwj", 0x200D},    {"lrm", 0x200E},
    {"rlm", 0x200F},    {"minus", 0x2212},   {"larr", 0x2190},   {"rarr", 0x2192},
};

/* Elements that end a paragraph (blank line) and that end a line. */
static const char *const para_tags[] = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
                                        "ul", "ol", "table", "pre", "hr", "dl", NULL};
static const char *const line_tags[] = {"div", "li", "tr", "dt", "dd", "section", "article",
                                        "header", "footer", "address", "form", "center",
                                        "nav", "aside", "main", "figure", "figcaption",
                                        "fieldset", "caption", "tbody", "thead", "tfoot",
                                        "body", "html", "option", NULL};
static const char *const skip_tags[] = {"script", "style", "title", NULL};

static bool in_list(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(name, *list) == 0) return true;
    return false;
}

static void want_break(struct h2t *s, int n)
{
    if (s->pending_nl < n) s->pending_nl = n;
    s->pending_space = false;
}

/* Emits what is owed, then `len` bytes of text. */
static void emit(struct h2t *s, const char *p, size_t len)
{
    if (s->out->len > 0) {
        for (int i = 0; i < s->pending_nl; i++) g_string_append_c(s->out, '\n');
        if (s->pending_nl == 0 && s->pending_space) g_string_append_c(s->out, ' ');
    }
    s->pending_nl = 0;
    s->pending_space = false;
    g_string_append_len(s->out, p, (gssize)len);
}

static void emit_unichar(struct h2t *s, gunichar c)
{
    char buf[8];
    if (c == 0 || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) c = 0xFFFD;
    if (c == 0xA0) c = ' ';
    if (c == 0xAD) return; /* soft hyphen: invisible */
    emit(s, buf, (size_t)g_unichar_to_utf8(c, buf));
}

static gunichar named_entity(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(latin1_entities); i++)
        if (strcmp(name, latin1_entities[i]) == 0) return 0xA0 + (gunichar)i;
    for (size_t i = 0; i < G_N_ELEMENTS(other_entities); i++)
        if (strcmp(name, other_entities[i].name) == 0) return other_entities[i].c;
    return 0;
}

/* At p[0] == '&': decodes one entity; returns the bytes consumed (1 when it is no entity). */
static size_t entity(struct h2t *s, const char *p, const char *end)
{
    const char *q = p + 1;
    if (q < end && *q == '#') {
        bool hex = q + 1 < end && (q[1] == 'x' || q[1] == 'X');
        q += hex ? 2 : 1;
        gunichar c = 0;
        const char *digits = q;
        for (; q < end && (hex ? g_ascii_isxdigit(*q) : g_ascii_isdigit(*q)); q++)
            if (c <= 0x10FFFF) c = c * (hex ? 16 : 10) + (gunichar)g_ascii_xdigit_value(*q);
        if (q == digits) goto literal;
        if (q < end && *q == ';') q++;
        if (c >= 0x80 && c < 0xA0) c = 0xFFFD; /* C1 controls: HTML maps most to cp1252; rare */
        emit_unichar(s, c);
        return (size_t)(q - p);
    }
    char name[12];
    size_t n = 0;
    for (; q < end && g_ascii_isalnum(*q) && n < sizeof name - 1; q++) name[n++] = *q;
    name[n] = '\0';
    gunichar c = n ? named_entity(name) : 0;
    if (c == 0) goto literal;
    if (q < end && *q == ';') q++;
    emit_unichar(s, c);
    return (size_t)(q - p);
literal:
    emit(s, "&", 1);
    return 1;
}

/* Case-insensitive search for "</name" from p; returns its position or end. */
static const char *find_close(const char *p, const char *end, const char *name)
{
    size_t n = strlen(name);
    for (; p + 2 + n <= end; p++)
        if (p[0] == '<' && p[1] == '/' && g_ascii_strncasecmp(p + 2, name, n) == 0) return p;
    return end;
}

/* The end of a tag starting at p ('<'): after its '>', quotes respected; or end. */
static const char *tag_end(const char *p, const char *end)
{
    char quote = 0;
    for (p++; p < end; p++) {
        if (quote) {
            if (*p == quote) quote = 0;
        } else if (*p == '"' || *p == '\'') {
            quote = *p;
        } else if (*p == '>') {
            return p + 1;
        }
    }
    return end;
}

/* At p[0] == '<': handles one tag, comment or declaration; returns where text resumes. */
static const char *tag(struct h2t *s, const char *p, const char *end)
{
    if (p + 3 < end && memcmp(p, "<!--", 4) == 0) {
        const char *c = g_strstr_len(p + 4, end - p - 4, "-->");
        return c ? c + 3 : end;
    }
    const char *q = p + 1;
    bool closing = q < end && *q == '/';
    if (closing) q++;
    if (q >= end || !(g_ascii_isalpha(*q) || (!closing && (*q == '!' || *q == '?')))) {
        emit(s, "<", 1);
        return p + 1;
    }
    char name[16];
    size_t n = 0;
    for (; q < end && g_ascii_isalnum(*q); q++)
        if (n < sizeof name - 1) name[n++] = g_ascii_tolower(*q);
    name[n] = '\0';
    const char *after = tag_end(p, end);
    if (strcmp(name, "br") == 0) {
        s->pending_nl = s->pending_nl < 2 ? s->pending_nl + 1 : 2;
        s->pending_space = false;
        if (s->out->len == 0) s->pending_nl = 0;
    } else if (in_list(name, para_tags)) {
        want_break(s, 2);
        if (strcmp(name, "pre") == 0) s->pre += closing ? (s->pre > 0 ? -1 : 0) : 1;
    } else if (in_list(name, line_tags)) {
        want_break(s, 1);
    } else if (strcmp(name, "td") == 0 || strcmp(name, "th") == 0) {
        if (!closing && s->pending_nl == 0) s->pending_space = true;
    } else if (!closing && in_list(name, skip_tags)) {
        const char *c = find_close(after, end, name);
        return c == end ? end : tag_end(c, end);
    }
    return after;
}

static bool is_special(char c)
{
    return c == '<' || c == '&' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

char *msg_html_to_text(const char *html, size_t len)
{
    struct h2t s = {.out = g_string_sized_new(len / 2 + 16)};
    const char *p = html, *end = html + len;
    while (p < end) {
        char c = *p;
        if (c == '<') {
            p = tag(&s, p, end);
        } else if (c == '&') {
            p += entity(&s, p, end);
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f') {
            if (s.pre > 0) {
                if (c == '\n') s.pending_nl++;
                else if (c != '\r') emit(&s, &c, 1);
            } else if (s.pending_nl == 0) {
                s.pending_space = true;
            }
            p++;
        } else {
            const char *q = p + 1;
            while (q < end && !is_special(*q)) q++;
            emit(&s, p, (size_t)(q - p));
            p = q;
        }
    }
    return g_string_free(s.out, FALSE);
}
