/* api/server.c — libmicrohttpd daemons, request dispatch and JSON replies. */
#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/internal.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/net.h"

enum MHD_Result api_reply_json(struct MHD_Connection *conn, unsigned status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) text = strdup("{\"message\": \"Internal error\"}");
    size_t len = strlen(text);
    /* JSON answers end with a newline so that curl output stays readable. */
    char *withnl = realloc(text, len + 2);
    if (withnl) {
        withnl[len++] = '\n';
        withnl[len] = '\0';
        text = withnl;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

enum MHD_Result api_reply_error(struct MHD_Connection *conn, unsigned status, const char *message)
{
    return api_reply_json(conn, status, json_pack("{s:s}", "message", message));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct api_server *api = cls;
    /* Request bodies come with the routes API; until then any body is refused unread. */
    if (*upload_data_size > 0) return api_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "Request body not accepted here");
    if (strcmp(url, "/healthz") == 0) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
            return api_reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "Method not allowed");
        return api_health(api, conn);
    }
    return api_reply_error(conn, MHD_HTTP_NOT_FOUND, "Not found");
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    g_strchomp(line);
    log_warn("http", "libmicrohttpd: %s", line);
}

static int start_daemon(struct api_server *api, const char *spec, char **err)
{
    int fd;
    if (net_listen(spec, &fd, err) < 0) return -1;
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, api,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, /* first, or MHD logs on its own */
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)API_THREADS,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)API_CONNECTIONS_MAX,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)API_CONNECTIONS_PER_IP_MAX,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)API_TIMEOUT_SECONDS,
        MHD_OPTION_END);
    if (!d) {
        close(fd);
        *err = g_strdup_printf("cannot start the HTTP server on %s", spec);
        return -1;
    }
    api->daemons[api->ndaemons++] = d;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char addr[80] = "?";
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) net_format((struct sockaddr *)&ss, addr, sizeof addr);
    log_info("http", "listening addr=%s", addr);
    return 0;
}

struct api_server *api_server_start(const struct api_config *cfg, struct store *store, char **err)
{
    struct api_server *api = g_new0(struct api_server, 1);
    api->cfg = *cfg;
    api->store = store;
    if (cfg->nlisten > G_N_ELEMENTS(api->daemons)) {
        *err = g_strdup("too many HTTP listeners");
        goto fail;
    }
    for (size_t i = 0; i < cfg->nlisten; i++)
        if (start_daemon(api, cfg->listen[i], err) < 0) goto fail;
    return api;
fail:
    api_server_stop(api);
    return NULL;
}

void api_server_stop(struct api_server *api)
{
    if (!api) return;
    /* MHD_stop_daemon closes the listening socket too, even one given with LISTEN_SOCKET. */
    for (size_t i = 0; i < api->ndaemons; i++) MHD_stop_daemon(api->daemons[i]);
    g_free(api);
}
