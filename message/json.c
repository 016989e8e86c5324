/* message/json.c — message_to_json(): the webhook JSON of SPEC §5 without timestamp, token and
 * signature.  Keys are set in the order of SPEC §5; jansson keeps insertion order, and callers
 * dump with JSON_PRESERVE_ORDER so the bytes stay the same on every jansson version. */
#include <limits.h>
#include <string.h>

#include "message/internal.h"

json_t *msg_jstr(const char *s)
{
    if (!s) s = "";
    json_t *j = json_string(s);
    if (j) return j;
    char *valid = msg_text_sanitize(s, strlen(s), NULL);
    j = json_string(valid);
    g_free(valid);
    return j;
}

char *msg_domain_of(const char *recipient)
{
    const char *at = recipient ? strrchr(recipient, '@') : NULL;
    return g_ascii_strdown(at ? at + 1 : "", -1);
}

char *msg_mailgun_header(size_t i, const char *sender, const char **name)
{
    if (i == 0) {
        *name = "X-Mailgun-Incoming";
        return g_strdup("Yes");
    }
    *name = "X-Envelope-From";
    return g_strdup_printf("<%s>", sender ? sender : "");
}

json_t *msg_headers_json(const struct message *m, const char *sender)
{
    json_t *a = json_array();
    for (size_t i = 0; sender && i < MSG_MAILGUN_HEADERS; i++) {
        const char *name;
        char *value = msg_mailgun_header(i, sender, &name);
        json_array_append_new(a, json_pack("[so]", name, msg_jstr(value)));
        g_free(value);
    }
    for (size_t i = 0; i < message_header_count(m); i++) {
        const char *name, *value;
        message_header(m, i, &name, &value);
        json_array_append_new(a, json_pack("[ss]", name, value));
    }
    return a;
}

/* attachments, with content inlined while the running total stays within `budget`; past it
 * "content": null, or "url": "<url>/attachments/<i>" (and no "content") when `url` is set. */
static json_t *attachments_json(const struct message *m, size_t budget, const char *url)
{
    json_t *a = json_array();
    size_t used = 0;
    bool inlining = true;
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        json_t *o = json_object();
        json_object_set_new(o, "name", msg_jstr(at->name));
        json_object_set_new(o, "content-type", msg_jstr(at->content_type));
        json_object_set_new(o, "size", json_integer((json_int_t)at->size));
        json_object_set_new(o, "content-id", msg_jstr(at->content_id));
        inlining = inlining && at->size <= budget - used;
        uint8_t *bytes = NULL;
        size_t len = 0;
        if (inlining && message_attachment_bytes(m, i, &bytes, &len) == 0) {
            used += at->size;
            gchar *b64 = g_base64_encode(bytes, len);
            json_object_set_new(o, "content", json_string(b64));
            g_free(b64);
        } else if (url) {
            char *u = msg_attachment_url(url, i);
            json_object_set_new(o, "url", msg_jstr(u));
            g_free(u);
        } else {
            json_object_set_new(o, "content", json_null());
        }
        g_free(bytes);
        json_array_append_new(a, o);
    }
    return a;
}

/* Every attachment with a Content-ID, whatever its disposition (Outlook marks images that the
 * HTML references by cid: as attachments); the first one wins for a repeated id. */
static json_t *cid_map_json(const struct message *m)
{
    json_t *map = json_object();
    for (size_t i = 0; i < message_attachment_count(m); i++) {
        const struct message_attachment *at = message_attachment(m, i);
        if (!*at->content_id || json_object_get(map, at->content_id)) continue;
        json_t *o = json_object();
        json_object_set_new(o, "name", msg_jstr(at->name));
        json_object_set_new(o, "content-type", msg_jstr(at->content_type));
        json_object_set_new(o, "size", json_integer((json_int_t)at->size));
        json_object_set_new(o, "index", json_integer((json_int_t)i));
        json_object_set_new(map, at->content_id, o);
    }
    return map;
}

char *msg_attachment_url(const char *base, size_t i)
{
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/') n--;
    return g_strdup_printf("%.*s/attachments/%zu", (int)MIN(n, (size_t)INT_MAX), base, i);
}

json_t *msg_attachment_ref_json(const struct message_attachment *at, const char *url)
{
    json_t *o = json_object();
    json_object_set_new(o, "size", json_integer((json_int_t)at->size));
    json_object_set_new(o, "url", msg_jstr(url));
    json_object_set_new(o, "name", msg_jstr(at->name));
    json_object_set_new(o, "content-type", msg_jstr(at->content_type));
    return o;
}

json_t *message_to_json(const struct message *m, const struct message_json_options *opts)
{
    json_t *o = json_object();
    char *domain = msg_domain_of(opts->recipient);
    json_object_set_new(o, "recipient", msg_jstr(opts->recipient));
    json_object_set_new(o, "sender", msg_jstr(opts->sender));
    json_object_set_new(o, "from", msg_jstr(m->from));
    json_object_set_new(o, "subject", msg_jstr(m->subject));
    json_object_set_new(o, "message-id", msg_jstr(m->message_id));
    json_object_set_new(o, "domain", msg_jstr(domain));
    json_object_set_new(o, "body-plain", msg_jstr(m->body_plain));
    json_object_set_new(o, "body-html", msg_jstr(m->body_html));
    json_object_set_new(o, "stripped-text", msg_jstr(m->stripped_text));
    json_object_set_new(o, "stripped-signature", msg_jstr(m->stripped_signature));
    json_object_set_new(o, "stripped-html", msg_jstr(m->stripped_html));
    json_object_set_new(o, "message-headers", msg_headers_json(m, NULL));
    json_object_set_new(o, "attachments", attachments_json(m, opts->inline_attachments_max,
                                                               opts->attachments_url));
    json_object_set_new(o, "content-id-map", cid_map_json(m));
    json_t *w = json_array();
    for (size_t i = 0; i < message_warning_count(m); i++)
        json_array_append_new(w, msg_jstr(message_warning(m, i)));
    json_object_set_new(o, "parse-warnings", w);
    json_object_set_new(o, "id", msg_jstr(opts->id));
    json_t *authentication = msg_authres_tree(m);
    if (authentication) json_object_set_new(o, "authentication", authentication);
    g_free(domain);
    return o;
}
