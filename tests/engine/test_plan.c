/* tests/engine/test_plan.c — the routing outcome of one message (engine/plan.c), without threads
 * or storage: routes compiled, a message parsed, the outcome checked field by field. */
#include <glib.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/internal_plan.h"
#include "message/message.h"
#include "routes/routes.h"
#include "util/log.h"

static struct route *compile(const char *id, int prio, int64_t seq, const char *expr, const char *a1,
                             const char *a2)
{
    const char *actions[2] = {a1, a2};
    struct route_def def = {.id = id, .priority = prio, .seq = seq, .description = "", .expression = expr,
                            .actions = actions, .nactions = a2 ? 2 : 1, .created_at = 0};
    char *err = NULL;
    struct route *r = route_compile(&def, &err);
    if (!r) printf("# compile %s: %s\n", expr, err);
    free(err);
    return r;
}

static void test_helpers(void)
{
    CHECK(engine_plan_is_postmaster("postmaster"), "bare postmaster");
    CHECK(engine_plan_is_postmaster("PostMaster@Example.com"), "postmaster ignoring case");
    CHECK(!engine_plan_is_postmaster("postmasters@example.com"), "postmasters is not");
    CHECK(!engine_plan_is_postmaster("x@postmaster"), "domain postmaster is not");
    CHECK(engine_plan_url_is_mime("https://h.test/rails/action_mailbox/mailgun/inbound_emails/mime"), "path ends in mime");
    CHECK(engine_plan_url_is_mime("https://h.test/mime?x=1#y"), "query and fragment ignored");
    CHECK(!engine_plan_url_is_mime("https://h.test/x?format=mime"), "mime in the query only");
    CHECK(!engine_plan_url_is_mime("https://mime"), "mime in the host only");
    CHECK(!engine_plan_url_is_mime("https://h.test/mimes"), "mimes");
    char a[25], b[25];
    engine_plan_storage_key(a);
    engine_plan_storage_key(b);
    bool shape = strlen(a) == 24;
    for (const char *p = a; *p; p++) shape = shape && (g_ascii_isalnum(*p) || *p == '-' || *p == '_');
    CHECK(shape, "key is 24 URL-safe characters: %s", a);
    CHECK(strcmp(a, b) != 0, "keys differ");
}

static const char *get_str(json_t *o, const char *path_key)
{
    return json_string_value(json_object_get(o, path_key));
}

