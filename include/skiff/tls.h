/* TLS (OpenSSL 3) for listeners and clusters, and the ClientHello inspector.
 *
 * Contexts. Every struct sk_tls_cfg in a snapshot (filter_chains[].tls,
 * default_chain->tls, clusters[].tls) gets a shared runtime context
 * (struct sk_tls_ctx, stored in cfg->rt) from sk_tls_prepare(). Contexts live in
 * a registry keyed by the config's content (certificate / key / CA sources,
 * ALPN, versions, ciphers, curves, verification flags, session settings), so
 * identical configs share one context within and across snapshots, and a
 * reload that does not touch TLS keeps the session caches and the rotation
 * state. A snapshot holds a reference on each context it uses (released by
 * the snapshot's destructor, on any thread); the main thread frees contexts
 * nobody references during its next watcher tick.
 *
 * Each context owns a CURRENT SSL_CTX (an atomic pointer). Rotation
 * (sk_tls_watch_start) builds a new SSL_CTX from changed files and swaps it in;
 * connections already established keep theirs (an SSL holds a reference on its
 * SSL_CTX). A retired SSL_CTX is released only after a grace period, because a
 * worker may have loaded the pointer and not yet called SSL_new.
 *
 * Threads:
 *  - main thread only: sk_tls_prepare, sk_tls_watch_start, sk_tls_watch_check,
 *    sk_tls_shutdown, sk_config hook registration;
 *  - any thread, concurrently (each SSL used by one thread at a time):
 *    sk_tls_ssl_new and every per-connection call below; sk_tls_stats (counters
 *    are atomics; the context list is not walked).
 *
 * Per-connection use (the caller owns the socket and the SSL):
 *     SSL *ssl = sk_tls_ssl_new(cfg);          // cfg stays valid: hold the snapshot
 *     SSL_set_fd(ssl, fd);                     // non-blocking socket
 *     [client, optional] sk_tls_ssl_set_session_key(ssl, "host:port");
 *     loop: r = sk_tls_handshake(ssl, &want, &why) until r != 0 (wait for `want`)
 *     then sk_tls_read / sk_tls_write; sk_tls_close_notify(ssl); SSL_free(ssl);
 * sk_tls_handshake already applies the SAN matchers (also on resumed sessions);
 * sk_tls_verify_peer is there for callers that want to re-check.
 *
 * Defaults (Envoy's, where it has them): TLS 1.2 minimum, TLS 1.3 maximum;
 * TLS 1.2 ciphers ECDHE + AEAD only; no compression; no renegotiation; session
 * tickets on; server session cache per context; client sessions cached per
 * (context, session key) up to max_session_keys (0 = no resumption). A server
 * with an empty alpn list offers "h2,http/1.1". An unexpected EOF (no
 * close_notify) reads as a clean EOF (0): the HTTP codecs detect truncation.
 */
#ifndef SKIFF_TLS_H
#define SKIFF_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "skiff/buf.h"
#include "skiff/cfgerr.h"
#include "skiff/model.h"

struct ev_loop;

/* ---- contexts (main thread) ------------------------------------------------------ */

/* For every TLS config of `snap` (listener chains, default chains, clusters)
 * get or create the shared context and store it in cfg->rt. Loads all TLS
 * material now: a missing/unreadable file, bad PEM, a key that does not match
 * its certificate, a bad cipher or curve list, or an SDS secret that is not
 * available is reported in errs at the config path (e.g.
 * "static_resources.listeners[0].filter_chains[0].transport_socket") and
 * SK_ERR_CONFIG is returned: the caller must not publish the snapshot (it
 * releases the references it took itself; sk_snapshot_unref is then safe).
 * Idempotent. 0 when the snapshot has no TLS. */
int sk_tls_prepare(struct sk_snapshot *snap, struct sk_cfgerrs *errs);

/* Start the 1 s file watcher on the main loop: stat() every file-backed
 * source (cert, key, CA) of every live context; when something changed and the
 * new set loads cleanly, build a new SSL_CTX and swap it in; a broken new file
 * keeps the old material (logged, counted as rotation_failed). Also frees
 * retired SSL_CTXs after the grace period and contexts no snapshot uses. */
void sk_tls_watch_start(struct ev_loop *loop);
/* One watcher pass now (what the timer runs; exposed for tests). Returns the
 * number of contexts rotated. */
int sk_tls_watch_check(void);
/* Grace period before a retired SSL_CTX is released (ms; default 10000). */
void sk_tls_set_grace_ms(uint64_t ms);
/* Free every context and retired SSL_CTX (at exit, after the workers stopped
 * and the snapshots that referenced them are gone or will never be used). */
void sk_tls_shutdown(void);

/* ---- connections (any thread) ------------------------------------------------------ */

enum sk_tls_want { SK_TLS_WANT_READ = 1, SK_TLS_WANT_WRITE = 2 };

