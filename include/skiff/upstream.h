/* Upstream runtime state (per worker, keyed by cluster name so it survives
 * config pushes): hosts, load balancing, and the HTTP/1.1 keep-alive pool.
 *
 * Ownership: a cluster_rt lives as long as the worker. Hosts are refcounted:
 * the cluster's current host list holds one ref, every upstream connection
 * holds one (so a DNS change never frees a host under a live connection). */
#ifndef SKIFF_UPSTREAM_H
#define SKIFF_UPSTREAM_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "skiff/buf.h"
#include "skiff/http1.h"
#include "skiff/model.h"
#include "skiff/transport.h"
#include "skiff/worker.h"

struct sk_upconn;

struct sk_host_state;
struct sk_cluster_state;

/* One per (worker, cluster, address). Kept small (issue 5: state per host
 * under 1 KB; issue 7: hosts of 10k clusters on every worker): the address
 * lives once, in the process-wide host state `hs`; sk_host_addr() copies it
 * out. Without a host state (its allocation failed) the host carries its own
 * copy right after the struct (one allocation). */
struct sk_host {
    struct sk_cluster_rt *cl;
    struct sk_host_state *hs; /* process-wide: address, health, ejection, accounting */
    const char *addr_str;     /* the address as text: the host state's (or own copy's) */
    struct sk_upconn *idle;   /* idle keep-alive connections, most recent first */
    uint32_t weight;
    int32_t refs;
    uint32_t active_rq;
    uint32_t active_cx;
    int32_t swrr_current; /* smooth weighted round robin state */
    uint16_t nidle;       /* <= UP_IDLE_MAX (upconn.c) */
    uint8_t cfg_health;   /* enum sk_health_status from config */
    bool removed;
};

/* The host's socket address (copied out of the compact stored form). */
void sk_host_addr(const struct sk_host *h, struct sk_sockaddr *out);
/* A non-blocking socket connecting to the host: sk_connect_socket()'s result
 * (fd, or a negative errno). */
int sk_host_connect(const struct sk_host *h);

struct sk_cluster_rt {
    struct sk_cluster_rt *next;
    const char *name; /* the cluster state's (process lifetime); a copy without one */
    struct sk_worker *w;
    struct sk_cluster_state *cs; /* process-wide: circuit breakers, counters */
    const struct sk_cluster *cfg; /* from the worker's current snapshot */
    uint64_t cfg_version;         /* the version of that snapshot */
    struct sk_host **hosts;
    /* RING_HASH / MAGLEV table over `hosts` (rebuilt when hosts change) */
    void *hash_table;
    uint32_t nhosts;
    uint32_t rr;
    uint32_t active_rq;
    uint8_t hash_kind; /* enum sk_lb_policy of hash_table */
    bool weighted;     /* any weight != 1 */
    bool in_panic;
    bool lazy; /* STATIC/EDS hosts not built yet: done at the first pick */
};

/* lb_glue.c: hash tables and EWMA costs over the cluster's hosts */
void sk_cluster_hash_rebuild(struct sk_cluster_rt *c);
void sk_cluster_hash_free(struct sk_cluster_rt *c);
int sk_cluster_hash_pick(struct sk_cluster_rt *c, uint64_t hash); /* host index or -1 */
uint64_t sk_host_ewma_cost(const struct sk_host *h, int64_t now_ms);
/* record a latency sample (response head arrived after `us` microseconds) */
void sk_host_ewma_sample(struct sk_host *h, uint64_t us, int64_t now_ms);

/* Worker: bring cluster runtimes in line with a new snapshot (create new
 * ones, refresh config pointers, set hosts of STATIC clusters). */
void sk_clusters_apply(struct sk_worker *w, struct sk_snapshot *snap);
/* Worker: replace the host set of a DNS cluster. */
void sk_clusters_set_hosts(struct sk_worker *w, const char *cluster, const struct sk_sockaddr *a,
                           size_t n);

