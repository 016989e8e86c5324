/* mailauth/dkim.c — DKIM verification (RFC 6376; RFC 8463 ed25519-sha256; rsa-sha1 still read):
 * per DKIM-Signature field, its tags, the x=/t= times, the key record from DNS (mailauth/dns.c,
 * cached, ends at the job's deadline), the body hash with l=, the header hash over h= and the
 * signature itself, checked with OpenSSL.  The text work (tag-lists, canonicalization) is in
 * dkim_canon.c.
 *
 * Why not libopendkim (which did this until issue 15's cost measurement): with OpenSSL 3 it decoded
 * the DNS key (d2i_PUBKEY through the decoder framework) again for every message and could not be
 * handed a decoded one; that decode cost as much as the whole ingest of a 2 KiB message.  Here the
 * decoded keys are kept (struct key_cache): a key is found by its record's p= text and type, so it
 * is reused only while DNS — which keeps records for their TTL — still answers the same key; a
 * rotated or revoked key is never used past its record's TTL.  libopendkim stays the differential
 * oracle of tests/mailauth/test_dkim_oracle.
 *
 * Verdicts and reasons (A-R comments) are libopendkim's: pass; fail for hashes that differ, an
 * expired or future signature, x= before t=, l= beyond the body, a key whose h= or t=s refuses the
 * signature; permerror for a malformed signature, no key, a key that cannot be used; temperror when
 * the key lookup failed. */
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mailauth/internal.h"
#include "util/limits.h"

/* A decoded key, found by the text that made it ("rsa:" or "ed25519:" and the p= value).  An RSA
 * key comes with a verification context for each hash, set up once (padding, digest): OpenSSL 3
 * looks up the algorithm and the digest by name in its provider tables for every
 * EVP_PKEY_verify_init and EVP_PKEY_CTX_set_signature_md, which cost 3 µs a message, as much as
 * the rest of the DKIM work but the RSA itself; a copy of a prepared one (EVP_PKEY_CTX_dup) costs
 * 0.1 µs (bench/mailauth). */
struct key_entry {
    char *text;
    size_t len;
    uint32_t hash; /* text_hash(): a first filter before memcmp */
    EVP_PKEY *pkey;
    EVP_PKEY_CTX *verify[2]; /* RSA: ready for rsa-sha256 [0], rsa-sha1 [1]; NULL: set up per use */
    uint64_t used; /* the cache's clock at the last hit: the least recently used goes first */
};

struct mailauth_dkim {
    EVP_MD *sha256, *sha1; /* fetched once: an implicit fetch per digest costs a lock and a lookup */
    pthread_mutex_t lock;  /* over keys: the workers share the cache */
    struct key_entry keys[MAILAUTH_DKIM_KEYS_MAX]; /* filled from the first on, never emptied: a
                                                      search ends at the first empty one */
    uint64_t clock;
};

enum alg { ALG_RSA_SHA256, ALG_RSA_SHA1, ALG_ED25519_SHA256 };

/* One DKIM-Signature field, parsed. */
struct sig {
    const uint8_t *field; /* the whole field, with its line end */
    size_t flen, voff;    /* voff: where the value starts in field */
    struct mailauth_dkim_tag tags[MAILAUTH_DKIM_TAGS_MAX];
    size_t ntags;
    enum alg alg;
    bool hrelaxed, brelaxed, has_l;
    uint64_t l;
    const struct mailauth_dkim_tag *b, *bh, *h;
    char domain[SPF_DOMAIN_MAX + 1], selector[MAILAUTH_DKIM_SELECTOR_MAX];
    const char *idomain; /* i='s domain inside field, or NULL */
    size_t idomain_len;
};

/* A header field of the message: [start, end) with its line end; name_len 0 without a ':'. */
struct field {
    size_t start, end, name_len;
};

/* A body hash computed for one signature, kept for the others of the message that ask for the
 * same one (senders often sign twice, e.g. their provider and their own domain, alike). */
struct body_hash {
    bool relaxed, sha1, has_l;
    uint64_t l, total;
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int len;
};

struct message {
    const uint8_t *data;
    size_t len, hend;
    struct field *fields;
    size_t nfields;
    struct body_hash hashes[MAILAUTH_DKIM_SIGS_MAX];
    size_t nhashes;
};

struct mailauth_dkim *mailauth_dkim_new(char **err)
{
    struct mailauth_dkim *k = calloc(1, sizeof *k);
    if (!k) goto fail;
    pthread_mutex_init(&k->lock, NULL);
    k->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    k->sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    if (!k->sha256 || !k->sha1) goto fail;
    return k;
fail:
    mailauth_dkim_free(k);
    *err = strdup("dkim: OpenSSL has no SHA-256 or SHA-1");
    return NULL;
}

