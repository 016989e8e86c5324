/* util/config.c — the settings table and its three sources (see config.h). */
#include "util/config.h"

#include <errno.h>
#include <glib.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/dburl.h"
#include "util/domains.h"
#include "util/limits.h"
#include "util/log.h"
#include "util/net.h"

enum setting_type { SET_STR, SET_LIST, SET_INT, SET_BOOL };

struct setting {
    const char *name; /* option name without dashes: also the key-file key */
    enum setting_type type;
    size_t offset;    /* into struct inlet_config */
    const char *def;  /* default, as text (lists comma-separated); NULL for none */
    int64_t min, max; /* SET_INT bounds */
    const char *metavar;
    const char *help;
};

#define OFF(field) offsetof(struct inlet_config, field)

/* Every setting of inlet, in the order --help shows them. */
static const struct setting settings[] = {
    {"config", SET_STR, OFF(config_file), NULL, 0, 0, "FILE",
     "key file with an [inlet] group; keys are the option names"},
    {"smtp-listen", SET_LIST, OFF(smtp_listen), "127.0.0.1:2525", 0, 0, "HOST:PORT",
     "SMTP listener (repeatable; IPv6 as [::1]:2525)"},
    {"http-listen", SET_LIST, OFF(http_listen), "127.0.0.1:8025", 0, 0, "HOST:PORT",
     "HTTP API listener (repeatable)"},
    {"data-dir", SET_STR, OFF(data_dir), "./inlet-data", 0, 0, "DIR",
     "data folder, created 0700 (SQLite database inside)"},
    {"database", SET_STR, OFF(database), "", 0, 0, "URL",
     "empty: SQLite in the data dir; sqlite:PATH; postgresql://user@host:port/db (password never shown)"},
    {"domain", SET_LIST, OFF(domains), NULL, 0, 0, "NAME",
     "hosted domain (repeatable); *.example.com hosts every subdomain"},
    {"hostname", SET_STR, OFF(hostname), "", 0, 0, "NAME",
     "name in the SMTP greeting and Received: headers (default: the host name)"},
    {"max-message-size", SET_INT, OFF(max_message_size), "26214400", LIMIT_MESSAGE_SIZE_MIN,
     LIMIT_MESSAGE_SIZE_MAX, "BYTES", "largest message accepted, advertised in EHLO SIZE"},
    {"max-recipients", SET_INT, OFF(max_recipients), "100", 1, LIMIT_RECIPIENTS_MAX, "N",
     "recipients per SMTP transaction"},
    {"max-connections", SET_INT, OFF(max_connections), "1000", 1, LIMIT_CONNECTIONS_MAX, "N",
     "SMTP connections at once"},
    {"max-connections-per-ip", SET_INT, OFF(max_connections_per_ip), "50", 1,
     LIMIT_CONNECTIONS_MAX, "N", "SMTP connections at once from one client address"},
    {"ipv6-prefix-per-client", SET_INT, OFF(ipv6_prefix_per_client), "64", 1, 128, "BITS",
     "an IPv6 client is its /BITS network for the per-client caps and shares"},
    {"smtp-memory", SET_INT, OFF(smtp_memory), "1073741824", LIMIT_MESSAGE_SIZE_MIN, LIMIT_SMTP_MEMORY_MAX,
     "BYTES", "message bytes held by all SMTP sessions together; past it DATA gets 452 4.3.1"},
    {"smtp-memory-per-client", SET_INT, OFF(smtp_memory_per_client), "268435456", LIMIT_MESSAGE_SIZE_MIN,
     LIMIT_SMTP_MEMORY_MAX, "BYTES", "of --smtp-memory, what the sessions of one client may hold"},
    {"smtp-memory-per-message", SET_INT, OFF(smtp_memory_per_message), "262144", 0, LIMIT_SMTP_MEMORY_MAX,
     "BYTES", "DATA held in memory per message; past it the message is written out as it arrives (SQLite)"},
    {"data-timeout", SET_INT, OFF(data_timeout), "900", 1, LIMIT_DATA_TIMEOUT_MAX, "SECONDS",
     "one DATA, from 354 to the final dot, at most this long; then 421 4.4.2"},
    {"postmaster-rate", SET_INT, OFF(postmaster_rate), "30", 0, LIMIT_POSTMASTER_RATE_MAX, "N",
     "postmaster recipients accepted per client and hour (0: no limit); then 450 4.7.1"},
    {"smtp-timeout", SET_INT, OFF(smtp_timeout), "300", 1, LIMIT_TIMEOUT_MAX, "SECONDS",
     "idle time allowed per SMTP command or data chunk"},
    {"max-hops", SET_INT, OFF(max_hops), "50", 1, LIMIT_HOPS_MAX, "N",
     "Received: headers allowed before 554 5.4.6 (mail loop)"},
    {"shutdown-grace", SET_INT, OFF(shutdown_grace), "30", 0, LIMIT_TIMEOUT_MAX, "SECONDS",
     "on SIGTERM, time given to SMTP transactions in flight"},
    {"min-free-disk", SET_INT, OFF(min_free_disk), "104857600", 0, INT64_MAX, "BYTES",
     "free space under the data dir below which /healthz answers 503"},
    {"route-quota", SET_INT, OFF(route_quota), "1000", 0, ROUTE_QUOTA_MAX, "N",
     "routes at most; POST /v3/routes answers 400 past it"},
    {"log-level", SET_STR, OFF(log_level), "info", 0, 0, "LEVEL", "error, warn, info or debug"},
    {"reject-unrouted", SET_BOOL, OFF(reject_unrouted), "yes", 0, 0, "yes|no",
     "refuse at RCPT (550 5.1.1) a hosted recipient that no route could match"},
    {"store-ttl", SET_INT, OFF(store_ttl), "259200", 1, 315360000, "SECONDS",
     "how long a copy kept by store() can be fetched"},
    {"mailbox-ttl", SET_INT, OFF(mailbox_ttl), "5184000", 1, MAILBOX_TTL_MAX, "SECONDS",
     "how long a message filed by store(mailbox=...) stays without ttl= or a mailbox retention"},
    {"pop3-listen", SET_LIST, OFF(pop3_listen), NULL, 0, 0, "HOST:PORT",
     "POP3 listener for mailboxes, STLS offered with --tls-cert (repeatable; default: none)"},
    {"pop3s-listen", SET_LIST, OFF(pop3s_listen), NULL, 0, 0, "HOST:PORT",
     "POP3 listener with implicit TLS, usually port 995 (repeatable; needs --tls-cert)"},
    {"pop3-plaintext-login", SET_STR, OFF(pop3_plaintext_login), "no", 0, 0, "no|loopback|yes",
     "POP3 logins without TLS: refused, allowed from loopback addresses only, or allowed"},
    {"pop3-timeout", SET_INT, OFF(pop3_timeout), "600", 1, LIMIT_TIMEOUT_MAX, "SECONDS",
     "idle time allowed per POP3 command (RFC 1939: at least 10 minutes)"},
    {"event-ttl", SET_INT, OFF(event_ttl), "604800", 1, 315360000, "SECONDS",
     "how long events and delivery history are kept"},
    {"failed-retention", SET_INT, OFF(failed_retention), "259200", 1, 315360000, "SECONDS",
     "how long failed deliveries (and their message bytes) are kept for replay"},
    {"console-session-ttl", SET_INT, OFF(console_session_ttl), "43200", LIMIT_CONSOLE_SESSION_TTL_MIN,
     LIMIT_CONSOLE_SESSION_TTL_MAX, "SECONDS", "a web console login lasts this long (/ui/)"},
    {"node-id", SET_STR, OFF(node_id), "", 0, 0, "NAME",
     "this node's name in claims on shared work (default: hostname:pid:random, logged at start)"},
    {"lease-seconds", SET_INT, OFF(lease_seconds), "20", LEASE_SECONDS_MIN, LEASE_SECONDS_MAX, "SECONDS",
     "a claim on a delivery or an unrouted message, and a POP3 session's maildrop lock, lasts this "
     "long unless renewed (PostgreSQL: what a dead node holds goes to the others after it)"},
    {"public-url", SET_STR, OFF(public_url), "", 0, 0, "URL",
     "base of storage URLs (default http://<first --http-listen>; required with a wildcard listener)"},
    {"webhook-format", SET_STR, OFF(webhook_format), "json", 0, 0, "json|mailgun",
     "default format of webhook POSTs"},
    {"retry-schedule", SET_LIST, OFF(retry_schedule_text), "600,600,900,1800,3600,7200,14400", 0, 0,
     "S1,S2,...", "seconds from a failed attempt to the next (each +-10% jitter); then failed"},
    {"webhook-timeout", SET_INT, OFF(webhook_timeout), "60", 1, LIMIT_TIMEOUT_MAX, "SECONDS",
     "whole webhook POST (or relay session) at most this long"},
    {"webhook-connect-timeout", SET_INT, OFF(webhook_connect_timeout), "10", 1, LIMIT_TIMEOUT_MAX,
     "SECONDS", "connecting to a webhook (or the relay) at most this long"},
    {"inline-attachments-max", SET_INT, OFF(inline_attachments_max), "10485760", 0,
     LIMIT_MESSAGE_SIZE_MAX, "BYTES", "attachment bytes inlined in a JSON POST; the rest by URL"},
    {"delivery-memory-max", SET_INT, OFF(delivery_memory_max), "268435456", 1048576, (int64_t)1 << 40, "BYTES",
     "bytes of delivery payloads held in memory at most (built, waiting or in flight); the rest waits "
     "in the database"},
    {"relay", SET_STR, OFF(relay), "", 0, 0, "URL",
     "smtp://[user@]host:port (or smtps://) for forward(\"address\") and resends"},
    {"relay-password-file", SET_STR, OFF(relay_password_file), NULL, 0, 0, "FILE",
     "file whose first line is the relay password"},
    {"relay-tls", SET_STR, OFF(relay_tls), "opportunistic", 0, 0, "require|opportunistic|cleartext-auth",
     "STARTTLS to the relay: required, or used when offered (required anyway when credentials are "
     "set, unless cleartext-auth)"},
    {"bounce-address", SET_STR, OFF(bounce_address), "", 0, 0, "ADDR",
     "envelope sender of forwards (default: the original sender)"},
    {"tls-cert", SET_STR, OFF(tls_cert), NULL, 0, 0, "FILE",
     "PEM certificate chain: enables STARTTLS (with --tls-key)"},
    {"tls-key", SET_STR, OFF(tls_key), NULL, 0, 0, "FILE", "PEM private key of --tls-cert"},
    {"sender-auth", SET_BOOL, OFF(sender_auth), "no", 0, 0, "yes|no",
     "check SPF, DKIM and DMARC at receipt; verdicts in Authentication-Results and X-Mailgun-Spf"},
    {"dns-server", SET_STR, OFF(dns_server), "", 0, 0, "IP[:PORT]",
     "resolver for --sender-auth (default: /etc/resolv.conf)"},
    {"auth-budget", SET_INT, OFF(auth_budget), "5000", LIMIT_AUTH_BUDGET_MIN, LIMIT_AUTH_BUDGET_MAX, "MS",
     "time for one message's checks; past it the rest is temperror and the message is accepted"},
    {"spf-reject", SET_BOOL, OFF(spf_reject), "no", 0, 0, "yes|no",
     "refuse a message whose SPF verdict is fail (550 5.7.23)"},
    {"dmarc-reject", SET_BOOL, OFF(dmarc_reject), "no", 0, 0, "yes|no",
     "refuse a message that fails DMARC under p=reject, within its pct= sample (550 5.7.1)"},
    {"public-suffix-list", SET_STR, OFF(public_suffix_list), "/usr/share/publicsuffix/public_suffix_list.dat", 0, 0,
     "FILE", "the Public Suffix List, for DMARC's organizational domains"},
    {"api-key", SET_STR, OFF(api_key), NULL, 0, 0, "KEY",
     "HTTP Basic password of user api (default: generated on first start, kept in the database)"},
    {"api-key-file", SET_STR, OFF(api_key_file), NULL, 0, 0, "FILE",
     "file holding the API key (its first line, or its api_key= line)"},
    {"signing-key", SET_STR, OFF(signing_key), NULL, 0, 0, "KEY",
     "HMAC key of webhook signatures (default: generated, kept in the database)"},
    {"signing-key-file", SET_STR, OFF(signing_key_file), NULL, 0, 0, "FILE",
     "file holding the signing key (its first line, or its signing_key= line)"},
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

/* Keys are never printed: check-config shows "(set)". */
static bool is_secret(const struct setting *s)
{
    return s->offset == OFF(api_key) || s->offset == OFF(signing_key);
}

static void *field(struct inlet_config *cfg, const struct setting *s)
{
    return (char *)cfg + s->offset;
}

static const struct setting *find_setting(const char *name, size_t len)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strlen(settings[i].name) == len && strncmp(settings[i].name, name, len) == 0)
            return &settings[i];
    return NULL;
}

