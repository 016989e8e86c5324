/* message/message.c — see message.h: library lifetime, accessors, the reserved-name rule. */
#include "message/message.h"

#include <stdio.h>
#include <string.h>

#include "message/internal.h"

void message_lib_init(void)
{
    g_mime_init();
}

void message_lib_shutdown(void)
{
    g_mime_shutdown();
}

void message_lib_version(char *out, size_t outsz)
{
    snprintf(out, outsz, "GMime %u.%u.%u", gmime_major_version, gmime_minor_version,
             gmime_micro_version);
}

const char *message_from(const struct message *m) { return m->from; }
const char *message_subject(const struct message *m) { return m->subject; }
const char *message_message_id(const struct message *m) { return m->message_id; }
const char *message_body_plain(const struct message *m) { return m->body_plain; }
const char *message_body_html(const struct message *m) { return m->body_html; }
const char *message_stripped_text(const struct message *m) { return m->stripped_text; }
const char *message_stripped_signature(const struct message *m) { return m->stripped_signature; }
const char *message_stripped_html(const struct message *m) { return m->stripped_html; }
const char *message_authentication_json(const struct message *m) { return m->authentication_text; }

size_t message_header_count(const struct message *m)
{
    return m->headers->len;
}

void message_header(const struct message *m, size_t i, const char **name, const char **value)
{
    const struct message_header_rec *r = &g_array_index(m->headers, struct message_header_rec, i);
    *name = r->name;
    *value = r->value;
}

const char *message_header_first(const struct message *m, const char *name)
{
    for (guint i = 0; i < m->headers->len; i++) {
        const struct message_header_rec *r =
            &g_array_index(m->headers, struct message_header_rec, i);
        if (g_ascii_strcasecmp(r->name, name) == 0) return r->value;
    }
    return NULL;
}

size_t message_attachment_count(const struct message *m)
{
    return m->attachments->len;
}

const struct message_attachment *message_attachment(const struct message *m, size_t i)
{
    return &g_array_index(m->attachments, struct message_attachment_rec, i).pub;
}

int message_attachment_bytes(const struct message *m, size_t i, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (i >= m->attachments->len) return -1;
    GByteArray *ba =
        msg_part_bytes(m, g_array_index(m->attachments, struct message_attachment_rec, i).part);
    *len = ba->len;
    /* GLib >= 2.46: g_malloc is malloc, so the caller may free() this. */
    *out = g_byte_array_free(ba, FALSE);
    if (!*out) *out = g_malloc(1);
    return 0;
}

size_t message_warning_count(const struct message *m)
{
    return m->warnings->len;
}

const char *message_warning(const struct message *m, size_t i)
{
    return g_ptr_array_index(m->warnings, i);
}

/* SPEC §3: the fields inlet vouches for, compared ignoring case: the envelope, the signature,
 * the parsed bodies and attachments, message-headers, content-id-map and inlet's own fields. */
static const char *const reserved_names[] = {
    "recipient",  "sender",         "timestamp",      "token",      "signature",
    "message-headers", "content-id-map", "attachments", "domain",   "recipients",
    "message-url", "parse-warnings", "authentication",
};
/* Prefixes of such fields (body-plain, body-html, body-<subtype>, body-mime; stripped-*;
 * attachment-count, attachment-N). */
static const char *const reserved_prefixes[] = {"body-", "stripped-", "attachment-"};
/* The parsed header fields: a header of the same name in another case ("From", "Subject",
 * "Message-Id") is posted beside them as Mailgun does; spelled exactly so it would be a second
 * field of the same name. */
static const char *const parsed_names[] = {"from", "subject", "message-id"};

bool message_reserved_name(const char *name)
{
    if (!name) return false;
    for (size_t i = 0; i < G_N_ELEMENTS(reserved_names); i++)
        if (g_ascii_strcasecmp(name, reserved_names[i]) == 0) return true;
    for (size_t i = 0; i < G_N_ELEMENTS(reserved_prefixes); i++)
        if (g_ascii_strncasecmp(name, reserved_prefixes[i], strlen(reserved_prefixes[i])) == 0)
            return true;
    for (size_t i = 0; i < G_N_ELEMENTS(parsed_names); i++)
        if (strcmp(name, parsed_names[i]) == 0) return true;
    return false;
}
