/* api/metrics.c — GET /metrics (SPEC §7, API auth): the Prometheus text exposition format that
 * the engine's hook writes (counters of its own, store gauges).  503 when the engine gives no
 * hook or the hook has nothing (memory ran out). */
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"

enum MHD_Result api_metrics(struct api_server *api, struct api_request *req)
{
    char *text = api->cfg.metrics ? api->cfg.metrics(api->cfg.hooks_arg) : NULL;
    if (!text)
        return api_reply_error(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "Metrics are not available");
    return api_reply_bytes(req->conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text,
                           strlen(text));
}
