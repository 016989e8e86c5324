/* api/metrics.c — GET /metrics (SPEC §7, API auth): the Prometheus text exposition format that
 * the engine's hook writes (counters of its own, store gauges), then the API's writes in flight
 * and its request body budget.  503 when the engine gives no hook or the hook has nothing
 * (memory ran out). */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"
#include "util/limits.h"

enum MHD_Result api_metrics(struct api_server *api, struct api_request *req)
{
    char *text = api->cfg.metrics ? api->cfg.metrics(api->cfg.hooks_arg) : NULL;
    if (!text)
        return api_reply_error(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "Metrics are not available");
    /* The API's own lines (api/writes.c, then the body budget of api/server.c) after the
     * engine's. */
    char *writes = api_writes_metrics(api);
    char *own = g_strdup_printf(
        "%s"
        "# HELP inlet_api_body_bytes_reserved Request body bytes reserved from the in-flight "
        "budget (at most %lld).\n"
        "# TYPE inlet_api_body_bytes_reserved gauge\n"
        "inlet_api_body_bytes_reserved %lld\n",
        writes, (long long)API_BODIES_INFLIGHT_MAX, (long long)atomic_load(&api->body_bytes));
    g_free(writes);
    size_t n = strlen(text), m = strlen(own);
    char *all = realloc(text, n + m + 1);
    if (!all) {
        free(text);
        g_free(own);
        return api_reply_error(req->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "Metrics are not available");
    }
    memcpy(all + n, own, m + 1);
    g_free(own);
    return api_reply_bytes(req->conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", all,
                           n + m);
}
