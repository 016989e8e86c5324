/* message/parse.c — message_parse(): bytes → GMime → the model of SPEC §3.
 *
 * The caller's bytes are never copied: a GByteArray wraps them (g_byte_array_new_take, freed
 * without its data) under a GMimeStreamMem that does not own it, and the parser persists the
 * stream, so parts refer to ranges of the caller's bytes.  prescan.c decides which ranges GMime
 * sees (GMimeStreamCat of substreams).  Each parse has its own GMimeParserOptions, as lenient as
 * GMime allows, kept until message_free() because GMime objects may refer to them. */
#include <stdarg.h>
#include <string.h>

#include "message/internal_html2text.h"
#include "message/internal.h"
#include "message/internal_strip.h"
#include "util/limits.h"

void message_warn(struct message *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *w = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    for (guint i = 0; i < m->warnings->len; i++) {
        if (strcmp(g_ptr_array_index(m->warnings, i), w) == 0) {
            g_free(w);
            return;
        }
    }
    g_ptr_array_add(m->warnings, w);
}

/* GMime's own findings that change what the model holds; the others (duplicated headers,
 * unencoded 8-bit, invalid parameters or addresses) are everyday mail and stay quiet. */
static void on_gmime_warning(gint64 offset, GMimeParserWarning code, const gchar *item,
                             gpointer user_data)
{
    struct message *m = user_data;
    switch (code) {
    case GMIME_WARN_MALFORMED_MULTIPART:
        message_warn(m, "malformed multipart: no child parts found");
        break;
    case GMIME_WARN_TRUNCATED_MESSAGE:
        message_warn(m, "truncated message: a multipart has no closing boundary");
        break;
    case GMIME_CRIT_MULTIPART_WITHOUT_BOUNDARY:
        message_warn(m, "multipart without a boundary parameter: read as one part");
        break;
    case GMIME_CRIT_NESTING_OVERFLOW:
        message_warn(m, "mime nesting overflow in GMime: deeper parts ignored");
        break;
    case GMIME_CRIT_PART_WITHOUT_HEADERS_OR_CONTENT:
        message_warn(m, "mime part without headers or content");
        break;
    case GMIME_CRIT_INVALID_HEADER_NAME:
        message_warn(m, "invalid header line ignored");
        break;
    default:
        break;
    }
}

static GMimeParserOptions *parser_options(struct message *m)
{
    static const char *fallback[] = {"utf-8", "windows-1252", NULL};
    GMimeParserOptions *o = g_mime_parser_options_new();
    g_mime_parser_options_set_rfc2047_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_address_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_parameter_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_allow_addresses_without_domain(o, TRUE);
    g_mime_parser_options_set_fallback_charsets(o, fallback);
    g_mime_parser_options_set_warning_callback(o, on_gmime_warning, m);
    return o;
}

static void cat_add(GMimeStream *cat, GMimeStream *part)
{
    g_mime_stream_cat_add_source(GMIME_STREAM_CAT(cat), part);
    g_object_unref(part);
}

static int edit_cmp(const void *a, const void *b)
{
    const struct prescan_cut *x = a, *y = b;
    return (x->at > y->at) - (x->at < y->at);
}

/* Adds [from, to) of base to cat, with a "\n" at each edit in it (splits and cuts, ascending). */
static void cat_range(GMimeStream *cat, GMimeStream *base, size_t from, size_t to,
                      const GArray *edits)
{
    for (guint i = 0; i < edits->len; i++) {
        const struct prescan_cut *c = &g_array_index(edits, struct prescan_cut, i);
        if (c->at < from || c->at >= to) continue;
        if (c->at > from) cat_add(cat, g_mime_stream_substream(base, (gint64)from, (gint64)c->at));
        cat_add(cat, g_mime_stream_mem_new_with_buffer("\n", 1));
        from = MAX(from, MIN(c->resume, to));
    }
    if (to > from) cat_add(cat, g_mime_stream_substream(base, (gint64)from, (gint64)to));
}

