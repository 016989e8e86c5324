/* util/config.h — every setting of inlet, declared once in a table (util/config.c).
 *
 * Each setting has a command-line option `--name`, an environment variable INLET_NAME (upper case,
 * '-' → '_'), and a key `name` (without dashes) in group [inlet] of a GLib key file.  Precedence:
 * command line > environment > file > default.  List settings repeat on the command line and are
 * comma-separated in the environment and the file; a higher source replaces a list as a whole. */
#ifndef INLET_UTIL_CONFIG_H
#define INLET_UTIL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct domain_set;

struct strlist {
    char **items;
    size_t count;
};

struct inlet_config {
    char *config_file;
    struct strlist smtp_listen;
    struct strlist http_listen;
    char *data_dir;
    char *database;
    struct strlist domains;
    char *hostname;
    int64_t max_message_size;
    int64_t max_recipients;
    int64_t max_connections;
    int64_t max_connections_per_ip;
    int64_t ipv6_prefix_per_client; /* an IPv6 client is its /N: caps and shares count it once */
    int64_t smtp_memory;            /* message bytes all SMTP sessions may hold (SPEC §2 452 4.3.1) */
    int64_t smtp_memory_per_client; /* of which one client (address or IPv6 /N) may hold */
    int64_t smtp_memory_per_message; /* DATA in memory per message; past it, to the body log */
    int64_t data_timeout;           /* DATA from 354 to the final dot at most this long */
    int64_t postmaster_rate;        /* postmaster recipients per client and hour; 0: no limit */
    int64_t smtp_timeout;
    int64_t max_hops;
    int64_t shutdown_grace;
    int64_t min_free_disk;
    int64_t route_quota;
    char *log_level;
    bool reject_unrouted;  /* RCPT that no route could match → 550 5.1.1 (SPEC §2, §4) */
    int64_t store_ttl;     /* seconds a stored copy is kept (SPEC §6) */
    int64_t mailbox_ttl;   /* seconds a mailbox message is kept by default (SPEC §9) */
    struct strlist pop3_listen;  /* POP3 listeners, STLS with tls_cert (SPEC §9); none: off */
    struct strlist pop3s_listen; /* POP3 with implicit TLS */
    char *pop3_plaintext_login;  /* "no", "loopback" or "yes" */
    int64_t pop3_timeout;        /* idle seconds per POP3 command */
    int64_t event_ttl;     /* seconds events and delivery history are kept (SPEC §6, §7) */
    int64_t failed_retention; /* seconds failed deliveries and their bytes are kept (SPEC §6) */
    int64_t console_session_ttl; /* seconds a web console session lasts (SPEC §7.1) */
    /* Several nodes on one database (SPEC §8). */
    char *node_id;         /* "" → hostname:pid:random, made by the store */
    int64_t lease_seconds; /* how long a claim on a delivery or an unrouted message lasts */
    char *public_url;      /* base of storage URLs, no trailing '/'; "" when not given: the
                              engine derives it from the first HTTP listener once bound */
    /* Deliveries (SPEC §5). */
    char *webhook_format;  /* "json" or "mailgun" */
    struct strlist retry_schedule_text;
    int64_t *retry_schedule; /* derived: seconds, retry_count entries */
    size_t retry_count;
    int64_t webhook_timeout;
    int64_t webhook_connect_timeout;
    int64_t inline_attachments_max;
    int64_t delivery_memory_max; /* bytes of delivery payloads held in memory */
    char *relay;           /* smtp://[user@]host:port or smtps://..., "" for none */
    char *relay_password_file;
    char *relay_password;  /* derived: the file's first line */
    char *relay_tls;       /* "require", "opportunistic" or "cleartext-auth" */
    char *bounce_address;  /* "" → the original sender */
    /* STARTTLS (SPEC §1): both or neither. */
    char *tls_cert;
    char *tls_key;
    /* Sender authentication (SPEC §2): SPF, DKIM, DMARC at receipt. */
    bool sender_auth;
    char *dns_server;      /* "" → /etc/resolv.conf */
    int64_t auth_budget;   /* milliseconds for one message's checks */
    bool spf_reject;       /* SPF fail → 550 5.7.23 */
    bool dmarc_reject;     /* DMARC fail under p=reject → 550 5.7.1 */
    char *public_suffix_list;
    /* Keys (SPEC §1).  After config_load() api_key/signing_key hold the key from the option or
     * the environment or the first line of the file (NULL when none is given: `inlet serve` then
     * uses the database's, generating them on first start). */
    char *api_key;
    char *api_key_file;
    char *signing_key;
    char *signing_key_file;

    /* Derived by config_load() after validation. */
    struct domain_set *domain_set;
    int log_level_value;
};

/* Loads defaults, then the file, the environment and argv[0..argc-1] (options only, the subcommand
 * already removed), and validates everything.  0 on success; -1 with *err (malloc'd, possibly
 * several lines, one per problem).  `cfg` must be freed with config_free() either way. */
int config_load(struct inlet_config *cfg, int argc, char **argv, char **err);
void config_free(struct inlet_config *cfg);
/* The options section of --help, generated from the table. */
void config_print_help(FILE *out);
/* "key=value" for every setting, as `inlet check-config` shows them; a key shows as "(set)". */
void config_print(const struct inlet_config *cfg, FILE *out);

#endif
