/* message/stored.c — the stored-message answers of SPEC §6: the JSON of GET <storage url> and the
 * body-mime of its Accept: message/rfc2822 variant.
 *
 * message_stored_json keys, in this order: recipients, sender, from, subject, message-id (the §3
 * fields), body-plain, stripped-text, stripped-signature, body-html, stripped-html, attachments,
 * message-headers (Mailgun's added X-Mailgun-Incoming and X-Envelope-From first), content-id-map,
 * then those two and every header whose name is not reserved (message_reserved_name: "From",
 * "Subject", "Message-Id" are keys) as a key of its own, the first occurrence of a name (compared
 * ignoring case) only.  JSON keys take any UTF-8 text, so no header name is dropped for its spelling.
 *
 * message_body_mime: the exact bytes when they are valid UTF-8 without NUL.  Otherwise the bytes
 * are parsed as message_parse() does and GMime writes the tree again in 7 bit: 8-bit header values
 * as RFC 2047 / RFC 2231 (fix_headers), leaf bodies with 8-bit or NUL bytes as quoted-printable or
 * base64 (fix_leaf, then g_mime_object_encode(GMIME_ENCODING_CONSTRAINT_7BIT)), 8-bit multipart
 * preambles and epilogues dropped, CRLF or LF line ends after the input's first line.  Reading the
 * result gives the same from, subject, message-id, bodies and attachments, except that mixed line
 * ends become uniform and GMime may add a final line end to an unterminated multipart or an empty
 * forwarded message (seen on 4 of the 395 messages of the shared corpus). */
#include <string.h>

#include "message/internal.h"
#include "util/limits.h"

json_t *message_stored_json(const struct message *m, const char *recipient, const char *sender,
                            const char *storage_url)
{
    const char *base = storage_url ? storage_url : "";
    json_t *o = json_object();
    json_object_set_new(o, "recipients", msg_jstr(recipient));
    json_object_set_new(o, "sender", msg_jstr(sender));
    json_object_set_new(o, "from", msg_jstr(message_from(m)));
    json_object_set_new(o, "subject", msg_jstr(message_subject(m)));
    json_object_set_new(o, "message-id", msg_jstr(message_message_id(m)));
    json_object_set_new(o, "body-plain", msg_jstr(message_body_plain(m)));
    json_object_set_new(o, "stripped-text", msg_jstr(message_stripped_text(m)));
    json_object_set_new(o, "stripped-signature", msg_jstr(message_stripped_signature(m)));
    json_object_set_new(o, "body-html", msg_jstr(message_body_html(m)));
    json_object_set_new(o, "stripped-html", msg_jstr(message_stripped_html(m)));

    json_t *atts = json_array(), *map = json_object();
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        char *url = msg_attachment_url(base, i);
        json_array_append_new(atts, msg_attachment_ref_json(at, url));
        if (*at->content_id && !json_object_get(map, at->content_id)) {
            json_t *c = json_object();
            json_object_set_new(c, "url", msg_jstr(url));
            json_object_set_new(c, "content-type", msg_jstr(at->content_type));
            json_object_set_new(c, "name", msg_jstr(at->name));
            json_object_set_new(c, "size", json_integer((json_int_t)at->size));
            json_object_set_new(map, at->content_id, c);
        }
        g_free(url);
    }
    json_object_set_new(o, "attachments", atts);
    json_object_set_new(o, "message-headers", msg_headers_json(m, sender));
    json_object_set_new(o, "content-id-map", map);
    json_t *authentication = msg_authres_tree(m);
    if (authentication) json_object_set_new(o, "authentication", authentication);

    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    const size_t added = MSG_MAILGUN_HEADERS;
    for (size_t i = 0; i < added + message_header_count(m); i++) {
        const char *name, *value;
        char *own = NULL;
        if (i < added) value = own = msg_mailgun_header(i, sender, &name);
        else message_header(m, i - added, &name, &value);
        char *key = *name && !message_reserved_name(name) ? g_ascii_strdown(name, -1) : NULL;
        if (key && !g_hash_table_contains(seen, key)) {
            g_hash_table_add(seen, key);
            json_object_set_new(o, name, msg_jstr(value));
        } else {
            g_free(key);
        }
        g_free(own);
    }
    g_hash_table_unref(seen);
    return o;
}

/* ---- body-mime ------------------------------------------------------------------------------- */

static bool has_8bit(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s >= 0x80) return true;
    return false;
}

/* The raw value GMime writes after "Name:" for an encoded value: a leading space, folded before
 * a space when a line would pass 76 columns (unfolding gives the same text back), "\n" at the
 * end (the format options' newline filter makes it CRLF). */
