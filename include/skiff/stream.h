/* The HTTP stream: one request/response exchange, codec-neutral.
 *
 * A downstream codec (http1 server now, h2 later) parses a request into a
 * struct sk_stream and drives it with sk_stream_headers / _data / _end; the
 * router (filters/router.c) picks the route, cluster and host and talks to the
 * upstream connection; the response comes back through the codec's ops.
 *
 * Every stream ends with exactly one termination cause (enum sk_term). The
 * access log flag, the counters and a local reply's body and x-skiff-flags
 * header all derive from it. */
#ifndef SKIFF_STREAM_H
#define SKIFF_STREAM_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "skiff/arena.h"
#include "skiff/buf.h"
#include "skiff/filter.h"
#include "skiff/model.h"

struct sk_worker;
struct sk_upconn;
struct sk_up;
struct sk_host;
struct sk_cluster_rt;

enum sk_term {
    SK_TERM_NONE = 0,         /* completed normally */
    SK_TERM_NO_ROUTE,         /* NR  404 */
    SK_TERM_NO_HEALTHY,       /* UH  503 */
    SK_TERM_CONNECT_FAIL,     /* UF  503 */
    SK_TERM_UPSTREAM_RESET,   /* UC  502 upstream closed/reset before a full response */
    SK_TERM_UPSTREAM_TIMEOUT, /* UT  504 route timeout */
    SK_TERM_OVERFLOW,         /* UO  503 circuit breaker / buffer overflow */
    SK_TERM_DOWNSTREAM_PROTO, /* DPE 400 malformed request */
    SK_TERM_UPSTREAM_PROTO,   /* UPE 502 malformed response */
    SK_TERM_CLIENT_RESET,     /* DC  client went away */
    SK_TERM_DIRECT_RESPONSE,  /* --  direct_response route (not an error) */
    SK_TERM_FAULT_ABORT,      /* FI  fault injected */
    SK_TERM_NO_CLUSTER,       /* NC  503 route names a cluster that does not exist */
    SK_TERM_UPGRADE_REFUSED,  /* --  403 upgrade / CONNECT not enabled */
    SK_TERM_STREAM_IDLE,      /* SI  408/504 stream idle timeout */
    SK_TERM_DRAINING,         /* --  503 listener draining */
    SK_TERM_RETRY_LIMIT,      /* URX 503/502 retries exhausted (last attempt's cause) */
    SK_TERM_RBAC_DENIED,      /* RBAC 403 denied by the RBAC filter */
    SK_TERM_REQUEST_TIMEOUT,  /* RQT 408 request not fully received within request_timeout */
    SK_TERM_DURATION_TIMEOUT, /* DT  408 max_stream_duration reached */
    SK_TERM_FAULT_MIDSTREAM,  /* MF  --  a mid-stream fault cut the response (reset, truncate,
                                 gRPC error after N bytes) */
    SK_TERM_IDLE_TIMEOUT,     /* IT  --  tcp_proxy idle_timeout closed the connection */
    SK_TERM__COUNT
};

/* Envoy-style response flag ("UF"), default status and a user-facing reason. */
const char *sk_term_flag(int cause);
int sk_term_status(int cause);
const char *sk_term_reason(int cause);

struct sk_hdr {
    const char *name; /* lower-case */
    uint32_t nlen;
    const char *value;
    uint32_t vlen;
};

struct sk_hdrs {
    struct sk_hdr *v;
    uint32_t n, cap;
};

/* Append (copying both strings into the arena). 0 or SK_ERR_NOMEM. */
int sk_hdrs_add(struct sk_hdrs *h, struct sk_arena *a, const char *name, size_t nlen,
                const char *value, size_t vlen);
/* Append n parsed h1 fields f[0..n), all lying in [span, span + span_len)
 * (an sk_h1_msg's field section, or a whole head): one arena copy of the
 * span, names lower-cased and NUL-terminated in place (at the colon), values
 * NUL-terminated in place (at the CR or trailing whitespace). Returns the
 * copy of the span (so a caller can rebase other pointers into it) or NULL
 * (SK_ERR_NOMEM; nothing appended). */
struct sk_h1_header;
char *sk_hdrs_add_h1(struct sk_hdrs *h, struct sk_arena *a, const char *span, size_t span_len,
                     const struct sk_h1_header *f, size_t n);
