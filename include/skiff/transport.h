/* Byte transport under a codec: plaintext socket or TLS over it.
 * Same contracts as sk_buf_read_fd / sk_buf_write_fd so codecs do not care
 * which one they have. With TLS, a read may need the socket to be writable
 * (and the reverse): after SK_ERR_AGAIN, `want` says which readiness to wait
 * for (SK_TLS_WANT_READ / SK_TLS_WANT_WRITE; plaintext: 0). */
#ifndef SKIFF_TRANSPORT_H
#define SKIFF_TRANSPORT_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <sys/types.h>

#include "skiff/buf.h"

struct sk_toxics;

struct sk_transport {
    int fd;
    SSL *ssl;          /* NULL = plaintext */
    uint8_t want_rd;   /* after a read's AGAIN: SK_TLS_WANT_* needed */
    uint8_t want_wr;   /* after a write's AGAIN */
    uint8_t wb_queued; /* in the worker's send batch (worker.c) */
    struct sk_toxics *tox; /* L4 toxic stage (toxics.h), NULL = none; zero-init */
};

/* Read into b (up to max, 0 = 16 KiB): bytes (> 0), 0 on EOF, SK_ERR_AGAIN,
 * SK_ERR_TOO_LARGE (b full), SK_ERR_IO. TLS: drains what OpenSSL already
 * decrypted, so no data is left stranded without socket readiness. */
ssize_t sk_tp_read(struct sk_transport *t, struct sk_buf *b, size_t max);
/* Write from b: bytes written, SK_ERR_AGAIN, SK_ERR_IO. */
ssize_t sk_tp_write(struct sk_transport *t, struct sk_buf *b);
/* Half-close the write side (TLS: close_notify first). */
void sk_tp_shutdown_write(struct sk_transport *t);
/* close_notify (best effort), free the SSL, close the fd. */
void sk_tp_close(struct sk_transport *t);
/* TLS: bytes (or a close_notify) already inside OpenSSL, which will not make
 * the socket readable again: the caller must read again without waiting
 * (ev_feed_event) once it has room. Plaintext: false. */
bool sk_tp_has_buffered(const struct sk_transport *t);
/* libev event mask needed after an AGAIN from read/write (EV_READ / EV_WRITE
 * bits); plaintext read -> EV_READ, write -> EV_WRITE. */
int sk_tp_events_for_read(const struct sk_transport *t);
int sk_tp_events_for_write(const struct sk_transport *t);

/* The same operations without the toxic stage: the socket (+ TLS) itself.
 * For toxics.c; owners use the sk_tp_* functions above. */
ssize_t sk_tp_raw_read(struct sk_transport *t, struct sk_buf *b, size_t max);
/* Write up to n bytes from p: bytes written, SK_ERR_AGAIN, SK_ERR_IO. */
ssize_t sk_tp_raw_send(struct sk_transport *t, const char *p, size_t n);
void sk_tp_raw_shutdown_write(struct sk_transport *t);
void sk_tp_raw_close(struct sk_transport *t);
bool sk_tp_raw_has_buffered(const struct sk_transport *t);
int sk_tp_raw_events_for_read(const struct sk_transport *t);
int sk_tp_raw_events_for_write(const struct sk_transport *t);

#endif
