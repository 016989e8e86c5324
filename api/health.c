/* api/health.c — GET /healthz: is this node able to take mail right now? (SPEC §7) */
#include <pthread.h>
#include <stdlib.h>
#include <sys/statvfs.h>

#include <glib.h>

#include "api/internal.h"
#include "storage/store.h"

/* NULL when there is enough free space under the data dir, else the reason (malloc'd). */
static char *disk_problem(const struct api_config *cfg)
{
    struct statvfs vfs;
    if (statvfs(cfg->data_dir, &vfs) < 0)
        return g_strdup_printf("cannot check free space of %s: %s", cfg->data_dir, g_strerror(errno));
    unsigned long long avail = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
    if (avail < (unsigned long long)cfg->min_free_disk)
        return g_strdup_printf("free disk space %llu bytes is below the floor of %lld bytes", avail,
                               (long long)cfg->min_free_disk);
    return NULL;
}

static enum MHD_Result unavailable(struct MHD_Connection *conn, const char *reason)
{
    return api_reply_json(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                          json_pack("{s:s, s:s}", "status", "unavailable", "message", reason));
}

/* NULL when the node can take mail, else the reason (g_malloc'd).  The answer is kept
 * API_HEALTH_CACHE_MS: the writability probe takes the database's write lock (storage/) and
 * /healthz needs no credentials, so a client asking in a loop must not contend with the writer
 * on every request.  Requests that arrive during a probe wait for it and take its answer. */
static char *health_problem(struct api_server *api)
{
    pthread_mutex_lock(&api->health_mu);
    int64_t now = g_get_monotonic_time();
    if (!api->health_at || now - api->health_at >= (int64_t)API_HEALTH_CACHE_MS * 1000) {
        char *reason = disk_problem(&api->cfg); /* GLib's */
        if (!reason) {
            char *why = NULL; /* the store's: malloc'd */
            enum store_status st = store_check_writable(api->store, &why);
            if (st != STORE_OK) reason = g_strdup(why ? why : store_status_text(st));
            free(why);
        }
        g_free(api->health_reason);
        api->health_reason = reason;
        api->health_at = g_get_monotonic_time();
    }
    char *out = g_strdup(api->health_reason);
    pthread_mutex_unlock(&api->health_mu);
    return out;
}

enum MHD_Result api_health(struct api_server *api, struct api_request *req)
{
    struct MHD_Connection *conn = req->conn;
    char *reason = health_problem(api);
    if (reason) {
        enum MHD_Result r = unavailable(conn, reason);
        g_free(reason);
        return r;
    }
    return api_reply_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}