/* The stream GMime parses: the caller's bytes, spliced as prescan decided. */
static GMimeStream *input_stream(struct message *m, const uint8_t *data, size_t len,
                                 const struct prescan *ps)
{
    m->wrap = g_byte_array_new_take((guint8 *)(uintptr_t)data, len);
    GMimeStream *base = g_mime_stream_mem_new_with_byte_array(m->wrap);
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(base), FALSE);
    if (ps->head_start == 0 && !ps->separator && ps->head_end == ps->body_start && ps->end == len &&
        ps->splits->len == 0 && ps->cuts->len == 0)
        return base;
    /* splits insert a line end; cuts insert one and leave bytes out */
    GArray *edits = g_array_sized_new(FALSE, FALSE, sizeof(struct prescan_cut),
                                      ps->splits->len + ps->cuts->len);
    g_array_append_vals(edits, ps->cuts->data, ps->cuts->len);
    for (guint i = 0; i < ps->splits->len; i++) {
        size_t at = g_array_index(ps->splits, size_t, i);
        if (at <= ps->body_start) continue;
        struct prescan_cut c = {.at = at, .resume = at};
        g_array_append_val(edits, c);
    }
    g_array_sort(edits, edit_cmp);
    GMimeStream *cat = g_mime_stream_cat_new();
    cat_range(cat, base, ps->head_start, ps->head_end, edits);
    if (ps->separator) cat_add(cat, g_mime_stream_mem_new_with_buffer("\n", 1));
    cat_range(cat, base, ps->body_start, ps->end, edits);
    g_array_unref(edits);
    g_object_unref(base);
    return cat;
}

static char *header_text(const char *s)
{
    return s ? msg_text_sanitize(s, strlen(s), NULL) : g_strdup("");
}

/* The offset GMime recorded for header i of `list` (where its name starts in the parsed stream),
 * or `prev` when it has none (a header GMime did not parse from the stream: never expected). */
static gint64 header_offset(GMimeHeaderList *list, int i, gint64 prev)
{
    gint64 off = g_mime_header_get_offset(g_mime_header_list_get_header_at(list, i));
    return off < 0 ? prev : off;
}

static void add_header(struct message *m, GMimeHeader *h)
{
    struct message_header_rec r = {.name = header_text(g_mime_header_get_name(h)),
                                   .value = msg_header_decode(g_mime_header_get_raw_value(h))};
    g_array_append_val(m->headers, r);
}

/* message-headers: the top-level header block, in order, repeats kept, values unfolded (CR LF
 * before white space removed, the white space kept, RFC 5322 §2.2.3) and decoded by header.c from
 * GMime's raw value (not GMime's decoded value: see header.c).
 *
 * GMime 3 splits the top-level block in two: the fields whose name starts with "Content-" (any
 * case: Content-Type, Content-Transfer-Encoding, Content-Disposition, Content-ID, ...) go to the
 * message's MIME part (a GMimePart, GMimeMultipart or GMimeMessagePart), every other field stays
 * on the GMimeMessage.  Each list keeps the order of the block, and each header keeps the offset
 * in the parsed stream where its line starts, so merging the two lists by offset gives the block
 * back exactly as GMime read it (the same fields, names and raw values as GMime kept, stray lines
 * and invalid names dropped the same way in both).  The stream is prescan.c's splice of the
 * caller's bytes: offsets in it are not offsets in the caller's bytes, but they keep the order. */
static void collect_headers(struct message *m)
{
    GMimeHeaderList *top = g_mime_object_get_header_list(GMIME_OBJECT(m->gm));
    GMimeObject *part = g_mime_message_get_mime_part(m->gm);
    GMimeHeaderList *content = part ? g_mime_object_get_header_list(part) : NULL;
    int nt = top ? g_mime_header_list_get_count(top) : 0;
    int nc = content ? g_mime_header_list_get_count(content) : 0;
    int it = 0, ic = 0;
    gint64 ot = -1, oc = -1;
    while ((it < nt || ic < nc) && m->headers->len < LIMIT_HEADER_COUNT) {
        if (it < nt) ot = header_offset(top, it, ot);
        if (ic < nc) oc = header_offset(content, ic, oc);
        /* two fields of one block never share an offset; on a tie (offsets missing) the
         * message's own field comes first */
        if (ic >= nc || (it < nt && ot <= oc))
            add_header(m, g_mime_header_list_get_header_at(top, it++));
        else
            add_header(m, g_mime_header_list_get_header_at(content, ic++));
    }
}

