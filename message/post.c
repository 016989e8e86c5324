/* message/post.c — webhook POST bodies (SPEC §5): the fixed part of one (message, recipient) in
 * the json, mailgun-form or raw-MIME format, and the per-attempt tail.
 *
 * Formats and their fields, in this order (the tail always adds timestamp, token, signature):
 *
 *  - MESSAGE_POST_JSON: message_to_json() dumped with JSON_PRESERVE_ORDER | JSON_COMPACT without
 *    its final "}", written by msg_json_write() (jsonw.c) without building the jansson tree (same
 *    bytes; notify: attachments as the notify list, "url" in every content-id-map entry,
 *    "message-url" last); the tail is ,"timestamp":"…","token":"…","signature":"…"}.
 *  - MESSAGE_POST_MAILGUN (Mailgun's parsed form, reference §3.2 / §5.2):
 *      recipient, sender, from, subject, message-id, domain, body-plain, body-html,
 *      stripped-text, stripped-signature, stripped-html, message-headers (JSON string),
 *      content-id-map (JSON string: "<cid>" → "attachment-N", 1-based), parse-warnings (JSON
 *      string, extension), id (inlet message id, extension),
 *      [notify: message-url, attachments (JSON string of [{size, url, name, content-type}])],
 *      every header that may be a field (header_field_ok() below) under its own name, first
 *      occurrence only, Mailgun's added X-Mailgun-Incoming and X-Envelope-From first (their
 *      pairs lead message-headers too),
 *      [not notify, when the message has attachments: attachment-count, attachment-1..N as file
 *      parts with filename and Content-Type].
 *    In notify mode content-id-map maps "<cid>" to the attachment's URL (there are no
 *    attachment-N parts to name; mailgun-go reads it as map[string]string).
 *    Encoding: application/x-www-form-urlencoded when there is no file part and the urlencoded
 *    body (fixed part plus the longest tail) is at most POST_URLENCODED_MAX bytes, else
 *    multipart/form-data.  100 KiB is the default body limit of Express's urlencoded parser
 *    (body-parser "100kb"), the smallest common limit among receivers; multipart does not
 *    inflate non-ASCII text three times either.
 *  - MESSAGE_POST_MIME (Mailgun's raw variant, reference §3.3, what Rails ActionMailbox reads):
 *    multipart/form-data with recipient, sender, from, subject,
 *    [notify: domain, message-url, attachments (JSON string)], body-mime (a plain field part
 *    without filename and without Content-Type whose bytes are a segment referencing `raw`).
 *
 * Multipart bodies follow the HTML form encoding: CRLF everywhere, one
 * `Content-Disposition: form-data; name="…"` (plus `; filename="…"` and a Content-Type line for
 * files) per part, no Content-Transfer-Encoding (values are the raw UTF-8 / binary bytes), names
 * and filenames with `"`, CR and LF escaped as %22, %0D, %0A.  The boundary is "inlet" and 32
 * random hex digits (128 bits, no '-'); before the body is written, every field (name, value,
 * filename, type) is searched for it and a new one is drawn if it occurs (it never does in
 * practice).  Each value is framed by our own CR LF and delimiter text, whose bytes are not in
 * the boundary's alphabet, so no occurrence can span a value and its frame.  The tail's values
 * are reduced to [A-Za-z0-9._-] (they are inlet's own: a decimal timestamp, a [a-z0-9] token,
 * hex), so they cannot carry it either.
 *
 * Memory: the fixed part holds copies of the message's text fields and, in the mailgun multipart
 * form, the decoded bytes of every attachment (Mailgun uploads them all; the inline budget only
 * applies to JSON); body-mime is never copied.  With opts->shared (message_post_shared) the big
 * values are made once per message and referenced by every post of it: in JSON the body strings,
 * message-headers and inlined attachments' base64 (jsonw.c records where they go: splices), in
 * the multipart form the body fields, message-headers and the attachment files (borrowed fields,
 * referenced by segments like body-mime); values under POST_SEGMENT_COPY_MAX bytes are still
 * copied.
 * An urlencoded form (at most 100 KiB) is always the post's own.  `m` is not referenced after
 * message_post_new. */
