/* api/metrics.c — GET /metrics (SPEC §7, API auth): the Prometheus text exposition format that
 * the engine's hook writes (counters of its own, store gauges), then the API's writes in flight.  503 when the engine gives no
 * hook or the hook has nothing (memory ran out). */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

enum MHD_Result api_metrics(struct api_server *api, struct api_request *req)
{
    char *text = api->cfg.metrics ? api->cfg.metrics(api->cfg.hooks_arg) : NULL;
    if (!text)
        return api_reply_error(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "Metrics are not available");
    /* The API's own lines (api/writes.c) after the engine's. */
    char *writes = api_writes_metrics(api);
    size_t n = strlen(text), m = strlen(writes);
    char *all = realloc(text, n + m + 1);
    if (!all) {
        free(text);
        g_free(writes);
        return api_reply_error(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "Metrics are not available");
    }
    memcpy(all + n, writes, m + 1);
    g_free(writes);
    return api_reply_bytes(req->conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", all,
                           n + m);
}