/* New SSL for one connection from the context's current SSL_CTX, in server
 * (cfg->is_server) or client mode. cfg must have been prepared (cfg->rt set)
 * and must outlive the SSL. Client: SNI = cfg->sni, ALPN = cfg->alpn, peer
 * verification when a CA is configured, a cached session for the key cfg->sni
 * offered for resumption. Server: ALPN chosen from the client's list in OUR
 * order. NULL on allocation failure or an unprepared cfg. Free with SSL_free. */
SSL *sk_tls_ssl_new(const struct sk_tls_cfg *cfg);
/* Client: cache sessions under `key` (e.g. "10.0.0.7:443") instead of the
 * SNI, and offer the session cached under it. Call before the handshake. */
void sk_tls_ssl_set_session_key(SSL *ssl, const char *key);

/* Client: the handshake fails (SK_ERR_PROTO, why "no ALPN match", counted as
 * tls_handshake_fail.no_alpn) unless the server selects `proto` (e.g. "h2" for
 * an HTTP/2 upstream: never fall back to another protocol). When the context
 * has no alpn_protocols, `proto` alone is offered. Call before the handshake. */
void sk_tls_ssl_require_alpn(SSL *ssl, const char *proto);

/* Drive the handshake. 1 = done (peer verified, SANs matched); 0 = in
 * progress, wait for *want (SK_TLS_WANT_*); < 0 = failed (SK_ERR_PROTO, or
 * SK_ERR_IO for socket errors), *why = a short static reason: "no client
 * certificate", "certificate expired", "certificate not yet valid", "unknown
 * CA", "bad certificate", "SAN mismatch", "not TLS", "protocol version",
 * "no shared cipher", "no ALPN match", "connection closed", "handshake
 * failure". Counted in the stats. why may be NULL. */
int sk_tls_handshake(SSL *ssl, int *want, const char **why);

/* > 0 bytes; 0 = EOF (close_notify or plain EOF); SK_ERR_AGAIN (*want set);
 * SK_ERR_IO (connection broken; sk_tls_why(ssl) says why when known). */
ssize_t sk_tls_read(SSL *ssl, void *buf, size_t n, int *want);
/* Bytes written (> 0, possibly fewer than n: partial writes are enabled, and a
 * retry may pass a different buffer with the same unsent bytes);
 * SK_ERR_AGAIN (*want set); SK_ERR_IO. n == 0 -> 0. */
ssize_t sk_tls_write(SSL *ssl, const void *buf, size_t n, int *want);
/* Best effort close_notify (one non-blocking SSL_shutdown). */
void sk_tls_close_notify(SSL *ssl);
/* Reason for the last failure on this SSL ("" if none). */
const char *sk_tls_why(SSL *ssl);

/* After the handshake: the SAN matchers of cfg against the peer certificate
 * (any matcher matching any SAN of its type). 0 = ok (also when cfg has no
 * matchers); < 0 with *why = "SAN mismatch" (or "no peer certificate"). */
int sk_tls_verify_peer(SSL *ssl, const struct sk_tls_cfg *cfg, const char **why);
/* First URI SAN of the peer certificate (the SPIFFE id) into buf
 * (NUL-terminated); returns its length, 0 if none or it does not fit. */
size_t sk_tls_peer_uri_san(SSL *ssl, char *buf, size_t n);
/* Envoy's x-forwarded-client-cert element for this connection:
 *   By=<our URI SAN>;Hash=<hex sha256 of the peer cert DER>;URI=<peer URI SAN>
 * (By / URI omitted when there is none; "" when there is no peer cert).
 * Returns the length (NUL-terminated in buf), 0 if none or buf is too small. */
size_t sk_tls_xfcc(SSL *ssl, char *buf, size_t n);
/* Negotiated ALPN protocol (NUL-terminated, static per SSL) or NULL. */
const char *sk_tls_alpn(SSL *ssl);

/* ---- stats ------------------------------------------------------------------------- */

/* Append the TLS counters: text "name: value" lines, or Prometheus exposition
 * (skiff_tls_* with # TYPE lines; versions/ciphers as labels). */
void sk_tls_stats(struct sk_buf *out, bool prometheus);

/* ---- ClientHello inspector (tls_inspector) ----------------------------------------- */

#define SK_CH_MAX_ALPN 8
#define SK_CH_INSPECT_MAX (16 * 1024)

struct sk_client_hello {
    bool is_tls;
    char sni[256]; /* server_name (host_name), lower-cased; "" if none */
    size_t sni_len;
    char alpn[SK_CH_MAX_ALPN][256]; /* first SK_CH_MAX_ALPN protocols, in order */
    size_t alpn_len[SK_CH_MAX_ALPN];
    size_t nalpn;
};

/* Parse the first bytes of a connection (buf[0..len)): 1 = done (*out filled;
 * is_tls true — also when more than SK_CH_INSPECT_MAX bytes were needed, then
 * without SNI/ALPN), 0 = need more bytes, -1 = not TLS (not a handshake
 * record, bad version, not a ClientHello, malformed). Never reads past len. */
int sk_tls_inspect(const uint8_t *buf, size_t len, struct sk_client_hello *out);

#endif