void mailauth_dkim_free(struct mailauth_dkim *k)
{
    if (!k) return;
    for (size_t i = 0; i < MAILAUTH_DKIM_KEYS_MAX; i++) {
        free(k->keys[i].text);
        EVP_PKEY_free(k->keys[i].pkey);
        EVP_PKEY_CTX_free(k->keys[i].verify[0]);
        EVP_PKEY_CTX_free(k->keys[i].verify[1]);
    }
    EVP_MD_free(k->sha256);
    EVP_MD_free(k->sha1);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

bool mailauth_dkim_ed25519(const struct mailauth_dkim *k)
{
    (void)k;
    return true;
}

size_t mailauth_dkim_cached_keys(struct mailauth_dkim *k)
{
    size_t n = 0;
    pthread_mutex_lock(&k->lock);
    for (size_t i = 0; i < MAILAUTH_DKIM_KEYS_MAX; i++) n += k->keys[i].pkey != NULL;
    pthread_mutex_unlock(&k->lock);
    return n;
}

/* ------------------------------------------------------------------------------------------
 * The key cache. */

/* FNV-1a of the length and the last 64 characters: keys of one type share their first ones (the
 * DER header of every RSA-2048 key is the same 40-odd characters), their ends differ.  A byte at a
 * time, a whole 400-character key cost more than the rest of the lookup (bench/mailauth); keys that
 * end alike only cost a memcmp more. */
static uint32_t text_hash(const char *text, size_t len)
{
    uint32_t h = (2166136261u ^ (uint32_t)len) * 16777619u;
    for (size_t i = len > 64 ? len - 64 : 0; i < len; i++) h = (h ^ (unsigned char)text[i]) * 16777619u;
    return h;
}

static bool entry_is(const struct key_entry *e, const char *text, size_t len, uint32_t hash)
{
    return e->text && e->hash == hash && e->len == len && memcmp(e->text, text, len) == 0;
}

/* An RSA verification context for pkey with PKCS#1 v1.5 padding and md; NULL when OpenSSL fails. */
static EVP_PKEY_CTX *rsa_verify_ctx(EVP_PKEY *pkey, const EVP_MD *md)
{
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (pc && EVP_PKEY_verify_init(pc) == 1 && EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
        EVP_PKEY_CTX_set_signature_md(pc, md) == 1)
        return pc;
    EVP_PKEY_CTX_free(pc);
    return NULL;
}

/* The cached key for text, with a reference for the caller, and for RSA a copy of its context for
 * hash `sha1` (*vctx NULL when it has none); false on a miss. */
static bool cache_get(struct mailauth_dkim *k, const char *text, size_t len, bool sha1, EVP_PKEY **pkey,
                      EVP_PKEY_CTX **vctx)
{
    const uint32_t hash = text_hash(text, len);
    *pkey = NULL;
    *vctx = NULL;
    pthread_mutex_lock(&k->lock);
    for (size_t i = 0; i < MAILAUTH_DKIM_KEYS_MAX && k->keys[i].text; i++) {
        struct key_entry *e = &k->keys[i];
        if (!entry_is(e, text, len, hash)) continue;
        e->used = ++k->clock;
        if (EVP_PKEY_up_ref(e->pkey) == 1) *pkey = e->pkey;
        /* Under the lock: the entry's context is not freed meanwhile (dup only reads it). */
        if (*pkey && e->verify[sha1]) *vctx = EVP_PKEY_CTX_dup(e->verify[sha1]);
        break;
    }
    pthread_mutex_unlock(&k->lock);
    return *pkey != NULL;
}

static void entry_clear(struct key_entry *e)
{
    free(e->text);
    EVP_PKEY_free(e->pkey); /* a user may still hold it: its reference keeps it */
    EVP_PKEY_CTX_free(e->verify[0]);
    EVP_PKEY_CTX_free(e->verify[1]);
    *e = (struct key_entry){0};
}

/* Keeps pkey (one more reference) under text, in place of the least recently used entry. */
static void cache_put(struct mailauth_dkim *k, const char *text, size_t len, EVP_PKEY *pkey)
{
    struct key_entry fresh = {.text = malloc(len + 1), .len = len, .hash = text_hash(text, len)};
    if (!fresh.text || EVP_PKEY_up_ref(pkey) != 1) {
        free(fresh.text);
        return;
    }
    memcpy(fresh.text, text, len);
    fresh.text[len] = '\0';
    fresh.pkey = pkey;
    if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA) { /* set up outside the lock: the slow part */
        fresh.verify[0] = rsa_verify_ctx(pkey, k->sha256);
        fresh.verify[1] = rsa_verify_ctx(pkey, k->sha1);
    }
    pthread_mutex_lock(&k->lock);
    struct key_entry *victim = &k->keys[0], old = {0};
    for (size_t i = 0; i < MAILAUTH_DKIM_KEYS_MAX; i++) {
        struct key_entry *e = &k->keys[i];
        if (!e->text) { /* the first empty one: none is used after it */
            victim = e;
            break;
        }
        if (entry_is(e, text, len, fresh.hash)) { /* another worker was first */
            victim = NULL;
            break;
        }
        if (e->used < victim->used) victim = e;
    }
    if (victim) {
        old = *victim;
        fresh.used = ++k->clock;
        *victim = fresh;
        fresh = (struct key_entry){0};
    }
    pthread_mutex_unlock(&k->lock);
    entry_clear(&old); /* outside the lock */
    entry_clear(&fresh);
}

