/* engine/keys.c — the API key and the webhook signing key: settings, database, key file. */
#include "engine/internal_keys.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "storage/store.h"
#include "util/config.h"
#include "util/dburl.h"
#include "util/id.h"
#include "util/limits.h"
#include "util/log.h"

#define KEYS_FILE "keys"

static void wipe_free(char *s)
{
    if (!s) return;
    memset(s, 0, strlen(s));
    free(s);
}

void engine_keys_clear(struct engine_keys *keys)
{
    wipe_free(keys->api_key);
    wipe_free(keys->signing_key);
    wipe_free(keys->stored_api);
    wipe_free(keys->stored_signing);
    memset(keys, 0, sizeof *keys);
}

/* The database's key `name`: read it, or (generate) create it unless someone else did first. */
static int stored_key(struct store *st, const char *name, bool generate, char **out, char **err)
{
    enum store_status rc = store_get_meta(st, name, out);
    if (rc == STORE_OK) return 0;
    if (rc != STORE_ERR_NOT_FOUND) {
        *err = g_strdup_printf("cannot read %s from the database", name);
        return -1;
    }
    if (!generate) {
        g_autofree char *where = dburl_redact(store_path(st));
        *err = g_strdup_printf("no %s in the database %s yet: start inlet serve once first", name, where);
        return -1;
    }
    unsigned char raw[KEY_RANDOM_BYTES];
    char hex[2 * KEY_RANDOM_BYTES + 1];
    util_random_bytes(raw, sizeof raw);
    util_hex_encode(hex, raw, sizeof raw);
    rc = store_set_meta_if_absent(st, name, hex, out);
    memset(raw, 0, sizeof raw);
    memset(hex, 0, sizeof hex);
    if (rc != STORE_OK) {
        *err = g_strdup_printf("cannot store a new %s in the database%s", name,
                               rc == STORE_ERR_FULL ? ": disk full" : "");
        return -1;
    }
    return 0;
}

int engine_keys_resolve(struct store *st, const struct inlet_config *cfg, bool generate,
                        struct engine_keys *keys, char **err)
{
    memset(keys, 0, sizeof *keys);
    if (!cfg->api_key || !cfg->signing_key) {
        if (stored_key(st, "api_key", generate, &keys->stored_api, err) < 0 ||
            stored_key(st, "signing_key", generate, &keys->stored_signing, err) < 0) {
            engine_keys_clear(keys);
            return -1;
        }
    }
    keys->api_key = strdup(cfg->api_key ? cfg->api_key : keys->stored_api);
    keys->signing_key = strdup(cfg->signing_key ? cfg->signing_key : keys->stored_signing);
    if (!keys->api_key || !keys->signing_key) {
        engine_keys_clear(keys);
        *err = g_strdup("out of memory");
        return -1;
    }
    return 0;
}

int engine_keys_write_file(const char *data_dir, const struct engine_keys *keys, char **path, char **err)
{
    char *tmp = g_strdup_printf("%s/%s.XXXXXX", data_dir, KEYS_FILE);
    char *text = g_strdup_printf("api_key=%s\nsigning_key=%s\n", keys->stored_api,
                                 keys->stored_signing);
    size_t len = strlen(text), off = 0;
    int fd = mkstemp(tmp); /* 0600 */
    int ret = -1;

    *path = g_strdup_printf("%s/%s", data_dir, KEYS_FILE);
    if (fd < 0) {
        *err = g_strdup_printf("cannot create %s: %s", tmp, g_strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0600) < 0) goto fail;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) goto fail;
        off += (size_t)n;
    }
    if (fsync(fd) < 0) goto fail;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, *path) < 0) goto fail;
    int dfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    ret = 0;
    goto out;
fail:
    *err = g_strdup_printf("cannot write %s: %s", *path, g_strerror(errno));
    if (fd >= 0) close(fd);
    unlink(tmp);
out:
    memset(text, 0, len);
    g_free(text);
    g_free(tmp);
    if (ret < 0) g_clear_pointer(path, g_free);
    return ret;
}

int engine_print_keys(struct inlet_config *cfg)
{
    struct engine_keys keys;
    struct store *st = NULL;
    char *err = NULL;
    int status = 1;

    if (!cfg->api_key || !cfg->signing_key) {
        if (!store_exists(cfg->data_dir, cfg->database)) {
            g_autofree char *where = dburl_redact(*cfg->database ? cfg->database : cfg->data_dir);
            fprintf(stderr, "inlet: no keys yet: there is no database (%s); start inlet serve "
                            "once first\n", where);
            return 1;
        }
        st = store_open(cfg->data_dir, cfg->database, &err);
        if (!st) {
            fprintf(stderr, "inlet: cannot open storage: %s\n", err);
            free(err);
            return 1;
        }
    }
    if (engine_keys_resolve(st, cfg, false, &keys, &err) < 0) {
        fprintf(stderr, "inlet: %s\n", err);
        g_free(err);
    } else {
        printf("api_key=%s\nsigning_key=%s\n", keys.api_key, keys.signing_key);
        status = fflush(stdout) == 0 ? 0 : 1;
        engine_keys_clear(&keys);
    }
    store_close(st);
    return status;
}
