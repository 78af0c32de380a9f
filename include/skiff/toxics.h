/* L4 toxics (Toxiproxy-style faults) as a stage of the byte transport.
 *
 * Config: struct sk_toxics_cfg, built by the translate step from
 * skiff.toxics.v1.Toxics (listener filter chain in front of tcp_proxy, or
 * Cluster.filters). Runtime: sk_tp_set_toxics() attaches a toxic stage to a
 * connected transport; from then on sk_tp_read / sk_tp_write / ... of that
 * transport go through it (transport.c dispatches). The stage has its own
 * timer and bounded buffers (TOX_BUF_CAP per direction). It wakes its owner
 * with ev_feed_event on the owner's ev_io when held bytes become due, when a
 * full buffer gets room again, or when a toxic ends the connection (reads and
 * writes then return SK_ERR_IO, errno ECONNRESET / ETIMEDOUT).
 *
 * Directions: a transport attached with SK_TOX_SIDE_DOWNSTREAM (the client's
 * connection) reads the UPSTREAM stream and writes the DOWNSTREAM one; one
 * attached with SK_TOX_SIDE_UPSTREAM (a connection to an upstream host) writes
 * UPSTREAM and reads DOWNSTREAM.
 *
 * Close: sk_tp_close on a transport whose stage still holds bytes (latency,
 * bandwidth) or delays its FIN (slow_close) keeps the socket open until the
 * bytes went out and the delay passed (at most TOX_LINGER_MAX s), owned by
 * the stage; the owner may free its memory at once. A reset (reset_peer)
 * closes with SO_LINGER 0 so the peer sees RST.
 *
 * Selection: each toxic applies to a new connection with probability
 * `toxicity`, from a per-thread generator seeded by SKIFF_FAULT_SEED when set
 * (reproducible), else by time and pid. Each applied toxic is counted per
 * kind (sk_toxics_stats) and the connection logged once (info). */
#ifndef SKIFF_TOXICS_H
#define SKIFF_TOXICS_H

#include <stdbool.h>
#include <stdint.h>

#include "skiff/buf.h"

/* no <ev.h> here: the config layer includes this header for the types */
struct ev_loop;
struct ev_io;
struct sk_transport;

enum sk_toxic_kind {
    SK_TOXIC_LATENCY = 0,
    SK_TOXIC_BANDWIDTH,
    SK_TOXIC_SLOW_CLOSE,
    SK_TOXIC_TIMEOUT,
    SK_TOXIC_RESET_PEER,
    SK_TOXIC_SLICER,
    SK_TOXIC_LIMIT_DATA,
    SK_TOXIC__COUNT
};

enum sk_toxic_stream { SK_TOXIC_UPSTREAM = 0, SK_TOXIC_DOWNSTREAM = 1 };

/* Which connection a stage is attached to (see the direction note above). */
enum sk_tox_side { SK_TOX_SIDE_DOWNSTREAM = 0, SK_TOX_SIDE_UPSTREAM = 1 };

struct sk_toxic {
    char *name;
    int kind;       /* enum sk_toxic_kind */
    int stream;     /* enum sk_toxic_stream */
    double toxicity; /* 0..1 */
    uint32_t latency_ms, jitter_ms; /* latency */
    uint32_t rate_kbps;             /* bandwidth (KiB/s, > 0) */
    uint32_t delay_ms;              /* slow_close */
    uint32_t timeout_ms;            /* timeout (0 = blackhole forever), reset_peer */
    uint32_t average_size, size_variation, delay_us; /* slicer */
    uint64_t bytes;                                  /* limit_data */
};

struct sk_toxics_cfg {
    struct sk_toxic *v;
    size_t n;
};

#define SK_TOXICS_MAX 32 /* toxics per filter */

/* Kind name as in the proto ("latency", "slow_close", ...); inline so the
 * config layer can use it without linking the runtime. */
static inline const char *sk_toxic_kind_name(int kind)
{
    static const char *const names[SK_TOXIC__COUNT] = {
        "latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data",
    };
    return kind >= 0 && kind < SK_TOXIC__COUNT ? names[kind] : "?";
}

/* Attach a toxic stage to a connected transport (plaintext or TLS after the
 * handshake). Rolls each toxic's toxicity; when none applies nothing is
 * attached. `owner` is the ev_io the owner watches t->fd with (woken with
 * ev_feed_event). `rng_stream` separates the per-thread generators (worker
 * id). `what` / `conn_id` label the log line. Copies what it needs from cfg
 * (the snapshot may go first). Returns a bit mask of the applied kinds
 * (1 << SK_TOXIC_*), 0 = none. Must be called on the thread owning loop. */
unsigned sk_tp_set_toxics(struct sk_transport *t, struct ev_loop *loop, struct ev_io *owner,
                          const struct sk_toxics_cfg *cfg, int side, unsigned rng_stream,
                          const char *what, unsigned long long conn_id);

/* The transport operations with a stage attached (called by transport.c). */
ssize_t sk_tox_read(struct sk_transport *t, struct sk_buf *b, size_t max);
ssize_t sk_tox_write(struct sk_transport *t, struct sk_buf *b);
void sk_tox_shutdown_write(struct sk_transport *t);
void sk_tox_close(struct sk_transport *t);
bool sk_tox_has_buffered(const struct sk_transport *t);
int sk_tox_events_for_read(const struct sk_transport *t);
int sk_tox_events_for_write(const struct sk_transport *t);

/* Counters: toxics.<kind>_injected (plain) or the Prometheus family
 * skiff_toxics_injected{kind=...} (counter; the admin adds _total). */
void sk_toxics_stats(struct sk_buf *out, bool prometheus);

#endif