static char *fold_raw(const char *name, const char *enc)
{
    GString *s = g_string_new(" ");
    size_t col = strlen(name) + 2;
    for (const char *p = enc; *p; p++) {
        if (*p == ' ' && col > 1) {
            size_t wl = strcspn(p + 1, " ");
            if (col + 1 + wl > 76) {
                g_string_append_c(s, '\n');
                col = 0;
            }
        }
        g_string_append_c(s, *p);
        col++;
    }
    g_string_append_c(s, '\n');
    return g_string_free(s, FALSE);
}

/* Header values with raw 8-bit bytes are decoded as message_parse reads them (header.c) and
 * written again in 7 bit: Content-Type and Content-Disposition through GMime's formatter (RFC 2231
 * parameters), every other header as the same text with its 8-bit words as RFC 2047 encoded
 * words (g_mime_utils_header_encode_text), so that reading it back gives the same value (GMime's
 * address formatter would drop quotes and change white space). */
/* Whether GMime can format these parameters.  GMime 3.2.13's g_mime_param_list_encode never
 * returns (appending to its string until memory runs out) for a parameter whose value needs
 * RFC 2231 encoding and whose name is 70 to 72 bytes long: its continuations then get no bytes
 * of the value each (gmime-param.c; upstream issue #165).  Real names are a few bytes; a longer
 * one comes from hostile or broken input, and that field is written as text instead. */
static bool params_formattable(GMimeParamList *params)
{
    int n = params ? g_mime_param_list_length(params) : 0;
    for (int i = 0; i < n; i++) {
        const char *name = g_mime_param_get_name(g_mime_param_list_get_parameter_at(params, i));
        if (name && strlen(name) > MSG_PARAM_NAME_FORMAT_MAX) return false;
    }
    return true;
}

/* Content-Type or Content-Disposition `value` parsed as g_mime_header_set_value() will parse it,
 * and whether GMime's formatter can write it back. */
static bool formattable(GMimeParserOptions *options, bool content_type, const char *value)
{
    bool ok = false;
    if (content_type) {
        GMimeContentType *ct = g_mime_content_type_parse(options, value);
        ok = ct && params_formattable(g_mime_content_type_get_parameters(ct));
        if (ct) g_object_unref(ct);
    } else {
        GMimeContentDisposition *cd = g_mime_content_disposition_parse(options, value);
        ok = cd && params_formattable(g_mime_content_disposition_get_parameters(cd));
        if (cd) g_object_unref(cd);
    }
    return ok;
}

static void fix_headers(GMimeObject *obj, GMimeFormatOptions *fo, GMimeParserOptions *options)
{
    GMimeHeaderList *list = g_mime_object_get_header_list(obj);
    int n = list ? g_mime_header_list_get_count(list) : 0;
    for (int i = 0; i < n; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(list, i);
        const char *raw = g_mime_header_get_raw_value(h);
        const char *name = g_mime_header_get_name(h);
        if (!has_8bit(raw) && !has_8bit(name)) continue;
        char *value = msg_header_decode(raw);
        const bool content_type = g_ascii_strcasecmp(name, "Content-Type") == 0;
        if ((content_type || g_ascii_strcasecmp(name, "Content-Disposition") == 0) &&
            formattable(options, content_type, value)) {
            g_mime_header_set_value(h, fo, value, "utf-8");
        } else {
            char *enc = g_mime_utils_header_encode_text(NULL, value, "utf-8");
            char *folded = fold_raw(name, enc ? enc : "");
            g_mime_header_set_raw_value(h, folded);
            g_free(folded);
            g_free(enc);
        }
        g_free(value);
    }
}