static void strlist_clear(struct strlist *l)
{
    for (size_t i = 0; i < l->count; i++) g_free(l->items[i]);
    g_free(l->items);
    l->items = NULL;
    l->count = 0;
}

static void strlist_push(struct strlist *l, const char *item)
{
    l->items = g_renew(char *, l->items, l->count + 1);
    l->items[l->count++] = g_strdup(item);
}

/* Sets one setting from text.  `append` adds to a list instead of replacing it (repeated
 * command-line options).  Problems go to `errors`, prefixed with where the value came from. */
static void set_value(struct inlet_config *cfg, const struct setting *s, const char *value,
                      bool append, const char *origin, GString *errors)
{
    switch (s->type) {
    case SET_STR: {
        char **p = field(cfg, s);
        g_free(*p);
        *p = g_strdup(value);
        break;
    }
    case SET_LIST: {
        struct strlist *l = field(cfg, s);
        if (!append) strlist_clear(l);
        char **parts = g_strsplit(value, ",", -1);
        for (char **p = parts; *p; p++) {
            char *item = g_strstrip(*p);
            if (*item) strlist_push(l, item);
        }
        g_strfreev(parts);
        break;
    }
    case SET_BOOL: {
        bool *b = field(cfg, s);
        if (g_ascii_strcasecmp(value, "yes") == 0 || g_ascii_strcasecmp(value, "true") == 0)
            *b = true;
        else if (g_ascii_strcasecmp(value, "no") == 0 || g_ascii_strcasecmp(value, "false") == 0)
            *b = false;
        else
            g_string_append_printf(errors, "%s: --%s: \"%s\" is not yes or no\n", origin, s->name, value);
        break;
    }
    case SET_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end != '\0') {
            g_string_append_printf(errors, "%s: --%s: \"%s\" is not a whole number\n", origin,
                                   s->name, value);
        } else if (v < s->min || v > s->max) {
            g_string_append_printf(errors, "%s: --%s: %lld is out of range (%lld..%lld)\n",
                                   origin, s->name, v, (long long)s->min, (long long)s->max);
        } else {
            *(int64_t *)field(cfg, s) = v;
        }
        break;
    }
    }
}

