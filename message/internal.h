/* message/internal.h — what the files of message/ share; never included outside message/. */
#ifndef INLET_MESSAGE_INTERNAL_H
#define INLET_MESSAGE_INTERNAL_H

#include <gmime/gmime.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message/message.h"

struct message_header_rec {
    char *name;  /* as in the message (case kept), UTF-8 */
    char *value; /* unfolded, RFC 2047-decoded, UTF-8 */
};

struct message_attachment_rec {
    struct message_attachment pub; /* strings point into the fields below */
    char *name, *content_type, *content_id, *disposition;
    GMimeObject *part; /* a GMimePart or a GMimeMessagePart (one reference held) */
};

struct message {
    GMimeMessage *gm;              /* NULL when GMime found no message at all */
    GMimeStream *stream;           /* what GMime parsed: over the caller's bytes, never a copy */
    GByteArray *wrap;              /* wraps the caller's bytes for the stream; data not owned */
    GMimeParserOptions *options;   /* of this parse; kept while GMime objects live */
    bool crlf;                     /* the input's first line ends with CR LF */
    char *from, *subject, *message_id;
    char *body_plain, *body_html;
    char *stripped_text, *stripped_signature, *stripped_html;
    GArray *headers;        /* struct message_header_rec */
    GArray *attachments;    /* struct message_attachment_rec */
    GPtrArray *warnings;    /* char *, no duplicates */
    /* inlet's sender-authentication verdicts as compact JSON text (authres.c), NULL when the
     * message has none. */
    char *authentication_text;
};

