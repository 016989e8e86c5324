/* message/header.c — header values: unfolding, RFC 2047 decoding, parameters (file names).
 *
 * GMime 3.2.13's own decoder (g_mime_utils_header_decode_text) joins adjacent encoded words of
 * the same charset before it base64-decodes them, so everything after a word that ends in '='
 * padding is lost (jstedfast/gmime#133); it also turns a decoded NUL into '?' or ends the value
 * there, and reads each raw 8-bit word on its own as UTF-8 or windows-1252.  So inlet decodes
 * every header value itself, from GMime's raw value:
 *  - unfolding: CR and LF removed (the white space after them kept), white space trimmed at both
 *    ends (as g_mime_utils_header_unfold);
 *  - an encoded word is "=?charset[*lang]?B|Q?text?=" with a non-empty charset and text without
 *    white space; it is recognised anywhere (inside quoted strings, glued to other text: real
 *    clients are lenient, and so is GMime's workaround mode); anything else that starts with
 *    "=?" is literal text;
 *  - each word is decoded on its own into bytes (B: base64, lenient: characters outside the
 *    alphabet skipped, missing padding tolerated; Q: '_' is a space, "=XX" a byte, any other '='
 *    literal);
 *  - white space between two adjacent encoded words is dropped (RFC 2047 §6.2);
 *  - the decoded bytes of adjacent words of the same charset are joined before they are
 *    converted: for words that split a multi-byte character (RFC 2047 §5 forbids it, mailers do
 *    it; also a UTF-16 byte order mark that governs the words after it), the character is whole
 *    again; for words that do not, joining changes nothing.  Since each word was decoded on its
 *    own, padding never swallows the next word;
 *  - conversion as for bodies (text.c): iconv, U+FFFD for bytes that do not decode and for NUL;
 *    an unknown charset is read as windows-1252;
 *  - the text outside encoded words is raw: msg_text_undeclared() over the whole value (valid or
 *    mostly valid UTF-8 as UTF-8, else windows-1252).
 * Everything is linear in the length of the value. */
#include <string.h>

#include "message/internal.h"
#include "util/limits.h"

char *msg_header_unfold(const char *raw, size_t len)
{
    size_t a = 0, b = len;
    while (a < b && (raw[a] == ' ' || raw[a] == '\t' || raw[a] == '\r' || raw[a] == '\n')) a++;
    while (b > a && (raw[b - 1] == ' ' || raw[b - 1] == '\t' || raw[b - 1] == '\r' ||
                     raw[b - 1] == '\n'))
        b--;
    char *out = g_malloc(b - a + 1), *o = out;
    for (size_t i = a; i < b; i++)
        if (raw[i] != '\r' && raw[i] != '\n') *o++ = raw[i];
    *o = '\0';
    return out;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static void decode_b(const char *p, size_t n, GByteArray *out)
{
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n && p[i] != '='; i++) {
        int v = b64_value((unsigned char)p[i]);
        if (v < 0) continue;
        acc = (acc << 6 | (uint32_t)v) & 0xFFFFFF;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            guint8 byte = (guint8)(acc >> bits);
            g_byte_array_append(out, &byte, 1);
        }
    }
}

static void decode_q(const char *p, size_t n, GByteArray *out)
{
    for (size_t i = 0; i < n; i++) {
        guint8 byte = (guint8)p[i];
        if (byte == '_') {
            byte = ' ';
        } else if (byte == '=' && i + 2 < n && g_ascii_isxdigit(p[i + 1]) &&
                   g_ascii_isxdigit(p[i + 2])) {
            byte = (guint8)(g_ascii_xdigit_value(p[i + 1]) << 4 | g_ascii_xdigit_value(p[i + 2]));
            i += 2;
        }
        g_byte_array_append(out, &byte, 1);
    }
}

struct word {
    size_t start, end; /* the raw text: a literal, or the whole encoded word */
    bool encoded;
    char charset[LIMIT_CHARSET_MAX + 1];
    GByteArray *bytes; /* decoded (encoded words only) */
};

/* Where the search for the "?=" that ends an encoded word is known to fail: no "?=" starts in
 * [from, to), and at `to` there is white space or the end.  A later search that gets there fails
 * at once, so that a value full of "=?" that never ends is still scanned in linear time. */
struct dead_range {
    size_t from, to;
};

/* An encoded word at s[0..n) ("=?" already seen), s at offset `at` of the value: its length, or
 * 0 when it is not one. */
