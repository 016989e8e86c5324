/* engine/main.c — the `inlet` command line (SPEC §1). */
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "engine/engine.h"
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
    if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "check-config") != 0) {
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
    log_set_level((enum log_level)cfg.log_level_value);
    status = engine_serve(&cfg);
out:
    config_free(&cfg);
    return status;
}