/* ------------------------------------------------------------------------------------------
 * Small helpers. */

static bool value_is(const uint8_t *v, const struct mailauth_dkim_tag *t, const char *s)
{
    size_t n = strlen(s);
    return t->value_len == n && memcmp(v + t->value, s, n) == 0;
}

/* A tag's value without FWS into out (NUL-terminated, cut at outsz - 1); false when cut. */
static bool value_copy(const uint8_t *v, const struct mailauth_dkim_tag *t, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < t->value_len; i++) {
        uint8_t c = v[t->value + i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
        if (o + 1 >= outsz) {
            out[o] = '\0';
            return false;
        }
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return true;
}

/* Decimal digits into *out (saturating at INT64_MAX); false when not all digits or empty. */
static bool value_number(const uint8_t *v, const struct mailauth_dkim_tag *t, uint64_t *out)
{
    uint64_t n = 0;
    if (t->value_len == 0) return false;
    for (size_t i = 0; i < t->value_len; i++) {
        uint8_t c = v[t->value + i];
        if (c < '0' || c > '9') return false;
        n = n > (uint64_t)INT64_MAX / 10 ? (uint64_t)INT64_MAX : n * 10 + (uint64_t)(c - '0');
    }
    *out = n > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : n;
    return true;
}

/* A name DNS can be asked about: letters, digits, '-', '_', '.'. */
static bool name_ok(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
              *s == '_' || *s == '.'))
            return false;
    return true;
}

/* Does the colon-separated list in tag t hold `item` (case-insensitive, FWS around items)? */
static bool list_has(const uint8_t *v, const struct mailauth_dkim_tag *t, const char *item)
{
    size_t n = strlen(item), i = t->value, end = t->value + t->value_len;
    while (i <= end) {
        size_t j = i;
        while (j < end && v[j] != ':') j++;
        size_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t' || v[a] == '\r' || v[a] == '\n')) a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t' || v[b - 1] == '\r' || v[b - 1] == '\n')) b--;
        if (b - a == n && strncasecmp((const char *)v + a, item, n) == 0) return true;
        i = j + 1;
    }
    return false;
}

/* ------------------------------------------------------------------------------------------
 * The signature's tags (§3.5).  Each returns "" when fine, else the reason of a permerror. */

static const char *parse_canon(const uint8_t *v, const struct mailauth_dkim_tag *c, struct sig *s)
{
    s->hrelaxed = s->brelaxed = false;
    if (!c) return "";
    char buf[32];
    if (!value_copy(v, c, buf, sizeof buf)) return "invalid header canonicalization";
    char *slash = strchr(buf, '/');
    if (slash) *slash = '\0';
    if (strcmp(buf, "relaxed") == 0) s->hrelaxed = true;
    else if (strcmp(buf, "simple") != 0) return "invalid header canonicalization";
    if (!slash) return "";
    if (strcmp(slash + 1, "relaxed") == 0) s->brelaxed = true;
    else if (strcmp(slash + 1, "simple") != 0) return "invalid body canonicalization";
    return "";
}

static const char *parse_algorithm(const uint8_t *v, const struct mailauth_dkim_tag *a, struct sig *s)
{
    if (!a) return "signature algorithm missing";
    if (value_is(v, a, "rsa-sha256")) s->alg = ALG_RSA_SHA256;
    else if (value_is(v, a, "ed25519-sha256")) s->alg = ALG_ED25519_SHA256;
    else if (value_is(v, a, "rsa-sha1")) s->alg = ALG_RSA_SHA1;
    else return "signature algorithm invalid";
    return "";
}

