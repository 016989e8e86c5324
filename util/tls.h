/* util/tls.h — server-side TLS for STARTTLS (RFC 3207, smtp/) and POP3 STLS (RFC 2595, pop3/).
 *
 * OpenSSL over two memory BIOs: the caller moves ciphertext between the socket and the TLS
 * object (tls_push / tls_take_output) and plaintext between the TLS object and the
 * session (tls_read / tls_write).  No socket, no blocking, no thread: the libuv read and
 * write path of server.c drives it.
 *
 * Memory: a plaintext connection holds none of this.  A TLS connection holds its SSL object
 * (record buffers released while idle, SSL_MODE_RELEASE_BUFFERS) and two memory BIOs; the
 * ciphertext BIO holds at most what one socket read pushed (server.c stops reading while the
 * session cannot take plaintext), and both BIOs are replaced by empty ones once drained if they
 * grew beyond TLS_BIO_KEEP. */
#ifndef INLET_UTIL_TLS_H
#define INLET_UTIL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The server's context: certificate chain and key, protocol and cipher policy.  Built once. */
struct tls_ctx;
/* NULL with *err (g_malloc'd, names the file and OpenSSL's reason) when the certificate or the
 * key cannot be loaded or do not match. */
struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file, char **err);
void tls_ctx_free(struct tls_ctx *ctx);

/* One connection's TLS, server side.  NULL when OpenSSL cannot allocate it. */
struct tls;
struct tls *tls_new(struct tls_ctx *ctx);
void tls_free(struct tls *t);

/* Ciphertext from the socket.  0, or -ENOMEM. */
int tls_push(struct tls *t, const char *data, size_t len);
/* Drives the handshake: 1 done, 0 needs more ciphertext, -1 failed (`why` gets the reason).
 * Either way there may be ciphertext to send (an alert on failure). */
int tls_handshake(struct tls *t, char *why, size_t whylen);
/* Plaintext from the client: >0 bytes, 0 none until more ciphertext comes, -1 the peer closed
 * (close_notify) or the connection failed (`why` says which). */
ssize_t tls_read(struct tls *t, char *buf, size_t cap, char *why, size_t whylen);
/* Plaintext to the client, encrypted into the outgoing BIO.  0, or -1 (`why`). */
int tls_write(struct tls *t, const char *data, size_t len, char *why, size_t whylen);
/* Queues our close_notify (best effort). */
void tls_shutdown(struct tls *t);
/* Ciphertext to send, handed over (g_free it); NULL when there is none. */
char *tls_take_output(struct tls *t, size_t *len);
/* "TLSv1.3:TLS_AES_256_GCM_SHA384" once the handshake is done. */
void tls_describe(const struct tls *t, char *out, size_t outsz);

#endif
