/* api/api.h — the HTTP API on libmicrohttpd (SPEC §7).
 *
 * A thread pool with epoll per listener; a request that writes waits for its commit suspended,
 * holding none of its threads (api/writes.c).  Every endpoint but GET /healthz needs HTTP Basic
 * credentials (user "api", the API key); request bodies are urlencoded or multipart forms
 * (api/internal_form.h).  The routes endpoints (SPEC §7) are in api/routes.c, stored copies (SPEC §6) in
 * api/messages.c, events in api/events.c, the dead-letter list in api/deliveries.c, metrics in
 * api/metrics.c.  Uses util/, storage/, routes/ and message/ (the dry run
 * POST /v3/routes/test parses the message it is given). */
#ifndef INLET_API_H
#define INLET_API_H

#include <stddef.h>
#include <stdint.h>

struct api_server;
struct route_registry;
struct store;

struct api_config {
    const char *const *listen; /* "HOST:PORT", validated */
    size_t nlisten;
    const char *data_dir;      /* statvfs'd by /healthz */
    int64_t min_free_disk;     /* bytes; below it /healthz answers 503 */
    const char *api_key;       /* HTTP Basic password of user "api"; required (copied as a digest) */
    /* The routes the engine evaluates (routes/routes.h): the /v3/routes endpoints replace its
     * table on every change, before they answer, so the next message follows the change.  The
     * engine creates it, fills it with api_routes_load() and passes it here; it must outlive the
     * server.  NULL: the server keeps a registry of its own, loaded from the store at start (for
     * a process that serves the API alone; nothing would route by it). */
    struct route_registry *routes;
    int64_t route_quota;       /* --route-quota: POST /v3/routes refuses the route past this many */
    const char *public_url;    /* --public-url: base of storage URLs and of the events' paging
                                  URLs (copied; a trailing '/' is dropped); NULL or "": derived
                                  from the first listener (api_server_public_url) */
    int64_t console_session_ttl; /* seconds a web console login lasts (SPEC §7.1); 0: 12 hours */
    const char *const *domains; /* the hosted domains (--domain), shown by the console */
    size_t ndomains;
    /* Hooks into the engine (api/ does not depend on engine/); each may be NULL.  They run on a
     * libmicrohttpd thread (a pool thread, or the one stopping the server) and must not block for
     * long. */
    void *hooks_arg;
    /* New deliveries are due now (a resend, a dead-letter retry): deliver them without waiting
     * for the next scan. */
    void (*deliveries_due)(void *hooks_arg);
    /* The Prometheus text of GET /metrics (malloc'd), or NULL when memory ran out. */
    char *(*metrics)(void *hooks_arg);
};

/* Starts every listener and logs one line per listener.  NULL with *err (malloc'd); also when
 * cfg->api_key is NULL or empty (the API is never served without a key). */
struct api_server *api_server_start(const struct api_config *cfg, struct store *store, char **err);
/* The base of storage URLs and paging URLs: cfg->public_url without a trailing '/', or, when
 * that was NULL or "", "http://<first listener as bound>" (its real port, also for port 0).
 * Valid until api_server_stop(). */
const char *api_server_public_url(const struct api_server *api);
/* Stops accepting, finishes requests in progress (writes: new ones get 503, suspended ones are
 * answered once their commit ended), frees.  NULL is fine. */
void api_server_stop(struct api_server *api);

/* Loads every stored route into `reg` (store_routes_load, each route compiled once, one table
 * published, read and published under route_registry_lock): the engine calls it at start, before
 * the listeners, and again whenever another node changed the routes (store_watch_routes).  A stored route that does not
 * compile (it compiled when it was created, so only a downgrade or a hand-edited database can do
 * this) is logged as an error and skipped; the others load.  0 (and *loaded, may be NULL), or -1
 * with *err (malloc'd) when the store cannot be read or memory ran out (the registry keeps its
 * table then). */
int api_routes_load(struct route_registry *reg, struct store *st, size_t *loaded, char **err);

#endif