/* d=, s= and i=: the names the key is looked up under, and i= within d= (§3.5). */
static const char *parse_names(const uint8_t *v, struct sig *s)
{
    const struct mailauth_dkim_tag *d = mailauth_dkim_tag_find(v, s->tags, s->ntags, "d");
    const struct mailauth_dkim_tag *sel = mailauth_dkim_tag_find(v, s->tags, s->ntags, "s");
    if (!d) return "domain tag missing";
    if (d->value_len == 0) return "domain tag empty";
    if (!sel) return "selector tag missing";
    if (sel->value_len == 0) return "selector tag empty";
    if (!value_copy(v, d, s->domain, sizeof s->domain) || !name_ok(s->domain)) return "domain tag invalid";
    if (!value_copy(v, sel, s->selector, sizeof s->selector) || !name_ok(s->selector)) return "selector tag invalid";
    const struct mailauth_dkim_tag *i = mailauth_dkim_tag_find(v, s->tags, s->ntags, "i");
    if (!i) return "";
    const uint8_t *at = memchr(v + i->value, '@', i->value_len);
    if (!at) return "invalid domain coverage";
    s->idomain = (const char *)at + 1;
    s->idomain_len = (size_t)(v + i->value + i->value_len - (at + 1));
    size_t dl = strlen(s->domain);
    if (s->idomain_len < dl || strncasecmp(s->idomain + s->idomain_len - dl, s->domain, dl) != 0 ||
        (s->idomain_len > dl && s->idomain[s->idomain_len - dl - 1] != '.'))
        return "invalid domain coverage";
    return "";
}

/* h=: present, not empty, signs From: (§5.4), not longer than we look through. */
static const char *parse_signed_fields(const uint8_t *v, struct sig *s)
{
    s->h = mailauth_dkim_tag_find(v, s->tags, s->ntags, "h");
    if (!s->h) return "header list missing";
    if (s->h->value_len == 0) return "header list tag empty";
    size_t n = 1;
    for (size_t i = 0; i < s->h->value_len; i++) n += v[s->h->value + i] == ':';
    if (n > MAILAUTH_DKIM_SIGNED_FIELDS_MAX) return "header list too long";
    if (!list_has(v, s->h, "from")) return "header list missing required entries";
    return "";
}

static const char *parse_sig(struct sig *s)
{
    const uint8_t *v = s->field + s->voff;
    int n = mailauth_dkim_tags(v, s->flen - s->voff, s->tags, MAILAUTH_DKIM_TAGS_MAX);
    if (n < 0) return "signature syntax error";
    s->ntags = (size_t)n;
    const struct mailauth_dkim_tag *t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "v");
    if (!t) return "version missing";
    if (!value_is(v, t, "1")) return "unsupported signature version";
    const char *e = parse_algorithm(v, mailauth_dkim_tag_find(v, s->tags, s->ntags, "a"), s);
    if (!*e) e = parse_canon(v, mailauth_dkim_tag_find(v, s->tags, s->ntags, "c"), s);
    if (!*e) e = parse_names(v, s);
    if (!*e) e = parse_signed_fields(v, s);
    if (*e) return e;
    s->b = mailauth_dkim_tag_find(v, s->tags, s->ntags, "b");
    s->bh = mailauth_dkim_tag_find(v, s->tags, s->ntags, "bh");
    if (!s->b) return "signature data missing";
    if (s->b->value_len == 0) return "signature data empty";
    if (!s->bh) return "body hash missing";
    if (s->bh->value_len == 0) return "body hash empty";
    if ((t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "l"))) {
        if (!value_number(v, t, &s->l)) return "body length value invalid";
        s->has_l = true;
    }
    if ((t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "q")) && !list_has(v, t, "dns/txt") && !list_has(v, t, "dns"))
        return "query method invalid";
    return "";
}

/* t= and x= against now (§3.5; libopendkim's five minutes of clock drift for t=).  "" when fine,
 * else the reason of a fail; *bad set when a value is not a number (permerror). */
static const char *check_times(const struct sig *s, int64_t now, bool *bad)
{
    const uint8_t *v = s->field + s->voff;
    const struct mailauth_dkim_tag *tt = mailauth_dkim_tag_find(v, s->tags, s->ntags, "t");
    const struct mailauth_dkim_tag *xt = mailauth_dkim_tag_find(v, s->tags, s->ntags, "x");
    uint64_t t = 0, x = 0;
    *bad = (tt && !value_number(v, tt, &t)) || (xt && !value_number(v, xt, &x));
    if (*bad) return "signature timestamp invalid";
    if (tt && xt && x < t) return "signature timestamp order error";
    if (xt && (int64_t)x < now) return "signature expired";
    if (tt && (int64_t)t > now + MAILAUTH_DKIM_CLOCK_DRIFT) return "signature timestamp in the future";
    return "";
}

/* ------------------------------------------------------------------------------------------
 * The key (§3.6.1). */

struct key {
    EVP_PKEY *pkey;
    EVP_PKEY_CTX *vctx; /* RSA: ready to verify (a copy of the cache's), or NULL: set up per use */
    bool strict;        /* t=s: i= must be d= itself */
};