#include <string.h>

#include "message/internal.h"
#include "util/id.h"
#include "util/limits.h"

#define BOUNDARY_RANDOM_BYTES 16
#define BOUNDARY_LEN (5 + 2 * BOUNDARY_RANDOM_BYTES)

struct field {
    char *name;          /* UTF-8; owned */
    const uint8_t *data; /* the value: `own`, or the caller's raw bytes */
    size_t len;
    uint8_t *own;        /* g_free()/free() */
    char *filename;      /* NULL for a plain field; owned */
    char *ctype;         /* file parts: "type/subtype"; owned */
};

enum encoding { ENC_JSON, ENC_URLENCODED, ENC_MULTIPART };

struct message_post {
    enum encoding enc;
    char boundary[BOUNDARY_LEN + 1];
    char *content_type;
    GArray *fields;   /* struct field (the values that segments may reference) */
    GPtrArray *bufs;  /* owned buffers the segments point into */
    GArray *segs;     /* struct message_post_segment */
    size_t fixed_len;
    size_t ref_len;   /* bytes of segments that are not the post's: raw bytes, shared values */
    struct message_post_shared *shared; /* one reference, or NULL */
};

/* ---- shared values (message.h, internal.h) ---------------------------------------------------- */

struct message_post_shared *message_post_shared_new(const struct message *m)
{
    struct message_post_shared *sh = g_new0(struct message_post_shared, 1);
    g_atomic_int_set(&sh->refs, 1);
    sh->natt = message_attachment_count(m);
    sh->b64 = g_new0(struct msg_shared_value, sh->natt);
    sh->file = g_new0(struct msg_shared_value, sh->natt);
    return sh;
}

static struct message_post_shared *shared_ref(struct message_post_shared *sh)
{
    g_atomic_int_inc(&sh->refs);
    return sh;
}

void message_post_shared_unref(struct message_post_shared *sh)
{
    if (!sh || !g_atomic_int_dec_and_test(&sh->refs)) return;
    for (size_t i = 0; i < MSG_SHARED_SLOTS; i++) g_free(sh->slot[i].data);
    for (size_t i = 0; i < sh->natt; i++) {
        g_free(sh->b64[i].data);
        g_free(sh->file[i].data);
    }
    g_free(sh->b64);
    g_free(sh->file);
    g_free(sh);
}

size_t message_post_shared_bytes(const struct message_post_shared *sh)
{
    return sh ? sh->bytes : 0;
}

void msg_shared_set(struct message_post_shared *sh, struct msg_shared_value *v, uint8_t *data, size_t len)
{
    v->done = true;
    v->refused = data == NULL;
    v->data = data;
    v->len = data ? len : 0;
    sh->bytes += v->len;
}

/* ---- fields ---------------------------------------------------------------------------------- */

static void field_add_owned(GArray *fields, const char *name, uint8_t *own, size_t len)
{
    struct field f = {.name = g_strdup(name), .data = own, .len = len, .own = own};
    g_array_append_val(fields, f);
}

static void field_add_text(GArray *fields, const char *name, const char *value)
{
    if (!value) value = "";
    size_t n = strlen(value);
    field_add_owned(fields, name, (uint8_t *)g_strndup(value, n), n);
}

/* A JSON document as a string field (compact, keys in insertion order); takes the reference. */
static void field_add_json(GArray *fields, const char *name, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    if (!s) s = g_strdup("null"); /* out of memory inside jansson: keep the field */
    field_add_owned(fields, name, (uint8_t *)s, strlen(s));
}

static void fields_free(GArray *fields)
{
    if (!fields) return;
    for (guint i = 0; i < fields->len; i++) {
        struct field *f = &g_array_index(fields, struct field, i);
        g_free(f->name);
        g_free(f->own); /* g_malloc is malloc (GLib >= 2.46): jansson's and our buffers alike */
        g_free(f->filename);
        g_free(f->ctype);
    }
    g_array_unref(fields);
}