/* Pick a host (ROUND_ROBIN with weights / LEAST_REQUEST P2C / RANDOM /
 * RING_HASH / MAGLEV by `hash` / PEAK_EWMA); NULL when the cluster has no
 * usable host. Unusable: config health UNHEALTHY/DRAINING/TIMEOUT, failing
 * active health checks, ejected by outlier detection -- unless fewer than
 * healthy_panic_percent of the hosts are usable (panic: all hosts are used).
 * `avoid` (may be NULL / n 0): hosts to skip if possible (retry
 * previous_hosts). `hash` is used by the hashing policies (0 = random). */
struct sk_host *sk_lb_choose_ex(struct sk_cluster_rt *c, uint64_t hash, struct sk_host *const *avoid,
                                size_t navoid);
struct sk_host *sk_lb_choose(struct sk_cluster_rt *c);

void sk_host_ref(struct sk_host *h);
void sk_host_unref(struct sk_host *h);

/* ---- HTTP/1.1 upstream connection --------------------------------------- */

/* What an upstream connection reports to its user (the router). Each
 * callback may call sk_upconn_release/abort on the connection. */
struct sk_upconn_cbs {
    void (*on_connected)(void *ctx);
    /* response head; `m` and its header pointers are valid during the call */
    void (*on_response)(void *ctx, const struct sk_h1_msg *m);
    void (*on_data)(void *ctx, const char *p, size_t n);
    void (*on_trailers)(void *ctx, const struct sk_h1_header *h, size_t n);
    void (*on_complete)(void *ctx); /* response fully received */
    /* failure: cause is enum sk_term (stream.h); `sent` = any byte of the
     * response reached the user already */
    void (*on_error)(void *ctx, int cause, const char *detail);
    void (*on_drained)(void *ctx); /* output buffer went below the low mark */
};

/* ---- codec-neutral upstream request ------------------------------------ */

/* The request head the router sends upstream; each upstream codec encodes it
 * (h1: request line + fields + framing; h2: pseudo-headers + HPACK). */
struct sk_req_head {
    const char *method;
    uint32_t method_len;
    const char *scheme;
    const char *authority; /* Host / :authority (already rewritten) */
    uint32_t authority_len;
    const char *path;      /* already rewritten */
    uint32_t path_len;
    const struct sk_hdrs *hdrs; /* end-to-end fields, lower-case (no host, no hop-by-hop) */
    int body_kind;              /* SK_H1_BODY_NONE / LENGTH / CHUNKED (= length unknown) */
    uint64_t content_length;
    bool send_zero_cl;          /* NONE body but the client sent content-length: 0 */
    const char *upgrade;        /* websocket: the Upgrade token, else NULL */
    uint32_t upgrade_len;
};

struct sk_hdrs;
struct sk_up;

/* Operations on one request slot of an upstream connection (h1: the whole
 * connection; h2: one stream). Callbacks come back through sk_upconn_cbs. */
struct sk_up_vt {
    int (*send_head)(struct sk_up *u, const struct sk_req_head *h);
    /* body bytes, framed by the codec; 0 or SK_ERR_TOO_LARGE */
    int (*send_data)(struct sk_up *u, const char *p, size_t n);
    /* end of the request body (+ trailers, may be NULL / empty) */
    int (*send_end)(struct sk_up *u, const struct sk_hdrs *trailers);
    /* tunnel bytes after an upgrade / CONNECT */
    int (*send_raw)(struct sk_up *u, const char *p, size_t n);
    bool (*congested)(const struct sk_up *u);
    void (*pause_read)(struct sk_up *u, bool pause);
    void (*release)(struct sk_up *u); /* response complete: reuse or close */
    void (*abort)(struct sk_up *u);   /* give up: no callbacks afterwards */
    void (*set_tunnel)(struct sk_up *u);
    void (*shutdown_write)(struct sk_up *u);
};