static enum mailauth_verdict decode_key(struct mailauth_dkim *k, const char *type, const uint8_t *v,
                                        const struct mailauth_dkim_tag *p, bool sha1, struct key *key,
                                        const char **reason)
{
    char text[MAILAUTH_DKIM_KEY_RECORD_MAX + 16];
    const size_t tl = strlen(type), n = tl + 1 + p->value_len;
    EVP_PKEY **out = &key->pkey;
    if (n >= sizeof text) goto undecodable;
    memcpy(text, type, tl);
    text[tl] = ':';
    memcpy(text + tl + 1, v + p->value, p->value_len);
    text[n] = '\0';
    if (cache_get(k, text, n, sha1, out, &key->vctx)) return MAILAUTH_PASS;
    uint8_t der[MAILAUTH_DKIM_KEY_RECORD_MAX];
    ssize_t len = mailauth_dkim_base64(v + p->value, p->value_len, der, sizeof der);
    if (len <= 0) goto undecodable;
    if (strcmp(type, "rsa") == 0) {
        const unsigned char *q = der;
        *out = d2i_PUBKEY(NULL, &q, (long)len);
        if (*out && EVP_PKEY_get_base_id(*out) != EVP_PKEY_RSA) goto undecodable;
        if (*out && EVP_PKEY_get_bits(*out) < MAILAUTH_DKIM_RSA_BITS_MIN) {
            EVP_PKEY_free(*out);
            *out = NULL;
            *reason = "signing key too small";
            return MAILAUTH_PERMERROR;
        }
    } else if (len == 32) {
        *out = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, 32);
    }
    if (!*out) goto undecodable;
    cache_put(k, text, n, *out);
    return MAILAUTH_PASS;
undecodable:
    EVP_PKEY_free(*out);
    *out = NULL;
    *reason = "unable to apply public key";
    return MAILAUTH_PERMERROR;
}

/* The key record txt for signature s: PASS with key->pkey set, or the verdict and reason. */
static enum mailauth_verdict parse_key(struct mailauth_dkim *k, const struct sig *s, const char *txt,
                                       struct key *key, const char **reason)
{
    const uint8_t *v = (const uint8_t *)txt;
    struct mailauth_dkim_tag tags[MAILAUTH_DKIM_TAGS_MAX];
    int n = mailauth_dkim_tags(v, strlen(txt), tags, MAILAUTH_DKIM_TAGS_MAX);
    *reason = "key DNS reply corrupt";
    if (n < 0) return MAILAUTH_PERMERROR;
    const struct mailauth_dkim_tag *t = mailauth_dkim_tag_find(v, tags, (size_t)n, "v");
    *reason = "unknown key version";
    if (t && !value_is(v, t, "DKIM1")) return MAILAUTH_PERMERROR;
    const char *type = "rsa";
    if ((t = mailauth_dkim_tag_find(v, tags, (size_t)n, "k"))) {
        *reason = "unknown key type";
        if (value_is(v, t, "ed25519")) type = "ed25519";
        else if (!value_is(v, t, "rsa")) return MAILAUTH_PERMERROR;
    }
    *reason = "key type mismatch";
    if ((strcmp(type, "ed25519") == 0) != (s->alg == ALG_ED25519_SHA256)) return MAILAUTH_PERMERROR;
    *reason = "signature-key hash mismatch";
    if ((t = mailauth_dkim_tag_find(v, tags, (size_t)n, "h")) && !list_has(v, t, s->alg == ALG_RSA_SHA1 ? "sha1" : "sha256"))
        return MAILAUTH_FAIL;
    *reason = "not an e-mail key";
    if ((t = mailauth_dkim_tag_find(v, tags, (size_t)n, "s")) && !list_has(v, t, "*") && !list_has(v, t, "email"))
        return MAILAUTH_PERMERROR;
    key->strict = (t = mailauth_dkim_tag_find(v, tags, (size_t)n, "t")) && list_has(v, t, "s");
    *reason = "unauthorized subdomain";
    if (key->strict && s->idomain &&
        (s->idomain_len != strlen(s->domain) || strncasecmp(s->idomain, s->domain, s->idomain_len) != 0))
        return MAILAUTH_FAIL;
    const struct mailauth_dkim_tag *p = mailauth_dkim_tag_find(v, tags, (size_t)n, "p");
    *reason = "key DNS reply corrupt";
    if (!p) return MAILAUTH_PERMERROR;
    *reason = "key revoked";
    if (p->value_len == 0) return MAILAUTH_PERMERROR;
    *reason = "";
    return decode_key(k, type, v, p, s->alg == ALG_RSA_SHA1, key, reason);
}