/* A header that may be posted as its own form field: not reserved (SPEC §3, message.h), not
 * "id" (inlet's own extension field of that name, which a header must not shadow either), not
 * "_charset_" (HTML forms and Rack read it as the charset of the other fields), a name that is an
 * RFC 5322 field name (printable ASCII without ':') of at most POST_FIELD_NAME_MAX bytes, and
 * without '[' or ']' (PHP and Rack read "recipient[x]" as a nested parameter, which replaces or
 * collides with our "recipient").  Other headers are dropped from the per-header fields, not
 * escaped (an escaped name is not what a receiver would look up), and stay in message-headers. */
static bool header_field_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > POST_FIELD_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 33 || c > 126 || c == ':' || c == '[' || c == ']') return false;
    }
    return !message_reserved_name(name) && g_ascii_strcasecmp(name, "id") != 0 &&
           g_ascii_strcasecmp(name, "_charset_") != 0;
}

/* Every header that may be a field under its own name, first occurrence of a name (ignoring
 * case) only: Mailgun's added headers (msg_mailgun_header) first, then the message's. */
static void add_header_fields(GArray *fields, const struct message *m, const char *sender)
{
    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    const size_t added = MSG_MAILGUN_HEADERS;
    for (size_t i = 0; i < added + message_header_count(m); i++) {
        if (g_hash_table_size(seen) >= POST_HEADER_FIELDS_MAX) break;
        const char *name, *value;
        char *own = NULL;
        if (i < added) value = own = msg_mailgun_header(i, sender, &name);
        else message_header(m, i - added, &name, &value);
        char *key = header_field_ok(name) ? g_ascii_strdown(name, -1) : NULL;
        if (key && !g_hash_table_contains(seen, key)) {
            g_hash_table_add(seen, key);
            field_add_text(fields, name, value);
        } else {
            g_free(key);
        }
        g_free(own);
    }
    g_hash_table_unref(seen);
}

/* The Content-Type of a file part: the attachment's type/subtype when it is made of token
 * characters, else application/octet-stream. */
static char *file_content_type(const char *ct)
{
    const char *slash = strchr(ct, '/');
    bool ok = slash && slash != ct && slash[1] && !strchr(slash + 1, '/') && strlen(ct) <= 127;
    for (const char *p = ct; ok && *p; p++)
        ok = p == slash || g_ascii_isalnum(*p) || strchr("!#$&^_.+-", *p) != NULL;
    return g_strdup(ok ? ct : "application/octet-stream");
}

/* At most max bytes of s, not cutting a UTF-8 sequence (s is valid UTF-8). */
static char *utf8_cut(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max) return g_strdup(s);
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return g_strndup(s, max);
}

/* The notify list: [{size, url, name, content-type}] (SPEC §6). */
static json_t *notify_attachments(const struct message *m, const char *message_url)
{
    json_t *a = json_array();
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        char *url = msg_attachment_url(message_url, i);
        json_array_append_new(a, msg_attachment_ref_json(at, url));
        g_free(url);
    }
    return a;
}

/* content-id-map of the form: "<cid>" → "attachment-N" (1-based), or → the attachment's URL in
 * notify mode; the first attachment wins for a repeated id, as in json.c. */
static json_t *form_cid_map(const struct message *m, const char *message_url)
{
    json_t *map = json_object();
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        if (!*at->content_id || json_object_get(map, at->content_id)) continue;
        char *v = message_url ? msg_attachment_url(message_url, i)
                              : g_strdup_printf("attachment-%zu", i + 1);
        json_object_set_new(map, at->content_id, msg_jstr(v));
        g_free(v);
    }
    return map;
}

static GArray *fields_new(void)
{
    return g_array_new(FALSE, FALSE, sizeof(struct field));
}

/* A field whose value is the shared `v`: borrowed (the post references it), or copied when short. */
static void field_add_borrowed(GArray *fields, const char *name, const struct msg_shared_value *v)
{
    if (v->len < POST_SEGMENT_COPY_MAX) {
        field_add_owned(fields, name, (uint8_t *)g_strndup(v->data ? (const char *)v->data : "", v->len), v->len);
        return;
    }
    struct field f = {.name = g_strdup(name), .data = v->data, .len = v->len};
    g_array_append_val(fields, f);
}