/* Adds a parse warning unless the same text is already there. */
void message_warn(struct message *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* text.c — everything ends as valid UTF-8 without NUL bytes. */
/* Converts `len` bytes in `charset` (NULL or "" when the part named none) to UTF-8: bytes that do not
 * decode become U+FFFD, NUL becomes U+FFFD.  *unknown is set when iconv does not know the charset
 * (the bytes are then read as windows-1252); *replaced when any U+FFFD was produced.  g_free(). */
char *msg_text_to_utf8(const char *bytes, size_t len, const char *charset, bool *unknown,
                       bool *replaced);
/* Valid UTF-8 copy of `len` bytes: invalid sequences and NUL become U+FFFD.  g_free(). */
char *msg_text_sanitize(const char *bytes, size_t len, bool *replaced);
/* Header bytes without a declared charset (raw 8-bit): msg_text_sanitize() when msg_text_mostly_utf8(),
 * else windows-1252.  msg_text_mostly_utf8: valid UTF-8, or at least one valid multi-byte sequence
 * and fewer invalid bytes than bytes in valid multi-byte sequences.  g_free(). */
char *msg_text_undeclared(const char *bytes, size_t len);
bool msg_text_mostly_utf8(const char *bytes, size_t len);
/* windows-1252 to UTF-8, NUL as U+FFFD.  g_free(). */
char *msg_text_windows1252(const char *bytes, size_t len);

/* prescan.c — the bounded look at the raw bytes before GMime sees them (see prescan.c). */
struct prescan {
    size_t head_start; /* GMime gets [head_start, head_end) ... */
    size_t head_end;
    bool separator;    /* ... then "\n" when the header block had no empty line ... */
    size_t body_start; /* ... then [body_start, end), with "\n" inserted before each split */
    size_t end;
    GArray *splits;    /* size_t, ascending, in (body_start, end): a part header block without
                          its empty line ends there; msg_prescan_free() */
    GArray *cuts;      /* struct prescan_cut, ascending: a field over LIMIT_HEADER_FIELD_BYTES;
                          msg_prescan_free() */
};
/* GMime gets [.., at) "\n" [resume, ..): the excess of an over-long field is left out. */
struct prescan_cut {
    size_t at, resume;
};
void msg_prescan_run(struct message *m, const uint8_t *data, size_t len, struct prescan *out);
void msg_prescan_free(struct prescan *ps);

/* header.c — header values (see header.c for the rules).  All return UTF-8 without NUL; g_free(). */
/* CR and LF removed, white space trimmed at both ends. */
char *msg_header_unfold(const char *raw, size_t len);
/* An unfolded value, RFC 2047 decoded, raw 8-bit text read by msg_text_undeclared(). */
char *msg_header_decode_unfolded(const char *s, size_t n);
/* A raw value as GMime keeps it (NULL gives ""): unfolded and decoded. */
char *msg_header_decode(const char *raw);
/* Parameter `param` of the first header `header` of `obj`, read from its raw value (so it is
 * found when GMime could not parse the rest of the field), RFC 2231 / RFC 2047 decoded; NULL when
 * absent. */
char *msg_header_param(const struct message *m, GMimeObject *obj, const char *header,
                       const char *param);
/* The decoded Subject of the message whose bytes are d[0..len), or "". */
char *msg_header_subject_of_bytes(const uint8_t *d, size_t len);

/* walk.c — bodies and attachments from the GMime tree. */
void msg_walk(struct message *m, GMimeMessage *gm);
/* Decoded bytes of a leaf or the bytes of a forwarded message (g_malloc'd == malloc'd). */
GByteArray *msg_part_bytes(const struct message *m, GMimeObject *part);

/* json.c — shared with post.c and stored.c. */
/* A JSON string of any caller text (NULL gives ""): invalid UTF-8 becomes U+FFFD instead of a
 * missing field. */
json_t *msg_jstr(const char *s);
/* authres.c: the "authentication" member from the message's first header field, when that is
 * inlet's Authentication-Results, as compact JSON text (free()); NULL otherwise. */
char *msg_authres_text(const struct message *m);
/* The same member as a tree (new reference) from m's text, for json.c and stored.c; NULL when
 * the message has none. */
json_t *msg_authres_tree(const struct message *m);
/* The recipient's domain, lower case ("" when there is no @).  g_free(). */
char *msg_domain_of(const char *recipient);
/* The headers Mailgun adds to inbound mail (X-Mailgun-Incoming: Yes, X-Envelope-From: <sender>),
 * placed before the message's own in Mailgun's shapes: the form's message-headers and per-header
 * fields, the stored JSON.  Not in inlet's json format, nor in the stored bytes.  Header i
 * (< MSG_MAILGUN_HEADERS): *name is static, the value g_malloc'd. */
#define MSG_MAILGUN_HEADERS 2
char *msg_mailgun_header(size_t i, const char *sender, const char **name);
/* message-headers: [[name, value], ...]; with `sender` (not NULL), Mailgun's added headers
 * first. */
json_t *msg_headers_json(const struct message *m, const char *sender);
/* "<base>/attachments/<i>", trailing slashes of base dropped.  g_free(). */
char *msg_attachment_url(const char *base, size_t i);
/* An attachment by reference, {size, url, name, content-type} (SPEC §6: stored JSON and notify). */
json_t *msg_attachment_ref_json(const struct message_attachment *at, const char *url);

/* jsonw.c — the json format without a jansson tree (post.c's JSON POST body). */
/* Appends to `out` exactly the bytes of
 *     json_dumps(message_to_json(m, opts), JSON_COMPACT | JSON_PRESERVE_ORDER)
 * (jansson 2.14).  With message_url (a notify POST) it appends instead the document post.c sends
 * then: "attachments" as [{size, url, name, content-type}] (url = <message_url>/attachments/<i>,
 * nothing decoded; opts' inline budget and attachments_url are not used), "url" added after
 * "index" in every content-id-map entry, and "message-url" after "id". */
void msg_json_write(GString *out, const struct message *m, const struct message_json_options *opts,
                    const char *message_url);
/* A JSON string of s as jansson dumps it; false (nothing appended) when jansson would refuse s
 * (not valid UTF-8). */
bool msg_jsonw_string(GString *out, const char *s);
/* The same with msg_jstr()'s repair: invalid UTF-8 becomes U+FFFD (false only if that fails too). */
bool msg_jsonw_jstr(GString *out, const char *s);

/* post.c / jsonw.c — what the posts of one message share (message_post_shared, message.h). */
/* One value written once per message: its bytes, or refused (jansson would drop the member). */
struct msg_shared_value {
    uint8_t *data; /* g_free() */
    size_t len;
    bool done, refused;
};
enum msg_shared_slot {
    /* JSON: the members' values as JSON text (strings with their quotes; the headers array). */
    MSG_SHARED_JSON_BODY_PLAIN,
    MSG_SHARED_JSON_BODY_HTML,
    MSG_SHARED_JSON_STRIPPED_TEXT,
    MSG_SHARED_JSON_STRIPPED_SIGNATURE,
    MSG_SHARED_JSON_STRIPPED_HTML,
    MSG_SHARED_JSON_HEADERS,
    /* The Mailgun form: the field values (text; message-headers as its JSON string). */
    MSG_SHARED_FORM_BODY_PLAIN,
    MSG_SHARED_FORM_BODY_HTML,
    MSG_SHARED_FORM_STRIPPED_TEXT,
    MSG_SHARED_FORM_STRIPPED_SIGNATURE,
    MSG_SHARED_FORM_STRIPPED_HTML,
    MSG_SHARED_FORM_HEADERS,
    MSG_SHARED_SLOTS
};
struct message_post_shared {
    gint refs;                   /* g_atomic_int_* */
    struct msg_shared_value slot[MSG_SHARED_SLOTS];
    struct msg_shared_value *b64;   /* JSON: an inlined attachment's content, "<base64>" */
    struct msg_shared_value *file;  /* the form: an attachment's decoded bytes */
    size_t natt;                 /* entries of b64 and file (the message's attachments) */
    size_t bytes;                /* held by the values */
};
/* Fills `v` (one of sh's values, not done yet) with `data` (taken; NULL when refused).  Only the
 * thread that builds the posts of the message fills values; they never change afterwards. */
void msg_shared_set(struct message_post_shared *sh, struct msg_shared_value *v, uint8_t *data, size_t len);

/* A piece of a JSON POST that is not in the GString but in a shared value: its bytes go at
 * offset `at` of the written text. */
struct msg_json_splice {
    size_t at;
    const uint8_t *data;
    size_t len;
};
/* msg_json_write() with the big values (bodies, message-headers, inlined attachments) taken from
 * `sh` (built there on first use) and recorded in `splices` instead of written: the text and the
 * splices together are msg_json_write()'s bytes. */
void msg_json_write_shared(GString *out, const struct message *m, const struct message_json_options *opts,
                           const char *message_url, struct message_post_shared *sh, GArray *splices);
/* About the bytes of msg_json_write_shared()'s text, plus the values that `sh` does not hold yet
 * (all of them when sh is NULL). */
size_t msg_json_estimate(const struct message *m, const struct message_json_options *opts,
                         const char *message_url, const struct message_post_shared *sh);

#endif