/* Append an entry whose strings already live long enough (no copy). */
int sk_hdrs_push(struct sk_hdrs *h, struct sk_arena *a, const struct sk_hdr *x);
/* Append "name: value\r\n" for every entry of h to b, reserving room once.
 * 0, or SK_ERR_TOO_LARGE / SK_ERR_NOMEM (then b may hold a prefix of the
 * lines, as with one sk_buf_append per piece). */
int sk_buf_append_fields(struct sk_buf *b, const struct sk_hdrs *h);
struct sk_hdr *sk_hdrs_get(const struct sk_hdrs *h, const char *lname, size_t nlen);
void sk_hdrs_del(struct sk_hdrs *h, const char *lname, size_t nlen);

struct sk_stream;

/* What the router calls on the downstream codec. */
struct sk_downstream_ops {
    /* Send the response head. content_length < 0 = unknown (chunked / EOF).
     * end_stream = no body follows. */
    void (*send_head)(struct sk_stream *st, int status, const struct sk_hdrs *h,
                      int64_t content_length, bool end_stream);
    void (*send_data)(struct sk_stream *st, const char *p, size_t n);
    void (*send_trailers)(struct sk_stream *st, const struct sk_hdrs *t); /* NULL/empty ok */
    void (*send_end)(struct sk_stream *st); /* response complete */
    /* Abort the stream downstream (h1: close the connection). */
    void (*reset)(struct sk_stream *st);
    bool (*congested)(struct sk_stream *st);
    void (*pause_read)(struct sk_stream *st, bool pause);
    /* 101 was sent: switch the downstream connection to raw tunnel mode */
    void (*tunnel)(struct sk_stream *st);
    void (*send_1xx)(struct sk_stream *st, int status); /* 100 Continue relay */
};

enum sk_stream_state {
    SK_ST_S_HEADERS = 0, /* request head received, routing */
    SK_ST_S_UPSTREAM,    /* request being sent / awaiting response */
    SK_ST_S_RESPONDING,  /* response head sent downstream */
    SK_ST_S_TUNNEL,      /* upgraded */
    SK_ST_S_DONE,
};

struct sk_stream {
    struct sk_worker *w;
    struct sk_arena arena;
    const struct sk_downstream_ops *ops;
    void *conn; /* the codec's connection */
    uint64_t conn_id;
    uint32_t stream_id;
    int state;
    int cause; /* enum sk_term, set exactly once */

    /* config this stream runs with (the connection holds the snapshot ref) */
    const struct sk_snapshot *snap;
    const struct sk_listener *listener;
    const struct sk_hcm *hcm;
    const struct sk_vhost *vhost;
    const struct sk_route *route;
    const struct sk_cluster *cluster;
    const struct sk_hdr_ops *cw_req, *cw_resp; /* weighted cluster header ops */

    /* request */
    const char *method;
    uint32_t method_len;
    const char *path;
    uint32_t path_len;
    const char *authority; /* Host / :authority */
    uint32_t authority_len;
    const char *scheme; /* "http" / "https" */
    struct sk_hdrs req;
    unsigned req_flags; /* SK_H1_F_* */
    int req_body_kind;  /* enum sk_h1_body_kind (NONE, LENGTH, CHUNKED) */
    uint64_t req_content_length;
    bool req_end;     /* whole request received from downstream */
    struct sk_hdrs req_trailers; /* kept for retries */
    bool upgrade;     /* websocket upgrade requested and allowed */
    char peer_ip[48];
    void *tls;            /* downstream SSL * (NULL = plaintext) */
    bool downstream_h2;   /* request arrived over HTTP/2 (USE_DOWNSTREAM protocol) */

    /* upstream */
    struct sk_cluster_rt *crt;
    struct sk_host *host;
    struct sk_up *up; /* current attempt's upstream request slot */
    bool up_sent_head;
    int up_body_kind; /* how the body is framed upstream */
    bool up_retried;  /* reused keep-alive connection failed; retried once */

    /* retries (route retry_policy) */
    uint32_t attempt;         /* 1-based number of the current attempt */
    uint32_t retries_left;
    struct sk_buf body_copy;  /* request body kept while a retry is possible */
    bool body_copy_ok;        /* the whole body so far is in body_copy */
    bool retry_wait;          /* backoff timer running, no upstream */
    bool holds_retry_slot;    /* counted in the cluster's retries_active */
    bool holds_rq_slot;       /* counted in the cluster's rq_active */
    bool holds_pending_slot;  /* counted in rq_pending (connecting) */
    ev_timer retry_timer;     /* backoff */
    ev_timer try_timer;       /* per-try timeout */
    struct sk_host *tried[8]; /* previous hosts (retry_host_predicate) */
    uint32_t ntried;
    int64_t try_start_ms;
    uint64_t hash;            /* route hash_policy result, 0 = none */