static void load_defaults(struct inlet_config *cfg, GString *errors)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].def) set_value(cfg, &settings[i], settings[i].def, false, "default", errors);
}

static void load_file(struct inlet_config *cfg, const char *path, GString *errors)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) gerr = NULL;
    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &gerr)) {
        g_string_append_printf(errors, "config file %s: %s\n", path, gerr->message);
        return;
    }
    gsize nkeys = 0;
    g_auto(GStrv) keys = g_key_file_get_keys(kf, "inlet", &nkeys, NULL);
    for (gsize k = 0; k < nkeys; k++) {
        /* Accept smtp_listen as well as smtp-listen. */
        g_autofree char *name = g_strdelimit(g_strdup(keys[k]), "_", '-');
        const struct setting *s = find_setting(name, strlen(name));
        if (!s || s->offset == OFF(config_file)) {
            g_string_append_printf(errors, "config file %s: unknown key \"%s\"\n", path, keys[k]);
            continue;
        }
        g_autofree char *value = g_key_file_get_string(kf, "inlet", keys[k], NULL);
        if (value) set_value(cfg, s, g_strstrip(value), false, path, errors);
    }
}

static void load_env(struct inlet_config *cfg, GString *errors)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        char var[64] = "INLET_";
        size_t n = strlen(var);
        for (const char *p = settings[i].name; *p && n < sizeof var - 1; p++)
            var[n++] = *p == '-' ? '_' : g_ascii_toupper(*p);
        var[n] = '\0';
        const char *value = getenv(var);
        if (value) set_value(cfg, &settings[i], value, false, var, errors);
    }
}

