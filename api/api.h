/* api/api.h — the HTTP API on libmicrohttpd (SPEC §7).
 *
 * A thread pool with epoll per listener.  Every endpoint but GET /healthz needs HTTP Basic
 * credentials (user "api", the API key); request bodies are urlencoded or multipart forms
 * (api/form.h).  The routes, stored messages, events and metrics endpoints come with their issues.
 * Uses util/ and storage/. */
#ifndef INLET_API_H
#define INLET_API_H

#include <stddef.h>
#include <stdint.h>

struct api_server;
struct store;

struct api_config {
    const char *const *listen; /* "HOST:PORT", validated */
    size_t nlisten;
    const char *data_dir;      /* statvfs'd by /healthz */
    int64_t min_free_disk;     /* bytes; below it /healthz answers 503 */
    const char *api_key;       /* HTTP Basic password of user "api"; required (copied as a digest) */
};

/* Starts every listener and logs one line per listener.  NULL with *err (malloc'd); also when
 * cfg->api_key is NULL or empty (the API is never served without a key). */
struct api_server *api_server_start(const struct api_config *cfg, struct store *store, char **err);
/* Stops accepting, finishes requests in progress, frees.  NULL is fine. */
void api_server_stop(struct api_server *api);

#endif