/* A text field that may be long: from `sh` (made there on first use) when there is one. */
static void field_add_big(GArray *fields, struct message_post_shared *sh, enum msg_shared_slot slot,
                          const char *name, const char *value)
{
    if (!sh) {
        field_add_text(fields, name, value);
        return;
    }
    struct msg_shared_value *v = &sh->slot[slot];
    if (!v->done) {
        if (!value) value = "";
        size_t n = strlen(value);
        msg_shared_set(sh, v, (uint8_t *)g_strndup(value, n), n);
    }
    field_add_borrowed(fields, name, v);
}

/* message-headers (with the envelope sender's X-Envelope-From: the same for every post of the
 * message). */
static void field_add_headers(GArray *fields, struct message_post_shared *sh, const struct message *m,
                              const char *sender)
{
    if (!sh) {
        field_add_json(fields, "message-headers", msg_headers_json(m, sender));
        return;
    }
    struct msg_shared_value *v = &sh->slot[MSG_SHARED_FORM_HEADERS];
    if (!v->done) {
        json_t *j = msg_headers_json(m, sender);
        char *js = j ? json_dumps(j, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        json_decref(j);
        if (!js) js = g_strdup("null"); /* as field_add_json */
        msg_shared_set(sh, v, (uint8_t *)js, strlen(js));
    }
    field_add_borrowed(fields, "message-headers", v);
}

/* Attachment i's decoded bytes as a file part's value: shared (decoded once per message) or the
 * post's own; empty when they cannot be had. */
static void file_value(struct field *fl, struct message_post_shared *sh, const struct message *m, size_t i)
{
    struct msg_shared_value *v = sh && i < sh->natt ? &sh->file[i] : NULL;
    if (v && v->done) {
        fl->data = v->data;
        fl->len = v->len;
        return;
    }
    uint8_t *bytes = NULL;
    size_t len = 0;
    if (message_attachment_bytes(m, i, &bytes, &len) != 0) {
        bytes = NULL;
        len = 0;
    }
    if (!v) {
        fl->data = fl->own = bytes;
        fl->len = len;
        return;
    }
    msg_shared_set(sh, v, bytes, len);
    fl->data = v->data;
    fl->len = v->len;
}

static GArray *mailgun_fields(const struct message *m, const struct message_post_options *opts)
{
    const struct message_json_options *o = &opts->json;
    const char *murl = opts->message_url;
    struct message_post_shared *sh = opts->shared;
    GArray *f = fields_new();
    char *domain = msg_domain_of(o->recipient);
    field_add_text(f, "recipient", o->recipient);
    field_add_text(f, "sender", o->sender);
    field_add_text(f, "from", message_from(m));
    field_add_text(f, "subject", message_subject(m));
    field_add_text(f, "message-id", message_message_id(m));
    field_add_text(f, "domain", domain);
    field_add_big(f, sh, MSG_SHARED_FORM_BODY_PLAIN, "body-plain", message_body_plain(m));
    field_add_big(f, sh, MSG_SHARED_FORM_BODY_HTML, "body-html", message_body_html(m));
    field_add_big(f, sh, MSG_SHARED_FORM_STRIPPED_TEXT, "stripped-text", message_stripped_text(m));
    field_add_big(f, sh, MSG_SHARED_FORM_STRIPPED_SIGNATURE, "stripped-signature", message_stripped_signature(m));
    field_add_big(f, sh, MSG_SHARED_FORM_STRIPPED_HTML, "stripped-html", message_stripped_html(m));
    field_add_headers(f, sh, m, o->sender);
    field_add_json(f, "content-id-map", form_cid_map(m, murl));
    json_t *w = json_array();
    for (size_t i = 0; i < message_warning_count(m); i++)
        json_array_append_new(w, msg_jstr(message_warning(m, i)));
    field_add_json(f, "parse-warnings", w);
    field_add_text(f, "id", o->id);
    if (murl) {
        field_add_text(f, "message-url", murl);
        field_add_json(f, "attachments", notify_attachments(m, murl));
    }
    add_header_fields(f, m, o->sender);
    size_t n = message_attachment_count(m);
    if (!murl && n > 0) {
        char count[24];
        g_snprintf(count, sizeof count, "%zu", n);
        field_add_text(f, "attachment-count", count);
        for (size_t i = 0; i < n; i++) {
            const struct message_attachment *at = message_attachment(m, i);
            char *name = g_strdup_printf("attachment-%zu", i + 1);
            /* An empty filename reads as "no file selected" (Rack drops the part): name it. */
            struct field fl = {.name = name,
                               .filename = *at->name ? utf8_cut(at->name, POST_FILENAME_MAX)
                                                     : g_strdup(name),
                               .ctype = file_content_type(at->content_type)};
            file_value(&fl, sh, m, i);
            g_array_append_val(f, fl);
        }
    }
    g_free(domain);
    return f;
}

static GArray *mime_fields(const struct message *m, const uint8_t *raw, size_t raw_len,
                           const struct message_post_options *opts)
{
    const struct message_json_options *o = &opts->json;
    GArray *f = fields_new();
    field_add_text(f, "recipient", o->recipient);
    field_add_text(f, "sender", o->sender);
    field_add_text(f, "from", message_from(m));
    field_add_text(f, "subject", message_subject(m));
    if (opts->message_url) {
        char *domain = msg_domain_of(o->recipient);
        field_add_text(f, "domain", domain);
        g_free(domain);
        field_add_text(f, "message-url", opts->message_url);
        field_add_json(f, "attachments", notify_attachments(m, opts->message_url));
    }
    struct field body = {.name = g_strdup("body-mime"), .data = raw ? raw : (const uint8_t *)"",
                         .len = raw ? raw_len : 0};
    g_array_append_val(f, body);
    return f;
}

/* ---- segments -------------------------------------------------------------------------------- */

struct builder {
    struct message_post *p;
    GString *acc; /* bytes not yet in a segment */
};

static void seg_push(struct message_post *p, const uint8_t *data, size_t len)
{
    if (len == 0) return;
    struct message_post_segment s = {.data = data, .len = len};
    g_array_append_val(p->segs, s);
    p->fixed_len += len;
}

static void flush(struct builder *b)
{
    if (b->acc->len == 0) return;
    size_t len = b->acc->len;
    char *buf = g_string_free(b->acc, FALSE);
    g_ptr_array_add(b->p->bufs, buf);
    seg_push(b->p, (const uint8_t *)buf, len);
    b->acc = g_string_new(NULL);
}

static void put_bytes(struct builder *b, const uint8_t *data, size_t len)
{
    if (len >= POST_SEGMENT_COPY_MAX) {
        flush(b);
        seg_push(b->p, data, len);
    } else {
        g_string_append_len(b->acc, (const char *)data, (gssize)len);
    }
}

/* A name or filename in a part header, HTML form encoding: " CR LF as %22 %0D %0A. */
static void put_quoted(GString *s, const char *v)
{
    g_string_append_c(s, '"');
    for (; *v; v++) {
        if (*v == '"') g_string_append(s, "%22");
        else if (*v == '\r') g_string_append(s, "%0D");
        else if (*v == '\n') g_string_append(s, "%0A");
        else g_string_append_c(s, *v);
    }
    g_string_append_c(s, '"');
}

static void serialize_multipart(struct builder *b)
{
    struct message_post *p = b->p;
    for (guint i = 0; i < p->fields->len; i++) {
        const struct field *f = &g_array_index(p->fields, struct field, i);
        g_string_append_printf(b->acc, "--%s\r\nContent-Disposition: form-data; name=",
                               p->boundary);
        put_quoted(b->acc, f->name);
        if (f->filename) {
            g_string_append(b->acc, "; filename=");
            put_quoted(b->acc, f->filename);
            g_string_append_printf(b->acc, "\r\nContent-Type: %s", f->ctype);
        }
        g_string_append(b->acc, "\r\n\r\n");
        if (!f->own && f->len > 0) { /* the raw bytes (body-mime), a shared value: never copied */
            flush(b);
            seg_push(p, f->data, f->len);
            p->ref_len += f->len;
        } else {
            put_bytes(b, f->data, f->len);
        }
        g_string_append(b->acc, "\r\n");
    }
}

/* application/x-www-form-urlencoded (WHATWG URL §5.2): ASCII alphanumerics and *-._ as they are,
 * space as '+', every other byte %XX. */
static void put_urlencoded(GString *s, const uint8_t *d, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = d[i];
        if (g_ascii_isalnum(c) || c == '*' || c == '-' || c == '.' || c == '_') {
            g_string_append_c(s, (char)c);
        } else if (c == ' ') {
            g_string_append_c(s, '+');
        } else {
            g_string_append_c(s, '%');
            g_string_append_c(s, hex[c >> 4]);
            g_string_append_c(s, hex[c & 15]);
        }
    }
}