struct sk_up {
    const struct sk_up_vt *vt;
    bool reused;     /* the connection came from the pool */
    bool got_bytes;  /* any response byte seen for this request */
    bool connecting; /* transport not established yet */
    bool toxic;      /* an L4 toxic (Cluster.filters) acts on this connection (flag TX) */
};

/* Get a request slot to host `h` speaking `proto` (enum sk_upstream_proto;
 * SK_UP_HTTP2 needs an h2 client, see h2_client.h). NULL + *err (a cause)
 * when no connection can be made. */
struct sk_up *sk_up_acquire(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                            unsigned req_flags, int proto, int *err);

/* The HTTP/2 client registers itself here (h2_client.c); NULL = no h2. */
extern struct sk_up *(*sk_up_h2_acquire)(struct sk_host *h, const struct sk_upconn_cbs *cbs,
                                         void *ctx, unsigned req_flags, int *err);

static inline int sk_up_send_data(struct sk_up *u, const char *p, size_t n)
{
    return u->vt->send_data(u, p, n);
}
static inline void sk_up_abort(struct sk_up *u)
{
    u->vt->abort(u);
}
static inline void sk_up_release(struct sk_up *u)
{
    u->vt->release(u);
}
static inline bool sk_up_congested(const struct sk_up *u)
{
    return u->vt->congested(u);
}
static inline void sk_up_pause_read(struct sk_up *u, bool pause)
{
    u->vt->pause_read(u, pause);
}

enum sk_upconn_state {
    SK_UP_S_CONNECTING = 0,
    SK_UP_S_IDLE,
    SK_UP_S_ACTIVE,
    SK_UP_S_CLOSED,
};

struct sk_upconn {
    struct sk_up base; /* first: a struct sk_up * is a struct sk_upconn * for h1 */
    struct sk_reap reap;
    struct sk_worker *w;
    struct sk_host *host;
    int fd;            /* == tp.fd */
    struct sk_transport tp; /* socket (+ TLS when the cluster originates TLS) */
    bool handshaking;  /* TLS handshake after connect (state stays CONNECTING) */
    int state;
    ev_io io;
    ev_timer timer; /* connect timeout, then idle timeout */
    struct sk_buf in, out;
    struct sk_upconn *pool_next;
    const struct sk_upconn_cbs *cbs;
    void *ctx;
    /* response parsing */
    int rstate; /* 0 head, 1 body, 2 done, 3 tunnel */
    unsigned req_flags;
    struct sk_h1_body body;
    bool keepalive;
    bool read_paused;
    int req_body_kind; /* framing of the request body we send */
    uint32_t nreq;
    uint64_t id;
};

/* Get a connection to `h` for one request: an idle pooled one, or a new
 * one (connecting). Never NULL unless out of memory / socket failure, in
 * which case *err is set to a cause. Bytes may be queued with
 * sk_upconn_write before the connect completes. */
struct sk_upconn *sk_upconn_acquire(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                                    unsigned req_flags, int *err);
/* Queue bytes to send. Returns 0, or SK_ERR_TOO_LARGE if over the hard cap. */
int sk_upconn_write(struct sk_upconn *u, const void *p, size_t n);
/* Schedule sending of bytes appended directly to u->out. */
void sk_upconn_flush(struct sk_upconn *u);
/* True when queued output is over the high mark (stop feeding it). */
bool sk_upconn_congested(const struct sk_upconn *u);
/* Stop/resume reading the response (backpressure from downstream). */
void sk_upconn_pause_read(struct sk_upconn *u, bool pause);
/* Response complete: back to the pool if reusable, else close. Drops the user. */
void sk_upconn_release(struct sk_upconn *u);
/* Close now (user gave up). Drops the user; no callbacks afterwards. */
void sk_upconn_abort(struct sk_upconn *u);
/* Switch to raw tunnel mode after a 101 (bytes pass through on_data). */
void sk_upconn_set_tunnel(struct sk_upconn *u);
/* Half-close the write side (tunnel: downstream sent FIN). */
void sk_upconn_shutdown_write(struct sk_upconn *u);

#endif
