/* Downstream HTTP/2 connections (server role, nghttp2), h2c with prior
 * knowledge. Requests become codec-neutral struct sk_stream objects driven
 * through the router exactly like HTTP/1.1 ones (h2 -> h1 translation is the
 * router's usual upstream encoding).
 *
 * Entry points (worker thread only, never from inside another codec's
 * nghttp2 callback):
 *  - sk_http_accept() calls sk_h2_accept() directly for codec_type HTTP2;
 *  - for codec_type AUTO the HTTP/1 codec sniffs the first bytes with
 *    sk_h2_preface_match() and hands the connection over, including the
 *    bytes it already read. */
#ifndef SKIFF_H2_H
#define SKIFF_H2_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "skiff/model.h"

struct sk_worker;

/* The client connection preface (RFC 9113 3.4), 24 bytes. */
#define SK_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define SK_H2_PREFACE_LEN 24

/* 1: p starts with the whole preface; 0: p (n < 24 bytes) is a prefix of it,
 * more bytes are needed to decide; -1: not HTTP/2. Pure. */
int sk_h2_preface_match(const char *p, size_t n);

/* Serve fd as an HTTP/2 connection. Takes ownership of fd and of `snap`
 * (a reference the caller owned; NULL: take a new reference on w->snap).
 * `pre`/`prelen`: bytes already read from the socket (copied; they start with
 * the preface or a part of it). Links the connection into w->conns and
 * counts downstream_cx_active and downstream_cx_http2_total (the caller did
 * not count the connection as active, or has undone that). On allocation
 * failure the fd is closed. */
void sk_h2_accept(struct sk_worker *w, const struct sk_listener *l,
                  const struct sk_filter_chain *fc, int fd, SSL *ssl,
                  const struct sk_sockaddr *peer, struct sk_snapshot *snap, const char *pre,
                  size_t prelen);

/* Free the calling worker thread's pooled HTTP/2 stream objects. */
void sk_h2_thread_cleanup(void);

#endif