/* The urlencoded body, or NULL when there is a file part or it would pass the limit. */
static GString *urlencoded(const GArray *fields)
{
    GString *s = g_string_new(NULL);
    for (guint i = 0; i < fields->len; i++) {
        const struct field *f = &g_array_index(fields, struct field, i);
        if (f->filename || s->len + f->len > POST_URLENCODED_MAX) {
            g_string_free(s, TRUE);
            return NULL;
        }
        if (i > 0) g_string_append_c(s, '&');
        put_urlencoded(s, (const uint8_t *)f->name, strlen(f->name));
        g_string_append_c(s, '=');
        put_urlencoded(s, f->data, f->len);
        if (s->len + MESSAGE_POST_TAIL_MAX > POST_URLENCODED_MAX) {
            g_string_free(s, TRUE);
            return NULL;
        }
    }
    return s;
}

static bool contains(const void *d, size_t n, const char *b)
{
    return d && memmem(d, n, b, BOUNDARY_LEN) != NULL;
}

/* Whether the boundary occurs in anything that is not our own delimiter text. */
static bool boundary_in_fields(const struct message_post *p)
{
    for (guint i = 0; i < p->fields->len; i++) {
        const struct field *f = &g_array_index(p->fields, struct field, i);
        if (contains(f->data, f->len, p->boundary) ||
            contains(f->name, strlen(f->name), p->boundary) ||
            (f->filename && contains(f->filename, strlen(f->filename), p->boundary)) ||
            (f->ctype && contains(f->ctype, strlen(f->ctype), p->boundary)))
            return true;
    }
    return false;
}