/* Options: --name VALUE or --name=VALUE.  `apply` false only finds --config. */
static void load_argv(struct inlet_config *cfg, int argc, char **argv, bool apply, GString *errors)
{
    bool list_seen[NSETTINGS] = {false};
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0) {
            if (apply) g_string_append_printf(errors, "unexpected argument \"%s\"\n", arg);
            continue;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct setting *s = find_setting(name, len);
        const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
        if (!s) {
            if (apply) g_string_append_printf(errors, "unknown option \"--%.*s\"\n", (int)len, name);
            continue;
        }
        if (!value) {
            if (apply) g_string_append_printf(errors, "option --%s needs a value\n", s->name);
            continue;
        }
        if (!eq) i++;
        bool is_config = s->offset == OFF(config_file);
        if (apply != is_config) {
            size_t idx = (size_t)(s - settings);
            set_value(cfg, s, value, s->type == SET_LIST && list_seen[idx], "command line", errors);
            list_seen[idx] = true;
        }
    }
}

static void validate_listeners(const struct strlist *l, const char *what, GString *errors)
{
    if (l->count == 0) g_string_append_printf(errors, "--%s: at least one listener is needed\n", what);
    if (l->count > LIMIT_LISTENERS_MAX)
        g_string_append_printf(errors, "--%s: more than %d listeners\n", what, LIMIT_LISTENERS_MAX);
    for (size_t i = 0; i < l->count; i++) {
        struct sockaddr_storage ss;
        char *err = NULL;
        if (net_parse_listen(l->items[i], &ss, &err) < 0) {
            g_string_append_printf(errors, "--%s: %s\n", what, err);
            g_free(err);
        }
    }
}

