/* util/tls.c — OpenSSL over memory BIOs for STARTTLS and STLS (see tls.h).
 *
 * Policy (SPEC §2, RFC 3207, RFC 8314 §4.1 for the versions): TLS 1.2 and 1.3 only, the server's
 * cipher order, no renegotiation, no compression, no server-side session cache (TLS 1.3 tickets
 * are stateless and stay on).  An encrypted key is refused rather than prompted for. */
#include "util/tls.h"
#include "util/limits.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* TLS 1.2 suites, best first (TLS 1.3 keeps OpenSSL's defaults: AES-256-GCM, ChaCha20, AES-128-GCM):
 * forward secrecy and AEAD first, CBC with ECDHE/DHE last for old MTAs; never anonymous,
 * export, RC4, 3DES, MD5 or DSS. */
#define TLS12_CIPHERS                                                                               \
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:DHE+AES:"                        \
    "!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES:!PSK:!SRP"

struct tls_ctx {
    SSL_CTX *ctx;
};

struct tls {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the client (owned by ssl) */
    BIO *wbio; /* ciphertext to the client (owned by ssl) */
};

/* OpenSSL's reason for the last failure on this thread, and the queue cleared. */
static void last_error(char *out, size_t outsz, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    if (e) ERR_error_string_n(e, out, outsz);
    else snprintf(out, outsz, "%s", fallback);
    ERR_clear_error();
}

/* Never prompt on a terminal for a key's passphrase: an encrypted key fails to load. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return 0;
}

struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file, char **err)
{
    char why[256];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        last_error(why, sizeof why, "out of memory");
        *err = g_strdup_printf("TLS: cannot create the context: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        last_error(why, sizeof why, "no cipher");
        *err = g_strdup_printf("TLS: cipher list: %s", why);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        last_error(why, sizeof why, "unknown error");
        *err = g_strdup_printf("--tls-cert %s: cannot load the certificate chain: %s", cert_file, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        last_error(why, sizeof why, "unknown error");
        if (mismatch) {
            *err = g_strdup_printf("--tls-key %s does not match --tls-cert %s: %s", key_file, cert_file, why);
            goto fail;
        }
        *err = g_strdup_printf("--tls-key %s: cannot load the private key (PEM, not encrypted): %s",
                               key_file, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        last_error(why, sizeof why, "key mismatch");
        *err = g_strdup_printf("--tls-key %s does not match --tls-cert %s: %s", key_file, cert_file, why);
        goto fail;
    }
    struct tls_ctx *t = g_new0(struct tls_ctx, 1);
    t->ctx = ctx;
    return t;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
    if (!ctx) return;
    SSL_CTX_free(ctx->ctx);
    g_free(ctx);
}

static BIO *mem_bio(void)
{
    BIO *b = BIO_new(BIO_s_mem());
    /* An empty BIO means "more later", not end of file. */
    if (b) BIO_set_mem_eof_return(b, -1);
    return b;
}

struct tls *tls_new(struct tls_ctx *ctx)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ctx);
    BIO *r = mem_bio(), *w = mem_bio();
    if (!ssl || !r || !w) {
        SSL_free(ssl);
        BIO_free(r);
        BIO_free(w);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_bio(ssl, r, w);
    SSL_set_accept_state(ssl);
    struct tls *t = g_new0(struct tls, 1);
    t->ssl = ssl;
    t->rbio = r;
    t->wbio = w;
    return t;
}

void tls_free(struct tls *t)
{
    if (!t) return;
    SSL_free(t->ssl); /* frees both BIOs */
    g_free(t);
}

/* A drained BIO that grew (a 64 KiB read, a burst of replies) gives its buffer back. */
static bool bio_oversized(BIO *b)
{
    BUF_MEM *bm = NULL;
    return BIO_ctrl_pending(b) == 0 && BIO_get_mem_ptr(b, &bm) == 1 && bm && bm->max > TLS_BIO_KEEP;
}

static void trim_rbio(struct tls *t)
{
    if (!bio_oversized(t->rbio)) return;
    BIO *b = mem_bio();
    if (!b) return;
    SSL_set0_rbio(t->ssl, b); /* frees the old one */
    t->rbio = b;
}

static void trim_wbio(struct tls *t)
{
    if (!bio_oversized(t->wbio)) return;
    BIO *b = mem_bio();
    if (!b) return;
    SSL_set0_wbio(t->ssl, b);
    t->wbio = b;
}

int tls_push(struct tls *t, const char *data, size_t len)
{
    while (len > 0) {
        int n = BIO_write(t->rbio, data, len > INT_MAX ? INT_MAX : (int)len);
        if (n <= 0) {
            ERR_clear_error();
            return -ENOMEM;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* After a failed SSL call: 0 when it only wants more input, -1 otherwise with the reason. */
static int after_failure(struct tls *t, int rc, char *why, size_t whylen)
{
    int e = SSL_get_error(t->ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: /* memory BIOs never refuse a write; kept for completeness */
        ERR_clear_error();
        trim_rbio(t);
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        snprintf(why, whylen, "closed by the client (close_notify)");
        ERR_clear_error();
        return -1;
    case SSL_ERROR_SYSCALL:
        last_error(why, whylen, "unexpected end of stream");
        return -1;
    default:
        last_error(why, whylen, "TLS error");
        return -1;
    }
}

int tls_handshake(struct tls *t, char *why, size_t whylen)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) return 1;
    return after_failure(t, rc, why, whylen);
}

ssize_t tls_read(struct tls *t, char *buf, size_t cap, char *why, size_t whylen)
{
    ERR_clear_error();
    int n = SSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
    if (n > 0) return n;
    return after_failure(t, n, why, whylen);
}

int tls_write(struct tls *t, const char *data, size_t len, char *why, size_t whylen)
{
    while (len > 0) {
        ERR_clear_error();
        int n = SSL_write(t->ssl, data, len > INT_MAX ? INT_MAX : (int)len);
        if (n <= 0) {
            if (after_failure(t, n, why, whylen) == 0) snprintf(why, whylen, "write would block");
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

void tls_shutdown(struct tls *t)
{
    if (!SSL_is_init_finished(t->ssl)) return;
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

char *tls_take_output(struct tls *t, size_t *len)
{
    size_t n = BIO_ctrl_pending(t->wbio);
    *len = 0;
    if (n == 0) return NULL;
    char *buf = g_malloc(n);
    size_t got = 0;
    while (got < n) {
        int r = BIO_read(t->wbio, buf + got, n - got > INT_MAX ? INT_MAX : (int)(n - got));
        if (r <= 0) break;
        got += (size_t)r;
    }
    trim_wbio(t);
    if (got == 0) {
        g_free(buf);
        return NULL;
    }
    *len = got;
    return buf;
}

void tls_describe(const struct tls *t, char *out, size_t outsz)
{
    const char *cipher = SSL_get_cipher_name(t->ssl);
    snprintf(out, outsz, "%s:%s", SSL_get_version(t->ssl), cipher ? cipher : "unknown");
}