static void build_multipart(struct message_post *p)
{
    do { /* a second round needs the boundary in the body: 2^-128 for any input */
        unsigned char rnd[BOUNDARY_RANDOM_BYTES];
        util_random_bytes_pooled(rnd, sizeof rnd);
        memcpy(p->boundary, "inlet", 5);
        util_hex_encode(p->boundary + 5, rnd, sizeof rnd);
    } while (boundary_in_fields(p));
    struct builder b = {.p = p, .acc = g_string_new(NULL)};
    serialize_multipart(&b);
    flush(&b);
    g_string_free(b.acc, TRUE);
    p->content_type = g_strdup_printf("multipart/form-data; boundary=%s", p->boundary);
}

/* ---- JSON ------------------------------------------------------------------------------------ */

static struct message_post *post_alloc(enum encoding enc);

/* The fixed part: msg_json_write()'s document (jsonw.c, the bytes of message_to_json() dumped
 * compact in order, or its notify variant) without the final "}": the post's own text, with the
 * shared values (opts->shared) spliced in as segments. */
static struct message_post *json_post(const struct message *m, const struct message_post_options *opts)
{
    GString *s = g_string_new(NULL); /* msg_json_write sizes it */
    GArray *splices = g_array_new(FALSE, FALSE, sizeof(struct msg_json_splice));
    if (opts->shared)
        msg_json_write_shared(s, m, &opts->json, opts->message_url, opts->shared, splices);
    else
        msg_json_write(s, m, &opts->json, opts->message_url);
    if (s->len == 0 || s->str[s->len - 1] != '}') { /* cannot happen */
        g_string_free(s, TRUE);
        g_array_unref(splices);
        return NULL;
    }
    const size_t len = s->len - 1;
    /* The estimate sized the buffer for the document; keep only the text. */
    char *buf = g_realloc(g_string_free(s, FALSE), len + 1);
    struct message_post *p = post_alloc(ENC_JSON);
    p->content_type = g_strdup("application/json");
    g_ptr_array_add(p->bufs, buf);
    size_t at = 0;
    for (guint i = 0; i < splices->len; i++) {
        const struct msg_json_splice *sp = &g_array_index(splices, struct msg_json_splice, i);
        seg_push(p, (const uint8_t *)buf + at, sp->at - at);
        seg_push(p, sp->data, sp->len);
        p->ref_len += sp->len;
        at = sp->at;
    }
    seg_push(p, (const uint8_t *)buf + at, len - at);
    g_array_unref(splices);
    if (opts->shared) p->shared = shared_ref(opts->shared);
    return p;
}

