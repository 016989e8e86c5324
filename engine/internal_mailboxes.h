/* engine/internal_mailboxes.h — the POP3 server's storage hooks (SPEC §9): pop3/ asks, storage/
 * answers, on libuv's threadpool (a login hashes a password and waits for a commit; a message is
 * read; the end of a session waits for a commit), and the answer goes back to pop3/ on the loop.
 * Internal to engine/. */
#ifndef INLET_ENGINE_INTERNAL_MAILBOXES_H
#define INLET_ENGINE_INTERNAL_MAILBOXES_H

#include <uv.h>

#include "pop3/pop3.h"
#include "storage/store.h"

struct engine_mailboxes {
    struct store *store;
    uv_loop_t *loop;
};
/* Hooks for pop3_server_config.hooks; `mb` (and its store and loop) outlive the POP3 server. */
struct pop3_hooks engine_mailbox_hooks(const struct engine_mailboxes *mb);

#endif
