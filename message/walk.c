/* message/walk.c — which parts are bodies, which are attachments (SPEC §3).
 *
 * The MIME tree is walked once, in tree order, into a list of items (plain body, HTML body,
 * attachment); each multipart decides about its children:
 *  - a leaf is a body when it is text/plain or text/html, its Content-Disposition is not
 *    "attachment" (any disposition other than "inline" counts as attachment, RFC 2183 §2.8), it
 *    has no filename (Content-Disposition filename= or Content-Type name=), and no enclosing
 *    multipart/related made it a related resource.  Every other leaf is an attachment, and so is
 *    every message/rfc822 (or message/global) part, whose inner bodies never reach the outer
 *    body;
 *  - multipart/alternative: each child is walked on its own; the plain bodies of the last child
 *    that has any, and the HTML bodies of the last child that has any, are kept (RFC 2046 §5.1.4:
 *    the last alternative is the preferred one); the bodies of the other alternatives are
 *    dropped; attachments of every alternative (text/calendar, images of a related child) stay;
 *  - multipart/related: the root (the child whose Content-ID is the start= parameter, else the
 *    first) is walked as usual; all leaves of the other children are attachments (inline images);
 *  - any other multipart (mixed, digest, signed, report, unknown): every child, in order;
 *  - a multipart in which GMime found no part and no close delimiter (its boundary never
 *    matched, or it has none) is text: its undecoded body is a plain body (SPEC §3: what is not
 *    valid MIME is still read), with a parse warning.
 * Then bodies are decoded, converted to UTF-8 and joined in item order (build() below).
 * Limits: multipart nesting deeper than LIMIT_MIME_DEPTH and parts past LIMIT_MIME_PARTS are
 * ignored with a parse warning. */
#include <string.h>

#include "message/internal.h"
#include "util/limits.h"

/* ITEM_RAW: a multipart in which GMime found no part at all (plain text: its raw body) */
enum item_kind { ITEM_PLAIN, ITEM_HTML, ITEM_ATTACH, ITEM_RAW };

struct item {
    enum item_kind kind;
    GMimeObject *obj; /* borrowed from the tree */
};

struct walker {
    struct message *m;
    size_t parts;
    bool stop;
};

static void walk(struct walker *w, GMimeObject *obj, int depth, bool related, GArray *items);

static bool type_is(GMimeObject *obj, const char *type, const char *subtype)
{
    GMimeContentType *ct = g_mime_object_get_content_type(obj);
    return ct && g_mime_content_type_is_type(ct, type, subtype);
}

/* A leaf that the rules above never take as a body. */
static bool leaf_is_attachment(GMimeObject *obj)
{
    const char *disp = g_mime_object_get_disposition(obj);
    if (disp && *disp && g_ascii_strcasecmp(disp, "inline") != 0) return true;
    const char *name = g_mime_part_get_filename(GMIME_PART(obj));
    return name && *name;
}

static void add(GArray *items, enum item_kind kind, GMimeObject *obj)
{
    struct item it = {.kind = kind, .obj = obj};
    g_array_append_val(items, it);
}

static void walk_leaf(GMimeObject *obj, bool related, GArray *items)
{
    enum item_kind kind = ITEM_ATTACH;
    if (!related && GMIME_IS_PART(obj) && !leaf_is_attachment(obj)) {
        if (type_is(obj, "text", "plain")) kind = ITEM_PLAIN;
        else if (type_is(obj, "text", "html")) kind = ITEM_HTML;
    }
    add(items, kind, obj);
}