/* ---- public ---------------------------------------------------------------------------------- */

static struct message_post *post_alloc(enum encoding enc)
{
    struct message_post *p = g_new0(struct message_post, 1);
    p->enc = enc;
    p->bufs = g_ptr_array_new_with_free_func(g_free);
    p->segs = g_array_new(FALSE, FALSE, sizeof(struct message_post_segment));
    return p;
}

struct message_post *message_post_new(const struct message *m, const uint8_t *raw, size_t raw_len,
                                      enum message_post_format format,
                                      const struct message_post_options *opts)
{
    if (format == MESSAGE_POST_JSON) return json_post(m, opts);
    GArray *fields = format == MESSAGE_POST_MIME ? mime_fields(m, raw, raw_len, opts)
                                                 : mailgun_fields(m, opts);
    GString *u = format == MESSAGE_POST_MAILGUN ? urlencoded(fields) : NULL;
    if (u) { /* every value encoded into the post's own buffer: nothing borrowed stays */
        struct message_post *p = post_alloc(ENC_URLENCODED);
        p->content_type = g_strdup("application/x-www-form-urlencoded");
        fields_free(fields);
        size_t len = u->len;
        char *buf = g_string_free(u, FALSE);
        g_ptr_array_add(p->bufs, buf);
        seg_push(p, (const uint8_t *)buf, len);
        return p;
    }
    struct message_post *p = post_alloc(ENC_MULTIPART);
    p->fields = fields;
    build_multipart(p);
    if (opts->shared) p->shared = shared_ref(opts->shared); /* fields may borrow from it */
    return p;
}

void message_post_free(struct message_post *p)
{
    if (!p) return;
    g_ptr_array_unref(p->bufs);
    g_array_unref(p->segs);
    fields_free(p->fields);
    g_free(p->content_type);
    message_post_shared_unref(p->shared);
    g_free(p);
}

const char *message_post_content_type(const struct message_post *p)
{
    return p->content_type;
}

size_t message_post_segment_count(const struct message_post *p)
{
    return p->segs->len;
}

struct message_post_segment message_post_segment(const struct message_post *p, size_t i)
{
    if (i >= p->segs->len) return (struct message_post_segment){.data = NULL, .len = 0};
    return g_array_index(p->segs, struct message_post_segment, i);
}

size_t message_post_fixed_len(const struct message_post *p)
{
    return p->fixed_len;
}

size_t message_post_own_len(const struct message_post *p)
{
    return p->fixed_len - p->ref_len;
}

static size_t slen(const char *s)
{
    return s ? strlen(s) : 0;
}

/* The Mailgun form: every field's value plus its framing, shared values counted only when `sh`
 * does not hold them yet; an urlencoded body may triple its text (at most POST_URLENCODED_MAX). */