/* Looks up and parses the key of s. */
static enum mailauth_verdict get_key(struct mailauth_dkim *k, mailauth_dkim_lookup_fn lookup, void *ctx,
                                     const struct sig *s, struct key *key, const char **reason)
{
    char name[MAILAUTH_DKIM_SELECTOR_MAX + SPF_DOMAIN_MAX + 16];
    char txt[MAILAUTH_DKIM_KEY_RECORD_MAX];
    struct mailauth_buf b; /* "%s._domainkey.%s": always fits */
    mailauth_buf_init(&b, name, sizeof name);
    mailauth_buf_str(&b, s->selector);
    mailauth_buf_str(&b, "._domainkey.");
    mailauth_buf_str(&b, s->domain);
    switch (lookup(ctx, name, txt, sizeof txt)) {
    case MAILAUTH_DKIM_KEY_FOUND: return parse_key(k, s, txt, key, reason);
    case MAILAUTH_DKIM_KEY_NONE: *reason = "key not found in DNS"; return MAILAUTH_PERMERROR;
    case MAILAUTH_DKIM_KEY_TEMP: *reason = "key DNS query failed"; return MAILAUTH_TEMPERROR;
    case MAILAUTH_DKIM_KEY_CORRUPT: break;
    }
    *reason = "key DNS reply corrupt";
    return MAILAUTH_PERMERROR;
}

/* ------------------------------------------------------------------------------------------
 * Hashes and the signature (§3.7). */

static void digest_write(void *ctx, const uint8_t *p, size_t n)
{
    EVP_DigestUpdate(ctx, p, n);
}

/* The body hash s asks for: one an earlier signature of the message computed, or computed now
 * (and kept).  NULL when OpenSSL fails. */
static const struct body_hash *body_hash(struct mailauth_dkim *k, const struct sig *s, struct message *m,
                                         EVP_MD_CTX *md)
{
    const bool sha1 = s->alg == ALG_RSA_SHA1;
    for (size_t i = 0; i < m->nhashes; i++) {
        const struct body_hash *h = &m->hashes[i];
        if (h->relaxed == s->brelaxed && h->sha1 == sha1 && h->has_l == s->has_l && (!s->has_l || h->l == s->l))
            return h;
    }
    if (m->nhashes == MAILAUTH_DKIM_SIGS_MAX) return NULL; /* one per signature at most: never */
    struct body_hash *h = &m->hashes[m->nhashes];
    *h = (struct body_hash){.relaxed = s->brelaxed, .sha1 = sha1, .has_l = s->has_l, .l = s->l};
    if (EVP_DigestInit_ex(md, sha1 ? k->sha1 : k->sha256, NULL) != 1) return NULL;
    struct mailauth_dkim_sink sink;
    mailauth_dkim_sink_init(&sink, s->has_l ? s->l : UINT64_MAX, digest_write, md);
    h->total = mailauth_dkim_canon_body(m->data + m->hend, m->len - m->hend, s->brelaxed, &sink);
    if (EVP_DigestFinal_ex(md, h->digest, &h->len) != 1) return NULL;
    m->nhashes++;
    return h;
}

/* The body hash of s compared with its bh=: "" when equal, else the reason of a fail. */
static const char *check_body(struct mailauth_dkim *k, const struct sig *s, struct message *m, EVP_MD_CTX *md)
{
    const uint8_t *v = s->field + s->voff;
    uint8_t want[EVP_MAX_MD_SIZE];
    ssize_t wl = mailauth_dkim_base64(v + s->bh->value, s->bh->value_len, want, sizeof want);
    if (wl < 0) return "body hash did not verify";
    const struct body_hash *h = body_hash(k, s, m, md);
    if (!h) return "body hash did not verify";
    if (s->has_l && s->l > h->total) return "length tag value exceeds body size";
    if ((size_t)wl != h->len || memcmp(want, h->digest, h->len) != 0) return "body hash did not verify";
    return "";
}

static bool name_is(const struct message *m, const struct field *f, const uint8_t *name, size_t n)
{
    return f->name_len == n && strncasecmp((const char *)m->data + f->start, (const char *)name, n) == 0;
}

/* Feeds the fields h= names, each picked bottom-up (§5.4.2: a name listed twice takes the next
 * one up; a name with no field left is skipped: over-signing). */
static void hash_signed_fields(const struct sig *s, const struct message *m, struct mailauth_dkim_sink *sink)
{
    const uint8_t *v = s->field + s->voff;
    size_t i = s->h->value, end = s->h->value + s->h->value_len;
    struct { size_t at, len; } seen[MAILAUTH_DKIM_SIGNED_FIELDS_MAX];
    size_t nseen = 0;
    while (i <= end && nseen < MAILAUTH_DKIM_SIGNED_FIELDS_MAX) {
        size_t j = i;
        while (j < end && v[j] != ':') j++;
        size_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t' || v[a] == '\r' || v[a] == '\n')) a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t' || v[b - 1] == '\r' || v[b - 1] == '\n')) b--;
        i = j + 1;
        size_t skip = 0; /* instances taken by earlier mentions of this name */
        for (size_t e = 0; e < nseen; e++)
            skip += seen[e].len == b - a && strncasecmp((const char *)v + seen[e].at, (const char *)v + a, b - a) == 0;
        seen[nseen].at = a;
        seen[nseen++].len = b - a;
        if (b == a) continue;
        for (size_t f = m->nfields; f-- > 0;) {
            if (!name_is(m, &m->fields[f], v + a, b - a) || skip-- > 0) continue;
            mailauth_dkim_canon_header(m->data + m->fields[f].start, m->fields[f].end - m->fields[f].start,
                                       s->hrelaxed, true, sink);
            break;
        }
    }
}

