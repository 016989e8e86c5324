/* routes/routes.h — the route language, PCRE2 matching and the route table (SPEC §4).
 *
 * A route is compiled once (expression parsed, every regex compiled and JIT-compiled, actions
 * parsed and their capture references checked) when it is created or loaded; a route that
 * compiles never meets a bad pattern at match time.  The compiled routes form an immutable,
 * reference-counted table: the engine swaps in a new table when routes change, and a matcher
 * keeps the table it started with until it lets go of it.
 *
 * Matching state (PCRE2 match data, JIT stack) lives in a struct route_matcher, one per thread.
 * Uses only util/. */
#ifndef INLET_ROUTES_H
#define INLET_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "PCRE2 10.42 (JIT: yes)" */
void route_lib_version(char *out, size_t outsz);
bool route_jit_available(void);

/* ---------------------------------------------------------------------------------------------
 * Compiling one route. */

/* What the API stores; strings are kept verbatim. */
struct route_def {
    const char *id;           /* 24 lowercase hex */
    int32_t priority;         /* lower runs first */
    int64_t seq;              /* creation order (hidden sequence): ties of priority by seq */
    const char *description;
    const char *expression;
    const char *const *actions;
    size_t nactions;
    int64_t created_at;       /* Unix seconds */
};

struct route;

/* Compiles `def` (copied).  NULL with *err (malloc'd) naming the problem and its position, e.g.
 * "expression: position 17: expected ',' or ')'" or "action 2: group 'user' is not defined in
 * the expression" — the text of the API's 400 answer. */
struct route *route_compile(const struct route_def *def, char **err);
/* Routes are reference-counted so that a new table after one API change reuses the compiled
 * routes of the old one.  route_free drops one reference. */
struct route *route_ref(struct route *r);
void route_free(struct route *r);
const struct route_def *route_get_def(const struct route *r);

/* ---------------------------------------------------------------------------------------------
 * The table. */

struct route_table;

/* Takes the routes (the array itself stays the caller's) and orders them by (priority, seq).
 * NULL when memory ran out (the routes are freed then too). */
struct route_table *route_table_new(struct route **take_routes, size_t n);
struct route_table *route_table_ref(struct route_table *t);
void route_table_unref(struct route_table *t);
size_t route_table_count(const struct route_table *t);
/* In evaluation order. */
const struct route *route_table_at(const struct route_table *t, size_t i);
/* The same route, for taking a reference (route_ref) into a new table. */
struct route *route_table_get(const struct route_table *t, size_t i);
/* The table after one change: the routes of `old` (shared, route_ref'd, never recompiled) except
 * the one with id `drop_id` (NULL: none), plus `add` (taken; NULL: none).  NULL when memory ran
 * out (`add` is freed then). */
struct route_table *route_table_derive(const struct route_table *old, const char *drop_id,
                                       struct route *add);

/* ---------------------------------------------------------------------------------------------
 * The registry: the one current table, shared by the API (which replaces it on every change)
 * and the engine (which evaluates against it).  Thread-safe. */
struct route_registry;
/* Starts with an empty table. */
struct route_registry *route_registry_new(void);
void route_registry_free(struct route_registry *reg);
/* The current table with a reference taken (route_table_unref when done); never NULL. */
struct route_table *route_registry_current(struct route_registry *reg);
/* Makes `take` the current table; holders of the old one keep it until they let go. */
void route_registry_publish(struct route_registry *reg, struct route_table *take);
/* Serialises writers: the API holds it from compiling a change until it is published, so two
 * changes never publish tables built from the same old one. */
void route_registry_lock(struct route_registry *reg);
void route_registry_unlock(struct route_registry *reg);

/* ---------------------------------------------------------------------------------------------
 * Matching. */

struct route_matcher;
struct route_matcher *route_matcher_new(void);
void route_matcher_free(struct route_matcher *m);

/* The message as routes see it: the envelope recipient and the decoded headers in order. */
struct route_message {
    const char *recipient;            /* envelope recipient as received */
    size_t nheaders;
    const char *const *header_names;
    const char *const *header_values; /* unfolded, decoded, UTF-8 (invalid bytes tolerated) */
};

enum route_dest_kind { ROUTE_DEST_URL, ROUTE_DEST_ADDRESS };
enum route_format { ROUTE_FORMAT_DEFAULT, ROUTE_FORMAT_JSON, ROUTE_FORMAT_MAILGUN };
/* "json", "mailgun", or "" for ROUTE_FORMAT_DEFAULT (the --webhook-format applies): the value of
 * format="..." in an action, and the name the API and the delivery rows use. */
const char *route_format_name(enum route_format f);

/* One planned delivery for one recipient: unique per (target, format); lists every route that
 * resolved to it. */
struct route_delivery {
    enum route_dest_kind kind;
    char *target;              /* URL with captures substituted (percent-encoded), or address */
    enum route_format format;
    char **route_ids;
    size_t nroute_ids;
};

/* One stored copy: one per route with store() that matched. */
struct route_store {
    char *route_id;
    char *notify;              /* notify URL with captures substituted, or NULL */
    enum route_format format;  /* format of the notify POST */
    char *mailbox;             /* store(mailbox=...): the name with captures substituted, lower
                                  case; NULL for a plain stored copy */
    int64_t ttl;               /* with a mailbox: ttl= seconds, 0 when not given */
};

/* A mailbox name (SPEC §9): 1..MAILBOX_NAME_MAX bytes of a-z 0-9 . _ + - @. */
bool route_mailbox_name_ok(const char *name);

struct route_hit {
    char *route_id;
    char **capture_names;      /* "1", "2", ... and the names of named groups */
    char **capture_values;     /* "" for a group that did not participate */
    size_t ncaptures;
    char **actions;            /* the route's actions with captures substituted */
    size_t nactions;
    bool stop;
};

/* The outcome for one recipient. */
struct route_result {
    struct route_hit *hits;            /* matched routes in evaluation order */
    size_t nhits;
    struct route_delivery *deliveries;
    size_t ndeliveries;
    struct route_store *stores;
    size_t nstores;
    char **warnings;                   /* e.g. "route <id>: match limit reached for
                                          match_header(...): treated as no match" */
    size_t nwarnings;
};

/* Evaluates every route for `msg->recipient` (SPEC §4 "Evaluation").  0, or -1 when memory ran
 * out.  `out` is filled (free with route_result_clear) either way. */
int route_evaluate(const struct route_table *t, struct route_matcher *m,
                   const struct route_message *msg, struct route_result *out);
void route_result_clear(struct route_result *r);

/* SPEC §4 "could match": some route's match_recipient filters all match `recipient` (its
 * match_header and catch_all filters counted as true).  A route with no match_recipient filter
 * could match anything. */
bool route_could_match(const struct route_table *t, struct route_matcher *m, const char *recipient);
/* After route_could_match answered true: whether it did so only because a match_recipient
 * filter hit a PCRE2 limit (no route matched outright).  Routing would treat that filter as no
 * match, so the RCPT check answers a temporary failure rather than accept and drop. */
bool route_matcher_hit_limit(const struct route_matcher *m);
/* /v3/routes/match: the first route in evaluation order that has match_recipient filters and
 * whose match_recipient filters all match; header-only and catch-all-only routes are ignored.
 * NULL when none. */
const struct route *route_match_address(const struct route_table *t, struct route_matcher *m,
                                        const char *address);

#endif