static void walk_alternative(struct walker *w, GMimeMultipart *mp, int depth, bool related,
                             GArray *items)
{
    int n = g_mime_multipart_get_count(mp), last_plain = -1, last_html = -1;
    GPtrArray *subs = g_ptr_array_new_with_free_func((GDestroyNotify)g_array_unref);
    for (int i = 0; i < n; i++) {
        GArray *sub = g_array_new(FALSE, FALSE, sizeof(struct item));
        g_ptr_array_add(subs, sub);
        walk(w, g_mime_multipart_get_part(mp, i), depth + 1, related, sub);
        for (guint j = 0; j < sub->len; j++) {
            enum item_kind k = g_array_index(sub, struct item, j).kind;
            if (k == ITEM_PLAIN || k == ITEM_RAW) last_plain = i;
            if (k == ITEM_HTML) last_html = i;
        }
    }
    for (int i = 0; i < n; i++) {
        GArray *sub = g_ptr_array_index(subs, i);
        for (guint j = 0; j < sub->len; j++) {
            struct item *it = &g_array_index(sub, struct item, j);
            if (((it->kind == ITEM_PLAIN || it->kind == ITEM_RAW) && i != last_plain) ||
                (it->kind == ITEM_HTML && i != last_html))
                continue;
            g_array_append_val(items, *it);
        }
    }
    g_ptr_array_unref(subs);
}

/* Index of the root of a multipart/related (RFC 2387 §3.2). */
static int related_root(GMimeMultipart *mp)
{
    const char *start = g_mime_object_get_content_type_parameter(GMIME_OBJECT(mp), "start");
    if (!start || !*start) return 0;
    char *id = g_mime_utils_decode_message_id(start);
    int n = g_mime_multipart_get_count(mp), root = 0;
    for (int i = 0; id && i < n; i++) {
        const char *cid = g_mime_object_get_content_id(g_mime_multipart_get_part(mp, i));
        if (cid && strcmp(cid, id) == 0) {
            root = i;
            break;
        }
    }
    g_free(id);
    return root;
}

static void walk(struct walker *w, GMimeObject *obj, int depth, bool related, GArray *items)
{
    if (w->stop || !obj) return;
    if (depth > LIMIT_MIME_DEPTH) {
        message_warn(w->m, "mime depth limit %d reached: deeper parts ignored", LIMIT_MIME_DEPTH);
        return;
    }
    if (++w->parts > LIMIT_MIME_PARTS) {
        message_warn(w->m, "mime part limit %d reached: later parts ignored", LIMIT_MIME_PARTS);
        w->stop = true;
        return;
    }
    if (!GMIME_IS_MULTIPART(obj)) {
        walk_leaf(obj, related, items);
        return;
    }
    GMimeMultipart *mp = GMIME_MULTIPART(obj);
    int n = g_mime_multipart_get_count(mp);
    if (n == 0) {
        /* No delimiter matched (e.g. a boundary longer than GMime can match): GMime keeps the
         * whole body as the prologue and no close delimiter (no epilogue).  SPEC §3: what is
         * not valid MIME is still text, so it is a plain body, undecoded. */
        const char *prologue = g_mime_multipart_get_prologue(mp);
        bool text = false;
        for (const char *p = prologue; p && *p && !text; p++) text = !g_ascii_isspace(*p);
        if (!related && text && !g_mime_multipart_get_epilogue(mp)) {
            message_warn(w->m, "multipart without any part (no delimiter found): its body kept "
                               "as text");
            add(items, ITEM_RAW, obj);
        }
        return;
    }
    if (type_is(obj, "multipart", "alternative")) {
        walk_alternative(w, mp, depth, related, items);
    } else if (type_is(obj, "multipart", "related")) {
        int root = related_root(mp);
        for (int i = 0; i < n; i++)
            walk(w, g_mime_multipart_get_part(mp, i), depth + 1, related || i != root, items);
    } else {
        for (int i = 0; i < n; i++) walk(w, g_mime_multipart_get_part(mp, i), depth + 1, related, items);
    }
}

/* ---- from items to the model ---------------------------------------------------------------- */

static GMimeFormatOptions *format_options(const struct message *m)
{
    GMimeFormatOptions *fo = g_mime_format_options_new();
    g_mime_format_options_set_newline_format(fo, m->crlf ? GMIME_NEWLINE_FORMAT_DOS
                                                         : GMIME_NEWLINE_FORMAT_UNIX);
    return fo;
}

