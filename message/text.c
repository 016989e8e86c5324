/* message/text.c — bytes in any charset to valid UTF-8 without NUL bytes.
 *
 * Rules (SPEC §3: every charset GMime knows is converted, undecodable bytes become U+FFFD):
 *  - no charset, "utf-8", "us-ascii": read as UTF-8 (8-bit text without a label is UTF-8 far more
 *    often than anything else today); each maximal ill-formed subsequence becomes one U+FFFD
 *    (Unicode §3.9 "best practice", what Python's errors="replace" does);
 *  - "iso-8859-1"/"latin1" and charsets iconv does not know: windows-1252 (its superset, as the
 *    WHATWG encoding standard reads latin1 labels); an unknown charset is reported to the caller;
 *  - anything else through iconv (charset names mapped by GMime, then the aliases of
 *    charset_alias() for labels iconv knows under another name, e.g. x-mac-cyrillic), U+FFFD for
 *    each byte iconv rejects, one U+FFFD for a truncated sequence at the end;
 *  - header text without a charset (raw 8-bit bytes, msg_text_undeclared()): UTF-8 when it is valid
 *    UTF-8 or mostly is (at least one valid multi-byte sequence, and fewer invalid bytes than bytes
 *    in valid multi-byte sequences: each invalid byte run becomes U+FFFD, as Python reads it),
 *    else windows-1252 (a lone latin-1 byte);
 *  - NUL bytes become U+FFFD: JSON can carry \u0000, but many consumers (C strings, PostgreSQL
 *    text) cannot, and a NUL in a mail body is never meant. */
#include <errno.h>
#include <iconv.h>
#include <string.h>

#include "message/internal.h"

#define REPLACEMENT "\xEF\xBF\xBD"

/* Length of the maximal subpart of an ill-formed UTF-8 sequence at p (n >= 1 bytes left). */
static size_t invalid_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else return 1;
    size_t i = 1;
    for (; i <= need && i < n; i++) {
        if (p[i] < lo || p[i] > hi) break;
        lo = 0x80, hi = 0xBF;
    }
    return i;
}

char *msg_text_sanitize(const char *bytes, size_t len, bool *replaced)
{
    const char *end;
    if (len == 0) return g_strdup("");
    if (g_utf8_validate_len(bytes, len, &end)) return g_strndup(bytes, len);
    GString *out = g_string_sized_new(len + 16);
    const char *p = bytes, *stop = bytes + len;
    while (p < stop) {
        if (g_utf8_validate_len(p, (size_t)(stop - p), &end)) {
            g_string_append_len(out, p, stop - p);
            break;
        }
        g_string_append_len(out, p, end - p);
        g_string_append(out, REPLACEMENT);
        if (replaced) *replaced = true;
        p = end + (*end == '\0' ? 1 : invalid_len((const unsigned char *)end, (size_t)(stop - end)));
    }
    return g_string_free(out, FALSE);
}

static const uint16_t cp1252_high[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

/* Length of the complete, valid multi-byte UTF-8 sequence at p, or 0. */
static size_t valid_seq_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    return need && need <= n && invalid_len(p, n) == need ? need : 0;
}

bool msg_text_mostly_utf8(const char *bytes, size_t len)
{
    const unsigned char *p = (const unsigned char *)bytes;
    size_t valid = 0, invalid = 0;
    for (size_t i = 0; i < len;) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = valid_seq_len(p + i, len - i);
        if (k) {
            valid += k;
            i += k;
        } else {
            k = invalid_len(p + i, len - i);
            invalid += k;
            i += k;
        }
    }
    return invalid == 0 || (valid > 0 && invalid < valid);
}

static char *cp1252_to_utf8(const char *bytes, size_t len, bool *replaced)
{
    GString *out = g_string_sized_new(len + len / 4 + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (c == 0) {
            g_string_append(out, REPLACEMENT);
            if (replaced) *replaced = true;
        } else if (c < 0x80) {
            g_string_append_c(out, (char)c);
        } else {
            g_string_append_unichar(out, c < 0xA0 ? cp1252_high[c - 0x80] : c);
        }
    }
    return g_string_free(out, FALSE);
}

static bool charset_is(const char *cs, const char *const *names)
{
    for (; *names; names++)
        if (g_ascii_strcasecmp(cs, *names) == 0) return true;
    return false;
}

char *msg_text_windows1252(const char *bytes, size_t len)
{
    return cp1252_to_utf8(bytes, len, NULL);
}

