/* engine/internal_keys.h — the API key and the webhook signing key (SPEC §1); internal to engine/. */
#ifndef INLET_ENGINE_INTERNAL_KEYS_H
#define INLET_ENGINE_INTERNAL_KEYS_H

#include <stdbool.h>

struct inlet_config;
struct store;

struct engine_keys {
    char *api_key;       /* the keys in effect: a setting's, else the database's */
    char *signing_key;
    char *stored_api;    /* the database's (NULL when both keys come from settings) */
    char *stored_signing;
};

/* Fills `keys`.  A key given by a setting (--api-key, --api-key-file, or the signing ones) is used
 * as it is and never written to the database.  When one is not given, both database keys are read
 * (meta rows api_key and signing_key); with `generate`, a missing one is created (32 random bytes,
 * 64 lowercase hex) and written unless another node wrote one first (then that one is used).
 * 0, or -1 with *err (malloc'd). */
int engine_keys_resolve(struct store *st, const struct inlet_config *cfg, bool generate,
                        struct engine_keys *keys, char **err);
/* Writes <data_dir>/keys (0600, written to a temporary file, fsync'd, renamed): two lines
 * "api_key=..." and "signing_key=..." with the database's keys.  *path (malloc'd) is the file.
 * 0, or -1 with *err. */
int engine_keys_write_file(const char *data_dir, const struct engine_keys *keys, char **path, char **err);
/* Frees and wipes. */
void engine_keys_clear(struct engine_keys *keys);

#endif