/* Writes the decoded content of a leaf, or a forwarded message as GMime writes it back with the
 * outer message's line endings, to `out`. */
static void write_part(const struct message *m, GMimeObject *part, GMimeStream *out)
{
    if (GMIME_IS_MESSAGE_PART(part)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(part));
        if (!inner) return;
        GMimeFormatOptions *fo = format_options(m);
        g_mime_object_write_to_stream(GMIME_OBJECT(inner), fo, out);
        g_mime_format_options_free(fo);
    } else if (GMIME_IS_PART(part)) {
        GMimeDataWrapper *content = g_mime_part_get_content(GMIME_PART(part));
        if (content) g_mime_data_wrapper_write_to_stream(content, out);
    }
    g_mime_stream_flush(out);
}

GByteArray *msg_part_bytes(const struct message *m, GMimeObject *part)
{
    GMimeStream *mem = g_mime_stream_mem_new();
    write_part(m, part, mem);
    GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(mem), FALSE);
    g_object_unref(mem);
    return ba;
}

static size_t part_size(const struct message *m, GMimeObject *part)
{
    GMimeStream *null = g_mime_stream_null_new();
    write_part(m, part, null);
    size_t n = GMIME_STREAM_NULL(null)->written;
    g_object_unref(null);
    return n;
}

static bool is_message_type(GMimeObject *part)
{
    return type_is(part, "message", "rfc822") || type_is(part, "message", "global") ||
           type_is(part, "message", "news");
}

/* Name of an attachment: its filename (Content-Disposition filename=, else Content-Type name=,
 * read from the raw fields by msg_header_param(): so a name survives a Content-Type GMime could not
 * parse, and raw 8-bit names are read as header text); for a forwarded message, the inner
 * subject + ".eml", else "message.eml" (also when the message is base64-encoded, which
 * RFC 2046 §5.2.1 forbids but mailers do, and GMime keeps as an opaque part). */
static char *attachment_name(const struct message *m, GMimeObject *part)
{
    char *name = msg_header_param(m, part, "Content-Disposition", "filename");
    if (!name || !*name) {
        g_free(name);
        name = msg_header_param(m, part, "Content-Type", "name");
    }
    if (name && *name) return name;
    g_free(name);
    char *subject = NULL;
    if (GMIME_IS_MESSAGE_PART(part)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(part));
        GMimeHeaderList *list = inner ? g_mime_object_get_header_list(GMIME_OBJECT(inner)) : NULL;
        GMimeHeader *h = list ? g_mime_header_list_get_header(list, "Subject") : NULL;
        subject = h ? msg_header_decode(g_mime_header_get_raw_value(h)) : NULL;
    } else if (GMIME_IS_PART(part) && is_message_type(part)) {
        GByteArray *ba = msg_part_bytes(m, part);
        subject = msg_header_subject_of_bytes(ba->data, ba->len);
        g_byte_array_unref(ba);
    } else {
        return g_strdup("");
    }
    char *r = subject && *subject ? g_strconcat(subject, ".eml", NULL) : g_strdup("message.eml");
    g_free(subject);
    return r;
}

static void add_attachment(struct message *m, GMimeObject *part, size_t size)
{
    struct message_attachment_rec a = {.part = g_object_ref(part)};
    GMimeContentType *ct = g_mime_object_get_content_type(part);
    const char *type = ct ? g_mime_content_type_get_media_type(ct) : NULL;
    const char *sub = ct ? g_mime_content_type_get_media_subtype(ct) : NULL;
    char *mime = g_strdup_printf("%s/%s", type ? type : "application", sub ? sub : "octet-stream");
    a.content_type = msg_text_sanitize(mime, strlen(mime), NULL);
    g_free(mime);
    char *lower = g_ascii_strdown(a.content_type, -1);
    g_free(a.content_type);
    a.content_type = lower;
    const char *cid = g_mime_object_get_content_id(part);
    a.content_id = g_strdup("");
    if (cid && *cid) {
        char *bracketed = g_strdup_printf("<%s>", cid);
        g_free(a.content_id);
        a.content_id = msg_text_sanitize(bracketed, strlen(bracketed), NULL);
        g_free(bracketed);
    }
    const char *disp = g_mime_object_get_disposition(part);
    a.disposition = g_strdup(!disp || !*disp                               ? ""
                             : g_ascii_strcasecmp(disp, "inline") == 0 ? "inline"
                                                                        : "attachment");
    a.name = attachment_name(m, part);
    a.pub = (struct message_attachment){.name = a.name, .content_type = a.content_type,
                                        .content_id = a.content_id, .disposition = a.disposition,
                                        .size = size};
    g_array_append_val(m->attachments, a);
}