/* The signature field itself, b='s value emptied (§3.7), with no line end. */
static bool hash_own_field(const struct sig *s, struct mailauth_dkim_sink *sink)
{
    size_t cut_from = s->voff + s->b->value, cut_to = cut_from + s->b->value_len;
    /* The blanks between '=' and the value go too (as dkimpy and libopendkim sign). */
    while (cut_from > 0 && s->field[cut_from - 1] != '=') cut_from--;
    uint8_t small[2048]; /* a usual field without its b= fits: no allocation */
    const size_t n = s->flen - (cut_to - cut_from);
    uint8_t *copy = n <= sizeof small ? small : malloc(n);
    if (!copy) return false;
    memcpy(copy, s->field, cut_from);
    memcpy(copy + cut_from, s->field + cut_to, s->flen - cut_to);
    mailauth_dkim_canon_header(copy, n, s->hrelaxed, false, sink);
    if (copy != small) free(copy);
    return true;
}

static bool check_signature(struct mailauth_dkim *k, const struct sig *s, const struct message *m,
                            const struct key *key, EVP_MD_CTX *md)
{
    const uint8_t *v = s->field + s->voff;
    uint8_t hash[EVP_MAX_MD_SIZE];
    unsigned int hl = 0;
    bool ok = false;
    EVP_PKEY_CTX *pc = NULL;
    /* A signature is as long as the key's modulus, which fits in its record: a longer b= cannot
     * verify (base64 says so, -1). */
    uint8_t sigbytes[MAILAUTH_DKIM_KEY_RECORD_MAX];
    ssize_t sl = mailauth_dkim_base64(v + s->b->value, s->b->value_len, sigbytes, sizeof sigbytes);
    if (sl <= 0) goto out;
    if (EVP_DigestInit_ex(md, s->alg == ALG_RSA_SHA1 ? k->sha1 : k->sha256, NULL) != 1) goto out;
    struct mailauth_dkim_sink sink;
    mailauth_dkim_sink_init(&sink, UINT64_MAX, digest_write, md);
    hash_signed_fields(s, m, &sink);
    if (!hash_own_field(s, &sink)) goto out;
    mailauth_dkim_sink_end(&sink);
    if (EVP_DigestFinal_ex(md, hash, &hl) != 1) goto out;
    if (s->alg == ALG_ED25519_SHA256) { /* RFC 8463 §3: PureEdDSA over the SHA-256 hash */
        ok = EVP_DigestVerifyInit_ex(md, NULL, NULL, NULL, NULL, key->pkey, NULL) == 1 &&
             EVP_DigestVerify(md, sigbytes, (size_t)sl, hash, hl) == 1;
        goto out;
    }
    EVP_PKEY_CTX *vc = key->vctx;
    if (!vc) vc = pc = rsa_verify_ctx(key->pkey, s->alg == ALG_RSA_SHA1 ? k->sha1 : k->sha256);
    ok = vc && EVP_PKEY_verify(vc, sigbytes, (size_t)sl, hash, hl) == 1;
out:
    EVP_PKEY_CTX_free(pc);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */

/* What the A-R header names besides the verdict: d=, s=, a=, the start of b=. */
static void describe(const struct sig *s, struct mailauth_dkim_sig *o)
{
    const uint8_t *v = s->field + s->voff;
    const struct mailauth_dkim_tag *t;
    if ((t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "d"))) value_copy(v, t, o->domain, sizeof o->domain);
    if ((t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "s"))) value_copy(v, t, o->selector, sizeof o->selector);
    if ((t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "a"))) value_copy(v, t, o->algorithm, sizeof o->algorithm);
    if ((t = mailauth_dkim_tag_find(v, s->tags, s->ntags, "b"))) value_copy(v, t, o->b, sizeof o->b);
}

