/* routes/registry.c — the one current route table (see routes.h "The registry").
 *
 * Two mutexes:
 *   `cur_lock` guards only the pointer `current`: a reader takes it for the few instructions of
 *       "load the pointer, take a reference", so a reader never sees a table whose last reference
 *       is being dropped, and never waits for a writer's compile or storage commit.
 *   `write_lock` serialises writers (route_registry_lock/unlock): the API holds it from compiling
 *       a change until the table built from it is published.
 * The old table's reference is dropped outside `cur_lock`: freeing a large table (every route's
 * compiled regexes) never blocks readers.  Readers that still hold the old table keep it alive;
 * routes shared by the old and the new table are reference-counted one by one. */
#include <pthread.h>
#include <stdlib.h>

#include "routes/routes.h"

struct route_registry {
    pthread_mutex_t cur_lock;
    struct route_table *current;   /* never NULL */
    pthread_mutex_t write_lock;
};

struct route_registry *route_registry_new(void)
{
    struct route_registry *reg = calloc(1, sizeof *reg);
    if (!reg) return NULL;
    reg->current = route_table_new(NULL, 0);
    if (!reg->current) {
        free(reg);
        return NULL;
    }
    pthread_mutex_init(&reg->cur_lock, NULL);
    pthread_mutex_init(&reg->write_lock, NULL);
    return reg;
}

void route_registry_free(struct route_registry *reg)
{
    if (!reg) return;
    route_table_unref(reg->current);
    pthread_mutex_destroy(&reg->cur_lock);
    pthread_mutex_destroy(&reg->write_lock);
    free(reg);
}

struct route_table *route_registry_current(struct route_registry *reg)
{
    pthread_mutex_lock(&reg->cur_lock);
    struct route_table *t = route_table_ref(reg->current);
    pthread_mutex_unlock(&reg->cur_lock);
    return t;
}

void route_registry_publish(struct route_registry *reg, struct route_table *take)
{
    if (!take) return;
    pthread_mutex_lock(&reg->cur_lock);
    struct route_table *old = reg->current;
    reg->current = take;
    pthread_mutex_unlock(&reg->cur_lock);
    route_table_unref(old);
}

void route_registry_lock(struct route_registry *reg)
{
    pthread_mutex_lock(&reg->write_lock);
}

void route_registry_unlock(struct route_registry *reg)
{
    pthread_mutex_unlock(&reg->write_lock);
}
