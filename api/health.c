/* api/health.c — GET /healthz: is this node able to take mail right now? (SPEC §7) */
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

enum MHD_Result api_health(struct api_server *api, struct api_request *req)
{
    struct MHD_Connection *conn = req->conn;
    char *disk = disk_problem(&api->cfg); /* GLib's */
    if (disk) {
        enum MHD_Result r = unavailable(conn, disk);
        g_free(disk);
        return r;
    }
    char *reason = NULL; /* the store's: malloc'd */
    enum store_status st = store_check_writable(api->store, &reason);
    if (st != STORE_OK) {
        enum MHD_Result r = unavailable(conn, reason ? reason : store_status_text(st));
        free(reason);
        return r;
    }
    return api_reply_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}