static enum mailauth_verdict verify_one(struct mailauth_dkim *k, mailauth_dkim_lookup_fn lookup, void *ctx,
                                        struct sig *s, struct message *m, int64_t now, const char **reason)
{
    *reason = parse_sig(s);
    if (**reason) return MAILAUTH_PERMERROR;
    bool bad = false;
    *reason = check_times(s, now, &bad);
    if (**reason) return bad ? MAILAUTH_PERMERROR : MAILAUTH_FAIL;
    struct key key = {0};
    enum mailauth_verdict v = get_key(k, lookup, ctx, s, &key, reason);
    if (v != MAILAUTH_PASS) return v;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md) {
        *reason = "out of memory";
        v = MAILAUTH_TEMPERROR;
        goto out;
    }
    *reason = check_body(k, s, m, md);
    if (**reason) v = MAILAUTH_FAIL;
    else if (!check_signature(k, s, m, &key, md)) {
        *reason = "signature did not verify";
        v = MAILAUTH_FAIL;
    }
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_CTX_free(key.vctx);
    EVP_PKEY_free(key.pkey);
    return v;
}

/* The header fields of the message (at most MAILAUTH_DKIM_FIELDS_MAX: a block of more is judged
 * on its first ones).  false when memory runs out. */
static bool index_fields(struct message *m)
{
    size_t pos = 0, start, end, n = 0;
    while (n < MAILAUTH_DKIM_FIELDS_MAX && mailauth_header_next(m->data, m->hend, &pos, &start, &end)) n++;
    m->fields = calloc(n ? n : 1, sizeof *m->fields);
    if (!m->fields) return false;
    pos = 0;
    while (m->nfields < n && mailauth_header_next(m->data, m->hend, &pos, &start, &end)) {
        struct field *f = &m->fields[m->nfields++];
        f->start = start;
        f->end = end;
        const uint8_t *colon = memchr(m->data + start, ':', end - start);
        if (!colon) continue;
        size_t nl = (size_t)(colon - (m->data + start));
        while (nl && (m->data[start + nl - 1] == ' ' || m->data[start + nl - 1] == '\t')) nl--;
        f->name_len = nl;
    }
    return true;
}

size_t mailauth_dkim_verify(struct mailauth_dkim *k, mailauth_dkim_lookup_fn lookup, void *ctx, const uint8_t *data,
                            size_t len, int64_t now_s, int64_t deadline_ms, struct mailauth_dkim_sig *out, size_t max)
{
    struct message m = {.data = data, .len = len, .hend = mailauth_header_end(data, len)};
    size_t n = 0;
    if (!index_fields(&m)) return 0;
    struct sig *s = malloc(sizeof *s);
    if (!s) goto out;
    for (size_t f = 0; f < m.nfields && n < max && n < MAILAUTH_DKIM_SIGS_MAX; f++) {
        size_t voff = mailauth_header_is(data, m.fields[f].start, m.fields[f].end, "DKIM-Signature");
        if (!voff) continue;
        memset(s, 0, sizeof *s);
        s->field = data + m.fields[f].start;
        s->flen = m.fields[f].end - m.fields[f].start;
        s->voff = voff - m.fields[f].start;
        struct mailauth_dkim_sig *o = &out[n++];
        memset(o, 0, sizeof *o);
        const char *reason = "";
        o->verdict = verify_one(k, lookup, ctx, s, &m, now_s, &reason);
        if (o->verdict != MAILAUTH_PASS && o->verdict != MAILAUTH_FAIL && mailauth_now_ms() >= deadline_ms) {
            o->verdict = MAILAUTH_TEMPERROR;
            reason = "time budget spent";
        }
        mailauth_copy(o->reason, sizeof o->reason, reason);
        describe(s, o);
    }
out:
    free(s);
    free(m.fields);
    return n;
}

/* ------------------------------------------------------------------------------------------ */

struct dns_ctx {
    struct mailauth_dns *dns;
    int64_t deadline_ms;
};

static enum mailauth_dkim_key_status dns_lookup(void *arg, const char *name, char *txt, size_t txtsz)
{
    struct dns_ctx *c = arg;
    struct mailauth_dns_answer a;
    mailauth_dns_query(c->dns, name, 16, c->deadline_ms, &a);
    enum mailauth_dkim_key_status r = MAILAUTH_DKIM_KEY_NONE;
    if (a.status == MAILAUTH_DNS_TEMP) r = MAILAUTH_DKIM_KEY_TEMP;
    else if (a.status == MAILAUTH_DNS_OK && a.count > 0) /* the first record, as libopendkim took it */
        r = mailauth_dns_txt(a.data[0], a.len[0], txt, txtsz) ? MAILAUTH_DKIM_KEY_FOUND : MAILAUTH_DKIM_KEY_CORRUPT;
    mailauth_dns_answer_free(&a);
    return r;
}

size_t mailauth_dkim_check(struct mailauth_dkim *k, struct mailauth_dns *dns, const uint8_t *data, size_t len,
                           int64_t deadline_ms, struct mailauth_dkim_sig *out, size_t max)
{
    struct dns_ctx c = {.dns = dns, .deadline_ms = deadline_ms};
    return mailauth_dkim_verify(k, dns_lookup, &c, data, len, (int64_t)time(NULL), deadline_ms, out, max);
}