static size_t scan_word(const char *s, size_t n, size_t at, struct word *w, struct dead_range *dead)
{
    size_t i = 2, cs = 2;
    while (i < n && s[i] != '?' && s[i] != ' ' && s[i] != '\t' && i - cs < LIMIT_CHARSET_MAX) i++;
    if (i >= n || s[i] != '?' || i == cs) return 0;
    size_t cslen = i - cs;
    const char *star = memchr(s + cs, '*', cslen);
    if (star) cslen = (size_t)(star - (s + cs));
    if (cslen == 0) return 0;
    if (i + 2 >= n || s[i + 2] != '?') return 0;
    char enc = g_ascii_toupper(s[i + 1]);
    if (enc != 'B' && enc != 'Q') return 0;
    size_t text = i + 3, j = text;
    while (j + 1 < n && !(s[j] == '?' && s[j + 1] == '=')) {
        if (at + j >= dead->from && at + j < dead->to) {
            dead->from = MIN(dead->from, at + text);
            return 0;
        }
        if (s[j] == ' ' || s[j] == '\t') break;
        j++;
    }
    if (j + 1 >= n || s[j] == ' ' || s[j] == '\t') {
        *dead = (struct dead_range){.from = at + text, .to = at + j};
        return 0;
    }
    memcpy(w->charset, s + cs, cslen);
    w->charset[cslen] = '\0';
    w->encoded = true;
    w->bytes = g_byte_array_new();
    if (enc == 'B') decode_b(s + text, j - text, w->bytes);
    else decode_q(s + text, j - text, w->bytes);
    return j + 2;
}

static bool is_blank_range(const char *s, size_t a, size_t b)
{
    for (size_t i = a; i < b; i++)
        if (s[i] != ' ' && s[i] != '\t') return false;
    return true;
}

static void add_literal(GArray *words, size_t a, size_t b)
{
    if (b <= a) return;
    struct word w = {.start = a, .end = b};
    g_array_append_val(words, w);
}

static void convert_run(GString *out, const char *charset, GByteArray *bytes)
{
    bool unknown = false, replaced = false;
    char *t = msg_text_to_utf8((const char *)bytes->data, bytes->len, charset, &unknown, &replaced);
    g_string_append(out, t);
    g_free(t);
    g_byte_array_set_size(bytes, 0);
}

char *msg_header_decode_unfolded(const char *s, size_t n)
{
    /* Most values hold no encoded word: then the value is one literal, and the word list below
     * would only add three allocations per header field to the same result. */
    if (!memmem(s, n, "=?", 2)) return msg_text_undeclared(s, n);
    GArray *words = g_array_new(FALSE, FALSE, sizeof(struct word));
    struct dead_range dead = {0, 0};
    size_t lit = 0;
    for (size_t i = 0; i + 1 < n;) {
        struct word w = {.start = i};
        size_t len = s[i] == '=' && s[i + 1] == '?' ? scan_word(s + i, n - i, i, &w, &dead) : 0;
        if (!len) {
            i++;
            continue;
        }
        add_literal(words, lit, i);
        w.end = i + len;
        g_array_append_val(words, w);
        i = lit = i + len;
    }
    add_literal(words, lit, n);

    bool utf8 = msg_text_mostly_utf8(s, n);
    GString *out = g_string_sized_new(n + 16);
    GByteArray *run = g_byte_array_new();
    for (guint i = 0; i < words->len; i++) {
        struct word *w = &g_array_index(words, struct word, i);
        struct word *prev = i > 0 ? &g_array_index(words, struct word, i - 1) : NULL;
        struct word *next = i + 1 < words->len ? &g_array_index(words, struct word, i + 1) : NULL;
        if (!w->encoded) {
            if (prev && prev->encoded && next && next->encoded &&
                is_blank_range(s, w->start, w->end))
                continue;
            char *t = utf8 ? msg_text_sanitize(s + w->start, w->end - w->start, NULL)
                           : msg_text_windows1252(s + w->start, w->end - w->start);
            g_string_append(out, t);
            g_free(t);
            continue;
        }
        g_byte_array_append(run, w->bytes->data, w->bytes->len);
        /* the next encoded word, past blank text: the same run when it has the same charset */
        struct word *after = next;
        if (after && !after->encoded && i + 2 < words->len &&
            is_blank_range(s, after->start, after->end))
            after = &g_array_index(words, struct word, i + 2);
        if (!after || !after->encoded || g_ascii_strcasecmp(after->charset, w->charset) != 0)
            convert_run(out, w->charset, run);
    }
    for (guint i = 0; i < words->len; i++) {
        struct word *w = &g_array_index(words, struct word, i);
        if (w->bytes) g_byte_array_unref(w->bytes);
    }
    g_array_unref(words);
    g_byte_array_unref(run);
    return g_string_free(out, FALSE);
}