/* Body text of a leaf in UTF-8; warns about unknown charsets and U+FFFD replacements. */
static char *body_text(struct message *m, GMimeObject *part)
{
    GByteArray *ba = msg_part_bytes(m, part);
    const char *charset = g_mime_object_get_content_type_parameter(part, "charset");
    if (charset && g_ascii_strncasecmp(charset, "charset=", 8) == 0) charset += 8; /* seen in the wild */
    bool unknown = false, replaced = false;
    char *text = msg_text_to_utf8((const char *)ba->data, ba->len, charset, &unknown, &replaced);
    g_byte_array_unref(ba);
    if (unknown) {
        char *cs = msg_text_sanitize(charset, strnlen(charset, LIMIT_CHARSET_MAX), NULL);
        message_warn(m, "unknown charset \"%s\": read as windows-1252", cs);
        g_free(cs);
    }
    if (replaced) message_warn(m, "undecodable bytes in a body replaced by U+FFFD");
    return text;
}

/* Appends `text` to *acc with exactly one empty line between them; `eol` is the line ending of
 * the message (CR LF for what SMTP stored). */
static void join(GString **acc, const char *text, const char *eol)
{
    if (!*text) return;
    if (!*acc) {
        *acc = g_string_new(text);
        return;
    }
    if ((*acc)->len == 0 || (*acc)->str[(*acc)->len - 1] != '\n') g_string_append(*acc, eol);
    g_string_append(*acc, eol);
    g_string_append(*acc, text);
}

static void build(struct message *m, GArray *items)
{
    GString *plain = NULL, *html = NULL;
    long long decoded = 0;
    for (guint i = 0; i < items->len; i++) {
        struct item *it = &g_array_index(items, struct item, i);
        size_t size = 0;
        char *text = NULL;
        if (it->kind == ITEM_ATTACH) {
            size = part_size(m, it->obj);
        } else if (it->kind == ITEM_RAW) {
            const char *raw = g_mime_multipart_get_prologue(GMIME_MULTIPART(it->obj));
            size = strlen(text = msg_text_sanitize(raw, strlen(raw), NULL));
        } else {
            size = strlen(text = body_text(m, it->obj));
        }
        decoded += (long long)size;
        if (decoded > LIMIT_MIME_DECODED_BYTES) {
            message_warn(m, "decoded size limit %lld reached: later parts ignored",
                         LIMIT_MIME_DECODED_BYTES);
            g_free(text);
            break;
        }
        if (it->kind == ITEM_ATTACH) add_attachment(m, it->obj, size);
        else join(it->kind == ITEM_HTML ? &html : &plain, text, m->crlf ? "\r\n" : "\n");
        g_free(text);
    }
    m->body_plain = plain ? g_string_free(plain, FALSE) : g_strdup("");
    m->body_html = html ? g_string_free(html, FALSE) : g_strdup("");
}

void msg_walk(struct message *m, GMimeMessage *gm)
{
    struct walker w = {.m = m};
    GArray *items = g_array_new(FALSE, FALSE, sizeof(struct item));
    walk(&w, g_mime_message_get_mime_part(gm), 1, false, items);
    build(m, items);
    g_array_unref(items);
}