    /* HTTP filter chain (before the router) */
    struct sk_filter_slot filters[SK_MAX_HTTP_FILTERS];
    uint8_t nfilters;
    uint8_t next_filter;
    bool filters_done;
    bool fault_injected; /* a fault filter acted on this stream (flags DI/FI) */
    bool fault_delayed;  /* a fault delay was injected (DI); the request then went on */
    bool toxic;          /* an L4 toxic acted on the connection (TX; tcp_proxy logs) */
    uint8_t local_grpc_code; /* > 0: a gRPC local reply carries grpc-status (this - 1) */
    bool reset_code_set;     /* ops->reset on HTTP/2 uses reset_code (else INTERNAL_ERROR) */
    uint32_t reset_code;

    /* response */
    int status;
    bool resp_started; /* head sent downstream */
    bool resp_chunked_up;
    bool resp_head_req; /* HEAD: no body downstream */
    uint64_t bytes_rx, bytes_tx;
    /* response body paced by a filter's on_response_data (fault rate limit):
     * bytes not yet allowed wait here; pace_timer retries after pace_wait_ms */
    struct sk_buf resp_hold;
    ev_timer pace_timer;
    uint32_t pace_wait_ms;     /* set by the pacing filter when it holds bytes back */
    bool pace_trailers, pace_end; /* upstream trailers / end arrived while bytes were held */
    struct sk_hdrs pace_trl;

    /* for the access log */
    struct sk_hdrs resp_hdrs;  /* response head as sent downstream */
    double t_first_byte;       /* ev_now when the upstream response head arrived */
    char upstream_host[64];    /* last attempt's host */
    uint16_t peer_port;
    bool logged;               /* access log written */
    ev_timer timeout; /* route timeout */
    uint64_t eff_timeout_ms; /* what `timeout` was started with (route or grpc-timeout) */
    double t_start;

    /* HCM stream timeouts (see router.c "stream timeouts") */
    ev_timer idle_timer;  /* stream_idle_timeout / route idle_timeout; lazily re-armed */
    double idle_last;     /* ev_now of the last activity in either direction */
    double idle_s;        /* 0 = off */
    ev_timer req_timer;   /* request_timeout: whole request received */
    ev_timer dur_timer;   /* max_stream_duration (HCM or route) from t_start */
};

/* Called by the codec once the request head is parsed into st. The router
 * takes over. */
void sk_stream_headers(struct sk_stream *st);
/* Request body bytes (already de-framed). */
void sk_stream_data(struct sk_stream *st, const char *p, size_t n);
/* Request complete (optional trailers). */
void sk_stream_end(struct sk_stream *st, const struct sk_hdrs *trailers);
/* Downstream went away / codec error: stop everything upstream. */
void sk_stream_abort(struct sk_stream *st, int cause);
/* Downstream output drained below the low mark: resume the upstream reader. */
void sk_stream_downstream_drained(struct sk_stream *st);
/* Tunnel mode: raw bytes from downstream to upstream / half-close. */
void sk_stream_tunnel_data(struct sk_stream *st, const char *p, size_t n);
void sk_stream_tunnel_eof(struct sk_stream *st);

/* Send a locally generated reply for `cause` (status from the cause unless
 * status > 0), with x-skiff-flags and a text body saying why. */
void sk_stream_local_reply(struct sk_stream *st, int cause, int status, const char *detail);
/* Release per-stream resources (upstream conn, timer, arena). The codec
 * calls it when the stream is finished on its side. */
void sk_stream_cleanup(struct sk_stream *st);

/* Router helpers (exposed for unit tests). */
const struct sk_vhost *sk_route_vhost(const struct sk_route_config *rc, const char *host,
                                      size_t len);
const struct sk_route *sk_route_match(const struct sk_vhost *vh, const struct sk_stream *st);
/* All n HeaderMatchers match the request (route semantics; for filters). */
bool sk_stream_headers_match(const struct sk_stream *st, const struct sk_header_match *hm,
                             size_t n);

#endif
