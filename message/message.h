/* message/message.h — MIME parsing with GMime into inlet's message model, and its encodings
 * (SPEC §3; the JSON shape of SPEC §5).
 *
 * A parsed message is immutable and owned by whoever called message_parse(); it may be read
 * from any thread, one thread at a time (GMime objects are not thread-safe).  GMime must be
 * initialised once with message_lib_init() before any thread that parses starts.
 * Uses only util/ (plus GMime and jansson). */
#ifndef INLET_MESSAGE_H
#define INLET_MESSAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/limits.h"

/* Once per process, before any worker thread starts. */
void message_lib_init(void);
void message_lib_shutdown(void);
/* "GMime 3.2.13" */
void message_lib_version(char *out, size_t outsz);

struct message;

/* One leaf part that is not a body: attachments, inline images, forwarded message/rfc822 parts,
 * in MIME tree order.  Strings are UTF-8, never NULL ("" when absent). */
struct message_attachment {
    const char *name;         /* filename (RFC 2231 / RFC 2047 decoded), or "" */
    const char *content_type; /* "image/png" (type/subtype only, lower case) */
    const char *content_id;   /* "<id@host>" with the angle brackets as in the header, or "" */
    const char *disposition;  /* "attachment", "inline" or "" */
    size_t size;              /* decoded size in bytes */
};

/* Parses `data` (len bytes) without copying it: `data` must stay valid and unchanged until
 * message_free().  Never fails on input: a message that is not MIME at all still gives a message
 * (headers that parsed, the rest as body-plain) and parse-warnings that say what was wrong.
 * Returns NULL only when memory runs out. */
struct message *message_parse(const uint8_t *data, size_t len);
void message_free(struct message *m);

/* Decoded header values, UTF-8. */
const char *message_from(const struct message *m);
const char *message_subject(const struct message *m);
const char *message_message_id(const struct message *m); /* without <> */
const char *message_body_plain(const struct message *m);
const char *message_body_html(const struct message *m);
const char *message_stripped_text(const struct message *m);
const char *message_stripped_signature(const struct message *m);
const char *message_stripped_html(const struct message *m);
/* inlet's sender-authentication verdicts as the compact JSON text of the "authentication" object
 * (authres.c: read from the first header field when it is inlet's Authentication-Results), or
 * NULL when the message has none. */
const char *message_authentication_json(const struct message *m);

/* Every header of the top-level header block (Content-* included) in the order of the message,
 * repeats kept, values unfolded and RFC 2047-decoded. */
size_t message_header_count(const struct message *m);
void message_header(const struct message *m, size_t i, const char **name, const char **value);
/* The first header named `name` (case-insensitive), or NULL. */
const char *message_header_first(const struct message *m, const char *name);

size_t message_attachment_count(const struct message *m);
const struct message_attachment *message_attachment(const struct message *m, size_t i);
/* The decoded bytes of attachment i (malloc'd, *len bytes; free()), or -1 if it cannot be
 * decoded (then *out is NULL). */
int message_attachment_bytes(const struct message *m, size_t i, uint8_t **out, size_t *len);

/* parse-warnings (SPEC §3, extension): limits hit, malformed structure. */
size_t message_warning_count(const struct message *m);
const char *message_warning(const struct message *m, size_t i);

/* The envelope and delivery facts that the JSON carries besides the message itself. */
struct message_json_options {
    const char *recipient;          /* "" when unknown */
    const char *sender;             /* "" for the null sender */
    const char *id;                 /* inlet message id, "" when none */
    size_t inline_attachments_max;  /* total decoded attachment bytes inlined as base64; an
                                       attachment past the budget gets "content": null, or
                                       "url" when attachments_url is set */
    const char *attachments_url;    /* NULL, or the storage URL of a copy of this message
                                       (SPEC §6): an attachment past the budget then has
                                       "url": "<attachments_url>/attachments/<i>" (0-based) and no
                                       "content" */
};

/* The webhook JSON of SPEC §5 (json format) without timestamp, token and signature: every field
 * present, in a fixed order, so the same message always gives the same bytes.  `domain` is the
 * recipient's domain, lower case.  New reference; NULL only when memory runs out. */
json_t *message_to_json(const struct message *m, const struct message_json_options *opts);

/* SPEC §3 reserved names: true when a header called `name` must not be emitted as its own
 * field (it stays in message-headers): a name that equals, ignoring case, a field inlet vouches
 * for (recipient, sender, timestamp, token, signature, body-*, stripped-*, attachment-*,
 * attachments, message-headers, content-id-map, domain, recipients, message-url,
 * parse-warnings, authentication), or that is exactly "from", "subject" or "message-id" (the parsed fields;
 * "From", "Subject", "Message-Id" are posted beside them, as Mailgun does).  The one rule every
 * per-header encoding uses. */
bool message_reserved_name(const char *name);

