/* engine/internal_mailboxes.h — the POP3 server's storage hooks (SPEC §9): pop3/ asks, storage/
 * answers, on libuv's threadpool (a login hashes a password and waits for a commit; a message is
 * read; the end of a session waits for a commit), and the answer goes back to pop3/ on the loop.
 * Each open session's maildrop lock is a lease of --lease-seconds, renewed every third of it while
 * the session lives, so that a node that dies frees its mailboxes within a lease.
 * Internal to engine/. */
#ifndef INLET_ENGINE_INTERNAL_MAILBOXES_H
#define INLET_ENGINE_INTERNAL_MAILBOXES_H

#include <glib.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "pop3/pop3.h"
#include "storage/store.h"

struct engine_mailboxes {
    struct store *store;
    uv_loop_t *loop;
    int64_t lease_seconds;     /* a maildrop lock's lease */
    GHashTable *held;          /* struct pop3_call * → struct held_lock *: sessions holding a lock */
    uv_timer_t renew_timer;
    uv_async_t renew_async;    /* the writer answered a renewal */
    struct renewal *_Atomic renew_done; /* that answer, handed to the loop */
    bool renewing;             /* a renewal is out */
    bool stopped;
};
/* Loop thread, before the POP3 server starts: the renewal timer.  Exits (fatal) when memory runs
 * out. */
void engine_mailboxes_start(struct engine_mailboxes *mb, uv_loop_t *loop, struct store *store,
                            int64_t lease_seconds);
/* Loop thread, once the POP3 server has stopped (every session closed): stops the renewals. */
void engine_mailboxes_stop(struct engine_mailboxes *mb);
/* After the loop has ended.  A zeroed struct (never started) is fine. */
void engine_mailboxes_free(struct engine_mailboxes *mb);
/* Hooks for pop3_server_config.hooks; `mb` (and its store and loop) outlive the POP3 server. */
struct pop3_hooks engine_mailbox_hooks(struct engine_mailboxes *mb);

#endif