/* Whether the part's content as stored (still encoded) has a byte that is not 7-bit. */
static bool content_8bit(GMimePart *part)
{
    GMimeDataWrapper *w = g_mime_part_get_content(part);
    GMimeStream *st = w ? g_mime_data_wrapper_get_stream(w) : NULL;
    if (!st) return false;
    g_mime_stream_reset(st);
    char buf[4096];
    bool found = false;
    ssize_t n;
    while (!found && (n = g_mime_stream_read(st, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < n && !found; i++)
            found = (unsigned char)buf[i] >= 0x80 || buf[i] == 0;
    g_mime_stream_reset(st);
    return found;
}

/* A leaf's content in 7 bit.  GMime's own encode leaves a part alone when it says "7bit" or
 * "binary" (3.2: the best encoding is computed for binary but never set) or is already
 * quoted-printable or base64, whatever bytes it holds; so: an identity encoding with 8-bit or
 * NUL bytes gets the best 7-bit encoding, and a QP/base64/uuencode body with raw 8-bit bytes is
 * decoded and encoded again in the other of base64 and QP (its decoded bytes stay the same). */
static void fix_leaf(GMimePart *part)
{
    if (!g_mime_part_get_content(part)) {
        /* A part whose headers run into the next boundary has no content at all, and GMime's
         * encode would hand that NULL to g_mime_data_wrapper_write_to_stream (a GLib critical on
         * stderr): an empty content writes the same bytes. */
        GMimeStream *empty = g_mime_stream_mem_new();
        GMimeDataWrapper *w = g_mime_data_wrapper_new_with_stream(empty, GMIME_CONTENT_ENCODING_DEFAULT);
        g_mime_part_set_content(part, w);
        g_object_unref(w);
        g_object_unref(empty);
        return;
    }
    GMimeContentEncoding e = g_mime_part_get_content_encoding(part);
    switch (e) {
    case GMIME_CONTENT_ENCODING_DEFAULT:
    case GMIME_CONTENT_ENCODING_7BIT:
    case GMIME_CONTENT_ENCODING_8BIT:
    case GMIME_CONTENT_ENCODING_BINARY:
        if (content_8bit(part))
            g_mime_part_set_content_encoding(
                part, g_mime_part_get_best_content_encoding(part, GMIME_ENCODING_CONSTRAINT_7BIT));
        break;
    default:
        if (content_8bit(part))
            g_mime_part_set_content_encoding(part, e == GMIME_CONTENT_ENCODING_BASE64
                                                       ? GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE
                                                       : GMIME_CONTENT_ENCODING_BASE64);
        break;
    }
}

static void fix_tree(GMimeObject *obj, GMimeFormatOptions *fo, GMimeParserOptions *options, int depth)
{
    if (!obj || depth > 4 * LIMIT_MIME_DEPTH + 8) return;
    fix_headers(obj, fo, options);
    if (GMIME_IS_MESSAGE(obj)) {
        fix_tree(g_mime_message_get_mime_part(GMIME_MESSAGE(obj)), fo, options, depth + 1);
    } else if (GMIME_IS_MESSAGE_PART(obj)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
        if (inner) fix_tree(GMIME_OBJECT(inner), fo, options, depth + 1);
    } else if (GMIME_IS_PART(obj)) {
        fix_leaf(GMIME_PART(obj));
    } else if (GMIME_IS_MULTIPART(obj)) {
        GMimeMultipart *mp = GMIME_MULTIPART(obj);
        /* the text around the parts is for non-MIME readers: dropped when 8-bit */
        if (has_8bit(g_mime_multipart_get_prologue(mp))) g_mime_multipart_set_prologue(mp, NULL);
        if (has_8bit(g_mime_multipart_get_epilogue(mp))) g_mime_multipart_set_epilogue(mp, NULL);
        int n = g_mime_multipart_get_count(mp);
        for (int i = 0; i < n; i++) fix_tree(g_mime_multipart_get_part(mp, i), fo, options, depth + 1);
    }
}

char *message_body_mime(const uint8_t *raw, size_t raw_len, size_t *len)
{
    if (!raw) raw_len = 0;
    if (raw_len <= G_MAXSSIZE && g_utf8_validate((const char *)raw, (gssize)raw_len, NULL)) {
        char *out = g_malloc(raw_len + 1);
        if (raw_len) memcpy(out, raw, raw_len);
        out[raw_len] = '\0';
        *len = raw_len;
        return out;
    }
    struct message *m = message_parse(raw, raw_len);
    GByteArray *ba = g_byte_array_new();
    if (m && m->gm) {
        GMimeFormatOptions *fo = g_mime_format_options_new();
        g_mime_format_options_set_newline_format(
            fo, m->crlf ? GMIME_NEWLINE_FORMAT_DOS : GMIME_NEWLINE_FORMAT_UNIX);
        fix_tree(GMIME_OBJECT(m->gm), fo, m->options, 0);
        g_mime_object_encode(GMIME_OBJECT(m->gm), GMIME_ENCODING_CONSTRAINT_7BIT);
        GMimeStream *st = g_mime_stream_mem_new_with_byte_array(ba);
        g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(st), FALSE);
        g_mime_object_write_to_stream(GMIME_OBJECT(m->gm), fo, st);
        g_object_unref(st);
        g_mime_format_options_free(fo);
    } else {
        g_byte_array_append(ba, raw_len ? raw : (const uint8_t *)"", (guint)raw_len);
    }
    message_free(m);
    /* What GMime passes through unchanged (a part whose declared base64 or quoted-printable
     * body holds 8-bit junk, which decoders skip anyway) is made 7-bit here, so the promise of
     * SPEC §6 holds for any input. */
    for (guint i = 0; i < ba->len; i++)
        if (ba->data[i] >= 0x80 || ba->data[i] == 0) ba->data[i] = '?';
    g_byte_array_append(ba, (const uint8_t *)"", 1);
    *len = ba->len - 1;
    return (char *)g_byte_array_free(ba, FALSE);
}