static char *first_header(const struct message *m, const char *name)
{
    const char *v = message_header_first(m, name);
    return g_strdup(v ? v : "");
}

static char *message_id_of(const struct message *m)
{
    const char *v = message_header_first(m, "Message-ID");
    if (!v) return g_strdup("");
    char *id = g_mime_utils_decode_message_id(v);
    if (id && *id) {
        char *r = msg_text_sanitize(id, strlen(id), NULL);
        g_free(id);
        return r;
    }
    g_free(id);
    return g_strstrip(g_strdup(v));
}

static void strip(struct message *m)
{
    if (*m->body_plain) {
        msg_strip_text(m->body_plain, &m->stripped_text, &m->stripped_signature);
    } else {
        m->stripped_text = g_strdup("");
        m->stripped_signature = g_strdup("");
    }
    m->stripped_html = *m->body_html ? msg_strip_html(m->body_html) : g_strdup("");
}

struct message *message_parse(const uint8_t *data, size_t len)
{
    struct message *m = g_new0(struct message, 1);
    m->headers = g_array_new(FALSE, FALSE, sizeof(struct message_header_rec));
    m->attachments = g_array_new(FALSE, FALSE, sizeof(struct message_attachment_rec));
    m->warnings = g_ptr_array_new_with_free_func(g_free);
    const uint8_t *nl = len ? memchr(data, '\n', len) : NULL;
    m->crlf = nl && nl > data && nl[-1] == '\r';

    struct prescan ps;
    msg_prescan_run(m, data, len, &ps);
    m->stream = input_stream(m, data, len, &ps);
    msg_prescan_free(&ps);
    m->options = parser_options(m);
    GMimeParser *parser = g_mime_parser_new_with_stream(m->stream);
    g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
    g_mime_parser_set_persist_stream(parser, TRUE);
    m->gm = g_mime_parser_construct_message(parser, m->options);
    g_object_unref(parser);

    if (m->gm) {
        collect_headers(m);
        m->authentication_text = msg_authres_text(m);
        msg_walk(m, m->gm);
    } else {
        /* Only empty input gets here: prescan turned anything else into a header-less message. */
        if (len == 0) message_warn(m, "empty message");
        else message_warn(m, "not a MIME message: the whole input is the body");
        m->body_plain = msg_text_sanitize((const char *)data, ps.end, NULL);
        m->body_html = g_strdup("");
    }
    if (!*m->body_plain && *m->body_html) {
        g_free(m->body_plain);
        m->body_plain = msg_html_to_text(m->body_html, strlen(m->body_html));
    }
    m->from = first_header(m, "From");
    m->subject = first_header(m, "Subject");
    m->message_id = message_id_of(m);
    strip(m);
    return m;
}

void message_free(struct message *m)
{
    if (!m) return;
    for (guint i = 0; i < m->headers->len; i++) {
        struct message_header_rec *r = &g_array_index(m->headers, struct message_header_rec, i);
        g_free(r->name);
        g_free(r->value);
    }
    g_array_unref(m->headers);
    for (guint i = 0; i < m->attachments->len; i++) {
        struct message_attachment_rec *a =
            &g_array_index(m->attachments, struct message_attachment_rec, i);
        g_free(a->name);
        g_free(a->content_type);
        g_free(a->content_id);
        g_free(a->disposition);
        g_object_unref(a->part);
    }
    g_array_unref(m->attachments);
    g_ptr_array_unref(m->warnings);
    free(m->authentication_text);
    if (m->gm) g_object_unref(m->gm);
    g_object_unref(m->stream);
    if (m->wrap) g_byte_array_free(m->wrap, FALSE); /* the wrapper only: the bytes are the caller's */
    g_mime_parser_options_free(m->options);
    g_free(m->from);
    g_free(m->subject);
    g_free(m->message_id);
    g_free(m->body_plain);
    g_free(m->body_html);
    g_free(m->stripped_text);
    g_free(m->stripped_signature);
    g_free(m->stripped_html);
    g_free(m);
}
