/* mailauth/psl.c — the organizational domain of RFC 7489 §3.2: the public suffix of a name (the
 * Public Suffix List's prevailing rule: an exception rule, else the longest matching rule, else
 * "*") plus one label.  The list is Debian's publicsuffix package's file, read once at start. */
#include <ctype.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailauth/internal.h"
#include "util/limits.h"

struct mailauth_psl {
    GHashTable *rules;      /* "co.uk", "*.ck" (wildcards kept as written) */
    GHashTable *exceptions; /* "www.ck" (without the '!') */
};

struct mailauth_psl *mailauth_psl_load(const char *path, char **err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        *err = g_strdup_printf("cannot read the public suffix list %s: %s", path, g_strerror(errno));
        return NULL;
    }
    struct mailauth_psl *p = g_new0(struct mailauth_psl, 1);
    p->rules = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    p->exceptions = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (s[0] == '/' || s[0] == '\n' || s[0] == '\0') continue;
        size_t len = strcspn(s, " \t\r\n");
        s[len] = '\0';
        char *rule = g_ascii_strdown(s[0] == '!' ? s + 1 : s, -1);
        g_hash_table_add(s[0] == '!' ? p->exceptions : p->rules, rule);
    }
    fclose(f);
    return p;
}

void mailauth_psl_free(struct mailauth_psl *p)
{
    if (!p) return;
    g_hash_table_destroy(p->rules);
    g_hash_table_destroy(p->exceptions);
    g_free(p);
}

static bool wildcard(const struct mailauth_psl *p, const char *parent)
{
    char w[SPF_DOMAIN_MAX + 4];
    int n = snprintf(w, sizeof w, "*.%s", parent);
    return n > 0 && (size_t)n < sizeof w && g_hash_table_contains(p->rules, w);
}

void mailauth_psl_org(const struct mailauth_psl *p, const char *domain, char *out, size_t outsz)
{
    char d[SPF_DOMAIN_MAX + 1];
    snprintf(d, sizeof d, "%s", domain);
    for (char *c = d; *c; c++) *c = (char)tolower((unsigned char)*c);
    /* Label starts, left to right. */
    const char *labels[128];
    size_t n = 0;
    for (const char *c = d; *c && n < 128; ) {
        labels[n++] = c;
        const char *dot = strchr(c, '.');
        if (!dot) break;
        c = dot + 1;
    }
    size_t suffix = n ? n - 1 : 0; /* the default rule "*": the last label */
    for (size_t i = 0; i < n; i++) {
        if (g_hash_table_contains(p->exceptions, labels[i])) {
            suffix = i + 1 < n ? i + 1 : i;
            break;
        }
        if (g_hash_table_contains(p->rules, labels[i]) || (i + 1 < n && wildcard(p, labels[i + 1]))) {
            suffix = i;
            break;
        }
    }
    snprintf(out, outsz, "%s", suffix == 0 ? d : labels[suffix - 1]);
}