char *msg_text_undeclared(const char *bytes, size_t len)
{
    return msg_text_mostly_utf8(bytes, len) ? msg_text_sanitize(bytes, len, NULL)
                                        : cp1252_to_utf8(bytes, len, NULL);
}

/* iconv from `cd` into UTF-8; bytes iconv rejects become U+FFFD. */
static char *iconv_to_utf8(iconv_t cd, const char *bytes, size_t len, bool *replaced)
{
    GString *out = g_string_sized_new(len * 2 + 16);
    char *in = (char *)(uintptr_t)bytes;
    size_t inleft = len;
    char buf[4096];
    for (;;) {
        char *o = buf;
        size_t oleft = sizeof buf;
        size_t r = inleft ? iconv(cd, &in, &inleft, &o, &oleft) : iconv(cd, NULL, NULL, &o, &oleft);
        int err = errno;
        g_string_append_len(out, buf, o - buf);
        if (r != (size_t)-1) {
            if (inleft == 0 && in != NULL) {
                in = NULL; /* one more round to flush a stateful encoding */
                continue;
            }
            break;
        }
        if (err == E2BIG) continue;
        g_string_append(out, REPLACEMENT);
        if (replaced) *replaced = true;
        if (err == EILSEQ && inleft > 0) {
            in++, inleft--;
            continue;
        }
        break; /* EINVAL: a truncated sequence at the end */
    }
    bool dummy = false;
    char *valid = msg_text_sanitize(out->str, out->len, replaced ? replaced : &dummy);
    g_string_free(out, TRUE);
    return valid;
}

/* Labels that iconv knows under another name (GMime's own mapping is tried first). */
static const char *charset_alias(const char *cs)
{
    static const char *const aliases[][2] = {
        {"x-mac-cyrillic", "MAC-CYRILLIC"}, {"x-mac-ukrainian", "MAC-UK"},
        {"x-mac-roman", "MACINTOSH"},       {"x-mac-ce", "MAC-CENTRALEUROPE"},
        {"x-mac-centraleurroman", "MAC-CENTRALEUROPE"}, {"x-mac-icelandic", "MAC-IS"},
        {"x-sjis", "SHIFT_JIS"},            {"x-euc-jp", "EUC-JP"},
        {"x-gbk", "GBK"},                   {"x-euc-tw", "EUC-TW"},
        {"unicodebig", "UTF-16BE"},         {"unicodelittle", "UTF-16LE"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(aliases); i++)
        if (g_ascii_strcasecmp(cs, aliases[i][0]) == 0) return aliases[i][1];
    return NULL;
}

static iconv_t open_to_utf8(const char *charset)
{
    iconv_t cd = g_mime_iconv_open("UTF-8", charset);
    const char *alias = cd == (iconv_t)-1 ? charset_alias(charset) : NULL;
    if (alias) cd = g_mime_iconv_open("UTF-8", alias);
    if (cd == (iconv_t)-1 && g_ascii_strncasecmp(charset, "x-", 2) == 0 && charset[2])
        cd = g_mime_iconv_open("UTF-8", charset + 2);
    return cd;
}

char *msg_text_to_utf8(const char *bytes, size_t len, const char *charset, bool *unknown,
                       bool *replaced)
{
    static const char *const utf8_names[] = {"utf-8", "utf8", "us-ascii", "ascii", "ansi_x3.4-1968",
                                             "unicode-1-1-utf-8", NULL};
    static const char *const latin1_names[] = {"iso-8859-1", "iso8859-1", "iso_8859-1", "latin1",
                                               "l1", "windows-1252", "cp1252", "x-cp1252", NULL};
    *unknown = false;
    const char *mapped = charset && *charset ? g_mime_charset_iconv_name(charset) : NULL;
    if (!charset || !*charset || charset_is(charset, utf8_names) ||
        (mapped && charset_is(mapped, utf8_names)))
        return msg_text_sanitize(bytes, len, replaced);
    if (charset_is(charset, latin1_names) || (mapped && charset_is(mapped, latin1_names)))
        return cp1252_to_utf8(bytes, len, replaced);
    iconv_t cd = open_to_utf8(charset);
    if (cd == (iconv_t)-1) {
        *unknown = true;
        return cp1252_to_utf8(bytes, len, replaced);
    }
    char *s = iconv_to_utf8(cd, bytes, len, replaced);
    g_mime_iconv_close(cd);
    return s;
}

