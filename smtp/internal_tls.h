/* smtp/internal_tls.h — TLS for STARTTLS (RFC 3207), inside smtp/ only (server.c uses it).
 *
 * OpenSSL over two memory BIOs: the caller moves ciphertext between the socket and the TLS
 * object (smtp_tls_push / smtp_tls_take_output) and plaintext between the TLS object and the
 * session (smtp_tls_read / smtp_tls_write).  No socket, no blocking, no thread: the libuv read and
 * write path of server.c drives it.
 *
 * Memory: a plaintext connection holds none of this.  A TLS connection holds its SSL object
 * (record buffers released while idle, SSL_MODE_RELEASE_BUFFERS) and two memory BIOs; the
 * ciphertext BIO holds at most what one socket read pushed (server.c stops reading while the
 * session cannot take plaintext), and both BIOs are replaced by empty ones once drained if they
 * grew beyond SMTP_TLS_BIO_KEEP. */
#ifndef INLET_SMTP_INTERNAL_TLS_H
#define INLET_SMTP_INTERNAL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The server's context: certificate chain and key, protocol and cipher policy.  Built once. */
struct smtp_tls_ctx;
/* NULL with *err (g_malloc'd, names the file and OpenSSL's reason) when the certificate or the
 * key cannot be loaded or do not match. */
struct smtp_tls_ctx *smtp_tls_ctx_new(const char *cert_file, const char *key_file, char **err);
void smtp_tls_ctx_free(struct smtp_tls_ctx *ctx);

/* One connection's TLS, server side.  NULL when OpenSSL cannot allocate it. */
struct smtp_tls;
struct smtp_tls *smtp_tls_new(struct smtp_tls_ctx *ctx);
void smtp_tls_free(struct smtp_tls *t);

/* Ciphertext from the socket.  0, or -ENOMEM. */
int smtp_tls_push(struct smtp_tls *t, const char *data, size_t len);
/* Drives the handshake: 1 done, 0 needs more ciphertext, -1 failed (`why` gets the reason).
 * Either way there may be ciphertext to send (an alert on failure). */
int smtp_tls_handshake(struct smtp_tls *t, char *why, size_t whylen);
/* Plaintext from the client: >0 bytes, 0 none until more ciphertext comes, -1 the peer closed
 * (close_notify) or the connection failed (`why` says which). */
ssize_t smtp_tls_read(struct smtp_tls *t, char *buf, size_t cap, char *why, size_t whylen);
/* Plaintext to the client, encrypted into the outgoing BIO.  0, or -1 (`why`). */
int smtp_tls_write(struct smtp_tls *t, const char *data, size_t len, char *why, size_t whylen);
/* Queues our close_notify (best effort). */
void smtp_tls_shutdown(struct smtp_tls *t);
/* Ciphertext to send, handed over (g_free it); NULL when there is none. */
char *smtp_tls_take_output(struct smtp_tls *t, size_t *len);
/* "TLSv1.3:TLS_AES_256_GCM_SHA384" once the handshake is done. */
void smtp_tls_describe(const struct smtp_tls *t, char *out, size_t outsz);

#endif