char *msg_header_decode(const char *raw)
{
    if (!raw) return g_strdup("");
    char *u = msg_header_unfold(raw, strlen(raw));
    char *d = msg_header_decode_unfolded(u, strlen(u));
    g_free(u);
    return d;
}

/* ---- parameters ------------------------------------------------------------------------------ */

#define MARK '\x01'

char *msg_header_param(const struct message *m, GMimeObject *obj, const char *header,
                       const char *param)
{
    GMimeHeaderList *list = g_mime_object_get_header_list(obj);
    GMimeHeader *h = list ? g_mime_header_list_get_header(list, header) : NULL;
    const char *raw = h ? g_mime_header_get_raw_value(h) : NULL;
    const char *semi = raw ? strchr(raw, ';') : NULL;
    if (!semi) return NULL;
    /* Raw 8-bit bytes decided for the whole list at once (not per word, as GMime would), and
     * "=?" hidden from GMime (which would decode encoded words with its own decoder): GMime
     * only splits the list, RFC 2231 included; msg_header_decode_unfolded() decodes the value. */
    char *u = msg_header_unfold(semi + 1, strlen(semi + 1));
    char *text = msg_text_undeclared(u, strlen(u));
    g_free(u);
    for (char *p = text; *p; p++) {
        if (*p == MARK) *p = ' ';
        else if (p[0] == '=' && p[1] == '?') *p = MARK;
    }
    GMimeParamList *params = g_mime_param_list_parse(m->options, text);
    g_free(text);
    GMimeParam *p = params ? g_mime_param_list_get_parameter(params, param) : NULL;
    const char *value = p ? g_mime_param_get_value(p) : NULL;
    char *r = NULL;
    if (value) {
        char *v = g_strdup(value);
        for (char *q = v; *q; q++)
            if (*q == MARK) *q = '=';
        const char *cs = g_mime_param_get_charset(p);
        if (g_mime_param_get_encoding_method(p) == GMIME_PARAM_ENCODING_METHOD_RFC2231) {
            /* GMime converted it from its charset, or kept the bytes when they did not all
             * convert: then they are converted again, U+FFFD for those that do not */
            bool unknown = false;
            if (g_utf8_validate(v, -1, NULL)) r = g_strdup(v);
            else if (cs && *cs) r = msg_text_to_utf8(v, strlen(v), cs, &unknown, NULL);
            else r = msg_text_undeclared(v, strlen(v));
        } else {
            r = msg_header_decode_unfolded(v, strlen(v));
        }
        g_free(v);
    }
    if (params) g_object_unref(params);
    return r;
}

/* ---- the Subject of a message given as bytes ------------------------------------------------- */

char *msg_header_subject_of_bytes(const uint8_t *d, size_t len)
{
    if (len > LIMIT_HEADER_BYTES) len = LIMIT_HEADER_BYTES;
    const char *s = (const char *)d;
    GString *value = NULL;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(s + pos, '\n', len - pos);
        size_t next = nl ? (size_t)(nl - s) + 1 : len, e = nl ? (size_t)(nl - s) : len;
        if (e > pos && s[e - 1] == '\r') e--;
        if (e == pos) break; /* end of the header block */
        bool cont = s[pos] == ' ' || s[pos] == '\t';
        if (value && !cont) break;
        if (value) {
            g_string_append_len(value, s + pos, (gssize)(e - pos));
        } else if (!cont && e - pos >= 8 && g_ascii_strncasecmp(s + pos, "subject", 7) == 0) {
            size_t i = pos + 7;
            while (i < e && (s[i] == ' ' || s[i] == '\t')) i++;
            if (i < e && s[i] == ':') value = g_string_new_len(s + i + 1, (gssize)(e - i - 1));
        }
        pos = next;
    }
    if (!value) return g_strdup("");
    char *u = msg_header_unfold(value->str, value->len);
    char *r = msg_header_decode_unfolded(u, strlen(u));
    g_free(u);
    g_string_free(value, TRUE);
    return r;
}