/* A key must be visible ASCII (no spaces: it goes into HTTP Basic and key files), 1..KEY_MAX. */
static bool key_valid(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > KEY_MAX) return false;
    for (const char *p = key; *p; p++)
        if (*p < 0x21 || *p > 0x7e) return false;
    return true;
}

/* The key in `path`: the value of a line `<label>=...` when there is one (so <data-dir>/keys of
 * another node can be given as it is), else the first line; surrounding white space dropped.
 * NULL with the problem in errors. */
static char *read_key_file(const char *path, const char *label, const char *opt, GString *errors)
{
    char *text = NULL;
    gsize len = 0;
    g_autoptr(GError) gerr = NULL;
    if (!g_file_get_contents(path, &text, &len, &gerr)) {
        g_string_append_printf(errors, "--%s: %s\n", opt, gerr->message);
        return NULL;
    }
    if (len > KEY_FILE_MAX || memchr(text, '\0', len)) {
        g_string_append_printf(errors, "--%s: %s is not a key file\n", opt, path);
        g_free(text);
        return NULL;
    }
    char **lines = g_strsplit(text, "\n", -1);
    g_free(text);
    char *key = NULL;
    size_t llen = strlen(label);
    for (char **l = lines; *l && !key; l++) {
        char *line = g_strstrip(*l);
        if (strncmp(line, label, llen) == 0 && line[llen] == '=') key = g_strdup(g_strstrip(line + llen + 1));
    }
    if (!key && lines[0]) key = g_strdup(g_strstrip(lines[0]));
    g_strfreev(lines);
    if (!key || !*key) {
        g_string_append_printf(errors, "--%s: %s holds no key\n", opt, path);
        g_free(key);
        return NULL;
    }
    return key;
}

/* --X-key and --X-key-file: at most one of them; the file is read now, so that check-config
 * reports a missing or empty file. */
