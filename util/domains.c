/* util/domains.c — see domains.h.
 *
 * Exact names and wildcard parents live in two hash sets keyed by the lower-case A-label, so a
 * look-up costs one probe per label of the domain, whatever the number of hosted domains. */
#include "util/domains.h"

#include <glib.h>
#include <idn2.h>
#include <stdlib.h>
#include <string.h>

#include "util/limits.h"

struct domain_set {
    GHashTable *exact;     /* "example.com" */
    GHashTable *wildcard;  /* "example.com" for "*.example.com" */
};

struct domain_set *domain_set_new(void)
{
    struct domain_set *set = g_new0(struct domain_set, 1);
    set->exact = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    set->wildcard = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    return set;
}

void domain_set_free(struct domain_set *set)
{
    if (!set) return;
    g_hash_table_destroy(set->exact);
    g_hash_table_destroy(set->wildcard);
    g_free(set);
}

/* Lower-case A-label of `name` (len bytes, one trailing dot dropped), or NULL when it is not a
 * valid domain name.  Caller frees with free(). */
static char *to_alabel(const char *name, size_t len)
{
    if (len > 0 && name[len - 1] == '.') len--;
    if (len == 0 || len > SMTP_DOMAIN_MAX) return NULL;
    bool ascii = true;
    for (size_t i = 0; i < len; i++) {
        if (name[i] == '\0') return NULL;
        if ((unsigned char)name[i] >= 0x80) ascii = false;
    }
    char *out = NULL;
    if (ascii) {
        out = malloc(len + 1);
        if (!out) return NULL;
        for (size_t i = 0; i < len; i++) out[i] = g_ascii_tolower(name[i]);
        out[len] = '\0';
    } else {
        char *tmp = g_strndup(name, len);
        int rc = idn2_to_ascii_8z(tmp, &out, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
        g_free(tmp);
        if (rc != IDN2_OK) return NULL;
        for (char *p = out; *p; p++) *p = g_ascii_tolower(*p);
    }
    /* LDH labels of 1..63 octets: anything else cannot be a hosted domain. */
    size_t label = 0;
    for (const char *p = out;; p++) {
        if (*p == '.' || *p == '\0') {
            if (label == 0 || label > 63 || p[-1] == '-') goto bad;
            if (*p == '\0') break;
            label = 0;
            continue;
        }
        if (!(g_ascii_isalnum(*p) || (*p == '-' && label > 0) || *p == '_')) goto bad;
        label++;
    }
    return out;
bad:
    free(out);
    return NULL;
}

int domain_set_add(struct domain_set *set, const char *pattern, char **err)
{
    bool wild = strncmp(pattern, "*.", 2) == 0;
    const char *name = wild ? pattern + 2 : pattern;
    char *alabel = to_alabel(name, strlen(name));
    if (!alabel) {
        *err = g_strdup_printf("domain \"%s\" is not a valid domain name", pattern);
        return -1;
    }
    if (g_hash_table_size(set->exact) + g_hash_table_size(set->wildcard) >= LIMIT_DOMAINS_MAX) {
        free(alabel);
        *err = g_strdup_printf("more than %d domains", LIMIT_DOMAINS_MAX);
        return -1;
    }
    g_hash_table_add(wild ? set->wildcard : set->exact, g_strdup(alabel));
    free(alabel);
    return 0;
}

bool domain_set_hosts(const struct domain_set *set, const char *domain, size_t len)
{
    char *alabel = to_alabel(domain, len);
    if (!alabel) return false;
    bool hosted = g_hash_table_contains(set->exact, alabel);
    /* "*.example.com" hosts a.example.com and a.b.example.com: try every proper parent. */
    for (const char *p = strchr(alabel, '.'); !hosted && p; p = strchr(p + 1, '.'))
        hosted = g_hash_table_contains(set->wildcard, p + 1);
    free(alabel);
    return hosted;
}

size_t domain_set_count(const struct domain_set *set)
{
    return g_hash_table_size(set->exact) + g_hash_table_size(set->wildcard);
}

static bool has_xn_label(const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((p == s || p[-1] == '.') && strncmp(p, "xn--", 4) == 0) return true;
    }
    return false;
}

char *domain_to_ulabel(const char *domain, size_t len)
{
    if (memchr(domain, '\0', len)) return NULL;
    char *lower = malloc(len + 1);
    if (!lower) return NULL;
    bool ascii = true;
    for (size_t i = 0; i < len; i++) {
        lower[i] = g_ascii_tolower(domain[i]);
        if ((unsigned char)domain[i] >= 0x80) ascii = false;
    }
    lower[len] = '\0';
    if (ascii && !has_xn_label(lower)) return lower;

    /* Through the A-label, so that UTS #46 maps upper case and compatibility forms, then back. */
    char *alabel = NULL, *ulabel = NULL;
    if (idn2_to_ascii_8z(lower, &alabel, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL) != IDN2_OK ||
        idn2_to_unicode_8z8z(alabel, &ulabel, 0) != IDN2_OK) {
        idn2_free(alabel);
        idn2_free(ulabel);
        return lower;
    }
    idn2_free(alabel);
    char *out = strdup(ulabel);
    idn2_free(ulabel);
    if (!out) return lower;
    free(lower);
    return out;
}
