/* engine/main.c — the `inlet` command line (SPEC §1). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "engine/engine.h"
#include "engine/migrate.h"
#include "message/message.h"
#include "routes/routes.h"
#include "storage/store.h"
#include "util/config.h"
#include "util/log.h"

static void usage(FILE *out)
{
    fprintf(out,
            "inlet %s — inbound mail route engine\n\n"
            "Usage:\n"
            "  inlet serve [--config FILE] [options]     run the engine\n"
            "  inlet check-config [--config FILE] [options]\n"
            "                                           validate the settings and exit 0/1\n"
            "  inlet keys [--data-dir DIR | --database URL]\n"
            "                                           print the API key and the signing key\n"
            "  inlet backup FILE [--data-dir DIR | --database URL]\n"
            "                                           write a consistent copy of the database to\n"
            "                                           FILE (safe while inlet serve runs)\n"
            "  inlet migrate --from DATA-DIR|SQLITE-FILE --to postgresql://...\n"
            "                                           copy a single node's database (stopped) into\n"
            "                                           an empty PostgreSQL database; run it again to\n"
            "                                           finish an interrupted copy\n"
            "  inlet parse FILE [--recipient ADDR] [--sender ADDR] [--id ID]\n"
            "                                           print the parsed message as the webhook\n"
            "                                           JSON (SPEC §5, without signature fields)\n"
            "  inlet --help | --version\n\n"
            "Options:\n",
            INLET_VERSION);
    config_print_help(out);
}

static void version(void)
{
    char gmime[64], pcre[64];
    message_lib_version(gmime, sizeof gmime);
    route_lib_version(pcre, sizeof pcre);
    printf("inlet %s\n%s, %s, schema %d\n", INLET_VERSION, gmime, pcre, store_schema_version());
}

/* `inlet parse`: the message JSON of one file on stdout, indented by 2, keys in SPEC §5 order,
 * UTF-8, a trailing newline; the same file always gives the same bytes.  Exit 0 for any content
 * (even not MIME at all), 1 when the file cannot be read, 2 for a usage error. */
static int parse_command(int argc, char **argv)
{
    const char *file = NULL;
    struct message_json_options opts = {.recipient = "", .sender = "", .id = "",
                                        .inline_attachments_max = 10485760};
    for (int i = 0; i < argc; i++) {
        const char **slot = strcmp(argv[i], "--recipient") == 0 ? &opts.recipient
                            : strcmp(argv[i], "--sender") == 0  ? &opts.sender
                            : strcmp(argv[i], "--id") == 0      ? &opts.id
                                                                : NULL;
        if (slot && i + 1 < argc) {
            *slot = argv[++i];
        } else if (!slot && !file && argv[i][0] != '-') {
            file = argv[i];
        } else {
            fprintf(stderr, "inlet parse: unexpected argument \"%s\" (try inlet --help)\n", argv[i]);
            return 2;
        }
    }
    if (!file) {
        fprintf(stderr, "inlet parse: no file given (inlet parse FILE)\n");
        return 2;
    }
    gchar *data = NULL;
    gsize len = 0;
    GError *err = NULL;
    if (!g_file_get_contents(file, &data, &len, &err)) {
        fprintf(stderr, "inlet parse: cannot read %s: %s\n", file, err->message);
        g_error_free(err);
        return 1;
    }
    message_lib_init();
    struct message *m = message_parse((const uint8_t *)data, len);
    json_t *j = message_to_json(m, &opts);
    int status = json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 &&
                 fputs("\n", stdout) >= 0 && fflush(stdout) == 0 ? 0 : 1;
    if (status) fprintf(stderr, "inlet parse: cannot write the JSON\n");
    json_decref(j);
    message_free(m);
    message_lib_shutdown();
    g_free(data);
    return status;
}

/* Loads the settings of a subcommand; prints the problems and returns -1 when they are wrong. */
static int load_config(struct inlet_config *cfg, int argc, char **argv)
{
    char *err = NULL;
    if (config_load(cfg, argc, argv, &err) == 0) return 0;
    fprintf(stderr, "inlet: invalid configuration:\n");
    for (char **lines = g_strsplit(err, "\n", -1), **l = lines; lines; lines = NULL) {
        for (; *l; l++) fprintf(stderr, "  %s\n", *l);
        g_strfreev(lines);
    }
    g_free(err);
    return -1;
}

/* `inlet backup FILE [settings]`: SQLite's VACUUM INTO from a read transaction, so the copy is
 * consistent while `inlet serve` goes on writing.  Restore = stop, put FILE as <data-dir>/inlet.db
 * (no -wal beside it), start. */
static int backup_command(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-') {
        fprintf(stderr, "inlet backup: the backup file name is missing (inlet backup FILE [--data-dir DIR])\n");
        return 2;
    }
    const char *file = argv[0];
    struct inlet_config cfg;
    int status = 1;
    struct store *st = NULL;
    char *err = NULL;
    if (load_config(&cfg, argc - 1, argv + 1) < 0) goto out;
    log_set_level(LOG_WARN);
    if (!store_exists(cfg.data_dir, cfg.database)) {
        fprintf(stderr, "inlet backup: there is no database in %s\n", cfg.data_dir);
        goto out;
    }
    st = store_open(cfg.data_dir, cfg.database, &err);
    if (!st) {
        fprintf(stderr, "inlet backup: cannot open storage: %s\n", err);
        goto out;
    }
    if (store_backup(st, file, &err) != STORE_OK) {
        fprintf(stderr, "inlet backup: %s\n", err ? err : "failed");
        goto out;
    }
    printf("backup written to %s\n", file);
    status = 0;
out:
    free(err);
    store_close(st);
    config_free(&cfg);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        version();
        return 0;
    }
    if (strcmp(cmd, "parse") == 0) {
        if (argc > 2 && strcmp(argv[2], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        return parse_command(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "migrate") == 0) {
        if (argc > 2 && strcmp(argv[2], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        return engine_migrate_command(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "backup") == 0) {
        if (argc > 2 && strcmp(argv[2], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        return backup_command(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "check-config") != 0 &&
        strcmp(cmd, "keys") != 0) {
        fprintf(stderr, "inlet: unknown command \"%s\" (try inlet --help)\n", cmd);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
    }
    struct inlet_config cfg;
    int status = 1;
    if (load_config(&cfg, argc - 2, argv + 2) < 0) goto out;
    if (strcmp(cmd, "check-config") == 0) {
        config_print(&cfg, stdout);
        printf("configuration OK\n");
        status = 0;
        goto out;
    }
    if (strcmp(cmd, "keys") == 0) {
        /* stdout is the keys; only problems go to stderr. */
        log_set_level(LOG_WARN);
        status = engine_print_keys(&cfg);
        goto out;
    }
    log_set_level((enum log_level)cfg.log_level_value);
    status = engine_serve(&cfg);
out:
    config_free(&cfg);
    return status;
}
