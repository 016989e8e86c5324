/* tests/message/jsonw_ref.h — the reference bytes that message/jsonw.c (msg_json_write) must
 * reproduce, made the slow way with jansson, and a comparison that names the first difference.
 * Shared by tests/message/test_jsonw.c and tests/fuzz/fuzz_message.c (included as
 * "message/jsonw_ref.h" through the tests/ include directory).
 *
 *   jsonw_ref(m, opts, NULL)  json_dumps(message_to_json(m, opts), JSON_COMPACT | JSON_PRESERVE_ORDER)
 *   jsonw_ref(m, opts, url)   the notify document that message/post.c built from that tree before
 *                             jsonw.c: attachments replaced by [{size, url, name, content-type}],
 *                             "url" set in every content-id-map entry, "message-url" set last.
 * Both malloc'd (free()), NULL when jansson fails. */
#ifndef INLET_TESTS_MESSAGE_JSONW_REF_H
#define INLET_TESTS_MESSAGE_JSONW_REF_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "message/internal.h"
#include "message/message.h"

static inline char *jsonw_ref(const struct message *m, const struct message_json_options *opts,
                              const char *message_url)
{
    struct message_json_options jo = *opts;
    if (message_url) {
        jo.inline_attachments_max = 0;
        jo.attachments_url = NULL;
    }
    json_t *j = message_to_json(m, &jo);
    if (!j) return NULL;
    if (message_url) {
        json_t *a = json_array();
        for (size_t i = 0; i < message_attachment_count(m); i++) {
            const struct message_attachment *at = message_attachment(m, i);
            char *url = msg_attachment_url(message_url, i);
            json_t *o = json_object();
            json_object_set_new(o, "size", json_integer((json_int_t)at->size));
            json_object_set_new(o, "url", msg_jstr(url));
            json_object_set_new(o, "name", msg_jstr(at->name));
            json_object_set_new(o, "content-type", msg_jstr(at->content_type));
            json_array_append_new(a, o);
            g_free(url);
        }
        json_object_set_new(j, "attachments", a);
        json_t *map = json_object_get(j, "content-id-map");
        const char *cid;
        json_t *v;
        json_object_foreach(map, cid, v) {
            json_int_t idx = json_integer_value(json_object_get(v, "index"));
            char *url = msg_attachment_url(message_url, (size_t)idx);
            json_object_set_new(v, "url", msg_jstr(url));
            g_free(url);
        }
        json_object_set_new(j, "message-url", msg_jstr(message_url));
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

/* msg_json_write's bytes, g_free(); *len gets their length. */
static inline char *jsonw_new(const struct message *m, const struct message_json_options *opts,
                              const char *message_url, size_t *len)
{
    GString *s = g_string_new(NULL);
    msg_json_write(s, m, opts, message_url);
    *len = s->len;
    return g_string_free(s, FALSE);
}

/* NULL when `got` (got_len bytes) is exactly `want`; else a g_malloc'd description of the first
 * difference with some context on both sides. */
static inline char *jsonw_diff(const char *got, size_t got_len, const char *want)
{
    if (!want) return g_strdup("the reference (jansson) is NULL");
    size_t want_len = strlen(want);
    if (got_len == want_len && memcmp(got, want, got_len) == 0) return NULL;
    size_t i = 0;
    while (i < got_len && i < want_len && got[i] == want[i]) i++;
    size_t from = i > 40 ? i - 40 : 0;
    int gl = (int)(MIN(got_len, i + 40) - from), wl = (int)(MIN(want_len, i + 40) - from);
    char *g = g_strndup(got + from, (gsize)gl), *w = g_strndup(want + from, (gsize)wl);
    char *ge = g_strescape(g, NULL), *we = g_strescape(w, NULL);
    char *d = g_strdup_printf("differs at byte %zu (lengths %zu, want %zu): got \"%s\" want \"%s\"",
                              i, got_len, want_len, ge, we);
    g_free(g);
    g_free(w);
    g_free(ge);
    g_free(we);
    return d;
}

#endif