static void validate_key(char **key, char **file, const char *opt, const char *label,
                         GString *errors)
{
    if (*key && !**key) g_clear_pointer(key, g_free); /* an empty value means "not given" */
    if (*file && !**file) g_clear_pointer(file, g_free);
    if (*key && *file) {
        g_string_append_printf(errors, "--%s and --%s-file are both given; use one\n", opt, opt);
        return;
    }
    if (*file) {
        char fileopt[64];
        snprintf(fileopt, sizeof fileopt, "%s-file", opt);
        *key = read_key_file(*file, label, fileopt, errors);
        if (!*key) return;
    }
    if (*key && !key_valid(*key))
        g_string_append_printf(errors,
                               "--%s: a key is 1 to %d visible ASCII characters (no spaces)\n",
                               opt, KEY_MAX);
}

static void validate_retry_schedule(struct inlet_config *cfg, GString *errors)
{
    const struct strlist *l = &cfg->retry_schedule_text;
    if (l->count > LIMIT_RETRIES_MAX) {
        g_string_append_printf(errors, "--retry-schedule: more than %d retries\n", LIMIT_RETRIES_MAX);
        return;
    }
    cfg->retry_schedule = g_new0(int64_t, l->count + 1);
    cfg->retry_count = l->count;
    for (size_t i = 0; i < l->count; i++) {
        char *end = NULL;
        const char *t = l->items[i];
        gint64 v = g_ascii_strtoll(t, &end, 10);
        if (!*t || *end || v < 1 || v > LIMIT_RETRY_DELAY_MAX) {
            g_string_append_printf(errors, "--retry-schedule: \"%s\" is not a delay in seconds (1..%d)\n", t,
                                   LIMIT_RETRY_DELAY_MAX);
            return;
        }
        cfg->retry_schedule[i] = v;
    }
}

/* The base of storage URLs: given, or (engine) http://<the first HTTP listener's bound address>,
 * which a wildcard address cannot be: no client could reach "0.0.0.0". */
static void validate_public_url(struct inlet_config *cfg, GString *errors)
{
    char *u = cfg->public_url;
    if (u && *u) {
        if (!g_str_has_prefix(u, "http://") && !g_str_has_prefix(u, "https://"))
            g_string_append_printf(errors, "--public-url: \"%s\" is not an http:// or https:// URL\n", u);
        size_t n = strlen(u);
        while (n > 0 && u[n - 1] == '/') u[--n] = '\0';
        return;
    }
    if (cfg->http_listen.count == 0) return;
    struct sockaddr_storage ss;
    char *err = NULL;
    if (net_parse_listen(cfg->http_listen.items[0], &ss, &err) < 0) {
        g_free(err); /* reported by validate_listeners */
        return;
    }
    if (net_is_wildcard((struct sockaddr *)&ss))
        g_string_append_printf(errors, "--public-url is required when --http-listen is a wildcard address (%s)\n",
                               cfg->http_listen.items[0]);
}

static void validate_deliveries(struct inlet_config *cfg, GString *errors)
{
    if (strcmp(cfg->webhook_format, "json") != 0 && strcmp(cfg->webhook_format, "mailgun") != 0)
        g_string_append_printf(errors, "--webhook-format: \"%s\" is not json or mailgun\n", cfg->webhook_format);
    if (strcmp(cfg->relay_tls, "require") != 0 && strcmp(cfg->relay_tls, "opportunistic") != 0 &&
        strcmp(cfg->relay_tls, "cleartext-auth") != 0)
        g_string_append_printf(errors, "--relay-tls: \"%s\" is not require, opportunistic or cleartext-auth\n",
                               cfg->relay_tls);
    if (*cfg->relay && !g_str_has_prefix(cfg->relay, "smtp://") && !g_str_has_prefix(cfg->relay, "smtps://"))
        g_string_append_printf(errors, "--relay: \"%s\" is not an smtp:// or smtps:// URL\n", cfg->relay);
    if (cfg->relay_password_file && *cfg->relay_password_file) {
        cfg->relay_password = read_key_file(cfg->relay_password_file, "password", "relay-password-file", errors);
        if (cfg->relay_password && !*cfg->relay) 
            g_string_append(errors, "--relay-password-file is given without --relay\n");
    }
    if (*cfg->bounce_address && (strchr(cfg->bounce_address, '<') || strchr(cfg->bounce_address, '>') ||
                                 strpbrk(cfg->bounce_address, " \r\n")))
        g_string_append_printf(errors, "--bounce-address: \"%s\" is not a bare address\n", cfg->bounce_address);
    validate_retry_schedule(cfg, errors);
}