/* ---------------------------------------------------------------------------------------------
 * Webhook POST bodies (SPEC §5) and the stored-message JSON (SPEC §6).
 *
 * A POST body is built once per delivery and signed afresh for every attempt: the body is the
 * *fixed part* (every field but timestamp, token and signature) followed by a *tail* that
 * message_post_tail() makes per attempt (the three signature fields and the closing bytes: "}"
 * for JSON, the last boundary for multipart).  The fixed part is a list of segments so that big
 * pieces are not copied: the exact message bytes (body-mime) are referenced, not copied. */
enum message_post_format {
    MESSAGE_POST_JSON,      /* application/json */
    MESSAGE_POST_MAILGUN,   /* Mailgun's form: urlencoded when small and without attachments,
                               else multipart/form-data (always multipart above 1 MiB) */
    MESSAGE_POST_MIME,      /* Mailgun's raw MIME variant: multipart with body-mime */
};

struct message_post_segment {
    const uint8_t *data;
    size_t len;
};

struct message_post;

/* What the posts of one message have in common, made once and referenced by each of them
 * instead of copied (issue 14 item 3: one message to 100 recipients held 100 copies of its
 * bodies): the JSON format's body strings, message-headers and inlined attachments' base64; the
 * Mailgun form's body fields, message-headers and attachment files.  Filled on first use by
 * message_post_new(), on the thread that builds the posts of that message (one at a time);
 * read-only afterwards.  Each post holds a reference; the last unref (any thread) frees it. */
struct message_post_shared;
/* `m`: the message whose posts will share it (its attachment count).  NULL only when memory runs
 * out. */
struct message_post_shared *message_post_shared_new(const struct message *m);
void message_post_shared_unref(struct message_post_shared *sh);
/* Bytes it holds now. */
size_t message_post_shared_bytes(const struct message_post_shared *sh);

struct message_post_options {
    struct message_json_options json; /* recipient, sender, id, inline budget, attachments_url */
    struct message_post_shared *shared; /* NULL: the post copies everything it needs */
    /* Notify POST of a stored copy (SPEC §6): when set, adds "message-url" and lists attachments
     * as [{size, url, name, content-type}] (url = <message_url>/attachments/<i>), no content, in
     * every format. */
    const char *message_url;
};

/* Builds the fixed part.  `raw`/`raw_len` are the exact stored bytes of `m` (they must outlive
 * the post: MESSAGE_POST_MIME references them).  `m` is only read during the call: the post
 * does not refer to it afterwards.  NULL only when memory runs out. */
struct message_post *message_post_new(const struct message *m, const uint8_t *raw, size_t raw_len,
                                      enum message_post_format format,
                                      const struct message_post_options *opts);
void message_post_free(struct message_post *p);
/* "application/json", "application/x-www-form-urlencoded" or
 * "multipart/form-data; boundary=..." (the boundary: random, not in the body). */
const char *message_post_content_type(const struct message_post *p);
/* The fixed part's segments, in order. */
size_t message_post_segment_count(const struct message_post *p);
struct message_post_segment message_post_segment(const struct message_post *p, size_t i);
/* Bytes of the fixed part (sum of the segments). */
size_t message_post_fixed_len(const struct message_post *p);
/* Bytes the post holds itself (its fixed part without what is referenced: the raw message,
 * opts->shared's values). */
size_t message_post_own_len(const struct message_post *p);
/* Before building it: about the bytes message_post_new() would allocate for this post, its own
 * and those that opts->shared does not hold yet (transient work buffers not counted). */
size_t message_post_estimate(const struct message *m, enum message_post_format format,
                             const struct message_post_options *opts);
/* The tail for one attempt into `out` (at most MESSAGE_POST_TAIL_MAX bytes): the fields
 * timestamp, token, signature, in that order, in the post's encoding, and the closing bytes.
 * Returns its length. */
size_t message_post_tail(const struct message_post *p, const char *timestamp, const char *token,
                         const char *signature, char out[MESSAGE_POST_TAIL_MAX]);

/* The stored-message JSON of SPEC §6 (GET <storage url>): recipients, sender, from, subject,
 * bodies, attachments [{size, url, name, content-type}], message-headers, content-id-map
 * (<cid> → {url, content-type, name, size}), and each non-reserved header as its own key (the
 * first occurrence).  `storage_url` is the copy's URL (attachment URLs derive from it).  New
 * reference; NULL only when memory runs out. */
json_t *message_stored_json(const struct message *m, const char *recipient, const char *sender,
                            const char *storage_url);
/* body-mime of the Accept: message/rfc2822 answer (SPEC §6): the exact bytes when they are valid
 * UTF-8 without NUL; otherwise the message re-encoded by GMime to 7-bit MIME (8-bit and binary
 * parts as quoted-printable or base64).  malloc'd, NUL-terminated, *len bytes; NULL when memory
 * runs out. */
char *message_body_mime(const uint8_t *raw, size_t raw_len, size_t *len);

#endif