static void test_build(void)
{
    struct route *rs[4];
    rs[0] = compile("aaaaaaaaaaaaaaaaaaaaaaa1", 0, 1, "match_recipient(\"(?P<u>[a-z]+)@example\\.com\")",
                    "forward(\"https://h.test/in/mime\", format=\"json\")", "store(notify=\"https://h.test/n/\\g<u>\")");
    rs[1] = compile("aaaaaaaaaaaaaaaaaaaaaaa2", 1, 2, "match_recipient(\".*@example\\.com\")",
                    "forward(\"https://h.test/in/mime\", format=\"mailgun\")", "forward(\"b@archive.test\")");
    rs[2] = compile("aaaaaaaaaaaaaaaaaaaaaaa3", 2, 3, "match_header(\"x-tag\", \"(.*)\")",
                    "forward(\"https://h.test/tag\")", NULL);
    rs[3] = compile("aaaaaaaaaaaaaaaaaaaaaaa4", 3, 4, "match_recipient(\"nobody@\")", "stop()", NULL);
    for (int i = 0; i < 4; i++)
        if (!rs[i]) return;
    struct route_table *t = route_table_new(rs, 4);
    struct route_matcher *m = route_matcher_new();

    static const char raw[] = "From: a@sender.test\r\nX-Tag: caf\xc3\xa9\r\nSubject: hi\r\n\r\nbody\r\n";
    struct message *msg = message_parse((const uint8_t *)raw, sizeof raw - 1);
    char r1[] = "bob@Example.COM", r2[] = "POSTMASTER@example.com", r3[] = "carol@other.test";
    char *rcpts[] = {r1, r2, r3};
    struct store_message sm = {.id = "0123456789abcdef01234567", .rcpts = rcpts, .nrcpts = 3};
    struct plan p;
    int rc = engine_plan_build(&p, &sm, msg, t, m, 1000, &(struct plan_options){.store_ttl = 50, .inline_attachments_max = 10485760, .default_json = true});
    CHECK(rc == 0, "engine_plan_build");
    const struct store_outcome *o = &p.outcome;
    CHECK(o->nrecipients == 3, "three recipients");
    CHECK_STR(o->message_id, sm.id, "message id");
    CHECK(o->now == 1000, "now");
    CHECK_STR(o->parse_warnings_json, "[]", "no parse warnings");

    /* bob: routes 1, 2, 3; the two forwards to one .../mime URL are one "mime" delivery. */
    CHECK_STR(o->recipients[0].outcome, "routed", "bob routed");
    json_t *routes = json_loads(o->recipients[0].routes_json, 0, NULL);
    CHECK(json_array_size(routes) == 3, "bob: three routes");
    CHECK_STR(o->recipients[0].route_ids_json,
              "[\"aaaaaaaaaaaaaaaaaaaaaaa1\",\"aaaaaaaaaaaaaaaaaaaaaaa2\",\"aaaaaaaaaaaaaaaaaaaaaaa3\"]",
              "bob: the route ids for the accepted event, in order");
    json_t *r0 = json_array_get(routes, 0);
    CHECK_STR(get_str(json_object_get(r0, "captures"), "u"), "bob", "named capture");
    CHECK_STR(get_str(json_object_get(r0, "captures"), "1"), "bob", "numbered capture");
    CHECK_STR(json_string_value(json_array_get(json_object_get(r0, "actions"), 1)),
              "store(notify=\"https://h.test/n/bob\")", "resolved action");
    CHECK_STR(get_str(json_object_get(json_array_get(routes, 2), "captures"), "1"), "caf\xc3\xa9",
              "header capture, UTF-8");
    json_decref(routes);

    size_t bob = 0, mime = 0, notify = 0;
    const char *notify_key = NULL;
    for (size_t i = 0; i < o->ndeliveries; i++) {
        const struct store_delivery_plan *d = &o->deliveries[i];
        CHECK(strlen(d->id) == 24, "delivery id");
        if (strcmp(d->kind, "notify") == 0) {
            /* SPEC §6: the store's notify POST is a delivery of its own, never merged. */
            notify++;
            CHECK_STR(d->recipient, "bob@Example.COM", "notify for bob");
            CHECK_STR(d->target, "https://h.test/n/bob", "notify URL resolved");
            CHECK_STR(d->route_ids_json, "[\"aaaaaaaaaaaaaaaaaaaaaaa1\"]", "notify's route");
            notify_key = d->copy_key;
            continue;
        }
        CHECK(d->copy_key == NULL, "no copy for a small message's delivery");
        if (strcmp(d->recipient, "bob@Example.COM") != 0) continue;
        bob++;
        if (strcmp(d->target, "https://h.test/in/mime") == 0) {
            mime++;
            CHECK_STR(d->format, "mime", "mime format");
            CHECK_STR(d->kind, "url", "url kind");
            CHECK_STR(d->route_ids_json, "[\"aaaaaaaaaaaaaaaaaaaaaaa1\",\"aaaaaaaaaaaaaaaaaaaaaaa2\"]",
                      "both routes on one delivery");
        } else if (strcmp(d->target, "b@archive.test") == 0) {
            CHECK_STR(d->kind, "address", "address kind");
            CHECK_STR(d->format, "", "address format");
        } else {
            CHECK_STR(d->target, "https://h.test/tag", "tag delivery");
        }
    }
    CHECK(bob == 3 && mime == 1, "bob: three deliveries (%zu), one mime (%zu)", bob, mime);
    CHECK(notify == 1, "one notify delivery (%zu)", notify);

    /* Copies: bob's from route 1 (domain lower-cased, notify resolved), postmaster's own. */
    size_t copies = 0;
    for (size_t i = 0; i < o->ncopies; i++) {
        const struct store_copy_plan *c = &o->copies[i];
        CHECK(c->expires_at == 1050, "expires_at = now + ttl");
        CHECK(strlen(c->key) == 24, "copy key");
        CHECK_STR(c->domain, "example.com", "domain lower case");
        if (strcmp(c->recipient, "bob@Example.COM") == 0) {
            CHECK_STR(c->route_id, "aaaaaaaaaaaaaaaaaaaaaaa1", "copy route");
            CHECK_STR(c->notify, "https://h.test/n/bob", "notify");
            CHECK(notify_key && strcmp(notify_key, c->key) == 0, "the notify delivery names this copy");
            copies++;
        }
    }
    CHECK(copies == 1, "bob: one copy");
    /* POSTMASTER@: matched by routes 2 and 3 (".*@example\.com", the header): no postmaster copy. */
    CHECK_STR(o->recipients[1].outcome, "routed", "postmaster routed");
    CHECK(o->ncopies == 1, "one copy in all (%zu)", o->ncopies);
    /* carol: only the header route. */
    CHECK_STR(o->recipients[2].outcome, "routed", "carol routed by the header route");
    CHECK(p.ndropped == 0, "nothing dropped");
    engine_plan_clear(&p);
    message_free(msg);

    /* Without the header, carol is dropped; a postmaster nothing matches is stored. */
    static const char raw2[] = "Subject: plain\r\n\r\nbody\r\n";
    msg = message_parse((const uint8_t *)raw2, sizeof raw2 - 1);
    char q1[] = "carol@other.test", q2[] = "postmaster@other.test", q3[] = "postmaster";
    char *rcpts2[] = {q1, q2, q3};
    struct store_message sm2 = {.id = "0123456789abcdef01234568", .rcpts = rcpts2, .nrcpts = 3};
    rc = engine_plan_build(&p, &sm2, msg, t, m, 2000, &(struct plan_options){.store_ttl = 10, .inline_attachments_max = 10485760, .default_json = true});
    CHECK(rc == 0, "engine_plan_build 2");
    CHECK_STR(p.outcome.recipients[0].outcome, "dropped", "carol dropped");
    CHECK_STR(p.outcome.recipients[0].routes_json, "[]", "no routes");
    CHECK_STR(p.outcome.recipients[1].outcome, "routed", "unrouted postmaster is kept");
    CHECK(p.ndropped == 1, "one dropped");
    CHECK(p.outcome.ncopies == 2, "two postmaster copies");
    CHECK(p.outcome.ndeliveries == 0, "no deliveries");
    if (p.outcome.ncopies == 2) {
        CHECK_STR(p.outcome.copies[0].route_id, "", "postmaster copy has no route");
        CHECK_STR(p.outcome.copies[0].domain, "other.test", "postmaster domain");
        CHECK_STR(p.outcome.copies[1].domain, "", "bare postmaster: no domain");
    }
    engine_plan_clear(&p);
    message_free(msg);

    route_matcher_free(m);
    route_table_unref(t);
}

