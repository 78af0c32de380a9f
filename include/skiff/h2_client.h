/* HTTP/2 upstream client (nghttp2): the second implementation of the
 * codec-neutral upstream request slot (struct sk_up, upstream.h), used for
 * clusters with upstream_proto SK_UP_HTTP2.
 *
 * Transport: h2c with prior knowledge, or -- when the cluster has a
 * transport_socket (UpstreamTlsContext) -- h2 over TLS through the same
 * transport layer as HTTP/1.1 upstreams (SNI, client certificate, SAN
 * matchers, session resumption keyed by the host address). ALPN "h2" is
 * offered (alone, when alpn_protocols is empty) and required: a server that
 * selects anything else, or nothing, fails the connection as a connect
 * failure (SK_TERM_CONNECT_FAIL "TLS handshake failed: no ALPN match (h2
 * required, upstream selected ...)", logged, counted in upstream_cx_connect_fail
 * and tls_handshake_fail.no_alpn); there is no fallback to HTTP/1.1 or
 * cleartext. Other handshake failures are reported the same way with their
 * reason ("SAN mismatch", "unknown CA", ...). The connect timeout covers TCP
 * connect and handshake.
 *
 * Per worker and per host it keeps a list of HTTP/2 connections. A request
 * takes a stream on a connection with free capacity -- min(the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS, the cluster's h2 max_concurrent_streams) --
 * that has not received a GOAWAY; otherwise it opens a new connection (the
 * cluster's max_connections breaker applies). A request issued while the
 * connection is still connecting is submitted to nghttp2 at once; its bytes
 * leave when the connect completes.
 *
 * Contract towards the router (struct sk_upconn_cbs): on_connected when the
 * transport is up (only for streams that were queued while connecting),
 * on_response for each 1xx and the final head (body_kind NONE when the head
 * carried END_STREAM, LENGTH with content-length, else CHUNKED = length
 * unknown), on_data, on_trailers, on_complete, on_error(cause, detail) --
 * exactly one of on_complete / on_error ends a stream, and nothing is called
 * after release()/abort(). A response whose END_STREAM arrived while the
 * router paused reading is still delivered completely (held bytes, trailers,
 * then on_complete) although nghttp2 closed the stream meanwhile. Streams the
 * server provably did not process (REFUSED_STREAM, or above the
 * last_stream_id of a GOAWAY, or never sent) are re-issued transparently on another connection when the request body is
 * completely buffered (body-less, or at most 64 KiB so far); otherwise they
 * fail with SK_TERM_UPSTREAM_RESET ("... not processed ...").
 *
 * Threading: everything runs on the worker thread that owns the host. */
#ifndef SKIFF_H2_CLIENT_H
#define SKIFF_H2_CLIENT_H

/* Register the client (sets sk_up_h2_acquire). Main thread, before the
 * workers start; idempotent. */
void sk_h2_client_init(void);
/* Free this thread's pool of h2 upstream stream objects (worker exit). */
void sk_h2_client_thread_cleanup(void);

#endif
