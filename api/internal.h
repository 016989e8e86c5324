/* api/internal.h — shared by the api/ sources only; not a face. */
#ifndef INLET_API_INTERNAL_H
#define INLET_API_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>

#include "api/api.h"

struct api_server {
    struct MHD_Daemon *daemons[16];
    size_t ndaemons;
    struct api_config cfg;
    struct store *store;
};

/* Queues `body` (taken; its reference is dropped) as the JSON answer with `status`. */
enum MHD_Result api_reply_json(struct MHD_Connection *conn, unsigned status, json_t *body);
enum MHD_Result api_reply_error(struct MHD_Connection *conn, unsigned status, const char *message);

enum MHD_Result api_health(struct api_server *api, struct MHD_Connection *conn);

#endif