/* SPEC §6: attachments past --inline-attachments-max reach a JSON POST by URL, from a stored copy
 * the plan adds (one per recipient, no route); the mailgun form sends files and needs none. */
static void test_attachment_copy(void)
{
    struct route *rs[1];
    rs[0] = compile("aaaaaaaaaaaaaaaaaaaaaaa1", 0, 1, "catch_all()", "forward(\"https://h.test/j\")",
                    "forward(\"https://h.test/m\", format=\"mailgun\")");
    if (!rs[0]) return;
    struct route_table *t = route_table_new(rs, 1);
    struct route_matcher *m = route_matcher_new();
    static const char raw[] = "Subject: files\r\nMIME-Version: 1.0\r\n"
                              "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                              "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
                              "--b\r\nContent-Type: application/octet-stream\r\n"
                              "Content-Disposition: attachment; filename=a.bin\r\n\r\n0123456789\r\n--b--\r\n";
    struct message *msg = message_parse((const uint8_t *)raw, sizeof raw - 1);
    char r1[] = "a@example.com", r2[] = "b@example.com";
    char *rcpts[] = {r1, r2};
    struct store_message sm = {.id = "0123456789abcdef01234569", .rcpts = rcpts, .nrcpts = 2};
    struct plan p;
    for (int budget = 0; budget < 2; budget++) {
        const size_t max = budget ? 1000 : 4;
        int rc = engine_plan_build(&p, &sm, msg, t, m, 1000,
                                   &(struct plan_options){.store_ttl = 60, .inline_attachments_max = max, .default_json = true});
        CHECK(rc == 0, "engine_plan_build (budget %zu)", max);
        size_t with_key = 0;
        for (size_t i = 0; i < p.outcome.ndeliveries; i++) {
            const struct store_delivery_plan *d = &p.outcome.deliveries[i];
            if (!d->copy_key) continue;
            with_key++;
            CHECK_STR(d->target, "https://h.test/j", "only the JSON delivery refers to a copy");
            bool found = false;
            for (size_t k = 0; k < p.outcome.ncopies; k++) {
                const struct store_copy_plan *c = &p.outcome.copies[k];
                if (strcmp(c->key, d->copy_key) != 0) continue;
                found = true;
                CHECK_STR(c->recipient, d->recipient, "the copy is the recipient's");
                CHECK_STR(c->route_id, "", "the copy belongs to no route");
                CHECK(c->notify == NULL, "and notifies nobody");
                CHECK(c->expires_at == 1060, "kept for the store TTL");
            }
            CHECK(found, "the copy key names a planned copy");
        }
        if (budget) {
            CHECK(with_key == 0 && p.outcome.ncopies == 0, "within the budget: no copy (%zu, %zu)", with_key,
                  p.outcome.ncopies);
        } else {
            CHECK(with_key == 2 && p.outcome.ncopies == 2, "past the budget: one copy per recipient (%zu, %zu)",
                  with_key, p.outcome.ncopies);
        }
        engine_plan_clear(&p);
    }
    message_free(msg);
    route_matcher_free(m);
    route_table_unref(t);
}

int main(void)
{
    log_set_level(LOG_WARN);
    message_lib_init();
    test_helpers();
    test_build();
    test_attachment_copy();
    message_lib_shutdown();
    return check_done();
}
