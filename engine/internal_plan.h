/* engine/internal_plan.h — the routing outcome of one parsed message (SPEC §4): per envelope recipient the
 * matched routes, the planned deliveries and the stored copies, in the shape store_write_outcome()
 * takes.  Pure: no I/O, no threads; the caller supplies the table, a matcher and the clock.
 * Internal to engine/. */
#ifndef INLET_ENGINE_INTERNAL_PLAN_H
#define INLET_ENGINE_INTERNAL_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

struct message;
struct route_matcher;
struct route_table;

struct plan {
    struct store_outcome outcome;   /* points into the arrays below */
    struct store_recipient_outcome *rcpts;
    struct store_delivery_plan *deliveries;
    struct store_copy_plan *copies;
    size_t nrouted, ndropped;
    void *strings;                  /* GPtrArray of every string the outcome points to */
};

struct plan_options {
    int64_t store_ttl;              /* seconds: expires_at of stored copies */
    int64_t mailbox_ttl;            /* seconds: of a mailbox copy without ttl= (SPEC §9) */
    size_t inline_attachments_max;  /* a JSON POST inlines this many attachment bytes; past it
                                       the plan adds a stored copy to fetch them from */
    bool default_json;              /* --webhook-format json: format "" means JSON */
};

/* Fills `p` for message `sm` (its id and recipients) parsed as `m`.  0, or -1 when memory ran
 * out (`p` must be cleared either way). */
int engine_plan_build(struct plan *p, const struct store_message *sm, const struct message *m,
                      const struct route_table *t, struct route_matcher *matcher, int64_t now,
                      const struct plan_options *opts);
void engine_plan_clear(struct plan *p);

/* Whether `rcpt` is RFC 5321's postmaster: the bare "postmaster" or local part "postmaster",
 * ignoring case. */
bool engine_plan_is_postmaster(const char *rcpt);
/* The delivery format of a URL whose path (not query, not fragment) ends in "mime": SPEC §5's
 * raw variant. */
bool engine_plan_url_is_mime(const char *url);
/* A storage key: base64url without padding of 18 random bytes (144 bits), 24 characters. */
void engine_plan_storage_key(char out[25]);

#endif
