/* storage/internal_postgres.h — what the PostgreSQL backend's files share (private to storage/).
 *
 * postgres_listen.c watches route changes for postgres.c (store_watch_routes, SPEC §8). */
#ifndef INLET_STORAGE_INTERNAL_POSTGRES_H
#define INLET_STORAGE_INTERNAL_POSTGRES_H

#include <stdint.h>

#include "storage/store.h"

/* The channel every change to the routes table notifies (the trigger of migration 7), with the
 * table's new version (routes_version.version) as the payload. */
#define STORE_PG_ROUTES_CHANNEL "inlet_routes"

/* Reads routes_version.version through a connection the caller owns (the backend's read
 * connection: the fallback poll runs while the listening connection is down). */
typedef enum store_status (*store_pg_version_fn)(void *be, int64_t *version, char **err);

struct store_pg_listen;

/* Starts the watcher thread: one connection of its own to `uri` (application_name
 * "inlet-listen"), LISTEN on STORE_PG_ROUTES_CHANNEL, `changed` called on that thread (see
 * store_watch_routes).  While the connection is down it reconnects with backoff
 * (STORE_LISTEN_RETRY_MIN_MS doubling to STORE_LISTEN_RETRY_MAX_MS) and compares the version read
 * by `version(be, ...)` every STORE_ROUTES_POLL_MS.  NULL with *err when the thread cannot start
 * (a database that is down is not a failure here). */
struct store_pg_listen *store_pg_listen_start(const char *uri, store_pg_version_fn version,
                                              void *be, store_routes_changed_fn changed, void *arg,
                                              char **err);
/* Stops the thread (a callback in progress finishes first) and closes its connection.  NULL is
 * fine. */
void store_pg_listen_stop(struct store_pg_listen *l);

#endif