static void validate_database(const struct inlet_config *cfg, GString *errors)
{
    if (dburl_kind(cfg->database) != DBURL_INVALID) return;
    g_autofree char *shown = dburl_redact(cfg->database);
    g_string_append_printf(errors, "--database: \"%s\" is not sqlite:PATH or a postgresql:// URL\n", shown);
}

/* A node id goes into claims and logs: visible ASCII, no spaces, bounded. */
static void validate_node_id(const struct inlet_config *cfg, GString *errors)
{
    const char *id = cfg->node_id;
    bool ok = strlen(id) <= NODE_ID_MAX;
    for (const char *p = id; ok && *p; p++) ok = *p > ' ' && *p < 0x7f && *p != '"';
    if (!ok)
        g_string_append_printf(errors, "--node-id: at most %d visible ASCII characters (no spaces, no '\"')\n",
                               NODE_ID_MAX);
}

static void validate_tls(struct inlet_config *cfg, GString *errors)
{
    const bool cert = cfg->tls_cert && *cfg->tls_cert, key = cfg->tls_key && *cfg->tls_key;
    if (cert != key) {
        g_string_append(errors, "--tls-cert and --tls-key go together\n");
        return;
    }
    if (cert && access(cfg->tls_cert, R_OK) != 0)
        g_string_append_printf(errors, "--tls-cert: cannot read %s: %s\n", cfg->tls_cert, g_strerror(errno));
    if (key && access(cfg->tls_key, R_OK) != 0)
        g_string_append_printf(errors, "--tls-key: cannot read %s: %s\n", cfg->tls_key, g_strerror(errno));
}

/* A client's share must hold the largest message (and our Received:), and fit the whole. */
static void validate_smtp_memory(const struct inlet_config *cfg, GString *errors)
{
    if (cfg->smtp_memory_per_client > cfg->smtp_memory)
        g_string_append_printf(errors, "--smtp-memory-per-client (%lld) is larger than --smtp-memory (%lld)\n",
                               (long long)cfg->smtp_memory_per_client, (long long)cfg->smtp_memory);
    if (cfg->max_message_size + SMTP_RECEIVED_MAX > cfg->smtp_memory_per_client)
        g_string_append_printf(errors,
                               "--smtp-memory-per-client (%lld) must hold --max-message-size (%lld) plus %d bytes\n",
                               (long long)cfg->smtp_memory_per_client, (long long)cfg->max_message_size,
                               SMTP_RECEIVED_MAX);
}

static void validate(struct inlet_config *cfg, GString *errors)
{
    validate_public_url(cfg, errors);
    validate_smtp_memory(cfg, errors);
    validate_deliveries(cfg, errors);
    validate_node_id(cfg, errors);
    validate_tls(cfg, errors);
    validate_database(cfg, errors);
    validate_key(&cfg->api_key, &cfg->api_key_file, "api-key", "api_key", errors);
    validate_key(&cfg->signing_key, &cfg->signing_key_file, "signing-key", "signing_key", errors);
    validate_listeners(&cfg->smtp_listen, "smtp-listen", errors);
    validate_listeners(&cfg->http_listen, "http-listen", errors);
    if (cfg->pop3_listen.count) validate_listeners(&cfg->pop3_listen, "pop3-listen", errors);
    if (cfg->pop3s_listen.count) validate_listeners(&cfg->pop3s_listen, "pop3s-listen", errors);
    if (cfg->pop3s_listen.count && !(cfg->tls_cert && *cfg->tls_cert))
        g_string_append(errors, "--pop3s-listen needs --tls-cert and --tls-key\n");
    if (strcmp(cfg->pop3_plaintext_login, "no") != 0 && strcmp(cfg->pop3_plaintext_login, "loopback") != 0 &&
        strcmp(cfg->pop3_plaintext_login, "yes") != 0)
        g_string_append_printf(errors, "--pop3-plaintext-login: \"%s\" is not no, loopback or yes\n",
                               cfg->pop3_plaintext_login);
    cfg->domain_set = domain_set_new();
    for (size_t i = 0; i < cfg->domains.count; i++) {
        char *err = NULL;
        if (domain_set_add(cfg->domain_set, cfg->domains.items[i], &err) < 0) {
            g_string_append_printf(errors, "--domain: %s\n", err);
            g_free(err);
        }
    }
    cfg->log_level_value = log_level_parse(cfg->log_level);
    if (cfg->log_level_value < 0)
        g_string_append_printf(errors, "--log-level: \"%s\" is not error, warn, info or debug\n",
                               cfg->log_level);
    if (!*cfg->data_dir) g_string_append(errors, "--data-dir must not be empty\n");
    if (!*cfg->hostname) {
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        g_free(cfg->hostname);
        cfg->hostname = g_strdup(host);
    }
    for (const char *p = cfg->hostname; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '.' && *p != '-' && *p != '_') {
            g_string_append_printf(errors, "--hostname: \"%s\" is not a host name\n", cfg->hostname);
            break;
        }
    }
}