static size_t form_estimate(const struct message *m, const struct message_post_options *opts)
{
    const struct message_post_shared *sh = opts->shared;
    const struct message_json_options *o = &opts->json;
    size_t n = 4096 + 2 * slen(opts->message_url) + slen(o->recipient) + slen(o->sender) + slen(o->id) +
               slen(message_from(m)) + slen(message_subject(m)) + slen(message_message_id(m));
    const char *const big[] = {message_body_plain(m), message_body_html(m), message_stripped_text(m),
                               message_stripped_signature(m), message_stripped_html(m)};
    for (size_t i = 0; i < G_N_ELEMENTS(big); i++)
        n += sh && sh->slot[MSG_SHARED_FORM_BODY_PLAIN + i].done ? 0 : slen(big[i]);
    for (size_t i = 0; i < message_header_count(m); i++) {
        const char *name, *value;
        message_header(m, i, &name, &value);
        /* its own field, and its entry in message-headers */
        n += (slen(name) + slen(value) + 96) * (sh && sh->slot[MSG_SHARED_FORM_HEADERS].done ? 1 : 2);
    }
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        n += 512 + 2 * (slen(at->name) + slen(at->content_type)) + slen(opts->message_url);
        if (!opts->message_url && !(sh && i < sh->natt && sh->file[i].done)) n += at->size;
    }
    return n + (n < POST_URLENCODED_MAX ? 2 * n : 0);
}

size_t message_post_estimate(const struct message *m, enum message_post_format format,
                             const struct message_post_options *opts)
{
    switch (format) {
    case MESSAGE_POST_JSON: return msg_json_estimate(m, &opts->json, opts->message_url, opts->shared);
    case MESSAGE_POST_MAILGUN: return form_estimate(m, opts);
    case MESSAGE_POST_MIME: break;
    }
    /* body-mime is referenced; the rest is a few short fields (and the notify list). */
    return 2048 + slen(opts->json.recipient) + slen(opts->json.sender) + slen(message_from(m)) +
           slen(message_subject(m)) + 2 * slen(opts->message_url) +
           (opts->message_url ? message_attachment_count(m) * (512 + slen(opts->message_url)) : 0);
}

/* The tail's values: [A-Za-z0-9._-] only, at most max bytes (see the top of the file). */
static void tail_value(char *out, const char *v, size_t max)
{
    size_t n = 0;
    for (; v && *v && n < max; v++)
        if (g_ascii_isalnum(*v) || *v == '.' || *v == '_' || *v == '-') out[n++] = *v;
    out[n] = '\0';
}

size_t message_post_tail(const struct message_post *p, const char *timestamp, const char *token,
                         const char *signature, char out[MESSAGE_POST_TAIL_MAX])
{
    char ts[POST_TAIL_TIMESTAMP_MAX + 1], tok[POST_TAIL_TOKEN_MAX + 1], sig[POST_TAIL_SIGNATURE_MAX + 1];
    tail_value(ts, timestamp, POST_TAIL_TIMESTAMP_MAX);
    tail_value(tok, token, POST_TAIL_TOKEN_MAX);
    tail_value(sig, signature, POST_TAIL_SIGNATURE_MAX);
    int n;
    switch (p->enc) {
    case ENC_JSON:
        n = snprintf(out, MESSAGE_POST_TAIL_MAX,
                     ",\"timestamp\":\"%s\",\"token\":\"%s\",\"signature\":\"%s\"}", ts, tok, sig);
        break;
    case ENC_URLENCODED:
        n = snprintf(out, MESSAGE_POST_TAIL_MAX, "&timestamp=%s&token=%s&signature=%s", ts, tok,
                     sig);
        break;
    default: {
        const char *b = p->boundary;
        n = snprintf(out, MESSAGE_POST_TAIL_MAX,
                     "--%s\r\nContent-Disposition: form-data; name=\"timestamp\"\r\n\r\n%s\r\n"
                     "--%s\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n%s\r\n"
                     "--%s\r\nContent-Disposition: form-data; name=\"signature\"\r\n\r\n%s\r\n"
                     "--%s--\r\n",
                     b, ts, b, tok, b, sig, b);
        break;
    }
    }
    /* Cannot happen with the caps above (static bound 472 bytes); never report more than out. */
    if (n < 0) return 0;
    return (size_t)n < MESSAGE_POST_TAIL_MAX ? (size_t)n : MESSAGE_POST_TAIL_MAX - 1;
}