int config_load(struct inlet_config *cfg, int argc, char **argv, char **err)
{
    GString *errors = g_string_new(NULL);
    memset(cfg, 0, sizeof *cfg);
    load_defaults(cfg, errors);
    /* The file comes below the environment and the command line, but its name comes from them. */
    const char *env_config = getenv("INLET_CONFIG");
    if (env_config) cfg->config_file = g_strdup(env_config);
    load_argv(cfg, argc, argv, false, errors);
    if (cfg->config_file && *cfg->config_file) load_file(cfg, cfg->config_file, errors);
    load_env(cfg, errors);
    load_argv(cfg, argc, argv, true, errors);
    if (errors->len == 0) validate(cfg, errors);
    if (errors->len > 0) {
        g_string_truncate(errors, errors->len - 1); /* last newline */
        *err = g_string_free(errors, FALSE);
        return -1;
    }
    g_string_free(errors, TRUE);
    return 0;
}

void config_free(struct inlet_config *cfg)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        if (settings[i].type == SET_STR) {
            char **p = field(cfg, &settings[i]);
            g_free(*p);
            *p = NULL;
        } else if (settings[i].type == SET_LIST) {
            strlist_clear(field(cfg, &settings[i]));
        }
    }
    domain_set_free(cfg->domain_set);
    cfg->domain_set = NULL;
    g_clear_pointer(&cfg->retry_schedule, g_free);
    cfg->retry_count = 0;
    if (cfg->relay_password) explicit_bzero(cfg->relay_password, strlen(cfg->relay_password));
    g_clear_pointer(&cfg->relay_password, g_free);
}

void config_print_help(FILE *out)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        char opt[64];
        snprintf(opt, sizeof opt, "--%s %s", s->name, s->metavar);
        fprintf(out, "  %-34s %s", opt, s->help);
        if (s->def && *s->def) fprintf(out, " [%s]", s->def);
        fprintf(out, "\n");
    }
    fprintf(out, "\nEvery option can also be set as INLET_<NAME> in the environment (upper case, '-' as '_'),\n"
                 "or as a key in the [inlet] group of the --config file; lists are comma-separated there.\n"
                 "Precedence: command line > environment > config file > default.\n");
}

void config_print(const struct inlet_config *cfg, FILE *out)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        const void *f = (const char *)cfg + s->offset;
        fprintf(out, "%s=", s->name);
        if (s->type == SET_STR) {
            const char *v = *(char *const *)f;
            if (s->offset == OFF(database)) {
                g_autofree char *shown = dburl_redact(v);
                fprintf(out, "%s", shown);
            } else {
                fprintf(out, "%s", is_secret(s) ? (v ? "(set)" : "") : v ? v : "");
            }
        } else if (s->type == SET_INT) {
            fprintf(out, "%lld", (long long)*(const int64_t *)f);
        } else if (s->type == SET_BOOL) {
            fprintf(out, "%s", *(const bool *)f ? "yes" : "no");
        } else {
            const struct strlist *l = f;
            for (size_t k = 0; k < l->count; k++) fprintf(out, "%s%s", k ? "," : "", l->items[k]);
        }
        fprintf(out, "\n");
    }
}
